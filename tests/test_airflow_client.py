"""What the Airflow client says when Airflow's API does not answer at all (a stack that is down): the address and
the commands that show and fix it, as an error the CLI prints, not an httpx traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from pipelines.orchestration.airflow_client import AirflowAPIError, AirflowClient, AirflowUnreachable, login
from pipelines.settings import get_settings


def test_an_airflow_that_does_not_answer_is_named_with_the_commands_that_show_and_restart_it(tmp_path: Path) -> None:
    with socket.socket() as bound:  # bound, never listening: the port is ours and every connection is refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        settings = get_settings(home=tmp_path / "home", airflow_api_url=url, num_threads=1)
        assert settings.airflow_home is not None
        settings.airflow_home.mkdir(parents=True)
        (settings.airflow_home / "passwords.json").write_text(json.dumps({settings.airflow_username: "pw"}))
        said = f"Airflow's API at {url} did not answer \\(.*Connection refused\\); `mlctl stack status` says"
        with pytest.raises(AirflowUnreachable, match=said) as engineer:
            AirflowClient(settings)
        with pytest.raises(AirflowUnreachable, match=said):
            login(settings, "alice", password="alice-pw")
    # Every caller that handles Airflow's refusals (the CLI prints them and exits 1) handles this one too.
    assert isinstance(engineer.value, AirflowAPIError) and engineer.value.status is None
    assert "mlctl stack down && mlctl stack up" in str(engineer.value)

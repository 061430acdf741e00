"""A local run whose process is killed with SIGKILL stays `running` in Airflow's metadata DB: `mlctl status` must
say so (with the command that fixes it), and the rerun of that day must replace it, say so, and converge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.airflow_support import START, AirflowWorld, make_world

pytestmark = pytest.mark.airflow


def _wait_for(log: Path, text: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {log}:\n{log.read_text(errors='replace')[-3000:]}")


def _status(world: AirflowWorld) -> dict:
    result = world.mlctl("status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_a_killed_run_is_reported_stuck_and_the_rerun_replaces_it_and_converges(tmp_path: Path) -> None:
    world = make_world(tmp_path / "world")
    day = str(START)
    log = tmp_path / "killed.log"
    proc = world.popen_mlctl("run", "daily_features", "--date", day, log=log)
    try:
        # Killed while the run is under way: extract done, validate started (Airflow's log, which mlctl names).
        _wait_for(world.settings.home / "logs" / "daily_features.log", "[DAG TEST] starting task_id=validate")
    finally:
        proc.kill()  # SIGKILL: no handler runs, as when the machine's OOM killer or an operator ends it
        proc.wait(timeout=60)

    stuck = _status(world)["stuck_runs"]
    assert [(s["dag_id"], s["logical_date"]) for s in stuck] == [("daily_features", day)]
    assert f"(pid {proc.pid}) died" in stuck[0]["reason"]
    assert stuck[0]["command"] == f"mlctl run daily_features --date {day}"
    printed = world.mlctl("status")
    assert "stuck run: daily_features" in printed.stdout

    rerun = world.mlctl("run", "daily_features", "--date", day)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"replaced daily_features {day}'s run {stuck[0]['run_id']}" in " ".join(rerun.stdout.split())

    status = _status(world)
    assert status["stuck_runs"] == []
    assert [r["state"] for r in status["dags"]["daily_features"]] == ["success"]
    assert status["online_views"] and not any(v["behind"] for v in status["online_views"])

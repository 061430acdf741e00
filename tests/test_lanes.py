"""How many days a local backfill runs side by side (`STOREFRONT_LOCAL_LANES`; 0, the default, decides from the
machine's idle cores at the start)."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from pipelines.orchestration.runs import lanes_to_use
from pipelines.settings import get_settings


def test_a_set_number_of_lanes_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: pytest.fail("measured although lanes were set"))
    assert lanes_to_use(1) == 1 and lanes_to_use(3) == 3


def test_the_default_is_decided_by_the_machine(tmp_path) -> None:
    assert get_settings(home=tmp_path).local_lanes == 0


@pytest.mark.parametrize(("busy_percent", "cores", "lanes"), [(5.0, 2, 2), (40.0, 2, 1), (100.0, 2, 1), (30.0, 8, 2)])
def test_two_lanes_only_with_two_idle_cores(
    monkeypatch: pytest.MonkeyPatch, busy_percent: float, cores: int, lanes: int
) -> None:
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: busy_percent)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert lanes_to_use(0) == lanes


def test_every_core_busy_gives_one_lane() -> None:
    """Measured for real: one busy loop a core (bounded to 20 s should anything go wrong)."""
    burner = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burner]) for _ in range(psutil.cpu_count() or 1)]
    try:
        assert lanes_to_use(0) == 1
    finally:
        for process in burners:
            process.kill()
            process.wait()

"""The figures of docs/data.md are drawn from the simulator's own output."""

from __future__ import annotations

from pathlib import Path

from pipelines.data import simulator
from pipelines.data.figures import FUNNEL, event_counts, write_figures
from pipelines.data.simulator import SimulationConfig

SMALL = SimulationConfig(n_users=300, n_products=200)


def test_counts_are_the_simulated_events() -> None:
    counts = event_counts(SMALL, 3)
    day = SMALL.start
    assert counts.loc[day].sum() == len(simulator.simulate_day(SMALL, day))
    totals = [counts[step].sum() for step in FUNNEL]
    assert totals == sorted(totals, reverse=True) and totals[-1] > 0


def test_every_figure_is_written_as_png(tmp_path: Path) -> None:
    written = write_figures(tmp_path, SMALL, n_days=8)
    names = {p.name for p in written}
    assert names == {"funnel.png", "daily_volumes.png", "hour_of_day.png", "follow_degrees.png", "fraud_rate.png"}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000

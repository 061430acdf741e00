"""Validation builds each expectation's configuration once per batch (pipelines/validation/runner.py): the same
results as GX's own property, failures included, and GX's property is back once validation ends."""

from __future__ import annotations

import contextlib
import re

import pytest
from great_expectations.expectations.expectation import Expectation

from pipelines.data import simulator
from pipelines.data.simulator import SimulationConfig
from pipelines.settings import PROJECT_ROOT
from pipelines.validation import runner

WORLD = SimulationConfig(n_users=200, n_products=80, seed=3)


def _checks(report) -> str:
    # The suite's upper bound on event times is "now": equal up to the instant each run read the clock.
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", "<now>", str([c.__dict__ for c in report.checks]))


@pytest.mark.parametrize("broken", [False, True])
def test_results_equal_gx_own_configurations(broken: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    events = simulator.simulate_day(WORLD, WORLD.start)
    if broken:
        events.loc[events.index[:7], "user_id"] = None
        events.loc[events.index[7:20], "event_type"] = "teleport"
    expectations = PROJECT_ROOT / "expectations"
    property_before = Expectation.__dict__["configuration"]

    ours = runner.validate_frame(events, "events", WORLD.start, expectations)
    assert Expectation.__dict__["configuration"] is property_before and not runner._BuiltOnce.kept
    monkeypatch.setattr(runner, "_configurations_built_once", contextlib.nullcontext)
    stock = runner.validate_frame(events, "events", WORLD.start, expectations)

    assert _checks(ours) == _checks(stock)
    assert ours.success is stock.success is (not broken)
    assert any(not c.success for c in ours.checks) is broken

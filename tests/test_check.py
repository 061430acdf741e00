"""`mlctl check MODEL --date D`: what a spec needs against what the lake holds (issue 10 items 3 and 6)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import load_spec
from pipelines.training.readiness import (
    HistoryTooShort,
    LabelDelayTooShort,
    check_readiness,
    proportional_windows,
    require_ready,
)

FIRST = dt.date(2017, 11, 25)
PURCHASE_INTENT = load_spec(PROJECT_ROOT / "models" / "purchase_intent.yaml")
ORDER_FRAUD = load_spec(PROJECT_ROOT / "models" / "order_fraud.yaml")


def _land(lake: Lake, table: str, days: int, first: dt.date = FIRST) -> list[dt.date]:
    landed = [first + dt.timedelta(days=i) for i in range(days)]
    for day in landed:
        lake.write(table, day, pd.DataFrame({"user_id": [1, 2], "value": [0.5, 1.5]}))
    return landed


def _behaviour_log(lake: Lake, days: int) -> list[dt.date]:
    """A behaviour-only source after `days` daily runs: raw events and users, and the user features."""
    for table in ("events", "users", "follows", "features/user_behavior"):
        landed = _land(lake, table, days)
    return landed


def test_nine_day_log_is_too_short_for_the_shipped_windows_and_says_what_would_fit(lake: Lake) -> None:
    """issue 10 item 3: the spec needs 14+3+3 as-of days plus the 7-day label window; a 9-day log says so before
    any run, with the windows that would fit."""
    days = _behaviour_log(lake, 9)
    result = check_readiness(lake, PURCHASE_INTENT, days[-1])
    assert not result.ready and result.history_short
    failing = {n.what for n in result.needs if not n.ok}
    assert failing == {"features, train as-of days", "features, validation as-of days", "features, test as-of days"}
    assert result.latest_fitting_date is None
    # 9 days of features, newest labelled as-of day 7 days before the last day: 2 days, too few for 3 splits.
    assert result.suggested_windows is None
    assert "cannot train for 2017-12-03" in result.verdict
    # Backfilling cannot help: the lake holds every day there is, fewer than even 1/1/1 windows and the label need.
    assert "The lake holds 9 day(s) of data (2017-11-25 .. 2017-12-03)" in result.verdict
    assert "need 10 days including the 7-day label window: land a longer log" in result.verdict
    with pytest.raises(HistoryTooShort, match="purchase_intent cannot train"):
        require_ready(lake, PURCHASE_INTENT, days[-1])


def test_a_longer_log_suggests_proportional_windows_and_the_latest_fitting_date(lake: Lake) -> None:
    """issue 10 item 3: 20 days of history hold 13 labelled as-of days: windows in the spec's proportions."""
    days = _behaviour_log(lake, 20)
    result = check_readiness(lake, PURCHASE_INTENT, days[-1])
    assert not result.ready
    fit = result.suggested_windows
    assert fit is not None and fit.logical_date == days[-1]
    assert (fit.train_days, fit.validation_days, fit.test_days) == (9, 2, 2)
    assert "windows 9/2/2" in result.verdict

    long = _behaviour_log(lake, 40)
    ready = check_readiness(lake, PURCHASE_INTENT, long[-1])
    assert ready.ready, ready.verdict
    assert ready.latest_fitting_date == long[-1]
    assert require_ready(lake, PURCHASE_INTENT, long[-1]).ready
    # A date past the data: labels of its newest as-of days are not in the lake yet.
    later = check_readiness(lake, PURCHASE_INTENT, long[-1] + dt.timedelta(days=3))
    assert not later.ready and f"up to logical date {long[-1]}" in later.verdict


def test_an_orders_only_source_cannot_train_purchase_intent(lake: Lake) -> None:
    """issue 10 item 3: the raw tables a spec needs are listed; a missing one says how to land it."""
    _land(lake, "orders", 60)
    result = check_readiness(lake, PURCHASE_INTENT, FIRST + dt.timedelta(days=59))
    events = next(n for n in result.needs if n.what == "raw table events")
    assert not events.ok and "mlctl ingest --table events" in events.hint


def _orders_source(lake: Lake, delay: dict[str, float]) -> dt.date:
    for table in ("orders", "order_labels", "features/order_risk"):
        landed = _land(lake, table, 80)
    span = {"first": str(landed[0]), "last": str(landed[-1]), "days": len(landed)}
    lake.write_json("ingest/span.json", {"tables": {"orders": span}, "label_delay_days": delay})
    return landed[-1]


def test_label_delay_shorter_than_the_source_fails_naming_both_numbers(lake: Lake) -> None:
    """issue 10 item 6: labels arrive 30 days after purchase, order_fraud waits 10 days: a failure, not a model
    trained on test rows without positives."""
    last = _orders_source(lake, {"max": 30, "median": 30})
    result = check_readiness(lake, ORDER_FRAUD, last)
    assert not result.ready and not result.history_short
    assert "labels arrive 30 days after purchase in this source; order_fraud waits 10 days" in result.verdict
    assert "label.delay_days >= 30" in result.verdict
    with pytest.raises(LabelDelayTooShort):
        require_ready(lake, ORDER_FRAUD, last)


def test_label_delay_covering_the_typical_arrival_passes_with_a_note(lake: Lake) -> None:
    """issue 10 item 6: a delay past the median but short of the longest arrival trains, and says what it misses."""
    last = _orders_source(lake, {"max": 30, "median": 9})
    result = check_readiness(lake, ORDER_FRAUD, last)
    assert result.ready, result.verdict
    delay = next(n for n in result.needs if n.what == "label delay")
    assert "up to 30 days late" in delay.hint


def test_proportional_windows_keep_each_split() -> None:
    assert proportional_windows(PURCHASE_INTENT, 20) == (14, 3, 3)
    assert proportional_windows(PURCHASE_INTENT, 3) == (1, 1, 1)
    assert proportional_windows(PURCHASE_INTENT, 2) is None


def test_mlctl_check_prints_a_table_and_exits_1_when_not_ready(settings: Settings, monkeypatch) -> None:
    """issue 10 item 3: `mlctl check` tells the user before the run; exit 0 only when ready."""
    from pipelines.cli import app

    lake = Lake(settings)
    days = _behaviour_log(lake, 9)
    monkeypatch.setenv("STOREFRONT_HOME", str(settings.home))
    runner = CliRunner()
    result = runner.invoke(app, ["check", "purchase_intent", "--date", str(days[-1])], terminal_width=200)
    assert result.exit_code == 1, result.output
    assert "features, train as-of days" in result.output
    assert "purchase_intent cannot train for 2017-12-03" in result.output

    more = _behaviour_log(lake, 40)
    result = runner.invoke(app, ["check", "purchase_intent", "--date", str(more[-1])], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "purchase_intent can train for" in result.output

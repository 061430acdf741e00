"""Labels from events, extraction into the lake, and the best achievable score against the ground truth."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.data.extract import extract_day
from pipelines.data.labels import LabelError, purchase_labels
from pipelines.data.simulator import SimulationConfig
from pipelines.data.truth import IncompleteLabelWindow, best_achievable
from pipelines.lake import Lake
from pipelines.settings import get_settings

CONFIG = SimulationConfig(n_users=300, n_products=400, n_merchants=10, truth_replicas=100)
DAYS = [CONFIG.start + dt.timedelta(days=i) for i in range(12)]
D0 = dt.date(2025, 3, 1)


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_labels_count_purchases_in_the_half_open_window_after_the_as_of_time():
    events = pd.DataFrame(
        {
            "user_id": [1, 2, 3, 3, 4],
            "event_type": ["purchase", "purchase", "view", "purchase", "purchase"],
            "event_time": [
                _ts("2025-03-02 00:00:00"),  # exactly as_of(D0): inside D0's window
                _ts("2025-03-09 00:00:00"),  # exactly as_of(D0) + 7 days: outside D0's window, inside D0+1's
                _ts("2025-03-03 12:00:00"),  # a view is not a purchase
                _ts("2025-03-01 23:59:59"),  # before as_of(D0): not in D0's window
                _ts("2025-03-08 23:59:59"),
            ],
        }
    )
    out = purchase_labels(events, [D0, D0 + dt.timedelta(days=1)], user_ids=[1, 2, 3, 4, 5], window_days=7)
    assert list(out.columns) == ["user_id", "as_of", "label"]
    got = {(r.user_id, r.as_of.date()): r.label for r in out.itertuples()}
    assert len(got) == 10
    d0, d1 = dt.date(2025, 3, 2), dt.date(2025, 3, 3)  # as-of dates of D0 and D0+1
    assert got[(1, d0)] == 1 and got[(1, d1)] == 0
    assert got[(2, d0)] == 0 and got[(2, d1)] == 1
    assert got[(3, d0)] == 0 and got[(3, d1)] == 0
    assert got[(4, d0)] == 1 and got[(4, d1)] == 1
    assert got[(5, d0)] == 0  # a user without events is a negative, not a missing row
    assert out["as_of"].iloc[0] == pd.Timestamp(schemas.as_of(D0))


def test_labels_with_a_shorter_window_and_a_bad_frame():
    events = pd.DataFrame({"user_id": [1], "event_type": ["purchase"], "event_time": [_ts("2025-03-03 10:00")]})
    out = purchase_labels(events, [D0], user_ids=[1], window_days=1)
    assert out["label"].tolist() == [0]  # day 2 after the as-of time is outside a 1-day window
    with pytest.raises(LabelError, match="event_time"):
        purchase_labels(events.drop(columns="event_time"), [D0], user_ids=[1])


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory) -> Lake:
    lake = Lake(get_settings(home=tmp_path_factory.mktemp("sim") / ".storefront", num_threads=1))
    for day in DAYS:
        extract_day(lake, CONFIG, day)
    return lake


def test_extract_writes_every_table_and_a_rerun_replaces_the_day(small_lake):
    day = DAYS[3]
    before = {t: small_lake.read(t, day) for t in schemas.TABLES}
    result = extract_day(small_lake, CONFIG, day)
    assert set(result) == set(schemas.TABLES)
    for table, info in result.items():
        assert small_lake.partitions(table) == DAYS  # one partition per day, no duplicates
        assert info["uri"] == small_lake.partition_uri(table, day)
        again = small_lake.read(table, day)
        assert info["rows"] == len(again) > 0
        pd.testing.assert_frame_equal(before[table], again)


def test_truth_is_calibrated_against_realised_labels(small_lake):
    last_complete = DAYS[-1] - dt.timedelta(days=7)
    truth = small_lake.read_range("truth_purchase_intent", DAYS[0], last_complete)
    assert last_complete == DAYS[4] and truth["p_purchase_7d"].between(0, 1).all()
    events = small_lake.read_range("events", DAYS[0], DAYS[-1])
    labels = purchase_labels(events, DAYS[:5], truth["user_id"].unique())
    assert 0.1 < labels["label"].mean() < 0.45
    assert abs(truth["p_purchase_7d"].mean() - labels["label"].mean()) < 0.05


def test_best_achievable_on_a_small_world(small_lake):
    last_complete = DAYS[-1] - dt.timedelta(days=7)
    best = best_achievable(small_lake, DAYS[0], last_complete)
    assert 0.6 < best["roc_auc"] < 1.0
    assert best["label_rate"] < best["pr_auc"] < 1.0  # better than a random ranking
    assert best["n_rows"] == len(small_lake.read_range("truth_purchase_intent", DAYS[0], last_complete))


def test_best_achievable_refuses_incomplete_label_windows(small_lake):
    with pytest.raises(IncompleteLabelWindow, match=r"need events through 2025-01-13.*missing 2025-01-13"):
        best_achievable(small_lake, DAYS[0], DAYS[5])

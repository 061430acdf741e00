"""Orders and fraud: deterministic, schema-conformant, late labels in the right partition, calibrated truth."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.data import orders, schemas, simulator
from pipelines.data.extract import day_tables
from pipelines.data.orders import FraudConfig
from pipelines.data.simulator import SimulationConfig
from pipelines.data.truth import best_achievable_fraud

CONFIG = SimulationConfig(n_users=2000, n_products=400, n_merchants=10, truth_replicas=20)
DAYS = [CONFIG.start + dt.timedelta(days=i) for i in range(28)]
# Five times the default fraud volume: enough positives in a small world for calibration and AUC checks.
DENSE = FraudConfig(ring_bursts_per_1k_orders=7.5, new_account_fraudsters_per_1k_orders=20, takeovers_per_1k_orders=10)


@pytest.fixture(scope="module")
def placed() -> pd.DataFrame:
    """Orders of every day with their truth and eventual labels (default fraud volume)."""
    frames = []
    for d in DAYS:
        day = orders.simulate_orders(CONFIG, d).merge(orders.realised_labels(CONFIG, d), on="order_id", validate="1:1")
        frames.append(day.assign(ds=d))
    return pd.concat(frames, ignore_index=True)


def test_a_day_is_the_same_whatever_was_computed_before_and_another_seed_differs():
    day = DAYS[9]
    orders.clear_cache()
    simulator.clear_cache()
    fresh = SimulationConfig(**vars(CONFIG))
    cold = (orders.simulate_orders(fresh, day), orders.order_labels(fresh, day), orders.fraud_truth(fresh, day))
    for d in DAYS[:12]:
        orders.order_labels(CONFIG, d)
    warm = (orders.simulate_orders(CONFIG, day), orders.order_labels(CONFIG, day), orders.fraud_truth(CONFIG, day))
    for a, b in zip(cold, warm, strict=True):
        pd.testing.assert_frame_equal(a, b)
    other = orders.simulate_orders(SimulationConfig(**{**vars(CONFIG), "seed": 8}), day)
    assert not other["order_id"].isin(cold[0]["order_id"]).all()


def test_tables_match_their_schemas_and_partition_rules():
    day = DAYS[5]
    tables = day_tables(CONFIG, day)
    for name in ("orders", "order_labels", "truth_order_fraud"):
        frame, schema = tables[name], schemas.TABLES[name]
        assert list(frame.columns) == schema.names, name
        assert pa.Table.from_pandas(frame, schema=schema, preserve_index=False).schema.equals(schema), name
        assert len(frame) > 0 and not frame.isna().any().any(), name
    placed, labels = tables["orders"], tables["order_labels"]
    assert placed["order_id"].is_unique and (placed["purchase_time"].dt.date == day).all()
    assert (labels["label_time"].dt.date == day).all() and labels["order_id"].is_unique
    assert set(tables["truth_order_fraud"]["order_id"]) == set(placed["order_id"])
    assert (placed["signup_time"] <= placed["purchase_time"]).all()
    assert set(placed["user_id"]) <= set(tables["users"]["user_id"])  # fraudsters' accounts are users too
    assert set(placed["source"]) <= {"SEO", "Ads", "Direct"}
    assert placed["purchase_value"].gt(0).all()


def test_legit_orders_are_the_days_purchases():
    day = DAYS[4]
    events = simulator.simulate_day(CONFIG, day)
    buys = events[events["event_type"] == "purchase"]
    placed = orders.simulate_orders(CONFIG, day, events=events)
    legit = placed[placed["user_id"] <= CONFIG.n_users].set_index("user_id")
    per_user = buys.groupby("user_id").agg(value=("price", "sum"), last=("event_time", "max"))
    # Takeovers add orders on existing accounts: compare the users' own (last-event-time) orders.
    own = legit[legit["purchase_time"].isin(per_user["last"])]
    assert set(per_user.index) == set(own.index)
    np.testing.assert_allclose(own.loc[per_user.index, "purchase_value"], per_user["value"].round(2), atol=0.011)
    pd.testing.assert_frame_equal(placed, orders.simulate_orders(CONFIG, day))


def test_fraud_rate_is_a_few_percent_and_varies_over_time(placed):
    rate = placed["is_fraud"].mean()
    assert 0.01 < rate < 0.04
    assert abs(placed["p_fraud"].mean() - rate) < 0.01
    daily = placed.groupby("ds")["is_fraud"].mean()
    assert daily.max() > 2 * daily.median()  # bursts and campaigns, not a flat rate


def test_rings_share_devices_and_ips_while_legit_users_keep_theirs(placed):
    users_per_device = placed.groupby("device_id")["user_id"].nunique()
    shared = placed["device_id"].map(users_per_device) >= 3
    assert shared.any()
    assert placed.loc[shared, "is_fraud"].mean() > 10 * placed.loc[~shared, "is_fraud"].mean()
    users_per_ip = placed.groupby("ip_address")["user_id"].nunique()
    assert (placed.loc[shared, "ip_address"].map(users_per_ip) >= 2).mean() > 0.8  # ... and their IPs
    legit = placed[(placed["user_id"] <= CONFIG.n_users) & (placed["p_fraud"] < 0.05)]
    repeat = legit.groupby("user_id").filter(lambda g: len(g) >= 3)
    top_device = repeat.groupby("user_id")["device_id"].agg(lambda s: s.value_counts().iloc[0] / len(s))
    assert top_device.median() >= 0.6


def test_new_accounts_buy_soon_after_signup_in_bursts(placed):
    accounts = placed[placed["user_id"] > CONFIG.n_users]
    assert len(accounts) > 0
    since_signup = accounts["purchase_time"] - accounts["signup_time"]
    assert since_signup.median() < pd.Timedelta(hours=6)
    assert accounts["is_fraud"].mean() > 0.5
    by_device = placed.sort_values("purchase_time").groupby("device_id")["purchase_time"]
    gaps = by_device.diff().dropna()
    assert (gaps < pd.Timedelta(minutes=10)).sum() >= 5  # several orders minutes apart from one device


def test_every_order_gets_one_label_later_in_the_partition_of_its_arrival():
    fraud = FraudConfig()
    first = DAYS[2]
    placed = orders.simulate_orders(CONFIG, first)
    truth = orders.realised_labels(CONFIG, first).set_index("order_id")
    arrivals = pd.concat(
        [
            orders.order_labels(CONFIG, first + dt.timedelta(days=k)).assign(ds=first + dt.timedelta(days=k))
            for k in range(0, fraud.label_window_days + 3)
        ],
        ignore_index=True,
    )
    assert (arrivals["label_time"].dt.date == arrivals["ds"]).all()
    mine = arrivals[arrivals["order_id"].isin(placed["order_id"])].set_index("order_id")
    assert mine.index.is_unique and set(mine.index) == set(placed["order_id"])
    assert (mine["is_fraud"] == truth.loc[mine.index, "is_fraud"]).all()
    delay = mine["label_time"] - placed.set_index("order_id").loc[mine.index, "purchase_time"]
    fraud_delay, legit_delay = delay[mine["is_fraud"] == 1], delay[mine["is_fraud"] == 0]
    assert (fraud_delay > pd.Timedelta(days=1)).all() and (fraud_delay < pd.Timedelta(days=31)).all()
    assert (legit_delay >= pd.Timedelta(days=30)).all()
    assert (mine.loc[mine["is_fraud"] == 0, "label_time"].dt.date == first + dt.timedelta(days=31)).all()


def test_label_partitions_have_rows_from_the_first_day():
    # Orders placed before the start still get their labels in the window (they are in no orders partition).
    first = orders.order_labels(CONFIG, DAYS[0])
    assert len(first) > 0 and first["order_id"].str.startswith("2024").all()


def test_p_fraud_is_calibrated_and_the_best_achievable_scores_are_sensible():
    scored = pd.concat([orders.realised_labels(CONFIG, d, DENSE) for d in DAYS[:21]], ignore_index=True)
    bins = pd.cut(scored["p_fraud"], [0, 0.02, 0.85, 1.0], include_lowest=True)
    table = scored.groupby(bins, observed=True).agg(
        p=("p_fraud", "mean"), y=("is_fraud", "mean"), n=("p_fraud", "size")
    )
    assert (table["n"] >= 50).all(), table
    tolerance = 4 * np.sqrt(table["p"] * (1 - table["p"]) / table["n"]) + 0.01
    assert ((table["p"] - table["y"]).abs() < tolerance).all(), table

    best = best_achievable_fraud(CONFIG, DAYS[0], DAYS[20], DENSE)
    assert best["n_orders"] == len(scored) and best["fraud_rate"] == scored["is_fraud"].mean()
    assert 0.8 < best["roc_auc"] < 1.0
    assert best["fraud_rate"] < best["pr_auc"] < 1.0
    assert 0.3 < best["recall_at_0.01_fpr"] <= 1.0
    with pytest.raises(ValueError, match="before start"):
        best_achievable_fraud(CONFIG, DAYS[3], DAYS[2])

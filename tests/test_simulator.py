"""The simulator: deterministic per (config, day), schema-conformant, and internally consistent."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.data import intent_truth, schemas, simulator
from pipelines.data.extract import day_tables
from pipelines.data.simulator import SimulationConfig, SimulationError

CONFIG = SimulationConfig(n_users=300, n_products=400, n_merchants=10, truth_replicas=100)
DAYS = [CONFIG.start + dt.timedelta(days=i) for i in range(12)]


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return pd.concat([simulator.simulate_day(CONFIG, d) for d in DAYS], ignore_index=True)


def test_a_day_is_the_same_whether_or_not_earlier_days_were_simulated_in_this_process():
    day = DAYS[6]
    simulator.clear_cache()
    cold_events = simulator.simulate_day(SimulationConfig(**vars(CONFIG)), day)  # fresh config object too
    cold_truth = intent_truth.purchase_truth(CONFIG, day)
    for d in DAYS:  # warm: the whole window, then the same day again
        simulator.simulate_day(CONFIG, d)
    pd.testing.assert_frame_equal(cold_events, simulator.simulate_day(CONFIG, day))
    pd.testing.assert_frame_equal(cold_truth, intent_truth.purchase_truth(CONFIG, day))
    simulator.clear_cache()
    pd.testing.assert_frame_equal(cold_truth, intent_truth.purchase_truth(CONFIG, day))


def test_the_truth_does_not_depend_on_how_many_threads_compute_it(monkeypatch):
    day = DAYS[3]
    monkeypatch.setattr(intent_truth, "BLOCK_ROWS", 10 * CONFIG.n_users)  # 10 blocks of 10 replicas
    simulator.clear_cache()
    one = intent_truth.purchase_truth(CONFIG, day, threads=1)
    simulator.clear_cache()
    pd.testing.assert_frame_equal(one, intent_truth.purchase_truth(CONFIG, day, threads=3))


def test_another_seed_gives_another_world():
    other = simulator.simulate_day(SimulationConfig(**{**vars(CONFIG), "seed": 8}), DAYS[0])
    assert not other.equals(simulator.simulate_day(CONFIG, DAYS[0]))


def test_every_table_matches_its_schema_without_nulls():
    for table, frame in day_tables(CONFIG, DAYS[3]).items():
        schema = schemas.TABLES[table]
        assert list(frame.columns) == schema.names, table
        arrow = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        assert arrow.schema.equals(schema), table
        assert not frame.isna().any().any(), table
        assert len(frame) > 0, table


def test_events_belong_to_their_day_and_to_known_users_and_products(events):
    assert set(events["event_type"]) == set(schemas.EVENT_TYPES)
    assert events["event_id"].is_unique
    day = events["event_time"].dt.tz_convert("UTC").dt.date
    ds = simulator.simulate_day(CONFIG, DAYS[4])
    assert (ds["event_time"].dt.date == DAYS[4]).all()
    assert day.min() == DAYS[0] and day.max() == DAYS[-1]
    users = simulator.users_snapshot(CONFIG, DAYS[-1]).set_index("user_id")
    assert events["user_id"].isin(users.index).all()
    assert (events["event_time"].to_numpy() > users.loc[events["user_id"], "signup_time"].to_numpy()).all()
    catalogue = simulator.products(CONFIG).set_index("product_id")
    joined = catalogue.loc[events["product_id"]]
    assert (joined["price"].to_numpy() == events["price"].to_numpy()).all()
    assert (joined["category_id"].to_numpy() == events["category_id"].to_numpy()).all()


def test_purchases_and_removals_take_items_carted_that_day_or_before(events):
    in_cart: dict[tuple[int, int], int] = {}
    ordered = events.sort_values(["event_time", "event_id"])
    for kind, user, product in ordered[["event_type", "user_id", "product_id"]].itertuples(index=False):
        key = (user, product)
        if kind == "cart":
            in_cart[key] = in_cart.get(key, 0) + 1
        elif kind in ("purchase", "remove_from_cart"):
            assert in_cart.get(key, 0) > 0, f"{kind} of {key} without an open cart item"
            in_cart[key] -= 1
    assert (events["event_type"] == "purchase").sum() > 20


def test_every_session_starts_with_a_view_and_stays_within_one_user(events):
    first = events.sort_values(["event_time", "event_id"]).groupby("session_id").first()
    assert (first["event_type"] == "view").all()
    assert (events.groupby("session_id")["user_id"].nunique() == 1).all()


def test_users_and_follows_are_snapshots_as_of_the_end_of_the_day():
    early, late = DAYS[0], CONFIG.start + dt.timedelta(days=CONFIG.late_signup_days)
    users_early, users_late = simulator.users_snapshot(CONFIG, early), simulator.users_snapshot(CONFIG, late)
    assert len(users_early) < len(users_late) == CONFIG.n_users  # some users sign up during the window
    assert (users_early["signup_time"] < pd.Timestamp(schemas.as_of(early))).all()
    follows_early, follows_late = simulator.follows_snapshot(CONFIG, early), simulator.follows_snapshot(CONFIG, late)
    assert len(follows_early) < len(follows_late)
    assert (follows_early["created_at"] < pd.Timestamp(schemas.as_of(early))).all()
    assert not follows_late.duplicated(["follower_id", "followee_id"]).any()
    assert (follows_late["follower_id"] != follows_late["followee_id"]).all()
    in_degree = follows_late.groupby("followee_id").size()
    assert in_degree.max() > 5 * in_degree.median()  # a few popular accounts


def test_truth_is_a_probability_per_signed_up_user():
    truth = intent_truth.purchase_truth(CONFIG, DAYS[2])
    users = simulator.users_snapshot(CONFIG, DAYS[2])
    assert truth["user_id"].tolist() == users["user_id"].tolist()
    assert (truth["as_of"] == pd.Timestamp(schemas.as_of(DAYS[2]))).all()
    assert truth["p_purchase_7d"].between(0, 1).all()
    assert truth["p_purchase_7d"].std() > 0.05  # users differ: there is signal to find


def test_a_day_before_the_start_is_refused():
    with pytest.raises(SimulationError, match="before the simulation start"):
        simulator.simulate_day(CONFIG, CONFIG.start - dt.timedelta(days=1))


def test_daily_activity_is_driven_by_the_latent_propensity(events):
    theta = simulator._world(CONFIG).static.theta
    views = events[events["event_type"] == "view"].groupby("user_id").size()
    per_user = np.zeros(CONFIG.n_users)
    per_user[views.index.to_numpy() - 1] = views.to_numpy()
    assert np.corrcoef(np.log(theta), np.log1p(per_user))[0, 1] > 0.5

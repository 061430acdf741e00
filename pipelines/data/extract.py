"""Extract: land one simulated day (events, orders, labels that arrived, ground truth, dimension snapshots) in the
lake as ds partitions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pandas as pd

from pipelines.data import intent_truth, orders, schemas, simulator
from pipelines.data.simulator import SimulationConfig
from pipelines.lake import Lake
from pipelines.settings import Settings


def simulation_config(settings: Settings) -> SimulationConfig:
    """The simulated world of ``settings`` (seed, users, first day, a change of behaviour if one is set)."""
    return SimulationConfig(
        seed=settings.sim_seed,
        n_users=settings.sim_users,
        start=settings.start_date,
        shift_day=settings.sim_shift_day,
        shift_sessions=settings.sim_shift_sessions,
    )


def day_tables(config: SimulationConfig, ds: dt.date, threads: int = 1) -> dict[str, pd.DataFrame]:
    """Every table of partition ``ds``: what happened that day plus the dimensions as known at its end.

    ``orders`` are the orders placed that day, ``order_labels`` the fraud labels that arrived that day (for orders
    of earlier days). ``users`` includes the accounts fraudsters opened, which orders reference; they never browse
    or buy through events, so their purchase-intent truth is exactly 0 and they are kept in that table too (every
    user with a feature row has a truth row, and best_achievable scores the same rows a model is tested on).
    ``threads`` run the ground truth's blocks of replicas; the tables do not depend on it.
    """
    return dict(_day_tables(config, ds, threads))


def _day_tables(config: SimulationConfig, ds: dt.date, threads: int) -> Iterator[tuple[str, pd.DataFrame]]:
    """The tables of :func:`day_tables` one at a time, the events first, so a writer can drop each one (the
    day's events are gone before the ground truth, the largest working set, is computed)."""
    events = simulator.simulate_day(config, ds)
    yield "orders", orders.simulate_orders(config, ds, events=events)
    yield "events", events
    del events
    yield "products", simulator.products(config)
    yield "merchants", simulator.merchants(config)
    yield "follows", simulator.follows_snapshot(config, ds)
    yield "order_labels", orders.order_labels(config, ds)
    yield "truth_order_fraud", orders.fraud_truth(config, ds)
    users = simulator.users_snapshot(config, ds)
    truth = intent_truth.purchase_truth(config, ds, threads)
    fraudsters = orders.fraud_accounts(config, ds)
    if len(fraudsters):
        users = pd.concat([users, fraudsters], ignore_index=True)
        never = pd.DataFrame(
            {
                "user_id": fraudsters["user_id"],
                "as_of": pd.Series(pd.Timestamp(schemas.as_of(ds)), index=fraudsters.index).astype(
                    truth["as_of"].dtype
                ),
                "p_purchase_7d": 0.0,
            }
        )
        truth = pd.concat([truth, never], ignore_index=True)
    yield "truth_purchase_intent", truth
    yield "users", users


def extract_day(lake: Lake, config: SimulationConfig, ds: dt.date, threads: int = 1) -> dict[str, dict[str, object]]:
    """Write the partition ``ds`` of every simulated table (atomic per table; a rerun replaces, never appends).

    Returns ``{table: {"rows": n, "uri": partition uri}}``.
    """
    written: dict[str, dict[str, object]] = {}
    for table, frame in _day_tables(config, ds, threads):  # each table written as soon as it is made
        uri = lake.write(table, ds, frame, schema=schemas.TABLES[table])
        written[table] = {"rows": len(frame), "uri": uri}
    return written

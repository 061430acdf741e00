"""Extract: land one simulated day (events, orders, labels that arrived, ground truth, dimension snapshots) in the
lake as ds partitions."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pipelines.data import intent_truth, orders, schemas, simulator
from pipelines.data.simulator import SimulationConfig
from pipelines.lake import Lake
from pipelines.settings import Settings


def simulation_config(settings: Settings) -> SimulationConfig:
    """The simulated world of ``settings`` (seed, users, first day)."""
    return SimulationConfig(seed=settings.sim_seed, n_users=settings.sim_users, start=settings.start_date)


def day_tables(config: SimulationConfig, ds: dt.date, threads: int = 1) -> dict[str, pd.DataFrame]:
    """Every table of partition ``ds``: what happened that day plus the dimensions as known at its end.

    ``orders`` are the orders placed that day, ``order_labels`` the fraud labels that arrived that day (for orders
    of earlier days). ``users`` includes the accounts fraudsters opened, which orders reference; they never browse
    or buy through events, so their purchase-intent truth is exactly 0 and they are kept in that table too (every
    user with a feature row has a truth row, and best_achievable scores the same rows a model is tested on).
    ``threads`` run the ground truth's blocks of replicas; the tables do not depend on it.
    """
    events = simulator.simulate_day(config, ds)
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
    return {
        "events": events,
        "truth_purchase_intent": truth,
        "users": users,
        "products": simulator.products(config),
        "merchants": simulator.merchants(config),
        "follows": simulator.follows_snapshot(config, ds),
        "orders": orders.simulate_orders(config, ds, events=events),
        "order_labels": orders.order_labels(config, ds),
        "truth_order_fraud": orders.fraud_truth(config, ds),
    }


def extract_day(lake: Lake, config: SimulationConfig, ds: dt.date, threads: int = 1) -> dict[str, dict[str, object]]:
    """Write the partition ``ds`` of every simulated table (atomic per table; a rerun replaces, never appends).

    Returns ``{table: {"rows": n, "uri": partition uri}}``.
    """
    written: dict[str, dict[str, object]] = {}
    for table, frame in day_tables(config, ds, threads).items():
        uri = lake.write(table, ds, frame, schema=schemas.TABLES[table])
        written[table] = {"rows": len(frame), "uri": uri}
    return written

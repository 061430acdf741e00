"""Extract: land one simulated day (events, ground truth, dimension snapshots) in the lake as ds partitions."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pipelines.data import schemas, simulator
from pipelines.data.simulator import SimulationConfig
from pipelines.lake import Lake


def day_tables(config: SimulationConfig, ds: dt.date) -> dict[str, pd.DataFrame]:
    """Every table of partition ``ds``: what happened that day plus the dimensions as known at its end."""
    return {
        "events": simulator.simulate_day(config, ds),
        "truth_purchase_intent": simulator.purchase_truth(config, ds),
        "users": simulator.users_snapshot(config, ds),
        "products": simulator.products(config),
        "merchants": simulator.merchants(config),
        "follows": simulator.follows_snapshot(config, ds),
    }


def extract_day(lake: Lake, config: SimulationConfig, ds: dt.date) -> dict[str, dict[str, object]]:
    """Write the partition ``ds`` of every simulated table (atomic per table; a rerun replaces, never appends).

    Returns ``{table: {"rows": n, "uri": partition uri}}``.
    """
    written: dict[str, dict[str, object]] = {}
    for table, frame in day_tables(config, ds).items():
        uri = lake.write(table, ds, frame, schema=schemas.TABLES[table])
        written[table] = {"rows": len(frame), "uri": uri}
    return written

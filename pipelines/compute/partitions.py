"""Hash partitioning of lake tables by an entity key on ``dask.dataframe``: partition i of every frame keyed this
way holds exactly the rows whose key hashes to i, so frames line up for a per-partition pandas computation."""

from __future__ import annotations

import datetime as dt

import dask.dataframe as dd
import numpy as np
import pandas as pd

from pipelines.lake import Lake
from pipelines.settings import Settings

PART = "_part"


def partition_of(ids: pd.Series | np.ndarray, parts: int) -> np.ndarray:
    """The hash partition of each key (stable across processes and runs; an int32 and an int64 key agree)."""
    values = np.asarray(ids)
    if np.issubdtype(values.dtype, np.integer):
        values = values.astype("int64")
    return (pd.util.hash_array(values) % np.uint64(parts)).astype("int64")


def with_part(frame: pd.DataFrame, key: str, parts: int) -> pd.DataFrame:
    return frame.assign(**{PART: partition_of(frame[key], parts)})


def by_partition(frame: dd.DataFrame, parts: int) -> dd.DataFrame:
    """``frame`` (with a ``_part`` column) shuffled so that partition i holds exactly the rows of part i."""
    # The task-based shuffle: with tens of partitions its graph is small, and it starts far faster than p2p.
    return frame.set_index(PART, divisions=[*range(parts), parts - 1], sort=True, shuffle_method="tasks")


def lake_frame(lake: Lake, table: str, days: list[dt.date], columns: list[str]) -> dd.DataFrame:
    """The lake partitions of ``days`` as one dask frame, read by the workers themselves (local paths or S3)."""
    paths = [lake.partition_uri(table, d) for d in days]
    return dd.read_parquet(paths, columns=columns, storage_options=fsspec_options(lake.settings) or None)


def fsspec_options(settings: Settings) -> dict:
    """The lake's S3 endpoint and region as s3fs options (empty for a local lake). No credentials: the task graph
    travels to the scheduler and workers, so each worker reads its own AWS_* variables (docs/deploy.md)."""
    opts = settings.storage_options
    if not opts:
        return {}
    out: dict = {"client_kwargs": {"region_name": opts["region"]}}
    if "endpoint_url" in opts:
        out["endpoint_url"] = opts["endpoint_url"]
    return out

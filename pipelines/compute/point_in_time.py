"""Point-in-time training-set joins on ``dask.dataframe``: entity rows and feature rows hashed by the service's
first join key into aligned partitions, each joined by the pure core ``point_in_time_join``, so the result is the
pandas path's, row for row. A view not keyed by that key (e.g. product statistics) goes whole to every partition.
"""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client

from pipelines.compute.partitions import by_partition, lake_frame, with_part
from pipelines.features.point_in_time import (
    TIMESTAMP_COLUMN,
    ServicePlan,
    StoredView,
    point_in_time_join,
    view_days,
)
from pipelines.lake import Lake

_ROW = "_row"
_ENTITY_ROWS_PER_PARTITION = 50_000


def _empty_rows(view: StoredView) -> pd.DataFrame:
    return pd.DataFrame(columns=[*view.keys, view.timestamp, *view.reads])


def _join_part(
    entity: pd.DataFrame, *hashed: pd.DataFrame, plan: ServicePlan, names: list[str], whole: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    frames = dict(zip(names, (h.reset_index(drop=True) for h in hashed), strict=True)) | whole
    out = point_in_time_join(entity.reset_index(drop=True), plan, lambda view: frames[view.name])
    out[_ROW] = entity[_ROW].to_numpy()
    return out


def point_in_time_dask(client: Client, lake: Lake, plan: ServicePlan, entity: pd.DataFrame, parts: int) -> pd.DataFrame:
    """The same frame as ``historical_join(lake, plan, entity)``, computed on the cluster of ``client``."""
    if entity.empty or not plan.views:
        return point_in_time_join(entity.reset_index(drop=True), plan, _empty_rows)
    key = plan.keys[0]
    entity_ns = (
        pd.to_datetime(entity[TIMESTAMP_COLUMN], utc=True, cache=False).dt.as_unit("ns").astype("int64").to_numpy()
    )
    names: list[str] = []
    hashed: list[dd.DataFrame] = []
    whole: dict[str, pd.DataFrame] = {}
    for view in plan.views:
        days = view_days(lake, view, entity_ns)
        if not days:
            whole[view.name] = _empty_rows(view)
            continue
        rows = lake_frame(lake, view.table, days, [*view.keys, view.timestamp, *view.reads])
        if key in view.keys:
            names.append(view.name)
            hashed.append(by_partition(rows.map_partitions(with_part, key, parts), parts))
        else:
            whole[view.name] = client.compute(rows).result()
    asked = entity.reset_index(drop=True).assign(**{_ROW: np.arange(len(entity))})
    chunks = max(1, min(parts, len(asked) // _ENTITY_ROWS_PER_PARTITION + 1))
    entity_dd = by_partition(dd.from_pandas(with_part(asked, key, parts), npartitions=chunks), parts)
    meta = pd.DataFrame({**{f: pd.Series(dtype="float64") for f in plan.features}, _ROW: pd.Series(dtype="int64")})
    joined = dd.map_partitions(_join_part, entity_dd, *hashed, plan=plan, names=names, whole=whole, meta=meta)
    out = client.compute(joined).result()
    return out.sort_values(_ROW).drop(columns=_ROW).reset_index(drop=True)

"""Purchase labels: did the user buy anything in the window that starts at an as-of time?"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd

from pipelines.data import schemas


class LabelError(ValueError):
    """The events given to the labeller lack a column or hold unusable values."""


def purchase_labels(
    events: pd.DataFrame,
    as_of_days: Iterable[dt.date],
    user_ids: Iterable[int],
    window_days: int = 7,
    event_type: str = "purchase",
    zone: str = "UTC",
) -> pd.DataFrame:
    """One row per (user, as-of day): ``label`` = 1 if the user has a ``event_type`` event in
    ``[as_of(D), as_of(D) + window_days)``, else 0; days are those of the lake's day ``zone``.

    ``events`` needs ``user_id``, ``event_type`` and a UTC ``event_time``; the caller is responsible for passing
    every event of the label windows (see :func:`pipelines.data.truth.best_achievable` for a checked use).
    Returns columns ``user_id`` (int64), ``as_of`` (UTC timestamp) and ``label`` (int8), ordered by as_of, user.
    """
    missing = {"user_id", "event_type", "event_time"} - set(events.columns)
    if missing:
        raise LabelError(f"events frame lacks column(s) {sorted(missing)}; expected the EVENTS schema")
    if window_days < 1:
        raise LabelError(f"window_days must be >= 1, got {window_days}")
    days = sorted({d for d in as_of_days})
    users = np.unique(np.asarray(list(user_ids), dtype="int64"))
    grid = pd.DataFrame(
        {
            "user_id": np.tile(users, len(days)),
            "as_of": pd.DatetimeIndex([schemas.as_of(d, zone) for d in days]).as_unit("ns").repeat(len(users)),
        }
    )
    if grid.empty:
        return grid.assign(label=np.empty(0, dtype="int8"))

    buys = events.loc[events["event_type"] == event_type, ["user_id", "event_time"]]
    times = pd.to_datetime(buys["event_time"], utc=True, cache=False).dt.tz_convert(zone).dt.tz_localize(None)
    # A purchase on calendar day P is inside the window of as-of day D exactly when D+1 <= P <= D+window.
    buy_days = pd.DataFrame(
        {"user_id": buys["user_id"].astype("int64").to_numpy(), "day": times.dt.floor("D").to_numpy()}
    )
    buy_days = buy_days.drop_duplicates()
    offsets = np.arange(1, window_days + 1)
    hits = pd.DataFrame(
        {
            "user_id": np.repeat(buy_days["user_id"].to_numpy(), len(offsets)),
            # as_of(D) = D+1 00:00, so as_of = P - (offset - 1) days for offset = P - D in 1..window.
            "as_of": (
                buy_days["day"].to_numpy().repeat(len(offsets))
                - np.tile((offsets - 1).astype("timedelta64[D]"), len(buy_days))
            ),
        }
    )
    hits["as_of"] = (
        pd.to_datetime(hits["as_of"], cache=False).dt.tz_localize(zone).dt.tz_convert("UTC").dt.as_unit("ns")
    )
    hits = hits.drop_duplicates().assign(label=np.int8(1))
    out = grid.merge(hits, on=["user_id", "as_of"], how="left")
    out["label"] = out["label"].fillna(0).astype("int8")
    return out.sort_values(["as_of", "user_id"], ignore_index=True)

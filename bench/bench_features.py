"""User feature computation at demo scale (5,000 users, 30 days of ~15k events/day) against a plain groupby.

Run: `uv run python -m bench.bench_features`. Prints the time of `compute_user_features` next to the time of a
bare pandas count of events per user and type (the least any feature build must do), and their ratio.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.features.user_features import compute_user_features

DS = dt.date(2025, 1, 30)


def _world(n_users: int = 5_000, per_day: int = 15_000, days: int = 30) -> tuple[pd.DataFrame, ...]:
    rng = np.random.default_rng(7)
    n = per_day * days
    start = pd.Timestamp(DS - dt.timedelta(days=days - 1), tz="UTC")
    events = pd.DataFrame(
        {
            "event_time": start + pd.to_timedelta(rng.integers(0, days * 86_400, n), unit="s"),
            "user_id": rng.integers(1, n_users + 1, n),
            "session_id": rng.integers(0, 100_000, n).astype(str),
            "event_type": rng.choice(list(schemas.EVENT_TYPES), n, p=[0.7, 0.15, 0.05, 0.05, 0.05]),
            "product_id": rng.integers(1, 2_000, n),
            "price": rng.uniform(1, 100, n),
        }
    )
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1), "signup_time": start - pd.Timedelta(days=1)})
    pairs = rng.integers(1, n_users + 1, size=(20_000, 2))
    follows = pd.DataFrame({"follower_id": pairs[:, 0], "followee_id": pairs[:, 1], "created_at": start})
    return events, users, follows


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    events, users, follows = _world()
    ours = _best_of(lambda: compute_user_features(events, users, follows, DS))
    raw = _best_of(lambda: events.groupby(["user_id", "event_type"]).size().unstack(fill_value=0))
    print(f"events: {len(events):,}  users: {len(users):,}")
    print(f"compute_user_features: {ours:.3f} s")
    print(f"raw groupby count:     {raw:.3f} s")
    print(f"ratio (ours / raw):    {ours / raw:.1f}x")


if __name__ == "__main__":
    main()

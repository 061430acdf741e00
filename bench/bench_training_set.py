"""Point-in-time training set: the platform's join against pandas ``merge_asof`` and Feast's own retrieval.

A synthetic lake holds ``user_behavior`` partitions at the shape of the 380,000-user world (one row per user and
day for 90% of the users, 19 float features); the entity rows are users at the as-of stamps of the newest days,
as the purchase-intent training set asks. Each contender runs in its own process on the same rows, so its peak
resident memory (``wait4``) is its own:

- ``historical_features``: the platform's step (``pipelines.features.store``: lake read + vectorised join);
- ``merge_asof``: the same partitions read with the same columns, sorted, ``pd.merge_asof(by=..., tolerance=ttl)``,
  put back in input order (seconds of the join alone in brackets);
- Feast ``get_historical_features`` (file offline store, Dask): at ``--feast-rows`` (it is far slower), with the
  two others at that size too so every ratio compares equal work.

The ratio is against ``merge_asof`` at the same size; results are checked equal (a digest of the values).
Run: ``uv run python -m bench.bench_training_set [--rows 1000000] [--feast-rows 200000] [--users 380000]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.features.user_features import FEATURE_COLUMNS, USER_FEATURES_SCHEMA, USER_FEATURES_TABLE
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings

FIRST_DAY = dt.date(2025, 3, 1)
TTL = pd.Timedelta(days=3)  # feature_repo/users.py USER_BEHAVIOR_TTL
SERVICE = "purchase_intent"
ENTITY_FILE = "entity.parquet"


def _settings(home: Path) -> Settings:
    return get_settings(home=home, num_threads=1)


def _entity_days(rows: int, users: int) -> int:
    return max(1, -(-rows // int(users * 0.9)))


def build_lake(home: Path, rows: int, users: int) -> None:
    """Partitions for the entity days and the ttl before them, and ``rows`` entity rows at as-of stamps."""
    rng = np.random.default_rng(7)
    lake = Lake(_settings(home))
    entity_days = _entity_days(rows, users)
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(TTL.days + entity_days)]
    ids = np.arange(1, users + 1, dtype="int64")
    for day in days:
        present = ids[rng.random(users) < 0.9]
        frame = pd.DataFrame({"user_id": present, "event_timestamp": pd.Timestamp(schemas.as_of(day))})
        values = rng.gamma(1.0, 3.0, size=(len(present), len(FEATURE_COLUMNS))).round(2)
        frame = pd.concat([frame, pd.DataFrame(values, columns=FEATURE_COLUMNS)], axis=1)
        lake.write(USER_FEATURES_TABLE, day, frame, schema=USER_FEATURES_SCHEMA)
    stamps = np.array([pd.Timestamp(schemas.as_of(d)) for d in days[-entity_days:]])
    entity = pd.DataFrame(
        {
            "user_id": rng.integers(1, int(users * 1.02), rows),  # 2% of the asked users have no row at all
            "event_timestamp": stamps[rng.integers(0, len(stamps), rows)],
            "label": rng.integers(0, 2, rows),
        }
    )
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True).dt.as_unit("us")
    entity.to_parquet(home / ENTITY_FILE, index=False)


def _digest(frame: pd.DataFrame) -> str:
    values = np.nan_to_num(frame[FEATURE_COLUMNS].to_numpy(dtype="float64"), nan=-1.0)
    return hashlib.sha256(values.tobytes()).hexdigest()[:12]


class _Clock:
    """Wall and CPU seconds of a block (CPU time is less distorted than wall time on a busy shared machine)."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _ours(settings: Settings, entity: pd.DataFrame, clock: _Clock) -> pd.DataFrame:
    from pipelines.features.store import historical_features

    with clock:
        return historical_features(settings, entity, SERVICE)


def _merge_asof(settings: Settings, entity: pd.DataFrame, clock: _Clock, join: _Clock) -> pd.DataFrame:
    with clock:
        stamps = entity["event_timestamp"]
        first = (stamps.min() - TTL - pd.Timedelta(days=1)).date()
        columns = ["user_id", "event_timestamp", *FEATURE_COLUMNS]
        rows = Lake(settings).read_range(USER_FEATURES_TABLE, first, stamps.max().date(), columns=columns)
        with join:
            left = entity.assign(_row=np.arange(len(entity))).sort_values("event_timestamp", kind="stable")
            right = rows.sort_values("event_timestamp", kind="stable")
            right["event_timestamp"] = right["event_timestamp"].dt.as_unit("us")
            out = pd.merge_asof(left, right, on="event_timestamp", by="user_id", tolerance=TTL, direction="backward")
            return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def _feast(settings: Settings, entity: pd.DataFrame, clock: _Clock) -> pd.DataFrame:
    from pipelines.features.store import feature_store

    store = feature_store(settings)
    service = store.get_feature_service(SERVICE)
    with clock:
        return store.get_historical_features(entity_df=entity[["user_id", "event_timestamp"]], features=service).to_df()


def run_one(kind: str, home: Path, rows: int) -> dict:
    """One contender in this process: seconds, rows returned, digest of the values (same rows, same order)."""
    settings = _settings(home)
    entity = pd.read_parquet(home / ENTITY_FILE).head(rows)
    clock, join = _Clock(), _Clock()
    if kind == "ours":
        out = _ours(settings, entity, clock)
    elif kind == "merge_asof":
        out = _merge_asof(settings, entity, clock, join)
    else:
        out = _feast(settings, entity, clock)
    result = {"kind": kind, "asked": len(entity), "returned": len(out), "seconds": clock.wall, "cpu": clock.cpu}
    if kind == "merge_asof":
        result |= {"join_seconds": join.wall, "join_cpu": join.cpu}
    # Feast returns its rows in its own order (and drops some): tests/test_point_in_time.py compares its values.
    result["digest"] = _digest(out) if kind != "feast" else "-"
    result["peak_gb"] = _own_peak_gb()
    return result


def _own_peak_gb() -> float:
    """This process's peak resident memory since its exec (VmHWM): ``wait4``'s figure would also count the pages
    of a large parent it was forked from, which Linux carries across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(kind: str, home: Path, rows: int) -> dict:
    """Run one contender in a child process; its peak RSS comes from ``wait4`` (the child's own maximum)."""
    cmd = [sys.executable, "-m", "bench.bench_training_set", "--one", kind, "--home", str(home), "--rows", str(rows)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read() if child.stdout else ""
    _, status, _ = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{kind} at {rows} rows failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="entity rows of the training set")
    parser.add_argument("--feast-rows", type=int, default=200_000, help="entity rows Feast is asked for (0: skip)")
    parser.add_argument("--users", type=int, default=380_000, help="users per daily partition (90%% present)")
    parser.add_argument("--one", choices=["ours", "merge_asof", "feast"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.home, args.rows)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-training-set-") as tmp:
        home = Path(tmp)
        began = time.perf_counter()
        build_lake(home, max(args.rows, args.feast_rows), args.users)
        days = TTL.days + _entity_days(max(args.rows, args.feast_rows), args.users)
        print(
            f"lake: {days} daily partitions of ~{int(args.users * 0.9):,} user rows x {len(FEATURE_COLUMNS)} features "
            f"(built in {time.perf_counter() - began:.0f} s)"
        )
        sizes = [args.rows] + ([args.feast_rows] if args.feast_rows else [])
        results = []
        for rows in sizes:
            kinds = ["merge_asof", "ours"] + (["feast"] if rows == args.feast_rows else [])
            results += [measure(kind, home, rows) for kind in kinds]

    names = {"ours": "historical_features (platform)", "merge_asof": "pandas merge_asof", "feast": "Feast (Dask)"}
    print("seconds: wall / CPU of this process; merge_asof's join alone (after the read) in brackets")
    header = f"{'entity rows':>11} | {'contender':<30} | {'wall s':>13} | {'CPU s':>13} | {'peak RSS GB':>11} | "
    print(header + f"{'rows kept':>9} | {'wall ratio':>10} | {'CPU ratio':>9} | same values")
    print("-" * 138)
    for r in results:
        base = next(b for b in results if b["kind"] == "merge_asof" and b["asked"] == r["asked"])
        wall = f"{r['seconds']:.2f}" + (f" ({r['join_seconds']:.2f})" if "join_seconds" in r else "")
        cpu = f"{r['cpu']:.2f}" + (f" ({r['join_cpu']:.2f})" if "join_cpu" in r else "")
        same = "-" if r["digest"] == "-" else ("yes" if r["digest"] == base["digest"] else "NO")
        print(
            f"{r['asked']:>11,} | {names[r['kind']]:<30} | {wall:>13} | {cpu:>13} | {r['peak_gb']:>11.2f} | "
            f"{r['returned']:>9,} | {r['seconds'] / base['seconds']:>9.2f}x | {r['cpu'] / base['cpu']:>8.2f}x | {same}"
        )


if __name__ == "__main__":
    main()

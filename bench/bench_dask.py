"""User features of one synthetic day of N events (10M by default): the Dask LocalCluster path against the
single-process pandas path, with seconds and peak memory of every process.

Run: `uv run python -m bench.bench_dask [EVENTS] [--workers 2] [--memory 4GiB] [--pandas-max 10000000]`. The day
is generated with numpy at the simulator's schema (10 events per user, 5 follows per user, the simulator's mix of
event types) and written to a lake partition under a temporary home; both paths read it from there. The pandas
path runs in a child process of its own (its peak RSS is the child's, from wait4), at EVENTS and at fractions of
it, so the table shows how its memory grows; it is skipped above ``--pandas-max`` events. Only day DS is written:
the features read 30 days of events, so a day of N events here is a window of N events (a steady N/30 a day).

`uv run python -m bench.bench_dask --demo-world HOME` compares the two engines on the demo world instead (5,000
simulated users, 35 days, simulated into HOME unless already there): user features of the last day, the shipped
purchase_intent spec's training set, and its model's test ROC-AUC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data import schemas
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings

DS = dt.date(2025, 3, 1)
EVENTS_PER_USER = 10
FOLLOWS_PER_USER = 5
CHUNK = 1_000_000
# The simulator's event mix (measured on a simulated world), in schemas.EVENT_TYPES order.
TYPE_SHARES = (0.80, 0.115, 0.03, 0.03, 0.025)


def write_day(settings: Settings, n_events: int, seed: int = 7) -> None:
    """Events, users and follows of day DS in the lake of ``settings`` (events written chunk by chunk)."""
    lake = Lake(settings)
    rng = np.random.default_rng(seed)
    n_users = max(1, n_events // EVENTS_PER_USER)
    start = pd.Timestamp(DS, tz="UTC")
    path = Path(lake.partition_uri("events", DS))
    path.parent.mkdir(parents=True, exist_ok=True)
    types = np.array(schemas.EVENT_TYPES)
    with pq.ParquetWriter(path, schemas.EVENTS) as writer:
        for first in range(0, n_events, CHUNK):
            n = min(CHUNK, n_events - first)
            users = rng.integers(1, n_users + 1, n)
            columns = {
                "event_id": pa.array(np.char.add("e", np.arange(first, first + n).astype("U12"))),
                "event_time": pa.array(start + pd.to_timedelta(np.sort(rng.integers(0, 86_400_000_000, n)), "us")),
                "user_id": pa.array(users),
                "session_id": pa.array(
                    np.char.add(users.astype("U12"), np.char.add("-", rng.integers(0, 3, n).astype("U1")))
                ),
                "event_type": pa.array(types[rng.choice(len(types), n, p=TYPE_SHARES)]),
                "product_id": pa.array(rng.integers(1, 50_000, n)),
                "category_id": pa.array(rng.integers(1, 200, n)),
                "brand": pa.array(np.full(n, "acme")),
                "price": pa.array(rng.uniform(1, 300, n)),
                "merchant_id": pa.array(rng.integers(1, 2_000, n)),
            }
            writer.write_table(pa.table(columns, schema=schemas.EVENTS))
    signup = start - pd.to_timedelta(rng.integers(1, 400 * 86_400, n_users), "s")
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "signup_time": signup,
            "country": "DE",
            "age": np.int32(30),
            "sex": "f",
        }
    )
    lake.write("users", DS, users, schema=schemas.USERS)
    n_edges = n_users * FOLLOWS_PER_USER
    follows = pd.DataFrame(
        {
            "follower_id": rng.integers(1, n_users + 1, n_edges),
            "followee_id": rng.integers(1, n_users + 1, n_edges),
            "created_at": start - pd.Timedelta(days=1),
        }
    )
    lake.write("follows", DS, follows, schema=schemas.FOLLOWS)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run_pandas(home: str) -> None:
    """Child process: the pandas path on the lake of ``home``; prints its seconds."""
    from pipelines.compute.engine import user_features

    settings = get_settings(home=home)
    started = time.perf_counter()
    frame = user_features(settings, Lake(settings), DS)
    print(f"{time.perf_counter() - started:.3f} {len(frame)}")


def measure_pandas(home: str) -> tuple[float, int, float]:
    """Seconds, feature rows and peak RSS (MB) of the pandas path in its own process."""
    env = os.environ | {"STOREFRONT_COMPUTE": "pandas"}
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_dask", "--pandas-child", home], stdout=subprocess.PIPE, text=True, env=env
    )
    out = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise RuntimeError(f"the pandas child failed with status {status} (out of memory?)")
    seconds, rows = out.split()[-2:]
    return float(seconds), int(rows), usage.ru_maxrss / 1024


def measure_dask(home: str, workers: int, memory: str) -> tuple[float, int, float, list[float]]:
    """Seconds (warm cluster), feature rows, peak RSS (MB) of this process and of each worker."""
    from pipelines.compute.cluster import dask_client
    from pipelines.compute.engine import user_features

    settings = get_settings(home=home, compute="dask", dask_workers=workers, dask_worker_memory=memory)
    client = dask_client(settings)
    client.run(lambda: __import__("pipelines.compute.user_features"))  # imports are not the computation
    started = time.perf_counter()
    frame = user_features(settings, Lake(settings), DS)
    seconds = time.perf_counter() - started
    peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return seconds, len(frame), _peak_mb(), sorted(peaks.values())


def demo_world(home: str, workers: int) -> None:
    """Both engines on the demo world: equal features and training set, the models' main metric side by side."""
    from pipelines.compute.engine import fit_on_engine, user_features
    from pipelines.data.extract import extract_day, simulation_config
    from pipelines.features.user_features import USER_FEATURES_TABLE, write_user_features
    from pipelines.settings import PROJECT_ROOT
    from pipelines.specs import load_spec
    from pipelines.training.dataset import save_training_set, split_days
    from pipelines.training.train import split_metrics
    from pipelines.usecases import use_case

    on_pandas = get_settings(home=home, num_threads=1)
    on_dask = on_pandas.model_copy(update={"compute": "dask", "dask_workers": workers, "dask_worker_memory": "2GiB"})
    lake, config = Lake(on_pandas), simulation_config(on_pandas)
    days = [on_pandas.start_date + dt.timedelta(days=i) for i in range(35)]
    for day in days:
        if not lake.exists(USER_FEATURES_TABLE, day):
            extract_day(lake, config, day)
            write_user_features(lake, day, user_features(on_pandas, lake, day))
    last = days[-1]
    spec = load_spec(PROJECT_ROOT / "models" / "purchase_intent.yaml")
    features = {name: user_features(s, lake, last) for name, s in (("pandas", on_pandas), ("dask", on_dask))}
    pd.testing.assert_frame_equal(features["dask"], features["pandas"], check_exact=False, rtol=1e-12)
    sets = {}
    for name, settings in (("pandas", on_pandas), ("dask", on_dask)):
        frame = use_case("user").build_rows(settings, lake, spec, split_days(spec, last), last)
        sets[name] = save_training_set(lake, spec, last, frame)
    pd.testing.assert_frame_equal(sets["dask"].frame, sets["pandas"].frame, check_exact=True)
    print(
        f"demo world, {last}: {len(features['pandas']):,} users' features equal; training sets equal "
        f"({sets['pandas'].row_counts['total']:,} rows, digest {sets['pandas'].digest[:12]})"
    )
    print(f"{'engine':>8} {'fit s':>7} {'best iteration':>15} {'test ' + spec.main_metric:>14}")
    for name, settings in (("pandas", on_pandas), ("dask", on_dask)):
        started = time.perf_counter()
        booster, _ = fit_on_engine(settings, spec, sets["pandas"])
        seconds = time.perf_counter() - started
        score = split_metrics(spec, booster, sets["pandas"], 1)[f"test_{spec.main_metric}"]
        print(f"{name:>8} {seconds:>7.1f} {booster.best_iteration:>15} {score:>14.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", nargs="?", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory", default="4GiB", help="memory limit per Dask worker")
    parser.add_argument("--pandas-max", type=int, default=10_000_000, help="largest day run on the pandas path")
    parser.add_argument("--demo-world", metavar="HOME", help="compare the engines on the demo world in HOME")
    parser.add_argument("--pandas-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.demo_world:
        demo_world(args.demo_world, args.workers)
        return
    if args.pandas_child:
        run_pandas(args.pandas_child)
        return

    sizes = sorted({max(1, args.events // 10), max(1, args.events * 3 // 10), args.events})
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        for size in sizes:
            home = f"{tmp}/{size}"
            started = time.perf_counter()
            write_day(get_settings(home=home), size)
            print(f"{size:,} events written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            pandas = measure_pandas(home) if size <= args.pandas_max else None
            dask = measure_dask(home, args.workers, args.memory) if size == args.events else None
            if pandas and dask:
                assert pandas[1] == dask[1], "the two paths returned different numbers of users"
            rows.append((size, pandas, dask))

    print(f"\nUser features of one day; Dask: LocalCluster of {args.workers} workers x 1 thread ({args.memory} each)")
    print(
        f"{'events':>12} {'users':>10} {'pandas s':>9} {'pandas peak MB':>15} {'dask s':>8} "
        f"{'dask driver MB':>15} {'dask workers MB':>18} {'dask/pandas s':>14}"
    )
    for size, pandas, dask in rows:
        users = (pandas or dask)[1]  # type: ignore[index]
        p_s = f"{pandas[0]:.1f}" if pandas else "-"
        p_mb = f"{pandas[2]:,.0f}" if pandas else "skipped"
        d_s = f"{dask[0]:.1f}" if dask else "-"
        d_drv = f"{dask[2]:,.0f}" if dask else "-"
        d_w = " / ".join(f"{m:,.0f}" for m in dask[3]) if dask else "-"
        ratio = f"{dask[0] / pandas[0]:.2f}" if pandas and dask else "-"
        print(f"{size:>12,} {users:>10,} {p_s:>9} {p_mb:>15} {d_s:>8} {d_drv:>15} {d_w:>18} {ratio:>14}")
    measured = [(size, pandas[2]) for size, pandas, _ in rows if pandas]
    if len(measured) >= 2:
        (small, small_mb), (large, large_mb) = measured[-2], measured[-1]
        slope = (large_mb - small_mb) / ((large - small) / 1e6)  # MB per million events, imports excluded
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
        reach = large / 1e6 + (ram - large_mb) / slope
        # The features read 30 days of events: a steady daily volume puts 30 days of it in one computation.
        print(
            f"pandas path: +{slope:,.0f} MB per million events read ({small:,} -> {large:,}); one process would "
            f"fill this machine's {ram / 1024:.0f} GiB at about {reach:.0f}M events in the 30-day window, i.e. "
            f"about {reach / 30:.1f}M events a day at a steady volume"
        )


if __name__ == "__main__":
    main()

"""The daily chain through Airflow at several world sizes: seconds per task and peak memory of the run.

For each size a fresh home runs ``mlctl backfill --dag daily_features`` over ``--days`` days (the local profile:
``dag.test`` in one process, SQLite online store) and the last day is reported: events of the day, each task's
duration from Airflow's metadata DB, the day's run time (first task start to last task end) and the peak resident
memory of the whole ``mlctl`` process (``wait4``: the largest RSS of it and its children). One table; with
``--plot`` a figure of seconds per step against events per day.

Run: ``uv run python -m bench.bench_daily_chain [--users 20000 95000 380000] [--days 2] [--plot FILE]``
(380,000 users make ~1M events a day; 20,000 users ~50k).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

STEPS = ["extract", "validate", "features_user_behavior", "features_order_risk", "features_ranking", "materialize"]
FIRST_DAY = dt.date(2025, 1, 1)


def _mlctl() -> str:
    return str(Path(sys.executable).with_name("mlctl"))


def _events(home: Path, day: dt.date) -> int:
    folder = home / "lake" / "events" / f"ds={day.isoformat()}"
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))


def _task_seconds(home: Path, day: dt.date) -> tuple[dict[str, float], float]:
    """Durations of the day's latest run's tasks and the run's span (first start to last end), from Airflow's DB."""
    db = sqlite3.connect(home / "airflow" / "airflow.db")
    try:
        run_id = db.execute(
            "select run_id from dag_run where dag_id='daily_features' and date(logical_date)=? "
            "order by start_date desc limit 1",
            (day.isoformat(),),
        ).fetchone()[0]
        rows = db.execute(
            "select task_id, start_date, end_date from task_instance where dag_id='daily_features' and run_id=?",
            (run_id,),
        ).fetchall()
    finally:
        db.close()
    stamps = {task: (dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b)) for task, a, b in rows if a and b}
    seconds = {task: (end - start).total_seconds() for task, (start, end) in stamps.items()}
    span = (max(e for _, e in stamps.values()) - min(s for s, _ in stamps.values())).total_seconds()
    return seconds, span


def run_size(users: int, days: int, root: Path) -> dict:
    """Run the chain for ``days`` days at ``users`` users in a fresh home; measurements of the last day."""
    home = root / f"users_{users}"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "STOREFRONT_HOME": str(home), "STOREFRONT_SIM_USERS": str(users)}
    last = FIRST_DAY + dt.timedelta(days=days - 1)
    args = [_mlctl(), "backfill", "--dag", "daily_features", "--from", FIRST_DAY.isoformat(), "--to", last.isoformat()]
    started = time.perf_counter()
    with open(root / f"users_{users}.out", "w") as out:
        child = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"daily chain at {users} users failed; see {root / f'users_{users}.out'}")
    steps, span = _task_seconds(home, last)
    return {
        "users": users,
        "events": _events(home, last),
        "day": last.isoformat(),
        "steps": steps,
        "day_seconds": span,
        "all_days_wall_seconds": wall,
        "peak_rss_gb": usage.ru_maxrss / 1024**2,
    }


def print_table(results: list[dict]) -> None:
    header = ["users", "events/day", *STEPS, "day (s)", "peak RSS (GB)"]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in results:
        cells = [f"{r['users']:,}", f"{r['events']:,}", *(f"{r['steps'].get(s, float('nan')):.1f}" for s in STEPS)]
        print(" | ".join([*cells, f"{r['day_seconds']:.1f}", f"{r['peak_rss_gb']:.2f}"]))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [r["events"] for r in results]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for step in STEPS:
        ax.plot(events, [r["steps"].get(step, 0.0) for r in results], marker="o", label=step)
    ax.plot(events, [r["day_seconds"] for r in results], marker="s", color="black", linewidth=2, label="whole day")
    ax.set_xscale("log")
    ax.set_xlabel("events per day")
    ax.set_ylabel("seconds (Airflow task duration)")
    ax.set_title("Daily chain through Airflow, local profile, 2-core machine")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[20_000, 95_000, 380_000])
    parser.add_argument("--days", type=int, default=2, help="days run per size; the last one is reported")
    parser.add_argument("--root", type=Path, default=Path("/tmp/storefront-bench-chain"))
    parser.add_argument("--plot", type=Path, help="write the figure of seconds per step against events per day")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    for users in args.users:
        results.append(run_size(users, args.days, args.root))
        print(f"measured {users:,} users", file=sys.stderr)
    print_table(results)
    if args.plot:
        plot(results, args.plot)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""The daily chain at ~1M events a day on the stack profile: Airflow's scheduler (LocalExecutor), a PostgreSQL
metadata DB, the lake on loopback S3, the Feast online store in Redis.

A private stack on free ports (the integration tests' helper: its own databases, bucket and Feast project, dropped
at the end) runs a 2-day Airflow backfill of ``daily_features`` at ``--users`` simulated users with every model
spec of ``models/``; the second day is reported: each task's duration from Airflow's REST API, the day's span, and
the resident memory of the stack's processes sampled every half second (largest single process, and all of them).

Run: ``uv run python -m bench.bench_stack_chain [--users 380000]`` (needs PostgreSQL and Redis on loopback).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import threading
import time
from pathlib import Path

from pipelines.lake import Lake
from pipelines.orchestration.airflow_client import AirflowClient
from pipelines.settings import PROJECT_ROOT
from pipelines.stack import supervisor
from tests.stack_support import start_world

FIRST = dt.date(2025, 1, 1)
LAST = FIRST + dt.timedelta(days=1)


class MemorySampler(threading.Thread):
    """The largest resident set of one stack process and of all of them together, sampled until stopped."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings, self.stop = settings, threading.Event()
        self.largest_mb, self.total_mb = 0.0, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            state = supervisor.read_state(self.settings)
            pids = supervisor.stack_pids(state) if state else []
            sizes = [supervisor._rss_mb([pid]) for pid in pids]
            if sizes:
                self.largest_mb = max(self.largest_mb, max(sizes))
                self.total_mb = max(self.total_mb, sum(sizes))
            time.sleep(0.5)


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return float("nan")
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=380_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stack-chain-") as tmp:
        overrides = {
            "sim_users": args.users,
            "models_dir": PROJECT_ROOT / "models",
            "start_date": FIRST,
            "end_date": LAST,
            "num_threads": 2,
        }
        with start_world(Path(tmp), **overrides) as world:
            sampler = MemorySampler(world.settings)
            sampler.start()
            began = time.perf_counter()
            result = world.mlctl("backfill", "--dag", "daily_features", "--from", str(FIRST), "--to", str(LAST))
            wall = time.perf_counter() - began
            sampler.stop.set()
            sampler.join()
            if result.returncode != 0:
                raise SystemExit(f"backfill failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            client = AirflowClient(world.settings)
            run = client.runs_between("daily_features", f"{LAST}T00:00:00Z", f"{LAST}T00:00:00Z")[0]
            tasks = client.task_instances("daily_features", run["dag_run_id"])
            # This process reads the S3 lake with the stack's credentials (from its environment, as the tasks do).
            os.environ.update({k: world.env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
            events = Lake(world.settings).row_count("events", LAST)
    steps = {t["task_id"]: _seconds(t.get("start_date"), t.get("end_date")) for t in tasks}
    starts = [t["start_date"] for t in tasks if t.get("start_date")]
    ends = [t["end_date"] for t in tasks if t.get("end_date")]
    span = _seconds(min(starts), max(ends))
    print(f"stack profile (LocalExecutor, S3 lake, Redis online store), {args.users:,} users, day {LAST}")
    print(f"events of the day: {events:,}; 2-day backfill wall {wall:.0f} s")
    for task, seconds in sorted(steps.items()):
        print(f"  {task:<26} {seconds:>7.1f} s")
    print(f"  {'day (first start .. last end)':<26} {span:>7.1f} s")
    print(
        f"peak resident memory: largest process {sampler.largest_mb / 1024:.2f} GB, "
        f"all stack processes {sampler.total_mb / 1024:.2f} GB"
    )


if __name__ == "__main__":
    main()

"""The daily DAG's per-task overhead at demo size: each step's own time against the whole run under ``dag.test``.

A fresh home runs the daily DAG in-process (as ``make demo`` does) for ``--days`` days. Each step function of
``pipelines.flows.daily_features`` is timed where the DAG calls it (wall and CPU seconds); the rest of a run is
Airflow's (task start-up, XCom, state updates, DAG re-sync). Day 1 also pays the imports (Airflow, GX, Feast), so
it is shown apart from the mean of the later days. CPU seconds are the figure to compare on a shared machine.

Run: ``uv run python -m bench.bench_task_overhead [--users 5000] [--days 4] [--home DIR]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

STEPS = ("extract", "validate", "feature_family", "materialize")


def _timed_steps(flows, spent: dict[str, list[float]]) -> None:
    """Wrap the step functions the DAG looks up on the flows module at call time."""
    for name in STEPS:
        step = getattr(flows, name)

        def timed(*args, _step=step, _name=name, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return _step(*args, **kwargs)
            finally:
                spent[_name][0] += time.perf_counter() - wall
                spent[_name][1] += time.process_time() - cpu

        setattr(flows, name, timed)


def measure(users: int, days: int, home: Path) -> list[dict[str, tuple[float, float]]]:
    """Per day, each step's (wall, CPU) seconds where the DAG calls it, Airflow's share and the whole day."""
    os.environ.update(STOREFRONT_HOME=str(home), STOREFRONT_SIM_USERS=str(users))

    from pipelines.flows import daily_features as flows
    from pipelines.orchestration.runs import run_in_process
    from pipelines.settings import get_settings

    settings = get_settings()
    spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    _timed_steps(flows, spent)
    run_days = [settings.start_date + dt.timedelta(days=i) for i in range(days)]
    per_day: list[dict[str, tuple[float, float]]] = []
    mark = [time.perf_counter(), time.process_time()]

    def done(outcome) -> None:
        now = [time.perf_counter(), time.process_time()]
        row = {name: (spent[name][0], spent[name][1]) for name in STEPS}
        row["airflow"] = (
            now[0] - mark[0] - sum(w for w, _ in row.values()),
            now[1] - mark[1] - sum(c for _, c in row.values()),
        )
        row["day"] = (now[0] - mark[0], now[1] - mark[1])
        per_day.append(row)
        spent.clear()
        mark[:] = now
        if outcome.state != "success":
            raise SystemExit(f"{outcome.logical_date}: {outcome.state}; see {home / 'logs'}")

    run_in_process(settings, "daily_features", run_days, logfile=home / "logs" / "daily_features.log", on_done=done)
    return per_day


def later_mean(per_day: list[dict[str, tuple[float, float]]], name: str) -> tuple[float, float]:
    """Mean (wall, CPU) of ``name`` over days 2..N (day 1 pays the imports)."""
    later = per_day[1:] or per_day
    return sum(r[name][0] for r in later) / len(later), sum(r[name][1] for r in later) / len(later)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--home", type=Path, default=None, help="fresh STOREFRONT_HOME (default: a temporary one)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    per_day = measure(args.users, args.days, home)
    print(f"daily DAG under dag.test, {args.users} users, {args.days} days (home {home})")
    print(f"{'step':<16}{'day 1 wall':>11}{'day 1 cpu':>10}{'later wall':>11}{'later cpu':>10}{'share':>7}")
    total = later_mean(per_day, "day")[0]
    for name in (*STEPS, "airflow", "day"):
        first = per_day[0][name]
        wall, cpu = later_mean(per_day, name)
        print(f"{name:<16}{first[0]:>11.2f}{first[1]:>10.2f}{wall:>11.2f}{cpu:>10.2f}{wall / total:>7.0%}")
    print("later = mean of days 2..N; share = of a later day's wall time; feature_family sums the families")


if __name__ == "__main__":
    main()

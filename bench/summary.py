"""`make bench`: every speed comparison of the platform against its baseline, run in one go, in one table.

Rows: the online writer against stock `FeatureStore.materialize` and the raw client (pipelined redis-py, sqlite3
executemany); the point-in-time training set against pandas `merge_asof` and Feast's `get_historical_features`; the
training step against a raw `lightgbm.train`; the daily chain through Airflow at ~1M events a day (per step, peak
memory); the demo DAG's per-task overhead. Each comes from its own module in bench/ (run one alone for its
detailed table).

Run: ``uv run python -m bench.summary [--quick] [--chain-json FILE]`` (``--quick``: small sizes, a minute or two;
``--chain-json``: reuse a ``bench_daily_chain --json`` measurement instead of running the 1M-event day again).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import bench_daily_chain, bench_materialize, bench_task_overhead, bench_train, bench_training_set


@dataclass(frozen=True)
class Size:
    materialize_rows: int
    set_rows: int
    feast_rows: int
    set_users: int
    train_rows: int
    train_rounds: int
    chain_users: int
    overhead_users: int
    overhead_days: int


FULL = Size(200_000, 1_000_000, 200_000, 380_000, 1_000_000, 200, 380_000, 5_000, 4)
QUICK = Size(20_000, 50_000, 20_000, 20_000, 50_000, 30, 2_000, 1_000, 2)


def _row(what: str, ours: str, baseline: str, ratio: str, note: str = "") -> tuple[str, ...]:
    return what, ours, baseline, ratio, note


def materialize_rows(size: Size) -> list[tuple[str, ...]]:
    out = []
    for r in bench_materialize.run(size.materialize_rows, stock=True):
        same = "identical stored bytes" if r.get("identical") else "STORED VALUES DIFFER"
        served = "feast serve answers the same" if r.get("served") else "feast serve DIFFERS"
        out.append(
            _row(
                f"materialize {size.materialize_rows:,} rows, {r['store']}",
                f"{r['ours']:,.0f} rows/s",
                f"stock Feast {r['stock']:,.0f} rows/s",
                f"{r['ours'] / r['stock']:.1f}x faster",
                f"{same}; {served}",
            )
        )
        raw = "raw pipelined redis-py HSET" if r["store"] == "redis" else "raw sqlite3 executemany upsert"
        out.append(
            _row(
                f"materialize, {r['store']}",
                f"{r['ours']:,.0f} rows/s",
                f"{raw} {r['raw']:,.0f} rows/s",
                f"{r['ours'] / r['raw']:.2f}x",
            )
        )
    return out


def training_set_rows(size: Size) -> list[tuple[str, ...]]:
    with tempfile.TemporaryDirectory(prefix="bench-summary-set-") as tmp:
        home = Path(tmp)
        bench_training_set.build_lake(home, max(size.set_rows, size.feast_rows), size.set_users)
        ours = bench_training_set.measure("ours", home, size.set_rows)
        asof = bench_training_set.measure("merge_asof", home, size.set_rows)
        small = bench_training_set.measure("ours", home, size.feast_rows)
        feast = bench_training_set.measure("feast", home, size.feast_rows)
    same = "same values" if ours["digest"] == asof["digest"] else "VALUES DIFFER"
    return [
        _row(
            f"training set, {size.set_rows:,} entity rows",
            f"{ours['seconds']:.1f} s, {ours['peak_gb']:.2f} GB, {ours['returned']:,} rows",
            f"pandas merge_asof {asof['seconds']:.1f} s, {asof['peak_gb']:.2f} GB",
            f"{ours['seconds'] / asof['seconds']:.2f}x the time",
            f"{same}; target <= 2x, <= 3 GB",
        ),
        _row(
            f"training set, {size.feast_rows:,} entity rows",
            f"{small['seconds']:.1f} s, {small['returned']:,} rows",
            f"Feast get_historical_features {feast['seconds']:.1f} s, {feast['returned']:,} rows",
            f"{feast['seconds'] / small['seconds']:.1f}x faster",
            "Feast drops rows whose entity has only later feature rows",
        ),
    ]


def train_rows(size: Size) -> list[tuple[str, ...]]:
    raw, fit, step = bench_train.measure(size.train_rows, 40, size.train_rounds, 2)
    return [
        _row(
            f"LightGBM fit, {size.train_rows:,} rows x 40, {size.train_rounds} rounds",
            f"fit_booster {fit['wall']:.1f} s (CPU {fit['cpu']:.1f})",
            f"raw lightgbm.train {raw['wall']:.1f} s (CPU {raw['cpu']:.1f})",
            f"{fit['wall'] / raw['wall']:.2f}x wall, {fit['cpu'] / raw['cpu']:.2f}x CPU",
            "the same matrix and parameters, early stopping on the validation split",
        ),
        _row(
            f"training step, {size.train_rows:,} rows x 40, {size.train_rounds} rounds",
            f"train_model {step['wall']:.1f} s (CPU {step['cpu']:.1f})",
            f"raw lightgbm.train {raw['wall']:.1f} s (CPU {raw['cpu']:.1f})",
            f"{step['wall'] / raw['wall']:.2f}x wall, {step['cpu'] / raw['cpu']:.2f}x CPU",
            "target <= 1.15x; train_model also logs to MLflow and registers the model",
        ),
    ]


def chain_rows(result: dict) -> list[tuple[str, ...]]:
    steps = ", ".join(f"{k.removeprefix('features_')} {v:.0f}" for k, v in result["steps"].items())
    return [
        _row(
            f"daily DAG via Airflow, {result['events']:,} events (local profile)",
            f"{result['day_seconds']:.0f} s, peak {result['peak_rss_gb']:.1f} GB",
            "target 300 s, 6 GB",
            f"{result['day_seconds'] / 300:.2f}x the budget",
            f"seconds per task: {steps}",
        )
    ]


def overhead_rows(size: Size) -> list[tuple[str, ...]]:
    with tempfile.TemporaryDirectory(prefix="bench-summary-overhead-") as tmp:
        per_day = bench_task_overhead.measure(size.overhead_users, size.overhead_days, Path(tmp))
    day, _ = bench_task_overhead.later_mean(per_day, "day")
    airflow, _ = bench_task_overhead.later_mean(per_day, "airflow")
    return [
        _row(
            f"demo daily DAG, {size.overhead_users:,} users (days 2..{size.overhead_days})",
            f"{day - airflow:.1f} s of step work per day",
            f"Airflow's own task machinery {airflow:.1f} s per day",
            f"{airflow / day:.0%} of the day",
            f"day 1 (imports) {per_day[0]['day'][0]:.1f} s",
        )
    ]


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("comparison", "platform", "baseline", "ratio", "notes")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a check that everything runs)")
    parser.add_argument("--chain-json", type=Path, help="a bench_daily_chain --json result to reuse")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    rows = materialize_rows(size) + training_set_rows(size) + train_rows(size)
    if args.chain_json:
        measured = json.loads(args.chain_json.read_text())
        rows += chain_rows(max(measured, key=lambda r: r["events"]))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-summary-chain-") as tmp:
            rows += chain_rows(bench_daily_chain.run_size(size.chain_users, 2, Path(tmp)))
    rows += overhead_rows(size)
    print_table(rows)


if __name__ == "__main__":
    main()

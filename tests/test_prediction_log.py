"""The prediction log appends served predictions to the lake off the request path: in batches by size and by time,
one part per model and day, keeping rows through a failing lake, dropping (and counting) beyond its bound."""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data.landed import SPAN_KEY
from pipelines.lake import Lake, PartitionNotFound
from pipelines.serving.prediction_log import PredictionLog, predictions_table

MODEL = "purchase_intent"
TABLE = predictions_table(MODEL)
NOON = dt.datetime(2024, 6, 3, 12, 0, tzinfo=dt.UTC)
FEATURES = {"views_7d": 3.0, "carts_7d": 1.0, "days_since_last_view": 0.5}


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def block_table(lake: Lake, model: str) -> Path:
    """Make writes of ``model``'s parts fail: a plain file where its table directory must be. (The tests run as
    root, for whom a read-only directory is still writable.)"""
    blocker = Path(lake.root) / predictions_table(model)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    return blocker


def test_parts_read_back_equal_to_what_was_appended(lake: Lake):
    with PredictionLog(lake, flush_seconds=60) as plog:
        assert plog.append(MODEL, "3", "r-1", {"user_id": 7}, 0.25, FEATURES, at=NOON)
        assert plog.append(
            MODEL,
            "3",
            "r-2",
            {"user_id": np.int64(8)},
            np.float64(0.75),
            {**FEATURES, "carts_7d": np.nan, "views_7d": None},
            arm="shadow:v4",
            at=NOON + dt.timedelta(minutes=5),
        )
        assert plog.append(MODEL, "4", "r-3", {"user_id": 9}, 0.5, FEATURES, at=NOON.replace(tzinfo=None))

    assert (plog.appended, plog.written, plog.dropped, plog.write_errors, plog.pending) == (3, 3, 0, 0, 0)
    got = lake.read_parts(TABLE, NOON.date())
    expected = pd.DataFrame(
        {
            "request_id": ["r-1", "r-2", "r-3"],
            "model": [MODEL] * 3,
            "version": ["3", "3", "4"],
            "arm": ["champion", "shadow:v4", "champion"],
            "logged_at": pd.to_datetime([NOON, NOON + dt.timedelta(minutes=5), NOON], utc=True).as_unit("us"),
            "user_id": pd.Series([7, 8, 9], dtype="int64"),
            "score": [0.25, 0.75, 0.5],
            "views_7d": [3.0, np.nan, 3.0],
            "carts_7d": [1.0, np.nan, 1.0],
            "days_since_last_view": [0.5, 0.5, 0.5],
        }
    )
    pd.testing.assert_frame_equal(got.sort_values("request_id", ignore_index=True), expected)
    assert lake.part_days(TABLE) == [NOON.date()]
    names = [p.name for p in (Path(lake.root) / TABLE / f"ds={NOON.date()}").iterdir()]
    assert len(names) == 1 and re.fullmatch(rf"part-{os.getpid()}-\d+-[0-9a-f]{{8}}\.parquet", names[0]), names


def test_one_part_per_model_and_day_cut_in_the_lake_day_zone(lake: Lake):
    lake.write_json(SPAN_KEY, {"day_timezone": "Asia/Shanghai"})  # what an ingest in Shanghai time leaves
    shanghai_lake = Lake(lake.settings)
    late = dt.datetime(2024, 6, 3, 16, 30, tzinfo=dt.UTC)  # 00:30 on June 4 in Shanghai
    with PredictionLog(shanghai_lake, flush_seconds=60) as plog:
        plog.append(MODEL, "3", "a", {"user_id": 1}, 0.1, FEATURES, at=NOON)
        plog.append(MODEL, "3", "b", {"user_id": 2}, 0.2, FEATURES, at=NOON + dt.timedelta(hours=1))
        plog.append(MODEL, "3", "c", {"user_id": 3}, 0.3, FEATURES, at=late)
        plog.append("order_fraud", "1", "d", {"order_id": "o-1", "purchase_value": 12.5}, 0.9, {"x": 1.0}, at=NOON)

    assert shanghai_lake.part_days(TABLE) == [dt.date(2024, 6, 3), dt.date(2024, 6, 4)]
    assert sorted(shanghai_lake.read_parts(TABLE, "2024-06-03")["request_id"]) == ["a", "b"]
    assert list(shanghai_lake.read_parts(TABLE, "2024-06-04")["request_id"]) == ["c"]
    fraud = shanghai_lake.read_parts(predictions_table("order_fraud"), "2024-06-03")
    assert fraud[["order_id", "purchase_value"]].to_dict("records") == [{"order_id": "o-1", "purchase_value": 12.5}]
    day_dir = Path(lake.root) / TABLE / "ds=2024-06-03"
    assert len(list(day_dir.glob("part-*.parquet"))) == 1, "one flush writes one part per model and day"


def test_flushes_when_flush_rows_are_pending(lake: Lake):
    with PredictionLog(lake, flush_rows=5, flush_seconds=600) as plog:
        for i in range(4):
            plog.append(MODEL, "3", f"r-{i}", {"user_id": i}, 0.5, FEATURES, at=NOON)
        time.sleep(0.3)
        assert plog.written == 0, "below flush_rows and long before flush_seconds nothing is written"
        plog.append(MODEL, "3", "r-4", {"user_id": 4}, 0.5, FEATURES, at=NOON)
        wait_for(lambda: plog.written == 5)
        assert len(lake.read_parts(TABLE, NOON.date())) == 5


def test_flushes_every_flush_seconds(lake: Lake):
    with PredictionLog(lake, flush_rows=10_000, flush_seconds=0.2) as plog:
        plog.append(MODEL, "3", "r-0", {"user_id": 1}, 0.5, FEATURES, at=NOON)
        wait_for(lambda: plog.written == 1, timeout=5)
        plog.append(MODEL, "3", "r-1", {"user_id": 2}, 0.5, FEATURES, at=NOON)
        wait_for(lambda: plog.written == 2, timeout=5)
    assert sorted(lake.read_parts(TABLE, NOON.date())["request_id"]) == ["r-0", "r-1"]


def test_a_failing_lake_keeps_the_rows_until_it_is_writable_again(lake: Lake):
    blocker = block_table(lake, MODEL)
    with PredictionLog(lake, flush_rows=10_000, flush_seconds=0.1) as plog:
        for i in range(10):
            assert plog.append(MODEL, "3", f"r-{i}", {"user_id": i}, 0.5, FEATURES, at=NOON)
        wait_for(lambda: plog.write_errors >= 2)  # retried, not given up
        assert (plog.written, plog.pending, plog.dropped) == (0, 10, 0)
        # Rows appended while the lake fails wait behind the kept ones.
        assert plog.append(MODEL, "3", "r-10", {"user_id": 10}, 0.5, FEATURES, at=NOON)

        blocker.unlink()
        wait_for(lambda: plog.written == 11)
        assert plog.pending == 0
    got = lake.read_parts(TABLE, NOON.date())
    assert sorted(got["request_id"]) == sorted(f"r-{i}" for i in range(11))
    assert not list((Path(lake.root) / TABLE / f"ds={NOON.date()}").glob(".*")), "no temp file left behind"


def test_beyond_max_pending_rows_are_refused_and_counted(lake: Lake):
    blocker = block_table(lake, MODEL)
    with PredictionLog(lake, flush_rows=10_000, flush_seconds=0.1, max_pending=5) as plog:
        accepted = [plog.append(MODEL, "3", f"r-{i}", {"user_id": i}, 0.5, FEATURES, at=NOON) for i in range(8)]
        assert accepted == [True] * 5 + [False] * 3
        assert (plog.appended, plog.dropped, plog.pending) == (5, 3, 5)
        wait_for(lambda: plog.write_errors >= 1)
        # Rows kept after a failed write still count against the bound.
        assert not plog.append(MODEL, "3", "r-8", {"user_id": 8}, 0.5, FEATURES, at=NOON)
        assert plog.dropped == 4
        blocker.unlink()
        wait_for(lambda: plog.pending == 0)
        assert plog.append(MODEL, "3", "r-9", {"user_id": 9}, 0.5, FEATURES, at=NOON)
    assert sorted(lake.read_parts(TABLE, NOON.date())["request_id"]) == ["r-0", "r-1", "r-2", "r-3", "r-4", "r-9"]


def test_close_writes_everything_and_refuses_later_rows(lake: Lake):
    plog = PredictionLog(lake, flush_rows=10_000, flush_seconds=600)
    for i in range(3):
        plog.append(MODEL, "3", f"r-{i}", {"user_id": i}, 0.5, FEATURES, at=NOON)
    assert plog.written == 0

    assert plog.close() == 0

    assert plog.written == 3 and len(lake.read_parts(TABLE, NOON.date())) == 3
    assert not plog.append(MODEL, "3", "late", {"user_id": 1}, 0.5, FEATURES, at=NOON)
    assert plog.dropped == 1
    assert not plog._thread.is_alive()


def test_close_reports_rows_it_could_not_write(lake: Lake):
    block_table(lake, MODEL)
    plog = PredictionLog(lake, flush_seconds=600)
    plog.append(MODEL, "3", "r-0", {"user_id": 1}, 0.5, FEATURES, at=NOON)
    assert plog.close() == 1
    assert plog.written == 0 and plog.write_errors >= 1


def test_concurrent_appends_from_threads_are_all_written_once(lake: Lake):
    threads, per_thread = 8, 1500
    with PredictionLog(lake, flush_rows=700, flush_seconds=0.05) as plog:

        def serve(worker: int) -> None:
            for i in range(per_thread):
                plog.append(
                    MODEL, "3", f"w{worker}-{i}", {"user_id": worker * per_thread + i}, i / per_thread, FEATURES
                )

        pool = [threading.Thread(target=serve, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()

    total = threads * per_thread
    assert (plog.appended, plog.written, plog.dropped) == (total, total, 0)
    days = lake.part_days(TABLE)
    got = pd.concat([lake.read_parts(TABLE, d) for d in days], ignore_index=True)
    assert len(got) == total and got["request_id"].is_unique
    assert sorted(got["user_id"]) == list(range(total))
    assert (got["logged_at"] <= pd.Timestamp.now(tz="UTC")).all()


def test_programming_errors_fail_at_the_first_append(lake: Lake):
    with PredictionLog(lake, flush_seconds=600) as plog:
        with pytest.raises(ValueError, match=r"\['score'\] clash with log columns"):
            plog.append(MODEL, "3", "r", {"user_id": 1}, 0.5, {"score": 1.0})
        with pytest.raises(ValueError, match="model name '../x' must be a plain name"):
            plog.append("../x", "3", "r", {"user_id": 1}, 0.5, FEATURES)
        assert plog.appended == 0


def test_lake_parts_of_an_append_only_table(lake: Lake):
    table = "predictions/demo"
    with pytest.raises(PartitionNotFound, match=r"predictions/demo: no parts for ds=2024-06-01"):
        lake.read_parts(table, "2024-06-01")
    lake.append_part(table, "2024-06-01", pd.DataFrame({"a": [1], "b": [0.5]}))
    uri = lake.append_part(table, "2024-06-01", pd.DataFrame({"a": [2], "c": ["x"]}), name="part-2.parquet")
    lake.write(table, "2024-06-02", pd.DataFrame({"a": [3]}))  # a replaced partition is not a part
    (Path(lake.root) / table / "ds=2024-06-03").mkdir()

    assert uri.endswith("predictions/demo/ds=2024-06-01/part-2.parquet")
    assert lake.part_days(table) == [dt.date(2024, 6, 1)]
    got = lake.read_parts(table, "2024-06-01").sort_values("a", ignore_index=True)
    assert got["a"].tolist() == [1, 2]
    assert got["b"].iloc[0] == 0.5 and pd.isna(got["b"].iloc[1])
    assert pd.isna(got["c"].iloc[0]) and got["c"].iloc[1] == "x"
    sample = lake.read_parts(table, "2024-06-01", max_rows=1)
    assert len(sample) == 1 and sample.attrs["parts_read"] == 1
    with pytest.raises(ValueError, match="part name 'data.parquet'"):
        lake.append_part(table, "2024-06-01", pd.DataFrame({"a": [1]}), name="data.parquet")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_gets_its_own_empty_log_and_flusher(lake: Lake):
    plog = PredictionLog(lake, flush_seconds=600)
    plog.append(MODEL, "3", "parent", {"user_id": 1}, 0.5, FEATURES, at=NOON)
    child = os.fork()
    if child == 0:  # a server worker forked after the app (and its log) was built
        ok = plog.pending == 0 and plog._thread.is_alive()
        ok = ok and plog.append(MODEL, "3", "child", {"user_id": 2}, 0.5, FEATURES, at=NOON)
        ok = ok and plog.close() == 0 and plog.written == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child must start empty, with a live flusher, and write"
    assert plog.close() == 0
    got = lake.read_parts(TABLE, NOON.date())
    assert sorted(got["request_id"]) == ["child", "parent"], "the parent's pending row is written once, by the parent"
    parts = sorted(p.name for p in (Path(lake.root) / TABLE / f"ds={NOON.date()}").glob("part-*.parquet"))
    assert {name.split("-")[1] for name in parts} == {str(os.getpid()), str(child)}


def test_rows_no_parquet_column_can_hold_are_dropped_not_retried_forever(lake: Lake):
    with PredictionLog(lake, flush_seconds=600) as plog:
        plog.append(MODEL, "3", "good", {"user_id": 1}, 0.5, FEATURES, at=NOON)
        plog.append("order_fraud", "1", "bad", {"order_id": "o-1"}, 0.5, {"x": "not a number"}, at=NOON)
        assert plog.flush() == 1
        assert (plog.written, plog.dropped, plog.pending) == (1, 1, 0)
    assert lake.part_days(predictions_table("order_fraud")) == []

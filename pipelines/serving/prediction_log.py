"""The prediction log: every served score with its model version, entity and feature values, appended to the lake
in batches by a background thread (``predictions/<model>/ds=YYYY-MM-DD/part-<pid>-<seq>-<uuid8>.parquet``).

The request path only appends to an in-memory buffer under a lock; writing, retrying and dropping happen off it.
Each server process keeps its own log (part names carry the pid, so processes never collide).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import numbers
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.lake import Lake

log = logging.getLogger(__name__)

PREDICTIONS_TABLE = "predictions"
# Columns every part starts with; then the entity's keys, the score and one column per feature.
BASE_COLUMNS = ("request_id", "model", "version", "arm", "logged_at")
SCORE_COLUMN = "score"
RESERVED_COLUMNS = frozenset({*BASE_COLUMNS, SCORE_COLUMN})
LOGGED_AT_TYPE = pa.timestamp("us", tz="UTC")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)

# (model, version, request_id, arm, logged_at in µs since the epoch, entity, score, features)
PredictionRow = tuple[str, str, str, str, int, dict[str, Any], float, dict[str, Any]]
_CHECKED_MODELS: set[str] = set()  # model names already checked (they become lake paths)


def predictions_table(model: str) -> str:
    """The lake table of a model's logged predictions (``Lake.read_parts(predictions_table(m), day)``)."""
    return f"{PREDICTIONS_TABLE}/{model}"


class PredictionSink(Protocol):
    """Where a served score goes: this module's ``PredictionLog``, or the serving writer's (``RemoteLog``)."""

    def append(
        self,
        model: str,
        version: str,
        request_id: str,
        entity: Mapping[str, int | str | float],
        score: float,
        features: Mapping[str, float],
        arm: str = "champion",
        at: dt.datetime | None = None,
    ) -> bool: ...


def prediction_row(
    model: str,
    version: str,
    request_id: str,
    entity: Mapping[str, int | str | float],
    score: float,
    features: Mapping[str, float],
    arm: str = "champion",
    at: dt.datetime | None = None,
) -> PredictionRow:
    """One prediction as the log keeps it.

    ``entity``: the entity's key columns (and request fields its on-demand features need, e.g. an order's
    ``purchase_value``, so the skew check can recompute them). ``at``: when it was served (now by default; a
    naive datetime is UTC). A ValueError means a programming error (a model name that is not a file name, a
    key or feature named like a log column), the same for every request.
    """
    if model not in _CHECKED_MODELS:
        if not _MODEL_NAME.fullmatch(model):
            raise ValueError(f"prediction log: model name {model!r} must be a plain name ([A-Za-z0-9_.-])")
        _CHECKED_MODELS.add(model)
    if not (RESERVED_COLUMNS.isdisjoint(features) and RESERVED_COLUMNS.isdisjoint(entity)):
        clash = sorted(RESERVED_COLUMNS & {*features, *entity})
        raise ValueError(f"prediction log of {model!r}: entity keys or features {clash} clash with log columns")
    stamp = time.time_ns() // 1000 if at is None else _micros(at)
    return (model, version, request_id, arm, stamp, dict(entity), float(score), dict(features))


class PredictionLog:
    """A thread-safe, bounded, non-blocking log of predictions, flushed to the lake by a daemon thread.

    Flushes every ``flush_seconds``, or sooner once ``flush_rows`` rows are pending: one part per (model, day) per
    flush. At most ``max_pending`` rows are held (buffered plus being written plus kept after a failed write);
    beyond that :meth:`append` refuses the row and counts it in :attr:`dropped`. A failed write keeps its rows for
    the next flush and counts in :attr:`write_errors`; nothing is ever raised into the request path. Call
    :meth:`close` on shutdown, or rows still pending are lost with the process.
    """

    def __init__(
        self, lake: Lake, flush_rows: int = 10_000, flush_seconds: float = 5.0, max_pending: int = 200_000
    ) -> None:
        if flush_rows < 1 or max_pending < 1 or flush_seconds <= 0:
            raise ValueError(
                f"PredictionLog needs flush_rows >= 1, max_pending >= 1 and flush_seconds > 0 "
                f"(got {flush_rows}, {max_pending}, {flush_seconds})"
            )
        self._lake = lake
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._max_pending = max_pending
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """Fresh state and a running flusher (at start, and in a child process after a fork)."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time (the daemon, flush(), close())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._buffer: list[PredictionRow] = []
        self._pending = 0  # buffered + in flight + kept after a failed write
        self._closed = False
        self._appended = self._written = self._dropped = self._write_errors = 0
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="prediction-log-flush", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------------------
    def append(
        self,
        model: str,
        version: str,
        request_id: str,
        entity: Mapping[str, int | str | float],
        score: float,
        features: Mapping[str, float],
        arm: str = "champion",
        at: dt.datetime | None = None,
    ) -> bool:
        """Log one prediction; False (and one more :attr:`dropped`) when the log is full or closed.

        The arguments are :func:`prediction_row`'s (a ValueError there is a programming error).
        """
        return self.add(prediction_row(model, version, request_id, entity, score, features, arm, at))

    def add(self, row: PredictionRow) -> bool:
        """Log a row made by :func:`prediction_row` (here or in a serving worker); False when full or closed."""
        with self._lock:
            if self._closed or self._pending >= self._max_pending:
                self._dropped += 1
                return False
            self._buffer.append(row)
            self._pending += 1
            self._appended += 1
            full = len(self._buffer) >= self._flush_rows
        if full and not self._wake.is_set():
            self._wake.set()
        return True

    # -- counters -------------------------------------------------------------------------------------------
    @property
    def appended(self) -> int:
        """Rows accepted by :meth:`append`."""
        return self._appended

    @property
    def written(self) -> int:
        """Rows written to the lake."""
        return self._written

    @property
    def dropped(self) -> int:
        """Rows refused (log full or closed) or discarded (rows that cannot be made a parquet part)."""
        return self._dropped

    @property
    def write_errors(self) -> int:
        """Parts whose write failed (their rows are kept and retried)."""
        return self._write_errors

    @property
    def pending(self) -> int:
        """Rows accepted but not written yet."""
        return self._pending

    # -- flushing -------------------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write every pending row now, in the calling thread; returns rows written. The daemon thread does this
        on its own: call it only where waiting for the lake is fine (tests, shutdown)."""
        with self._flush_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return 0
            try:
                kept, written, dropped = self._write(rows)
            except Exception:  # noqa: BLE001 - a bug must not lose rows nor reach the caller; retried next flush
                log.exception("prediction log: flush of %d row(s) failed; kept for the next flush", len(rows))
                self._write_errors += 1
                kept, written, dropped = rows, 0, 0
            with self._lock:
                self._buffer[:0] = kept  # oldest first, ahead of rows appended meanwhile
                self._pending -= written + dropped
                self._written += written
                self._dropped += dropped
            return written

    def close(self, timeout: float | None = 30.0) -> int:
        """Refuse new rows, stop the thread and write what is pending; returns rows left unwritten (logged)."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        left = self._pending
        if left:
            log.error("prediction log closed with %d row(s) unwritten (lake %s); they are lost", left, self._lake.uri())
        return left

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return  # close() writes the rest
            errors = self._write_errors
            self.flush()
            if self._write_errors > errors:
                # A failing lake: wait a full interval instead of retrying at every append past flush_rows.
                self._stop.wait(self._flush_seconds)

    def _write(self, rows: list[PredictionRow]) -> tuple[list[PredictionRow], int, int]:
        """Write ``rows`` as one part per (model, day): the rows to keep (failed writes), rows written, rows
        dropped (rows no part can hold)."""
        stamps = [row[4] for row in rows]
        try:
            days = _days(stamps, self._lake.day_zone)
        except Exception as exc:  # noqa: BLE001 - e.g. the lake's day zone unreadable: keep everything
            log.error("prediction log: cannot place %d row(s) by day (%s); kept for the next flush", len(rows), exc)
            self._write_errors += 1
            return rows, 0, 0
        groups: dict[tuple[str, dt.date], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault((row[0], days[i]), []).append(i)
        kept: list[PredictionRow] = []
        written = dropped = 0
        pid = os.getpid()
        for (model, day), positions in groups.items():
            group = [rows[i] for i in positions]
            try:
                table = _part_table(group, [stamps[i] for i in positions])
            except Exception as exc:  # noqa: BLE001 - values no parquet column can hold: retrying cannot help
                log.error(
                    "prediction log: %d row(s) of %r for %s cannot be written (%s); dropped",
                    len(group),
                    model,
                    day,
                    exc,
                )
                dropped += len(group)
                continue
            name = f"part-{pid}-{next(self._seq)}-{uuid.uuid4().hex[:8]}.parquet"
            try:
                self._lake.append_part(predictions_table(model), day, table, name=name)
            except Exception as exc:  # noqa: BLE001 - any storage failure: keep the rows, retry next flush
                log.error(
                    "prediction log: writing %d row(s) of %r for %s to %s failed (%s); kept for the next flush",
                    len(group),
                    model,
                    day,
                    self._lake.uri(predictions_table(model)),
                    exc,
                )
                self._write_errors += 1
                kept.extend(group)
                continue
            written += len(group)
        return kept, written, dropped


def _micros(at: dt.datetime) -> int:
    """Microseconds since the epoch (a naive datetime is UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return (at - _EPOCH) // _US


def _days(stamps: list[int], zone: str) -> list[dt.date]:
    """The day of each instant (µs since the epoch) in the lake's day zone."""
    instants = pd.to_datetime(np.asarray(stamps, dtype="int64"), unit="us", utc=True, cache=False)
    local = instants if zone == "UTC" else instants.tz_convert(zone)
    day_numbers = local.tz_localize(None).to_numpy().astype("datetime64[D]").astype("int64")
    unique, inverse = np.unique(day_numbers, return_inverse=True)
    dates = [_EPOCH.date() + dt.timedelta(days=int(n)) for n in unique]
    return [dates[i] for i in inverse]


def _part_table(rows: list[PredictionRow], stamps: list[int]) -> pa.Table:
    """One Arrow table: base columns, entity keys (first-seen order), score, features (first-seen order)."""
    keys = _names(rows, 5)
    columns: dict[str, pa.Array] = {
        "request_id": pa.array([str(r[2]) for r in rows], pa.string()),
        "model": pa.array([r[0] for r in rows], pa.string()),
        "version": pa.array([str(r[1]) for r in rows], pa.string()),
        "arm": pa.array([str(r[3]) for r in rows], pa.string()),
        "logged_at": pa.array(stamps, LOGGED_AT_TYPE),
    }
    for key in keys:
        columns[key] = _key_array([r[5].get(key) for r in rows])
    columns[SCORE_COLUMN] = pa.array([r[6] for r in rows], pa.float64())
    features = _names(rows, 7)
    clash = [name for name in features if name in columns]
    if clash:
        raise ValueError(f"feature(s) {clash} have the name of an entity key")
    if len({tuple(r[7]) for r in rows}) == 1:  # the usual case: every row has the same features, in one order
        values = np.array([tuple(r[7].values()) for r in rows], dtype="float64").reshape(len(rows), len(features))
    else:
        values = np.array([[r[7].get(f) for f in features] for r in rows], dtype="float64")
    for i, name in enumerate(features):  # None reads as NaN: both mean missing
        columns[name] = pa.array(values[:, i], pa.float64())
    return pa.table(columns)


def _names(rows: list[PredictionRow], field: int) -> list[str]:
    """The keys of every row's mapping ``field``, in first-seen order."""
    shapes = dict.fromkeys(tuple(r[field]) for r in rows)
    return list(dict.fromkeys(name for shape in shapes for name in shape))


def _key_array(values: list[Any]) -> pa.Array:
    """int64 for integer keys (user, product ids; numpy's too), float64 for numbers (request fields), else
    strings."""
    kinds = set(map(type, values)) - {type(None)}
    if kinds and all(issubclass(k, numbers.Integral) and not issubclass(k, bool | np.bool_) for k in kinds):
        return pa.array([None if v is None else int(v) for v in values], pa.int64())
    if kinds and all(issubclass(k, numbers.Real) and not issubclass(k, bool | np.bool_) for k in kinds):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


# Live logs, so a child forked from a process that made one gets its own empty buffer and flusher thread (threads
# do not survive fork; without this a preloaded server's workers would buffer forever and never write).
_LIVE: weakref.WeakSet[PredictionLog] = weakref.WeakSet()


def _restart_in_child() -> None:
    for prediction_log in list(_LIVE):
        if prediction_log._closed:
            prediction_log._lock = threading.Lock()  # another thread may have held it at the fork
        else:
            prediction_log._reset()


os.register_at_fork(after_in_child=_restart_in_child)

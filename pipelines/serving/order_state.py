"""The order histories (account, device, IP) that checkout scoring reads, and the push of each scored order.

Reads go through Feast's online store (``RowReader`` over the ``order_history_*`` views the daily chain loads).
A scored order is appended to its three histories and written back by a background thread, off the request path,
in batches, with the platform's writer of Feast's online layout (pipelines/features/online_write.py; Feast stays the
reader). Feast's own push API (``FeatureStore.push`` to the views' push sources, which other producers may use)
costs about 30 ms a call here, the registry deserialized on every call: more than scoring the order. Until its
write has landed, this process answers the keys from the rows it wrote (the overlay), so the next order on the
same account, device or IP already counts this one; another worker process sees it once the write lands (within
``PUSH_INTERVAL`` plus the write): two orders on one key within that time may each miss the other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.features.checkout import HISTORY_LISTS, KEY_COLUMNS, TIMESTAMP_COLUMN, KeyHistories
from pipelines.features.online_write import SqliteConnections, online_writer

if TYPE_CHECKING:
    from pipelines.serving.writer import WriterClient

log = logging.getLogger(__name__)

ENTITIES = tuple(KEY_COLUMNS)  # user, device, ip
VIEWS = {entity: f"order_history_{entity}" for entity in ENTITIES}
PUSH_BATCH = 2_000  # queued rows written together at most
PUSH_INTERVAL = 0.25  # seconds a batch collects rows before it is written (a write has a fixed cost of milliseconds)
_TICK = pd.Timedelta(microseconds=1)


# (entity, key, seq) of history rows written to the online store.
Landed = list[tuple[str, object, int]]


class OrderState:
    """History rows by key through the online store, with this process's pushes overlaid until they land.

    The rows are written by a ``HistoryWriter`` in this process, or, under ``mlctl serve``, sent to the serving
    writer process (``writer``: pipelines/serving/writer.py), which writes them and acknowledges them."""

    def __init__(self, store: Any, writer: WriterClient | None = None) -> None:
        from pipelines.serving.online import RowReader

        self._reader = RowReader(store, [VIEWS[e] for e in ENTITIES])
        self._overlay: dict[tuple[str, object], tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._client = writer
        self._writer = HistoryWriter(lambda: store, lambda _, rows: self._landed(rows)) if writer is None else None

    @property
    def pushed(self) -> int:
        """Keys written by this process's writer (0 when the writer process writes them)."""
        return self._writer.pushed if self._writer is not None else 0

    @property
    def push_errors(self) -> int:
        return self._writer.push_errors if self._writer is not None else 0

    def rows(self, user_id: int, device_id: str | None, ip_address: str | None) -> KeyHistories:
        """The account's, device's and IP's histories (None: no history, or an unknown device / IP)."""
        if self._client is not None:
            self._landed(self._client.landed())
        found: dict[str, dict[str, Any] | None] = {}
        stored: dict[str, object] = {}  # entity -> key, read from the store (one read for all)
        for entity, key in (("user", user_id), ("device", device_id), ("ip", ip_address)):
            found[entity] = None
            if key is None:
                continue
            with self._lock:
                pending = self._overlay.get((entity, key))
            if pending is not None:
                found[entity] = pending[1]
            else:
                stored[entity] = key
        if stored:
            rows = self._reader.read({VIEWS[entity]: [key] for entity, key in stored.items()})
            for entity, key in stored.items():
                (row,) = rows[VIEWS[entity]]
                found[entity] = None if row is None else {KEY_COLUMNS[entity]: key, **_lists(row)}
        return KeyHistories(found["user"], found["device"], found["ip"])

    def rows_of(self, entity: str, keys: list[object]) -> list[dict[str, Any] | None]:
        """The stored (pushed and loaded) history rows of ``keys`` of an entity, without this process's overlay."""
        return self._reader.read({VIEWS[entity]: keys})[VIEWS[entity]]

    def record(self, rows: KeyHistories, at: dt.datetime) -> None:
        """Keep ``rows`` (``append_order``'s) for this process's next reads and queue their write."""
        with self._lock:
            for entity, row in zip(ENTITIES, rows, strict=True):
                if row is None:
                    continue
                self._seq += 1
                key = row[KEY_COLUMNS[entity]]
                self._overlay[(entity, key)] = (self._seq, row)
                if self._client is not None:
                    # Refused (the writer gone or far behind): the row stays in the overlay, as after a failed write.
                    self._client.send(("order", self._seq, entity, row, at))
                else:
                    assert self._writer is not None
                    self._writer.put(None, self._seq, entity, row, at)

    def _landed(self, rows: Landed) -> None:
        with self._lock:
            for entity, key, seq in rows:
                if self._overlay.get((entity, key), (None,))[0] == seq:  # not replaced meanwhile
                    del self._overlay[(entity, key)]

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until every queued write has been tried (this process's writer) or, with the writer process,
        acknowledged (its rows gone from the overlay; rows refused stay, so this then waits ``timeout``)."""
        if self._writer is not None:
            self._writer.drain()
            return
        assert self._client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._client.refresh()  # what the socket could not take yet
            self._landed(self._client.landed())
            with self._lock:
                if not self._overlay:
                    return
            time.sleep(0.05)

    def close(self, timeout: float = 10.0) -> None:
        if self._writer is not None:
            self._writer.close(timeout)


class HistoryWriter:
    """Writes history rows into the online store from a thread, in batches: one write per entity with the newest
    row of each key, at most every ``PUSH_INTERVAL`` (at a thousand orders a second, a write per order would cost
    more than the scoring); each key's rows stamped strictly later than its last (Redis keeps a row only if it is
    newer). ``landed(origin, rows)`` is told, per origin given to ``put``, which rows were written."""

    def __init__(self, store: Callable[[], Any], landed: Callable[[Any, Landed], None]) -> None:
        self._store = store  # called on the first write (the writer process builds it only when orders come)
        self._landed = landed
        self._views: dict[str, Any] = {}
        self._stamps: dict[tuple[str, object], pd.Timestamp] = {}  # the last stamp written per key
        self._queue: queue.Queue[tuple[Any, int, str, dict[str, Any], dt.datetime] | None] = queue.Queue()
        self._connections = SqliteConnections()  # a SQLite store's connection, its page cache warm between batches
        self.pushed = 0
        self.push_errors = 0
        self._thread = threading.Thread(target=self._push_loop, name="order-history-push", daemon=True)
        self._thread.start()

    def put(self, origin: Any, seq: int, entity: str, row: dict[str, Any], at: dt.datetime) -> None:
        self._queue.put((origin, seq, entity, row, at))

    def _push_loop(self) -> None:
        while (first := self._queue.get()) is not None:
            time.sleep(PUSH_INTERVAL)  # let the batch fill
            batch = [first]
            stop = False
            while len(batch) < PUSH_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._push(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                break
        self._queue.task_done()

    def _push(self, batch: list[tuple[Any, int, str, dict[str, Any], dt.datetime]]) -> None:
        newest: dict[tuple[str, object], tuple[dict[str, Any], pd.Timestamp]] = {}
        written_by: dict[tuple[str, object], list[tuple[Any, int]]] = {}
        for origin, seq, entity, row, placed in batch:
            key, at = (entity, row[KEY_COLUMNS[entity]]), pd.Timestamp(placed)  # workers send datetimes
            stamp = max(at, self._stamps.get(key, at - _TICK) + _TICK)
            self._stamps[key] = stamp
            newest[key] = (row, stamp)
            written_by.setdefault(key, []).append((origin, seq))
        try:
            store = self._store()
            if not self._views:
                readers_never_wait(store)
                self._views = {e: store.get_feature_view(VIEWS[e]) for e in ENTITIES}
        except Exception:
            self.push_errors += len(newest)
            log.exception("push of %d histories failed: no online store", len(newest))
            return
        try:
            # One write for the batch: on SQLite one transaction (one commit) for the three views.
            with online_writer(store, connections=self._connections) as write:
                for entity in ENTITIES:
                    keys = [k for k in newest if k[0] == entity]
                    if keys:
                        frame = pd.DataFrame([{**newest[k][0], TIMESTAMP_COLUMN: newest[k][1]} for k in keys])
                        write(self._views[entity], frame)
        except Exception:
            # Kept in the overlay: this process still counts the orders; the next daily build has them for all.
            self.push_errors += len(newest)
            log.exception("push of %d histories failed", len(newest))
            return
        self.pushed += len(newest)
        # Every row of a written key is done with, the newest's and the ones it replaced: each origin drops its rows
        # from its overlay (a row it replaced since then stays).
        by_origin: dict[Any, Landed] = {}
        for key, written in written_by.items():
            for origin, seq in written:
                by_origin.setdefault(origin, []).append((key[0], key[1], seq))
        for origin, rows in by_origin.items():
            self._landed(origin, rows)

    def drain(self) -> None:
        """Wait until every queued row has been tried."""
        self._queue.join()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop (waiting up to ``timeout`` seconds)."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("order histories: %d row(s) not written within %g s at shutdown", self._queue.qsize(), timeout)
        else:
            self._connections.close()


def readers_never_wait(store: Any) -> None:
    """Put a SQLite online store in WAL mode (kept in the database file): the serving workers' reads then never wait
    for a write-back's commit. In SQLite's default rollback mode a reader waits while a writer commits (its fsync
    included): reads of up to 200 ms were measured beside a writer committing every 250 ms, against 14 ms in WAL."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig

    if not isinstance(store.config.online_store, SqliteOnlineStoreConfig):
        return
    path = SqliteOnlineStore._get_db_path(store.config)
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
        (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode != "wal":
        log.warning("%s: journal mode %s, not WAL; reads may wait for the order histories' writes", path, mode)


def _lists(row: dict[str, Any]) -> dict[str, list]:
    """A stored row's history lists (an empty list comes back as None from some stores)."""
    return {name: list(row.get(name) or []) for name in HISTORY_LISTS}

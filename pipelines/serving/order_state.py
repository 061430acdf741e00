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

import logging
import queue
import threading
import time
from typing import Any

import pandas as pd

from pipelines.features.checkout import HISTORY_LISTS, KEY_COLUMNS, TIMESTAMP_COLUMN, KeyHistories

log = logging.getLogger(__name__)

ENTITIES = tuple(KEY_COLUMNS)  # user, device, ip
PUSH_BATCH = 2_000  # queued rows written together at most
PUSH_INTERVAL = 0.25  # seconds a batch collects rows before it is written (a write has a fixed cost of milliseconds)
_TICK = pd.Timedelta(microseconds=1)


class OrderState:
    """History rows by key through the online store, with this process's pushes overlaid until they land."""

    def __init__(self, store: Any) -> None:
        from pipelines.serving.online import RowReader

        self._store = store
        self._readers = {e: RowReader(store, f"order_history_{e}") for e in ENTITIES}
        self._views = {e: reader.view for e, reader in self._readers.items()}
        self._overlay: dict[tuple[str, object], tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._stamps: dict[tuple[str, object], pd.Timestamp] = {}  # the last stamp written per key
        self._queue: queue.Queue[tuple[int, str, dict[str, Any], pd.Timestamp] | None] = queue.Queue()
        self.pushed = 0
        self.push_errors = 0
        self._thread = threading.Thread(target=self._push_loop, name="order-history-push", daemon=True)
        self._thread.start()

    def rows(self, user_id: int, device_id: str | None, ip_address: str | None) -> KeyHistories:
        """The account's, device's and IP's histories (None: no history, or an unknown device / IP)."""
        found: dict[str, dict[str, Any] | None] = {}
        for entity, key in (("user", user_id), ("device", device_id), ("ip", ip_address)):
            if key is None:
                found[entity] = None
                continue
            with self._lock:
                pending = self._overlay.get((entity, key))
            if pending is not None:
                found[entity] = pending[1]
                continue
            (row,) = self._readers[entity].read([key])
            found[entity] = None if row is None else {KEY_COLUMNS[entity]: key, **_lists(row)}
        return KeyHistories(found["user"], found["device"], found["ip"])

    def rows_of(self, entity: str, keys: list[object]) -> list[dict[str, Any] | None]:
        """The stored (pushed and loaded) history rows of ``keys`` of an entity, without this process's overlay."""
        return self._readers[entity].read(keys)

    def record(self, rows: KeyHistories, at: pd.Timestamp) -> None:
        """Keep ``rows`` (``append_order``'s) for this process's next reads and queue their push."""
        with self._lock:
            for entity, row in zip(ENTITIES, rows, strict=True):
                if row is None:
                    continue
                self._seq += 1
                key = row[KEY_COLUMNS[entity]]
                self._overlay[(entity, key)] = (self._seq, row)
                self._queue.put((self._seq, entity, row, at))

    def _push_loop(self) -> None:
        """Write what is queued in batches: one write per entity with the newest row of each key, at most every
        ``PUSH_INTERVAL`` (at a thousand orders a second, a write per order would cost more than the scoring)."""
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

    def _push(self, batch: list[tuple[int, str, dict[str, Any], pd.Timestamp]]) -> None:
        from pipelines.features.online_write import write_view

        newest: dict[tuple[str, object], tuple[int, dict[str, Any], pd.Timestamp]] = {}
        for seq, entity, row, at in batch:
            key = (entity, row[KEY_COLUMNS[entity]])
            # Each write of a key is stamped later than the last: Redis keeps a row only if it is newer.
            stamp = max(at, self._stamps.get(key, at - _TICK) + _TICK)
            self._stamps[key] = stamp
            newest[key] = (seq, row, stamp)
        for entity in ENTITIES:
            keys = [k for k in newest if k[0] == entity]
            if not keys:
                continue
            frame = pd.DataFrame([{**newest[k][1], TIMESTAMP_COLUMN: newest[k][2]} for k in keys])
            try:
                write_view(self._store, self._views[entity], frame)
            except Exception:
                # Kept in the overlay: this process still counts the orders; the next daily build has them for all.
                self.push_errors += len(keys)
                log.exception("push of %d %s histories failed", len(keys), entity)
                continue
            self.pushed += len(keys)
            with self._lock:
                for key in keys:
                    if self._overlay.get(key, (None,))[0] == newest[key][0]:  # not replaced meanwhile
                        del self._overlay[key]

    def drain(self) -> None:
        """Wait until every queued push has been tried (tests, shutdown)."""
        self._queue.join()

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


def _lists(row: dict[str, Any]) -> dict[str, list]:
    """A stored row's history lists (an empty list comes back as None from some stores)."""
    return {name: list(row.get(name) or []) for name in HISTORY_LISTS}

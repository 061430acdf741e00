"""The order histories (account, device, IP) that checkout scoring reads, and the push of each scored order.

Reads go through Feast's online store (``RowReader`` over the ``order_history_*`` views the daily chain loads).
A scored order is appended to its three histories and pushed through Feast's push sources by a background thread,
off the request path; until the push has landed, this process answers its keys from the rows it pushes (the
overlay), so the next order on the same account, device or IP already counts this one. Another worker process sees
it once the push lands (milliseconds): two orders on one key within that time may count one order short.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import pandas as pd

from pipelines.features.checkout import HISTORY_LISTS, KEY_COLUMNS, TIMESTAMP_COLUMN, KeyHistories

log = logging.getLogger(__name__)

ENTITIES = tuple(KEY_COLUMNS)  # user, device, ip


class OrderState:
    """History rows by key through the online store, with this process's pushes overlaid until they land."""

    def __init__(self, store: Any) -> None:
        from feature_repo.orders import history_push_source
        from pipelines.serving.online import RowReader

        self._store = store
        self._readers = {e: RowReader(store, f"order_history_{e}") for e in ENTITIES}
        self._sources = {e: history_push_source(e) for e in ENTITIES}
        self._overlay: dict[tuple[str, object], tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._seq = 0
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
        from feast.data_source import PushMode

        while (item := self._queue.get()) is not None:
            try:
                self._push(*item, PushMode.ONLINE)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _push(self, seq: int, entity: str, row: dict[str, Any], at: pd.Timestamp, mode: Any) -> None:
        key = (entity, row[KEY_COLUMNS[entity]])
        try:
            self._store.push(self._sources[entity], pd.DataFrame([{**row, TIMESTAMP_COLUMN: at}]), to=mode)
        except Exception:
            # Kept in the overlay: this process still counts the order; the next daily build has it for all.
            self.push_errors += 1
            log.exception("push of the %s history %r failed", *key)
            return
        self.pushed += 1
        with self._lock:
            if self._overlay.get(key, (None,))[0] == seq:  # not replaced by a newer order meanwhile
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

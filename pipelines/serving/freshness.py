"""How far each online view is materialized, as the serving app reports it on /health: a day whose
materialization stopped part-way (views written one after another) shows which views serve older rows."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pipelines.features.store import ViewLag, online_lag
from pipelines.settings import Settings

log = logging.getLogger("pipelines.serving")
CHECK_SECONDS = 60.0  # the registry and the lake's partitions are read at most this often (off the request path)


@dataclass(frozen=True)
class LagSnapshot:
    views: list[ViewLag]
    error: str | None
    checked_at: float


class OnlineFreshness:
    """A refreshable holder (the app's refresh loop calls ``refresh``) of the newest per-view lag."""

    name = "online-freshness"

    def __init__(self, settings: Settings, every: float = CHECK_SECONDS) -> None:
        self._settings = settings
        self._every = every
        self._lock = threading.Lock()
        self._snapshot: LagSnapshot | None = None

    def refresh(self) -> LagSnapshot | None:
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - snapshot.checked_at < self._every:
            return snapshot
        try:
            fresh = LagSnapshot(online_lag(self._settings), None, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - the registry or lake unreadable: report it on /health
            log.warning("online freshness check failed: %s", exc)
            fresh = LagSnapshot([], f"{type(exc).__name__}: {exc}"[:300], time.monotonic())
        with self._lock:
            self._snapshot = fresh
        return fresh

    def current(self) -> LagSnapshot | None:
        with self._lock:
            return self._snapshot

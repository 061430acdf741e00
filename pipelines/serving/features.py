"""Where the serving app gets online features: Feast's online store (``FeastFeatures``) or, in tests, a function
returning frames (``FrameFeatures``). Both answer with the same ``Features``: a float matrix in the feature
service's column order and, per entity row, whether any stored feature was found."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pipelines.settings import Settings

ENTITY_COLUMN = "user_id"
RANK_KEYS = ("user_id", "product_id", "category_id")

# (settings, feature_service, user ids or a frame of join keys) -> one row per requested entity, in request order,
# with the service's feature columns; an entity the online store does not know comes back with every feature
# missing. Same signature as pipelines.features.store.online_features.
FeatureReader = Callable[[Settings, str, list[int] | pd.DataFrame], pd.DataFrame]


class FeaturesUnavailable(RuntimeError):
    """The online store could not be read (a 503 for the caller, with the cause in the server's log)."""


@dataclass(frozen=True)
class Features:
    values: np.ndarray  # one row per requested entity row
    names: tuple[str, ...]  # the columns of ``values``
    found: np.ndarray  # per row: some stored feature was found
    # Per entity of the service's views (named by their join keys: "user", "user_product"), per row: a view of
    # that entity had a stored row. Empty when the source cannot tell the views apart (FrameFeatures).
    found_by_entity: dict[str, np.ndarray] = field(default_factory=dict)


def entity_name(join_keys: list[str] | tuple[str, ...]) -> str:
    """A view's entity as a client names it: its join keys without ``_id`` (user_id, category_id -> user_category)."""
    return "_".join(k.removesuffix("_id") for k in join_keys)


class FeatureSource(Protocol):
    def read(self, service: str, entities: dict[str, list[Any]]) -> Features: ...


class FeastFeatures:
    """Features through Feast's online store: a ``ServiceReader`` per service (planned once), or Feast's full
    ``get_online_features`` for services with on-demand views. The store is built on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: Any = None
        self._readers: dict[str, Any] = {}
        self._entities: dict[str, dict[str, list[int]]] = {}  # per service: entity -> its views in the reader
        self._lock = threading.Lock()

    def store(self) -> Any:
        """The long-lived FeatureStore (built on first use: it applies the definitions once, not per request)."""
        # Imported lazily: feast takes seconds to import and tests pass their own source.
        from pipelines.features.store import feature_store

        with self._lock:
            if self._store is None:
                self._store = feature_store(self._settings)
            return self._store

    def _reader(self, service: str) -> Any:
        reader = self._readers.get(service)
        if reader is not None:
            return reader
        from pipelines.serving.online import ServiceReader, UnsupportedService

        store = self.store()
        with self._lock:
            try:
                reader = ServiceReader(store, service)
                names = [entity_name(self._store.get_feature_view(view).join_keys) for view in reader.views]
                self._entities[service] = {e: [v for v, name in enumerate(names) if name == e] for e in names}
            except UnsupportedService:
                reader = None
            self._readers[service] = reader
        return reader

    def read(self, service: str, entities: dict[str, list[Any]]) -> Features:
        try:
            reader = self._reader(service)
            if reader is None:
                return self._full_read(service, entities)
            rows = reader.read(entities)
        except Exception as exc:
            raise FeaturesUnavailable(f"online features unavailable for feature service {service!r}") from exc
        by_entity = {e: rows.found[:, views].any(axis=1) for e, views in self._entities[service].items()}
        return Features(rows.values, reader.features, rows.found.any(axis=1), by_entity)

    def _full_read(self, service: str, entities: dict[str, list[Any]]) -> Features:
        from pipelines.features.store import online_features

        frame = online_features(self._settings, service, pd.DataFrame(entities), store=self._store)
        names = tuple(c for c in frame.columns if c not in entities)
        values = frame.loc[:, list(names)].to_numpy(dtype=float)
        return Features(values, names, ~np.isnan(values).all(axis=1))


class FrameFeatures:
    """Features from a ``FeatureReader`` function (tests, other stores): its frame aligned to the request."""

    def __init__(self, settings: Settings, reader: FeatureReader) -> None:
        self._settings = settings
        self._reader = reader

    def read(self, service: str, entities: dict[str, list[Any]]) -> Features:
        asked = pd.DataFrame(entities)
        keyed_by_user = list(entities) == [ENTITY_COLUMN]
        try:
            frame = self._reader(self._settings, service, list(entities[ENTITY_COLUMN]) if keyed_by_user else asked)
        except Exception as exc:
            raise FeaturesUnavailable(f"online features unavailable for feature service {service!r}") from exc
        frame = _aligned(frame, asked, service)
        names = tuple(c for c in frame.columns if c not in asked.columns)
        values = frame.loc[:, list(names)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        return Features(values, names, ~np.isnan(values).all(axis=1))


def _aligned(frame: pd.DataFrame, asked: pd.DataFrame, service: str) -> pd.DataFrame:
    """The reader's rows in request order: joined on the keys it returns, else taken by position."""
    keys = [c for c in asked.columns if c in frame.columns]
    if keys:
        key = "product_id" if "product_id" in keys else keys[0]  # a candidate row is told apart by its product
        features = frame.drop(columns=[c for c in keys if c != key]).drop_duplicates(key).set_index(key)
        return asked.join(features, on=key).reset_index(drop=True)
    if len(frame) != len(asked):
        raise FeaturesUnavailable(
            f"feature service {service!r} returned {len(frame)} rows for {len(asked)} entities and no key column "
            "to align them"
        )
    return pd.concat([asked.reset_index(drop=True), frame.reset_index(drop=True)], axis=1)

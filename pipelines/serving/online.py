"""Online features of one feature service on the request path: Feast's own online store reads them.

``FeatureStore.get_online_features`` plans every call (registry lookups, request validation, response protos) and
costs milliseconds; serving asks the same service for one entity thousands of times a second. ``ServiceReader``
does that planning once per service and then calls the online store's ``online_read`` (Feast's Redis or SQLite
reader, the same one ``get_online_features`` uses) for the views of the service, turning the value protos into a
float matrix. ``tests/test_online_reader.py`` checks it returns what ``get_online_features`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from feast import FeatureStore, FeatureView
from feast.infra.provider import get_provider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

_NUMERIC = {"double_val", "float_val", "int64_val", "int32_val", "bool_val"}


class UnsupportedService(ValueError):
    """The service needs Feast's full retrieval (on-demand views): read it with ``get_online_features``."""


@dataclass(frozen=True)
class _ViewRead:
    view: FeatureView
    features: tuple[str, ...]  # the service's features of this view, in service order
    keys: tuple[str, ...]  # request columns holding the view's join keys (after any join key map)
    stored_keys: tuple[str, ...]  # the join key names the entity key is stored under
    key_types: tuple[ValueType, ...]
    columns: tuple[int, ...]  # where each feature goes in the service's feature matrix


@dataclass(frozen=True)
class OnlineRows:
    """The features of the requested entities: ``values[i, j]`` is feature ``j`` of entity ``i`` (NaN when
    missing), ``found[i, v]`` whether view ``v`` had a stored row for entity ``i``."""

    values: np.ndarray
    found: np.ndarray


def _key_value(value: object, kind: ValueType) -> ValueProto:
    if kind == ValueType.STRING:
        return ValueProto(string_val=str(value))
    if kind == ValueType.INT32:
        return ValueProto(int32_val=int(value))
    return ValueProto(int64_val=int(value))


def _number(value: ValueProto) -> float:
    kind = value.WhichOneof("val")
    return float(getattr(value, kind)) if kind in _NUMERIC else np.nan


class ServiceReader:
    """Reads one feature service's stored features through Feast's online store, planned once."""

    def __init__(self, store: FeatureStore, service_name: str) -> None:
        service = store.get_feature_service(service_name)
        on_demand = {v.name for v in store.list_on_demand_feature_views()}
        if any(p.name in on_demand for p in service.feature_view_projections):
            raise UnsupportedService(f"feature service {service_name!r} has on-demand views")
        views = {v.name: v for v in store.list_feature_views()}
        self.name = service_name
        self.features: tuple[str, ...] = tuple(
            f.name for projection in service.feature_view_projections for f in projection.features
        )
        reads, position = [], 0
        for projection in service.feature_view_projections:
            view = views[projection.name]
            names = tuple(f.name for f in projection.features)
            stored = tuple(view.join_keys)
            types = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
            reads.append(
                _ViewRead(
                    view=view,
                    features=names,
                    keys=tuple(projection.join_key_map.get(k, k) for k in stored),
                    stored_keys=stored,
                    key_types=tuple(types.get(k, ValueType.INT64) for k in stored),
                    columns=tuple(range(position, position + len(names))),
                )
            )
            position += len(names)
        self._reads = tuple(reads)
        self.keys: tuple[str, ...] = tuple(dict.fromkeys(k for r in reads for k in r.keys))
        self.views: tuple[str, ...] = tuple(r.view.name for r in reads)
        self._config = store.config
        self._online = get_provider(store.config).online_store

    def read(self, entities: Mapping[str, Sequence[object]]) -> OnlineRows:
        """Features of the entities given as columns of join key values (one entry per entity, same length)."""
        missing = [k for k in self.keys if k not in entities]
        if missing:
            raise KeyError(f"feature service {self.name!r} needs join key column(s) {missing}")
        n = len(entities[self.keys[0]]) if self.keys else 0
        values = np.full((n, len(self.features)), np.nan)
        found = np.zeros((n, len(self._reads)), dtype=bool)
        for v, read in enumerate(self._reads):
            rows = list(zip(*(entities[k] for k in read.keys), strict=True))
            unique = list(dict.fromkeys(rows))  # a ranking request repeats its user: read each key once
            protos = [
                EntityKeyProto(
                    join_keys=list(read.stored_keys),
                    entity_values=[_key_value(x, t) for x, t in zip(row, read.key_types, strict=True)],
                )
                for row in unique
            ]
            stored = self._online.online_read(self._config, read.view, protos, list(read.features))
            block = np.full((len(unique), len(read.features)), np.nan)
            hit = np.zeros(len(unique), dtype=bool)
            for i, (stamp, data) in enumerate(stored):
                # Redis answers an unknown key with empty values stamped at the epoch: not a stored row.
                if data and stamp is not None and stamp.timestamp() > 0:
                    hit[i] = True
                    for j, feature in enumerate(read.features):
                        proto = data.get(feature)
                        if proto is not None:
                            block[i, j] = _number(proto)
            where = {row: i for i, row in enumerate(unique)}
            index = np.fromiter((where[row] for row in rows), dtype=np.int64, count=n)
            values[:, list(read.columns)] = block[index]
            found[:, v] = hit[index]
        return OnlineRows(values=values, found=found)


_LISTS = {"int64_list_val", "int32_list_val", "double_list_val", "float_list_val", "string_list_val", "bool_list_val"}


def _python(value: ValueProto) -> object:
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _LISTS:
        return list(getattr(value, kind).val)
    return getattr(value, kind)


class RowReader:
    """Whole rows of one feature view (lists included) by key, through Feast's online store: what checkout
    scoring reads (the order histories of an account, a device, an IP)."""

    def __init__(self, store: FeatureStore, view_name: str) -> None:
        self.view = store.get_feature_view(view_name)
        (self.key,) = self.view.join_keys
        kinds = {c.name: c.dtype.to_value_type() for c in self.view.entity_columns}
        self._kind = kinds.get(self.key, ValueType.INT64)
        self.features = [f.name for f in self.view.features]
        self._config = store.config
        self._online = get_provider(store.config).online_store

    def read(self, keys: Sequence[object]) -> list[dict[str, object] | None]:
        """Each key's row (feature name -> value; lists as lists) or None when the store has none."""
        protos = [EntityKeyProto(join_keys=[self.key], entity_values=[_key_value(k, self._kind)]) for k in keys]
        out: list[dict[str, object] | None] = []
        # A fresh list each call: Feast's Redis reader appends its timestamp field to the list it is given.
        for stamp, data in self._online.online_read(self._config, self.view, protos, list(self.features)):
            if not data or stamp is None or stamp.timestamp() <= 0:
                out.append(None)
                continue
            out.append({name: _python(data[name]) if name in data else None for name in self.features})
        return out

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
from datetime import datetime

import numpy as np
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
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
    """Whole rows (lists included) of feature views by key, through Feast's online store: what checkout scoring
    reads (the order histories of an account, a device and an IP). One ``read`` covers every view: on Redis it is
    one round trip, Feast's own batched HMGET (what its ``get_online_features`` does for a service's views; three
    round trips in a row cost a scored order three wake-ups of the Redis server and of the worker, which on busy
    cores was a third of a worker's time), then Feast's decoding; elsewhere the store's ``online_read`` per view."""

    def __init__(self, store: FeatureStore, view_names: Sequence[str]) -> None:
        self.views = {name: store.get_feature_view(name) for name in view_names}
        self._kinds: dict[str, tuple[str, ValueType]] = {}
        for name, view in self.views.items():
            (key,) = view.join_keys
            kinds = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
            self._kinds[name] = (key, kinds.get(key, ValueType.INT64))
        self.features = {name: [f.name for f in view.features] for name, view in self.views.items()}
        self._config = store.config
        self._online = get_provider(store.config).online_store

    def read(self, keys: Mapping[str, Sequence[object]]) -> dict[str, list[dict[str, object] | None]]:
        """Per view named in ``keys``, each key's row (feature name -> value; lists as lists) or None when the store
        has none."""
        protos = {
            name: [
                EntityKeyProto(join_keys=[self._kinds[name][0]], entity_values=[_key_value(k, self._kinds[name][1])])
                for k in view_keys
            ]
            for name, view_keys in keys.items()
        }
        if isinstance(self._online, RedisOnlineStore):
            stored = self._redis_read(protos)
        else:
            # A fresh feature list each call: Feast's readers may append to the list they are given.
            stored = {
                name: self._online.online_read(self._config, self.views[name], entity_keys, list(self.features[name]))
                for name, entity_keys in protos.items()
            }
        return {name: [self._row(name, stamp, data) for stamp, data in rows] for name, rows in stored.items()}

    def _redis_read(self, protos: dict[str, list[EntityKeyProto]]) -> dict[str, list]:
        online, config = self._online, self._config
        plans, commands = [], []
        for name, entity_keys in protos.items():
            view_name = _versioned_fv_name(self.views[name], config)
            features, fields = online._generate_hset_keys_for_features(
                self.views[name], list(self.features[name]), fv_name_override=view_name
            )
            redis_keys = online._generate_redis_keys_for_entities(config, entity_keys)
            commands += [(redis_key, fields) for redis_key in redis_keys]
            plans.append((name, view_name, features, len(redis_keys)))
        replies = online._read_hash_fields(config, commands) if commands else []
        out, offset = {}, 0
        for name, view_name, features, n in plans:
            out[name] = online._convert_redis_values_to_protobuf(replies[offset : offset + n], view_name, features)
            offset += n
        return out

    def _row(
        self, name: str, stamp: datetime | None, data: Mapping[str, ValueProto] | None
    ) -> dict[str, object] | None:
        # Redis answers an unknown key with empty values stamped at the epoch: not a stored row.
        if not data or stamp is None or stamp.timestamp() <= 0:
            return None
        return {feature: _python(data[feature]) if feature in data else None for feature in self.features[name]}

"""Candidate products of a ranking request, from the online store: the request path never reads the lake.

The daily ranking family writes each day's candidate lists (``features/user_candidates``, the generator training
uses) and the catalogue's categories (``product_stats``); materialization puts them in Feast's online store as the
views ``user_candidates`` and ``product_catalogue``, which ``OnlineCandidates`` reads with the online store's
``online_read``, planned once (as ``pipelines/serving/online.py`` does for feature services).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from pipelines.features.candidates import CATEGORY_LIST, POPULAR_USER_ID, PRODUCT_LIST, CandidateError
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

CANDIDATES_VIEW = "user_candidates"
CATALOGUE_VIEW = "product_catalogue"
UNKNOWN_CATEGORY = -1  # a product the catalogue does not know: only its user features can be found


class _ViewReader:
    """Stored rows of one int64-keyed feature view by key, through the online store's ``online_read``."""

    def __init__(self, store: Any, view_name: str) -> None:
        from feast.infra.provider import get_provider

        self.view = store.get_feature_view(view_name)
        (self.key,) = self.view.join_keys
        self.features = [f.name for f in self.view.features]
        self._config = store.config
        self._online = get_provider(store.config).online_store

    def read(self, keys: Sequence[int]) -> list[tuple[datetime, dict[str, Any]] | None]:
        """Per key, its (event time, feature value protos), or None when nothing is stored."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        protos = [EntityKey(join_keys=[self.key], entity_values=[Value(int64_val=int(k))]) for k in keys]
        stored = self._online.online_read(self._config, self.view, protos, self.features)
        # Redis answers an unknown key with empty values stamped at the epoch: not a stored row.
        return [
            (stamp, data) if data and stamp is not None and stamp.timestamp() > 0 else None for stamp, data in stored
        ]


def _ints(value: Any) -> list[int]:
    return list(value.int64_list_val.val)


class OnlineCandidates:
    """Candidate rows (user_id, product_id, category_id) of a ranking request, from the online store.

    Without products: the user's stored candidate lists of the newest materialized day; a user without a row of
    that day (no events in the candidate window) gets the popular products stored under ``POPULAR_USER_ID``.
    Named products get their category from ``product_catalogue`` (``UNKNOWN_CATEGORY`` when it has none). The
    Feast store is built on first use; a store may be given (tests, an app that already holds one).
    """

    def __init__(self, store: Any = None) -> None:
        self._store = store
        self._readers: tuple[_ViewReader, _ViewReader] | None = None
        self._lock = threading.Lock()

    def _plan(self, settings: Settings) -> tuple[_ViewReader, _ViewReader]:
        if self._readers is None:
            with self._lock:  # building a store applies the definitions: once, not per request
                if self._readers is None:
                    from pipelines.features.store import feature_store

                    store = self._store or feature_store(settings)
                    self._readers = (_ViewReader(store, CANDIDATES_VIEW), _ViewReader(store, CATALOGUE_VIEW))
        return self._readers

    def __call__(
        self, settings: Settings, spec: ModelSpec, user_id: int, product_ids: list[int] | None
    ) -> pd.DataFrame:
        lists, catalogue = self._plan(settings)
        if product_ids is None:
            return _generated(lists, user_id)
        products = list(dict.fromkeys(product_ids))
        stored = catalogue.read(products)
        category = {
            p: int(row[1]["category_id"].int64_val) if row is not None and "category_id" in row[1] else UNKNOWN_CATEGORY
            for p, row in zip(products, stored, strict=True)
        }
        return _frame(user_id, product_ids, [category[p] for p in product_ids])


def _generated(lists: _ViewReader, user_id: int) -> pd.DataFrame:
    """The user's candidate lists when they are as new as the popular ones, else the popular ones."""
    own, popular = lists.read([user_id, POPULAR_USER_ID])
    if popular is None:
        raise CandidateError(
            f"online view {CANDIDATES_VIEW!r} holds no popular candidates (user_id {POPULAR_USER_ID}): build the "
            "ranking family's day and materialize it (pipelines.features.store.materialize_day)"
        )
    # A user who left the candidate window keeps an old row online: the newest day's popular products win.
    _, row = own if own is not None and own[0] >= popular[0] else popular
    return _frame(user_id, _ints(row[PRODUCT_LIST]), _ints(row[CATEGORY_LIST]))


def _frame(user_id: int, products: list[int], categories: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series([user_id] * len(products), dtype="int64"),
            "product_id": pd.Series(products, dtype="int64"),
            "category_id": pd.Series(categories, dtype="int64"),
        }
    )

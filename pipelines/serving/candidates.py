"""Candidate products of a ranking request, from the lake (the training-time generator, for requests without
``product_ids``)."""

from __future__ import annotations

import threading
from datetime import date

import pandas as pd

from pipelines.features.candidates import catalogue_day, lake_candidates, lake_catalogue
from pipelines.lake import Lake
from pipelines.settings import Settings
from pipelines.specs import ModelSpec


class LakeCandidates:
    """Candidate rows (user_id, product_id, category_id) of a ranking request, from the lake.

    Named products get their category from the newest ``features/product_stats`` partition (a product it does not
    know gets category -1, so only its user features are found); without products, candidates are generated from
    the newest events as in training. The catalogue is read once per feature day.
    """

    def __init__(self) -> None:
        self._lake: Lake | None = None
        self._catalogue: tuple[date, pd.Series] | None = None
        self._lock = threading.Lock()

    def _categories(self, lake: Lake) -> pd.Series:
        with self._lock:
            day = catalogue_day(lake)
            if self._catalogue is None or self._catalogue[0] != day:
                self._catalogue = (day, lake_catalogue(lake, day))
            return self._catalogue[1]

    def __call__(
        self, settings: Settings, spec: ModelSpec, user_id: int, product_ids: list[int] | None
    ) -> pd.DataFrame:
        self._lake = self._lake or Lake(settings)
        if product_ids is None:
            return lake_candidates(self._lake, spec.candidates, [user_id])
        products = pd.Series(product_ids, dtype="int64")
        category = products.map(self._categories(self._lake)).fillna(-1).astype("int64")
        return pd.DataFrame({"user_id": user_id, "product_id": products, "category_id": category})

"""One class per way a champion is served (pipelines/usecases: ``UseCase.serving``): ``ScoredModel`` scores
entities by id (``/predict``), ``RankedModel`` ranks candidate products for a user (``/rank``). Each takes the
parsed request, reads online features, scores with the champion its ``ChampionModel`` holds and returns the body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.serving import request_id
from pipelines.serving.features import RANK_KEYS, Features, FeatureSource, FeaturesUnavailable
from pipelines.serving.model_loader import ChampionModel, FeatureMismatchError, LoadedModel
from pipelines.serving.prediction_log import PredictionLog
from pipelines.serving.requests import entity_id, id_list
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

MAX_USER_IDS = 1000
MAX_PRODUCT_IDS = 1000
# Ids no real entity has: the canary reads its (empty) online row through the same path as a request.
CANARY_ID = -1


class NotServable(RuntimeError):
    """503: no champion, or the champion cannot score the online features (message says what to do)."""


@dataclass(frozen=True)
class Outcome:
    """A served request: the body, the version that scored it and how many entities had no stored features."""

    body: dict[str, Any]
    version: str
    entities: int
    missing: int
    unlogged: int = 0  # rows the prediction log refused (full)


class Served:
    """A spec served by one route kind, its champion holder and its feature source."""

    route = ""
    # Where every served score goes (set by the app; None: not logged).
    log: PredictionLog | None = None

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        source: FeatureSource,
        on_event: Callable[[str, str], None] | None = None,
        probabilities: bool = True,
    ) -> None:
        self.spec = spec
        self.source = source
        self.holder = ChampionModel(
            spec.name, settings, canary_features=self._canary, probabilities=probabilities, on_event=on_event
        )

    def _canary(self) -> pd.DataFrame:
        raise NotImplementedError

    def champion(self) -> LoadedModel:
        if not self.holder.checked:  # the app was started without its lifespan (e.g. mounted elsewhere)
            self.holder.refresh()
        loaded = self.holder.current()
        if loaded is None:
            refusal = self.holder.status().last_refusal
            if refusal is not None:
                raise NotServable(
                    f"no servable champion for {self.spec.name}: v{refusal.version} was refused ({refusal.reason})"
                )
            raise NotServable(f"no champion for {self.spec.name}; approve a version first")
        return loaded

    def _log(self, version: str, entities: dict[str, list[Any]], scores: np.ndarray, features: Features) -> int:
        """Append each entity's score and online features to the prediction log (a buffer; written off the path).
        Returns the rows the log refused (full)."""
        if self.log is None:
            return 0
        rid = request_id.current.get()
        keys = list(entities)
        refused = 0
        for i, (score, row) in enumerate(zip(scores.tolist(), features.values.tolist(), strict=True)):
            refused += not self.log.append(
                self.spec.name,
                version,
                rid,
                {k: entities[k][i] for k in keys},
                score,
                dict(zip(features.names, row, strict=True)),
            )
        return refused

    def _scores(self, loaded: LoadedModel, features: Features) -> np.ndarray:
        try:
            return loaded.score(features.values, features.names)
        except FeatureMismatchError as exc:
            raise NotServable(str(exc)) from exc


class ScoredModel(Served):
    """``POST /v1/models/{name}/predict`` ``{"user_ids": [...]}``: a probability per user."""

    route = "predict"

    def _canary(self) -> pd.DataFrame:
        features = self.source.read(self.spec.feature_service, {"user_id": [CANARY_ID]})
        return pd.DataFrame(features.values, columns=list(features.names))

    def serve(self, payload: dict[str, Any]) -> Outcome:
        user_ids = id_list(payload, "user_ids", MAX_USER_IDS)
        loaded = self.champion()
        features = self.source.read(self.spec.feature_service, {"user_id": user_ids})
        scores = self._scores(loaded, features)
        unlogged = self._log(loaded.version, {"user_id": user_ids}, scores, features)
        predictions = [
            {"user_id": uid, "score": float(s), "features_found": bool(f)}
            for uid, s, f in zip(user_ids, scores.tolist(), features.found.tolist(), strict=True)
        ]
        body = {"model": self.spec.name, "version": loaded.version, "predictions": predictions}
        return Outcome(body, loaded.version, len(user_ids), int((~features.found).sum()), unlogged)


# (settings, ranking spec, user_id, product_ids or None) -> candidate rows user_id, product_id, category_id.
CandidateSource = Callable[[Settings, ModelSpec, int, list[int] | None], pd.DataFrame]


class RankedModel(Served):
    """``POST /v1/models/{name}/rank`` ``{"user_id": u, "product_ids": [...]?}``: the candidates, best first."""

    route = "rank"

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        source: FeatureSource,
        candidates: CandidateSource,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(spec, settings, source, on_event=on_event, probabilities=False)
        self._settings = settings
        self._candidates = candidates

    def _canary(self) -> pd.DataFrame:
        entities = {k: [CANARY_ID] for k in RANK_KEYS}
        features = self.source.read(self.spec.feature_service, entities)
        return pd.DataFrame(features.values, columns=list(features.names))

    def serve(self, payload: dict[str, Any]) -> Outcome:
        user_id = entity_id(payload.get("user_id"), "user_id")
        product_ids = id_list(payload, "product_ids", MAX_PRODUCT_IDS, required=False)
        loaded = self.champion()
        source = "request" if product_ids is not None else "generated"
        try:
            rows = self._candidates(self._settings, self.spec, user_id, product_ids)
        except Exception as exc:
            raise FeaturesUnavailable(f"candidates unavailable for {self.spec.name}") from exc
        body: dict[str, Any] = {
            "model": self.spec.name,
            "version": loaded.version,
            "user_id": user_id,
            "candidates": source,
            "products": [],
        }
        if rows.empty:
            return Outcome(body, loaded.version, 0, 0)
        entities = {k: rows[k].astype("int64").tolist() for k in RANK_KEYS}
        features = self.source.read(self.spec.feature_service, entities)
        scores = self._scores(loaded, features)
        unlogged = self._log(loaded.version, entities, scores, features)
        products = entities["product_id"]
        body["products"] = [
            {"product_id": products[i], "score": float(scores[i]), "features_found": bool(features.found[i])}
            for i in np.argsort(-scores, kind="stable").tolist()
        ]
        return Outcome(body, loaded.version, len(products), int((~features.found).sum()), unlogged)

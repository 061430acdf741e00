"""One class per way a champion is served (pipelines/usecases: ``UseCase.serving``): ``ScoredModel`` scores
entities by id (``/predict``), ``RankedModel`` ranks candidate products for a user (``/rank``). Each takes the
parsed request, reads online features, scores with the champion its ``ChampionModel`` holds and returns the body.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.registry.rollouts import CHAMPION_ARM, Rollout, RolloutError, in_split, parse_rollouts
from pipelines.registry.tamper import serving_refusal
from pipelines.serving import request_id
from pipelines.serving.features import RANK_KEYS, Features, FeatureSource, FeaturesUnavailable
from pipelines.serving.model_loader import ChampionModel, FeatureMismatchError, LoadedModel, registered_model
from pipelines.serving.prediction_log import PredictionSink
from pipelines.serving.requests import entity_id, id_list
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

logger = logging.getLogger(__name__)

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
    log: PredictionSink | None = None

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
        self._settings = settings
        self._holder_args = {
            "canary_features": self._canary,
            "probabilities": probabilities,
            "on_event": on_event,
            # Only a version the audit log vouches for is loaded (issue 13: a hand-moved alias was served in 2 s).
            "vet": functools.partial(serving_refusal, settings),
        }
        self.holder = ChampionModel(spec.name, settings, **self._holder_args)
        # A rollout in progress and the holder of its challenger (pipelines/registry/rollouts.py).
        self.rollout: Rollout | None = None
        self.challenger: ChampionModel | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def refresh(self) -> None:
        """Follow the champion alias, then the model's rollout (started, changed or ended in the registry): one
        registry read for both."""
        try:
            found = registered_model(self._settings, self.spec.name)
        except Exception:  # the registry being down: the holder records why, the arms stay as they are
            self.holder.refresh()
            return
        self.follow(found)

    def follow(self, found: tuple[dict[str, str], dict[str, str]] | None) -> None:
        """Follow the registered model's aliases and tags as read (``registered_model``; None: not registered),
        here or by the serving writer (pipelines/serving/writer.py)."""
        aliases, tags = found if found is not None else ({}, {})
        self.holder.refresh(aliases)
        try:
            rollouts = parse_rollouts(self.spec.name, tags, aliases)
        except RolloutError:
            logger.warning("unreadable rollout of %s; arms unchanged", self.spec.name, exc_info=True)
            return
        rollout = rollouts[0] if rollouts else None
        if rollout is None:
            self.rollout, self.challenger = None, None
            return
        if self.challenger is None or self.challenger.alias != rollout.alias:
            self.challenger = ChampionModel(self.spec.name, self._settings, alias=rollout.alias, **self._holder_args)
        self.challenger.refresh(aliases)
        loaded = self.challenger.current()
        # Arms change only once the challenger's version is loaded and passed its canary.
        self.rollout = rollout if loaded is not None and loaded.version == rollout.version else None

    def arms(self) -> tuple[Rollout, LoadedModel] | None:
        """The rollout in force and its loaded challenger, or None."""
        rollout, challenger = self.rollout, self.challenger
        loaded = challenger.current() if challenger is not None else None
        return (rollout, loaded) if rollout is not None and loaded is not None else None

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

    def _log(
        self,
        versions: list[str],
        arms: list[str],
        entities: dict[str, list[Any]],
        scores: list[float],
        features: Features,
        rows: list[int],
        at: dt.datetime | None = None,
    ) -> int:
        """Append the score of each of ``rows`` (with its version, arm and online features) to the prediction log (a
        buffer; written off the request path). Returns the rows the log refused (full)."""
        if self.log is None:
            return 0
        at = at or self._settings.serving_clock
        rid = request_id.current.get()
        keys = list(entities)
        values = features.values
        refused = 0
        for i, version, arm, score in zip(rows, versions, arms, scores, strict=True):
            refused += not self.log.append(
                self.spec.name,
                version,
                rid,
                {k: entities[k][i] for k in keys},
                score,
                dict(zip(features.names, values[i].tolist(), strict=True)),
                arm=arm,
                at=at,
            )
        return refused

    def close(self) -> None:
        """Let go of what the served model holds beside its holders (the app's shutdown)."""

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
        entities = {"user_id": user_ids}
        features = self.source.read(self.spec.feature_service, entities)
        scores = self._scores(loaded, features).tolist()
        n = len(user_ids)
        versions, arms = [loaded.version] * n, [CHAMPION_ARM] * n
        answered = list(scores)
        shadow: tuple[list[float], str, str] | None = None
        if (rollout_arms := self.arms()) is not None:
            rollout, challenger = rollout_arms
            other = self._scores(challenger, features).tolist()
            if rollout.mode == "shadow":  # logged beside the champion's, never returned
                shadow = (other, challenger.version, rollout.arm)
            else:
                for i, uid in enumerate(user_ids):
                    if in_split(rollout.name, str(uid), rollout.share):
                        answered[i], versions[i], arms[i] = other[i], challenger.version, rollout.arm
        rows = list(range(n))
        unlogged = self._log(versions, arms, entities, answered, features, rows)
        if shadow is not None:
            unlogged += self._log([shadow[1]] * n, [shadow[2]] * n, entities, shadow[0], features, rows)
        predictions = [
            {"user_id": uid, "score": s, "version": v, "features_found": f}
            for uid, s, v, f in zip(user_ids, answered, versions, features.found.tolist(), strict=True)
        ]
        body = {"model": self.spec.name, "version": loaded.version, "predictions": predictions}
        return Outcome(body, loaded.version, n, int((~features.found).sum()), unlogged)


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
        # The candidate source reads the online store too: plan it now, not on the first request.
        self._candidates(self._settings, self.spec, CANARY_ID, [CANARY_ID])
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
        n = len(scores)
        unlogged = self._log(
            [loaded.version] * n, [CHAMPION_ARM] * n, entities, scores.tolist(), features, list(range(n))
        )
        products = entities["product_id"]
        # Per entity of the service (user, product, user x category, user x product); "any" when the source
        # cannot tell its views apart.
        found_by = {k: v.tolist() for k, v in (features.found_by_entity or {"any": features.found}).items()}
        body["products"] = [
            {
                "product_id": products[i],
                "score": float(scores[i]),
                "features_found": {entity: found[i] for entity, found in found_by.items()},
            }
            for i in np.argsort(-scores, kind="stable").tolist()
        ]
        return Outcome(body, loaded.version, len(products), int((~features.found).sum()), unlogged)

"""FastAPI app: score users with each binary model's champion, and rank products for a user with each ranking
model's champion, on Feast online features.

Users (or products) without online features still get a score (every feature missing) with
``features_found: false``, so a caller can tell a cold-start score from a real one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any, Literal

import anyio
import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from pipelines.features.candidates import catalogue_day, lake_candidates, lake_catalogue
from pipelines.lake import Lake
from pipelines.serving.model_loader import ChampionModel, FeatureMismatchError, LoadedModel, RefreshLoop
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, load_specs
from pipelines.usecases import use_case

log = logging.getLogger(__name__)

MAX_USER_IDS = 1000
MAX_PRODUCT_IDS = 1000
# An id no real user has: the canary reads its (empty) online row through the same path as a request.
CANARY_USER_ID = -1
# Likewise for a ranking request's product and its category.
CANARY_PRODUCT_ID = -1
ENTITY_COLUMN = "user_id"
RANK_KEYS = ["user_id", "product_id", "category_id"]

# (settings, feature_service, user_ids or a frame of join keys) -> one row per requested entity, in request order,
# with the service's feature columns; an entity the online store does not know comes back with all features
# missing. Same signature as pipelines.features.store.online_features.
FeatureReader = Callable[[Settings, str, list[int] | pd.DataFrame], pd.DataFrame]


class PredictRequest(BaseModel):
    user_ids: list[int] = Field(min_length=1, max_length=MAX_USER_IDS, description="Users to score.")


class Prediction(BaseModel):
    user_id: int
    score: float
    features_found: bool = Field(description="False when the online store had no features for this user.")


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class RankRequest(BaseModel):
    user_id: int = Field(description="The user to rank products for.")
    product_ids: list[int] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PRODUCT_IDS,
        description="The candidate products; without them, candidates are drawn from the lake's newest days "
        "as in training (the user's recent categories, popular products, recent carts).",
    )


class RankedProduct(BaseModel):
    product_id: int
    score: float
    features_found: bool = Field(description="False when the online store had no features for this candidate.")


class RankResponse(BaseModel):
    model: str
    version: str
    user_id: int
    candidates: Literal["request", "generated"] = Field(description="Where the candidate products came from.")
    products: list[RankedProduct] = Field(description="The candidates, best first.")


class RefusalInfo(BaseModel):
    version: str
    reason: str
    at: datetime


class ModelHealth(BaseModel):
    version: str | None
    loaded_at: datetime | None
    champion_version: str | None
    last_checked: datetime | None
    last_refusal: RefusalInfo | None
    last_error: str | None


class HealthResponse(BaseModel):
    status: str = Field(description="ok when every served model has a loaded champion, else degraded.")
    models: dict[str, ModelHealth]


class ModelInfo(BaseModel):
    name: str
    objective: str
    feature_service: str
    served: bool = Field(description="Whether POST /v1/models/{name}/predict serves this model.")
    version: str | None
    features: list[str]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class FeastReader:
    """The default reader: Feast online features through one long-lived FeatureStore, built on first use."""

    def __init__(self) -> None:
        self._store: Any = None
        self._lock = threading.Lock()

    def __call__(self, settings: Settings, feature_service: str, entities: list[int] | pd.DataFrame) -> pd.DataFrame:
        # Imported lazily: feast takes seconds to import and tests pass their own reader.
        from pipelines.features.store import feature_store, online_features

        with self._lock:  # building a store applies the definitions: do it once, not per request
            if self._store is None:
                self._store = feature_store(settings)
        return online_features(settings, feature_service, entities, store=self._store)


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


def _rows_for(frame: pd.DataFrame, user_ids: list[int], feature_service: str) -> pd.DataFrame:
    """Align the reader's rows to the requested ids (by the entity column when present, else by position)."""
    if ENTITY_COLUMN in frame.columns:
        return frame.drop_duplicates(ENTITY_COLUMN).set_index(ENTITY_COLUMN).reindex(user_ids).reset_index(drop=True)
    if len(frame) != len(user_ids):
        raise ValueError(
            f"feature service {feature_service!r} returned {len(frame)} rows for {len(user_ids)} user ids "
            f"and no {ENTITY_COLUMN!r} column to align them"
        )
    return frame.reset_index(drop=True)


def _candidate_rows(frame: pd.DataFrame, asked: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Align the reader's rows to the asked candidates (by product when the reader returns keys, else by
    position): the asked keys, then the features."""
    if "product_id" in frame.columns:
        features = frame.drop(columns=[c for c in RANK_KEYS if c in frame.columns and c != "product_id"])
        features = features.drop_duplicates("product_id").set_index("product_id")
        return asked.join(features, on="product_id").reset_index(drop=True)
    if len(frame) != len(asked):
        raise ValueError(
            f"feature service {feature_service!r} returned {len(frame)} rows for {len(asked)} candidates "
            "and no product_id column to align them"
        )
    return pd.concat([asked.reset_index(drop=True), frame.reset_index(drop=True)], axis=1)


# (settings, ranking spec, user_id, product_ids or None) -> candidate rows user_id, product_id, category_id.
CandidateSource = Callable[[Settings, ModelSpec, int, list[int] | None], pd.DataFrame]


def create_app(
    settings: Settings,
    feature_reader: FeatureReader | None = None,
    specs: Mapping[str, ModelSpec] | None = None,
    candidate_source: CandidateSource | None = None,
) -> FastAPI:
    """The serving app for every spec in ``settings.models_dir`` (or ``specs``): binary user models score users,
    ranking models rank products for a user."""
    reader = feature_reader or FeastReader()
    candidates_of = candidate_source or LakeCandidates()
    all_specs = dict(specs) if specs is not None else load_specs(settings.models_dir)

    def read_features(spec: ModelSpec, user_ids: list[int]) -> pd.DataFrame:
        return _rows_for(reader(settings, spec.feature_service, user_ids), user_ids, spec.feature_service)

    def read_candidate_features(spec: ModelSpec, rows: pd.DataFrame) -> pd.DataFrame:
        asked = rows[RANK_KEYS].reset_index(drop=True)
        return _candidate_rows(reader(settings, spec.feature_service, asked), asked, spec.feature_service)

    def canary_for(spec: ModelSpec) -> Callable[[], pd.DataFrame]:
        if use_case(spec.entity).serving == "rank":
            row = pd.DataFrame({"user_id": [CANARY_USER_ID], "product_id": [CANARY_PRODUCT_ID], "category_id": [-1]})
            return lambda: read_candidate_features(spec, row)
        return lambda: read_features(spec, [CANARY_USER_ID])

    # How each model is served is its use case's (pipelines/usecases/): scored by id, ranked, or not served.
    served_as = {name: use_case(spec.entity).serving for name, spec in all_specs.items()}
    holders = {
        name: ChampionModel(name, settings, canary_features=canary_for(spec))
        for name, spec in all_specs.items()
        if served_as[name] == "score"
    }
    rankers = {
        name: ChampionModel(name, settings, canary_features=canary_for(spec), probabilities=False)
        for name, spec in all_specs.items()
        if served_as[name] == "rank"
    }

    def refresh_all() -> None:
        for holder in [*holders.values(), *rankers.values()]:
            holder.refresh()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(refresh_all)
        loop = RefreshLoop([*holders.values(), *rankers.values()], settings.serving_refresh_seconds)
        loop.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(loop.stop)

    app = FastAPI(title="Storefront ML serving", lifespan=lifespan)
    app.state.settings = settings
    app.state.models = holders
    app.state.rankers = rankers
    app.state.specs = all_specs

    def serving(model: str, holder: ChampionModel) -> LoadedModel:
        loaded = holder.current()
        if loaded is None:
            refusal = holder.status().last_refusal
            if refusal is not None:
                raise HTTPException(
                    503,
                    f"no servable champion for {model}: v{refusal.version} was refused ({refusal.reason})",
                )
            raise HTTPException(503, f"no champion for {model}; approve a version first")
        return loaded

    def holder_in(pool: dict[str, ChampionModel], model: str, serves: str) -> tuple[ModelSpec, ChampionModel]:
        """The model's spec and champion holder from ``pool``; 404 naming the model when it is not served here."""
        spec = all_specs.get(model)
        if spec is None:
            raise HTTPException(404, f"unknown model {model!r}; known models: {sorted(all_specs)}")
        holder = pool.get(model)
        if holder is None:
            raise HTTPException(
                404,
                f"model {model!r} ({spec.objective}, entity {spec.entity}) is not served here: this route {serves}",
            )
        if not holder.checked:  # the app was started without its lifespan (e.g. mounted elsewhere)
            holder.refresh()
        return spec, holder

    def holder_for(model: str) -> tuple[ModelSpec, ChampionModel]:
        return holder_in(holders, model, "scores binary user models")

    def ranker_for(model: str) -> tuple[ModelSpec, LoadedModel]:
        spec, holder = holder_in(rankers, model, "serves ranking models only")
        return spec, serving(model, holder)

    # Plain `def` endpoints run in FastAPI's thread pool: blocking feature reads don't stall the event loop.
    @app.post("/v1/models/{model}/predict", response_model=PredictResponse)
    def predict(model: str, request: PredictRequest) -> PredictResponse:
        spec, holder = holder_for(model)
        loaded = serving(model, holder)
        try:
            rows = read_features(spec, request.user_ids)
        except Exception as exc:
            log.exception("online feature read failed for %s", spec.feature_service)
            raise HTTPException(
                503, f"online features unavailable for feature service {spec.feature_service!r}: {exc}"
            ) from exc
        try:
            scores = loaded.predict(rows)
        except FeatureMismatchError as exc:
            raise HTTPException(503, str(exc)) from exc
        found = ~rows.loc[:, list(loaded.feature_names)].isna().all(axis=1).to_numpy()
        return PredictResponse(
            model=model,
            version=loaded.version,
            predictions=[
                Prediction(user_id=uid, score=float(s), features_found=bool(f))
                for uid, s, f in zip(request.user_ids, np.asarray(scores), found, strict=True)
            ],
        )

    @app.post("/v1/models/{model}/rank", response_model=RankResponse)
    def rank(model: str, request: RankRequest) -> RankResponse:
        spec, loaded = ranker_for(model)
        source = "request" if request.product_ids is not None else "generated"
        try:
            rows = candidates_of(settings, spec, request.user_id, request.product_ids)
        except Exception as exc:
            log.exception("candidates unavailable for %s", model)
            raise HTTPException(503, f"candidates unavailable for {model}: {exc}") from exc
        if rows.empty:
            return RankResponse(
                model=model, version=loaded.version, user_id=request.user_id, candidates=source, products=[]
            )
        try:
            features = read_candidate_features(spec, rows)
        except Exception as exc:
            log.exception("online feature read failed for %s", spec.feature_service)
            raise HTTPException(
                503, f"online features unavailable for feature service {spec.feature_service!r}: {exc}"
            ) from exc
        try:
            scores = np.asarray(loaded.predict(features))
        except FeatureMismatchError as exc:
            raise HTTPException(503, str(exc)) from exc
        found = ~features.loc[:, list(loaded.feature_names)].isna().all(axis=1).to_numpy()
        product_ids = features["product_id"].to_numpy()
        return RankResponse(
            model=model,
            version=loaded.version,
            user_id=request.user_id,
            candidates=source,
            products=[
                RankedProduct(product_id=int(product_ids[i]), score=float(scores[i]), features_found=bool(found[i]))
                for i in np.argsort(-scores, kind="stable")
            ],
        )

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        models = {}
        for name, holder in [*holders.items(), *rankers.items()]:
            st = holder.status()
            refusal = st.last_refusal
            models[name] = ModelHealth(
                version=st.version,
                loaded_at=st.loaded_at,
                champion_version=st.champion_version,
                last_checked=st.last_checked,
                last_refusal=RefusalInfo(version=refusal.version, reason=refusal.reason, at=refusal.at)
                if refusal
                else None,
                last_error=st.last_error,
            )
        ok = all(m.version is not None for m in models.values())
        return HealthResponse(status="ok" if ok else "degraded", models=models)

    @app.get("/v1/models", response_model=ModelsResponse)
    def list_models() -> ModelsResponse:
        infos = []
        for name, spec in sorted(all_specs.items()):
            holder = holders.get(name) or rankers.get(name)
            loaded = holder.current() if holder is not None else None
            infos.append(
                ModelInfo(
                    name=name,
                    objective=spec.objective,
                    feature_service=spec.feature_service,
                    served=name in holders,
                    version=loaded.version if loaded else None,
                    features=list(loaded.feature_names) if loaded else [],
                )
            )
        return ModelsResponse(models=infos)

    return app

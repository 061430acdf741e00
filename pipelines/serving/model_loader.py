"""Keep each model's champion in memory and hot-swap it when the ``champion`` alias moves.

A new version is swapped in only after its audit check (``vet``: gate passed, approval and alias match the audit
log, pipelines/registry/tamper.py), its load and a canary; otherwise it is refused and the old one keeps serving
(the contract in DESIGN.md: serving never goes down on a bad model).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.serving.single_row import SingleRowScorer
from pipelines.settings import Settings

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
# Up to this many rows a request is scored on one thread (see LoadedModel.score).
SINGLE_THREAD_ROWS = 2_000

# Returns online feature rows for a canary entity (one row or more, feature columns by name).
CanaryFeatures = Callable[[], pd.DataFrame]
# (model, alias, version or None when the alias is absent) -> why it must not be served, or None.
Vet = Callable[[str, str, str | None], str | None]


class FeatureMismatchError(ValueError):
    """The model's features are not all present in the feature rows it is asked to score."""


class CanaryError(ValueError):
    """A freshly loaded model produced unusable scores on the canary rows."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, loaded and ready to score."""

    name: str
    version: str
    booster: lgb.Booster
    feature_names: tuple[str, ...]
    loaded_at: datetime
    num_threads: int

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The frame's feature columns in the booster's order, as floats (missing values become NaN)."""
        missing = [c for c in self.feature_names if c not in frame.columns]
        if missing:
            raise FeatureMismatchError(
                f"model {self.name} v{self.version} expects features {missing} that the online features "
                f"do not provide (got {list(frame.columns)}); retrain against the current feature service "
                "or fix the feature view"
            )
        return frame.loc[:, list(self.feature_names)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores for every row of ``frame`` (NaN features take LightGBM's missing-value branch)."""
        return np.asarray(self.booster.predict(self.matrix(frame), num_threads=self.num_threads), dtype=float)

    def score(self, values: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """Scores of a float matrix whose columns are the features ``names`` (any order, extra columns ignored):
        the request path's form, no frame built. A request's few rows are scored on one thread: starting OpenMP's
        team costs milliseconds on a busy machine, more than the trees (the server scales by processes)."""
        order = self._columns(names)
        if len(values) == 1 and (scorer := self._single_row()) is not None:
            return np.array([scorer(values[0, order])])
        threads = 1 if len(values) < SINGLE_THREAD_ROWS else self.num_threads
        return np.asarray(self.booster.predict(values[:, order], num_threads=threads), dtype=float)

    def _single_row(self) -> SingleRowScorer | None:
        """The booster's single-row scorer (a third of Booster.predict's time for one row), made on first use;
        None for a model it does not handle (several outputs per row), which Booster.predict scores."""
        if "_scorer" not in self.__dict__:
            try:
                self.__dict__["_scorer"] = SingleRowScorer(self.booster)
            except ValueError:
                self.__dict__["_scorer"] = None
        return self.__dict__["_scorer"]

    def _columns(self, names: tuple[str, ...]) -> list[int]:
        cache = self.__dict__.setdefault("_column_cache", {})
        order = cache.get(names)
        if order is None:
            where = {n: i for i, n in enumerate(names)}
            missing = [c for c in self.feature_names if c not in where]
            if missing:
                raise FeatureMismatchError(
                    f"model {self.name} v{self.version} expects features {missing} that the online features "
                    f"do not provide (got {list(names)}); retrain against the current feature service "
                    "or fix the feature view"
                )
            order = cache[names] = [where[c] for c in self.feature_names]
        return order


@dataclass(frozen=True)
class Refusal:
    """A version that was not swapped in, and why."""

    version: str
    reason: str
    at: datetime


@dataclass
class ModelStatus:
    """What /health reports for one model."""

    name: str
    version: str | None
    loaded_at: datetime | None
    champion_version: str | None
    last_checked: datetime | None
    last_refusal: Refusal | None
    last_error: str | None
    refused_versions: list[str] = field(default_factory=list)
    # Why the alias as it stands now is not trusted (moved or deleted outside mlctl, ...); None when it is.
    finding: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registered_model(settings: Settings, name: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """The registered model's aliases (alias -> version) and tags in one registry call; None when it does not
    exist. The refresh loop asks this every few seconds for every model: one query, one long-lived client."""
    from mlflow.exceptions import MlflowException

    try:
        model = _client(settings.mlflow_tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    # SQLite stores give an int version, the REST server a str.
    return {a: str(v) for a, v in (model.aliases or {}).items()}, dict(model.tags or {})


def champion_version(settings: Settings, name: str, alias: str = CHAMPION_ALIAS) -> str | None:
    """The version ``alias`` (the champion by default) points at, or None when there is no such model or alias."""
    # The aliases map rather than get_model_version_by_alias: a missing alias there is an INVALID_PARAMETER_VALUE,
    # indistinguishable from a real error.
    found = registered_model(settings, name)
    return None if found is None else found[0].get(alias)


def load_version(settings: Settings, name: str, version: str) -> LoadedModel:
    """Load the LightGBM booster of ``models:/<name>/<version>`` through the registry helpers (one code path)."""
    from pipelines.registry.registry import load_booster

    model = load_booster(settings, name, version)
    booster = model if isinstance(model, lgb.Booster) else model.booster_
    return LoadedModel(
        name=name,
        version=version,
        booster=booster,
        feature_names=tuple(booster.feature_name()),
        loaded_at=_now(),
        num_threads=settings.num_threads,
    )


def check_canary(model: LoadedModel, canary_rows: pd.DataFrame | None = None, probabilities: bool = True) -> None:
    """Score a row of zeros (and the given canary rows); scores must be finite, and probabilities in [0, 1] for a
    binary model (a ranker's scores are unbounded)."""
    frames = [pd.DataFrame([dict.fromkeys(model.feature_names, 0.0)])]
    if canary_rows is not None:
        frames.append(canary_rows)
    for frame in frames:
        scores = model.predict(frame)
        if scores.shape != (len(frame),):
            raise CanaryError(
                f"model {model.name} v{model.version} returned scores of shape {scores.shape} for "
                f"{len(frame)} canary rows; expected one score per row (binary objective)"
            )
        if not np.all(np.isfinite(scores)) or (probabilities and np.any((scores < 0) | (scores > 1))):
            raise CanaryError(
                f"model {model.name} v{model.version} returned {scores.tolist()} for canary rows; "
                f"expected {'probabilities in [0, 1]' if probabilities else 'finite scores'}"
            )


class ChampionModel:
    """Holds the serving version of one registered model; ``refresh()`` follows the champion alias."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        canary_features: CanaryFeatures | None = None,
        probabilities: bool = True,
        on_event: Callable[[str, str], None] | None = None,
        alias: str = CHAMPION_ALIAS,
        vet: Vet | None = None,
    ) -> None:
        """Follows ``alias`` (the champion, or a rollout's challenger); ``on_event(model, "swap" | "refusal")`` is
        told of every swap and refusal (metrics); ``vet`` is asked before a version is loaded (None: no audit
        check, for a bare registry)."""
        self.name = name
        self.alias = alias
        self._on_event = on_event
        self._probabilities = probabilities
        self._settings = settings
        self._canary_features = canary_features
        self._vet = vet
        self._finding: str | None = None
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        # One refresh at a time: the background loop and a manual call must not load the same version twice.
        self._refresh_lock = threading.Lock()
        self._refused: dict[str, Refusal] = {}
        self._last_refusal: Refusal | None = None
        self._last_error: str | None = None
        self._last_checked: datetime | None = None
        self._champion_version: str | None = None

    def current(self) -> LoadedModel | None:
        """The version serving right now (None before the first successful load)."""
        with self._swap_lock:
            return self._current

    @property
    def checked(self) -> bool:
        return self._last_checked is not None

    def refresh(self, aliases: dict[str, str] | None = None) -> LoadedModel | None:
        """Check the alias (in ``aliases`` when the caller already read the model's aliases, else from the
        registry); load, canary and swap in a new version. Returns the version now serving."""
        with self._refresh_lock:
            self._last_checked = _now()
            try:
                version = (
                    aliases.get(self.alias)
                    if aliases is not None
                    else champion_version(self._settings, self.name, self.alias)
                )
            except Exception as exc:  # the registry being down must not stop serving
                self._record_error(f"could not read alias {self.alias!r} of {self.name}: {exc}")
                return self.current()
            self._champion_version = version
            current = self.current()
            if current is not None and current.version == version:
                self._last_error = self._finding = None
                return current
            if version in self._refused:
                return current
            try:
                # Not cached like a failed load: the audit log may catch up (a restore, an audited promotion).
                self._finding = self._vet(self.name, self.alias, version) if self._vet else None
            except Exception as exc:  # the registry or the lake being down: keep serving, check again next time
                self._record_error(f"could not check {self.name} v{version} against the audit log: {exc}")
                return current
            if version is None:
                self._last_error = None
                return current
            if self._finding is not None:
                self._distrust(version, self._finding)
                return current
            try:
                candidate = load_version(self._settings, self.name, version)
            except Exception as exc:
                self._refuse(version, f"failed to load: {exc}")
                return current
            try:
                canary_rows = self._canary_features() if self._canary_features else None
            except Exception as exc:
                # The online store is at fault, not the model: retry on the next refresh instead of refusing.
                self._record_error(f"could not read canary features for {self.name} v{version}: {exc}")
                return current
            try:
                check_canary(candidate, canary_rows, self._probabilities)
            except Exception as exc:
                self._refuse(version, f"failed the canary: {exc}")
                return current
            with self._swap_lock:
                self._current = candidate
            self._last_error = None
            self._tell("swap")
            log.info(
                "serving %s v%s (was %s)",
                self.name,
                version,
                current.version if current is not None else "none",
            )
            return candidate

    def status(self) -> ModelStatus:
        current = self.current()
        return ModelStatus(
            name=self.name,
            version=current.version if current else None,
            loaded_at=current.loaded_at if current else None,
            champion_version=self._champion_version,
            last_checked=self._last_checked,
            last_refusal=self._last_refusal,
            last_error=self._last_error,
            refused_versions=sorted(self._refused, key=lambda v: (len(v), v)),
            finding=self._finding,
        )

    def _distrust(self, version: str, reason: str) -> None:
        """Refuse a version the audit log does not vouch for, once per finding (the check repeats every refresh)."""
        last = self._last_refusal
        if last is None or (last.version, last.reason) != (version, reason):
            self._refusal(Refusal(version=version, reason=reason, at=_now()))

    def _refuse(self, version: str, reason: str) -> None:
        refusal = Refusal(version=version, reason=reason, at=_now())
        self._refused[version] = refusal
        self._refusal(refusal)

    def _refusal(self, refusal: Refusal) -> None:
        version, reason = refusal.version, refusal.reason
        self._last_refusal = refusal
        self._tell("refusal")
        current = self.current()
        log.error(
            "refused %s v%s, still serving %s: %s",
            self.name,
            version,
            f"v{current.version}" if current else "nothing",
            reason,
        )

    def _tell(self, event: str) -> None:
        if self._on_event is not None:
            try:
                self._on_event(self.name, event)
            except Exception:  # a metrics hook must never stop a swap
                log.exception("event hook failed for %s %s", self.name, event)

    def _record_error(self, message: str) -> None:
        self._last_error = message
        log.warning(message)


class Refreshable(Protocol):
    name: str

    def refresh(self) -> object: ...


class RefreshLoop:
    """A daemon thread that refreshes every holder every ``interval`` seconds until stopped."""

    def __init__(self, holders: Iterable[Refreshable], interval: float) -> None:
        self._holders = list(holders)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for holder in self._holders:
                if self._stop.is_set():
                    return
                try:
                    holder.refresh()
                except Exception:  # keep the loop alive whatever one model does
                    log.exception("refresh of %s failed", holder.name)

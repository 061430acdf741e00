"""Use cases: one registry of every entity kind a model can be about, and of the feature families they read.

Everything that depends on an entity kind reads it here: the daily DAG (which families to build, and which raw
tables each needs), training (keys, row builder, Bayes-optimal scorer), serving (how a model is served), the demo,
``mlctl validate-specs`` and the Feast repo (``feature_repo/definitions.py`` composes each use case's
declarations). Importing this package is cheap (the daily DAG file reads it at parse time): the modules import
pandas, Feast, GX and LightGBM only inside the functions they declare.

Adding a model for a new entity kind ``thing``:

1. ``pipelines/usecases/thing.py`` declares
   - ``FAMILIES``: its feature families, each a :class:`FeatureFamily` (name, the raw lake tables a day must hold,
     the feature tables it publishes, and ``build(settings, day) -> dict`` that builds, checks and publishes them);
   - ``USE_CASE``: a :class:`UseCase` (entity, join keys, the families its feature service reads, the raw tables
     its labels read, the label kinds and objective a spec may pair with it, its Feast declarations, its training
     row builder, its Bayes-optimal scorer for simulated data, and how it is served);
2. one import line in ``_MODULES`` below;
3. ``models/<model>.yaml`` (``entity: thing``) and the GX suites of its tables in ``expectations/``.

The feature computation itself (e.g. ``pipelines/features/thing_features.py``) and its Feast declarations
(``feature_repo/thing.py``) are the new code the use case points at; nothing else changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from feature_repo.parts import RepoPart
    from pipelines.lake import Lake
    from pipelines.settings import Settings
    from pipelines.specs import ModelSpec
    from pipelines.training.dataset import SplitDays

# How a champion is served over HTTP (pipelines/serving/app.py): "score" = POST /v1/models/{m}/predict with ids,
# "rank" = POST /v1/models/{m}/rank with a user and candidate products, "checkout" = POST /v1/models/{m}/score
# with an order being placed; None = kept in the registry, not served.
ServingKind = Literal["score", "rank", "checkout"] | None


class UnknownUseCase(LookupError):
    """A model spec or a caller names an entity kind (or family) no use case declares."""


@dataclass(frozen=True)
class FeatureFamily:
    """Feature tables built together for one day from the same raw tables."""

    name: str
    input_tables: tuple[str, ...]
    feature_tables: tuple[str, ...]  # what training reads (training readiness asks for their partitions)
    # build(settings, day) -> {"rows"/"uri"/"warnings" ...}: builds, checks and publishes the day's tables.
    build: Callable[[Settings, dt.date], dict]
    # Tables the family also publishes for serving only (online lookups), not training inputs.
    serving_tables: tuple[str, ...] = ()


@dataclass(frozen=True)
class UseCase:
    """Everything an entity kind's models need, declared once."""

    entity: str
    keys: tuple[str, ...]
    families: tuple[str, ...]
    label_tables: tuple[str, ...]
    label_kinds: tuple[str, ...]
    objective: Literal["binary", "lambdarank"]
    # feast(settings, declared) -> RepoPart: entities, sources, views and services; ``declared`` holds the parts of
    # the use cases registered before this one, by entity (ranking reuses the user entity and behaviour view).
    feast: Callable[[Settings, Mapping[str, RepoPart]], RepoPart]
    # build_rows(settings, lake, spec, splits, logical_date) -> labelled rows joined to point-in-time features.
    build_rows: Callable[[Settings, Lake, ModelSpec, SplitDays, dt.date], pd.DataFrame]
    # oracle(settings, lake, spec, frame) -> the simulator's true scores of frame's rows, None on real data.
    oracle: Callable[[Settings, Lake, ModelSpec, pd.DataFrame], np.ndarray | None]
    serving: ServingKind


def _registry() -> tuple[dict[str, FeatureFamily], dict[str, UseCase]]:
    from pipelines.usecases import order, user, user_product

    _MODULES: tuple[Any, ...] = (user, order, user_product)  # registration order = build and declaration order
    families: dict[str, FeatureFamily] = {}
    use_cases: dict[str, UseCase] = {}
    for module in _MODULES:
        for family in module.FAMILIES:
            if family.name in families:
                raise ValueError(f"{module.__name__}: feature family {family.name!r} is declared twice")
            families[family.name] = family
        use_cases[module.USE_CASE.entity] = module.USE_CASE
    for case in use_cases.values():
        unknown = [f for f in case.families if f not in families]
        if unknown:
            raise ValueError(f"use case {case.entity!r} reads undeclared feature families {unknown}")
    return families, use_cases


FAMILIES, USE_CASES = _registry()


def use_case(entity: str) -> UseCase:
    """The use case of an entity kind; UnknownUseCase names the known ones."""
    try:
        return USE_CASES[entity]
    except KeyError:
        raise UnknownUseCase(
            f"entity {entity!r} has no use case; known: {sorted(USE_CASES)} (declare one in pipelines/usecases/)"
        ) from None


def family(name: str) -> FeatureFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownUseCase(f"unknown feature family {name!r}; known: {list(FAMILIES)}") from None


def input_tables(spec: ModelSpec) -> tuple[str, ...]:
    """Every raw lake table a spec's model needs: its families' inputs, then its label tables (no repeats)."""
    case = use_case(spec.entity)
    tables = [t for name in case.families for t in FAMILIES[name].input_tables]
    return tuple(dict.fromkeys([*tables, *case.label_tables]))


def families_for(specs: Iterable[ModelSpec]) -> list[str]:
    """The families the given specs read, in registration order (user behaviour first)."""
    needed = {name for spec in specs for name in use_case(spec.entity).families}
    return [name for name in FAMILIES if name in needed]


def raw_tables() -> tuple[str, ...]:
    """Every raw table any family or label reads (what an ingested day may hold)."""
    tables = [t for f in FAMILIES.values() for t in f.input_tables]
    tables += [t for c in USE_CASES.values() for t in c.label_tables]
    return tuple(dict.fromkeys(tables))

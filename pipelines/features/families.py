"""Feature families: the feature tables a day's run builds, chosen by the entities of the model specs.

Kept free of heavy imports: the daily DAG file reads it at parse time to make one task per family.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipelines.specs import ModelSpec, SpecError, load_spec

# family -> "module:function" building and publishing the day's tables of that family: f(settings, ds) -> dict.
FAMILY_STEPS: dict[str, str] = {
    "user_behavior": "pipelines.flows.daily_features:user_behavior_features",
    "order_risk": "pipelines.features.order_features:build_and_write_order_features",
    "ranking": "pipelines.features.product_features:build_and_write_ranking_features",
}
# entity of a model spec -> the families its feature service reads.
ENTITY_FAMILIES: dict[str, tuple[str, ...]] = {
    "user": ("user_behavior",),
    "order": ("order_risk",),
    "user_product": ("user_behavior", "ranking"),
}


def families_for(specs: Iterable[ModelSpec]) -> list[str]:
    """The families the given specs need, in the order of FAMILY_STEPS (user behaviour first)."""
    needed = {family for spec in specs for family in ENTITY_FAMILIES[spec.entity]}
    return [family for family in FAMILY_STEPS if family in needed]


def families_in(models_dir: Path) -> list[str]:
    """The families of the specs in ``models_dir`` that parse. A malformed spec must not stop feature production
    for the other models: the training DAG file reports it (as a DAG import error), and so does
    ``mlctl validate-specs``."""
    specs = []
    for path in sorted(models_dir.glob("*.yaml")):
        try:
            specs.append(load_spec(path))
        except SpecError:
            continue
    return families_for(specs)

"""Feast declarations of every use case, composed into one repo.

Declarations only. The lake location differs per profile, so ``definitions(settings)`` builds the objects
(used by ``pipelines.features.store``); ``repo.py`` exposes them at module level for the ``feast`` CLI.
Each use case of ``pipelines/usecases/`` names its declarations (``UseCase.feast``); nothing is listed here.
"""

from __future__ import annotations

from feature_repo.parts import RepoPart, combine
from pipelines.settings import Settings
from pipelines.usecases import USE_CASES


def parts_by_entity(settings: Settings) -> dict[str, RepoPart]:
    """Each use case's Feast objects, by entity, declared in registration order."""
    declared: dict[str, RepoPart] = {}
    for entity, case in USE_CASES.items():
        declared[entity] = case.feast(settings, declared)
    return declared


def definitions(settings: Settings) -> RepoPart:
    """The project's Feast objects, reading feature partitions from ``settings.lake_uri``."""
    return combine(*parts_by_entity(settings).values())

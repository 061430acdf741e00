"""Feast declarations of every use case, composed into one repo.

Declarations only. The lake location differs per profile, so ``definitions(settings)`` builds the objects
(used by ``pipelines.features.store``); ``repo.py`` exposes them at module level for the ``feast`` CLI.
Adding a use case means adding its declaration module and one line here.
"""

from __future__ import annotations

from feature_repo.orders import order_declarations
from feature_repo.parts import RepoPart, combine
from feature_repo.ranking import ranking_declarations
from feature_repo.users import user_declarations
from pipelines.settings import Settings


def definitions(settings: Settings) -> RepoPart:
    """The project's Feast objects, reading feature partitions from ``settings.lake_uri``."""
    users = user_declarations(settings)
    return combine(users, order_declarations(settings), ranking_declarations(settings, users))

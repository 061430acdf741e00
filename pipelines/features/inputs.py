"""The first check of every feature family: the frames it reads (and publishes) hold the columns it needs."""

from __future__ import annotations

import pandas as pd


class FeatureInputError(ValueError):
    """A frame lacks a column a feature family needs, or a feature frame breaks its table's rules."""


def require_columns(
    df: pd.DataFrame, table: str, columns: list[str], family: str, error: type[FeatureInputError] = FeatureInputError
) -> None:
    """Raise ``error`` naming the table and the missing columns when ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(
            f"table '{table}' lacks column(s) {missing} needed for {family} features; "
            "see pipelines/data/schemas.py for its schema"
        )

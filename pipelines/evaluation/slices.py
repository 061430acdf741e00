"""Slice values of evaluation rows from the model spec's slices (numeric columns cut into bands)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.specs import ModelSpec, SliceSpec

MISSING = "missing"


class SliceError(ValueError):
    """A spec's slice names a column the evaluation rows do not have."""


def _band_names(spec: SliceSpec) -> list[str]:
    bands = spec.bands or []
    if spec.labels:
        return list(spec.labels)
    return [f"<{bands[0]:g}", *[f"{lo:g}-{hi:g}" for lo, hi in zip(bands, bands[1:], strict=False)], f">={bands[-1]:g}"]


def slice_values(frame: pd.DataFrame, spec: SliceSpec, model: str = "") -> pd.Series:
    """The slice value of every row, as strings; NaN reads as "missing"."""
    if spec.column not in frame.columns:
        raise SliceError(
            f"model spec {model!r}: slice {spec.name!r} reads column {spec.column!r}, which the training set lacks "
            f"(it has {sorted(c for c in frame.columns)[:30]}); fix 'slices' in models/{model}.yaml"
        )
    column = frame[spec.column]
    if spec.bands is None:
        return column.astype(object).where(column.notna(), MISSING).astype(str)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64")
    names = np.asarray(_band_names(spec), dtype=object)
    idx = np.searchsorted(np.asarray(spec.bands, dtype="float64"), values, side="right")
    out = names[np.clip(idx, 0, len(names) - 1)]
    return pd.Series(np.where(np.isnan(values), MISSING, out), index=frame.index, dtype=object).astype(str)


def slice_frame(frame: pd.DataFrame, model_spec: ModelSpec) -> pd.DataFrame:
    """One column ``slice.<name>`` per slice of the spec, aligned with ``frame``."""
    return pd.DataFrame(
        {f"slice.{s.name}": slice_values(frame, s, model_spec.name) for s in model_spec.slices}, index=frame.index
    )

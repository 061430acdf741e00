"""Slice values of evaluation rows from the model spec's slices: numeric columns cut into bands, others as text.

For a ranking model the unit is the query (request): every row of a query takes the slice value of the query's
first row, so a query is never split across slice values (context columns such as tenure are per query anyway).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.specs import ModelSpec, SliceSpec
from pipelines.training.dataset import GROUP_COLUMN

MISSING = "missing"
SLICE_PREFIX = "slice."


class SliceError(ValueError):
    """A spec's slice names a column the evaluation rows do not have, or bands a column that is not numeric."""


def band_names(spec: SliceSpec) -> list[str]:
    """Names of the bands in ascending order: the spec's labels, or ``<a``, ``a-b``, ..., ``>=z``."""
    bands = spec.bands or []
    if spec.labels:
        return list(spec.labels)
    inner = [f"{lo:g}-{hi:g}" for lo, hi in zip(bands, bands[1:], strict=False)]
    return [f"<{bands[0]:g}", *inner, f">={bands[-1]:g}"]


def _as_text(values: np.ndarray) -> np.ndarray:
    """Numbers as text without a spurious ``.0`` (category 3, not 3.0)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    names = np.array([str(int(v)) if float(v).is_integer() else str(v) for v in uniq], dtype=object)
    return names[inverse]


def slice_values(frame: pd.DataFrame, spec: SliceSpec, model: str = "") -> pd.Series:
    """The slice value of every row, as strings; NaN reads as "missing"."""
    if spec.column not in frame.columns:
        raise SliceError(
            f"model spec {model!r}: slice {spec.name!r} reads column {spec.column!r}, which the training set lacks "
            f"(it has {sorted(frame.columns)[:30]}); fix 'slices' in models/{model}.yaml"
        )
    column = frame[spec.column]
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if spec.bands is not None and not numeric:
        raise SliceError(
            f"model spec {model!r}: slice {spec.name!r} cuts column {spec.column!r} into bands, but it holds "
            f"{column.dtype} values; drop 'bands' from the slice in models/{model}.yaml or slice a numeric column"
        )
    if not numeric:
        out = column.astype(object).where(column.notna(), MISSING).astype(str).to_numpy(dtype=object)
        return pd.Series(out, index=frame.index, dtype=object)
    values = column.to_numpy(dtype="float64")
    missing = np.isnan(values)
    out = np.full(len(values), MISSING, dtype=object)
    if spec.bands is None:
        out[~missing] = _as_text(values[~missing])
    else:
        names = np.asarray(band_names(spec), dtype=object)
        out[~missing] = names[np.searchsorted(np.asarray(spec.bands, dtype="float64"), values[~missing], "right")]
    return pd.Series(out, index=frame.index, dtype=object)


def ordered_values(spec: SliceSpec, present: set[str]) -> list[str]:
    """The values present in a slice, bands in ascending order (others sorted), "missing" last."""
    first = [b for b in band_names(spec) if b in present] if spec.bands is not None else []
    rest = sorted(present - set(first) - {MISSING})
    return [*first, *rest, *([MISSING] if MISSING in present else [])]


def slice_frame(frame: pd.DataFrame, model_spec: ModelSpec) -> pd.DataFrame:
    """One column ``slice.<name>`` per slice of the spec, aligned with ``frame``; per query for ranking rows."""
    out = pd.DataFrame(index=frame.index)
    for spec in model_spec.slices:
        values = slice_values(frame, spec, model_spec.name)
        if GROUP_COLUMN in frame.columns:
            values = values.groupby(frame[GROUP_COLUMN].to_numpy(), sort=False).transform("first")
        out[SLICE_PREFIX + spec.name] = values
    return out

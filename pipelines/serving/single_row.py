"""One row scored through LightGBM's single-row C API, for the request path.

``Booster.predict`` prepares a predictor on every call (the booster's class count, the parameter string, the
data's checks and conversion): ~100 us of a single-row prediction's ~150 us on this machine, for a model of 200
trees, and a scored request is one row. LightGBM's ``LGBM_BoosterPredictForMatSingleRowFast`` does that preparation
once (``...FastInit``) and then only walks the trees: ~45 us for the same row. The scores are LightGBM's own, equal
to ``Booster.predict``'s (tests/test_single_row.py). The C calls are LightGBM's public C API, reached through the
library handle the lightgbm package loaded; they take the booster's own lock, so threads may share a scorer.
"""

from __future__ import annotations

import ctypes
import weakref

import lightgbm as lgb
import numpy as np
from lightgbm import basic

_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: probabilities for a binary model, raw scores for a ranker
_FLOAT64 = 1  # C_API_DTYPE_FLOAT64
_DOUBLE_P = ctypes.POINTER(ctypes.c_double)


class SingleRowScorer:
    """Scores one row of float64 features (the booster's columns, in its order) with ``booster``; as
    ``booster.predict(row[None, :], num_threads=1)[0]``. Only for models with one output per row."""

    def __init__(self, booster: lgb.Booster) -> None:
        if booster.num_model_per_iteration() != 1:
            raise ValueError("single-row scoring needs a model with one output per row (not multiclass)")
        self._booster = booster  # the C config points into it: it must live as long as this
        self.columns = booster.num_feature()
        handle = ctypes.c_void_p()
        # As Booster.predict's default: the best iteration when training stopped early (0 = every tree).
        basic._safe_call(
            basic._LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(booster.best_iteration),
                ctypes.c_int(_FLOAT64),
                ctypes.c_int32(self.columns),
                basic._c_str("num_threads=1"),
                ctypes.byref(handle),
            )
        )
        self._handle = handle
        weakref.finalize(self, basic._LIB.LGBM_FastConfigFree, handle)

    def __call__(self, row: np.ndarray) -> float:
        data = np.ascontiguousarray(row, dtype=np.float64)
        if data.shape != (self.columns,):
            raise ValueError(f"a row of {self.columns} features expected, got shape {data.shape}")
        out = np.empty(1, dtype=np.float64)
        length = ctypes.c_int64()
        basic._safe_call(
            basic._LIB.LGBM_BoosterPredictForMatSingleRowFast(
                self._handle, data.ctypes.data_as(ctypes.c_void_p), ctypes.byref(length), out.ctypes.data_as(_DOUBLE_P)
            )
        )
        return float(out[0])

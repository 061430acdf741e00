"""What the reviewer's report shows, read from a candidate's MLflow run, the registry and the lake.

The evaluation (``evaluation.json``, ``evaluation/scores.parquet``) and the gate (``gate.json``) are written by
:mod:`pipelines.evaluation.evaluate` and :mod:`pipelines.evaluation.gate`; :func:`read_evaluation` and
:func:`read_verdict` are the only places that know their key layout.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipelines.evaluation.evaluate import EVALUATION_ARTIFACT, SCORES_ARTIFACT, Evaluation
from pipelines.evaluation.gate import GATE_ARTIFACT, GateCheck
from pipelines.lake import Lake
from pipelines.monitoring.skew import latest_skew
from pipelines.registry.registry import ModelVersionInfo, connect, get_version, load_booster
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import (
    GROUP_COLUMN,
    LABEL_COLUMN,
    SPLIT_COLUMN,
    SPLITS,
    TrainingSetError,
    load_training_set,
)
from pipelines.training.train import TAG_DIGEST

if TYPE_CHECKING:
    import lightgbm as lgb

IMPORTANCE_JSON = "feature_importance.json"
SHAP_ROWS = 2000
SCORER_NAMES = {"candidate": "challenger", "champion": "champion", "baseline": "baseline", "oracle": "Bayes-optimal"}


class ReportError(LookupError):
    """The report of a model version cannot be built or fetched (never evaluated, artifacts missing)."""


# -- what the evaluation and the gate logged ------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A metric value with its bootstrap confidence interval (None when the evaluation gave none)."""

    value: float
    low: float | None = None
    high: float | None = None


@dataclass
class SliceRow:
    slice: str
    value: str
    rows: int  # queries for ranking models
    positives: int
    metrics: dict[str, dict[str, Estimate]]  # scorer -> metric -> estimate
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be computed here


@dataclass
class EvaluationView:
    """The parts of ``evaluation.json`` the report shows, whatever scorers were available."""

    candidate_version: str
    champion_version: str | None
    logical_date: str
    main_metric: str
    rows: int
    queries: int | None  # ranking models
    label_rate: float
    overall: dict[str, dict[str, Estimate]]  # scorer (candidate, champion, baseline, oracle) -> metric -> estimate
    slices: list[SliceRow] = field(default_factory=list)
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be computed overall


@dataclass
class Verdict:
    """The gate's verdict; ``passed`` is None when the gate has not run on the version."""

    passed: bool | None
    summary: str
    checks: list[GateCheck] = field(default_factory=list)


def _estimate(raw: dict[str, float]) -> Estimate:
    """``{"value", "low", "high"}`` (per slice only the main metric has an interval); NaN bounds mean none."""
    low, high = raw.get("low"), raw.get("high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return Estimate(float(raw["value"]))
    return Estimate(float(raw["value"]), float(low), float(high))


def _by_scorer(raw: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Estimate]]:
    return {scorer: {m: _estimate(e) for m, e in metrics.items()} for scorer, metrics in raw.items() if metrics}


def read_evaluation(raw: dict[str, Any]) -> EvaluationView:
    """The report's view of ``evaluation.json`` (:class:`pipelines.evaluation.evaluate.Evaluation`).

    The one place that knows its key layout. Scorers that were not available (no champion yet, no baseline in the
    spec, no simulator truth) are absent from it, and so from the view.
    """
    ev = Evaluation.from_dict(raw)
    slices = [
        SliceRow(
            str(s["slice"]),
            str(s["value"]),
            int(s["rows"]),
            int(s["positives"]),
            _by_scorer(s["metrics"]),
            dict(s.get("undefined") or {}),
        )
        for s in ev.slices
    ]
    return EvaluationView(
        candidate_version=ev.candidate_version,
        champion_version=ev.champion_version,
        logical_date=ev.logical_date,
        main_metric=ev.main_metric,
        rows=ev.rows,
        queries=ev.queries,
        label_rate=ev.label_rate,
        overall=_by_scorer(ev.overall),
        slices=slices,
        undefined=dict(ev.undefined),
    )


def read_verdict(raw: dict[str, Any] | None) -> Verdict:
    """The gate's verdict from ``gate.json`` (:class:`pipelines.evaluation.gate.GateDecision`); None: not gated."""
    if raw is None:
        return Verdict(None, "The gate has not run on this version yet.")
    return Verdict(bool(raw["passed"]), str(raw["summary"]), [GateCheck(**c) for c in raw["checks"]])


# -- gathering them from the run -------------------------------------------------------------------------------
@dataclass
class ReportInputs:
    spec: ModelSpec
    version: ModelVersionInfo
    evaluation: EvaluationView
    verdict: Verdict
    scores: pd.DataFrame
    importance: dict[str, float]
    splits: pd.DataFrame  # one row per split: rows, positive rate (and queries for ranking)
    shap: tuple[np.ndarray, pd.DataFrame]  # contributions, the sampled rows' feature values
    notes: list[str] = field(default_factory=list)
    # The newest training/serving skew report of the model as served (pipelines/monitoring/skew.py), if any.
    skew: dict[str, Any] | None = None


def _download(client: MlflowClient, run_id: str, path: str, into: str) -> Path | None:
    """The run's artifact ``path`` downloaded under ``into``, or None when the run has no such artifact."""
    parent = str(Path(path).parent) if "/" in path else None
    if path not in {a.path for a in client.list_artifacts(run_id, parent)}:
        return None
    return Path(client.download_artifacts(run_id, path, into))


def _json_artifact(client: MlflowClient, run_id: str, path: str) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory(prefix="report-input-") as tmp:
        local = _download(client, run_id, path, tmp)
        return None if local is None else json.loads(local.read_text())


def _scores(client: MlflowClient, run_id: str) -> pd.DataFrame | None:
    with tempfile.TemporaryDirectory(prefix="report-input-") as tmp:
        local = _download(client, run_id, SCORES_ARTIFACT, tmp)
        return None if local is None else pd.read_parquet(local)


def _split_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name in SPLITS:
        part = frame[frame[SPLIT_COLUMN] == name]
        row = {"split": name, "rows": len(part), "positive rate": float((part[LABEL_COLUMN] > 0).mean())}
        if GROUP_COLUMN in frame.columns:
            row["queries"] = int(part[GROUP_COLUMN].nunique())
        rows.append(row)
    return pd.DataFrame(rows)


def shap_values(
    booster: lgb.Booster, test: pd.DataFrame, num_threads: int, rows: int = SHAP_ROWS
) -> tuple[np.ndarray, pd.DataFrame]:
    """LightGBM's own SHAP values (``pred_contrib``) of at most ``rows`` test rows, sampled with a fixed seed."""
    features = test[booster.feature_name()]
    if len(features) > rows:
        features = features.sample(rows, random_state=0)
    return booster.predict(features, pred_contrib=True, num_threads=num_threads), features


def gather(settings: Settings, spec: ModelSpec, version: str) -> ReportInputs:
    """Everything the report shows, read from the candidate's run, the registry and the lake."""
    info = get_version(settings, spec.name, version)
    client = connect(settings)
    raw = _json_artifact(client, info.run_id, EVALUATION_ARTIFACT)
    if raw is None:
        raise ReportError(
            f"{spec.name} version {version} was never evaluated: its run {info.run_id} has no {EVALUATION_ARTIFACT}; "
            f"run the evaluate step of train_{spec.name} (e.g. `mlctl run train_{spec.name} --date D`) first"
        )
    evaluation = read_evaluation(raw)
    scores = _scores(client, info.run_id)
    if scores is None:
        raise ReportError(
            f"{spec.name} version {version}: its run {info.run_id} has {EVALUATION_ARTIFACT} but no {SCORES_ARTIFACT}; "
            "evaluate it again to log the test rows' scores"
        )
    importance = _json_artifact(client, info.run_id, IMPORTANCE_JSON) or {}
    notes = []
    try:
        training_set = load_training_set(Lake(settings), spec, dt.date.fromisoformat(evaluation.logical_date))
    except TrainingSetError as exc:
        raise ReportError(f"{spec.name} version {version}: the SHAP summary needs its training set: {exc}") from exc
    if info.tags.get(TAG_DIGEST) not in (None, training_set.digest):
        notes.append(
            f"The training set at {training_set.uri} was rebuilt after this version was trained (digest "
            f"{training_set.digest[:12]} vs {info.tags[TAG_DIGEST][:12]}): volumes and SHAP values "
            "describe the current one."
        )
    booster = load_booster(settings, spec.name, version)
    return ReportInputs(
        spec=spec,
        version=info,
        evaluation=evaluation,
        verdict=read_verdict(_json_artifact(client, info.run_id, GATE_ARTIFACT)),
        scores=scores,
        importance={str(k): float(v) for k, v in importance.items()},
        splits=_split_table(training_set.frame),
        shap=shap_values(booster, training_set.split("test"), settings.num_threads),
        notes=notes,
        skew=latest_skew(settings, spec.name),
    )

"""Score a candidate, the current champion, the spec's baseline and (simulated data) the Bayes-optimal scorer on
the same out-of-time test rows: metrics overall and per slice, each with a bootstrap confidence interval.

Logged to the candidate's MLflow run as ``evaluation.json`` (the :class:`Evaluation`), ``evaluation/scores.parquet``
(label, each scorer's score, query_id for ranking, ``slice.<name>``) and ``eval_<scorer>_<metric>`` metrics.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.evaluation.baseline import baseline_scores
from pipelines.evaluation.metrics import MetricError, compute_metrics, query_values
from pipelines.evaluation.slices import slice_frame
from pipelines.registry.registry import connect, get_champion, get_version, load_booster
from pipelines.settings import Settings
from pipelines.specs import RANKING_METRICS, ModelSpec
from pipelines.training.dataset import GROUP_COLUMN, LABEL_COLUMN, TrainingSet

if TYPE_CHECKING:
    import lightgbm as lgb

EVALUATION_ARTIFACT = "evaluation.json"
SCORES_ARTIFACT = "evaluation/scores.parquet"
SCORERS = ("candidate", "champion", "baseline", "oracle")
# Names of the scorers in MLflow metric keys (eval_<name>_<metric>).
METRIC_PREFIX = {"candidate": "candidate", "champion": "champion", "baseline": "baseline", "oracle": "bayes_optimal"}
N_BOOTSTRAP = 100
SEED = 20240601

Estimates = dict[str, dict[str, dict[str, float]]]  # scorer -> metric -> {"value", "low", "high"}


class EvaluationError(ValueError):
    """A model cannot be scored on the evaluation rows (e.g. it needs features the training set lacks)."""


@dataclass
class Evaluation:
    """Every scorer's metrics on the same rows, overall and per slice; plain data, JSON-able."""

    model: str
    candidate_version: str
    champion_version: str | None
    logical_date: str
    training_set_digest: str
    objective: str
    main_metric: str
    rows: int
    positives: int
    label_rate: float
    queries: int | None = None
    overall: Estimates = field(default_factory=dict)
    slices: list[dict[str, Any]] = field(default_factory=list)

    def point(self, scorer: str) -> dict[str, float] | None:
        """``metric -> value`` of one scorer overall (None when that scorer was not available)."""
        metrics = self.overall.get(scorer)
        return None if not metrics else {m: e["value"] for m, e in metrics.items()}

    @property
    def candidate(self) -> dict[str, float]:
        return self.point("candidate") or {}

    @property
    def champion(self) -> dict[str, float] | None:
        return self.point("champion")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Evaluation:
        return cls(**raw)


def evaluation_metrics(spec: ModelSpec) -> list[str]:
    """The spec's metrics plus any metric its gate checks."""
    gate = spec.gate
    return list(dict.fromkeys([*spec.metrics, *gate.floors, *gate.max_regression, *gate.slice_max_regression]))


def score(booster: lgb.Booster, frame: pd.DataFrame, num_threads: int) -> np.ndarray:
    """Scores of ``frame`` with the booster's own feature columns, in its own order."""
    wanted = booster.feature_name()
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise EvaluationError(
            f"the model needs feature(s) {missing} that the evaluation rows lack; "
            "a champion trained on other features cannot be compared on this training set"
        )
    return booster.predict(frame[wanted], num_threads=num_threads)


def _estimates(
    y: np.ndarray, scores: np.ndarray, names: list[str], groups: np.ndarray | None, rng: np.random.Generator, n: int
) -> dict[str, dict[str, float]]:
    """Point value and percentile bootstrap interval (rows resampled; queries for ranking) of each metric."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        try:
            if name in RANKING_METRICS:
                values = query_values(y, scores, groups, name)
                if len(values) == 0:
                    continue
                draws = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
                value = float(values.mean())
            else:
                value = compute_metrics(y, scores, [name])[name]
                draws = []
                for _ in range(n):
                    idx = rng.integers(0, len(y), len(y))
                    if 0 < y[idx].sum() < len(idx):
                        draws.append(compute_metrics(y[idx], scores[idx], [name])[name])
                draws = np.asarray(draws)
        except MetricError:
            continue  # e.g. a slice with a single class: the metric is undefined there
        low, high = np.percentile(draws, [2.5, 97.5]) if len(draws) else (np.nan, np.nan)
        out[name] = {"value": value, "low": float(low), "high": float(high)}
    return out


def evaluate_scores(
    spec: ModelSpec,
    test: pd.DataFrame,
    scores: dict[str, np.ndarray | None],
    n_bootstrap: int = N_BOOTSTRAP,
) -> tuple[Estimates, list[dict[str, Any]], pd.DataFrame]:
    """Overall and per-slice estimates of every available scorer on ``test``, and the scores frame.

    Overall, every metric gets an interval; per slice, the main metric does (the others are points), which keeps
    a 20k-row evaluation with a dozen slice values to seconds.
    """
    rng = np.random.default_rng(SEED)
    names = evaluation_metrics(spec)
    y = test[LABEL_COLUMN].to_numpy(dtype="float64")
    groups = test[GROUP_COLUMN].to_numpy() if GROUP_COLUMN in test.columns else None
    available = {k: np.asarray(v, dtype="float64") for k, v in scores.items() if v is not None}
    overall = {k: _estimates(y, s, names, groups, rng, n_bootstrap) for k, s in available.items()}

    sliced = slice_frame(test, spec)
    frame = pd.DataFrame({"label": y, **{k: available.get(k, np.full(len(y), np.nan)) for k in SCORERS}})
    if groups is not None:
        frame[GROUP_COLUMN] = groups
    frame = pd.concat([frame, sliced.reset_index(drop=True)], axis=1)

    slices: list[dict[str, Any]] = []
    for column in sliced.columns:
        for value, idx in frame.groupby(column).indices.items():
            ys, gs = y[idx], None if groups is None else groups[idx]
            entry: dict[str, Any] = {
                "slice": column.removeprefix("slice."),
                "value": str(value),
                "rows": int(len(idx)) if gs is None else int(len(np.unique(gs))),
                "positives": int((ys > 0).sum()),
                "metrics": {},
            }
            for scorer, s in available.items():
                main = _estimates(ys, s[idx], [spec.main_metric], gs, rng, n_bootstrap)
                rest = _estimates(ys, s[idx], [m for m in names if m != spec.main_metric], gs, rng, 0)
                entry["metrics"][scorer] = main | {m: {"value": e["value"]} for m, e in rest.items()}
            slices.append(entry)
    return overall, slices, frame


def evaluate_candidate(
    settings: Settings,
    spec: ModelSpec,
    version: str,
    training_set: TrainingSet,
    oracle_scores: np.ndarray | None = None,
) -> Evaluation:
    """Evaluate ``version`` against the champion (if any), the baseline and the oracle; log it to its run."""
    version = str(version)
    candidate_info = get_version(settings, spec.name, version)
    test = training_set.split("test").reset_index(drop=True)
    champion_info = get_champion(settings, spec.name)
    scores: dict[str, np.ndarray | None] = {
        "candidate": score(load_booster(settings, spec.name, version), test, settings.num_threads),
        "champion": None,
        "baseline": baseline_scores(spec, training_set),
        "oracle": oracle_scores,
    }
    if champion_info is not None:
        scores["champion"] = score(load_booster(settings, spec.name, champion_info.version), test, settings.num_threads)
    if oracle_scores is not None and len(oracle_scores) != len(test):
        raise EvaluationError(f"oracle scores cover {len(oracle_scores)} rows, the test split has {len(test)}")
    overall, slices, frame = evaluate_scores(spec, test, scores)
    labels = test[LABEL_COLUMN].to_numpy()
    evaluation = Evaluation(
        model=spec.name,
        candidate_version=version,
        champion_version=None if champion_info is None else champion_info.version,
        logical_date=training_set.logical_date.isoformat(),
        training_set_digest=training_set.digest,
        objective=spec.objective,
        main_metric=spec.main_metric,
        rows=len(test),
        positives=int((labels > 0).sum()),
        label_rate=float((labels > 0).mean()) if len(labels) else 0.0,
        queries=int(test[GROUP_COLUMN].nunique()) if GROUP_COLUMN in test.columns else None,
        overall=overall,
        slices=slices,
    )
    log_evaluation(settings, candidate_info.run_id, evaluation, frame)
    return evaluation


def log_evaluation(settings: Settings, run_id: str, evaluation: Evaluation, scores: pd.DataFrame) -> None:
    """Log ``eval_<scorer>_<metric>``, ``evaluation.json`` and the scores to the candidate's run."""
    client = connect(settings)
    for scorer, metrics in evaluation.overall.items():
        for metric, estimate in metrics.items():
            client.log_metric(run_id, f"eval_{METRIC_PREFIX[scorer]}_{metric}", estimate["value"])
    client.log_dict(run_id, evaluation.to_dict(), EVALUATION_ARTIFACT)
    with tempfile.TemporaryDirectory(prefix="evaluation-") as tmp:
        path = Path(tmp) / Path(SCORES_ARTIFACT).name
        scores.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), str(Path(SCORES_ARTIFACT).parent))


def load_evaluation(settings: Settings, name: str, version: str) -> Evaluation | None:
    """The evaluation last logged to ``version``'s run (None if it was never evaluated), without rescoring."""
    client = connect(settings)
    run_id = get_version(settings, name, version).run_id
    if EVALUATION_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    local = client.download_artifacts(run_id, EVALUATION_ARTIFACT, tempfile.mkdtemp(prefix="evaluation-"))
    return Evaluation.from_dict(json.loads(Path(local).read_text()))

"""Score a candidate, the current champion, the spec's baseline and (simulated data) the Bayes-optimal scorer on
the same out-of-time test rows: metrics overall and per slice, each with a bootstrap confidence interval, and the
paired difference between the candidate and each other scorer.

Logged to the candidate's MLflow run as ``evaluation.json`` (the :class:`Evaluation`), ``evaluation/scores.parquet``
(label, each scorer's score, query_id for ranking, ``slice.<name>``) and ``eval_<scorer>_<metric>`` metrics; the
reviewer's report reads those two artifacts back.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.evaluation.baseline import baseline_scores, describe_baseline
from pipelines.evaluation.bootstrap import CONFIDENCE, N_BOOTSTRAP, Estimate, compare, resample_counts, units_of
from pipelines.evaluation.metrics import PROBABILITY_METRICS, undefined_metrics
from pipelines.evaluation.slices import SLICE_PREFIX, ordered_values, slice_frame
from pipelines.registry.registry import connect, get_champion, get_version, load_booster
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import GROUP_COLUMN, LABEL_COLUMN, TrainingSet

if TYPE_CHECKING:
    import lightgbm as lgb

EVALUATION_ARTIFACT = "evaluation.json"
SCORES_ARTIFACT = "evaluation/scores.parquet"
SCORERS = ("candidate", "champion", "baseline", "oracle")
# Names of the scorers in MLflow metric keys (eval_<name>_<metric>).
METRIC_PREFIX = {"candidate": "candidate", "champion": "champion", "baseline": "baseline", "oracle": "bayes_optimal"}

Estimates = dict[str, dict[str, Estimate]]  # scorer -> metric -> {"value", "low", "high"}


class EvaluationError(ValueError):
    """A model cannot be scored on the evaluation rows (e.g. it needs features the training set lacks)."""


@dataclass
class Evaluation:
    """Every scorer's metrics on the same rows, overall and per slice; plain data, JSON-able.

    ``overall``: scorer (candidate, champion, baseline, oracle; absent when unavailable) -> metric -> estimate.
    ``differences``: other scorer -> metric -> estimate of ``candidate - other`` on the same resamples.
    ``slices``: one entry per slice value: ``slice``, ``value``, ``rows`` (queries for ranking), ``positives``
    (rows with label > 0), ``metrics`` and ``differences`` shaped as the overall ones, and ``undefined``.
    ``undefined``: metric -> why it could not be computed on these rows (e.g. "no positives (all 412 labels are
    0)"); such a metric is absent from ``overall`` / ``metrics``, for every scorer alike.
    """

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
    differences: Estimates = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    baseline: str | None = None  # the spec's baseline in words
    n_bootstrap: int = N_BOOTSTRAP
    confidence: float = CONFIDENCE

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
    """Scores of ``frame`` with the booster's own feature columns, in its own order (binary and lambdarank)."""
    wanted = booster.feature_name()
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise EvaluationError(
            f"the model needs feature(s) {missing} that the evaluation rows lack; "
            "a champion trained on other features cannot be compared on this training set"
        )
    return booster.predict(frame[wanted], num_threads=num_threads)


def _scorer_metrics(spec: ModelSpec, scorer: str) -> list[str]:
    """The metrics a scorer is measured on: all of them, but log loss and calibration only for probabilities
    (a raw feature used as the baseline score is not one)."""
    names = evaluation_metrics(spec)
    raw_feature = scorer == "baseline" and spec.baseline is not None and spec.baseline.kind == "feature"
    return [m for m in names if not (raw_feature and m in PROBABILITY_METRICS)]


def evaluate_scores(
    spec: ModelSpec,
    test: pd.DataFrame,
    scores: dict[str, np.ndarray | None],
    *,
    candidate_version: str,
    champion_version: str | None = None,
    logical_date: str = "",
    training_set_digest: str = "",
    n_bootstrap: int = N_BOOTSTRAP,
) -> tuple[Evaluation, pd.DataFrame]:
    """The :class:`Evaluation` of the given scores of ``test``'s rows, and the scores frame logged with it.

    ``scores`` maps scorers (:data:`SCORERS`) to one score per test row, or None when that scorer is unavailable.
    """
    test = test.reset_index(drop=True)
    unknown = sorted(set(scores) - set(SCORERS))
    if unknown:
        raise EvaluationError(f"unknown scorer(s) {unknown}; expected {SCORERS}")
    available = {k: np.asarray(v, dtype="float64") for k, v in scores.items() if v is not None}
    if "candidate" not in available:
        raise EvaluationError("no candidate scores to evaluate")
    wrong = {k: len(v) for k, v in available.items() if len(v) != len(test)}
    if wrong:
        raise EvaluationError(f"scores of {wrong} do not cover the {len(test)} test rows one to one")

    if test.empty:
        raise EvaluationError(f"{spec.name}: the test split is empty; widen 'windows.test_days' in its spec")
    if spec.objective == "lambdarank" and GROUP_COLUMN not in test.columns:
        raise EvaluationError(f"ranking model {spec.name}: the test rows lack the query column {GROUP_COLUMN!r}")
    y = test[LABEL_COLUMN].to_numpy(dtype="float64")
    groups = test[GROUP_COLUMN].to_numpy() if spec.objective == "lambdarank" else None
    units = units_of(len(y), groups)
    counts = resample_counts(int(units.max()) + 1, n_bootstrap)
    inputs = {k: (s, _scorer_metrics(spec, k)) for k, s in available.items()}
    overall, differences = compare(y, inputs, units, counts)

    sliced = slice_frame(test, spec)
    slices: list[dict[str, Any]] = []
    for slice_spec in spec.slices:
        column = sliced[SLICE_PREFIX + slice_spec.name].to_numpy()
        for value in ordered_values(slice_spec, set(column)):
            idx = np.flatnonzero(column == value)
            metrics, diffs = compare(y[idx], {k: (s[idx], m) for k, (s, m) in inputs.items()}, units[idx], counts)
            slices.append(
                {
                    "slice": slice_spec.name,
                    "value": value,
                    "rows": len(idx) if groups is None else len(np.unique(units[idx])),
                    "positives": int((y[idx] > 0).sum()),
                    "metrics": metrics,
                    "differences": diffs,
                    "undefined": undefined_metrics(y[idx], evaluation_metrics(spec)),
                }
            )

    frame = pd.DataFrame({"label": y, **{k: available.get(k, np.full(len(y), np.nan)) for k in SCORERS}})
    if groups is not None:
        frame[GROUP_COLUMN] = groups
    frame = pd.concat([frame, sliced.reset_index(drop=True)], axis=1)
    evaluation = Evaluation(
        model=spec.name,
        candidate_version=str(candidate_version),
        champion_version=None if champion_version is None else str(champion_version),
        logical_date=logical_date,
        training_set_digest=training_set_digest,
        objective=spec.objective,
        main_metric=spec.main_metric,
        rows=len(test),
        positives=int((y > 0).sum()),
        label_rate=float((y > 0).mean()) if len(y) else 0.0,
        queries=None if groups is None else int(len(np.unique(groups))),
        overall=overall,
        slices=slices,
        differences=differences,
        undefined=undefined_metrics(y, evaluation_metrics(spec)),
        baseline=describe_baseline(spec) if "baseline" in available else None,
        n_bootstrap=n_bootstrap,
    )
    return evaluation, frame


def evaluate_candidate(
    settings: Settings,
    spec: ModelSpec,
    version: str,
    training_set: TrainingSet,
    oracle_scores: np.ndarray | None = None,
) -> Evaluation:
    """Evaluate ``version`` against the champion (if any), the baseline and the oracle (the simulator's
    Bayes-optimal scores of the test rows, when known: ``oracle_scores``, else those the training-set step kept
    beside the training set) on the test split; log it all to the candidate's run."""
    version = str(version)
    candidate_info = get_version(settings, spec.name, version)
    test = training_set.split("test").reset_index(drop=True)
    champion_info = get_champion(settings, spec.name)
    scores: dict[str, np.ndarray | None] = {
        "candidate": score(load_booster(settings, spec.name, version), test, settings.num_threads),
        "champion": None,
        "baseline": baseline_scores(spec, training_set),
        "oracle": training_set.oracle if oracle_scores is None else oracle_scores,
    }
    if champion_info is not None:
        scores["champion"] = score(load_booster(settings, spec.name, champion_info.version), test, settings.num_threads)
    evaluation, frame = evaluate_scores(
        spec,
        test,
        scores,
        candidate_version=version,
        champion_version=None if champion_info is None else champion_info.version,
        logical_date=training_set.logical_date.isoformat(),
        training_set_digest=training_set.digest,
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
    with tempfile.TemporaryDirectory(prefix="evaluation-") as tmp:
        local = client.download_artifacts(run_id, EVALUATION_ARTIFACT, tmp)
        return Evaluation.from_dict(json.loads(Path(local).read_text()))

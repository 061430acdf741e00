"""Score a candidate version and the current champion on the same out-of-time test rows."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.evaluation.metrics import compute_metrics
from pipelines.registry.registry import connect, get_champion, get_version, load_booster
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import LABEL_COLUMN, TrainingSet

if TYPE_CHECKING:
    import lightgbm as lgb

EVALUATION_ARTIFACT = "evaluation.json"


class EvaluationError(ValueError):
    """A model cannot be scored on the evaluation rows (e.g. it needs features the training set lacks)."""


@dataclass
class Evaluation:
    """Metrics of candidate and champion on the same rows; plain data, JSON-able with ``asdict``."""

    model: str
    candidate_version: str
    champion_version: str | None
    logical_date: str
    training_set_digest: str
    rows: int
    label_rate: float
    candidate: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluation_metrics(spec: ModelSpec) -> list[str]:
    """The spec's metrics plus any metric its gate checks."""
    return list(dict.fromkeys([*spec.metrics, *spec.gate.floors, *spec.gate.max_regression]))


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


def evaluate_scores(
    spec: ModelSpec, test: pd.DataFrame, label_column: str, candidate: np.ndarray, champion: np.ndarray | None
) -> tuple[dict[str, float], dict[str, float] | None]:
    names = evaluation_metrics(spec)
    y = test[label_column].to_numpy()
    return compute_metrics(y, candidate, names), None if champion is None else compute_metrics(y, champion, names)


def evaluate_candidate(settings: Settings, spec: ModelSpec, version: str, training_set: TrainingSet) -> Evaluation:
    """Metrics of ``version`` and of the champion (if any) on the test split, logged to its run."""
    version = str(version)
    candidate_info = get_version(settings, spec.name, version)
    test = training_set.split("test")
    candidate_scores = score(load_booster(settings, spec.name, version), test, settings.num_threads)
    champion_info = get_champion(settings, spec.name)
    champion_scores = None
    if champion_info is not None:
        champion_scores = score(load_booster(settings, spec.name, champion_info.version), test, settings.num_threads)
    cand, champ = evaluate_scores(spec, test, LABEL_COLUMN, candidate_scores, champion_scores)
    evaluation = Evaluation(
        model=spec.name,
        candidate_version=version,
        champion_version=None if champion_info is None else champion_info.version,
        logical_date=training_set.logical_date.isoformat(),
        training_set_digest=training_set.digest,
        rows=len(test),
        label_rate=float(test[LABEL_COLUMN].mean()),
        candidate=cand,
        champion=champ,
    )
    log_evaluation(settings, candidate_info.run_id, evaluation)
    return evaluation


def log_evaluation(settings: Settings, run_id: str, evaluation: Evaluation) -> None:
    """Log ``eval_candidate_<m>``, ``eval_champion_<m>`` and ``evaluation.json`` to the candidate's run."""
    client = connect(settings)
    for metric, value in evaluation.candidate.items():
        client.log_metric(run_id, f"eval_candidate_{metric}", value)
    for metric, value in (evaluation.champion or {}).items():
        client.log_metric(run_id, f"eval_champion_{metric}", value)
    client.log_dict(run_id, evaluation.to_dict(), EVALUATION_ARTIFACT)


def load_evaluation(settings: Settings, name: str, version: str) -> Evaluation | None:
    """The evaluation last logged to ``version``'s run (None if it was never evaluated), without rescoring."""
    client = connect(settings)
    run_id = get_version(settings, name, version).run_id
    if EVALUATION_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    local = client.download_artifacts(run_id, EVALUATION_ARTIFACT, tempfile.mkdtemp(prefix="evaluation-"))
    return Evaluation(**json.loads(Path(local).read_text()))

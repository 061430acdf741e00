"""Model specs: ``models/<name>.yaml`` declares everything a model's pipeline needs.

Entity and feature service, label and its delay, objective and LightGBM parameters, time windows, metrics, gate
thresholds (overall and per slice), slices, the baseline a first model must beat, reviewers (how many must
approve, how long a request stands) and schedule.
A malformed spec fails with a :class:`SpecError` naming the file, the key and the expected form, both when the
DAG file is parsed and in ``mlctl validate-specs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.usecases import USE_CASES

# Metric names a spec may use, per objective (pipelines/evaluation/metrics.py computes them).
BINARY_METRICS = frozenset({"roc_auc", "pr_auc", "log_loss", "calibration_error", "recall_at_1pct_fpr"})
RANKING_METRICS = frozenset({"ndcg_at_10", "map_at_10"})
LOWER_IS_BETTER = frozenset({"log_loss", "calibration_error"})
# A training DAG scheduled on the daily features it reads (their Assets), instead of a cron string or manual (null).
FEATURES_SCHEDULE = "features"
# A training DAG scheduled only on its champion's drift (the daily monitoring's Asset): retrain when it drifts.
DRIFT_SCHEDULE = "drift"
# Columns of a training set that describe a row without being a model feature (used by slices) start with this.
CONTEXT_PREFIX = "ctx_"


class SpecError(ValueError):
    """A model spec file is missing, unreadable or does not match the expected form."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    """What is predicted, and when the truth is known.

    - ``purchase_within``: 1 if the entity has an ``event_type`` event in the ``window_days`` after the as-of time.
    - ``chargeback``: 1 if the order was charged back; only orders at least ``delay_days`` old are labelled, with
      the labels that had arrived by the run's logical date.
    - ``ranking_relevance``: graded relevance of a candidate product, ``gains[event_type]`` (the highest event of
      the user on that product in the ``window_days`` after the request).
    """

    kind: Literal["purchase_within", "chargeback", "ranking_relevance"] = "purchase_within"
    event_type: str = "purchase"
    window_days: int = Field(7, gt=0, description="days after the as-of time the label looks at")
    delay_days: int = Field(0, ge=0, description="days until a label can be trusted (chargebacks arrive late)")
    gains: dict[str, int] = Field(default_factory=dict, description="ranking: event type -> relevance grade")

    @property
    def maturity_days(self) -> int:
        """Days between an as-of day and the first logical date on which its label is complete."""
        return self.delay_days if self.kind == "chargeback" else self.window_days


class WindowSpec(_Strict):
    train_days: int = Field(14, gt=0)
    validation_days: int = Field(3, gt=0)
    test_days: int = Field(3, gt=0)
    max_train_days: int | None = Field(
        None,
        gt=0,
        description="train on more days than train_days, up to this many, where the lake holds their features",
    )

    @model_validator(mode="after")
    def _max_covers_train(self) -> WindowSpec:
        if self.max_train_days is not None and self.max_train_days < self.train_days:
            raise ValueError(
                f"'max_train_days' ({self.max_train_days}) must be at least 'train_days' ({self.train_days})"
            )
        return self


class SliceSpec(_Strict):
    """A slice dimension: a training-set column, cut into bands when numeric or taken as it is."""

    name: str
    column: str = Field(description="a column of the training set: a feature or a 'ctx_' context column")
    bands: list[float] | None = Field(None, description="ascending cut points of a numeric column")
    labels: list[str] | None = Field(None, description="one name per band: len(bands) + 1")

    @model_validator(mode="after")
    def _bands_and_labels(self) -> SliceSpec:
        if self.bands is not None:
            if not self.bands or sorted(self.bands) != self.bands or len(set(self.bands)) != len(self.bands):
                raise ValueError(f"slice {self.name!r}: 'bands' must be a non-empty strictly ascending list")
            if self.labels is not None and len(self.labels) != len(self.bands) + 1:
                raise ValueError(
                    f"slice {self.name!r}: 'labels' needs {len(self.bands) + 1} names for {len(self.bands)} cut points"
                )
        elif self.labels is not None:
            raise ValueError(f"slice {self.name!r}: 'labels' names bands, so it needs 'bands'")
        return self


class BaselineSpec(_Strict):
    """The simple model a first candidate must beat (there is no champion to compare with yet).

    ``logistic_regression`` on ``features`` (fit on the train split), or ``feature``: one column used as the
    score (e.g. popularity for ranking).
    """

    kind: Literal["logistic_regression", "feature"] = "logistic_regression"
    features: list[str] = Field(min_length=1)


class GateSpec(_Strict):
    floors: dict[str, float] = Field(default_factory=dict, description="metric -> minimum value")
    max_regression: dict[str, float] = Field(
        default_factory=dict, description="metric -> largest allowed drop against the champion, overall"
    )
    slice_max_regression: dict[str, float] = Field(
        default_factory=dict, description="metric -> largest allowed drop against the champion in any slice"
    )
    min_slice_rows: int = Field(200, gt=0, description="slices with fewer rows (or queries) are reported, not gated")
    min_slice_positives: int = Field(10, ge=0, description="slices with fewer positive labels are not gated")
    min_lift_over_baseline: float | None = Field(
        0.0, description="main metric must beat the baseline by this much (None: no baseline check)"
    )


class CandidateSpec(_Strict):
    """Ranking: which products are scored for a user (recent categories' and overall popular products)."""

    recent_days: int = Field(14, gt=0, description="look-back for the user's recent categories and carts")
    categories: int = Field(3, gt=0, description="the user's most viewed categories in recent_days")
    per_category: int = Field(10, gt=0, description="most popular products taken from each of those categories")
    popular: int = Field(10, ge=0, description="most popular products overall")
    popularity_days: int = Field(7, gt=0, description="window of the popularity ranking")


class MonitoringSpec(_Strict):
    """When the daily monitoring step calls a champion drifting (pipelines/monitoring/drift.py).

    A feature drifts when its PSI against the champion's training rows reaches ``psi_alert`` or its KS statistic
    reaches ``ks_alert``; the model drifts when at least ``features_share`` of its compared features drift, or its
    scores' PSI reaches ``prediction_psi_alert``. A day with fewer than ``min_rows`` rows is reported, not judged.
    """

    psi_alert: float = Field(0.25, gt=0, description="PSI of a feature at which it drifts (0.1 slight, 0.25 major)")
    ks_alert: float = Field(0.2, gt=0, le=1, description="two-sample KS statistic of a feature at which it drifts")
    features_share: float = Field(0.2, gt=0, le=1, description="share of drifting features that makes the model drift")
    prediction_psi_alert: float = Field(0.25, gt=0, description="PSI of the champion scores at which it drifts")
    bins: int = Field(10, ge=2, le=100, description="quantile bins of the reference for PSI")
    min_rows: int = Field(100, ge=1, description="rows a day needs to be judged")


class ModelSpec(_Strict):
    name: str
    entity: str = Field(description="an entity kind declared in pipelines/usecases/ (user, order, user_product)")
    feature_service: str
    label: LabelSpec
    objective: Literal["binary", "lambdarank"] = "binary"
    params: dict[str, Any] = Field(default_factory=dict)
    windows: WindowSpec = WindowSpec()
    metrics: list[str] = Field(default_factory=lambda: ["roc_auc"], min_length=1)
    main_metric: str = "roc_auc"
    gate: GateSpec
    slices: list[SliceSpec] = Field(default_factory=list)
    baseline: BaselineSpec | None = None
    candidates: CandidateSpec | None = None
    reviewers: list[str] = Field(min_length=1)
    approvals_required: int = Field(1, ge=1, description="approvals by distinct reviewers a promotion needs")
    approval_ttl_hours: float = Field(72, gt=0, description="hours an approval request stays answerable")
    online_freshness_hours: float = Field(48, gt=0)
    monitoring: MonitoringSpec = MonitoringSpec()
    schedule: str | None = Field(
        FEATURES_SCHEDULE,
        description="'features': after the daily features the model reads are refreshed, or when the champion "
        "drifts; 'drift': only when the champion drifts; a cron string; null: manual",
    )

    @field_validator("entity")
    @classmethod
    def _declared_entity(cls, entity: str) -> str:
        if entity not in USE_CASES:
            raise ValueError(f"{entity!r} has no use case; use one of {sorted(USE_CASES)} (pipelines/usecases/)")
        return entity

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        known = RANKING_METRICS if self.objective == "lambdarank" else BINARY_METRICS
        gated = [*self.metrics, self.main_metric, *self.gate.floors, *self.gate.max_regression]
        gated += list(self.gate.slice_max_regression)
        unknown = sorted({m for m in gated if m not in known})
        if unknown:
            raise ValueError(f"metric(s) {unknown} are not {self.objective} metrics; use {sorted(known)}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"main_metric {self.main_metric!r} must be one of 'metrics' {self.metrics}")
        case = USE_CASES[self.entity]
        ranking = self.objective == "lambdarank"
        if ranking != (self.label.kind == "ranking_relevance"):
            raise ValueError("objective 'lambdarank' goes with label kind 'ranking_relevance' (and only with it)")
        if self.objective != case.objective:
            raise ValueError(f"entity {self.entity!r} goes with objective {case.objective!r}")
        if self.label.kind not in case.label_kinds:
            owners = sorted(e for e, c in USE_CASES.items() if self.label.kind in c.label_kinds)
            raise ValueError(f"label kind {self.label.kind!r} needs entity {' or '.join(map(repr, owners))}")
        if ranking and self.candidates is None:
            raise ValueError("a lambdarank model needs 'candidates' (how products are picked for a user)")
        if self.label.kind == "ranking_relevance" and not self.label.gains:
            raise ValueError("label kind 'ranking_relevance' needs 'label.gains' (event type -> grade)")
        if self.label.kind == "chargeback" and self.label.delay_days < 1:
            raise ValueError("label kind 'chargeback' needs 'label.delay_days' >= 1")
        if self.approvals_required > len(set(self.reviewers)):
            raise ValueError(
                f"approvals_required {self.approvals_required} needs at least that many distinct 'reviewers', "
                f"got {sorted(set(self.reviewers))}"
            )
        names = [s.name for s in self.slices]
        if len(set(names)) != len(names):
            raise ValueError(f"slice names must be unique, got {names}")
        return self

    @property
    def lower_is_better(self) -> frozenset[str]:
        return LOWER_IS_BETTER


def _describe(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        expected = f" (got {err['input']!r})" if err["type"] not in {"missing", "value_error"} else ""
        parts.append(f"key '{key}': {msg}{expected}")
    return "; ".join(parts)


# libyaml's loader (shipped in PyYAML's wheels) when present: specs are read at every DAG parse and by several
# daily steps, and the pure-Python parser takes ~14 ms a spec.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_spec(path: Path) -> ModelSpec:
    """Read and check one spec file."""
    try:
        raw = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: model spec not found") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of keys (name, entity, feature_service, ...)")
    try:
        spec = ModelSpec(**raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {_describe(exc.errors())}") from exc
    if spec.name != path.stem:
        raise SpecError(f"{path}: key 'name' is {spec.name!r} but must match the file name {path.stem!r}")
    return spec


def load_specs(models_dir: Path) -> dict[str, ModelSpec]:
    """Every spec in ``models_dir``, by name."""
    return {p.stem: load_spec(p) for p in sorted(models_dir.glob("*.yaml"))}

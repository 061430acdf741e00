"""Model specs: ``models/<name>.yaml`` declares everything a model's pipeline needs.

A malformed spec fails with a :class:`SpecError` naming the file, the key and the expected form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SpecError(ValueError):
    """A model spec file is missing, unreadable or does not match the expected form."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    event_type: str = "purchase"
    window_days: int = Field(7, gt=0)


class WindowSpec(_Strict):
    train_days: int = Field(14, gt=0)
    validation_days: int = Field(3, gt=0)
    test_days: int = Field(3, gt=0)


class GateSpec(_Strict):
    floors: dict[str, float] = Field(default_factory=dict, description="metric -> minimum value")
    max_regression: dict[str, float] = Field(
        default_factory=dict, description="metric -> largest allowed drop against the champion"
    )


class ModelSpec(_Strict):
    name: str
    entity: str
    feature_service: str
    label: LabelSpec
    objective: Literal["binary", "lambdarank"] = "binary"
    params: dict[str, Any] = Field(default_factory=dict)
    windows: WindowSpec = WindowSpec()
    metrics: list[str] = Field(default_factory=lambda: ["roc_auc"])
    main_metric: str = "roc_auc"
    gate: GateSpec
    reviewers: list[str] = Field(min_length=1)
    online_freshness_hours: float = Field(48, gt=0)
    schedule: str | None = "@daily"

    @property
    def lower_is_better(self) -> set[str]:
        return {"log_loss", "calibration_error"}


def load_spec(path: Path) -> ModelSpec:
    """Read and check one spec file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: model spec not found") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of keys (name, entity, feature_service, ...)")
    try:
        spec = ModelSpec(**raw)
    except ValidationError as exc:
        problems = "; ".join(f"key '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors())
        raise SpecError(f"{path}: {problems}") from exc
    if spec.name != path.stem:
        raise SpecError(f"{path}: key 'name' is {spec.name!r} but must match the file name {path.stem!r}")
    return spec


def load_specs(models_dir: Path) -> dict[str, ModelSpec]:
    """Every spec in ``models_dir``, by name."""
    return {p.stem: load_spec(p) for p in sorted(models_dir.glob("*.yaml"))}

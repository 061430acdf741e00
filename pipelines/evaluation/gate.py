"""The promotion gate: metric floors always, bounded regression against the champion if there is one."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipelines.evaluation.evaluate import Evaluation
from pipelines.evaluation.metrics import LOWER_IS_BETTER
from pipelines.registry.registry import set_version_tags
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

TAG_STATUS, TAG_SUMMARY, TAG_CHECKS = "gate.status", "gate.summary", "gate.checks"
# MLflow caps tag values (8,000 characters on SQL stores); a gate summary never needs more.
_MAX_TAG = 5000


@dataclass
class GateCheck:
    metric: str
    kind: Literal["floor", "regression"]
    value: float | None
    threshold: float | None
    champion_value: float | None
    passed: bool

    def describe(self) -> str:
        op = "<=" if self.metric in LOWER_IS_BETTER else ">="
        if self.value is None or self.threshold is None:
            return f"{self.metric} {self.kind}: metric missing from the evaluation: FAILED"
        verdict = "ok" if self.passed else "FAILED"
        if self.kind == "floor":
            return f"{self.metric} {self.value:.4f} {op} floor {self.threshold:.4f}: {verdict}"
        return (
            f"{self.metric} {self.value:.4f} {op} {self.threshold:.4f} "
            f"(champion {self.champion_value:.4f} with max regression): {verdict}"
        )


@dataclass
class GateDecision:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _holds(metric: str, value: float, threshold: float) -> bool:
    return value <= threshold if metric in LOWER_IS_BETTER else value >= threshold


def apply_gate(spec: ModelSpec, evaluation: Evaluation) -> GateDecision:
    """Check the candidate against ``spec.gate``; with no champion only the floors apply (and must hold)."""
    checks: list[GateCheck] = []
    for metric, floor in spec.gate.floors.items():
        value = evaluation.candidate.get(metric)
        checks.append(
            GateCheck(metric, "floor", value, float(floor), None, value is not None and _holds(metric, value, floor))
        )
    if evaluation.champion is not None:
        for metric, max_drop in spec.gate.max_regression.items():
            value, champ = evaluation.candidate.get(metric), evaluation.champion.get(metric)
            if champ is None:
                checks.append(GateCheck(metric, "regression", value, None, None, False))
                continue
            bound = champ + max_drop if metric in LOWER_IS_BETTER else champ - max_drop
            ok = value is not None and _holds(metric, value, bound)
            checks.append(GateCheck(metric, "regression", value, float(bound), champ, ok))
    passed = all(c.passed for c in checks)
    failed = [c for c in checks if not c.passed]
    against = f"champion v{evaluation.champion_version}" if evaluation.champion is not None else "no champion"
    if not checks:
        summary = f"passed: the model spec's gate has no checks ({against})"
    elif passed:
        summary = f"passed ({against}): " + "; ".join(c.describe() for c in checks)
    else:
        summary = f"failed ({against}): " + "; ".join(c.describe() for c in failed)
    return GateDecision(passed, checks, summary)


def record_gate(settings: Settings, spec: ModelSpec, version: str, decision: GateDecision) -> None:
    """Tag the model version with the gate's verdict, its summary and every check (JSON)."""
    checks = json.dumps([asdict(c) for c in decision.checks])
    set_version_tags(
        settings,
        spec.name,
        version,
        {
            TAG_STATUS: "passed" if decision.passed else "failed",
            TAG_SUMMARY: decision.summary[:_MAX_TAG],
            TAG_CHECKS: checks[:_MAX_TAG],
        },
    )

"""The promotion gate: the spec's thresholds applied to an evaluation, with a verdict that says exactly why.

Floors always apply. Against a champion: bounded regression overall and in every slice large enough to judge.
Without a champion there is no rubber stamp: the candidate must beat the spec's baseline on the main metric.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipelines.evaluation.evaluate import Evaluation
from pipelines.registry.registry import connect, get_version, set_version_tags
from pipelines.settings import Settings
from pipelines.specs import LOWER_IS_BETTER, ModelSpec

TAG_STATUS, TAG_SUMMARY, TAG_CHECKS = "gate.status", "gate.summary", "gate.checks"
GATE_ARTIFACT = "gate.json"
# MLflow caps tag values (8,000 characters on SQL stores); the full verdict is the run's gate.json.
_MAX_TAG = 5000

Kind = Literal["floor", "regression", "slice_regression", "baseline"]


@dataclass
class GateCheck:
    metric: str
    kind: Kind
    value: float | None
    threshold: float | None
    passed: bool
    slice: str | None = None
    champion_value: float | None = None
    baseline_value: float | None = None

    def describe(self) -> str:
        where = f" in slice {self.slice}" if self.slice else ""
        if self.value is None or self.threshold is None:
            return f"{self.metric}{where} ({self.kind}): not computable on the evaluation rows"
        lower = self.metric in LOWER_IS_BETTER
        op = "<=" if lower else ">="
        if self.kind == "floor":
            if self.passed:
                return f"{self.metric} {self.value:.4f} {op} {self.threshold:.4f}"
            side = "above the ceiling" if lower else "below the floor"
            return f"{self.metric} {self.value:.4f} {side} {self.threshold:.4f}"
        if self.kind == "baseline":
            return (
                f"{self.metric} {self.value:.4f} vs baseline {self.baseline_value:.4f} "
                f"(must be {op} {self.threshold:.4f})"
            )
        change = self.value - (self.champion_value or 0.0)
        return (
            f"{self.metric}{where} {self.champion_value:.4f} -> {self.value:.4f} ({change:+.4f}) against the champion, "
            f"allowed {op} {self.threshold:.4f}"
        )


@dataclass
class GateDecision:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    summary: str = ""
    not_gated: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _holds(metric: str, value: float, threshold: float) -> bool:
    return value <= threshold if metric in LOWER_IS_BETTER else value >= threshold


def _bound(metric: str, reference: float, allowed: float) -> float:
    """The worst acceptable value: ``allowed`` worse than ``reference`` in the metric's direction."""
    return reference + allowed if metric in LOWER_IS_BETTER else reference - allowed


def _compare(metric: str, kind: Kind, value: float | None, threshold: float | None, **refs: Any) -> GateCheck:
    ok = value is not None and threshold is not None and _holds(metric, value, threshold)
    return GateCheck(metric, kind, value, threshold, ok, **refs)


def apply_gate(spec: ModelSpec, evaluation: Evaluation) -> GateDecision:
    """Check the evaluation against ``spec.gate``; every check is kept, the summary names each failed one."""
    gate = spec.gate
    candidate, champion = evaluation.candidate, evaluation.champion
    checks = [_compare(m, "floor", candidate.get(m), float(f)) for m, f in gate.floors.items()]
    not_gated: list[str] = []
    if champion is not None:
        for metric, allowed in gate.max_regression.items():
            ref = champion.get(metric)
            bound = None if ref is None else _bound(metric, ref, allowed)
            checks.append(_compare(metric, "regression", candidate.get(metric), bound, champion_value=ref))
        for entry in evaluation.slices:
            name = f"{entry['slice']}={entry['value']}"
            if entry["rows"] < gate.min_slice_rows or entry["positives"] < gate.min_slice_positives:
                not_gated.append(f"{name} ({entry['rows']} rows, {entry['positives']} positives)")
                continue
            metrics = entry["metrics"]
            for metric, allowed in gate.slice_max_regression.items():
                value = metrics.get("candidate", {}).get(metric, {}).get("value")
                ref = metrics.get("champion", {}).get(metric, {}).get("value")
                if value is None or ref is None:
                    not_gated.append(f"{name} ({metric} undefined there)")
                    continue
                bound = _bound(metric, ref, allowed)
                checks.append(_compare(metric, "slice_regression", value, bound, slice=name, champion_value=ref))
    elif gate.min_lift_over_baseline is not None and evaluation.point("baseline"):
        metric = spec.main_metric
        ref = evaluation.point("baseline").get(metric)
        lift = gate.min_lift_over_baseline
        bound = None if ref is None else (ref - lift if metric in LOWER_IS_BETTER else ref + lift)
        checks.append(_compare(metric, "baseline", candidate.get(metric), bound, baseline_value=ref))
    passed = all(c.passed for c in checks)
    return GateDecision(passed, checks, _summary(spec, evaluation, checks, passed, not_gated), not_gated)


def _summary(
    spec: ModelSpec, evaluation: Evaluation, checks: list[GateCheck], passed: bool, not_gated: list[str]
) -> str:
    if evaluation.champion is not None:
        against = f"against champion v{evaluation.champion_version}"
    elif any(c.kind == "baseline" for c in checks):
        against = "with no champion yet, against the spec's baseline"
    else:
        against = "with no champion and no baseline: only the floors applied"
    main = evaluation.candidate.get(spec.main_metric)
    head = (
        f"{spec.name} v{evaluation.candidate_version} ({spec.main_metric} {main:.4f} on {evaluation.rows} "
        if main is not None
        else f"{spec.name} v{evaluation.candidate_version} ("
    )
    head += f"out-of-time rows, {against})"
    failed = [c for c in checks if not c.passed]
    if passed:
        text = f"passed: {head}; all {len(checks)} checks held."
    else:
        text = (
            f"rejected: {head}; {len(failed)} of {len(checks)} checks failed: "
            + "; ".join(c.describe() for c in failed)
            + "."
        )
    if not_gated:
        text += f" Not gated (too small): {', '.join(not_gated[:8])}{' ...' if len(not_gated) > 8 else ''}."
    return text


def record_gate(settings: Settings, spec: ModelSpec, version: str, decision: GateDecision) -> None:
    """Tag the model version with the verdict and log it (gate.json, gate_passed) to the candidate's run."""
    checks = json.dumps([asdict(c) for c in decision.checks])
    set_version_tags(
        settings,
        spec.name,
        version,
        {
            TAG_STATUS: "passed" if decision.passed else "failed",
            TAG_SUMMARY: decision.summary[:_MAX_TAG],
            TAG_CHECKS: checks
            if len(checks) <= _MAX_TAG
            else json.dumps([asdict(c) for c in decision.checks if not c.passed])[:_MAX_TAG],
        },
    )
    client = connect(settings)
    run_id = get_version(settings, spec.name, version).run_id
    client.log_dict(run_id, decision.to_dict(), GATE_ARTIFACT)
    client.log_metric(run_id, "gate_passed", float(decision.passed))
    client.set_tag(run_id, TAG_STATUS, "passed" if decision.passed else "failed")
    client.set_tag(run_id, TAG_SUMMARY, decision.summary[:_MAX_TAG])

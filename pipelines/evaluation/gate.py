"""The promotion gate: the spec's thresholds applied to an evaluation, with a verdict that says exactly why.

Floors always apply. Against a champion: bounded regression overall and in every slice large enough to judge.
Without a champion there is no rubber stamp: the candidate must beat the spec's baseline on the main metric (a
spec without a baseline gets the floors only, and the summary says so).

A metric that cannot be computed (one class in a slice or in the whole test split, see
:func:`pipelines.evaluation.metrics.undefined_metrics`) is never counted as a pass: in a slice its check is listed
as not gated with the reason; on the whole test split the gate fails with an ``evaluable`` check, because a split
with one class cannot tell a good model from a bad one.
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
TAG_CHECKS_OMITTED = "gate.checks_omitted"
GATE_ARTIFACT = "gate.json"
# Model-version tag values are 5,000 characters in MLflow's SQL stores; the full verdict is the run's gate.json.
MAX_TAG = 5000

Kind = Literal["floor", "regression", "slice_regression", "baseline", "evaluable"]


@dataclass
class GateCheck:
    """One threshold applied: ``value`` (the candidate's) against ``threshold`` (the worst acceptable value)."""

    metric: str
    kind: Kind
    value: float | None
    threshold: float | None
    passed: bool
    slice: str | None = None  # "name=value", None overall
    champion_value: float | None = None
    baseline_value: float | None = None
    reason: str | None = None  # why the check could not be computed (kind "evaluable")

    def describe(self, champion: str = "the champion") -> str:
        """The check in one clause, e.g. "roc_auc in slice category=3 dropped 0.0510 against champion v1 ..."."""
        where = f" in slice {self.slice}" if self.slice else ""
        lower = self.metric in LOWER_IS_BETTER
        if self.kind == "evaluable":
            return (
                f"{self.metric}{where} cannot be computed on the test split: {self.reason}; nothing can be judged "
                "(check the test days' labels: `mlctl check`, the spec's label delay and 'windows.test_days')"
            )
        if self.value is None:
            return f"{self.metric}{where} could not be computed on the evaluation rows ({self.kind} check)"
        if self.threshold is None:
            reference = "the champion's" if self.kind != "baseline" else "the baseline's"
            return f"{self.metric}{where}: {reference} value could not be computed ({self.kind} check)"
        if self.kind == "floor":
            bound = "ceiling" if lower else "floor"
            verb = ("is within" if self.passed else "is above") if lower else ("clears" if self.passed else "is below")
            return f"{self.metric} {self.value:.4f} {verb} the {bound} {self.threshold:g}"
        if self.kind == "baseline":
            ref = self.baseline_value
            lift = (ref - self.threshold) if lower else (self.threshold - ref)
            needed = f" by {lift:g}" if lift else ""
            verb = "beats" if self.passed else "does not beat"
            return f"{self.metric} {self.value:.4f} {verb} the baseline's {ref:.4f}{needed}"
        ref = self.champion_value if self.champion_value is not None else float("nan")
        change = self.value - ref
        worse = change > 0 if lower else change < 0
        allowed = abs(self.threshold - ref)
        moved = ("rose" if lower else "dropped") if worse else ("fell" if lower else "rose")
        tail = "more than the allowed" if not self.passed else "within the allowed"
        return (
            f"{self.metric}{where} {moved} {abs(change):.4f} against {champion} ({ref:.4f} -> {self.value:.4f}), "
            f"{tail} {allowed:g}"
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


def _check(
    metric: str, kind: Kind, value: float | None, reference: float | None, margin: float | None, **refs: Any
) -> GateCheck:
    """A check of ``value`` against ``reference`` moved by ``margin`` (a floor has no reference: margin is it)."""
    if kind == "floor":
        threshold = margin
    elif kind == "baseline":
        threshold = None if reference is None else _bound(metric, reference, -(margin or 0.0))
    else:
        threshold = None if reference is None else _bound(metric, reference, margin or 0.0)
    ok = value is not None and threshold is not None and _holds(metric, value, threshold)
    return GateCheck(metric, kind, value, threshold, ok, **refs)


def _slice_checks(spec: ModelSpec, evaluation: Evaluation) -> tuple[list[GateCheck], list[str]]:
    """Per-slice regression checks of the slices large enough to judge, and the slices left out (and why)."""
    gate, checks, not_gated = spec.gate, [], []
    unit = "queries" if evaluation.queries is not None else "rows"
    for entry in evaluation.slices:
        name = f"{entry['slice']}={entry['value']}"
        undefined = entry.get("undefined") or {}
        metrics = [m for m in gate.slice_max_regression if m not in undefined]
        # One class in the slice: name that reason rather than "too small", which would hide it.
        not_gated += [f"{name} ({m} not gated: {undefined[m]})" for m in gate.slice_max_regression if m in undefined]
        if not metrics:
            continue
        if entry["rows"] < gate.min_slice_rows or entry["positives"] < gate.min_slice_positives:
            not_gated.append(f"{name} (too small: {entry['rows']} {unit}, {entry['positives']} positives)")
            continue
        for metric in metrics:
            allowed = gate.slice_max_regression[metric]
            value = entry["metrics"].get("candidate", {}).get(metric, {}).get("value")
            ref = entry["metrics"].get("champion", {}).get(metric, {}).get("value")
            if ref is None:
                not_gated.append(f"{name} ({metric} undefined for the champion there)")
                continue
            checks.append(_check(metric, "slice_regression", value, ref, allowed, slice=name, champion_value=ref))
    return checks, not_gated


def _evaluable_check(spec: ModelSpec, evaluation: Evaluation) -> GateCheck | None:
    """A failing check when the whole test split cannot judge the model (a metric undefined there: one class)."""
    undefined = evaluation.undefined
    if not undefined:
        return None
    metric = spec.main_metric if spec.main_metric in undefined else sorted(undefined)[0]
    others = sorted(set(undefined) - {metric})
    reason = undefined[metric] + (f"; also undefined: {', '.join(others)}" if others else "")
    return GateCheck(metric, "evaluable", None, None, False, reason=reason)


def apply_gate(spec: ModelSpec, evaluation: Evaluation) -> GateDecision:
    """Check the evaluation against ``spec.gate``; every check is kept, the summary names each failed one.

    Checks of metrics undefined on the test split are listed as not gated, and one ``evaluable`` check fails the
    gate in their place.
    """
    gate, undefined = spec.gate, evaluation.undefined
    candidate, champion = evaluation.candidate, evaluation.champion
    not_gated: list[str] = []

    def computable(metric: str, what: str) -> bool:
        if metric in undefined:
            not_gated.append(f"{metric} {what} (not computable on the test split: {undefined[metric]})")
        return metric not in undefined

    checks = [
        _check(m, "floor", candidate.get(m), None, float(f)) for m, f in gate.floors.items() if computable(m, "floor")
    ]
    if champion is not None:
        for metric, allowed in gate.max_regression.items():
            if computable(metric, "regression"):
                ref = champion.get(metric)
                checks.append(_check(metric, "regression", candidate.get(metric), ref, allowed, champion_value=ref))
        slice_checks, slice_not_gated = _slice_checks(spec, evaluation)
        checks += slice_checks
        not_gated += slice_not_gated
    elif spec.baseline is not None and gate.min_lift_over_baseline is not None:
        # No champion: the candidate must beat the baseline; a baseline that could not be scored fails the check.
        metric = spec.main_metric
        if computable(metric, "baseline check"):
            ref = (evaluation.point("baseline") or {}).get(metric)
            lift = gate.min_lift_over_baseline
            checks.append(_check(metric, "baseline", candidate.get(metric), ref, lift, baseline_value=ref))
    evaluable = _evaluable_check(spec, evaluation)
    if evaluable is not None:
        checks.insert(0, evaluable)
    passed = all(c.passed for c in checks)
    return GateDecision(passed, checks, _summary(spec, evaluation, checks, passed, not_gated), not_gated)


def _summary(
    spec: ModelSpec, evaluation: Evaluation, checks: list[GateCheck], passed: bool, not_gated: list[str]
) -> str:
    """One paragraph: the verdict, what the candidate was compared with, and every failed check."""
    champion = f"champion v{evaluation.champion_version}"
    if evaluation.champion is not None:
        against = f"against {champion}"
    elif any(c.kind == "baseline" for c in checks):
        against = f"with no champion yet, against the baseline ({evaluation.baseline or 'not scored'})"
    else:
        reason = "no baseline in its spec" if spec.baseline is None else "the baseline check is off in its spec"
        against = f"with no champion and {reason}: only the floors applied"
    main = evaluation.candidate.get(spec.main_metric)
    measured = f"{spec.main_metric} {main:.4f}" if main is not None else f"{spec.main_metric} not computable"
    rows = f"{evaluation.queries} queries" if evaluation.queries is not None else f"{evaluation.rows} rows"
    head = f"{spec.name} v{evaluation.candidate_version} ({measured} on {rows} out of time, {against})"
    failed = [c for c in checks if not c.passed]
    if passed:
        text = f"passed: {head}; all {len(checks)} checks held."
    else:
        reasons = "; ".join(c.describe(champion) for c in failed)
        text = f"rejected: {head}; {len(failed)} of {len(checks)} checks failed: {reasons}."
    if not_gated:
        shown = ", ".join(not_gated[:8]) + (f" and {len(not_gated) - 8} more" if len(not_gated) > 8 else "")
        text += f" Not gated: {shown}."
    return text


def _truncated(text: str, limit: int = MAX_TAG) -> str:
    note = " ... (truncated; the full verdict is the run's gate.json)"
    return text if len(text) <= limit else text[: limit - len(note)] + note


def _checks_tag(checks: list[GateCheck]) -> tuple[str, int]:
    """The checks as a JSON list that fits a tag (failed ones first when some must be left out), and how many
    were left out."""
    ordered = sorted(checks, key=lambda c: c.passed)
    kept: list[dict[str, Any]] = []
    for check in ordered:
        candidate = json.dumps([*kept, asdict(check)], separators=(",", ":"))
        if len(candidate) > MAX_TAG:
            break
        kept.append(asdict(check))
    if len(kept) == len(checks):
        return json.dumps([asdict(c) for c in checks], separators=(",", ":")), 0
    return json.dumps(kept, separators=(",", ":")), len(checks) - len(kept)


def record_gate(settings: Settings, spec: ModelSpec, version: str, decision: GateDecision) -> None:
    """Tag the model version with the verdict and log it (gate.json, gate_passed, gate.status) to its run."""
    status = "passed" if decision.passed else "failed"
    checks, omitted = _checks_tag(decision.checks)
    tags = {TAG_STATUS: status, TAG_SUMMARY: _truncated(decision.summary), TAG_CHECKS: checks}
    tags[TAG_CHECKS_OMITTED] = f"{omitted} of {len(decision.checks)} (see the run's gate.json)" if omitted else "0"
    set_version_tags(settings, spec.name, version, tags)
    client = connect(settings)
    run_id = get_version(settings, spec.name, version).run_id
    client.log_dict(run_id, decision.to_dict(), GATE_ARTIFACT)
    client.log_metric(run_id, "gate_passed", float(decision.passed))
    client.set_tag(run_id, TAG_STATUS, status)
    client.set_tag(run_id, TAG_SUMMARY, _truncated(decision.summary))

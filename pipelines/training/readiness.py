"""Can this model train for this logical date? What its spec needs against what the lake holds.

``mlctl check MODEL --date D`` prints it; the training DAG's first task runs the same check and skips the run
(with the reason) when the history is short, so a fresh stack never fails training for lack of days.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.data.landed import source_label_delay_days
from pipelines.lake import Lake, as_date
from pipelines.specs import ModelSpec
from pipelines.training.dataset import feature_days, split_days
from pipelines.usecases import input_tables

# The raw table a label is read from: it must reach the logical date for the newest as-of day to be labelled.
_LABEL_TABLE = {"purchase_within": "events", "ranking_relevance": "events", "chargeback": "order_labels"}


class NotReady(RuntimeError):
    """The lake cannot give this model a training set for this date; the message says why and what to do."""

    def __init__(self, readiness: Readiness) -> None:
        super().__init__(readiness.verdict)
        self.readiness = readiness


class HistoryTooShort(NotReady):
    """Not enough days (or tables) yet: nothing is wrong, the run should wait (the training DAG skips)."""


class LabelDelayTooShort(NotReady):
    """The spec waits less for its labels than the source takes to deliver them: a spec to fix (the run fails)."""


@dataclass(frozen=True)
class Need:
    """One requirement: what the spec needs, what the lake holds, and what to do when they differ."""

    what: str
    needed: str
    found: str
    ok: bool
    hint: str = ""


@dataclass(frozen=True)
class WindowFit:
    """Windows that fit the history the lake holds (same proportions as the spec's), and where they end."""

    train_days: int
    validation_days: int
    test_days: int
    logical_date: dt.date


@dataclass
class Readiness:
    model: str
    logical_date: dt.date
    needs: list[Need]
    latest_fitting_date: dt.date | None = None
    suggested_windows: WindowFit | None = None
    label_delay_ok: bool = True
    data_span: tuple[dt.date, dt.date] | None = None  # first day every raw table holds .. the newest label day
    verdict: str = field(default="")

    @property
    def ready(self) -> bool:
        return all(n.ok for n in self.needs)

    @property
    def history_short(self) -> bool:
        """Not ready only for lack of days or tables (the label delay is fine)."""
        return not self.ready and self.label_delay_ok

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ready"] = self.ready
        return data


def source_label_delay(lake: Lake) -> dict[str, float] | None:
    """The landed source's label delay in days, ``{"max": .., "median": ..}``; None when ingest recorded none."""
    found = source_label_delay_days(lake)
    if not found:
        return None
    return {k: float(v) for k, v in found.items() if k in ("max", "median") and v is not None} or None


def _days(days: list[dt.date] | tuple[dt.date, ...]) -> str:
    if not days:
        return "none"
    return str(days[0]) if len(days) == 1 else f"{days[0]} .. {days[-1]} ({len(days)} days)"


def _contiguous_back(days: set[dt.date], newest: dt.date) -> int:
    """How many consecutive days of ``days`` end at ``newest``."""
    n = 0
    while newest - dt.timedelta(days=n) in days:
        n += 1
    return n


def proportional_windows(spec: ModelSpec, available: int) -> tuple[int, int, int] | None:
    """The largest train/validation/test days in the spec's proportions that fit ``available`` days (>= 1 each)."""
    w = spec.windows
    total = w.train_days + w.validation_days + w.test_days
    for size in range(min(available, total), 2, -1):
        validation = max(1, round(size * w.validation_days / total))
        test = max(1, round(size * w.test_days / total))
        train = size - validation - test
        if train >= 1:
            return train, validation, test
    return None


def latest_fitting_date(spec: ModelSpec, built: set[dt.date], label_last: dt.date | None) -> dt.date | None:
    """The newest logical date whose as-of days all have features and whose labels the lake reaches."""
    if not built or label_last is None:
        return None
    maturity = dt.timedelta(days=spec.label.maturity_days)
    day = label_last
    while day - maturity >= min(built):
        if set(split_days(spec, day).days) <= built:
            return day
        day -= dt.timedelta(days=1)
    return None


def _label_delay_need(spec: ModelSpec, lake: Lake) -> Need | None:
    if spec.label.kind != "chargeback":
        return None
    source = source_label_delay(lake)
    waits = spec.label.delay_days
    if source is None:
        return Need("label delay", f"{waits} days", "not recorded by ingest (simulated or older landing)", True)
    typical, longest = source.get("median", 0.0), source.get("max", 0.0)
    found = f"median {typical:g} days, max {longest:g} days"
    if waits < typical:
        hint = (
            f"labels arrive {typical:g} days after purchase in this source; {spec.name} waits {waits} days: most "
            f"recent orders would look legitimate and the test rows would have almost no positive; set "
            f"label.delay_days >= {longest:g} in models/{spec.name}.yaml"
        )
        return Need("label delay", f"{waits} days", found, False, hint)
    hint = ""
    if waits < longest:
        hint = f"some labels arrive up to {longest:g} days late: those orders count as legitimate"
    return Need("label delay", f"{waits} days", found, True, hint)


def check_readiness(lake: Lake, spec: ModelSpec, logical_date: str | dt.date) -> Readiness:
    """Everything a training run of ``spec`` for ``logical_date`` reads, checked against the lake."""
    day = as_date(logical_date)
    splits = split_days(spec, day)
    needs: list[Need] = []

    raw_days = {table: lake.partitions(table) for table in input_tables(spec)}
    for table, days in raw_days.items():
        hint = "" if days else f"land it with `mlctl ingest --table {table}` (or use a source that has it)"
        needs.append(Need(f"raw table {table}", "partitions", _days(days), bool(days), hint))

    label_table = _LABEL_TABLE[spec.label.kind]
    label_days = raw_days.get(label_table) or lake.partitions(label_table)
    label_last = label_days[-1] if label_days else None
    mature = splits.test[-1] + dt.timedelta(days=spec.label.maturity_days)
    kind = "delay" if spec.label.kind == "chargeback" else "window"
    needs.append(
        Need(
            f"labels ({kind} {spec.label.maturity_days} days)",
            f"{label_table} through {mature}",
            f"through {label_last}" if label_last else "none",
            label_last is not None and label_last >= mature,
            "" if label_last is None or label_last >= mature else f"pick a date up to {label_last}",
        )
    )

    landed = [days[0] for days in raw_days.values() if days]
    raw_first = max(landed) if len(landed) == len(raw_days) else None  # the first day every raw table holds
    built = feature_days(lake, spec)
    for name, days in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        missing = [d for d in days if d not in built]
        found = "all there" if not missing else f"missing {_days(missing)}"
        hint = ""
        if missing and raw_first is not None and missing[0] < raw_first:
            hint = f"the raw data starts on {raw_first}: shorten 'windows' or land older history"
        elif missing:
            hint = f"`mlctl backfill --dag daily_features --from {missing[0]} --to {missing[-1]}`"
        needs.append(Need(f"features, {name} as-of days", _days(days), found, not missing, hint))

    delay = _label_delay_need(spec, lake)
    if delay is not None:
        needs.append(delay)

    result = Readiness(spec.name, day, needs, label_delay_ok=delay is None or delay.ok)
    if raw_first is not None and label_last is not None and raw_first <= label_last:
        result.data_span = (raw_first, label_last)
    result.latest_fitting_date = latest_fitting_date(spec, built, label_last)
    if label_last is not None and built:
        newest = min(label_last, max(built) + dt.timedelta(days=spec.label.maturity_days))
        held = _contiguous_back(built, newest - dt.timedelta(days=spec.label.maturity_days))
        fit = proportional_windows(spec, held)
        if fit is not None:
            result.suggested_windows = WindowFit(*fit, logical_date=newest)
    result.verdict = _verdict(spec, result)
    return result


def _verdict(spec: ModelSpec, result: Readiness) -> str:
    w = spec.windows
    if result.ready:
        return f"{spec.name} can train for {result.logical_date}"
    failed = [n for n in result.needs if not n.ok]
    reasons = "; ".join(f"{n.what}: needs {n.needed}, found {n.found}" for n in failed)
    text = f"{spec.name} cannot train for {result.logical_date}: {reasons}."
    if not result.label_delay_ok:
        delay = next(n for n in failed if n.what == "label delay")
        return f"{text} {delay.hint}."
    if result.latest_fitting_date is not None:
        text += f" The shipped windows fit up to logical date {result.latest_fitting_date}."
    elif result.suggested_windows is not None:
        s = result.suggested_windows
        text += (
            f" The lake holds too little history for windows {w.train_days}/{w.validation_days}/{w.test_days} "
            f"(train/validation/test days); windows {s.train_days}/{s.validation_days}/{s.test_days} would fit at "
            f"{s.logical_date} (set them under 'windows' in models/{spec.name}.yaml), or backfill more days."
        )
    elif result.data_span is not None and _span_days(result.data_span) < 3 + spec.label.maturity_days:
        first, last = result.data_span
        kind = "delay" if spec.label.kind == "chargeback" else "window"
        text += (
            f" The lake holds {_span_days(result.data_span)} day(s) of data ({first} .. {last}); even the smallest "
            f"windows (1/1/1 days) need {3 + spec.label.maturity_days} days including the "
            f"{spec.label.maturity_days}-day label {kind}: land a longer log"
            + ("." if kind == "delay" else " or predict a shorter horizon ('label.window_days').")
        )
    else:
        hints = list(dict.fromkeys(n.hint for n in failed if n.hint))
        text += f" {'; '.join(hints)}." if hints else " Backfill more days of daily_features first."
    return text


def _span_days(span: tuple[dt.date, dt.date]) -> int:
    return (span[1] - span[0]).days + 1


def require_ready(lake: Lake, spec: ModelSpec, logical_date: str | dt.date) -> Readiness:
    """The check of the training DAG's first task: the readiness, or HistoryTooShort / LabelDelayTooShort."""
    result = check_readiness(lake, spec, logical_date)
    if result.ready:
        return result
    if result.history_short:
        raise HistoryTooShort(result)
    raise LabelDelayTooShort(result)

"""A rollout judged by outcomes: the prediction log of its period joined with the labels as training makes them,
the main metric of the champion's and the challenger's arm with bootstrap intervals, and a recommendation.

Labels: a row logged at ``t`` was scored with the features of the as-of day ``D`` whose as-of time (the end of
``D``) is the newest one at or before ``t`` (``D`` = the day of ``t`` minus one, in the lake's day zone), so it
gets the training label of ``(user, D)``: a purchase on days ``D+1 .. D+window_days``
(:func:`pipelines.data.labels.purchase_labels`). It counts once the newest ``events`` partition reaches
``D + window_days``; until then it is waiting. The bootstrap resamples users (their rows share labels), paired
for a shadow (both arms scored the same requests), unpaired for a split (disjoint users).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.data.labels import purchase_labels
from pipelines.evaluation.bootstrap import SEED, Estimate, compare, interval, metric_draws, resample_counts
from pipelines.lake import Lake
from pipelines.registry.rollouts import CHAMPION_ARM, Rollout, find_rollout
from pipelines.serving.prediction_log import predictions_table
from pipelines.settings import Settings
from pipelines.specs import LOWER_IS_BETTER, RANKING_METRICS, ModelSpec

KEY = "user_id"
EVENTS_TABLE = "events"
# Below this many labelled rows in an arm no recommendation is made, whatever the intervals say.
MIN_LABELLED_ROWS = 200
# A day served at 1,000 requests/s logs ~86M rows: a seeded sample of whole parts (flushes) per day suffices.
MAX_ROWS_PER_DAY = 1_000_000
PROMOTE, KEEP = "promote", "keep the champion"
LOG_COLUMNS = ["request_id", "version", "arm", "logged_at", KEY, "score"]


class AbReportError(ValueError):
    """The A/B report of a rollout cannot be made (unsupported model, log lacking columns)."""


class NotSupported(AbReportError):
    """The model's kind has no A/B report yet."""


@dataclass(frozen=True)
class ArmSummary:
    """One arm of a rollout over its period: what was logged, what is labelled, and the metrics of the labelled."""

    arm: str  # the prediction log's arm: "champion", "shadow:<name>" or "split:<name>"
    role: str  # "champion" or "challenger"
    versions: list[str]
    rows: int
    labelled: int
    waiting: int
    users: int
    label_rate: float | None  # share of positive labels among the labelled rows
    metrics: dict[str, Estimate]  # metric -> value with its 95% interval (only the computable ones)


@dataclass(frozen=True)
class AbReport:
    """The A/B (or shadow) report of one rollout: arms, the challenger-minus-champion difference, a recommendation."""

    model: str
    rollout: Rollout
    main_metric: str
    metrics: list[str]
    arms: list[ArmSummary]  # champion first
    difference: dict[str, Estimate]  # challenger - champion per metric (paired for shadow, unpaired for split)
    paired: bool
    verdict: str  # "promote", "keep" or "wait"
    recommendation: str
    period_start: dt.datetime
    period_end: dt.datetime | None  # None: the rollout is still running
    newest_events_day: dt.date | None
    last_label_due: dt.date | None  # the events day the last waiting row needs
    window_days: int
    unpaired_rows: int = 0  # shadow rows without their champion row (or the other way), left out
    parts_read: int = 0
    parts_total: int = 0
    notes: list[str] = field(default_factory=list)
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def rows(self) -> int:
        return sum(a.rows for a in self.arms)

    @property
    def labelled(self) -> int:
        return sum(a.labelled for a in self.arms)

    @property
    def waiting(self) -> int:
        return sum(a.waiting for a in self.arms)

    @property
    def challenger_share(self) -> float | None:
        """Share of the period's users answered by the challenger (a split's share in practice)."""
        users = sum(a.users for a in self.arms)
        challenger = sum(a.users for a in self.arms if a.role == "challenger")
        return challenger / users if users else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``mlctl ab-report --json``)."""

        def plain(value: Any) -> Any:
            if isinstance(value, dt.datetime | dt.date):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            return value

        data = plain(dataclasses.asdict(self))
        data["rollout"] |= {"alias": self.rollout.alias, "arm": self.rollout.arm, "active": self.rollout.active}
        data |= {
            "rows": self.rows,
            "labelled": self.labelled,
            "waiting": self.waiting,
            "challenger_share": self.challenger_share,
        }
        return data


def require_supported(spec: ModelSpec) -> None:
    """A/B reports are made for user-keyed binary models labelled by a purchase window (purchase_intent)."""
    if spec.entity != "user" or spec.objective != "binary" or spec.label.kind != "purchase_within":
        raise NotSupported(
            f"ab-report is not supported yet for {spec.entity} models ({spec.name}: objective {spec.objective}, "
            f"label {spec.label.kind}); it supports user-keyed binary models with purchase_within labels"
        )


def logged_rows(lake: Lake, rollout: Rollout, max_rows_per_day: int | None = MAX_ROWS_PER_DAY) -> pd.DataFrame:
    """The champion's and the challenger's logged rows of the rollout's period (from its start to its end, or
    to the newest part); ``attrs`` carry parts_read and parts_total."""
    table = predictions_table(rollout.model)
    zone = lake.day_zone
    start = pd.Timestamp(rollout.started_at).tz_convert("UTC")
    end = None if rollout.ended_at is None else pd.Timestamp(rollout.ended_at).tz_convert("UTC")
    first = start.tz_convert(zone).date()
    last = None if end is None else end.tz_convert(zone).date()
    frames, read, total = [], 0, 0
    for day in lake.part_days(table):
        if day < first or (last is not None and day > last):
            continue
        part = lake.read_parts(table, day, max_rows=max_rows_per_day, seed=day.toordinal())
        read += part.attrs.get("parts_read", 0)
        total += len(lake.part_files(table, day))
        missing = [c for c in LOG_COLUMNS if c not in part.columns]
        if missing:
            raise AbReportError(
                f"{lake.uri(table)} ds={day}: prediction log lacks column(s) {missing}; ab-report needs {LOG_COLUMNS}"
            )
        frames.append(part[part["arm"].isin([CHAMPION_ARM, rollout.arm])][LOG_COLUMNS])
    if not frames:
        out = pd.DataFrame({c: pd.Series(dtype="object") for c in LOG_COLUMNS})
    else:
        out = pd.concat(frames, ignore_index=True)
    out["logged_at"] = pd.to_datetime(out["logged_at"], utc=True, cache=False)
    inside = out["logged_at"] >= start
    if end is not None:
        inside &= out["logged_at"] < end
    out = out[inside].reset_index(drop=True)
    out[KEY] = out[KEY].astype("int64")
    out["score"] = out["score"].astype("float64")
    out.attrs.update(parts_read=read, parts_total=total)
    return out


def attach_labels(lake: Lake, spec: ModelSpec, logged: pd.DataFrame) -> tuple[pd.DataFrame, dt.date | None]:
    """``logged`` with ``as_of_day`` and ``label`` (NaN while waiting), and the newest events day."""
    zone, window = lake.day_zone, spec.label.window_days
    local = logged["logged_at"].dt.tz_convert(zone).dt.tz_localize(None).dt.floor("D")
    as_of_day = (local - pd.Timedelta(days=1)).dt.date
    out = logged.assign(as_of_day=as_of_day, label=np.nan)
    event_days = lake.partitions(EVENTS_TABLE)
    newest = event_days[-1] if event_days else None
    if newest is None or out.empty:
        return out, newest
    days = sorted(d for d in set(out["as_of_day"]) if d + dt.timedelta(days=window) <= newest)
    if not days:
        return out, newest
    due = out["as_of_day"].isin(days).to_numpy()
    events = lake.read_range(
        EVENTS_TABLE,
        days[0] + dt.timedelta(days=1),
        days[-1] + dt.timedelta(days=window),
        [KEY, "event_type", "event_time"],
    )
    labels = purchase_labels(
        events,
        days,
        out.loc[due, KEY].unique().tolist(),
        window_days=window,
        event_type=spec.label.event_type,
        zone=zone,
    )
    day_of = {pd.Timestamp(schemas.as_of(d, zone)): d for d in days}
    labels["as_of_day"] = labels["as_of"].map(day_of)
    merged = out.loc[due, [KEY, "as_of_day"]].merge(
        labels[[KEY, "as_of_day", "label"]], on=[KEY, "as_of_day"], how="left"
    )
    out.loc[due, "label"] = merged["label"].to_numpy(dtype="float64")
    return out, newest


def _binary_metrics(spec: ModelSpec) -> list[str]:
    metrics = [m for m in spec.metrics if m not in RANKING_METRICS]
    return [spec.main_metric, *(m for m in metrics if m != spec.main_metric)]


def _summary(arm: str, role: str, rows: pd.DataFrame, metrics: dict[str, Estimate]) -> ArmSummary:
    labelled = rows[rows["label"].notna()]
    return ArmSummary(
        arm=arm,
        role=role,
        versions=sorted(set(rows["version"].astype(str)), key=lambda v: (len(v), v)),
        rows=len(rows),
        labelled=len(labelled),
        waiting=len(rows) - len(labelled),
        users=int(rows[KEY].nunique()),
        label_rate=float(labelled["label"].mean()) if len(labelled) else None,
        metrics=metrics,
    )


def _units(users: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, units = np.unique(users, return_inverse=True)
    return units, len(uniques)


def compare_shadow(
    frame: pd.DataFrame, rollout: Rollout, metrics: list[str]
) -> tuple[dict[str, dict[str, Estimate]], dict[str, Estimate], int]:
    """Per-arm estimates and the paired difference (challenger - champion) on the labelled requests both arms
    scored; also the number of labelled rows left out for want of their pair."""
    labelled = frame[frame["label"].notna()]
    keys = ["request_id", KEY]
    champion = labelled[labelled["arm"] == CHAMPION_ARM].drop_duplicates(keys)
    challenger = labelled[labelled["arm"] == rollout.arm].drop_duplicates(keys)
    pairs = champion.merge(challenger[[*keys, "score"]], on=keys, suffixes=("_champion", "_challenger"))
    unpaired = len(champion) + len(challenger) - 2 * len(pairs)
    if pairs.empty:
        return {CHAMPION_ARM: {}, rollout.arm: {}}, {}, unpaired
    units, n = _units(pairs[KEY].to_numpy())
    y = pairs["label"].to_numpy(dtype="float64")
    scores = {
        "challenger": (pairs["score_challenger"].to_numpy(dtype="float64"), metrics),
        "champion": (pairs["score_champion"].to_numpy(dtype="float64"), metrics),
    }
    estimates, differences = compare(y, scores, units, resample_counts(n), reference="challenger")
    per_arm = {CHAMPION_ARM: estimates.get("champion", {}), rollout.arm: estimates.get("challenger", {})}
    return per_arm, differences.get("champion", {}), unpaired


def compare_split(
    frame: pd.DataFrame, rollout: Rollout, metrics: list[str]
) -> tuple[dict[str, dict[str, Estimate]], dict[str, Estimate]]:
    """Per-arm estimates and the unpaired difference (challenger - champion): each arm's users resampled on
    their own, the difference taken resample by resample."""
    labelled = frame[frame["label"].notna()]
    drawn = {}
    for offset, arm in enumerate((CHAMPION_ARM, rollout.arm)):
        rows = labelled[labelled["arm"] == arm]
        if rows.empty:
            drawn[arm] = {}
            continue
        units, n = _units(rows[KEY].to_numpy())
        y, s = rows["label"].to_numpy(dtype="float64"), rows["score"].to_numpy(dtype="float64")
        drawn[arm] = metric_draws(y, s, metrics, units, resample_counts(n, seed=SEED + offset))
    per_arm = {arm: {m: interval(*pair) for m, pair in values.items()} for arm, values in drawn.items()}
    base, new = drawn[CHAMPION_ARM], drawn[rollout.arm]
    difference = {
        m: interval(new[m][0] - base[m][0], new[m][1] - base[m][1]) for m in metrics if m in base and m in new
    }
    return per_arm, difference


def recommend(
    main_metric: str, difference: Estimate | None, arms: list[ArmSummary], min_labelled: int = MIN_LABELLED_ROWS
) -> tuple[str, str]:
    """(verdict, sentence): promote when the difference's interval lies wholly on the better side of 0 (above for
    scores, below for losses), keep the champion when wholly on the worse side, else wait for labels."""
    labelled, rows = sum(a.labelled for a in arms), sum(a.rows for a in arms)
    waiting = f"not enough labelled rows yet ({labelled:,} of {rows:,})"
    fewest = min((a.labelled for a in arms), default=0)
    if difference is None or difference["low"] is None or difference["high"] is None or fewest < min_labelled:
        return "wait", waiting
    low, high = float(difference["low"]), float(difference["high"])
    if main_metric in LOWER_IS_BETTER:
        low, high = -high, -low
    if low > 0:
        return "promote", PROMOTE
    if high < 0:
        return "keep", KEEP
    return "wait", waiting


def ab_report(
    settings: Settings,
    spec: ModelSpec,
    name: str | None = None,
    max_rows_per_day: int | None = MAX_ROWS_PER_DAY,
) -> AbReport:
    """The report of rollout ``name`` of ``spec``'s model (the active one, else the newest, when None)."""
    require_supported(spec)
    lake = Lake(settings)
    rollout = find_rollout(settings, spec.name, name)
    logged = logged_rows(lake, rollout, max_rows_per_day)
    frame, newest = attach_labels(lake, spec, logged)
    metrics = _binary_metrics(spec)
    unpaired = 0
    if rollout.mode == "shadow":
        per_arm, difference, unpaired = compare_shadow(frame, rollout, metrics)
    else:
        per_arm, difference = compare_split(frame, rollout, metrics)
    arms = [
        _summary(arm, role, frame[frame["arm"] == arm], per_arm.get(arm, {}))
        for arm, role in ((CHAMPION_ARM, "champion"), (rollout.arm, "challenger"))
    ]
    verdict, sentence = recommend(spec.main_metric, difference.get(spec.main_metric), arms)
    waiting = frame[frame["label"].isna()]
    last_due = None
    if len(waiting):
        last_due = max(waiting["as_of_day"]) + dt.timedelta(days=spec.label.window_days)
    notes = []
    if logged.attrs.get("parts_read", 0) < logged.attrs.get("parts_total", 0):
        notes.append(
            f"a sample of the log: {logged.attrs['parts_read']:,} of {logged.attrs['parts_total']:,} parts read "
            f"(at least {max_rows_per_day:,} rows per day)"
        )
    if unpaired:
        notes.append(f"{unpaired:,} labelled shadow row(s) without the other arm's row of the same request left out")
    if not len(frame):
        notes.append(
            f"no prediction of {rollout.arm!r} or {CHAMPION_ARM!r} logged since {rollout.started_at:%Y-%m-%d %H:%M}"
        )
    return AbReport(
        model=spec.name,
        rollout=rollout,
        main_metric=spec.main_metric,
        metrics=metrics,
        arms=arms,
        difference=difference,
        paired=rollout.mode == "shadow",
        verdict=verdict,
        recommendation=sentence,
        period_start=rollout.started_at,
        period_end=rollout.ended_at,
        newest_events_day=newest,
        last_label_due=last_due,
        window_days=spec.label.window_days,
        unpaired_rows=unpaired,
        parts_read=logged.attrs.get("parts_read", 0),
        parts_total=logged.attrs.get("parts_total", 0),
        notes=notes,
    )


# -- presentation -----------------------------------------------------------------------------------------------
def _estimate(estimate: Estimate | None, signed: bool = False) -> str:
    if not estimate:
        return "–"
    value = f"{estimate['value']:+.4f}" if signed else f"{estimate['value']:.4f}"
    if estimate["low"] is None or estimate["high"] is None:
        return value
    return f"{value} [{estimate['low']:.4f}, {estimate['high']:.4f}]"


def _arm_label(report: AbReport, arm: ArmSummary) -> str:
    return f"{arm.role} {', '.join(f'v{v}' for v in arm.versions) or ''}".strip()


def headline(report: AbReport) -> str:
    """One line: the rollout, the difference of the main metric, the recommendation."""
    r = report.rollout
    diff = _estimate(report.difference.get(report.main_metric), signed=True)
    kind = "paired" if report.paired else "unpaired"
    return (
        f"{report.model} rollout {r.name} ({r.mode}, v{r.version}): {report.main_metric} challenger - champion "
        f"{diff} ({kind}, 95% bootstrap); recommendation: {report.recommendation}"
    )


def ab_table(report: AbReport):
    """A rich table of the arms (rows, labels, the main metric with its interval)."""
    from rich.table import Table

    r = report.rollout
    state = "running" if r.active else f"{r.outcome or 'ended'} {r.ended_at:%Y-%m-%d %H:%M}"
    table = Table(title=f"{report.model} rollout {r.name}: {r.mode} since {r.started_at:%Y-%m-%d %H:%M} ({state})")
    for column in ("arm", "rows", "labelled", "waiting", "users", "label rate", report.main_metric):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in report.arms:
        rate = "–" if arm.label_rate is None else f"{arm.label_rate:.2%}"
        table.add_row(
            _arm_label(report, arm),
            f"{arm.rows:,}",
            f"{arm.labelled:,}",
            f"{arm.waiting:,}",
            f"{arm.users:,}",
            rate,
            _estimate(arm.metrics.get(report.main_metric)),
        )
    kind = "paired" if report.paired else "unpaired"
    table.add_row(
        f"challenger - champion ({kind})",
        "",
        "",
        "",
        "",
        "",
        _estimate(report.difference.get(report.main_metric), True),
    )
    return table


def waiting_line(report: AbReport) -> str:
    newest = report.newest_events_day or "none"
    if not report.waiting:
        return f"every logged row is labelled (newest events day {newest})"
    return (
        f"{report.waiting:,} row(s) wait for their {report.window_days}-day label window (newest events day "
        f"{newest}; the last is due once the events of {report.last_label_due} have landed)"
    )


_PAGE = """<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>
<title>{{ r.model }} rollout {{ ro.name }}: A/B report</title>
<meta name='viewport' content='width=device-width, initial-scale=1'><style>{{ css }}</style></head><body><main>
<h1>{{ r.model }} rollout {{ ro.name }}<span class='badge {{ badge[0] }}'>{{ badge[1] }}</span></h1>
<div class='meta'>{% for k, v in meta %}<span><b>{{ k }}:</b> {{ v }}</span> {% endfor %}</div>
<h2 id='verdict'>Recommendation</h2>
<p class='summary {{ state }}'>{{ headline }}</p>
<p class='small'>{{ waiting }}.</p>
<h2 id='arms'>Arms</h2>
<p class='small'>{{ explain }}</p>
<div class='scroll'><table><tr><th class='l'>arm</th><th class='l'>log arm</th><th>rows</th><th>labelled</th>
<th>waiting</th><th>users</th><th>label rate</th></tr>
{% for a in r.arms %}<tr><td class='l'>{{ a.role }} {% for v in a.versions %}v{{ v }} {% endfor %}</td>
<td class='l'><code>{{ a.arm }}</code></td><td>{{ '{:,}'.format(a.rows) }}</td><td>{{ '{:,}'.format(a.labelled) }}</td>
<td>{{ '{:,}'.format(a.waiting) }}</td><td>{{ '{:,}'.format(a.users) }}</td>
<td>{{ '–' if a.label_rate is none else '{:.2%}'.format(a.label_rate) }}</td></tr>{% endfor %}
</table></div>{% if share is not none %}<p class='small'>The challenger answered {{ '{:.1%}'.format(share) }} of the
period's users (share asked: {{ '{:.1%}'.format(ro.share) }}).</p>{% endif %}
<h2 id='metrics'>Metrics of the labelled rows</h2>
<p class='small'>Value with its 95% bootstrap interval below (users resampled, {{ 'paired: the same requests in both
arms' if r.paired else 'unpaired: each arm on its own users' }}).</p>
<div class='scroll'><table><tr><th class='l'>metric</th>{% for a in r.arms %}<th>{{ a.role }}</th>{% endfor %}
<th>challenger − champion</th></tr>
{% for m in r.metrics %}<tr><td class='l'>{% if m == r.main_metric %}<b>{{ m }}</b>{% else %}{{ m }}{% endif %}
<span class='ci'>{{ '(lower is better)' if m in lower else '' }}</span></td>
{% for a in r.arms %}{{ cell(a.metrics.get(m)) }}{% endfor %}{{ cell(r.difference.get(m), True, m) }}</tr>{% endfor %}
</table></div>
{% for n in r.notes %}<p class='note'>{{ n }}</p>{% endfor %}
<p class='small' style='margin-top:40px'>Generated {{ r.generated_at.strftime('%Y-%m-%d %H:%M UTC') }}.
{% if ro.active %}End the rollout with
<code>mlctl rollout-end {{ r.model }} --name {{ ro.name }} --promote</code>
/ <code>--stop</code>.{% endif %}</p>
</main></body></html>"""


def render_ab_html(report: AbReport) -> str:
    """The report as one self-contained page in the reviewer's report's look."""
    from jinja2 import Environment
    from markupsafe import Markup, escape

    from pipelines.evaluation.report_html import CSS

    def cell(estimate: Estimate | None, signed: bool = False, metric: str = "") -> Markup:
        if not estimate:
            return Markup("<td class='muted'>–</td>")
        value = f"{estimate['value']:+.4f}" if signed else f"{estimate['value']:.4f}"
        css = ""
        if signed and estimate["low"] is not None and estimate["high"] is not None:
            low, high = estimate["low"], estimate["high"]
            if metric in LOWER_IS_BETTER:
                low, high = -high, -low
            css = " class='better'" if low > 0 else (" class='worse'" if high < 0 else " class='same'")
        ci = ""
        if estimate["low"] is not None and estimate["high"] is not None:
            ci = f"<span class='ci'>[{estimate['low']:.4f}, {estimate['high']:.4f}]</span>"
        return Markup(f"<td><span{css}>{escape(value)}</span>{ci}</td>")

    r, ro = report, report.rollout
    badge = {"promote": ("pass", "PROMOTE"), "keep": ("fail", "KEEP THE CHAMPION"), "wait": ("none", "WAIT")}
    ended = "running" if ro.active else f"{ro.outcome or 'ended'} by {ro.ended_by} at {ro.ended_at:%Y-%m-%d %H:%M}"
    meta = [
        ("mode", ro.mode if ro.mode == "shadow" else f"split {ro.share:.0%}"),
        ("challenger", f"v{ro.version}"),
        ("started", f"{ro.started_at:%Y-%m-%d %H:%M} by {ro.started_by}"),
        ("state", ended),
        ("main metric", r.main_metric),
        ("label", f"purchase within {r.window_days} days"),
    ]
    explain = (
        "Each logged row gets the label training gives its as-of day (the day before it was served): a purchase "
        f"in the {r.window_days} days that follow. Rows whose window has not passed by the newest events day wait."
    )
    environment = Environment(autoescape=True)
    return environment.from_string(_PAGE).render(
        r=r,
        ro=ro,
        css=Markup(CSS),
        badge=badge[r.verdict],
        state={"promote": "passed", "keep": "failed"}.get(r.verdict, ""),
        meta=meta,
        headline=headline(r),
        waiting=waiting_line(r)[0].upper() + waiting_line(r)[1:],
        explain=explain,
        share=r.challenger_share if ro.mode == "split" else None,
        lower=LOWER_IS_BETTER,
        cell=cell,
    )

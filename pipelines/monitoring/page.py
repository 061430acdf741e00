"""The monitoring page of a model (``mlctl monitor MODEL``): one self-contained HTML page in the reviewer's report's
look, verdict first (drifting since when, by how many features), then the plots a person watching a model wants
(PSI per feature per day, the champion's scores then and now, its realised metric per day with its interval) and
the newest day's features one by one. Built from the daily reports in ``monitoring/drift/<model>/``.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from pipelines.evaluation.plots import WIDE, png_bytes
from pipelines.lake import Lake
from pipelines.monitoring.drift_reports import drift_history, drifting_since
from pipelines.monitoring.watch import MonitoringError
from pipelines.registry.registry import ModelVersionNotFound, get_version
from pipelines.settings import Settings

PAGE_NAME = "index.html"
# Features shown in the heat-map at most (the ones with the highest PSI on any day): a page, not a wall.
HEATMAP_FEATURES = 25
_PSI_COLOURS = LinearSegmentedColormap.from_list("psi", ["#f4f6f8", "#f2c14e", "#c62828"])


def _figure(width: float = 6.0, height: float = 4.4) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def page_dir(settings: Settings, model: str) -> Path:
    return settings.home / "reports" / model / "monitoring"


# -- plots -------------------------------------------------------------------------------------------------------
def psi_heatmap(history: list[dict[str, Any]]) -> Figure:
    """PSI of each feature (rows, highest first) on each day (columns); the alert threshold is the colour's middle."""
    days = [r["day"] for r in history]
    psi: dict[str, list[float]] = {}
    for i, report in enumerate(history):
        for f in report["features"]:
            psi.setdefault(f["feature"], [math.nan] * len(days))[i] = math.nan if f["psi"] is None else f["psi"]
    ranked = sorted(psi, key=lambda name: -np.nanmax(np.r_[psi[name], 0.0]))[:HEATMAP_FEATURES]
    alert = history[-1]["thresholds"]["psi_alert"]
    grid = np.array([psi[name] for name in ranked]).reshape(len(ranked), len(days))
    fig = _figure(WIDE, 1.6 + 0.28 * max(len(ranked), 1))
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap=_PSI_COLOURS, vmin=0, vmax=2 * alert, interpolation="nearest")
    ax.set_yticks(range(len(ranked)), ranked, fontsize=8)
    step = max(1, len(days) // 12)
    ax.set_xticks(range(0, len(days), step), days[::step], rotation=30, ha="right", fontsize=8)
    for row, col in zip(*np.nonzero(grid >= alert), strict=True):
        ax.text(col, row, f"{grid[row, col]:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=ax, label=f"PSI (alert at {alert:g})", shrink=0.8)
    ax.set_title("Feature drift against the champion's training rows")
    return fig


def score_figure(report: dict[str, Any]) -> Figure | None:
    """The champion's scores on its held-out training rows and on the newest day, as shares per bin."""
    scores = report.get("scores")
    if not scores:
        return None
    edges = np.asarray(scores["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(centres, scores["reference"], width=width, color="#1f5fa8", alpha=0.45, label="training rows (held out)")
    ax.step(centres, scores["day"], where="mid", color="#e07b1a", linewidth=2, label=f"{report['day']}")
    psi = report["prediction"]["psi"] if report.get("prediction") else None
    ax.set_title(f"Champion's scores (PSI {psi:.3f})" if psi is not None else "Champion's scores")
    ax.set_xlabel("score")
    ax.set_ylabel("share of rows")
    ax.legend(fontsize=8)
    return fig


def realised_figure(history: list[dict[str, Any]], test_value: float | None) -> Figure | None:
    """The realised main metric per labelled day with its 95% interval, against the champion's test value."""
    points = [r["realised"] for r in history if r.get("realised") and r["realised"]["value"] is not None]
    if not points:
        return None
    days = [dt.date.fromisoformat(p["day"]) for p in points]
    values = np.array([p["value"] for p in points])
    low = np.array([p["low"] if p["low"] is not None else p["value"] for p in points])
    high = np.array([p["high"] if p["high"] is not None else p["value"] for p in points])
    fig = _figure()
    ax = fig.add_subplot()
    ax.fill_between(days, low, high, color="#1f5fa8", alpha=0.18, label="95% interval")
    ax.plot(days, values, "o-", color="#1f5fa8", label="realised")
    if test_value is not None:
        ax.axhline(test_value, color="#444444", linestyle="--", linewidth=1.2, label="at training (test split)")
    ax.set_title(f"Realised {points[-1]['metric']} per labelled day")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=8)
    return fig


# -- the page ------------------------------------------------------------------------------------------------------
def verdict(history: list[dict[str, Any]]) -> tuple[str, str]:
    """(state, sentence): "drifting since D: N features over PSI x (names); score PSI y", or why it is stable."""
    newest = history[-1]
    t = newest["thresholds"]
    if not newest["judged"]:
        return "none", f"Not judged on {newest['day']}: {newest['summary'].split(': ', 1)[1]}."
    flagged, score = newest["flagged"], newest.get("prediction")
    score_text = f"score PSI {score['psi']:.3f} (alert at {t['prediction_psi_alert']:g})" if score else "no scores"
    if newest["drifting"]:
        names = ", ".join(flagged[:6]) + (" ..." if len(flagged) > 6 else "")
        over = (
            f"{len(flagged)} of {len(newest['features'])} features over PSI {t['psi_alert']:g} or KS {t['ks_alert']:g}"
        )
        return "failed", f"Drifting since {drifting_since(history)}: {over} ({names}); {score_text}."
    return "passed", (
        f"Stable on {newest['day']}: {len(flagged)} of {len(newest['features'])} features over PSI {t['psi_alert']:g} "
        f"or KS {t['ks_alert']:g} (drifting from {t['features_share']:.0%}); {score_text}."
    )


_PAGE = """<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{{ model }}: monitoring</title>
<meta name='viewport' content='width=device-width, initial-scale=1'><style>{{ css }}</style></head><body><main>
<h1>{{ model }} monitoring<span class='badge {{ badge[0] }}'>{{ badge[1] }}</span></h1>
<div class='meta'>{% for k, v in meta %}<span><b>{{ k }}:</b> {{ v }}</span> {% endfor %}</div>
<nav><a href='#verdict'>verdict</a><a href='#plots'>plots</a><a href='#features'>features</a></nav>
<h2 id='verdict'>Verdict</h2>
<p class='summary {{ state }}'>{{ sentence }}</p>
{% if realised %}<p class='small'>{{ realised }}</p>{% endif %}
{% if newest.drifting %}<p class='note'>Drift triggers <code>train_{{ model }}</code> (Asset
<code>storefront://drift/{{ model }}</code>); its candidate still goes through the gate and a reviewer's approval.
Retrain now with <code>mlctl run train_{{ model }} --date {{ newest.day }}</code>.</p>{% endif %}
<h2 id='plots'>Plots</h2><div class='figs'>
{% for stem, caption, png, wide in figures %}<figure{% if wide %} class='wide'{% endif %}>
<img alt='{{ stem }}' src='data:image/png;base64,{{ png }}'><figcaption>{{ caption }}</figcaption></figure>{% endfor %}
</div>
<h2 id='features'>Features on {{ newest.day }}</h2>
<p class='small'>Against the {{ '{:,}'.format(newest.reference.rows) }} rows of the champion's training set
({{ newest.reference.uri }}); {{ '{:,}'.format(newest.population.rows) }} rows on the day, from {{ source }}.
PSI over the reference's quantile bins (one more bin for missing values); KS: the largest gap between the two
distributions.</p>
<div class='scroll'><table><tr><th class='l'>feature</th><th>PSI</th><th>KS</th><th>missing (training)</th>
<th>missing (day)</th><th>result</th></tr>
{% for f in features %}<tr class='{{ 'failed' if f.drifting else '' }}'><td class='l'>{{ f.feature }}</td>
<td>{{ num(f.psi) }}</td><td>{{ num(f.ks) }}</td><td>{{ '{:.1%}'.format(f.missing_reference) }}</td>
<td>{{ '{:.1%}'.format(f.missing_day) }}</td>
<td>{% if f.drifting %}<span class='bad'>drifting</span>{% else %}<span class='ok'>stable</span>{% endif %}</td></tr>
{% endfor %}</table></div>
{% if newest.not_compared %}<p class='small'>Not compared: {% for k, v in newest.not_compared.items() %}
<code>{{ k }}</code> ({{ v }}){{ '; ' if not loop.last }}{% endfor %}.</p>{% endif %}
<p class='small' style='margin-top:40px'>Generated {{ generated }} from {{ history|length }} daily report(s)
({{ history[0].day }} to {{ newest.day }}). Thresholds: the <code>monitoring:</code> block of
models/{{ model }}.yaml.</p>
</main></body></html>"""


def _realised_sentence(history: list[dict[str, Any]], test_value: float | None) -> str | None:
    latest = next((r["realised"] for r in reversed(history) if r.get("realised")), None)
    if latest is None:
        return None
    at_training = f"; {test_value:.4f} on the test split at training" if test_value is not None else ""
    if latest["value"] is None:
        return f"Realised {latest['metric']} on {latest['day']}: not measurable ({latest['reason']})."
    interval = f" [{latest['low']:.4f}, {latest['high']:.4f}]" if latest["low"] is not None else ""
    return (
        f"Realised {latest['metric']} on {latest['day']} (labels matured): {latest['value']:.4f}{interval} on "
        f"{latest['rows']:,} rows{at_training}."
    )


def render_monitoring_html(model: str, history: list[dict[str, Any]], test_value: float | None = None) -> str:
    """The page of ``history`` (daily drift reports, oldest first); ``test_value``: the champion's main metric on
    its test split at training, drawn beside the realised one."""
    from jinja2 import Environment
    from markupsafe import Markup

    from pipelines.evaluation.report_html import CSS

    newest = history[-1]
    state, sentence = verdict(history)
    badge = {"failed": ("fail", "DRIFTING"), "passed": ("pass", "STABLE"), "none": ("none", "NOT JUDGED")}[state]
    candidates = [
        (
            "psi_heatmap",
            "PSI of each feature per day (labelled where it reaches the alert)",
            psi_heatmap(history),
            True,
        ),
        (
            "scores",
            "The champion's scores on its held-out training rows and on the newest day",
            score_figure(newest),
            False,
        ),
        ("realised", "Realised main metric per day whose labels matured", realised_figure(history, test_value), False),
    ]
    figures = [
        (stem, caption, base64.b64encode(png_bytes(fig)).decode(), wide)
        for stem, caption, fig, wide in candidates
        if fig is not None
    ]
    meta = [
        ("champion", f"v{newest['version']}"),
        ("trained for", newest["reference"]["logical_date"]),
        ("newest day", newest["day"]),
        ("days shown", len(history)),
    ]
    features = sorted(newest["features"], key=lambda f: -(f["psi"] or 0.0))
    return (
        Environment(autoescape=True)
        .from_string(_PAGE)
        .render(
            css=Markup(CSS),
            model=model,
            badge=badge,
            meta=meta,
            state=state,
            sentence=sentence,
            realised=_realised_sentence(history, test_value),
            newest=newest,
            history=history,
            figures=figures,
            features=features,
            source="its prediction log"
            if newest["population"]["source"] == "prediction_log"
            else "the offline features of the entities it scores",
            num=lambda v: "–" if v is None else f"{v:.3f}",
            generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


def build_monitoring_page(settings: Settings, model: str, days: int = 30, out_dir: Path | None = None) -> Path:
    """Write the page of ``model``'s newest ``days`` reports to ``out_dir`` (default
    ``<home>/reports/<model>/monitoring/``) and return its path."""
    history = drift_history(Lake(settings), model, days)
    if not history:
        raise MonitoringError(
            f"model {model!r} has no monitoring report in {settings.lake_uri}/monitoring/drift/{model}; the daily "
            "DAG's monitor task writes one per day once the model has a champion (`mlctl run daily_features --date D`)"
        )
    newest = history[-1]
    try:
        metrics = get_version(settings, model, newest["version"]).metrics
        test_value = metrics.get(f"test_{newest['realised']['metric']}") if newest.get("realised") else None
    except ModelVersionNotFound:
        test_value = None  # the page still reads from the lake alone
    target = out_dir or page_dir(settings, model)
    target.mkdir(parents=True, exist_ok=True)
    page = target / PAGE_NAME
    page.write_text(render_monitoring_html(model, history, test_value), encoding="utf-8")
    return page

"""The reviewer's report as one self-contained HTML page: inline CSS, PNG plots embedded as data URIs.

Sections: header with the verdict badge, the gate's verdict and checks, data volumes, overall metrics of every scorer
with confidence intervals, per-slice metrics with the changes against the champion highlighted, plots, features.
"""

from __future__ import annotations

import base64
import datetime as dt
import html

from pipelines.evaluation.gate import GateCheck
from pipelines.evaluation.plots import SCORER_STYLE
from pipelines.evaluation.report_inputs import SCORER_NAMES, SHAP_ROWS, Estimate, ReportInputs, Verdict
from pipelines.specs import LOWER_IS_BETTER

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d232b;margin:0;background:#f4f6f8}
main{max-width:1240px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 6px}
h2{font-size:19px;margin:34px 0 10px;border-bottom:2px solid #e3e7ec;padding-bottom:4px}
.meta{color:#4d5866;font-size:14px;margin:4px 0 14px}.meta span{margin-right:18px;white-space:nowrap}
.badge{display:inline-block;padding:4px 12px;border-radius:14px;font-weight:700;font-size:14px;color:#fff;
vertical-align:middle;margin-left:10px}
.pass{background:#2e7d32}.fail{background:#c62828}.none{background:#757575}
.summary{font-size:15px;line-height:1.5;background:#f7f9fb;border-left:4px solid #9aa5b1;padding:10px 14px}
.summary.failed{border-left-color:#c62828;background:#fdf3f3}.summary.passed{border-left-color:#2e7d32}
table{border-collapse:collapse;font-size:13.5px;margin:8px 0 4px}th,td{padding:5px 10px;border-bottom:1px solid #e3e7ec;
text-align:right;vertical-align:top}th{background:#eef1f5;font-weight:600}td.l,th.l{text-align:left}
tr.failed td{background:#fdecec}tr.failed td:first-child{border-left:4px solid #c62828}
.ci{display:block;color:#6b7683;font-size:11.5px}.better{color:#1b7a2f;font-weight:600}.worse{color:#c62828;font-weight:600}
.same{color:#6b7683}.ok{color:#1b7a2f;font-weight:600}.bad{color:#c62828;font-weight:700}.muted{color:#6b7683}
.figs{display:grid;grid-template-columns:1fr 1fr;gap:18px}.figs figure{margin:0}.figs figure.wide{grid-column:1/3}
figure img{max-width:100%;border:1px solid #e3e7ec}figcaption{font-size:13px;color:#4d5866;margin-top:4px}
.note{color:#8a5a00;background:#fff8e1;padding:8px 12px;border-radius:4px}.small{font-size:12.5px;color:#4d5866}
code{background:#eef1f5;padding:1px 5px;border-radius:3px}nav a{margin-right:14px;font-size:14px}
.scroll{overflow-x:auto}
"""
# Plots wider than this many pixels take the page's full width; narrower ones go two abreast.
WIDE_PIXELS = 700
FEATURE_FIGURES = {"feature_importance", "shap_summary"}  # shown under 'Features', the rest above


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(estimate: Estimate | None) -> str:
    if estimate is None:
        return "<td class='muted'>–</td>"
    ci = ""
    if estimate.low is not None and estimate.high is not None:
        ci = f"<span class='ci'>[{estimate.low:.4f}, {estimate.high:.4f}]</span>"
    return f"<td>{estimate.value:.4f}{ci}</td>"


def _delta(metric: str, new: Estimate | None, old: Estimate | None) -> str:
    """``new - old`` coloured by whether it is an improvement (lower is better for losses)."""
    if new is None or old is None:
        return "<span class='muted'>–</span>"
    diff = new.value - old.value
    better = diff < 0 if metric in LOWER_IS_BETTER else diff > 0
    css = "same" if abs(diff) < 5e-5 else ("better" if better else "worse")
    return f"<span class='{css}'>{diff:+.4f}</span>"


def _check_slice(check: GateCheck) -> tuple[str, str] | None:
    """(slice, value) a check is about (the gate names them ``slice=value``), or None for an overall check."""
    if not check.slice:
        return None
    name, _, value = check.slice.partition("=")
    return name, value


def header_html(inputs: ReportInputs) -> str:
    ev, info, verdict = inputs.evaluation, inputs.version, inputs.verdict
    badge = {True: ("pass", "GATE PASSED"), False: ("fail", "GATE FAILED"), None: ("none", "NOT GATED")}[verdict.passed]
    champion = f"v{ev.champion_version}" if ev.champion_version else "none (first model)"
    created = info.created_at.strftime("%Y-%m-%d %H:%M UTC") if info.created_at else "?"
    commit = info.tags.get("code.git_commit", "?")[:10]
    meta = [
        ("logical date", ev.logical_date),
        ("champion", champion),
        ("objective", inputs.spec.objective),
        ("main metric", ev.main_metric),
        ("registered", created),
        ("run", info.run_id),
        ("code", commit),
    ]
    spans = " ".join(f"<span><b>{_e(k)}:</b> {_e(v)}</span>" for k, v in meta)
    return (
        f"<h1>{_e(inputs.spec.name)} version {_e(ev.candidate_version)}"
        f"<span class='badge {badge[0]}'>{badge[1]}</span></h1><div class='meta'>{spans}</div>"
        "<nav><a href='#verdict'>verdict</a><a href='#data'>data</a><a href='#metrics'>metrics</a>"
        "<a href='#slices'>slices</a><a href='#plots'>plots</a><a href='#features'>features</a></nav>"
    )


def verdict_html(verdict: Verdict) -> str:
    state = {True: "passed", False: "failed", None: ""}[verdict.passed]
    out = f"<h2 id='verdict'>Gate verdict</h2><p class='summary {state}'>{_e(verdict.summary)}</p>"
    if not verdict.checks:
        return out + "<p class='muted'>No checks were recorded.</p>"
    rows = []
    for c in verdict.checks:
        where = _check_slice(c)
        reference = c.champion_value if c.champion_value is not None else c.baseline_value
        result = "<span class='ok'>passed</span>" if c.passed else "<span class='bad'>FAILED</span>"
        op = "≤" if c.metric in LOWER_IS_BETTER else "≥"
        rows.append(
            f"<tr class='{'' if c.passed else 'failed'}'><td class='l'>{_e(c.metric)}</td>"
            f"<td class='l'>{_e(' = '.join(where) if where else 'overall')}</td><td class='l'>{_e(c.kind)}</td>"
            f"<td>{_num(c.value)}</td><td>{op} {_num(c.threshold)}</td><td>{_num(reference)}</td>"
            f"<td>{result}</td></tr>"
        )
    failed = sum(not c.passed for c in verdict.checks)
    return out + (
        f"<p class='small'>{len(verdict.checks)} checks, {failed} failed.</p>"
        "<div class='scroll'><table><tr><th class='l'>metric</th>"
        "<th class='l'>slice</th><th class='l'>check</th><th>value</th><th>threshold</th>"
        "<th>champion / baseline</th><th>result</th></tr>" + "".join(rows) + "</table></div>"
    )


def data_html(inputs: ReportInputs) -> str:
    ev = inputs.evaluation
    columns = list(inputs.splits.columns)
    head = "".join(f"<th class='{'l' if c == 'split' else ''}'>{_e(c)}</th>" for c in columns)
    body = []
    for _, row in inputs.splits.iterrows():
        cells = []
        for c in columns:
            if c == "split":
                cells.append(f"<td class='l'>{_e(row[c])}</td>")
            elif c == "positive rate":
                cells.append(f"<td>{row[c]:.2%}</td>")
            else:
                cells.append(f"<td>{int(row[c]):,}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    best = inputs.version.metrics.get("best_iteration")
    rounds = f" Boosting stopped at iteration {int(best)} (early stopping on validation)." if best else ""
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in inputs.notes)
    requests = f" of {ev.queries:,} requests" if ev.queries else ""
    return (
        "<h2 id='data'>Data</h2>"
        f"<p class='small'>Time-based splits of the training set for {_e(ev.logical_date)}; all scorers were "
        f"evaluated on the same {ev.rows:,} out-of-time test rows{requests} (label rate {ev.label_rate:.2%})."
        f"{rounds}</p>"
        f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>{notes}"
    )


def metrics_html(inputs: ReportInputs) -> str:
    ev = inputs.evaluation
    scorers = [s for s in SCORER_STYLE if s in ev.overall]
    metrics = list(dict.fromkeys(m for s in scorers for m in ev.overall[s]))
    metrics.sort(key=lambda m: (m != ev.main_metric, inputs.spec.metrics.index(m) if m in inputs.spec.metrics else 99))
    names = {s: SCORER_NAMES[s] for s in scorers}
    names["candidate"] = f"challenger v{ev.candidate_version}"
    if ev.champion_version:
        names["champion"] = f"champion v{ev.champion_version}"
    refs = [r for r in ("champion", "baseline") if r in ev.overall]
    head = "<th class='l'>metric</th>" + "".join(f"<th>{_e(names[s])}</th>" for s in scorers)
    head += "".join(f"<th>Δ vs {r}</th>" for r in refs)
    rows = []
    cand = ev.overall.get("candidate", {})
    for m in metrics:
        direction = " (lower is better)" if m in LOWER_IS_BETTER else ""
        label = f"<b>{_e(m)}</b>" if m == ev.main_metric else _e(m)
        cells = "".join(_cell(ev.overall[s].get(m)) for s in scorers)
        cells += "".join(f"<td>{_delta(m, cand.get(m), ev.overall[r].get(m))}</td>" for r in refs)
        rows.append(f"<tr><td class='l'>{label}<span class='ci'>{direction}</span></td>{cells}</tr>")
    missing = [SCORER_NAMES[s] for s in ("champion", "baseline", "oracle") if s not in ev.overall]
    note = f"<p class='small'>Not available for this version: {_e(', '.join(missing))}.</p>" if missing else ""
    if ev.undefined:
        undefined = "; ".join(f"{m}: {reason}" for m, reason in ev.undefined.items())
        note += f"<p class='note'>Not computable on the test rows: {_e(undefined)}.</p>"
    oracle = (
        "; Bayes-optimal scores with the simulator's ground truth, the best any model can do on these rows"
        if "oracle" in ev.overall
        else ""
    )
    return (
        "<h2 id='metrics'>Overall metrics on the test rows</h2>"
        f"<p class='small'>Value with its 95% bootstrap confidence interval below{oracle}.</p>"
        f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>{note}"
    )


def slices_html(inputs: ReportInputs) -> str:
    ev, gate = inputs.evaluation, inputs.spec.gate
    if not ev.slices:
        return "<h2 id='slices'>Slices</h2><p class='muted'>The model spec declares no slices.</p>"
    metrics = [m for m in inputs.spec.metrics if any(m in s.metrics.get("candidate", {}) for s in ev.slices)]
    failed: dict[tuple[str, str], list[str]] = {}
    checked: set[tuple[str, str]] = set()
    for c in inputs.verdict.checks:
        where = _check_slice(c)
        if where is not None:
            checked.add(where)
            if not c.passed:
                failed.setdefault(where, []).append(f"{c.metric} {c.kind.replace('slice_', '')}")
    has_champion = any("champion" in s.metrics for s in ev.slices)
    counted = "queries" if ev.queries else "rows"
    head = f"<th class='l'>slice</th><th class='l'>value</th><th>{counted}</th><th>positives</th>"
    head += "".join(f"<th>{_e(m)}</th>" for m in metrics)
    head += "<th class='l'>gate</th>"
    rows = []
    for s in ev.slices:
        key = (s.slice, s.value)
        cand, champ = s.metrics.get("candidate", {}), s.metrics.get("champion", {})
        cells = []
        for m in metrics:
            est = cand.get(m)
            ci = f"<span class='ci'>[{est.low:.4f}, {est.high:.4f}]</span>" if est and est.low is not None else ""
            delta = f" ({_delta(m, est, champ.get(m))})" if has_champion else ""
            cells.append(f"<td>{_num(est.value if est else None)}{delta}{ci}</td>")
        # Metrics the gate checks per slice that one class there leaves undefined: say so, whatever else held.
        why = sorted({reason.split(" (")[0] for m, reason in s.undefined.items() if m in gate.slice_max_regression})
        if key in failed:
            status = "<span class='bad'>FAILED: " + _e(", ".join(failed[key])) + "</span>"
        elif why and has_champion:
            status = "<span class='muted'>not gated: " + _e(", ".join(why)) + "</span>"
        elif key in checked:
            status = "<span class='ok'>passed</span>"
        elif not has_champion:
            status = "<span class='muted'>–</span>"
        elif s.rows < gate.min_slice_rows or s.positives < gate.min_slice_positives:
            status = "<span class='muted'>too small to gate</span>"
        else:
            status = "<span class='muted'>not gated</span>"
        rows.append(
            f"<tr class='{'failed' if key in failed else ''}'><td class='l'>{_e(s.slice)}</td>"
            f"<td class='l'>{_e(s.value)}</td><td>{s.rows:,}</td><td>{s.positives:,}</td>{''.join(cells)}"
            f"<td class='l'>{status}</td></tr>"
        )
    if has_champion:
        explained = (
            f"; in brackets its change against the champion on the same rows, <span class='better'>green</span> when "
            f"better, <span class='worse'>red</span> when worse. Slices with fewer than {gate.min_slice_rows} "
            f"{counted} or {gate.min_slice_positives} positives are shown but not gated; slices that failed the gate "
            "are marked red."
        )
    else:
        explained = ". With no champion there is nothing to regress from: slices are shown, not gated."
    return (
        "<h2 id='slices'>Slices</h2>"
        f"<p class='small'>Challenger per slice (95% CI of the main metric below it){explained}</p>"
        f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>"
    )


def _img(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figures_html(inputs: ReportInputs, captions: dict[str, str], pngs: dict[str, bytes]) -> str:
    def figure(stem: str) -> str:
        width = int.from_bytes(pngs[stem][16:20], "big")  # the PNG header's IHDR width
        wide = " class='wide'" if width > WIDE_PIXELS else ""
        caption = _e(captions[stem])
        return (
            f"<figure{wide}><img alt='{caption}' src='{_img(pngs[stem])}'><figcaption>{caption}</figcaption></figure>"
        )

    model_plots = [s for s in pngs if s not in FEATURE_FIGURES]
    feature_plots = [s for s in pngs if s in FEATURE_FIGURES]
    if inputs.spec.objective == "lambdarank":
        intro = (
            "NDCG@k and relevance by rank over the test requests (a ranking model: ROC, precision-recall, "
            "calibration and lift do not apply)."
        )
    else:
        intro = "Every scorer on the same test rows."
    if "oracle" in inputs.evaluation.overall:
        intro += " Bayes-optimal (dotted) is the best achievable."
    return (
        f"<h2 id='plots'>Model behaviour</h2><p class='small'>{intro}</p>"
        f"<div class='figs'>{''.join(figure(s) for s in model_plots)}</div>"
        "<h2 id='features'>Features</h2><p class='small'>Total gain per feature in the boosted trees, and the "
        f"features' contributions to individual test rows (LightGBM's SHAP values on up to {SHAP_ROWS:,} sampled "
        f"rows; raw score units).</p><div class='figs'>{''.join(figure(s) for s in feature_plots)}</div>"
    )


def skew_html(report: dict | None) -> str:
    """The served model's newest training/serving skew: per feature, how often the online value it was scored
    with differs from the offline point-in-time value training would have used."""
    head = "<h2 id='skew'>Training/serving skew of the served model</h2>"
    if report is None:
        return head + "<p class='muted'>Not served yet, or no day of served predictions compared yet.</p>"
    rows = []
    for f in sorted(report["features"], key=lambda f: (-f["differ_share"], f["feature"])):
        mark = " class='failed'" if f["differ_share"] > 0 else ""
        rows.append(
            f"<tr{mark}><td class='l'>{_e(f['feature'])}</td><td>{f['differ_share']:.2%}</td>"
            f"<td>{_num(f['mean_abs_diff'])}</td><td>{f['missing_online_share']:.2%}</td>"
            f"<td>{f['missing_offline_share']:.2%}</td></tr>"
        )
    flagged = report["flagged"]
    verdict = (
        f"{len(flagged)} feature(s) differ: {', '.join(_e(f) for f in flagged)}."
        if flagged
        else "Every online feature equals the offline one."
    )
    sampled = " (a sample of the day's log)" if report.get("sampled") else ""
    skipped = "".join(
        f"<p class='note'>{_e(name)}: not compared ({_e(why)})</p>" for name, why in report["not_compared"].items()
    )
    return (
        f"{head}<p class='small'>{report['rows']:,} predictions logged on {_e(report['day'])}{sampled} by "
        f"version(s) {_e(', '.join(report['versions']))}, against the offline point-in-time features of the same "
        f"entities at the same instants. {verdict}</p>"
        "<div class='scroll'><table><tr><th class='l'>feature</th><th>rows differing</th><th>mean |diff|</th>"
        f"<th>missing online</th><th>missing offline</th></tr>{''.join(rows)}</table></div>{skipped}"
    )


def render_html(inputs: ReportInputs, captions: dict[str, str], pngs: dict[str, bytes]) -> str:
    """The whole page: header, verdict, data, metrics, slices, plots (embedded), features, serving skew."""
    title = f"{inputs.spec.name} v{inputs.evaluation.candidate_version}: reviewer's report"
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(
        [
            header_html(inputs),
            verdict_html(inputs.verdict),
            data_html(inputs),
            metrics_html(inputs),
            slices_html(inputs),
            figures_html(inputs, captions, pngs),
            skew_html(inputs.skew),
        ]
    )
    footer = (
        f"<p class='small' style='margin-top:40px'>Generated {generated}. Logged in as yourself "
        "(<code>mlctl login</code>), approve or reject with "
        f"<code>mlctl approve {_e(inputs.spec.name)} {_e(inputs.evaluation.candidate_version)} "
        "--comment ...</code>"
        f" / <code>mlctl reject ...</code>.</p>"
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
        f"<body><main>{body}{footer}</main></body></html>"
    )

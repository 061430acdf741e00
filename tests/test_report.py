"""The reviewer's report of a real trained, evaluated and gated candidate: its sections, plots, run artifact, mlctl."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.evaluation import plots
from pipelines.evaluation.evaluate import evaluate_candidate
from pipelines.evaluation.gate import GateCheck, apply_gate, record_gate
from pipelines.evaluation.report import ReportError, build_report, fetch_report, report_link
from pipelines.evaluation.report_html import slices_html
from pipelines.evaluation.report_inputs import Verdict, gather
from pipelines.lake import Lake
from pipelines.registry.registry import get_version, set_alias
from pipelines.settings import Settings, get_settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import TrainingSet, save_training_set
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import train_model
from tests.conftest import quick_spec

FIRST_DAY, CANDIDATE_DAY = dt.date(2024, 3, 30), dt.date(2024, 3, 31)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BINARY_PLOTS = {"roc", "precision_recall", "score_distributions", "calibration", "gain_lift"}
FEATURE_PLOTS = {"feature_importance", "shap_summary"}


def true_probability(ts: TrainingSet) -> np.ndarray:
    """The synthetic world's Bayes-optimal scores of the test rows (its default logistic coefficients)."""
    test = ts.split("test")
    logit = -1.0 + test[["signal_1", "signal_2", "signal_3"]].to_numpy() @ np.array([1.5, -1.0, 0.75])
    return 1.0 / (1.0 + np.exp(-logit))


@dataclass
class Reported:
    settings: Settings
    spec: ModelSpec
    champion: str  # the first model: evaluated with no champion and no simulator truth, then made champion
    candidate: str  # evaluated against the champion, the baseline and the Bayes-optimal scorer
    not_evaluated_error: str  # fetching the candidate's report before it was evaluated
    run_id: str
    page: Path
    html: str
    first_html: str


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> Iterator[Reported]:
    """A first model reported as the DAG's gate step does, then a candidate evaluated against it, gated, and its
    report fetched: it is not on the run yet, so fetching builds it there (what `mlctl report` does for a version
    the DAG did not report on).
    """
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("STOREFRONT_")]:
            env.delenv(key)
        settings = get_settings(home=tmp_path_factory.mktemp("report") / ".storefront", num_threads=1)
        db = Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True)
        shutil.copy(migrated_mlflow_db, db)
        spec = quick_spec(40, 5, train=4, validation=2, test=2)
        lake = Lake(settings)

        def train(day: dt.date, seed: int) -> tuple[TrainingSet, str, str]:
            ts = save_training_set(lake, spec, day, synthetic_training_frame(spec, day, seed=seed))
            trained = train_model(settings, spec, ts)
            return ts, trained.model_version, trained.run_id

        first_ts, first, _ = train(FIRST_DAY, seed=1)
        record_gate(settings, spec, first, apply_gate(spec, evaluate_candidate(settings, spec, first, first_ts)))
        first_page = build_report(settings, spec, first)
        set_alias(settings, spec.name, "champion", first)
        ts, candidate, run_id = train(CANDIDATE_DAY, seed=2)
        with pytest.raises(ReportError) as not_evaluated:
            fetch_report(settings, spec.name, candidate)
        evaluation = evaluate_candidate(settings, spec, candidate, ts, oracle_scores=true_probability(ts))
        record_gate(settings, spec, candidate, apply_gate(spec, evaluation))

        page = fetch_report(settings, spec.name, candidate)

        yield Reported(
            settings,
            spec,
            first,
            candidate,
            str(not_evaluated.value),
            run_id,
            page,
            page.read_text(encoding="utf-8"),
            first_page.read_text(encoding="utf-8"),
        )


def embedded_pngs(html: str) -> dict[str, bytes]:
    """alt text -> decoded bytes of every image embedded in the page."""
    found = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", html)
    return {alt: base64.b64decode(data) for alt, data in found}


def test_the_report_shows_every_section_a_reviewer_decides_on(reported: Reported) -> None:
    html, spec = reported.html, reported.spec

    assert f"{spec.name} version {reported.candidate}" in html
    assert f"<b>champion:</b> v{reported.champion}" in html
    tags = get_version(reported.settings, spec.name, reported.candidate).tags
    badge = "GATE PASSED" if tags["gate.status"] == "passed" else "GATE FAILED"
    assert badge in html
    for section in ("verdict", "data", "metrics", "slices", "plots", "features", "skew"):
        assert f"<h2 id='{section}'>" in html, section
    assert "Not served yet, or no day of served predictions compared yet." in html
    # the gate's summary and each of its checks
    assert escape(tags["gate.summary"]) in html
    checks = json.loads(tags["gate.checks"])
    assert f"{len(checks)} checks, {sum(not c['passed'] for c in checks)} failed." in html
    assert html.count("<td class='l'>slice_regression</td>") == sum(c["kind"] == "slice_regression" for c in checks)
    # volumes of every split, scorers side by side, every slice of the spec
    for split in ("train", "validation", "test"):
        assert f"<td class='l'>{split}</td>" in html
    for scorer in (f"challenger v{reported.candidate}", f"champion v{reported.champion}", "baseline", "Bayes-optimal"):
        assert f"<th>{scorer}</th>" in html, scorer
    for metric in spec.metrics:
        assert metric in html
    for slice_spec in spec.slices:
        assert f"<td class='l'>{slice_spec.name}</td>" in html, slice_spec.name
    assert "Δ vs champion" in html


def test_a_first_models_report_shows_what_it_was_judged_against_and_what_was_missing(reported: Reported) -> None:
    html = reported.first_html

    assert "<b>champion:</b> none (first model)" in html
    assert "<th>baseline</th>" in html and "<th>Δ vs baseline</th>" in html
    assert "<th>champion v" not in html and "<th>Bayes-optimal</th>" not in html
    assert "Not available for this version: champion, Bayes-optimal." in html
    assert "slices are shown, not gated" in html
    assert len(embedded_pngs(html)) == len(BINARY_PLOTS | FEATURE_PLOTS)


def test_a_slice_that_failed_the_gate_is_marked_in_the_slice_table(reported: Reported) -> None:
    inputs = gather(reported.settings, reported.spec, reported.candidate)
    failed = GateCheck("roc_auc", "slice_regression", 0.70, 0.75, False, slice="category=b", champion_value=0.78)
    verdict = Verdict(False, "rejected: roc_auc in slice category=b", [failed])

    html = slices_html(dataclasses.replace(inputs, verdict=verdict))

    cells = re.compile(r"<td class='l'>(\w+)</td><td class='l'>(\w+)</td>")
    rows = {cells.search(row).groups(): row for row in html.split("<tr")[2:]}  # (slice, value) -> its row
    marked = {key for key, row in rows.items() if row.startswith(" class='failed'")}
    assert marked == {("category", "b")}
    assert "FAILED: roc_auc regression" in rows[("category", "b")]


def test_the_report_is_self_contained_with_its_plots_as_png(reported: Reported) -> None:
    pngs = embedded_pngs(reported.html)

    assert len(pngs) == len(BINARY_PLOTS | FEATURE_PLOTS)
    assert all(png.startswith(PNG_MAGIC) and len(png) > 5_000 for png in pngs.values())
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", reported.html)
    assert "<script" not in reported.html and "<link" not in reported.html
    assert {p.stem for p in reported.page.parent.glob("*.png")} == BINARY_PLOTS | FEATURE_PLOTS


def test_the_report_is_logged_to_the_candidates_run_and_linked(reported: Reported) -> None:
    client = MlflowClient(reported.settings.mlflow_tracking_uri)
    logged = {a.path for a in client.list_artifacts(reported.run_id, "report")}

    assert logged == {f"report/{stem}.png" for stem in BINARY_PLOTS | FEATURE_PLOTS} | {"report/index.html"}
    link = report_link(reported.settings, reported.spec.name, reported.candidate)
    where, _, command = link.partition(" (or run ")
    assert where.startswith("file://") and where.endswith(f"{reported.run_id}/artifacts/report/index.html")
    assert Path(where.removeprefix("file://")).read_text(encoding="utf-8") == reported.html
    assert command == f"`mlctl report {reported.spec.name} {reported.candidate}`)"


def test_mlctl_report_writes_the_page_and_names_what_is_missing(
    reported: Reported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREFRONT_HOME", str(reported.settings.home))
    monkeypatch.setenv("STOREFRONT_NUM_THREADS", "1")
    runner = CliRunner()
    name = reported.spec.name

    result = runner.invoke(app, ["report", name, reported.candidate, "--out", str(tmp_path), "--no-open"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "index.html")
    assert (tmp_path / "index.html").read_text(encoding="utf-8") == reported.html

    default = runner.invoke(app, ["report", name, reported.candidate, "--no-open"])
    assert default.exit_code == 0, default.output
    assert (reported.settings.home / "reports" / name / f"v{reported.candidate}" / "index.html").exists()

    missing = runner.invoke(app, ["report", name, "99", "--no-open"])
    assert missing.exit_code == 1 and f"'{name}' has no version '99'" in " ".join(missing.output.split())
    assert reported.not_evaluated_error.startswith(f"{name} version {reported.candidate} was never evaluated: its run")


# -- the plots' numbers ----------------------------------------------------------------------------------------------
def test_ndcg_curve_is_one_for_the_ideal_order_and_skips_queries_without_relevant_candidates() -> None:
    label = np.array([2, 1, 0, 0, 1, 0, 0, 0, 0])
    query = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3])  # query 3 has nothing relevant

    assert np.allclose(plots.ndcg_curve(label, label.astype(float), query, depth=3), 1.0)
    reversed_order = plots.ndcg_curve(label, -label.astype(float), query, depth=3)
    # query 1 puts its grade-2 item last, query 2 its only relevant item last: NDCG@1 is 0 for both
    assert reversed_order[0] == 0.0 and 0.0 < reversed_order[2] < 1.0


def test_cumulative_gain_and_reliability_points() -> None:
    label = np.array([1, 0, 1, 0, 0, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1, 0.05])

    share, found = plots.cumulative_gain(label, scores)
    assert (share[0], found[0], share[-1], found[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert found[3] == pytest.approx(2 / 3)  # the top 3 rows hold 2 of the 3 positives
    predicted, observed = plots.reliability_points(label, scores, bins=2)
    assert predicted == pytest.approx([0.1625, 0.7])
    assert observed == pytest.approx([0.25, 0.5])


def test_ranking_plots_draw_every_scorer() -> None:
    rng = np.random.default_rng(0)
    query = np.repeat(np.arange(30), 25)
    label = rng.integers(0, 3, size=query.size).astype(float)
    data = plots.ScoreSet(
        label,
        {"candidate": label + rng.normal(size=label.size), "baseline": rng.normal(size=label.size)},
        {"candidate": "challenger v2", "baseline": "baseline"},
        query,
    )

    for figure in (plots.ndcg_figure(data), plots.relevance_by_rank_figure(data)):
        (ax,) = figure.axes
        assert [t.get_text().split(" (@")[0] for t in ax.get_legend().get_texts()] == ["challenger v2", "baseline"]
        assert plots.png_bytes(figure).startswith(PNG_MAGIC)


def test_the_skew_section_lists_features_that_differ_first() -> None:
    from pipelines.evaluation.report_html import skew_html

    def feature(name: str, share: float) -> dict:
        return {
            "feature": name,
            "rows": 100,
            "differ_share": share,
            "mean_abs_diff": 0.5 if share else 0.0,
            "missing_online_share": 0.0,
            "missing_offline_share": 0.0,
        }

    report = {
        "day": "2025-02-05",
        "rows": 100,
        "sampled": False,
        "versions": ["3"],
        "flagged": ["views_7d"],
        "features": [feature("carts_7d", 0.0), feature("views_7d", 0.12)],
        "not_compared": {"log_purchase_value": "its request field is not logged"},
    }
    html = skew_html(report)
    assert "100 predictions logged on 2025-02-05" in html and "1 feature(s) differ: views_7d." in html
    assert html.index("views_7d") < html.index("carts_7d")
    assert "<tr class='failed'><td class='l'>views_7d</td><td>12.00%</td>" in html
    assert "log_purchase_value: not compared" in html

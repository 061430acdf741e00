"""The reviewer's report: one self-contained HTML page per candidate version, logged to its MLflow run.

It gathers what the evaluation and the gate logged on the candidate's run (:mod:`.report_inputs`), draws the plots
(:mod:`.plots`) including a SHAP summary of the model on a sample of the test rows, and writes ``index.html``
(:mod:`.report_html`) with the PNGs next to it. Everything a reviewer needs to approve or reject is on that page;
the approval request links to it (:func:`report_link`) and ``mlctl report MODEL VERSION`` opens it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

from pipelines.evaluation import plots
from pipelines.evaluation.report_html import render_html
from pipelines.evaluation.report_inputs import SCORER_NAMES, ReportError, ReportInputs, gather
from pipelines.registry.registry import connect, get_version
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, SpecError, load_spec
from pipelines.training.dataset import GROUP_COLUMN, LABEL_COLUMN

REPORT_DIR = "report"
REPORT_PAGE = "index.html"


# -- plots -------------------------------------------------------------------------------------------------------------
def score_set(inputs: ReportInputs) -> plots.ScoreSet:
    """The scores of every scorer present in ``scores.parquet`` (a scorer that was not available is all NaN)."""
    frame = inputs.scores
    present = {k: frame[k].to_numpy("float64") for k in plots.SCORER_STYLE if k in frame and frame[k].notna().all()}
    names = dict(SCORER_NAMES)
    names["candidate"] = f"challenger v{inputs.evaluation.candidate_version}"
    if inputs.evaluation.champion_version is not None:
        names["champion"] = f"champion v{inputs.evaluation.champion_version}"
    query = frame[GROUP_COLUMN].to_numpy() if GROUP_COLUMN in frame else None
    return plots.ScoreSet(frame[LABEL_COLUMN].to_numpy("float64"), present, names, query)


def draw_figures(inputs: ReportInputs) -> dict[str, tuple[str, Figure]]:
    """file stem -> (caption, figure), in the order the report shows them."""
    data = score_set(inputs)
    figures: dict[str, tuple[str, Figure]] = {}
    if inputs.spec.objective == "lambdarank":
        figures["ndcg_at_k"] = (
            "Mean NDCG@k over the test requests with at least one relevant candidate: higher is better at every k.",
            plots.ndcg_figure(data),
        )
        figures["relevance_by_rank"] = (
            "Mean relevance of the candidate each scorer puts at rank 1..20: a good ranker starts high and falls.",
            plots.relevance_by_rank_figure(data),
        )
        figures["score_distributions"] = (
            "Scores by relevance grade: the more the grades' histograms are apart, the better they are told apart.",
            plots.score_distribution_figure(data),
        )
    else:
        figures["roc"] = (
            "ROC: true against false positive rate over all thresholds; higher and further left is better.",
            plots.roc_figure(data),
        )
        figures["precision_recall"] = (
            "Precision against recall; the grey line is a random ranking (the label rate). Higher is better.",
            plots.pr_figure(data),
        )
        figures["score_distributions"] = (
            "Score distributions of the positive and negative test rows: overlap is where the model is unsure.",
            plots.score_distribution_figure(data),
        )
        figures["calibration"] = (
            "Calibration: on the diagonal, a predicted probability is the observed rate; right, where the "
            "probabilities fall.",
            plots.calibration_figure(data),
        )
        figures["gain_lift"] = (
            "Cumulative gain and lift: the share of positives found when targeting the top-scored rows first.",
            plots.gain_figure(data),
        )
    if inputs.importance:
        figures["feature_importance"] = (
            "Total gain of each feature's splits in the trees, as a share of the model's total.",
            plots.importance_figure(inputs.importance),
        )
    contributions, features = inputs.shap
    figures["shap_summary"] = (
        "Each dot is a test row: how much the feature moved its score (right: up), coloured by the feature's value.",
        plots.shap_figure(contributions, features),
    )
    return figures


# -- building, logging, linking, fetching --------------------------------------------------------------------------
def local_report_dir(settings: Settings, name: str, version: str) -> Path:
    return settings.home / "reports" / name / f"v{version}"


def build_report(settings: Settings, spec: ModelSpec, version: str, out_dir: Path | None = None) -> Path:
    """Build the report of ``version``, log it to its run under ``report/`` and return the local ``index.html``.

    Written to ``out_dir`` (default ``<home>/reports/<model>/v<version>/``) as ``index.html`` (self-contained)
    plus the PNGs, which are logged next to it on the run so the MLflow UI shows them one by one too.
    """
    version = str(version)
    inputs = gather(settings, spec, version)
    figures = draw_figures(inputs)
    pngs = {stem: plots.png_bytes(fig) for stem, (_, fig) in figures.items()}
    captions = {stem: caption for stem, (caption, _) in figures.items()}
    target = out_dir or local_report_dir(settings, spec.name, version)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, png in pngs.items():
        (target / f"{stem}.png").write_bytes(png)
        written.append(target / f"{stem}.png")
    page = target / REPORT_PAGE
    page.write_text(render_html(inputs, captions, pngs), encoding="utf-8")
    client = connect(settings)
    for path in [page, *written]:
        client.log_artifact(inputs.version.run_id, str(path), REPORT_DIR)
    return page


def report_link(settings: Settings, name: str, version: str) -> str:
    """Where a reviewer opens the report of ``version``: the MLflow UI page of ``report/index.html`` on a tracking
    server, the artifact's location otherwise (a file URI on the local profile), and the ``mlctl`` command."""
    info = get_version(settings, name, version)
    run = connect(settings).get_run(info.run_id)
    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        where = (
            f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{info.run_id}"
            f"/artifactPath/{REPORT_DIR}/{REPORT_PAGE}"
        )
    else:
        where = f"{run.info.artifact_uri.rstrip('/')}/{REPORT_DIR}/{REPORT_PAGE}"
    return f"{where} (or run `mlctl report {name} {version}`)"


def fetch_report(settings: Settings, name: str, version: str, out_dir: Path | None = None) -> Path:
    """The report of ``version`` as a local ``index.html``: downloaded from its run, built there first if missing."""
    version = str(version)
    info = get_version(settings, name, version)
    target = out_dir or local_report_dir(settings, name, version)
    client = connect(settings)
    if f"{REPORT_DIR}/{REPORT_PAGE}" in {a.path for a in client.list_artifacts(info.run_id, REPORT_DIR)}:
        downloaded = Path(client.download_artifacts(info.run_id, REPORT_DIR, tempfile.mkdtemp(prefix="report-")))
        target.mkdir(parents=True, exist_ok=True)
        for path in downloaded.iterdir():
            shutil.copy2(path, target / path.name)
        return target / REPORT_PAGE
    try:
        spec = load_spec(settings.models_dir / f"{name}.yaml")
    except SpecError as exc:
        raise ReportError(f"{name} version {version} has no report on its run and none can be built: {exc}") from exc
    return build_report(settings, spec, version, out_dir=target)

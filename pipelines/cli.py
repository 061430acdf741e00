"""``mlctl``: the command line of Storefront ML (engineers and reviewers)."""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.console import progress_bar, runs_table, stack_table, validation_table
from pipelines.settings import Settings, get_settings

# MLflow's SQLAlchemy store warns about its own deprecated loader on every start; not actionable for users.
warnings.filterwarnings("ignore", message=".*noload.*loader strategy.*")

app = typer.Typer(help="Storefront ML: daily features, training, approval and serving.", no_args_is_help=True)
console = Console()


def _settings() -> Settings:
    return get_settings()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


def _print_outcomes(settings: Settings, title: str, outcomes: list) -> int:
    """One line per run (gate verdict, families, or the failing task's error); returns the exit code."""
    from pipelines.lake import Lake
    from pipelines.orchestration.outcomes import exit_code, summarize_run

    lake = Lake(settings)
    summaries = [
        summarize_run(
            lake,
            o.dag_id,
            o.logical_date,
            o.state,
            None if o.skipped else o.tasks,
            lambda t, o=o: o.errors.get(t.task_id),
            o.log_path,
        )
        for o in outcomes
    ]
    rows = [(s.logical_date, s.verdict) for s in summaries]
    lines = [
        "already done (--rerun runs it again)" if o.skipped else s.line
        for s, o in zip(summaries, outcomes, strict=True)
    ]
    console.print(runs_table(title, rows, lines))
    for stuck in (s for o in outcomes for s in o.replaced):
        console.print(
            f"replaced {stuck.dag_id} {stuck.logical_date}'s run {stuck.run_id}, left 'running' because {stuck.reason}",
            markup=False,
            highlight=False,
        )
    return exit_code(summaries)


RUN_HELP = """Run one DAG for one logical date and follow it until it ends.

Prints one line with the outcome: for a training run the gate verdict (promoted, waiting for approval with the
command that answers it, rejected with the failed checks, or skipped with the reason); for daily_features the
families that ran and those skipped. Airflow's log goes to a file whose path is printed.

A training run whose gate passed waits for a reviewer: the command that answers is printed and the run is
followed until the answer (Ctrl-C stops following; the run goes on in Airflow).

Exit codes: 0 the run succeeded (or was skipped); 1 the run failed (the failing task and its
error are printed); 2 the gate rejected the candidate.
"""


def _approval_announcer(settings: Settings, client, dag_id: str, day: dt.date):
    """On the stack: once a training run's approval task waits, print the verdict and the command that answers
    it (the run is followed on until the reviewer answers; Ctrl-C stops following, not the run)."""
    from pipelines.lake import Lake
    from pipelines.orchestration import runs
    from pipelines.orchestration.outcomes import TRAINING_PREFIX, describe_training, training_outcome_key

    announced: list[str] = []

    def check(run: dict) -> None:
        if announced or not dag_id.startswith(TRAINING_PREFIX) or run["state"] in runs.FINISHED:
            return
        if runs.waiting_for_review(client, dag_id, run["dag_run_id"]):
            model = dag_id.removeprefix(TRAINING_PREFIX)
            line, _ = describe_training(model, Lake(settings).read_json(training_outcome_key(model, day)))
            announced.append(line)
            console.print(f"{dag_id} {day}: {line}", markup=False, highlight=False)

    return check


@app.command(help=RUN_HELP)
def run(
    dag_id: Annotated[str, typer.Argument(help="DAG id, e.g. daily_features or train_purchase_intent")],
    date: Annotated[str, typer.Option("--date", help="Logical date YYYY-MM-DD")],
) -> None:
    from pipelines.orchestration import runs

    settings = _settings()
    day = runs.as_date(date)
    if settings.airflow_api_url:
        from pipelines.orchestration.airflow_client import AirflowAPIError, AirflowClient, AirflowUnreachable

        try:
            client = AirflowClient(settings)
            waiting = _approval_announcer(settings, client, dag_id, day)
            with console.status(f"{dag_id} {day}: triggered, waiting for the scheduler") as spinner:

                def on_poll(r: dict) -> None:
                    spinner.update(f"{dag_id} {day}: {r['state']} ({r['dag_run_id']})")
                    waiting(r)

                outcome = runs.trigger_and_follow(client, dag_id, day, on_poll=on_poll)
            outcome = runs.stack_task_details(client, outcome, settings.home / "logs")
        except AirflowUnreachable as exc:
            _fail(f"{exc}; then the same `mlctl run` follows the run again (or reruns it if it ended)")
        except AirflowAPIError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            console.print(f"stopped following {dag_id} {day}; the run goes on in Airflow (`mlctl status`)")
            raise typer.Exit(code=130) from None
    else:
        logfile = settings.home / "logs" / f"{dag_id}.log"
        console.print(f"running {dag_id} for {day} in-process (local profile); Airflow's log: {logfile}")
        if dag_id.startswith("train_"):
            console.print("if the gate passes, the run waits for a reviewer: `mlctl approvals` shows the request")
        with console.status(f"{dag_id} {day}: running"):
            outcome = runs.run_in_process(settings, dag_id, [day], logfile=logfile)[0]
    raise typer.Exit(code=_print_outcomes(settings, dag_id, [outcome]))


@app.command()
def backfill(
    dag: Annotated[str, typer.Option("--dag", help="DAG id")],
    start: Annotated[str, typer.Option("--from", help="First logical date YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--to", help="Last logical date YYYY-MM-DD (inclusive)")],
    rerun: Annotated[bool, typer.Option(help="Also rerun days that already succeeded")] = False,
) -> None:
    """Backfill a DAG over a date range: one line per run with its outcome. Exit codes as `mlctl run`'s (0, 1, 2)."""
    from pipelines.orchestration import runs

    settings = _settings()
    try:
        days = runs.days_between(start, end)
    except ValueError as exc:
        _fail(str(exc))
    if settings.airflow_api_url:
        from pipelines.orchestration.airflow_client import AirflowAPIError

        try:
            outcomes = _backfill_on_stack(settings, dag, days, rerun)
        except AirflowAPIError as exc:
            _fail(str(exc))
    else:
        logfile = settings.home / "logs" / f"{dag}.log"
        console.print(f"Airflow's log: {logfile}")
        with progress_bar(console) as progress:
            bar = progress.add_task(f"{dag}", total=len(days))
            outcomes = runs.run_in_process(
                settings,
                dag,
                days,
                skip_succeeded=not rerun,
                logfile=logfile,
                on_done=lambda o: progress.advance(bar),
                lanes=settings.local_lanes,
                on_plan=console.print,
            )
    code = _print_outcomes(settings, f"backfill of {dag}", outcomes)
    if code == 0 and len(outcomes) < len(days):
        code = 1
    if len(outcomes) < len(days):
        console.print(f"stopped after {len(outcomes)} of {len(days)} days")
    raise typer.Exit(code=code)


def _backfill_on_stack(settings: Settings, dag: str, days: list[dt.date], rerun: bool) -> list:
    from pipelines.orchestration.airflow_client import AirflowClient
    from pipelines.orchestration.runs import FINISHED, RunOutcome, logical_datetime, stack_task_details

    client = AirflowClient(settings)
    first, last = logical_datetime(days[0]).isoformat(), logical_datetime(days[-1]).isoformat()
    created = client.create_backfill(dag, first, last, reprocess="completed" if rerun else "failed")
    console.print(f"Airflow backfill {created['id']} of {dag} created for {days[0]} .. {days[-1]}")
    with progress_bar(console) as progress:
        bar = progress.add_task(f"backfill {created['id']}", total=len(days))
        while True:
            found = client.runs_between(dag, first, last)
            progress.update(bar, completed=sum(r["state"] in FINISHED for r in found))
            if client.backfill(created["id"]).get("completed_at") and all(r["state"] in FINISHED for r in found):
                break
            time.sleep(2)
    outcomes = [RunOutcome(dag, r["logical_date"][:10], r["state"], r["dag_run_id"]) for r in found]
    return [stack_task_details(client, o, settings.home / "logs") for o in outcomes]


def _reviewer_client(settings: Settings, asserted: str | None):
    """The Airflow client of the logged-in reviewer (``--as`` only confirms the name); exits 1 with the fix."""
    from pipelines.orchestration.airflow_client import AirflowClient
    from pipelines.registry.identity import IdentityError, require_identity

    try:
        return AirflowClient(settings, identity=require_identity(settings, asserted))
    except IdentityError as exc:
        _fail(str(exc))


def _answer(model: str, version: str, asserted: str | None, comment: str, option: str) -> None:
    from pipelines.orchestration.airflow_client import AirflowAPIError
    from pipelines.registry.promotion import PromotionRefused, check_reviewer

    settings, spec = _spec(model)
    client = _reviewer_client(settings, asserted)
    try:
        if option == "Approve":  # refused here before Airflow takes the answer; promote() checks again
            check_reviewer(settings, spec, str(version), client.username)
        pending = client.pending_approvals(dag_id=f"train_{model}")
        matching = [p for p in pending if p.field("model") == model and p.field("version") == str(version)]
        if not matching:
            waiting = ", ".join(f"{p.field('model')} v{p.field('version')}" for p in pending) or "none"
            _fail(f"no approval request is waiting for {model} version {version} (waiting: {waiting})")
        request = matching[0]
        client.respond(request, option, {"comment": comment})
    except (AirflowAPIError, PromotionRefused) as exc:
        _fail(str(exc))
    verb = "approved" if option == "Approve" else "rejected"
    console.print(
        f"[bold]{client.username}[/bold] {verb} {model} version {version} ({request.dag_id} / {request.run_id})"
    )


AS_HELP = "Only confirms who you are logged in as (`mlctl login`); a different name is an error"


@app.command("login")
def login_command(
    user: Annotated[str | None, typer.Option("--user", help="Your Airflow user name (default: your OS user)")] = None,
    token_stdin: Annotated[bool, typer.Option("--token-stdin", help="Read an Airflow token from stdin")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read your password from stdin (scripts; no prompt)")
    ] = False,
) -> None:
    """Log in to Airflow as yourself: your token is kept 0600 in your own config dir; approve/reject act as you."""
    import getpass
    import sys

    from pipelines.orchestration.airflow_client import AirflowAPIError, login
    from pipelines.registry.identity import IdentityError, save_identity

    settings = _settings()
    name = user or ("" if token_stdin else getpass.getuser())
    try:
        if token_stdin:
            identity = login(settings, name, token=sys.stdin.readline().strip())
        else:
            secret = (
                sys.stdin.readline().rstrip("\n")
                if password_stdin
                else getpass.getpass(f"Airflow password of {name}: ")
            )
            identity = login(settings, name, password=secret)
        path = save_identity(identity)
    except (AirflowAPIError, IdentityError) as exc:
        _fail(str(exc))
    console.print(f"logged in as [bold]{identity.user}[/bold] until {identity.expires_at:%Y-%m-%d %H:%M} UTC ({path})")


@app.command()
def whoami() -> None:
    """Who approve/reject/rollback act as: the logged-in identity, its Airflow and when it expires."""
    from pipelines.registry.identity import IdentityError, api_label, identity_path, load_identity

    settings = _settings()
    try:
        identity = load_identity()
    except IdentityError as exc:
        _fail(str(exc))
    if identity is None:
        _fail(f"not logged in (no {identity_path()}); `mlctl login --user YOUR_NAME`")
    note = (
        "" if identity.api == api_label(settings) else f" [red](not this profile's Airflow {api_label(settings)})[/red]"
    )
    expired = " [red](expired)[/red]" if identity.expires_at <= dt.datetime.now(dt.UTC) else ""
    console.print(f"{identity.user} on {identity.api}{note}, until {identity.expires_at:%Y-%m-%d %H:%M} UTC{expired}")


@app.command()
def logout() -> None:
    """Forget your login (the token file in your config dir)."""
    from pipelines.registry.identity import clear_identity, identity_path

    console.print("logged out" if clear_identity() else f"not logged in ({identity_path()} absent)")


@app.command()
def approvals(
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="MODEL",
            help="Wait until MODEL's training run asks for a review; exit 1 if a run of it ends without asking",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="With --wait: give up (exit 1) after this many seconds")] = 3600,
) -> None:
    """Candidates waiting for a reviewer (Airflow's "Required Actions"), with the command that answers each."""
    from rich.table import Table

    from pipelines.orchestration.airflow_client import AirflowAPIError, AirflowClient
    from pipelines.orchestration.runs import NoApprovalRequest, wait_for_request

    settings = _settings()
    try:
        client = _reviewer_client(settings, reviewer) if reviewer else AirflowClient(settings)
        pending = wait_for_request(client, wait, timeout) if wait else client.pending_approvals()
    except (AirflowAPIError, NoApprovalRequest) as exc:
        _fail(str(exc))
    if not pending:
        console.print("no approval request is waiting")
        return
    table = Table(title="waiting for a reviewer")
    for column in ("model", "version", "run", "reviewers", "answer with"):
        table.add_column(column)
    for p in pending:
        model, version = p.field("model") or "?", p.field("version") or "?"
        command = f"mlctl approve {model} {version} --comment ..."
        table.add_row(model, version, f"{p.dag_id} / {p.run_id}", ", ".join(p.assigned_users), command)
    console.print(table)


@app.command()
def approve(
    model: str,
    version: str,
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
    comment: Annotated[str, typer.Option(help="Why")] = "",
) -> None:
    """Approve a candidate waiting in its training run's approval task, as the logged-in reviewer."""
    _answer(model, version, reviewer, comment, "Approve")


@app.command()
def reject(
    model: str,
    version: str,
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
    comment: Annotated[str, typer.Option(help="Why")] = "",
) -> None:
    """Reject a candidate as the logged-in reviewer: nothing is promoted; it stays rejected unless reopened."""
    _answer(model, version, reviewer, comment, "Reject")


def _registry_reviewer(settings: Settings, asserted: str | None) -> str:
    """The logged-in reviewer, confirmed by Airflow (the token's signature is checked there, not trusted here)."""
    from pipelines.orchestration.airflow_client import AirflowAPIError

    client = _reviewer_client(settings, asserted)
    try:
        return client.whoami()
    except AirflowAPIError as exc:
        _fail(f"Airflow did not accept your login ({exc}); `mlctl login` again")


@app.command()
def reopen(
    model: str,
    version: str,
    comment: Annotated[str, typer.Option(help="Why the rejection no longer stands (required)")],
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
) -> None:
    """Take a rejected version back to review (audited); its next training run asks for approval again."""
    from pipelines.registry.decisions import DecisionRefused
    from pipelines.registry.decisions import reopen as reopen_version

    settings, spec = _spec(model)
    by = _registry_reviewer(settings, reviewer)
    try:
        reopen_version(settings, spec, version, by, comment)
    except DecisionRefused as exc:
        _fail(str(exc))
    console.print(f"{by} reopened {model} v{version}; its next training run asks for approval again")


@app.command()
def rollback(
    model: str,
    comment: Annotated[str, typer.Option(help="Why (required)")],
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
) -> None:
    """Move the champion back to the version promoted before it (from the audit log), as the logged-in reviewer;
    serving swaps within its refresh interval."""
    from pipelines.registry.promotion import PromotionRefused
    from pipelines.registry.promotion import rollback as rollback_champion

    settings, spec = _spec(model)
    by = _registry_reviewer(settings, reviewer)
    try:
        result = rollback_champion(settings, spec, by, comment)
    except PromotionRefused as exc:
        _fail(str(exc))
    console.print(
        f"{by} rolled {model} back: v{result.version} is the champion again (v{result.previous_version} demoted)"
    )


@app.command()
def restore(
    model: str,
    comment: Annotated[str, typer.Option(help="Why (required)")],
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
) -> None:
    """Put the aliases back where the audit log says they are (after a hand-made alias move), audited."""
    from pipelines.registry.tamper import restore_aliases, verify_aliases

    settings, spec = _spec(model)
    by = _registry_reviewer(settings, reviewer)
    if not comment.strip():
        _fail("restore needs a --comment saying why")
    try:
        restore_aliases(settings, spec, by, comment)
    except PermissionError as exc:
        _fail(str(exc))
    left = verify_aliases(settings, spec)
    for finding in left:
        console.print(f"[red]{finding.alias}:[/red] {finding.message}", markup=True, highlight=False)
    console.print(f"{model}: aliases restored from the audit log by {by}" if not left else "")
    if left:
        raise typer.Exit(code=1)


@app.command()
def history(
    model: str,
    as_json: Annotated[bool, typer.Option("--json", help="Every audit event as JSON")] = False,
) -> None:
    """Every decision and alias move of MODEL from the audit log: when, what, which version, who, why, the gate
    and approvals; a broken chain (an edited or removed event) is flagged in red."""
    from rich.table import Table

    from pipelines.registry.audit import read_audit, verify_chain

    settings, spec = _spec(model)
    events = read_audit(settings, model)
    if as_json:
        typer.echo(json.dumps(events, indent=2, default=str))
        return
    table = Table(title=f"{model}: audit log ({len(events)} events)")
    for column in ("when (UTC)", "action", "version", "by", "why", "champion before", "gate / approvals"):
        table.add_column(column, overflow="fold")
    for e in events:
        approvals = ", ".join(a.get("approval.by", "") for a in e.get("approvals") or [])
        table.add_row(
            str(e.get("at", ""))[:19].replace("T", " "),
            str(e.get("action")),
            f"v{e.get('version')}",
            str(e.get("by") or e.get("approval", {}).get("approval.by") or ""),
            str(e.get("comment") or ""),
            "" if e.get("previous_champion") is None else f"v{e['previous_champion']}",
            " / ".join(x for x in (str(e.get("gate") or ""), approvals) if x),
        )
    console.print(table)
    problems = verify_chain(events)
    for problem in problems:
        console.print(f"[red]tampered:[/red] {problem}", highlight=False)
    if problems:
        raise typer.Exit(code=1)


@app.command()
def report(
    model: str,
    version: str,
    out: Annotated[Path | None, typer.Option("--out", help="Directory to write index.html and the plots to")] = None,
    open_page: Annotated[bool, typer.Option("--open/--no-open", help="Open the report in a web browser")] = True,
) -> None:
    """The reviewer's report of a candidate (HTML): fetched from its MLflow run, built there first if missing."""
    import os
    import webbrowser

    from pipelines.evaluation.report import ReportError, fetch_report
    from pipelines.registry.registry import ModelVersionNotFound

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        page = fetch_report(_settings(), model, version, out)
    except (ModelVersionNotFound, ReportError) as exc:
        _fail(str(exc))
    typer.echo(page)
    if open_page:
        webbrowser.open(page.resolve().as_uri())


@app.command()
def monitor(
    model: Annotated[str, typer.Argument(help="Model name (a spec in models/)")],
    days: Annotated[int, typer.Option("--days", min=1, help="Newest daily reports shown")] = 30,
    date: Annotated[
        str | None, typer.Option("--date", help="(Re)compute the report of this day YYYY-MM-DD first")
    ] = None,
    open_page: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a web browser")] = True,
) -> None:
    """The monitoring page of MODEL's champion (HTML): drift of its features and scores against its training rows
    per day, its realised main metric once labels matured; prints the page's path."""
    import webbrowser

    from pipelines.lake import Lake
    from pipelines.monitoring.drift_reports import publish_drift
    from pipelines.monitoring.page import build_monitoring_page
    from pipelines.monitoring.watch import MonitoringError, monitor_model
    from pipelines.training.dataset import TrainingSetError

    settings, spec = _spec(model)
    try:
        if date is not None:
            lake = Lake(settings)
            report = monitor_model(settings, spec, date, lake)
            if report is None:
                _fail(f"model {model!r} has no champion to watch; promote one first (mlctl status)")
            publish_drift(lake, report)
        page = build_monitoring_page(settings, model, days)
    except (MonitoringError, TrainingSetError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(page)
    if open_page:
        webbrowser.open(page.resolve().as_uri())


@app.command()
def check(
    model: Annotated[str, typer.Argument(help="Model name (a spec in models/)")],
    date: Annotated[str, typer.Option("--date", help="Logical date YYYY-MM-DD of the training run")],
) -> None:
    """What a training run of MODEL for --date needs against what the lake holds; exits 0 when it can run."""
    from pipelines.console import readiness_table
    from pipelines.lake import Lake
    from pipelines.specs import SpecError, load_spec
    from pipelines.training.readiness import check_readiness

    settings = _settings()
    try:
        spec = load_spec(settings.models_dir / f"{model}.yaml")
        result = check_readiness(Lake(settings), spec, date)
    except (SpecError, ValueError) as exc:
        _fail(str(exc))
    console.print(readiness_table(result))
    colour = "green" if result.ready else "red"
    console.print(f"[{colour}]{'ready' if result.ready else 'not ready'}:[/{colour}] ", end="")
    console.print(result.verdict, soft_wrap=True, markup=False, highlight=False)
    if not result.ready:
        raise typer.Exit(code=1)


@app.command("validate-specs")
def validate_specs() -> None:
    """Check every model spec in models/: its form, and that its feature service and reviewers exist."""
    from pipelines.spec_check import check_specs

    checks = check_specs(_settings())
    for check in checks:
        if check.ok:
            console.print(f"[green]ok[/green]     {check.path.name} ({check.name})", soft_wrap=True)
        for problem in check.problems:
            console.print("[red]error[/red] ", end=" ")
            console.print(problem, soft_wrap=True, markup=False, highlight=False)
    if not all(c.ok for c in checks):
        raise typer.Exit(code=1)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """Per model: champion, main metric against the best achievable and the baseline, approval, what is waiting;
    the last runs of every DAG (with skipped families); data contracts. --json keeps every logged metric."""
    from pipelines.console import dag_runs_table, model_table
    from pipelines.status import collect_status, skew_line

    report = collect_status(_settings())
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    for name, model in report["models"].items():
        console.print(model_table(name, model["summary"]))
        for finding in model.get("alias_findings") or []:
            console.print("[red]alias disagrees with the audit log:[/red] ", end="")
            console.print(f"{finding['message']}; fix: {finding['fix']}", markup=False, highlight=False)
        console.print(skew_line(model.get("skew")), markup=False, highlight=False)
        console.print(model["drift"], markup=False, highlight=False)
    if report.get("airflow_error"):
        console.print("[red]Airflow unreachable:[/red] ", end="")
        console.print(report["airflow_error"], markup=False, highlight=False)
    else:
        console.print(dag_runs_table(report["dags"]))
    for run in report.get("stuck_runs") or []:
        console.print("[red]stuck run:[/red] ", end="")
        console.print(
            f"{run['dag_id']} {run['logical_date']} ({run['run_id']}) is still 'running' but {run['reason']}; "
            f"rerun it: {run['command']}",
            markup=False,
            highlight=False,
        )
    _print_online_views(report)
    if report.get("validation"):
        console.print(validation_table(report["validation"]))
    elif report.get("validation_error"):
        console.print(f"[red]validation reports unreadable:[/red] {report['validation_error']}")


def _print_online_views(report: dict) -> None:
    """One line when every online view is materialized as far as its lake; a red line per view behind."""
    if report.get("online_error"):
        console.print("[red]online store unreadable:[/red] ", end="")
        console.print(report["online_error"], markup=False, highlight=False)
        return
    views = report.get("online_views") or []
    behind = [v for v in views if v["behind"]]
    for view in behind:
        console.print("[red]online store:[/red] ", end="")
        console.print(view["message"], markup=False, highlight=False)
    if views and not behind:
        newest = max((v["materialized_through"] for v in views if v["materialized_through"]), default=None)
        console.print(f"online store: all {len(views)} views materialized as far as the lake (through ds={newest})")


@app.command()
def ingest(
    source: Annotated[Path, typer.Option("--source", help="The file to land (CSV, CSV.gz or parquet)")],
    mapping: Annotated[Path, typer.Option("--mapping", help="YAML mapping onto canonical tables (mappings/)")],
    table: Annotated[str, typer.Option("--table", help="Canonical table: events or orders")] = "events",
    derive_users: Annotated[
        bool,
        typer.Option("--derive-users", help="Also write users/follows snapshots from the events or orders"),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="One table row per day written")] = False,
) -> None:
    """Land a real file as daily partitions of the lake (each day in the file replaces that day's partition)."""
    from rich.table import Table

    from pipelines.data.adapters import IngestError
    from pipelines.data.ingest import ingest as run_ingest
    from pipelines.data.ingest import summary_lines

    stages = {"read": "reading", "map": "mapping and checking", "write": "writing partitions"}
    try:
        with progress_bar(console) as progress:
            bars: dict[str, int] = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in bars:
                    bars[stage] = progress.add_task(f"{stages.get(stage, stage)} {source.name}", total=total)
                progress.update(bars[stage], completed=done, total=total)

            report = run_ingest(_settings(), source, mapping, table, derive_users=derive_users, on_progress=on_progress)
    except IngestError as exc:
        _fail(f"{exc}\nnothing was written to the lake")
    days = Table(title=f"{source} -> lake")
    columns = ("table", "day", "rows", "partition") if verbose else ("table", "first day", "last day", "days", "rows")
    for column in (*columns, "replaced"):
        days.add_column(column)
    for name, per_day in report.days.items():
        replaced = set(report.replaced[name])
        if verbose:
            for day, rows in per_day.items():
                days.add_row(name, str(day), f"{rows:,}", report.uris[name][day], "yes" if day in replaced else "")
        elif per_day:
            first, last = min(per_day), max(per_day)
            rows = sum(per_day.values())
            days.add_row(name, str(first), str(last), f"{len(per_day):,}", f"{rows:,}", f"{len(replaced):,} days")
    console.print(days)
    for line in summary_lines(report):
        console.print(line)
    for note in report.notes:
        console.print(f"note: {note}")
    for drop in report.drops[:20]:
        console.print(f"[yellow]dropped[/yellow] line {drop.line}: {drop.reason}")
    if len(report.drops) > 20:
        console.print(f"[yellow]dropped[/yellow] {len(report.drops) - 20} more lines (see IngestReport.drops)")


stack_app = typer.Typer(help="The loopback stack of the stack profile (docs/stack.md).", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@stack_app.command("init")
def stack_init(path: Annotated[str, typer.Option(help="Env file to write")] = ".env") -> None:
    """Write an env file for the stack profile with fresh loopback S3 credentials (never overwrites)."""
    from pipelines.stack.envfile import write_env_file

    try:
        written = write_env_file(Path(path))
    except FileExistsError as exc:
        _fail(str(exc))
    console.print(f"wrote {written}: the stack profile with new S3 credentials; next: `mlctl stack up`")


@stack_app.command("bootstrap")
def stack_bootstrap() -> None:
    """Create the PostgreSQL databases and S3 buckets of the settings if missing (for compose, Helm, your own)."""
    from pipelines.stack import resources

    settings = _settings()
    try:
        databases = resources.ensure_databases(settings)
        buckets = resources.ensure_buckets(settings)
    except resources.StackError as exc:
        _fail(str(exc))
    console.print(f"databases created: {', '.join(databases) or 'none (all there)'}")
    console.print(f"buckets created: {', '.join(buckets) or 'none (all there)'}")


@stack_app.command("up")
def stack_up(timeout: Annotated[float, typer.Option(help="Seconds to wait for health")] = 180.0) -> None:
    """Start S3, MLflow, Airflow (api-server, scheduler, dag-processor, triggerer) and serving; wait for health."""
    from pipelines.stack import supervisor
    from pipelines.stack.resources import StackError

    try:
        result = supervisor.up(_settings(), timeout=timeout, on_event=lambda m: console.print(f"  {m}"))
    except StackError as exc:
        _fail(str(exc))
    console.print(stack_table(result))


@stack_app.command("down")
def stack_down() -> None:
    """Stop every process of the stack (nothing stored is deleted)."""
    from pipelines.stack import supervisor

    stopped = supervisor.down(_settings())
    console.print(f"stack stopped ({stopped} processes)" if stopped else "the stack was not running")


@stack_app.command("status")
def stack_status() -> None:
    """Each service's health, URL and the stack's memory; exits 1 unless all are healthy."""
    from pipelines.stack import supervisor

    result = supervisor.status(_settings())
    if not result.running:
        console.print("the stack is not running (`mlctl stack up` starts it)")
        raise typer.Exit(code=1)
    console.print(stack_table(result))
    if not result.healthy:
        raise typer.Exit(code=1)


@app.command()
def serve() -> None:
    """Start the online serving app (FastAPI) on the configured host and port."""
    from pipelines.serving.server import run as run_server
    from pipelines.serving.workers import PortUnavailable

    try:
        code = run_server(_settings())
    except PortUnavailable as exc:
        _fail(f"{exc} (STOREFRONT_SERVING_HOST / STOREFRONT_SERVING_PORT)")
    raise typer.Exit(code=code)


key_app = typer.Typer(help="API keys of the serving app (pipelines/serving/auth.py).", no_args_is_help=True)
app.add_typer(key_app, name="serving-key")


@key_app.command("add")
def serving_key_add(
    name: Annotated[str, typer.Argument(help="Who the key is for, e.g. checkout-service")],
    models: Annotated[str, typer.Option(help="Comma-separated models the key may call, or '*' for all")] = "*",
) -> None:
    """Add (or replace) an API key in STOREFRONT_SERVING_API_KEYS's file; the token is shown once, only its hash
    is kept. A running `mlctl serve` reloads the file within its refresh interval."""
    from pipelines.serving.auth import ApiKeysError, add_key

    settings = _settings()
    if settings.serving_api_keys is None:
        _fail("set STOREFRONT_SERVING_API_KEYS to the keys file to write (e.g. ~/.storefront/serving_keys.yaml)")
    try:
        token = add_key(settings.serving_api_keys, name, [m.strip() for m in models.split(",") if m.strip()])
    except ApiKeysError as exc:
        _fail(str(exc))
    console.print(f"key {name!r} added to {settings.serving_api_keys} (0600, hash only); its token, shown once:")
    typer.echo(token)


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="Days to simulate")] = 35,
    users: Annotated[int, typer.Option(help="Simulated users")] = 5000,
) -> None:
    """The whole chain on embedded defaults: simulate, daily DAG runs, training, approval, serving."""
    from pipelines.demo import run_demo

    settings = get_settings(sim_users=users)
    if settings.profile != "local":
        _fail("`mlctl demo` runs on the local profile; unset STOREFRONT_PROFILE")
    raise typer.Exit(code=run_demo(settings, days, console))


def _spec(model: str):
    from pipelines.specs import SpecError, load_spec

    settings = _settings()
    try:
        return settings, load_spec(settings.models_dir / f"{model}.yaml")
    except (SpecError, FileNotFoundError, ValueError) as exc:
        _fail(f"model {model!r}: {exc}")


@app.command()
def rollout(
    model: Annotated[str, typer.Argument(help="Model name (a spec in models/)")],
    version: Annotated[str, typer.Argument(help="The challenger: a version that passed the gate")],
    mode: Annotated[str, typer.Option(help="shadow: scored and logged, never returned; split: answers a share")],
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
    share: Annotated[
        float | None, typer.Option(help="split: share of entities the challenger answers, (0, 0.5]")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Rollout name (default: the first unused ab1, ab2, ...)")] = None,
    comment: Annotated[str, typer.Option(help="Why")] = "",
) -> None:
    """Serve VERSION beside the champion (shadow or a sticky split by entity), as a reviewer's audited decision."""
    from pipelines.registry.promotion import PromotionRefused
    from pipelines.registry.registry import ModelVersionNotFound
    from pipelines.registry.rollouts import RolloutError, next_name, start_rollout

    settings, spec = _spec(model)
    reviewer = _registry_reviewer(settings, reviewer)
    if mode == "split" and share is None:
        _fail("a split needs --share, the challenger's share of entities in (0, 0.5], e.g. --share 0.1")
    try:
        name = name or next_name(settings, model)
        started = start_rollout(settings, spec, version, mode, 1.0 if share is None else share, name, reviewer, comment)
    except (RolloutError, PromotionRefused, ModelVersionNotFound) as exc:
        _fail(str(exc))
    terms = "shadow (scored and logged, never returned)" if started.mode == "shadow" else f"split {started.share:g}"
    console.print(
        f"{model} v{started.version}: rollout {started.name!r} started by {reviewer}: {terms}, alias "
        f"{started.alias}; serving picks it up at its next refresh; `mlctl ab-report {model} --name {started.name}`",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command("rollout-end")
def rollout_end(
    model: Annotated[str, typer.Argument(help="Model name (a spec in models/)")],
    reviewer: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
    promote: Annotated[
        bool | None, typer.Option("--promote/--stop", help="Promote the challenger (approval) or stop the rollout")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Rollout name (default: the model's active rollout)")] = None,
    comment: Annotated[str, typer.Option(help="Why")] = "",
) -> None:
    """End a rollout: --stop removes the challenger; --promote makes it the champion through the same checks
    and audit as an approval (gate, reviewer, not its trainer, fresh online features)."""
    from pipelines.registry.promotion import PromotionRefused
    from pipelines.registry.rollouts import RolloutError, end_rollout

    if promote is None:
        _fail("say how it ends: --promote (the challenger becomes the champion) or --stop")
    settings, spec = _spec(model)
    reviewer = _registry_reviewer(settings, reviewer)
    try:
        ended = end_rollout(settings, spec, name, reviewer, bool(promote), comment)
    except (RolloutError, PromotionRefused) as exc:
        _fail(f"{exc} (the rollout goes on)")
    what = f"v{ended.version} is the champion" if promote else "the champion alone serves"
    console.print(
        f"{model}: rollout {ended.name!r} {ended.outcome} by {reviewer}; {what}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command("ab-report")
def ab_report_command(
    model: Annotated[str, typer.Argument(help="Model name (a spec in models/)")],
    name: Annotated[str | None, typer.Option(help="Rollout name (default: the active one, else the newest)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the report as an HTML page here")] = None,
) -> None:
    """A rollout's arms compared on labelled outcomes: the main metric per arm with 95% bootstrap intervals, the
    challenger-minus-champion difference and a recommendation (promote, keep the champion, or wait for labels)."""
    from pipelines.monitoring.ab import AbReportError, ab_report, ab_table, headline, render_ab_html, waiting_line
    from pipelines.registry.rollouts import RolloutError

    settings, spec = _spec(model)
    try:
        report = ab_report(settings, spec, name)
    except (AbReportError, RolloutError) as exc:
        _fail(str(exc))
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_ab_html(report), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    console.print(ab_table(report))
    for line in [headline(report), waiting_line(report), *report.notes]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if html is not None:
        console.print(f"page: {html}", markup=False, highlight=False)


if __name__ == "__main__":
    app()

"""`mlctl demo`: the whole platform on embedded defaults, narrated step by step.

Simulate a social-commerce world, run the daily features DAG for every day through Airflow, run the training
DAG, play the reviewer through `mlctl approve` (the same REST call a person would make), start the serving app,
score users over HTTP, and print where everything is. Rerunning it skips days already done and never
duplicates a model version or an alias move.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from pipelines.console import progress_bar
from pipelines.orchestration.airflow_client import AirflowClient, PendingApproval
from pipelines.orchestration.airflow_env import configure_airflow
from pipelines.orchestration.runs import run_in_process
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, load_specs

REVIEWER_COMMENT = "Gate passed and the report looks sound; approving for the demo."


def _mlctl() -> str:
    return str(Path(sys.executable).with_name("mlctl"))


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _daily_runs(settings: Settings, days: list[dt.date], console: Console) -> bool:
    logfile = settings.home / "logs" / "daily_features.log"
    console.print(f"Airflow task logs: {logfile}")
    with progress_bar(console) as progress:
        bar = progress.add_task("daily_features", total=len(days))
        outcomes = run_in_process(
            settings,
            "daily_features",
            days,
            skip_succeeded=True,
            logfile=logfile,
            on_done=lambda o: progress.advance(bar),
        )
    skipped = sum(o.skipped for o in outcomes)
    failed = [o for o in outcomes if o.state != "success"]
    if failed:
        console.print(f"[red]daily_features failed for {failed[0].logical_date}; see {logfile}[/red]")
        return False
    console.print(f"{len(outcomes) - skipped} day(s) run, {skipped} already done")
    return True


def _wait_for_approval_request(
    client: AirflowClient, spec: ModelSpec, training: subprocess.Popen, console: Console
) -> PendingApproval | None:
    with console.status(f"train_{spec.name}: training set, LightGBM, evaluation, gate ..."):
        while training.poll() is None:
            pending = client.pending_approvals(dag_id=f"train_{spec.name}")
            if pending:
                return pending[0]
            time.sleep(2)
    return None


def _train_and_approve(settings: Settings, spec: ModelSpec, end: dt.date, console: Console) -> bool:
    logfile = settings.home / "logs" / f"train_{spec.name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [_mlctl(), "run", f"train_{spec.name}", "--date", end.isoformat()]
    console.print(f"$ mlctl run train_{spec.name} --date {end}   (logs: {logfile})")
    with open(logfile, "a") as log:
        training = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        client = AirflowClient(settings)
        request = _wait_for_approval_request(client, spec, training, console)
        if request is None:
            ok = training.wait() == 0
            console.print(
                "No approval was requested: the gate stopped the candidate or it is already the champion "
                f"(see `mlctl status` and {logfile})."
                if ok
                else f"[red]training run failed; see {logfile}[/red]"
            )
            return ok
        version = request.field("version")
        console.print(f"Approval request waiting in Airflow: [italic]{request.subject}[/italic]")
        reviewer = spec.reviewers[0]
        console.print(f"\n[bold]Playing the reviewer[/bold] {reviewer!r}, through the same REST API a person uses:")
        approve = [
            _mlctl(),
            "approve",
            spec.name,
            str(version),
            "--as",
            reviewer,
            "--comment",
            REVIEWER_COMMENT,
        ]
        console.print("$ " + shlex.join(["mlctl", *approve[1:]]))
        if subprocess.run(approve, env=os.environ.copy()).returncode != 0:
            training.terminate()
            return False
        with console.status("promoting (online features fresh? alias move)"):
            code = training.wait()
    if code != 0:
        console.print(f"[red]training run failed after approval; see {logfile}[/red]")
    return code == 0


def _serve_and_score(settings: Settings, spec: ModelSpec, console: Console) -> bool:
    port = _free_port(settings.serving_port)
    env = {**os.environ, "STOREFRONT_SERVING_PORT": str(port)}
    logfile = settings.home / "logs" / "serving.log"
    base = f"http://{settings.serving_host}:{port}"
    console.print(f"$ mlctl serve   ({base}, logs: {logfile})")
    with open(logfile, "a") as log:
        server = subprocess.Popen([_mlctl(), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 90
            while time.time() < deadline:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                console.print(f"[red]serving did not become healthy; see {logfile}[/red]")
                return False
            user_ids = [1, 2, 3, 42, 4242]
            console.print(f"$ curl -X POST {base}/v1/models/{spec.name}/predict -d '{{\"user_ids\": {user_ids}}}'")
            resp = httpx.post(f"{base}/v1/models/{spec.name}/predict", json={"user_ids": user_ids}, timeout=30)
            if resp.status_code != 200:
                console.print(f"[red]prediction failed ({resp.status_code}): {resp.text}[/red]")
                return False
            body = resp.json()
            table = Table(title=f"{spec.name} v{body['version']} over HTTP")
            table.add_column("user_id")
            table.add_column("P(purchase in 7 days)")
            for p in body["predictions"]:
                table.add_row(str(p["user_id"]), f"{p['score']:.3f}")
            console.print(table)
            return True
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()


def _summary(settings: Settings, spec: ModelSpec, end: dt.date, started: float, console: Console) -> None:
    from pipelines.data.truth import best_achievable
    from pipelines.lake import Lake
    from pipelines.registry.registry import get_champion
    from pipelines.training.dataset import split_days

    champion = get_champion(settings, spec.name)
    console.rule("Summary")
    if champion is None:
        console.print(f"[red]{spec.name} has no champion[/red]")
        return
    split = split_days(spec, end)
    best = best_achievable(Lake(settings), split.test[0], split.test[-1])
    auc = champion.metrics.get("test_roc_auc") or champion.metrics.get("roc_auc")
    table = Table(title=f"{spec.name}: champion v{champion.version}")
    table.add_column("metric")
    table.add_column("champion")
    table.add_column("best achievable (simulator truth)")
    table.add_row("ROC-AUC (out-of-time test)", f"{auc:.4f}", f"{best['roc_auc']:.4f}")
    table.add_row("PR-AUC", f"{champion.metrics.get('test_pr_auc', float('nan')):.4f}", f"{best['pr_auc']:.4f}")
    console.print(table)
    console.print(f"gap to the best achievable ROC-AUC: {best['roc_auc'] - auc:+.4f}")
    approval = champion.approval or {}
    console.print(f"approved by {approval.get('by')} at {approval.get('at')}: {approval.get('comment')!r}")
    console.print(f"\nlake:            {settings.lake_uri}")
    console.print(f"MLflow runs:     {settings.mlflow_tracking_uri}")
    console.print(f"Airflow (SQLite): {settings.airflow_db_uri}")
    console.print("\nlook around:")
    console.print("  uv run mlctl status --json")
    console.print(f"  uv run mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    console.print(f"  ls {settings.lake_uri}")
    console.print(f"\ndemo finished in {time.time() - started:.0f} s")


def run_demo(settings: Settings, n_days: int, console: Console) -> int:
    started = time.time()
    configure_airflow(settings)
    days = [settings.start_date + dt.timedelta(days=i) for i in range(n_days)]
    end = days[-1]
    console.rule(f"1/4 Daily features DAG: {days[0]} .. {end}, {settings.sim_users} users")
    if not _daily_runs(settings, days, console):
        return 1
    for spec in load_specs(settings.models_dir).values():
        console.rule(f"2/4 Training DAG train_{spec.name} for {end}")
        if not _train_and_approve(settings, spec, end, console):
            return 1
        console.rule("3/4 Serving")
        if not _serve_and_score(settings, spec, console):
            return 1
        _summary(settings, spec, end, started, console)
    return 0

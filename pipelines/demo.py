"""`mlctl demo`: the whole platform on embedded defaults, narrated step by step.

Simulate a social-commerce world, run the daily features DAG for every day through Airflow, run the training
DAG, play the reviewer (`mlctl login`, then `mlctl approve`: the same REST calls a person makes), start the serving app,
score users over HTTP, roll a model back to its previous champion as a reviewer and show its audited history, and
print where everything is. The rolled-back model is trained twice (the day before the last, then the last day).
Rerunning it skips days already done and never duplicates a model version or an alias move.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from pipelines.console import progress_bar
from pipelines.orchestration.airflow_client import AirflowClient, PendingApproval
from pipelines.orchestration.airflow_env import configure_airflow
from pipelines.orchestration.runs import RunOutcome, run_in_process
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, load_specs
from pipelines.usecases import use_case

REVIEWER_COMMENT = "Gate passed and the report looks sound; approving for the demo."
ROLLBACK_COMMENT = "Rolling back to the previous champion for the demo (as after a bad night in production)."
# The model the demo trains twice (for the day before the last, then for the last day), so that the reviewer has a
# champion to roll back to (skipped when the models directory has no such model).
ROLLBACK_MODEL = "purchase_intent"


def _mlctl() -> str:
    return str(Path(sys.executable).with_name("mlctl"))


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _daily_runs(
    settings: Settings, days: list[dt.date], console: Console, on_day: Callable[[RunOutcome], None]
) -> bool:
    """The daily DAG for every day, as many days side by side as ``settings.local_lanes`` says (as `mlctl
    backfill`); ``on_day`` is called as each day ends."""
    logfile = settings.home / "logs" / "daily_features.log"
    console.print(f"Airflow task logs: {logfile}")
    with progress_bar(console) as progress:
        bar = progress.add_task("daily_features", total=len(days))

        def done(outcome: RunOutcome) -> None:
            progress.advance(bar)
            on_day(outcome)

        outcomes = run_in_process(
            settings,
            "daily_features",
            days,
            skip_succeeded=True,
            logfile=logfile,
            on_done=done,
            lanes=settings.local_lanes,
            on_plan=console.print,
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
            time.sleep(1)
    return None


@dataclass
class _Training:
    """A training DAG run in its own `mlctl run` process."""

    spec: ModelSpec
    process: subprocess.Popen
    logfile: Path


def _start_training(settings: Settings, spec: ModelSpec, end: dt.date, console: Console) -> _Training:
    logfile = settings.home / "logs" / f"train_{spec.name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [_mlctl(), "run", f"train_{spec.name}", "--date", end.isoformat()]
    console.print(f"$ mlctl run train_{spec.name} --date {end}   (logs: {logfile})")
    with open(logfile, "a") as log:  # the child writes through its own copy of the descriptor
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    return _Training(spec, process, logfile)


def _train_and_approve(
    settings: Settings, client: AirflowClient, run: _Training, console: Console, start_next: Callable[[], None]
) -> bool:
    """Follow one training run to its approval request, play the reviewer, wait for promotion. ``start_next``
    is called once this run no longer computes (waits for review, or ended), so the next model trains meanwhile."""
    spec, training, logfile = run.spec, run.process, run.logfile
    request = _wait_for_approval_request(client, spec, training, console)
    start_next()
    if request is None:
        ok = training.wait() in (0, 2)  # 2: the gate rejected the candidate (`mlctl run --help`)
        console.print(
            "No approval was requested: the gate stopped the candidate or it is already the champion "
            f"(see `mlctl status` and {logfile})."
            if ok
            else f"[red]training run failed; see {logfile}[/red]"
        )
        if ok:
            _show_gate(settings, spec, console)
        return ok
    version = request.field("version")
    console.print(f"Approval request waiting in Airflow: [italic]{request.subject}[/italic]")
    _show_review_material(settings, spec, str(version), console)
    reviewer = spec.reviewers[0]
    console.print(f"\n[bold]Playing the reviewer[/bold] {reviewer!r}, through the same REST API a person uses:")
    env = _reviewer_login(settings, reviewer, console)
    if env is None:
        return False
    approve = [_mlctl(), "approve", spec.name, str(version), "--comment", REVIEWER_COMMENT]
    console.print("$ " + shlex.join(["mlctl", *approve[1:]]))
    if subprocess.run(approve, env=env).returncode != 0:
        return False
    with console.status("promoting (online features fresh? alias move)"):
        code = training.wait()
    if code != 0:
        console.print(f"[red]training run failed after approval; see {logfile}[/red]")
    return code == 0


_LOGGED_IN: dict[str, dict[str, str]] = {}  # a reviewer's config directory -> the environment of their login


def _reviewer_login(settings: Settings, reviewer: str, console: Console) -> dict[str, str] | None:
    """Log ``reviewer`` in as a person would (`mlctl login`), in a config directory of their own; returns the
    environment their commands run with. The demo types the password Airflow generated for them: the one place
    that reads it, as a login, never to act for them. A reviewer logged in earlier in the demo stays logged in
    (their token lasts a day), as a person would."""
    config = str(settings.home / "reviewers" / reviewer)
    if config in _LOGGED_IN:
        console.print(f"{reviewer} is still logged in (the `mlctl login` above)")
        return _LOGGED_IN[config]
    env = {**os.environ, "XDG_CONFIG_HOME": config}
    assert settings.airflow_home is not None
    password = json.loads((settings.airflow_home / "passwords.json").read_text())[reviewer]
    console.print(f"{reviewer} logs in (the demo types {reviewer}'s generated password):")
    console.print(f"$ mlctl login --user {reviewer}")
    login = [_mlctl(), "login", "--user", reviewer, "--password-stdin"]
    if subprocess.run(login, input=password + "\n", text=True, env=env).returncode != 0:
        console.print(f"[red]{reviewer} could not log in[/red]")
        return None
    _LOGGED_IN[config] = env
    return env


def _show_gate(settings: Settings, spec: ModelSpec, console: Console) -> None:
    """The newest version's gate verdict (why no approval was asked for)."""
    from pipelines.evaluation.gate import TAG_SUMMARY
    from pipelines.registry.registry import list_versions

    versions = list_versions(settings, spec.name)
    if versions:
        console.print(f"gate of v{versions[-1].version}: {versions[-1].tags.get(TAG_SUMMARY, '(no verdict)')}")


def _show_review_material(settings: Settings, spec: ModelSpec, version: str, console: Console) -> None:
    """What a reviewer reads before answering: the gate's verdict and the HTML report."""
    from pipelines.evaluation.gate import TAG_SUMMARY
    from pipelines.registry.registry import get_version

    console.print(f"gate: {get_version(settings, spec.name, version).tags.get(TAG_SUMMARY, '(no verdict)')}")
    console.print(f"$ mlctl report {spec.name} {version} --no-open")
    result = subprocess.run(
        [_mlctl(), "report", spec.name, version, "--no-open"], capture_output=True, text=True, env=os.environ.copy()
    )
    page = result.stdout.strip().splitlines()[-1] if result.returncode == 0 and result.stdout.strip() else None
    console.print(f"reviewer's report: {page}" if page else f"[red]report unavailable:[/red] {result.stderr[-500:]}")


def _wait_healthy(base: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _score_users(base: str, spec: ModelSpec, console: Console) -> bool:
    user_ids = [1, 2, 3, 42, 4242]
    console.print(f"$ curl -X POST {base}/v1/models/{spec.name}/predict -d '{{\"user_ids\": {user_ids}}}'")
    resp = httpx.post(f"{base}/v1/models/{spec.name}/predict", json={"user_ids": user_ids}, timeout=30)
    if resp.status_code != 200:
        console.print(f"[red]prediction failed ({resp.status_code}): {resp.text}[/red]")
        return False
    body = resp.json()
    table = Table(title=f"{spec.name} v{body['version']} over HTTP")
    table.add_column("user_id")
    table.add_column("score")
    for p in body["predictions"]:
        table.add_row(str(p["user_id"]), f"{p['score']:.3f}")
    console.print(table)
    return True


def _rank_products(base: str, spec: ModelSpec, console: Console) -> bool:
    request = {"user_id": 42}
    console.print(f"$ curl -X POST {base}/v1/models/{spec.name}/rank -d '{{\"user_id\": 42}}'")
    resp = httpx.post(f"{base}/v1/models/{spec.name}/rank", json=request, timeout=60)
    if resp.status_code != 200:
        console.print(f"[red]ranking failed ({resp.status_code}): {resp.text}[/red]")
        return False
    body = resp.json()
    table = Table(title=f"{spec.name} v{body['version']}: top products for user 42 ({body['candidates']} candidates)")
    table.add_column("rank")
    table.add_column("product_id")
    table.add_column("score")
    for rank, p in enumerate(body["products"][:10], start=1):
        table.add_row(str(rank), str(p["product_id"]), f"{p['score']:.3f}")
    console.print(table)
    return True


def _checkout_order(settings: Settings) -> dict:
    """An order as a shop would send it at checkout: a returning account on its usual device and IP, placed at
    10:00 on the day after the lake's newest orders (the day the online histories are for)."""
    import pandas as pd

    from pipelines.data import schemas
    from pipelines.lake import Lake

    lake = Lake(settings)
    day = lake.partitions("orders")[-1]
    orders = lake.read("orders", day)
    known = orders[orders["device_id"].notna() & orders["ip_address"].notna()]
    last = (known if len(known) else orders).iloc[-1]
    placed = pd.Timestamp(schemas.as_of(day, lake.day_zone)).tz_convert("UTC") + pd.Timedelta(hours=10)
    return {
        "order_id": "demo-checkout-1",
        "user_id": int(last["user_id"]),
        "signup_time": pd.Timestamp(last["signup_time"]).tz_localize(None).tz_localize("UTC").isoformat(),
        "purchase_time": placed.isoformat(),
        "purchase_value": 129.99,
        "device_id": None if pd.isna(last["device_id"]) else str(last["device_id"]),
        "ip_address": None if pd.isna(last["ip_address"]) else str(last["ip_address"]),
        "source": str(last["source"]),
        "browser": str(last["browser"]),
        "age": float(last["age"]),
    }


def _score_order(settings: Settings, base: str, spec: ModelSpec, console: Console) -> bool:
    order = _checkout_order(settings)
    console.print(f"$ curl -X POST {base}/v1/models/{spec.name}/score -d '{json.dumps(order)}'")
    resp = httpx.post(f"{base}/v1/models/{spec.name}/score", json=order, timeout=30)
    if resp.status_code != 200:
        console.print(f"[red]checkout scoring failed ({resp.status_code}): {resp.text}[/red]")
        return False
    body = resp.json()
    table = Table(title=f"{spec.name} v{body['version']}: an order scored at checkout")
    for column in ("order", "user", "value", "fraud probability", "history found (user, device, ip)"):
        table.add_column(column)
    found = body["features_found"]
    table.add_row(
        body["order_id"],
        str(order["user_id"]),
        f"{order['purchase_value']:.2f}",
        f"{body['score']:.4f}",
        ", ".join("yes" if found[k] else "no" for k in ("user", "device", "ip")),
    )
    console.print(table)
    return True


# What the demo shows of each serving kind (pipelines/usecases/: UseCase.serving).
_SERVING_CALLS = {
    "score": lambda settings, base, spec, console: _score_users(base, spec, console),
    "rank": lambda settings, base, spec, console: _rank_products(base, spec, console),
    "checkout": _score_order,
}


def _serve_and_score(settings: Settings, specs: list[ModelSpec], console: Console) -> bool:
    """Start `mlctl serve`, score users with every user model and rank products with every ranking model."""
    port = _free_port(settings.serving_port)
    env = {**os.environ, "STOREFRONT_SERVING_PORT": str(port)}
    logfile = settings.home / "logs" / "serving.log"
    base = f"http://{settings.serving_host}:{port}"
    console.print(f"$ mlctl serve   ({base}, logs: {logfile})")
    with open(logfile, "a") as log:
        server = subprocess.Popen([_mlctl(), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            if not _wait_healthy(base, 90):
                console.print(f"[red]serving did not become healthy; see {logfile}[/red]")
                return False
            ok = True
            for spec in specs:
                call = _SERVING_CALLS.get(use_case(spec.entity).serving)
                if call is None:
                    console.print(f"{spec.name}: champion in MLflow; not served over HTTP yet")
                else:
                    ok = call(settings, base, spec, console) and ok
            return ok
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()


def _monitoring_pages(settings: Settings, day: dt.date, console: Console) -> None:
    """The daily monitor step of the last day, now that the models have champions, and each one's page (what
    `mlctl monitor MODEL --date DAY` does)."""
    from pipelines.flows.daily_features import monitor
    from pipelines.monitoring.page import build_monitoring_page

    monitored = monitor(settings, day)
    for name, result in monitored["models"].items():
        console.print(f"monitoring page of {name} ({result['summary']}): {build_monitoring_page(settings, name)}")
    for name, reason in monitored["unwatched"].items():
        console.print(f"{name} is not watched: {reason}", markup=False, highlight=False)


def _history_and_rollback(settings: Settings, spec: ModelSpec, console: Console) -> bool:
    """The reviewer rolls the model back (`mlctl rollback`, as their login) to the champion the audit log holds
    before the current one, then reads its audit log (`mlctl history`). A model with one champion only has
    nothing to go back to: the demo then says so and shows the history. False when a command failed."""
    from pipelines.registry.promotion import rollback_target
    from pipelines.registry.registry import get_champion

    champion = get_champion(settings, spec.name)
    if champion is None:
        return True
    target = rollback_target(settings, spec.name, champion.version)
    if target is None:
        console.print(
            f"{spec.name} has had one champion (v{champion.version}): the audit log holds nothing to roll back to, "
            f"and `mlctl rollback {spec.name} --comment WHY` would refuse (exit 1)."
        )
    else:
        reviewer = spec.reviewers[0]
        console.print(f"v{champion.version} is the champion; {reviewer} rolls {spec.name} back to v{target}:")
        env = _reviewer_login(settings, reviewer, console)
        if env is None:
            return False
        rollback = [_mlctl(), "rollback", spec.name, "--comment", ROLLBACK_COMMENT]
        console.print("$ " + shlex.join(["mlctl", *rollback[1:]]))
        if subprocess.run(rollback, env=env).returncode != 0:
            console.print(f"[red]the rollback of {spec.name} failed[/red]")
            return False
    console.print(f"$ mlctl history {spec.name}")
    return subprocess.run([_mlctl(), "history", spec.name], env=os.environ.copy()).returncode == 0


def _summary(settings: Settings, specs: list[ModelSpec], started: float, console: Console) -> bool:
    """Every champion's main metric next to the best achievable on the same rows (simulator truth) and the
    baseline; False when a model has no champion."""
    from pipelines.evaluation.evaluate import load_evaluation
    from pipelines.registry.registry import get_champion

    table = Table(title="Champions on their out-of-time test rows (best: Bayes-optimal on the same rows)")
    for column in ("model", "champion", "metric", "value", "best", "gap", "baseline", "approved by"):
        table.add_column(column, overflow="fold")
    ok = True
    for spec in specs:
        champion = get_champion(settings, spec.name)
        if champion is None:
            table.add_row(spec.name, "none", spec.main_metric, "", "", "", "", "")
            ok = False
            continue
        evaluation = load_evaluation(settings, spec.name, champion.version)
        points = {s: (evaluation.point(s) or {}) if evaluation else {} for s in ("candidate", "oracle", "baseline")}
        value = points["candidate"].get(spec.main_metric)
        best = points["oracle"].get(spec.main_metric)
        base = points["baseline"].get(spec.main_metric)

        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        gap = None if value is None or best is None else best - value
        table.add_row(
            spec.name,
            f"v{champion.version}",
            spec.main_metric,
            fmt(value),
            fmt(best),
            "n/a" if gap is None else f"{gap:+.4f}",
            fmt(base),
            str((champion.approval or {}).get("by")),
        )
    console.print(table)
    console.print(f"\nlake:            {settings.lake_uri}")
    console.print(f"MLflow runs:     {settings.mlflow_tracking_uri}")
    console.print(f"Airflow (SQLite): {settings.airflow_db_uri}")
    console.print(f"reports:         {settings.home / 'reports'}")
    console.print("\nlook around:")
    console.print("  uv run mlctl status --json")
    console.print("  uv run mlctl report MODEL VERSION")
    console.print(f"  uv run mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    console.print(f"\ndemo finished in {time.time() - started:.0f} s")
    return ok


def run_demo(settings: Settings, n_days: int, console: Console) -> int:
    started = time.time()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    configure_airflow(settings)
    days = [settings.start_date + dt.timedelta(days=i) for i in range(n_days)]
    end = days[-1]
    specs = list(load_specs(settings.models_dir).values())
    twice = next((spec for spec in specs if spec.name == ROLLBACK_MODEL), None) if len(days) > 1 else None
    trainings: dict[str, _Training] = {}
    early: list[_Training] = []

    def start_early(outcome: RunOutcome) -> None:
        """The model trained twice starts its first training once the day before the last is done (the last day's
        daily run goes on beside it)."""
        if twice is not None and outcome.logical_date == days[-2].isoformat() and outcome.state == "success":
            early.append(_start_training(settings, twice, days[-2], console))

    console.rule(f"1/6 Daily features DAG: {days[0]} .. {end}, {settings.sim_users} users")
    if not _daily_runs(settings, days, console, start_early):
        for run in early:
            run.process.kill()
        return 1
    client = AirflowClient(settings)
    # Training DAGs for the last day, in this order; each starts once the run before it waits for its reviewer
    # (the two cores then train the next model meanwhile). The model trained twice joins the queue once its first
    # champion is promoted: its second candidate is judged against that champion.
    queue = [spec for spec in specs if spec is not twice]

    def start_next() -> None:
        waiting = next((spec for spec in queue if spec.name not in trainings), None)
        if waiting is not None:
            trainings[waiting.name] = _start_training(settings, waiting, end, console)

    def stop_all() -> int:
        for other in trainings.values():  # a run waiting for its reviewer would wait forever
            if other.process.poll() is None:
                other.process.kill()  # dag.test ignores SIGTERM
        return 1

    if twice is not None:
        console.rule(f"2/6 A first champion: train_{twice.name} for {days[-2]}; the other models train meanwhile")
        first = early[0] if early else _start_training(settings, twice, days[-2], console)
        start_next()
        if not _train_and_approve(settings, client, first, console, start_next):
            return stop_all()
        queue.append(twice)
    for spec in queue:
        console.rule(f"3/6 Training DAG train_{spec.name} for {end}: train, evaluate, gate, review, promote")
        if spec.name in trainings:
            console.print(f"train_{spec.name} has been running since an earlier model's review")
        else:
            start_next()
        if not _train_and_approve(settings, client, trainings[spec.name], console, start_next):
            return stop_all()
    console.rule("4/6 Serving")
    if not _serve_and_score(settings, specs, console):
        return 1
    _monitoring_pages(settings, end, console)
    shown = twice or specs[0]
    console.rule(f"5/6 Rollback and history of {shown.name}")
    if not _history_and_rollback(settings, shown, console):
        return 1
    console.rule("6/6 Summary")
    return 0 if _summary(settings, specs, started, console) else 1

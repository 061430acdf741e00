"""Issue 13: the stack's MLflow server authenticates (basic-auth app) and each process has the account it needs.

A private `mlflow server` started exactly as `mlctl stack up` starts it (its Procfile line and 0600 env file) on a
free loopback port, with a SQLite backend; the service accounts made by the stack's own function.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.exceptions import MlflowException
from pydantic import SecretStr

from pipelines.registry.registry import connect, ensure_experiment
from pipelines.settings import Settings, get_settings
from pipelines.stack import mlflow_auth
from pipelines.stack.ports import free_ports
from pipelines.stack.services import MLFLOW_ENV, InternalPorts, services

pytestmark = pytest.mark.integration


def _server_settings(root: Path, port: int, **overrides: object) -> Settings:
    return get_settings(
        profile="stack",
        home=root / "home",
        stack_dir=root / "home" / "stack",
        mlflow_tracking_uri=f"http://127.0.0.1:{port}",
        mlflow_backend_store_uri=f"sqlite:///{root / 'mlflow.db'}",
        mlflow_artifacts_destination=str(root / "artifacts"),
        mlflow_artifact_root="mlflow-artifacts:/",
        s3_endpoint_url="",
        **overrides,
    )


def _session_pids(sid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[3]) == sid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, subprocess.Popen]]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    settings = _server_settings(root, free_ports(1)[0])
    assert settings.stack_dir is not None
    mlflow = next(s for s in services(settings, InternalPorts.pick([0] * InternalPorts.COUNT)) if s.name == "mlflow")
    mlflow_auth.write_server_env(settings, settings.stack_dir / MLFLOW_ENV)
    logs = settings.stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # As honcho runs a Procfile line: a shell sources the env file and execs the server.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = mlflow.procfile_line(logs).split(": ", 1)[1]
    proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (logs / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer /health in 120 s"
            try:
                if httpx.get(f"{settings.mlflow_tracking_uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert sorted(mlflow_auth.ensure_accounts(settings)) == [mlflow_auth.PIPELINES, mlflow_auth.SERVING]
        yield settings, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _session_pids(proc.pid):  # a worker that outlived the server
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def as_account(monkeypatch: pytest.MonkeyPatch):
    """Settings of one account, applied by ``connect`` as every process applies them; the env is restored."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")

    def build(settings: Settings, username: str | None) -> Settings:
        if username is None:  # the stack default: the pipelines account from its 0600 file
            return settings.model_copy()
        assert settings.stack_dir is not None
        password = mlflow_auth.account(settings.mlflow_auth_dir, username).password
        return settings.model_copy(update={"mlflow_username": username, "mlflow_password": SecretStr(password)})

    return build


def _refused(exc: pytest.ExceptionInfo[MlflowException]) -> bool:
    return exc.value.get_http_status_code() == 403 or "PERMISSION_DENIED" in str(exc.value)


def test_no_credentials_no_access(server: tuple[Settings, subprocess.Popen]) -> None:
    settings, _ = server
    url = f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/experiments/search"
    assert httpx.get(url, params={"max_results": 1}).status_code == 401
    wrong = (mlflow_auth.PIPELINES, "not-the-password")
    assert httpx.get(url, params={"max_results": 1}, auth=wrong).status_code == 401


def test_pipelines_write_and_serving_only_reads(
    server: tuple[Settings, subprocess.Popen], as_account, tmp_path: Path
) -> None:
    settings, _ = server
    # The pipelines: the stack's default identity, read from the password file `stack up` wrote.
    pipelines = connect(as_account(settings, None))
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == mlflow_auth.PIPELINES
    experiment = ensure_experiment(as_account(settings, None), "purchase_intent")
    run = pipelines.create_run(experiment)
    pipelines.log_metric(run.info.run_id, "auc", 0.8)
    # Artifacts go through the server's proxy, which authorizes by the experiment id in their path.
    pipelines.log_text(run.info.run_id, "champion material", "model/notes.txt")
    pipelines.set_terminated(run.info.run_id)
    pipelines.create_registered_model("purchase_intent")
    version = pipelines.create_model_version("purchase_intent", f"runs:/{run.info.run_id}/model", run.info.run_id)
    pipelines.set_registered_model_alias("purchase_intent", "champion", version.version)
    pipelines.set_model_version_tag("purchase_intent", version.version, "approval.status", "approved")

    serving = connect(as_account(settings, mlflow_auth.SERVING))
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == mlflow_auth.SERVING
    found = serving.get_model_version_by_alias("purchase_intent", "champion")
    assert str(found.version) == str(version.version) and found.tags["approval.status"] == "approved"
    assert serving.get_registered_model("purchase_intent").aliases == {"champion": version.version}
    assert serving.get_run(run.info.run_id).data.metrics["auc"] == 0.8
    notes = serving.download_artifacts(run.info.run_id, "model/notes.txt", str(tmp_path))
    assert Path(notes).read_text() == "champion material"
    with pytest.raises(Exception, match="403"):
        serving.log_text(run.info.run_id, "overwritten", "model/notes.txt")
    with pytest.raises(MlflowException) as refused:
        serving.set_registered_model_alias("purchase_intent", "champion", "1")
    assert _refused(refused)
    with pytest.raises(MlflowException) as refused:
        serving.create_run(experiment)
    assert _refused(refused)
    with pytest.raises(MlflowException) as refused:
        serving.delete_registered_model_alias("purchase_intent", "champion")
    assert _refused(refused)

    # A rollback deletes an alias: the pipelines may.
    pipelines = connect(as_account(settings, mlflow_auth.PIPELINES))
    pipelines.delete_registered_model_alias("purchase_intent", "champion")
    assert pipelines.get_registered_model("purchase_intent").aliases == {}


def test_accounts_are_idempotent_and_follow_their_password_files(server: tuple[Settings, subprocess.Popen]) -> None:
    settings, _ = server
    assert mlflow_auth.ensure_accounts(settings) == []
    # A rewritten password file re-keys the account at the next `stack up`.
    path = mlflow_auth.password_path(settings.mlflow_auth_dir, mlflow_auth.SERVING)
    old = path.read_text().strip()
    path.unlink()
    new = mlflow_auth.account(settings.mlflow_auth_dir, mlflow_auth.SERVING).password
    assert mlflow_auth.ensure_accounts(settings) == []
    url = f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(url, auth=(mlflow_auth.SERVING, new)).status_code == 200
    assert httpx.get(url, auth=(mlflow_auth.SERVING, old)).status_code == 401


def test_no_password_on_a_command_line_or_in_a_readable_file(server: tuple[Settings, subprocess.Popen]) -> None:
    settings, proc = server
    assert settings.stack_dir is not None
    directory = settings.mlflow_auth_dir
    secrets = {
        "admin": mlflow_auth.admin_account(directory).password,
        "pipelines": mlflow_auth.account(directory, mlflow_auth.PIPELINES).password,
        "serving": mlflow_auth.account(directory, mlflow_auth.SERVING).password,
        "flask key": mlflow_auth.flask_secret_key(directory),
    }
    pids = _session_pids(proc.pid)
    assert proc.pid in pids
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert "basic-auth" in cmdline or "mlflow" in cmdline or "uvicorn" in cmdline
        leaked = [name for name, value in secrets.items() if value in cmdline]
        assert not leaked, f"{leaked} on the command line of pid {pid}: {cmdline!r}"
    root = settings.stack_dir.parent.parent
    holders = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_bytes().decode(errors="replace")
        if any(value in text for value in secrets.values()):
            holders.append(path.name)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert {"basic_auth.ini", MLFLOW_ENV, f"{mlflow_auth.SERVING}.password"} <= set(holders)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_the_compose_and_kubernetes_job_takes_passwords_from_the_environment(
    server: tuple[Settings, subprocess.Popen],
) -> None:
    """`python -m pipelines.stack.mlflow_auth`, as compose's `mlflow-accounts` and the Kubernetes Job run it."""
    settings, _ = server
    directory = settings.mlflow_auth_dir
    passwords = {
        "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_auth.admin_account(directory).password,
        "STOREFRONT_MLFLOW_PIPELINES_PASSWORD": mlflow_auth.account(directory, mlflow_auth.PIPELINES).password,
        "STOREFRONT_MLFLOW_SERVING_PASSWORD": mlflow_auth.account(directory, mlflow_auth.SERVING).password,
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("STOREFRONT_", "MLFLOW_"))},
        "STOREFRONT_PROFILE": "stack",
        "STOREFRONT_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        **passwords,
    }
    job = [sys.executable, "-m", "pipelines.stack.mlflow_auth"]
    done = subprocess.run(job, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "created: none" in done.stdout
    assert not [value for value in passwords.values() if value in done.stdout + done.stderr]
    del env["STOREFRONT_MLFLOW_SERVING_PASSWORD"]
    refused = subprocess.run(job, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "STOREFRONT_MLFLOW_SERVING_PASSWORD" in refused.stderr


def test_a_persons_read_only_account_as_governance_md_makes_it(
    server: tuple[Settings, subprocess.Popen], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/governance.md: the admin creates a user and assigns the serving role; the person reads, cannot write."""
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    settings, _ = server
    uri = settings.mlflow_tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_auth.admin_account(settings.mlflow_auth_dir).password)
    auth = get_app_client("basic-auth", tracking_uri=uri)
    auth.create_user("alice", "alice-Passw0rd-long")
    role = next(r for r in auth.list_roles("default") if r.name == "storefront-serving")
    auth.assign_role("alice", role.id)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-Passw0rd-long")
    alice = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert [m.name for m in alice.search_registered_models()] == ["purchase_intent"]
    with pytest.raises(MlflowException) as refused:
        alice.set_registered_model_alias("purchase_intent", "champion", "1")
    assert _refused(refused)

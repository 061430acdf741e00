"""The stack profile's configuration: loopback defaults, AWS, the env file, the services' command lines."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from pipelines.orchestration.airflow_env import airflow_environment
from pipelines.settings import Settings, get_settings
from pipelines.stack.envfile import write_env_file
from pipelines.stack.ports import free_ports, port_is_free
from pipelines.stack.resources import StackError, buckets, s3_credentials
from pipelines.stack.services import InternalPorts, environment, services


def test_stack_profile_points_every_store_at_a_service(tmp_path: Path) -> None:
    settings = get_settings(profile="stack", home=tmp_path)
    assert settings.lake_uri == "s3://storefront/lake" and settings.s3_endpoint_url == "http://127.0.0.1:8333"
    assert settings.airflow_db_uri.endswith("/storefront_airflow")
    assert settings.mlflow_backend_store_uri.endswith("/storefront_mlflow")
    assert settings.feast_registry.endswith("/storefront_feast") and settings.feast_online_store == "redis"
    assert settings.mlflow_tracking_uri.startswith("http://") and settings.mlflow_artifact_root == "mlflow-artifacts:/"
    assert buckets(settings) == ["storefront"]
    assert get_settings(home=tmp_path).feast_online_store == "sqlite"


def test_an_empty_endpoint_means_aws(tmp_path: Path) -> None:
    settings = get_settings(profile="stack", home=tmp_path, s3_endpoint_url="", lake_uri="s3://team-lake/prod")
    assert settings.storage_options.get("endpoint_url") is None
    names = [s.name for s in services(settings, InternalPorts.pick([0] * InternalPorts.COUNT))]
    assert "s3" not in names and names[0] == "mlflow"
    assert settings.airflow_remote_log_folder == "s3://team-lake/airflow-logs"
    assert buckets(settings) == ["storefront", "team-lake"]


def test_task_logs_go_to_s3_with_no_secret_in_the_connection(tmp_path: Path) -> None:
    settings = Settings(profile="stack", home=tmp_path, AWS_ACCESS_KEY_ID="AKID", AWS_SECRET_ACCESS_KEY="s3cr3t")
    env = airflow_environment(settings)
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://storefront/airflow-logs"
    connection = json.loads(env["AIRFLOW_CONN_STOREFRONT_LOGS"])
    assert connection["extra"]["endpoint_url"] == "http://127.0.0.1:8333"
    assert "s3cr3t" not in json.dumps(env)


def test_s3_credentials_come_only_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(StackError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        s3_credentials(get_settings(profile="stack", home=tmp_path))


def test_init_writes_a_private_env_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_env_file(tmp_path / ".env")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "STOREFRONT_PROFILE=stack" in text and "AWS_SECRET_ACCESS_KEY=" in text
    with pytest.raises(FileExistsError, match="exists"):
        write_env_file(tmp_path / ".env")
    # The settings read it from the working directory (conftest turns that off for every other test).
    monkeypatch.setitem(Settings.model_config, "env_file", ".env")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    settings = get_settings(home=tmp_path / ".storefront")
    assert settings.profile == "stack" and settings.aws_secret_access_key is not None
    assert s3_credentials(settings)[1] in text


def test_the_celery_executor_adds_a_worker_on_its_own_queue_and_dask_its_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    settings = get_settings(profile="stack", home=tmp_path, airflow_executor="CeleryExecutor", compute="dask")
    assert settings.dask_scheduler == "tcp://127.0.0.1:8786"
    internal = InternalPorts.pick(list(range(40000, 40000 + InternalPorts.COUNT)))
    found = {s.name: s.argv for s in services(settings, internal)}
    worker = found["celery-worker"]
    # The Celery worker runs Airflow's CLI with the steps' libraries preloaded (its forks run the tasks).
    assert worker[1:3] == ["-m", "pipelines.stack.preload"] and worker[3].endswith("/airflow")
    assert worker[4:6] == ["celery", "worker"] and worker[worker.index("--queues") + 1] == "storefront_storefront"
    assert found["scheduler"][1:] == ["scheduler"]
    assert found["dask-scheduler"][1:2] == ["scheduler"] and "8786" in found["dask-scheduler"]
    assert found["dask-workers"][2] == "tcp://127.0.0.1:8786" and "--nworkers" in found["dask-workers"]
    env = environment(settings, internal, "id")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "storefront_storefront"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{settings.airflow_db_uri}"
    # The stack's own processes compute on its Dask scheduler: tasks read it from the environment.
    plain = {s.name for s in services(get_settings(profile="stack", home=tmp_path), internal)}
    assert not plain & {"celery-worker", "dask-scheduler", "dask-workers"}


def test_a_remote_dask_scheduler_is_used_not_started(tmp_path: Path) -> None:
    settings = get_settings(profile="stack", home=tmp_path, compute="dask", dask_scheduler="tcp://dask.prod:8786")
    internal = InternalPorts.pick(list(range(40000, 40000 + InternalPorts.COUNT)))
    assert not {s.name for s in services(settings, internal)} & {"dask-scheduler", "dask-workers"}


def test_no_password_on_a_command_line_or_in_a_readable_procfile(tmp_path: Path) -> None:
    """Issue 13: `mlflow server` got the PostgreSQL URL with its password as an argument (visible in `ps`) and the
    Procfile holding it was world-readable. Now it also runs MLflow's basic-auth app, whose ini and key stay off
    its command line too."""
    from pipelines.stack.mlflow_auth import config_path, write_server_env, write_serving_env
    from pipelines.stack.resources import write_private
    from pipelines.stack.services import MLFLOW_ENV, SERVING_ENV

    password = "pg-s3cr3t"
    postgres = f"postgresql://storefront:{password}@127.0.0.1:5432"
    settings = get_settings(profile="stack", home=tmp_path, postgres_url=postgres)
    assert settings.stack_dir is not None
    internal = InternalPorts.pick(list(range(40000, 40000 + InternalPorts.COUNT)))
    found = services(settings, internal)
    mlflow = next(s for s in found if s.name == "mlflow")
    assert "--backend-store-uri" not in mlflow.argv and mlflow.env_file == settings.stack_dir / MLFLOW_ENV
    assert mlflow.argv[mlflow.argv.index("--app-name") + 1] == "basic-auth"
    serving = next(s for s in found if s.name == "serving")
    assert serving.env_file == settings.stack_dir / SERVING_ENV
    procfile = "".join(s.procfile_line(tmp_path / "logs") + "\n" for s in found)
    assert password not in procfile
    line = next(line for line in procfile.splitlines() if line.startswith("mlflow:"))
    assert line.startswith(f"mlflow: . {settings.stack_dir / MLFLOW_ENV} && exec ")
    write_server_env(settings, settings.stack_dir / MLFLOW_ENV)
    written = (settings.stack_dir / MLFLOW_ENV).read_text()
    assert f"export MLFLOW_BACKEND_STORE_URI={postgres}/storefront_mlflow\n" in written
    assert f"export MLFLOW_AUTH_CONFIG_PATH={config_path(settings.mlflow_auth_dir)}\n" in written
    assert "export MLFLOW_FLASK_SERVER_SECRET_KEY=" in written
    # The server is no client: the pipelines' identity in the stack's environment is dropped for it.
    assert written.startswith("unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD\n")
    write_serving_env(settings, settings.stack_dir / SERVING_ENV)
    assert "MLFLOW_TRACKING_USERNAME=storefront-serving" in (settings.stack_dir / SERVING_ENV).read_text()
    write_private(tmp_path / "Procfile", procfile)
    ini = config_path(settings.mlflow_auth_dir)
    for path in (settings.stack_dir / MLFLOW_ENV, settings.stack_dir / SERVING_ENV, tmp_path / "Procfile", ini):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "default_permission = NO_PERMISSIONS" in ini.read_text()


def test_an_auth_ini_keeps_its_admin_password_and_escapes_percent(tmp_path: Path) -> None:
    """A second `stack up` must not change the admin password the auth database already holds; MLflow reads the
    ini with interpolation, so a URL-encoded database password's '%' is doubled."""
    import configparser

    from pipelines.stack.mlflow_auth import admin_account, write_auth_config

    path = write_auth_config(tmp_path / "auth", "postgresql://u:p%40ss@127.0.0.1/storefront_mlflow_auth")
    first = admin_account(tmp_path / "auth").password
    write_auth_config(tmp_path / "auth", "postgresql://u:p%40ss@127.0.0.1/storefront_mlflow_auth")
    assert admin_account(tmp_path / "auth").password == first and len(first) >= 24
    parser = configparser.ConfigParser()  # as MLflow reads it
    parser.read(path)
    assert parser["mlflow"]["database_uri"] == "postgresql://u:p%40ss@127.0.0.1/storefront_mlflow_auth"


def test_the_stack_processes_are_mlflow_service_accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow and mlctl are the pipelines' account, through the environment or the 0600 file `stack up` wrote;
    serving says otherwise in its own env file; nothing is on the local profile."""
    from pipelines.stack.mlflow_auth import PIPELINES, account

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    settings = get_settings(profile="stack", home=tmp_path)
    assert settings.mlflow_auth_db_uri == f"sqlite:///{settings.mlflow_auth_dir / 'auth.db'}"
    assert settings.mlflow_identity() is None  # before the first `stack up`
    env = environment(settings, InternalPorts.pick([0] * InternalPorts.COUNT), "id")
    password = account(settings.mlflow_auth_dir, PIPELINES).password
    assert env["MLFLOW_TRACKING_USERNAME"] == PIPELINES and env["MLFLOW_TRACKING_PASSWORD"] == password
    assert not [name for name, value in env.items() if password in value and not name.startswith("MLFLOW_TRACKING")]
    # Settings built before the file existed find it now (tests and long-lived processes build them early).
    assert settings.mlflow_client_environment() == {
        "MLFLOW_TRACKING_USERNAME": PIPELINES,
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "storefront-serving")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "serving-pw")
    identity = get_settings(profile="stack", home=tmp_path).mlflow_identity()
    assert identity is not None and identity[0] == "storefront-serving"
    assert identity[1].get_secret_value() == "serving-pw"
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert get_settings(home=tmp_path).mlflow_client_environment() == {}


def test_spare_ports_are_free_distinct_and_below_the_kernels_outgoing_range() -> None:
    """A port handed out for an outgoing connection cannot be one a stack's service is about to listen on."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(40)
    assert len(set(ports)) == 40 and all(20000 <= p < min(low, 32768) for p in ports)
    assert all(port_is_free("127.0.0.1", p) for p in ports)

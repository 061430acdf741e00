"""Faults injected for real (processes killed, services stopped, files corrupted, a directory filled), each made
visible, recovered from and rerun; one checker then proves the platform converged: no lake row lost or duplicated
against a clean run, the online store level with the lake, no registry alias moved. docs/reliability.md has the
table of faults.

The worlds: a local-profile one (in-process steps, SQLite or a private Redis; its serving and training faults
against an ``mlflow server`` of the test's own whose store is a private PostgreSQL cluster), one whose lake is in a
private S3, and one private stack (``mlctl stack up`` with its own Redis server, which the tests stop and start).
The machine's shared PostgreSQL and Redis are never stopped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest
import redis
import sqlalchemy.exc
from feast import FeatureStore
from mlflow.exceptions import MlflowException

from feature_repo.definitions import definitions
from feature_repo.parts import lake_table
from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.features.store import feature_store, online_features, online_lag, repo_config
from pipelines.flows import daily_features, training
from pipelines.lake import Lake, LakeWriteError
from pipelines.orchestration.airflow_client import AirflowClient
from pipelines.registry import audit as audit_module
from pipelines.registry import promotion
from pipelines.registry.approval import ApprovalRecord
from pipelines.registry.audit import read_audit, verify_chain
from pipelines.registry.decisions import request_review, trained_by
from pipelines.registry.registry import CHAMPION, aliases, connect, ensure_experiment, list_versions, set_version_tags
from pipelines.registry.tamper import serving_refusal, verify_aliases
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import ModelSpec, load_specs
from pipelines.stack import supervisor
from pipelines.stack.ports import free_ports
from pipelines.stack.resources import ensure_buckets, write_s3_identities
from pipelines.stack.services import InternalPorts, services
from pipelines.training.dataset import save_training_set
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import TAG_LOGICAL_DATE
from pipelines.usecases import raw_tables
from tests.conftest import quick_spec
from tests.stack_support import DAYS, HISTORY, StackWorld, service_pid, start_world

pytestmark = pytest.mark.integration

MODEL = "purchase_intent"
LOCAL_DAYS = DAYS[:5]
NEWEST = LOCAL_DAYS[-1]


@dataclass(frozen=True)
class Freshness:
    """What promotion reads of an online-freshness report."""

    fresh: bool
    message: str


# -- the one checker ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """What a clean run left: rows and a digest of the key columns per (table, day), aliases per model."""

    lake: dict[tuple[str, dt.date], tuple[int, str]]
    aliases: dict[str, dict[str, str]]

    def through(self, day: dt.date) -> Baseline:
        """The clean run's partitions up to ``day``: what a world that ran that far must hold."""
        return Baseline({key: value for key, value in self.lake.items() if key[1] <= day}, self.aliases)


def _tables(settings: Settings) -> list[str]:
    return [*raw_tables(), *sorted({lake_table(v) for v in definitions(settings).views})]


def _key_digest(frame: pd.DataFrame) -> str:
    """Order-free digest of the key columns (``*_id``; every column when there are none), duplicates counted."""
    keys = [c for c in frame.columns if c.endswith("_id")] or list(frame.columns)
    hashes = np.sort(pd.util.hash_pandas_object(frame[keys], index=False).to_numpy())
    return hashlib.sha256(hashes.tobytes()).hexdigest()


def snapshot(settings: Settings, days: list[dt.date]) -> Baseline:
    lake = Lake(settings)
    parts = {
        (table, day): (len(frame), _key_digest(frame))
        for table in _tables(settings)
        for day in days
        if lake.exists(table, day)
        for frame in [lake.read(table, day)]
    }
    models = load_specs(settings.models_dir)
    return Baseline(parts, {name: aliases(settings, name) for name in models})


def online_mismatches(settings: Settings, sample: int = 40) -> list[str]:
    """Views behind their lake (registry windows), and sampled keys whose online values differ from the newest lake
    partition's (the newest row per key, as materialization keeps)."""
    problems = [lag.message() for lag in online_lag(settings) if lag.behind]
    store, lake = FeatureStore(config=repo_config(settings)), Lake(settings)
    for view in definitions(settings).views:
        days = lake.partitions(lake_table(view)) if view.online else []
        if not days:
            continue
        stamp, keys = view.batch_source.timestamp_field, view.join_keys
        newest = lake.read(lake_table(view), days[-1]).sort_values(stamp, kind="stable")
        newest = newest.drop_duplicates(keys, keep="last").reset_index(drop=True)
        picked = newest.iloc[:: max(1, len(newest) // sample)].head(sample).reset_index(drop=True)
        names = [f.name for f in view.features]
        rows = [{k: int(v) for k, v in r.items()} for r in picked[keys].to_dict("records")]
        online = store.get_online_features([f"{view.name}:{n}" for n in names], rows).to_df()
        for name in names:
            want, got = picked[name].astype("float64").to_numpy(), online[name].astype("float64").to_numpy()
            differ = ~np.isclose(want, got, equal_nan=True)
            if differ.any():
                problems.append(f"view {view.name!r} ds={days[-1]}: {name} differs online for {int(differ.sum())} keys")
    return problems


def all_built_views_behind(settings: Settings) -> bool:
    """Every view with a lake partition reads as behind it (views never built have nothing to be behind)."""
    built = [lag for lag in online_lag(settings) if lag.built is not None]
    return bool(built) and all(lag.behind for lag in built)


def check_converged(settings: Settings, baseline: Baseline) -> None:
    """0 rows lost or duplicated against the clean run, online store level with the lake, no alias moved."""
    lake = Lake(settings)
    for (table, day), (rows, digest) in baseline.lake.items():
        assert lake.exists(table, day), f"{table} ds={day}: partition lost"
        frame = lake.read(table, day)
        assert len(frame) == rows, f"{table} ds={day}: {len(frame)} rows, the clean run had {rows}"
        assert _key_digest(frame) == digest, f"{table} ds={day}: keys differ from the clean run's"
    assert online_mismatches(settings) == []
    now = {name: aliases(settings, name) for name in baseline.aliases}
    assert now == baseline.aliases, "a registry alias moved"


# -- helpers -----------------------------------------------------------------------------------------------
def rerun_day(settings: Settings, day: dt.date) -> None:
    """The recovery a user runs: the day's chain again (every step replaces its output)."""
    for step in (daily_features.extract, daily_features.validate, daily_features.features):
        step(settings, str(day))
    daily_features.materialize(settings, str(day))


def wait_for(what: str, condition: Callable[[], object], seconds: float = 120, every: float = 0.2) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {seconds:.0f} s")


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, without persistence: stopping it is a crash that
    loses nothing the platform cannot rebuild, and nobody else's keys."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_ports(1)[0]
        self.url = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            from tests.conftest import service_unavailable

            service_unavailable("redis-server", "not on PATH (the fault tests start their own Redis)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen([*argv, "--dir", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        wait_for(f"redis-server on {self.url}", lambda: _pings(client), seconds=20)

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a crashed host would stop it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=20)
            self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def full_directory(path: Path) -> Iterator[None]:
    """Make writes into ``path`` fail: as root a tiny tmpfs mounted over it and filled (ENOSPC, the files already
    there copied in), otherwise the directory made read-only (EACCES)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    kept = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    size = sum(len(b) for b in kept.values()) + 64 * 1024
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:  # root without CAP_SYS_ADMIN: a read-only directory would not stop root either
        pytest.skip(f"cannot fill {path}: mount refused ({mounted.stderr.strip()}) and root ignores permissions")
    try:
        for name, data in kept.items():
            (path / name).write_bytes(data)
        with contextlib.suppress(OSError), open(path / "filler", "wb") as filler:
            filler.write(b"\0" * size)
        yield
    finally:
        # Lazily: pyarrow's failed output stream may stay open until the exception holding it is collected.
        subprocess.run(["umount", "--lazy", str(path)], check=True)


# -- the local-profile world -------------------------------------------------------------------------------
@dataclass
class LocalWorld:
    settings: Settings
    baseline: Baseline


def _local_settings(root: Path, **overrides: object) -> Settings:
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "models" / f"{MODEL}.yaml", models)
    fields: dict = dict(
        profile="local",
        home=root / "home",
        models_dir=models,
        sim_users=200,
        start_date=DAYS[0],
        end_date=DAYS[-1],
        num_threads=1,
    )
    return Settings(**(fields | overrides))


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> LocalWorld:
    """Five days in the lake, the fourth materialized (SQLite): the fifth is the day the faults hit."""
    settings = _local_settings(tmp_path_factory.mktemp("local"))
    for day in LOCAL_DAYS:
        for step in (daily_features.extract, daily_features.validate, daily_features.features):
            step(settings, str(day))
    baseline = snapshot(settings, LOCAL_DAYS)
    daily_features.materialize(settings, str(LOCAL_DAYS[-2]))
    return LocalWorld(settings, baseline)


def _online_db_rows(settings: Settings) -> dict[str, bytes]:
    """Each SQLite online table's rows, as one digest per table (to tell which day a view holds)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(settings.feast_online_path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: hashlib.sha256(repr(conn.execute(f'SELECT * FROM "{t}" ORDER BY 1, 2').fetchall()).encode()).digest()
            for t in tables
        }


def test_kill_9_during_sqlite_materialization_leaves_no_view_half_written(local: LocalWorld, tmp_path: Path) -> None:
    settings = local.settings
    before = _online_db_rows(settings)
    journal = Path(f"{settings.feast_online_path}-journal")
    code = (
        "import sys; from pipelines.settings import get_settings; from pipelines.flows import daily_features; "
        "daily_features.materialize(get_settings(), sys.argv[1])"
    )
    # One row per statement: the day's transaction lasts long enough to be caught open.
    env = {**os.environ, **settings.environment(), "STOREFRONT_FEAST_ONLINE_WRITE_BATCH_SIZE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(NEWEST)], env=env, cwd=PROJECT_ROOT)
    try:
        wait_for(
            "the materialization's SQLite transaction", lambda: journal.exists() or proc.poll() is not None, 180, 0.002
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "materialize ended before the kill: nothing was tested"

    after = _online_db_rows(settings)  # opening the database rolls the hot journal back
    changed = sorted(t for t in after if after[t] != before.get(t))
    assert changed in ([], sorted(after)), f"views half-written by the killed day: {changed} changed, not the others"
    if not changed:  # killed inside the transaction: the registry must not claim the day either
        assert any("BEHIND" in p for p in online_mismatches(settings))

    rerun_day(settings, NEWEST)
    check_converged(settings, local.baseline)


def test_corrupt_lake_partition_fails_naming_the_file_and_publishes_nothing(local: LocalWorld) -> None:
    settings, lake = local.settings, Lake(local.settings)
    events = Path(lake._file("events", NEWEST))
    features = Path(lake._file("features/user_behavior", NEWEST))
    published = features.read_bytes()
    events.write_bytes(events.read_bytes()[: events.stat().st_size // 2])  # a torn copy: no parquet footer

    for step in (daily_features.validate, daily_features.features):
        with pytest.raises(pa.ArrowInvalid, match=f"'{events}'.*corrupted"):
            step(settings, str(NEWEST))
    assert features.read_bytes() == published, "a feature partition was published from a corrupt input"

    rerun_day(settings, NEWEST)  # extract lands the day again
    check_converged(settings, local.baseline)


def test_half_written_temp_files_in_the_lake_are_ignored(local: LocalWorld) -> None:
    settings, lake = local.settings, Lake(local.settings)
    table = "features/user_behavior"
    whole = Path(lake._file(table, NEWEST)).read_bytes()
    # What a writer killed between its temp file and the rename leaves: beside a published day, and alone in a
    # day that was never published.
    beside = Path(lake._dir(table, NEWEST)) / ".data.parquet.0123abcd.tmp"
    beside.write_bytes(whole[: len(whole) // 3])
    alone = Path(lake._dir(table, NEWEST + dt.timedelta(days=1)))
    alone.mkdir()
    (alone / ".data.parquet.4567cdef.tmp").write_bytes(whole[: len(whole) // 2])

    assert NEWEST + dt.timedelta(days=1) not in lake.partitions(table)
    assert lake.read(table, NEWEST).shape[0] == local.baseline.lake[(table, NEWEST)][0]
    rerun_day(settings, NEWEST)
    check_converged(settings, local.baseline)


def test_a_full_lake_directory_fails_naming_the_path_and_keeps_the_published_day(local: LocalWorld) -> None:
    settings, lake = local.settings, Lake(local.settings)
    table = "features/user_behavior"
    directory = Path(lake._dir(table, NEWEST))
    published = (directory / "data.parquet").read_bytes()
    temp_files = set(directory.glob(".*.tmp"))  # another fault's leftovers, if it ran first
    with full_directory(directory):
        with pytest.raises(LakeWriteError, match=f"{directory}/data.parquet: not written") as failure:
            daily_features.features(settings, str(NEWEST))
        assert "No space left" in str(failure.value) or "Permission denied" in str(failure.value)
        assert (directory / "data.parquet").read_bytes() == published
        assert set(directory.glob(".*.tmp")) == temp_files, "the failed write left its temp file"
    rerun_day(settings, NEWEST)
    check_converged(settings, local.baseline)


def test_an_unreadable_feast_registry_fails_and_a_fresh_one_flags_every_view_behind(local: LocalWorld) -> None:
    settings = local.settings
    registry = Path(settings.feast_registry)
    registry.write_bytes(b"\x00not a registry\xff" * 8)
    with pytest.raises(Exception, match="feast.core.Registry"):
        daily_features.materialize(settings, str(NEWEST))

    # Recovery: move the file away. The next step re-applies the definitions; until the day is materialized again
    # every view reads as behind (its materialization windows were in the lost file), never as current.
    registry.rename(registry.with_suffix(".corrupt"))
    feature_store(settings)
    assert all_built_views_behind(settings)
    rerun_day(settings, NEWEST)
    check_converged(settings, local.baseline)


# -- local profile on a private Redis ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_local(
    local: LocalWorld, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalWorld, PrivateRedis]]:
    """The local world's lake, its online store on a Redis server of its own (own Feast registry file)."""
    root = tmp_path_factory.mktemp("redis-local")
    server = PrivateRedis(root / "redis")
    server.start()
    settings = local.settings.model_copy(
        update={"feast_online_store": "redis", "redis_url": server.url, "feast_registry": str(root / "registry.db")}
    )
    try:
        daily_features.materialize(settings, str(LOCAL_DAYS[-2]))
        yield LocalWorld(settings, local.baseline), server
    finally:
        server.kill()


def test_redis_down_during_materialization_records_nothing_and_the_rerun_converges(redis_local) -> None:
    world, server = redis_local
    through = {lag.view: lag.materialized_through for lag in online_lag(world.settings)}
    server.kill()
    with pytest.raises(Exception, match=f"(?i)connect.*{server.port}|{server.port}.*refused|Connection refused"):
        daily_features.materialize(world.settings, str(NEWEST))
    server.start()
    # No window was recorded for a day whose rows did not all land.
    assert {lag.view: lag.materialized_through for lag in online_lag(world.settings)} == through
    daily_features.materialize(world.settings, str(NEWEST))
    check_converged(world.settings, world.baseline)


def test_redis_restarted_empty_is_caught_by_the_checker_and_rematerializing_converges(redis_local) -> None:
    world, server = redis_local
    daily_features.materialize(world.settings, str(NEWEST))
    server.kill()
    server.start()  # no persistence: the online rows are gone, the registry still records the day
    problems = online_mismatches(world.settings)
    assert problems and not any("BEHIND" in p for p in problems), problems
    daily_features.materialize(world.settings, str(NEWEST))
    check_converged(world.settings, world.baseline)


# -- local profile on a private S3 ---------------------------------------------------------------------------
class PrivateS3:
    """SeaweedFS (``weed mini``, the stack's S3 service and command line) of the test's own, its data kept in a
    directory so that a restart finds the objects again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.stack_dir is not None
        self.argv = services(settings, InternalPorts.pick(free_ports(InternalPorts.COUNT)))[0].argv
        write_s3_identities(settings, settings.stack_dir / "s3-identities.json")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.settings.stack_dir is not None and self.settings.s3_endpoint_url is not None
        log = open(self.settings.stack_dir / "s3.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("SeaweedFS S3", lambda: _answers(self.settings.s3_endpoint_url), seconds=120, every=0.5)
        wait_for("the lake's bucket", lambda: ensure_buckets(self.settings) is not None, seconds=60, every=1)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.fixture(scope="module")
def s3_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalWorld, PrivateS3]]:
    """A local-profile world whose lake is in a private S3: two days built and materialized."""
    root = tmp_path_factory.mktemp("s3-local")
    credentials = {"AWS_ACCESS_KEY_ID": "SFFAULTS", "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24)}
    settings = _local_settings(
        root,
        lake_uri="s3://faults/lake",
        s3_endpoint_url=f"http://127.0.0.1:{free_ports(1)[0]}",
        stack_dir=root / "s3",
        sim_users=100,
        **credentials,
    )
    server = PrivateS3(settings)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in credentials.items():  # readers that take them from the environment (s3fs)
                patch.setenv(key, value)
            for day in DAYS[:2]:
                rerun_day(settings, day)
            yield LocalWorld(settings, snapshot(settings, DAYS[:2])), server
    finally:
        server.kill()


def test_s3_down_during_a_lake_write_fails_naming_the_object_and_the_rerun_converges(s3_local) -> None:
    world, server = s3_local
    day = DAYS[1]
    server.kill()
    with pytest.raises(LakeWriteError, match=r"s3://faults/lake/.*ds=2025-01-02/data\.parquet: not written"):
        daily_features.extract(world.settings, str(day))
    server.start()  # the same data directory: what was published before the fault is there again
    rerun_day(world.settings, day)
    check_converged(world.settings, world.baseline)


# -- serving on the local profile: a private MLflow server and the private Redis --------------------------
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (``initdb``/``pg_ctl``) on a free loopback port, never the machine's
    shared one. initdb refuses to run as root: as root the cluster belongs to the ``postgres`` account, in a
    directory of its own under /tmp (pytest's temporary root is private to root), removed by :meth:`destroy`."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_ports(1)[0]
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"
        self.as_owner: list[str] = []
        self.own_root: Path | None = None
        self.root = workdir

    def _bin(self, name: str) -> str:
        found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
        if found is None:
            from tests.conftest import service_unavailable

            service_unavailable("PostgreSQL binaries", f"{name} not on PATH (the fault tests start their own cluster)")
        return str(found)

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        argv = [*self.as_owner, self._bin("pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.root / "log")]
        done = subprocess.run([*argv, "-w", "-o", options, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"pg_ctl {' '.join(args)}: {done.stdout}{done.stderr}"

    def create(self) -> None:
        """initdb, start, and the registry's database."""
        import psycopg2

        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                from tests.conftest import service_unavailable

                service_unavailable("PostgreSQL cluster", "running as root and there is no `postgres` account for it")
            self.own_root = self.root = Path(tempfile.mkdtemp(prefix="storefront-faults-pg-"))
            shutil.chown(self.root, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.root.mkdir(parents=True, exist_ok=True)
        initdb = [self._bin("initdb"), "-D", str(self.root / "data"), "-U", "postgres", "-A", "trust", "--no-sync"]
        done = subprocess.run([*self.as_owner, *initdb], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        self.start()
        admin = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with contextlib.closing(admin):
            admin.cursor().execute("CREATE DATABASE mlflow")

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as in a restart."""
        self._pg_ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    def destroy(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._pg_ctl("-m", "immediate", "stop")
        if self.own_root is not None:
            shutil.rmtree(self.own_root, ignore_errors=True)


class PrivateMlflow:
    """``mlflow server`` of the test's own (its store in ``backend``, artifacts under tmp) on a free loopback
    port."""

    def __init__(self, workdir: Path, backend: str) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.backend = backend
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(Path(sys.executable).with_name("mlflow")),
            *("server", "--backend-store-uri", self.backend),
            *("--artifacts-destination", (self.workdir / "artifacts").as_uri()),
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
        ]
        log = open(self.workdir / "mlflow.log", "ab")  # noqa: SIM115 - the child holds it
        # Without job execution the server is one worker, not 13 processes: it starts in about half the time.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_for(f"mlflow server on {self.url}", lambda: _answers(f"{self.url}/health"), seconds=120, every=0.5)

    def kill(self) -> None:
        """SIGKILL to the server and its gunicorn/uvicorn worker (its own session)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
            self.proc = None


def _answers(url: str, **kwargs: object) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2, **kwargs)
    except httpx.HTTPError:
        return None


def _register_champion(settings: Settings) -> str:
    """A small booster on the service's features, logged and promoted as the audit log requires."""
    import lightgbm as lgb
    import mlflow

    from pipelines.registry.registry import ensure_experiment
    from tests.audit_support import audit_promotion

    names = list(online_features(settings, MODEL, [1]).columns[1:])
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.random((200, len(names))), columns=names)
    params = {"objective": "binary", "num_threads": 1, "verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, (x.iloc[:, 0] > 0.5).astype(int)), num_boost_round=5)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        with mlflow.start_run(experiment_id=ensure_experiment(settings, "faults")):
            info = mlflow.lightgbm.log_model(
                booster, name="model", registered_model_name=MODEL, pip_requirements=["lightgbm"]
            )
    finally:
        mlflow.set_tracking_uri(previous)
    version = str(info.registered_model_version)
    audit_promotion(settings, MODEL, version)
    return version


@dataclass
class Served:
    world: LocalWorld
    redis: PrivateRedis
    mlflow: PrivateMlflow
    postgres: PrivatePostgres
    version: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.world.settings.serving_port}"

    def predict(self, user_ids: list[int]) -> httpx.Response:
        # 30 s: on a loaded machine (the suite's other lane) a request may wait seconds for a core.
        return httpx.post(f"{self.url}/v1/models/{MODEL}/predict", json={"user_ids": user_ids}, timeout=30)

    def health(self) -> dict:
        resp = _answers(f"{self.url}/health")
        return resp.json() if resp is not None else {}


@pytest.fixture(scope="module")
def served(redis_local, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Served]:
    """``mlctl serve`` (a real process) on the Redis world, its champion in a private MLflow server whose store is
    a private PostgreSQL cluster (as on the stack)."""
    world, server = redis_local
    root = tmp_path_factory.mktemp("served")
    postgres = PrivatePostgres(root / "postgres")
    request.addfinalizer(postgres.destroy)
    postgres.create()
    registry = PrivateMlflow(root / "mlflow", postgres.url)
    request.addfinalizer(registry.kill)
    registry.start()
    settings = world.settings.model_copy(
        update={
            "mlflow_tracking_uri": registry.url,
            "serving_port": free_ports(1)[0],
            "serving_refresh_seconds": 1.0,
            "serving_workers": 1,
        }
    )
    daily_features.materialize(settings, str(NEWEST))
    version = _register_champion(settings)
    log = open(root / "serve.log", "ab")  # noqa: SIM115 - the child holds it
    # MLflow's client retries a refused connection 7 times with backoff (about 4 min): serving's /health would say
    # nothing of a registry that is down for that long (reported). Two tries make the fault visible in seconds.
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    env = {**os.environ, **settings.environment(), **retries}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlctl")), "serve"],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    baseline = Baseline(world.baseline.lake, {MODEL: {"champion": version}})
    up = Served(LocalWorld(settings, baseline), server, registry, postgres, version)
    try:
        wait_for("the champion served", lambda: up.health().get("models", {}).get(MODEL, {}).get("version"), 180, 1)
        yield up
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_redis_down_while_serving_answers_503_and_recovers_without_a_restart(served: Served) -> None:
    users = [int(u) for u in Lake(served.world.settings).read("features/user_behavior", NEWEST)["user_id"][:5]]
    assert served.predict(users).status_code == 200
    served.redis.kill()
    resp = served.predict(users)
    assert resp.status_code == 503, resp.text
    assert "online features unavailable for feature service 'purchase_intent'" in resp.text, resp.text
    served.redis.start()  # empty (no persistence): the day's rows are loaded again, the server is not restarted
    daily_features.materialize(served.world.settings, str(NEWEST))
    resp = wait_for("predictions again", lambda: (r := served.predict(users)).status_code == 200 and r, 60, 0.5)
    body = resp.json()
    assert body["version"] == served.version and all(p["features_found"] for p in body["predictions"]), body
    check_converged(served.world.settings, served.world.baseline)


def test_mlflow_down_while_serving_keeps_the_model_and_health_says_so(served: Served) -> None:
    users = [1, 2, 3]
    served.mlflow.kill()
    health = wait_for(
        "/health to report the registry error",
        lambda: (h := served.health()).get("models", {}).get(MODEL, {}).get("last_error") and h,
        60,
        0.5,
    )
    assert health["models"][MODEL]["version"] == served.version, health
    resp = served.predict(users)
    assert resp.status_code == 200 and resp.json()["version"] == served.version, resp.text
    served.mlflow.start()
    wait_for("/health to clear the error", lambda: not served.health()["models"][MODEL].get("last_error"), 60, 0.5)
    check_converged(served.world.settings, served.world.baseline)


# -- training against the served world's registry: MLflow killed, its PostgreSQL restarted -----------------
@contextlib.contextmanager
def fault_before(owner: object, attribute: str, fault: Callable[[], None]) -> Iterator[list[tuple]]:
    """Inject ``fault`` just before the first call of ``owner.attribute`` (the real call follows): a fixed point
    inside a platform step, since MLflow offers no hooks, and nothing to wait for. Yields the calls seen."""
    real, calls = getattr(owner, attribute), []

    def injected(*args: object, **kwargs: object) -> object:
        if not calls:
            fault()
        calls.append(args)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, attribute, injected)
        yield calls


def _candidate(settings: Settings, name: str = MODEL) -> ModelSpec:
    """purchase_intent's spec with few rounds and short windows, its training set (synthetic, 1,200 rows) saved
    for NEWEST as the training-set step would: what the training step then reads."""
    spec = quick_spec(30, 5, train=2, validation=2, test=2).model_copy(update={"name": name})
    save_training_set(Lake(settings), spec, NEWEST, synthetic_training_frame(spec, NEWEST, users_per_day=200))
    return spec


def test_mlflow_down_during_training_fails_naming_the_server_and_the_rerun_registers_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracking server (and its worker) killed twice inside the training step: once after the run was logged,
    before its version is registered; once after the version was registered, before its trainer is recorded. Each
    try fails naming the server; the rerun reuses the one version and completes it; no alias moves."""
    settings, url = served.world.settings, served.mlflow.url
    # No retries: MLflow's default (7, with backoff) takes about 4 min to give up on a refused connection.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    spec = _candidate(settings)
    versions = [v.version for v in list_versions(settings, MODEL)]
    audit = read_audit(settings, MODEL)

    with fault_before(mlflow, "register_model", served.mlflow.kill), pytest.raises(MlflowException) as before:
        training.train(settings, spec, str(NEWEST))
    assert f"API request to {url}/" in str(before.value) and "Connection refused" in str(before.value)
    served.mlflow.start()
    assert [v.version for v in list_versions(settings, MODEL)] == versions, "the killed try registered a version"
    client = connect(settings)
    (orphan,) = client.search_runs([ensure_experiment(settings, MODEL)], f"tags.{TAG_LOGICAL_DATE} = '{NEWEST}'")
    assert orphan.info.status == "RUNNING"  # its end could not reach the server either (reported)

    with fault_before(training, "record_trainer", served.mlflow.kill), pytest.raises(MlflowException) as after:
        training.train(settings, spec, str(NEWEST))
    assert f"API request to {url}/" in str(after.value)
    served.mlflow.start()
    *_, half = list_versions(settings, MODEL)
    assert half.version not in versions and trained_by(half.tags) == [], "registered, its trainer not recorded"

    rerun = training.train(settings, spec, str(NEWEST))
    assert rerun["version"] == half.version and rerun["trained_by"] == ["scheduler"], rerun
    assert [v.version for v in list_versions(settings, MODEL)] == [*versions, half.version]
    assert read_audit(settings, MODEL) == audit and verify_chain(audit) == []
    check_converged(settings, served.world.baseline)  # the champion still the served one


def test_postgres_restart_during_training_and_promotion_converges(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's PostgreSQL (the MLflow server's store and, on the stack, the audit table) restarted with
    ``pg_ctl restart -m fast`` just before the training step registers its version: the server reconnects and the
    step succeeds at its first request. Then stopped between a promotion's alias move and its audit event: the
    promotion fails naming the database, serving refuses the unaudited champion, and the rerun (the task's retry)
    writes the one missing event."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    # Another model than the served one, its audit log in the table the stack keeps in the registry's database.
    settings = served.world.settings.model_copy(
        update={"profile": "stack", "mlflow_backend_store_uri": served.postgres.url}
    )
    spec = _candidate(settings, "faults_pg")

    with fault_before(mlflow, "register_model", served.postgres.restart) as restarted:
        trained = training.train(settings, spec, str(NEWEST))
    assert restarted and [v.version for v in list_versions(settings, spec.name)] == [trained["version"]]
    version = trained["version"]

    set_version_tags(settings, spec.name, version, {GATE_STATUS: "passed"})
    request_review(settings, spec, version)
    approval = ApprovalRecord("approve", "alice", dt.datetime.now(dt.UTC), "promoted through a database outage")
    fresh = Freshness(True, "not judged here: the fault is in the registry's database")
    try:
        with (
            fault_before(promotion, "write_audit", served.postgres.stop),
            pytest.raises(sqlalchemy.exc.OperationalError, match=f"port {served.postgres.port} failed"),
        ):
            promotion.promote(settings, spec, version, approval, fresh)
    finally:
        served.postgres.start()
    assert aliases(settings, spec.name) == {CHAMPION: version}, "the alias moved before the event was written"
    assert "holds no promotion" in str(serving_refusal(settings, spec.name, CHAMPION, version))

    promotion.promote(settings, spec, version, approval, fresh)
    promotion.promote(settings, spec, version, approval, fresh)  # a second retry adds nothing
    events = read_audit(settings, spec.name)
    assert [(e["action"], e["version"]) for e in events] == [("ask", version), ("promote", version)], events
    assert events[-1]["previous_champion"] is None and verify_chain(events) == []
    assert verify_aliases(settings, spec) == [] and serving_refusal(settings, spec.name, CHAMPION, version) is None
    audit_module._SqlAudit.of.cache_clear()  # its pooled connections would outlive the private cluster
    check_converged(served.world.settings, served.world.baseline)


# -- the stack ---------------------------------------------------------------------------------------------
@dataclass
class FaultStack:
    world: StackWorld
    redis: PrivateRedis
    baseline: Baseline

    @property
    def client(self) -> AirflowClient:
        return AirflowClient(self.world.settings)

    def tries(self, run_id: str) -> dict[str, int]:
        return {t["task_id"]: int(t["try_number"]) for t in self.client.task_instances("daily_features", run_id)}

    def run_of(self, day: dt.date) -> dict | None:
        stamp = f"{day}T00:00:00Z"
        runs = self.client.runs_between("daily_features", stamp, stamp)
        return runs[0] if runs else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """One private stack (LocalExecutor, pandas) with a Redis of its own; every day's lake built in-process as the
    clean reference, the history materialized. The faults then run the last three days through Airflow."""
    root = tmp_path_factory.mktemp("fault-stack")
    server = PrivateRedis(root / "redis")
    server.start()
    try:
        # Retries after 3 s, not 30: the faults below wait for two of them.
        with (
            start_world(root, redis_url=server.url, sim_users=300, task_retry_delay_seconds=3) as world,
            pytest.MonkeyPatch.context() as patch,
        ):
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                patch.setenv(key, world.env[key])
            for day in DAYS:
                for step in (daily_features.extract, daily_features.validate, daily_features.features):
                    step(world.settings, str(day))
            daily_features.materialize(world.settings, str(HISTORY[-1]))
            baseline = snapshot(world.settings, DAYS)
            # The days the faults hit are rebuilt by Airflow from nothing, as new days would be.
            lake = Lake(world.settings)
            for table in _tables(world.settings):
                lake.delete(table, DAYS[len(HISTORY) :])
            yield FaultStack(world, server, baseline)
    finally:
        server.kill()


def _task_process(ti_id: str) -> int | None:
    """The pid of the Airflow task process running task instance ``ti_id`` (its title is ``airflow worker -- ID``)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"airflow worker -- {ti_id}".encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    return None


def _running_task(fault: FaultStack, day: dt.date, task_id: str | None) -> tuple[str, int] | None:
    """The run's id and the pid of its task ``task_id`` (None: any task) while that task's process runs."""
    run = fault.run_of(day)
    if run is None:
        return None
    for ti in fault.client.task_instances("daily_features", run["dag_run_id"]):
        wanted = task_id is None or ti["task_id"] == task_id
        if wanted and ti.get("state") == "running" and (pid := _task_process(ti["id"])):
            return run["dag_run_id"], pid
    return None


def _ti_state(fault: FaultStack, run_id: str, task_id: str) -> str | None:
    states = {t["task_id"]: t.get("state") for t in fault.client.task_instances("daily_features", run_id)}
    return states.get(task_id)


def _log_text(fault: FaultStack, run_id: str, task_id: str, try_number: int) -> str:
    return json.dumps(fault.client.task_log("daily_features", run_id, task_id, try_number))


def test_stack_task_killed_and_redis_down_are_retried_with_their_cause(stack: FaultStack, tmp_path: Path) -> None:
    """kill -9 of a feature task's process, and Redis down when materialize runs: both tasks fail their first try
    with the cause in its log, Airflow retries them, the run succeeds once Redis is back."""
    day = DAYS[4]
    stack.redis.kill()
    log = tmp_path / "run.log"
    proc = stack.world.popen_mlctl("run", "daily_features", "--date", str(day), log=log)
    try:
        run_id, pid = wait_for(
            "a running features task", lambda: _running_task(stack, day, "features_user_behavior"), 300, 0.5
        )
        os.kill(pid, signal.SIGKILL)
        wait_for(
            "materialize's first try to fail", lambda: _ti_state(stack, run_id, "materialize") == "up_for_retry", 300, 1
        )
    finally:
        stack.redis.start()
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]

    tries = stack.tries(run_id)
    assert tries["features_user_behavior"] == 2 and tries["materialize"] == 2, tries
    killed = _log_text(stack, run_id, "features_user_behavior", 1)
    assert "Process terminated by signal" in killed and "SIGKILL" in killed, killed[-2000:]
    assert str(stack.redis.port) in _log_text(stack, run_id, "materialize", 1)
    check_converged(stack.world.settings, stack.baseline.through(day))


def test_stack_backfill_and_manual_run_of_the_same_day_at_once(stack: FaultStack, tmp_path: Path) -> None:
    day = DAYS[5]
    backfill = stack.world.popen_mlctl(
        "backfill", "--dag", "daily_features", "--from", str(day), "--to", str(day), log=tmp_path / "backfill.log"
    )
    manual = stack.world.popen_mlctl("run", "daily_features", "--date", str(day), log=tmp_path / "manual.log")
    codes = {"backfill": backfill.wait(timeout=400), "manual": manual.wait(timeout=400)}
    outputs = {name: (tmp_path / f"{name}.log").read_text() for name in codes}
    assert codes == {"backfill": 0, "manual": 0}, outputs
    stamp = f"{day}T00:00:00Z"
    runs = stack.client.runs_between("daily_features", stamp, stamp)
    assert len(runs) == 1 and runs[0]["state"] == "success", runs
    check_converged(stack.world.settings, stack.baseline.through(day))


def test_stack_scheduler_killed_mid_run_stops_the_stack_and_the_rerun_converges(
    stack: FaultStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    day, world = DAYS[6], stack.world
    log = tmp_path / "run.log"
    proc = world.popen_mlctl("run", "daily_features", "--date", str(day), log=log)
    # Any of the run's tasks (some take only a second or two).
    wait_for("a running task of the run", lambda: _running_task(stack, day, None), 300, 0.2)
    state = supervisor.read_state(world.settings)
    assert state is not None
    scheduler = service_pid(state, "scheduler")
    # Its LocalExecutor workers and serve-logs outlive a SIGKILLed scheduler. `stack down` now ends a killed
    # service's orphans by its session recorded at `up` (checked for the triggerer's serve-logs in
    # tests/test_stack.py, not here); the test still ends whichever is left, so no process of it outlives the run.
    orphans = psutil.Process(scheduler).children(recursive=True)

    def end_orphans() -> None:
        for process in orphans:
            with contextlib.suppress(psutil.Error):
                process.kill()

    request.addfinalizer(end_orphans)
    os.kill(scheduler, signal.SIGKILL)

    # honcho stops every service when one dies: the stack is visibly down, the waiting command fails.
    assert proc.wait(timeout=300) != 0
    wait_for("the stack to stop", lambda: not supervisor.status(world.settings).running, 120, 1)
    printed = world.mlctl("stack", "status")
    assert "not running" in (printed.stdout + printed.stderr).lower(), printed.stdout + printed.stderr

    assert world.mlctl("stack", "down").returncode == 0
    up = world.mlctl("stack", "up", "--timeout", "300")
    assert up.returncode == 0, up.stdout + up.stderr
    rerun = world.mlctl("run", "daily_features", "--date", str(day))
    if rerun.returncode != 0:  # the interrupted run ended failed once the new scheduler reaped it: run it again
        rerun = world.mlctl("run", "daily_features", "--date", str(day))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    check_converged(world.settings, stack.baseline.through(day))

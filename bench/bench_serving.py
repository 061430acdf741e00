"""Online serving under load: `mlctl serve` against `feast serve` on the same store, and champion swaps under load.

Run on the demo world (`make demo` first), with `wrk` installed (`apt-get install wrk`) and Redis at
127.0.0.1:6379: `uv run --frozen --no-sync python -m bench.bench_serving [--home .storefront] [--json FILE]`.
It prints one table per run (and writes it as JSON with ``--json``), about 8 minutes in all.

What is measured, for each online store (``sqlite``, ``redis``): a temporary Feast project of the bench's own (own
registry file; on SQLite its own database file, on Redis its keys deleted at the end) holding the lake's newest
feature day, so checkout scoring's write-back of each scored order never touches the demo world's store. On each
store:

- ``mlctl serve`` as production runs it: 2 worker processes and its writer process (prediction log, checkout
  write-back, registry reads), the registry read every 5 s (every second in the swap run), API keys on (wrk sends a
  bearer token), each route of ``ROUTES`` with one random known user id per request (ids from the
  lake's newest user feature partition);
- ``feast serve`` on the same store and feature service (2 gunicorn workers, worker recycling off): the features
  alone, no model, no auth. "vs feast" is ours / feast's for req/s and for p99.
- max throughput: wrk closed loop, one thread, 1, 4, 16 and 64 connections, ``--seconds`` each;
- fixed rate (the headline p99; target <= 5 ms): ``--rate`` req/s for 20 s over ``--paced`` connections. wrk
  has no open-loop mode, so each connection waits (1000 x connections / rate ms - the unloaded p50) on average
  before each request (drawn within +-50% so the connections drift apart, bench/wrk/post_ids.lua): closed-loop
  pacing per connection, so a slow answer delays that connection's next request and coordinated omission is
  possible; with 32 connections the pacing interval (64 ms) is far above the latency. The achieved rate is shown
  beside the target. Each paced run starts once ``mlctl serve`` is idle: its writer otherwise spends the first tens
  of seconds of it writing the orders the max-throughput steps scored (about 2,000 a second against the ~1,300 it
  writes), and the step would measure that catch-up rather than serving at the rate.
- swaps (``--swap-stores``, sqlite by default): a second registered version of purchase_intent is made from the
  champion's own artifacts (tagged ``bench_serving``, kept and reused by later runs), then, while wrk runs paced
  at the fixed rate, the ``champion`` alias moves between the two versions every 3 s, 10 times, and is put back on
  the original champion at the end. Reported: failed requests (HTTP >= 400 and socket errors; must be 0), swaps
  counted by the server's /metrics (all workers: 10 per worker expected) and how long each move took to be
  visible: new connections poll predict until 20 answers in a row carry the new version (refresh interval 1 s).

Errors are HTTP statuses >= 400 as wrk counts them (no route answers 1xx or 3xx) plus socket errors (connect, read,
write, and timeouts: answers slower than 2 s, whose latency wrk leaves out; the JSON gives timeouts apart).
Latencies are wrk's, from writing the request to reading the whole answer.

Caveats: wrk shares the 2 cores with the servers (one wrk thread); the machine may be shared, so the load
average is printed beside the table: compare runs made under the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import redis

from bench.bench_materialize import delete_redis_project, feast_serve_repo, free_port
from pipelines.features.store import feature_store, materialize_day
from pipelines.features.user_features import ENTITY_COLUMN, USER_FEATURES_TABLE
from pipelines.lake import Lake
from pipelines.registry import registry
from pipelines.serving.auth import ANY_MODEL, add_key
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.specs import load_specs
from tests.audit_support import audit_promotion

LUA = PROJECT_ROOT / "bench" / "wrk" / "post_ids.lua"
REDIS_URL = "127.0.0.1:6379"
WORKERS = 2
# The load steps run at serving's default refresh interval (5 s, as deployed); the swap run at 1 s, so that ten
# swaps fit in half a minute.
LOAD_REFRESH_SECONDS = 5.0
REFRESH_SECONDS = 1
CONNECTIONS = (1, 4, 16, 64)
FIXED_SECONDS = 20
SWAPS, SWAP_EVERY, SWAP_SECONDS = 10, 3.0, 35
VISIBLE_STREAK, POLL_SECONDS = 20, 0.01  # the poller adds at most ~100 requests/s
SWAP_MODEL = "purchase_intent"
SWAP_TAG = "bench_serving"
# Serving loads only versions the audit log vouches for (registry/tamper.py): each swap is an audited promotion
# (gate and approval tags, an audit event) in the name of the model's first reviewer, with this comment, so the
# demo home's history shows the bench's moves for what they are.
SWAP_COMMENT = "bench_serving: champion swap under load"
SAMPLE_IDS = 3000


@dataclass(frozen=True)
class Route:
    """A serving route under load and the ``feast serve`` request that fetches the same features.

    Bodies are JSON templates with one ``%d`` where a known user id goes."""

    name: str
    path: str
    body: str
    feast_body: str


ROUTES: tuple[Route, ...] = (
    Route(
        "purchase_intent/predict",
        "/v1/models/purchase_intent/predict",
        '{"user_ids":[%d]}',
        '{"feature_service":"purchase_intent","entities":{"user_id":[%d]}}',
    ),
    # An order of a known account on its own device and IP, placed the day after the newest feature day; the
    # features feast serve reads for it are the three order histories (order_checkout) it is computed from.
    Route(
        "order_fraud/score",
        "/v1/models/order_fraud/score",
        '{"user_id":%d,"signup_time":"2024-06-01T08:00:00Z","purchase_time":"2025-02-05T10:00:00Z",'
        '"purchase_value":49.5,"device_id":"bench-d%d","ip_address":"bench-ip%d","source":"SEO",'
        '"browser":"Chrome","age":35}',
        '{"feature_service":"order_checkout","entities":{"user_id":[%d],"device_id":["bench-d%d"],'
        '"ip_address":["bench-ip%d"]}}',
    ),
)


class BenchUnavailable(RuntimeError):
    """Something the bench needs is missing (the demo world, wrk, a server that will not start)."""


@dataclass(frozen=True)
class Measurement:
    """One wrk run against one target. ``rate`` is the target rate of a paced run (None: max throughput)."""

    store: str
    target: str
    connections: int
    rate: float | None
    requests: int
    seconds: float
    http_errors: int
    socket_errors: int  # including timeouts
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def errors(self) -> int:
        return self.http_errors + self.socket_errors


@dataclass(frozen=True)
class SwapRun:
    """The champion moved ``moves`` times under paced load."""

    store: str
    moves: int
    load: Measurement
    swaps_counted: float  # storefront_serving_swaps_total gained during the run, all workers
    visible_seconds: list[float | None]  # per move; None = not visible within the poll timeout
    versions: tuple[str, str]  # (original champion, its twin)


@dataclass(frozen=True)
class Target:
    """A running server and what to send it."""

    label: str
    url: str
    body: str
    headers: tuple[str, ...]


# -- the world ---------------------------------------------------------------------------------------------
def demo_settings(home: Path) -> Settings:
    """The demo world's settings; BenchUnavailable (one line, what to do) when it or wrk is missing."""
    if shutil.which("wrk") is None:
        raise BenchUnavailable("wrk is not installed: apt-get install wrk (Debian package)")
    settings = get_settings(home=home, profile="local")
    online = Path(settings.feast_online_path)
    if not online.is_file():
        raise BenchUnavailable(f"no demo world at {settings.home}: {online} is missing; run `make demo` first")
    if not Lake(settings).partitions(USER_FEATURES_TABLE):
        raise BenchUnavailable(f"{settings.lake_uri}: no {USER_FEATURES_TABLE} partition; run `make demo` first")
    if registry.get_champion(settings, SWAP_MODEL) is None:
        raise BenchUnavailable(f"{settings.mlflow_tracking_uri}: {SWAP_MODEL} has no champion; run `make demo` first")
    return settings


def newest_user_ids(settings: Settings, size: int = SAMPLE_IDS) -> tuple[dt.date, list[int]]:
    """The newest user feature day and a seeded sample of its user ids."""
    lake = Lake(settings)
    ds = lake.partitions(USER_FEATURES_TABLE)[-1]
    ids = lake.read(USER_FEATURES_TABLE, ds, columns=[ENTITY_COLUMN])[ENTITY_COLUMN].to_numpy()
    sample = np.random.default_rng(7).choice(ids, size=min(size, len(ids)), replace=False)
    return ds, sorted(int(u) for u in sample)


@contextlib.contextmanager
def private_project(demo: Settings, ds: dt.date, tmp: Path, store: str) -> Iterator[Settings]:
    """A temporary Feast project on ``store`` (sqlite: a database file under ``tmp``; redis: keys deleted at the
    end) holding day ``ds`` of the demo lake, with the demo's MLflow and models."""
    project = f"bench_serving_{uuid.uuid4().hex[:8]}"
    online = {"feast_online_store": "redis", "redis_url": REDIS_URL}
    if store == "sqlite":
        online = {"feast_online_store": "sqlite", "feast_online_path": str(tmp / f"{project}_online.db")}
    settings = get_settings(
        home=demo.home, profile="local", feast_project=project, feast_registry=str(tmp / f"{project}.db"), **online
    )
    try:
        materialize_day(settings, ds, store=feature_store(settings))
        yield settings
    finally:
        if store == "redis":
            delete_redis_project(redis.Redis.from_url(f"redis://{REDIS_URL}"), project)


# -- servers -----------------------------------------------------------------------------------------------
def _wait(ready, server: subprocess.Popen, log: Path, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if server.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise BenchUnavailable(f"{what} did not become ready (log {log}): {' | '.join(tail)}")
        time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _get_json(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> dict | None:
    request = urllib.request.Request(url, body, headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def mlctl_serve(settings: Settings, keys: Path, tmp: Path, refresh: float) -> Iterator[str]:
    """``mlctl serve`` on a free loopback port with the bench's workers, a refresh interval and API keys; yields
    its URL."""
    port = free_port()
    env = {
        **os.environ,
        **settings.environment(),
        "STOREFRONT_SERVING_PORT": str(port),
        "STOREFRONT_SERVING_WORKERS": str(WORKERS),
        "STOREFRONT_SERVING_REFRESH_SECONDS": str(refresh),
        "STOREFRONT_SERVING_API_KEYS": str(keys),
    }
    log = tmp / f"mlctl_serve_{settings.feast_project}_{refresh:g}s.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlctl")), "serve"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: (_get_json(f"{url}/health") or {}).get("status") == "ok", server, log, "mlctl serve")
        yield url
    finally:
        _stop(server)


@contextlib.contextmanager
def feast_serve(settings: Settings, tmp: Path, probe: str) -> Iterator[str]:
    """``feast serve`` on the same registry and online store as ``settings``; yields its URL once ``probe``
    (a get-online-features body) is answered."""
    repo = feast_serve_repo(settings, tmp / f"feast_{settings.feast_project}")
    port = free_port()
    command = [str(Path(sys.executable).with_name("feast")), "-c", str(repo), "serve", "-h", "127.0.0.1"]
    # Gunicorn recycles a worker every 1,000 requests by default: off, so wrk measures serving, not restarts.
    command += ["-p", str(port), "--no-access-log", "-w", str(WORKERS), "--max-requests", "0"]
    log = tmp / f"feast_serve_{settings.feast_project}.log"
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        headers = {"content-type": "application/json"}
        _wait(lambda: _get_json(f"{url}/get-online-features", probe.encode(), headers), server, log, "feast serve")
        yield url
    finally:
        _stop(server)


# -- load --------------------------------------------------------------------------------------------------
def wrk(target: Target, ids_file: Path, connections: int, seconds: float, delay_ms: float = 0) -> subprocess.Popen[str]:
    """Start one wrk thread against ``target``; ``delay_ms`` > 0 paces each connection (post_ids.lua)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s", "-s", str(LUA)]
    for header in target.headers:
        command += ["-H", header]
    command += [target.url, "--", str(ids_file), target.body, f"{delay_ms:.3f}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def measured(
    process: subprocess.Popen[str], store: str, target: Target, connections: int, rate: float | None
) -> Measurement:
    """The Measurement of a finished wrk run (its done() line)."""
    output, _ = process.communicate()
    line = next((x for x in output.splitlines() if x.startswith("WRK_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise BenchUnavailable(f"wrk failed against {target.url}: {output.strip()[-300:]}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    return Measurement(
        store=store,
        target=target.label,
        connections=connections,
        rate=rate,
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        http_errors=r["http_errors"],
        socket_errors=r["socket_errors"],
        timeouts=r["timeouts"],
        p50_ms=r["p50_us"] / 1e3,
        p90_ms=r["p90_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
        max_ms=r["max_us"] / 1e3,
    )


def wait_until_idle(url: str, timeout: float = 240, cores: float = 0.05) -> float:
    """Wait until the ``mlctl serve`` answering at ``url`` (its workers, its writer) used less than ``cores`` of CPU
    over a second; returns the seconds waited (BenchUnavailable after ``timeout``)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    workers = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid}
    parents = {psutil.Process(pid).ppid() for pid in workers}
    processes = [psutil.Process(pid) for pid in parents]
    processes += [child for parent in processes for child in parent.children(recursive=True)]

    def cpu() -> float:
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu()
        time.sleep(1.0)
        if cpu() - before < cores:
            return time.monotonic() - started
    raise BenchUnavailable(f"mlctl serve at {url} was still busy {timeout:g} s after the load stopped")


def pacing_delay(rate: float, connections: int, p50_ms: float) -> float:
    """Mean wait before each request so ``connections`` closed-loop connections send ``rate`` requests/s."""
    return max(1.0, 1000.0 * connections / rate - p50_ms)


def load_steps(
    store: str, server: str, targets: list[Target], ids_file: Path, seconds: float, rate: float, paced: int
) -> list[Measurement]:
    """Warm up each target, then max throughput at each concurrency and the fixed rate, targets interleaved
    per step so a change in the machine's load hits all of them alike; a paced run of ``mlctl serve`` (at
    ``server``) starts once it is idle."""
    for target in targets:
        measured(wrk(target, ids_file, 16, 3), store, target, 16, None)
    results: list[Measurement] = []
    for connections in CONNECTIONS:
        for target in targets:
            results.append(measured(wrk(target, ids_file, connections, seconds), store, target, connections, None))
    for target in targets:
        unloaded = next(m for m in results if m.target == target.label and m.connections == 1)
        delay = pacing_delay(rate, paced, unloaded.p50_ms)
        if target.url.startswith(server + "/"):  # ours, not feast serve on a port that merely starts alike
            waited = wait_until_idle(server)
            print(f"{store}: {target.label}: mlctl serve idle after {waited:.0f} s; paced run", file=sys.stderr)
        results.append(measured(wrk(target, ids_file, paced, FIXED_SECONDS, delay), store, target, paced, rate))
    return results


# -- swaps -------------------------------------------------------------------------------------------------
def swap_twin(settings: Settings) -> tuple[str, str]:
    """(champion version, a second version of the champion's own artifacts): reused when an earlier run made it."""
    champion = registry.get_champion(settings, SWAP_MODEL)
    if champion is None:
        raise BenchUnavailable(f"{settings.mlflow_tracking_uri}: {SWAP_MODEL} lost its champion during the bench")
    for info in registry.list_versions(settings, SWAP_MODEL):
        if info.tags.get(SWAP_TAG) == f"twin of v{champion.version}" and info.source == champion.source:
            return champion.version, info.version
    twin = registry.connect(settings).create_model_version(
        SWAP_MODEL,
        source=champion.source,
        run_id=champion.run_id or None,
        tags={SWAP_TAG: f"twin of v{champion.version}"},
    )
    return champion.version, str(twin.version)


def swaps_total(url: str) -> float:
    """storefront_serving_swaps_total of the swap model, summed over the workers' samples."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(rf'^storefront_serving_swaps_total\{{[^}}]*model="{SWAP_MODEL}"[^}}]*\}} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def seconds_until_visible(
    target: Target, version: str, user_id: int, moved_at: float, timeout: float = 20
) -> float | None:
    """Seconds from the alias move to the first of ``VISIBLE_STREAK`` answers in a row, each on a new connection,
    carrying ``version``; None if that does not happen within ``timeout``."""
    headers = dict(h.split(": ", 1) for h in target.headers) | {"content-type": "application/json"}
    body = target.body.replace("%d", str(user_id)).encode()
    streak_began, streak = 0.0, 0
    while time.monotonic() - moved_at < timeout:
        asked = time.monotonic()
        answer = _get_json(target.url, body, headers)  # urllib opens a new connection per request
        if answer is not None and answer.get("version") == version:
            streak_began, streak = (streak_began, streak + 1) if streak else (asked, 1)
            if streak == VISIBLE_STREAK:
                return streak_began - moved_at
        else:
            streak = 0
        time.sleep(POLL_SECONDS)
    return None


def swap_run(
    store: str,
    settings: Settings,
    server: str,
    target: Target,
    ids: list[int],
    ids_file: Path,
    delay: float,
    rate: float,
    paced: int,
) -> SwapRun:
    """Move the champion alias SWAPS times under paced load; the original champion holds it again at the end."""
    original, twin = swap_twin(settings)
    reviewer = load_specs(settings.models_dir)[SWAP_MODEL].reviewers[0]
    before = swaps_total(server)
    load = wrk(target, ids_file, paced, SWAP_SECONDS, delay)
    visible: list[float | None] = []
    try:
        time.sleep(2)
        for i in range(SWAPS):
            version = twin if i % 2 == 0 else original
            tick = time.monotonic()
            audit_promotion(settings, SWAP_MODEL, version, by=reviewer, comment=SWAP_COMMENT)
            visible.append(seconds_until_visible(target, version, ids[i], tick))
            time.sleep(max(0.0, SWAP_EVERY - (time.monotonic() - tick)))
    except BaseException:
        load.kill()
        raise
    finally:
        champion = registry.get_alias(settings, SWAP_MODEL, registry.CHAMPION)
        if champion is None or champion.version != original:
            audit_promotion(settings, SWAP_MODEL, original, by=reviewer, comment=SWAP_COMMENT)
    result = measured(load, store, target, paced, rate)
    time.sleep(2 * REFRESH_SECONDS)
    return SwapRun(store, SWAPS, result, swaps_total(server) - before, visible, (original, twin))


# -- the run -----------------------------------------------------------------------------------------------
def targets_of(ours: str, feast: str, token: str) -> list[tuple[Target, Target]]:
    """(our route, feast serve's request for the same features) for every route of ROUTES."""
    auth = (f"Authorization: Bearer {token}",)
    return [
        (
            Target(route.name, ours + route.path, route.body, auth),
            Target(f"feast serve ({route.name})", feast + "/get-online-features", route.feast_body, ()),
        )
        for route in ROUTES
    ]


def run(
    home: Path, stores: list[str], swap_stores: list[str], seconds: float, rate: float, paced: int
) -> tuple[list[Measurement], list[SwapRun], dt.date]:
    demo = demo_settings(home)
    ds, ids = newest_user_ids(demo)
    results: list[Measurement] = []
    swaps: list[SwapRun] = []
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp_name:
        tmp = Path(tmp_name)
        ids_file = tmp / "user_ids.txt"
        ids_file.write_text("".join(f"{u}\n" for u in ids))
        keys = tmp / "serving_keys.yaml"
        token = add_key(keys, "bench_serving", [ANY_MODEL])
        for store in stores:
            with contextlib.ExitStack() as stack:
                settings = stack.enter_context(private_project(demo, ds, tmp, store))
                ours = stack.enter_context(mlctl_serve(settings, keys, tmp, LOAD_REFRESH_SECONDS))
                feast = stack.enter_context(feast_serve(settings, tmp, ROUTES[0].feast_body.replace("%d", str(ids[0]))))
                pairs = targets_of(ours, feast, token)
                measured_here = load_steps(
                    store, ours, [t for pair in pairs for t in pair], ids_file, seconds, rate, paced
                )
                results += measured_here
                if store in swap_stores:
                    predict = pairs[0][0]
                    unloaded = next(m for m in measured_here if m.target == predict.label and m.connections == 1)
                    delay = pacing_delay(rate, paced, unloaded.p50_ms)
                    stack.close()  # the swap run gets its own server, refreshing every REFRESH_SECONDS
                    settings = stack.enter_context(private_project(demo, ds, tmp, store))
                    ours = stack.enter_context(mlctl_serve(settings, keys, tmp, REFRESH_SECONDS))
                    predict = targets_of(ours, feast, token)[0][0]
                    swaps.append(swap_run(store, settings, ours, predict, ids, ids_file, delay, rate, paced))
    return results, swaps, ds


# -- the table ---------------------------------------------------------------------------------------------
def _versus(ours: Measurement, results: list[Measurement]) -> str:
    feast = next(
        (
            m
            for m in results
            if m.store == ours.store
            and m.target == f"feast serve ({ours.target})"
            and (m.connections, m.rate) == (ours.connections, ours.rate)
        ),
        None,
    )
    if feast is None:
        return "-"
    return f"{ours.per_second / feast.per_second:.2f}x, {ours.p99_ms / feast.p99_ms:.2f}x"


def code_version() -> str:
    """The commit measured, and whether the serving code had uncommitted changes (the tree is shared)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "pipelines/serving")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted pipelines/serving changes" if dirty else "")


def side_by_side(results: list[Measurement]) -> list[str]:
    """Per route, each store's best throughput and fixed-rate latency beside ``feast serve``'s on that store."""
    stores = list(dict.fromkeys(m.store for m in results))
    lines = [
        "per route and store: max req/s over the concurrency steps | fixed rate: achieved req/s, p50/p99 ms | "
        "errors in all steps; feast serve likewise (features only)"
    ]
    for route in ROUTES:
        cells = []
        for store in stores:
            for label, target in (("ours", route.name), ("feast", f"feast serve ({route.name})")):
                runs = [m for m in results if m.store == store and m.target == target]
                paced = next((m for m in runs if m.rate is not None), None)
                if not runs or paced is None:
                    continue
                best = max(m.per_second for m in runs if m.rate is None)
                cells.append(
                    f"{store} {label}: {best:,.0f} | {paced.per_second:,.0f}/s {paced.p50_ms:.2f}/{paced.p99_ms:.2f}"
                    f" | {sum(m.errors for m in runs)}"
                )
        lines.append(f"  {route.name}: " + "; ".join(cells))
    return lines


def table(results: list[Measurement], swaps: list[SwapRun], ds: dt.date, load: tuple[float, float], code: str) -> str:
    lines = [
        f"serving at {code}, one random known user id per request (user features of {ds}), wrk -t1; "
        f"{WORKERS} workers each; load average {load[0]:.1f} before, {load[1]:.1f} after (2 cores)",
        f"{'store':<7} {'target':<40} {'concurrency':>12} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6}  vs feast serve (req/s, p99)",
    ]
    for m in results:
        concurrency = f"{m.connections} @{m.rate:g}/s" if m.rate is not None else str(m.connections)
        versus = "-" if m.target.startswith("feast serve") else _versus(m, results)
        lines.append(
            f"{m.store:<7} {m.target:<40} {concurrency:>12} {m.per_second:>7,.0f} {m.p50_ms:>7.2f} "
            f"{m.p99_ms:>7.2f} {m.errors:>6}  {versus}"
        )
    lines.append(
        "@N/s rows: closed-loop pacing per connection (not open loop; coordinated omission possible), "
        "req/s = achieved rate; their p99 is the headline (target <= 5 ms)"
    )
    lines += side_by_side(results)
    for s in swaps:
        seen = [v for v in s.visible_seconds if v is not None]
        late = len(s.visible_seconds) - len(seen)
        spread = f"{min(seen):.2f}-{max(seen):.2f} s (median {float(np.median(seen)):.2f})" if seen else "never"
        lines.append(
            f"swaps ({s.store}): {s.moves} champion moves v{s.versions[0]}<->v{s.versions[1]} every {SWAP_EVERY:g} s "
            f"under {s.load.rate:g} req/s paced (achieved {s.load.per_second:,.0f}/s, p99 {s.load.p99_ms:.2f} ms): "
            f"failed requests {s.load.errors}; swaps counted by /metrics {s.swaps_counted:g} (expected "
            f"{s.moves * WORKERS} = {s.moves} x {WORKERS} workers); visible on new connections after {spread}"
            + (f", {late} not within 20 s" if late else "")
            + f" (refresh {REFRESH_SECONDS} s); champion back on v{s.versions[0]}, v{s.versions[1]} kept "
            f"(tag {SWAP_TAG})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=PROJECT_ROOT / ".storefront", help="the demo world's home")
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "redis"], default=["sqlite", "redis"])
    parser.add_argument("--swap-stores", nargs="*", choices=["sqlite", "redis"], default=["sqlite"])
    parser.add_argument("--seconds", type=float, default=8, help="seconds of each max-throughput step (8)")
    parser.add_argument("--rate", type=float, default=500, help="the fixed rate, requests/s (500)")
    parser.add_argument("--paced", type=int, default=32, help="connections of the fixed-rate runs (32)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    before, code = os.getloadavg()[0], code_version()
    try:
        results, swaps, ds = run(args.home, args.stores, args.swap_stores, args.seconds, args.rate, args.paced)
    except BenchUnavailable as exc:
        print(f"bench_serving: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    load = (before, os.getloadavg()[0])
    print(table(results, swaps, ds, load, code))
    if args.json:
        document = {
            "command": " ".join(sys.argv),
            "code": code,
            "ds": ds.isoformat(),
            "load_average": load,
            "measurements": [asdict(m) | {"per_second": m.per_second} for m in results],
            "swaps": [asdict(s) | {"load": asdict(s.load) | {"per_second": s.load.per_second}} for s in swaps],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()

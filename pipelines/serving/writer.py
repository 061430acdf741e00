"""The serving writer: one process per ``mlctl serve`` (started by pipelines/serving/server.py beside the uvicorn
workers) that does the serving's background work, so that a worker process only answers requests.

A worker's background threads took its interpreter lock from the requests: measured in a worker at 500 requests/s,
each registry read of the refresh cost about 5 ms of CPU (one per model every interval), each prediction log part
3-12 ms, each checkout write-back batch 15-25 ms (four a second), and a request arriving meanwhile waited (the p99
at a fixed load; the write-back was a third of a scored order's CPU in the worker). Here a worker only sends each
prediction row and each scored order's history rows, pickled, over a Unix ``SOCK_SEQPACKET`` socket (a non-blocking
send: microseconds; a scored order's three history rows and its prediction row go as one message, ``together``);
this process:

- appends the rows to its ``PredictionLog`` (one per server: parts named by this process's pid), which writes the
  lake parts and, on shutdown, everything still pending;
- writes the order histories in batches (``HistoryWriter``, the same code a worker runs without a writer) and
  tells each worker which of its rows landed, so the worker drops them from its overlay (it answers its own
  pending rows until then);
- reads every model's aliases and tags from the registry every refresh interval and publishes them in
  ``registry.json``; the workers stat that file and follow it (a registry read per model per interval in all).

It stops when its standard input closes (server.py closes it once the workers have exited, or the server died):
it then reads what the workers still sent, writes the pending histories and flushes the prediction log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import gc
import itertools
import json
import logging
import os
import pickle
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipelines.serving.prediction_log import prediction_row

log = logging.getLogger(__name__)

SOCKET_NAME = "writer.sock"
REGISTRY_NAME = "registry.json"
# The largest message read (a history row of a busy key is a few kilobytes, of an IP shared by thousands of orders
# a month hundreds). A seqpacket message must also fit in the sender's socket buffer: it is raised towards this, as
# far as the kernel allows (net.core.wmem_max); a message that still does not fit is dropped and logged.
MESSAGE_BYTES = 4 << 20
QUEUED_MESSAGES = 50_000  # a worker's messages held while the writer is busy or not up yet; then refused
RECONNECT_SECONDS = 0.2  # a worker retries connecting at most this often
BATCH_SECONDS = 0.01  # the writer reads its sockets at most this often: fewer wake-ups on the shared cores
STOP_GRACE_SECONDS = 10.0  # after stdin closes, how long to wait for workers still connected
STOP_WRITE_SECONDS = 20.0  # then for the pending history writes, then for the prediction log's
# The writer's niceness (Linux: 0..19, higher yields more): its work can wait a few milliseconds, a request cannot.
# At 500 scored orders/s it writes a batch of ~125 orders every 250 ms, ~75 ms of CPU each (encoding the histories'
# lists; profiled on a busy machine): at the workers' priority it took one of the two cores from them meanwhile.
NICENESS = 10

# Messages, worker -> writer: ("log", prediction row) | ("order", seq, entity, row, at) | ("many", [message, ...]);
# writer -> worker: ("landed", [(entity, key, seq), ...]).
Message = tuple[Any, ...]


def socket_path(directory: Path) -> Path:
    return directory / SOCKET_NAME


def registry_path(directory: Path) -> Path:
    return directory / REGISTRY_NAME


# -- the worker's side -------------------------------------------------------------------------------------------
class WriterClient:
    """A worker's connection to the writer: ``send`` never blocks (a message the socket cannot take now is queued,
    up to QUEUED_MESSAGES, and sent with the next one or by ``refresh``, which the worker's refresh loop calls);
    ``landed`` returns the acknowledgements received; the messages sent by a thread within ``together`` go as one
    (each message costs a send here and a receive, a wake-up and an unpickling in the writer)."""

    name = "writer"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path = str(socket_path(directory))
        self._sock: socket.socket | None = None
        self._queued: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._next_connect = 0.0
        self._closed = False
        self._received = bytearray(MESSAGE_BYTES)
        self._gathered = threading.local()  # the messages of a thread inside ``together``
        self.refused = 0

    def send(self, message: Message) -> bool:
        """Queue ``message`` for the writer; False when it is refused (the writer gone or too far behind). Within
        ``together`` it is held and sent with the others when the block ends."""
        gathered: list[Message] | None = getattr(self._gathered, "messages", None)
        if gathered is not None:
            with self._lock:
                if self._refusing():
                    return False
            gathered.append(message)
            return True
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._refusing():
                return False
            if len(data) > MESSAGE_BYTES:
                log.error(
                    "serving writer: a %d-byte message is over the %d a message may have; refused",
                    len(data),
                    MESSAGE_BYTES,
                )
                self.refused += 1
                return False
            self._queued.append(data)
            self._send_queued()
            return True

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Send the messages this thread sends inside the block as one message, when it ends. (Refused as a whole if
        it does not fit a message, which is logged: the rows stay in the sender's overlay, the prediction rows are
        not logged; a scored order's are a few kilobytes against MESSAGE_BYTES.)"""
        if getattr(self._gathered, "messages", None) is not None:
            yield  # already gathering: the outer block sends them
            return
        self._gathered.messages = []
        try:
            yield
        finally:
            messages, self._gathered.messages = self._gathered.messages, None
            if len(messages) == 1:
                self.send(messages[0])
            elif messages:
                self.send(("many", messages))

    def _refusing(self) -> bool:
        """Whether messages are refused now (the client closed, or the writer too far behind); counts and logs it."""
        if not self._closed and len(self._queued) < QUEUED_MESSAGES:
            return False
        if self.refused % 10_000 == 0:
            log.error(
                "serving writer at %s unreachable or %d messages behind: refusing rows (%d so far; they count in "
                "storefront_serving_predictions_not_logged_total); see the writer's log",
                self._path,
                len(self._queued),
                self.refused + 1,
            )
        self.refused += 1
        return True

    def refresh(self) -> None:
        """Send what is queued (when requests stop, nothing else would)."""
        with self._lock:
            if not self._closed:
                self._send_queued()

    def landed(self) -> list[tuple[str, object, int]]:
        """(entity, key, seq) of every history row the writer wrote since the last call."""
        rows: list[tuple[str, object, int]] = []
        with self._lock:
            sock = self._sock
            while sock is not None:
                try:
                    size = sock.recv_into(self._received)
                except BlockingIOError:
                    break
                except OSError:
                    self._drop()
                    break
                if not size:
                    self._drop()
                    break
                rows.extend(pickle.loads(memoryview(self._received)[:size])[1])
        return rows

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (waiting up to ``timeout`` for a busy writer), then disconnect."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            while self._queued and time.monotonic() < deadline:
                self._send_queued()
                if self._queued:
                    time.sleep(0.01)
            if self._queued:
                log.error("serving writer: %d message(s) not sent at shutdown; they are lost", len(self._queued))
            self._drop()

    def _send_queued(self) -> None:
        sock = self._connected()
        while sock is not None and self._queued:
            try:
                sock.send(self._queued[0])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    self._drop()  # the writer went away: reconnect on the next send
                    return
                log.error("serving writer: a %d-byte message does not fit the socket; dropped", len(self._queued[0]))
                self.refused += 1
            self._queued.popleft()

    def _connected(self) -> socket.socket | None:
        if self._sock is not None or time.monotonic() < self._next_connect:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            self._next_connect = time.monotonic() + RECONNECT_SECONDS
            return None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MESSAGE_BYTES)
        sock.setblocking(False)
        self._sock = sock
        return sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class RemoteLog:
    """A worker's prediction log under ``mlctl serve``: each row goes to the writer, whose ``PredictionLog`` writes
    the parts (False: the writer refused it, counted as not logged)."""

    def __init__(self, client: WriterClient) -> None:
        self._client = client

    def append(
        self,
        model: str,
        version: str,
        request_id: str,
        entity: Mapping[str, int | str | float],
        score: float,
        features: Mapping[str, float],
        arm: str = "champion",
        at: dt.datetime | None = None,
    ) -> bool:
        row = prediction_row(model, version, request_id, entity, score, features, arm, at)
        return self._client.send(("log", row))


class PublishedRegistry:
    """A worker's view of the writer's ``registry.json``: ``refresh`` (the worker's refresh loop) stats it and,
    when it changed, hands each served model its aliases and tags (``Served.follow``)."""

    name = "registry"

    def __init__(self, directory: Path, served: dict[str, Any]) -> None:
        self._path = registry_path(directory)
        self._served = served
        self._stamp: tuple[int, int] | None = None

    def refresh(self) -> None:
        try:
            info = self._path.stat()
        except FileNotFoundError:
            return  # not published yet: the models loaded at start-up keep serving
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        models = json.loads(self._path.read_text())["models"]
        self._stamp = stamp
        for name, served in self._served.items():
            entry = models.get(name)
            if isinstance(entry, dict) and "error" in entry:
                served.refresh()  # the writer could not read the registry: read it here, which records why
            else:
                served.follow(None if entry is None else (entry["aliases"], entry["tags"]))


# -- the writer's side -------------------------------------------------------------------------------------------
class RegistryPublisher:
    """Reads every model's aliases and tags every ``interval`` seconds and writes them to ``registry.json``
    (atomically: the workers may read it at any time)."""

    def __init__(self, settings: Any, names: list[str], directory: Path, interval: float) -> None:
        self._settings = settings
        self._names = names
        self._path = registry_path(directory)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-publish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_GRACE_SECONDS)  # a registry read in progress; the last writes come after

    def publish(self) -> None:
        from pipelines.serving.model_loader import registered_model

        models: dict[str, Any] = {}
        for name in self._names:
            try:
                found = registered_model(self._settings, name)
            except Exception as exc:  # the registry being down: the workers read it themselves and record why
                models[name] = {"error": str(exc)}
                continue
            models[name] = None if found is None else {"aliases": found[0], "tags": found[1]}
        temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({"read_at": time.time(), "models": models}))
        os.replace(temporary, self._path)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.publish()
            except Exception:  # keep publishing whatever one read does
                log.exception("serving writer: publishing the registry to %s failed", self._path)


class Writer:
    """The writer's loop: accept the workers, read their messages, hand them to the log and the histories."""

    def __init__(self, directory: Path, on_log: Callable[[tuple], None], store: Callable[[], Any]) -> None:
        from pipelines.serving.order_state import HistoryWriter

        self._on_log = on_log
        self.histories = HistoryWriter(store, self.landed)
        self._selector = selectors.DefaultSelector()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._server.bind(str(socket_path(directory)))
        self._server.listen(64)
        self._server.setblocking(False)
        self._selector.register(self._server, selectors.EVENT_READ)
        self._received = bytearray(MESSAGE_BYTES)
        self._connections: dict[int, socket.socket] = {}  # by origin: a number never reused (fds are)
        self._origins = itertools.count(1)
        self._lock = threading.Lock()

    def landed(self, origin: int, rows: list[tuple[str, object, int]]) -> None:
        """Tell worker ``origin`` which of its rows were written (called from the histories' thread). Never blocks:
        a worker that does not read its acknowledgements keeps those rows in its overlay until replaced."""
        with self._lock:
            sock = self._connections.get(origin)
            if sock is None:
                return  # a worker gone meanwhile no longer needs it
            try:
                sock.send(pickle.dumps(("landed", rows), protocol=pickle.HIGHEST_PROTOCOL))
            except OSError as exc:
                log.warning("serving writer: could not tell a worker %d row(s) landed (%s)", len(rows), exc)

    def serve(self, stopping: threading.Event) -> None:
        """Read until ``stopping`` is set, then until every worker disconnected (or STOP_GRACE_SECONDS)."""
        self._server_open = True
        deadline: float | None = None
        while True:
            if stopping.is_set():
                if self._server_open:
                    # A worker connected but not accepted yet (the writer was still starting) has sent its rows
                    # into that connection: take it before closing, or they are lost with the listening socket.
                    self._accept()
                    self._selector.unregister(self._server)
                    self._server.close()
                    self._server_open = False
                    deadline = time.monotonic() + STOP_GRACE_SECONDS
                if not self._connections or (deadline is not None and time.monotonic() > deadline):
                    break
            for key, _ in self._selector.select(timeout=0.2):
                if key.fileobj is self._server:
                    self._accept()
                else:
                    self._read(key.data)
            time.sleep(BATCH_SECONDS)
        for origin in list(self._connections):
            self._read(origin)
            self._disconnect(origin)

    def _accept(self) -> None:
        """Accept every connection waiting."""
        while True:
            try:
                sock, _ = self._server.accept()
            except BlockingIOError:
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MESSAGE_BYTES)
            sock.setblocking(False)
            origin = next(self._origins)
            with self._lock:
                self._connections[origin] = sock
            self._selector.register(sock, selectors.EVENT_READ, origin)

    def _read(self, origin: int) -> None:
        sock = self._connections.get(origin)
        while sock is not None:
            try:
                size = sock.recv_into(self._received)
            except BlockingIOError:
                return
            except OSError:
                size = 0
            if not size:
                self._disconnect(origin)
                return
            try:
                self._dispatch(origin, pickle.loads(memoryview(self._received)[:size]))
            except Exception:  # one bad message must not stop the writer
                log.exception("serving writer: a %d-byte message from a worker could not be handled", size)

    def _dispatch(self, origin: int, message: Message) -> None:
        kind = message[0]
        if kind == "many":
            for one in message[1]:
                self._dispatch(origin, one)
        elif kind == "log":
            self._on_log(message[1])
        elif kind == "order":
            _, seq, entity, row, at = message
            self.histories.put(origin, seq, entity, row, at)
        else:
            log.error("serving writer: unknown message %r from a worker; ignored", kind)

    def _disconnect(self, origin: int) -> None:
        with self._lock:
            sock = self._connections.pop(origin, None)
        if sock is not None:
            self._selector.unregister(sock)
            sock.close()


def main(directory: Path) -> None:
    """The writer process (``python -m pipelines.serving.writer DIRECTORY``): settings from the environment."""
    from pipelines.lake import Lake
    from pipelines.serving.features import FeastFeatures
    from pipelines.serving.metrics import ServingMetrics
    from pipelines.serving.prediction_log import PredictionLog
    from pipelines.settings import get_settings
    from pipelines.specs import load_specs
    from pipelines.usecases import use_case

    # Ctrl-C and the server's SIGTERM reach this process's group too: this process stops when server.py says so
    # (its stdin closes), after the workers sent their last rows.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(NICENESS)
    settings = get_settings()
    metrics = ServingMetrics()
    prediction_log = PredictionLog(Lake(settings)) if settings.serving_log_predictions else None

    def on_log(row: tuple) -> None:
        if prediction_log is not None and not prediction_log.add(row):
            metrics.unlogged.labels(row[0]).inc()

    specs = load_specs(settings.models_dir)
    features = FeastFeatures(settings)
    if any(use_case(spec.entity).serving == "checkout" for spec in specs.values()):
        # Built before the first orders come (it takes seconds), so their write-back does not wait for it.
        try:
            features.store()
        except Exception:  # retried by the first write; the workers keep their orders until then
            log.exception("serving writer: the Feast store for the order histories could not be built")
    # As in the workers (pipelines/serving/app.py): what is loaded now lives as long as the process; kept out of the
    # collector's full passes.
    gc.collect()
    gc.freeze()
    writer = Writer(directory, on_log, features.store)
    names = sorted(specs)
    publisher = RegistryPublisher(settings, names, directory, settings.serving_refresh_seconds)
    publisher.start()
    stopping = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stopping.set()), name="stdin-watch", daemon=True).start()
    try:
        writer.serve(stopping)
    finally:
        publisher.stop()
        # Within server.py's WRITER_STOP_SECONDS: the first history write may still be building the Feast store.
        writer.histories.close(timeout=STOP_WRITE_SECONDS)
        if prediction_log is not None:
            prediction_log.close(timeout=STOP_WRITE_SECONDS)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s [%(process)d writer] %(message)s"
    )
    logging.getLogger("feast").setLevel(logging.WARNING)  # as in the workers: Feast logs every registry refresh
    main(Path(sys.argv[1]))

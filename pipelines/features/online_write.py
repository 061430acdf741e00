"""Write a frame of one feature view's rows into Feast's online store, byte for byte in Feast's own layout.

Feast 0.67 (entity key serialization v3) reads what this writes: Redis hashes or SQLite rows. The bytes are built
per batch with numpy instead of one protobuf object per value, which is where stock materialization spends its time;
Redis gets them as raw pipelined commands, SQLite as multi-row upserts.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import hiredis
import numpy as np
import pandas as pd
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name, extract_text_and_num
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.Value_pb2 import BoolList, DoubleList, FloatList, Int32List, Int64List, StringList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType as KeyType
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

DEFAULT_BATCH_ROWS = 10_000
_DOUBLE_TAG = b"\x29"  # ValueProto field 5 (double_val), wire type 1 (64-bit)
_CRLF = b"\r\n"


class OnlineWriteError(RuntimeError):
    """The frame or the online store cannot be written in Feast's layout (missing column, unsupported store)."""


@dataclass(frozen=True)
class _Cells:
    """One piece of every row's bytes: ``matrix[i, :lengths[i]]`` is row i's piece (all of it if lengths is None)."""

    matrix: np.ndarray  # uint8, shape (rows, width) or (1, width) for a piece every row shares
    lengths: np.ndarray | None = None

    @classmethod
    def constant(cls, data: bytes) -> _Cells:
        return cls(np.frombuffer(data, dtype=np.uint8).reshape(1, -1))

    @classmethod
    def padded(cls, values: list[bytes]) -> _Cells:
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        width = int(lengths.max(initial=0))
        matrix = np.zeros((len(values), width), dtype=np.uint8)
        matrix[np.arange(width) < lengths[:, None]] = np.frombuffer(b"".join(values), dtype=np.uint8)
        return cls(matrix, None if (lengths == width).all() else lengths)  # equal lengths need no byte mask

    def take(self, rows: np.ndarray) -> _Cells:
        """The pieces of the rows selected by an index or boolean array (a shared piece stays shared)."""
        if self.matrix.shape[0] == 1 and self.lengths is None:
            return self
        return _Cells(self.matrix[rows], None if self.lengths is None else self.lengths[rows])

    def to_list(self) -> list[bytes]:
        """Each row's piece as bytes."""
        rows, width = self.matrix.shape
        if width == 0:
            return [b""] * rows
        out = np.ascontiguousarray(self.matrix).view(f"V{width}").ravel().tolist()
        if self.lengths is not None:
            for i in np.flatnonzero(self.lengths != width).tolist():
                out[i] = out[i][: self.lengths[i]]
        return out

    def row_lengths(self, rows: int) -> np.ndarray:
        return np.full(rows, self.matrix.shape[1]) if self.lengths is None else self.lengths


def _join(pieces: list[_Cells], rows: int) -> tuple[bytes, np.ndarray]:
    """Every row's pieces concatenated, rows one after another, and the byte length of each row."""
    width = sum(p.matrix.shape[1] for p in pieces)
    out = np.empty((rows, width), dtype=np.uint8)
    keep = None if all(p.lengths is None for p in pieces) else np.ones((rows, width), dtype=bool)
    at = 0
    for piece in pieces:
        w = piece.matrix.shape[1]
        out[:, at : at + w] = piece.matrix
        if piece.lengths is not None:
            keep[:, at : at + w] = np.arange(w) < piece.lengths[:, None]
        at += w
    lengths = sum((p.row_lengths(rows) for p in pieces), start=np.zeros(rows, dtype=np.int64))
    return (out if keep is None else out[keep]).tobytes(), lengths


def _rows(pieces: list[_Cells], rows: int) -> list[bytes]:
    """Every row's pieces concatenated, as one bytes object per row."""
    if all(p.lengths is None for p in pieces):
        return _Cells(np.hstack([np.broadcast_to(p.matrix, (rows, p.matrix.shape[1])) for p in pieces])).to_list()
    data, lengths = _join(pieces, rows)
    ends = np.cumsum(lengths).tolist()
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


# -- Feast's value and key encodings --------------------------------------------------------------------------
def _values(column: pd.Series, value_type: ValueType) -> _Cells:
    """Serialized ValueProtos of a feature column; a missing value is an empty ValueProto (zero bytes), as in Feast."""
    if value_type == ValueType.DOUBLE:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="<f8", na_value=np.nan)
        matrix = np.empty((len(values), 9), dtype=np.uint8)
        matrix[:, 0] = _DOUBLE_TAG[0]
        matrix[:, 1:] = values.view(np.uint8).reshape(-1, 8)
        return _Cells(matrix, np.where(np.isnan(values), 0, 9))
    if value_type in _LISTS:
        return _Cells.padded(_list_protos(column, value_type))
    # Other types are rare here: let Feast build their protos, then lay the bytes out like the fast path's.
    protos = python_values_to_proto_values(column.to_numpy(dtype=object), value_type)
    return _Cells.padded([p.SerializeToString() for p in protos])


# List value types: the ValueProto field each is stored in, and its message (Feast's own protos).
_LISTS = {
    ValueType.INT64_LIST: ("int64_list_val", Int64List),
    ValueType.INT32_LIST: ("int32_list_val", Int32List),
    ValueType.DOUBLE_LIST: ("double_list_val", DoubleList),
    ValueType.FLOAT_LIST: ("float_list_val", FloatList),
    ValueType.STRING_LIST: ("string_list_val", StringList),
    ValueType.BOOL_LIST: ("bool_list_val", BoolList),
}


def _list_protos(column: pd.Series, value_type: ValueType) -> list[bytes]:
    """Serialized list ValueProtos built directly (Feast's converter checks every item's type in Python: the
    order histories' lists took seconds a day through it); a missing list is an empty ValueProto, as in Feast."""
    field, message = _LISTS[value_type]
    out = []
    for value in column.tolist():
        if value is None or (isinstance(value, float) and value != value):
            out.append(b"")
            continue
        items = value.tolist() if isinstance(value, np.ndarray) else list(value)
        out.append(ValueProto(**{field: message(val=items)}).SerializeToString())
    return out


def _value_texts(column: pd.Series, value_type: ValueType) -> list[str | None]:
    """The SQLite store's ``value_text`` column: ``str`` of the value, None when missing (and for lists)."""
    if value_type in _LISTS:
        return [None] * len(column)
    if value_type == ValueType.DOUBLE:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="<f8", na_value=np.nan)
        # str() per distinct value: counts and flags repeat a lot, and str(float) is the costly part.
        # Distinct by bit pattern, so -0.0 keeps its own text ("-0.0") as in Feast.
        distinct, inverse = np.unique(values.view(np.int64), return_inverse=True)
        texts = np.array([None if v != v else str(v) for v in distinct.view(np.float64).tolist()], dtype=object)
        return texts[inverse.reshape(-1)].tolist()
    protos = python_values_to_proto_values(column.to_numpy(dtype=object), value_type)
    return [extract_text_and_num(p, False)[0] for p in protos]


def _entity_keys(frame: pd.DataFrame, join_keys: dict[str, ValueType], view: str) -> list[_Cells]:
    """Feast's ``serialize_entity_key`` (v3) of every row: key count, sorted key names, then typed values."""
    names = sorted(join_keys)
    head = [struct.pack("<I", len(names))]
    for name in names:
        encoded = name.encode("utf8")
        head += [struct.pack("<II", KeyType.STRING, len(encoded)), encoded]
    pieces = [_Cells.constant(b"".join(head))]
    for name in names:
        kind = join_keys[name]
        if kind == ValueType.INT64:
            values = frame[name].to_numpy(dtype="<i8")
            pieces += [
                _Cells.constant(struct.pack("<II", KeyType.INT64, 8)),
                _Cells(values.view(np.uint8).reshape(-1, 8)),
            ]
        elif kind == ValueType.STRING:
            encoded = [str(v).encode("utf8") for v in frame[name].tolist()]
            sizes = np.fromiter(map(len, encoded), dtype="<u4", count=len(encoded))
            pieces += [
                _Cells.constant(struct.pack("<I", KeyType.STRING)),
                _Cells(sizes.view(np.uint8).reshape(-1, 4)),
                _Cells.padded(encoded),
            ]
        else:
            raise OnlineWriteError(
                f"feature view {view!r}: join key {name!r} has type {kind.name}; the fast online writer handles "
                "INT64 and STRING keys: declare the entity with one of those or materialize this view with Feast"
            )
    return pieces


@dataclass(frozen=True)
class _Stamps:
    """Event times of the rows as Feast stores them, formatted once per distinct instant."""

    nanos: np.ndarray  # int64 nanoseconds since the epoch, UTC
    codes: np.ndarray  # index of each row's instant in ``instants``
    instants: list[dt.datetime]  # distinct instants, aware UTC, microsecond precision as Feast keeps them

    @classmethod
    def of(cls, column: pd.Series) -> _Stamps:
        # Feast keeps microseconds (datetime), so equal instants are equal to the microsecond; naive times are UTC.
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            column = column.dt.tz_convert(None)
        elif not pd.api.types.is_datetime64_dtype(column.dtype):
            column = pd.to_datetime(column, utc=True, cache=False).dt.tz_convert(None)
        micros = column.to_numpy(dtype="datetime64[us]")
        unique, codes = np.unique(micros, return_inverse=True)
        instants = [pd.Timestamp(u).tz_localize("UTC").to_pydatetime() for u in unique]
        return cls(micros.astype("int64") * 1000, codes.reshape(-1), instants)

    def protos(self) -> list[bytes]:
        out = []
        for instant in self.instants:
            stamp = Timestamp()
            stamp.FromDatetime(instant)
            out.append(stamp.SerializeToString())
        return out

    def sqlite_values(self) -> list[int]:
        """Per row, what Feast's SQLite store keeps: its sqlite3 adapter turns the naive-UTC datetime it is given
        into ``int(datetime.timestamp())`` (whole seconds, the naive time read in the machine's zone)."""
        distinct = [int(instant.replace(tzinfo=None).timestamp()) for instant in self.instants]
        return [distinct[c] for c in self.codes.tolist()]


# -- the frame Feast would write ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _View:
    name: str  # as stored (with a version suffix when the registry versions online views)
    join_keys: dict[str, ValueType]
    features: dict[str, ValueType]
    timestamp: str
    created: str | None


def _view(store: FeatureStore, view: FeatureView) -> _View:
    if view.batch_source is None:
        raise OnlineWriteError(f"feature view {view.name!r} has no batch source: nothing to materialize")
    return _View(
        name=compute_versioned_name(view, store.config.registry.enable_online_feature_view_versioning),
        join_keys={e.name: e.dtype.to_value_type() for e in view.entity_columns},
        features={f.name: f.dtype.to_value_type() for f in view.features},
        timestamp=view.batch_source.timestamp_field,
        created=view.batch_source.created_timestamp_column or None,
    )


def _latest_per_key(frame: pd.DataFrame, view: FeatureView) -> pd.DataFrame:
    """One row per entity key, the newest (as Feast's materialization keeps; ties: the first in the frame)."""
    source = view.batch_source
    frame = frame.rename(columns=source.field_mapping) if source is not None and source.field_mapping else frame
    keys = [e.name for e in view.entity_columns]
    order = [c for c in (source.timestamp_field, source.created_timestamp_column) if c]
    missing = [c for c in [*keys, *order, *(f.name for f in view.features)] if c not in frame.columns]
    if missing:
        raise OnlineWriteError(
            f"feature view {view.name!r}: the frame lacks column(s) {missing} (has {list(frame.columns)}); "
            "rebuild the view's lake partition with its feature family"
        )
    if not frame.duplicated(keys).any():  # the usual case (one row per key and day): no copy
        return frame
    newest_first = frame.sort_values(order, ascending=False, kind="stable")
    return newest_first.drop_duplicates(keys, keep="first").sort_index()


def write_view(
    store: FeatureStore, view: FeatureView, frame: pd.DataFrame, batch_rows: int = DEFAULT_BATCH_ROWS
) -> int:
    """Write ``frame`` (the view's rows, as read from its source) into ``store``'s online store; returns rows written.

    Same result as Feast materializing these rows: the newest row per key; on Redis a row not newer than the stored
    one is skipped and the key's ttl is set when ``key_ttl_seconds`` is; on SQLite every row is upserted.
    """
    with online_writer(store, batch_rows) as write:
        return write(view, frame)


ViewWriter = Callable[[FeatureView, pd.DataFrame], int]


@contextmanager
def online_writer(
    store: FeatureStore, batch_rows: int = DEFAULT_BATCH_ROWS, connections: SqliteConnections | None = None
) -> Iterator[ViewWriter]:
    """``write(view, frame)`` for several views in a row, as :func:`write_view` writes one.

    On SQLite every view written in the block lands in one transaction, committed when the block ends (readers see
    the whole day or none of it; a failure leaves the store as it was), and each batch is encoded while SQLite
    writes the previous one, across views too; the block opens its own connection, or takes the one
    ``connections`` keeps open for the database. On Redis each view is written as it comes.
    """
    if store.config.entity_key_serialization_version != 3:
        raise OnlineWriteError(
            f"entity_key_serialization_version is {store.config.entity_key_serialization_version}; the fast writer "
            "writes version 3 keys: set entity_key_serialization_version: 3 (pipelines.features.store.repo_config)"
        )
    step = max(1, batch_rows)

    def batches(write: Callable[[pd.DataFrame], int], rows: pd.DataFrame) -> int:
        return sum(write(rows.iloc[start : start + step]) for start in range(0, len(rows), step))

    online = store.config.online_store
    if isinstance(online, RedisOnlineStoreConfig):

        def write_redis(view: FeatureView, frame: pd.DataFrame) -> int:
            if not view.online:  # Feast's materialization writes only online views too
                return 0
            layout = _view(store, view)
            with _redis_writer(store, layout) as write:
                return batches(write, _latest_per_key(frame, view))

        yield write_redis
    elif isinstance(online, SqliteOnlineStoreConfig):
        with _sqlite_transaction(store, connections) as table_writer:

            def write_sqlite(view: FeatureView, frame: pd.DataFrame) -> int:
                if not view.online:
                    return 0
                layout = _view(store, view)
                return batches(table_writer(layout, view), _in_key_order(_latest_per_key(frame, view), layout))

            yield write_sqlite
    else:
        raise OnlineWriteError(
            f"online store type {online.type!r} is not supported by the fast writer (redis, sqlite); "
            "materialize with FeatureStore.materialize instead"
        )


# -- Redis: one hash per entity key, fields mmh3("view:feature") and "_ts:view" ------------------------------
def _bulk(cells: _Cells, rows: int) -> list[_Cells]:
    """A RESP bulk string of each row's piece: ``$<length>\\r\\n<bytes>\\r\\n``."""
    lengths = cells.row_lengths(rows)
    sizes, inverse = np.unique(lengths, return_inverse=True)
    headers = _Cells.padded([b"$%d\r\n" % n for n in sizes.tolist()])
    return [headers.take(inverse.reshape(-1)), cells, _Cells.constant(_CRLF)]


def _bulk_constant(data: bytes) -> _Cells:
    return _Cells.constant(b"$%d\r\n%s\r\n" % (len(data), data))


def _command(name: bytes, args: int) -> _Cells:
    return _Cells.constant(b"*%d\r\n" % (args + 1) + b"$%d\r\n%s\r\n" % (len(name), name))


def _read_replies(connection, count: int) -> list:
    """``count`` replies straight from the connection's socket through hiredis' reader.

    redis-py parses one reply per Python call (several microseconds each, most of the time with one or two replies
    per row); the reader fed with large reads is several times cheaper. The socket is redis-py's own, after its
    handshake (auth, database), with nothing left unread in its buffer.
    """
    reader, out, sock = hiredis.Reader(), [], connection._sock
    while len(out) < count:
        reply = reader.gets()
        if reply is False:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise OnlineWriteError(f"Redis closed the connection after {len(out)} of {count} replies")
            reader.feed(chunk)
        elif isinstance(reply, hiredis.ReplyError):
            raise OnlineWriteError(f"Redis refused a write of the online store: {reply}")
        else:
            out.append(reply)
    return out


@contextmanager
def _redis_writer(store: FeatureStore, layout: _View) -> Iterator[Callable[[pd.DataFrame], int]]:
    config = store.config.online_store
    if config.redis_type == RedisType.redis_cluster:
        raise OnlineWriteError(
            "the fast writer pipelines a batch's keys to one Redis server; a Redis Cluster online store needs "
            "FeatureStore.materialize"
        )
    # Feast's own client, so the connection string means exactly what it means to Feast's reader.
    client = RedisOnlineStore()._get_client(config)
    project = store.config.project.encode("utf8")
    ts_field = _bulk_constant(f"_ts:{layout.name}".encode())
    fields = [_bulk_constant(_mmh3(f"{layout.name}:{name}")) for name in layout.features]
    ttl = config.key_ttl_seconds
    connection = client.connection_pool.get_connection()
    unread = 0  # replies to the previous batch's writes, read after the next batch is encoded

    def send(pieces: list[_Cells], rows: int) -> None:
        connection.send_packed_command([_join(pieces, rows)[0]], check_health=False)

    def write(frame: pd.DataFrame) -> int:
        nonlocal unread
        rows = len(frame)
        if not rows:
            return 0
        keys = _rows([*_entity_keys(frame, layout.join_keys, layout.name), _Cells.constant(project)], rows)
        key = _bulk(_Cells.padded(keys), rows)
        stamps = _Stamps.of(frame[layout.timestamp])
        # Everything is encoded while Redis still applies the previous batch; a row found stale is dropped below.
        values = [ts_field, *_bulk(_Cells.padded(stamps.protos()).take(stamps.codes), rows)]
        for field, (name, kind) in zip(fields, layout.features.items(), strict=True):
            values += [field, *_bulk(_values(frame[name], kind), rows)]
        # Feast reads the stored event time first and skips rows that are not newer.
        send([_command(b"HGET", 2), *key, ts_field], rows)
        stored = _read_replies(connection, unread + rows)[unread:]
        unread = 0
        fresh = stamps.nanos > _stored_nanos(stored)
        if not fresh.any():
            return 0
        if not fresh.all():
            key, values, rows = [p.take(fresh) for p in key], [p.take(fresh) for p in values], int(fresh.sum())
        commands = [_command(b"HSET", 1 + 2 * (1 + len(fields))), *key, *values]
        if ttl:
            commands += [_command(b"EXPIRE", 2), *key, _bulk_constant(b"%d" % ttl)]
        send(commands, rows)
        unread = rows * (2 if ttl else 1)
        return rows

    try:
        yield write
        _read_replies(connection, unread)
    except BaseException:
        connection.disconnect()  # unread replies would otherwise answer the pool's next user
        raise
    finally:
        client.connection_pool.release(connection)
        client.close()


def _stored_nanos(replies: list[bytes | None]) -> np.ndarray:
    """Nanoseconds of stored ``_ts`` Timestamps (0 where none), parsing each distinct value once."""
    parsed: dict[bytes, int] = {}
    out = np.zeros(len(replies), dtype=np.int64)
    for i, raw in enumerate(replies):
        if raw is None:
            continue
        if raw not in parsed:
            stamp = Timestamp()
            stamp.ParseFromString(raw)
            parsed[raw] = stamp.seconds * 1_000_000_000 + stamp.nanos
        out[i] = parsed[raw]
    return out


def _in_key_order(frame: pd.DataFrame, layout: _View) -> pd.DataFrame:
    """The rows sorted by their stored entity key: batch after batch then lands in primary-key order (entity key,
    feature name), so SQLite appends to its indexes instead of jumping through them (a fresh table fills ~1.3x
    faster than with each batch sorted on its own: Feast's int64 keys are little-endian, so consecutive ids are
    far apart in key order)."""
    keys = _rows(_entity_keys(frame, layout.join_keys, layout.name), len(frame))
    return frame.iloc[sorted(range(len(keys)), key=keys.__getitem__)]


# -- SQLite: table <project>_<view>, one row per (entity key, feature) --------------------------------------
# Pages of the online database when this code creates it (SQLite's default is 4 KiB): a day's upsert of a
# 19-feature view writes about 3.8 KB per entity row into three B-trees (the table, its primary key, Feast's
# entity_key index), and 16 KiB pages split four times less often: ~10% faster writes for Feast's materialize too.
SQLITE_PAGE_SIZE = 16_384


def create_sqlite_online_db(path: Path) -> None:
    """Create Feast's SQLite online database at ``path`` with :data:`SQLITE_PAGE_SIZE` pages, unless it exists.

    Feast would create it on first use with default pages; the page size of a database is fixed once it holds a
    table, so an existing file is left as it is. The empty database is built aside and linked into place, so a
    concurrent creator (or Feast) never sees a half-made file and whichever comes first wins.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        with closing(sqlite3.connect(aside)) as db:
            db.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
            db.execute("VACUUM")  # writes the header: the page size is now the file's
        os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        aside.unlink(missing_ok=True)


_SQLITE_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
# Stored rows (entity x feature) per multi-row upsert. Measured on a fresh 19-feature table: ~2,000 is fastest;
# 15,000 (the most the bound-parameter limit allows) compiles into a program large enough to run ~2x slower.
_ROWS_PER_STATEMENT = 2_000


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@functools.lru_cache(maxsize=64)  # the serving writer's small batches ask for the same few again and again
def upsert_sql(table: str, features: tuple[str, ...], entities: int) -> str:
    """Feast's upsert (the same columns, conflict rule and rows) of ``entities`` entity rows of ``features``.

    Each entity binds its parameters once: ``?k`` its key, ``?k+1`` its event time, ``?k+2`` its created time, then
    a value and a value text per feature; the feature names are literals. A row of Feast's table takes two bound
    values instead of six, and SQLite executes a day's rows ~1.5x faster (binding holds the GIL, too).
    """
    width = 3 + 2 * len(features)
    names = [_sql_text(name) for name in features]
    rows = ", ".join(
        f"(?{k + 1}, {name}, ?{k + 4 + 2 * j}, ?{k + 5 + 2 * j}, ?{k + 2}, ?{k + 3})"
        for k in range(0, entities * width, width)
        for j, name in enumerate(names)
    )
    updates = ", ".join(f"{c} = excluded.{c}" for c in _SQLITE_COLUMNS[2:])
    return (
        f'INSERT INTO "{table}" ({", ".join(_SQLITE_COLUMNS)}) VALUES {rows} '
        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates}"
    )


# SQLite compiles a statement whose ?NNN parameters recur in time quadratic in its parameters (~345 ms for 100
# entities of 19 features, 18.6 ms for 25): a batch gets statements small enough that compiling them costs little
# beside executing its rows, in powers of two so that batches of similar size share the compiled statement.
_ROWS_PER_COMPILE = 100


def entities_per_statement(connection: sqlite3.Connection, features: int, entities: int) -> int:
    """Entity rows per upsert for a batch of ``entities`` of a view with ``features`` features: up to ~2,000 stored
    rows, fewer for small batches, within the library's bound-parameter limit."""
    width, limit = 3 + 2 * features, connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    if width > limit:
        raise OnlineWriteError(
            f"a view of {features} features needs {width} bound parameters per entity row; this SQLite allows "
            f"{limit}: split the view or materialize it with FeatureStore.materialize"
        )
    largest = max(1, min(_ROWS_PER_STATEMENT // max(1, features), limit // width))
    for_batch = 1 << max(3, (entities // _ROWS_PER_COMPILE).bit_length() - 1)  # 8, 16, 32, ...
    return min(largest, for_batch)


def _upsert_statements(
    table: str, features: tuple[str, ...], parameters: np.ndarray, per_statement: int
) -> list[tuple[str, list[list]]]:
    """``parameters`` (an object array, one row per entity as :func:`upsert_sql` binds them) as upserts of
    ``per_statement`` entities each: what the SQLite thread executes."""
    full = len(parameters) // per_statement * per_statement
    statements = []
    if full:
        width = parameters.shape[1] * per_statement
        sql = upsert_sql(table, features, per_statement)
        statements.append((sql, parameters[:full].reshape(-1, width).tolist()))
    if full < len(parameters):
        statements.append((upsert_sql(table, features, len(parameters) - full), [parameters[full:].ravel().tolist()]))
    return statements


def _execute(connection: sqlite3.Connection, statements: list[tuple[str, list[list]]]) -> None:
    for sql, parameters in statements:
        connection.executemany(sql, parameters)


class SqliteConnections:
    """Connections to SQLite online stores kept open across writes, one per database file, for a process that
    writes small batches often (the serving writer's order histories, every quarter second). A new connection
    starts with an empty page cache and reads again every page a batch's keys lead to: a batch of 125 orders' three
    histories took ~130 ms that way. The owner closes them."""

    def __init__(self) -> None:
        self._open: dict[str, sqlite3.Connection] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> sqlite3.Connection:
        with self._lock:
            connection = self._open.get(path)
            if connection is None:
                connection = self._open[path] = sqlite3.connect(path, check_same_thread=False)
            return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._open.values():
                connection.close()
            self._open.clear()


@contextmanager
def _sqlite_transaction(
    store: FeatureStore, connections: SqliteConnections | None
) -> Iterator[Callable[[_View, FeatureView], Callable[[pd.DataFrame], int]]]:
    """One connection (its own, or the one ``connections`` keeps) and transaction for the block; yields
    ``table_writer(layout, view)``, the batch writer of one view's table. SQLite executes one batch in its own
    thread (it releases the GIL while it steps) while the next is encoded here, so the two overlap on two cores; the
    last batch lands (or fails) before the commit (or rollback).
    """
    config = store.config
    if config.online_store.vector_enabled or getattr(config.online_store, "enable_openai_compatible_store", False):
        raise OnlineWriteError(
            "the fast writer writes Feast's plain SQLite layout; with vector_enabled or "
            "enable_openai_compatible_store set, materialize with FeatureStore.materialize"
        )
    path = SqliteOnlineStore._get_db_path(config)
    pending: list[Future] = []

    def table_writer(layout: _View, view: FeatureView) -> Callable[[pd.DataFrame], int]:
        table = compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
        if connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone() is None:
            raise OnlineWriteError(
                f"{path}: no table {table!r}; apply the feature definitions first (feature_store(settings) or "
                "feast apply)"
            )
        names = tuple(sorted(layout.features))

        def write(frame: pd.DataFrame) -> int:
            rows = len(frame)
            per_statement = entities_per_statement(connection, len(names), rows)
            parameters = np.empty((rows, 3 + 2 * len(names)), dtype=object)  # see upsert_sql
            parameters[:, 0] = _rows(_entity_keys(frame, layout.join_keys, layout.name), rows)
            parameters[:, 1] = _Stamps.of(frame[layout.timestamp]).sqlite_values()
            if layout.created:
                parameters[:, 2] = _Stamps.of(frame[layout.created]).sqlite_values()
            for j, name in enumerate(names):
                parameters[:, 3 + 2 * j] = _values(frame[name], layout.features[name]).to_list()
                parameters[:, 4 + 2 * j] = _value_texts(frame[name], layout.features[name])
            statements = _upsert_statements(table, names, parameters, per_statement)
            if pending:
                pending.pop().result()
            pending.append(sqlite_thread.submit(_execute, connection, statements))
            return rows

        return write

    with ExitStack() as stack:
        if connections is None:
            connection = stack.enter_context(closing(sqlite3.connect(path, check_same_thread=False)))
        else:
            connection = connections.get(str(path))
        sqlite_thread = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="sqlite-write"))
        stack.enter_context(connection)  # the transaction: committed when the block ends, rolled back when it raises
        try:
            yield table_writer
        finally:
            wait(pending)
        for batch in pending:
            batch.result()

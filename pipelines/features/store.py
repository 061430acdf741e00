"""The Feast feature store of one profile: config from settings, materialization, online and historical reads.

Local profile: file registry + SQLite online store; stack profile: SQL registry + Redis. Historical reads join
the lake's daily feature partitions directly (``point_in_time``), giving the values of Feast's file offline store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore, FeatureView, RepoConfig
from feast.errors import FeatureViewNotFoundException
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

from feature_repo.definitions import definitions
from feature_repo.parts import RepoPart, lake_table
from pipelines.compute.engine import point_in_time
from pipelines.data import schemas
from pipelines.features.online_write import create_sqlite_online_db, online_writer
from pipelines.features.point_in_time import service_plan
from pipelines.features.user_features import ENTITY_COLUMN, TIMESTAMP_COLUMN
from pipelines.lake import Lake
from pipelines.settings import Settings

log = logging.getLogger(__name__)

_SQL_URL_PREFIXES = ("postgresql", "mysql", "sqlite:", "mssql", "oracle")


class FeatureStoreError(RuntimeError):
    """The feature store cannot answer as asked (unknown service, missing rows, bad entity frame)."""


class MissingOnlineFeatures(FeatureStoreError):
    """Some requested entities have no features in the online store."""


@dataclass(frozen=True)
class FreshnessReport:
    """Whether the online store holds recent enough features for a feature service."""

    fresh: bool
    newest_event_timestamp: dt.datetime | None
    checked: int
    message: str


# -- configuration -----------------------------------------------------------------------------------------
def _registry_config(settings: Settings) -> dict:
    registry = settings.feast_registry
    if registry.startswith(_SQL_URL_PREFIXES) and "://" in registry:
        # Short cache: serving processes pick up re-applied definitions within a minute.
        return {"registry_type": "sql", "path": registry, "cache_ttl_seconds": 60}
    return {"registry_type": "file", "path": registry, "cache_ttl_seconds": 60}


def _local_registry_file(settings: Settings) -> Path | None:
    """The registry's file when it is one on this machine (the local profile); None for a SQL or remote registry."""
    registry = _registry_config(settings)
    if registry["registry_type"] != "file" or "://" in registry["path"]:
        return None
    return Path(registry["path"])


def _redis_connection_string(url: str) -> str:
    """Feast wants ``host:port[,db=N][,password=...][,ssl=true]``; accept that or a ``redis://`` URL."""
    if "://" not in url:
        return url
    parsed = urlparse(url)
    parts = [f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}"]
    db = parsed.path.lstrip("/")
    if db:
        parts.append(f"db={db}")
    if parsed.password:
        parts.append(f"password={parsed.password}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def _online_config(settings: Settings) -> dict:
    if settings.feast_online_store == "redis":
        return {"type": "redis", "connection_string": _redis_connection_string(settings.redis_url)}
    if not settings.feast_online_path:
        raise FeatureStoreError("settings.feast_online_path is empty: set STOREFRONT_FEAST_ONLINE_PATH")
    return {"type": "sqlite", "path": settings.feast_online_path}


def repo_config(settings: Settings) -> RepoConfig:
    """The Feast configuration for ``settings`` (what a ``feature_store.yaml`` would say)."""
    # Feast creates the files but not their directories; the SQLite database is created here, with larger pages.
    if settings.feast_online_store == "sqlite" and settings.feast_online_path:
        create_sqlite_online_db(Path(settings.feast_online_path))
    registry_file = _local_registry_file(settings)
    if registry_file is not None:
        registry_file.parent.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=_registry_config(settings),
        online_store=_online_config(settings),
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        # Bounded batches keep materialization memory flat (STACK_NOTES: 14-16 GB unbounded for 1M rows).
        materialization={"online_write_batch_size": settings.feast_online_write_batch_size},
        repo_path=settings.feast_repo_path,
    )


def _registered_unchanged(store: FeatureStore, repo: RepoPart) -> bool:
    """True when the registry already holds exactly these definitions (so apply can be skipped)."""
    project, registry = store.project, store.registry
    try:
        for view in repo.views:
            stored = registry.get_feature_view(view.name, project)
            # Materialization history is registry state, not a definition: compare everything else.
            view.materialization_intervals = list(stored.materialization_intervals)
            if stored != view:
                return False
        return (
            all(registry.get_entity(e.name, project) == e for e in repo.entities)
            and all(registry.get_on_demand_feature_view(v.name, project) == v for v in repo.on_demand_views)
            and all(registry.get_feature_service(s.name, project) == s for s in repo.services)
        )
    except Exception:  # noqa: BLE001 - any lookup failure (missing project/object) just means "apply"
        return False


def _check_offline_store_can_read(settings: Settings) -> None:
    """Feast's file store reads the lake with Dask, which opens ``s3://`` only through s3fs (fsspec)."""
    if settings.lake_is_s3 and importlib.util.find_spec("s3fs") is None:
        raise FeatureStoreError(
            f"lake {settings.lake_uri} is on S3 but the package 's3fs' is not installed: Feast's file "
            "offline store (Dask) needs it to read s3:// feature partitions; add 's3fs' to pyproject.toml"
        )


def feature_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for ``settings`` with the project's definitions applied (a no-op when unchanged)."""
    _check_offline_store_can_read(settings)
    store = FeatureStore(config=repo_config(settings))
    repo = definitions(settings)
    if not _registered_unchanged(store, repo):
        log.info("feast: applying definitions to project %s", settings.feast_project)
        store.apply(repo.objects)
    return store


def _service(store: FeatureStore, name: str) -> FeatureService:
    try:
        return store.get_feature_service(name)
    except Exception as exc:  # Feast raises FeatureServiceNotFoundException
        known = [s.name for s in store.list_feature_services()]
        raise FeatureStoreError(
            f"feature service {name!r} is not defined in feature_repo/definitions.py (known: {known})"
        ) from exc


def _service_features(service: FeatureService) -> list[str]:
    return [f.name for projection in service.feature_view_projections for f in projection.features]


def _service_views(store: FeatureStore, service: FeatureService) -> list[FeatureView]:
    """The batch (materialized) feature views a service reads; on-demand views are computed, not stored."""
    batch = {v.name: v for v in store.list_feature_views()}
    return [batch[p.name] for p in service.feature_view_projections if p.name in batch]


def _service_inputs(store: FeatureStore, service: FeatureService) -> tuple[list[str], list[str]]:
    """Join keys of the service's batch views and request-data fields of its on-demand views, in order."""
    keys = [k for view in _service_views(store, service) for k in view.join_keys]
    on_demand = {v.name: v for v in store.list_on_demand_feature_views()}
    request = [
        name
        for p in service.feature_view_projections
        if p.name in on_demand
        for name in on_demand[p.name].get_request_data_schema()
    ]
    return list(dict.fromkeys(keys)), list(dict.fromkeys(request))


# -- materialization ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def registry_writes(settings: Settings) -> Iterator[None]:
    """Hold the file registry's lock for a read-modify-write of it. Feast rewrites the whole registry file on each
    commit, from its cached copy: two processes recording materialization windows at once (two days' runs side by
    side) would each drop the other's. The stack's SQL registry is left to its database."""
    registry_file = _local_registry_file(settings)
    if registry_file is None:
        yield
        return
    registry_file.parent.mkdir(parents=True, exist_ok=True)
    with open(registry_file.with_name(f"{registry_file.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def materialize_day(settings: Settings, ds: dt.date, store: FeatureStore | None = None) -> int:
    """Load day ``ds``'s rows of every feature view whose lake partition exists into the online store.

    Reads only the day's partition of each view and keeps its rows in ``[ds 00:00, as_of(ds)]`` (daily views
    stamp ``as_of(ds)``, per-event views stamp times within the day), then writes them in Feast's own online
    layout (``online_write``) and records the window in the registry as Feast's ``materialize`` would. Returns rows
    read from the partitions. Idempotent: a rerun leaves the same values (Redis skips rows not newer than the stored
    ones, SQLite rewrites them, both as Feast does). A view already materialized past this day is skipped, so a
    backfill never replaces newer online features with older ones.
    """
    lake = Lake(settings)
    repo = definitions(settings)
    tables = {view.name: lake_table(view) for view in repo.views}
    present = {name: table for name, table in tables.items() if lake.exists(table, ds)}
    if not present:
        raise FeatureStoreError(
            f"{settings.lake_uri}: no feature partition for ds={ds} in any of {sorted(tables.values())}; build "
            "the day's features first (the daily features DAG's features step)"
        )
    # Days run side by side (local backfills in lanes) take turns: the skip check below and the windows recorded
    # must see the registry as the other day's materialization left it.
    with registry_writes(settings):
        if store is None:
            store = feature_store(settings)
        else:
            store.refresh_registry()
        return _materialize_views(settings, lake, ds, store, present)


def _materialize_views(settings: Settings, lake: Lake, ds: dt.date, store: FeatureStore, present: dict) -> int:
    # The day's bounds in the lake's day zone: the views are stamped there (a source cut at Shanghai midnight).
    as_of = schemas.as_of(ds, lake.day_zone)
    start = schemas.day_start(ds, lake.day_zone)
    rows, written = 0, {}
    # One writer for the day: on SQLite every view lands in one transaction (readers never see half a day) and
    # each view is encoded while SQLite still writes the previous one.
    with online_writer(store, settings.feast_online_write_batch_size) as write:
        for name, table in present.items():
            view = store.get_feature_view(name)
            newest = max((end for _, end in view.materialization_intervals), default=None)
            if newest is not None and newest > as_of:
                log.warning(
                    "feast: skip materializing %s for ds=%s, the online store already holds %s", name, ds, newest
                )
                continue
            frame = lake.read(table, ds)
            rows += len(frame)
            column = frame[view.batch_source.timestamp_field]
            stamps = (
                column.dt.tz_convert("UTC")  # the usual case: pd.to_datetime would walk a tz-aware column row by row
                if isinstance(column.dtype, pd.DatetimeTZDtype)
                else pd.to_datetime(column, utc=True, cache=False)
            )
            in_window = (stamps >= start) & (stamps <= as_of)
            day = frame if in_window.all() else frame[in_window]
            written[name] = (view, write(view, day), len(frame))
    # The windows are recorded once the rows are stored, as Feast's materialize does; the file registry is
    # rewritten once for all of them (the SQL registry writes each at once).
    for name, (view, count, read) in written.items():
        store.registry.apply_materialization(view, store.project, start, as_of, commit=False)
        log.info("feast: materialized %s for ds=%s: %d of %d rows written", name, ds, count, read)
    if written:
        store.registry.commit()
    return rows


@dataclass(frozen=True)
class ViewLag:
    """How far one view's online rows are behind its lake: the newest day built and the newest materialized."""

    view: str
    built: dt.date | None  # the view's newest lake partition
    materialized_through: dt.date | None  # the newest day its materialization windows in the registry cover
    behind: bool

    def message(self) -> str:
        through = f"ds={self.materialized_through}" if self.materialized_through else "no day"
        if not self.behind:
            return f"view {self.view!r} materialized through {through}"
        return (
            f"view {self.view!r} is BEHIND its lake: materialized through {through}, the lake has ds={self.built}; "
            f"run `mlctl run daily_features --date {self.built}`"
        )


def online_lag(settings: Settings, store: FeatureStore | None = None) -> list[ViewLag]:
    """Every online view's newest built day against what the registry says was materialized: a day whose
    materialization stopped part-way (Redis writes view after view) shows which views are behind. Reads only:
    definitions not applied yet count as never materialized."""
    lake = Lake(settings)
    store = store or FeatureStore(config=repo_config(settings))
    zone = ZoneInfo(lake.day_zone)
    lags = []
    for view in definitions(settings).views:
        if not view.online:
            continue
        try:
            intervals = store.registry.get_feature_view(view.name, store.project).materialization_intervals
        except FeatureViewNotFoundException:
            intervals = []
        days = lake.partitions(lake_table(view))
        built = days[-1] if days else None
        until = max((end for _, end in intervals), default=None)
        # A day's window ends at its as-of instant (the next local midnight): the day just before it.
        through = (until.astimezone(zone) - dt.timedelta(microseconds=1)).date() if until else None
        lags.append(ViewLag(view.name, built, through, built is not None and (through is None or through < built)))
    return lags


# -- online reads ------------------------------------------------------------------------------------------
def _entity_rows(entities: list[int] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(entities, pd.DataFrame):
        return entities.reset_index(drop=True)
    return pd.DataFrame({ENTITY_COLUMN: pd.Series([int(u) for u in entities], dtype="int64")})


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _read_online(
    store: FeatureStore, features: FeatureService | list[str], rows: pd.DataFrame, wanted: list[str]
) -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    """Values of ``wanted`` (one row per entity row, NaN when absent), a found flag and the newest event time
    (NaT) per row; found and newest look at stored (batch) features only."""
    entity_rows = [{k: _plain(v) for k, v in rec.items()} for rec in rows.to_dict("records")]
    response = store.get_online_features(features=features, entity_rows=entity_rows)
    values: dict[str, list[float]] = {}
    newest_seconds = np.full(len(rows), -1, dtype="int64")  # -1: no stored feature of this row found
    proto = response.proto
    for name, vector in zip(proto.metadata.feature_names.val, proto.results, strict=True):
        if name not in wanted:
            continue
        values[name] = [_number(v) for v in vector.values]
        seconds = [
            t.seconds if status == FieldStatus.PRESENT and t.seconds > 0 else -1
            for t, status in zip(vector.event_timestamps, vector.statuses, strict=True)
        ]
        newest_seconds = np.maximum(newest_seconds, np.asarray(seconds, dtype="int64"))
    found = newest_seconds >= 0
    newest = pd.Series(pd.to_datetime(np.where(found, newest_seconds, 0), unit="s", utc=True, cache=False)).where(found)
    return pd.DataFrame(values, columns=wanted), found, newest


def _number(value: object) -> float:
    kind = value.WhichOneof("val")
    return float(getattr(value, kind)) if kind in {"double_val", "float_val", "int64_val", "int32_val"} else np.nan


def online_features(
    settings: Settings,
    feature_service: str,
    entities: list[int] | pd.DataFrame,
    missing: Literal["nan", "raise"] = "nan",
    store: FeatureStore | None = None,
) -> pd.DataFrame:
    """Online features of a service: the entity columns, then the service's features in declaration order.

    ``entities`` is a list of user ids (user-keyed services) or a frame of the service's join keys (plus the
    request-data fields its on-demand views need). One row per requested row, in request order. Rows without
    stored features get NaN features (the model scores them as unknown), or ``missing="raise"`` raises
    ``MissingOnlineFeatures`` naming them. Pass a long-lived ``store`` from ``feature_store(settings)`` on hot
    paths (serving).
    """
    store = store or feature_store(settings)
    service = _service(store, feature_service)
    columns = _service_features(service)
    rows = _entity_rows(entities)
    keys, request = _service_inputs(store, service)
    absent_cols = [c for c in [*keys, *request] if c not in rows.columns]
    if absent_cols:
        raise FeatureStoreError(
            f"feature service {feature_service!r} needs column(s) {absent_cols} in the entity rows "
            f"(join keys {keys}, request fields {request})"
        )
    if rows.empty:
        return rows.assign(**{c: pd.Series(dtype="float64") for c in columns})
    values, found, _ = _read_online(store, service, rows[[*keys, *request]], columns)
    if missing == "raise" and not found.all():
        absent = rows.loc[~found, keys].to_dict("records")
        raise MissingOnlineFeatures(
            f"feature service {feature_service!r}: no online features for {absent[:20]}"
            f"{' ...' if len(absent) > 20 else ''}; materialize the latest day or check the ids"
        )
    out = rows.copy()
    for column in columns:
        out[column] = values[column].astype("float64").to_numpy()
    return out


def _sample_keys(settings: Settings, view: FeatureView, size: int) -> pd.DataFrame:
    """Up to ``size`` key rows, evenly spread over the view's newest lake partition (empty if none)."""
    lake = Lake(settings)
    table = lake_table(view)
    days = lake.partitions(table)
    if not days:
        return pd.DataFrame(columns=view.join_keys)
    keys = lake.read(table, days[-1], columns=view.join_keys).drop_duplicates()
    step = max(1, len(keys) // size)
    return keys.iloc[::step].head(size).reset_index(drop=True)


def online_freshness(
    settings: Settings,
    feature_service: str,
    sample_user_ids: list[int] | None = None,
    max_age: dt.timedelta = dt.timedelta(hours=48),
    now: dt.datetime | None = None,
    store: FeatureStore | None = None,
    sample_size: int = 100,
) -> FreshnessReport:
    """Are the online features of every stored view of ``feature_service`` at most ``max_age`` old at ``now``?

    Checked per view on a sample of keys: the newest event timestamp among sampled keys that have online
    features stands for the view's last materialized day; the stalest view decides. A view whose newest lake day
    is not materialized is stale, named with the command that catches it up. A view with no sampled key
    found counts as stale. ``sample_user_ids`` samples user-keyed views (otherwise ``sample_size`` keys of the
    view's newest lake partition); ``now`` defaults to the current time.
    """
    now = now or dt.datetime.now(dt.UTC)
    store = store or feature_store(settings)
    service = _service(store, feature_service)
    reports = []
    # A view behind its lake (its newest built day not materialized: a day stopped part-way) is stale whatever
    # the age of what it holds.
    behind = {lag.view: lag for lag in online_lag(settings, store) if lag.behind}
    for view in _service_views(store, service):
        if view.name in behind:
            reports.append(FreshnessReport(False, None, 0, behind[view.name].message()))
            continue
        if sample_user_ids is not None and view.join_keys == [ENTITY_COLUMN]:
            sample = _entity_rows(list(sample_user_ids))
        else:
            sample = _sample_keys(settings, view, sample_size)
        reports.append(_view_freshness(store, view, sample, max_age, now))
    if not reports:
        return FreshnessReport(False, None, 0, f"feature service {feature_service!r} reads no stored feature view")
    stale = [r for r in reports if not r.fresh]
    worst = stale[0] if stale else min(reports, key=lambda r: r.newest_event_timestamp)
    return FreshnessReport(
        not stale,
        worst.newest_event_timestamp,
        sum(r.checked for r in reports),
        f"feature service {feature_service!r}: " + "; ".join(r.message for r in reports),
    )


def _view_freshness(
    store: FeatureStore, view: FeatureView, sample: pd.DataFrame, max_age: dt.timedelta, now: dt.datetime
) -> FreshnessReport:
    if sample.empty:
        return FreshnessReport(
            False, None, 0, f"view {view.name!r}: no keys to check (no lake partition); build and materialize first"
        )
    refs = [f"{view.name}:{f.name}" for f in view.features]
    _, found, newest = _read_online(store, refs, sample[view.join_keys], [f.name for f in view.features])
    checked = int(found.sum())
    if checked == 0:
        return FreshnessReport(
            False,
            None,
            0,
            f"view {view.name!r}: none of the {len(sample)} sampled keys has online features; materialize the "
            "latest day (pipelines.features.store.materialize_day)",
        )
    newest_ts = newest.max().to_pydatetime()
    age = now - newest_ts
    fresh = age <= max_age
    message = (
        f"view {view.name!r} {'fresh' if fresh else 'STALE'}: newest online event_timestamp "
        f"{newest_ts.isoformat()} is {age} old at {now.isoformat()} (limit {max_age}), "
        f"{checked}/{len(sample)} sampled keys found"
    )
    if not fresh:
        message += "; materialize the latest day before promoting"
    return FreshnessReport(fresh, newest_ts, checked, message)


# -- historical (point-in-time) reads ----------------------------------------------------------------------
def historical_features(settings: Settings, entity_df: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time features for each row of ``entity_df`` (the service's join keys, ``event_timestamp``, the
    request fields of its on-demand views, any other columns).

    Each row gets the newest feature row per view with ``event_timestamp <=`` its own, not older than the view's
    ttl, read straight from the lake's partitions (:mod:`pipelines.features.point_in_time`: the same values as
    Feast's ``get_historical_features``, tested against it). Every input row is kept, in input order with its
    index and extra columns (labels); rows for which no such feature row exists get NaN features, where Feast's
    file store would drop them (STACK_NOTES).
    """
    repo = definitions(settings)
    services = {s.name: s for s in repo.services}
    if feature_service not in services:
        raise FeatureStoreError(
            f"feature service {feature_service!r} is not defined in feature_repo/definitions.py "
            f"(known: {sorted(services)})"
        )
    plan = service_plan(repo, services[feature_service])
    keys, request = list(plan.keys), list(plan.request)
    inputs = [*keys, TIMESTAMP_COLUMN, *request]
    missing_cols = [c for c in inputs if c not in entity_df.columns]
    if missing_cols:
        raise FeatureStoreError(
            f"entity_df lacks column(s) {missing_cols}; feature service {feature_service!r} needs join keys "
            f"{keys}, {TIMESTAMP_COLUMN} and request fields {request}"
        )
    clash = [c for c in plan.features if c in entity_df.columns]
    if clash:
        raise FeatureStoreError(f"entity_df already has feature column(s) {clash}; drop them before the join")

    asked = entity_df[inputs].reset_index(drop=True)
    joined = point_in_time(settings, Lake(settings), plan, asked)
    unmatched = int(joined.isna().all(axis=1).sum()) if len(joined.columns) else 0
    if unmatched:
        log.info("%d of %d entity rows had no feature row in the ttl window; kept with NaN", unmatched, len(asked))
    if len(joined) != len(entity_df):
        raise FeatureStoreError(
            f"historical join returned {len(joined)} rows for {len(entity_df)} entity rows; this is a bug"
        )
    return pd.concat([entity_df, joined.set_axis(entity_df.index)], axis=1)

"""The Feast feature store of one profile: config from settings, materialization, online and historical reads.

Local profile: file registry + SQLite online store; stack profile: SQL registry + Redis. The offline store is
always Feast's file (Dask) store over the lake's daily feature partitions.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore, RepoConfig
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

from feature_repo.definitions import FeatureRepo, definitions
from pipelines.data import schemas
from pipelines.features.user_features import ENTITY_COLUMN, TIMESTAMP_COLUMN, USER_FEATURES_TABLE
from pipelines.lake import Lake, PartitionNotFound
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
    # Feast creates the files but not their directories.
    if settings.feast_online_store == "sqlite" and settings.feast_online_path:
        Path(settings.feast_online_path).parent.mkdir(parents=True, exist_ok=True)
    registry = _registry_config(settings)
    if registry["registry_type"] == "file" and "://" not in registry["path"]:
        Path(registry["path"]).parent.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=registry,
        online_store=_online_config(settings),
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        # Bounded batches keep materialization memory flat (STACK_NOTES: 14-16 GB unbounded for 1M rows).
        materialization={"online_write_batch_size": settings.feast_online_write_batch_size},
        repo_path=settings.feast_repo_path,
    )


def _registered_unchanged(store: FeatureStore, repo: FeatureRepo) -> bool:
    """True when the registry already holds exactly these definitions (so apply can be skipped)."""
    project = store.project
    registry = store.registry
    try:
        entity = registry.get_entity(repo.user.name, project)
        view = registry.get_feature_view(repo.user_behavior.name, project)
        service = registry.get_feature_service(repo.purchase_intent.name, project)
    except Exception:  # noqa: BLE001 - any lookup failure (missing project/object) just means "apply"
        return False
    # Materialization history is registry state, not a definition: compare everything else.
    repo.user_behavior.materialization_intervals = list(view.materialization_intervals)
    return entity == repo.user and view == repo.user_behavior and service == repo.purchase_intent


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


# -- materialization ---------------------------------------------------------------------------------------
def materialize_day(settings: Settings, ds: dt.date, store: FeatureStore | None = None) -> int:
    """Load day ``ds``'s features (rows stamped ``as_of(ds)``) into the online store; return rows written.

    Idempotent: a rerun writes the same values again. A day older than one already materialized is skipped
    (returns 0) so that a backfill never replaces newer online features with older ones.
    """
    lake = Lake(settings)
    try:
        day = lake.read(USER_FEATURES_TABLE, ds, columns=[ENTITY_COLUMN])
    except PartitionNotFound as exc:
        raise FeatureStoreError(
            f"{lake.uri(USER_FEATURES_TABLE)}: no features for ds={ds}; build them first "
            "(pipelines.features.user_features.build_user_features + write_user_features)"
        ) from exc
    store = store or feature_store(settings)
    as_of = schemas.as_of(ds)
    view = store.get_feature_view("user_behavior")
    newest = max((end for _, end in view.materialization_intervals), default=None)
    if newest is not None and newest > as_of:
        log.warning("feast: skip materializing ds=%s, the online store already holds %s", ds, newest)
        return 0
    # Rows are stamped exactly as_of(ds); the file store's window is inclusive at both ends.
    store.materialize(start_date=as_of, end_date=as_of, feature_views=[view.name])
    return len(day)


# -- online reads ------------------------------------------------------------------------------------------
def _read_online(
    store: FeatureStore, service: FeatureService, user_ids: list[int]
) -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    """Values (one row per id, NaN when absent), a found flag and the newest event time (NaT) per id."""
    response = store.get_online_features(features=service, entity_rows=[{ENTITY_COLUMN: int(u)} for u in user_ids])
    wanted = set(_service_features(service))
    values: dict[str, list[float]] = {}
    newest_seconds = np.full(len(user_ids), -1, dtype="int64")  # -1: no feature of this user found
    proto = response.proto
    for name, vector in zip(proto.metadata.feature_names.val, proto.results, strict=True):
        if name not in wanted:
            continue
        values[name] = [v.double_val if v.HasField("double_val") else np.nan for v in vector.values]
        seconds = [
            t.seconds if status == FieldStatus.PRESENT else -1
            for t, status in zip(vector.event_timestamps, vector.statuses, strict=True)
        ]
        newest_seconds = np.maximum(newest_seconds, np.asarray(seconds, dtype="int64"))
    found = newest_seconds >= 0
    newest = pd.Series(pd.to_datetime(np.where(found, newest_seconds, 0), unit="s", utc=True)).where(found)
    return pd.DataFrame(values), found, newest


def online_features(
    settings: Settings,
    feature_service: str,
    user_ids: list[int],
    missing: Literal["nan", "raise"] = "nan",
    store: FeatureStore | None = None,
) -> pd.DataFrame:
    """Online features for ``user_ids``: ``user_id`` then the service's features in declaration order.

    One row per requested id, in request order. Users without online features get NaN features (the model
    scores them as unknown), or ``missing="raise"`` raises ``MissingOnlineFeatures`` naming them. Pass a
    long-lived ``store`` from ``feature_store(settings)`` on hot paths (serving).
    """
    store = store or feature_store(settings)
    service = _service(store, feature_service)
    columns = _service_features(service)
    if not user_ids:
        return pd.DataFrame(
            {ENTITY_COLUMN: pd.Series(dtype="int64"), **{c: pd.Series(dtype="float64") for c in columns}}
        )
    values, found, _ = _read_online(store, service, user_ids)
    if missing == "raise" and not found.all():
        absent = [u for u, ok in zip(user_ids, found, strict=True) if not ok]
        raise MissingOnlineFeatures(
            f"feature service {feature_service!r}: no online features for user_id(s) {absent[:20]}"
            f"{' ...' if len(absent) > 20 else ''}; materialize the latest day or check the ids"
        )
    out = pd.DataFrame({ENTITY_COLUMN: pd.Series(user_ids, dtype="int64")})
    for column in columns:
        out[column] = values[column].astype("float64")
    return out


def _default_sample(settings: Settings, size: int) -> list[int]:
    """Up to ``size`` users, evenly spread over the newest feature partition in the lake."""
    lake = Lake(settings)
    days = lake.partitions(USER_FEATURES_TABLE)
    if not days:
        return []
    ids = lake.read(USER_FEATURES_TABLE, days[-1], columns=[ENTITY_COLUMN])[ENTITY_COLUMN].to_numpy()
    step = max(1, len(ids) // size)
    return [int(u) for u in ids[::step][:size]]


def online_freshness(
    settings: Settings,
    feature_service: str,
    sample_user_ids: list[int] | None = None,
    max_age: dt.timedelta = dt.timedelta(hours=48),
    now: dt.datetime | None = None,
    store: FeatureStore | None = None,
    sample_size: int = 100,
) -> FreshnessReport:
    """Are the online features of ``feature_service`` at most ``max_age`` old at ``now``? Checked on a sample.

    The newest event timestamp among the sampled users that have online features stands for the last
    materialized day; no sampled user with features at all counts as stale. Without ``sample_user_ids``,
    ``sample_size`` users of the newest feature partition are checked; ``now`` defaults to the current time.
    """
    now = now or dt.datetime.now(dt.UTC)
    store = store or feature_store(settings)
    service = _service(store, feature_service)
    if sample_user_ids is None:
        sample_user_ids = _default_sample(settings, sample_size)
    if not sample_user_ids:
        return FreshnessReport(
            False,
            None,
            0,
            f"feature service {feature_service!r}: no users to check (no sample given and no "
            f"{USER_FEATURES_TABLE} partition in the lake); build and materialize features first",
        )
    _, found, newest = _read_online(store, service, list(sample_user_ids))
    checked = int(found.sum())
    if checked == 0:
        return FreshnessReport(
            False,
            None,
            0,
            f"feature service {feature_service!r}: none of the {len(sample_user_ids)} sampled users has "
            "online features; materialize the latest day (pipelines.features.store.materialize_day)",
        )
    newest_ts = newest.max().to_pydatetime()
    age = now - newest_ts
    fresh = age <= max_age
    verdict = "fresh" if fresh else "STALE"
    message = (
        f"feature service {feature_service!r}: {verdict}; newest online event_timestamp "
        f"{newest_ts.isoformat()} is {age} old at {now.isoformat()} (limit {max_age}); "
        f"{checked}/{len(sample_user_ids)} sampled users found"
    )
    if not fresh:
        message += "; materialize the latest day before promoting"
    return FreshnessReport(fresh, newest_ts, checked, message)


# -- historical (point-in-time) reads ----------------------------------------------------------------------
def historical_features(settings: Settings, entity_df: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time features for each row of ``entity_df`` (``user_id``, ``event_timestamp``, any others).

    Each row gets the newest feature row with ``event_timestamp <=`` its own, not older than the view's ttl.
    Every input row is kept, in input order with its index and extra columns (labels). Rows for which no
    such feature row exists get NaN features: Feast's file store drops those rows (STACK_NOTES), so the
    request is deduplicated, joined by Feast and merged back onto the input, and the row count is checked.
    """
    missing_cols = [c for c in (ENTITY_COLUMN, TIMESTAMP_COLUMN) if c not in entity_df.columns]
    if missing_cols:
        raise FeatureStoreError(f"entity_df lacks column(s) {missing_cols}; it needs user_id and event_timestamp")
    store = feature_store(settings)
    service = _service(store, feature_service)
    columns = _service_features(service)
    clash = [c for c in columns if c in entity_df.columns]
    if clash:
        raise FeatureStoreError(f"entity_df already has feature column(s) {clash}; drop them before the join")

    keys = pd.DataFrame(
        {
            ENTITY_COLUMN: entity_df[ENTITY_COLUMN].astype("int64").to_numpy(),
            TIMESTAMP_COLUMN: pd.to_datetime(entity_df[TIMESTAMP_COLUMN], utc=True).to_numpy(),
        }
    )
    keys[TIMESTAMP_COLUMN] = pd.to_datetime(keys[TIMESTAMP_COLUMN], utc=True).astype("datetime64[ns, UTC]")
    unique = keys.drop_duplicates(ignore_index=True)
    if unique.empty:
        joined = unique.assign(**{c: pd.Series(dtype="float64") for c in columns})
    else:
        joined = store.get_historical_features(entity_df=unique, features=service).to_df()
        joined[TIMESTAMP_COLUMN] = pd.to_datetime(joined[TIMESTAMP_COLUMN], utc=True).astype("datetime64[ns, UTC]")
        joined = joined[[ENTITY_COLUMN, TIMESTAMP_COLUMN, *columns]].drop_duplicates([ENTITY_COLUMN, TIMESTAMP_COLUMN])
    dropped = len(unique) - len(joined)
    if dropped:
        log.info(
            "feast: %d of %d entity rows had no feature row in the ttl window; kept with NaN",
            dropped,
            len(unique),
        )

    merged = keys.merge(joined, on=[ENTITY_COLUMN, TIMESTAMP_COLUMN], how="left", validate="many_to_one")
    if len(merged) != len(entity_df):
        raise FeatureStoreError(
            f"historical join returned {len(merged)} rows for {len(entity_df)} entity rows; this is a bug"
        )
    out = entity_df.copy()
    for column in columns:
        out[column] = merged[column].astype("float64").to_numpy()
    return out

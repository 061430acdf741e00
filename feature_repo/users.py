"""The ``user`` entity, its daily behaviour view and the ``purchase_intent`` feature service."""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

from feature_repo.parts import LAKE_TABLE_TAG, RepoPart
from pipelines.features.user_features import ENTITY_COLUMN, FEATURE_COLUMNS, TIMESTAMP_COLUMN, USER_FEATURES_TABLE
from pipelines.settings import Settings

# Rows exist once per day, stamped as_of(ds). A point-in-time join takes the newest row <= the entity row's
# time; three days tolerates one or two missed daily runs, then the features read as missing, not stale.
USER_BEHAVIOR_TTL = timedelta(days=3)


def lake_source(settings: Settings, name: str, table: str, timestamp_field: str, description: str) -> FileSource:
    """A FileSource over the lake's daily partitions of ``table`` (``ds=YYYY-MM-DD/data.parquet``).

    Dask reads the directory as one hive-partitioned dataset, so each day stays its own atomically replaced file.
    """
    return FileSource(
        name=name,
        path=f"{settings.lake_uri.rstrip('/')}/{table}",
        file_format=ParquetFormat(),
        timestamp_field=timestamp_field,
        s3_endpoint_override=settings.s3_endpoint_url if settings.lake_is_s3 else None,
        description=description,
    )


def user_declarations(settings: Settings) -> RepoPart:
    user = Entity(
        name="user",
        join_keys=[ENTITY_COLUMN],
        value_type=ValueType.INT64,
        description="A storefront customer.",
    )
    source = lake_source(
        settings,
        "user_behavior_source",
        USER_FEATURES_TABLE,
        TIMESTAMP_COLUMN,
        "Daily user behaviour features written by pipelines.features.user_features.",
    )
    user_behavior = FeatureView(
        name="user_behavior",
        entities=[user],
        ttl=USER_BEHAVIOR_TTL,
        schema=[Field(name=ENTITY_COLUMN, dtype=Int64)] + [Field(name=name, dtype=Float64) for name in FEATURE_COLUMNS],
        source=source,
        online=True,
        tags={LAKE_TABLE_TAG: USER_FEATURES_TABLE},
        description="Per-user event counts, recencies, cart abandonment, price level and social signals.",
    )
    purchase_intent = FeatureService(
        name="purchase_intent",
        features=[user_behavior],
        description="Features of the purchase_intent model (models/purchase_intent.yaml).",
    )
    return RepoPart(entities=[user], sources=[source], views=[user_behavior], services=[purchase_intent])

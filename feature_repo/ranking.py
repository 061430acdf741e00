"""The ``product`` and ``category`` entities, the ranking views and the ``product_ranking`` feature service.

A ranking request is a user and candidate products; each candidate row carries its product's category, so the
service joins the user's behaviour (user), the product's popularity (product), the user's affinity to the
product's category (user x category) and the user's own history with the product (user x product).

Serving finds the candidates it ranks in the online store too, in views outside the service: ``user_candidates``
(a user's generated candidates, lists in generation order) and ``product_catalogue`` (a named product's category,
read from the product_stats table).
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, Int64

from feature_repo.parts import LAKE_TABLE_TAG, RepoPart
from feature_repo.users import USER_BEHAVIOR_TTL, lake_source
from pipelines.features.product_features import (
    PRODUCT_STATS_TABLE,
    TABLES,
    TIMESTAMP_COLUMN,
    USER_CANDIDATES_TABLE,
    USER_CATEGORY_TABLE,
    USER_PRODUCT_TABLE,
)
from pipelines.settings import Settings

# Daily rows stamped as_of(ds), like user_behavior: a missed day or two reads yesterday's row, then missing.
RANKING_TTL = USER_BEHAVIOR_TTL
SPARSE_TTL = timedelta(days=40)

_DESCRIPTIONS = {
    PRODUCT_STATS_TABLE: (
        "product_stats",
        "Views, carts and purchases of each catalogue product over 1/7/30 days, its price and its share of its "
        "category's views.",
    ),
    USER_CATEGORY_TABLE: (
        "user_category",
        "A user's views, carts and purchases in a category over 7/30 days and the category's share and rank "
        "among the user's views.",
    ),
    USER_PRODUCT_TABLE: (
        "user_product",
        "A user's views, carts, removals and purchases over 7 days of a product they carted, removed or bought, "
        "and whether it is in their open cart.",
    ),
}


def ranking_declarations(settings: Settings, users: RepoPart) -> RepoPart:
    """Ranking entities and views, and the service that reads them with the user's ``user_behavior`` view."""
    user = users.entity("user")
    product = Entity(
        name="product",
        join_keys=["product_id"],
        value_type=ValueType.INT64,
        description="A catalogue product.",
    )
    category = Entity(
        name="category",
        join_keys=["category_id"],
        value_type=ValueType.INT64,
        description="A catalogue category.",
    )
    entities_of = {"user_id": user, "product_id": product, "category_id": category}
    sources: dict[str, FileSource] = {}
    views = []
    for table, (name, description) in _DESCRIPTIONS.items():
        _, keys, features = TABLES[table]
        source = lake_source(
            settings,
            f"{name}_source",
            table,
            TIMESTAMP_COLUMN,
            f"Daily {name} features written by pipelines.features.product_features.",
        )
        views.append(
            FeatureView(
                name=name,
                entities=[entities_of[k] for k in keys],
                ttl=RANKING_TTL if table == PRODUCT_STATS_TABLE else SPARSE_TTL,
                schema=[*[Field(name=k, dtype=Int64) for k in keys], *[Field(name=f, dtype=Float64) for f in features]],
                source=source,
                online=True,
                tags={LAKE_TABLE_TAG: table},
                description=description,
            )
        )
        sources[table] = source
    candidates_source = lake_source(
        settings,
        "user_candidates_source",
        USER_CANDIDATES_TABLE,
        TIMESTAMP_COLUMN,
        "Daily candidate lists written by pipelines.features.product_features.",
    )
    _, keys, lists = TABLES[USER_CANDIDATES_TABLE]
    serving_views = [
        FeatureView(
            name="user_candidates",
            entities=[user],
            # Serving takes a user's row only when it is as new as the popular row (user_id -2): no ttl needed.
            ttl=RANKING_TTL,
            schema=[*[Field(name=k, dtype=Int64) for k in keys], *[Field(name=f, dtype=Array(Int64)) for f in lists]],
            source=candidates_source,
            online=True,
            tags={LAKE_TABLE_TAG: USER_CANDIDATES_TABLE},
            description="The candidate products (and their categories) serving ranks for a user, in generation "
            "order; user_id -2 holds the overall popular products, the candidates of a user without a row.",
        ),
        FeatureView(
            name="product_catalogue",
            entities=[product],
            ttl=SPARSE_TTL,
            schema=[Field(name="product_id", dtype=Int64), Field(name="category_id", dtype=Int64)],
            source=sources[PRODUCT_STATS_TABLE],  # its category_id column
            online=True,
            tags={LAKE_TABLE_TAG: PRODUCT_STATS_TABLE},
            description="The category of each catalogue product: what joins a product a request names to the "
            "user x category features.",
        ),
    ]
    product_ranking = FeatureService(
        name="product_ranking",
        features=[users.view("user_behavior"), *views],
        description="Features of the product_ranking model (models/product_ranking.yaml).",
    )
    return RepoPart(
        entities=[product, category],
        sources=[*sources.values(), candidates_source],
        views=[*views, *serving_views],
        services=[product_ranking],
    )

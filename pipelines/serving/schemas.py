"""The documented shapes of the serving API (OpenAPI at ``/openapi.json``). The scoring routes parse their bodies
by hand (pipelines/serving/requests.py) for speed; these models describe them and type the other routes."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from pipelines.serving.served import MAX_PRODUCT_IDS, MAX_USER_IDS


class PredictRequest(BaseModel):
    user_ids: list[int] = Field(min_length=1, max_length=MAX_USER_IDS, description="Users to score (0..2**63-1).")


class Prediction(BaseModel):
    user_id: int
    score: float
    features_found: bool = Field(description="False when the online store had no features for this user.")


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class RankRequest(BaseModel):
    user_id: int = Field(description="The user to rank products for.")
    product_ids: list[int] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PRODUCT_IDS,
        description="The candidate products; without them, the user's candidates of the newest day are read "
        "from the online store, generated as in training (the user's recent carts and categories, popular "
        "products; a user without recent events gets the popular products).",
    )


class RankedProduct(BaseModel):
    product_id: int
    score: float
    features_found: dict[str, bool] = Field(
        description="Per entity of the model's feature service (user, product, user_category, user_product): "
        "whether the online store had its features for this candidate (a source that cannot tell them apart "
        "answers only 'any').",
        examples=[{"user": True, "product": True, "user_category": False, "user_product": False}],
    )


class RankResponse(BaseModel):
    model: str
    version: str
    user_id: int
    candidates: Literal["request", "generated"] = Field(description="Where the candidate products came from.")
    products: list[RankedProduct] = Field(description="The candidates, best first.")


class OrderRequest(BaseModel):
    order_id: str | None = Field(
        None, max_length=128, description="Your id of the order (logged); one is made if absent."
    )
    user_id: int = Field(description="The account placing the order (0..2**63-1).")
    signup_time: str = Field(description="When the account signed up, ISO 8601 with zone, e.g. 2025-01-03T08:00:00Z.")
    purchase_time: str | None = Field(None, description="When the order is placed (ISO 8601 with zone); now if absent.")
    purchase_value: float = Field(ge=0, description="The order's value.")
    device_id: str | None = Field(None, max_length=128, description="The device's id; null when unknown.")
    ip_address: str | None = Field(None, max_length=128, description="The IP address; null when unknown.")
    source: str = Field(max_length=64, description="Traffic source (SEO, Ads, Direct).")
    browser: str = Field(max_length=64, description="Browser (Chrome, Safari, ...).")
    age: float | None = Field(None, ge=0, le=150, description="The customer's age, if known.")


class OrderScore(BaseModel):
    model: str
    version: str
    order_id: str
    score: float = Field(description="Probability that the order is fraudulent (charged back).")
    features_found: dict[str, bool] = Field(description="Whether the account, device and IP had a history.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong and what to do; never more than a short prefix of the input.")
    request_id: str


class RefusalInfo(BaseModel):
    version: str
    reason: str
    at: datetime


class RolloutInfo(BaseModel):
    name: str
    mode: str
    share: float
    version: str


class ModelHealth(BaseModel):
    version: str | None
    rollout: RolloutInfo | None = Field(None, description="A challenger served beside the champion, if any.")
    loaded_at: datetime | None
    champion_version: str | None
    last_checked: datetime | None
    last_refusal: RefusalInfo | None
    last_error: str | None
    finding: str | None = Field(
        None, description="Why the champion alias as it stands is not trusted (it disagrees with the audit log)."
    )


class ViewFreshness(BaseModel):
    view: str
    built: date | None = Field(description="The view's newest day in the lake.")
    materialized_through: date | None = Field(description="The newest day the online store holds for it.")
    behind: bool


class HealthResponse(BaseModel):
    status: str = Field(
        description="ok when every served model has a loaded champion and no finding against the audit log and "
        "no online view is behind its lake, else degraded."
    )
    auth: bool = Field(description="Whether the scoring routes require an API key.")
    models: dict[str, ModelHealth]
    online_views: list[ViewFreshness] | None = Field(
        None, description="Per online view, how far it is materialized (checked at most once a minute)."
    )
    online_error: str | None = Field(None, description="Why the views' freshness could not be read.")


class ModelInfo(BaseModel):
    name: str
    objective: str
    feature_service: str
    served: bool = Field(description="Whether this app serves the model (on `route`).")
    route: str | None
    version: str | None
    features: list[str]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


def _body(request: type[BaseModel], response: type[BaseModel]) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": ErrorResponse.model_json_schema()}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request.model_json_schema()}}},
        "responses": {
            "200": {"description": "Scored", "content": {"application/json": {"schema": response.model_json_schema()}}},
            **{
                str(code): {"description": what, **error}
                for code, what in [
                    (400, "Body is not JSON"),
                    (401, "Missing or invalid API key"),
                    (403, "API key not allowed on this model"),
                    (404, "Unknown model, or not served by this route"),
                    (422, "Body not of the documented shape"),
                    (503, "No servable champion, or the online store is unavailable"),
                ]
            },
        },
    }


def api_docs() -> dict[str, dict[str, Any]]:
    """``openapi_extra`` of the scoring routes, whose bodies FastAPI does not parse."""
    return {
        "predict": _body(PredictRequest, PredictResponse),
        "rank": _body(RankRequest, RankResponse),
        "score": _body(OrderRequest, OrderScore),
    }

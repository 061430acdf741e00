"""``POST /v1/models/{name}/score``: an order scored at checkout, before it exists.

The order's 29 ``order_risk`` features are computed from its account's, device's and IP's order histories in the
online store (pipelines/features/checkout.py, equal to the training row's), its on-demand value features by the
feature repo's own function (the one Feast's ``order_value`` view runs), then the champion scores them. The order
is then appended to the three histories and written back (pipelines/serving/order_state.py), so the next order
counts it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from pipelines.features.checkout import CheckoutOrder, KeyHistories, append_order, checkout_features
from pipelines.features.order_features import FEATURE_COLUMNS
from pipelines.lake import Lake
from pipelines.registry.rollouts import CHAMPION_ARM
from pipelines.serving.features import FeastFeatures, Features, FeaturesUnavailable
from pipelines.serving.order_state import OrderState
from pipelines.serving.requests import BadRequest, entity_id, number, text, timestamp
from pipelines.serving.served import NotServable, Outcome, Served
from pipelines.serving.writer import WriterClient


def order_from(payload: dict[str, Any], now: dt.datetime) -> tuple[str, CheckoutOrder]:
    """The order of a request body (422 naming the field that is missing or wrong); its id is the caller's
    ``order_id`` or a new one."""
    purchase = timestamp(payload, "purchase_time", default=now)
    signup = timestamp(payload, "signup_time")
    if signup > purchase:
        raise BadRequest(422, "signup_time: is after purchase_time")
    order_id = text(payload, "order_id", required=False) or uuid.uuid4().hex
    order = CheckoutOrder(
        user_id=entity_id(payload.get("user_id"), "user_id"),
        signup_time=signup,
        purchase_time=purchase,
        purchase_value=number(payload, "purchase_value", 0.0, 1e9),
        device_id=text(payload, "device_id", required=False),
        ip_address=text(payload, "ip_address", required=False),
        source=text(payload, "source", max_chars=64) or "",
        browser=text(payload, "browser", max_chars=64) or "",
        age=number(payload, "age", 0.0, 150.0, required=False),
    )
    return order_id, order


def value_features(purchase_value: float, user_mean_value: float) -> tuple[float, float]:
    """``log_purchase_value`` and ``value_to_user_mean`` of one order: what the on-demand view's function
    (feature_repo/orders.py ``order_value``, run by Feast in pandas) gives, without building frames on the request
    path (a millisecond each); tests/test_checkout_serving.py checks both agree on every kind of input."""
    log_value = math.log1p(max(purchase_value, 0.0))
    ratio = purchase_value / user_mean_value if user_mean_value > 0 else math.nan  # NaN and <= 0: unknown
    return log_value, ratio


class CheckoutModel(Served):
    """Scores an order as the customer checks out; see the module's docstring."""

    route = "score"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state: OrderState | None = None
        self._zone: str | None = None
        self._lock = threading.Lock()
        # The serving writer that writes the scored orders back (set by the app under mlctl serve; None: this
        # process writes them).
        self.writer: WriterClient | None = None

    def state(self) -> OrderState:
        if not isinstance(self.source, FeastFeatures):
            raise NotServable(f"{self.spec.name}: checkout scoring reads Feast's online store; none is configured")
        with self._lock:
            if self._state is None:
                self._state = OrderState(self.source.store(), self.writer)
                self._zone = Lake(self._settings).day_zone  # read once: the lake is not read per request
            return self._state

    def _features(self, order: CheckoutOrder) -> tuple[Features, dict[str, bool], KeyHistories]:
        from feature_repo.orders import ON_DEMAND_FEATURES

        state = self.state()
        try:
            rows = state.rows(order.user_id, order.device_id, order.ip_address)
        except Exception as exc:
            raise FeaturesUnavailable(f"order histories unavailable for {self.spec.name}") from exc
        assert self._zone is not None
        day = order.purchase_time.astimezone(ZoneInfo(self._zone)).date()
        risk = checkout_features(order, rows.user, rows.device, rows.ip, day, self._zone)
        mean = float(risk[FEATURE_COLUMNS.index("user_mean_value_30d")])
        names = (*FEATURE_COLUMNS, *ON_DEMAND_FEATURES)
        values = np.concatenate([risk, value_features(order.purchase_value, mean)])[None, :]
        found = {"user": rows.user is not None, "device": rows.device is not None, "ip": rows.ip is not None}
        return Features(values, names, np.array([any(found.values())])), found, rows

    def _canary(self) -> pd.DataFrame:
        now = dt.datetime.now(dt.UTC)
        order = CheckoutOrder(
            user_id=-1,
            signup_time=now,
            purchase_time=now,
            purchase_value=1.0,
            device_id=None,
            ip_address=None,
            source="",
            browser="",
            age=float("nan"),
        )
        features, _, _ = self._features(order)
        return pd.DataFrame(features.values, columns=list(features.names))

    def serve(self, payload: dict[str, Any]) -> Outcome:
        order_id, order = order_from(payload, dt.datetime.now(dt.UTC))
        loaded = self.champion()
        features, found, rows = self._features(order)
        score = float(self._scores(loaded, features)[0])
        entities = {"order_id": [order_id], "purchase_value": [order.purchase_value]}
        # The order's three history rows and its prediction row reach the writer process as one message.
        with self.writer.together() if self.writer is not None else contextlib.nullcontext():
            self.state().record(append_order(rows, order), order.purchase_time)
            unlogged = self._log(
                [loaded.version], [CHAMPION_ARM], entities, [score], features, [0], at=order.purchase_time
            )
        body = {
            "model": self.spec.name,
            "version": loaded.version,
            "order_id": order_id,
            "score": score,
            "features_found": found,
        }
        return Outcome(body, loaded.version, 1, int(not any(found.values())), unlogged)

    def close(self) -> None:
        if self._state is not None:
            self._state.close()

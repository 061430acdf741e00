"""Synthetic files in public real-data layouts, for the docs/data.md walkthrough (tests/test_docs_walkthrough.py).

Each stands in for "your own file": a behaviour log in the REES46 layout written from the project's simulator
(so the purchase signal is known to be there), and an orders file in the public "Fraud ecommerce" layout from a
small generator of its own whose fraud looks like that dataset's: accounts that buy seconds after signing up,
devices and IP addresses shared by rings of fresh accounts, and a share of fraud that looks like anything else.
Both are deterministic for a seed, so the walkthrough's outputs are reproducible.
"""

from __future__ import annotations

import datetime as dt
import string
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data import simulator
from pipelines.data.simulator import SimulationConfig

# REES46's export: "eCommerce behavior data from multi category store".
REES46_COLUMNS = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
]
REES46_EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase")  # REES46 has no wishlist events
# The public "Fraud ecommerce" dataset: one row per user's first purchase, the fraud label in `class`.
FRAUD_COLUMNS = [
    "user_id",
    "signup_time",
    "purchase_time",
    "purchase_value",
    "device_id",
    "source",
    "browser",
    "sex",
    "age",
    "ip_address",
    "class",
]
# Legit orders per hour of the day (relative): quiet nights, a lunch bump, an evening peak.
_HOUR_WEIGHTS = np.array([2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 11, 13, 12, 10, 10, 10, 11, 13, 16, 18, 17, 13, 6.0])
_SHOPPING_HOURS = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
_SESSION_NAMESPACE = uuid.UUID("6f1c1c2e-0d1b-4f55-9a53-1d0f2b6d3c11")


def write_rees46_log(path: Path, start: dt.date, days: int, users: int, seed: int, **story: float) -> pd.DataFrame:
    """Write ``days`` days of simulated behaviour of ``users`` users from ``start`` as a REES46 CSV; returns it.

    ``story`` overrides coefficients of the simulator's generative story (``SimulationConfig`` fields). The
    simulator's wishlist events are left out (REES46 has none); sessions become UUIDs and times are written to
    the second with REES46's `` UTC`` suffix, so the file reads exactly like an export.
    """
    world = SimulationConfig(n_users=users, n_products=max(200, users), seed=seed, start=start, **story)  # type: ignore[arg-type]
    frames = [simulator.simulate_day(world, start + dt.timedelta(days=i)) for i in range(days)]
    events = pd.concat(frames, ignore_index=True)
    events = events[events["event_type"].isin(REES46_EVENT_TYPES)]
    log = pd.DataFrame(
        {
            "event_time": events["event_time"].dt.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "event_type": events["event_type"],
            "product_id": events["product_id"],
            "category_id": events["category_id"],
            "category_code": "",
            "brand": events["brand"],
            "price": events["price"].map("{:.2f}".format),
            "user_id": events["user_id"],
            "user_session": [str(uuid.uuid5(_SESSION_NAMESPACE, s)) for s in events["session_id"]],
        },
        columns=REES46_COLUMNS,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    log.to_csv(path, index=False)
    return log


@dataclass(frozen=True)
class FraudFileConfig:
    """The orders file's size and its fraud mix (rates are shares of all orders)."""

    start: dt.date
    days: int
    orders_per_day: float = 70.0
    seed: int = 3
    instant_fraud_rate: float = 0.022  # signs up and buys within seconds, from a device of its own
    ring_fraud_rate: float = 0.02  # fresh accounts sharing a ring's few devices and IP addresses
    quiet_fraud_rate: float = 0.01  # looks like a legit order: no feature can tell
    household_share: float = 0.03  # legit orders from a device an earlier legit account used (a family)
    ring_devices: int = 3  # devices (and as many IPs) of the ring active on a day
    ring_lifetime_days: int = 10  # a ring's devices are replaced after this many days
    night_fraud_share: float = 0.7  # fraud placed between 00:00 and 06:00 (shoppers rarely buy then)


def _device_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    letters = np.array(list(string.ascii_uppercase))
    return np.array(["".join(row) for row in rng.choice(letters, (n, 13))], dtype=object)


def _ip_addresses(rng: np.random.Generator, n: int) -> np.ndarray:
    # The public file stores IPs as floats (an integer with a fraction): kept, it is a string to the platform.
    return np.round(rng.uniform(1e7, 4.29e9, n), 6)


def write_fraud_orders(path: Path, config: FraudFileConfig) -> pd.DataFrame:
    """Write an orders CSV in the "Fraud ecommerce" layout (one order per new user) and return it."""
    rng = np.random.default_rng(config.seed)
    frames = []
    next_user = 100_000
    ring_devices = _device_ids(rng, config.ring_devices)
    ring_ips = _ip_addresses(rng, config.ring_devices)
    households: list[str] = []
    for day_index in range(config.days):
        if day_index and day_index % config.ring_lifetime_days == 0:
            ring_devices = _device_ids(rng, config.ring_devices)
            ring_ips = _ip_addresses(rng, config.ring_devices)
        n = int(rng.poisson(config.orders_per_day))
        day = np.datetime64(config.start + dt.timedelta(days=day_index), "s")
        kind = rng.choice(
            4,
            n,
            p=[
                1 - config.instant_fraud_rate - config.ring_fraud_rate - config.quiet_fraud_rate,
                config.instant_fraud_rate,
                config.ring_fraud_rate,
                config.quiet_fraud_rate,
            ],
        )
        legit_like = (kind == 0) | (kind == 3)
        # Shoppers buy in the day and evening; fraudsters mostly at night (the one trace quiet fraud leaves).
        hour = np.where(
            (kind != 0) & (rng.random(n) < config.night_fraud_share),
            rng.integers(0, 6, n),
            rng.choice(24, n, p=_SHOPPING_HOURS),
        )
        purchase = day + (hour * 3_600 + rng.integers(0, 3_600, n)).astype("timedelta64[s]")
        # Account age: legit accounts signed up 1 to 120 days before; instant fraud 1-10 s; rings 1-48 h.
        age_seconds = np.where(
            legit_like,
            rng.integers(86_400, 120 * 86_400, n),
            np.where(kind == 1, rng.integers(1, 11, n), rng.integers(3_600, 48 * 3_600, n)),
        )
        devices = _device_ids(rng, n)
        ips = _ip_addresses(rng, n)
        ring = np.flatnonzero(kind == 2)
        pick = rng.integers(0, config.ring_devices, len(ring))
        devices[ring], ips[ring] = ring_devices[pick], ring_ips[pick]
        family = np.flatnonzero((kind == 0) & (rng.random(n) < config.household_share))
        if households and len(family):
            devices[family] = rng.choice(np.array(households, dtype=object), len(family))
        households.extend(devices[kind == 0][:5].tolist())
        value = np.round(rng.lognormal(np.where(legit_like, 3.4, 3.8), 0.5, n)).astype("int64")
        frames.append(
            pd.DataFrame(
                {
                    "user_id": np.arange(next_user, next_user + n),
                    "signup_time": pd.to_datetime(purchase - age_seconds.astype("timedelta64[s]")),
                    "purchase_time": pd.to_datetime(purchase),
                    "purchase_value": np.maximum(value, 5),
                    "device_id": devices,
                    "source": rng.choice(["SEO", "Ads", "Direct"], n, p=[0.4, 0.4, 0.2]),
                    "browser": rng.choice(
                        ["Chrome", "Safari", "FireFox", "IE", "Opera"], n, p=[0.45, 0.25, 0.15, 0.1, 0.05]
                    ),
                    "sex": rng.choice(["M", "F"], n),
                    "age": rng.integers(18, 70, n),
                    "ip_address": ips,
                    "class": (kind != 0).astype("int64"),
                }
            )
        )
        next_user += n
    orders = pd.concat(frames, ignore_index=True).sort_values("purchase_time", kind="stable", ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    orders.to_csv(path, index=False, columns=FRAUD_COLUMNS, date_format="%Y-%m-%d %H:%M:%S")
    return orders

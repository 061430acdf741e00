"""Orders and fraud: the simulated world's purchases as orders, plus fraudulent orders with known fraud probability.

One order per user-day with purchases (the items bought that day); fraud rings, new-account fraudsters and
account takeovers add orders of their own. Every order carries its true fraud probability ``p_fraud``; its label
is drawn from it and arrives later (chargebacks). docs/data.md, "Orders and fraud", tells the whole story.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from pipelines.data import simulator
from pipelines.data.simulator import DAY_SECONDS, SimulationConfig

# Random streams [seed, _ORDERS, sub-stream, day]: the simulator uses 0..3, so orders never shift its draws.
_ORDERS = 4
_STATIC, _LEGIT, _FRAUD, _HISTORY = 0, 1, 2, 3

LEGIT, RING, NEW_ACCOUNT, TAKEOVER = 0, 1, 2, 3  # how an order was generated (kept internal: it is the answer)
SOURCES = np.array(["SEO", "Ads", "Direct"])
SOURCE_WEIGHTS = np.array([0.4, 0.4, 0.2])
BROWSERS = np.array(["Chrome", "Safari", "FireFox", "IE", "Opera"])
BROWSER_WEIGHTS = np.array([0.45, 0.25, 0.15, 0.1, 0.05])
_COUNTRIES = np.array(["DE", "FR", "ES", "IT", "NL", "PL", "SE", "GB", "US", "BR"])
_US = 10**6
_DAY_US = DAY_SECONDS * _US


@dataclass(frozen=True)
class FraudConfig:
    """Every parameter of the orders and fraud story (docs/data.md, "Orders and fraud", explains each one)."""

    # Legit orders: stable devices and IPs.
    second_device_share: float = 0.4  # users with a second device ...
    second_device_use: float = 0.3  # ... use it for this share of their orders
    legit_new_device_rate: float = 0.02  # an order from a device never seen before (new phone, travel)
    legit_mobile_ip_rate: float = 0.25  # an order from a carrier IP shared by many users instead of the home IP
    users_per_carrier_ip: int = 200
    channel_loyalty: float = 0.8  # share of a user's orders that come through their own acquisition channel
    # Fraud volume, per 1,000 legit orders of the same day, growing linearly over time.
    ring_bursts_per_1k_orders: float = 1.5
    new_account_fraudsters_per_1k_orders: float = 4.0
    takeovers_per_1k_orders: float = 2.0
    fraud_growth_per_30_days: float = 0.3  # volume multiplier 1 + growth * day / 30
    ring_campaign_shape: float = 1.0  # daily ring activity ~ Gamma(shape, 1/shape): mean 1, bursty
    # Fraud rings: few devices and IPs shared by many accounts; orders come in bursts minutes apart.
    rings_per_10k_users: float = 4.0  # at least one ring
    ring_devices_mean: float = 3.0  # 1 + Poisson(mean - 1) devices and IPs per ring
    ring_ips_mean: float = 4.0
    ring_burst_extra_orders: float = 3.0  # a ring burst has 2 + Poisson(this) orders
    ring_account_reuse: float = 0.35  # an order reuses one of the ring's accounts, otherwise a new one signs up
    ring_signup_lead_hours: float = 6.0  # a new ring account signs up Exponential(mean) before its first order
    # Lone fraudsters on new accounts and takeovers of existing accounts.
    new_account_extra_orders: float = 0.8  # 1 + Poisson(this) orders per fraudster, minutes apart
    new_account_signup_lead_minutes: float = 30.0  # signup Exponential(mean) + 1 minute before the first order
    takeover_extra_orders: float = 1.0
    proxy_ips: int = 40  # the pool of proxy IPs lone fraudsters and takeovers come from
    burst_gap_seconds: float = 120.0  # mean gap between orders of one burst
    fraud_extra_items: float = 0.8  # fraud orders hold 1 + Poisson(this) items ...
    fraud_price_power: float = 1.0  # ... drawn from the catalogue with weight price ** power (expensive ones)
    # True fraud probability: p_fraud = sigmoid(kind logit + value_logit * log(value / value_reference)).
    legit_logit: float = -6.0
    legit_new_device_logit: float = 2.5  # added for a legit order from a new device
    ring_logit: float = 2.5
    new_account_logit: float = 1.5
    takeover_logit: float = 2.0
    value_logit: float = 0.4
    value_reference: float = 50.0
    # Labels: chargebacks arrive 2..label_window_days days after the purchase day; no chargeback by then -> 0.
    label_window_days: int = 30
    chargeback_median_days: float = 9.0
    chargeback_sigma: float = 0.6
    history_reference_days: int = 7  # pre-start orders (labels only) are modelled on days 0..this-1

    @property
    def history_days(self) -> int:
        """Pre-start days whose labels can still arrive on or after the start."""
        return self.label_window_days + 1


DEFAULT_FRAUD = FraudConfig()


# ---------------------------------------------------------------------------------------------------------
# The static part: devices, IPs and channels of legit users; rings; IP pools.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Static:
    devices: np.ndarray  # (n, 2) uint64: primary and second device of each user
    browsers: np.ndarray  # (n, 2) browser index per device
    second_use: np.ndarray  # (n,) probability an order uses the second device (0 without one)
    home_ip: np.ndarray  # (n,) uint32
    channel: np.ndarray  # (n,) source index
    carrier_ips: np.ndarray
    proxy_ips: np.ndarray
    ring_devices: list[np.ndarray]
    ring_browsers: list[np.ndarray]
    ring_ips: list[np.ndarray]
    price: np.ndarray  # catalogue, by product index
    merchant: np.ndarray
    fraud_item_p: np.ndarray  # fraudsters' choice of items


def _ips(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1 << 24, 224 << 24, n, dtype=np.uint32)  # 1.0.0.0 .. 223.255.255.255 (unicast)


def _build_static(config: SimulationConfig, fraud: FraudConfig) -> _Static:
    rng = np.random.default_rng([config.seed, _ORDERS, _STATIC])
    n = config.n_users
    devices = rng.integers(0, 2**64, (n, 2), dtype=np.uint64, endpoint=False)
    browsers = rng.choice(len(BROWSERS), (n, 2), p=BROWSER_WEIGHTS)
    second_use = np.where(rng.random(n) < fraud.second_device_share, fraud.second_device_use, 0.0)
    home_ip = _ips(rng, n)
    channel = rng.choice(len(SOURCES), n, p=SOURCE_WEIGHTS)
    carrier_ips = _ips(rng, max(1, n // max(fraud.users_per_carrier_ip, 1)))
    proxy_ips = _ips(rng, max(1, fraud.proxy_ips))
    n_rings = max(1, round(n * fraud.rings_per_10k_users / 10_000))
    ring_devices, ring_browsers, ring_ips = [], [], []
    for _ in range(n_rings):
        k = 1 + rng.poisson(max(fraud.ring_devices_mean - 1, 0))
        ring_devices.append(rng.integers(0, 2**64, k, dtype=np.uint64, endpoint=False))
        ring_browsers.append(rng.choice(len(BROWSERS), k, p=BROWSER_WEIGHTS))
        ring_ips.append(_ips(rng, 1 + rng.poisson(max(fraud.ring_ips_mean - 1, 0))))
    catalogue = simulator.products(config)
    price = catalogue["price"].to_numpy()
    weights = price**fraud.fraud_price_power
    return _Static(
        devices=devices,
        browsers=browsers,
        second_use=second_use,
        home_ip=home_ip,
        channel=channel,
        carrier_ips=carrier_ips,
        proxy_ips=proxy_ips,
        ring_devices=ring_devices,
        ring_browsers=ring_browsers,
        ring_ips=ring_ips,
        price=price,
        merchant=catalogue["merchant_id"].to_numpy(),
        fraud_item_p=weights / weights.sum(),
    )


# ---------------------------------------------------------------------------------------------------------
# One day's orders at count level ("core"): everything but the purchase time of legit orders, which comes from
# the rendered events. Labels need only the core, so a day's labels never render earlier days' events.
# ---------------------------------------------------------------------------------------------------------

_CORE_COLUMNS = [
    "key",
    "kind",
    "user_id",
    "signup_us",
    "sex",
    "age",
    "country",
    "value",
    "merchant_id",
    "device",
    "ip",
    "source",
    "browser",
    "seconds",
    "p_fraud",
    "is_fraud",
    "label_day",
    "label_seconds",
]


@dataclass
class _Account:
    user_id: int
    signup_us: int
    sex: str
    age: int
    country: str


@dataclass
class _OrdersWorld:
    config: SimulationConfig
    fraud: FraudConfig
    static: _Static
    cores: list[pd.DataFrame] = field(default_factory=list)  # replayed day by day (fraud accounts carry over)
    accounts: list[list[_Account]] = field(default_factory=list)  # accounts created on each day
    ring_accounts: list[list[_Account]] = field(default_factory=list)
    history: dict[int, pd.DataFrame] = field(default_factory=dict)

    def core(self, t: int) -> pd.DataFrame:
        if not self.ring_accounts:
            self.ring_accounts = [[] for _ in self.static.ring_devices]
        while len(self.cores) <= t:
            self._advance()
        return self.cores[t]

    @property
    def n_accounts(self) -> int:
        return sum(len(day) for day in self.accounts)

    def _advance(self) -> None:
        t = len(self.cores)
        legit = _legit_core(self.config, self.fraud, self.static, t)
        fraud, created = self._fraud_core(t, n_legit=len(legit))
        self.accounts.append(created)
        core = pd.concat([legit, fraud], ignore_index=True) if len(fraud) else legit
        self.cores.append(core)

    def _fraud_core(self, t: int, n_legit: int) -> tuple[pd.DataFrame, list[_Account]]:
        config, fraud, static = self.config, self.fraud, self.static
        rng = np.random.default_rng([config.seed, _ORDERS, _FRAUD, t])
        scale = n_legit / 1000 * (1 + fraud.fraud_growth_per_30_days * t / 30)
        campaign = rng.gamma(fraud.ring_campaign_shape, 1 / fraud.ring_campaign_shape)
        n_bursts = rng.poisson(fraud.ring_bursts_per_1k_orders * scale * campaign)
        n_lone = rng.poisson(fraud.new_account_fraudsters_per_1k_orders * scale)
        n_takeover = rng.poisson(fraud.takeovers_per_1k_orders * scale)
        rows: list[dict] = []
        created: list[_Account] = []
        next_id = config.n_users + 1 + self.n_accounts

        def new_account(first_order_s: float, lead_s: float) -> _Account:
            nonlocal next_id
            # Signed up the same day (so a day's users snapshot never depends on later days being replayed).
            signup_s = first_order_s - min(lead_s, 0.99 * first_order_s)
            account = _Account(
                next_id,
                t * _DAY_US + int(signup_s * _US),
                str(rng.choice(["F", "M"])),
                int(np.clip(18 + rng.gamma(2.0, 5.0), 18, 90)),
                str(rng.choice(_COUNTRIES)),
            )
            next_id += 1
            created.append(account)
            return account

        def burst(size: int) -> np.ndarray:
            start = rng.random() * 0.9 * DAY_SECONDS
            return np.minimum(
                start + np.cumsum(np.r_[0.0, rng.exponential(fraud.burst_gap_seconds, size - 1)]), DAY_SECONDS - 1.0
            )

        def order(kind: int, account: _Account, seconds: float, device: int, browser: int, ip: int) -> None:
            items = rng.choice(len(static.price), 1 + rng.poisson(fraud.fraud_extra_items), p=static.fraud_item_p)
            prices = static.price[items]
            rows.append(
                dict(
                    kind=kind,
                    user_id=account.user_id,
                    signup_us=account.signup_us,
                    sex=account.sex,
                    age=account.age,
                    country=account.country,
                    value=round(float(prices.sum()), 2),
                    merchant_id=int(static.merchant[items[np.argmax(prices)]]),
                    device=device,
                    ip=ip,
                    source=int(rng.choice(len(SOURCES), p=SOURCE_WEIGHTS)),
                    browser=browser,
                    seconds=float(seconds),
                )
            )

        for _ in range(n_bursts):
            ring = int(rng.integers(len(static.ring_devices)))
            pool = self.ring_accounts[ring]
            for s in burst(2 + rng.poisson(fraud.ring_burst_extra_orders)):
                if pool and rng.random() < fraud.ring_account_reuse:
                    account = pool[int(rng.integers(len(pool)))]
                    if account.signup_us > t * _DAY_US + int(s * _US):  # signed up later today: not usable yet
                        account = new_account(s, rng.exponential(fraud.ring_signup_lead_hours * 3600))
                        pool.append(account)
                else:
                    account = new_account(s, rng.exponential(fraud.ring_signup_lead_hours * 3600))
                    pool.append(account)
                d = int(rng.integers(len(static.ring_devices[ring])))
                ip = int(static.ring_ips[ring][rng.integers(len(static.ring_ips[ring]))])
                order(RING, account, s, int(static.ring_devices[ring][d]), int(static.ring_browsers[ring][d]), ip)
        for _ in range(n_lone):
            times = burst(1 + rng.poisson(fraud.new_account_extra_orders))
            account = new_account(times[0], 60 + rng.exponential(fraud.new_account_signup_lead_minutes * 60))
            device, browser = int(rng.integers(0, 2**64, dtype=np.uint64)), int(rng.choice(len(BROWSERS)))
            ip = int(static.proxy_ips[rng.integers(len(static.proxy_ips))])
            for s in times:
                order(NEW_ACCOUNT, account, s, device, browser, ip)
        if n_takeover:
            users = simulator.users_snapshot(config, _day(config, t))
            signup_us = _epoch_us(users["signup_time"]) - _epoch_us_of(config.start)
            victims = np.flatnonzero(signup_us < t * _DAY_US)  # accounts that existed before the day
            for _ in range(n_takeover if len(victims) else 0):
                v = int(victims[rng.integers(len(victims))])
                account = _Account(
                    int(users["user_id"].iat[v]),
                    int(signup_us[v]),
                    str(users["sex"].iat[v]),
                    int(users["age"].iat[v]),
                    str(users["country"].iat[v]),
                )
                device, browser = int(rng.integers(0, 2**64, dtype=np.uint64)), int(rng.choice(len(BROWSERS)))
                ip = int(static.proxy_ips[rng.integers(len(static.proxy_ips))])
                for s in burst(1 + rng.poisson(fraud.takeover_extra_orders)):
                    order(TAKEOVER, account, s, device, browser, ip)

        frame = pd.DataFrame(rows, columns=[c for c in _CORE_COLUMNS if c not in _DRAWN])
        if len(frame) == 0:
            return pd.DataFrame(columns=_CORE_COLUMNS), created
        frame["device"] = frame["device"].astype("uint64")
        frame["ip"] = frame["ip"].astype("uint32")
        frame["key"] = np.arange(config.n_users, config.n_users + len(frame), dtype="int64")
        logit = np.select(
            [frame["kind"] == RING, frame["kind"] == NEW_ACCOUNT],
            [fraud.ring_logit, fraud.new_account_logit],
            fraud.takeover_logit,
        ) + fraud.value_logit * np.log(frame["value"].to_numpy() / fraud.value_reference)
        frame["p_fraud"] = _sigmoid(logit)
        _draw_labels(frame, t, fraud, rng)
        return frame[_CORE_COLUMNS], created

    def history_core(self, d: int) -> pd.DataFrame:
        """Orders of pre-start day ``d`` < 0, only as far as their labels go (they are in no orders partition).

        The lake starts at ``config.start`` but the shop did not: labels of earlier orders keep arriving during
        the first ``label_window_days`` days. Their daily volume and fraud rate are the means of the first
        ``history_reference_days`` days, so label partitions hold rows from the first day on.
        """
        if d not in self.history:
            reference = [self.core(t) for t in range(max(self.fraud.history_reference_days, 1))]
            p_mean = float(pd.concat(reference)["p_fraud"].mean())
            rng = np.random.default_rng([self.config.seed, _ORDERS, _HISTORY, -d])
            n = int(rng.poisson(np.mean([len(core) for core in reference])))
            frame = pd.DataFrame({"key": np.arange(n, dtype="int64"), "p_fraud": np.full(n, p_mean)})
            _draw_labels(frame, d, self.fraud, rng)
            self.history[d] = frame
        return self.history[d]


_DRAWN = {"key", "p_fraud", "is_fraud", "label_day", "label_seconds"}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _epoch_us(times: pd.Series) -> np.ndarray:
    return (
        pd.to_datetime(times, utc=True, cache=False)
        .dt.tz_localize(None)
        .to_numpy()
        .astype("datetime64[us]")
        .astype("int64")
    )


def _epoch_us_of(day: dt.date) -> int:
    return int(np.datetime64(day.isoformat(), "us").astype("int64"))


def _draw_labels(frame: pd.DataFrame, t: int, fraud: FraudConfig, rng: np.random.Generator) -> None:
    """is_fraud ~ Bernoulli(p_fraud). A fraud is charged back k = 2..window days after the purchase day (rounded
    2 + LogNormal), at a uniform time of that day; any other order is confirmed at 00:00 after the window closes."""
    n = len(frame)
    is_fraud = rng.random(n) < frame["p_fraud"].to_numpy()
    extra = rng.lognormal(np.log(max(fraud.chargeback_median_days - 2, 1e-3)), fraud.chargeback_sigma, n)
    delay = np.clip(np.rint(2 + extra), 2, fraud.label_window_days).astype("int64")
    seconds = rng.random(n) * DAY_SECONDS
    frame["is_fraud"] = is_fraud.astype("int8")
    frame["label_day"] = np.where(is_fraud, t + delay, t + fraud.label_window_days + 1).astype("int64")
    frame["label_seconds"] = np.where(is_fraud, seconds, 0.0)


def _legit_core(config: SimulationConfig, fraud: FraudConfig, static: _Static, t: int) -> pd.DataFrame:
    """One order per user with purchases on day t: value = sum of the items' prices, merchant of the dearest item."""
    items = simulator.purchased_items(config, config.start + dt.timedelta(days=t))
    user = items["user_id"].to_numpy() - 1
    product = items["product_id"].to_numpy() - 1
    buyers, inverse = np.unique(user, return_inverse=True)
    prices = static.price[product]
    value = np.round(np.bincount(inverse, weights=prices, minlength=len(buyers)), 2)
    dearest = np.lexsort((-prices, inverse))
    first = np.r_[True, inverse[dearest][1:] != inverse[dearest][:-1]] if len(dearest) else np.empty(0, bool)
    merchant = static.merchant[product[dearest[first]]]

    rng = np.random.default_rng([config.seed, _ORDERS, _LEGIT, t])
    n = len(buyers)
    new_device = rng.random(n) < fraud.legit_new_device_rate
    fresh = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    fresh_browser = rng.choice(len(BROWSERS), n, p=BROWSER_WEIGHTS)
    second = (rng.random(n) < static.second_use[buyers]).astype("int64")
    mobile = rng.random(n) < fraud.legit_mobile_ip_rate
    carrier = static.carrier_ips[rng.integers(len(static.carrier_ips), size=n)]
    loyal = rng.random(n) < fraud.channel_loyalty
    any_channel = rng.choice(len(SOURCES), n, p=SOURCE_WEIGHTS)
    logit = (
        fraud.legit_logit
        + fraud.legit_new_device_logit * new_device
        + fraud.value_logit * np.log(np.maximum(value, 0.01) / fraud.value_reference)
    )
    frame = pd.DataFrame(
        {
            "key": buyers.astype("int64"),
            "kind": np.full(n, LEGIT),
            "user_id": buyers.astype("int64") + 1,
            "value": value,
            "merchant_id": merchant.astype("int64"),
            "device": np.where(new_device, fresh, static.devices[buyers, second]),
            "ip": np.where(mobile, carrier, static.home_ip[buyers]),
            "source": np.where(loyal, static.channel[buyers], any_channel),
            "browser": np.where(new_device, fresh_browser, static.browsers[buyers, second]),
            "seconds": np.full(n, np.nan),  # from the rendered events
            "p_fraud": _sigmoid(logit),
        }
    )
    _draw_labels(frame, t, fraud, rng)
    return frame.reindex(columns=_CORE_COLUMNS)


@lru_cache(maxsize=4)
def _orders_world(config: SimulationConfig, fraud: FraudConfig) -> _OrdersWorld:
    return _OrdersWorld(config, fraud, _build_static(config, fraud))


def clear_cache() -> None:
    """Forget the replayed order worlds of this process."""
    _orders_world.cache_clear()


# ---------------------------------------------------------------------------------------------------------
# Public API: the day's orders, the labels that arrive on a day, the truth, and the fraudsters' accounts.
# ---------------------------------------------------------------------------------------------------------


def _order_ids(stamp: str, t: int, keys: np.ndarray) -> list[str]:
    """Opaque, unique ids: a bijective 64-bit mix of (day, key), so an id says nothing about how it was made."""
    x = (keys.astype("uint64") + (np.uint64(t % (1 << 20)) << np.uint64(40))) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return [f"{stamp}-{v:016x}" for v in x.tolist()]


def _dotted(ips: np.ndarray) -> list[str]:
    return [f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}" for v in ips.astype("int64").tolist()]


def _day(config: SimulationConfig, t: int) -> dt.date:
    return config.start + dt.timedelta(days=t)


def _timestamps(config: SimulationConfig, us_since_start: np.ndarray) -> pd.Series:
    base = np.datetime64(config.start.isoformat(), "us")
    return pd.Series(
        pd.to_datetime(base + us_since_start.astype("int64").astype("timedelta64[us]"), cache=False).tz_localize("UTC")
    )


def _with_times(config: SimulationConfig, t: int, core: pd.DataFrame, events: pd.DataFrame | None) -> pd.DataFrame:
    """The core with purchase times: a legit order is placed at the user's last purchase event of the day."""
    if events is None:
        events = simulator.simulate_day(config, _day(config, t))
    buys = events.loc[events["event_type"] == "purchase", ["user_id", "event_time"]]
    last = buys.groupby("user_id")["event_time"].max()
    legit = core["kind"].to_numpy() == LEGIT
    missing = set(core.loc[legit, "user_id"]) - set(last.index)
    if missing or len(last) != legit.sum():
        raise simulator.SimulationError(
            f"orders of {_day(config, t)}: purchase events do not match the day's purchases "
            f"(pass the events of that day for config seed={config.seed}, or none)"
        )
    purchase_us = t * _DAY_US + (core["seconds"].fillna(0).to_numpy() * _US).astype("int64")
    placed = last.loc[core.loc[legit, "user_id"]].reset_index(drop=True)
    purchase_us[legit] = _epoch_us(placed) - _epoch_us_of(config.start)
    return core.assign(purchase_us=purchase_us)


def simulate_orders(
    config: SimulationConfig, ds: dt.date, fraud: FraudConfig = DEFAULT_FRAUD, events: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Orders placed on ``ds`` (ORDERS schema), sorted by purchase time.

    ``events`` may pass that day's already simulated events (saves rendering them again); the result is the same.
    """
    t = config.day_index(ds)
    world = _orders_world(config, fraud)
    core = _with_times(config, t, world.core(t), events)
    users = simulator.users_snapshot(config, ds).set_index("user_id")
    legit = (core["kind"] == LEGIT).to_numpy()
    known = users.loc[core.loc[legit, "user_id"]]
    signup_us = core["signup_us"].to_numpy(dtype="float64", na_value=np.nan).copy()
    signup_us[legit] = _epoch_us(known["signup_time"]) - _epoch_us_of(config.start)
    sex = core["sex"].to_numpy(dtype=object).copy()
    sex[legit] = known["sex"].to_numpy()
    age = core["age"].to_numpy(dtype="float64", na_value=np.nan).copy()
    age[legit] = known["age"].to_numpy()
    order = np.lexsort((core["key"].to_numpy(), core["purchase_us"].to_numpy()))
    core = core.iloc[order]
    stamp = ds.strftime("%Y%m%d")
    return pd.DataFrame(
        {
            "order_id": _order_ids(stamp, t, core["key"].to_numpy()),
            "user_id": core["user_id"].to_numpy().astype("int64"),
            "signup_time": _timestamps(config, signup_us[order]),
            "purchase_time": _timestamps(config, core["purchase_us"].to_numpy()),
            "purchase_value": core["value"].to_numpy().astype("float64"),
            "device_id": [f"{v:016x}" for v in core["device"].to_numpy().astype("uint64").tolist()],
            "source": SOURCES[core["source"].to_numpy().astype("int64")],
            "browser": BROWSERS[core["browser"].to_numpy().astype("int64")],
            "sex": sex[order].astype(str),
            "age": age[order].astype("int32"),
            "ip_address": _dotted(core["ip"].to_numpy()),
            "merchant_id": core["merchant_id"].to_numpy().astype("int64"),
        }
    )


def fraud_truth(config: SimulationConfig, ds: dt.date, fraud: FraudConfig = DEFAULT_FRAUD) -> pd.DataFrame:
    """True fraud probability of every order placed on ``ds`` (ORDER_FRAUD_TRUTH schema), in order_id order."""
    return _truth_and_labels(config, ds, fraud)[["order_id", "p_fraud"]]


def realised_labels(config: SimulationConfig, ds: dt.date, fraud: FraudConfig = DEFAULT_FRAUD) -> pd.DataFrame:
    """order_id, p_fraud and the label every order of ``ds`` will eventually get (whenever it arrives)."""
    return _truth_and_labels(config, ds, fraud)


def _truth_and_labels(config: SimulationConfig, ds: dt.date, fraud: FraudConfig) -> pd.DataFrame:
    t = config.day_index(ds)
    core = _orders_world(config, fraud).core(t)
    frame = pd.DataFrame(
        {
            "order_id": _order_ids(ds.strftime("%Y%m%d"), t, core["key"].to_numpy()),
            "p_fraud": core["p_fraud"].to_numpy().astype("float64"),
            "is_fraud": core["is_fraud"].to_numpy().astype("int8"),
        }
    )
    return frame.sort_values("order_id", ignore_index=True)


def order_labels(config: SimulationConfig, ds: dt.date, fraud: FraudConfig = DEFAULT_FRAUD) -> pd.DataFrame:
    """Labels that arrive during ``ds`` (ORDER_LABELS schema): chargebacks of orders of ds-window..ds-2 and the
    not-fraud confirmations of orders of ds-window-1, including orders placed before the simulation start."""
    t = config.day_index(ds)
    world = _orders_world(config, fraud)
    frames = []
    for d in range(t - fraud.history_days, t - 1):
        core = world.core(d) if d >= 0 else world.history_core(d)
        hit = core[core["label_day"].to_numpy() == t]
        if len(hit):
            frames.append(
                pd.DataFrame(
                    {
                        "order_id": _order_ids(_day(config, d).strftime("%Y%m%d"), d, hit["key"].to_numpy()),
                        "is_fraud": hit["is_fraud"].to_numpy().astype("int8"),
                        "label_us": t * _DAY_US + (hit["label_seconds"].to_numpy() * _US).astype("int64"),
                    }
                )
            )
    if not frames:
        return pd.DataFrame(
            {
                "order_id": pd.Series(dtype=str),
                "is_fraud": pd.Series(dtype="int8"),
                "label_time": _timestamps(config, np.empty(0, dtype="int64")),
            }
        )
    labels = pd.concat(frames, ignore_index=True).sort_values(["label_us", "order_id"], ignore_index=True)
    return pd.DataFrame(
        {
            "order_id": labels["order_id"],
            "is_fraud": labels["is_fraud"],
            "label_time": _timestamps(config, labels["label_us"].to_numpy()),
        }
    )


def fraud_accounts(config: SimulationConfig, ds: dt.date, fraud: FraudConfig = DEFAULT_FRAUD) -> pd.DataFrame:
    """Accounts opened by fraudsters up to the end of ``ds`` (USERS schema). They never browse, so they are not in
    the simulator's users, but orders reference them: the day's users table is the union of both."""
    t = config.day_index(ds)
    world = _orders_world(config, fraud)
    world.core(t)
    accounts = [a for day in world.accounts[: t + 1] for a in day]
    return pd.DataFrame(
        {
            "user_id": np.array([a.user_id for a in accounts], dtype="int64"),
            "signup_time": _timestamps(config, np.array([a.signup_us for a in accounts], dtype="int64")),
            "country": np.array([a.country for a in accounts], dtype=object).astype(str),
            "age": np.array([a.age for a in accounts], dtype="int32"),
            "sex": np.array([a.sex for a in accounts], dtype=object).astype(str),
        }
    )

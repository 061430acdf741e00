"""A social-commerce world with planted, documented purchase signal and its exact ground truth.

The world is replayed from ``config.start`` at count level (cached per config in-process), so any day renders the
same rows whether or not earlier days were asked for; see docs/data.md for the generative story.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.data import schemas

DAY_SECONDS = 86_400
NEVER = -10_000  # "day of last purchase" for users who never bought: satiation term is exactly 0

# Independent random streams: the same (seed, stream, day) always gives the same draws.
_STATIC, _DYNAMICS, _RENDER, _TRUTH = 0, 1, 2, 3

_COUNTRIES = np.array(["DE", "FR", "ES", "IT", "NL", "PL", "SE", "GB", "US", "BR"])
_COUNTRY_WEIGHTS = np.array([0.18, 0.14, 0.1, 0.1, 0.07, 0.08, 0.05, 0.12, 0.11, 0.05])


class SimulationError(ValueError):
    """A day or a parameter the simulator cannot serve."""


@dataclass(frozen=True)
class SimulationConfig:
    """Size, seed and every coefficient of the generative story (docs/data.md explains each one)."""

    seed: int = 7
    n_users: int = 5000
    n_products: int = 2000
    n_categories: int = 20
    n_merchants: int = 50
    start: dt.date = dt.date(2025, 1, 1)  # first simulated day (index 0)

    # Population: latent purchase propensity theta ~ LogNormal with mean 1.
    theta_sigma: float = 0.7
    late_signup_fraction: float = 0.05  # share of users who sign up during the window
    late_signup_days: int = 35  # they sign up uniformly over days 0..late_signup_days-1
    # Follow graph: followees drawn by power-law popularity, boosted when the preferred category matches.
    follows_mean: float = 8.0
    follow_popularity_alpha: float = 1.6  # Pareto tail of popularity -> power-law-ish in-degree
    follow_homophily: float = 5.0  # weight multiplier for a followee with the same preferred category
    # Browsing (drives the counts from which theta is inferable).
    sessions_per_day: float = 0.3  # Poisson mean of sessions per day at theta = 1
    sessions_theta_power: float = 2.0  # sessions mean scales with theta ** power
    extra_views_per_session: float = 2.5  # Poisson mean of views beyond the first in a session at theta = 1
    views_theta_power: float = 0.5  # ... scaled by theta ** power
    cart_logit: float = -2.2  # per view: logit P(cart) = cart_logit + cart_logit_theta * log(theta)
    cart_logit_theta: float = 0.5
    wishlist_rate: float = 0.04  # per view
    remove_rate: float = 0.12  # per open cart item, on days the user has a session
    cart_memory_days: int = 7  # cart items older than this are abandoned and stop counting
    primary_category_share: float = 0.6  # views in the preferred category; secondary 0.25, rest random
    secondary_category_share: float = 0.25
    activity_by_weekday: tuple[float, ...] = (1.0, 0.95, 0.95, 1.0, 1.1, 1.3, 1.25)  # Monday first
    # When sessions start (relative weight per UTC hour 0..23): quiet nights, a lunch bump, an evening peak.
    activity_by_hour: tuple[float, ...] = (
        0.5,
        0.3,
        0.2,
        0.15,
        0.15,
        0.2,
        0.4,
        0.7,
        0.9,
        1.0,
        1.0,
        1.1,
        1.3,
        1.2,
        1.0,
        1.0,
        1.0,
        1.1,
        1.3,
        1.6,
        1.8,
        1.7,
        1.3,
        0.8,
    )
    # Daily purchase hazard: logit h = intercept + weekday + theta*log(theta) + cart*log1p(open cart items)
    #   + satiation*exp(-days since last purchase / satiation_days) + social*log1p(followee purchases 7d)
    purchase_intercept: float = -4.2
    purchase_theta: float = 0.6
    purchase_cart: float = 1.1
    purchase_satiation: float = -1.5
    satiation_days: float = 3.0
    purchase_social: float = 0.45
    purchase_logit_by_weekday: tuple[float, ...] = (0.0, -0.05, -0.05, 0.0, 0.1, 0.3, 0.2)
    extra_items_per_purchase: float = 0.3  # Poisson mean of items bought beyond the first
    # Ground truth: Monte-Carlo replicas of the next days (Rao-Blackwellised, see intent_truth.purchase_truth).
    truth_replicas: int = 200
    # A change of behaviour (to watch drift): from shift_day on, every user's sessions per day are multiplied by
    # shift_sessions (views, carts and purchases follow). None: the world never changes.
    shift_day: dt.date | None = None
    shift_sessions: float = 3.0

    def day_index(self, ds: dt.date) -> int:
        index = (ds - self.start).days
        if index < 0:
            raise SimulationError(f"day {ds} is before the simulation start {self.start}; pick ds >= start")
        return index


# ---------------------------------------------------------------------------------------------------------
# The static world: users, products, merchants, follow graph.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Static:
    theta: np.ndarray  # (n,)
    log_theta: np.ndarray
    p_cart: np.ndarray  # (n,) per-view cart probability
    primary: np.ndarray  # (n,) preferred category index
    secondary: np.ndarray
    signup_time: np.ndarray  # datetime64[us] UTC-naive
    signup_day: np.ndarray  # (n,) day index of signup (negative before start); active on days > signup_day
    users: pd.DataFrame
    products: pd.DataFrame
    merchants: pd.DataFrame
    follows: pd.DataFrame
    follow_matrix: sp.csr_matrix  # A[u, v] = 1 if u follows v
    product_cum: np.ndarray  # per-category cumulative popularity, segment of category c spans (c, c+1]
    category_offsets: np.ndarray  # first product index of each category


def _day_start(config: SimulationConfig, t: int | np.ndarray) -> np.ndarray:
    base = np.datetime64(config.start.isoformat(), "us")
    return base + np.asarray(t, dtype="int64") * np.timedelta64(DAY_SECONDS * 10**6, "us")


def _build_static(config: SimulationConfig) -> _Static:
    if min(config.n_users, config.n_products, config.n_categories, config.n_merchants) < 1:
        raise SimulationError("SimulationConfig: n_users, n_products, n_categories, n_merchants must be >= 1")
    if config.n_products < config.n_categories:
        raise SimulationError("SimulationConfig: n_products must be >= n_categories (one product per category)")
    rng = np.random.default_rng([config.seed, _STATIC])
    n, n_cat = config.n_users, config.n_categories

    # Users
    sigma = config.theta_sigma
    theta = np.exp(rng.normal(-(sigma**2) / 2, sigma, n))
    cat_weights = 1.0 / np.arange(1, n_cat + 1) ** 0.7
    cat_weights /= cat_weights.sum()
    primary = rng.choice(n_cat, n, p=cat_weights)
    secondary = (primary + rng.integers(1, max(n_cat, 2), n)) % n_cat
    late = rng.random(n) < config.late_signup_fraction
    signup_day = np.where(late, rng.integers(0, max(config.late_signup_days, 1), n), 0)
    signup_offset_days = np.where(late, signup_day, -rng.integers(1, 730, n))
    signup_time = _day_start(config, signup_offset_days) + (rng.random(n) * DAY_SECONDS * 10**6).astype(
        "timedelta64[us]"
    )
    signup_day = np.where(late, signup_day, -1)
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype="int64"),
            "signup_time": pd.to_datetime(signup_time, cache=False).tz_localize("UTC"),
            "country": rng.choice(_COUNTRIES, n, p=_COUNTRY_WEIGHTS),
            "age": np.clip(18 + rng.gamma(3.0, 6.0, n), 18, 90).astype("int32"),
            "sex": rng.choice(np.array(["F", "M"]), n),
        }
    )

    # Products, sorted by category so each category is one contiguous id range.
    n_p = config.n_products
    category = np.sort(np.concatenate([np.arange(n_cat), rng.choice(n_cat, n_p - n_cat, p=cat_weights)]))
    popularity = rng.pareto(1.2, n_p) + 1.0
    offsets = np.searchsorted(category, np.arange(n_cat))
    totals = np.bincount(category, weights=popularity, minlength=n_cat)
    within = np.cumsum(popularity) - np.concatenate([[0.0], np.cumsum(totals)])[category]
    product_cum = category + within / totals[category]
    median_price = np.exp(rng.normal(3.5, 0.8, n_cat))
    merchant_weights = 1.0 / np.arange(1, config.n_merchants + 1)
    merchant_weights /= merchant_weights.sum()
    products = pd.DataFrame(
        {
            "product_id": np.arange(1, n_p + 1, dtype="int64"),
            "category_id": (category + 1).astype("int64"),
            "brand": [f"brand-{c + 1:02d}-{b}" for c, b in zip(category, rng.integers(0, 8, n_p), strict=True)],
            "price": np.round(median_price[category] * np.exp(rng.normal(0, 0.5, n_p)), 2),
            "merchant_id": (rng.choice(config.n_merchants, n_p, p=merchant_weights) + 1).astype("int64"),
        }
    )
    merchants = pd.DataFrame(
        {
            "merchant_id": np.arange(1, config.n_merchants + 1, dtype="int64"),
            "name": [f"Merchant {i:03d}" for i in range(1, config.n_merchants + 1)],
        }
    )

    follows, matrix = _build_follows(config, rng, primary, signup_time, late)
    return _Static(
        theta=theta,
        log_theta=np.log(theta),
        p_cart=1.0 / (1.0 + np.exp(-(config.cart_logit + config.cart_logit_theta * np.log(theta)))),
        primary=primary,
        secondary=secondary,
        signup_time=signup_time,
        signup_day=signup_day,
        users=users,
        products=products,
        merchants=merchants,
        follows=follows,
        follow_matrix=matrix,
        product_cum=product_cum,
        category_offsets=offsets,
    )


def _build_follows(
    config: SimulationConfig,
    rng: np.random.Generator,
    primary: np.ndarray,
    signup_time: np.ndarray,
    late: np.ndarray,
) -> tuple[pd.DataFrame, sp.csr_matrix]:
    """Followees are users who signed up before the start, so the graph a user sees never changes after their
    own signup day: the truth for day D is then exact without predicting future follows."""
    n = len(primary)
    candidates = np.flatnonzero(~late)
    popularity = rng.pareto(config.follow_popularity_alpha, len(candidates)) + 1.0
    out_degree = np.minimum(rng.negative_binomial(2, 2 / (2 + config.follows_mean), n), max(len(candidates) - 1, 0))
    followers, followees = [], []
    for c in range(config.n_categories):
        who = np.flatnonzero((primary == c) & (out_degree > 0))
        if len(who) == 0 or len(candidates) == 0:
            continue
        weights = popularity * np.where(primary[candidates] == c, config.follow_homophily, 1.0)
        draws = rng.choice(candidates, int(out_degree[who].sum()), p=weights / weights.sum())
        followers.append(np.repeat(who, out_degree[who]))
        followees.append(draws)
    src = np.concatenate(followers) if followers else np.empty(0, dtype="int64")
    dst = np.concatenate(followees) if followees else np.empty(0, dtype="int64")
    keep = src != dst
    # Unique (follower, followee) pairs in lexicographic order; one int64 key per pair sorts ~10x faster than rows.
    pairs = np.sort(src[keep].astype("int64") * n + dst[keep])
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if len(pairs) else pairs
    src, dst = pairs // n, pairs % n
    # Created after both ends signed up: before the start for old users, within minutes of signing up for new ones.
    start_us = _day_start(config, 0)
    both = np.maximum(signup_time[src], signup_time[dst])
    to_start = (start_us - both).astype("int64")
    day_end = (signup_time[src].astype("datetime64[D]") + np.timedelta64(1, "D")).astype("datetime64[us]")
    to_day_end = np.minimum((day_end - signup_time[src]).astype("int64") - 1, 3600 * 10**6)
    span = np.where(late[src], to_day_end, to_start)
    created = both + (rng.random(len(src)) * span).astype("int64").astype("timedelta64[us]")
    order = np.lexsort((dst, src, created))  # by created_at, follower, followee (pairs are unique: no ties)
    follows = pd.DataFrame(
        {
            "follower_id": (src[order] + 1).astype("int64"),
            "followee_id": (dst[order] + 1).astype("int64"),
            "created_at": pd.to_datetime(created[order], cache=False).tz_localize("UTC"),
        }
    )
    matrix = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    return follows, matrix


# ---------------------------------------------------------------------------------------------------------
# Count-level dynamics of the realised world (K=1) and of replicas (K>1, ranking truth); the purchase-intent
# truth (intent_truth.py) samples the same story with its own block-wise code built on the same rates.
# Carts are ring buffers indexed by the day an item was carted (slot = day % A), so a day's ageing is one
# slot reset; draws touch only the (replica, user) rows that have something to draw, which keeps K=200 fast.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Cart:
    """Open cart items per (replica, user) by the day they were carted."""

    items: np.ndarray  # (K, n, A) int16, slot = carted day % A
    open: np.ndarray  # (K, n) int32, items.sum(-1)

    def rows(self) -> np.ndarray:
        return self.items.reshape(-1, self.items.shape[-1])

    def copy(self) -> _Cart:
        return _Cart(self.items.copy(), self.open.copy())

    def replicate(self, k: int) -> _Cart:
        return _Cart(np.repeat(self.items, k, axis=0), np.repeat(self.open, k, axis=0))


@dataclass
class _State:
    """End-of-day state of the world; arrays carry a leading replica axis K."""

    cart: _Cart
    last_buy: np.ndarray  # (K, n) int32 day index of the last purchase, NEVER if none
    buys: np.ndarray  # (K, n, 7) int16 purchased items per day, slot = day % 7
    buys7: np.ndarray  # (K, n) int32, buys.sum(-1)

    def copy(self) -> _State:
        return _State(self.cart.copy(), self.last_buy.copy(), self.buys.copy(), self.buys7.copy())

    def replicate(self, k: int) -> _State:
        return _State(
            self.cart.replicate(k),
            np.repeat(self.last_buy, k, axis=0),
            np.repeat(self.buys, k, axis=0),
            np.repeat(self.buys7, k, axis=0),
        )


def _initial_state(config: SimulationConfig) -> _State:
    n, a = config.n_users, config.cart_memory_days
    return _State(
        _Cart(np.zeros((1, n, a), dtype="int16"), np.zeros((1, n), dtype="int32")),
        np.full((1, n), NEVER, dtype="int32"),
        np.zeros((1, n, 7), dtype="int16"),
        np.zeros((1, n), dtype="int32"),
    )


@dataclass
class _Browse:
    sessions: np.ndarray  # (K, n)
    views: np.ndarray
    carts: np.ndarray
    wishlists: np.ndarray | None


def _active(world: _Static, t: int) -> np.ndarray:
    return world.signup_day < t


def _weekday(config: SimulationConfig, t: int) -> int:
    return (config.start + dt.timedelta(days=t)).weekday()


def _session_rate(config: SimulationConfig, world: _Static, t: int) -> np.ndarray:
    """Poisson mean of each user's sessions on day t (0 before signing up)."""
    rate = config.sessions_per_day * world.theta**config.sessions_theta_power
    if config.shift_day is not None and t >= (config.shift_day - config.start).days:
        rate = rate * config.shift_sessions
    return np.where(_active(world, t), rate * config.activity_by_weekday[_weekday(config, t)], 0.0)


def _views_per_session(config: SimulationConfig, world: _Static) -> np.ndarray:
    """Poisson mean of each user's views beyond the first in a session."""
    return config.extra_views_per_session * world.theta**config.views_theta_power


def _browse(
    config: SimulationConfig, world: _Static, t: int, k: int, rng: np.random.Generator, wishlists: bool
) -> _Browse:
    """Sessions ~ Poisson(rate * theta^power), views per session 1 + Poisson, carts/wishlists per view."""
    rate = _session_rate(config, world, t)
    sessions = rng.poisson(np.broadcast_to(rate, (k, len(rate)))).astype("int32")
    rows = np.flatnonzero(sessions)
    views = sessions.copy()
    per_session = _views_per_session(config, world)
    views.flat[rows] += rng.poisson(sessions.flat[rows] * per_session[rows % len(rate)])
    carts = np.zeros_like(sessions)
    carts.flat[rows] = rng.binomial(views.flat[rows], world.p_cart[rows % len(rate)])
    wished = None
    if wishlists:
        wished = np.zeros_like(sessions)
        wished.flat[rows] = rng.binomial(views.flat[rows], config.wishlist_rate)
    return _Browse(sessions, views, carts, wished)


def _abandon(cart: _Cart, t: int) -> None:
    """Start of day t: items carted cart_memory_days ago are abandoned and stop counting."""
    slot = t % cart.items.shape[-1]
    cart.open -= cart.items[..., slot]
    cart.items[..., slot] = 0


def _remove(cart: _Cart, sessions: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """On a day with a session, each open item is removed with probability ``rate``; returns (rows, removed)."""
    rows = np.flatnonzero((sessions > 0) & (cart.open > 0))
    held = cart.rows()[rows]
    removed = np.zeros_like(held)
    nonzero = held > 0  # most slots are empty: draw only where there is an item
    removed[nonzero] = rng.binomial(held[nonzero], rate)
    cart.rows()[rows] = held - removed
    cart.open.flat[rows] -= removed.sum(axis=1)
    return rows, removed


def _add(cart: _Cart, t: int, carts: np.ndarray) -> None:
    cart.items[..., t % cart.items.shape[-1]] += carts.astype("int16")
    cart.open += carts


def _social(world: _Static, buys7: np.ndarray) -> np.ndarray:
    """Followees' purchased items over the last 7 days, (K, n), through the sparse follow matrix."""
    return np.asarray(world.follow_matrix @ buys7.T.astype("float64")).T


def _hazard(
    config: SimulationConfig,
    world: _Static,
    t: int,
    open_items: np.ndarray,
    last_buy: np.ndarray,
    social: np.ndarray,
) -> np.ndarray:
    logit = (
        _static_logit(config, world, t)
        + config.purchase_cart * np.log1p(open_items)
        + _satiation(config, t - last_buy)
        + config.purchase_social * np.log1p(social)
    )
    return np.where(_active(world, t), 1.0 / (1.0 + np.exp(-logit)), 0.0)


def _static_logit(config: SimulationConfig, world: _Static, t: int) -> np.ndarray:
    """The part of the purchase logit on day t that depends only on the user: intercept, weekday, propensity."""
    return (
        config.purchase_intercept
        + config.purchase_logit_by_weekday[_weekday(config, t)]
        + config.purchase_theta * world.log_theta
    )


def _satiation(config: SimulationConfig, days_since_purchase: np.ndarray) -> np.ndarray:
    return config.purchase_satiation * np.exp(-days_since_purchase / config.satiation_days)


@dataclass
class _DayDraws:
    browse: _Browse  # raw browsing draws, before a purchase forces a session/view/cart
    social: np.ndarray  # (K, n) followees' purchased items over the 7 days before this one
    buyer: np.ndarray  # (K, n) bool
    forced_cart: np.ndarray  # (K, n) bool: bought with an empty cart, so one item was carted first
    removed_rows: np.ndarray  # flat (replica, user) rows with removals ...
    removed: np.ndarray  # ... and their removed items by cart slot
    bought_rows: np.ndarray  # flat rows of buyers ...
    bought: np.ndarray  # ... and their bought items by cart slot

    @property
    def sessions(self) -> np.ndarray:
        return np.maximum(self.browse.sessions, self.buyer)

    @property
    def views(self) -> np.ndarray:
        return np.maximum(self.browse.views, self.buyer)

    @property
    def carts(self) -> np.ndarray:
        return self.browse.carts + self.forced_cart


def _step(
    config: SimulationConfig,
    world: _Static,
    state: _State,
    t: int,
    rng: np.random.Generator,
    wishlists: bool = True,
) -> _DayDraws:
    """Advance ``state`` (in place) through day ``t``."""
    cart = state.cart
    _abandon(cart, t)
    browse = _browse(config, world, t, cart.open.shape[0], rng, wishlists)
    removed_rows, removed = _remove(cart, browse.sessions, config.remove_rate, rng)
    _add(cart, t, browse.carts)
    social = _social(world, state.buys7)
    hazard = _hazard(config, world, t, cart.open, state.last_buy, social)
    buyer = rng.random(hazard.shape) < hazard
    forced = buyer & (cart.open == 0)  # a purchase always goes through the cart
    _add(cart, t, forced)

    rows = np.flatnonzero(buyer)
    wanted = 1 + rng.poisson(config.extra_items_per_purchase, len(rows))
    held = cart.rows()[rows]
    bought = np.zeros_like(held)
    n_slots = held.shape[1]
    for age in range(n_slots):  # newest items first
        slot = (t - age) % n_slots
        take = np.minimum(held[:, slot], wanted).astype("int16")
        bought[:, slot] = take
        held[:, slot] -= take
        wanted -= take
    cart.rows()[rows] = held
    n_bought = bought.sum(axis=1)
    cart.open.flat[rows] -= n_bought
    state.last_buy.flat[rows] = t
    day_slot = t % 7
    state.buys7 -= state.buys[..., day_slot]
    state.buys[..., day_slot] = 0
    state.buys.reshape(-1, 7)[rows, day_slot] = n_bought
    state.buys7.flat[rows] += n_bought
    return _DayDraws(browse, social, buyer, forced, removed_rows, removed, rows, bought)


# ---------------------------------------------------------------------------------------------------------
# The realised world: count-level replay plus the cart items (which product) needed to render events.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _DayRecord:
    sessions: np.ndarray  # (n,)
    views: np.ndarray
    wishlists: np.ndarray
    cart_user: np.ndarray  # items carted today
    cart_product: np.ndarray
    removed_user: np.ndarray
    removed_product: np.ndarray
    bought_user: np.ndarray
    bought_product: np.ndarray
    state: _State  # end of the day


def _rank_within(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by (group, key) and each row's 0-based rank inside its group (in that order)."""
    order = np.lexsort((keys, groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if len(g) else np.empty(0, dtype="int64")
    first = np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    return order, np.arange(len(g)) - first


def _sample_products(
    config: SimulationConfig, world: _Static, users: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Product indices for views/carts of ``users``: mostly from their preferred categories, popular ones first."""
    u = rng.random(len(users))
    category = np.where(
        u < config.primary_category_share,
        world.primary[users],
        np.where(
            u < config.primary_category_share + config.secondary_category_share,
            world.secondary[users],
            rng.integers(0, config.n_categories, len(users)),
        ),
    )
    idx = np.searchsorted(world.product_cum, category + rng.random(len(users)), side="right")
    segment_end = np.r_[world.category_offsets[1:], config.n_products] - 1
    return np.clip(idx, world.category_offsets[category], segment_end[category])


@dataclass
class _World:
    config: SimulationConfig
    static: _Static
    days: list[_DayRecord] = field(default_factory=list)
    # Open cart items of the realised world: owner, product, day carted.
    item_user: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))
    item_product: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))
    item_day: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))
    truth: dict[int, np.ndarray] = field(default_factory=dict)

    def record(self, t: int) -> _DayRecord:
        while len(self.days) <= t:
            self._advance()
        return self.days[t]

    def _advance(self) -> None:
        config, world = self.config, self.static
        t = len(self.days)
        rng = np.random.default_rng([config.seed, _DYNAMICS, t])
        state = self.days[-1].state.copy() if self.days else _initial_state(config)
        draws = _step(config, world, state, t, rng)

        # Map the count-level draws onto concrete items: abandon, remove, add, buy (same slots as the counts).
        n, n_slots = config.n_users, config.cart_memory_days
        alive = t - self.item_day < n_slots
        users, products, days = self.item_user[alive], self.item_product[alive], self.item_day[alive]
        removed = np.zeros((n, n_slots), dtype="int64")
        removed[draws.removed_rows] = draws.removed
        gone_r = self._pick(users, days % n_slots, removed, rng)
        rem_user, rem_product = users[gone_r], products[gone_r]
        users, products, days = users[~gone_r], products[~gone_r], days[~gone_r]
        new_user = np.repeat(np.arange(n), draws.carts[0])
        new_product = _sample_products(config, world, new_user, rng)
        users = np.r_[users, new_user]
        products = np.r_[products, new_product]
        days = np.r_[days, np.full(len(new_user), t)]
        bought = np.zeros((n, n_slots), dtype="int64")
        bought[draws.bought_rows] = draws.bought
        gone_b = self._pick(users, days % n_slots, bought, rng)
        self.item_user, self.item_product, self.item_day = users[~gone_b], products[~gone_b], days[~gone_b]

        self.days.append(
            _DayRecord(
                sessions=draws.sessions[0],
                views=draws.views[0],
                wishlists=draws.browse.wishlists[0],
                cart_user=new_user,
                cart_product=new_product,
                removed_user=rem_user,
                removed_product=rem_product,
                bought_user=users[gone_b],
                bought_product=products[gone_b],
                state=state,
            )
        )

    @staticmethod
    def _pick(users: np.ndarray, slots: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mask choosing ``counts[user, slot]`` random items in each (user, cart slot) bucket."""
        mask = np.zeros(len(users), dtype=bool)
        if len(users) == 0:
            return mask
        order, rank = _rank_within(users * counts.shape[1] + slots, rng.random(len(users)))
        mask[order] = rank < counts[users[order], slots[order]]
        return mask


@lru_cache(maxsize=4)
def _world(config: SimulationConfig) -> _World:
    return _World(config, _build_static(config))


def clear_cache() -> None:
    """Forget every replayed world of this process (frees memory; the next call replays from the start)."""
    _world.cache_clear()


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def users_snapshot(config: SimulationConfig, ds: dt.date) -> pd.DataFrame:
    """Users signed up by the end of ``ds`` (USERS schema)."""
    world = _world(config).static
    config.day_index(ds)
    return world.users[world.users["signup_time"] < pd.Timestamp(schemas.as_of(ds))].reset_index(drop=True)


def products(config: SimulationConfig) -> pd.DataFrame:
    """The catalogue (PRODUCTS schema); it is the same on every day."""
    return _world(config).static.products.copy()


def merchants(config: SimulationConfig) -> pd.DataFrame:
    """Merchants (MERCHANTS schema)."""
    return _world(config).static.merchants.copy()


def follows_snapshot(config: SimulationConfig, ds: dt.date) -> pd.DataFrame:
    """Follow edges created up to the end of ``ds`` (FOLLOWS schema)."""
    follows = _world(config).static.follows
    config.day_index(ds)
    return follows[follows["created_at"] < pd.Timestamp(schemas.as_of(ds))].reset_index(drop=True)


def simulate_day(config: SimulationConfig, ds: dt.date) -> pd.DataFrame:
    """All events of day ``ds`` (EVENTS schema), sorted by time; identical on every call for the same config."""
    t = config.day_index(ds)
    world = _world(config)
    return _render(config, world.static, world.record(t), t, ds)


def purchased_items(config: SimulationConfig, ds: dt.date) -> pd.DataFrame:
    """Items bought on ``ds`` (user_id, product_id), from the count-level replay without rendering the day's
    events: the orders module builds orders and their labels from it (the events hold the same purchases)."""
    rec = _world(config).record(config.day_index(ds))
    return pd.DataFrame(
        {"user_id": rec.bought_user.astype("int64") + 1, "product_id": rec.bought_product.astype("int64") + 1}
    )


# ---------------------------------------------------------------------------------------------------------
# Rendering one day's events.
# ---------------------------------------------------------------------------------------------------------


def _time_of_day(uniform: np.ndarray, by_hour: tuple[float, ...]) -> np.ndarray:
    """Map uniform draws to fractions of the day with the piecewise-constant hourly density ``by_hour``
    (inverse CDF: one draw per session, so the rest of the day's random stream is unchanged)."""
    weights = np.asarray(by_hour, dtype="float64") / np.sum(by_hour)
    upper = np.cumsum(weights)
    hour = np.minimum(np.searchsorted(upper, uniform, side="right"), len(weights) - 1)
    within = (uniform - (upper[hour] - weights[hour])) / weights[hour]
    return (hour + np.clip(within, 0.0, 1.0)) / len(weights)


def _render(config: SimulationConfig, world: _Static, rec: _DayRecord, t: int, ds: dt.date) -> pd.DataFrame:
    """Turn one day's counts and cart items into timed events inside sessions (own random stream)."""
    rng = np.random.default_rng([config.seed, _RENDER, t])
    n = config.n_users
    n_sessions, n_views = rec.sessions.astype("int64"), rec.views.astype("int64")

    # Sessions start at random times of the day following the hourly profile, numbered per user in time order.
    sess_user = np.repeat(np.arange(n), n_sessions)
    # (The few events of sessions starting minutes before midnight are clipped to the day's last millisecond.)
    sess_start = _time_of_day(rng.random(len(sess_user)), config.activity_by_hour) * DAY_SECONDS
    sess_start = sess_start[np.lexsort((sess_start, sess_user))]  # sess_user is already sorted
    first_sess = np.r_[0, np.cumsum(n_sessions)[:-1]]

    # Views: one per session, the rest spread over the user's sessions at random.
    view_user = np.repeat(np.arange(n), n_views)
    first_view = np.r_[0, np.cumsum(n_views)[:-1]]
    view_rank = np.arange(len(view_user)) - first_view[view_user]
    spread = (rng.random(len(view_user)) * n_sessions[view_user]).astype("int64")
    view_sess = first_sess[view_user] + np.where(view_rank < n_sessions[view_user], view_rank, spread)
    view_pos = rng.random(len(view_user))
    view_pos[view_rank < n_sessions[view_user]] = -1.0  # every session lands on a view
    view_product = _sample_products(config, world, view_user, rng)
    # Carted and wishlisted items were viewed first: pick views in a random order per user.
    by_user, _ = _rank_within(view_user, rng.random(len(view_user)))
    cart_rank = (
        np.arange(len(rec.cart_user)) - np.r_[0, np.cumsum(np.bincount(rec.cart_user, minlength=n))[:-1]][rec.cart_user]
    )
    cart_view = by_user[first_view[rec.cart_user] + cart_rank]
    view_product[cart_view] = rec.cart_product
    wish_user = np.repeat(np.arange(n), rec.wishlists)
    wish_rank = np.arange(len(wish_user)) - np.r_[0, np.cumsum(rec.wishlists)[:-1]][wish_user]
    wish_view = by_user[first_view[wish_user] + n_views[wish_user] - rec.wishlists[wish_user] + wish_rank]

    def any_session(users: np.ndarray) -> np.ndarray:
        return first_sess[users] + (rng.random(len(users)) * n_sessions[users]).astype("int64")

    # Event table; (session, position, kind) orders events inside a session: cart/wishlist right after their
    # view, removals anywhere, purchases last in the user's last session (after every cart of the day).
    kind = np.r_[
        np.zeros(len(view_user)),
        np.ones(len(cart_view)),
        np.full(len(wish_view), 2),
        np.full(len(rec.removed_user), 3),
        np.full(len(rec.bought_user), 4),
    ].astype("int64")
    session = np.r_[
        view_sess,
        view_sess[cart_view],
        view_sess[wish_view],
        any_session(rec.removed_user),
        first_sess[rec.bought_user] + n_sessions[rec.bought_user] - 1,
    ]
    position = np.r_[
        view_pos,
        view_pos[cart_view],
        view_pos[wish_view],
        rng.random(len(rec.removed_user)),
        np.full(len(rec.bought_user), 2.0),
    ]
    product = np.r_[view_product, rec.cart_product, view_product[wish_view], rec.removed_product, rec.bought_product]
    order = np.lexsort((kind, position, session))
    kind, session, product = kind[order], session[order], product[order]

    gaps = np.clip(rng.exponential(45.0, len(session)), 1.0, 600.0)
    new_session = np.r_[True, session[1:] != session[:-1]] if len(session) else np.empty(0, dtype=bool)
    gaps[new_session] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.maximum.accumulate(np.where(new_session, elapsed, 0.0)) if len(session) else 0.0
    seconds = np.minimum(sess_start[session] + elapsed, DAY_SECONDS - 1e-3)
    event_time = _day_start(config, t) + (seconds * 1e6).astype("int64").astype("timedelta64[us]")
    user = sess_user[session]

    final = np.lexsort((kind, user, event_time))
    user, session, kind, product, event_time = (
        user[final],
        session[final],
        kind[final],
        product[final],
        event_time[final],
    )
    stamp = ds.strftime("%Y%m%d")
    session_no = session - first_sess[user]
    prod = world.products
    types = np.array(["view", "cart", "wishlist", "remove_from_cart", "purchase"])
    return pd.DataFrame(
        {
            "event_id": [f"{stamp}-{i:07d}" for i in range(len(user))],
            "event_time": pd.to_datetime(event_time, cache=False).tz_localize("UTC"),
            "user_id": (user + 1).astype("int64"),
            "session_id": [f"{u + 1}-{stamp}-{k}" for u, k in zip(user.tolist(), session_no.tolist(), strict=True)],
            "event_type": types[kind],
            "product_id": (product + 1).astype("int64"),
            "category_id": prod["category_id"].to_numpy()[product],
            "brand": prod["brand"].to_numpy()[product],
            "price": prod["price"].to_numpy()[product],
            "merchant_id": prod["merchant_id"].to_numpy()[product],
        }
    )

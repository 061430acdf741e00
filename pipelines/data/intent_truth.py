"""Ground truth of purchase intent: P(purchase in the next 7 days | the world at the end of a day), by Monte Carlo
over replicas of those days, simulated a fixed-size block of replicas at a time (memory bounded by one block)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.data import schemas
from pipelines.data.simulator import (
    _TRUTH,
    SimulationConfig,
    SimulationError,
    _active,
    _satiation,
    _session_rate,
    _State,
    _Static,
    _static_logit,
    _views_per_session,
    _world,
)

HORIZON = 7
# Replicas per block: about this many (replica, user) rows, so memory is bounded (~50 MB a block) and a block's
# arrays stay near the CPU caches (measured: 0.5-1M rows beat 2-4M); at 5,000 users the 200 replicas make two
# blocks, so two threads share a day. Block b draws from stream [seed, 3, day, b]: a day's truth is a function of
# the config and the day, never of the machine or the thread count.
BLOCK_ROWS = 500_000
# Counts with a mean up to this are drawn by inverting their CDF (about one pass over the rows); larger ones by
# numpy's samplers, since the inversion loop would run about mean times.
_INVERT_UP_TO = 8.0


def purchase_truth(config: SimulationConfig, ds: dt.date, threads: int = 1) -> pd.DataFrame:
    """P(purchase during ds+1..ds+7 | world state at the end of ds) for every user signed up by then.

    Monte Carlo over ``config.truth_replicas`` replicas of the next 7 days with its own random stream (so it does
    not depend on the realised future). Every user is simulated in every replica, purchases included, so
    followees' purchases feed back through the follow graph. The estimator is Rao-Blackwellised: P(no purchase)
    is the replica mean of prod(1 - daily hazard) along each user's own no-purchase path (the replica's path until
    the user's first purchase there, then the same browsing without buying). The only approximation is that a
    user's own simulated purchases may echo back through mutual follows, a second-order effect. Blocks of
    replicas run on ``threads`` threads (numpy releases the GIL); the result does not depend on it.
    """
    t = config.day_index(ds)
    world = _world(config)
    if t not in world.truth:
        world.truth[t] = truth_probabilities(config, world.static, world.record(t).state, t, threads)
    signed_up = world.static.signup_day <= t
    return pd.DataFrame(
        {
            "user_id": np.flatnonzero(signed_up).astype("int64") + 1,
            "as_of": pd.Series(pd.Timestamp(schemas.as_of(ds)), index=range(int(signed_up.sum()))),
            "p_purchase_7d": world.truth[t][signed_up],
        }
    )


def truth_probabilities(
    config: SimulationConfig, world: _Static, end_state: _State, t: int, threads: int = 1
) -> np.ndarray:
    """P(purchase on t+1..t+HORIZON) per user index, from the realised ``end_state`` of day ``t`` (K=1)."""
    k = config.truth_replicas
    if k < 1:
        raise SimulationError(f"SimulationConfig.truth_replicas must be >= 1, got {k}; set it to e.g. 200")
    days = [_Day.of(config, world, end_state, t, d) for d in range(t + 1, t + 1 + HORIZON)]
    followers = world.follow_matrix.T.tocsr()  # row v: the followers of v, who see v's purchases

    size = max(1, BLOCK_ROWS // config.n_users)

    def survival(block: int) -> np.ndarray:
        """Sum over the block's replicas of each user's probability of not buying."""
        rng = np.random.default_rng([config.seed, _TRUTH, t, block])
        replicas = _Block(config, world, end_state, min(size, k - block * size), rng)
        for day in days:
            replicas.step(day, followers)
        return np.exp(replicas.log_survival.astype("float64")).sum(axis=0)

    blocks = range(-(-k // size))
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        total = sum(pool.map(survival, blocks), np.zeros(config.n_users))  # summed in block order
    return 1.0 - total / k


@dataclass
class _Day:
    """Everything about day ``d`` that is the same in every replica, per user."""

    d: int
    session_rate: np.ndarray  # float64; 0 for users not signed up
    no_session: np.ndarray  # float32 exp(-session_rate)
    logit: np.ndarray  # float32 hazard logit without the cart and social terms (realised satiation); -inf inactive
    satiation: np.ndarray  # float32 realised satiation term, replaced for users who bought in a replica
    social: np.ndarray  # float32 followees' realised purchases of d-7..t (replicas add their own later)

    @classmethod
    def of(cls, config: SimulationConfig, world: _Static, end: _State, t: int, d: int) -> _Day:
        rate = _session_rate(config, world, d)
        satiation = _satiation(config, d - end.last_buy[0])
        logit = np.where(_active(world, d), _static_logit(config, world, d) + satiation, -np.inf)
        # Purchases of days d-7..t are realised and held by the end state's ring (slot = day % 7).
        window = [j % 7 for j in range(max(d - 7, 0), t + 1)]
        bought = end.buys[0][:, window].sum(axis=1, dtype="float64")
        return cls(
            d=d,
            session_rate=rate,
            no_session=np.exp(-rate).astype("float32"),
            logit=logit.astype("float32"),
            satiation=satiation.astype("float32"),
            social=np.asarray(world.follow_matrix @ bought, dtype=np.float32),
        )


class _Block:
    """``b`` replicas of every user over the horizon: the replica's own path (dense, shape (b, n)) and, for the
    (replica, user) rows that have bought in it, the no-purchase path they would have followed (sparse)."""

    def __init__(self, config: SimulationConfig, world: _Static, end: _State, b: int, rng: np.random.Generator) -> None:
        n, slots = config.n_users, config.cart_memory_days
        self.config, self.world, self.rng, self.n = config, world, rng, n
        self.views_per_session = _views_per_session(config, world)
        # Open cart items per flat row (replica * n + user) by cart slot (slot = day carted % slots).
        self.items = np.tile(end.cart.items[0], (b, 1))
        self.open = np.broadcast_to(end.cart.open[0], (b, n)).copy()
        self.last_buy = np.zeros((b, n), dtype="int32")  # day of the replica's last purchase, 0 = none yet
        self.social = np.zeros((b, n), dtype=np.float32)  # followees' purchases made in this replica
        self.log_survival = np.zeros((b, n), dtype=np.float32)  # of the own no-purchase path
        # Rows (flat replica*n + user) that bought in this replica, and their no-purchase carts.
        self.bought_rows = np.empty(0, dtype="int64")
        self.shadow_items = np.empty((0, slots), dtype=self.items.dtype)
        self.shadow_open = np.empty(0, dtype=self.open.dtype)

    def step(self, day: _Day, followers: sp.csr_matrix) -> None:
        config, rng, n = self.config, self.rng, self.n
        slot = day.d % config.cart_memory_days
        # Start of the day: items carted cart_memory_days ago are abandoned.
        self.open.ravel()[:] -= self.items[:, slot]
        self.items[:, slot] = 0
        self.shadow_open -= self.shadow_items[:, slot]
        self.shadow_items[:, slot] = 0

        # Browsing: sessions ~ Poisson(rate); each session has 1 + Poisson(views_per_session) views and each view
        # carts with p_cart, so carts = Binomial(sessions, p_cart) + Poisson(sessions * views_per_session * p_cart).
        u = rng.random(self.open.shape, dtype=np.float32)
        rows = np.flatnonzero(u > day.no_session)
        users = rows % n
        sessions = _positive_poisson(rng, u.ravel()[rows], day.session_rate[users], day.no_session[users])
        p_cart = self.world.p_cart[users]
        carts = _binomial(rng, sessions, p_cart) + _poisson(rng, sessions * self.views_per_session[users] * p_cart)
        browsed = np.zeros(self.open.size, dtype=bool)
        browsed[rows] = True
        carted = np.zeros(self.open.size, dtype=self.items.dtype)
        carted[rows] = carts

        # On a day with a session each open item is removed with probability remove_rate; then today's carts.
        held = rows[self.open.ravel()[rows] > 0]
        self._remove(self.items, self.open.ravel(), held)
        shadow_browsed = np.flatnonzero(browsed[self.bought_rows])
        self._remove(self.shadow_items, self.shadow_open, shadow_browsed)
        self.items[rows, slot] += carts.astype(self.items.dtype)
        self.open.ravel()[rows] += carts.astype(self.open.dtype)
        shadow_carts = carted[self.bought_rows]
        self.shadow_items[:, slot] += shadow_carts
        self.shadow_open += shadow_carts

        # Hazard of the replica's path; rows that bought in the replica differ in satiation (own last purchase)
        # and, on their no-purchase path, in the cart.
        social = self.social + day.social
        cart_term = np.log1p(self.open, dtype=np.float32)
        cart_term *= config.purchase_cart
        logit = np.log1p(social)
        logit *= config.purchase_social
        logit += cart_term
        logit += day.logit
        bought, bought_users = self.bought_rows, self.bought_rows % n
        shadow_logit = (
            day.logit[bought_users]
            + config.purchase_cart * np.log1p(self.shadow_open, dtype=np.float32)
            + config.purchase_social * np.log1p(social.ravel()[bought])
        )
        logit.ravel()[bought] += (
            _satiation(config, day.d - self.last_buy.ravel()[bought]).astype("float32") - day.satiation[bought_users]
        )
        odds = np.exp(logit)
        buyers = np.flatnonzero(rng.random(odds.shape, dtype=np.float32) * (1 + odds) < odds)
        # log(1 - hazard) = -log1p(odds); on the no-purchase path of rows that bought before today it is the shadow's.
        survival = np.log1p(odds)
        survival.ravel()[bought] = np.log1p(np.exp(shadow_logit))
        self.log_survival -= survival
        self._buy(day.d, buyers, followers)

    def _remove(self, items: np.ndarray, open_items: np.ndarray, rows: np.ndarray) -> None:
        """Each open item of ``rows`` (rows of ``items``) is removed with probability remove_rate: the number
        removed is Binomial(open items, rate), and which ones is uniform (most rows remove none)."""
        removed = _binomial(self.rng, open_items[rows], self.config.remove_rate)
        rows, removed = rows[removed > 0], removed[removed > 0]
        items[rows] -= _draw_uniformly(items[rows], removed, self.rng)
        open_items[rows] -= removed.astype(open_items.dtype)

    def _buy(self, d: int, rows: np.ndarray, followers: sp.csr_matrix) -> None:
        """Buyers take 1 + Poisson(extra) items, newest first; with an empty cart they cart one item and buy it."""
        config, slots = self.config, self.config.cart_memory_days
        first = rows[self.last_buy.ravel()[rows] == 0]
        items = self.items
        # A first purchase forks the row's no-purchase path from its cart as it is before buying.
        self.bought_rows = np.concatenate([self.bought_rows, first])
        self.shadow_items = np.concatenate([self.shadow_items, items[first]])
        self.shadow_open = np.concatenate([self.shadow_open, self.open.ravel()[first]])

        wanted = 1 + self.rng.poisson(config.extra_items_per_purchase, len(rows))
        newest_first = [(d - age) % slots for age in range(slots)]
        held = items[rows][:, newest_first]
        taken = np.minimum(np.cumsum(held, axis=1), wanted[:, None])
        taken[:, 1:] -= taken[:, :-1].copy()
        items[rows[:, None], newest_first] = held - taken
        n_bought = taken.sum(axis=1)
        self.open.ravel()[rows] -= n_bought.astype(self.open.dtype)
        n_bought = np.maximum(n_bought, 1)  # an empty cart: one item is carted and bought at once
        self.last_buy.ravel()[rows] = d
        # Followers see these purchases from tomorrow on (horizon <= 7 days: none leaves their window).
        user = rows % self.n
        start, count = followers.indptr[user], followers.indptr[user + 1] - followers.indptr[user]
        edge = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count - start, count)
        seen = np.repeat(rows - user, count) + followers.indices[edge]
        np.add.at(self.social.ravel(), seen, np.repeat(n_bought, count).astype(self.social.dtype))


def _draw_uniformly(held: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row of ``held`` (items by slot), ``counts`` items drawn uniformly without replacement, by slot
    (multivariate hypergeometric, one slot at a time)."""
    drawn = np.zeros_like(held)
    # One item (most rows): the slot where a uniform pick among the row's items falls.
    one = np.flatnonzero(counts == 1)
    cumulative = np.cumsum(held[one], axis=1)
    pick = (rng.random(len(one)) * cumulative[:, -1]).astype("int64")
    drawn[one, (cumulative <= pick[:, None]).sum(axis=1)] = 1
    more = np.flatnonzero(counts > 1)
    held, left, rest = held[more], counts[more].astype("int64"), held[more].sum(axis=1, dtype="int64")
    for slot in range(held.shape[1] - 1):
        good = held[:, slot].astype("int64")
        rest -= good
        taken = rng.hypergeometric(good, rest, left)
        drawn[more, slot] = taken
        left -= taken
    drawn[more, -1] = left
    return drawn


def _invert(u: np.ndarray, first: np.ndarray, ratio: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Inverse-CDF draws of counts from uniforms ``u``: P(0) = ``first``, P(j) = P(j-1) * ratio(rows, j).

    Only the rows still above the CDF are carried to the next count, so small means cost about one pass.
    """
    count = np.zeros(len(u), dtype="int64")
    rows = np.flatnonzero(u > first)
    p = first[rows].astype("float64")
    cdf, u = p.copy(), u[rows]
    j = 0
    while len(rows):  # the arrays hold the rows still above the CDF only
        j += 1
        count[rows] = j
        p *= ratio(rows, j)
        cdf += p
        more = (u > cdf) & (p > 0)  # p underflows only far in the tail: stop there
        rows, p, cdf, u = rows[more], p[more], cdf[more], u[more]
    return count


def _poisson(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Poisson(mean) counts."""
    big = np.flatnonzero(mean > _INVERT_UP_TO)
    if len(big):
        out = _poisson(rng, np.where(mean > _INVERT_UP_TO, 0, mean))
        out[big] = rng.poisson(mean[big])
        return out
    first = np.exp(-mean.astype(np.float32))
    return _invert(rng.random(len(mean), dtype=np.float32), first, lambda r, j: mean[r] / j)


def _positive_poisson(rng: np.random.Generator, u: np.ndarray, mean: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Poisson(mean) counts given that they are >= 1, for rows whose uniform ``u`` is above ``p0`` = P(0)."""
    out = np.empty(len(mean), dtype="int64")
    big = mean > _INVERT_UP_TO
    m = mean[~big]
    out[~big] = _invert(u[~big], p0[~big], lambda r, j: m[r] / j)
    drawn, m = np.zeros(int(big.sum()), dtype="int64"), mean[big]
    while not drawn.all():  # rejection of zeros: P(0) < exp(-_INVERT_UP_TO), a redraw is rare
        zero = drawn == 0
        drawn[zero] = rng.poisson(m[zero])
    out[big] = drawn
    return out


def _binomial(rng: np.random.Generator, trials: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    """Binomial(trials, p) counts."""
    p = np.broadcast_to(np.asarray(p, dtype=np.float32), trials.shape)
    big = np.flatnonzero(trials * p > _INVERT_UP_TO)
    if len(big):
        out = _binomial(rng, np.where(trials * p > _INVERT_UP_TO, 0, trials), p)
        out[big] = rng.binomial(trials[big], p[big])
        return out
    first = np.exp(trials * np.log1p(-p))
    return _invert(
        rng.random(len(trials), dtype=np.float32),
        first,
        lambda r, j: p[r] / (1 - p[r]) * np.maximum(trials[r] - j + 1, 0) / j,
    )

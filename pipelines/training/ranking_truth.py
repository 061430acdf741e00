"""The simulator's expected relevance of (user, product) candidates: the best achievable ranking scorer.

For a request at ``as_of(ds)`` a product's relevance is the highest gain among the user's events on it in the next
``window_days`` (cart, purchase). The simulator draws a new cart item's product independently of everything else:
its category from the user's hidden preferences (primary, secondary, any) and the product by popularity within
the category, so P(a new item is p) = q_u(p) is known exactly. What is random is how many items the user carts and
buys, and which already-open cart items get bought: Monte Carlo replicas of the next days (the simulator's own
count-level dynamics, social feedback included, with the items of the realised open cart tracked one by one)
give those counts, and the product identities are integrated out exactly (Rao-Blackwellised):

    P(no new cart of p | replica) = (1 - q)^carts,   P(no new purchase of p | replica) = (1 - q)^bought_new.

NDCG rewards relevance r with 2^r - 1, so the score is E[2^r - 1]: sorting by it maximises the expected DCG.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.data import simulator as sim

# Random stream of these replicas (the simulator's own streams are 0..3).
_STREAM = 11
SUPPORTED_EVENTS = ("cart", "purchase")


class RankingTruthError(ValueError):
    """The expected relevance cannot be computed for these gains or days."""


def category_weights(config: sim.SimulationConfig, world: sim._Static) -> np.ndarray:
    """(n_users, n_categories): probability that a user's new cart item falls in each category."""
    n, n_cat = config.n_users, config.n_categories
    rest = 1.0 - config.primary_category_share - config.secondary_category_share
    weights = np.full((n, n_cat), rest / n_cat)
    rows = np.arange(n)
    weights[rows, world.primary] += config.primary_category_share
    weights[rows, world.secondary] += config.secondary_category_share
    return weights


def product_shares(world: sim._Static) -> tuple[np.ndarray, np.ndarray]:
    """Each product's category index and its share of draws within the category: the steps of ``product_cum``,
    the within-category cumulative popularity (category c spans (c, c + 1])."""
    category = world.products["category_id"].to_numpy(dtype="int64") - 1
    cum = world.product_cum
    start = np.r_[0.0, cum[:-1]]
    start[world.category_offsets] = category[world.category_offsets]
    return category, cum - start


def _open_items(config: sim.SimulationConfig, days: list[int]) -> dict[int, tuple[np.ndarray, ...]]:
    """Open cart items (user index, product index, day carted) at the end of each day index in ``days``.

    The cached world keeps only its newest items, so a private world is replayed from the start (the replay is
    deterministic: the same draws, hence the same items)."""
    world = sim._World(config, sim._world(config).static)
    out = {}
    for t in sorted(days):
        world.record(t)
        out[t] = (world.item_user.copy(), world.item_product.copy(), world.item_day.copy())
    return out


class _OldItems:
    """The realised open cart items of the wanted users at the end of the as-of day, one copy per replica."""

    def __init__(self, replica: np.ndarray, user: np.ndarray, slot: np.ndarray, day: np.ndarray, origin: np.ndarray):
        self.replica, self.user, self.slot, self.day, self.origin = replica, user, slot, day, origin

    def keep(self, mask: np.ndarray) -> None:
        for name in ("replica", "user", "slot", "day", "origin"):
            setattr(self, name, getattr(self, name)[mask])

    def counts(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype="int64")
        np.add.at(out, (self.replica, self.user, self.slot), 1)
        return out

    def take(self, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mask of ``taken[replica, user, slot]`` items chosen at random in each bucket."""
        mask = np.zeros(len(self.user), dtype=bool)
        want = taken[self.replica, self.user, self.slot]
        rows = np.flatnonzero(want > 0)
        if len(rows):
            bucket = (self.replica[rows] * taken.shape[1] + self.user[rows]) * taken.shape[2] + self.slot[rows]
            order, rank = sim._rank_within(bucket, rng.random(len(rows)))
            mask[rows[order]] = rank < want[rows[order]]
        return mask


def _split_draws(
    counts: np.ndarray, old: _OldItems, new: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``counts`` items drawn uniformly from each (replica, user, slot) bucket between the bucket's old items
    and its new ones: returns (mask of old items drawn, new items drawn per bucket)."""
    held_old = old.counts(new.shape)
    from_old = np.zeros_like(counts)
    mixed = (counts > 0) & (held_old > 0)
    from_old[mixed] = rng.hypergeometric(held_old[mixed], new[mixed], counts[mixed])
    return old.take(from_old, rng), counts - from_old


def _replicate_day(
    config: sim.SimulationConfig,
    static: sim._Static,
    t: int,
    window_days: int,
    replicas: int,
    items: tuple[np.ndarray, ...],
    wanted: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Replicas of the ``window_days`` after day index ``t`` for the ``wanted`` users (sorted user indices).

    Items carted in the window are counted per (replica, user, cart slot): which product they are is integrated
    out by the caller. The realised open items are followed one by one, since their products are known. A day's
    removals and purchases are drawn uniformly within a cart slot, as the simulator does, so the share of old
    items among them is hypergeometric. Returns per (replica, wanted user) the new items carted and the new items
    bought, the (user index, product index) of each open item, and per (replica, open item) whether it was bought.
    """
    n, slots, k, w = config.n_users, config.cart_memory_days, replicas, len(wanted)
    rng = np.random.default_rng([config.seed, _STREAM, t])
    state = sim._world(config).record(t).state.replicate(k)
    position = np.full(n, -1)
    position[wanted] = np.arange(w)

    user, product, day = items
    mine = position[user] >= 0
    old_user, old_product, old_day = user[mine], product[mine], day[mine]
    n_old = len(old_user)
    old = _OldItems(
        np.repeat(np.arange(k), n_old),
        np.tile(position[old_user], k),
        np.tile(old_day % slots, k),
        np.tile(old_day, k),
        np.tile(np.arange(n_old), k),
    )
    new = np.zeros((k, w, slots), dtype="int64")  # items carted in the window, by cart slot
    carts = np.zeros((k, w), dtype="int64")
    bought_new = np.zeros((k, w), dtype="int64")
    old_bought = np.zeros((k, n_old), dtype=bool)
    for d in range(t + 1, t + 1 + window_days):
        draws = sim._step(config, static, state, d, rng, wishlists=False)
        # Start of day d: items carted slots days ago expire (a window's own items only after the window).
        new[:, :, d % slots] = 0
        old.keep(d - old.day < slots)

        removed = np.zeros((k * n, slots), dtype="int64")
        removed[draws.removed_rows] = draws.removed
        gone, from_new = _split_draws(removed.reshape(k, n, slots)[:, wanted], old, new, rng)
        old.keep(~gone)
        new -= from_new

        added = draws.carts[:, wanted]
        carts += added
        new[:, :, d % slots] += added

        bought = np.zeros((k * n, slots), dtype="int64")
        bought[draws.bought_rows] = draws.bought
        gone, from_new = _split_draws(bought.reshape(k, n, slots)[:, wanted], old, new, rng)
        old_bought[old.replica[gone], old.origin[gone]] = True
        old.keep(~gone)
        new -= from_new
        bought_new += from_new.sum(axis=2)
    return carts, bought_new, np.c_[old_user, old_product], old_bought


def expected_gain(
    config: sim.SimulationConfig,
    requests: pd.DataFrame,
    window_days: int,
    gains: dict[str, int],
    replicas: int = 200,
) -> np.ndarray:
    """E[2^relevance - 1] of each row of ``requests`` (user_id, product_id, as_of day ``ds``).

    ``gains`` maps event types to grades; only ``cart`` and ``purchase`` are simulated, with purchase the higher.
    """
    unknown = sorted(set(gains) - set(SUPPORTED_EVENTS))
    if unknown:
        raise RankingTruthError(f"gains for {unknown}: the ranking truth knows {list(SUPPORTED_EVENTS)} only")
    g_cart, g_buy = gains.get("cart", 0), gains.get("purchase", 0)
    if g_buy < g_cart:
        raise RankingTruthError("the ranking truth needs the purchase gain >= the cart gain")
    static = sim._world(config).static
    weights = category_weights(config, static)
    category, share = product_shares(static)
    user = requests["user_id"].to_numpy(dtype="int64") - 1
    product = requests["product_id"].to_numpy(dtype="int64") - 1
    if user.min(initial=0) < 0 or user.max(initial=0) >= config.n_users or product.max(initial=0) >= len(share):
        raise RankingTruthError("requests name users or products outside the simulated world")
    days = [config.day_index(d) for d in requests["ds"]]
    day = np.asarray(days, dtype="int64")
    q = weights[user, category[product]] * share[product]

    out = np.zeros(len(requests))
    open_items = _open_items(config, sorted(set(days)))
    for t in sorted(set(days)):
        rows = np.flatnonzero(day == t)
        wanted = np.unique(user[rows])
        carts, bought_new, old_keys, old_bought = _replicate_day(
            config, static, t, window_days, replicas, open_items[t], wanted
        )
        col = np.searchsorted(wanted, user[rows])
        # P(none of the pair's open items bought | replica), (k, rows): any of its open items bought ends it.
        none_old = np.ones((replicas, len(rows)))
        if len(old_keys):
            asked = pd.DataFrame({"u": user[rows], "p": product[rows], "row": np.arange(len(rows))})
            held = pd.DataFrame({"u": old_keys[:, 0], "p": old_keys[:, 1], "item": np.arange(len(old_keys))})
            matched = asked.merge(held, on=["u", "p"])
            for row, item in zip(matched["row"].to_numpy(), matched["item"].to_numpy(), strict=True):
                none_old[:, row] *= ~old_bought[:, item]
        stay = np.log1p(-np.minimum(q[rows], 1 - 1e-12))
        no_cart = none_old * np.exp(carts[:, col] * stay)
        no_buy = none_old * np.exp(bought_new[:, col] * stay)
        p_any, p_buy = 1.0 - no_cart.mean(axis=0), 1.0 - no_buy.mean(axis=0)
        # r = g_buy if bought, g_cart if only carted, else 0 (a purchase of a new item comes with its cart).
        out[rows] = (2.0**g_cart - 1) * (p_any - p_buy) + (2.0**g_buy - 1) * p_buy
    return out

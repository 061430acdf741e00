"""Simulator benchmark: seconds per simulated day and per ground-truth day, and the learnability check.

The learnability check trains LightGBM on plain pandas features of the simulated events (the feature list of
models/purchase_intent.yaml) and compares its test ROC-AUC with the best achievable one (the truth table scored
against the same labels). Run: ``.venv/bin/python bench/bench_simulator.py [--users 5000] [--days 35]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from pipelines.data import simulator
from pipelines.data.labels import purchase_labels
from pipelines.data.schemas import as_of

TYPES = ("view", "cart", "purchase", "wishlist", "remove_from_cart")


def daily_features(events: pd.DataFrame, users: pd.DataFrame, follows: pd.DataFrame, days: list[dt.date]):
    """Features per (user, as-of day) from events up to the end of each day, computed with cumulative sums."""
    n_days = len(days)
    start = days[0]
    uid = users["user_id"].to_numpy()
    n = int(uid.max()) + 1
    ev = events.assign(day=(events["event_time"].dt.tz_localize(None).dt.floor("D") - pd.Timestamp(start)).dt.days)
    counts = {}
    for et in TYPES:
        sub = ev[ev["event_type"] == et]
        m = np.zeros((n_days, n))
        np.add.at(m, (sub["day"].to_numpy(), sub["user_id"].to_numpy()), 1)
        counts[et] = m
    sess = ev.drop_duplicates("session_id")
    sessions = np.zeros((n_days, n))
    np.add.at(sessions, (sess["day"].to_numpy(), sess["user_id"].to_numpy()), 1)
    views = ev[ev["event_type"] == "view"]
    price_sum = np.zeros((n_days, n))
    np.add.at(price_sum, (views["day"].to_numpy(), views["user_id"].to_numpy()), views["price"].to_numpy())
    any_event = sum(counts.values())

    def window(m: np.ndarray, w: int) -> np.ndarray:
        c = np.cumsum(m, axis=0)
        out = c.copy()
        out[w:] -= c[:-w]
        return out

    def since(m: np.ndarray) -> np.ndarray:
        last = np.full(n, np.nan)
        out = np.empty_like(m)
        for d in range(n_days):
            last = np.where(m[d] > 0, d, last)
            out[d] = d - last
        return out

    # followee purchases (follows may only be created before the as-of time)
    src, dst = follows["follower_id"].to_numpy(), follows["followee_id"].to_numpy()
    created = follows["created_at"].dt.tz_localize(None).to_numpy()
    buys7 = window(counts["purchase"], 7)
    rows = []
    for d, day in enumerate(days):
        cutoff = np.datetime64(as_of(day).replace(tzinfo=None))
        ok = created < cutoff
        fp = np.zeros(n)
        np.add.at(fp, src[ok], buys7[d][dst[ok]])
        rows.append(
            pd.DataFrame(
                {
                    "user_id": uid,
                    "as_of": pd.Timestamp(as_of(day)),
                    "followee_purchases_7d": fp[uid],
                    "follower_count": np.bincount(dst[ok], minlength=n)[uid],
                    "followee_count": np.bincount(src[ok], minlength=n)[uid],
                    "_d": d,
                }
            )
        )
    frame = pd.concat(rows, ignore_index=True)
    d_idx, u_idx = frame["_d"].to_numpy(), frame["user_id"].to_numpy()
    for et in TYPES:
        for w in (1, 7, 30):
            frame[f"{et}_{w}d"] = window(counts[et], w)[d_idx, u_idx]
    frame["sessions_7d"] = window(sessions, 7)[d_idx, u_idx]
    frame["days_since_last_event"] = since(any_event)[d_idx, u_idx]
    frame["days_since_last_purchase"] = since(counts["purchase"])[d_idx, u_idx]
    frame["days_since_last_cart"] = since(counts["cart"])[d_idx, u_idx]
    c7, p7, r7 = frame["cart_7d"], frame["purchase_7d"], frame["remove_from_cart_7d"]
    frame["cart_abandonment_7d"] = np.where(c7 > 0, (c7 - p7).clip(lower=0) / c7.where(c7 > 0, 1), np.nan)
    frame["open_cart_7d"] = c7 - p7 - r7
    v30 = window(counts["view"], 30)[d_idx, u_idx]
    frame["avg_price_viewed_30d"] = np.where(v30 > 0, window(price_sum, 30)[d_idx, u_idx] / np.maximum(v30, 1), np.nan)
    return frame.drop(columns="_d")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    config = simulator.SimulationConfig(n_users=args.users, seed=args.seed)
    days = [config.start + dt.timedelta(days=i) for i in range(args.days)]

    t0 = time.perf_counter()
    events = pd.concat([simulator.simulate_day(config, d) for d in days], ignore_index=True)
    sim_s = (time.perf_counter() - t0) / len(days)
    as_of_days = days[8:28]
    t0 = time.perf_counter()
    truth = pd.concat([simulator.purchase_truth(config, d) for d in as_of_days], ignore_index=True)
    truth_s = (time.perf_counter() - t0) / len(as_of_days)
    print(f"events/day {len(events) / len(days):,.0f}; simulate {sim_s * 1000:.0f} ms/day; truth {truth_s:.2f} s/day")

    users = simulator.users_snapshot(config, days[-1])
    follows = simulator.follows_snapshot(config, days[-1])
    feats = daily_features(events, users, follows, days)
    labels = purchase_labels(events, as_of_days, users["user_id"], window_days=7)
    truth["as_of"] = truth["as_of"].dt.as_unit("ns")
    feats["as_of"] = feats["as_of"].dt.as_unit("ns")
    data = truth.merge(labels, on=["user_id", "as_of"]).merge(feats, on=["user_id", "as_of"])
    cols = [c for c in feats.columns if c not in ("user_id", "as_of")]
    day_no = (data["as_of"] - pd.Timestamp(as_of(config.start))).dt.days
    train, valid, test = data[day_no.between(8, 21)], data[day_no.between(22, 24)], data[day_no.between(25, 27)]
    params = dict(
        objective="binary",
        learning_rate=0.05,
        num_leaves=31,
        min_data_in_leaf=50,
        feature_fraction=0.9,
        bagging_fraction=0.9,
        bagging_freq=1,
        lambda_l2=1.0,
        num_threads=2,
        verbose=-1,
        seed=1,
    )
    dtrain = lgb.Dataset(train[cols], train["label"])
    dvalid = lgb.Dataset(valid[cols], valid["label"])
    booster = lgb.train(params, dtrain, 500, valid_sets=[dvalid], callbacks=[lgb.early_stopping(30, verbose=False)])
    pred = booster.predict(test[cols], num_threads=2)
    model_auc = roc_auc_score(test["label"], pred)
    best_auc = roc_auc_score(test["label"], test["p_purchase_7d"])
    print(
        f"label rate train {train['label'].mean():.3f} test {test['label'].mean():.3f}; "
        f"mean truth test {test['p_purchase_7d'].mean():.3f}; rows test {len(test)}; trees {booster.best_iteration}"
    )
    print(f"test ROC-AUC model {model_auc:.4f} best {best_auc:.4f} gap {best_auc - model_auc:.4f}")
    print(
        f"test PR-AUC  model {average_precision_score(test['label'], pred):.4f} "
        f"best {average_precision_score(test['label'], test['p_purchase_7d']):.4f}"
    )
    imp = pd.Series(booster.feature_importance("gain"), index=cols).sort_values(ascending=False)
    print((imp / imp.sum()).round(3).head(12).to_string())


if __name__ == "__main__":
    main()

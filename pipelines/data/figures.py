"""Figures of the simulated world for docs/data.md: funnel, volumes, hours, follow degrees, fraud over time.

``python -m pipelines.data.figures docs/figures`` (or ``make figures``) redraws them from the default config;
each figure is drawn from the simulator's own output, never from hand-entered numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipelines.data import simulator
from pipelines.data.simulator import SimulationConfig

FUNNEL = ("view", "cart", "purchase")


def _days(config: SimulationConfig, n_days: int) -> list[dt.date]:
    return [config.start + dt.timedelta(days=i) for i in range(n_days)]


def event_counts(config: SimulationConfig, n_days: int) -> pd.DataFrame:
    """Events per day and type (rows: days, columns: event types)."""
    rows = {day: simulator.simulate_day(config, day)["event_type"].value_counts() for day in _days(config, n_days)}
    return pd.DataFrame(rows).T.fillna(0).astype(int).sort_index()


def funnel_figure(counts: pd.DataFrame) -> Figure:
    """Views -> carts -> purchases over the whole window, with the step conversion rates."""
    totals = [int(counts[step].sum()) for step in FUNNEL]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    bars = ax.bar(FUNNEL, totals, color=["#4c72b0", "#dd8452", "#55a868"])
    ax.set_yscale("log")
    ax.set_ylabel("events (log scale)")
    ax.set_title(f"Funnel over {len(counts)} days")
    for i, (bar, total) in enumerate(zip(bars, totals, strict=True)):
        label = f"{total:,}" if i == 0 else f"{total:,}\n{total / totals[i - 1]:.1%} of {FUNNEL[i - 1]}s"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, total), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(top=max(totals) * 8)
    fig.tight_layout()
    return fig


def volumes_figure(counts: pd.DataFrame) -> Figure:
    """Events per day by type; weekends are shaded (weekly seasonality of sessions and purchases)."""
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    days = pd.to_datetime(counts.index, cache=False)
    for column in counts.columns:
        ax.plot(days, counts[column], label=column, marker=".", linewidth=1)
    for day in days[days.weekday >= 5]:
        ax.axvspan(day - pd.Timedelta(hours=12), day + pd.Timedelta(hours=12), color="0.92", zorder=0)
    ax.set_yscale("log")
    ax.set_ylabel("events per day (log scale)")
    ax.set_title("Daily volumes by event type (weekends shaded)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def hourly_figure(config: SimulationConfig, days: list[dt.date]) -> Figure:
    """Share of events per UTC hour over ``days`` against the configured session-start profile."""
    hours = pd.concat([simulator.simulate_day(config, day)["event_time"].dt.hour for day in days])
    share = hours.value_counts(normalize=True).reindex(range(24), fill_value=0.0)
    profile = np.asarray(config.activity_by_hour) / np.sum(config.activity_by_hour)
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    ax.bar(share.index, share.to_numpy(), color="#4c72b0", label="events")
    ax.step(np.arange(24), profile, where="mid", color="#c44e52", label="activity_by_hour (session starts)")
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("share")
    ax.set_title(f"Daily seasonality over {len(days)} days")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def degree_figure(config: SimulationConfig, day: dt.date) -> Figure:
    """Complementary CDF of followers (in-degree) and followees (out-degree) on log-log axes."""
    follows = simulator.follows_snapshot(config, day)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for column, label in (("followee_id", "followers (in-degree)"), ("follower_id", "following (out-degree)")):
        degree = np.sort(follows[column].value_counts().to_numpy())
        ccdf = 1.0 - np.arange(len(degree)) / len(degree)
        ax.loglog(degree, ccdf, marker=".", linestyle="none", markersize=3, label=label)
    ax.set_xlabel("degree")
    ax.set_ylabel("share of users with degree >= x")
    ax.set_title(f"Follow graph on {day} ({len(follows):,} edges)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fraud_figure(orders: pd.DataFrame, labels: pd.DataFrame, truth: pd.DataFrame) -> Figure:
    """Daily fraud rate of orders (realised labels and the true expected rate) and how late chargebacks arrive."""
    merged = orders[["order_id", "purchase_time"]].merge(labels[["order_id", "is_fraud", "label_time"]], on="order_id")
    merged = merged.merge(truth[["order_id", "p_fraud"]], on="order_id")
    merged["day"] = merged["purchase_time"].dt.floor("D")
    daily = merged.groupby("day").agg(orders=("order_id", "size"), fraud=("is_fraud", "mean"), p=("p_fraud", "mean"))
    frauds = merged[merged["is_fraud"] == 1]
    delay = (frauds["label_time"] - frauds["purchase_time"]).dt.total_seconds() / 86400
    fig = Figure(figsize=(9, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    left.plot(daily.index, daily["fraud"], marker=".", color="#c44e52", label="realised (labels)")
    left.plot(daily.index, daily["p"], color="0.3", linestyle="--", label="expected (mean true p_fraud)")
    left.set_ylabel("fraud rate of the day's orders")
    left.set_title(f"Fraud by purchase day ({len(merged):,} orders)")
    left.legend(fontsize=8)
    left.tick_params(axis="x", labelrotation=30)
    right.hist(delay, bins=30, color="#8172b2")
    right.set_xlabel("days from purchase to chargeback")
    right.set_title("Label delay of fraud")
    fig.tight_layout()
    return fig


def fraud_frames(config: SimulationConfig, n_days: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Orders of the window, every label that arrives for them, and their true fraud probabilities."""
    from pipelines.data import orders as simulated

    days = _days(config, n_days)
    orders = pd.concat([simulated.simulate_orders(config, day) for day in days], ignore_index=True)
    labels = pd.concat([simulated.order_labels(config, day) for day in _days(config, n_days + 45)], ignore_index=True)
    truth = pd.concat([simulated.fraud_truth(config, day) for day in days], ignore_index=True)
    return orders, labels[labels["order_id"].isin(orders["order_id"])], truth


def write_figures(out: Path, config: SimulationConfig | None = None, n_days: int = 35) -> list[Path]:
    """Draw every figure of docs/data.md into ``out`` as PNG; returns the files written."""
    config = config or SimulationConfig()
    out.mkdir(parents=True, exist_ok=True)
    counts = event_counts(config, n_days)
    figures = {
        "funnel.png": funnel_figure(counts),
        "daily_volumes.png": volumes_figure(counts),
        "hour_of_day.png": hourly_figure(config, _days(config, min(n_days, 7))),
        "follow_degrees.png": degree_figure(config, config.start + dt.timedelta(days=n_days - 1)),
    }
    figures["fraud_rate.png"] = fraud_figure(*fraud_frames(config, n_days))
    written = []
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/figures"))
    parser.add_argument("--days", type=int, default=35)
    args = parser.parse_args()
    for path in write_figures(args.out, n_days=args.days):
        print(path)


if __name__ == "__main__":
    main()

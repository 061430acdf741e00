"""Ingest: real files land as daily partitions; reruns are byte-identical; the REES46 sample runs through
validation, features and the online store."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.data import schemas
from pipelines.data.adapters import MappingError
from pipelines.data.derived_dimensions import derive_users_and_follows
from pipelines.data.ingest import ingest
from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings
from tests.conftest import SHARED_DATA

MAPPINGS = PROJECT_ROOT / "mappings"
DATA = Path(__file__).parent / "data"
REES46 = SHARED_DATA / "rees46_sample.csv"
OCT1 = dt.date(2019, 10, 1)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_rees46_sample_lands_as_one_day_with_its_drops_reported(settings: Settings, lake: Lake):
    report = ingest(settings, REES46, MAPPINGS / "rees46.yaml", "events")

    assert report.days == {"events": {OCT1: 17_429}}
    assert report.rows_read == 17_435 and report.rows_written == 17_429
    assert report.drops[-1].line == 17_436 and "truncated last line" in report.drops[-1].reason
    assert lake.partitions("events") == [OCT1]
    day = lake.read("events", OCT1)
    assert list(day.columns) == schemas.EVENTS.names and len(day) == 17_429
    assert day["event_time"].is_monotonic_increasing
    lineage = lake.read_json("ingest/events/ds=2019-10-01/lineage.json")
    assert lineage["rows"] == 17_429 and len(lineage["sha256"]) == 64


def test_reingesting_the_same_file_replaces_the_day_with_identical_bytes(settings: Settings, lake: Lake):
    first = ingest(settings, REES46, MAPPINGS / "rees46.yaml", "events")
    before = _digest(first.uris["events"][OCT1])

    again = ingest(settings, REES46, MAPPINGS / "rees46.yaml", "events")

    assert again.replaced == {"events": [OCT1]}
    assert _digest(again.uris["events"][OCT1]) == before
    assert len(lake.read("events", OCT1)) == 17_429, "a rerun replaces the day, it never appends"


def test_days_the_file_covers_are_replaced_and_other_days_are_left_alone(settings: Settings, lake: Lake):
    ingest(settings, DATA / "taobao_style.csv", MAPPINGS / "taobao_style.yaml", "events")
    day25, day26 = dt.date(2017, 11, 25), dt.date(2017, 11, 26)
    untouched = _digest(lake.partition_uri("events", day25))
    only_26 = [
        line for line in (DATA / "taobao_style.csv").read_text().splitlines() if int(line.split(",")[-1]) >= 1511654400
    ]
    (settings.home / "day26.csv").write_text("\n".join(only_26[:3]) + "\n")

    report = ingest(settings, settings.home / "day26.csv", MAPPINGS / "taobao_style.yaml", "events")

    assert report.days == {"events": {day26: 3}} and report.replaced == {"events": [day26]}
    assert len(lake.read("events", day26)) == 3
    assert _digest(lake.partition_uri("events", day25)) == untouched


def test_fraud_orders_land_with_their_labels_in_their_own_table(settings: Settings, lake: Lake):
    report = ingest(settings, DATA / "fraud_ecommerce.csv", MAPPINGS / "fraud_ecommerce.yaml", "orders")

    assert sum(report.days["orders"].values()) == 8
    assert sum(report.days["order_labels"].values()) == 8
    assert min(report.days["orders"]) == dt.date(2015, 3, 1)
    assert min(report.days["order_labels"]) == dt.date(2015, 3, 31), "labels land on the day they arrive"
    orders = lake.read_range("orders", "2015-03-01", "2015-03-05")
    labels = lake.read_range("order_labels", "2015-03-31", "2015-04-04")
    assert set(orders["order_id"]) == set(labels["order_id"])
    assert "is_fraud" not in orders.columns


def test_a_mapping_for_another_table_is_refused_before_reading(settings: Settings, lake: Lake):
    with pytest.raises(MappingError, match="fills table.s. events, not orders"):
        ingest(settings, REES46, MAPPINGS / "rees46.yaml", "orders")
    assert lake.partitions("events") == []


def test_progress_is_reported_for_reading_mapping_and_writing(settings: Settings):
    seen: list[tuple[str, int, int]] = []
    ingest(settings, REES46, MAPPINGS / "rees46.yaml", "events", on_progress=lambda *a: seen.append(a))

    stages = [s for s, _, _ in seen]
    assert stages.index("read") < stages.index("map") < stages.index("write")
    assert seen[-1] == ("write", 1, 1)
    reads = [(done, total) for s, done, total in seen if s == "read"]
    assert reads[-1][0] == reads[-1][1] and len(reads) > 1


def test_cli_prints_days_and_rows_and_fails_cleanly(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    from pipelines.cli import app

    monkeypatch.setenv("STOREFRONT_HOME", str(settings.home))
    runner = CliRunner()
    ok = runner.invoke(app, ["ingest", "--source", str(REES46), "--mapping", str(MAPPINGS / "rees46.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "events: 17,429 rows over 1 day (2019-10-01 .. 2019-10-01) from 17,435 source rows (6 dropped)" in (
        " ".join(ok.output.split())
    )
    assert "line 17436" in ok.output and "truncated" in ok.output

    bad = settings.home / "bad.csv"
    bad.write_text(REES46.read_text().splitlines()[0] + "\nyesterday,view,1,2,,b,1.0,7,s\n")
    failed = runner.invoke(app, ["ingest", "--source", str(bad), "--mapping", str(MAPPINGS / "rees46.yaml")])
    assert failed.exit_code == 1
    assert "bad.csv" in failed.output and "line 2" in failed.output and "event_time" in failed.output
    assert "nothing was written" in failed.output


def test_rees46_sample_runs_through_validation_features_and_the_online_store(settings: Settings, lake: Lake):
    from pipelines.features.store import materialize_day, online_features
    from pipelines.features.user_features import build_user_features, write_user_features
    from pipelines.validation.quarantine import validate_partition

    ingest(settings, REES46, MAPPINGS / "rees46.yaml", "events")
    report = validate_partition(lake, "events", OCT1, settings.expectations_dir)
    assert report.success
    failed = {(c.expectation, c.column) for c in report.checks if not c.success}
    assert failed <= {("expect_column_values_to_not_be_null", "merchant_id")}, failed  # warning: one store

    derive_users_and_follows(lake, [OCT1])
    features = build_user_features(lake, OCT1)
    events = lake.read("events", OCT1)
    assert len(features) == events["user_id"].nunique()
    write_user_features(lake, OCT1, features)
    assert materialize_day(settings, OCT1) == len(features)

    buyer = int(events.loc[events["event_type"] == "purchase", "user_id"].iloc[0])
    online = online_features(settings, "purchase_intent", [buyer])
    assert online.loc[0, "purchases_7d"] >= 1
    assert online.loc[0, "views_1d"] == ((events["user_id"] == buyer) & (events["event_type"] == "view")).sum()


def test_a_log_of_another_vocabulary_runs_through_ingest_and_validation(settings: Settings, lake: Lake):
    from pipelines.validation.quarantine import validate_partition

    report = ingest(settings, DATA / "taobao_style.csv", MAPPINGS / "taobao_style.yaml", "events")
    assert report.days == {"events": {dt.date(2017, 11, 25): 15, dt.date(2017, 11, 26): 15}}
    day = lake.read("events", dt.date(2017, 11, 25))
    assert set(day["event_type"]) == {"view", "wishlist", "cart", "purchase"}

    # The log has no prices: reported as a warning (price features read 0), the day stays in the lake.
    report = validate_partition(lake, "events", dt.date(2017, 11, 25), settings.expectations_dir)
    assert report.success
    warned = {(c.expectation, c.column) for c in report.checks if not c.success}
    assert ("expect_column_values_to_not_be_null", "price") in warned
    assert all(c.severity == "warning" for c in report.checks if not c.success)


def test_mlctl_ingest_derives_users_so_the_features_run(settings: Settings, lake: Lake, monkeypatch) -> None:
    from pipelines.cli import app
    from pipelines.features.user_features import build_user_features

    for key, value in settings.environment().items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--source",
            str(DATA / "taobao_style.csv"),
            "--mapping",
            str(MAPPINGS / "taobao_style.yaml"),
            "--derive-users",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "users derived from the events" in result.output
    first, second = dt.date(2017, 11, 25), dt.date(2017, 11, 26)
    users = {day: set(lake.read("users", day)["user_id"]) for day in (first, second)}
    assert users[first] <= users[second]  # a snapshot keeps everyone seen before
    assert users[second] >= set(lake.read("events", second)["user_id"])
    features = build_user_features(lake, second)
    assert set(features["user_id"]) == users[second]
    assert (features["avg_price_viewed_30d"] == 0).all() and (features["followee_count"] == 0).all()


def test_the_daily_chain_runs_on_an_ingested_log(tmp_path) -> None:
    """With data_source=ingested the daily steps take the landed days as they are (no simulator)."""
    from pipelines.cli import app
    from pipelines.features.store import online_features
    from pipelines.flows import daily_features
    from pipelines.settings import get_settings
    from tests.conftest import behaviour_only_models

    settings = get_settings(
        home=tmp_path / ".storefront", data_source="ingested", num_threads=1, models_dir=behaviour_only_models(tmp_path)
    )
    lake = Lake(settings)
    missing_day = "2017-11-24"
    with pytest.raises(daily_features.MissingIngestedDay, match="mlctl ingest"):
        daily_features.extract(settings, missing_day)

    runner = CliRunner()
    env = settings.environment()
    args = ["ingest", "--source", str(DATA / "taobao_style.csv"), "--mapping", str(MAPPINGS / "taobao_style.yaml")]
    assert runner.invoke(app, [*args, "--derive-users"], env=env).exit_code == 0
    before = lake.read("events", dt.date(2017, 11, 26))
    for ds in ("2017-11-25", "2017-11-26"):
        for step in (daily_features.extract, daily_features.validate, daily_features.features):
            step(settings, ds)
    assert daily_features.materialize(settings, "2017-11-26")["rows"] > 0
    pd.testing.assert_frame_equal(lake.read("events", dt.date(2017, 11, 26)), before)  # left as landed
    users = sorted(before["user_id"].unique().tolist())[:2]
    online = online_features(settings, "purchase_intent", users)
    assert (online["views_7d"] + online["purchases_7d"] + online["carts_7d"] > 0).all()


def _taobao_log(path: Path, rows: list[tuple[int, str, dt.datetime]]) -> Path:
    path.write_text(
        "".join(f"{user},{10 + i},20,{kind},{int(t.timestamp())}\n" for i, (user, kind, t) in enumerate(rows))
    )
    return path


def test_derive_users_keeps_a_user_whose_first_event_is_followed_by_a_gap(settings: Settings, lake: Lake) -> None:
    """issue 10 item 9a: user 1 is seen on the 25th only, the log has no events on the 26th; the 27th's snapshot
    (and the gap day's) still holds user 1."""
    log = _taobao_log(
        settings.home / "gap.csv",
        [
            (1, "pv", dt.datetime(2017, 11, 25, 9, tzinfo=dt.UTC)),
            (2, "pv", dt.datetime(2017, 11, 27, 9, tzinfo=dt.UTC)),
        ],
    )

    report = ingest(settings, log, MAPPINGS / "taobao_style.yaml", "events", derive_users=True)

    gap, last = dt.date(2017, 11, 26), dt.date(2017, 11, 27)
    assert lake.partitions("events") == [dt.date(2017, 11, 25), last]
    assert report.derived_users == {dt.date(2017, 11, 25): 1, gap: 1, last: 2}
    assert set(lake.read("users", gap)["user_id"]) == {1}, "the gap day gets the snapshot carried forward"
    assert set(lake.read("users", last)["user_id"]) == {1, 2}
    assert lake.partitions("follows") == [dt.date(2017, 11, 25), gap, last]
    assert lake.read_json("ingest/span.json")["tables"]["users"] == {
        "first": "2017-11-25",
        "last": "2017-11-27",
        "days": 3,
    }


def test_a_later_file_derives_from_the_snapshot_before_it(settings: Settings, lake: Lake) -> None:
    """issue 10 item 9a: a second file after a gap of days starts from the latest snapshot, keeping its users."""
    first = _taobao_log(settings.home / "a.csv", [(1, "pv", dt.datetime(2017, 11, 25, 9, tzinfo=dt.UTC))])
    ingest(settings, first, MAPPINGS / "taobao_style.yaml", "events", derive_users=True)
    second = _taobao_log(settings.home / "b.csv", [(2, "pv", dt.datetime(2017, 11, 28, 9, tzinfo=dt.UTC))])

    report = ingest(settings, second, MAPPINGS / "taobao_style.yaml", "events", derive_users=True)

    assert sorted(report.derived_users) == [dt.date(2017, 11, d) for d in (26, 27, 28)]
    assert set(lake.read("users", dt.date(2017, 11, 28))["user_id"]) == {1, 2}


def test_an_orders_only_source_derives_its_users_and_passes_the_orders_reference(
    settings: Settings, lake: Lake
) -> None:
    """issue 10 item 5: --table orders --derive-users writes users from the orders (signup time, sex, age of
    the file) for every day, so the orders -> users reference holds and the order chain can start."""
    from pipelines.validation.quarantine import validate_partition

    report = ingest(
        settings, DATA / "fraud_ecommerce.csv", MAPPINGS / "fraud_ecommerce.yaml", "orders", derive_users=True
    )

    days = [dt.date(2015, 3, d) for d in range(1, 6)]
    assert sorted(report.derived_users) == days and report.derived_users[days[-1]] == 8
    assert lake.partitions("users") == days and lake.partitions("follows") == days
    assert len(lake.read("follows", days[0])) == 0, "no social graph in an orders file"
    users = lake.read("users", days[-1]).set_index("user_id")
    assert users.loc[1000, "sex"] == "M" and users.loc[1000, "age"] == 52
    assert users.loc[1000, "signup_time"] == pd.Timestamp("2015-03-01 15:59:06", tz="UTC")
    for day in days:
        orders = lake.read("orders", day)
        assert set(orders["user_id"]) <= set(lake.read("users", day)["user_id"])
        checked = validate_partition(lake, "orders", day, settings.expectations_dir)
        reference = next(c for c in checked.checks if c.expectation == "expect_column_values_to_exist_in_table")
        assert reference.success and reference.observed["reference"] == f"users ds={day}"
        assert validate_partition(lake, "users", day, settings.expectations_dir).success


def test_mlctl_ingest_derives_users_for_an_orders_file(settings: Settings, lake: Lake) -> None:
    """issue 10 item 5: the command a user types for an orders-only source."""
    from pipelines.cli import app

    args = [
        "ingest",
        "--source",
        str(DATA / "fraud_ecommerce.csv"),
        "--mapping",
        str(MAPPINGS / "fraud_ecommerce.yaml"),
    ]
    result = CliRunner().invoke(app, [*args, "--table", "orders", "--derive-users"], env=settings.environment())

    assert result.exit_code == 0, result.output
    assert "users derived from the orders: 8 users by 2015-03-05" in " ".join(result.output.split())
    assert lake.partitions("users")[-1] == dt.date(2015, 3, 5)

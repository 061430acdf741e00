"""Sources in their own time: a mapping's ``day_timezone`` cuts days at the source's midnight, and every day bound
of the platform (``schemas.day_start`` / ``as_of``, read with ``Lake.day_zone``) agrees with the partitions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.data.adapters import MappingError
from pipelines.data.ingest import ingest
from pipelines.data.landed import SPAN_KEY
from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings

MAPPINGS = PROJECT_ROOT / "mappings"
SHANGHAI = "Asia/Shanghai"
NOV26, NOV27 = dt.date(2017, 11, 26), dt.date(2017, 11, 27)


def _unix(*parts: int) -> int:
    return int(dt.datetime(*parts, tzinfo=dt.UTC).timestamp())


# A log recorded in UTC+8: three events of the local day 2017-11-26, two of them before UTC midnight is over in
# Europe (23:30 UTC on the 25th is 07:30 on the 26th in Shanghai), and one just after local midnight.
LOG = [
    (1, "pv", _unix(2017, 11, 25, 23, 30)),  # 2017-11-26 07:30 +08
    (1, "cart", _unix(2017, 11, 26, 0, 30)),  # 2017-11-26 08:30 +08
    (2, "pv", _unix(2017, 11, 26, 15, 30)),  # 2017-11-26 23:30 +08
    (2, "buy", _unix(2017, 11, 26, 16, 30)),  # 2017-11-27 00:30 +08
]


def _files(tmp: Path, zone: str | None = SHANGHAI) -> tuple[Path, Path]:
    log = tmp / "log.csv"
    log.write_text("".join(f"{u},{10 + i},20,{kind},{ts}\n" for i, (u, kind, ts) in enumerate(LOG)))
    mapping = tmp / "shanghai.yaml"
    text = (MAPPINGS / "taobao_style.yaml").read_text()
    mapping.write_text(text + (f"day_timezone: {zone}\n" if zone else ""))
    return log, mapping


def test_day_bounds_default_to_utc_bit_for_bit() -> None:
    """issue 10 item 9b: without a zone, as_of is unchanged (00:00 UTC of the next day, tzinfo dt.UTC)."""
    assert schemas.as_of(NOV26) == dt.datetime(2017, 11, 27, tzinfo=dt.UTC)
    assert schemas.as_of(NOV26).tzinfo is dt.UTC
    assert schemas.day_start(NOV26) == dt.datetime(2017, 11, 26, tzinfo=dt.UTC)


def test_day_bounds_in_a_zone_are_local_midnights() -> None:
    """issue 10 item 9b: day D in Shanghai is [D-1 16:00 UTC, D 16:00 UTC)."""
    assert schemas.day_start(NOV26, SHANGHAI) == dt.datetime(2017, 11, 25, 16, tzinfo=dt.UTC)
    assert schemas.as_of(NOV26, SHANGHAI) == dt.datetime(2017, 11, 26, 16, tzinfo=dt.UTC)
    # A DST zone: the day of the change is 23 hours long.
    spring = dt.date(2024, 3, 31)
    berlin = "Europe/Berlin"
    assert schemas.as_of(spring, berlin) - schemas.day_start(spring, berlin) == dt.timedelta(hours=23)


def test_a_log_recorded_in_utc_plus_8_lands_one_partition_per_local_day(
    settings: Settings, lake: Lake, tmp_path: Path
) -> None:
    """issue 10 item 9b: activity straddling UTC midnight stays in its local day, and the lake says its zone."""
    log, mapping = _files(tmp_path)

    report = ingest(settings, log, mapping, "events", derive_users=True)

    assert report.days == {"events": {NOV26: 3, NOV27: 1}}
    assert lake.read_json(SPAN_KEY)["day_timezone"] == SHANGHAI
    assert Lake(settings).day_zone == SHANGHAI
    times = lake.read("events", NOV26)["event_time"]
    assert times.min() >= schemas.day_start(NOV26, SHANGHAI) and times.max() < schemas.as_of(NOV26, SHANGHAI)
    assert set(lake.read("users", NOV26)["user_id"]) == {1, 2}


def test_the_local_days_validate_with_local_bounds(settings: Settings, lake: Lake, tmp_path: Path) -> None:
    """issue 10 item 9b: the events contract bounds each partition by the lake's zone, so a day with activity
    before UTC midnight is not rejected as 'outside the day'."""
    from pipelines.validation.quarantine import validate_partition

    log, mapping = _files(tmp_path)
    ingest(settings, log, mapping, "events", derive_users=True)

    for day in (NOV26, NOV27):
        report = validate_partition(lake, "events", day, settings.expectations_dir)
        critical = [(c.expectation, c.column) for c in report.checks if not c.success and c.severity == "critical"]
        assert report.success, critical


def test_a_file_cut_in_another_zone_is_refused_and_changes_nothing(
    settings: Settings, lake: Lake, tmp_path: Path
) -> None:
    """issue 10 item 9b: one lake, one day zone; mixing would shift every day bound the two files share."""
    log, mapping = _files(tmp_path)
    ingest(settings, log, mapping, "events")
    before = lake.read_json(SPAN_KEY)

    with pytest.raises(MappingError, match="cut in Asia/Shanghai .* cuts them in UTC"):
        ingest(settings, log, MAPPINGS / "taobao_style.yaml", "events")

    assert lake.read_json(SPAN_KEY) == before
    assert lake.partitions("events") == [NOV26, NOV27]


def test_an_unknown_day_zone_is_refused(settings: Settings, tmp_path: Path) -> None:
    """issue 10 item 9b: the zone is checked like timezone: (an IANA name)."""
    log, mapping = _files(tmp_path, zone="China/Beijing")

    with pytest.raises(MappingError, match="key 'day_timezone'.*IANA"):
        ingest(settings, log, mapping, "events")


def test_user_features_of_a_local_day_are_stamped_at_its_local_end(
    settings: Settings, lake: Lake, tmp_path: Path
) -> None:
    """issue 10 item 9b: features of day D are as of the end of D in the source's zone (16:00 UTC in Shanghai),
    so a point-in-time join never hands them to a request made during the rest of the UTC day."""
    from pipelines.features.user_features import TIMESTAMP_COLUMN, build_user_features, write_user_features

    log, mapping = _files(tmp_path)
    ingest(settings, log, mapping, "events", derive_users=True)

    features = build_user_features(lake, NOV26)

    assert set(features[TIMESTAMP_COLUMN]) == {pd.Timestamp("2017-11-26 16:00", tz="UTC")}
    by_user = features.set_index("user_id")
    assert by_user.loc[1, "views_1d"] == 1 and by_user.loc[2, "purchases_7d"] == 0, "the 27th's buy is not in"
    # User 2's last event of the day, 23:30 Shanghai time, is half an hour before the as-of time.
    assert by_user.loc[2, "days_since_last_event"] == pytest.approx(0.5 / 24)
    write_user_features(lake, NOV26, features)
    assert lake.exists("features/user_behavior", NOV26)


def test_a_local_day_materializes_and_serves_in_a_zone_behind_utc(settings: Settings, lake: Lake, tmp_path: Path):
    """issue 10 item 9b: in New York the end of day D is D+1 05:00 UTC; the online store still gets the day."""
    from pipelines.features.store import materialize_day, online_features
    from pipelines.features.user_features import build_user_features, write_user_features

    log, mapping = _files(tmp_path, zone="America/New_York")
    report = ingest(settings, log, mapping, "events", derive_users=True)
    day = max(report.days["events"])
    write_user_features(lake, day, build_user_features(lake, day))

    assert materialize_day(settings, day) == len(lake.read("features/user_behavior", day))
    online = online_features(settings, "purchase_intent", [2])
    assert online.loc[0, "views_7d"] + online.loc[0, "purchases_7d"] >= 1


def test_purchase_labels_count_windows_from_the_local_end_of_day() -> None:
    """issue 10 item 9b: a buy at 01:00 Shanghai time on the 27th is inside the 1-day window of the 26th."""
    from pipelines.data.labels import purchase_labels

    buy = pd.DataFrame(
        {"user_id": [2], "event_type": ["purchase"], "event_time": [pd.Timestamp("2017-11-26 17:00", tz="UTC")]}
    )

    labels = purchase_labels(buy, [dt.date(2017, 11, 25), NOV26], [2], window_days=1, zone=SHANGHAI)

    assert labels["label"].tolist() == [0, 1]
    assert labels["as_of"].tolist() == [
        pd.Timestamp(schemas.as_of(d, SHANGHAI)) for d in (dt.date(2017, 11, 25), NOV26)
    ]
    in_utc = purchase_labels(buy, [dt.date(2017, 11, 25), NOV26], [2], window_days=1)
    assert in_utc["label"].tolist() == [1, 0], "in UTC the buy is on the 26th: the window of the 25th, as before"

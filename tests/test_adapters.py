"""Adapters: the REES46 sample, a headerless pv/cart/fav/buy log and a fraud orders CSV map onto canonical tables."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data import schemas
from pipelines.data.adapters import MappingError, adapt, load_mapping
from pipelines.data.adapters.transform import LINE
from pipelines.settings import PROJECT_ROOT
from tests.conftest import SHARED_DATA

MAPPINGS = PROJECT_ROOT / "mappings"
DATA = Path(__file__).parent / "data"
REES46 = SHARED_DATA / "rees46_sample.csv"


def test_every_shipped_mapping_loads():
    for path in sorted(MAPPINGS.glob("*.yaml")):
        assert load_mapping(path).name == path.stem


def test_rees46_sample_maps_onto_events_and_reports_its_cut_last_line():
    adapted = adapt(REES46, MAPPINGS / "rees46.yaml")

    events = adapted.tables["events"]
    assert list(events.columns) == [*schemas.EVENTS.names, LINE]
    assert adapted.rows_read == 17_435
    truncated = [d for d in adapted.drops if d.reason.startswith("truncated last line")]
    assert [d.line for d in truncated] == [17_436], "the cut-off last line is reported and dropped"
    duplicates = [d for d in adapted.drops if d.reason.startswith("exact duplicate")]
    assert len(duplicates) == 5
    assert len(events) == 17_435 - 6
    assert 17_436 not in set(events[LINE])

    assert events["event_time"].dt.tz is not None
    assert events["event_time"].min() == pd.Timestamp("2019-10-01 00:00:00", tz="UTC")
    assert events["event_time"].max() < pd.Timestamp("2019-10-02", tz="UTC")
    assert set(events["event_type"]) <= set(schemas.EVENT_TYPES)
    assert events["event_id"].is_unique
    assert events["merchant_id"].isna().all()
    first = events.loc[events[LINE] == 2].iloc[0]  # 2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,...
    assert first["category_id"] == 2103807459595387724, "19-digit ids are read exactly, not through float"
    assert first["user_id"] == 541312140 and first["price"] == 35.79 and first["brand"] == "shiseido"
    # Pyarrow accepts the frame under the canonical schema.
    pa.Table.from_pandas(events.drop(columns=[LINE]), schema=schemas.EVENTS, preserve_index=False)


def test_rees46_event_ids_are_stable_across_runs():
    one = adapt(REES46, MAPPINGS / "rees46.yaml").tables["events"]["event_id"]
    two = adapt(REES46, MAPPINGS / "rees46.yaml").tables["events"]["event_id"]
    pd.testing.assert_series_equal(one, two)


def test_headerless_log_with_its_own_vocabulary_and_unix_seconds():
    adapted = adapt(DATA / "taobao_style.csv", MAPPINGS / "taobao_style.yaml")
    events = adapted.tables["events"]

    assert len(events) == 30 and not adapted.drops
    assert set(events["event_type"]) == {"view", "wishlist", "cart", "purchase"}
    assert events["event_time"].iloc[0] == pd.Timestamp("2017-11-25 01:00:00", tz="UTC")  # 1511571600
    assert sorted(events["event_time"].dt.date.astype(str).unique()) == ["2017-11-25", "2017-11-26"]
    assert events["price"].isna().all() and events["brand"].isna().all()

    # Sessions derived from 30-minute gaps: user 1's day starts with three events 2 minutes apart, then a view
    # more than an hour later opens a second session.
    user1 = events[(events["user_id"] == 1) & (events["event_time"].dt.day == 25)].sort_values("event_time")
    assert user1["session_id"].nunique() == 2
    assert user1["session_id"].iloc[0] == user1["session_id"].iloc[2] != user1["session_id"].iloc[3]


def test_fraud_orders_split_the_label_into_its_own_table():
    adapted = adapt(DATA / "fraud_ecommerce.csv", MAPPINGS / "fraud_ecommerce.yaml")
    orders, labels = adapted.tables["orders"], adapted.tables["order_labels"]

    assert len(orders) == len(labels) == 8
    assert "is_fraud" not in orders.columns and "class" not in orders.columns
    assert set(orders["order_id"]) == set(labels["order_id"]), "both tables derive the same order ids"
    assert labels["is_fraud"].sum() == 2
    joined = orders.merge(labels, on="order_id")
    assert (joined["label_time"] - joined["purchase_time"] == pd.Timedelta(days=30)).all()
    assert (orders["signup_time"] <= orders["purchase_time"]).all()


def test_the_same_log_as_parquet_needs_only_another_mapping(tmp_path: Path):
    csv_events = adapt(DATA / "taobao_style.csv", MAPPINGS / "taobao_style.yaml").tables["events"]
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    raw = pd.read_csv(DATA / "taobao_style.csv", header=None, names=names)
    pq.write_table(pa.Table.from_pandas(raw, preserve_index=False), tmp_path / "log.parquet")
    text = (MAPPINGS / "taobao_style.yaml").read_text()
    text = text.replace("format: csv", "format: parquet").replace("header: false\n", "")
    text = text.replace("column_names: [user_id, item_id, category_id, behavior_type, timestamp]\n", "")
    (tmp_path / "log_parquet.yaml").write_text(text)

    parquet_events = adapt(tmp_path / "log.parquet", tmp_path / "log_parquet.yaml").tables["events"]

    pd.testing.assert_frame_equal(parquet_events.drop(columns=[LINE]), csv_events.drop(columns=[LINE]))


@pytest.mark.parametrize(
    ("variant", "note"),
    [
        ("bom", "byte order mark"),
        ("gzip", "gzip"),
        ("crlf", None),
        ("no_final_newline", "no line terminator"),
    ],
)
def test_tolerated_variants_give_the_same_events(tmp_path: Path, variant: str, note: str | None):
    text = "\n".join(REES46.read_text().splitlines()[:50]) + "\n"
    data = {
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "gzip": gzip.compress(text.encode(), mtime=0),
        "crlf": text.replace("\n", "\r\n").encode(),
        "no_final_newline": text.rstrip("\n").encode(),
    }[variant]
    (tmp_path / "plain.csv").write_text(text)
    (tmp_path / "variant.csv").write_bytes(data)  # a .csv name even when gzip'ed: the bytes decide

    plain = adapt(tmp_path / "plain.csv", MAPPINGS / "rees46.yaml")
    other = adapt(tmp_path / "variant.csv", MAPPINGS / "rees46.yaml")

    pd.testing.assert_frame_equal(other.tables["events"], plain.tables["events"])
    assert not other.drops or other.drops == plain.drops
    if note:
        assert any(note in n for n in other.notes), other.notes


def test_offsets_and_zones_land_on_the_utc_day(tmp_path: Path):
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
    rows = [
        "2019-10-01 01:30:00+02:00,view,1,2,,b,1.0,7,s1",  # 2019-09-30 23:30 UTC
        "2019-10-01T00:30:00Z,view,1,2,,b,1.0,7,s1",
        "2019-10-01 00:45:00 UTC,cart,1,2,,b,1.0,7,s1",
    ]
    (tmp_path / "tz.csv").write_text(header + "\n".join(rows) + "\n")

    events = adapt(tmp_path / "tz.csv", MAPPINGS / "rees46.yaml").tables["events"]

    assert events["event_time"].astype(str).tolist() == [
        "2019-09-30 23:30:00+00:00",
        "2019-10-01 00:30:00+00:00",
        "2019-10-01 00:45:00+00:00",
    ]


def test_naive_times_are_read_in_the_mappings_timezone(tmp_path: Path):
    (tmp_path / "log.csv").write_text("1,10,20,pv,2017-11-25 08:00:00\n")
    text = (MAPPINGS / "taobao_style.yaml").read_text().replace("timestamp: unix_s", "timestamp: iso")
    (tmp_path / "m.yaml").write_text(text + "timezone: Asia/Shanghai\n")

    events = adapt(tmp_path / "log.csv", tmp_path / "m.yaml").tables["events"]

    assert events["event_time"].iloc[0] == pd.Timestamp("2017-11-25 00:00:00", tz="UTC")


def test_a_mapping_error_names_the_file_the_key_and_the_expected_form(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text((MAPPINGS / "rees46.yaml").read_text().replace("timestamp: iso", "timestamp: sometimes"))

    with pytest.raises(MappingError) as err:
        load_mapping(path)

    message = str(err.value)
    assert str(path) in message
    assert "tables.events.event_time.timestamp" in message
    assert "unix_s" in message and "strftime" in message

"""docs/data.md, "Your own data, step by step", runs as written (issue 10, "docs/data.md as a script").

Every bash block of the section runs as it stands in a stand-in for a fresh clone, each part in a bash of its own
with its commands in order, and no environment variable the page does not set (tests/walkthrough_support.py).
The files the page calls "your own" are written first: a behaviour log in the REES46 layout and an orders file in
the "Fraud ecommerce" layout (tests/samples.py); the REES46 sample is the shared one. Beyond each command's exit
code and the outputs the page shows, the tests check what a user would look at afterwards: the champions in the
registry, a prediction and a ranking over HTTP.
"""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.registry.registry import get_champion
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from tests.samples import FraudFileConfig, write_fraud_orders, write_rees46_log
from tests.walkthrough_support import Command, Part, PartRun, check_part, fresh_clone, parse_walkthrough, run_part

# Every command runs in a child process (mlctl, Airflow in-process there): `make test` runs this file in a pytest
# process of its own, beside the in-process Airflow tests.
pytestmark = pytest.mark.walkthrough

DOC = PROJECT_ROOT / "docs" / "data.md"
SECTION = "Your own data, step by step"
PART_TIMEOUT = 1500.0  # seconds; the tests that run the parts raise pytest's own timeout to 1800
# What the page says the files hold (part 2 and part 3 of the walkthrough).
EVENTS_START, EVENTS_DAYS, EVENTS_USERS = dt.date(2025, 1, 1), 24, 2000
# Shoppers who act on their carts and pause after buying: the nonlinear signal a model finds beyond the
# recency-frequency baseline on 24 days (with the simulator's defaults, 11 train days tie with that baseline).
EVENTS_STORY = {"purchase_cart": 1.8, "purchase_satiation": -2.5}
ORDERS = FraudFileConfig(start=dt.date(2025, 1, 1), days=25, orders_per_day=112.0)


@pytest.fixture(scope="module")
def walkthrough() -> tuple[list[Command], list[Part]]:
    return parse_walkthrough(DOC, SECTION)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone holding the reader's own files where the page expects them."""
    root = fresh_clone(tmp_path_factory.mktemp("walkthrough"))
    write_rees46_log(root / "data" / "my_events.csv", EVENTS_START, EVENTS_DAYS, EVENTS_USERS, 5, **EVENTS_STORY)
    write_fraud_orders(root / "data" / "my_orders.csv", ORDERS)
    return root


@pytest.fixture(scope="module")
def runs(walkthrough: tuple[list[Command], list[Part]], clone: Path) -> dict[int, PartRun]:
    """Every part, run at once: each is self-contained (its own exports and STOREFRONT_HOME, as the page says),
    so running them side by side is what three readers in three shells would do, in half the time."""
    preamble, parts = walkthrough
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        started = {int(p.title.split(".")[0]): pool.submit(run_part, clone, preamble, p, PART_TIMEOUT) for p in parts}
        return {number: future.result() for number, future in started.items()}


def _checked(walkthrough: tuple[list[Command], list[Part]], runs: dict[int, PartRun], number: int) -> PartRun:
    assert number in runs, f"docs/data.md has no part '### {number}. ...' in '{SECTION}'"
    run = runs[number]
    print(f"{run.part.title}: {run.seconds:.0f} s\n{run.timings()}")  # shown with -s, or on failure
    check_part(run, len(walkthrough[0]))
    return run


def _settings(clone: Path, home: str, models: str | None) -> Settings:
    """The settings the page's commands ran with (its exports), to look at what they left behind."""
    models_dir = clone / models if models else PROJECT_ROOT / "models"
    return get_settings(home=clone / home, data_source="ingested", models_dir=models_dir)


def _json_after(output: str, key: str) -> dict:
    """The JSON document holding ``key`` among a command's printed lines (curl prints one line)."""
    for line in output.splitlines():
        if key in line and line.strip().startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON with {key!r} in:\n{output[-2000:]}")


def test_the_page_names_three_parts_and_says_what_each_source_can_train(walkthrough) -> None:
    """The walkthrough has its three parts and the plain-language table of sources and models."""
    preamble, parts = walkthrough
    assert [p.title.split(".")[0] for p in parts] == ["1", "2", "3"]
    assert any("activate" in c.text for c in preamble)
    text = DOC.read_text()
    for model in ("purchase_intent", "product_ranking", "order_fraud"):
        assert f"`{model}`" in text.split("### Before you start")[0]
    # Every variable the commands set is a documented setting (nothing else reaches them: walkthrough_support).
    exported = {c.text.split()[1].split("=")[0] for p in parts for c in p.commands if c.text.startswith("export ")}
    assert exported == {"STOREFRONT_HOME", "STOREFRONT_DATA_SOURCE", "STOREFRONT_MODELS_DIR", "STOREFRONT_SERVING_PORT"}
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert all(name in readme for name in exported), "README's Data section names the settings the walkthrough uses"


@pytest.mark.timeout(1800)
def test_part1_the_rees46_sample_lands_and_check_says_one_day_is_too_short(walkthrough, runs) -> None:
    """issue 10 items 1-3: ingest, a backfill that really runs the landed day (not an empty success), and a
    check that names what the spec needs before any training run fails on it."""
    run = _checked(walkthrough, runs, 1)
    backfill = run.output_of("mlctl backfill")
    assert "success" in backfill and "order" in backfill, backfill  # order features skipped: no orders table
    assert "cannot train" in run.output_of("mlctl check purchase_intent")


@pytest.mark.timeout(1800)
def test_part2_a_behaviour_log_trains_and_serves_purchase_intent_and_product_ranking(walkthrough, runs, clone) -> None:
    """issue 10 items 2-4: a behaviour-only log (no orders) reaches served champions of both behaviour models,
    with windows shrunk as `mlctl check` suggests."""
    run = _checked(walkthrough, runs, 2)
    settings = _settings(clone, ".storefront-my-events", "my-models")
    for model in ("purchase_intent", "product_ranking"):
        champion = get_champion(settings, model)
        assert champion is not None and champion.version == "1", f"{model}: no champion\n{run.output[-3000:]}"
        assert (champion.approval or {}).get("by") == "alice"
    predicted = _json_after(run.output_of("/predict"), "predictions")
    assert [p["user_id"] for p in predicted["predictions"]] == [3, 4, 1]
    assert all(0.0 <= p["score"] <= 1.0 for p in predicted["predictions"])
    # As the page says: users of the log have online features, an unknown user has none.
    assert [p["features_found"] for p in predicted["predictions"]] == [True, True, False]
    ranked = _json_after(run.output_of("/rank"), "products")
    assert ranked["user_id"] == 3 and ranked["products"], ranked
    # User 3 is in the log: every candidate was scored with the user's stored features.
    assert all(p["features_found"]["user"] for p in ranked["products"])


@pytest.mark.timeout(1800)
def test_part3_an_orders_file_trains_a_promoted_order_fraud_champion(walkthrough, runs, clone) -> None:
    """issue 10 items 5-6: an orders-only source reaches training through the daily DAG, and the check names the
    spec's label delay against the source's before the run would train on unlabelled fraud."""
    run = _checked(walkthrough, runs, 3)
    first_check = next(s for s in run.steps if "mlctl check order_fraud" in s.command.text)
    assert first_check.exit_code == 1 and "delay" in first_check.output
    settings = _settings(clone, ".storefront-my-orders", "my-fraud-models")
    champion = get_champion(settings, "order_fraud")
    assert champion is not None and champion.version == "1", run.output[-3000:]
    assert (champion.approval or {}).get("by") == "carol"

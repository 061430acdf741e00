"""The daily chain for one logical date: extract -> validate -> features (one step per family) -> materialize.

Each step reads only its inputs for the date and replaces its one output atomically, so rerunning a day
changes nothing and a failed day can simply be retried.
"""

from __future__ import annotations

import importlib

from pipelines.data.extract import extract_day
from pipelines.data.simulator import SimulationConfig
from pipelines.features.families import FAMILY_STEPS, families_in
from pipelines.features.store import materialize_day
from pipelines.features.user_features import build_user_features, write_user_features
from pipelines.lake import Lake, as_date
from pipelines.settings import Settings
from pipelines.validation.contracts import validate_with_contract
from pipelines.validation.daily import validate_day
from pipelines.validation.quarantine import ValidationFailed, report_key

FEATURE_TABLE = "features/user_behavior"


def simulation_config(settings: Settings) -> SimulationConfig:
    return SimulationConfig(seed=settings.sim_seed, n_users=settings.sim_users, start=settings.start_date)


class MissingIngestedDay(FileNotFoundError):
    """The data source is ``ingested`` and the day has not been landed yet."""


INGESTED_TABLES = ("events", "users", "follows")


def extract(settings: Settings, ds: str) -> dict:
    """Land the day's raw partitions (events and dimension snapshots) in the lake.

    With ``data_source=ingested`` the day was landed by ``mlctl ingest`` (a real log): check it is all there
    and leave it as it is.
    """
    lake, day = Lake(settings), as_date(ds)
    if settings.data_source == "simulator":
        return extract_day(lake, simulation_config(settings), day)
    missing = [table for table in INGESTED_TABLES if not lake.exists(table, day)]
    if missing:
        raise MissingIngestedDay(
            f"{day}: no {', '.join(missing)} partition in {settings.lake_uri}; land the day first with "
            "`mlctl ingest --source FILE --mapping MAPPING --table events --derive-users`"
        )
    return {
        table: {"rows": len(lake.read(table, day)), "uri": lake.partition_uri(table, day)} for table in INGESTED_TABLES
    }


def validate(settings: Settings, ds: str) -> dict:
    """Validate every table of the day, dimensions first; a critical failure quarantines that partition and
    raises (stopping the chain), warnings are returned per table and kept in each partition's report."""
    return validate_day(Lake(settings), as_date(ds), settings.expectations_dir)


def feature_families(settings: Settings) -> list[str]:
    """The feature families the model specs in ``settings.models_dir`` need."""
    return families_in(settings.models_dir)


def feature_family(settings: Settings, ds: str, family: str) -> dict:
    """Build and publish one family's tables of the day (see pipelines/features/families.py)."""
    if family not in FAMILY_STEPS:
        raise ValueError(f"unknown feature family {family!r}; known: {sorted(FAMILY_STEPS)}")
    module, function = FAMILY_STEPS[family].split(":")
    return getattr(importlib.import_module(module), function)(settings, ds)


def features(settings: Settings, ds: str) -> dict:
    """Every feature family the specs need, in order (what the DAG runs as one task per family)."""
    return {family: feature_family(settings, ds, family) for family in feature_families(settings)}


def user_behavior_features(settings: Settings, ds: str) -> dict:
    """Compute the day's user features, check them, and publish them to the offline store."""
    lake, day = Lake(settings), as_date(ds)
    frame = build_user_features(lake, day)
    # The frame is checked before it is published: a failure leaves the previous partition (if any) in place.
    report = validate_with_contract(lake, frame, FEATURE_TABLE, day, settings.expectations_dir, suite="user_features")
    lake.write_json(report_key(FEATURE_TABLE, day), report.to_dict())
    if report.critical_failures:
        raise ValidationFailed(report)
    uri = write_user_features(lake, day, frame)
    return {"rows": len(frame), "uri": uri, "warnings": [c.describe() for c in report.warnings]}


def materialize(settings: Settings, ds: str) -> dict:
    """Load the day's features into the online store."""
    return {"rows": materialize_day(settings, as_date(ds))}

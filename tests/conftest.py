"""Shared fixtures: every test gets its own ``.storefront`` home under a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def service_unavailable(name: str, reason: str) -> None:
    """Skip a test that needs a service, except on CI where a missing service is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{name} is required on CI but unavailable: {reason}")
    pytest.skip(f"{name} unavailable: {reason}")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit a profile from the developer's shell or from another test's Airflow env."""
    for key in list(os.environ):
        if key.startswith("STOREFRONT_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(home=tmp_path / ".storefront", num_threads=1)


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake(settings)

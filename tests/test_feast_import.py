"""Feast imported through ``pipelines`` skips typeguard's import-time instrumentation (seconds per process), and
``STOREFRONT_FEAST_TYPECHECKS=1`` keeps typeguard's own decorator for Feast to use. Each case runs in a fresh
interpreter: the choice is made once, before Feast's first import."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import pipelines
from feast import Entity
try:
    Entity(name=5, join_keys=["user_id"])
except Exception as exc:
    print(type(exc).__name__)
else:
    print("accepted")
"""


# Feast's checks are typeguard's decorator: the probe above shows Feast takes the one typeguard holds when Feast is
# imported, so the setting only has to leave typeguard's own there (importing Feast instrumented takes 5-40 s).
KEPT = """
import pipelines, typeguard
from typeguard._decorators import typechecked
print("kept" if typeguard.typechecked is typechecked else "replaced")
"""


def _probe(probe: str = PROBE, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "STOREFRONT_FEAST_TYPECHECKS"} | env
    done = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_feast_imported_after_pipelines_is_not_instrumented() -> None:
    assert _probe() == "accepted"


def test_the_setting_keeps_feasts_type_checks() -> None:
    assert _probe(KEPT) == "replaced"
    assert _probe(KEPT, STOREFRONT_FEAST_TYPECHECKS="1") == "kept"

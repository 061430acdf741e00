"""Feast without typeguard's import-time instrumentation.

Feast decorates its classes and functions with typeguard's ``@typechecked``, which re-reads, re-parses and
recompiles the decorated code's module every time it decorates something, while Feast is being imported: 3-7 s of
every process that imports Feast on this 2-core machine (importing the training flow took 6.0-9.9 s with it and
3.0-3.1 s without, same process kind, back to back). The checks only reject wrongly typed arguments to Feast's
constructors and methods; the platform builds its Feast objects in code that the tests run. Python's ``-O`` turns
the decorator off the same way (typeguard's documented production mode) but would also drop every ``assert``;
this turns off only that decorator, and only when it runs before Feast is first imported (``pipelines`` is
imported first by every entry point: mlctl, the DAG files, serving, Dask workers). Set
``STOREFRONT_FEAST_TYPECHECKS=1`` to keep Feast's checks (e.g. while writing new Feast definitions).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``typechecked`` as a no-op, in both of its forms: ``@typechecked`` and ``@typechecked(...)``."""
    if target is None:
        return lambda decorated: decorated
    return target


def skip_feast_typechecks() -> None:
    """Replace ``typeguard.typechecked`` before Feast imports it (too late once Feast is imported)."""
    if os.environ.get("STOREFRONT_FEAST_TYPECHECKS") == "1" or "feast" in sys.modules:
        return
    import typeguard

    typeguard.typechecked = _unchecked

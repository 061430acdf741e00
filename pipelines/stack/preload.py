"""``python -m pipelines.stack.preload AIRFLOW ARGS...``: Airflow's CLI with the pipeline steps' libraries imported.

Airflow runs each task in a process forked from the process that runs tasks (the LocalExecutor's workers, forked
from the scheduler; a Celery worker's pool processes): what that process has imported, every task has, and what it
has not, every task imports again. The steps import Feast, Great Expectations, MLflow, LightGBM, scikit-learn and
SciPy: 5-10 s of every task process on a 2-core machine, for a step that often works for less than a second. The
stack starts its Celery worker through this module, so those libraries are imported once per worker.
Importing is all it does: it opens no connection, file or thread that a forked task could inherit
(``preload`` checks that no thread was started).
"""

from __future__ import annotations

import importlib
import sys
import threading

# What the DAGs' steps import when they run (their modules import the libraries lazily, for DAG parsing's sake).
STEP_MODULES = (
    "pipelines.flows.daily_features",
    "pipelines.flows.training",
    "pipelines.features.store",
    "pipelines.validation.runner",
    "great_expectations",
    "pipelines.monitoring.watch",
    "pipelines.monitoring.skew",
    "pipelines.evaluation.evaluate",
    "pipelines.evaluation.report",
    "pipelines.registry.tamper",
    "pipelines.training.train",
    "scipy.stats",
)


def preload() -> None:
    """Import every step module; refuse to go on if an import started a thread (a fork would copy it half-done)."""
    for name in STEP_MODULES:
        importlib.import_module(name)
    if threading.active_count() > 1:
        started = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        raise RuntimeError(f"importing the step modules started threads ({started}): tasks would fork them")


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m pipelines.stack.preload /path/to/airflow COMMAND [ARGS...]")
    preload()
    sys.argv = sys.argv[1:]  # as if Airflow's own script had been run
    from airflow.__main__ import main as airflow_main

    sys.exit(airflow_main())


if __name__ == "__main__":
    main()

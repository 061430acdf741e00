# Storefront ML. `make demo` and `make test` set everything up on a machine that only has Python 3.11.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export MLFLOW_UV_AUTO_DETECT := false
export GIT_PYTHON_REFRESH := quiet

.PHONY: install demo test test-integration lint bench figures clean

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

install: .venv/.synced

demo: install
	$(UV) run --frozen --no-sync mlctl demo

# Four pytest processes in three lanes side by side (2 cores; the tests wait on services and child processes about
# half of the time, so a third lane uses what two leave idle): the unit tests, then the docs/data.md walkthrough
# (commands in child processes); the tests that run Airflow in-process (Airflow configures itself once per
# process, so they get their own); the integration tests that bring up the real stack (PostgreSQL, Redis,
# RabbitMQ, S3, MLflow server, Airflow on Celery, Dask) and inject faults. The side lanes' output is shown when all
# are done. `make test-integration` runs the integration tests alone.
SIDE_LOG := .storefront/test-side-lane.log
AIRFLOW_LOG := .storefront/test-airflow-lane.log
PYTEST := $(UV) run --frozen --no-sync pytest -q -p no:cacheprovider
test: install
	@mkdir -p $(dir $(SIDE_LOG)); \
	$(PYTEST) -m integration > $(SIDE_LOG) 2>&1 & side=$$!; \
	$(PYTEST) -m airflow > $(AIRFLOW_LOG) 2>&1 & airflow=$$!; \
	$(PYTEST) -m "not airflow and not integration and not walkthrough"; unit=$$?; \
	$(PYTEST) -m walkthrough; walkthrough=$$?; \
	wait $$airflow; airflowed=$$?; \
	wait $$side; sided=$$?; \
	echo "--- tests that run Airflow in-process (ran beside the others; log: $(AIRFLOW_LOG)):"; \
	cat $(AIRFLOW_LOG); \
	echo "--- integration tests (ran beside the others; log: $(SIDE_LOG)):"; \
	cat $(SIDE_LOG); \
	test $$unit -eq 0 && test $$walkthrough -eq 0 && test $$airflowed -eq 0 && test $$sided -eq 0

test-integration: install
	$(PYTEST) -m integration

lint: install
	$(UV) run --frozen --no-sync ruff check pipelines dags tests bench
	$(UV) run --frozen --no-sync ruff format --check pipelines dags tests bench

# One table of every comparison (a 1M-event day through Airflow is part of it: allow 10+ minutes); each module of
# bench/ also runs alone with its detailed table. BENCH_ARGS=--quick for small sizes.
bench: install
	$(UV) run --frozen --no-sync python -m bench.summary $(BENCH_ARGS)

# The figures of docs/data.md, redrawn from the simulator.
figures: install
	$(UV) run --frozen --no-sync python -m pipelines.data.figures docs/figures

clean:
	rm -rf .storefront

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

# Four pytest processes: Airflow configures itself once per process, so its in-process tests get their own; the
# docs/data.md walkthrough (commands in child processes, mostly one core busy) runs beside them, its output shown
# when both are done; the integration tests bring up the real stack (PostgreSQL, Redis, S3, MLflow server,
# Airflow) and also run alone with `make test-integration`.
WALKTHROUGH_LOG := .storefront/walkthrough-tests.log
test: install
	$(UV) run --frozen --no-sync pytest -q -p no:cacheprovider -m "not airflow and not integration and not walkthrough"
	@mkdir -p $(dir $(WALKTHROUGH_LOG)); \
	$(UV) run --frozen --no-sync pytest -q -p no:cacheprovider -m walkthrough > $(WALKTHROUGH_LOG) 2>&1 & walk=$$!; \
	$(UV) run --frozen --no-sync pytest -q -p no:cacheprovider -m airflow; airflow=$$?; \
	wait $$walk; walked=$$?; \
	echo "--- docs/data.md walkthrough tests (ran beside the Airflow tests; log: $(WALKTHROUGH_LOG)):"; \
	cat $(WALKTHROUGH_LOG); \
	test $$airflow -eq 0 && test $$walked -eq 0
	$(UV) run --frozen --no-sync pytest -q -p no:cacheprovider -m integration

test-integration: install
	$(UV) run --frozen --no-sync pytest -q -p no:cacheprovider -m integration

lint: install
	$(UV) run --frozen --no-sync ruff check pipelines dags tests bench
	$(UV) run --frozen --no-sync ruff format --check pipelines dags tests bench

# One table of every comparison (about 15 minutes: a 1M-event day through Airflow is part of it); each module of
# bench/ also runs alone with its detailed table. BENCH_ARGS=--quick for small sizes.
bench: install
	$(UV) run --frozen --no-sync python -m bench.summary $(BENCH_ARGS)

# The figures of docs/data.md, redrawn from the simulator.
figures: install
	$(UV) run --frozen --no-sync python -m pipelines.data.figures docs/figures

clean:
	rm -rf .storefront

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

# The suite in two lanes side by side (tests/run_lanes.sh says which tests run where and why); each lane's log
# is printed when all are done. `make test-integration` runs the integration tests alone.
PYTEST := $(UV) run --frozen --no-sync pytest -q -p no:cacheprovider
test: install
	@bash tests/run_lanes.sh $(PYTEST)

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

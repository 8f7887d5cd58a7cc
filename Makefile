# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-production test test-unit test-integration bench bench-production clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole main job: embedded profile by default (no server needed); `make demo
# PROFILE=production` (or `make demo-production`) runs it against the Postgres and Redis named by
# HM_PG_* and HM_REDIS_URL (localhost defaults; `docker compose up -d` starts both).
PROFILE ?= embedded
demo: $(STAMP)
	$(BIN)/healthmate-features demo --profile $(PROFILE)

demo-production: $(STAMP)
	$(BIN)/healthmate-features demo --profile production

# Tests in two tiers: tests/unit (no servers, no `feast apply`; well under a minute) and
# tests/integration (real Feast, Postgres, Redis, CLI subprocesses). `make test` runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

# Materialization into Redis, online latency, training-set build on Postgres (needs both servers).
bench-production: $(STAMP)
	$(BIN)/python bench/materialize.py

clean:
	rm -rf data .pytest_cache

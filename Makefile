# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-spark demo demo-production demo-spark test test-unit test-integration bench bench-production bench-api clean

# The environment comes from the lock: every package at the version CI tested. A change to
# pyproject.toml or to the lock re-runs this step.
LOCK := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

# The spark profile's extra (PySpark and py4j at the lock's versions), on top of the default install:
# for `make demo-spark`, and for `make test` under CI=true (tests marked `spark` skip without it).
SPARK_STAMP := $(VENV)/.installed-spark
$(SPARK_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[test,dev,spark]'
	touch $(SPARK_STAMP)

install-spark: $(SPARK_STAMP)

# Re-resolve the lock after a dependency change in pyproject.toml: a throwaway venv, an
# unconstrained install of every extra (spark included: a constraint installs only what is
# requested, so the default install stays without it), and its `pip freeze`. Commit the result.
.PHONY: lock check
# Resolved on the oldest Python the package supports, so every pinned version installs there
# and on newer Pythons (the pins have wheels for 3.10 to 3.13).
LOCK_PYTHON ?= python3.10
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(LOCK_PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install -q -e '.[test,dev,spark]'; \
	{ echo "# The whole resolved environment of pip install -e '.[test,dev,spark]', used as constraints by"; \
	  echo "# make install (pip install -c $(LOCK) -e '.[test,dev]') and so by CI; the spark extra's packages"; \
	  echo "# (pyspark, py4j) are installed only with it (make install-spark, make demo-spark, make test under CI=true)."; \
	  echo "# Do not edit by hand; after changing dependencies in pyproject.toml refresh it with make lock."; \
	  echo "# Resolved with Python $$("$$tmp/venv/bin/python" -c 'import platform; print(platform.python_version(), "on", platform.system(), platform.machine())')."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable; } > $(LOCK).tmp; \
	mv $(LOCK).tmp $(LOCK); \
	echo "wrote $(LOCK): $$(grep -vc '^#' $(LOCK)) packages"

# The gates: formatting, lint, types and the import contract (pyproject.toml configures each).
# Every gate runs, and the step fails if any of them found something.
check: $(STAMP)
	@status=0; \
	for gate in "ruff format --check ." "ruff check ." "mypy healthmate_features" "lint-imports"; do \
	  echo "== $$gate"; $(BIN)/$$gate || status=1; \
	done; \
	exit $$status

# The whole main job: embedded profile by default (no server needed); `make demo
# PROFILE=production` (or `make demo-production`) runs it against the Postgres and Redis named by
# HM_PG_* and HM_REDIS_URL (localhost defaults; `docker compose up -d` starts both).
PROFILE ?= embedded
demo: $(STAMP)
	$(BIN)/healthmate-features demo --profile $(PROFILE)

demo-production: $(STAMP)
	$(BIN)/healthmate-features demo --profile production

# The whole main job on the spark profile: Spark SQL on SPARK_MASTER (local[2]: two threads in one JVM),
# Parquet in HM_SPARK_WAREHOUSE (data/spark/warehouse), Postgres and Redis as production.
SPARK_MASTER ?= local[2]
demo-spark: $(SPARK_STAMP)
	HM_SPARK_MASTER='$(SPARK_MASTER)' $(BIN)/healthmate-features demo --profile spark

# Tests in two tiers: tests/unit (no servers, no `feast apply`; well under a minute) and
# tests/integration (real Feast, Postgres, Redis, CLI subprocesses, a browser). `make test` runs both.
# Under CI=true the browser the integration tier renders /docs in is installed first.
# Under CI=true the spark extra is installed too, so the tests marked `spark` run (locally they skip without it).
BROWSER_PREREQ := $(if $(filter true 1 yes,$(CI)),browser)
SPARK_PREREQ := $(if $(filter true 1 yes,$(CI)),$(SPARK_STAMP))
test: $(STAMP) $(BROWSER_PREREQ) $(SPARK_PREREQ)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP) $(BROWSER_PREREQ) $(SPARK_PREREQ)
	$(BIN)/python -m pytest -q tests/integration

# Headless Chromium from Debian's packages (as root), for tests/integration/test_docs_browser.py and test_see_it.py,
# which render the API's /docs and /dashboard pages and the report; without it they skip (and fail under CI=true).
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package) for the /docs browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@chromium --version

# Refresh the Swagger UI files the API's /docs page serves (healthmate_features/api/static/swagger-ui/)
# from the npm registry's swagger-ui-dist, unchanged; commit the result.
SWAGGER_UI_VERSION ?= 5.36.0
SWAGGER_UI_DIR := healthmate_features/api/static/swagger-ui
.PHONY: swagger-ui
swagger-ui:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) >/dev/null && tar xzf swagger-ui-dist-*.tgz); \
	for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png LICENSE NOTICE; do \
	  cp "$$tmp/package/$$f" $(SWAGGER_UI_DIR)/; done; \
	echo $(SWAGGER_UI_VERSION) > $(SWAGGER_UI_DIR)/VERSION; \
	echo "$(SWAGGER_UI_DIR): swagger-ui-dist $(SWAGGER_UI_VERSION)"

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

# Materialization into Redis, online latency, training-set build on Postgres (needs both servers).
bench-production: $(STAMP)
	$(BIN)/python bench/materialize.py

# The HTTP API under load on both profiles, next to /health and `feast serve` (needs Postgres and
# Redis; `.venv/bin/python bench/api_load.py --profile embedded` needs neither).
bench-api: $(STAMP)
	$(BIN)/python bench/api_load.py

clean:
	rm -rf data .pytest_cache

# cubed — GNU make targets. From a fresh clone only python3 is needed:
#   make run    install, build the demo DuckDB file, serve it at http://127.0.0.1:4000
#   make test   install, run the trial suite, end with "N passed, N failed"
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Recorded once the editable install succeeded; redone when the packaging files change.
STAMP := $(VENV)/.cubed-installed
DEMO_DB := var/demo.duckdb
# Extra trial options, e.g. make test TRIAL_JOBS=1 TRIAL_ARGS=--debug TESTS=tests.api
TESTS ?= tests
TRIAL_ARGS ?=
# Two trial workers: on this 2-core box the 132-test suite took 7.5-11.3 s against 10.6-12.8 s
# serially. TRIAL_JOBS=1 runs in-process (needed for --debug and --until-failure).
TRIAL_JOBS ?= 2
JOBS_ARG := $(if $(filter-out 0 1,$(TRIAL_JOBS)),-j$(TRIAL_JOBS))

.PHONY: install run test bench bench-preagg clean deb

install: $(STAMP)

# editable_mode=compat puts the checkout itself on sys.path (a plain .pth line): twistd finds
# twisted/plugins/cubed_plugin.py only through sys.path, and setuptools' default editable
# finder does not add the checkout there.
$(STAMP): setup.py $(wildcard setup.cfg pyproject.toml)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet \
		--config-settings editable_mode=compat -e '.[test]'
	@touch $@

run: install
	@mkdir -p $(dir $(DEMO_DB))
	$(BIN)/python -m cubed.demo build $(DEMO_DB)
	CUBEJS_DEV_MODE=true $(BIN)/twistd -n --pidfile= cubed --demo

test: install
	$(BIN)/python -m tests.runner $(JOBS_ARG) $(TRIAL_ARGS) $(TESTS)

bench: install
	@if [ -x bench/run.sh ]; then bench/run.sh; \
	elif [ -f bench/run.sh ]; then bash bench/run.sh; \
	else echo "bench/run.sh does not exist yet"; fi
	@echo "pre-aggregations (PostgreSQL, 6 M line items, 2-4 min): make bench-preagg, not run here"

# The pre-aggregation benchmark of issue 5 (bench/README.md): PostgreSQL at 127.0.0.1:5432, its
# own database (generated once, about 1.5 min). For example PREAGG_ARGS="--runs 10 --raw-runs 3".
PREAGG_ARGS ?=
bench-preagg: install
	$(BIN)/python bench/preagg_bench.py $(PREAGG_ARGS)

# The Debian package (README: Install on Debian): build/deb/<source hash>/cubed_*.deb, linted.
deb:
	tests/package/build-deb

clean:
	rm -rf $(VENV) _trial_temp _trial_temp.lock var build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f twisted/plugins/dropin.cache

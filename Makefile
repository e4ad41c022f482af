# make run   : the pipeline on the embedded digits set (snakemake, all cores)
# make test  : the test suite
# make ui    : the MLflow UI on 127.0.0.1
# make bench : side-by-side speed benchmarks
# Each target creates .venv (pip) when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= all
PORT   ?= 5000

.PHONY: run test test-slow ui bench venv clean
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port $(PORT)

bench: $(STAMP)
	$(PY) benchmarks/bench_distill.py
	$(PY) benchmarks/bench_evaluate.py

clean:
	rm -rf results logs .snakemake

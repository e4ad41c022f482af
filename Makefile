# make run   : the pipeline on the embedded digits set (snakemake, all cores)
# make test  : the test suite
# make ui    : the MLflow UI on 127.0.0.1
# make bench : side-by-side speed benchmarks
# make paper : the paper protocol on CIFAR-10 content, with ATOM+ (a GPU; DATASET, IPCS, METHODS, PLUS, PROTOCOL, JOBS)
# make slurm : the pipeline on a SLURM cluster (profiles/slurm; needs the [slurm] extra)
# make test-slurm : the pipeline through a one-node SLURM cluster the test starts (root, slurm-wlm, munge)
# make dvc.yaml : regenerate dvc.yaml from the pipeline's declaration (stages/common/contract.py)
# Each target creates .venv (pip) when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= all
PORT   ?= 5000

DATASET  ?= cifar10-jpeg
IPCS     ?= 10
METHODS  ?= atom datadam dm
# spec-short: 2000 iterations, about 9 minutes on one H100 (summed from measured cells); spec: the group's 8000
PROTOCOL ?= spec-short
# cells at once, each its own process (scripts/paper.py --jobs; one GPU gains nothing from more)
JOBS     ?= 1
# methods also run as their + variant (trained encoders + calibration, protocol $(PROTOCOL)-atomplus); PLUS= : none
PLUS     ?= atom

.PHONY: run test test-slow test-slurm ui bench paper venv clean slurm
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,pipeline,slurm]'
	touch $(STAMP)

# the pipeline, then the report it wrote (paths.results/report/summary.md)
run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)
	@$(PY) -c 'import pathlib, yaml; p = pathlib.Path(yaml.safe_load(open("params.yaml"))["paths"]["results"], "report", "summary.md"); print(f"\n{p}:\n"); print(p.read_text())'

# the pipeline on a SLURM cluster; needs the plugin: pip install -e '.[slurm]'
slurm: $(STAMP)
	@$(PY) -c 'import snakemake_executor_plugin_slurm' 2>/dev/null || { echo "make slurm: the SLURM executor plugin is missing; install it with: $(PY) -m pip install -e '.[slurm]'" >&2; exit 1; }
	$(VENV)/bin/snakemake --profile profiles/slurm

# dvc.yaml is generated: after changing a rule in stages/common/contract.py or a command's imports
dvc.yaml: $(STAMP) $(wildcard stages/*.py stages/common/*.py atom/*.py)
	$(PY) -m stages.common.dvc_yaml

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not slurm"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# the pipeline through a one-node SLURM cluster the test starts (root; apt-get install -y slurm-wlm munge)
test-slurm: $(STAMP)
	$(PY) -m pytest -q -m slurm -rs

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port $(PORT)

bench: $(STAMP)
	$(PY) benchmarks/bench_distill.py
	$(PY) benchmarks/bench_run.py --ipc 10 --warmup 3 --iterations 5
	$(PY) benchmarks/bench_evaluate.py
	$(PY) benchmarks/bench_pool.py

paper: $(STAMP)
	$(PY) -m stages.download --dataset $(DATASET)
	$(PY) -m stages.zca --dataset $(DATASET)
	$(PY) scripts/paper.py --dataset $(DATASET) --protocol $(PROTOCOL) --ipcs $(IPCS) --methods $(METHODS) --baselines random selected --plus $(PLUS) --jobs $(JOBS)

clean:
	rm -rf results logs .snakemake

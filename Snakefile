# The ATOM pipeline: download -> zca -> distill -> evaluate -> visualize -> report.
#
#   snakemake --cores 2                       # everything in params.yaml's experiment matrix
#   snakemake --profile profiles/local        # the same, with the local profile
#   snakemake --profile profiles/slurm        # on a SLURM cluster (see profiles/slurm)
#
# Wiring only: every command is `python -m stages.<name>`, the same as in dvc.yaml (a test
# checks that both describe the same stages, commands, inputs and outputs). Every value comes
# from params.yaml; each rule's `params:` holds the sections its stage reads, so editing one
# reruns exactly the rules that depend on it. Library code is an input of every rule.
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from stages import common  # noqa: E402

configfile: "params.yaml"
validate(config, "schemas/params.schema.yaml", set_default=False)
common.check_params(config)
# The stages read params.yaml themselves: refuse --config/--configfile overrides they would miss.
if config != yaml.safe_load(Path("params.yaml").read_text()):
    raise ValueError("params: command-line overrides (--config/--configfile) are not supported; edit "
                     "params.yaml (or a copy of the project) instead")

PY = shlex.quote(sys.executable)
EXP = config["experiment"]
RT = config["runtime"]
LOGS = config["paths"]["logs"]
P = {key: common.pattern(config, key) for key in common.PATTERNS}
LIB = sorted(str(p) for p in Path("atom").glob("*.py"))
DATA_LIB = ["atom/data.py", "atom/archive.py", "atom/io.py"]
COMMON = "stages/common.py"
# a GPU slot per job when the jobs will use CUDA (limit with --resources gpu=N)
GPU = 0 if RT["device"] == "cpu" else int(RT["device"].startswith("cuda") or shutil.which("nvidia-smi") is not None)

wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    method="atom|datadam|dm",
    ipc="[0-9]+",


def evaluations(dataset):
    return [str(common.eval_path(config, dataset, kind, ipc)) for kind, ipc in common.evaluations(config, dataset)]


def distillations(dataset):
    return [str(common.path(config, "distill_metrics", dataset=d, method=m, ipc=k))
            for d, m, k in common.experiments(config) if d == dataset]


rule all:
    input:
        P["summary_md"],
        P["summary_json"],
        expand(P["accuracy_png"], dataset=EXP["datasets"]),
        expand(P["grid"], dataset=EXP["datasets"], method=EXP["methods"], ipc=EXP["ipcs"]),
        expand(P["loss_png"], dataset=EXP["datasets"], method=EXP["methods"], ipc=EXP["ipcs"]),
        expand(P["images"], dataset=EXP["datasets"], method=EXP["methods"], ipc=EXP["ipcs"]),


rule download:
    input:
        DATA_LIB,
        "stages/download.py",
        COMMON,
    output:
        directory(P["raw"]),
        P["download_metrics"],
    params:
        section=lambda w: common.stage_params(config, "download", w.dataset),
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/download/{{dataset}}.tsv"
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.download --dataset {{wildcards.dataset}}"


rule zca:
    input:
        P["raw"],
        DATA_LIB,
        "atom/preprocess.py",
        "stages/zca.py",
        COMMON,
    output:
        P["prepared"],
        P["state"],
        P["zca_metrics"],
    params:
        section=lambda w: common.stage_params(config, "zca", w.dataset),
    log:
        f"{LOGS}/zca/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/zca/{{dataset}}.tsv"
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.zca --dataset {{wildcards.dataset}}"


rule distill:
    input:
        P["prepared"],
        LIB,
        "stages/distill.py",
        COMMON,
    output:
        P["synthetic"],
        P["checkpoint"],
        P["loss_csv"],
        P["distill_metrics"],
    params:
        section=lambda w: common.stage_params(config, "distill", w.dataset),
    log:
        f"{LOGS}/distill/{{dataset}}-{{method}}-ipc{{ipc}}.log",
    benchmark:
        f"{LOGS}/benchmarks/distill/{{dataset}}-{{method}}-ipc{{ipc}}.tsv"
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.distill --dataset {{wildcards.dataset}} --method {{wildcards.method}} --ipc {{wildcards.ipc}}"


rule evaluate:
    input:
        P["synthetic"],
        P["prepared"],
        LIB,
        "stages/evaluate.py",
        COMMON,
    output:
        P["eval_metrics"],
    params:
        section=lambda w: common.stage_params(config, "evaluate", w.dataset),
    log:
        f"{LOGS}/evaluate/{{dataset}}-{{method}}-ipc{{ipc}}.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate/{{dataset}}-{{method}}-ipc{{ipc}}.tsv"
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.evaluate --dataset {{wildcards.dataset}} --method {{wildcards.method}} --ipc {{wildcards.ipc}}"


rule evaluate_random:
    input:
        P["prepared"],
        LIB,
        "stages/evaluate.py",
        COMMON,
    output:
        common.pattern(config, "eval_metrics").replace("{method}", "random"),
    params:
        section=lambda w: common.stage_params(config, "evaluate_random", w.dataset),
    log:
        f"{LOGS}/evaluate/{{dataset}}-random-ipc{{ipc}}.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate/{{dataset}}-random-ipc{{ipc}}.tsv"
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.evaluate --dataset {{wildcards.dataset}} --method random --ipc {{wildcards.ipc}}"


rule evaluate_full:
    input:
        P["prepared"],
        LIB,
        "stages/evaluate.py",
        COMMON,
    output:
        P["eval_full"],
    params:
        section=lambda w: common.stage_params(config, "evaluate_full", w.dataset),
    log:
        f"{LOGS}/evaluate/{{dataset}}-full.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate/{{dataset}}-full.tsv"
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.evaluate --dataset {{wildcards.dataset}} --method full"


rule visualize:
    input:
        P["synthetic"],
        P["loss_csv"],
        P["state"],
        LIB,
        "stages/visualize.py",
        COMMON,
    output:
        P["grid"],
        P["loss_png"],
        directory(P["images"]),
    params:
        section=lambda w: common.stage_params(config, "visualize", w.dataset),
    log:
        f"{LOGS}/visualize/{{dataset}}-{{method}}-ipc{{ipc}}.log",
    benchmark:
        f"{LOGS}/benchmarks/visualize/{{dataset}}-{{method}}-ipc{{ipc}}.tsv"
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.visualize --dataset {{wildcards.dataset}} --method {{wildcards.method}} --ipc {{wildcards.ipc}}"


rule accuracy:
    input:
        lambda w: evaluations(w.dataset),
        LIB,
        "stages/visualize.py",
        COMMON,
    output:
        P["accuracy_png"],
        P["accuracy_csv"],
    params:
        section=lambda w: common.stage_params(config, "accuracy", w.dataset),
    log:
        f"{LOGS}/visualize/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/visualize/{{dataset}}.tsv"
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.visualize --dataset {{wildcards.dataset}}"


rule report:
    input:
        [evaluations(d) for d in EXP["datasets"]],
        [distillations(d) for d in EXP["datasets"]],
        LIB,
        "stages/report.py",
        COMMON,
    output:
        P["summary_md"],
        P["summary_json"],
    params:
        section=common.stage_params(config, "report"),
    log:
        f"{LOGS}/report/summary.log",
    benchmark:
        f"{LOGS}/benchmarks/report/summary.tsv"
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.report"

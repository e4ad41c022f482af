# The ATOM pipeline: download -> zca -> pool -> distill -> evaluate, crossarch, nas shards -> nas_merge -> visualize -> report.
#
#   snakemake --cores 2                       # everything in params.yaml's experiment matrix
#   snakemake --profile profiles/local        # the same, with the local profile
#   snakemake --profile profiles/slurm        # on a SLURM cluster (see profiles/slurm)
#
# Wiring only: every command is `python -m stages.<name>`, the same as in dvc.yaml (a test
# checks that both describe the same stages, commands, inputs and outputs). Every value comes
# from params.yaml; each rule's `params:` holds the sections its stage reads, so editing one
# reruns exactly the rules that depend on it. Each rule's code inputs are the atom/ and stages/
# files its stage imports, transitively (stages.layout.code_deps; dvc.yaml lists the same), and
# its log and benchmark files come from stages.layout, like the stages' own log paths.
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from stages import layout  # noqa: E402
from stages.params import check_params, stage_params  # noqa: E402

configfile: "params.yaml"
# `snakemake --report report.html` (or .zip): the results table, the accuracy plot, every
# synthetic set's grid and its loss/validation curves, captioned from report/*.rst
report: "report/workflow.rst"
# The stages read params.yaml themselves: refuse --config/--configfile overrides they would miss
# (first: an override is the error, not the schema error it may cause).
if config != yaml.safe_load(Path("params.yaml").read_text()):
    raise ValueError("params: command-line overrides (--config/--configfile) are not supported; edit "
                     "params.yaml (or a copy of the project) instead")
validate(config, "schemas/params.schema.yaml", set_default=False)
check_params(config)

PY = shlex.quote(sys.executable)
EXP = config["experiment"]
RT = config["runtime"]
P = {key: layout.pattern(config, key) for key in layout.PATTERNS}
# each rule's code inputs, as an input function that refuses a job outside params.yaml's matrix
# (a requested target such as .../ipc7/...) with a message naming the value and its key
CODE = {stage: (lambda w, s=stage: layout.check_job(config, s, dict(w.items())) or layout.code_deps(s))
        for stage in layout.STAGES}
# a GPU slot per job when the jobs will use CUDA (limit with --resources gpu=N)
GPU = 0 if RT["device"] == "cpu" else int(RT["device"].startswith("cuda") or shutil.which("nvidia-smi") is not None)

wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    method="|".join(layout.METHODS),
    ipc="[0-9]+",
    shard="[0-9]+",


def evaluations(dataset):
    return [str(layout.eval_path(config, dataset, kind, ipc)) for kind, ipc in layout.evaluations(config, dataset)]


def synthetic_sets(dataset, ipcs):
    """Every method's synthetic set of ``dataset`` at ``ipcs`` (the crossarch and nas inputs)."""
    return [str(layout.path(config, "synthetic", dataset=dataset, method=m, ipc=k))
            for m in EXP["methods"] for k in ipcs]


def distillations(dataset):
    return [str(layout.path(config, "distill_metrics", dataset=d, method=m, ipc=k))
            for d, m, k in layout.experiments(config) if d == dataset]


rule all:
    input:
        P["summary_md"],
        P["summary_json"],
        expand(P["accuracy_png"], dataset=EXP["datasets"]),
        expand(P["grid"], dataset=EXP["datasets"], method=EXP["methods"], ipc=EXP["ipcs"]),
        expand(P["loss_png"], dataset=EXP["datasets"], method=EXP["methods"], ipc=EXP["ipcs"]),
        expand(P["images"], dataset=EXP["datasets"], method=EXP["methods"], ipc=EXP["ipcs"]),
        expand(P["nas_png"], dataset=EXP["datasets"]),


rule download:
    input:
        CODE["download"],
    output:
        directory(P["raw"]),
        P["download_metrics"],
        P["download_info"],
    params:
        section=lambda w: stage_params(config, "download", w.dataset),
    log:
        str(layout.log_path(config, "download", "{dataset}")),
    benchmark:
        str(layout.benchmark_path(config, "download", "{dataset}"))
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.download --dataset {{wildcards.dataset}}"


rule zca:
    input:
        P["raw"],
        CODE["zca"],
    output:
        P["prepared"],
        P["state"],
        P["zca_metrics"],
        P["zca_info"],
    params:
        section=lambda w: stage_params(config, "zca", w.dataset),
    log:
        str(layout.log_path(config, "zca", "{dataset}")),
    benchmark:
        str(layout.benchmark_path(config, "zca", "{dataset}"))
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.zca --dataset {{wildcards.dataset}}"


rule pool:
    input:
        P["prepared"],
        CODE["pool"],
    output:
        P["pool"],
        P["pool_metrics"],
        P["pool_info"],
    params:
        section=lambda w: stage_params(config, "pool", w.dataset),
    log:
        str(layout.log_path(config, "pool", "{dataset}")),
    benchmark:
        str(layout.benchmark_path(config, "pool", "{dataset}"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.pool --dataset {{wildcards.dataset}}"


rule distill:
    input:
        P["prepared"],
        P["pool"],
        CODE["distill"],
    output:
        P["synthetic"],
        P["last"],
        P["loss_csv"],
        P["val_curve"],
        P["distill_metrics"],
        P["distill_info"],
    params:
        section=lambda w: stage_params(config, "distill", w.dataset),
    log:
        str(layout.log_path(config, "distill", "{dataset}", "{method}", "{ipc}")),
    benchmark:
        str(layout.benchmark_path(config, "distill", "{dataset}", "{method}", "{ipc}"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.distill --dataset {{wildcards.dataset}} --method {{wildcards.method}} --ipc {{wildcards.ipc}}"


rule evaluate:
    input:
        P["synthetic"],
        P["prepared"],
        CODE["evaluate"],
    output:
        P["eval_metrics"],
        P["eval_info"],
    params:
        section=lambda w: stage_params(config, "evaluate", w.dataset),
    log:
        str(layout.log_path(config, "evaluate", "{dataset}", "{method}", "{ipc}")),
    benchmark:
        str(layout.benchmark_path(config, "evaluate", "{dataset}", "{method}", "{ipc}"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.evaluate --dataset {{wildcards.dataset}} --method {{wildcards.method}} --ipc {{wildcards.ipc}}"


rule evaluate_random:
    input:
        P["prepared"],
        CODE["evaluate_random"],
    output:
        layout.pattern(config, "eval_metrics").replace("{method}", "random"),
        layout.pattern(config, "eval_info").replace("{method}", "random"),
    params:
        section=lambda w: stage_params(config, "evaluate_random", w.dataset),
    log:
        str(layout.log_path(config, "evaluate", "{dataset}", "random", "{ipc}")),
    benchmark:
        str(layout.benchmark_path(config, "evaluate", "{dataset}", "random", "{ipc}"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.evaluate --dataset {{wildcards.dataset}} --method random --ipc {{wildcards.ipc}}"


rule evaluate_selected:
    input:
        P["prepared"],
        CODE["evaluate_selected"],
    output:
        layout.pattern(config, "eval_metrics").replace("{method}", "selected"),
        layout.pattern(config, "eval_info").replace("{method}", "selected"),
    params:
        section=lambda w: stage_params(config, "evaluate_selected", w.dataset),
    log:
        str(layout.log_path(config, "evaluate", "{dataset}", "selected", "{ipc}")),
    benchmark:
        str(layout.benchmark_path(config, "evaluate", "{dataset}", "selected", "{ipc}"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.evaluate --dataset {{wildcards.dataset}} --method selected --ipc {{wildcards.ipc}}"


rule evaluate_full:
    input:
        P["prepared"],
        CODE["evaluate_full"],
    output:
        P["eval_full"],
        P["eval_full_info"],
    params:
        section=lambda w: stage_params(config, "evaluate_full", w.dataset),
    log:
        str(layout.log_path(config, "evaluate", "{dataset}", "full")),
    benchmark:
        str(layout.benchmark_path(config, "evaluate", "{dataset}", "full"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.evaluate --dataset {{wildcards.dataset}} --method full"


rule visualize:
    input:
        P["synthetic"],
        P["loss_csv"],
        P["val_curve"],
        P["prepared"],
        P["state"],
        CODE["visualize"],
    output:
        report(P["grid"], caption="report/grid.rst", category="Synthetic sets", subcategory="{dataset}",
               labels={"dataset": "{dataset}", "method": "{method}", "ipc": "{ipc}", "figure": "grid"}),
        report(P["loss_png"], caption="report/loss.rst", category="Curves", subcategory="{dataset}",
               labels={"dataset": "{dataset}", "method": "{method}", "ipc": "{ipc}", "figure": "loss and validation"}),
        directory(P["images"]),
    params:
        section=lambda w: stage_params(config, "visualize", w.dataset),
    log:
        str(layout.log_path(config, "visualize", "{dataset}", "{method}", "{ipc}")),
    benchmark:
        str(layout.benchmark_path(config, "visualize", "{dataset}", "{method}", "{ipc}"))
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.visualize --dataset {{wildcards.dataset}} --method {{wildcards.method}} --ipc {{wildcards.ipc}}"


rule accuracy:
    input:
        lambda w: evaluations(w.dataset),
        CODE["accuracy"],
    output:
        report(P["accuracy_png"], caption="report/accuracy.rst", category="Results", subcategory="{dataset}",
               labels={"dataset": "{dataset}", "figure": "accuracy by IPC"}),
        P["accuracy_csv"],
    params:
        section=lambda w: stage_params(config, "accuracy", w.dataset),
    log:
        str(layout.log_path(config, "visualize", "{dataset}")),
    benchmark:
        str(layout.benchmark_path(config, "visualize", "{dataset}"))
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.visualize --dataset {{wildcards.dataset}}"


rule crossarch:
    input:
        lambda w: synthetic_sets(w.dataset, [w.ipc]),
        P["prepared"],
        CODE["crossarch"],
    output:
        P["crossarch"],
    params:
        section=lambda w: stage_params(config, "crossarch", w.dataset),
    log:
        str(layout.log_path(config, "crossarch", "{dataset}", ipc="{ipc}")),
    benchmark:
        str(layout.benchmark_path(config, "crossarch", "{dataset}", ipc="{ipc}"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.crossarch --dataset {{wildcards.dataset}} --ipc {{wildcards.ipc}}"


rule nas:
    input:
        lambda w: synthetic_sets(w.dataset, config["nas"]["ipcs"]),
        P["prepared"],
        CODE["nas"],
    output:
        P["nas_shard"],
    params:
        section=lambda w: stage_params(config, "nas", w.dataset),
    log:
        str(layout.log_path(config, "nas", name="{dataset}-shard{shard}")),
    benchmark:
        str(layout.benchmark_path(config, "nas", name="{dataset}-shard{shard}"))
    threads: RT["threads"]
    resources:
        gpu=GPU,
    shell:
        f"{PY} -m stages.nas --dataset {{wildcards.dataset}} --shard {{wildcards.shard}}"


rule nas_merge:
    input:
        lambda w: expand(P["nas_shard"], dataset=w.dataset, shard=layout.nas_shards(config)),
        CODE["nas_merge"],
    output:
        P["nas_json"],
        P["nas_csv"],
        P["nas_png"],
    params:
        section=lambda w: stage_params(config, "nas_merge", w.dataset),
    log:
        str(layout.log_path(config, "nas_merge", "{dataset}")),
    benchmark:
        str(layout.benchmark_path(config, "nas_merge", "{dataset}"))
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.nas_merge --dataset {{wildcards.dataset}}"


rule report:
    input:
        [evaluations(d) for d in EXP["datasets"]],
        [distillations(d) for d in EXP["datasets"]],
        expand(P["crossarch"], dataset=EXP["datasets"], ipc=config["crossarch"]["ipcs"]),
        expand(P["nas_json"], dataset=EXP["datasets"]),
        CODE["report"],
    output:
        P["summary_md"],
        P["summary_json"],
        report(P["summary_csv"], caption="report/summary.rst", category="Results", labels={"table": "results"}),
    params:
        section=stage_params(config, "report"),
    log:
        str(layout.log_path(config, "report", name="summary")),
    benchmark:
        str(layout.benchmark_path(config, "report", name="summary"))
    threads: RT["threads"]
    shell:
        f"{PY} -m stages.report"

# The ATOM pipeline: download -> zca -> pool -> distill -> evaluate, visualize, crossarch, nas -> report.
#
#   snakemake --cores 2                       # everything in params.yaml's experiment matrix
#   snakemake --profile profiles/local        # the same, with the local profile
#   snakemake --profile profiles/slurm        # on a SLURM cluster (see profiles/slurm)
#   snakemake --list-rules / --dag | dot ...  # the rules, the job graph
#
# Wiring only: every rule comes from the one declaration in stages/common/contract.py (its
# inputs, outputs, params, log, benchmark file and command), the same one dvc.yaml is
# generated from. Every value comes from params.yaml; each rule's `params:` holds what its stage
# reads of it (stages.common.params.stage_params), so editing one reruns exactly the rules that
# depend on it. Each rule's code inputs are the atom/ and stages/ files its command runs
# (stages.common.codedeps), so editing a library file reruns only the rules that run it.
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from stages.common import contract as C  # noqa: E402
from stages.common.codedeps import code_deps  # noqa: E402
from stages.common.params import check_params, stage_params  # noqa: E402
from stages.common.preflight import memory_mb  # noqa: E402

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
RT = config["runtime"]
# a GPU slot per job of a rule that can use one, when the jobs will use CUDA (limit with --resources gpu=N)
GPU = 0 if RT["device"] == "cpu" else int(RT["device"].startswith("cuda") or shutil.which("nvidia-smi") is not None)

wildcard_constraints:
    **C.WILDCARD_PATTERNS,


def inputs(rule):
    """The rule's inputs: files with its own wildcards, the lists a Gather names, and its code
    (an input function that refuses a job outside params.yaml's matrix, such as .../ipc7/...,
    with a message naming the value and its key)."""
    r = C.RULES[rule]
    out = []
    for item in r.inputs:
        if isinstance(item, C.Gather):
            out.append(lambda w, g=item: [str(C.path(config, k, **wc)) for k, wc in g.files(config, dict(w.items()))])
        else:
            out.append(C.pattern(config, getattr(item, "key", item), **r.fixed))
    out.append(lambda w: C.check_job(config, rule, dict(w.items())) or code_deps(rule))
    return out


def outputs(rule):
    """The rule's declared files: folders as directory(), pictures and tables for --report as report()."""
    r = C.RULES[rule]
    out = []
    for key in r.outputs:
        f, p = C.FILES[key], C.pattern(config, key, **r.fixed)
        out.append(directory(p) if f.folder else report(p, **f.report) if f.report else p)
    return out


onstart:
    # a SLURM run that could not learn when its jobs end would wait for ever: stop it first, in one line
    from snakemake.exceptions import WorkflowError
    from stages.common.cluster import ClusterProblem, check_executor

    try:
        check_executor(workflow)
    except ClusterProblem as exc:
        raise WorkflowError(f"profile: {exc}") from None


rule all:
    input:
        [str(C.path(config, key, **{**C.RULES[rule].fixed, **wc})) for rule, wc in C.jobs(config)
         for key in C.outputs(rule)],


for R in C.RULES.values():
    WC = {w: "{" + w + "}" for w in R.over}

    rule:
        name:
            R.name
        input:
            *inputs(R.name),
        output:
            *outputs(R.name),
        params:
            section=lambda w, rule=R.name: stage_params(config, rule, dict(w.items()).get("dataset")),
            # the command's module and arguments: `shell:` below is evaluated when the job runs,
            # after this loop has moved on, so it reads them from the job, not from R
            module=R.module,
            args=lambda w, rule=R.name: C.arguments(rule, dict(w.items())),
        log:
            str(C.log_path(config, R.name, WC)),
        benchmark:
            str(C.benchmark_path(config, R.name, WC))
        threads: RT["threads"]
        resources:
            # what the job will hold, from the data's size (a profile's set-resources may override it)
            mem_mb=lambda w, rule=R.name: memory_mb(config, rule, dict(w.items())),
            **({"gpu": GPU} if R.gpu else {}),
        shell:
            PY + " -m {params.module} {params.args}"

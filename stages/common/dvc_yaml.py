"""dvc.yaml, generated from the one declaration of the pipeline (:mod:`stages.common.contract`).

    python -m stages.common.dvc_yaml            # rewrite dvc.yaml (after changing a rule or a
                                                #   command's imports; `make dvc.yaml` does it)
    python -m stages.common.dvc_yaml --check    # exit 1, naming the fix, if dvc.yaml is stale

DVC cannot compute a stage's code from its imports, nor expand a list inside a stage's deps, so
the file spells out what the Snakefile computes: each rule becomes a stage (``foreach`` over
its one wildcard's list, ``matrix`` over several), its inputs become deps (a :class:`Gather`
becomes the folder holding its files), its code (:func:`stages.common.codedeps.code_deps`) is
listed file by file, its params refs become params.yaml keys
(:func:`stages.common.params.dvc_params`), and its files go under ``outs`` (``cache: false``
for git-tracked records), ``metrics`` or ``plots`` by their kind. A test fails when the
committed dvc.yaml differs from what this writes.

Torch-free.
"""
from __future__ import annotations

import argparse
import re
import sys

from .codedeps import code_deps
from .contract import FILES, RULES, ROOT, Gather, Input, command_line, wildcards_of
from .params import dvc_params

__all__ = ["render", "main"]

HEADER = """\
# The ATOM pipeline for DVC: the same stages and commands as the Snakefile, generated from the
# one declaration of the pipeline (stages/common/contract.py) by
#
#     python -m stages.common.dvc_yaml        # or: make dvc.yaml
#
# Do not edit by hand: change the contract (or a command's imports) and regenerate; a test fails
# while this file differs from the generator's output.
#
#   dvc repro            # run what is out of date; after editing params.yaml, only the stages
#                        # whose `params:` or deps changed (and their descendants) rerun
#   dvc metrics show     # evaluation accuracies;  dvc plots show  # loss curves, accuracy by ipc
#
# Run it with the project's virtual environment active (`source .venv/bin/activate`): the
# commands call `python`. The matrix comes from params.yaml's `experiment` section; dvc.yaml
# always defines every baseline stage (DVC has no conditional stages). A stage's code deps are
# the atom/ and stages/ files its command runs (stages/common/codedeps.py), so an edit to one
# library file reruns only the stages that run it.
#
# Versioning: metrics (numbers only), plots, info.json files and the report are `cache: false`
# and git-tracked (.gitignore leaves them in), so `dvc metrics diff`, `dvc plots diff` and
# `dvc exp show` compare commits and experiments; data, sets and pictures are DVC-cached
# (`dvc push` / `dvc pull`). Every output is byte-identical for the same inputs and params.
stages:
"""


def _template(rule: str, text: str) -> str:
    """``{raw}`` -> ``${paths.raw}``; the rule's wildcards -> ``${item}`` / ``${item.<w>}``."""
    r = RULES[rule]
    one = len(r.over) == 1
    for p in ("raw", "prepared", "results", "logs", "state"):
        text = text.replace("{" + p + "}", "${paths." + p + "}")
    for w, v in r.fixed.items():
        text = text.replace("{" + w + "}", str(v))
    for w in r.over:
        text = text.replace("{" + w + "}", "${item}" if one else "${item." + w + "}")
    return text


def _gather_folder(rule: str, key: str) -> str:
    """The folder holding a Gather's files of ``key``: the pattern cut at its first wildcard
    that the rule does not bind."""
    pattern = FILES[key].pattern
    free = [w for w in wildcards_of(key) if w not in RULES[rule].over]
    if not free:
        return pattern
    cut = min(pattern.index("{" + w + "}") for w in free)
    return pattern[:cut].rpartition("/")[0]  # the folder above the first free part


def _covered(dep: str, deps: list[str]) -> bool:
    return any(dep != d and dep.startswith(d.rstrip("/") + "/") for d in deps)


def deps(rule: str) -> list[str]:
    """The stage's deps: its input files and folders, then its code."""
    out: list[str] = []
    for item in RULES[rule].inputs:
        if isinstance(item, Gather):
            out += [_template(rule, _gather_folder(rule, k)) for k in item.keys]
        else:
            out.append(_template(rule, FILES[item.key if isinstance(item, Input) else item].pattern))
    out = list(dict.fromkeys(d for d in out if not _covered(d, out)))
    return out + code_deps(rule)


def _stage(rule: str) -> list[str]:
    r = RULES[rule]
    cmd = _template(rule, command_line(rule, {w: "{" + w + "}" for w in r.over}))  # the Snakefile's command
    lines = [f"  {rule}:"]
    ind = "    "
    if len(r.over) == 1:
        (w, source), = r.over.items()
        lines += [f"{ind}foreach: ${{{source}}}", f"{ind}do:"]
        ind += "  "
    elif r.over:
        lines.append(f"{ind}matrix:")
        lines += [f"{ind}  {w}: ${{{source}}}" for w, source in r.over.items()]
    lines.append(f"{ind}cmd: {cmd}")
    lines.append(f"{ind}deps:")
    lines += [f"{ind}  - {d}" for d in deps(rule)]
    lines.append(f"{ind}params:")
    dataset = "${item}" if len(r.over) == 1 else "${item.dataset}"
    lines += [f"{ind}  - {p}" for p in dvc_params(rule, dataset)]
    sections: dict[str, list[str]] = {"outs": [], "metrics": [], "plots": []}
    for key in r.outputs:
        f = FILES[key]
        where = _template(rule, f.pattern)
        if f.kind == "data":
            sections["outs"].append(f"{ind}  - {where}")
        elif f.kind == "record":
            sections["outs"] += [f"{ind}  - {where}:", f"{ind}      cache: false"]
        elif f.kind == "metrics":
            sections["metrics"] += [f"{ind}  - {where}:", f"{ind}      cache: false"]
        elif f.kind == "plot":
            sections["plots"] += [f"{ind}  - {where}:"] + [f"{ind}      {k}: {v}" for k, v in f.dvc_plot.items()] + [
                f"{ind}      cache: false"]
        else:
            raise ValueError(f"{rule}: output {key!r} of kind {f.kind!r} cannot be declared")
    for name, items in sections.items():
        if items:
            lines += [f"{ind}{name}:"] + items
    return lines


def render() -> str:
    """The text of dvc.yaml."""
    body = []
    for rule in RULES:
        body += _stage(rule) + [""]
    text = HEADER + "\n".join(body).rstrip() + "\n"
    if re.search(r"\{(dataset|method|ipc|shard|raw|prepared|results|logs|state)\}", text):
        raise ValueError("dvc.yaml: a pattern placeholder was left unfilled")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs from the generated text")
    ap.add_argument("--output", default=str(ROOT / "dvc.yaml"), help="where to write (default: the project's dvc.yaml)")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        try:
            current = open(args.output).read()
        except OSError:
            current = None
        if current != text:
            print(f"{args.output}: differs from stages/common/contract.py; regenerate it with "
                  "`python -m stages.common.dvc_yaml` (or `make dvc.yaml`)", file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w") as f:
        f.write(text)
    print(f"wrote {args.output}: {len(RULES)} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which code each rule runs: the ``atom/`` and ``stages/`` files its command imports,
transitively, read from the source (no module is executed).

- :func:`imports`: the project modules one module imports anywhere in its file (function
  bodies included: a lazy import runs when its function does; ``if TYPE_CHECKING:`` blocks
  left out: they never run);
- :func:`code_deps`: a rule's files, the Snakefile's code inputs and dvc.yaml's code deps.
  Importing ``atom.x`` runs ``atom/__init__.py`` too, which imports nothing itself (its names
  load on first use), so a rule depends on ``atom/x.py`` only if it imports ``atom.x``. In a
  family's command module (``stages/evaluate.py`` runs four rules) the functions named as the
  other rules' ``branch`` are skipped: ``evaluate_full`` does not depend on the selection code
  that only ``evaluate_selected`` runs;
- :func:`code_digest`: a digest of the code that shapes a rule's results, its command and the
  library files it imports (not the pipeline's machinery, which logs and records but computes
  nothing): the distill checkpoint and the pool's member states are keyed by it, so an edit
  elsewhere does not discard them.

A test runs the tiny pipeline and checks that every module a job really loaded is among its
rule's files.

Torch-free: the Snakefile imports it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from .contract import ROOT, RULES

__all__ = ["imports", "code_deps", "library_deps", "code_digest"]

_PACKAGES = ("atom", "stages")


def _module_file(module: str) -> Path:
    parts = module.split(".")
    pkg = ROOT.joinpath(*parts, "__init__.py")
    return pkg if pkg.is_file() else ROOT.joinpath(*parts).with_suffix(".py")


def _is_module(module: str) -> bool:
    return module.split(".")[0] in _PACKAGES and _module_file(module).is_file()


def _parents(module: str) -> list[str]:
    """The packages whose ``__init__`` importing ``module`` runs (``stages.common.x``:
    ``stages``, ``stages.common``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.lru_cache(maxsize=None)
def imports(module: str, skip: frozenset[str] = frozenset()) -> frozenset[str]:
    """The project modules ``module`` imports anywhere in its file, function bodies included,
    except in its top-level functions named in ``skip``."""
    file = _module_file(module)
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(file.read_text())
    nodes = [n for n in tree.body if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in skip)]
    found = set()
    for top in nodes:
        for node in _walk(top):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)  # `from atom import viz`
    return frozenset(m for m in found if _is_module(m))


def _walk(node: ast.AST):
    """``ast.walk`` without ``if TYPE_CHECKING:`` blocks (they never run)."""
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.If) and _type_checking(n.test):
            todo += n.orelse
            continue
        yield n
        todo += ast.iter_child_nodes(n)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _closure(start: str, skip: frozenset[str]) -> set[str]:
    todo, seen = [start], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += _parents(m)
        todo += imports(m, skip if m == start else frozenset())
    return seen


def _skip(rule: str) -> frozenset[str]:
    """The branches of the other rules of ``rule``'s family."""
    r = RULES[rule]
    return frozenset(o.branch for o in RULES.values() if o.cmd == r.cmd and o.name != rule and o.branch)


def _rel(modules) -> list[str]:
    return sorted(str(_module_file(m).relative_to(ROOT)) for m in modules)


def code_deps(rule: str) -> list[str]:
    """The ``atom/`` and ``stages/`` files that ``python -m stages.<command>`` runs for ``rule``,
    transitively, as sorted paths relative to the project root."""
    return _rel(_closure(RULES[rule].module, _skip(rule)))


def library_deps(rule: str) -> list[str]:
    """The files of :func:`code_deps` that shape the rule's results: its command module and the
    library (``atom/``) files; not the machinery (``stages/common/``) nor package markers."""
    r = RULES[rule]
    own = str(_module_file(r.module).relative_to(ROOT))
    return [f for f in code_deps(rule) if f == own or (f.startswith("atom/") and not f.endswith("__init__.py"))]


def code_digest(rule: str) -> str:
    """sha256 over :func:`library_deps` (paths and contents)."""
    h = hashlib.sha256()
    for rel in library_deps(rule):
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()

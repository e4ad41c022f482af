"""Checks a SLURM run makes before it submits anything, so that it can never wait for ever.

Snakemake's SLURM executor learns that a job ended by asking ``sacct`` (which needs SLURM's
accounting database) or ``squeue`` (which forgets a finished job ``MinJobAge`` seconds after it
ends). Asked the wrong way, it never hears that a job finished: with no accounting, ``sacct``
fails, the plugin gives up on the job after five attempts without reporting it, and Snakemake
loops on "No active jobs; skipping status query." for ever, deaf to SIGTERM. And it uses
``squeue`` only while ``MinJobAge`` is at least three times its first status delay
(``init_seconds_before_status_checks``); below that it silently falls back to ``sacct``.

:func:`status_problem` reads the cluster's configuration (``scontrol show config``) and the
executor's settings and says, in one line, why the chosen status command cannot work here and
which profile setting fixes it (None: it works). The Snakefile's ``onstart`` calls
:func:`check_executor`, which stops the run with that line before any job is submitted.

Torch-free.
"""
from __future__ import annotations

import re
import subprocess

__all__ = ["ClusterProblem", "slurm_config", "status_problem", "check_executor"]


class ClusterProblem(RuntimeError):
    """The SLURM run cannot track its jobs on this cluster (the message says how to fix it)."""


def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as {key: value} (empty when scontrol is missing or fails)."""
    try:
        res = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^(\w+)\s*=\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _seconds(value: str | None) -> int | None:
    m = re.match(r"^(\d+)", value or "")
    return int(m.group(1)) if m else None


def status_problem(config: dict[str, str], status_command: str | None, init_seconds: int) -> str | None:
    """Why the executor would not learn that its jobs ended on a cluster of ``config`` (None: it
    would)."""
    accounting = config.get("AccountingStorageType", "")
    no_accounting = accounting in ("", "accounting_storage/none")
    min_age = _seconds(config.get("MinJobAge"))
    command = status_command or "sacct"
    if command == "squeue" and (min_age is None or min_age < 3 * init_seconds):
        if not no_accounting:
            return None  # the plugin falls back to sacct, which this cluster answers
        age = "unknown" if min_age is None else f"{min_age} s"
        return (f"the SLURM executor would fall back from squeue to sacct (MinJobAge is {age}, below 3 x "
                f"slurm-init-seconds-before-status-checks = {3 * init_seconds} s), and sacct cannot answer here "
                f"(AccountingStorageType is {accounting or 'not set'}); set slurm-init-seconds-before-status-checks "
                f"to at most {max(1, (min_age or 0) // 3)} in the profile, or raise MinJobAge")
    if command == "sacct" and no_accounting:
        return ("the SLURM executor would ask sacct for its jobs' states, and this cluster keeps no accounting "
                f"(AccountingStorageType is {accounting or 'not set'}): it would never learn that a job ended; set "
                "slurm-status-command: squeue in the profile (profiles/slurm does)")
    return None


def check_executor(workflow) -> None:
    """Raise :class:`ClusterProblem` if ``workflow`` runs with the SLURM executor on a cluster
    where it could not track its jobs (nothing is submitted then)."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or getattr(plugin, "name", "") != "slurm" or getattr(workflow, "dryrun", False):
        return
    settings = workflow.executor_settings
    problem = status_problem(slurm_config(), getattr(settings, "status_command", None),
                             int(getattr(settings, "init_seconds_before_status_checks", 40) or 40))
    if problem:
        raise ClusterProblem(problem)

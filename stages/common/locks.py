"""One project, one pipeline run at a time, whichever tool starts it; one process per job.

Snakemake locks a project against a second Snakemake, and DVC against a second DVC, but
neither knows the other: started a few seconds apart on one project, both planned the same
missing outputs and computed them twice. So every stage, before any compute:

- :func:`claim_project`: finds the workflow run it belongs to (the nearest ``snakemake`` or
  ``dvc`` process among its parents, read from ``/proc``) and records it in
  ``<paths.logs>/.pipeline.lock``. While another run recorded there is alive (same host, same
  pid and process start time), the stage refuses with one line naming that run
  (:class:`ProjectBusy`, exit code 4, nothing computed), so the second tool stops at its first
  job. A stage started by hand joins no run: it is refused while a run holds the project, and
  claims nothing. A job that a cluster executor runs through an inner Snakemake on another
  node is left to Snakemake's own lock (its parent is not the run that planned it).
- :func:`hold_job`: takes an exclusive ``flock`` on ``<paths.logs>/.locks/<command>/<job>.lock``
  for the process's lifetime (released by the kernel when it ends, a kill included), so two
  processes never compute the same job at once, however they were started.

Linux only (``/proc``, ``fcntl``); elsewhere both are no-ops. Torch-free.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process locks
    fcntl = None

__all__ = ["ProjectBusy", "claim_project", "hold_job", "release_jobs", "workflow_run", "pid_alive", "file_lock"]

_HELD: dict = {}  # path -> the open job-lock file: closing it (process exit) releases the lock


class ProjectBusy(RuntimeError):
    """Another pipeline run (or another process running the same job) holds the project."""


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[19]


def _tool(argv: list[str]) -> str | None:
    """``snakemake`` or ``dvc`` when ``argv`` runs one of them (a console script, or ``-m``)."""
    for i, arg in enumerate(argv[:3]):
        name = Path(arg).name
        if name in ("snakemake", "dvc"):
            return name
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in ("snakemake", "dvc"):
            return argv[i + 1]
    return None


# an inner Snakemake that runs one job for an executor (a cluster node, a subprocess)
_INNER = ("--slurm-jobstep", "--target-jobs", "--mode")


def workflow_run(pid: int | None = None) -> dict | None:
    """The workflow run this process belongs to: the nearest ``snakemake`` or ``dvc`` process
    among its parents, as {tool, pid, start, command}; None for a stage started by hand, or
    where ``/proc`` is missing. An inner Snakemake running one job for an executor gives
    ``{"tool": "snakemake", "inner": True, ...}``."""
    pid = os.getppid() if pid is None else pid
    for _ in range(32):
        stat = _stat(pid)
        if stat is None or pid <= 1:
            return None
        argv = _cmdline(pid)
        tool = _tool(argv)
        if tool is not None:
            return {"tool": tool, "pid": pid, "start": stat[1], "command": " ".join(argv)[:300],
                    "inner": tool == "snakemake" and any(a in _INNER for a in argv)}
        pid = stat[0]
    return None


def _alive(record: dict) -> bool:
    stat = _stat(int(record.get("pid", 0)))
    return stat is not None and stat[1] == record.get("start")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), waited for; a no-op where fcntl
    is missing."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claim_project(logs: Path) -> dict | None:
    """Refuse (:class:`ProjectBusy`) while another live workflow run holds the project; else
    record this process's run (if it has one) as the holder. Returns the run."""
    if fcntl is None:
        return None
    run = workflow_run()
    if run is not None and run["inner"]:
        return run
    logs.mkdir(parents=True, exist_ok=True)
    record, host = logs / ".pipeline.lock", socket.gethostname()
    with file_lock(logs / ".pipeline.lock.flock"):  # one reader-writer of the record at a time
        try:
            held = json.loads(record.read_text())
        except (OSError, ValueError):
            held = None
        mine = run is not None and held is not None and (held.get("pid"), held.get("start")) == (run["pid"], run["start"])
        if held and held.get("host") == host and not mine and _alive(held):
            raise ProjectBusy(f"another pipeline run is using this project: `{held['command']}` (pid {held['pid']}, "
                              f"since {held['since']}); wait for it to end (or stop it), then rerun")
        if run is not None and not mine:
            tmp = record.with_name(f".pipeline.lock.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**run, "host": host, "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
            os.replace(tmp, record)
    return run


def hold_job(logs: Path, command: str, job: str) -> None:
    """Hold the job's lock until this process ends; :class:`ProjectBusy` if another process
    holds it now."""
    if fcntl is None:
        return
    folder = logs / ".locks" / command
    folder.mkdir(parents=True, exist_ok=True)
    where = (folder / f"{job}.lock").resolve()
    if where in _HELD:  # this process holds it already (a stage run twice in one process)
        return
    f = open(where, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "another process"
        f.close()
        raise ProjectBusy(f"job {command} {job} is being computed by {other} right now; wait for it to end, "
                          "then rerun") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    _HELD[where] = f


def release_jobs() -> None:
    """Release the job locks this process holds (a stage run in-process ends; a process that
    exits releases them anyway)."""
    while _HELD:
        _HELD.popitem()[1].close()

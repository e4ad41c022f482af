"""A one-node SLURM cluster on this machine, for the tests and for trying the cluster path on a
workstation: munge, slurmctld and slurmd (optionally slurmdbd with MariaDB, for `sacct`), two
partitions (`cpu`, the default, and `gpu`) on the one node, and fake GPUs on a CPU machine.

    sudo python scripts/slurm_cluster.py start [--dir /tmp/atom-slurm] [--gpus 2] [--accounting]
    sinfo; sbatch --wrap hostname; snakemake --profile profiles/slurm
    sudo python scripts/slurm_cluster.py stop  [--dir /tmp/atom-slurm]
    python scripts/slurm_cluster.py status [--dir /tmp/atom-slurm]

`start` writes `slurm.conf` (and `gres.conf`) into ``--dir`` and links `/etc/slurm/slurm.conf`
to it (the commands inside a job, `srun` among them, read the default path; a machine whose
`/etc/slurm/slurm.conf` is something else is refused), starts each daemon in the foreground
(`-D`) as a child in its own session, records the pids it started in ``<dir>/pids.json``, and
returns once the node is idle (or stops what it started and says why). `stop` ends exactly
those daemons and removes the link. Every refusal is one line: not root, a package missing (it
names the `apt-get` line), a hostname that does not resolve, another SLURM configuration, a
cluster already running from that folder.

Settings that mattered on a 2-CPU VM without systemd (docs/cluster.md): `select/cons_tres` with
`CR_Core`; `SlurmdParameters=config_overrides` with the machine's memory as `RealMemory`;
`proctrack/linuxproc` and `task/none` (no cgroups); `MinJobAge=600`, so `squeue` still shows a
finished job to Snakemake's status queries; fake GPUs as one `gres.conf` line per GPU, each
naming another character device (`Count=2` without files marks the node INVAL, then DRAIN).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages.common.locks import pid_alive  # noqa: E402  (stdlib only: runs under the system python)

DEFAULT_DIR = Path("/tmp/atom-slurm")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
DAEMONS = ("munged", "slurmctld", "slurmd")
ACCOUNTING = ("mysqld", "slurmdbd")
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
APT = "apt-get install -y slurm-wlm munge"


class Refused(Exception):
    """This machine cannot run the cluster (the message says why and what to do)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
                                       if p.is_file()), None)


def check_machine(accounting: bool = False) -> str:
    """The node's name, or :class:`Refused` naming what is missing."""
    if os.geteuid() != 0:
        raise Refused("needs root: it starts munged, slurmctld and slurmd (run it with sudo)")
    for name in DAEMONS + ("sinfo", "sbatch", "squeue", "scontrol"):
        if _which(name) is None:
            raise Refused(f"{name} not found: install the packages first ({APT})")
    if accounting:
        for name in ACCOUNTING + ("mysql",):
            if _which(name) is None:
                raise Refused(f"{name} not found: --accounting needs slurmdbd and MariaDB "
                              "(apt-get install -y slurmdbd mariadb-server)")
    host = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(host)
    except OSError:
        raise Refused(f"hostname {host!r} does not resolve: add it to /etc/hosts (127.0.0.1 {host})") from None
    return host


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def write_config(folder: Path, host: str, gpus: int, accounting: bool) -> Path:
    """slurm.conf and gres.conf for one node holding partitions cpu and gpu; returns slurm.conf."""
    for sub in ("state", "spool", "log", "run"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    memory = max(1024, _memory_mb() - 512)  # what jobs may ask for (mem_mb), the OS aside
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    lines = [
        "# written by scripts/slurm_cluster.py: a one-node test cluster",
        "ClusterName=atom",
        f"SlurmctldHost={host}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmdParameters=config_overrides",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        # a finished job stays visible to squeue for 10 minutes: Snakemake's status queries see it end
        "MinJobAge=600",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "KillWait=10",
        "MpiDefault=none",
    ]
    if accounting:
        lines += ["AccountingStorageType=accounting_storage/slurmdbd", f"AccountingStorageHost={host}",
                  "JobCompType=jobcomp/none"]
    else:
        lines += ["AccountingStorageType=accounting_storage/none"]
    if gpus:
        lines.append("GresTypes=gpu")
    lines += [f"NodeName={host} CPUs={cpus} RealMemory={memory}{gres} State=UNKNOWN",
              f"PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP",
              f"PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP"]
    conf = folder / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    gres_lines = [f"NodeName={host} Name=gpu File={FAKE_GPU_FILES[i]}" for i in range(gpus)]
    (folder / "gres.conf").write_text("\n".join(gres_lines) + ("\n" if gres_lines else ""))
    (folder / "cgroup.conf").unlink(missing_ok=True)  # none: proctrack/linuxproc and task/none need no cgroups
    return conf


def _spawn(argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_idle(env: dict, host: str, timeout: float, procs: dict) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise Refused(f"{name} exited with code {p.returncode} during start-up (see its log)")
        res = subprocess.run(["sinfo", "-h", "-N", "-n", host, "-o", "%T"], env=env, capture_output=True, text=True)
        state = res.stdout.strip()
        if res.returncode == 0 and state and all(s.startswith("idle") for s in state.split()):
            return
        time.sleep(0.3)
    raise Refused(f"the node is not idle after {timeout:.0f} s (sinfo says {state or 'nothing'}; see the logs)")


def start(folder: Path, gpus: int, accounting: bool, timeout: float = 60.0) -> dict:
    """Start the daemons; return {name: pid} once the node is idle."""
    host = check_machine(accounting)
    folder = folder.resolve()
    pids_file = folder / "pids.json"
    if pids_file.exists() and any(pid_alive(p) for p in json.loads(pids_file.read_text()).values()):
        raise Refused(f"a cluster started from {folder} is running; stop it first (slurm_cluster.py stop --dir {folder})")
    if not 0 <= gpus <= len(FAKE_GPU_FILES):
        raise Refused(f"--gpus: between 0 and {len(FAKE_GPU_FILES)}, got {gpus}")
    if (SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink()) and not _ours(SYSTEM_CONF):
        raise Refused(f"{SYSTEM_CONF} exists and is not this script's: this machine has a SLURM configuration "
                      "of its own (a real cluster?); leaving it alone")
    conf = write_config(folder, host, gpus, accounting)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.unlink(missing_ok=True)
    SYSTEM_CONF.symlink_to(conf)
    env = dict(os.environ, SLURM_CONF=str(conf))
    started: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    try:
        munge_dir = folder / "run" / "munge"
        munge_dir.mkdir(parents=True, exist_ok=True)
        # munged refuses root without --force; its socket where slurm looks for it by default
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        started["munged"] = _spawn([_which("munged"), "--foreground", "--force",
                                    "--pid-file", str(munge_dir / "munged.pid"),
                                    "--log-file", str(folder / "log" / "munged.log")],
                                   folder / "log" / "munged.out", env)
        for _ in range(50):
            if Path("/run/munge/munge.socket.2").exists():
                break
            time.sleep(0.1)
        if accounting:
            started.update(_start_accounting(folder, host, env))
        started["slurmctld"] = _spawn([_which("slurmctld"), "-D", "-f", str(conf)], folder / "log" / "slurmctld.out",
                                      env)
        time.sleep(0.5)
        started["slurmd"] = _spawn([_which("slurmd"), "-D", "-f", str(conf), "-N", host], folder / "log" / "slurmd.out",
                                   env)
        pids_file.write_text(json.dumps({k: p.pid for k, p in started.items()}) + "\n")
        _wait_idle(env, host, timeout, started)
    except BaseException:
        _stop_pids({k: p.pid for k, p in started.items()})
        pids_file.unlink(missing_ok=True)
        _unlink_conf()
        raise
    return {"pids": {k: p.pid for k, p in started.items()}, "conf": str(conf), "host": host,
            "seconds": time.monotonic() - t0}


def _start_accounting(folder: Path, host: str, env: dict) -> dict:
    """MariaDB and slurmdbd, for `sacct` (Snakemake's default status command)."""
    db = folder / "mysql"
    started = {}
    if not (db / "mysql").exists():
        subprocess.run(["mysql_install_db", f"--datadir={db}", "--user=root", "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True)
    sock = folder / "run" / "mysqld.sock"
    started["mysqld"] = _spawn([_which("mysqld"), f"--datadir={db}", "--user=root", f"--socket={sock}",
                                "--skip-networking=0", "--port=3307", "--bind-address=127.0.0.1"],
                               folder / "log" / "mysqld.out", env)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.1)
    subprocess.run(["mysql", f"--socket={sock}", "-uroot", "-e",
                    "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' "
                    "IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"], check=True)
    dbd = folder / "slurmdbd.conf"
    dbd.write_text("\n".join([
        "AuthType=auth/munge", f"DbdHost={host}", "SlurmUser=root", "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1", "StoragePort=3307", "StorageUser=slurm", "StoragePass=slurm",
        "StorageLoc=slurm_acct_db", f"PidFile={folder / 'run' / 'slurmdbd.pid'}",
        f"LogFile={folder / 'log' / 'slurmdbd.log'}"]) + "\n")
    dbd.chmod(0o600)
    started["slurmdbd"] = _spawn([_which("slurmdbd"), "-D"], folder / "log" / "slurmdbd.out",
                                 dict(env, SLURM_CONF=str(folder / "slurm.conf")))
    time.sleep(2)
    return started


def _ours(link: Path) -> bool:
    """Whether ``link`` is a symlink this script made (to a slurm.conf it wrote)."""
    try:
        target = Path(os.readlink(link))
        return target.name == "slurm.conf" and "scripts/slurm_cluster.py" in target.read_text().splitlines()[0]
    except (OSError, IndexError):
        return False


def _unlink_conf() -> None:
    if SYSTEM_CONF.is_symlink() and _ours(SYSTEM_CONF):
        SYSTEM_CONF.unlink()


def _stop_pids(pids: dict[str, int], wait: float = 15.0) -> list[str]:
    """SIGTERM each (slurmd first, munged last), then SIGKILL what is left after ``wait`` s."""
    order = [n for n in ("slurmd", "slurmctld", "slurmdbd", "mysqld", "munged") if n in pids]
    stopped = []
    for name in order:
        try:
            os.killpg(pids[name], signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + wait
        while pid_alive(pids[name]) and time.monotonic() < deadline:
            try:
                os.waitpid(pids[name], os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if pid_alive(pids[name]):
            os.killpg(pids[name], signal.SIGKILL)
        stopped.append(name)
    return stopped


def stop(folder: Path) -> list[str]:
    """Stop exactly the daemons `start` started from ``folder``."""
    pids_file = folder.resolve() / "pids.json"
    if not pids_file.exists():
        return []
    stopped = _stop_pids(json.loads(pids_file.read_text()))
    pids_file.unlink()
    _unlink_conf()
    return stopped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("start", "stop", "status"))
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where its config, state and logs go ({DEFAULT_DIR})")
    ap.add_argument("--gpus", type=int, default=2, help="fake GPUs on the node (gres, each a character device)")
    ap.add_argument("--accounting", action="store_true", help="also MariaDB and slurmdbd, so sacct works")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node to be idle")
    a = ap.parse_args(argv)
    try:
        if a.action == "start":
            info = start(a.dir, a.gpus, a.accounting, a.timeout)
            print(f"cluster up in {info['seconds']:.1f} s on node {info['host']} ({', '.join(info['pids'])}), "
                  f"configured by {info['conf']} (linked as {SYSTEM_CONF})")
        elif a.action == "stop":
            stopped = stop(a.dir)
            print(f"stopped {', '.join(stopped)}" if stopped else f"nothing started from {a.dir.resolve()}")
        else:
            pids_file = a.dir.resolve() / "pids.json"
            pids = json.loads(pids_file.read_text()) if pids_file.exists() else {}
            print(json.dumps({k: {"pid": v, "alive": pid_alive(v)} for k, v in pids.items()}))
    except Refused as exc:
        print(f"slurm_cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

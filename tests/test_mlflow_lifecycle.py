"""MLflow records that live with their stage: a run opened before the compute and streamed
while it runs, ended FAILED with the error on an exception or SIGTERM; no lost runs when two
pipelines share one fresh SQLite store; an unreachable server stops the stage before any
compute (``mlflow.required``) or is a warning. Every store lives in a temp folder; servers are
loopback sockets."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline_support import ROOT, make_project, project_env, tiny_params
from stages.common import signals, tracking

pytestmark = pytest.mark.timeout(600)

PY = sys.executable


def _stage(root: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", *args], cwd=root, env=env or project_env(root), capture_output=True,
                          text=True, timeout=timeout)


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _runs(root: Path, query: str = "") -> list:
    client = _client(root)
    exp = client.get_experiment_by_name("atom-digits")
    return [] if exp is None else client.search_runs([exp.experiment_id], query, max_results=500)


# ------------------------------------------------------------------ two pipelines, one store

WORKER = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from pipeline_support import tiny_params
    from stages.common.tracking import Tracker
    import mlflow.tracking  # imported before the start signal: both processes then race on the store
    tmp, name, n, rounds = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    for rnd in range(rounds):  # a fresh store per round, both pipelines released at once
        here = tmp / f"round{rnd}"
        params = tiny_params({"paths": {"logs": str(here / name / "logs")},
                              "mlflow": {"artifact_root": str(here / "artifacts"),
                                         "tracking_uri": f"sqlite:///{here / 'mlflow.db'}"}})
        (tmp / f"{name}.ready{rnd}").touch()
        while not (tmp / f"go{rnd}").exists():
            time.sleep(0.002)
        tracker = Tracker(params, "digits", logging.getLogger(name))
        for i in range(n):
            with tracker.run("download", name, i, name=f"{name}/{i}") as run:
                run.log_params({"pipeline": name, "i": i})
                run.log_metrics({"value": i, "twice": 2 * i})
""")


def test_two_concurrent_pipelines_share_a_fresh_sqlite_store_without_losing_runs(tmp_path):
    # the setting: two pipelines (different paths.logs) start on one store that does not
    # exist yet; the first writer creates and migrates it under the lock beside the database
    (tmp_path / "worker.py").write_text(WORKER)
    tests = str(Path(__file__).resolve().parent)
    n, names, rounds = 7, ("left", "right"), 5
    env = dict(project_env(ROOT), PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI")  # each round's store comes from mlflow.tracking_uri
    procs = [subprocess.Popen([PY, str(tmp_path / "worker.py"), tests, str(tmp_path), name, str(n), str(rounds)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in names]
    try:
        for rnd in range(rounds):
            deadline = time.monotonic() + 200
            while not all((tmp_path / f"{name}.ready{rnd}").exists() for name in names):
                assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "a worker died"
                time.sleep(0.005)
            (tmp_path / f"go{rnd}").touch()
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not [line for o in outs for line in o.splitlines() if "mlflow:" in line and "failed" in line], outs
    from mlflow.tracking import MlflowClient

    for rnd in range(rounds):
        assert (tmp_path / f"round{rnd}/mlflow.db.lock").exists()
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / f'round{rnd}' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("atom-digits").experiment_id], max_results=100)
        assert len(runs) == n * len(names), f"round {rnd}: {len(runs)} runs"
        for r in runs:
            assert r.info.status == "FINISHED"
            i = int(r.data.tags["ipc"])
            assert r.data.params == {"pipeline": r.data.tags["method"], "i": str(i)}
            assert r.data.metrics == {"value": i, "twice": 2 * i}
        assert {(r.data.tags["method"], r.data.tags["ipc"]) for r in runs} == {(m, str(i)) for m in names
                                                                                for i in range(n)}


def test_the_lock_of_a_sqlite_store_sits_beside_the_database(tmp_path):
    params = tiny_params({"paths": {"logs": "elsewhere"}})
    assert tracking.lock_path(params, f"sqlite:///{tmp_path}/x/m.db") == tmp_path / "x/m.db.lock"
    assert tracking.lock_path(params, "sqlite:///m.db") == Path("m.db.lock")
    assert tracking.lock_path(params, "http://127.0.0.1:5000") == Path("elsewhere/.mlflow.lock")


# ------------------------------------------------------------------ unreachable servers

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


@pytest.fixture()
def silent_server():
    """A loopback socket that accepts connections (the kernel's backlog) but never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.mark.parametrize("server", ["closed", "silent"])
def test_an_unreachable_server_stops_the_stage_before_any_compute(tmp_path, server, silent_server):
    uri = f"http://127.0.0.1:{_closed_port()}" if server == "closed" else silent_server
    root = make_project(tmp_path / "p")
    (root / "data/prepared").mkdir(parents=True)  # an input in place: a missing one is refused first
    (root / "data/prepared/digits.pt").write_bytes(b"never read")
    env = dict(project_env(root), MLFLOW_TRACKING_URI=uri)
    t0 = time.monotonic()
    res = _stage(root, "stages.distill", "--dataset", "digits", "--method", "atom", "--ipc", "1", env=env)
    seconds = time.monotonic() - t0
    print(f"{server} server: the stage stopped after {seconds:.1f} s (probe bound "
          f"{tracking.PROBE_TIMEOUT:.0f} s + start-up)")
    assert res.returncode == 3, res.stderr[-2000:]
    assert uri in res.stderr and "unreachable" in res.stderr
    log = (root / "logs/distill/digits-atom-ipc1.log").read_text()
    assert uri in log and "distilling" not in log  # before any compute: no data read, no output
    assert not (root / "results").exists() and not (root / "state").exists()
    assert tracking.PROBE_TIMEOUT + 2 <= 6  # the probe's own bound, leaving the start-up 4 s of 10


def test_an_unreachable_server_is_a_warning_when_not_required(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    root = make_project(tmp_path / "p", {"mlflow": {"required": False}})
    res = _stage(root, "stages.download", "--dataset", "digits", env=dict(project_env(root), MLFLOW_TRACKING_URI=uri))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "WARNING" in res.stderr and uri in res.stderr and "recording nothing" in res.stderr
    assert (root / "results/download/digits.json").is_file()


# ------------------------------------------------------------------ a run that lives with its stage

def test_a_stage_that_raises_ends_its_run_failed_with_the_error(tmp_path):
    root = make_project(tmp_path / "p")
    # a missing input is refused before the run opens (tests/test_user_errors.py); a corrupt one
    # is met by the compute, inside the run
    prepared = root / "data/prepared/digits.pt"
    prepared.parent.mkdir(parents=True)
    prepared.write_bytes(b"not a tensor file")
    res = _stage(root, "stages.evaluate", "--dataset", "digits", "--method", "random", "--ipc", "1")
    assert res.returncode != 0
    (run,) = _runs(root)
    assert run.info.status == "FAILED" and run.data.tags["stage"] == "evaluate"
    assert "UnreadableFileError" in run.data.tags["error"] and "data/prepared/digits.pt" in run.data.tags["error"]
    assert run.data.params["seeds"] == "[0, 1]"  # opened (with its params) before the compute


def test_a_distill_run_streams_while_it_runs_and_ends_failed_on_sigterm(tmp_path):
    root = make_project(tmp_path / "p", {"distill": {"iterations": 100000, "log_every": 5, "validate_every": 0,
                                                     "checkpoint_every": 1000}})
    for stage in ("download", "zca"):
        res = _stage(root, f"stages.{stage}", "--dataset", "digits")
        assert res.returncode == 0, res.stderr[-2000:]
    env = project_env(root)
    proc = subprocess.Popen([PY, "-m", "stages.distill", "--dataset", "digits", "--method", "atom", "--ipc", "1"],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.monotonic() + 240, []
        while len(seen) < 3:  # three loss values streamed while the stage computes
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no live loss values within 240 s"
            time.sleep(0.5)
            try:  # the stage writes meanwhile: a read may meet a locked database
                runs = _runs(root, "tags.stage = 'distill'")
                seen = _client(root).get_metric_history(runs[0].info.run_id, "loss") if runs else []
            except Exception:  # noqa: BLE001 - retried
                continue
            if runs:
                assert len(runs) == 1 and runs[0].info.status == "RUNNING"
                run = runs[0]
        assert sorted(m.step for m in seen)[:3] == [5, 10, 15]
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    run = _client(root).get_run(run.info.run_id)
    assert run.info.status == "FAILED" and "SIGTERM" in run.data.tags["error"]
    assert "stage stopped: terminated by SIGTERM" in (root / "logs/distill/digits-atom-ipc1.log").read_text()


# ------------------------------------------------------------------ a signal in the middle of a write

SWEEP = textwrap.dedent("""
    import contextlib, json, logging, os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from pipeline_support import tiny_params
    from stages.common import signals
    from stages.common.tracking import Tracker
    from mlflow.tracking import MlflowClient
    here, signame = Path(sys.argv[2]), sys.argv[3]
    signum = getattr(signal, signame)
    params = tiny_params({"paths": {"logs": str(here / "logs")},
                          "mlflow": {"artifact_root": str(here / "artifacts"),
                                     "tracking_uri": f"sqlite:///{here / 'mlflow.db'}"}})
    tracker = Tracker(params, "digits", logging.getLogger("sweep"))
    client = MlflowClient(f"sqlite:///{here / 'mlflow.db'}")
    # where a half-entered context manager keeps a lock: contextlib, the store's lock, MLflow's sessions
    WATCH = ("contextlib.py", os.sep + os.path.join("stages", "common", "tracking.py"),
             os.sep + os.path.join("stages", "common", "signals.py"), os.sep + os.path.join("mlflow", "store", "db", "utils.py"))
    state = {}

    def tracer(frame, event, arg):
        if frame.f_code.co_filename.endswith(WATCH):
            state["n"] += 1
            if state["n"] == state["target"]:
                sys.settrace(None)
                state["where"] = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} ({event})"
                os.kill(os.getpid(), signum)
        return tracer

    def main(argv):
        sys.settrace(tracer)  # from the run's creation on: a signal there must not leave it RUNNING
        try:
            run = signals.enter(signals.register(contextlib.ExitStack()),
                                tracker.run("distill", "atom", 1, extra_tags={"target": str(state["target"])}))
            run.log_metrics({"loss": 0.5}, step=5)
        finally:
            sys.settrace(None)
        time.sleep(0.2)  # a signal sent at the write's last traced event lands here at the latest


    def stuck(signum, frame):
        print(json.dumps({"target": state["target"], "stuck": state.get("where")}), flush=True)
        os._exit(1)

    signal.signal(signal.SIGALRM, stuck)
    target = 0
    while True:
        target += 1
        state.update(n=0, target=target, where=None)
        signal.alarm(20)  # a run that cannot end within 20 s is stuck on a lock it holds itself
        t0 = time.monotonic()
        try:
            signals.call(main, [])
            raised = None
        except (signals.Terminated, KeyboardInterrupt) as exc:
            raised = type(exc).__name__
        signal.alarm(0)
        if state["where"] is None:
            break  # the write has fewer traced events than this target
        # the runs this target created: none when the signal came before the creation
        new = client.search_runs([tracker.experiment_id], f"tags.target = '{target}'")
        print(json.dumps({"target": target, "where": state["where"], "raised": raised,
                          "statuses": [r.info.status for r in new], "errors": [r.data.tags.get("error") for r in new],
                          "seconds": time.monotonic() - t0}), flush=True)
""")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_at_any_point_of_a_runs_creation_or_a_write_still_ends_it_failed_at_once(tmp_path, signame):
    # the signal is sent at each traced line of contextlib, the tracker and its store's lock and
    # MLflow's session maker, from the run's creation through one metrics write; raised there, it
    # used to leave the lock (or a SQLite write transaction) held by a half-entered context
    # manager, and the writes that end the run waited on it for ever (or 20 s per attempt); or,
    # in the creation, a run RUNNING. It must be held until the write is done, and every run
    # created must end FAILED with the signal as its error.
    (tmp_path / "sweep.py").write_text(SWEEP)
    env = dict(project_env(ROOT), PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI")
    tests = str(Path(__file__).resolve().parent)
    res = subprocess.run([PY, str(tmp_path / "sweep.py"), tests, str(tmp_path), signame], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=500)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    stuck = [r for r in rows if "stuck" in r]
    assert not stuck and res.returncode == 0, (stuck, res.stderr[-3000:])
    assert len(rows) >= 20, rows  # the write passes through that many points at least
    exc = "Terminated" if signame == "SIGTERM" else "KeyboardInterrupt"
    created = [r for r in rows if r["statuses"]]
    assert len(created) >= 20 and len(rows) - len(created) >= 5, rows  # both windows were hit
    for r in rows:
        assert r["raised"] == exc and r["seconds"] < 10 and r["statuses"] in ([], ["FAILED"]), r
        assert all(e.startswith(exc) and (signame != "SIGTERM" or "SIGTERM" in e) for e in r["errors"]), r


@pytest.mark.parametrize("signame,exc", [("SIGTERM", signals.Terminated), ("SIGINT", KeyboardInterrupt)])
def test_a_shielded_block_finishes_before_the_signal_is_raised(signame, exc):
    done = []

    def main(argv):
        with signals.shielded():
            with signals.shielded():  # nested: raised when the outermost block ends
                os.kill(os.getpid(), getattr(signal, signame))
                time.sleep(0.05)  # the handler has run by now, and held the signal
                done.append("inner")
            done.append("outer")
        done.append("after")  # never reached

    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    with pytest.raises(exc):
        signals.call(main, [])
    assert done == ["inner", "outer"]
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == before  # restored


def test_further_signals_are_ignored_while_the_runs_end():
    ended = []

    def main(argv):
        stack = signals.register(contextlib.ExitStack())

        @stack.push
        def end(*exc_info):  # a run's last writes, interrupted by a second and a third signal
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            ended.append(exc_info[0])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted

    with pytest.raises(signals.Terminated, match="SIGTERM"):
        signals.call(main, [])
    assert ended == [signals.Terminated]

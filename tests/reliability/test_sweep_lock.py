"""One sweep at a time per experiment folder, and no parent run left RUNNING forever (issue 7, scope 4).

The lock itself is tested with real processes (a holder killed with SIGKILL, a holder whose forked child keeps the
lock); the sweep tests use real MLflow (sqlite) and, for the slow ones, real local Ray driven through the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.lock import LOCK_FILE, SweepLock, SweepLockedError, lock_experiment
from tests.cluster.helpers import tiny_sweep_config

REPO = Path(__file__).resolve().parents[2]
NAME, EXPERIMENT, MODEL = "t_lock", "t_lock_exp", "t-lock-model"
HOLD = ("import sys, time; from cluster.lock import SweepLock; SweepLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything in its session (Ray's agents outlive a killed driver otherwise)."""
    sid = proc.pid
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                if os.getsid(int(pid_dir.name)) == sid:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- the lock -------------------------------------------------------------------------------------------------

def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    folder = tmp_path / "storage" / "exp"
    with SweepLock(folder, "exp") as lock:
        assert lock.held
        record = json.loads((folder / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["started"] and record["command"]
    assert not lock.held and not (folder / LOCK_FILE).exists()
    with SweepLock(folder, "exp"):  # free again
        pass


def test_second_acquire_fails_naming_the_holder(tmp_path):
    holder = _python(HOLD, str(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(SweepLockedError) as err:
            SweepLock(tmp_path, "exp").acquire()
        assert time.monotonic() - started < 1.5  # fails at once, does not wait for the holder
        message = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and "already running" in message
        assert f"kill {holder.pid}" in message and "another `name`" in message
        assert isinstance(err.value, ValueError)  # the CLI turns it into exit 2
        # Inside one process a second lock object is refused too (flock belongs to the open file, not the pid).
        holder_in_process = SweepLock(tmp_path / "mine").acquire()
        with pytest.raises(SweepLockedError, match=f"pid {os.getpid()}"):
            SweepLock(tmp_path / "mine").acquire()
        holder_in_process.release()
    finally:
        _kill_session(holder)


def test_sigkilled_holder_leaves_a_lock_the_next_run_takes_over(tmp_path, capsys):
    holder = _python(HOLD, str(tmp_path))
    assert holder.stdout.readline().strip() == "held"
    _kill_session(holder)
    assert (tmp_path / LOCK_FILE).exists()  # the record stays; the kernel dropped the flock with the process
    with SweepLock(tmp_path, "exp") as lock:
        assert lock.held
    err = capsys.readouterr().err
    assert "taking over the stale lock" in err and f"pid {holder.pid}" in err and "that process is gone" in err


@pytest.mark.parametrize("make_record, why", [
    (lambda: {"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}, "that process is gone"),
    # A live pid whose start time differs from the record: the pid was reused by another process.
    (lambda: {"pid": os.getppid(), "host": socket.gethostname(), "start_ticks": -1, "started": "then"},
     "its pid now belongs to another process"),
])
def test_stale_record_is_taken_over_with_a_warning(tmp_path, capsys, make_record, why):
    (tmp_path / LOCK_FILE).write_text(json.dumps(make_record()))
    with SweepLock(tmp_path, "exp"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert why in capsys.readouterr().err


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_released_on_exception_and_interrupt(tmp_path, error):
    with pytest.raises(error), SweepLock(tmp_path, "exp"):
        raise error("boom")
    assert not (tmp_path / LOCK_FILE).exists()
    SweepLock(tmp_path, "exp").acquire().release()


def test_a_forked_child_keeping_the_lock_is_named(tmp_path):
    """The recorded holder died but a child it forked (without exec) still holds the lock: refuse and say so."""
    code = ("import os, sys, time; from cluster.lock import SweepLock; SweepLock(sys.argv[1]).acquire()\n"
            "if os.fork() == 0:\n    time.sleep(120)\nelse:\n    print(os.getpid(), flush=True); os._exit(0)")
    proc = _python(code, str(tmp_path))
    try:
        parent_pid = int(proc.stdout.readline())
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{parent_pid}") and time.time() < deadline:
            time.sleep(0.05)  # the parent was reaped by us or init
        proc.wait()
        with pytest.raises(SweepLockedError, match="a process it forked still holds the lock"):
            SweepLock(tmp_path, "exp").acquire()
    finally:
        _kill_session(proc)


def test_without_flock_the_record_still_refuses_a_live_holder(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "started": "now"}))
    with pytest.raises(SweepLockedError, match=f"pid {os.getppid()}"):
        SweepLock(tmp_path, "exp").acquire()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with SweepLock(tmp_path, "exp") as lock:
        assert lock.held
    assert "does not support locks" in capsys.readouterr().err
    assert not (tmp_path / LOCK_FILE).exists()


def test_object_store_runs_unlocked_and_says_so(capsys):
    with lock_experiment("s3://bucket/ray_results", "exp") as lock:
        assert not lock.held
    assert "object store, which has no locks" in capsys.readouterr().err


# ---- the sweep ------------------------------------------------------------------------------------------------

@pytest.fixture()
def config(tmp_path, msp_functionals):
    out, _ = msp_functionals
    return tiny_sweep_config(tmp_path, out / "msp_podcast" / "functionals", NAME, EXPERIMENT, MODEL)


def _client(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.search_experiments()  # create the schema now: two processes migrating one new sqlite file race
    return client


def _parents(client):
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], f"tags.sweep = '{NAME}' and tags.`emotune.role` = 'sweep'")


def _fake_sweep_runs(client, folder_tag: str | None = None) -> dict:
    """What a SIGKILLed driver leaves in MLflow: a RUNNING parent, a RUNNING and a FINISHED child."""
    from cluster import tracking

    exp_id = tracking.ensure_experiment(client, EXPERIMENT)
    tags = {"sweep": NAME, tracking.ROLE_TAG: "sweep"}
    if folder_tag:
        tags[tracking.FOLDER_TAG] = folder_tag
    parent = client.create_run(exp_id, run_name=NAME, tags=tags).info.run_id
    kids = {}
    for status in ("RUNNING", "FINISHED"):
        run = client.create_run(exp_id, tags={tracking.PARENT_TAG: parent, tracking.ROLE_TAG: "search",
                                              "sweep": NAME}).info.run_id
        if status == "FINISHED":
            client.set_terminated(run, "FINISHED")
        kids[status] = run
    return {"parent": parent, **kids}


class _StopAfterParent(Exception):
    """Raised where Ray would start: the MLflow bookkeeping before it is what these tests check."""


@pytest.fixture()
def no_ray(monkeypatch):
    from cluster import ray_runtime

    def stop(**_):
        raise _StopAfterParent

    monkeypatch.setattr(ray_runtime, "init_ray", stop)


def test_second_run_of_a_locked_sweep_exits_2_before_mlflow_or_ray(tmp_path, config, capsys):
    import ray

    from cluster.cli import main

    with SweepLock(tmp_path / "ray_results" / NAME, NAME):
        assert main(["sweep", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"sweep {NAME!r} is already running: pid {os.getpid()} on host {socket.gethostname()}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not ray.is_initialized()
    assert not (tmp_path / "ray_results" / NAME / "emotune_sweep.json").exists()


def test_running_parent_of_a_vanished_folder_is_marked_failed(tmp_path, config, no_ray, capsys):
    from cluster import tracking
    from cluster.sweep import _folder_tag, run_sweep

    client = _client(tmp_path)
    ours = _fake_sweep_runs(client)  # made before the folder tag existed: no tag -> this folder's
    elsewhere = _fake_sweep_runs(client, folder_tag="otherhost:/elsewhere/t_lock")
    history = _fake_sweep_runs(client, folder_tag=_folder_tag(str(tmp_path / "ray_results"), NAME))
    for run in (history["parent"], history["RUNNING"]):
        client.set_terminated(run, "FINISHED")

    with pytest.raises(_StopAfterParent):
        run_sweep(config)
    state = json.loads((tmp_path / "ray_results" / NAME / "emotune_sweep.json").read_text())
    new = state["parent_run_id"]
    assert new not in {ours["parent"], elsewhere["parent"], history["parent"]}
    assert client.get_run(new).data.tags[tracking.FOLDER_TAG] == _folder_tag(str(tmp_path / "ray_results"), NAME)

    old = client.get_run(ours["parent"])
    assert old.info.status == "FAILED"
    assert old.data.tags[tracking.ABANDONED_TAG] == f"experiment folder missing; superseded by {new}"
    assert client.get_run(ours["RUNNING"]).info.status == "FAILED"
    assert tracking.ABANDONED_TAG in client.get_run(ours["RUNNING"]).data.tags
    assert client.get_run(ours["FINISHED"]).info.status == "FINISHED"  # finished children are results, kept
    assert tracking.ABANDONED_TAG not in client.get_run(ours["FINISHED"]).data.tags
    # Another folder's RUNNING parent may be live: reported, left alone. A FINISHED parent is history.
    assert client.get_run(elsewhere["parent"]).info.status == "RUNNING"
    assert client.get_run(history["parent"]).info.status == "FINISHED"
    assert tracking.ABANDONED_TAG not in client.get_run(history["parent"]).data.tags

    err = capsys.readouterr().err
    assert f"MLflow parent run {ours['parent']} of sweep {NAME!r} was still RUNNING" in err and new in err
    assert f"{elsewhere['parent']} of sweep {NAME!r} is RUNNING, started from otherhost:/elsewhere/t_lock" in err
    assert not (tmp_path / "ray_results" / NAME / LOCK_FILE).exists()  # released on the exception


def test_fresh_takes_the_lock_and_supersedes_the_running_parent(tmp_path, config, no_ray, capsys):
    from cluster import tracking
    from cluster.sweep import _folder_tag, run_sweep

    client = _client(tmp_path)
    exp_dir = tmp_path / "ray_results" / NAME
    with pytest.raises(_StopAfterParent):
        run_sweep(config)  # leaves its parent FAILED; make it look like a killed driver's
    first = json.loads((exp_dir / "emotune_sweep.json").read_text())["parent_run_id"]
    client.update_run(first, status="RUNNING")
    (exp_dir / "old_trial").mkdir()
    (tmp_path / "ray_results" / f"{NAME}-repeats").mkdir()

    with SweepLock(exp_dir, NAME), pytest.raises(SweepLockedError):
        run_sweep(config, fresh=True)  # --fresh never discards a live run's folder
    assert (exp_dir / "old_trial").exists()

    with pytest.raises(_StopAfterParent):
        run_sweep(config, fresh=True)
    second = json.loads((exp_dir / "emotune_sweep.json").read_text())["parent_run_id"]
    assert second != first and not (exp_dir / "old_trial").exists()
    assert not (tmp_path / "ray_results" / f"{NAME}-repeats").exists() or \
        not any((tmp_path / "ray_results" / f"{NAME}-repeats").iterdir())
    old = client.get_run(first)
    assert old.info.status == "FAILED"
    assert old.data.tags[tracking.ABANDONED_TAG] == f"experiment folder discarded by --fresh; superseded by {second}"
    assert client.get_run(second).data.tags[tracking.FOLDER_TAG] == _folder_tag(str(tmp_path / "ray_results"), NAME)
    assert f"MLflow parent run {first}" in capsys.readouterr().err


def _sweep_cli(config: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", "sweep", str(config), "--num-cpus", "2"],
                            cwd=cwd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


@pytest.mark.slow
def test_two_concurrent_sweeps_one_runs_one_exits_2(tmp_path, config):
    client = _client(tmp_path)
    lock_file = tmp_path / "ray_results" / NAME / LOCK_FILE
    first = _sweep_cli(config, tmp_path)
    try:
        def first_holds():
            if first.poll() is not None:
                pytest.fail(f"the first sweep exited early: {first.stderr.read()[-3000:]}")
            try:
                return json.loads(lock_file.read_text()).get("pid") == first.pid
            except (OSError, ValueError):  # not there yet, or being written
                return False

        _wait_for(first_holds, 120, "the first sweep to take the lock")
        started = time.monotonic()
        second = _sweep_cli(config, tmp_path)
        _, err = second.communicate(timeout=120)
        took = time.monotonic() - started
        assert second.returncode == 2, err
        assert f"sweep {NAME!r} is already running: pid {first.pid} on host {socket.gethostname()}" in err
        assert "Traceback" not in err and took < 60  # interpreter start + prepare(); no Ray, no MLflow
        _, first_err = first.communicate(timeout=400)
        assert first.returncode == 0, first_err[-3000:]
    finally:
        _kill_session(first)
    (parent,) = _parents(client)
    assert parent.info.status == "FINISHED"
    search = [r for r in client.search_runs([parent.info.experiment_id], "tags.`emotune.role` = 'search'")]
    assert len(search) == 2 and {r.data.tags["mlflow.parentRunId"] for r in search} == {parent.info.run_id}
    version = client.get_model_version_by_alias(MODEL, "candidate")
    assert version.tags["parent_run_id"] == parent.info.run_id
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert not lock_file.exists()


@pytest.mark.slow
def test_killed_sweep_with_its_folder_deleted_gets_a_new_parent(tmp_path, config, monkeypatch, capsys):
    import shutil

    from cluster import tracking
    from cluster.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    client = _client(tmp_path)
    first = _sweep_cli(config, tmp_path)
    try:
        def a_trial_runs():
            if first.poll() is not None:
                pytest.fail(f"the sweep exited before it was killed: {first.stderr.read()[-3000:]}")
            exp = client.get_experiment_by_name(EXPERIMENT)
            return exp and client.search_runs([exp.experiment_id], "tags.`emotune.role` = 'search'")

        _wait_for(a_trial_runs, 180, "a search trial's run")
    finally:
        _kill_session(first)
    (old,) = _parents(client)
    assert old.info.status == "RUNNING"
    orphans = [r.info.run_id for r in client.search_runs([old.info.experiment_id], "attributes.status = 'RUNNING'")
               if r.info.run_id != old.info.run_id]
    shutil.rmtree(tmp_path / "ray_results" / NAME)

    result = run_sweep(config, num_cpus=2)
    new = client.get_run(result.parent_run_id)
    assert new.info.status == "FINISHED" and new.info.run_id != old.info.run_id
    old = client.get_run(old.info.run_id)
    assert old.info.status == "FAILED"
    assert old.data.tags[tracking.ABANDONED_TAG] == f"experiment folder missing; superseded by {new.info.run_id}"
    for run_id in orphans:
        assert client.get_run(run_id).info.status == "FAILED"
    assert len(_parents(client)) == 2
    assert client.get_model_version_by_alias(MODEL, "candidate").tags["parent_run_id"] == new.info.run_id
    err = capsys.readouterr().err
    assert f"MLflow parent run {old.info.run_id} of sweep {NAME!r} was still RUNNING" in err

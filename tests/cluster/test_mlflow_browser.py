"""The MLflow UI links: unit tests of the URL and hint helpers, and one browser test (slow) that serves a sweep-like
store with ``mlflow ui`` and renders :func:`cluster.mlflow_ui.runs_url` in headless Chromium.

The browser test needs Chromium: where none is on PATH and we are root with apt-get, a session fixture installs
Debian's ``chromium`` package; it skips, naming what failed, only where no browser can be had. Chromium is driven
by its own headless flags (``--dump-dom``, ``--screenshot``), so no Python browser driver is needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster import mlflow_ui
from cluster.mlflow_ui import (
    EXPERIMENT_KIND_TAG,
    TRAINING_KIND,
    banner,
    mark_training_experiment,
    run_url,
    runs_url,
    ui_base_url,
    ui_hint,
)

SORTED = "orderByKey=tags.%60mlflow.runName%60&orderByAsc=true"
BROWSERS = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
SERVER_START_S = 90  # `mlflow ui` answers in ~10 s with one worker and no job runner; leave room on a busy machine


# ---------------------------------------------------------------------------------------------------- unit (fast)

@pytest.fixture()
def no_port_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_PORT", raising=False)


@pytest.mark.parametrize("uri, base", [
    ("sqlite:///mlflow.db", "http://127.0.0.1:5000"),
    ("sqlite:////abs/path/mlflow.db", "http://127.0.0.1:5000"),
    ("file:///tmp/mlruns", "http://127.0.0.1:5000"),
    ("http://tracking.example:8080", "http://tracking.example:8080"),
    ("https://user:secret@mlflow.example.org/prefix/", "https://mlflow.example.org/prefix"),
    ("http://0.0.0.0:5001", "http://127.0.0.1:5001"),
])
def test_ui_base_url(no_port_env, uri, base):
    assert ui_base_url(uri) == base


def test_port_argument_then_env_then_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_PORT", "5055")
    assert ui_base_url("sqlite:///x.db") == "http://127.0.0.1:5055"
    assert ui_base_url("sqlite:///x.db", port=6001) == "http://127.0.0.1:6001"
    assert ui_base_url("http://server:7000", port=6001) == "http://server:7000"  # a server keeps its own port
    monkeypatch.setenv("MLFLOW_PORT", "not-a-port")
    assert ui_base_url("sqlite:///x.db") == "http://127.0.0.1:5000"


def test_runs_and_run_urls(no_port_env):
    assert runs_url("sqlite:///mlflow.db", "7") == (
        f"http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&{SORTED}")
    assert runs_url("http://srv:5000/", "7", flat=False) == (
        "http://srv:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert runs_url("sqlite:///mlflow.db", "7", port=5123).startswith("http://127.0.0.1:5123/#/experiments/7/runs?")
    assert run_url("sqlite:///mlflow.db", "7", "abc123") == (
        "http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning")


def test_ui_hint_repo_store_says_make(no_port_env):
    url = runs_url("sqlite:///x.db", "3")
    assert ui_hint(f"sqlite:///{mlflow_ui.MAKE_STORE}", "3") == f"MLflow: make mlflow-ui, then open {url}"


def test_ui_hint_other_store_gives_the_command(no_port_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hint = ui_hint("sqlite:///other.db", "3")  # relative: made absolute so the command works from anywhere
    first, second = hint.splitlines()
    assert first.startswith("MLflow: ") and first.endswith(
        f" ui --backend-store-uri sqlite:///{tmp_path.resolve() / 'other.db'} --host 127.0.0.1 --port 5000")
    assert "make mlflow-ui" not in hint
    assert second.strip() == f"then open {runs_url('sqlite:///other.db', '3')}"
    monkeypatch.setenv("MLFLOW_PORT", "5099")
    assert "--port 5099" in ui_hint("sqlite:///other.db", "3") and "127.0.0.1:5099/#/" in ui_hint("sqlite:///o.db", "3")


def test_ui_hint_http_is_just_the_url(no_port_env):
    assert ui_hint("http://mlflow.internal:5000", "12") == f"MLflow: {runs_url('http://mlflow.internal:5000', '12')}"


class _FakeClient:
    """Just what mark_training_experiment uses of an MlflowClient."""

    def __init__(self, tags):
        self.tags, self.writes = dict(tags), []

    def get_experiment(self, experiment_id):
        return type("Exp", (), {"tags": dict(self.tags)})()

    def set_experiment_tag(self, experiment_id, key, value):
        self.writes.append((experiment_id, key, value))
        self.tags[key] = value


@pytest.mark.parametrize("tags, writes", [({}, 1), ({EXPERIMENT_KIND_TAG: "genai_development"}, 1),
                                          ({EXPERIMENT_KIND_TAG: TRAINING_KIND}, 0)])
def test_mark_training_experiment_is_idempotent(tags, writes):
    client = _FakeClient(tags)
    mark_training_experiment(client, "4")
    mark_training_experiment(client, "4")
    assert client.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND == "custom_model_development"
    assert client.writes == [("4", EXPERIMENT_KIND_TAG, TRAINING_KIND)] * writes


def test_banner(no_port_env, tmp_path):
    missing = tmp_path / "none.db"
    text = banner(missing, port=5010)
    assert text.splitlines()[0].startswith("MLflow UI: http://127.0.0.1:5010 ")
    assert "no experiments" in text and not missing.exists()  # reading never creates the store
    db = tmp_path / "m.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
    con.executemany("INSERT INTO experiments VALUES (?, ?, ?)",
                    [(0, "Default", "active"), (1, "demo", "active"), (2, "gone", "deleted")])
    con.commit()
    con.close()
    lines = banner(db).splitlines()
    assert lines[1:] == [f"  demo runs: {runs_url('sqlite:///m.db', '1')}"]
    (tmp_path / "junk.db").write_text("not sqlite")
    assert "no experiments" in banner(tmp_path / "junk.db")


# ------------------------------------------------------------------------------------------------- browser (slow)

def _find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; on timeout the whole group is killed. ``(returncode, output tail)``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return 124, f"timed out after {timeout:.0f} s"
    return proc.returncode, out[-2000:]


@pytest.fixture(scope="session")
def browser() -> str:
    """A Chromium (or Chrome) executable; Debian's ``chromium`` is installed with apt-get where none is present."""
    found = _find_browser()
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"no browser ({', '.join(BROWSERS)}) on PATH, and it cannot be installed here: "
                    f"apt-get install chromium needs root and apt-get")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    rc, out = _run(install, timeout=900)
    if rc != 0:  # the package lists may be missing or stale
        rc_update, out_update = _run(["apt-get", "update"], timeout=300)
        rc, out = _run(install, timeout=900) if rc_update == 0 else (rc_update, out_update)
    found = _find_browser()
    if not found:
        pytest.skip(f"no browser on PATH and `{' '.join(install)}` failed (exit {rc}): {out.strip()[-500:]}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its process group."""
    pgid = proc.pid  # its own group: the group id is its pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait  # the leader is gone: wait for the rest of the group
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    if proc.poll() is None:
        proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow ui did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _render(browser: str, url: str, out_dir: Path, budget_ms: int) -> tuple[str, Path]:
    """The DOM of ``url`` after ``budget_ms`` of virtual time, and a 1600x1000 screenshot of the same page."""
    shot = out_dir / "runs.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
           "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars",
           f"--user-data-dir={out_dir / 'profile'}", f"--virtual-time-budget={budget_ms}",
           "--window-size=1600,1000", f"--screenshot={shot}", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        dom, err = proc.communicate(timeout=budget_ms / 1000 + 60)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"{browser} did not finish rendering {url}")
    finally:
        if _group_alive(proc.pid):  # a renderer or crash handler left behind
            _kill_group(proc, grace=2)
    assert proc.returncode == 0, f"{browser} failed ({proc.returncode}): {err[-2000:]}"
    return dom, shot


@pytest.mark.slow
def test_runs_url_shows_the_trial_runs_in_a_browser(browser, finished_sweep, tmp_path, monkeypatch):
    """The store a real sweep left (``finished_sweep``), served by ``mlflow ui``, opened at the link it printed."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    db = finished_sweep.tmp / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    eid = client.get_experiment_by_name("t_exp").experiment_id
    assert runs_url(f"sqlite:///{db}", eid) in finished_sweep.console  # the link the sweep printed (port 5000)
    names = sorted({r.info.run_name for r in client.search_runs([eid], "tags.`emotune.role` != 'sweep'")})
    assert len(names) >= 6
    port = _free_port()
    log = tmp_path / "mlflow-ui.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as log_file:
        server = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                  start_new_session=True)
    try:
        base = ui_base_url(f"sqlite:///{db}", port=port)
        assert base == f"http://127.0.0.1:{port}"
        _wait_http(base + "/", server, log, SERVER_START_S)
        url = runs_url(f"sqlite:///{db}", eid, port=port)
        for attempt, budget in enumerate((15_000, 40_000)):  # a slow machine: once more with more time
            out_dir = tmp_path / f"render{attempt}"
            out_dir.mkdir()
            dom, shot = _render(browser, url, out_dir, budget)
            if all(name in dom for name in names):
                break
        missing = [name for name in names if name not in dom]
        assert not missing, f"run names {missing} not in the page rendered from {url}:\n{dom[-3000:]}"
        # The training runs table, not the GenAI pages: its title, its run count, the "Model registry" side link.
        assert f"<title>Runs - Experiment {eid} - MLflow</title>" in dom
        assert "matching runs" in dom and "Model registry" in dom
        assert "Token Usage" not in dom and "Overview - Experiment" not in dom
        assert shot.is_file() and shot.stat().st_size > 10_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        _kill_group(server)
    assert not _group_alive(server.pid), "mlflow ui left processes behind"

"""MLflow server mode (issue 13, item 5): a sweep logs to a real ``mlflow server`` over HTTP, its artifacts land in
the server's artifact store (not in the client's folder), and a server that goes away mid-sweep loses or doubles
nothing. The retry queue behind that is unit-tested against an in-memory client that fails on demand."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cluster import tracking
from tests.cluster.helpers import mlflow_tracking, run_sweep_in, tiny_sweep_config

# ---- a real server -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and its own artifact folder under ``root``.

    It runs in a session of its own: it spawns a uvicorn worker, and stopping it must end the whole process group.
    """

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.db, self.artifacts = root, root / "mlflow.db", root / "artifacts"
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        # No job runner: MLflow 3.17 starts one with several worker processes by default; nothing here uses jobs.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
                 "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server on port {self.port} did not come up:\n{tail}")
            time.sleep(0.3)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's process group (its pid is the group id: ``start_new_session``)."""
        if self.proc is None:
            return
        group = self.proc.pid
        _killpg(group, sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _killpg(group, signal.SIGKILL)
            self.proc.wait(timeout=15)
        _killpg(group, signal.SIGKILL)  # a worker that outlived the leader
        self.proc = None


def _killpg(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One server for this module (it takes 10-25 s to start on a busy 2-core box)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _config(tmp_path: Path, shard_dir: Path, name: str, **changes) -> Path:
    """The smallest sweep of the cluster tests, under its own names, with ``changes`` (dotted keys) applied."""
    path = tiny_sweep_config(tmp_path, shard_dir, name, f"{name}_exp", f"{name}-model".replace("_", "-"))
    cfg = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *head, last = dotted.split(".")
        node = cfg
        for key in head:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def _local_stores(folder: Path) -> list[Path]:
    """What MLflow leaves in a client folder when it logs locally instead of to the server."""
    return [p for p in folder.rglob("*") if p.name in {"mlruns", "mlartifacts", "mlflow.db"}]


# ---- a sweep against the server, stopped and restarted mid-sweep ----------------------------------------------


class Outage(threading.Thread):
    """Kills the server as soon as the first search trial's run exists (its epochs are still to come: the first
    takes seconds, with the model and data set up), waits, starts it again on the same port and db."""

    def __init__(self, server: MlflowServer, experiment: str, down_s: float = 3.0):
        super().__init__(daemon=True)
        self.server, self.experiment, self.down_s = server, experiment, down_s
        self.killed = self.restarted = False
        self.error: BaseException | None = None
        self.stop_polling = threading.Event()

    def run(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.server.uri)
        try:
            while not self.stop_polling.is_set():
                exp = client.get_experiment_by_name(self.experiment)
                runs = exp and client.search_runs([exp.experiment_id], f"tags.`{tracking.ROLE_TAG}` = 'search'")
                if runs:
                    break
                time.sleep(0.2)
            else:
                return
            self.server.stop(signal.SIGKILL)  # gone at once, as a crashed server or a lost network is
            self.killed = True
            time.sleep(self.down_s)
            self.server.start()
            self.restarted = True
        except BaseException as err:  # reported by the test, not lost in the thread
            self.error = err


def _reported_epochs(experiment_folder: Path) -> dict[str, dict[str, list[int]]]:
    """What Tune received from each trial: ``{trial_id: {metric: [epoch, ...]}}``, read from its result files."""
    out: dict[str, dict[str, list[int]]] = {}
    for path in experiment_folder.glob("*/result.json"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            metrics = out.setdefault(row["trial_id"], {})
            for key, value in row.items():
                if key.startswith(("val_", "train_")) and isinstance(value, int | float):
                    metrics.setdefault(key, []).append(int(row["epoch"]))
    return out


@pytest.mark.slow
def test_sweep_against_a_server_stopped_mid_sweep_loses_and_doubles_nothing(mlflow_server, msp_functionals,
                                                                           tmp_path, monkeypatch, capfd):
    """A sweep logging to a real server finds its runs, metrics, artifacts and registered model there, although the
    server was killed during the search and restarted on the same port and database."""
    from mlflow.tracking import MlflowClient

    shard_dir = msp_functionals[0] / "msp_podcast" / "functionals"
    # No tracking.uri in the config: the team's server comes from MLFLOW_TRACKING_URI, as a user sets it. Four
    # epochs, so trials are still reporting while the server is down (and while it restarts, 10-25 s).
    config = _config(tmp_path, shard_dir, "t_outage", **{"tracking.uri": None, "train.max_epochs": 4,
                                                         "train.patience": 4})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    outage = Outage(mlflow_server, "t_outage_exp")
    outage.start()
    work = tmp_path / "client"
    work.mkdir()
    try:
        result = run_sweep_in(work, config)
    finally:
        outage.stop_polling.set()
        outage.join(timeout=240)
    assert outage.error is None, outage.error
    assert outage.killed and outage.restarted
    err = capfd.readouterr().err
    assert "unreachable" in err and "queued" in err, err[-3000:]  # the outage fell inside a trial phase
    assert "reachable again" in err

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("t_outage_exp")
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    storage = tmp_path / "ray_results"
    reported = {**_reported_epochs(storage / "t_outage"), **_reported_epochs(storage / "t_outage-repeats")}
    assert len(reported) == 3  # 2 search trials + 1 repeat
    children = tracking.child_runs(client, exp.experiment_id, result.parent_run_id)
    assert sorted(r.data.tags[tracking.TRIAL_TAG] for r in children) == sorted(reported)  # each trial once
    for run in children:
        assert run.info.status == "FINISHED"
        for key, epochs in reported[run.data.tags[tracking.TRIAL_TAG]].items():
            logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert logged == sorted(epochs), (run.info.run_name, key, logged, epochs)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location  # proxied by the server
    parent = client.get_run(result.parent_run_id)

    # Artifacts: listed and read back through the server, stored in its artifact folder, none on the client side.
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/table.md", "results/table.csv", "results/per_seed.csv"} <= names
    table = Path(client.download_artifacts(parent.info.run_id, "results/table.md", str(tmp_path / "dl")))
    assert table.read_text() == (mlflow_server.artifacts / exp.experiment_id / parent.info.run_id / "artifacts"
                                 / "results" / "table.md").read_text()
    stored = {p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()}
    assert {"folds.json", "selection.json", "optuna_study.db", "validation_curves_ladder_mtl.png", "MLmodel",
            "network.pt2"} <= stored, sorted(stored)
    assert _local_stores(tmp_path) == []
    assert "stores artifacts at" not in err  # no warning: the server proxies them

    # The registered model: its version under the alias, its files downloaded through the server.
    import mlflow

    version = client.get_model_version_by_alias("t-outage-model", "candidate")
    assert version.version == result.model_version
    with mlflow_tracking(mlflow_server.uri):
        model_dir = Path(mlflow.artifacts.download_artifacts("models:/t-outage-model@candidate",
                                                             dst_path=str(tmp_path / "model")))
    assert (model_dir / "MLmodel").is_file() and list(model_dir.rglob("network.pt2"))


# ---- the retry queue, against an in-memory client that fails on demand ---------------------------------


def _unreachable():
    """Raise what MLflow raises when the server is down: an MlflowException made inside ``except`` (no ``from``)."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        raise requests.exceptions.ConnectionError("Failed to establish a new connection: Connection refused")
    except requests.exceptions.ConnectionError as err:
        raise MlflowException(f"API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed "  # noqa: B904
                              f"with exception {err}")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


def test_queue_keeps_order_and_sends_each_write_once_through_failures():
    clock = Clock()
    queue = tracking.WriteQueue("http://tracking:5000", clock=clock, sleep=clock.sleep)
    applied, failures = [], {"left": 3}

    def apply(op):
        if op == 3 and failures["left"]:
            failures["left"] -= 1
            _unreachable()
        applied.append(op)

    for op in range(1, 7):  # a callback per write, as Tune makes them
        queue.put(op)
        queue.drain(apply)
        if op >= 3:
            assert applied == [1, 2] and len(queue) == op - 2  # 3 failed; everything behind it waits
        clock.now += 0.5  # the backoff (1 s, then 2 s) holds tries back between callbacks
    assert failures["left"] == 1
    queue.flush(apply, timeout_s=60)
    assert applied == [1, 2, 3, 4, 5, 6] and len(queue) == 0


def test_queue_gives_up_at_the_deadline_keeping_every_write():
    clock = Clock()
    queue = tracking.WriteQueue("http://tracking:5000", clock=clock, sleep=clock.sleep)
    for op in range(3):
        queue.put(op)
    with pytest.raises(tracking.TrackingUnavailableError) as err:
        queue.flush(lambda op: _unreachable(), timeout_s=20)
    assert "http://tracking:5000" in str(err.value) and "re-run" in str(err.value)
    assert isinstance(err.value, ValueError)  # emotune exits 2
    assert list(queue.items) == [0, 1, 2]
    assert 20 <= clock.now < 26  # waited the limit, polling at most FLUSH_POLL_S apart


def test_queue_raises_a_refused_write_and_goes_on_with_the_rest():
    from mlflow.exceptions import MlflowException

    queue = tracking.WriteQueue("http://tracking:5000")
    applied = []

    def apply(op):
        if op == "bad":
            raise MlflowException("INVALID_PARAMETER_VALUE: changing param values is not allowed")
        applied.append(op)

    for op in ("a", "bad", "b"):
        queue.put(op)
    with pytest.raises(MlflowException):
        queue.drain(apply)
    assert queue.drain(apply) and applied == ["a", "b"]


def test_a_real_unreachable_server_is_a_connection_error_and_fails_fast():
    """Against the installed MLflow: the error of a closed port is recognised, and QUICK_HTTP turns MLflow's own
    minutes of retries into one try."""
    from mlflow.tracking import MlflowClient

    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    client = MlflowClient(f"http://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    with tracking.quick_http(), pytest.raises(Exception) as err:
        client.set_tag("0" * 32, "k", "v")
    assert time.monotonic() - started < 5
    assert tracking.is_connection_error(err.value)
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == before
    assert not tracking.is_connection_error(ValueError("a bad value"))


@pytest.mark.parametrize(("uri", "location", "local"), [
    ("http://team:5000", "mlflow-artifacts:/3", False),  # --serve-artifacts: uploaded to the server
    ("http://team:5000", "s3://bucket/mlflow/3", False),
    ("https://team", "/srv/mlflow/mlruns/3", True),  # --no-serve-artifacts: the server's own ./mlruns
    ("http://team:5000", "file:///srv/mlflow/mlruns/3", True),
    ("sqlite:///mlflow.db", "/home/me/mlruns/3", False),  # no server: local is what was asked for
])
def test_artifacts_left_on_the_client_side_of_a_server_are_noticed(uri, location, local):
    assert tracking.artifacts_stay_local(uri, location) is local


class FlakyClient:
    """The MlflowClient calls TrialRunLogger makes, in memory. Like the SQL store it keeps a metric repeated with
    the same key, step, timestamp and value once, and accepts a param set again to the same value. ``down``: the
    next calls fail as an unreachable server does; ``lose``: the next writes are applied but their replies lost."""

    def __init__(self):
        self.runs: dict[str, dict] = {}
        self.down = 0
        self.lose = 0

    def _call(self, write=None):
        if self.down:
            self.down -= 1
            _unreachable()
        out = write() if write else None
        if write and self.lose:
            self.lose -= 1
            _unreachable()
        return out

    def search_runs(self, experiment_ids, query, max_results=1):
        self._call()
        hits = [r for r in self.runs.values()
                if f"'{r['tags'][tracking.TRIAL_TAG]}'" in query and f"'{r['tags'][tracking.PARENT_TAG]}'" in query]
        return [SimpleNamespace(info=SimpleNamespace(run_id=r["id"])) for r in hits][:max_results]

    def create_run(self, experiment_id, run_name, tags):
        def write():
            run_id = f"run{len(self.runs)}"
            self.runs[run_id] = {"id": run_id, "name": run_name, "tags": dict(tags), "params": {}, "metrics": set(),
                                 "status": "RUNNING", "inputs": 0}
            return SimpleNamespace(info=SimpleNamespace(run_id=run_id))
        return self._call(write)

    def update_run(self, run_id, status):
        self._call(lambda: self.runs[run_id].update(status=status))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        def write():
            run = self.runs[run_id]
            for p in params:
                assert run["params"].setdefault(p.key, p.value) == p.value, "param changed"
            run["metrics"].update((m.key, m.step, m.timestamp, m.value) for m in metrics)
            run["tags"].update({t.key: t.value for t in tags})
        self._call(write)

    def log_inputs(self, run_id, datasets):
        self._call(lambda: self.runs[run_id].update(inputs=len(datasets)))

    def set_tag(self, run_id, key, value):
        self._call(lambda: self.runs[run_id]["tags"].__setitem__(key, value))

    def set_terminated(self, run_id, status):
        self._call(lambda: self.runs[run_id].update(status=status))

    def get_metric_history(self, run_id, key):
        self._call()
        return [SimpleNamespace(key=k, step=s, timestamp=t, value=v)
                for k, s, t, v in sorted(self.runs[run_id]["metrics"]) if k == key]

    def get_run(self, run_id):
        self._call()
        latest = {k: v for k, s, t, v in sorted(self.runs[run_id]["metrics"], key=lambda m: m[1])}
        return SimpleNamespace(data=SimpleNamespace(metrics=latest))

    def history(self, trial_id: str, key: str) -> list[int]:
        (run,) = [r for r in self.runs.values() if r["tags"][tracking.TRIAL_TAG] == trial_id]
        return sorted(s for k, s, _, _ in run["metrics"] if k == key)


def _trial(trial_id: str, index: int, epoch: int = 0):
    return SimpleNamespace(trial_id=trial_id, config={"variant": "ladder_mtl", "seed": 0, "lr": 0.01},
                           experiment_tag=f"{index}_lr=0.01", last_result={"epoch": epoch}, get_error=lambda: "")


def _result(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "timestamp": 1_700_000_000 + epoch, "val_ccc": value, "train_loss": 1.0 / epoch,
            "best_val_ccc": value}


@pytest.fixture
def flaky(monkeypatch):
    """A TrialRunLogger whose client is a FlakyClient, its queue on a fake clock."""
    server, clock = FlakyClient(), Clock()
    monkeypatch.setattr(tracking, "_QUEUES", {})
    monkeypatch.setattr(tracking.TrialRunLogger, "client", property(lambda self: server))
    monkeypatch.setattr(tracking.console, "trial_finished", lambda *a, **k: None)

    def logger():
        cb = tracking.TrialRunLogger("http://tracking:5000", "1", "parent0", "search", {"family": "ladder"},
                                     metric="val_ccc", mode="max", max_epochs=3, datasets=["shards"])
        key = (cb.tracking_uri, cb.parent_run_id, cb.role)
        tracking._QUEUES.setdefault(key, tracking.WriteQueue(cb.tracking_uri, clock=clock, sleep=clock.sleep))
        return cb

    return SimpleNamespace(server=server, clock=clock, logger=logger)


def test_trial_runs_survive_an_outage_and_a_lost_reply_once_each(flaky):
    server, clock, cb = flaky.server, flaky.clock, flaky.logger()
    t1, t2 = _trial("t1", 1), _trial("t2", 2)
    cb.on_trial_start(0, [], t1)
    cb.on_trial_result(0, [], t1, _result(1, 0.1))
    server.lose = 1  # t2's run is created, but the reply never arrives
    cb.on_trial_start(0, [], t2)
    server.down = 10_000  # then the server is gone: training goes on, every callback returns at once
    cb.on_trial_result(0, [], t1, _result(2, 0.3))
    cb.on_trial_result(0, [], t2, _result(1, 0.2))
    t1.last_result = {"epoch": 3}
    cb.on_trial_result(0, [], t1, _result(3, 0.2))
    cb.on_trial_complete(0, [], t1)
    assert [op[0] for op in cb.writes.items] == ["open", "batch", "batch", "batch", "finish"]
    snapshot = pickle.loads(pickle.dumps(cb.get_state()))  # what Tune's experiment snapshot keeps

    server.down = 0  # back: the next callback catches up, in order
    clock.now += 60
    cb.on_trial_result(0, [], t2, _result(2, 0.4))
    t2.last_result = {"epoch": 2}
    cb.on_trial_complete(0, [], t2)
    cb.catch_up(timeout_s=0)

    assert sorted(r["tags"][tracking.TRIAL_TAG] for r in server.runs.values()) == ["t1", "t2"]  # no second run
    assert server.history("t1", "val_ccc") == [1, 2, 3] and server.history("t2", "val_ccc") == [1, 2]
    assert server.history("t1", "train_loss") == [1, 2, 3]
    for run in server.runs.values():
        assert run["status"] == "FINISHED" and run["params"] and run["inputs"] == 1  # t2's despite the lost reply
        assert run["tags"][tracking.OUTCOME_TAG] in ("completed", "stopped")
    assert server.history("t1", "best_epoch") == [2]

    # A driver that died before its next snapshot re-runs and replays the snapshot's writes: still once each.
    tracking._QUEUES.clear()
    restored = pickle.loads(pickle.dumps(cb))
    restored.set_state(snapshot)
    restored.catch_up(timeout_s=0)
    assert len(server.runs) == 2
    assert server.history("t1", "val_ccc") == [1, 2, 3] and server.history("t2", "val_ccc") == [1, 2]
    assert all(r["status"] == "FINISHED" for r in server.runs.values())


def test_extra_tags_keep_their_place_in_the_queue(flaky):
    server, cb = flaky.server, flaky.logger()
    trial = _trial("t1", 1)
    server.down = 3
    cb.queue_batch(trial, metrics=[], tags={"emotune.node_id": "abc"})  # opens the run first, then tags it
    cb.catch_up(timeout_s=30)
    (run,) = server.runs.values()
    assert run["tags"]["emotune.node_id"] == "abc"


def test_epochs_a_restarted_trial_trains_again_are_logged_once(flaky):
    server, cb = flaky.server, flaky.logger()
    t1 = _trial("t1", 1)
    cb.on_trial_start(0, [], t1)
    for epoch in (1, 2, 3):
        cb.on_trial_result(0, [], t1, _result(epoch, 0.1 * epoch))
    # Its node is lost: the trial restarts from its epoch-1 checkpoint and trains epochs 2 and 3 again.
    cb.on_trial_start(0, [], t1)
    for epoch in (2, 3, 4):
        cb.on_trial_result(0, [], t1, {**_result(epoch, 0.1 * epoch + 0.01), "timestamp": 1_800_000_000 + epoch})
    cb.catch_up(timeout_s=0)
    assert server.history("t1", "val_ccc") == [1, 2, 3, 4]
    # A driver restored from a snapshot knows what it logged before.
    again = flaky.logger()
    again.set_state(pickle.loads(pickle.dumps(cb.get_state())))
    again.on_trial_result(0, [], t1, _result(4, 0.4))
    again.catch_up(timeout_s=0)
    assert server.history("t1", "val_ccc") == [1, 2, 3, 4]

"""A sweep submitted with ``ray job submit`` to a real two-node Ray cluster on this machine (issue 13, acceptance).

A head and one worker node, both on 127.0.0.1, started by ``ray.cluster_utils.Cluster`` in a process of their own
(``ray start --address`` refuses to join a node while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray on loopback,
notes 6.2). Each node declares 2 fake GPUs and more CPUs than trials fit on them, so the GPUs decide where
``resources: {cpu: 1, gpu: 0.5}`` trials go: 2 per GPU, 4 per node (CPU torch sees no CUDA; trials train on CPU).
The job goes in the way the README says: through the head's Jobs API with token auth, the repo as ``--working-dir``
and ``cluster/manifests/runtime_env.yaml`` as its runtime env.

Each test owns its cluster (temp dir, ports, token). Teardown SIGKILLs every process that carries the cluster's
marker in its environment or descends from it (Ray's agents outlive a killed raylet, notes pitfall 5): never
``ray stop``, which would stop other people's Ray too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import tracking
from cluster.sweep import REUSED_TAG
from tests.cluster.helpers import write_config

REPO = Path(__file__).resolve().parents[2]
RUNTIME_ENV = REPO / "cluster" / "manifests" / "runtime_env.yaml"
MARKER_ENV = "EMOTUNE_TEST_RAY_CLUSTER"  # in the environment of every process of a test's cluster (and only there)
CPUS_PER_NODE, GPUS_PER_NODE, GPU_PER_TRIAL = 8, 2, 0.5  # 8 CPUs: the GPUs, not the CPUs, bound trials per node
TRIALS_PER_GPU = round(1 / GPU_PER_TRIAL)
TRIALS_PER_NODE = GPUS_PER_NODE * TRIALS_PER_GPU
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")  # a job's final states

# Runs in its own session: the two nodes, then the cluster's address, node ids and the worker's raylet pid as JSON;
# then waits for its stdin to close, so a test process that dies takes the cluster with it.
LAUNCHER = """
import json, os, sys
from ray._private import ray_constants
from ray.cluster_utils import Cluster

info, dashboard_port, cpus, gpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
node = dict(num_cpus=cpus, num_gpus=gpus, node_ip_address="127.0.0.1")
cluster = Cluster(initialize_head=True, head_node_args=dict(
    node, temp_dir=os.path.join(os.environ["RAY_TMPDIR"], "ray"),  # Ray's default: Cluster writes its address there
    include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port,
    dashboard_agent_listen_port=0,  # any free port, not Ray's fixed 52365 another cluster may hold
    # A killed raylet refuses the GCS's health checks at once: dead after 5 checks 1 s apart (default 5 x 3 s).
    # A live but starved one answers within the 5 s timeout.
    _system_config={"health_check_period_ms": 1000, "health_check_timeout_ms": 5000,
                    "health_check_failure_threshold": 5}))
# A temp dir of its own, as on another machine: a node unpacks the job's working_dir into its session folder
# (rmtree and unzip again), which would pull the head's copy, the job driver's cwd, from under it.
worker = cluster.add_node(**node, temp_dir=os.path.join(os.environ["RAY_TMPDIR"], "worker"))
cluster.wait_for_nodes()
raylet = worker.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
with open(info + ".tmp", "w") as f:
    json.dump({"gcs": cluster.address, "head": cluster.head_node.node_id, "worker": worker.node_id,
               "worker_raylet_pid": raylet}, f)
os.replace(info + ".tmp", info)
sys.stdin.read()
cluster.shutdown()
"""

# The job's entrypoint: `emotune sweep` (cluster.cli.main), saying where emotune was imported from (the job's
# uploaded working dir, not this checkout).
ENTRY = """
import sys
from pathlib import Path

import cluster
from cluster.cli import main

print(f"emotune imported from {Path(cluster.__file__).resolve().parent.parent}", flush=True)
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, seconds: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {seconds:g} s waiting for {what}")


def _processes() -> dict[int, tuple[int, bytes]]:
    """``{pid: (parent pid, environment)}`` of the live processes this user may read (zombies left out: they are
    dead already, and their parent or init reaps them)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[:2]
            environ = Path(entry.path, "environ").read_bytes()
        except (OSError, ValueError):  # gone, or another user's
            continue
        if state != "Z":
            out[int(entry.name)] = (int(ppid), environ)
    return out


def _with_descendants(procs: dict[int, tuple[int, bytes]], roots: set[int]) -> set[int]:
    found = set(roots)
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        if not more:
            return found & set(procs)
        found |= more


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_cluster(marker: str, root_pid: int) -> None:
    """SIGKILL every process whose environment holds ``MARKER_ENV=marker`` or that descends from ``root_pid``,
    until none is left (a dying raylet's workers and agents are found on the next pass)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    for _ in range(50):
        procs = _processes()
        ours = _with_descendants(procs, {pid for pid, (_, env) in procs.items() if needle in env.split(b"\0")}
                                 | {root_pid}) - {os.getpid()}
        if not ours:
            return
        _kill(ours)
        time.sleep(0.2)
    pytest.fail(f"processes of the test cluster survive SIGKILL: {sorted(ours)}")


@dataclass
class TwoNodeCluster:
    """A head node (dashboard and Jobs API on ``url``) and one worker node, started by :meth:`start`."""

    launcher: subprocess.Popen
    marker: str
    temp_dir: Path
    env: dict
    url: str
    token: str
    head: str = ""
    worker: str = ""
    worker_raylet_pid: int = 0
    client: object = None

    @classmethod
    def start(cls, log: Path, timeout_s: float = 180.0) -> TwoNodeCluster:
        # Short: Ray's socket paths under it must stay within the 107 characters of a Unix socket path.
        temp_dir = Path(tempfile.mkdtemp(prefix="emt-"))
        marker, token, port = secrets.token_hex(8), secrets.token_hex(32), _free_port()
        env = {**os.environ, MARKER_ENV: marker, "RAY_TMPDIR": str(temp_dir),  # also Ray's ray_current_cluster file
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,  # this cluster's own token, not ~/.ray's
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            env.pop(name, None)
        info = temp_dir / "cluster.json"
        with open(log, "ab") as out:
            launcher = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(info), str(port), str(CPUS_PER_NODE), str(GPUS_PER_NODE)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self = cls(launcher, marker, temp_dir, env, f"http://127.0.0.1:{port}", token)
        try:
            def started():
                if launcher.poll() is not None:
                    pytest.fail(f"the cluster launcher exited with {launcher.returncode}:\n"
                                f"{log.read_text(errors='replace')[-3000:]}")
                return info.exists() and json.loads(info.read_text())

            found = _wait_for(started, timeout_s, "both Ray nodes")
            self.head, self.worker = found["head"], found["worker"]
            self.worker_raylet_pid = found["worker_raylet_pid"]
            self.client = _wait_for(self._connect, timeout_s, "the Jobs API on the head node", every=1.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self):
        from ray.job_submission import JobSubmissionClient

        try:
            return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {self.token}"})
        except Exception:  # ConnectionError until the dashboard answers
            return None

    def submit(self, entry: Path, config: Path) -> str:
        """``ray job submit --no-wait`` of ``emotune sweep CONFIG`` (through ``entry``); returns the job id."""
        job_id = f"emotune-{secrets.token_hex(4)}"
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", self.url,
               "--submission-id", job_id, "--no-wait", "--working-dir", str(REPO), "--runtime-env", str(RUNTIME_ENV),
               "--", sys.executable, str(entry), "sweep", str(config)]
        done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return job_id

    def status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)

    def wait(self, job_id: str, timeout_s: float) -> tuple[str, str]:
        """The job's final status and its log, once it ended."""
        def ended():
            status = self.status(job_id)
            return status if status in ENDED else None

        return _wait_for(ended, timeout_s, f"job {job_id} to end", every=1.0), self.client.get_job_logs(job_id)

    def lose_worker(self) -> None:
        """The worker node goes away as a machine does: SIGKILL its raylet, then every process the raylet started
        (trial workers, agents). After its raylet alone is killed, the node's trial processes train on for seconds,
        until the GCS declares the node dead, so a trial could still finish on a node already lost."""
        node = _with_descendants(_processes(), {self.worker_raylet_pid})
        assert self.worker_raylet_pid in node, "the worker node's raylet is not running"
        _kill([self.worker_raylet_pid])
        _kill(node - {self.worker_raylet_pid})

    def stop(self) -> None:
        _kill_cluster(self.marker, self.launcher.pid)
        self.launcher.wait(timeout=30)
        if self.launcher.stdin:
            self.launcher.stdin.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture()
def two_nodes(tmp_path):
    cluster = TwoNodeCluster.start(tmp_path / "cluster.log")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def shard_dir(msp_functionals):
    out, _ = msp_functionals
    return out / "msp_podcast" / "functionals"


def _sweep_config(tmp_path: Path, shard_dir: Path, name: str, **changes) -> Path:
    """A random search of tiny ladder trials of ``gpu: 0.5`` each, all of them in flight at once (``max_concurrent``
    8 = what both nodes hold): the head can take 4, so 6 trials put work on both nodes."""
    return write_config(tmp_path, shard_dir, **{
        "name": name, "tracking.experiment": f"{name}_exp", "registry.model_name": f"{name}-model".replace("_", "-"),
        "model.fixed": {"hidden": [16, 16]}, "search.sampler": "random", "search.num_samples": 6,
        "search.max_concurrent": 2 * TRIALS_PER_NODE, "search.scheduler": "none", "search.ranges": {},
        "resources": {"cpu": 1, "gpu": GPU_PER_TRIAL, "max_failures": 2},
        # Both nodes are this machine, so every node sees the storage folder, but its filesystem type says local.
        "storage": {"path": str(tmp_path / "ray_results"), "shared": True}, **changes})


def _entry(tmp_path: Path) -> Path:
    path = tmp_path / "emotune_entry.py"
    path.write_text(ENTRY)
    return path


def _sweep_runs(tmp_path: Path, name: str):
    """``(parent run, child runs)`` of the sweep ``name`` in the test's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"{name}_exp")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`{tracking.ROLE_TAG}` = 'sweep'")
    return parent, tracking.child_runs(client, exp.experiment_id, parent.info.run_id)


def _max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The most intervals ``[start, end)`` open at one instant (an end and a start at the same ms do not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def _results(trial_dir: Path) -> list[dict]:
    """A trial's results so far, as Tune's driver wrote them (one JSON line each)."""
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def _starts(trial_dir: Path) -> list[tuple[int, str]]:
    """``(first epoch, node id)`` of each start of a trial: the first result after every start carries the node."""
    from trainables.tune_entry import NODE_ID_KEY

    return [(line["epoch"], line[NODE_ID_KEY]) for line in _results(trial_dir) if NODE_ID_KEY in line]


@pytest.mark.slow
def test_a_job_spreads_fractional_gpu_trials_over_both_nodes(two_nodes, tmp_path, shard_dir):
    name = "mn_sweep"
    # seeds 2, reuse_search: seed 0 is the selected search trial itself, seed 1 one repeat trial on the cluster.
    config = _sweep_config(tmp_path, shard_dir, name, **{"train.max_epochs": 2, "train.patience": 2,
                                                         "repeats.seeds": 2, "repeats.reuse_search": True})
    job_id = two_nodes.submit(_entry(tmp_path), config)
    status, logs = two_nodes.wait(job_id, 420)
    assert status == "SUCCEEDED", logs[-5000:]
    # The driver ran the uploaded copy of the working dir, not this checkout.
    (imported,) = [ln.split(" from ", 1)[1] for ln in logs.splitlines() if ln.startswith("emotune imported from ")]
    assert Path(imported) != REPO and "runtime_resources" in imported, imported

    parent, runs = _sweep_runs(tmp_path, name)
    assert parent.info.status == "FINISHED"
    roles = Counter(r.data.tags[tracking.ROLE_TAG] for r in runs)
    assert roles == {"search": 6, "repeat": 1}, roles
    for role in roles:  # one run per Tune trial
        ids = [r.data.tags[tracking.TRIAL_TAG] for r in runs if r.data.tags[tracking.ROLE_TAG] == role]
        assert len(set(ids)) == len(ids)
    assert sum(REUSED_TAG in r.data.tags for r in runs) == 1
    assert {r.info.status for r in runs} == {"FINISHED"}

    nodes = {r.data.tags["emotune.node_id"] for r in runs}
    assert nodes <= {two_nodes.head, two_nodes.worker}
    search_nodes = {r.data.tags["emotune.node_id"] for r in runs if r.data.tags[tracking.ROLE_TAG] == "search"}
    assert search_nodes == {two_nodes.head, two_nodes.worker}  # the head holds 4 of the 6 at most
    for r in runs:  # half a GPU each: Ray named the GPU; CPU torch saw no CUDA (a real GPU machine would)
        assert r.data.tags["emotune.gpu_ids"] in {str(g) for g in range(GPUS_PER_NODE)}, r.data.tags
        assert r.data.tags["emotune.device"]
        assert r.data.tags["emotune.node_ip"] == "127.0.0.1"
    # Each run spans its trial: opened when the trial starts, ended when it ends (by the driver, in event order).
    for node in nodes:
        on_node = [r for r in runs if r.data.tags["emotune.node_id"] == node]
        assert _max_overlap([(r.info.start_time, r.info.end_time) for r in on_node]) <= TRIALS_PER_NODE
        for gpu in {r.data.tags["emotune.gpu_ids"] for r in on_node}:
            shared = [(r.info.start_time, r.info.end_time) for r in on_node if r.data.tags["emotune.gpu_ids"] == gpu]
            assert _max_overlap(shared) <= TRIALS_PER_GPU


@pytest.mark.slow
def test_a_lost_worker_node_loses_no_trial(two_nodes, tmp_path, shard_dir):
    name = "mn_fault"
    epochs = 12  # the trial on the worker has about 10 epochs to go when its node is lost
    config = _sweep_config(tmp_path, shard_dir, name, **{"train.max_epochs": epochs, "train.patience": epochs,
                                                         "repeats.seeds": 1, "repeats.reuse_search": True})
    job_id = two_nodes.submit(_entry(tmp_path), config)
    exp_dir = tmp_path / "ray_results" / name

    def a_worker_trial_checkpointed():
        if two_nodes.status(job_id) in ENDED:
            pytest.fail(f"the job ended before a trial on the worker node reported twice: "
                        f"{two_nodes.client.get_job_logs(job_id)[-5000:]}")
        for result in exp_dir.glob("*/result.json"):
            try:
                starts, lines = _starts(result.parent), _results(result.parent)
            except (OSError, ValueError):  # a line being written
                continue
            # Tune takes a trial's next result only once the checkpoint of the one before is saved: after two,
            # the first epoch's checkpoint (the loop keeps one whenever validation improves) is the trial's.
            if starts and starts[0][1] == two_nodes.worker and len(lines) >= 2:
                return lines[0]["trial_id"], result.parent
        return None

    victim, victim_dir = _wait_for(a_worker_trial_checkpointed, 300, "a trial on the worker node to report twice",
                                   every=0.25)
    two_nodes.lose_worker()

    status, logs = two_nodes.wait(job_id, 420)
    assert status == "SUCCEEDED", logs[-5000:]
    parent, runs = _sweep_runs(tmp_path, name)
    assert parent.info.status == "FINISHED"
    search = [r for r in runs if r.data.tags[tracking.ROLE_TAG] == "search"]
    assert len(runs) == len(search) == 6  # seeds 1 with reuse_search: the selected trial is its own repeat
    ids = Counter(r.data.tags[tracking.TRIAL_TAG] for r in search)
    assert len(ids) == 6 and set(ids.values()) == {1}, ids  # no duplicate run for a restarted trial
    for r in search:
        assert r.info.status == "FINISHED", r.data.tags
        assert r.data.tags[tracking.OUTCOME_TAG] in ("completed", "early_stopped"), r.data.tags

    # The trial cut short on the worker started again on the head, from its checkpoint, not from epoch 1.
    starts = _starts(victim_dir)
    assert [node for _, node in starts] == [two_nodes.worker, two_nodes.head], starts
    assert starts[1][0] > 1, starts
    (run,) = [r for r in search if r.data.tags[tracking.TRIAL_TAG] == victim]
    assert run.data.tags["emotune.node_id"] == two_nodes.head  # the run's tags name where it ran last

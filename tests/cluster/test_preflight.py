"""``emotune sweep --check`` and the driver's own refusals (issue 13, items 4-6): nothing trains, every failure is a
``FAIL`` line with its fix and exit 2, and a sweep refuses an unanswering tracking server or a node-local storage
path on a multi-node cluster before it takes a lock, creates a run or starts Ray.

Multi-node conditions are injected (a :class:`~cluster.preflight.ClusterView` of fake nodes, a filesystem type)
rather than started.
"""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

import pytest

from cluster import preflight
from cluster.cli import main
from tests.cluster.helpers import tiny_sweep_config

UNREACHABLE_HTTP = "http://127.0.0.1:9"  # the discard port: nothing listens there
UNREACHABLE_S3 = "s3://emotune-no-bucket/shards/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"


def _node(cpu: float, gpu: float = 0.0, node_id: str = "n") -> dict:
    return {"NodeID": node_id, "Alive": True, "NodeManagerAddress": "127.0.0.1",
            "Resources": {"CPU": cpu, "GPU": gpu}}


TWO_NODES = preflight.ClusterView([_node(2, 2, "a"), _node(2, 2, "b")], "a fake two-node cluster")


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups for S3 credentials


@pytest.fixture
def shard_dir(msp_functionals) -> Path:
    return msp_functionals[0] / "msp_podcast" / "functionals"


@pytest.fixture
def config(tmp_path, shard_dir) -> Path:
    return tiny_sweep_config(tmp_path, shard_dir, "t_check", "t_check_exp", "t-check-model")


def _check(config: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["sweep", "--check", str(config), *extra])
    return code, capsys.readouterr().out


def _line(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if re.match(rf"(OK|FAIL) +{re.escape(name)}:", ln)]
    return line


# ---- emotune sweep --check ---------------------------------------------------------------------------------

def test_check_passes_on_a_good_local_config_and_runs_nothing(config, tmp_path, capsys):
    code, out = _check(config, capsys)
    assert code == 0, out
    for name in ("config", "shards data.shards[0]", "data and search space", "storage", "tracking", "resources"):
        assert _line(out, name).startswith("OK "), out
    assert "checksums verified" in _line(out, "shards data.shards[0]")
    assert "this machine" in _line(out, "resources")
    assert out.rstrip().endswith("the sweep can start")
    # Nothing ran: no MLflow store, no experiment folder.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_check_accepts_file_uri_shards(tmp_path, shard_dir, capsys):
    config = tiny_sweep_config(tmp_path, shard_dir, "t_check", "t_check_exp", "t-check-model")
    config.write_text(config.read_text().replace(str(shard_dir), shard_dir.as_uri()))
    code, out = _check(config, capsys)
    assert code == 0, out
    assert shard_dir.as_uri() in _line(out, "shards data.shards[0]")


def test_check_fails_on_an_unreachable_tracking_server(config, capsys):
    code, out = _check(config, capsys, "--set", f"tracking.uri={UNREACHABLE_HTTP}")
    assert code == 2
    line = _line(out, "tracking")
    assert line.startswith("FAIL") and UNREACHABLE_HTTP in line and "does not answer" in line
    assert "fix: " in line and "make mlflow-server" in line and "MLFLOW_TRACKING_URI" in line
    assert _line(out, "storage").startswith("OK")  # the others are still checked and reported
    assert "1 of 6 checks failed" in out


def test_check_fails_on_a_missing_shard_folder(config, tmp_path, capsys):
    missing = tmp_path / "no_shards" / "msp_podcast" / "functionals"
    code, out = _check(config, capsys, "--set", f"data.shards=[{missing}]")
    assert code == 2
    line = _line(out, "shards data.shards[0]")
    assert line.startswith("FAIL") and str(missing) in line and "emotune ingest" in line
    assert "data and search space" not in out  # not re-reported by prepare


def test_check_fails_on_an_unreachable_object_store(config, capsys):
    code, out = _check(config, capsys, "--set", f"data.shards=['{UNREACHABLE_S3}']")
    assert code == 2
    line = _line(out, "shards data.shards[0]")
    assert line.startswith("FAIL") and "emotune-no-bucket" in line and "cannot be reached" in line
    assert "fix: " in line and "credentials" in line


def test_check_refuses_node_local_storage_on_a_multi_node_cluster(config, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "ext4")
    monkeypatch.setattr(preflight, "cluster_view", lambda num_cpus=None: TWO_NODES)
    code, out = _check(config, capsys)
    assert code == 2
    line = _line(out, "storage")
    assert line.startswith("FAIL") and "storage.path" in line and "2 alive nodes" in line
    assert "s3://" in line and "NFS" in line  # the fix
    assert "8 trial(s) of 1 CPU fit at once" not in out and "4 trial(s) of 1 CPU fit at once" in out


def test_check_reports_a_cluster_it_cannot_join(config, monkeypatch, capsys):
    def refuse(num_cpus=None):
        raise ConnectionError("could not connect to GCS at 127.0.0.1:9")

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    monkeypatch.setattr(preflight, "cluster_view", refuse)
    code, out = _check(config, capsys)
    assert code == 2
    line = _line(out, "cluster")
    assert "RAY_ADDRESS=127.0.0.1:9" in line and "ray job submit" in line
    assert "resources" not in out


def test_check_reports_a_bad_config_alone(config, capsys):
    code, out = _check(config, capsys, "--set", "search.num_samples=0")
    assert code == 2
    assert _line(out, "config").startswith("FAIL") and "search.num_samples" in out
    assert "storage" not in out and "1 of 1 checks failed" in out  # nothing else can be checked without it


# ---- the pieces ----------------------------------------------------------------------------------------------

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw 0 0
/dev/vdb /mnt/shared/local\\040disk xfs rw 0 0
tmpfs /mnt/shared/over tmpfs rw 0 0
server:/other /mnt/shared/over nfs rw 0 0
bucket /mnt/bucket fuse.gcsfuse rw 0 0
/dev/sdc /mnt/usb fuseblk rw 0 0
"""


@pytest.mark.parametrize(("path", "fstype", "shared"), [
    ("/home/u/ray_results", "ext4", False),
    ("/mnt/shared/sweeps/x", "nfs4", True),
    ("/mnt/shared/local disk/x", "xfs", False),  # longest mount point wins; \040 is a space
    ("/mnt/shared/over/x", "nfs", True),  # of two mounts on one point, the later is on top
    ("/mnt/sharedx/y", "ext4", False),  # a prefix of the name is not a parent folder
    ("/mnt/bucket/sweeps", "fuse.gcsfuse", True),
    ("/mnt/usb/x", "fuseblk", False),
])
def test_filesystem_type_and_sharing(path, fstype, shared):
    assert preflight.filesystem_type(path, MOUNTS) == fstype
    assert preflight.is_shared_filesystem(fstype) is shared


def test_storage_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "ext4")
    one = preflight.ClusterView([_node(2)], "one node")
    assert preflight.check_storage(str(tmp_path / "rr"), one).ok
    refused = preflight.check_storage(str(tmp_path / "rr"), TWO_NODES)
    assert not refused.ok and f"storage.path {tmp_path / 'rr'}" in refused.detail
    assert preflight.check_storage((tmp_path / "rr").as_uri(), TWO_NODES).ok is False  # file:// is still local
    (tmp_path / "a_file").write_text("x")
    assert "is a file" in preflight.check_storage(str(tmp_path / "a_file" / "rr"), one).detail
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "nfs4")
    assert preflight.check_storage(str(tmp_path / "rr"), TWO_NODES).ok
    # An object store that does not answer in time: its client would retry for minutes.
    slow = preflight.check_storage(UNREACHABLE_S3, TWO_NODES, timeout_s=0.5)
    assert not slow.ok and "no answer within 0.5 s" in slow.detail and "credentials" in slow.fix


def test_storage_shared_declares_what_the_filesystem_type_does_not_tell(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "ext4")
    folder = str(tmp_path / "rr")
    declared = preflight.check_storage(folder, TWO_NODES, declared=True)
    assert declared.ok and "storage.shared: true" in declared.detail
    preflight.require_shared_storage(folder, TWO_NODES, declared=True)  # no error
    with pytest.raises(ValueError, match="storage.shared: true"):  # the fix names the field
        preflight.require_shared_storage(folder, TWO_NODES)
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "nfs4")
    refused = preflight.check_storage(folder, TWO_NODES, declared=False)  # an NFS export only this node mounts
    assert not refused.ok and "declared node-local" in refused.detail
    with pytest.raises(ValueError, match="declared node-local"):
        preflight.require_shared_storage(folder, TWO_NODES, declared=False)


def test_resources_against_the_cluster_nodes(config):
    from searchspace.schema import load_sweep_config

    cfg = load_sweep_config(config)
    half_gpu = cfg.with_overrides({"resources.gpu": 0.5, "search.max_concurrent": 16})
    check = preflight.check_resources(half_gpu, TWO_NODES)
    assert check.ok and "4 trial(s) of 1 CPU + 0.5 GPU fit at once" in check.detail  # CPUs bound: 2 per node
    assert "fewer than search.max_concurrent 16" in check.detail
    quarter = half_gpu.with_overrides({"resources.cpu": 0.5, "resources.gpu": 0.25})
    assert "8 trial(s)" in preflight.check_resources(quarter, TWO_NODES).detail  # 2 / 0.25 GPUs per node
    cpu_only = preflight.ClusterView([_node(16), _node(16)], "CPU nodes")
    refused = preflight.check_resources(half_gpu, cpu_only)
    assert not refused.ok and "no node of CPU nodes" in refused.detail and "resources.gpu" in refused.fix
    too_big = cfg.with_overrides({"resources.cpu": 3})
    assert not preflight.check_resources(too_big, TWO_NODES).ok  # 4 CPUs in all, but 2 per node


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "ok"), [(200, True), (404, True), (503, False)])
def test_tracking_server_probe(status, ok):
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        check = preflight.check_tracking(uri, timeout_s=5)
        assert check.ok is ok, check
        assert check.ok or "HTTP 503" in check.detail
    finally:
        server.shutdown()
        server.server_close()


def test_tracking_stores_on_disk(tmp_path):
    assert preflight.check_tracking(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}").ok  # created when first used
    (tmp_path / "f").write_text("x")
    check = preflight.check_tracking(f"sqlite:///{tmp_path / 'f' / 'mlflow.db'}")
    assert not check.ok and "is a file" in check.detail
    assert preflight.check_tracking(str(tmp_path / "mlruns")).ok
    assert not preflight.check_tracking("postgresql://u@127.0.0.1:9/db", timeout_s=2).ok


# ---- the sweep driver refuses before it starts anything ---------------------------------------------------

def test_sweep_refuses_an_unreachable_tracking_server_before_anything(config, tmp_path, capsys):
    code = main(["sweep", str(config), "--set", f"tracking.uri={UNREACHABLE_HTTP}"])
    err = capsys.readouterr().err
    assert code == 2
    assert UNREACHABLE_HTTP in err and "make mlflow-server" in err and "MLFLOW_TRACKING_URI" in err
    assert not (tmp_path / "ray_results").exists()  # no lock, no state file, no Ray


def test_sweep_refuses_node_local_storage_on_a_multi_node_cluster(config, tmp_path, monkeypatch):
    from cluster.sweep import run_sweep

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # never joined: the node list is injected
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "ext4")
    monkeypatch.setattr(preflight, "cluster_view", lambda num_cpus=None: TWO_NODES)
    with pytest.raises(ValueError, match=r"storage\.path .* local to this node, but the Ray cluster has 2 alive"):
        run_sweep(config)
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_shared_or_remote_storage_never_asks_ray(monkeypatch, tmp_path):
    def must_not_run(num_cpus=None):
        raise AssertionError("asked Ray for its nodes")

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    monkeypatch.setattr(preflight, "cluster_view", must_not_run)
    preflight.require_shared_storage("s3://bucket/sweeps")
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "nfs4")
    preflight.require_shared_storage(str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(preflight, "filesystem_type", lambda path, mounts=None: "ext4")
    preflight.require_shared_storage(str(tmp_path))  # no cluster: the local Ray is one node

"""Cluster manifests, .rayignore and `make mlflow-server`: the fields emotune relies on, and the job upload's size.

The upload tests build the package with Ray's own packaging code (the zip `ray job submit --working-dir .` sends), so
they follow Ray's exclude rules rather than a copy of them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "cluster" / "manifests"
PACKAGES = ("cluster", "data_io", "searchspace", "trainables")
GPU = "nvidia.com/gpu"

# Paths a job must never upload: version control, environments, shards, MLflow stores, Ray results, the demo folder.
MUST_EXCLUDE = [
    ".git/HEAD", ".venv/bin/python", "venv/bin/python", "cluster/__pycache__/cli.cpython-311.pyc",
    "mlruns/0/meta.yaml", "mlflow.db", "mlflow-server.db", "mlflow-server-artifacts/1/model/model.pt",
    "ray_results/demo/searcher-state.pkl", "demo_out/shards/msp_podcast/functionals/part-00000.parquet",
    "shards/iemocap/logmel/part-00000.parquet", "bench_work/corpus/Session1/a.wav", ".pytest_cache/v/lastfailed",
]
# Code and configs a job needs; names close to excluded ones (data_io/shards.py) must survive.
MUST_KEEP = [
    "pyproject.toml", "cluster/cli.py", "cluster/manifests/runtime_env.yaml", "data_io/shards.py",
    "searchspace/schema.py", "trainables/loop.py", "configs/demo.yaml", "tests/data_io/test_shards.py",
]
HEAVY_PARTS = {".git", ".venv", "venv", "mlruns", "ray_results", "demo_out", "shards", "__pycache__"}
UPLOAD_LIMIT = 5 * 1024 * 1024  # the code zips to about 1 MB; Ray's own limit is 100 MiB through the dashboard


def _docs(name: str) -> list[dict]:
    with open(MANIFESTS / name) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _rayignore() -> list[str]:
    lines = (REPO / ".rayignore").read_text().splitlines()
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return next(d for d in _docs("kuberay-raycluster.yaml") if d["kind"] == "RayCluster")


@pytest.fixture(scope="module")
def launcher() -> dict:
    (doc,) = _docs("cluster-launcher.yaml")
    return doc


@pytest.fixture(scope="module")
def runtime_env() -> dict:
    (doc,) = _docs("runtime_env.yaml")
    return doc


def _pods(rc: dict) -> list[dict]:
    return [rc["spec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in rc["spec"]["workerGroupSpecs"]]


# --- KubeRay RayCluster --------------------------------------------------------------------------------------------

def test_raycluster_head_exposes_gcs_dashboard_and_client_ports(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    head = raycluster["spec"]["headGroupSpec"]
    (container,) = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    # The head Service reaches the pod's address, so the Jobs API must listen beyond the pod's loopback.
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["dashboard-port"] == "8265"
    # Trials never land on the head, which runs GCS and the sweep driver.
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    assert raycluster["spec"]["authOptions"] == {"mode": "token"}


def test_raycluster_gpu_worker_group_declares_its_gpus(raycluster):
    (group,) = raycluster["spec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert int(limits[GPU]) >= 1 and requests[GPU] == limits[GPU]  # Kubernetes wants both equal for GPUs
    assert group["rayStartParams"]["num-gpus"] == limits[GPU]
    # Four 1-CPU trials share a GPU at `gpu: 0.25`, so a worker needs at least 4 CPUs per GPU.
    assert int(limits["cpu"]) >= 4 * int(limits[GPU])
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] >= 2  # a multi-node sweep
    assert raycluster["spec"]["enableInTreeAutoscaling"] is True


def test_raycluster_start_params_and_env_are_strings(raycluster):
    """KubeRay's rayStartParams and Kubernetes env values are string maps: a bare 0 or 1 is rejected on apply."""
    groups = [raycluster["spec"]["headGroupSpec"], *raycluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    for pod in _pods(raycluster):
        for container in pod["containers"]:
            assert all(isinstance(v, str) for v in _env(container).values()), container["name"]


def test_raycluster_every_pod_has_mlflow_and_no_usage_stats(raycluster):
    envs = [_env(c) for pod in _pods(raycluster) for c in pod["containers"]]
    assert len(envs) == 2
    for env in envs:
        assert re.match(r"https?://", env["MLFLOW_TRACKING_URI"]), env
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert envs[0] == envs[1]  # trials log to the server the driver checked


def test_raycluster_every_pod_mounts_the_shared_claim_at_one_path(raycluster):
    docs = _docs("kuberay-raycluster.yaml")
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # head and every worker mount it at once
    mounts = set()
    for pod in _pods(raycluster):
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        for container in pod["containers"]:
            for m in container["volumeMounts"]:
                assert volumes[m["name"]] == claim["metadata"]["name"]
                mounts.add(m["mountPath"])
    assert mounts == {"/mnt/emotune"}


def test_image_and_ray_version_agree_across_manifests(raycluster, launcher):
    images = {c["image"] for pod in _pods(raycluster) for c in pod["containers"]}
    assert len(images) == 1 and "REPLACE" in images.pop()  # a placeholder the user sets, the same everywhere
    version = raycluster["spec"]["rayVersion"]
    dockerfile = (MANIFESTS / "Dockerfile").read_text()
    assert f"rayproject/ray:{version}-" in dockerfile and "-gpu" in dockerfile
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{version}-")
    assert launcher["docker"]["image"].endswith("-gpu")


def test_dockerfile_installs_emotune_without_replacing_torch():
    run = re.search(r"^RUN (.+?)(?<!\\)$", (MANIFESTS / "Dockerfile").read_text(), re.M | re.S).group(1)
    torch_at, emotune_at = run.index('import torch" 2>/dev/null ||'), run.index("pip install --no-cache-dir /home")
    assert torch_at < emotune_at  # torch (CUDA) first and only if missing; emotune's torch>=2.4 is then met


# --- Ray cluster launcher ------------------------------------------------------------------------------------------

def test_launcher_config_passes_rays_own_validation(launcher):
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_gpu_worker_type_and_head(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    (worker,) = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert worker["resources"]["GPU"] >= 1 and worker["resources"]["CPU"] >= 4 * worker["resources"]["GPU"]
    assert 1 <= worker["min_workers"] <= worker["max_workers"] <= launcher["max_workers"]


def test_launcher_ports_auth_and_env(launcher):
    head_start = " ".join(launcher["head_start_ray_commands"])
    for flag in ("--head", "--port=6379", "--dashboard-port=8265", "--dashboard-host=127.0.0.1"):
        assert flag in head_start.split(), flag
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(launcher["worker_start_ray_commands"])
    options = launcher["docker"]["run_options"]
    env = dict(o.removeprefix("--env=").split("=", 1) for o in options if o.startswith("--env="))
    assert env["RAY_AUTH_MODE"] == "token"  # pitfall 10: clients then need RAY_AUTH_MODE=token and this token
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert re.match(r"https?://", env["MLFLOW_TRACKING_URI"])
    # Every node gets the client's token, and the shared folder at the same path in every container.
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--volume=/mnt/emotune:/mnt/emotune" in options


def test_launcher_installs_emotune_from_the_mounted_repo_without_replacing_torch(launcher):
    remote = next(r for r, local in launcher["file_mounts"].items() if local == ".")
    (install,) = [c for c in launcher["setup_commands"] if f"pip install -q {remote}" in c]
    assert install.index('import torch" 2>/dev/null ||') < install.index(f"pip install -q {remote}")
    # The repo copy skips .git and honours the ignore files, like the job upload.
    assert "**/.git" in launcher["rsync_exclude"]
    assert set(launcher["rsync_filter"]) == {".gitignore", ".rayignore"}


# --- runtime env, .rayignore and the upload -------------------------------------------------------------------------

def test_runtime_env_is_what_ray_job_submit_accepts(runtime_env):
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    parsed = parse_runtime_env_args(runtime_env=str(MANIFESTS / "runtime_env.yaml"), working_dir=".")
    assert set(RuntimeEnv(**parsed)) == {"working_dir", "excludes", "env_vars"}
    assert "working_dir" not in runtime_env  # --working-dir gives it; a value here would only be overridden
    assert runtime_env["env_vars"] == {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_rayignore_and_runtime_env_excludes_list_the_same_patterns(runtime_env):
    assert sorted(_rayignore()) == sorted(runtime_env["excludes"])


@pytest.mark.parametrize("source", ["runtime_env", "rayignore"])
def test_excludes_drop_heavy_paths_and_keep_code(source, runtime_env):
    """Ray prunes a folder whose path matches, so a path is left out when it or any parent matches."""
    from ray._private.runtime_env.packaging import _get_excludes

    patterns = runtime_env["excludes"] if source == "runtime_env" else _rayignore()
    matches = _get_excludes(REPO, patterns)

    def left_out(rel: str) -> bool:
        parts = PurePosixPath(rel).parts
        return any(matches(REPO.joinpath(*parts[:i])) for i in range(1, len(parts) + 1))

    assert [p for p in MUST_EXCLUDE if not left_out(p)] == []
    assert [p for p in MUST_KEEP if left_out(p)] == []


def _upload(tmp_path: Path, *, include_gitignore: bool, excludes: list[str]) -> Path:
    from ray._private.runtime_env.packaging import create_package

    package = tmp_path / "working_dir.zip"
    create_package(str(REPO), package, include_gitignore=include_gitignore, excludes=excludes)
    return package


def _check_upload(package: Path) -> None:
    names = zipfile.ZipFile(package).namelist()
    heavy = [n for n in names if HEAVY_PARTS & set(PurePosixPath(n).parts) or n.startswith("mlflow")]
    assert heavy == []
    assert [n for n in names if n.endswith((".parquet", ".wav", ".db"))] == []
    for pkg in PACKAGES:  # the job imports these from the unpacked working dir
        assert f"{pkg}/__init__.py" in names
    assert {"pyproject.toml", ".rayignore", "cluster/manifests/runtime_env.yaml"} <= set(names)
    assert package.stat().st_size < UPLOAD_LIMIT, f"{package.stat().st_size / 2**20:.1f} MiB"


def test_job_upload_of_this_repo_is_small(tmp_path, runtime_env):
    """The zip `ray job submit --working-dir . --runtime-env runtime_env.yaml` builds and PUTs to the dashboard."""
    from ray._private.ray_constants import get_runtime_env_default_excludes

    excludes = get_runtime_env_default_excludes() + runtime_env["excludes"]
    _check_upload(_upload(tmp_path, include_gitignore=True, excludes=excludes))


def test_job_upload_stays_small_without_gitignore_and_ray_defaults(tmp_path, monkeypatch):
    """Worst case: RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1, Ray's default excludes switched off, no --runtime-env file.

    Only .rayignore (which Ray always reads) keeps the heavy folders out.
    """
    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    from ray._private.ray_constants import get_runtime_env_default_excludes

    assert get_runtime_env_default_excludes() == []
    _check_upload(_upload(tmp_path, include_gitignore=False, excludes=[]))


# --- make mlflow-server --------------------------------------------------------------------------------------------

def _mlflow_server_command(*overrides: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "MLFLOW_SERVER_"))}
    out = subprocess.run(["make", "-n", "mlflow-server", *overrides], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    words = shlex.split(out.replace("\\\n", " "))
    start = next(i for i, w in enumerate(words) if w.endswith("/mlflow") and words[i + 1] == "server")
    return words[start:]


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_mlflow_server_binds_loopback_and_serves_artifacts():
    cmd = _mlflow_server_command()
    assert _option(cmd, "--host") == "127.0.0.1"
    assert _option(cmd, "--port") == "5001"
    db = _option(cmd, "--backend-store-uri")
    assert db == "sqlite:///mlflow-server.db"
    # Clients upload artifacts over HTTP to the server, which writes them into this local folder.
    assert "--serve-artifacts" in cmd
    artifacts = _option(cmd, "--artifacts-destination")
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "mlflow-server.db*" in ignored and f"{artifacts}/" in ignored
    assert {"mlflow-server.db*", artifacts} <= set(_rayignore())

    assert _option(_mlflow_server_command("MLFLOW_SERVER_PORT=5123"), "--port") == "5123"

"""``emotune sweep --check CONFIG``: what a sweep would need, checked without running a trial.

Run it where the sweep's driver will run. For a cluster that is inside it, through the same command a job uses
(``ray job submit --address http://HEAD:8265 --working-dir . -- emotune sweep --check CONFIG``), so the checks see
the head node's filesystems and network and Ray's ``RAY_ADDRESS``. It prints one line per check, ``OK`` or ``FAIL``,
and the fix of every failure:

* ``config``: the YAML validates (with ``--set`` and ``--smoke`` overrides).
* ``shards <field>``: every folder of ``data.shards``, ``data.inputs`` and ``data.auxiliary`` opens, a local path or
  a URI ``pyarrow.fs`` reads (``s3://``, ``gs://``, ``hdfs://``, ``file://``), its checksums verified. Only the
  driver reads shards; trials get the decoded store through Ray's object store, so workers need no access to them.
* ``data and search space``: all else :func:`cluster.sweep.prepare` checks (family, folds, targets, the space).
* ``storage``: ``storage.path`` reachable and writable, and shared when the cluster has more than one node.
* ``tracking``: the MLflow tracking server answers (``http(s)://``), its database port answers (``postgresql://``
  and the like), or its folder is writable (``sqlite:///``, ``file://``, a path).
* ``resources``: one trial's ``resources.cpu`` and ``resources.gpu`` fit on some node, and how many trials fit
  at once compared with ``search.max_concurrent``.

The sweep driver runs two of these itself before it takes the experiment lock, creates MLflow runs or starts Ray:
:func:`require_tracking_server` and :func:`require_shared_storage`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster import ray_runtime  # noqa: F401  (loopback environment before Ray loads)
from data_io.shards import REACH_FIX

DEFAULT_TIMEOUT_S = 10.0  # per network probe: an object store's client retries for minutes on its own
# Filesystems that other machines mount too: a storage.path on one is seen by every node of a cluster.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "ceph", "cephfs", "lustre", "cifs", "smb3", "smbfs", "glusterfs", "gpfs", "beegfs", "ocfs2",
    "gfs2", "afs", "panfs", "wekafs", "orangefs", "pvfs2", "fuse",
})
# FUSE types that are one machine's own; any other fuse.* (sshfs, s3fs, gcsfuse, juicefs, ceph-fuse...) counts as
# shared. Not knowing a type errs towards "shared": Ray Tune's own storage check remains behind this one.
LOCAL_FUSE = frozenset({"fuseblk", "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal", "fuse.fuse-overlayfs",
                        "fuse.snapfuse"})
TRACKING_FIX = ("start the server (`make mlflow-server` serves one on 127.0.0.1 from this checkout) or point "
                "MLFLOW_TRACKING_URI (or tracking.uri in the config, which wins over it) at one that runs")
STORAGE_FIX = ("set storage.path to a folder every node mounts (NFS, CephFS, Lustre, a FUSE-mounted bucket) or "
               "to an object-store URI (s3://BUCKET/PATH, gs://BUCKET/PATH), so checkpoints outlive their node and "
               "the driver resumes from them; if every node does mount this path, say so with storage.shared: true")


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it holds, what was found, and the fix when it does not.

    ``fix`` is empty when ``detail`` already names it (the shard and config errors of ``data_io`` and ``prepare``
    are written that way).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix and not self.ok else text


@dataclass(frozen=True)
class ClusterView:
    """The Ray nodes a sweep would run on.

    Attributes:
        nodes: The alive nodes, as ``ray.nodes()`` gives them (``NodeID``, ``NodeManagerAddress``, ``Resources``
            with ``CPU`` and ``GPU``); without a cluster, this machine as the one node of the local Ray.
        where: Which Ray that is, for messages.
    """

    nodes: list[dict]
    where: str


def cluster_view(num_cpus: int | None = None) -> ClusterView:
    """The Ray the sweep would use: the one this process is connected to, the cluster ``RAY_ADDRESS`` names (joined
    and left again, so the sweep joins it afresh with its own settings), or this machine.

    Args:
        num_cpus: CPUs of a local Ray (``--num-cpus``); default all cores.

    Raises:
        Exception: Whatever ``ray.init`` raises when ``RAY_ADDRESS`` cannot be joined.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ClusterView(_alive(ray.nodes()), "the Ray cluster this process is connected to")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            return ClusterView(_alive(ray.nodes()), f"the Ray cluster at RAY_ADDRESS={address}")
        finally:
            ray.shutdown()
    import torch

    cpus = num_cpus or os.cpu_count() or 1
    node = {"NodeID": "local", "Alive": True, "NodeManagerAddress": "127.0.0.1",
            "Resources": {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}}
    return ClusterView([node], "this machine (the local Ray `emotune sweep` starts)")


def _alive(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n.get("Alive")]


def joins_cluster() -> bool:
    """Whether a sweep here would run on a Ray cluster rather than start a local (one-node) Ray."""
    ray = sys.modules.get("ray")
    return bool(os.environ.get("RAY_ADDRESS")) or (ray is not None and ray.is_initialized())


# ---- storage -----------------------------------------------------------------------------------------------

def filesystem_type(path: str | os.PathLike, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ``fuse.sshfs``...): that of its longest
    mount point in ``/proc/mounts``; the path need not exist yet (symlinks in its existing part are followed).

    Args:
        path: A local path.
        mounts: The text of ``/proc/mounts`` (tests inject one); read from the system when None.

    Returns:
        The type, or None where ``/proc/mounts`` cannot be read (not Linux).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    real = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # Spaces and tabs in mount points are written as octal escapes (\040).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # >=: of two mounts on one point, the later one is on top
            best, kind = point, fields[2]
    return kind


def is_shared_filesystem(fstype: str | None) -> bool:
    """Whether a filesystem type is one other machines mount too (see :data:`SHARED_FILESYSTEMS`)."""
    if not fstype or fstype in LOCAL_FUSE:
        return False
    return fstype in SHARED_FILESYSTEMS or fstype.startswith("fuse.")


def _local_path(storage: str) -> str | None:
    """``storage.path`` as a local path (``file://`` stripped, made absolute), or None for a remote URI."""
    if "://" not in storage:
        return str(Path(storage).resolve())
    scheme, _, rest = storage.partition("://")
    if scheme.lower() != "file":
        return None
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(storage).path) or rest


def storage_sharing(path: str, node_count: int, fstype: str | None, declared: bool | None = None) -> Check:
    """A local ``storage.path`` judged for a cluster of ``node_count`` nodes: refused when the cluster has more than
    one node and the path is on a filesystem known to be local to this one. ``declared`` is ``storage.shared``:
    True (every node mounts this path, whatever its type says) or False (never shared) decide instead of the type."""
    if declared:
        return Check("storage", True, f"storage.path {path} declared shared by every node (storage.shared: true); "
                                      f"{node_count} node(s)")
    kind = f"a filesystem of type {fstype}" if fstype else "a filesystem of unknown type"
    local = declared is False or (fstype and not is_shared_filesystem(fstype))
    if declared is False:
        kind = f"{kind}, declared node-local (storage.shared: false)"
    if node_count > 1 and local:
        return Check("storage", False,
                     f"storage.path {path} is on {kind}, local to this node, but the Ray cluster has {node_count} "
                     f"alive nodes: trials on the other nodes could not write their checkpoints there (Ray Tune "
                     f"refuses such a path) and a re-run could not resume from them", STORAGE_FIX)
    shared = ("node-local" if local else "shared" if is_shared_filesystem(fstype) else "sharing unknown")
    return Check("storage", True, f"storage.path {path} on {kind} ({shared}); {node_count} node(s)")


def require_shared_storage(storage: str, view: ClusterView | None = None, declared: bool | None = None) -> None:
    """Refuse a node-local ``storage.path`` when the sweep would run on a Ray cluster of more than one alive node.

    Cheap in the usual cases: an object-store URI, a network filesystem, or no cluster (a local Ray is one node)
    never asks Ray; only a local path on a local filesystem with ``RAY_ADDRESS`` set joins the cluster to count its
    nodes (and leaves it again).

    Args:
        storage: ``storage.path`` as the sweep uses it.
        view: The cluster's nodes (tests inject them); asked from Ray when needed and None.
        declared: ``storage.shared`` (None: judged by the filesystem's type).

    Raises:
        ValueError: Naming ``storage.path``, the node count and the fix.
    """
    path = _local_path(storage)
    if path is None or declared:
        return
    fstype = filesystem_type(path)
    if declared is None and (not fstype or is_shared_filesystem(fstype)):
        return
    if view is None:
        if not joins_cluster():
            return
        view = cluster_view()
    check = storage_sharing(path, len(view.nodes), fstype, declared)
    if not check.ok:
        raise ValueError(f"{check.detail}; {check.fix}")


def check_storage(storage: str, view: ClusterView | None, timeout_s: float = DEFAULT_TIMEOUT_S,
                  declared: bool | None = None) -> Check:
    """``storage.path``: a remote URI answers; a local path is writable (or can be created) and, on a cluster of
    several nodes, on a shared filesystem. ``view`` None: the cluster is unknown (only reachability is checked)."""
    path = _local_path(storage)
    if path is None:
        problem = _reach(storage, timeout_s)
        if problem:
            return Check("storage", False, f"storage.path {storage} cannot be reached ({problem})", REACH_FIX)
        return Check("storage", True, f"storage.path {storage} answers (a remote store every node reaches)")
    problem = _writable_problem(Path(path))
    if problem:
        return Check("storage", False, f"storage.path {path} {problem}",
                     "point storage.path at a folder this user may create and write")
    return storage_sharing(path, len(view.nodes) if view else 1, filesystem_type(path), declared)


def _writable_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be written or created, or None."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return "has no existing parent folder"
    if not existing.is_dir():
        return f"cannot be a folder: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} is not writable by this user"
    return None


def _reach(uri: str, timeout_s: float) -> str | None:
    """Why a URI's filesystem does not answer (``FileSystem.from_uri`` and one ``get_file_info``), or None."""
    from pyarrow import fs as pafs

    def probe():
        filesystem, path = pafs.FileSystem.from_uri(uri)
        filesystem.get_file_info(path)

    try:
        _within(timeout_s, probe)
    except Exception as err:  # any failure of the store's client is the answer: report it
        return _first_line(err)
    return None


def _within(seconds: float, fn):
    """``fn()``, or TimeoutError after ``seconds``. It runs in a daemon thread: an abandoned attempt (an object
    store's client retrying for minutes) must not keep the process from exiting."""
    import threading

    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


# ---- tracking ----------------------------------------------------------------------------------------------

def check_tracking(uri: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    """Whether MLflow can log at ``uri``: an http(s) server answers ``/health``, a database port accepts a
    connection, or the folder of a SQLite file or file store is writable. Only the driver logs, so only the
    machine this runs on needs to reach it."""
    from cluster.tracking import _display_uri

    shown = _display_uri(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        problem = _http_problem(uri, timeout_s)
        if problem:
            return Check("tracking", False, f"the MLflow tracking server {shown} does not answer ({problem})",
                         TRACKING_FIX)
        return Check("tracking", True, f"the MLflow tracking server {shown} answers")
    if scheme in ("", "file", "sqlite"):
        target = _store_folder(uri, scheme)
        problem = _writable_problem(target)
        if problem:
            return Check("tracking", False, f"{shown}: the folder {target} {problem}",
                         "point tracking.uri (or MLFLOW_TRACKING_URI) at a writable place or a tracking server")
        return Check("tracking", True, f"{shown} (the folder {target} is writable)")
    if scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        problem = _tcp_problem(uri, timeout_s)
        if problem:
            return Check("tracking", False, f"the MLflow database of {shown} does not answer ({problem})",
                         "start the database or fix tracking.uri / MLFLOW_TRACKING_URI")
        return Check("tracking", True, f"the MLflow database of {shown} accepts connections")
    return Check("tracking", True, f"{shown} (a {scheme} store; not probed)")


def require_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Refuse a sweep whose http(s) tracking server does not answer, before anything starts: otherwise the first
    MLflow call fails after MLflow's own retries (minutes) or, mid-sweep, writes are queued for a server that was
    never there.

    Raises:
        ValueError: Naming the URI and the fix (``make mlflow-server``, ``MLFLOW_TRACKING_URI``).
    """
    if not uri.lower().startswith(("http://", "https://")):
        return
    check = check_tracking(uri, timeout_s)
    if not check.ok:
        raise ValueError(f"{check.detail}; {check.fix}")


def _http_problem(uri: str, timeout_s: float) -> str | None:
    """Why an MLflow server does not answer ``GET <uri>/health``, or None when it (or a proxy before it) does."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user:password@ is MLflow's to send, not part of the address
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as err:
        # An answer; 502-504 come from a proxy whose server behind it is down.
        return f"HTTP {err.code} from {url}" if err.code in (502, 503, 504) else None
    except (urllib.error.URLError, OSError, ValueError) as err:  # refused, no route, no such host, timed out
        return str(getattr(err, "reason", err))


def _tcp_problem(uri: str, timeout_s: float) -> str | None:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    default = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[parts.scheme.split("+")[0].lower()]
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default), timeout=timeout_s):
            return None
    except OSError as err:
        return str(err)


def _store_folder(uri: str, scheme: str) -> Path:
    """The folder a SQLite or file tracking URI writes into."""
    from urllib.parse import unquote, urlsplit

    if scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db (SQLAlchemy's spelling); no path: in memory.
        db = uri.split("://", 1)[1].split("?", 1)[0]
        db = db[1:] if db.startswith("/") else db
        return Path(db).resolve().parent if db else Path.cwd()
    if scheme == "file":
        return Path(unquote(urlsplit(uri).path)).resolve()
    return Path(uri).resolve()


# ---- shards, config, resources -----------------------------------------------------------------------------

def check_shards(cfg, base: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Check]:
    """One check per shard folder the config names: it opens (a URI is first probed within ``timeout_s``) and, for
    a local folder, its checksums verify. A URI folder's checksums are left to ``prepare``, which verifies them (an
    object store has no checksum cache, so verifying here too would read the data twice)."""
    from data_io import shards

    folders = [(f"data.inputs.{name}[{i}]", d) for name, dirs in cfg.resolved_inputs(base).items()
               for i, d in enumerate(dirs)]
    if not folders:
        folders = [(f"data.shards[{i}]", d) for i, d in enumerate(cfg.resolved_shards(base))]
    folders += [(f"data.auxiliary[{i}].shards", d) for i, d in enumerate(cfg.resolved_auxiliary(base))]
    out = []
    for field, folder in folders:
        remote = shards.is_uri(folder)
        problem = _reach(str(folder), timeout_s) if remote else None
        if problem:
            out.append(Check(f"shards {field}", False, f"{folder} cannot be reached ({problem})", REACH_FIX))
            continue
        try:
            ss = shards.open_shards(folder, verify_checksums=not remote)
        except (shards.ShardError, OSError) as err:
            out.append(Check(f"shards {field}", False, str(err)))
            continue
        m = ss.manifest
        out.append(Check(f"shards {field}", True, f"{folder}: {m.total_rows} utterances of {m.corpus}/"
                                                  f"{m.feature_set} in {len(m.files)} part(s)"
                                                  f"{'' if remote else ', checksums verified'}"))
    return out


def check_resources(cfg, view: ClusterView) -> Check:
    """Whether one trial's ``resources.cpu`` and ``resources.gpu`` fit on some node (Ray places a trial on one
    node), and how many fit at once against ``search.max_concurrent`` (fewer is no failure: the rest wait)."""
    cpu, gpu = float(cfg.resources.cpu), float(cfg.resources.gpu)
    res = [n.get("Resources", {}) for n in view.nodes]
    fits = [_trials_fitting(r, cpu, gpu) for r in res]
    have = (f"{len(res)} node(s), {sum(r.get('CPU', 0) for r in res):g} CPUs, "
            f"{sum(r.get('GPU', 0) for r in res):g} GPUs")
    need = f"{cpu:g} CPU" + (f" + {gpu:g} GPU" if gpu else "")
    if not any(fits):
        big = max(res, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        return Check("resources", False,
                     f"a trial asks {need} on one node, but no node of {view.where} has that ({have}; the largest "
                     f"has {big.get('CPU', 0):g} CPUs and {big.get('GPU', 0):g} GPUs), so no trial could start",
                     "lower resources.cpu / resources.gpu (gpu: 0.25 shares a GPU among four trials) or add a "
                     "node that has them (an autoscaling cluster starts one when the sweep asks: then this is "
                     "expected)")
    want = int(cfg.search.max_concurrent)
    detail = f"{view.where}: {have}; {sum(fits)} trial(s) of {need} fit at once"
    if sum(fits) < want:
        detail += f", fewer than search.max_concurrent {want}: the others wait their turn"
    return Check("resources", True, detail)


def _trials_fitting(resources: dict, cpu: float, gpu: float) -> int:
    # The epsilon keeps 1.0 / 0.1 from counting 9 trials.
    n = math.floor(resources.get("CPU", 0) / cpu + 1e-9)
    if gpu > 0:
        n = min(n, math.floor(resources.get("GPU", 0) / gpu + 1e-9))
    return max(n, 0)


def run_checks(config_path: Path, overrides: dict | None = None, *, num_cpus: int | None = None,
               view: ClusterView | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Check]:
    """Every check of ``emotune sweep --check`` (see the module docstring), in order; nothing trains or logs.

    Args:
        config_path: The sweep config.
        overrides: ``--set`` (and ``--smoke``) overrides, as ``run_sweep`` takes them.
        num_cpus: CPUs of a local Ray (``--num-cpus``).
        view: The cluster's nodes (tests inject them); default :func:`cluster_view`.
        timeout_s: How long each network probe may take.

    Returns:
        The checks; the sweep would start when every one is ``ok``.
    """
    from cluster import sweep
    from cluster.tracking import resolve_tracking_uri
    from searchspace.schema import load_sweep_config

    config_path = Path(config_path)
    try:
        cfg = load_sweep_config(config_path)
        if overrides:
            cfg = cfg.with_overrides(overrides)
    except ValueError as err:
        return [Check("config", False, str(err))]
    checks = [Check("config", True, f"{config_path} (sweep {cfg.name!r}, family {cfg.model.family})")]
    shard_checks = check_shards(cfg, config_path.parent, timeout_s)
    checks += shard_checks
    if all(c.ok for c in shard_checks):  # prepare opens them again: a failed one would only be reported twice
        try:
            prep = sweep.prepare(config_path, overrides)
            checks.append(Check("data and search space", True,
                                f"{prep.family.name}, {len(prep.folds)} fold(s) (protocol {cfg.data.protocol}), "
                                f"{prep.num_samples} trial(s); data manifest hash {prep.manifest_hash[:12]}"))
        except ValueError as err:
            checks.append(Check("data and search space", False, str(err)))
    if view is None:
        try:
            view = cluster_view(num_cpus)
        except Exception as err:  # whatever ray.init raises for an address it cannot join
            checks.append(Check("cluster", False, f"cannot join RAY_ADDRESS={os.environ.get('RAY_ADDRESS')} "
                                                  f"({_first_line(err)})",
                                "run the check where the driver runs: `ray job submit --address "
                                "http://HEAD:8265 --working-dir . -- emotune sweep --check CONFIG`, or unset "
                                "RAY_ADDRESS for a local Ray"))
    storage = str(cfg.storage.path)
    checks.append(check_storage(storage, view, timeout_s, cfg.storage.shared))
    checks.append(check_tracking(resolve_tracking_uri(cfg.tracking.uri), timeout_s))
    if view is not None:
        checks.append(check_resources(cfg, view))
    return checks


def format_report(checks: list[Check]) -> str:
    """The report: one line per check, then a verdict."""
    failed = [c for c in checks if not c.ok]
    verdict = (f"{len(failed)} of {len(checks)} checks failed: fix them and check again" if failed
               else f"all {len(checks)} checks passed: the sweep can start")
    return "\n".join([*(c.line() for c in checks), verdict])

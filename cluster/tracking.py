"""MLflow logging for sweeps: one parent run per sweep, one nested child run per trial, no duplicates.

All logging happens in the driver (only the driver must reach the tracking server). ``MLflowLoggerCallback``
duplicates in-flight trials after ``Tuner.restore`` and ``setup_mlflow`` creates a new run on every retry (notes
4.1), so :class:`TrialRunLogger` finds a trial's run by its ``ray_trial_id`` tag under the sweep's parent run and
continues it: a retried or resumed trial keeps one run. Metrics are logged with ``step = epoch``.

A tracking server may go away mid-sweep (``MLFLOW_TRACKING_URI=http://...``): the callback's writes go through a
:class:`WriteQueue`, tried once each with a short timeout, kept in order and retried with backoff while the server is
unreachable, so training never waits on MLflow. The end of each trial phase waits up to ``$EMOTUNE_MLFLOW_CATCHUP_S``
(120 s) for the rest, then fails with :class:`TrackingUnavailableError` (exit 2); the unsent writes are saved with
Tune's experiment state, and re-running the sweep sends them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from ray import tune

from cluster import console

TRIAL_TAG = "ray_trial_id"
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "emotune.role"  # "sweep" (parent), "search" or "repeat" (children)
FOLDER_TAG = "emotune.experiment_folder"  # on a parent run: the experiment folder (``host:path``) it belongs to
ABANDONED_TAG = "emotune.abandoned"  # on runs marked FAILED because their sweep vanished: why, and what replaced it


def resolve_tracking_uri(configured: str | None) -> str:
    """The tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    The default is made absolute: inside a trial the working folder is the trial's own (notes 4.4).
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def git_commit() -> str:
    """The code version: the git commit of the emotune checkout, or ``unknown`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name)


def artifacts_stay_local(tracking_uri: str, artifact_location: str) -> bool:
    """Whether a tracking server's experiment keeps artifacts on the logging machine's own filesystem.

    A server started with ``--serve-artifacts`` (the default) gives new experiments ``mlflow-artifacts:/<id>`` and
    receives their files over HTTP. One started with ``--no-serve-artifacts`` and no ``--default-artifact-root``
    (or an experiment created before the server existed) gives a plain path, its own ``./mlruns`` resolved (notes,
    pitfall 9): each client then writes the files to that path on its own disk, where the server never sees them.
    """
    from urllib.parse import urlsplit

    remote = tracking_uri.lower().startswith(("http://", "https://"))
    scheme = urlsplit(artifact_location or "").scheme.lower()
    return remote and (scheme in ("", "file") or len(scheme) == 1)  # one letter: a Windows drive


def warn_local_artifacts(client: MlflowClient, experiment_id: str, tracking_uri: str) -> None:
    """Warn when a tracking server leaves this sweep's artifacts (plots, tables, models) on this machine's disk.

    Only a warning: a path on a filesystem every node and the MLflow UI mount is a valid team setup.
    """
    location = client.get_experiment(experiment_id).artifact_location
    if artifacts_stay_local(tracking_uri, location):
        _note(f"MLflow experiment {experiment_id} at {_display_uri(tracking_uri)} stores artifacts at {location}, a "
              f"path each client writes on its own filesystem: the server does not receive them. Unless every "
              f"node and the MLflow UI share that filesystem, start the server with --serve-artifacts "
              f"--artifacts-destination FOLDER_OR_URI and use a new experiment (tracking.experiment)")


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, role: str | None = None) -> list:
    """Every child run of a sweep's parent run (optionally of one role)."""
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if role:
        query += f" and tags.`{ROLE_TAG}` = '{role}'"
    return client.search_runs([experiment_id], query, max_results=50_000)


def running_sweep_parents(client: MlflowClient, experiment_id: str, sweep: str) -> list:
    """The parent runs of sweep ``sweep`` in the experiment that are still RUNNING (FINISHED ones are history)."""
    query = f"tags.sweep = '{sweep}' and tags.`{ROLE_TAG}` = 'sweep' and attributes.status = 'RUNNING'"
    return client.search_runs([experiment_id], query, max_results=1000)


def abandon_run(client: MlflowClient, experiment_id: str, parent_run_id: str, reason: str) -> int:
    """Mark a sweep's parent run and its RUNNING child runs FAILED, tagged :data:`ABANDONED_TAG` = ``reason``.

    Only for a parent whose driver is known dead: its children stay RUNNING forever otherwise.

    Returns:
        How many child runs were marked.
    """
    children = [r for r in child_runs(client, experiment_id, parent_run_id) if r.info.status == "RUNNING"]
    for run_id in [r.info.run_id for r in children] + [parent_run_id]:
        client.set_tag(run_id, ABANDONED_TAG, reason)
        client.set_terminated(run_id, "FAILED")
    return len(children)


OUTCOME_TAG = "emotune.outcome"  # on a trial run: completed, early_stopped, stopped_by_asha, stopped or failed
OUTCOMES = ("completed", "early_stopped", "stopped_by_asha", "stopped", "failed")
DATA_CONTEXT_TAG = "mlflow.data.context"


def _param_value(value) -> str:
    text = str(list(value) if isinstance(value, tuple) else value)
    return text[:6000]  # MLflow's param value limit


def loggable_params(params: Mapping) -> list:
    """MLflow params of a flat dict, leaving out what carries nothing (None, empty lists, dicts and strings): a
    param column full of ``None`` or ``[]`` only clutters the runs table and parallel coordinates."""
    return [mlflow.entities.Param(k, _param_value(v)) for k, v in sorted(params.items())
            if v is not None and not (isinstance(v, str | list | tuple | dict) and len(v) == 0)]


def standard_tags(source: str) -> dict[str, str]:
    """MLflow's own run tags (user, source, git commit), which ``MlflowClient.create_run`` does not fill in."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = dict(resolve_tags())
    tags["mlflow.source.name"] = source
    tags["mlflow.source.type"] = "LOCAL"
    commit = git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def trial_index(trial) -> int:
    """Tune's 1-based creation order of a trial: the counter that starts its ``experiment_tag`` (``7_lr=0.001``)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def trial_run_name(role: str, config: Mapping, index: int) -> str:
    """A name a person can read: ``ladder_mtl #07`` for a search trial, ``ladder_mtl seed 2`` for a repeat
    (``s_c mfcc #03`` when the sweep searches input feature sets)."""
    who = str(config.get("variant") or config.get("family") or "trial")
    if config.get("input"):
        who = f"{who} {config['input']}"
    if role == "repeat":
        return f"{who} seed {config.get('seed', 0)}"
    return f"{who} #{index:02d}"


def trial_outcome(result: Mapping | None, *, errored: bool, max_epochs: int, scheduler: str) -> str:
    """How a trial ended, from its last result: ``failed`` (raised or diverged), ``completed`` (every epoch ran),
    ``early_stopped`` (the loop's patience on validation ran out), else stopped by the scheduler
    (``stopped_by_asha``)."""
    if errored:
        return "failed"
    result = result or {}
    if int(result.get("epoch", 0) or 0) >= int(max_epochs):
        return "completed"
    if result.get("early_stopped"):
        return "early_stopped"
    return "stopped_by_asha" if scheduler == "asha" else "stopped"


def placement_tags(result: Mapping) -> dict[str, str]:
    """Where a trial runs, as MLflow tags (``emotune.node_id``, ``emotune.device``, ``emotune.node_ip`` and, with
    GPUs, ``emotune.gpu_ids``), from the first result after each start of the trial (``trainables.tune_entry.
    PLACEMENT_KEYS``; Tune adds ``node_ip`` to every result); ``{}`` for any other result. A restarted trial's tags
    name where it ran last."""
    from trainables.tune_entry import DEVICE_KEY, GPU_IDS_KEY, NODE_ID_KEY

    if NODE_ID_KEY not in result:
        return {}
    tags = {"emotune.node_id": result[NODE_ID_KEY], "emotune.device": result.get(DEVICE_KEY),
            "emotune.node_ip": result.get("node_ip"), "emotune.gpu_ids": result.get(GPU_IDS_KEY)}
    return {k: str(v) for k, v in tags.items() if v not in (None, "")}


def dataset_inputs(shard_sets: list, context: str = "training") -> list:
    """MLflow dataset inputs for shard sets: name ``corpus/feature_set``, digest = the manifest hash (its first 32
    hex digits: MLflow's digest column holds 36 characters; the profile has it whole), the folder as source."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    out = []
    for ss in shard_sets:
        m = ss.manifest
        folder = str(ss.folder)
        source_type = folder.split("://", 1)[0] if "://" in folder else "local"
        profile = {"rows": int(m.total_rows), "parts": len(m.files), "corpus": m.corpus, "feature_set": m.feature_set,
                   "feature_dtype": m.feature_dtype, "schema_version": m.schema_version,
                   "label_scale": list(m.label_scale) if m.label_scale else None,
                   "manifest_hash": ss.content_hash}
        dataset = Dataset(name=f"{m.corpus}/{m.feature_set}", digest=ss.content_hash[:32], source_type=source_type,
                          source=json.dumps({"uri": folder}), profile=json.dumps(profile))
        out.append(DatasetInput(dataset, tags=[InputTag(DATA_CONTEXT_TAG, context)]))
    return out


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The MLflow run of a Tune trial of this sweep, or None."""
    query = f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    hits = client.search_runs([experiment_id], query, max_results=1)
    return hits[0].info.run_id if hits else None


def best_epoch_summary(client: MlflowClient, run_id: str, metric: str, mode: str) -> dict[str, float]:
    """Every validation metric of a run at its best epoch (by ``metric``), as ``best_<name>``, plus ``best_epoch``.

    Read back from the run's own metric history (step = epoch), so a trial resumed after a driver restart, whose
    earlier epochs this process never saw, is summarised whole.
    """
    import math

    history = [m for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)]
    if not history:
        return {}
    pick = max if mode == "max" else min
    best = pick(history, key=lambda m: (m.value, -m.step) if mode == "max" else (m.value, m.step))
    summary = {"best_epoch": float(best.step)}
    for key in client.get_run(run_id).data.metrics:
        if not key.startswith("val_"):
            continue
        at = [m.value for m in client.get_metric_history(run_id, key) if m.step == best.step]
        if at and math.isfinite(at[-1]):
            summary[f"best_{key}"] = float(at[-1])
    return summary


# ---- writes that outlive a tracking-server outage ----------------------------------------------------------

CATCHUP_ENV = "EMOTUNE_MLFLOW_CATCHUP_S"  # seconds the end of a trial phase waits for an unreachable server
DEFAULT_CATCHUP_S = 120.0
# While trials run, each MLflow request is tried once with a short timeout; the queue below does the retrying.
# MLflow's own defaults (7 retries with backoff factor 2, 120 s timeout: mlflow/environment_variables.py, read on
# every request by mlflow/utils/rest_utils.http_request) hold Tune's event loop for about four minutes per write
# to a dead server, and training would stall with it.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
FLUSH_POLL_S = 5.0  # longest pause between tries while the end of a phase waits for the server


class TrackingUnavailableError(ValueError):
    """The tracking server stayed unreachable past the catch-up limit at the end of a trial phase.

    A ValueError so ``emotune`` reports it and exits 2 like the other errors fixed outside the code: nothing is
    lost (Tune's state, and the writes still pending, are in the experiment folder) and re-running the same sweep
    resumes and sends them.
    """


def is_connection_error(err: BaseException) -> bool:
    """Whether an MLflow call failed because the server could not be reached (worth retrying later), rather than
    because it refused the request (which a retry would not change).

    MLflow wraps the ``requests`` error in an ``MlflowException`` (``raise ... from`` for timeouts, inside the
    ``except`` block otherwise), so the cause chain is searched. ``RetryError`` is how a 502/503/504 (a proxy in
    front of a restarting server) arrives once MLflow's own retries are spent.
    """
    import requests

    transient = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
                 requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError)
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, transient):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


class quick_http:  # noqa: N801 (used as a context manager, like contextlib's)
    """MLflow's HTTP settings set to :data:`QUICK_HTTP` for a block, then put back as they were."""

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in QUICK_HTTP}
        os.environ.update(QUICK_HTTP)
        return self

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WriteQueue:
    """MLflow writes kept in the order they were made and retried while the tracking server is unreachable.

    A write that fails with a connection error stays at the head of the queue and everything behind it waits
    (a metric batch must not reach a run before the run exists). The next :meth:`drain` after a bounded,
    doubling backoff tries again. Every write must be safe to apply twice, because a write the server applied but
    whose reply was lost is retried: metrics carry explicit steps and timestamps (the SQL store drops a repeat of
    the same key, step, timestamp and value), tags and params are set to the same values, and a run is found by
    its trial-id tag before one is created.

    Args:
        server: The tracking URI, named in warnings and errors.
        first_wait_s: Backoff after the first failure; doubled per failure up to ``max_wait_s``.
        clock, sleep: Injected for tests.
    """

    def __init__(self, server: str, *, first_wait_s: float = 1.0, max_wait_s: float = 30.0, clock=None,
                 sleep=None):
        import collections
        import time

        self.server = server
        self.first_wait_s, self.max_wait_s = float(first_wait_s), float(max_wait_s)
        self.clock, self.sleep = clock or time.monotonic, sleep or time.sleep
        self.items: collections.deque = collections.deque()
        self.failures = 0
        self.next_try = 0.0
        self.last_error: BaseException | None = None

    def __len__(self) -> int:
        return len(self.items)

    def put(self, op) -> None:
        self.items.append(op)

    def drain(self, apply, *, force: bool = False) -> bool:
        """Apply queued writes in order until one fails to reach the server; between failures, only once the
        backoff has passed (or ``force``).

        Returns:
            True when the queue is empty.

        Raises:
            Exception: A write the server refused (not a connection failure). It is dropped from the queue first:
                a retry would be refused again, and every later write would wait behind it forever.
        """
        if not self.items:
            return True
        if not force and self.clock() < self.next_try:
            return False
        with quick_http():
            while self.items:
                try:
                    apply(self.items[0])
                except Exception as err:
                    if not is_connection_error(err):
                        self.items.popleft()
                        raise
                    self._failed(err)
                    return False
                self.items.popleft()
                if self.failures:
                    _note(f"MLflow tracking server {self.server} reachable again; sending the "
                          f"{len(self.items) + 1} queued write(s)")
                    self.failures = 0
        return True

    def flush(self, apply, timeout_s: float) -> None:
        """Drain, trying again after each backoff (at most :data:`FLUSH_POLL_S` apart), until the queue is empty
        or ``timeout_s`` has passed.

        Raises:
            TrackingUnavailableError: The server was still unreachable at the deadline.
        """
        deadline = self.clock() + max(0.0, float(timeout_s))
        while not self.drain(apply, force=True):
            left = deadline - self.clock()
            if left <= 0:
                raise TrackingUnavailableError(
                    f"the MLflow tracking server {self.server} is unreachable ({_short(self.last_error)}): "
                    f"{len(self.items)} write(s) of this sweep's trial runs (runs, metrics, outcomes) are still "
                    f"unsent after waiting {timeout_s:g} s. Training is done and nothing is lost: Tune's state "
                    f"and the unsent writes are kept in the experiment folder. Start the server (or fix "
                    f"MLFLOW_TRACKING_URI / tracking.uri) and re-run the same sweep to resume and send them; "
                    f"{CATCHUP_ENV} sets how long to wait")
            # The backoff, but a few seconds at most: no trial runs any more, so a try costs nothing and a server
            # that is back is seen soon.
            self.sleep(max(0.0, min(self.next_try - self.clock(), FLUSH_POLL_S, left)))

    def _failed(self, err: BaseException) -> None:
        if not self.failures:
            _note(f"MLflow tracking server {self.server} unreachable ({_short(err)}); training goes on, "
                  f"{len(self.items)} write(s) queued and retried until it is back")
        self.failures += 1
        self.last_error = err
        wait = min(self.max_wait_s, self.first_wait_s * 2 ** (self.failures - 1))
        self.next_try = self.clock() + wait


def catchup_seconds() -> float:
    """How long a trial phase's end waits for the tracking server: ``$EMOTUNE_MLFLOW_CATCHUP_S`` or 120 s."""
    raw = os.environ.get(CATCHUP_ENV)
    if not raw:
        return DEFAULT_CATCHUP_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{CATCHUP_ENV} must be a number of seconds >= 0, but got {raw!r}")
    return value


def _short(err: BaseException | None) -> str:
    """What went wrong, in a few words: MLflow's connection errors wrap the URL and urllib3's reprs around the
    reason (``[Errno 111] Connection refused``, ``Read timed out``, ``too many 503 error responses``)."""
    import re

    text = str(err or "")
    found = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|too many \d+ error responses", text)
    if found:
        return found.group(0).strip()
    lines = text.strip().splitlines()
    return (lines[0] if lines else "no reply")[:200]


def _display_uri(uri: str) -> str:
    """A tracking URI fit for a message: any ``user:password@`` left out."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _note(message: str) -> None:
    import sys

    print(f"emotune: warning: {message}", file=sys.stderr, flush=True)


# One queue per (tracking URI, parent run, role) in this process: ``Tuner.restore`` runs an unpickled copy of the
# callback, not the one the driver built, and the driver's end-of-phase catch-up must drain that copy's writes.
_QUEUES: dict[tuple[str, str, str], WriteQueue] = {}


class TrialRunLogger(tune.Callback):
    """A Tune callback logging every trial as a child run of the sweep's parent run.

    A run is named ``<variant> #<index>`` (search) or ``<variant> seed <seed>`` (repeats), carries MLflow's standard
    tags, the shard sets as dataset inputs and only the params its variant uses; metrics are logged every epoch
    (step = epoch). When the trial ends, the run gets its outcome (:data:`OUTCOME_TAG`) and its best epoch's
    validation metrics as single values (``best_<metric>``, ``best_epoch``): the runs table shows the best epoch,
    the charts keep the curve. Every write goes through :attr:`writes` (see :class:`WriteQueue`); other hooks that
    write to a trial's run should use :meth:`queue_batch`, not the client, to keep their place in that order.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment_id: MLflow experiment of the sweep.
        parent_run_id: The sweep's parent run.
        role: ``search`` or ``repeat`` (a tag; selection and the report read it).
        tags: Static tags for every child (family, protocol, data manifest hash, MLflow's source tags).
        resolve_params: ``config -> dict`` giving the params to log (the resolved family config).
        metric: The objective (``best_*`` summaries are taken at its best epoch).
        mode: ``max`` or ``min``.
        max_epochs: The loop's epoch budget (a trial that ran all of them ``completed``).
        scheduler: ``asha`` or ``none`` (names who stopped a trial early).
        datasets: MLflow ``DatasetInput``s logged on each run.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, role: str,
                 tags: Mapping[str, str], resolve_params=None, *, metric: str = "val_ccc_mean", mode: str = "max",
                 max_epochs: int = 0, scheduler: str = "none", datasets: list | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.role = role
        self.tags = dict(tags)
        self.resolve_params = resolve_params
        self.metric, self.mode = metric, mode
        self.max_epochs, self.scheduler = int(max_epochs), scheduler
        self.datasets = list(datasets or [])
        self._runs: dict[str, str] = {}
        self._logged_epoch: dict[str, int] = {}  # trial id -> the last epoch whose metrics were logged

    def __getstate__(self):  # the trial -> run cache is rebuilt from MLflow after a restore
        state = dict(self.__dict__)
        state["_runs"] = {}
        return state

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def run_id(self, trial) -> str:
        """The trial's run: found by tag (after a retry or restore) or created once."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        return self._open(trial.trial_id, self._opening(trial))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._ensure_open(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        # The loop's running ``best_*`` values are not logged per epoch: the run gets them once, at its end.
        metrics = [mlflow.entities.Metric(k, float(v), int(result.get("timestamp", 0)) * 1000, step)
                   for k, v in result.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k.startswith(("val_", "train_"))]
        # A trial restarted from its last checkpoint (a lost node, a retry) trains the epochs after it again: they
        # were logged the first time, so the run's history keeps one point per epoch.
        if step <= self._logged_epoch.get(trial.trial_id, 0):
            metrics = []
        elif metrics:
            self._logged_epoch[trial.trial_id] = step
        tags = placement_tags(result)
        if metrics or tags:
            self.queue_batch(trial, metrics=metrics, tags=tags)

    def _finish(self, trial, *, errored: bool) -> None:
        outcome = trial_outcome(trial.last_result, errored=errored, max_epochs=self.max_epochs,
                                scheduler=self.scheduler)
        config = trial.config.get("repeat", trial.config)
        self._ensure_open(trial)
        self._send(("finish", trial.trial_id, {
            "errored": errored, "outcome": outcome, "error": _first_error_line(trial)[:5000] if errored else "",
            "name": trial_run_name(self.role, config, trial_index(trial)),
            "epochs": int((trial.last_result or {}).get("epoch", 0) or 0)}))

    def _close(self, run_id: str, finish: dict) -> None:
        """Apply a queued ``finish``: outcome, best-epoch summary (read back from the run, so after the metrics
        queued before it), terminal status, the console line. Safe to repeat."""
        client = self.client
        client.set_tag(run_id, OUTCOME_TAG, finish["outcome"])
        if finish["error"]:
            client.set_tag(run_id, "emotune.error", finish["error"])
        summary = best_epoch_summary(client, run_id, self.metric, self.mode)
        if summary:
            step = int(summary["best_epoch"])
            client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, 0, step) for k, v in summary.items()])
        client.set_terminated(run_id, "FAILED" if finish["errored"] else "FINISHED")
        console.trial_finished(finish["name"], finish["outcome"], summary, finish["epochs"])

    # -- the write queue: every MLflow write of a trial goes through it, so an unreachable server delays the
    # -- writes (in order) instead of failing or stalling the sweep.

    @property
    def writes(self) -> WriteQueue:
        """This sweep phase's queue of unsent writes (shared with restored copies of this callback)."""
        key = (self.tracking_uri, self.parent_run_id, self.role)
        if key not in _QUEUES:
            _QUEUES[key] = WriteQueue(_display_uri(self.tracking_uri))
        return _QUEUES[key]

    def queue_batch(self, trial, metrics=(), tags: Mapping[str, str] | None = None) -> None:
        """Log metrics (``mlflow.entities.Metric`` with explicit step and timestamp, so a resent batch is not
        doubled) and tags on the trial's run, now or, while the server is unreachable, once it is back."""
        self._ensure_open(trial)
        self._send(("batch", trial.trial_id, {"metrics": list(metrics), "tags": dict(tags or {})}))

    def catch_up(self, timeout_s: float | None = None) -> None:
        """Send every queued write, waiting up to ``timeout_s`` (default :func:`catchup_seconds`) for the server.

        Raises:
            TrackingUnavailableError: The server is still unreachable; the writes stay queued (and in Tune's
                experiment state, so a re-run sends them).
        """
        self.writes.flush(self._apply, catchup_seconds() if timeout_s is None else timeout_s)

    def get_state(self) -> dict:
        # Saved with every Tune experiment snapshot, so a driver that dies (or gives up on the server) leaves its
        # unsent writes in the experiment folder for the re-run. Never None: an empty list must replace the
        # pending list of an older snapshot, or a restore would replay it.
        return {"pending_writes": list(self.writes.items), "logged_epoch": dict(self._logged_epoch)}

    def set_state(self, state: dict) -> None:
        for trial_id, epoch in state.get("logged_epoch", {}).items():
            self._logged_epoch[trial_id] = max(epoch, self._logged_epoch.get(trial_id, 0))
        queue = self.writes
        if not queue:  # a queue already filled in this process is newer than any snapshot
            for op in state.get("pending_writes", []):
                queue.put(op)

    def on_step_end(self, iteration, trials, **info):
        if self.writes:  # retry now and then while trials run, not only when one reports
            self.writes.drain(self._apply)

    def _send(self, op) -> None:
        queue = self.writes
        queue.put(op)
        queue.drain(self._apply)

    def _ensure_open(self, trial) -> None:
        """Queue the opening of the trial's run unless it is open or its opening is already queued."""
        tid = trial.trial_id
        if tid in self._runs or any(op[0] == "open" and op[1] == tid for op in self.writes.items):
            return
        self._send(("open", tid, self._opening(trial)))

    def _opening(self, trial) -> dict:
        """What opening a trial's run needs, worked out now, while the trial object is at hand."""
        config = trial.config.get("repeat", trial.config)
        tags = {**self.tags, TRIAL_TAG: trial.trial_id, PARENT_TAG: self.parent_run_id, ROLE_TAG: self.role,
                "variant": str(config.get("variant", "")), "seed": str(config.get("seed", "")),
                **({"input": str(config["input"])} if config.get("input") else {})}
        params = self.resolve_params(config) if self.resolve_params else config
        return {"tags": tags, "name": trial_run_name(self.role, config, trial_index(trial)),
                "params": loggable_params(params), "created": False}

    def _open(self, trial_id: str, opening: dict) -> str:
        """Find the trial's run by its tag (a retried or restored trial continues it) or create it; safe to repeat."""
        client = self.client
        run_id = find_trial_run(client, self.experiment_id, self.parent_run_id, trial_id)
        if run_id is not None and not opening["created"]:
            client.update_run(run_id, status="RUNNING")
        else:
            if run_id is None:
                # Marked before sending (and kept in the queued op): if the server creates the run but its reply is
                # lost, the retry finds the run by its tag and still logs its params and inputs.
                opening["created"] = True
                run_id = client.create_run(self.experiment_id, run_name=opening["name"],
                                           tags=opening["tags"]).info.run_id
            client.log_batch(run_id, params=opening["params"])
            if self.datasets:
                client.log_inputs(run_id, datasets=self.datasets)
        self._runs[trial_id] = run_id
        return run_id

    def _apply(self, op) -> None:
        kind, trial_id, payload = op
        if kind == "open":
            self._open(trial_id, payload)
            return
        run_id = self._runs.get(trial_id) or find_trial_run(self.client, self.experiment_id, self.parent_run_id,
                                                            trial_id)
        if run_id is None:  # cannot happen while "open" precedes a trial's other writes in the queue
            raise RuntimeError(f"no MLflow run of trial {trial_id} under parent run {self.parent_run_id}")
        self._runs[trial_id] = run_id
        if kind == "batch":
            tags = [mlflow.entities.RunTag(k, str(v)) for k, v in payload["tags"].items()]
            self.client.log_batch(run_id, metrics=payload["metrics"], tags=tags)
        elif kind == "finish":
            self._close(run_id, payload)
        else:
            raise ValueError(f"unknown queued MLflow write {kind!r}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, errored=True)


def _first_error_line(trial) -> str:
    """The last line of the trial's error trace (the exception and its message), or ''."""
    try:
        text = trial.get_error() or ""
    except Exception:  # the error file lives in Tune's storage; a missing one is no reason to fail logging
        return ""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""

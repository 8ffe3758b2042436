"""MLflow logging for sweeps: one parent run per sweep, one nested child run per trial, no duplicates.

All logging happens in the driver (only the driver must reach the tracking server). ``MLflowLoggerCallback``
duplicates in-flight trials after ``Tuner.restore`` and ``setup_mlflow`` creates a new run on every retry (notes
4.1), so :class:`TrialRunLogger` finds a trial's run by its ``ray_trial_id`` tag under the sweep's parent run and
continues it: a retried or resumed trial keeps one run. Metrics are logged with ``step = epoch``.
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


class TrialRunLogger(tune.Callback):
    """A Tune callback logging every trial as a child run of the sweep's parent run.

    A run is named ``<variant> #<index>`` (search) or ``<variant> seed <seed>`` (repeats), carries MLflow's standard
    tags, the shard sets as dataset inputs and only the params its variant uses; metrics are logged every epoch
    (step = epoch). When the trial ends, the run gets its outcome (:data:`OUTCOME_TAG`) and its best epoch's
    validation metrics as single values (``best_<metric>``, ``best_epoch``): the runs table shows the best epoch,
    the charts keep the curve.

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
        client = self.client
        run_id = find_trial_run(client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
        else:
            config = trial.config.get("repeat", trial.config)
            tags = {**self.tags, TRIAL_TAG: trial.trial_id, PARENT_TAG: self.parent_run_id, ROLE_TAG: self.role,
                    "variant": str(config.get("variant", "")), "seed": str(config.get("seed", "")),
                    **({"input": str(config["input"])} if config.get("input") else {})}
            name = trial_run_name(self.role, config, trial_index(trial))
            run = client.create_run(self.experiment_id, run_name=name, tags=tags)
            run_id = run.info.run_id
            params = self.resolve_params(config) if self.resolve_params else config
            client.log_batch(run_id, params=loggable_params(params))
            if self.datasets:
                client.log_inputs(run_id, datasets=self.datasets)
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        # The loop's running ``best_*`` values are not logged per epoch: the run gets them once, at its end.
        metrics = [mlflow.entities.Metric(k, float(v), int(result.get("timestamp", 0)) * 1000, step)
                   for k, v in result.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k.startswith(("val_", "train_"))]
        if metrics:
            self.client.log_batch(self.run_id(trial), metrics=metrics)

    def _finish(self, trial, *, errored: bool) -> None:
        client, run_id = self.client, self.run_id(trial)
        outcome = trial_outcome(trial.last_result, errored=errored, max_epochs=self.max_epochs,
                                scheduler=self.scheduler)
        client.set_tag(run_id, OUTCOME_TAG, outcome)
        if errored:
            error = _first_error_line(trial)
            if error:
                client.set_tag(run_id, "emotune.error", error[:5000])
        summary = best_epoch_summary(client, run_id, self.metric, self.mode)
        if summary:
            step = int(summary["best_epoch"])
            client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, 0, step) for k, v in summary.items()])
        client.set_terminated(run_id, "FAILED" if errored else "FINISHED")
        config = trial.config.get("repeat", trial.config)
        epochs = int((trial.last_result or {}).get("epoch", 0) or 0)
        console.trial_finished(trial_run_name(self.role, config, trial_index(trial)), outcome, summary, epochs)

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

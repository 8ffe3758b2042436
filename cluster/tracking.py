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


def _param_value(value) -> str:
    text = str(list(value) if isinstance(value, tuple) else value)
    return text[:6000]  # MLflow's param value limit


class TrialRunLogger(tune.Callback):
    """A Tune callback logging every trial as a child run of the sweep's parent run.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment_id: MLflow experiment of the sweep.
        parent_run_id: The sweep's parent run.
        role: ``search`` or ``repeat`` (a tag; selection and the report read it).
        tags: Static tags for every child (family, protocol, data manifest hash, git commit).
        resolve_params: ``config -> dict`` giving the params to log (the resolved family config).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, role: str,
                 tags: Mapping[str, str], resolve_params=None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.role = role
        self.tags = dict(tags)
        self.resolve_params = resolve_params
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
        query = f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        hits = client.search_runs([self.experiment_id], query, max_results=1)
        if hits:
            run_id = hits[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            config = trial.config.get("repeat", trial.config)
            tags = {**self.tags, TRIAL_TAG: trial.trial_id, PARENT_TAG: self.parent_run_id, ROLE_TAG: self.role,
                    "variant": str(config.get("variant", "")), "seed": str(config.get("seed", ""))}
            run = client.create_run(self.experiment_id, run_name=f"{self.role}-{trial.trial_id}", tags=tags)
            run_id = run.info.run_id
            params = self.resolve_params(config) if self.resolve_params else config
            client.log_batch(run_id, params=[mlflow.entities.Param(k, _param_value(v))
                                             for k, v in sorted(params.items())])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = [mlflow.entities.Metric(k, float(v), int(result.get("timestamp", 0)) * 1000, step)
                   for k, v in result.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)
                   and (k.startswith(("val_", "train_", "best_")) or k == "best_epoch")]
        if metrics:
            self.client.log_batch(self.run_id(trial), metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_id(trial), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_id(trial), "FAILED")

"""Shared by the cluster tests: a small sweep config over the synthetic MSP-Podcast functionals."""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml


def write_config(tmp_path: Path, shard_dir: Path, **overrides) -> Path:
    cfg = {
        "name": "t_sweep",
        "data": {"shards": [str(shard_dir)], "protocol": "predefined", "targets": ["arousal", "valence", "dominance"]},
        "model": {"family": "ladder", "variants": ["ladder_mtl"], "fixed": {"hidden": [32, 32]}},
        "search": {"sampler": "tpe", "num_samples": 3, "max_concurrent": 2, "scheduler": "none",
                   "metric": "val_ccc_arousal", "mode": "max", "seed": 0, "ranges": {"lr": [1e-3, 5e-3]}},
        "train": {"max_epochs": 4, "patience": 4, "batch_size": 64},
        "repeats": {"seeds": 2},
        "resources": {"cpu": 1, "gpu": 0, "max_failures": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t_exp"},
        "registry": {"model_name": "t-model", "alias": "candidate"},
        "storage": {"path": str(tmp_path / "ray_results")},
    }
    for dotted, value in overrides.items():
        node = cfg
        *head, last = dotted.split(".")
        for key in head:
            node = node[key]
        node[last] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_sweep_config(tmp_path: Path, shard_dir: Path, name: str, experiment: str, model: str) -> Path:
    """The smallest real sweep: one variant, 2 random trials of 2 epochs, 1 seed trained again as a repeat run
    (``reuse_search`` off, so every sweep phase runs), no retries."""
    return write_config(tmp_path, shard_dir, **{
        "name": name, "tracking.experiment": experiment, "registry.model_name": model,
        "model.fixed": {"hidden": [16, 16]}, "search.sampler": "random", "search.num_samples": 2,
        "search.ranges": {}, "train.max_epochs": 2, "train.patience": 2, "repeats.seeds": 1,
        "repeats.reuse_search": False, "resources.max_failures": 0})


def run_sweep_in(folder: Path, config: Path, num_cpus: int = 2):
    """``run_sweep(config)`` from ``folder`` (MLflow's sqlite artifact root is the working folder at experiment
    creation), its console output swallowed; the working folder is restored."""
    import io
    import os

    from cluster.sweep import run_sweep

    here = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return run_sweep(config, num_cpus=num_cpus)
    finally:
        os.chdir(here)


@contextlib.contextmanager
def mlflow_tracking(uri: str):
    """The process's MLflow tracking URI set to ``uri`` for the block (``models:/`` URIs resolve there), then put
    back: a sweep leaves the caller's URI as it found it, and other tests set theirs."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)

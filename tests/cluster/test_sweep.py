"""The sweep driver end to end: real local Ray, real MLflow (sqlite), synthetic MSP-Podcast shards."""

from __future__ import annotations

import csv
import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.sweep import REUSED_TAG, repeat_plan
from tests.cluster.helpers import mlflow_tracking, write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def shard_dir(msp_functionals):
    out, _ = msp_functionals
    return out / "msp_podcast" / "functionals"


@pytest.mark.parametrize("override, field", [
    ({"model.family": "transformer"}, "model.family"),
    ({"model.fixed": {"alpha": 0.7, "beta": 0.5}}, "alpha + beta"),
    ({"search.ranges": {"lr": [0.0, 0.1]}}, "lr"),
    ({"data.shards": ["no/such/shards"]}, "data.shards"),
    ({"search.num_samples": 0}, "search.num_samples"),
    ({"search.metric": "test_ccc_arousal"}, "search.metric"),
])
def test_bad_configs_fail_before_ray_starts(tmp_path, shard_dir, override, field):
    import ray

    from cluster.sweep import run_sweep

    path = write_config(tmp_path, shard_dir, **override)
    with pytest.raises(ValueError) as err:
        run_sweep(path)
    assert field in str(err.value)
    assert not ray.is_initialized()
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_trials_cannot_read_test_rows(tmp_path, shard_dir):
    """What the driver ships to trials holds no test row and no test id, and test ids cannot be pickled."""
    from cluster.sweep import build_search_data, prepare
    from data_io.folds import LockboxError
    from trainables.data import load_store

    prep = prepare(write_config(tmp_path, shard_dir))
    store = load_store(prep.shard_sets)
    data = build_search_data(prep, store)
    (fold,) = prep.folds
    test_ids = set(fold.test.open("test: check the lockbox"))
    assert test_ids and len(fold.test.accesses) == 1
    shipped = set(data.store.meta["utt_id"].to_pylist())
    assert shipped == set(fold.train_ids) | set(fold.val_ids)
    assert not shipped & test_ids
    assert data.store.num_rows < store.num_rows
    blob = pickle.dumps(data)
    assert not any(u.encode() in blob for u in test_ids)
    with pytest.raises(LockboxError):
        pickle.dumps(prep.folds)
    with pytest.raises(KeyError):
        data.store.rows([next(iter(test_ids))])


def _selection(variant: str, seed: int, ran_to_end: bool) -> dict:
    config = {"variant": variant, "lr": 0.01, "seed": seed}
    record = {"trial_id": f"t_{variant}", "config": config, "ran_to_end": ran_to_end, "checkpoint": "ck"}
    return {"trial_id": f"t_{variant}", "config": config, "run_id": f"run_{variant}", "record": record}


def test_repeat_plan_reuses_only_a_search_trial_that_ran_to_its_end():
    selected = {"a": _selection("a", 0, True), "b": _selection("b", 0, False), "c": _selection("c", 5, True)}
    reused, to_train = repeat_plan(selected, 3, reuse_search=True)
    # a: its search trial is seed 0's repeat; b: cut short by the scheduler, so seed 0 trains; c: seed 5 is not
    # among the repeat seeds 0..2.
    assert [(r["trial_id"], r["run_id"], r["config"]["seed"]) for r in reused] == [("t_a", "run_a", 0)]
    assert sorted((c["variant"], c["seed"]) for c in to_train) == [
        ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2), ("c", 0), ("c", 1), ("c", 2)]
    assert all(c["lr"] == 0.01 for c in to_train)
    reused, to_train = repeat_plan(selected, 3, reuse_search=False)
    assert reused == [] and len(to_train) == 9
    reused, to_train = repeat_plan({"a": _selection("a", 0, True)}, 1, reuse_search=True)
    assert len(reused) == 1 and to_train == []  # nothing left to train: no repeats experiment at all


def test_ran_to_end_tells_the_scheduler_from_the_loop():
    import pandas as pd

    from cluster.sweep import _ran_to_end

    config = {"max_epochs": 4}
    assert _ran_to_end(pd.DataFrame({"epoch": [1, 2, 3, 4], "early_stopped": [False] * 4}), config)
    assert _ran_to_end(pd.DataFrame({"epoch": [1, 2], "early_stopped": [False, True]}), config)
    assert not _ran_to_end(pd.DataFrame({"epoch": [1, 2], "early_stopped": [False, False]}), config)  # ASHA


def _mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _children(client, role=None):
    exp = client.get_experiment_by_name("t_exp")
    query = "tags.`emotune.role` != 'sweep'" if role is None else f"tags.`emotune.role` = '{role}'"
    return client.search_runs([exp.experiment_id], query, max_results=1000)


@pytest.mark.slow
def test_sweep_end_to_end(finished_sweep, monkeypatch):
    from cluster.promote import promote
    from cluster.report import values_from_mlflow
    from cluster.sweep import run_sweep

    tmp_path, path, result = finished_sweep.tmp, finished_sweep.path, finished_sweep.result
    monkeypatch.chdir(tmp_path)
    client = _mlflow(tmp_path)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    search = _children(client, "search")
    assert len(search) == 4 == result.search_trials
    assert len({r.data.tags["ray_trial_id"] for r in search}) == 4
    for run in search:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert run.data.tags["data_manifest_hash"] == parent.data.tags["data_manifest_hash"]
        assert run.data.params["family"] == "ladder"
        assert ("noise_var" in run.data.params) == run.data.params["variant"].startswith("ladder")
        history = client.get_metric_history(run.info.run_id, "val_ccc_arousal")
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and len(history) >= 1
    repeats = _children(client, "repeat")
    assert len(repeats) == 2 * len(result.selected)  # 2 seeds per selected variant (reuse_search off here)
    # What reuse_search stands on: a selected search trial that ran to its own end trained exactly what the repeat
    # of its seed trains again.
    for key, sel in result.selected.items():
        if sel["record"]["ran_to_end"]:
            twin = next(r for r in repeats if r.info.run_name == f"{key} seed {sel['config']['seed']}")
            assert client.get_run(sel["run_id"]).data.metrics["best_val_ccc_arousal"] == pytest.approx(
                twin.data.metrics["best_val_ccc_arousal"], abs=1e-6)
    # Test metrics live on the parent run only.
    for run in _children(client):
        assert not [k for k in run.data.metrics if "test" in k]
    assert any(k.endswith("test_ccc_arousal.mean") for k in parent.data.metrics)
    assert "emotune.test_scored_at" in parent.data.tags
    for key, sel in result.selected.items():
        assert parent.data.tags[f"emotune.selected.{key}.trial_id"] == sel["trial_id"]
    version = client.get_model_version_by_alias("t-model", "candidate")
    assert str(version.version) == result.model_version
    assert version.tags["data_manifest_hash"] == parent.data.tags["data_manifest_hash"]
    assert "| ladder_mtl |" in result.table_markdown and "| dnn_mtl |" in result.table_markdown
    values, targets = values_from_mlflow("t_exp", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert targets[:3] == ["arousal", "valence", "dominance"]
    assert len(values["ladder_mtl"]["test_ccc_arousal"]) == 2

    # The registered model loads and predicts three attributes from raw features.
    import mlflow
    import numpy as np

    from data_io import shards

    ss = shards.open_shards(finished_sweep.shard_dir)
    x = ss.stack(ss.metadata()["utt_id"].to_pylist()[:5]).astype(np.float64)  # the signature's dtype
    with mlflow_tracking(finished_sweep.uri):
        predicted = mlflow.pyfunc.load_model("models:/t-model@candidate").predict(x)
    assert predicted.shape == (5, 3) and np.isfinite(predicted.to_numpy()).all()

    decision = promote("t-model", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert decision.promoted
    assert str(client.get_model_version_by_alias("t-model", "champion").version) == str(version.version)

    # Re-running a finished sweep changes nothing: no new runs, test not scored again.
    again = run_sweep(path)
    assert again.parent_run_id == result.parent_run_id
    assert len(_children(client)) == len(search) + len(repeats)
    assert client.get_run(result.parent_run_id).data.tags["emotune.test_scored_at"] == \
        parent.data.tags["emotune.test_scored_at"]


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of its session (Ray's agents outlive the driver otherwise)."""
    sid = proc.pid
    os.killpg(sid, signal.SIGKILL)
    proc.wait()
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            if os.getsid(int(pid_dir.name)) == sid:
                os.kill(int(pid_dir.name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicates(tmp_path, shard_dir, monkeypatch):
    from cluster.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, shard_dir, **{"search.num_samples": 6, "train.max_epochs": 12,
                                                 "train.patience": 12})
    # Create the MLflow schema before the driver starts: two processes migrating one new sqlite file race.
    client = _mlflow(tmp_path)
    client.search_experiments()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "sweep", str(path), "--num-cpus", "2"],
                            cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            if client.get_experiment_by_name("t_exp") is None:
                continue
            finished = [r for r in _children(client, "search") if r.info.status == "FINISHED"]
            if len(finished) >= 2:
                break
        else:
            pytest.fail("the sweep did not finish two trials in time")
    finally:
        _kill_session(proc)
    before = {r.data.tags["ray_trial_id"] for r in _children(client, "search")}
    assert 2 <= len(before) < 6 or len(before) == 6

    result = run_sweep(path, num_cpus=2)
    search = _children(client, "search")
    ids = [r.data.tags["ray_trial_id"] for r in search]
    assert result.search_trials == 6
    assert len(ids) == len(set(ids)) == 6  # no duplicate child runs, none lost
    assert before <= set(ids)
    assert all(r.info.status == "FINISHED" for r in search)
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    exp = client.get_experiment_by_name("t_exp")
    assert len(client.search_runs([exp.experiment_id], "tags.`emotune.role` = 'sweep'")) == 1


@pytest.mark.slow
def test_failed_trial_resumes_from_checkpoint_in_the_same_run(tmp_path, shard_dir, monkeypatch):
    from cluster.sweep import run_sweep
    from trainables.tune_entry import FAULT_ENV

    monkeypatch.chdir(tmp_path)
    markers = tmp_path / "faults"
    monkeypatch.setenv(FAULT_ENV, f"{markers}:3")
    path = write_config(tmp_path, shard_dir, **{"search.num_samples": 2, "search.sampler": "random",
                                                 "train.max_epochs": 5, "train.patience": 5})
    result = run_sweep(path, num_cpus=2)
    client = _mlflow(tmp_path)
    search = _children(client, "search")
    assert len(list(markers.glob("*.failed"))) >= 3  # every trial failed once (2 search, 1 repeat)
    assert len(search) == 2 and result.search_trials == 2  # retried trials kept their run
    for run in search:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_ccc_arousal")]
        assert steps == [1, 2, 3, 4, 5]  # resumed after the failure, reached the last epoch, each epoch once

    # 2 repeat seeds: seed 0 is the selected search trial, which ran to its end (reused and tagged, not trained
    # again); seed 1 is the one repeat run trained.
    (sel,) = result.selected.values()
    assert sel["record"]["ran_to_end"]
    repeats = _children(client, "repeat")
    assert [r.info.run_name for r in repeats] == ["ladder_mtl seed 1"]
    assert client.get_run(sel["run_id"]).data.tags[REUSED_TAG] == "0"
    local = client.download_artifacts(result.parent_run_id, "results/per_seed.csv", str(tmp_path))
    per_seed = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert sorted((r["seed"], r["run_id"]) for r in per_seed) == [("0", sel["run_id"]), ("1", repeats[0].info.run_id)]
    assert "ladder_mtl.test_ccc_arousal.std" in client.get_run(result.parent_run_id).data.metrics  # 2 seeds tested

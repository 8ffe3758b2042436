"""What a user sees in MLflow after a sweep: the parent's summary, readable trial runs, datasets, the registered
model, plots, and a quiet console. Reads the store of the session's ``finished_sweep``."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cluster import tracking
from tests.cluster.helpers import mlflow_tracking

pytestmark = pytest.mark.slow

VARIANTS = ("dnn_mtl", "ladder_mtl")


@pytest.fixture(scope="module")
def store(finished_sweep):
    client = MlflowClient(finished_sweep.uri)
    exp = client.get_experiment_by_name("t_exp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = client.get_run(finished_sweep.result.parent_run_id)
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    return client, exp, parent, children


def _role(children, role):
    return [r for r in children if r.data.tags[tracking.ROLE_TAG] == role]


def _text(client, run_id, path) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with open(client.download_artifacts(run_id, path, d)) as f:
            return f.read()


def test_parent_holds_mean_and_std_over_seeds_and_a_numeric_per_seed_csv(store, finished_sweep):
    client, _, parent, children = store
    rows = list(csv.DictReader(io.StringIO(_text(client, parent.info.run_id, "results/per_seed.csv"))))
    assert len(rows) == 2 * len(finished_sweep.result.selected)
    repeat_ids = {r.info.run_id for r in _role(children, "repeat")}
    for variant in {r["variant"] for r in rows}:
        mine = [r for r in rows if r["variant"] == variant]
        assert {r["run_id"] for r in mine} <= repeat_ids
        for column in ("val_ccc_arousal", "test_ccc_arousal", "test_ccc_valence"):
            seeds = np.array([float(r[column]) for r in mine])
            assert parent.data.metrics[f"{variant}.{column}.mean"] == pytest.approx(seeds.mean())
            assert parent.data.metrics[f"{variant}.{column}.std"] == pytest.approx(seeds.std(ddof=1))
            # One value each: the runs table and charts show the summary, not the last seed's value.
            assert len(client.get_metric_history(parent.info.run_id, f"{variant}.{column}.mean")) == 1
        assert f"{variant}.test_ccc_arousal" not in parent.data.metrics
    table = list(csv.DictReader(io.StringIO(_text(client, parent.info.run_id, "results/table.csv"))))
    assert {float(r["test_ccc_arousal.mean"]) for r in table} and all(float(r["val_ccc_arousal.std"]) >= 0
                                                                        for r in table)
    # The selected search trial of each variant is linked by its MLflow run id.
    search = {r.info.run_id: r for r in _role(children, "search")}
    for key, sel in finished_sweep.result.selected.items():
        linked = search[parent.data.tags[f"emotune.selected.{key}.run_id"]]
        assert linked.data.tags[tracking.TRIAL_TAG] == sel["trial_id"]
    assert not [p for p, v in parent.data.params.items() if v in ("None", "{}", "[]", "")]


def test_trial_runs_have_readable_names_standard_tags_and_outcomes(store, finished_sweep):
    client, _, parent, children = store
    search, repeats = _role(children, "search"), _role(children, "repeat")
    names = [r.info.run_name for r in search]
    assert all(re.fullmatch(r"(dnn_mtl|ladder_mtl) #0[1-4]", n) for n in names), names
    assert len({n[-3:] for n in names}) == 4  # the index is the trial's creation order, each once
    assert sorted(r.info.run_name for r in repeats) == sorted(f"{v} seed {s}" for v in finished_sweep.result.selected
                                                               for s in (0, 1))
    for run in children:
        tags = run.data.tags
        assert tags["mlflow.user"] and tags["mlflow.source.name"].startswith("emotune sweep ")
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"])
        outcome = tags[tracking.OUTCOME_TAG]
        epochs = len(client.get_metric_history(run.info.run_id, "val_ccc_arousal"))
        if outcome == "completed":
            assert epochs == 4
        else:
            assert outcome in ("stopped_by_asha", "early_stopped") and epochs < 4, (outcome, epochs)
            assert outcome == "early_stopped" or tags[tracking.ROLE_TAG] == "search"  # no ASHA in the repeats
    assert parent.data.tags["mlflow.source.name"] == children[0].data.tags["mlflow.source.name"]


def test_trial_runs_end_with_their_best_epoch_and_only_their_variants_params(store):
    client, _, _, children = store
    for run in children:
        run_id = run.info.run_id
        curve = client.get_metric_history(run_id, "val_ccc_arousal")
        best = max(curve, key=lambda m: (m.value, -m.step))
        assert run.data.metrics["best_val_ccc_arousal"] == pytest.approx(best.value)
        assert run.data.metrics["best_epoch"] == best.step
        assert len(client.get_metric_history(run_id, "best_epoch")) == 1  # a summary, not a series
        at_best = [m.value for m in client.get_metric_history(run_id, "val_ccc_valence") if m.step == best.step]
        assert run.data.metrics["best_val_ccc_valence"] == pytest.approx(at_best[0])
        params = run.data.params
        assert not [p for p, v in params.items() if v in ("None", "{}", "[]", "")]
        if params["variant"] == "dnn_mtl":
            assert not {"noise_var", "lambdas", "denoise_hidden", "target", "dae_pretrain_epochs"} & set(params)
            assert {"alpha", "beta", "lr", "hidden"} <= set(params)
        else:
            assert {"noise_var", "lambdas", "alpha", "beta"} <= set(params)


def test_shard_sets_are_dataset_inputs_of_the_parent_and_every_trial(store, finished_sweep):
    from data_io import shards

    client, _, parent, children = store
    ss = shards.open_shards(finished_sweep.shard_dir)
    for run in [parent, *children]:
        (ds,) = [d.dataset for d in client.get_run(run.info.run_id).inputs.dataset_inputs]
        assert ds.name == "msp_podcast/functionals" and ds.digest == ss.content_hash[:32]
        assert str(finished_sweep.shard_dir) in ds.source
        assert f'"rows": {ss.manifest.total_rows}' in ds.profile and ss.content_hash in ds.profile


@pytest.fixture()
def sweep_tracking(finished_sweep):
    with mlflow_tracking(finished_sweep.uri):  # models:/ URIs resolve in the sweep's tracking store
        yield


def test_registered_model_is_named_described_and_linked_to_its_repeat_run(store, finished_sweep, sweep_tracking):
    import mlflow

    from data_io import shards

    client, _, parent, children = store
    version = client.get_model_version_by_alias("t-model", "candidate")
    source = client.get_run(version.run_id)
    assert source.data.tags[tracking.ROLE_TAG] == "repeat" and source.data.tags[tracking.PARENT_TAG] == \
        parent.info.run_id
    assert version.tags["run_id"] == version.run_id
    assert "arousal" in version.description and f"{float(version.tags['val_score']):.4f}" in version.description
    local = mlflow.artifacts.download_artifacts(f"models:/t-model/{version.version}", dst_path=str(
        finished_sweep.tmp / "model_download"))
    info = mlflow.models.get_model_info(f"models:/t-model/{version.version}")
    inputs = info.signature.inputs.to_dict()
    assert [i["name"] for i in inputs] == ["features"]
    ss = shards.open_shards(finished_sweep.shard_dir)
    dim = ss.stack(ss.metadata()["utt_id"].to_pylist()[:1]).shape[1]
    assert list(inputs[0]["tensor-spec"]["shape"]) == [-1, dim]
    assert [o["name"] for o in info.signature.outputs.to_dict()] == ["arousal", "valence", "dominance"]
    requirements = (finished_sweep.tmp / "model_download" / "requirements.txt").read_text()
    assert "torch==" in requirements and "+" not in requirements, requirements
    # The input example is real validation rows, not noise: each is a row of the shards.
    example = mlflow.models.Model.load(local).load_input_example(local)
    example = np.asarray(example["features"] if isinstance(example, dict) else example)
    every = ss.stack(ss.metadata()["utt_id"].to_pylist())
    assert all(np.isclose(every, row, rtol=0, atol=1e-5).all(axis=1).any() for row in example)
    # float64 arrays are the signature's dtype; rows of any float dtype go in a "features" column (MLflow casts them).
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/t-model/{version.version}")
    inputs = [every[:7].astype(np.float64), every[:1].astype(np.float64), pd.DataFrame({"features": list(every[:7])}),
              pd.DataFrame({"features": [every[3]]}), pd.DataFrame({"features": list(every[:2].astype(np.float64))})]
    reference = model.predict(every[:7].astype(np.float64)).to_numpy()
    for x in inputs:
        out = model.predict(x)
        assert list(out.columns) == ["arousal", "valence", "dominance"] and len(out) == len(x)
        assert np.isfinite(out.to_numpy()).all()
    assert np.allclose(model.predict(inputs[2]).to_numpy(), reference, atol=1e-5)
    assert np.allclose(model.predict(inputs[3]).to_numpy(), reference[3:4], atol=1e-5)
    # On the corpus's rating scale (MSP-Podcast: 1-7), not the [-1, 1] training scale.
    assert reference.mean() > 1.5


def test_plots_are_logged(store, finished_sweep):
    import optuna

    client, exp, parent, children = store

    def files(run_id, path=""):
        found = {}
        for item in client.list_artifacts(run_id, path):
            found.update(files(run_id, item.path) if item.is_dir else {item.path: item.file_size})
        return found

    mine = files(parent.info.run_id)
    expected = ["plots/search/optimization_history.png", "plots/search/param_importances.png",
                "plots/search/parallel_coordinate.png", "optuna/optuna_study.db"]
    for variant in finished_sweep.result.selected:
        expected += [f"plots/validation_curves_{variant}.png", f"plots/test/{variant}/scatter_arousal.png",
                     f"plots/test/{variant}/scatter_dominance.png"]
    for path in expected:
        assert mine.get(path, 0) > 1000, (path, sorted(mine))
    best_repeats = [r for r in _role(children, "repeat") if files(r.info.run_id, "plots")]
    assert len(best_repeats) == len(finished_sweep.result.selected)
    for run in best_repeats:
        assert files(run.info.run_id).get("plots/validation/scatter_valence.png", 0) > 1000
    study = optuna.load_study(study_name="t_sweep", storage=parent.data.tags["emotune.optuna_storage"])
    assert len(study.trials) == 4
    assert exp.tags.get("mlflow.experimentKind") or client.get_experiment(exp.experiment_id).tags[
        "mlflow.experimentKind"]


def test_console_is_one_line_per_trial(finished_sweep):
    text = finished_sweep.console
    lines = [ln for ln in text.splitlines() if ln.strip()]
    trial_lines = [ln for ln in lines if re.match(r"\s+(search|repeats) +\d+/\d+ ", ln)]
    assert len(trial_lines) == 4 + 2 * len(finished_sweep.result.selected), text
    for phase in ("search", "repeats", "test", "register"):
        assert f"== {phase}" in text
    assert "Checkpoint successfully created" not in text and "Trial status" not in text
    assert "#/experiments/" in text
    assert len(lines) < 60, text

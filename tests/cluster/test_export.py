"""The registered model: a real tiny model trained on the synthetic corpora, logged into a sqlite MLflow store, loaded
back as a pyfunc where it must describe itself and predict on the corpus's own scale (no Ray)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from cluster import export
from data_io import folds as folds_mod
from data_io import shards
from data_io.examples import ExampleSpec
from data_io.feed import Feed
from trainables import registry
from trainables.base import SERModel
from trainables.data import SearchData, load_store
from trainables.loop import Standardized, model_from_state, run_trial

TARGETS = ("arousal", "valence", "dominance")
EMOTIONS = ["neutral", "happy", "sad", "angry"]


def _train(data: SearchData, **overrides) -> tuple[dict, dict]:
    """(best state, the metrics reported with it) of a short real run."""
    config = {"family": "ladder", "variant": "ladder_mtl", "hidden": (32, 32), "lr": 2e-3, "seed": 0,
              "max_epochs": 2, "patience": 5, "batch_size": 32, "metric": "val_ccc_arousal", "mode": "max",
              **overrides}
    reports = []
    torch.set_num_threads(1)
    run_trial(config, data, lambda m, s: reports.append((m, s)))
    return next((s, m) for m, s in reversed(reports) if s is not None)


def _expected(state: dict, x: np.ndarray) -> np.ndarray:
    """The eager ``Standardized`` network's outputs of raw ``x`` (any float dtype): the [-1, 1] training scale."""
    model, norm = model_from_state(state, 0)
    with torch.no_grad():
        y = Standardized(model, norm["mean"], norm["std"]).eval()(torch.from_numpy(x.astype(np.float32))).double()
    return y.numpy()


def _store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("t_export", artifact_location=str(tmp_path / "artifacts"))
    return uri, client, experiment


def _finished_run(client: MlflowClient, experiment: str) -> str:
    """A trial run as the repeats leave it: params logged, FINISHED."""
    run = client.create_run(experiment, run_name="repeat-trial")
    client.log_param(run.info.run_id, "lr", "0.002")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def msp(msp_search):
    return msp_search


@pytest.fixture(scope="module")
def registered(msp, tmp_path_factory):
    """A ladder_mtl model trained 2 epochs, logged and registered into a FINISHED run of a sqlite store."""
    data, store, fold = msp
    state, metrics = _train(data)
    uri, client, experiment = _store(tmp_path_factory.mktemp("mlflow"))
    run_id = _finished_run(client, experiment)
    before = client.get_run(run_id).info
    example = export.validation_example(state, store, list(fold.val_ids))
    score = metrics["val_ccc_arousal"]
    text = export.describe(state, corpora=["msp_podcast"], feature_set="functionals",
                           manifest_hash="0123456789abcdef0123", metric="val_ccc_arousal", mode="max", score=score,
                           protocol="predefined", sweep="t_sweep", variant="ladder_mtl", seed=0, trial_id="abc_00001")
    started = time.perf_counter()
    version = export.log_registered_model(
        state, example, tracking_uri=uri, run_id=run_id, model_name="t-model", description=text,
        params={"hidden": [32, 32], "lr": 0.002},
        version_tags={"val_score": repr(score), "val_metric": "val_ccc_arousal"})
    print(f"log_registered_model took {time.perf_counter() - started:.1f} s")
    return {"state": state, "store": store, "fold": fold, "uri": uri, "client": client, "run_id": run_id,
            "before": before, "example": example, "score": score, "version": version, "text": text}


def test_the_version_belongs_to_the_trial_run_which_stays_finished(registered):
    r = registered
    client, version = r["client"], r["version"]
    mv = client.get_model_version("t-model", version)
    assert mv.run_id == r["run_id"]
    run = client.get_run(r["run_id"]).info
    assert run.status == "FINISHED" and run.end_time == r["before"].end_time
    assert mv.tags["val_score"] == repr(r["score"]) and mv.tags["val_metric"] == "val_ccc_arousal"
    assert mlflow.active_run() is None
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.params["hidden"] == "[32, 32]" and logged.params["lr"] == "0.002"
    assert "arousal" in client.get_registered_model("t-model").description


def test_the_description_says_what_is_predicted_on_which_scale_and_how_well(registered):
    text = registered["client"].get_model_version("t-model", registered["version"]).description
    assert text == registered["text"]
    assert "arousal, valence, dominance on msp_podcast's 1-7 rating scale" in text
    assert f"val_ccc_arousal = {registered['score']:.4f}" in text
    for part in ("`features`", "(n, 1560)", "functionals", "0123456789ab", "predefined", "t_sweep", "ladder_mtl",
                 "seed 0", "abc_00001"):
        assert part in text


def test_signature_names_the_input_and_outputs_and_the_example_is_real_rows(registered):
    r = registered
    uri = f"models:/t-model/{r['version']}"
    info = mlflow.models.get_model_info(uri)
    (spec,) = info.signature.inputs.inputs
    assert spec.name == "features" and spec.shape == (-1, 1560) and spec.type == np.dtype("float64")
    assert info.signature.outputs.input_names() == list(TARGETS)
    # The stored example is fold 0's first validation rows, exactly as the store holds them: not noise.
    store, fold = r["store"], r["fold"]
    raw = store.vectors()[store.rows(list(fold.val_ids)[:4])]
    np.testing.assert_array_equal(r["example"], raw)
    assert r["example"].dtype == np.float32 and r["example"].shape == (4, 1560)
    local = Path(mlflow.artifacts.download_artifacts(uri))
    stored = np.asarray(json.loads((local / "input_example.json").read_text())["features"])
    np.testing.assert_array_equal(stored, r["example"])


def test_requirements_are_explicit_pins_without_local_labels(registered):
    local = Path(mlflow.artifacts.download_artifacts(f"models:/t-model/{registered['version']}"))
    lines = [ln.strip() for ln in (local / "requirements.txt").read_text().splitlines() if ln.strip()]
    assert lines == export.pip_requirements()
    assert not any("+" in ln for ln in lines)
    assert f"torch=={torch.__version__.split('+')[0]}" in lines
    assert {ln.split("==")[0] for ln in lines} == {"mlflow", "torch", "numpy", "pandas"}


def test_the_loaded_pyfunc_predicts_named_columns_on_the_corpus_scale(registered):
    r = registered
    model = mlflow.pyfunc.load_model(f"models:/t-model/{r['version']}")
    x = r["example"]
    many = np.concatenate([x] * 5)  # 20 rows
    low, high = 1.0, 7.0
    want = low + (_expected(r["state"], many) + 1.0) / 2.0 * (high - low)
    # What MLflow's schema enforcement lets through (float64 arrays; a DataFrame column of rows in any float dtype).
    forms = {"float64 (n, D)": (many.astype(np.float64), want),
             "float64 (1, D)": (many[:1].astype(np.float64), want[:1]),
             "dict float64": ({"features": many.astype(np.float64)}, want),
             "DataFrame float32": (pd.DataFrame({"features": list(many)}), want),
             "DataFrame one float32 row": (pd.DataFrame({"features": [many[0]]}), want[:1])}
    for name, (data, expected) in forms.items():
        got = model.predict(data)
        assert isinstance(got, pd.DataFrame) and list(got.columns) == list(TARGETS), name
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=name)
    # The model itself takes every form it documents (what a caller without the wrapper or a server passes).
    python_model = model.unwrap_python_model()
    for name, data, expected in [("float32 (n, D)", many, want), ("float32 (D,)", many[0], want[:1]),
                                 ("float64 (D,)", many[0].astype(np.float64), want[:1]),
                                 ("dict float32", {"features": many}, want),
                                 ("DataFrame of feature columns", pd.DataFrame(many), want)]:
        got = python_model.predict(None, data)
        assert list(got.columns) == list(TARGETS), name
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=name)
    assert len(python_model.predict(None, many[:0])) == 0
    with pytest.raises(ValueError, match=r"shape \(n, 1560\)"):
        python_model.predict(None, many[:, :10])


WITHOUT_EMOTUNE = """
import json, sys
import numpy as np

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"cluster", "data_io", "trainables", "searchspace", "emotune"}:
            raise ModuleNotFoundError(f"No module named {name!r} (emotune is not installed here)")

sys.meta_path.insert(0, NotInstalled())
import mlflow

model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(np.asarray(json.loads(sys.argv[2]), dtype=np.float64))
print(json.dumps({"columns": list(out.columns), "values": out.to_numpy().tolist()}))
"""


def test_the_model_loads_and_predicts_where_emotune_is_not_installed(registered, tmp_path):
    local = mlflow.artifacts.download_artifacts(f"models:/t-model/{registered['version']}", dst_path=str(tmp_path))
    x = registered["example"][:2]
    done = subprocess.run([sys.executable, "-c", WITHOUT_EMOTUNE, local, json.dumps(x.tolist())], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["columns"] == list(TARGETS)
    np.testing.assert_allclose(got["values"], 1.0 + (_expected(registered["state"], x) + 1.0) * 3.0, rtol=1e-5,
                               atol=1e-5)


def test_exported_network_is_in_eval_mode_with_a_dynamic_batch(registered, tmp_path):
    state, x = registered["state"], registered["example"]
    path = export.export_network(state, x[:1], tmp_path / "net.pt2")  # a one-row example still exports
    net = torch.export.load(str(path)).module()
    raw = np.concatenate([x] * 30)  # 120 rows
    for n in (1, 2, 7, 120):
        with torch.no_grad():
            first, second = net(torch.from_numpy(raw[:n])), net(torch.from_numpy(raw[:n]))
        assert first.shape == (n, 3)
        torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout at inference
        np.testing.assert_allclose(first.numpy(), _expected(state, raw[:n]), rtol=1e-5, atol=1e-5)
    # One row at a time equals the whole batch: batch norm uses running statistics, not the batch's.
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(raw[:1])).numpy(), net(torch.from_numpy(raw[:7])).numpy()[:1],
                                   rtol=1e-5, atol=1e-6)


def test_output_columns_follow_the_network_not_the_target_list(msp):
    data, _, _ = msp
    shuffled = SearchData(store=data.store, folds=data.folds, targets=("valence", "dominance", "arousal"))
    state, _ = _train(shuffled, max_epochs=1)
    # The ladder family stacks arousal, valence, dominance whatever the order of data.targets.
    assert export.output_spec(state)["columns"] == ["arousal", "valence", "dominance"]
    state, _ = _train(shuffled, variant="ladder_stl", target="valence", metric="val_ccc_valence", max_epochs=1)
    spec = export.output_spec(state)
    assert spec["columns"] == ["valence"] and spec["targets"][0]["scale"] == [1.0, 7.0]


def test_several_corpus_scales_use_the_first_corpus_and_say_so(registered):
    state = copy.deepcopy(registered["state"])
    for enc in state["folds"][0]["encoders"].values():
        enc["label_scales"] = {"msp_podcast": [1.0, 7.0], "iemocap": [1.0, 5.0], "librispeech": None}
    (entry, *_) = export.output_spec(state)["targets"]
    assert entry["corpus"] == "iemocap" and entry["scale"] == [1.0, 5.0]
    text = export.describe(state, corpora=["iemocap", "msp_podcast"], feature_set="functionals", manifest_hash="h",
                           metric="val_ccc_arousal", mode="max", score=0.5, protocol="loso", sweep="s", variant="",
                           seed=1, trial_id="t")
    assert "on iemocap's 1-5 rating scale" in text and "other scales too (msp_podcast)" in text
    assert "first of its corpora in sorted order" in text


def test_bad_inputs_fail_before_anything_is_logged(registered, tmp_path):
    r = registered
    with pytest.raises(ValueError, match="none of the"):
        export.validation_example(r["state"], r["store"], [])
    uri, client, experiment = _store(tmp_path)
    run_id = _finished_run(client, experiment)
    for bad, match in [(r["example"][:, :10], "example must have shape"),
                       (np.full_like(r["example"], np.nan), "NaN")]:
        with pytest.raises(ValueError, match=match):
            export.log_registered_model(r["state"], bad, tracking_uri=uri, run_id=run_id, model_name="m",
                                        description="d", params={}, version_tags={})
    assert client.search_registered_models() == []


# ---- class targets: frame features, a probe family, the emotion posteriors --------------------------------------

@dataclass(frozen=True)
class ProbeConfig:
    lr: float = 3e-3
    frames: int = 32

    def feed(self) -> Feed:
        return Feed(examples=ExampleSpec.windows(self.frames, hop=self.frames // 2))


class ProbeModel(SERModel):
    """Mean over frames, batch norm and dropout (both must be off in the export), a head per target."""

    def __init__(self, cfg: ProbeConfig, spec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        n_bins = spec.input_shape[-1]
        self.body = nn.Sequential(nn.BatchNorm1d(n_bins), nn.Dropout(0.5))
        self.heads = nn.ModuleDict({t: nn.Linear(n_bins, spec.n_classes.get(t, 1)) for t in spec.targets})

    def predict(self, batch):
        h = self.body(batch["x"].mean(dim=1))  # (B, F)
        out = {t: head(h) for t, head in self.heads.items()}
        return {t: v.squeeze(-1) if self.spec.kind(t) == "regression" else v for t, v in out.items()}

    def loss(self, batch):
        total = batch["x"].new_zeros(())
        for t, y in self.predict(batch).items():
            mask = batch[f"{t}_mask"]
            if mask.any():
                fn = F.mse_loss if self.spec.kind(t) == "regression" else F.cross_entropy
                total = total + fn(y[mask], batch[t][mask])
        return total, {}


@pytest.mark.slow
def test_class_targets_give_one_probability_column_per_class(frame_shards, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, "probe", registry.Family("probe", ProbeConfig, ProbeModel,
                                                                    lambda trial: {}))
    ss = shards.open_shards(frame_shards / "iemocap" / "fbank40")
    fold = folds_mod.build_folds("loso", ss.metadata())[0]
    store = load_store([ss])
    data = SearchData(store=store.subset([*fold.train_ids, *fold.val_ids]), folds=[fold.for_search()],
                      targets=("arousal", "emotion"), classes={"emotion": EMOTIONS})
    reports = []
    run_trial({"family": "probe", "seed": 0, "max_epochs": 1, "patience": 5, "batch_size": 32,
               "metric": "val_ua_emotion", "mode": "max"}, data, lambda m, s: reports.append(s))
    state = [s for s in reports if s is not None][-1]
    columns = ["arousal", *(f"emotion.{c}" for c in EMOTIONS)]
    assert export.output_spec(state)["columns"] == columns

    example = export.validation_example(state, store, list(fold.val_ids), n=3)
    assert example.shape == (3, 32, 40) and example.dtype == np.float32
    uri, client, experiment = _store(tmp_path)
    run_id = _finished_run(client, experiment)
    text = export.describe(state, corpora=["iemocap"], feature_set="fbank40", manifest_hash="h" * 16,
                           metric="val_ua_emotion", mode="max", score=0.3, protocol="loso", sweep="s", variant="",
                           seed=0, trial_id="t")
    assert "arousal on iemocap's 1-5 rating scale" in text and "`emotion.neutral`" in text
    version = export.log_registered_model(state, example, tracking_uri=uri, run_id=run_id, model_name="emo",
                                          description=text, params={}, version_tags={})
    model = mlflow.pyfunc.load_model(f"models:/emo/{version}")
    (spec,) = model.metadata.signature.inputs.inputs
    assert spec.shape == (-1, 32, 40)
    many = np.concatenate([example] * 4)
    for data_in in (many.astype(np.float64), pd.DataFrame({"features": list(many)})):
        got = model.predict(data_in)
        assert list(got.columns) == columns
        probs = got[columns[1:]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        assert (probs >= 0).all()
        want = _expected(state, many)
        np.testing.assert_allclose(got["arousal"].to_numpy(), 1.0 + (want[:, 0] + 1.0) * 2.0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probs, want[:, 1:], rtol=1e-5, atol=1e-6)
    one = model.unwrap_python_model().predict(None, example[0])  # one (T, F) example
    assert one.shape == (1, len(columns))
    assert client.get_run(run_id).info.status == "FINISHED"

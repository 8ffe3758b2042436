"""The loop over the data path with frame features: windows scored per utterance, several corpora with per-corpus
folds and metrics, auxiliary rows that never reach a loss they carry no label for, and the driver's checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from data_io.examples import ExampleSpec
from data_io.feed import Feed
from trainables import registry
from trainables.base import SERModel
from trainables.loop import evaluate_state, run_trial

EMOTIONS = ["neutral", "happy", "sad", "angry"]
SEEN: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []  # (utt_index, masks) of every training batch


@dataclass(frozen=True)
class ProbeConfig:
    lr: float = 3e-3
    examples: str = "windows"
    frames: int = 64

    def feed(self) -> Feed:
        if self.examples == "windows":
            return Feed(examples=ExampleSpec.windows(self.frames, hop=self.frames // 2))
        return Feed(examples=ExampleSpec.crop(self.frames, centre="speech"))


class ProbeModel(SERModel):
    """Mean over frames, one linear head per class target; records what each training batch fed its losses."""

    def __init__(self, cfg: ProbeConfig, spec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.heads = nn.ModuleDict({t: nn.Linear(spec.input_shape[-1], spec.n_classes[t]) for t in spec.targets})

    def _logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = x.mean(dim=1)  # (B, F)
        return {t: head(h) for t, head in self.heads.items()}

    def loss(self, batch):
        SEEN.append((batch["utt_index"].numpy().copy(),
                     {t: batch[f"{t}_mask"].numpy().copy() for t in self.spec.targets}))
        total = batch["x"].new_zeros(())
        for t, logits in self._logits(batch["x"]).items():
            mask = batch[f"{t}_mask"]
            if mask.any():
                total = total + F.cross_entropy(logits[mask], batch[t][mask])
        return total, {}

    def predict(self, batch):
        return self._logits(batch["x"])

    def extra_metrics(self, outputs, labels, meta):
        # Proves evaluation is per utterance: one output row per utterance, whatever the number of windows.
        return {"n_scored": float(len(outputs["emotion"])), "n_rows_meta": float(meta.num_rows)}


@pytest.fixture(autouse=True)
def probe_family(monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, "probe", registry.Family("probe", ProbeConfig, ProbeModel,
                                                                    lambda trial: {}))
    SEEN.clear()


def _config(**overrides) -> dict:
    return {"family": "probe", "seed": 0, "max_epochs": 2, "patience": 5, "batch_size": 32,
            "metric": "val_ua_emotion", "mode": "max", **overrides}


def _prepare(tmp_path, frame_shards, **data):
    from cluster.sweep import prepare

    cfg = {"name": "t", "data": {"shards": [str(frame_shards / "iemocap" / "fbank40")], "protocol": "loso",
                                 "targets": ["emotion"], "emotion_classes": EMOTIONS, **data},
           "model": {"family": "ladder", "variants": ["ladder_mtl"]},
           "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage": {"path": str(tmp_path / "rr")}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return prepare(path)


def _search_data(prep, n_folds=None):
    from cluster.sweep import build_search_data
    from data_io.store import load_store

    store = load_store(prep.shard_sets, prep.auxiliary)
    data = build_search_data(prep, store)
    if n_folds is not None:
        data.folds = data.folds[:n_folds]
    return data, store


def test_windows_are_trained_per_window_and_scored_per_utterance(tmp_path, frame_shards):
    prep = _prepare(tmp_path, frame_shards)
    data, store = _search_data(prep, n_folds=2)
    reports = []
    run_trial(_config(max_epochs=3), data, lambda m, s: reports.append((m, s)))
    n_val = np.mean([len(f.val_ids) for f in data.folds])
    last = reports[-1][0]
    assert last["val_n_scored"] == n_val == last["val_n_rows_meta"]
    assert 0 <= last["val_ua_emotion"] <= 1 and 0 <= last["data_time_share"] < 1
    # Training saw windows: more examples than utterances in an epoch.
    n_train = sum(len(f.train_ids) for f in data.folds)
    assert sum(len(u) for u, _ in SEEN) > 3 * n_train
    state = [s for _, s in reports if s is not None][-1]
    assert state["folds"][0]["encoders"]["emotion"]["classes"] == EMOTIONS
    test_ids = [list(f.test.open("test_loop_data_path")) for f in prep.folds[:2]]
    test = evaluate_state(state, store, test_ids)
    assert test["test_n_scored"] == np.mean([len(ids) for ids in test_ids])
    assert set(test) >= {"test_ua_emotion", "test_wa_emotion", "test_f1_emotion"}


def test_two_corpora_with_their_own_protocols_report_per_corpus_metrics(tmp_path, frame_shards):
    prep = _prepare(tmp_path, frame_shards,
                    shards=[str(frame_shards / "iemocap" / "fbank40"), str(frame_shards / "csv" / "fbank40")],
                    corpus_protocols={"csv": {"protocol": "random_kfold", "k": 5}})
    assert len(prep.folds) == 5
    for fold in prep.folds:
        assert "+" in fold.name and set(fold.counts_by_corpus["test"]) == {"iemocap", "csv"}
    data, store = _search_data(prep, n_folds=1)
    reports = []
    run_trial(_config(examples="crop", max_epochs=1), data, lambda m, s: reports.append((m, s)))
    m = reports[-1][0]
    for key in ("val_ua_emotion", "val_wa_emotion"):
        assert {f"{key}.iemocap", f"{key}.csv", f"{key}.corpus_mean"} <= set(m)
        assert m[f"{key}.corpus_mean"] == pytest.approx((m[f"{key}.iemocap"] + m[f"{key}.csv"]) / 2)
    fold = prep.folds[0]
    assert m["val_n_scored.iemocap"] == fold.counts_by_corpus["val"]["iemocap"]
    state = reports[-1][1] or [s for _, s in reports if s is not None][-1]
    test = evaluate_state(state, store, [list(fold.test.open("test_loop_data_path"))])
    assert test["test_n_scored.csv"] == fold.counts_by_corpus["test"]["csv"]
    assert test["test_n_scored.iemocap"] == fold.counts_by_corpus["test"]["iemocap"]


def test_auxiliary_rows_train_only_their_targets_and_are_never_scored(tmp_path, frame_shards):
    prep = _prepare(tmp_path, frame_shards, targets=["emotion", "gender"],
                    auxiliary=[{"shards": str(frame_shards / "librispeech" / "fbank40"), "targets": ["gender"]}])
    data, store = _search_data(prep, n_folds=1)
    reports = []
    run_trial(_config(examples="crop", max_epochs=1), data, lambda m, s: reports.append((m, s)))
    aux_rows = set(store.auxiliary_rows().tolist())
    search_aux = set(data.store.auxiliary_rows().tolist())
    assert len(search_aux) == len(aux_rows) > 0
    fed_gender = 0
    for utt_index, masks in SEEN:
        is_aux = data.store.is_auxiliary(utt_index)
        assert not masks["emotion"][is_aux].any()  # an auxiliary row never reaches the emotion loss
        fed_gender += int(masks["gender"][is_aux].sum())
    assert fed_gender == len(search_aux)  # ... and every one trained gender once in the epoch
    assert reports[-1][0]["val_n_scored"] == len(data.folds[0].val_ids)  # none is validated


def test_driver_checks_auxiliary_sets_before_ray_starts(tmp_path, frame_shards):
    import ray

    libri = str(frame_shards / "librispeech" / "fbank40")
    with pytest.raises(ValueError, match=r"data.auxiliary\[0\].shards: .* holds feature set 'logmel'"):
        _prepare(tmp_path, frame_shards, auxiliary=[str(frame_shards / "iemocap" / "logmel")])
    with pytest.raises(ValueError, match=r"data.auxiliary\[0\].targets: 'emotion' needs \['emotion'\] labels"):
        _prepare(tmp_path, frame_shards, auxiliary=[{"shards": libri, "targets": ["emotion"]}])
    with pytest.raises(ValueError, match=r"data.auxiliary.0.targets: 'gender' is not in data.targets"):
        _prepare(tmp_path, frame_shards, auxiliary=[{"shards": libri, "targets": ["gender"]}])
    with pytest.raises(ValueError, match=r"data.corpus_protocols: \['msp'\] are not corpora"):
        _prepare(tmp_path, frame_shards, corpus_protocols={"msp": {"protocol": "loso"}})
    with pytest.raises(ValueError, match=r"data.encoders.arousal"):
        _prepare(tmp_path, frame_shards, targets=["arousal"], encoders={"arousal": {"encoder": "levels",
                                                                                       "edges": {"x": [1, 2]}}},
                 shards=[str(frame_shards / "csv" / "fbank40")], protocol="random_kfold")
    assert not ray.is_initialized()


def test_unlabeled_auxiliary_set_is_a_bare_path(tmp_path, frame_shards):
    libri = str(frame_shards / "librispeech" / "fbank40")
    prep = _prepare(tmp_path, frame_shards, auxiliary=[libri])
    data, _ = _search_data(prep, n_folds=1)
    run_trial(_config(examples="crop", max_epochs=1), data, lambda m, s: None)
    aux_seen = sum(int(data.store.is_auxiliary(u).sum()) for u, _ in SEEN)
    assert aux_seen == len(data.store.auxiliary_rows())  # unlabeled rows are fed (no loss uses them here)
    assert all(not m["emotion"][data.store.is_auxiliary(u)].any() for u, m in SEEN)
    assert pa.types.is_list(data.store.meta.schema.field("speech").type)


def test_kept_auxiliary_speakers_are_chosen_before_encoders_are_fitted(tmp_path, frame_shards):
    """Sampling.aux_speakers: the fold's speaker classes are the labelled corpus's training speakers plus only the
    kept auxiliary speakers, so the speaker head has no class that never trains."""
    from data_io.feed import Sampling
    from trainables.loop import FoldRun

    prep = _prepare(tmp_path, frame_shards, targets=["emotion", "speaker"],
                    auxiliary=[{"shards": str(frame_shards / "librispeech" / "fbank40"), "targets": ["speaker"]}])
    data, store = _search_data(prep, n_folds=1)
    family = registry.FAMILIES["probe"]
    aux_speakers = set(store.meta.take(store.auxiliary_rows())["speaker"].to_pylist())
    assert len(aux_speakers) > 2
    runs = {}
    for kept in (None, 2):
        feed = Feed(examples=ExampleSpec.crop(32), sampling=Sampling(aux_speakers=kept))
        runs[kept] = FoldRun(family, ProbeConfig(), feed, data, 0, 0, torch.device("cpu"))
    every, two = (set(runs[k].encoders["speaker"].classes) for k in (None, 2))
    assert two < every and len(every - two) == len(aux_speakers) - 2

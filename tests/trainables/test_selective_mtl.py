"""The selective_mtl family: per-row loss weights and the total by hand, style heads per setting, one network per
corpus for ``separate``, the feed, validation, shapes and learning on a synthetic problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_io.examples import ExampleSpec
from trainables.base import DataSpec
from trainables.selective_mtl import (
    SETTINGS,
    SelectiveMTLConfig,
    SelectiveMTLModel,
    loss_weights,
    parameter_count,
)

B, T, NF, C, NEUTRAL = 8, 20, 12, 4, 3
SPEC = DataSpec(input_shape=(T, NF), targets=("emotion", "style"), n_classes={"emotion": C, "style": 2})
TINY = {"frames": T, "lstm_cells": 16, "attention_size": 16, "heads": 2, "fc1": 32, "fc2": 16,
        "neutral_index": NEUTRAL}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/trainables/conftest.py


def make_batch(n: int = B, seed: int = 0, style: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, T, NF, generator=g),
            "emotion": torch.arange(n) % C, "emotion_mask": torch.ones(n, dtype=torch.bool),
            "style": torch.arange(n) % 2 if style is None else style, "style_mask": torch.ones(n, dtype=torch.bool),
            "utt_index": torch.arange(n)}


def build(variant: str = "selective_mtl", spec: DataSpec = SPEC, **kw) -> SelectiveMTLModel:
    torch.manual_seed(0)
    return SelectiveMTLModel(SelectiveMTLConfig(variant=variant, **{**TINY, **kw}), spec)


# ---- loss weights and the total, by hand -----------------------------------------------------------------------

def test_loss_weights_by_setting():
    emotion = torch.tensor([0, 3, 3, 1, 2])
    emo_mask = torch.tensor([True, True, False, True, True])  # row 2: neutral index but unlabelled
    sty_mask = torch.tensor([True, True, True, False, True])
    w_ser, w_style = loss_weights(emotion, emo_mask, sty_mask, 3, 0.8, "selective_mtl")
    assert torch.allclose(w_ser, torch.tensor([0.8, 1.0, 0.0, 0.8, 0.8]))
    assert torch.allclose(w_style, torch.tensor([0.2, 0.0, 0.2, 0.0, 0.2]))  # neutral row 1: no style loss
    w_ser, w_style = loss_weights(emotion, emo_mask, sty_mask, 3, 0.8, "mtl")
    assert torch.allclose(w_ser, torch.tensor([0.8, 0.8, 0.0, 0.8, 0.8]))
    assert torch.allclose(w_style, torch.tensor([0.2, 0.2, 0.2, 0.0, 0.2]))
    for variant in ("combined", "separate"):
        w_ser, w_style = loss_weights(emotion, emo_mask, sty_mask, 3, 0.8, variant)
        assert torch.equal(w_ser, emo_mask.float()) and not w_style.any()


@pytest.mark.parametrize("variant", ["mtl", "selective_mtl"])
def test_total_loss_matches_hand_computation(variant):
    model = build(variant, lam=0.7).eval()  # eval: no dropout, so predict and loss see the same logits
    batch = make_batch()
    batch["emotion_mask"][5] = False
    batch["style_mask"][6] = False
    total, logs = model.loss(batch)
    with torch.no_grad():
        out = model.predict(batch)
    ce_e = F.cross_entropy(out["emotion"], batch["emotion"], reduction="none")
    ce_s = F.cross_entropy(out["style"], batch["style"], reduction="none")
    ser = style = 0.0
    for i in range(B):
        neutral = variant == "selective_mtl" and int(batch["emotion"][i]) == NEUTRAL and bool(batch["emotion_mask"][i])
        if batch["emotion_mask"][i]:
            ser += (1.0 if neutral else 0.7) * float(ce_e[i])
        if batch["style_mask"][i]:
            style += (0.0 if neutral else 0.3) * float(ce_s[i])
    expected = ser / 7 + style / 7
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert logs["loss_ser"] == pytest.approx(ser / 7, rel=1e-5)
    if variant == "selective_mtl":  # the neutral rows (3 and 7) drop out of the style term
        assert (logs["loss_style"] * 7) == pytest.approx(0.3 * float(ce_s[[0, 1, 2, 4, 5]].sum()), rel=1e-5)


def test_combined_loss_is_ser_only():
    model = build("combined").eval()
    batch = make_batch()
    total, logs = model.loss(batch)
    with torch.no_grad():
        expected = float(F.cross_entropy(model.predict(batch)["emotion"], batch["emotion"]))
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert logs["loss_style"] == 0.0


# ---- style heads and separate networks -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", SETTINGS)
def test_shapes_and_style_head(variant):
    model = build(variant).eval()
    out = model.predict(make_batch())
    assert out["emotion"].shape == (B, C)
    if variant in ("mtl", "selective_mtl"):
        assert model.style_head is not None and out["style"].shape == (B, 2)
    else:
        assert model.style_head is None and "style" not in out
    assert len(model.networks) == (2 if variant == "separate" else 1)
    exported = model(make_batch()["x"])
    assert exported.shape == (B, C + (2 if "style" in out else 0)) and torch.isfinite(exported).all()
    model.train()
    total, _ = model.loss(make_batch())
    total.backward()
    assert torch.isfinite(total)


def test_separate_trains_one_network_per_corpus():
    model = build("separate").train()
    opt = model.configure_optimizers()
    model.training_step(make_batch(), opt)  # both corpora: both networks move
    for style in (0, 1):
        before = [p.detach().clone() for p in model.networks[1 - style].parameters()]
        own = [p.detach().clone() for p in model.networks[style].parameters()]
        model.training_step(make_batch(seed=style + 1, style=torch.full((B,), style)), opt)
        assert all(torch.equal(a, p) for a, p in zip(before, model.networks[1 - style].parameters(), strict=True))
        assert any(not torch.equal(a, p) for a, p in zip(own, model.networks[style].parameters(), strict=True))


def test_separate_routes_rows_by_style_and_mixes_without_it():
    model = build("separate").eval()
    batch = make_batch()
    out = model.predict(batch)["emotion"]
    with torch.no_grad():
        for s in (0, 1):
            rows = batch["style"] == s
            assert torch.allclose(out[rows], model.networks[s](batch["x"][rows])[1], atol=1e-5)
        mean = torch.stack([torch.softmax(net(batch["x"])[1], -1) for net in model.networks]).mean(0)
        assert torch.allclose(torch.softmax(model.predict({"x": batch["x"]})["emotion"], -1), mean, atol=1e-5)
        assert torch.allclose(model(batch["x"]), mean, atol=1e-5)


# ---- feed, config and construction -----------------------------------------------------------------------------

def test_feed_caps_neutral_and_halves():
    feed = SelectiveMTLConfig().feed()
    assert feed.examples == ExampleSpec.fixed(750, anchor="start") and feed.normalization == "zscore"
    assert feed.sampling.caps == (("csv", "neutral", 2000),) and feed.sampling.cap_target == "emotion"
    assert feed.sampling.fraction == 1.0
    assert SelectiveMTLConfig(half=True, neutral_cap=10, spontaneous_corpus="calls").feed().sampling.caps == (
        ("calls", "neutral", 10),)
    assert SelectiveMTLConfig(half=True).feed().sampling.fraction == 0.5


def test_unused_fields():
    assert SelectiveMTLConfig(variant="combined").unused_fields() == {"lam", "neutral_index"}
    assert SelectiveMTLConfig(variant="mtl").unused_fields() == {"neutral_index"}
    assert SelectiveMTLConfig(variant="selective_mtl").unused_fields() == frozenset()


@pytest.mark.parametrize("kw, match", [
    ({"variant": "joint"}, "variant must be one of"),
    ({"lam": 0.0}, "0 < lam <= 1"),
    ({"lam": 1.5}, "0 < lam <= 1"),
    ({"lr": 0}, "lr > 0"),
    ({"weight_decay": -1}, "weight_decay >= 0"),
    ({"dropout": 1.0}, "0 <= dropout < 1"),
    ({"heads": 0}, "sizes must be integers >= 1"),
    ({"neutral_cap": 0}, "sizes must be integers >= 1"),
    ({"neutral_index": -1}, "neutral_index must be None"),
    ({"half": "yes"}, "half must be a bool"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        SelectiveMTLConfig(**kw)


def test_construction_errors():
    with pytest.raises(ValueError, match=r"shape \(T, F\)"):
        build(spec=DataSpec(input_shape=(NF,), targets=("emotion", "style"), n_classes={"emotion": C, "style": 2}))
    with pytest.raises(ValueError, match="class target 'emotion'"):
        build(spec=DataSpec(input_shape=(T, NF), targets=("arousal", "style"), n_classes={"style": 2}))
    no_style = DataSpec(input_shape=(T, NF), targets=("emotion",), n_classes={"emotion": C})
    for variant in ("separate", "mtl", "selective_mtl"):
        with pytest.raises(ValueError, match="needs the class target 'style' with 2 classes"):
            build(variant, spec=no_style)
    three = DataSpec(input_shape=(T, NF), targets=("emotion", "style"), n_classes={"emotion": C, "style": 3})
    with pytest.raises(ValueError, match="needs the class target 'style'"):
        build("mtl", spec=three)
    assert build("combined", spec=no_style).style_head is None
    with pytest.raises(ValueError, match="needs the class 'neutral' among the emotion classes"):
        build("selective_mtl", neutral_index=None)
    with pytest.raises(ValueError, match="neutral_index in"):
        build("selective_mtl", neutral_index=C)


def test_extra_metrics_per_class_recall():
    model = build()
    post = np.array([[0.9, 0.1, 0, 0], [0.1, 0.9, 0, 0], [0.8, 0.2, 0, 0], [0, 0, 0, 1.0]])
    labels = {"emotion": np.array([0, 1, 1, 2]), "emotion_mask": np.array([True, True, True, False])}
    assert model.extra_metrics({"emotion": post}, labels, None) == {"acc_emotion_class0": 1.0,
                                                                    "acc_emotion_class1": 0.5}


def test_paper_size_parameter_count():
    spec = DataSpec(input_shape=(750, 40), targets=("emotion", "style"), n_classes={"emotion": 4, "style": 2})
    torch.manual_seed(0)
    counts = {v: parameter_count(SelectiveMTLModel(SelectiveMTLConfig(variant=v, neutral_index=3), spec))
              for v in ("combined", "selective_mtl", "separate")}
    print(f"paper-size parameters (40 bins, 4 classes): {counts}")
    lstm = 2 * 4 * 256 * (40 + 256 + 2)
    attention = 512 * 8 * 512 + 8 * 512
    fcs = 4096 * 4096 + 4096 + 4096 * 1024 + 1024 + 1024 * 4 + 4
    assert counts["combined"] == lstm + attention + fcs
    assert counts["selective_mtl"] == counts["combined"] + 4096 * 2 + 2
    assert counts["separate"] == 2 * counts["combined"]


# ---- learning --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["selective_mtl", "separate"])
def test_learns_bright_band(variant):
    g = torch.Generator().manual_seed(0)
    n = 64
    y = torch.arange(n) % C
    x = 0.5 * torch.randn(n, T, NF, generator=g)
    band = NF // C
    for k in range(C):
        x[y == k, :, k * band:(k + 1) * band] += 1.5  # the class is a bright band of bins
    batch = {"x": x, "emotion": y, "emotion_mask": torch.ones(n, dtype=torch.bool),
             "style": (torch.arange(n) // 2) % 2, "style_mask": torch.ones(n, dtype=torch.bool)}
    model = build(variant, lr=3e-3, dropout=0.0).train()
    opt = model.configure_optimizers()
    for _ in range(40):
        logs = model.training_step(batch, opt)
    assert np.isfinite(logs["loss"])
    model.eval()
    with torch.no_grad():
        acc = float((model.predict(batch)["emotion"].argmax(-1) == y).float().mean())
    print(f"{variant}: training accuracy {acc:.2f} after 40 steps")
    assert acc > 0.7, acc


def test_neutral_is_found_by_name_in_the_data_spec():
    spec = DataSpec(input_shape=(T, NF), targets=("emotion", "style"), n_classes={"emotion": C, "style": 2},
                    classes={"emotion": ("angry", "neutral", "sad", "happy"), "style": ("acted", "spontaneous")})
    assert build("selective_mtl", spec=spec, neutral_index=None).neutral_index == 1
    assert build("selective_mtl", spec=spec, neutral_index=2).neutral_index == 2  # an explicit index wins


def test_per_class_accuracy_is_named_by_class():
    spec = DataSpec(input_shape=(T, NF), targets=("emotion", "style"), n_classes={"emotion": C, "style": 2},
                    classes={"emotion": ("neutral", "happy", "sad", "angry"), "style": ("acted", "spontaneous")})
    model = build("combined", spec=spec)
    post = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.7, 0.3, 0, 0]])
    labels = {"emotion": np.array([0, 1, 1]), "emotion_mask": np.ones(3, dtype=bool)}
    assert model.extra_metrics({"emotion": post}, labels, None) == {"acc_emotion_neutral": 1.0,
                                                                    "acc_emotion_happy": 0.5}


# ---- two corpora through the driver's data path ----------------------------------------------------------------

def _two_corpus_search(tmp_path, frame_shards):
    import yaml

    from cluster.sweep import build_search_data, prepare
    from data_io.store import load_store

    cfg = {"name": "t", "data": {"shards": [str(frame_shards / "iemocap" / "fbank40"),
                                            str(frame_shards / "csv" / "fbank40")],
                                 "include": {"emotion": "^(neutral|happy|sad|angry|excited)$"},
                                 "emotion_merge": {"excited": "happy"}, "protocol": "loso",
                                 "corpus_protocols": {"csv": {"protocol": "random_kfold", "k": 5,
                                                              "stratify": "emotion"}},
                                 "targets": ["emotion", "style"], "emotion_classes": ["neutral", "happy", "sad",
                                                                                      "angry"]},
           "model": {"family": "selective_mtl", "variants": ["selective_mtl"]},
           "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage": {"path": str(tmp_path / "rr")}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prep = prepare(path)
    store = load_store(prep.shard_sets, prep.auxiliary)
    return prep, store, build_search_data(prep, store)


def test_per_corpus_lockboxes_hold(tmp_path, frame_shards):
    """Each fold tests rows of both corpora; a trial's view of fold k (what it trains and validates on, and what
    is shipped to it for that fold) holds none of fold k's test rows of either corpus, and the test ids themselves
    never leave the driver."""
    import pickle

    from data_io.folds import LockboxError

    prep, store, data = _two_corpus_search(tmp_path, frame_shards)
    corpus_of = dict(zip(store.meta["utt_id"].to_pylist(), store.meta["corpus"].to_pylist(), strict=True))
    for fold, shipped in zip(prep.folds, data.folds, strict=True):
        test_ids = set(fold.test.open("test: per-corpus lockbox"))
        assert {corpus_of[u] for u in test_ids} == {"iemocap", "csv"}
        assert not (set(shipped.train_ids) | set(shipped.val_ids)) & test_ids
        blob = pickle.dumps(shipped)
        assert not any(u.encode() in blob for u in test_ids)
        with pytest.raises(LockboxError):
            pickle.dumps(fold.test)


def test_per_corpus_metrics_match_a_hand_computation(tmp_path, frame_shards):
    from trainables.loop import evaluate_state, predict_set, run_trial, state_evalsets

    prep, store, data = _two_corpus_search(tmp_path, frame_shards)
    data.folds = data.folds[:1]
    config = {"family": "selective_mtl", "variant": "selective_mtl", "seed": 0, "max_epochs": 1, "patience": 5,
              "batch_size": 32, "metric": "val_ua_emotion", "mode": "max", "spontaneous_corpus": "csv",
              **{k: v for k, v in TINY.items() if k != "neutral_index"}, "frames": 200}
    states = []
    run_trial(config, data, lambda metrics, state: states.append(state))
    state = [s for s in states if s is not None][-1]
    test_ids = [list(prep.folds[0].test.open("test: hand computation"))]
    got = evaluate_state(state, store, test_ids)
    ((model, evalset),) = state_evalsets(state, store, test_ids)
    pred = predict_set(model, evalset, model.spec, torch.device("cpu"))["emotion"].argmax(-1)
    truth, has = evalset.labels["emotion"], evalset.labels["emotion_mask"]
    corpus = np.asarray(evalset.meta["corpus"].to_pylist())
    names = model.spec.classes["emotion"]
    for c in ("iemocap", "csv"):
        sel = (corpus == c) & has
        p, t = pred[sel], truth[sel]
        recalls = {names[k]: float(np.mean(p[t == k] == k)) for k in np.unique(t)}
        assert got[f"test_wa_emotion.{c}"] == pytest.approx(float(np.mean(p == t)))
        assert got[f"test_ua_emotion.{c}"] == pytest.approx(float(np.mean(list(recalls.values()))))
        for name, recall in recalls.items():
            assert got[f"test_acc_emotion_{name}.{c}"] == pytest.approx(recall)
    both = (got["test_ua_emotion.iemocap"] + got["test_ua_emotion.csv"]) / 2
    assert got["test_ua_emotion.corpus_mean"] == pytest.approx(both)
    assert got["test_wa_emotion"] == pytest.approx(float(np.mean(pred[has] == truth[has])))  # pooled (Table 3)

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


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny LSTMs: threads only add contention
    yield
    torch.set_num_threads(n)


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

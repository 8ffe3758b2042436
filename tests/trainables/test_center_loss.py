"""The center_loss family: centre loss and update by hand, reconstruction range, sizes, variants, validation and
learning on a synthetic problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.base import DataSpec
from trainables.center_loss import (
    VARIANTS,
    CenterLossConfig,
    CenterLossModel,
    center_loss,
    parameter_count,
    reconstruction_target,
    update_centers,
)

B, T, NF, C = 8, 24, 16, 4
SPEC = DataSpec(input_shape=(T, NF), targets=("emotion",), n_classes={"emotion": C})
TINY = {"frames": T, "filters": 4, "hidden": 8, "decoder_hidden": (16,)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/trainables/conftest.py


def make_batch(n: int = B, seed: int = 0, low: float = 0.0, high: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": low + (high - low) * torch.rand(n, T, NF, generator=g),
            "emotion": torch.arange(n) % C, "emotion_mask": torch.ones(n, dtype=torch.bool),
            "utt_index": torch.arange(n)}


def build(variant: str = "s_a_c", spec: DataSpec = SPEC, **kw) -> CenterLossModel:
    torch.manual_seed(0)
    return CenterLossModel(CenterLossConfig(variant=variant, **{**TINY, **kw}), spec)


def conv_params(model: CenterLossModel) -> list[torch.nn.Parameter]:
    return list(model.trunk.parameters())


# ---- centre loss and update, by hand ---------------------------------------------------------------------------

def test_center_loss_by_hand():
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    centers = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # ||(0, 2)||^2 = 4, ||(2, -1)||^2 = 5, ||(-1, 0)||^2 = 1: (4 + 5 + 1) / (2 * 3)
    assert float(center_loss(h, labels, centers)) == pytest.approx(10 / 6)
    empty = center_loss(torch.zeros(0, 2, requires_grad=True), torch.zeros(0, dtype=torch.long), centers)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_update_centers_by_hand():
    centers = torch.tensor([[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    update_centers(centers, h, labels, alpha=0.5)
    # class 0: n = 2, sum(c - h) = (0, -2) + (1, 0) = (1, -2), delta = (1, -2) / 3, c = (1, 0) - 0.5 * delta
    # class 1: n = 1, sum(c - h) = (-2, 1), delta = (-1, 0.5), c = (1, 1) - 0.5 * delta = (1.5, 0.75)
    # class 2: absent, unchanged
    expected = torch.tensor([[1 - 0.5 / 3, 1 / 3], [1.5, 0.75], [5.0, 5.0]])
    assert torch.allclose(centers, expected)


# ---- reconstruction --------------------------------------------------------------------------------------------

def test_reconstruction_target_range_and_decoder_output():
    batch = make_batch(low=-0.5, high=1.5)  # validation rows outside the training fold's range
    target = reconstruction_target(batch["x"])
    assert target.min() >= 0 and target.max() <= 1 and (batch["x"] < 0).any() and (batch["x"] > 1).any()
    model = build("s_a").eval()
    with torch.no_grad():
        recon = model.decoder(model._features(batch["x"]))
    assert recon.shape == (B, T, NF) and recon.min() > 0 and recon.max() < 1
    mse = model.predict(batch)["mse_reconstruction"]
    assert torch.allclose(mse, (recon - target).pow(2).mean(dim=(1, 2)))


class Exact(torch.nn.Module):
    """A stand-in decoder that outputs a fixed reconstruction."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out


def test_reconstruction_loss_is_zero_only_for_the_clamped_target():
    batch = make_batch(low=-0.5, high=1.5)
    model = build("s_a").train()
    loss_net = model.loss(batch)[1]["loss_recon"]
    model.decoder = Exact(reconstruction_target(batch["x"]))  # a sigmoid can reach the clamped target
    assert model.loss(batch)[1]["loss_recon"] == 0.0 < loss_net
    assert float(model.predict(batch)["mse_reconstruction"].max()) == 0.0
    model.decoder = Exact(batch["x"])  # the raw x would be scored against its clamped self
    assert model.loss(batch)[1]["loss_recon"] > 0.0


def test_unlabelled_rows_feed_only_reconstruction():
    model = build("s_a_c").train()
    batch = make_batch()
    batch["emotion_mask"][:] = False
    loss, logs = model.loss(batch)
    assert torch.isfinite(loss) and logs["loss_softmax"] == 0 and logs["loss_center"] == 0 and logs["loss_recon"] > 0
    loss.backward()


# ---- sizes -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bins", [40, 128])
def test_paper_size_parameter_count(bins):
    spec = DataSpec(input_shape=(188, bins), targets=("emotion",), n_classes={"emotion": 4})
    model = CenterLossModel(CenterLossConfig(variant="s_c"), spec)
    n = parameter_count(model)
    print(f"S+C parameters, input (188, {bins}): {n:,} (paper: 0.26 M)")
    assert 130_000 <= n <= 520_000
    assert model.trunk.out_features == 4 * 200 * 4  # 200 x 4 features per path
    assert model.centers.shape == (4, 64) and "centers" in model.state_dict()
    assert all(p is not model.centers for p in model.parameters())


def test_halve_pooling_keeps_more_features():
    half = build("s", pooling="half_window")
    halve = build("s", pooling="halve")
    assert halve.trunk.out_features > half.trunk.out_features == 4 * 4 * TINY["filters"]
    assert halve.predict(make_batch())["emotion"].shape == (B, C)


# ---- variants --------------------------------------------------------------------------------------------------

ON = {"s": {"softmax"}, "s_a": {"softmax", "recon"}, "s_c": {"softmax", "center"},
      "s_a_c": {"softmax", "center", "recon"}, "a": {"recon"}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_loss_terms_centres_and_outputs(variant):
    model = build(variant).train()
    logs = model.training_step(make_batch(), model.configure_optimizers())
    on = {k.removeprefix("loss_") for k in ("loss_softmax", "loss_center", "loss_recon") if logs[k] > 0}
    assert on == ON[variant]
    assert np.isfinite(logs["loss"]) and ("loss_probe" in logs) == (variant == "a")
    assert bool(model.centers.abs().sum() > 0) == ("c" in variant.split("_"))
    model.eval()
    out = model.predict(make_batch(seed=1))
    assert out["emotion"].shape == (B, C) and out["embedding"].shape == (B, TINY["hidden"])
    assert ("mse_reconstruction" in out) == ("a" in variant.split("_"))
    probs = model(make_batch()["x"])
    assert probs.shape == (B, C) and torch.allclose(probs.sum(-1), torch.ones(B))
    metrics = model.extra_metrics({k: v.detach().numpy() for k, v in out.items()}, {}, None)
    assert set(metrics) == ({"mse_reconstruction"} if "mse_reconstruction" in out else set())


def test_probe_of_variant_a_sends_no_gradient_into_the_trunk():
    model = build("a", lambda2=0.0).train()  # the loss is then the probe's cross-entropy alone
    loss, logs = model.loss(make_batch())
    loss.backward()
    assert logs["loss_probe"] > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in conv_params(model))
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.classifier.parameters())
    s = build("s").train()
    s.loss(make_batch())[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in conv_params(s))


def test_weights_follow_eq4():
    model = build("s_a_c", lambda1=0.3, lambda2=2.0, dropout=0.0).train()
    loss, logs = model.loss(make_batch())
    expected = logs["loss_softmax"] + 0.3 * logs["loss_center"] + 2.0 * logs["loss_recon"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_optimizer_is_adadelta_without_the_centres():
    model = build()
    opt = model.configure_optimizers()["main"]
    assert isinstance(opt, torch.optim.Adadelta)
    assert opt.param_groups[0]["lr"] == 1.0 and opt.param_groups[0]["rho"] == 0.95
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == parameter_count(model)


def test_adam_option_for_small_corpora():
    opt = build(optimizer="adam", lr=1e-3).configure_optimizers()["main"]
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3
    assert "rho" in CenterLossConfig(optimizer="adam").unused_fields()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        CenterLossConfig(optimizer="sgd")


# ---- config ----------------------------------------------------------------------------------------------------

def test_feed_is_six_seconds_from_the_start_min_max():
    feed = CenterLossConfig().feed()
    assert feed.examples.kind == "fixed" and feed.examples.frames == 188 and feed.examples.anchor == "start"
    assert feed.normalization == "minmax"


def test_yaml_lists_become_tuples_and_unused_fields():
    cfg = CenterLossConfig(kernels=[[4, 6], [6, 8]], decoder_hidden=[128, 64])
    assert cfg.kernels == ((4, 6), (6, 8)) and cfg.decoder_hidden == (128, 64)
    hash(cfg)
    assert CenterLossConfig(variant="s").unused_fields() == {"lambda1", "center_alpha", "lambda2", "decoder_hidden"}
    assert CenterLossConfig(variant="s_c").unused_fields() == {"lambda2", "decoder_hidden"}
    assert CenterLossConfig(variant="s_a").unused_fields() == {"lambda1", "center_alpha"}
    assert CenterLossConfig(variant="s_a_c").unused_fields() == frozenset()


@pytest.mark.parametrize("kw, match", [
    ({"variant": "sac"}, "variant must be one of"),
    ({"lambda1": -1.0}, "lambda1 >= 0"),
    ({"lambda2": -0.1}, "lambda2 >= 0"),
    ({"dropout": 1.0}, "0 <= dropout < 1"),
    ({"lr": 0.0}, "lr > 0"),
    ({"rho": 1.0}, "0 < rho < 1"),
    ({"center_alpha": 0.0}, "0 < center_alpha <= 1"),
    ({"filters": 0}, "filters"),
    ({"kernels": [[4, 6, 2]]}, "kernels"),
    ({"kernels": [4, 6]}, "kernels"),
    ({"decoder_hidden": [0]}, "decoder_hidden"),
    ({"pooling": "avg"}, "pooling must be one of"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        CenterLossConfig(**kw)


def test_construction_errors():
    with pytest.raises(ValueError, match=r"kernel \(10, 12\).*does not fit"):
        CenterLossModel(CenterLossConfig(frames=24), DataSpec(input_shape=(24, 8), targets=("emotion",),
                                                               n_classes={"emotion": 4}))
    with pytest.raises(ValueError, match="mfcc or logmel128"):
        CenterLossModel(CenterLossConfig(), DataSpec(input_shape=(88,), targets=("emotion",),
                                                     n_classes={"emotion": 4}))
    with pytest.raises(ValueError, match="class target 'emotion'"):
        CenterLossModel(CenterLossConfig(**TINY), DataSpec(input_shape=(T, NF), targets=("arousal",)))
    with pytest.raises(ValueError, match="class target 'emotion'"):
        CenterLossModel(CenterLossConfig(**TINY), DataSpec(input_shape=(T, NF), targets=("emotion",),
                                                           n_classes={"emotion": 4}, kinds={"emotion": "soft"}))


# ---- learning --------------------------------------------------------------------------------------------------

def test_learns_frequency_bands():
    """Each class lights its own band of 4 frequency bins; a small S+A+C net separates them in a few steps."""
    g = torch.Generator().manual_seed(0)
    n = 64
    y = torch.arange(n) % C
    x = 0.3 * torch.rand(n, T, NF, generator=g)
    for c in range(C):
        x[y == c, :, 4 * c:4 * c + 4] += 0.6
    batch = {"x": x, "emotion": y, "emotion_mask": torch.ones(n, dtype=torch.bool)}
    torch.manual_seed(0)
    model = CenterLossModel(CenterLossConfig(variant="s_a_c", filters=8, hidden=16, frames=T, decoder_hidden=(32,)),
                            SPEC)
    opts = model.configure_optimizers()
    model.train()
    for _ in range(30):
        model.training_step(batch, opts)
    model.eval()
    with torch.no_grad():
        acc = float((model.predict(batch)["emotion"].argmax(-1) == y).float().mean())
    assert acc > 0.7, acc


@pytest.mark.parametrize("frames", [188, 20])
def test_real_utterances_are_padded_or_cut_to_the_fixed_length_in_unit_range(iemocap_cl_shards, frames):
    """Through the real data path: min-max scaled to [0, 1] with the training rows' statistics, the first ``frames``
    frames; a shorter utterance is padded with 0 (the training minimum) after its last frame."""
    from data_io import shards
    from data_io.examples import evaluation_index, gather
    from data_io.store import fit_normalizer, load_store

    store = load_store([shards.open_shards(iemocap_cl_shards / "iemocap" / "mfcc")])
    feed = CenterLossConfig(frames=frames).feed()
    rows = np.arange(store.meta.num_rows)
    normalizer = fit_normalizer(store, rows, feed.normalization)
    x = gather(feed.examples, store, evaluation_index(feed.examples, store, rows), normalizer)
    assert x.shape == (len(rows), frames, 40) and x.min() >= 0.0 and x.max() <= 1.0 + 1e-6
    for k in (0, 1, 2):
        n = int(store.shapes[k, 0])
        raw = (store.matrix(k)[:frames].astype(np.float32) - normalizer.shift) / normalizer.scale
        np.testing.assert_allclose(x[k, :min(n, frames)], raw, rtol=1e-5, atol=1e-5)
        if n < frames:  # 6 s: every synthetic utterance (1.5-4 s) is padded
            assert (x[k, n:] == 0).all()
        else:  # 20 frames: every one is cut
            assert n > frames


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["s", "s_a_c"])
def test_learns_emotions_of_the_synthetic_corpus(iemocap_cl_shards, variant):
    """The shared loop on the synthetic IEMOCAP corpus (improvised, 4 classes, loso, the demo's size): the model
    picked on validation scores clearly above chance (UA 0.25) on the held-out speakers' test rows."""
    from cluster.sweep import filter_rows
    from data_io import folds as folds_mod
    from data_io import shards
    from data_io.store import load_store
    from trainables.data import SearchData
    from trainables.loop import evaluate_state, run_trial

    ss = shards.open_shards(iemocap_cl_shards / "iemocap" / "logmel128")
    meta = filter_rows(ss.metadata(), {"utt_id": "_impro", "emotion": "^(neutral|happy|sad|angry)$"}, {})
    folds = folds_mod.build_folds("loso", meta)
    store = load_store([ss])
    data = SearchData(store=store.subset(sorted({u for f in folds for u in (*f.train_ids, *f.val_ids)})),
                      folds=[f.for_search() for f in folds], targets=("emotion",),
                      classes={"emotion": ["neutral", "happy", "sad", "angry"]})
    config = {"family": "center_loss", "variant": variant, "filters": 8, "hidden": 32, "decoder_hidden": [64],
              "frames": 94, "optimizer": "adam", "lr": 1e-3, "lambda1": 0.1, "seed": 0, "max_epochs": 12,
              "patience": 12, "batch_size": 8, "metric": "val_ua_emotion", "mode": "max"}
    best = {}

    def report(metrics, state):
        if state is not None:
            best["state"] = state

    run_trial(config, data, report)
    test = evaluate_state(best["state"], store, [list(f.test.open("learning test")) for f in folds])
    assert test["test_ua_emotion"] > 0.35, test  # chance: 0.25

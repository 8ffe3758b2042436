"""The shared loop on the synthetic MSP-Podcast corpus: learning, reproducibility, resume, early stopping."""

from __future__ import annotations

import pytest
import torch

from trainables.loop import evaluate_state, run_trial

TARGETS = ("arousal", "valence", "dominance")


@pytest.fixture(scope="module")
def search_data(msp_search):
    return msp_search


def _run(data, resume_state=None, **overrides):
    config = {"family": "ladder", "variant": "ladder_mtl", "hidden": (128, 128), "lr": 2e-3, "noise_var": 0.3,
              "lambdas": 1.0, "dropout": 0.1, "alpha": 0.6, "beta": 0.2, "seed": 0, "max_epochs": 20,
              "patience": 20, "batch_size": 32, "metric": "val_ccc_arousal", "mode": "max", **overrides}
    reports = []
    torch.set_num_threads(1)
    run_trial(config, data, lambda m, s: reports.append((m, s)), resume_state=resume_state)
    return reports


def test_ladder_mtl_learns_arousal_better_than_valence(search_data):
    data, store, fold = search_data
    reports = _run(data)
    best = max(m["val_ccc_arousal"] for m, _ in reports)
    at_best = max((m for m, _ in reports), key=lambda m: m["val_ccc_arousal"])
    print(f"ladder_mtl val CCC: arousal {best:.3f}, valence {at_best['val_ccc_valence']:.3f}, "
          f"dominance {at_best['val_ccc_dominance']:.3f}")
    # Measured 2026-11-21, seeds 0/1/2: arousal 0.733/0.726/0.707, valence at that epoch 0.320/0.206/0.183
    # (dnn_mtl: arousal 0.696/0.761/0.723). The thresholds sit 0.1 below the worst seed.
    assert best > 0.6
    assert best > at_best["val_ccc_valence"] + 0.2
    # The best state scores test rows only through the driver's path (evaluate_state) and stays in range.
    state = [s for _, s in reports if s is not None][-1]
    test_ids = list(fold.test.open("test_loop: scoring check"))
    test = evaluate_state(state, store.subset(test_ids), [test_ids], "test")
    assert test["test_ccc_arousal"] > 0.5


def test_same_config_and_seed_give_the_same_metrics(search_data):
    data, _, _ = search_data
    first = [m for m, _ in _run(data, max_epochs=3)]
    second = [m for m, _ in _run(data, max_epochs=3)]
    other_seed = [m for m, _ in _run(data, max_epochs=3, seed=1)]
    keys = ("val_ccc_arousal", "val_ccc_valence", "train_loss")
    assert [[m[k] for k in keys] for m in first] == [[m[k] for k in keys] for m in second]
    assert [m["val_ccc_arousal"] for m in first] != [m["val_ccc_arousal"] for m in other_seed]


def test_resume_from_a_checkpoint_continues_exactly(search_data):
    data, _, _ = search_data
    full = _run(data, max_epochs=6, patience=6)
    states = [(m["epoch"], s) for m, s in full if s is not None and m["epoch"] <= 4]
    epoch, state = states[-1]
    resumed = _run(data, resume_state=state, max_epochs=6, patience=6)
    assert [m["epoch"] for m, _ in resumed] == list(range(epoch + 1, 7))
    for (a, _), (b, _) in zip(full[epoch:], resumed, strict=True):
        assert a["val_ccc_arousal"] == pytest.approx(b["val_ccc_arousal"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)


def test_early_stopping_and_missing_metric(search_data):
    data, _, _ = search_data
    reports = _run(data, lr=1e-7, max_epochs=20, patience=2)  # too small a step to improve for long
    assert len(reports) < 20
    with pytest.raises(ValueError, match="val_ccc_valence"):
        _run(data, variant="ladder_stl", target="arousal", metric="val_ccc_valence", max_epochs=1)

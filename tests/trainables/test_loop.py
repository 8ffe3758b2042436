"""The shared loop on the synthetic MSP-Podcast corpus: learning, reproducibility, resume, early stopping."""

from __future__ import annotations

import pytest
import torch

from trainables import loop as loop_mod
from trainables.loop import EarlyStopping, HalveOnPlateau, evaluate_state, run_trial

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


# ---- early stopping rules on a hand-made validation curve ---------------------------------------------------------

# Best 0.5 at epoch 2; epoch 4 ties it; then four lower epochs, a fifth at 0.40, and a better value too late.
CURVE = [0.30, 0.50, 0.40, 0.50, 0.45, 0.45, 0.40, 0.45, 0.40, 0.45, 0.60]


def _stopped_at(rule: str, curve: list[float], patience: int = 5, mode: str = "max") -> tuple[int, EarlyStopping]:
    stopping = EarlyStopping(rule, patience, mode)
    for epoch, value in enumerate(curve, start=1):
        stopping.update(value, epoch)
        if stopping.stop:
            return epoch, stopping
    return len(curve), stopping


def test_patience_counts_a_tie_as_no_improvement():
    epoch, stopping = _stopped_at("patience", CURVE)
    assert epoch == 7 and stopping.best == 0.5 and stopping.best_epoch == 2  # epochs 3-7 not better


def test_consecutive_drops_is_the_papers_rule():
    # The tie at epoch 4 is not lower than the local maximum: the run of lower epochs starts again at epoch 5 and
    # reaches 5 at epoch 9. The best epoch (the weights restored) stays the first to reach 0.5.
    epoch, stopping = _stopped_at("consecutive_drops", CURVE)
    assert epoch == 9 and stopping.best == 0.5 and stopping.best_epoch == 2
    # A higher value within the 5 is the new local maximum and restarts the search from there.
    epoch, stopping = _stopped_at("consecutive_drops", [0.3, 0.5, 0.4, 0.4, 0.55, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9])
    assert epoch == 10 and stopping.best_epoch == 5
    # Minimised objectives mirror it.
    epoch, stopping = _stopped_at("consecutive_drops", [-v for v in CURVE], mode="min")
    assert epoch == 9 and stopping.best_epoch == 2


def test_the_loop_stops_by_the_rule_and_checkpoints_the_best_epoch(search_data, monkeypatch):
    """run_trial with the validation scores replaced by CURVE: the rule decides how many epochs run, and the last
    checkpoint the trial reports is the best epoch's (the one the driver restores and scores)."""
    data, _, _ = search_data
    for rule, epochs in (("patience", 7), ("consecutive_drops", 9)):
        calls = iter(CURVE)
        monkeypatch.setattr(loop_mod, "evaluate", lambda *args, calls=calls, **kw: {"val_acc": next(calls)})
        reports = _run(data, hidden=(8, 8), max_epochs=len(CURVE), patience=5, early_stopping=rule,
                       metric="val_acc")
        assert [m["epoch"] for m, _ in reports] == list(range(1, epochs + 1))
        assert [m["epoch"] for m, s in reports if s is not None] == [1, 2]  # improvements only
        last_state = [s for _, s in reports if s is not None][-1]
        assert last_state["epoch"] + 1 == last_state["best_epoch"] == 2
        assert reports[-1][0]["best_epoch"] == 2 and reports[-1][0]["early_stopped"]


def test_unknown_early_stopping_rule_is_rejected(search_data):
    data, _, _ = search_data
    with pytest.raises(ValueError, match=r"early_stopping must be one of \['patience', 'consecutive_drops'\], got 'x'"):
        _run(data, early_stopping="x", max_epochs=1)


# ---- the learning-rate schedule: halve on a plateau, restore the best epoch ---------------------------------------

def test_halve_on_plateau_on_a_hand_made_curve():
    """The AAE paper's schedule: lr 1e-4 halved after 5 epochs without gain until it would fall below 1e-5, so it
    trains at 1e-4, 5e-5, 2.5e-5 and 1.25e-5 and stops at the fourth plateau."""
    curve = [0.5] + [0.4] * 10 + [0.6] + [0.5] * 10 + [0.7]
    stopping, schedule = EarlyStopping("patience", 5), HalveOnPlateau(0.5, 1e-5)
    events = []
    for epoch, value in enumerate(curve, start=1):
        stopping.update(value, epoch)
        if stopping.stop:
            if not schedule.at_plateau(stopping, 1e-4):
                events.append((epoch, "stop"))
                break
            events.append((epoch, schedule.scale))
            assert stopping.bad_epochs == 0 and not stopping.stop  # the count starts again from the best epoch
    assert events == [(6, 0.5), (11, 0.25), (17, 0.125), (22, "stop")]
    assert schedule.halvings == 3 and stopping.best == 0.6 and stopping.best_epoch == 12
    # A first rate already below min_lr stops at the first plateau, as plain early stopping would.
    assert not HalveOnPlateau(0.5, 1e-5).at_plateau(EarlyStopping("patience", 1), 1.5e-5)


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_loop_halves_the_rate_and_restores_the_best_epoch(search_data, monkeypatch):
    """run_trial with validation scores from a hand-made curve (patience 2, lr 1e-3, min_lr 2e-4): plateaus at
    epochs 4 and 8 go back to the best epoch's weights (2, then 6) at half the rate; the third would go below
    min_lr, so epoch 10 is the last."""
    data, _, _ = search_data
    curve = iter([0.3, 0.5, 0.4, 0.4, 0.45, 0.6, 0.5, 0.5, 0.5, 0.5, 0.9])
    started, evaluated = {}, {}
    train_epoch = loop_mod.FoldRun.train_epoch

    def recording_train_epoch(self, epoch, batch_size):
        lrs = {g["lr"] for o in self.optimizers.values() for g in o.param_groups}
        started[epoch + 1] = (lrs, _weights(self.model))
        return train_epoch(self, epoch, batch_size)

    def fake_evaluate(model, *args, **kw):
        evaluated[len(evaluated) + 1] = _weights(model)
        return {"val_acc": next(curve)}

    monkeypatch.setattr(loop_mod.FoldRun, "train_epoch", recording_train_epoch)
    monkeypatch.setattr(loop_mod, "evaluate", fake_evaluate)
    reports = _run(data, hidden=(8, 8), lr=1e-3, max_epochs=11, patience=2, lr_schedule="halve_on_plateau",
                   min_lr=2e-4, metric="val_acc")
    metrics = {m["epoch"]: m for m, _ in reports}
    assert list(metrics) == list(range(1, 11))
    assert [m["epoch"] for m, s in reports if s is not None] == [1, 2, 6]  # checkpoints: improvements only
    assert {e: started[e][0] for e in (1, 4, 5, 8, 9, 10)} == {1: {1e-3}, 4: {1e-3}, 5: {5e-4}, 8: {5e-4},
                                                                 9: {2.5e-4}, 10: {2.5e-4}}
    assert _same(started[5][1], evaluated[2]) and _same(started[9][1], evaluated[6])  # the best epochs' weights
    assert not _same(started[4][1], evaluated[2])  # without a plateau training just goes on
    assert [(metrics[e]["lr_scale"], metrics[e]["early_stopped"]) for e in (3, 4, 8, 10)] == [
        (1.0, False), (0.5, False), (0.25, False), (0.25, True)]
    assert metrics[10]["best_epoch"] == 6
    state = [s for _, s in reports if s is not None][-1]
    assert state["lr_scale"] == 0.5 and state["lr_halvings"] == 1  # the rate epoch 6 trained at


def test_the_default_schedule_is_none_and_bad_settings_are_rejected(search_data):
    data, _, _ = search_data
    reports = _run(data, hidden=(8, 8), max_epochs=1)
    assert "lr_scale" not in reports[0][0]
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \['none', 'halve_on_plateau'\], got 'step'"):
        _run(data, lr_schedule="step", max_epochs=1)
    with pytest.raises(ValueError, match="0 < lr_factor < 1 must hold, got 1.0"):
        _run(data, lr_factor=1.0, max_epochs=1)
    with pytest.raises(ValueError, match="min_lr > 0 must hold, got 0"):
        _run(data, min_lr=0, max_epochs=1)


def test_class_targets_whose_classes_differ_between_folds_are_not_stacked():
    from trainables.loop import classes_varying_between_folds

    def fold(speakers):
        return {"encoders": {"emotion": {"classes": ["neutral", "happy"]}, "speaker": {"classes": speakers},
                             "arousal": {"label_scales": {"iemocap": [1.0, 5.0]}}}}

    # speaker_kfold: each fold trains (and so classifies) other speakers; emotion's classes are the same everywhere.
    assert classes_varying_between_folds([fold(["a", "b"]), fold(["a", "c"])]) == {"speaker"}
    assert classes_varying_between_folds([fold(["a", "b"]), fold(["a", "b"])]) == set()

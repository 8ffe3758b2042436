"""The sweep's PNG plots: real in-memory Optuna studies with a conditional space, no Ray, no MLflow."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from cluster import plots

NAMES = {plots.HISTORY, plots.IMPORTANCES, plots.PARALLEL}


@pytest.fixture(autouse=True)
def no_figure_left_open():
    """Every call must close what it opened: pyplot holds no figure after any test."""
    import matplotlib.pyplot as plt

    yield
    assert plt.get_fignums() == []


def _image(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5_000  # an empty 700 x 450 canvas compresses to about 2 KB
    return mpimg.imread(io.BytesIO(png), format="png")


def _assert_figure(png: bytes) -> None:
    img = _image(png)
    assert img.shape[:2] == (450, 700)  # 7 x 4.5 in at 100 dpi
    assert img[..., :3].std() > 0.05  # something was drawn


def _space(trial: optuna.Trial) -> float:
    """A define-by-run space like the sweeps': ``variant`` decides which other parameters exist."""
    variant = trial.suggest_categorical("variant", ["dnn_stl", "dnn_mtl", "ladder_mtl"])
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    score = 0.5 - 0.1 * abs(math.log10(lr) + 3)
    if variant != "dnn_stl":
        score += 0.2 * trial.suggest_float("alpha", 0.0, 1.0)
        score -= 0.1 * trial.suggest_float("beta_share", 0.0, 1.0)
    if variant == "ladder_mtl":
        score -= 0.3 * trial.suggest_float("noise_var", 0.01, 1.0, log=True)
    return score


def _conditional_study(direction: str) -> optuna.Study:
    def objective(trial: optuna.Trial) -> float:
        score = _space(trial)
        if trial.number % 7 == 3:
            raise RuntimeError("diverged")  # -> FAIL, as a crashed Ray trial
        return float("nan") if trial.number == 5 else score  # NaN -> FAIL, as Optuna records it

    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's warnings about the NaN and the caught error
        study.optimize(objective, n_trials=24, catch=(RuntimeError,))
    failed = study.ask()
    _space(failed)
    study.tell(failed, state=TrialState.FAIL)
    _space(study.ask())  # still RUNNING, as an unfinished Ray trial
    return study


# ---- optuna_plots ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_conditional_study_gives_all_three_plots(direction):
    study = _conditional_study(direction)
    states = [t.state for t in study.trials]
    assert TrialState.FAIL in states and TrialState.RUNNING in states
    assert any("noise_var" not in t.params for t in study.trials)  # the space really is conditional

    pngs, skipped = plots.optuna_plots(study, target_name="val_ccc_arousal")
    assert skipped == {}
    assert set(pngs) == NAMES
    for png in pngs.values():
        _assert_figure(png)


def test_optuna_styles_do_not_leak_into_the_process():
    """Optuna's plots switch pyplot to the ggplot style; the caller's later figures must not inherit it."""
    import matplotlib.pyplot as plt

    before = dict(matplotlib.rcParams)
    mine = plt.figure()
    try:
        plots.optuna_plots(_conditional_study("maximize"))
        assert plt.get_fignums() == [mine.number]  # the caller's figure survives, Optuna's are closed
    finally:
        plt.close(mine)
    after = dict(matplotlib.rcParams)
    assert {k: v for k, v in after.items() if before.get(k) != v and k != "backend"} == {}
    # Order-independent too: had an earlier call leaked ggplot, `before` would already hold its grey axes.
    assert matplotlib.rcParams["axes.facecolor"] == matplotlib.rcParamsDefault["axes.facecolor"]


@pytest.mark.parametrize("n_complete", [0, 1])
def test_fewer_than_two_complete_trials_give_reasons(n_complete):
    study = optuna.create_study(direction="maximize")
    for i in range(3):
        trial = study.ask()
        _space(trial)
        if i < n_complete:
            study.tell(trial, 0.5)
        else:
            study.tell(trial, state=TrialState.FAIL)
    _space(study.ask())

    pngs, skipped = plots.optuna_plots(study)
    assert pngs == {}
    assert set(skipped) == NAMES
    assert all(f"{n_complete} complete trial(s)" in reason and "at least 2" in reason for reason in skipped.values())


def test_study_without_parameters_draws_only_the_history():
    study = optuna.create_study()
    for v in (3.0, 1.0, 2.0):
        study.tell(study.ask(), v)
    pngs, skipped = plots.optuna_plots(study)
    assert set(pngs) == {plots.HISTORY}
    assert set(skipped) == {plots.IMPORTANCES, plots.PARALLEL}
    assert all("no parameters" in reason for reason in skipped.values())


@pytest.mark.parametrize("values", [[0.1, 0.4], [0.3] * 6], ids=["two-trials", "constant-objective"])
def test_a_single_categorical_parameter_is_enough(values):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for v in values:
        trial = study.ask()
        trial.suggest_categorical("variant", ["dnn_mtl", "ladder_mtl"])
        study.tell(trial, v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PED-ANOVA: too few trials to tell the parameters apart
        pngs, skipped = plots.optuna_plots(study)
    assert skipped == {} and set(pngs) == NAMES
    for png in pngs.values():
        _assert_figure(png)


def test_parameters_that_no_two_trials_share():
    """Each complete trial has its own parameter: still plotted (a ``None`` tick where a parameter is absent)."""
    study = optuna.create_study(direction="maximize")
    for i in range(4):
        trial = study.ask()
        trial.suggest_float("a" if i % 2 else "b", 0.0, 1.0)
        study.tell(trial, float(i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pngs, skipped = plots.optuna_plots(study)
    assert skipped == {} and set(pngs) == NAMES


def test_multi_objective_study_skips_only_the_history():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(5):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, [x, x * x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pngs, skipped = plots.optuna_plots(study)
    assert set(pngs) == {plots.IMPORTANCES, plots.PARALLEL}
    assert set(skipped) == {plots.HISTORY} and "2 objectives" in skipped[plots.HISTORY]


def test_an_explicit_non_agg_backend_is_respected():
    """A process whose owner chose a backend (here svg, which has no Agg renderer) keeps it and still gets PNGs."""
    script = (
        "import json, matplotlib, optuna\n"
        "from cluster import plots\n"
        "s = optuna.create_study()\n"
        "for i in range(3):\n"
        "    t = s.ask(); t.suggest_float('x', 0, 1); t.suggest_categorical('v', ['a', 'b']); s.tell(t, float(i))\n"
        "pngs, skipped = plots.optuna_plots(s)\n"
        "print(json.dumps([matplotlib.get_backend(), sorted(pngs), skipped]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "MPLBACKEND": "svg"}, capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == ["svg", sorted(NAMES), {}]


# ---- curves_plot -------------------------------------------------------------------------------------------

def _curves() -> dict[str, dict[str, list[float]]]:
    epochs = list(range(1, 11))
    return {f"{variant} seed {seed}": {"epoch": epochs,
                                       "val_ccc_arousal": [0.5 * (1 - math.exp(-e / (2 + seed))) for e in epochs]}
            for variant in ("dnn_mtl", "ladder_mtl") for seed in (0, 1)}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_curves_plot(mode):
    _assert_figure(plots.curves_plot(_curves(), "val_ccc_arousal", mode=mode, title="Validation CCC (arousal)"))


def test_curves_plot_single_epoch():
    _assert_figure(plots.curves_plot({"dnn_stl seed 0": {"epoch": [1], "val_loss": [0.8]}}, "val_loss", mode="min"))


@pytest.mark.parametrize(("curves", "kw", "match"), [
    ({}, {}, "curves is empty"),
    ({"a": {"epoch": [], "val_ccc_arousal": []}}, {}, "'a' is empty"),
    ({"a": {"epoch": [1, 2], "val_ccc_arousal": [0.1]}}, {}, "same length"),
    ({"a": {"epoch": [1, 2], "val_ua": [0.1, 0.2]}}, {}, r"lacks \['val_ccc_arousal'\]"),
    ({"a": {"epoch": [1, 2], "val_ccc_arousal": [0.1, float("nan")]}}, {}, "non-finite"),
    ({"a": {"epoch": [1], "val_ccc_arousal": [0.1]}}, {"mode": "best"}, "mode must be"),
])
def test_curves_plot_rejects_bad_input(curves, kw, match):
    with pytest.raises(ValueError, match=match):
        plots.curves_plot(curves, "val_ccc_arousal", **kw)


# ---- scatter_plot ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [None, (1.0, 7.0)])
def test_scatter_plot(scale):
    rng = np.random.default_rng(0)
    true = rng.uniform(1.0, 7.0, 300)
    pred = 0.8 * true + 0.6 + rng.normal(0.0, 0.7, 300)  # some fall outside (1, 7)
    _assert_figure(plots.scatter_plot(pred, true, "arousal", scale=scale, title="MSP-Podcast test"))


def test_scatter_plot_constant_prediction():
    """A collapsed model (constant output) is plotted, with CCC = r = 0 as the metrics define it."""
    _assert_figure(plots.scatter_plot(np.full(50, 4.0), np.linspace(1.0, 7.0, 50), "valence", scale=(1, 7)))


@pytest.mark.parametrize(("pred", "true", "kw", "match"), [
    ([], [], {}, "empty"),
    ([1.0, 2.0], [1.0], {}, "same length"),
    ([1.0, float("inf")], [1.0, 2.0], {}, "non-finite"),
    ([1.0, 2.0], [1.0, 2.0], {"scale": (7, 1)}, "low < high"),
])
def test_scatter_plot_rejects_bad_input(pred, true, kw, match):
    with pytest.raises(ValueError, match=match):
        plots.scatter_plot(np.asarray(pred), np.asarray(true), "arousal", **kw)


# ---- confusion_plot ----------------------------------------------------------------------------------------

CLASSES = ["neutral", "happy", "sad", "angry"]


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_plot(normalize):
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, true, rng.integers(0, 4, 200))
    _assert_figure(plots.confusion_plot(pred, true, CLASSES, normalize=normalize, title="IEMOCAP session 5"))


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_plot_class_never_predicted_and_never_true(normalize):
    true = np.array([0, 0, 1, 1, 2, 2])  # "angry" never true
    pred = np.array([0, 1, 1, 1, 0, 1])  # "sad" and "angry" never predicted
    _assert_figure(plots.confusion_plot(pred, true, CLASSES, normalize=normalize))


@pytest.mark.parametrize(("pred", "true", "names", "match"), [
    ([], [], CLASSES, "empty"),
    ([0, 1], [0], CLASSES, "same length"),
    ([0, 4], [0, 1], CLASSES, r"lie in \[0, 4\)"),
    ([0.0, 1.5], [0, 1], CLASSES, "integer class indices"),
    ([0, 1], [0, 1], [], "class_names is empty"),
])
def test_confusion_plot_rejects_bad_input(pred, true, names, match):
    with pytest.raises(ValueError, match=match):
        plots.confusion_plot(np.asarray(pred), np.asarray(true), names)

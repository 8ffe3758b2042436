"""The ladder family's define-by-run space (searchspace/ladder.py), tested with FixedTrial and real studies."""

from __future__ import annotations

import dataclasses
import functools
import pickle
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import FixedTrial

from searchspace import ladder
from searchspace.ladder import (
    LAMBDA_GRID,
    PAPER_FIXED,
    RANGE_DEFAULTS,
    SEARCH_ONLY_PARAMS,
    VARIANTS,
    grid_search_space,
    space,
    warm_start_params,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Every param a trial could suggest, so one FixedTrial serves every variant (unused ones are ignored).
ALL_PARAMS = {"lr": 5e-5, "dropout": 0.1, "noise_var": 0.3, "lambdas": 1.0, "alpha": 0.4, "beta_share": 0.5,
              **{f"lambda_{i}": 1.0 for i in range(4)}}
EXPECTED = {
    "dnn_stl": {"variant", "lr", "dropout"},
    "dnn_mtl": {"variant", "lr", "dropout", "alpha", "beta"},
    "dae": {"variant", "lr", "dropout", "noise_var"},
    "ladder_stl": {"variant", "lr", "dropout", "noise_var", "lambdas"},
    "ladder_mtl": {"variant", "lr", "dropout", "noise_var", "lambdas", "alpha", "beta"},
}


def _config(trial, **kwargs) -> dict:
    """What Ray's OptunaSearch hands the trainable: the captured suggestions, then the returned dict."""
    returned = space(trial, **kwargs)
    return {**trial.params, **returned}


def _random_study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def test_expected_table_covers_every_variant():
    assert set(EXPECTED) == set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_yields_its_config_fields(variant):
    trial = FixedTrial({**ALL_PARAMS, "variant": variant})
    config = _config(trial, variants=VARIANTS)
    fields = set(config) - set(SEARCH_ONLY_PARAMS)
    assert fields == EXPECTED[variant]
    assert config["variant"] == variant
    returned = space(FixedTrial({**ALL_PARAMS, "variant": variant}), variants=VARIANTS)
    assert set(returned) == EXPECTED[variant]  # the return alone is a complete config (no search-only params)
    if variant.endswith("_mtl"):
        assert config["beta"] == pytest.approx(0.5 * (1 - 0.4))


def test_space_builds_a_valid_ladder_config_for_every_variant():
    model = pytest.importorskip("trainables.ladder")  # needs torch; searchspace itself never imports it
    assert tuple(model.VARIANTS) == VARIANTS
    fields = {f.name for f in dataclasses.fields(model.LadderConfig)}
    assert not fields & set(SEARCH_ONLY_PARAMS)
    study = _random_study(1)
    for variant in VARIANTS:
        for per_layer in (False, True):
            config = space(study.ask(), variants=(variant,), per_layer_lambda=per_layer, fixed={"target": "valence"})
            assert set(config) <= fields
            model.LadderConfig(**config)  # e.g. alpha + beta <= 1 and len(lambdas) == len(hidden) + 1 hold


def test_single_variant_is_a_constant_several_are_suggested():
    one = FixedTrial(ALL_PARAMS)
    assert _config(one, variants=("ladder_stl",))["variant"] == "ladder_stl"
    assert "variant" not in one.params
    several = FixedTrial({**ALL_PARAMS, "variant": "dae"})
    assert _config(several, variants=("dae", "ladder_mtl"))["variant"] == "dae"
    assert several.params["variant"] == "dae"


def test_alpha_plus_beta_at_most_one_without_rejection():
    study = _random_study(0)
    sums, dists = [], set()
    for _ in range(200):
        trial = study.ask()
        config = space(trial)
        assert 0 <= config["alpha"] <= 1 and 0 <= config["beta"] <= 1
        sums.append(config["alpha"] + config["beta"])
        dists.add((repr(trial.distributions["alpha"]), repr(trial.distributions["beta_share"])))
        study.tell(trial, 0.0)
    print(f"\nmax alpha + beta over 200 random trials: {max(sums):.6f}")
    assert max(sums) <= 1.0
    assert len(dists) == 1  # static distributions: what multivariate TPE and CMA-ES need (notes 1.1)


def test_per_layer_lambdas():
    trial = FixedTrial({**ALL_PARAMS, "lambda_0": 0.1, "lambda_1": 10.0, "lambda_2": 100.0})
    config = _config(trial, per_layer_lambda=True)
    assert config["lambdas"] == (0.1, 10.0, 100.0)
    assert {"lambda_0", "lambda_1", "lambda_2"} <= set(trial.params) and "lambdas" not in trial.params

    deep = space(FixedTrial(ALL_PARAMS), per_layer_lambda=True, fixed={"hidden": [64, 64, 64]})
    assert len(deep["lambdas"]) == 4  # input layer + 3 hidden layers
    assert len(space(FixedTrial(ALL_PARAMS), per_layer_lambda=True, n_layers=2)["lambdas"]) == 2
    with pytest.raises(ValueError, match="n_layers"):
        space(FixedTrial(ALL_PARAMS), per_layer_lambda=True, n_layers=0)


def test_lambdas_are_not_suggested_for_non_ladders():
    trial = FixedTrial({**ALL_PARAMS, "variant": "dnn_mtl"})
    assert "lambdas" not in _config(trial, variants=("dnn_mtl", "ladder_mtl"), per_layer_lambda=True)
    assert not any(k.startswith("lambda") for k in trial.params)


def test_ranges_and_grids_override_the_defaults():
    study = _random_study(2)
    for _ in range(30):
        trial = study.ask()
        config = space(trial, variants=("ladder_mtl", "dae"), ranges={"lr": [1e-4, 1e-3], "alpha": (0.2, 0.3)},
                       grids={"lambdas": [1, 10], "variant": ["ladder_stl", "ladder_mtl"]})
        assert 1e-4 <= config["lr"] <= 1e-3
        assert config["lambdas"] in (1.0, 10.0)
        assert config["variant"] in ("ladder_stl", "ladder_mtl")  # grids.variant replaces variants
        if "alpha" in config:
            assert 0.2 <= config["alpha"] <= 0.3


@pytest.mark.parametrize("kwargs, message", [
    ({"ranges": {"lr": (0.0, 1e-2)}}, r"lr range must satisfy 0 < low < high, got \(0.0, 0.01\)"),
    ({"ranges": {"lr": (1e-2, 1e-3)}}, "lr range must satisfy 0 < low < high"),
    ({"ranges": {"alpha": (0.5, 0.5)}}, r"alpha range must satisfy 0 <= low < high <= 1"),
    ({"ranges": {"dropout": (0.1, 1.0)}}, r"dropout range must satisfy 0 <= low < high < 1"),
    ({"ranges": {"noise_var": (-1, 1)}}, "noise_var range"),
    ({"ranges": {"lr": [1e-3]}}, r"\[low, high\] with two numbers"),
    ({"ranges": {"momentum": (0, 1)}}, r"unknown range knob\(s\) \['momentum'\]; valid: \['alpha', 'beta_share'"),
    ({"grids": {"lr": [1e-3]}}, r"unknown grid knob\(s\) \['lr'\]; valid: \['lambdas', 'variant'\]"),
    ({"grids": {"lambdas": []}}, "lambdas grid must be a non-empty list"),
    ({"grids": {"lambdas": [-1]}}, "lambdas grid"),
    ({"variants": ("ladder_mtl", "cnn")}, "variants must be distinct names from"),
    ({"variants": ()}, "non-empty list"),
    ({"variants": "ladder_mtl"}, "non-empty list"),
    ({"fixed": {"lr": 1e-3}, "ranges": {"lr": (1e-4, 1e-2)}}, "both fixed and searched"),
    ({"fixed": {"beta": 0.9}, "ranges": {"alpha": (0.2, 0.5)}}, "must be < 1 - beta"),
    ({"fixed": {"variant": "cnn"}}, "fixed variant must be one of"),
])
def test_bad_options_fail_with_what_must_hold(kwargs, message):
    with pytest.raises(ValueError, match=message):
        space(FixedTrial(ALL_PARAMS), **kwargs)


def test_fixed_fields_are_returned_and_not_suggested():
    trial = FixedTrial(ALL_PARAMS)
    config = _config(trial, fixed={"lr": 1e-3, "target": "valence", "hidden": [128, 128]})
    assert config["lr"] == 1e-3 and config["target"] == "valence" and config["hidden"] == [128, 128]
    assert "lr" not in trial.params

    study = _random_study(3)
    for _ in range(50):  # a fixed beta caps alpha at 1 - beta, still without rejection
        trial = study.ask()
        config = space(trial, fixed={"beta": 0.7})
        assert config["beta"] == 0.7 and config["alpha"] <= 0.3 + 1e-12
        assert "beta_share" not in trial.params
    trial = FixedTrial(ALL_PARAMS)
    config = _config(trial, fixed={"alpha": 0.2, "beta": 0.3})
    assert (config["alpha"], config["beta"]) == (0.2, 0.3)
    assert not {"alpha", "beta_share"} & set(trial.params)


def test_paper_values_lie_inside_the_default_space():
    # Section 4.3: NAdam lr 5e-5, sigma^2 = 0.3, lambda_l = 1 from {0.1, 1, 10, 100}, dropout 0.5 / 0.1.
    assert RANGE_DEFAULTS["lr"][0] < 5e-5 < RANGE_DEFAULTS["lr"][1]
    assert RANGE_DEFAULTS["noise_var"][0] < 0.3 < RANGE_DEFAULTS["noise_var"][1]
    assert all(RANGE_DEFAULTS["dropout"][0] <= p <= RANGE_DEFAULTS["dropout"][1] for p in (0.1, 0.5))
    assert set(LAMBDA_GRID) == {0.1, 1.0, 10.0, 100.0}
    trial = FixedTrial(ALL_PARAMS)  # the paper's values pass Optuna's range checks without warnings
    config = _config(trial, variants=("ladder_mtl",))
    assert (config["lr"], config["noise_var"], config["lambdas"]) == (5e-5, 0.3, 1.0)


def test_space_is_fast():
    study = _random_study(4)
    trials = [study.ask() for _ in range(200)]
    start = time.perf_counter()
    for trial in trials:
        space(trial, variants=VARIANTS, per_layer_lambda=True)
    per_call_ms = (time.perf_counter() - start) / len(trials) * 1e3
    print(f"\nspace(): {per_call_ms:.3f} ms per call on a real Optuna trial (target < 1 ms)")


def test_grid_search_space_covers_categorical_knobs_once_each():
    variants = ("ladder_stl", "ladder_mtl")
    grid = grid_search_space(variants, {"lambdas": [0.1, 1, 10, 100]})
    assert grid == {"variant": list(variants), "lambdas": [0.1, 1.0, 10.0, 100.0]}
    size = len(grid["variant"]) * len(grid["lambdas"])
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    seen = []
    fixed = {**PAPER_FIXED, "target": "arousal"}
    bound = functools.partial(space, variants=variants, grids={"lambdas": [0.1, 1, 10, 100]}, fixed=fixed)
    study.optimize(lambda t: (seen.append(bound(t)), 0.0)[1], n_trials=size)
    assert sorted((c["variant"], c["lambdas"]) for c in seen) == sorted(
        (v, lam) for v in variants for lam in grid["lambdas"])
    assert all(c["lr"] == 5e-5 and c["noise_var"] == 0.3 and c["dropout"] is None for c in seen)


def test_grid_search_space_variants():
    assert grid_search_space(("dnn_stl",)) == {}
    assert grid_search_space(("dnn_stl", "dnn_mtl")) == {"variant": ["dnn_stl", "dnn_mtl"]}
    per_layer = grid_search_space(("ladder_mtl",), per_layer_lambda=True, fixed={"hidden": [8]})
    assert set(per_layer) == {"lambda_0", "lambda_1"}
    assert grid_search_space(("ladder_mtl",), fixed={"lambdas": 1.0}) == {}


def test_warm_start_params_reach_the_trial():
    point = {"variant": "ladder_mtl", "lr": 5e-5, "noise_var": 0.3, "alpha": 0.5, "beta": 0.25,
             "lambdas": [1, 10, 100], "dropout": 0.1}
    params = warm_start_params(point, per_layer_lambda=True)
    assert params["beta_share"] == pytest.approx(0.5) and "beta" not in params
    study = _random_study(5)
    study.enqueue_trial(params)
    config = space(study.ask(), variants=("dnn_mtl", "ladder_mtl"), per_layer_lambda=True)
    assert config["beta"] == pytest.approx(0.25) and config["alpha"] == 0.5
    assert config["lambdas"] == (1.0, 10.0, 100.0)
    with pytest.raises(ValueError, match="needs alpha"):
        warm_start_params({"beta": 0.2})
    with pytest.raises(ValueError, match="alpha \\+ beta <= 1"):
        warm_start_params({"alpha": 0.7, "beta": 0.5})


def test_search_only_params():
    assert "beta_share" in SEARCH_ONLY_PARAMS and "lambda_0" in SEARCH_ONLY_PARAMS
    assert not set(SEARCH_ONLY_PARAMS) & {"variant", "lr", "dropout", "noise_var", "lambdas", "alpha", "beta"}


def test_bound_space_pickles_by_reference():
    bound = functools.partial(space, variants=VARIANTS, per_layer_lambda=True)
    restored = pickle.loads(pickle.dumps(bound))
    assert restored.func is ladder.space
    assert set(restored(FixedTrial({**ALL_PARAMS, "variant": "dae"}))) == EXPECTED["dae"]


def test_searchspace_imports_no_ray_mlflow_or_torch():
    code = ("import sys, searchspace.ladder, searchspace.schema; "
            "print(sorted({'ray', 'mlflow', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

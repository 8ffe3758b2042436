"""The aae_mtl search space: alpha and beta for the variants with a decoder, lr on a log scale, auxiliary speakers and
tasks for aae_mtl; variants and auxiliary tasks as a grid; options checked when a sweep config loads."""

from __future__ import annotations

import optuna
import pytest

from searchspace import aae_mtl as space_mod
from searchspace.schema import ConfigError, SweepConfig


def _sample(n: int = 60, **options) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space_mod.space(study.ask(), **options) for _ in range(n)]


def test_each_variant_searches_its_own_knobs_within_their_ranges():
    samples = _sample(variants=space_mod.VARIANTS)
    assert {p["variant"] for p in samples} == set(space_mod.VARIANTS)
    for params in samples:
        variant = params["variant"]
        expected = {"variant", "lr"}
        if variant != "cnn":
            expected |= {"alpha", "beta"}
            assert 0.1 <= params["alpha"] <= 1.0 and 0.1 <= params["beta"] <= 0.9
        if variant == "aae_mtl":
            expected |= {"aux_tasks", "aux_speakers"}
            assert params["aux_tasks"] == "both"
            assert isinstance(params["aux_speakers"], int) and 100 <= params["aux_speakers"] <= 900
        assert set(params) == expected, variant
        assert 1e-5 <= params["lr"] <= 1e-3
    assert space_mod.RANGE_KNOBS["lr"].log and not space_mod.RANGE_KNOBS["alpha"].log


def test_fixed_trial_gives_the_config_fields():
    trial = optuna.trial.FixedTrial({"alpha": 0.4, "beta": 0.6, "lr": 1e-4, "aux_speakers": 600,
                                     "aux_tasks": "gender"})
    params = space_mod.space(trial, variants=("aae_mtl",), grids={"aux_tasks": ["gender", "speaker", "both"]})
    assert params == {"variant": "aae_mtl", "alpha": 0.4, "beta": 0.6, "lr": 1e-4, "aux_tasks": "gender",
                      "aux_speakers": 600}
    from trainables.aae_mtl import AAEMTLConfig

    AAEMTLConfig(**params)
    assert space_mod.space(optuna.trial.FixedTrial({"lr": 1e-4}), variants=("cnn",)) == {"variant": "cnn",
                                                                                         "lr": 1e-4}


def test_ranges_grids_and_fixed_override():
    for params in _sample(20, ranges={"alpha": [0.4, 0.6], "aux_speakers": [10, 20]},
                          grids={"aux_tasks": ["gender", "speaker"]}, fixed={"beta": 0.5}):
        assert 0.4 <= params["alpha"] <= 0.6 and 10 <= params["aux_speakers"] <= 20
        assert params["aux_tasks"] in ("gender", "speaker") and params["beta"] == 0.5
    params = _sample(1, fixed={"aux_speakers": None})[0]
    assert params["aux_speakers"] is None  # every auxiliary speaker


def test_grid_space_covers_variants_and_auxiliary_tasks():
    assert space_mod.grid_search_space(variants=space_mod.VARIANTS, grids={"aux_tasks": list(space_mod.AUX_TASKS)}) \
        == {"variant": list(space_mod.VARIANTS), "aux_tasks": ["gender", "speaker", "both"]}
    assert space_mod.grid_search_space() == {}
    space_mod.check_options(variants=space_mod.VARIANTS, fixed=space_mod.PAPER_FIXED)
    # With the paper's values fixed, the space suggests only the grid's knobs (what GridSampler needs).
    trial = optuna.trial.FixedTrial({"variant": "aae_mtl", "aux_tasks": "both"})
    params = space_mod.space(trial, variants=space_mod.VARIANTS, fixed=space_mod.PAPER_FIXED)
    assert params == {**space_mod.PAPER_FIXED, "variant": "aae_mtl", "aux_tasks": "both"}


@pytest.mark.parametrize("options, message", [
    ({"ranges": {"alpha": [0.0, 1.0]}}, r"alpha range must satisfy 0 < low < high <= 1"),
    ({"ranges": {"beta": [0.1, 1.0]}}, r"beta range must satisfy 0 < low < high < 1"),
    ({"ranges": {"lr": [0.0, 1e-3]}}, "lr range must satisfy 0 < low < high"),
    ({"ranges": {"aux_speakers": [0.5, 10]}}, "aux_speakers range must satisfy 1 <= low < high, both integers"),
    ({"ranges": {"dropout": [0.1, 0.5]}}, r"unknown range knob\(s\) \['dropout'\]"),
    ({"grids": {"aux_tasks": ["gender", "age"]}}, r"aux_tasks values must be distinct names from .*'age'\]"),
    ({"fixed": {"aux_speakers": 0}}, "fixed aux_speakers must be an integer >= 1 .* got 0"),
    ({"fixed": {"beta": 1.0}}, "fixed beta must satisfy 0 < beta < 1, got 1.0"),
    ({"fixed": {"alpha": 0}}, "fixed alpha must satisfy 0 < alpha <= 1, got 0"),
    ({"variants": ("cnn", "dcgan")}, "variants must be distinct names from"),
    ({"per_layer_lambda": True}, "per_layer_lambda is a ladder-family option"),
])
def test_bad_options_fail_with_the_rule(options, message):
    with pytest.raises(ValueError, match=message):
        space_mod.check_options(**{"variants": ("cnn", "aae_mtl"), **options})


def _sweep(**search) -> dict:
    return {"name": "aae", "data": {"shards": ["s"], "targets": ["emotion", "gender", "speaker"],
                                    "emotion_classes": ["neutral", "happy", "sad", "angry"],
                                    "auxiliary": [{"shards": "l", "targets": ["gender", "speaker"]}]},
            "model": {"family": "aae_mtl", "variants": list(space_mod.VARIANTS)},
            "search": {"metric": "val_ua_emotion", **search},
            "train": {"lr_schedule": "halve_on_plateau", "batch_size": 32}}


def test_an_aae_mtl_sweep_config_loads_and_bad_knobs_fail_at_load():
    cfg = SweepConfig.model_validate(_sweep(ranges={"aux_speakers": [100, 600]},
                                            grids={"aux_tasks": ["gender", "speaker", "both"]}))
    assert cfg.model.family == "aae_mtl"
    assert (cfg.train.lr_schedule, cfg.train.lr_factor, cfg.train.min_lr) == ("halve_on_plateau", 0.5, 1e-5)
    with pytest.raises(ConfigError, match="not a range knob of family 'aae_mtl'"):
        SweepConfig.model_validate(_sweep(ranges={"dropout": [0.1, 0.5]}))
    with pytest.raises(ConfigError, match="aux_tasks values must be distinct names"):
        SweepConfig.model_validate(_sweep(grids={"aux_tasks": ["age"]}))
    with pytest.raises(ConfigError, match="not valid for family 'aae_mtl'"):
        SweepConfig.model_validate({**_sweep(), "model": {"family": "aae_mtl", "variants": ["aae"]}})
    bad = _sweep()
    bad["train"] = {"lr_schedule": "cosine", "lr_factor": 1.5, "min_lr": 0}
    with pytest.raises(ConfigError) as err:
        SweepConfig.model_validate(bad)
    text = str(err.value)
    assert "train.lr_schedule: " in text and "'none' or 'halve_on_plateau'" in text
    assert "train.lr_factor: " in text and "train.min_lr: " in text


def test_the_default_train_section_has_no_lr_schedule():
    cfg = SweepConfig.model_validate({**_sweep(), "train": {}})
    assert cfg.train.lr_schedule == "none"


@pytest.mark.parametrize("name, protocol", [("aae_mtl_iemocap.yaml", "random_kfold"), ("aae_mtl_loso.yaml",
                                                                                       "speaker_kfold"),
                                            ("aae_mtl_cross_corpus.yaml", "cross_corpus")])
def test_shipped_configs_load(name, protocol):
    from pathlib import Path

    from searchspace.schema import load_sweep_config

    cfg = load_sweep_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.model.family == "aae_mtl" and cfg.data.protocol == protocol
    assert cfg.data.targets == ["emotion", "gender", "speaker"] and cfg.train.lr_schedule == "halve_on_plateau"
    assert cfg.data.auxiliary[0].targets == ["gender", "speaker"]
    assert cfg.search.grace_period > 2  # longer than aae_mtl's pre-training epochs


def test_demo_config_loads_and_evaluates_every_model_once():
    from pathlib import Path

    from searchspace.schema import load_sweep_config

    cfg = load_sweep_config(Path(__file__).resolve().parents[2] / "configs" / "aae_mtl_demo.yaml")
    assert cfg.model.family == "aae_mtl" and cfg.data.protocol == "speaker_kfold"  # unseen test speakers: EER
    assert sorted(p["variant"] for p in cfg.search.points_to_evaluate) == sorted(cfg.model.variants)
    assert cfg.search.num_samples == len(cfg.model.variants) and cfg.search.scheduler == "none"
    assert "aux_tasks" not in cfg.model.fixed  # an arm parameter of aae_mtl only: not a label of every model
    assert cfg.data.auxiliary[0].targets == ["gender", "speaker"]

"""The dcgan search space: crop width, a filter size that fits crop_width / 8, filters in steps of 4, lr; variants
and crop widths as a grid; options checked when a sweep config loads."""

from __future__ import annotations

import optuna
import pytest
import yaml

from searchspace import dcgan as space_mod
from searchspace.schema import ConfigError, SweepConfig, load_sweep_config


def _sample(n: int = 60, **options) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space_mod.space(study.ask(), **options) for _ in range(n)]


def test_every_variant_searches_the_same_knobs_within_their_ranges():
    samples = _sample(variants=space_mod.VARIANTS)
    assert {p["variant"] for p in samples} == set(space_mod.VARIANTS)
    for params in samples:
        assert set(params) == {"variant", "crop_width", "filter_size", "filters", "lr"}
        assert params["crop_width"] in (64, 128, 256)
        assert 1 <= params["filter_size"] <= params["crop_width"] // 8
        assert params["filters"] % 4 == 0 and 16 <= params["filters"] <= 64
        assert 1e-5 <= params["lr"] <= 1e-3
    assert len({p["filters"] for p in samples}) > 5  # 13 values from 16 to 64 in steps of 4
    assert space_mod.RANGE_KNOBS["lr"].log


def test_filter_size_is_its_share_of_crop_width_over_8():
    trial = optuna.trial.FixedTrial({"crop_width": 128, "filter_share": 0.5, "filters": 24, "lr": 1e-4})
    params = space_mod.space(trial, variants=("basic_dcgan",))
    assert params == {"variant": "basic_dcgan", "crop_width": 128, "filter_size": 8, "filters": 24, "lr": 1e-4}
    assert space_mod.filter_size_for(1.0, 256) == 32 and space_mod.filter_size_for(0.01, 64) == 1
    # The share is a search-only Optuna parameter; the registry knows it, the config never sees it.
    from trainables.registry import FAMILIES

    assert FAMILIES["dcgan"].search_only == ("filter_share",)


def test_ranges_grids_and_fixed_override():
    for params in _sample(20, variants=("basic_cnn",), ranges={"filters": [8, 12], "lr": [1e-4, 2e-4]},
                          grids={"crop_width": [32]}, fixed={"filter_size": 3}):
        assert params["crop_width"] == 32 and params["filter_size"] == 3 and params["filters"] in (8, 12)
        assert 1e-4 <= params["lr"] <= 2e-4
    assert _sample(1, fixed={"crop_width": 64, "filter_share": 1.0})[0]["filter_size"] == 8


def test_grid_space_and_warm_start():
    assert space_mod.grid_search_space(variants=space_mod.VARIANTS) == {"variant": list(space_mod.VARIANTS),
                                                                       "crop_width": [64, 128, 256]}
    assert space_mod.grid_search_space(variants=("basic_dcgan",), grids={"crop_width": [128]}) == {}
    # The fixed DCGAN values fit every default crop width.
    space_mod.check_options(variants=space_mod.VARIANTS, fixed=space_mod.PAPER_FIXED)
    assert space_mod.warm_start_params({"crop_width": 128, "filter_size": 4, "lr": 1e-4}) == {
        "crop_width": 128, "filter_share": 0.25, "lr": 1e-4}
    with pytest.raises(ValueError, match="needs crop_width"):
        space_mod.warm_start_params({"filter_size": 4})
    with pytest.raises(ValueError, match="filter_size <= crop_width // 8 must hold, got filter_size=9, crop_width=64"):
        space_mod.warm_start_params({"filter_size": 9, "crop_width": 64})


@pytest.mark.parametrize("options, message", [
    ({"ranges": {"filters": [10, 64]}}, "filters range must satisfy 4 <= low < high, both multiples of 4"),
    ({"ranges": {"filter_share": [0.0, 1.0]}}, "filter_share range must satisfy 0 < low < high <= 1"),
    ({"ranges": {"lr": [0.0, 1e-3]}}, "lr range must satisfy 0 < low < high"),
    ({"ranges": {"batch_size": [16, 64]}}, r"unknown range knob\(s\) \['batch_size'\]"),
    ({"grids": {"crop_width": [64, 100]}}, r"crop_width values must be integers, multiples of 16.*\[64, 100\]"),
    ({"fixed": {"filter_size": 9}}, r"filter_size <= crop_width // 8 for every crop width.*\[64\]"),
    ({"variants": ("basic_cnn", "dcgan")}, "variants must be distinct names from"),
    ({"per_layer_lambda": True}, "per_layer_lambda is a ladder-family option"),
])
def test_bad_options_fail_with_the_rule(options, message):
    with pytest.raises(ValueError, match=message):
        space_mod.check_options(**{"variants": ("basic_cnn", "basic_dcgan"), **options})


def _sweep(**search) -> dict:
    return {"name": "dcgan", "data": {"shards": ["s"], "targets": ["valence", "arousal"],
                                      "encoders": {"valence": "soft5", "arousal": "soft5"}},
            "model": {"family": "dcgan", "variants": list(space_mod.VARIANTS)},
            "search": {"metric": "val_ua5_valence", **search}, "train": {"early_stopping": "consecutive_drops"}}


def test_a_dcgan_sweep_config_loads_and_bad_knobs_fail_at_load(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(_sweep(sampler="random", ranges={"filters": [8, 32]},
                                          grids={"crop_width": [64, 128]})))
    cfg = load_sweep_config(path)
    assert cfg.model.family == "dcgan" and cfg.train.early_stopping == "consecutive_drops"
    with pytest.raises(ConfigError, match="not a range knob of family 'dcgan'"):
        SweepConfig.model_validate(_sweep(ranges={"dropout": [0.1, 0.5]}))
    with pytest.raises(ConfigError, match="crop_width values must be integers, multiples of 16"):
        SweepConfig.model_validate(_sweep(grids={"crop_width": [60]}))
    with pytest.raises(ConfigError, match="not valid for family 'dcgan'"):
        SweepConfig.model_validate({**_sweep(), "model": {"family": "dcgan", "variants": ["cnn"]}})
    bad = _sweep()
    bad["train"] = {"early_stopping": "plateau"}
    with pytest.raises(ConfigError, match=r"train.early_stopping: .*'patience' or 'consecutive_drops'"):
        SweepConfig.model_validate(bad)


@pytest.mark.parametrize("name", ["dcgan_iemocap.yaml", "dcgan_demo.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    from searchspace.schema import load_sweep_config

    cfg = load_sweep_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.model.family == "dcgan" and set(cfg.model.variants) == {"basic_cnn", "multitask_cnn", "basic_dcgan",
                                                                       "multitask_dcgan"}
    assert cfg.data.encoders == {"valence": "soft5", "arousal": "soft5"} and cfg.data.protocol == "loso"
    assert cfg.data.auxiliary and cfg.train.early_stopping == "consecutive_drops"
    assert cfg.search.metric == "val_ua5_valence"
    assert {p["variant"] for p in cfg.search.points_to_evaluate} == set(cfg.model.variants)

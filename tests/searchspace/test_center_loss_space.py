"""The center_loss search space: each variant suggests only the knobs its loss uses, within the paper's ranges."""

from __future__ import annotations

import optuna
import pytest

from searchspace import center_loss as space_mod
from searchspace.schema import ConfigError, load_sweep_config


def _sample(n: int = 40, **options) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space_mod.space(study.ask(), **options) for _ in range(n)]


def test_each_variant_suggests_its_own_knobs():
    seen = {}
    for params in _sample(variants=space_mod.VARIANTS):
        seen.setdefault(params["variant"], set()).update(k for k in params if k != "variant")
    assert seen == {"s": {"dropout"}, "s_a": {"dropout", "lambda2"}, "s_c": {"dropout", "lambda1"},
                    "s_a_c": {"dropout", "lambda1", "lambda2"}, "a": {"dropout"}}


def test_default_ranges_are_the_papers():
    for params in _sample(variants=("s_a_c",)):
        assert 1e-3 <= params["lambda1"] <= 5.0
        assert 0.25 <= params["dropout"] <= 0.75
    assert space_mod.RANGE_KNOBS["lambda1"].log and space_mod.RANGE_KNOBS["lambda2"].log


def test_ranges_and_fixed_override():
    for params in _sample(10, variants=("s_c",), ranges={"lambda1": [3.0, 4.5]}, fixed={"dropout": 0.3}):
        assert 3.0 <= params["lambda1"] <= 4.5 and params["dropout"] == 0.3


@pytest.mark.parametrize("options, message", [
    ({"ranges": {"lambda1": [0.0, 1.0]}}, "lambda1 range must satisfy 0 < low < high"),
    ({"ranges": {"dropout": [0.2, 1.0]}}, "dropout range must satisfy 0 <= low < high < 1"),
    ({"ranges": {"lr": [0.1, 1.0]}}, r"unknown range knob\(s\) \['lr'\]"),
    ({"variants": ("s", "cnn")}, "variants must be distinct names from"),
    ({"per_layer_lambda": True}, "per_layer_lambda is a ladder-family option"),
])
def test_bad_options_fail_with_the_rule(options, message):
    with pytest.raises(ValueError, match=message):
        space_mod.check_options(**{"variants": ("s", "s_c"), **options})


def test_grid_space_covers_the_variants():
    assert space_mod.grid_search_space(variants=("s", "s_c")) == {"variant": ["s", "s_c"]}
    assert space_mod.grid_search_space(variants=("s",)) == {}


@pytest.mark.parametrize("name", ["center_loss_iemocap.yaml", "center_loss_demo.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    cfg = load_sweep_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.model.family == "center_loss" and set(cfg.data.inputs) == {"mfcc", "logmel128"}
    assert cfg.data.include["utt_id"] == "_impro" and cfg.data.protocol == "loso"


def test_a_bad_center_loss_range_fails_at_load(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"shards": ["s"], "targets": ["emotion"],
                                                          "emotion_classes": ["a", "b"]},
                                    "model": {"family": "center_loss", "variants": ["s_c"]},
                                    "search": {"metric": "val_ua_emotion", "ranges": {"noise_var": [0.1, 1]}}}))
    with pytest.raises(ConfigError, match="not a range knob of family 'center_loss'"):
        load_sweep_config(path)

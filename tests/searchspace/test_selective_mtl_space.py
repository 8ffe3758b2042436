"""The selective_mtl search space: lambda only for the settings with a style loss, the paper's ranges, grids."""

from __future__ import annotations

import optuna
import pytest

from searchspace import selective_mtl as space_mod


def _sample(n: int = 40, **options) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space_mod.space(study.ask(), **options) for _ in range(n)]


def test_lambda_only_where_a_style_loss_is_weighed():
    for params in _sample(variants=space_mod.VARIANTS):
        assert ("lam" in params) == (params["variant"] in ("mtl", "selective_mtl"))
        assert 1e-4 / 4 <= params["lr"] <= 1e-3 and params["heads"] in (4, 8) and params["half"] is False
        if "lam" in params:
            assert 0.1 <= params["lam"] <= 0.9


def test_half_and_heads_grids_and_fixed():
    seen = {(p["half"], p["heads"]) for p in _sample(60, variants=("mtl",), grids={"half": [False, True],
                                                                                     "heads": [8]})}
    assert seen == {(False, 8), (True, 8)}
    assert all(p["lam"] == 0.8 for p in _sample(5, variants=("mtl",), fixed={"lam": 0.8}))


def test_grid_space():
    grid = space_mod.grid_search_space(variants=space_mod.VARIANTS, grids={"half": [False, True]})
    assert grid == {"variant": list(space_mod.VARIANTS), "heads": [4, 8], "half": [False, True]}


@pytest.mark.parametrize("options, message", [
    ({"ranges": {"lam": [0.0, 0.9]}}, "lam range must satisfy 0 < low < high < 1"),
    ({"grids": {"heads": [0, 8]}}, "heads grid must hold positive integers"),
    ({"grids": {"half": ["yes"]}}, "half grid must hold true/false"),
    ({"variants": ("mtl", "stl")}, "variants must be distinct names from"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        space_mod.check_options(**{"variants": ("mtl",), **options})


@pytest.mark.parametrize("name", ["selective_mtl.yaml", "selective_mtl_demo.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    from searchspace.schema import load_sweep_config

    cfg = load_sweep_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.model.family == "selective_mtl" and cfg.data.targets == ["emotion", "style"]
    assert cfg.data.corpus_protocols["callcenter"]["protocol"] == "random_kfold" and cfg.data.protocol == "loso"
    assert cfg.model.fixed["spontaneous_corpus"] == "callcenter"
    arms = {(p["variant"], p["half"]) for p in cfg.search.points_to_evaluate}
    assert len(arms) == 7 and ("separate", True) not in arms  # Table 3's rows

"""The sweep's gates (issue 7, classes 1, 2 and 6): verified shards, finite scores, finite weights.

A sweep opens its shards verified (a flipped byte is refused before Ray starts), selects only finite validation
scores, and registers nothing when every trial diverged (exit 2) or the best checkpoint holds a non-finite weight.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from cluster import sweep
from tests.cluster.helpers import tiny_sweep_config

NAME, EXPERIMENT, MODEL = "t_guard", "t_guard_exp", "t-guard-model"


@pytest.fixture()
def config(tmp_path, msp_functionals):
    out, _ = msp_functionals
    return tiny_sweep_config(tmp_path, out / "msp_podcast" / "functionals", NAME, EXPERIMENT, MODEL)


def _trial(trial_id: str, score: float) -> dict:
    return {"trial_id": trial_id, "config": {}, "variant": "", "best": {"val_ccc_arousal": score}, "best_epoch": 1}


def test_selection_skips_non_finite_scores():
    chosen = sweep.select([_trial("a", math.nan), _trial("b", 0.2), _trial("c", math.inf)], "val_ccc_arousal",
                          "max", per_variant=False)
    assert chosen["all"]["trial_id"] == "b"


@pytest.mark.parametrize("scores", [[], [math.nan], [math.nan, -math.inf]])
def test_selection_without_a_finite_score_is_a_user_error(scores):
    with pytest.raises(ValueError, match="no search trial reported a finite 'val_ccc_arousal'.*Nothing was registered"):
        sweep.select([_trial(str(i), s) for i, s in enumerate(scores)], "val_ccc_arousal", "max", per_variant=False)


def test_a_checkpoint_with_a_non_finite_weight_is_never_registered():
    state = {"folds": [{"model": {"head.weight": torch.tensor([[1.0, float("nan")]])}}]}
    with pytest.raises(ValueError, match=r"folds\[0\]\.model\.head\.weight.*nothing was registered"):
        sweep._check_finite_weights(state, "t1")
    sweep._check_finite_weights({"folds": [{"model": {"w": torch.ones(2)}}]}, "t1")  # finite: passes


def test_a_flipped_byte_in_a_shard_is_refused_before_ray(tmp_path, config, msp_functionals, capsys):
    import shutil

    from cluster.cli import main

    out, _ = msp_functionals
    copy = tmp_path / "shards"
    shutil.copytree(out / "msp_podcast" / "functionals", copy)
    part = sorted(copy.glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same footer: only the checksum sees it
    stat = part.stat()
    part.write_bytes(bytes(data))
    import os

    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["shards"] = [str(copy)]
    config.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and part.name in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow or Ray


@pytest.mark.slow
def test_a_sweep_whose_every_trial_diverges_exits_2_and_registers_nothing(tmp_path, config, capsys):
    from mlflow.tracking import MlflowClient

    from cluster.cli import main

    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["fixed"]["noise_var"] = 1e30  # every trial's loss is non-finite in its first epoch
    config.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(config), "--num-cpus", "2"]) == 2
    err = capsys.readouterr().err
    assert "no search trial reported a finite 'val_ccc_arousal'" in err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
    exp = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([exp.experiment_id], f"tags.sweep = '{NAME}' and tags.`emotune.role` = 'sweep'")
    assert parent.info.status == "FAILED"
    assert not Path(tmp_path / "ray_results" / NAME / ".emotune.lock").exists()  # the lock was released


@pytest.mark.parametrize("sets, says", [
    (["model.fixed.hidden=[1,"], "not valid YAML"),
    (["model.fixed.hidden=-5"], "hidden"),
    (["model.fixed.no_such_knob=1"], "no_such_knob"),
    (["data.protocol_options={folds: 3}"], "protocol_options"),
    (["data.targets=[arousal, liking]"], "liking"),
    (["search.ranges={lr: [0.001, .inf]}"], "finite"),
    (["resources.cpu=4096"], "resources.cpu"),
    (["tracking.uri=notascheme://x"], "tracking.uri"),
])
def test_config_mistakes_exit_2_with_one_line_before_ray(tmp_path, config, capsys, sets, says):
    from cluster.cli import main

    args = ["sweep", str(config), "--num-cpus", "2"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert not (tmp_path / "ray_results" / NAME).exists()  # nothing started


def test_storage_path_that_is_a_file_exits_2(tmp_path, config, capsys):
    from cluster.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["sweep", str(config), "--set", f"storage.path={tmp_path / 'afile'}"]) == 2
    assert "storage.path" in capsys.readouterr().err

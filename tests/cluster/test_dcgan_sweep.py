"""The dcgan family through the driver: GAN variants refused without unlabeled data, the paper's table, the best
model's confusion matrix, and a real sweep (local Ray, MLflow store) over IEMOCAP with AMI as unlabeled rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cluster.report import confusion_table, dcgan_tables, paper_tables
from tests.cluster.helpers import run_sweep_in, write_config


def _config(tmp_path, shard_root, auxiliary: bool = True, **overrides) -> Path:
    unlabeled = [str(shard_root / "ami" / "spectrogram1024")] if auxiliary else []
    return write_config(tmp_path, shard_root, **{
        "name": "dg_sweep", "tracking.experiment": "dg_exp", "registry.model_name": "dg-model",
        "data": {"shards": [str(shard_root / "iemocap" / "spectrogram1024")], "auxiliary": unlabeled,
                 "protocol": "loso", "targets": ["valence", "arousal"],
                 "encoders": {"valence": "soft5", "arousal": "soft5"}},
        "model": {"family": "dcgan", "variants": ["basic_cnn", "basic_dcgan"],
                  "fixed": {"crop_width": 32, "filter_size": 3, "filters": 4, "fc_hidden": 8, "z_dim": 8,
                            "lr": 1e-3}},
        "search": {"sampler": "grid", "max_concurrent": 2, "scheduler": "none", "metric": "val_ua5_valence",
                   "mode": "max"},
        "train": {"max_epochs": 1, "patience": 2, "early_stopping": "consecutive_drops", "batch_size": 32},
        "repeats.seeds": 1, "resources.max_failures": 0, **overrides})


def test_dcgan_table_has_the_papers_columns():
    values = {"basic_cnn": {"test_ua5_valence": [0.30, 0.32], "test_ua3_valence": [0.40, 0.42],
                            "test_pearson_valence": [0.20, 0.22]},
              "basic_dcgan": {"test_ua5_valence": [0.44], "test_ua3_valence": [0.50], "test_pearson_valence": [0.3]}}
    text = dcgan_tables(values)
    assert "| BasicCNN | 31.00 ± 1.41 | 41.00 ± 1.41 | 0.210 ± 0.014 | 2 |" in text
    assert "| BasicDCGAN | 44.00 ± 0.00 | 50.00 ± 0.00 | 0.300 ± 0.000 | 1 |" in text
    assert "MultitaskCNN" not in text and paper_tables("dcgan", values) == text


def test_confusion_table_rows_are_true_classes():
    text = confusion_table(np.array([[3, 1], [0, 2]]), ["low", "high"])
    assert text.splitlines()[0] == "| true \\ predicted | low | high | total |"
    assert "| low | 3 | 1 | 4 |" in text and "| high | 0 | 2 | 2 |" in text


def test_gan_variants_without_unlabeled_data_fail_before_ray(tmp_path, dcgan_shards):
    import ray

    from cluster.sweep import prepare, run_sweep

    path = _config(tmp_path, dcgan_shards, auxiliary=False)
    with pytest.raises(ValueError, match=r"data.auxiliary is empty.*\['basic_dcgan'\]"):
        run_sweep(path)
    assert not ray.is_initialized() and not (tmp_path / "ray_results").exists()
    cnn_only = _config(tmp_path, dcgan_shards, auxiliary=False, **{"model.variants": ["basic_cnn"]})
    assert prepare(cnn_only).family.name == "dcgan"  # the CNN variants need no unlabeled rows


@pytest.mark.slow
def test_dcgan_sweep_logs_the_papers_metrics_table_and_confusion_matrix(dcgan_shards, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from cluster.cli import main

    result = run_sweep_in(tmp_path, _config(tmp_path, dcgan_shards))
    assert set(result.selected) == {"basic_cnn", "basic_dcgan"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    for arm in ("basic_cnn", "basic_dcgan"):
        for key in ("test_ua5_valence", "test_ua3_valence", "test_pearson_valence"):
            assert math.isfinite(parent.data.metrics[f"{arm}.{key}.mean"]), (arm, key)
    paths = {a.path for folder in ("results", "plots/test/basic_dcgan")
             for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"results/confusion_best_model.md", "results/paper_tables.md",
            "plots/test/basic_dcgan/confusion_valence.png", "plots/test/basic_dcgan/confusion_valence.md"} <= paths
    trials = client.search_runs([result.experiment_id], "tags.`emotune.role` = 'search'")
    assert {r.data.params["early_stopping"] for r in trials} == {"consecutive_drops"}
    assert result.model_version is not None

    capsys.readouterr()
    assert main(["report", "--experiment", "dg_exp", "--tracking-uri", uri]) == 0
    shown = capsys.readouterr().out
    assert "| BasicCNN |" in shown and "| BasicDCGAN |" in shown
    assert "Test confusion matrix of valence, best model" in shown and "| true \\ predicted |" in shown

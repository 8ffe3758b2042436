"""The selective_mtl family through the driver: the paper's Tables 3-5 from per-seed values, and a real two-corpus
sweep (local Ray, MLflow store) logging per-corpus test metrics and the tables on the parent run."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from cluster.report import paper_tables, selective_mtl_tables
from tests.cluster.helpers import run_sweep_in, write_config


def _values() -> dict:
    def arm(ua: float) -> dict:
        return {"test_ua_emotion": [ua, ua + 0.02], "test_wa_emotion": [ua + 0.01, ua + 0.03],
                "test_ua_emotion.iemocap": [ua - 0.05] * 2, "test_wa_emotion.iemocap": [ua - 0.04] * 2,
                "test_ua_emotion.callcenter": [ua + 0.05] * 2, "test_wa_emotion.callcenter": [ua + 0.06] * 2,
                "test_ua_emotion.corpus_mean": [ua] * 2,
                "test_acc_emotion_neutral.iemocap": [0.5] * 2, "test_acc_emotion_angry.iemocap": [0.7] * 2,
                "test_acc_emotion_neutral.callcenter": [0.6] * 2, "test_acc_emotion_angry.callcenter": [0.9] * 2,
                "val_ua_emotion": [ua] * 2}

    return {"separate": arm(0.50), "combined": arm(0.52), "combined-half": arm(0.48), "selective_mtl": arm(0.60)}


def test_selective_mtl_tables_have_the_papers_rows_and_columns():
    text = selective_mtl_tables(_values())
    table3, detail = text.split("Tables 4-5", 1)
    rows = [line for line in table3.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["Baseline (separate)", "Combined", "Selective MTL",
                                                        "Combined (half)"]  # the paper's order, only what ran
    assert "| Selective MTL | 61.00 ± 1.41 | 62.00 ± 1.41 | 2 |" in table3  # pooled test UA / WA, %
    assert "corpus callcenter" in detail and "corpus iemocap" in text
    iemocap = text.split("corpus iemocap")[1]
    assert "| Setting | angry | neutral | UA | WA | seeds |" in iemocap  # the paper's class order
    assert "| Selective MTL | 70.00 ± 0.00 | 50.00 ± 0.00 | 55.00 ± 0.00 | 56.00 ± 0.00 | 2 |" in iemocap
    assert paper_tables("selective_mtl", _values()) == text


def _config(tmp_path, shard_root) -> Path:
    return write_config(tmp_path, shard_root, **{
        "name": "sm_sweep", "tracking.experiment": "sm_exp", "registry.model_name": "sm-model",
        "data": {"shards": [str(shard_root / "iemocap" / "fbank40"), str(shard_root / "csv" / "fbank40")],
                 "include": {"emotion": "^(neutral|happy|sad|angry|excited)$"}, "emotion_merge": {"excited": "happy"},
                 "protocol": "loso", "corpus_protocols": {"csv": {"protocol": "random_kfold", "k": 5}},
                 "targets": ["emotion", "style"], "emotion_classes": ["neutral", "happy", "sad", "angry"]},
        "model": {"family": "selective_mtl", "variants": ["separate", "selective_mtl"],
                  "fixed": {"lstm_cells": 8, "attention_size": 8, "heads": 2, "fc1": 16, "fc2": 16, "frames": 120,
                            "spontaneous_corpus": "csv", "lr": 2e-3}},
        "search": {"sampler": "grid", "max_concurrent": 2, "scheduler": "none", "metric": "val_ua_emotion",
                   "mode": "max"},
        "train": {"max_epochs": 1, "patience": 2, "batch_size": 32}, "repeats.seeds": 1,
        "resources.max_failures": 0})


@pytest.mark.slow
def test_selective_mtl_sweep_logs_per_corpus_metrics_and_the_papers_tables(frame_shards, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from cluster.cli import main

    caller_uri = os.environ.get("MLFLOW_TRACKING_URI")
    result = run_sweep_in(tmp_path, _config(tmp_path, frame_shards))
    assert os.environ.get("MLFLOW_TRACKING_URI") == caller_uri  # the sweep's URI does not leak into the process
    assert set(result.selected) == {"separate", "selective_mtl"} and result.search_trials == 2
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    metrics = client.get_run(result.parent_run_id).data.metrics
    for arm in ("separate", "selective_mtl"):
        for key in ("test_ua_emotion", "test_ua_emotion.iemocap", "test_ua_emotion.csv", "test_wa_emotion.csv",
                    "test_ua_emotion.corpus_mean"):
            assert math.isfinite(metrics[f"{arm}.{key}.mean"]), (arm, key)
    assert "selective_mtl.test_ua_style.mean" in metrics and "separate.test_ua_style.mean" not in metrics
    tables = client.download_artifacts(result.parent_run_id, "results/paper_tables.md", str(tmp_path))
    text = open(tables).read()
    assert "| Baseline (separate) |" in text and "| Selective MTL |" in text
    assert "corpus csv" in text and "corpus iemocap" in text
    trials = client.search_runs([result.experiment_id], "tags.`emotune.role` = 'search'")
    assert all(not any(k.startswith("test_") for k in r.data.metrics) for r in trials)  # test on the parent only

    capsys.readouterr()
    assert main(["report", "--experiment", "sm_exp", "--tracking-uri", uri]) == 0
    shown = capsys.readouterr().out
    assert "Table 3: test UA and WA" in shown and ".iemocap" not in shown.split("Table 3")[0]

"""A real center_loss sweep (local Ray, MLflow store): both inputs searched, the paper's tables and t-SNE figures on
the parent run, and `emotune report` printing Tables 1 and 2."""

from __future__ import annotations

import math

import pytest

from tests.cluster.helpers import run_sweep_in
from tests.cluster.test_inputs_and_filters import _center_loss_config


@pytest.mark.slow
def test_center_loss_sweep_logs_the_papers_tables_and_tsne(iemocap_cl_shards, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from cluster.cli import main

    path = _center_loss_config(tmp_path, iemocap_cl_shards, **{
        "name": "cl_sweep", "tracking.experiment": "cl_exp", "registry.model_name": "cl-model",
        "model.variants": ["s_a_c"], "search.sampler": "grid", "search.max_concurrent": 2,
        "train.max_epochs": 2, "train.patience": 2, "train.batch_size": 16, "repeats.seeds": 1,
        "resources.max_failures": 0})
    result = run_sweep_in(tmp_path, path)
    arms = {"s_a_c-mfcc", "s_a_c-logmel128"}
    assert set(result.selected) == arms and result.search_trials == 2
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    for arm in arms:
        assert math.isfinite(parent.data.metrics[f"{arm}.test_ua_emotion.mean"])
    assert parent.data.metrics["s_a_c-mfcc.test_mse_reconstruction.mean"] > 0
    paths = {a.path for folder in ("results", "plots/tsne") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"plots/tsne/tsne_mfcc_emotion.png", "plots/tsne/tsne_logmel128_emotion.png",
            "results/paper_tables.md"} <= paths
    tables = client.download_artifacts(parent.info.run_id, "results/paper_tables.md", str(tmp_path))
    text = open(tables).read()
    table1, table2 = text.split("Table 2")
    assert "| S+A+C | mfcc |" in table1 and "| S+A+C | logmel128 |" in table1
    assert "| S+A+C | mfcc |" in table2 and "| S+C |" not in text  # only what was run
    trials = client.search_runs([result.experiment_id], "tags.`emotune.role` = 'search'")
    assert {r.data.params.get("input") for r in trials} == {"mfcc", "logmel128"}
    assert all(r.info.run_name.split()[1] in ("mfcc", "logmel128") for r in trials)
    assert result.model_version is not None

    capsys.readouterr()
    assert main(["report", "--experiment", "cl_exp", "--tracking-uri", uri]) == 0
    shown = capsys.readouterr().out
    assert "Table 1: test accuracy (%)" in shown and "| S+A+C | mfcc |" in shown and "| s_a_c-mfcc |" in shown

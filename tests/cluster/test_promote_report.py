"""The promotion gate and the paper-style table, without a sweep (registry versions made directly)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cluster.promote import promote
from cluster.report import format_table


@pytest.fixture()
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")

    def add(score: float, data: str = "hash-a", metric: str = "val_ccc_arousal", mode: str = "max") -> str:
        v = client.create_model_version("m", source=str(tmp_path / "artifacts"))
        for k, val in {"val_score": repr(score), "data_manifest_hash": data, "val_metric": metric,
                       "val_mode": mode}.items():
            client.set_model_version_tag("m", v.version, k, val)
        client.set_registered_model_alias("m", "candidate", v.version)
        return str(v.version)

    return uri, client, add


def _champion(client) -> str:
    return str(client.get_model_version_by_alias("m", "champion").version)


def test_first_candidate_becomes_champion_then_only_better_ones(registry):
    uri, client, add = registry
    v1 = add(0.60)
    assert promote("m", uri).promoted and _champion(client) == v1
    add(0.55)
    decision = promote("m", uri)
    assert not decision.promoted and "does not beat" in decision.message and _champion(client) == v1
    v3 = add(0.65)
    decision = promote("m", uri)
    assert decision.promoted and _champion(client) == v3
    assert "already champion" in promote("m", uri).message


def test_scores_on_other_data_or_metric_are_not_compared(registry):
    uri, client, add = registry
    v1 = add(0.60)
    promote("m", uri)
    add(0.90, data="hash-b")
    decision = promote("m", uri)
    assert not decision.promoted and "different data" in decision.message and _champion(client) == v1
    add(0.90, metric="val_ccc_valence")
    decision = promote("m", uri)
    assert not decision.promoted and "not comparable" in decision.message


def test_min_mode_and_missing_model(registry):
    uri, client, add = registry
    add(0.40, mode="min", metric="val_loss")
    promote("m", uri)
    v2 = add(0.30, mode="min", metric="val_loss")
    assert promote("m", uri).promoted and _champion(client) == v2
    with pytest.raises(ValueError, match="no registered model 'nope'"):
        promote("nope", uri)


def test_table_marks_significant_improvements_over_the_baseline():
    rng = np.random.default_rng(0)
    values = {
        "dnn_mtl": {"val_ccc_arousal": list(0.70 + 0.005 * rng.standard_normal(10)),
                    "test_ccc_arousal": list(0.60 + 0.005 * rng.standard_normal(10))},
        "ladder_mtl": {"val_ccc_arousal": list(0.75 + 0.005 * rng.standard_normal(10)),   # clearly better
                       "test_ccc_arousal": list(0.60 + 0.005 * rng.standard_normal(10))},  # same
    }
    md, csv_text = format_table(values, ["arousal"], baseline="dnn_mtl")
    row = next(line for line in md.splitlines() if line.startswith("| ladder_mtl"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "ladder_mtl" and cells[1] == "10"
    assert cells[2].startswith("0.75") and cells[2].endswith("*")      # val: significant
    assert not cells[3].endswith("*")                                   # test: not significant
    assert "dnn_mtl" in csv_text and "Welch" in md
    with pytest.raises(ValueError, match="baseline"):
        format_table(values, ["arousal"], baseline="nope")


def test_promote_cli_exits_0_on_a_no_op_and_1_on_a_refusal(registry, capsys):
    from cluster.cli import main

    uri, _, add = registry
    add(0.612345678912)
    assert main(["promote", "--model", "m", "--tracking-uri", uri]) == 0
    assert main(["promote", "--model", "m", "--tracking-uri", uri]) == 0  # already champion: nothing to do
    out = capsys.readouterr().out
    assert "nothing to do" in out and "0.6123" in out and "0.612345" not in out
    add(0.5)
    assert main(["promote", "--model", "m", "--tracking-uri", uri]) == 1  # the gate refused it


def test_table_csv_is_numeric():
    values = {"dnn_mtl": {"val_ccc_arousal": [0.5, 0.7], "test_ccc_arousal": [0.4, 0.6]},
              "ladder_mtl": {"val_ccc_arousal": [0.8]}}
    _, csv_text = format_table(values, ["arousal"], baseline="dnn_mtl")
    import csv
    import io

    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert float(rows["dnn_mtl"]["val_ccc_arousal.mean"]) == pytest.approx(0.6)
    assert float(rows["dnn_mtl"]["val_ccc_arousal.std"]) == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert rows["ladder_mtl"]["test_ccc_arousal.mean"] == "" and rows["ladder_mtl"]["val_ccc_arousal.std"] == "0.0"
    assert rows["dnn_mtl"]["val_ccc_arousal.better"] == "0"


def test_aae_mtl_tables_have_a_row_per_model_and_auxiliary_task():
    from cluster.report import aae_mtl_tables, paper_tables

    values = {"cnn": {"test_ua_emotion": [0.50, 0.52], "test_wa_emotion": [0.55, 0.55]},
              "aae_mtl-aux_tasksboth": {"test_ua_emotion": [0.60], "test_wa_emotion": [0.62],
                                        "test_ua_gender": [0.90], "test_eer_speaker": [0.20]},
              "aae_mtl-aux_tasksgender": {"test_ua_emotion": [0.58], "test_ua_gender": [0.88]}}
    text = aae_mtl_tables(values)
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "Model" not in line]
    assert rows == ["CNN (supervised)", "AAE-MTL (gender)", "AAE-MTL (both)"]
    assert "| AAE-MTL (both) | 60.00 ± 0.00 | 62.00 ± 0.00 | 90.00 ± 0.00 | 20.00 ± 0.00 | – | 1 |" in text
    assert "primary task emotion" in text and "primary task gender" not in text
    assert paper_tables("aae_mtl", values) == text

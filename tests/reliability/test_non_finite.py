"""Nothing non-finite is trained, selected, registered or promoted (issue 7, class 1): the loop and the gate.

The ingest and shard-loader halves of the class are in test_ingest_reliability.py and test_shard_reliability.py;
the sweep end to end (every trial diverges: exit 2, nothing registered) is in test_sweep_guards.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from data_io.feed import Feed
from trainables import registry
from trainables.base import SERModel
from trainables.loop import TrialDiverged, run_trial


@dataclass(frozen=True)
class BreakingConfig:
    lr: float = 1e-2
    break_at: int = 2  # epoch (0-based) from which the model misbehaves
    how: str = "nan_loss"  # nan_loss | nan_output | constant_output

    def feed(self) -> Feed:
        return Feed()


class BreakingModel(SERModel):
    """A linear regressor that misbehaves from epoch ``break_at`` on, in the way ``how`` says."""

    def __init__(self, cfg: BreakingConfig, spec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.head = nn.Linear(spec.input_shape[0], 1)

    def _broken(self) -> bool:
        return self.epoch >= self.cfg.break_at

    def loss(self, batch):
        y = self.head(batch["x"]).squeeze(-1)
        loss = ((y - batch["arousal"]) ** 2)[batch["arousal_mask"]].mean()
        if self._broken() and self.cfg.how == "nan_loss":
            loss = loss * float("nan")
        return loss, {}

    def predict(self, batch):
        y = self.head(batch["x"]).squeeze(-1)
        if self._broken() and self.cfg.how == "nan_output":
            y = y.clone()
            y[0] = float("inf")
        if self._broken() and self.cfg.how == "constant_output":
            y = torch.zeros_like(y)
        return {"arousal": y}


@pytest.fixture()
def breaking_family(monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, "breaking", registry.Family("breaking", BreakingConfig, BreakingModel,
                                                                       lambda trial: {}))


@pytest.fixture(scope="module")
def search_data(msp_search):
    return msp_search[0]


@pytest.mark.parametrize("how, says", [
    ("nan_loss", "training loss is nan at epoch 3"),
    ("nan_output", "non-finite values: the model diverged"),
    ("constant_output", "the same for all"),
])
def test_a_diverging_trial_fails_at_once_and_reports_nothing_after(breaking_family, search_data, how, says):
    reports = []
    config = {"family": "breaking", "how": how, "seed": 0, "max_epochs": 6, "patience": 6, "batch_size": 64,
              "metric": "val_ccc_arousal", "mode": "max"}
    with pytest.raises(TrialDiverged, match=says):
        run_trial(config, search_data, lambda m, s: reports.append(m))
    assert [m["epoch"] for m in reports] == [1, 2]  # the two healthy epochs only: nothing broken reached Tune
    assert all(math.isfinite(v) for m in reports for v in m.values())


def test_a_candidate_without_a_finite_score_is_never_promoted(tmp_path, capsys):
    from cluster.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    v = client.create_model_version("m", source=str(tmp_path / "artifacts"))
    for k, val in {"val_score": "nan", "data_manifest_hash": "h", "val_metric": "val_ccc_arousal",
                   "val_mode": "max"}.items():
        client.set_model_version_tag("m", v.version, k, val)
    client.set_registered_model_alias("m", "candidate", v.version)
    assert main(["promote", "--model", "m", "--tracking-uri", uri]) == 2
    assert "no finite validation score" in capsys.readouterr().err
    with pytest.raises(Exception, match="alias"):
        client.get_model_version_by_alias("m", "champion")

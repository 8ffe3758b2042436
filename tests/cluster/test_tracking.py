"""Trial run naming, outcomes, params and the parent's seed summary, without Ray."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from cluster import tracking
from cluster.sweep import per_seed_csv, seed_summary
from trainables.ladder import LadderConfig


def test_run_names_read_as_variant_and_index_or_seed():
    from types import SimpleNamespace

    assert tracking.trial_index(SimpleNamespace(experiment_tag="7_lr=0.001,variant=ladder_mtl")) == 7
    assert tracking.trial_index(SimpleNamespace(experiment_tag="")) == 0
    assert tracking.trial_run_name("search", {"variant": "ladder_mtl"}, 7) == "ladder_mtl #07"
    assert tracking.trial_run_name("repeat", {"variant": "dnn_mtl", "seed": 2}, 4) == "dnn_mtl seed 2"
    assert tracking.trial_run_name("search", {"family": "ladder"}, 1) == "ladder #01"


@pytest.mark.parametrize("result, errored, scheduler, outcome", [
    ({"epoch": 20}, False, "asha", "completed"),
    ({"epoch": 20, "early_stopped": True}, False, "asha", "completed"),  # patience ran out on the last epoch
    ({"epoch": 9, "early_stopped": True}, False, "asha", "early_stopped"),
    ({"epoch": 4, "early_stopped": False}, False, "asha", "stopped_by_asha"),
    ({"epoch": 4}, False, "none", "stopped"),
    ({"epoch": 20}, True, "asha", "failed"),
    (None, True, "asha", "failed"),
])
def test_trial_outcome(result, errored, scheduler, outcome):
    assert tracking.trial_outcome(result, errored=errored, max_epochs=20, scheduler=scheduler) == outcome


def test_params_leave_out_empty_values():
    params = {p.key: p.value for p in tracking.loggable_params(
        {"a": None, "b": [], "c": {}, "d": "", "e": 0, "f": [1, 2], "g": (), "h": False})}
    assert params == {"e": "0", "f": "[1, 2]", "h": "False"}


@pytest.mark.parametrize("variant, unused, used", [
    ("dnn_mtl", {"noise_var", "lambdas", "denoise_hidden", "dae_pretrain_epochs", "target"}, {"alpha", "beta"}),
    ("dnn_stl", {"noise_var", "lambdas", "alpha", "beta"}, {"target"}),
    ("dae", {"lambdas", "denoise_hidden", "alpha", "beta", "target"}, {"noise_var", "dae_pretrain_epochs"}),
    ("ladder_mtl", {"target", "dae_pretrain_epochs"}, {"noise_var", "lambdas", "alpha", "beta", "denoise_hidden"}),
    ("ladder_stl", {"alpha", "beta", "dae_pretrain_epochs"}, {"noise_var", "lambdas", "target"}),
])
def test_ladder_variants_name_the_fields_they_ignore(variant, unused, used):
    fields = LadderConfig(variant=variant).unused_fields()
    assert unused <= fields and not used & fields


def test_seed_summary_and_per_seed_csv():
    repeats = [{"variant": "dnn_mtl", "trial_id": f"t{s}", "run_id": f"r{s}", "config": {"seed": s},
                "best": {"val_ccc_arousal": 0.5 + 0.1 * s}} for s in range(3)]
    test = {"t0": {"test_ccc_arousal": 0.4}, "t1": {"test_ccc_arousal": 0.5}, "t2": {"test_ccc_arousal": 0.9}}
    summary, rows = seed_summary(repeats, test)
    assert summary["dnn_mtl.val_ccc_arousal.mean"] == pytest.approx(0.6)
    assert summary["dnn_mtl.test_ccc_arousal.std"] == pytest.approx(np.std([0.4, 0.5, 0.9], ddof=1))
    parsed = list(csv.DictReader(io.StringIO(per_seed_csv(rows))))
    assert [r["seed"] for r in parsed] == ["0", "1", "2"] and parsed[2]["run_id"] == "r2"
    assert float(parsed[1]["val_ccc_arousal"]) == pytest.approx(0.6)
    assert list(parsed[0])[4:] == ["val_ccc_arousal", "test_ccc_arousal"]  # validation first
    one, _ = seed_summary(repeats[:1], test)
    assert one["dnn_mtl.val_ccc_arousal.std"] == 0.0

"""Trials record where they ran (issue 13, item 2): the trainable's first result after each start carries its Ray
node id, device name and GPU ids, and the driver's MLflow logger turns them into tags of the trial's run.

Rides on the session's ``finished_sweep`` (one local node, CPU only); the multi-node and GPU cases differ only in
the values.
"""

from __future__ import annotations

import json
import re

from mlflow.tracking import MlflowClient

from cluster import tracking
from trainables.tune_entry import PLACEMENT_KEYS


def test_every_trial_run_is_tagged_with_its_node_and_device(finished_sweep):
    client = MlflowClient(finished_sweep.uri)
    exp = client.get_experiment_by_name("t_exp")
    runs = tracking.child_runs(client, exp.experiment_id, finished_sweep.result.parent_run_id)
    assert {r.data.tags[tracking.ROLE_TAG] for r in runs} == {"search", "repeat"}  # both trial phases
    for run in runs:
        tags = run.data.tags
        assert re.fullmatch(r"[0-9a-f]{56}", tags["emotune.node_id"]), tags  # Ray's hex node id
        assert tags["emotune.device"] == "cpu"
        assert tags["emotune.node_ip"]  # filled in by Tune on every result
        assert "emotune.gpu_ids" not in tags  # no GPU, no tag
        assert not set(run.data.metrics) & set(PLACEMENT_KEYS)  # strings never become metrics
    assert len({r.data.tags["emotune.node_id"] for r in runs}) == 1  # one local node


def test_only_the_first_result_carries_the_placement(finished_sweep):
    results = sorted((finished_sweep.tmp / "ray_results" / "t_sweep").glob("*/result.json"))
    long_enough = [p for p in results if len(p.read_text().splitlines()) > 1]
    assert long_enough
    lines = [json.loads(line) for line in long_enough[0].read_text().splitlines()]
    assert set(PLACEMENT_KEYS) <= set(lines[0])
    assert not any(set(PLACEMENT_KEYS) & set(line) for line in lines[1:])


def test_placement_tags_from_a_result():
    node_id, device, gpus = PLACEMENT_KEYS
    first = {"epoch": 1, node_id: "ab" * 28, device: "NVIDIA H200", gpus: "1", "node_ip": "10.0.0.7"}
    assert tracking.placement_tags(first) == {"emotune.node_id": "ab" * 28, "emotune.device": "NVIDIA H200",
                                              "emotune.gpu_ids": "1", "emotune.node_ip": "10.0.0.7"}
    assert tracking.placement_tags({**first, gpus: ""}).keys() == {"emotune.node_id", "emotune.device",
                                                                    "emotune.node_ip"}
    assert tracking.placement_tags({"epoch": 2, "node_ip": "10.0.0.7"}) == {}  # later results: nothing to tag

"""`emotune demo`: every family's demo config names synthetic corpora the demo can make, and the demo re-roots
the config's shard folders under its --out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.cli import DEMO_CORPORA, DEMOS, demo_data
from data_io.synth import LAYOUTS
from searchspace.schema import load_sweep_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("family", sorted(DEMOS))
def test_demo_configs_name_corpora_the_demo_synthesises(family, tmp_path):
    config = CONFIGS / DEMOS[family].config
    assert load_sweep_config(config).model.family == family
    needed, sets = demo_data(config, tmp_path / "shards")
    assert needed and all(DEMO_CORPORA[c][0] in LAYOUTS for c in needed)
    for item in sets:
        key, _, value = item.partition("=")
        assert key in ("data.shards", "data.inputs", "data.auxiliary")
        assert str(tmp_path / "shards") in value and "demo_out" not in value
        json.loads(value)


def test_selective_mtl_demo_ingests_both_corpora(tmp_path):
    needed, sets = demo_data(CONFIGS / DEMOS["selective_mtl"].config, tmp_path)
    assert needed == {"iemocap": ["fbank40"], "callcenter": ["fbank40"]}
    assert json.loads(sets[0].partition("=")[2]) == [str(tmp_path / "iemocap" / "fbank40"),
                                                      str(tmp_path / "callcenter" / "fbank40")]
    assert DEMO_CORPORA["callcenter"][1:] == ("csv", "callcenter")  # read by the csv adapter, named callcenter


def test_a_demo_config_outside_the_demo_folder_is_refused(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("data: {shards: [../shards/iemocap/fbank40]}\n")
    with pytest.raises(ValueError, match="must start with ../demo_out/shards/"):
        demo_data(path, tmp_path)

"""The sweep config schema (searchspace/schema.py): loading, every rejection naming its field, helpers."""

from __future__ import annotations

import copy
from pathlib import Path

import pydantic
import pytest
import yaml

from searchspace.schema import KNOWN_FAMILIES, VARIANTS, ConfigError, SweepConfig, load_sweep_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

FULL = {
    "name": "ladder_msp_podcast",
    "data": {"shards": ["shards/msp_podcast/functionals"], "protocol": "predefined", "protocol_options": {},
             "targets": ["arousal", "valence", "dominance"], "emotion_classes": None, "emotion_merge": {}},
    "model": {"family": "ladder", "variants": ["ladder_mtl"], "fixed": {"target": "arousal", "hidden": [256, 256]}},
    "search": {"sampler": "tpe", "num_samples": 16, "max_concurrent": 2, "scheduler": "asha", "grace_period": 2,
               "reduction_factor": 2, "metric": "val_ccc_arousal", "mode": "max", "seed": 0,
               "ranges": {"lr": [1.0e-5, 1.0e-2]}, "grids": {"lambdas": [0.1, 1, 10, 100]},
               "per_layer_lambda": False, "points_to_evaluate": [{"lr": 5.0e-5, "noise_var": 0.3}]},
    "train": {"max_epochs": 50, "patience": 5, "batch_size": 256, "select_per_variant": True},
    "repeats": {"seeds": 10},
    "resources": {"cpu": 1, "gpu": 0, "max_failures": 2},
    "tracking": {"uri": None, "experiment": None},
    "registry": {"model_name": None, "alias": "candidate"},
    "storage": {"path": "ray_results"},
}


def _with(path: str, value) -> dict:
    """FULL with one dotted key set (a value of ... deletes it)."""
    raw = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


def _problems(raw: dict, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        SweepConfig.model_validate(raw, **kwargs)
    return str(info.value)


def _write(tmp_path: Path, raw) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_full_config_round_trips(tmp_path):
    cfg = load_sweep_config(_write(tmp_path, FULL))
    assert cfg.search.ranges == {"lr": [1e-5, 1e-2]}
    assert cfg.model.fixed == {"target": "arousal", "hidden": [256, 256]}
    assert SweepConfig.model_validate(cfg.model_dump()) == cfg
    again = load_sweep_config(_write(tmp_path, cfg.model_dump(mode="json")))
    assert again == cfg


def test_minimal_config_takes_the_defaults():
    cfg = SweepConfig.model_validate({"name": "m", "data": {"shards": ["s"]},
                                      "model": {"family": "ladder", "variants": ["dae"]}})
    assert (cfg.search.sampler, cfg.search.num_samples, cfg.train.max_epochs, cfg.repeats.seeds) == ("tpe", 16, 50, 10)
    assert cfg.registry.alias == "candidate" and cfg.storage.path == "ray_results"
    assert cfg.data.targets == ["arousal", "valence", "dominance"]


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(config):
    cfg = load_sweep_config(config)
    assert cfg.model.family in KNOWN_FAMILIES


@pytest.mark.parametrize("path, value, field, says", [
    ("model.family", "ladr", "model.family",
     "use one of ['aae_mtl', 'center_loss', 'dcgan', 'ladder', 'selective_mtl']"),
    ("model.variants", ["ladder_mtl", "cnn"], "model.variants", "['cnn'] not valid for family 'ladder'"),
    ("model.variants", [], "model.variants", "at least 1"),
    ("model.fixed", {"alpha": 0.7, "beta": 0.5}, "model.fixed",
     "alpha + beta <= 1 must hold, got alpha=0.7, beta=0.5"),
    ("model.fixed", {"alpha": 1.5}, "model.fixed.alpha", "must be a number in [0, 1]"),
    ("model.fixed", {"variant": "dae"}, "model.fixed.variant", "model.variants"),
    ("search.ranges", {"lr": [0, 1e-2]}, "search.ranges.lr", "lr range must satisfy 0 < low < high"),
    ("search.ranges", {"alpha": [0.6, 0.4]}, "search.ranges.alpha", "low < high must hold"),
    ("search.ranges", {"lr": [1e-3]}, "search.ranges.lr", "must be [low, high], got [0.001]"),
    ("search.ranges", {"momentum": [0, 1]}, "search.ranges.momentum", "not a range knob of family 'ladder'"),
    ("search.ranges", {"dropout": [0.0, 1.0]}, "search", "dropout range must satisfy 0 <= low < high < 1"),
    ("search.grids", {"lambdas": [-1, 1]}, "search", "lambdas grid must be a non-empty list of distinct numbers"),
    ("search.grids", {"lambdas": []}, "search.grids.lambdas", "empty grid"),
    ("search.grids", {"variant": ["cnn"]}, "search.grids.variant", "not valid for family 'ladder'"),
    ("search.num_samples", 0, "search.num_samples", "greater than or equal to 1"),
    ("search.max_concurrent", 0, "search.max_concurrent", "greater than or equal to 1"),
    ("search.sampler", "bayes", "search.sampler", "'tpe', 'random', 'grid' or 'cmaes', got 'bayes'"),
    ("search.scheduler", "pbt", "search.scheduler", "'asha' or 'none'"),
    ("search.reduction_factor", 1, "search.reduction_factor", "greater than 1"),
    ("search.metric", "test_ccc_arousal", "search.metric",
     "selection uses validation data only; use e.g. val_ccc_arousal"),
    ("search.mode", "maximize", "search.mode", "'max' or 'min'"),
    ("data.targets", ["arousal", "emotion"], "data.emotion_classes", "required when data.targets includes emotion"),
    ("data.targets", ["arousal", "mood"], "data.targets", "'mood' is not a metadata target"),
    ("data.protocol", "random", "data.protocol", "'speaker_kfold', 'cross_corpus' or 'random_kfold'"),
    ("data.shards", [], "data.shards", "no shard folder"),
    ("data.inputs", {"mfcc": ["a"]}, "data.inputs", "both set"),
    ("data.include", {"utt_id": "(impro"}, "data.include.utt_id", "not a regular expression"),
    ("data.emotion_merge", {"excited": "joy"}, "data.emotion_merge", "not in data.emotion_classes"),
    ("data.shards", ..., "data.shards", "no shard folder"),
    ("train.max_epochs", 0, "train.max_epochs", "greater than or equal to 1"),
    ("repeats.seeds", 0, "repeats.seeds", "greater than or equal to 1"),
    ("resources.cpu", 0, "resources.cpu", "greater than 0"),
    ("resources.gpu", -0.5, "resources.gpu", "greater than or equal to 0"),
    ("name", "my sweep", "name", "use only letters, digits"),
    ("name", "..", "name", "not a folder name"),
])
def test_bad_config_names_the_field(path, value, field, says):
    raw = _with(path, value)
    if path == "data.emotion_merge":
        raw["data"]["emotion_classes"] = ["neutral", "happy"]
    message = _problems(raw)
    assert f"\n  - {field}: " in message
    assert says in message


def test_ranges_overlapping_fixed_knobs_are_rejected():
    raw = _with("model.fixed", {"lr": 1e-3})
    assert "search.ranges.lr: lr is also fixed in model.fixed" in _problems(raw)


def test_every_problem_is_listed_at_once():
    raw = _with("search.num_samples", 0)
    raw["search"]["sampler"] = "bayes"
    raw["train"]["patience"] = 0
    raw["data"]["targets"] = ["emotion"]
    message = _problems(raw)
    for field in ("search.num_samples", "search.sampler", "train.patience", "data.emotion_classes"):
        assert f"- {field}: " in message
    assert "(4 problems)" in message


@pytest.mark.parametrize("path, key", [
    ("", "trian"),
    ("search", "sampeler"),
    ("data", "shard"),
    ("resources", "gpus"),
])
def test_unknown_keys_are_rejected_by_name(path, key):
    raw = copy.deepcopy(FULL)
    (raw[path] if path else raw)[key] = 1
    dotted = f"{path}.{key}" if path else key
    message = _problems(raw)
    assert f"- {dotted}: unknown key" in message
    assert "valid keys here:" in message


def test_emotion_target_with_classes_is_valid():
    raw = _with("data.targets", ["emotion", "gender"])
    raw["data"]["emotion_classes"] = ["neutral", "happy", "sad", "angry"]
    raw["data"]["emotion_merge"] = {"excited": "happy"}
    assert SweepConfig.model_validate(raw).data.emotion_merge == {"excited": "happy"}


def test_families_argument_replaces_the_known_list(tmp_path):
    message = _problems(_with("model.family", "dcgan"), context={"families": ["ladder"]})
    assert "model.family: 'dcgan' is not a registered family; use one of ['ladder']" in message
    with pytest.raises(ConfigError, match="model.family"):
        load_sweep_config(_write(tmp_path, _with("model.family", "dcgan")), families=("ladder",))


def test_known_families_match_the_registry():
    registry = pytest.importorskip("trainables.registry")  # torch; searchspace cannot import it
    assert set(registry.FAMILIES) <= set(KNOWN_FAMILIES)
    for name, variants in VARIANTS.items():
        assert name in KNOWN_FAMILIES and variants


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_sweep_config(missing)


@pytest.mark.parametrize("text, says", [("name: [unclosed", "not valid YAML"), ("- a\n- b\n", "expected a mapping")])
def test_bad_yaml_is_a_config_error(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=says):
        load_sweep_config(path)


def test_errors_from_a_file_name_it(tmp_path):
    path = _write(tmp_path, _with("search.num_samples", 0))
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path)
    assert str(path) in str(info.value) and "search.num_samples" in str(info.value)
    assert info.value.problems[0].startswith("search.num_samples: ")


def test_shard_paths_resolve_against_the_config_folder(tmp_path):
    absolute = (tmp_path / "elsewhere" / "functionals").resolve()
    raw = _with("data.shards", ["shards/msp_podcast/functionals", "../other/functionals", str(absolute)])
    folder = tmp_path / "configs"
    folder.mkdir()
    cfg = load_sweep_config(_write(folder, raw))
    assert cfg.resolved_shards(folder) == [
        (folder / "shards/msp_podcast/functionals").resolve(),
        (tmp_path / "other/functionals").resolve(),
        absolute,
    ]
    assert cfg.data.shards[0] == "shards/msp_podcast/functionals"  # stored as written; resolved on request


def test_to_flat_dict():
    flat = SweepConfig.model_validate(FULL).to_flat_dict()
    assert flat["search.sampler"] == "tpe"
    assert flat["name"] == "ladder_msp_podcast"
    assert flat["model.fixed.target"] == "arousal"
    assert flat["model.fixed.hidden"] == [256, 256]
    assert flat["search.ranges.lr"] == [1e-5, 1e-2]
    assert flat["data.protocol_options"] == {}
    assert flat["tracking.uri"] is None
    assert not any(isinstance(v, dict) and v for v in flat.values())


def test_with_overrides_for_smoke():
    cfg = SweepConfig.model_validate(FULL)
    smoke = cfg.with_overrides({"search.num_samples": 2, "train.max_epochs": 2, "repeats.seeds": 2,
                                "model.fixed.target": "valence", "search.metric": "val_ccc_valence"})
    assert (smoke.search.num_samples, smoke.train.max_epochs, smoke.repeats.seeds) == (2, 2, 2)
    assert smoke.model.fixed == {"target": "valence", "hidden": [256, 256]}
    assert (cfg.search.num_samples, cfg.model.fixed["target"]) == (16, "arousal")  # the original is untouched


@pytest.mark.parametrize("overrides, says", [
    ({"search.num_samples": 0}, "search.num_samples: "),
    ({"search.nmu_samples": 2}, "search.nmu_samples: unknown key"),
    ({"name.x": 1}, "name.x: name is a value, not a section"),
    ({"search.metric": "test_ccc"}, "selection uses validation data only"),
])
def test_with_overrides_validates(overrides, says):
    with pytest.raises(ConfigError, match=says):
        SweepConfig.model_validate(FULL).with_overrides(overrides)


def test_config_is_frozen():
    cfg = SweepConfig.model_validate(FULL)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.search.num_samples = 3


def test_data_auxiliary_encoders_and_corpus_protocols(tmp_path):
    raw = _with("data.targets", ["emotion", "gender", "speaker", "va3"])
    raw["data"].update(emotion_classes=["neutral", "happy", "sad", "angry"],
                       encoders={"va3": {"encoder": "kmeans", "k": 3}, "speaker": "speakers"},
                       auxiliary=["shards/ami/fbank40", {"shards": "shards/librispeech/fbank40",
                                                         "targets": ["gender", "speaker"]}],
                       corpus_protocols={"callcenter": {"protocol": "random_kfold", "k": 5}})
    cfg = SweepConfig.model_validate(raw)
    assert cfg.data.auxiliary[0].shards == "shards/ami/fbank40" and cfg.data.auxiliary[0].targets == []
    assert cfg.data.auxiliary[1].targets == ["gender", "speaker"]
    assert cfg.resolved_auxiliary(tmp_path)[1] == (tmp_path / "shards/librispeech/fbank40").resolve()
    assert cfg.data.corpus_protocols["callcenter"]["protocol"] == "random_kfold"


@pytest.mark.parametrize("data, field, says", [
    ({"targets": ["arousal", "va3"]}, "data.targets", "needs its encoder in data.encoders"),
    ({"encoders": {"emotion": "soft"}}, "data.encoders.emotion", "not in data.targets"),
    ({"auxiliary": [{"shards": "x", "targets": ["gender"]}]}, "data.auxiliary.0.targets", "not in data.targets"),
    ({"auxiliary": [{"path": "x"}]}, "data.auxiliary.0.path", "unknown key"),
    ({"corpus_protocols": {"callcenter": {"protocol": "kfold"}}}, "data.corpus_protocols.callcenter.protocol",
     "must be one of"),
])
def test_bad_data_sections_name_the_field(data, field, says):
    raw = copy.deepcopy(FULL)
    raw["data"].update(data)
    message = _problems(raw)
    assert f"{field}: " in message and says in message

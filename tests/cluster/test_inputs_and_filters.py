"""Sweep data options every family can use: row filters (``data.include`` / ``data.exclude``) and alternative input
feature sets searched as ``input`` (``data.inputs``), plus the center-loss paper's tables and t-SNE figure."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from cluster import plots
from cluster.report import center_loss_tables, paper_tables
from cluster.sweep import arm_label, filter_rows, prepare, space_with_constants
from tests.cluster.helpers import write_config


def _center_loss_config(tmp_path, shards, **overrides):
    return write_config(tmp_path, shards / "iemocap" / "mfcc", **{
        "data": {"inputs": {"mfcc": [str(shards / "iemocap" / "mfcc")],
                            "logmel128": [str(shards / "iemocap" / "logmel128")]},
                 "include": {"utt_id": "_impro", "emotion": "^(neutral|happy|sad|angry)$"},
                 "protocol": "loso", "targets": ["emotion"], "emotion_classes": ["neutral", "happy", "sad", "angry"]},
        "model": {"family": "center_loss", "variants": ["s", "s_c"],
                  "fixed": {"filters": 4, "hidden": 8, "decoder_hidden": [16], "frames": 32}},
        "search.metric": "val_ua_emotion", "search.ranges": {}, **overrides})


def test_the_improvised_filter_keeps_only_improvised_rows_in_every_fold(iemocap_cl_shards, tmp_path):
    prep = prepare(_center_loss_config(tmp_path, iemocap_cl_shards))
    meta = prep.shard_sets[0].metadata()
    improvised = {u for u, e in zip(meta.column("utt_id").to_pylist(), meta.column("emotion").to_pylist(),
                                    strict=True) if "_impro" in u and e in ("neutral", "happy", "sad", "angry")}
    assert 0 < len(improvised) < meta.num_rows  # the synthetic corpus has scripted dialogs too
    used = set()
    for fold in prep.folds:
        used |= {*fold.train_ids, *fold.val_ids, *fold.test.open("test")}
    assert used == improvised
    assert len(prep.folds) == 5  # loso: one fold per session


def test_filter_rows_errors_name_the_problem(iemocap_cl_shards):
    from data_io import shards

    meta = shards.open_shards(iemocap_cl_shards / "iemocap" / "mfcc").metadata()
    assert filter_rows(meta, {}, {}) is meta
    kept = filter_rows(meta, {"utt_id": "_impro"}, {"speaker": "F$"})
    assert all("_impro" in u for u in kept.column("utt_id").to_pylist())
    assert all(not s.endswith("F") for s in kept.column("speaker").to_pylist())
    with pytest.raises(ValueError, match="data.include.dialog: no such metadata column"):
        filter_rows(meta, {"dialog": "x"}, {})
    with pytest.raises(ValueError, match="leave no row"):
        filter_rows(meta, {"utt_id": "^nothing$"}, {})


def test_inputs_are_searched_and_label_the_arms(iemocap_cl_shards, tmp_path):
    prep = prepare(_center_loss_config(tmp_path, iemocap_cl_shards))
    assert sorted(prep.inputs) == ["logmel128", "mfcc"]
    assert [ss.manifest.feature_set for ss in prep.sets_of({"input": "logmel128"})] == ["logmel128"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        params = space_with_constants(study.ask(), prep.family.space, prep.constants, prep.choices,
                                      **prep.space_kwargs)
        seen.add(arm_label(params))
    assert seen == {"s-mfcc", "s-logmel128", "s_c-mfcc", "s_c-logmel128"}
    assert arm_label({"variant": "dnn_mtl"}) == "dnn_mtl"


def test_family_arm_params_split_selection():
    from cluster.sweep import select

    assert arm_label({"variant": "mtl", "half": True}, ("half",)) == "mtl-half"
    assert arm_label({"variant": "mtl", "half": False}, ("half",)) == "mtl"
    assert arm_label({"variant": "mtl", "input": "fbank40", "heads": 4}, ("heads",)) == "mtl-fbank40-heads4"
    results = [{"variant": arm_label({"variant": "mtl", "half": h}, ("half",)), "trial_id": f"t{i}",
                "config": {"variant": "mtl", "half": h}, "best": {"val_ua_emotion": 0.5 + i / 10}, "best_epoch": 1}
               for i, h in enumerate([False, True, False])]
    chosen = select(results, "val_ua_emotion", "max", per_variant=True)
    assert {k: v["trial_id"] for k, v in chosen.items()} == {"mtl": "t2", "mtl-half": "t1"}


def test_inputs_of_other_utterances_are_refused(iemocap_cl_shards, msp_functionals, tmp_path):
    other = msp_functionals[0] / "msp_podcast" / "logmel"
    path = _center_loss_config(tmp_path, iemocap_cl_shards, **{
        "data.inputs": {"mfcc": [str(iemocap_cl_shards / "iemocap" / "mfcc")], "logmel128": [str(other)]}})
    with pytest.raises(ValueError, match=r"data.inputs.(mfcc|logmel128): its shards hold other utterances"):
        prepare(path)


def test_grid_search_covers_every_variant_and_input(iemocap_cl_shards, tmp_path):
    prep = prepare(_center_loss_config(tmp_path, iemocap_cl_shards, **{"search.sampler": "grid"}))
    assert prep.grid["variant"] == ["s", "s_c"] and sorted(prep.grid["input"]) == ["logmel128", "mfcc"]
    assert prep.num_samples == 4


def test_center_loss_tables_have_the_papers_rows():
    values = {f"{v}-{i}": {"test_wa_emotion": [0.70, 0.72], "test_ua_emotion": [0.61, 0.63],
                           **({"test_mse_reconstruction": [3.6e-4, 3.4e-4]} if "a" in v.split("_") else {})}
              for v in ("s", "s_a", "s_c", "s_a_c", "a") for i in ("mfcc", "logmel128")}
    text = center_loss_tables(values)
    assert "| S+A+C | mfcc | 71.0 ± 1.4 | 62.0 ± 1.4 | 2 |" in text
    assert "| A | logmel128 | 3.50 ± 0.14 | 2 |" in text
    table1 = text.split("Table 2")[0]
    assert "| A |" not in table1 and table1.count("| S") == 8
    assert paper_tables("ladder", values) == "" and paper_tables("center_loss", values) == text


def test_tsne_plot_samples_per_class_and_draws_panels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [300, 20, 30, 40])
    feats = rng.normal(size=(len(labels), 8)) + labels[:, None]
    idx = plots.sample_per_class(labels, 250)
    assert np.bincount(labels[idx]).tolist() == [250, 20, 30, 40]
    png = plots.tsne_plot({"S": (feats, labels), "S+C": (feats * 0.5, labels)}, ["n", "h", "s", "a"], title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least 3 points"):
        plots.tsne_plot({"S": (feats[:2], labels[:2])}, ["n"], title="t")


def test_a_searched_batch_size_is_the_drivers_choice_for_any_family(tmp_path, msp_functionals):
    """search.grids.batch_size: every sampler suggests it (the grid crosses it), it replaces train.batch_size, and
    points may name it; bad values fail at load."""
    from searchspace.schema import ConfigError

    shard_dir = msp_functionals[0] / "msp_podcast" / "functionals"
    prep = prepare(write_config(tmp_path, shard_dir, **{"search.grids": {"batch_size": [16, 32]}}))
    assert "batch_size" not in prep.constants and prep.choices == {"batch_size": [16, 32]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {space_with_constants(study.ask(), prep.family.space, prep.constants, prep.choices,
                                 **prep.space_kwargs)["batch_size"] for _ in range(12)}
    assert seen == {16, 32}
    grid = prepare(write_config(tmp_path, shard_dir, **{"search.sampler": "grid", "search.ranges": {},
                                                         "search.grids": {"batch_size": [16, 32]}}))
    others = [len(v) for k, v in grid.grid.items() if k != "batch_size"]
    assert grid.grid["batch_size"] == [16, 32] and grid.num_samples == 2 * int(np.prod(others))  # the grid crosses it
    pointed = prepare(write_config(tmp_path, shard_dir, **{"search.grids": {"batch_size": [16, 32]},
                                                            "search.points_to_evaluate": [{"batch_size": 32}]}))
    assert pointed.points == [{"batch_size": 32}]
    with pytest.raises(ConfigError, match="batch_size"):
        prepare(write_config(tmp_path, shard_dir, **{"search.grids": {"batch_size": [0, 32]}}))

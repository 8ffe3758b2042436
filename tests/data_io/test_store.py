"""The shared feature store: per-fold normalisation from training rows only, regions in frames, loading."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data_io.store import FeatureStore, Normalizer, fit_normalizer


def make_store(lengths, n_bins=3, seed=0, speech=None, words=None, corpus=None, frame_rate=100.0, values=None):
    """A hand-made frame-feature store: row i has lengths[i] frames of random values (or ``values[i]``)."""
    rng = np.random.default_rng(seed)
    mats = values if values is not None else [rng.normal(5.0 + i, 1.0 + i, (t, n_bins)).astype(np.float32)
                                              for i, t in enumerate(lengths)]
    n = len(mats)
    meta = pa.table({
        "utt_id": [f"u{i:03d}" for i in range(n)],
        "corpus": corpus or ["c"] * n,
        "speech": pa.array(speech or [[] for _ in range(n)], type=pa.list_(pa.float32())),
        "words": pa.array(words or [None] * n, type=pa.list_(pa.float32())),
    })
    flat = np.concatenate([m.reshape(-1) for m in mats]).astype(np.float32)
    shapes = np.array([m.shape for m in mats], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]).astype(np.int64)
    store = FeatureStore(meta=meta, values=flat, offsets=offsets, shapes=shapes, label_scales={}, feature_set="fs",
                         frame_rate=None if shapes[:, 0].max() == 1 else frame_rate)
    return store, mats


@pytest.mark.parametrize("kind", ["zscore", "minmax"])
def test_fold_statistics_equal_the_training_frames_and_ignore_other_rows(kind):
    store, mats = make_store([7, 30, 12, 45, 3])
    train = np.array([0, 2, 3])
    frames = np.concatenate([mats[i] for i in train]).astype(np.float64)
    norm = fit_normalizer(store, train, kind)
    if kind == "zscore":
        np.testing.assert_allclose(norm.shift, frames.mean(0), rtol=1e-6)
        np.testing.assert_allclose(norm.scale, frames.std(0), rtol=1e-5)
    else:
        np.testing.assert_allclose(norm.shift, frames.min(0), rtol=1e-6)
        np.testing.assert_allclose(norm.scale, frames.max(0) - frames.min(0), rtol=1e-5)
    # Rows 1 and 4 (validation) change: the statistics do not.
    other = [m.copy() for m in mats]
    other[1] *= 100.0
    other[4] -= 50.0
    store2, _ = make_store([7, 30, 12, 45, 3], values=other)
    again = fit_normalizer(store2, train, kind)
    np.testing.assert_array_equal(norm.shift, again.shift)
    np.testing.assert_array_equal(norm.scale, again.scale)


def test_vector_statistics_and_normalizer_apply():
    store, mats = make_store([1] * 50, n_bins=6)
    assert store.utterance_level and store.row_stats is None
    train = np.arange(0, 50, 2)
    x = np.stack([mats[i][0] for i in train]).astype(np.float64)
    norm = fit_normalizer(store, train)
    np.testing.assert_allclose(norm.shift, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.scale, x.std(0), rtol=1e-5)
    z = norm.apply(store.vectors()[train].copy())
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    assert fit_normalizer(store, train, "none").apply(store.vectors()[:2].copy()).tolist() == \
        store.vectors()[:2].tolist()


def test_constant_bins_are_floored_not_divided_by_zero():
    mats = [np.ones((4, 2), np.float32), np.ones((6, 2), np.float32)]
    store, _ = make_store([4, 6], n_bins=2, values=mats)
    norm = fit_normalizer(store, np.array([0, 1]))
    assert np.all(np.isfinite(norm.apply(mats[0].copy())))
    with pytest.raises(ValueError, match="normalization"):
        fit_normalizer(store, np.array([0]), "robust")
    with pytest.raises(ValueError, match="at least one"):
        fit_normalizer(store, np.array([], dtype=np.int64))


def test_row_statistics_are_exact_across_blocks(monkeypatch):
    import data_io.store as store_mod

    monkeypatch.setattr(store_mod, "_BLOCK_VALUES", 40)  # force many blocks, rows straddling block ends
    store, mats = make_store([9, 17, 4, 30, 11, 2], n_bins=4)
    for i, m in enumerate(mats):
        np.testing.assert_allclose(store.row_stats.mean[i], m.mean(0), rtol=1e-6)
        np.testing.assert_allclose(store.row_stats.m2[i], ((m - m.mean(0)) ** 2).sum(0), rtol=1e-5)
        np.testing.assert_array_equal(store.row_stats.low[i], m.min(0))


def test_regions_convert_seconds_to_frames_and_clip():
    store, _ = make_store([100, 50], speech=[[0.1, 0.35, 0.8, 2.0], []], words=[[0.2, 0.25], None])
    np.testing.assert_array_equal(store.regions(0, "speech"), [[10, 35], [80, 100]])
    np.testing.assert_array_equal(store.regions(0, "words"), [[20, 25]])
    assert store.regions(1, "speech").shape == (0, 2) and store.regions(1, "words").shape == (0, 2)
    np.testing.assert_array_equal(store.speech_frames(0), np.r_[10:35, 80:100])
    np.testing.assert_array_equal(store.speech_frames(1), np.arange(50))  # no speech detected: every frame


def test_subset_keeps_rows_values_and_statistics():
    store, mats = make_store([5, 8, 6], speech=[[0.0, 0.02], [0.01, 0.05], []])
    sub = store.subset(["u002", "u000"])
    np.testing.assert_array_equal(sub.matrix(0), mats[2])
    np.testing.assert_array_equal(sub.matrix(1), mats[0])
    np.testing.assert_array_equal(sub.row_stats.mean[0], store.row_stats.mean[2])
    assert sub.meta.column("utt_id").to_pylist() == ["u002", "u000"]
    with pytest.raises(KeyError, match="u999"):
        store.rows(["u999"])


def test_normalizer_is_a_plain_affine_map():
    norm = Normalizer("zscore", np.array([1.0, 2.0], np.float32), np.array([2.0, 4.0], np.float32))
    np.testing.assert_allclose(norm.apply(np.array([[3.0, 6.0]], np.float32)), [[1.0, 1.0]])


def test_load_store_marks_auxiliary_rows_and_refuses_mixed_feature_sets(frame_shards):
    from data_io.shards import open_shards
    from data_io.store import load_store

    out = frame_shards
    iemocap = open_shards(out / "iemocap" / "fbank40")
    libri = open_shards(out / "librispeech" / "fbank40")
    store = load_store([iemocap], [(libri, ("gender", "speaker"))])
    assert store.num_rows == iemocap.num_rows + libri.num_rows
    aux = store.auxiliary_rows()
    assert len(aux) == libri.num_rows
    assert set(store.meta.column("corpus").take(pa.array(aux)).to_pylist()) == {"librispeech"}
    assert store.frame_rate == pytest.approx(100.0)
    assert store.sources[1].auxiliary and store.sources[1].targets == ("gender", "speaker")
    with pytest.raises(ValueError, match="same feature set"):
        load_store([open_shards(out / "iemocap" / "logmel")], [(libri, ())])

"""Target encoding, normalisation, and the torch datasets that produce the trainables/base.py batch layout."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from data_io import datasets
from data_io.datasets import (
    ArrayDataset,
    Standardizer,
    WindowDataset,
    encode_targets,
    pool_by_utterance,
    window_starts,
)


def make_meta() -> pa.Table:
    return pa.table({
        "utt_id": ["a", "b", "c", "d", "e", "f"],
        "corpus": ["iemocap"] * 6,
        "speaker": ["s2", "s1", "s2", "s3", "s1", "s3"],
        "gender": ["F", "M", "F", None, "M", "F"],
        "style": ["acted"] * 6,
        "emotion": ["neutral", "excited", "happy", None, "frustrated", "angry"],
        "arousal": pa.array([1.0, 5.0, 3.0, None, 2.0, 4.5], pa.float32()),
        "valence": pa.array([None, 1.0, 5.0, 2.5, 3.0, 3.0], pa.float32()),
        "dominance": pa.array([None] * 6, pa.float32()),
    })


EMO4 = ["neutral", "happy", "sad", "angry"]


def test_attribute_scaling_and_masks() -> None:
    enc = encode_targets(make_meta(), ["arousal", "valence"], label_scale=(1.0, 5.0))
    # 2 * (y - 1) / 4 - 1 by hand: 1 -> -1, 5 -> 1, 3 -> 0, 2 -> -0.5, 4.5 -> 0.75; nulls -> 0, masked.
    np.testing.assert_allclose(enc["arousal"], [-1.0, 1.0, 0.0, 0.0, -0.5, 0.75])
    assert enc["arousal_mask"].tolist() == [True, True, True, False, True, True]
    np.testing.assert_allclose(enc["valence"], [0.0, -1.0, 1.0, -0.25, 0.0, 0.0])
    assert enc["valence_mask"].tolist() == [False, True, True, True, True, True]
    assert enc["arousal"].dtype == np.float32 and enc["arousal_mask"].dtype == bool


def test_attribute_scale_per_corpus_and_errors() -> None:
    meta = pa.table({"corpus": ["x", "y"], "arousal": pa.array([4.0, 4.0], pa.float32())})
    enc = encode_targets(meta, ["arousal"], label_scale={"x": (1, 7), "y": (1, 5)})
    np.testing.assert_allclose(enc["arousal"], [0.0, 0.5])
    with pytest.raises(ValueError, match="no label_scale"):
        encode_targets(meta, ["arousal"], label_scale=None)
    with pytest.raises(ValueError, match="outside its label_scale"):
        encode_targets(meta, ["arousal"], label_scale=(1, 3))
    # A target without any label needs no scale: every row is simply masked.
    enc = encode_targets(make_meta(), ["dominance"], label_scale=None)
    assert not enc["dominance_mask"].any() and np.all(enc["dominance"] == 0)


def test_emotion_merge_and_mask() -> None:
    meta = make_meta()
    enc = encode_targets(meta, ["emotion"], None, classes={"emotion": EMO4})
    assert enc["emotion"].tolist() == [0, 0, 1, 0, 0, 3]
    assert enc["emotion_mask"].tolist() == [True, False, True, False, False, True]
    merged = encode_targets(meta, ["emotion"], None, classes={"emotion": EMO4}, merge={"excited": "happy"})
    assert merged["emotion"].tolist() == [0, 1, 1, 0, 0, 3]
    assert merged["emotion_mask"].tolist() == [True, True, True, False, False, True]
    assert merged["emotion"].dtype == np.int64
    with pytest.raises(ValueError, match="classes\\['emotion'\\]"):
        encode_targets(meta, ["emotion"], None)
    with pytest.raises(ValueError, match="maps onto classes"):
        encode_targets(meta, ["emotion"], None, classes={"emotion": EMO4}, merge={"excited": "joy"})
    with pytest.raises(ValueError, match="vocabulary"):
        encode_targets(meta, ["emotion"], None, classes={"emotion": ["neutral", "angy"]})


def test_speaker_gender_default_classes_and_unknown_target() -> None:
    meta = make_meta()
    enc = encode_targets(meta, ["speaker", "gender"], None)
    assert enc["speaker"].tolist() == [1, 0, 1, 2, 0, 2]  # sorted unique: s1, s2, s3
    assert enc["gender"].tolist() == [0, 1, 0, 0, 1, 0] and enc["gender_mask"].tolist()[3] is False
    assert datasets.resolve_classes(meta, ["speaker", "arousal"]) == {"speaker": ["s1", "s2", "s3"]}
    with pytest.raises(ValueError, match="valid targets are .*arousal.*emotion"):
        encode_targets(meta, ["loudness"], None)


def test_standardizer_fits_on_training_rows_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    x[80:] += 50.0  # the held-out rows live elsewhere
    train = np.arange(80)
    on_train = Standardizer().fit(x, rows=train)
    on_all = Standardizer().fit(x)
    np.testing.assert_allclose(on_train.mean, x[:80].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(on_train.std, x[:80].std(axis=0), rtol=1e-5)
    assert np.all(np.abs(on_all.mean - on_train.mean) > 5)
    z = on_train.transform(x[:80])
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)
    restored = Standardizer()
    restored.load_state_dict(on_train.state_dict())
    np.testing.assert_array_equal(restored.transform(x), on_train.transform(x))
    assert all(isinstance(v, float) for v in on_train.state_dict()["mean"])


def test_standardizer_frames_and_floor() -> None:
    mats = [np.full((3, 2), [1.0, 7.0], np.float32), np.full((5, 2), [3.0, 7.0], np.float32)]
    st = Standardizer().fit(mats)
    # Over all 8 frames: mean of feature 0 = (3*1 + 5*3) / 8; feature 1 is constant -> std floored.
    np.testing.assert_allclose(st.mean, [18 / 8, 7.0])
    assert st.std[1] == pytest.approx(1e-5)
    out = st.transform(mats)
    assert isinstance(out, list) and out[1].shape == (5, 2) and np.all(out[0][:, 1] == 0)
    with pytest.raises(RuntimeError, match="fit"):
        Standardizer().transform(mats[0])


def _targets(n: int) -> dict[str, np.ndarray]:
    return {
        "arousal": np.linspace(-1, 1, n).astype(np.float32), "arousal_mask": np.arange(n) % 2 == 0,
        "emotion": (np.arange(n) % 4).astype(np.int64), "emotion_mask": np.ones(n, dtype=bool),
    }


def test_array_dataset_functionals_with_dataloader() -> None:
    x = np.arange(10 * 6, dtype=np.float32).reshape(10, 6)
    x.setflags(write=False)  # as handed out by Ray's object store
    ds = ArrayDataset(x, _targets(10), rows=[1, 3, 5, 7, 9])
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert set(batch) == {"x", "arousal", "arousal_mask", "emotion", "emotion_mask", "utt_index"}
    assert batch["x"].shape == (4, 6) and batch["x"].dtype == torch.float32
    assert batch["arousal"].shape == (4,) and batch["arousal"].dtype == torch.float32
    assert batch["emotion"].dtype == torch.int64 and batch["emotion_mask"].dtype == torch.bool
    assert batch["utt_index"].tolist() == [1, 3, 5, 7] and batch["utt_index"].dtype == torch.int64
    assert torch.equal(batch["x"][1], torch.from_numpy(x[3].copy()))
    assert batch["arousal_mask"].tolist() == [False] * 4  # odd rows are unlabelled


def test_array_dataset_frames_crop_pad_and_standardizer() -> None:
    mats = [np.tile(np.arange(t, dtype=np.float32)[:, None], (1, 3)) for t in (10, 4)]
    targets = _targets(2)
    start = ArrayDataset(mats, targets, frames=6, crop="start")
    center = ArrayDataset(mats, targets, frames=6, crop="center")
    assert start[0]["x"][:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert center[0]["x"][:, 0].tolist() == [2, 3, 4, 5, 6, 7]
    assert center[1]["x"][:, 0].tolist() == [0, 1, 2, 3, 0, 0]  # zero-padded at the end
    gen = torch.Generator().manual_seed(0)
    rand = ArrayDataset(mats, targets, frames=6, crop="random", generator=gen)
    firsts = {int(rand[0]["x"][0, 0]) for _ in range(40)}
    assert firsts <= set(range(5)) and len(firsts) > 1
    st = Standardizer().fit(mats, rows=[0])
    item = ArrayDataset(mats, targets, frames=6, standardizer=st)[1]
    np.testing.assert_allclose(item["x"][:4, 0].numpy(), (np.arange(4) - 4.5) / st.std[0], rtol=1e-5)
    assert torch.all(item["x"][4:] == 0)  # padding is the training mean in normalised space
    batch = next(iter(DataLoader(center, batch_size=2)))
    assert batch["x"].shape == (2, 6, 3)
    with pytest.raises(ValueError, match="frames="):
        ArrayDataset(mats, targets)
    with pytest.raises(ValueError, match="Generator"):
        ArrayDataset(mats, targets, frames=6, crop="random")
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        ArrayDataset(mats, _targets(3), frames=6)


def test_window_starts_counts() -> None:
    assert window_starts(600, 256, 128).tolist() == [0, 128, 256, 344]
    assert window_starts(512, 256, 128).tolist() == [0, 128, 256]
    assert window_starts(600, 256, 256).tolist() == [0, 256, 344]
    assert window_starts(100, 256, 128).tolist() == [0]
    assert window_starts(256, 256, 128).tolist() == [0]


def test_window_dataset_windows_padding_and_dataloader() -> None:
    mats = [np.ones((600, 5), np.float32), np.full((100, 5), 2.0, np.float32), np.ones((300, 5), np.float32)]
    ds = WindowDataset(mats, _targets(3), rows=[0, 1], width=256, hop=128)
    assert len(ds) == 4 + 1
    assert ds.utt_index.tolist() == [0, 0, 0, 0, 1]
    short = ds[4]
    assert short["x"].shape == (256, 5)
    assert torch.all(short["x"][:100] == 2) and torch.all(short["x"][100:] == 0)
    assert short["utt_index"].item() == 1 and short["emotion"].item() == 1
    batches = list(DataLoader(ds, batch_size=3))
    assert batches[0]["x"].shape == (3, 256, 5) and batches[1]["utt_index"].tolist() == [0, 1]
    assert set(batches[0]) == {"x", "arousal", "arousal_mask", "emotion", "emotion_mask", "utt_index"}
    assert len(WindowDataset(mats, _targets(3), width=256)) == 3 + 1 + 2  # hop defaults to width


def test_pool_by_utterance() -> None:
    idx = np.array([4, 4, 1, 4, 1])
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0]])
    utts, pooled = pool_by_utterance(idx, probs)
    assert utts.tolist() == [1, 4]
    np.testing.assert_allclose(pooled, [[0.1, 0.9], [0.6, 0.4]])
    _, mx = pool_by_utterance(torch.as_tensor(idx), torch.as_tensor(probs[:, 0]), how="max")
    np.testing.assert_allclose(mx, [0.2, 0.9])
    with pytest.raises(ValueError, match="how"):
        pool_by_utterance(idx, probs, how="median")

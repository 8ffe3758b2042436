"""Example makers: vectors, fixed length, crops centred on words/speech, windows pooled back to utterances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_io.examples import ExampleSpec, draw, evaluation_index, gather, pool, training_index, window_starts
from data_io.store import Normalizer
from tests.data_io.test_store import make_store


def frame_numbers(lengths, n_bins=2):
    """Rows whose frame t holds the value t + 1 in every bin (0 is left for padding)."""
    return [np.repeat(np.arange(1, t + 1, dtype=np.float32)[:, None], n_bins, axis=1) for t in lengths]


IDENTITY = Normalizer("none", np.zeros(2, np.float32), np.ones(2, np.float32))


def test_vector_examples_are_the_normalised_vectors():
    store, mats = make_store([1] * 6, n_bins=4)
    spec = ExampleSpec.vector()
    assert spec.input_shape(store) == (4,)
    norm = Normalizer("zscore", np.full(4, 1.0, np.float32), np.full(4, 2.0, np.float32))
    idx = evaluation_index(spec, store, np.array([3, 1]))
    np.testing.assert_allclose(gather(spec, store, idx, norm), (np.stack([mats[3][0], mats[1][0]]) - 1) / 2)
    with pytest.raises(ValueError, match="frame features"):
        ExampleSpec.fixed(10).input_shape(store)


def test_fixed_from_start_and_centre_pads_short_utterances():
    store, _ = make_store([10, 4], n_bins=2, values=frame_numbers([10, 4]))
    start = ExampleSpec.fixed(6)
    x = gather(start, store, evaluation_index(start, store, np.array([0, 1])), IDENTITY)
    assert x.shape == (2, 6, 2)
    np.testing.assert_array_equal(x[0, :, 0], [1, 2, 3, 4, 5, 6])  # the first 6 frames
    np.testing.assert_array_equal(x[1, :, 0], [1, 2, 3, 4, 0, 0])  # zero padded at the end
    centre = ExampleSpec.fixed(6, anchor="center")
    x = gather(centre, store, evaluation_index(centre, store, np.array([0])), IDENTITY)
    np.testing.assert_array_equal(x[0, :, 0], [3, 4, 5, 6, 7, 8])
    assert ExampleSpec.fixed(6).input_shape(store) == (6, 2)


def test_padding_comes_after_normalisation():
    store, _ = make_store([3], n_bins=2, values=frame_numbers([3]))
    norm = Normalizer("zscore", np.full(2, 2.0, np.float32), np.full(2, 0.5, np.float32))
    spec = ExampleSpec.fixed(5)
    x = gather(spec, store, evaluation_index(spec, store, np.array([0])), norm)
    np.testing.assert_allclose(x[0, :, 0], [-2, 0, 2, 0, 0])  # padded frames are the training mean (0)


def _crop_frames(spec, store, rows, seed, n=1):
    g = torch.Generator().manual_seed(seed)
    base = training_index(spec, store, rows)
    out = []
    for _ in range(n):
        idx = draw(spec, store, base, g)
        out.append(gather(spec, store, idx, IDENTITY)[:, :, 0] - 1)  # frame numbers
    return np.concatenate(out)


def test_random_crops_stay_within_speech_words_and_are_seeded():
    n = 1000
    store, _ = make_store([n, n, n], n_bins=2, values=frame_numbers([n] * 3),
                          speech=[[6.0, 7.0], [6.0, 7.0], []], words=[[1.0, 1.2], None, None])
    rows = np.zeros(200, np.int64)
    words = _crop_frames(ExampleSpec.crop(50, centre="words"), store, rows, seed=0)
    assert words.min() >= 100 - 25 and words.max() < 120 + 25  # centred inside the word [100, 120)
    speech = _crop_frames(ExampleSpec.crop(50, centre="speech"), store, rows, seed=0)
    assert speech.min() >= 600 - 25 and speech.max() < 700 + 25  # centred on a speech frame [600, 700)
    # No word alignment: the words policy falls back to speech; no speech: uniform over the utterance.
    fallback = _crop_frames(ExampleSpec.crop(50, centre="words"), store, np.ones(200, np.int64), seed=0)
    assert fallback.min() >= 575 and fallback.max() < 725
    uniform = _crop_frames(ExampleSpec.crop(50, centre="speech"), store, np.full(400, 2, np.int64), seed=0)
    assert uniform.min() < 100 and uniform.max() > 900
    again = _crop_frames(ExampleSpec.crop(50, centre="speech"), store, rows, seed=0)
    other = _crop_frames(ExampleSpec.crop(50, centre="speech"), store, rows, seed=1)
    np.testing.assert_array_equal(speech, again)
    assert not np.array_equal(speech, other)
    # Every crop is a contiguous run of the utterance's frames.
    assert np.all(np.diff(speech, axis=1) == 1)


def test_evaluation_crops_are_deterministic_and_centred_on_speech():
    store, _ = make_store([1000, 30], n_bins=2, values=frame_numbers([1000, 30]), speech=[[6.0, 7.0], []])
    spec = ExampleSpec.crop(50)
    a = gather(spec, store, evaluation_index(spec, store, np.array([0, 1])), IDENTITY)
    b = gather(spec, store, evaluation_index(spec, store, np.array([0, 1])), IDENTITY)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0, :, 0] - 1, np.arange(625, 675))  # the middle of speech [600, 700)
    np.testing.assert_array_equal(a[1, :30, 0], np.arange(1, 31))  # wider than the utterance: padded
    assert np.all(a[1, 30:] == 0)
    tiles = ExampleSpec.crop(50, eval_crop="tile")
    idx = evaluation_index(tiles, store, np.array([0]))
    assert len(idx) == 20 and idx.starts[-1] == 950


def test_window_starts_cover_the_utterance():
    np.testing.assert_array_equal(window_starts(600, 256, 128), [0, 128, 256, 344])
    np.testing.assert_array_equal(window_starts(100, 256, 128), [0])
    np.testing.assert_array_equal(window_starts(512, 256, 256), [0, 256])


def test_windows_cover_every_frame_and_pool_back_to_utterances():
    lengths = [600, 100, 300]
    store, _ = make_store(lengths, n_bins=2, values=frame_numbers(lengths))
    spec = ExampleSpec.windows(256, hop=128)
    rows = np.array([0, 1, 2])
    idx = training_index(spec, store, rows)
    np.testing.assert_array_equal(np.bincount(idx.rows), [4, 1, 2])
    x = gather(spec, store, idx, IDENTITY)
    assert x.shape == (7, 256, 2)
    for r, t in enumerate(lengths):
        seen = x[idx.rows == r][:, :, 0].reshape(-1)
        assert set(seen[seen > 0].astype(int)) == set(range(1, t + 1))  # every frame is in some window
    # Posteriors of the windows average back to one per utterance, in utterance order.
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=len(idx))
    position = np.full(store.num_rows, -1)
    position[rows] = np.arange(3)
    pooled = pool(idx.rows, probs, 3, position)
    assert pooled.shape == (3, 3)
    for r in range(3):
        np.testing.assert_allclose(pooled[r], probs[idx.rows == r].mean(0))
    assert np.array_equal(evaluation_index(spec, store, rows).starts, idx.starts)


def test_speech_only_windows_skip_silence():
    store, _ = make_store([400], n_bins=2, values=frame_numbers([400]), speech=[[0.5, 1.5, 2.5, 3.0]])
    spec = ExampleSpec.windows(64, speech_only=True)
    idx = training_index(spec, store, np.array([0]))
    x = gather(spec, store, idx, IDENTITY)[:, :, 0] - 1
    frames = set(x[x >= 0].astype(int).tolist())
    assert frames == set(range(50, 150)) | set(range(250, 300))  # silence removed, every speech frame kept
    assert len(idx) == 3  # 150 speech frames -> windows at 0, 64 and one ending at 150


def test_spec_validation():
    with pytest.raises(ValueError, match="kind"):
        ExampleSpec("images")
    with pytest.raises(ValueError, match="frames >= 1"):
        ExampleSpec.crop(0)
    with pytest.raises(ValueError, match="centre"):
        ExampleSpec.crop(10, centre="loudest")
    with pytest.raises(ValueError, match="no frames"):
        ExampleSpec("vector", frames=3)

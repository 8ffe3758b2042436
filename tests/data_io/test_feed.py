"""What a fold feeds its model: auxiliary rows and masks, sampling (balance, caps, fraction, aux ratio), eval sets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from data_io import targets as T
from data_io.examples import ExampleSpec
from data_io.feed import EvalSet, Feed, Sampling, TrainSet, encode_labels, fit_encoders
from data_io.store import FeatureStore, Source, fit_normalizer

EMOTIONS = ["neutral", "happy", "sad", "angry"]


def labelled_store(n_lab=40, n_aux=20, seed=0, aux_emotion="angry"):
    """Functionals-like store: ``n_lab`` labelled rows of corpus ``acted`` (emotions cycle, 2 speakers) and
    ``n_aux`` auxiliary rows of corpus ``books`` that carry gender and speaker labels and, to prove masking, an
    emotion label too."""
    rng = np.random.default_rng(seed)
    n = n_lab + n_aux
    emotion = [EMOTIONS[i % 4] for i in range(n_lab)] + [aux_emotion] * n_aux
    meta = pa.table({
        "utt_id": [f"u{i:03d}" for i in range(n)],
        "corpus": ["acted"] * n_lab + ["books"] * n_aux,
        "speaker": [f"s{i % 2}" for i in range(n_lab)] + [f"b{i % 5}" for i in range(n_aux)],
        "gender": ["F" if i % 2 else "M" for i in range(n)],
        "style": ["acted"] * n_lab + ["read"] * n_aux,
        "emotion": emotion,
        "arousal": pa.array([3.0] * n_lab + [None] * n_aux, type=pa.float32()),
        "valence": pa.array([3.0] * n_lab + [None] * n_aux, type=pa.float32()),
        "dominance": pa.array([3.0] * n_lab + [None] * n_aux, type=pa.float32()),
        "rater_hist": pa.array([None] * n, type=pa.list_(pa.float32())),
    })
    values = rng.normal(size=(n, 5)).astype(np.float32).reshape(-1)
    shapes = np.tile([1, 5], (n, 1))
    source_index = np.array([0] * n_lab + [1] * n_aux, dtype=np.int16)
    return FeatureStore(meta=meta, values=values, offsets=np.arange(n + 1) * 5, shapes=shapes,
                        label_scales={"acted": (1.0, 5.0), "books": None}, feature_set="fs",
                        sources=[Source("a", "acted"), Source("b", "books", True, ("gender", "speaker"))],
                        source_index=source_index)


def encoders_for(store, targets=("emotion", "gender", "speaker"), encoders=None):
    specs = T.parse_targets(list(targets), encoders or {})
    return T.build_encoders(specs, label_scales=store.label_scales, emotion_classes=EMOTIONS,
                            vocabulary_meta=store.meta)


def train_set(store, feed, rows, seed=0, targets=("emotion", "gender", "speaker")):
    enc = encoders_for(store, targets)
    fit_encoders(enc, store, rows)
    return TrainSet(feed, store, rows, enc, fit_normalizer(store, rows), torch.Generator().manual_seed(seed)), enc


def test_auxiliary_rows_feed_only_the_targets_their_set_lists():
    store = labelled_store()
    rows = np.arange(store.num_rows)
    ts, enc = train_set(store, Feed(), rows)
    aux = store.is_auxiliary(rows)
    labels = encode_labels(enc, store, rows)
    assert not labels["emotion_mask"][aux].any()  # they carry "angry", but their set does not list emotion
    assert labels["gender_mask"][aux].all() and labels["speaker_mask"][aux].all()
    assert labels["emotion_mask"][~aux].all()
    seen_aux = 0
    for batch in ts.batches(8):
        is_aux = store.is_auxiliary(batch["utt_index"])
        seen_aux += int(is_aux.sum())
        assert not batch["emotion_mask"][is_aux].any()
    assert seen_aux == aux.sum()  # without aux_ratio every auxiliary row is mixed into the epoch once
    # The auxiliary corpus's speakers are training speakers of the speaker target (its set lists speaker).
    assert set(enc["speaker"].classes) >= {"books/b0", "acted/s0"} or set(enc["speaker"].classes) >= {"b0", "s0"}


def test_an_auxiliary_row_never_reaches_the_emotion_loss():
    """Change every auxiliary row's emotion label: no emotion label or mask of an epoch's batches changes."""
    def emotion_targets(aux_emotion):
        store = labelled_store(aux_emotion=aux_emotion)
        ts, _ = train_set(store, Feed(), np.arange(store.num_rows))
        out = []
        for b in ts.batches(8):
            m = b["emotion_mask"]
            out.append((b["utt_index"][m].tolist(), b["emotion"][m].tolist()))
        return out

    assert emotion_targets("angry") == emotion_targets("sad")


def test_evaluation_sets_never_hold_auxiliary_rows():
    from data_io.feed import labelled_only

    store = labelled_store()
    rows = labelled_only(store, np.arange(store.num_rows))
    assert len(rows) == 40
    enc = encoders_for(store)
    fit_encoders(enc, store, np.arange(store.num_rows))
    ev = EvalSet(Feed(), store, rows, enc, fit_normalizer(store, rows))
    assert len(ev) == 40 and not store.is_auxiliary(ev.rows).any()


def test_aux_ratio_puts_that_many_auxiliary_examples_in_each_batch():
    store = labelled_store()
    feed = Feed(sampling=Sampling(aux_ratio=0.5))
    ts, _ = train_set(store, feed, np.arange(store.num_rows))
    batches = ts.epoch(8)
    assert len(batches) == 5  # one pass over the 40 labelled rows
    for b in batches:
        n_aux = int(store.is_auxiliary(ts.index.rows[b]).sum())
        assert n_aux == round(0.5 * (len(b) - n_aux))


def test_balance_oversamples_every_class_to_the_largest():
    store = labelled_store(n_aux=0)
    emotion = ["neutral"] * 25 + ["happy"] * 10 + ["sad"] * 3 + ["angry"] * 2
    meta = store.meta.set_column(store.meta.column_names.index("emotion"), "emotion", pa.array(emotion))
    store = FeatureStore(meta=meta, values=store.values, offsets=store.offsets, shapes=store.shapes,
                         label_scales=store.label_scales, feature_set="fs")
    feed = Feed(sampling=Sampling(balance="emotion"))
    ts, _ = train_set(store, feed, np.arange(40), targets=("emotion",))
    order = np.concatenate(ts.epoch(16))
    counts = np.bincount(ts.labels["emotion"][ts.position[ts.index.rows[order]]], minlength=4)
    assert counts.tolist() == [25, 25, 25, 25]
    ts2, _ = train_set(store, feed, np.arange(40), targets=("emotion",))
    np.testing.assert_array_equal(np.concatenate(ts2.epoch(16)), order)  # same seed, same order


def test_class_cap_per_corpus_and_fraction_are_seeded():
    store = labelled_store(n_lab=80, n_aux=0)
    cap = Feed(sampling=Sampling(caps=(("acted", "neutral", 5),)))
    ts, _ = train_set(store, cap, np.arange(80), targets=("emotion",))
    emotions = store.meta.column("emotion").take(pa.array(ts.rows)).to_pylist()
    assert emotions.count("neutral") == 5 and emotions.count("happy") == 20
    again, _ = train_set(store, cap, np.arange(80), targets=("emotion",))
    other, _ = train_set(store, cap, np.arange(80), seed=1, targets=("emotion",))
    np.testing.assert_array_equal(ts.rows, again.rows)
    assert not np.array_equal(ts.rows, other.rows)
    half, _ = train_set(store, Feed(sampling=Sampling(fraction=0.5)), np.arange(80), targets=("emotion",))
    assert len(half.rows) == 40
    with pytest.raises(ValueError, match="does not have"):
        train_set(store, Feed(sampling=Sampling(caps=(("acted", "bored", 5),))), np.arange(80),
                  targets=("emotion",))


def test_windows_train_per_window_and_evaluate_per_utterance():
    from tests.data_io.test_store import make_store

    base, _ = make_store([600, 100, 300], n_bins=2)
    meta = base.meta.append_column("emotion", pa.array(["happy", "sad", "happy"]))
    store = FeatureStore(meta=meta, values=base.values, offsets=base.offsets, shapes=base.shapes,
                         label_scales={}, feature_set="fs", frame_rate=100.0)
    enc = T.build_encoders(T.parse_targets(["emotion"], {}), label_scales={}, emotion_classes=EMOTIONS)
    rows = np.arange(3)
    fit_encoders(enc, store, rows)
    feed = Feed(examples=ExampleSpec.windows(256, hop=128))
    norm = fit_normalizer(store, rows)
    ts = TrainSet(feed, store, rows, enc, norm, torch.Generator().manual_seed(0))
    assert len(ts) == 7
    batch = ts.batch(np.arange(7))
    assert batch["x"].shape == (7, 256, 2)
    assert batch["emotion"].tolist() == [EMOTIONS.index(e) for e in ["happy"] * 4 + ["sad"] + ["happy"] * 2]
    ev = EvalSet(feed, store, rows, enc, norm)
    outs = [b["x"].mean(axis=(1, 2)) for b in ev.batches(3)]
    pooled = ev.pool({"score": np.concatenate(outs)})
    assert pooled["score"].shape == (3,)


# ---- aux_speakers (AAE paper, Fig. 4: how many LibriSpeech speakers feed the auxiliary tasks) ------------------

def _aux_speakers_of(store, rows):
    rows = np.asarray(rows)
    aux = rows[store.is_auxiliary(rows)]
    meta = store.meta.take(pa.array(aux))
    return set(zip(meta.column("corpus").to_pylist(), meta.column("speaker").to_pylist(), strict=True))


def test_aux_speakers_keeps_every_row_of_exactly_that_many_auxiliary_speakers():
    store = labelled_store(n_aux=35)  # auxiliary speakers b0..b4, 7 rows each
    rows = np.arange(store.num_rows)
    labelled = rows[~store.is_auxiliary(rows)]
    previous = set()
    for n in range(1, 6):
        ts, _ = train_set(store, Feed(sampling=Sampling(aux_speakers=n)), rows)
        kept = _aux_speakers_of(store, ts.rows)
        assert len(kept) == n and previous <= kept  # N speakers, and the N - 1 of the last step among them
        assert int(store.is_auxiliary(ts.rows).sum()) == 7 * n  # all rows of a kept speaker
        np.testing.assert_array_equal(ts.rows[~store.is_auxiliary(ts.rows)], labelled)  # labelled rows untouched
        seen = np.concatenate([ts.index.rows[b] for b in ts.epoch(8)])
        assert _aux_speakers_of(store, seen) == kept  # the epoch draws only the kept speakers' rows
        previous = kept
    # The choice is fixed by the speakers present, not by the fold's generator (every fold and seed repeat).
    a, _ = train_set(store, Feed(sampling=Sampling(aux_speakers=2)), rows, seed=0)
    b, _ = train_set(store, Feed(sampling=Sampling(aux_speakers=2)), rows, seed=5)
    np.testing.assert_array_equal(a.rows, b.rows)


def test_aux_speakers_beyond_the_available_keeps_every_auxiliary_row():
    store = labelled_store(n_aux=35)
    rows = np.arange(store.num_rows)
    every, _ = train_set(store, Feed(), rows)
    for n in (5, 600):
        ts, _ = train_set(store, Feed(sampling=Sampling(aux_speakers=n)), rows)
        np.testing.assert_array_equal(ts.rows, every.rows)
    no_aux = labelled_store(n_aux=0)  # nothing auxiliary: nothing to choose, nothing to fail
    ts, _ = train_set(no_aux, Feed(sampling=Sampling(aux_speakers=3)), np.arange(40))
    assert len(ts.rows) == 40


def test_keep_aux_speakers_is_idempotent_and_keeps_the_row_order():
    from data_io.feed import keep_aux_speakers

    store = labelled_store(n_aux=35)
    sampling = Sampling(aux_speakers=3)
    rows = np.random.default_rng(0).permutation(store.num_rows)
    once = keep_aux_speakers(sampling, store, rows)
    np.testing.assert_array_equal(keep_aux_speakers(sampling, store, once), once)
    np.testing.assert_array_equal(once, [r for r in rows if r in set(once.tolist())])
    np.testing.assert_array_equal(keep_aux_speakers(Sampling(), store, rows), rows)


def test_aux_speakers_needs_a_speaker_on_every_auxiliary_row():
    from data_io.feed import keep_aux_speakers

    store = labelled_store(n_aux=10)
    speaker = store.meta.column("speaker").to_pylist()
    speaker[45] = None
    meta = store.meta.set_column(store.meta.column_names.index("speaker"), "speaker", pa.array(speaker))
    store = FeatureStore(meta=meta, values=store.values, offsets=store.offsets, shapes=store.shapes,
                         label_scales=store.label_scales, feature_set="fs", sources=store.sources,
                         source_index=store.source_index)
    with pytest.raises(ValueError, match=r"1 auxiliary rows \(corpus \['books'\]\) have no speaker"):
        keep_aux_speakers(Sampling(aux_speakers=2), store, np.arange(store.num_rows))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "600", True])
def test_aux_speakers_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"aux_speakers must be an integer >= 1 .* got"):
        Sampling(aux_speakers=bad)
    assert Sampling(aux_speakers=np.int64(600)).aux_speakers == 600
    assert type(Sampling(aux_speakers=np.int64(600)).aux_speakers) is int

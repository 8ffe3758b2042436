"""Target encoders: scaled/classes as before, and soft5, soft, levels, kmeans, speakers; parse_targets errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data_io.schema import EMOTION_VOCAB
from data_io.targets import TargetSpec, build_encoder, build_encoders, default_encoder, parse_targets

EMO4 = ["neutral", "happy", "sad", "angry"]
IEMOCAP = {"iemocap": (1.0, 5.0)}


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


def attr_meta(values, corpus="iemocap", column="valence") -> pa.Table:
    corpora = [corpus] * len(values) if isinstance(corpus, str) else list(corpus)
    return pa.table({"corpus": corpora, column: pa.array(values, pa.float32())})


def encoder(name: str, enc: str | None = None, options=None, **kw):
    kw.setdefault("label_scales", IEMOCAP)
    return build_encoder(TargetSpec(name, enc or default_encoder(name), options or {}), **kw)


# ---- scaled and classes (the behaviour of the former datasets.encode_targets) ------------------------------
def test_attribute_scaling_and_masks() -> None:
    meta = make_meta()
    aro, aro_mask = encoder("arousal").encode(meta)
    # 2 * (y - 1) / 4 - 1 by hand: 1 -> -1, 5 -> 1, 3 -> 0, 2 -> -0.5, 4.5 -> 0.75; nulls -> 0, masked.
    np.testing.assert_allclose(aro, [-1.0, 1.0, 0.0, 0.0, -0.5, 0.75])
    assert aro_mask.tolist() == [True, True, True, False, True, True]
    val, val_mask = encoder("valence").encode(meta)
    np.testing.assert_allclose(val, [0.0, -1.0, 1.0, -0.25, 0.0, 0.0])
    assert val_mask.tolist() == [False, True, True, True, True, True]
    assert aro.dtype == np.float32 and aro_mask.dtype == bool
    assert encoder("arousal").kind == "regression" and encoder("arousal").classes is None


def test_attribute_scale_per_corpus_and_errors() -> None:
    meta = pa.table({"corpus": ["x", "y"], "arousal": pa.array([4.0, 4.0], pa.float32())})
    values, _ = encoder("arousal", label_scales={"x": (1, 7), "y": (1, 5)}).encode(meta)
    np.testing.assert_allclose(values, [0.0, 0.5])
    with pytest.raises(ValueError, match="no label_scale for corpus 'y'"):
        encoder("arousal", label_scales={"x": (1, 7), "y": None}).encode(meta)
    with pytest.raises(ValueError, match="corpus 'x' outside its label_scale"):
        encoder("arousal", label_scales={"x": (1, 3), "y": (1, 5)}).encode(meta)
    with pytest.raises(ValueError, match="low < high"):
        encoder("arousal", label_scales={"x": (5, 1)})
    # A target without any label needs no scale: every row is simply masked.
    values, mask = encoder("dominance", label_scales={}).encode(make_meta())
    assert not mask.any() and np.all(values == 0)


def test_emotion_merge_and_mask() -> None:
    meta = make_meta()
    values, mask = encoder("emotion", classes=EMO4).encode(meta)
    assert values.tolist() == [0, 0, 1, 0, 0, 3]
    assert mask.tolist() == [True, False, True, False, False, True]
    merged = encoder("emotion", classes=EMO4, merge={"excited": "happy"})
    values, mask = merged.encode(meta)
    assert values.tolist() == [0, 1, 1, 0, 0, 3]
    assert mask.tolist() == [True, True, True, False, False, True]
    assert values.dtype == np.int64 and merged.kind == "class" and merged.classes == EMO4 and merged.n_classes == 4
    with pytest.raises(ValueError, match="classes\\['emotion'\\]"):
        encoder("emotion")
    with pytest.raises(ValueError, match="maps onto classes"):
        encoder("emotion", classes=EMO4, merge={"excited": "joy"})
    with pytest.raises(ValueError, match="vocabulary"):
        encoder("emotion", classes=["neutral", "angy"])


def test_speaker_gender_default_classes_and_unknown_target() -> None:
    meta = make_meta()
    gender = encoder("gender")
    values, mask = gender.encode(meta)
    assert gender.classes == ["F", "M"]
    assert values.tolist() == [0, 1, 0, 0, 1, 0] and mask.tolist()[3] is False
    speakers = encoder("speaker").fit(meta)
    assert speakers.classes == ["s1", "s2", "s3"]  # sorted unique
    assert speakers.encode(meta)[0].tolist() == [1, 0, 1, 2, 0, 2]
    # Style classes come from every row of the sweep (vocabulary_meta), or an explicit list.
    vocab = pa.table({"style": ["spontaneous", "acted", None, "acted"]})
    style = encoder("style", vocabulary_meta=vocab)
    assert style.classes == ["acted", "spontaneous"]
    assert style.encode(make_meta())[0].tolist() == [0] * 6
    assert encoder("style", options={"classes": ["read", "acted"]}).encode(make_meta())[0].tolist() == [1] * 6
    with pytest.raises(ValueError, match="not a metadata column .*arousal.*emotion"):
        TargetSpec("loudness", "scaled", {})


# ---- soft5 (multitask DCGAN paper, fuzzy labels) -----------------------------------------------------------
def test_soft5_fuzzy_labels_by_hand() -> None:
    enc = encoder("valence", "soft5")
    values, mask = enc.encode(attr_meta([4.5, 4.0, 4.25, 1.0, 5.0, None]))
    np.testing.assert_allclose(values, [
        [0, 0, 0, 0.5, 0.5],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0.75, 0.25],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],  # unlabelled: finite, masked
    ], atol=1e-7)
    assert mask.tolist() == [True] * 5 + [False]
    np.testing.assert_allclose(values[mask].sum(axis=1), 1.0, atol=1e-6)
    assert values.dtype == np.float32 and enc.kind == "soft" and enc.classes == ["1", "2", "3", "4", "5"]


def test_soft5_maps_a_1_to_7_scale_onto_1_to_5() -> None:
    enc = encoder("arousal", "soft5", label_scales={"msp_podcast": (1.0, 7.0)})
    # 1 + 4 * (y - 1) / 6: 4 -> 3, 5.5 -> 4, 7 -> 5, 2 -> 1.667 (1/3 on 1, 2/3 on 2)
    values, _ = enc.encode(attr_meta([4.0, 5.5, 7.0, 2.0], "msp_podcast", "arousal"))
    assert values[:3].argmax(axis=1).tolist() == [2, 3, 4] and np.all(values[:3].max(axis=1) == 1)
    np.testing.assert_allclose(values[3], [1 / 3, 2 / 3, 0, 0, 0], atol=1e-6)


# ---- levels (AAE paper, Table 2) ---------------------------------------------------------------------------
def test_levels_follow_table_2_per_corpus() -> None:
    enc = encoder("arousal", "levels")
    values = [2.0, 2.1, 2.5, 3.5, 3.6]
    iemocap, _ = enc.encode(attr_meta(values, "iemocap", "arousal"))
    improv, _ = enc.encode(attr_meta(values, "msp_improv", "arousal"))
    assert iemocap.tolist() == [0, 1, 1, 1, 2]  # [1,2] (2,3.5] (3.5,5]
    assert improv.tolist() == [0, 0, 0, 1, 2]  # [1,2.5] (2.5,3.5] (3.5,5]
    assert enc.classes == ["low", "medium", "high"] and enc.kind == "class"
    values, mask = enc.encode(attr_meta([None, 4.0], "iemocap", "arousal"))
    assert mask.tolist() == [False, True] and values.tolist() == [0, 2]


def test_levels_edges_override_and_unknown_corpus() -> None:
    enc = encoder("valence", "levels", {"edges": {"iemocap": [3, 4], "callcenter": [2, 6]}})
    assert enc.encode(attr_meta([3.0, 3.5, 4.5]))[0].tolist() == [0, 1, 2]
    assert enc.encode(attr_meta([2.0, 6.0, 6.5], "callcenter"))[0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="msp_podcast.*data.encoders.valence.edges.msp_podcast"):
        encoder("valence", "levels").encode(attr_meta([3.0], "msp_podcast"))
    with pytest.raises(ValueError, match="e1 < e2"):
        TargetSpec("valence", "levels", {"edges": {"iemocap": [4, 3]}})


# ---- kmeans (AAE paper, valence-activation clusters) -------------------------------------------------------
def va_meta(n: int = 60, seed: int = 0, corpus: str = "iemocap") -> pa.Table:
    rng = np.random.default_rng(seed)
    centres = np.array([[1.5, 1.5], [3.0, 4.5], [4.5, 2.0]])  # (arousal, valence) on 1-5
    pts = np.clip(centres[np.arange(n) % 3] + rng.normal(0, 0.2, (n, 2)), 1, 5)
    return pa.table({"corpus": [corpus] * n, "arousal": pa.array(pts[:, 0], pa.float32()),
                     "valence": pa.array(pts[:, 1], pa.float32())})


def kmeans(**options):
    return encoder("va_cluster", "kmeans", options, label_scales={"iemocap": (1, 5), "msp_podcast": (1, 7)})


def test_kmeans_fits_training_rows_only_and_is_deterministic() -> None:
    meta = va_meta()
    train = meta.slice(0, 45)
    fitted = kmeans(k=3, seed=1).fit(train)
    # Scaled to [-1, 1] and sorted by arousal: the centres of va_meta, in that order.
    np.testing.assert_allclose(fitted.centroids, [[-0.75, -0.75], [0.0, 0.75], [0.75, -0.5]], atol=0.1)
    again = kmeans(k=3, seed=1).fit(train)
    np.testing.assert_array_equal(again.centroids, fitted.centroids)
    # Changing the rows outside the training subset changes nothing ...
    other = pa.concat_tables([train, va_meta(15, seed=9).set_column(1, "arousal", pa.array([5.0] * 15, pa.float32()))])
    np.testing.assert_array_equal(kmeans(k=3, seed=1).fit(other.slice(0, 45)).centroids, fitted.centroids)
    # ... moving training rows changes the centroids.
    moved = train.set_column(1, "arousal", pa.array(np.full(45, 1.0), pa.float32()))
    assert not np.allclose(kmeans(k=3, seed=1).fit(moved).centroids, fitted.centroids)
    values, mask = fitted.encode(meta)
    assert fitted.classes == ["c0", "c1", "c2"] and values.dtype == np.int64 and mask.all()
    assert values[:6].tolist() == [0, 1, 2, 0, 1, 2]  # rows cycle through the (sorted) centres


def test_kmeans_seed_and_stable_order() -> None:
    # Separated clusters: every seed finds the same centres, and sorting gives them the same indices.
    train = va_meta()
    for seed in range(6):
        np.testing.assert_allclose(kmeans(k=3, seed=seed, n_init=1).fit(train).centroids,
                                   kmeans(k=3, seed=0, n_init=1).fit(train).centroids, atol=1e-9)
    # Structureless points: single starts land in different local optima, so the seed matters and is honoured.
    rng = np.random.default_rng(3)
    blob = pa.table({"corpus": ["iemocap"] * 200, "arousal": pa.array(rng.uniform(1, 5, 200), pa.float32()),
                     "valence": pa.array(rng.uniform(1, 5, 200), pa.float32())})
    runs = [kmeans(k=6, seed=s, n_init=1).fit(blob).centroids for s in range(6)]
    assert any(not np.allclose(runs[0], r) for r in runs[1:])
    np.testing.assert_array_equal(kmeans(k=6, seed=2, n_init=1).fit(blob).centroids, runs[2])
    assert all(np.all(np.diff(r[:, 0]) >= 0) for r in runs)  # sorted by arousal
    # n_init keeps the best start: a seed's first start is its n_init=1 result, so more starts never fit worse.
    def inertia(c):
        x = np.stack([np.asarray(blob.column(t)) for t in ("arousal", "valence")], axis=1) / 2 - 1.5
        return ((x[:, None] - c[None]) ** 2).sum(-1).min(axis=1).sum()
    gains = [inertia(runs[s]) - inertia(kmeans(k=6, seed=s, n_init=8).fit(blob).centroids) for s in range(6)]
    assert min(gains) >= -1e-6 and max(gains) > 1e-3


def test_kmeans_masks_missing_labels_state_round_trip_and_errors() -> None:
    meta = va_meta()
    fitted = kmeans(k=4, n_init=3).fit(meta)
    partial = pa.table({"corpus": ["iemocap", "iemocap"], "arousal": pa.array([3.0, None], pa.float32()),
                        "valence": pa.array([None, 3.0], pa.float32())})
    assert [a.tolist() for a in fitted.encode(partial)] == [[0, 0], [False, False]]
    # Rows with one label only are no training points either.
    np.testing.assert_array_equal(kmeans(k=4, n_init=3).fit(pa.concat_tables([meta, partial])).centroids,
                                  fitted.centroids)
    with pytest.raises(RuntimeError, match="before fit"):
        kmeans().encode(meta)
    restored = kmeans(k=4, n_init=3)
    restored.load_state_dict(fitted.state_dict())
    np.testing.assert_array_equal(restored.encode(meta)[0], fitted.encode(meta)[0])
    assert restored.classes == fitted.classes
    with pytest.raises(ValueError, match="at least 3 distinct"):
        kmeans().fit(meta.slice(0, 2))
    # Different corpus scales combine: 4 on 1-7 is the middle, as 3 on 1-5.
    mixed = pa.table({"corpus": ["iemocap", "msp_podcast"], "arousal": pa.array([3.0, 4.0], pa.float32()),
                      "valence": pa.array([3.0, 4.0], pa.float32())})
    assert fitted.encode(mixed)[0][0] == fitted.encode(mixed)[0][1]


# ---- speakers ----------------------------------------------------------------------------------------------
def test_speakers_from_training_rows_only() -> None:
    meta = make_meta()
    enc = encoder("speaker").fit(meta.slice(0, 3))  # s2, s1 train; s3 is held out
    assert enc.classes == ["s1", "s2"]
    values, mask = enc.encode(meta)
    assert mask.tolist() == [True, True, True, False, True, False]
    assert values.tolist() == [1, 0, 1, 0, 0, 0]
    restored = encoder("speaker")
    restored.load_state_dict(enc.state_dict())
    np.testing.assert_array_equal(restored.encode(meta)[1], mask)
    with pytest.raises(RuntimeError, match="before fit"):
        encoder("speaker").encode(meta)


def test_speakers_of_several_corpora_are_keyed_by_corpus() -> None:
    meta = pa.table({"corpus": ["iemocap", "librispeech", "librispeech", "iemocap"],
                     "speaker": ["s1", "s1", "s2", "s9"]})
    enc = encoder("speaker").fit(meta.slice(0, 3))
    assert enc.classes == ["iemocap/s1", "librispeech/s1", "librispeech/s2"]
    values, mask = enc.encode(meta)
    assert values.tolist()[:3] == [0, 1, 2] and mask.tolist() == [True, True, True, False]


# ---- soft emotion from rater votes -------------------------------------------------------------------------
def hist(**votes) -> list[float]:
    return [float(votes.get(c, 0)) for c in EMOTION_VOCAB]


def test_soft_emotion_from_rater_hist_with_merge() -> None:
    meta = pa.table({"rater_hist": pa.array([
        hist(happy=1, excited=2, neutral=1),  # excited merges into happy: 3/4 happy
        hist(sad=2, angry=2),
        hist(frustrated=3),  # no vote on a listed class
        None,
    ], pa.list_(pa.float32()))})
    enc = encoder("emotion", "soft", classes=EMO4, merge={"excited": "happy"})
    values, mask = enc.encode(meta)
    np.testing.assert_allclose(values, [[0.25, 0.75, 0, 0], [0, 0, 0.5, 0.5], [0] * 4, [0] * 4])
    assert mask.tolist() == [True, True, False, False] and enc.kind == "soft" and values.dtype == np.float32
    unmerged, _ = encoder("emotion", "soft", classes=EMO4).encode(meta)
    np.testing.assert_allclose(unmerged[0], [0.5, 0.5, 0, 0])


# ---- parse_targets -----------------------------------------------------------------------------------------
def test_parse_targets_defaults_and_forms() -> None:
    specs = parse_targets(["valence", "arousal", "emotion", "speaker", "va_cluster"],
                          {"valence": "soft5", "va_cluster": {"encoder": "kmeans", "k": 4}})
    assert [(s.name, s.encoder, dict(s.options)) for s in specs] == [
        ("valence", "soft5", {}), ("arousal", "scaled", {}), ("emotion", "classes", {}),
        ("speaker", "speakers", {}), ("va_cluster", "kmeans", {"k": 4})]
    built = build_encoders(specs, label_scales=IEMOCAP, emotion_classes=EMO4, emotion_merge={"excited": "happy"})
    assert list(built) == ["valence", "arousal", "emotion", "speaker", "va_cluster"]
    assert built["emotion"].encode(make_meta())[0].tolist()[1] == 1  # the merge reached the emotion target
    assert parse_targets(["style"], {"style": {"classes": ["acted", "read"]}})[0].encoder == "classes"


@pytest.mark.parametrize(("encoders", "match"), [
    ({"valence": "soft9"}, r"data.encoders.valence: unknown encoder 'soft9'.*soft5"),
    ({"emotion": "soft5"}, r"data.encoders.emotion: encoder 'soft5' does not apply.*\['classes', 'soft'\]"),
    ({"va_cluster": "levels"}, r"data.encoders.va_cluster: .*not a metadata column.*kmeans"),
    ({"va_cluster": {"encoder": "kmeans", "clusters": 3}}, r"data.encoders.va_cluster: .*no options \['clusters'\]"),
    ({"va_cluster": {"encoder": "kmeans", "k": 1}}, r"data.encoders.va_cluster: option k must be .*>= 2"),
    ({"arousal": "kmeans"}, r"data.encoders.arousal: .*va_cluster"),
    ({"dominance": "scaled"}, r"data.encoders: \['dominance'\] are not in data.targets"),
])
def test_parse_targets_errors(encoders, match) -> None:
    targets = [t for t in ("valence", "emotion", "va_cluster", "arousal") if t in encoders or t == "valence"]
    with pytest.raises(ValueError, match=match):
        parse_targets(targets, encoders)


def test_parse_targets_derived_name_needs_an_encoder() -> None:
    with pytest.raises(ValueError, match=r"data.targets: .*'va_cluster'.*no default encoder"):
        parse_targets(["va_cluster"], None)


def _plain(x) -> bool:
    """Only what torch.load(weights_only=True) accepts: builtins, lists and dicts of them (no numpy scalars)."""
    if isinstance(x, dict):
        return all(type(k) is str and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or type(x) in (str, int, float, bool)


@pytest.mark.parametrize("spec", [TargetSpec("arousal", "scaled"), TargetSpec("valence", "soft5"),
                                  TargetSpec("valence", "levels", {"edges": {"iemocap": [2.5, 4]}}),
                                  TargetSpec("emotion", "classes"), TargetSpec("emotion", "soft"),
                                  TargetSpec("gender", "classes"), TargetSpec("speaker", "speakers"),
                                  TargetSpec("va_cluster", "kmeans", {"k": 2})])
def test_state_dict_is_plain_and_round_trips(spec) -> None:
    meta = make_meta().append_column("rater_hist", pa.array([hist(sad=1)] * 6, pa.list_(pa.float32())))
    kw = {"label_scales": IEMOCAP, "classes": EMO4 if spec.name == "emotion" else None,
          "merge": {"excited": "happy"} if spec.name == "emotion" else None}
    fitted = build_encoder(spec, **kw).fit(meta.slice(0, 3))
    state = fitted.state_dict()
    assert _plain(state), state
    restored = build_encoder(spec, label_scales={"other": (0, 1)}, classes=kw["classes"])
    restored.load_state_dict(state)
    for got, want in zip(restored.encode(meta), fitted.encode(meta), strict=True):
        np.testing.assert_array_equal(got, want)
    assert restored.classes == fitted.classes and restored.kind == fitted.kind
    with pytest.raises(ValueError, match="state is of target"):
        build_encoder(TargetSpec("dominance", "scaled"), label_scales={}).load_state_dict(state)

"""The AAE paper's data and protocols (papers/semi-supervised-aae-mtl-gender-speaker.txt, Sections 4.1 and 5):
the synthetic MSP-IMPROV corpus read back by its adapter, and the paper's three protocols as existing builders give
them:

* 10 folds, every fold holding every speaker (Table 3): ``random_kfold`` with ``{k: 10, stratify: speaker}``;
* leave one speaker out (Tables 3, 5, 6): ``speaker_kfold`` with ``{k: <number of speakers>}`` (10 for IEMOCAP,
  12 for MSP-IMPROV), or ``loso`` with ``{val_speaker: both}`` (the session partner validates);
* cross-corpus IEMOCAP -> MSP-IMPROV, 30 % validation / 70 % test by speaker (Table 4): ``cross_corpus`` with
  ``{train_corpus: iemocap, target_corpus: msp_improv, val_fraction: 0.3}``.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from data_io import synth
from data_io import targets as T
from data_io.adapters import get_adapter
from data_io.folds import build_folds
from data_io.schema import EMOTION_VOCAB, EMOTIONS_4

IMPROV_SPEAKERS = {f"improv_{g}{s:02d}" for s in range(1, 7) for g in "FM"}
CODES = {"A": "angry", "H": "happy", "S": "sad", "N": "neutral", "O": "other", "X": None}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    """Synthetic IEMOCAP and MSP-IMPROV (small, seed 3) side by side, as ``emotune synth --out`` writes them."""
    out = tmp_path_factory.mktemp("aae_corpora")
    for layout in ("iemocap", "msp_improv"):
        synth.generate(layout, out, seed=3)
    return out


@pytest.fixture(scope="module")
def improv_records(corpora):
    return get_adapter("msp_improv", corpora).records()


def _truth(corpora: Path, layout: str) -> dict[str, dict]:
    lines = (corpora / synth.CORPUS_FOLDERS[layout] / synth.TRUTH_FILE).read_text().splitlines()
    return {t["utt_id"]: t for t in map(json.loads, lines)}


def _meta(records) -> pa.Table:
    """The fold builders' metadata columns of adapter records (what ``ShardSet.metadata()`` holds after ingest)."""
    columns = ("utt_id", "corpus", "speaker", "gender", "session", "split", "emotion")
    return pa.table({c: pa.array([r.metadata()[c] for r in records], pa.string()) for c in columns})


# --- the synthetic MSP-IMPROV corpus ------------------------------------------------------------------------


def test_msp_improv_has_the_corpus_actors_sessions_and_scenarios(corpora, improv_records):
    truth = _truth(corpora, "msp_improv")
    assert {r.utt_id for r in improv_records} == set(truth)
    assert 200 <= len(improv_records) <= 400  # a few hundred short utterances
    assert {r.speaker for r in improv_records} == IMPROV_SPEAKERS  # 12 actors
    by_session = defaultdict(set)
    for r in improv_records:
        by_session[r.session].add((r.speaker, r.gender))
        assert r.corpus == "msp_improv" and r.split is None and r.audio_path.is_file()
        assert r.style == ("spontaneous" if truth[r.utt_id]["scenario"] == "P" else "acted")
        assert r.audio_path.parts[-5:-1] == ("Audio", r.session, truth[r.utt_id]["sentence"],
                                             truth[r.utt_id]["scenario"])
    # 6 sessions, one woman and one man each (the paper's Section 4.1.2)
    assert by_session == {f"session{s}": {(f"improv_F{s:02d}", "F"), (f"improv_M{s:02d}", "M")}
                          for s in range(1, 7)}
    assert {t["scenario"] for t in truth.values()} == {"R", "S", "T", "P"}
    assert min(Counter(r.speaker for r in improv_records).values()) >= 10  # enough for 10 speaker folds
    # A read take (R) carries its sentence's target emotion (S01A: angry, ...).
    for t in truth.values():
        if t["scenario"] == "R":
            assert t["category"] == CODES[t["sentence"][-1]]


def test_msp_improv_records_agree_with_evalution_txt(corpora, improv_records):
    text = (corpora / "MSP-IMPROV" / "Evalution.txt").read_text()
    head = re.compile(r"^UTD-IMPROV-(\S+)\.avi; ([AHSNOX]); A:(\d\.\d{6}); V:(\d\.\d{6}); D:(\d\.\d{6}) ; "
                      r"N:(\d\.\d{6});$")
    rater = re.compile(r"^p\d\d-\d-\d{4}; (Angry|Happy|Sad|Neutral|Other); ; A:[1-5]\.0; V:[1-5]\.0; D:[1-5]\.0; "
                       r"N:[1-5]\.0;$")
    expected = {}
    for block in text.strip("\n").split("\n\n"):
        first, *raters = block.split("\n")
        m = head.match(first)
        assert m, first
        assert 3 <= len(raters) <= 5 and all(rater.match(line) for line in raters), block
        votes = [line.split("; ")[1].lower() for line in raters]
        expected[f"MSP-IMPROV-{m[1]}"] = (CODES[m[2]], *(float(m[i]) for i in (3, 4, 5)),
                                          tuple(float(votes.count(c)) for c in EMOTION_VOCAB))
    records = {r.utt_id: r for r in improv_records}
    assert set(records) == set(expected)
    for utt_id, (emotion, a, v, d, hist) in expected.items():
        r = records[utt_id]
        assert (r.emotion, r.arousal, r.valence, r.dominance, r.rater_hist) == (emotion, a, v, d, hist)
        assert all(1.0 <= x <= 5.0 for x in (a, v, d))
    emotions = Counter(r.emotion for r in improv_records)
    assert set(emotions) <= {*EMOTIONS_4, "other", None} and all(emotions[e] for e in EMOTIONS_4)
    assert emotions[None] > 0  # raters disagree sometimes (code X)


def test_msp_improv_labels_and_voices_carry_the_emotion(corpora, improv_records):
    """Consensus labels follow the generator's truth, and the audio's level tracks arousal within a speaker."""
    truth = _truth(corpora, "msp_improv")
    labelled = [r for r in improv_records if r.emotion is not None]
    agree = np.mean([r.emotion == truth[r.utt_id]["category"] for r in labelled])
    assert agree > 0.7
    for attr in ("arousal", "valence"):
        r = np.corrcoef([getattr(x, attr) for x in improv_records],
                        [truth[x.utt_id][attr] for x in improv_records])[0, 1]
        assert r > 0.6, (attr, r)
    # RMS level of the loudest frames, z-scored per speaker, against true arousal (the voice model's cue).
    sample = improv_records[::5]
    level, arousal, speakers = [], [], []
    for rec in sample:
        y, sr = sf.read(rec.audio_path)
        frames = y[: len(y) // 400 * 400].reshape(-1, 400)
        rms = np.sqrt((frames**2).mean(axis=1))
        level.append(20 * np.log10(rms[rms > 0.3 * rms.max()].mean()))
        arousal.append(truth[rec.utt_id]["arousal"])
        speakers.append(rec.speaker)
    level, speakers = np.array(level), np.array(speakers)
    for spk in set(speakers.tolist()):
        m = speakers == spk
        level[m] = (level[m] - level[m].mean()) / (level[m].std() + 1e-9)
    assert np.corrcoef(level, arousal)[0, 1] > 0.5


# --- protocol tables --------------------------------------------------------------------------------------------


def _table(counts: dict[str, int], corpus: str, sessions: dict[str, str] | None = None) -> pa.Table:
    """``counts[speaker]`` utterances per speaker; every third one unlabelled (emotion null)."""
    rows = defaultdict(list)
    for spk, n in counts.items():
        for u in range(n):
            for column, value in (("utt_id", f"{corpus}_{spk}_{u:03d}"), ("corpus", corpus), ("speaker", spk),
                                  ("session", (sessions or {}).get(spk, spk[:5])), ("split", None),
                                  ("emotion", None if u % 3 == 2 else EMOTIONS_4[u % 4])):
                rows[column].append(value)
    return pa.table({c: pa.array(v, pa.string()) for c, v in rows.items()})


def iemocap_counts() -> dict[str, int]:
    """10 speakers (5 sessions x F/M) with uneven numbers of utterances, the smallest exactly 10."""
    return {f"Ses{s:02d}{g}": 10 + 7 * (s - 1) + (3 if g == "M" else 0) for s in range(1, 6) for g in "FM"}


def improv_counts() -> dict[str, int]:
    return {f"improv_{g}{s:02d}": 14 + 5 * s + (2 if g == "F" else 0) for s in range(1, 7) for g in "FM"}


def _improv_table() -> pa.Table:
    return _table(improv_counts(), "msp_improv", {k: f"session{int(k[-2:])}" for k in improv_counts()})


def _parts(fold) -> dict[str, tuple[str, ...]]:
    return {"train": fold.train_ids, "val": fold.val_ids, "test": fold.test.open("unit test")}


def _speakers_by_id(meta: pa.Table) -> dict[str, str]:
    return dict(zip(meta.column("utt_id").to_pylist(), meta.column("speaker").to_pylist(), strict=True))


# --- (a) 10 folds, every speaker in every fold -----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("corpus", ["iemocap", "msp_improv"])
def test_speaker_10_fold_puts_every_speaker_in_every_part_of_every_fold(corpus, seed):
    """random_kfold(k=10, stratify="speaker") deals each speaker's utterances over the 10 groups, so with >= 10
    utterances a speaker is in all 10 groups: in every fold's test group, validation group and 8 training groups."""
    counts = iemocap_counts() if corpus == "iemocap" else improv_counts()
    meta = _table(counts, corpus) if corpus == "iemocap" else _improv_table()
    speaker = _speakers_by_id(meta)
    folds = build_folds("random_kfold", meta, k=10, stratify="speaker", seed=seed)
    assert len(folds) == 10
    tested = []
    for i, fold in enumerate(folds):
        parts = _parts(fold)
        tested += parts["test"]
        for part, ids in parts.items():
            assert {speaker[u] for u in ids} == set(counts), (fold.name, part)
        # each group holds floor or ceil of a tenth of each speaker's utterances
        for part in ("val", "test"):
            held = Counter(speaker[u] for u in parts[part])
            assert all(abs(held[s] - n / 10) < 1 for s, n in counts.items()), (fold.name, part)
        assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == sum(counts.values())
        assert set(fold.val_ids) == set(_parts(folds[(i + 1) % 10])["test"])  # one group validates, 8 train
    assert sorted(tested) == sorted(speaker)  # every utterance tested once
    # Speaker identification is possible: a speaker target fitted on a fold's training rows knows every
    # validation and test utterance's speaker.
    enc = T.build_encoders(T.parse_targets(["speaker"], {}), label_scales={})["speaker"]
    rows = {u: i for i, u in enumerate(meta.column("utt_id").to_pylist())}
    fold = folds[0]
    enc.fit(meta.take(pa.array([rows[u] for u in fold.train_ids])))
    assert len(enc.classes) == len(counts)
    _, mask = enc.encode(meta.take(pa.array([rows[u] for u in fold.val_ids])))
    assert mask.all()


def test_speaker_10_fold_with_require_deals_the_labelled_rows():
    """With ``require: emotion`` (rows without a label dropped first) the property holds for the labelled rows:
    each speaker needs >= 10 labelled utterances; one with fewer is missing from some groups."""
    # every speaker >= 14 labelled rows, but Ses01F 12 rows, 8 labelled (every third row is unlabelled)
    counts = {**{s: 2 * n for s, n in iemocap_counts().items()}, "Ses01F": 12}
    meta = _table(counts, "iemocap")
    speaker = _speakers_by_id(meta)
    folds = build_folds("random_kfold", meta, k=10, stratify="speaker", require="emotion")
    labelled = {r["utt_id"] for r in meta.to_pylist() if r["emotion"] is not None}
    tested = Counter()
    for fold in folds:
        parts = _parts(fold)
        assert set().union(*parts.values()) == labelled
        for s in set(counts) - {"Ses01F"}:
            assert all(s in {speaker[u] for u in ids} for ids in parts.values())
        tested.update(speaker[u] for u in parts["test"])
    assert tested["Ses01F"] == 8 and sum(("Ses01F" in {speaker[u] for u in _parts(f)["test"]}) for f in folds) == 8


def test_speaker_10_fold_on_the_synthetic_msp_improv(improv_records):
    meta = _meta(improv_records)
    folds = build_folds("random_kfold", meta, k=10, stratify="speaker", require="emotion")
    labelled = Counter(r.speaker for r in improv_records if r.emotion is not None)
    assert min(labelled.values()) >= 10
    speaker = _speakers_by_id(meta)
    for fold in folds:
        for ids in _parts(fold).values():
            assert {speaker[u] for u in ids} == IMPROV_SPEAKERS


# --- (b) leave one speaker out ----------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", ["iemocap", "msp_improv"])
def test_speaker_kfold_with_k_speakers_leaves_one_speaker_out(corpus):
    """speaker_kfold with k = number of speakers: fold i tests one speaker, validates another, trains on the rest;
    every speaker is tested once and never trained on in its fold."""
    counts = iemocap_counts() if corpus == "iemocap" else improv_counts()
    meta = _table(counts, corpus) if corpus == "iemocap" else _improv_table()
    speaker = _speakers_by_id(meta)
    folds = build_folds("speaker_kfold", meta, k=len(counts), seed=0)
    assert len(folds) == len(counts)
    tested = []
    for fold in folds:
        parts = {p: {speaker[u] for u in ids} for p, ids in _parts(fold).items()}
        assert len(parts["test"]) == 1 and len(parts["val"]) == 1
        assert parts["train"] == set(counts) - parts["test"] - parts["val"]
        assert len(fold.train_ids) + len(fold.val_ids) + len(fold.test) == sum(counts.values())
        tested += parts["test"]
        # speaker-independent: the speaker target masks every test (and validation) utterance
        enc = T.build_encoders(T.parse_targets(["speaker"], {}), label_scales={})["speaker"]
        rows = {u: i for i, u in enumerate(meta.column("utt_id").to_pylist())}
        enc.fit(meta.take(pa.array([rows[u] for u in fold.train_ids])))
        _, mask = enc.encode(meta.take(pa.array([rows[u] for u in _parts(fold)["test"]])))
        assert not mask.any()
    assert sorted(tested) == sorted(counts)


def test_loso_both_is_leave_one_speaker_out_with_the_session_partner_validating():
    """The alternative: loso with val_speaker both gives 2 folds per session, each testing one speaker while the
    other speaker of the session validates (both never train)."""
    counts = iemocap_counts()
    meta = _table(counts, "iemocap")
    speaker = _speakers_by_id(meta)
    folds = build_folds("loso", meta, val_speaker="both")
    tested = []
    for fold in folds:
        parts = {p: {speaker[u] for u in ids} for p, ids in _parts(fold).items()}
        (test,), (val,) = parts["test"], parts["val"]
        assert test[:5] == val[:5] and test != val  # the same session
        assert parts["train"] == set(counts) - {test, val}
        tested.append(test)
    assert sorted(tested) == sorted(counts)


# --- (c) cross-corpus IEMOCAP -> MSP-IMPROV ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_corpus_iemocap_to_msp_improv_splits_the_target_30_70_by_speaker(seed):
    meta = pa.concat_tables([_table(iemocap_counts(), "iemocap"), _improv_table()])
    speaker = _speakers_by_id(meta)
    corpus = dict(zip(meta.column("utt_id").to_pylist(), meta.column("corpus").to_pylist(), strict=True))
    (fold,) = build_folds("cross_corpus", meta, train_corpus="iemocap", target_corpus="msp_improv",
                          val_fraction=0.3, seed=seed)
    parts = _parts(fold)
    assert {u for u, c in corpus.items() if c == "iemocap"} == set(parts["train"])
    assert set(parts["val"]) | set(parts["test"]) == {u for u, c in corpus.items() if c == "msp_improv"}
    val_spk, test_spk = ({speaker[u] for u in parts[p]} for p in ("val", "test"))
    assert not val_spk & test_spk  # speaker-disjoint
    # round(0.3 * 12) = round(3.6) = 4 speakers validate (33 %), 8 test (67 %): the nearest to 30 / 70
    assert (len(val_spk), len(test_spk)) == (4, 8)
    assert fold.speakers["val"] == tuple(sorted(f"msp_improv/{s}" for s in val_spk))
    # every utterance of a speaker goes with its speaker
    assert all(speaker[u] in val_spk for u in parts["val"]) and all(speaker[u] in test_spk for u in parts["test"])


def test_cross_corpus_validation_share_rounds_to_the_nearest_speaker_count():
    """n_val = round(val_fraction * speakers), at least 1 and at most speakers - 1 (Python rounds .5 to even)."""
    expected = {2: 1, 3: 1, 4: 1, 5: 2, 10: 3, 12: 4, 15: 4, 20: 6}
    for n, n_val in expected.items():
        target = _table({f"t{i:02d}": 2 for i in range(n)}, "msp_improv")
        meta = pa.concat_tables([_table({"a": 2}, "iemocap"), target])
        (fold,) = build_folds("cross_corpus", meta, train_corpus="iemocap", target_corpus="msp_improv")
        assert (len(fold.speakers["val"]), len(fold.speakers["test"])) == (n_val, n - n_val), n


def test_cross_corpus_on_the_synthetic_corpora(corpora, improv_records):
    iemocap = get_adapter("iemocap", corpora).records()
    meta = _meta([*iemocap, *improv_records])
    (fold,) = build_folds("cross_corpus", meta, train_corpus="iemocap", target_corpus="msp_improv",
                          val_fraction=0.3, require="emotion")
    assert fold.name == "cross_corpus-iemocap-to-msp_improv"
    assert len(fold.speakers["train"]) == 10 and len(fold.speakers["val"]) == 4 and len(fold.speakers["test"]) == 8
    val = {s.split("/")[1] for s in fold.speakers["val"]}
    test = {s.split("/")[1] for s in fold.speakers["test"]}
    assert val | test == IMPROV_SPEAKERS and not val & test
    assert fold.counts_by_corpus["train"] == {"iemocap": sum(r.emotion is not None for r in iemocap)}

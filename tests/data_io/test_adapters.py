"""Corpus adapters (data_io/adapters.py; DESIGN.md, Data and Contracts: safe by default, clear errors)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_io import adapters, synth
from data_io.adapters import ADAPTERS, CorpusPathError, get_adapter
from data_io.schema import EMOTION_VOCAB, UtteranceRecord

# synthetic layout -> adapter that reads it
LAYOUT_ADAPTER = {"iemocap": "iemocap", "msp_podcast": "msp_podcast", "callcenter": "csv",
                  "librispeech": "librispeech", "ami": "ami", "msp_improv": "msp_improv"}
# Layouts whose records are the generator's utterances (AMI's are speech chunks of meetings: its own test file).
UTTERANCE_LAYOUTS = tuple(layout for layout in synth.LAYOUTS if layout != "ami")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpora")
    for layout in synth.LAYOUTS:
        synth.generate(layout, out, seed=3)
    return out


def _truth(root: Path, layout: str) -> dict[str, dict]:
    lines = (root / synth.CORPUS_FOLDERS[layout] / synth.TRUTH_FILE).read_text().splitlines()
    return {t["utt_id"]: t for t in map(json.loads, lines)}


def _hist(names: list[str]) -> tuple[float, ...]:
    return tuple(float(names.count(c)) for c in EMOTION_VOCAB)


def _write_wav(path: Path, seconds: float = 0.3, sr: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), sr, subtype="PCM_16")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Synthetic corpora, read back


@pytest.mark.parametrize("layout", UTTERANCE_LAYOUTS)
def test_records_agree_with_the_generators_truth(synth_root, layout):
    adapter = get_adapter(LAYOUT_ADAPTER[layout], synth_root)
    records = adapter.records()
    truth = _truth(synth_root, layout)
    assert [r.utt_id for r in records] == sorted(truth)
    for r in records:
        assert isinstance(r, UtteranceRecord)
        assert (r.speaker, r.gender) == (truth[r.utt_id]["speaker"], truth[r.utt_id]["gender"])
        assert r.audio_path.is_file() and r.audio_path.is_relative_to(adapter.root)
        assert r.corpus == LAYOUT_ADAPTER[layout]
        if layout == "iemocap":  # its forced alignments (tests/data_io/test_ami_and_alignments.py)
            assert r.words and r.metadata()["words"] == list(r.words)
        else:
            assert r.words is None and r.metadata()["words"] is None
    assert adapter.unlabelled_files == []
    assert all(r.audio_path.suffix in (".wav", ".flac") for r in records)  # .synth_truth.jsonl is not a label


def _record(**kwargs) -> UtteranceRecord:
    return UtteranceRecord(utt_id="u1", corpus="toy", audio_path=Path("u1.wav"), speaker="s1", **kwargs)


def test_record_words_are_flat_sorted_time_ranges():
    words = (0.0, 0.3, 0.3, 0.7, 0.5, 0.9, 1.2, 1.2)  # touching, overlapping and zero-length words are fine
    assert _record(words=words).metadata()["words"] == list(words)
    from_numpy = _record(words=(np.float32(0.1), np.float32(0.2))).metadata()["words"]  # numpy scalars are fine
    np.testing.assert_allclose(from_numpy, [0.1, 0.2], rtol=1e-6)
    assert _record(words=()).metadata()["words"] is None  # aligned, no words: null like "no alignment"
    assert _record().metadata()["words"] is None


@pytest.mark.parametrize(("words", "message"), [
    ([0.1, 0.2], "u1: words must be a tuple, flat \\(start0, end0, start1, end1, ...\\) seconds, got list"),
    ((0.1, 0.2, 0.3), "u1: words must have an even length, .* got 3 values"),
    ((0.1, float("nan")), "u1: words must be finite numbers .* got nan at index 1"),
    ((0.1, "0.2"), "u1: words must be finite numbers .* got '0.2' at index 1"),
    ((-0.1, 0.2), "u1: word 0 must satisfy 0 <= start <= end \\(seconds\\), got start -0.1, end 0.2"),
    ((0.1, 0.5, 0.6, 0.55), "u1: word 1 must satisfy 0 <= start <= end .* got start 0.6, end 0.55"),
    ((0.5, 0.6, 0.1, 0.2), "u1: words must be sorted by start time, got word 1 starting at 0.1 after word 0 "
                           "starting at 0.5"),
])
def test_record_rejects_bad_words(words, message):
    with pytest.raises(ValueError, match=message):
        _record(words=words)


def test_iemocap_labels_agree_with_the_emoevaluation_files(synth_root):
    codes = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
             "fru": "frustrated", "sur": "surprised", "fea": "fearful", "dis": "disgusted", "oth": "other",
             "xxx": None}
    names = {"Neutral state": "neutral", "Happiness": "happy", "Excited": "excited", "Sadness": "sad",
             "Anger": "angry", "Frustration": "frustrated", "Surprise": "surprised", "Fear": "fearful",
             "Disgust": "disgusted", "Other": "other"}
    expected = {}
    for label_file in sorted(synth_root.glob("IEMOCAP_full_release/Session*/dialog/EmoEvaluation/*.txt")):
        current = None
        for line in label_file.read_text().splitlines():
            if line.startswith("["):
                _, utt, code, vad = line.split("\t")
                v, a, d = (float(x) for x in vad.strip("[]").split(","))
                current = {"emotion": codes[code], "valence": v, "arousal": a, "dominance": d, "votes": [],
                           "session": label_file.parts[-4]}
                expected[utt] = current
            elif line.startswith("C-E"):
                current["votes"].append(names[line.split("\t")[1].rstrip(";")])
    records = get_adapter("iemocap", synth_root / "IEMOCAP_full_release").records()
    assert {r.utt_id for r in records} == set(expected)
    for r in records:
        e = expected[r.utt_id]
        assert (r.emotion, r.valence, r.arousal, r.dominance) == (e["emotion"], e["valence"], e["arousal"],
                                                                  e["dominance"])
        assert r.rater_hist == _hist(e["votes"])
        assert (r.session, r.style, r.split) == (e["session"], "acted", None)
        assert r.speaker == r.utt_id[:5] + r.utt_id.rsplit("_", 1)[1][0]
    assert any(r.emotion is None for r in records)  # "xxx" (no agreement) occurs and maps to None


def test_msp_podcast_labels_agree_with_the_csv_files(synth_root):
    labels = synth_root / "MSP-Podcast" / "Labels"
    with open(labels / "labels_consensus.csv", newline="") as f:
        consensus = {Path(row["FileName"]).stem: row for row in csv.DictReader(f)}
    votes: dict[str, list[str]] = {}
    with open(labels / "labels_detailed.csv", newline="") as f:
        for row in csv.DictReader(f):
            votes.setdefault(Path(row["FileName"]).stem, []).append(row["EmoClass"])
    codes = {"A": "angry", "S": "sad", "H": "happy", "U": "surprised", "F": "fearful", "D": "disgusted",
             "C": "contempt", "N": "neutral", "O": "other", "X": None}
    splits = {"Train": "train", "Development": "validation", "Test1": "test"}
    records = get_adapter("msp_podcast", synth_root).records()
    assert {r.utt_id for r in records} == set(consensus)
    for r in records:
        row = consensus[r.utt_id]
        assert r.emotion == codes[row["EmoClass"]]
        assert (r.arousal, r.valence, r.dominance) == tuple(float(row[k]) for k in ("EmoAct", "EmoVal", "EmoDom"))
        assert r.split == splits[row["Split_Set"]]
        assert r.speaker == f"msp_{int(row['SpkrID']):04d}"
        assert r.gender == row["Gender"][0]
        assert (r.session, r.style) == (None, "spontaneous")
        assert r.rater_hist == _hist([codes[v] for v in votes[r.utt_id]])


def test_msp_podcast_splits_are_speaker_disjoint(synth_root):
    records = get_adapter("msp_podcast", synth_root).records()
    by_split: dict[str, set[str]] = {}
    for r in records:
        by_split.setdefault(r.split, set()).add(r.speaker)
    assert set(by_split) == {"train", "validation", "test"}
    assert not (by_split["train"] & by_split["validation"])
    assert not (by_split["train"] & by_split["test"])
    assert not (by_split["validation"] & by_split["test"])


def test_csv_labels_agree_with_the_callcenter_manifest(synth_root):
    with open(synth_root / "callcenter" / "manifest.csv", newline="") as f:
        rows = {row["utt_id"]: row for row in csv.DictReader(f)}
    adapter = get_adapter("csv", synth_root)  # the parent of the corpus folder works too
    assert adapter.label_scale == (1.0, 5.0)
    records = adapter.records()
    assert {r.utt_id for r in records} == set(rows)
    for r in records:
        row = rows[r.utt_id]
        assert r.emotion == (row["emotion"] or None)
        assert (r.arousal, r.valence, r.dominance) == tuple(float(row[k]) for k in ("arousal", "valence",
                                                                                      "dominance"))
        assert (r.session, r.split, r.style, r.rater_hist) == (row["session"], None, "spontaneous", None)
        assert sf.info(r.audio_path).samplerate == synth.TELEPHONE_RATE


def test_librispeech_records_are_read_speech_without_labels(synth_root):
    adapter = get_adapter("librispeech", synth_root / "LibriSpeech")
    assert adapter.label_scale is None
    for r in adapter.records():
        spk, chapter, _ = r.utt_id.split("-")
        assert (r.speaker, r.session, r.style) == (f"libri_{spk}", chapter, "read")
        assert (r.emotion, r.arousal, r.valence, r.dominance, r.rater_hist, r.split) == (None,) * 6
        assert r.audio_path.suffix == ".flac"


@pytest.mark.parametrize("layout", synth.LAYOUTS)
def test_root_may_be_the_corpus_folder_or_its_parent(synth_root, layout):
    name = LAYOUT_ADAPTER[layout]
    inner = get_adapter(name, synth_root / synth.CORPUS_FOLDERS[layout])
    outer = get_adapter(name, synth_root)
    assert inner.root == outer.root
    assert inner.records() == outer.records()


def test_scales(synth_root):
    assert get_adapter("iemocap", synth_root).label_scale == (1.0, 5.0)
    assert get_adapter("msp_podcast", synth_root).label_scale == (1.0, 7.0)


# ---------------------------------------------------------------------------------------------------------------
# Registry and errors


def test_unknown_adapter_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus adapter 'emodb'") as err:
        get_adapter("emodb", tmp_path)
    for name in ADAPTERS:
        assert name in str(err.value)
    assert set(ADAPTERS) == {"iemocap", "msp_podcast", "msp_improv", "librispeech", "csv", "ami"}


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "no_such_corpus"
    with pytest.raises(FileNotFoundError, match="no_such_corpus"):
        get_adapter("iemocap", missing)


@pytest.mark.parametrize("name, expected", [
    ("iemocap", "EmoEvaluation"), ("msp_podcast", "labels_consensus.csv"), ("msp_improv", "Evalution.txt"),
    ("librispeech", "SPEAKERS.TXT"), ("csv", "manifest.csv"), ("ami", "Mix-Headset.wav"),
])
def test_missing_label_file_names_the_expected_file_and_layout(tmp_path, name, expected):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(expected)) as err:
        get_adapter(name, tmp_path / "empty")
    assert "layout" in str(err.value)


def test_options_are_checked(synth_root):
    with pytest.raises(ValueError, match="manifest"):
        get_adapter("iemocap", synth_root, manifest="labels.csv")
    with pytest.raises(ValueError, match="lo < hi"):
        get_adapter("csv", synth_root, label_scale=(5, 1))


# ---------------------------------------------------------------------------------------------------------------
# CSV manifests


def _manifest(root: Path, header: list[str], rows: list[list], name: str = "manifest.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root


def test_csv_defaults_and_ignored_columns(tmp_path):
    root = tmp_path / "corpus"
    _write_wav(root / "a" / "u1.wav")
    _write_wav(root / "a" / "u2.wav")
    _manifest(root, ["path", "speaker", "notes", "emotion", "arousal"],
              [["a/u2.wav", "s1", "loud", "Angry", "6.5"], ["a/u1.wav", "s2", "", "", ""]], name="labels.csv")
    records = get_adapter("csv", root, manifest="labels.csv", label_scale=(1, 7)).records()
    assert [r.utt_id for r in records] == ["u1", "u2"]
    u1, u2 = records
    assert (u1.emotion, u1.arousal, u1.gender, u1.session, u1.split, u1.style) == (None, None, None, None, None,
                                                                                   "spontaneous")
    assert (u2.emotion, u2.arousal, u2.speaker) == ("angry", 6.5, "s1")
    assert u2.audio_path == (root / "a" / "u2.wav").resolve()


def test_csv_missing_required_column_names_it(tmp_path):
    root = _manifest(tmp_path / "c", ["path", "emotion"], [["x.wav", "happy"]])
    with pytest.raises(ValueError, match="'speaker'") as err:
        get_adapter("csv", root).records()
    assert "dominance" in str(err.value)  # the documented columns are listed


def test_csv_unknown_emotion_names_the_row_and_the_valid_names(tmp_path):
    root = _manifest(tmp_path / "c", ["path", "speaker", "emotion"], [["x.wav", "s", "happy"], ["y.wav", "s", "joy"]])
    adapter = get_adapter("csv", root)
    records = adapter.records()
    assert [r.utt_id for r in records] == ["x", "y"]  # the bad row is yielded, bare, for ingestion to quarantine
    assert set(adapter.problems) == {"y"}
    reason, detail = adapter.problems["y"]
    assert reason == "bad_row"
    assert re.search(r"manifest\.csv:3.*'joy'.*neutral", detail) and "contempt" in detail
    assert records[1].emotion is None and records[1].speaker == "s"


def test_csv_attribute_outside_the_scale_is_a_row_problem(tmp_path):
    root = _manifest(tmp_path / "c", ["path", "speaker", "valence"], [["x.wav", "s", "6"]])
    adapter = get_adapter("csv", root)
    adapter.records()
    assert adapter.problems["x"][0] == "bad_row" and "label_scale" in adapter.problems["x"][1]


@pytest.mark.parametrize(("cells", "reason", "utt_id"), [
    (["a.wav", "s", "nan"], "non_finite_label", "a"),
    (["a.wav", "s", "-inf"], "non_finite_label", "a"),
    (["a.wav", "s", "loud"], "bad_row", "a"),
    (["a.wav", "", "3"], "bad_row", "a"),
    (["", "s", "3"], "bad_row", "manifest-line3"),
    (["a.wav"], "bad_row", "a"),  # a short row: the missing cells are empty, so no speaker
])
def test_csv_bad_rows_are_problems_and_the_good_row_stays(tmp_path, cells, reason, utt_id):
    root = _manifest(tmp_path / "c", ["path", "speaker", "arousal"], [["good.wav", "s", "3"], cells])
    adapter = get_adapter("csv", root)
    records = adapter.records()
    assert {r.utt_id for r in records} == {"good", utt_id}
    assert set(adapter.problems) == {utt_id} and adapter.problems[utt_id][0] == reason
    assert next(r for r in records if r.utt_id == "good").arousal == 3.0
    assert get_adapter("csv", root).records() == records  # problems are re-found on every call
    # An empty cell or NA is no label, not a problem.
    root = _manifest(tmp_path / "d", ["path", "speaker", "arousal"], [["e.wav", "s", ""], ["f.wav", "s", "NA"]])
    adapter = get_adapter("csv", root)
    assert [r.arousal for r in adapter.records()] == [None, None] and not adapter.problems


def test_csv_name_option_names_the_corpus(tmp_path):
    root = _manifest(tmp_path / "c", ["path", "speaker"], [["x.wav", "s"]])
    adapter = get_adapter("csv", root, name="calls_b")
    assert adapter.name == "calls_b" and adapter.records()[0].corpus == "calls_b"
    for bad in ("../x", "/abs", "a/b", "..", ".hidden", "", "x..y"):
        with pytest.raises(ValueError, match="plain name"):
            get_adapter("csv", root, name=bad)


def test_csv_unreadable_file_is_a_value_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.csv").write_bytes(b"path,speaker\n\xff\xfe,\x00s\n")
    with pytest.raises(ValueError, match="manifest.csv"):
        get_adapter("csv", tmp_path / "c").records()


def test_csv_duplicate_utt_id_is_an_error(tmp_path):
    root = _manifest(tmp_path / "c", ["path", "speaker"], [["a/x.wav", "s"], ["b/x.wav", "s"]])
    with pytest.raises(ValueError, match="'x'.*more than once"):
        get_adapter("csv", root).records()


def test_csv_missing_audio_is_still_yielded(tmp_path):
    root = _manifest(tmp_path / "c", ["path", "speaker"], [["gone.wav", "s"]])
    (record,) = get_adapter("csv", root).records()
    assert not record.audio_path.exists()  # ingestion quarantines it as "missing"


def test_csv_dotdot_path_escaping_the_root_is_rejected(tmp_path):
    _write_wav(tmp_path / "outside.wav")
    root = _manifest(tmp_path / "c", ["path", "speaker"], [["../outside.wav", "s"]])
    with pytest.raises(CorpusPathError, match=r"\.\./outside\.wav.*outside the corpus root") as err:
        get_adapter("csv", root).records()
    assert str(root.resolve()) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_symlink_escaping_the_root_is_rejected(tmp_path):
    target = _write_wav(tmp_path / "elsewhere" / "secret.wav")
    root = _manifest(tmp_path / "c", ["path", "speaker"], [["audio/link.wav", "s"]])
    (root / "audio").mkdir()
    (root / "audio" / "link.wav").symlink_to(target)
    with pytest.raises(CorpusPathError, match="link.wav"):
        get_adapter("csv", root).records()


def test_symlink_inside_the_root_is_fine(tmp_path):
    root = _manifest(tmp_path / "c", ["path", "speaker"], [["audio/link.wav", "s"]])
    target = _write_wav(root / "store" / "real.wav")
    (root / "audio").mkdir()
    (root / "audio" / "link.wav").symlink_to(target)
    (record,) = get_adapter("csv", root).records()
    assert record.audio_path == target.resolve() and record.utt_id == "link"


def test_msp_podcast_symlinked_audio_escaping_the_root_is_rejected(tmp_path):
    outside = _write_wav(tmp_path / "elsewhere" / "MSP-PODCAST_0001_0001.wav")
    root = tmp_path / "MSP-Podcast"
    (root / "Audios").mkdir(parents=True)
    (root / "Audios" / "MSP-PODCAST_0001_0001.wav").symlink_to(outside)
    _manifest(root / "Labels", ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender",
                                "Split_Set"],
              [["MSP-PODCAST_0001_0001.wav", "N", "4", "4", "4", "7", "Male", "Train"]], name="labels_consensus.csv")
    with pytest.raises(CorpusPathError):
        get_adapter("msp_podcast", tmp_path).records()


# ---------------------------------------------------------------------------------------------------------------
# Hand-made trees: IEMOCAP details and MSP-IMPROV


def test_iemocap_missing_audio_unlabelled_files_and_rater_details(tmp_path):
    session = tmp_path / "IEMOCAP_full_release" / "Session2"
    wav_dir = session / "sentences" / "wav" / "Ses02M_script01_1"
    _write_wav(wav_dir / "Ses02M_script01_1_F000.wav")
    _write_wav(wav_dir / "Ses02M_script01_1_M007.wav")  # has no label entry
    _write_wav(wav_dir / "._Ses02M_script01_1_F000.wav")  # a macOS fork file: not audio
    label = session / "dialog" / "EmoEvaluation" / "Ses02M_script01_1.txt"
    label.parent.mkdir(parents=True)
    (label.parent / "Categorical").mkdir()  # the release's sub-folders are not label files
    label.write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[1.0000 - 2.5000]\tSes02M_script01_1_F000\tfru\t[2.0000, 3.5000, 3.0000]\n"
        "C-E1:\tFrustration; Anger;\t()\n"
        "C-E3:\tFrustration;\t(annoyed)\n"
        "C-F1:\tNeutral state;\t()\n"
        "A-E1:\tval 2; act 3; dom  3;\t()\n\n"
        "[3.0000 - 4.0000]\tSes02M_script01_1_M001\txxx\t[3.0000, 3.0000, 3.0000]\n"
        "C-E2:\tOther:sarcastic;\t()\n"
    )
    adapter = get_adapter("iemocap", tmp_path)
    first, second = adapter.records()
    assert (first.utt_id, first.speaker, first.gender, first.session) == ("Ses02M_script01_1_F000", "Ses02F", "F",
                                                                          "Session2")
    assert (first.emotion, first.valence, first.arousal, first.dominance) == ("frustrated", 2.0, 3.5, 3.0)
    hist = dict(zip(EMOTION_VOCAB, first.rater_hist, strict=True))
    assert hist["frustrated"] == 1.5 and hist["angry"] == 0.5 and hist["neutral"] == 0.0  # self-report skipped
    assert (second.speaker, second.emotion) == ("Ses02M", None)
    assert not second.audio_path.exists()  # label without audio: still yielded
    assert dict(zip(EMOTION_VOCAB, second.rater_hist, strict=True))["other"] == 1.0
    assert [p.name for p in adapter.unlabelled_files] == ["Ses02M_script01_1_M007.wav"]


def test_iemocap_unknown_code_is_an_error(tmp_path):
    label = tmp_path / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    label.parent.mkdir(parents=True)
    label.write_text("% header\n\n[1.0 - 2.0]\tSes01F_impro01_F000\tjoy\t[3.0, 3.0, 3.0]\n")
    with pytest.raises(ValueError, match="'joy'.*valid codes"):
        get_adapter("iemocap", tmp_path).records()


def _improv_tree(root: Path) -> Path:
    audio = root / "MSP-IMPROV" / "Audio"
    _write_wav(audio / "session1" / "S01A" / "S" / "MSP-IMPROV-S01A-F01-S-FM01.wav")
    _write_wav(audio / "session1" / "S01A" / "P" / "MSP-IMPROV-S01A-M01-P-MF02.wav")
    _write_wav(audio / "session3" / "S05H" / "R" / "MSP-IMPROV-S05H-M03-R-MF01.wav")
    _write_wav(audio / "session3" / "S05H" / "T" / "MSP-IMPROV-S05H-F03-T-FM03.wav")  # no label entry
    (root / "MSP-IMPROV" / "Evalution.txt").write_text(
        "UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:4.200000; V:1.800000; D:3.600000 ; N:3.000000;\n"
        "p12-4-0301; Angry; Frustrated; A:4.0; V:2.0; D:4.0; N:3.0;\n"
        "p07-1-0098; Angry; ; A:5.0; V:1.0; D:4.0; N:3.0;\n"
        "p33-2-0111; Other; Disgusted; A:4.0; V:2.0; D:3.0; N:3.0;\n"
        "\n"
        "UTD-IMPROV-S01A-M01-P-MF02.avi; X; A:3.000000; V:3.000000; D:3.000000 ; N:4.000000;\n"
        "p12-4-0301; Neutral; ; A:3.0; V:3.0; D:3.0; N:4.0;\n"
        "p07-1-0098; Happy; ; A:3.0; V:3.0; D:3.0; N:4.0;\n"
        "\n"
        "UTD-IMPROV-S05H-M03-R-MF01.avi; H; A:3.500000; V:4.250000; D:NaN ; N:2.000000;\n"
        "\n"
        "UTD-IMPROV-S02N-F02-T-FM05.avi; N; A:2.000000; V:3.000000; D:2.000000 ; N:3.000000;\n"
        "p01-1-0001; Neutral; ; A:2.0; V:3.0; D:2.0; N:3.0;\n"
    )
    return root


def test_msp_improv_hand_made_tree_parses(tmp_path):
    adapter = get_adapter("msp_improv", _improv_tree(tmp_path))
    assert adapter.label_scale == (1.0, 5.0)
    records = {r.utt_id: r for r in adapter.records()}
    assert list(records) == sorted(records) and len(records) == 4
    s = records["MSP-IMPROV-S01A-F01-S-FM01"]
    assert (s.speaker, s.gender, s.session, s.style, s.split) == ("improv_F01", "F", "session1", "acted", None)
    assert (s.emotion, s.arousal, s.valence, s.dominance) == ("angry", 4.2, 1.8, 3.6)
    hist = dict(zip(EMOTION_VOCAB, s.rater_hist, strict=True))
    assert (hist["angry"], hist["other"], sum(s.rater_hist)) == (2.0, 1.0, 3.0)
    assert s.audio_path.is_file()
    p = records["MSP-IMPROV-S01A-M01-P-MF02"]
    assert (p.speaker, p.gender, p.style, p.emotion) == ("improv_M01", "M", "spontaneous", None)
    r = records["MSP-IMPROV-S05H-M03-R-MF01"]
    assert (r.session, r.emotion, r.dominance, r.rater_hist, r.style) == ("session3", "happy", None, None, "acted")
    missing = records["MSP-IMPROV-S02N-F02-T-FM05"]
    assert not missing.audio_path.exists()  # label without audio: still yielded, at the expected place
    assert missing.audio_path == (adapter.root / "Audio" / "session2" / "S02N" / "T" /
                                  "MSP-IMPROV-S02N-F02-T-FM05.wav")
    assert [f.name for f in adapter.unlabelled_files] == ["MSP-IMPROV-S05H-F03-T-FM03.wav"]


def test_msp_improv_malformed_line_is_an_error(tmp_path):
    (tmp_path / "Evalution.txt").write_text("UTD-IMPROV-S01A-F01-S-FM01.avi; A; arousal high\n")
    with pytest.raises(ValueError, match=r"Evalution\.txt:1"):
        get_adapter("msp_improv", tmp_path).records()


def test_module_docstrings_document_the_formats():
    assert "Evalution.txt" in adapters.MspImprovAdapter.__doc__
    for column in ("path", "speaker", "utt_id", "gender", "session", "split", "style", "emotion", "arousal"):
        assert column in adapters.CsvAdapter.__doc__

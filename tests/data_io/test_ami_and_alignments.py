"""IEMOCAP word alignments (.wdseg) and the AMI meeting adapter (data_io/adapters.py, data_io/synth.py; issue 11,
the multitask-DCGAN family's data: word-centred crops and unlabelled meeting speech)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_io import adapters, audio, features, shards, synth
from data_io.adapters import CorpusPathError, get_adapter, read_wdseg, speech_chunks
from data_io.ingest import IngestError, ingest
from data_io.schema import SAMPLE_RATE, UtteranceRecord

WDSEG = """\
 SFrm  EFrm    SegAScr Word
     0    24    -417690 <s>
    25    40    -183549 EXCUSE(2)
    41    55    -215226 ME
    56    70     -90000 <sil>
    71    80     -50000 ++BREATHING++
    81   120    -300000 HELLO
   121   140    -100000 </s>
 Total seg score: -1356465
"""


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    """The synthetic IEMOCAP and AMI corpora, small scale, seed 3."""
    root = tmp_path_factory.mktemp("corpora")
    for layout in ("iemocap", "ami"):
        synth.generate(layout, root, seed=3)
    return root


def _truth(root: Path, layout: str) -> list[dict]:
    lines = (root / synth.CORPUS_FOLDERS[layout] / synth.TRUTH_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def _write_wav(path: Path, y: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype="PCM_16")
    return path


def _overlap(span: tuple[float, float], spans) -> float:
    s, e = span
    return float(sum(max(0.0, min(e, b) - max(s, a)) for a, b in spans))


# ---------------------------------------------------------------------------------------------------------------
# .wdseg parsing


def test_wdseg_rows_become_word_spans_without_silence_or_noise(tmp_path):
    path = tmp_path / "Ses01F_impro01_F000.wdseg"
    path.write_text(WDSEG)
    # frames of 10 ms, end frame inclusive; <s>, <sil>, ++BREATHING++ and </s> are not words
    assert read_wdseg(path) == pytest.approx((0.25, 0.41, 0.41, 0.56, 0.81, 1.21))


def test_wdseg_of_silence_only_has_no_words(tmp_path):
    path = tmp_path / "x.wdseg"
    path.write_text(" SFrm  EFrm    SegAScr Word\n     0    99    -1000 <s>\n   100   120   -20 </s>\n"
                    " Total seg score: -1020\n")
    assert read_wdseg(path) == ()


@pytest.mark.parametrize("bad_line, lineno, message", [
    ("    41   abc    -215226 ME", 4, "a .wdseg row must look like"),
    ("    41    55    -215226", 4, "a .wdseg row must look like"),
    ("    55    41    -215226 ME", 4, "0 <= start frame <= end frame"),
    ("    10    12    -215226 ME", 4, "rows must be in time order"),
])
def test_malformed_wdseg_line_names_the_file_and_line(tmp_path, bad_line, lineno, message):
    lines = WDSEG.splitlines()
    lines[3] = bad_line
    path = tmp_path / "broken.wdseg"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"broken.wdseg:{lineno}: {message}"):
        read_wdseg(path)


def test_empty_wdseg_is_an_error(tmp_path):
    path = tmp_path / "empty.wdseg"
    path.write_text(" SFrm  EFrm    SegAScr Word\n")
    with pytest.raises(ValueError, match="empty.wdseg:1: no alignment rows"):
        read_wdseg(path)


def _iemocap_tree(root: Path) -> Path:
    """One dialog with three turns: one aligned, one without alignment, one whose alignment is given per test."""
    session = root / "IEMOCAP_full_release" / "Session1"
    label = session / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    label.parent.mkdir(parents=True)
    label.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "".join(
        f"[{k}.0000 - {k}.9000]\tSes01F_impro01_{g}00{k}\tneu\t[3.0000, 3.0000, 3.0000]\n\n"
        for k, g in ((0, "F"), (1, "M"), (2, "F"))))
    for utt in ("F000", "M001", "F002"):
        _write_wav(session / "sentences" / "wav" / "Ses01F_impro01" / f"Ses01F_impro01_{utt}.wav", np.zeros(1600))
    aligned = session / "sentences" / "ForcedAlignment" / "Ses01F_impro01"
    aligned.mkdir(parents=True)
    (aligned / "Ses01F_impro01_F000.wdseg").write_text(WDSEG)
    return aligned


def test_iemocap_reads_alignments_and_a_missing_one_is_none(tmp_path):
    _iemocap_tree(tmp_path)
    first, second, third = get_adapter("iemocap", tmp_path).records()
    assert first.words == pytest.approx((0.25, 0.41, 0.41, 0.56, 0.81, 1.21))
    assert second.words is None and third.words is None
    assert first.metadata()["words"] == list(first.words) and second.metadata()["words"] is None


def test_iemocap_malformed_alignment_names_the_file_and_line(tmp_path):
    aligned = _iemocap_tree(tmp_path)
    (aligned / "Ses01F_impro01_F002.wdseg").write_text(" SFrm  EFrm    SegAScr Word\n     0    24\n")
    with pytest.raises(ValueError, match=r"iemocap: .*Ses01F_impro01_F002\.wdseg:2: .*restore it") as err:
        get_adapter("iemocap", tmp_path).records()
    assert "'     0    24'" in str(err.value)  # the line as found


def test_iemocap_alignment_symlinked_outside_the_root_is_refused(tmp_path):
    aligned = _iemocap_tree(tmp_path / "corpus")
    outside = tmp_path / "elsewhere.wdseg"
    outside.write_text(WDSEG)
    (aligned / "Ses01F_impro01_M001.wdseg").symlink_to(outside)
    with pytest.raises(CorpusPathError, match="alignment path .*outside the corpus root"):
        get_adapter("iemocap", tmp_path / "corpus").records()


def test_synthetic_iemocap_words_lie_on_speech(corpora):
    """Every turn is aligned; words sit on the rendered voice, never on the silence padding around it."""
    records = get_adapter("iemocap", corpora).records()
    assert records and all(r.words for r in records)
    in_speech = total = 0.0
    margins = []
    for r in records[::3]:
        y = audio.load_audio(r.audio_path).astype(np.float64)
        regions = audio.speech_regions(y, SAMPLE_RATE)
        words = np.asarray(r.words).reshape(-1, 2)
        duration = len(y) / SAMPLE_RATE
        # The synthetic voice starts and stops at least 80 ms from either end of the file.
        assert words[0, 0] >= 0.08 and words[-1, 1] <= duration - 0.08, (r.utt_id, words)
        floor_db = 10 * np.log10(np.mean(y[:640] ** 2))  # the first 40 ms: background noise only
        for s, e in words:
            level_db = 10 * np.log10(np.mean(y[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)] ** 2))
            margins.append(level_db - floor_db)
            in_speech += _overlap((s, e), regions)
            total += e - s
    # Every word is louder than the background (a few lie on very quiet syllables), most of them by far ...
    assert min(margins) > 2.0 and np.median(margins) > 15.0
    # ... and, but for those quiet syllables the energy detector misses, inside its speech regions.
    assert in_speech / total > 0.97


# ---------------------------------------------------------------------------------------------------------------
# AMI: chunking


def test_speech_chunks_tile_each_stretch_and_drop_short_tails():
    regions = np.array([[0.0, 9.5], [12.0, 12.5], [20.0, 21.5], [30.0, 34.0]])
    assert speech_chunks(regions, 4.0, 1.0) == [(0.0, 4.0), (4.0, 8.0), (8.0, 9.5), (20.0, 21.5), (30.0, 34.0)]
    assert speech_chunks(regions, 4.0, 2.0) == [(0.0, 4.0), (4.0, 8.0), (30.0, 34.0)]
    assert speech_chunks(np.zeros((0, 2)), 4.0, 1.0) == []


def test_ami_chunks_are_speech_of_the_synthetic_meetings(corpora):
    adapter = get_adapter("ami", corpora)
    records = adapter.records()
    truth = _truth(corpora, "ami")
    meetings = sorted({t["meeting"] for t in truth})
    assert meetings == ["ES2002a", "ES2002b", "IS2003a"] and adapter.problems == {}
    assert adapter.unlabelled_files == []
    for meeting in meetings:
        utts = [(t["offset_s"], t["offset_s"] + t["duration_s"]) for t in truth if t["meeting"] == meeting]
        turns: dict[int, tuple[float, float]] = {}
        for t in truth:
            if t["meeting"] == meeting:
                lo, hi = turns.get(t["turn"], (t["offset_s"], t["offset_s"] + t["duration_s"]))
                turns[t["turn"]] = (min(lo, t["offset_s"]), max(hi, t["offset_s"] + t["duration_s"]))
        spans = [turns[k] for k in sorted(turns)]
        gaps = [(a[1], b[0]) for a, b in zip(spans[:-1], spans[1:], strict=True)]
        chunks = [r.segment for r in records if r.session == meeting]
        for s, e in chunks:
            assert adapters.AMI_MIN_CHUNK_SECONDS - 1e-6 <= e - s <= adapters.AMI_CHUNK_SECONDS + 1e-6
            assert _overlap((s, e), utts) / (e - s) > 0.95, (meeting, s, e)  # on speech
            assert _overlap((s, e), gaps) < 0.05, (meeting, s, e)  # never across the silence between turns
        # Nearly every turn gives a chunk (a short one whose speech, cut by a long pause, is all under
        # min_chunk_seconds, does not).
        assert sum(_overlap(turn, chunks) > 0 for turn in spans) >= 0.9 * len(spans)
        starts = [s for s, _ in chunks]
        assert starts == sorted(starts) and all(a[1] <= b[0] for a, b in zip(chunks[:-1], chunks[1:], strict=True))
    assert sum(abs(e - s - adapters.AMI_CHUNK_SECONDS) < 1e-6 for s, e in (r.segment for r in records)) >= 5


def test_ami_records_are_unlabelled_chunks_of_the_mix(corpora):
    records = get_adapter("ami", corpora / "amicorpus").records()
    assert [r.utt_id for r in records] == sorted(r.utt_id for r in records)
    for r in records:
        meeting, start_ms = r.utt_id.rsplit("_", 1)
        assert r.session == meeting and int(start_ms) == round(r.segment[0] * 1000) and len(start_ms) == 8
        assert r.audio_path == (corpora / "amicorpus" / meeting / "audio" / f"{meeting}.Mix-Headset.wav").resolve()
        assert r.speaker == f"ami_{meeting[:-1]}"  # the meeting series: ES2002a and ES2002b share ami_ES2002
        assert (r.corpus, r.style, r.gender, r.split) == ("ami", "spontaneous", None, None)
        assert (r.emotion, r.arousal, r.valence, r.dominance, r.rater_hist, r.words) == (None,) * 6


def test_ami_chunk_seconds_option(corpora):
    short = get_adapter("ami", corpora, chunk_seconds=2.0, min_chunk_seconds=0.5).records()
    default = get_adapter("ami", corpora).records()
    assert len(short) > len(default)
    lengths = np.array([e - s for s, e in (r.segment for r in short)])
    assert np.all(lengths <= 2.0 + 1e-6) and np.all(lengths >= 0.5 - 1e-6) and np.sum(np.abs(lengths - 2.0) < 1e-6)


@pytest.mark.parametrize("options, message", [
    ({"chunk_seconds": 0}, "chunk_seconds must be a finite number of seconds > 0, got 0"),
    ({"chunk_seconds": float("nan")}, "chunk_seconds must be"),
    ({"max_pause_s": "1"}, "max_pause_s must be"),
    ({"chunk_seconds": 2.0, "min_chunk_seconds": 3.0}, "min_chunk_seconds <= chunk_seconds must hold"),
    ({"chunk": 2.0}, r"takes options \['chunk_seconds', 'min_chunk_seconds', 'max_pause_s'\]"),
])
def test_ami_options_are_checked(corpora, options, message):
    with pytest.raises(ValueError, match=message):
        get_adapter("ami", corpora, **options)


def _meeting(root: Path, meeting: str, seconds: float = 6.0) -> Path:
    """A meeting of two 2 s tones separated by silence (the energy detector's speech), in the AMI layout."""
    sr = SAMPLE_RATE
    t = np.arange(int(seconds * sr)) / sr
    y = 0.2 * np.sin(2 * np.pi * 220 * t) * ((t >= 1.0) & (t < 3.0) | (t >= 4.0) & (t < 5.5))
    y += 1e-4 * np.random.default_rng(0).standard_normal(len(y))
    return _write_wav(root / meeting / "audio" / f"{meeting}.Mix-Headset.wav", y)


def test_ami_hand_made_meeting_other_streams_and_a_broken_mix(tmp_path):
    root = tmp_path / "amicorpus"
    _meeting(root, "IB4001")
    _write_wav(root / "IB4001" / "audio" / "IB4001.Headset-0.wav", np.zeros(160))  # another stream: not read
    broken = root / "ES2004a" / "audio" / "ES2004a.Mix-Headset.wav"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"RIFF not a wav file")
    adapter = get_adapter("ami", tmp_path)
    records = adapter.records()
    broken_rec, first, second = records  # the two tones, each shorter than a chunk; the broken meeting whole
    assert (broken_rec.utt_id, broken_rec.segment) == ("ES2004a", None)
    assert first.segment == pytest.approx((1.0, 3.0), abs=0.03) and second.segment == pytest.approx((4.0, 5.5),
                                                                                                      abs=0.03)
    assert first.utt_id == f"IB4001_{round(first.segment[0] * 1000):08d}" and first.speaker == "ami_IB4001"
    assert adapter.problems["ES2004a"][0] == "decode_error" and "ES2004a" in adapter.problems["ES2004a"][1]
    assert [p.name for p in adapter.unlabelled_files] == ["IB4001.Headset-0.wav"]


def test_ami_meeting_folder_symlinked_outside_the_root_is_refused(tmp_path):
    _meeting(tmp_path / "elsewhere", "ES2009a")
    root = tmp_path / "amicorpus"
    _meeting(root, "ES2008a")
    (root / "ES2009a").symlink_to(tmp_path / "elsewhere" / "ES2009a")
    with pytest.raises(CorpusPathError, match="ES2009a.*outside the corpus root"):
        get_adapter("ami", root).records()


def test_ami_mix_symlinked_outside_the_root_is_refused(tmp_path):
    outside = _meeting(tmp_path / "elsewhere", "ES2009a")
    root = tmp_path / "amicorpus"
    _meeting(root, "ES2008a")
    (root / "ES2009a" / "audio").mkdir(parents=True)
    (root / "ES2009a" / "audio" / "ES2009a.Mix-Headset.wav").symlink_to(outside)
    with pytest.raises(CorpusPathError, match="Mix-Headset.wav.*outside the corpus root"):
        get_adapter("ami", root).records()


# ---------------------------------------------------------------------------------------------------------------
# Segments: records that point into a longer file


def test_load_audio_segment_is_that_part_of_the_file(tmp_path):
    sr = SAMPLE_RATE
    y = (0.3 * np.random.default_rng(1).uniform(-1, 1, 10 * sr)).astype(np.float32)
    path = _write_wav(tmp_path / "long.wav", y)
    whole = audio.load_audio(path)
    part = audio.load_audio(path, segment=(2.5, 4.0))
    np.testing.assert_array_equal(part, whole[int(2.5 * sr):4 * sr])
    # max_seconds bounds the segment, not the file
    assert len(audio.load_audio(path, max_seconds=5.0, segment=(8.0, 10.0))) == 2 * sr
    with pytest.raises(audio.AudioCheckError, match="too_long"):
        audio.load_audio(path, max_seconds=5.0)
    assert len(audio.load_audio(path, segment=(9.0, 12.0))) == sr  # cut at the end of the file
    with pytest.raises(audio.AudioCheckError, match="empty: long.wav: 0 samples decoded in the segment 11-12 s"):
        audio.load_audio(path, segment=(11.0, 12.0))
    with pytest.raises(ValueError, match="0 <= start_s < end_s"):
        audio.load_audio(path, segment=(3.0, 2.0))


def test_record_segment_is_checked(tmp_path):
    ok = UtteranceRecord(utt_id="m_1", corpus="ami", audio_path=tmp_path / "m.wav", speaker="s", segment=(1.0, 2.5))
    assert "segment" not in ok.metadata()  # not a shard column
    for bad in ((2.0, 1.0), (-1.0, 1.0), (0.0, float("inf")), [0.0, 1.0], (0.0,)):
        with pytest.raises(ValueError, match="m_1: segment must"):
            UtteranceRecord(utt_id="m_1", corpus="ami", audio_path=tmp_path / "m.wav", speaker="s", segment=bad)


# ---------------------------------------------------------------------------------------------------------------
# End to end


def test_ingest_ami_gives_unlabelled_spectrogram_rows_per_chunk(corpora, tmp_path):
    summary = ingest("ami", corpora, tmp_path, ["spectrogram"], shard_size=32)
    records = {r.utt_id: r for r in get_adapter("ami", corpora).records()}
    assert summary.quarantined == 0 and summary.ingested == len(records)
    ss = shards.open_shards(tmp_path / "ami" / "spectrogram", verify_checksums=True)
    assert ss.manifest.label_scale is None and ss.manifest.corpus == "ami"
    meta = ss.metadata().to_pylist()
    assert {row["utt_id"] for row in meta} == set(records)
    cfg = features.resolve_feature_set("spectrogram")
    for row in meta:
        rec = records[row["utt_id"]]
        assert all(row[k] is None for k in ("emotion", "arousal", "valence", "dominance", "rater_hist", "words",
                                            "gender", "split"))
        assert (row["corpus"], row["style"], row["session"]) == ("ami", "spontaneous", rec.session)
        assert row["duration_s"] == pytest.approx(rec.segment[1] - rec.segment[0], abs=1e-3)
        assert len(row["speech"]) >= 2  # the chunk is speech
    # The features are those of the segment, not of the meeting.
    first = meta[0]
    y = audio.load_audio(records[first["utt_id"]].audio_path, segment=records[first["utt_id"]].segment)
    assert first["n_frames"] == features.extract(y, cfg).shape[0]
    # Resuming skips every chunk: the segment fingerprints are stable.
    again = ingest("ami", corpora, tmp_path, ["spectrogram"], shard_size=32)
    assert again.skipped_as_done == len(records) and again.chunks_done_now == 0
    # Other chunking is another utterance list: refused without --overwrite, as for any corpus.
    with pytest.raises(IngestError, match="different settings"):
        ingest("ami", corpora, tmp_path, ["spectrogram"], shard_size=32, adapter_options={"chunk_seconds": 2.0})

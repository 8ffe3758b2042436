"""Ingestion end to end on synthetic corpora in their real on-disk layouts (issue: foundation, acceptance)."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import soundfile as sf

from data_io import adapters, audio, shards
from data_io.ingest import SPEECH_DETECTION, IngestError, ingest
from data_io.schema import SAMPLE_RATE

MSP_CODES = {"A": "angry", "S": "sad", "H": "happy", "U": "surprised", "F": "fearful", "D": "disgusted",
             "C": "contempt", "N": "neutral", "O": "other", "X": None}
IEMOCAP_CODES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
                 "fru": "frustrated", "sur": "surprised", "fea": "fearful", "dis": "disgusted", "oth": "other",
                 "xxx": None}
MSP_SPLITS = {"Train": "train", "Development": "validation", "Test1": "test"}


@pytest.fixture(scope="module")
def corpora(synth_corpora):
    return synth_corpora


@pytest.fixture(scope="module")
def msp_shards(msp_functionals):
    return msp_functionals


def _shard_meta(out: Path, corpus: str, feature_set: str) -> dict[str, dict]:
    ss = shards.open_shards(out / corpus / feature_set, verify_checksums=True)
    return {row["utt_id"]: row for row in ss.metadata().to_pylist()}


def _assert_speech(rows: dict[str, dict], words: bool = False) -> None:
    """Every row has speech inside its audio (the synthetic utterances all hold speech) and word timings only when
    ``words`` (the corpus ships alignments)."""
    for utt, got in rows.items():
        speech = np.asarray(got["speech"], dtype=np.float64)
        assert len(speech) >= 2 and len(speech) % 2 == 0, (utt, got["speech"])
        assert np.all(np.diff(speech) >= 0), (utt, got["speech"])  # sorted, disjoint [start, end] pairs
        assert speech[0] >= 0 and speech[-1] <= got["duration_s"], (utt, got["speech"], got["duration_s"])
        assert (got["words"] is not None) == words, utt


def test_msp_podcast_labels_equal_label_file(corpora, msp_shards):
    out, summary = msp_shards
    assert summary.quarantined == 0 and summary.ingested > 0
    label_file = next((corpora / "msp_podcast").rglob("labels_consensus.csv"))
    with open(label_file, newline="") as f:
        expected = {Path(r["FileName"]).stem: r for r in csv.DictReader(f)}
    for fs in ("functionals", "logmel"):
        rows = _shard_meta(out, "msp_podcast", fs)
        assert set(rows) == set(expected)
        for utt, want in expected.items():
            got = rows[utt]
            assert got["emotion"] == MSP_CODES[want["EmoClass"]]
            for attr, col in (("arousal", "EmoAct"), ("valence", "EmoVal"), ("dominance", "EmoDom")):
                assert got[attr] == pytest.approx(float(want[col]), abs=1e-4)
            assert got["split"] == MSP_SPLITS[want["Split_Set"]]
            assert got["gender"] == want["Gender"][0]
            assert got["style"] == "spontaneous"
    manifest = shards.read_manifest(out / "msp_podcast" / "functionals")
    assert manifest.label_scale == [1.0, 7.0] or tuple(manifest.label_scale) == (1, 7)


def test_speech_column_is_speech_regions_of_the_decoded_audio(corpora, msp_shards):
    out, _ = msp_shards
    for fs in ("functionals", "logmel"):
        assert shards.read_manifest(out / "msp_podcast" / fs).speech_detection == SPEECH_DETECTION
    rows = _shard_meta(out, "msp_podcast", "logmel")
    _assert_speech(rows)
    # Row by row equal (to float32) to a fresh detection on the 16 kHz signal, for a few utterances.
    records = adapters.get_adapter("msp_podcast", corpora / "msp_podcast").records()
    for rec in records[::40]:
        want = audio.speech_regions(audio.load_audio(rec.audio_path, sr=SAMPLE_RATE), SAMPLE_RATE)
        np.testing.assert_allclose(rows[rec.utt_id]["speech"], want.ravel(), rtol=1e-6, atol=1e-6)


def test_iemocap_labels_equal_emoevaluation_files(corpora, tmp_path):
    summary = ingest("iemocap", corpora / "iemocap", tmp_path, ["logmel"])
    assert summary.quarantined == 0
    line = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t\[([\d.]+), ([\d.]+), ([\d.]+)\]")
    expected = {}
    for path in (corpora / "iemocap").rglob("EmoEvaluation/*.txt"):
        for text in path.read_text().splitlines():
            if m := line.match(text):
                expected[m.group(1)] = (IEMOCAP_CODES[m.group(2)], *map(float, m.group(3, 4, 5)))
    rows = _shard_meta(tmp_path, "iemocap", "logmel")
    assert set(rows) == set(expected) and len(rows) >= 200
    for utt, (emotion, val, aro, dom) in expected.items():  # the file's order is [V, A, D]
        got = rows[utt]
        assert (got["emotion"], got["valence"], got["arousal"], got["dominance"]) == pytest.approx(
            (emotion, val, aro, dom), abs=1e-4)
        assert got["speaker"] == utt[:5] + utt.rsplit("_", 1)[1][0]  # Ses01F_impro01_M003 -> Ses01M
        assert got["session"] == f"Session{int(utt[3:5])}"
    _assert_speech(rows, words=True)


def test_callcenter_csv_labels_and_resampling(corpora, tmp_path):
    summary = ingest("csv", corpora / "callcenter" / "callcenter", tmp_path, ["logmel"])
    assert summary.quarantined == 0
    manifest = next((corpora / "callcenter").rglob("manifest.csv"))
    with open(manifest, newline="") as f:
        expected = {r["utt_id"]: r for r in csv.DictReader(f)}
    rows = _shard_meta(tmp_path, "csv", "logmel")
    assert set(rows) == set(expected)
    for utt, want in expected.items():
        got = rows[utt]
        # An empty cell is "no label" (no rater majority, or not rated).
        assert (got["speaker"], got["gender"], got["emotion"]) == (want["speaker"], want["gender"],
                                                                     want["emotion"] or None)
        if want["arousal"]:
            assert got["arousal"] == pytest.approx(float(want["arousal"]), abs=1e-4)
        else:
            assert got["arousal"] is None
        # 8 kHz telephone audio is resampled: duration is preserved, not halved.
        info = sf.info(str(manifest.parent / want["path"]))
        assert info.samplerate == 8000
        assert got["duration_s"] == pytest.approx(info.frames / 8000, abs=0.01)
    _assert_speech(rows)


def test_librispeech_speakers_and_no_emotion(corpora, tmp_path):
    ingest("librispeech", corpora / "librispeech", tmp_path, ["logmel"])
    genders = {}
    for text in next((corpora / "librispeech").rglob("SPEAKERS.TXT")).read_text().splitlines():
        if text.startswith(";") or "|" not in text:
            continue
        sid, sex = (p.strip() for p in text.split("|")[:2])
        genders[sid] = sex
    rows = _shard_meta(tmp_path, "librispeech", "logmel")
    flacs = {p.stem for p in (corpora / "librispeech").rglob("*.flac")}
    assert set(rows) == flacs
    for utt, got in rows.items():
        spk = utt.split("-")[0]
        assert got["speaker"].endswith(spk) and got["gender"] == genders[spk]
        assert got["emotion"] is None and got["arousal"] is None and got["style"] == "read"
    _assert_speech(rows)


def _ridge(x_train, y_train, x_eval, reg=10.0):
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_eval - mu) / sd
    w = np.linalg.solve(a.T @ a + reg * np.eye(a.shape[1]), a.T @ (y_train - y_train.mean(0)))
    return b @ w + y_train.mean(0)


def _ccc(p, t):
    return 2 * np.cov(p, t, bias=True)[0, 1] / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)


def test_labels_are_learnable_from_functionals(msp_shards):
    """Model-free check: ridge regression on functionals; arousal is easier than valence, as in real data."""
    out, _ = msp_shards
    ss = shards.open_shards(out / "msp_podcast" / "functionals")
    meta = ss.metadata()
    x = ss.stack(meta["utt_id"].to_pylist())
    assert x.shape[1] >= 1000
    train = pc.equal(meta["split"], "train").to_numpy(zero_copy_only=False)
    held = ~train
    cccs = {}
    for attr in ("arousal", "valence"):
        y = meta[attr].to_numpy(zero_copy_only=False).astype(float)
        cccs[attr] = _ccc(_ridge(x[train], y[train], x[held], reg=300.0), y[held])
    emotions = np.array(meta["emotion"].to_pylist(), dtype=object)
    keep = np.isin(emotions, ["neutral", "happy", "sad", "angry"])
    classes = np.array(["neutral", "happy", "sad", "angry"])
    onehot = (emotions[:, None] == classes[None, :]).astype(float)
    scores = _ridge(x[train & keep], onehot[train & keep], x[held & keep], reg=300.0)
    pred, truth = scores.argmax(1), onehot[held & keep].argmax(1)
    ua = np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)])
    print(f"ridge on functionals: CCC arousal {cccs['arousal']:.3f}, valence {cccs['valence']:.3f}, UA {ua:.3f}")
    assert cccs["arousal"] > 0.5
    assert cccs["arousal"] > cccs["valence"] + 0.1
    assert ua > 0.25 + 0.15  # 4 classes: chance is 0.25


def _bad_corpus(corpora: Path, dst: Path) -> Path:
    """A copy of the call-centre corpus with four bad files added to its manifest."""
    src = next((corpora / "callcenter").rglob("manifest.csv")).parent
    import shutil

    shutil.copytree(src, dst)
    audio = dst / "bad"
    audio.mkdir()
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage that is not audio" * 3)
    (audio / "empty.wav").write_bytes(b"")
    nan = np.full(16000, np.nan, dtype=np.float32)
    sf.write(audio / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(audio / "tiny.wav", (0.1 * np.sin(np.arange(80) / 3)).astype(np.float32), 16000)  # 5 ms
    with open(dst / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    for name in ("corrupt", "empty", "nan", "tiny"):
        rows.append({**rows[0], "path": f"bad/{name}.wav", "utt_id": f"bad_{name}"})
    with open(dst / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return dst


def test_bad_files_are_quarantined_and_the_rest_ingested(corpora, tmp_path):
    root = _bad_corpus(corpora, tmp_path / "corpus")
    out = tmp_path / "shards"
    summary = ingest("csv", root, out, ["logmel", "functionals"])
    report = [json.loads(line) for line in (out / "_quarantine.jsonl").read_text().splitlines()]
    reasons = {q["utt_id"]: q["reason"] for q in report}
    assert reasons == {"bad_corrupt": "decode_error", "bad_empty": reasons["bad_empty"], "bad_nan": "non_finite",
                       "bad_tiny": "too_short"}
    assert reasons["bad_empty"] in ("empty", "decode_error")
    assert all(q["detail"] for q in report)
    n_good = sum(1 for _ in csv.DictReader(open(root / "manifest.csv"))) - 4
    assert summary.ingested == n_good and summary.quarantined == 4
    assert shards.open_shards(out / "csv" / "logmel").num_rows == n_good


def test_rerun_skips_done_shards_and_changed_settings_fail(corpora, tmp_path):
    first = ingest("iemocap", corpora / "iemocap", tmp_path, ["logmel"], shard_size=50)
    again = ingest("iemocap", corpora / "iemocap", tmp_path, ["logmel"], shard_size=50)
    assert again.chunks_done_now == 0 and again.skipped_as_done == first.ingested
    assert again.manifests == first.manifests  # same data -> same manifest hash
    with pytest.raises(IngestError, match="--overwrite"):
        ingest("iemocap", corpora / "iemocap", tmp_path, ["logmel"], shard_size=40)
    with pytest.raises(IngestError, match="logmel"):
        ingest("iemocap", corpora / "iemocap", tmp_path, ["logmel"], shard_size=50,
               feature_overrides={"logmel": {"n_mels": 32}})
    # Progress written by an older emotune (another schema version) is not resumed into this one's shards.
    plan = tmp_path / "iemocap" / "_progress" / "plan.json"
    plan.write_text(json.dumps({**json.loads(plan.read_text()), "schema_version": 1}))
    with pytest.raises(IngestError, match="schema_version changed.*--overwrite"):
        ingest("iemocap", corpora / "iemocap", tmp_path, ["logmel"], shard_size=50)
    redone = ingest("iemocap", corpora / "iemocap", tmp_path, ["logmel"], shard_size=40, overwrite=True)
    assert redone.ingested == first.ingested


def test_killed_ingest_resumes_without_duplicates(corpora, tmp_path):
    out = tmp_path / "shards"
    code = ("import sys; from pathlib import Path; from data_io.ingest import ingest; "
            f"ingest('msp_podcast', Path({str(corpora / 'msp_podcast')!r}), Path({str(out)!r}), "
            "['functionals'], shard_size=16)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    progress = out / "msp_podcast" / "_progress"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(progress.glob("chunk-*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(progress.glob("chunk-*.json")))
    assert 2 <= done_before, "the ingest should have committed shards before the kill"
    summary = ingest("msp_podcast", corpora / "msp_podcast", out, ["functionals"], shard_size=16)
    assert summary.chunks_done_now == summary.chunks_total - done_before
    ss = shards.open_shards(out / "msp_podcast" / "functionals", verify_checksums=True)
    ids = ss.metadata(columns=["utt_id"])["utt_id"].to_pylist()
    assert len(ids) == len(set(ids)) == summary.ingested + summary.skipped_as_done
    assert not [p for p in (out / "msp_podcast").rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_cli_ingest_with_ray_workers(corpora, tmp_path, capsys):
    from cluster.cli import main

    rc = main(["ingest", "--corpus", "librispeech", "--root", str(corpora / "librispeech"), "--features",
               "logmel,mfcc", "--out", str(tmp_path), "--workers", "2", "--shard-size", "16", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "quarantined 0" in text
    for fs in ("logmel", "mfcc"):
        assert shards.open_shards(tmp_path / "librispeech" / fs, verify_checksums=True).num_rows > 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    from cluster.cli import main

    rc = main(["ingest", "--corpus", "iemocap", "--root", str(tmp_path / "nope"), "--features", "logmel",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    rc = main(["ingest", "--corpus", "iemocap", "--root", str(tmp_path), "--features", "bogus", "--out",
               str(tmp_path / "o")])
    assert rc == 2
    assert "bogus" in capsys.readouterr().err

"""Ingestion against careless and hostile input (issue 7): one test per class of failure.

Each test builds its own small CSV corpus from the synthetic call-centre corpus (12 rows, shards of 4) and damages
it; the assertions check exit codes and messages, and that nothing was lost: every good row is in the shards.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cluster.cli import main
from data_io import features, shards
from data_io.ingest import ingest

N_ROWS = 12
SHARD = 4


def _small_corpus(synth_corpora: Path, dst: Path, n: int = N_ROWS) -> list[dict]:
    """Copy ``n`` rows of the call-centre corpus (audio keeps its mtime) to ``dst``; returns the rows."""
    src = next((synth_corpora / "callcenter").rglob("manifest.csv")).parent
    with open(src / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    for row in rows:
        (dst / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / row["path"], dst / row["path"])
    _write_manifest(dst, rows)
    return rows


def _write_manifest(root: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _ingest(root: Path, out: Path, name: str = "calls", **kwargs):
    return ingest("csv", root, out, ["logmel"], shard_size=SHARD, adapter_options={"name": name}, **kwargs)


def _rows(out: Path, name: str = "calls", fs: str = "logmel") -> dict[str, dict]:
    ss = shards.open_shards(out / name / fs, verify_checksums=True)
    return {r["utt_id"]: r for r in ss.metadata().to_pylist()}


def _quarantine(out: Path) -> dict[str, dict]:
    return {q["utt_id"]: q for q in map(json.loads, (out / "_quarantine.jsonl").read_text().splitlines())}


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["ingest", "--workers", "1", "--quiet", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- 1. stale re-ingest ----------------------------------------------------------------------------------------


def test_relabelled_manifest_is_reingested_with_new_labels_and_hash(synth_corpora, tmp_path):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    rows = _small_corpus(synth_corpora, root)
    first = _ingest(root, out)
    assert first.ingested == N_ROWS and first.chunks_changed == 0
    again = _ingest(root, out)  # nothing changed: nothing redone, same hash
    assert (again.chunks_done_now, again.skipped_as_done, again.manifests) == (0, N_ROWS, first.manifests)

    relabelled = [{**r, "emotion": "sad" if r["emotion"] != "sad" else "happy", "arousal": "4.5",
                   "speaker": r["speaker"] + "x", "split": "test"} for r in rows]
    _write_manifest(root, relabelled)
    redone = _ingest(root, out)
    assert redone.chunks_changed == redone.chunks_done_now == N_ROWS // SHARD
    assert redone.skipped_as_done == 0 and redone.ingested == N_ROWS
    assert redone.manifests["logmel"] != first.manifests["logmel"]
    assert any("redone because their inputs changed: 3 shards" in line for line in redone.lines())
    got = _rows(out)
    for want in relabelled:
        row = got[want["utt_id"]]
        assert (row["emotion"], row["arousal"], row["speaker"], row["split"]) == (
            want["emotion"], 4.5, want["speaker"], "test")
    assert shards.read_manifest(out / "calls" / "logmel").content_hash == redone.manifests["logmel"]

    # One row changed: only its chunk is redone.
    relabelled[5]["valence"] = "1.5"
    _write_manifest(root, relabelled)
    one = _ingest(root, out)
    assert (one.chunks_changed, one.chunks_done_now, one.skipped_as_done) == (1, 1, N_ROWS - SHARD)
    assert _rows(out)[relabelled[5]["utt_id"]]["valence"] == 1.5

    # A different utterance list is another plan: refused, naming --overwrite.
    _write_manifest(root, relabelled[:-1])
    with pytest.raises(ValueError, match="--overwrite"):
        _ingest(root, out)


def test_touched_or_replaced_audio_redoes_only_its_chunk(synth_corpora, tmp_path):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    rows = _small_corpus(synth_corpora, root)
    first = _ingest(root, out)
    before = _rows(out)
    target = root / rows[6]["path"]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: same bytes, new mtime
    touched = _ingest(root, out)
    assert (touched.chunks_changed, touched.chunks_done_now, touched.skipped_as_done) == (1, 1, N_ROWS - SHARD)
    assert touched.manifests == first.manifests  # same bytes in, same part out

    shutil.copy(root / rows[0]["path"], target)  # replaced by another recording
    replaced = _ingest(root, out)
    assert (replaced.chunks_changed, replaced.chunks_done_now) == (1, 1)
    after = _rows(out)
    assert after[rows[6]["utt_id"]]["duration_s"] == pytest.approx(before[rows[0]["utt_id"]]["duration_s"])
    assert replaced.manifests != first.manifests and set(after) == set(before)


# ---- 2. quarantine retried -------------------------------------------------------------------------------------


def test_fixed_quarantined_file_is_ingested_on_rerun(synth_corpora, tmp_path):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    rows = _small_corpus(synth_corpora, root)
    good_bytes = (root / rows[2]["path"]).read_bytes()
    (root / rows[2]["path"]).write_bytes(b"not audio at all" * 64)
    (root / rows[9]["path"]).write_bytes(b"")  # stays broken
    first = _ingest(root, out)
    assert first.quarantined == 2 and first.ingested == N_ROWS - 2

    unchanged = _ingest(root, out)  # the same broken files give the same answer: not retried
    assert unchanged.retried == 0 and unchanged.chunks_done_now == 0 and unchanged.quarantined == 2

    (root / rows[2]["path"]).write_bytes(good_bytes)  # fixed
    fixed = _ingest(root, out)
    assert (fixed.retried, fixed.recovered, fixed.chunks_done_now) == (1, 1, 1)
    assert fixed.ingested + fixed.skipped_as_done == N_ROWS - 1 and fixed.quarantined == 1
    text = "\n".join(fixed.lines())
    assert "retried 1 quarantined files: 1 now ingested, 0 still quarantined" in text
    assert "quarantined by reason: empty: 1" in text or "decode_error: 1" in text
    assert set(_rows(out)) == {r["utt_id"] for r in rows} - {rows[9]["utt_id"]}
    assert set(_quarantine(out)) == {rows[9]["utt_id"]}


def test_unexpected_exception_quarantines_one_file_and_is_retried_every_run(synth_corpora, tmp_path, monkeypatch):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    rows = _small_corpus(synth_corpora, root)
    real_extract = features.extract
    calls = {"n": 0}

    def flaky(y, cfg, sr):  # the 4th file processed hits an unexpected error (a library bug, an OOM)
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("transient failure")
        return real_extract(y, cfg, sr=sr)

    monkeypatch.setattr(features, "extract", flaky)
    first = _ingest(root, out)
    assert first.ingested == N_ROWS - 1 and first.quarantine_reasons == {"exception": 1}
    (entry,) = _quarantine(out).values()
    assert entry["reason"] == "exception" and "RuntimeError: transient failure" in entry["detail"]
    monkeypatch.setattr(features, "extract", real_extract)
    retried = _ingest(root, out)  # no input changed, yet an "exception" chunk is retried
    assert (retried.retried, retried.recovered, retried.quarantined) == (1, 1, 0)
    assert set(_rows(out)) == {r["utt_id"] for r in rows}


# ---- 3. hostile audio ------------------------------------------------------------------------------------------


def _wav_bytes(seconds: float, sr: int) -> bytes:
    """A 220 Hz tone as a canonical 44-byte-header PCM_16 WAV (sample rate at bytes 24-28)."""
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_hostile_wav_headers_are_quarantined_and_the_good_files_ingested(synth_corpora, tmp_path, capsys):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    rows = _small_corpus(synth_corpora, root)
    hostile = {}
    b = _wav_bytes(1.0, 16000)
    hostile["rate0"] = bytes(b[:24] + struct.pack("<I", 0) + b[28:])  # ZeroDivisionError before
    one_hz = b[:24] + struct.pack("<I", 1) + struct.pack("<I", 2) + b[32:4096]  # 4 KB claiming 1 Hz: 30 min
    hostile["rate1"] = bytes(one_hz)
    hostile["truncated"] = bytes(b[:44 + 31])  # the header and 15 samples of data
    hostile["garbage"] = os.urandom(5000)
    hostile["long"] = bytes(_wav_bytes(31.0, 8000))  # over --max-seconds 30
    expected = {"rate0": "bad_sample_rate", "rate1": "bad_sample_rate", "truncated": "too_short",
                "garbage": "decode_error", "long": "too_long"}
    for name, data in hostile.items():
        (root / "hostile").mkdir(exist_ok=True)
        (root / "hostile" / f"{name}.wav").write_bytes(data)
        rows.append({**rows[0], "path": f"hostile/{name}.wav", "utt_id": f"hostile_{name}"})
    _write_manifest(root, rows)

    rc, text, err = _cli(capsys, "--corpus", "csv", "--name", "calls", "--root", str(root), "--features",
                         "logmel", "--out", str(out), "--shard-size", "4", "--max-seconds", "30")
    assert rc == 0, err
    report = _quarantine(out)
    assert {u: q["reason"] for u, q in report.items()} == {f"hostile_{k}": v for k, v in expected.items()}
    assert all(q["detail"] for q in report.values())
    assert "1 Hz" in report["hostile_rate1"]["detail"] and "30 s limit" in report["hostile_long"]["detail"]
    assert set(_rows(out)) == {r["utt_id"] for r in rows[:N_ROWS]}  # every good file
    assert f"ingested {N_ROWS} / quarantined {len(hostile)}" in text


def test_nan_and_inf_labels_are_quarantined(synth_corpora, tmp_path):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    rows = _small_corpus(synth_corpora, root)
    rows[1]["arousal"], rows[4]["valence"], rows[7]["dominance"] = "nan", "inf", "high"
    _write_manifest(root, rows)
    summary = _ingest(root, out)
    report = _quarantine(out)
    assert {u: q["reason"] for u, q in report.items()} == {
        rows[1]["utt_id"]: "non_finite_label", rows[4]["utt_id"]: "non_finite_label", rows[7]["utt_id"]: "bad_row"}
    assert "'nan'" in report[rows[1]["utt_id"]]["detail"]
    assert summary.ingested == N_ROWS - 3 and set(_rows(out)) == {r["utt_id"] for r in rows} - set(report)
    meta = _rows(out)
    assert all(np.isfinite(r[a]) for r in meta.values() for a in ("arousal", "valence", "dominance"))

    # Fixing the rows brings them in (their chunks' fingerprints changed).
    rows[1]["arousal"], rows[4]["valence"], rows[7]["dominance"] = "3", "3", "3"
    _write_manifest(root, rows)
    fixed = _ingest(root, out)
    assert (fixed.retried, fixed.recovered, fixed.quarantined) == (3, 3, 0)


# ---- 4. paths and names ----------------------------------------------------------------------------------------


def _tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("bad", ["../../x", "ABSOLUTE", "a/b", "..", ".hidden"])
def test_feature_set_name_cannot_leave_out(synth_corpora, tmp_path, capsys, bad):
    root, out = tmp_path / "corpus", tmp_path / "work" / "shards"
    _small_corpus(synth_corpora, root)
    bad = str(tmp_path / "escaped") if bad == "ABSOLUTE" else bad
    before = _tree(tmp_path)
    rc, _, err = _cli(capsys, "--corpus", "csv", "--name", "calls", "--root", str(root), "--features", "logmel",
                      "--out", str(out), "--feature-param", f"logmel.name={bad}")
    assert rc == 2
    assert "plain name" in _one_line_error(err)
    assert _tree(tmp_path) == before  # nothing written anywhere, inside --out or out of it


def test_corpus_name_cannot_leave_out_and_csv_needs_one(synth_corpora, tmp_path, capsys):
    root, out = tmp_path / "corpus", tmp_path / "work" / "shards"
    _small_corpus(synth_corpora, root)
    before = _tree(tmp_path)
    for name in ("../../evil", str(tmp_path / "evil")):
        rc, _, err = _cli(capsys, "--corpus", "csv", "--name", name, "--root", str(root), "--features", "logmel",
                          "--out", str(out), "--overwrite")
        assert rc == 2 and "plain name" in _one_line_error(err)
    rc, _, err = _cli(capsys, "--corpus", "csv", "--root", str(root), "--features", "logmel", "--out", str(out))
    assert rc == 2 and "--name" in _one_line_error(err)
    rc, _, err = _cli(capsys, "--corpus", "iemocap", "--name", "x", "--root", str(root), "--features", "logmel",
                      "--out", str(out))
    assert rc == 2 and "--name is for --corpus csv" in _one_line_error(err)
    assert _tree(tmp_path) == before


def test_out_that_is_a_file_is_a_clear_error(synth_corpora, tmp_path, capsys):
    root = tmp_path / "corpus"
    _small_corpus(synth_corpora, root)
    target = tmp_path / "shards.txt"
    target.write_text("keep me")
    for out in (target, target / "below"):
        rc, _, err = _cli(capsys, "--corpus", "csv", "--name", "calls", "--root", str(root), "--features",
                          "logmel", "--out", str(out))
        assert rc == 2 and "shards.txt" in _one_line_error(err)
    assert target.read_text() == "keep me"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "calls").write_text("not a folder")  # where the corpus's folder would go
    rc, _, err = _cli(capsys, "--corpus", "csv", "--name", "calls", "--root", str(root), "--features", "logmel",
                      "--out", str(tmp_path / "out"), "--overwrite")
    assert rc == 2 and "calls is a file" in _one_line_error(err)
    assert (tmp_path / "out" / "calls").read_text() == "not a folder"


@pytest.mark.parametrize("item", ["logmel.n_mels=[1,", "logmel.n_mels={a: [", "logmel.window='unclosed"])
def test_malformed_feature_param_yaml_is_one_line(synth_corpora, tmp_path, capsys, item):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    _small_corpus(synth_corpora, root)
    rc, _, err = _cli(capsys, "--corpus", "csv", "--name", "calls", "--root", str(root), "--features", "logmel",
                      "--out", str(out), "--feature-param", item)
    assert rc == 2
    assert item in _one_line_error(err)
    assert not out.exists()


def test_feature_params_that_cannot_work_fail_before_any_file(synth_corpora, tmp_path, capsys):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    _small_corpus(synth_corpora, root)
    rc, _, err = _cli(capsys, "--corpus", "csv", "--name", "calls", "--root", str(root), "--features", "logmel",
                      "--out", str(out), "--feature-param", "logmel.fmax=12000")
    assert rc == 2 and "fmax" in _one_line_error(err)  # not 12 files quarantined with the same error
    assert not list(out.rglob("part-*.parquet"))


def test_two_csv_corpora_with_different_names_get_two_folders(synth_corpora, tmp_path, capsys):
    out = tmp_path / "shards"
    a_rows = _small_corpus(synth_corpora, tmp_path / "a", n=6)
    b_rows = _small_corpus(synth_corpora, tmp_path / "b", n=8)
    for name, root in (("calls_a", tmp_path / "a"), ("calls_b", tmp_path / "b")):
        rc, text, err = _cli(capsys, "--corpus", "csv", "--name", name, "--root", str(root), "--features",
                             "logmel", "--out", str(out))
        assert rc == 0, err
    a, b = _rows(out, "calls_a"), _rows(out, "calls_b")
    assert set(a) == {r["utt_id"] for r in a_rows} and set(b) == {r["utt_id"] for r in b_rows}
    assert {r["corpus"] for r in a.values()} == {"calls_a"} and {r["corpus"] for r in b.values()} == {"calls_b"}
    assert shards.read_manifest(out / "calls_b" / "logmel").corpus == "calls_b"


def test_progress_without_fingerprints_is_redone_not_trusted(synth_corpora, tmp_path):
    """Commit records of an emotune before fingerprints cannot prove their inputs are unchanged: redone once."""
    root, out = tmp_path / "corpus", tmp_path / "shards"
    _small_corpus(synth_corpora, root)
    first = _ingest(root, out)
    for record in (out / "calls" / "_progress").glob("chunk-*.json"):
        commit = json.loads(record.read_text())
        del commit["fingerprint"]
        record.write_text(json.dumps(commit))
    upgraded = _ingest(root, out)
    assert upgraded.chunks_changed == upgraded.chunks_done_now == N_ROWS // SHARD
    assert upgraded.manifests == first.manifests
    assert _ingest(root, out).chunks_done_now == 0

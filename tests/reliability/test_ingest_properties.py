"""Property test (Hypothesis): randomly damaged audio files and CSV rows never abort an ingest (issue 7).

Each example writes a tiny CSV corpus (a few 0.2 s WAV files), damages some files (truncation, overwritten bytes in
the header or the data, zero length, a bogus sample-rate or data-length field) and some rows (short rows, NaN, inf
or non-numeric labels, an empty or dangling audio path), ingests it serially without Ray and checks: ``ingest``
returns, every row is either in the shards or in the quarantine report with a reason and a detail (never both),
and every undamaged row is in the shards.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_io import shards
from data_io.ingest import ingest

SR = 16_000
N_FILES = 5
HEADER = 44  # canonical PCM WAV header written by libsndfile

FILE_DAMAGE = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("truncate"), st.integers(0, 6000)),
    st.tuples(st.just("overwrite"), st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 255)), min_size=1,
                                              max_size=8)),
    st.tuples(st.just("overwrite_header"), st.lists(st.tuples(st.integers(0, HEADER - 1), st.integers(0, 255)),
                                                     min_size=1, max_size=4)),
    st.just(("zero_length",)),
    st.tuples(st.just("sample_rate"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("data_length"), st.integers(0, 2**32 - 1)),
)
ROW_DAMAGE = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("short_row"), st.integers(1, 3)),
    st.tuples(st.just("label"), st.sampled_from(["arousal", "valence", "dominance"]),
              st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "loud", "3,5", "1e999", "9"])),
    st.just(("empty_path",)),
    st.just(("dangling_path",)),
)


def _good_wav(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.2 * SR)) / SR
    y = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.01 * rng.standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


GOOD = [_good_wav(i) for i in range(N_FILES + 1)]


def _damage_file(data: bytes, damage: tuple) -> bytes:
    kind = damage[0]
    b = bytearray(data)
    if kind == "truncate":
        return bytes(b[:damage[1]])
    if kind in ("overwrite", "overwrite_header"):
        for pos, value in damage[1]:
            if pos < len(b):
                b[pos] = value
        return bytes(b)
    if kind == "zero_length":
        return b""
    if kind == "sample_rate":
        b[24:28] = struct.pack("<I", damage[1])
    if kind == "data_length":
        b[40:44] = struct.pack("<I", damage[1])
    return bytes(b)


def _damage_row(row: list[str], damage: tuple, header: list[str]) -> list[str]:
    kind = damage[0]
    if kind == "short_row":
        return row[:damage[1]]
    if kind == "label":
        row = list(row)
        row[header.index(damage[1])] = damage[2]
        return row
    if kind == "empty_path":
        return ["", *row[1:]]
    if kind == "dangling_path":
        return ["audio/no_such_file.wav", *row[1:]]
    return row


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_damage=st.lists(FILE_DAMAGE, min_size=N_FILES, max_size=N_FILES),
       row_damage=st.lists(ROW_DAMAGE, min_size=N_FILES, max_size=N_FILES))
def test_damaged_files_and_rows_are_ingested_or_quarantined_never_raised(file_damage, row_damage):
    header = ["path", "utt_id", "speaker", "emotion", "arousal", "valence", "dominance"]
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "corpus", Path(tmp) / "shards"
        (root / "audio").mkdir(parents=True)
        rows, pristine = [], set()
        # File 0 and its row are never damaged, so there is always something to ingest.
        for i, (fd, rd) in enumerate([(("none",), ("none",)), *zip(file_damage, row_damage, strict=True)]):
            utt = f"u{i}"
            (root / "audio" / f"{utt}.wav").write_bytes(_damage_file(GOOD[i], fd))
            row = [f"audio/{utt}.wav", utt, f"spk{i % 2}", "happy", "3", "2.5", "4"]
            rows.append(_damage_row(row, rd, header))
            if fd == ("none",) and rd == ("none",):
                pristine.add(utt)
        with open(root / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

        summary = ingest("csv", root, out, ["logmel"], shard_size=2, adapter_options={"name": "prop"},
                         max_seconds=5.0)

        ss = shards.open_shards(out / "prop" / "logmel", verify_checksums=True)
        ingested = ss.metadata(columns=["utt_id"])["utt_id"].to_pylist()
        report = [json.loads(line) for line in (out / "_quarantine.jsonl").read_text().splitlines()]
        quarantined = {q["utt_id"] for q in report}
        assert all(q["reason"] and q["detail"] for q in report)
        assert len(ingested) == len(set(ingested)) and not set(ingested) & quarantined
        # Every row is accounted for: a row without a path is named after its manifest line.
        assert len(ingested) + len(report) == len(rows) == summary.ingested + summary.quarantined
        assert pristine <= set(ingested)
        meta = ss.metadata(columns=["arousal", "valence", "dominance"])
        for column in meta.columns:
            values = np.array([v for v in column.to_pylist() if v is not None], dtype=float)
            assert np.isfinite(values).all()

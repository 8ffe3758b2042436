"""Parquet shards and manifest: round trip, atomic writes, queries, and every ShardError case."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_io import shards
from data_io.schema import EMOTION_VOCAB, METADATA_COLUMNS, SCHEMA_VERSION, UtteranceRecord

RANGE_COLUMNS = ("speech", "words")
SPEECH_DETECTION = {"frame_s": 0.025, "hop_s": 0.01}


def make_rows(n: int, start: int = 0, seed: int = 0) -> tuple[list[dict], list[np.ndarray]]:
    rng = np.random.default_rng(seed + start)
    rows, feats = [], []
    for i in range(start, start + n):
        rows.append({
            "utt_id": f"utt{i:04d}", "corpus": "toy", "speaker": f"spk{i % 3}",
            "gender": None if i % 5 == 0 else ("F" if i % 2 else "M"),
            "session": None if i % 4 == 0 else f"S{i % 2}", "split": "train" if i % 3 else "test",
            "style": "acted", "emotion": None if i % 7 == 0 else ("happy" if i % 2 else "sad"),
            "arousal": None if i % 6 == 0 else 1.0 + (i % 5), "valence": 2.5, "dominance": None,
            "rater_hist": None if i % 2 else [float(i % 3)] * len(EMOTION_VOCAB),
            "speech": [] if i % 8 == 0 else [0.05, 0.2, 0.35, 0.45 + i / 200],
            "words": None if i % 3 else [0.06, 0.12, 0.12, 0.19, 0.36, 0.4],
            "duration_s": 0.5 + i / 100,
        })
        feats.append(rng.standard_normal((3 + i % 4, 5)).astype(np.float32))
    return rows, feats


def write_set(folder: Path, parts: list[tuple[list[dict], list[np.ndarray]]], dtype: str = "float32",
              config: dict | None = None, created: str = "2025-01-01T00:00:00Z",
              speech_detection: dict | None = None) -> shards.Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, (rows, feats) in enumerate(parts):
        table = shards.build_table(rows, feats, feature_dtype=dtype)
        files.append(shards.write_shard(table, folder / f"part-{k:05d}.parquet"))
    manifest = shards.Manifest(
        schema_version=SCHEMA_VERSION, corpus="toy", feature_set=folder.name,
        feature_config=config or {"n_mels": 5, "hop": 160}, librosa_version="0.11.0", label_scale=[1.0, 5.0],
        feature_dtype=dtype, speech_detection=speech_detection or SPEECH_DETECTION, files=files,
        total_rows=sum(f["rows"] for f in files), created=created)
    shards.write_manifest(folder, manifest)
    return manifest


@pytest.fixture
def shard_dir(tmp_path: Path) -> tuple[Path, list[dict], list[np.ndarray]]:
    a, b = make_rows(10, 0), make_rows(7, 10)
    folder = tmp_path / "toy" / "logmel"
    write_set(folder, [a, b])
    return folder, a[0] + b[0], a[1] + b[1]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_metadata_and_features(tmp_path: Path, dtype: str) -> None:
    rows, feats = make_rows(12)
    folder = tmp_path / "toy" / "fs"
    write_set(folder, [(rows[:5], feats[:5]), (rows[5:], feats[5:])], dtype=dtype)
    ss = shards.open_shards(folder, verify_checksums=True)
    assert ss.num_rows == 12 and ss.manifest.feature_dtype == dtype

    meta = ss.metadata()
    assert shards.FEATURE_COLUMN not in meta.column_names
    for col in METADATA_COLUMNS:
        got = meta.column(col).to_pylist()
        want = [r[col] for r in rows]
        if col in ("arousal", "valence", "dominance", "duration_s"):
            assert [g is None for g in got] == [w is None for w in want], col
            assert np.allclose([g for g in got if g is not None], [w for w in want if w is not None]), col
        elif col in RANGE_COLUMNS:  # stored as float32
            assert [g is None for g in got] == [w is None for w in want], col
            for g, w in zip(got, want, strict=True):
                assert g is None or (len(g) == len(w) and np.allclose(g, w, atol=1e-6)), col
        else:
            assert got == want, col
    assert meta.column("n_frames").to_pylist() == [f.shape[0] for f in feats]

    tol = 0 if dtype == "float32" else 2e-3
    for got, want in zip(ss.features([r["utt_id"] for r in rows]), feats, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)

    meta_all, values, offsets, shapes = ss.read_all()
    assert values.dtype == np.float32 and values.flags.c_contiguous and offsets.dtype == np.int64
    assert len(offsets) == 13 and shapes.shape == (12, 2)
    assert meta_all.column("utt_id").to_pylist() == [r["utt_id"] for r in rows]
    for i, want in enumerate(feats):
        got = values[offsets[i]:offsets[i + 1]].reshape(shapes[i])
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


def test_schema_and_table_agree() -> None:
    rows, feats = make_rows(3)
    for dtype in shards.FEATURE_DTYPES:
        table = shards.build_table(rows, feats, feature_dtype=dtype)
        assert table.schema.equals(shards.shard_schema(dtype))
        assert table.schema.names[: len(METADATA_COLUMNS)] == list(METADATA_COLUMNS)
    schema = shards.shard_schema("float32")
    assert schema.field("speech").type == pa.list_(pa.float32()) and not schema.field("speech").nullable
    assert schema.field("words").type == pa.list_(pa.float32()) and schema.field("words").nullable
    assert METADATA_COLUMNS.index("speech") == METADATA_COLUMNS.index("rater_hist") + 1
    assert METADATA_COLUMNS.index("words") == METADATA_COLUMNS.index("speech") + 1
    assert METADATA_COLUMNS.index("duration_s") == METADATA_COLUMNS.index("words") + 1
    with pytest.raises(ValueError, match="feature_dtype"):
        shards.shard_schema("float64")


def test_build_table_rejects_bad_rows() -> None:
    rows, feats = make_rows(3)
    with pytest.raises(ValueError, match="one feature per row"):
        shards.build_table(rows, feats[:2])
    bad = [dict(rows[0], extra=1), *rows[1:]]
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        shards.build_table(bad, feats)
    with pytest.raises(ValueError, match="'speaker' must not be null"):
        shards.build_table([dict(rows[0], speaker=None)], feats[:1])
    with pytest.raises(ValueError, match="same number of bins"):
        shards.build_table(rows[:2], [feats[0], np.zeros((2, 9), np.float32)])


@pytest.mark.parametrize(("column", "value", "message"), [
    ("speech", None, "'speech' must not be null"),
    ("speech", [0.1, 0.2, 0.3], r"'speech' must be a flat list \[start0, end0"),
    ("words", [[0.1, 0.2]], r"'words' must be a flat list .* got shape \(1, 2\)"),
    ("words", ["a", "b"], r"'words' must be a flat list .* got \['a', 'b'\]"),
    ("words", [0.1, float("nan")], "'words' must hold finite seconds"),
    ("speech", [0.3, 0.2], r"range 0 must satisfy 0 <= start <= end, got \[0.3, 0.2\]"),
    ("words", [-0.1, 0.2], r"range 0 must satisfy 0 <= start <= end, got \[-0.1, 0.2\]"),
    ("words", [0.3, 0.4, 0.1, 0.2], "sorted by start, got range 1 starting at 0.1 after one starting at 0.3"),
    ("speech", [0.1, 9.0], "speech must end by duration_s 0.5, got a range ending at 9.0"),
])
def test_build_table_rejects_bad_time_ranges(column: str, value, message: str) -> None:
    rows, feats = make_rows(1)
    with pytest.raises(ValueError, match=message) as err:
        shards.build_table([dict(rows[0], **{column: value})], feats)
    assert "'utt0000'" in str(err.value)


def test_build_table_names_the_bad_row_among_good_ones() -> None:
    rows, feats = make_rows(9)
    shards.build_table(rows, feats)  # the vectorised check passes them all
    rows[7] = dict(rows[7], words=[0.2, 0.3, 0.1, 0.4])  # each row alone sorted, but this one not
    with pytest.raises(ValueError, match="row 7 \\('utt0007'\\): column 'words': ranges must be sorted"):
        shards.build_table(rows, feats)


def test_record_with_words_round_trips(tmp_path: Path) -> None:
    words = (0.1, 0.35, 0.35, 0.8, 1.25, 1.6)
    rec = UtteranceRecord(utt_id="w1", corpus="toy", audio_path=tmp_path / "w1.wav", speaker="s1", words=words)
    bare = UtteranceRecord(utt_id="w2", corpus="toy", audio_path=tmp_path / "w2.wav", speaker="s1")
    assert rec.metadata()["words"] == list(words) and bare.metadata()["words"] is None
    rows = [{**r.metadata(), "speech": [0.05, 1.7], "duration_s": 1.8} for r in (rec, bare)]
    folder = tmp_path / "toy" / "fs"
    write_set(folder, [(rows, [np.zeros((4, 3), np.float32)] * 2)])
    meta = shards.open_shards(folder, verify_checksums=True).metadata(["utt_id", "speech", "words"])
    assert meta.column("utt_id").to_pylist() == ["w1", "w2"]
    np.testing.assert_allclose(meta.column("words")[0].as_py(), words, rtol=1e-6)
    assert meta.column("words")[1].as_py() is None
    np.testing.assert_allclose(meta.column("speech")[1].as_py(), [0.05, 1.7], rtol=1e-6)


def test_empty_shard_and_functionals(tmp_path: Path) -> None:
    folder = tmp_path / "toy" / "functionals"
    rows, _ = make_rows(4)
    vecs = [np.arange(6, dtype=np.float32) + i for i in range(4)]  # 1-D: one frame per utterance
    write_set(folder, [([], []), (rows, vecs)])
    ss = shards.open_shards(folder)
    stacked = ss.stack(["utt0003", "utt0001"])
    np.testing.assert_array_equal(stacked, np.stack([vecs[3], vecs[1]]))
    _, values, offsets, shapes = ss.read_all()
    assert shapes.tolist() == [[1, 6]] * 4 and offsets[-1] == 24


def test_stack_rejects_frame_features(shard_dir) -> None:
    folder, rows, _ = shard_dir
    ss = shards.open_shards(folder)
    with pytest.raises(ValueError, match="one shape"):
        ss.stack([rows[0]["utt_id"], rows[1]["utt_id"]])


def test_atomic_write_leaves_no_temp_and_reader_ignores_strays(shard_dir) -> None:
    folder, rows, _ = shard_dir
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["_manifest.json", "part-00000.parquet", "part-00001.parquet"]
    # A temp file a killed writer left behind: a valid Parquet file with other rows.
    stray_rows, stray_feats = make_rows(2, 500)
    pq.write_table(shards.build_table(stray_rows, stray_feats), folder / ".part-00002.parquet.tmp-1-abc")
    ss = shards.open_shards(folder, verify_checksums=True)
    assert ss.num_rows == len(rows)
    assert ss.metadata(["utt_id"]).num_rows == len(rows)
    assert ss.read_all()[0].num_rows == len(rows)
    assert shards.list_feature_sets(folder.parent.parent, "toy") == ["logmel"]


def test_failed_write_removes_temp(tmp_path: Path) -> None:
    rows, feats = make_rows(2)
    table = shards.build_table(rows, feats)
    with pytest.raises(Exception):  # noqa: B017 - any pyarrow error for an unknown codec
        shards.write_shard(table, tmp_path / "part-00000.parquet", compression="no-such-codec")
    assert list(tmp_path.iterdir()) == []


def test_projection_and_filters(shard_dir) -> None:
    folder, rows, _ = shard_dir
    ss = shards.open_shards(folder)
    meta = ss.metadata(columns=["utt_id", "speaker"])
    assert meta.column_names == ["utt_id", "speaker"]

    got = ss.metadata(["utt_id"], filter={"speaker": "spk1"}).column("utt_id").to_pylist()
    assert got == [r["utt_id"] for r in rows if r["speaker"] == "spk1"]
    got = ss.metadata(["utt_id"], filter={"speaker": ["spk0", "spk2"], "split": "train"})
    assert got.column("utt_id").to_pylist() == [
        r["utt_id"] for r in rows if r["speaker"] in ("spk0", "spk2") and r["split"] == "train"]
    got = ss.metadata(["utt_id"], filter={"emotion": None}).column("utt_id").to_pylist()
    assert got == [r["utt_id"] for r in rows if r["emotion"] is None]
    got = ss.metadata(["utt_id"], filter=pc.field("duration_s") > 0.65).column("utt_id").to_pylist()
    assert got == [r["utt_id"] for r in rows if r["duration_s"] > 0.65]

    with pytest.raises(ValueError, match="features"):
        ss.metadata(["utt_id", "feature"])
    with pytest.raises(ValueError, match="not a metadata column"):
        ss.metadata(filter={"nope": 1})


def test_features_order_and_unknown_id(shard_dir) -> None:
    folder, rows, feats = shard_dir
    ss = shards.open_shards(folder)
    order = [15, 2, 11, 2, 0]
    for got, i in zip(ss.features([rows[i]["utt_id"] for i in order]), order, strict=True):
        np.testing.assert_array_equal(got, feats[i])
    with pytest.raises(KeyError, match="utt9999"):
        ss.features([rows[0]["utt_id"], "utt9999"])


def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(shards.ShardError, match="emotune ingest") as err:
        shards.open_shards(tmp_path / "nope")
    assert "nope" in str(err.value)
    (tmp_path / "half").mkdir()
    with pytest.raises(shards.ShardError, match="_manifest.json.*emotune ingest"):
        shards.open_shards(tmp_path / "half")


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / shards.MANIFEST_NAME
    raw = json.loads(path.read_text())
    raw.update(changes)
    raw.pop("content_hash")
    path.write_text(json.dumps(raw))


def test_schema_version_mismatch(shard_dir) -> None:
    folder, _, _ = shard_dir
    _edit_manifest(folder, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder)
    msg = str(err.value)
    assert str(folder / "_manifest.json") in msg
    assert f"schema version {SCHEMA_VERSION + 1}; this emotune reads version {SCHEMA_VERSION}" in msg
    assert "fresh --out folder" in msg


def test_version_1_manifest_is_refused(shard_dir) -> None:
    # A folder written by schema version 1: no speech_detection in the manifest (and no speech/words columns).
    folder, _, _ = shard_dir
    path = folder / shards.MANIFEST_NAME
    raw = json.loads(path.read_text())
    del raw["speech_detection"], raw["content_hash"]
    raw["schema_version"] = 1
    path.write_text(json.dumps(raw))
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder)
    msg = str(err.value)
    assert f"schema version 1; this emotune reads version {SCHEMA_VERSION}" in msg
    assert "Re-run `emotune ingest` into a fresh --out folder" in msg


def test_manifest_without_speech_detection_is_refused(shard_dir) -> None:
    folder, _, _ = shard_dir
    path = folder / shards.MANIFEST_NAME
    raw = json.loads(path.read_text())
    del raw["speech_detection"]
    path.write_text(json.dumps(raw))
    with pytest.raises(shards.ShardError, match=r"lacks the fields \['speech_detection'\].*fresh --out"):
        shards.open_shards(folder)


def test_missing_part(shard_dir) -> None:
    folder, _, _ = shard_dir
    (folder / "part-00001.parquet").unlink()
    with pytest.raises(shards.ShardError, match="part-00001.parquet"):
        shards.open_shards(folder)


def test_checksum_mismatch_only_with_verify(shard_dir) -> None:
    folder, _, _ = shard_dir
    listed = shards.read_manifest(folder).files[0]
    # Same rows, other feature values: schema and row count still agree, only the bytes differ.
    rows, feats = make_rows(10, 0)
    table = shards.build_table(rows, [f + 1 for f in feats])
    info = shards.write_shard(table, folder / "part-00000.parquet")
    shards.open_shards(folder)  # footers only: not detected
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder, verify_checksums=True)
    msg = str(err.value)
    assert "part-00000.parquet" in msg and info["sha256"] in msg and listed["sha256"] in msg


def test_wrong_column_type(shard_dir) -> None:
    folder, _, _ = shard_dir
    path = folder / "part-00001.parquet"
    table = pq.read_table(path)
    idx = table.schema.get_field_index("arousal")
    table = table.set_column(idx, pa.field("arousal", pa.float64()), table.column(idx).cast(pa.float64()))
    pq.write_table(table, path)
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder)
    assert "part-00001.parquet" in str(err.value) and "'arousal'" in str(err.value)


def test_missing_column(shard_dir) -> None:
    folder, _, _ = shard_dir
    path = folder / "part-00000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["style"]), path)
    with pytest.raises(shards.ShardError, match="part-00000.parquet: column 'style'"):
        shards.open_shards(folder)


def test_content_hash(tmp_path: Path) -> None:
    part = make_rows(5)
    m1 = write_set(tmp_path / "a" / "fs", [part], created="2025-01-01T00:00:00Z")
    m2 = write_set(tmp_path / "b" / "fs", [part], created="2026-06-30T12:00:00Z")
    assert m1.content_hash == m2.content_hash  # same bytes, other time
    rows, feats = part
    m3 = write_set(tmp_path / "c" / "fs", [(rows, [f * 2 for f in feats])])
    assert m3.content_hash != m1.content_hash  # a file changed
    m4 = write_set(tmp_path / "d" / "fs", [part], config={"n_mels": 6, "hop": 160})
    assert m4.content_hash != m1.content_hash  # the feature config changed
    m5 = write_set(tmp_path / "e" / "fs", [part], speech_detection={**SPEECH_DETECTION, "range_db": 20.0})
    assert m5.content_hash != m1.content_hash  # the speech column was computed otherwise
    assert shards.open_shards(tmp_path / "a" / "fs").content_hash == m1.content_hash
    raw = json.loads((tmp_path / "a" / "fs" / "_manifest.json").read_text())
    assert raw["content_hash"] == m1.content_hash and list(raw) == sorted(raw)


def test_manifest_round_trip_and_edit_detection(shard_dir) -> None:
    folder, _, _ = shard_dir
    m = shards.read_manifest(folder)
    shards.write_manifest(folder, dataclasses.replace(m, created="later"))
    assert shards.read_manifest(folder).created == "later"
    assert shards.read_manifest(folder).speech_detection == SPEECH_DETECTION
    path = folder / "_manifest.json"
    raw = json.loads(path.read_text())
    raw["feature_config"]["n_mels"] = 99  # content_hash kept: the edit must be caught
    path.write_text(json.dumps(raw))
    with pytest.raises(shards.ShardError, match="edited"):
        shards.read_manifest(folder)


@pytest.mark.parametrize("change", [
    {"corpus": "other"}, {"feature_set": "mfcc"}, {"librosa_version": "0.10.2"}, {"label_scale": [1.0, 7.0]},
    {"label_scale": None}, {"feature_dtype": "float16"}, {"total_rows": 99}, {"schema_version": 1},
])
def test_content_hash_covers_every_field_that_changes_meaning(shard_dir, change: dict) -> None:
    folder, _, _ = shard_dir
    m = shards.read_manifest(folder)
    assert dataclasses.replace(m, **change).content_hash != m.content_hash
    assert dataclasses.replace(m, created="another time").content_hash == m.content_hash
    for key, value in (("rows", 1), ("bytes", 1), ("sha256", "0" * 64)):
        files = [dict(m.files[0], **{key: value}), *m.files[1:]]
        assert dataclasses.replace(m, files=files).content_hash != m.content_hash, key
    assert dataclasses.replace(m, files=m.files[::-1]).content_hash != m.content_hash  # row order


def test_checksum_cache_file_is_not_a_part(shard_dir) -> None:
    folder, rows, _ = shard_dir
    shards.open_shards(folder, verify_checksums=True)
    (folder / shards.CACHE_NAME).write_text("{}")  # whatever it holds, the reader never lists it as data
    assert shards.open_shards(folder, verify_checksums=True).read_all()[0].num_rows == len(rows)
    assert shards.list_feature_sets(folder.parent.parent, "toy") == ["logmel"]

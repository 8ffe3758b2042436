"""Hostile and careless shard folders (issue 7, scope 1-2): each test builds its own damage and asserts the refusal.

Classes: a flipped byte, a rewritten part (changed label, huge value), a manifest without its hash, a part name
outside the folder, a manifest field edited without rehashing, a dropped part, NaN/inf features and labels written
by another tool, and the checksum cache (paid once, invalidated by any change, working in read-only folders).
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_io import shards
from data_io.schema import EMOTION_VOCAB, SCHEMA_VERSION
from data_io.store import load_store


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch) -> Path:
    """A per-test user cache directory, so no test reads or writes the real ~/.cache."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def rows_and_features(n: int, start: int = 0, seed: int = 0) -> tuple[list[dict], list[np.ndarray]]:
    rng = np.random.default_rng(seed + start)
    rows = [{
        "utt_id": f"utt{i:04d}", "corpus": "toy", "speaker": f"spk{i % 3}", "gender": "F" if i % 2 else "M",
        "session": f"S{i % 2}", "split": "train", "style": "acted", "emotion": "happy" if i % 2 else "sad",
        "arousal": 1.0 + i % 5, "valence": 2.5, "dominance": None,
        "rater_hist": [float(i % 3)] * len(EMOTION_VOCAB), "speech": [0.05, 0.4], "words": None, "duration_s": 0.5,
    } for i in range(start, start + n)]
    return rows, [rng.standard_normal((4 + i % 3, 5)).astype(np.float32) for i in range(start, start + n)]


def write_parts(folder: Path, parts: list[tuple[list[dict], list[np.ndarray]]], **fields) -> shards.Manifest:
    """A shard set written with the library's own writers, exactly as another tool could write one."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [shards.write_shard(shards.build_table(rows, feats), folder / f"part-{k:05d}.parquet")
             for k, (rows, feats) in enumerate(parts)]
    manifest = shards.Manifest(**{
        "schema_version": SCHEMA_VERSION, "corpus": "toy", "feature_set": folder.name,
        "feature_config": {"n_mels": 5, "hop_length": 160, "sample_rate": 16000}, "librosa_version": "0.11.0",
        "label_scale": [1.0, 5.0], "feature_dtype": "float32", "speech_detection": {"frame_s": 0.025},
        "files": files, "total_rows": sum(f["rows"] for f in files), **fields})
    shards.write_manifest(folder, manifest)
    return manifest


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "toy" / "logmel"
    write_parts(path, [rows_and_features(6), rows_and_features(5, 6)])
    return path


def raw_manifest(folder: Path) -> dict:
    return json.loads((folder / shards.MANIFEST_NAME).read_text())


def raw_manifest_cache(folder: Path) -> dict:
    return json.loads((folder / shards.CACHE_NAME).read_text())


def put_raw_manifest(folder: Path, raw: dict) -> None:
    (folder / shards.MANIFEST_NAME).write_text(json.dumps(raw))


def rehashed(raw: dict) -> dict:
    """``raw`` with the content hash a forger would recompute for its fields."""
    fields = {k: v for k, v in raw.items() if k != "content_hash"}
    return {**fields, "content_hash": shards.Manifest(**fields).content_hash}


def count_hashes(monkeypatch) -> list[Path]:
    """Replace the part hasher by a counting wrapper; returns the list of hashed paths."""
    calls: list[Path] = []
    real = shards._sha256

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(shards, "_sha256", counting)
    return calls


def flip_byte(path: Path, keep_times: bool = False) -> None:
    """Flip one byte in the middle of the feature column's data, keeping the size (and the times if asked)."""
    st = path.stat()
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(pq.read_schema(path).get_field_index("feature"))
    where = chunk.data_page_offset + chunk.total_compressed_size // 2  # values, past the page header
    with open(path, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- checksums ---------------------------------------------------------------------------------------------
def test_flipped_byte_is_refused_naming_the_file(folder: Path) -> None:
    part = folder / "part-00001.parquet"
    flip_byte(part)
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder, verify_checksums=True)
    msg = str(err.value)
    assert str(part) in msg and "sha256" in msg and "changed after ingestion" in msg
    assert raw_manifest(folder)["files"][1]["sha256"] in msg


def test_flipped_byte_after_a_cached_verification_is_refused(folder: Path, monkeypatch) -> None:
    # The part was verified and recorded; then a byte flipped in place and its mtime was set back (touch -r).
    monkeypatch.setattr(shards, "_RACY_NS", 200_000_000)
    time.sleep(0.25)  # older than the racy window, so the verification is recorded
    shards.open_shards(folder, verify_checksums=True)
    assert "part-00000.parquet" in raw_manifest_cache(folder)["parts"]
    part = folder / "part-00000.parquet"
    before = part.stat()
    flip_byte(part, keep_times=True)
    after = part.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns, "the file system did not move ctime on a write"
    with pytest.raises(shards.ShardError, match="part-00000.parquet: sha256 is"):
        shards.open_shards(folder, verify_checksums=True)


@pytest.mark.parametrize("change", ["label", "huge value"])
def test_rewritten_part_is_refused(folder: Path, change: str) -> None:
    # Rewritten by the same writer: same schema, same rows and (float32, uncompressed) the same size, so only the
    # checksum can tell.
    rows, feats = rows_and_features(5, 6)
    if change == "label":
        rows[2]["arousal"] = 4.5
    else:
        feats[3][1, 2] = 3e38
    shards.write_shard(shards.build_table(rows, feats), folder / "part-00001.parquet")
    with pytest.raises(shards.ShardError, match="part-00001.parquet: sha256 is"):
        shards.open_shards(folder, verify_checksums=True)


# ---- the manifest ------------------------------------------------------------------------------------------
def test_manifest_without_content_hash_is_refused(folder: Path) -> None:
    raw = raw_manifest(folder)
    del raw["content_hash"]
    put_raw_manifest(folder, raw)
    for call in (shards.read_manifest, shards.open_shards):
        with pytest.raises(shards.ShardError) as err:
            call(folder)
        msg = str(err.value)
        assert str(folder / shards.MANIFEST_NAME) in msg and "has no content_hash" in msg
        assert "Re-run `emotune ingest` with the same --out" in msg


@pytest.mark.parametrize("name", ["../x.parquet", "ABSOLUTE", "sub/part-00001.parquet", "part-1.parquet",
                                  "part-00001.parquet/..", "x.parquet", "", 7])
def test_part_names_must_be_plain_names_in_the_folder(folder: Path, tmp_path: Path, name) -> None:
    if name == "ABSOLUTE":  # a real, valid part elsewhere: it must never be opened
        other = tmp_path / "elsewhere" / "logmel"
        write_parts(other, [rows_and_features(5, 6)])
        name = str(other / "part-00000.parquet")
    raw = raw_manifest(folder)
    raw["files"][1]["name"] = name
    put_raw_manifest(folder, rehashed(raw))  # the forger even fixed the hash
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder, verify_checksums=True)
    msg = str(err.value)
    assert f"files[1] has name {name!r}" in msg and "part-NNNNN.parquet" in msg
    # The writer refuses to write what the reader refuses.
    bad = shards.Manifest(**{k: v for k, v in raw.items() if k != "content_hash"})
    with pytest.raises(shards.ShardError, match="must be a plain file name"):
        shards.write_manifest(tmp_path, bad)
    assert not (tmp_path / shards.MANIFEST_NAME).exists()


def test_a_part_listed_twice_is_refused(folder: Path) -> None:
    raw = raw_manifest(folder)
    raw["files"][1] = dict(raw["files"][0])
    raw["total_rows"] = 2 * raw["files"][0]["rows"]
    put_raw_manifest(folder, rehashed(raw))
    with pytest.raises(shards.ShardError, match=r"files\[1\] lists part-00000.parquet a second time"):
        shards.open_shards(folder)


@pytest.mark.parametrize(("field", "value"), [
    ("label_scale", [1.0, 7.0]), ("label_scale", None), ("corpus", "iemocap"), ("feature_set", "mfcc"),
    ("librosa_version", "0.10.2"), ("feature_dtype", "float16"), ("schema_version", SCHEMA_VERSION),
    ("feature_config", {"n_mels": 5, "hop_length": 320, "sample_rate": 16000}),
    ("speech_detection", {"frame_s": 0.05}), ("files.rows", None), ("files.sha256", None), ("files.order", None),
])
def test_editing_a_field_without_rehashing_is_refused(folder: Path, field: str, value) -> None:
    raw = raw_manifest(folder)
    if field == "files.rows":  # rows moved between parts: the total still adds up
        raw["files"][0]["rows"] += 1
        raw["files"][1]["rows"] -= 1
    elif field == "files.sha256":
        raw["files"][0]["sha256"] = "0" * 64
    elif field == "files.order":
        raw["files"].reverse()
    elif field == "schema_version":  # unchanged: the hash must still match (control)
        pass
    else:
        raw[field] = value
    put_raw_manifest(folder, raw)
    if field == "schema_version":
        assert shards.read_manifest(folder).schema_version == SCHEMA_VERSION
        return
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder)
    msg = str(err.value)
    assert str(folder / shards.MANIFEST_NAME) in msg and "so it was edited" in msg and "emotune ingest" in msg


def test_editing_total_rows_is_refused(folder: Path) -> None:
    raw = raw_manifest(folder)
    raw["total_rows"] += 3
    put_raw_manifest(folder, raw)
    with pytest.raises(shards.ShardError, match="lists total_rows 14 but its files hold 11 rows"):
        shards.open_shards(folder)
    raw["files"][1]["rows"] += 3  # consistent now, but not rehashed
    put_raw_manifest(folder, raw)
    with pytest.raises(shards.ShardError, match="so it was edited"):
        shards.open_shards(folder)


def test_dropped_part_is_refused(folder: Path) -> None:
    raw = raw_manifest(folder)
    dropped = raw["files"].pop(1)
    raw["total_rows"] -= dropped["rows"]
    put_raw_manifest(folder, raw)
    with pytest.raises(shards.ShardError, match="so it was edited"):
        shards.open_shards(folder)
    # Rehashed by hand (or a manifest from an older run): the part still lying in the folder gives it away.
    put_raw_manifest(folder, rehashed(raw))
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder)
    msg = str(err.value)
    assert "['part-00001.parquet']" in msg and "does not list" in msg and "lost parts" in msg
    # The file gone as well: a manifest that is whole again opens (its rows are what it says).
    (folder / "part-00001.parquet").unlink()
    assert shards.open_shards(folder, verify_checksums=True).num_rows == 6


def test_deleted_part_is_refused(folder: Path) -> None:
    (folder / "part-00000.parquet").unlink()
    with pytest.raises(shards.ShardError, match="part-00000.parquet is listed in .* but missing"):
        shards.open_shards(folder)


def test_truncated_or_regrown_part_is_refused_without_verification(folder: Path) -> None:
    part = folder / "part-00001.parquet"
    table = pq.read_table(part)
    # Same schema and rows, another encoding: only the size (a stat) tells, no checksum needed.
    pq.write_table(table, part, compression="zstd")
    with pytest.raises(shards.ShardError, match=r"part-00001.parquet is \d+ bytes but the manifest lists \d+"):
        shards.open_shards(folder)


# ---- non-finite values -------------------------------------------------------------------------------------
def test_non_finite_features_are_refused_by_the_loader(tmp_path: Path) -> None:
    folder = tmp_path / "toy" / "logmel"
    a, b = rows_and_features(6), rows_and_features(5, 6)
    a[1][2][0, 3] = np.nan
    b[1][4][2, 0] = np.inf
    write_parts(folder, [a, b])
    ss = shards.open_shards(folder, verify_checksums=True)  # consistent checksums: only the values are bad
    for load in (ss.read_all, lambda: load_store([ss])):
        with pytest.raises(shards.ShardError) as err:
            load()
        msg = str(err.value)
        assert str(folder) in msg and "NaN or infinite" in msg
        assert "'feature' of 2 utterance(s) in part-00000.parquet, part-00001.parquet ('utt0002', 'utt0010')" in msg
        assert "Re-run `emotune ingest` into a fresh --out folder" in msg and "quarantines" in msg
    with pytest.raises(shards.ShardError, match="part-00001.parquet: utterance 'utt0010' has NaN or infinite"):
        ss.features(["utt0001", "utt0010"])
    assert ss.features(["utt0001"])[0].shape == (5, 5)
    ss.check_finite_metadata()  # the labels are fine


@pytest.mark.parametrize(("column", "value"), [
    ("arousal", float("nan")), ("valence", float("inf")), ("dominance", float("-inf")),
    ("rater_hist", [1.0, float("nan"), *[0.0] * (len(EMOTION_VOCAB) - 2)]), ("duration_s", float("nan")),
])
def test_non_finite_labels_are_refused_by_the_loader(tmp_path: Path, column: str, value) -> None:
    folder = tmp_path / "toy" / "logmel"
    a, b = rows_and_features(6), rows_and_features(5, 6)
    b[0][3][column] = value
    b[0][1]["dominance"] = None  # nulls are "no label", never refused
    write_parts(folder, [a, b])
    ss = shards.open_shards(folder, verify_checksums=True)
    for load in (ss.read_all, lambda: load_store([ss]), ss.check_finite_metadata):
        with pytest.raises(shards.ShardError) as err:
            load()
        msg = str(err.value)
        assert str(folder) in msg and f"{column!r} of 1 utterance(s) in part-00001.parquet ('utt0009')" in msg
        assert "emotune ingest" in msg


def test_many_bad_rows_are_summarised(tmp_path: Path) -> None:
    # The first few ids and a count of the rest: a wholly broken set still gives one readable line.
    folder = tmp_path / "toy" / "logmel"
    rows, feats = rows_and_features(12)
    for r in rows:
        r["arousal"] = float("nan")
    write_parts(folder, [(rows[:4], feats[:4]), (rows[4:], feats[4:])])
    with pytest.raises(shards.ShardError) as err:
        shards.open_shards(folder).read_all()
    msg = str(err.value)
    assert "'arousal' of 12 utterance(s) in part-00000.parquet, part-00001.parquet" in msg
    assert "('utt0000', 'utt0001', 'utt0002', 'utt0003', 'utt0004' and 7 more)" in msg and "\n" not in msg


# ---- the checksum cache ------------------------------------------------------------------------------------
@pytest.fixture
def recorded(folder: Path, monkeypatch) -> Path:
    """``folder`` verified once with the racy window off, so every part is recorded."""
    monkeypatch.setattr(shards, "_RACY_NS", 0)
    shards.open_shards(folder, verify_checksums=True)
    assert sorted(raw_manifest_cache(folder)["parts"]) == ["part-00000.parquet", "part-00001.parquet"]
    return folder


def test_second_verification_hashes_nothing(recorded: Path, monkeypatch) -> None:
    calls = count_hashes(monkeypatch)
    ss = shards.open_shards(recorded, verify_checksums=True)
    assert calls == [] and ss.num_rows == 11
    shards.open_shards(recorded, verify_checksums=True, checksum_cache=False)  # a full check still reads all
    assert [p.name for p in calls] == ["part-00000.parquet", "part-00001.parquet"]


def test_just_written_parts_are_hashed_again(folder: Path, monkeypatch) -> None:
    # Parts younger than the racy window could change again within one file-system clock tick unseen.
    calls = count_hashes(monkeypatch)
    shards.open_shards(folder, verify_checksums=True)
    shards.open_shards(folder, verify_checksums=True)
    assert len(calls) == 4
    assert not (folder / shards.CACHE_NAME).exists()


def test_touched_part_is_hashed_again(recorded: Path, monkeypatch) -> None:
    part = recorded / "part-00001.parquet"
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    calls = count_hashes(monkeypatch)
    shards.open_shards(recorded, verify_checksums=True)
    assert calls == [part]
    assert raw_manifest_cache(recorded)["parts"]["part-00001.parquet"]["mtime_ns"] == st.st_mtime_ns - 10**9
    shards.open_shards(recorded, verify_checksums=True)
    assert calls == [part]  # recorded again


def test_resized_or_reingested_part_is_not_trusted(recorded: Path, monkeypatch) -> None:
    part = recorded / "part-00001.parquet"
    with open(part, "ab") as f:
        f.write(b"\0" * 16)  # appended: a Parquet footer no longer at the end
    with pytest.raises(shards.ShardError, match="part-00001.parquet"):
        shards.open_shards(recorded, verify_checksums=True)
    # A re-ingest rewrote the part and the manifest: the record (other sha256, other inode) is not trusted.
    rows, feats = rows_and_features(5, 6, seed=1)
    info = shards.write_shard(shards.build_table(rows, feats), part)
    raw = raw_manifest(recorded)
    raw["files"][1] = info
    put_raw_manifest(recorded, rehashed(raw))
    calls = count_hashes(monkeypatch)
    shards.open_shards(recorded, verify_checksums=True)
    assert calls == [part]


def test_a_forged_or_damaged_cache_is_no_cache(recorded: Path, monkeypatch) -> None:
    cache = recorded / shards.CACHE_NAME
    raw = json.loads(cache.read_text())
    raw["parts"]["part-00000.parquet"]["sha256"] = "f" * 64  # claims another content than the manifest lists
    cache.write_text(json.dumps(raw))
    calls = count_hashes(monkeypatch)
    shards.open_shards(recorded, verify_checksums=True)
    assert [p.name for p in calls] == ["part-00000.parquet"]
    cache.write_text("{not json")
    shards.open_shards(recorded, verify_checksums=True)
    assert len(calls) == 3 and json.loads(cache.read_text())["version"] == 1


def _make_folder_unwritable(folder: Path, monkeypatch) -> None:
    """chmod the folder read-only; where that does not bind (root), refuse writes into it by hand as well."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(folder, os.W_OK):  # root ignores the mode: the OS would let the cache be written
        real = shards._write_json_atomic

        def refuse_in_folder(path: Path, obj, indent=None) -> None:
            if Path(path).parent == folder:
                raise PermissionError(13, "Permission denied", str(path))
            real(path, obj, indent)

        monkeypatch.setattr(shards, "_write_json_atomic", refuse_in_folder)


def test_read_only_folder_verifies_and_caches_per_user(folder: Path, user_cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(shards, "_RACY_NS", 0)
    _make_folder_unwritable(folder, monkeypatch)
    try:
        calls = count_hashes(monkeypatch)
        assert shards.open_shards(folder, verify_checksums=True).num_rows == 11
        assert len(calls) == 2 and not (folder / shards.CACHE_NAME).exists()
        written = list((user_cache / "emotune" / "verified").glob("*.json"))
        assert len(written) == 1 and json.loads(written[0].read_text())["folder"] == str(folder.resolve())
        shards.open_shards(folder, verify_checksums=True)
        assert len(calls) == 2  # trusted from the per-user cache
        flip_byte(folder / "part-00000.parquet")  # the files stay writable; their times move
        with pytest.raises(shards.ShardError, match="part-00000.parquet: sha256 is"):
            shards.open_shards(folder, verify_checksums=True)
    finally:
        folder.chmod(stat.S_IRWXU)


def test_no_writable_cache_anywhere_just_verifies_every_time(folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(shards, "_RACY_NS", 0)

    def refuse(path: Path, obj, indent=None) -> None:
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(shards, "_write_json_atomic", refuse)
    calls = count_hashes(monkeypatch)
    for _ in range(2):
        assert shards.open_shards(folder, verify_checksums=True).num_rows == 11
    assert len(calls) == 4

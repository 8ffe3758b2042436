"""Shard folders named by URI (issue 13, item 3): read through pyarrow.fs with the same checks as a local path.

``file://`` URIs of the synthetic corpus's shards stand in for ``s3://`` / ``gs://``: they take the same code path
(``FileSystem.from_uri``, no local ``Path``), and an ``s3://`` endpoint that refuses connections stands in for an
unreachable store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from data_io import shards
from trainables.data import load_store

UNREACHABLE_S3 = "s3://emotune-no-bucket/shards/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"


@pytest.fixture(scope="module")
def local_dir(msp_functionals) -> Path:
    return msp_functionals[0] / "msp_podcast" / "functionals"


@pytest.fixture
def copied(local_dir, tmp_path) -> Path:
    """A private copy of the shard folder, for tests that damage it."""
    folder = tmp_path / "msp_podcast" / "functionals"
    shutil.copytree(local_dir, folder)
    (folder / shards.CACHE_NAME).unlink(missing_ok=True)
    return folder


def test_a_file_uri_reads_what_the_local_path_reads(local_dir) -> None:
    local = shards.open_shards(local_dir, verify_checksums=True)
    remote = shards.open_shards(local_dir.as_uri(), verify_checksums=True)
    assert remote.folder == local_dir.as_uri() and remote.filesystem is not None and local.filesystem is None
    assert remote.content_hash == local.content_hash
    meta_l, values_l, offsets_l, shapes_l = local.read_all()
    meta_r, values_r, offsets_r, shapes_r = remote.read_all()
    assert meta_r.equals(meta_l)
    assert np.array_equal(values_r, values_l) and np.array_equal(offsets_r, offsets_l)
    assert np.array_equal(shapes_r, shapes_l)
    ids = meta_l.column("utt_id").to_pylist()[::50]
    assert np.array_equal(remote.stack(ids), local.stack(ids))
    assert remote.metadata(["utt_id"], filter={"split": "train"}).equals(
        local.metadata(["utt_id"], filter={"split": "train"}))
    assert shards.read_manifest(local_dir.as_uri()) == local.manifest


def test_the_store_of_a_uri_folder_is_the_local_one(local_dir) -> None:
    local, remote = load_store([shards.open_shards(local_dir)]), load_store([shards.open_shards(local_dir.as_uri())])
    assert np.array_equal(remote.values, local.values) and remote.meta.equals(local.meta)
    assert [s.folder for s in remote.sources] == [local_dir.as_uri()]


def test_a_uri_folder_is_verified_every_time_and_keeps_no_cache(copied) -> None:
    uri = copied.as_uri()
    shards.open_shards(uri, verify_checksums=True)
    assert not (copied / shards.CACHE_NAME).exists()  # an object store has no inode or ctime to trust
    part = copied / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same footer: only the checksum tells
    part.write_bytes(bytes(data))
    shards.open_shards(uri)  # footers only
    with pytest.raises(shards.ShardError, match=r"part-00000\.parquet: sha256 is .* but the manifest lists"):
        shards.open_shards(uri, verify_checksums=True)


def test_uri_folder_errors_name_the_uri_and_the_fix(copied) -> None:
    missing = copied.parent.as_uri() + "/no_such_set"
    with pytest.raises(shards.ShardError, match=f"shard folder {missing} does not exist"):
        shards.open_shards(missing)
    with pytest.raises(shards.ShardError, match="cannot be opened .*a URI pyarrow reads"):
        shards.open_shards("nosuchscheme://bucket/x")
    (copied / "part-00099.parquet").write_bytes((copied / "part-00000.parquet").read_bytes())
    with pytest.raises(shards.ShardError, match=r"part-00099\.parquet.*does not list"):
        shards.open_shards(copied.as_uri())
    (copied / "part-00099.parquet").unlink()
    (copied / "part-00001.parquet").unlink()
    with pytest.raises(shards.ShardError, match=r"part-00001\.parquet is listed in .* but missing"):
        shards.open_shards(copied.as_uri())
    (copied / shards.MANIFEST_NAME).unlink()
    with pytest.raises(shards.ShardError, match=r"_manifest\.json does not exist"):
        shards.open_shards(copied.as_uri())


def test_an_unreachable_object_store_is_named_with_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups for credentials
    with pytest.raises(shards.ShardError, match="cannot be reached .*credentials") as err:
        shards.open_shards(UNREACHABLE_S3)
    assert "emotune-no-bucket" in str(err.value)


def test_is_uri_tells_uris_from_paths() -> None:
    assert shards.is_uri("s3://b/x") and shards.is_uri("file:///data/x") and shards.is_uri("gs://b")
    assert not shards.is_uri("/data/x") and not shards.is_uri("shards/x") and not shards.is_uri(Path("a/b"))


def test_emotune_shards_summarises_a_uri_folder(local_dir, capsys) -> None:
    from cluster.cli import main

    assert main(["shards", local_dir.as_uri(), "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(local_dir.as_uri()) and "manifest hash" in out

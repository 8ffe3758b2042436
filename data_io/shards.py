"""Parquet shards of one corpus and feature set, and the manifest that identifies them (DESIGN.md, Data).

Layout: ``<out>/<corpus>/<feature_set>/part-NNNNN.parquet`` plus ``_manifest.json`` in the same folder. One
row per utterance: the :data:`~data_io.schema.METADATA_COLUMNS`, then ``n_frames``/``n_bins`` and ``feature``
(the ``(frames, bins)`` matrix flattened row-major into a ``list<float32>`` or ``list<float16>``). ``speech`` (never
null, empty when no speech was found) and ``words`` (null without word alignments) are ``list<float32>`` time
ranges in seconds from the start of the audio, flattened as ``[start0, end0, start1, end1, ...]``.

Parts are written atomically (temp file in the same folder, fsync, ``os.replace``), so a killed ingest never
leaves a half-written ``part-*.parquet``; the reader opens only the files the manifest lists, so stray temp
files are ignored, and a ``part-*.parquet`` it does not list is refused (the manifest lost rows).
:attr:`Manifest.content_hash` covers every manifest field that changes what the rows mean (every part's name, rows,
size and sha256 among them) and identifies the data; the sweep driver logs it as an MLflow tag. A manifest without
it, or whose fields no longer hash to it, is refused.

Verification (:func:`open_shards` with ``verify_checksums``) hashes every part once and records what it verified
in ``_verified.json`` (or a per-user cache for a read-only folder), so a later sweep over unchanged parts pays a
``stat`` per part. :meth:`ShardSet.read_all` refuses NaN or infinite features and labels, whoever wrote the shard.

Reading is built for the sweep driver, which decodes a whole feature set once (:meth:`ShardSet.read_all`) and
shares it through Ray's object store, one copy per node; see :data:`COMPRESSION` for the measurements behind the
storage choices. A shard folder may be a local path or a URI pyarrow's filesystems read (``s3://``, ``gs://``,
``hdfs://``, ``file://``; see :func:`open_shards`): only the driver reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data_io.schema import METADATA_COLUMNS, SCHEMA_VERSION

MANIFEST_NAME = "_manifest.json"
# What a manifest may list: a plain name in the folder, never a path (ingest writes part-{chunk:05d}.parquet).
PART_NAME = re.compile(r"part-[0-9]{5,}\.parquet")
_FILE_KEYS = ("name", "rows", "bytes", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
FEATURE_DTYPES = ("float32", "float16")
FEATURE_COLUMN = "feature"
SHAPE_COLUMNS = ("n_frames", "n_bins")

# Codec of every column. Measured with read_all on one core (taskset, quiet box, best of 7), files in the page
# cache, pyarrow 25, 2000 rows x (300 frames x 64 log-mel bins) = 154 MB of float32 payload in 8 parts:
#   codec    size    read_all (MB/s of float32 output)
#   none     1.00x   500-640       np.load of the same array: 2200-2500 MB/s
#   lz4      1.00x   460-490
#   snappy   1.00x   490-520
#   zstd     0.88x   310-350       (float16 storage: none 0.50x at ~480 MB/s, zstd 0.40x at ~380 MB/s)
# Log-mel floats have near-random mantissas: lz4/snappy save nothing and zstd 12 % at a third slower reads.
# Shards are read once per node per sweep and disk is cheap, so features go uncompressed. What bounds the
# read is Arrow rebuilding list offsets from Parquet's per-value repetition levels (the same bytes stored as
# one binary blob per row read at ~2.7 GB/s), the price of a self-describing list<float> column.
COMPRESSION = "none"
# Feature payload per row group: 1-8 MiB groups read as fast as or faster than bigger ones (~500-550 vs
# ~420-470 MB/s; the decoded group stays in cache while it is copied into place) and keep features() of a
# few ids from decoding a whole part.
ROW_GROUP_BYTES = 8 * 2**20

_STRING_COLUMNS = ("utt_id", "corpus", "speaker", "gender", "session", "split", "style", "emotion")
_NON_NULL = frozenset({"utt_id", "corpus", "speaker", "style", "speech", "duration_s", *SHAPE_COLUMNS,
                       FEATURE_COLUMN})
# Flat [start, end, ...] time-range columns, checked by build_table; list columns get no Parquet statistics.
_RANGE_COLUMNS = ("speech", "words")
_LIST_COLUMNS = ("rater_hist", *_RANGE_COLUMNS, FEATURE_COLUMN)
# Feature values checked for NaN/inf per block: a 1 MiB bool buffer, the block still in cache when it is reduced.
_FINITE_BLOCK = 1 << 20
_NON_FINITE_FIX = ("Re-run `emotune ingest` into a fresh --out folder: it quarantines utterances whose features or "
                   "labels are not finite (a shard written by another tool must hold finite values only).")


class ShardError(ValueError):
    """A shard folder is missing, from another schema version or damaged; the message names file and fix."""


# ---- folders named by URI ----------------------------------------------------------------------------------
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
REACH_FIX = ("check the URI, that this machine reaches the store (network, endpoint) and its credentials "
              "(AWS_* variables or ~/.aws for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://)")


def is_uri(folder: str | os.PathLike) -> bool:
    """Whether a shard folder is named by a URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``) rather than a path."""
    return bool(_URI.match(str(folder)))


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


def _filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` of a URI, or ShardError naming the URI and the fix."""
    from pyarrow import fs as pafs

    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException, ValueError) as err:  # an unknown scheme, a missing driver (libhdfs)
        raise ShardError(f"shard folder {uri} cannot be opened ({_first_line(err)}); use a local path or a URI "
                         f"pyarrow reads (s3://, gs://, hdfs://, file://), and {REACH_FIX}") from None
    return filesystem, base.rstrip("/")


def shard_schema(feature_dtype: str) -> pa.Schema:
    """The Arrow schema of every part file.

    Args:
        feature_dtype: ``"float32"`` or ``"float16"``, the storage type of the feature values.

    Returns:
        The schema: the metadata columns (``speech`` and ``words`` as ``list<float32>``), ``n_frames``,
        ``n_bins``, ``feature``.

    Raises:
        ValueError: An unknown ``feature_dtype``.
    """
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
    # Items are non-null: Parquet then stores no definition level per value (measured 15-60 % faster reads).
    item = pa.field("item", pa.float32() if feature_dtype == "float32" else pa.float16(), nullable=False)
    return pa.schema([
        *(pa.field(c, pa.string(), nullable=c not in _NON_NULL) for c in _STRING_COLUMNS),
        pa.field("arousal", pa.float32()),
        pa.field("valence", pa.float32()),
        pa.field("dominance", pa.float32()),
        pa.field("rater_hist", pa.list_(pa.float32())),
        pa.field("speech", pa.list_(pa.float32()), nullable=False),
        pa.field("words", pa.list_(pa.float32())),
        pa.field("duration_s", pa.float32(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("n_bins", pa.int32(), nullable=False),
        pa.field(FEATURE_COLUMN, pa.list_(item), nullable=False),
    ])


def _check_ranges(i: int, row: dict, name: str) -> None:
    """Raise ValueError unless ``row[name]`` is a flat ``[start, end, ...]`` list of sorted ranges in seconds."""
    value = row[name]
    if value is None:
        return
    where = f"row {i} ({row.get('utt_id')!r}): column {name!r}"
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a flat list [start0, end0, start1, end1, ...] of seconds, got "
                         f"{value!r}") from None
    if a.ndim != 1 or len(a) % 2:
        raise ValueError(f"{where} must be a flat list [start0, end0, start1, end1, ...] of seconds, got shape "
                         f"{a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{where} must hold finite seconds, got {a.tolist()}")
    starts, ends = a[0::2], a[1::2]
    bad = np.flatnonzero((starts < 0) | (ends < starts))
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"{where}: range {k} must satisfy 0 <= start <= end, got [{starts[k]}, {ends[k]}]")
    if np.any(np.diff(starts) < 0):
        k = int(np.flatnonzero(np.diff(starts) < 0)[0]) + 1
        raise ValueError(f"{where}: ranges must be sorted by start, got range {k} starting at {starts[k]} after "
                         f"one starting at {starts[k - 1]}")
    duration = row.get("duration_s")
    if name == "speech" and duration is not None and len(ends) and ends.max() > duration:
        raise ValueError(f"{where}: speech must end by duration_s {duration}, got a range ending at "
                         f"{ends.max()}")


def _ranges_ok(rows: list[dict], name: str) -> bool:
    """Every row's ``name`` passes :func:`_check_ranges`, checked in one vectorised pass over all rows.

    The per-row check costs about as much as detecting the speech itself; this one is ~20x cheaper. Anything it
    cannot vectorise (a nested list, a null duration) returns False and the per-row check gives the message.
    """
    present = [(row[name], row.get("duration_s")) for row in rows if row[name] is not None]
    if not present:
        return True
    try:
        lengths = np.fromiter((len(v) for v, _ in present), dtype=np.int64, count=len(present))
        flat = np.fromiter(itertools.chain.from_iterable(v for v, _ in present), dtype=np.float64,
                           count=int(lengths.sum()))
        if np.any(lengths % 2) or not np.isfinite(flat).all():
            return False
        starts, ends = flat[0::2], flat[1::2]
        row_of = np.repeat(np.arange(len(present)), lengths // 2)
        if np.any(starts < 0) or np.any(ends < starts) or np.any((np.diff(starts) < 0) & (np.diff(row_of) == 0)):
            return False
        if name == "speech":
            durations = np.array([d for _, d in present], dtype=np.float64)
            return not np.any(ends > durations[row_of])
    except (TypeError, ValueError):
        return False
    return True


def build_table(rows: list[dict], features: list[np.ndarray], feature_dtype: str = "float32") -> pa.Table:
    """Build one shard's table from metadata rows and feature matrices.

    Args:
        rows: ``UtteranceRecord.metadata()`` dicts plus ``speech`` (flat ``[start, end, ...]`` seconds, ``[]``
            when there is no speech) and ``duration_s``, one per utterance.
        features: ``(frames, bins)`` arrays in the same order (a 1-D array is one frame, as for functionals).
        feature_dtype: Storage type of the values, ``"float32"`` or ``"float16"``.

    Returns:
        A table with schema ``shard_schema(feature_dtype)``.

    Raises:
        ValueError: Row and feature counts differ, a row lacks or adds a column, a required column is null,
            ``speech`` or ``words`` is not a flat list of sorted ``0 <= start <= end`` ranges (or speech ends
            after ``duration_s``), or a feature is not 1-D/2-D or has other bins than the first row.
    """
    schema = shard_schema(feature_dtype)
    if len(rows) != len(features):
        raise ValueError(f"build_table needs one feature per row, got {len(rows)} rows and "
                         f"{len(features)} features")
    for i, row in enumerate(rows):
        missing = [k for k in METADATA_COLUMNS if k not in row]
        extra = [k for k in row if k not in METADATA_COLUMNS]
        if missing or extra:
            raise ValueError(f"row {i} ({row.get('utt_id')!r}): columns must be exactly "
                             f"{list(METADATA_COLUMNS)}; missing {missing}, unexpected {extra}")
    for name in _RANGE_COLUMNS:
        if not _ranges_ok(rows, name):
            for i, row in enumerate(rows):
                _check_ranges(i, row, name)
    shapes = np.zeros((len(features), 2), dtype=np.int64)
    flat = []
    for i, f in enumerate(features):
        a = np.asarray(f)
        a = a[None, :] if a.ndim == 1 else a
        if a.ndim != 2:
            raise ValueError(f"row {i} ({rows[i]['utt_id']!r}): a feature must be (frames, bins), "
                             f"got shape {a.shape}")
        shapes[i] = a.shape
        flat.append(a.reshape(-1))
    if len(features) and not np.all(shapes[:, 1] == shapes[0, 1]):
        bad = int(np.argmax(shapes[:, 1] != shapes[0, 1]))
        raise ValueError(f"all rows of a shard must have the same number of bins; row 0 has {shapes[0, 1]}, "
                         f"row {bad} ({rows[bad]['utt_id']!r}) has {shapes[bad, 1]}")
    np_dtype = np.dtype(feature_dtype)
    # One concatenated buffer + int32 offsets: the list column is built without touching Python floats.
    values = np.concatenate(flat).astype(np_dtype, copy=False) if flat else np.zeros(0, np_dtype)
    offsets = np.zeros(len(features) + 1, dtype=np.int64)
    np.cumsum(shapes[:, 0] * shapes[:, 1], out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"a shard holds fewer than 2**31 feature values, got {offsets[-1]}; "
                         f"use a smaller --shard-size")
    feature = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values),
                                       type=schema.field(FEATURE_COLUMN).type)
    columns = []
    for name in METADATA_COLUMNS:
        fld = schema.field(name)
        data = [row[name] for row in rows]
        if not fld.nullable and any(v is None for v in data):
            bad = next(i for i, v in enumerate(data) if v is None)
            raise ValueError(f"row {bad} ({rows[bad].get('utt_id')!r}): column {name!r} must not be null")
        columns.append(pa.array(data, type=fld.type))
    columns += [pa.array(shapes[:, 0].astype(np.int32)), pa.array(shapes[:, 1].astype(np.int32)), feature]
    return pa.Table.from_arrays(columns, schema=schema)


def _sha256(path: Path | PurePosixPath, filesystem=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") if filesystem is None else filesystem.open_input_stream(str(path)) as f:
        while chunk := f.read(4 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; Windows cannot open folders this way and does not need it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_path(path: Path) -> Path:
    # Leading dot and ".tmp": never matches part-*.parquet or _manifest.json, and ingest's clean-up finds it.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_shard(table: pa.Table, path: str | os.PathLike, *, compression: str = COMPRESSION) -> dict:
    """Write one part file atomically (temp file in the same folder, fsync, rename).

    Args:
        table: A table from :func:`build_table`.
        path: Destination ``<folder>/part-NNNNN.parquet``; the folder must exist.
        compression: Parquet codec; the default is the measured best for reading (see :data:`COMPRESSION`).

    Returns:
        ``{"name", "rows", "bytes", "sha256"}`` of the written file, as the manifest lists it.
    """
    path = Path(path)
    row_group_size = None
    if table.num_rows:
        n_values = int(np.sum(table.column("n_frames").to_numpy().astype(np.int64)
                              * table.column("n_bins").to_numpy()))
        width = 4 if table.schema.field(FEATURE_COLUMN).type.value_type == pa.float32() else 2
        row_bytes = max(1, n_values * width // table.num_rows)
        row_group_size = max(1, min(table.num_rows, ROW_GROUP_BYTES // row_bytes))
    tmp = _temp_path(path)
    try:
        pq.write_table(
            table, tmp, compression=compression, row_group_size=row_group_size,
            # Dictionaries pay off for the repeated label strings only; on floats they are tried, abandoned
            # after the first page and cost write time.
            use_dictionary=[c for c in _STRING_COLUMNS if c != "utt_id"],
            write_statistics=[c for c in table.column_names if c not in _LIST_COLUMNS],
        )
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        digest, size = _sha256(tmp), tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return {"name": path.name, "rows": table.num_rows, "bytes": size, "sha256": digest}


# ---- manifest ----------------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """What a shard folder holds; ``_manifest.json`` on disk.

    Attributes:
        schema_version: :data:`~data_io.schema.SCHEMA_VERSION` the shards were written with.
        corpus: Corpus name.
        feature_set: Feature-set name (the folder name).
        feature_config: The resolved feature parameters (n_fft, hop, n_mels, ...).
        librosa_version: The librosa that extracted the features.
        label_scale: ``[low, high]`` of the corpus's attribute labels, or None when it has none.
        feature_dtype: ``"float32"`` or ``"float16"``.
        speech_detection: Parameters of ``data_io.audio.speech_regions`` that filled the ``speech`` column.
        files: ``{"name", "rows", "bytes", "sha256"}`` per part file, in row order.
        total_rows: Sum of the files' rows.
        created: ISO-8601 time of writing (not part of :attr:`content_hash`).
    """

    schema_version: int
    corpus: str
    feature_set: str
    feature_config: dict
    librosa_version: str
    label_scale: list[float] | None
    feature_dtype: str
    speech_detection: dict
    files: list[dict] = field(default_factory=list)
    total_rows: int = 0
    created: str = ""

    @property
    def content_hash(self) -> str:
        """sha256 over every field that changes what the rows mean (all but ``created``).

        Schema version, corpus, feature set and config, librosa version (it changes the numbers), label scale,
        feature dtype, speech detection, each file's ``(name, rows, bytes, sha256)`` in row order, and the total
        rows: editing any of them by hand makes :func:`read_manifest` refuse the file.
        """
        payload = {
            "schema_version": self.schema_version,
            "corpus": self.corpus,
            "feature_set": self.feature_set,
            "feature_config": self.feature_config,
            "librosa_version": self.librosa_version,
            "label_scale": self.label_scale,
            "feature_dtype": self.feature_dtype,
            "speech_detection": self.speech_detection,
            # In order: the order of the parts is the order of the rows.
            "files": [[f["name"], f["rows"], f["bytes"], f["sha256"]] for f in self.files],
            "total_rows": self.total_rows,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def to_dict(self) -> dict:
        """The JSON form: the fields plus ``content_hash`` (for people and tools reading the file)."""
        return {**asdict(self), "content_hash": self.content_hash}


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``<folder>/_manifest.json`` atomically (JSON, sorted keys, indented).

    Args:
        folder: The feature-set folder.
        manifest: What to write.

    Returns:
        The manifest's path.

    Raises:
        ShardError: The manifest would be refused by :func:`read_manifest` (a part name that is not a plain
            ``part-NNNNN.parquet``, a file entry without ``rows``/``bytes``/``sha256``, rows that do not add up).
    """
    path = Path(folder) / MANIFEST_NAME
    _check_files(path, manifest.files, manifest.total_rows)  # never write what the reader refuses
    _write_json_atomic(path, manifest.to_dict(), indent=1)
    return path


def _write_json_atomic(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON (sorted keys) through a temp file, fsync and rename: readers see old or new, whole."""
    tmp = _temp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, sort_keys=True, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_files(where: Path, files: Any, total_rows: Any) -> None:
    """Raise ShardError unless ``files`` lists plain, distinct part names with their rows, bytes and sha256.

    Names are checked against :data:`PART_NAME` so that no entry can point outside the folder (``../x``, an
    absolute path) or at a file the reader was never meant to open.
    """
    fix = "Re-run `emotune ingest` into a fresh --out folder."
    if not isinstance(files, list):
        raise ShardError(f"{where}: 'files' must be a list of part entries, got {type(files).__name__}. {fix}")
    seen: set[str] = set()
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or any(k not in entry for k in _FILE_KEYS):
            raise ShardError(f"{where}: files[{i}] must be an object with the keys {list(_FILE_KEYS)}, got "
                             f"{entry!r}. {fix}")
        name = entry["name"]
        if not isinstance(name, str) or not PART_NAME.fullmatch(name):
            raise ShardError(f"{where}: files[{i}] has name {name!r}, but a part must be a plain file name "
                             f"inside the shard folder matching part-NNNNN.parquet (no folders, '..' or "
                             f"absolute paths). {fix}")
        if name in seen:
            raise ShardError(f"{where}: files[{i}] lists {name} a second time, which would read its rows twice. "
                             f"{fix}")
        seen.add(name)
        for key in ("rows", "bytes"):
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ShardError(f"{where}: files[{i}] ({name}) must have an integer {key} >= 0, got {value!r}. "
                                 f"{fix}")
        digest = entry["sha256"]
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ShardError(f"{where}: files[{i}] ({name}) must have a sha256 of 64 lowercase hex digits, got "
                             f"{digest!r}. {fix}")
    total = sum(entry["rows"] for entry in files)
    if total != total_rows:
        raise ShardError(f"{where} lists total_rows {total_rows} but its files hold {total} rows; re-run "
                         f"`emotune ingest` to rewrite it.")


def _check_schema_version(where: Path, version: Any) -> None:
    if version != SCHEMA_VERSION:
        raise ShardError(f"{where} has schema version {version}; this emotune reads version "
                         f"{SCHEMA_VERSION}. Re-run `emotune ingest` into a fresh --out folder.")


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """Read ``<folder>/_manifest.json``.

    Args:
        folder: The feature-set folder: a local path or a URI (see :func:`open_shards`).

    Returns:
        The :class:`Manifest`.

    Raises:
        ShardError: The file is missing, not JSON, from another schema version (checked first: older versions
            lack fields this one has), lacks a field or its ``content_hash``, lists a part that is not a plain
            ``part-NNNNN.parquet`` name (or twice), its rows do not add up to ``total_rows``, or its stored
            content hash disagrees with its contents (it was edited by hand).
    """
    missing = (f"does not exist, so {folder} is not a finished shard folder. Run `emotune ingest` (it resumes an "
               f"interrupted ingest) and pass <out>/<corpus>/<feature_set>.")
    if is_uri(folder):
        filesystem, base = _filesystem(str(folder))
        path = f"{str(folder).rstrip('/')}/{MANIFEST_NAME}"
        try:
            with filesystem.open_input_stream(f"{base}/{MANIFEST_NAME}") as f:
                text = f.read().decode()
        except FileNotFoundError:
            raise ShardError(f"{path} {missing}") from None
        except OSError as err:
            raise ShardError(f"{path} cannot be read ({_first_line(err)}); {REACH_FIX}") from None
    else:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ShardError(f"{path} {missing}")
        text = path.read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ShardError(f"{path} is not valid JSON ({err}); re-run `emotune ingest` to rewrite it") from None
    if not isinstance(raw, dict):
        raise ShardError(f"{path} must hold a JSON object, got {type(raw).__name__}; re-run `emotune ingest` "
                         f"into a fresh --out folder")
    if "schema_version" in raw:
        _check_schema_version(path, raw["schema_version"])
    names = [f.name for f in fields(Manifest)]
    missing = [n for n in names if n not in raw]
    if missing:
        raise ShardError(f"{path} lacks the fields {missing}; re-run `emotune ingest` into a fresh --out "
                         f"folder")
    stored = raw.get("content_hash")
    if stored is None:
        # Without its hash nothing shows that a field was edited or a part dropped (rows lost) after ingestion.
        raise ShardError(f"{path} has no content_hash, so edits to it (a dropped part, a changed label scale) "
                         f"cannot be detected. Re-run `emotune ingest` with the same --out to rewrite it (finished "
                         f"parts are kept).")
    _check_files(path, raw["files"], raw["total_rows"])
    manifest = Manifest(**{n: raw[n] for n in names})
    if stored != manifest.content_hash:
        raise ShardError(f"{path} stores content_hash {stored} but its fields hash to "
                         f"{manifest.content_hash}, so it was edited. Re-run `emotune ingest` to rewrite it.")
    return manifest


# ---- reading -----------------------------------------------------------------------------------------------
FilterLike = pc.Expression | Mapping[str, Any] | None


class ShardSet:
    """An opened shard folder: metadata queries, features by utterance id, one-shot bulk decoding.

    Create with :func:`open_shards`, which validates the folder first.

    Attributes:
        folder: The feature-set folder: a ``Path``, or the URI it was opened by.
        manifest: Its :class:`Manifest`.
        schema: The parts' Arrow schema.
        filesystem: The pyarrow filesystem of a URI folder; None for a local path (read directly).
    """

    def __init__(self, folder: Path | str, manifest: Manifest, *, filesystem=None, base: str = "") -> None:
        self.folder = folder
        self.manifest = manifest
        self.schema = shard_schema(manifest.feature_dtype)
        self.filesystem = filesystem
        # Paths inside ``filesystem`` for a URI folder (an object store has no local Path), else local Paths.
        root = PurePosixPath(base) if filesystem is not None else folder
        self._paths = [root / f["name"] for f in manifest.files]
        self._index: dict[str, tuple[int, int]] | None = None

    def _parquet(self, k: int) -> pq.ParquetFile:
        return pq.ParquetFile(str(self._paths[k]), filesystem=self.filesystem)

    def __repr__(self) -> str:
        return (f"ShardSet({str(self.folder)!r}, rows={self.num_rows}, files={len(self._paths)}, "
                f"hash={self.content_hash[:12]})")

    @property
    def content_hash(self) -> str:
        """The manifest's content hash (the data's MLflow tag)."""
        return self.manifest.content_hash

    @property
    def num_rows(self) -> int:
        """Number of utterances."""
        return int(self.manifest.total_rows)

    @property
    def metadata_columns(self) -> list[str]:
        """Every column but ``feature``."""
        return [n for n in self.schema.names if n != FEATURE_COLUMN]

    def _filter_expression(self, filter: FilterLike) -> pc.Expression | None:
        if filter is None or isinstance(filter, pc.Expression):
            return filter
        expr = None
        for col, want in filter.items():
            if col not in self.metadata_columns:
                raise ValueError(f"filter column {col!r} is not a metadata column of {self.folder}; "
                                 f"valid: {self.metadata_columns}")
            if want is None:
                term = pc.field(col).is_null()
            elif isinstance(want, (list, tuple, set, frozenset)):
                term = pc.field(col).isin(list(want))
            else:
                term = pc.field(col) == want
            expr = term if expr is None else expr & term
        return expr

    def metadata(self, columns: Sequence[str] | None = None, filter: FilterLike = None) -> pa.Table:
        """Metadata rows in shard order; the feature column is never decoded.

        Args:
            columns: Columns to return (default: every metadata column, ``n_frames``/``n_bins`` included).
            filter: A ``pyarrow.compute`` expression, or ``{column: value or list of values}`` (None matches
                null; the terms are AND-ed).

        Returns:
            A table of the selected rows and columns.

        Raises:
            ValueError: An unknown column, or ``feature`` (read it with :meth:`features` or :meth:`read_all`).
        """
        cols = self.metadata_columns if columns is None else list(columns)
        bad = [c for c in cols if c not in self.metadata_columns]
        if bad:
            hint = " (read features with .features() or .read_all())" if FEATURE_COLUMN in bad else ""
            raise ValueError(f"columns {bad} are not metadata columns of {self.folder}{hint}; "
                             f"valid: {self.metadata_columns}")
        expr = self._filter_expression(filter)
        if not self._paths:
            return self.schema.empty_table().select(cols)
        # A dataset of the listed parts only (stray temp files are never globbed); to_table keeps part order.
        dataset = ds.dataset([str(p) for p in self._paths], schema=self.schema, format="parquet",
                             filesystem=self.filesystem)
        return dataset.to_table(columns=cols, filter=expr)

    def _row_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            index: dict[str, tuple[int, int]] = {}
            for k, path in enumerate(self._paths):
                ids = pq.read_table(str(path), columns=["utt_id"], filesystem=self.filesystem).column(0)
                for r, u in enumerate(ids.to_pylist()):
                    if u in index:
                        raise ShardError(f"utt_id {u!r} appears in both {self._paths[index[u][0]].name} "
                                         f"and {path.name} of {self.folder}; re-run `emotune ingest` into "
                                         f"a fresh --out folder")
                    index[u] = (k, r)
            self._index = index
        return self._index

    def features(self, utt_ids: Sequence[str]) -> list[np.ndarray]:
        """Feature matrices of ``utt_ids``, in the order asked.

        Args:
            utt_ids: Utterance ids (repeats allowed).

        Returns:
            One float32 ``(frames, bins)`` array per id (a copy, independent of Arrow buffers).

        Raises:
            KeyError: An id that is not in this shard set (named in the message).
            ShardError: A requested row's feature holds NaN or inf.
        """
        index = self._row_index()
        where = []
        for u in utt_ids:
            if u not in index:
                raise KeyError(f"utterance {u!r} is not in {self.folder}")
            where.append(index[u])
        out: list[np.ndarray] = [np.empty(0)] * len(where)
        by_file: dict[int, list[tuple[int, int]]] = {}
        for pos, (k, r) in enumerate(where):
            by_file.setdefault(k, []).append((pos, r))
        for k, wanted in by_file.items():
            pf = self._parquet(k)
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            groups: dict[int, pa.Table] = {}
            for pos, r in wanted:
                g = int(np.searchsorted(starts, r, side="right")) - 1
                if g not in groups:  # decode only the row groups that hold a wanted row
                    groups[g] = pf.read_row_group(g, columns=[*SHAPE_COLUMNS, FEATURE_COLUMN])
                row = groups[g].slice(r - int(starts[g]), 1)
                vals = row.column(FEATURE_COLUMN).chunk(0).flatten().to_numpy(zero_copy_only=False)
                shape = (row.column("n_frames")[0].as_py(), row.column("n_bins")[0].as_py())
                out[pos] = vals.astype(np.float32, copy=True).reshape(shape)
                if not np.isfinite(out[pos]).all():
                    raise ShardError(f"{self._paths[k]}: utterance {utt_ids[pos]!r} has NaN or infinite feature "
                                     f"values. {_NON_FINITE_FIX}")
        return out

    def stack(self, utt_ids: Sequence[str]) -> np.ndarray:
        """Fixed-size features (functionals) of ``utt_ids`` as one ``(N, frames * bins)`` float32 array.

        Args:
            utt_ids: Utterance ids.

        Returns:
            One flattened row per id, in the order asked.

        Raises:
            ValueError: The rows' shapes differ (frame-level features; use :meth:`features`).
        """
        mats = self.features(utt_ids)
        if not mats:
            return np.zeros((0, 0), dtype=np.float32)
        for u, m in zip(utt_ids, mats, strict=True):
            if m.shape != mats[0].shape:
                raise ValueError(f"stack needs one shape for every row of {self.folder}; {utt_ids[0]!r} is "
                                 f"{mats[0].shape}, {u!r} is {m.shape}. Use .features() for frame features.")
        return np.stack([m.reshape(-1) for m in mats])

    def read_all(self) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
        """Decode every row once (the sweep driver's bulk load), on the calling thread.

        Decoding parts on 2 threads was measured no faster than on one (first touches of the shared output
        buffer serialise on page faults), so there is no thread pool.

        Returns:
            ``(meta, values, offsets, shapes)``: ``meta`` the metadata table (no feature column) in shard
            order; ``values`` every feature value, flat float32, C-contiguous; ``offsets`` int64 of length
            N + 1; ``shapes`` int64 ``(N, 2)`` frames x bins. Row i is
            ``values[offsets[i]:offsets[i + 1]].reshape(shapes[i])``.

        Raises:
            ShardError: A part's feature lengths disagree with its ``n_frames * n_bins``, or a feature value or
                a float metadata column (labels, ``rater_hist``, time ranges, ``duration_s``) holds NaN or inf:
                the message names the part files and the first utterance ids.
        """
        meta_cols = self.metadata_columns
        files = [self._parquet(k) for k in range(len(self._paths))]
        metas = [pf.read(columns=meta_cols, use_threads=False) for pf in files]
        meta = pa.concat_tables(metas) if metas else self.schema.empty_table().select(meta_cols)
        shapes = np.stack([meta.column("n_frames").to_numpy(), meta.column("n_bins").to_numpy()], axis=1)
        shapes = shapes.astype(np.int64).reshape(-1, 2)
        offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
        np.cumsum(shapes[:, 0] * shapes[:, 1], out=offsets[1:])
        # One preallocated buffer: each decoded row group is viewed zero-copy through its Arrow buffer and
        # copied once into its place (float16 widened in the same pass); peak memory is the result plus one
        # row group, and the result is one array Ray can share zero-copy.
        values = np.empty(int(offsets[-1]), dtype=np.float32)
        first_row = np.cumsum([0] + [m.num_rows for m in metas])
        for k, pf in enumerate(files):
            start, end = int(offsets[first_row[k]]), int(offsets[first_row[k + 1]])
            pos = start
            for g in range(pf.num_row_groups):
                col = pf.read_row_group(g, columns=[FEATURE_COLUMN], use_threads=False).column(0)
                for chunk in col.chunks:
                    flat = chunk.flatten().to_numpy(zero_copy_only=True)
                    if pos + len(flat) <= end:
                        values[pos:pos + len(flat)] = flat
                    pos += len(flat)
            if pos != end:
                raise ShardError(f"{self._paths[k]}: the feature column holds {pos - start} values but "
                                 f"n_frames * n_bins promise {end - start}, so the file is damaged. Re-run "
                                 f"`emotune ingest` into a fresh --out folder.")
        # One more pass over the values (about a tenth of the decoding time): nothing non-finite enters the store.
        bad = _non_finite_metadata(meta)
        rows = _non_finite_values(values, offsets)
        if len(rows):
            bad = {FEATURE_COLUMN: rows, **bad}
        if bad:
            self._refuse_non_finite(meta.column("utt_id"), bad)
        return meta, values, offsets, shapes

    def check_finite_metadata(self) -> None:
        """Refuse NaN or infinite labels (and other float metadata) before any feature is decoded.

        :meth:`read_all` checks the same and the features; this is the cheap early check (metadata only), for a
        driver that wants to refuse the data before it starts anything.

        Raises:
            ShardError: A float metadata column holds NaN or inf; the message names the part files and ids.
        """
        columns = ["utt_id", *(f.name for f in self.schema if f.name != FEATURE_COLUMN and _is_float(f.type))]
        meta = self.metadata(columns)
        bad = _non_finite_metadata(meta)
        if bad:
            self._refuse_non_finite(meta.column("utt_id"), bad)

    def _refuse_non_finite(self, utt_ids: pa.ChunkedArray, bad: dict[str, np.ndarray], shown: int = 5) -> None:
        """Raise ShardError naming, per column, the part files and the first ``shown`` utterances of ``bad``."""
        first_row = np.cumsum([0] + [int(f["rows"]) for f in self.manifest.files])
        found = []
        for column, rows in bad.items():
            parts = sorted({self._paths[int(np.searchsorted(first_row, r, side="right")) - 1].name for r in rows})
            ids = ", ".join(repr(utt_ids[int(r)].as_py()) for r in rows[:shown])
            more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
            found.append(f"{column!r} of {len(rows)} utterance(s) in {', '.join(parts)} ({ids}{more})")
        raise ShardError(f"{self.folder} holds NaN or infinite values, which are never trained on: "
                         f"{'; '.join(found)}. {_NON_FINITE_FIX}")


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or (pa.types.is_list(t) and pa.types.is_floating(t.value_type))


def _non_finite_metadata(meta: pa.Table) -> dict[str, np.ndarray]:
    """``{column: sorted rows}`` of every float or list-of-float column holding NaN or inf (nulls are fine)."""
    bad = {}
    for name in meta.column_names:
        col = meta.column(name)
        if not _is_float(col.type):
            continue
        arr = col.combine_chunks()
        parents = None
        if pa.types.is_list(arr.type):
            parents = pc.list_parent_indices(arr)
            arr = pc.list_flatten(arr)
        flags = pc.fill_null(pc.invert(pc.is_finite(arr)), False)
        if pc.any(flags).as_py():
            rows = np.flatnonzero(flags.to_numpy(zero_copy_only=False))
            bad[name] = np.unique(parents.to_numpy()[rows] if parents is not None else rows)
    return bad


def _non_finite_values(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sorted rows (``offsets`` of length N + 1) whose feature values hold NaN or inf, in one blocked pass."""
    flags = np.empty(min(len(values), _FINITE_BLOCK), dtype=bool)
    rows = []
    for start in range(0, len(values), _FINITE_BLOCK):
        block = values[start:start + _FINITE_BLOCK]
        ok = np.isfinite(block, out=flags[:len(block)])
        if not ok.all():
            where = start + np.flatnonzero(~ok)
            rows.append(np.searchsorted(offsets, where, side="right") - 1)
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


# ---- verification ------------------------------------------------------------------------------------------
# Checksums already verified, so that a second sweep over unchanged shards hashes nothing (see open_shards).
CACHE_NAME = "_verified.json"
_CACHE_VERSION = 1
# A part changed again within one tick of the file-system clock (a jiffy on Linux, 2 s on FAT and some network
# file systems) keeps its timestamps, so a part this young when hashed is not recorded but hashed again next time
# (git's "racily clean" index entries).
_RACY_NS = 2 * 10**9


def _check_part(path: Path | PurePosixPath, listed: dict, expected: pa.Schema, filesystem=None) -> None:
    """Footer-level checks of one listed part: present, a Parquet file, the schema, the row count, the size.

    ``filesystem`` is the pyarrow filesystem ``path`` lies in (a URI folder); None for a local path.
    """
    fix = "Re-run `emotune ingest` into a fresh --out folder."
    info = filesystem.get_file_info(str(path)) if filesystem is not None else None
    if not (path.is_file() if info is None else info.is_file):
        raise ShardError(f"{path} is listed in {path.parent / MANIFEST_NAME} but missing; re-run `emotune "
                         f"ingest` with the same --out to rewrite it")
    try:
        pf = pq.ParquetFile(str(path), filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"{path} is not a readable Parquet file ({err}); delete it and re-run `emotune "
                         f"ingest` with the same --out to rewrite it") from None
    got = pf.schema_arrow
    if not got.equals(expected, check_metadata=False):
        for want in expected:
            idx = got.get_field_index(want.name)
            if idx < 0:
                raise ShardError(f"{path}: column {want.name!r} ({want.type}) is missing, so the file was "
                                 f"not written by this emotune. {fix}")
            have = got.field(idx)
            if not have.equals(want):
                raise ShardError(f"{path}: column {want.name!r} is {have.type} (nullable={have.nullable}), "
                                 f"expected {want.type} (nullable={want.nullable}). {fix}")
        extra = [n for n in got.names if n not in expected.names]
        raise ShardError(f"{path}: unexpected columns {extra} or another column order. {fix}")
    if pf.metadata.num_rows != listed["rows"]:
        raise ShardError(f"{path} holds {pf.metadata.num_rows} rows but the manifest lists {listed['rows']}, "
                         f"so the file was replaced. {fix}")
    size = path.stat().st_size if info is None else info.size
    if size != listed["bytes"]:
        # A stat, after the more telling schema and row checks: a changed file without reading its bytes.
        raise ShardError(f"{path} is {size} bytes but the manifest lists {listed['bytes']}, so the file changed "
                         f"after ingestion. {fix}")


def _file_state(path: Path) -> dict:
    """What must be unchanged for a recorded checksum to still hold.

    Size and mtime as usual; the inode and ctime as well, because a copy (``cp -a``, ``rsync -a``) keeps size and
    mtime but may have been damaged in transit, and ctime cannot be set back by ``touch -r`` after an edit.
    """
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _user_cache_path(folder: Path) -> Path | None:
    """``$XDG_CACHE_HOME/emotune/verified/<key>.json`` (else ``~/.cache/...``), keyed by the folder's real path."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    try:
        root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"  # relative: ignored (XDG)
    except RuntimeError:  # no home directory to be found
        return None
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return root / "emotune" / "verified" / f"{key}.json"


def _read_cache(path: Path | None, folder: str | None = None) -> dict[str, dict]:
    """The recorded parts of one cache file; anything unreadable or foreign is simply no cache.

    Args:
        path: The cache file (None: none).
        folder: For a per-user cache, the resolved shard folder it must record (a key collision would otherwise
            lend another folder's entries); None for the cache inside the folder, which moves with it.
    """
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if (not isinstance(raw, dict) or raw.get("version") != _CACHE_VERSION or not isinstance(raw.get("parts"), dict)
            or (folder is not None and raw.get("folder") != folder)):
        return {}
    return {name: entry for name, entry in raw["parts"].items() if isinstance(entry, dict)}


def _save_cache(folder: Path, resolved: str, parts: dict[str, dict]) -> Path | None:
    """Record ``parts`` in the folder's cache, else in the per-user one; None when neither can be written.

    A read-only shard folder (a shared, published data set) still gets its checksums cached, per user; a cache
    that cannot be written anywhere only means verifying again next time, never an error.
    """
    data = {"version": _CACHE_VERSION, "folder": resolved, "parts": parts}
    for path in (folder / CACHE_NAME, _user_cache_path(folder)):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(path, data)
            return path
        except OSError:
            continue
    return None


def _verify_checksums(folder: Path, manifest: Manifest, use_cache: bool) -> None:
    """Compare every part's sha256 with the manifest; with ``use_cache``, trust parts recorded as verified.

    A recorded entry is trusted only when the part's size, mtime, ctime and inode are those recorded and the
    recorded sha256 is the one this manifest lists (a re-ingest that rewrote the part under the same name and
    stats still lists another sha256). Parts written less than :data:`_RACY_NS` before they were hashed are not
    recorded.
    """
    resolved = str(folder.resolve())
    known = [_read_cache(folder / CACHE_NAME), _read_cache(_user_cache_path(folder), resolved)] if use_cache else []
    verified: dict[str, dict] = {}
    recorded = False
    for listed in manifest.files:
        name, path = listed["name"], folder / listed["name"]
        before = _file_state(path)
        now = time.time_ns()
        record = {**before, "sha256": listed["sha256"]}
        if any(cache.get(name) == record for cache in known):
            verified[name] = record
            continue
        _check_digest(path, _sha256(path), listed)
        # Unchanged while it was read (the digest belongs to these stats) and old enough to be told apart from a
        # later change.
        if _file_state(path) == before and now - max(before["mtime_ns"], before["ctime_ns"]) > _RACY_NS:
            verified[name] = record
            recorded = True
    if recorded:  # a full verification (no cache trusted) refreshes the record too
        _save_cache(folder, resolved, verified)


def _check_digest(path, digest: str, listed: dict) -> None:
    if digest != listed["sha256"]:
        raise ShardError(f"{path}: sha256 is {digest} but the manifest lists {listed['sha256']}, so the file "
                         f"changed after ingestion. Re-run `emotune ingest` into a fresh --out folder.")


def _list_uri_folder(uri: str) -> tuple[object, str, list[str]]:
    """``(filesystem, path inside it, file names)`` of a shard folder named by a URI."""
    from pyarrow import fs as pafs

    filesystem, base = _filesystem(uri)
    try:
        info = filesystem.get_file_info(base)
        names = ([i.base_name for i in filesystem.get_file_info(pafs.FileSelector(base))]
                 if info.type == pafs.FileType.Directory else None)
    except OSError as err:
        raise ShardError(f"shard folder {uri} cannot be reached ({_first_line(err)}); {REACH_FIX}") from None
    if names is None:
        raise ShardError(f"shard folder {uri} does not exist; upload a folder `emotune ingest` wrote "
                         f"(<out>/<corpus>/<feature_set>, every file of it) there, or fix the URI")
    return filesystem, base, names


def open_shards(folder: str | os.PathLike, verify_checksums: bool = False, *, checksum_cache: bool = True
                ) -> ShardSet:
    """Open and validate a shard folder ``<out>/<corpus>/<feature_set>``.

    Always checks the manifest (schema version, content hash, plain part names), that no unlisted part lies in
    the folder, and every listed part's presence, size, Parquet schema and row count (stats and footers only).
    With ``verify_checksums`` it also compares every part's sha256 with the manifest; a part verified before and
    unchanged since (same size, mtime, ctime and inode, and the same sha256 listed) is not read again; one written
    less than 2 s before it was hashed is hashed again next time. The record is ``<folder>/_verified.json``, or a
    per-user cache (``$XDG_CACHE_HOME/emotune`` or ``~/.cache/emotune``) when the folder is read-only; when neither
    can be written every call hashes again.

    A folder named by a URI (``s3://bucket/shards/iemocap/mfcc``, ``gs://...``, ``hdfs://...``, ``file:///...``) is
    read through ``pyarrow.fs.FileSystem.from_uri`` with the same checks. Its checksums are verified every time (an
    object store has no inode or ctime that would tell an unchanged part): one more read of the data, by the driver
    only, since trials read the decoded store, never the shards.

    Args:
        folder: The feature-set folder holding ``_manifest.json``: a local path or a URI.
        verify_checksums: Compare every part's sha256 with the manifest (what a sweep does before training).
        checksum_cache: Trust the record of verified parts. False hashes every byte (and records the result),
            which also finds damage that left a file's size and times alone (a failing disk).

    Returns:
        A :class:`ShardSet`.

    Raises:
        ShardError: A missing folder or manifest, another schema version, an edited manifest or one without its
            hash, a part name outside the folder, an unlisted part, a missing, damaged or altered part.
    """
    filesystem, base = None, ""
    if is_uri(folder):
        folder = str(folder).rstrip("/")
        filesystem, base, names = _list_uri_folder(folder)
        root, where = PurePosixPath(base), f"{folder}/{MANIFEST_NAME}"
    else:
        folder = Path(folder)
        if not folder.is_dir():
            raise ShardError(f"shard folder {folder} does not exist; run `emotune ingest --corpus CORPUS --root "
                             f"ROOT --out OUT --features SET` first and pass OUT/CORPUS/SET")
        names = [p.name for p in folder.iterdir()]
        root, where = folder, folder / MANIFEST_NAME
    manifest = read_manifest(folder)  # also refuses another schema version and bad part names
    if manifest.feature_dtype not in FEATURE_DTYPES:
        raise ShardError(f"{where} has feature_dtype {manifest.feature_dtype!r}, expected one of "
                         f"{FEATURE_DTYPES}. Re-run `emotune ingest` into a fresh --out folder.")
    listed = {f["name"] for f in manifest.files}
    # A part the manifest does not list is a manifest that lost rows (or a leftover of another ingest).
    unlisted = sorted(n for n in names if PART_NAME.fullmatch(n) and n not in listed)
    if unlisted:
        raise ShardError(f"{folder} holds {unlisted}, which {where} does not list, so the manifest lost parts "
                         f"(their rows) or the files are left from another ingest. Re-run `emotune ingest` with "
                         f"--overwrite or into a fresh --out folder.")
    expected = shard_schema(manifest.feature_dtype)
    for entry in manifest.files:
        _check_part(root / entry["name"], entry, expected, filesystem)
    if verify_checksums and filesystem is None:
        _verify_checksums(folder, manifest, use_cache=checksum_cache)
    elif verify_checksums:
        for entry in manifest.files:
            _check_digest(root / entry["name"], _sha256(root / entry["name"], filesystem), entry)
    return ShardSet(folder, manifest, filesystem=filesystem, base=base)


def list_feature_sets(out_root: str | os.PathLike, corpus: str) -> list[str]:
    """Feature sets of ``corpus`` under an ingest output root.

    Args:
        out_root: The ``--out`` folder of ``emotune ingest``.
        corpus: Corpus name.

    Returns:
        Sorted names of the sub-folders of ``out_root/corpus`` that hold a manifest (finished feature sets).
    """
    base = Path(out_root) / corpus
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())

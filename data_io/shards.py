"""Parquet shards of one corpus and feature set, and the manifest that identifies them (DESIGN.md, Data).

Layout: ``<out>/<corpus>/<feature_set>/part-NNNNN.parquet`` plus ``_manifest.json`` in the same folder. One
row per utterance: the :data:`~data_io.schema.METADATA_COLUMNS`, then ``n_frames``/``n_bins`` and ``feature``
(the ``(frames, bins)`` matrix flattened row-major into a ``list<float32>`` or ``list<float16>``). ``speech`` (never
null, empty when no speech was found) and ``words`` (null without word alignments) are ``list<float32>`` time
ranges in seconds from the start of the audio, flattened as ``[start0, end0, start1, end1, ...]``.

Parts are written atomically (temp file in the same folder, fsync, ``os.replace``), so a killed ingest never
leaves a half-written ``part-*.parquet``; the reader opens only the files the manifest lists, so stray temp
files are ignored. :attr:`Manifest.content_hash` (schema version, feature config, speech-detection parameters and
every part's sha256) identifies the data; the sweep driver logs it as an MLflow tag.

Reading is built for the sweep driver, which decodes a whole feature set once per node
(:meth:`ShardSet.read_all`) and shares it through Ray's object store; see :data:`COMPRESSION` for the
measurements behind the storage choices.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data_io.schema import METADATA_COLUMNS, SCHEMA_VERSION

MANIFEST_NAME = "_manifest.json"
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


class ShardError(ValueError):
    """A shard folder is missing, from another schema version or damaged; the message names file and fix."""


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
        """sha256 over schema version, feature config, speech detection and each file's (name, sha256)."""
        payload = {
            "schema_version": self.schema_version,
            "feature_config": self.feature_config,
            "speech_detection": self.speech_detection,
            "files": sorted([f["name"], f["sha256"]] for f in self.files),
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
    """
    path = Path(folder) / MANIFEST_NAME
    tmp = _temp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(manifest.to_dict(), f, sort_keys=True, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _check_schema_version(where: Path, version: Any) -> None:
    if version != SCHEMA_VERSION:
        raise ShardError(f"{where} has schema version {version}; this emotune reads version "
                         f"{SCHEMA_VERSION}. Re-run `emotune ingest` into a fresh --out folder.")


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """Read ``<folder>/_manifest.json``.

    Args:
        folder: The feature-set folder.

    Returns:
        The :class:`Manifest`.

    Raises:
        ShardError: The file is missing, not JSON, from another schema version (checked first: older versions
            lack fields this one has), lacks a field, or its stored content hash disagrees with its contents
            (it was edited by hand).
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path} does not exist, so {folder} is not a finished shard folder. Run `emotune "
                         f"ingest` (it resumes an interrupted ingest) and pass <out>/<corpus>/<feature_set>.")
    try:
        raw = json.loads(path.read_text())
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
    manifest = Manifest(**{n: raw[n] for n in names})
    stored = raw.get("content_hash")
    if stored is not None and stored != manifest.content_hash:
        raise ShardError(f"{path} stores content_hash {stored} but its fields hash to "
                         f"{manifest.content_hash}, so it was edited. Re-run `emotune ingest` to rewrite it.")
    return manifest


# ---- reading -----------------------------------------------------------------------------------------------
FilterLike = pc.Expression | Mapping[str, Any] | None


class ShardSet:
    """An opened shard folder: metadata queries, features by utterance id, one-shot bulk decoding.

    Create with :func:`open_shards`, which validates the folder first.

    Attributes:
        folder: The feature-set folder.
        manifest: Its :class:`Manifest`.
        schema: The parts' Arrow schema.
    """

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.schema = shard_schema(manifest.feature_dtype)
        self._paths = [folder / f["name"] for f in manifest.files]
        self._index: dict[str, tuple[int, int]] | None = None

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
        dataset = ds.dataset([str(p) for p in self._paths], schema=self.schema, format="parquet")
        return dataset.to_table(columns=cols, filter=expr)

    def _row_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            index: dict[str, tuple[int, int]] = {}
            for k, path in enumerate(self._paths):
                for r, u in enumerate(pq.read_table(path, columns=["utt_id"]).column(0).to_pylist()):
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
            pf = pq.ParquetFile(self._paths[k])
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
            ShardError: A part's feature lengths disagree with its ``n_frames * n_bins``.
        """
        meta_cols = self.metadata_columns
        files = [pq.ParquetFile(p) for p in self._paths]
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
        return meta, values, offsets, shapes


def _check_part(path: Path, listed: dict, expected: pa.Schema, verify_checksum: bool) -> None:
    fix = "Re-run `emotune ingest` into a fresh --out folder."
    if not path.is_file():
        raise ShardError(f"{path} is listed in {path.parent / MANIFEST_NAME} but missing; re-run `emotune "
                         f"ingest` with the same --out to rewrite it")
    try:
        pf = pq.ParquetFile(path)
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
    if verify_checksum:
        digest = _sha256(path)
        if digest != listed["sha256"]:
            raise ShardError(f"{path}: sha256 is {digest} but the manifest lists {listed['sha256']}, so the "
                             f"file changed after ingestion. {fix}")


def open_shards(folder: str | os.PathLike, verify_checksums: bool = False) -> ShardSet:
    """Open and validate a shard folder ``<out>/<corpus>/<feature_set>``.

    Checks the manifest, its schema version and every listed part's presence, Parquet schema and row count
    (footers only); with ``verify_checksums`` also every part's sha256 (reads every byte).

    Args:
        folder: The feature-set folder holding ``_manifest.json``.
        verify_checksums: Hash every part and compare with the manifest.

    Returns:
        A :class:`ShardSet`.

    Raises:
        ShardError: A missing folder or manifest, another schema version, a missing, damaged or altered part.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ShardError(f"shard folder {folder} does not exist; run `emotune ingest --corpus CORPUS --root "
                         f"ROOT --out OUT --features SET` first and pass OUT/CORPUS/SET")
    manifest = read_manifest(folder)  # also refuses another schema version
    where = folder / MANIFEST_NAME
    if manifest.feature_dtype not in FEATURE_DTYPES:
        raise ShardError(f"{where} has feature_dtype {manifest.feature_dtype!r}, expected one of "
                         f"{FEATURE_DTYPES}. Re-run `emotune ingest` into a fresh --out folder.")
    total = sum(int(f["rows"]) for f in manifest.files)
    if total != manifest.total_rows:
        raise ShardError(f"{where} lists total_rows {manifest.total_rows} but its files hold {total} rows; "
                         f"re-run `emotune ingest` to rewrite it.")
    expected = shard_schema(manifest.feature_dtype)
    for listed in manifest.files:
        _check_part(folder / listed["name"], listed, expected, verify_checksums)
    return ShardSet(folder, manifest)


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

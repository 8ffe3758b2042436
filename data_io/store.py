"""The read-only feature store every trial reads its batches from, and per-fold normalisation.

The driver decodes the shard sets of a sweep once (:func:`load_store`: labelled ``data.shards`` and auxiliary
``data.auxiliary`` sets, one feature set) into one :class:`FeatureStore`: the metadata table, every feature value
in one flat float32 array, and per-row offsets and shapes. Ray's object store shares it per node (``tune.
with_parameters``): trials get zero-copy, read-only views of the arrays and never copy a fold. Batches are
gathered out of it when they are built (``data_io.examples``), and normalisation is applied then, with statistics
of the fold's training rows that :func:`fit_normalizer` computes without materialising the fold:

* frame features: per-row statistics (frame count, mean, centred sum of squares, min, max per bin) are computed
  once when the store is built and combined per fold with Chan et al.'s parallel formula (exact, O(rows x bins));
* utterance-level features (one vector per row): the training rows are read in blocks of bounded size.

Frame ``t`` of a frame feature is centred on sample ``t * hop_length`` (``center=True`` framing, see
``data_io.features``), so a time ``s`` in seconds is frame ``s * frame_rate``. The ``speech`` and ``words``
metadata columns (flat ``[start_s, end_s, ...]`` pairs) are converted to frame ranges with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from data_io.schema import SAMPLE_RATE
from data_io.shards import ShardSet

NORMALIZATIONS = ("zscore", "minmax", "none")
STD_FLOOR = 1e-5  # a constant bin (silence, a saturated band) must not divide by zero
_BLOCK_VALUES = 1 << 22  # values per block when streaming rows (16 MiB of float32)


@dataclass(frozen=True)
class Source:
    """One shard set of the store.

    Attributes:
        folder: The shard folder (``<out>/<corpus>/<feature_set>``).
        corpus: Its corpus name.
        auxiliary: True for a ``data.auxiliary`` set: its rows train only, never validate, test or score.
        targets: For an auxiliary set, the targets its rows may train (the losses whose labels it carries);
            ignored for labelled sets, whose rows train every target they have a label for.
    """

    folder: str
    corpus: str
    auxiliary: bool = False
    targets: tuple[str, ...] = ()


@dataclass
class RowStats:
    """Per-row, per-bin statistics of frame features, for exact per-fold normalisation without a fold copy.

    Attributes:
        count: ``(N,)`` frames per row.
        mean: ``(N, F)`` float64 per-row mean.
        m2: ``(N, F)`` float64 per-row sum of squared deviations from the row mean.
        low: ``(N, F)`` float32 per-row minimum.
        high: ``(N, F)`` float32 per-row maximum.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class FeatureStore:
    """Features and metadata of every row a sweep may train, validate or test on (one feature set).

    Attributes:
        meta: Metadata table, one row per utterance (no feature column).
        values: All feature values, flat float32, C-contiguous.
        offsets: Start of each row's values in ``values`` (length N, or N + 1 with the end).
        shapes: ``(N, 2)`` frames x bins per row.
        label_scales: Attribute scale per corpus, e.g. ``{"msp_podcast": (1.0, 7.0)}``.
        feature_set: Feature-set name (every shard set of the store shares it).
        frame_rate: Frames per second of frame features (``sample_rate / hop_length``); None for utterance-level
            features.
        manifest_hashes: Content hash per shard folder, for MLflow tags.
        sources: The shard sets the rows came from.
        source_index: ``(N,)`` int16 index into ``sources`` of each row.
        row_stats: Per-row statistics of frame features (None for utterance-level features).
    """

    meta: pa.Table
    values: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    label_scales: dict[str, tuple[float, float] | None]
    feature_set: str
    frame_rate: float | None = None
    manifest_hashes: dict[str, str] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    source_index: np.ndarray | None = None
    row_stats: RowStats | None = None

    def __post_init__(self) -> None:
        ids = self.meta["utt_id"].to_pylist()
        self._row_of = {u: i for i, u in enumerate(ids)}
        if len(self._row_of) != len(ids):
            raise ValueError("duplicate utt_id across the shard sets of one sweep; each corpus needs unique ids "
                             "(a corpus listed in both data.shards and data.auxiliary is one corpus: list it once)")
        if self.source_index is None:
            self.source_index = np.zeros(len(ids), dtype=np.int16)
        if not self.sources:
            self.sources = [Source(folder="", corpus=c) for c in sorted(set(self.meta["corpus"].to_pylist()))]
            corpus = np.asarray(self.meta["corpus"].to_pylist(), dtype=object)
            for k, src in enumerate(self.sources):
                self.source_index[corpus == src.corpus] = k
        n_bins = set(self.shapes[:, 1].tolist()) if len(self.shapes) else set()
        if len(n_bins) > 1:
            raise ValueError(f"rows have {sorted(n_bins)} feature bins; every shard set of a sweep must hold one "
                             f"preset")
        self.utterance_level = bool(len(self.shapes) == 0 or np.all(self.shapes[:, 0] == 1))
        if self.row_stats is None and not self.utterance_level:
            self.row_stats = compute_row_stats(self.values, self.offsets, self.shapes)
        self._row_cache: dict = {}  # per-process: frame ranges and speech frames of rows already used
        self._interval_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_row_cache"], state["_interval_cache"] = {}, {}  # process-local; never shipped to trials
        return state

    # ---- rows ----------------------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return self.meta.num_rows

    @property
    def n_bins(self) -> int:
        return int(self.shapes[0, 1]) if len(self.shapes) else 0

    def rows(self, utt_ids: Sequence[str]) -> np.ndarray:
        """Row indices of ``utt_ids`` (KeyError naming the first unknown id)."""
        try:
            return np.fromiter((self._row_of[u] for u in utt_ids), dtype=np.int64, count=len(utt_ids))
        except KeyError as err:
            raise KeyError(f"utterance {err.args[0]!r} is not in this feature store") from None

    def is_auxiliary(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows),)`` bool: True for rows of a ``data.auxiliary`` shard set."""
        aux = np.array([s.auxiliary for s in self.sources], dtype=bool)
        return aux[self.source_index[rows]]

    def auxiliary_rows(self) -> np.ndarray:
        """Every auxiliary row, in store order."""
        return np.flatnonzero(self.is_auxiliary(np.arange(self.num_rows)))

    def vectors(self) -> np.ndarray:
        """Utterance-level features as an ``(N, D)`` view of ``values`` (no copy).

        Raises:
            ValueError: The store holds frame features.
        """
        if not self.utterance_level:
            raise ValueError(f"feature set {self.feature_set!r} has frame-level features; they have no (N, D) view")
        return self.values[: self.num_rows * self.n_bins].reshape(self.num_rows, self.n_bins)

    def matrix(self, row: int) -> np.ndarray:
        """Row ``row``'s ``(frames, bins)`` matrix, a read-only view."""
        t, f = self.shapes[row]
        start = int(self.offsets[row])
        return self.values[start:start + int(t) * int(f)].reshape(int(t), int(f))

    # ---- time -> frames ------------------------------------------------------------------------------------
    def regions(self, row: int, column: str) -> np.ndarray:
        """``(k, 2)`` int64 ``[start, end)`` frame ranges of a row's ``speech`` or ``words`` intervals.

        Empty when the column is null or absent. Ranges are clipped to the row's frames and never empty.
        """
        if column not in self._interval_cache:
            if self.frame_rate is None or column not in self.meta.column_names:
                return np.zeros((0, 2), dtype=np.int64)
            self._interval_cache[column] = self._frame_ranges(column)
        first, ranges = self._interval_cache[column]
        return ranges[first[row]:first[row + 1]]

    def _frame_ranges(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Every row's intervals as frame ranges, in one vectorised pass: (first interval per row, (M, 2) ranges)."""
        col = self.meta.column(column).combine_chunks()
        offsets = np.asarray(col.offsets, dtype=np.int64)
        first = (offsets - offsets[0]) // 2  # null lists (no alignment) have no intervals
        sec = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 2)
        n_frames = np.repeat(self.shapes[:, 0], np.diff(first))
        start = np.clip(np.floor(sec[:, 0] * self.frame_rate), 0, n_frames - 1).astype(np.int64)
        end = np.clip(np.ceil(sec[:, 1] * self.frame_rate), 1, n_frames).astype(np.int64)
        return first, np.stack([start, np.maximum(end, start + 1)], axis=1)

    def speech_frames(self, row: int) -> np.ndarray:
        """The frame indices of a row that lie in its speech regions (all frames when it has none)."""
        hit = self._row_cache.get(row)
        if hit is None:
            spans = self.regions(row, "speech")
            mask = np.zeros(int(self.shapes[row, 0]), dtype=bool)
            for start, end in spans.tolist():  # ranges may touch or overlap by a frame after rounding
                mask[start:end] = True
            hit = np.flatnonzero(mask) if len(spans) else np.arange(len(mask))
            self._row_cache[row] = hit
        return hit

    # ---- copies --------------------------------------------------------------------------------------------
    def subset(self, utt_ids: Sequence[str]) -> FeatureStore:
        """A new store holding only ``utt_ids`` (copies the values of those rows)."""
        rows = self.rows(list(utt_ids))
        lengths = self.shapes[rows, 0] * self.shapes[rows, 1]
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.empty(int(new_offsets[-1]), dtype=np.float32)
        for k, r in enumerate(rows):
            values[new_offsets[k]:new_offsets[k + 1]] = self.values[self.offsets[r]:self.offsets[r] + lengths[k]]
        stats = None
        if self.row_stats is not None:
            s = self.row_stats
            stats = RowStats(s.count[rows], s.mean[rows], s.m2[rows], s.low[rows], s.high[rows])
        return FeatureStore(meta=self.meta.take(pa.array(rows)), values=values, offsets=new_offsets[:-1],
                            shapes=self.shapes[rows].copy(), label_scales=dict(self.label_scales),
                            feature_set=self.feature_set, frame_rate=self.frame_rate,
                            manifest_hashes=dict(self.manifest_hashes), sources=list(self.sources),
                            source_index=self.source_index[rows].copy(), row_stats=stats)


def compute_row_stats(values: np.ndarray, offsets: np.ndarray, shapes: np.ndarray) -> RowStats:
    """Per-row count, mean, centred sum of squares, min and max per bin, in blocks of bounded memory.

    Args:
        values: Flat float32 values, rows contiguous.
        offsets: Start of each row (length N or N + 1).
        shapes: ``(N, 2)`` frames x bins.

    Returns:
        The :class:`RowStats` of the N rows.
    """
    n = len(shapes)
    n_bins = int(shapes[0, 1]) if n else 0
    count = shapes[:, 0].astype(np.int64)
    mean = np.zeros((n, n_bins))
    m2 = np.zeros((n, n_bins))
    low = np.zeros((n, n_bins), dtype=np.float32)
    high = np.zeros((n, n_bins), dtype=np.float32)
    row = 0
    while row < n:
        # A block of whole rows with about _BLOCK_VALUES values (at least one row).
        stop = row + 1
        budget = count[row] * n_bins
        while stop < n and budget + count[stop] * n_bins <= _BLOCK_VALUES:
            budget += count[stop] * n_bins
            stop += 1
        start_v = int(offsets[row])
        frames = values[start_v:start_v + int(budget)].reshape(-1, n_bins)  # (T_block, F)
        starts = np.concatenate([[0], np.cumsum(count[row:stop])[:-1]])
        sums = np.add.reduceat(frames, starts, axis=0, dtype=np.float64)  # (rows, F)
        block_mean = sums / count[row:stop, None]
        dev = frames - np.repeat(block_mean, count[row:stop], axis=0)
        m2[row:stop] = np.add.reduceat(dev * dev, starts, axis=0)
        mean[row:stop] = block_mean
        low[row:stop] = np.minimum.reduceat(frames, starts, axis=0)
        high[row:stop] = np.maximum.reduceat(frames, starts, axis=0)
        row = stop
    return RowStats(count=count, mean=mean, m2=m2, low=low, high=high)


@dataclass(frozen=True)
class Normalizer:
    """Per-bin affine normalisation ``(x - shift) / scale`` fitted on a fold's training rows.

    ``zscore``: shift = mean, scale = std (floored); ``minmax``: shift = min, scale = max - min (floored), so values
    fall in [0, 1]; ``none``: identity. Statistics run over rows and frames; the last axis is the bin axis.
    """

    kind: str
    shift: np.ndarray  # (F,) float32
    scale: np.ndarray  # (F,) float32

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x`` (last axis = bins) in place when it is float32 and writable; returns it."""
        if self.kind == "none":
            return x
        x -= self.shift
        x /= self.scale
        return x


def fit_normalizer(store: FeatureStore, rows: np.ndarray, kind: str = "zscore") -> Normalizer:
    """Fit a :class:`Normalizer` on ``rows`` of ``store`` only (a fold's training rows), without copying them.

    Args:
        store: The feature store.
        rows: Row indices of the training rows.
        kind: One of :data:`NORMALIZATIONS`.

    Returns:
        The fitted normalizer.

    Raises:
        ValueError: An unknown kind, or no rows.
    """
    if kind not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {kind!r}")
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("fit_normalizer needs at least one training row, got none")
    n_bins = store.n_bins
    if kind == "none":
        return Normalizer(kind, np.zeros(n_bins, np.float32), np.ones(n_bins, np.float32))
    if store.row_stats is not None:
        s = store.row_stats
        count = s.count[rows].astype(np.float64)
        total = count.sum()
        mean = (count[:, None] * s.mean[rows]).sum(axis=0) / total
        # Chan et al.: M2 = sum of the rows' M2 + sum of n_i (mean_i - mean)^2; exact, no catastrophic cancellation.
        m2 = s.m2[rows].sum(axis=0) + (count[:, None] * (s.mean[rows] - mean) ** 2).sum(axis=0)
        var = m2 / total
        low, high = s.low[rows].min(axis=0), s.high[rows].max(axis=0)
    else:
        mean, var, low, high = _vector_stats(store.vectors(), rows)
    if kind == "zscore":
        return Normalizer(kind, mean.astype(np.float32), np.maximum(np.sqrt(var), STD_FLOOR).astype(np.float32))
    return Normalizer(kind, low.astype(np.float32), np.maximum(high - low, STD_FLOOR).astype(np.float32))


def _vector_stats(vectors: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean, variance, min and max over ``vectors[rows]`` in two float64 passes over blocks of rows."""
    step = max(1, _BLOCK_VALUES // max(vectors.shape[1], 1))
    total = np.zeros(vectors.shape[1])
    low = np.full(vectors.shape[1], np.inf, dtype=np.float32)
    high = np.full(vectors.shape[1], -np.inf, dtype=np.float32)
    for i in range(0, len(rows), step):
        block = vectors[rows[i:i + step]]
        total += block.sum(axis=0, dtype=np.float64)
        np.minimum(low, block.min(axis=0), out=low)
        np.maximum(high, block.max(axis=0), out=high)
    mean = total / len(rows)
    sq = np.zeros(vectors.shape[1])
    for i in range(0, len(rows), step):
        dev = vectors[rows[i:i + step]] - mean
        sq += (dev * dev).sum(axis=0)
    return mean, sq / len(rows), low, high


def load_store(shard_sets: Sequence[ShardSet], auxiliary: Sequence[tuple[ShardSet, Sequence[str]]] = ()
               ) -> FeatureStore:
    """Decode every row of the labelled and auxiliary shard sets once into one :class:`FeatureStore`.

    Args:
        shard_sets: Labelled shard sets (``data.shards``).
        auxiliary: ``(shard set, targets it may train)`` per ``data.auxiliary`` entry.

    Returns:
        The store, with per-row statistics for frame features.

    Raises:
        ValueError: No shard set, or shard sets of different feature sets or frame rates.
    """
    entries = [(ss, Source(str(ss.folder), ss.manifest.corpus)) for ss in shard_sets]
    entries += [(ss, Source(str(ss.folder), ss.manifest.corpus, True, tuple(t))) for ss, t in auxiliary]
    if not shard_sets:
        raise ValueError("at least one labelled shard set is needed")
    feature_sets = {ss.manifest.feature_set for ss, _ in entries}
    if len(feature_sets) != 1:
        raise ValueError(f"all shard sets of a sweep must hold the same feature set, got {sorted(feature_sets)}")
    rates = {_frame_rate(ss) for ss, _ in entries}
    if len(rates) != 1:
        raise ValueError(f"all shard sets of a sweep must share one frame rate, got {sorted(map(str, rates))}; "
                         f"ingest them with the same feature parameters")
    metas, values, offsets, shapes, sources, base = [], [], [], [], [], 0
    for k, (ss, _) in enumerate(entries):
        meta, vals, offs, shp = ss.read_all()
        metas.append(meta)
        values.append(np.asarray(vals, dtype=np.float32))
        offsets.append(np.asarray(offs, dtype=np.int64)[: meta.num_rows] + base)
        shapes.append(np.asarray(shp, dtype=np.int64).reshape(-1, 2))
        sources.append(np.full(meta.num_rows, k, dtype=np.int16))
        base += len(vals)
    meta = pa.concat_tables(metas, promote_options="default") if len(metas) > 1 else metas[0]
    scales = {}
    for ss, _ in entries:
        scale = ss.manifest.label_scale
        scales.setdefault(ss.manifest.corpus, tuple(scale) if scale else None)
    return FeatureStore(
        meta=meta,
        values=values[0] if len(values) == 1 else np.concatenate(values),
        offsets=np.concatenate(offsets), shapes=np.concatenate(shapes), label_scales=scales,
        feature_set=feature_sets.pop(), frame_rate=rates.pop(),
        manifest_hashes={str(ss.folder): ss.content_hash for ss, _ in entries},
        sources=[src for _, src in entries], source_index=np.concatenate(sources),
    )


def _frame_rate(ss: ShardSet) -> float | None:
    cfg = ss.manifest.feature_config
    if cfg.get("kind") in ("functionals", "compare_2016") or not cfg.get("hop_length"):
        return None
    return float(cfg.get("sample_rate", SAMPLE_RATE)) / float(cfg["hop_length"])

"""What a trial is given: a read-only feature store of the rows search may use, and its search folds.

The driver decodes the shards once (``ShardSet.read_all``), keeps only the rows that some fold trains or validates
on, and shares the result through Ray's object store (``tune.with_parameters``): trials get a zero-copy, read-only
view instead of one decoded copy each (notes 2). Test rows that no fold trains on (every row of a ``predefined``
test split) are not in the store at all. Under cross-validation protocols (``loso``, ``speaker_kfold``) a row tested
in fold k trains fold j, so it is in the store; fold k's trainable still only ever addresses its own
``SearchFold.train_ids``/``val_ids``, and its test ids are never sent to a trial (``TestLockbox`` refuses to be
pickled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from data_io.folds import SearchFold
from data_io.shards import ShardSet


@dataclass
class FeatureStore:
    """Features and metadata of a set of rows (one or several corpora, one feature set).

    Attributes:
        meta: Metadata table, one row per utterance (no feature column).
        values: All feature values, flat float32.
        offsets: Start of each row's values in ``values`` (length N or N+1).
        shapes: ``(N, 2)`` frames x bins per row.
        label_scales: Attribute scale per corpus, e.g. ``{"msp_podcast": (1.0, 7.0)}``.
        feature_set: Feature-set name (all shard sets must share it).
        manifest_hashes: Content hash per shard folder, for MLflow tags.
    """

    meta: pa.Table
    values: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    label_scales: dict[str, tuple[float, float] | None]
    feature_set: str
    manifest_hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = self.meta["utt_id"].to_pylist()
        self._row_of = {u: i for i, u in enumerate(ids)}
        if len(self._row_of) != len(ids):
            raise ValueError("duplicate utt_id across the shard sets of one sweep; each corpus needs unique ids")

    @property
    def num_rows(self) -> int:
        return self.meta.num_rows

    def rows(self, utt_ids: Sequence[str]) -> np.ndarray:
        """Row indices of ``utt_ids`` (KeyError naming the first unknown id)."""
        try:
            return np.fromiter((self._row_of[u] for u in utt_ids), dtype=np.int64, count=len(utt_ids))
        except KeyError as err:
            raise KeyError(f"utterance {err.args[0]!r} is not in this feature store") from None

    def feature_matrix(self, rows: np.ndarray, frames: int | None = None) -> np.ndarray:
        """Features of ``rows`` as one float32 array.

        Utterance-level features (one frame per row) give ``(n, D)``. Frame features give ``(n, frames, F)``,
        each utterance centre-cropped or zero-padded to ``frames`` (required then).
        """
        shapes = self.shapes[rows]
        starts = self.offsets[rows]
        if np.all(shapes[:, 0] == 1):
            dim = int(shapes[0, 1])
            if not np.all(shapes[:, 1] == dim):
                raise ValueError("rows have different feature dimensions; shards of one sweep must share a preset")
            return self.values[starts[:, None] + np.arange(dim)[None, :]]
        if frames is None:
            raise ValueError(f"feature set {self.feature_set!r} has frame-level features; the family config must "
                             f"set how many frames an example has (e.g. frames: 600)")
        n_bins = int(shapes[0, 1])
        out = np.zeros((len(rows), frames, n_bins), dtype=np.float32)
        for k, (start, (t, f)) in enumerate(zip(starts, shapes, strict=True)):
            mat = self.values[start:start + t * f].reshape(t, f)
            if t >= frames:
                off = (t - frames) // 2
                out[k] = mat[off:off + frames]
            else:
                out[k, :t] = mat
        return out

    def subset(self, utt_ids: Sequence[str]) -> FeatureStore:
        """A new store holding only ``utt_ids`` (copies the values of those rows)."""
        rows = self.rows(list(utt_ids))
        lengths = self.shapes[rows, 0] * self.shapes[rows, 1]
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.empty(int(new_offsets[-1]), dtype=np.float32)
        for k, r in enumerate(rows):
            values[new_offsets[k]:new_offsets[k + 1]] = self.values[self.offsets[r]:self.offsets[r] + lengths[k]]
        return FeatureStore(meta=self.meta.take(pa.array(rows)), values=values, offsets=new_offsets[:-1],
                            shapes=self.shapes[rows].copy(), label_scales=dict(self.label_scales),
                            feature_set=self.feature_set, manifest_hashes=dict(self.manifest_hashes))


@dataclass
class SearchData:
    """Everything a search trial receives: the store of train+validation rows and the search folds.

    Attributes:
        store: Features of the rows that some fold trains or validates on.
        folds: Search views of the protocol's folds (no test ids).
        targets: Target names, e.g. ``("arousal", "valence", "dominance")``.
        classes: Class lists per class target, e.g. ``{"emotion": ["neutral", "happy", "sad", "angry"]}``.
        emotion_merge: Category renames applied before class lookup (e.g. ``{"excited": "happy"}``).
    """

    store: FeatureStore
    folds: list[SearchFold]
    targets: tuple[str, ...]
    classes: dict[str, list[str]] = field(default_factory=dict)
    emotion_merge: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for fold in self.folds:
            if not isinstance(fold, SearchFold):
                raise TypeError(f"SearchData takes SearchFold views (fold.for_search()), got {type(fold).__name__}")


def load_store(shard_sets: Sequence[ShardSet]) -> FeatureStore:
    """Decode every row of one or more shard sets once into a :class:`FeatureStore`."""
    if not shard_sets:
        raise ValueError("at least one shard set is needed")
    feature_sets = {ss.manifest.feature_set for ss in shard_sets}
    if len(feature_sets) != 1:
        raise ValueError(f"all shard sets of a sweep must hold the same feature set, got {sorted(feature_sets)}")
    metas, values, offsets, shapes, base = [], [], [], [], 0
    for ss in shard_sets:
        meta, vals, offs, shp = ss.read_all()
        offs = np.asarray(offs, dtype=np.int64)[: meta.num_rows]
        metas.append(meta)
        values.append(np.asarray(vals, dtype=np.float32))
        offsets.append(offs + base)
        shapes.append(np.asarray(shp, dtype=np.int64).reshape(-1, 2))
        base += len(vals)
    meta = pa.concat_tables(metas, promote_options="default") if len(metas) > 1 else metas[0]
    return FeatureStore(
        meta=meta,
        values=values[0] if len(values) == 1 else np.concatenate(values),
        offsets=np.concatenate(offsets), shapes=np.concatenate(shapes),
        label_scales={ss.manifest.corpus: tuple(ss.manifest.label_scale) if ss.manifest.label_scale else None
                      for ss in shard_sets},
        feature_set=feature_sets.pop(),
        manifest_hashes={str(ss.folder): ss.content_hash for ss in shard_sets},
    )


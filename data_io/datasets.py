"""Label encoding, feature normalisation and the torch datasets behind the batches of ``trainables/base.py``.

A batch item is a dict: ``x`` (float32 features), one entry per target (float32 in [-1, 1] for an attribute,
int64 class index for a class target), ``<target>_mask`` (bool, True where the row has that label) and
``utt_index`` (int64 row of the utterance in the arrays the dataset was built on). ``default_collate`` stacks
these dicts into the batch layout, so no custom collate is needed.

* :func:`encode_targets` turns shard metadata into those target arrays, once per feature store.
* :class:`Standardizer` holds per-feature mean/std fitted on a fold's training rows only.
* :class:`ArrayDataset` serves utterance-level examples (functionals, or frame features cropped/padded to a
  fixed length); :class:`WindowDataset` cuts utterances into fixed-width windows for window-level training
  with utterance-level scoring (:func:`pool_by_utterance` averages window posteriors per utterance, as in the
  AAE paper's 256-frame segments).

Feature arrays may be read-only views shared through Ray's object store: nothing here writes to them, and
every item is a fresh copy so ``torch.from_numpy`` never aliases shared memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from data_io.schema import ATTRIBUTES, EMOTION_VOCAB, GENDERS, STYLES

CLASS_TARGETS = ("emotion", "gender", "speaker", "style")
TARGETS = (*ATTRIBUTES, *CLASS_TARGETS)
CROPS = ("start", "center", "random")
# Values known in advance per class target: a class list naming anything else is a typo that would silently
# mask every row of that class. Speakers are corpus ids, so they are not checked.
_VOCAB = {"emotion": EMOTION_VOCAB, "gender": GENDERS, "style": STYLES}

LabelScale = tuple[float, float] | Sequence[float] | Mapping[str, Sequence[float] | None] | None
Features = np.ndarray | Sequence[np.ndarray]


# ---- targets -----------------------------------------------------------------------------------------------
def _check_targets(targets: Sequence[str]) -> None:
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; valid targets are {list(TARGETS)}")


def _merged_emotion(meta: pa.Table, merge: Mapping[str, str] | None) -> pa.ChunkedArray | pa.Array:
    col = meta.column("emotion")
    if not merge:
        return col
    return pa.array([merge.get(v, v) if v is not None else None for v in col.to_pylist()], type=pa.string())


def resolve_classes(meta: pa.Table, targets: Sequence[str],
                    classes: Mapping[str, Sequence[str]] | None = None,
                    merge: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """The class list of every class target in ``targets``.

    Given lists are checked and kept; ``speaker``, ``gender`` and ``style`` default to the sorted unique
    non-null values of ``meta`` (pass the metadata of every row of the sweep, not one fold's, so that indices
    agree across folds). ``emotion`` has no default: the class set is a protocol choice.

    Args:
        meta: Shard metadata (needs the target columns).
        targets: Target names; attribute targets are ignored here.
        classes: Class lists per class target, e.g. ``{"emotion": ["neutral", "happy", "sad", "angry"]}``.
        merge: Emotion renames applied before lookup, e.g. ``{"excited": "happy"}``.

    Returns:
        ``{class_target: [class, ...]}``.

    Raises:
        ValueError: An unknown target, a missing emotion list, a duplicate or unknown class name, or a merge
            that maps onto a class not in the emotion list.
    """
    _check_targets(targets)
    classes = dict(classes or {})
    out: dict[str, list[str]] = {}
    for t in targets:
        if t not in CLASS_TARGETS:
            continue
        if t in classes and classes[t] is not None:
            names = [str(c) for c in classes[t]]
        elif t == "emotion":
            raise ValueError("target 'emotion' needs classes['emotion'], e.g. ['neutral', 'happy', 'sad', "
                             "'angry'] (data_io.schema.EMOTIONS_4); got none")
        else:
            names = sorted(v for v in pc.unique(meta.column(t)).to_pylist() if v is not None)
        if len(set(names)) != len(names):
            raise ValueError(f"classes[{t!r}] must not repeat a name, got {names}")
        if len(names) < 2:
            raise ValueError(f"target {t!r} needs at least 2 classes, got {names}; pass classes[{t!r}] or "
                             f"drop the target")
        if t in _VOCAB and set(names) - set(_VOCAB[t]):
            raise ValueError(f"classes[{t!r}] names {sorted(set(names) - set(_VOCAB[t]))}, which are not in "
                             f"the schema's vocabulary {list(_VOCAB[t])}")
        out[t] = names
    if merge and "emotion" in out:
        bad = {k: v for k, v in merge.items() if v not in out["emotion"]}
        if bad:
            raise ValueError(f"emotion merge {bad} maps onto classes not in classes['emotion'] = "
                             f"{out['emotion']}")
    return out


def _scale_bounds(meta: pa.Table, target: str, label_scale: LabelScale) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (low, high) of ``target``'s corpus scale."""
    n = meta.num_rows
    if isinstance(label_scale, Mapping):
        corpus = np.asarray(meta.column("corpus").to_pylist(), dtype=object)
        lo, hi = np.full(n, np.nan), np.full(n, np.nan)
        for name in set(corpus.tolist()):
            scale = label_scale.get(name)
            if scale is not None:
                rows = corpus == name
                lo[rows], hi[rows] = float(scale[0]), float(scale[1])
        return lo, hi
    if label_scale is None:
        return np.full(n, np.nan), np.full(n, np.nan)
    return np.full(n, float(label_scale[0])), np.full(n, float(label_scale[1]))


def encode_targets(meta: pa.Table, targets: Sequence[str], label_scale: LabelScale,
                   classes: Mapping[str, Sequence[str]] | None = None,
                   merge: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Encode shard metadata into the target arrays of the batch layout.

    Attribute targets (arousal/valence/dominance) are mapped linearly from the corpus scale to [-1, 1]
    (``2 * (y - low) / (high - low) - 1``). Class targets become int64 indices into their class list (see
    :func:`resolve_classes`). A row without a label (null, or a class not in the list) gets mask False and
    value 0, a finite value so that ``loss * mask`` stays finite.

    Args:
        meta: Shard metadata, one row per utterance.
        targets: Target names from :data:`TARGETS`.
        label_scale: ``(low, high)`` of the attribute labels (the manifest's ``label_scale``), a mapping
            ``{corpus: (low, high) or None}`` for rows of several corpora, or None when no attribute is
            labelled.
        classes: Class lists per class target, e.g. ``{"emotion": ["neutral", "happy", "sad", "angry"]}``.
        merge: Emotion renames applied before lookup, e.g. ``{"excited": "happy"}`` (IEMOCAP 4-class).

    Returns:
        ``{target: values, target + "_mask": bool}``, every array of length ``meta.num_rows``; values are
        float32 for attributes and int64 for class targets.

    Raises:
        ValueError: An unknown target; an attribute with labels but no scale, or labels outside their scale;
            a class-list problem (see :func:`resolve_classes`).
    """
    _check_targets(targets)
    class_lists = resolve_classes(meta, targets, classes, merge)
    out: dict[str, np.ndarray] = {}
    for t in targets:
        if t in ATTRIBUTES:
            col = meta.column(t)
            mask = pc.is_valid(col).to_numpy(zero_copy_only=False).astype(bool)
            y = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
            lo, hi = _scale_bounds(meta, t, label_scale)
            unscaled = mask & np.isnan(lo)
            if unscaled.any():
                raise ValueError(f"target {t!r} has labels but no label_scale for "
                                 f"{sorted(set(np.asarray(meta.column('corpus').to_pylist())[unscaled]))}; "
                                 f"pass the manifest's label_scale, got {label_scale!r}")
            if np.any(hi[mask] <= lo[mask]):
                raise ValueError(f"label_scale must have low < high, got {label_scale!r}")
            outside = mask & ((y < lo - 1e-6) | (y > hi + 1e-6))
            if outside.any():
                bad = y[outside]
                raise ValueError(f"target {t!r} has values {bad.min():g}..{bad.max():g} outside its "
                                 f"label_scale {label_scale!r}; the scale does not match the corpus")
            scaled = np.zeros(len(y), dtype=np.float32)
            scaled[mask] = 2.0 * (y[mask] - lo[mask]) / (hi[mask] - lo[mask]) - 1.0
            out[t], out[f"{t}_mask"] = scaled, mask
        else:
            col = _merged_emotion(meta, merge) if t == "emotion" else meta.column(t)
            idx = pc.index_in(col, value_set=pa.array(class_lists[t], type=pa.string()))
            out[t] = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
            out[f"{t}_mask"] = pc.is_valid(idx).to_numpy(zero_copy_only=False).astype(bool)
    return out


# ---- normalisation -----------------------------------------------------------------------------------------
def _select(x: Features, rows: Sequence[int] | np.ndarray | None) -> Features:
    if rows is None:
        return x
    rows = np.asarray(rows, dtype=np.int64)
    return x[rows] if isinstance(x, np.ndarray) else [x[int(r)] for r in rows]


def _blocks(x: Features, dim: int, block: int = 1 << 22):
    """Yield float64 ``(n, dim)`` blocks of ``x`` of about ``block`` values (bounded memory on big arrays)."""
    if isinstance(x, np.ndarray):
        flat = x.reshape(-1, dim)
        step = max(1, block // dim)
        for i in range(0, len(flat), step):
            yield flat[i:i + step].astype(np.float64)
    else:
        for a in x:
            yield np.asarray(a, dtype=np.float64).reshape(-1, dim)


class Standardizer:
    """Per-feature z-normalisation with statistics from a fold's training rows.

    Statistics run over rows and frames: the last axis is the feature axis. The state is plain lists of
    floats, so it loads with ``torch.load(weights_only=True)`` from a checkpoint.

    Attributes:
        mean: ``(F,)`` float32 means, None before :meth:`fit`.
        std: ``(F,)`` float32 standard deviations, floored at ``floor``.
        floor: Smallest std (a constant feature would otherwise divide by zero).
    """

    def __init__(self, floor: float = 1e-5) -> None:
        self.floor = float(floor)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x: Features, rows: Sequence[int] | np.ndarray | None = None) -> Standardizer:
        """Fit mean and std.

        Args:
            x: ``(N, D)`` or ``(N, T, F)`` array, or a sequence of ``(T, F)`` arrays.
            rows: The training rows of ``x`` (default: all); statistics never see other rows.

        Returns:
            self.

        Raises:
            ValueError: No rows, or rows whose feature dimensions differ.
        """
        x = _select(x, rows)
        if len(x) == 0:
            raise ValueError("Standardizer.fit needs at least one training row, got none")
        dims = {np.shape(a)[-1] for a in x} if not isinstance(x, np.ndarray) else {x.shape[-1]}
        if len(dims) != 1:
            raise ValueError(f"Standardizer.fit needs one feature dimension, got {sorted(dims)}")
        dim = dims.pop()
        # Two passes in float64: a one-pass sum of squares loses precision on log-energies around -80 dB.
        count, total = 0, np.zeros(dim)
        for b in _blocks(x, dim):
            count += len(b)
            total += b.sum(axis=0)
        if count == 0:
            raise ValueError("Standardizer.fit got rows with no frames")
        mean = total / count
        sq = np.zeros(dim)
        for b in _blocks(x, dim):
            sq += ((b - mean) ** 2).sum(axis=0)
        self.mean = mean.astype(np.float32)
        self.std = np.maximum(np.sqrt(sq / count), self.floor).astype(np.float32)
        return self

    def transform(self, x: Features) -> Features:
        """Return ``(x - mean) / std`` as float32 (a new array; a list for a list input).

        Raises:
            RuntimeError: Called before :meth:`fit` or :meth:`load_state_dict`.
            ValueError: ``x``'s last axis is not the fitted feature dimension.
        """
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer.transform called before fit(); fit on the training rows first")
        if not isinstance(x, np.ndarray):
            return [self.transform(np.asarray(a)) for a in x]
        if x.shape[-1] != len(self.mean):
            raise ValueError(f"Standardizer was fitted on {len(self.mean)} features, got shape {x.shape}")
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)

    def state_dict(self) -> dict:
        """``{"mean": [...], "std": [...], "floor": float}`` (plain Python, checkpoint-safe)."""
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer.state_dict called before fit()")
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "floor": self.floor}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from :meth:`state_dict`."""
        mean = np.asarray(state["mean"], dtype=np.float32)
        std = np.asarray(state["std"], dtype=np.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"Standardizer state needs 1-D mean and std of one length, got {mean.shape} and "
                             f"{std.shape}")
        self.floor = float(state.get("floor", self.floor))
        self.mean, self.std = mean, std


# ---- datasets ----------------------------------------------------------------------------------------------
class _TargetTable:
    """Targets as torch tensors, checked against the number of rows, served per row."""

    def __init__(self, targets: Mapping[str, np.ndarray], n_rows: int) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        for name, arr in targets.items():
            arr = np.asarray(arr)
            if arr.shape != (n_rows,):
                raise ValueError(f"target array {name!r} must have shape ({n_rows},) (one entry per feature "
                                 f"row), got {arr.shape}")
            if not name.endswith("_mask") and f"{name}_mask" not in targets:
                raise ValueError(f"target {name!r} comes without {name}_mask; build targets with "
                                 f"encode_targets()")
            if name.endswith("_mask"):
                dtype = torch.bool
            elif np.issubdtype(arr.dtype, np.integer):
                dtype = torch.int64
            else:
                dtype = torch.float32
            self.tensors[name] = torch.as_tensor(np.array(arr), dtype=dtype)

    def item(self, row: int) -> dict[str, torch.Tensor]:
        return {name: t[row] for name, t in self.tensors.items()}


def _rows_of(rows: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    out = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(out) and (out.min() < 0 or out.max() >= n):
        raise ValueError(f"rows must index the {n} feature rows, got indices {out.min()}..{out.max()}")
    return out


class ArrayDataset(Dataset):
    """Utterance-level examples over a feature array (functionals) or a list of frame matrices.

    Args:
        x: ``(N, D)`` array (a vector per utterance), ``(N, T, F)`` array, or a sequence of ``(T, F)`` arrays.
        targets: Output of :func:`encode_targets` over the same N rows.
        rows: The rows this dataset serves (e.g. a fold's training rows); default all. ``utt_index`` is the
            row number in ``x``.
        frames: For frame features, the fixed length every example is cropped or zero-padded to; required
            when utterances differ in length.
        crop: Where a longer utterance is cropped: ``"start"``, ``"center"`` or ``"random"``.
        generator: The torch Generator that draws random crops (required for ``"random"``, for
            reproducibility; with DataLoader workers each worker draws from its own copy).
        standardizer: A fitted :class:`Standardizer` applied per item (padding comes after it, so padded
            frames equal the training mean).

    Raises:
        ValueError: Bad rows, targets, crop, or frame features of varying length without ``frames``.
    """

    def __init__(self, x: Features, targets: Mapping[str, np.ndarray], rows: Sequence[int] | None = None, *,
                 frames: int | None = None, crop: str = "center", generator: torch.Generator | None = None,
                 standardizer: Standardizer | None = None) -> None:
        self.x = x
        n = len(x)
        self.rows = _rows_of(rows, n)
        self.targets = _TargetTable(targets, n)
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if crop == "random" and generator is None:
            raise ValueError("crop='random' needs a torch.Generator (generator=...) for reproducible crops")
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.frames, self.crop, self.generator, self.standardizer = frames, crop, generator, standardizer
        self.frame_level = (isinstance(x, np.ndarray) and x.ndim == 3) or not isinstance(x, np.ndarray)
        if isinstance(x, np.ndarray) and x.ndim not in (2, 3):
            raise ValueError(f"x must be (N, D) or (N, T, F), got shape {x.shape}")
        if self.frame_level and frames is None and not isinstance(x, np.ndarray) and len(self.rows):
            lengths = {int(np.shape(x[int(r)])[0]) for r in self.rows}
            if len(lengths) > 1:
                raise ValueError(f"utterances have {min(lengths)}..{max(lengths)} frames; pass frames= (the "
                                 f"fixed example length) or use WindowDataset")

    def __len__(self) -> int:
        return len(self.rows)

    def _fit_length(self, mat: np.ndarray) -> np.ndarray:
        t, width = mat.shape[0], self.frames
        if width is None or t == width:
            return mat
        if t > width:
            if self.crop == "start":
                start = 0
            elif self.crop == "center":
                start = (t - width) // 2
            else:
                start = int(torch.randint(0, t - width + 1, (1,), generator=self.generator))
            return mat[start:start + width]
        out = np.zeros((width, mat.shape[1]), dtype=np.float32)
        out[:t] = mat
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        feat = np.asarray(self.x[row])
        if self.standardizer is not None:
            feat = self.standardizer.transform(feat)
        if self.frame_level:
            feat = self._fit_length(feat)
        # A private float32 copy: x may be a read-only view of Ray's object store.
        item = {"x": torch.from_numpy(np.array(feat, dtype=np.float32, copy=True))}
        item.update(self.targets.item(row))
        item["utt_index"] = torch.tensor(row, dtype=torch.int64)
        return item


def window_starts(n_frames: int, width: int, hop: int) -> np.ndarray:
    """Start frames of the windows of one utterance.

    Windows start every ``hop`` frames; when the last one stops short of the end, one more window ends
    exactly at the end, so every frame is in some window and no window of a long utterance is padded. An
    utterance shorter than ``width`` is one window (zero-padded by :class:`WindowDataset`).
    E.g. ``n_frames=600, width=256, hop=128`` gives starts 0, 128, 256, 344.

    Returns:
        int64 start frames.
    """
    if n_frames <= width:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_frames - width + 1, hop, dtype=np.int64)
    if starts[-1] + width < n_frames:
        starts = np.append(starts, n_frames - width)
    return starts


class WindowDataset(Dataset):
    """Fixed-width windows cut from each utterance's ``(T, F)`` matrix, each with its utterance's targets.

    Args:
        x: A sequence of ``(T, F)`` arrays, or an ``(N, T, F)`` array.
        targets: Output of :func:`encode_targets` over the same N rows.
        rows: The utterances this dataset serves; default all. ``utt_index`` is the row number in ``x``.
        width: Window length in frames (256 in the AAE paper).
        hop: Frames between window starts; default ``width`` (no overlap). See :func:`window_starts`.
        standardizer: A fitted :class:`Standardizer` applied per window (before padding).

    Attributes:
        utt_index: int64 ``(n_windows,)`` the row of each window's utterance, for :func:`pool_by_utterance`.
        starts: int64 ``(n_windows,)`` each window's first frame.
    """

    def __init__(self, x: Features, targets: Mapping[str, np.ndarray], rows: Sequence[int] | None = None, *,
                 width: int = 256, hop: int | None = None, standardizer: Standardizer | None = None) -> None:
        if isinstance(x, np.ndarray) and x.ndim != 3:
            raise ValueError(f"WindowDataset needs frame features, (N, T, F) or a list of (T, F), got shape "
                             f"{x.shape}")
        hop = width if hop is None else hop
        if width < 1 or hop < 1:
            raise ValueError(f"width and hop must be >= 1, got width={width}, hop={hop}")
        self.x, self.width, self.hop, self.standardizer = x, int(width), int(hop), standardizer
        n = len(x)
        rows_ = _rows_of(rows, n)
        self.targets = _TargetTable(targets, n)
        per_utt = [window_starts(int(np.shape(x[int(r)])[0]), self.width, self.hop) for r in rows_]
        self.starts = np.concatenate(per_utt) if per_utt else np.zeros(0, dtype=np.int64)
        self.utt_index = (np.repeat(rows_, [len(s) for s in per_utt]) if per_utt
                          else np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row, start = int(self.utt_index[i]), int(self.starts[i])
        win = np.asarray(self.x[row])[start:start + self.width]
        if self.standardizer is not None:
            win = self.standardizer.transform(win)
        out = np.zeros((self.width, win.shape[1]), dtype=np.float32)  # zero padding for short utterances
        out[:len(win)] = win
        item = {"x": torch.from_numpy(out)}
        item.update(self.targets.item(row))
        item["utt_index"] = torch.tensor(row, dtype=torch.int64)
        return item


def pool_by_utterance(utt_index: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor,
                      how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Pool window-level scores into utterance-level scores.

    Args:
        utt_index: ``(W,)`` utterance row of each window.
        scores: ``(W,)`` or ``(W, C)`` window scores (e.g. class posteriors; average probabilities, not
            logits, to follow the AAE paper).
        how: ``"mean"`` or ``"max"``.

    Returns:
        ``(utt_ids_unique, pooled)``: the sorted unique utterance rows and their ``(U,)`` or ``(U, C)`` pooled
        float scores.

    Raises:
        ValueError: An unknown ``how`` or lengths that differ.
    """
    idx = np.asarray(utt_index.cpu() if isinstance(utt_index, torch.Tensor) else utt_index).reshape(-1)
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores)
    if len(idx) != len(s):
        raise ValueError(f"utt_index and scores need one entry per window, got {len(idx)} and {len(s)}")
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    uniq, inverse = np.unique(idx, return_inverse=True)
    flat = s.reshape(len(s), -1).astype(np.float64)
    if how == "mean":
        pooled = np.zeros((len(uniq), flat.shape[1]))
        np.add.at(pooled, inverse, flat)
        pooled /= np.bincount(inverse, minlength=len(uniq))[:, None]
    else:
        pooled = np.full((len(uniq), flat.shape[1]), -np.inf)
        np.maximum.at(pooled, inverse, flat)
    return uniq, pooled.reshape((len(uniq), *s.shape[1:]))

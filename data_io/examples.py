"""How an utterance becomes training and evaluation examples: the one place that decides it (issue: data path).

A family names its :class:`ExampleSpec` in its config dataclass (``cfg.feed().examples``); the loop never branches on
the family. Four kinds, one per row of the families table in DESIGN.md:

=========== ======================================================= =========================================
kind        training example                                        evaluation (one score per utterance)
=========== ======================================================= =========================================
``vector``  the utterance's feature vector (functionals), ``(D,)``  the same vector
``fixed``   ``frames`` frames from the ``start`` (the papers' "first the same
            6 s / 7.5 s") or the ``center`` of the utterance
``crop``    a random crop of ``frames`` frames; its centre is drawn one deterministic crop centred on the middle
            by ``centre``: ``words`` (a random point of a random     of the utterance's speech
            word's time range, the multitask-DCGAN paper), ``speech`` (``eval_crop="speech_center"``), or every
            (a random speech frame) or ``uniform``                   crop tiling it, pooled (``"tile"``)
``windows`` every window of ``frames`` frames, ``hop`` apart,       every window, posteriors averaged per
            optionally over speech frames only (silence removed,    utterance (the AAE paper's segments)
            the AAE paper)
=========== ======================================================= =========================================

Padding: an utterance shorter than ``frames`` is zero-padded at the end *after* normalisation, so a padded frame is
the training mean (z-score) or the training minimum (min-max); a crop or window is never shorter than ``frames``.
The ``words`` policy falls back to ``speech`` for an utterance without word alignments, and ``speech`` to
``uniform`` for one without detected speech. Window starts: every ``hop`` frames, plus one window that ends exactly
at the end when the last one stops short (:func:`window_starts`).

An :class:`ExampleIndex` lists examples as (row, start) pairs; :func:`gather` builds a normalised float32 batch from
them, reading the shared store directly (a batch is the only copy ever made). :func:`pool` averages example outputs
back to utterances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_io.store import FeatureStore, Normalizer

KINDS = ("vector", "fixed", "crop", "windows")
ANCHORS = ("start", "center")
CENTRES = ("words", "speech", "uniform")
EVAL_CROPS = ("speech_center", "tile")


@dataclass(frozen=True)
class ExampleSpec:
    """How utterances become examples; build with the named constructors.

    Attributes:
        kind: One of :data:`KINDS`.
        frames: Example length in frames (fixed length, crop width, window width); None for ``vector``.
        anchor: ``fixed``: where the frames are taken, ``start`` or ``center``.
        centre: ``crop``: the training crop's centre policy, one of :data:`CENTRES`.
        eval_crop: ``crop``: the evaluation crop, one of :data:`EVAL_CROPS`.
        hop: ``windows``: frames between window starts (default ``frames``: no overlap).
        speech_only: ``windows``: cut windows over the utterance's speech frames only (silence removed).
    """

    kind: str = "vector"
    frames: int | None = None
    anchor: str = "start"
    centre: str = "speech"
    eval_crop: str = "speech_center"
    hop: int | None = None
    speech_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"example kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "vector":
            if self.frames is not None:
                raise ValueError(f"vector examples take no frames, got frames={self.frames}")
            return
        if not isinstance(self.frames, int | np.integer) or self.frames < 1:
            raise ValueError(f"{self.kind} examples need frames >= 1 (an integer), got {self.frames!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")
        if self.centre not in CENTRES:
            raise ValueError(f"centre must be one of {CENTRES}, got {self.centre!r}")
        if self.eval_crop not in EVAL_CROPS:
            raise ValueError(f"eval_crop must be one of {EVAL_CROPS}, got {self.eval_crop!r}")
        if self.hop is not None and self.hop < 1:
            raise ValueError(f"hop >= 1 must hold, got {self.hop}")

    @classmethod
    def vector(cls) -> ExampleSpec:
        """One feature vector per utterance (utterance-level features)."""
        return cls("vector")

    @classmethod
    def fixed(cls, frames: int, anchor: str = "start") -> ExampleSpec:
        """``frames`` frames from the start (or centre) of each utterance, zero-padded when shorter."""
        return cls("fixed", int(frames), anchor=anchor)

    @classmethod
    def crop(cls, frames: int, centre: str = "speech", eval_crop: str = "speech_center") -> ExampleSpec:
        """Random training crops of width ``frames`` centred by ``centre``; deterministic evaluation crops."""
        return cls("crop", int(frames), centre=centre, eval_crop=eval_crop)

    @classmethod
    def windows(cls, frames: int, hop: int | None = None, speech_only: bool = False) -> ExampleSpec:
        """Sliding windows of ``frames`` frames, ``hop`` apart; scored per utterance by pooling."""
        return cls("windows", int(frames), hop=None if hop is None else int(hop), speech_only=speech_only)

    @property
    def step(self) -> int:
        """Window hop in frames (``windows``; the tile step of ``crop``)."""
        return int(self.hop or self.frames)

    def input_shape(self, store: FeatureStore) -> tuple[int, ...]:
        """Shape of one example without the batch axis."""
        if self.kind == "vector":
            if not store.utterance_level:
                raise ValueError(f"vector examples need utterance-level features (functionals); feature set "
                                 f"{store.feature_set!r} has frames: use fixed, crop or windows examples")
            return (store.n_bins,)
        if store.utterance_level:
            raise ValueError(f"{self.kind} examples need frame features; feature set {store.feature_set!r} has "
                             f"one vector per utterance: use vector examples")
        return (int(self.frames), store.n_bins)


@dataclass
class ExampleIndex:
    """Examples as (store row, start) pairs; ``start`` indexes the speech frames when ``speech_only``.

    Attributes:
        rows: ``(E,)`` int64 store row of each example.
        starts: ``(E,)`` int64 first frame of each example.
        speech_only: Starts index each row's speech frames, not its frames.
    """

    rows: np.ndarray
    starts: np.ndarray
    speech_only: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray) -> ExampleIndex:
        return ExampleIndex(self.rows[idx], self.starts[idx], self.speech_only)


def window_starts(n_frames: int, width: int, hop: int) -> np.ndarray:
    """Start frames of the windows of one utterance of ``n_frames`` frames.

    Windows start every ``hop`` frames; when the last one stops short of the end, one more window ends exactly
    at the end, so every frame is in some window and no window of a long utterance is padded. An utterance
    shorter than ``width`` is one (padded) window. E.g. ``n_frames=600, width=256, hop=128`` gives 0, 128, 256, 344.
    """
    if n_frames <= width:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_frames - width + 1, hop, dtype=np.int64)
    if starts[-1] + width < n_frames:
        starts = np.append(starts, n_frames - width)
    return starts


def _length(store: FeatureStore, row: int, speech_only: bool) -> int:
    return len(store.speech_frames(row)) if speech_only else int(store.shapes[row, 0])


def _speech_span(store: FeatureStore, row: int) -> tuple[int, int]:
    spans = store.regions(row, "speech")
    if len(spans):
        return int(spans[0, 0]), int(spans[-1, 1])
    return 0, int(store.shapes[row, 0])


def _tiles(store: FeatureStore, rows: np.ndarray, width: int, hop: int, speech_only: bool) -> ExampleIndex:
    per_row = [window_starts(_length(store, int(r), speech_only), width, hop) for r in rows]
    counts = [len(s) for s in per_row]
    return ExampleIndex(np.repeat(rows, counts).astype(np.int64),
                        np.concatenate(per_row) if per_row else np.zeros(0, np.int64), speech_only)


def training_index(spec: ExampleSpec, store: FeatureStore, rows: np.ndarray) -> ExampleIndex:
    """The training examples of ``rows``; for ``crop`` the starts are placeholders drawn per batch (:func:`draw`)."""
    rows = np.asarray(rows, dtype=np.int64)
    if spec.kind == "windows":
        return _tiles(store, rows, int(spec.frames), spec.step, spec.speech_only)
    if spec.kind == "crop":
        return ExampleIndex(rows, np.zeros(len(rows), np.int64))
    return evaluation_index(spec, store, rows)


def evaluation_index(spec: ExampleSpec, store: FeatureStore, rows: np.ndarray) -> ExampleIndex:
    """The deterministic evaluation examples of ``rows`` (see the module docstring's table)."""
    rows = np.asarray(rows, dtype=np.int64)
    if spec.kind == "vector":
        return ExampleIndex(rows, np.zeros(len(rows), np.int64))
    width = int(spec.frames)
    if spec.kind == "windows":
        return _tiles(store, rows, width, spec.step, spec.speech_only)
    if spec.kind == "crop" and spec.eval_crop == "tile":
        return _tiles(store, rows, width, width, False)
    lengths = store.shapes[rows, 0]
    if spec.kind == "fixed" and spec.anchor == "start":
        starts = np.zeros(len(rows), np.int64)
    elif spec.kind == "fixed":
        starts = np.maximum(lengths - width, 0) // 2
    else:  # crop centred on the middle of the speech (first speech frame to last)
        centres = np.array([sum(_speech_span(store, int(r))) // 2 for r in rows], dtype=np.int64)
        starts = np.clip(centres - width // 2, 0, np.maximum(lengths - width, 0))
    return ExampleIndex(rows, starts.astype(np.int64))


def draw(spec: ExampleSpec, store: FeatureStore, index: ExampleIndex, generator: torch.Generator) -> ExampleIndex:
    """Training examples for one batch: random crop starts drawn now (other kinds are returned unchanged)."""
    if spec.kind != "crop":
        return index
    width = int(spec.frames)
    u = torch.rand(len(index), 2, generator=generator, dtype=torch.float64).numpy()
    starts = np.empty(len(index), dtype=np.int64)
    for k, row in enumerate(index.rows):
        row = int(row)
        n_frames = int(store.shapes[row, 0])
        policy, spans = spec.centre, np.zeros((0, 2), np.int64)
        if policy == "words":
            spans = store.regions(row, "words")
            policy = "words" if len(spans) else "speech"
        if policy == "speech" and not len(store.regions(row, "speech")):
            policy = "uniform"
        if policy == "words":  # a random word, then a random point in its time range (the DCGAN paper)
            s, e = spans[min(int(u[k, 0] * len(spans)), len(spans) - 1)]
            centre = int(s) + int(u[k, 1] * (e - s))
        elif policy == "speech":  # a random speech frame: uniform over speech time
            frames = store.speech_frames(row)
            centre = int(frames[min(int(u[k, 0] * len(frames)), len(frames) - 1)])
        else:
            centre = int(u[k, 0] * n_frames)
        starts[k] = min(max(centre - width // 2, 0), max(n_frames - width, 0))
    return ExampleIndex(index.rows, starts)


def gather(spec: ExampleSpec, store: FeatureStore, index: ExampleIndex, normalizer: Normalizer) -> np.ndarray:
    """Build the normalised float32 inputs of ``index``: ``(E, D)`` vectors or ``(E, frames, F)`` frames.

    Reads the store's shared arrays and writes one new array (the batch); padded frames are 0 after normalisation.
    """
    rows = index.rows
    if spec.kind == "vector":
        return normalizer.apply(store.vectors()[rows].astype(np.float32, copy=False))
    width, n_bins = int(spec.frames), store.n_bins
    out = np.empty((len(rows), width, n_bins), dtype=np.float32)
    lengths = np.empty(len(rows), dtype=np.int64)
    for k, (row, start) in enumerate(zip(rows.tolist(), index.starts.tolist(), strict=True)):
        mat = store.matrix(row)
        if index.speech_only:
            chunk = mat[store.speech_frames(row)[start:start + width]]
        else:
            chunk = mat[start:start + width]
        out[k, :len(chunk)] = chunk
        out[k, len(chunk):] = 0.0  # padding (re-zeroed after normalisation; never garbage in the arithmetic)
        lengths[k] = len(chunk)
    normalizer.apply(out)
    short = lengths < width
    if short.any():
        out[np.arange(width)[None, :] >= lengths[:, None]] = 0.0
    return out


def pool(example_rows: np.ndarray, outputs: np.ndarray, n_rows: int, row_position: np.ndarray) -> np.ndarray:
    """Average example outputs per utterance.

    Args:
        example_rows: ``(E,)`` store row of each example.
        outputs: ``(E,)`` or ``(E, C)`` example outputs (class posteriors, not logits, for class targets).
        n_rows: Number of utterances being scored.
        row_position: Maps a store row to its position among the ``n_rows`` utterances (``-1`` elsewhere).

    Returns:
        ``(n_rows,)`` or ``(n_rows, C)`` float64 means, in utterance order.
    """
    pos = row_position[example_rows]
    flat = outputs.reshape(len(outputs), -1).astype(np.float64)
    total = np.zeros((n_rows, flat.shape[1]))
    np.add.at(total, pos, flat)
    counts = np.bincount(pos, minlength=n_rows)
    if np.any(counts == 0):
        raise ValueError(f"{int(np.sum(counts == 0))} utterances have no example to pool; every utterance must "
                         f"give at least one")
    return (total / counts[:, None]).reshape((n_rows, *outputs.shape[1:]))

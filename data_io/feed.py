"""What a fold feeds its model: labels, sampling, batches for training and per-utterance evaluation sets.

A family says what it needs in one :class:`Feed` (``cfg.feed()``): how utterances become examples
(``data_io.examples.ExampleSpec``), the normalisation, and the :class:`Sampling` of training rows. The loop builds a
:class:`TrainSet` and :class:`EvalSet` per fold from the shared store and never names a family.

Rows and labels:

* Labelled rows (``data.shards``) train every target they carry a label for; auxiliary rows (``data.auxiliary``)
  train only the targets their shard set lists (none for unlabeled audio), are never validated, tested or scored.
  Every batch carries ``<target>_mask`` saying which losses a row feeds (:func:`encode_labels`).
* Target encoders that learn from data (k-means clusters, the training speakers) are fitted on the fold's training
  rows only, each on the rows allowed to train it (:func:`fit_encoders`).

Sampling (seeded by the fold's generator, so the same seed gives the same rows and order):

* ``caps``: at most N training rows of a class per corpus (the selective-MTL paper's 2,000 neutral call-centre
  utterances), drawn once per fold; validation and test rows are never capped, so scores stay comparable.
* ``fraction``: keep this share of the labelled training rows (the selective-MTL paper's "half" setting).
* ``balance``: each epoch oversamples every class of a target (with replacement) up to the largest class (the
  multitask-DCGAN paper's valence balancing); a soft target's class is the argmax of its soft label.
* ``aux_ratio``: each batch holds ``round(aux_ratio * labelled)`` auxiliary examples cycled through a shuffled
  order; None mixes auxiliary examples into the epoch like labelled ones.
* ``aux_speakers``: keep the auxiliary rows of this many auxiliary speakers only (the AAE paper's Fig. 4: the
  number of LibriSpeech speakers behind the gender and speaker tasks); see :func:`keep_aux_speakers`.
"""

from __future__ import annotations

import numbers
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from data_io.examples import ExampleIndex, ExampleSpec, draw, evaluation_index, gather, pool, training_index
from data_io.store import NORMALIZATIONS, FeatureStore, Normalizer

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Sampling:
    """How training rows are drawn (see the module docstring).

    Attributes:
        balance: Target whose classes are oversampled to equal counts every epoch, or None.
        caps: ``((corpus, class, max_rows), ...)`` caps on ``cap_target``'s classes among a fold's training rows.
        cap_target: The class target the caps name classes of.
        fraction: Share of the labelled training rows kept (0, 1].
        aux_ratio: Auxiliary examples per labelled example in a batch; None mixes them into the epoch.
        aux_speakers: Number of auxiliary speakers whose rows are kept (>= 1); None keeps every auxiliary row.
            More than there are keeps them all.
    """

    balance: str | None = None
    caps: tuple[tuple[str, str, int], ...] = ()
    cap_target: str = "emotion"
    fraction: float = 1.0
    aux_ratio: float | None = None
    aux_speakers: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "caps", tuple((str(c), str(k), int(n)) for c, k, n in self.caps))
        if not 0 < self.fraction <= 1:
            raise ValueError(f"sampling fraction must be in (0, 1], got {self.fraction}")
        if any(n < 1 for _, _, n in self.caps):
            raise ValueError(f"class caps must be >= 1, got {self.caps}")
        if self.aux_ratio is not None and not self.aux_ratio > 0:
            raise ValueError(f"aux_ratio must be > 0 (None mixes auxiliary rows in), got {self.aux_ratio}")
        if self.aux_speakers is not None:
            n = self.aux_speakers
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise ValueError(f"aux_speakers must be an integer >= 1 (None keeps every auxiliary speaker), "
                                 f"got {n!r}")
            object.__setattr__(self, "aux_speakers", int(n))


@dataclass(frozen=True)
class Feed:
    """Everything a family asks of the data path.

    Attributes:
        examples: How an utterance becomes examples.
        normalization: ``zscore`` (default), ``minmax`` (to [0, 1], e.g. a sigmoid reconstruction target) or
            ``none``; statistics from the fold's training rows.
        sampling: How training rows are drawn.
    """

    examples: ExampleSpec = field(default_factory=ExampleSpec.vector)
    normalization: str = "zscore"
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")


# ---- labels -------------------------------------------------------------------------------------------------

def allowed_rows(store: FeatureStore, rows: np.ndarray, target: str) -> np.ndarray:
    """``(len(rows),)`` bool: rows that may train ``target`` (labelled rows, and auxiliary rows that list it)."""
    allow = np.array([not s.auxiliary or target in s.targets for s in store.sources], dtype=bool)
    return allow[store.source_index[rows]]


def fit_encoders(encoders: Mapping, store: FeatureStore, train_rows: np.ndarray) -> None:
    """Fit each target encoder on the training rows allowed to train its target (never other rows)."""
    for target, enc in encoders.items():
        rows = train_rows[allowed_rows(store, train_rows, target)]
        enc.fit(store.meta.take(pa.array(rows)))


def encode_labels(encoders: Mapping, store: FeatureStore, rows: np.ndarray) -> dict[str, np.ndarray]:
    """``{target: values, target + "_mask": bool}`` of ``rows``; auxiliary rows are masked out of targets their
    shard set does not list."""
    meta = store.meta.take(pa.array(rows))
    out: dict[str, np.ndarray] = {}
    for target, enc in encoders.items():
        values, mask = enc.encode(meta)
        out[target] = values
        out[f"{target}_mask"] = np.asarray(mask, dtype=bool) & allowed_rows(store, rows, target)
    return out


# ---- training ----------------------------------------------------------------------------------------------

def class_index(labels: Mapping[str, np.ndarray], target: str) -> np.ndarray:
    """Each row's class of a class or soft target (a soft label's argmax), -1 where the row has no label."""
    values = labels[target]
    cls = values.argmax(axis=1) if values.ndim == 2 else values.astype(np.int64)
    return np.where(labels[f"{target}_mask"], cls, -1)


# Seed of the one fixed order in which auxiliary speakers are kept (see keep_aux_speakers).
AUX_SPEAKER_SEED = 0


def keep_aux_speakers(sampling: Sampling, store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """``rows`` with only the auxiliary rows of ``sampling.aux_speakers`` auxiliary speakers kept.

    The auxiliary speakers among ``rows``, keyed ``(corpus, speaker)`` and sorted, are put in one fixed random order
    (seed :data:`AUX_SPEAKER_SEED`, the paper "randomly selects" its LibriSpeech speakers) and the first N are kept.
    The choice depends only on which auxiliary speakers there are, not on the fold, trial or seed: every fold and
    seed repeat of a sweep trains on the same speakers, and the N kept are among the N + 1 kept, so a sweep over N
    (Fig. 4) adds speakers rather than redrawing them. N above the number of auxiliary speakers keeps them all
    (a curve that saturates; nothing is logged). Labelled rows and the order of ``rows`` are kept, and applying
    it twice changes nothing, so the loop may select before fitting encoders and :class:`TrainSet` again.

    Args:
        sampling: The family's sampling; ``aux_speakers`` None returns ``rows`` unchanged.
        store: The store holding the rows.
        rows: Training rows (labelled and auxiliary), store indices.

    Returns:
        The kept rows, int64, in their given order.

    Raises:
        ValueError: An auxiliary row has no speaker (it could not be counted).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if sampling.aux_speakers is None:
        return rows
    aux = np.flatnonzero(store.is_auxiliary(rows))
    if not len(aux):
        return rows
    meta = store.meta.take(pa.array(rows[aux]))
    keys = list(zip(meta.column("corpus").to_pylist(), meta.column("speaker").to_pylist(), strict=True))
    missing = [corpus for corpus, speaker in keys if speaker is None or speaker == ""]
    if missing:
        raise ValueError(f"aux_speakers={sampling.aux_speakers} counts auxiliary speakers, but {len(missing)} "
                         f"auxiliary rows (corpus {sorted(set(missing))}) have no speaker; drop aux_speakers or "
                         f"use auxiliary shard sets with speaker labels (e.g. LibriSpeech)")
    speakers = sorted(set(keys))
    order = np.random.default_rng(AUX_SPEAKER_SEED).permutation(len(speakers))
    kept = {speakers[i] for i in order[:sampling.aux_speakers]}
    keep = np.ones(len(rows), dtype=bool)
    keep[aux] = [key in kept for key in keys]
    return rows[keep]


def _subsample(rows: np.ndarray, keep: int, generator: torch.Generator) -> np.ndarray:
    pick = torch.randperm(len(rows), generator=generator)[:keep].numpy()
    return np.sort(rows[pick])


class TrainSet:
    """A fold's training examples and the batches of one epoch.

    Args:
        feed: The family's feed.
        store: The shared store.
        train_rows: The fold's training rows (labelled and auxiliary), store indices; auxiliary rows beyond
            ``sampling.aux_speakers`` speakers are dropped here (:func:`keep_aux_speakers`).
        encoders: Fitted target encoders.
        normalizer: The fold's normalizer.
        generator: The fold's torch Generator (sampling, order, random crops).
    """

    def __init__(self, feed: Feed, store: FeatureStore, train_rows: np.ndarray, encoders: Mapping,
                 normalizer: Normalizer, generator: torch.Generator) -> None:
        self.feed, self.store, self.normalizer, self.generator = feed, store, normalizer, generator
        sampling = feed.sampling
        train_rows = keep_aux_speakers(sampling, store, train_rows)
        aux = store.is_auxiliary(train_rows)
        labelled, aux_rows = train_rows[~aux], train_rows[aux]
        if sampling.caps:
            labelled = self._cap(labelled, encode_labels(encoders, store, labelled), encoders, sampling.caps,
                                 sampling.cap_target)
        if sampling.fraction < 1:
            labelled = _subsample(labelled, max(1, round(sampling.fraction * len(labelled))), generator)
        self.rows = np.concatenate([labelled, aux_rows])
        self.labels = encode_labels(encoders, store, self.rows)
        self.position = np.full(store.num_rows, -1, dtype=np.int64)
        self.position[self.rows] = np.arange(len(self.rows))
        self.index = training_index(feed.examples, store, self.rows)
        example_aux = store.is_auxiliary(self.index.rows)
        self.labelled_examples = np.flatnonzero(~example_aux)
        self.aux_examples = np.flatnonzero(example_aux)
        self.classes_of = None
        if sampling.balance is not None:
            if sampling.balance not in encoders:
                raise ValueError(f"sampling.balance names {sampling.balance!r}, which is not a target of this "
                                 f"sweep ({sorted(encoders)}); add it to data.targets")
            cls = class_index(self.labels, sampling.balance)
            self.classes_of = cls[self.position[self.index.rows[self.labelled_examples]]]

    def _cap(self, rows: np.ndarray, labels: Mapping[str, np.ndarray], encoders: Mapping,
             caps: Sequence[tuple[str, str, int]], target: str) -> np.ndarray:
        """Keep at most the capped number of training rows of each (corpus, class), chosen by the generator."""
        classes = getattr(encoders.get(target), "classes", None)
        if classes is None:
            raise ValueError(f"class caps name classes of {target!r}, which is not a class target of this sweep "
                             f"({sorted(encoders)}); add it to data.targets or set cap_target")
        cls = class_index(labels, target)
        corpus = np.asarray(self.store.meta.column("corpus").take(pa.array(rows)).to_pylist(), dtype=object)
        keep = np.ones(len(rows), dtype=bool)
        for corpus_name, class_name, cap in caps:
            if class_name not in classes:
                raise ValueError(f"class cap ({corpus_name!r}, {class_name!r}, {cap}) names a class that "
                                 f"{target!r} does not have; its classes are {list(classes)}")
            hit = np.flatnonzero((cls == classes.index(class_name)) & (corpus == corpus_name))
            if len(hit) > cap:
                drop = hit[torch.randperm(len(hit), generator=self.generator)[cap:].numpy()]
                keep[drop] = False
        return rows[keep]

    def __len__(self) -> int:
        return len(self.index)

    def epoch(self, batch_size: int) -> list[np.ndarray]:
        """The example positions of each batch of one epoch (consumes the generator: call once per epoch)."""
        g, s = self.generator, self.feed.sampling
        labelled = self.labelled_examples
        if self.classes_of is not None:
            extra = []
            counts = {c: np.flatnonzero(self.classes_of == c) for c in np.unique(self.classes_of) if c >= 0}
            most = max((len(v) for v in counts.values()), default=0)
            for c in sorted(counts):
                members = counts[c]
                if len(members) < most:
                    pick = torch.randint(len(members), (most - len(members),), generator=g).numpy()
                    extra.append(labelled[members[pick]])
            labelled = np.concatenate([labelled, *extra]) if extra else labelled
        if s.aux_ratio is None or not len(self.aux_examples):
            pool_ = np.concatenate([labelled, self.aux_examples]) if s.aux_ratio is None else labelled
            order = pool_[torch.randperm(len(pool_), generator=g).numpy()]
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        order = labelled[torch.randperm(len(labelled), generator=g).numpy()]
        aux_order = self.aux_examples[torch.randperm(len(self.aux_examples), generator=g).numpy()]
        cursor, batches = 0, []
        for i in range(0, len(order), batch_size):
            part = order[i:i + batch_size]
            want = round(s.aux_ratio * len(part))
            take = []
            while want > 0:
                if cursor == len(aux_order):  # cycle through a fresh order
                    aux_order = self.aux_examples[torch.randperm(len(self.aux_examples), generator=g).numpy()]
                    cursor = 0
                n = min(want, len(aux_order) - cursor)
                take.append(aux_order[cursor:cursor + n])
                cursor, want = cursor + n, want - n
            batches.append(np.concatenate([part, *take]))
        return batches

    def batch(self, positions: np.ndarray) -> Batch:
        """The batch of the given example positions (random crops drawn now)."""
        index = draw(self.feed.examples, self.store, self.index.take(positions), self.generator)
        return _batch(self.feed.examples, self.store, index, self.normalizer, self.labels, self.position)

    def batches(self, batch_size: int, min_size: int = 2) -> Iterator[Batch]:
        """One epoch of batches; batches smaller than ``min_size`` are skipped (batch norm needs 2 rows)."""
        for positions in self.epoch(batch_size):
            if len(positions) >= min_size:
                yield self.batch(positions)


def _batch(spec: ExampleSpec, store: FeatureStore, index: ExampleIndex, normalizer: Normalizer,
           labels: Mapping[str, np.ndarray], position: np.ndarray) -> Batch:
    at = position[index.rows]
    out: Batch = {"x": gather(spec, store, index, normalizer), "utt_index": index.rows}
    for key, values in labels.items():
        out[key] = values[at]
    return out


# ---- evaluation --------------------------------------------------------------------------------------------

class EvalSet:
    """Utterances scored together (a fold's validation or test rows): deterministic examples, pooled per utterance.

    Args:
        feed: The family's feed.
        store: The store holding the rows.
        rows: The utterances, store indices (labelled rows only).
        encoders: Fitted target encoders.
        normalizer: The fold's normalizer.
    """

    def __init__(self, feed: Feed, store: FeatureStore, rows: np.ndarray, encoders: Mapping,
                 normalizer: Normalizer) -> None:
        self.feed, self.store, self.normalizer = feed, store, normalizer
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = encode_labels(encoders, store, self.rows)
        self.position = np.full(store.num_rows, -1, dtype=np.int64)
        self.position[self.rows] = np.arange(len(self.rows))
        self.index = evaluation_index(feed.examples, store, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def meta(self) -> pa.Table:
        """Metadata of the utterances, in order (corpus, speaker, raw ratings, ... for family metrics)."""
        return self.store.meta.take(pa.array(self.rows))

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(self.index), batch_size):
            yield _batch(self.feed.examples, self.store, self.index.take(np.arange(i, min(i + batch_size,
                         len(self.index)))), self.normalizer, self.labels, self.position)

    def pool(self, example_outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Utterance-level outputs: the mean over each utterance's examples (one example: itself)."""
        return {k: pool(self.index.rows, v, len(self.rows), self.position) for k, v in example_outputs.items()}


# ---- device -------------------------------------------------------------------------------------------------

def to_tensors(batch: Batch, device: torch.device, pin: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.pin_memory() if pin else t
    if device.type != "cpu":
        out = {k: v.to(device, non_blocking=pin) for k, v in out.items()}
    return out


def device_stream(batches: Iterator[Batch], device: torch.device, prefetch: int = 2) -> Iterator[dict]:
    """Tensors of ``batches`` on ``device``.

    On a GPU the next batches are built and pinned in a background thread while the GPU trains on the current one,
    and copied with ``non_blocking``; on the CPU they are built inline (a thread would compete for the trial's
    cores).
    """
    if device.type == "cpu":
        for b in batches:
            yield to_tensors(b, device)
        return
    done = object()
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for b in batches:
                q.put({k: torch.from_numpy(np.ascontiguousarray(v)).pin_memory() for k, v in b.items()})
        except BaseException as err:  # re-raised in the consumer
            errors.append(err)
        finally:
            q.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while (item := q.get()) is not done:
        yield {k: v.to(device, non_blocking=True) for k, v in item.items()}
    thread.join()
    if errors:
        raise errors[0]


def corpus_groups(meta: pa.Table) -> dict[str, np.ndarray]:
    """Row positions per corpus of a metadata table (for per-corpus metrics)."""
    corpus = np.asarray(meta.column("corpus").to_pylist(), dtype=object)
    return {str(c): np.flatnonzero(corpus == c) for c in sorted(set(corpus.tolist()))}


def class_names(encoders: Mapping) -> dict[str, list[str]]:
    """Class names of every class or soft target (for checkpoints and reports)."""
    return {t: list(e.classes) for t, e in encoders.items() if getattr(e, "classes", None) is not None}


def labelled_only(store: FeatureStore, rows: Sequence[int]) -> np.ndarray:
    """``rows`` without auxiliary rows (validation and test sets are built from labelled rows only)."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows[~store.is_auxiliary(rows)]

"""Target encoders: shard metadata -> the label arrays a trial trains and scores on (numpy + pyarrow only).

A sweep names its targets (``data.targets``) and how each is encoded (``data.encoders``); :func:`parse_targets`
turns that into :class:`TargetSpec` s and :func:`build_encoders` into one :class:`TargetEncoder` per target. Every
encoder returns ``(values, mask)`` over the rows of a metadata table: float32 ``(n,)`` for regression, int64
``(n,)`` class indices, or float32 ``(n, C)`` distributions; ``mask`` is True where the row has that label, and
unlabelled rows hold 0 (zeros) so that ``loss * mask`` stays finite.

Encoders (``encoder``: sources):

* ``scaled`` (attributes): the corpus scale mapped linearly onto [-1, 1] (the ladder-network paper's CCC targets).
* ``classes`` (emotion, gender, style): class indices; emotion categories are merged (``excited -> happy``) first.
* ``soft5`` (attributes): the 5-point fuzzy label of the multitask DCGAN paper (1705.02394, "Labels").
* ``soft`` (emotion): the raters' vote distribution over the class list.
* ``levels`` (attributes): low/medium/high by the semi-supervised AAE paper's Table 2.
* ``kmeans`` (derived, e.g. ``va_cluster``): k-means clusters of the valence-activation plane (AAE paper, sec. 5).
* ``speakers`` (speaker): the training speakers of a fold (AAE paper's speaker auxiliary task).

``kmeans`` and ``speakers`` are fitted on a fold's training rows only; the others are fixed by the sweep config
and the shard manifests (a class vocabulary or a label scale is not label leakage). ``state_dict`` holds plain
Python values, so it loads from checkpoints with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_io.schema import ATTRIBUTES, EMOTION_VOCAB, GENDERS, STYLES

KINDS = ("regression", "class", "soft")
SOURCES = (*ATTRIBUTES, "emotion", "gender", "speaker", "style")  # metadata columns a target may name
ENCODERS = ("scaled", "classes", "soft5", "soft", "levels", "kmeans", "speakers")
# Sources each encoder accepts; kmeans derives a new target from arousal and valence, so it takes none.
_ALLOWED = {"scaled": ATTRIBUTES, "soft5": ATTRIBUTES, "levels": ATTRIBUTES, "classes": ("emotion", "gender", "style"),
            "soft": ("emotion",), "speakers": ("speaker",), "kmeans": ()}
_OPTIONS = {"scaled": (), "soft5": (), "speakers": (), "classes": ("classes",), "soft": ("classes",),
            "levels": ("edges",), "kmeans": ("k", "seed", "n_init")}
# Values known in advance per class source: a class list naming anything else is a typo that would silently mask
# every row of that class.
_VOCAB = {"emotion": EMOTION_VOCAB, "gender": GENDERS, "style": STYLES}
# AAE paper, Table 2: the inner edges of low [lo, e1], medium (e1, e2], high (e2, hi] on the 1-5 scales.
LEVEL_EDGES = {"iemocap": (2.0, 3.5), "msp_improv": (2.5, 3.5)}
LEVELS = ["low", "medium", "high"]
_TOL = 1e-6  # labels this far outside their scale are float32 rounding, not a wrong scale

LabelScales = Mapping[str, "tuple[float, float] | Sequence[float] | None"]


# ---- specs -------------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_options(encoder: str, options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(_OPTIONS[encoder]))
    if unknown:
        raise ValueError(f"encoder {encoder!r} has no options {unknown}; its options are {list(_OPTIONS[encoder])}")
    if "classes" in options:
        names = options["classes"]
        if isinstance(names, str) or not isinstance(names, Sequence) or len(set(map(str, names))) != len(names) \
                or len(names) < 2:
            raise ValueError(f"option classes must list at least 2 distinct class names, got {names!r}")
    edges_by_corpus = options.get("edges") or {}
    if not isinstance(edges_by_corpus, Mapping):
        raise ValueError(f"option edges must map corpus -> [e1, e2], e.g. {{iemocap: [2, 3.5]}}, got "
                         f"{edges_by_corpus!r}")
    for edge_corpus, edges in edges_by_corpus.items():
        ok = isinstance(edges, Sequence) and not isinstance(edges, str) and len(edges) == 2 \
            and all(isinstance(e, (int, float, np.number)) and np.isfinite(e) for e in edges)
        if not ok or edges[0] >= edges[1]:
            raise ValueError(f"option edges.{edge_corpus} must be two finite numbers e1 < e2 (levels [lo, e1], "
                             f"(e1, e2], (e2, hi]), got {edges!r}")
    for key, low in (("k", 2), ("n_init", 1)):
        if key in options and (not _is_int(options[key]) or options[key] < low):
            raise ValueError(f"option {key} must be an integer >= {low}, got {options[key]!r}")
    if "seed" in options and not _is_int(options["seed"]):
        raise ValueError(f"option seed must be an integer, got {options['seed']!r}")


@dataclass(frozen=True)
class TargetSpec:
    """One target of a sweep and how it is encoded.

    Attributes:
        name: Batch key and metric name part (``valence``, ``emotion``, ``va_cluster``); a metadata column of
            :data:`SOURCES`, or a derived name for an encoder that derives it (``kmeans``).
        encoder: One of :data:`ENCODERS`, allowed for the source.
        options: Encoder options (``classes``, ``edges``, ``k``/``seed``/``n_init``); may be empty.

    Raises:
        ValueError: A name that is not an identifier, an unknown encoder or option, or an encoder the source
            does not allow.
    """

    name: str
    encoder: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options or {}))
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"target name must be an identifier (letters, digits, '_'), got {self.name!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r} for target {self.name!r}; valid encoders are "
                             f"{list(ENCODERS)}")
        if self.name in SOURCES and self.name not in _ALLOWED[self.encoder]:
            valid = [e for e in ENCODERS if self.name in _ALLOWED[e]]
            raise ValueError(f"encoder {self.encoder!r} does not apply to target {self.name!r}; valid encoders for "
                             f"it are {valid}" + (" (kmeans derives a new target: give it a name that is not a "
                                                  "metadata column, e.g. va_cluster)" if self.encoder == "kmeans"
                                                  else ""))
        if self.name not in SOURCES and self.encoder != "kmeans":
            raise ValueError(f"target {self.name!r} is not a metadata column {list(SOURCES)}, so it needs an encoder "
                             f"that derives it, e.g. {{encoder: kmeans, k: 3}}; got encoder {self.encoder!r}")
        _check_options(self.encoder, self.options)


def default_encoder(name: str) -> str:
    """The encoder of a target that ``data.encoders`` does not list: attributes ``scaled``, speaker ``speakers``,
    emotion/gender/style ``classes``.

    Raises:
        ValueError: ``name`` is not a metadata column (a derived target has no default).
    """
    if name in ATTRIBUTES:
        return "scaled"
    if name == "speaker":
        return "speakers"
    if name in SOURCES:
        return "classes"
    raise ValueError(f"target {name!r} is not a metadata column {list(SOURCES)} and has no default encoder; a "
                     f"derived target needs one in data.encoders, e.g. {{{name}: {{encoder: kmeans, k: 3}}}}")


def parse_targets(targets: Sequence[str], encoders: Mapping[str, str | Mapping] | None) -> list[TargetSpec]:
    """The specs of ``data.targets`` with ``data.encoders`` applied.

    Args:
        targets: Target names, e.g. ``["valence", "arousal", "va_cluster"]``.
        encoders: Per target an encoder name (``{valence: soft5}``) or a mapping of ``encoder`` (default: the
            target's default encoder) and options (``{va_cluster: {encoder: kmeans, k: 4}}``).

    Returns:
        One spec per target, in ``targets`` order.

    Raises:
        ValueError: Naming the config field (``data.encoders.<target>`` or ``data.targets``) and what is valid.
    """
    encoders = dict(encoders or {})
    if len(set(targets)) != len(targets):
        raise ValueError(f"data.targets: duplicate targets in {list(targets)}; list each once")
    extra = sorted(set(encoders) - set(targets))
    if extra:
        raise ValueError(f"data.encoders: {extra} are not in data.targets {list(targets)}; add them there or remove")
    specs = []
    for name in targets:
        where = f"data.encoders.{name}" if name in encoders else "data.targets"
        entry = encoders.get(name)
        try:
            if entry is None or isinstance(entry, str):
                specs.append(TargetSpec(name, entry or default_encoder(name), {}))
            elif isinstance(entry, Mapping):
                options = {k: v for k, v in entry.items() if k != "encoder"}
                specs.append(TargetSpec(name, entry.get("encoder") or default_encoder(name), options))
            else:
                raise ValueError(f"must be an encoder name or a mapping {{encoder: ..., option: ...}}, got {entry!r}")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return specs


# ---- column helpers ----------------------------------------------------------------------------------------
def _column(meta: pa.Table, column: str, target: str) -> pa.ChunkedArray:
    if column not in meta.column_names:
        raise ValueError(f"target {target!r} needs the metadata column {column!r}; the table has "
                         f"{meta.column_names}")
    return meta.column(column)


def _strings(meta: pa.Table, column: str, target: str) -> pa.ChunkedArray:
    col = _column(meta, column, target)
    # An all-null column may come typed null; as strings it simply matches no class.
    return col.cast(pa.string())


def _labels(meta: pa.Table, column: str, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values float64 (0 where null), mask, corpus names as objects)`` of a numeric label column."""
    col = _column(meta, column, target)
    mask = pc.is_valid(col).to_numpy(zero_copy_only=False).astype(bool)
    y = pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(y[mask]).all():
        raise ValueError(f"target {target!r}: column {column!r} holds NaN or infinite labels; fix the shards "
                         f"(ingestion should have refused them)")
    corpus = np.asarray(_strings(meta, "corpus", target).to_pylist(), dtype=object)
    return y, mask, corpus


def _check_scales(label_scales: LabelScales | None) -> dict[str, tuple[float, float] | None]:
    out: dict[str, tuple[float, float] | None] = {}
    for corpus, scale in dict(label_scales or {}).items():
        if scale is not None:
            lo, hi = (float(v) for v in scale)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"label_scales[{corpus!r}] must be (low, high) with low < high, got {scale!r}")
            scale = (lo, hi)
        out[str(corpus)] = scale
    return out


def _unit(meta: pa.Table, column: str, scales: Mapping[str, tuple[float, float] | None],
          target: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's label as a fraction of its corpus scale, in [0, 1] (0 where unlabelled), and the mask."""
    y, mask, corpus = _labels(meta, column, target)
    u = np.zeros(len(y))
    for name in sorted(set(corpus[mask].tolist())):
        rows = mask & (corpus == name)
        scale = scales.get(name)
        if scale is None:
            raise ValueError(f"target {target!r} has labels but no label_scale for corpus {name!r}; pass the shard "
                             f"manifests' label_scale per corpus, got label_scales={dict(scales)!r}")
        lo, hi = scale
        if np.any(y[rows] < lo - _TOL) or np.any(y[rows] > hi + _TOL):
            raise ValueError(f"target {target!r} has values {y[rows].min():g}..{y[rows].max():g} in corpus {name!r} "
                             f"outside its label_scale {scale}; the scale does not match the corpus")
        u[rows] = np.clip((y[rows] - lo) / (hi - lo), 0.0, 1.0)
    return u, mask


def _lookup(col: pa.ChunkedArray, table: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Class indices of a string column via ``{value: index}``; values not in the table are masked."""
    idx = pc.index_in(col, value_set=pa.array(list(table), type=pa.string()))
    mask = pc.is_valid(idx).to_numpy(zero_copy_only=False).astype(bool)
    pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    targets = np.asarray(list(table.values()) or [0], dtype=np.int64)
    return np.where(mask, targets[pos], 0).astype(np.int64), mask


# ---- encoders ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Inputs:
    """What :func:`build_encoder` hands every encoder; each takes what it needs."""

    label_scales: dict[str, tuple[float, float] | None]
    classes: list[str] | None
    merge: dict[str, str]
    vocabulary_meta: pa.Table | None


class TargetEncoder:
    """Base of every encoder: ``fit`` on a fold's training rows, then ``encode`` any rows.

    Attributes:
        spec: The target's spec.
        kind: ``"regression"``, ``"class"`` or ``"soft"``.
        classes: Class names of class and soft outputs (None for regression, or before ``fit``).
        fitted: Whether ``encode`` may be called (always True for encoders fixed by the config).
    """

    kind = "regression"
    needs_fit = False

    def __init__(self, spec: TargetSpec, inputs: _Inputs) -> None:
        self.spec = spec
        self.classes: list[str] | None = None
        self.fitted = not self.needs_fit

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def fit(self, train_meta: pa.Table) -> TargetEncoder:
        """Fit on ``train_meta``, a fold's training rows and nothing else (encoders fixed by the config ignore it).

        Returns:
            self.
        """
        return self

    def encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """``(values, mask)`` of every row of ``meta`` (see the module docstring for dtypes and shapes).

        Raises:
            RuntimeError: Called before ``fit`` (or ``load_state_dict``) on an encoder that needs fitting.
            ValueError: Labels that do not fit the encoder (no scale for a corpus, outside the scale, ...).
        """
        if not self.fitted:
            raise RuntimeError(f"target {self.spec.name!r} (encoder {self.spec.encoder!r}): encode() called before "
                               f"fit(); fit on the fold's training rows first, or load_state_dict() a fitted state")
        return self._encode(meta)

    def state_dict(self) -> dict:
        """The encoder's state as plain Python values (checkpoint-safe)."""
        if not self.fitted:
            raise RuntimeError(f"target {self.spec.name!r}: state_dict() called before fit()")
        return {"name": self.spec.name, "encoder": self.spec.encoder, **self._state()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from :meth:`state_dict`; the encoder then encodes as the saved one did, without fitting.

        Raises:
            ValueError: A state of another target or encoder.
        """
        got = (state.get("name"), state.get("encoder"))
        if got != (self.spec.name, self.spec.encoder):
            raise ValueError(f"state is of target {got[0]!r} with encoder {got[1]!r}, this encoder is target "
                             f"{self.spec.name!r} with encoder {self.spec.encoder!r}; load the matching state")
        self._load(state)
        self.fitted = True

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _state(self) -> dict:
        return {}

    def _load(self, state: Mapping) -> None:
        pass


class _ScaleEncoder(TargetEncoder):
    """An encoder of attribute labels that carries the corpus scales in its state."""

    def __init__(self, spec: TargetSpec, inputs: _Inputs) -> None:
        super().__init__(spec, inputs)
        self.label_scales = inputs.label_scales

    def _state(self) -> dict:
        return {"label_scales": {c: None if s is None else list(s) for c, s in self.label_scales.items()}}

    def _load(self, state: Mapping) -> None:
        self.label_scales = _check_scales(state["label_scales"])


class ScaledEncoder(_ScaleEncoder):
    """Attribute -> ``2 * (y - low) / (high - low) - 1`` on its corpus's scale (regression)."""

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        u, mask = _unit(meta, self.spec.name, self.label_scales, self.spec.name)
        return np.where(mask, 2.0 * u - 1.0, 0.0).astype(np.float32), mask


class Soft5Encoder(_ScaleEncoder):
    """Attribute -> the 5-point fuzzy label of the multitask DCGAN paper (1705.02394, "Labels").

    The paper averages the raters' 1-5 ratings and spreads the mean over the two neighbouring points (4.5 ->
    ``[0, 0, 0, .5, .5]``). The schema's ``rater_hist`` holds categorical emotion votes, not per-rater attribute
    ratings, so the consensus (mean) rating of the attribute column is the source; corpora on other scales are
    mapped linearly onto 1..5 first (MSP-Podcast 1-7: 4 -> 3).
    """

    kind = "soft"

    def __init__(self, spec: TargetSpec, inputs: _Inputs) -> None:
        super().__init__(spec, inputs)
        self.classes = ["1", "2", "3", "4", "5"]

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        u, mask = _unit(meta, self.spec.name, self.label_scales, self.spec.name)
        # Rounded so that float32 rounding of e.g. 4.0 gives a one-hot, not 0.9999999 / 1e-7.
        p = np.round(4.0 * u, 9)  # 0..4: the position on the 1..5 scale, minus 1
        low = np.minimum(np.floor(p), 3).astype(np.int64)
        frac = p - low
        out = np.zeros((len(p), 5), dtype=np.float64)
        rows = np.arange(len(p))
        out[rows, low] = 1.0 - frac
        out[rows, low + 1] = frac
        out[~mask] = 0.0
        return out.astype(np.float32), mask


def _class_list(spec: TargetSpec, inputs: _Inputs) -> tuple[list[str], dict[str, int]]:
    """The class list of a ``classes``/``soft`` target and ``{metadata value: class index}`` with merges."""
    given, option = inputs.classes, spec.options.get("classes")
    if given is not None and option is not None and list(map(str, given)) != list(map(str, option)):
        raise ValueError(f"target {spec.name!r} got two class lists, {list(given)} (emotion_classes) and {option} "
                         f"(data.encoders.{spec.name}.classes); give one")
    names = option if option is not None else given
    names = None if names is None else [str(c) for c in names]
    if names is None and spec.name == "emotion":
        raise ValueError("target 'emotion' needs classes['emotion'], e.g. ['neutral', 'happy', 'sad', 'angry'] "
                         "(data_io.schema.EMOTIONS_4, data.emotion_classes); got none")
    if names is None and spec.name == "gender":
        names = list(GENDERS)
    if names is None:
        if inputs.vocabulary_meta is None:
            raise ValueError(f"target {spec.name!r} has no class list: pass vocabulary_meta (every row of the sweep) "
                             f"or set data.encoders.{spec.name}.classes")
        names = sorted(v for v in pc.unique(_strings(inputs.vocabulary_meta, spec.name, spec.name)).to_pylist()
                       if v is not None)
    if len(set(names)) != len(names):
        raise ValueError(f"classes[{spec.name!r}] must not repeat a name, got {names}")
    if len(names) < 2:
        raise ValueError(f"target {spec.name!r} needs at least 2 classes, got {names}; pass classes[{spec.name!r}] "
                         f"or drop the target")
    unknown = sorted(set(names) - set(_VOCAB[spec.name]))
    if unknown:
        raise ValueError(f"classes[{spec.name!r}] names {unknown}, which are not in the schema's vocabulary "
                         f"{list(_VOCAB[spec.name])}")
    if inputs.merge and spec.name != "emotion":
        raise ValueError(f"an emotion merge applies to target 'emotion' only, got one for {spec.name!r}")
    table, merge = {c: i for i, c in enumerate(names)}, inputs.merge
    bad = {k: v for k, v in merge.items() if v not in table}
    if bad:
        raise ValueError(f"emotion merge {bad} maps onto classes not in classes['emotion'] = {names}")
    bad = sorted(set(merge) - set(EMOTION_VOCAB))
    if bad:
        raise ValueError(f"emotion merge renames {bad}, which are not in the schema's vocabulary "
                         f"{list(EMOTION_VOCAB)}; fix data.emotion_merge")
    table.update({k: table[v] for k, v in merge.items()})
    return names, table


class ClassesEncoder(TargetEncoder):
    """Emotion, gender or style -> class index; null or unlisted values are masked (class)."""

    kind = "class"

    def __init__(self, spec: TargetSpec, inputs: _Inputs) -> None:
        super().__init__(spec, inputs)
        self.classes, self.table = _class_list(spec, inputs)

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return _lookup(_strings(meta, self.spec.name, self.spec.name), self.table)

    def _state(self) -> dict:
        return {"classes": list(self.classes), "table": dict(self.table)}

    def _load(self, state: Mapping) -> None:
        self.classes, self.table = list(state["classes"]), {str(k): int(v) for k, v in state["table"].items()}


class SoftEmotionEncoder(ClassesEncoder):
    """Emotion -> the raters' vote distribution (``rater_hist``) over the class list, merged categories added to
    their class; rows with no rater_hist or no vote on a listed class are masked (soft)."""

    kind = "soft"

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        col = _column(meta, "rater_hist", self.spec.name)
        n, v = meta.num_rows, len(EMOTION_VOCAB)
        if pa.types.is_null(col.type):
            return np.zeros((n, len(self.classes)), dtype=np.float32), np.zeros(n, dtype=bool)
        col = col.combine_chunks()
        valid = col.is_valid().to_numpy(zero_copy_only=False).astype(bool)
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        if np.any(lengths[valid] != v):
            raise ValueError(f"target {self.spec.name!r}: rater_hist must have {v} entries (EMOTION_VOCAB order), "
                             f"got lengths {sorted(set(lengths[valid].tolist()))}")
        hist = np.zeros((n, v))
        hist[valid] = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, v)
        if not np.isfinite(hist).all() or (hist < 0).any():
            raise ValueError(f"target {self.spec.name!r}: rater_hist holds negative, NaN or infinite votes; fix "
                             f"the shards")
        project = np.zeros((v, len(self.classes)))  # vote category -> class, merges included
        for category, cls in self.table.items():
            project[EMOTION_VOCAB.index(category), cls] = 1.0
        votes = hist @ project
        total = votes.sum(axis=1)
        mask = valid & (total > 0)
        out = np.zeros_like(votes)
        out[mask] = votes[mask] / total[mask, None]
        return out.astype(np.float32), mask


class LevelsEncoder(TargetEncoder):
    """Attribute -> low/medium/high by corpus edges (AAE paper, Table 2; option ``edges`` adds corpora) (class)."""

    kind = "class"

    def __init__(self, spec: TargetSpec, inputs: _Inputs) -> None:
        super().__init__(spec, inputs)
        self.classes = list(LEVELS)
        edges = {**LEVEL_EDGES, **dict(spec.options.get("edges") or {})}
        self.edges = {str(c): [float(e) for e in v] for c, v in edges.items()}

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        y, mask, corpus = _labels(meta, self.spec.name, self.spec.name)
        out = np.zeros(len(y), dtype=np.int64)
        for name in sorted(set(corpus[mask].tolist())):
            if name not in self.edges:
                raise ValueError(f"target {self.spec.name!r} (encoder levels) has labels of corpus {name!r} but no "
                                 f"level edges for it (known: {sorted(self.edges)}); set data.encoders."
                                 f"{self.spec.name}.edges.{name}: [e1, e2]")
            rows = mask & (corpus == name)
            e1, e2 = self.edges[name]
            out[rows] = (y[rows] > e1).astype(np.int64) + (y[rows] > e2)
        return out, mask

    def _state(self) -> dict:
        return {"edges": {c: list(e) for c, e in self.edges.items()}}

    def _load(self, state: Mapping) -> None:
        self.edges = {str(c): [float(x) for x in e] for c, e in state["edges"].items()}


def _sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``(m, k)`` squared distances, one feature at a time (no ``(m, k, d)`` temporary on 100k rows)."""
    return sum((x[:, j, None] - c[None, :, j]) ** 2 for j in range(x.shape[1]))


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int, max_iter: int = 300) -> np.ndarray:
    """``(k, d)`` centroids: best of ``n_init`` k-means++ starts by inertia, each refined by Lloyd iterations."""
    # scikit-learn's default stop: squared centroid movement below 1e-4 of the mean feature variance.
    tol = 1e-4 * float(x.var(axis=0).mean())
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        c = x[[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++: the next centre is drawn proportionally to its squared distance
            d2 = _sqdist(x, c).min(axis=1)
            c = np.vstack([c, x[rng.choice(len(x), p=d2 / d2.sum())]])
        for _ in range(max_iter):
            d2 = _sqdist(x, c)
            assign = d2.argmin(axis=1)
            counts = np.bincount(assign, minlength=k)
            new = np.stack([np.bincount(assign, weights=x[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
            new /= np.maximum(counts, 1)[:, None]
            if not counts.all():  # an emptied cluster restarts at the worst-fitted point rather than vanishing
                new[counts == 0] = x[d2.min(axis=1).argmax()]
            shift, c = ((new - c) ** 2).sum(), new
            if shift <= tol:
                break
        inertia = _sqdist(x, c).min(axis=1).sum()
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return best


class KMeansEncoder(_ScaleEncoder):
    """Derived target: the nearest of k centroids in the (arousal, valence) plane (AAE paper, sec. 5, Fig. 2).

    Centroids are fitted on the training rows with both labels, each scaled to [-1, 1] on its corpus's scale so
    that corpora on different scales combine, and sorted by arousal then valence so class indices are stable.
    """

    kind = "class"
    needs_fit = True

    def __init__(self, spec: TargetSpec, inputs: _Inputs) -> None:
        super().__init__(spec, inputs)
        self.k = int(spec.options.get("k", 3))
        self.classes = [f"c{i}" for i in range(self.k)]  # known before fit, so a model head can be sized
        self.centroids: np.ndarray | None = None

    def _points(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        a, a_mask = _unit(meta, "arousal", self.label_scales, self.spec.name)
        v, v_mask = _unit(meta, "valence", self.label_scales, self.spec.name)
        return np.stack([2 * a - 1, 2 * v - 1], axis=1), a_mask & v_mask

    def fit(self, train_meta: pa.Table) -> KMeansEncoder:
        x, mask = self._points(train_meta)
        x = x[mask]
        if len(np.unique(x, axis=0)) < self.k:
            raise ValueError(f"target {self.spec.name!r}: k-means with k={self.k} needs at least {self.k} distinct "
                             f"training rows with both arousal and valence, got {len(x)} rows "
                             f"({len(np.unique(x, axis=0))} distinct); lower k or check the fold")
        rng = np.random.default_rng(int(self.spec.options.get("seed", 0)))
        c = _kmeans(x, self.k, rng, int(self.spec.options.get("n_init", 10)))
        self.centroids, self.fitted = c[np.lexsort((c[:, 1], c[:, 0]))], True
        return self

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        x, mask = self._points(meta)
        nearest = _sqdist(x, self.centroids).argmin(axis=1)
        return np.where(mask, nearest, 0).astype(np.int64), mask

    def _state(self) -> dict:
        return {**super()._state(), "centroids": self.centroids.tolist()}

    def _load(self, state: Mapping) -> None:
        super()._load(state)
        self.centroids = np.asarray(state["centroids"], dtype=np.float64).reshape(-1, 2)
        self.classes = [f"c{i}" for i in range(len(self.centroids))]


class SpeakersEncoder(TargetEncoder):
    """Speaker -> index among the training speakers (``corpus/speaker`` over several corpora); unseen speakers,
    e.g. the held-out ones of a speaker-independent protocol, are masked (class)."""

    kind = "class"
    needs_fit = True

    def __init__(self, spec: TargetSpec, inputs: _Inputs) -> None:
        super().__init__(spec, inputs)
        self.by_corpus = False

    def _keys(self, meta: pa.Table) -> pa.ChunkedArray:
        speaker = _strings(meta, "speaker", self.spec.name)
        if not self.by_corpus:
            return speaker
        return pc.binary_join_element_wise(_strings(meta, "corpus", self.spec.name), speaker, "/")

    def fit(self, train_meta: pa.Table) -> SpeakersEncoder:
        corpora = [c for c in pc.unique(_strings(train_meta, "corpus", self.spec.name)).to_pylist() if c is not None]
        self.by_corpus = len(corpora) > 1  # speaker ids are only unique within a corpus
        names = sorted(s for s in pc.unique(self._keys(train_meta)).to_pylist() if s is not None)
        if len(names) < 2:
            raise ValueError(f"target {self.spec.name!r}: the training rows hold {len(names)} speaker(s) {names}; "
                             f"a speaker target needs at least 2, so drop it or use another protocol")
        self.classes, self.fitted = names, True
        return self

    def _encode(self, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return _lookup(self._keys(meta), {s: i for i, s in enumerate(self.classes)})

    def _state(self) -> dict:
        return {"classes": list(self.classes), "by_corpus": self.by_corpus}

    def _load(self, state: Mapping) -> None:
        self.classes, self.by_corpus = [str(s) for s in state["classes"]], bool(state["by_corpus"])


_ENCODER_CLASSES: dict[str, type[TargetEncoder]] = {
    "scaled": ScaledEncoder, "classes": ClassesEncoder, "soft5": Soft5Encoder, "soft": SoftEmotionEncoder,
    "levels": LevelsEncoder, "kmeans": KMeansEncoder, "speakers": SpeakersEncoder,
}


def build_encoder(spec: TargetSpec, *, label_scales: LabelScales | None, classes: Sequence[str] | None = None,
                  merge: Mapping[str, str] | None = None, vocabulary_meta: pa.Table | None = None) -> TargetEncoder:
    """An unfitted encoder of ``spec``.

    Args:
        spec: The target's spec.
        label_scales: ``{corpus: (low, high) or None}`` from the shard manifests.
        classes: The explicit class list of a ``classes``/``soft`` target (required for emotion).
        merge: Emotion renames applied before class lookup, e.g. ``{"excited": "happy"}`` (emotion only).
        vocabulary_meta: Metadata of every row of the sweep, labelled and auxiliary; the default style classes.

    Raises:
        ValueError: A bad label scale or class list (see the encoders).
    """
    inputs = _Inputs(_check_scales(label_scales), None if classes is None else list(classes), dict(merge or {}),
                     vocabulary_meta)
    return _ENCODER_CLASSES[spec.encoder](spec, inputs)


def build_encoders(specs: Sequence[TargetSpec], *, label_scales: LabelScales | None,
                   emotion_classes: Sequence[str] | None = None, emotion_merge: Mapping[str, str] | None = None,
                   vocabulary_meta: pa.Table | None = None) -> dict[str, TargetEncoder]:
    """``{target name: unfitted encoder}`` for a sweep's specs (``emotion_*`` go to the emotion target only)."""
    out: dict[str, TargetEncoder] = {}
    for spec in specs:
        if spec.name in out:
            raise ValueError(f"target {spec.name!r} is listed twice; list each target once")
        emotion = spec.name == "emotion"
        out[spec.name] = build_encoder(spec, label_scales=label_scales, classes=emotion_classes if emotion else None,
                                       merge=emotion_merge if emotion else None, vocabulary_meta=vocabulary_meta)
    return out

"""Fold builders for the evaluation protocols (DESIGN.md: Protocols; Contracts: Test lockbox).

A builder reads shard metadata (a ``pyarrow.Table`` as returned by ``ShardSet.metadata()``, with at least
the columns ``utt_id``, ``corpus``, ``speaker``, ``session`` and ``split``) and returns :class:`Fold` objects.
Several corpora may share one table; speakers and sessions are keyed by ``(corpus, name)`` so equal names in
two corpora never merge.

The test lockbox: a :class:`Fold` keeps its test ids in a :class:`TestLockbox`, which refuses to be pickled or
copied, so Ray cannot ship it to a worker. Trainables receive ``fold.for_search()`` -- a :class:`SearchFold`
with train and validation ids only. The driver calls ``fold.test.open(purpose)`` once, after selection, and
every opening is recorded in ``fold.test.accesses`` for the MLflow record.

| protocol        | folds                                                                              |
|-----------------|------------------------------------------------------------------------------------|
| ``predefined``  | one fold from the ``split`` column (MSP-Podcast train / validation / test)          |
| ``loso``        | one per session: one of its speakers validates, the other tests (IEMOCAP, MSP-IMPROV) |
| ``speaker_kfold`` | k speaker groups: group i tests, group i+1 validates, the rest train (AAE paper)   |
| ``cross_corpus`` | train on corpus A; corpus B split by speaker into validation / test (AAE paper)     |
| ``random_kfold`` | k utterance groups, optionally stratified; as speaker_kfold (selective-MTL call centre) |

:func:`build_folds` applies one protocol to the whole table. :func:`build_corpus_folds` gives each corpus its own
protocol, built on that corpus's rows only, and combines fold i of every corpus into fold i (selective-MTL paper:
IEMOCAP by session and the call-centre corpus in random folds, 5 folds each), so each corpus's test utterances
stay where its own protocol put them.
"""

from __future__ import annotations

import inspect
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType

import pyarrow as pa

__all__ = [
    "PROTOCOLS",
    "Fold",
    "LockboxError",
    "SearchFold",
    "TestLockbox",
    "build_corpus_folds",
    "build_folds",
    "fold_summary",
]

_PARTS = ("train", "val", "test")
_LOCKBOX_REFUSAL = (
    "test ids cannot be shipped to a trial: a TestLockbox (and so a Fold) refuses to be pickled or copied; "
    "pass fold.for_search() to trainables -- the driver opens the lockbox once, after selection"
)


class LockboxError(RuntimeError):
    """Raised when test ids would leave the driver (pickling, copying) or a lockbox is misused."""


def _check_ids(ids: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(ids, str):
        # A bare string would silently become a tuple of characters.
        raise TypeError(f"{what} must be a sequence of utt_id strings, got the single string {ids!r}")
    out = tuple(ids)
    bad = [i for i in out if not isinstance(i, str) or not i]
    if bad:
        raise TypeError(
            f"{what} must hold non-empty utt_id strings, got {len(bad)} others (first: {bad[0]!r})"
        )
    if len(set(out)) != len(out):
        raise ValueError(
            f"{what} holds {len(out) - len(set(out))} duplicate utt_ids; each utterance must appear once"
        )
    return out


class TestLockbox:
    """The test ids of one fold, readable only through :meth:`open`, which records every access.

    The lockbox refuses pickling, copying and deep-copying with :class:`LockboxError`, so neither
    ``pickle``, ``cloudpickle`` nor Ray's object store can send it to a trial. Its ``repr`` shows the count,
    never the ids.

    Args:
        ids: The fold's test utterance ids.
    """

    __slots__ = ("__ids", "__accesses")
    __test__ = False  # the name starts with "Test"; stop pytest collecting it as a test class

    def __init__(self, ids: Iterable[str]) -> None:
        self.__ids = _check_ids(ids, "TestLockbox ids")
        self.__accesses: list[tuple[str, datetime]] = []

    def open(self, purpose: str) -> tuple[str, ...]:
        """Return the test ids and record why and when they were read.

        Args:
            purpose: Why the ids are read (e.g. ``"score selected trial 17"``); logged to MLflow.

        Returns:
            The test utterance ids.

        Raises:
            LockboxError: If ``purpose`` is empty.
        """
        if not isinstance(purpose, str) or not purpose.strip():
            raise LockboxError(
                f"open() needs a non-empty purpose string for the access record, got {purpose!r}"
            )
        self.__accesses.append((purpose, datetime.now(timezone.utc)))
        return self.__ids

    @property
    def accesses(self) -> tuple[tuple[str, datetime], ...]:
        """Every :meth:`open` so far, as ``(purpose, UTC time)``, oldest first."""
        return tuple(self.__accesses)

    @classmethod
    def _union(cls, boxes: Iterable[TestLockbox]) -> TestLockbox:
        # Combining the folds of several corpora moves ids from lockbox to lockbox without an open(): nothing is
        # read, so nothing is recorded, and the ids never exist outside a lockbox.
        return cls(sorted(i for box in boxes for i in box.__ids))

    def _overlap(self, ids: Iterable[str]) -> int:
        # Sanity checks in this module count shared ids without opening (and so without recording an access).
        return len(set(self.__ids).intersection(ids))

    def __len__(self) -> int:
        return len(self.__ids)

    def __repr__(self) -> str:
        return f"TestLockbox(n={len(self.__ids)}, accesses={len(self.__accesses)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TestLockbox):
            return NotImplemented
        return self.__ids == other.__ids

    def __hash__(self) -> int:
        return hash(self.__ids)

    # Every route out of the driver process goes through one of these: pickle and cloudpickle call
    # __reduce_ex__ (then __reduce__/__getstate__), copy.copy and copy.deepcopy call __copy__/__deepcopy__.
    def __reduce_ex__(self, protocol: object) -> object:
        raise LockboxError(_LOCKBOX_REFUSAL)

    def __reduce__(self) -> object:
        raise LockboxError(_LOCKBOX_REFUSAL)

    def __getstate__(self) -> object:
        raise LockboxError(_LOCKBOX_REFUSAL)

    def __copy__(self) -> TestLockbox:
        raise LockboxError(_LOCKBOX_REFUSAL)

    def __deepcopy__(self, memo: dict) -> TestLockbox:
        raise LockboxError(_LOCKBOX_REFUSAL)


def _disjoint_nonempty(name: str, parts: Mapping[str, tuple[str, ...]], test: TestLockbox | None) -> None:
    for part, ids in parts.items():
        if not ids:
            raise ValueError(f"fold {name!r}: the {part} part is empty; every part needs an utterance")
    if test is not None and len(test) == 0:
        raise ValueError(f"fold {name!r}: the test part is empty; every part needs an utterance")
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = len(set(parts[a]).intersection(parts[b]))
            if shared:
                raise ValueError(
                    f"fold {name!r}: {a} and {b} share {shared} utt_ids; the parts must be disjoint "
                    "(are utt_ids unique across corpora?)"
                )
        if test is not None:
            shared = test._overlap(parts[a])
            if shared:
                raise ValueError(
                    f"fold {name!r}: {a} and test share {shared} utt_ids; the parts must be disjoint "
                    "(are utt_ids unique across corpora?)"
                )


@dataclass(frozen=True, repr=False)
class SearchFold:
    """What a trainable receives during search: train and validation ids, and no way to reach test ids.

    Attributes:
        name: Fold name (e.g. ``"loso-iemocap-Ses01"``).
        train_ids: Sorted training utterance ids.
        val_ids: Sorted validation utterance ids.
    """

    name: str
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_ids", _check_ids(self.train_ids, f"fold {self.name!r} train_ids"))
        object.__setattr__(self, "val_ids", _check_ids(self.val_ids, f"fold {self.name!r} val_ids"))
        _disjoint_nonempty(self.name, {"train": self.train_ids, "val": self.val_ids}, None)

    def __repr__(self) -> str:
        return f"SearchFold(name={self.name!r}, n_train={len(self.train_ids)}, n_val={len(self.val_ids)})"


@dataclass(frozen=True, repr=False)
class Fold:
    """One fold of a protocol, as the driver holds it; its parts are checked non-empty and pairwise disjoint.

    Attributes:
        name: Fold name, unique within its protocol's folds.
        train_ids: Sorted training utterance ids.
        val_ids: Sorted validation utterance ids.
        test: The test ids, behind a :class:`TestLockbox`.
        speakers: Speaker labels per part (``"train"``, ``"val"``, ``"test"``), for logging;
            ``corpus/speaker`` when the table holds several corpora. Not part of equality.
        counts_by_corpus: Utterances per part and corpus (``{"test": {"iemocap": 6, ...}, ...}``), so logs can
            show each corpus's test size without opening the lockbox; each part's counts must sum to its size.
            Empty for a fold built by hand. Not part of equality.
    """

    name: str
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test: TestLockbox
    speakers: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    counts_by_corpus: Mapping[str, Mapping[str, int]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.test, TestLockbox):
            raise TypeError(f"fold {self.name!r}: test must be a TestLockbox, got {type(self.test).__name__}")
        object.__setattr__(self, "train_ids", _check_ids(self.train_ids, f"fold {self.name!r} train_ids"))
        object.__setattr__(self, "val_ids", _check_ids(self.val_ids, f"fold {self.name!r} val_ids"))
        speakers = MappingProxyType({k: tuple(v) for k, v in self.speakers.items()})
        object.__setattr__(self, "speakers", speakers)
        _disjoint_nonempty(self.name, {"train": self.train_ids, "val": self.val_ids}, self.test)
        object.__setattr__(self, "counts_by_corpus", self._checked_counts())

    def _checked_counts(self) -> Mapping[str, Mapping[str, int]]:
        unknown = sorted(set(self.counts_by_corpus) - set(_PARTS))
        if unknown:
            raise ValueError(
                f"fold {self.name!r}: counts_by_corpus has unknown part(s) {unknown}; parts: {', '.join(_PARTS)}"
            )
        sizes = {"train": len(self.train_ids), "val": len(self.val_ids), "test": len(self.test)}
        out = {}
        for part, by_corpus in self.counts_by_corpus.items():
            total = sum(by_corpus.values())
            if total != sizes[part]:
                # Per-corpus counts stand in for the test ids in logs, so they must describe the fold exactly.
                raise ValueError(
                    f"fold {self.name!r}: counts_by_corpus[{part!r}] sums to {total}, but the {part} part holds "
                    f"{sizes[part]} utterances; count every utterance of the part once"
                )
            out[part] = MappingProxyType(dict(sorted(by_corpus.items())))
        return MappingProxyType(out)

    def for_search(self) -> SearchFold:
        """The fold without its test ids: the only form of a fold that may be passed to a trainable."""
        return SearchFold(self.name, self.train_ids, self.val_ids)

    def __repr__(self) -> str:
        return (
            f"Fold(name={self.name!r}, n_train={len(self.train_ids)}, n_val={len(self.val_ids)}, "
            f"test={self.test!r})"
        )


# --- metadata access --------------------------------------------------------------------------------------


class _Meta:
    """The metadata columns a builder needs, as Python lists, with speakers and sessions keyed by corpus."""

    def __init__(
        self, table: pa.Table, protocol: str, needs: Sequence[str], nullable: Sequence[str] = ()
    ) -> None:
        if not isinstance(table, pa.Table):
            raise TypeError(f"meta must be a pyarrow.Table (ShardSet.metadata()), got {type(table).__name__}")
        missing = [c for c in ("utt_id", "corpus", *needs) if c not in table.column_names]
        if missing:
            raise ValueError(
                f"protocol {protocol!r} needs metadata columns {missing}, but the table has "
                f"{table.column_names}; pass ShardSet.metadata() or add the columns"
            )
        if table.num_rows == 0:
            raise ValueError(
                f"protocol {protocol!r}: the metadata table has no rows (all dropped by `require`?)"
            )
        self.protocol = protocol
        self.utt_id = self._strings(table, "utt_id", nullable=False)
        self.corpus = self._strings(table, "corpus", nullable=False)
        dupes = len(self.utt_id) - len(set(self.utt_id))
        if dupes:
            raise ValueError(
                f"utt_id must be unique across the metadata table, got {dupes} repeated ids; with several "
                "corpora, give each corpus distinct utt_ids (e.g. prefix them with the corpus name)"
            )
        self.columns = {c: self._strings(table, c, nullable=c in nullable) for c in needs}
        self.several_corpora = len(set(self.corpus)) > 1

    def _strings(self, table: pa.Table, name: str, nullable: bool) -> list:
        values = [None if v is None else str(v) for v in table.column(name).to_pylist()]
        nulls = sum(v is None or v == "" for v in values)
        if nulls and not nullable:
            raise ValueError(
                f"protocol {self.protocol!r} needs {name!r} on every row, but {nulls} of {len(values)} rows "
                f"have none; drop those rows or use another protocol (valid: {', '.join(sorted(PROTOCOLS))})"
            )
        return values

    def corpora(self) -> list[str]:
        return sorted(set(self.corpus))

    def speaker_key(self, row: int) -> tuple[str, str]:
        return self.corpus[row], self.columns["speaker"][row]

    def label(self, key: tuple[str, str]) -> str:
        return f"{key[0]}/{key[1]}" if self.several_corpora else key[1]

    def rows_by_speaker(self, rows: Iterable[int] | None = None) -> dict[tuple[str, str], list[int]]:
        out: dict[tuple[str, str], list[int]] = defaultdict(list)
        for r in range(len(self.utt_id)) if rows is None else rows:
            out[self.speaker_key(r)].append(r)
        return out

    def fold(self, name: str, train: Iterable[int], val: Iterable[int], test: Iterable[int]) -> Fold:
        """A Fold from row indices: ids sorted, speaker labels per part recorded when speakers are known."""
        parts = {"train": list(train), "val": list(val), "test": list(test)}
        ids = {p: tuple(sorted(self.utt_id[r] for r in rows)) for p, rows in parts.items()}
        counts = {p: dict(Counter(self.corpus[r] for r in rows)) for p, rows in parts.items()}
        speakers = {}
        if "speaker" in self.columns:
            known = self.columns["speaker"]
            speakers = {
                p: tuple(sorted({self.label(self.speaker_key(r)) for r in rows if known[r]}))
                for p, rows in parts.items()
            }
        return Fold(
            name, ids["train"], ids["val"], TestLockbox(ids["test"]), speakers=speakers, counts_by_corpus=counts
        )


def _split_speakers(speakers: Sequence, val_fraction: float, seed: int, where: str) -> tuple[set, set]:
    """Shuffle speakers with ``seed`` and cut off ``val_fraction`` of them (at least one on each side)."""
    if len(speakers) < 2:
        raise ValueError(
            f"{where} has {len(speakers)} speaker(s); splitting it into validation and test needs >= 2"
        )
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    n_val = min(max(round(val_fraction * len(order)), 1), len(order) - 1)
    return set(order[:n_val]), set(order[n_val:])


# --- the protocols ---------------------------------------------------------------------------------------


def predefined(
    meta: pa.Table,
    *,
    train_split: str = "train",
    val_split: str = "validation",
    test_split: str = "test",
    seed: int = 0,
) -> list[Fold]:
    """One fold from the corpus's own partitions (MSP-Podcast); rows of other splits (``test2``) are left out.

    Args:
        meta: Shard metadata with a ``split`` column.
        train_split: Split value of the training rows.
        val_split: Split value of the validation rows.
        test_split: Split value of the test rows.
        seed: Unused (the partitions are fixed); accepted so every protocol takes a seed.

    Returns:
        One fold named ``"predefined"``.

    Raises:
        ValueError: If a split has no rows, or two split names are equal.
    """
    names = {"train_split": train_split, "val_split": val_split, "test_split": test_split}
    if len(set(names.values())) != 3:
        raise ValueError(f"predefined: train_split, val_split and test_split must differ, got {names}")
    # Speakers are only logged here (the corpus made the partitions), so they may be missing.
    has_speaker = isinstance(meta, pa.Table) and "speaker" in meta.column_names
    needs = ["split", "speaker"] if has_speaker else ["split"]
    m = _Meta(meta, "predefined", needs, nullable=("split", "speaker"))
    rows: dict[str, list[int]] = defaultdict(list)
    for r, split in enumerate(m.columns["split"]):
        rows[split].append(r)
    for option, split in names.items():
        if not rows.get(split):
            present = sorted(s for s in rows if s is not None)
            raise ValueError(
                f"predefined: no rows have split == {split!r} ({option}); splits present: "
                f"{present or 'none'} ({len(rows.get(None, []))} rows without a split). Set {option} to the "
                "corpus's name for it, or use protocol 'speaker_kfold' or 'loso' for a corpus without "
                "predefined partitions"
            )
    return [m.fold("predefined", rows[train_split], rows[val_split], rows[test_split])]


def loso(meta: pa.Table, *, val_speaker: str = "first", seed: int = 0) -> list[Fold]:
    """Leave one session out (IEMOCAP, MSP-IMPROV): per session, one speaker validates and the other tests.

    All utterances of the held-out speakers (from any session) go to validation or test, so no fold trains on
    a speaker it evaluates. A session with more than two speakers is cut into two halves of its sorted
    speakers.

    Args:
        meta: Shard metadata with ``speaker`` and ``session`` columns.
        val_speaker: ``"first"`` (the sorted-first speaker, or first half, validates), ``"second"``, or
            ``"both"`` (two folds per session, with the roles swapped).
        seed: Unused (the folds are fixed by the sessions); accepted so every protocol takes a seed.

    Returns:
        One fold per session (two with ``"both"``), named ``loso-<corpus>-<session>`` (suffix ``-1``/``-2``).

    Raises:
        ValueError: If ``val_speaker`` is unknown, a session has one speaker, or rows lack a session.
    """
    choices = ("first", "second", "both")
    if val_speaker not in choices:
        raise ValueError(f"loso: val_speaker must be one of {choices}, got {val_speaker!r}")
    m = _Meta(meta, "loso", ["speaker", "session"])
    by_speaker = m.rows_by_speaker()
    session_speakers: dict[tuple[str, str], set] = defaultdict(set)
    for r, session in enumerate(m.columns["session"]):
        session_speakers[m.corpus[r], session].add(m.speaker_key(r))

    folds = []
    for corpus, session in sorted(session_speakers):
        speakers = sorted(session_speakers[corpus, session])
        if len(speakers) < 2:
            raise ValueError(
                f"loso: session {session!r} of corpus {corpus!r} has one speaker ({speakers[0][1]!r}); "
                "leaving it out needs one speaker to validate and another to test. Use protocol "
                "'speaker_kfold' instead"
            )
        half = len(speakers) // 2
        first, second = speakers[:half], speakers[half:]
        roles = {"first": [(first, second, "")], "second": [(second, first, "")],
                 "both": [(first, second, "-1"), (second, first, "-2")]}[val_speaker]
        for val_spk, test_spk, suffix in roles:
            held = set(val_spk) | set(test_spk)
            train = [r for key, rows in by_speaker.items() if key not in held for r in rows]
            val = [r for key in val_spk for r in by_speaker[key]]
            test = [r for key in test_spk for r in by_speaker[key]]
            folds.append(m.fold(f"loso-{corpus}-{session}{suffix}", train, val, test))
    return folds


def speaker_kfold(meta: pa.Table, *, k: int = 5, seed: int = 0) -> list[Fold]:
    """k speaker-independent folds (AAE paper): speakers are shuffled with ``seed`` and dealt into k groups.

    Fold i tests group i, validates group (i + 1) % k and trains on the others: every speaker is tested once.

    Args:
        meta: Shard metadata with a ``speaker`` column.
        k: Number of folds (>= 3: one group tests, one validates, at least one trains).
        seed: Seed of the speaker shuffle.

    Returns:
        k folds named ``speaker_kfold-<i>``.

    Raises:
        ValueError: If ``k`` < 3 or exceeds the number of speakers.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 3:
        raise ValueError(f"speaker_kfold: k >= 3 must hold (test, validation and train groups), got {k!r}")
    m = _Meta(meta, "speaker_kfold", ["speaker"])
    by_speaker = m.rows_by_speaker()
    if k > len(by_speaker):
        raise ValueError(
            f"speaker_kfold: k <= number of speakers must hold, got k={k} with {len(by_speaker)} speakers; "
            "lower k"
        )
    order = sorted(by_speaker)
    random.Random(seed).shuffle(order)
    groups = [order[i::k] for i in range(k)]  # dealt round-robin, so group sizes differ by at most one
    folds = []
    for i in range(k):
        j = (i + 1) % k
        train = [r for g in range(k) if g not in (i, j) for key in groups[g] for r in by_speaker[key]]
        val = [r for key in groups[j] for r in by_speaker[key]]
        test = [r for key in groups[i] for r in by_speaker[key]]
        folds.append(m.fold(f"speaker_kfold-{i}", train, val, test))
    return folds


def cross_corpus(
    meta: pa.Table,
    *,
    train_corpus: str | None = None,
    target_corpus: str | None = None,
    val_fraction: float = 0.3,
    seed: int = 0,
) -> list[Fold]:
    """Train on one corpus, evaluate on another (AAE paper); the target splits by speaker into val / test.

    Rows of any third corpus in the table are left out.

    Args:
        meta: Shard metadata holding both corpora, with a ``speaker`` column.
        train_corpus: Corpus whose rows all train.
        target_corpus: Corpus split by speaker into validation and test.
        val_fraction: Share of the target's speakers that validate (rounded, at least one speaker each side).
        seed: Seed of the speaker split.

    Returns:
        One fold named ``cross_corpus-<train_corpus>-to-<target_corpus>``.

    Raises:
        ValueError: If a corpus is missing from the table, both are the same, or ``val_fraction`` is not in
            (0, 1).
    """
    m = _Meta(meta, "cross_corpus", ["speaker"])
    present = m.corpora()
    for option, corpus in (("train_corpus", train_corpus), ("target_corpus", target_corpus)):
        if corpus is None:
            raise ValueError(f"cross_corpus needs the option {option}; corpora present: {present}")
        if corpus not in present:
            raise ValueError(
                f"cross_corpus: {option}={corpus!r} is not in the metadata table; corpora present: {present}"
            )
    if train_corpus == target_corpus:
        raise ValueError(
            f"cross_corpus: train_corpus and target_corpus must differ, both are {train_corpus!r}"
        )
    is_number = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
    if not is_number or not 0 < val_fraction < 1:
        raise ValueError(f"cross_corpus: 0 < val_fraction < 1 must hold, got {val_fraction!r}")
    train = [r for r, c in enumerate(m.corpus) if c == train_corpus]
    target = m.rows_by_speaker(r for r, c in enumerate(m.corpus) if c == target_corpus)
    where = f"cross_corpus: corpus {target_corpus!r}"
    val_spk, test_spk = _split_speakers(list(target), val_fraction, seed, where)
    val = [r for key in val_spk for r in target[key]]
    test = [r for key in test_spk for r in target[key]]
    return [m.fold(f"cross_corpus-{train_corpus}-to-{target_corpus}", train, val, test)]


def random_kfold(meta: pa.Table, *, k: int = 5, stratify: str | None = None, seed: int = 0) -> list[Fold]:
    """k folds of utterances, not speakers (selective-MTL paper: the call-centre corpus has no speaker labels).

    Utterances are shuffled with ``seed`` and dealt round-robin into k groups; fold i tests group i, validates
    group (i + 1) % k and trains on the others, so every utterance is tested once. A speaker may fall in several
    parts: use it for a corpus without speaker labels, or with so many speakers that the overlap hardly matters
    (the paper's corpus has about 750); otherwise prefer ``speaker_kfold`` or ``loso``.

    Args:
        meta: Shard metadata; a ``speaker`` column is optional (only logged).
        k: Number of folds (>= 3: one group tests, one validates, at least one trains).
        stratify: Metadata column (e.g. ``"emotion"``) whose values are dealt one after another, so each value's
            utterances spread evenly over the groups (each group within one of an even share); null values form
            their own stratum. None deals all utterances together.
        seed: Seed of the utterance shuffle.

    Returns:
        k folds named ``random_kfold-<corpus>-<i>`` when the table holds one corpus, ``random_kfold-<i>`` when
        the groups mix several.

    Raises:
        ValueError: If ``k`` < 3 or exceeds the number of utterances, or ``stratify`` names no column.
        TypeError: If ``stratify`` is neither None nor a column name.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 3:
        raise ValueError(f"random_kfold: k >= 3 must hold (test, validation and train groups), got {k!r}")
    if stratify is not None and (not isinstance(stratify, str) or not stratify):
        raise TypeError(f"random_kfold: stratify must be a metadata column name or None, got {stratify!r}")
    # Speakers are only logged here (the call-centre corpus has none), so they may be missing.
    has_speaker = isinstance(meta, pa.Table) and "speaker" in meta.column_names
    needs = list(dict.fromkeys([*(["speaker"] if has_speaker else []), *([stratify] if stratify else [])]))
    m = _Meta(meta, "random_kfold", needs, nullable=needs)
    if k > len(m.utt_id):
        raise ValueError(
            f"random_kfold: k <= number of utterances must hold, got k={k} with {len(m.utt_id)} utterances; "
            "lower k"
        )
    order = sorted(range(len(m.utt_id)), key=m.utt_id.__getitem__)  # by id, so the table's row order is moot
    random.Random(seed).shuffle(order)
    if stratify is not None:
        values = m.columns[stratify]
        # A stable sort by stratum keeps the shuffle within each stratum. Dealing the strata one after another
        # then gives every group floor or ceil of each stratum's share, and group sizes still differ by <= 1.
        order.sort(key=lambda r: (values[r] is None, values[r] or ""))
    groups = [order[i::k] for i in range(k)]
    corpora = m.corpora()
    prefix = f"random_kfold-{corpora[0]}" if len(corpora) == 1 else "random_kfold"
    folds = []
    for i in range(k):
        j = (i + 1) % k
        train = [r for g in range(k) if g not in (i, j) for r in groups[g]]
        folds.append(m.fold(f"{prefix}-{i}", train, groups[j], groups[i]))
    return folds


PROTOCOLS: dict[str, Callable[..., list[Fold]]] = {
    "predefined": predefined,
    "loso": loso,
    "speaker_kfold": speaker_kfold,
    "cross_corpus": cross_corpus,
    "random_kfold": random_kfold,
}


def _options(builder: Callable) -> list[str]:
    return [p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]


def build_folds(
    protocol: str, meta: pa.Table, *, require: str | None = None, **options: object
) -> list[Fold]:
    """Build a protocol's folds from shard metadata. The same table, options and seed give the same folds.

    Args:
        protocol: A key of :data:`PROTOCOLS`.
        meta: Shard metadata (``ShardSet.metadata()``); may hold several corpora.
        require: Column that must be non-null (e.g. ``"emotion"``, ``"arousal"``); rows where it is null are
            dropped before building, so unlabelled rows never reach any part. None keeps every row.
        **options: The protocol's options (see each builder), plus ``seed`` for every protocol.

    Returns:
        The folds, in a fixed order, with sorted ids.

    Raises:
        ValueError: If the protocol is unknown, ``require`` names no column, or the builder rejects the data.
        TypeError: If an option is not one the protocol takes.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(sorted(PROTOCOLS))}")
    builder = PROTOCOLS[protocol]
    valid = _options(builder)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"protocol {protocol!r} got unknown option(s) {unknown}; valid options: "
            f"{', '.join(valid + ['require'])}"
        )
    return builder(_require(meta, require), **options)


def _require(meta: pa.Table, require: str | None) -> pa.Table:
    """``meta`` without the rows where the column ``require`` is null (all rows when ``require`` is None)."""
    if require is None:
        return meta
    if not isinstance(meta, pa.Table) or require not in meta.column_names:
        columns = meta.column_names if isinstance(meta, pa.Table) else []
        raise ValueError(f"require={require!r} is not a metadata column; columns: {columns}")
    return meta.filter(meta.column(require).is_valid())


def build_corpus_folds(
    meta: pa.Table,
    protocols: Mapping[str, tuple[str, Mapping[str, object]]],
    *,
    require: str | None = None,
) -> list[Fold]:
    """Build each corpus's folds with its own protocol, then combine fold i of every corpus into one fold i.

    For one model trained on corpora whose papers split them differently (selective-MTL paper: IEMOCAP leave one
    session out, the call-centre corpus in 5 random folds). Each corpus's builder sees that corpus's rows only.
    Combined fold i trains on the union of the corpora's fold-i train parts, validates on the union of their
    validation parts and tests on the union of their test parts, so no corpus's test utterance reaches any
    combined train or validation part. The same table, protocols and seeds give the same folds.

    Args:
        meta: Shard metadata (``ShardSet.metadata()``) holding exactly the corpora named in ``protocols``.
        protocols: Corpus name -> ``(protocol, options)``, options as :func:`build_folds` takes them (``seed``
            included), e.g. ``{"iemocap": ("loso", {}), "callcenter": ("random_kfold", {"k": 5})}``.
        require: Column that must be non-null, as in :func:`build_folds`; applied to every corpus.

    Returns:
        The combined folds, in fold order, named by the corpora's fold names joined with ``"+"`` in sorted corpus
        order (``"random_kfold-callcenter-0+loso-iemocap-Ses01"``), with ``corpus/speaker`` labels and per-corpus
        counts in ``counts_by_corpus``.

    Raises:
        ValueError: If the table's corpora and those in ``protocols`` differ, an entry is not
            ``(protocol, options)``, an entry names ``cross_corpus`` (it needs two corpora), the corpora's fold
            counts differ, or a corpus's builder rejects its rows (the message then names the corpus).
        TypeError: If ``protocols`` is not a mapping, or an option is not one the corpus's protocol takes.
    """
    if not isinstance(protocols, Mapping):
        raise TypeError(
            "protocols must map each corpus to (protocol, options), e.g. {'iemocap': ('loso', {})}, got "
            f"{type(protocols).__name__}"
        )
    m = _Meta(meta, "build_corpus_folds", [])  # utt_id unique across the whole table, corpus on every row
    present, named = m.corpora(), sorted(protocols)
    missing, absent = sorted(set(present) - set(named)), sorted(set(named) - set(present))
    if missing or absent:
        raise ValueError(
            f"build_corpus_folds: every corpus in the table needs a protocol and every corpus in protocols must be "
            f"in the table; the table holds {present}, protocols names {named} (missing from protocols: "
            f"{missing or 'none'}; not in the table: {absent or 'none'}). Add a (protocol, options) entry for each "
            "corpus of the table, or drop the rows or entries of the others"
        )
    entries = {corpus: _corpus_entry(corpus, protocols[corpus]) for corpus in present}

    meta = _require(meta, require)
    rows: dict[str, list[int]] = {corpus: [] for corpus in present}
    for r, corpus in enumerate(meta.column("corpus").to_pylist()):
        rows[str(corpus)].append(r)
    per_corpus: dict[str, list[Fold]] = {}
    for corpus in present:
        protocol, options = entries[corpus]
        try:
            per_corpus[corpus] = build_folds(protocol, meta.take(rows[corpus]), **options)
        except (ValueError, TypeError) as e:
            # The builder saw one corpus's rows and cannot say which corpus it was.
            raise type(e)(f"corpus {corpus!r} (protocol {protocol!r}): {e}") from e

    counts = {corpus: len(folds) for corpus, folds in per_corpus.items()}
    if len(set(counts.values())) > 1:
        given = "; ".join(f"{c!r}: {entries[c][0]} gives {n} fold{'s' * (n != 1)}" for c, n in counts.items())
        raise ValueError(
            "build_corpus_folds: fold i combines fold i of every corpus, so every corpus needs the same number "
            f"of folds, but {given}. {_fold_count_fix(entries, counts)}"
        )

    several = len(present) > 1
    combined = []
    for i in range(next(iter(counts.values()))):
        parts = {corpus: per_corpus[corpus][i] for corpus in present}
        speakers = {}
        for part in _PARTS:
            if any(part in f.speakers for f in parts.values()):
                speakers[part] = tuple(sorted(
                    f"{c}/{s}" if several else s for c, f in parts.items() for s in f.speakers.get(part, ())
                ))
        combined.append(Fold(
            "+".join(f.name for f in parts.values()),
            tuple(sorted(u for f in parts.values() for u in f.train_ids)),
            tuple(sorted(u for f in parts.values() for u in f.val_ids)),
            TestLockbox._union(f.test for f in parts.values()),
            speakers=speakers,
            counts_by_corpus={
                "train": {c: len(f.train_ids) for c, f in parts.items()},
                "val": {c: len(f.val_ids) for c, f in parts.items()},
                "test": {c: len(f.test) for c, f in parts.items()},
            },
        ))
    return combined


def _corpus_entry(corpus: str, entry: object) -> tuple[str, dict]:
    """Check one ``protocols`` value of :func:`build_corpus_folds` and return it as ``(protocol, options)``."""
    ok = (
        isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
        and isinstance(entry[1], Mapping)
    )
    if not ok:
        raise ValueError(
            f"protocols[{corpus!r}] must be (protocol, options), e.g. ('random_kfold', {{'k': 5}}), got {entry!r}"
        )
    protocol, options = entry
    if protocol == "cross_corpus":
        raise ValueError(
            f"protocols[{corpus!r}]: cross_corpus trains on one corpus and tests on another, so it cannot split "
            "one corpus's rows; use build_folds('cross_corpus', ...) on the whole table, or give "
            f"{corpus!r} one of: {', '.join(sorted(set(PROTOCOLS) - {'cross_corpus'}))}"
        )
    return protocol, dict(options)


def _fold_count_fix(entries: Mapping[str, tuple[str, dict]], counts: Mapping[str, int]) -> str:
    """How to make the corpora's fold counts agree, for the error of :func:`build_corpus_folds`."""
    with_k = sorted(c for c in counts if entries[c][0] in PROTOCOLS and "k" in _options(PROTOCOLS[entries[c][0]]))
    fixed = {c: n for c, n in counts.items() if c not in with_k}
    if with_k and fixed and len(set(fixed.values())) == 1:
        n = next(iter(fixed.values()))
        return (
            f"Set k={n} in the options of {', '.join(map(repr, with_k))} to match "
            f"{', '.join(f'{c!r} ({entries[c][0]})' for c in fixed)}"
        )
    if with_k and not fixed:
        return "Set the same k for every corpus (the selective-MTL paper uses k=5)"
    return (
        "Choose protocols and options that give every corpus the same number of folds: speaker_kfold and "
        "random_kfold take k, loso gives one fold per session (two with val_speaker='both'), predefined gives one"
    )


def fold_summary(folds: Iterable[Fold]) -> list[dict]:
    """Per-fold counts for logging: utterances and speakers per part, and per corpus. Never opens a lockbox.

    Args:
        folds: Folds from :func:`build_folds` or :func:`build_corpus_folds`.

    Returns:
        One dict per fold: ``name``, ``n_train``, ``n_val``, ``n_test``, ``n_speakers_train``,
        ``n_speakers_val``, ``n_speakers_test`` (None where the fold carries no speaker labels). When the fold's
        rows span several corpora, also ``n_train_by_corpus``, ``n_val_by_corpus`` and ``n_test_by_corpus``:
        corpus -> utterances, every corpus of the fold in each (0 where a part holds none of it).
    """
    out = []
    for f in folds:
        row = {"name": f.name, "n_train": len(f.train_ids), "n_val": len(f.val_ids), "n_test": len(f.test)}
        for part in _PARTS:
            row[f"n_speakers_{part}"] = len(f.speakers[part]) if part in f.speakers else None
        corpora = sorted({c for by_corpus in f.counts_by_corpus.values() for c in by_corpus})
        if len(corpora) > 1:
            for part in _PARTS:
                by_corpus = f.counts_by_corpus.get(part, {})
                row[f"n_{part}_by_corpus"] = {c: by_corpus.get(c, 0) for c in corpora}
        out.append(row)
    return out

"""Corpus adapters: read a corpus as distributed and yield one :class:`UtteranceRecord` per labelled utterance.

One adapter per on-disk layout (IEMOCAP, MSP-Podcast, MSP-IMPROV, LibriSpeech, AMI, a generic CSV manifest), chosen by
name from :data:`ADAPTERS` (DESIGN.md: an explicit registry, no import strings). Every adapter:

* finds its corpus folder: ``root`` may be the folder the corpus was distributed as (``.../IEMOCAP_full_release``)
  or the folder holding it (e.g. an ``emotune synth --out`` folder);
* maps corpus codes to canonical names (:data:`~data_io.schema.EMOTION_VOCAB`; "no agreement" -> None) and fills
  ``rater_hist`` from the individual rater lines where the corpus has them; it does not merge categories (e.g.
  excited into happy: a training-time choice);
* keeps every audio path inside the corpus root (``..`` or an escaping symlink raises :class:`CorpusPathError`);
* yields label entries whose audio file is missing (ingestion quarantines them with reason ``missing``) and skips
  audio files that have no label entry, listing them in ``.unlabelled_files``;
* returns records sorted by ``utt_id`` and rejects duplicate ids.

The distributed corpora's label files are machine-written, so a malformed entry there means a wrong layout and
raises. A CSV manifest is written by hand: a row with a bad value (an unknown emotion, a non-numeric, NaN, inf or
out-of-scale attribute, an empty path or speaker, ...) is still yielded, as a record with only its id, speaker
and path, and its problem is kept in ``.problems`` (``utt_id -> (reason, detail)``); ingestion quarantines it
with that reason and ingests the other rows. Only a manifest-wide problem (a missing column, a duplicate id, a
path escaping the root) raises.

Word alignments: the ``iemocap`` adapter fills ``words`` from IEMOCAP's forced alignments
(``sentences/ForcedAlignment/<dialog>/<turn>.wdseg``, see :func:`read_wdseg`) where a turn has one, so the
multitask-DCGAN paper's crops can centre on words; a turn without one, and every other corpus, has ``words`` None
(null in the shards; the ``words`` crop policy then falls back to speech).

Unlabelled long recordings: the ``ami`` adapter cuts each AMI meeting into speech chunks (records with a
``segment`` of the meeting's file, see :class:`AmiAdapter`), for the DCGAN's unlabelled data.
"""

from __future__ import annotations

import csv
import math
import numbers
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from data_io import audio
from data_io.schema import EMOTION_VOCAB, SAMPLE_RATE, SPLITS, STYLES, UtteranceRecord

AUDIO_SUFFIXES = (".wav", ".flac")
# Names that become folders (corpus and feature-set names): one plain path component, never "..", never hidden.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_plain_name(value, what: str) -> str:
    """Return ``value`` if it is a plain name (:data:`PLAIN_NAME`, no ``..``), else raise ValueError.

    Args:
        value: The name, e.g. a corpus or feature-set name that becomes a folder under ``--out``.
        what: What the name is, for the message (e.g. ``"--name"``).

    Raises:
        ValueError: ``value`` is not a string of letters, digits, ``_``, ``.`` and ``-`` starting with a letter or
            digit, or it holds ``..`` (so it cannot name a path outside its parent folder).
    """
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} must be a plain name (letters, digits, '_', '.', '-'; starting with a letter or "
                         f"digit; no '..' or '/'), got {value!r}")
    return value


class CorpusPathError(ValueError):
    """An audio path resolves outside the corpus root (``..`` in a path, or a symlink pointing out)."""


def _hist(votes: Iterable[tuple[str, float]]) -> tuple[float, ...] | None:
    """Votes ``(category, weight)`` -> weight per :data:`EMOTION_VOCAB` category; None when there are none."""
    counts = dict.fromkeys(EMOTION_VOCAB, 0.0)
    any_vote = False
    for category, weight in votes:
        counts[category] += weight
        any_vote = True
    return tuple(counts[c] for c in EMOTION_VOCAB) if any_vote else None


def _float_or_none(text: str | None) -> float | None:
    if text is None or not text.strip() or text.strip().lower() in ("nan", "na", "none"):
        return None
    return float(text)


class Adapter:
    """Base class: root discovery, path safety, sorting and duplicate checks.

    Subclasses set :attr:`name`, :attr:`label_scale`, :attr:`layout` (a description for error messages) and
    :attr:`distributed_as` (the corpus folder's usual name), and implement :meth:`_is_corpus_dir` and
    :meth:`_records`.

    Attributes:
        name: Registry name, also the records' ``corpus`` field.
        root: The corpus folder found under the given root (resolved).
        label_scale: ``(lo, hi)`` of the arousal/valence/dominance scale, or None when there are no attributes.
        unlabelled_files: Audio files found without a label entry, from the last :meth:`records` call.
        problems: ``utt_id -> (reason, detail)`` of the records of malformed entries from the last
            :meth:`records` call (only the CSV adapter yields such records; ingestion quarantines them).
    """

    name = ""
    label_scale: tuple[float, float] | None = None
    layout = ""
    distributed_as = ""
    options: tuple[str, ...] = ()

    def __init__(self, root: Path, **options) -> None:
        self._check_options(options)
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{self.name} corpus root {root} does not exist; pass the folder that holds "
                                    f"the corpus ({self.layout})")
        self.root = self._find_corpus_dir(root.resolve())
        self.unlabelled_files: list[Path] = []
        self.problems: dict[str, tuple[str, str]] = {}

    def _check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"the {self.name} adapter takes options {list(self.options) or 'none'}, "
                             f"got unknown {unknown}")

    def _is_corpus_dir(self, folder: Path) -> bool:
        raise NotImplementedError

    def _missing_message(self, root: Path) -> str:
        return f"no {self.name} corpus under {root}: expected the {self.layout}"

    def _find_corpus_dir(self, root: Path) -> Path:
        if root.is_dir() and self._is_corpus_dir(root):
            return root
        if root.is_dir() and self.distributed_as and self._is_corpus_dir(root / self.distributed_as):
            return root / self.distributed_as
        children = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        found = [p for p in children if self._is_corpus_dir(p)]
        if len(found) > 1:
            raise ValueError(f"{root} holds several {self.name} corpora {[p.name for p in found]}; "
                             f"pass one of them as the root")
        if not found:
            raise FileNotFoundError(self._missing_message(root))
        return found[0]

    def _inside(self, path: Path, what: str = "audio path") -> Path:
        """Resolve ``path`` (relative to the root) and check it stays inside the root; ``what`` names it."""
        resolved = (self.root / path).resolve()
        if not resolved.is_relative_to(self.root):
            raise CorpusPathError(f"{self.name}: {what} {path} resolves to {resolved}, outside the corpus root "
                                  f"{self.root}; corpus paths must stay inside the root (no '..', no symlinks "
                                  f"pointing out): copy the files under the root or point the root higher")
        return resolved

    def _records(self) -> list[UtteranceRecord]:
        raise NotImplementedError

    def records(self) -> list[UtteranceRecord]:
        """All labelled utterances, sorted by ``utt_id``.

        Returns:
            The records; an entry whose audio file is missing is included (ingestion quarantines it).

        Raises:
            FileNotFoundError: The label file is missing.
            ValueError: A malformed label entry, an unknown code, or a duplicate ``utt_id``.
            CorpusPathError: An audio path escapes the corpus root.
        """
        self.unlabelled_files = []
        self.problems = {}
        recs = self._records()
        seen: set[str] = set()
        for r in recs:
            if r.utt_id in seen:
                raise ValueError(f"{self.name}: utt_id {r.utt_id!r} occurs more than once under {self.root}; "
                                 f"utterance ids must be unique")
            seen.add(r.utt_id)
        return sorted(recs, key=lambda r: r.utt_id)

    def _audio_files(self, folder: Path, suffixes: tuple[str, ...] = AUDIO_SUFFIXES) -> list[Path]:
        """Audio files under ``folder`` (recursive), skipping hidden files such as macOS ``._`` forks."""
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and not p.name.startswith("."))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"


# ---------------------------------------------------------------------------------------------------------------
# IEMOCAP

IEMOCAP_CODES = {
    "neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry", "fru": "frustrated",
    "sur": "surprised", "fea": "fearful", "dis": "disgusted", "oth": "other", "xxx": None,
}
# Category names in the evaluators' lines (lower case); both the release's nouns and plain adjectives.
RATER_NAMES = {
    "neutral state": "neutral", "neutral": "neutral", "happiness": "happy", "happy": "happy",
    "excited": "excited", "excitement": "excited", "sadness": "sad", "sad": "sad", "anger": "angry",
    "angry": "angry", "frustration": "frustrated", "frustrated": "frustrated", "surprise": "surprised",
    "surprised": "surprised", "fear": "fearful", "fearful": "fearful", "disgust": "disgusted",
    "disgusted": "disgusted", "contempt": "contempt", "other": "other", "depressed": "sad",
}
_IEMOCAP_TURN = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utt>\S+)\s+(?P<code>\S+)\s+"
    r"\[\s*(?P<v>[\d.]+|nan)\s*,\s*(?P<a>[\d.]+|nan)\s*,\s*(?P<d>[\d.]+|nan)\s*\]", re.IGNORECASE)
_IEMOCAP_UTT = re.compile(r"^(?P<session>Ses\d\d)[FM]_.+_(?P<gender>[FM])\d+$")
# IEMOCAP's forced alignments (Sphinx): 100 frames per second, the end frame inclusive.
WDSEG_FRAME_RATE = 100.0
_WDSEG_ROW = re.compile(r"^\s*(?P<start>-?\d+)\s+(?P<end>-?\d+)\s+(?P<score>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
                        r"\s+(?P<word>\S+)\s*$")


def _is_wdseg_word(token: str) -> bool:
    """False for the aligner's silence (``<s>``, ``</s>``, ``<sil>``) and noise (``++BREATHING++``, ``+UM+``,
    ``[LAUGHTER]``) tokens, which are not words."""
    return not ((token.startswith("<") and token.endswith(">")) or (token.startswith("+") and token.endswith("+"))
                or (token.startswith("[") and token.endswith("]")))


def read_wdseg(path: Path) -> tuple[float, ...]:
    """Word time ranges of an IEMOCAP forced-alignment file (``.wdseg``).

    The format (Sphinx-3 word segmentation): a header line ``SFrm  EFrm    SegAScr Word``, one row per token
    ``<start frame> <end frame> <acoustic score> <WORD>`` with frames of 10 ms (100 per second) and the end frame
    inclusive, and a last line ``Total seg score: <n>``. Pronunciation variants (``ALL(2)``) are words; silence
    (``<s>``, ``</s>``, ``<sil>``) and noise tokens (``++BREATHING++``, ``++LAUGHTER++``, anything in ``<>``,
    ``++``/``+`` or ``[]``) are skipped. Blank lines are ignored.

    Args:
        path: The ``.wdseg`` file.

    Returns:
        ``(start0, end0, start1, end1, ...)`` seconds from the start of the turn's audio (row ``s e`` is
        ``[s / 100, (e + 1) / 100]``), in file order; empty when the file holds no word.

    Raises:
        ValueError: A line that is neither the header, a row nor the total (``<file>:<line>`` and the line in
            the message), a row whose end frame precedes its start frame or whose start frame precedes the
            previous row's, or a file with no row at all.
        OSError: The file cannot be read.
    """
    spans: list[float] = []
    rows = 0
    previous = 0
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("SFrm") or text.lower().startswith("total seg score"):
            continue
        m = _WDSEG_ROW.match(line)
        if not m:
            raise ValueError(f"{path}:{lineno}: a .wdseg row must look like '  25    40   -183549 WORD' (start "
                             f"frame, end frame, score, token; after the header 'SFrm EFrm SegAScr Word'), "
                             f"got {line!r}")
        start, end = int(m["start"]), int(m["end"])
        if not 0 <= start <= end:
            raise ValueError(f"{path}:{lineno}: 0 <= start frame <= end frame must hold, got start {start}, "
                             f"end {end}")
        if start < previous:
            raise ValueError(f"{path}:{lineno}: rows must be in time order, got start frame {start} after a row "
                             f"starting at frame {previous}")
        previous = start
        rows += 1
        if _is_wdseg_word(m["word"]):
            spans += [start / WDSEG_FRAME_RATE, (end + 1) / WDSEG_FRAME_RATE]
    if not rows:
        raise ValueError(f"{path}:{len(lines)}: no alignment rows (expected the header 'SFrm EFrm SegAScr Word' "
                         f"and rows '<start frame> <end frame> <score> <WORD>'); the file is empty or truncated")
    return tuple(spans)


def _rater_categories(field: str) -> list[str]:
    """``"Frustration; Anger;"`` -> canonical names; an unlisted name (e.g. ``Other:sarcastic``) is ``other``."""
    names = [x.strip().lower() for x in field.split(";") if x.strip()]
    return [RATER_NAMES.get(n, RATER_NAMES.get(n.split(":")[0].strip(), "other")) for n in names]


class IemocapAdapter(Adapter):
    """IEMOCAP (``IEMOCAP_full_release``): 5 sessions x 2 actors, acted dyadic dialogs, attributes on 1-5.

    Labels come from ``Session{n}/dialog/EmoEvaluation/<dialog>.txt``: per turn a line
    ``[START - END]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[V, A, D]`` (consensus; note the V, A, D order), then
    evaluator lines ``C-E2:<TAB>Neutral state;<TAB>()`` (categories, one or more per line) and ``A-E3:<TAB>val 3;
    act 2; dom 2;<TAB>()`` (attributes). ``rater_hist`` counts the evaluators' (``C-E*``) votes, a rater naming k
    categories giving 1/k to each; the actors' self-assessments (``C-F1``, ``C-M1``) are not counted. Audio is
    ``Session{n}/sentences/wav/<dialog>/<utt>.wav``. The speaker is the session plus the letter before the turn
    number (``Ses01F_impro01_M003`` -> ``Ses01M``, male); ``xxx`` (no agreement) -> emotion None. ``words`` comes
    from the turn's forced alignment ``Session{n}/sentences/ForcedAlignment/<dialog>/<utt>.wdseg``
    (:func:`read_wdseg`; silence and noise tokens skipped) and is None when that file is missing; a malformed one
    raises, naming the file and line.
    """

    name = "iemocap"
    label_scale = (1.0, 5.0)
    layout = "IEMOCAP layout: Session{1..5}/dialog/EmoEvaluation/*.txt and Session{n}/sentences/wav/<dialog>/*.wav"
    distributed_as = "IEMOCAP_full_release"

    def _is_corpus_dir(self, folder: Path) -> bool:
        return any(folder.glob("Session*/dialog/EmoEvaluation"))

    def _sessions(self) -> list[Path]:
        def number(p: Path) -> int:
            digits = re.sub(r"\D", "", p.name)
            return int(digits) if digits else 0
        return sorted((p for p in self.root.glob("Session*") if p.is_dir()), key=lambda p: (number(p), p.name))

    def _records(self) -> list[UtteranceRecord]:
        recs = []
        for session_dir in self._sessions():
            label_dir = session_dir / "dialog" / "EmoEvaluation"
            label_files = sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith("."))
            labelled: set[str] = set()
            for label_file in label_files:
                for rec in self._parse(label_file, session_dir):
                    labelled.add(rec.utt_id)
                    recs.append(rec)
            if not label_files and any(self._audio_files(session_dir / "sentences" / "wav")):
                raise FileNotFoundError(f"iemocap: {session_dir.name} has audio but no label files in {label_dir} "
                                        f"({self.layout})")
            for wav in self._audio_files(session_dir / "sentences" / "wav", (".wav",)):
                if wav.stem not in labelled:
                    self.unlabelled_files.append(wav)
        return recs

    def _parse(self, label_file: Path, session_dir: Path) -> list[UtteranceRecord]:
        recs = []
        turn: dict | None = None
        lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines()

        def close() -> None:
            if turn is not None:
                recs.append(self._record(turn, session_dir))

        for lineno, line in enumerate(lines, 1):
            if line.startswith("["):
                close()
                m = _IEMOCAP_TURN.match(line)
                if not m:
                    raise ValueError(f"iemocap: {label_file}:{lineno}: a turn line must look like "
                                     f"'[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5, 2.5, 2.5]', "
                                     f"got {line!r}")
                code = m["code"].lower()
                if code not in IEMOCAP_CODES:
                    raise ValueError(f"iemocap: {label_file}:{lineno}: unknown emotion code {m['code']!r}; "
                                     f"valid codes are {sorted(IEMOCAP_CODES)}")
                turn = {"m": m, "code": code, "votes": [], "where": f"{label_file}:{lineno}"}
            elif turn is not None and re.match(r"^C-E\w*:", line):
                # "C-E2:<TAB>Frustration; Anger;<TAB>(comment)": drop the comment, keep the categories.
                field = re.sub(r"\(.*\)\s*$", "", line.split(":", 1)[1].strip().split("\t")[0])
                cats = _rater_categories(field)
                turn["votes"].extend((c, 1.0 / len(cats)) for c in cats)
        close()
        return recs

    def _record(self, turn: dict, session_dir: Path) -> UtteranceRecord:
        m = turn["m"]
        utt_id = m["utt"]
        name = _IEMOCAP_UTT.match(utt_id)
        if not name:
            raise ValueError(f"iemocap: {turn['where']}: turn name {utt_id!r} does not look like "
                             f"'Ses01F_impro01_F000' (session, dialog, then F/M and the turn number)")
        dialog = utt_id.rsplit("_", 1)[0]
        sentences = session_dir.relative_to(self.root) / "sentences"
        path = self._inside(sentences / "wav" / dialog / f"{utt_id}.wav")
        wdseg = self._inside(sentences / "ForcedAlignment" / dialog / f"{utt_id}.wdseg", "alignment path")
        return UtteranceRecord(
            utt_id=utt_id, corpus=self.name, audio_path=path, speaker=name["session"] + name["gender"],
            gender=name["gender"], session=session_dir.name, split=None, style="acted",
            emotion=IEMOCAP_CODES[turn["code"]], arousal=_float_or_none(m["a"]), valence=_float_or_none(m["v"]),
            dominance=_float_or_none(m["d"]), rater_hist=_hist(turn["votes"]),
            words=self._words(wdseg),
        )

    def _words(self, wdseg: Path) -> tuple[float, ...] | None:
        if not wdseg.is_file():
            return None
        try:
            return read_wdseg(wdseg)
        except ValueError as err:
            raise ValueError(f"iemocap: {err}; the forced alignments are machine-written, so this means a damaged "
                             f"file: restore it from the release, or delete it to ingest the turn without word "
                             f"timings") from None


# ---------------------------------------------------------------------------------------------------------------
# MSP-Podcast

PODCAST_CODES = {
    "A": "angry", "S": "sad", "H": "happy", "U": "surprised", "F": "fearful", "D": "disgusted", "C": "contempt",
    "N": "neutral", "O": "other", "X": None,
}
PODCAST_SPLITS = {"Train": "train", "Development": "validation", "Test1": "test", "Test2": "test2",
                  "Test3": "test3"}
PODCAST_GENDERS = {"male": "M", "female": "F", "m": "M", "f": "F"}
PODCAST_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs; header names and values stripped of surrounding spaces."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                rows.append((reader.line_num, {h: (row[i].strip() if i < len(row) else "") for i, h in
                                               enumerate(header)}))
        except (csv.Error, UnicodeDecodeError) as err:  # a NUL byte, a broken quote, not UTF-8 text
            raise ValueError(f"{path}: not a readable CSV file near line {reader.line_num}: "
                             f"{type(err).__name__}: {err}") from None
    return header, rows


def _podcast_class(value: str, where: str) -> str | None:
    """A consensus or rater class: a code (``A``) or a name (``Angry``, ``Surprise``)."""
    if value in PODCAST_CODES:
        return PODCAST_CODES[value]
    canonical = RATER_NAMES.get(value.strip().lower())
    if canonical is None:
        raise ValueError(f"msp_podcast: {where}: unknown emotion class {value!r}; valid codes are "
                         f"{list(PODCAST_CODES)} (X = no agreement) or names like 'Angry'")
    return canonical


class MspPodcastAdapter(Adapter):
    """MSP-Podcast: spontaneous podcast speech, predefined speaker-disjoint partitions, attributes on 1-7.

    Reads ``Labels/labels_consensus.csv`` (columns ``FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender,
    Split_Set``) and audio ``Audios/<FileName>`` (``Audio/`` in some releases). ``Split_Set`` maps Train -> train,
    Development -> validation, Test1 -> test, Test2 -> test2, Test3 -> test3; ``EmoClass`` codes A S H U F D C N O
    map to angry sad happy surprised fearful disgusted contempt neutral other, X (no agreement) -> None. Speakers
    are ``msp_<SpkrID, 4 digits>``; an ``Unknown`` speaker becomes ``msp_unknown_<utt_id>`` (its own speaker, so
    speaker-disjoint folds stay honest). When ``Labels/labels_detailed.csv`` exists (one row per rater:
    ``FileName``, ``WorkerID``, ``EmoClass`` as a code or name, ...), ``rater_hist`` counts its votes.
    """

    name = "msp_podcast"
    label_scale = (1.0, 7.0)
    layout = "MSP-Podcast layout: Labels/labels_consensus.csv and Audios/MSP-PODCAST_*.wav"
    distributed_as = "MSP-Podcast"

    def _is_corpus_dir(self, folder: Path) -> bool:
        return (folder / "Labels" / "labels_consensus.csv").is_file()

    def _missing_message(self, root: Path) -> str:
        return (f"no MSP-Podcast label file under {root}: expected {root}/Labels/labels_consensus.csv or "
                f"{root}/MSP-Podcast/Labels/labels_consensus.csv ({self.layout})")

    def _rater_hists(self) -> dict[str, tuple[float, ...] | None]:
        path = self.root / "Labels" / "labels_detailed.csv"
        if not path.is_file():
            return {}
        header, rows = _read_csv(path)
        column = next((c for c in ("EmoClass", "EmoClass_Major") if c in header), None)
        if "FileName" not in header or column is None:
            raise ValueError(f"msp_podcast: {path} needs columns FileName and EmoClass, has {header}")
        votes: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for lineno, row in rows:
            cat = _podcast_class(row[column], f"{path}:{lineno}")
            if cat is not None:
                votes[Path(row["FileName"]).stem].append((cat, 1.0))
        return {utt: _hist(v) for utt, v in votes.items()}

    def _records(self) -> list[UtteranceRecord]:
        label_path = self.root / "Labels" / "labels_consensus.csv"
        header, rows = _read_csv(label_path)
        missing = [c for c in PODCAST_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"msp_podcast: {label_path} lacks columns {missing}; it needs {list(PODCAST_COLUMNS)}")
        audio_dir = "Audios" if (self.root / "Audios").is_dir() or not (self.root / "Audio").is_dir() else "Audio"
        hists = self._rater_hists()
        recs = []
        for lineno, row in rows:
            where = f"{label_path}:{lineno}"
            file_name = row["FileName"] if Path(row["FileName"]).suffix else row["FileName"] + ".wav"
            utt_id = Path(file_name).stem
            split = PODCAST_SPLITS.get(row["Split_Set"])
            if split is None:
                raise ValueError(f"msp_podcast: {where}: unknown Split_Set {row['Split_Set']!r}; valid values are "
                                 f"{list(PODCAST_SPLITS)}")
            spk = row["SpkrID"]
            if not spk or spk.lower() == "unknown":
                speaker = f"msp_unknown_{utt_id}"
            else:
                speaker = f"msp_{int(spk):04d}" if spk.isdigit() else f"msp_{spk}"
            recs.append(UtteranceRecord(
                utt_id=utt_id, corpus=self.name, audio_path=self._inside(Path(audio_dir) / file_name),
                speaker=speaker, gender=PODCAST_GENDERS.get(row["Gender"].lower()), session=None, split=split,
                style="spontaneous", emotion=_podcast_class(row["EmoClass"], where),
                arousal=_float_or_none(row["EmoAct"]), valence=_float_or_none(row["EmoVal"]),
                dominance=_float_or_none(row["EmoDom"]), rater_hist=hists.get(utt_id),
            ))
        labelled = {r.utt_id for r in recs}
        self.unlabelled_files = [p for p in self._audio_files(self.root / audio_dir) if p.stem not in labelled]
        return recs


# ---------------------------------------------------------------------------------------------------------------
# MSP-IMPROV

IMPROV_CODES = {"A": "angry", "H": "happy", "S": "sad", "N": "neutral", "O": "other", "X": None}
IMPROV_LABEL_FILES = ("Evalution.txt", "Evaluation.txt")
_IMPROV_HEADER = re.compile(
    r"^(?:UTD|MSP)-IMPROV-(?P<name>[A-Za-z0-9-]+)\.(?:avi|wav)\s*;\s*(?P<code>[A-Za-z])\s*;"
    r"\s*A:\s*(?P<a>[\d.]+|NaN)\s*;\s*V:\s*(?P<v>[\d.]+|NaN)\s*;\s*D:\s*(?P<d>[\d.]+|NaN)\s*;", re.IGNORECASE)
_IMPROV_NAME = re.compile(
    r"^(?P<sentence>S\d\d[A-Z])-(?P<gender>[FM])(?P<session>\d\d)-(?P<scenario>[PRST])-(?P<turn>[A-Z]+\d+)$")


class MspImprovAdapter(Adapter):
    """MSP-IMPROV: 6 sessions x 2 actors; target sentences read (R), improvised (S, T) and natural (P); 1-5 scale.

    Assumed format (from the distributed release and common loaders; no copy was available here):

    * labels in ``Evalution.txt`` (sic; ``Evaluation.txt`` is accepted too) at the corpus root: a consensus line
      ``UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:2.4; V:3.0; D:2.6 ; N:3.0;`` (category code A/H/S/N/O/X, X = no
      agreement; then arousal, valence, dominance, naturalness), followed by one line per rater,
      ``<rater>; Angry; <secondary emotions>; A:..; V:..; D:..; N:..;``, until the next consensus line. The rater's
      first category feeds ``rater_hist``;
    * audio ``Audio/session<n>/<sentence>/<scenario>/MSP-IMPROV-<name>.wav``, found anywhere under the root by file
      name (releases differ in the top folder); the expected path is used when it is missing;
    * names ``S01A-F01-S-FM01``: sentence 01 with target emotion A, speaker ``F01`` (gender F, session 1), scenario
      R/S/T/P, then the dyad and turn. Speakers are ``improv_F01``; sessions ``session1``...

    Style is ``acted``, except the ``P`` recordings: natural interaction between the takes, so ``spontaneous``.
    """

    name = "msp_improv"
    label_scale = (1.0, 5.0)
    layout = "MSP-IMPROV layout: Evalution.txt and Audio/session<n>/<sentence>/<scenario>/MSP-IMPROV-*.wav"
    distributed_as = "MSP-IMPROV"

    def _is_corpus_dir(self, folder: Path) -> bool:
        return any((folder / f).is_file() for f in IMPROV_LABEL_FILES)

    def _missing_message(self, root: Path) -> str:
        return f"no MSP-IMPROV label file under {root}: expected {root}/Evalution.txt ({self.layout})"

    def _records(self) -> list[UtteranceRecord]:
        label_path = next(self.root / f for f in IMPROV_LABEL_FILES if (self.root / f).is_file())
        audio_top = self.root / "Audio" if (self.root / "Audio").is_dir() else self.root
        audio = {p.stem: p for p in self._audio_files(audio_top, (".wav",))}
        recs: list[UtteranceRecord] = []
        entry: dict | None = None

        def close() -> None:
            if entry is not None:
                recs.append(self._record(entry, audio))

        for lineno, raw in enumerate(label_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            where = f"{label_path}:{lineno}"
            if re.match(r"^(?:UTD|MSP)-IMPROV-", line, re.IGNORECASE):
                close()
                m = _IMPROV_HEADER.match(line)
                if not m:
                    raise ValueError(f"msp_improv: {where}: a label line must look like 'UTD-IMPROV-S01A-F01-S-FM01"
                                     f".avi; A; A:2.4; V:3.0; D:2.6 ; N:3.0;', got {line!r}")
                if m["code"].upper() not in IMPROV_CODES:
                    raise ValueError(f"msp_improv: {where}: unknown category code {m['code']!r}; valid codes are "
                                     f"{list(IMPROV_CODES)}")
                entry = {"m": m, "votes": [], "where": where}
            elif entry is not None:
                fields = [f.strip() for f in line.split(";")]
                if len(fields) > 1 and fields[1] and ":" not in fields[1]:
                    entry["votes"].append((RATER_NAMES.get(fields[1].lower(), "other"), 1.0))
        close()
        labelled = {r.utt_id for r in recs}
        self.unlabelled_files = [p for stem, p in sorted(audio.items()) if stem not in labelled]
        return recs

    def _record(self, entry: dict, audio: dict[str, Path]) -> UtteranceRecord:
        m = entry["m"]
        name = _IMPROV_NAME.match(m["name"].upper())
        if not name:
            raise ValueError(f"msp_improv: {entry['where']}: utterance name {m['name']!r} does not look like "
                             f"'S01A-F01-S-FM01' (sentence, speaker, scenario R/S/T/P, turn)")
        utt_id = f"MSP-IMPROV-{m['name'].upper()}"
        session = f"session{int(name['session'])}"
        path = audio.get(utt_id) or (self.root / "Audio" / session / name["sentence"] / name["scenario"]
                                     / f"{utt_id}.wav")
        return UtteranceRecord(
            utt_id=utt_id, corpus=self.name, audio_path=self._inside(path.relative_to(self.root)),
            speaker=f"improv_{name['gender']}{name['session']}", gender=name["gender"], session=session,
            split=None, style="spontaneous" if name["scenario"] == "P" else "acted",
            emotion=IMPROV_CODES[m["code"].upper()], arousal=_float_or_none(m["a"]), valence=_float_or_none(m["v"]),
            dominance=_float_or_none(m["d"]), rater_hist=_hist(entry["votes"]),
        )


# ---------------------------------------------------------------------------------------------------------------
# LibriSpeech


class LibriSpeechAdapter(Adapter):
    """LibriSpeech: read audiobook speech without emotion labels (for speaker tasks and pre-training).

    Reads ``SPEAKERS.TXT`` (``;`` comments, rows ``ID | SEX | SUBSET | MINUTES | NAME``) for genders, and every
    ``<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``: each transcript line is one utterance, audio
    ``<speaker>-<chapter>-<NNNN>.flac`` beside it. Speakers are ``libri_<ID>`` (bare numbers would collide with
    other corpora's ids), sessions the chapter id; style ``read``; no split, emotion or attributes.
    """

    name = "librispeech"
    label_scale = None
    layout = "LibriSpeech layout: SPEAKERS.TXT and <subset>/<speaker>/<chapter>/*.flac + *.trans.txt"
    distributed_as = "LibriSpeech"

    def _is_corpus_dir(self, folder: Path) -> bool:
        return (folder / "SPEAKERS.TXT").is_file()

    def _missing_message(self, root: Path) -> str:
        return f"no LibriSpeech SPEAKERS.TXT under {root}: expected {root}/SPEAKERS.TXT ({self.layout})"

    def _genders(self) -> dict[str, str]:
        genders = {}
        for line in (self.root / "SPEAKERS.TXT").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(";") or "|" not in line:
                continue
            fields = [f.strip() for f in line.split("|")]
            if fields[1].upper() in ("F", "M"):
                genders[fields[0]] = fields[1].upper()
        return genders

    def _records(self) -> list[UtteranceRecord]:
        genders = self._genders()
        recs = []
        listed: set[Path] = set()
        for trans in sorted(self.root.glob("*/*/*/*.trans.txt")):
            folder = trans.parent
            for line in trans.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                utt_id = line.split(maxsplit=1)[0]
                parts = utt_id.split("-")
                if len(parts) != 3:
                    raise ValueError(f"librispeech: {trans}: utterance id {utt_id!r} does not look like "
                                     f"'<speaker>-<chapter>-<NNNN>'")
                path = self._inside((folder / f"{utt_id}.flac").relative_to(self.root))
                listed.add(path)
                recs.append(UtteranceRecord(
                    utt_id=utt_id, corpus=self.name, audio_path=path, speaker=f"libri_{parts[0]}",
                    gender=genders.get(parts[0]), session=parts[1], split=None, style="read",
                ))
        self.unlabelled_files = [p for p in self._audio_files(self.root, (".flac",)) if p.resolve() not in listed]
        return recs


# ---------------------------------------------------------------------------------------------------------------
# AMI

# Defaults of the ami adapter's options. Chunks of a few seconds, like the labelled IEMOCAP turns the unlabelled
# chunks are mixed with, and longer than the DCGAN family's widest crop (256 frames at a 16 ms hop, 4.1 s), which
# is drawn inside them; a stretch's tail shorter than a second is dropped rather than kept as a chunk mostly made
# of padding.
AMI_CHUNK_SECONDS = 5.0
AMI_MIN_CHUNK_SECONDS = 1.0
# Pauses up to this long stay inside a chunk (between words and phrases of a turn); longer silences (between
# turns) separate chunks, so no chunk lies on a gap.
AMI_MAX_PAUSE_S = 0.5
# Longest meeting decoded to find its speech: AMI meetings last 15-60 min; 2 h of 16 kHz float32 is 460 MB.
AMI_MAX_MEETING_SECONDS = 7200.0
AMI_STREAM = "Mix-Headset"
# Scenario meetings come in series (ES2002a-d) recorded by the same four participants.
_AMI_SERIES = re.compile(r"^(?P<series>[A-Z]{2}\d{4})[a-z]$")


def speech_chunks(regions: np.ndarray, chunk_seconds: float = AMI_CHUNK_SECONDS,
                  min_chunk_seconds: float = AMI_MIN_CHUNK_SECONDS) -> list[tuple[float, float]]:
    """Cut speech stretches into consecutive chunks of ``chunk_seconds``.

    Each stretch ``[a, b]`` gives ``floor((b - a) / chunk_seconds)`` chunks of exactly ``chunk_seconds`` from
    ``a`` on, then its tail ``[a + k * chunk_seconds, b]`` when that lasts at least ``min_chunk_seconds`` (a
    stretch shorter than ``chunk_seconds`` is its own tail). Chunks never leave their stretch, so they lie on
    speech and never span the gaps between stretches. Times are rounded to the millisecond.

    Args:
        regions: ``(k, 2)`` ``[start, end]`` seconds, e.g. :func:`data_io.audio.speech_regions`' output.
        chunk_seconds: Length of a full chunk, > 0.
        min_chunk_seconds: Shortest tail kept, in ``(0, chunk_seconds]``.

    Returns:
        ``(start_s, end_s)`` per chunk, sorted and disjoint.
    """
    chunks = []
    for a, b in np.asarray(regions, dtype=np.float64).reshape(-1, 2):
        a = round(float(a), 3)  # rounded first, so full chunks last exactly chunk_seconds
        full = int((b - a) / chunk_seconds + 1e-9)
        edges = [round(a + k * chunk_seconds, 3) for k in range(full + 1)]
        if b - edges[-1] >= min_chunk_seconds:
            edges.append(round(float(b), 3))
        chunks += list(zip(edges[:-1], edges[1:], strict=True))
    return chunks


def _positive_seconds(options: dict, name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"ami: {name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class AmiAdapter(Adapter):
    """AMI meeting corpus, the headset mix of each meeting cut into speech chunks: unlabelled spontaneous speech.

    Reads every ``<meeting>/audio/<meeting>.Mix-Headset.wav`` under the root (``amicorpus`` as the download script
    lays it out, e.g. ``ES2002a/audio/ES2002a.Mix-Headset.wav``); other streams (``Headset-N``, ``Array1-0N``) are
    not read and are listed in ``.unlabelled_files``. Each meeting is decoded once (up to
    :data:`AMI_MAX_MEETING_SECONDS`) and its speech found by :func:`data_io.audio.speech_regions` (the detector
    ingestion uses, with pauses up to ``max_pause_s`` kept inside); :func:`speech_chunks` cuts the speech into
    chunks. A record per chunk: ``utt_id`` ``<meeting>_<start in ms, 8 digits>`` (``ES2002a_00012340``), the
    meeting's file with ``segment=(start_s, end_s)``, ``session`` the meeting, style ``spontaneous``; no emotion,
    attributes, gender or split. The mix holds all participants, so ``speaker`` is the meeting group, not a person:
    ``ami_<series>`` for scenario meetings (``ES2002a``-``d`` -> ``ami_ES2002``, one group of four), else
    ``ami_<meeting>``; speaker-disjoint folds then keep a group's meetings together.

    A meeting that cannot be decoded (any :data:`data_io.audio.REASONS`) becomes one record ``<meeting>`` with
    its problem in ``.problems``; ingestion quarantines it and ingests the other meetings. ``records()`` decodes
    every meeting (a second or so per hour of audio), on every ingest run.

    Options:
        chunk_seconds: Length of a chunk (default :data:`AMI_CHUNK_SECONDS`, 5 s).
        min_chunk_seconds: Shortest chunk kept, the tail of a stretch of speech (default 1 s).
        max_pause_s: Longest pause inside a chunk (default 0.5 s); longer silences separate chunks.
    """

    name = "ami"
    label_scale = None
    layout = f"AMI layout: <meeting>/audio/<meeting>.{AMI_STREAM}.wav (e.g. ES2002a/audio/ES2002a.{AMI_STREAM}.wav)"
    distributed_as = "amicorpus"
    options = ("chunk_seconds", "min_chunk_seconds", "max_pause_s")

    def __init__(self, root: Path, **options) -> None:
        self._check_options(options)
        self.chunk_seconds = _positive_seconds(options, "chunk_seconds", AMI_CHUNK_SECONDS)
        self.min_chunk_seconds = _positive_seconds(options, "min_chunk_seconds", AMI_MIN_CHUNK_SECONDS)
        self.max_pause_s = _positive_seconds(options, "max_pause_s", AMI_MAX_PAUSE_S)
        if self.min_chunk_seconds > self.chunk_seconds:
            raise ValueError(f"ami: min_chunk_seconds <= chunk_seconds must hold, got {self.min_chunk_seconds} > "
                             f"{self.chunk_seconds}")
        super().__init__(root)

    def _is_corpus_dir(self, folder: Path) -> bool:
        return any(folder.glob(f"*/audio/*.{AMI_STREAM}.wav"))

    def _missing_message(self, root: Path) -> str:
        return (f"no AMI meeting under {root}: expected {root}/<meeting>/audio/<meeting>.{AMI_STREAM}.wav "
                f"({self.layout})")

    def _meetings(self) -> list[tuple[str, Path]]:
        """``(meeting, mix file)`` of every meeting folder holding a headset mix; other audio is unlabelled."""
        found = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            mix = folder / "audio" / f"{folder.name}.{AMI_STREAM}.wav"
            path = self._inside(mix.relative_to(self.root))  # a symlinked meeting folder pointing out raises
            if path.is_file():
                found.append((folder.name, path))
            self.unlabelled_files += [p for p in self._audio_files(folder / "audio") if p.resolve() != path]
        return found

    def _records(self) -> list[UtteranceRecord]:
        recs = []
        for meeting, path in self._meetings():
            series = _AMI_SERIES.match(meeting)
            speaker = f"ami_{series['series'] if series else meeting}"
            common = {"corpus": self.name, "audio_path": path, "speaker": speaker, "session": meeting,
                      "style": "spontaneous"}
            try:
                y = audio.load_audio(path, sr=SAMPLE_RATE, max_seconds=AMI_MAX_MEETING_SECONDS)
            except audio.AudioCheckError as err:  # the meeting is quarantined as a whole; the others go on
                self.problems[meeting] = (err.reason, f"ami: meeting {meeting}: {err.detail}")
                recs.append(UtteranceRecord(utt_id=meeting, **common))
                continue
            regions = audio.speech_regions(y, SAMPLE_RATE, **{**audio.SPEECH_DETECTION, "min_gap_s": self.max_pause_s})
            for start, end in speech_chunks(regions, self.chunk_seconds, self.min_chunk_seconds):
                recs.append(UtteranceRecord(utt_id=f"{meeting}_{round(start * 1000):08d}", segment=(start, end),
                                            **common))
        return recs


# ---------------------------------------------------------------------------------------------------------------
# CSV manifest

CSV_REQUIRED = ("path", "speaker")
CSV_OPTIONAL = ("utt_id", "gender", "session", "split", "style", "emotion", "arousal", "valence", "dominance")
_CSV_GENDERS = {"f": "F", "female": "F", "m": "M", "male": "M"}


class _RowProblem(ValueError):
    """A CSV row that cannot become a record; ingestion quarantines it with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class CsvAdapter(Adapter):
    """Any corpus described by a CSV manifest (one row per utterance), e.g. the synthetic call-centre corpus.

    Options:
        manifest: File name of the manifest inside the root (default ``manifest.csv``). The root may also be the
            folder that holds the manifest's folder.
        label_scale: ``(lo, hi)`` of the attribute columns (default ``(1, 5)``).
        name: The corpus's name (default ``csv``; ``emotune ingest --corpus csv`` requires ``--name``): the
            records' ``corpus`` (so per-corpus metrics tell two CSV corpora apart) and the shard folder
            ``<out>/<name>/``. A plain name (:func:`check_plain_name`).

    Columns (header row; order free; unknown columns are ignored):

    ========== ======== ===============================================================================
    column     required meaning
    ========== ======== ===============================================================================
    path       yes      audio file, relative to the manifest's folder; must stay inside it
    speaker    yes      speaker id, unique within the corpus
    utt_id     no       utterance id (default: the file name without extension); unique
    gender     no       ``F`` / ``M`` (or female / male); empty = unknown
    session    no       recording session / call; empty = none
    split      no       ``train`` / ``validation`` / ``test`` / ``test2``...; empty = none (folds decide)
    style      no       ``acted`` / ``spontaneous`` / ``read`` (default ``spontaneous``)
    emotion    no       a name from EMOTION_VOCAB (neutral, happy, sad, angry, ...); empty = no label
    arousal    no       number on the label scale; empty (or NA) = none (same for valence, dominance)
    valence    no
    dominance  no
    ========== ======== ===============================================================================

    A row with a bad value is yielded as a bare record (id, speaker, path) with its problem in ``.problems``:
    reason ``non_finite_label`` for a NaN or inf attribute, ``bad_row`` for anything else (an empty path or
    speaker, an unknown emotion, gender, split or style, a non-numeric or out-of-scale attribute). Its id is the
    ``utt_id`` cell, else the file name's stem, else ``<manifest stem>-line<N>``. A missing column, a duplicate
    id or a path outside the root still raises: they concern the whole manifest.
    """

    name = "csv"
    layout = "CSV manifest layout: <root>/manifest.csv with columns path,speaker[,utt_id,gender,...]"
    options = ("manifest", "label_scale", "name")

    def __init__(self, root: Path, **options) -> None:
        self._check_options(options)
        manifest = options.get("manifest") or "manifest.csv"
        label_scale = options.get("label_scale", (1, 5))
        if not isinstance(manifest, str) or Path(manifest).name != manifest:
            raise ValueError(f"csv: manifest must be a file name inside the root (e.g. 'manifest.csv'), "
                             f"got {manifest!r}")
        self.name = check_plain_name(options.get("name", "csv"), "csv: the corpus name (--name)")
        self.manifest = manifest
        try:
            lo, hi = (float(x) for x in label_scale)
        except (TypeError, ValueError):
            raise ValueError(f"csv: label_scale must be two numbers (lo, hi), got {label_scale!r}") from None
        if not lo < hi:
            raise ValueError(f"csv: label_scale lo < hi must hold, got {label_scale!r}")
        self.label_scale = (lo, hi)
        root = Path(root)
        if root.is_file():  # the manifest itself was given
            root, self.manifest = root.parent, root.name
        super().__init__(root)

    def _is_corpus_dir(self, folder: Path) -> bool:
        return (folder / self.manifest).is_file()

    def _missing_message(self, root: Path) -> str:
        return (f"no CSV manifest under {root}: expected {root}/{self.manifest} (or one folder below); "
                f"pass manifest=<file name> if it is named differently ({self.layout})")

    def _records(self) -> list[UtteranceRecord]:
        manifest = self.root / self.manifest
        header, rows = _read_csv(manifest)
        documented = CSV_REQUIRED + CSV_OPTIONAL
        for col in CSV_REQUIRED:
            if col not in header:
                raise ValueError(f"csv: {manifest} lacks the required column {col!r}; columns are "
                                 f"{list(documented)} (required: {list(CSV_REQUIRED)}), got {header}")
        recs = []
        for lineno, row in rows:
            where = f"{manifest}:{lineno}"
            rel = row["path"]
            utt_id = row.get("utt_id") or Path(rel).stem or f"{Path(self.manifest).stem}-line{lineno}"
            path = manifest  # stands in for the audio of a row without a usable path (never read)
            try:
                if not rel:
                    raise _RowProblem("bad_row", f"csv: {where}: empty path")
                path = self._inside(Path(rel))  # CorpusPathError is not caught: it concerns the whole manifest
                recs.append(self._record(row, utt_id, path, where))
            except CorpusPathError:
                raise
            except ValueError as err:  # _RowProblem, a validator below, UtteranceRecord's own checks
                self.problems[utt_id] = (getattr(err, "reason", "bad_row"), str(err))
                recs.append(UtteranceRecord(utt_id=utt_id, corpus=self.name, audio_path=path,
                                            speaker=row["speaker"] or "unknown"))
        return recs

    def _record(self, row: dict[str, str], utt_id: str, path: Path, where: str) -> UtteranceRecord:
        if not row["speaker"]:
            raise _RowProblem("bad_row", f"csv: {where}: empty speaker; every row needs one (speaker-disjoint "
                                         f"folds)")
        return UtteranceRecord(
            utt_id=utt_id, corpus=self.name, audio_path=path,
            speaker=row["speaker"], gender=self._gender(row.get("gender", ""), where),
            session=row.get("session") or None, split=self._split(row.get("split", ""), where),
            style=self._style(row.get("style", ""), where), emotion=self._emotion(row.get("emotion", ""), where),
            arousal=self._attribute(row, "arousal", where), valence=self._attribute(row, "valence", where),
            dominance=self._attribute(row, "dominance", where),
        )

    @staticmethod
    def _gender(value: str, where: str) -> str | None:
        if not value:
            return None
        if value.lower() not in _CSV_GENDERS:
            raise ValueError(f"csv: {where}: gender must be F or M (or empty), got {value!r}")
        return _CSV_GENDERS[value.lower()]

    @staticmethod
    def _split(value: str, where: str) -> str | None:
        if not value:
            return None
        if value not in SPLITS and not re.fullmatch(r"test\d+", value):
            raise ValueError(f"csv: {where}: split must be one of {list(SPLITS)} (or test2, test3, ...) or empty, "
                             f"got {value!r}")
        return value

    @staticmethod
    def _style(value: str, where: str) -> str:
        if not value:
            return "spontaneous"
        if value not in STYLES:
            raise ValueError(f"csv: {where}: style must be one of {list(STYLES)} or empty, got {value!r}")
        return value

    @staticmethod
    def _emotion(value: str, where: str) -> str | None:
        if not value:
            return None
        if value.lower() not in EMOTION_VOCAB:
            raise ValueError(f"csv: {where}: unknown emotion {value!r}; valid names are {list(EMOTION_VOCAB)} "
                             f"(empty = no label)")
        return value.lower()

    def _attribute(self, row: dict[str, str], column: str, where: str) -> float | None:
        text = row.get(column) or ""
        if not text or text.lower() in ("na", "none"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"csv: {where}: {column} must be a number or empty, got {text!r}") from None
        if not math.isfinite(value):  # "nan" too: a missing label is an empty cell, NaN is a broken value
            raise _RowProblem("non_finite_label", f"csv: {where}: {column} = {text!r}; labels must be finite "
                                                  f"numbers (leave the cell empty for no label)")
        lo, hi = self.label_scale
        if not lo <= value <= hi:
            raise ValueError(f"csv: {where}: {column} = {value} lies outside the label scale [{lo}, {hi}]; "
                             f"pass label_scale=(lo, hi) if the corpus uses another scale")
        return value


# ---------------------------------------------------------------------------------------------------------------
# Registry

ADAPTERS: dict[str, type[Adapter]] = {
    "iemocap": IemocapAdapter,
    "msp_podcast": MspPodcastAdapter,
    "msp_improv": MspImprovAdapter,
    "librispeech": LibriSpeechAdapter,
    "csv": CsvAdapter,
    "ami": AmiAdapter,
}


def get_adapter(name: str, root: Path, /, **options) -> Adapter:
    """Build the adapter registered under ``name`` for the corpus at ``root``.

    Args:
        name: A key of :data:`ADAPTERS`.
        root: The corpus folder as distributed, or the folder holding it.
        **options: Adapter options (``csv``: ``manifest``, ``label_scale``, ``name``; ``ami``: ``chunk_seconds``,
            ``min_chunk_seconds``, ``max_pause_s``; the others take none).

    Returns:
        The adapter; call ``.records()`` for the utterances.

    Raises:
        ValueError: Unknown adapter name or option.
        FileNotFoundError: ``root`` does not exist or holds no corpus of this layout.
    """
    factory: Callable[..., Adapter] | None = ADAPTERS.get(name)
    if factory is None:
        raise ValueError(f"unknown corpus adapter {name!r}; valid names are {sorted(ADAPTERS)}")
    return factory(Path(root), **options)

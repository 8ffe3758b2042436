"""The utterance schema shared by adapters, ingestion, shards, folds and trainables (DESIGN.md, Data).

One row per utterance. Adapters yield :class:`UtteranceRecord`; ingestion turns each into a shard row by adding
``speech`` (where the speech is, found by ``data_io.audio.speech_regions``), ``duration_s``, the feature's shape
columns and the feature itself. Label values stay on the corpus's own scale (IEMOCAP 1-5, MSP-Podcast 1-7); the
manifest records the scale so trainables can normalise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

# 2: the ``speech`` and ``words`` columns (time ranges, flat [start, end, ...] seconds).
SCHEMA_VERSION = 2
SAMPLE_RATE = 16_000

# Canonical emotion names. Corpora use codes ("neu", "A", ...); adapters map them to these names.
# The synthetic generator uses the first four, which is also the usual 4-class SER protocol.
EMOTIONS_4 = ("neutral", "happy", "sad", "angry")
EMOTION_VOCAB = (
    "neutral", "happy", "sad", "angry", "excited", "frustrated",
    "surprised", "fearful", "disgusted", "contempt", "other",
)
STYLES = ("acted", "spontaneous", "read")
GENDERS = ("F", "M")
# Canonical split names; corpora with predefined partitions map theirs to these
# (MSP-Podcast: Train -> train, Development -> validation, Test1 -> test, Test2 -> test2, ...).
SPLITS = ("train", "validation", "test")
ATTRIBUTES = ("arousal", "valence", "dominance")

# Metadata columns of a shard, in order; the feature columns follow (see shards.py). ``speech`` and ``words`` hold
# time ranges in seconds from the start of the audio, flattened as [start0, end0, start1, end1, ...].
METADATA_COLUMNS = (
    "utt_id", "corpus", "speaker", "gender", "session", "split", "style", "emotion",
    "arousal", "valence", "dominance", "rater_hist", "speech", "words", "duration_s",
)


@dataclass(frozen=True)
class UtteranceRecord:
    """One utterance as an adapter finds it on disk, before audio is decoded.

    Attributes:
        utt_id: Corpus-unique id (the file stem for the distributed corpora).
        corpus: Corpus name as given to ``emotune ingest --corpus`` (e.g. ``iemocap``).
        audio_path: Absolute path of the audio file, inside the corpus root.
        speaker: Corpus-unique speaker id (``"Ses01F"``, ``"msp_0042"``); never empty.
        gender: ``"F"``, ``"M"`` or None when unknown.
        session: Recording session (IEMOCAP/MSP-IMPROV), chapter (LibriSpeech) or None.
        split: Predefined partition (``train``/``validation``/``test``/...), or None.
        style: One of :data:`STYLES`.
        emotion: Canonical category from :data:`EMOTION_VOCAB`, or None (no label or no agreement).
        arousal: Consensus arousal on the corpus scale, or None.
        valence: Consensus valence on the corpus scale, or None.
        dominance: Consensus dominance on the corpus scale, or None.
        rater_hist: Votes per category of :data:`EMOTION_VOCAB` (same order), for fuzzy labels; None if unknown.
        words: Word time ranges in seconds from the start of the utterance's audio, flattened as
            ``(start0, end0, start1, end1, ...)`` and sorted by start, when the corpus ships word alignments;
            None otherwise. Each word needs ``0 <= start <= end``; words may touch or overlap. The shard
            column is null for None and for an empty tuple.
        segment: ``(start_s, end_s)`` of the utterance inside ``audio_path`` when one file holds many utterances
            (AMI meetings cut into chunks); ingestion decodes only that part, and ``words`` and the shard's
            ``speech`` and ``duration_s`` are relative to it. None (the default): the whole file. Not a shard
            column (the ``utt_id`` of such records names the offset).
    """

    utt_id: str
    corpus: str
    audio_path: Path
    speaker: str
    gender: str | None = None
    session: str | None = None
    split: str | None = None
    style: str = "acted"
    emotion: str | None = None
    arousal: float | None = None
    valence: float | None = None
    dominance: float | None = None
    rater_hist: tuple[float, ...] | None = None
    words: tuple[float, ...] | None = None
    segment: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.utt_id:
            raise ValueError("utt_id must be non-empty")
        if not self.speaker:
            raise ValueError(f"{self.utt_id}: speaker must be non-empty")
        if self.gender is not None and self.gender not in GENDERS:
            raise ValueError(f"{self.utt_id}: gender must be one of {GENDERS} or None, got {self.gender!r}")
        if self.style not in STYLES:
            raise ValueError(f"{self.utt_id}: style must be one of {STYLES}, got {self.style!r}")
        if self.emotion is not None and self.emotion not in EMOTION_VOCAB:
            raise ValueError(f"{self.utt_id}: emotion must be one of {EMOTION_VOCAB} or None, got {self.emotion!r}")
        if self.rater_hist is not None and len(self.rater_hist) != len(EMOTION_VOCAB):
            raise ValueError(
                f"{self.utt_id}: rater_hist must have {len(EMOTION_VOCAB)} entries (EMOTION_VOCAB order), "
                f"got {len(self.rater_hist)}"
            )
        if self.words is not None:
            _check_words(self.utt_id, self.words)
        if self.segment is not None:
            _check_segment(self.utt_id, self.segment)

    def metadata(self) -> dict:
        """The record's shard metadata columns (everything but ``speech``, duration and features)."""
        return {
            "utt_id": self.utt_id, "corpus": self.corpus, "speaker": self.speaker, "gender": self.gender,
            "session": self.session, "split": self.split, "style": self.style, "emotion": self.emotion,
            "arousal": self.arousal, "valence": self.valence, "dominance": self.dominance,
            "rater_hist": list(self.rater_hist) if self.rater_hist is not None else None,
            # An empty tuple (aligned, no word found) is stored as null too: null means "no word timing".
            "words": list(self.words) if self.words else None,
        }


def _check_segment(utt_id: str, segment: tuple[float, float]) -> None:
    """Raise ValueError unless ``segment`` is a ``(start_s, end_s)`` tuple of finite seconds, ``0 <= start < end``."""
    if not isinstance(segment, tuple) or len(segment) != 2 or any(
            isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) for t in segment):
        raise ValueError(f"{utt_id}: segment must be a (start_s, end_s) tuple of finite seconds into the audio "
                         f"file, got {segment!r}")
    if not 0 <= segment[0] < segment[1]:
        raise ValueError(f"{utt_id}: segment must satisfy 0 <= start < end (seconds), got {segment!r}")


def _check_words(utt_id: str, words: tuple[float, ...]) -> None:
    """Raise ValueError unless ``words`` is a flat ``(start, end, ...)`` tuple of sorted, valid time ranges."""
    layout = "flat (start0, end0, start1, end1, ...) seconds"
    if not isinstance(words, tuple):
        raise ValueError(f"{utt_id}: words must be a tuple, {layout}, got {type(words).__name__}")
    if len(words) % 2:
        raise ValueError(f"{utt_id}: words must have an even length, {layout}, got {len(words)} values")
    for i, t in enumerate(words):
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t):
            raise ValueError(f"{utt_id}: words must be finite numbers ({layout}), got {t!r} at index {i}")
    starts, ends = words[0::2], words[1::2]
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        if not 0 <= s <= e:
            raise ValueError(f"{utt_id}: word {k} must satisfy 0 <= start <= end (seconds), got start {s}, end {e}")
        if k and s < starts[k - 1]:
            raise ValueError(f"{utt_id}: words must be sorted by start time, got word {k} starting at {s} after "
                             f"word {k - 1} starting at {starts[k - 1]}")

"""Decode an audio file to float32 mono at the project rate and check it is usable (DESIGN.md, Nothing lost).

Ingestion calls :func:`load_audio` once per utterance. A file that is missing, cannot be decoded, claims an
implausible sample rate, is longer than ``max_seconds``, is empty, holds NaN/inf samples, is shorter than one
analysis window or is digitally silent raises :class:`AudioCheckError` with a machine-readable ``reason``;
ingestion quarantines it with that reason and goes on with the rest of the corpus.

The header is read before any sample: a sample rate outside [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`]
(a rate of 0 would divide by zero, 1 Hz would turn a 4 KB file into hours at 16 kHz) or a duration over
``max_seconds`` is refused without decoding, and decoding stops at ``max_seconds`` whatever the header claimed.
Samples are down-mixed block by block, so one file never holds more than ``max_seconds`` x its rate float32
values (plus one block of a few MB and the 16 kHz result): 600 s at 48 kHz is 115 MB.

Decoding uses libsndfile through ``soundfile`` (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1) and falls back to
``librosa.load`` (audioread/ffmpeg) for anything else, with the same header checks (audioread's header).
Resampling uses soxr at its "HQ" quality, the same engine and setting as ``librosa.resample(res_type="soxr_hq")``,
called directly to skip librosa's per-call overhead; the output length is ``ceil(n * sr / file_sr)``, as
librosa's. Apart from down-mixing and resampling the samples are returned as decoded: no clipping, normalisation or
DC removal, so features see the corpus's own levels.

A ``segment=(start_s, end_s)`` decodes only that part of the file (seeking, not decoding what comes before), for
corpora whose files hold many utterances (AMI meetings cut into chunks): every check then concerns the segment, so
``max_seconds`` bounds the segment, not the file, and a segment past the file's end is ``empty``.

:func:`speech_regions` finds where the speech is in a decoded signal (an energy detector); ingestion stores its
result in the shards' ``speech`` column so training can centre crops and cut windows over speech only.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from data_io.schema import SAMPLE_RATE

REASONS = ("missing", "decode_error", "bad_sample_rate", "too_long", "empty", "non_finite", "too_short", "silent")

# Plausible sample rates of recorded speech: telephone speech is 8 kHz and studio audio at most 384 kHz. A header
# outside this range is damaged or hostile; checked before decoding.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
# Longest file ingested by default, in seconds (``emotune ingest --max-seconds``): utterances last seconds, and
# the limit bounds the memory one file may take (see the module docstring).
DEFAULT_MAX_SECONDS = 600.0
# Values read per block while down-mixing (about 4 MB of float32 whatever the channel count).
_BLOCK_VALUES = 1 << 20

# A file whose peak |x| stays below -80 dBFS carries no usable signal: 16-bit PCM dither alone is ~-90 dBFS
# and a quiet but real recording peaks well above -60 dBFS. Checked on the final mono signal, so a stereo file
# whose channels cancel in the down-mix is caught too.
SILENCE_PEAK = 1e-4

# Defaults of speech_regions, exactly its keyword arguments (``speech_regions(y, sr, **SPEECH_DETECTION)`` is the
# default call); ingestion records them, with SPEECH_REF_PERCENTILE, in every shard manifest.
SPEECH_DETECTION = {"frame_s": 0.025, "hop_s": 0.010, "range_db": 35.0, "noise_margin_db": 10.0,
                    "floor_dbfs": -55.0, "min_gap_s": 0.15,
                    "min_speech_s": 0.05}
# Percentile of the frame levels taken as the signal's maximum: a click or a plosive in the loudest 1 % of frames
# does not raise the threshold, yet speech that fills only a few percent of a recording still sets it.
SPEECH_REF_PERCENTILE = 99.0
# The noise floor: the level of the quietest tenth of the frames (pauses, leading and trailing silence).
SPEECH_NOISE_PERCENTILE = 10.0
# Added to a frame's mean square before the log, so digital silence gives -120 dB instead of -inf.
_LEVEL_EPS = 1e-12


class AudioCheckError(Exception):
    """An audio file failed a check; ingestion quarantines it.

    Attributes:
        reason: One of :data:`REASONS`.
        detail: What was found, for a human (e.g. ``"4.9 ms < one analysis window of 25.0 ms"``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
        # Both go to Exception.args so the error survives pickling (Ray tasks send exceptions between
        # processes).
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _check_header(path: Path, file_sr: float, seconds: float | None, max_seconds: float) -> None:
    """Refuse an implausible sample rate or a too long file before any sample is decoded."""
    if not MIN_SAMPLE_RATE <= file_sr <= MAX_SAMPLE_RATE:
        raise AudioCheckError("bad_sample_rate", f"{path.name}: the header claims {file_sr:g} Hz; "
                                                 f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz must hold")
    if seconds is not None and seconds > max_seconds:
        raise AudioCheckError("too_long", f"{path.name}: {seconds:.1f} s > the {max_seconds:g} s limit "
                                          f"(--max-seconds)")


def _read_mono(f: sf.SoundFile, path: Path, max_seconds: float, start: int = 0,
               count: int | None = None) -> np.ndarray:
    """Down-mix ``f`` block by block into float32 mono from frame ``start``, stopping after ``count`` frames (all
    when None) or one sample past ``max_seconds``."""
    limit = int(max_seconds * f.samplerate)
    stop = limit + 1 if count is None else min(count, limit + 1)
    # libsndfile trims a truncated file's frame count already
    expected = min(max(f.frames - start, 0), stop)
    channels = f.channels
    out = np.empty(expected, dtype=np.float32)
    n = 0
    if start >= f.frames:  # a segment past the end: nothing to read (seeking there is an error)
        return out
    if start:
        f.seek(start)
    block = max(1, _BLOCK_VALUES // channels)
    while n < stop:
        data = f.read(min(block, stop - n), dtype="float32", always_2d=True)
        m = len(data)
        if m == 0:
            break
        if n + m > len(out):  # more samples than the header said: grow, still bounded by the limit
            out = np.resize(out, min(max(2 * len(out), n + m), stop))
        out[n:n + m] = data[:, 0] if channels == 1 else data.mean(axis=1, dtype=np.float32)
        n += m
    if n > limit:
        raise AudioCheckError("too_long", f"{path.name}: more than {max_seconds:g} s of audio at "
                                          f"{f.samplerate} Hz (--max-seconds)")
    return out[:n]


def _segment_seconds(seconds: float | None, segment: tuple[float, float] | None) -> float | None:
    """The length of what is decoded: the file's (``seconds``), or the part of ``segment`` inside the file."""
    if segment is None or seconds is None:
        return seconds
    return max(0.0, min(segment[1], seconds) - segment[0])


def _decode(path: Path, max_seconds: float,
            segment: tuple[float, float] | None = None) -> tuple[np.ndarray, int, int]:
    """Check the header, then decode to float32 mono: ``(samples, file sample rate, channels)``."""
    try:
        f = sf.SoundFile(path)
    except Exception as sf_err:  # libsndfile does not know the format, or the header is broken: try librosa
        return _decode_fallback(path, max_seconds, sf_err, segment)
    with f:
        seconds = f.frames / f.samplerate if f.samplerate > 0 else None
        _check_header(path, f.samplerate, _segment_seconds(seconds, segment), max_seconds)
        start, count = 0, None
        if segment is not None:
            start = round(segment[0] * f.samplerate)
            count = round(segment[1] * f.samplerate) - start
        try:
            return _read_mono(f, path, max_seconds, start, count), int(f.samplerate), f.channels
        except AudioCheckError:
            raise
        except Exception as err:  # a broken block after a good header
            raise AudioCheckError("decode_error", f"{path.name}: soundfile: {type(err).__name__}: {err}") from err


def _decode_fallback(path: Path, max_seconds: float, sf_err: Exception,
                     segment: tuple[float, float] | None = None) -> tuple[np.ndarray, int, int]:
    import audioread
    import librosa

    def fail(err: Exception) -> AudioCheckError:
        return AudioCheckError("decode_error", f"{path.name}: soundfile: {type(sf_err).__name__}: {sf_err}; "
                                               f"librosa.load: {type(err).__name__}: {err}")

    try:
        with audioread.audio_open(str(path)) as f:
            file_sr = f.samplerate
            _check_header(path, file_sr, None, max_seconds)  # before duration, which divides by the rate
            _check_header(path, file_sr, _segment_seconds(f.duration, segment), max_seconds)
    except AudioCheckError:
        raise
    except Exception as err:
        raise fail(err) from sf_err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns about falling back to (deprecated) audioread
            # duration bounds what is decoded even when the header's length was wrong.
            offset, duration = 0.0, max_seconds + 1.0 / file_sr
            if segment is not None:
                offset, duration = segment[0], min(duration, segment[1] - segment[0])
            y, file_sr = librosa.load(path, sr=None, mono=False, dtype=np.float32, offset=offset,
                                      duration=duration)
    except Exception as err:
        raise fail(err) from sf_err
    _check_header(path, file_sr, None, max_seconds)
    y = np.asarray(y, dtype=np.float32)
    channels = 1 if y.ndim == 1 else y.shape[0]
    if y.ndim > 1:
        y = y.mean(axis=0, dtype=np.float32)
    if len(y) > max_seconds * file_sr:
        raise AudioCheckError("too_long", f"{path.name}: more than {max_seconds:g} s of audio (--max-seconds)")
    return y, int(file_sr), channels


def load_audio(path: Path, sr: int = SAMPLE_RATE, min_samples: int = 1,
               max_seconds: float = DEFAULT_MAX_SECONDS, *,
               segment: tuple[float, float] | None = None) -> np.ndarray:
    """Decode an audio file to float32 mono at ``sr`` and check that it is usable.

    Checks run in this order, the first failure raising: file missing; decode failure (any exception, e.g. a
    truncated or garbage file); a header sample rate outside [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`]
    (``bad_sample_rate``) or a header duration over ``max_seconds`` (``too_long``), both before decoding; more
    than ``max_seconds`` decoded (``too_long``, decoding stops there); zero samples; any NaN/inf sample; fewer
    than ``min_samples`` samples after resampling; silent (peak ``|x|`` below :data:`SILENCE_PEAK`, -80 dBFS).

    Args:
        path: Audio file (WAV/FLAC/OGG/MP3 through soundfile; other formats through ``librosa.load``).
        sr: Target sample rate in Hz; the file is resampled with soxr (HQ) when its rate differs.
        min_samples: Shortest acceptable length at ``sr``, usually one analysis window
            (``data_io.features.min_samples``).
        max_seconds: Longest acceptable file (or segment); it bounds the memory one file takes.
        segment: ``(start_s, end_s)`` seconds into the file: decode only that part (cut at the file's end);
            None decodes the whole file. Every check then applies to the segment.

    Returns:
        The signal, shape ``(n,)``, float32, channels averaged, otherwise as decoded.

    Raises:
        AudioCheckError: With ``reason`` one of :data:`REASONS` and a ``detail`` saying what was found.
        ValueError: ``sr``, ``min_samples`` or ``max_seconds`` is not positive, or ``segment`` is not two finite
            numbers with ``0 <= start < end``.
    """
    if sr <= 0:
        raise ValueError(f"sr must be > 0, got {sr}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if not max_seconds > 0 or not math.isfinite(max_seconds):
        raise ValueError(f"max_seconds must be a finite number > 0, got {max_seconds}")
    if segment is not None:
        try:
            start_s, end_s = (float(t) for t in segment)
        except (TypeError, ValueError):
            raise ValueError(f"segment must be (start_s, end_s) seconds into the file, got {segment!r}") from None
        if not (math.isfinite(start_s) and math.isfinite(end_s) and 0 <= start_s < end_s):
            raise ValueError(f"segment must satisfy 0 <= start_s < end_s (finite seconds), got {segment!r}")
        segment = (start_s, end_s)
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise AudioCheckError("missing", f"{path} {what}")

    y, file_sr, channels = _decode(path, max_seconds, segment)
    n = len(y)
    if n == 0:
        where = "" if segment is None else f" in the segment {segment[0]:g}-{segment[1]:g} s"
        raise AudioCheckError("empty",
                              f"{path.name}: 0 samples decoded{where} ({channels} channel(s) at {file_sr} Hz)")

    # One pass finds NaN and inf: max() propagates NaN, and inf stays inf. A non-finite sample in any channel
    # makes the down-mixed sample non-finite (inf - inf is NaN), so checking the mix counts the same samples.
    peak_in = float(np.max(np.abs(y)))
    if not math.isfinite(peak_in):
        bad = ~np.isfinite(y)
        raise AudioCheckError(
            "non_finite",
            f"{path.name}: {int(bad.sum())} of {n} samples are NaN or inf "
            f"(first at sample {int(np.argmax(bad))})",
        )

    if file_sr != sr:
        # Fixed to ceil(n * sr / file_sr) as librosa.resample does, so lengths agree with librosa.load.
        target = math.ceil(n * sr / file_sr)
        y = soxr.resample(y, file_sr, sr, quality="HQ")
        if len(y) != target:
            y = y[:target] if len(y) > target else np.pad(y, (0, target - len(y)))
    y = np.ascontiguousarray(y, dtype=np.float32)

    if len(y) < min_samples:
        raise AudioCheckError(
            "too_short",
            f"{path.name}: {1000 * len(y) / sr:.1f} ms ({len(y)} samples at {sr} Hz) < one analysis window "
            f"of {1000 * min_samples / sr:.1f} ms ({min_samples} samples)",
        )
    peak = float(np.max(np.abs(y)))
    if peak < SILENCE_PEAK:
        dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
        raise AudioCheckError(
            "silent", f"{path.name}: peak |x| {peak:.2e} ({dbfs:.1f} dBFS) < {SILENCE_PEAK:.0e} (-80 dBFS)"
        )
    return y


def _frame_mean_square(y: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Mean square of frames ``[i * hop, i * hop + frame)`` covering every sample; the last one may be shorter."""
    n = len(y)
    if n <= frame:
        return np.array([np.dot(y, y) / n])
    # A strided view and einsum: no copy of the frames and no cumulative sum, so memory stays O(frames) even for
    # hour-long recordings, and a 5 min signal takes a few ms. as_strided directly: sliding_window_view's checks
    # cost more than the arithmetic on a 3 s utterance.
    m = 1 + (n - frame) // hop
    step = y.strides[0]
    windows = np.lib.stride_tricks.as_strided(y, shape=(m, frame), strides=(hop * step, step), writeable=False)
    ms = np.einsum("ij,ij->i", windows, windows) / frame
    if (m - 1) * hop + frame < n:  # the last full frame stops short of the end: one shorter frame covers the rest
        rest = y[m * hop:]
        ms = np.append(ms, np.dot(rest, rest) / len(rest))
    return ms


def speech_regions(y: np.ndarray, sr: int, *, frame_s: float = 0.025, hop_s: float = 0.010, range_db: float = 35.0,
                   noise_margin_db: float = 10.0, floor_dbfs: float = -55.0, min_gap_s: float = 0.15,
                   min_speech_s: float = 0.05) -> np.ndarray:
    """Find the speech in a signal by frame energy (a level-threshold voice activity detector).

    1. The signal is cut into frames of ``frame_s`` every ``hop_s`` (the last frame is shortened to end at the
       last sample, so every sample is in a frame) and each frame's level is its RMS in dB relative to full
       scale (``10 log10(mean(y**2) + 1e-12)``: a full-scale square wave is 0 dB, a full-scale sine -3 dB,
       digital silence -120 dB).
    2. The reference is the :data:`SPEECH_REF_PERCENTILE` (99th) percentile of the frame levels (nearest rank),
       a maximum that one click cannot raise; the noise floor is the :data:`SPEECH_NOISE_PERCENTILE` (10th)
       percentile. A frame is speech when its level is at least ``reference - range_db``, at least
       ``noise + noise_margin_db`` (capped at ``reference - noise_margin_db``, so a recording whose background
       noise is only 16-26 dB below the voice, as on a telephone line, still has pauses), and above ``floor_dbfs``.
    3. Each frame stands for the ``hop_s`` of time around its centre (the first from 0, the last to the end),
       so runs of speech frames become ``[start, end]`` times that tile the signal without overlap. Edges are
       accurate to about a frame and err outwards: a frame that only touches a loud burst is already loud
       enough, so a region can start and end up to ``(frame_s + hop_s) / 2`` (17.5 ms) beyond the burst.
    4. Regions separated by less than ``min_gap_s`` are merged (pauses between words stay inside), then regions
       shorter than ``min_speech_s`` are dropped (clicks, breaths). Merging first lets a short burst next to
       speech join it instead of being dropped.

    Being energy-based it cannot tell speech from other sound: stationary noise above the floor and within
    ``range_db`` of the loudest frames counts as speech (at the defaults, background noise less than about
    35 dB below the speech), and a signal that is noise throughout is all speech if it is above the floor.
    Vectorised: a 3 s utterance takes well under 0.1 ms, a 5 min signal at 16 kHz a few milliseconds.

    Args:
        y: Mono signal, shape ``(n,)``, floating point on the full-scale ``[-1, 1]`` range (as
            :func:`load_audio` returns it).
        sr: Sample rate of ``y`` in Hz.
        frame_s: Frame length in seconds.
        hop_s: Frame step in seconds.
        range_db: How far below the reference level a frame may be and still count as speech, in dB.
        noise_margin_db: How far above the noise floor a frame must be to count as speech, in dB.
        floor_dbfs: Frames at or below this level (dB re full scale) are never speech.
        min_gap_s: Gaps shorter than this between two regions are closed.
        min_speech_s: Regions shorter than this (after merging) are dropped.

    Returns:
        Float64 array of shape ``(k, 2)``: ``[start_s, end_s]`` per region, sorted, disjoint, within
        ``[0, len(y) / sr]``; ``(0, 2)`` when there is no speech (or ``y`` is empty).

    Raises:
        ValueError: ``y`` is not 1-D floating point or holds NaN/inf, ``sr``, ``frame_s``, ``hop_s`` or
            ``range_db`` is not positive, ``min_gap_s`` or ``min_speech_s`` is negative, or a frame or hop is
            shorter than one sample.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind != "f":
        raise ValueError(f"y must be a 1-D floating-point signal on the [-1, 1] scale, got shape {y.shape} and "
                         f"dtype {y.dtype}; pass the output of load_audio (or scale integer PCM to [-1, 1])")
    if sr <= 0:
        raise ValueError(f"sr must be > 0, got {sr}")
    for name, value in (("frame_s", frame_s), ("hop_s", hop_s), ("range_db", range_db)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    for name, value in (("min_gap_s", min_gap_s), ("min_speech_s", min_speech_s)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    frame, hop = round(frame_s * sr), round(hop_s * sr)
    if frame < 1 or hop < 1:
        raise ValueError(f"frame_s and hop_s must be at least one sample (1 / sr = {1 / sr:g} s), got frame_s "
                         f"{frame_s} and hop_s {hop_s} at sr {sr}")
    n = len(y)
    if n == 0:
        return np.zeros((0, 2))

    ms = _frame_mean_square(y, frame, hop)
    total = float(ms.sum())  # NaN or inf in any frame makes the sum non-finite: one scalar test
    if not math.isfinite(total):
        raise ValueError(f"y must be finite, got NaN or inf in {int((~np.isfinite(ms)).sum())} of {len(ms)} "
                         f"frames; load_audio quarantines such files")
    # Levels are compared in the mean-square domain (the dB threshold converted once), not by taking the log of
    # every frame: the same decisions, and on a 3 s utterance each array operation saved is a few percent. The
    # reference is the percentile by nearest rank through one partition, for the same reason.
    power = ms + _LEVEL_EPS
    rank = round(SPEECH_REF_PERCENTILE / 100.0 * (len(power) - 1))
    noise_rank = round(SPEECH_NOISE_PERCENTILE / 100.0 * (len(power) - 1))
    ordered = np.partition(power, (noise_rank, rank))
    reference_db = 10.0 * math.log10(float(ordered[rank]))
    noise_db = 10.0 * math.log10(float(ordered[noise_rank]))
    threshold_db = max(reference_db - range_db, min(noise_db + noise_margin_db, reference_db - noise_margin_db))
    speech = np.zeros(len(power) + 2, dtype=bool)
    if threshold_db > floor_dbfs:  # at or above reference - range_db ...
        np.greater_equal(power, 10.0 ** (threshold_db / 10.0), out=speech[1:-1])
    else:  # ... and strictly above the floor
        np.greater(power, 10.0 ** (floor_dbfs / 10.0), out=speech[1:-1])
    change = np.flatnonzero(speech[1:] != speech[:-1])  # frame indices where runs start, then end, alternately
    if len(change) == 0:
        return np.zeros((0, 2))

    # Frame i owns [centre_i - hop/2, centre_i + hop/2); the first owns from 0, the last to the end. A run of
    # frames [a, b) therefore spans [bound(a), bound(b)).
    duration = n / sr
    bounds = (change * hop + (frame - hop) / 2) / sr
    np.clip(bounds, 0.0, duration, out=bounds)
    if change[0] == 0:
        bounds[0] = 0.0
    if change[-1] == len(power):
        bounds[-1] = duration
    starts, ends = bounds[0::2], bounds[1::2]
    split = starts[1:] - ends[:-1] >= min_gap_s  # gaps that stay open
    starts = starts[np.concatenate(([True], split))]
    ends = ends[np.concatenate((split, [True]))]
    keep = (ends - starts >= min_speech_s) & (ends > starts)
    return np.stack([starts[keep], ends[keep]], axis=1)

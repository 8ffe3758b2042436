"""Decode an audio file to float32 mono at the project rate and check it is usable (DESIGN.md, Nothing lost).

Ingestion calls :func:`load_audio` once per utterance. A file that is missing, cannot be decoded, is empty,
holds NaN/inf samples, is shorter than one analysis window or is digitally silent raises
:class:`AudioCheckError` with a machine-readable ``reason``; ingestion quarantines it with that reason and
goes on with the rest of the corpus.

Decoding uses libsndfile through ``soundfile`` (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1) and falls back to
``librosa.load`` (audioread/ffmpeg) for anything else. Resampling uses soxr at its "HQ" quality, the same
engine and setting as ``librosa.resample(res_type="soxr_hq")``, called directly to skip librosa's per-call
overhead; the output length is ``ceil(n * sr / file_sr)``, as librosa's. Apart from down-mixing and
resampling the samples are returned as decoded: no clipping, normalisation or DC removal, so features see the
corpus's own levels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from data_io.schema import SAMPLE_RATE

REASONS = ("missing", "decode_error", "empty", "non_finite", "too_short", "silent")

# A file whose peak |x| stays below -80 dBFS carries no usable signal: 16-bit PCM dither alone is ~-90 dBFS
# and a quiet but real recording peaks well above -60 dBFS. Checked on the final mono signal, so a stereo file
# whose channels cancel in the down-mix is caught too.
SILENCE_PEAK = 1e-4


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


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Decode to a float32 ``(samples, channels)`` array and the file's sample rate."""
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True)
        return data, int(file_sr)
    except Exception as sf_err:  # libsndfile does not know the format, or the file is broken: try librosa
        import librosa

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # librosa warns about falling back to (deprecated) audioread
                y, file_sr = librosa.load(path, sr=None, mono=False, dtype=np.float32)
        except Exception as lr_err:
            raise AudioCheckError(
                "decode_error",
                f"{path.name}: soundfile: {type(sf_err).__name__}: {sf_err}; "
                f"librosa.load: {type(lr_err).__name__}: {lr_err}",
            ) from sf_err
        y = np.asarray(y, dtype=np.float32)
        return (y[:, None] if y.ndim == 1 else y.T), int(file_sr)


def load_audio(path: Path, sr: int = SAMPLE_RATE, min_samples: int = 1) -> np.ndarray:
    """Decode an audio file to float32 mono at ``sr`` and check that it is usable.

    Checks run in this order, the first failure raising: file missing; decode failure (any exception, e.g. a
    truncated or garbage file); zero samples; any NaN/inf sample; fewer than ``min_samples`` samples after
    resampling; silent (peak ``|x|`` below :data:`SILENCE_PEAK`, -80 dBFS).

    Args:
        path: Audio file (WAV/FLAC/OGG/MP3 through soundfile; other formats through ``librosa.load``).
        sr: Target sample rate in Hz; the file is resampled with soxr (HQ) when its rate differs.
        min_samples: Shortest acceptable length at ``sr``, usually one analysis window
            (``data_io.features.min_samples``).

    Returns:
        The signal, shape ``(n,)``, float32, channels averaged, otherwise as decoded.

    Raises:
        AudioCheckError: With ``reason`` one of :data:`REASONS` and a ``detail`` saying what was found.
        ValueError: ``sr`` or ``min_samples`` is not positive.
    """
    if sr <= 0:
        raise ValueError(f"sr must be > 0, got {sr}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise AudioCheckError("missing", f"{path} {what}")

    data, file_sr = _decode(path)
    n, channels = data.shape
    if n == 0:
        raise AudioCheckError("empty",
                              f"{path.name}: 0 samples decoded ({channels} channel(s) at {file_sr} Hz)")

    # One pass finds NaN and inf: max() propagates NaN, and inf stays inf.
    peak_in = float(np.max(np.abs(data)))
    if not math.isfinite(peak_in):
        bad = ~np.isfinite(data).all(axis=1)
        raise AudioCheckError(
            "non_finite",
            f"{path.name}: {int(bad.sum())} of {n} samples are NaN or inf "
            f"(first at sample {int(np.argmax(bad))})",
        )

    y = data[:, 0] if channels == 1 else data.mean(axis=1, dtype=np.float32)
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

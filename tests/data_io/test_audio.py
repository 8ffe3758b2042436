"""data_io.audio: each quarantine reason is raised for the right file; decoding, down-mix and resampling."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import soundfile as sf

from data_io.audio import REASONS, SILENCE_PEAK, AudioCheckError, load_audio
from data_io.schema import SAMPLE_RATE


def _tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _reason(path, **kwargs) -> AudioCheckError:
    with pytest.raises(AudioCheckError) as info:
        load_audio(path, **kwargs)
    return info.value


def test_missing(tmp_path):
    err = _reason(tmp_path / "nope.wav")
    assert err.reason == "missing"
    assert "nope.wav" in err.detail
    assert _reason(tmp_path).reason == "missing"  # a directory is not an audio file


def test_garbage_bytes_named_wav_is_decode_error(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not RIFF audio" * 50)
    assert _reason(path).reason == "decode_error"


def test_truncated_header_is_decode_error(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(0.5, SAMPLE_RATE), SAMPLE_RATE)
    path.write_bytes(path.read_bytes()[:20])
    assert _reason(path).reason == "decode_error"


def test_zero_length_wav_is_empty(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    err = _reason(path)
    assert err.reason == "empty"
    assert "0 samples" in err.detail


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    y = _tone(0.5, SAMPLE_RATE)
    y[1000:1003] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, y, SAMPLE_RATE, subtype="FLOAT")
    err = _reason(path)
    assert err.reason == "non_finite"
    assert "3 of 8000" in err.detail and "sample 1000" in err.detail


def test_non_finite_is_checked_before_length(tmp_path):
    y = np.full(80, np.nan, dtype=np.float32)
    path = tmp_path / "short_nan.wav"
    sf.write(path, y, SAMPLE_RATE, subtype="FLOAT")
    assert _reason(path, min_samples=400).reason == "non_finite"


def test_all_zeros_is_silent(tmp_path):
    path = tmp_path / "zeros.wav"
    sf.write(path, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    err = _reason(path)
    assert err.reason == "silent"
    assert "-80 dBFS" in err.detail


def test_below_threshold_is_silent_and_just_above_is_not(tmp_path):
    quiet, ok = tmp_path / "quiet.wav", tmp_path / "ok.wav"
    sf.write(quiet, _tone(0.1, SAMPLE_RATE, amp=0.5 * SILENCE_PEAK), SAMPLE_RATE, subtype="FLOAT")
    sf.write(ok, _tone(0.1, SAMPLE_RATE, amp=2 * SILENCE_PEAK), SAMPLE_RATE, subtype="FLOAT")
    assert _reason(quiet).reason == "silent"
    assert load_audio(ok).shape == (1600,)


def test_stereo_that_cancels_in_the_downmix_is_silent(tmp_path):
    y = _tone(0.2, SAMPLE_RATE)
    path = tmp_path / "anti.wav"
    sf.write(path, np.stack([y, -y], axis=1), SAMPLE_RATE, subtype="FLOAT")
    assert _reason(path).reason == "silent"


def test_five_ms_is_too_short_for_a_25_ms_window(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, _tone(0.005, SAMPLE_RATE), SAMPLE_RATE)
    err = _reason(path, min_samples=400)
    assert err.reason == "too_short"
    assert "5.0 ms" in err.detail and "25.0 ms" in err.detail
    assert str(err) == f"too_short: {err.detail}"
    assert load_audio(path, min_samples=80).shape == (80,)  # exactly one window is enough


def test_too_short_is_judged_after_resampling(tmp_path):
    path = tmp_path / "short8k.wav"
    sf.write(path, _tone(0.030, 8000), 8000)  # 240 samples at 8 kHz -> 480 at 16 kHz
    assert load_audio(path, min_samples=400).shape == (480,)
    assert _reason(path, min_samples=481).reason == "too_short"


def test_44k_stereo_comes_back_mono_16k(tmp_path):
    n = 44_100 + 123
    left, right = _tone(n / 44_100, 44_100, amp=0.4), _tone(n / 44_100, 44_100, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44_100, subtype="PCM_16")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == math.ceil(n * SAMPLE_RATE / 44_100)
    # mean of the channels: a 440 Hz tone of amplitude 0.3 (no clipping or normalisation)
    mid = y[2000:-2000]
    assert np.max(np.abs(mid)) == pytest.approx(0.3, abs=0.01)
    spectrum = np.abs(np.fft.rfft(mid))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(mid) == pytest.approx(440, abs=2)


def test_8k_is_resampled(tmp_path):
    path = tmp_path / "tel.flac"
    sf.write(path, _tone(1.0, 8000, freq=300), 8000)
    y = load_audio(path)
    assert len(y) == 16_000
    spectrum = np.abs(np.fft.rfft(y[1000:-1000]))
    assert np.argmax(spectrum) * SAMPLE_RATE / 14_000 == pytest.approx(300, abs=2)
    above_old_nyquist = spectrum[int(4000 * 14_000 / SAMPLE_RATE):]
    assert above_old_nyquist.max() < 1e-3 * spectrum.max()


def test_native_rate_is_returned_unchanged(tmp_path):
    y = _tone(0.25, SAMPLE_RATE)
    path = tmp_path / "same.wav"
    sf.write(path, y, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), y)


def test_error_pickles_with_reason_and_detail():
    err = pickle.loads(pickle.dumps(AudioCheckError("too_short", "4.9 ms < one analysis window of 25.0 ms")))
    assert (err.reason, err.detail) == ("too_short", "4.9 ms < one analysis window of 25.0 ms")
    assert str(err) == "too_short: 4.9 ms < one analysis window of 25.0 ms"
    assert set(REASONS) == {"missing", "decode_error", "empty", "non_finite", "too_short", "silent"}
    with pytest.raises(ValueError, match="reason must be one of"):
        AudioCheckError("bad", "x")

"""data_io.audio: each quarantine reason is raised for the right file; decoding, down-mix and resampling."""

from __future__ import annotations

import inspect
import math
import pickle
import struct
import time

import numpy as np
import pytest
import soundfile as sf

from data_io.audio import (
    MAX_SAMPLE_RATE,
    REASONS,
    SILENCE_PEAK,
    SPEECH_DETECTION,
    AudioCheckError,
    load_audio,
    speech_regions,
)
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


def _patched_wav(path, sample_rate: int | None = None, data_bytes: int | None = None, keep: int | None = None):
    """A 1 s 16 kHz PCM_16 WAV whose header fields (canonical 44-byte layout) are overwritten."""
    sf.write(path, _tone(1.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    b = bytearray(path.read_bytes())
    if sample_rate is not None:
        b[24:28] = struct.pack("<I", sample_rate)
    if data_bytes is not None:
        b[40:44] = struct.pack("<I", data_bytes)
    path.write_bytes(bytes(b[:keep] if keep is not None else b))
    return path


@pytest.mark.parametrize("rate", [0, 1, 999, MAX_SAMPLE_RATE + 1, 4_000_000_000])
def test_implausible_sample_rate_is_refused_before_decoding(tmp_path, rate):
    err = _reason(_patched_wav(tmp_path / "rate.wav", sample_rate=rate, keep=4096))
    assert err.reason == "bad_sample_rate", err
    assert f"{rate:g} Hz" in err.detail


def test_longer_than_max_seconds_is_too_long(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _tone(3.0, 8000), 8000)
    err = _reason(path, max_seconds=2.5)
    assert err.reason == "too_long" and "3.0 s > the 2.5 s limit" in err.detail
    assert load_audio(path, max_seconds=3.0).shape == (48_000,)
    with pytest.raises(ValueError, match="max_seconds"):
        load_audio(path, max_seconds=0)


def test_truncated_data_decodes_what_is_there_and_a_lying_length_is_bounded(tmp_path):
    cut = _patched_wav(tmp_path / "cut.wav", keep=44 + 2 * 4000)  # header says 1 s, 0.25 s present
    assert load_audio(cut).shape == (4000,)
    lying = _patched_wav(tmp_path / "lying.wav", data_bytes=0xFFFFFFF0)  # claims 37 hours
    assert load_audio(lying).shape == (SAMPLE_RATE,)


def test_block_downmix_equals_the_whole_file_mean(tmp_path, monkeypatch):
    from data_io import audio

    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal((5000, 3))).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, y, SAMPLE_RATE, subtype="FLOAT")
    monkeypatch.setattr(audio, "_BLOCK_VALUES", 999)  # many blocks
    np.testing.assert_array_equal(load_audio(path), y.mean(axis=1, dtype=np.float32))


def test_error_pickles_with_reason_and_detail():
    err = pickle.loads(pickle.dumps(AudioCheckError("too_short", "4.9 ms < one analysis window of 25.0 ms")))
    assert (err.reason, err.detail) == ("too_short", "4.9 ms < one analysis window of 25.0 ms")
    assert str(err) == "too_short: 4.9 ms < one analysis window of 25.0 ms"
    assert set(REASONS) == {"missing", "decode_error", "bad_sample_rate", "too_long", "empty", "non_finite",
                            "too_short", "silent"}
    with pytest.raises(ValueError, match="reason must be one of"):
        AudioCheckError("bad", "x")


# ---- speech_regions ----------------------------------------------------------------------------------------
EDGE_TOL_S = 0.03


def _noise(seconds: float, level_dbfs: float, seed: int) -> np.ndarray:
    """Gaussian noise at an RMS level in dB re full scale."""
    n = int(round(seconds * SAMPLE_RATE))
    return (np.random.default_rng(seed).standard_normal(n) * 10 ** (level_dbfs / 20)).astype(np.float32)


def _bursts(layout: list[tuple[str, float]], seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate ("speech" | "silence", seconds) pieces; speech is a noise burst at -20 dBFS or a tone, silence
    is noise at -75 dBFS (below the -55 dBFS floor, as a quiet room). Returns the signal and the true regions."""
    pieces, truth, t = [], [], 0.0
    for k, (kind, seconds) in enumerate(layout):
        if kind == "silence":
            pieces.append(_noise(seconds, -75.0, seed + k))
        elif kind == "tone":
            pieces.append(_tone(seconds, SAMPLE_RATE, freq=220.0, amp=0.2))
        else:
            pieces.append(_noise(seconds, -20.0, seed + k))
        if kind != "silence":
            truth.append((t, t + seconds))
        t += seconds
    return np.concatenate(pieces), truth


def _assert_regions(got: np.ndarray, truth: list[tuple[float, float]]) -> None:
    assert got.shape == (len(truth), 2), f"found {got.tolist()}, expected about {truth}"
    np.testing.assert_allclose(got, np.array(truth), atol=EDGE_TOL_S)


@pytest.mark.parametrize("kind", ["speech", "tone"])
def test_speech_regions_finds_two_bursts_within_30_ms(kind):
    y, truth = _bursts([("silence", 0.3), (kind, 0.4), ("silence", 0.5), (kind, 0.4), ("silence", 0.3)])
    got = speech_regions(y, SAMPLE_RATE)
    _assert_regions(got, truth)
    assert got.dtype == np.float64


def test_speech_regions_merges_a_short_gap_and_keeps_a_long_one():
    y, (a, b) = _bursts([("silence", 0.3), ("speech", 0.4), ("silence", 0.1), ("speech", 0.4), ("silence", 0.3)])
    _assert_regions(speech_regions(y, SAMPLE_RATE), [(a[0], b[1])])  # 0.10 s < min_gap_s 0.15 s
    _assert_regions(speech_regions(y, SAMPLE_RATE, min_gap_s=0.05), [a, b])


def test_speech_regions_drops_clicks_and_reaches_the_signal_ends():
    y, truth = _bursts([("speech", 0.5), ("silence", 0.4), ("speech", 0.02), ("silence", 0.4), ("speech", 0.3)])
    got = speech_regions(y, SAMPLE_RATE)
    _assert_regions(got, [truth[0], truth[2]])  # the 20 ms click is shorter than min_speech_s 50 ms
    assert got[0, 0] == 0.0 and got[-1, 1] == len(y) / SAMPLE_RATE  # clipped to [0, duration], not beyond


def test_speech_regions_finds_nothing_below_the_floor():
    assert speech_regions(_noise(3.0, -65.0, 1), SAMPLE_RATE).shape == (0, 2)
    assert speech_regions(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE).shape == (0, 2)
    assert speech_regions(np.zeros(0, np.float32), SAMPLE_RATE).shape == (0, 2)
    # The same noise 20 dB louder is above the floor: an energy detector calls it speech throughout.
    _assert_regions(speech_regions(_noise(3.0, -45.0, 1), SAMPLE_RATE), [(0.0, 3.0)])


def test_speech_regions_range_is_relative_to_the_loudest_frames():
    # Background at -50 dBFS is above the floor but 30 dB under the bursts: speech only within range_db 25 dB.
    y, truth = _bursts([("silence", 0.3), ("speech", 0.4), ("silence", 0.5), ("speech", 0.4), ("silence", 0.3)])
    y = y + _noise(len(y) / SAMPLE_RATE, -50.0, 7)
    _assert_regions(speech_regions(y, SAMPLE_RATE, range_db=25.0), truth)
    # At range_db 35 the background would count as speech; the noise-floor margin (10 dB) still finds the bursts.
    _assert_regions(speech_regions(y, SAMPLE_RATE, range_db=35.0), truth)
    whole = speech_regions(y, SAMPLE_RATE, range_db=35.0, noise_margin_db=1e-3)  # no margin: noise is speech
    assert len(whole) == 1 and whole[0, 1] - whole[0, 0] > 0.9 * len(y) / SAMPLE_RATE


def test_speech_regions_keeps_pauses_on_a_noisy_line():
    # Telephone hiss 18 dB under the voice: the noise floor, not range_db, sets the threshold.
    y, truth = _bursts([("silence", 0.3), ("speech", 0.4), ("silence", 0.5), ("speech", 0.4), ("silence", 0.3)])
    y = y + _noise(len(y) / SAMPLE_RATE, -38.0, 11)
    _assert_regions(speech_regions(y, SAMPLE_RATE), truth)


def test_speech_regions_on_telephone_rate_and_short_signals():
    y = np.concatenate([np.zeros(2400), _tone(0.5, 8000, amp=0.3), np.zeros(2400)]).astype(np.float32)
    _assert_regions(speech_regions(y, 8000), [(0.3, 0.8)])
    short = _tone(0.02, SAMPLE_RATE)  # shorter than one frame: one frame, then dropped as < min_speech_s
    assert speech_regions(short, SAMPLE_RATE).shape == (0, 2)
    _assert_regions(speech_regions(short, SAMPLE_RATE, min_speech_s=0.0), [(0.0, 0.02)])


def test_speech_detection_constant_is_the_default_call():
    defaults = {k: p.default for k, p in inspect.signature(speech_regions).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert SPEECH_DETECTION == defaults


@pytest.mark.parametrize(("y", "kwargs", "message"), [
    (np.zeros((2, 400), np.float32), {}, r"1-D floating-point signal .* shape \(2, 400\)"),
    (np.zeros(400, np.int16), {}, "dtype int16"),
    (np.array([0.1, np.nan] * 400, np.float32), {}, "must be finite, got NaN or inf"),
    (np.zeros(400, np.float32), {"hop_s": 0.0}, "hop_s must be > 0, got 0.0"),
    (np.zeros(400, np.float32), {"range_db": -3.0}, "range_db must be > 0, got -3.0"),
    (np.zeros(400, np.float32), {"min_gap_s": -0.1}, "min_gap_s must be >= 0, got -0.1"),
    (np.zeros(400, np.float32), {"frame_s": 1e-6}, "at least one sample"),
])
def test_speech_regions_rejects_bad_input(y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        speech_regions(y, SAMPLE_RATE, **kwargs)


def test_speech_regions_is_fast_on_five_minutes():
    # Meeting recordings are chunked with it later: 5 min must take milliseconds, not seconds (printed, not
    # asserted, since test machines are shared).
    rng = np.random.default_rng(0)
    on = np.repeat(rng.uniform(size=300) < 0.6, SAMPLE_RATE)  # 1 s speech / silence blocks
    y = (rng.standard_normal(len(on)) * np.where(on, 0.1, 1e-4)).astype(np.float32)
    t0 = time.perf_counter()
    got = speech_regions(y, SAMPLE_RATE)
    seconds = time.perf_counter() - t0
    print(f"speech_regions on 300 s of audio: {1000 * seconds:.1f} ms, {len(got)} regions")
    assert np.all(np.diff(got.ravel()) >= 0) and got[-1, 1] <= 300.0
    # Every 1 s speech block lies inside a found region.
    starts = np.flatnonzero(np.diff(on.astype(np.int8), prepend=0) == 1) / SAMPLE_RATE
    inside = (got[:, 0][None, :] <= starts[:, None] + EDGE_TOL_S) & (starts[:, None] < got[:, 1][None, :])
    assert inside.any(axis=1).all()

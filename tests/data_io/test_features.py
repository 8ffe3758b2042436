"""data_io.features: preset shapes, finite values, agreement with librosa reference calls, resolve errors."""

from __future__ import annotations

import json
import math
import sys

import librosa
import numpy as np
import pytest

from data_io import features as F
from data_io.features import PRESETS, FeatureConfig, extract, feature_dim, feature_names, min_samples
from data_io.schema import SAMPLE_RATE

SR = SAMPLE_RATE
FRAME_PRESETS = [n for n, c in PRESETS.items() if c.kind in F.FRAME_KINDS]


def _voiced(seconds: float = 1.3, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    """A harmonic 'vowel' with slow vibrato, amplitude modulation and a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 3 * t))) / SR
    y = sum(np.sin(k * phase) / k for k in range(1, 15)) * 0.2 * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    return (y + 0.003 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def voiced() -> np.ndarray:
    return _voiced()


@pytest.mark.parametrize("name", FRAME_PRESETS)
@pytest.mark.parametrize("n", [None, "min", 1])
def test_frame_preset_shapes(name, n, voiced):
    cfg = PRESETS[name]
    y = voiced if n is None else voiced[: min_samples(cfg) if n == "min" else n]
    out = extract(y, cfg)
    assert out.dtype == np.float32
    assert out.shape == (1 + len(y) // cfg.hop_length, feature_dim(cfg))
    assert np.isfinite(out).all()


def test_preset_table():
    table = {n: (c.n_fft, c.win_length, c.hop_length, feature_dim(c)) for n, c in PRESETS.items()}
    assert table["logmel"] == (512, 400, 160, 64)
    assert table["mfcc"] == (2048, 2048, 512, 40)
    assert table["logmel128"] == (2048, 2048, 512, 128)
    assert table["fbank40"] == (512, 400, 160, 40)
    assert table["spectrogram"] == (512, 400, 160, 128)
    assert PRESETS["spectrogram"].window == "hamming" and PRESETS["mfcc"].window == "hann"
    assert min_samples(PRESETS["logmel"]) == 400 and min_samples(PRESETS["mfcc"]) == 2048


def test_mfcc_is_the_center_loss_papers_librosa_call(voiced):
    ours = extract(voiced, PRESETS["mfcc"])
    ref = librosa.feature.mfcc(y=voiced, sr=SR, n_mfcc=40, n_fft=2048, hop_length=512, window="hann").T
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


def test_logmel_matches_librosa_melspectrogram(voiced):
    ours = extract(voiced, PRESETS["logmel"])
    mel = librosa.feature.melspectrogram(y=voiced, sr=SR, n_fft=512, win_length=400, hop_length=160,
                                         n_mels=64)
    np.testing.assert_allclose(ours, np.log(mel + 1e-6).T, atol=1e-4)


def test_logmel128_is_the_center_loss_papers_mel_spectrogram(voiced):
    ours = extract(voiced, PRESETS["logmel128"])
    mel = librosa.feature.melspectrogram(y=voiced, sr=SR, n_fft=2048, hop_length=512, window="hann", n_mels=128)
    np.testing.assert_allclose(ours, np.log(mel + 1e-6).T, atol=1e-3)
    assert ours.shape[0] == extract(voiced, PRESETS["mfcc"]).shape[0]  # frame-aligned with the mfcc input


def test_fbank40_follows_python_speech_features_conventions(voiced):
    ours = extract(voiced, PRESETS["fbank40"])
    emph = np.concatenate([voiced[:1], voiced[1:] - 0.97 * voiced[:-1]])
    mel = librosa.feature.melspectrogram(y=emph, sr=SR, n_fft=512, win_length=400, hop_length=160,
                                         window="boxcar", n_mels=40, htk=True, norm=None)
    np.testing.assert_allclose(ours, np.log(mel / 512 + 1e-6).T, atol=1e-3)


def test_spectrogram_is_25ms_hamming_pooled_to_128_bins_over_0_8khz(voiced):
    ours = extract(voiced, PRESETS["spectrogram"])
    mag = np.abs(librosa.stft(voiced, n_fft=512, win_length=400, hop_length=160, window="hamming"))
    # 62.5 Hz bands over 31.25 Hz bins: half of each edge bin, all of the middle one.
    pooled = 0.25 * mag[0:256:2] + 0.5 * mag[1:256:2] + 0.25 * mag[2:257:2]
    np.testing.assert_allclose(ours, np.log(pooled + 1e-6).T, atol=1e-4)


def test_spectrogram_bin_options(voiced):
    interp = extract(voiced, F.resolve_feature_set("spectrogram", {"bin_reduction": "interpolate"}))
    assert interp.shape == extract(voiced, PRESETS["spectrogram"]).shape
    assert np.isfinite(interp).all()
    native = extract(voiced, F.resolve_feature_set("spectrogram", {"n_fft": 254, "win_length": 254}))
    ref = np.abs(librosa.stft(voiced, n_fft=254, hop_length=160, window="hamming"))
    np.testing.assert_allclose(native, np.log(ref + 1e-6).T, atol=1e-3)  # float32 round-off in weak bins


@pytest.mark.parametrize("overrides", [
    {"center": False},
    {"n_fft": 1024, "win_length": 1000, "hop_length": 256},
    {"n_fft": 511, "fmin": 50.0, "fmax": 7000.0, "window": "hamming"},
])
def test_logmel_overrides_keep_librosa_framing(overrides, voiced):
    cfg = F.resolve_feature_set("logmel", overrides)
    mel = librosa.feature.melspectrogram(y=voiced, sr=SR, n_fft=cfg.n_fft, win_length=cfg.win_length,
                                         hop_length=cfg.hop_length, window=cfg.window, center=cfg.center,
                                         n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    np.testing.assert_allclose(extract(voiced, cfg), np.log(mel + 1e-6).T, atol=1e-4)


def test_functionals_dimension_and_names():
    cfg = PRESETS["functionals"]
    names = feature_names(cfg)
    assert feature_dim(cfg) >= 1000
    assert len(names) == feature_dim(cfg) == len(set(names))
    expected = {"mfcc03_delta__p75", "f0_semitone__mean", "log_energy__slope", "spectral_flux__iqr_25_75"}
    assert expected <= set(names)


def test_functionals_on_voiced_audio(voiced):
    cfg = PRESETS["functionals"]
    out = extract(voiced, cfg)
    assert out.shape == (1, feature_dim(cfg)) and out.dtype == np.float32
    assert np.isfinite(out).all()
    v = dict(zip(feature_names(cfg), out[0], strict=True))
    # YIN finds the 150 Hz F0 (semitones re 27.5 Hz)
    assert v["f0_semitone__p50"] == pytest.approx(12 * math.log2(150 / 27.5), abs=0.3)
    assert v["voicing_prob__mean"] > 0.9
    assert v["log_energy__max"] > v["log_energy__min"]


@pytest.mark.parametrize("signal", ["zeros", "noise", "one_sample", "one_window", "dc", "clipped"])
def test_functionals_stay_finite_on_degenerate_audio(signal):
    rng = np.random.default_rng(1)
    y = {
        "zeros": np.zeros(SR, np.float32),
        "noise": (2e-4 * rng.standard_normal(SR)).astype(np.float32),  # silence-ish: unvoiced everywhere
        "one_sample": np.full(1, 0.1, np.float32),
        "one_window": (0.1 * rng.standard_normal(400)).astype(np.float32),
        "dc": np.full(8000, 0.3, np.float32),
        "clipped": np.sign(np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32),
    }[signal]
    cfg = PRESETS["functionals"]
    out = extract(y, cfg)
    assert out.shape == (1, feature_dim(cfg))
    assert np.isfinite(out).all()
    if signal in ("zeros", "noise"):
        v = dict(zip(feature_names(cfg), out[0], strict=True))
        assert v["f0_semitone__mean"] == 0.0  # no voiced frame: F0 statistics are 0, not NaN
        assert v["voicing_prob__mean"] < 0.5


def test_config_to_dict_is_json_and_round_trips():
    for cfg in PRESETS.values():
        d = json.loads(json.dumps(cfg.to_dict()))
        assert FeatureConfig(**d) == cfg


def test_resolve_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown feature set 'melspec'.*logmel.*functionals"):
        F.resolve_feature_set("melspec")


def test_resolve_unknown_override_names_it_and_lists_fields():
    with pytest.raises(ValueError, match=r"\['n_mel'\].*n_mels.*hop_length"):
        F.resolve_feature_set("logmel", {"n_mel": 80})
    assert F.resolve_feature_set("logmel", {"n_mels": 80}).n_mels == 80


@pytest.mark.parametrize("overrides, message", [
    ({"win_length": 1024}, "win_length <= n_fft"),
    ({"hop_length": 0}, "hop_length > 0"),
    ({"n_mels": 0}, "n_mels > 0"),
    ({"window": "nonsense"}, "window 'nonsense'"),
    ({"dtype": "float64"}, "dtype in"),
    ({"kind": "mfcc"}, "kind is fixed"),
    ({"fmin": 4000.0, "fmax": 2000.0}, "fmax > fmin"),
    ({"n_fft": 512.0}, "n_fft is an int"),
    ({"center": "yes"}, "center is a bool"),
])
def test_resolve_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        F.resolve_feature_set("logmel", overrides)


def test_int_given_for_a_float_field_is_normalised():
    assert F.resolve_feature_set("logmel", {"fmin": 20}) == F.resolve_feature_set("logmel", {"fmin": 20.0})
    assert json.dumps(F.resolve_feature_set("logmel", {"fmin": 20}).to_dict()).count('"fmin": 20.0') == 1


def test_functionals_refuse_float16():
    with pytest.raises(ValueError, match="dtype float32 for kind functionals"):
        F.resolve_feature_set("functionals", {"dtype": "float16"})


def test_extract_rejects_bad_input(voiced):
    with pytest.raises(ValueError, match="non-empty mono"):
        extract(np.zeros((2, 100), np.float32), PRESETS["logmel"])
    with pytest.raises(ValueError, match="non-empty mono"):
        extract(np.zeros(0, np.float32), PRESETS["logmel"])
    with pytest.raises(ValueError, match="fmax <= sr / 2"):
        extract(voiced, F.resolve_feature_set("logmel", {"fmax": 10_000.0}))


def test_compare_2016_without_opensmile_gives_the_install_hint(monkeypatch, voiced):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # makes `import opensmile` raise ImportError
    F._smile.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'emotune\[opensmile\]'"):
            extract(voiced, PRESETS["compare_2016"])
    finally:
        F._smile.cache_clear()
    assert feature_dim(PRESETS["compare_2016"]) == 6373

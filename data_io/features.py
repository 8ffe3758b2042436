"""Feature extraction with the five papers' settings as named presets (DESIGN.md, Data).

Presets (:data:`PRESETS`), each a frozen :class:`FeatureConfig`:

* ``logmel``: 64-band log-mel power, 25 ms Hann window / 10 ms hop (n_fft 512), ``log(mel + 1e-6)``; the
  usual SER front end. The center-loss paper's own mel spectrogram (arXiv 1906.08873: 128 mels, 2048-sample
  Hann window and FFT, hop 512) is the ``logmel128`` preset.
* ``logmel128``: 128-band log-mel power, Hann window = FFT = 2048, hop 512 (center-loss paper, arXiv 1906.08873,
  Sec. 3.2: its "mel spectrogram" input, frame-aligned with ``mfcc``).
* ``mfcc``: 40 MFCCs, Hann window = FFT = 2048, hop 512 (center-loss paper, arXiv 1906.08873, Sec. 3.2),
  computed as the authors did, with librosa's defaults otherwise (128 mels, dB with top_db 80, orthonormal
  DCT-II); equal to ``librosa.feature.mfcc(y=y, sr=16000, n_mfcc=40, n_fft=2048, hop_length=512)``.
* ``fbank40``: 40-channel log mel filterbank, 25 ms / 10 ms (selective-MTL paper, acted + spontaneous SER).
  The authors used ``python_speech_features.logfbank``; we compute it with librosa/numpy but keep that
  package's defaults: pre-emphasis 0.97, rectangular window, HTK mel scale with unnormalised triangles, power
  spectrum ``|X|^2 / n_fft``.
* ``spectrogram``: log-magnitude STFT, 25 ms Hamming window / 10 ms shift, 128 bins over 0-8 kHz
  (semi-supervised AAE paper, Sec. 4.2). See :class:`FeatureConfig` ``bin_reduction`` for how 128 bins come
  from a 400-sample window.
* ``functionals``: one vector per utterance, statistics over low-level descriptors, the librosa/numpy
  counterpart of the ComParE set (Schuller et al., Interspeech 2013 challenge) that the ladder-network
  MSP-Podcast paper used. 30 LLDs (MFCC 1-20, log energy, zero-crossing rate, spectral centroid, bandwidth,
  85% roll-off, flux, flatness, entropy, YIN voicing probability and F0 in semitones) and their deltas, 26
  statistics each: 1,560 dimensions.
* ``compare_2016``: the real ComParE 2016 functionals (6,373 dimensions) through the optional ``opensmile``
  package.

Frame features are centred (``center=True``, zero padding, as ``librosa.stft``): frame ``t`` is centred on
sample ``t * hop``, so an utterance of ``n`` samples gives ``1 + n // hop`` frames (even ``n_fft``) whatever
the window, and presets with the same hop are frame-aligned. :func:`extract` returns ``(frames, bins)``
float32; ``functionals`` and ``compare_2016`` return ``(1, D)``. Speed: every kind computes one STFT and
derives everything from it; filterbanks and windows are cached per configuration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal

from data_io.schema import SAMPLE_RATE

KINDS = ("logmel", "mfcc", "fbank", "spectrogram", "functionals", "compare_2016")
FRAME_KINDS = ("logmel", "mfcc", "fbank", "spectrogram")
DTYPES = ("float32", "float16")
BIN_REDUCTIONS = ("pool", "interpolate")
COMPARE_2016_DIM = 6373
_MFCC_DB_REF = 1.0  # librosa.feature.mfcc's power_to_db reference
_INT_FIELDS = frozenset({"n_fft", "win_length", "hop_length", "n_mels", "n_mfcc", "n_bins", "f0_frame_length",
                         "f0_hop_length"})
_BOOL_FIELDS = frozenset({"center", "mel_htk"})
_FLOAT_FIELDS = frozenset({"fmin", "fmax", "power", "log_offset", "top_db", "preemphasis", "f0_fmin",
                           "f0_fmax", "yin_threshold", "voicing_threshold"})


@lru_cache(maxsize=32)
def _window(name: str, length: int) -> np.ndarray:
    # Periodic ("fftbins") windows, as librosa.filters.get_window.
    return scipy.signal.get_window(name, length, fftbins=True).astype(np.float32)


@dataclass(frozen=True)
class FeatureConfig:
    """How to compute one feature set. Goes, as :meth:`to_dict`, into the shard manifest.

    Attributes:
        name: Feature-set name (folder name of the shards), usually the preset's.
        kind: One of :data:`KINDS`.
        n_fft: FFT size in samples (zero padding beyond ``win_length``).
        win_length: Analysis window in samples (``<= n_fft``); ingestion rejects shorter audio
            (:func:`min_samples`).
        hop_length: Frame shift in samples.
        window: A ``scipy.signal.get_window`` name (``hann``, ``hamming``, ``boxcar``...), periodic as in
            librosa.
        center: Centre frames on ``t * hop`` with zero padding (``librosa.stft(center=True)``).
        n_mels: Mel bands (logmel, fbank, mfcc, and the MFCCs of functionals).
        n_mfcc: Cepstral coefficients (mfcc; functionals keep coefficients 1..n_mfcc, dropping c0 for log
            energy).
        n_bins: Spectrogram height.
        fmin: Lowest frequency in Hz of the mel bands / spectrogram bins.
        fmax: Highest frequency in Hz; None means Nyquist.
        power: Exponent of the STFT magnitude before the filterbank: 1 magnitude, 2 power.
        log_offset: ``log(x + log_offset)`` for logmel/fbank/spectrogram; for mfcc librosa's dB floor
            ``amin``.
        top_db: mfcc only: dynamic range kept below the utterance's peak, as ``librosa.power_to_db``; None
            keeps all.
        mel_htk: HTK mel formula instead of Slaney's.
        mel_norm: ``"slaney"`` (area-normalised triangles, librosa's default) or None (unit-height, HTK/pysf).
        preemphasis: ``y[t] - a * y[t-1]`` before framing; 0 disables.
        bin_reduction: spectrogram, when ``n_fft // 2 + 1 != n_bins``: ``"pool"`` averages the magnitude of
            the FFT bins falling in each of ``n_bins`` equal-width bands over ``[fmin, fmax]``
            (overlap-weighted); ``"interpolate"`` samples the magnitude linearly at the band centres. The AAE
            preset keeps the paper's 25 ms window and zero-pads it to n_fft 512 (257 bins, 31.25 Hz apart), so
            "pool" gives 128 bands of 62.5 Hz that cover 0-8 kHz exactly and use all the energy. The
            alternative, n_fft = win_length = 254 (128 native bins), would shorten the window to 15.9 ms; it
            is available as an override.
        f0_fmin: functionals: lowest F0 searched by YIN, Hz.
        f0_fmax: functionals: highest F0 searched by YIN, Hz.
        f0_frame_length: functionals: YIN frame in samples; must cover two periods of ``f0_fmin``.
        f0_hop_length: functionals: YIN hop in samples; coarser than ``hop_length`` to keep it cheap, the
            contour is then interpolated onto the LLD frames.
        yin_threshold: functionals: YIN absolute threshold on the cumulative mean normalised difference.
        voicing_threshold: functionals: a frame is voiced when its YIN aperiodicity is below this.
        dtype: Storage dtype in the shards (``float32``/``float16``); :func:`extract` always returns float32.
    """

    name: str
    kind: str
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    window: str = "hann"
    center: bool = True
    n_mels: int = 64
    n_mfcc: int = 40
    n_bins: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    power: float = 2.0
    log_offset: float = 1e-6
    top_db: float | None = None
    mel_htk: bool = False
    mel_norm: str | None = "slaney"
    preemphasis: float = 0.0
    bin_reduction: str = "pool"
    f0_fmin: float = 60.0
    f0_fmax: float = 500.0
    f0_frame_length: int = 640
    f0_hop_length: int = 320
    yin_threshold: float = 0.1
    voicing_threshold: float = 0.3
    dtype: str = "float32"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, got) -> None:
            if not ok:
                raise ValueError(f"feature set {self.name!r}: {what} must hold, got {got}")

        # Types first: values often come from YAML or the CLI, where "512" or 512.0 slip in.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _INT_FIELDS:
                need(isinstance(value, int) and not isinstance(value, bool), f"{f.name} is an int",
                     repr(value))
            elif f.name in _BOOL_FIELDS:
                need(isinstance(value, bool), f"{f.name} is a bool", repr(value))
            elif f.name in _FLOAT_FIELDS and value is not None:
                need(isinstance(value, int | float) and not isinstance(value, bool), f"{f.name} is a number",
                     repr(value))
                object.__setattr__(self, f.name, float(value))  # 20 and 20.0 hash the same in the manifest
        need(isinstance(self.name, str) and bool(self.name), "a non-empty name", repr(self.name))
        need(self.kind in KINDS, f"kind in {KINDS}", repr(self.kind))
        need(self.dtype in DTYPES, f"dtype in {DTYPES}", repr(self.dtype))
        # Statistics such as kurtosis and per-second slopes can exceed float16's 65504 and need more than its
        # 3 significant digits; frame features are log-compressed and fit float16 comfortably.
        need(self.kind in FRAME_KINDS or self.dtype == "float32", f"dtype float32 for kind {self.kind}",
             repr(self.dtype))
        need(self.n_fft > 0, "n_fft > 0", self.n_fft)
        need(0 < self.win_length <= self.n_fft, "0 < win_length <= n_fft",
             f"win_length={self.win_length}, n_fft={self.n_fft}")
        need(self.hop_length > 0, "hop_length > 0", self.hop_length)
        need(self.n_mels > 0, "n_mels > 0", self.n_mels)
        need(self.n_mfcc > 0, "n_mfcc > 0", self.n_mfcc)
        need(self.kind != "mfcc" or self.n_mfcc <= self.n_mels, "n_mfcc <= n_mels",
             f"n_mfcc={self.n_mfcc}, n_mels={self.n_mels}")
        need(self.kind != "functionals" or self.n_mfcc < self.n_mels, "n_mfcc < n_mels (c0 is dropped)",
             f"n_mfcc={self.n_mfcc}, n_mels={self.n_mels}")
        need(self.n_bins > 0, "n_bins > 0", self.n_bins)
        need(self.fmin >= 0, "fmin >= 0", self.fmin)
        need(self.fmax is None or self.fmax > self.fmin, "fmax > fmin (or fmax None)",
             f"fmin={self.fmin}, fmax={self.fmax}")
        need(self.power > 0, "power > 0", self.power)
        need(self.log_offset > 0, "log_offset > 0", self.log_offset)
        need(self.top_db is None or self.top_db > 0, "top_db > 0 or None", self.top_db)
        need(self.mel_norm in ("slaney", None), "mel_norm in ('slaney', None)", repr(self.mel_norm))
        need(0 <= self.preemphasis < 1, "0 <= preemphasis < 1", self.preemphasis)
        need(self.bin_reduction in BIN_REDUCTIONS, f"bin_reduction in {BIN_REDUCTIONS}",
             repr(self.bin_reduction))
        need(0 < self.f0_fmin < self.f0_fmax, "0 < f0_fmin < f0_fmax", f"{self.f0_fmin}, {self.f0_fmax}")
        need(self.f0_frame_length > 0, "f0_frame_length > 0", self.f0_frame_length)
        need(self.f0_hop_length > 0, "f0_hop_length > 0", self.f0_hop_length)
        need(0 < self.yin_threshold < 1, "0 < yin_threshold < 1", self.yin_threshold)
        need(0 < self.voicing_threshold <= 1, "0 < voicing_threshold <= 1", self.voicing_threshold)
        try:
            _window(self.window, self.win_length)
        except ValueError as err:
            raise ValueError(f"feature set {self.name!r}: window {self.window!r} is not a "
                             f"scipy.signal.get_window name ({err})") from None

    def to_dict(self) -> dict:
        """All fields as a JSON-able dict (for the shard manifest and the config hash)."""
        return asdict(self)


# Paper presets. Fields not set take the dataclass defaults above.
PRESETS: dict[str, FeatureConfig] = {
    # The center-loss family's mel input (arXiv 1906.08873 feeds a mel spectrogram or MFCCs) on the common
    # 25 ms Hann / 10 ms SER framing, 64 bands, natural log with a 1e-6 floor. The paper's own framing
    # (128 mels, 2048 / 512) is the logmel128 preset.
    "logmel": FeatureConfig(name="logmel", kind="logmel", n_fft=512, win_length=400, hop_length=160,
                            window="hann", n_mels=64, log_offset=1e-6, dtype="float16"),
    # Center-loss paper (arXiv 1906.08873, Sec. 3.2), its mel spectrogram input: "128 ... coefficients per window"
    # for the spectrogram, Hann window = FFT = 2048, hop 512, librosa's mel scale at 16 kHz; natural log with a
    # 1e-6 floor (the family min-max scales its input to [0, 1], so the log's base does not matter).
    "logmel128": FeatureConfig(name="logmel128", kind="logmel", n_fft=2048, win_length=2048, hop_length=512,
                               window="hann", n_mels=128, log_offset=1e-6, dtype="float16"),
    # Center-loss paper (arXiv 1906.08873, Sec. 3.2): "Length of the hann and FFT windows is set to 2048,
    # while the hop-length ... is set to 512", "40 coefficients", librosa at 16 kHz; the rest are
    # librosa.feature.mfcc defaults.
    "mfcc": FeatureConfig(name="mfcc", kind="mfcc", n_fft=2048, win_length=2048, hop_length=512,
                          window="hann", n_mels=128, n_mfcc=40, log_offset=1e-10, top_db=80.0,
                          dtype="float16"),
    # Selective-MTL paper (acted + spontaneous SER, Sec. 4): "40-channel log mel-scale filter bank ... using
    # python_speech_features"; its logfbank defaults: 25 ms / 10 ms, NFFT 512, pre-emphasis 0.97, rectangular
    # window, HTK mel, unnormalised triangles. Computed here with librosa/numpy, not python_speech_features.
    "fbank40": FeatureConfig(name="fbank40", kind="fbank", n_fft=512, win_length=400, hop_length=160,
                             window="boxcar", n_mels=40, mel_htk=True, mel_norm=None, preemphasis=0.97,
                             log_offset=1e-6, dtype="float16"),
    # Semi-supervised AAE paper (Sec. 4.2): "overlapping Hamming window of size 25 ms with a 10 ms shift. The
    # height of the spectrogram is 128, which represents the frequency range 0-8 kHz". Log magnitude; 257 bins
    # pooled to 128.
    "spectrogram": FeatureConfig(name="spectrogram", kind="spectrogram", n_fft=512, win_length=400,
                                 hop_length=160, window="hamming", n_bins=128, fmin=0.0, fmax=None, power=1.0,
                                 bin_reduction="pool", log_offset=1e-6, dtype="float16"),
    # Multitask-DCGAN paper (arXiv 1705.02394, "Pre-processing"): STFT window of 1024 samples (64 ms at 16 kHz),
    # 128 rows. Its "0-11 kHz" cannot hold at 16 kHz (Nyquist is 8 kHz; it would need 22.05 kHz audio), so the
    # 128 rows cover 0-8 kHz: 513 bins pooled 4 to 1. The hop is not reported: 256 samples (16 ms, a quarter
    # window), so crop widths of 64 / 128 / 256 frames are about 1 / 2 / 4 s. Log magnitude, Hann window.
    "spectrogram1024": FeatureConfig(name="spectrogram1024", kind="spectrogram", n_fft=1024, win_length=1024,
                                     hop_length=256, window="hann", n_bins=128, fmin=0.0, fmax=None, power=1.0,
                                     bin_reduction="pool", log_offset=1e-6, dtype="float16"),
    # Ladder-network MSP-Podcast paper (Sec. 4.1) used the ComParE (Interspeech 2013) functionals from
    # openSMILE; this is the librosa/numpy counterpart: 25 ms / 10 ms LLDs, 40 mels for MFCC 1-20 over
    # 20 Hz - Nyquist, YIN F0 60-500 Hz on 40 ms frames every 20 ms.
    "functionals": FeatureConfig(name="functionals", kind="functionals", n_fft=512, win_length=400,
                                 hop_length=160, window="hann", n_mels=40, n_mfcc=20, fmin=20.0,
                                 fmax=None, f0_fmin=60.0, f0_fmax=500.0, f0_frame_length=640,
                                 f0_hop_length=320, dtype="float32"),
    # The real thing: openSMILE's ComParE_2016 functionals (6,373 dims), with the `opensmile` extra installed.
    "compare_2016": FeatureConfig(name="compare_2016", kind="compare_2016", dtype="float32"),
}


def resolve_feature_set(name: str, overrides: dict | None = None) -> FeatureConfig:
    """Look up a preset and apply field overrides.

    Args:
        name: A key of :data:`PRESETS`.
        overrides: Field values replacing the preset's (e.g. ``{"n_mels": 80}``); ``name`` keeps the preset's
            name unless overridden.

    Returns:
        The validated :class:`FeatureConfig`.

    Raises:
        ValueError: Unknown preset (lists the valid names), unknown field (lists the fields), or an invalid
            value.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown feature set {name!r}; valid names: {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    valid = [f.name for f in fields(FeatureConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for feature set {name!r}; FeatureConfig fields: "
                         f"{', '.join(valid)}")
    if "kind" in overrides and overrides["kind"] != PRESETS[name].kind:
        raise ValueError(f"feature set {name!r}: kind is fixed by the preset ({PRESETS[name].kind!r}), got "
                         f"{overrides['kind']!r}; pick the preset of that kind instead")
    return replace(PRESETS[name], **overrides)


def min_samples(cfg: FeatureConfig, sr: int = SAMPLE_RATE) -> int:
    """Shortest audio, in samples, that fills one analysis window of ``cfg``.

    Ingestion uses it as the ``too_short`` bound of ``data_io.audio.load_audio``.

    Args:
        cfg: The feature configuration.
        sr: Sample rate in Hz (only compare_2016 depends on it).

    Returns:
        ``win_length`` (``n_fft`` when ``center=False``, as frames then span the whole FFT); for compare_2016,
        openSMILE's 60 ms F0 window.
    """
    if cfg.kind == "compare_2016":
        return math.ceil(0.060 * sr)
    return cfg.win_length if cfg.center else cfg.n_fft


def feature_dim(cfg: FeatureConfig) -> int:
    """Bins per frame (``D`` of the ``(1, D)`` vector for functionals and compare_2016)."""
    if cfg.kind in ("logmel", "fbank"):
        return cfg.n_mels
    if cfg.kind == "mfcc":
        return cfg.n_mfcc
    if cfg.kind == "spectrogram":
        return cfg.n_bins
    if cfg.kind == "functionals":
        return len(_lld_names(cfg)) * 2 * len(STATS)
    return COMPARE_2016_DIM


def feature_names(cfg: FeatureConfig) -> list[str]:
    """Names of the feature dimensions, in :func:`extract`'s column order.

    Functionals are ``"<lld>__<stat>"`` and ``"<lld>_delta__<stat>"`` (e.g. ``"mfcc03_delta__p75"``); frame
    features are ``"<kind>_<index>"``; compare_2016 asks openSMILE (needs the extra).
    """
    if cfg.kind == "functionals":
        llds = _lld_names(cfg)
        return [f"{lld}{suffix}__{stat}" for suffix in ("", "_delta") for lld in llds for stat in STATS]
    if cfg.kind == "compare_2016":
        return list(_smile().feature_names)
    width = len(str(feature_dim(cfg) - 1))
    return [f"{cfg.kind}_{i:0{width}d}" for i in range(feature_dim(cfg))]


def extract(y: np.ndarray, cfg: FeatureConfig, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Compute one feature set for one utterance.

    Args:
        y: Mono signal, shape ``(n,)``, ``n >= 1``, finite (``data_io.audio.load_audio`` guarantees it).
        cfg: The feature configuration.
        sr: Sample rate of ``y`` in Hz.

    Returns:
        float32 ``(frames, feature_dim(cfg))`` with ``frames = 1 + n // hop_length`` (centred frames, even
        n_fft), or ``(1, D)`` for functionals and compare_2016. Finite everywhere.

    Raises:
        ValueError: ``y`` is not a non-empty 1-D array, or ``fmax``/``f0_fmax`` exceeds Nyquist at ``sr``.
        ImportError: compare_2016 without the ``opensmile`` extra.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"extract needs a non-empty mono signal of shape (n,), got shape {y.shape}")
    nyquist = sr / 2
    if cfg.fmax is not None and cfg.fmax > nyquist:
        raise ValueError(f"feature set {cfg.name!r}: fmax <= sr / 2 = {nyquist:g} Hz must hold, "
                         f"got {cfg.fmax}")
    if cfg.kind != "compare_2016" and cfg.fmin >= (cfg.fmax or nyquist):
        raise ValueError(f"feature set {cfg.name!r}: fmin < fmax (None = sr / 2 = {nyquist:g} Hz) must hold, "
                         f"got fmin={cfg.fmin}, fmax={cfg.fmax}")
    y = y.astype(np.float32, copy=False)
    if cfg.kind == "compare_2016":
        return _compare_2016(y, sr)
    if cfg.kind == "functionals":
        return _functionals(y, cfg, sr)[None, :]
    if not cfg.center and len(y) < cfg.n_fft:
        raise ValueError(f"feature set {cfg.name!r}: center=False needs len(y) >= n_fft = {cfg.n_fft}, "
                         f"got {len(y)}")

    frames = _windowed_frames(y, cfg)
    spec = _spectrum(frames, cfg)  # (T, n_fft//2 + 1), |X|**power
    if cfg.kind == "spectrogram":
        out = np.log(_band_matrix_apply(spec, cfg, sr) + cfg.log_offset)
    elif cfg.kind == "logmel":
        out = np.log(spec @ _mel_basis_t(cfg, sr) + cfg.log_offset)
    elif cfg.kind == "fbank":
        # python_speech_features' power spectrum is |X|^2 / NFFT; keeping the scale keeps its log values.
        out = np.log(spec @ _mel_basis_t(cfg, sr) * (1.0 / cfg.n_fft) + cfg.log_offset)
    else:  # mfcc, the steps of librosa.feature.mfcc: power_to_db(melspectrogram) then orthonormal DCT-II
        out = _mfcc_from_mel(spec @ _mel_basis_t(cfg, sr), cfg.n_mfcc, cfg.log_offset, cfg.top_db)
    return np.ascontiguousarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------------------------
# Shared signal processing


@lru_cache(maxsize=32)
def _mel_basis_t_cached(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool,
                        norm: str | None) -> np.ndarray:
    import librosa

    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm)
    return np.ascontiguousarray(basis.T, dtype=np.float32)  # (n_fft//2 + 1, n_mels), for spec @ basis


def _mel_basis_t(cfg: FeatureConfig, sr: int) -> np.ndarray:
    return _mel_basis_t_cached(sr, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, cfg.mel_htk, cfg.mel_norm)


def _n_frames(n: int, cfg: FeatureConfig) -> int:
    if cfg.center:  # librosa pads n_fft // 2 on both sides
        return 1 + (n + 2 * (cfg.n_fft // 2) - cfg.n_fft) // cfg.hop_length
    return 1 + (n - cfg.n_fft) // cfg.hop_length


def _frame(y: np.ndarray, length: int, hop: int, n_frames: int, first: int) -> np.ndarray:
    """``(n_frames, length)`` view; frame t starts at sample ``first + t * hop`` of ``y``, zeros outside."""
    left = max(0, -first)
    right = max(0, first + (n_frames - 1) * hop + length - len(y))
    if left or right:
        y = np.pad(y, (left, right))
    start = first + left
    return np.lib.stride_tricks.sliding_window_view(y, length)[start::hop][:n_frames]


def _windowed_frames(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Windowed ``(T, win_length)`` frames at librosa's positions.

    librosa centres a ``win_length`` window inside each ``n_fft`` frame; framing only the ``win_length``
    non-zero samples and zero-padding in the FFT gives the same magnitudes (the padding only shifts the phase)
    with less work.
    """
    if cfg.preemphasis:
        y = np.concatenate([y[:1], y[1:] - np.float32(cfg.preemphasis) * y[:-1]])
    offset = (cfg.n_fft - cfg.win_length) // 2  # librosa.util.pad_center
    first = offset - (cfg.n_fft // 2 if cfg.center else 0)
    frames = _frame(y, cfg.win_length, cfg.hop_length, _n_frames(len(y), cfg), first)
    return frames * _window(cfg.window, cfg.win_length)


def _spectrum(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``|rfft(frames, n_fft)| ** power``, float32 ``(T, n_fft // 2 + 1)``."""
    stft = scipy.fft.rfft(frames, n=cfg.n_fft, axis=-1)
    power = stft.real * stft.real + stft.imag * stft.imag
    if cfg.power == 2.0:
        return power
    if cfg.power == 1.0:
        return np.sqrt(power, out=power)
    return power ** np.float32(cfg.power / 2)


@lru_cache(maxsize=32)
def _band_matrix_cached(sr: int, n_fft: int, n_bins: int, fmin: float, fmax: float | None,
                        method: str) -> np.ndarray | None:
    """``(n_fft//2 + 1, n_bins)`` map from FFT bins to spectrogram bins; None when they already coincide."""
    n_freq = n_fft // 2 + 1
    fmax = sr / 2 if fmax is None else fmax
    if n_freq == n_bins and fmin == 0 and fmax == sr / 2:
        return None
    df = sr / n_fft
    freqs = np.arange(n_freq) * df
    edges = np.linspace(fmin, fmax, n_bins + 1)
    if method == "pool":
        # Each FFT bin covers [f - df/2, f + df/2]; it contributes to a band in proportion to the overlap.
        lo = np.maximum(freqs[:, None] - df / 2, edges[None, :-1])
        hi = np.minimum(freqs[:, None] + df / 2, edges[None, 1:])
        weights = np.clip(hi - lo, 0, None)
    else:  # linear interpolation of the magnitude at the band centres
        centres = (edges[:-1] + edges[1:]) / 2
        pos = np.clip(centres / df, 0, n_freq - 1)
        k0 = np.floor(pos).astype(int)
        k1 = np.minimum(k0 + 1, n_freq - 1)
        frac = pos - k0
        weights = np.zeros((n_freq, n_bins))
        cols = np.arange(n_bins)
        np.add.at(weights, (k0, cols), 1 - frac)
        np.add.at(weights, (k1, cols), frac)
    weights /= weights.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(weights, dtype=np.float32)


def _band_matrix_apply(spec: np.ndarray, cfg: FeatureConfig, sr: int) -> np.ndarray:
    weights = _band_matrix_cached(sr, cfg.n_fft, cfg.n_bins, cfg.fmin, cfg.fmax, cfg.bin_reduction)
    if weights is None:
        return spec
    if (weights.sum(axis=0) == 0).any():
        raise ValueError(f"feature set {cfg.name!r}: some of the {cfg.n_bins} bins hold no FFT bin; "
                         f"lower n_bins or raise n_fft")
    return spec @ weights


def _mfcc_from_mel(mel: np.ndarray, n_mfcc: int, amin: float, top_db: float | None) -> np.ndarray:
    """``(T, n_mels)`` mel power -> ``(T, n_mfcc)``, as librosa.power_to_db + librosa.feature.mfcc's DCT."""
    db = 10.0 * np.log10(np.maximum(mel, amin)) - 10.0 * np.log10(max(amin, _MFCC_DB_REF))
    if top_db is not None:
        db = np.maximum(db, db.max() - top_db)
    return scipy.fft.dct(db, type=2, norm="ortho", axis=-1)[:, :n_mfcc]


# ------------------------------------------------------------------------------------------------------------
# Functionals: LLDs, deltas, statistics

STATS = (
    "mean", "rms", "std", "skewness", "kurtosis", "min", "max", "range", "pos_min", "pos_max",
    "p01", "p05", "p25", "p50", "p75", "p95", "p99", "iqr_25_50", "iqr_50_75", "iqr_25_75", "range_p01_p99",
    "slope", "intercept", "lin_err", "up_time_25", "up_time_75",
)
_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_SPECTRAL_LLDS = (
    "log_energy", "zcr", "spectral_centroid", "spectral_bandwidth", "spectral_rolloff85", "spectral_flux",
    "spectral_flatness", "spectral_entropy", "voicing_prob",
)
_F0_LLD = "f0_semitone"  # last: its statistics are over voiced frames only


def _lld_names(cfg: FeatureConfig) -> list[str]:
    return [f"mfcc{i:02d}" for i in range(1, cfg.n_mfcc + 1)] + list(_SPECTRAL_LLDS) + [_F0_LLD]


def _yin(y: np.ndarray, sr: int, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """YIN (de Cheveigné & Kawahara 2002) on centred frames: F0 in Hz and aperiodicity per frame.

    Fixed integration window ``W = frame - max_lag``; ``d(tau) = e(0) + e(tau) - 2 r(tau)`` with ``r`` from
    one FFT cross-correlation per frame; absolute threshold, then the global minimum when no dip passes it;
    parabolic refinement. A frame with no energy gets aperiodicity 1 (unvoiced), never NaN.
    """
    max_lag = math.ceil(sr / cfg.f0_fmin)
    min_lag = max(2, math.floor(sr / cfg.f0_fmax))
    length = cfg.f0_frame_length
    w = length - max_lag
    if w < max_lag:
        raise ValueError(f"feature set {cfg.name!r}: f0_frame_length >= 2 * sr / f0_fmin = {2 * max_lag} "
                         f"samples must hold, got {length}")
    hop = cfg.f0_hop_length
    n_frames = 1 + len(y) // hop
    # float32 throughout: it halves the FFT cost, and its round-off (~1e-7 of the frame energy) is far below
    # the dips that matter (cmndf ~ 0.01 - 0.3).
    x = _frame(y, length, hop, n_frames, -(length // 2))
    # Circular correlation is exact for lags 0..max_lag once n >= length (j + tau < w + max_lag = length).
    n = scipy.fft.next_fast_len(length, real=True)
    r = scipy.fft.irfft(np.conj(scipy.fft.rfft(x[:, :w], n)) * scipy.fft.rfft(x, n), n)[:, :max_lag + 1]
    sq = np.empty((n_frames, length + 1), dtype=np.float32)
    sq[:, 0] = 0.0
    np.cumsum(x * x, axis=1, out=sq[:, 1:])
    e = sq[:, w:w + max_lag + 1] - sq[:, :max_lag + 1]  # energy of x[tau : tau + w]
    d = np.maximum(e[:, :1] + e - 2 * r, 0.0)
    d[:, 0] = 0.0
    cum = np.cumsum(d[:, 1:], axis=1)
    lags = np.arange(1, max_lag + 1, dtype=np.float32)
    floor = e[:, :1] * 1e-6 + 1e-20  # a silent frame has d == 0 everywhere: treat it as aperiodic (cmndf 1)
    cmndf = np.ones_like(d)
    cmndf[:, 1:] = np.where(cum > floor, d[:, 1:] * lags / np.maximum(cum, 1e-20), 1.0)
    band = cmndf[:, min_lag:max_lag + 1]
    is_dip = np.zeros_like(band, dtype=bool)
    is_dip[:, 1:-1] = (band[:, 1:-1] < band[:, :-2]) & (band[:, 1:-1] <= band[:, 2:])
    passing = is_dip & (band < cfg.yin_threshold)
    k = np.where(passing.any(axis=1), passing.argmax(axis=1), band.argmin(axis=1))
    rows = np.arange(n_frames)
    aper = band[rows, k]
    # Parabolic interpolation around the chosen lag (not at the band edges).
    km, kp = np.maximum(k - 1, 0), np.minimum(k + 1, band.shape[1] - 1)
    a, b, cc = band[rows, km], aper, band[rows, kp]
    denom = a - 2 * b + cc
    inner = (k > 0) & (k < band.shape[1] - 1) & (denom > 1e-12)
    shift = np.where(inner, 0.5 * (a - cc) / np.where(inner, denom, 1.0), 0.0)
    lag = min_lag + k + np.clip(shift, -1.0, 1.0)
    return sr / lag, np.clip(aper, 0.0, 1.0)


def _delta(x: np.ndarray, width: int = 2) -> np.ndarray:
    """HTK regression deltas (ComParE's W=2) over the last axis, edges replicated; any number of frames."""
    t = x.shape[-1]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(width, width)], mode="edge")
    out = np.zeros_like(x)
    for i in range(1, width + 1):
        out += i * (padded[..., width + i:width + i + t] - padded[..., width - i:width - i + t])
    return out / (2 * sum(i * i for i in range(1, width + 1)))


def _stats(x: np.ndarray, times: np.ndarray) -> np.ndarray:
    """:data:`STATS` of each row of ``x`` ``(L, T)`` with frames at ``times`` (s): ``(L, len(STATS))``.

    Moments of a constant row are 0 (not 0/0); slope is per second, intercept at t = 0, positions are relative
    (0 = first frame, 1 = last).
    """
    n_rows, t = x.shape
    if t == 0:
        return np.zeros((n_rows, len(STATS)))
    mean = x.mean(axis=1)
    xc = x - mean[:, None]
    var = (xc * xc).mean(axis=1)
    std = np.sqrt(var)
    # Relative to the row's magnitude so that float round-off on a constant row does not become a huge
    # skewness.
    flat = std <= 1e-7 * (np.abs(mean) + 1e-12)
    safe = np.where(flat, 1.0, std)
    z = xc / safe[:, None]
    z2 = z * z  # products, not z ** 3 / z ** 4: numpy's float power is ~10x slower
    skew = np.where(flat, 0.0, (z2 * z).mean(axis=1))
    kurt = np.where(flat, 0.0, (z2 * z2).mean(axis=1) - 3.0)
    rms = np.sqrt((x * x).mean(axis=1))
    srt = np.sort(x, axis=1)
    lo, hi = srt[:, 0], srt[:, -1]
    rng = hi - lo
    span = max(t - 1, 1)
    pos_min = x.argmin(axis=1) / span
    pos_max = x.argmax(axis=1) / span
    # Linear-interpolated percentiles (numpy's default method) from the one sort.
    q = np.array(_PERCENTILES) / 100 * (t - 1)
    q0 = np.floor(q).astype(int)
    q1 = np.minimum(q0 + 1, t - 1)
    frac = q - q0
    pct = srt[:, q0] * (1 - frac) + srt[:, q1] * frac  # (L, 7)
    p = dict(zip(_PERCENTILES, pct.T, strict=True))
    tc = times - times.mean()
    tvar = float(tc @ tc)
    slope = (xc @ tc) / tvar if tvar > 0 else np.zeros(n_rows)
    intercept = mean - slope * times.mean()
    resid = xc - slope[:, None] * tc[None, :]
    lin_err = np.sqrt((resid * resid).mean(axis=1))
    up25 = np.where(rng > 0, (x > (lo + 0.25 * rng)[:, None]).mean(axis=1), 0.0)
    up75 = np.where(rng > 0, (x > (lo + 0.75 * rng)[:, None]).mean(axis=1), 0.0)
    cols = {
        "mean": mean, "rms": rms, "std": std, "skewness": skew, "kurtosis": kurt, "min": lo, "max": hi,
        "range": rng, "pos_min": pos_min, "pos_max": pos_max,
        "p01": p[1], "p05": p[5], "p25": p[25], "p50": p[50], "p75": p[75], "p95": p[95], "p99": p[99],
        "iqr_25_50": p[50] - p[25], "iqr_50_75": p[75] - p[50], "iqr_25_75": p[75] - p[25],
        "range_p01_p99": p[99] - p[1], "slope": slope, "intercept": intercept, "lin_err": lin_err,
        "up_time_25": up25, "up_time_75": up75,
    }
    return np.stack([cols[s] for s in STATS], axis=1)


def _functionals(y: np.ndarray, cfg: FeatureConfig, sr: int) -> np.ndarray:
    """The ``functionals`` vector ``(D,)``: LLDs from one STFT (+ YIN), deltas, :data:`STATS` per LLD."""
    if cfg.f0_fmax > sr / 2:
        raise ValueError(f"feature set {cfg.name!r}: f0_fmax <= sr / 2 = {sr / 2:g} Hz must hold, "
                         f"got {cfg.f0_fmax}")
    frames = _windowed_frames(y, cfg)  # (T, win)
    t_frames = frames.shape[0]
    power = _spectrum(frames, cfg)  # (T, F) |X|^2, the one STFT every spectral LLD reads
    mag = np.sqrt(power)
    freqs_khz = (np.arange(power.shape[1], dtype=np.float32) * (sr / cfg.n_fft / 1000)).astype(np.float32)

    # MFCC 1..n_mfcc (c0 dropped: log energy carries the level).
    mel = power @ _mel_basis_t(cfg, sr)
    mfcc = _mfcc_from_mel(mel, cfg.n_mfcc + 1, 1e-10, None)[:, 1:]

    # Log energy (dB) of the windowed frame, normalised by the window's energy so it is the mean square level.
    win = _window(cfg.window, cfg.win_length)
    energy = np.einsum("ij,ij->i", frames, frames) / float(win @ win)
    log_energy = 10 * np.log10(energy + 1e-10)

    # Zero-crossing rate of the unwindowed frames (same positions).
    offset = (cfg.n_fft - cfg.win_length) // 2 - (cfg.n_fft // 2 if cfg.center else 0)
    raw = _frame(y, cfg.win_length, cfg.hop_length, t_frames, offset)
    zcr = np.count_nonzero(np.signbit(raw[:, 1:]) != np.signbit(raw[:, :-1]), axis=1) / (cfg.win_length - 1)

    # Spectral shape over the magnitude spectrum; an all-zero frame gets a flat distribution instead of 0/0.
    mag_sum = mag.sum(axis=1, keepdims=True)
    empty = mag_sum[:, 0] <= 1e-10
    dist = np.where(empty[:, None], 1.0 / mag.shape[1], mag / np.maximum(mag_sum, 1e-10))
    centroid = dist @ freqs_khz
    bandwidth = np.sqrt(np.maximum(dist @ (freqs_khz ** 2) - centroid ** 2, 0.0))
    cdf = np.cumsum(dist, axis=1)
    rolloff = freqs_khz[np.minimum((cdf < 0.85).sum(axis=1), len(freqs_khz) - 1)]
    flux = np.zeros(t_frames, dtype=np.float32)
    if t_frames > 1:
        step = np.diff(dist, axis=0)
        flux[1:] = np.sqrt(np.einsum("ij,ij->i", step, step))
    log_power = np.log(power + 1e-10)
    flatness = np.exp(log_power.mean(axis=1)) / (power.mean(axis=1) + 1e-10)
    flatness = np.where(power.mean(axis=1) <= 1e-10, 1.0, np.minimum(flatness, 1.0))
    entropy = -(dist * np.log(dist + 1e-12)).sum(axis=1) / math.log(dist.shape[1])

    # YIN on its own coarser grid, interpolated onto the LLD frames (both are centred on t * hop).
    f0_hz, aper = _yin(y, sr, cfg)
    t_lld = np.arange(t_frames) * (cfg.hop_length / sr)
    t_f0 = np.arange(len(f0_hz)) * (cfg.f0_hop_length / sr)
    voicing_f0 = 1.0 - aper
    voiced_f0 = aper < cfg.voicing_threshold
    voicing = np.interp(t_lld, t_f0, voicing_f0)
    nearest = np.minimum(np.rint(t_lld / (cfg.f0_hop_length / sr)).astype(int), len(f0_hz) - 1)
    voiced = voiced_f0[nearest]
    semitone_f0 = 12 * np.log2(f0_hz / 27.5)  # semitones re 27.5 Hz (A0), as eGeMAPS

    # Rows in _SPECTRAL_LLDS order after the MFCCs; statistics in float64 (cheap at this size).
    llds = np.vstack([mfcc.T, log_energy, zcr, centroid, bandwidth, rolloff, flux, flatness, entropy,
                      voicing]).astype(np.float64)
    if voiced_f0.any():
        # Unvoiced gaps are bridged linearly (held at the ends) so the delta sees a continuous contour; the
        # statistics then use voiced frames only, as ComParE's F0 functionals do.
        vt = t_f0[voiced_f0]
        f0_track = np.interp(t_lld, vt, semitone_f0[voiced_f0])
        f0_rows = np.vstack([f0_track, _delta(f0_track[None, :])[0]])[:, voiced]
        f0_stats = _stats(f0_rows, t_lld[voiced]) if voiced.any() else np.zeros((2, len(STATS)))
    else:
        f0_stats = np.zeros((2, len(STATS)))  # no voiced frame: F0 statistics are 0, voicing_prob says why
    n_llds = llds.shape[0]
    stats = _stats(np.vstack([llds, _delta(llds)]), t_lld)  # one call for LLDs and deltas: fewer numpy passes
    # Order: every LLD (F0 last), then every delta (F0 delta last), STATS within each, as feature_names().
    out = np.concatenate([stats[:n_llds], f0_stats[:1], stats[n_llds:], f0_stats[1:]], axis=0)
    return out.reshape(-1).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# ComParE 2016 through the optional opensmile package


@lru_cache(maxsize=1)
def _smile():
    try:
        import opensmile
    except ImportError as err:
        raise ImportError("feature set compare_2016 needs the opensmile package; install the extra: "
                          "pip install 'emotune[opensmile]'") from err
    return opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                           feature_level=opensmile.FeatureLevel.Functionals)


def _compare_2016(y: np.ndarray, sr: int) -> np.ndarray:
    values = np.asarray(_smile().process_signal(y, sr).to_numpy(), dtype=np.float32).reshape(1, -1)
    if values.shape[1] != COMPARE_2016_DIM:
        raise ValueError(f"opensmile ComParE_2016 returned {values.shape[1]} features, "
                         f"expected {COMPARE_2016_DIM}")
    # openSMILE writes 0 for undefined values on most functionals; guard the rest so no NaN reaches a model.
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)

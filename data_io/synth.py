"""Synthetic SER corpora written in the on-disk layouts of IEMOCAP, MSP-Podcast, a call-centre CSV corpus,
LibriSpeech, the AMI meeting corpus and MSP-IMPROV (DESIGN.md, Data), so that the real adapters and ingestion run end
to end without licensed data.

Each utterance is rendered by a source-filter voice model (vectorised numpy/scipy):

* **source**: a Rosenberg glottal pulse train driven by a phase-accumulated F0 contour (level, declination slope,
  pitch accents, slow drift) with per-period jitter and shimmer, plus pitch-synchronous aspiration noise
  (breathiness); the pulse's open quotient sets the voice quality (pressed ... breathy).
* **rhythm**: syllable-like bursts (energy envelope) at a speaking rate, grouped into phrases separated by pauses,
  with frication bursts at some syllable onsets.
* **filter**: a cascade of second-order formant resonators per syllable (one vowel each), scaled per speaker
  (timbre; female speakers have higher F0 and formants), then a one-pole spectral tilt, then a level and a
  background noise at a random SNR. The call-centre layout is rendered at 8 kHz through a 300-3400 Hz telephone
  band with line noise and G.711 mu-law companding.

Every utterance has a category from :data:`EMOTIONS_4` and latent arousal/valence/dominance in [-1, 1] drawn around
the category's mean. Prosody follows the latent values: arousal strongly and cleanly (F0 level and range, level,
speaking rate, spectral tilt, pauses), valence weakly and through a noisy per-utterance cue (formant shift, F0
slope, jitter/shimmer, open quotient), dominance through level and pressedness; dominance itself correlates with
both through the category means. So arousal is easier to predict than valence, as in real corpora, while
happy and angry (both high arousal) still differ on valence and dominance cues. 3-5 simulated raters (persistent
per-rater biases plus per-rating noise) rate each attribute on the corpus scale and vote a category (mostly the
true one, sometimes a neighbour); label files carry the consensus and, where the real format has them, the rater
lines. Each corpus folder also gets ``.synth_truth.jsonl`` (the generator's ground truth; adapters ignore it).

The IEMOCAP layout also writes each turn's forced alignment (``sentences/ForcedAlignment/<dialog>/<turn>.wdseg``,
Sphinx word segmentation at 100 frames/s): words are runs of 1-2 of the voice model's syllables, so every word
lies on rendered speech, with ``<s>``, ``<sil>``, ``++BREATHING++`` and ``</s>`` on the silences. The AMI layout
writes a few minutes-long "meetings" (``amicorpus/<meeting>/audio/<meeting>.Mix-Headset.wav``): groups of four
speakers take turns of 1-3 utterances, mostly neutral, separated by 1-2.5 s of room noise; no label files (AMI is
the unlabelled data), the truth file lists every utterance with its meeting and offset. The MSP-IMPROV layout has
the corpus's 12 actors, one woman and one man per session (6 sessions): for each target sentence and target emotion
every actor reads the sentence (scenario R), says it inside an improvisation (S, sometimes again in T) and now and
then talks naturally between the takes (P, mostly neutral, less expressive); crowd raters vote Angry/Happy/Sad/
Neutral/Other and rate arousal, valence, dominance and naturalness on 1-5 in ``Evalution.txt`` (the release's
spelling), the audio under ``Audio/session<n>/<sentence>/<scenario>/``.

Output is byte-identical for a seed: every random stream is derived from ``(seed, layout, purpose, index)`` and
files are written in a fixed order.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from data_io.schema import EMOTIONS_4, SAMPLE_RATE

# Appended in order: a layout's index seeds its random streams, so adding one leaves the others' bytes unchanged.
LAYOUTS = ("iemocap", "msp_podcast", "callcenter", "librispeech", "ami", "msp_improv")
# Multiplier of utterances and speakers; "small" is what the tests and the demo use.
SCALES = {"small": 1, "full": 8}
# The folder each layout is written to inside ``out`` (the name the real corpus is distributed as).
CORPUS_FOLDERS = {
    "iemocap": "IEMOCAP_full_release", "msp_podcast": "MSP-Podcast", "callcenter": "callcenter",
    "librispeech": "LibriSpeech", "ami": "amicorpus", "msp_improv": "MSP-IMPROV",
}
TRUTH_FILE = ".synth_truth.jsonl"
TELEPHONE_RATE = 8_000
DURATION_RANGE_S = (1.5, 4.0)

# (arousal, valence, dominance) means per category on the latent [-1, 1] scale (0 = the scale's midpoint).
CATEGORY_MEANS = {
    "neutral": (0.0, 0.05, 0.0),
    "happy": (0.5, 0.65, 0.25),
    "sad": (-0.6, -0.55, -0.45),
    "angry": (0.7, -0.6, 0.6),
}
LATENT_SD = 0.2
# Valence reaches the voice only through this much per-utterance noise (arousal through ~0.05): the reason
# valence is the harder attribute.
VALENCE_CUE_NOISE = 0.35
AROUSAL_CUE_NOISE = 0.05
RATER_NOISE = 0.3
RATER_BIAS_SD = 0.12

# Confusable categories a rater may vote instead of the true one, per label vocabulary (canonical names).
NEIGHBOURS_IEMOCAP = {
    "neutral": ("frustrated", "sad", "happy"), "happy": ("excited", "surprised", "neutral"),
    "sad": ("frustrated", "neutral", "fearful"), "angry": ("frustrated", "disgusted"),
}
NEIGHBOURS_PODCAST = {
    "neutral": ("sad", "happy", "contempt", "other"), "happy": ("surprised", "neutral"),
    "sad": ("neutral", "fearful"), "angry": ("disgusted", "contempt"),
}
IEMOCAP_CODES = {
    "neutral": "neu", "happy": "hap", "excited": "exc", "sad": "sad", "angry": "ang", "frustrated": "fru",
    "surprised": "sur", "fearful": "fea", "disgusted": "dis", "other": "oth",
}
# The category names IEMOCAP's evaluators ticked, as they appear in the C-E rater lines.
IEMOCAP_RATER_NAMES = {
    "neutral": "Neutral state", "happy": "Happiness", "excited": "Excited", "sad": "Sadness", "angry": "Anger",
    "frustrated": "Frustration", "surprised": "Surprise", "fearful": "Fear", "disgusted": "Disgust",
    "other": "Other",
}
NEIGHBOURS_IMPROV = {
    "neutral": ("sad", "happy", "other"), "happy": ("neutral", "other"), "sad": ("neutral", "other"),
    "angry": ("other", "neutral"),
}
# MSP-IMPROV's consensus codes (X: no agreement) and the category names its raters chose from.
IMPROV_CODES = {"angry": "A", "happy": "H", "sad": "S", "neutral": "N", "other": "O"}
IMPROV_RATER_NAMES = {"angry": "Angry", "happy": "Happy", "sad": "Sad", "neutral": "Neutral", "other": "Other"}
# Takes of one target sentence per actor: (scenario, chance the take exists, expressiveness, mean naturalness 1-5).
# R reads the sentence, S and T say it inside improvisations, P is the natural talk between the takes.
IMPROV_TAKES = (("R", 1.0, 0.8, 2.4), ("S", 1.0, 1.0, 3.4), ("T", 0.4, 0.9, 3.3), ("P", 0.4, 0.6, 4.2))
PODCAST_CODES = {
    "angry": "A", "sad": "S", "happy": "H", "surprised": "U", "fearful": "F", "disgusted": "D", "contempt": "C",
    "neutral": "N", "other": "O",
}

# Male adult formants F1-F3 (Hz) of a few vowels (after Peterson & Barney); F4/F5 are fixed. Scaled per speaker.
VOWELS = np.array([
    (730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
    (570, 840, 2410), (660, 1720, 2410), (440, 1020, 2240), (490, 1350, 1690),
], dtype=float)
HIGH_FORMANTS = (3300.0, 3750.0)
BANDWIDTHS = np.array([60.0, 90.0, 120.0, 150.0, 200.0])
CONTROL_RATE = 200  # Hz; the F0 contour is built at this rate and interpolated (it is smooth)
PULSE_TABLE_SIZE = 4096  # phase steps per glottal period; far finer than the 50-150 samples of a period

WORDS = (
    "THE", "OF", "AND", "TO", "A", "IN", "HE", "THAT", "WAS", "IT", "HIS", "HER", "YOU", "WITH", "AS", "FOR",
    "HAD", "SHE", "NOT", "AT", "BUT", "BE", "ON", "MY", "HIM", "SAID", "ALL", "WHICH", "FROM", "SO", "THEY",
    "THERE", "WERE", "ONE", "WOULD", "NOW", "LITTLE", "HOUSE", "OLD", "MAN", "TIME", "WATER", "MORNING", "HAND",
    "NIGHT", "DOOR", "RIVER", "LIGHT", "STREET", "WINDOW", "GARDEN", "LETTER", "QUIET", "SUMMER", "VOICE",
)
FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo")
LAST_NAMES = ("Ash", "Brook", "Carter", "Dale", "Ellis", "Frost", "Gray", "Hale", "Irwin", "Jones", "Kent", "Lowe")


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker's voice: the timbre and habits emotion modulates."""

    speaker_id: str
    gender: str
    f0_hz: float
    formant_scale: float
    bandwidth_scale: float
    rate_sps: float  # syllables per second at neutral arousal
    level_db: float  # active-speech RMS in dBFS at neutral arousal
    breathiness: float
    jitter: float
    shimmer: float
    open_quotient: float


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: who says it, with which emotion (category and latent values), for how long."""

    utt_id: str
    speaker: Speaker
    category: str
    latent: tuple[float, float, float]  # arousal, valence, dominance in [-1, 1]
    duration_s: float
    expressiveness: float
    extra: dict  # layout-specific fields (session, split, dialog, ...)


@dataclass(frozen=True)
class Prosody:
    """Acoustic targets of one utterance, derived from its latent values and its speaker."""

    f0_hz: float
    range_st: float
    slope_st: float
    rate_sps: float
    pause_s: float
    level_db: float
    tilt_pole: float
    open_quotient: float
    breathiness: float
    jitter: float
    shimmer: float
    formant_shift: float
    f1_shift: float
    accent_db: float


# ---------------------------------------------------------------------------------------------------------------
# Random streams


def _rng(seed: int, layout: str, purpose: str, index: int = 0) -> np.random.Generator:
    """An independent stream per (seed, layout, purpose, index); no dependence on call order or hashing."""
    purpose_key = int.from_bytes(purpose.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([seed, LAYOUTS.index(layout), purpose_key, index])


def _make_speaker(rng: np.random.Generator, speaker_id: str, gender: str) -> Speaker:
    female = gender == "F"
    return Speaker(
        speaker_id=speaker_id, gender=gender,
        f0_hz=(210.0 if female else 115.0) * float(np.exp(rng.normal(0, 0.1))),
        formant_scale=(1.15 if female else 1.0) * float(rng.normal(1.0, 0.03)),
        bandwidth_scale=float(np.exp(rng.normal(0, 0.1))),
        rate_sps=4.2 * float(np.exp(rng.normal(0, 0.08))),
        level_db=-28.0 + float(rng.normal(0, 1.5)),
        breathiness=(0.12 if female else 0.08) * float(np.exp(rng.normal(0, 0.3))),
        jitter=0.008 * float(np.exp(rng.normal(0, 0.3))),
        shimmer=0.06 * float(np.exp(rng.normal(0, 0.3))),
        open_quotient=float(np.clip(rng.normal(0.6, 0.03), 0.5, 0.7)),
    )


def _draw_latent(rng: np.random.Generator, category: str) -> tuple[float, float, float]:
    mean = np.array(CATEGORY_MEANS[category])
    values = np.clip(mean + rng.normal(0, LATENT_SD, 3), -1.0, 1.0)
    return tuple(round(float(v), 6) for v in values)


# ---------------------------------------------------------------------------------------------------------------
# Voice model


def _prosody(rng: np.random.Generator, spk: Speaker, latent: tuple[float, float, float], expr: float) -> Prosody:
    """Map latent (a, v, d) to acoustic targets; arousal cleanly, valence through a noisy cue."""
    a, v, d = latent
    a_cue = expr * (a + rng.normal(0, AROUSAL_CUE_NOISE))
    v_cue = expr * (v + rng.normal(0, VALENCE_CUE_NOISE))
    d_cue = expr * d
    return Prosody(
        f0_hz=spk.f0_hz * 2 ** (4.0 * a_cue / 12),  # +-4 semitones over the arousal range
        range_st=2.0 + 2.5 * (1 + a_cue),
        slope_st=-2.0 + 1.5 * v_cue,  # declination; positive valence keeps the contour up
        rate_sps=spk.rate_sps * 2 ** (0.35 * a_cue) * float(np.exp(rng.normal(0, 0.04))),
        pause_s=0.22 * 2 ** (-0.6 * a_cue),
        level_db=spk.level_db + 7.0 * a_cue + 2.0 * d_cue,
        tilt_pole=float(np.clip(0.55 - 0.25 * a_cue - 0.1 * d_cue, 0.1, 0.85)),
        open_quotient=float(np.clip(spk.open_quotient - 0.08 * a_cue - 0.06 * d_cue + 0.04 * v_cue, 0.35, 0.85)),
        breathiness=spk.breathiness * 2 ** (-0.8 * a_cue),
        jitter=spk.jitter * 2 ** (-0.6 * v_cue),
        shimmer=spk.shimmer * 2 ** (-0.6 * v_cue),
        formant_shift=1.0 + 0.035 * v_cue,  # a smile shortens the vocal tract
        f1_shift=1.0 + 0.06 * a_cue,  # a wider jaw opening raises F1
        accent_db=2.0 + 2.0 * (1 + a_cue),
    )


def _syllables(rng: np.random.Generator, pros: Prosody, duration_s: float) -> list[tuple[float, float]]:
    """Syllable (start, end) times in seconds: phrases of 3-7 syllables separated by pauses."""
    pos = rng.uniform(0.08, 0.2)
    end_speech = duration_s - rng.uniform(0.08, 0.2)
    out: list[tuple[float, float]] = []
    left_in_phrase = int(rng.integers(3, 8))
    while True:
        dur = max(0.07, rng.gamma(8.0, 1.0 / (8.0 * pros.rate_sps)))
        if pos + dur > end_speech:
            break
        out.append((pos, pos + dur))
        pos += dur
        left_in_phrase -= 1
        if left_in_phrase == 0:
            pos += pros.pause_s * rng.uniform(0.5, 1.5)
            left_in_phrase = int(rng.integers(3, 8))
    return out or [(0.1, duration_s - 0.1)]


def _f0_contour(rng: np.random.Generator, pros: Prosody, sylls, duration_s: float, n: int, sr: int) -> np.ndarray:
    nc = int(duration_s * CONTROL_RATE) + 2
    tc = np.arange(nc) / CONTROL_RATE
    target = np.zeros(nc)
    heights = pros.range_st * (rng.uniform(0, 1, len(sylls)) ** 1.5 - 0.3)
    for (s, e), h in zip(sylls, heights, strict=True):
        target[int(s * CONTROL_RATE):int(e * CONTROL_RATE) + 1] = h
    glide = np.hanning(int(0.1 * CONTROL_RATE) + 1)  # 100 ms symmetric glide between accent targets
    accents = np.convolve(target, glide / glide.sum(), mode="same")
    drift_pole = math.exp(-1.0 / (0.2 * CONTROL_RATE))
    drift = signal.lfilter([1 - drift_pole], [1, -drift_pole], rng.normal(0, 1.5, nc))
    st = pros.slope_st * (tc / duration_s - 0.5) + accents + drift
    return np.interp(np.arange(n) / sr, tc, pros.f0_hz * 2 ** (st / 12))


def _vocal_tract(formants: np.ndarray, bandwidths: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Cascade of unity-DC-gain two-pole resonators (Klatt), none above 0.45 sr, as one all-pole filter (b, a).

    One direct-form filter (like an LPC synthesis filter) instead of second-order sections: one scipy call per
    syllable instead of one per formant.
    """
    keep = formants < 0.45 * sr
    r = np.exp(-np.pi * bandwidths[keep] / sr)
    a1 = -2 * r * np.cos(2 * np.pi * formants[keep] / sr)
    a2 = r * r
    a = np.array([1.0])
    for c1, c2 in zip(a1, a2, strict=True):
        a = np.convolve(a, [1.0, c1, c2])
    return np.array([np.prod(1 + a1 + a2)]), a


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance white noise; uniform rather than Gaussian because it is several times cheaper to draw
    and, once filtered or heard, indistinguishable."""
    return (rng.random(n) - 0.5) * math.sqrt(12.0)


def _rosenberg_table(open_quotient: float) -> np.ndarray:
    """One period of a Rosenberg glottal pulse (opening 70 %, closing 30 % of the open phase), tabulated.

    Looking the pulse up by phase costs one gather per sample instead of two cosines.
    """
    frac = np.arange(PULSE_TABLE_SIZE) / PULSE_TABLE_SIZE
    t_open, t_close = 0.7 * open_quotient, 0.3 * open_quotient
    return np.where(frac < t_open, 0.5 * (1 - np.cos(np.pi * frac / t_open)),
                    np.where(frac < open_quotient, np.cos(0.5 * np.pi * (frac - t_open) / t_close), 0.0))


@functools.lru_cache(maxsize=8)
def _telephone_band(sr: int) -> np.ndarray:
    return signal.butter(4, [300.0, 3400.0], btype="bandpass", fs=sr, output="sos")


def _render(rng: np.random.Generator, spk: Speaker, pros: Prosody, duration_s: float,
            sr: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Render one utterance (float64, roughly -1..1) at ``sr``; also return its syllables' ``(start, end)``."""
    n = int(round(duration_s * sr))
    sylls = _syllables(rng, pros, duration_s)

    # Source: phase-accumulated F0 with per-period jitter, then a Rosenberg pulse per period.
    f0 = _f0_contour(rng, pros, sylls, duration_s, n, sr)
    period0 = (np.cumsum(f0) / sr).astype(np.int64)
    jitter = 1 + pros.jitter * rng.standard_normal(int(period0[-1]) + 2)
    phase = np.cumsum(f0 * jitter[period0]) / sr
    period = phase.astype(np.int64)
    frac = phase - period
    oq = pros.open_quotient
    pulse = _rosenberg_table(oq)[(frac * PULSE_TABLE_SIZE).astype(np.int64)]
    shimmer = np.exp(pros.shimmer * rng.standard_normal(int(period[-1]) + 2))
    voiced = np.diff(pulse, prepend=pulse[0]) * shimmer[period]  # glottal flow derivative (+ lip radiation)
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-12
    # Aspiration is louder while the glottis is open (pitch-synchronous), as in breathy voice.
    aspiration = _white(rng, n) * (0.4 + 0.6 * (frac < oq)) * pros.breathiness * 2.0

    env = np.zeros(n)
    fric_env = np.zeros(n)
    accent_gain = 10 ** (rng.normal(0, pros.accent_db, len(sylls)) / 20)
    for (s, e), g in zip(sylls, accent_gain, strict=True):
        i0, i1 = int(s * sr), min(int(e * sr), n)
        env[i0:i1] = g * np.sqrt(np.sin(np.pi * np.linspace(0, 1, i1 - i0)))  # fast rise, rounded top
        if rng.uniform() < 0.5:  # a fricative onset straddling the syllable start
            length = int(rng.uniform(0.03, 0.08) * sr)
            f0_i = max(0, i0 - length // 2)
            fric_env[f0_i:f0_i + length] += np.hanning(length)[: n - f0_i] * g
    source = (voiced + aspiration) * env

    # Filter: one vowel per syllable through the speaker's (and emotion's) formants.
    tail = int(0.03 * sr)
    speech = np.zeros(n + tail)
    formant_scale = spk.formant_scale * pros.formant_shift
    for s, e in sylls:
        i0, i1 = int(s * sr), min(int(e * sr), n)
        vowel = VOWELS[int(rng.integers(len(VOWELS)))]
        jitter_f = np.exp(rng.normal(0, 0.04, 3))
        formants = np.concatenate([vowel * jitter_f * [pros.f1_shift, 1.0, 1.0], HIGH_FORMANTS]) * formant_scale
        bws = BANDWIDTHS * spk.bandwidth_scale * (1 + 2 * pros.breathiness)
        seg = np.concatenate([source[i0:i1], np.zeros(tail)])
        speech[i0:i1 + tail] += signal.lfilter(*_vocal_tract(formants, bws, sr), seg)
    speech = speech[:n]
    speech = signal.lfilter([1 - pros.tilt_pole], [1, -pros.tilt_pole], speech)

    active = env > 0.2
    speech /= np.sqrt(np.mean(speech[active] ** 2)) + 1e-12
    fric = np.diff(_white(rng, n + 1))  # differenced white noise: a +6 dB/octave hiss, like a fricative
    speech += 0.35 * fric / (np.sqrt(np.mean(fric**2)) + 1e-12) * fric_env
    speech *= 10 ** (pros.level_db / 20)

    # Background: pink-ish noise at a random SNR.
    noise = signal.lfilter([1.0], [1.0, -0.9], _white(rng, n))
    snr_db = rng.uniform(22.0, 38.0)
    speech += noise / np.sqrt(np.mean(noise**2)) * 10 ** ((pros.level_db - snr_db) / 20)
    return speech, sylls


def _telephone(rng: np.random.Generator, y: np.ndarray, sr: int) -> np.ndarray:
    """300-3400 Hz channel, line hiss and hum, and G.711 mu-law companding (8 bits)."""
    y = signal.sosfilt(_telephone_band(sr), y)
    rms = np.sqrt(np.mean(y**2)) + 1e-12
    t = np.arange(len(y)) / sr
    hum = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 3, 5))
    y = y + rms * 10 ** (-rng.uniform(16, 26) / 20) * _white(rng, len(y)) + rms * 0.01 * hum
    mu = 255.0
    x = np.clip(y / 0.8, -1, 1)
    code = np.round(np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) * 127) / 127
    return np.sign(code) * np.expm1(np.abs(code) * np.log1p(mu)) / mu * 0.8


def _voice(seed: int, layout: str, index: int, utt: Utterance, sr: int) -> tuple[np.ndarray, list]:
    """One utterance's audio and its syllables' ``(start, end)`` seconds (where the voice is)."""
    rng = _rng(seed, layout, "audio", index)
    pros = _prosody(rng, utt.speaker, utt.latent, utt.expressiveness)
    y, sylls = _render(rng, utt.speaker, pros, utt.duration_s, sr)
    if layout == "callcenter":
        y = _telephone(rng, y, sr)
    return np.clip(y, -0.99, 0.99), sylls


def _audio(seed: int, layout: str, index: int, utt: Utterance, sr: int) -> np.ndarray:
    return _voice(seed, layout, index, utt, sr)[0]


# IEMOCAP's forced alignments count 10 ms frames.
WDSEG_FRAMES_PER_S = 100


def _wdseg(rng: np.random.Generator, sylls: list[tuple[float, float]], duration_s: float) -> str:
    """A Sphinx ``.wdseg`` word segmentation of one utterance whose words are runs of 1-2 syllables.

    A word spans frames ``ceil(100 * start)`` to ``floor(100 * end) - 1`` (the end frame is inclusive), so it lies
    within its syllables, on voiced speech; syllables that touch (one phrase) may share a word, a pause never
    does. Silences are ``<s>`` (leading), ``</s>`` (trailing) and ``<sil>`` or, now and then, ``++BREATHING++``.
    """
    words: list[tuple[int, int]] = []
    i = 0
    while i < len(sylls):
        n = 1
        limit = int(rng.integers(1, 3))
        while n < limit and i + n < len(sylls) and sylls[i + n][0] - sylls[i + n - 1][1] < 1e-9:
            n += 1
        start = math.ceil(sylls[i][0] * WDSEG_FRAMES_PER_S)
        end = max(start, math.floor(sylls[i + n - 1][1] * WDSEG_FRAMES_PER_S) - 1)
        words.append((start, end))
        i += n
    last = int(duration_s * WDSEG_FRAMES_PER_S) - 1
    rows: list[tuple[int, int, str]] = []
    pos = 0
    for k, (start, end) in enumerate(words):
        if start > pos:
            token = "<s>" if k == 0 else ("++BREATHING++" if rng.uniform() < 0.2 else "<sil>")
            rows.append((pos, start - 1, token))
        word = WORDS[int(rng.integers(len(WORDS)))] + ("(2)" if rng.uniform() < 0.1 else "")
        rows.append((start, end, word))
        pos = end + 1
    if pos <= last:
        rows.append((pos, last, "</s>"))
    scores = [-int(rng.integers(2_000, 12_000)) * (e - s + 1) for s, e, _ in rows]
    lines = [" SFrm  EFrm    SegAScr Word"]
    lines += [f"{s:6d}{e:6d}{score:11d} {token}" for (s, e, token), score in zip(rows, scores, strict=True)]
    lines.append(f" Total seg score: {sum(scores)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Raters


@dataclass(frozen=True)
class Ratings:
    """What one utterance's raters said: a category vote and integer attribute ratings per rater."""

    rater_ids: tuple[str, ...]
    votes: tuple[str, ...]
    scores: np.ndarray  # (n_raters, 3) integer ratings of arousal, valence, dominance on the corpus scale

    def consensus_category(self) -> str | None:
        """The category more than half of the raters voted, or None (no agreement)."""
        counts: dict[str, int] = {}
        for v in self.votes:
            counts[v] = counts.get(v, 0) + 1
        best = max(sorted(counts), key=lambda c: counts[c])
        return best if 2 * counts[best] > len(self.votes) else None

    def consensus_scores(self) -> tuple[float, float, float]:
        """Mean rating per attribute (arousal, valence, dominance)."""
        return tuple(float(x) for x in self.scores.mean(axis=0))


def _rater_pool(seed: int, layout: str, ids: list[str]) -> dict[str, np.ndarray]:
    rng = _rng(seed, layout, "raters")
    return {rid: rng.normal(0, RATER_BIAS_SD, 3) for rid in ids}


def _rate(rng: np.random.Generator, utt: Utterance, pool: dict[str, np.ndarray], scale: tuple[int, int],
          p_agree: float, neighbours: dict[str, tuple[str, ...]]) -> Ratings:
    lo, hi = scale
    ids = sorted(pool)
    n = int(rng.integers(3, 6))
    chosen = sorted(rng.choice(len(ids), size=n, replace=False).tolist())
    rater_ids = tuple(ids[i] for i in chosen)
    bias = np.stack([pool[r] for r in rater_ids])
    x = np.array(utt.latent)[None, :] + bias + rng.normal(0, RATER_NOISE, (n, 3))
    scores = np.clip(np.rint((lo + hi) / 2 + (hi - lo) / 2 * x), lo, hi).astype(int)
    votes = []
    for _ in range(n):
        if rng.uniform() < p_agree:
            votes.append(utt.category)
        else:
            options = neighbours[utt.category]
            votes.append(options[int(rng.integers(len(options)))])
    return Ratings(rater_ids=rater_ids, votes=tuple(votes), scores=scores)


def _fmt(x: float) -> str:
    """Consensus values as the corpora print them: up to 6 decimals, no trailing zeros."""
    return f"{x:.6f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------------------------------------
# Writers


class _Writer:
    """Writes the corpus's files in call order and counts them and the audio they hold."""

    def __init__(self, corpus_dir: Path) -> None:
        self.corpus_dir = corpus_dir
        self.files = 0
        self.audio_seconds = 0.0

    def audio(self, path: Path, y: np.ndarray, sr: int, fmt: str = "WAV") -> None:
        buf = io.BytesIO()  # encode in memory: one plain write per file, no libsndfile flush/seek on disk
        sf.write(buf, y.astype(np.float32), sr, format=fmt, subtype="PCM_16")
        self.write_bytes(path, buf.getvalue())
        self.audio_seconds += len(y) / sr

    def text(self, path: Path, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def write_bytes(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files += 1

    def csv(self, path: Path, header: list[str], rows: list[list]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        self.text(path, buf.getvalue())

    def truth(self, utts: list[Utterance]) -> None:
        lines = []
        for u in sorted(utts, key=lambda u: u.utt_id):
            row = {"utt_id": u.utt_id, "speaker": u.speaker.speaker_id, "gender": u.speaker.gender,
                   "category": u.category, "arousal": u.latent[0], "valence": u.latent[1],
                   "dominance": u.latent[2], "duration_s": u.duration_s, **u.extra}
            lines.append(json.dumps(row, sort_keys=True))
        self.text(self.corpus_dir / TRUTH_FILE, "\n".join(lines) + "\n")


def _duration(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(*DURATION_RANGE_S)), 3)


def _write_iemocap(seed: int, mult: int, w: _Writer) -> list[Utterance]:
    layout = "iemocap"
    plan = _rng(seed, layout, "plan")
    pool = _rater_pool(seed, layout, [f"E{i}" for i in range(1, 7)])
    k = 1 if mult == 1 else 4  # dialogs per (kind, leading actor) and session
    turns = 11 if mult == 1 else 22  # full: 4x dialogs x 2x turns = 8x utterances; still the corpus's 10 actors
    utts: list[Utterance] = []
    for s in range(1, 6):
        spks = {g: _make_speaker(plan, f"Ses{s:02d}{g}", g) for g in ("F", "M")}
        dialogs = []
        for j in range(k):
            for lead in ("F", "M"):
                dialogs.append((f"Ses{s:02d}{lead}_impro{2 * j + (lead == 'M') + 1:02d}", 1.0))
        for j in range(k):
            for lead in ("F", "M"):
                dialogs.append((f"Ses{s:02d}{lead}_script{j + 1:02d}_{j % 3 + 1}", 0.9))
        session_dir = w.corpus_dir / f"Session{s}"
        for d_index, (dialog, expr) in enumerate(dialogs):
            target = EMOTIONS_4[(d_index + s) % 4]
            counters = {"F": 0, "M": 0}
            speaker_g = "F" if plan.uniform() < 0.5 else "M"
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            t = float(plan.uniform(1.0, 6.0))
            for _ in range(turns):
                category = target if plan.uniform() < 0.55 else EMOTIONS_4[int(plan.integers(4))]
                utt_id = f"{dialog}_{speaker_g}{counters[speaker_g]:03d}"
                counters[speaker_g] += 1
                utt = Utterance(utt_id, spks[speaker_g], category, _draw_latent(plan, category), _duration(plan),
                                expr, {"session": f"Session{s}", "dialog": dialog})
                ratings = _rate(plan, utt, pool, (1, 5), 0.75, NEIGHBOURS_IEMOCAP)
                cat = ratings.consensus_category()
                a, v, dom = ratings.consensus_scores()
                start, end = t, t + utt.duration_s
                lines.append(f"[{start:.4f} - {end:.4f}]\t{utt_id}\t{IEMOCAP_CODES[cat] if cat else 'xxx'}\t"
                             f"[{v:.4f}, {a:.4f}, {dom:.4f}]")
                for rid, vote in zip(ratings.rater_ids, ratings.votes, strict=True):
                    lines.append(f"C-{rid}:\t{IEMOCAP_RATER_NAMES[vote]};\t()")
                for rid, (ra, rv, rd) in zip(ratings.rater_ids, ratings.scores, strict=True):
                    lines.append(f"A-{rid}:\tval {rv}; act {ra}; dom  {rd};\t()")
                lines.append("")
                y, sylls = _voice(seed, layout, len(utts), utt, SAMPLE_RATE)
                w.audio(session_dir / "sentences" / "wav" / dialog / f"{utt_id}.wav", y, SAMPLE_RATE)
                w.text(session_dir / "sentences" / "ForcedAlignment" / dialog / f"{utt_id}.wdseg",
                       _wdseg(_rng(seed, layout, "words", len(utts)), sylls, utt.duration_s))
                utts.append(utt)
                t = end + float(plan.uniform(0.3, 1.5))
                speaker_g = "M" if speaker_g == "F" else "F"
            w.text(session_dir / "dialog" / "EmoEvaluation" / f"{dialog}.txt", "\n".join(lines))
    return utts


def _split_speakers(rng: np.random.Generator, n: int) -> list[str]:
    """Speaker-disjoint Train/Development/Test1 assignment, about 60/15/25 % of speakers."""
    n_train, n_dev = round(0.6 * n), max(1, round(0.15 * n))
    names = ["Train"] * n_train + ["Development"] * n_dev + ["Test1"] * (n - n_train - n_dev)
    return [names[i] for i in rng.permutation(n)]


def _write_msp_podcast(seed: int, mult: int, w: _Writer) -> list[Utterance]:
    layout = "msp_podcast"
    plan = _rng(seed, layout, "plan")
    pool = _rater_pool(seed, layout, [f"WORKER{i:05d}" for i in plan.choice(20000, 60, replace=False)])
    n_spk, per_spk = 32 * mult, 10
    spk_nums = sorted(int(x) for x in plan.choice(np.arange(1, 4000), n_spk, replace=False))
    splits = _split_speakers(plan, n_spk)
    weights = np.array([0.4, 0.3, 0.15, 0.15])  # natural speech is mostly neutral
    utts: list[Utterance] = []
    consensus, detailed = [], []
    podcast = 0
    for i, num in enumerate(spk_nums):
        gender = "F" if i % 2 == 0 else "M"
        spk = _make_speaker(plan, f"msp_{num:04d}", gender)
        n_podcasts = int(plan.integers(1, 3))
        segment = 0
        for u in range(per_spk):
            if u == 0 or (n_podcasts == 2 and u == per_spk // 2):
                podcast += 1
                segment = int(plan.integers(1, 20))
            segment += int(plan.integers(1, 4))
            category = EMOTIONS_4[int(plan.choice(4, p=weights))]
            utt_id = f"MSP-PODCAST_{podcast:04d}_{segment:04d}"
            utt = Utterance(utt_id, spk, category, _draw_latent(plan, category), _duration(plan), 0.8,
                            {"split": splits[i], "spkr_id": num})
            ratings = _rate(plan, utt, pool, (1, 7), 0.7, NEIGHBOURS_PODCAST)
            cat = ratings.consensus_category()
            a, v, d = ratings.consensus_scores()
            consensus.append([f"{utt_id}.wav", PODCAST_CODES[cat] if cat else "X", _fmt(a), _fmt(v), _fmt(d),
                              num, "Female" if gender == "F" else "Male", splits[i]])
            for rid, vote, (ra, rv, rd) in zip(ratings.rater_ids, ratings.votes, ratings.scores, strict=True):
                detailed.append([f"{utt_id}.wav", rid, PODCAST_CODES[vote], ra, rv, rd])
            w.audio(w.corpus_dir / "Audios" / f"{utt_id}.wav", _audio(seed, layout, len(utts), utt, SAMPLE_RATE),
                    SAMPLE_RATE)
            utts.append(utt)
    header = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
    w.csv(w.corpus_dir / "Labels" / "labels_consensus.csv", header, sorted(consensus))
    w.csv(w.corpus_dir / "Labels" / "labels_detailed.csv",
          ["FileName", "WorkerID", "EmoClass", "EmoAct", "EmoVal", "EmoDom"], sorted(detailed))
    return utts


def _write_callcenter(seed: int, mult: int, w: _Writer) -> list[Utterance]:
    layout = "callcenter"
    plan = _rng(seed, layout, "plan")
    pool = _rater_pool(seed, layout, [f"R{i:02d}" for i in range(1, 13)])
    n_spk = 12 * mult
    weights = np.array([0.5, 0.15, 0.1, 0.25])  # complaints: more anger than joy
    utts: list[Utterance] = []
    rows = []
    call = 0
    for i in range(n_spk):
        gender = "F" if i % 2 == 0 else "M"
        spk = _make_speaker(plan, f"cc_spk{i + 1:03d}", gender)
        n_utts = 13 if i < n_spk // 2 else 12
        n_calls = int(plan.integers(2, 4))
        call_starts = set(np.linspace(0, n_utts, n_calls, endpoint=False).astype(int).tolist())
        turn = 0
        for u in range(n_utts):
            if u in call_starts:
                call += 1
                turn = 0
            turn += 1
            category = EMOTIONS_4[int(plan.choice(4, p=weights))]
            utt_id = f"cc{call:04d}_{turn:02d}"
            # Callers are less expressive than actors, and the channel hides part of what is left.
            utt = Utterance(utt_id, spk, category, _draw_latent(plan, category), _duration(plan), 0.6,
                            {"session": f"call{call:04d}"})
            ratings = _rate(plan, utt, pool, (1, 5), 0.7, NEIGHBOURS_IEMOCAP)
            cat = ratings.consensus_category()
            a, v, d = ratings.consensus_scores()
            rel = f"audio/{utt_id}.wav"
            rows.append([rel, utt_id, spk.speaker_id, gender, f"call{call:04d}", "", "spontaneous", cat or "",
                         _fmt(a), _fmt(v), _fmt(d)])
            w.audio(w.corpus_dir / rel, _audio(seed, layout, len(utts), utt, TELEPHONE_RATE), TELEPHONE_RATE)
            utts.append(utt)
    header = ["path", "utt_id", "speaker", "gender", "session", "split", "style", "emotion", "arousal", "valence",
              "dominance"]
    w.csv(w.corpus_dir / "manifest.csv", header, rows)
    return utts


def _write_librispeech(seed: int, mult: int, w: _Writer) -> list[Utterance]:
    layout = "librispeech"
    plan = _rng(seed, layout, "plan")
    subset = "train-clean-100"
    n_spk = 8 * mult
    spk_nums = sorted(int(x) for x in plan.choice(np.arange(10, 9000), n_spk, replace=False))
    chapters = plan.choice(np.arange(100, 200000), 2 * n_spk, replace=False).tolist()
    utts: list[Utterance] = []
    speaker_rows = []
    for i, num in enumerate(spk_nums):
        gender = "F" if i % 2 == 0 else "M"
        spk = _make_speaker(plan, f"libri_{num}", gender)
        seconds = 0.0
        for c in range(2):
            chapter = int(chapters[2 * i + c])
            folder = w.corpus_dir / subset / str(num) / str(chapter)
            trans = []
            for k in range(6 + c % 2):
                utt_id = f"{num}-{chapter}-{k:04d}"
                # Read speech: neutral-ish, little variation; no emotion labels are written.
                latent = tuple(round(float(x), 6) for x in np.clip(
                    np.array([-0.15, 0.05, 0.0]) + plan.normal(0, 0.15, 3), -1, 1))
                utt = Utterance(utt_id, spk, "neutral", latent, _duration(plan), 0.7,
                                {"session": str(chapter), "subset": subset})
                words = " ".join(WORDS[j] for j in plan.integers(len(WORDS), size=int(plan.integers(4, 12))))
                trans.append(f"{utt_id} {words}")
                w.audio(folder / f"{utt_id}.flac", _audio(seed, layout, len(utts), utt, SAMPLE_RATE), SAMPLE_RATE,
                        fmt="FLAC")
                seconds += utt.duration_s
                utts.append(utt)
            w.text(folder / f"{num}-{chapter}.trans.txt", "\n".join(trans) + "\n")
        name = f"{FIRST_NAMES[int(plan.integers(len(FIRST_NAMES)))]} {LAST_NAMES[int(plan.integers(len(LAST_NAMES)))]}"
        speaker_rows.append(f"{num:<5}| {gender} | {subset:<16} | {seconds / 60:5.2f} | {name}")
    header = [
        "; Some readers may appear in more than one subset",
        "; (synthetic corpus written by emotune's data_io.synth in the LibriSpeech layout)",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    w.text(w.corpus_dir / "SPEAKERS.TXT", "\n".join(header + speaker_rows) + "\n")
    return utts


def _write_ami(seed: int, mult: int, w: _Writer) -> list[Utterance]:
    layout = "ami"
    plan = _rng(seed, layout, "plan")
    # small: 2 groups, 3 meetings of 1-1.5 min (about 4 min of audio); full: 8 groups x 3 meetings of 1.5-3 min.
    n_groups = 2 if mult == 1 else 8
    length_range = (60.0, 90.0) if mult == 1 else (90.0, 180.0)
    weights = np.array([0.7, 0.15, 0.05, 0.1])  # meetings: mostly neutral
    utts: list[Utterance] = []
    for g in range(n_groups):
        series = f"{('ES', 'IS', 'TS')[g % 3]}{2002 + g:04d}"
        genders = [("F", "M", "F", "M")[i] for i in plan.permutation(4)]
        spks = [_make_speaker(plan, f"{series}_{'ABCD'[i]}", genders[i]) for i in range(4)]
        for letter in "abc"[: 3 if mult > 1 else 2 - g % 2]:
            meeting = f"{series}{letter}"
            length = float(plan.uniform(*length_range))
            n = int(round(length * SAMPLE_RATE))
            # Room noise under everything (pink-ish, about -66 dBFS), so the gaps are quiet but not digital silence.
            room = signal.lfilter([1.0], [1.0, -0.9], _white(_rng(seed, layout, "room", len(utts)), n))
            mix = room / np.sqrt(np.mean(room**2)) * 10 ** (-66 / 20)
            t = float(plan.uniform(1.0, 3.0))
            who = -1
            turn = k = 0
            while True:
                who = (who + 1 + int(plan.integers(3))) % 4 if who >= 0 else int(plan.integers(4))
                planned = []
                for _ in range(int(plan.integers(1, 4))):
                    category = EMOTIONS_4[int(plan.choice(4, p=weights))]
                    planned.append((category, _draw_latent(plan, category), _duration(plan),
                                    float(plan.uniform(0.0, 0.1))))
                if t + sum(d + p for _, _, d, p in planned) > length - 1.0:
                    break
                for category, latent, duration, pause in planned:
                    utt = Utterance(f"{meeting}_u{k:03d}", spks[who], category, latent, duration, 0.5,
                                    {"meeting": meeting, "offset_s": round(t, 3), "turn": turn})
                    y = _audio(seed, layout, len(utts), utt, SAMPLE_RATE)
                    i0 = int(round(t * SAMPLE_RATE))
                    mix[i0:i0 + len(y)] += y[: n - i0]
                    utts.append(utt)
                    k += 1
                    t += duration + pause
                turn += 1
                t += float(plan.uniform(1.0, 2.5))
            w.audio(w.corpus_dir / meeting / "audio" / f"{meeting}.Mix-Headset.wav", np.clip(mix, -0.99, 0.99),
                    SAMPLE_RATE)
    return utts


def _write_msp_improv(seed: int, mult: int, w: _Writer) -> list[Utterance]:
    layout = "msp_improv"
    plan = _rng(seed, layout, "plan")
    rater_nums = plan.choice(10000, 40, replace=False)
    pool = _rater_pool(seed, layout, [f"p{i:02d}-{1 + i % 4}-{int(n):04d}" for i, n in enumerate(rater_nums)])
    n_sentences = 2 * mult  # the corpus has 20 target sentences; small: 2 x 4 emotions, about 22 takes per actor
    weights_p = np.array([0.55, 0.2, 0.1, 0.15])  # talk between the takes: mostly neutral
    utts: list[Utterance] = []
    entries: list[tuple[str, str]] = []
    for s in range(1, 7):
        spks = {g: _make_speaker(plan, f"improv_{g}{s:02d}", g) for g in ("F", "M")}
        counters: dict[tuple[str, str], int] = {}
        for sentence in range(1, n_sentences + 1):
            for target in EMOTIONS_4:
                sent = f"S{sentence:02d}{IMPROV_CODES[target]}"
                for g, other in (("F", "M"), ("M", "F")):
                    for scenario, chance, expr, natural in IMPROV_TAKES:
                        if chance < 1 and plan.uniform() >= chance:
                            continue
                        if scenario == "R":
                            category = target
                        elif scenario == "P":
                            category = EMOTIONS_4[int(plan.choice(4, p=weights_p))]
                        else:  # an improvisation drifts off its target now and then
                            category = target if plan.uniform() < 0.75 else EMOTIONS_4[int(plan.integers(4))]
                        counters[g, scenario] = counters.get((g, scenario), 0) + 1
                        name = f"{sent}-{g}{s:02d}-{scenario}-{g}{other}{counters[g, scenario]:02d}"
                        utt = Utterance(f"MSP-IMPROV-{name}", spks[g], category, _draw_latent(plan, category),
                                        _duration(plan), expr,
                                        {"session": f"session{s}", "sentence": sent, "scenario": scenario})
                        ratings = _rate(plan, utt, pool, (1, 5), 0.7, NEIGHBOURS_IMPROV)
                        naturalness = np.clip(np.rint(natural + plan.normal(0, 0.7, len(ratings.rater_ids))), 1, 5)
                        cat = ratings.consensus_category()
                        a, v, d = ratings.consensus_scores()
                        lines = [f"UTD-IMPROV-{name}.avi; {IMPROV_CODES[cat] if cat else 'X'}; A:{a:.6f}; "
                                 f"V:{v:.6f}; D:{d:.6f} ; N:{naturalness.mean():.6f};"]
                        for rid, vote, (ra, rv, rd), rn in zip(ratings.rater_ids, ratings.votes, ratings.scores,
                                                               naturalness, strict=True):
                            lines.append(f"{rid}; {IMPROV_RATER_NAMES[vote]}; ; A:{ra:.1f}; V:{rv:.1f}; "
                                         f"D:{rd:.1f}; N:{rn:.1f};")
                        entries.append((name, "\n".join(lines)))
                        w.audio(w.corpus_dir / "Audio" / f"session{s}" / sent / scenario / f"{utt.utt_id}.wav",
                                _audio(seed, layout, len(utts), utt, SAMPLE_RATE), SAMPLE_RATE)
                        utts.append(utt)
    w.text(w.corpus_dir / "Evalution.txt", "\n\n".join(block for _, block in sorted(entries)) + "\n")
    return utts


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def generate(layout: str, out: Path, seed: int = 0, scale: str = "small") -> dict:
    """Write a synthetic corpus in a real corpus's on-disk layout.

    Args:
        layout: One of :data:`LAYOUTS`: ``iemocap`` (``IEMOCAP_full_release/Session{1..5}/...``), ``msp_podcast``
            (``MSP-Podcast/Audios`` + ``Labels/labels_consensus.csv``), ``callcenter`` (8 kHz telephone speech
            with a CSV manifest, read by the ``csv`` adapter), ``librispeech`` (``LibriSpeech/SPEAKERS.TXT`` and
            ``train-clean-100/<speaker>/<chapter>/*.flac``, no emotion labels), ``ami``
            (``amicorpus/<meeting>/audio/<meeting>.Mix-Headset.wav``: minutes-long meetings, no labels) or
            ``msp_improv`` (``MSP-IMPROV/Evalution.txt`` + ``Audio/session<n>/<sentence>/<scenario>/*.wav``).
        out: Folder that receives the corpus folder (:data:`CORPUS_FOLDERS`); created if missing.
        seed: Non-negative integer; the same seed gives byte-identical files.
        scale: ``small`` (a few hundred short utterances, or 3 one-minute meetings; seconds to write) or ``full``
            (about 8x more).

    Returns:
        Summary dict: ``layout``, ``corpus_dir``, ``seed``, ``scale``, ``n_utterances``, ``n_speakers``,
        ``audio_seconds``, ``files_written``, ``seconds`` (wall time).

    Raises:
        ValueError: Unknown layout or scale, a negative seed, or a corpus folder that already holds files.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    t0 = time.perf_counter()
    corpus_dir = Path(out) / CORPUS_FOLDERS[layout]
    if corpus_dir.exists() and any(corpus_dir.iterdir()):
        raise ValueError(f"{corpus_dir} already exists and is not empty; remove it or pass another --out "
                         f"(the generator never overwrites a corpus folder)")
    corpus_dir.mkdir(parents=True, exist_ok=True)
    w = _Writer(corpus_dir)
    mult = SCALES[scale]
    if layout == "iemocap":
        utts = _write_iemocap(int(seed), mult, w)
    elif layout == "msp_podcast":
        utts = _write_msp_podcast(int(seed), mult, w)
    elif layout == "callcenter":
        utts = _write_callcenter(int(seed), mult, w)
    elif layout == "librispeech":
        utts = _write_librispeech(int(seed), mult, w)
    elif layout == "ami":
        utts = _write_ami(int(seed), mult, w)
    else:
        utts = _write_msp_improv(int(seed), mult, w)
    w.truth(utts)
    return {
        "layout": layout, "corpus_dir": str(corpus_dir), "seed": int(seed), "scale": scale,
        "n_utterances": len(utts), "n_speakers": len({u.speaker.speaker_id for u in utts}),
        "audio_seconds": round(w.audio_seconds, 1), "files_written": w.files,
        "seconds": round(time.perf_counter() - t0, 2),
    }

"""Recording conditions: what real recordings do to speech, applied to a 16 kHz waveform, seeded.

``bench/robustness.py`` scores models under each of :data:`CONDITIONS`; augmenting a store
(:mod:`emoadapt.store.augment`) draws from :data:`AUGMENTATIONS`, the same kinds with random strengths. Reverb and the GSM codec come from Spotify's pedalboard (JUCE's DSP and libgsm in one wheel, no ffmpeg:
it works offline), the telephone band from scipy; MP3 and Opus are real encodes and decodes through libsndfile
(soundfile), the library that reads every file emoadapt loads. Additive noise is scaled to a signal-to-noise
ratio over the whole clip's power.

Each condition is ``f(wave, rng, sources) -> wave``: ``wave`` 1-D float32 at 16 kHz, ``rng`` a numpy Generator (the
only randomness), ``sources`` a :class:`NoiseSources` (other speakers' speech for babble, music); the result is
float32 at 16 kHz, of the same length within a codec's few milliseconds, clipped to [-1, 1] as a recording would be.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import soundfile as sf
import soxr

from .audio import SAMPLE_RATE, validate_waveform
from .errors import EmoadaptError


@dataclass
class NoiseSources:
    """Audio to mix in: ``speech`` (clips of speakers other than the one degraded; babble is several of them at
    once) and ``music`` (any non-speech recordings), 16 kHz float32 each."""
    speech: list[np.ndarray] = field(default_factory=list)
    music: list[np.ndarray] = field(default_factory=list)


def _clip(wave: np.ndarray) -> np.ndarray:
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def add_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wave`` plus ``noise`` (looped or cut to its length) scaled to ``snr_db`` dB below the clip's power."""
    noise = np.resize(np.asarray(noise, np.float32), len(wave))
    signal_power, noise_power = float(np.mean(wave ** 2)), float(np.mean(noise ** 2))
    if signal_power == 0 or noise_power == 0:
        return _clip(wave)
    return _clip(wave + noise * np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10))))


def _excerpt(pool: list[np.ndarray], length: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if not pool:
        raise EmoadaptError(None, f"this condition needs {what} to mix in (NoiseSources.{what} is empty)")
    source = pool[rng.integers(len(pool))]
    if len(source) <= length:
        return np.resize(source, length)
    start = rng.integers(len(source) - length)
    return source[start: start + length]


def white_noise(snr_db: float):
    return lambda wave, rng, sources: add_at_snr(wave, rng.standard_normal(len(wave)), snr_db)


def pink_noise(snr_db: float):
    """Noise whose power falls 3 dB per octave, as most room and machine noise does."""
    def apply(wave, rng, sources):
        spectrum = np.fft.rfft(rng.standard_normal(len(wave)))
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        return add_at_snr(wave, np.fft.irfft(spectrum, len(wave)), snr_db)
    return apply


def babble(snr_db: float, talkers: int = 4):
    """``talkers`` other speakers at once, each brought to the same power, then mixed at ``snr_db``."""
    def apply(wave, rng, sources):
        crowd = [_excerpt(sources.speech, len(wave), rng, "speech") for _ in range(talkers)]
        mix = sum(c / max(float(np.sqrt(np.mean(c ** 2))), 1e-8) for c in crowd)
        return add_at_snr(wave, mix, snr_db)
    return apply


def music(snr_db: float):
    return lambda wave, rng, sources: add_at_snr(wave, _excerpt(sources.music, len(wave), rng, "music"), snr_db)


def reverb(room_size: float = 0.7, wet_level: float = 0.35):
    """An algorithmic room (pedalboard's Freeverb), the dry signal kept at 0.65."""
    def apply(wave, rng, sources):
        from pedalboard import Reverb
        return _clip(Reverb(room_size=room_size, wet_level=wet_level, dry_level=0.65)(wave, SAMPLE_RATE))
    return apply


def resampled(rate: int):
    """Down to ``rate`` and back: what a recording made at that rate sounds like to a 16 kHz encoder."""
    def apply(wave, rng, sources):
        return _clip(validate_waveform(soxr.resample(wave, SAMPLE_RATE, rate), sample_rate=rate))
    return apply


def _mu_law(wave: np.ndarray, mu: int = 255) -> np.ndarray:
    """8-bit G.711 μ-law: compand, quantise to 256 levels, expand."""
    companded = np.sign(wave) * np.log1p(mu * np.abs(wave)) / np.log1p(mu)
    quantised = np.round((companded + 1) / 2 * mu) / mu * 2 - 1
    return np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu


def telephone(wave, rng, sources):
    """A landline: the 300–3400 Hz band (4th-order Butterworth: pedalboard's filters fall only 6 dB an octave),
    8 kHz, 8-bit μ-law."""
    from scipy.signal import butter, sosfilt
    band = sosfilt(butter(4, (300.0, 3400.0), btype="bandpass", fs=SAMPLE_RATE, output="sos"), wave)
    narrow = soxr.resample(np.clip(band, -1, 1), SAMPLE_RATE, 8000)
    return _clip(validate_waveform(_mu_law(np.clip(narrow, -1, 1)).astype(np.float32), sample_rate=8000))


def gsm(wave, rng, sources):
    """The GSM full-rate codec of 2G mobile calls (libgsm, 8 kHz inside)."""
    from pedalboard import GSMFullRateCompressor
    return _clip(GSMFullRateCompressor()(wave, SAMPLE_RATE))


def _through_file(wave: np.ndarray, rate: int, channels: int, format: str, subtype: str) -> np.ndarray:
    x = soxr.resample(wave, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else wave
    buffer = io.BytesIO()
    sf.write(buffer, np.repeat(x[:, None], channels, 1) if channels > 1 else x, rate, format=format,
             subtype=subtype)
    buffer.seek(0)
    decoded, decoded_rate = sf.read(buffer, dtype="float32", always_2d=True)
    return _clip(validate_waveform(decoded.mean(axis=1), sample_rate=decoded_rate)[: len(wave)])


def mp3_stereo_44k(wave, rng, sources):
    """An MP3 (LAME's default VBR) of a stereo 44.1 kHz recording, as a phone's or a browser's export."""
    return _through_file(wave, 44100, 2, "MP3", "MPEG_LAYER_III")


def mp3_16k(wave, rng, sources):
    """An MP3 of a mono 16 kHz recording (MPEG-2 layer III): the codec's artefacts at a fifth of the stereo 44.1 kHz
    encode's cost."""
    return _through_file(wave, SAMPLE_RATE, 1, "MP3", "MPEG_LAYER_III")


def opus(wave, rng, sources):
    """Ogg Opus at 16 kHz, libopus's default rate (voice messages, WebRTC)."""
    return _through_file(wave, SAMPLE_RATE, 1, "OGG", "OPUS")


def gain(db: float):
    return lambda wave, rng, sources: _clip(wave * 10 ** (db / 20))


def speed(factor: float):
    """Played ``factor`` times faster (pitch moves with it, as Kaldi's speed perturbation)."""
    def apply(wave, rng, sources):
        return _clip(soxr.resample(wave, SAMPLE_RATE * factor, SAMPLE_RATE))
    return apply


Condition = Callable[[np.ndarray, np.random.Generator, NoiseSources], np.ndarray]

CONDITIONS: dict[str, Condition] = {
    "mp3, stereo 44.1 kHz": mp3_stereo_44k,
    "opus": opus,
    "8 kHz": resampled(8000),
    "telephone (300-3400 Hz, 8 kHz, mu-law)": telephone,
    "gsm": gsm,
    "white noise 20 dB": white_noise(20),
    "white noise 10 dB": white_noise(10),
    "pink noise 10 dB": pink_noise(10),
    "babble 10 dB": babble(10),
    "music 10 dB": music(10),
    "reverb": reverb(),
    "gain -20 dB": gain(-20),
    "speed 1.1": speed(1.1),
}
"""Every condition by name. Those whose goal is set (issue 21): white noise 10 dB, babble 10 dB, telephone."""


def degrade(wave: np.ndarray, condition: str, *, seed: int, sources: NoiseSources | None = None) -> np.ndarray:
    """``wave`` under the named condition, the same for the same seed."""
    if condition not in CONDITIONS:
        raise EmoadaptError(None, f"unknown recording condition {condition!r}; the conditions are {sorted(CONDITIONS)}")
    return CONDITIONS[condition](np.asarray(wave, np.float32), np.random.default_rng(seed),
                                 sources or NoiseSources())


# --- augmentation: the same kinds of condition, each strength drawn at random -------------------------------------
AUGMENTATIONS: dict[str, Callable[[np.random.Generator], Condition]] = {
    "white noise": lambda rng: white_noise(rng.uniform(0, 20)),
    "pink noise": lambda rng: pink_noise(rng.uniform(0, 20)),
    "babble": lambda rng: babble(rng.uniform(0, 20), talkers=int(rng.integers(2, 7))),
    "noise recordings": lambda rng: music(rng.uniform(0, 20)),
    "reverb": lambda rng: reverb(room_size=rng.uniform(0.2, 0.9), wet_level=rng.uniform(0.1, 0.5)),
    "8 kHz": lambda rng: resampled(8000),
    "telephone": lambda rng: telephone,
    "gsm": lambda rng: gsm,
    "mp3 16 kHz": lambda rng: mp3_16k,
    "mp3": lambda rng: mp3_stereo_44k,
    "opus": lambda rng: opus,
    "gain": lambda rng: gain(rng.uniform(-25, 6)),
    "speed": lambda rng: speed(rng.uniform(0.9, 1.1)),
}
"""Augmentation kinds by name: ``AUGMENTATIONS[kind](rng)`` is a :data:`Condition` whose strength (SNR 0-20 dB, room,
gain, speed) ``rng`` drew. "noise recordings" mixes in ``NoiseSources.music`` (any non-speech audio)."""

COSTLY = ("mp3", "opus")
"""Kinds left out unless asked for: their encoders take 150-220 ms per 4 s clip on one core, 2-3x the Whisper-base
forward (``mp3 16 kHz`` stands in for MP3; Opus stays a codec the models never heard in training)."""


def augment(wave: np.ndarray, kinds: list[str] | tuple[str, ...], rng: np.random.Generator,
            sources: NoiseSources | None = None) -> tuple[np.ndarray, str]:
    """``wave`` under one of ``kinds`` drawn by ``rng`` at a strength it also draws; returns (wave, kind)."""
    unknown = sorted(set(kinds) - set(AUGMENTATIONS))
    if unknown or not kinds:
        raise EmoadaptError(None, f"unknown augmentation {unknown or kinds!r}; the kinds are {sorted(AUGMENTATIONS)}")
    kind = kinds[int(rng.integers(len(kinds)))]
    return AUGMENTATIONS[kind](rng)(np.asarray(wave, np.float32), rng, sources or NoiseSources()), kind


"""The speech and confidence guard: how much of a recording is speech, and when a prediction gives no label.

Every prediction carries a :class:`SpeechCheck`. silero-vad (the detector :mod:`emoadapt.inference.segments` cuts
long recordings with) scores each 32 ms window. Quiet speech scores low: at a peak of about -50 dBFS silero finds
nothing (30 of 30 RAVDESS clips scaled by 0.003). So when it finds no speech, but the frame energy says there is
sound, it scores a copy brought to a peak of -6 dBFS, the level fallback.
Measured on 30 RAVDESS clips (`tests/inference/test_guard.py` pins the synthetic cases):
- the detector found speech in every clip, down to white noise at 0 dB SNR, and in telephone audio;
- it found none in white noise, digital silence, a tone, or the music and effects of `fillets-ng-data`.
An energy detector alone would have called the music speech.

A prediction abstains (``label`` is None, ``abstained`` says why) when the audio holds too little speech to judge
(:data:`NO_SPEECH_SECONDS`), when a long recording's speech time is mixed with no class holding
:data:`DOMINANT_SHARE` of it, or when the caller's threshold (``abstain_below``) is above its top probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import SAMPLE_RATE
from .segments import vad_lock, vad_model

VAD_THRESHOLD = 0.5          # silero's own default; it holds in white noise down to 0 dB SNR
VAD_WINDOW = 512             # samples per silero window at 16 kHz (32 ms)
NO_SPEECH_SECONDS = 0.25     # less speech than silero's shortest segment: nothing to judge
LOW_SPEECH_SECONDS = 1.0     # the corpora's sentences hold 1-3 s of speech: less is a weak basis
LOW_SPEECH_RATIO = 0.1
SOUND_RISE_DB = 8.0          # a frame this far above the recording's quietest tenth counts as sound
FALLBACK_PEAK = 0.5          # the level fallback scores a copy at this peak (-6 dBFS)
DOMINANT_SHARE = 0.5         # a long recording whose top class holds less of its speech time is "mixed"


@dataclass
class SpeechCheck:
    ratio: float      # share of the audio heard as speech
    seconds: float    # seconds of speech
    method: str       # "vad", or "vad (level fallback)" for quiet audio
    flag: str         # "speech", "low_speech" or "no_speech"

    @property
    def note(self) -> str | None:
        """The warning this check puts on a prediction (None for plain speech)."""
        if self.flag == "no_speech":
            return (f"no speech: the voice detector heard {self.seconds:.2f} s of speech (at least "
                    f"{NO_SPEECH_SECONDS} s is needed to judge an emotion); no label is given")
        if self.flag == "low_speech":
            return (f"little speech: {self.seconds:.2f} s ({100 * self.ratio:.0f} % of the audio); treat the label "
                    f"with doubt")
        return None


def speech_probabilities(wave: np.ndarray) -> np.ndarray:
    """silero-vad's speech probability of each whole 32 ms window of a 16 kHz waveform."""
    import torch
    n = len(wave) // VAD_WINDOW * VAD_WINDOW
    if n == 0:
        return np.zeros(0, np.float32)
    model = vad_model()
    with vad_lock():  # the model carries state between windows: one recording at a time
        model.reset_states()
        probabilities = model.audio_forward(torch.from_numpy(np.ascontiguousarray(wave[:n], np.float32)),
                                            SAMPLE_RATE)
    return probabilities.numpy().ravel()


def sound_ratio(wave: np.ndarray, frame: int = 400) -> float:
    """Share of 25 ms frames whose energy stands :data:`SOUND_RISE_DB` above the quietest tenth of the recording:
    zero for silence, steady noise and a tone. Music, effects and speech all pass."""
    n = len(wave) // frame
    if n < 3:
        return 0.0
    energy = 10 * np.log10(np.mean(np.square(wave[:n * frame].reshape(n, frame), dtype=np.float64), 1) + 1e-12)
    return float(np.mean(energy > np.percentile(energy, 10) + SOUND_RISE_DB))


def check_speech(wave: np.ndarray) -> SpeechCheck:
    """How much of a 16 kHz waveform is speech, and its flag."""
    seconds_per_window = VAD_WINDOW / SAMPLE_RATE
    method = "vad"
    heard = float(np.sum(speech_probabilities(wave) > VAD_THRESHOLD)) * seconds_per_window
    if heard < NO_SPEECH_SECONDS and sound_ratio(wave) > 0:
        peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
        if peak > 0:
            louder = float(np.sum(speech_probabilities(wave * (FALLBACK_PEAK / peak)) > VAD_THRESHOLD))
            if louder * seconds_per_window > heard:
                heard, method = louder * seconds_per_window, "vad (level fallback)"
    duration = max(len(wave) / SAMPLE_RATE, 1e-9)
    ratio = min(1.0, heard / duration)
    if heard < NO_SPEECH_SECONDS:
        flag = "no_speech"
    elif heard < LOW_SPEECH_SECONDS or ratio < LOW_SPEECH_RATIO:
        flag = "low_speech"
    else:
        flag = "speech"
    return SpeechCheck(ratio=round(ratio, 4), seconds=round(heard, 3), method=method, flag=flag)

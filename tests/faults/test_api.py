"""The Python API under bad input: every wrong thing a caller can hand ``Recognizer`` raises an ``EmoadaptError``
subclass naming the input and what to do; ``predict_each`` reports it in place and goes on with the rest."""
from __future__ import annotations

import numpy as np
import pytest

from emoadapt import Recognizer
from emoadapt.errors import (AudioError, BadSampleRate, EmoadaptError, MissingAudio, NoSamples,
                             NonFiniteAudio, NotAFile, TooLongAudio)

pytestmark = pytest.mark.usefixtures("one_thread")

SECOND = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1

CASES = {  # name -> (input, sample_rate, error class, words in the message)
    "missing file": ("/no/such/clip.wav", None, MissingAudio, "no such file"),
    "a folder": ("/tmp", None, NotAFile, "directory"),
    "None": (None, None, AudioError, "not audio"),
    "bytes": (b"RIFF\x00\x00", None, AudioError, "not audio"),
    "an object": (object(), None, AudioError, "not audio"),
    "rate with a file": ("/tmp/x.wav", 16_000, EmoadaptError, "sample_rate is for waveforms"),
    "empty waveform": (np.zeros(0, np.float32), 16_000, NoSamples, "zero samples"),
    "NaN samples": (np.full(16_000, np.nan, np.float32), 16_000, NonFiniteAudio, "NaN"),
    "stereo": (np.zeros((16_000, 2), np.float32), 16_000, AudioError, "1-D mono"),
    "complex samples": (np.zeros(16_000, np.complex64), 16_000, AudioError, "dtype complex64"),
    "unscaled integer PCM as float": (SECOND * 30_000, 16_000, AudioError, "divide by 32768"),
    "waveform without its rate": (SECOND, None, AudioError, "needs its sample rate"),
    "rate 0": (SECOND, 0, BadSampleRate, "0 Hz"),
    "rate not a number": (SECOND, "16k", BadSampleRate, "'16k'"),
    "rate 1 GHz": (SECOND, 1e9, BadSampleRate, "plausible range"),
    "too long": (np.zeros(16_000 * 31, np.float32) + SECOND[0], 16_000, TooLongAudio, "30"),
}


@pytest.fixture(scope="module")
def recognizer(trained):
    _, _, models, _ = trained
    return Recognizer.from_pretrained(models["global"], max_seconds=30)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input_raises_its_error(recognizer, kind):
    audio, rate, error, words = CASES[kind]
    with pytest.raises(error, match=words if words.startswith("'") else None) as raised:
        recognizer.predict(audio, sample_rate=rate)
    assert words in str(raised.value)


def test_predict_each_reports_bad_inputs_in_place_and_goes_on(recognizer):
    inputs = [SECOND, None, np.full(16_000, np.inf, np.float32), SECOND * 0.5]
    results = list(recognizer.predict_each(inputs, 16_000))
    assert [type(r).__name__ for r in results] == ["Prediction", "AudioError", "NonFiniteAudio", "Prediction"]
    assert all(np.isfinite(list(r.probabilities.values())).all() for r in results[::3])


@pytest.mark.parametrize("name, words", [("no-such-model", "no such model"), ("/tmp", "model.json")])
def test_unknown_models_are_refused(name, words):
    with pytest.raises(EmoadaptError) as raised:
        Recognizer.from_pretrained(name)
    assert words in str(raised.value)

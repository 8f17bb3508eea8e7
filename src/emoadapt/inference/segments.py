"""What a long recording becomes: speech segments found by a voice-activity detector (silero-vad's ONNX model,
whose weights ship inside its wheel), each at most the model's window with context either side, and the
recording's overall result as the segments' duration-weighted mean. A recording up to the window is one piece."""
from __future__ import annotations

import threading
import warnings

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import NoSpeech

_VAD = None
_VAD_LOCK = threading.Lock()


def _vad_model():
    """silero-vad's ONNX model, loaded once per process (onnxruntime; no code is unpickled)."""
    global _VAD
    if _VAD is None:
        from silero_vad import load_silero_vad
        with warnings.catch_warnings():  # its importlib.resources.path call is deprecated: not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            _VAD = load_silero_vad(onnx=True)
    return _VAD


def speech_segments(wave: np.ndarray, *, max_seconds: float = 10.0, min_speech_seconds: float = 0.25,
                    min_silence_seconds: float = 0.3, pad_seconds: float = 0.1,
                    threshold: float = 0.5) -> list[tuple[int, int]]:
    """(start, end) sample offsets of the speech in a 16 kHz waveform, found by silero-vad, in order; a stretch of
    speech longer than ``max_seconds`` is cut into equal pieces of at most that. Pauses shorter than
    ``min_silence_seconds`` do not split speech; each segment keeps ``pad_seconds`` of context on either side.
    Returns [] when there is no speech."""
    import torch
    from silero_vad import get_speech_timestamps
    with _VAD_LOCK:  # the model carries state between windows: one recording at a time (the server runs threads)
        found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), _vad_model(),
                                      threshold=threshold, sampling_rate=SAMPLE_RATE,
                                      min_speech_duration_ms=int(min_speech_seconds * 1000),
                                      min_silence_duration_ms=int(min_silence_seconds * 1000),
                                      speech_pad_ms=int(pad_seconds * 1000))
    longest = int(max_seconds * SAMPLE_RATE)
    pieces = []
    for stretch in found:
        start, end = int(stretch["start"]), min(int(stretch["end"]), len(wave))
        n = -(-(end - start) // longest)  # ceil: equal pieces, none longer than the window
        bounds = np.linspace(start, end, n + 1).round().astype(int)
        pieces += [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return pieces


def pieces_of(wave: np.ndarray, *, source: str, window_seconds: float, pad_seconds: float,
              min_samples: int) -> list[tuple[int, int]]:
    """(start, end) sample offsets of what is classified in a recording: the whole of it up to ``window_seconds``;
    else its speech segments of at most the window with ``pad_seconds`` of context either side (the corpora's clips
    carry about a second of silence around the sentence, and the models learned from that), each at least
    ``min_samples`` long. A long recording without speech raises :class:`NoSpeech`."""
    if len(wave) <= window_seconds * SAMPLE_RATE:
        return [(0, len(wave))]
    pieces = [(a, b) for a, b in speech_segments(wave, max_seconds=window_seconds, pad_seconds=pad_seconds)
              if b - a >= min_samples]
    if not pieces:
        raise NoSpeech(source, f"no speech found in {len(wave) / SAMPLE_RATE:.1f} s of audio")
    return pieces


def overall(values: np.ndarray, pieces: list[tuple[int, int]]) -> np.ndarray:
    """The recording's result: the pieces' values (probabilities or embeddings) averaged by duration."""
    weights = np.array([b - a for a, b in pieces], dtype=np.float64)
    return (values * (weights / weights.sum())[:, None]).sum(0).astype(np.float32)

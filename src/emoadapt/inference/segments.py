"""What a long recording becomes: stretches of speech found by a voice-activity detector (silero-vad's ONNX model,
whose weights ship inside its wheel), with context either side; a stretch longer than ``span_seconds`` is read
through sliding windows of that length every ``hop_seconds``, each with silence either side (continuous speech has
no pause to cut at, and a window that holds about a training clip's speech hears one emotion rather than the average
of several). A recording up to the model's window is one piece.

:func:`timeline` turns the pieces' class probabilities into the recording's timeline: each stretch of time gets the
mean of the windows that cover it, and neighbouring stretches with the same label join into one segment."""
from __future__ import annotations

import threading
import warnings

import numpy as np

from ..audio import SAMPLE_RATE

_VAD = None
_VAD_LOCK = threading.Lock()


def vad_lock() -> threading.Lock:
    """Held while the detector runs: it carries state between windows, and the server runs threads."""
    return _VAD_LOCK


def vad_model():
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
        found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), vad_model(),
                                      threshold=threshold, sampling_rate=SAMPLE_RATE,
                                      min_speech_duration_ms=int(min_speech_seconds * 1000),
                                      min_silence_duration_ms=int(min_silence_seconds * 1000),
                                      speech_pad_ms=int(pad_seconds * 1000))
    longest = int(max_seconds * SAMPLE_RATE) if np.isfinite(max_seconds) else len(wave)
    pieces = []
    for stretch in found:
        start, end = int(stretch["start"]), min(int(stretch["end"]), len(wave))
        n = -(-(end - start) // longest)  # ceil: equal pieces, none longer than the window
        bounds = np.linspace(start, end, n + 1).round().astype(int)
        pieces += [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return pieces


def pieces_of(wave: np.ndarray, *, window_seconds: float, pad_seconds: float, min_samples: int,
              span_seconds: float | None = None, hop_seconds: float | None = None
              ) -> tuple[list[tuple[int, int]], list[bool]]:
    """(start, end) sample offsets of what is classified in a recording, and which of them are sliding windows.

    A recording up to ``window_seconds`` is one piece, the whole of it. A longer one is cut into stretches of speech
    with ``pad_seconds`` of context either side (the corpora's clips carry about a second of silence around the
    sentence, and the models learned from that). A stretch longer than ``span_seconds`` (default: the window)
    becomes windows of that length every ``hop_seconds`` (default: the span), the last one ending where the stretch
    ends. The caller gives a window ``pad_seconds`` of silence either side (:func:`with_silence`), since around it is
    more speech. Every piece is at least ``min_samples`` long. A long recording in which the detector hears no
    speech is read whole in those windows: it may be quiet speech (which the guard's level fallback hears) or no
    speech at all, and the guard, not an error, decides whether it gets a label, as for a short recording."""
    if len(wave) <= window_seconds * SAMPLE_RATE:
        return [(0, len(wave))], [False]
    span = int(SAMPLE_RATE * (span_seconds or window_seconds))
    hop = int(SAMPLE_RATE * (hop_seconds or span_seconds or window_seconds))
    pieces, windowed = [], []
    for a, b in speech_segments(wave, max_seconds=float("inf"), pad_seconds=pad_seconds):
        if b - a < min_samples:
            continue
        if b - a <= span:
            pieces.append((a, b))
            windowed.append(False)
            continue
        windows = _windows(a, b, span, hop)
        pieces += windows
        windowed += [True] * len(windows)
    if not pieces:
        pieces = _windows(0, len(wave), span, hop)
        windowed = [True] * len(pieces)
    return pieces, windowed


def _windows(a: int, b: int, span: int, hop: int) -> list[tuple[int, int]]:
    """Windows of ``span`` samples every ``hop`` from ``a``, the last one ending at ``b`` (one window, the whole,
    when ``b - a`` is under the span)."""
    return [(s, min(s + span, b)) for s in sorted(set(range(a, b - span, hop)) | {max(b - span, a)})]


def with_silence(wave: np.ndarray, seconds: float) -> np.ndarray:
    """``wave`` with ``seconds`` of digital silence either side: a window of continuous speech made to look like
    the clips the models learned from (the shipped model on 52 clips of RAVDESS speech joined without pauses, 2 s
    windows: 17 clips right bare, 28 with a second of silence either side; `bench/continuous.py`)."""
    pad = np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)
    return np.concatenate([pad, np.asarray(wave, np.float32), pad])


def _cells(pieces: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The stretches of time between consecutive piece edges that some piece covers, and which pieces cover each
    (a boolean ``[cells, pieces]`` matrix)."""
    edges = sorted({e for piece in pieces for e in piece})
    cells, cover = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        covering = [pa <= a and b <= pb for pa, pb in pieces]
        if any(covering):
            cells.append((a, b))
            cover.append(covering)
    return cells, np.asarray(cover, dtype=bool).reshape(len(cells), len(pieces))


def cell_values(values: np.ndarray, pieces: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Each covered stretch of time and the mean of the values (probabilities or embeddings) of the pieces over it."""
    cells, cover = _cells(pieces)
    weights = cover / cover.sum(1, keepdims=True)
    return cells, (weights @ np.asarray(values, np.float64)).astype(np.float32)


def timeline(values: np.ndarray, pieces: list[tuple[int, int]]) -> list[tuple[int, int, np.ndarray]]:
    """(start, end, probabilities) segments: neighbouring stretches of time with the same top class joined, their
    probabilities the duration-weighted mean of the stretches'."""
    cells, per_cell = cell_values(values, pieces)
    segments: list[list] = []
    for (a, b), p in zip(cells, per_cell):
        last = segments[-1] if segments else None
        if last is not None and last[1] == a and int(last[2].argmax()) == int(p.argmax()):
            total = (last[1] - last[0]) + (b - a)
            last[2] = (last[2] * (last[1] - last[0]) + p * (b - a)) / total
            last[1] = b
        else:
            segments.append([a, b, p.astype(np.float64)])
    return [(a, b, p.astype(np.float32)) for a, b, p in segments]


def overall(values: np.ndarray, pieces: list[tuple[int, int]]) -> np.ndarray:
    """The recording's result: the values (probabilities or embeddings) of its covered time, averaged by duration
    (overlapping windows count once per stretch of time)."""
    cells, per_cell = cell_values(values, pieces)
    weights = np.array([b - a for a, b in cells], dtype=np.float64)
    return (per_cell * (weights / weights.sum())[:, None]).sum(0).astype(np.float32)


def shares(segments: list[tuple[int, int, np.ndarray]], labels: list[str]) -> dict[str, float]:
    """The share of the timeline's time that each class holds as the top class, in the labels' order."""
    time = np.zeros(len(labels))
    for a, b, p in segments:
        time[int(p.argmax())] += b - a
    total = time.sum()
    return {label: round(float(t / total), 4) if total else 0.0 for label, t in zip(labels, time)}

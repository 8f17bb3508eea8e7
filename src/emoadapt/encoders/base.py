"""The one contract between a frozen speech encoder and everything downstream (s3prl's "upstream").

An encoder takes 16 kHz mono float32 waveforms and returns, per utterance, all its hidden states stacked as
``[L+1, T, D]`` at ``frame_rate`` (50 Hz). Nothing outside ``encoders/`` imports a concrete encoder class: they
call :func:`emoadapt.encoders.load_encoder` and use this protocol.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

SAMPLE_RATE = 16_000


@runtime_checkable
class Encoder(Protocol):
    name: str            # e.g. "whisper-base", "hf:facebook/hubert-large-ll60k"
    num_layers: int      # L: hidden states returned per utterance = L + 1 (the input embedding + each block)
    dim: int             # D
    frame_rate: float    # frames per second of output (50.0 for every encoder here)
    fingerprint: str     # name + hash of weights + options that change features; the feature store records it
    options: dict        # options that change the features (e.g. {"pad_to_30s": False}), JSON-serialisable

    def num_frames(self, num_samples: int) -> int:
        """Frames this encoder returns for a waveform of ``num_samples`` (0 when it is too short)."""

    @property
    def min_samples(self) -> int:
        """Shortest waveform that yields one frame."""

    def encode(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """A batch of 1-D waveforms (any lengths) -> per utterance float32 ``[L+1, T_i, D]``, T_i = num_frames.

        Padded batching must give the same features as one utterance at a time. Runs under
        ``torch.inference_mode()``; weights are frozen. Audio longer than the encoder's window is chunked.
        """

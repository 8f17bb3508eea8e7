"""Masks on frame sequences: time spans (stage 1's student, and stage 2's regularisation) and feature channels
(stage 2), as wav2vec2 masks its features in pre-training and fine-tuning. ``True`` = masked."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .pooling import lengths_to_padding_mask


def span_mask(lengths, T, mask_prob=0.65, span=10, generator=None):
    """(B,) lengths -> (B, T) bool mask of spans of ``span`` frames covering ~``mask_prob`` of the real frames.

    Every position (also the span-1 positions before the utterance, whose spans are clipped) starts a span with
    probability p. A frame is then covered unless none of the ``span`` starts that reach it fires, so
    P(masked) = 1 - (1 - p)^span exactly, for any length; p = 1 - (1 - mask_prob)^(1/span) (0.0996 for the
    defaults). Padding is never masked.
    """
    lengths = torch.as_tensor(lengths)
    B = lengths.shape[0]
    if mask_prob <= 0:
        return torch.zeros(B, T, dtype=torch.bool, device=lengths.device)
    p_start = 1.0 - (1.0 - mask_prob) ** (1.0 / span)
    starts = torch.rand(B, 1, T + span - 1, generator=generator) < p_start    # index j = a span starting at j-(span-1)
    covered = F.max_pool1d(starts.float(), kernel_size=span, stride=1)[:, 0]  # (B, T): any start in [t-span+1, t]
    return covered.bool().to(lengths.device) & ~lengths_to_padding_mask(lengths, T)


def channel_mask(batch: int, channels: int, mask_prob: float, span: int, generator=None):
    """(B, C) bool: spans of ``span`` feature channels covering ~``mask_prob`` of them, drawn per utterance and the
    same at every frame (wav2vec2's ``mask_feature_prob`` / ``mask_feature_length``)."""
    return span_mask(torch.full((batch,), channels), channels, mask_prob, span, generator)

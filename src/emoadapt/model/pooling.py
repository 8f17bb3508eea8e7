"""Pooling frames into one vector per utterance, ignoring padding. ``padding_mask`` is True at padding."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def lengths_to_padding_mask(lengths, max_len: int | None = None):
    """(B,) frame counts -> (B, T) bool, True at padding (PyTorch's key_padding_mask convention)."""
    lengths = torch.as_tensor(lengths)
    T = int(lengths.max()) if max_len is None else max_len
    return torch.arange(T, device=lengths.device)[None, :] >= lengths[:, None]


def masked_mean(x, padding_mask):
    """Mean over the real frames: (B, T, d), (B, T) -> (B, d)."""
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def utterance_statistics(hidden_states, padding_mask, dtype=torch.float64):
    """Mean and population standard deviation over the real frames of every layer: (B, L, T, D), (B, T) ->
    (B, L * 2D), per layer [mean; std], computed in ``dtype``."""
    keep = (~padding_mask)[:, None, :, None].to(dtype)                 # (B, 1, T, 1)
    x = hidden_states.to(dtype)
    n = keep.sum(2).clamp(min=1.0)
    mean = (x * keep).sum(2) / n                                        # (B, L, D)
    var = ((x - mean.unsqueeze(2)).pow(2) * keep).sum(2) / n
    return torch.cat([mean, var.sqrt()], dim=-1).flatten(1)


class AttentiveStatisticsPooling(nn.Module):
    """Okabe et al. 2018: attention-weighted mean and standard deviation of the frames, u = [mu; sigma].

    e_t = v^T tanh(W z_t + b);  a = softmax of e over real frames;  mu = Σ a_t z_t;  sigma = sqrt(Σ a_t z_t² - mu² + eps)
    """

    def __init__(self, dim: int, attention_dim: int = 128, eps: float = 1e-5):
        super().__init__()
        self.attention = nn.Linear(dim, attention_dim)        # W, b
        self.score = nn.Linear(attention_dim, 1, bias=False)  # v
        self.eps = eps
        self.output_dim = 2 * dim

    def forward(self, z, padding_mask):
        e = self.score(torch.tanh(self.attention(z))).squeeze(-1)     # (B, T)
        a = F.softmax(e.masked_fill(padding_mask, float("-inf")), dim=1).unsqueeze(-1)  # (B, T, 1), 0 on padding
        mu = (a * z).sum(1)                                           # (B, d)
        var = (a * z.pow(2)).sum(1) - mu.pow(2)
        sigma = torch.sqrt(var.clamp(min=0.0) + self.eps)             # clamp: rounding can make var slightly < 0
        return torch.cat([mu, sigma], dim=-1)                         # (B, 2d)

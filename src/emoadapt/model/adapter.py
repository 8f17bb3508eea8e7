"""The WAP-Transformer adapter: cached encoder hidden states -> frame representations Z.

    hidden states [B, L+1, T, D] ─► standardise each layer ─► layer mix ─► X0 [B, T, D] ─► LayerNorm + Linear D→d ─► (mask) ─► conv positions
                                 ─► 3 pre-LN Transformer layers X_1..X_3 ─► Z = Σ_l softmax(w)_l X_l   [B, T, d]

Padding is masked everywhere (the positional convolution sees zeros there, attention never looks at it), so a
padded batch gives the same Z on real frames as one utterance at a time. ``padding_mask`` is True at padding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class AdapterConfig:
    input_layers: int = 25          # L+1 hidden states per frame in the cache (25 for HuBERT-large, 7 for Whisper-base)
    input_dim: int = 1024           # D of the encoder
    input_layer: int | None = None  # None: learnable softmax mix over all hidden states; an int: use that one only
    input_norm: bool = True         # LayerNorm on X0 before the projection (wav2vec2's feature projection)
    dim: int = 384                  # d
    num_layers: int = 3             # Transformer layers whose outputs are mixed into Z
    num_heads: int = 6
    ffn_dim: int = 1536
    dropout: float = 0.1
    attention_dropout: float = 0.1  # on the attention weights; 0 is ~25% faster on CPU (no [B, h, T, T] mask draws)
    conv_pos_kernel: int = 64       # wav2vec2's convolutional positional embedding, half as wide (1.28 s) and in
    conv_pos_groups: int = 32       # twice the groups: 0.30 M parameters instead of 1.18 M, so the whole stage-2
    #                                 model stays under 2% of HuBERT-large (6.07 M / 316 M = 1.92%; 2.20% at 128/16)


class FeatureStandardizer(nn.Module):
    """Per-layer, per-dimension standardisation of cached hidden states with fixed statistics of the training
    frames (global mean-variance normalisation, as ESPnet's GlobalMVN). Frozen encoders have a few dimensions tens
    of times larger than the rest (Whisper-base layers 4-5: std 51 against a median 0.7) and layers of very
    different scales; without this a layer mix and a frame LayerNorm see little but those dimensions.

    The statistics are buffers, saved and loaded with the model; until :meth:`fit` they are the identity.
    """

    def __init__(self, layers: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(layers, dim))
        self.register_buffer("inv_std", torch.ones(layers, dim))

    @torch.no_grad()
    def fit(self, mean, std, eps: float = 1e-5):
        """Set the statistics: ``mean``, ``std`` of shape [L+1, D] (arrays or tensors)."""
        mean, std = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(std, dtype=torch.float64)
        if mean.shape != self.mean.shape or std.shape != self.mean.shape:
            raise ValueError(f"statistics of shape {list(mean.shape)} / {list(std.shape)} do not fit hidden states "
                             f"[{', '.join(map(str, self.mean.shape))}]")
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / torch.sqrt(std ** 2 + eps))
        return self

    def layer(self, hidden_states, l: int, dtype=torch.float32):
        """Hidden state ``l`` of (B, L+1, T, D), standardised, as ``dtype`` (one layer: no fp32 copy of all)."""
        return (hidden_states[:, l].to(dtype) - self.mean[l].to(dtype)) * self.inv_std[l].to(dtype)


class ConvPositionalEmbedding(nn.Module):
    """wav2vec2's relative positions: a wide grouped convolution over time + GELU, added to the input."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        k, d = config.conv_pos_kernel, config.dim
        conv = nn.Conv1d(d, d, kernel_size=k, padding=k // 2, groups=config.conv_pos_groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (k * d)))  # fairseq's init
        nn.init.zeros_(conv.bias)
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel with padding k//2 gives one frame too many

    def forward(self, x, padding_mask):
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # padding must look like the zeros past a lone utterance
        pos = self.conv(x.transpose(1, 2))                   # (B, d, T + trim)
        if self.trim:
            pos = pos[:, :, :-self.trim]
        return F.gelu(pos).transpose(1, 2)                   # (B, T, d)


class SelfAttention(nn.Module):

    def __init__(self, config: AdapterConfig):
        super().__init__()
        assert config.dim % config.num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.attn_dropout = config.attention_dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, padding_mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, c)
        keep = (~padding_mask)[:, None, None, :]             # (B, 1, 1, T): every query may look at real keys only
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.fc = nn.Linear(config.dim, config.ffn_dim)
        self.proj = nn.Linear(config.ffn_dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN Transformer layer: X_l = X_{l-1} + Attn(LN(X_{l-1})), then + MLP(LN(.))."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config)

    def forward(self, x, padding_mask):
        x = x + self.attn(self.ln_1(x), padding_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class WAPTransformer(nn.Module):
    """Weighted-average-pooled Transformer adapter (the paper's Z = Σ_l w_l X_l, l = 1..3)."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        if config.input_layer is None:
            self.layer_logits = nn.Parameter(torch.zeros(config.input_layers))  # SUPERB-style mix, starts uniform
        elif not -config.input_layers <= config.input_layer < config.input_layers:
            raise ValueError(f"input_layer={config.input_layer} is outside the {config.input_layers} cached hidden states")
        self.standardize = FeatureStandardizer(config.input_layers, config.input_dim)
        self.input_norm = nn.LayerNorm(config.input_dim) if config.input_norm else nn.Identity()
        self.input_proj = nn.Linear(config.input_dim, config.dim)
        self.input_dropout = nn.Dropout(config.dropout)
        self.pos_conv = ConvPositionalEmbedding(config)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.output_logits = nn.Parameter(torch.zeros(config.num_layers))  # w: equal weights at the start
        self.apply(_init_weights)

    def forward(self, hidden_states, padding_mask, *, mask_positions=None, mask_embedding=None, return_layers=False):
        """hidden_states (B, L+1, T, D) any float dtype, padding_mask (B, T) bool -> Z (B, T, d) [, [X_1..X_n]].

        ``mask_positions`` (B, T) bool replaces those projected frames by ``mask_embedding`` (d,) (student only).
        """
        x = self.project(hidden_states)
        return self.contextualize(x, padding_mask, mask_positions=mask_positions, mask_embedding=mask_embedding,
                                  return_layers=return_layers)

    def project(self, hidden_states):
        """Per-frame part: standardisation, layer mix, LayerNorm, Linear D->d. (B, L+1, T, D) -> (B, T, d).

        It acts on each frame alone, so cropping before or after it is the same (pretraining crops after it).
        """
        c = self.config
        if hidden_states.dim() != 4 or hidden_states.shape[1] != c.input_layers or hidden_states.shape[3] != c.input_dim:
            raise ValueError(f"expected hidden states [B, {c.input_layers}, T, {c.input_dim}] (B, L+1, T, D), "
                             f"got {list(hidden_states.shape)}: the cache and AdapterConfig disagree")
        dtype = self.input_proj.weight.dtype
        if c.input_layer is not None:
            x0 = self.standardize.layer(hidden_states, c.input_layer, dtype)   # (B, T, D)
        else:
            mix = F.softmax(self.layer_logits, dim=0)
            # one layer at a time: never materialise the whole fp32 copy of [B, L+1, T, D]
            x0 = sum(mix[l] * self.standardize.layer(hidden_states, l, dtype) for l in range(c.input_layers))
        return self.input_dropout(self.input_proj(self.input_norm(x0)))       # (B, T, d)

    def contextualize(self, x, padding_mask, *, mask_positions=None, mask_embedding=None, return_layers=False):
        """Projected frames (B, T, d) -> Z (B, T, d) [, per-layer outputs]. Padding rows of the outputs are 0."""
        if padding_mask.shape != x.shape[:2]:
            raise ValueError(f"padding_mask {list(padding_mask.shape)} does not match frames {list(x.shape[:2])}")
        if mask_positions is not None:
            if mask_embedding is None:
                raise ValueError("mask_positions needs a mask_embedding (d,) to put in their place")
            x = torch.where(mask_positions.unsqueeze(-1), mask_embedding.to(x.dtype), x)  # student masking
        x = x + self.pos_conv(x, padding_mask)
        layers = []
        for block in self.blocks:
            x = block(x, padding_mask)
            layers.append(x)                                                   # X_l (B, T, d)
        w = F.softmax(self.output_logits, dim=0)
        z = sum(w[l] * layers[l] for l in range(len(layers)))                  # Z = Σ_l softmax(w)_l X_l
        keep = (~padding_mask).unsqueeze(-1)
        z = z * keep
        if return_layers:
            return z, [h * keep for h in layers]
        return z

    def layer_weights(self):
        """The softmax weights of the input layer mix (None for a fixed layer) and of the output mix, for reports."""
        mix = None if self.config.input_layer is not None else F.softmax(self.layer_logits, 0).detach()
        return mix, F.softmax(self.output_logits, 0).detach()


def _init_weights(module):
    # nanoGPT/BERT init for the linear layers; the positional conv keeps fairseq's own init (set above)
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

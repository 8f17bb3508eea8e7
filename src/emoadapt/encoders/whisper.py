"""The Whisper encoder in plain torch, loaded from CTranslate2 weights (the embedded default encoder).

Pipeline per 30 s window: 80-bin log-mel at 100 Hz -> conv1 + GELU -> conv2 (stride 2) + GELU -> + stored
sinusoidal positions -> pre-LN Transformer blocks -> final LayerNorm. Hidden states follow
``transformers.WhisperEncoder(output_hidden_states=True)``: index 0 is the block input (convs + positions),
index i the output of block i, and the last one is taken *after* the final LayerNorm (transformers replaces
the last block's raw output by ``last_hidden_state``). So Whisper-base gives 7 states, tiny.en 5.

Two ways to feed audio (``pad_to_30s``, recorded in the fingerprint; use the same one for training and
inference):
- ``False`` (default): each utterance as it is (<= 30 s per chunk). 10-15x faster on CPU; features differ
  somewhat from padded ones (mean frame cosine of the last state ~0.94). A batch is padded to its longest
  member with zeros in the mel, zeroed again between conv1 and conv2, and masked in attention; convs and
  attention run as plain matmuls (see ``WhisperEncoderNet.batch_invariant``), so a padded batch gives exactly
  what one utterance at a time gives.
- ``True``: each utterance zero-padded to 30 s (Whisper's training condition), then the output is trimmed to
  the utterance's own frames.
Audio longer than 30 s is encoded as consecutive 30 s chunks (480000 samples = 1500 frames) and concatenated.
Frames: T = ceil((n // 160) / 2); the shortest input is 160 samples (one mel frame -> one output frame).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import EncoderError, TooShortAudio
from .base import SAMPLE_RATE
from .ctranslate2_reader import read_ct2_variables

N_FFT = 400
HOP = 160                      # 100 mel frames per second
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window: 480000 samples -> 3000 mel frames -> 1500 output frames
MAX_BATCH_FRAMES = 6000        # padded output frames per forward pass (4 x 30 s): bounds attention memory


# ------------------------------------------------------------------------------------------------ log-mel
class LogMel(nn.Module):
    """What ``transformers.WhisperFeatureExtractor`` computes (n_fft 400, hop 160, Slaney mel, log10, clamp at
    max - 8, (x + 4) / 4, last STFT frame dropped), batched in torch. Each utterance keeps its own reflect
    padding at the edges and its own max, so batching does not change a value."""

    def __init__(self, n_mels: int = 80):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank  # the extractor's own filters, not a re-derivation

        filters = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                                  max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        self.register_buffer("filters", torch.from_numpy(np.ascontiguousarray(filters.T)).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D float32 waveforms -> log-mel ``(B, n_mels, M_max)`` (zero past each end), lengths ``M = n // 160``."""
        half = N_FFT // 2
        padded = [_reflect_pad(w, half) for w in waveforms]  # torch.stft(center=True) pads like this, per utterance
        batch = torch.zeros(len(padded), max(len(p) for p in padded), device=self.window.device)
        for i, p in enumerate(padded):
            batch[i, : len(p)] = p
        lengths = torch.tensor([len(w) // HOP for w in waveforms], device=batch.device)
        num = int(lengths.max())
        stft = torch.stft(batch, N_FFT, HOP, window=self.window, center=False, return_complex=True)
        power = (stft[..., :num].abs() ** 2).contiguous()            # (B, 201, M_max): last frame dropped
        mel = torch.clamp(self.filters @ power, min=1e-10).log10()   # (B, n_mels, M_max)
        valid = (torch.arange(num, device=batch.device) < lengths[:, None])[:, None, :]  # (B, 1, M_max)
        top = mel.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
        mel = (torch.maximum(mel, top - 8.0) + 4.0) / 4.0
        return mel * valid, lengths


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``np.pad(x, pad, mode="reflect")``: equals torch's reflect padding where that works (len > pad) and, like
    numpy, keeps reflecting for shorter inputs (torch refuses them)."""
    n = len(x)
    if n > pad:  # the usual case: torch's own (fast) reflect padding
        return F.pad(x[None], (pad, pad), mode="reflect")[0]
    if n == 1:
        return x.repeat(n + 2 * pad)
    index = torch.arange(-pad, n + pad, device=x.device).abs() % (2 * (n - 1))
    return x[torch.where(index < n, index, 2 * (n - 1) - index)]


# ------------------------------------------------------------------------------------------------ model
@dataclass
class WhisperEncoderConfig:
    n_mels: int = 80
    dim: int = 512
    num_heads: int = 8
    num_layers: int = 6
    ffn_dim: int = 2048
    max_frames: int = 1500


class Block(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)), then x + FFN(LN(x)), GELU FFN. q, k, v in one matrix as
    CTranslate2 stores them (k has no bias in Whisper: its third of the fused bias is zero)."""

    def __init__(self, cfg: WhisperEncoderConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attn_ln = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.ffn_ln = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, batch_invariant: bool) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if not batch_invariant:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, D/H)
        else:
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)          # (B, H, T, T)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            a = scores.softmax(dim=-1) @ v                                     # (B, H, T, D/H)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_ln(x))))


class WhisperEncoderNet(nn.Module):
    def __init__(self, cfg: WhisperEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(cfg.max_frames, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_post = nn.LayerNorm(cfg.dim)
        # torch's convolution and fused-attention kernels pick algorithms by input shape, so the same utterance
        # rounds differently alone and padded in a batch (~2e-6, amplified to ~3e-4 by the final LayerNorm).
        # With batch_invariant, convs run as im2col + matmul and attention as explicit softmax(q k^T / sqrt(d)) v:
        # bit-identical padded or not. The encoder turns it off only for pad_to_30s, where every input is 30 s.
        self.batch_invariant = True

    def conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_invariant:
            return conv(x)
        (k,), (stride,), (pad,) = conv.kernel_size, conv.stride, conv.padding
        cols = F.pad(x, (pad, pad)).unfold(2, k, stride)                     # (B, C, T, k)
        B, C, T, _ = cols.shape
        y = cols.permute(0, 2, 1, 3).reshape(B, T, C * k) @ conv.weight.reshape(conv.out_channels, C * k).T
        return (y + conv.bias).transpose(1, 2)                              # (B, D, T)

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]:
        """mel ``(B, n_mels, M)`` (zero beyond each length) -> L+1 hidden states ``(B, T, D)``, T = ceil(M / 2)."""
        ragged = bool((mel_lengths != mel.shape[-1]).any())
        return self.states(mel, mel_lengths if ragged else None)

    def forward_unpadded(self, mel: torch.Tensor) -> torch.Tensor:
        """Utterances of one length (no padding) -> ``(L+1, B, T, D)``: no data-dependent branch, so it exports."""
        return torch.stack(self.states(mel, None))

    def states(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None) -> list[torch.Tensor]:
        """The forward pass; ``mel_lengths`` None: every utterance fills the batch."""
        M = mel.shape[-1]
        x = F.gelu(self.conv(self.conv1, mel))                           # (B, D, M)
        ragged = mel_lengths is not None
        if ragged:  # conv2 must see zeros past each end, as its own zero padding gives one utterance alone
            x = x * (torch.arange(M, device=x.device) < mel_lengths[:, None])[:, None, :]
        x = F.gelu(self.conv(self.conv2, x)).transpose(1, 2)             # (B, T, D)
        T = x.shape[1]
        x = x + self.positions[:T]
        attn_mask = None
        if ragged:  # keys past each utterance's end are not attended to
            frames = (mel_lengths + 1) // 2
            attn_mask = (torch.arange(T, device=x.device) < frames[:, None])[:, None, None, :]  # (B, 1, 1, T)
        states = [x]
        for block in self.blocks:
            x = block(x, attn_mask, self.batch_invariant)
            states.append(x)
        states[-1] = self.ln_post(x)  # transformers' convention: the last hidden state is after the final LN
        return states


def config_from_ct2(weights: dict[str, torch.Tensor]) -> WhisperEncoderConfig:
    dim, n_mels, _ = weights["encoder/conv1/weight"].shape
    num_layers = len({k.split("/")[1] for k in weights if re.match(r"encoder/layer_\d+/", k)})
    heads = weights.get("encoder/num_heads")
    return WhisperEncoderConfig(
        n_mels=n_mels, dim=dim, num_layers=num_layers,
        num_heads=int(heads) if heads is not None else dim // 64,  # every Whisper size uses 64-d heads
        ffn_dim=weights["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_frames=weights["encoder/position_encodings/encodings"].shape[0])


def ct2_to_state_dict(weights: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """CTranslate2 variable names -> :class:`WhisperEncoderNet` parameter names."""
    sd = {"conv1.weight": "encoder/conv1/weight", "conv1.bias": "encoder/conv1/bias",
          "conv2.weight": "encoder/conv2/weight", "conv2.bias": "encoder/conv2/bias",
          "positions": "encoder/position_encodings/encodings",
          "ln_post.weight": "encoder/layer_norm/gamma", "ln_post.bias": "encoder/layer_norm/beta"}
    for i in range(num_layers):
        p = f"encoder/layer_{i}"
        for ours, theirs in [("attn_ln", "self_attention/layer_norm"), ("ffn_ln", "ffn/layer_norm")]:
            sd[f"blocks.{i}.{ours}.weight"] = f"{p}/{theirs}/gamma"
            sd[f"blocks.{i}.{ours}.bias"] = f"{p}/{theirs}/beta"
        for ours, theirs in [("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"),
                             ("fc1", "ffn/linear_0"), ("fc2", "ffn/linear_1")]:
            sd[f"blocks.{i}.{ours}.weight"] = f"{p}/{theirs}/weight"
            sd[f"blocks.{i}.{ours}.bias"] = f"{p}/{theirs}/bias"
    return {ours: weights[theirs] for ours, theirs in sd.items()}


def ct2_to_hf_state_dict(weights: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """CTranslate2 variable names -> ``transformers.WhisperEncoder`` names (for checking against it)."""
    ours = ct2_to_state_dict(weights, num_layers)
    hf = {"conv1.weight": ours["conv1.weight"], "conv1.bias": ours["conv1.bias"],
          "conv2.weight": ours["conv2.weight"], "conv2.bias": ours["conv2.bias"],
          "embed_positions.weight": ours["positions"],
          "layer_norm.weight": ours["ln_post.weight"], "layer_norm.bias": ours["ln_post.bias"]}
    for i in range(num_layers):
        b, h = f"blocks.{i}.", f"layers.{i}."
        q, k, v = ours[b + "qkv.weight"].chunk(3)
        qb, _, vb = ours[b + "qkv.bias"].chunk(3)
        hf.update({h + "self_attn.q_proj.weight": q, h + "self_attn.q_proj.bias": qb,
                   h + "self_attn.k_proj.weight": k,
                   h + "self_attn.v_proj.weight": v, h + "self_attn.v_proj.bias": vb,
                   h + "self_attn.out_proj.weight": ours[b + "out.weight"],
                   h + "self_attn.out_proj.bias": ours[b + "out.bias"],
                   h + "self_attn_layer_norm.weight": ours[b + "attn_ln.weight"],
                   h + "self_attn_layer_norm.bias": ours[b + "attn_ln.bias"],
                   h + "final_layer_norm.weight": ours[b + "ffn_ln.weight"],
                   h + "final_layer_norm.bias": ours[b + "ffn_ln.bias"],
                   h + "fc1.weight": ours[b + "fc1.weight"], h + "fc1.bias": ours[b + "fc1.bias"],
                   h + "fc2.weight": ours[b + "fc2.weight"], h + "fc2.bias": ours[b + "fc2.bias"]})
    return hf


# ------------------------------------------------------------------------------------------------ encoder
class WhisperEncoder:
    """The :class:`~emoadapt.encoders.base.Encoder` for Whisper: waveforms -> ``[L+1, T, D]`` at 50 Hz."""

    frame_rate = SAMPLE_RATE / HOP / 2  # 50.0

    def __init__(self, name: str, net: WhisperEncoderNet, weights_sha256: str, *, pad_to_30s: bool = False,
                 device: str | torch.device = "cpu", label: str | None = None):
        self.name = name
        self.net = net.to(device).eval().requires_grad_(False)
        self.net.batch_invariant = not pad_to_30s
        self.mel = LogMel(net.cfg.n_mels).to(device)
        self.device = torch.device(device)
        self.pad_to_30s = bool(pad_to_30s)
        self.num_layers = net.cfg.num_layers
        self.dim = net.cfg.dim
        self.options = {"pad_to_30s": self.pad_to_30s}
        self.weights_sha256 = weights_sha256
        self.fingerprint = f"{label or name}:{weights_sha256[:16]}:pad30={int(self.pad_to_30s)}"
        self.onnx = None  # an onnxruntime session of the network (use_onnx), else torch

    def __repr__(self) -> str:
        return f"WhisperEncoder({self.fingerprint}, {self.num_layers + 1} states x {self.dim}-d)"

    @property
    def min_samples(self) -> int:
        return HOP  # one mel frame -> one output frame

    def num_frames(self, num_samples: int) -> int:
        # Holds across 30 s chunks too: 480000 samples are exactly 1500 frames.
        return math.ceil((int(num_samples) // HOP) / 2)

    def encode(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            states = self._encode(waveforms)
        # Cloned outside inference mode: ordinary compact tensors that autograd code downstream may consume.
        return [s.clone() for s in states]

    def _encode(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        waves = [_as_waveform(w, i, self.min_samples) for i, w in enumerate(waveforms)]
        # Split into 30 s chunks; a tail too short for one frame adds no frame (num_frames agrees).
        pieces = [(i, w[s:s + CHUNK_SAMPLES]) for i, w in enumerate(waves) for s in range(0, len(w), CHUNK_SAMPLES)]
        pieces = [(i, p) for i, p in pieces if len(p) >= HOP]
        outputs: list[torch.Tensor | None] = [None] * len(pieces)
        # Longest first, so each forward pass pads little; batches bounded by MAX_BATCH_FRAMES.
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))
        width = (CHUNK_SAMPLES if self.pad_to_30s else 0)
        start = 0
        while start < len(order):
            longest = max(width, len(pieces[order[start]][1])) // HOP // 2 + 1
            size = max(1, MAX_BATCH_FRAMES // longest)
            batch = order[start:start + size]
            for j, states in zip(batch, self._forward([pieces[j][1] for j in batch])):
                outputs[j] = states
            start += size
        chunks: list[list[torch.Tensor]] = [[] for _ in waves]
        for (owner, _), states in zip(pieces, outputs):  # pieces are in time order within each utterance
            chunks[owner].append(states)
        return [torch.cat(c, dim=1) for c in chunks]

    def onnx_graph(self) -> dict:
        """The network, unpadded, for an ONNX export (:func:`emoadapt.inference.onnx.export_encoder_onnx`):
        ``log_mel [1, n_mels, M] -> hidden_states [L+1, 1, T, D]`` for M up to 3000 (30 s); the log-mel stays in
        torch."""
        import json
        if self.pad_to_30s:
            raise EncoderError(self.name, "only the unpadded Whisper encoders export to ONNX (this one pads to 30 s)")
        wave = torch.from_numpy(np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1)
        mel, _ = self.mel([wave])
        return {"module": _UnpaddedNet(self.net), "example": (mel,), "inputs": ["log_mel"], "outputs": ["hidden_states"],
                "dynamic_shapes": ({2: torch.export.Dim("mel_frames", min=4, max=3000)},),
                "metadata": {"encoder": json.dumps({"name": self.name, "fingerprint": self.fingerprint})}}

    def use_onnx(self, path: str | Path | None) -> None:
        """Run the network in onnxruntime from an export of it (:meth:`onnx_graph`), one utterance at a time; the
        log-mel stays in torch. None: back to torch."""
        import json

        import onnxruntime as ort
        if path is None:
            self.onnx = None
            return
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        made_from = json.loads(session.get_modelmeta().custom_metadata_map.get("encoder", "{}")).get("fingerprint")
        if made_from != self.fingerprint or self.pad_to_30s:
            raise EncoderError(path, f"this encoder export was made from {made_from!r}, not {self.fingerprint!r} "
                                     "(unpadded); export it again")
        self.onnx = session

    def _forward(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        frames = [self.num_frames(len(w)) for w in waves]
        if self.onnx is not None:
            out = []
            for w, t in zip(waves, frames):
                mel, _ = self.mel([w.to(self.device)])
                states = torch.from_numpy(self.onnx.run(None, {"log_mel": mel.cpu().numpy()})[0])
                out.append(states[:, 0, :t].float())
            return out
        waves = [w.to(self.device) for w in waves]
        if self.pad_to_30s:
            waves = [F.pad(w, (0, CHUNK_SAMPLES - len(w))) for w in waves]
        mel, lengths = self.mel(waves)
        states = torch.stack(self.net(mel, lengths))  # (L+1, B, T, D)
        return [states[:, b, :t].float().cpu() for b, t in enumerate(frames)]


class _UnpaddedNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, log_mel):
        return self.net.forward_unpadded(log_mel)


def _as_waveform(w, index: int, min_samples: int) -> torch.Tensor:
    w = torch.as_tensor(w).detach().to("cpu", torch.float32)
    if w.dim() != 1:
        raise EncoderError(None, f"waveform {index} has shape {tuple(w.shape)}; expected a 1-D 16 kHz mono array")
    if len(w) < min_samples:
        raise TooShortAudio(None, f"waveform {index} has {len(w)} samples; the encoder needs at least {min_samples}")
    return w


def load_whisper_ct2(paths: Sequence[str | Path], name: str, *, label: str | None = None, pad_to_30s: bool = False,
                     device: str | torch.device = "cpu") -> WhisperEncoder:
    """A Whisper encoder from a CTranslate2 ``model.bin`` (possibly split into ``paths`` parts)."""
    weights, sha = read_ct2_variables(paths, prefix="encoder/")
    where = " + ".join(str(p) for p in paths)
    try:
        cfg = config_from_ct2(weights)
        net = WhisperEncoderNet(cfg)
        net.load_state_dict(ct2_to_state_dict(weights, cfg.num_layers))
    except (KeyError, RuntimeError, ValueError) as e:
        raise EncoderError(where, f"CTranslate2 Whisper encoder weights are not in the expected layout ({e})") from None
    return WhisperEncoder(name, net, sha, pad_to_30s=pad_to_30s, device=device, label=label)

"""HuBERT / wav2vec2 / WavLM / data2vec-audio encoders through ``transformers`` (the paper's HuBERT-large path).

``AutoModel.from_pretrained(folder or hub id)`` with ``output_hidden_states=True`` gives ``L+1`` states
(transformers' convention: the Transformer input, then each layer's output; for "stable layer norm" models such
as HuBERT-large the last one is after the encoder's final LayerNorm). Waveform normalisation follows the
checkpoint's ``preprocessor_config.json``: ``do_normalize`` = zero mean, unit variance per utterance, on its own
samples before any padding. A checkpoint without that file gets no normalisation.

Batching: padded with zeros plus an attention mask, trimmed to each utterance's own frames, so a padded batch
equals one utterance at a time up to float rounding (~1e-6 on the test models). Two kinds of model cannot keep that promise and are run one utterance at a time:
- ``feat_extract_norm == "group"`` (wav2vec2-base, HuBERT-base): the first conv layer's GroupNorm normalises
  over time, padding included (their feature extractors say not to pass an attention mask either).
- ``data2vec-audio``: its positional embedding stacks several padded convolutions, so values from padding
  frames leak into the last real frames.
Very long audio is encoded in consecutive chunks of ``chunk_seconds`` that overlap by the conv stack's receptive
field minus its stride, so frames line up exactly and the chunks together give ``num_frames(n)`` frames.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import EncoderError, TooShortAudio
from .base import SAMPLE_RATE

SUPPORTED_MODEL_TYPES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")
ONE_AT_A_TIME_MODEL_TYPES = ("data2vec-audio",)
MAX_BATCH_FRAMES = 6000  # padded frames per forward pass: bounds attention memory


class HFEncoder:
    """The :class:`~emoadapt.encoders.base.Encoder` for a transformers speech model."""

    def __init__(self, name: str, model, *, do_normalize: bool, chunk_seconds: float, weights_sha256: str,
                 label: str, device: str | torch.device = "cpu"):
        cfg = model.config
        self.name = name
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.model_type = cfg.model_type
        self.num_layers = int(cfg.num_hidden_layers)
        self.dim = int(cfg.hidden_size)
        # Receptive field and hop of the conv feature encoder, in samples (400 and 320 for every checkpoint here).
        self.stride = math.prod(cfg.conv_stride)
        self.receptive_field = 1 + sum((k - 1) * math.prod(cfg.conv_stride[:i]) for i, k in enumerate(cfg.conv_kernel))
        self.frame_rate = SAMPLE_RATE / self.stride
        self.do_normalize = bool(do_normalize)
        self.chunk_seconds = float(chunk_seconds)
        self.chunk_frames = max(1, round(self.chunk_seconds * self.frame_rate))
        self.batchable = (getattr(cfg, "feat_extract_norm", "layer") == "layer"
                          and self.model_type not in ONE_AT_A_TIME_MODEL_TYPES)
        self.options = {"do_normalize": self.do_normalize, "chunk_seconds": self.chunk_seconds}
        self.weights_sha256 = weights_sha256
        self.fingerprint = f"{label}:{weights_sha256[:16]}:norm={int(self.do_normalize)}:chunk={self.chunk_seconds:g}"

    def __repr__(self) -> str:
        return f"HFEncoder({self.fingerprint}, {self.num_layers + 1} states x {self.dim}-d)"

    @property
    def min_samples(self) -> int:
        return self.receptive_field

    def num_frames(self, num_samples: int) -> int:
        return max(0, int(self.model._get_feat_extract_output_lengths(torch.tensor(int(num_samples)))))

    def encode(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            states = self._encode(waveforms)
        # Cloned outside inference mode: ordinary compact tensors that autograd code downstream may consume.
        return [s.clone() for s in states]

    def _encode(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        waves = []
        for i, w in enumerate(waveforms):
            w = torch.as_tensor(w).detach().to("cpu", torch.float32)
            if w.dim() != 1:
                raise EncoderError(None, f"waveform {i} has shape {tuple(w.shape)}; expected a 1-D 16 kHz mono array")
            if len(w) < self.min_samples:
                raise TooShortAudio(None, f"waveform {i} has {len(w)} samples; "
                                          f"the encoder needs at least {self.min_samples}")
            if self.do_normalize:  # as Wav2Vec2FeatureExtractor: on the whole utterance, before chunking or padding
                w = (w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7)
            waves.append(w)
        pieces = [(i, p) for i, w in enumerate(waves) for p in self._chunks(w)]
        outputs: list[torch.Tensor | None] = [None] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))  # longest first: little padding
        start = 0
        while start < len(order):
            longest = max(1, self.num_frames(len(pieces[order[start]][1])))
            size = max(1, MAX_BATCH_FRAMES // longest) if self.batchable else 1
            batch = order[start:start + size]
            for j, states in zip(batch, self._forward([pieces[j][1] for j in batch])):
                outputs[j] = states
            start += size
        chunks: list[list[torch.Tensor]] = [[] for _ in waves]
        for (owner, _), states in zip(pieces, outputs):
            chunks[owner].append(states)
        return [torch.cat(c, dim=1) for c in chunks]

    def _chunks(self, w: torch.Tensor) -> list[torch.Tensor]:
        """Consecutive pieces of ``chunk_frames`` frames each: piece k covers frames [k*C, (k+1)*C), i.e. the
        samples from k*C*stride to the end of its last frame's receptive field."""
        total = self.num_frames(len(w))
        extra = self.receptive_field - self.stride
        return [w[f * self.stride: min(total, f + self.chunk_frames) * self.stride + extra]
                for f in range(0, total, self.chunk_frames)]

    def _forward(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        lengths = [len(w) for w in waves]
        batch = torch.zeros(len(waves), max(lengths))
        mask = torch.zeros(len(waves), max(lengths), dtype=torch.long)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
            mask[i, : len(w)] = 1
        ragged = len(set(lengths)) > 1
        with warnings.catch_warnings():  # WavLM inside transformers mixes a bool and a float mask; harmless
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
            out = self.model(batch.to(self.device), attention_mask=mask.to(self.device) if ragged else None,
                             output_hidden_states=True)
        states = torch.stack(out.hidden_states)  # (L+1, B, T, D)
        return [states[:, b, : self.num_frames(n)].float().cpu() for b, n in enumerate(lengths)]


def load_hf(source: str, *, device: str | torch.device = "cpu", chunk_seconds: float = 30.0) -> HFEncoder:
    """``source``: a local folder saved by ``save_pretrained`` or a hub id such as ``facebook/hubert-large-ll60k``."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    if not source:
        raise EncoderError("hf:", "empty model id: use hf:<local folder or hub id>")
    if not chunk_seconds or chunk_seconds <= 0:
        raise EncoderError(source, f"chunk_seconds must be positive, got {chunk_seconds!r}")
    folder = Path(source).expanduser()
    # A hub id is "name" or "org/name"; anything else that looks like a path is a local folder.
    local = folder.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if local:
        if not folder.is_dir():
            raise EncoderError(folder, "no such model folder")
        if not (folder / "config.json").is_file():
            raise EncoderError(folder, "not a transformers model folder: config.json is missing")
    where = str(folder) if local else source
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:
        reason = ("cannot read its config.json" if local else "no local folder of that name, and cannot fetch it "
                  "from the Hugging Face hub (offline, or no such model?)")
        raise EncoderError(where, f"{reason}: {_first_line(e)}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise EncoderError(where, f"model type {config.model_type!r} is not supported; "
                                  f"use one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    try:
        model = AutoModel.from_pretrained(where, config=config).float()
    except (OSError, ValueError, RuntimeError) as e:
        raise EncoderError(where, f"cannot load the model weights: {_first_line(e)}") from None
    # preprocessor_config.json is optional: without it the waveform is used as it is.
    do_normalize = False
    if not local or (folder / "preprocessor_config.json").is_file():
        try:
            do_normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(where), "do_normalize", False))
        except (OSError, ValueError, KeyError):
            pass
    label = f"hf:{folder.resolve().name}" if local else f"hf:{source}"  # location-independent: the hash is the identity
    return HFEncoder(f"hf:{where}", model, do_normalize=do_normalize, chunk_seconds=chunk_seconds,
                     weights_sha256=_state_dict_sha256(model), label=label, device=device)


def _state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (name, shape, dtype, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

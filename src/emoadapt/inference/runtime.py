"""The runtime: the one path from a model folder to predictions. Load it, encode waveforms with the model's own
encoder, normalise as its training inputs were, and classify stored features or hidden states, batched by length
(little padding; the models give padded and lone utterances the same outputs).

The Recognizer, the server, ONNX export, and training's test step and ``evaluate`` all go through here. Nothing
here imports training (or Lightning).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..calibration import Normalizer, normalizer_for
from ..errors import EmoadaptError, EncoderError
from ..modelfolder import LoadedModel
from ..store.dataset import FeatureDataset, collate, eval_loader, require_same_features


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: FeatureDataset, batch_size: int = 32,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Class probabilities ``[N, C]`` in dataset order (whole utterances, eval mode)."""
    model = model.to(device).eval()
    out = None
    for batch in eval_loader(dataset, batch_size):
        probs = F.softmax(model(batch["hidden_states"].to(device), batch["padding_mask"].to(device)).float(), -1)
        if out is None:
            out = np.zeros((len(dataset), probs.shape[1]), dtype=np.float32)
        out[batch["index"].numpy()] = probs.cpu().numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def model_encoder(loaded: LoadedModel, encoder=None, device: str = "cpu"):
    """The frozen encoder ``loaded`` was trained on (loaded from its ``model.json`` on ``device`` when None; another
    is refused)."""
    trained = loaded.info.get("encoder") or {}
    if encoder is None:
        from ..encoders import load_encoder
        encoder = load_encoder(trained.get("name"), device=device, **(trained.get("options") or {}))
    require_same_features(trained, {"fingerprint": encoder.fingerprint}, keys=("fingerprint",), where=encoder.name,
                          what="the model was trained on features of another encoder", names=("model", "encoder"),
                          error=EncoderError, advice="; use the model's encoder")
    return encoder


def model_normalization(loaded: LoadedModel) -> str:
    """How the model's training inputs were normalised: "global", "speaker" or "utterance"."""
    return (loaded.info.get("config") or {}).get("normalize", "global")


def waveform_normalizer(loaded: LoadedModel, statistics: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> Normalizer | None:
    """How hidden states of new audio are normalised for this model (:func:`emoadapt.calibration.normalizer_for`)."""
    return normalizer_for(model_normalization(loaded), statistics)


@torch.inference_mode()
def encode_waveforms(loaded: LoadedModel, encoder, waveforms: Sequence[np.ndarray],
                     batch_size: int = 8) -> list[np.ndarray]:
    """The hidden states of each 16 kHz waveform, in input order (encoded in batches of similar length): the model's
    layers of the encoder's output, rounded through fp16 as a feature store keeps them, as float16 ``[L+1, T, D]``."""
    trained = loaded.info.get("encoder") or {}
    layers = trained.get("layers") or list(range(encoder.num_layers + 1))
    order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))
    out: list = [None] * len(waveforms)
    for start in range(0, len(order), batch_size):
        chosen = order[start: start + batch_size]
        for h, i in zip(encoder.encode([waveforms[i] for i in chosen]), chosen):
            out[i] = h[layers].half().numpy()
    return out


@torch.inference_mode()
def classify(model: torch.nn.Module, features: Sequence[np.ndarray], batch_size: int = 8, *,
             embed: bool = False) -> np.ndarray:
    """Class probabilities ``[N, C]`` (or, with ``embed``, the utterance vectors ``[N, E]`` the last layer sees) of
    hidden states ``[L+1, T, D]`` already normalised as the model expects, batched by length. ``model``: a torch
    model, or an exported head (:class:`emoadapt.inference.onnx.OnnxHead`: numpy in, probabilities out)."""
    exported = not isinstance(model, torch.nn.Module)
    if exported and embed:
        raise EmoadaptError(None, "embeddings need the torch backend (an exported head gives probabilities only)")
    order = sorted(range(len(features)), key=lambda i: features[i].shape[1])
    device = "cpu" if exported else next(iter(model.parameters()), torch.empty(0)).device
    out = None
    for start in range(0, len(order), batch_size):
        chosen = order[start: start + batch_size]
        batch = collate([{"hidden_states": torch.from_numpy(np.asarray(features[i], np.float32)), "label": -1,
                          "index": i} for i in chosen])
        if exported:
            values = model(batch["hidden_states"].numpy(), batch["padding_mask"].numpy())
        else:
            states, mask = batch["hidden_states"].to(device), batch["padding_mask"].to(device)
            values = model.embed(states, mask) if embed else F.softmax(model(states, mask).float(), -1)
            values = values.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(features), values.shape[1]), dtype=np.float32)
        out[chosen] = values
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def predict_waveforms(loaded: LoadedModel, waveforms: Sequence[np.ndarray], *, encoder=None,
                      batch_size: int = 8, statistics: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Class probabilities ``[N, C]`` for 16 kHz mono float32 waveforms (:func:`emoadapt.audio.load_audio`), each
    as it would be scored from stored features. ``statistics``: a speaker's (mean, std) ``[L+1, D]`` from
    calibration clips, for a model trained on speaker-normalised features (required by such a model)."""
    normalizer = waveform_normalizer(loaded, statistics)
    features = encode_waveforms(loaded, model_encoder(loaded, encoder), waveforms, batch_size)
    return classify(loaded.model, [x if normalizer is None else normalizer.normalize(x) for x in features],
                    batch_size)

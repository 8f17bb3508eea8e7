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
from ..calibration import ClassOffsets
from ..errors import CheckpointError

REFERENCE = "reference.safetensors"


POPULATION_KEYS = {"population_mean", "population_std"}
OFFSET_KEYS = {"class_offsets", "class_prior"}  # models trained since calibration.remove_emotion: ClassOffsets


def write_population(folder: str | Path, population: tuple[np.ndarray, np.ndarray],
                     offsets: ClassOffsets | None = None) -> dict:
    """Write the population statistics (and the classes' offsets, when known) into ``folder`` (before
    ``model.json``, which records what this returns)."""
    from .format import _sha256
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = dict(zip(("population_mean", "population_std"), population))
    if offsets is not None:
        tensors.update(class_offsets=offsets.offsets, class_prior=offsets.prior)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in tensors.items()}
    atomic_write(folder / REFERENCE, lambda tmp: save_file(tensors, str(tmp)))
    return {"file": REFERENCE, "sha256": _sha256(folder / REFERENCE), "shape": list(tensors["population_mean"].shape),
            "class_offsets": offsets is not None}


def read_reference(folder: str | Path,
                   info: dict) -> tuple[tuple[np.ndarray, np.ndarray] | None, ClassOffsets | None]:
    """The population statistics and the classes' offsets a model folder records, from one read of its file (each
    None for a model saved without them), checked against ``model.json``: the fixed file name, its sha256, the shape
    the encoder's layers and width give, finite values; the offsets against the model's labels too ([C, L+1, D] and a
    prior over C classes that sums to 1)."""
    tensors = _read_reference(folder, info)
    if tensors is None:
        return None, None
    population = tensors["population_mean"], tensors["population_std"]
    if not OFFSET_KEYS <= set(tensors):
        return population, None
    offsets, prior = tensors["class_offsets"], tensors["class_prior"]
    classes = len(info.get("labels") or [])
    path = Path(folder) / REFERENCE
    if offsets.shape != (classes, *tensors["population_mean"].shape) or prior.shape != (classes,):
        raise CheckpointError(path, f"class offsets of shape {list(offsets.shape)} and prior {list(prior.shape)} do "
                                    f"not fit the model's {classes} classes; restore the model folder or re-train it")
    if (prior < 0).any() or abs(float(prior.sum()) - 1) > 1e-3:
        raise CheckpointError(path, "the class prior is not a distribution; restore the model folder or re-train it")
    return population, ClassOffsets(offsets, prior)


def _read_reference(folder: str | Path, info: dict) -> dict[str, np.ndarray] | None:
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
            keys = set(f.keys())
            if keys not in (POPULATION_KEYS, POPULATION_KEYS | OFFSET_KEYS):
                raise CheckpointError(path, f"holds {sorted(keys)}, not the population mean and std (and the classes' "
                                            f"offsets)")
            tensors = {k: f.get_tensor(k).double().numpy() for k in keys}
            mean, std = tensors["population_mean"], tensors["population_std"]
    except (SafetensorError, OSError) as error:
        raise CheckpointError(path, f"unreadable safetensors file ({error})") from None
    encoder = info.get("encoder") or {}
    layers = len(encoder.get("layers") or []) or (info.get("build") or {}).get("input_layers")
    expected = (layers, encoder.get("dim") or (info.get("build") or {}).get("input_dim"))
    if mean.shape != std.shape or mean.ndim != 2 or (None not in expected and mean.shape != expected):
        raise CheckpointError(path, f"statistics of shape {list(mean.shape)} do not fit the model's input "
                                    f"{list(expected)}; restore the model folder or re-train it")
    if not all(np.isfinite(a).all() for a in tensors.values()):
        raise CheckpointError(path, "holds NaN or infinite statistics; re-train the model")
    return tensors

"""Lightning training checkpoints without pickle (``last.ckpt``, ``best.ckpt``: resume after an interruption).

Lightning's own format is ``torch.save`` (pickle). :class:`SafetensorsCheckpointIO` writes the same checkpoint dict
as one safetensors file instead: every tensor under a flattened key (``state_dict/adapter.input_proj.weight``,
``optimizer_states/0/state/3/exp_avg`` ...), and everything else as JSON in the safetensors header
(``__metadata__["emoadapt.checkpoint"]``), with tensors replaced by ``{"__tensor__": key}``.

JSON cannot say everything Python can, so some leaves are tagged and restored exactly:
a dict whose keys are not all strings (optimizer state is keyed by int) -> ``{"__dict__": [[key, value] ...]}``,
a tuple -> ``{"__tuple__": [...]}``, a NaN or infinite float -> ``{"__float__": "nan" | "inf" | "-inf"}``,
a numpy array -> stored as a tensor and tagged ``{"__ndarray__": key}``. Converted one way (they come back
as the plain value): numpy scalars -> Python numbers, ``pathlib.Path`` -> str, set/frozenset -> list,
``torch.dtype`` / ``torch.device`` -> str. Anything else raises :class:`CheckpointError` naming where it is.
Every write is atomic: a resumed run never sees half a file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import CheckpointIO
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..errors import CheckpointError

CHECKPOINT_FORMAT = "emoadapt-lightning-checkpoint"
VERSION = 1
_HEADER_KEY = "emoadapt.checkpoint"
_MARKERS = ("__tensor__", "__ndarray__", "__dict__", "__tuple__", "__float__")


# ------------------------------------------------------------------------------------------------------------
def save_checkpoint_file(checkpoint: dict, path: str | os.PathLike) -> Path:
    """Any nested dict of tensors and plain values -> one safetensors file (tensors + JSON header), atomically."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(checkpoint, (), tensors)
    header = json.dumps(skeleton, allow_nan=False, separators=(",", ":"))
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(VERSION), _HEADER_KEY: header}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def load_checkpoint_file(path: str | os.PathLike, map_location=None) -> dict:
    """Inverse of :func:`save_checkpoint_file`. ``map_location`` (a device or str) moves tensors; default CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT or _HEADER_KEY not in metadata:
                raise CheckpointError(path, "not an emoadapt training checkpoint (a torch.save/pickle .ckpt is never "
                                            "loaded: it could run code)")
            if int(metadata.get("version", 0)) > VERSION:
                raise CheckpointError(path, f"checkpoint version {metadata['version']} is newer than this emoadapt")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(path, f"unreadable checkpoint ({error}); delete it to start over") from None
    if isinstance(map_location, (str, torch.device)):
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return _decode(json.loads(metadata[_HEADER_KEY]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` plugin: training checkpoints as safetensors + JSON header, never pickle.

    ``Trainer(plugins=[SafetensorsCheckpointIO()])``; ``trainer.fit(..., ckpt_path="last")`` resumes from it.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError("SafetensorsCheckpointIO takes no storage_options")
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint_file(path, map_location)

    def remove_checkpoint(self, path):
        Path(path).unlink(missing_ok=True)


def _encode(obj: Any, where: tuple, tensors: dict) -> Any:
    """Replace tensors by references into ``tensors`` and tag what JSON cannot hold (see module docstring)."""
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": _store(obj, where, tensors)}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _store(torch.from_numpy(np.ascontiguousarray(obj)), where, tensors)}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _MARKERS for k in obj):
            return {k: _encode(v, where + (k,), tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, where + ("key",), tensors), _encode(v, where + (str(k),), tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, where + (str(i),), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, where + (str(i),), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return [_encode(v, where + (str(i),), tensors) for i, v in enumerate(sorted(obj, key=repr))]
    if isinstance(obj, (os.PathLike, torch.dtype, torch.device)):
        return str(obj)
    raise CheckpointError(None, f"cannot store a {type(obj).__name__} at {'/'.join(where) or '(root)'} in a "
                                f"checkpoint without pickle; keep checkpoint state to tensors and plain values")


def _store(tensor: torch.Tensor, where: tuple, tensors: dict) -> str:
    key = "/".join(where) or "tensor"
    if key in tensors:  # e.g. an int key 0 and a str key "0" side by side
        n = 1
        while f"{key}#{n}" in tensors:
            n += 1
        key = f"{key}#{n}"
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise CheckpointError(None, f"cannot store a {tensor.layout} tensor at {key}")
    tensors[key] = tensor.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    return key


def _decode(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__ndarray__":
            return tensors[value].numpy()
        if tag == "__float__":
            return float(value)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "__dict__":
            return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (tuple, list)) else key

"""The model folder: what ``finetune`` and ``pretrain`` hand over and every reader loads, without pickle (loading
one never runs code)::

      model.safetensors   the weights (state_dict)
      model.json          what to build: kind ("classifier" or "adapter"), recipe and its options, class labels,
                          the encoder (name, fingerprint, layers) the features came from, the run's full config,
                          and the sha256 of model.safetensors
      seen.json           the utterances and speakers it was trained on (:mod:`emoadapt.modelfolder.seen`)

  :func:`load_model` rebuilds the network from the JSON with :func:`emoadapt.model.build_model` (or
  :class:`WAPTransformer` for a stage-1 adapter) and loads the weights: no code from the folder is executed.

Every write goes to a temporary name beside the target, is fsynced, then renamed over it: a reader (or a resumed
run) never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..errors import CheckpointError, TrainingError
from ..model import AdapterConfig, WAPTransformer, build_model
from .seen import Seen, write_seen

MODEL_FORMAT = "emoadapt-model"
VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "model.json"
LABELS_KEY = "emoadapt.model"  # {"format", "labels"}: the class labels, in the weights' safetensors header


# ------------------------------------------------------------------------------------------------------------
# Model folders
# ------------------------------------------------------------------------------------------------------------
class LoadedModel(NamedTuple):
    model: nn.Module   # in eval mode
    info: dict         # the model.json contents
    folder: Path       # the model folder it was read from


def save_model(model: nn.Module, folder: str | os.PathLike, *, kind: str, build: dict, labels=None,
               encoder: dict | None = None, config: dict | None = None, seen: Seen | None = None,
               extra: dict | None = None) -> Path:
    """Write ``model.safetensors``, ``seen.json`` (what it was trained on: :mod:`emoadapt.leakage`) and then
    ``model.json`` (the commit) into ``folder``.

    ``build`` is what :func:`load_model` needs to rebuild the network: for kind "classifier"
    ``{"recipe", "input_layers", "input_dim", "num_classes", "options"}`` (``build_model``'s arguments); for kind
    "adapter" ``{"adapter_config": {...AdapterConfig fields}}``.
    """
    if kind not in ("classifier", "adapter"):
        raise ValueError(f"kind must be 'classifier' or 'adapter', not {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = _non_finite(state)
    if bad:
        raise TrainingError(folder, f"the trained weights hold NaN or infinite values ({bad}): training diverged "
                                    f"or its inputs were damaged; the model was not saved")
    # one key: safetensors writes its metadata map in no fixed order, and the weights' sha256 must not vary
    metadata = {"format": MODEL_FORMAT}
    if labels is not None:  # in the weights' own header, so their sha256 covers the labels too
        metadata = {LABELS_KEY: json.dumps({"format": MODEL_FORMAT, "labels": list(labels)})}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    if seen is not None:
        extra = {**(extra or {}), "seen": write_seen(folder, seen)}
    info = {"format": MODEL_FORMAT, "version": VERSION, "kind": kind, "build": build,
            "labels": list(labels) if labels is not None else None, "encoder": encoder or {},
            "config": config or {}, "sha256": _sha256(weights), **(extra or {})}
    text = json.dumps(plain_json(info), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return folder


def save_adapter(adapter: WAPTransformer, folder: str | os.PathLike, *, encoder: dict | None = None,
                 config: dict | None = None, seen: Seen | None = None, extra: dict | None = None) -> Path:
    """A stage-1 adapter (the teacher) as a model folder of kind "adapter"."""
    return save_model(adapter, folder, kind="adapter", build={"adapter_config": asdict(adapter.config)},
                      encoder=encoder, config=config, seen=seen, extra=extra)


def read_stage1_adapter(run: str | os.PathLike) -> tuple[Path, dict]:
    """(model folder, its model.json) of a stage-1 adapter; ``run``: a pretrain run folder or its adapter/."""
    folder = Path(run)
    if (folder / "adapter" / CONFIG).is_file():
        folder = folder / "adapter"
    info = read_model_info(folder)  # a clear error when it is not a model folder
    if info["kind"] != "adapter":
        raise CheckpointError(folder, "this model folder is not a stage-1 adapter (kind "
                                      f"{info['kind']!r}); pass the folder that emoadapt pretrain wrote")
    return folder, info


def load_classifier(model: str | os.PathLike) -> LoadedModel:
    """A stage-2 model folder (or the finetune run folder holding ``model/``), rebuilt in eval mode on the CPU;
    its ``model.json`` is read once."""
    return load_model(*read_classifier(model))


def read_classifier(model: str | os.PathLike) -> tuple[Path, dict]:
    """(model folder, its model.json) of a stage-2 classifier; ``model``: a model folder or a finetune run folder."""
    folder = Path(model)
    if (folder / "model" / CONFIG).is_file():
        folder = folder / "model"
    info = read_model_info(folder)
    if info["kind"] != "classifier":
        raise CheckpointError(folder, "this is a stage-1 adapter, not a classifier: fine-tune it first")
    return folder, info


def read_model_info(folder: str | os.PathLike) -> dict:
    """The model.json of a model folder (checked, weights not read)."""
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise CheckpointError(folder, "no such model folder")
    if not path.is_file():
        raise CheckpointError(folder, f"not a model folder: {_what_folder_is(folder)}")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(path, f"unreadable model description ({error})") from None
    if info.get("format") != MODEL_FORMAT:
        raise CheckpointError(path, f"not an emoadapt model (format {info.get('format')!r})")
    if info.get("version", 0) > VERSION:
        raise CheckpointError(path, f"model format version {info['version']} is newer than this emoadapt reads "
                                    f"({VERSION}); upgrade emoadapt")
    return info


def _what_folder_is(folder: Path) -> str:
    """What a folder given as a model is instead, and what to pass."""
    if (folder / "adapter" / CONFIG).is_file():
        return ("it is a stage-1 run (emoadapt pretrain): its adapter is not a classifier; fine-tune it first "
                "(emoadapt finetune --init " + str(folder) + ") and pass that run")
    if (folder / "meta.json").is_file() and (folder / "shards").is_dir():
        return "it is a feature store (emoadapt extract), not a model; pass a model folder or a finetune run folder"
    if (folder / "final" / "model" / CONFIG).is_file():
        return (f"it is a cross-validation run; its model trained on every speaker is {folder / 'final'}: pass that "
                f"(--model {folder / 'final'}), or one fold's run folder to reproduce a fold")
    if any(folder.glob(f"fold_*/model/{CONFIG}")):
        return ("it is a cross-validation run: its fold models each left a test fold out. Train the model to deploy "
                "on every speaker with the same command and --final (it reuses the finished folds), or emoadapt "
                "finetune --fold all; to reproduce a fold, pass its run folder (e.g. " + str(folder / "fold_1") + ")")
    if (folder / "config.json").is_file() or (folder / "checkpoints").is_dir():
        return (f"{CONFIG} is missing: a run interrupted before it saved its model writes it last; re-run the same "
                f"training command to finish it")
    return f"{CONFIG} is missing; pass a folder that emoadapt finetune, cv or pretrain wrote"


def load_model(folder: str | os.PathLike, info: dict | None = None) -> LoadedModel:
    """Rebuild the network a model folder describes and load its weights (eval mode, CPU). ``info``: its
    model.json when the caller has read it already (:func:`read_model_info`)."""
    folder = Path(folder)
    info = read_model_info(folder) if info is None else info
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(folder, f"{WEIGHTS} is missing")
    if info.get("sha256") and _sha256(weights) != info["sha256"]:
        raise CheckpointError(weights, f"the weights do not match {CONFIG} (sha256 differs): the folder was "
                                       f"partly overwritten; re-run the training command")
    shapes, metadata = _tensor_shapes(weights)
    _check_sizes(info, shapes, folder / CONFIG)
    check_labels(info, metadata, folder)
    with torch.device("meta"):  # the described network without allocating it: its shapes are checked first
        described = _build(info, folder)
    missing, unexpected = _compare_keys(described.state_dict(), shapes)
    if missing or unexpected:
        raise CheckpointError(weights, f"weights do not fit the described model (missing {missing[:3]}, "
                                       f"unexpected {unexpected[:3]})")
    wrong = [k for k, v in described.state_dict().items() if tuple(v.shape) != shapes[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(folder / CONFIG, f"{CONFIG} describes {k} as {tuple(described.state_dict()[k].shape)} "
                                               f"but the weights hold {shapes[k]}: the description does not match "
                                               f"its weights")
    model = _build(info, folder)
    state = _read_tensors(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(weights, f"weights do not fit the described model ({str(error).splitlines()[-1]})") from None
    bad = _non_finite(state)
    if bad:
        raise CheckpointError(weights, f"non-finite values (NaN or inf) in {bad}: the model is unusable; "
                                       f"re-train it")
    return LoadedModel(model.eval(), info, folder)


def check_labels(info: dict, metadata: dict[str, str], folder: Path) -> None:
    """A classifier's labels are part of the model: a list of distinct, non-empty names, one per output, and the
    same as those saved in the weights' header (covered by their sha256). Models saved before labels went into the
    header get the first checks only."""
    if info.get("kind") != "classifier":
        return
    path = folder / CONFIG
    labels = info.get("labels")
    if not isinstance(labels, list) or not all(isinstance(c, str) and c.strip() for c in labels):
        raise CheckpointError(path, f"'labels' must be a list of class names, not {labels!r}; restore the model "
                                    f"folder or re-train it")
    if len(set(labels)) != len(labels):
        twice = sorted({c for c in labels if labels.count(c) > 1})
        raise CheckpointError(path, f"'labels' names {', '.join(map(repr, twice))} twice; restore the model folder or "
                                    f"re-train it")
    outputs = (info.get("build") or {}).get("num_classes")
    if outputs is not None and len(labels) != outputs:
        raise CheckpointError(path, f"'labels' names {len(labels)} classes but the model has {outputs} outputs; "
                                    f"restore the model folder or re-train it")
    if LABELS_KEY in metadata:
        try:
            saved = json.loads(metadata[LABELS_KEY]).get("labels")
        except (ValueError, AttributeError):
            saved = None
        if saved != labels:
            raise CheckpointError(path, f"'labels' {labels} differ from those saved with the weights ({saved}): "
                                        f"{CONFIG} was edited; restore it or re-train the model")


def _non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first weight holding NaN or inf, if any: never saved, never loaded."""
    return next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def _build(info: dict, folder: Path) -> nn.Module:
    build = info["build"]
    try:
        if info["kind"] == "adapter":
            known = {f.name for f in fields(AdapterConfig)}
            return WAPTransformer(AdapterConfig(**{k: v for k, v in build["adapter_config"].items() if k in known}))
        return build_model(build["recipe"], build["input_layers"], build["input_dim"], build["num_classes"],
                           **build.get("options", {}))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(folder / CONFIG, f"cannot rebuild the model from its description ({error})") from None


def _check_sizes(info: dict, shapes: dict[str, tuple], path: Path) -> None:
    """Before anything is built: no size in the description may exceed what its weights could hold (the largest
    dimension of any weight, or the number of weights for counts such as layers). A description edited to a
    million layers is refused here instead of allocating until the machine runs out of memory."""
    limit = max([len(shapes), *(d for shape in shapes.values() for d in shape)], default=0)

    def sizes(node, where):
        if isinstance(node, bool) or node is None:
            return
        if isinstance(node, int):
            yield where, node
        elif isinstance(node, dict):
            for k, v in node.items():
                yield from sizes(v, f"{where}.{k}")
        elif isinstance(node, (list, tuple)):
            yield f"{where} (length)", len(node)
            for k, v in enumerate(node):
                yield from sizes(v, f"{where}[{k}]")

    if not isinstance(info.get("build"), dict):
        raise CheckpointError(path, "no 'build' description of the network; re-train or re-save the model")
    for where, value in sizes(info["build"], "build"):
        if value < 0 or value > limit:
            raise CheckpointError(path, f"{where} = {value} is not a size its weights can have (they hold "
                                        f"{len(shapes)} tensors, the largest dimension {limit}); the description "
                                        f"was edited or belongs to other weights")


def _tensor_shapes(path: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """(names and shapes, metadata) from the safetensors header only (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(path, f"unreadable safetensors file ({error})") from None


def _compare_keys(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(path, f"unreadable safetensors file ({error})") from None


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain_json(obj):
    """Config values for model.json: tuples -> lists, Paths -> str (JSON has nothing else)."""
    if isinstance(obj, dict):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    return obj

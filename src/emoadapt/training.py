"""Training on cached features (the encoder never runs): stage 1, stage 2, evaluation and cross-validation.

    feature store(s) ─► FeatureDataset (memmap reads, random crops ≤ 8 s) ─► collate [B, L+1, T, D] + padding mask
        stage 1  PretrainModule   PretrainObjective (student, EMA teacher, L_mask + L_sd + L_la)  ─► teacher adapter
        stage 2  FinetuneModule   build_model(recipe) (+ adapter from the stage-1 teacher), CE     ─► best-val model
        test     predict + evaluation.score on the fold's test speakers
    run_cv: per fold, split (validation = whole training speakers) -> [stage 1 on the train split] -> stage 2 -> test;
            fold results are written as each fold ends (a re-run skips finished folds), then mean ± std.

Lightning runs the loops (devices, DDP, precision, progress bars, clipping, resume); checkpoints never use pickle
(:mod:`emoadapt.checkpoints`). Every run folder holds its resolved ``config.json``, its checkpoints, its logs and its
results, and resumes from itself: run the same command again after an interruption.

Determinism: ``seed`` fixes model init, dropout, masks and crops; the training order and crop positions are fixed
by (seed, epoch) in :class:`ShuffleSampler`, independent of workers; the global RNG states are saved in every
checkpoint, so a resumed run continues with the numbers an uninterrupted one would have used.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import signal
import time
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .atomic import atomic_write
from .checkpoints import (CONFIG, CheckpointError, load_checkpoint_file, load_model, plain_json, read_model_info,
                          save_adapter, save_model)
from .corpora import Corpus, load_corpus
from .errors import CorpusError, EmoadaptError, FeatureStoreError, MissingFeatures, StoreMismatch
from .evaluation import CrossValidationReport, Scores, plot_confusion, score, write_json
from .features import FeatureStore, frame_statistics
from .provenance import git_commit, versions
from .model import (RECIPES, AdapterConfig, FeatureStandardizer, PretrainConfig, PretrainObjective, build_model,
                    cosine_schedule)

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
except ImportError as _error:  # training is an extra: pip install 'emoadapt[train]'
    raise EmoadaptError(None, "training needs Lightning: pip install 'emoadapt[train]'") from _error

CV_RECIPES = ("full", "adapter", "superb", "emobox")  # full = stage 1, then the adapter recipe from its teacher


# ------------------------------------------------------------------------------------------------------------
# Configuration: every hyperparameter, settable from a JSON/YAML file and from "--set section.key=value"
# ------------------------------------------------------------------------------------------------------------
@dataclass
class PretrainRunConfig(PretrainConfig):
    """Stage 1: the objective's settings (PretrainConfig) plus the loop around it.
    ``total_steps`` is always recomputed as epochs x batches per epoch."""
    epochs: int = 100          # stage 1 wants thousands of updates (METHOD.md); RAVDESS folds give ~35 batches/epoch
    grad_clip: float = 3.0     # gradient-norm clipping (DINO's value); 0 switches it off
    total_steps: int = 0       # set by the loop: epochs x batches per epoch (the schedules span the whole run)


@dataclass
class FinetuneConfig:
    """Stage 2 (METHOD.md): adapter + SAP + classifier trained with cross-entropy; checkpoint picked on val UA."""
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-4                 # the adapter (initialised from the stage-1 teacher)
    head_lr: float = 1e-3            # SAP + classifier; for the superb / emobox recipes every parameter
    weight_decay: float = 1e-2       # never on biases, norm gains or layer-mix logits
    warmup_fraction: float = 0.05    # linear warm-up, then cosine, stepped every update
    final_lr_fraction: float = 0.0   # the cosine ends at this fraction of each learning rate
    max_crop_seconds: float = 8.0    # random crops of at most 8 s in training; whole utterances in evaluation
    grad_clip: float = 1.0           # gradient-norm clipping; 0 switches it off
    patience: int | None = None      # stop after this many epochs without a better validation UA (None: never)
    freeze_adapter_epochs: int = 0   # the adapter's lr is 0 for these first epochs, then warms up and decays over the
    #                                  rest: a linear probe on the stage-1 features first, then fine-tuning (LP-FT,
    #                                  Kumar et al. 2022), so random heads do not wreck the pretrained adapter;
    #                                  >= epochs: the adapter never moves (a probe of the stage-1 features)


@dataclass
class TrainerConfig:
    """Where and how the loops run (Lightning Trainer options). They do not change what is learned, except that
    N devices make the effective batch N x batch_size."""
    accelerator: str = "auto"        # cpu, gpu, auto
    devices: int | str = 1           # e.g. 2 with strategy "ddp"
    strategy: str = "auto"           # auto, ddp, ddp_find_unused_parameters_true, ...
    precision: str = "32-true"       # or bf16-mixed, 16-mixed
    num_workers: int = 0             # DataLoader workers (results do not depend on it)
    deterministic: bool | str = "warn"
    log_every_n_steps: int = 10


@dataclass
class RunConfig:
    """Everything one run uses; stored as ``config.json`` in the run folder."""
    seed: int = 0
    val_fraction: float = 0.1        # validation = this share of the training speakers, whole speakers
    standardize: bool = True         # per-layer, per-dimension mean/std of the training frames, fixed in the model
    #                                  (a stage-2 adapter from stage 1 keeps the statistics it was trained with)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # input_layers / input_dim come from the store
    head: dict = field(default_factory=dict)  # recipe head options for build_model: adapter (attention_dim,
    #                                           head_dropout), superb (projector_dim), emobox (input_layer, hidden_dim)
    pretrain: PretrainRunConfig = field(default_factory=PretrainRunConfig)
    stage2: FinetuneConfig = field(default_factory=FinetuneConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return plain_json(asdict(self))


# run-record keys that may change between an interrupted run and its resumption without changing any number
# (matched as the end of the dotted key): workers, logging, and where the data lives
_VOLATILE = ("trainer.num_workers", "trainer.log_every_n_steps", "root", "stores")


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: RunConfig | None = None) -> RunConfig:
    """``base`` (default: the defaults), then a JSON/YAML file, then ``section.key=value`` overrides in order."""
    config = base or RunConfig()
    if path is not None:
        config = apply_dict(config, _read_config_file(Path(path)), where=str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise EmoadaptError(None, f"--set {item!r}: expected section.key=value, e.g. stage2.lr=3e-4")
        config = apply_dict(config, _nest(key.strip(), _parse_value(text)), where=f"--set {item}")
    return config


def apply_dict(config, values: dict, *, where: str = "config"):
    """A copy of the dataclass ``config`` with ``values`` (nested dicts) applied; unknown keys and values of the
    wrong type raise an error that names them."""
    if not isinstance(values, dict):
        raise EmoadaptError(None, f"{where}: expected a mapping of settings, got {type(values).__name__}")
    hints = typing.get_type_hints(type(config))
    known = {f.name for f in fields(config)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise EmoadaptError(None, f"{where}: unknown setting {key!r} in {type(config).__name__}; "
                                      f"known: {', '.join(sorted(known))}")
        current = getattr(config, key)
        if is_dataclass(current):
            changes[key] = apply_dict(current, value, where=f"{where}: {key}")
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise EmoadaptError(None, f"{where}: {key} takes a mapping, got {value!r}")
            changes[key] = {**current, **value}
        else:
            changes[key] = _coerce(value, hints[key], f"{where}: {key}")
    return replace(config, **changes)


def _coerce(value, hint, where):
    """``value`` as the annotated type (a str from the command line becomes a number etc.), or a clear error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        options = [a for a in args if a is not type(None)]
        for a in options:  # exact type first (devices: 2 stays 2, "auto" stays "auto")
            if isinstance(value, a) and not (a is int and isinstance(value, bool)):
                return value
        for a in options:
            try:
                return _coerce(value, a, where)
            except EmoadaptError:
                continue
        raise EmoadaptError(None, f"{where}: {value!r} is not a {' or '.join(a.__name__ for a in args)}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or (args and args[-1] is not Ellipsis and len(items) != len(args)):
            raise EmoadaptError(None, f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, args[0] if args[-1] is Ellipsis else args[i], where) for i, v in enumerate(items))
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise EmoadaptError(None, f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def _parse_value(text: str):
    text = text.strip()
    try:
        import yaml
        return yaml.safe_load(text) if text else ""
    except ImportError:
        try:
            return json.loads(text)
        except ValueError:
            return text
    except Exception:  # noqa: BLE001 - not YAML: keep the words as they are
        return text


def _nest(dotted: str, value) -> dict:
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def packaged_config(name: str) -> Path | None:
    """A config shipped with emoadapt (``src/emoadapt/configs/<name>.json``), e.g. ``demo-cpu`` or
    ``iemocap-hubert-large``, so ``--config NAME`` works from any folder."""
    import importlib.resources
    candidate = importlib.resources.files("emoadapt").joinpath(f"configs/{name}.json")
    return Path(str(candidate)) if candidate.is_file() else None


def _read_config_file(path: Path) -> dict:
    if not path.is_file():
        packaged = packaged_config(str(path)) if path.suffix == "" and len(path.parts) == 1 else None
        if packaged is None:
            raise EmoadaptError(path, "no such config file (nor a packaged config of that name: see "
                                      "src/emoadapt/configs/)")
        path = packaged
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise EmoadaptError(path, "YAML config files need PyYAML (pip install pyyaml); or use JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise EmoadaptError(path, f"not valid YAML ({str(error).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise EmoadaptError(path, f"not valid JSON ({error})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EmoadaptError(path, "a config file holds a mapping of sections (seed, adapter, pretrain, stage2, ...)")
    if isinstance(data.get("config"), dict) and "seed" not in data:
        data = data["config"]  # a run folder's config.json: reuse its settings
    return data


# ------------------------------------------------------------------------------------------------------------
# Data: cached hidden states, read from memmaps one utterance at a time
# ------------------------------------------------------------------------------------------------------------
class FeatureDataset(Dataset):
    """Utterances of one or more feature stores. An item is ``(store index, utterance id, label index)`` with
    label -1 for unlabeled audio; nothing but these ids is held in memory (peak RAM does not grow with the store).

    ``dataset[i]`` is the whole utterance; ``dataset[(i, draw)]`` (what :class:`ShuffleSampler` yields) is a random
    crop of at most ``max_frames`` frames whose position is fixed by ``draw``.
    """

    def __init__(self, stores: Sequence[FeatureStore], items: Sequence[tuple[int, str, int]],
                 max_frames: int | None = None):
        self.stores, self.items, self.max_frames = list(stores), list(items), max_frames

    def __len__(self) -> int:
        return len(self.items)

    def num_frames(self, index: int) -> int:
        s, utt_id, _ = self.items[index]
        return self.stores[s].num_frames(utt_id)

    def __getitem__(self, key):
        index, draw = key if isinstance(key, tuple) else (key, None)
        s, utt_id, label = self.items[index]
        x = self.stores[s].get(utt_id)                                     # fp16 memmap view [L+1, T, D]
        T = x.shape[1]
        if draw is not None and self.max_frames and T > self.max_frames:
            start = int(np.random.default_rng(draw).integers(T - self.max_frames + 1))
            x = x[:, start: start + self.max_frames]
        return {"hidden_states": torch.from_numpy(np.array(x, dtype=np.float32)), "label": label, "index": index}


def collate(items: list[dict]) -> dict:
    """Pad to ``hidden_states [B, L+1, T_max, D]`` (zeros) with ``padding_mask [B, T_max]`` True at padding."""
    lengths = torch.tensor([it["hidden_states"].shape[1] for it in items])
    n, _, D = items[0]["hidden_states"].shape
    hidden_states = torch.zeros(len(items), n, int(lengths.max()), D)
    for i, it in enumerate(items):
        hidden_states[i, :, : lengths[i]] = it["hidden_states"]
    return {"hidden_states": hidden_states,
            "padding_mask": torch.arange(hidden_states.shape[2])[None, :] >= lengths[:, None],
            "lengths": lengths,
            "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}


class ShuffleSampler(Sampler):
    """A fresh order every epoch, fixed by (seed, epoch); yields ``(index, draw)`` so crop positions are fixed too.

    Lightning calls ``set_epoch`` before each epoch. Under DDP each rank takes every world_size-th position of the
    same order (wrapped round so every rank gets the same number of batches).
    """

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order, draws = rng.permutation(self.size), rng.integers(2 ** 62, size=self.size)
        rank, world = _rank_and_world()
        total = math.ceil(self.size / world) * world
        for position in range(rank, total, world):
            position %= self.size
            yield int(order[position]), int(draws[position])

    def __len__(self) -> int:
        return math.ceil(self.size / _rank_and_world()[1])


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train_loader(dataset: FeatureDataset, batch_size: int, *, seed: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShuffleSampler(len(dataset), seed), collate_fn=collate,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=num_workers > 0)


def eval_loader(dataset: FeatureDataset, batch_size: int, *, num_workers: int = 0) -> DataLoader:
    """Whole utterances, batched by length (little padding); the model gives padded and lone utterances the same
    outputs, so this changes only the speed."""
    order = sorted(range(len(dataset)), key=dataset.num_frames)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator())  # own generator: evaluation never touches the global RNG


# --- stores and corpora ----------------------------------------------------------------------------------------
def open_store(store: FeatureStore | str | os.PathLike) -> FeatureStore:
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if not store.meta:
        raise FeatureStoreError(store.root, "not a feature store (no meta.json): run emoadapt extract first")
    if len(store) == 0:
        raise FeatureStoreError(store.root, "the feature store holds no utterances: run emoadapt extract first")
    return store


def encoder_info(store: FeatureStore) -> dict:
    """What a model must know of the features it was trained on (recorded in every model and results file)."""
    m = store.meta
    return {"name": m.get("encoder"), "fingerprint": m.get("fingerprint"), "options": m.get("options"),
            "layers": list(m.get("layers", [])), "dim": m.get("dim"), "frame_rate": m.get("frame_rate"),
            "num_hidden_states": m.get("num_hidden_states")}


def check_same_features(stores: Sequence[FeatureStore]) -> dict:
    """All stores must hold the same encoder's features with the same layers, or they cannot be mixed."""
    first = encoder_info(stores[0])
    for other in stores[1:]:
        info = encoder_info(other)
        diffs = [k for k in ("fingerprint", "layers", "dim") if info[k] != first[k]]
        if diffs:
            what = "; ".join(f"{k}: {info[k]!r} vs {first[k]!r} in {stores[0].root}" for k in diffs)
            raise StoreMismatch(other.root, f"these features cannot be mixed with the first store's ({what})")
    return first


def open_corpus(corpus: Corpus | str | os.PathLike, *, kind=None, view=None) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else load_corpus(corpus, kind=kind, view=view)


def usable_ids(corpus: Corpus, store: FeatureStore, ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(ids with features, ids the store could not encode). Ids never extracted are an error: run extract."""
    failed = {f.id for f in store.failures()}
    keep, skipped, missing = [], [], []
    for i in ids:
        if i in store:
            keep.append(i)
        elif i in failed:
            skipped.append(i)
        else:
            missing.append(i)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingFeatures(store.root, f"{len(missing)} utterances of corpus {corpus.name} have no features "
                                          f"({shown}); run emoadapt extract on the corpus into this store first")
    return keep, skipped


def labelled_dataset(corpus: Corpus, store: FeatureStore, ids: Sequence[str], labels: Sequence[str],
                     max_frames: int | None = None) -> FeatureDataset:
    index = {name: k for k, name in enumerate(labels)}
    by_id = {u.id: u for u in corpus.rows}
    items = []
    for i in ids:
        label = by_id[i].label
        if label not in index:
            raise CorpusError(corpus.root, f"utterance {i} has label {label!r}, which the model does not know "
                                           f"(its classes: {', '.join(labels)})")
        items.append((0, i, index[label]))
    return FeatureDataset([store], items, max_frames)


def split_fold(corpus: Corpus, store: FeatureStore, fold: int, config: RunConfig) -> dict:
    """Train / validation / test ids of a fold with features (validation: whole training speakers)."""
    if corpus.folds is None:
        raise CorpusError(corpus.root, f"corpus {corpus.name} has no folds; give it a folds.csv (path,speaker,fold)")
    split = corpus.folds.split(fold, val_fraction=config.val_fraction, seed=config.seed)
    out, skipped = {}, []
    for name in ("train", "val", "test"):
        out[name], s = usable_ids(corpus, store, getattr(split, name))
        skipped += s
    out["skipped"] = skipped  # utterances the encoder could not read (listed in the store's failures)
    if not out["train"] or not out["test"]:
        raise CorpusError(corpus.root, f"fold {fold} has no {'training' if not out['train'] else 'test'} utterances "
                                       f"with features")
    return out


# ------------------------------------------------------------------------------------------------------------
# Shared Lightning pieces
# ------------------------------------------------------------------------------------------------------------
class _SavesRandomState:
    """Global RNG states go into every checkpoint and come back on resume: dropout, masks and crops then continue
    exactly as in an uninterrupted run (checkpoints are written at epoch ends, after validation, which draws none)."""

    def on_save_checkpoint(self, checkpoint):
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                    "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint):
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        np.random.set_state(states["numpy"])
        random.setstate(_as_tuples(states["python"]))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def param_groups(named_parameters, weight_decay: float, lr_of=lambda name: None) -> list[dict]:
    """AdamW groups: weight decay on matrices only (never biases, norm gains, layer-mix logits, mask embedding);
    ``lr_of(name)`` may give a parameter its own learning rate (None: the optimiser's)."""
    groups: dict[tuple, list] = {}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not name.endswith(".bias")
        groups.setdefault((lr_of(name), decay), []).append(p)
    out = []
    for (lr, decay), params in groups.items():
        group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if lr is not None:
            group["lr"] = lr
        out.append(group)
    return out


def warmup_cosine(optimizer, total_steps: int, warmup_fraction: float, final_fraction: float):
    """Per-update schedule (Lightning steps it after every optimiser step): each group's lr x (linear warm-up
    from 0, then cosine to ``final_fraction``). A group with ``hold_steps`` > 0 stays at lr 0 for those first
    updates and runs its warm-up and cosine over the remaining ones."""
    total_steps = max(int(total_steps), 1)

    def factor_of(group):
        hold = min(int(group.get("hold_steps", 0)), total_steps - 1)
        span = total_steps - hold
        factor = np.concatenate([np.zeros(hold), cosine_schedule(1.0, final_fraction, span,
                                                                 warmup_steps=round(warmup_fraction * span))])
        return lambda step: float(factor[min(step, total_steps - 1)])

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_of(g) for g in optimizer.param_groups])
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def make_trainer(out_dir: Path, tc: TrainerConfig, *, max_epochs: int, grad_clip: float, callbacks: list,
                 validate: bool, progress: bool) -> pl.Trainer:
    from .checkpoints import SafetensorsCheckpointIO
    return pl.Trainer(
        default_root_dir=out_dir, max_epochs=max_epochs, accelerator=tc.accelerator, devices=tc.devices,
        strategy=tc.strategy, precision=tc.precision, gradient_clip_val=grad_clip or None, callbacks=callbacks,
        logger=CSVLogger(out_dir, name="", version="logs"), enable_progress_bar=progress,
        enable_model_summary=False, deterministic=tc.deterministic, num_sanity_val_steps=0,
        use_distributed_sampler=False,  # ShuffleSampler shards by rank itself; evaluation sees every utterance
        plugins=[SafetensorsCheckpointIO()], log_every_n_steps=tc.log_every_n_steps,
        limit_val_batches=None if validate else 0)


def steps_per_epoch(num_items: int, batch_size: int, world_size: int) -> int:
    return math.ceil(math.ceil(num_items / world_size) / batch_size)


def last_checkpoint_callback(folder: Path) -> ModelCheckpoint:
    """``last.ckpt``, overwritten at the end of every epoch (after validation): what a re-run resumes from.
    (Lightning 2.6's ``save_last`` only writes when a top-k checkpoint was written in the same step.)"""
    return ModelCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1, save_last=False,
                           auto_insert_metric_name=False, enable_version_counter=False)


def _last_checkpoint(folder: Path) -> str | None:
    last = folder / "last.ckpt"
    return str(last) if last.is_file() else None


def _is_global_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only
    return getattr(rank_zero_only, "rank", 0) == 0


def _claim_run_dir(out_dir: Path, record: dict) -> None:
    """Write the run's config.json, or check that an existing one (a resumed run) has the same settings."""
    path = out_dir / "config.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old is not None:
            diffs = [k for k in sorted(set(_flat(old)) | set(_flat(record)))
                     if not any(k == v or k.endswith("." + v) for v in _VOLATILE)
                     and _flat(old).get(k) != _flat(record).get(k)]
            if diffs:
                shown = ", ".join(f"{k}: {_flat(old).get(k)!r} -> {_flat(record).get(k)!r}" for k in diffs[:4])
                raise EmoadaptError(out_dir, f"this run folder holds a run with other settings ({shown}"
                                             f"{' ...' if len(diffs) > 4 else ''}); use another --out, or the same "
                                             f"settings to resume it")
            return
    if _is_global_zero():
        write_json(record, path)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


class _LightningNoise(logging.Filter):
    """Drops Lightning's adverts and, without progress output, its chatter ("GPU available ...", "fit stopped")."""

    def __init__(self, keep_info: bool):
        super().__init__()
        self.keep_info = keep_info

    def filter(self, record):
        text = record.getMessage()
        if "Tip:" in text or "TPU available" in text or "HPU available" in text:
            return False
        return self.keep_info or record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet_lightning(progress: bool = True):
    """Hide Lightning's advice that does not apply here: num_workers=0 is the right choice for cached features on
    CPU, resumed run folders are not empty on purpose, the stage-1 teacher is in eval mode on purpose."""
    noise = _LightningNoise(keep_info=progress)
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero",
                                              "lightning.fabric.utilities.rank_zero", "lightning.pytorch",
                                              "lightning.fabric")]
    for lg in loggers:
        lg.addFilter(noise)
    try:
        with warnings.catch_warnings():
            for message in (".*does not have many workers.*", ".*is smaller than the logging interval.*",
                            ".*exists and is not empty.*", ".*LeafSpec.*", ".*module\\(s\\) in eval mode.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(noise)


def _fit(trainer: pl.Trainer, module: pl.LightningModule, **kwargs) -> float:
    """trainer.fit, timed. Lightning turns Ctrl+C into sys.exit(1) (and ignores SIGINT from then on); give the
    caller a KeyboardInterrupt back so the CLI can say how to resume."""
    t0 = time.perf_counter()
    try:
        trainer.fit(module, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------------------
# Stage 1: task-agnostic adapter training on unlabeled speech
# ------------------------------------------------------------------------------------------------------------
class PretrainModule(_SavesRandomState, pl.LightningModule):
    """PretrainObjective in a Lightning loop: AdamW (no decay on biases / norms / logits), warm-up + cosine per
    update, gradient clipping (Trainer), EMA teacher moved after every optimiser step."""

    def __init__(self, adapter_config: AdapterConfig, config: PretrainRunConfig):
        super().__init__()
        self.config = config
        self.objective = PretrainObjective(adapter_config, config)
        self.momentum = float("nan")

    def training_step(self, batch, batch_idx):
        out = self.objective({"hidden_states": batch["hidden_states"], "lengths": batch["lengths"]})
        B = batch["hidden_states"].shape[0]
        losses = {k: out[k] for k in ("loss", "loss_mask", "loss_sd", "loss_la")}
        self.log_dict(losses, prog_bar=True, on_step=True, on_epoch=True, batch_size=B, sync_dist=True)
        self.log_dict({k: v for k, v in out.items() if k not in losses}, on_step=True, on_epoch=False, batch_size=B)
        return out["loss"]

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.momentum = self.objective.after_optimizer_step(int(self.objective.step))  # teacher = EMA of student

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.log("ema_momentum", self.momentum, on_step=True, on_epoch=False)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    def configure_optimizers(self):
        c = self.config
        optimizer = torch.optim.AdamW(param_groups(self.objective.named_parameters(), c.weight_decay), lr=c.lr)
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_cosine(optimizer, c.total_steps, c.warmup_fraction, c.final_lr / c.lr)}


def pretrain(stores: Sequence[FeatureStore | str | os.PathLike], out_dir: str | os.PathLike, *,
             ids: Sequence[Sequence[str] | None] | None = None, config: RunConfig | None = None,
             progress: bool = True, callbacks: Sequence = ()) -> Path:
    """Stage 1 on the utterances of ``stores`` (``ids[i]``: only these of store i; None: all of it).

    Writes ``out_dir/adapter`` (the teacher adapter: model.safetensors + model.json) and returns that folder.
    Resumes from ``out_dir/checkpoints/last.ckpt``; returns at once if the adapter is already there.
    """
    out_dir = Path(out_dir)
    adapter_dir = out_dir / "adapter"
    config = config or RunConfig()
    stores = [open_store(s) for s in stores]
    if not stores:
        raise EmoadaptError(None, "stage 1 needs at least one feature store")
    encoder = check_same_features(stores)
    ids = list(ids) if ids is not None else [None] * len(stores)
    if len(ids) != len(stores):
        raise ValueError("ids needs one entry (a list of ids or None) per store")
    items = []
    for s, (store, chosen) in enumerate(zip(stores, ids)):
        chosen = store.ids() if chosen is None else list(chosen)
        absent = [i for i in chosen if i not in store]
        if absent:
            raise MissingFeatures(store.root, f"{len(absent)} requested utterances are not in the store "
                                              f"(e.g. {absent[0]!r}); run emoadapt extract for them first")
        items += [(s, i, -1) for i in chosen]
    if not items:
        raise EmoadaptError(None, "stage 1 got no utterances")
    config = _with_store_dims(config, encoder)
    _claim_run_dir(out_dir, {"stage": "pretrain", "config": config.to_dict(), "encoder": encoder,
                             "data": {"stores": [str(s.root) for s in stores], "utterances": len(items)}})
    if (adapter_dir / CONFIG).is_file():
        return adapter_dir  # finished before

    with _quiet_lightning(progress):
        pl.seed_everything(config.seed, workers=True, verbose=False)
        c = config.pretrain
        trainer = make_trainer(out_dir, config.trainer, max_epochs=c.epochs, grad_clip=c.grad_clip,
                               callbacks=[last_checkpoint_callback(out_dir / "checkpoints"), *callbacks],
                               validate=False, progress=progress)
        total = c.epochs * steps_per_epoch(len(items), c.batch_size, trainer.world_size)
        try:
            module = PretrainModule(config.adapter, replace(c, total_steps=total))
        except (ValueError, AssertionError) as error:
            raise EmoadaptError(None, f"invalid stage-1 settings: {error}") from None
        if config.standardize:
            fit_standardizers(module.objective, [(stores[s], i) for s, i, _ in items])
        frame_rate = float(encoder["frame_rate"] or 50.0)
        dataset = FeatureDataset(stores, items, max_frames=round(c.max_crop_seconds * frame_rate))
        loader = train_loader(dataset, c.batch_size, seed=config.seed, num_workers=config.trainer.num_workers)
        seconds = _fit(trainer, module, train_dataloaders=loader, ckpt_path=_last_checkpoint(out_dir / "checkpoints"))
    if trainer.is_global_zero:
        save_adapter(module.objective.teacher, adapter_dir, encoder=encoder, config=config.to_dict(),
                     extra={"stage": 1, "updates": int(module.objective.step), "total_steps": total,
                            "utterances": len(items), "seconds": seconds,
                            "last_epoch_losses": {k[: -len("_epoch")]: float(v)
                                                  for k, v in trainer.callback_metrics.items()
                                                  if k.startswith("loss") and k.endswith("_epoch")}})
    trainer.strategy.barrier()
    return adapter_dir


def _with_store_dims(config: RunConfig, encoder: dict) -> RunConfig:
    layers = len(encoder["layers"])
    return replace(config, adapter=replace(config.adapter, input_layers=layers, input_dim=int(encoder["dim"])))


# ------------------------------------------------------------------------------------------------------------
# Stage 2: fine-tuning a classifier on labelled utterances
# ------------------------------------------------------------------------------------------------------------
class FinetuneModule(_SavesRandomState, pl.LightningModule):
    """A classifier from build_model trained with cross-entropy; validation UA every epoch (``val_ua``)."""

    def __init__(self, model: torch.nn.Module, labels: Sequence[str], config: FinetuneConfig, total_steps: int):
        super().__init__()
        self.model, self.labels, self.config, self.total_steps = model, list(labels), config, total_steps
        self._val: list = []

    def forward(self, hidden_states, padding_mask):
        return self.model(hidden_states, padding_mask)

    def training_step(self, batch, batch_idx):
        logits = self(batch["hidden_states"], batch["padding_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        B = logits.shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=B, sync_dist=True)
        self.log("train_acc", (logits.argmax(-1) == batch["labels"]).float().mean(), on_step=False, on_epoch=True,
                 batch_size=B, sync_dist=True)
        return loss

    def on_validation_epoch_start(self):
        self._val = []

    def validation_step(self, batch, batch_idx):
        logits = self(batch["hidden_states"], batch["padding_mask"])
        loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
        self._val.append((logits.argmax(-1).cpu(), batch["labels"].cpu(), loss.detach().cpu()))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        pred, true, loss = (torch.cat([v[0] for v in self._val]), torch.cat([v[1] for v in self._val]),
                            torch.stack([v[2] for v in self._val]).sum())
        s = score(true.tolist(), pred.tolist(), self.labels)
        # every rank validates on all of it with the same weights: identical numbers, sync is a formality
        self.log("val_ua", s.ua, prog_bar=True, sync_dist=True)
        self.log("val_wa", s.wa, sync_dist=True)
        self.log("val_loss", float(loss) / len(true), sync_dist=True)

    def configure_optimizers(self):
        c = self.config
        adapter_lr = lambda name: c.lr if name.startswith("adapter.") else None  # noqa: E731
        groups = param_groups(self.model.named_parameters(), c.weight_decay, adapter_lr)
        if c.freeze_adapter_epochs:
            # lr 0 rather than requires_grad=False: the same parameters take part in every step, which DDP needs
            hold = round(self.total_steps * c.freeze_adapter_epochs / max(c.epochs, 1))  # warmup_cosine caps it
            for group in groups:
                if "lr" in group:  # only the adapter's groups carry their own lr (adapter_lr)
                    group["hold_steps"] = hold
        optimizer = torch.optim.AdamW(groups, lr=c.head_lr)
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_cosine(optimizer, self.total_steps, c.warmup_fraction, c.final_lr_fraction)}


def build_classifier(recipe: str, config: RunConfig, encoder: dict, num_classes: int):
    """(model, build description) for a stage-2 recipe; the description is what load_model rebuilds it from."""
    if recipe == "adapter":
        options = {k: v for k, v in asdict(config.adapter).items() if k not in ("input_layers", "input_dim")}
        options.update(config.head)
    else:
        options = dict(config.head)
    layers, dim = len(encoder["layers"]), int(encoder["dim"])
    try:
        model = build_model(recipe, layers, dim, num_classes, **options)
    except (ValueError, AssertionError, TypeError) as error:
        raise EmoadaptError(None, f"invalid {recipe} model settings: {error}") from None
    return model, {"recipe": recipe, "input_layers": layers, "input_dim": dim, "num_classes": num_classes,
                   "options": plain_json(options)}


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


def check_shared_stage1(stage1: str | os.PathLike, store: FeatureStore) -> dict:
    """A finished stage-1 run usable for every fold of the corpus in ``store``: it must not have been trained on
    that store (whose frames include every fold's test speakers). Returns its description for the results."""
    run = Path(stage1)
    folder, info = read_stage1_adapter(run)
    record = run / "config.json"
    stores = json.loads(record.read_text()).get("data", {}).get("stores", []) if record.is_file() else None
    if stores is None:
        raise EmoadaptError(run, "cannot tell which audio this stage-1 adapter saw (no run config.json beside it); "
                                 "pass the folder emoadapt pretrain wrote")
    if any(Path(s).resolve() == store.root.resolve() for s in stores):
        raise EmoadaptError(run, f"this stage-1 adapter was trained on {store.root}, which holds every fold's test "
                                 "speakers; a shared stage 1 must use other audio (or drop --stage1 to pre-train "
                                 "on each fold's training split)")
    return {"path": str(folder), "stores": stores, "sha256": info.get("sha256"),
            "updates": info.get("updates"), "utterances": info.get("utterances")}


def fit_standardizers(model: torch.nn.Module, utterances: Sequence[tuple[FeatureStore, str]]) -> None:
    """Fit every FeatureStandardizer in ``model`` (stage 1: student and teacher) on the frames of ``utterances``."""
    modules = [m for m in model.modules() if isinstance(m, FeatureStandardizer)]
    if modules:
        mean, std = frame_statistics(utterances)
        for m in modules:
            m.fit(mean, std)


def init_from_stage1(model, init: str | os.PathLike, encoder: dict) -> dict:
    """Copy a stage-1 teacher adapter into ``model.adapter``. ``init``: a pretrain run folder or its adapter/."""
    folder, info = read_stage1_adapter(init)
    theirs = info.get("encoder", {})
    diffs = [k for k in ("fingerprint", "layers") if theirs.get(k) != encoder.get(k)]
    if diffs:
        raise StoreMismatch(folder, f"the stage-1 adapter was trained on other features ({', '.join(diffs)}: "
                                    f"{[theirs.get(k) for k in diffs]} vs {[encoder.get(k) for k in diffs]})")
    teacher = load_model(folder).model
    mine = model.adapter.config
    structural = [f.name for f in fields(AdapterConfig) if f.name not in ("dropout", "attention_dropout")]
    diffs = [k for k in structural if getattr(teacher.config, k) != getattr(mine, k)]
    if diffs:
        raise EmoadaptError(folder, "the stage-1 adapter and the stage-2 config disagree on "
                                    + ", ".join(f"{k} ({getattr(teacher.config, k)} vs {getattr(mine, k)})"
                                                for k in diffs) + "; use the same adapter settings in both")
    model.adapter.load_state_dict(teacher.state_dict())
    return {"path": str(folder), "sha256": info.get("sha256")}


def finetune(corpus: Corpus | str | os.PathLike, store: FeatureStore | str | os.PathLike, fold: int,
             out_dir: str | os.PathLike, *, recipe: str = "adapter", config: RunConfig | None = None,
             init: str | os.PathLike | None = None, progress: bool = True, callbacks: Sequence = ()) -> dict:
    """Stage 2 on one fold: train on its training speakers, pick the epoch with the best validation UA, test.

    Writes into ``out_dir``: ``model/`` (best-val weights + JSON), ``checkpoints/`` (last.ckpt, best.ckpt: resume),
    ``logs/metrics.csv``, ``predictions.csv`` and ``results.json`` (written last: the fold is done). Returns the
    results dict. ``init``: a stage-1 run folder whose teacher initialises the adapter.
    """
    out_dir = Path(out_dir)
    done = out_dir / "results.json"
    if recipe not in RECIPES:
        raise EmoadaptError(None, f"unknown stage-2 recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if init is not None and recipe != "adapter":
        raise EmoadaptError(None, f"--init (a stage-1 adapter) only applies to the adapter recipe, not {recipe!r}")
    config = config or RunConfig()
    if config.stage2.freeze_adapter_epochs and recipe != "adapter":
        raise EmoadaptError(None, f"stage2.freeze_adapter_epochs applies to the adapter recipes; {recipe!r} has no "
                                  "adapter")
    corpus, store = open_corpus(corpus), open_store(store)
    if not corpus.labels:
        raise CorpusError(corpus.root, "stage 2 needs labelled utterances; this corpus has no labels")
    encoder = encoder_info(store)
    config = _with_store_dims(config, encoder)
    split = split_fold(corpus, store, fold, config)
    _claim_run_dir(out_dir, {"stage": "finetune", "recipe": recipe, "fold": fold, "config": config.to_dict(),
                             "encoder": encoder, "init": str(init) if init else None,
                             "corpus": {"name": corpus.name, "view": corpus.view, "root": str(corpus.root)}})
    if done.is_file():
        return json.loads(done.read_text())  # finished before
    c = config.stage2
    frame_rate = float(encoder["frame_rate"] or 50.0)
    train_set = labelled_dataset(corpus, store, split["train"], corpus.labels, round(c.max_crop_seconds * frame_rate))
    val_set = labelled_dataset(corpus, store, split["val"], corpus.labels)
    workers = config.trainer.num_workers

    with _quiet_lightning(progress):
        pl.seed_everything(config.seed, workers=True, verbose=False)
        validate = len(val_set) > 0
        last = last_checkpoint_callback(out_dir / "checkpoints")
        extra = []
        if validate:  # best.ckpt: the epoch with the highest validation UA (the first of equals)
            best = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val_ua", mode="max",
                                   save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
            extra.append(best)
            if c.patience:
                extra.append(EarlyStopping(monitor="val_ua", mode="max", patience=c.patience))
        trainer = make_trainer(out_dir, config.trainer, max_epochs=c.epochs, grad_clip=c.grad_clip,
                               callbacks=[last, *extra, *callbacks], validate=validate, progress=progress)
        total = c.epochs * steps_per_epoch(len(train_set), c.batch_size, trainer.world_size)
        model, build = build_classifier(recipe, config, encoder, len(corpus.labels))
        init_info = init_from_stage1(model, init, encoder) if init is not None else None
        if config.standardize and init is None:
            fit_standardizers(model, [(store, i) for i in split["train"]])
        module = FinetuneModule(model, corpus.labels, c, total)
        seconds = _fit(trainer, module,
                       train_dataloaders=train_loader(train_set, c.batch_size, seed=config.seed, num_workers=workers),
                       val_dataloaders=eval_loader(val_set, c.batch_size, num_workers=workers) if validate else None,
                       ckpt_path=_last_checkpoint(out_dir / "checkpoints"))
    trainer.strategy.barrier()

    # the epoch with the best validation UA (the last epoch when there is no validation split)
    chosen = extra[0].best_model_path if validate and extra[0].best_model_path else last.best_model_path
    chosen_checkpoint = load_checkpoint_file(chosen)
    module.load_state_dict(chosen_checkpoint["state_dict"])
    best_epoch = int(chosen_checkpoint["epoch"])
    best_val = float(extra[0].best_model_score) if validate and extra[0].best_model_score is not None else None
    model = module.model.cpu().eval()

    test_set = labelled_dataset(corpus, store, split["test"], corpus.labels)
    predictions = predict(model, test_set, c.batch_size)
    scores = score([it[2] for it in test_set.items], predictions.argmax(1).tolist(), corpus.labels)
    results = {
        "fold": fold, "recipe": recipe, "scores": asdict(scores), "best_val_ua": best_val, "best_epoch": best_epoch,
        "epochs_run": int(trainer.current_epoch), "seconds": seconds, "world_size": trainer.world_size,
        "split": {k: len(v) for k, v in split.items()}, "skipped_utterances": split["skipped"],
        "speakers": {k: sorted({corpus.folds.group(i) for i in split[k]}) for k in ("train", "val", "test")},
        "init": init_info, "encoder": encoder, "seed": config.seed,
    }
    if trainer.is_global_zero:
        save_model(model, out_dir / "model", kind="classifier", build=build, labels=corpus.labels, encoder=encoder,
                   config=config.to_dict(), extra={"stage": 2, "fold": fold, "best_val_ua": best_val,
                                                   "best_epoch": best_epoch, "init": init_info,
                                                   "corpus": {"name": corpus.name, "view": corpus.view}})
        _write_predictions(out_dir / "predictions.csv", test_set, predictions, corpus.labels)
        write_json(results, done)
    trainer.strategy.barrier()
    return results


# ------------------------------------------------------------------------------------------------------------
# Prediction and evaluation
# ------------------------------------------------------------------------------------------------------------
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


def _write_predictions(path: Path, dataset: FeatureDataset, probs: np.ndarray, labels: Sequence[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "predicted", *[f"p_{name}" for name in labels]])
            for (_, utt_id, y), p in zip(dataset.items, probs):
                w.writerow([utt_id, labels[y], labels[int(p.argmax())], *[f"{v:.5f}" for v in p]])
    atomic_write(path, write)


def evaluate(model_dir: str | os.PathLike, corpus: Corpus | str | os.PathLike,
             store: FeatureStore | str | os.PathLike, fold: int | None = None, *, batch_size: int = 32,
             out: str | os.PathLike | None = None) -> dict:
    """Score a stage-2 model on a corpus (its ``fold`` test speakers, or every labelled utterance) and write the
    JSON (default: ``<model>/evaluate-<corpus>[-fold<k>].json``). ``model_dir``: a model folder or a finetune run."""
    folder = Path(model_dir)
    if (folder / "model" / CONFIG).is_file():
        folder = folder / "model"
    loaded = load_model(folder)
    info = loaded.info
    if info["kind"] != "classifier":
        raise CheckpointError(folder, "this is a stage-1 adapter, not a classifier: fine-tune it first")
    corpus, store = open_corpus(corpus), open_store(store)
    encoder = encoder_info(store)
    trained = info.get("encoder", {})
    diffs = [k for k in ("fingerprint", "layers") if trained.get(k) != encoder.get(k)]
    if diffs:
        raise StoreMismatch(store.root, f"the model was trained on other features ({'; '.join(f'{k}: model {trained.get(k)!r}, store {encoder.get(k)!r}' for k in diffs)})")
    labels = info["labels"]
    if fold is None:
        ids = [u.id for u in corpus.rows]
    else:
        if corpus.folds is None:
            raise CorpusError(corpus.root, f"corpus {corpus.name} has no folds")
        ids = corpus.folds.split(fold, val_fraction=0).test
    ids, skipped = usable_ids(corpus, store, ids)
    dataset = labelled_dataset(corpus, store, ids, labels)
    if len(dataset) == 0:
        raise CorpusError(corpus.root, "no utterances to evaluate")
    probs = predict(loaded.model, dataset, batch_size)
    scores = score([it[2] for it in dataset.items], probs.argmax(1).tolist(), labels)
    results = {"model": str(folder), "corpus": {"name": corpus.name, "view": corpus.view, "root": str(corpus.root)},
               "fold": fold, "scores": asdict(scores), "skipped_utterances": skipped, "encoder": encoder,
               "git": git_commit()}
    name = f"evaluate-{corpus.name}" + (f"-fold{fold}" if fold is not None else "") + ".json"
    path = Path(out) if out else folder / name
    write_json(results, path)
    _write_predictions(path.with_suffix(".predictions.csv"), dataset, probs, labels)
    results["path"] = str(path)
    return results


# ------------------------------------------------------------------------------------------------------------
# Cross-validation
# ------------------------------------------------------------------------------------------------------------
def run_cv(corpus: Corpus | str | os.PathLike, store: FeatureStore | str | os.PathLike, recipe: str,
           out_dir: str | os.PathLike, folds: Sequence[int] | None = None, seed: int | None = None, *,
           config: RunConfig | None = None, overrides: Sequence[str] = (), extra_unlabeled_stores: Sequence = (),
           stage1: str | os.PathLike | None = None, progress: bool = True, log=print) -> dict:
    """Cross-validation over the corpus's folds (or ``folds``). Per fold: split (validation = whole speakers from
    the training speakers), stage 1 on the fold's training split (+ ``extra_unlabeled_stores``) for recipe
    ``full``, stage 2, test with the best-validation checkpoint; ``fold_<k>/results.json`` is written as each fold
    ends and a re-run skips finished folds. Then ``results.json`` (protocol, classes, config, seed, encoder, git
    commit, per-fold scores, mean ± std) and ``confusion.png`` (pooled over folds). Returns the results dict.
    ``overrides`` ("stage2.lr=3e-4" ...) apply on top of ``config``; ``seed``, when given, on top of both.
    ``stage1`` (recipe ``full`` only): a finished stage-1 run trained on other audio than this corpus (e.g. the
    unlabeled pool), used for every fold instead of pre-training per fold: one stage 1 for all folds and seeds.
    """
    if recipe not in CV_RECIPES:
        raise EmoadaptError(None, f"unknown recipe {recipe!r}; choose one of {', '.join(CV_RECIPES)}")
    out_dir = Path(out_dir)
    config = load_config(None, overrides, base=config)
    if seed is not None:
        config = replace(config, seed=int(seed))
    if not _is_global_zero():
        log = lambda *_: None  # noqa: E731 - under DDP every rank runs this loop; one of them talks
    corpus, store = open_corpus(corpus), open_store(store)
    extras = [open_store(s) for s in extra_unlabeled_stores]
    shared_stage1 = None
    if stage1 is not None:
        if recipe != "full":
            raise EmoadaptError(None, f"a shared stage-1 adapter only applies to recipe 'full', not {recipe!r}")
        if extras:
            raise EmoadaptError(None, "give either a shared stage-1 adapter or extra unlabeled stores for per-fold "
                                      "stage 1, not both")
        shared_stage1 = check_shared_stage1(stage1, store)
    encoder = check_same_features([store, *extras])
    config = _with_store_dims(config, encoder)
    if corpus.folds is None:
        raise CorpusError(corpus.root, f"corpus {corpus.name} has no folds; give it a folds.csv (path,speaker,fold)")
    all_folds = corpus.folds.fold_ids()
    folds = list(all_folds if folds is None else folds)
    unknown = [k for k in folds if k not in all_folds]
    if unknown:
        raise CorpusError(corpus.root, f"no fold {unknown[0]}; the folds are {all_folds}")
    protocol = {"corpus": corpus.name, "view": corpus.view, "root": str(corpus.root), "folds": folds,
                "all_folds": all_folds, "val_fraction": config.val_fraction,
                "validation": "whole speakers drawn from each fold's training speakers, never from the test fold"}
    _claim_run_dir(out_dir, {"stage": "cv", "recipe": recipe, "config": config.to_dict(), "encoder": encoder,
                             "protocol": {k: v for k, v in protocol.items() if k != "folds"},
                             "unlabeled_stores": [str(s.root) for s in extras],
                             "shared_stage1": shared_stage1})
    stage2_recipe = "adapter" if recipe == "full" else recipe
    report, per_fold = CrossValidationReport(), {}
    for k in folds:
        fold_dir = out_dir / f"fold_{k}"
        if (fold_dir / "results.json").is_file():
            log(f"fold {k}: already done, skipped ({fold_dir / 'results.json'})")
        else:
            init = None
            if shared_stage1 is not None:
                init = shared_stage1["path"]
            elif recipe == "full":
                split = split_fold(corpus, store, k, config)
                log(f"fold {k}: stage 1 on {len(split['train'])} training utterances"
                    + (f" + {sum(len(s) for s in extras)} unlabeled" if extras else ""))
                init = pretrain([store, *extras], fold_dir / "stage1", ids=[split["train"], *[None] * len(extras)],
                                config=config, progress=progress)
            log(f"fold {k}: stage 2 ({stage2_recipe})")
            finetune(corpus, store, k, fold_dir, recipe=stage2_recipe, config=config, init=init, progress=progress)
        per_fold[k] = json.loads((fold_dir / "results.json").read_text())
        report.folds[k] = Scores(**per_fold[k]["scores"])
        log(f"fold {k}: {report.folds[k].line()}")

    summary = report.to_json()
    results = {
        "protocol": protocol, "recipe": recipe, "classes": corpus.labels, "config": config.to_dict(),
        "seed": config.seed, "encoder": encoder, "git": git_commit(), "versions": versions(),
        "unlabeled_stores": [{"root": str(s.root), "utterances": len(s)} for s in extras],
        "shared_stage1": shared_stage1,
        "folds": {str(k): {**summary["folds"][str(k)], "best_val_ua": per_fold[k].get("best_val_ua"),
                           "best_epoch": per_fold[k].get("best_epoch"), "split": per_fold[k].get("split"),
                           "seconds": per_fold[k].get("seconds")} for k in folds},
        "mean_std": summary["mean_std"],
        "confusion_pooled": report.pooled_confusion().tolist(),
    }
    if _is_global_zero():
        plot_confusion(report.pooled_confusion(), corpus.labels, out_dir / "confusion.png",
                       title=f"{corpus.name} {recipe}: UA {summary['mean_std']['ua']['mean']:.1f}")
        write_json(results, out_dir / "results.json")
    log(report.table())
    return results

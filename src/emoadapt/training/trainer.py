"""The Lightning pieces both training stages share: the Trainer, AdamW groups and the per-update schedule, resume
from ``last.ckpt``, RNG states in checkpoints, run folders that refuse other settings, and quieter logs.

Lightning runs the loops (devices, DDP, precision, progress bars, clipping, resume); checkpoints never use pickle
(:class:`emoadapt.training.checkpoint_io.SafetensorsCheckpointIO`). Every run folder holds its resolved ``config.json``, its
checkpoints, its logs and its results, and resumes from itself: run the same command again after an interruption.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json, remove_stale_temp_files
from ..errors import EmoadaptError, TrainingError
from ..model import cosine_schedule
from .checkpoint_io import SafetensorsCheckpointIO
from .settings import TrainerConfig, with_defaults

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
except ImportError as _error:
    raise EmoadaptError(None, "training needs Lightning: pip install lightning") from _error

# run-record keys that may change between an interrupted run and its resumption without changing any number
# (matched as the end of the dotted key): workers, logging, and where the data lives
_VOLATILE = ("trainer.num_workers", "trainer.log_every_n_steps", "root", "stores")

class SavesRandomState:
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
        hold = min(int(group.get("hold_steps", 0)), total_steps)  # held for every update: the group never moves
        span = total_steps - hold
        rest = cosine_schedule(1.0, final_fraction, span, warmup_steps=round(warmup_fraction * span)) if span else []
        factor = np.concatenate([np.zeros(hold), rest])
        return lambda step: float(factor[min(step, total_steps - 1)])

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_of(g) for g in optimizer.param_groups])
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


class EpochLines(pl.Callback):
    """Progress for a log file (stderr is not a terminal): one line per epoch with its losses and validation UA,
    instead of Lightning's bar redrawn every step."""

    def on_train_epoch_start(self, trainer, module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        # on_train_epoch_end runs after validation: val_ua of this epoch is there
        shown = {k: float(v) for k, v in trainer.callback_metrics.items()
                 if k.endswith("_epoch") or k in ("val_ua", "val_loss")}
        values = ", ".join(f"{k.removesuffix('_epoch')} {v:.3g}" for k, v in sorted(shown.items()))
        if trainer.is_global_zero:
            print(f"  epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {values} "
                  f"({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)


class StopOnNonFinite(pl.Callback):
    """A NaN or infinite training loss ends the run with a clear error instead of training (and saving) a model of
    NaNs; the last checkpoint of a finite epoch stays as it was."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss.detach()).all():
            raise TrainingError(self.out_dir, f"the training loss became {float(loss.detach()):.3g} at epoch "
                                              f"{trainer.current_epoch + 1}, step {trainer.global_step}: training "
                                              f"diverged (try a lower learning rate) or the features hold damaged "
                                              f"values (check them: emoadapt extract CORPUS --store S --verify); "
                                              f"nothing of this epoch was saved")


def make_trainer(out_dir: Path, tc: TrainerConfig, *, max_epochs: int, grad_clip: float, callbacks: list,
                 validate: bool, progress: bool) -> pl.Trainer:
    lines = progress and not sys.stderr.isatty()
    callbacks = [StopOnNonFinite(out_dir), *callbacks, *([EpochLines()] if lines else [])]
    return pl.Trainer(
        default_root_dir=out_dir, max_epochs=max_epochs, accelerator=tc.accelerator, devices=tc.devices,
        strategy=tc.strategy, precision=tc.precision, gradient_clip_val=grad_clip or None, callbacks=callbacks,
        logger=CSVLogger(out_dir, name="", version="logs"), enable_progress_bar=progress and not lines,
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


def last_checkpoint(folder: Path) -> str | None:
    last = folder / "last.ckpt"
    return str(last) if last.is_file() else None


def is_global_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only
    return getattr(rank_zero_only, "rank", 0) == 0


def claim_run_dir(out_dir: Path, record: dict) -> None:
    """Write the run's config.json, or check that an existing one (a resumed run) has the same settings and clear
    the temp files a killed attempt left (:func:`remove_stale_temp_files`)."""
    path = out_dir / "config.json"
    resumed = False
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old is not None:
            if isinstance(old.get("config"), dict):
                # a setting added to emoadapt after the run started is no difference while it keeps its default
                old = {**old, "config": with_defaults(old["config"])}
            old_flat, new_flat = _flat(old), _flat(record)
            diffs = [k for k in sorted(set(old_flat) | set(new_flat))
                     if not any(k == v or k.endswith("." + v) for v in _VOLATILE)
                     and old_flat.get(k) != new_flat.get(k)]
            if diffs:
                shown = ", ".join(f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in diffs[:4])
                raise EmoadaptError(out_dir, f"this run folder holds a run with other settings ({shown}"
                                             f"{' ...' if len(diffs) > 4 else ''}); use another --out, or the same "
                                             f"settings to resume it")
            resumed = True
    if is_global_zero():
        if resumed:
            remove_stale_temp_files(out_dir)
        else:
            atomic_write_json(record, path)


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
def quiet_lightning(progress: bool = True):
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


def fit_timed(trainer: pl.Trainer, module: pl.LightningModule, **kwargs) -> float:
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



# Lightning's precision names (its _PRECISION_INPUT); checked here so a typo is refused before a run folder is made
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "16", "32", "64", "bf16")


def check_trainer(tc: TrainerConfig) -> None:
    """Refuse trainer settings Lightning would refuse (precision, accelerator, devices, strategy), before anything
    is written: a throwaway Trainer is built with them and no logger, checkpoints or output."""
    if str(tc.precision) not in PRECISIONS:
        raise EmoadaptError(None, f"trainer.precision={tc.precision!r} is not one of {', '.join(PRECISIONS)}")
    if tc.deterministic not in (True, False, "warn"):
        raise EmoadaptError(None, f"trainer.deterministic={tc.deterministic!r}: use true, false or warn")
    if tc.log_every_n_steps < 1:
        raise EmoadaptError(None, f"trainer.log_every_n_steps={tc.log_every_n_steps} must be at least 1")
    try:
        with quiet_lightning(progress=False):
            pl.Trainer(accelerator=tc.accelerator, devices=tc.devices, strategy=tc.strategy, precision=tc.precision,
                       logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False)
    except Exception as error:  # noqa: BLE001 - Lightning raises several types for bad options; all mean "refused"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EmoadaptError(None, f"trainer settings (accelerator={tc.accelerator!r}, devices={tc.devices!r}, "
                                  f"strategy={tc.strategy!r}, precision={tc.precision!r}) refused: {reason}") from None

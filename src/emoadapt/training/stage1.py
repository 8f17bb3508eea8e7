"""Stage 1: task-agnostic adapter training on unlabeled cached features (docs/METHOD.md, stage 1).

    store(s) ─► FeatureDataset (random crops) ─► PretrainObjective (masked student, EMA teacher, L_mask + L_sd + L_la)
             ─► out_dir/adapter: the teacher adapter (model.safetensors + model.json + seen.json)

Resumes from ``out_dir/checkpoints/last.ckpt``; the global RNG states are saved in every checkpoint, so a resumed
run continues with the numbers an uninterrupted one would have used.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Collection, Mapping, Sequence

import lightning.pytorch as pl
import torch

from ..calibration import Normalizer
from ..errors import EmoadaptError, MissingFeatures
from ..model import AdapterConfig, PretrainObjective
from ..modelfolder import CONFIG, Seen, save_adapter
from ..store.dataset import FeatureDataset, check_same_features, open_store
from ..store.features import FeatureStore
from .data import fit_standardizers, train_loader
from .settings import PretrainRunConfig, RunConfig, validate, with_store_dims
from .trainer import (SavesRandomState, check_trainer, claim_run_dir, fit_timed, last_checkpoint,
                      last_checkpoint_callback, make_trainer, param_groups, quiet_lightning, steps_per_epoch,
                      warmup_cosine)


class PretrainModule(SavesRandomState, pl.LightningModule):
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
             speakers: Mapping[str, str] | None = None, normalizer: Normalizer | None = None, progress: bool = True,
             callbacks: Sequence = ()) -> Path:
    """Stage 1 on the utterances of ``stores`` (``ids[i]``: only these of store i; None: all of it).

    Writes ``out_dir/adapter`` (the teacher adapter: model.safetensors + model.json + seen.json) and returns that
    folder. ``speakers`` (utterance id -> "corpus:speaker", :func:`emoadapt.leakage.speakers_of`) names the speakers
    behind the ids where known, for the leakage guard; ids are recorded either way. ``normalizer``: the speaker or
    utterance normalisation ``config.normalize`` asks for (:func:`emoadapt.calibration.make_normalizer`; without one, a
    config that asks for speaker normalisation treats every utterance as its own speaker).
    Resumes from ``out_dir/checkpoints/last.ckpt``; returns at once if the adapter is already there.
    """
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
    config = with_store_dims(config, encoder)
    validate(config, stage1=True)
    check_trainer(config.trainer)
    if normalizer is None and config.normalize != "global":
        normalizer = Normalizer("utterance")
    dataset = FeatureDataset(stores, items, max_frames=round(config.pretrain.max_crop_seconds
                                                             * float(encoder["frame_rate"] or 50.0)),
                             normalizer=normalizer)
    return train_stage1(dataset, out_dir, config=config, encoder=encoder, speakers=speakers, progress=progress,
                        callbacks=callbacks)


def stage1_adapter_dir(run_dir: str | os.PathLike) -> Path:
    """The model folder a stage-1 run folder (``pretrain --out``, a fold's ``stage1/``) holds once it is finished."""
    return Path(run_dir) / "adapter"


def train_stage1(dataset: FeatureDataset, out_dir: str | os.PathLike, *, config: RunConfig, encoder: dict,
                 speakers: Mapping[str, str] | None = None, progress: bool = True, callbacks: Sequence = (),
                 test_ids: Collection[str] = ()) -> Path:
    """Stage 1 on ``dataset`` (unlabeled crops; its stores hold ``encoder``'s features) with settings already
    checked (:func:`emoadapt.training.settings.validate` with ``stage1=True``, the trainer's): the loop behind
    :func:`pretrain` and each fold of ``cv --recipe full``. ``test_ids``: the utterances of the dataset's first store
    that ``pretrain.test_audio_share`` weighs. Returns ``out_dir/adapter``."""
    out_dir = Path(out_dir)
    adapter_dir = stage1_adapter_dir(out_dir)
    share = None  # checked before the run folder is claimed, so a refused run leaves nothing behind
    if config.pretrain.test_audio_share:
        test_ids = set(test_ids)
        share = ([k for k, (s, i, _) in enumerate(dataset.items) if s == 0 and i in test_ids],
                 config.pretrain.test_audio_share)
        if not 0 < len(share[0]) < len(dataset):
            raise EmoadaptError(None, "pretrain.test_audio_share needs test audio and other audio in stage 1 (cv "
                                      f"--recipe full with pretrain.test_audio=true); {len(share[0])} of its "
                                      f"{len(dataset)} utterances are test audio")
    claim_run_dir(out_dir, {"stage": "pretrain", "config": config.to_dict(), "encoder": encoder,
                             "data": {"stores": [str(s.root) for s in dataset.stores],
                                      "utterances": len(dataset)}})
    if (adapter_dir / CONFIG).is_file():
        return adapter_dir  # finished before

    with quiet_lightning(progress):
        pl.seed_everything(config.seed, workers=True, verbose=False)
        c = config.pretrain
        trainer = make_trainer(out_dir, config.trainer, max_epochs=c.epochs, grad_clip=c.grad_clip,
                               callbacks=[last_checkpoint_callback(out_dir / "checkpoints"), *callbacks],
                               validate=False, progress=progress)
        total = c.epochs * steps_per_epoch(len(dataset), c.batch_size, trainer.world_size)
        module = PretrainModule(config.adapter, replace(c, total_steps=total))
        if config.standardize:
            fit_standardizers(module.objective, dataset)
        loader = train_loader(dataset, c.batch_size, seed=config.seed, num_workers=config.trainer.num_workers,
                              share=share)
        seconds = fit_timed(trainer, module, train_dataloaders=loader,
                            ckpt_path=last_checkpoint(out_dir / "checkpoints"))
    if trainer.is_global_zero:
        save_adapter(module.objective.teacher, adapter_dir, encoder=encoder, config=config.to_dict(),
                     seen=Seen.of((i for _, i, _ in dataset.items), speakers),
                     extra={"stage": 1, "updates": int(module.objective.step), "total_steps": total,
                            "utterances": len(dataset), "seconds": seconds,
                            "last_epoch_losses": {k[: -len("_epoch")]: float(v)
                                                  for k, v in trainer.callback_metrics.items()
                                                  if k.startswith("loss") and k.endswith("_epoch")}})
    trainer.strategy.barrier()
    return adapter_dir

"""Stage 2: a classifier trained on labelled cached features of one fold (docs/METHOD.md section 5).

    FoldData (train / validation speakers / test) ─► build_model(recipe) [+ adapter from the stage-1 teacher]
        ─► cross-entropy, AdamW, warm-up + cosine per update ─► the epoch with the best validation UA ─► test

The run folder holds ``model/`` (the chosen epoch's weights: model.safetensors + model.json + seen.json),
``checkpoints/`` (last.ckpt, best.ckpt: resume), ``logs/metrics.csv``, ``predictions.csv`` and ``results.json``
(written last: the fold is done).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ..atomic import atomic_write_json
from ..calibration.temperature import (apply_temperature, expected_calibration_error, fit_temperature,
                                       log_probabilities, reliability, scaled, within)
from ..corpora import Corpus
from ..errors import CorpusError, EmoadaptError
from ..inference.runtime import predict
from ..modelfolder import (Seen, load_model, plain_json, read_seen, read_stage1_adapter, refuse_if_seen, save_model,
                           speakers_of)
from ..modelfolder.reference import write_population
from ..model import StatsConfig, build_model, recipe as lookup_recipe
from ..store.dataset import encoder_info, open_augmented_store, open_corpus, open_store, require_same_features
from ..store.features import FeatureStore
from .checkpoint_io import load_checkpoint_file
from .closed_form import OUT_OF_SAMPLE, choose_train_shrink, fit_closed_form, logistic_fit, start_from_statistics
from .data import FoldData, fit_standardizers, split_fold
from .evaluate import read_references, write_predictions
from .metrics import closed_predictions, score
from .reports import plot_reliability
from .settings import FinetuneConfig, RunConfig, recipe_options, structural_adapter_fields, validate, with_store_dims
from .trainer import (SavesRandomState, check_trainer, claim_run_dir, fit_timed, last_checkpoint,
                      last_checkpoint_callback, make_trainer, param_groups, quiet_lightning, steps_per_epoch,
                      warmup_cosine)


class FinetuneModule(SavesRandomState, pl.LightningModule):
    """A classifier from build_model trained with cross-entropy; validation UA every epoch (``val_ua``)."""

    def __init__(self, model: torch.nn.Module, labels: Sequence[str], config: FinetuneConfig, total_steps: int):
        super().__init__()
        self.model, self.labels, self.config, self.total_steps = model, list(labels), config, total_steps
        self._val: list = []

    def forward(self, hidden_states, padding_mask):
        return self.model(hidden_states, padding_mask)

    def training_step(self, batch, batch_idx):
        c = self.config
        hidden_states, padding_mask, labels = batch["hidden_states"], batch["padding_mask"], batch["labels"]
        weight, other = 1.0, None
        if c.mixup_alpha > 0:  # frames of two utterances mixed: real where either is real, the padding is zeros
            weight = float(torch.distributions.Beta(c.mixup_alpha, c.mixup_alpha).sample())
            other = torch.randperm(labels.shape[0], device=labels.device)
            hidden_states = weight * hidden_states + (1 - weight) * hidden_states[other]
            padding_mask = padding_mask & padding_mask[other]
        logits = self(hidden_states, padding_mask)
        loss = weight * F.cross_entropy(logits, labels, label_smoothing=c.label_smoothing)
        if other is not None:
            loss = loss + (1 - weight) * F.cross_entropy(logits, labels[other], label_smoothing=c.label_smoothing)
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
    options = recipe_options(config, recipe)
    layers, dim = len(encoder["layers"]), int(encoder["dim"])
    model = build_model(recipe, layers, dim, num_classes, **options)
    return model, {"recipe": recipe, "input_layers": layers, "input_dim": dim, "num_classes": num_classes,
                   "options": plain_json(options)}


def check_stage1_adapter(init: str | os.PathLike, encoder: dict, config: RunConfig) -> tuple[Path, dict, Seen]:
    """(folder, model.json, what it saw) of a stage-1 adapter that fits these features and adapter settings."""
    folder, info = read_stage1_adapter(init)
    require_same_features(info.get("encoder", {}), encoder, where=folder, names=("adapter", "store"),
                          what="the stage-1 adapter was trained on other features")
    trained = info["build"]["adapter_config"]
    mine = asdict(config.adapter)
    diffs = [k for k in structural_adapter_fields() if trained.get(k) != mine[k]]
    if diffs:
        raise EmoadaptError(folder, "the stage-1 adapter and the stage-2 config disagree on "
                                    + ", ".join(f"{k} ({trained.get(k)} vs {mine[k]})" for k in diffs)
                                    + "; use the same adapter settings in both")
    return folder, info, read_seen(folder, info)


def finetune(corpus: Corpus | str | os.PathLike, store: FeatureStore | str | os.PathLike, fold: int | None,
             out_dir: str | os.PathLike, *, recipe: str = "adapter", config: RunConfig | None = None,
             init: str | os.PathLike | None = None, progress: bool = True, callbacks: Sequence = (),
             augmented: FeatureStore | str | os.PathLike | None = None) -> dict:
    """Stage 2 on one fold: train on its training speakers, pick the epoch with the best validation UA, test.
    Returns the results dict. ``fold`` None: every speaker of the corpus trains or validates and nothing is tested
    (a model to apply to other corpora or to use; its ``scores`` are None). ``init``: a stage-1 run folder whose
    teacher initialises the adapter; refused when it saw any of the fold's test utterances or speakers.
    ``augmented``: an augmented store of the corpus (:mod:`emoadapt.store.augment`) whose copies of the training
    utterances are trained on too. Opens and checks the store and the settings, builds the fold's :class:`FoldData`, then :func:`train_stage2`."""
    config = config or RunConfig()
    spec = lookup_recipe(recipe)
    if spec.stage1:
        raise EmoadaptError(None, f"recipe {recipe!r} runs stage 1 first: use emoadapt cv, or emoadapt pretrain and "
                                  f"then finetune --recipe {spec.stage2_recipe} --init RUN")
    corpus, store = open_corpus(corpus), open_store(store)
    augmented = open_augmented_store(augmented, store)
    if not corpus.labels:
        raise CorpusError(corpus.root, "stage 2 needs labelled utterances; this corpus has no labels")
    encoder = encoder_info(store)
    config = with_store_dims(config, encoder)
    validate(config, recipe)
    check_trainer(config.trainer)
    data, config, choices = fold_data(corpus, store, fold, config, recipe, encoder, augmented=augmented,
                                      log=_stderr if progress else None)
    return train_stage2(data, out_dir, recipe=recipe, config=config, encoder=encoder, init=init, progress=progress,
                        callbacks=callbacks, choices=choices)


def fold_data(corpus: Corpus, store: FeatureStore, fold: int | None, config: RunConfig, recipe: str, encoder: dict,
              *, augmented: FeatureStore | None = None, log=None) -> tuple[FoldData, RunConfig, dict]:
    """(the fold's :class:`FoldData`, the settings it was built under, the choices made for it). Settings that
    decide how the data itself is read are chosen first, on the fold's training corpora, so that the data is built
    once: ``calibration.train_shrink`` from ``calibration.train_shrink_grid`` (closed-form recipes,
    :func:`~emoadapt.training.closed_form.choose_train_shrink`)."""
    split, choices = split_fold(corpus, store, fold, config), {}
    if config.calibration.train_shrink_grid and lookup_recipe(recipe).fit == "closed_form":
        model, _ = build_classifier(recipe, config, encoder, len(corpus.labels))
        choices["calibration.train_shrink"] = choice = choose_train_shrink(
            corpus, store, split, corpus.labels, config.calibration.train_shrink_grid, model.config.c_grid,
            logistic_fit(model.config), log=log)
        config = replace(config, calibration=replace(config.calibration, train_shrink=choice["train_shrink"]))
    data = FoldData(corpus, store, fold, config, corpus.labels, float(encoder["frame_rate"] or 50.0),
                    augmented=augmented, split=split)
    return data, config, choices


def train_stage2(data: FoldData, out_dir: str | os.PathLike, *, recipe: str, config: RunConfig, encoder: dict,
                 init: str | os.PathLike | None = None, progress: bool = True, callbacks: Sequence = (),
                 init_heard_test_audio: bool = False, choices: dict | None = None) -> dict:
    """Stage 2 on a fold's data (built once by the caller, :func:`fold_data`; its store holds ``encoder``'s
    features) with settings already checked and ``choices`` already made: fit (by gradient steps, or in closed
    form), save ``model/``, test, write ``results.json`` (with ``choices``). A re-run of a finished fold returns its
    results."""
    out_dir = Path(out_dir)
    done = out_dir / "results.json"
    spec = lookup_recipe(recipe)
    if init is not None and not spec.uses_adapter:
        raise EmoadaptError(None, f"--init (a stage-1 adapter) only applies to recipes with an adapter, not {recipe!r}")
    choices = dict(choices or {})
    if spec.fit == "closed_form" and config.calibration.train_shrink_grid and "calibration.train_shrink" not in choices:
        raise EmoadaptError(None, "calibration.train_shrink_grid is chosen before the fold's data is built: build it "
                                  "with emoadapt.training.stage2.fold_data")
    corpus, fold = data.corpus, data.fold
    speakers = speakers_of(corpus)
    seen, init_model = Seen.of(data.split["train"] + data.split["val"], speakers), None
    if init is not None:
        init_folder, init_model_info, init_seen = check_stage1_adapter(init, encoder, config)
        if not init_heard_test_audio:  # cv's own transductive stage 1 (pretrain.test_audio) heard them, by design
            refuse_if_seen(init_seen, data.split["test"], speakers, model=str(init_folder),
                           test=f"fold {fold} of {corpus.name}")
        seen = seen | init_seen  # its weights and its standardisation statistics came from that audio
        init_model = (init_folder, init_model_info)
    claim_run_dir(out_dir, {"stage": "finetune", "recipe": recipe, "fold": fold, "config": config.to_dict(),
                            "encoder": encoder, "init": str(init) if init else None,
                            "corpus": {"name": corpus.name, "view": corpus.view, "root": str(corpus.root)},
                            **({"augmentation": data.augmentation} if data.augmentation else {})})
    if done.is_file():
        return json.loads(done.read_text())  # finished before
    if spec.fit == "closed_form":
        model, build = build_classifier(recipe, config, encoder, len(data.labels))
        trained = fit_closed_form(model, data, config.stage2.batch_size, log=_stderr if progress else None,
                                  choose_by=config.choose_by)
        trainer = None
    else:
        model, build, trained, trainer = _train_by_gradient(data, recipe, config, encoder, out_dir, init_model,
                                                            progress, callbacks)
    init_info = trained.pop("init", None)
    temperature = fit_model_temperature(model, data, trained.pop(OUT_OF_SAMPLE, None), config, trained)
    scores = closed = predictions = None
    if len(data.test):
        if config.calibration.reads_model:
            read_references(model, data.normalizer, data.store, data.class_offsets(), config.stage2.batch_size)
        predictions = predict(model, data.test, config.stage2.batch_size)
        truth = [it[2] for it in data.test.items]
        scores = asdict(score(truth, predictions.argmax(1).tolist(), data.labels))
        closed = asdict(score(truth, closed_predictions(truth, predictions), data.labels))
        if temperature is not None:
            temperature["test"] = calibration_errors(predictions, truth, temperature["T"])
    results = {
        "fold": fold, "recipe": recipe, "scores": scores, "scores_closed": closed, "temperature": temperature,
        **trained, **({"choices": choices} if choices else {}),
        "split": {k: len(v) for k, v in data.split.items()}, "skipped_utterances": data.split["skipped"],
        "speakers": {k: data.speakers(k) for k in ("train", "val", "test")},
        "init": init_info, "encoder": encoder, "seed": config.seed, "augmentation": data.augmentation,
    }
    if trainer is None or trainer.is_global_zero:
        save_model(model, out_dir / "model", kind="classifier", build=build, labels=data.labels, encoder=encoder,
                   config=config.to_dict(), seen=seen,
                   extra={"stage": 2, "fold": fold, "best_val_ua": trained["best_val_ua"],
                          "best_epoch": trained["best_epoch"], "init": init_info,
                          "corpus": {"name": corpus.name, "view": corpus.view},
                          "temperature": {k: temperature[k] for k in ("T", "fitted_on")} if temperature else None,
                          "augmentation": data.augmentation,
                          **reference_record(data, out_dir / "model")})
        if predictions is not None:
            write_predictions(out_dir / "predictions.csv", data.test, predictions, data.labels)
        if temperature is not None and temperature.get("test"):
            test = temperature["test"]
            plot_reliability(test["reliability_closed"], out_dir / "reliability.png",
                             title=f"{corpus.name} fold {fold}: test ECE (closed) {test['closed']['before']:.1f} -> "
                                   f"{test['closed']['after']:.1f} %, T {temperature['T']:.2f}")
        atomic_write_json(results, done)
    if trainer is not None:
        trainer.strategy.barrier()
    return results


def fit_model_temperature(model, data: FoldData, out_of_sample, config: RunConfig, trained: dict) -> dict | None:
    """Temperature scaling (:mod:`emoadapt.calibration.temperature`), folded into ``model``: fitted on the
    utterances the closed-form fit held out (``out_of_sample``), else on the validation speakers as the trained
    model reads them. Returns the record (T, what it was fitted on, ECE there before and after), None when off or
    there is nothing to fit on."""
    if not config.temperature:
        return None
    fitted_on = (trained.get("closed_form") or {}).get("chosen_on", "validation speakers")
    if out_of_sample is None and "closed_form" not in trained and len(data.val):
        out_of_sample = (predict(model, data.val, config.stage2.batch_size), [it[2] for it in data.val.items])
    if out_of_sample is None or not len(out_of_sample[1]):
        return None
    probabilities, labels = out_of_sample
    t = fit_temperature(log_probabilities(probabilities), labels)
    apply_temperature(model, t)
    return {"T": t, "fitted_on": fitted_on, "n": len(labels),
            "ece_before": round(expected_calibration_error(probabilities, labels), 2),
            "ece_after": round(expected_calibration_error(scaled(probabilities, t), labels), 2)}


def calibration_errors(predictions: np.ndarray, truth: list[int], t: float) -> dict:
    """ECE (%) of test probabilities given with temperature ``t`` and as they were without it, over every class
    (open) and renormalised over the classes the test set holds (closed)."""
    before = scaled(predictions, 1 / t)  # softmax(log p * t) undoes the division of the logits by t
    classes = sorted(set(truth))
    return {"open": {"before": round(expected_calibration_error(before, truth), 2),
                     "after": round(expected_calibration_error(predictions, truth), 2)},
            "closed": {"before": round(expected_calibration_error(within(before, classes), truth), 2),
                       "after": round(expected_calibration_error(within(predictions, classes), truth), 2)},
            "reliability_closed": {"before": reliability(within(before, classes), truth),
                                   "after": reliability(within(predictions, classes), truth)}}


def reference_record(data: FoldData, folder: Path) -> dict:
    """A speaker-normalised model keeps its training population's statistics (``reference.safetensors``): used when
    no reference audio is given, and what a small reference is shrunk toward; and its classes' offsets, which a
    reference's emotion is taken out with (``calibration.remove_emotion``)."""
    population = getattr(data.normalizer, "population", None)
    if population is None:
        return {}
    return {"reference": write_population(folder, population, data.class_offsets())}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class StaysStopped(EarlyStopping):
    """EarlyStopping that stays stopped when a run it had stopped is resumed (killed before its results were
    written): Lightning restores the callback's state but not ``trainer.should_stop``, so the resumed run would
    train one more epoch, which changes ``epochs_run`` and can change the chosen epoch."""

    def on_train_start(self, trainer, pl_module):
        if self.stopped_epoch or self.wait_count >= self.patience:  # set only when it stopped the run
            trainer.should_stop = True


def _train_by_gradient(data: FoldData, recipe: str, config: RunConfig, encoder: dict, out_dir: Path,
                       init_model: tuple[Path, dict] | None, progress: bool, callbacks: Sequence):
    """Cross-entropy with AdamW in Lightning; the epoch with the best validation UA (the last one without a
    validation split). ``init_model``: (folder, model.json) of a checked stage-1 adapter. Returns (model in eval
    mode, build description, what to record, trainer)."""
    c = config.stage2
    with quiet_lightning(progress):
        pl.seed_everything(config.seed, workers=True, verbose=False)
        validating = len(data.val) > 0
        last = last_checkpoint_callback(out_dir / "checkpoints")
        extra = []
        if validating:  # best.ckpt: the epoch with the highest validation UA (the first of equals)
            best = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val_ua", mode="max",
                                   save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
            extra.append(best)
            if c.patience:
                extra.append(StaysStopped(monitor="val_ua", mode="max", patience=c.patience))
        # best before last: both save at the end of an epoch, in this order, and last.ckpt (what a re-run resumes
        # from) must hold the best-checkpoint state that already counts this epoch's validation UA; saved the
        # other way round, a run resumed from the epoch that set the best forgot it and picked a later epoch
        trainer = make_trainer(out_dir, config.trainer, max_epochs=c.epochs, grad_clip=c.grad_clip,
                               callbacks=[*extra, last, *callbacks], validate=validating, progress=progress)
        total = c.epochs * steps_per_epoch(len(data.train), c.batch_size, trainer.world_size)
        model, build = build_classifier(recipe, config, encoder, len(data.labels))
        init_info = None
        if init_model is not None:
            model.adapter.load_state_dict(load_model(init_model[0]).model.state_dict())
            init_info = {"path": str(init_model[0]), "sha256": init_model[1].get("sha256")}
        if config.standardize and init_model is None:
            fit_standardizers(model, data.train)
        if getattr(model.config, "start_from_statistics", False):  # after the standardisers it reads through
            init_info = {**(init_info or {}), "statistics": start_from_statistics(
                model, data, c.batch_size, StatsConfig.c_grid, log=_stderr if progress else None)}
        module = FinetuneModule(model, data.labels, c, total)
        seconds = fit_timed(trainer, module, datamodule=data if validating else None,
                            train_dataloaders=None if validating else data.train_dataloader(),
                            ckpt_path=last_checkpoint(out_dir / "checkpoints"))
    trainer.strategy.barrier()

    chosen = extra[0].best_model_path if validating and extra[0].best_model_path else last.best_model_path
    chosen_checkpoint = load_checkpoint_file(chosen)
    module.load_state_dict(chosen_checkpoint["state_dict"])
    best_val = float(extra[0].best_model_score) if validating and extra[0].best_model_score is not None else None
    trained = {"best_val_ua": best_val, "best_epoch": int(chosen_checkpoint["epoch"]),
               "epochs_run": int(trainer.current_epoch), "seconds": seconds, "world_size": trainer.world_size,
               "init": init_info}
    return module.model.cpu().eval(), build, trained, trainer

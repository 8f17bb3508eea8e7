"""Typed run settings: dataclasses checked by OmegaConf, config files that inherit, ``--set key=value`` dotlists.

    defaults (the dataclasses below) < --config FILE (and the files it ``extends``) < flags < --set section.key=value

OmegaConf (the structured-config library NeMo and Hydra build on) does the typing: values are converted to the
annotated types ("3e-4" -> float), unknown keys and wrong types are refused naming the key. A config file is
JSON or YAML holding some of the sections (seed, val_fraction, standardize, adapter, head, pretrain, stage2,
trainer); ``extends: NAME`` names the file it builds on (a packaged config name or a path relative to the file),
so ``demo-cpu`` is ``cpu`` with fewer epochs and ``cpu`` is the defaults with a narrower adapter.

``head`` holds the options of the recipe's head; which keys and types are valid depends on the recipe, so
:func:`validate` checks them against the recipe's config dataclass (:mod:`emoadapt.model.recipes`).
Every command validates all settings (:func:`validate`, then the trainer's in ``trainer.check_trainer``) before
it writes anything into a run folder.
"""
from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from ..calibration import (CALIBRATED_SPEAKERS, IF_MISSING, NORMALIZATIONS, SCOPES, SPREADS, CalibrationConfig,
                           with_legacy_calibration)
from ..errors import EmoadaptError
from ..model import AdapterConfig, PretrainConfig, head_settings
from ..model import recipe as lookup_recipe
from ..modelfolder import plain_json




@dataclass
class PretrainRunConfig(PretrainConfig):
    """Stage 1: the objective's settings (PretrainConfig) plus the loop around it.
    ``total_steps`` is always recomputed as epochs x batches per epoch."""
    epochs: int = 100          # stage 1 wants thousands of updates (docs/METHOD.md); RAVDESS folds give ~35 batches/epoch
    grad_clip: float = 3.0     # gradient-norm clipping (DINO's value); 0 switches it off
    total_steps: int = 0       # set by the loop: epochs x batches per epoch (the schedules span the whole run)
    test_audio: bool = False   # cv --recipe full: each fold's stage 1 also on its test utterances' audio, never their
    #                            labels (transductive: the target's unlabeled audio; a protocol of its own)
    test_audio_share: float = 0.0  # with test_audio: the fraction of stage 1's draws that are test audio (each epoch
    #                                keeps its length; the smaller side repeats with other crops); 0: every utterance
    #                                once per epoch, so the target weighs what its clip count does


@dataclass
class FinetuneConfig:
    """Stage 2 (docs/METHOD.md): adapter + SAP + classifier trained with cross-entropy; checkpoint picked on val UA."""
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
    label_smoothing: float = 0.0     # cross-entropy against (1 - s) one-hot + s uniform
    mixup_alpha: float = 0.0         # > 0: each batch mixed with a shuffled copy of itself, frames and targets, with
    #                                  weight lambda ~ Beta(alpha, alpha) (Zhang et al. 2018); 0: off
    bucket_by_length: bool = False   # batches of similar cropped length (less padding; data.LengthBuckets)
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


CHOICES = ("speakers", "corpus")  # choose_by


@dataclass
class RunConfig:
    """Everything one run uses; stored as ``config.json`` in the run folder."""
    seed: int = 0
    val_fraction: float = 0.1        # validation = this share of the training speakers, whole speakers
    choose_by: str = "speakers"      # what closed-form recipes choose C on: "speakers" (the validation speakers) or
    #                                  "corpus" (each training corpus of a merged corpus held out in turn, scored over
    #                                  its own classes: the choice for audio unlike the training data)
    temperature: bool = True         # temperature scaling of the probabilities, fitted on the validation speakers (or
    #                                  each training corpus held out in turn); no argmax changes
    standardize: bool = True         # per-layer, per-dimension mean/std of the training frames, fixed in the model
    #                                  (a stage-2 adapter from stage 1 keeps the statistics it was trained with)
    normalize: str = "global"        # global: only that; speaker: first each speaker's frames with the speaker's own
    #                                  statistics (a test speaker's from its unlabeled audio: a different protocol);
    #                                  utterance: each utterance with its own statistics
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # input_layers / input_dim come from the store
    head: dict[str, Any] = field(default_factory=dict)  # the recipe head's options (see validate): adapter
    #                                       (attention_dim, head_dropout), superb (projector_dim), emobox (input_layer,
    #                                       hidden_dim)
    pretrain: PretrainRunConfig = field(default_factory=PretrainRunConfig)
    stage2: FinetuneConfig = field(default_factory=FinetuneConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return plain_json(asdict(self))


def with_defaults(recorded: dict) -> dict:
    """A config dict recorded by a run, with every setting added to emoadapt since then at its default (so that an
    older run and a newer one with the same settings compare equal; calibration settings as :func:`config_from_record`
    fills them)."""
    merged = OmegaConf.merge(OmegaConf.create(RunConfig().to_dict()), OmegaConf.create(_filled_calibration(recorded)))
    return OmegaConf.to_container(merged)


def config_from_record(values: dict, *, where: str) -> RunConfig:
    """The typed settings of a config dict a run or a model folder recorded (checked like a config file). A record
    made before a calibration setting existed did what it did then (:func:`with_legacy_calibration`)."""
    return OmegaConf.to_object(_merge(OmegaConf.structured(RunConfig()), _filled_calibration(values), where))


def _filled_calibration(values):
    """A recorded config dict whose ``calibration`` (when it is a dict) has the settings added since it was recorded
    as the run did then (:func:`with_legacy_calibration`); anything else as it is, for the checks to refuse."""
    calibration = values.get("calibration") if isinstance(values, dict) else None
    return {**values, "calibration": with_legacy_calibration(calibration)} if isinstance(calibration, dict) else values


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: RunConfig | None = None) -> RunConfig:
    """``base`` (default: the defaults), then a JSON/YAML file (after the files it extends), then
    ``section.key=value`` overrides in order. Types and keys are checked; :func:`validate` checks the rest."""
    config = OmegaConf.structured(base or RunConfig())
    if path is not None:
        for where, values in _config_chain(Path(path)):
            config = _merge(config, values, where)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise EmoadaptError(None, f"--set {item!r}: expected section.key=value, e.g. stage2.lr=3e-4")
        try:
            values = OmegaConf.from_dotlist([f"{key.strip()}={text.strip()}"])
        except OmegaConfBaseException as error:
            raise EmoadaptError(None, f"--set {item!r}: cannot read the value ({_reason(error)})") from None
        config = _merge(config, values, f"--set {item}")
    return OmegaConf.to_object(config)


def _merge(config, values, where: str):
    try:
        return OmegaConf.merge(config, values)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        if isinstance(error, ConfigKeyError):
            section = OmegaConf.select(config, key.rpartition(".")[0]) if "." in key else config
            known = sorted(section.keys()) if section is not None and hasattr(section, "keys") else []
            hint = f"; known settings there: {', '.join(map(str, known))}" if known else ""
            raise EmoadaptError(None, f"{where}: unknown setting {key!r}{hint}") from None
        hint = " (a list is written [20,40])" if "Tuple" in str(error) or "ListConfig" in str(error) else ""
        raise EmoadaptError(None, f"{where}: {key}: {_reason(error)}{hint}") from None


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0].strip()


def packaged_config(name: str) -> Path | None:
    """A config shipped with emoadapt (``src/emoadapt/training/configs/<name>.json``), e.g. ``demo-cpu`` or
    ``iemocap-hubert-large``, so ``--config NAME`` works from any folder."""
    candidate = importlib.resources.files("emoadapt.training").joinpath(f"configs/{name}.json")
    return Path(str(candidate)) if candidate.is_file() else None


def _config_chain(path: Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    """(where, settings) of ``path`` and the files it extends, the most basic first."""
    path = _find_config(path)
    if path.resolve() in seen:
        raise EmoadaptError(path, "config files extend each other in a loop: "
                                  + " -> ".join(str(p) for p in (*seen, path.resolve())))
    data = _read_config_file(path)
    parent = data.pop("extends", None)
    if parent is None:
        return [(str(path), data)]
    if not isinstance(parent, str):
        raise EmoadaptError(path, f"extends: expected a config name or file, got {parent!r}")
    relative = path.parent / parent
    chain = _config_chain(relative if relative.is_file() else Path(parent), (*seen, path.resolve()))
    return [*chain, (str(path), data)]


def _find_config(path: Path) -> Path:
    if path.is_file():
        return path
    packaged = packaged_config(str(path)) if path.suffix == "" and len(path.parts) == 1 else None
    if packaged is None:
        raise EmoadaptError(path, "no such config file (nor a packaged config of that name: see src/emoadapt/training/configs/)")
    return packaged


def _read_config_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EmoadaptError(path, f"cannot read this config file ({error}); give a JSON or YAML file") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # a dependency of OmegaConf
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


def validate(config: RunConfig, recipe: str | None = None, *, stage1: bool = False) -> None:
    """Every check that does not need Lightning, so that a run refuses bad settings before it writes anything:
    ranges, the recipe head's options (keys and types from its config dataclass), and that the models build."""
    problems = []
    for key, value, ok in (
            ("val_fraction", config.val_fraction, 0 <= config.val_fraction < 1),
            ("stage2.epochs", config.stage2.epochs, config.stage2.epochs >= 1),
            ("stage2.batch_size", config.stage2.batch_size, config.stage2.batch_size >= 1),
            ("stage2.lr", config.stage2.lr, config.stage2.lr > 0),
            ("stage2.head_lr", config.stage2.head_lr, config.stage2.head_lr > 0),
            ("stage2.warmup_fraction", config.stage2.warmup_fraction, 0 <= config.stage2.warmup_fraction < 1),
            ("stage2.max_crop_seconds", config.stage2.max_crop_seconds, config.stage2.max_crop_seconds > 0),
            ("stage2.patience", config.stage2.patience, config.stage2.patience is None or config.stage2.patience >= 1),
            ("stage2.freeze_adapter_epochs", config.stage2.freeze_adapter_epochs,
             config.stage2.freeze_adapter_epochs >= 0),
            ("stage2.weight_decay", config.stage2.weight_decay, config.stage2.weight_decay >= 0),
            ("stage2.label_smoothing", config.stage2.label_smoothing, 0 <= config.stage2.label_smoothing < 1),
            ("stage2.mixup_alpha", config.stage2.mixup_alpha, config.stage2.mixup_alpha >= 0),
            ("pretrain.epochs", config.pretrain.epochs, config.pretrain.epochs >= 1),
            ("pretrain.batch_size", config.pretrain.batch_size, config.pretrain.batch_size >= 1),
            ("pretrain.lr", config.pretrain.lr, config.pretrain.lr > 0),
            ("pretrain.max_crop_seconds", config.pretrain.max_crop_seconds, config.pretrain.max_crop_seconds > 0),
            ("pretrain.test_audio_share", config.pretrain.test_audio_share,
             0 <= config.pretrain.test_audio_share < 1),
            ("trainer.num_workers", config.trainer.num_workers, config.trainer.num_workers >= 0),
            ("normalize", config.normalize, config.normalize in NORMALIZATIONS),
            ("choose_by", config.choose_by, config.choose_by in CHOICES),
            ("calibration.clips", config.calibration.clips,
             config.calibration.clips is None or config.calibration.clips >= 1),
            ("calibration.apply_to", config.calibration.apply_to, config.calibration.apply_to in CALIBRATED_SPEAKERS),
            ("calibration.scope", config.calibration.scope, config.calibration.scope in SCOPES),
            ("calibration.shrink", config.calibration.shrink, config.calibration.shrink >= 0),
            ("calibration.train_shrink", config.calibration.train_shrink, config.calibration.train_shrink >= 0),
            ("calibration.train_shrink_grid", list(config.calibration.train_shrink_grid),
             all(t >= 0 for t in config.calibration.train_shrink_grid)),
            ("calibration.if_missing", config.calibration.if_missing, config.calibration.if_missing in IF_MISSING),
            ("calibration.spread", config.calibration.spread, config.calibration.spread in SPREADS)):
        if not ok:
            choices = {"normalize": NORMALIZATIONS, "choose_by": CHOICES, "calibration.apply_to": CALIBRATED_SPEAKERS,
                       "calibration.scope": SCOPES, "calibration.if_missing": IF_MISSING,
                       "calibration.spread": SPREADS}.get(key)
            problems.append(f"{key}={value!r} is out of range" + (f" (one of {', '.join(choices)})" if choices else ""))
    if problems:
        raise EmoadaptError(None, "invalid settings: " + "; ".join(problems))
    if config.pretrain.test_audio_share and not config.pretrain.test_audio:
        raise EmoadaptError(None, f"pretrain.test_audio_share={config.pretrain.test_audio_share} weighs the test "
                                  "utterances' audio in stage 1: it needs pretrain.test_audio=true")
    if recipe is not None:
        if config.choose_by == "corpus" and lookup_recipe(recipe).fit != "closed_form":
            raise EmoadaptError(None, f"choose_by=corpus applies to the closed-form recipes (stats); {recipe!r} "
                                      "chooses its epoch on the validation speakers")
        if config.calibration.train_shrink_grid and (
                lookup_recipe(recipe).fit != "closed_form" or config.choose_by != "corpus"
                or config.normalize != "speaker" or config.calibration.apply_to != "test"):
            raise EmoadaptError(None, "calibration.train_shrink_grid is chosen with each training corpus held out in "
                                      "turn: it needs the stats recipe with normalize=speaker, choose_by=corpus and "
                                      f"calibration.apply_to=test (here: recipe {recipe!r}, normalize="
                                      f"{config.normalize}, choose_by={config.choose_by}, apply_to="
                                      f"{config.calibration.apply_to}); or give calibration.train_shrink alone")
        if config.stage2.freeze_adapter_epochs and not lookup_recipe(recipe).uses_adapter:
            raise EmoadaptError(None, f"stage2.freeze_adapter_epochs applies to the adapter recipes; {recipe!r} has "
                                      "no adapter")
        head_settings(recipe, config.head, where="head")
    _check_models_build(config, recipe, stage1)


def _check_models_build(config: RunConfig, recipe: str | None, stage1: bool) -> None:
    import torch
    from ..model import PretrainObjective, build_model
    with torch.random.fork_rng():  # building draws initial weights: keep the caller's random state untouched
        try:
            if stage1:
                PretrainObjective(config.adapter, config.pretrain)
            if recipe is not None:
                build_model(recipe, config.adapter.input_layers, config.adapter.input_dim, 2,
                            **recipe_options(config, recipe))
        except (ValueError, AssertionError, TypeError, RuntimeError) as error:
            raise EmoadaptError(None, f"invalid model settings: {error}") from None


def recipe_options(config: RunConfig, recipe: str) -> dict:
    """The options ``build_model(recipe, ...)`` takes from a run config: the head's, plus the adapter's for the
    recipes with an adapter (its input sizes come from the store)."""
    options = {}
    if lookup_recipe(recipe).uses_adapter:
        options = {k: v for k, v in asdict(config.adapter).items() if k not in ("input_layers", "input_dim")}
    options.update(head_settings(recipe, config.head, where="head"))
    return options


def with_store_dims(config: RunConfig, encoder: dict) -> RunConfig:
    """The adapter's input sizes are those of the store's features."""
    return replace(config, adapter=replace(config.adapter, input_layers=len(encoder["layers"]),
                                           input_dim=int(encoder["dim"])))


def structural_adapter_fields() -> list[str]:
    """AdapterConfig fields that change the adapter's shape (a stage-1 adapter and stage 2 must agree on them)."""
    return [f.name for f in fields(AdapterConfig) if f.name not in ("dropout", "attention_dropout")]

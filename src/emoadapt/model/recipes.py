"""The recipe registry: the one place a recipe name is looked up. A recipe = its config dataclass (whose fields other
than the sizes below are the head's settings, ``head.KEY``), its model class (built as ``model(config)``), how it is
fitted, and one registration. Recipes with an adapter also take the adapter's settings (``AdapterConfig``) from the
run config's ``adapter`` section.

``full`` is the method: stage 1 (the adapter pre-trained on the fold's unlabeled audio), then stage 2 with the
``adapter`` recipe initialised from the stage-1 teacher; its models are ``adapter`` models.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch.nn as nn

from ..errors import EmoadaptError
from .adapter import AdapterConfig
from .classifier import (ClassifierConfig, EmoBoxClassifier, EmoBoxConfig, EmotionClassifier, StatsClassifier,
                         StatsConfig, SuperbClassifier, SuperbConfig)

SIZES = ("input_layers", "input_dim", "num_classes", "adapter")  # set from the store and the labels, not by users
FITS = ("gradient", "closed_form")


@dataclass(frozen=True)
class Recipe:
    name: str
    config: type
    model: type
    uses_adapter: bool
    fit: str = "gradient"          # "closed_form": fitted without gradient steps (emoadapt.training.closed_form)
    stage1: bool = False           # pre-trains the adapter first (stage 1), then trains ``stage2``
    stage2: str | None = None      # the recipe of its stage-2 models (None: itself)

    @property
    def stage2_recipe(self) -> str:
        return self.stage2 or self.name

    def head_fields(self) -> dict:
        return {f.name: f for f in fields(self.config) if f.name not in SIZES}


RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str, config: type, model: type, *, fit: str = "gradient", stage1: bool = False,
                    stage2: str | None = None) -> None:
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    uses_adapter = any(f.name == "adapter" for f in fields(config))
    RECIPES[name] = Recipe(name, config, model, uses_adapter, fit, stage1, stage2)


register_recipe("full", ClassifierConfig, EmotionClassifier, stage1=True, stage2="adapter")
register_recipe("adapter", ClassifierConfig, EmotionClassifier)
register_recipe("superb", SuperbConfig, SuperbClassifier)
register_recipe("emobox", EmoBoxConfig, EmoBoxClassifier)
register_recipe("stats", StatsConfig, StatsClassifier, fit="closed_form")


def recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is refused with the list of recipes."""
    if name not in RECIPES:
        raise EmoadaptError(None, f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)} (full = stage 1, "
                                  f"then the adapter recipe)")
    return RECIPES[name]


def head_settings(name: str, head: dict, *, where: str = "head") -> dict:
    """``head`` checked against recipe ``name``'s head fields: unknown keys and wrong types raise an error naming
    them; returns the values converted to their annotated types."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    spec = recipe(name)
    known = spec.head_fields()
    unknown = sorted(set(head) - set(known))
    if unknown:
        raise EmoadaptError(None, f"{where}: recipe {name!r} has no option {', '.join(unknown)}; its options are "
                                  f"{', '.join(sorted(known))}")
    schema = OmegaConf.structured(spec.config)
    try:
        checked = OmegaConf.merge(schema, dict(head))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "?")
        raise EmoadaptError(None, f"{where}.{key}: {str(error).splitlines()[0]}") from None
    values = OmegaConf.to_container(checked)
    return {k: values[k] for k in head}


def build_model(recipe_name: str, input_layers: int, input_dim: int, num_classes: int, **options) -> nn.Module:
    """A classifier by recipe name; ``options`` override that recipe's defaults (for ``adapter``: any field of
    ClassifierConfig or AdapterConfig, e.g. ``dim=256, head_dropout=0.2, input_layer=19``)."""
    spec = recipe(recipe_name)
    head_keys = set(spec.head_fields())
    adapter_keys = {f.name for f in fields(AdapterConfig)} - {"input_layers", "input_dim"} if spec.uses_adapter else set()
    unknown = sorted(set(options) - head_keys - adapter_keys)
    if unknown:
        raise EmoadaptError(None, f"recipe {recipe_name!r} has no option {', '.join(unknown)}; "
                                  f"its options are {', '.join(sorted(head_keys | adapter_keys))}")
    sizes = {"input_layers": input_layers, "input_dim": input_dim, "num_classes": num_classes}
    kwargs = {k: v for k, v in sizes.items() if k in {f.name for f in fields(spec.config)}}
    if spec.uses_adapter:
        kwargs["adapter"] = AdapterConfig(input_layers=input_layers, input_dim=input_dim,
                                          **{k: v for k, v in options.items() if k in adapter_keys})
    return spec.model(spec.config(**kwargs, **{k: v for k, v in options.items() if k in head_keys}))

"""Model folders, as HF's ``save_pretrained`` folders: safetensors weights + ``model.json`` (what to build, the labels,
the encoder, the settings, the weights' sha256) + ``seen.json`` (what trained it); written by training, read by
inference; and the models shipped inside the package."""
from .format import (CONFIG, WEIGHTS, LoadedModel, load_classifier, load_model, plain_json, read_classifier,
                     read_model_info, read_stage1_adapter, save_adapter, save_model)
from .seen import Seen, read_seen, refuse_if_seen, refuse_on_folds, speakers_of
from .shipped import DEFAULT, SHIPPED_MODELS, build_record, resolve_model, shipped_names

__all__ = ["CONFIG", "WEIGHTS", "LoadedModel", "load_classifier", "load_model", "plain_json", "read_classifier",
           "read_model_info", "read_stage1_adapter", "save_adapter", "save_model", "Seen", "read_seen",
           "refuse_if_seen", "refuse_on_folds", "speakers_of", "DEFAULT", "SHIPPED_MODELS", "build_record",
           "resolve_model", "shipped_names"]

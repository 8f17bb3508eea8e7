"""The feature store: a frozen encoder's hidden states computed once per corpus and cached as fp16 memory-mapped shards
with an index (:mod:`.extract` writes it, resumably; :mod:`.features` reads it; :mod:`.verify` checks and repairs a
whole store), and the dataset that reads it for a model (:mod:`.dataset`)."""
from .dataset import FeatureDataset, collate, encoder_info, eval_loader, open_store, require_same_features
from .features import FeatureStore

__all__ = ["FeatureStore", "FeatureDataset", "collate", "eval_loader", "encoder_info", "open_store",
           "require_same_features"]

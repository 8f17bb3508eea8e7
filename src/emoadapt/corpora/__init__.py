"""Corpora as data (EmoBox's contract): a loader per corpus turns a folder into manifest rows; folds are files the
code reads, never code paths in the model. Start with ``load_corpus(path)``."""
from .base import Corpus
from .emobox import write_emobox
from .emobox import load as read_emobox
from .splits import Folds, Split, read_folds, write_folds
from .labelmap import LabelMap, apply_label_map, merge_corpora, packaged_label_maps, read_label_map
from .load import LOADERS, detect_kind, load_corpus, summarize
from .manifest import Utterance, read_manifest, write_manifest

__all__ = ["Corpus", "Folds", "LOADERS", "LabelMap", "Split", "Utterance", "apply_label_map", "detect_kind",
           "load_corpus", "merge_corpora", "packaged_label_maps", "read_emobox", "read_label_map",
           "read_folds", "read_manifest", "summarize", "write_emobox", "write_folds", "write_manifest"]

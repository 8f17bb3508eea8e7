"""Reading cached features for a model: the dataset of utterances in feature stores, padding them into batches,
whole-utterance evaluation batches, and the checks that a store holds the features a model expects.

    feature store(s) ─► FeatureDataset (memmap reads, random crops) ─► collate [B, L+1, T, D] + padding mask

Nothing but utterance ids is held in memory; frames are read from the stores' memory-mapped shards one utterance
at a time. Evaluation batches by length and never touches the global RNG. Training's samplers and loaders build on
this in :mod:`emoadapt.training.data`; inference uses it as it is.
"""
from __future__ import annotations

import os
from typing import Iterable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..corpora import Corpus, load_corpus
from ..corpora.base import preview
from ..errors import FeatureStoreError, MissingFeatures, StaleFeatures, StoreMismatch
from .features import FeatureStore


class Normalizes(Protocol):
    """What the dataset asks of a normaliser: the (mean, 1 / std) ``[L+1, 1, D]`` to standardise an utterance with."""

    def statistics(self, utt_id: str | None, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class FeatureDataset(Dataset):
    """Utterances of one or more feature stores. An item is ``(store index, utterance id, label index)`` with
    label -1 for unlabeled audio; nothing but these ids is held in memory (peak RAM does not grow with the store).

    ``dataset[i]`` is the whole utterance; ``dataset[(i, draw)]`` (what :class:`ShuffleSampler` yields) is a random
    crop of at most ``max_frames`` frames whose position is fixed by ``draw``. A ``normalizer`` (speaker or
    utterance normalisation, :class:`emoadapt.calibration.Normalizer`) standardises the frames as they are read.
    """

    def __init__(self, stores: Sequence[FeatureStore], items: Sequence[tuple[int, str, int]],
                 max_frames: int | None = None, normalizer: Normalizes | None = None):
        self.stores, self.items, self.max_frames = list(stores), list(items), max_frames
        self.normalizer = normalizer

    def __len__(self) -> int:
        return len(self.items)

    def num_frames(self, index: int) -> int:
        s, utt_id, _ = self.items[index]
        return self.stores[s].num_frames(utt_id)

    def __getitem__(self, key):
        index, draw = key if isinstance(key, tuple) else (key, None)
        s, utt_id, label = self.items[index]
        x = self.stores[s].get(utt_id)                                     # fp16 memmap view [L+1, T, D]
        statistics = self.normalizer.statistics(utt_id, x) if self.normalizer else None  # of the whole utterance
        T = x.shape[1]
        if draw is not None and self.max_frames and T > self.max_frames:
            start = int(np.random.default_rng(draw).integers(T - self.max_frames + 1))
            x = x[:, start: start + self.max_frames]
        x = np.array(x, dtype=np.float32)
        if statistics is not None:
            x = (x - statistics[0]) * statistics[1]
        return {"hidden_states": torch.from_numpy(x), "label": label, "index": index}


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


FEATURE_KEYS = ("fingerprint", "layers")  # what makes two sets of features interchangeable for a model


def require_same_features(expected: dict, actual: dict, *, where, what: str, keys: Sequence[str] = FEATURE_KEYS,
                          names: tuple[str, str] = ("model", "store"), error=StoreMismatch, advice: str = "") -> None:
    """The one check that features match what a model (or another store) expects: ``expected`` and ``actual`` are
    encoder records (:func:`encoder_info`, a model's ``model.json["encoder"]``); any of ``keys`` that differs raises
    ``error(where, "<what> (<key>: <names[0]> .., <names[1]> ..)<advice>")``."""
    diffs = [k for k in keys if expected.get(k) != actual.get(k)]
    if diffs:
        details = "; ".join(f"{k}: {names[0]} {expected.get(k)!r}, {names[1]} {actual.get(k)!r}" for k in diffs)
        raise error(where, f"{what} ({details}){advice}")


def check_same_features(stores: Sequence[FeatureStore]) -> dict:
    """All stores must hold the same encoder's features with the same layers, or they cannot be mixed; returns
    their encoder record."""
    first = encoder_info(stores[0])
    for other in stores[1:]:
        require_same_features(first, encoder_info(other), where=other.root, keys=(*FEATURE_KEYS, "dim"),
                              what="these features cannot be mixed with the first store's",
                              names=(f"{stores[0].root}", "this store"))
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
        raise MissingFeatures(store.root, f"{len(missing)} utterances of corpus {corpus.name} have no features "
                                          f"({preview(missing, 3)}); run emoadapt extract on the corpus into this store first")
    by_id = {u.id: u for u in corpus.rows}
    stale = [u.id for u in store.stale(by_id[i] for i in keep if i in by_id)]
    if stale:
        raise StaleFeatures(store.root, f"the audio of {len(stale)} utterances changed since their features were "
                                        f"extracted ({preview(stale, 3)}); re-run emoadapt extract on the corpus into this "
                                        f"store: it re-computes exactly those")
    return keep, skipped


def augmented_copies(corpus: Corpus, store: FeatureStore, ids: Iterable[str]) -> dict[str, list[str]]:
    """id -> the ids of its augmented copies in ``store`` (an augmented store, :mod:`emoadapt.store.augment`), for
    every one of ``ids``; a copy the store could not encode is left out. A copy never extracted, or made from audio
    that changed since, is an error."""
    from .augment import AugmentedRow, augmented_id
    augmentation = require_augmented(store)
    failed = {f.id for f in store.failures()}
    by_id = {u.id: u for u in corpus.rows}
    copies, missing, present = {}, [], []
    for i in ids:
        copies[i] = []
        for k in range(1, int(augmentation["copies"]) + 1):
            a = augmented_id(i, k)
            if a in store:
                copies[i].append(a)
                present.append(AugmentedRow(a, str(by_id[i].path), by_id[i].speaker, k, i))
            elif a not in failed:
                missing.append(a)
    if missing:
        raise MissingFeatures(store.root, f"{len(missing)} augmented copies of corpus {corpus.name}'s clips are not in "
                                          f"this store ({preview(missing, 3)}); run emoadapt extract on the corpus "
                                          f"into it with the same --augment first")
    stale = [row.id for row in store.stale(present)]
    if stale:
        raise StaleFeatures(store.root, f"the audio of {len(stale)} augmented copies changed since they were extracted "
                                        f"({preview(stale, 3)}); re-run emoadapt extract --augment into this store")
    return copies


def open_augmented_store(augmented: FeatureStore | str | os.PathLike | None, clean: FeatureStore
                         ) -> FeatureStore | None:
    """An augmented store to train on beside ``clean``: it must record an augmentation and hold the same features."""
    if augmented is None:
        return None
    augmented = open_store(augmented)
    require_augmented(augmented)
    check_same_features([clean, augmented])
    return augmented


def require_augmented(store: FeatureStore) -> dict:
    """The augmentation a store's meta records; a store without one is an error that says how to make one."""
    augmentation = store.meta.get("augmentation")
    if not augmentation:
        raise FeatureStoreError(store.root, "not an augmented store (its meta records no augmentation): make one with "
                                            "emoadapt extract CORPUS --store S --augment copies=1")
    return augmentation

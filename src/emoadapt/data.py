"""Data on cached features: datasets, collate, the sampler, loaders, folds with features and the fold's
input standardisation.

    feature store(s) ─► FeatureDataset (memmap reads, random crops) ─► collate [B, L+1, T, D] + padding mask

Nothing but utterance ids is held in memory; frames are read from the stores' memory-mapped shards one utterance
at a time. Determinism: the training order and crop positions are fixed by (seed, epoch) in
:class:`ShuffleSampler`, independent of workers; evaluation batches by length and never touches the global RNG.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .corpora import Corpus, load_corpus
from .errors import CorpusError, EmoadaptError, FeatureStoreError, MissingFeatures, StoreMismatch
from .features import FeatureStore, frame_statistics
from .model import FeatureStandardizer

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


def split_fold(corpus: Corpus, store: FeatureStore, fold: int, config) -> dict:
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



def fit_standardizers(model: torch.nn.Module, utterances: Sequence[tuple[FeatureStore, str]]) -> None:
    """Fit every FeatureStandardizer in ``model`` (stage 1: student and teacher) on the frames of ``utterances``."""
    modules = [m for m in model.modules() if isinstance(m, FeatureStandardizer)]
    if modules:
        mean, std = frame_statistics(utterances)
        for m in modules:
            m.fit(mean, std)


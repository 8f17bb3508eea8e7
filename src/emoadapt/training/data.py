"""Training data on cached features: samplers and loaders (random crops in a fresh order every epoch), the labelled
dataset of a fold, its train / validation / test split and :class:`FoldData`, the fold's Lightning data module built
once and handed to stage 1, stage 2 and the test.

Determinism: the training order and crop positions are fixed by (seed, epoch) in :class:`ShuffleSampler`,
independent of workers.
"""
from __future__ import annotations

import math
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..calibration import Normalizer, class_offsets, make_normalizer
from ..corpora import Corpus
from ..corpora.base import one_fold, speaker_group
from ..corpora.splits import speaker_folds
from ..errors import CorpusError
from ..model import FeatureStandardizer
from ..store.dataset import FeatureDataset, augmented_copies, collate, eval_loader, usable_ids
from ..store.features import FeatureStore, array_statistics


class ShuffleSampler(Sampler):
    """A fresh order every epoch, fixed by (seed, epoch); yields ``(index, draw)`` so crop positions are fixed too.

    Lightning calls ``set_epoch`` before each epoch. Under DDP each rank takes every world_size-th position of the
    same order (wrapped round so every rank gets the same number of batches).

    ``share=(group, fraction)``: the epoch keeps its length, but ``fraction`` of its draws come from the indices in
    ``group`` and the rest from the others, each side taken in fresh orders and cycled (so the smaller side repeats,
    with other crops) or cut short. Stage 1 uses it to give the target's audio a fixed weight whatever its size.
    """

    def __init__(self, size: int, seed: int = 0, share: tuple[Sequence[int], float] | None = None):
        self.size, self.seed, self.epoch = size, seed, 0
        self.share = None
        if share is not None:
            group, fraction = np.unique(np.asarray(share[0], dtype=np.int64)), float(share[1])
            if not 0.0 < fraction < 1.0 or not 0 < len(group) < size or group[0] < 0 or group[-1] >= size:
                raise ValueError(f"share needs a fraction in (0, 1) and a group of some but not all of the {size} "
                                 f"indices; got {fraction} and {len(group)} indices")
            self.share = (group, np.setdiff1d(np.arange(size), group), fraction)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        if self.share is None:
            return rng.permutation(self.size)
        group, others, fraction = self.share
        taken = round(fraction * self.size)
        cycled = lambda pool, n: np.concatenate(  # noqa: E731
            [rng.permutation(pool) for _ in range(math.ceil(n / len(pool)))] or [pool[:0]])[:n]
        return rng.permutation(np.concatenate([cycled(group, taken), cycled(others, self.size - taken)]))

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order, draws = self._order(rng), rng.integers(2 ** 62, size=self.size)
        rank, world = _rank_and_world()
        total = math.ceil(self.size / world) * world
        for position in range(rank, total, world):
            position %= self.size
            yield int(order[position]), int(draws[position])

    def __len__(self) -> int:
        return math.ceil(self.size / _rank_and_world()[1])


class LengthBuckets(Sampler):
    """Batches of similar length (less padding, so less work per update): the epoch's order from a
    :class:`ShuffleSampler` (this rank's share, with its crop draws) is cut into pools of ``pool_batches`` batches,
    each pool sorted by cropped length and cut into batches, and the batches are shuffled, fixed by (seed, epoch).
    Every utterance is still seen once per epoch, in as many batches as without buckets. Lightning reaches the
    epoch through ``.sampler``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, pool_batches: int = 50):
        self.lengths, self.batch_size, self.pool = list(lengths), batch_size, batch_size * pool_batches
        self.sampler = ShuffleSampler(len(self.lengths), seed)

    def __iter__(self):
        drawn = list(self.sampler)
        batches = []
        for start in range(0, len(drawn), self.pool):
            pool = sorted(drawn[start: start + self.pool], key=lambda item: self.lengths[item[0]])
            batches += [pool[i: i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        order = np.random.default_rng([self.sampler.seed, self.sampler.epoch, 1]).permutation(len(batches))
        yield from (batches[k] for k in order)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train_loader(dataset: FeatureDataset, batch_size: int, *, seed: int, num_workers: int = 0,
                 bucket_by_length: bool = False, share: tuple[Sequence[int], float] | None = None) -> DataLoader:
    """Random crops in a fresh order every epoch; ``bucket_by_length``: batches of similar (cropped) length;
    ``share``: (positions in ``dataset``, the fraction of each epoch's draws they get), see :class:`ShuffleSampler`."""
    if share is not None and bucket_by_length:
        raise ValueError("train_loader: share and bucket_by_length do not combine")
    common = dict(collate_fn=collate, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                  persistent_workers=num_workers > 0)
    if bucket_by_length:
        cap = dataset.max_frames or math.inf
        lengths = [min(dataset.num_frames(k), cap) for k in range(len(dataset))]
        return DataLoader(dataset, batch_sampler=LengthBuckets(lengths, batch_size, seed), **common)
    return DataLoader(dataset, batch_size=batch_size, sampler=ShuffleSampler(len(dataset), seed, share), **common)



def labelled_dataset(corpus: Corpus, store: FeatureStore, ids: Sequence[str], labels: Sequence[str],
                     max_frames: int | None = None, normalizer: Normalizer | None = None,
                     augmented: tuple[FeatureStore, dict[str, list[str]]] | None = None) -> FeatureDataset:
    """``ids`` with their labels; ``augmented`` (an augmented store, id -> its copies' ids): each clip's copies
    too, with the clip's label."""
    index = {name: k for k, name in enumerate(labels)}
    by_id = {u.id: u for u in corpus.rows}
    items = []
    for i in ids:
        label = by_id[i].label
        if label not in index:
            raise CorpusError(corpus.root, f"utterance {i} has label {label!r}, which the model does not know "
                                           f"(its classes: {', '.join(labels)})")
        items.append((0, i, index[label]))
        if augmented is not None:
            items += [(1, copy, index[label]) for copy in augmented[1][i]]
    return FeatureDataset([store] + ([augmented[0]] if augmented else []), items, max_frames, normalizer)


def split_fold(corpus: Corpus, store: FeatureStore, fold: int | None, config) -> dict:
    """Train / validation / test ids of a fold with features (validation: whole training speakers). ``fold``
    None: all speakers train or validate, no test."""
    folds = corpus.folds
    if folds is None and fold is None:  # no test fold wanted: the speakers are all that matters
        folds = one_fold(corpus)
    if folds is None:  # the folds cv makes for such a corpus
        folds = speaker_folds(corpus.rows, corpus.root)[0]
    split = folds.split(fold, val_fraction=config.val_fraction, seed=config.seed)
    out, skipped = {}, []
    for name in ("train", "val", "test"):
        out[name], s = usable_ids(corpus, store, getattr(split, name))
        skipped += s
    out["skipped"] = skipped  # utterances the encoder could not read (listed in the store's failures)
    if not out["train"] or (fold is not None and not out["test"]):
        raise CorpusError(corpus.root, f"fold {fold} has no {'training' if not out['train'] else 'test'} utterances "
                                       f"with features")
    return out


def fit_standardizers(model: torch.nn.Module, dataset: FeatureDataset) -> None:
    """Fit every FeatureStandardizer in ``model`` (stage 1: student and teacher) on the frames of ``dataset``'s
    whole utterances, as the model will see them (after any speaker or utterance normalisation)."""
    modules = [m for m in model.modules() if isinstance(m, FeatureStandardizer)]
    if modules:
        mean, std = array_statistics(dataset[k]["hidden_states"].numpy() for k in range(len(dataset)))
        for m in modules:
            m.fit(mean, std)




class FoldData(pl.LightningDataModule):
    """One fold of a labelled corpus, built once per fold and handed to stage 1, stage 2 and the test: training,
    validation (whole speakers drawn from the training speakers) and test utterances with features, normalised as
    ``config.normalize`` says (a test speaker's statistics from its calibration clips), and their loaders (random
    crops in training, whole utterances batched by length in evaluation). ``fold`` None: every speaker trains or
    validates, nothing is tested. ``augmented``: an augmented store of the corpus, whose copies of the training
    utterances join the training set (validation and test stay clean). ``split``: the fold's
    :func:`split_fold`, when the caller made it already (to choose a setting on it first)."""

    def __init__(self, corpus: Corpus, store: FeatureStore, fold: int | None, config, labels: Sequence[str],
                 frame_rate: float, augmented: FeatureStore | None = None, split: dict | None = None):
        super().__init__()
        self.corpus, self.store, self.fold, self.labels = corpus, store, fold, list(labels)
        self.augmented_store = augmented
        self.split = split if split is not None else split_fold(corpus, store, fold, config)
        self.batch_size, self.seed = config.stage2.batch_size, config.seed
        self.bucket_by_length = config.stage2.bucket_by_length
        self.num_workers = config.trainer.num_workers
        self.frame_rate = frame_rate
        max_frames = round(config.stage2.max_crop_seconds * frame_rate)
        self.normalizer = make_normalizer(config, corpus, store, test_ids=self.split["test"])  # reads the store
        copies = None if augmented is None else (augmented, augmented_copies(corpus, augmented, self.split["train"]))
        self.augmentation = None if augmented is None else {  # what a run and its model record
            "store": str(augmented.root), **augmented.meta["augmentation"],
            "training_copies": sum(len(c) for c in copies[1].values())}
        self.train = labelled_dataset(corpus, store, self.split["train"], self.labels, max_frames, self.normalizer,
                                      copies)
        self.val = labelled_dataset(corpus, store, self.split["val"], self.labels, normalizer=self.normalizer)
        self.test = labelled_dataset(corpus, store, self.split["test"], self.labels, normalizer=self.normalizer)

    def class_offsets(self):
        """What each class adds to a speaker's standardised hidden states, from the training clips (computed once;
        None unless speaker-normalised): :func:`emoadapt.calibration.class_offsets`."""
        if not hasattr(self, "_class_offsets"):
            label_of = {u.id: u.label for u in self.corpus.rows}
            self._class_offsets = None if getattr(self.normalizer, "mode", None) != "speaker" else class_offsets(
                self.normalizer, self.store, self.split["train"], label_of, self.labels)
        return self._class_offsets

    def train_dataloader(self):
        return train_loader(self.train, self.batch_size, seed=self.seed, num_workers=self.num_workers,
                            bucket_by_length=self.bucket_by_length)

    def val_dataloader(self):
        return eval_loader(self.val, self.batch_size, num_workers=self.num_workers)

    def speakers(self, part: str) -> list[str]:
        group = speaker_group(self.corpus)
        return sorted({group(i) for i in self.split[part]})

    def unlabeled(self, extra_stores: Sequence[FeatureStore], max_seconds: float,
                  test_audio: bool = False) -> FeatureDataset:
        """Stage 1's data: the fold's training utterances (never a validation speaker) and every utterance of
        ``extra_stores``, without labels, cropped to ``max_seconds``, normalised as stage 2 will see them;
        ``test_audio``: the test utterances' audio too (transductive, ``pretrain.test_audio``)."""
        items = [(0, i, -1) for i in self.split["train"] + (self.split["test"] if test_audio else [])]
        for s, extra in enumerate(extra_stores, start=1):
            items += [(s, i, -1) for i in extra.ids()]
        return FeatureDataset([self.store, *extra_stores], items, max_frames=round(max_seconds * self.frame_rate),
                              normalizer=self.normalizer)

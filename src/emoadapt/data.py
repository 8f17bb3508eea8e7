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
import zlib
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .corpora import Corpus, Folds, load_corpus
from .corpora.base import preview
from .errors import CorpusError, FeatureStoreError, MissingFeatures, StaleFeatures, StoreMismatch
from .features import FeatureStore, array_statistics
from .model import FeatureStandardizer


class FeatureDataset(Dataset):
    """Utterances of one or more feature stores. An item is ``(store index, utterance id, label index)`` with
    label -1 for unlabeled audio; nothing but these ids is held in memory (peak RAM does not grow with the store).

    ``dataset[i]`` is the whole utterance; ``dataset[(i, draw)]`` (what :class:`ShuffleSampler` yields) is a random
    crop of at most ``max_frames`` frames whose position is fixed by ``draw``. A ``normalizer`` (speaker or
    utterance normalisation) standardises the frames as they are read.
    """

    def __init__(self, stores: Sequence[FeatureStore], items: Sequence[tuple[int, str, int]],
                 max_frames: int | None = None, normalizer: Normalizer | None = None):
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
                 bucket_by_length: bool = False) -> DataLoader:
    """Random crops in a fresh order every epoch; ``bucket_by_length``: batches of similar (cropped) length."""
    common = dict(collate_fn=collate, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                  persistent_workers=num_workers > 0)
    if bucket_by_length:
        cap = dataset.max_frames or math.inf
        lengths = [min(dataset.num_frames(k), cap) for k in range(len(dataset))]
        return DataLoader(dataset, batch_sampler=LengthBuckets(lengths, batch_size, seed), **common)
    return DataLoader(dataset, batch_size=batch_size, sampler=ShuffleSampler(len(dataset), seed), **common)


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
        raise MissingFeatures(store.root, f"{len(missing)} utterances of corpus {corpus.name} have no features "
                                          f"({preview(missing, 3)}); run emoadapt extract on the corpus into this store first")
    by_id = {u.id: u for u in corpus.rows}
    stale = [u.id for u in store.stale(by_id[i] for i in keep if i in by_id)]
    if stale:
        raise StaleFeatures(store.root, f"the audio of {len(stale)} utterances changed since their features were "
                                        f"extracted ({preview(stale, 3)}); re-run emoadapt extract on the corpus into this "
                                        f"store: it re-computes exactly those")
    return keep, skipped


def labelled_dataset(corpus: Corpus, store: FeatureStore, ids: Sequence[str], labels: Sequence[str],
                     max_frames: int | None = None, normalizer: Normalizer | None = None) -> FeatureDataset:
    index = {name: k for k, name in enumerate(labels)}
    by_id = {u.id: u for u in corpus.rows}
    items = []
    for i in ids:
        label = by_id[i].label
        if label not in index:
            raise CorpusError(corpus.root, f"utterance {i} has label {label!r}, which the model does not know "
                                           f"(its classes: {', '.join(labels)})")
        items.append((0, i, index[label]))
    return FeatureDataset([store], items, max_frames, normalizer)


def split_fold(corpus: Corpus, store: FeatureStore, fold: int | None, config) -> dict:
    """Train / validation / test ids of a fold with features (validation: whole training speakers). ``fold``
    None: all speakers train or validate, no test."""
    folds = corpus.folds
    if folds is None and fold is None:  # no test fold wanted: the speakers are all that matters
        folds = _one_fold(corpus)
    if folds is None:
        raise CorpusError(corpus.root, f"corpus {corpus.name} has no folds; give it a folds.csv (path,speaker,fold)")
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


# --- speaker and utterance normalisation --------------------------------------------------------------------------
class Normalizer:
    """Standardises an utterance's hidden states per layer and dimension with its speaker's frame statistics
    (``mode`` "speaker"; ``statistics``: speaker -> (mean, std) [L+1, D]) or with its own ("utterance"; also any
    utterance whose speaker is unknown, e.g. audio of an unlabeled store). Emotion is heard relative to how a person
    usually sounds; removing each speaker's average voice leaves what varies within the speaker."""

    def __init__(self, mode: str, speaker_of: dict[str, str] | None = None,
                 statistics: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, eps: float = 1e-5):
        self.mode, self.speaker_of, self.eps = mode, dict(speaker_of or {}), eps
        self._by_speaker = {s: self._pair(m, d) for s, (m, d) in (statistics or {}).items()}
        self.everyone = None  # one_speaker: the statistics of every utterance

    def _pair(self, mean, std) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1 / sqrt(std² + eps)) as float32 [L+1, 1, D], ready to broadcast over frames."""
        inv_std = 1.0 / np.sqrt(np.square(std) + self.eps)
        return np.asarray(mean, np.float32)[:, None], inv_std.astype(np.float32)[:, None]

    @classmethod
    def one_speaker(cls, statistics: tuple[np.ndarray, np.ndarray]) -> Normalizer:
        """Every utterance standardised with these (mean, std) [L+1, D]: one speaker's, e.g. from calibration
        clips."""
        normalizer = cls("speaker", statistics={"": statistics})
        normalizer.everyone = normalizer._by_speaker[""]
        return normalizer

    def statistics(self, utt_id: str | None, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.everyone is not None:
            return self.everyone
        speaker = self.speaker_of.get(utt_id) if self.mode == "speaker" else None
        if speaker is not None:
            return self._by_speaker[speaker]
        return self._pair(*array_statistics([x]))

    def normalize(self, x: np.ndarray, utt_id: str | None = None) -> np.ndarray:
        """``x`` [L+1, T, D] standardised, as float32."""
        mean, inv_std = self.statistics(utt_id, x)
        return (np.asarray(x, np.float32) - mean) * inv_std


def speaker_group(corpus: Corpus):
    """utterance id -> the unit that never crosses train / validation / test: its speaker (the utterance itself when
    no speaker is known), as the folds group them."""
    return (corpus.folds or _one_fold(corpus)).group


def _one_fold(corpus: Corpus) -> Folds:
    """Every utterance in one fold: for a corpus without folds, where only its speakers matter."""
    return Folds.from_rows(corpus.rows, lambda u: 0)


def make_normalizer(config, corpus: Corpus, store: FeatureStore, test_ids: Iterable[str] = ()) -> Normalizer | None:
    """The normalisation ``config.normalize`` asks for (None for "global": the model's own standardisation only).
    "speaker": each speaker's statistics from all of their clips in ``store`` (their audio, never their labels),
    except that the speakers of ``test_ids`` (every speaker, with ``calibration.apply_to: all``) use the clips
    ``config.calibration`` draws."""
    if config.normalize == "global":
        return None
    if config.normalize == "utterance":
        return Normalizer("utterance")
    by_id = {u.id: u for u in corpus.rows}
    group = speaker_group(corpus)
    clips: dict[str, list[str]] = {}
    for u in corpus.rows:
        if u.id in store:
            clips.setdefault(group(u.id), []).append(u.id)
    calibrated = set(clips) if config.calibration.apply_to == "all" else {group(i) for i in test_ids}
    statistics = {}
    for speaker, ids in clips.items():
        if speaker in calibrated:
            ids = calibration_clips(ids, config.calibration, by_id, seed=config.seed, speaker=speaker,
                                    where=corpus.root)
        statistics[speaker] = array_statistics(store.get(i) for i in ids)
    return Normalizer("speaker", {i: group(i) for ids in clips.values() for i in ids}, statistics)


def calibration_clips(ids: Sequence[str], calibration, by_id: dict, *, seed: int, speaker: str, where) -> list[str]:
    """The clips of one test speaker whose audio gives its statistics: ``calibration.clips`` drawn at random (fixed
    by seed and speaker) among all, or among those labelled ``calibration.only_label``."""
    pool = sorted(ids)
    if calibration.only_label is not None:
        pool = [i for i in pool if by_id[i].label == calibration.only_label]
        if not pool:
            raise CorpusError(where, f"speaker {speaker} has no clip labelled {calibration.only_label!r} to calibrate "
                                     f"with; choose another calibration.only_label or none")
    if calibration.clips is None or calibration.clips >= len(pool):
        return pool
    rng = np.random.default_rng([seed, zlib.crc32(speaker.encode())])
    return sorted(rng.choice(pool, size=calibration.clips, replace=False).tolist())


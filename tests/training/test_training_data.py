"""Training data: the dataset, the shuffle sampler and length buckets."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from emoadapt.store.dataset import FeatureDataset, collate
from emoadapt.store.features import FeatureStore
from emoadapt.training import data as data_module
from emoadapt.training.data import ShuffleSampler
from emoadapt.training.trainer import steps_per_epoch

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


# --- data ---------------------------------------------------------------------------------------------------------
def test_dataset_reads_one_utterance_at_a_time_and_crops(data):
    corpus, store_path = data
    store = FeatureStore(store_path)
    ids = store.ids()[:12]
    dataset = FeatureDataset([store], [(0, i, k % 4) for k, i in enumerate(ids)], max_frames=10)
    shards = sum(p.stat().st_size for p in store.shard_dir.glob("*.npy"))
    assert len(pickle.dumps(dataset)) < shards / 50  # ids and the store's index only: no frames held in memory

    whole = dataset[3]
    T = store.num_frames(ids[3])
    assert whole["hidden_states"].dtype == torch.float32 and whole["hidden_states"].shape[1] == T > 10
    np.testing.assert_array_equal(whole["hidden_states"].numpy(), store.get(ids[3]).astype(np.float32))
    crop = dataset[(3, 12345)]["hidden_states"]
    assert crop.shape[1] == 10 and torch.equal(crop, dataset[(3, 12345)]["hidden_states"])  # draw fixes the crop
    starts = {int((whole["hidden_states"][0, :, 0] == dataset[(3, d)]["hidden_states"][0, 0, 0]).nonzero()[0])
              for d in range(20)}
    assert len(starts) > 3  # different draws, different positions

    batch = collate([dataset[0], dataset[(1, 7)], dataset[2]])
    lengths = batch["lengths"].tolist()
    assert batch["hidden_states"].shape[:3] == (3, 2, max(lengths))
    assert batch["padding_mask"].sum(1).tolist() == [max(lengths) - n for n in lengths]
    assert float(batch["hidden_states"][batch["padding_mask"][:, None, :, None].expand_as(batch["hidden_states"])]
                 .abs().sum()) == 0.0
    assert batch["labels"].tolist() == [0, 1, 2]


def test_shuffle_sampler_fixed_by_seed_and_epoch_and_sharded(monkeypatch):
    sampler = ShuffleSampler(10, seed=1)
    first = list(sampler)
    assert first == list(ShuffleSampler(10, seed=1)) and sorted(i for i, _ in first) == list(range(10))
    sampler.set_epoch(1)
    assert list(sampler) != first
    shards = []
    for rank in range(3):  # under DDP every rank takes its share of the same order, padded to equal length
        monkeypatch.setattr(data_module, "_rank_and_world", lambda rank=rank: (rank, 3))
        shards.append(list(ShuffleSampler(10, seed=1)))
    assert [len(s) for s in shards] == [4, 4, 4] and {i for s in shards for i, _ in s} == set(range(10))


def test_shuffle_sampler_gives_a_group_a_fixed_share_of_each_epoch():
    group = [0, 1, 2]  # 3 of 20: 15 % when each index is drawn once
    sampler = ShuffleSampler(20, seed=4, share=(group, 0.5))
    first = [i for i, _ in sampler]
    assert len(first) == len(sampler) == 20 and sum(i in group for i in first) == 10
    assert {i for i in first if i in group} == set(group)  # the small side cycles through fresh orders: all of it
    assert len({i for i in first if i not in group}) == 10  # the large side is cut short, nothing drawn twice
    assert first == [i for i, _ in ShuffleSampler(20, seed=4, share=(group, 0.5))]  # fixed by seed and epoch
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != first
    assert [i for i, _ in ShuffleSampler(20, seed=4)] != first
    for bad in (([], 0.5), (group, 0.0), (group, 1.0), (range(20), 0.5), ([20], 0.5)):
        with pytest.raises(ValueError, match="share needs a fraction"):
            ShuffleSampler(20, seed=4, share=bad)


def test_length_buckets_see_every_utterance_once_with_less_padding(monkeypatch):
    lengths = np.random.default_rng(0).integers(20, 400, size=203).tolist()
    buckets = data_module.LengthBuckets(lengths, batch_size=8, seed=3, pool_batches=5)
    epoch0 = list(buckets)
    assert len(epoch0) == len(buckets) == math.ceil(203 / 8) and epoch0 == list(buckets)  # fixed by seed and epoch
    assert sorted(i for batch in epoch0 for i, _ in batch) == list(range(203))
    plain = list(ShuffleSampler(203, seed=3))
    assert sorted(draw for batch in epoch0 for _, draw in batch) == sorted(d for _, d in plain)  # same crops
    padding = lambda batches: sum(max(lengths[i] for i, _ in b) * len(b) - sum(lengths[i] for i, _ in b)  # noqa: E731
                                  for b in batches)
    assert padding(epoch0) < 0.5 * padding([plain[k: k + 8] for k in range(0, 203, 8)])
    buckets.sampler.set_epoch(1)  # what Lightning calls, through .sampler
    assert list(buckets) != epoch0
    shards = []
    for rank in range(2):
        monkeypatch.setattr(data_module, "_rank_and_world", lambda rank=rank: (rank, 2))
        shards.append(list(data_module.LengthBuckets(lengths, batch_size=8, seed=3)))
    assert len(shards[0]) == len(shards[1]) == steps_per_epoch(203, 8, 2)
    assert {i for s in shards for b in s for i, _ in b} == set(range(203))



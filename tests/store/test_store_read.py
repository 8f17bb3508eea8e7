"""Reading a feature store: only the utterance's own shard is touched, nothing is pickled, plans by size."""
from __future__ import annotations

import os

import numpy as np
import pytest
from store_helpers import (
    FakeEncoder,
    make_rows,
    snapshot,
)

from emoadapt.errors import FeatureStoreError
from emoadapt.store.extract import extract, plan_batches
from emoadapt.store.features import FeatureStore


# --- reading -------------------------------------------------------------------------------------------------
def test_reading_one_utterance_touches_only_its_shard(tmp_path):
    rows = make_rows(tmp_path / "audio", n=8)
    extract(rows, FakeEncoder(), tmp_path / "store", batch_size=2, progress=False)
    expected = snapshot(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    target = rows[5].id
    mine = store.entry(target).shard
    for shard in (tmp_path / "store" / "shards").glob("*.npy"):
        if shard.name != mine:
            shard.unlink()  # a reader that touched another shard would now fail
    got = store.get(target)
    assert repr(got.shape).encode() + got.tobytes() == expected[target]
    assert list(store._open) == [mine]
    other = next(i for i in store.ids() if store.entry(i).shard != mine)
    with pytest.raises(FeatureStoreError, match="shard file is missing"):
        store.get(other)


def test_a_pickled_store_carries_no_frames(tmp_path):
    import pickle

    rows = make_rows(tmp_path / "audio", n=4)
    extract(rows, FakeEncoder(), tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    before = store.get(rows[0].id).copy()
    clone = pickle.loads(pickle.dumps(store))  # as DataLoader workers receive it
    assert clone._open == {} and len(store._open) == 1
    np.testing.assert_array_equal(clone.get(rows[0].id), before)
    assert isinstance(clone.get(rows[0].id), np.memmap)


def test_plan_is_sorted_by_size_and_independent_of_the_store(tmp_path):
    rows = make_rows(tmp_path / "audio", n=9)
    plan = plan_batches(rows, 4)
    assert [len(b) for b in plan] == [4, 4, 1]
    sizes = [os.path.getsize(g[0].path) for b in plan for g in b]
    assert sizes == sorted(sizes)
    assert plan_batches(reversed(rows), 4) == plan



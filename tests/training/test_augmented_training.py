"""Training on an augmented store: the training clips gain their copies, validation and test stay clean, the run and
its model record the augmentation, compare keeps augmented runs apart, a store without one is refused."""
from __future__ import annotations

import json

import pytest
from training_helpers import tiny_config

from emoadapt.errors import EmoadaptError, FeatureStoreError, MissingFeatures
from emoadapt.store.augment import Augmentation, source_id
from emoadapt.store.extract import extract
from emoadapt.store.features import FeatureStore
from emoadapt.training.crossval import run_cv
from emoadapt.training.data import FoldData
from emoadapt.training.reports import compare_runs, compare_table
from emoadapt.training.stage2 import finetune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def augmented(data, tmp_path_factory):
    corpus, store = data
    from emoadapt.encoders import load_encoder
    meta = FeatureStore(store).meta
    root = tmp_path_factory.mktemp("augmented") / "store"
    extract(corpus.rows, load_encoder(meta["encoder"]), root, layers=meta["layers"], progress=False,
            augmentation=Augmentation(copies=2, seed=0, kinds=("white noise", "babble", "telephone", "gain")))
    return root


def test_training_clips_gain_their_copies_and_validation_and_test_stay_clean(data, augmented):
    corpus, store = data
    clean = FoldData(corpus, FeatureStore(store), 1, tiny_config(), corpus.labels, 50.0)
    fold = FoldData(corpus, FeatureStore(store), 1, tiny_config(), corpus.labels, 50.0,
                    augmented=FeatureStore(augmented))
    assert len(fold.train) == 3 * len(clean.train)
    assert (fold.val.items, fold.test.items) == (clean.val.items, clean.test.items)
    copies = [item for item in fold.train.items if item[0] == 1]
    label = {i: lab for _, i, lab in clean.train.items}
    assert all(label[source_id(i)] == lab for _, i, lab in copies)  # a copy keeps its clip's label
    assert {source_id(i) for _, i, _ in copies} == set(label)  # only training clips
    assert fold.augmentation["copies"] == 2 and fold.augmentation["training_copies"] == len(copies)


def test_runs_and_models_record_the_augmentation_and_compare_keeps_them_apart(data, augmented, tmp_path):
    corpus, store = data
    results = finetune(corpus, store, 1, tmp_path / "ft", recipe="stats", config=tiny_config(), progress=False,
                       augmented=augmented)
    model = json.loads((tmp_path / "ft" / "model" / "model.json").read_text())
    assert results["augmentation"]["store"] == str(augmented) and model["augmentation"]["seed"] == 0
    for name, extra in (("plain", {}), ("aug", {"augmented": augmented})):
        run_cv(corpus, store, "stats", tmp_path / name, folds=[1, 2], config=tiny_config(), progress=False,
               log=lambda *_: None, **extra)
    rows = compare_runs([tmp_path / "plain", tmp_path / "aug"])
    assert len(rows) == 2 and "stats + augmentation ×2" in compare_table(rows)


def test_a_store_that_is_not_augmented_or_lacks_copies_is_refused(data, augmented, tmp_path):
    from dataclasses import replace
    corpus, store = data
    with pytest.raises(FeatureStoreError, match="not an augmented store"):
        finetune(corpus, store, 1, tmp_path / "a", recipe="stats", config=tiny_config(), progress=False,
                 augmented=store)
    partial = tmp_path / "partial"
    from emoadapt.encoders import load_encoder
    meta = FeatureStore(store).meta
    extract(corpus.rows[:10], load_encoder(meta["encoder"]), partial, layers=meta["layers"], progress=False,
            augmentation=Augmentation(copies=1, kinds=("white noise", "babble")))
    with pytest.raises(MissingFeatures, match="same --augment"):
        finetune(corpus, store, 1, tmp_path / "b", recipe="stats", config=tiny_config(), progress=False,
                 augmented=partial)
    with pytest.raises(EmoadaptError):
        finetune(replace(corpus), store, 1, tmp_path / "c", recipe="stats", config=tiny_config(), progress=False,
                 augmented=tmp_path / "nowhere")

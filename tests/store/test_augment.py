"""Augmented stores (emoadapt.store.augment): copies stored under their own ids, recorded in the meta, the same audio
for the same seed (so resumed = uninterrupted), another augmentation refused, babble never of the clip's speaker."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from store_helpers import FakeEncoder, make_rows, snapshot

from emoadapt.errors import EmoadaptError, StoreMismatch
from emoadapt.store import augment as augmentation_module
from emoadapt.store.augment import Augmentation, Augmenter, augmented_id, parse_augmentation, source_id
from emoadapt.store.extract import extract
from emoadapt.store.features import FeatureStore

KINDS = ("white noise", "pink noise", "reverb", "telephone", "gain", "speed")


def test_copies_are_stored_under_their_own_ids_and_the_meta_records_the_augmentation(tmp_path):
    rows = make_rows(tmp_path / "audio", n=6)
    augmentation = Augmentation(copies=2, seed=3, kinds=KINDS)
    report = extract(rows, FakeEncoder(), tmp_path / "aug", augmentation=augmentation, batch_size=4, progress=False)
    extract(rows, FakeEncoder(), tmp_path / "clean", progress=False)
    aug, clean = FeatureStore(tmp_path / "aug"), FeatureStore(tmp_path / "clean")
    assert report.extracted == 12 and not report.failures
    assert aug.ids() == sorted(augmented_id(r.id, k) for r in rows for k in (1, 2))
    assert aug.meta["augmentation"] == {"copies": 2, "seed": 3, "kinds": list(KINDS), "noise": [], "babble_pool": 100}
    assert "augmentation" not in clean.meta
    for row in rows:
        first, second = aug.get(augmented_id(row.id, 1)), aug.get(augmented_id(row.id, 2))
        assert source_id(augmented_id(row.id, 2)) == row.id and source_id(row.id) == row.id
        assert not np.array_equal(first[:, : min(first.shape[1], second.shape[1])],
                                  second[:, : min(first.shape[1], second.shape[1])])  # two different conditions
        n = min(first.shape[1], clean.get(row.id).shape[1])
        assert not np.allclose(first[:, :n], clean.get(row.id)[:, :n], atol=1e-3)  # not the clean audio


def test_the_same_seed_makes_the_same_store_and_an_interrupted_run_resumes_to_it(tmp_path):
    rows = make_rows(tmp_path / "audio", n=8)
    augmentation = Augmentation(copies=1, seed=0, kinds=KINDS)
    extract(rows, FakeEncoder(), tmp_path / "one", augmentation=augmentation, batch_size=2, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        extract(rows, FakeEncoder(fail_after=2), tmp_path / "two", augmentation=augmentation, batch_size=2,
                progress=False)
    assert 0 < len(FeatureStore(tmp_path / "two")) < len(rows)
    again = extract(rows, FakeEncoder(), tmp_path / "two", augmentation=augmentation, batch_size=2, progress=False)
    assert again.skipped > 0 and snapshot(tmp_path / "one") == snapshot(tmp_path / "two")
    extract(rows, FakeEncoder(), tmp_path / "other", augmentation=replace(augmentation, seed=1), progress=False)
    assert snapshot(tmp_path / "other") != snapshot(tmp_path / "one")


def test_a_store_holds_one_augmentation(tmp_path):
    rows = make_rows(tmp_path / "audio", n=3)
    extract(rows, FakeEncoder(), tmp_path / "aug", augmentation=Augmentation(kinds=KINDS), progress=False)
    with pytest.raises(StoreMismatch, match="augmentation"):
        extract(rows, FakeEncoder(), tmp_path / "aug", augmentation=Augmentation(seed=9, kinds=KINDS), progress=False)
    with pytest.raises(StoreMismatch, match="augmentation"):
        extract(rows, FakeEncoder(), tmp_path / "aug", progress=False)  # clean clips into an augmented store


def test_babble_is_never_made_of_the_clip_own_speaker(tmp_path, monkeypatch):
    rows = [replace(r, speaker=f"s{i % 3}") for i, r in enumerate(make_rows(tmp_path / "audio", n=9))]
    loaded = {r.path: np.full(1600, i, np.float32) for i, r in enumerate(rows)}  # each clip recognisable
    augmenter = Augmenter.for_rows(Augmentation(kinds=("babble",)), rows, loaded.__getitem__)
    heard = []
    import emoadapt.conditions as conditions
    monkeypatch.setattr(conditions, "augment", lambda wave, kinds, rng, sources: heard.append(sources) or (wave, ""))
    for row in augmentation_module.augmented_rows(rows, augmenter.augmentation):
        heard.clear()
        augmenter(np.zeros(1600, np.float32), row)
        own = {float(loaded[r.path][0]) for r in rows if r.speaker == row.speaker}
        values = {float(w[0]) for w in heard[0].speech}
        assert values and not values & own


def test_bad_augmentation_settings_are_refused_with_the_reason(tmp_path):
    assert parse_augmentation("copies=2,seed=5,kinds=white noise+gain") == Augmentation(
        copies=2, seed=5, kinds=("white noise", "gain"))
    for text, reason in (("copies=two", "copies=N"), ("colour=red", "copies=N"), ("copies=0", "at least 1"),
                         ("kinds=thunder", "unknown"), ("kinds=noise recordings", "--augment-noise")):
        with pytest.raises(EmoadaptError, match=reason):
            parse_augmentation(text)
    with pytest.raises(EmoadaptError, match="no such file"):
        parse_augmentation("", [str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmoadaptError, match="no audio files"):
        parse_augmentation("", [str(tmp_path / "empty")])
    rows = make_rows(tmp_path / "audio", n=2)
    with pytest.raises(EmoadaptError, match="two speakers"):
        extract(rows, FakeEncoder(), tmp_path / "s", augmentation=Augmentation(kinds=("babble",)), progress=False)

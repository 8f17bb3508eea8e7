"""Extraction after a crash or SIGKILL, and with several ranks: resumed equals uninterrupted."""
from __future__ import annotations

import os
import signal
import time

import pytest
from store_helpers import (
    FakeEncoder,
    _spawn,
    committed_parts,
    make_rows,
    snapshot,
)

from emoadapt.errors import FeatureStoreError
from emoadapt.store import extract as extraction
from emoadapt.store.extract import extract
from emoadapt.store.features import FeatureStore


# --- crashes and kills ---------------------------------------------------------------------------------------
def test_encoder_crash_then_resume_equals_uninterrupted(tmp_path):
    rows = make_rows(tmp_path / "audio", n=14)
    extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "ref", batch_size=3, progress=False)

    with pytest.raises(RuntimeError, match="simulated encoder crash"):
        extract(rows, FakeEncoder(batch_sensitive=True, fail_after=2), tmp_path / "store", batch_size=3,
                progress=False)
    assert len(FeatureStore(tmp_path / "store")) == 6  # the two encoded batches were committed
    resumed = FakeEncoder(batch_sensitive=True)
    report = extract(rows, resumed, tmp_path / "store", batch_size=3, progress=False)
    assert report.skipped == 6 and report.extracted == 8 and resumed.batch_sizes == [3, 3, 2]
    assert snapshot(tmp_path / "store") == snapshot(tmp_path / "ref")


def test_death_between_shard_and_index_leaves_nothing_visible(tmp_path, monkeypatch):
    rows = make_rows(tmp_path / "audio", n=8)
    extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "ref", batch_size=2, progress=False)

    real_replace, seen = os.replace, []

    def dying_replace(src, dst):  # the process "dies" right before committing the 3rd index part
        if str(dst).endswith(".json"):
            seen.append(dst)
            if len(seen) == 3:
                raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(extraction.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "store", batch_size=2, progress=False)
    monkeypatch.setattr(extraction.os, "replace", real_replace)

    shards = tmp_path / "store" / "shards"
    assert (shards / "r0-000002.npy").exists() and not (shards / "r0-000002.json").exists()  # the orphan
    assert all(p.name.startswith(".") for p in shards.iterdir() if ".tmp" in p.name)  # any temp file is hidden
    store = FeatureStore(tmp_path / "store")
    assert len(store) == 4 and all(store.get(i).size for i in store.ids())
    extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "store", batch_size=2, progress=False)
    assert snapshot(tmp_path / "store") == snapshot(tmp_path / "ref")
    assert not any(".tmp" in p.name for p in shards.iterdir())  # the rank's leftovers were cleaned up
    assert sorted(p.stem for p in shards.glob("*.npy")) == sorted(p.stem for p in shards.glob("*.json"))


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    rows = make_rows(tmp_path / "audio", n=24)
    extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "ref", batch_size=2, progress=False)
    reference = snapshot(tmp_path / "ref")

    proc = _spawn(rows, tmp_path / "store", delay=0.1)
    deadline = time.time() + 60
    while len(committed_parts(tmp_path / "store")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.037)  # somewhere inside a later batch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()

    store = FeatureStore(tmp_path / "store")
    assert 6 <= len(store) < len(rows)
    assert all(reference[i] == repr(store.get(i).shape).encode() + store.get(i).tobytes() for i in store.ids())
    resumed = FakeEncoder(batch_sensitive=True)
    extract(rows, resumed, tmp_path / "store", batch_size=2, progress=False)
    assert sum(resumed.batch_sizes) == len(rows) - len(store)
    assert snapshot(tmp_path / "store") == reference


# --- ranks ---------------------------------------------------------------------------------------------------
def test_two_ranks_in_turn_equal_one_process(tmp_path, monkeypatch):
    rows = make_rows(tmp_path / "audio", n=11)
    extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "ref", batch_size=2, progress=False)
    r0 = extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "store", batch_size=2, rank=0, world_size=2,
                 progress=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's variables give the default rank
    r1 = extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "store", batch_size=2, progress=False)
    assert (r0.rank, r1.rank, r1.world_size) == (0, 1, 2)
    assert (r0.planned, r1.planned, r0.extracted + r1.extracted) == (6, 5, 11)
    names = {p.name[:2] for p in committed_parts(tmp_path / "store")}
    assert names == {"r0", "r1"}
    assert snapshot(tmp_path / "store") == snapshot(tmp_path / "ref")
    with pytest.raises(FeatureStoreError, match="rank 2 is not in 0..1"):
        extract(rows, FakeEncoder(), tmp_path / "x", rank=2, world_size=2, progress=False)


def test_two_rank_processes_at_once_equal_one_process(tmp_path):
    rows = make_rows(tmp_path / "audio", n=16)
    extract(rows, FakeEncoder(batch_sensitive=True), tmp_path / "ref", batch_size=2, progress=False)
    procs = [_spawn(rows, tmp_path / "store", rank=r, world_size=2, delay=0.02) for r in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    assert snapshot(tmp_path / "store") == snapshot(tmp_path / "ref")


def test_one_rank_cannot_have_two_writers(tmp_path):
    rows = make_rows(tmp_path / "audio", n=2)
    (tmp_path / "store" / "shards").mkdir(parents=True)
    with extraction._ShardWriter(tmp_path / "store" / "shards", rank=0):
        with pytest.raises(FeatureStoreError, match="already writing rank 0"):
            extract(rows, FakeEncoder(), tmp_path / "store", progress=False)



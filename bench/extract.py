"""How close does `extract` (decode + encode + write) come to the bare encoder forward?

    python bench/extract.py [--encoder whisper-base] [--limit 200] [--batch-size 8] [--data PATH] [--out JSON]
                            [--augment copies=1,seed=0]

On the first N RAVDESS clips, in one run: (a) the encoder alone on audio already decoded in memory, in the same
batches `extract` makes, and (b) the full `extract` (decode + encode + fp16 + write + fsync) into a temp store.
They alternate, a b a ... b a (R = --repeats extracts), and medians are compared, which damps drift from other
load on the machine. Prints clips/s of both, the ratio (b)/(a) (goal >= 0.9) and the store's bytes per second of
audio, and writes them as JSON (default docs/bench_extract.json) with the encoder fingerprint, machine and commit.
``--augment``: (b) extracts an augmented copy of each clip instead (``extract --augment``, the conditions drawn and
applied in the decoding thread; noise recordings from ``fillets-ng-data`` when Debian's package is there), against
the same bare forward on the clean audio (default JSON docs/bench_extract_augmented.json).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from emoadapt.audio import load_audio
from emoadapt.corpora.manifest import Utterance
from emoadapt.encoders import DEFAULT_ENCODER, SAMPLE_RATE, load_encoder
from emoadapt.store.extract import extract, plan_batches
from emoadapt.cli.paths import shared_corpus
from emoadapt.provenance import git_commit  # re-exported for the other benchmarks

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.9


def ravdess_rows(folder: Path, limit: int) -> list[Utterance]:
    with open(folder / "manifest.csv", newline="") as f:
        table = list(csv.DictReader(f))[:limit]
    return [Utterance(id=r["path"], path=str(folder / r["path"]), label=r["label"], speaker=r["speaker"])
            for r in table]


def bare_encoder(encoder, batches) -> float:
    """Seconds for the encoder forward alone over pre-decoded batches."""
    t0 = time.perf_counter()
    for waves in batches:
        encoder.encode(waves)
    return time.perf_counter() - t0


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default=DEFAULT_ENCODER)
    p.add_argument("--limit", type=int, default=200, help="first N clips of RAVDESS (default 200)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", help="the ravdess folder, or a data root holding it (default: emoadapt.paths)")
    p.add_argument("--repeats", type=int, default=2, help="extract runs, each between two bare runs (default 2)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, = cores); 1 keeps numbers "
                                                "meaningful while other work shares the machine")
    p.add_argument("--out")
    p.add_argument("--augment", metavar="copies=N,seed=N", help="extract augmented copies (see extract --augment)")
    args = p.parse_args(argv)
    args.out = args.out or str(REPO / "docs" / ("bench_extract_augmented.json" if args.augment
                                                 else "bench_extract.json"))
    augmentation = None
    if args.augment:
        from emoadapt.store.augment import parse_augmentation
        effects = Path("/usr/share/games/fillets-ng/sound/share")
        augmentation = parse_augmentation(args.augment, [str(effects)] if effects.is_dir() else [])

    folder = Path(args.data) if args.data else shared_corpus("ravdess")
    if folder is not None and (folder / "ravdess").is_dir():
        folder = folder / "ravdess"
    if folder is None or not (folder / "manifest.csv").is_file():
        print(f"bench/extract.py: no RAVDESS copy found ({folder}); pass --data PATH", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = ravdess_rows(folder, args.limit)
    load_before = os.getloadavg()  # other work on the machine skews both timings: recorded to judge the numbers
    encoder = load_encoder(args.encoder)

    # (a) the bare forward: same batches as extract, audio decoded beforehand (not timed)
    batches = [[load_audio(g[0].path) for g in batch] for batch in plan_batches(rows, args.batch_size)]
    audio_seconds = sum(len(w) for b in batches for w in b) / SAMPLE_RATE
    encoder.encode(batches[0])  # warm-up: first-call allocations and kernel selection
    bare_runs, extract_runs = [bare_encoder(encoder, batches)], []
    for _ in range(max(1, args.repeats)):
        # (b) the full extract: decode + encode + fp16 + write + fsync into a fresh store
        with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
            t0 = time.perf_counter()
            report = extract(rows, encoder, Path(tmp) / "store", batch_size=args.batch_size, progress=False,
                             augmentation=augmentation)
            extract_runs.append(time.perf_counter() - t0)
            store_bytes = sum(f.stat().st_size for f in (Path(tmp) / "store").rglob("*") if f.is_file())
        if report.failures or report.extracted != len(rows) * (augmentation.copies if augmentation else 1):
            print(report, file=sys.stderr)
            return 1
        bare_runs.append(bare_encoder(encoder, batches))

    bare, full = statistics.median(bare_runs), statistics.median(extract_runs)
    result = {
        "what": "extract (decode + encode + write) vs the bare encoder forward, same clips and batches"
                + ("; extract makes augmented copies (decode + augment + encode + write)" if augmentation else ""),
        "augmentation": augmentation.to_meta() if augmentation else None,
        "encoder": encoder.name, "fingerprint": encoder.fingerprint, "options": encoder.options,
        "layers": "all", "hidden_states": encoder.num_layers + 1, "dim": encoder.dim,
        "corpus": "ravdess", "clips": len(rows), "audio_seconds": round(audio_seconds, 2),
        "batch_size": args.batch_size,
        "bare_seconds": [round(t, 3) for t in bare_runs],
        "extract_seconds": [round(t, 3) for t in extract_runs],
        "bare_clips_per_second": round(len(rows) / bare, 2),
        "extract_clips_per_second": round(len(rows) / full, 2),
        "ratio": round(bare / full, 3), "goal": GOAL, "repeats": len(extract_runs),
        "store_bytes": store_bytes,
        "store_bytes_per_audio_second": round(store_bytes / audio_seconds),
        "machine": machine_info(), "loadavg_1_5_15min": {"before": [round(x, 2) for x in load_before],
                                                         "after": [round(x, 2) for x in os.getloadavg()]},
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"{encoder.fingerprint}: {len(rows)} clips, {audio_seconds:.0f} s of audio, batch {args.batch_size}")
    print(f"  (a) bare encoder   {result['bare_clips_per_second']:7.2f} clips/s  "
          f"(median of runs: {', '.join(f'{t:.2f}' for t in bare_runs)} s)")
    print(f"  (b) full extract   {result['extract_clips_per_second']:7.2f} clips/s  "
          f"(median of runs: {', '.join(f'{t:.2f}' for t in extract_runs)} s)")
    print(f"  ratio (b)/(a)      {result['ratio']:7.3f}  (goal >= {GOAL})")
    print(f"  store              {store_bytes / 1e6:.1f} MB, {result['store_bytes_per_audio_second'] / 1e3:.1f} kB "
          f"per second of audio")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

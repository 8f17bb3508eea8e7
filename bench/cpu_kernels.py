"""Why `make demo`'s fold-1 figure differs between machines: the features of the same clips with 1 and 2 threads,
and with MKL's auto-dispatched kernels against its portable ones (``MKL_CBWR=COMPATIBLE``), each in a fresh process.

    python bench/cpu_kernels.py [--clips 20] [--out docs/bench_cpu_kernels.json]

Prints the share of fp16 feature values that differ from the default run (Whisper-base over RAVDESS clips spread over
the corpus). Threads changing nothing and the kernels changing some values means the figure follows the CPU's
instruction set (AVX2, AVX-512, AMX), not the machine's load or core count.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from extract import git_commit, machine_info  # noqa: E402  (bench/ is not a package)

ENCODE = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from emoadapt.audio import load_audio
from emoadapt.cli.paths import shared_corpus
from emoadapt.corpora import load_corpus
from emoadapt.encoders import load_encoder
corpus = load_corpus(shared_corpus("ravdess"))
rows = corpus.rows[:: max(1, len(corpus.rows) // int(sys.argv[3]))][: int(sys.argv[3])]
encoder = load_encoder("whisper-base")
waves = [load_audio(u.path) for u in rows]
np.savez(sys.argv[2], *[h.half().numpy() for h in encoder.encode(waves)])
"""


def encode(threads: int, path: Path, clips: int, env: dict | None = None) -> dict[str, np.ndarray]:
    subprocess.run([sys.executable, "-c", ENCODE, str(threads), str(path), str(clips)], check=True,
                   env={**os.environ, **(env or {})})
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def cpu_features() -> list[str]:
    """The instruction sets MKL dispatches on, as /proc/cpuinfo lists them."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), []) if Path("/proc/cpuinfo").exists() else []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


def differing(a: dict, b: dict) -> float:
    return sum(int((a[k] != b[k]).sum()) for k in a) / sum(a[k].size for k in a)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--out", default=str(REPO / "docs" / "bench_cpu_kernels.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        default = encode(2, tmp / "default.npz", args.clips)
        one_thread = encode(1, tmp / "one.npz", args.clips)
        portable = encode(2, tmp / "portable.npz", args.clips, {"MKL_CBWR": "COMPATIBLE"})
    result = {"clips": args.clips, "values": int(sum(v.size for v in default.values())),
              "differing_share": {"1 thread vs 2": differing(default, one_thread),
                                  "MKL_CBWR=COMPATIBLE vs auto-dispatch": differing(default, portable)},
              "cpu_features": cpu_features(), "machine": machine_info(), "commit": git_commit(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"CPU: {result['machine']['cpu']}; {' '.join(result['cpu_features'])}")
    for what, share in result["differing_share"].items():
        print(f"{what}: {100 * share:.2f} % of {result['values']} fp16 feature values differ")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

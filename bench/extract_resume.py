"""Kill-and-resume check of `emoadapt extract` on a real corpus, as a user would meet it.

Runs the CLI once uninterrupted into store A; runs it into store B, SIGKILLs it midway, re-runs it to the end;
then compares every utterance of A and B bit for bit. Prints the figures and writes them as JSON.

    python bench/extract_resume.py [--encoder whisper-base] [--data PATH] [--kill-after 60] [--out docs/extract_resume.json]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import git_commit  # noqa: E402  (bench/ is not a package)

from emoadapt.atomic import atomic_write_json as write_json
from emoadapt.store.features import FeatureStore
from emoadapt.cli.paths import shared_corpus


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="whisper-base")
    parser.add_argument("--data", help="corpus folder (default: the shared RAVDESS copy)")
    parser.add_argument("--kill-after", type=float, default=60.0, help="seconds before SIGKILL of the second run")
    parser.add_argument("--out", default="docs/extract_resume.json")
    args = parser.parse_args()
    corpus = Path(args.data) if args.data else shared_corpus("ravdess")
    if corpus is None:
        parser.error("no corpus: pass --data or set EMOADAPT_DATA")
    cli = [sys.executable, "-m", "emoadapt.cli", "extract", str(corpus), "--encoder", args.encoder, "--no-progress"]

    with tempfile.TemporaryDirectory(prefix="emoadapt-resume-") as tmp:
        store_a, store_b = Path(tmp) / "a", Path(tmp) / "b"
        seconds_a = run(cli + ["--store", str(store_a)])

        victim = subprocess.Popen(cli + ["--store", str(store_b)], start_new_session=True)
        time.sleep(args.kill_after)
        killed_while_running = victim.poll() is None
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        stored_at_kill = len(FeatureStore(store_b))
        leftovers = sorted(p.name for p in (store_b / "shards").iterdir() if ".tmp" in p.name)
        seconds_resume = run(cli + ["--store", str(store_b)])

        a, b = FeatureStore(store_a), FeatureStore(store_b)
        differing = [i for i in a.ids() if i not in b or not np.array_equal(a.get(i), b.get(i))]
        result = {
            "what": "emoadapt extract killed (SIGKILL) midway, re-run, compared bit for bit with an uninterrupted run",
            "corpus": str(corpus), "encoder": args.encoder, "fingerprint": a.meta["fingerprint"],
            "utterances_uninterrupted": len(a), "utterances_resumed": len(b),
            "killed_while_running": killed_while_running, "stored_when_killed": stored_at_kill,
            "temp_files_left_by_kill": leftovers,
            "seconds_uninterrupted": round(seconds_a, 1), "seconds_resume_run": round(seconds_resume, 1),
            "differing_utterances": len(differing), "identical": not differing and len(a) == len(b),
            "git_commit": git_commit(),
        }
    for key, value in result.items():
        print(f"{key}: {value}")
    write_json(result, args.out)
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())

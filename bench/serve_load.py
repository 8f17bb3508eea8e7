"""A bounded load test of `emoadapt serve` on 127.0.0.1: good and bad requests mixed, many at once.

    python bench/serve_load.py [--model default] [--requests 2000] [--concurrency 16] [--good 0.25]
                               [--out docs/bench_serve.json]

Starts a real server process (uvicorn), waits for /health, then sends ``--requests`` POST /predict with
``--concurrency`` in flight: a share ``--good`` are real RAVDESS clips (multipart uploads or raw bodies), the rest are
bad in five ways (an upload over the size limit, audio over the duration limit, bytes that are not audio, an empty
body, a form without the ``file`` field). Reports requests/s, latency p50 / p99 per kind, the status codes (goal: no
5xx; 429 means the server's concurrency limit said "busy", which is its answer to overload), and the server's
resident memory before the first request, after half of them, after the last and after a pause (goal: back to its
baseline, within 10 %; and no growth over the second half, when every kind of request has warmed what it uses).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import git_commit, machine_info  # noqa: E402  (bench/ is not a package)

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wav(seconds: float) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def plan(n: int, good_share: float, clips: list[Path], seed: int = 0) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    long_audio, big = wav(40.0), b"\0" * (3 * 2**20)
    bad = [("too_large", {"content": big}), ("too_long", {"content": long_audio}),
           ("not_audio", {"files": {"file": ("notes.txt", b"not audio at all " * 64)}}),
           ("empty", {"content": b""}), ("no_file_field", {"files": {"audio": ("a.wav", wav(1.0))}})]
    requests = []
    for _ in range(n):
        if rng.random() < good_share:
            clip = rng.choice(clips)
            body = clip.read_bytes()
            requests.append(("good", {"files": {"file": (clip.name, body)}} if rng.random() < 0.5 else
                             {"content": body, "headers": {"X-Filename": clip.name}}))
        else:
            requests.append(rng.choice(bad))
    return requests


async def run(url: str, requests, concurrency: int) -> list[tuple[str, int, float]]:
    import httpx
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(kind, kwargs):
            async with gate:
                t0 = time.perf_counter()
                try:
                    status = (await client.post(url + "/predict", **kwargs)).status_code
                except httpx.HTTPError as error:  # a refused upload may close the connection early
                    status = f"error {type(error).__name__}"
                return kind, status, time.perf_counter() - t0
        return await asyncio.gather(*(one(k, kw) for k, kw in requests))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=2000, help="requests per round")
    p.add_argument("--rounds", type=int, default=1, help="rounds of --requests; the server's RSS after each")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--good", type=float, default=0.25, help="share of requests with usable audio")
    p.add_argument("--max-concurrent", type=int, default=2, help="the server's own limit on recordings in work")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", help="JSON path (default docs/bench_serve.json)")
    args = p.parse_args(argv)
    from emoadapt.cli.paths import shared_corpus
    ravdess = shared_corpus("ravdess")
    clips = sorted((ravdess / "Actor_01").iterdir())[:20]
    server = subprocess.Popen([sys.executable, "-m", "emoadapt.cli", "serve", "--model", args.model, "--port",
                               str(args.port), "--max-upload-mb", "2", "--max-seconds", "30", "--max-concurrent",
                               str(args.max_concurrent)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{args.port}"
    try:
        import httpx
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
        httpx.post(url + "/predict", files={"file": (clips[0].name, clips[0].read_bytes())}, timeout=120)  # warm-up
        before = rss_mib(server.pid)
        requests = plan(args.requests, args.good, clips)
        half = len(requests) // 2
        t0 = time.perf_counter()
        results = asyncio.run(run(url, requests[:half], args.concurrency))
        middle = rss_mib(server.pid)  # warm: every kind of request has run hundreds of times
        results += asyncio.run(run(url, requests[half:], args.concurrency))
        rounds = [rss_mib(server.pid)]
        for _ in range(args.rounds - 1):  # the same mix again: a server that levels off stays where it is
            results += asyncio.run(run(url, requests, args.concurrency))
            rounds.append(rss_mib(server.pid))
        wall = time.perf_counter() - t0
        after = rss_mib(server.pid)
        time.sleep(5)
        settled = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    codes = Counter(str(s) for _, s, _ in results)
    by_kind = {}
    for kind in sorted({k for k, _, _ in results}):
        times = sorted(t for k, _, t in results if k == kind)
        by_kind[kind] = {"n": len(times), "p50_ms": round(1000 * statistics.median(times), 1),
                         "p99_ms": round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 1),
                         "statuses": dict(Counter(str(s) for k, s, _ in results if k == kind))}
    all_times = sorted(t for _, _, t in results)
    server_errors = sum(n for code, n in codes.items() if code.startswith("5"))
    result = {
        "requests": len(results), "concurrency": args.concurrency, "good_share": args.good,
        "server_max_concurrent": args.max_concurrent, "model": args.model, "seconds": round(wall, 2),
        "requests_per_second": round(len(results) / wall, 1),
        "p50_ms": round(1000 * statistics.median(all_times), 1),
        "p99_ms": round(1000 * all_times[int(0.99 * (len(all_times) - 1))], 1),
        "statuses": dict(codes), "server_errors_5xx": server_errors, "by_kind": by_kind,
        "rss_mib": {"before": round(before, 1), "after_half": round(middle, 1), "after": round(after, 1),
                    "after_5_s": round(settled, 1)},
        "second_half_growth": round(rounds[0] / middle - 1, 4),
        "rounds": args.rounds, "rss_mib_after_each_round": [round(r, 1) for r in rounds],
        "growth_after_the_first_round": round(rounds[-1] / rounds[0] - 1, 4),
        "machine": machine_info(), "loadavg": os.getloadavg(), "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"bench/serve_load.py: {len(results)} requests, {args.concurrency} at once, {args.good:.0%} good, "
          f"server --max-concurrent {args.max_concurrent}")
    print(f"  {result['requests_per_second']} requests/s over {wall:.1f} s; p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms")
    print(f"  statuses {dict(codes)}; 5xx: {server_errors} (goal 0: {'MET' if server_errors == 0 else 'NOT MET'})")
    for kind, row in by_kind.items():
        print(f"    {kind:<14} n={row['n']:<5} p50 {row['p50_ms']:>8} ms  p99 {row['p99_ms']:>8} ms  {row['statuses']}")
    print(f"  server RSS (MiB): before {before:.1f}, after half the requests {middle:.1f}, after all {after:.1f}, "
          f"5 s later {settled:.1f}; growth over the second half of round 1 {100 * (rounds[0] / middle - 1):+.1f} % (a leak grows "
          f"in both halves; warming caches only in the first)")
    if args.rounds > 1:
        print(f"  RSS after each round of {args.requests}: {', '.join(f'{r:.1f}' for r in rounds)} MiB; after the first "
              f"round {100 * (rounds[-1] / rounds[0] - 1):+.1f} %")
    out = args.out or str(REPO / "docs" / "bench_serve.json")
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out}")
    return 0 if server_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

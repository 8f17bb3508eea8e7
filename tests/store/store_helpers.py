"""Helpers of the feature-store tests. `FakeEncoder` is a deterministic stand-in whose frames are simple functions of
the waveform; with ``batch_sensitive=True`` its output also depends on the batch it was encoded in (as padding does
for real encoders in the last bits), so "resumed == uninterrupted" checks that batch composition never changes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from emoadapt.corpora.manifest import Utterance
from emoadapt.store.extract import extract
from emoadapt.store.features import FeatureStore

HOP = 320  # samples per frame: 50 Hz at 16 kHz
HERE = Path(__file__).resolve().parent


class FakeEncoder:
    """Implements the Encoder protocol. Hidden state l of frame t = stats of samples [t*HOP, (t+1)*HOP) * (l+1) + l."""

    name = "fake"
    num_layers = 3
    dim = 4
    frame_rate = 50.0
    min_samples = HOP

    def __init__(self, tag="a", *, batch_sensitive=False, fail_after=None, delay=0.0):
        self.options = {"tag": tag, "batch_sensitive": batch_sensitive}
        self.fingerprint = f"fake-{tag}-{int(batch_sensitive)}"
        self.batch_sensitive, self.fail_after, self.delay = batch_sensitive, fail_after, delay
        self.calls = 0
        self.batch_sizes: list[int] = []

    def num_frames(self, num_samples):
        return num_samples // HOP

    def encode(self, waveforms):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated encoder crash")
        time.sleep(self.delay)
        self.batch_sizes.append(len(waveforms))
        # a batch-dependent shift, large enough to survive fp16 rounding
        shift = 0.01 * len(waveforms) + 0.001 * max(len(w) for w in waveforms) / HOP if self.batch_sensitive else 0.0
        out = []
        for w in waveforms:
            w = torch.as_tensor(np.asarray(w, dtype=np.float32))
            t = len(w) // HOP
            frames = w[: t * HOP].reshape(t, HOP)
            base = torch.stack([frames.mean(1), frames.std(1), frames.abs().amax(1), frames[:, 0]], -1)  # (T, D)
            out.append(torch.stack([base * (l + 1) + l for l in range(self.num_layers + 1)]) + shift)  # (L+1, T, D)
        return out


def write_clip(path: Path, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.3 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32), 16_000, subtype="PCM_16")


def make_rows(folder: Path, n: int = 12, seed: int = 0) -> list[Utterance]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / f"clip{i:02d}.wav"
        write_clip(path, float(rng.uniform(0.1, 0.6)), seed * 1000 + i)
        rows.append(Utterance(id=f"u{i:02d}", path=str(path), label=None, speaker=None))
    return rows


def snapshot(root) -> dict[str, bytes]:
    """Every utterance's array as bytes (shape included): equal snapshots = bit-identical stores."""
    store = FeatureStore(root)
    return {i: repr(store.get(i).shape).encode() + store.get(i).tobytes() for i in store.ids()}


def committed_parts(root) -> list[Path]:
    return sorted((Path(root) / "shards").glob("r*-*.json"))



def _worker(spec: str) -> None:
    """Subprocess entry: extract with a FakeEncoder as described by a JSON spec."""
    s = json.loads(spec)
    rows = [Utterance(id=i, path=p, label=None, speaker=None) for i, p in s["rows"]]
    extract(rows, FakeEncoder(batch_sensitive=True, delay=s["delay"]), s["root"], batch_size=s["batch_size"],
            rank=s.get("rank"), world_size=s.get("world_size"), progress=False)


def _spawn(rows, root, *, delay=0.0, batch_size=2, rank=None, world_size=None) -> subprocess.Popen:
    spec = json.dumps({"rows": [(r.id, r.path) for r in rows], "root": str(root), "delay": delay,
                       "batch_size": batch_size, "rank": rank, "world_size": world_size})
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import store_helpers; store_helpers._worker(sys.argv[1])"
    return subprocess.Popen([sys.executable, "-c", code, spec], stderr=subprocess.PIPE)


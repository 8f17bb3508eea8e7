"""Extraction: run a frozen encoder once over a corpus and commit its hidden states to a feature store
(:mod:`emoadapt.features` describes the folder and reads it).

Crash safety: a batch is written to temp names, fsynced, then renamed; its ``.json`` part is renamed last and is
the commit. Readers only see committed parts, so a run killed at any point loses at most its in-flight batches.
Batches are planned from the full row list (sorted by audio size, then path), and only batches with work left
are run, so a resumed run encodes exactly the batches an uninterrupted one would have and the stores are
bit-identical. Ranks (``rank``/``world_size``, or torchrun's RANK/WORLD_SIZE) take batch ``i`` when
``i % world_size == rank`` and write shards named by their rank; the index merges all parts on read.
"""
from __future__ import annotations

import json
import os
import time
import uuid
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_text, fsync_file, remove_stale_temp_files
from ..encoders.base import SAMPLE_RATE
from ..errors import AudioError, EncoderError, FeatureStoreError, StoreMismatch, TooShortAudio
from ..progress import progress_bar
from .features import (DTYPE, FORMAT, INDEX_PART, VERSION, Failure, FeatureStore, audio_identity, file_stat,
                       read_meta)

# meta keys that must agree before a run may write into an existing store
_BINDING_KEYS = ("format", "version", "encoder", "fingerprint", "options", "num_hidden_states", "layers", "dim",
                 "frame_rate", "dtype", "augmentation")


@dataclass
class ExtractReport:
    store: str
    rank: int
    world_size: int
    planned: int                     # utterances in this rank's share of the plan
    extracted: int = 0               # encoded and committed in this run
    skipped: int = 0                 # already stored and current (or failed before on unchanged audio)
    failures: list[Failure] = field(default_factory=list)  # this rank's share: new and still-standing failures
    seconds: float = 0.0
    audio_seconds: float = 0.0       # audio encoded in this run
    shards: int = 0                  # shards written in this run

    @property
    def utterances_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        who = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        lines = [f"feature store {self.store}{who}: extracted {self.extracted}, skipped {self.skipped} already "
                 f"current, failed {len(self.failures)}; {self.seconds:.1f} s, "
                 f"{self.utterances_per_second:.1f} utterances/s, "
                 f"{self.audio_seconds / max(self.seconds, 1e-9):.0f}x real time"]
        for f in self.failures[:5]:
            lines.append(f"  failed: {f.id}: {f.error}")  # the error names the file
        if len(self.failures) > 5:
            lines.append(f"  ... and {len(self.failures) - 5} more")
        if self.failures:
            lines.append(f"  all failures: {Path(self.store) / 'failures.jsonl'}")
        return "\n".join(lines)


def plan_batches(rows: Iterable, batch_size: int) -> list[list[list]]:
    """Deterministic batches from the full row list: each batch is a list of groups of rows sharing one audio path
    (decoded and encoded once, stored under every id). Sorted by audio size (similar lengths pad little), then path.

    The plan depends only on the rows and their audio files, never on what is already stored, so a resumed or
    split run encodes exactly the same batches as one uninterrupted run.
    """
    if batch_size < 1:
        raise FeatureStoreError(None, f"batch_size must be at least 1, got {batch_size}")
    groups: dict[tuple[str, int], list] = {}
    seen: set[str] = set()
    for row in rows:
        if row.id in seen:
            raise FeatureStoreError(row.path, f"utterance id {row.id!r} appears twice in the rows; ids must be unique")
        seen.add(row.id)
        groups.setdefault((str(row.path), getattr(row, "copy", 0)), []).append(row)  # augmented copies differ
    stats = {path: file_stat(path) for path, _ in groups}
    order = sorted(groups, key=lambda key: (stats[key[0]][0] if stats[key[0]] else -1, key))
    return [[groups[p] for p in order[i: i + batch_size]] for i in range(0, len(order), batch_size)]


MAX_SECONDS = 1200.0  # as predict's: emotion corpora hold utterances of seconds, not recordings of hours


def extract(rows: Iterable, encoder, root: str | os.PathLike, *, layers: Sequence[int] | None = None,
            batch_size: int = 8, rank: int | None = None, world_size: int | None = None, progress: bool = True,
            retry_failed: bool = False, prefetch: int = 2, max_seconds: float | None = MAX_SECONDS,
            augmentation=None) -> ExtractReport:
    """Encode every row not yet stored (or whose audio changed) and commit it to the store at ``root``.

    ``encoder`` follows :class:`emoadapt.encoders.base.Encoder` (or is a spec for ``load_encoder``); ``layers``
    are hidden-state indices to keep (negative counts from the end; default all). Unreadable or too-short audio
    is skipped and recorded (``report.failures``, ``failures.jsonl``); unchanged failed audio is not retried
    unless ``retry_failed``. Decoding (``prefetch`` batches ahead) and shard writing run in background threads
    so the encoder stays busy. With several ranks, call ``FeatureStore(root)`` only after all ranks finished.
    ``max_seconds``: a longer file is a listed failure, refused from its header before it is decoded (an hour of
    audio would hold gigabytes of hidden states); None: no limit. ``augmentation``
    (:class:`emoadapt.store.augment.Augmentation`): store augmented copies of the rows instead of the rows (in the
    decoding thread, so the encoder stays busy), recorded in the store's meta.
    """
    from ..audio import load_audio  # imported here: reading a store must not need the audio stack

    t0 = time.perf_counter()
    if isinstance(encoder, str):
        from ..encoders import load_encoder
        encoder = load_encoder(encoder)
    rank, world_size = _rank_and_world_size(rank, world_size)
    root = Path(root)
    augmenter = None
    if augmentation is not None:
        from .augment import Augmenter, augmented_rows
        rows = list(rows)
        augmenter = Augmenter.for_rows(augmentation, rows, lambda path: load_audio(path, max_seconds=max_seconds))
        rows = augmented_rows(rows, augmenter.augmentation)
    meta = _bind_meta(root, encoder, layers, augmenter.augmentation.to_meta() if augmenter else None)
    store = FeatureStore(root)
    keep = meta["layers"]

    plan = plan_batches(rows, batch_size)
    todo, report = [], ExtractReport(str(root), rank, world_size, planned=0)
    for index, batch in enumerate(plan):
        if index % world_size != rank:
            continue
        work = []
        for group in batch:
            report.planned += len(group)
            state = _group_state(store, group, retry_failed)
            if state is None:
                work.append(group)
            else:
                report.skipped += len(group)
                report.failures.extend(state)
        if work:
            todo.append(work)

    writer = _ShardWriter(store.shard_dir, rank)
    bar = _progress_bar(sum(len(g) for b in todo for g in b), rank, world_size, progress)

    def decode(batch):  # background thread: stat, then decode; per-file errors become failures, never crashes
        out = []
        for group in batch:
            path = group[0].path
            stat = audio_identity(path)  # before decoding: a file replaced meanwhile is not mistaken for this one
            try:
                wave = load_audio(path, min_samples=encoder.min_samples, max_seconds=max_seconds)
                if augmenter is not None:
                    wave = augmenter(wave, group[0])
                if len(wave) < encoder.min_samples or encoder.num_frames(len(wave)) < 1:
                    raise TooShortAudio(path, f"{len(wave)} samples, the encoder needs at least "
                                              f"{encoder.min_samples} to produce one frame")
                out.append((group, stat, wave, None))
            except (AudioError, OSError) as error:
                out.append((group, stat, None, str(error) if isinstance(error, AudioError)
                            else f"{path}: {error.strerror or error}"))
            except Exception as error:  # an unexpected decoder failure must not end a 100k-file run
                out.append((group, stat, None, f"{path}: unexpected {type(error).__name__}: {error}"))
        return out

    def commit(decoded, hidden):  # background thread: fp16 cast, write, fsync, rename (index part last)
        ok = [d for d in decoded if d[2] is not None]
        failures = [Failure(row.id, str(row.path), error, *((stat["size"], stat["mtime_ns"]) if stat else (None,) * 2))
                    for group, stat, _, error in decoded if error is not None for row in group]
        part, failures = writer.commit([(group, stat) for group, stat, _, _ in ok], hidden, keep, failures)
        store._add_part(part)
        report.extracted += len(part["entries"])
        report.audio_seconds += sum(len(wave) for _, _, wave, _ in ok) / SAMPLE_RATE
        report.shards += part["shard"] is not None
        report.failures.extend(failures)
        if report.failures:
            bar.set_postfix(failed=len(report.failures), refresh=False)
        bar.update(sum(len(group) for group, *_ in decoded))

    try:
        with writer, ThreadPoolExecutor(1, thread_name_prefix="decode") as decoder, \
                ThreadPoolExecutor(1, thread_name_prefix="write") as shard_writer:
            ahead = deque(decoder.submit(decode, b) for b in todo[:prefetch])
            pending = None
            try:
                for k in range(len(todo)):
                    decoded = ahead.popleft().result()
                    if k + prefetch < len(todo):
                        ahead.append(decoder.submit(decode, todo[k + prefetch]))
                    waves = [wave for _, _, wave, _ in decoded if wave is not None]
                    hidden = _encode(encoder, waves) if waves else []
                    if pending is not None:
                        pending.result()  # at most one batch waits to be written; re-raises writer errors
                    pending = shard_writer.submit(commit, decoded, hidden)
                if pending is not None:
                    pending.result()
            finally:  # on error or Ctrl-C: drop queued decodes; leaving the `with` still commits the pending batch
                for future in ahead:
                    future.cancel()
    finally:
        bar.close()
    _write_failures(root, FeatureStore(root).failures())
    report.failures.sort(key=lambda f: f.id)
    report.seconds = time.perf_counter() - t0
    return report


def _encode(encoder, waves: list[np.ndarray]) -> list[torch.Tensor]:
    hidden = encoder.encode(waves)
    if len(hidden) != len(waves):
        raise EncoderError(None, f"encoder {encoder.name} returned {len(hidden)} outputs for {len(waves)} waveforms")
    for h in hidden:
        if h.ndim != 3 or h.shape[0] != encoder.num_layers + 1 or h.shape[2] != encoder.dim:
            raise EncoderError(None, f"encoder {encoder.name} returned shape {tuple(h.shape)}, expected "
                                     f"[{encoder.num_layers + 1}, T, {encoder.dim}]")
    return hidden


def _group_state(store: FeatureStore, group: list, retry_failed: bool) -> list[Failure] | None:
    """None when the group needs encoding, else the (possibly empty) list of still-standing failures."""
    stat = file_stat(group[0].path)
    failures = []
    for row in group:
        if store.is_current(row):
            continue
        standing = store._failures.get(row.id)
        if standing and not retry_failed and stat == (standing.size, standing.mtime_ns):
            failures.append(standing)
            continue
        return None
    return failures


class _ShardWriter:
    """Writes one rank's shards. Holds an exclusive lock on the rank so two writers of one rank cannot clash."""

    def __init__(self, shard_dir: Path, rank: int):
        self.dir, self.rank = shard_dir, rank

    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / f".r{self.rank}.lock", "a+")
        try:
            import fcntl
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock, ranks must simply be distinct
            pass
        except OSError:
            self._lock.close()
            raise FeatureStoreError(self.dir.parent, f"another process is already writing rank {self.rank} of this "
                                                     f"store; give each process its own rank") from None
        # What a killed run of this rank left: temp files and shards whose index part never committed.
        seqs = [-1]
        committed = set()
        for path in self.dir.glob(f"r{self.rank}-*.json"):
            m = INDEX_PART.match(path.name)
            if m and int(m.group(1)) == self.rank:
                seqs.append(int(m.group(2)))
                committed.add(path.stem)
        for path in list(self.dir.glob(f".r{self.rank}-*.tmp*")) + list(self.dir.glob(f"r{self.rank}-*.npy")):
            if path.name.startswith(".") or path.stem not in committed:  # hidden = an atomic_write temp file
                path.unlink(missing_ok=True)
        self.seq = max(seqs) + 1
        return self

    def __exit__(self, *exc):
        self._lock.close()  # releases the flock

    def commit(self, encoded, hidden, keep, failures) -> tuple[dict, list[Failure]]:
        """Write one batch: its shard (when anything was encoded), then its index part, which commits it.

        ``encoded`` is [(group of rows sharing one audio, its audio_identity)], aligned with ``hidden``."""
        name = f"r{self.rank}-{self.seq:06d}"
        entries, failures = [], list(failures)
        if hidden:
            sizes = [len(keep) * h.shape[1] for h in hidden]
            data = np.empty((sum(sizes), hidden[0].shape[2]), dtype=DTYPE)
            offset = 0
            for (group, stat), h, n in zip(encoded, hidden, sizes):
                h = h.detach() if len(keep) == h.shape[0] else h.detach()[keep]
                # the fp16 cast happens in this copy (torch's is ~10x faster than numpy's; both round to nearest)
                block = torch.from_numpy(data[offset: offset + n])
                block.copy_(h.reshape(n, -1))
                stat = stat or {"size": -1, "mtime_ns": -1, "inode": None, "crc32": None}  # never "current"
                size, mtime_ns = stat["size"], stat["mtime_ns"]
                if not torch.isfinite(block).all():  # NaN from the encoder, or beyond fp16's range: never stored
                    failures += [Failure(row.id, str(row.path), f"{row.path}: the encoder returned NaN or infinite "
                                         f"values (or values beyond float16's range) for this audio", size, mtime_ns)
                                 for row in group]
                    continue
                entries += [{"id": row.id, "path": str(row.path), "offset": offset, "frames": int(h.shape[1]),
                             **stat} for row in group]
                offset += n
            data = data[:offset]
        checksum = {}
        if entries:
            checksum = {"rows": int(data.shape[0]), "crc32": zlib.crc32(memoryview(data).cast("B"))}
            atomic_write(self.dir / f"{name}.npy", lambda tmp: np.save(tmp, data))
        part = {"version": VERSION, "rank": self.rank, "seq": self.seq, "committed_ns": time.time_ns(),
                "shard": f"{name}.npy" if entries else None, **checksum, "entries": entries,
                "failures": [{"id": f.id, "path": f.path, "error": f.error, "size": f.size, "mtime_ns": f.mtime_ns}
                             for f in failures]}
        atomic_write(self.dir / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(part)))  # the commit
        self.seq += 1
        return part, failures  # failures: the given ones plus clips whose features were not finite


# ------------------------------------------------------------------------------------------------------------
# Helpers: meta binding, failures, ranks, progress
# ------------------------------------------------------------------------------------------------------------
def _bind_meta(root: Path, encoder, layers: Sequence[int] | None, augmentation: dict | None = None) -> dict:
    """Create meta.json atomically, or check that the existing one describes the same encoder, layers and
    augmentation."""
    n_hidden = encoder.num_layers + 1
    if layers is None:
        keep = list(range(n_hidden))
    else:
        bad = [l for l in layers if not -n_hidden <= int(l) < n_hidden]
        if bad:
            raise FeatureStoreError(root, f"layers {bad} are out of range: {encoder.name} has hidden states "
                                          f"0..{n_hidden - 1} (negative counts from the end)")
        keep = sorted({int(l) % n_hidden for l in layers})
        if not keep:
            raise FeatureStoreError(root, "layers is empty: pass None for all hidden states or a list of indices")
    meta = json.loads(json.dumps({
        "format": FORMAT, "version": VERSION, "encoder": encoder.name, "fingerprint": encoder.fingerprint,
        "options": encoder.options, "num_hidden_states": n_hidden, "layers": keep, "dim": encoder.dim,
        "frame_rate": float(encoder.frame_rate), "dtype": np.dtype(DTYPE).name,
        "layout": "per utterance [layer, frame, dim], contiguous rows offset..offset+layers*frames of a [rows, dim] "
                  "shard",
        **({"augmentation": augmentation} if augmentation else {}),
    }))  # JSON round trip: compare like with like (tuples become lists)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    final = root / "meta.json"
    if not final.exists():
        remove_stale_temp_files(root)  # a creator killed here left its temp file; atomic's naming, so it is found
        tmp = root / f".meta.json.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.json"
        try:
            tmp.write_text(json.dumps(meta, indent=1))
            fsync_file(tmp)
            os.link(tmp, final)  # atomic create-if-absent: exactly one concurrent creator wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    existing = read_meta(root)
    diffs = [k for k in _BINDING_KEYS if existing.get(k) != meta.get(k)]
    if diffs:
        what = "; ".join(f"{k}: store has {existing.get(k)!r}, this run {meta.get(k)!r}" for k in diffs)
        raise StoreMismatch(root, f"this feature store was made with other settings ({what}). A store holds one "
                                  f"encoder, option set, layer set and augmentation: use another store folder")
    return existing



def _write_failures(root: Path, failures: list[Failure]) -> None:
    lines = "".join(json.dumps({"id": f.id, "path": f.path, "error": f.error}) + "\n" for f in failures)
    atomic_write_text(root / "failures.jsonl", lines)



def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    try:
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
        rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    except ValueError:
        raise FeatureStoreError(None, f"RANK/WORLD_SIZE must be integers, got RANK={os.environ.get('RANK')!r} "
                                      f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise FeatureStoreError(None, f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
    return rank, world_size


def _progress_bar(total: int, rank: int, world_size: int, enabled: bool):
    desc = "extract" if world_size == 1 else f"extract r{rank}"
    return progress_bar(total, desc, enabled, position=rank if world_size > 1 else None)

"""The feature store: a frozen encoder's hidden states, computed once per utterance and cached on disk.

Training never touches the encoder again: it reads fp16 frames from memory-mapped shards.

Layout of a store folder::

    meta.json                  encoder name, fingerprint, options, stored layers, dim, frame rate, dtype, version
    shards/r{rank}-{seq}.npy   one batch of utterances: a 2-D fp16 array [rows, D]
    shards/r{rank}-{seq}.json  that batch's index part: per utterance id, path, offset, frames, audio size + mtime
    failures.jsonl             utterances that could not be read (id, path, error), rewritten after each run

One utterance is the contiguous block of rows ``offset : offset + n_layers * frames`` of its shard, in
``[layer, frame, dim]`` order, so :meth:`FeatureStore.get` returns a zero-copy ``[n_layers, T, D]`` view (the
same layout the encoder returns) without reading any other utterance.

Crash safety: a batch is written to temp names, fsynced, then renamed; its ``.json`` part is renamed last and is
the commit. Readers only see committed parts, so a run killed at any point loses at most its in-flight batches.
Batches are planned from the full row list (sorted by audio size, then path), and only batches with work left
are run, so a resumed run encodes exactly the batches an uninterrupted run would have and the stores are
bit-identical. Ranks (``rank``/``world_size``, or torchrun's RANK/WORLD_SIZE) take batch ``i`` when
``i % world_size == rank`` and write shards named by their rank; the index merges all parts on read.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .encoders.base import SAMPLE_RATE
from .atomic import atomic_write, atomic_write_text, fsync_file
from .errors import AudioError, EncoderError, FeatureStoreError, MissingFeatures, StoreMismatch, TooShortAudio

FORMAT = "emoadapt-feature-store"
VERSION = 1
DTYPE = np.float16
_PART = re.compile(r"^r(\d+)-(\d+)\.json$")
# meta keys that must agree before a run may write into an existing store
_BINDING_KEYS = ("format", "version", "encoder", "fingerprint", "options", "num_hidden_states", "layers", "dim",
                 "frame_rate", "dtype")


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """Where one utterance's frames live, and which version of its audio they were computed from."""
    id: str
    path: str          # audio path when extracted
    shard: str         # shard file name in shards/
    offset: int        # first row in the shard
    frames: int        # T
    size: int          # audio file size in bytes when extracted
    mtime_ns: int      # audio file mtime when extracted
    committed_ns: int  # when its index part was committed (newest wins when an id appears twice)


@dataclass(frozen=True)
class Failure:
    """An utterance that could not be extracted (unreadable, corrupt or too-short audio)."""
    id: str
    path: str
    error: str
    size: int | None = None      # audio size + mtime when it failed: unchanged audio is not retried
    mtime_ns: int | None = None

    def __str__(self) -> str:
        return f"{self.id}: {self.error}"


class FeatureStore:
    """A folder of cached hidden states. Opening it reads only the small index files, never the shards."""

    def __init__(self, root: str | os.PathLike, *, max_open_shards: int = 32):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise FeatureStoreError(self.root, "a feature store is a folder, but this is a file")
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()  # shard name -> memmap, least recently used first
        self.refresh()

    # --- index ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read meta.json and the committed index parts (after another process wrote to the store)."""
        self.meta = _read_meta(self.root)
        self._entries: dict[str, Entry] = {}
        self._failures: dict[str, Failure] = {}
        self._open.clear()
        parts = []
        for path in self.shard_dir.glob("r*-*.json") if self.shard_dir.is_dir() else ():
            if _PART.match(path.name):
                parts.append((_read_part(path), path.name))
        for part, name in sorted(parts, key=lambda p: (p[0]["committed_ns"], p[1])):  # oldest first: newest wins
            self._add_part(part)

    def _add_part(self, part: dict) -> None:
        """Apply one committed index part; parts arrive oldest first, so a later entry or failure of an id wins."""
        for e in part["entries"]:
            self._entries[e["id"]] = Entry(e["id"], e["path"], part["shard"], e["offset"], e["frames"], e["size"],
                                           e["mtime_ns"], part["committed_ns"])
            self._failures.pop(e["id"], None)
        for f in part["failures"]:
            self._failures[f["id"]] = Failure(f["id"], f["path"], f["error"], f.get("size"), f.get("mtime_ns"))

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def layers(self) -> list[int]:
        """The hidden-state indices stored (0 = input embedding, i = after block i), in storage order."""
        return list(self.meta.get("layers", []))

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, utt_id: str) -> Entry:
        try:
            return self._entries[utt_id]
        except KeyError:
            raise MissingFeatures(self.root, f"utterance {utt_id!r} is not in this feature store "
                                             f"({len(self)} utterances); run extract for it first") from None

    def num_frames(self, utt_id: str) -> int:
        """T of one utterance, from the index alone (for length-aware batching without reading frames)."""
        return self.entry(utt_id).frames

    def failures(self) -> list[Failure]:
        """Utterances whose latest attempt failed and that have no newer stored features."""
        return sorted(self._failures.values(), key=lambda f: f.id)

    def is_current(self, utt) -> bool:
        """True when ``utt`` (an Utterance) is stored and its audio file still has the size and mtime it had then."""
        e = self._entries.get(utt.id)
        if e is None:
            return False
        stat = _stat(utt.path)
        return stat is not None and stat == (e.size, e.mtime_ns)

    # --- frames --------------------------------------------------------------------------------------------
    def get(self, utt_id: str) -> np.ndarray:
        """Read-only fp16 ``[n_layers, T, D]`` view of one utterance (layers in ``self.layers`` order).

        Only this utterance's pages of its own shard are touched; open shards are kept in a small LRU cache.
        """
        e = self.entry(utt_id)
        shard = self._shard(e.shard)
        n, d = len(self.layers), shard.shape[1]
        return shard[e.offset: e.offset + n * e.frames].reshape(n, e.frames, d)

    def load_frames(self, utt_id: str, layers: Sequence[int] | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """One utterance as a torch tensor ``[n, T, D]``; ``layers`` picks stored hidden-state indices."""
        x = self.get(utt_id)
        if layers is not None:
            stored = self.layers
            missing = [l for l in layers if l not in stored]
            if missing:
                raise FeatureStoreError(self.root, f"layers {missing} are not stored (stored: {stored})")
            x = x[[stored.index(l) for l in layers]]
        return torch.from_numpy(np.array(x)).to(dtype)

    def _shard(self, name: str) -> np.ndarray:
        shard = self._open.get(name)
        if shard is not None:
            self._open.move_to_end(name)
            return shard
        path = self.shard_dir / name
        try:
            shard = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise FeatureStoreError(path, "shard file is missing although the index lists it; "
                                          "delete its .json part and re-run extract") from None
        except ValueError as error:
            raise FeatureStoreError(path, f"shard file is unreadable ({error})") from None
        self._open[name] = shard
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return shard

    def __getstate__(self):  # pickled into DataLoader workers: never ship open memmaps (they pickle as copies)
        return {**self.__dict__, "_open": OrderedDict()}

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, {len(self)} utterances, {self.meta.get('fingerprint')})"


def frame_statistics(utterances: Iterable[tuple[FeatureStore, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``[n_layers, D]`` over every frame of ``(store, id)`` pairs (float64 sums, one
    utterance in memory at a time): what the models' input standardisation is fitted on (training frames only)."""
    total = total_sq = None
    frames = 0
    for store, utt_id in utterances:
        x = store.get(utt_id).astype(np.float64)            # (n_layers, T, D)
        if total is None:
            total, total_sq = np.zeros((x.shape[0], x.shape[2])), np.zeros((x.shape[0], x.shape[2]))
        total += x.sum(1)
        total_sq += np.square(x).sum(1)
        frames += x.shape[1]
    if not frames:
        raise FeatureStoreError(None, "no frames to compute feature statistics from")
    mean = total / frames
    return mean, np.sqrt(np.maximum(total_sq / frames - np.square(mean), 0.0))


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------
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
    groups: dict[str, list] = {}
    seen: set[str] = set()
    for row in rows:
        if row.id in seen:
            raise FeatureStoreError(row.path, f"utterance id {row.id!r} appears twice in the rows; ids must be unique")
        seen.add(row.id)
        groups.setdefault(str(row.path), []).append(row)
    stats = {path: _stat(path) for path in groups}
    order = sorted(groups, key=lambda p: (stats[p][0] if stats[p] else -1, p))
    return [[groups[p] for p in order[i: i + batch_size]] for i in range(0, len(order), batch_size)]


def extract(rows: Iterable, encoder, root: str | os.PathLike, *, layers: Sequence[int] | None = None,
            batch_size: int = 8, rank: int | None = None, world_size: int | None = None, progress: bool = True,
            retry_failed: bool = False, prefetch: int = 2) -> ExtractReport:
    """Encode every row not yet stored (or whose audio changed) and commit it to the store at ``root``.

    ``encoder`` follows :class:`emoadapt.encoders.base.Encoder` (or is a spec for ``load_encoder``); ``layers``
    are hidden-state indices to keep (negative counts from the end; default all). Unreadable or too-short audio
    is skipped and recorded (``report.failures``, ``failures.jsonl``); unchanged failed audio is not retried
    unless ``retry_failed``. Decoding (``prefetch`` batches ahead) and shard writing run in background threads
    so the encoder stays busy. With several ranks, call ``FeatureStore(root)`` only after all ranks finished.
    """
    from .audio import load_audio  # imported here: reading a store must not need the audio stack

    t0 = time.perf_counter()
    if isinstance(encoder, str):
        from .encoders import load_encoder
        encoder = load_encoder(encoder)
    rank, world_size = _rank_and_world_size(rank, world_size)
    root = Path(root)
    meta = _bind_meta(root, encoder, layers)
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
            stat = _stat(path)
            try:
                wave = load_audio(path, min_samples=encoder.min_samples)
                if len(wave) < encoder.min_samples or encoder.num_frames(len(wave)) < 1:
                    raise TooShortAudio(path, f"{len(wave)} samples, the encoder needs at least "
                                              f"{encoder.min_samples} to produce one frame")
                out.append((group, stat, wave, None))
            except AudioError as error:
                out.append((group, stat, None, str(error)))
            except Exception as error:  # an unexpected decoder failure must not end a 100k-file run
                out.append((group, stat, None, f"{path}: unexpected {type(error).__name__}: {error}"))
        return out

    def commit(decoded, hidden):  # background thread: fp16 cast, write, fsync, rename (index part last)
        ok = [d for d in decoded if d[2] is not None]
        failures = [Failure(row.id, str(row.path), error, *(stat or (None, None)))
                    for group, stat, _, error in decoded if error is not None for row in group]
        part = writer.commit([(group, stat) for group, stat, _, _ in ok], hidden, keep, failures)
        store._add_part(part)
        report.extracted += sum(len(group) for group, *_ in ok)
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
    stat = _stat(group[0].path)
    failures = []
    for row in group:
        e = store._entries.get(row.id)
        if e is not None and stat == (e.size, e.mtime_ns):
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
            m = _PART.match(path.name)
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

    def commit(self, encoded, hidden, keep, failures) -> dict:
        """Write one batch: its shard (when anything was encoded), then its index part, which commits it.

        ``encoded`` is [(group of rows sharing one audio, audio stat)], aligned with ``hidden``."""
        name = f"r{self.rank}-{self.seq:06d}"
        entries = []
        if hidden:
            sizes = [len(keep) * h.shape[1] for h in hidden]
            data = np.empty((sum(sizes), hidden[0].shape[2]), dtype=DTYPE)
            offset = 0
            for (group, stat), h, n in zip(encoded, hidden, sizes):
                h = h.detach() if len(keep) == h.shape[0] else h.detach()[keep]
                # the fp16 cast happens in this copy (torch's is ~10x faster than numpy's; both round to nearest)
                torch.from_numpy(data[offset: offset + n]).copy_(h.reshape(n, -1))
                size, mtime_ns = stat or (-1, -1)  # unknown stat: never "current", redone next run
                entries += [{"id": row.id, "path": str(row.path), "offset": offset, "frames": int(h.shape[1]),
                             "size": size, "mtime_ns": mtime_ns} for row in group]
                offset += n
            atomic_write(self.dir / f"{name}.npy", lambda tmp: np.save(tmp, data))
        part = {"version": VERSION, "rank": self.rank, "seq": self.seq, "committed_ns": time.time_ns(),
                "shard": f"{name}.npy" if entries else None, "entries": entries,
                "failures": [{"id": f.id, "path": f.path, "error": f.error, "size": f.size, "mtime_ns": f.mtime_ns}
                             for f in failures]}
        atomic_write(self.dir / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(part)))  # the commit
        self.seq += 1
        return part


# ------------------------------------------------------------------------------------------------------------
# Helpers: meta binding, atomic files, stats
# ------------------------------------------------------------------------------------------------------------
def _bind_meta(root: Path, encoder, layers: Sequence[int] | None) -> dict:
    """Create meta.json atomically, or check that the existing one describes the same encoder and layers."""
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
    }))  # JSON round trip: compare like with like (tuples become lists)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    final = root / "meta.json"
    if not final.exists():
        tmp = root / f".meta.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_text(json.dumps(meta, indent=1))
            fsync_file(tmp)
            os.link(tmp, final)  # atomic create-if-absent: exactly one concurrent creator wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    existing = _read_meta(root)
    diffs = [k for k in _BINDING_KEYS if existing.get(k) != meta[k]]
    if diffs:
        what = "; ".join(f"{k}: store has {existing.get(k)!r}, this run {meta[k]!r}" for k in diffs)
        raise StoreMismatch(root, f"this feature store was made with other settings ({what}). A store holds one "
                                  f"encoder, option set and layer set: use another store folder")
    return existing


def _read_meta(root: Path) -> dict:
    path = root / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise FeatureStoreError(path, f"unreadable store meta ({error})") from None
    if meta.get("format") != FORMAT:
        raise FeatureStoreError(path, f"not an emoadapt feature store (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise FeatureStoreError(path, f"store version {meta['version']} is newer than this emoadapt reads "
                                      f"({VERSION}); upgrade emoadapt")
    return meta


def _read_part(path: Path) -> dict:
    try:
        part = json.loads(path.read_text())
        part["committed_ns"], part["entries"], part["failures"]  # noqa: B018 - shape check
        return part
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FeatureStoreError(path, f"unreadable index part ({error}); delete it and its .npy, then re-run "
                                      f"extract to redo that batch") from None


def _write_failures(root: Path, failures: list[Failure]) -> None:
    lines = "".join(json.dumps({"id": f.id, "path": f.path, "error": f.error}) + "\n" for f in failures)
    atomic_write_text(root / "failures.jsonl", lines)


def _stat(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


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
    from tqdm.auto import tqdm
    desc = "extract" if world_size == 1 else f"extract r{rank}"
    return tqdm(total=total, desc=desc, unit="utt", disable=not enabled, position=rank if world_size > 1 else None,
                smoothing=0.1, dynamic_ncols=True)

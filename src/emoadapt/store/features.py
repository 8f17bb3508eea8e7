"""The feature store: a frozen encoder's hidden states, computed once per utterance and cached on disk (written by
:func:`emoadapt.extraction.extract`).

Training never touches the encoder again: it reads fp16 frames from memory-mapped shards.

Layout of a store folder::

    meta.json                  encoder name, fingerprint, options, stored layers, dim, frame rate, dtype, version
    shards/r{rank}-{seq}.npy   one batch of utterances: a 2-D fp16 array [rows, D]
    shards/r{rank}-{seq}.json  that batch's index part: per utterance id, path, offset, frames, audio size + mtime +
                               CRC-32; the shard's row count and CRC-32
    failures.jsonl             utterances that could not be read (id, path, error), rewritten after each run

One utterance is the contiguous block of rows ``offset : offset + n_layers * frames`` of its shard, in
``[layer, frame, dim]`` order, so :meth:`FeatureStore.get` returns a zero-copy ``[n_layers, T, D]`` view (the
same layout the encoder returns) without reading any other utterance. Readers only see committed index parts
(the ``.json`` part is renamed into place last), so a store is never seen half-written.

Integrity: a shard is checked against its CRC-32 the first time a process opens it (damage on disk, not tampering:
model weights carry SHA-256), and an entry is only used while its audio is the file it was computed from (same size
and mtime, or, after a copy or ``touch``, the same CRC-32 of its bytes). ``verify_store`` checks everything at once.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import DamagedStore, FeatureStoreError, MissingFeatures

FORMAT = "emoadapt-feature-store"
VERSION = 1
DTYPE = np.float16
INDEX_PART = re.compile(r"^r(\d+)-(\d+)\.json$")  # shards/r{rank}-{seq}.json


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
    crc32: int | None = None  # of the audio file's bytes (stores written before it: None)
    inode: int | None = None  # so that two files swapped by rename (same size, same mtime) are told apart


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
        self._shards: dict[str, dict] = {}  # shard name -> {"rows", "crc32"} from its index part
        self.refresh()

    # --- index ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read meta.json and the committed index parts (after another process wrote to the store)."""
        self.meta = read_meta(self.root)
        self._entries: dict[str, Entry] = {}
        self._failures: dict[str, Failure] = {}
        self._shards = {}
        self._open.clear()
        parts = [(read_part(path), path.name) for path in index_parts(self.shard_dir)]
        for part, name in sorted(parts, key=lambda p: (p[0]["committed_ns"], p[1])):  # oldest first: newest wins
            self._add_part(part)

    def _add_part(self, part: dict) -> None:
        """Apply one committed index part; parts arrive oldest first, so a later entry or failure of an id wins."""
        if part["shard"] is not None:
            self._shards[part["shard"]] = {"rows": part.get("rows"), "crc32": part.get("crc32"),
                                           "layout": layout_problem(part, len(self.layers))}
        for e in part["entries"]:
            self._entries[e["id"]] = Entry(e["id"], e["path"], part["shard"], e["offset"], e["frames"], e["size"],
                                           e["mtime_ns"], part["committed_ns"], e.get("crc32"), e.get("inode"))
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
        """True when ``utt`` (an Utterance) is stored and its audio file is still the one its features came from."""
        e = self._entries.get(utt.id)
        return e is not None and audio_matches(utt.path, e.size, e.mtime_ns, e.crc32, e.inode)

    def stale(self, utterances) -> list:
        """The stored utterances among ``utterances`` whose audio changed since extraction (never to be used)."""
        return [u for u in utterances if u.id in self._entries and not self.is_current(u)]

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
        shard, problem = open_shard(path, **self._shards.get(name, {}))
        if problem:
            raise DamagedStore(path, f"{problem}; run `emoadapt extract CORPUS --store {self.root} --repair` to "
                                     f"re-compute the damaged batches")
        self._open[name] = shard
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return shard

    def __getstate__(self):  # pickled into DataLoader workers: never ship open memmaps (they pickle as copies)
        return {**self.__dict__, "_open": OrderedDict()}

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, {len(self)} utterances, {self.meta.get('fingerprint')})"


_verified: set[tuple[str, int, int]] = set()  # (shard path, size, mtime) checked by this process


def layout_problem(part: dict, n_layers: int) -> str | None:
    """An index part's entries must tile its shard exactly, in order (ids sharing one audio share one block): an
    edited offset or frame count is caught before any frame is read. Parts of older stores have no row count."""
    if part.get("rows") is None:
        return None
    position = 0
    for offset, frames in sorted({(e["offset"], e["frames"]) for e in part["entries"]}):
        if offset != position or frames < 1:
            return f"its index part places an utterance at row {offset} (expected {position})"
        position += n_layers * frames
    return None if position == part["rows"] else f"its index part covers {position} of {part['rows']} rows"


def index_parts(shard_dir: Path) -> list[Path]:
    """The committed index parts of a store's ``shards/`` folder, by name."""
    return sorted(p for p in shard_dir.glob("r*-*.json") if INDEX_PART.match(p.name)) if shard_dir.is_dir() else []


def open_shard(path: Path, rows: int | None = None, crc32: int | None = None,
               layout: str | None = None) -> tuple[np.ndarray | None, str | None]:
    """(the shard memory-mapped, None) or (None, what is wrong with it). Reads it whole once per process: its CRC-32
    (~1.5 GB/s on one core), or, for stores written before checksums, that every value is finite."""
    if layout:
        return None, layout
    try:
        shard = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        return None, "shard file is missing although the index lists it"
    except ValueError:  # numpy refuses objects (pickle) and malformed headers: never loaded
        return None, "shard file is not a plain array this store wrote (unreadable header, or objects)"
    except OSError as error:
        return None, f"shard file is unreadable ({error})"
    if not isinstance(shard, np.ndarray):
        return None, "shard file is not a plain array this store wrote"
    if shard.ndim != 2 or shard.dtype != DTYPE or (rows is not None and shard.shape[0] != rows):
        return None, (f"shard has shape {shard.shape} {shard.dtype}, its index part says {rows} rows of "
                      f"{np.dtype(DTYPE)}")
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return shard, None
    if crc32 is not None:  # extraction stores finite values only, so matching bytes are finite too
        if zlib.crc32(memoryview(np.ascontiguousarray(shard)).cast("B")) != crc32:
            return None, "shard bytes do not match their checksum (the file was damaged after it was written)"
    elif not np.isfinite(shard).all():  # a store written before checksums: at least no NaN or inf
        return None, "shard holds NaN or infinite values"
    _verified.add(key)
    return shard, None


def shard_problem(path: Path, rows: int | None = None, crc32: int | None = None,
                  layout: str | None = None) -> str | None:
    """What is wrong with a shard file (None: nothing); see :func:`open_shard`."""
    return open_shard(path, rows, crc32, layout)[1]


def audio_identity(path) -> dict | None:
    """What tells this audio file from any other: size, mtime, inode and the CRC-32 of its bytes (None: no file)."""
    try:
        st = os.stat(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "crc32": file_crc32(path)}
    except OSError:
        return None


_audio_crc: dict[tuple, int] = {}  # (path, size, mtime, inode) -> CRC-32 of audio read because its stat changed


def audio_matches(path, size: int, mtime_ns: int, crc32: int | None, inode: int | None = None) -> bool:
    """Is the file at ``path`` the audio that had this size, mtime, inode and CRC-32? The stat decides when all
    of it agrees; otherwise (a copy, a ``touch``, files swapped by rename) the file is read and its CRC-32 decides.
    A moved corpus is thus read once per process; its features stay valid."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != size:
        return False
    if st.st_mtime_ns == mtime_ns and inode in (None, st.st_ino):
        return True
    if crc32 is None:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)  # the same file is read once per process
    if key not in _audio_crc:
        _audio_crc[key] = file_crc32(path)
    return _audio_crc[key] == crc32


def file_crc32(path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc


def frame_statistics(utterances: Iterable[tuple[FeatureStore, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``[n_layers, D]`` over every frame of ``(store, id)`` pairs: what the models'
    input standardisation is fitted on (training frames only)."""
    return array_statistics(store.get(utt_id) for store, utt_id in utterances)


def array_statistics(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``[n_layers, D]`` over every frame of ``[n_layers, T, D]`` arrays (float64
    sums, one utterance in memory at a time)."""
    total = total_sq = None
    frames = 0
    for x in arrays:
        x = np.asarray(x, dtype=np.float64)                 # (n_layers, T, D)
        if total is None:
            total, total_sq = np.zeros((x.shape[0], x.shape[2])), np.zeros((x.shape[0], x.shape[2]))
        total += x.sum(1)
        total_sq += np.square(x).sum(1)
        frames += x.shape[1]
    if not frames:
        raise FeatureStoreError(None, "no frames to compute feature statistics from")
    mean = total / frames
    return mean, np.sqrt(np.maximum(total_sq / frames - np.square(mean), 0.0))


class FrameMoments:
    """Every utterance's frame mean and mean square ``[L+1, D]`` and frame count, read from a store once. The
    ``stats`` recipe pools (mean, std) of frames standardised as z = (x - m) / sqrt(s² + eps), so its features follow
    exactly from these for any statistics (m, s): mean (mean(x) - m) a, std std(x) a, a = 1 / sqrt(s² + eps). That
    turns many normalisations of one set of utterances (reference settings, training speakers' shrinkage) into
    arithmetic instead of passes over the store."""

    def __init__(self, store, ids: Sequence[str]):
        ids = list(ids)
        self.index = {i: k for k, i in enumerate(ids)}
        first = np.asarray(store.get(ids[0]))
        self.mean = np.zeros((len(ids), first.shape[0], first.shape[2]))
        self.square, self.frames = np.zeros_like(self.mean), np.zeros(len(ids))
        for k, i in enumerate(ids):
            x = np.asarray(store.get(i), np.float64)
            self.mean[k], self.square[k], self.frames[k] = x.mean(1), np.square(x).mean(1), x.shape[1]

    def statistics(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) over every frame of ``ids``, as :func:`array_statistics` gives."""
        rows = [self.index[i] for i in ids]
        w = self.frames[rows][:, None, None]
        mean = (self.mean[rows] * w).sum(0) / w.sum()
        return mean, np.sqrt(np.maximum((self.square[rows] * w).sum(0) / w.sum() - np.square(mean), 0.0))

    def pooled(self, ids: Sequence[str], statistics: Sequence[tuple[np.ndarray, np.ndarray]],
               eps: float = 1e-5) -> np.ndarray:
        """The ``stats`` recipe's pooled features [n, (L+1) * 2D] (per hidden state [mean; std], as
        :func:`emoadapt.model.pooling.utterance_statistics`) of ``ids``, each standardised with its
        ``statistics`` (mean, std) as :class:`emoadapt.calibration.Normalizer` does."""
        rows = [self.index[i] for i in ids]
        mean, std = self.mean[rows], np.sqrt(np.maximum(self.square[rows] - np.square(self.mean[rows]), 0.0))
        m = np.stack([s[0] for s in statistics])
        a = 1.0 / np.sqrt(np.square(np.stack([s[1] for s in statistics])) + eps)
        return np.concatenate([(mean - m) * a, std * a], axis=-1).reshape(len(rows), -1)


def read_meta(root: Path) -> dict:
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


def shard_name(part_path: Path) -> str:
    """The only shard an index part ``shards/rN-NNNNNN.json`` may name: ``rN-NNNNNN.npy`` beside it. A store reads
    and removes nothing but the names it wrote, so a part edited to point elsewhere (``../../x``, an absolute
    path) is damage, never a file to open or delete."""
    return Path(part_path).with_suffix(".npy").name


# an index part's records: key -> type (required; then the optional keys, which may also be null)
_ENTRY = {"id": str, "path": str, "offset": int, "frames": int, "size": int, "mtime_ns": int}
_ENTRY_OPTIONAL = {"crc32": int, "inode": int}
_FAILURE = {"id": str, "path": str, "error": str}
_FAILURE_OPTIONAL = {"size": int, "mtime_ns": int}


def part_problem(part, path: Path) -> str | None:
    """What is wrong with the shape of an index part (its schema), or None."""
    def typed(value, kind) -> bool:
        return isinstance(value, kind) and not isinstance(value, bool)

    def record(item, required, optional, what) -> str | None:
        if not isinstance(item, dict):
            return f"{what} is a {type(item).__name__}, not an object"
        for key, kind in required.items():
            if key not in item:
                return f"{what} has no {key!r}"
            if not typed(item[key], kind):
                return f"{what}'s {key!r} is {item[key]!r}"
        for key, kind in optional.items():
            if item.get(key) is not None and not typed(item[key], kind):
                return f"{what}'s {key!r} is {item[key]!r}"
        return None

    if not isinstance(part, dict):
        return "it is not a JSON object"
    if not typed(part.get("committed_ns"), int):
        return f"'committed_ns' is {part.get('committed_ns')!r}, not a time in nanoseconds"
    for key in ("entries", "failures"):
        if not isinstance(part.get(key), list):
            return f"{key!r} is {part.get(key)!r}, not a list"
    for key in ("rows", "crc32"):
        if part.get(key) is not None and not typed(part[key], int):
            return f"{key!r} is {part[key]!r}"
    if part.get("shard") is not None and part["shard"] != shard_name(path):
        return f"it names the shard {part['shard']!r}; a store's parts name only their own {shard_name(path)}"
    if part.get("shard") is None and part["entries"]:
        return "it lists entries but no shard"
    for k, e in enumerate(part["entries"]):
        problem = record(e, _ENTRY, _ENTRY_OPTIONAL, f"entry {k}")
        if problem is None and (e["offset"] < 0 or e["frames"] < 1):
            problem = f"entry {k} has offset {e['offset']} and {e['frames']} frames"
        if problem:
            return problem
    for k, f in enumerate(part["failures"]):
        problem = record(f, _FAILURE, _FAILURE_OPTIONAL, f"failure {k}")
        if problem:
            return problem
    return None


def read_part(path: Path) -> dict:
    """An index part, checked against its schema: a part of the right JSON syntax but the wrong shape is damage."""
    try:
        part = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FeatureStoreError(path, f"unreadable index part ({error}); run emoadapt extract CORPUS --store S "
                                      f"--repair to redo that batch") from None
    problem = part_problem(part, path)
    if problem:
        raise FeatureStoreError(path, f"damaged index part: {problem}; run emoadapt extract CORPUS --store S --repair "
                                      f"to redo that batch")
    return part


def file_stat(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


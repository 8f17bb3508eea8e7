"""A whole feature store checked at once (``emoadapt extract --verify``) and its damaged batches dropped so that
extraction re-computes them (``--repair``). Reading a store checks each shard on first use already
(:func:`emoadapt.store.features.open_shard`); this looks at every shard and every clip's audio in one pass."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..corpora.base import preview
from ..errors import FeatureStoreError
from .features import (INDEX_PART, audio_matches, index_parts, layout_problem, open_shard, read_meta, read_part,
                       shard_name)


@dataclass
class StoreReport:
    """What ``verify_store`` found: damaged index parts / shards and the ids they held, stale entries."""
    root: str
    parts: int = 0
    damaged: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (index part, problem, its ids)
    stale: list[str] = field(default_factory=list)  # ids whose audio changed since extraction
    unchecked: int = 0                               # shards written before checksums

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.stale

    def __str__(self) -> str:
        lines = [f"feature store {self.root}: {self.parts} batches checked, {len(self.damaged)} damaged, "
                 f"{len(self.stale)} utterances whose audio changed"
                 + (f", {self.unchecked} shards without a checksum (older store)" if self.unchecked else "")]
        for part, problem, ids in self.damaged:
            lines.append(f"  damaged: {part}: {problem} ({len(ids)} utterances)")
        if self.stale:
            lines.append(f"  audio changed: {preview(self.stale)}")
        return "\n".join(lines)


def verify_store(root: str | os.PathLike, utterances=()) -> StoreReport:
    """Check every index part, shard (checksum, shape, offsets) and, for ``utterances`` given (corpus rows),
    that their audio is still what was extracted. Damaged parts are reported, not raised."""
    root = Path(root)
    n_layers = len(read_meta(root).get("layers", []))
    report = StoreReport(str(root))
    shard_dir = root / "shards"
    newest: dict[str, tuple[int, str, dict]] = {}  # id -> (committed_ns, part, entry)
    for path in index_parts(shard_dir):
        report.parts += 1
        try:
            part = read_part(path)
        except FeatureStoreError as error:
            report.damaged.append((path.name, error.reason, []))
            continue
        ids = [e["id"] for e in part["entries"]]
        if part["shard"] is None:
            continue
        report.unchecked += part.get("crc32") is None
        shard, problem = open_shard(shard_dir / shard_name(path), part.get("rows"), part.get("crc32"),
                                    layout_problem(part, n_layers))
        if problem is None:  # older stores have no row count to tile: at least every entry inside its shard
            if any(e["offset"] + n_layers * e["frames"] > shard.shape[0] for e in part["entries"]):
                problem = "an entry points outside its shard"
        if problem:
            report.damaged.append((path.name, problem, ids))
        for e in part["entries"]:
            if e["id"] not in newest or newest[e["id"]][0] <= part["committed_ns"]:
                newest[e["id"]] = (part["committed_ns"], path.name, e)
    for u in utterances:
        found = newest.get(u.id)
        if found and not audio_matches(u.path, found[2]["size"], found[2]["mtime_ns"], found[2].get("crc32"),
                                       found[2].get("inode")):
            report.stale.append(u.id)
    return report


def remove_parts(root: str | os.PathLike, parts: Iterable[str]) -> None:
    """Drop damaged batches: the index part first (it is the commit), then its shard; extract re-computes them. Only
    names the store writes (``shards/rN-NNNNNN.json`` and its ``.npy``) are removed, whatever a part says."""
    shard_dir = Path(root) / "shards"
    for name in parts:
        if Path(name).name != name or not INDEX_PART.match(name):
            raise FeatureStoreError(root, f"{name!r} is not a name this store writes; nothing removed")
        (shard_dir / name).unlink(missing_ok=True)
        (shard_dir / shard_name(shard_dir / name)).unlink(missing_ok=True)

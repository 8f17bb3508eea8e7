"""A Hugging Face Hub cache laid out by hand, as the Hub client lays out what it downloads (this machine has no
network): for the Hub tests and the README's Hub commands."""
from __future__ import annotations

import hashlib
from pathlib import Path


def lay_out_cache(cache: Path, repo_id: str, commits: dict[str, Path], refs: dict[str, str]) -> Path:
    """``cache/models--org--name``: each file once under blobs/ (named by its hash), each commit's snapshot of
    relative symlinks into blobs/, and refs/<branch or tag> holding a commit hash."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    for commit, folder in commits.items():
        for file in folder.iterdir():
            blob_id = hashlib.sha256(file.read_bytes()).hexdigest()
            (storage / "blobs").mkdir(parents=True, exist_ok=True)
            (storage / "blobs" / blob_id).write_bytes(file.read_bytes())
            link = storage / "snapshots" / commit / file.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("..", "..", "blobs", blob_id))
    for ref, commit in refs.items():
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return storage

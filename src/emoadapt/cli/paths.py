"""Where the command line finds data when none is named: ``$EMOADAPT_DATA``, else ``shared/data`` beside the checkout
(as laid out for developers and CI). The library itself never guesses a data location; the CLI, the demo, the
benchmarks and the tests do, through here."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EMOADAPT_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[3]  # src/emoadapt/cli/paths.py


def default_data_root() -> Path | None:
    """``$EMOADAPT_DATA`` if set, else a ``shared/data`` folder beside the checkout (as laid out for developers
    and CI), else None. The shared copy is read-only: never write into it."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    for candidate in (_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def shared_corpus(name: str) -> Path | None:
    """The folder of one corpus in the data root (``ravdess``, ``emovo``, ``unlabeled``), or None if absent."""
    root = default_data_root()
    if root is None:
        return None
    folder = root / name
    return folder if folder.is_dir() else None

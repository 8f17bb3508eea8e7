"""The models shipped inside the package, by name (``default``: see its MODEL_CARD.md), and how a name or a folder
given by a user becomes a model folder. ``tools/build_shipped_model.py`` (``make model``) writes them."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import EmoadaptError

SHIPPED_MODELS = Path(__file__).parent / "shipped_models"
DEFAULT = "default"
BUILD_RECORD = "bundle.json"  # how a shipped model was built: its label map, the speaker held out of it, ...


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_MODELS.iterdir() if p.is_dir()) if SHIPPED_MODELS.is_dir() else []


def resolve_model(name_or_dir: str | os.PathLike = DEFAULT, *, revision: str | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """A model folder, a finetune run folder, the name of a model shipped inside the package, or a model on the
    Hugging Face Hub: ``hf:org/name``, or ``org/name`` when no such local path exists (``@revision`` or
    ``revision=`` pins a branch, tag or commit; :mod:`emoadapt.modelfolder.hub`)."""
    from .hub import HUB_PREFIX, download_model, parse_hub_name
    text = str(name_or_dir)
    path = Path(name_or_dir)
    if not text.startswith(HUB_PREFIX):
        if path.exists():
            return path
        if (SHIPPED_MODELS / text).is_dir() and revision is None:
            return SHIPPED_MODELS / text
    hub = parse_hub_name(text) if not path.is_absolute() and not text.startswith((".", "~")) else None
    if hub is not None:
        repo_id, pinned = hub
        if pinned and revision and pinned != revision:
            raise EmoadaptError(text, f"two revisions: @{pinned} in the name and revision={revision!r}; give one")
        try:
            return download_model(repo_id, pinned or revision, cache_dir)
        except EmoadaptError as error:
            if text.startswith(HUB_PREFIX):
                raise
            raise EmoadaptError(path, f"no such local model folder, and as a Hugging Face Hub model: "
                                      f"{error.reason}") from None
    shipped = shipped_names()
    raise EmoadaptError(path, "no such model folder" + (f"; the models shipped with emoadapt: {', '.join(shipped)}"
                                                        if shipped else "; this installation ships no model")
                        + "; a model on the Hugging Face Hub is named org/name (or hf:org/name)")


def build_record(name: str = DEFAULT) -> dict | None:
    """The shipped model's ``bundle.json`` (label map, held-out speaker, figures), or None when it is not shipped."""
    path = SHIPPED_MODELS / name / BUILD_RECORD
    return json.loads(path.read_text()) if path.is_file() else None

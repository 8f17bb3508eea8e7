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


def resolve_model(name_or_dir: str | os.PathLike = DEFAULT) -> Path:
    """A model folder, a finetune run folder, or the name of a model shipped inside the package."""
    path = Path(name_or_dir)
    if path.exists():
        return path
    if (SHIPPED_MODELS / str(name_or_dir)).is_dir():
        return SHIPPED_MODELS / str(name_or_dir)
    shipped = shipped_names()
    raise EmoadaptError(path, "no such model folder" + (f"; the models shipped with emoadapt: {', '.join(shipped)}"
                                                        if shipped else "; this installation ships no model"))


def build_record(name: str = DEFAULT) -> dict | None:
    """The shipped model's ``bundle.json`` (label map, held-out speaker, figures), or None when it is not shipped."""
    path = SHIPPED_MODELS / name / BUILD_RECORD
    return json.loads(path.read_text()) if path.is_file() else None

"""The data contract: one manifest row per utterance (EmoBox-style), whatever the corpus."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Utterance:
    id: str                      # unique within a corpus, stable across machines (e.g. the path relative to the corpus root)
    path: str                    # absolute path of the audio file
    label: str | None            # emotion label in the corpus's own words; None for unlabeled audio
    speaker: str | None          # speaker id; folds and validation splits are drawn by speaker
    gender: str | None = None    # "female" / "male" / None
    duration: float | None = None  # seconds, when the corpus states it (not required)
    extras: dict = field(default_factory=dict, compare=False)  # corpus-specific columns (intensity, session ...)

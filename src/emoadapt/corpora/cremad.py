"""CREMA-D (Cao et al. 2014): ``AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav``, e.g. ``1001_DFA_ANG_XX.wav``.

91 actors (1001-1091), 12 sentences, 6 emotions ANG DIS FEA HAP NEU SAD, levels LO MD HI XX. Gender comes
from the official ``VideoDemographics.csv`` (beside ``AudioWAV/``) when present, else None.
Folds (our documented choice; CREMA-D has no official folds): 5 speaker-independent folds, actors in id order
dealt in turn (1001 -> 1, 1002 -> 2, ..., 1006 -> 1, ...). A ``folds.csv`` in the folder takes precedence.
Views: ``6class`` (default) and ``4class`` = neutral, happy, angry, sad.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from .base import Corpus, audio_files, load_named_files, relative_id
from .splits import round_robin_speakers
from .manifest import Utterance, normalise_gender, read_table

NAME = re.compile(r"^(\d{4})_([A-Z]{3})_(ANG|DIS|FEA|HAP|NEU|SAD)_([A-Z]{1,2})$")
VIEWS = {
    "6class": {"NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "anger", "FEA": "fear", "DIS": "disgust"},
    "4class": {"NEU": "neutral", "HAP": "happy", "ANG": "angry", "SAD": "sad"},
}
NUM_FOLDS = 5


def parse(file: Path, root: Path, genders: dict[str, str] | None = None) -> Utterance | None:
    m = NAME.match(file.stem)
    if m is None:
        return None
    actor, sentence, emotion, level = m.groups()
    return Utterance(id=relative_id(file, root), path=str(file), label=emotion, speaker=actor,
                     gender=(genders or {}).get(actor),
                     extras={"emotion_code": emotion, "sentence": sentence, "level": level})


def audio_folder(path: Path) -> Path:
    return path / "AudioWAV" if (path / "AudioWAV").is_dir() else path


def read_genders(path: Path) -> dict[str, str]:
    for table in (path / "VideoDemographics.csv", path.parent / "VideoDemographics.csv"):
        if table.is_file():
            return {(r.get("ActorID") or "").strip(): normalise_gender(r.get("Sex"))
                    for r in read_table(table, "demographics table")[0]}
    return {}


def detect(path: Path) -> bool:
    return path.is_dir() and any(NAME.match(f.stem) for f in audio_files(audio_folder(path), recursive=False)[:3])


def load(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    return load_named_files("cremad", path, audio_files(audio_folder(path)), partial(parse, genders=read_genders(path)),
                            views=VIEWS, default_view="6class", view=view, strict=strict,
                            default_folds=lambda rows: round_robin_speakers(rows, NUM_FOLDS))

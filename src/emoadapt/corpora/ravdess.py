"""RAVDESS (Livingstone & Russo 2018): ``Actor_NN/MM-VV-EE-II-SS-RR-AA.wav`` (or the shared copy's ``.flac``).

Name fields: modality, vocal channel (01 speech, 02 song), emotion EE, intensity II (01 normal, 02 strong),
statement SS, repetition RR, actor AA (odd = male). Folds: EmoBox's 6 folds of 4 actors, shipped as
``folds/ravdess.csv`` (speaker -> fold); a ``folds.csv`` in the corpus folder takes precedence.
Views: ``8class`` (default) and ``4class`` = neutral, happy, angry, sad (calm is left out, not merged).
"""
from __future__ import annotations

import re
from pathlib import Path

from .base import Corpus, audio_files, load_named_files, relative_id
from .splits import from_speaker_table, packaged_table
from .manifest import Utterance

NAME = re.compile(r"^(\d\d)-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)$")
VIEWS = {
    "8class": {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
               "07": "disgust", "08": "surprised"},
    "4class": {"01": "neutral", "03": "happy", "05": "angry", "04": "sad"},
}


def parse(file: Path, root: Path) -> Utterance | None:
    m = NAME.match(file.stem)
    if m is None:
        return None
    modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
    return Utterance(id=relative_id(file, root), path=str(file), label=emotion, speaker=f"Actor_{actor}",
                     gender="male" if int(actor) % 2 else "female",
                     extras={"emotion_code": emotion, "intensity": "strong" if intensity == "02" else "normal",
                             "statement": int(statement), "repetition": int(repetition),
                             "vocal_channel": "song" if channel == "02" else "speech"})


def detect(path: Path) -> bool:
    return path.is_dir() and any(NAME.match(f.stem) for d in path.glob("Actor_[0-9][0-9]") for f in audio_files(d)[:1])


def load(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    files = [f for d in sorted(path.glob("Actor_[0-9][0-9]")) for f in audio_files(d)]
    return load_named_files("ravdess", path, files, parse, views=VIEWS, default_view="8class", view=view,
                            strict=strict,
                            default_folds=lambda rows: from_speaker_table(rows, packaged_table("ravdess"), "ravdess"))

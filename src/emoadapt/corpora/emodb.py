"""EmoDB, Berlin Database of Emotional Speech (Burkhardt et al. 2005): ``wav/03a01Fa.wav``.

Name: speaker (2 digits), text (a01..b10), emotion letter (German initials: W Aerger/anger, L Langeweile/boredom,
E Ekel/disgust, A Angst/fear, F Freude/happiness, T Trauer/sadness, N neutral), version letter.
Gender and age by speaker as in the corpus documentation. Folds: leave-one-speaker-out, speakers in id order
(03 -> 1, 08 -> 2, ..., 16 -> 10); a ``folds.csv`` in the folder takes precedence.
Views: ``7class`` (default) and ``4class`` = neutral, happy, angry, sad.
"""
from __future__ import annotations

import re
from pathlib import Path

from .base import Corpus, audio_files, load_named_files, relative_id
from .splits import leave_one_speaker_out
from .manifest import Utterance

NAME = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")
SPEAKERS = {"03": ("male", 31), "08": ("female", 34), "09": ("female", 21), "10": ("male", 32),
            "11": ("male", 26), "12": ("male", 30), "13": ("female", 32), "14": ("female", 35),
            "15": ("male", 25), "16": ("female", 31)}
VIEWS = {
    "7class": {"N": "neutral", "F": "happiness", "T": "sadness", "W": "anger", "A": "fear", "E": "disgust",
               "L": "boredom"},
    "4class": {"N": "neutral", "F": "happy", "W": "angry", "T": "sad"},
}


def parse(file: Path, root: Path) -> Utterance | None:
    m = NAME.match(file.stem)
    if m is None:
        return None
    speaker, text, emotion, version = m.groups()
    gender, age = SPEAKERS.get(speaker, (None, None))
    return Utterance(id=relative_id(file, root), path=str(file), label=emotion, speaker=speaker, gender=gender,
                     extras={"emotion_code": emotion, "text": text, "version": version, "age": age})


def audio_folder(path: Path) -> Path:
    return path / "wav" if (path / "wav").is_dir() else path


def detect(path: Path) -> bool:
    return path.is_dir() and any(NAME.match(f.stem) for f in audio_files(audio_folder(path), recursive=False)[:3])


def load(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    return load_named_files("emodb", path, audio_files(audio_folder(path), recursive=False), parse, views=VIEWS,
                            default_view="7class", view=view, strict=strict, default_folds=leave_one_speaker_out)

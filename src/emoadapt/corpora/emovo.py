"""EMOVO (Costantini et al. 2014): ``<speaker>/<emotion>-<speaker>-<sentence>.wav`` (or ``.flac``).

6 actors (f1-f3, m1-m3), 14 sentences, 7 emotions coded dis, gio, neu, pau, rab, sor, tri. Folds: EmoBox's
leave-one-speaker-out numbering, shipped as ``folds/emovo.csv``; a ``folds.csv`` in the folder takes precedence.
Views: ``7class`` (default) and ``4class`` = neutral, happy, angry, sad.
"""
from __future__ import annotations

import re
from pathlib import Path

from .base import Corpus, audio_files, load_named_files, relative_id
from .splits import from_speaker_table, packaged_table
from .manifest import Utterance

NAME = re.compile(r"^(dis|gio|neu|pau|rab|sor|tri)-([fm]\d+)-(\w+)$", re.IGNORECASE)
VIEWS = {
    "7class": {"neu": "neutral", "gio": "happiness", "tri": "sadness", "rab": "anger", "pau": "fear",
               "dis": "disgust", "sor": "surprise"},
    "4class": {"neu": "neutral", "gio": "happy", "rab": "angry", "tri": "sad"},
}


def parse(file: Path, root: Path) -> Utterance | None:
    m = NAME.match(file.stem)
    if m is None:
        return None
    emotion, speaker, sentence = m[1].lower(), m[2].lower(), m[3].lower()
    return Utterance(id=relative_id(file, root), path=str(file), label=emotion, speaker=speaker,
                     gender="female" if speaker.startswith("f") else "male",
                     extras={"emotion_code": emotion, "sentence_id": sentence})


def detect(path: Path) -> bool:
    return path.is_dir() and any(NAME.match(f.stem) for d in path.iterdir() if d.is_dir()
                                 for f in audio_files(d, recursive=False)[:1])


def load(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    return load_named_files("emovo", path, audio_files(path), parse, views=VIEWS, default_view="7class", view=view,
                            strict=strict,
                            default_folds=lambda rows: from_speaker_table(rows, packaged_table("emovo"), "emovo"))

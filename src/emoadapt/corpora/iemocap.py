"""IEMOCAP, official release layout (Busso et al. 2008).

Labels: ``Session{1..5}/dialog/EmoEvaluation/<dialog>.txt``, one line per utterance such as
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`` (start - end, id, majority
label, valence/activation/dominance). Audio: ``Session{n}/sentences/wav/<dialog>/<utterance>.wav``.
Only the top-level .txt files are read (the Categorical/ Attribute/ Self-evaluation/ subfolders hold the
individual annotators' votes).

Speaker = session + gender of the person speaking, which is the letter before the utterance number
(``Ses01F_impro01_M003`` -> ``Ses01M``; the F in ``Ses01F`` only says who wore the markers).
Folds: leave-one-session-out, fold n = Session n (a ``folds.csv`` in the folder takes precedence).
Views:
- ``4class`` (default): neutral, happy (= hap + exc), angry, sad; everything else dropped. On the full corpus
  this is the standard 5531-utterance set (1708 neu, 1636 hap+exc, 1103 ang, 1084 sad).
- ``full``: every utterance with a majority label: neutral, happy, excited, angry, sad, frustrated, surprised,
  fearful, disgusted, other (``oth``: annotators agreed on "other"). ``xxx`` (no majority among the annotators)
  is not an emotion label, so those utterances are dropped in every view.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import CorpusError
from .base import Corpus, Problems, apply_view, check_files, pick_view, view_labels
from .splits import Folds, folds_for
from .manifest import Utterance

LINE = re.compile(r"^\[(\d+(?:\.\d*)?) - (\d+(?:\.\d*)?)\]\s+(Ses(\d\d)[FM]_\S+)\s+(\w+)\s+"
                  r"\[([\d.]+),\s*([\d.]+),\s*([\d.]+)\]")
UTTERANCE = re.compile(r"^Ses(\d\d)[FM]_.+_([FM])\d+$")
VIEWS = {
    "4class": {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"},
    "full": {"neu": "neutral", "hap": "happy", "exc": "excited", "ang": "angry", "sad": "sad", "fru": "frustrated",
             "sur": "surprised", "fea": "fearful", "dis": "disgusted", "oth": "other"},
}


def parse(file: Path, root: Path | None = None) -> Utterance | None:
    """Speaker and gender from an utterance file name alone (labels live in EmoEvaluation, not in the name)."""
    m = UTTERANCE.match(file.stem)
    if m is None:
        return None
    return Utterance(id=file.stem, path=str(file), label=None, speaker=f"Ses{m[1]}{m[2]}",
                     gender="female" if m[2] == "F" else "male", extras={"session": int(m[1])})


def detect(path: Path) -> bool:
    return path.is_dir() and any(path.glob("Session*/dialog/EmoEvaluation"))


def read_evaluation(session_dir: Path, root: Path) -> list[Utterance]:
    """One row per labelled utterance of a session, label = IEMOCAP's code (neu, hap, ..., xxx)."""
    rows = []
    for txt in sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt")):
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            m = LINE.match(line)
            if m is None:
                continue
            start, end, utt, session, code = float(m[1]), float(m[2]), m[3], int(m[4]), m[5]
            dialog = utt.rsplit("_", 1)[0]
            wav = session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"
            who = parse(wav)
            rows.append(Utterance(
                id=wav.relative_to(root).as_posix(), path=str(wav), label=code,
                speaker=who.speaker if who else None, gender=who.gender if who else None,
                duration=round(end - start, 4),
                extras={"utterance": utt, "session": session, "dialog": dialog, "emotion_code": code,
                        "improvised": "_impro" in dialog, "start": start, "end": end,
                        "valence": float(m[6]), "activation": float(m[7]), "dominance": float(m[8])}))
    return rows


def load(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    view_name, mapping = pick_view("iemocap", VIEWS, view, "4class")
    problems = Problems(path, strict)
    sessions = sorted(d for d in path.glob("Session*") if re.fullmatch(r"Session\d+", d.name) and d.is_dir())
    rows = [u for d in sessions for u in read_evaluation(d, path)]
    if not rows:
        raise CorpusError(path, "no utterance lines found in Session*/dialog/EmoEvaluation/*.txt")
    rows = check_files(apply_view(rows, mapping), problems, labelled=True)
    folds = folds_for(path, rows, lambda rows: Folds.from_rows(rows, lambda u: u.extras["session"]), problems)
    return Corpus("iemocap", path, rows, folds, view_labels(mapping), view_name, problems.finish())

"""The data contract: one manifest row per utterance (EmoBox-style), whatever the corpus; and its CSV form."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import CorpusError


@dataclass(frozen=True)
class Utterance:
    id: str                      # unique within a corpus, stable across machines (e.g. the path relative to the corpus root)
    path: str                    # absolute path of the audio file
    label: str | None            # emotion label in the corpus's own words; None for unlabeled audio
    speaker: str | None          # speaker id; folds and validation splits are drawn by speaker
    gender: str | None = None    # "female" / "male" / None
    duration: float | None = None  # seconds, when the corpus states it (not required)
    extras: dict = field(default_factory=dict, compare=False)  # corpus-specific columns (intensity, session ...)


def read_table(path: str | os.PathLike, what: str) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, columns) of a CSV a user gives (manifest, folds, label map, demographics): every way it can be
    unreadable (missing, not UTF-8 text, broken quoting, NUL bytes) is a CorpusError naming the file and ``what``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return rows, list(reader.fieldnames or [])
    except UnicodeDecodeError:
        raise CorpusError(path, f"not a text CSV file (it is not UTF-8); a {what} is a CSV file") from None
    except csv.Error as e:
        raise CorpusError(path, f"not a readable CSV file ({e}); a {what} is a CSV file") from None
    except OSError as e:
        raise CorpusError(path, f"cannot read the {what} ({e.strerror or e})") from None


# --- manifest CSV: path,label[,speaker,gender,duration,...]; any other column is kept in extras ----------------
COLUMNS = ("id", "path", "label", "speaker", "gender", "duration")


def cell(value) -> str | None:
    """A value as written in a manifest, without the spaces around it; None when empty."""
    text = "" if value is None else str(value).strip()
    return text or None


def normalise_gender(value: str | None) -> str | None:
    v = (value or "").strip().lower()
    return {"f": "female", "female": "female", "w": "female", "woman": "female",
            "m": "male", "male": "male", "man": "male"}.get(v, v or None)


def read_manifest(path: str | os.PathLike, *, labelled: bool = True) -> list[Utterance]:
    """Rows of a manifest CSV. Relative paths are relative to the CSV's folder; the id is the ``id`` column, else
    the path as written. ``duration_s`` is read as ``duration``. With labelled=False labels are dropped.
    Does not touch the audio (load_corpus checks that the files exist)."""
    path = Path(path)
    table, columns = read_table(path, "manifest")
    if "path" not in columns:
        raise CorpusError(path, f"a manifest needs a 'path' column; found {columns}")
    known = {"id", "path", "label", "speaker", "gender", "duration", "duration_s"}
    rows = []
    for n, r in enumerate(table, start=2):
        written = (r.get("path") or "").strip()
        if not written:
            raise CorpusError(path, f"line {n}: empty path")
        audio = os.path.abspath(written if os.path.isabs(written) else path.parent / written)
        duration = r.get("duration") or r.get("duration_s")
        try:
            duration = float(duration) if duration else None
        except ValueError:
            raise CorpusError(path, f"line {n}: duration {duration!r} is not a number") from None
        rows.append(Utterance(
            id=cell(r.get("id")) or str(PurePosixPath(written.replace(os.sep, "/"))),
            path=audio,
            label=cell(r.get("label")) if labelled else None,
            speaker=cell(r.get("speaker")),
            gender=normalise_gender(r.get("gender")),
            duration=duration,
            extras={k: v for k, v in r.items() if k not in known and k is not None},
        ))
    return rows


def write_manifest(rows: list[Utterance], path: str | os.PathLike) -> Path:
    """Write rows as a manifest CSV (paths relative to its folder when the audio lies under it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra_columns = list(dict.fromkeys(k for u in rows for k in u.extras if k not in COLUMNS))
    base = Path(os.path.abspath(path.parent))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*COLUMNS, *extra_columns])
        for u in rows:
            audio = Path(os.path.abspath(u.path))
            shown = audio.relative_to(base).as_posix() if audio.is_relative_to(base) else str(audio)
            w.writerow([u.id, shown, u.label or "", u.speaker or "", u.gender or "",
                        "" if u.duration is None else repr(u.duration),
                        *(u.extras.get(k, "") for k in extra_columns)])
    return path

"""What every corpus loader shares: the ``Corpus`` value, walking audio files, label views and problem reports.

A corpus module only knows its own file names; everything else (existence checks, views, folds) lives here and
in ``splits.py``. Nothing here decodes audio: loading a corpus is a walk over names plus one ``stat`` per file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from ..audio import AUDIO_EXTENSIONS
from ..errors import CorpusError
from .splits import Folds, folds_for
from .manifest import Utterance, read_table


@dataclass
class Corpus:
    name: str                      # "ravdess", "iemocap", ... or the folder / file name for generic corpora
    root: Path                     # the folder ids are relative to
    rows: list[Utterance]          # one per utterance, in a stable order
    folds: Folds | None            # test fold per utterance (data, never code); None when the corpus has none
    labels: list[str]              # the classes of this view in a fixed order; [] for unlabeled audio
    view: str | None = None        # e.g. "4class"; None for corpora without views
    problems: list[str] = field(default_factory=list)  # only filled by load_corpus(..., strict=False)

    def select(self, ids: Iterable[str]) -> list[Utterance]:
        """The rows with these ids, in the order given (e.g. a fold's ``Split.train``)."""
        by_id = {u.id: u for u in self.rows}
        try:
            return [by_id[i] for i in ids]
        except KeyError as e:
            raise CorpusError(self.root, f"utterance {e.args[0]!r} is not in corpus {self.name}") from None


def one_fold(corpus: Corpus) -> Folds:
    """Every utterance in one fold: for a corpus without folds, where only its speakers matter."""
    return Folds.from_rows(corpus.rows, lambda u: 0)


def speaker_group(corpus: Corpus):
    """utterance id -> the unit that never crosses train / validation / test: its speaker (the utterance itself when
    no speaker is known), as the folds group them."""
    return (corpus.folds or one_fold(corpus)).group


# --- problems: raised together in strict mode, listed by summarize() otherwise -------------------------------
def preview(items: list[str], limit: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 12 more': enough to find the files without flooding the terminal."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


class Problems:
    def __init__(self, where: Path, strict: bool):
        self.where, self.strict, self.found = where, strict, []

    def add(self, what: str, items: list[str]) -> None:
        if items:
            self.found.append(f"{len(items)} {what}: {preview(items)}")

    def finish(self) -> list[str]:
        if self.strict and self.found:
            raise CorpusError(self.where, "; ".join(self.found))
        return self.found


def check_files(rows: list[Utterance], problems: Problems, *, labelled: bool) -> list[Utterance]:
    """Drop (and report) rows whose file is missing or empty, that lack a label, or repeat an id. No decoding."""
    kept, missing, empty, unlabelled, seen, repeated = [], [], [], [], set(), []
    for u in rows:
        if u.id in seen:
            repeated.append(u.id)
            continue
        seen.add(u.id)
        try:
            size = os.stat(u.path).st_size
        except OSError:
            missing.append(u.path)
            continue
        if size == 0:
            empty.append(u.path)
        elif labelled and not u.label:
            unlabelled.append(u.path)
        else:
            kept.append(u)
    problems.add("missing audio files", missing)
    problems.add("empty (0-byte) audio files", empty)
    problems.add("rows without a label", unlabelled)
    problems.add("repeated utterance ids", repeated)
    return kept


# --- files and names --------------------------------------------------------------------------------------------
def audio_files(folder: Path, *, recursive: bool = True, links: list[str] | None = None) -> list[Path]:
    """Audio files under ``folder``, sorted; hidden files and folders (macOS ``._x.wav`` twins) are skipped.

    Links to folders inside it are never followed (one could leave the corpus, loop back into itself, or file
    another label's clips under this one); they are appended to ``links`` so the caller can report them. Links to
    files are kept: building a corpus out of file links is common."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        if links is not None:
            links += [relative_id(Path(dirpath, d), folder) for d in linked if not d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in linked) if recursive else []
        found += [Path(dirpath, f) for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_EXTENSIONS]
    return sorted(found)


def relative_id(path: Path, root: Path) -> str:
    """Utterance id = path relative to the corpus root, with '/' on every OS (stable across machines)."""
    return Path(os.path.relpath(path, root)).as_posix()


# --- label views ----------------------------------------------------------------------------------------------
View = dict[str, str]  # the corpus's emotion code -> the label in this view; codes not in it are dropped


def pick_view(name: str, views: dict[str, View], view: str | None, default: str) -> tuple[str, View]:
    key = default if view is None else view
    if key not in views:
        raise CorpusError(None, f"{name} has no view {view!r}; choose one of: {', '.join(views)}")
    return key, views[key]


def view_labels(mapping: View) -> list[str]:
    return list(dict.fromkeys(mapping.values()))


def apply_view(rows: list[Utterance], mapping: View) -> list[Utterance]:
    """Relabel rows whose label is an emotion code; rows outside the view are left out (e.g. 'calm' in 4class)."""
    return [replace(u, label=mapping[u.label]) for u in rows if u.label in mapping]


# --- one loader for every corpus whose labels sit in its file names ---------------------------------------------
Parse = Callable[[Path, Path], "Utterance | None"]  # (file, root) -> row with label = emotion code, or None


def load_named_files(name: str, root: Path, files: list[Path], parse: Parse, *, views: dict[str, View],
                     default_view: str, view: str | None, strict: bool,
                     default_folds: Callable[[list[Utterance]], Folds]) -> Corpus:
    """Parse each official file name, cross-check a shared-copy ``manifest.csv`` when present, apply the view,
    then attach the folds: the folder's own ``folds.csv`` if any, else ``default_folds(rows)``."""
    view_name, mapping = pick_view(name, views, view, default_view)
    problems = Problems(root, strict)
    rows, unparsed = [], []
    for f in files:
        u = parse(f, root)
        if u is None:
            unparsed.append(relative_id(f, root))
        else:
            rows.append(u)
    if not files:
        raise CorpusError(root, f"no audio files found where {name} keeps them")
    problems.add(f"audio files not named like {name}'s official files (no label)", unparsed)
    rows = merge_manifest(rows, root, views[default_view], problems)
    rows = check_files(apply_view(rows, mapping), problems, labelled=True)
    folds = folds_for(root, rows, default_folds, problems)
    return Corpus(name, root, rows, folds, view_labels(mapping), view_name, problems.finish())


MANIFEST_COLUMNS = {"path", "label", "speaker", "gender", "duration_s", "duration"}


def merge_manifest(rows: list[Utterance], root: Path, words: View, problems: Problems) -> list[Utterance]:
    """The shared copies carry a manifest.csv beside the audio: take its durations and extra columns, check its
    labels agree with the file names (labels always come from the names) and that every file it lists exists."""
    path = root / "manifest.csv"
    if not path.is_file():
        return rows
    table = {r.get("path", ""): r for r in read_table(path, "manifest")[0]}
    merged, disagree = [], []
    for u in rows:
        r = table.get(u.id)
        if r is None:
            merged.append(u)
            continue
        if r.get("label") and r["label"] != words.get(u.label, u.label):
            disagree.append(f"{u.id} ({r['label']} vs {words.get(u.label, u.label)})")
        duration = r.get("duration_s") or r.get("duration")
        extras = {k: v for k, v in r.items() if k not in MANIFEST_COLUMNS}
        merged.append(replace(u, duration=float(duration) if duration else u.duration, extras={**extras, **u.extras}))
    problems.add(f"files whose label in {path.name} differs from their name", disagree)
    problems.add(f"missing audio files listed in {path.name}", [p for p in table if not (root / p).is_file()])
    return merged

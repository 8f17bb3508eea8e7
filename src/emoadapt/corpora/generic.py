"""Corpora without an official layout: a manifest CSV, one folder per label, or plain unlabeled audio.

- ``csv``: ``manifest.csv`` (or any CSV) with at least ``path,label``; optional ``speaker``, ``gender``,
  ``duration``/``duration_s``, ``id``, ``fold``; other columns go to ``extras``. Folds from a ``fold`` column, else
  a ``folds.csv`` beside it, else none.
- ``folders``: ``<root>/<label>/**/<audio>``; no speakers, so no folds (unless a ``folds.csv`` is beside them).
- ``unlabeled``: every audio file under a folder (recursively), or the rows of a manifest CSV with a ``path``
  column (labels ignored), e.g. the shared ``unlabeled/manifest.csv``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CorpusError
from .base import Corpus, Problems, audio_files, check_files, relative_id
from .splits import Folds, folds_for
from .manifest import Utterance, read_manifest, read_table


def manifest_of(path: Path) -> Path | None:
    """The manifest CSV a path stands for: the file itself, or ``manifest.csv`` inside a folder."""
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    return path / "manifest.csv" if (path / "manifest.csv").is_file() else None


def has_labels(path: Path) -> bool:
    """A manifest is labelled if it has a 'label' column with at least one value (write_manifest of unlabeled
    rows leaves the column empty)."""
    return any(r.get("label") for r in read_table(path, "manifest")[0])


def is_label_folders(path: Path) -> bool:
    """Audio no deeper than one sub-folder, in at least two sub-folders (loose files then count as unlabelled)."""
    files = audio_files(path)
    return all(path in (f.parent, f.parent.parent) for f in files) and len({f.parent for f in files} - {path}) >= 2


def _no_view(kind: str, view: str | None) -> None:
    if view is not None:
        raise CorpusError(None, f"a {kind} corpus has no views (got view={view!r}); relabel it in the CSV instead")


def _folds(root: Path, rows: list[Utterance], problems: Problems) -> Folds | None:
    if rows and "fold" in rows[0].extras:
        bad = [u.id for u in rows if not str(u.extras.get("fold", "")).strip().isdigit()]
        problems.add("rows whose fold is not a whole number", bad)
        rows = [u for u in rows if u.id not in set(bad)]
        folds = Folds.from_rows(rows, lambda u: int(u.extras["fold"]))
        problems.add("speakers in more than one fold", folds.mixed_speakers())
        return folds
    if (root / "folds.csv").is_file():
        return folds_for(root, rows, lambda rows: None, problems)
    return None


def load_csv(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    _no_view("csv", view)
    table = manifest_of(path)
    if table is None:
        raise CorpusError(path, "no manifest CSV here (expected a .csv file or a folder with manifest.csv)")
    rows = read_manifest(table)
    if not any(u.label for u in rows):
        raise CorpusError(table, "no labels (no 'label' column, or all empty): load it with kind='unlabeled'")
    problems = Problems(table, strict)
    rows = check_files(rows, problems, labelled=True)
    folds = _folds(table.parent, rows, problems)
    name = table.parent.name if table.name == "manifest.csv" else table.stem
    return Corpus(name, table.parent, rows, folds, sorted({u.label for u in rows}), None, problems.finish())


def load_folders(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    _no_view("folders", view)
    problems, links = Problems(path, strict), []
    files = audio_files(path, links=links)
    problems.add("links to folders, not followed (they may leave the corpus or loop)", links)
    if not files:
        raise CorpusError(path, "no audio files found")
    loose = [relative_id(f, path) for f in files if f.parent == path]
    problems.add("audio files outside a label folder (no label)", loose)
    rows = [Utterance(id=relative_id(f, path), path=str(f), label=Path(relative_id(f, path)).parts[0], speaker=None)
            for f in files if f.parent != path]
    rows = check_files(rows, problems, labelled=True)
    folds = _folds(path, rows, problems)
    return Corpus(path.name, path, rows, folds, sorted({u.label for u in rows}), None, problems.finish())


def load_unlabeled(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    _no_view("unlabeled", view)
    table = manifest_of(path)
    if table is not None:
        root, name, rows = table.parent, (table.parent.name if table.name == "manifest.csv" else table.stem), \
            read_manifest(table, labelled=False)
    problems, links = Problems(table or path, strict), []
    if table is None:
        files = audio_files(path, links=links)
        problems.add("links to folders, not followed (they may leave the corpus or loop)", links)
        if not files:
            raise CorpusError(path, "no audio files found")
        root, name = path, path.name
        rows = [Utterance(id=relative_id(f, path), path=str(f), label=None, speaker=None) for f in files]
    rows = check_files(rows, problems, labelled=False)
    return Corpus(name, root, rows, None, [], None, problems.finish())

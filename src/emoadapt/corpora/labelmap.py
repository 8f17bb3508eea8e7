"""Label maps: one shared label set for corpora that name their classes differently (RAVDESS ``fearful``, EMOVO
``fear``), as data. A map is a CSV ``corpus,label,to``: each corpus label is renamed to ``to``, or dropped when
``to`` is empty (RAVDESS ``calm`` has no EMOVO counterpart). The shared classes are the ``to`` values in the order
they first appear. Packaged maps live in ``label_maps/`` and are named without ``.csv`` (``shared7``: the 7 classes
RAVDESS and EMOVO share); any other path is read as a map file. Cross-corpus tests and merged training sets
(several corpora, one model) both go through :func:`apply_label_map`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import CorpusError
from .base import Corpus, preview
from .manifest import read_table

PACKAGED_MAPS = Path(__file__).parent / "label_maps"
COLUMNS = ("corpus", "label", "to")


@dataclass(frozen=True)
class LabelMap:
    name: str
    classes: tuple[str, ...]                  # the shared label set, in order
    rename: dict[tuple[str, str], str | None]  # (corpus name, its label) -> shared label, None: dropped
    source: str                               # the file it was read from

    def corpora(self) -> set[str]:
        return {c for c, _ in self.rename}


def packaged_label_maps() -> list[str]:
    return sorted(p.stem for p in PACKAGED_MAPS.glob("*.csv"))


def read_label_map(name_or_path: str | os.PathLike) -> LabelMap:
    """A packaged map by name (``shared7``) or a ``corpus,label,to`` CSV file."""
    path = Path(name_or_path)
    if not path.suffix and (PACKAGED_MAPS / f"{path.name}.csv").is_file() and not path.exists():
        path = PACKAGED_MAPS / f"{path.name}.csv"
    if not path.is_file():
        raise CorpusError(path, f"no such label map; give a CSV file with columns {','.join(COLUMNS)} or one of "
                                f"the packaged maps: {', '.join(packaged_label_maps())}")
    rows, columns = read_table(path, f"label map ({','.join(COLUMNS)})")
    if not set(COLUMNS) <= set(columns):
        raise CorpusError(path, f"a label map needs the columns {','.join(COLUMNS)}; found {columns or 'none'}")
    rename, classes = {}, []
    for n, row in enumerate(rows, start=2):
        corpus, label, to = ((row.get(k) or "").strip() for k in COLUMNS)
        if not corpus or not label:
            raise CorpusError(path, f"line {n}: corpus and label must not be empty")
        if (corpus, label) in rename:
            raise CorpusError(path, f"line {n}: {corpus} label {label!r} is mapped twice")
        rename[(corpus, label)] = to or None
        if to and to not in classes:
            classes.append(to)
    if not classes:
        raise CorpusError(path, "the label map maps no label to a class")
    return LabelMap(path.stem, tuple(classes), rename, str(path))


def apply_label_map(corpus: Corpus, label_map: LabelMap | str | os.PathLike) -> Corpus:
    """``corpus`` with its labels renamed to the map's classes; utterances whose label maps to nothing are left out
    (with their folds). Every label of the corpus must have a row, so that nothing is dropped by accident."""
    label_map = label_map if isinstance(label_map, LabelMap) else read_label_map(label_map)
    if corpus.name not in label_map.corpora():
        raise CorpusError(label_map.source, f"label map {label_map.name} has no rows for corpus {corpus.name!r} "
                                            f"(it maps {', '.join(sorted(label_map.corpora()))}); add rows "
                                            f"'{corpus.name},<label>,<shared label or empty to drop>'")
    unmapped = sorted({u.label for u in corpus.rows if (corpus.name, u.label) not in label_map.rename})
    if unmapped:
        raise CorpusError(label_map.source, f"label map {label_map.name} does not say what {corpus.name} labels "
                                            f"{preview(unmapped)} become; add a row for each (empty 'to' drops it)")
    rows = [replace(u, label=label_map.rename[(corpus.name, u.label)]) for u in corpus.rows
            if label_map.rename[(corpus.name, u.label)] is not None]
    if not rows:
        raise CorpusError(label_map.source, f"label map {label_map.name} drops every utterance of {corpus.name}")
    present = {u.label for u in rows}
    view = f"{corpus.view}>{label_map.name}" if corpus.view else label_map.name
    return replace(corpus, rows=rows, labels=[c for c in label_map.classes if c in present], view=view,
                   folds=corpus.folds.restrict(u.id for u in rows) if corpus.folds is not None else None)


def merge_corpora(corpora: list[Corpus], name: str = "merged") -> Corpus:
    """One corpus from several that share a label set (apply a label map to each first): ids become
    ``<corpus>/<id>`` and speakers ``<corpus>:<speaker>``, so nothing collides, and fold k is the union of every
    corpus's fold k (each corpus's folds stay speaker-independent). Folds are kept only when every corpus has them.
    :func:`emoadapt.corpora.write_manifest` writes it as a manifest (with ``corpus`` and ``fold`` columns) that
    ``load_corpus`` reads back."""
    if len(corpora) < 2:
        raise CorpusError(None, "merging needs at least two corpora")
    names = [c.name for c in corpora]
    if len(set(names)) != len(names):
        raise CorpusError(None, f"two corpora are both called {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
                                "merge different corpora")
    labels = list(dict.fromkeys(label for c in corpora for label in c.labels))
    with_folds = all(c.folds is not None for c in corpora)
    rows = []
    for c in corpora:
        for u in c.rows:
            extras = {"corpus": c.name}
            if with_folds:
                extras["fold"] = c.folds.assignments[u.id]
            rows.append(replace(u, id=f"{c.name}/{u.id}", speaker=f"{c.name}:{u.speaker}" if u.speaker else None,
                                extras=extras))
    from .splits import Folds
    folds = Folds.from_rows(rows, lambda u: u.extras["fold"]) if with_folds else None
    return Corpus(name, corpora[0].root, rows, folds, labels, "+".join(c.view or c.name for c in corpora))

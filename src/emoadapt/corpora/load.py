"""``load_corpus``: a folder or file in, a ``Corpus`` (rows + folds + labels) out; the kind is found from the layout.

Detection order (first match wins): iemocap (``Session*/dialog/EmoEvaluation``), ravdess (``Actor_NN/`` with
official names), cremad (``AudioWAV/`` or files like ``1001_DFA_ANG_XX.wav``), emodb (``wav/`` or files like
``03a01Fa.wav``), emovo (speaker folders with ``neu-f1-b1.wav``-style names), emobox (a ``.jsonl`` file or an
EmoBox corpus folder), csv (a manifest with labels in a ``label`` column), unlabeled (a manifest without), folders
(audio in two or more first-level sub-folders and nowhere deeper: the folder name is the label), and otherwise
unlabeled (all audio files, recursively). A folder of per-speaker sub-folders looks like ``folders``:
pass kind="unlabeled" then.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ..errors import CorpusError
from . import cremad, emobox, emodb, emovo, generic, iemocap, ravdess
from .base import Corpus, Problems
from .labelmap import apply_label_map

LOADERS = {"ravdess": ravdess.load, "emovo": emovo.load, "cremad": cremad.load, "emodb": emodb.load,
           "iemocap": iemocap.load, "emobox": emobox.load, "csv": generic.load_csv,
           "folders": generic.load_folders, "unlabeled": generic.load_unlabeled}


def detect_kind(path: str | os.PathLike) -> str:
    path = Path(path)
    for kind, module in (("iemocap", iemocap), ("ravdess", ravdess), ("cremad", cremad), ("emodb", emodb),
                         ("emovo", emovo), ("emobox", emobox)):
        if module.detect(path):
            return kind
    table = generic.manifest_of(path)
    if table is not None:
        return "csv" if generic.has_labels(table) else "unlabeled"
    if path.is_file():
        raise CorpusError(path, "not a corpus: expected a folder, a manifest .csv or an EmoBox .jsonl")
    return "folders" if generic.is_label_folders(path) else "unlabeled"


def load_corpus(path: str | os.PathLike, kind: str | None = None, *, view: str | None = None,
                strict: bool = True, label_map: str | os.PathLike | None = None) -> Corpus:
    """Read a corpus without decoding any audio (every file is checked to exist and be non-empty).

    kind: one of LOADERS, detected from the layout when None. view: a label view such as IEMOCAP "4class"
    (default) / "full" or RAVDESS "8class" (default) / "4class". strict=False keeps going past missing or
    unlabelled files, leaving them out and listing them in ``corpus.problems`` (what ``summarize`` shows);
    strict=True raises one CorpusError naming them. label_map: a packaged map's name (``shared7``) or a
    ``corpus,label,to`` CSV that renames (or drops) the view's labels (:mod:`emoadapt.corpora.labelmap`).
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    if not path.exists():
        raise CorpusError(path, "no such file or folder")
    kind = kind or detect_kind(path)
    if kind not in LOADERS:
        raise CorpusError(path, f"unknown corpus kind {kind!r}; known kinds: {', '.join(LOADERS)}")
    corpus = LOADERS[kind](path, view=view, strict=strict)
    corpus = corpus if label_map is None else apply_label_map(corpus, label_map)
    if not corpus.rows and not corpus.problems:
        raise CorpusError(path, "no utterances in this corpus (a manifest with a header and no rows, or nothing "
                                "readable as audio); add its rows or point at the corpus folder")
    return check_values(corpus, strict=strict)


def spelling_variants(values) -> list[str]:
    """Groups of distinct values that differ only by case or spaces ('angry', 'Angry', 'angry '), as text."""
    groups: dict[str, set[str]] = {}
    for v in values:
        if v is not None:
            groups.setdefault(" ".join(v.split()).casefold(), set()).add(v)
    return [" / ".join(repr(v) for v in sorted(g)) for g in groups.values() if len(g) > 1]


def check_values(corpus: Corpus, *, strict: bool) -> Corpus:
    """Problems no loader sees alone: labels or speakers that differ only by case or spaces (two classes, or two
    speakers, that are one: folds and the leakage guard would treat them apart), and fewer than two classes. Raised
    in strict mode, listed otherwise. (Folds whose training speakers lack a class are warnings of
    :func:`summarize`: such a fold trains, its model just never predicts that class.)"""
    problems = Problems(corpus.root, strict=strict)
    problems.add("labels that differ only by case or spaces (write each class one way)",
                 spelling_variants({u.label for u in corpus.rows}))
    problems.add("speakers that differ only by case or spaces (write each speaker one way)",
                 spelling_variants({u.speaker for u in corpus.rows}))
    if len(corpus.labels) == 1:
        problems.found.append(f"only one class ({corpus.labels[0]!r}): a classifier needs at least two")
    found = problems.finish()  # raises in strict mode
    return replace(corpus, problems=[*corpus.problems, *found]) if found else corpus


def fold_warnings(corpus: Corpus) -> list[str]:
    """Folds whose training speakers lack a class: trainable, but that fold's model can never predict it."""
    if len(corpus.labels) < 2 or corpus.folds is None:
        return []
    out = []
    for k in corpus.folds.fold_ids():
        training = {u.label for u in corpus.rows if corpus.folds.assignments.get(u.id) != k}
        missing = [c for c in corpus.labels if c not in training]
        if missing:
            out.append(f"fold {k}: its training speakers have no {', '.join(map(repr, missing))}")
    return out


# --- summary ------------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    """A plain text table: numbers right-aligned, words left-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(r[i].replace(".", "", 1).isdigit() or r[i] == "-" for r in cells[1:]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join(fmt(r).rstrip() for r in [cells[0], ["-" * w for w in widths], *cells[1:]])


def summarize(corpus: Corpus | str | os.PathLike) -> str:
    """Counts per label, per speaker and per fold as text tables, then the problems found. A path is loaded
    leniently (strict=False) so that a broken corpus still gets a summary listing what is wrong."""
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus, strict=False)
    rows, folds = corpus.rows, corpus.folds
    durations = [u.duration for u in rows if u.duration is not None]
    speakers = Counter(u.speaker or "(unknown)" for u in rows)
    known = len(speakers) - ("(unknown)" in speakers)
    head = (f"{corpus.name}" + (f" (view {corpus.view})" if corpus.view else "") + f" at {corpus.root}\n"
            f"{len(rows)} utterances, {len(corpus.labels) or 'no'} labels, {known} speakers"
            + (f" (+{speakers['(unknown)']} utterances without one)" if known < len(speakers) else "") + ", "
            f"{len(folds.fold_ids()) if folds else 'no'} folds; "
            + (f"{sum(durations) / 3600:.2f} h" + ("" if len(durations) == len(rows) else
               f" in the {len(durations)} utterances with a known duration") if durations else "durations unknown"))
    parts = [head]
    fold_ids = folds.fold_ids() if folds else []
    fold_of = folds.assignments if folds else {}
    if corpus.labels:
        counts = Counter(u.label for u in rows)
        per_fold = Counter((u.label, fold_of.get(u.id)) for u in rows)
        parts.append(table(["label", "total", "%", *(f"fold {k}" for k in fold_ids)],
                           [[c, counts[c], f"{100 * counts[c] / max(len(rows), 1):.1f}",
                             *(per_fold[(c, k)] for k in fold_ids)] for c in corpus.labels]))
    if folds:
        in_fold = Counter(fold_of.get(u.id) for u in rows)
        spk = {k: sorted({u.speaker or "(unknown)" for u in rows if fold_of.get(u.id) == k}) for k in fold_ids}
        parts.append(table(["fold", "utterances", "speakers", "test speakers"],
                           [[k, in_fold[k], len(spk[k]), " ".join(spk[k][:8]) + (" ..." if len(spk[k]) > 8 else "")]
                            for k in fold_ids]))
    gender = {u.speaker or "(unknown)": u.gender for u in rows}
    speaker_fold = {u.speaker or "(unknown)": fold_of.get(u.id) for u in rows}
    parts.append(table(["speaker", "gender", "utterances", "fold"],
                       [[s, gender[s] or "-", n, speaker_fold[s] or "-"] for s, n in sorted(speakers.items())]))
    parts.append("problems: none" if not corpus.problems else
                 "problems:\n" + "\n".join(f"  - {p}" for p in corpus.problems))
    notes = fold_warnings(corpus)
    if notes:
        parts.append("warnings:\n" + "\n".join(f"  - {n}" for n in notes))
    return "\n\n".join(parts) + "\n"

"""Helpers and read-only fixtures of the corpus tests."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from emoadapt.corpora import (
    Folds,
)

RAVDESS_8 = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def speaker_table(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        return {r["speaker"]: int(r["fold"]) for r in csv.DictReader(f)}


def assert_proper_split(folds: Folds, split, fold: int) -> None:
    groups = lambda ids: {folds.group(i) for i in ids}
    assert sorted(split.test) == sorted(i for i, f in folds.assignments.items() if f == fold)
    assert not groups(split.train) & groups(split.val)
    assert not groups(split.train) & groups(split.test)
    assert not groups(split.val) & groups(split.test)
    assert sorted(split.train + split.val + split.test) == sorted(folds.assignments)
    assert split.val and split.train











def source_counts(folder: Path) -> dict[str, int]:
    """The class-distribution table of a corpus's SOURCE.md (| label | files |)."""
    text = (folder / "SOURCE.md").read_text()
    table = text.split("Class distribution", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| (\w+) \| (\d+) \|$", table, re.M)}


def fold_file(folder: Path) -> dict[str, int]:
    with open(folder / "folds.csv", newline="") as f:
        return {r["path"]: int(r["fold"]) for r in csv.DictReader(f)}



"""Metrics: UA, WA, macro-F1, weighted-F1 and the confusion matrix; per fold and mean ± std over folds.

UA (unweighted accuracy) is the mean per-class recall; WA (weighted accuracy) is plain accuracy. All numbers come
from scikit-learn so they mean what the SER literature means by them; percentages throughout.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

METRICS = ("ua", "wa", "macro_f1", "weighted_f1")


@dataclass
class Scores:
    ua: float
    wa: float
    macro_f1: float
    weighted_f1: float
    confusion: list[list[int]]     # rows = true class, columns = predicted class, in `labels` order
    labels: list[str]
    count: int

    def line(self) -> str:
        return f"UA {self.ua:.2f}  WA {self.wa:.2f}  macro-F1 {self.macro_f1:.2f}  weighted-F1 {self.weighted_f1:.2f}  (n={self.count})"


def score(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> Scores:
    """Scores of integer predictions against integer targets, classes ``0..len(labels)-1``.

    Classes absent from ``y_true`` are left out of UA (sklearn's recall over the present classes would otherwise
    count them as 0); they still appear in the confusion matrix.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score  # 2 s to import: not at start-up
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of predictions")
    present = sorted(set(y_true.tolist()))
    everything = list(range(len(labels)))
    return Scores(
        ua=100 * float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        wa=100 * float(accuracy_score(y_true, y_pred)),
        macro_f1=100 * float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        weighted_f1=100 * float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        confusion=confusion_matrix(y_true, y_pred, labels=everything).tolist(),
        labels=list(labels),
        count=int(len(y_true)),
    )


def closed_predictions(y_true: Sequence[int], probabilities: np.ndarray) -> list[int]:
    """The argmax over the classes present in ``y_true`` only: a test corpus that has fewer classes than the model
    (leave-one-corpus-out) scored as if the model knew just the target's classes ("closed"); the plain argmax over
    every class is "open"."""
    present = np.array(sorted(set(int(y) for y in y_true)))
    return present[np.asarray(probabilities)[:, present].argmax(1)].tolist()


@dataclass
class CrossValidationReport:
    """Per-fold scores and their mean ± std (population std over folds, as EmoBox reports)."""
    folds: dict[int, Scores] = field(default_factory=dict)

    def summary(self) -> dict[str, tuple[float, float]]:
        return {m: (float(np.mean([getattr(s, m) for s in self.folds.values()])),
                    float(np.std([getattr(s, m) for s in self.folds.values()]))) for m in METRICS}

    def pooled_confusion(self) -> np.ndarray:
        return np.sum([np.asarray(s.confusion) for s in self.folds.values()], axis=0)

    def table(self) -> str:
        head = f"{'fold':>6}  {'UA':>6}  {'WA':>6}  {'macro-F1':>8}  {'w-F1':>6}  {'n':>5}"
        rows = [f"{k:>6}  {s.ua:6.2f}  {s.wa:6.2f}  {s.macro_f1:8.2f}  {s.weighted_f1:6.2f}  {s.count:5d}"
                for k, s in sorted(self.folds.items())]
        mean = self.summary()
        rows.append("  mean  " + "  ".join(f"{mean[m][0]:.2f}±{mean[m][1]:.2f}" for m in METRICS))
        return "\n".join([head, *rows])

    def to_json(self) -> dict:
        return {"folds": {str(k): asdict(s) for k, s in sorted(self.folds.items())},
                "mean_std": {m: {"mean": v[0], "std": v[1]} for m, v in self.summary().items()}}

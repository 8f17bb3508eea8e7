import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from emoadapt.evaluation import CrossValidationReport, plot_confusion, score, write_json

LABELS = ["neutral", "happy", "angry"]


def test_scores_match_hand_computed_case():
    # recalls 1/2, 2/2, 1/2 -> UA 66.67; 4 of 6 right -> WA 66.67; F1 per class 0.5, 0.8, 2/3
    s = score([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], LABELS)
    assert s.ua == pytest.approx(100 * 2 / 3)
    assert s.wa == pytest.approx(100 * 4 / 6)
    assert s.macro_f1 == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)
    assert s.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert s.count == 6


def test_scores_equal_sklearn_on_random_imbalanced_data():
    rng = np.random.default_rng(0)
    y = rng.choice(4, size=300, p=[0.55, 0.25, 0.15, 0.05])
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, 300))
    s = score(y, p, ["a", "b", "c", "d"])
    assert s.ua == pytest.approx(100 * balanced_accuracy_score(y, p))
    assert s.macro_f1 == pytest.approx(100 * f1_score(y, p, average="macro"))
    assert s.weighted_f1 == pytest.approx(100 * f1_score(y, p, average="weighted"))
    assert s.ua != pytest.approx(s.wa)  # imbalanced: the two accuracies differ


def test_class_absent_from_targets_does_not_count_as_zero_recall():
    s = score([0, 0, 1, 1], [0, 0, 1, 2], LABELS)
    assert s.ua == pytest.approx(100 * (1 + 0.5) / 2)
    assert np.asarray(s.confusion).sum() == 4


def test_cross_validation_summary_and_outputs(tmp_path):
    report = CrossValidationReport()
    report.folds[1] = score([0, 1, 2], [0, 1, 2], LABELS)
    report.folds[2] = score([0, 1, 2], [0, 0, 0], LABELS)
    mean = report.summary()
    assert mean["ua"] == pytest.approx(((100 + 100 / 3) / 2, (100 - 100 / 3) / 2))
    assert report.pooled_confusion().sum() == 6
    assert "mean" in report.table()
    png = plot_confusion(report.pooled_confusion(), LABELS, tmp_path / "cm.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = write_json(report.to_json(), tmp_path / "results.json")
    assert json.loads(out.read_text())["mean_std"]["wa"]["mean"] == pytest.approx(mean["wa"][0])
    assert not list(tmp_path.glob("*.tmp*"))

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from emoadapt.atomic import atomic_write_json as write_json
from emoadapt.training.metrics import CrossValidationReport, score
from emoadapt.training.reports import (
    compare_runs,
    compare_table,
    paired_difference,
    paired_table,
    plot_confusion,
)

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
    lines = report.table().splitlines()
    assert lines[1].split() == ["1", "100.00", "100.00", "100.00", "100.00", "3"]
    assert lines[2].split()[:3] == ["2", f"{100 / 3:.2f}", f"{100 / 3:.2f}"]
    assert lines[3].split()[:2] == ["mean", f"{mean['ua'][0]:.2f}±{mean['ua'][1]:.2f}"]
    png = plot_confusion(report.pooled_confusion(), LABELS, tmp_path / "cm.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = write_json(report.to_json(), tmp_path / "results.json")
    assert json.loads(out.read_text())["mean_std"]["wa"]["mean"] == pytest.approx(mean["wa"][0])
    assert not list(tmp_path.glob("*.tmp*"))


def _cv_results(folder: Path, recipe: str, seed: int, uas: list[float], lr: float = 1e-4) -> Path:
    folder.mkdir(parents=True)
    folds = {str(k + 1): {"ua": ua, "wa": ua + 1, "macro_f1": ua - 1, "weighted_f1": ua, "best_val_ua": ua + 5}
             for k, ua in enumerate(uas)}
    (folder / "results.json").write_text(json.dumps({
        "protocol": {"corpus": "ravdess", "view": "8class"}, "recipe": recipe, "seed": seed,
        "config": {"seed": seed, "stage2": {"lr": lr}}, "folds": folds, "unlabeled_stores": []}))
    return folder


def test_compare_pools_seeds_of_the_same_settings_only(tmp_path):
    a0 = _cv_results(tmp_path / "adapter-s0", "adapter", 0, [60, 70, 80])
    a1 = _cv_results(tmp_path / "adapter-s1", "adapter", 1, [62, 72, 82])
    other_lr = _cv_results(tmp_path / "adapter-lr", "adapter", 0, [50, 50, 50], lr=1e-3)
    superb = _cv_results(tmp_path / "superb-s0", "superb", 0, [55, 65, 75])
    rows = compare_runs([a0, a1, other_lr, superb])
    assert len(rows) == 3
    pooled = rows[0]
    assert pooled["seeds"] == [0, 1] and pooled["folds"] == [1, 2, 3] and pooled["ua"]["n"] == 6
    every = [60, 70, 80, 62, 72, 82]
    assert pooled["ua"]["mean"] == pytest.approx(np.mean(every)) and pooled["ua"]["std"] == pytest.approx(np.std(every))
    assert pooled["ua"]["std_of_seed_means"] == pytest.approx(1.0)  # seed means 70 and 72
    assert pooled["wa"]["mean"] == pytest.approx(np.mean(every) + 1)
    assert pooled["val_ua"] == pytest.approx(np.mean(every) + 5)
    assert rows[1]["ua"]["mean"] == 50 and rows[2]["recipe"] == "superb"
    table = compare_table(rows)
    assert "| adapter-s0 … | ravdess | adapter | 2 × 3 | 71.00 ± 8.23 |" in table
    assert len(compare_runs([a0, a0 / "results.json", a1])[0]["runs"]) == 2  # the same run named twice counts once
    dup = tmp_path / "copy-of-a0"
    dup.mkdir()
    (dup / "results.json").write_text((a0 / "results.json").read_text())
    with pytest.raises(ValueError, match="same settings and seed 0"):
        compare_runs([a0, dup])
    # paired by (seed, fold): superb has seed 0 only, so 3 pairs against the pooled adapter row
    d = paired_difference(rows[2], rows[0])
    assert d == {"mean": pytest.approx(-5.0), "std": pytest.approx(0.0), "pairs": 3, "better": 0, "worse": 3}
    assert "adapter-lr: -20.00 ± 8.16 over 3 pairs (better in 0, worse in 3)" in paired_table(rows, 0)
    # a run recorded before a setting existed pools with a newer run that keeps it at its default; a results file
    # copied out of its folder (docs/results/<run>.json) is named by its file
    a2 = _cv_results(tmp_path / "adapter-s2", "adapter", 2, [61, 71, 81])
    recorded = json.loads((a2 / "results.json").read_text())
    recorded["config"]["stage2"]["mixup_alpha"] = 0.0
    (tmp_path / "adapter-s2.json").write_text(json.dumps(recorded))
    (pooled3,) = compare_runs([a0, a1, tmp_path / "adapter-s2.json"])
    assert pooled3["seeds"] == [0, 1, 2] and pooled3["runs"][2] == str(tmp_path / "adapter-s2")
    recorded["config"]["stage2"]["mixup_alpha"] = 0.4
    (tmp_path / "adapter-mixup-s2.json").write_text(json.dumps(recorded))
    assert len(compare_runs([a0, tmp_path / "adapter-mixup-s2.json"])) == 2
    unfinished = _cv_results(tmp_path / "adapter-s3", "adapter", 3, [64])  # fold 1 of 3 done: not pooled
    (whole, partial) = compare_runs([a0, a1, unfinished])
    assert whole["seeds"] == [0, 1] and partial["seeds"] == [3] and partial["folds"] == [1]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="junk.*not a cross-validation results file"):
        compare_runs([tmp_path / "junk"])


def test_compare_command_prints_the_paired_differences_against_a_baseline(tmp_path, capsys):
    from emoadapt import cli
    a0 = _cv_results(tmp_path / "adapter-s0", "adapter", 0, [60, 70, 80])
    a1 = _cv_results(tmp_path / "adapter-s1", "adapter", 1, [62, 72, 82])
    superb = _cv_results(tmp_path / "superb-s0", "superb", 0, [55, 66, 74])
    assert cli.main(["compare", str(a0), str(a1), str(superb), "--baseline", "1", "--json",
                     str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    # superb minus the pooled adapter row, paired on seed 0's folds: -5, -4, -6
    assert "superb-s0: -5.00 ± 0.82 over 3 pairs (better in 0, worse in 3)" in out
    assert "UA minus that of adapter-s0" in out and "adapter-s0 …:" not in out.split("paired by")[1]
    assert len(json.loads((tmp_path / "rows.json").read_text())["rows"]) == 2
    assert cli.main(["compare", str(a0), str(superb), "--baseline", "3"]) == 2
    assert "the table has rows 1 to 2" in capsys.readouterr().err


def test_leave_one_corpus_out_runs_pair_on_closed_ua_and_know_a_corpus_by_its_folder(tmp_path):
    """LOCO rows are paired on the closed UA (their headline), and two runs that reached the same corpus folder
    through different paths (a link) are the same corpus: paired, not kept apart by the folder's name."""
    (tmp_path / "merged").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "merged")

    def loco(name, root, open_uas, closed_uas):
        run = _cv_results(tmp_path / name, "adapter", 0, open_uas)
        r = json.loads((run / "results.json").read_text())
        r["protocol"] = {"corpus": Path(root).name, "root": str(root), "kind": "leave-one-corpus-out",
                         "targets": {"1": "a", "2": "b"}}
        for k, ua in zip(r["folds"], closed_uas):
            r["folds"][k]["closed"] = {"ua": ua, "wa": ua, "macro_f1": ua, "weighted_f1": ua}
        (run / "results.json").write_text(json.dumps(r))
        return run

    base = loco("adapter-s0", tmp_path / "merged", [40, 30], [50, 30])
    other = loco("variant-s0", tmp_path / "link", [41, 20], [52, 35])
    r = json.loads((other / "results.json").read_text())
    r["config"]["stage2"]["lr"] = 3e-4
    (other / "results.json").write_text(json.dumps(r))
    rows = compare_runs([base, other])
    assert rows[0]["corpus_id"] == rows[1]["corpus_id"] == str((tmp_path / "merged").resolve())
    assert rows[0]["paired_on"] == "closed UA"
    text = paired_table(rows, 0)
    assert text.startswith("closed UA minus that of adapter-s0")
    assert "variant-s0: +3.50 ± 1.50 over 2 pairs (better in 2, worse in 0)" in text  # +2 and +5 (open: +1, -10)

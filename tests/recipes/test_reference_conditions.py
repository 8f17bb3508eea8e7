"""tools/reference_conditions.py end to end on a three-"corpus" fixture: the choice made on the training corpora
only, every condition measured on the held-out one, the table and JSON, and a re-run that reuses its evaluations."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
pytestmark = pytest.mark.usefixtures("one_thread")


def test_reference_conditions_choose_on_training_corpora_and_measure_the_target(trained, tmp_path, capsys):
    import reference_conditions
    from emoadapt.corpora import load_corpus, write_manifest
    from emoadapt.training.crossval import run_cv
    from emoadapt.training.settings import load_config
    corpus, store, _, _ = trained
    group = {f"Actor_{k:02d}": "abc"[(k - 1) // 4] for k in range(1, 13)}
    rows = [replace(u, extras={**u.extras, "corpus": group[u.speaker]}) for u in corpus.rows]
    write_manifest(rows, tmp_path / "merged" / "manifest.csv")
    merged = load_corpus(tmp_path / "merged")
    config = load_config(None, ["normalize=speaker", "calibration.scope=none", "choose_by=corpus",
                                "head.c_grid=[0.1]"])
    run_cv(merged, store, "stats", tmp_path / "run", config=config, protocol="corpus", progress=False,
           log=lambda *_: None)
    argv = ["--corpus", str(tmp_path / "merged"), "--store", str(store), "--run", str(tmp_path / "run"),
            "--json", str(tmp_path / "references.json"), "--settings", "tau0", "tau5-balance", "tau5-mean-emotion",
            "--conditions", "none", "speaker", "k1", "only-angry"]
    assert reference_conditions.main(argv) == 0
    summary = json.loads((tmp_path / "references.json").read_text())
    assert set(summary["targets"]) == {"a", "b", "c"}
    for name, target in summary["targets"].items():
        assert target["chosen"] in ("tau0", "tau5-balance", "tau5-mean-emotion")
        assert set(target["closed_ua"]["tau0"]) == {"none", "speaker", "k1", "only-angry"}
        assert set(target["open_ua"]["tau0"]) == {"none", "speaker", "k1", "only-angry"}
        inner = json.loads((tmp_path / "run" / "inner" / name / "results.json").read_text())
        assert name not in inner["protocol"]["targets"].values()  # chosen without the target
    table = capsys.readouterr().out
    assert "| auto | only-angry |" in table and table.count("\n| tau0 |") == 4
    worst = min(t["closed_ua"]["tau0"]["k1"] - t["closed_ua"]["tau0"]["none"] for t in summary["targets"].values())
    mean = sum(t["closed_ua"]["tau5-balance"]["speaker"] for t in summary["targets"].values()) / 3
    assert "| setting | none | speaker | k1 | only-angry |" in table  # the RESULTS.md summary, none first
    cells = {line.split(" | ")[0][2:]: line.strip(" |").split(" | ")[1:] for line in table.splitlines()
             if ", mean |" in line or ", worst gain |" in line}
    assert cells["tau0, worst gain"][0] == "0" and cells["tau0, worst gain"][2] == f"{worst:+.2f}"
    assert cells["tau5-balance, mean"][1] == f"{mean:.2f}" and len(cells) == 2 * 4  # 3 settings + the choice
    modes = [line for line in table.splitlines() if line.startswith("| speaker | ") and " / " in line]
    assert len(modes) == 1  # the reference modes of the chosen setting, closed / open per target
    chosen_a = summary["targets"]["a"]["chosen"]
    assert modes[0].split(" | ")[1] == (f"{summary['targets']['a']['closed_ua'][chosen_a]['speaker']:.2f} / "
                                        f"{summary['targets']['a']['open_ua'][chosen_a]['speaker']:.2f}")
    evaluations = sorted((tmp_path / "run" / "references").rglob("*.json"))
    assert len(evaluations) == 3 * 3 * 3 * 4  # 3 targets x (2 inner folds + the target) x settings x conditions
    from emoadapt.training.evaluate import evaluate  # the fast path gives what `emoadapt evaluate` gives
    for setting in ("tau0", "tau5-balance", "tau5-mean-emotion"):
        for condition in ("speaker", "k1", "only-angry"):
            reference = {**reference_conditions.conditions()[condition], **reference_conditions.SETTINGS[setting]}
            slow = evaluate(tmp_path / "run" / "fold_1" / "model", merged, store, 1, protocol="corpus",
                            reference=reference, out=tmp_path / "slow.json")
            assert slow["scores_closed"]["ua"] == pytest.approx(
                summary["targets"]["a"]["closed_ua"][setting][condition], abs=1e-9)
            assert slow["scores"]["ua"] == pytest.approx(summary["targets"]["a"]["open_ua"][setting][condition],
                                                         abs=1e-9)
    before = [p.stat().st_mtime_ns for p in evaluations]
    assert reference_conditions.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in evaluations] == before  # reused, not re-made
    cached = json.loads(evaluations[0].read_text())
    del cached["scores_open"]  # an evaluation cached before open UA was recorded is made again, not misread
    evaluations[0].write_text(json.dumps(cached))
    assert reference_conditions.main(argv) == 0
    assert "scores_open" in json.loads(evaluations[0].read_text())


def test_reference_conditions_train_the_inner_runs_with_each_folds_chosen_shrinkage(trained, tmp_path):
    """A run whose folds chose calibration.train_shrink (train_shrink_grid): the choice of the reference setting, on
    the training corpora, trains its models with the τ the fold chose, not a grid of its own."""
    import reference_conditions
    from emoadapt.corpora import load_corpus, write_manifest
    from emoadapt.modelfolder import read_model_info
    from emoadapt.training.crossval import run_cv
    from emoadapt.training.settings import load_config
    corpus, store, _, _ = trained
    group = {f"Actor_{k:02d}": "abc"[(k - 1) // 4] for k in range(1, 13)}
    rows = [replace(u, extras={**u.extras, "corpus": group[u.speaker]}) for u in corpus.rows]
    write_manifest(rows, tmp_path / "merged" / "manifest.csv")
    config = load_config(None, ["normalize=speaker", "calibration.scope=none", "choose_by=corpus",
                                "head.c_grid=[0.1]", "calibration.train_shrink_grid=[0,1000]"])
    run_cv(load_corpus(tmp_path / "merged"), store, "stats", tmp_path / "run", config=config, protocol="corpus",
           progress=False, log=lambda *_: None)
    argv = ["--corpus", str(tmp_path / "merged"), "--store", str(store), "--run", str(tmp_path / "run"),
            "--settings", "tau5", "--conditions", "none", "speaker"]
    with pytest.raises(SystemExit) as refused:  # not a finished run: a usage error, not a traceback
        reference_conditions.main([*argv[:4], "--run", str(tmp_path / "no-run"), *argv[6:]])
    assert refused.value.code == 2
    assert reference_conditions.main(argv) == 0
    for fold, name in enumerate("abc", start=1):
        chosen = json.loads((tmp_path / "run" / f"fold_{fold}" / "results.json").read_text())["choices"][
            "calibration.train_shrink"]["train_shrink"]
        inner_models = sorted((tmp_path / "run" / "inner" / name).glob("fold_*/model"))
        assert len(inner_models) == 2  # the other two corpora, each held out in turn
        for inner in inner_models:
            calibration = read_model_info(inner)["config"]["calibration"]
            assert calibration["train_shrink"] == chosen and not calibration["train_shrink_grid"]

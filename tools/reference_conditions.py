"""Reference conditions on a leave-one-corpus-out run of a speaker-normalised model: how every way of adapting to a
target's unlabeled audio scores against no reference, and which setting is chosen on the training corpora alone.

    python tools/reference_conditions.py --corpus MERGED --store STORE --run runs/loco/stats-speaker \
        --json docs/results/loco-references.json

For each held-out corpus (fold k of the run):
1. **the choice, on the training corpora only**: the run's recipe and settings are cross-validated over the other
   corpora, one held out in turn (``cv --protocol corpus`` on them: ``<run>/inner/<target>``); every reference
   setting is measured there under every condition, and the one whose worst gain over no reference is largest (ties:
   the larger mean gain) is chosen;
2. **the measurement**: the model of fold k is evaluated on the target under every condition and setting
   (``evaluate --protocol corpus --reference ...``), the chosen setting marked.
Conditions: no reference; the whole target as one reference; each speaker's own clips (all; k = 1, 5, 20 at
random); only its neutral clips; only clips of one emotion (the adversarial case; the emotions every corpus has).
Settings: the shrinkage τ (clips) and whether the reference's balance is weighed. Every evaluation is written as
JSON under ``<run>/references/``; a re-run reuses them.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

CONDITIONS = {"none": {"scope": "none"}, "corpus": {"scope": "corpus"}, "speaker": {"scope": "speaker"},
              "k1": {"scope": "speaker", "clips": 1}, "k5": {"scope": "speaker", "clips": 5},
              "k20": {"scope": "speaker", "clips": 20}, "neutral": {"scope": "speaker", "only_label": "neutral", "if_missing": "none"}}
EMOTIONS = ("angry", "happy", "sad", "fear")  # one emotion per speaker: the labels every development target has
# (a speaker with no clip of that emotion gets no reference: calibration.if_missing=none)
SETTINGS = {"tau0": {"shrink": 0, "balance": False}, "tau5": {"shrink": 5, "balance": False},
            "tau5-balance": {"shrink": 5, "balance": True}, "tau20-balance": {"shrink": 20, "balance": True}}


def conditions(names=None) -> dict[str, dict]:
    every = {**CONDITIONS, **{f"only-{e}": {"scope": "speaker", "only_label": e, "if_missing": "none"}
                          for e in EMOTIONS}}
    return {k: v for k, v in every.items() if names is None or k in names}


def measure(model: Path, corpus, store, fold: int, out: Path, settings: dict, chosen_conditions: dict
            ) -> dict[str, dict[str, float]]:
    """closed UA of ``model`` on fold ``fold`` under every setting x condition (cached as JSON in ``out``)."""
    from emoadapt.training.evaluate import evaluate
    table: dict[str, dict[str, float]] = {}
    for setting, options in settings.items():
        for condition, reference in chosen_conditions.items():
            path = out / f"fold{fold}-{setting}-{condition}.json"
            if not path.is_file():
                evaluate(model, corpus, store, fold, protocol="corpus", reference={**reference, **options},
                         out=path)
            table.setdefault(setting, {})[condition] = json.loads(path.read_text())["scores_closed"]["ua"]
    return table


def choose(tables: list[dict[str, dict[str, float]]]) -> tuple[str, dict]:
    """The setting with the largest worst gain over no reference (mean over the tables), ties: larger mean gain."""
    rows = {}
    for setting in tables[0]:
        gains = [np.mean([t[setting][c] - t[setting]["none"] for t in tables]) for c in tables[0][setting]
                 if c != "none"]
        rows[setting] = {"worst_gain": float(min(gains)), "mean_gain": float(np.mean(gains))}
    best = max(rows, key=lambda s: (round(rows[s]["worst_gain"], 6), rows[s]["mean_gain"]))
    return best, rows


def main(argv=None) -> int:
    from emoadapt.corpora import load_corpus
    from emoadapt.corpora.splits import corpus_folds
    from emoadapt.store import FeatureStore
    from emoadapt.training.crossval import run_cv
    from emoadapt.training.settings import config_from_record, load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="the merged corpus of the LOCO run")
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", required=True, help="a finished `cv --protocol corpus --normalize speaker` run")
    parser.add_argument("--json", help="write the tables here as well")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--conditions", nargs="+", choices=list(conditions()), default=list(conditions()))
    args = parser.parse_args(argv)
    settings = {k: SETTINGS[k] for k in args.settings}
    chosen_conditions = conditions(args.conditions)
    if "none" not in chosen_conditions:
        parser.error("--conditions must include none: every gain is measured against it")
    corpus, store, run = load_corpus(args.corpus), FeatureStore(args.store), Path(args.run)
    results = json.loads((run / "results.json").read_text())
    _, targets = corpus_folds(corpus.rows, corpus.root)
    config = config_from_record(results["config"], where=str(run / "results.json"))
    summary = {"run": str(run), "conditions": chosen_conditions, "settings": settings, "targets": {}}
    for key, name in sorted(results["protocol"]["targets"].items()):
        fold = int(key)
        # 1. the choice, on the other corpora only
        sources = [u for u in corpus.rows if u.extras["corpus"] != name]
        inner_corpus = replace(corpus, rows=sources, folds=None)
        inner_run = run / "inner" / name
        chosen_c = json.loads((run / f"fold_{fold}" / "results.json").read_text())["closed_form"]["C"]
        inner_config = load_config(None, ["choose_by=speakers", f"head.c_grid=[{chosen_c}]"], base=config)
        inner = run_cv(inner_corpus, store, results["recipe"], inner_run, config=inner_config, protocol="corpus",
                       progress=False, log=lambda *_: None)
        inner_targets = inner["protocol"]["targets"]
        inner_tables = [measure(inner_run / f"fold_{k}" / "model", inner_corpus, store, int(k),
                                run / "references" / "inner" / name, settings, chosen_conditions)
                        for k in sorted(inner_targets)]
        chosen, rows = choose(inner_tables)
        # 2. the measurement on the held-out corpus
        table = measure(run / f"fold_{fold}" / "model", corpus, store, fold, run / "references", settings,
                        chosen_conditions)
        summary["targets"][name] = {"fold": fold, "chosen": chosen, "choice": rows, "C": chosen_c, "closed_ua": table}
        print(f"{name}: chosen on {', '.join(inner_targets.values())}: {chosen}", flush=True)
    print(table_text(summary))
    if args.json:
        from emoadapt.atomic import atomic_write_json
        atomic_write_json(summary, args.json)
        print(f"written: {args.json}")
    return 0


def table_text(summary: dict) -> str:
    """Markdown: one row per setting x condition, closed UA per target and its gain over no reference; the
    setting chosen for each target (on its training corpora) is starred, and an "auto" row set gathers them."""
    targets = summary["targets"]
    names, settings, chosen_conditions = list(targets), summary["settings"], summary["conditions"]
    out = ["| setting | condition | " + " | ".join(names) + " | mean | worst gain over none |",
           "|---|---|" + "---|" * (len(names) + 2)]
    rows = [(s, s) for s in settings] + [("auto", None)]
    for label, setting in rows:
        for condition in chosen_conditions:
            cells, gains = [], []
            for name in names:
                chosen = targets[name]["chosen"]
                use = setting or chosen
                ua = targets[name]["closed_ua"][use][condition]
                gains.append(ua - targets[name]["closed_ua"][use]["none"])
                cells.append(f"{ua:.2f}" + ("*" if use == chosen and setting else ""))
            mean = np.mean([targets[n]["closed_ua"][setting or targets[n]["chosen"]][condition] for n in names])
            out.append(f"| {label} | {condition} | " + " | ".join(cells) + f" | {mean:.2f} | {min(gains):+.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())

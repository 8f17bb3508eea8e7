"""Reference conditions on a leave-one-corpus-out run of a speaker-normalised model: how every way of adapting to a
target's unlabeled audio scores against no reference, and which setting is chosen on the training corpora alone.

    python tools/reference_conditions.py --corpus MERGED --store STORE --run runs/loco/stats-speaker \
        --json docs/results/loco-references.json

For each held-out corpus (fold k of the run):
1. **the choice, on the training corpora only**: the run's recipe and settings are cross-validated over the other
   corpora, one held out in turn (``cv --protocol corpus`` on them: ``<run>/inner/<target>``); every reference
   setting is measured there under the choice conditions (``--choice-conditions``, default all), and the one whose
   worst gain over no reference, over both training corpora and every condition, is largest (ties: the larger mean
   gain) is chosen: the rule the shipped model's setting is chosen by (``tools/build_shipped_model.py``);
2. **the measurement**: the model of fold k is evaluated on the target under every condition and setting, closed
   and open UA (what ``evaluate --protocol corpus --reference ...`` measures, computed from each clip's frame
   moments: :class:`Moments`), the chosen setting marked; a last table gives the chosen setting's conditions
   (the reference modes) closed / open per target.
Conditions: no reference; the whole target as one reference; each speaker's own clips (all; k = 1, 5, 20 at
random); only its neutral clips; only clips of one emotion (the adversarial case; the emotions every corpus has).
Settings: the shrinkage τ (clips), whether the reference's balance is weighed, whose spread is used (the reference's
or the training population's) and whether the emotion the model hears in the reference is taken out of its mean
(``calibration.spread``, ``remove_emotion``: :func:`emoadapt.calibration.reference_statistics`). Every evaluation is
written as JSON under ``<run>/references/``; a re-run reuses them.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from emoadapt.store.features import FrameMoments

CONDITIONS = {"none": {"scope": "none"}, "corpus": {"scope": "corpus"}, "speaker": {"scope": "speaker"},
              "k1": {"scope": "speaker", "clips": 1}, "k5": {"scope": "speaker", "clips": 5},
              "k20": {"scope": "speaker", "clips": 20}, "neutral": {"scope": "speaker", "only_label": "neutral", "if_missing": "none"}}
EMOTIONS = ("angry", "happy", "sad", "fear")  # one emotion per speaker: the labels every development target has
# (a speaker with no clip of that emotion gets no reference: calibration.if_missing=none)
_OWN = {"spread": "reference", "remove_emotion": False}  # how references were made before calibration.spread
_MEAN = {"spread": "population", "remove_emotion": False}  # the mean moved, the population's spread kept
_EMOTION = {"spread": "population", "remove_emotion": True}  # and the emotion heard in the reference taken out
SETTINGS = {"tau0": {"shrink": 0, "balance": False, **_OWN}, "tau5": {"shrink": 5, "balance": False, **_OWN},
            "tau5-balance": {"shrink": 5, "balance": True, **_OWN},
            "tau20-balance": {"shrink": 20, "balance": True, **_OWN},
            "tau50-balance": {"shrink": 50, "balance": True, **_OWN},  # added after the first runs (they name theirs)
            "tau5-mean": {"shrink": 5, "balance": False, **_MEAN},
            "tau0-mean-emotion": {"shrink": 0, "balance": False, **_EMOTION},  # calibration's defaults
            "tau5-mean-emotion": {"shrink": 5, "balance": False, **_EMOTION},
            "tau20-mean-emotion": {"shrink": 20, "balance": False, **_EMOTION}}


def conditions(names=None) -> dict[str, dict]:
    every = {**CONDITIONS, **{f"only-{e}": {"scope": "speaker", "only_label": e, "if_missing": "none"}
                          for e in EMOTIONS}}
    return {k: v for k, v in every.items() if names is None or k in names}


class Moments(FrameMoments):
    """:class:`emoadapt.store.features.FrameMoments` of the run's utterances, and the stats model's probabilities
    from them: hundreds of evaluations of one model in seconds; ``test_reference_conditions`` checks it against
    ``emoadapt evaluate``."""

    def probabilities(self, model, ids, reference) -> np.ndarray:
        """The stats model's class probabilities [n, C] for ``ids``, each normalised with ``reference[i]``."""
        import torch
        pooled = self.pooled(ids, [reference[i] for i in ids])
        with torch.no_grad():
            u = (torch.from_numpy(pooled) - model.feature_mean) / model.feature_scale
            return torch.softmax(model.head(u.to(model.head.weight.dtype)), -1).double().numpy()


def measure(model_dir: Path, corpus, store, fold: int, out: Path, settings: dict, chosen_conditions: dict,
            moments: Moments) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """closed and open UA of the stats model in ``model_dir`` on fold ``fold`` under every setting x condition,
    references drawn, shrunk and balanced by emoadapt.calibration's own functions (cached as JSON in ``out``; an
    evaluation cached before open UA was recorded is made again)."""
    from emoadapt.atomic import atomic_write_json
    from emoadapt.calibration import calibration_clips, reference_statistics
    from emoadapt.corpora.splits import corpus_folds
    from emoadapt.modelfolder import load_classifier
    from emoadapt.modelfolder.reference import read_reference
    from emoadapt.training.evaluate import model_settings
    from emoadapt.training.metrics import closed_predictions, score
    from emoadapt.training.settings import load_config
    loaded = load_classifier(model_dir)
    if loaded.info["build"]["recipe"] != "stats":
        raise SystemExit(f"{model_dir}: the fast path covers the stats recipe only; use `emoadapt evaluate`")
    (population, offsets), labels = read_reference(loaded.folder, loaded.info), loaded.info["labels"]
    folds = corpus_folds(corpus.rows, corpus.root)[0]
    test = [i for i in folds.split(fold, val_fraction=0).test if i in moments.index]
    by_id = {u.id: u for u in corpus.rows}
    truth = [labels.index(by_id[i].label) for i in test]
    table: dict[str, dict[str, float]] = {}
    table_open: dict[str, dict[str, float]] = {}
    for setting, options in settings.items():
        for condition, reference in chosen_conditions.items():
            path = out / f"fold{fold}-{setting}-{condition}.json"
            cached = json.loads(path.read_text()) if path.is_file() else {}
            if "scores_open" not in cached:
                config = load_config(None, [f"calibration.{k}={v}" for k, v in {**reference, **options}.items()],
                                     base=model_settings(loaded.folder, loaded.info))
                calibration = config.calibration
                groups: dict[str, list[str]] = {}
                for i in test:
                    groups.setdefault("test set" if calibration.scope == "corpus" else folds.group(i), []).append(i)
                statistics, weights = {}, {}
                for group, ids in groups.items():
                    chosen = [] if calibration.scope == "none" else calibration_clips(
                        ids, calibration, by_id, seed=config.seed, speaker=group, where=corpus.root)
                    if not chosen:
                        statistics[group], weights[group] = population, 0.0
                        continue
                    if calibration.remove_emotion and offsets is None:
                        raise SystemExit(f"{model_dir}: no class offsets (trained before calibration.remove_emotion); "
                                         f"re-train the run, or leave out the settings that remove the emotion")
                    without = moments.probabilities(loaded.model, chosen, {i: population for i in chosen}) \
                        if calibration.reads_model else None
                    statistics[group], weights[group], _ = reference_statistics(
                        moments.statistics(chosen), population, len(chosen), calibration, without, offsets)
                group_of = {i: g for g, ids in groups.items() for i in ids}
                probabilities = moments.probabilities(loaded.model, test, {i: statistics[group_of[i]] for i in test})
                closed = score(truth, closed_predictions(truth, probabilities), labels)
                every = score(truth, probabilities.argmax(1).tolist(), labels)
                cached = {"model": str(loaded.folder), "fold": fold, "setting": options, "condition": reference,
                          **{f"scores_{kind}": {"ua": s.ua, "wa": s.wa, "macro_f1": s.macro_f1}
                             for kind, s in (("closed", closed), ("open", every))},
                          "reference_weight": {"mean": float(np.mean([weights[group_of[i]] for i in test]))}}
                atomic_write_json(cached, path)
            table.setdefault(setting, {})[condition] = cached["scores_closed"]["ua"]
            table_open.setdefault(setting, {})[condition] = cached["scores_open"]["ua"]
    return table, table_open


def choose(tables: list[dict[str, dict[str, float]]]) -> tuple[str, dict]:
    """The setting whose worst gain over no reference, over every table (target) and condition, is largest (ties: the
    larger mean gain): the issue's own test of a default that never hurts, asked of the targets it is chosen on."""
    rows = {}
    for setting in tables[0]:
        gains = [t[setting][c] - t[setting]["none"] for t in tables for c in t[setting] if c != "none"]
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
    parser.add_argument("--choice-conditions", nargs="+", choices=list(conditions()), default=list(conditions()),
                        help="the conditions the setting is chosen on, on the training corpora (default: "
                             "every condition; each costs one evaluation per setting and training corpus)")
    args = parser.parse_args(argv)
    settings = {k: SETTINGS[k] for k in args.settings}
    chosen_conditions = conditions(args.conditions)
    if "none" not in chosen_conditions or "none" not in args.choice_conditions:
        parser.error("--conditions and --choice-conditions must include none: every gain is measured against it")
    run = Path(args.run)
    if not (run / "results.json").is_file():  # checked before the store is read
        parser.error(f"--run {run}: no results.json there; give a finished `emoadapt cv --protocol corpus "
                     f"--normalize speaker` run folder")
    corpus, store = load_corpus(args.corpus), FeatureStore(args.store)
    moments = Moments(store, [u.id for u in corpus.rows if u.id in store])
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
        fold_results = json.loads((run / f"fold_{fold}" / "results.json").read_text())
        chosen_c = fold_results["closed_form"]["C"]
        fixed = [f"calibration.train_shrink={choice['train_shrink']}", "calibration.train_shrink_grid=[]"] \
            if (choice := fold_results.get("choices", {}).get("calibration.train_shrink")) else []  # as fold k chose
        inner_config = load_config(None, ["choose_by=speakers", f"head.c_grid=[{chosen_c}]", *fixed], base=config)
        inner = run_cv(inner_corpus, store, results["recipe"], inner_run, config=inner_config, protocol="corpus",
                       progress=False, log=lambda *_: None)
        inner_targets = inner["protocol"]["targets"]
        inner_tables = [measure(inner_run / f"fold_{k}" / "model", inner_corpus, store, int(k),
                                run / "references" / "inner" / name, settings,
                                conditions([c for c in args.choice_conditions if c in chosen_conditions]), moments)[0]
                        for k in sorted(inner_targets)]
        chosen, rows = choose(inner_tables)
        # 2. the measurement on the held-out corpus
        table, table_open = measure(run / f"fold_{fold}" / "model", corpus, store, fold, run / "references",
                                    settings, chosen_conditions, moments)
        summary["targets"][name] = {"fold": fold, "chosen": chosen, "choice": rows, "C": chosen_c, "closed_ua": table,
                                    "open_ua": table_open}
        print(f"{name}: chosen on {', '.join(inner_targets.values())}: {chosen}", flush=True)
    print(table_text(summary))
    print()
    print(summary_text(summary))
    print()
    print(modes_text(summary))
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


def ordered_conditions(summary: dict) -> list[str]:
    """The summary's conditions in this tool's order (none first), then any others in theirs."""
    return sorted(summary["conditions"], key=[*conditions(), *summary["conditions"]].index)


def summary_text(summary: dict) -> str:
    """Markdown as in docs/RESULTS.md: per setting, the mean closed UA over the targets in each condition, and the
    worst target's gain over no reference; then the same for the setting chosen per target ("chosen")."""
    targets = summary["targets"]
    conditions_ = ordered_conditions(summary)
    out = ["| setting | " + " | ".join(conditions_) + " |", "|---|" + "---|" * len(conditions_)]
    settings = sorted(summary["settings"], key=[*SETTINGS, *summary["settings"]].index)
    for label, setting in [*((s, s) for s in settings), ("chosen per target", None)]:
        def ua(name, condition):
            return targets[name]["closed_ua"][setting or targets[name]["chosen"]][condition]
        means = [np.mean([ua(n, c) for n in targets]) for c in conditions_]
        worst = [min(ua(n, c) - ua(n, "none") for n in targets) for c in conditions_]
        out.append(f"| {label}, mean | " + " | ".join(f"{m:.2f}" for m in means) + " |")
        out.append(f"| {label}, worst gain | " + " | ".join("0" if c == "none" else f"{w:+.2f}"
                                                             for c, w in zip(conditions_, worst)) + " |")
    return "\n".join(out)


def modes_text(summary: dict) -> str:
    """Markdown: the reference conditions of the setting chosen per target (what the model does by default), each
    target's closed / open UA and their means: the LOCO table of reference modes."""
    targets = summary["targets"]
    conditions_ = ordered_conditions(summary)
    out = ["| reference (setting chosen per target) | " + " | ".join(f"{n} closed / open" for n in targets)
           + " | mean closed | mean open |", "|---|" + "---|" * (len(targets) + 2)]
    for condition in conditions_:
        cells = [(targets[n]["closed_ua"][targets[n]["chosen"]][condition],
                  targets[n]["open_ua"][targets[n]["chosen"]][condition]) for n in targets]
        out.append(f"| {condition} | " + " | ".join(f"{c:.2f} / {o:.2f}" for c, o in cells)
                   + f" | {np.mean([c for c, _ in cells]):.2f} | {np.mean([o for _, o in cells]):.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    from emoadapt.errors import EmoadaptError
    try:
        sys.exit(main())
    except EmoadaptError as error:  # a bad corpus, store or run: one line, as the CLI gives it
        sys.exit(f"reference_conditions.py: error: {error}")

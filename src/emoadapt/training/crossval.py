"""Cross-validation: per fold, [stage 1 on the fold's training split ->] stage 2 -> test; then mean ± std.

    split (validation = whole speakers drawn from the training speakers) -> stage 1 (recipe full) -> stage 2 -> test

Fold results are written as each fold ends (a re-run skips finished folds), then ``results.json`` and a pooled
``confusion.png``. Recipes: every recipe of :mod:`emoadapt.model.recipes`; ``full`` = stage 1 on the fold's
training speakers, then the ``adapter`` recipe initialised from its teacher (the method). The store is opened and
checked, and the settings validated, once per run; each fold's data (:func:`~.stage2.fold_data`) is built once and
handed to stage 1, stage 2 and the test.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write_json
from ..calibration import protocol_of
from ..corpora import Corpus
from ..corpora.splits import corpus_folds, speaker_folds
from ..errors import CorpusError, EmoadaptError
from ..model import recipe as lookup_recipe
from ..modelfolder import CONFIG, read_seen, read_stage1_adapter, refuse_on_folds, speakers_of
from ..provenance import git_commit, versions
from ..store.dataset import check_same_features, open_augmented_store, open_corpus, open_store
from ..store.features import FeatureStore
from .metrics import METRICS, CrossValidationReport, Scores
from .reports import plot_confusion
from .settings import RunConfig, load_config, validate, with_defaults, with_store_dims
from .stage1 import stage1_adapter_dir, train_stage1
from .stage2 import fold_data, train_stage2
from .trainer import check_trainer, claim_run_dir, is_global_zero


PROTOCOLS = ("folds", "corpus")  # the corpus's own folds; leave-one-corpus-out


def fold_stage1_dir(run: str | os.PathLike, fold_name: str) -> Path:
    """The stage-1 run folder of one fold (``fold_<k>`` or ``final``) of a ``cv --recipe full`` run."""
    return Path(run) / fold_name / "stage1"


def check_shared_stage1(stage1: str | os.PathLike, corpus: Corpus, folds: Sequence[int]) -> dict:
    """A finished stage-1 adapter usable for every fold in ``folds``: it must never have seen any of their test
    utterances or speakers, whatever store they came from. Returns its description for the results."""
    folder, info = read_stage1_adapter(stage1)
    refuse_on_folds(read_seen(folder, info), corpus, folds, model=str(folder),
                    advice=" (a shared stage 1 must use other audio, or drop --stage1 to pre-train on each fold's "
                           "training split)")
    record = Path(stage1) / "config.json"
    stores = json.loads(record.read_text()).get("data", {}).get("stores", []) if record.is_file() else []
    return {"path": str(folder), "stores": stores, "sha256": info.get("sha256"),
            "updates": info.get("updates"), "utterances": info.get("utterances")}


def check_stage1_from(run: str | os.PathLike, config: RunConfig, protocol: dict, folds: Sequence[int]) -> dict:
    """Another ``cv --recipe full`` run whose per-fold stage 1 this run's stage 2 starts from, so that stage-2
    variants (the adapter frozen or slowed...) share one stage 1 and are paired by it. It must be a recipe-``full``
    run on the same corpus and protocol, with the same stage-1 settings (``pretrain``, ``adapter``, ``seed``,
    ``normalize``, ``standardize``), and each fold's stage 1 must be finished. Returns its description."""
    run = Path(run)
    record = run / "config.json"
    try:
        theirs = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        raise EmoadaptError(run, f"--stage1-from needs a `cv --recipe full` run folder with its config.json ({e})")
    if theirs.get("stage") != "cv" or theirs.get("recipe") != "full":
        raise EmoadaptError(run, f"--stage1-from needs a `cv --recipe full` run; this one is "
                                 f"{theirs.get('stage')} --recipe {theirs.get('recipe')}")
    def folds_of(record: dict) -> dict:  # the corpus by its resolved folder (a link or a renamed path is the same)
        return {**{k: v for k, v in record.items() if k not in ("folds", "targets", "corpus", "root")},
                "root": Path(record.get("root", "")).resolve()}
    if folds_of(theirs.get("protocol") or {}) != folds_of(protocol):
        raise EmoadaptError(run, "--stage1-from: that run used another corpus or protocol; its stage 1 belongs to "
                                 "other folds")
    ours = config.to_dict()
    other = with_defaults(theirs.get("config") or {})
    differ = [k for k in ("pretrain", "adapter", "seed", "normalize", "standardize") if other.get(k) != ours.get(k)]
    if differ:
        raise EmoadaptError(run, f"--stage1-from: that run's stage 1 had other settings ({', '.join(differ)}); give "
                                 f"the same ones (its config.json) so that the stage 1 is the one the run says")
    missing = [k for k in folds if not (stage1_adapter_dir(fold_stage1_dir(run, f"fold_{k}")) / CONFIG).is_file()]
    if missing:
        raise EmoadaptError(run, f"--stage1-from: the stage 1 of fold {missing[0]} is not finished there; resume "
                                 f"that run first")
    return {"run": str(run), "test_audio": bool(other.get("pretrain", {}).get("test_audio"))}


def run_cv(corpus: Corpus | str | os.PathLike, store: FeatureStore | str | os.PathLike, recipe: str,
           out_dir: str | os.PathLike, folds: Sequence[int] | None = None, seed: int | None = None, *,
           config: RunConfig | None = None, overrides: Sequence[str] = (), extra_unlabeled_stores: Sequence = (),
           stage1: str | os.PathLike | None = None, protocol: str = "folds", progress: bool = True,
           log=print, augmented: FeatureStore | str | os.PathLike | None = None, final: bool = False,
           stage1_from: str | os.PathLike | None = None) -> dict:
    """Cross-validation over the corpus's folds (or ``folds``). Per fold: split (validation = whole speakers from
    the training speakers), stage 1 on the fold's training split (+ ``extra_unlabeled_stores``) for recipe
    ``full``, stage 2, test with the best-validation checkpoint; ``fold_<k>/results.json`` is written as each fold
    ends and a re-run skips finished folds. Then ``results.json`` (protocol, classes, config, seed, encoder, git
    commit, per-fold scores, mean ± std) and ``confusion.png`` (pooled over folds). Returns the results dict.
    ``overrides`` ("stage2.lr=3e-4" ...) apply on top of ``config``; ``seed``, when given, on top of both.
    ``stage1`` (recipe ``full`` only): a finished stage-1 run trained on other audio than this corpus (e.g. the
    unlabeled pool), used for every fold instead of pre-training per fold: one stage 1 for all folds and seeds.
    ``stage1_from`` (recipe ``full``): another cv run of recipe ``full`` whose fold k's stage 1 starts fold k's
    stage 2 here (:func:`check_stage1_from`): stage-2 variants on one stage 1.
    ``protocol`` "folds": the corpus's own (speaker-independent) folds; "corpus": leave-one-corpus-out over a
    merged corpus (``emoadapt merge``): fold k tests the k-th source corpus, trained and validated on the others
    only, and scored over the target's classes both "open" (argmax over every class) and "closed" (over the
    target's classes only). ``augmented``: an augmented store of the corpus (:mod:`emoadapt.store.augment`):
    every fold's training utterances gain their copies (validation, test and stage 1 stay clean). ``final``: then
    train the model to deploy on every speaker with the same settings (``<out_dir>/final``, as ``finetune --fold
    all`` would). A corpus without folds gets speaker-independent ones (:func:`speaker_folds`), and says so.
    """
    spec = lookup_recipe(recipe)
    out_dir = Path(out_dir)
    config = load_config(None, overrides, base=config)
    if seed is not None:
        config = replace(config, seed=int(seed))
    if not is_global_zero():
        log = lambda *_: None  # noqa: E731 - under DDP every rank runs this loop; one of them talks
    corpus, store = open_corpus(corpus), open_store(store)
    extras = [open_store(s) for s in extra_unlabeled_stores]
    augmented = open_augmented_store(augmented, store)
    if config.pretrain.test_audio and (not spec.stage1 or stage1 is not None):
        raise EmoadaptError(None, "pretrain.test_audio applies to recipe 'full' pre-training on each fold "
                                  "(without --stage1)")
    if stage1_from is not None and (not spec.stage1 or stage1 is not None or extras):
        raise EmoadaptError(None, "--stage1-from applies to recipe 'full' alone, without --stage1 or "
                                  "--unlabeled-store (its stage 1 was trained already)")
    if stage1 is not None:
        if not spec.stage1:
            raise EmoadaptError(None, f"a shared stage-1 adapter only applies to recipe 'full', not {recipe!r}")
        if extras:
            raise EmoadaptError(None, "give either a shared stage-1 adapter or extra unlabeled stores for per-fold "
                                      "stage 1, not both")
    encoder = check_same_features([store, *extras])
    config = with_store_dims(config, encoder)
    stage2_recipe = spec.stage2_recipe
    validate(config, stage2_recipe, stage1=spec.stage1 and stage1 is None)
    check_trainer(config.trainer)
    if not corpus.labels:
        raise CorpusError(corpus.root, "cross-validation needs labelled utterances; this corpus has no labels")
    if protocol not in PROTOCOLS:
        raise EmoadaptError(None, f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    targets = None
    if protocol == "corpus":
        folds_by_corpus, targets = corpus_folds(corpus.rows, corpus.root)
        corpus = replace(corpus, folds=folds_by_corpus)
    folds_from = None
    if corpus.folds is None:
        made, folds_from = speaker_folds(corpus.rows, corpus.root)
        corpus = replace(corpus, folds=made)
        log(f"{corpus.name}: {folds_from}")
    all_folds = corpus.folds.fold_ids()
    folds = list(all_folds if folds is None else folds)
    unknown = [k for k in folds if k not in all_folds]
    if unknown:
        raise CorpusError(corpus.root, f"no fold {unknown[0]}; the folds are {all_folds}")
    shared_stage1 = check_shared_stage1(stage1, corpus, folds) if stage1 is not None else None
    protocol = {"corpus": corpus.name, "view": corpus.view, "root": str(corpus.root), "folds": folds,
                "all_folds": all_folds, "val_fraction": config.val_fraction,
                "validation": "whole speakers drawn from each fold's training speakers, never from the test fold",
                **({"folds_from": folds_from} if folds_from else {})}
    if targets is not None:
        protocol.update(kind="leave-one-corpus-out", targets={str(k): targets[k] for k in folds},
                        validation="whole speakers drawn from the training corpora's speakers, never from the "
                                   "held-out corpus")
    stage1_source = (check_stage1_from(stage1_from, config, protocol, folds) if stage1_from is not None else None)
    claim_run_dir(out_dir, {"stage": "cv", "recipe": recipe, "config": config.to_dict(), "encoder": encoder,
                            # the folds asked for (and their targets) may change between calls that resume a run
                            "protocol": {k: v for k, v in protocol.items() if k not in ("folds", "targets")},
                            "unlabeled_stores": [str(s.root) for s in extras],
                            "shared_stage1": shared_stage1,
                            **({"stage1_from": stage1_source["run"]} if stage1_source else {}),
                            **({"augmentation": {"store": str(augmented.root), **augmented.meta["augmentation"]}}
                               if augmented is not None else {})})
    protocol.update(protocol_of(config))
    report, closed, per_fold = CrossValidationReport(), CrossValidationReport(), {}

    def train_fold(k: int | None, fold_dir: Path) -> None:
        """[stage 1 ->] stage 2 [-> test] of fold ``k`` (None: every speaker trains or validates: the final model)."""
        name = f"fold {k}" if k is not None else "final model"
        data, fold_config, choices = fold_data(corpus, store, k, config, stage2_recipe, encoder,  # stage 1, stage 2
                                               augmented=augmented, log=log if progress else None)  # and the test
        init = None
        if shared_stage1 is not None:
            init = shared_stage1["path"]
        elif stage1_source is not None:
            init = stage1_adapter_dir(fold_stage1_dir(stage1_source["run"], fold_dir.name))
            log(f"{name}: stage 1 from {init}")
        elif spec.stage1:
            log(f"{name}: stage 1 on {len(data.split['train'])} training utterances"
                + (f" + the audio of {len(data.split['test'])} test utterances" if fold_config.pretrain.test_audio
                   else "")
                + (f" ({fold_config.pretrain.test_audio_share:.0%} of the draws)"
                   if fold_config.pretrain.test_audio_share else "")
                + (f" + {sum(len(s) for s in extras)} unlabeled" if extras else ""))
            init = train_stage1(data.unlabeled(extras, fold_config.pretrain.max_crop_seconds,
                                               test_audio=fold_config.pretrain.test_audio),
                                fold_stage1_dir(out_dir, fold_dir.name), config=fold_config, encoder=encoder,
                                speakers=speakers_of(corpus), progress=progress, test_ids=data.split["test"])
        log(f"{name}: stage 2 ({stage2_recipe})")
        train_stage2(data, fold_dir, recipe=stage2_recipe, config=fold_config, encoder=encoder, init=init,
                     progress=progress, init_heard_test_audio=spec.stage1 and fold_config.pretrain.test_audio
                     and shared_stage1 is None, choices=choices)

    for k in folds:
        fold_dir = out_dir / f"fold_{k}"
        if (fold_dir / "results.json").is_file():
            log(f"fold {k}: already done, skipped ({fold_dir / 'results.json'})")
        else:
            train_fold(k, fold_dir)
        per_fold[k] = json.loads((fold_dir / "results.json").read_text())
        report.folds[k] = Scores(**per_fold[k]["scores"])
        closed.folds[k] = Scores(**(per_fold[k].get("scores_closed") or per_fold[k]["scores"]))
        name = f" ({targets[k]})" if targets else ""
        log(f"fold {k}{name}: {report.folds[k].line()}")
        if targets:
            log(f"fold {k}{name}, closed over its classes: {closed.folds[k].line()}")

    summary, summary_closed = report.to_json(), closed.to_json()
    results = {
        "protocol": protocol, "recipe": recipe, "classes": corpus.labels, "config": config.to_dict(),
        "seed": config.seed, "encoder": encoder, "git": git_commit(), "versions": versions(),
        "unlabeled_stores": [{"root": str(s.root), "utterances": len(s)} for s in extras],
        "shared_stage1": shared_stage1, "stage1_from": stage1_source,
        "augmentation": ({"store": str(augmented.root), **augmented.meta["augmentation"]} if augmented is not None
                         else None),
        "folds": {str(k): {**summary["folds"][str(k)], "best_val_ua": per_fold[k].get("best_val_ua"),
                           "best_epoch": per_fold[k].get("best_epoch"), "split": per_fold[k].get("split"),
                           "seconds": per_fold[k].get("seconds"),
                           **({"closed_form": per_fold[k]["closed_form"]} if per_fold[k].get("closed_form") else {}),
                           **({"choices": per_fold[k]["choices"]} if per_fold[k].get("choices") else {}),
                           "closed": {m: summary_closed["folds"][str(k)][m] for m in METRICS},
                           "temperature": _temperature_line(per_fold[k].get("temperature"))} for k in folds},
        "mean_std": summary["mean_std"], "mean_std_closed": summary_closed["mean_std"],
        "confusion_pooled": report.pooled_confusion().tolist(),
    }
    if is_global_zero():
        plot_confusion(report.pooled_confusion(), corpus.labels, out_dir / "confusion.png",
                       title=f"{corpus.name} {recipe}: UA {summary['mean_std']['ua']['mean']:.1f}")
        atomic_write_json(results, out_dir / "results.json")
    log(report.table())
    for k in folds:
        line = results["folds"][str(k)]["temperature"]
        if line:
            log(f"fold {k}: temperature {line['T']:.2f} (fitted on {line['fitted_on']}); test ECE closed "
                f"{line['ece_closed_before']:.1f} -> {line['ece_closed_after']:.1f} %, open "
                f"{line['ece_open_before']:.1f} -> {line['ece_open_after']:.1f} %")
    if final:
        if (out_dir / "final" / "results.json").is_file():
            log(f"final model: already done ({out_dir / 'final' / 'model'})")
        else:
            train_fold(None, out_dir / "final")
        log(f"final model, trained on every speaker with the same settings: {out_dir / 'final' / 'model'} "
            f"(emoadapt predict AUDIO --model {out_dir / 'final'})")
    return results


def _temperature_line(record: dict | None) -> dict | None:
    """A fold's temperature and its test ECE before / after, for the cross-validation summary."""
    if not record or not record.get("test"):
        return None
    test = record["test"]
    return {"T": record["T"], "fitted_on": record["fitted_on"],
            "ece_open_before": test["open"]["before"], "ece_open_after": test["open"]["after"],
            "ece_closed_before": test["closed"]["before"], "ece_closed_after": test["closed"]["after"]}

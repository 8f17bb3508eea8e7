"""``emoadapt evaluate``: a model folder scored on a corpus's stored features (a fold's test speakers, or every
labelled utterance), and the predictions file every test writes. Refused when the model saw any of those utterances
or speakers (:mod:`emoadapt.modelfolder.seen`)."""
from __future__ import annotations

import csv
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write, atomic_write_json
from ..calibration import Normalizer, make_normalizer, protocol_of
from ..corpora import Corpus
from ..corpora.splits import corpus_folds, speaker_folds
from ..errors import CheckpointError, CorpusError, EmoadaptError
from ..inference.runtime import predict
from ..modelfolder import load_classifier, read_seen, refuse_if_seen, speakers_of
from ..modelfolder.reference import read_reference
from ..provenance import git_commit
from ..store.dataset import FeatureDataset, encoder_info, open_corpus, open_store, require_same_features, usable_ids
from ..store.features import FeatureStore
from .data import labelled_dataset
from .metrics import closed_predictions, score
from .settings import RunConfig, config_from_record, load_config


def write_predictions(path: Path, dataset: FeatureDataset, probs: np.ndarray, labels: Sequence[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "predicted", *[f"p_{name}" for name in labels]])
            for (_, utt_id, y), p in zip(dataset.items, probs):
                w.writerow([utt_id, labels[y], labels[int(p.argmax())], *[f"{v:.5f}" for v in p]])
    atomic_write(path, write)


def read_references(model, normalizer, store: FeatureStore, offsets, batch_size: int = 32) -> None:
    """``calibration.balance`` / ``remove_emotion``: each test reference remade with how the trained model, without a
    reference, reads its clips (:meth:`emoadapt.calibration.Normalizer.read_references`)."""
    if normalizer is None or not normalizer.references or normalizer.population is None:
        return
    without = Normalizer.one_speaker(normalizer.population)
    normalizer.read_references(
        lambda ids: predict(model, FeatureDataset([store], [(0, i, -1) for i in ids], None, without), batch_size),
        offsets)


def model_settings(folder: Path, info: dict) -> RunConfig:
    """The run settings a model folder records (how its inputs were normalised, among others)."""
    try:
        return config_from_record(info.get("config") or {}, where=str(folder))
    except EmoadaptError as error:
        raise CheckpointError(folder, f"its recorded settings cannot be read ({error})") from None


def evaluate(model_dir: str | os.PathLike, corpus: Corpus | str | os.PathLike,
             store: FeatureStore | str | os.PathLike, fold: int | None = None, *, batch_size: int = 32,
             out: str | os.PathLike | None = None, protocol: str = "folds", reference: dict | None = None) -> dict:
    """Score a stage-2 model on a corpus (its ``fold`` test speakers, or every labelled utterance) and write the
    JSON (default: ``<model>/evaluate-<corpus>[-fold<k>].json``) and its predictions beside it. ``protocol``
    "corpus": folds are the source corpora of a merged corpus (leave-one-corpus-out). ``reference``: calibration
    settings (scope, clips, only_label, shrink) that replace the model's for the test speakers of a speaker model:
    one trained model measured under many reference conditions."""
    loaded = load_classifier(model_dir)
    info, folder = loaded.info, loaded.folder
    corpus, store = open_corpus(corpus), open_store(store)
    if protocol == "corpus":
        corpus = replace(corpus, folds=corpus_folds(corpus.rows, corpus.root)[0])
    encoder = encoder_info(store)
    require_same_features(info.get("encoder", {}), encoder, where=store.root,
                          what="the model was trained on other features")
    if fold is None:
        ids, test = [u.id for u in corpus.rows], f"corpus {corpus.name}"
    else:
        if corpus.folds is None:  # the folds cv makes for such a corpus
            corpus = replace(corpus, folds=speaker_folds(corpus.rows, corpus.root)[0])
        ids, test = corpus.folds.split(fold, val_fraction=0).test, f"fold {fold} of {corpus.name}"
    refuse_if_seen(read_seen(folder, info), ids, speakers_of(corpus), model=str(folder), test=test)
    ids, skipped = usable_ids(corpus, store, ids)
    labels = info["labels"]
    config = model_settings(folder, info)
    if reference:
        if config.normalize != "speaker":
            raise EmoadaptError(folder, f"this model was trained with normalize={config.normalize}: reference "
                                        f"settings do not apply to it")
        config = load_config(None, [f"calibration.{k}={'null' if v is None else v}" for k, v in reference.items()],
                             base=config)
    tested = set(ids)  # only the test speakers' statistics are needed: the model brings the population's
    population, offsets = read_reference(folder, info)
    normalizer = make_normalizer(config, replace(corpus, rows=[u for u in corpus.rows if u.id in tested]), store, ids,
                                 population=population)
    if config.calibration.reads_model:
        read_references(loaded.model, normalizer, store, offsets, batch_size)
    dataset = labelled_dataset(corpus, store, ids, labels, normalizer=normalizer)
    if len(dataset) == 0:
        raise CorpusError(corpus.root, "no utterances to evaluate")
    probs = predict(loaded.model, dataset, batch_size)
    truth = [it[2] for it in dataset.items]
    scores = score(truth, probs.argmax(1).tolist(), labels)
    closed = score(truth, closed_predictions(truth, probs), labels)
    weights = [normalizer.weights[normalizer.speaker_of[i]] for i in ids] if normalizer is not None and \
        normalizer.weights else []
    results = {"model": str(folder), "corpus": {"name": corpus.name, "view": corpus.view, "root": str(corpus.root)},
               "fold": fold, "classes": labels, "scores": asdict(scores), "scores_closed": asdict(closed),
               "reference_weight": {"mean": float(np.mean(weights)), "min": float(np.min(weights)),
                                    "max": float(np.max(weights))} if weights else None,
               "skipped_utterances": skipped,
               "encoder": encoder,
               "protocol": protocol_of(config), "git": git_commit()}
    name = f"evaluate-{corpus.name}" + (f"-fold{fold}" if fold is not None else "") + ".json"
    path = Path(out) if out else folder / name
    atomic_write_json(results, path)
    write_predictions(path.with_suffix(".predictions.csv"), dataset, probs, labels)
    results["path"] = str(path)
    return results

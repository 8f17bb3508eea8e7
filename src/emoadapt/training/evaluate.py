"""``emoadapt evaluate``: a model folder scored on a corpus's stored features (a fold's test speakers, or every
labelled utterance), and the predictions file every test writes. Refused when the model saw any of those utterances
or speakers (:mod:`emoadapt.modelfolder.seen`)."""
from __future__ import annotations

import csv
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write, atomic_write_json
from ..calibration import make_normalizer, protocol_of
from ..corpora import Corpus
from ..errors import CheckpointError, CorpusError, EmoadaptError
from ..inference.runtime import predict
from ..modelfolder import load_classifier, read_seen, refuse_if_seen, speakers_of
from ..provenance import git_commit
from ..store.dataset import FeatureDataset, encoder_info, open_corpus, open_store, require_same_features, usable_ids
from ..store.features import FeatureStore
from .data import labelled_dataset
from .metrics import score
from .settings import RunConfig, config_from_record


def write_predictions(path: Path, dataset: FeatureDataset, probs: np.ndarray, labels: Sequence[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "predicted", *[f"p_{name}" for name in labels]])
            for (_, utt_id, y), p in zip(dataset.items, probs):
                w.writerow([utt_id, labels[y], labels[int(p.argmax())], *[f"{v:.5f}" for v in p]])
    atomic_write(path, write)


def model_settings(folder: Path, info: dict) -> RunConfig:
    """The run settings a model folder records (how its inputs were normalised, among others)."""
    try:
        return config_from_record(info.get("config") or {}, where=str(folder))
    except EmoadaptError as error:
        raise CheckpointError(folder, f"its recorded settings cannot be read ({error})") from None


def evaluate(model_dir: str | os.PathLike, corpus: Corpus | str | os.PathLike,
             store: FeatureStore | str | os.PathLike, fold: int | None = None, *, batch_size: int = 32,
             out: str | os.PathLike | None = None) -> dict:
    """Score a stage-2 model on a corpus (its ``fold`` test speakers, or every labelled utterance) and write the
    JSON (default: ``<model>/evaluate-<corpus>[-fold<k>].json``) and its predictions beside it."""
    loaded = load_classifier(model_dir)
    info, folder = loaded.info, loaded.folder
    corpus, store = open_corpus(corpus), open_store(store)
    encoder = encoder_info(store)
    require_same_features(info.get("encoder", {}), encoder, where=store.root,
                          what="the model was trained on other features")
    if fold is None:
        ids, test = [u.id for u in corpus.rows], f"corpus {corpus.name}"
    else:
        if corpus.folds is None:
            raise CorpusError(corpus.root, f"corpus {corpus.name} has no folds")
        ids, test = corpus.folds.split(fold, val_fraction=0).test, f"fold {fold} of {corpus.name}"
    refuse_if_seen(read_seen(folder, info), ids, speakers_of(corpus), model=str(folder), test=test)
    ids, skipped = usable_ids(corpus, store, ids)
    labels = info["labels"]
    config = model_settings(folder, info)
    dataset = labelled_dataset(corpus, store, ids, labels, normalizer=make_normalizer(config, corpus, store, ids))
    if len(dataset) == 0:
        raise CorpusError(corpus.root, "no utterances to evaluate")
    probs = predict(loaded.model, dataset, batch_size)
    scores = score([it[2] for it in dataset.items], probs.argmax(1).tolist(), labels)
    results = {"model": str(folder), "corpus": {"name": corpus.name, "view": corpus.view, "root": str(corpus.root)},
               "fold": fold, "classes": labels, "scores": asdict(scores), "skipped_utterances": skipped,
               "encoder": encoder,
               "protocol": protocol_of(config), "git": git_commit()}
    name = f"evaluate-{corpus.name}" + (f"-fold{fold}" if fold is not None else "") + ".json"
    path = Path(out) if out else folder / name
    atomic_write_json(results, path)
    write_predictions(path.with_suffix(".predictions.csv"), dataset, probs, labels)
    results["path"] = str(path)
    return results

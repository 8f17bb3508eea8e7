"""The one path from a model folder to predictions: load it, run it on stored features or on waveforms, batched by
length (little padding; the models give padded and lone utterances the same outputs), and score it.

``evaluate`` (the command), the test step of ``finetune`` and ``cv``, and the coming ``predict``, server and
export all go through :func:`load_classifier` and :func:`predict`. Nothing here imports Lightning.
"""
from __future__ import annotations

import csv
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_write
from .checkpoints import CONFIG, LoadedModel, load_model, read_classifier
from .config import RunConfig, load_config, protocol_of
from .corpora import Corpus
from .data import (FeatureDataset, Normalizer, collate, encoder_info, eval_loader, labelled_dataset, make_normalizer,
                   open_corpus, open_store, usable_ids)
from .errors import CheckpointError, CorpusError, EmoadaptError, EncoderError, StoreMismatch
from .evaluation import score, write_json
from .features import FeatureStore
from .leakage import read_seen, refuse_if_seen, speakers_of
from .provenance import git_commit


def load_classifier(model_dir: str | os.PathLike) -> LoadedModel:
    """A stage-2 model folder (or the finetune run folder holding ``model/``), rebuilt in eval mode on the CPU."""
    folder, _ = read_classifier(model_dir)
    return load_model(folder)


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: FeatureDataset, batch_size: int = 32,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Class probabilities ``[N, C]`` in dataset order (whole utterances, eval mode)."""
    model = model.to(device).eval()
    out = None
    for batch in eval_loader(dataset, batch_size):
        probs = F.softmax(model(batch["hidden_states"].to(device), batch["padding_mask"].to(device)).float(), -1)
        if out is None:
            out = np.zeros((len(dataset), probs.shape[1]), dtype=np.float32)
        out[batch["index"].numpy()] = probs.cpu().numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def model_encoder(loaded: LoadedModel, encoder=None):
    """The frozen encoder ``loaded`` was trained on (loaded from its ``model.json`` when None; another is refused)."""
    trained = loaded.info.get("encoder") or {}
    if encoder is None:
        from .encoders import load_encoder
        encoder = load_encoder(trained.get("name"), **(trained.get("options") or {}))
    if encoder.fingerprint != trained.get("fingerprint"):
        raise EncoderError(encoder.name, f"the model was trained on features of {trained.get('fingerprint')!r}, "
                                         f"not {encoder.fingerprint!r}; use the model's encoder")
    return encoder


def model_normalization(loaded: LoadedModel) -> str:
    """How the model's training inputs were normalised: "global", "speaker" or "utterance"."""
    return (loaded.info.get("config") or {}).get("normalize", "global")


def waveform_normalizer(loaded: LoadedModel, statistics: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> Normalizer | None:
    """How hidden states of new audio are normalised for this model, as its training inputs were: not at all
    (``global``), each by itself (``utterance``), or with a speaker's (mean, std) ``statistics`` (``speaker``:
    required then)."""
    normalize = model_normalization(loaded)
    if normalize == "global":
        return None
    if normalize == "utterance":
        return Normalizer("utterance")
    if statistics is None:
        raise EmoadaptError(None, "this model was trained on speaker-normalised features: give the speaker's "
                                  "statistics from calibration clips (Recognizer.calibrate, predict --calibrate)")
    return Normalizer.one_speaker(statistics)


@torch.inference_mode()
def encode_waveforms(loaded: LoadedModel, encoder, waveforms: Sequence[np.ndarray],
                     batch_size: int = 8) -> list[np.ndarray]:
    """The hidden states of each 16 kHz waveform, in input order (encoded in batches of similar length): the model's
    layers of the encoder's output, rounded through fp16 as a feature store keeps them, as float16 ``[L+1, T, D]``."""
    trained = loaded.info.get("encoder") or {}
    layers = trained.get("layers") or list(range(encoder.num_layers + 1))
    order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))
    out: list = [None] * len(waveforms)
    for start in range(0, len(order), batch_size):
        chosen = order[start: start + batch_size]
        for h, i in zip(encoder.encode([waveforms[i] for i in chosen]), chosen):
            out[i] = h[layers].half().numpy()
    return out


@torch.inference_mode()
def classify(model: torch.nn.Module, features: Sequence[np.ndarray], batch_size: int = 8, *,
             embed: bool = False) -> np.ndarray:
    """Class probabilities ``[N, C]`` (or, with ``embed``, the utterance vectors ``[N, E]`` the last layer sees) of
    hidden states ``[L+1, T, D]`` already normalised as the model expects, batched by length. ``model``: a torch
    model, or an exported head (:class:`emoadapt.export.OnnxHead`: numpy in, probabilities out)."""
    exported = not isinstance(model, torch.nn.Module)
    if exported and embed:
        raise EmoadaptError(None, "embeddings need the torch backend (an exported head gives probabilities only)")
    order = sorted(range(len(features)), key=lambda i: features[i].shape[1])
    out = None
    for start in range(0, len(order), batch_size):
        chosen = order[start: start + batch_size]
        batch = collate([{"hidden_states": torch.from_numpy(np.asarray(features[i], np.float32)), "label": -1,
                          "index": i} for i in chosen])
        if exported:
            values = model(batch["hidden_states"].numpy(), batch["padding_mask"].numpy())
        elif embed:
            values = model.embed(batch["hidden_states"], batch["padding_mask"]).float().numpy()
        else:
            values = F.softmax(model(batch["hidden_states"], batch["padding_mask"]).float(), -1).numpy()
        if out is None:
            out = np.zeros((len(features), values.shape[1]), dtype=np.float32)
        out[chosen] = values
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def predict_waveforms(loaded: LoadedModel, waveforms: Sequence[np.ndarray], *, encoder=None,
                      batch_size: int = 8, statistics: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Class probabilities ``[N, C]`` for 16 kHz mono float32 waveforms (:func:`emoadapt.audio.load_audio`), each
    as it would be scored from stored features. ``statistics``: a speaker's (mean, std) ``[L+1, D]`` from
    calibration clips, for a model trained on speaker-normalised features (required by such a model)."""
    normalizer = waveform_normalizer(loaded, statistics)
    features = encode_waveforms(loaded, model_encoder(loaded, encoder), waveforms, batch_size)
    return classify(loaded.model, [x if normalizer is None else normalizer.normalize(x) for x in features],
                    batch_size)


def _model_config(folder: Path) -> RunConfig:
    """The run settings a model folder records (how its inputs were normalised, among others)."""
    try:
        return load_config(folder / CONFIG)
    except EmoadaptError as error:
        raise CheckpointError(folder / CONFIG, f"its recorded settings cannot be read ({error})") from None


def write_predictions(path: Path, dataset: FeatureDataset, probs: np.ndarray, labels: Sequence[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "predicted", *[f"p_{name}" for name in labels]])
            for (_, utt_id, y), p in zip(dataset.items, probs):
                w.writerow([utt_id, labels[y], labels[int(p.argmax())], *[f"{v:.5f}" for v in p]])
    atomic_write(path, write)


def evaluate(model_dir: str | os.PathLike, corpus: Corpus | str | os.PathLike,
             store: FeatureStore | str | os.PathLike, fold: int | None = None, *, batch_size: int = 32,
             out: str | os.PathLike | None = None) -> dict:
    """Score a stage-2 model on a corpus (its ``fold`` test speakers, or every labelled utterance) and write the
    JSON (default: ``<model>/evaluate-<corpus>[-fold<k>].json``). Refused when the model saw any of those
    utterances or speakers (:mod:`emoadapt.leakage`)."""
    folder, info = read_classifier(model_dir)
    corpus, store = open_corpus(corpus), open_store(store)
    encoder = encoder_info(store)
    trained = info.get("encoder", {})
    diffs = [k for k in ("fingerprint", "layers") if trained.get(k) != encoder.get(k)]
    if diffs:
        raise StoreMismatch(store.root, "the model was trained on other features ("
                            + "; ".join(f"{k}: model {trained.get(k)!r}, store {encoder.get(k)!r}" for k in diffs) + ")")
    if fold is None:
        ids, test = [u.id for u in corpus.rows], f"corpus {corpus.name}"
    else:
        if corpus.folds is None:
            raise CorpusError(corpus.root, f"corpus {corpus.name} has no folds")
        ids, test = corpus.folds.split(fold, val_fraction=0).test, f"fold {fold} of {corpus.name}"
    refuse_if_seen(read_seen(folder, info), ids, speakers_of(corpus), model=str(folder), test=test)
    ids, skipped = usable_ids(corpus, store, ids)
    labels = info["labels"]
    config = _model_config(folder)
    dataset = labelled_dataset(corpus, store, ids, labels, normalizer=make_normalizer(config, corpus, store, ids))
    if len(dataset) == 0:
        raise CorpusError(corpus.root, "no utterances to evaluate")
    probs = predict(load_model(folder).model, dataset, batch_size)
    scores = score([it[2] for it in dataset.items], probs.argmax(1).tolist(), labels)
    results = {"model": str(folder), "corpus": {"name": corpus.name, "view": corpus.view, "root": str(corpus.root)},
               "fold": fold, "classes": labels, "scores": asdict(scores), "skipped_utterances": skipped,
               "encoder": encoder,
               "protocol": protocol_of(config), "git": git_commit()}
    name = f"evaluate-{corpus.name}" + (f"-fold{fold}" if fold is not None else "") + ".json"
    path = Path(out) if out else folder / name
    write_json(results, path)
    write_predictions(path.with_suffix(".predictions.csv"), dataset, probs, labels)
    results["path"] = str(path)
    return results

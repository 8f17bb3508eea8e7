"""Recipes fitted in closed form instead of by gradient steps: the ``stats`` recipe's logistic regression.

    FoldData ─► model.pooled (utterance statistics, whole utterances) ─► standardise (training utterances)
             ─► scikit-learn LogisticRegression for each C of the grid, scored on the validation speakers
             ─► the best C refitted on training + validation utterances ─► copied into the model's buffers and head

What is fitted lands in the model's own tensors, so the model folder is safetensors + JSON like every recipe's and
predicts through the same path (:mod:`emoadapt.inference.runtime`); scikit-learn objects are never saved. The same fit on
the adapter's input statistics gives the adapter recipe's head its start (``head.start_from_statistics``).
"""
from __future__ import annotations

import time
from functools import partial
from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ..errors import TrainingError
from ..store.augment import source_id
from ..store.dataset import FeatureDataset, eval_loader
from .metrics import closed_predictions, score

# the record's key for (probabilities [N, C], labels [N]) of utterances the chosen fit did not see (validation
# speakers, or each training corpus held out in turn): what temperature scaling is fitted on; never saved
OUT_OF_SAMPLE = "out_of_sample"


@torch.inference_mode()
def pooled_features(pool, dataset: FeatureDataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float64, labels [N]) of whole utterances, in dataset order; ``pool(hidden_states,
    padding_mask)`` gives a batch's features (e.g. ``StatsClassifier.pooled``)."""
    out, labels = None, np.array([item[2] for item in dataset.items], dtype=np.int64)
    for batch in eval_loader(dataset, batch_size):
        x = pool(batch["hidden_states"], batch["padding_mask"]).double().numpy()
        if out is None:
            out = np.zeros((len(dataset), x.shape[1]))
        out[batch["index"].numpy()] = x
    return out, labels


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, class_weight: str | None = None
                 ) -> tuple[StandardScaler, LogisticRegression]:
    """``class_weight="balanced"``: each class weighs the same in the loss however many clips it has (corpora
    merged onto shared classes leave some classes to one corpus only)."""
    scaler = StandardScaler().fit(x)
    return scaler, LogisticRegression(C=c, max_iter=3000, class_weight=class_weight).fit(scaler.transform(x), y)


def logistic_fit(head) -> partial:
    """:func:`fit_logistic` as a stats head's settings (``head.class_weight``) ask for it."""
    return partial(fit_logistic, class_weight=None if head.class_weight == "none" else "balanced")


def all_class_probabilities(scaler: StandardScaler, model: LogisticRegression, x: np.ndarray,
                            num_classes: int) -> np.ndarray:
    """[N, num_classes] probabilities; a class the fit never saw gets 0."""
    full = np.zeros((len(x), num_classes))
    full[:, model.classes_] = model.predict_proba(scaler.transform(x))
    return full


def layer_columns(layers: Sequence[int] | None, num_features: int, num_layers: int) -> np.ndarray:
    """The columns of pooled statistics (per hidden state [mean; std], :func:`utterance_statistics`) that hold
    ``layers`` (None: every column)."""
    if layers is None:
        return np.arange(num_features)
    width = num_features // num_layers
    return np.concatenate([np.arange(l * width, (l + 1) * width) for l in sorted(layers)])


def _candidates(c_grid, layer_grid) -> list[tuple[tuple[int, ...] | None, float]]:
    """(layers, C) pairs to score: every C of the grid for every layer set (None: all layers)."""
    sets = [tuple(sorted(int(l) for l in layers)) for layers in layer_grid] if layer_grid else [None]
    return [(layers, c) for layers in sets for c in sorted(float(c) for c in c_grid)]


def _choice_record(scores: dict, best: tuple, layer_grid) -> dict:
    """What the fold's results record of the choice: the chosen C (and layers), the UA of each C within the chosen
    layer set, and with a layer grid the best UA of each layer set."""
    layers, c = best
    record = {"C": c, "val_ua": {str(k[1]): v for k, v in scores.items() if k[0] == layers}}
    if layer_grid:
        by_layers: dict[str, float] = {}
        for (candidate, _), ua in scores.items():
            key = ",".join(map(str, candidate))
            by_layers[key] = max(by_layers.get(key, -1.0), ua)
        record.update(layers=list(layers), val_ua_by_layers=by_layers)
    return record


def _best(scores: dict) -> tuple:
    """The best (layers, C): highest UA; ties: the stronger regularisation, then fewer layers."""
    return max(scores, key=lambda k: (scores[k], -k[1], -(len(k[0]) if k[0] else 1e9)))


def choose_by_held_out_corpus(x: np.ndarray, y: np.ndarray, groups: np.ndarray, labels, c_grid, log=None,
                              layer_grid=None, num_layers: int = 1, fit=fit_logistic
                              ) -> tuple[StandardScaler, LogisticRegression, dict]:
    """C (and, with ``layer_grid``, the hidden states used) with the best mean UA over the training corpora, each
    held out in turn (fitted on the others, scored over its own classes, "closed"), then refitted on every training
    utterance: validation that imitates a corpus never heard (leave-one-corpus-out)."""
    names = sorted(set(groups.tolist()))
    if len(names) < 2:
        raise TrainingError(None, f"choose_by=corpus needs at least two training corpora; the training utterances "
                                  f"come from {', '.join(names) or 'none'}: use choose_by=speakers")
    held_out_ua, held_out = {}, {}
    for layers, c in _candidates(c_grid, layer_grid):
        columns = layer_columns(layers, x.shape[1], num_layers)
        per_corpus, held_out[layers, c] = {}, (np.zeros((len(y), len(labels))), y)
        for name in names:
            inside = groups == name
            fitted = fit(x[~inside][:, columns], y[~inside], c)
            full = all_class_probabilities(*fitted, x[inside][:, columns], len(labels))
            held_out[layers, c][0][inside] = full
            truth = y[inside].tolist()
            per_corpus[name] = score(truth, closed_predictions(truth, full), labels).ua
        held_out_ua[layers, c] = float(np.mean(list(per_corpus.values())))
        if log:
            log(f"  {_name(layers, c)}: held-out-corpus UA {held_out_ua[layers, c]:.2f} "
                f"({', '.join(f'{k} {v:.1f}' for k, v in per_corpus.items())})")
    best = _best(held_out_ua)
    scaler, model = fit(x[:, layer_columns(best[0], x.shape[1], num_layers)], y, best[1])
    return scaler, model, {**_choice_record(held_out_ua, best, layer_grid),
                           "chosen_on": f"each training corpus held out in turn ({', '.join(names)})",
                           OUT_OF_SAMPLE: held_out[best]}


def choose_train_shrink(corpus, store, split: dict, labels: Sequence[str], grid: Sequence[float], c_grid,
                        fit=fit_logistic, log=None) -> dict:
    """``calibration.train_shrink`` for a speaker-normalised ``stats`` fit, from ``grid``: each training corpus of
    the fold (``split``'s training and validation utterances, :func:`~emoadapt.training.data.split_fold`) is held
    out in turn and read as a speaker without reference audio is read, with the population statistics of the
    others; the others' speakers are standardised with their own statistics moved toward that population by
    n / (n + τ) and fitted with every C of ``c_grid``. The τ whose best C gives the best mean held-out UA (over each
    corpus's own classes, "closed") is chosen (ties: the larger τ, nearer to how an unseen speaker is read). Every
    hidden state is used (a ``head.layer_grid`` is chosen afterwards, with C, on the statistics of the τ chosen).
    Reads the store's frame moments, not a normaliser: the fold's data is built once, with the τ chosen. Returns the
    choice's record."""
    from ..calibration import shrunk
    from ..corpora.base import speaker_group
    from ..store.features import FrameMoments
    ids = list(split["train"]) + list(split["val"])
    by_id, group = {u.id: u for u in corpus.rows}, speaker_group(corpus)
    corpus_of = {i: (by_id[i].extras.get("corpus") or "").strip() for i in ids}
    names = sorted(set(corpus_of.values()))
    if len(names) < 2:
        raise TrainingError(None, f"calibration.train_shrink_grid needs at least two training corpora to hold out in "
                                  f"turn; the training utterances come from {', '.join(names) or 'none'}")
    label_index = {label: k for k, label in enumerate(labels)}
    moments, t0 = FrameMoments(store, ids), time.perf_counter()
    held_out: dict[tuple[float, float], dict[str, float]] = {}
    for name in names:
        inside = [i for i in ids if corpus_of[i] == name]
        outside = [i for i in ids if corpus_of[i] != name]
        population = moments.statistics(outside)
        x_inside = moments.pooled(inside, [population] * len(inside))
        truth = [label_index[by_id[i].label] for i in inside]
        y_outside = np.array([label_index[by_id[i].label] for i in outside])
        speakers: dict[str, list[str]] = {}
        for i in outside:
            speakers.setdefault(group(i), []).append(i)
        raw = {s: moments.statistics(members) for s, members in speakers.items()}
        for tau in sorted(float(t) for t in grid):
            statistics = {s: shrunk(raw[s], population, len(members), tau)[0] for s, members in speakers.items()}
            x_outside = moments.pooled(outside, [statistics[group(i)] for i in outside])
            for c in sorted(float(c) for c in c_grid):
                probabilities = all_class_probabilities(*fit(x_outside, y_outside, c), x_inside, len(labels))
                held_out.setdefault((tau, c), {})[name] = score(truth, closed_predictions(truth, probabilities),
                                                                labels).ua
    mean = {key: float(np.mean(list(per_corpus.values()))) for key, per_corpus in held_out.items()}
    best = {}  # τ -> its best C
    for tau, c in sorted(mean):  # ties between Cs: the first, the stronger regularisation
        if tau not in best or mean[tau, c] > mean[tau, best[tau]]:
            best[tau] = c
    by_tau = {tau: mean[tau, c] for tau, c in best.items()}
    chosen = max(by_tau, key=lambda t: (round(by_tau[t], 6), t))
    if log:
        log(f"  train_shrink {chosen:g} chosen ({time.perf_counter() - t0:.0f} s; held-out-corpus UA by τ: "
            + ", ".join(f"{t:g} {ua:.2f}" for t, ua in by_tau.items()) + ")")
    return {"train_shrink": chosen, "held_out_ua": {f"{t:g}": ua for t, ua in by_tau.items()},
            "held_out_ua_by_corpus": held_out[chosen, best[chosen]], "C_with_it": best[chosen],
            "chosen_on": f"each training corpus held out in turn ({', '.join(names)}), read without a reference"}


def _name(layers, c) -> str:
    return f"C={c:g}" if layers is None else f"layers {','.join(map(str, layers))}, C={c:g}"


def choose_and_fit(train: tuple, val: tuple, labels, c_grid, log=None, *, refit: bool = True, layer_grid=None,
                   num_layers: int = 1, fit=fit_logistic) -> tuple[StandardScaler, LogisticRegression, dict]:
    """C (and, with ``layer_grid``, the hidden states used) with the best validation UA (ties: the stronger
    regularisation, then fewer layers), then refitted on training + validation (``refit``; else the fit on training
    alone, for a model whose training goes on to be judged on validation). Without validation utterances the middle
    of the grid is used (all layers), and the record says so."""
    (x_train, y_train), (x_val, y_val) = train, val
    present = sorted({int(y) for y in y_train})
    if len(present) < 2:
        raise TrainingError(None, f"the training speakers' utterances hold only the class "
                                  f"{', '.join(labels[k] for k in present) or '(none)'}: a classifier needs at least "
                                  f"two; check the corpus (emoadapt corpus) and its folds")
    fits, val_ua = {}, {}
    if len(y_val):
        for layers, c in _candidates(c_grid, layer_grid):
            columns = layer_columns(layers, x_train.shape[1], num_layers)
            scaler, model = fits[layers, c] = fit(x_train[:, columns], y_train, c)
            predicted = model.predict(scaler.transform(x_val[:, columns])).tolist()
            val_ua[layers, c] = score(y_val.tolist(), predicted, labels).ua
            if log:
                log(f"  {_name(layers, c)}: validation UA {val_ua[layers, c]:.2f}")
        best = _best(val_ua)
    else:
        grid = sorted(float(c) for c in c_grid)
        best = (None, grid[len(grid) // 2])
    columns = layer_columns(best[0], x_train.shape[1], num_layers)
    # the validation speakers as the fit on training speakers alone sees them
    out_of_sample = (all_class_probabilities(*fits[best], x_val[:, columns], len(labels)), y_val) if val_ua else None
    if refit or not val_ua:
        scaler, model = fit(np.concatenate([x_train, x_val])[:, columns], np.concatenate([y_train, y_val]), best[1])
    else:
        scaler, model = fits[best]
    record = _choice_record(val_ua, best, layer_grid if val_ua else None)
    return scaler, model, {**record, "chosen_on": "validation speakers" if val_ua else
                           "no validation speakers: middle of grid", OUT_OF_SAMPLE: out_of_sample}


def logistic_weights(logistic: LogisticRegression, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight [C, F], bias [C]) of a linear layer that gives the fitted regression's logits. A class missing from
    the training data gets a bias that never wins."""
    weight, bias = np.zeros((num_classes, logistic.coef_.shape[1])), np.full(num_classes, -1e4)
    coef, intercept = logistic.coef_, logistic.intercept_
    if len(logistic.classes_) == 2:  # scikit-learn keeps one row for two classes: logits (0, w.x + b)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight[logistic.classes_], bias[logistic.classes_] = coef, intercept
    return weight, bias


@torch.no_grad()
def load_logistic(model, scaler: StandardScaler, logistic: LogisticRegression, columns: np.ndarray | None = None
                  ) -> None:
    """Copy a fitted scaler and logistic regression into ``model.feature_mean / feature_scale / head``. Fitted on
    some ``columns`` only (the chosen layers), the others get weight 0: the model keeps its shape and its file
    format, and simply ignores the layers not chosen."""
    weight, bias = logistic_weights(logistic, model.head.weight.shape[0])
    columns = torch.as_tensor(np.arange(model.head.weight.shape[1]) if columns is None else columns)
    model.feature_mean.zero_()
    model.feature_scale.fill_(1.0)
    model.head.weight.zero_()
    model.feature_mean[columns] = torch.as_tensor(scaler.mean_, dtype=model.feature_mean.dtype)
    model.feature_scale[columns] = torch.as_tensor(scaler.scale_, dtype=model.feature_scale.dtype)
    model.head.weight[:, columns] = torch.as_tensor(weight, dtype=model.head.weight.dtype)
    model.head.bias.copy_(torch.as_tensor(bias))


def _fit_on_statistics(pool, data, batch_size: int, c_grid, log=None, refit: bool = True,
                       choose_by: str = "speakers", layer_grid=None, num_layers: int = 1, fit=fit_logistic):
    """The pooled features of the fold's training and validation utterances, checked, then C chosen on validation
    (:func:`choose_and_fit`) or on each training corpus held out in turn (:func:`choose_by_held_out_corpus`)."""
    t0 = time.perf_counter()
    train = pooled_features(pool, data.train, batch_size)  # evaluation loader: whole utterances, never crops
    val = pooled_features(pool, data.val, batch_size)
    if log:
        log(f"  statistics of {len(data.train)} training and {len(data.val)} validation utterances "
            f"({time.perf_counter() - t0:.0f} s); choosing C on validation")
    for name, (features, _) in (("training", train), ("validation", val)):
        if not np.isfinite(features).all():
            raise TrainingError(None, f"the pooled statistics of the {name} utterances hold NaN or infinite values; "
                                      f"check the features (emoadapt extract CORPUS --store S --verify)")
    if choose_by == "corpus":
        corpus_of = {u.id: (u.extras.get("corpus") or "").strip() for u in data.corpus.rows}
        ids = [item[1] for item in data.train.items] + [item[1] for item in data.val.items]
        return choose_by_held_out_corpus(np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]),
                                         np.array([corpus_of[source_id(i)] for i in ids]), data.labels, c_grid, log,
                                         layer_grid, num_layers, fit)
    return choose_and_fit(train, val, data.labels, c_grid, log, refit=refit, layer_grid=layer_grid,
                          num_layers=num_layers, fit=fit)


@torch.no_grad()
def start_from_statistics(model, data, batch_size: int, c_grid, log=None) -> dict:
    """Set an adapter classifier with ``head.start_from_statistics`` (:class:`EmotionClassifier`) to the stats
    recipe before its training: the head's statistics columns and bias from the logistic regression fitted on the
    fold's input statistics, its SAP(Z) columns zero. Fitted on the training utterances only (C chosen on
    validation), because validation goes on to choose the epoch. Returns what the fold's results record."""
    model.eval()
    scaler, logistic, chosen = _fit_on_statistics(model.input_statistics, data, batch_size, c_grid, log,
                                                  refit=False)
    chosen.pop(OUT_OF_SAMPLE, None)  # the adapter's own temperature is fitted after its training
    weight, bias = logistic_weights(logistic, model.head.weight.shape[0])
    model.statistics_mean.copy_(torch.as_tensor(scaler.mean_))
    model.statistics_scale.copy_(torch.as_tensor(scaler.scale_))
    statistics = weight.shape[1]
    model.head.weight.zero_()
    model.head.weight[:, -statistics:] = torch.as_tensor(weight)
    model.head.bias.copy_(torch.as_tensor(bias))
    return {"C": chosen["C"], "val_ua": chosen["val_ua"].get(str(chosen["C"]))}


def fit_closed_form(model, data, batch_size: int, log=None, choose_by: str = "speakers") -> dict:
    """Fit ``model`` (a closed-form recipe, e.g. StatsClassifier) on a fold (``FoldData``); returns what the fold's
    results record (``best_val_ua``: the chosen C's validation UA). ``log``: a function for progress lines."""
    t0 = time.perf_counter()
    model.eval()
    layer_grid, num_layers = model.config.layer_grid, model.config.input_layers
    wrong = sorted({l for layers in layer_grid for l in layers if not 0 <= l < num_layers})
    if wrong or any(not layers for layers in layer_grid):
        raise TrainingError(None, f"head.layer_grid {layer_grid}: each entry is a non-empty list of hidden states "
                                  f"0..{num_layers - 1} of the store's {num_layers}"
                                  + (f" ({', '.join(map(str, wrong))} is not)" if wrong else ""))
    fit = logistic_fit(model.config)
    scaler, logistic, chosen = _fit_on_statistics(model.pooled, data, batch_size, model.config.c_grid, log,
                                                  choose_by=choose_by, layer_grid=layer_grid, num_layers=num_layers,
                                                  fit=fit)
    columns = layer_columns(tuple(chosen["layers"]) if "layers" in chosen else None,
                            model.head.weight.shape[1], num_layers)
    load_logistic(model, scaler, logistic, columns)
    held_out = chosen.pop(OUT_OF_SAMPLE, None)
    best_val = chosen["val_ua"].get(str(chosen["C"]))
    return {"best_val_ua": best_val, "best_epoch": None, "epochs_run": 0, "world_size": 1,
            "seconds": time.perf_counter() - t0, "closed_form": chosen, OUT_OF_SAMPLE: held_out}

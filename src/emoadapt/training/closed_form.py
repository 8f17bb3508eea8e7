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


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(x)
    return scaler, LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), y)


def all_class_probabilities(scaler: StandardScaler, model: LogisticRegression, x: np.ndarray,
                            num_classes: int) -> np.ndarray:
    """[N, num_classes] probabilities; a class the fit never saw gets 0."""
    full = np.zeros((len(x), num_classes))
    full[:, model.classes_] = model.predict_proba(scaler.transform(x))
    return full


def choose_by_held_out_corpus(x: np.ndarray, y: np.ndarray, groups: np.ndarray, labels, c_grid, log=None
                              ) -> tuple[StandardScaler, LogisticRegression, dict]:
    """C with the best mean UA over the training corpora, each held out in turn (fitted on the others, scored over
    its own classes, "closed"), then refitted on every training utterance: validation that imitates a corpus never
    heard (leave-one-corpus-out)."""
    names = sorted(set(groups.tolist()))
    if len(names) < 2:
        raise TrainingError(None, f"choose_by=corpus needs at least two training corpora; the training utterances "
                                  f"come from {', '.join(names) or 'none'}: use choose_by=speakers")
    grid, held_out_ua, held_out = sorted(float(c) for c in c_grid), {}, {}
    for c in grid:
        per_corpus, held_out[c] = {}, (np.zeros((len(y), len(labels))), y)
        for name in names:
            inside = groups == name
            full = all_class_probabilities(*fit_logistic(x[~inside], y[~inside], c), x[inside], len(labels))
            held_out[c][0][inside] = full
            truth = y[inside].tolist()
            per_corpus[name] = score(truth, closed_predictions(truth, full), labels).ua
        held_out_ua[c] = float(np.mean(list(per_corpus.values())))
        if log:
            log(f"  C={c:g}: held-out-corpus UA {held_out_ua[c]:.2f} "
                f"({', '.join(f'{k} {v:.1f}' for k, v in per_corpus.items())})")
    best = max(grid, key=lambda c: (held_out_ua[c], -c))
    scaler, model = fit_logistic(x, y, best)
    return scaler, model, {"C": best, "val_ua": {str(c): v for c, v in held_out_ua.items()},
                           "chosen_on": f"each training corpus held out in turn ({', '.join(names)})",
                           OUT_OF_SAMPLE: held_out[best]}


def choose_and_fit(train: tuple, val: tuple, labels, c_grid, log=None, *, refit: bool = True
                   ) -> tuple[StandardScaler, LogisticRegression, dict]:
    """C with the best validation UA (ties: the stronger regularisation), then refitted on training + validation
    (``refit``; else the fit on training alone, for a model whose training goes on to be judged on validation).
    Without validation utterances the middle of the grid is used, and the record says so."""
    (x_train, y_train), (x_val, y_val) = train, val
    present = sorted({int(y) for y in y_train})
    if len(present) < 2:
        raise TrainingError(None, f"the training speakers' utterances hold only the class "
                                  f"{', '.join(labels[k] for k in present) or '(none)'}: a classifier needs at least "
                                  f"two; check the corpus (emoadapt corpus) and its folds")
    grid = sorted(float(c) for c in c_grid)
    fits = {}
    if len(y_val):
        val_ua = {}
        for c in grid:
            scaler, model = fits[c] = fit_logistic(x_train, y_train, c)
            val_ua[c] = score(y_val.tolist(), model.predict(scaler.transform(x_val)).tolist(), labels).ua
            if log:
                log(f"  C={c:g}: validation UA {val_ua[c]:.2f}")
        best = max(grid, key=lambda c: (val_ua[c], -c))
    else:
        val_ua, best = {}, grid[len(grid) // 2]
    # the validation speakers as the fit on training speakers alone sees them
    out_of_sample = (all_class_probabilities(*fits[best], x_val, len(labels)), y_val) if val_ua else None
    if refit or not val_ua:
        scaler, model = fit_logistic(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), best)
    else:
        scaler, model = fits[best]
    return scaler, model, {"C": best, "val_ua": {str(c): v for c, v in val_ua.items()},
                           "chosen_on": "validation speakers" if val_ua else "no validation speakers: middle of grid",
                           OUT_OF_SAMPLE: out_of_sample}


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
def load_logistic(model, scaler: StandardScaler, logistic: LogisticRegression) -> None:
    """Copy a fitted scaler and logistic regression into ``model.feature_mean / feature_scale / head``."""
    weight, bias = logistic_weights(logistic, model.head.weight.shape[0])
    model.feature_mean.copy_(torch.as_tensor(scaler.mean_))
    model.feature_scale.copy_(torch.as_tensor(scaler.scale_))
    model.head.weight.copy_(torch.as_tensor(weight))
    model.head.bias.copy_(torch.as_tensor(bias))


def _fit_on_statistics(pool, data, batch_size: int, c_grid, log=None, refit: bool = True,
                       choose_by: str = "speakers"):
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
                                         np.array([corpus_of[source_id(i)] for i in ids]), data.labels, c_grid, log)
    return choose_and_fit(train, val, data.labels, c_grid, log, refit=refit)


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
    scaler, logistic, chosen = _fit_on_statistics(model.pooled, data, batch_size, model.config.c_grid, log,
                                                  choose_by=choose_by)
    load_logistic(model, scaler, logistic)
    held_out = chosen.pop(OUT_OF_SAMPLE, None)
    best_val = chosen["val_ua"].get(str(chosen["C"]))
    return {"best_val_ua": best_val, "best_epoch": None, "epochs_run": 0, "world_size": 1,
            "seconds": time.perf_counter() - t0, "closed_form": chosen, OUT_OF_SAMPLE: held_out}

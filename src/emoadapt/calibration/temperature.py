"""Honest probabilities: temperature scaling, and how far probabilities are from calibrated.

A classifier's softmax is often over-confident, and more so on audio unlike its training data. Temperature scaling
(Guo et al. 2017) divides the logits by one number T > 0. It is fitted by likelihood on utterances the classifier
was not fitted on, and those are always from the training data:
- the validation speakers;
- for ``choose_by=corpus``, each training corpus held out in turn.
Never a test speaker or a held-out corpus. T does not change any argmax, so UA and WA stay what they were.
:func:`apply_temperature` folds T into the classifier's last linear layer, so a model folder, its ONNX export and
every predict path carry it with no new code.

``expected_calibration_error``: the top class's probability against how often it is right, in equal-width bins,
weighted by the bins' sizes (0: calibrated; reported in %).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

TEMPERATURE_RANGE = (0.05, 20.0)
ECE_BINS = 15


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in :data:`TEMPERATURE_RANGE` that minimises the negative log-likelihood of ``labels`` under
    softmax(logits / T). Log-probabilities serve as logits (a row's constant cancels)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if not len(labels):
        return 1.0
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log p, a zero read as the smallest float64 (the logits a softmax output stands for, up to a row's constant)."""
    return np.log(np.clip(np.asarray(probabilities, np.float64), 1e-300, None))


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): probabilities as the classifier would give them with its logits divided by T."""
    return softmax(log_probabilities(probabilities) / temperature, axis=1)


def expected_calibration_error(probabilities: np.ndarray, labels, bins: int = ECE_BINS) -> float:
    """ECE in %: sum over equal-width confidence bins of |accuracy - mean confidence| x the bin's share."""
    points = reliability(probabilities, labels, bins)
    total = sum(p["count"] for p in points)
    return float(100 * sum(p["count"] * abs(p["accuracy"] - p["confidence"]) for p in points) / total) if total else 0.0


def reliability(probabilities: np.ndarray, labels, bins: int = 10) -> list[dict]:
    """The reliability diagram's points: per equal-width confidence bin, its mean confidence, accuracy and count."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.int64)
    if not len(labels):
        return []
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "count": int((which == b).sum())} for b in range(bins) if (which == b).any()]


def within(probabilities: np.ndarray, classes: list[int]) -> np.ndarray:
    """Probabilities renormalised over some classes (a target corpus's), the others zero."""
    out = np.zeros_like(np.asarray(probabilities, np.float64))
    out[:, classes] = np.asarray(probabilities, np.float64)[:, classes]
    return out / np.maximum(out.sum(1, keepdims=True), 1e-300)


@torch.no_grad()
def apply_temperature(model: torch.nn.Module, temperature: float) -> None:
    """Divide the classifier's logits by ``temperature`` for good: its last linear layer's weight and bias."""
    layer = model.head if hasattr(model, "head") else model.post_net  # EmoBox's head is post_net
    layer.weight.div_(temperature)
    if layer.bias is not None:
        layer.bias.div_(temperature)

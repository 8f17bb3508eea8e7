"""Temperature scaling: the fit recovers a known temperature, ECE tells calibrated from over-confident
probabilities, and folding T into a classifier's last layer divides its logits without moving an argmax."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from emoadapt.calibration.temperature import (apply_temperature, expected_calibration_error, fit_temperature,
                                              reliability, scaled, within)
from emoadapt.model import build_model


def sampled(t: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / t): a classifier over-confident by a factor t."""
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((n, classes))
    p = np.exp(logits / t)
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def test_the_fit_recovers_the_temperature_and_ece_falls():
    logits, labels = sampled(2.5)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    before, after = expected_calibration_error(raw, labels), expected_calibration_error(scaled(raw, t), labels)
    assert before > 10 and after < 3  # over-confident, then close to calibrated
    assert (scaled(raw, t).argmax(1) == raw.argmax(1)).all()
    calibrated_logits, calibrated_labels = sampled(1.0, seed=1)
    assert fit_temperature(calibrated_logits, calibrated_labels) == pytest.approx(1.0, rel=0.1)
    points = reliability(scaled(raw, t), labels)
    assert sum(p["count"] for p in points) == len(labels)
    assert all(abs(p["accuracy"] - p["confidence"]) < 0.1 for p in points if p["count"] > 200)
    kept = within(raw, [0, 2])
    assert np.allclose(kept.sum(1), 1) and (kept[:, [1, 3, 4]] == 0).all()


def test_folding_t_into_the_last_layer_divides_the_logits():
    for recipe in ("stats", "superb", "emobox"):
        model = build_model(recipe, 3, 8, 4).eval()
        x, mask = torch.randn(2, 3, 20, 8), torch.zeros(2, 20, dtype=torch.bool)
        with torch.no_grad():
            layer = model.head if hasattr(model, "head") else model.post_net
            layer.weight.normal_()
            layer.bias.normal_()
            before = model(x, mask)
            apply_temperature(model, 4.0)
            assert torch.allclose(model(x, mask), before / 4.0, atol=1e-5), recipe

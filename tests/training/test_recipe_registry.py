"""Recipes: a new one is one registration; stats; speaker normalisation; the calibrated protocol; determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from training_helpers import (
    tiny_config,
)

from emoadapt import cli, inference
from emoadapt.errors import EmoadaptError
from emoadapt.modelfolder import load_model
from emoadapt.store.features import FeatureStore
from emoadapt.training.crossval import run_cv
from emoadapt.training.evaluate import evaluate
from emoadapt.training.settings import load_config
from emoadapt.training.stage2 import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


def test_a_new_recipe_is_one_dataclass_one_class_one_registration(data, tmp_path, monkeypatch):
    from dataclasses import dataclass

    from emoadapt.model import RECIPES, register_recipe
    from emoadapt.model.pooling import masked_mean
    from emoadapt.training.settings import validate

    @dataclass
    class MeanConfig:
        input_layers: int = 2
        input_dim: int = 8
        num_classes: int = 4
        layer: int = -1

    class MeanHead(torch.nn.Module):
        def __init__(self, config: MeanConfig):
            super().__init__()
            self.config = config
            self.head = torch.nn.Linear(config.input_dim, config.num_classes)

        def forward(self, hidden_states, padding_mask):
            return self.head(masked_mean(hidden_states[:, self.config.layer], padding_mask))

    monkeypatch.setitem(RECIPES, "mean", None)  # removed again after the test
    register_recipe("mean", MeanConfig, MeanHead)
    assert "mean" in RECIPES and not RECIPES["mean"].uses_adapter and RECIPES["mean"].fit == "gradient"
    with pytest.raises(EmoadaptError, match="recipe 'mean' has no option dim"):
        validate(load_config(None, ["head.dim=3"]), "mean")
    corpus, store = data
    results = finetune(corpus, store, 1, tmp_path, recipe="mean", config=tiny_config("head.layer=0", "stage2.epochs=2"),
                       progress=False)
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded.model, MeanHead) and loaded.model.config.layer == 0
    assert evaluate(tmp_path, corpus, store, 1)["scores"] == results["scores"]


def test_stats_recipe_fits_on_training_speakers_picks_c_on_validation_and_predicts_like_any_model(data, tmp_path):
    corpus, store = data
    results = run_cv(corpus, store, "stats", tmp_path, folds=[1, 2], config=tiny_config("head.c_grid=[0.1,1.0]"),
                     progress=False, log=lambda *_: None)
    assert results["mean_std"]["ua"]["mean"] > 70  # the tones are in the utterance statistics; chance is 25
    fold = json.loads((tmp_path / "fold_1" / "results.json").read_text())
    chosen = fold["closed_form"]
    assert set(chosen["val_ua"]) == {"0.1", "1.0"} and chosen["val_ua"][str(chosen["C"])] == max(chosen["val_ua"].values())
    assert fold["best_val_ua"] == chosen["val_ua"][str(chosen["C"])] and fold["best_epoch"] is None
    loaded = load_model(tmp_path / "fold_1" / "model")  # safetensors + JSON, rebuilt from the registry
    assert type(loaded.model).__name__ == "StatsClassifier" and not (tmp_path / "fold_1" / "checkpoints").exists()
    assert evaluate(tmp_path / "fold_1", corpus, store, 1)["scores"] == fold["scores"]
    seen = json.loads((tmp_path / "fold_1" / "model" / "seen.json").read_text())
    assert len(seen["ids"]) == fold["split"]["train"] + fold["split"]["val"]
    with pytest.raises(EmoadaptError, match="recipe 'stats' has no option projector_dim"):
        finetune(corpus, store, 1, tmp_path / "bad", recipe="stats", config=tiny_config("head.projector_dim=3"))


def test_stats_layer_grid_chooses_the_hidden_states_with_c_and_ignores_the_others(data, tmp_path):
    """head.layer_grid: each set of hidden states is scored with every C on validation, the best kept; the model
    keeps its shape and gives the other layers weight 0, so it saves, loads and predicts like any stats model."""
    corpus, store = data
    num_layers = len(FeatureStore(store).meta["layers"])
    assert num_layers >= 2
    grid = "head.layer_grid=[[0],[1],[0,1]]"
    finetune(corpus, store, 1, tmp_path, recipe="stats", config=tiny_config("head.c_grid=[0.1,1.0]", grid),
             progress=False)
    fold = json.loads((tmp_path / "results.json").read_text())
    chosen = fold["closed_form"]
    assert set(chosen["val_ua_by_layers"]) == {"0", "1", "0,1"} and set(chosen["val_ua"]) == {"0.1", "1.0"}
    key = ",".join(map(str, chosen["layers"]))
    assert chosen["val_ua_by_layers"][key] == max(chosen["val_ua_by_layers"].values()) == fold["best_val_ua"]
    model = load_model(tmp_path / "model").model
    width = model.head.weight.shape[1] // num_layers
    used = [bool(model.head.weight[:, k * width:(k + 1) * width].abs().sum() > 0) for k in range(num_layers)]
    assert used == [k in chosen["layers"] for k in range(num_layers)]
    assert evaluate(tmp_path, corpus, store, 1)["scores"] == fold["scores"]
    with pytest.raises(EmoadaptError, match=r"head.layer_grid .*hidden states 0\.\.1 .*\(5 is not\)"):
        finetune(corpus, store, 1, tmp_path / "bad", recipe="stats", config=tiny_config("head.layer_grid=[[5]]"),
                 progress=False)


def test_speaker_normalisation_uses_each_speakers_own_statistics(data, tmp_path):
    from emoadapt.calibration import calibration_clips, make_normalizer
    from emoadapt.store.features import array_statistics
    from emoadapt.training.stage2 import FoldData
    corpus, store_path = data
    store = FeatureStore(store_path)
    config = tiny_config("normalize=speaker")
    normalizer = make_normalizer(config, corpus, store)
    speaker = corpus.rows[0].speaker
    ids = [u.id for u in corpus.rows if u.speaker == speaker]
    mean, std = array_statistics(normalizer.normalize(store.get(i), i) for i in ids)
    assert np.allclose(mean, 0, atol=1e-4) and np.allclose(std[std > 1e-3], 1, atol=1e-2)  # that speaker: mean 0, std 1
    # a test speaker's statistics come from its calibration clips only: k drawn at random, or those of one label
    calibrated = tiny_config("normalize=speaker", "calibration.clips=2", "calibration.spread=reference",
                             "calibration.remove_emotion=false")
    fold = FoldData(corpus, store, 1, calibrated, corpus.labels, 50.0)
    test_speaker = corpus.folds.group(fold.split["test"][0])
    test_ids = [i for i in fold.split["test"] if corpus.folds.group(i) == test_speaker]
    by_id = {u.id: u for u in corpus.rows}
    chosen = calibration_clips(test_ids, calibrated.calibration, by_id, seed=0, speaker=test_speaker, where=None)
    assert len(chosen) == 2 and set(chosen) <= set(test_ids)
    assert chosen == calibration_clips(test_ids, calibrated.calibration, by_id, seed=0, speaker=test_speaker, where=None)
    expected = normalizer._pair(*array_statistics(store.get(i) for i in chosen))
    assert all(np.allclose(a, b) for a, b in zip(fold.normalizer._by_speaker[test_speaker], expected))
    # by default a test reference keeps the training population's spread: only its mean is the clips'
    default = FoldData(corpus, store, 1, tiny_config("normalize=speaker", "calibration.clips=2"), corpus.labels, 50.0)
    population = default.normalizer._pair(*default.normalizer.population)
    assert np.allclose(default.normalizer._by_speaker[test_speaker][0], expected[0])
    assert np.allclose(default.normalizer._by_speaker[test_speaker][1], population[1])
    train_speaker = corpus.folds.group(fold.split["train"][0])  # training speakers: all of their clips
    assert all(np.allclose(a, b) for a, b in zip(fold.normalizer._by_speaker[train_speaker],
                                                 normalizer._by_speaker[train_speaker]))
    neutral = tiny_config("normalize=speaker", "calibration.only_label=neutral")
    assert all(by_id[i].label == "neutral" for i in calibration_clips(test_ids, neutral.calibration, by_id, seed=0,
                                                                        speaker=test_speaker, where=None))
    with pytest.raises(EmoadaptError, match="has no clip labelled 'calm'"):
        calibration_clips(test_ids, tiny_config("calibration.only_label=calm").calibration, by_id, seed=0,
                          speaker=test_speaker, where=None)
    # apply_to=all: training speakers are normalised by their neutral clips too, like the test speakers
    everyone = tiny_config("normalize=speaker", "calibration.only_label=neutral", "calibration.apply_to=all",
                           "calibration.spread=reference")
    fold_all = FoldData(corpus, store, 1, everyone, corpus.labels, 50.0)
    train_neutral = [u.id for u in corpus.rows if corpus.folds.group(u.id) == train_speaker and u.label == "neutral"]
    expected = normalizer._pair(*array_statistics(store.get(i) for i in train_neutral))
    assert all(np.allclose(a, b) for a, b in zip(fold_all.normalizer._by_speaker[train_speaker], expected))
    # with the population's spread (the default), the training speakers keep it as the test speakers will
    spread = FoldData(corpus, store, 1, tiny_config("normalize=speaker", "calibration.only_label=neutral",
                                                    "calibration.apply_to=all"), corpus.labels, 50.0).normalizer
    assert np.allclose(spread._by_speaker[train_speaker][0], expected[0])
    assert np.allclose(spread._by_speaker[train_speaker][1], spread._pair(*spread.population)[1])
    from emoadapt.training.settings import validate
    with pytest.raises(EmoadaptError, match="calibration.apply_to='some' is out of range"):
        validate(tiny_config("calibration.apply_to=some"))


def test_speaker_calibrated_cv_is_its_own_protocol(data, tmp_path, capsys):
    corpus, store = data
    results = run_cv(corpus, store, "superb", tmp_path / "calibrated", folds=[1],
                     config=tiny_config("normalize=speaker", "calibration.clips=3"), progress=False,
                     log=lambda *_: None)
    assert results["protocol"]["speaker_independent"] is False and results["protocol"]["calibration"]["clips"] == 3
    # evaluate rebuilds the same normalisation from the model's settings: the same scores
    again = evaluate(tmp_path / "calibrated" / "fold_1", corpus, store, 1)
    assert again["scores"]["ua"] == results["folds"]["1"]["ua"] and again["protocol"]["speaker_independent"] is False
    run_cv(corpus, store, "superb", tmp_path / "independent", folds=[1], config=tiny_config(), progress=False,
           log=lambda *_: None)
    assert cli.main(["compare", str(tmp_path / "independent"), str(tmp_path / "calibrated")]) == 0
    out = capsys.readouterr().out
    independent, calibrated = out.split("speaker-calibrated (3 clips of each test speaker, unlabeled audio; the "
                                        "population's spread; its emotion removed):")
    assert "| independent |" in independent and "| calibrated |" in calibrated and "| calibrated |" not in independent
    # a model on speaker-normalised features cannot predict raw waveforms without calibration clips
    with pytest.raises(EmoadaptError, match="speaker-normalised"):
        inference.predict_waveforms(inference.load_classifier(tmp_path / "calibrated" / "fold_1"), [np.zeros(16000)])


def test_same_seed_same_numbers(data, finetuned, tmp_path):
    corpus, store = data
    results, out = finetuned
    again = finetune(corpus, store, 1, tmp_path / "again", config=tiny_config(), progress=False)
    finetune(corpus, store, 1, tmp_path / "other", config=tiny_config("seed=1"), progress=False)
    sha = lambda folder: json.loads((folder / "model" / "model.json").read_text())["sha256"]  # noqa: E731
    assert sha(tmp_path / "again") == sha(out) and again["scores"] == results["scores"]
    assert (tmp_path / "again" / "logs" / "metrics.csv").read_text() == (out / "logs" / "metrics.csv").read_text()
    assert sha(tmp_path / "other") != sha(out)



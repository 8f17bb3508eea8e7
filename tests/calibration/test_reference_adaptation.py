"""Adaptation from a target's unlabeled audio: references shrunk toward the training population, the population
statistics a speaker model keeps (and their checks), and the Recognizer's adapt() with its warnings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from emoadapt.calibration import shrunk
from emoadapt.errors import CheckpointError
from emoadapt.store.features import array_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_shrunk_reference_mixes_moments_by_its_size():
    rng = np.random.default_rng(0)
    reference_frames = rng.normal(2.0, 1.0, (2, 400, 3))
    population_frames = rng.normal(-1.0, 3.0, (2, 400, 3))
    reference, population = array_statistics([reference_frames]), array_statistics([population_frames])
    same, weight = shrunk(reference, population, clips=7, tau=0)
    assert weight == 1.0 and same is reference
    (mean, std), weight = shrunk(reference, population, clips=5, tau=5)  # half and half
    mixture = array_statistics([np.concatenate([reference_frames, population_frames], axis=1)])
    assert weight == 0.5 and np.allclose(mean, mixture[0]) and np.allclose(std, mixture[1])
    _, weight = shrunk(reference, population, clips=45, tau=5)
    assert weight == pytest.approx(0.9)


def test_a_speaker_model_keeps_its_population_statistics_and_they_are_checked(trained, tmp_path):
    import shutil

    from emoadapt import Recognizer
    corpus, store, models, encoder = trained
    info = json.loads((models["speaker"] / "model.json").read_text())
    assert info["reference"]["file"] == "reference.safetensors" and info["reference"]["shape"] == [5, 384]
    assert not (models["global"] / "reference.safetensors").exists()
    recognizer = Recognizer.from_pretrained(models["speaker"], encoder=encoder)
    clip = [u for u in corpus.rows if u.speaker == "Actor_11"][0].path
    result = recognizer.predict(clip)
    assert result.normalization == "speaker (no reference: the training population's statistics)"
    assert result.reference is None

    copy = tmp_path / "model"
    shutil.copytree(models["speaker"], copy)
    (copy / "reference.safetensors").write_bytes((copy / "reference.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        Recognizer.from_pretrained(copy, encoder=encoder)
    (copy / "reference.safetensors").unlink()
    with pytest.raises(CheckpointError, match="reference.safetensors is missing"):
        Recognizer.from_pretrained(copy, encoder=encoder)
    info["reference"]["file"] = "../elsewhere.safetensors"
    (copy / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="must name reference.safetensors"):
        Recognizer.from_pretrained(copy, encoder=encoder)


def test_adapt_reports_the_reference_and_warns_when_it_looks_one_sided(trained):
    from emoadapt import Recognizer
    corpus, _, models, encoder = trained
    recognizer = Recognizer.from_pretrained(models["speaker"], encoder=encoder)
    speaker = [u for u in corpus.rows if u.speaker == "Actor_11"]
    angry = [u.path for u in corpus.rows if u.label == "angry"][:6]  # one emotion (each emotion is its own tone)
    with pytest.warns(UserWarning, match="looks one-sided: .* 6 of 6 as angry"):
        recognizer.adapt(angry)
    assert any("one-sided" in w for w in recognizer.predict(speaker[0].path).warnings)
    with pytest.warns(UserWarning) as caught:
        recognizer.adapt([u.path for u in speaker])
    assert not any("one-sided" in str(w.message) for w in caught)  # 8 clips of 4 emotions: only "small"
    result = recognizer.predict(speaker[0].path)
    removed = result.reference.pop("emotion_removed")
    assert result.reference == {"clips": 8, "weight": 1.0, "shrink": 0.0, "balance": 1.0, "spread": "population"}
    assert len(removed) == 4 and max(abs(x) for x in removed) < 0.1  # 2 clips of each emotion: about the prior
    assert "population spread; its emotion removed" in result.normalization
    assert not any("one-sided" in w for w in result.warnings)
    with pytest.warns(UserWarning, match="looks one-sided: .* taken out of it, but only as well as the model hears"):
        recognizer.adapt(angry)
    removed = recognizer.predict(speaker[0].path).reference["emotion_removed"]
    angry_index = recognizer.labels.index("angry")
    assert removed[angry_index] > 0.5 and all(x < 0 for k, x in enumerate(removed) if k != angry_index)


def test_a_reference_keeps_the_population_spread_and_loses_the_emotion_it_holds():
    from emoadapt.calibration import CalibrationConfig, ClassOffsets, reference_statistics
    rng = np.random.default_rng(1)
    offsets = ClassOffsets(rng.normal(0, 1, (3, 2, 4)), np.array([0.5, 0.25, 0.25]))
    voice, spread = rng.normal(0, 1, (2, 4)), np.full((2, 4), 2.0)
    population = (np.zeros((2, 4)), np.full((2, 4), 3.0))
    # the clips' model reading: every clip of class 1; their frames: the voice, moved by class 1's offset
    without = np.tile([0.0, 1.0, 0.0], (6, 1))
    raw = (voice + spread * offsets.offsets[1], np.full((2, 4), 0.5))  # one emotion: too narrow a spread
    (mean, std), weight, done = reference_statistics(raw, population, 6, CalibrationConfig(), without, offsets)
    assert weight == 1.0 and done["spread"] == "population" and done["emotion_removed"] == [-0.5, 0.75, -0.25]
    assert np.allclose(std, population[1])
    # what the speaker's mean would be over clips spread like the prior (in units of the population's spread)
    expected = voice + spread * offsets.offsets[1] - population[1] * ((without.mean(0) - offsets.prior) @
                                                                     offsets.offsets.reshape(3, -1)).reshape(2, 4)
    assert np.allclose(mean, expected)
    own = CalibrationConfig(spread="reference", remove_emotion=False)
    (mean, std), _, done = reference_statistics(raw, population, 6, own, without, offsets)
    assert mean is raw[0] and std is raw[1] and done["emotion_removed"] is None


def test_class_offsets_are_each_class_mean_in_units_of_its_speaker_and_zero_for_a_class_never_heard():
    from emoadapt.calibration import Normalizer, class_offsets

    class Store(dict):
        def get(self, key):
            return self[key]
    rng = np.random.default_rng(2)
    voices = {"s1": (rng.normal(0, 1, (2, 1, 3)), 2.0), "s2": (rng.normal(0, 1, (2, 1, 3)), 0.5)}
    shift = {"angry": 1.0, "sad": -1.0}
    store, label_of, speaker_of = Store(), {}, {}
    for speaker, (voice, scale) in voices.items():
        for k, label in enumerate(["angry", "sad"] * 2):
            store[f"{speaker}-{k}"] = voice + scale * (shift[label] + rng.normal(0, 0.01, (2, 50, 3)))
            label_of[f"{speaker}-{k}"], speaker_of[f"{speaker}-{k}"] = label, speaker
    statistics = {s: array_statistics([store[i] for i in store if speaker_of[i] == s]) for s in voices}
    normalizer = Normalizer("speaker", speaker_of, statistics)
    found = class_offsets(normalizer, store, list(store), label_of, ["angry", "neutral", "sad"])
    assert np.allclose(found.prior, [0.5, 0.0, 0.5])
    # each speaker's clips sit one std above (angry) or below (sad) their own mean, whatever the speaker's scale
    assert np.allclose(found.offsets[0], 1.0, atol=0.02) and np.allclose(found.offsets[2], -1.0, atol=0.02)
    assert not found.offsets[1].any()
    assert class_offsets(Normalizer("speaker", {}, {}), store, list(store), label_of, ["angry", "sad"]) is None


def test_a_speaker_model_keeps_its_class_offsets_and_an_older_one_makes_references_as_before(trained, tmp_path):
    import shutil

    from emoadapt import Recognizer
    from emoadapt.modelfolder.reference import read_reference
    corpus, store, models, encoder = trained
    info = json.loads((models["speaker"] / "model.json").read_text())
    _, offsets = read_reference(models["speaker"], info)
    assert info["reference"]["class_offsets"] is True
    assert offsets.offsets.shape == (4, 5, 384) and offsets.prior.sum() == pytest.approx(1.0, abs=1e-5)
    angry = info["labels"].index("angry")
    assert np.abs(offsets.offsets[angry]).mean() > 0.1  # the tones differ: each class moves the features
    copy = tmp_path / "older"
    shutil.copytree(models["speaker"], copy)
    for key in ("spread", "remove_emotion"):  # what a model.json written before these settings holds
        del info["config"]["calibration"][key]
    (copy / "model.json").write_text(json.dumps(info))
    recognizer = Recognizer.from_pretrained(copy, encoder=encoder)
    assert recognizer.calibration.spread == "reference" and recognizer.calibration.remove_emotion is False
    with pytest.warns(UserWarning):
        recognizer.adapt([u.path for u in corpus.rows if u.label == "angry"][:6])
    assert recognizer.reference["emotion_removed"] is None and recognizer.reference["spread"] == "reference"


def test_cv_shrinks_test_references_and_training_speakers_apart_and_records_the_weights(trained):
    from emoadapt.calibration import make_normalizer
    from emoadapt.store import FeatureStore
    from emoadapt.training.settings import config_from_record, load_config
    corpus, store, _, _ = trained
    store = FeatureStore(store)
    test = [u.id for u in corpus.rows if u.speaker in ("Actor_01", "Actor_11")]
    config = load_config(None, ["normalize=speaker", "calibration.shrink=8", "calibration.clips=2"])
    normalizer = make_normalizer(config, corpus, store, test_ids=test)
    assert normalizer.weights["Actor_01"] == pytest.approx(2 / 10)    # a test speaker: 2 clips drawn
    assert normalizer.weights["Actor_02"] == 1.0    # a training speaker: how references are read leaves it alone
    config = load_config(None, ["normalize=speaker", "calibration.train_shrink=8"])
    assert make_normalizer(config, corpus, store, test_ids=test).weights["Actor_02"] == pytest.approx(8 / 16)
    # a run recorded before train_shrink shrank its training speakers by shrink: re-read, it still does
    older = {k: v for k, v in config.to_dict()["calibration"].items() if k != "train_shrink"} | {"shrink": 8}
    assert config_from_record({"calibration": older}, where="old run").calibration.train_shrink == 8
    whole = make_normalizer(load_config(None, ["normalize=speaker", "calibration.scope=corpus"]), corpus, store,
                            test_ids=test)
    assert set(whole.weights) >= {"test set"} and "Actor_01" not in whole.weights
    assert whole.speaker_of[test[0]] == whole.speaker_of[test[-1]] == "test set"


def test_balance_weighs_a_one_sided_reference_down(trained):
    from emoadapt.calibration import balance_of
    from emoadapt.store import FeatureStore
    from emoadapt.training.evaluate import evaluate
    assert balance_of(np.full((4, 4), 0.25)) == pytest.approx(1.0)
    assert balance_of(np.eye(4)[[0, 0, 0]]) < 0.01 and 0.4 < balance_of(np.eye(4)[[0, 0, 1, 1]]) < 0.6
    corpus, store, models, _ = trained
    evaluated = {}
    for label in ("angry", None):
        reference = {"balance": True, "shrink": 0} | ({"only_label": label} if label else {})
        evaluated[label] = evaluate(models["speaker"], corpus, FeatureStore(store), fold=1, reference=reference,
                                    out=str(models["speaker"].parent / f"balance-{label}.json"))["reference_weight"]
    assert evaluated["angry"]["max"] < 0.2 < 0.6 < evaluated[None]["min"]  # one emotion: little weight; all: most


def test_evaluate_command_measures_a_reference_condition_and_refuses_global_models(trained, tmp_path, capsys):
    from emoadapt import cli
    corpus, store, models, _ = trained
    common = ["--corpus", str(corpus.root), "--view", "4class", "--store", str(store), "--fold", "1"]
    code = cli.main(["evaluate", "--model", str(models["speaker"]), *common, "--reference", "speaker",
                     "--reference-clips", "2", "--shrink", "4", "--out", str(tmp_path / "k2.json")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "k2.json").read_text())
    assert result["reference_weight"]["mean"] == pytest.approx(2 / 6)
    assert result["protocol"]["calibration"]["clips"] == 2 and result["protocol"]["calibration"]["shrink"] == 4
    assert result["protocol"]["calibration"]["spread"] == "population"  # the model's default
    code = cli.main(["evaluate", "--model", str(models["speaker"]), *common, "--reference", "speaker",
                     "--spread", "reference", "--remove-emotion", "no", "--out", str(tmp_path / "own.json")])
    assert code == 0, capsys.readouterr().err
    own = json.loads((tmp_path / "own.json").read_text())["protocol"]["calibration"]
    assert own["spread"] == "reference" and own["remove_emotion"] is False
    with pytest.raises(SystemExit) as stopped:
        cli.main(["evaluate", "--model", str(models["speaker"]), *common, "--remove-emotion", "maybe"])
    assert stopped.value.code == 2 and "'maybe': give yes or no" in capsys.readouterr().err
    code = cli.main(["evaluate", "--model", str(models["global"]), *common, "--reference", "corpus"])
    assert code == 2 and "reference settings do not apply" in capsys.readouterr().err

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
    assert result.reference == {"clips": 8, "weight": 1.0, "shrink": 0.0, "balance": 1.0}
    assert not any("one-sided" in w for w in result.warnings)


def test_cv_shrinks_test_references_and_records_the_weights(trained):
    from emoadapt.calibration import make_normalizer
    from emoadapt.store import FeatureStore
    from emoadapt.training.settings import load_config
    corpus, store, _, _ = trained
    store = FeatureStore(store)
    test = [u.id for u in corpus.rows if u.speaker in ("Actor_01", "Actor_11")]
    config = load_config(None, ["normalize=speaker", "calibration.shrink=8", "calibration.clips=2"])
    normalizer = make_normalizer(config, corpus, store, test_ids=test)
    assert normalizer.weights["Actor_01"] == pytest.approx(2 / 10)    # a test speaker: 2 clips drawn
    assert normalizer.weights["Actor_02"] == pytest.approx(8 / 16)    # a training speaker: all 8 of its clips
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
    code = cli.main(["evaluate", "--model", str(models["global"]), *common, "--reference", "corpus"])
    assert code == 2 and "reference settings do not apply" in capsys.readouterr().err

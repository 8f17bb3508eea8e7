"""Stage 2: fine-tuning learns, early stopping, model folders and waveforms give the stored features' probabilities."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_safetensors
from training_helpers import (
    ToneEncoder,
    _encoder_of,
    _stage1_folder,
    tiny_config,
    validation_curve,
)

from emoadapt import cli, inference
from emoadapt.calibration.temperature import apply_temperature
from emoadapt.errors import CheckpointError, EmoadaptError
from emoadapt.model import build_model
from emoadapt.modelfolder import load_model
from emoadapt.store.dataset import collate
from emoadapt.store.features import FeatureStore, frame_statistics
from emoadapt.training import data as data_module
from emoadapt.training.checkpoint_io import (
    load_checkpoint_file,
)
from emoadapt.training.evaluate import evaluate
from emoadapt.training.stage2 import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


def test_finetune_learns_the_tones(finetuned):
    results, out = finetuned
    assert results["scores"]["ua"] > 70, results["scores"]  # chance is 25
    val_ua = validation_curve(out)
    assert len(val_ua) == 6 == results["epochs_run"]
    # the chosen checkpoint is the epoch with the best validation UA in the logs (the first of equals)
    assert results["best_epoch"] == int(np.argmax(val_ua)) and results["best_val_ua"] == pytest.approx(max(val_ua))
    assert results["split"]["test"] == 20 and results["split"]["val"] > 0
    speakers = results["speakers"]
    assert not set(speakers["val"]) & set(speakers["train"]) and all(s.startswith("Ses01") for s in speakers["test"])
    assert {"model", "checkpoints", "logs", "predictions.csv", "results.json", "config.json"} <= \
        {p.name for p in out.iterdir()}


def test_finetune_in_bf16_with_length_buckets_learns_and_saves_fp32(data, tmp_path):
    """The faster settings (docs/RESULTS.md, bench/train.py): bf16 autocast and batches bucketed by length."""
    corpus, store = data
    results = finetune(corpus, store, 1, tmp_path, progress=False,
                       config=tiny_config("trainer.precision=bf16-mixed", "stage2.bucket_by_length=true"))
    assert results["scores"]["ua"] > 70, results["scores"]
    weights = load_safetensors(tmp_path / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())



def test_early_stopping_stops_after_patience_epochs_without_a_better_validation_ua(data, tmp_path):
    corpus, store = data
    # a learning rate too small to change any prediction: validation UA stays flat, so patience 2 ends the run at
    # epoch 2 (epochs 1 and 2 are no better than epoch 0), and the checkpoint is epoch 0's
    config = tiny_config("stage2.patience=2", "stage2.lr=1e-9", "stage2.head_lr=1e-9", "stage2.epochs=6")
    results = finetune(corpus, store, 1, tmp_path, config=config, progress=False)
    val_ua = validation_curve(tmp_path)
    assert len(set(val_ua)) == 1 and len(val_ua) == 3 and results["best_epoch"] == 0
    free = finetune(corpus, store, 1, tmp_path / "no-patience", config=tiny_config("stage2.lr=1e-9",
                    "stage2.head_lr=1e-9", "stage2.epochs=4"), progress=False)
    assert len(validation_curve(tmp_path / "no-patience")) == 4 and free["best_epoch"] == 0
    # killed after early stopping ended the run, before its results were written: the re-run stays stopped
    shutil.rmtree(tmp_path / "model")
    (tmp_path / "results.json").unlink()
    again = finetune(corpus, store, 1, tmp_path, config=config, progress=False)
    assert again["epochs_run"] == results["epochs_run"] == 3 and again["scores"] == results["scores"]


def test_model_folder_round_trip_gives_identical_predictions(data, finetuned):
    corpus, store_path = data
    results, out = finetuned
    loaded = load_model(out / "model")
    info = json.loads((out / "model" / "model.json").read_text())
    assert info["labels"] == corpus.labels and info["encoder"]["fingerprint"] == FeatureStore(store_path).meta["fingerprint"]
    # the exported weights are the best-validation checkpoint's, rebuilt from JSON alone
    best = load_checkpoint_file(out / "checkpoints" / "best.ckpt")
    assert best["epoch"] == results["best_epoch"]
    b = info["build"]
    fresh = build_model(b["recipe"], b["input_layers"], b["input_dim"], b["num_classes"], **b["options"]).eval()
    fresh.load_state_dict({k[len("model."):]: v for k, v in best["state_dict"].items()})
    assert info["temperature"]["T"] == results["temperature"]["T"] > 0  # fitted on the validation speakers
    apply_temperature(fresh, results["temperature"]["T"])  # folded into the head's last layer
    store = FeatureStore(store_path)
    dataset = data_module.labelled_dataset(corpus, store, store.ids()[:16], corpus.labels)
    batch = collate([dataset[i] for i in range(16)])
    with torch.no_grad():
        assert torch.equal(loaded.model(batch["hidden_states"], batch["padding_mask"]),
                           fresh(batch["hidden_states"], batch["padding_mask"]))
    # the input standardisation was fitted on the fold's training frames and travels with the model
    train_ids = data_module.split_fold(corpus, store, 1, tiny_config())["train"]
    assert len(train_ids) == results["split"]["train"]
    mean, std = frame_statistics((store, i) for i in train_ids)
    assert torch.allclose(loaded.model.adapter.standardize.mean, torch.as_tensor(mean, dtype=torch.float32))
    assert torch.allclose(loaded.model.adapter.standardize.inv_std,
                          torch.as_tensor(1 / np.sqrt(std ** 2 + 1e-5), dtype=torch.float32))
    # evaluate() on the same fold reproduces the test scores finetune wrote
    again = evaluate(out, corpus, store, 1)
    assert again["scores"] == results["scores"] and Path(again["path"]).is_file()

    tampered = out / "tampered"
    tampered.mkdir()
    for name in ("model.json", "model.safetensors"):
        (tampered / name).write_bytes((out / "model" / name).read_bytes())
    (tampered / "model.safetensors").write_bytes((tampered / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(tampered)


def test_waveforms_get_the_probabilities_of_their_stored_features(data, finetuned):
    from emoadapt.audio import load_audio
    corpus, store_path = data
    results, out = finetuned
    store, loaded = FeatureStore(store_path), inference.load_classifier(out)
    rows = corpus.rows[:6]
    stored = inference.predict(loaded.model, data_module.labelled_dataset(corpus, store, [r.id for r in rows],
                                                                          corpus.labels), batch_size=4)
    waves = [load_audio(r.path) for r in rows]
    encoder = _encoder_of(store_path)
    from_audio = inference.predict_waveforms(loaded, waves, encoder=encoder, batch_size=4)
    assert from_audio.shape == (6, 4) and np.allclose(from_audio, stored, atol=1e-5)
    if not isinstance(encoder, ToneEncoder):  # the model names its encoder: loaded from model.json by default
        assert np.allclose(inference.predict_waveforms(loaded, waves[:2]), stored[:2], atol=1e-5)
        with pytest.raises(EmoadaptError, match="trained on features of"):
            inference.predict_waveforms(loaded, waves[:1], encoder=ToneEncoder())
    with pytest.raises(CheckpointError, match="not a classifier"):
        inference.load_classifier(_stage1_folder(out.parent))
    # an utterance-normalised model normalises the waveform's features the same way
    per_utterance = out.parent / "per-utterance"
    args = cli.build_parser().parse_args(["finetune", "--corpus", "c", "--store", "s", "--fold", "1", "--out", "o",
                                          "--normalize", "utterance"])
    assert cli.commands._run_config(args).normalize == "utterance"
    finetune(corpus, store_path, 1, per_utterance, config=tiny_config("normalize=utterance", "stage2.epochs=1"),
             progress=False)
    loaded = inference.load_classifier(per_utterance)
    from emoadapt.calibration import make_normalizer
    dataset = data_module.labelled_dataset(corpus, store, [r.id for r in rows], corpus.labels,
                                           normalizer=make_normalizer(tiny_config("normalize=utterance"), corpus, store))
    stored = inference.predict(loaded.model, dataset, batch_size=4)
    assert np.allclose(inference.predict_waveforms(loaded, waves, encoder=encoder, batch_size=4), stored, atol=1e-5)



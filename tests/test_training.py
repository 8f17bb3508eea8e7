"""Training on cached features: data, stage 1, stage 2, checkpoints without pickle, resume, determinism, CV, CLI,
DDP. Everything runs on a tiny IEMOCAP-shaped fixture whose clips carry emotion-dependent tones, encoded once per
module by the real Whisper tiny.en encoder (two hidden states, 384-d), with tiny models (d = 32) on one thread."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from safetensors.torch import load_file as load_safetensors

from corpus_fixtures import make_iemocap, make_ravdess
from emoadapt import cli, inference
from emoadapt.training import crossval, stage2, trainer
from emoadapt.training import data as data_module
from emoadapt.training.evaluate import evaluate
from emoadapt.errors import CheckpointError
from emoadapt.modelfolder import load_model
from emoadapt.training.checkpoint_io import SafetensorsCheckpointIO, load_checkpoint_file, save_checkpoint_file
from emoadapt.corpora import load_corpus
from emoadapt.errors import EmoadaptError, LeakageError, StoreMismatch
from emoadapt.store.extract import extract
from emoadapt.store.features import FeatureStore, frame_statistics
from emoadapt.training.metrics import score
from emoadapt.model import StatsConfig, build_model
from emoadapt.training.settings import RunConfig, load_config
from emoadapt.training.crossval import run_cv
from emoadapt.store.dataset import FeatureDataset, collate
from emoadapt.training.data import ShuffleSampler
from emoadapt.training.stage1 import pretrain
from emoadapt.training.stage2 import finetune
from emoadapt.training.trainer import steps_per_epoch

from conftest import TINY


def tiny_config(*more: str) -> RunConfig:
    return load_config(None, [*TINY, *more])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


class ToneEncoder:
    """Stand-in when the Whisper tiny.en wheel is absent: log band energies of 20 ms frames (2 hidden states)."""
    name, num_layers, dim, frame_rate, min_samples = "tone", 1, 32, 50.0, 320
    options, fingerprint = {}, "tone-v1"

    def num_frames(self, n):
        return n // 320

    def encode(self, waveforms):
        out = []
        for w in waveforms:
            w = torch.as_tensor(np.asarray(w, dtype=np.float32))
            frames = w[: len(w) // 320 * 320].reshape(-1, 320)
            bands = torch.fft.rfft(frames).abs()[:, 1:161].reshape(-1, 32, 5).sum(-1)
            x = torch.log1p(bands)
            out.append(torch.stack([x, x.roll(1, 0)]))
        return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(corpus, store path): 5 sessions x 20 utterances of 0.4-1.0 s, 4 classes; fold k = session k."""
    root = tmp_path_factory.mktemp("training")
    corpus = load_corpus(make_iemocap(root / "iemocap", utts_per_session=20, seconds=(0.4, 1.0)))
    try:
        from emoadapt.encoders import load_encoder
        encoder, layers = load_encoder("whisper-tiny.en"), [2, 4]
    except EmoadaptError:
        encoder, layers = ToneEncoder(), None
    extract(corpus.rows, encoder, root / "store", layers=layers, progress=False)
    return corpus, root / "store"


def state_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# --- configuration ----------------------------------------------------------------------------------------------
def test_config_file_then_flags_then_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\nstage2:\n  lr: 2.0e-4\n  epochs: 7\npretrain:\n  mask_weight: 0.5\n"
                    "head:\n  attention_dim: 64\n")
    config = load_config(path, ["stage2.lr=3e-4", "pretrain.short_crop_frames=[20,40]", "stage2.patience=5",
                                "trainer.devices=2", "adapter.input_layer=null"])
    assert config.seed == 3 and config.stage2.epochs == 7
    assert config.stage2.lr == pytest.approx(3e-4) and isinstance(config.stage2.lr, float)  # "3e-4" is YAML text
    assert config.pretrain.mask_weight == 0.5 and config.pretrain.short_crop_frames == (20, 40)
    assert config.stage2.patience == 5 and config.trainer.devices == 2 and config.adapter.input_layer is None
    assert config.head == {"attention_dim": 64}
    assert RunConfig().stage2.lr == 1e-4 and RunConfig().stage2.epochs == 40  # docs/METHOD.md defaults untouched
    # a run folder's config.json is itself a valid --config
    (tmp_path / "config.json").write_text(json.dumps({"stage": "cv", "config": config.to_dict()}))
    assert load_config(tmp_path / "config.json") == config

    with pytest.raises(EmoadaptError, match="unknown setting 'stage2.lrr'; known settings there: batch_size"):
        load_config(None, ["stage2.lrr=1"])
    with pytest.raises(EmoadaptError, match="stage2.epochs: Value 'many'.*Integer"):
        load_config(None, ["stage2.epochs=many"])
    with pytest.raises(EmoadaptError, match="section.key=value"):
        load_config(None, ["stage2.epochs"])
    with pytest.raises(EmoadaptError, match=r"short_crop_frames.*\[20,40\]"):
        load_config(None, ["pretrain.short_crop_frames=[1,2,3]"])


def test_config_files_inherit(tmp_path):
    cpu, demo = load_config("cpu"), load_config("demo-cpu")
    packaged = Path(__import__("emoadapt").__file__).parent / "training" / "configs"
    assert json.loads((packaged / "demo-cpu.json").read_text())["extends"] == "cpu"
    assert demo.adapter == cpu.adapter and demo.stage2.lr == cpu.stage2.lr == 3e-4  # inherited from cpu
    assert (demo.pretrain.epochs, demo.stage2.epochs) == (3, 8) and (cpu.pretrain.epochs, cpu.stage2.epochs) == (8, 10)
    assert cpu.seed == RunConfig().seed and cpu.stage2.head_lr == RunConfig().stage2.head_lr  # cpu extends the defaults
    (tmp_path / "mine.yaml").write_text("extends: demo-cpu\nstage2:\n  epochs: 2\n")
    (tmp_path / "child.json").write_text(json.dumps({"extends": "mine.yaml", "seed": 5}))  # relative to the file
    child = load_config(tmp_path / "child.json", ["stage2.lr=1e-3"])
    assert (child.seed, child.stage2.epochs, child.pretrain.epochs, child.stage2.lr) == (5, 2, 3, 1e-3)
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json"}))
    with pytest.raises(EmoadaptError, match="in a loop"):
        load_config(tmp_path / "a.json")
    (tmp_path / "bad.json").write_text(json.dumps({"stage2": {"epochs": "many"}}))
    with pytest.raises(EmoadaptError, match=r"bad.json: stage2.epochs"):
        load_config(tmp_path / "bad.json")


def test_head_settings_are_typed_by_the_recipe():
    from emoadapt.training.settings import recipe_options, validate
    config = load_config(None, ["head.projector_dim=64"])
    validate(config, "superb")
    assert recipe_options(config, "superb") == {"projector_dim": 64}
    with pytest.raises(EmoadaptError, match="recipe 'adapter' has no option projector_dim; its options are "
                                            "attention_dim, channel_mask_prob, channel_mask_span, head_dropout"):
        validate(config, "adapter")
    with pytest.raises(EmoadaptError, match="head.projector_dim"):
        validate(load_config(None, ["head.projector_dim=wide"]), "superb")
    with pytest.raises(EmoadaptError, match="invalid model settings"):
        validate(load_config(None, ["adapter.dim=30", "adapter.num_heads=4"]), "adapter")
    assert "dim" in recipe_options(load_config(None), "adapter")  # the adapter's settings travel with its recipe


@pytest.mark.parametrize("bad, message", [("trainer.precision=bogus", "trainer.precision='bogus'"),
                                          ("stage2.batch_size=0", "stage2.batch_size=0 is out of range"),
                                          ("head.attention_dim=big", "head.attention_dim"),
                                          ("trainer.accelerator=gpu", "refused")])
def test_bad_settings_are_refused_before_the_run_folder_is_written(data, tmp_path, bad, message):
    corpus, store = data
    with pytest.raises(EmoadaptError, match=message):
        finetune(corpus, store, 1, tmp_path / "run", config=tiny_config(bad), progress=False)
    assert not (tmp_path / "run").exists()  # so the corrected command starts cleanly


# --- data ---------------------------------------------------------------------------------------------------------
def test_dataset_reads_one_utterance_at_a_time_and_crops(data):
    corpus, store_path = data
    store = FeatureStore(store_path)
    ids = store.ids()[:12]
    dataset = FeatureDataset([store], [(0, i, k % 4) for k, i in enumerate(ids)], max_frames=10)
    shards = sum(p.stat().st_size for p in store.shard_dir.glob("*.npy"))
    assert len(pickle.dumps(dataset)) < shards / 50  # ids and the store's index only: no frames held in memory

    whole = dataset[3]
    T = store.num_frames(ids[3])
    assert whole["hidden_states"].dtype == torch.float32 and whole["hidden_states"].shape[1] == T > 10
    np.testing.assert_array_equal(whole["hidden_states"].numpy(), store.get(ids[3]).astype(np.float32))
    crop = dataset[(3, 12345)]["hidden_states"]
    assert crop.shape[1] == 10 and torch.equal(crop, dataset[(3, 12345)]["hidden_states"])  # draw fixes the crop
    starts = {int((whole["hidden_states"][0, :, 0] == dataset[(3, d)]["hidden_states"][0, 0, 0]).nonzero()[0])
              for d in range(20)}
    assert len(starts) > 3  # different draws, different positions

    batch = collate([dataset[0], dataset[(1, 7)], dataset[2]])
    lengths = batch["lengths"].tolist()
    assert batch["hidden_states"].shape[:3] == (3, 2, max(lengths))
    assert batch["padding_mask"].sum(1).tolist() == [max(lengths) - n for n in lengths]
    assert float(batch["hidden_states"][batch["padding_mask"][:, None, :, None].expand_as(batch["hidden_states"])]
                 .abs().sum()) == 0.0
    assert batch["labels"].tolist() == [0, 1, 2]


def test_shuffle_sampler_fixed_by_seed_and_epoch_and_sharded(monkeypatch):
    sampler = ShuffleSampler(10, seed=1)
    first = list(sampler)
    assert first == list(ShuffleSampler(10, seed=1)) and sorted(i for i, _ in first) == list(range(10))
    sampler.set_epoch(1)
    assert list(sampler) != first
    shards = []
    for rank in range(3):  # under DDP every rank takes its share of the same order, padded to equal length
        monkeypatch.setattr(data_module, "_rank_and_world", lambda rank=rank: (rank, 3))
        shards.append(list(ShuffleSampler(10, seed=1)))
    assert [len(s) for s in shards] == [4, 4, 4] and {i for s in shards for i, _ in s} == set(range(10))


def test_length_buckets_see_every_utterance_once_with_less_padding(monkeypatch):
    lengths = np.random.default_rng(0).integers(20, 400, size=203).tolist()
    buckets = data_module.LengthBuckets(lengths, batch_size=8, seed=3, pool_batches=5)
    epoch0 = list(buckets)
    assert len(epoch0) == len(buckets) == math.ceil(203 / 8) and epoch0 == list(buckets)  # fixed by seed and epoch
    assert sorted(i for batch in epoch0 for i, _ in batch) == list(range(203))
    plain = list(ShuffleSampler(203, seed=3))
    assert sorted(draw for batch in epoch0 for _, draw in batch) == sorted(d for _, d in plain)  # same crops
    padding = lambda batches: sum(max(lengths[i] for i, _ in b) * len(b) - sum(lengths[i] for i, _ in b)  # noqa: E731
                                  for b in batches)
    assert padding(epoch0) < 0.5 * padding([plain[k: k + 8] for k in range(0, 203, 8)])
    buckets.sampler.set_epoch(1)  # what Lightning calls, through .sampler
    assert list(buckets) != epoch0
    shards = []
    for rank in range(2):
        monkeypatch.setattr(data_module, "_rank_and_world", lambda rank=rank: (rank, 2))
        shards.append(list(data_module.LengthBuckets(lengths, batch_size=8, seed=3)))
    assert len(shards[0]) == len(shards[1]) == steps_per_epoch(203, 8, 2)
    assert {i for s in shards for b in s for i, _ in b} == set(range(203))


# --- checkpoints without pickle -----------------------------------------------------------------------------------
def test_checkpoint_file_round_trip_is_exact(tmp_path):
    rng = np.random.RandomState(5)
    rng.rand(3)
    import random
    checkpoint = {
        "state_dict": {"a.weight": torch.randn(3, 4), "flag": torch.tensor(True), "bf16": torch.ones(2).bfloat16()},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                              "param_groups": [{"params": [0, 1], "betas": (0.9, 0.999), "lr": 1e-4, "fused": None}]}],
        "epoch": 2, "odd": {"nan": float("nan"), "inf": float("-inf"), "np": np.float32(1.5), "path": Path("/x")},
        "rng": {"numpy": rng.get_state(), "python": random.Random(3).getstate(), "torch": torch.get_rng_state()},
        "__tensor__": "a key that looks like a tag",
    }
    path = save_checkpoint_file(checkpoint, tmp_path / "last.ckpt")
    back = load_checkpoint_file(path)
    assert torch.equal(back["state_dict"]["a.weight"], checkpoint["state_dict"]["a.weight"])
    assert back["state_dict"]["bf16"].dtype == torch.bfloat16 and back["state_dict"]["flag"].item() is True
    assert list(back["optimizer_states"][0]["state"]) == [0]  # int keys stay ints (optimizers index by them)
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert np.isnan(back["odd"]["nan"]) and back["odd"]["inf"] == float("-inf") and back["odd"]["path"] == "/x"
    restored = np.random.RandomState()
    restored.set_state(back["rng"]["numpy"])
    assert restored.rand() == rng.rand()
    r = random.Random()
    r.setstate(back["rng"]["python"])
    assert r.random() == random.Random(3).random()
    assert back["__tensor__"] == "a key that looks like a tag"
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed, not left behind

    with pytest.raises(CheckpointError, match="at odd/obj"):
        save_checkpoint_file({"odd": {"obj": object()}}, tmp_path / "bad.ckpt")
    torch.save({"x": 1}, tmp_path / "pickled.ckpt")  # Lightning's default format is refused, never unpickled
    with pytest.raises(CheckpointError, match="unreadable checkpoint|not an emoadapt"):
        load_checkpoint_file(tmp_path / "pickled.ckpt")
    io = SafetensorsCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.ones(2)}, tmp_path / "io.ckpt")
    assert io.load_checkpoint(tmp_path / "io.ckpt")["epoch"] == 1
    io.remove_checkpoint(tmp_path / "io.ckpt")
    assert not (tmp_path / "io.ckpt").exists()


# --- stage 2 ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetuned(data, tmp_path_factory):
    corpus, store = data
    out = tmp_path_factory.mktemp("finetune")
    return finetune(corpus, store, 1, out, config=tiny_config(), progress=False), out


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


def validation_curve(run: Path) -> list[float]:
    """Validation UA per epoch, from the run's Lightning CSV log."""
    import csv
    with open(run / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_ua")]
    assert [int(r["epoch"]) for r in rows] == list(range(len(rows)))
    return [float(r["val_ua"]) for r in rows]


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


def _stage1_folder(where: Path) -> Path:
    folder = where / "an-adapter"
    if not (folder / "model.json").is_file():
        from emoadapt.modelfolder import save_adapter
        from emoadapt.model import AdapterConfig, WAPTransformer
        save_adapter(WAPTransformer(AdapterConfig(input_layers=2, input_dim=8, dim=8, num_heads=2, ffn_dim=16,
                                                  conv_pos_kernel=4, conv_pos_groups=2)), folder)
    return folder


def test_a_new_recipe_is_one_dataclass_one_class_one_registration(data, tmp_path, monkeypatch):
    from dataclasses import dataclass
    from emoadapt.training.settings import validate
    from emoadapt.model import RECIPES, register_recipe
    from emoadapt.model.pooling import masked_mean

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
    calibrated = tiny_config("normalize=speaker", "calibration.clips=2")
    fold = FoldData(corpus, store, 1, calibrated, corpus.labels, 50.0)
    test_speaker = corpus.folds.group(fold.split["test"][0])
    test_ids = [i for i in fold.split["test"] if corpus.folds.group(i) == test_speaker]
    by_id = {u.id: u for u in corpus.rows}
    chosen = calibration_clips(test_ids, calibrated.calibration, by_id, seed=0, speaker=test_speaker, where=None)
    assert len(chosen) == 2 and set(chosen) <= set(test_ids)
    assert chosen == calibration_clips(test_ids, calibrated.calibration, by_id, seed=0, speaker=test_speaker, where=None)
    expected = normalizer._pair(*array_statistics(store.get(i) for i in chosen))
    assert all(np.allclose(a, b) for a, b in zip(fold.normalizer._by_speaker[test_speaker], expected))
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
    everyone = tiny_config("normalize=speaker", "calibration.only_label=neutral", "calibration.apply_to=all")
    fold_all = FoldData(corpus, store, 1, everyone, corpus.labels, 50.0)
    train_neutral = [u.id for u in corpus.rows if corpus.folds.group(u.id) == train_speaker and u.label == "neutral"]
    expected = normalizer._pair(*array_statistics(store.get(i) for i in train_neutral))
    assert all(np.allclose(a, b) for a, b in zip(fold_all.normalizer._by_speaker[train_speaker], expected))
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
    independent, calibrated = out.split("speaker-calibrated (3 clips of each test speaker, unlabeled audio):")
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


# --- resume -------------------------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


class InterruptAfter:
    """A Lightning callback that raises after ``steps`` optimiser steps (a crash in the middle of an epoch)."""

    def __new__(cls, steps):
        import lightning.pytorch as pl

        class _Interrupt(pl.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step >= steps:
                    raise Interrupt(f"interrupted after {steps} steps")
        return _Interrupt()


class CountSteps:
    def __new__(cls, seen: list):
        import lightning.pytorch as pl

        class _Count(pl.Callback):
            def on_train_batch_end(self, trainer, *args):
                seen.append(trainer.global_step)
        return _Count()


def test_stage1_resumes_after_interruption_with_the_uninterrupted_weights(data, tmp_path):
    corpus, store = data
    config = tiny_config("pretrain.epochs=3")
    ids = [FeatureStore(store).ids()[:40]]  # 5 batches of 8 per epoch
    straight = pretrain([store], tmp_path / "straight", ids=ids, config=config, progress=False)

    with pytest.raises(Interrupt):  # crash in epoch 2 (after 7 updates); epoch 1 ended with a checkpoint
        pretrain([store], tmp_path / "resumed", ids=ids, config=config, progress=False, callbacks=[InterruptAfter(7)])
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "resumed" / "adapter").exists()
    steps: list = []
    resumed = pretrain([store], tmp_path / "resumed", ids=ids, config=config, progress=False,
                       callbacks=[CountSteps(steps)])
    assert steps == list(range(6, 16))  # resumed at the end of epoch 1: epochs 2 and 3 only

    assert_same_state(load_model(straight).model.state_dict(), load_model(resumed).model.state_dict())
    a = load_checkpoint_file(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = load_checkpoint_file(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert_same_state(a["state_dict"], b["state_dict"])  # student, heads, centre, codebook, step counter
    assert a["state_dict"]["objective.step"].item() == 15
    info = json.loads((straight / "model.json").read_text())
    assert info["kind"] == "adapter" and info["updates"] == 15 and info["total_steps"] == 15


def test_stage2_resumes_after_interruption_with_the_uninterrupted_results(data, finetuned, tmp_path):
    corpus, store = data
    results, out = finetuned
    with pytest.raises(Interrupt):
        finetune(corpus, store, 1, tmp_path, config=tiny_config(), progress=False, callbacks=[InterruptAfter(20)])
    assert not (tmp_path / "results.json").exists()
    resumed = finetune(corpus, store, 1, tmp_path, config=tiny_config(), progress=False)
    assert resumed["scores"] == results["scores"] and resumed["best_epoch"] == results["best_epoch"]
    assert_same_state(load_model(tmp_path / "model").model.state_dict(), load_model(out / "model").model.state_dict())
    with pytest.raises(EmoadaptError, match="other settings"):  # a run folder resumes only its own settings
        (tmp_path / "results.json").unlink()
        finetune(corpus, store, 1, tmp_path, config=tiny_config("stage2.lr=5e-4"), progress=False)


# --- cross-validation ---------------------------------------------------------------------------------------------
def test_cv_writes_fold_and_mean_results_and_skips_finished_folds(data, tmp_path, monkeypatch):
    corpus, store = data
    results = run_cv(corpus, store, "superb", tmp_path, folds=[1, 2], config=tiny_config(), progress=False,
                     log=lambda *_: None)
    for k in (1, 2):
        fold = json.loads((tmp_path / f"fold_{k}" / "results.json").read_text())
        assert fold["fold"] == k and fold["scores"]["count"] == 20 and fold["recipe"] == "superb"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["protocol"]["folds"] == [1, 2] and saved["protocol"]["corpus"] == "iemocap"
    assert saved["classes"] == corpus.labels and saved["seed"] == 0 and saved["recipe"] == "superb"
    assert saved["encoder"]["fingerprint"] == FeatureStore(store).meta["fingerprint"]
    assert saved["config"]["stage2"]["epochs"] == 6 and "git" in saved
    uas = [saved["folds"][k]["ua"] for k in ("1", "2")]
    assert saved["mean_std"]["ua"]["mean"] == pytest.approx(np.mean(uas))
    assert saved["mean_std"]["ua"]["std"] == pytest.approx(np.std(uas))
    assert np.sum(saved["confusion_pooled"]) == 40
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["mean_std"] == saved["mean_std"]

    calls = []
    real = crossval.train_stage2
    monkeypatch.setattr(crossval, "train_stage2", lambda *a, **k: calls.append(a[0].fold) or real(*a, **k))
    (tmp_path / "fold_2" / "results.json").unlink()
    again = run_cv(corpus, store, "superb", tmp_path, folds=[1, 2], config=tiny_config(), progress=False,
                   log=lambda *_: None)
    assert calls == [2]  # fold 1 was finished: skipped; fold 2 resumed from its own folder
    assert again["mean_std"] == saved["mean_std"]
    with pytest.raises(EmoadaptError, match="other settings"):
        run_cv(corpus, store, "superb", tmp_path, folds=[1, 2], config=tiny_config("seed=4"), progress=False)


def test_frozen_adapter_epochs_train_only_the_head_then_everything(data, tmp_path):
    corpus, store = data
    seen = []

    class Snapshot(Callback):
        def on_train_start(self, trainer, module):
            seen.append((state_of(module.model.adapter), state_of(module.model.pooling)))

        def on_train_epoch_end(self, trainer, module):
            seen.append((state_of(module.model.adapter), state_of(module.model.pooling)))

    config = tiny_config("stage2.epochs=3", "stage2.freeze_adapter_epochs=2", "stage2.warmup_fraction=0.2")
    finetune(corpus, store, 1, tmp_path, config=config, progress=False, callbacks=[Snapshot()])
    start, *epochs = seen
    assert len(epochs) == 3
    for adapter, pooling in epochs[:2]:  # a linear probe on the adapter's features: only the head moves
        assert_same_state(adapter, start[0])
        assert any(not torch.equal(pooling[k], v) for k, v in start[1].items())
    assert any(not torch.equal(epochs[2][0][k], v) for k, v in start[0].items())  # then the adapter trains too
    with pytest.raises(EmoadaptError, match="no adapter"):
        finetune(corpus, store, 1, tmp_path / "superb", recipe="superb", config=config, progress=False)


def test_a_group_held_for_every_update_never_moves():
    from emoadapt.training.trainer import warmup_cosine
    held, free = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [held], "hold_steps": 10}, {"params": [free]}], lr=1.0)
    scheduler = warmup_cosine(optimizer, 10, 0.1, 0.0)["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert all(h == 0.0 for h, _ in lrs) and max(f for _, f in lrs) == pytest.approx(1.0)


def test_full_recipe_runs_stage1_then_stage2_from_the_teacher(data, tmp_path, monkeypatch):
    corpus, store = data
    starts = []
    monkeypatch.setattr(stage2.FinetuneModule, "on_train_start",
                        lambda self: starts.append(state_of(self.model.adapter)), raising=False)
    run_cv(corpus, store, "full", tmp_path, folds=[3], config=tiny_config(), progress=False, log=lambda *_: None)
    fold = tmp_path / "fold_3"
    teacher = load_model(fold / "stage1" / "adapter")
    assert teacher.info["kind"] == "adapter" and teacher.info["utterances"] == \
        json.loads((fold / "results.json").read_text())["split"]["train"]  # stage 1 saw the training split only
    assert_same_state(starts[0], teacher.model.state_dict())
    student = {k[len("objective.student."):]: v for k, v in
               load_checkpoint_file(fold / "stage1" / "checkpoints" / "last.ckpt")["state_dict"].items()
               if k.startswith("objective.student.")}
    assert any(not torch.equal(student[k], v) for k, v in starts[0].items())  # the teacher, not the student
    assert json.loads((fold / "results.json").read_text())["init"]["path"] == str(fold / "stage1" / "adapter")


def test_shared_stage1_from_other_audio_serves_every_fold(data, tmp_path, monkeypatch):
    corpus, store = data
    other = tmp_path / "other-store"  # stands in for the unlabeled pool: session 1 only, no speaker of folds 2-3
    extract([r for r in corpus.rows if r.speaker.startswith("Ses01")], _encoder_of(store), other,
            layers=FeatureStore(store).layers, progress=False)
    stage1 = pretrain([other], tmp_path / "stage1", config=tiny_config())
    starts = []
    monkeypatch.setattr(stage2.FinetuneModule, "on_train_start",
                        lambda self: starts.append(state_of(self.model.adapter)), raising=False)
    results = run_cv(corpus, store, "full", tmp_path / "cv", folds=[2, 3], config=tiny_config(),
                     stage1=tmp_path / "stage1", progress=False, log=lambda *_: None)
    teacher = load_model(stage1).model.state_dict()
    assert len(starts) == 2 and all(assert_same_state(s, teacher) is None for s in starts)
    assert not (tmp_path / "cv" / "fold_2" / "stage1").exists()  # no per-fold stage 1
    assert results["shared_stage1"]["path"] == str(stage1) and results["shared_stage1"]["stores"] == [str(other)]
    assert sorted(results["folds"]) == ["2", "3"]

    # the same corpus extracted into another folder: caught by what the adapter saw, not by the store's path
    copy = tmp_path / "same-corpus-other-folder"
    shutil.copytree(store, copy)
    on_corpus = pretrain([copy], tmp_path / "stage1-on-corpus", config=tiny_config("pretrain.epochs=1"))
    with pytest.raises(LeakageError, match="trained on 20 of its test utterances .* of fold 2 of iemocap"):
        run_cv(corpus, store, "full", tmp_path / "cv2", folds=[2], config=tiny_config(),
               stage1=on_corpus.parent, progress=False)
    assert not (tmp_path / "cv2").exists()
    with pytest.raises(EmoadaptError, match="only applies to recipe 'full'"):
        run_cv(corpus, store, "adapter", tmp_path / "cv3", folds=[2], config=tiny_config(),
               stage1=tmp_path / "stage1", progress=False)


def test_cv_with_an_unlabeled_store_pretrains_on_the_training_split_plus_that_audio(data, tmp_path):
    corpus, store = data
    pool = tmp_path / "pool"  # unlabeled audio of session 1 only: no speaker of fold 3
    pool_rows = [r for r in corpus.rows if r.speaker.startswith("Ses01")]
    extract(pool_rows, _encoder_of(store), pool, layers=FeatureStore(store).layers, progress=False)
    results = run_cv(corpus, store, "full", tmp_path / "cv", folds=[3], config=tiny_config("pretrain.epochs=1"),
                     extra_unlabeled_stores=[pool], progress=False, log=lambda *_: None)
    fold = json.loads((tmp_path / "cv" / "fold_3" / "results.json").read_text())
    adapter = json.loads((tmp_path / "cv" / "fold_3" / "stage1" / "adapter" / "model.json").read_text())
    assert adapter["utterances"] == fold["split"]["train"] + len(pool_rows)
    assert results["unlabeled_stores"] == [{"root": str(pool), "utterances": len(pool_rows)}]
    stage1_config = json.loads((tmp_path / "cv" / "fold_3" / "stage1" / "config.json").read_text())
    assert stage1_config["data"]["stores"] == [str(store), str(pool)]
    seen = json.loads((tmp_path / "cv" / "fold_3" / "stage1" / "adapter" / "seen.json").read_text())
    assert not any(s.startswith("iemocap:Ses03") for s in seen["speakers"])


def test_linear_probe_bench_and_its_leakage_guard(data, tmp_path, capsys):
    import importlib.util
    corpus, store = data
    spec = importlib.util.spec_from_file_location("linear_probe", Path(__file__).parents[1] / "bench" / "linear_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.run(["--corpus", str(corpus.root), "--store", str(store), "--out", str(tmp_path / "probe.json")]) == 0
    report = json.loads((tmp_path / "probe.json").read_text())
    assert sorted(report["folds"]) == ["1", "2", "3", "4", "5"] and report["mean_std"]["ua"]["mean"] > 50
    assert all(v["C"] in probe.C_GRID for v in report["chosen_on_validation"].values())
    # a stage 1 trained on the corpus itself (another store folder) has seen every fold's test speakers
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    pretrain([copy], tmp_path / "s1", config=tiny_config("pretrain.epochs=1"), progress=False)
    capsys.readouterr()
    assert probe.run(["--corpus", str(corpus.root), "--store", str(store), "--adapter", str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err
    assert "test utterances" in err and "fold 1 of iemocap" in err and len(err.strip().splitlines()) == 1


def _encoder_of(store):
    """The encoder the ``data`` store was made with (Whisper tiny.en when its wheel is there, else ToneEncoder)."""
    if FeatureStore(store).meta["fingerprint"] == ToneEncoder.fingerprint:
        return ToneEncoder()
    from emoadapt.encoders import load_encoder
    return load_encoder("whisper-tiny.en")


# --- command line -------------------------------------------------------------------------------------------------
def test_cli_verbs_and_one_line_errors(data, finetuned, tmp_path, capsys, monkeypatch):
    corpus, store = data
    results, out = finetuned
    sets = [a for s in TINY if "epochs" not in s for a in ("--set", s)]  # --set would win over --epochs
    code = cli.main(["pretrain", "--store", str(store), "--corpus", str(corpus.root), "--fold", "2",
                     "--out", str(tmp_path / "s1"), "--pretrain-epochs", "1", "--no-la-loss", "--no-progress", *sets])
    assert code == 0 and "teacher adapter" in capsys.readouterr().out
    config = json.loads((tmp_path / "s1" / "config.json").read_text())
    assert config["config"]["pretrain"]["la_weight"] == 0 and config["config"]["pretrain"]["epochs"] == 1

    seen = {}  # pretrain --corpus --normalize speaker: each speaker's own statistics, the corpus naming the speakers
    import emoadapt.training.stage1
    monkeypatch.setattr(emoadapt.training.stage1, "pretrain", lambda *a, normalizer=None, **k: seen.update(n=normalizer) or "x")
    assert cli.main(["pretrain", "--store", str(store), "--corpus", str(corpus.root), "--normalize", "speaker",
                     "--out", str(tmp_path / "s1-speaker")]) == 0
    assert seen["n"].mode == "speaker" and set(seen["n"]._by_speaker) == {u.speaker for u in corpus.rows}
    monkeypatch.undo()

    code = cli.main(["finetune", "--corpus", str(corpus.root), "--store", str(store), "--fold", "2", "--init",
                     str(tmp_path / "s1"), "--out", str(tmp_path / "s2"), "--epochs", "1", "--no-progress", *sets])
    assert code == 0 and "fold 2 test: UA" in capsys.readouterr().out

    code = cli.main(["evaluate", "--model", str(out), "--corpus", str(corpus.root), "--store", str(store),
                     "--fold", "1"])
    assert code == 0 and f"UA {results['scores']['ua']:.2f}" in capsys.readouterr().out

    other = tmp_path / "other-store"  # features of another encoder: a model must refuse them
    extract(corpus.rows[:5], ToneEncoder(), other, progress=False)
    code = cli.main(["evaluate", "--model", str(out), "--corpus", str(corpus.root), "--store", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "other features" in err and len(err.strip().splitlines()) == 1

    code = cli.main(["cv", "--corpus", str(corpus.root), "--store", str(store), "--recipe", "nope",
                     "--out", str(tmp_path / "cv")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown recipe 'nope'" in err and len(err.strip().splitlines()) == 1
    code = cli.main(["cv", "--corpus", str(corpus.root), "--store", str(store), "--recipe", "adapter",
                     "--out", str(tmp_path / "cv"), "--set", "stage2.lr=fast"])
    assert code == 2 and "stage2.lr: Value 'fast'" in capsys.readouterr().err


def test_a_model_that_saw_a_test_speaker_is_refused(data, finetuned, tmp_path, capsys):
    """The README's old manual workflow (stage 1 on the corpus's own store, then finetune --init) is refused, and
    so is evaluating a model on speakers it was trained on; a model is scored on a corpus it never saw."""
    corpus, store = data
    results, out = finetuned
    sets = [a for s in TINY if "epochs" not in s for a in ("--set", s)]
    copy = tmp_path / "store-copy"  # the same corpus in another store folder
    shutil.copytree(store, copy)
    assert cli.main(["pretrain", "--store", str(copy), "--out", str(tmp_path / "s1-all"), "--pretrain-epochs", "1",
                     "--no-progress", *sets]) == 0
    seen = json.loads((tmp_path / "s1-all" / "adapter" / "seen.json").read_text())
    assert len(seen["ids"]) == len(corpus.rows) and seen["speakers"] == []  # a store alone: ids, no speakers
    capsys.readouterr()
    code = cli.main(["finetune", "--corpus", str(corpus.root), "--store", str(store), "--fold", "1", "--init",
                     str(tmp_path / "s1-all"), "--out", str(tmp_path / "ft"), "--epochs", "1", "--no-progress", *sets])
    err = capsys.readouterr().err
    assert code == 2 and "trained on 20 of its test utterances" in err and "fold 1 of iemocap" in err
    assert not (tmp_path / "ft").exists()

    # the safe workflow: stage 1 on fold 1's training speakers only (with --corpus, speakers are recorded too)
    assert cli.main(["pretrain", "--store", str(copy), "--corpus", str(corpus.root), "--fold", "1", "--out",
                     str(tmp_path / "s1-fold1"), "--pretrain-epochs", "1", "--no-progress", *sets]) == 0
    speakers = json.loads((tmp_path / "s1-fold1" / "adapter" / "seen.json").read_text())["speakers"]
    assert speakers and not any(s.startswith("iemocap:Ses01") for s in speakers)
    code = cli.main(["finetune", "--corpus", str(corpus.root), "--store", str(store), "--fold", "2", "--init",
                     str(tmp_path / "s1-fold1"), "--out", str(tmp_path / "ft2"), "--epochs", "1", "--no-progress",
                     *sets])  # fold 1's stage 1 saw fold 2's speakers
    assert code == 2 and "iemocap:Ses02" in capsys.readouterr().err

    model_seen = json.loads((out / "model" / "seen.json").read_text())
    assert model_seen["ids_sha256"] == json.loads((out / "model" / "model.json").read_text())["seen"]["ids_sha256"]
    assert len(model_seen["ids"]) == results["split"]["train"] + results["split"]["val"]
    for fold in (["--fold", "2"], []):  # trained on session 2's speakers; without a fold: every utterance
        code = cli.main(["evaluate", "--model", str(out), "--corpus", str(corpus.root), "--store", str(store), *fold])
        err = capsys.readouterr().err
        assert code == 2 and "of its test speakers (iemocap:Ses02F" in err and len(err.strip().splitlines()) == 1

    # evaluate without a fold on a corpus the model never saw: every utterance is scored
    other = make_ravdess(tmp_path / "ravdess", actors=4, emotions=(1, 3, 4, 5), seconds=0.6)
    other_store = tmp_path / "ravdess-store"
    extract(load_corpus(other, view="4class").rows, _encoder_of(store), other_store,
            layers=FeatureStore(store).layers, progress=False)
    report = evaluate(out, load_corpus(other, view="4class"), other_store)
    assert report["fold"] is None and sum(map(sum, report["scores"]["confusion"])) == 16
    assert report["scores"]["ua"] > 25  # the same emotion-dependent tones: better than chance across corpora


def test_cross_corpus_train_on_every_speaker_then_evaluate_on_another_corpus(data, tmp_path, capsys):
    """finetune --fold all on RAVDESS mapped to the shared label set, then evaluate on EMOVO through the same map
    (the cross-corpus rows of docs/RESULTS.md), in both protocols."""
    from corpus_fixtures import make_emovo
    _, store = data
    encoder, layers = _encoder_of(store), FeatureStore(store).layers
    ravdess = make_ravdess(tmp_path / "ravdess", actors=6, seconds=0.6)
    emovo = make_emovo(tmp_path / "emovo", speakers=("f1", "m1"), seconds=0.6)
    for root in (ravdess, emovo):
        extract(load_corpus(root).rows, encoder, tmp_path / f"{root.name}-store", layers=layers, progress=False)
    for normalize in ("global", "speaker"):
        out = tmp_path / f"all-{normalize}"
        code = cli.main(["finetune", "--corpus", str(ravdess), "--label-map", "shared7", "--store",
                         str(tmp_path / "ravdess-store"), "--fold", "all", "--recipe", "stats", "--normalize",
                         normalize, "--out", str(out)])
        printed = capsys.readouterr().out
        assert code == 0 and "trained on every speaker of ravdess, nothing tested" in printed, printed
        results = json.loads((out / "results.json").read_text())
        assert results["scores"] is None and results["fold"] is None and not (out / "predictions.csv").exists()
        assert len(results["speakers"]["train"]) + len(results["speakers"]["val"]) == 6
        code = cli.main(["evaluate", "--model", str(out), "--corpus", str(emovo), "--label-map", "shared7",
                         "--store", str(tmp_path / "emovo-store"), "--out", str(out / "emovo.json")])
        assert code == 0, capsys.readouterr().err
        report = json.loads((out / "emovo.json").read_text())
        assert report["classes"] == ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
        assert sum(map(sum, report["scores"]["confusion"])) == 2 * 7 * 2  # every EMOVO clip, 7 shared classes
        assert report["protocol"]["normalize"] == normalize
        # 4 of the 7 classes have their own tone, the other 3 share one: far above chance (14.3)
        assert report["scores"]["ua"] > 40, report["scores"]
    with pytest.raises(SystemExit) as refused:  # argparse: usage, the reason, exit status 2
        cli.main(["finetune", "--corpus", str(ravdess), "--store", str(tmp_path / "ravdess-store"), "--fold", "most",
                  "--out", str(tmp_path / "x")])
    assert refused.value.code == 2 and "'most' is neither a fold number nor 'all'" in capsys.readouterr().err


def test_mixing_stores_of_different_encoders_is_refused(data, tmp_path):
    corpus, store = data
    other = tmp_path / "other-store"
    extract(corpus.rows[:5], ToneEncoder(), other, progress=False)
    if FeatureStore(other).meta["fingerprint"] == FeatureStore(store).meta["fingerprint"]:
        pytest.skip("the fixture store was made by the stand-in encoder itself")
    with pytest.raises(StoreMismatch, match="cannot be mixed"):
        pretrain([store, other], tmp_path / "s1", config=tiny_config(), progress=False)


# --- DDP ----------------------------------------------------------------------------------------------------------
def test_ddp_two_cpu_processes(data, tmp_path):
    corpus, store = data
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, torch
        torch.set_num_threads(1)
        from emoadapt.training.settings import load_config
        from emoadapt.training.stage2 import finetune
        config = load_config(None, {TINY!r} + ["trainer.strategy=ddp", "trainer.devices=2", "stage2.epochs=2"])
        results = finetune({str(corpus.root)!r}, {str(store)!r}, 1, {str(tmp_path / 'out')!r}, config=config,
                           progress=False)
        with open(f"{tmp_path}/rank{{os.environ.get('LOCAL_RANK', 'none')}}.json", "w") as f:
            json.dump({{"world_size": results["world_size"], "scores": results["scores"]}}, f)
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})  # output ends when both ranks have exited
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]  # both ranks ran ...
    assert all(r["world_size"] == 2 for r in reports) and reports[0]["scores"] == reports[1]["scores"]  # ... and agree
    assert (tmp_path / "out" / "model" / "model.json").is_file()
    # each rank took half of the training batches: 2 epochs x ceil(ceil(n / 2) / 8) updates
    n_train = json.loads((tmp_path / "out" / "results.json").read_text())["split"]["train"]
    last = load_checkpoint_file(tmp_path / "out" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 * trainer.steps_per_epoch(n_train, 8, 2)


def test_mixup_mixes_frames_and_targets_and_label_smoothing_softens_them():
    """stage2.mixup_alpha: the model sees lambda x + (1 - lambda) x[perm] and the loss is the same mix of the two
    targets' cross-entropies; stage2.label_smoothing goes into both."""
    from emoadapt.training.settings import FinetuneConfig
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, hidden_states, padding_mask):
            seen.update(x=hidden_states, mask=padding_mask)
            return hidden_states[:, 0, :, :3].mean(1) + self.w

    x = torch.randn(6, 2, 5, 4)
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[0, 3:] = True
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    module = stage2.FinetuneModule(Recorder(), ["a", "b", "c"], FinetuneConfig(mixup_alpha=0.4, label_smoothing=0.1), 1)
    module.log = lambda *a, **k: None
    torch.manual_seed(3)
    loss = module.training_step({"hidden_states": x, "padding_mask": mask, "labels": labels}, 0)
    torch.manual_seed(3)
    weight = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(6)
    assert 0 < weight < 1 and torch.allclose(seen["x"], weight * x + (1 - weight) * x[perm])
    assert torch.equal(seen["mask"], mask & mask[perm])
    logits = seen["x"][:, 0, :, :3].mean(1)
    expected = (weight * F.cross_entropy(logits, labels, label_smoothing=0.1)
                + (1 - weight) * F.cross_entropy(logits, labels[perm], label_smoothing=0.1))
    assert torch.allclose(loss, expected)


def test_regularised_stage2_learns_and_reloads(data, tmp_path):
    corpus, store = data
    results = finetune(corpus, store, 1, tmp_path, progress=False, config=tiny_config(
        "head.time_mask_prob=0.3", "head.channel_mask_prob=0.2", "stage2.mixup_alpha=0.4",
        "stage2.label_smoothing=0.1"))
    assert results["scores"]["ua"] > 70, results["scores"]
    model = load_model(tmp_path / "model").model
    assert model.config.time_mask_prob == 0.3 and model.mask_embedding.shape == (32,) and not model.training


def test_progress_in_a_log_file_is_one_line_per_epoch(data, tmp_path, capfd):
    """stderr is not a terminal here (pytest captures it): no redrawn bar, one plain line per epoch."""
    corpus, store = data
    finetune(corpus, store, 1, tmp_path, config=tiny_config("stage2.epochs=2"), progress=True)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip().startswith("epoch ")]
    assert [line.split(":")[0].strip() for line in lines] == ["epoch 1/2", "epoch 2/2"], err[-2000:]
    assert "val_ua" in lines[0] and "\r" not in err


def test_the_head_can_start_from_the_stats_recipe(data, tmp_path):
    """head.start_from_statistics: before the first update the adapter model predicts exactly what the logistic
    regression on the input statistics (fitted on the training speakers, C chosen on validation) predicts, with
    the SAP(Z) columns of its head at zero; then it trains like any adapter model."""
    corpus, store = data
    seen = {}

    class AtStart(Callback):
        def on_train_start(self, trainer, module):
            model, loader = module.model, trainer.datamodule.val_dataloader()
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(b["hidden_states"], b["padding_mask"]).argmax(-1) for b in loader])
                true = torch.cat([b["labels"] for b in loader])
            model.train()
            seen["val_ua"] = score(true.tolist(), pred.tolist(), corpus.labels).ua
            seen["sap_columns"] = model.head.weight[:, :model.pooling.output_dim].abs().max().item()

    config = tiny_config("head.input_statistics=true", "head.start_from_statistics=true")
    results = finetune(corpus, store, 1, tmp_path, config=config, progress=False, callbacks=[AtStart()])
    start = results["init"]["statistics"]
    assert seen["sap_columns"] == 0 and seen["val_ua"] == pytest.approx(start["val_ua"])
    assert start["C"] in StatsConfig.c_grid and results["scores"]["ua"] > 70
    loaded = load_model(tmp_path / "model").model  # its fixed standardisation is saved with it
    assert loaded.statistics_scale.ne(1).any()
    with pytest.raises(EmoadaptError, match="start_from_statistics needs input_statistics=true"):
        finetune(corpus, store, 1, tmp_path / "bad", config=tiny_config("head.start_from_statistics=true"))

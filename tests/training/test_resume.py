"""Resume after interruption: stage 1 and stage 2 continue with the uninterrupted numbers."""
from __future__ import annotations

import json

import pytest
from training_helpers import (
    CountSteps,
    Interrupt,
    InterruptAfter,
    assert_same_state,
    tiny_config,
)

from emoadapt.errors import EmoadaptError
from emoadapt.modelfolder import load_model
from emoadapt.store.features import FeatureStore
from emoadapt.training.checkpoint_io import (
    load_checkpoint_file,
)
from emoadapt.training.stage1 import pretrain
from emoadapt.training.stage2 import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


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



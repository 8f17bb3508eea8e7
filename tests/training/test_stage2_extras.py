"""DDP on two CPU processes, mixup and label smoothing, regularised stage 2, progress lines, the stats start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from tiny_settings import TINY
from training_helpers import (
    tiny_config,
)

from emoadapt.modelfolder import load_model
from emoadapt.training import stage2, trainer
from emoadapt.training.checkpoint_io import (
    load_checkpoint_file,
)
from emoadapt.training.metrics import score
from emoadapt.training.stage2 import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


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

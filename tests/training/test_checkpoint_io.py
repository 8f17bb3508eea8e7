"""Lightning checkpoints as safetensors + JSON, without pickle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emoadapt.errors import CheckpointError
from emoadapt.training.checkpoint_io import (
    SafetensorsCheckpointIO,
    load_checkpoint_file,
    save_checkpoint_file,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


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



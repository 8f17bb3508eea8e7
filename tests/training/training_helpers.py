"""Helpers shared by the training tests: tiny settings, a stand-in encoder, state comparisons, interrupting callbacks,
and the fixtures made once per worker (a tiny IEMOCAP-shaped corpus whose clips carry emotion-dependent tones, its
features, one fine-tuned fold: read only). A test module imports the fixtures it uses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tiny_settings import TINY

from emoadapt.store.features import FeatureStore
from emoadapt.training.settings import RunConfig, load_config


def tiny_config(*more: str) -> RunConfig:
    return load_config(None, [*TINY, *more])



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



def state_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"



def validation_curve(run: Path) -> list[float]:
    """Validation UA per epoch, from the run's Lightning CSV log."""
    import csv
    with open(run / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_ua")]
    assert [int(r["epoch"]) for r in rows] == list(range(len(rows)))
    return [float(r["val_ua"]) for r in rows]



def _stage1_folder(where: Path) -> Path:
    folder = where / "an-adapter"
    if not (folder / "model.json").is_file():
        from emoadapt.model import AdapterConfig, WAPTransformer
        from emoadapt.modelfolder import save_adapter
        save_adapter(WAPTransformer(AdapterConfig(input_layers=2, input_dim=8, dim=8, num_heads=2, ffn_dim=16,
                                                  conv_pos_kernel=4, conv_pos_groups=2)), folder)
    return folder



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



def _encoder_of(store):
    """The encoder the ``data`` store was made with (Whisper tiny.en when its wheel is there, else ToneEncoder)."""
    if FeatureStore(store).meta["fingerprint"] == ToneEncoder.fingerprint:
        return ToneEncoder()
    from emoadapt.encoders import load_encoder
    return load_encoder("whisper-tiny.en")

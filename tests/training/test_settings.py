"""Run settings: config files, flags and --set, inheritance, typed head settings, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_helpers import (
    tiny_config,
)

from emoadapt.errors import EmoadaptError
from emoadapt.training.settings import RunConfig, load_config
from emoadapt.training.stage2 import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


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



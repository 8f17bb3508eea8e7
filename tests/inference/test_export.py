"""`emoadapt export --format onnx` and `predict --backend onnx`: the exported head gives torch's probabilities on any
batch size and length, carries its labels, and a file from another model (or not one at all) is refused."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tiny_settings import TINY
from emoadapt import cli
from emoadapt.errors import CheckpointError, EmoadaptError

pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("recipe", ["stats", "adapter"])
def test_the_exported_head_matches_torch_and_predict_uses_it(trained, tmp_path, recipe, capsys):
    from emoadapt import Recognizer
    from emoadapt.training.settings import load_config
    from emoadapt.inference.onnx import OnnxHead
    from emoadapt.training.stage2 import finetune
    corpus, store, models, encoder = trained
    if recipe == "stats":
        folder = tmp_path / "model"
        shutil.copytree(models["global"], folder)
    else:
        finetune(corpus, store, 1, tmp_path / "run", recipe="adapter", progress=False,
                 config=load_config(None, [*TINY, "stage2.epochs=1"]))
        folder = tmp_path / "run" / "model"
    assert cli.main(["export", "--model", str(folder)]) == 0
    printed = capsys.readouterr().out
    difference = float(printed.rsplit("max abs difference ", 1)[1])
    assert (folder / "model.onnx").is_file() and difference < 1e-5, printed
    head = OnnxHead(folder / "model.onnx")
    assert head.labels == corpus.labels and head.normalization == "global"
    assert head.encoder["fingerprint"] == encoder.fingerprint
    clips = [u.path for u in corpus.rows[:5]]
    torch_side = Recognizer.from_pretrained(folder, encoder=encoder).predict(clips)
    onnx_side = Recognizer.from_pretrained(folder, encoder=encoder, backend="onnx").predict(clips)
    for a, b in zip(torch_side, onnx_side):
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
    code = cli.main(["predict", *clips, "--model", str(folder), "--backend", "onnx", "--json"])
    assert code == 0 and len(json.loads(capsys.readouterr().out)["predictions"]) == 5
    with pytest.raises(EmoadaptError, match="embeddings need the torch backend"):
        Recognizer.from_pretrained(folder, encoder=encoder, backend="onnx").embed(clips[0])


def test_a_missing_damaged_or_foreign_onnx_file_is_refused(trained, tmp_path):
    from emoadapt import Recognizer
    from emoadapt.inference.onnx import OnnxHead, export_onnx
    corpus, _, models, encoder = trained
    with pytest.raises(CheckpointError, match="run `emoadapt export --model MODEL` first"):
        Recognizer.from_pretrained(models["global"], encoder=encoder, backend="onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01garbage" * 100)
    with pytest.raises(CheckpointError, match="onnxruntime cannot load it"):
        OnnxHead(tmp_path / "bad.onnx")
    report = export_onnx(models["speaker"], tmp_path / "speaker.onnx")
    assert report["labels"] == corpus.labels and report["max_abs_difference"] < 1e-5
    with pytest.raises(EmoadaptError, match="exported from another model"):
        OnnxHead(tmp_path / "speaker.onnx").check_matches({"labels": ["x", "y"], "encoder": {}})


def test_the_whisper_encoder_exports_too_and_predict_runs_it(trained, tmp_path, capsys):
    from emoadapt import Recognizer
    corpus, _, models, encoder = trained
    folder = tmp_path / "model"
    shutil.copytree(models["global"], folder)
    assert cli.main(["export", "--model", str(folder), "--encoder"]) == 0
    printed = capsys.readouterr().out
    difference = float(printed.split("audio: max abs difference ")[1].split()[0])
    largest = float(printed.split("(values up to ")[1].split(")")[0])
    assert (folder / "encoder.onnx").is_file() and difference < 1e-4 * largest, printed
    clips = [u.path for u in corpus.rows[:4]]
    from emoadapt.encoders import load_encoder
    onnx_side = Recognizer.from_pretrained(folder, encoder=load_encoder("whisper-tiny.en"), backend="onnx",
                                           speech_check=False)  # the fixture's emotions are tones, not speech
    assert onnx_side.encoder.onnx is not None
    torch_side = Recognizer.from_pretrained(folder, encoder=encoder, speech_check=False)
    for a, b in zip(torch_side.predict(clips), onnx_side.predict(clips)):
        assert a.label == b.label and abs(a.probabilities[a.label] - b.probabilities[a.label]) < 1e-2

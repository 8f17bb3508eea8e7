"""Every input a user controls, broken the ways a careless or hostile user breaks it: each kind gets one line that
names the file or setting and what to do, the documented exit code (2 refused, 1 some inputs failed), and never a
traceback. The command runs in-process through ``emoadapt.cli.main`` (the same path as the console script)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emoadapt.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class World:
    """A private copy of the shared fixture (corpus folder, store, stats model) that a case may damage."""
    corpus: Path
    store: Path
    model: Path
    tmp: Path

    def clip(self) -> Path:
        return next(self.corpus.rglob("*.wav"))


@pytest.fixture
def world(trained, tmp_path) -> World:
    corpus, store, models, _ = trained
    root = Path(corpus.root)
    shutil.copytree(root, tmp_path / "ravdess", symlinks=True)
    shutil.copytree(store, tmp_path / "store")
    shutil.copytree(models["global"], tmp_path / "model")
    return World(tmp_path / "ravdess", tmp_path / "store", tmp_path / "model", tmp_path)


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse refuses bad flags itself: usage, then one "error:" line, exit 2
        code = stop.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out, out.err
    return code, out.err if code != 1 else out.out + out.err


def training(w: World, *extra) -> list:
    return ["finetune", "--corpus", w.corpus, "--store", w.store, "--fold", 1, "--recipe", "stats",
            "--out", w.tmp / "run", "--no-progress", *extra]


def write_model_json(w: World, **changes) -> None:
    path = w.model / "model.json"
    info = json.loads(path.read_text())
    for key, value in changes.items():
        node = info
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(json.dumps(info))


# --- the cases: (argv builder, exit code, words the one-line error must contain) ------------------------------
def manifest(w: World, text: str | bytes, name="m.csv") -> Path:
    path = w.tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


CASES = {
    # settings and CLI numbers
    "batch size 0": (lambda w: training(w, "--batch-size", 0), 2, ["--batch-size", "0"]),
    "negative epochs": (lambda w: training(w, "--set", "stage2.epochs=-1"), 2, ["stage2.epochs"]),
    "unknown setting": (lambda w: training(w, "--set", "stage2.speed=3"), 2, ["stage2.speed"]),
    "setting of the wrong type": (lambda w: training(w, "--set", "stage2.lr=fast"), 2, ["stage2.lr"]),
    "setting without =": (lambda w: training(w, "--set", "stage2.lr"), 2, ["stage2.lr", "key=value"]),
    "non-finite learning rate": (lambda w: training(w, "--set", "stage2.lr=nan"), 2, ["stage2.lr"]),
    "binary config": (lambda w: training(w, "--config", manifest(w, os.urandom(300), "c.yaml")), 2, ["c.yaml"]),
    "missing config": (lambda w: training(w, "--config", w.tmp / "nope.yaml"), 2, ["nope.yaml"]),
    "config that is a list": (lambda w: training(w, "--config", manifest(w, "- 1\n- 2\n", "l.yaml")), 2, ["l.yaml"]),
    "unknown recipe": (lambda w: training(w)[:-1] + ["--recipe", "magic", "--no-progress"], 2, ["magic"]),
    "fold out of range": (lambda w: training(w)[:6] + [99, "--recipe", "stats", "--out", w.tmp / "r"], 2, ["99"]),
    "folds not numbers": (lambda w: ["cv", "--corpus", w.corpus, "--store", w.store, "--recipe", "stats",
                                     "--out", w.tmp / "cv", "--folds", "one,two"], 2, ["--folds"]),
    "out is an existing file": (lambda w: training(w)[:-2] + [manifest(w, "x", "taken.txt"), "--no-progress"],
                                2, ["taken.txt"]),
    "cuda without cuda": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--encoder", "whisper-tiny.en",
                                     "--device", "cuda"], 2, ["cuda"]),
    "nonsense device": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--encoder", "whisper-tiny.en",
                                   "--device", "gpu7"], 2, ["gpu7"]),
    "layers not numbers": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--encoder", "whisper-tiny.en",
                                      "--layers", "a,b"], 2, ["--layers"]),
    "layer beyond the encoder": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--encoder",
                                            "whisper-tiny.en", "--layers", "0,99"], 2, ["99"]),
    "extract batch size 0": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--encoder", "whisper-tiny.en",
                                        "--batch-size", 0], 2, ["--batch-size"]),
    "rank outside world size": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--encoder",
                                           "whisper-tiny.en", "--rank", 3, "--world-size", 2], 2, ["rank"]),
    "limit 0": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--limit", 0], 2, ["--limit"]),
    "unknown encoder": (lambda w: ["extract", w.corpus, "--store", w.tmp / "s2", "--encoder", "whisper-huge-9"],
                        2, ["whisper-huge-9"]),
    "store is a file": (lambda w: ["extract", w.corpus, "--store", manifest(w, "x", "f.txt"), "--encoder",
                                   "whisper-tiny.en"], 2, ["f.txt"]),
    "store of another encoder": (lambda w: ["extract", w.corpus, "--store", w.store, "--encoder", "whisper-base"],
                                 2, ["whisper"]),
    # manifests, folds and labels
    "binary manifest": (lambda w: ["corpus", manifest(w, os.urandom(400))], 2, ["m.csv"]),
    "manifest without a path column": (lambda w: ["corpus", manifest(w, "file,emotion\na.wav,happy\n")], 2, ["path"]),
    "manifest of a missing clip": (lambda w: ["extract", manifest(w, f"path,label,speaker\n{w.clip()},happy,a\n"
                                                                     f"{w.tmp / 'gone.wav'},sad,b\n"),
                                              "--store", w.tmp / "s3", "--encoder", "whisper-tiny.en",
                                              "--no-progress"], 1, ["gone.wav"]),
    "empty label": (lambda w: ["corpus", manifest(w, f"path,label,speaker\n{w.clip()},,a\n"
                                                 f"{w.clip().with_name('x.wav')},sad,b\n")], 1, ["without a label"]),
    "binary label map": (lambda w: ["corpus", w.corpus, "--label-map", manifest(w, os.urandom(200), "map.csv")],
                         2, ["map.csv"]),
    "label map naming no label": (lambda w: ["corpus", w.corpus, "--label-map",
                                             manifest(w, "corpus,label,to\nravdess,joy,happy\n", "map.csv")],
                                  2, ["map.csv", "angry"]),
    "unknown view": (lambda w: ["corpus", w.corpus, "--view", "99class"], 2, ["99class"]),
    # model folders
    "model.json not JSON": (lambda w: (w.model.joinpath("model.json").write_text("{oops"),
                                       ["predict", w.clip(), "--model", w.model])[1], 2, ["model.json"]),
    "model.json a million layers": (lambda w: (write_model_json(w, **{"build.input_layers": 10**6}),
                                               ["predict", w.clip(), "--model", w.model])[1], 2, ["model.json"]),
    "model.json huge dimension": (lambda w: (write_model_json(w, **{"build.input_dim": 10**9}),
                                             ["predict", w.clip(), "--model", w.model])[1], 2, ["model.json"]),
    "truncated weights": (lambda w: (truncate(w.model / "model.safetensors"),
                                     ["predict", w.clip(), "--model", w.model])[1], 2, ["model.safetensors"]),
    "pickle as weights": (lambda w: (pickle_weights(w), ["predict", w.clip(), "--model", w.model])[1],
                          2, ["model.safetensors"]),
    "missing model": (lambda w: ["predict", w.clip(), "--model", w.tmp / "nomodel"], 2, ["nomodel"]),
    "a store given as model": (lambda w: ["predict", w.clip(), "--model", w.store], 2, ["a feature store"]),
    # stores
    "index part not JSON": (lambda w: (next((w.store / "shards").glob("*.json")).write_text("[1, 2"),
                                       training(w))[1], 2, [".json"]),
    "store meta not JSON": (lambda w: ((w.store / "meta.json").write_bytes(b"\x00\xff"), training(w))[1],
                            2, ["meta.json"]),
    "shard overwritten": (lambda w: (overwrite(next((w.store / "shards").glob("*.npy"))), training(w))[1],
                          2, ["checksum"]),
    "shard deleted": (lambda w: (next((w.store / "shards").glob("*.npy")).unlink(), training(w))[1], 2, [".npy"]),
    "audio changed since extraction": (lambda w: (replace_audio(w), training(w))[1], 2, ["changed"]),
    # results
    "truncated results.json": (lambda w: ["compare", truncated_results(w)], 2, ["results.json"]),
    "results.json that is a list": (lambda w: ["compare", manifest(w, "[1, 2]", "results.json")], 2, ["results.json"]),
    "a finetune result given to compare": (lambda w: ["compare", manifest(w, '{"scores": {}}', "ft.json")], 2,
                                           ["no 'protocol' field"]),
    # audio given to predict
    "not audio": (lambda w: ["predict", manifest(w, os.urandom(2000), "x.wav"), "--model", w.model], 1, ["x.wav"]),
    "empty audio": (lambda w: ["predict", manifest(w, b"", "e.wav"), "--model", w.model], 1, ["e.wav"]),
    "nan audio": (lambda w: ["predict", nan_wav(w), "--model", w.model], 1, ["nan.wav"]),
    "top-k 0": (lambda w: ["predict", w.clip(), "--model", w.model, "--top-k", 0], 2, ["--top-k"]),
    "calibrating a model without speaker normalisation": (lambda w: ["predict", w.clip(), "--model", w.model,
                                                                     "--calibrate", w.clip()], 2, ["normalize=global"]),
    "group by speaker without speakers": (lambda w: ["predict", manifest(w, f"path\n{w.clip()}\n"), "--model",
                                                     w.model, "--group-by", "speaker"], 2, ["speaker"]),
    "negative window": (lambda w: ["predict", w.clip(), "--model", w.model, "--window", "-3"], 2, ["--window"]),
    "onnx backend without an export": (lambda w: ["predict", w.clip(), "--model", w.model, "--backend", "onnx"],
                                       2, ["export"]),
    # other verbs
    "export into a missing folder": (lambda w: ["export", "--model", w.model, "--out", w.tmp / "no" / "dir" / "m.onnx"],
                                     0, []),
    "export of a stage-1 folder": (lambda w: ["export", "--model", w.store], 2, ["a feature store"]),
    "evaluate with a store of another encoder": (lambda w: ["evaluate", "--model", w.model, "--corpus", w.corpus,
                                                            "--store", other_store(w)], 2, ["fingerprint"]),
    "compare a missing run": (lambda w: ["compare", w.tmp / "norun"], 2, ["norun"]),
    "finetune from a non-stage-1 folder": (lambda w: training(w)[:-1] + ["--recipe", "adapter", "--init", w.model,
                                                                          "--no-progress"], 2, ["adapter"]),
    "cv stage 1 that is no run": (lambda w: ["cv", "--corpus", w.corpus, "--store", w.store, "--recipe", "full",
                                             "--out", w.tmp / "cv", "--stage1", w.tmp], 2, ["model.json"]),
    "pretrain on a folder that is no store": (lambda w: ["pretrain", "--store", w.corpus, "--out", w.tmp / "p"],
                                              2, ["store"]),
    "merge with a missing corpus": (lambda w: ["merge", w.corpus, w.tmp / "nocorpus", "--label-map", "shared7",
                                             "--out", w.tmp / "m"],
                                    2, ["nocorpus"]),
    "serve an unknown model": (lambda w: ["serve", "--model", w.tmp / "nomodel", "--port", "8799"], 2, ["nomodel"]),
    "demo without data": (lambda w: ["demo", "--data", w.tmp / "nodata", "--workdir", w.tmp / "d"], 2, ["nodata"]),
    "no audio in a folder": (lambda w: ["predict", (w.tmp / "void").mkdir() or w.tmp / "void", "--model", w.model],
                             2, ["void"]),
}


def other_store(w: World) -> Path:
    """A store claiming another encoder (its meta.json edited): features that do not fit the model."""
    store = w.tmp / "other-store"
    shutil.copytree(w.store, store)
    meta = json.loads((store / "meta.json").read_text())
    meta["fingerprint"] = meta["fingerprint"] + "-other"
    meta["encoder"] = "hf:facebook/hubert-large-ll60k"
    (store / "meta.json").write_text(json.dumps(meta))
    return store


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def pickle_weights(w: World) -> None:
    import torch
    torch.save({"x": torch.zeros(3)}, w.model / "model.safetensors")


def overwrite(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(os.urandom(4096))


def replace_audio(w: World) -> None:
    clips = sorted(w.corpus.rglob("*.wav"))
    data = [c.read_bytes() for c in clips]
    for clip, other in zip(clips, data[1:] + data[:1]):
        clip.write_bytes(other)


def truncated_results(w: World) -> Path:
    run = w.tmp / "cvrun"
    run.mkdir()
    (run / "results.json").write_text('{"recipe": "stats", "folds": {"1": {"ua": 5')
    return run


def nan_wav(w: World) -> Path:
    path = w.tmp / "nan.wav"
    x = np.zeros(16000, np.float32)
    x[100] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input_gets_one_line_and_its_exit_code(kind, world, capsys):
    build, code, words = CASES[kind]
    got, err = run(build(world), capsys)
    assert got == code, f"{kind}: exit {got}, expected {code}; stderr: {err}"
    if code == 2:  # the last line is the one error line (argparse puts its usage above it)
        err = err.strip().splitlines()[-1]
        assert err.startswith("emoadapt"), err
    assert all(word in err for word in words), f"{kind}: {words} not all in {err!r}"


def test_a_bug_is_exit_3_and_debug_shows_its_traceback(world, capsys, monkeypatch):
    import emoadapt.corpora
    def broken(*args, **kwargs):
        raise KeyError("a bug")
    monkeypatch.setattr(emoadapt.corpora, "summarize", broken)
    code, err = run(["corpus", world.corpus], capsys)
    assert code == 3 and "internal error (KeyError" in err and "--debug" in err
    assert main(["--debug", "corpus", str(world.corpus)]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_disk_full_is_one_line_saying_what_is_kept(world, capsys, monkeypatch):
    import errno
    import emoadapt.atomic
    def full(path):  # where a full disk shows up for a buffered write: flushing it to the device
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(emoadapt.atomic, "fsync_file", full)
    code, err = run(training(world), capsys)
    assert code == 2 and "no space left on the disk" in err and "everything finished so far is kept" in err

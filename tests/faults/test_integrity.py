"""Integrity as data: damaged stores, changed audio, non-finite values, oversized descriptions, links that loop and
a taken port are each detected and refused (or repaired), never used silently."""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from emoadapt.modelfolder import load_model
from emoadapt.modelfolder.format import _sha256
from emoadapt.cli import main
from emoadapt.corpora import load_corpus
from emoadapt.errors import CheckpointError, DamagedStore
from emoadapt.store.features import FeatureStore
from emoadapt.store.verify import verify_store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def copy(trained, tmp_path):
    """(corpus folder, store, model folder): private copies of the shared fixture."""
    corpus, store, models, _ = trained
    shutil.copytree(corpus.root, tmp_path / "ravdess")
    shutil.copytree(store, tmp_path / "store")
    shutil.copytree(models["global"], tmp_path / "model")
    return tmp_path / "ravdess", tmp_path / "store", tmp_path / "model"


def cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code


def finetune_args(corpus, store, out, *extra):
    return ["finetune", "--corpus", corpus, "--store", store, "--fold", 1, "--recipe", "stats", "--out", out,
            "--no-progress", *extra]


def read_all(store: Path) -> dict[str, np.ndarray]:
    s = FeatureStore(store)
    return {i: np.array(s.get(i)) for i in s.ids()}


def test_damaged_shard_is_refused_reported_and_repaired(copy, capsys):
    corpus, store, _ = copy
    before = read_all(store)
    shard = sorted((store / "shards").glob("*.npy"))[1]
    with open(shard, "r+b") as f:  # 4 KiB overwritten in the middle
        f.seek(os.path.getsize(shard) // 2)
        f.write(os.urandom(4096))
    assert cli(*finetune_args(corpus, store, store.parent / "run")) == 2
    assert "checksum" in capsys.readouterr().err
    with pytest.raises(DamagedStore, match="--repair"):
        read_all(store)
    assert cli("extract", corpus, "--store", store, "--verify") == 1
    assert "1 damaged" in capsys.readouterr().out
    assert cli("extract", corpus, "--store", store, "--repair", "--encoder", "whisper-tiny.en", "--no-progress") == 0
    assert cli("extract", corpus, "--store", store, "--verify") == 0
    after = read_all(store)
    assert after.keys() == before.keys()
    for i in before:  # re-encoded in a batch of other sizes: equal up to the encoder's batch-dependent last bits
        np.testing.assert_allclose(after[i].astype(np.float32), before[i].astype(np.float32), atol=0.05, rtol=0.01)


def test_infinity_written_into_a_shard_stops_training(copy, capsys):
    corpus, store, _ = copy
    shard = sorted((store / "shards").glob("*.npy"))[0]
    data = np.load(shard)
    data[3, :7] = np.inf
    np.save(shard, data)
    assert cli(*finetune_args(corpus, store, store.parent / "run")) == 2
    assert "checksum" in capsys.readouterr().err
    assert not (store.parent / "run" / "model").exists()


def test_changed_audio_is_refused_then_re_extracted_alone_and_a_copy_is_still_current(copy, capsys):
    corpus, store, _ = copy
    distinct = {clip.read_bytes(): clip for clip in sorted(corpus.rglob("*.wav"))}  # the fixture repeats clips
    clips = sorted(distinct.values())[:3]  # of equal size: swapped by rename, they keep their size and mtime
    for clip, other in zip(clips, clips[1:] + clips[:1]):
        os.link(other, str(clip) + ".tmp")
    for clip in clips:
        os.replace(str(clip) + ".tmp", clip)
    assert cli(*finetune_args(corpus, store, store.parent / "run")) == 2
    assert "changed since their features were extracted" in capsys.readouterr().err
    assert cli("extract", corpus, "--store", store, "--encoder", "whisper-tiny.en", "--no-progress") == 0
    assert "extracted 3," in capsys.readouterr().out
    # a copy of the corpus (new mtimes, same bytes) is recognised by its CRC-32 and not re-extracted
    moved = corpus.parent / "moved"
    shutil.copytree(corpus, moved, copy_function=shutil.copy)
    rows = load_corpus(moved).rows
    assert all(FeatureStore(store).is_current(u) for u in rows)
    assert verify_store(store, rows).ok


def test_diverging_training_stops_with_a_clear_error_and_saves_nothing(trained, tmp_path, capsys):
    from tiny_settings import TINY
    corpus, store, _, _ = trained
    sets = [a for s in TINY for a in ("--set", s)]
    code = cli("finetune", "--corpus", corpus.root, "--view", "4class", "--store", store, "--fold", 1, "--recipe",
               "adapter", "--out", tmp_path / "run", "--no-progress", *sets, "--set", "stage2.lr=1e30",
               "--set", "stage2.grad_clip=0")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "training loss became" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()


def test_non_finite_weights_are_refused_on_load(copy):
    _, _, model = copy
    weights = model / "model.safetensors"
    state = load_file(weights)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, weights)
    info = json.loads((model / "model.json").read_text())
    info["sha256"] = _sha256(weights)  # a consistent folder: only the values are wrong
    (model / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(model)


def test_oversized_description_is_refused_before_anything_is_allocated(copy):
    _, _, model = copy
    info = json.loads((model / "model.json").read_text())
    info["build"]["input_layers"] = 10**7  # 10^7 x 512 float64 statistics: 40 GB if it were built
    (model / "model.json").write_text(json.dumps(info))
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="input_layers = 10000000"):
        load_model(model)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing large was touched


def test_folder_links_are_never_followed(tmp_path, capsys):
    from corpus_fixtures import write_audio
    root = tmp_path / "folders"
    for label in ("happy", "sad"):
        for k in range(3):
            write_audio(root / label / f"{label}{k}.wav", 0.3, emotion=label, seed=k)
    os.symlink("..", root / "happy" / "loop")            # back into the corpus: a loop
    os.symlink("../sad", root / "happy" / "more")        # another label's clips
    os.symlink("../sad", root / "happy" / "loop2")
    corpus = load_corpus(root, strict=False)
    assert sorted(u.label for u in corpus.rows) == ["happy"] * 3 + ["sad"] * 3
    assert any("links to folders, not followed" in p for p in corpus.problems)
    assert cli("corpus", root) == 1
    assert "happy/loop" in capsys.readouterr().out


def test_a_refused_run_leaves_nothing_that_blocks_the_corrected_one(trained, tmp_path, capsys):
    corpus, store, _, _ = trained
    args = lambda fold, *extra: ["finetune", "--corpus", corpus.root, "--view", "4class", "--store", store,
                                 "--fold", fold, "--recipe", "stats", "--out", tmp_path / "run", "--no-progress", *extra]
    assert cli(*args(99)) == 2
    assert cli(*args(1, "--normalize", "speaker", "--set", "calibration.only_label=joy")) == 2
    assert cli(*args(1)) == 0
    capsys.readouterr()


def test_a_taken_port_is_refused_with_exit_2(trained, capsys):
    _, _, models, _ = trained
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli("serve", "--model", models["global"], "--port", port) == 2
    assert "already in use" in capsys.readouterr().err

"""The `emoadapt` command as a user meets it: exit codes, one-line errors, the data-root rule of the demo."""
from __future__ import annotations

import json

import subprocess
import sys


from emoadapt import cli
from emoadapt.cli import demo, paths
from emoadapt.store.features import FeatureStore

from tiny_settings import TINY
from corpus_fixtures import make_ravdess


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emoadapt.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_corpus_on_shared_ravdess_prints_counts(shared_data):
    result = run_cli("corpus", str(shared_data("ravdess")))
    assert result.returncode == 0, result.stderr
    assert "1440 utterances, 8 labels, 24 speakers, 6 folds" in result.stdout
    assert "problems: none" in result.stdout


def test_corpus_with_missing_and_empty_files_lists_them_and_fails(tmp_path, capsys):
    root = make_ravdess(tmp_path / "ravdess", actors=4, emotions=(1, 3))
    empty = next(root.glob("Actor_02/*.wav"))
    empty.write_bytes(b"")
    assert cli.main(["corpus", str(root)]) == 1
    out = capsys.readouterr().out
    assert empty.name in out


def test_bad_corpus_path_is_one_line_error_not_traceback(tmp_path):
    result = run_cli("corpus", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nowhere" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_extract_then_rerun_skips_and_bad_file_is_reported(tmp_path, capsys):
    root = make_ravdess(tmp_path / "ravdess", actors=2, emotions=(1, 3, 4, 5), seconds=0.5)
    store = tmp_path / "store"
    args = ["extract", str(root), "--encoder", "whisper-tiny.en", "--store", str(store), "--no-progress"]
    assert cli.main(args) == 0
    assert "extracted 8" in capsys.readouterr().out
    assert len(FeatureStore(store)) == 8

    assert cli.main(args) == 0
    assert "extracted 0, skipped 8" in capsys.readouterr().out

    broken = next(root.glob("Actor_01/*.wav"))
    broken.write_bytes(b"this is not audio at all")  # new size: the store re-extracts it, and it fails
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "failed 1" in out and broken.name in out
    assert (store / "failures.jsonl").is_file()


def test_extract_refuses_another_encoder_in_the_same_store(tmp_path, capsys):
    root = make_ravdess(tmp_path / "ravdess", actors=1, emotions=(1,), seconds=0.5)
    store = tmp_path / "store"
    assert cli.main(["extract", str(root), "--encoder", "whisper-tiny.en", "--store", str(store), "--no-progress"]) == 0
    code = cli.main(["extract", str(root), "--encoder", "whisper-tiny.en", "--pad-to-30s", "--store", str(store),
                     "--no-progress"])
    assert code == 2
    assert "other settings" in capsys.readouterr().err


def test_extract_augment_then_train_on_the_copies(tmp_path, capsys):
    root = make_ravdess(tmp_path / "ravdess", actors=4, emotions=(1, 3, 4, 5), seconds=0.5)
    store, augmented = tmp_path / "store", tmp_path / "augmented"
    base = ["extract", str(root), "--encoder", "whisper-tiny.en", "--layers", "2,4", "--no-progress"]
    assert cli.main([*base, "--store", str(store)]) == 0
    assert cli.main([*base, "--store", str(augmented), "--augment", "copies=2,seed=1,kinds=white noise+babble"]) == 0
    assert "extracted 32" in capsys.readouterr().out
    assert FeatureStore(augmented).meta["augmentation"]["kinds"] == ["white noise", "babble"]
    out = tmp_path / "run"
    assert cli.main(["finetune", "--corpus", str(root), "--store", str(store), "--augmented-store", str(augmented),
                     "--fold", "all", "--recipe", "stats", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["augmentation"]["training_copies"] == 2 * results["split"]["train"]
    assert cli.main([*base, "--store", str(tmp_path / "bad"), "--augment", "copies=many"]) == 2
    err = capsys.readouterr().err
    assert "copies=N" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_demo_without_data_explains_what_to_pass(monkeypatch, capsys):
    monkeypatch.setattr(paths, "default_data_root", lambda: None)
    monkeypatch.setattr(demo, "default_data_root", lambda: None)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and paths.ENV_VAR in err


def test_demo_runs_end_to_end_on_shared_ravdess(shared_data, tmp_path, capsys):
    """The whole demo path (corpus check, extraction, stage 1, stage 2, test on one fold) at toy sizes."""
    data_root = shared_data("ravdess").parent
    tiny = [*TINY, "pretrain.epochs=1", "pretrain.batch_size=16", "stage2.epochs=1", "stage2.batch_size=16"]
    code = cli.main(["demo", "--data", str(data_root), "--workdir", str(tmp_path), "--encoder", "whisper-tiny.en",
                     "--limit", "96", "--recipe", "full", "--no-progress",
                     *[x for item in tiny for x in ("--set", item)]])
    assert code == 0
    out = capsys.readouterr().out
    assert "1440 utterances" in out and "extracted 96" in out
    from emoadapt.modelfolder import SHIPPED_MODELS as BUNDLED
    if (BUNDLED / "default" / "model.json").is_file():  # [1/3]: the shipped model on the held-out actor's clips
        assert "of RAVDESS Actor_01, whom it never heard" in out and " right on the model's classes" in out
    assert len(FeatureStore(tmp_path / "features" / "ravdess-whisper-tiny.en")) == 96
    run = tmp_path / "cv-ravdess-whisper-tiny.en-full-fold1"
    assert (run / "results.json").is_file() and (run / "confusion.png").is_file()
    assert "UA " in out and str(run / "confusion.png") in out


def test_demo_extract_only_stops_after_features(shared_data, tmp_path, capsys):
    code = cli.main(["demo", "--data", str(shared_data("ravdess").parent), "--workdir", str(tmp_path),
                     "--encoder", "whisper-tiny.en", "--limit", "8", "--extract-only", "--no-progress"])
    assert code == 0
    assert "extracted 8" in capsys.readouterr().out
    assert not list(tmp_path.glob("cv-*"))

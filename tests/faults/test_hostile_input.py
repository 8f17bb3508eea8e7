"""The second hostile-input pass (issue 19): paths read from files, values that differ only by spelling, metadata
that can disagree with the weights, warnings that must reach every output, and messages that name what to do."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from corpus_fixtures import make_ravdess, write_audio
from emoadapt.cli import main
from emoadapt.corpora import load_corpus
from emoadapt.errors import CheckpointError, CorpusError, EmoadaptError, FeatureStoreError, TrainingError
from emoadapt.modelfolder import SHIPPED_MODELS, load_model
from emoadapt.store.verify import remove_parts, verify_store

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = SHIPPED_MODELS / "default"


def cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code


def manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A CSV corpus: (file, label, speaker) rows, each file a short tone; folds by speaker order."""
    folder.mkdir(parents=True, exist_ok=True)
    speakers = sorted({s.strip().casefold() for _, _, s in rows})
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker", "fold"])
        for k, (name, label, speaker) in enumerate(rows):
            write_audio(folder / name, 0.3, emotion=label.strip().lower(), seed=k)
            w.writerow([name, label, speaker, speakers.index(speaker.strip().casefold()) % 2 + 1])
    return folder


@pytest.fixture
def store_copy(trained, tmp_path):
    corpus, store, _, _ = trained
    shutil.copytree(corpus.root, tmp_path / "ravdess")
    shutil.copytree(store, tmp_path / "store")
    return tmp_path / "ravdess", tmp_path / "store"


# --- 1 and 10: index parts name only what the store wrote ---------------------------------------------------------
@pytest.mark.parametrize("target", ["../../../victim.txt", "absolute"])
def test_a_part_pointing_outside_the_store_is_damage_never_opened_or_removed(store_copy, tmp_path, capsys, target):
    corpus, store = store_copy
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    part = sorted((store / "shards").glob("r*-*.json"))[0]
    data = json.loads(part.read_text())
    data["shard"] = str(victim) if target == "absolute" else target
    part.write_text(json.dumps(data))
    found = verify_store(store)
    assert [name for name, _, _ in found.damaged] == [part.name] and "names the shard" in found.damaged[0][1]
    assert cli("finetune", "--corpus", corpus, "--store", store, "--fold", 1, "--recipe", "stats",
               "--out", tmp_path / "run", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "damaged index part" in err and "allow_pickle" not in err
    assert cli("extract", corpus, "--store", store, "--repair", "--encoder", "whisper-tiny.en", "--no-progress") == 0
    assert victim.read_text() == "keep me"
    assert not verify_store(store).damaged  # the batch was re-computed


def test_remove_parts_removes_only_names_the_store_writes(tmp_path):
    (tmp_path / "shards").mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    with pytest.raises(FeatureStoreError, match="not a name this store writes"):
        remove_parts(tmp_path, ["../outside.json"])
    assert outside.is_file()


@pytest.mark.parametrize("edit, reason", [
    (lambda p: p["entries"][0].pop("offset"), "has no 'offset'"),
    (lambda p: p.update(entries=None), "'entries' is None"),
    (lambda p: p.update(committed_ns="soon"), "'committed_ns' is 'soon'"),
    (lambda p: p["entries"][0].update(frames="many"), "'frames' is 'many'"),
])
def test_index_parts_of_the_wrong_shape_are_damage(store_copy, tmp_path, capsys, edit, reason):
    corpus, store = store_copy
    part = sorted((store / "shards").glob("r*-*.json"))[0]
    data = json.loads(part.read_text())
    edit(data)
    part.write_text(json.dumps(data))
    found = verify_store(store)
    assert len(found.damaged) == 1 and reason in found.damaged[0][1], found.damaged
    assert cli("cv", "--corpus", corpus, "--store", store, "--recipe", "stats", "--folds", 1,
               "--out", tmp_path / "cv", "--no-progress") == 2
    assert reason in capsys.readouterr().err


# --- 2, 6 and 8: corpus values ----------------------------------------------------------------------------------
def test_labels_and_speakers_are_stripped_and_spelling_variants_refused(tmp_path, capsys):
    spaced = manifest(tmp_path / "spaced", [("a.wav", "angry ", " s1"), ("b.wav", "sad", "s1 "), ("c.wav", " angry", "s2"),
                                            ("d.wav", "sad ", "s2")])
    corpus = load_corpus(spaced)
    assert corpus.labels == ["angry", "sad"] and {u.speaker for u in corpus.rows} == {"s1", "s2"}
    cased = manifest(tmp_path / "cased", [("a.wav", "angry", "Actor_01"), ("b.wav", "Angry", "actor_01"),
                                          ("c.wav", "sad", "s2"), ("d.wav", "SAD", "s2")])
    with pytest.raises(CorpusError, match="labels that differ only by case"):
        load_corpus(cased)
    assert cli("corpus", cased) == 1
    out = capsys.readouterr().out
    assert "'Angry' / 'angry'" in out and "'Actor_01' / 'actor_01'" in out and "problems: none" not in out


def test_a_manifest_with_only_a_header_is_refused(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "manifest.csv").write_text("path\n")
    assert cli("extract", folder, "--kind", "unlabeled", "--store", tmp_path / "store", "--encoder",
               "whisper-tiny.en", "--no-progress") == 2
    assert "no utterances" in capsys.readouterr().err and not (tmp_path / "store").exists()


def test_a_one_class_corpus_is_refused_and_listed(tmp_path, capsys):
    one = manifest(tmp_path / "one", [(f"{k}.wav", "angry", f"s{k % 2}") for k in range(4)])
    assert cli("corpus", one) == 1 and "only one class" in capsys.readouterr().out
    assert cli("cv", "--corpus", one, "--store", tmp_path / "s", "--recipe", "stats", "--out", tmp_path / "cv") == 2
    assert "only one class" in capsys.readouterr().err


def test_the_stats_fit_refuses_a_single_training_class():
    from emoadapt.training.closed_form import choose_and_fit
    x = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(TrainingError, match="only the class angry"):
        choose_and_fit((x, np.zeros(6, int)), (x, np.zeros(6, int)), ["angry", "sad"], [1.0])


# --- 3 and 4: a model's labels and its exports are bound to its weights ------------------------------------------
@pytest.mark.parametrize("edit, reason", [
    (lambda labels: labels[::-1], "differ from those saved with the weights"),
    (lambda labels: [labels[0], *labels[:-1]], "twice"),
    (lambda labels: "angry", "must be a list of class names"),
    (lambda labels: labels[:-1], "names 6 classes but the model has 7 outputs"),
    (lambda labels: [*labels, "bored", "calm"], "names 9 classes"),
    (lambda labels: [], "names 0 classes"),
])
def test_labels_edited_in_model_json_are_refused(tmp_path, edit, reason):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    info = json.loads((folder / "model.json").read_text())
    info["labels"] = edit(info["labels"])
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=reason):
        load_model(folder)


def test_an_onnx_head_from_another_model_is_refused(tmp_path):
    from emoadapt.inference.onnx import OnnxHead
    info = json.loads((SHIPPED / "model.json").read_text())
    head = OnnxHead.__new__(OnnxHead)  # what an export of another model with the same labels and encoder says
    head.path, head.labels, head.encoder = tmp_path / "model.onnx", info["labels"], info["encoder"]
    head.source_sha256 = "0" * 64
    with pytest.raises(EmoadaptError, match="exported from another model"):
        head.check_matches(info)
    head.source_sha256 = info["sha256"]
    head.check_matches(info)  # the same model: accepted


# --- 5 and 17: every warning reaches every output format ------------------------------------------------------------
def test_silence_and_a_low_sample_rate_are_warned_in_json_csv_and_the_table(tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 2, np.float32), 16000)
    low = tmp_path / "low.wav"
    t = np.arange(4000 * 2) / 4000
    sf.write(low, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 4000)
    assert cli("predict", silent, low, "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    notes = {Path(p["source"]).name: " ".join(p["warnings"]) for p in answer["predictions"]}
    assert "silent" in notes["silent.wav"] and "4000 Hz" in notes["low.wav"]
    assert cli("predict", silent, "--csv") == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert "silent" in rows[0]["warnings"]
    assert cli("predict", silent) == 0
    assert "warning:" in capsys.readouterr().out


# --- 7: uploads of a killed server do not linger ---------------------------------------------------------------------
def test_uploads_of_dead_servers_are_removed_at_start(tmp_path):
    from emoadapt.serve import UPLOADS_PREFIX, remove_stale_uploads
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{UPLOADS_PREFIX}{dead.stdout.strip()}-abc"
    alive = tmp_path / f"{UPLOADS_PREFIX}{os.getpid()}-def"
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "upload.flac").write_bytes(b"someone's voice")
    assert remove_stale_uploads(tmp_path) == [stale]
    assert not stale.exists() and (alive / "upload.flac").is_file()


# --- 9: a closed pipe ends quietly ----------------------------------------------------------------------------------
def test_a_closed_pipe_ends_quietly(tmp_path):
    corpus = make_ravdess(tmp_path / "ravdess", actors=24, emotions=(1, 3))
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-m", "emoadapt.cli", "corpus", str(corpus)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdout.close()  # the reader is gone before the first line
        err = p.stderr.read().decode()
        assert p.wait() in (0, 141) and "Traceback" not in err and "bug" not in err, err


# --- 12 to 17: messages and limits ------------------------------------------------------------------------------
def test_model_given_a_store_a_stage1_run_or_a_cv_run_says_what_it_is(store_copy, tmp_path, capsys):
    _, store = store_copy
    assert cli("predict", SHIPPED / "MODEL_CARD.md", "--model", store) == 2
    assert "a feature store" in capsys.readouterr().err
    stage1 = tmp_path / "stage1"
    shutil.copytree(SHIPPED, stage1 / "adapter")  # the layout of a pretrain run folder
    assert cli("export", "--model", stage1) == 2
    assert "stage-1 run" in capsys.readouterr().err
    cv = tmp_path / "cv"  # a cv run: fold folders, each with its model one level down
    shutil.copytree(SHIPPED, cv / "fold_1" / "model")
    (cv / "results.json").write_text("{}")
    from emoadapt.modelfolder import read_model_info
    with pytest.raises(CheckpointError, match="cross-validation run"):
        read_model_info(cv)


def test_too_long_names_the_flag_and_says_when_nothing_was_predicted(tmp_path, capsys):
    long = write_audio(tmp_path / "long.wav", 3.0)
    assert cli("predict", long, "--max-seconds", 1) == 1
    err = capsys.readouterr().err
    assert "--max-seconds" in err and "none was predicted" in err and "the others were predicted" not in err


def test_extract_caps_the_length_of_a_file(tmp_path):
    corpus = manifest(tmp_path / "c", [("a.wav", "angry", "s1"), ("b.wav", "sad", "s2")])
    write_audio(corpus / "a.wav", 3.0, emotion="angry")
    code = cli("extract", corpus, "--store", tmp_path / "store", "--encoder", "whisper-tiny.en", "--max-seconds", 1,
               "--no-progress")
    failures = (tmp_path / "store" / "failures.jsonl").read_text()
    assert code == 1 and "a.wav" in failures and "--max-seconds" in failures


def test_calibrate_takes_one_clip_given_alone(trained):
    from emoadapt import Recognizer
    corpus, _, models, _ = trained
    recognizer = Recognizer.from_pretrained(models["speaker"])
    with pytest.warns(UserWarning, match="reference of 1 clip"):
        recognizer.calibrate(corpus.rows[0].path)
    result = recognizer.predict(corpus.rows[1].path)
    assert result.normalization.startswith("speaker (reference of 1 clip") and any(
        "reference" in w for w in result.warnings)


def test_export_refuses_to_overwrite_a_file_it_was_not_told_to_replace(tmp_path, capsys):
    existing = tmp_path / "head.onnx"
    existing.write_bytes(b"precious")
    assert cli("export", "--model", SHIPPED, "--out", existing) == 2
    assert "--force" in capsys.readouterr().err and existing.read_bytes() == b"precious"


def test_ctrl_c_says_to_resume_only_where_work_is_kept(monkeypatch, capsys):
    from emoadapt.cli import commands

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(commands, "cmd_predict", interrupted)
    monkeypatch.setattr(commands, "cmd_cv", interrupted)
    assert cli("predict", "a.wav") == 130
    assert "nothing was kept" in capsys.readouterr().err
    assert cli("cv", "--corpus", "c", "--store", "s", "--recipe", "stats", "--out", "o") == 130
    assert "re-run the same command to resume" in capsys.readouterr().err


def test_a_client_that_leaves_mid_upload_is_one_log_line(caplog):
    import asyncio

    from fastapi import HTTPException
    from starlette.requests import ClientDisconnect

    from emoadapt.serve import _audio_bytes

    class Leaving:
        headers = {"content-type": "application/octet-stream"}
        client = None

        async def body(self):
            raise ClientDisconnect()

    with caplog.at_level("WARNING", logger="emoadapt.serve"), pytest.raises(HTTPException) as refused:
        asyncio.run(_audio_bytes(Leaving()))
    assert refused.value.status_code == 400
    assert [r.getMessage() for r in caplog.records] == ["a client disconnected during its upload; nothing was recognised"]

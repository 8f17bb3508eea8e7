"""The speech and confidence guard, label subsets and the timeline of continuous speech: the speech check on real
RAVDESS speech (clean, in white noise, quiet) against silence, noise, a tone and a fifth of a second; abstention and
subsets through the Recognizer, `emoadapt predict` (table, JSON, CSV) and the server; sliding windows and shares."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import soundfile as sf

from emoadapt import cli
from emoadapt.audio import load_audio
from emoadapt.errors import EmoadaptError
from emoadapt.inference.guard import NO_SPEECH_SECONDS, check_speech
from emoadapt.inference.segments import overall, pieces_of, shares, speech_segments, timeline, with_silence

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 16_000


@pytest.fixture(scope="module")
def sentences():
    from emoadapt.cli.paths import shared_corpus
    folder = shared_corpus("ravdess")
    if folder is None:
        pytest.skip("the shared RAVDESS corpus is not here")
    return [load_audio(p) for p in sorted((folder / "Actor_02").iterdir())[:4]]


def white(n: int, scale: float, seed: int = 0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_the_speech_check_hears_speech_in_noise_and_quiet_but_not_silence_noise_or_a_tone(sentences):
    for wave in sentences:
        clean = check_speech(wave)
        assert clean.flag == "speech" and clean.method == "vad" and 0.2 < clean.ratio < 0.9
        power = float(np.mean(wave ** 2))
        noisy = check_speech(wave + white(len(wave), np.sqrt(power / 10)))  # 10 dB SNR
        assert noisy.flag == "speech" and noisy.seconds > 0.7 * clean.seconds
        quiet = check_speech(wave * 0.003)  # about -50 dBFS: silero alone hears nothing
        assert quiet.flag == "speech" and quiet.method == "vad (level fallback)"
    five = 5 * SR
    t = np.arange(five) / SR
    start = speech_segments(sentences[0], max_seconds=float("inf"), pad_seconds=0.0)[0][0] + SR // 4
    fifth = sentences[0][start: start + SR // 5]  # from inside the speech (the clips begin with silence)
    assert np.abs(fifth).max() > 0.01
    for name, wave in {"silence": np.zeros(five, np.float32), "white noise": white(five, 0.1),
                       "tone": (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                       "a fifth of a second": fifth}.items():
        check = check_speech(wave)
        assert check.flag == "no_speech", name
        assert check.seconds < NO_SPEECH_SECONDS and "no label" in check.note, name


def test_no_label_for_silence_in_every_output(trained, tmp_path, capsys):
    from emoadapt import Recognizer
    _, _, models, encoder = trained
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(3 * SR, np.float32), SR)
    result = Recognizer.from_pretrained(models["global"], encoder=encoder).predict(str(silent))
    assert result.label is None and result.abstained == "no speech" and result.speech["flag"] == "no_speech"
    assert any("no speech" in w for w in result.warnings) and sum(result.probabilities.values()) == pytest.approx(1)
    assert cli.main(["predict", str(silent), "--model", str(models["global"]), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)["predictions"][0]
    assert answer["label"] is None and answer["abstained"] == "no speech" and answer["speech"]["ratio"] == 0
    assert cli.main(["predict", str(silent), "--model", str(models["global"]), "--csv"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["label"] == "" and row["abstained"] == "no speech" and row["speech_flag"] == "no_speech"
    assert "no speech" in row["warnings"]
    assert cli.main(["predict", str(silent), "--model", str(models["global"])]) == 0
    table = capsys.readouterr().out
    assert "no label: no speech" in table and "warning: no speech" in table
    # the tone fixture is no speech either: with the check off, its labels come back
    assert cli.main(["predict", str(silent), "--model", str(models["global"]), "--json", "--no-speech-check"]) == 0
    answer = json.loads(capsys.readouterr().out)["predictions"][0]
    assert answer["label"] is not None and answer["speech"] is None


def softened(recognizer):
    """The tone fixture's model is sure of every clip (probabilities 1.0): a high temperature makes it unsure."""
    from emoadapt.calibration.temperature import apply_temperature
    apply_temperature(recognizer.head, 30.0)
    return recognizer


def test_abstention_and_label_subsets(trained, tmp_path, capsys):
    from emoadapt import Recognizer
    corpus, _, models, encoder = trained
    clips = [u.path for u in corpus.rows if u.speaker == "Actor_01"]
    plain = softened(Recognizer.from_pretrained(models["global"], encoder=encoder, speech_check=False)).predict(clips)
    top = [max(r.probabilities.values()) for r in plain]
    threshold = float(np.median(top))
    assert 0.3 < threshold < 0.99  # some clips on either side
    guarded = softened(Recognizer.from_pretrained(models["global"], encoder=encoder, speech_check=False,
                                                  abstain_below=threshold)).predict(clips)
    assert any(g.label is None for g in guarded) and any(g.label for g in guarded)
    for p, g, best in zip(plain, guarded, top):
        assert (g.label is None) == (best < threshold) and g.probabilities == p.probabilities
        assert g.label is None or g.label == p.label
        if g.label is None:
            assert f"below the threshold {threshold:.2f}" in g.abstained
    recognizer = softened(Recognizer.from_pretrained(models["global"], encoder=encoder, speech_check=False))
    sub = recognizer.predict(clips[0], labels=["sad", "angry"])
    assert list(sub.probabilities) == ["angry", "sad"] and sub.subset == ["angry", "sad"]  # the model's order
    full = plain[0].probabilities
    assert sum(sub.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert sub.probabilities["angry"] / sub.probabilities["sad"] == pytest.approx(full["angry"] / full["sad"],
                                                                                  rel=1e-3)
    assert sub.label == max(("angry", "sad"), key=full.get)
    sharp = Recognizer.from_pretrained(models["global"], encoder=encoder, speech_check=False)
    from emoadapt.calibration.temperature import apply_temperature
    apply_temperature(sharp.head, 1e-3)  # logits x1000: every class but the top underflows to exactly 0
    least = sorted(full, key=full.get)[:2]
    none = sharp.predict(clips[0], labels=least)
    assert list(none.probabilities.values()) == [0.5, 0.5]
    assert any("no probability at all here; they are shown as even" in w for w in none.warnings)
    for bad, reason in ((["angry", "joy"], "'joy' is not a class"), (["angry"], "two or more"),
                        (["sad", "sad"], "two or more")):
        with pytest.raises(EmoadaptError, match=reason):
            recognizer.predict(clips[0], labels=bad)
    args = ["predict", *clips[:2], "--model", str(models["global"]), "--no-speech-check", "--labels", "sad,happy"]
    assert cli.main([*args, "--csv"]) == 0
    header = next(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [c for c in header if c.startswith("p_")] == ["p_happy", "p_sad"]
    assert cli.main(args) == 0
    assert "labels: happy, sad only (probabilities renormalised over them)" in capsys.readouterr().out
    assert cli.main([*args[:-1], "happy,joy"]) == 2
    assert "'joy' is not a class" in capsys.readouterr().err


def test_the_server_takes_labels_and_abstain_per_request(trained):
    from fastapi.testclient import TestClient

    from emoadapt import Recognizer
    from emoadapt.serve import create_app
    corpus, _, models, encoder = trained
    recognizer = softened(Recognizer.from_pretrained(models["global"], encoder=encoder, speech_check=False))
    client = TestClient(create_app(recognizer))
    clip = next(u.path for u in corpus.rows if u.speaker == "Actor_01")
    data = open(clip, "rb").read()
    answer = client.post("/predict?labels=sad,neutral", content=data, headers={"content-type": "audio/wav"}).json()
    assert answer["subset"] == ["neutral", "sad"] and set(answer["probabilities"]) == {"neutral", "sad"}
    top = max(recognizer.predict(clip).probabilities.values())
    answer = client.post("/predict", files={"file": ("a.wav", data)}, data={"abstain": f"{(1 + top) / 2}"}).json()
    assert answer["label"] is None and "below the threshold" in answer["abstained"]
    assert client.post("/predict", content=data).json()["label"] is not None  # the threshold was that request's
    for query, reason in (("labels=joy,sad", "'joy' is not a class"), ("abstain=2", "abstain '2'")):
        response = client.post(f"/predict?{query}", content=data)
        assert response.status_code == 422 and reason in response.json()["detail"]


def test_sliding_windows_cover_continuous_speech_and_the_timeline_joins_them(sentences):
    continuous = np.concatenate(sentences * 3)  # about 40 s with the sentences' own short pauses
    windows, windowed = pieces_of(continuous, window_seconds=10.0, pad_seconds=0.1, min_samples=400,
                                  span_seconds=2.0, hop_seconds=0.5)
    assert all(b - a <= 2 * SR for a, b in windows) and max(b - a for a, b in windows) == 2 * SR
    assert all(b - a == 2 * SR for (a, b), w in zip(windows, windowed) if w) and any(windowed)
    assert len(with_silence(continuous[:SR], 1.0)) == 3 * SR
    overlapping = [(a1, a2) for (a1, b1), (a2, _) in zip(windows, windows[1:]) if a2 < b1]
    assert overlapping and all(a2 - a1 <= SR // 2 for a1, a2 in overlapping)  # a window every hop
    assert pieces_of(continuous[: 8 * SR], window_seconds=10.0, pad_seconds=0.1, min_samples=400,
                     span_seconds=2.0, hop_seconds=0.5) == ([(0, 8 * SR)], [False])  # up to the window: whole
    pieces = [(0, 4 * SR), (SR, 5 * SR), (2 * SR, 6 * SR)]  # windows of one 6 s stretch, a second apart
    values = np.array([[0.9, 0.1], [0.6, 0.4], [0.1, 0.9]])
    segments = timeline(values, pieces)
    # six one-second cells; the first four lean to class 0 (the third and fourth: the mean of all three windows)
    assert [(a, b) for a, b, _ in segments] == [(0, 4 * SR), (4 * SR, 6 * SR)]
    first, second = segments[0][2], segments[1][2]
    assert first.argmax() == 0 and second.argmax() == 1
    cells = [values[[0]].mean(0), values[[0, 1]].mean(0), values[[0, 1, 2]].mean(0), values[[0, 1, 2]].mean(0),
             values[[1, 2]].mean(0), values[[2]].mean(0)]
    assert np.allclose(overall(values, pieces), np.mean(cells, 0), atol=1e-6)  # each second counts once
    assert shares(segments, ["a", "b"]) == {"a": 0.6667, "b": 0.3333}


def test_a_long_recording_of_mixed_speech_is_flagged_mixed_and_gets_no_single_label(trained, sentences):
    from emoadapt import Recognizer
    _, _, models, encoder = trained
    gap = np.zeros(SR, np.float32)
    long = np.concatenate([np.concatenate([s, gap]) for s in sentences * 3])
    recognizer = Recognizer.from_pretrained(models["global"], encoder=encoder, window_seconds=1.0,
                                            span_seconds=1.0, hop_seconds=0.5)
    result = recognizer.predict(long, sample_rate=16000)
    assert result.segments and result.speech["flag"] == "speech"
    assert sum(result.shares.values()) == pytest.approx(1, abs=1e-3)
    assert all(b.start >= a.end for a, b in zip(result.segments, result.segments[1:]))
    top = max(result.shares.values())
    assert result.mixed == (top < 0.5)
    if result.mixed:
        assert result.label is None and result.abstained.startswith("mixed")
    else:
        assert result.label == max(result.shares, key=result.shares.get)
    with pytest.raises(EmoadaptError, match="need 0 < hop <= span"):
        Recognizer.from_pretrained(models["global"], encoder=encoder, span_seconds=1.0, hop_seconds=2.0)

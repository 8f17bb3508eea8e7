"""What the speech and confidence guard does to the shipped model's answers, without it and with it, in one run.

    python bench/guard.py [--model default] [--ivr /usr/share/asterisk/sounds/en] [--out docs/results/guard.json]

Inputs: 5 s of digital silence, of white noise and of a 440 Hz tone; a fifth of a second cut from a RAVDESS
sentence; the held-out actor's 52 RAVDESS clips, clean and in white noise at 10 dB SNR (to count the labels the
guard takes from real speech); and the IVR prompts of Debian's ``asterisk-core-sounds-en-wav`` (one calm speaker
reading phone prompts; skipped when the package is not installed). For each, without the guard
(``speech_check=False``) and with it: the labels given (``none``: no label), the median top probability of the
labels given, and the speech flags.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import git_commit, machine_info  # noqa: E402  (bench/ is not a package)

from emoadapt.atomic import atomic_write_json  # noqa: E402
from emoadapt.audio import SAMPLE_RATE, load_audio  # noqa: E402
from emoadapt.cli.paths import shared_corpus  # noqa: E402
from emoadapt.corpora import load_corpus, read_label_map  # noqa: E402
from emoadapt.inference import Recognizer  # noqa: E402
from emoadapt.inference.segments import speech_segments  # noqa: E402


def fifth_of_a_second(wave: np.ndarray) -> np.ndarray:
    """0.2 s from inside the first stretch of speech the detector hears (the clips begin with silence)."""
    start = speech_segments(wave, max_seconds=float("inf"), pad_seconds=0.0)[0][0] + SAMPLE_RATE // 4
    return wave[start: start + SAMPLE_RATE // 5]


def summary(results) -> dict:
    labels = Counter(r.label or "none" for r in results)
    given = [max(r.probabilities.values()) for r in results if r.label]
    flags = Counter(r.speech["flag"] for r in results if r.speech)
    return {"n": len(results), "labels": dict(labels.most_common()),
            "median_top_probability": round(float(np.median(given)), 3) if given else None,
            "speech_flags": dict(flags)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--actor", default="Actor_01")
    parser.add_argument("--ivr", default="/usr/share/asterisk/sounds/en")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args(argv)
    folder = shared_corpus("ravdess")
    if folder is None:
        sys.exit("bench/guard.py: the shared RAVDESS corpus is not here (../shared/data or $EMOADAPT_DATA)")
    rng = np.random.default_rng(0)
    corpus = load_corpus(folder)
    rename = read_label_map("shared7").rename
    clips = [load_audio(u.path) for u in corpus.rows
             if u.speaker == args.actor and rename.get(("ravdess", u.label)) is not None]
    five = 5 * SAMPLE_RATE
    t = np.arange(five) / SAMPLE_RATE

    def noisy(wave):
        scale = np.sqrt(np.mean(wave ** 2) / 10)
        return (wave + scale * rng.standard_normal(len(wave))).astype(np.float32)

    inputs = {
        "silence 5 s": [np.zeros(five, np.float32)],
        "white noise 5 s": [(0.1 * rng.standard_normal(five)).astype(np.float32)],
        "tone 440 Hz 5 s": [(0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)],
        "0.2 s of speech": [fifth_of_a_second(clips[0])],
        f"RAVDESS {args.actor} clean": clips,
        f"RAVDESS {args.actor}, white noise 10 dB": [noisy(c) for c in clips],
    }
    ivr = sorted(Path(args.ivr).glob("*.wav")) if Path(args.ivr).is_dir() else []
    if ivr:
        inputs["IVR prompts (asterisk-core-sounds-en-wav)"] = [str(p) for p in ivr]
    without = Recognizer.from_pretrained(args.model, speech_check=False)
    guarded = Recognizer.from_pretrained(args.model)
    rows = {}
    for name, audio in inputs.items():
        rows[name] = {"without": summary(without.predict(list(audio), sample_rate=SAMPLE_RATE)),
                      "with": summary(guarded.predict(list(audio), sample_rate=SAMPLE_RATE))}
        print(f"{name}: without {rows[name]['without']}\n{'':{len(name)}}  with    {rows[name]['with']}", flush=True)
    result = {"model": str(guarded.model_dir), "rows": rows, "git": git_commit(), "machine": machine_info()}
    if args.out:
        atomic_write_json(result, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

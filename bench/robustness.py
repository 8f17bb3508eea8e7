"""How models hold up under real recording conditions: UA on a held-out corpus, and agreement with each model's own
label for the clean clip, under every condition of :mod:`emoadapt.conditions`, model against model in one run.

    python bench/robustness.py [--model default --model runs/loco/stats-choose-corpus/fold_1/model]
                               [--corpus ased] [--speakers A,B,...] [--per-class 30] [--out docs/results/robustness.json]

The clips: ``--per-class`` of each class (seed 0) from half of the corpus's speakers (or from ``--speakers``: e.g.
those a model was never trained on); babble is made of four clips at once from the other speakers, so no clip hears
its own speaker; music is every other track of the ``fillets-ng-data`` soundtrack (Debian; the condition is skipped
without it): the tracks augmentation mixes in (``tools/build_shipped_model.py``) are the others, so this music is
never heard in training. Every model reads the same degraded audio. UA is closed over the corpus's
classes (``predict(labels=...)``); the guard is off (``speech_check=False``) so that every clip gets a label: this
measures the classifier, ``bench/guard.py`` the guard. Goals (issue 21) under white noise and babble at 10 dB and
the telephone band: UA >= 85 % of clean UA and agreement >= 80 %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import recall_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import git_commit, machine_info  # noqa: E402  (bench/ is not a package)

from emoadapt.atomic import atomic_write_json  # noqa: E402
from emoadapt.audio import SAMPLE_RATE, load_audio  # noqa: E402
from emoadapt.cli.paths import shared_corpus  # noqa: E402
from emoadapt.conditions import CONDITIONS, NoiseSources, degrade  # noqa: E402
from emoadapt.corpora import load_corpus  # noqa: E402
from emoadapt.errors import EmoadaptError  # noqa: E402
from emoadapt.inference import Recognizer  # noqa: E402

GOALS = ("white noise 10 dB", "babble 10 dB", "telephone (300-3400 Hz, 8 kHz, mu-law)")
MUSIC = Path("/usr/share/games/fillets-ng/music")


def sample(corpus, per_class: int, seed: int, speakers: list[str] | None = None):
    """(clips, babble pool): ``per_class`` clips of each class from the even-numbered speakers (sorted), or from
    ``speakers``; the pool from the other speakers."""
    every = sorted({u.speaker for u in corpus.rows})
    if speakers:
        unknown = sorted(set(speakers) - set(every))
        if unknown:
            sys.exit(f"bench/robustness.py: no speaker {unknown[0]!r} in {corpus.name}; its speakers: "
                     f"{', '.join(every[:8])} ...")
        chosen, others = set(speakers), set(every) - set(speakers)
    else:
        chosen, others = set(every[0::2]), set(every[1::2])
    rng = np.random.default_rng(seed)
    clips = []
    for label in sorted({u.label for u in corpus.rows}):
        rows = [u for u in corpus.rows if u.label == label and u.speaker in chosen]
        clips += [rows[i] for i in sorted(rng.choice(len(rows), min(per_class, len(rows)), replace=False))]
    pool = [u for u in corpus.rows if u.speaker in others]
    pool = [pool[i] for i in sorted(rng.choice(len(pool), min(200, len(pool)), replace=False))]
    return clips, pool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="a model folder or shipped name (repeat; default: default)")
    parser.add_argument("--corpus", default="ased", help="a corpus of ../shared/data, or a corpus folder")
    parser.add_argument("--speakers", help="comma-separated speakers to draw the clips from (default: every other one)")
    parser.add_argument("--label-map", default="shared7", help="label map to read the corpus with ('none': as it is, "
                        "e.g. a corpus made by emoadapt merge)")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args(argv)
    folder = shared_corpus(args.corpus) or Path(args.corpus)
    if not folder.is_dir():
        sys.exit(f"bench/robustness.py: no corpus {args.corpus!r} (../shared/data or $EMOADAPT_DATA, or a folder)")
    try:  # before the audio is read: a wrong model name fails at once
        models = {name: Recognizer.from_pretrained(name, speech_check=False) for name in (args.model or ["default"])}
    except EmoadaptError as error:
        sys.exit(f"bench/robustness.py: {error}")
    corpus = load_corpus(folder, label_map=None if args.label_map == "none" else args.label_map)
    rows, pool = sample(corpus, args.per_class, args.seed, args.speakers.split(",") if args.speakers else None)
    clean = [load_audio(u.path) for u in rows]
    truth = [u.label for u in rows]
    classes = sorted(set(truth))
    music = [load_audio(p) for p in sorted(MUSIC.glob("*.ogg"))[0::2]] if MUSIC.is_dir() else []
    sources = NoiseSources(speech=[load_audio(u.path) for u in pool], music=music)
    names = ["clean"] + [c for c in CONDITIONS if music or not c.startswith("music")]
    print(f"{len(rows)} clips of {corpus.name} ({', '.join(classes)}), {len(pool)} babble clips, "
          f"{len(music)} music tracks; models: {', '.join(models)}", flush=True)
    scores: dict[str, dict[str, dict]] = {m: {} for m in models}
    reference: dict[str, list[str]] = {}
    for k, condition in enumerate(names):
        audio = clean if condition == "clean" else [degrade(w, condition, seed=args.seed * 100_000 + 1000 * k + i,
                                                            sources=sources) for i, w in enumerate(clean)]
        for name, recognizer in models.items():
            labels = [p.label for p in recognizer.predict(list(audio), SAMPLE_RATE, labels=classes)]
            if condition == "clean":
                reference[name] = labels
            ua = 100 * recall_score(truth, labels, labels=classes, average="macro", zero_division=0)
            row = {"ua": round(ua, 2), "agreement": round(100 * float(np.mean(
                [a == b for a, b in zip(labels, reference[name])])), 2)}
            row["ua_of_clean"] = round(100 * ua / max(scores[name].get("clean", {"ua": ua})["ua"], 1e-9), 1)
            if condition in GOALS:
                row["goal_met"] = row["ua_of_clean"] >= 85 and row["agreement"] >= 80
            scores[name][condition] = row
            print(f"{condition:40s} {name[-40:]:40s} UA {row['ua']:6.2f} ({row['ua_of_clean']:5.1f} % of clean)  "
                  f"agreement {row['agreement']:6.2f} %", flush=True)
    result = {"corpus": corpus.name, "clips": len(rows), "per_class": args.per_class, "classes": classes,
              "seed": args.seed, "models": {name: str(r.model_dir) for name, r in models.items()},
              "scores": scores, "goals": list(GOALS), "git": git_commit(), "machine": machine_info()}
    if args.out:
        atomic_write_json(result, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

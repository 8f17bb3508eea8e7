"""`emoadapt demo`: the main job on the embedded default encoder (Whisper-base) over RAVDESS, in three steps: the
shipped model on an actor it never heard, feature extraction, and one fold trained and tested."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import CorpusError
from .paths import ENV_VAR, default_data_root


def _resolve_data_root(flag: str | None) -> Path:
    if flag:
        return Path(flag).expanduser()
    root = default_data_root()
    if root is None:
        raise CorpusError(None, f"no data found: pass --data PATH (a folder holding ravdess/) or set {ENV_VAR}; "
                                f"developers and CI find it at ../shared/data beside the checkout")
    return root


def run_demo(args, *, device: str = "cpu", encoder_options: dict | None = None) -> int:
    """The main job on the embedded default encoder (Whisper-base) over RAVDESS: the shipped model labels the clips
    of an actor it never heard, then features are extracted once and one fold is trained and tested with a fast
    recipe (``stats`` by default; ``--recipe full`` runs the method with the CPU-sized ``demo-cpu`` config)."""
    from ..corpora import load_corpus, summarize
    from ..encoders import load_encoder
    from ..store.extract import extract
    root = _resolve_data_root(args.data)
    corpus_dir = root / "ravdess" if (root / "ravdess").is_dir() else root
    corpus = load_corpus(corpus_dir)
    print(summarize(corpus))
    if not args.extract_only:
        _demo_shipped_model(corpus, args)
    if args.limit:  # a quick check: clips spread evenly over the corpus, so every fold keeps its speakers
        step = max(1, len(corpus.rows) // args.limit)
        rows = corpus.rows[::step][: args.limit]
        corpus = dataclasses.replace(corpus, rows=rows, folds=corpus.folds.restrict(r.id for r in rows))
    rows = corpus.rows
    encoder = load_encoder(args.encoder, device=device, **(encoder_options or {}))
    # one store per corpus x encoder setting: a store refuses to mix encoders, so the folder name says which
    store = Path(args.workdir) / "features" / f"{corpus.name}-{encoder.name}{'-pad30' if args.pad_to_30s else ''}"
    print(f"\n[2/3] extracting {len(rows)} clips with {encoder.fingerprint} into {store}", flush=True)
    report = extract(rows, encoder, store, batch_size=args.batch_size, progress=not args.no_progress)
    print(report)
    if report.failures:
        return 1
    if args.extract_only:
        return 0

    from ..training.crossval import run_cv
    from ..training.settings import load_config
    config_file = args.config or "demo-cpu"
    config = load_config(config_file, args.overrides)
    run_dir = Path(args.workdir) / f"cv-{corpus.name}-{encoder.name}-{args.recipe}-fold{args.fold}"
    print(f"\n[3/3] fold {args.fold}: recipe {args.recipe} trained on the fold's training speakers, tested on its "
          f"test speakers; config {config_file}; run folder {run_dir}", flush=True)
    results = run_cv(corpus, store, args.recipe, run_dir, folds=[args.fold], config=config,
                     progress=not args.no_progress)
    scores = results["folds"][str(args.fold)] if "folds" in results else None
    print(f"\nRAVDESS fold {args.fold} test ({corpus.view}, recipe {args.recipe}, Whisper-base; not comparable with "
          f"the paper's HuBERT-large IEMOCAP numbers):")
    if scores:
        print(f"  UA {scores['ua']:.2f}  WA {scores['wa']:.2f}  macro-F1 {scores['macro_f1']:.2f}")
    print(f"  results:          {run_dir / 'results.json'}")
    print(f"  confusion matrix: {run_dir / 'confusion.png'}")
    return 0


def _demo_shipped_model(corpus, args) -> None:
    """[1/3]: the model shipped with emoadapt labels every clip of the RAVDESS actor held out of its training."""
    from ..corpora import read_label_map
    from ..inference import Recognizer
    from ..modelfolder import build_record
    record = build_record()
    if record is None:
        print("\n[1/3] no model is shipped in this installation (`make model` builds one): skipped")
        return
    actor = record["held_out"].split(":", 1)[1]
    clips = [u for u in corpus.rows if u.speaker == actor][: args.limit or None]
    recognizer = Recognizer.from_pretrained("default", batch_size=args.batch_size)
    rename = read_label_map(record["label_map"]).rename
    print(f"\n[1/3] the shipped model (emoadapt/modelfolder/shipped_models/default, see its MODEL_CARD.md) on the "
          f"{len(clips)} clips of RAVDESS {actor}, whom it never heard:", flush=True)
    right = counted = 0
    for u, r in zip(clips, recognizer.predict_each([u.path for u in clips])):
        if isinstance(r, Exception):
            print(f"  {Path(u.path).name}  failed: {r}")
            continue
        true = rename.get(("ravdess", u.label))
        counted += true is not None
        right += true == r.label
        top, p = r.top(1)[0]
        print(f"  {Path(u.path).name}  true {u.label:<9} -> {r.label or 'no label':<9} {p:.2f}"
              + (f" ({top}; {r.abstained})" if r.abstained else "")
              + ("" if true is not None else "  (calm: not one of the model's classes)"))
    if counted:
        print(f"  {right} of {counted} right on the model's classes ({100 * right / counted:.1f} %; chance "
              f"{100 / len(recognizer.labels):.1f} %)")

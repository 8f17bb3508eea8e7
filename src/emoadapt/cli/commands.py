"""What each `emoadapt` verb does: parse-level values turned into settings, then one call into the Python API."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import EmoadaptError


def _corpus(args, strict: bool = True):
    from ..corpora import load_corpus
    return load_corpus(args.corpus, kind=args.kind, view=args.view, strict=strict, label_map=args.label_map)


def _encoder_options(args) -> dict:
    return {"pad_to_30s": True} if args.pad_to_30s else {}


def _device(args) -> str:
    """--device, checked before anything loads. Under torchrun each rank takes its own GPU: plain "cuda" becomes
    cuda:$LOCAL_RANK."""
    from ..devices import check_device
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    return check_device(device)


def cmd_corpus(args) -> int:
    """Loads leniently so that a broken corpus still gets its summary, with the problems listed; exits 1 if any."""
    from ..corpora import summarize
    corpus = _corpus(args, strict=False)
    print(summarize(corpus))
    return 1 if corpus.problems else 0


def cmd_extract(args) -> int:
    from ..encoders import load_encoder
    from ..store.extract import extract
    corpus = _corpus(args, strict=False)  # a missing or empty file is listed and skipped, never blocks the rest
    for problem in corpus.problems:
        print(f"emoadapt extract: skipped: {problem}", file=sys.stderr)
    rows = corpus.rows[: args.limit] if args.limit else corpus.rows
    if args.verify or args.repair:
        from ..store.verify import remove_parts, verify_store
        if not Path(args.store, "meta.json").is_file():
            raise EmoadaptError(args.store, "no feature store here to verify")
        found = verify_store(args.store, rows)
        print(found)
        if not args.repair:
            return 0 if found.ok else 1
        # damaged batches are dropped; extraction below then re-computes them and every changed audio file
        remove_parts(args.store, [part for part, _, _ in found.damaged])
    augmentation = None
    if args.augment is not None or args.augment_noise:
        from ..store.augment import parse_augmentation
        augmentation = parse_augmentation(args.augment or "", args.augment_noise)
    encoder = load_encoder(args.encoder, device=_device(args), **_encoder_options(args))
    layers = args.layers or None
    report = extract(rows, encoder, args.store, layers=layers, batch_size=args.batch_size,
                     rank=args.rank, world_size=args.world_size, retry_failed=args.retry_failed,
                     max_seconds=args.max_seconds, augmentation=augmentation,
                     progress=not args.no_progress)
    print(report)
    return 1 if report.failures or corpus.problems else 0


# --- training verbs (pretrain, finetune, evaluate, cv): thin wrappers over emoadapt.training --
def _run_config(args):
    from ..training.settings import load_config
    flags = {"seed": args.seed, "normalize": args.normalize, "stage2.batch_size": args.batch_size, "pretrain.batch_size": args.batch_size,
             "pretrain.epochs": getattr(args, "pretrain_epochs", None), "stage2.epochs": getattr(args, "epochs", None),
             "stage2.lr": getattr(args, "lr", None), "trainer.accelerator": args.accelerator,
             "trainer.devices": args.devices, "trainer.strategy": args.strategy,
             "trainer.num_workers": args.num_workers}
    for loss in ("mask", "sd", "la"):
        if getattr(args, f"no_{loss}_loss", False):
            flags[f"pretrain.{loss}_weight"] = 0
    sets = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(args.config, [*sets, *args.overrides])


def _folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EmoadaptError(None, f"--folds {text!r}: expected fold numbers separated by commas, e.g. 1,2") from None


def cmd_pretrain(args) -> int:
    from ..calibration import make_normalizer
    from ..modelfolder import speakers_of
    from ..store.dataset import open_store, usable_ids
    from ..training.data import split_fold
    from ..training.stage1 import pretrain
    config = _run_config(args)
    ids, speakers, normalizer = None, None, None
    if args.fold is not None and not args.corpus:
        raise EmoadaptError(None, "--fold needs --corpus (the fold's training speakers are taken from it)")
    if args.corpus:
        corpus = _corpus(args)
        first = open_store(args.store[0])
        chosen = (split_fold(corpus, first, args.fold, config)["train"] if args.fold is not None
                  else usable_ids(corpus, first, [u.id for u in corpus.rows])[0])
        ids, speakers = [chosen, *[None] * (len(args.store) - 1)], speakers_of(corpus)
        normalizer = make_normalizer(config, corpus, first)  # --normalize speaker: the corpus names the speakers
    adapter = pretrain(args.store, args.out, ids=ids, config=config, speakers=speakers, normalizer=normalizer,
                       progress=not args.no_progress)
    print(f"stage-1 teacher adapter: {adapter}")
    return 0


def cmd_finetune(args) -> int:
    from ..training.metrics import Scores
    from ..training.stage2 import finetune
    corpus = _corpus(args)
    results = finetune(corpus, args.store, args.fold, args.out, recipe=args.recipe, config=_run_config(args),
                       init=args.init, progress=not args.no_progress, augmented=args.augmented_store)
    chosen = f"best val UA {results['best_val_ua']}, epoch {results['best_epoch']}"
    if results["scores"] is None:
        print(f"trained on every speaker of {corpus.name}, nothing tested ({chosen})")
    else:
        print(f"fold {args.fold} test: {Scores(**results['scores']).line()}  ({chosen})")
    print(f"model: {Path(args.out) / 'model'}  results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..training.evaluate import evaluate
    from ..training.metrics import Scores
    corpus = _corpus(args)
    reference = {k: v for k, v in (("scope", args.reference), ("clips", args.reference_clips),
                                   ("only_label", args.reference_label), ("shrink", args.shrink),
                                   ("spread", args.spread), ("remove_emotion", args.remove_emotion)) if v is not None}
    results = evaluate(args.model, corpus, args.store, args.fold, batch_size=args.batch_size, out=args.out,
                       protocol=args.protocol, reference=reference or None)
    print(f"{corpus.name}" + (f" fold {args.fold}" if args.fold is not None else "") +
          f": {Scores(**results['scores']).line()}")
    if results["scores_closed"]["confusion"] != results["scores"]["confusion"]:
        print(f"closed over the test classes: {Scores(**results['scores_closed']).line()}")
    print(f"results: {results['path']}")
    return 0


def cmd_merge(args) -> int:
    from ..corpora import load_corpus, merge_corpora, summarize, write_manifest
    corpora = [load_corpus(c, label_map=args.label_map) for c in args.corpora]
    merged = merge_corpora(corpora, name=Path(args.out).name)
    path = write_manifest(merged.rows, Path(args.out) / "manifest.csv")
    print(summarize(load_corpus(path.parent)))
    print(f"written: {path}")
    return 0


def cmd_predict(args) -> int:
    from .predict import run_predict
    return run_predict(args)


def cmd_export(args) -> int:
    if args.format == "hub":
        return _export_hub(args)
    from ..inference.onnx import export_onnx
    if args.out and Path(args.out).exists() and not args.force:
        raise EmoadaptError(args.out, "exists; choose another --out, or pass --force to replace it")
    report = export_onnx(args.model, args.out)
    print(f"written: {report['path']} ({report['bytes'] / 2**20:.1f} MiB; classes {', '.join(report['labels'])}); "
          f"onnxruntime vs torch on a padded test batch: max abs difference {report['max_abs_difference']:.2e}")
    if args.encoder:
        from ..inference import load_classifier, model_encoder
        from ..inference.onnx import export_encoder_onnx
        encoder = export_encoder_onnx(model_encoder(load_classifier(args.model)),
                                      Path(report["path"]).with_name("encoder.onnx"))
        print(f"written: {encoder['path']} ({encoder['bytes'] / 2**20:.1f} MiB); onnxruntime vs torch on 5 s of "
              f"audio: max abs difference {encoder['max_abs_difference']:.2e} (values up to "
              f"{encoder['max_abs_value']:.0f})")
    return 0


def _export_hub(args) -> int:
    from ..modelfolder import resolve_model
    from ..modelfolder.hub import save_pretrained
    if not args.out:
        raise EmoadaptError(None, "--format hub needs --out: the folder to write the Hub repository into")
    if args.encoder:
        raise EmoadaptError(None, "--encoder applies to --format onnx; export the ONNX files first, then --format hub "
                                  "carries them")
    out = save_pretrained(resolve_model(args.model), args.out, license=args.license, datasets=args.datasets,
                          results=args.results, force=args.force)
    print(f"written: {out} (a Hugging Face Hub repository: {', '.join(sorted(p.name for p in out.iterdir()))}); "
          f"upload it with: emoadapt push {out} --repo OWNER/NAME")
    return 0


def cmd_push(args) -> int:
    from ..modelfolder.hub import push
    url = push(args.folder, args.repo, private=args.private, revision=args.revision)
    print(f"pushed: {url}  (use it with: emoadapt predict AUDIO --model {args.repo})")
    return 0


def cmd_serve(args) -> int:
    from ..serve import serve
    from .parser import recognizer_options
    serve(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
          max_concurrent=args.max_concurrent, window_seconds=args.window, queue_seconds=args.queue_seconds,
          header_timeout=args.header_timeout, **recognizer_options(args))
    return 0


def cmd_cv(args) -> int:
    from ..training.crossval import run_cv
    corpus = _corpus(args)
    run_cv(corpus, args.store, args.recipe, args.out, folds=_folds(args.folds), config=_run_config(args),
           extra_unlabeled_stores=args.unlabeled_store, stage1=args.stage1, protocol=args.protocol,
           progress=not args.no_progress, augmented=args.augmented_store, final=args.final,
           stage1_from=args.stage1_from)
    print(f"results: {Path(args.out) / 'results.json'}  confusion: {Path(args.out) / 'confusion.png'}")
    if args.final:
        print(f"model to deploy: {Path(args.out) / 'final'}  (emoadapt predict AUDIO --model {Path(args.out) / 'final'})")
    return 0


def cmd_compare(args) -> int:
    from ..atomic import atomic_write_json
    from ..training.reports import compare_runs, compare_table, paired_table
    try:
        rows = compare_runs(args.runs)
    except ValueError as error:
        raise EmoadaptError(None, str(error)) from None
    print(compare_table(rows))
    if args.baseline is not None:
        if not 1 <= args.baseline <= len(rows):
            raise EmoadaptError(None, f"--baseline {args.baseline}: the table has rows 1 to {len(rows)}")
        print()
        print(paired_table(rows, args.baseline - 1))
    if args.json:
        atomic_write_json({"rows": rows}, args.json)
        print(f"written: {args.json}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args, device=_device(args), encoder_options=_encoder_options(args))



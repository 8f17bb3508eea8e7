"""The `emoadapt` command line: every verb's flags, their types and help. The parser knows no behaviour: each
verb names its command (``args.command``), which :mod:`emoadapt.cli.commands` runs."""
from __future__ import annotations

import argparse

from .paths import ENV_VAR

RECIPES_HELP = ("stats (recommended: each layer's mean and std pooled into a logistic regression, fitted in closed "
                "form, the best mean UA in docs/RESULTS.md), full (the paper's method: stage 1 on the training speakers' "
                "audio, then the adapter from its teacher), adapter (stage 2 alone), superb or emobox (the "
                "benchmarks' probes)")


def _add_corpus_args(parser: argparse.ArgumentParser, *, positional: bool = True, required: bool = True) -> None:
    what = "corpus folder, manifest CSV or EmoBox JSONL"
    if positional:
        parser.add_argument("corpus", help=what)
    else:
        parser.add_argument("--corpus", required=required, help=what)
    parser.add_argument("--kind", help="corpus kind (ravdess, emovo, cremad, emodb, iemocap, emobox, csv, folders, "
                                       "unlabeled); detected from the layout when omitted")
    parser.add_argument("--view", help="label view, e.g. 4class for IEMOCAP/RAVDESS; the corpus default when omitted")
    parser.add_argument("--label-map", help="rename (or drop) the view's labels into a shared label set: a packaged "
                                            "map (shared7: the 7 classes RAVDESS and EMOVO share) or a CSV "
                                            "corpus,label,to (empty to: dropped)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not whole numbers separated by commas, e.g. 0,6,12") from None


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1)")
    return value


def recognizer_flags(p: argparse.ArgumentParser) -> None:
    """How the Recognizer reads long recordings, when it gives no label, and where it runs (predict and serve)."""
    p.add_argument("--device", default="cpu", help="torch device for the encoder and the model (cpu, cuda, cuda:1, "
                                                   "mps; default cpu); checked before the model loads")
    p.add_argument("--span", type=_positive_float, default=2.0, help="in a long recording, a stretch of speech "
                   "longer than this is read through windows this long, each with silence either side (default 2 s: "
                   "the speech of a median training clip)")
    p.add_argument("--hop", type=_positive_float, default=0.5, help="those windows start every this many seconds "
                   "(default 0.5): the timeline's resolution; larger is faster")
    p.add_argument("--abstain", type=_probability, metavar="P", help="give no label when the top probability is "
                   "below P (the probabilities are still reported)")
    p.add_argument("--no-speech-check", dest="speech_check", action="store_false",
                   help="label audio whatever the voice detector hears (for non-speech sounds); by default audio with "
                        "under 0.25 s of speech gets no label")


def recognizer_options(args) -> dict:
    """The Recognizer's keyword arguments from :func:`recognizer_flags` (the device checked and named as the flag)."""
    from ..devices import check_device
    return {"span_seconds": args.span, "hop_seconds": args.hop, "abstain_below": args.abstain,
            "speech_check": args.speech_check, "device": check_device(args.device)}


def _yes_no(text: str) -> bool:
    if text.lower() not in ("yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r}: give yes or no")
    return text.lower() == "yes"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):  # NaN fails the comparison too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def _fold_or_all(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a fold number nor 'all'") from None


def _add_encoder_args(parser: argparse.ArgumentParser) -> None:
    from ..encoders import DEFAULT_ENCODER
    parser.add_argument("--encoder", default=DEFAULT_ENCODER,
                        help=f"whisper-base (default, embedded), whisper-tiny.en, a CTranslate2 Whisper folder, or "
                             f"hf:<folder or hub id> for HuBERT/wav2vec2/WavLM/data2vec-audio (default {DEFAULT_ENCODER})")
    parser.add_argument("--pad-to-30s", action="store_true",
                        help="Whisper only: pad every clip to 30 s as in Whisper's training (10-15x slower on CPU); "
                             "use the same setting for training and inference")
    parser.add_argument("--device", default="cpu", help="torch device for the encoder (cpu, cuda, cuda:1 ...)")


def _add_training_args(parser: argparse.ArgumentParser, *, stage1: bool, stage2: bool) -> None:
    g = parser.add_argument_group("settings (defaults < --config < these flags < --set)")
    g.add_argument("--config", help="JSON or YAML file of settings: seed, val_fraction, adapter, head, pretrain, "
                                    "stage2, trainer (a run folder's config.json works too)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="one setting, e.g. stage2.lr=3e-4, pretrain.mask_weight=0, adapter.dim=256 (repeatable)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--normalize", choices=("global", "speaker", "utterance"),
                   help="global (default): the model's standardisation only; speaker: each speaker's features with the "
                        "speaker's own statistics first (test speakers' from their unlabeled audio: a different "
                        "protocol, see calibration.clips / calibration.only_label); utterance: each utterance's own")
    g.add_argument("--batch-size", type=_positive_int, help="batch size of both stages (default 32)")
    if stage1:
        g.add_argument("--pretrain-epochs", type=_positive_int, help="stage-1 epochs (pretrain.epochs, default 100)")
        g.add_argument("--no-mask-loss", action="store_true", help="ablation: switch off L_mask (pretrain.mask_weight=0)")
        g.add_argument("--no-sd-loss", action="store_true", help="ablation: switch off L_sd (pretrain.sd_weight=0)")
        g.add_argument("--no-la-loss", action="store_true", help="ablation: switch off L_la (pretrain.la_weight=0)")
    if stage2:
        g.add_argument("--epochs", type=_positive_int, help="stage-2 epochs (stage2.epochs, default 40)")
        g.add_argument("--lr", type=float, help="stage-2 adapter learning rate (stage2.lr, default 1e-4)")
    g.add_argument("--accelerator", help="cpu, gpu or auto (trainer.accelerator)")
    g.add_argument("--devices", help="devices per node, e.g. 2 with --strategy ddp (trainer.devices)")
    g.add_argument("--strategy", help="Lightning strategy: auto, ddp, ... (trainer.strategy)")
    g.add_argument("--num-workers", type=_non_negative_int, help="DataLoader workers (trainer.num_workers, default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_training_parsers(sub) -> None:
    def corpus_flags(p, required=True):
        _add_corpus_args(p, positional=False, required=required)

    p = sub.add_parser("pretrain", help="stage 1: train the adapter on unlabeled cached features (resumable)")
    p.add_argument("--store", action="append", required=True, help="feature store (repeat to mix several)")
    corpus_flags(p, required=False)
    p.add_argument("--fold", type=int, help="with --corpus: use only this fold's training speakers of the first store")
    p.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    _add_training_args(p, stage1=True, stage2=False)

    p = sub.add_parser("finetune", help="stage 2: train a classifier on one fold, pick the best-validation epoch, "
                                        "test (resumable)")
    corpus_flags(p)
    p.add_argument("--store", required=True, help="feature store of the corpus")
    p.add_argument("--fold", type=_fold_or_all, required=True,
                   help="test fold, or 'all': every speaker trains or validates, nothing is tested (a model to "
                        "apply to other corpora with evaluate or to use)")
    p.add_argument("--recipe", default="adapter", help="adapter (default: stage 2 of the paper's method), stats "
                   "(recommended: pooled statistics into a logistic regression, closed form), superb or emobox (the "
                   "benchmarks' probes); the method's stage 1 (recipe full) comes from cv, or from pretrain then "
                   "finetune --init")
    p.add_argument("--init", help="a stage-1 run folder: initialise the adapter from its teacher (refused when it "
                                  "saw any of the fold's test utterances or speakers)")
    p.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    p.add_argument("--augmented-store", help="an augmented store of the corpus (extract --augment): the training "
                                             "clips' copies are trained on too; validation and test stay clean")
    _add_training_args(p, stage1=False, stage2=True)

    p = sub.add_parser("evaluate", help="score a fine-tuned model on a corpus (or one fold's test speakers); refused "
                                        "when the model was trained on any of those utterances or speakers")
    p.add_argument("--model", required=True, help="model folder (or the finetune run folder holding model/)")
    corpus_flags(p)
    p.add_argument("--store", required=True, help="feature store of the corpus (same encoder as the model's)")
    p.add_argument("--fold", type=int, help="only this fold's test utterances (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--out", help="results JSON (default: <model>/evaluate-<corpus>[-fold<k>].json)")
    p.add_argument("--protocol", choices=("folds", "corpus"), default="folds",
                   help="corpus: --fold k is the k-th source corpus of a merged corpus (leave-one-corpus-out)")
    g = p.add_argument_group("reference conditions (a model trained with --normalize speaker)")
    g.add_argument("--reference", choices=("speaker", "corpus", "none"),
                   help="each test speaker's own clips, the whole test set as one reference, or none (the training "
                        "population's statistics)")
    g.add_argument("--reference-clips", type=_positive_int, help="k clips drawn at random per reference")
    g.add_argument("--reference-label", help="draw only clips with this label (e.g. neutral; or one emotion, the "
                                             "adversarial case)")
    g.add_argument("--shrink", type=float, help="τ in clips (default: the model's calibration.shrink)")
    g.add_argument("--spread", choices=("population", "reference"), help="the training population's spread (only the "
                   "mean moves) or the reference's own (default: the model's calibration.spread)")
    g.add_argument("--remove-emotion", type=_yes_no, metavar="yes|no", help="take the emotion the model hears in the "
                   "reference out of its mean (default: the model's calibration.remove_emotion)")

    p = sub.add_parser("merge", help="several corpora mapped onto one label set, written as one manifest corpus "
                                     "(ids and speakers prefixed by corpus; fold k = every corpus's fold k)")
    p.add_argument("corpora", nargs="+", help="corpus folders, manifests or EmoBox files (at least two)")
    p.add_argument("--label-map", required=True, help="a packaged map (shared7) or a CSV corpus,label,to")
    p.add_argument("--out", required=True, help="folder for manifest.csv (then: emoadapt extract OUT ...)")

    p = sub.add_parser("predict", help="recognise emotion in audio files, folders, globs or a manifest with a model "
                                       "folder; long recordings become a timeline of speech segments")
    p.add_argument("paths", nargs="+", help="audio files, folders (searched recursively), globs, or a manifest .csv "
                                            "with a path column (and speaker, for --group-by speaker)")
    p.add_argument("--model", default="default", help="a model folder trained with emoadapt (or its finetune run "
                                                      "folder); default: the model shipped with emoadapt")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    out.add_argument("--csv", action="store_true", help="CSV on stdout: one row per recording and per segment")
    out.add_argument("--jsonl", action="store_true", help="JSON lines on stdout: one object per recording as it "
                                                          "finishes ({\"source\", \"error\"} for one that failed)")
    p.add_argument("--top-k", type=_positive_int, default=3, help="classes shown per prediction (default 3)")
    p.add_argument("--reference", "--calibrate", dest="reference", nargs="+", metavar="CLIPS",
                   help="unlabeled audio (files, folders, globs) of the speaker, session or corpus to recognise, as "
                        "the reference of a model trained with --normalize speaker; shrunk toward the training "
                        "population's statistics by the model's calibration.shrink")
    p.add_argument("--group-by", choices=("speaker",), help="with a manifest that has a speaker column: each "
                   "speaker's own files are their reference (speaker-normalised models)")
    p.add_argument("--window", type=_positive_float, default=10.0, help="recordings up to this many seconds are "
                   "classified whole; longer ones are cut into stretches of speech (default 10)")
    p.add_argument("--labels", metavar="A,B,...", help="only these of the model's classes, e.g. angry,happy,neutral,"
                   "sad: probabilities renormalised over them (the output says so)")
    recognizer_flags(p)
    p.add_argument("--max-seconds", type=_positive_float, default=1200.0,
                   help="longer recordings are refused (default 1200)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: the model's head from `emoadapt export` run by onnxruntime (and the encoder too when "
                        "`export --encoder` wrote encoder.onnx beside it)")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr (a bar on a terminal, a line "
                                                              "every 15 s in a log)")

    p = sub.add_parser("export", help="a model folder's head (adapter + pooling + classifier, or the stats model) as "
                                      "ONNX with a dynamic time axis and the labels in its metadata; or (--format hub) "
                                      "the model folder as a Hugging Face Hub repository with a model card")
    p.add_argument("--model", required=True, help="a model folder (or its finetune run folder); with --format hub "
                                                  "also a shipped model's name or a Hub id")
    p.add_argument("--format", choices=("onnx", "hub"), default="onnx",
                   help="onnx (default): model.onnx; hub: a folder for `emoadapt push` (model files + README.md card)")
    p.add_argument("--out", help="onnx: the file (default: model.onnx in the model folder, replaced when it exists); "
                                 "hub: the folder (required). An existing --out is refused unless --force")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--encoder", action="store_true", help="also export the model's (unpadded Whisper) encoder "
                                                          "network as encoder.onnx beside the head")
    g = p.add_argument_group("the model card (--format hub)")
    g.add_argument("--license", help="the card's licence: an SPDX id (cc-by-nc-sa-4.0, mit, ...) or other; default "
                                     "other. A model inherits its training corpora's terms")
    g.add_argument("--dataset", dest="datasets", action="append", metavar="NAME",
                   help="a training dataset for the card (Hub dataset id or name; repeatable; default: the corpus)")
    g.add_argument("--results", metavar="RUN", help="a cv run folder (or its results.json): its UA/WA/F1 means go "
                                                   "into the card's metrics")

    p = sub.add_parser("push", help="upload a folder written by `emoadapt export --format hub` to the Hugging Face "
                                    "Hub (needs a token: hf auth login or HF_TOKEN)")
    p.add_argument("folder", help="the folder export --format hub wrote")
    p.add_argument("--repo", required=True, help="the Hub repository: owner/name (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="the branch to commit to (default main)")

    p = sub.add_parser("serve", help="an HTTP server (FastAPI + uvicorn) with a web page: POST /predict, GET /health, "
                                     "/labels, /docs")
    p.add_argument("--model", default="default", help="a model folder, or the shipped model (default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--max-upload-mb", type=_positive_float, default=20.0, help="larger uploads get 413 (default 20)")
    p.add_argument("--max-seconds", type=_positive_float, default=120.0, help="longer audio gets 413 (default 120)")
    p.add_argument("--max-concurrent", type=_positive_int, default=2,
                   help="recordings in work at once; others wait --queue-seconds, then get 429 (default 2)")
    p.add_argument("--queue-seconds", type=_positive_float, default=10.0,
                   help="how long a request waits for a free slot before 429 (default 10)")
    p.add_argument("--window", type=_positive_float, default=10.0,
                   help="longer recordings are cut into stretches of speech (default 10 s)")
    recognizer_flags(p)
    p.add_argument("--header-timeout", type=_positive_float, default=10.0,
                   help="a connection whose request headers have not all arrived within this many seconds is closed "
                        "(default 10)")

    p = sub.add_parser("cv", help="cross-validation: per fold [stage 1 ->] stage 2 -> test; mean ± std "
                                  "(resumable: finished folds are skipped)")
    corpus_flags(p)
    p.add_argument("--store", required=True, help="feature store of the corpus")
    p.add_argument("--recipe", required=True, help=RECIPES_HELP)
    p.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    p.add_argument("--folds", help="comma-separated folds to run (default: all)")
    p.add_argument("--protocol", choices=("folds", "corpus"), default="folds",
                   help="folds (default): the corpus's own speaker-independent folds; corpus: leave-one-corpus-out "
                        "over a corpus made by `emoadapt merge` (fold k tests the k-th corpus by name; scored over "
                        "its classes, closed and open)")
    p.add_argument("--unlabeled-store", action="append", default=[],
                   help="extra unlabeled feature store for stage 1 (repeatable)")
    p.add_argument("--augmented-store", help="an augmented store of the corpus (extract --augment): the training "
                                             "clips' copies are trained on too; validation and test stay clean")
    p.add_argument("--final", action="store_true", help="after the cross-validation, train the model to deploy on "
                   "every speaker with the same settings (<out>/final; what finetune --fold all makes)")
    p.add_argument("--stage1", help="recipe full: a finished `emoadapt pretrain` run on other audio (e.g. the "
                                    "unlabeled pool) used for every fold instead of pre-training per fold")
    p.add_argument("--stage1-from", metavar="RUN", help="recipe full: another `cv --recipe full` run (same corpus, "
                   "protocol and stage-1 settings) whose fold k's stage 1 starts fold k's stage 2 here: stage-2 "
                   "variants on one stage 1")
    _add_training_args(p, stage1=True, stage2=True)

    p = sub.add_parser("compare", help="table of cross-validation runs: mean ± std over folds (and seeds: runs "
                                       "that differ only in the seed are pooled)")
    p.add_argument("runs", nargs="+", help="cv run folders (or their results.json)")
    p.add_argument("--baseline", type=_positive_int, help="also print every row's UA minus that of table row N (1 = first), "
                                                "paired by seed and fold")
    p.add_argument("--json", help="also write the rows as JSON here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoadapt", description="Speech emotion recognition with a frozen encoder "
                                     "and a WAP-Transformer adapter with local attributes (arXiv 2509.23795).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="check a corpus and print counts per label, speaker and fold")
    _add_corpus_args(p)

    p = sub.add_parser("extract", help="cache a frozen encoder's hidden states for a corpus (resumable)")
    _add_corpus_args(p)
    _add_encoder_args(p)
    p.add_argument("--store", required=True, help="feature store folder (created, or resumed if it exists)")
    p.add_argument("--layers", type=_int_list, help="comma-separated hidden-state indices to keep (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--limit", type=_positive_int, help="only the first N utterances (quick checks)")
    p.add_argument("--rank", type=_non_negative_int, help="this process's share when extraction is split over processes, nodes "
                                            "or GPUs (default: torchrun's RANK, else 0)")
    p.add_argument("--world-size", type=_positive_int, help="number of processes sharing the work (default: torchrun's "
                                                  "WORLD_SIZE, else 1)")
    p.add_argument("--retry-failed", action="store_true", help="retry files that failed before on unchanged audio")
    p.add_argument("--max-seconds", type=_positive_float, default=1200.0,
                   help="a longer file is listed as a failure, refused before it is decoded (default 1200)")
    p.add_argument("--verify", action="store_true", help="check the store instead of extracting: every shard's "
                   "checksum and values, and that each clip's audio is the one its features came from; exit 1 when "
                   "anything is damaged or stale")
    p.add_argument("--repair", action="store_true", help="verify, then re-compute only the damaged batches and the "
                   "clips whose audio changed")
    p.add_argument("--augment", metavar="copies=N,seed=N[,kinds=A+B]", help="store augmented copies of every clip "
                   "instead of the clips (each under a recording condition drawn per clip and copy: noise at 0-20 dB "
                   "SNR, babble, reverb, 8 kHz, telephone, GSM, MP3, Opus, gain, speed); use a store of its own and "
                   "train with --augmented-store")
    p.add_argument("--augment-noise", action="append", default=[], metavar="DIR",
                   help="with --augment: non-speech recordings (folders or files) to mix in as noise (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    _add_training_parsers(sub)

    p = sub.add_parser("demo", help="the main job on the embedded Whisper-base encoder over RAVDESS")
    p.add_argument("--data", help=f"data root holding ravdess/ (default: ${ENV_VAR}, else ../shared/data)")
    p.add_argument("--workdir", default="runs/demo", help="where the demo writes (default runs/demo)")
    _add_encoder_args(p)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--limit", type=_positive_int, help="a quick check on N clips spread evenly over the corpus")
    p.add_argument("--fold", type=int, default=1, help="the fold trained and tested (default 1)")
    p.add_argument("--recipe", default="stats", help="the recipe of step 3, default stats: " + RECIPES_HELP)
    p.add_argument("--config", help="settings file or packaged config name (default: demo-cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="one setting, e.g. stage2.epochs=2 (repeatable)")
    p.add_argument("--extract-only", action="store_true", help="stop after the corpus check and feature extraction")
    p.add_argument("--no-progress", action="store_true")
    return parser



"""How cheap is training on cached features, compared with running the encoder once?

    python bench/train.py [--clips 96] [--hubert-clips 16] [--epochs 3] [--set stage2.batch_size=32 ...]
                          [--out docs/bench_train.json] [--quick]

(A) Whisper-base (real weights): the first N RAVDESS clips. The bare ``encoder.encode`` over the clips, decoded
    beforehand, in the batches ``extract`` makes (one warm-up batch first) is the encoder pass. The clips are then
    extracted into a temp store and stage 2 runs on it with the project's own pieces (``build_classifier``
    adapter recipe, ``FinetuneModule``, ``train_loader`` random crops, ``make_trainer``): every epoch is timed
    from Lightning's epoch start to its end (forward + backward + optimizer step + data loading). The first
    epoch carries one-time warm-up, so the ratio epoch / encoder pass is judged on the later ("warm") epochs,
    which are what a 40-epoch run is made of; the first is printed too. Goal <= 0.5. The epochs are timed for
    each training variant in the same run, on the same store, each against the encoder passes timed just before
    and after it (a shared machine's speed drifts over minutes): ``fp32`` (the
    config as given), ``bf16`` (``trainer.precision=bf16-mixed``: autocast, fp32 weights) and ``bf16+buckets``
    (also ``stage2.bucket_by_length=true``); the goals are judged on the last, the fastest settings.
(B) HuBERT-large-size encoder (the facebook/hubert-large-ll60k configuration) with random weights, saved into a
    temp folder and loaded with ``load_encoder("hf:" + folder)``: the same measurement on M clips. Goal <= 0.05.
(C) Peak RAM of fine-tuning on the Whisper store of N clips (4 epochs) and on a store of 4N clips (every clip
    stored 4 times under distinct ids; 1 epoch), so both make the same number of updates and only the store's
    size differs; each in a fresh subprocess. /proc/self/status is sampled every 5 ms:
    anonymous memory (what the process allocates) and file-backed memory (memory-mapped store pages: page cache,
    reclaimable, at most ``max_open_shards`` shards stay mapped). Goal: peak anonymous memory of the 4N run
    within 10% of the N run's (RAM does not grow with the store); the totals (VmHWM) are printed alongside.

Start-up that happens once per process (importing Lightning, building the Trainer, the random HuBERT) is timed
and reported separately, never inside an epoch. Writes everything as JSON (default docs/bench_train.json) with
the encoder fingerprints, clip counts, batch sizes, config, machine and commit. ``--quick``: a smoke run on a
few clips with a small random HuBERT (numbers not meaningful; writes JSON only with an explicit --out).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import git_commit, machine_info, ravdess_rows  # noqa: E402  (bench/ is not a package)

from emoadapt.audio import load_audio  # noqa: E402
from emoadapt.corpora.manifest import Utterance  # noqa: E402
from emoadapt.encoders import DEFAULT_ENCODER, SAMPLE_RATE, load_encoder  # noqa: E402
from emoadapt.atomic import atomic_write_json as write_json  # noqa: E402
from emoadapt.store.extract import extract, plan_batches  # noqa: E402
from emoadapt.store.features import FeatureStore  # noqa: E402
from emoadapt.cli.paths import shared_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL_WHISPER, GOAL_HUBERT, GOAL_RAM, GOAL_PARAMS = 0.5, 0.05, 1.10, 0.02
HUBERT_LARGE_PARAMETERS = 316e6  # the encoder the paper adapts (docs/METHOD.md)
# facebook/hubert-large-ll60k's architecture (its config.json); the weights here are random
HUBERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
HUBERT_QUICK = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


# ------------------------------------------------------------------------------------------------------------
# the two timings
# ------------------------------------------------------------------------------------------------------------
def encoder_pass(encoder, rows, batch_size: int) -> dict:
    """Seconds of the bare encoder over the clips, decoded beforehand, in extract's batches (after one warm-up)."""
    batches = [[load_audio(g[0].path) for g in batch] for batch in plan_batches(rows, batch_size)]
    encoder.encode(batches[0])  # warm-up: first-call allocations and kernel selection
    t0 = time.perf_counter()
    for waves in batches:
        encoder.encode(waves)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "audio_seconds": sum(len(w) for b in batches for w in b) / SAMPLE_RATE}


def finetune_epochs(store: FeatureStore, items, labels, config, epochs: int, work_dir: Path,
                    on_ready=None) -> dict:
    """Stage 2 (adapter recipe) on every item of ``store`` for ``epochs`` epochs; seconds of each epoch.
    ``items``: (store index 0, utterance id, label index). ``on_ready()`` is called just before fit."""
    import lightning.pytorch as pl

    from emoadapt.training.settings import with_store_dims
    from emoadapt.store.dataset import FeatureDataset, encoder_info
    from emoadapt.training.data import train_loader
    from emoadapt.training.stage2 import FinetuneModule, build_classifier
    from emoadapt.training.trainer import make_trainer, quiet_lightning, steps_per_epoch

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):  # before Lightning's checkpoint save (not an epoch's work)
            self.seconds.append(time.perf_counter() - self.t0)

    t_setup = time.perf_counter()
    encoder = encoder_info(store)
    config = with_store_dims(config, encoder)
    c = config.stage2
    dataset = FeatureDataset([store], items, max_frames=round(c.max_crop_seconds * float(encoder["frame_rate"])))
    timer = EpochTimer()
    with quiet_lightning(progress=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation_step.*no `val_dataloader`.*")  # no validation here
        pl.seed_everything(config.seed, workers=True, verbose=False)
        trainer = make_trainer(work_dir, config.trainer, max_epochs=epochs, grad_clip=c.grad_clip, callbacks=[timer],
                               validate=False, progress=False)
        total = epochs * steps_per_epoch(len(dataset), c.batch_size, trainer.world_size)
        model, _ = build_classifier("adapter", config, encoder, len(labels))
        module = FinetuneModule(model, labels, c, total)
        loader = train_loader(dataset, c.batch_size, seed=config.seed, num_workers=config.trainer.num_workers,
                              bucket_by_length=c.bucket_by_length)
        setup = time.perf_counter() - t_setup
        if on_ready:
            on_ready()
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        fit = time.perf_counter() - t0
    return {"epoch_seconds": timer.seconds, "setup_seconds": setup, "fit_seconds": fit,
            "steps_per_epoch": total // epochs, "parameters": sum(p.numel() for p in model.parameters()),
            "batch_size": c.batch_size, "clips": len(dataset)}


VARIANTS = {"fp32": [], "bf16": ["trainer.precision=bf16-mixed"],
            "bf16+buckets": ["trainer.precision=bf16-mixed", "stage2.bucket_by_length=true"]}
FASTEST = "bf16+buckets"


def measure(name, encoder, rows, labels, config, args, tmp: Path) -> dict:
    """The encoder pass, the extract into a store, and the fine-tuning epochs on it in every training variant, for
    one encoder."""
    from emoadapt.training.settings import load_config

    print(f"[{name}] {encoder.fingerprint}: encoder pass over {len(rows)} clips ...", flush=True)
    enc = encoder_pass(encoder, rows, args.batch_size)
    store_dir = tmp / f"store-{name}"
    report = extract(rows, encoder, store_dir, batch_size=args.batch_size, progress=False)
    if report.failures or report.extracted != len(rows):
        raise SystemExit(f"bench/train.py: extract failed:\n{report}")
    store = FeatureStore(store_dir)
    index = {label: k for k, label in enumerate(labels)}
    items = [(0, r.id, index[r.label]) for r in rows]
    # an encoder pass before and after each variant's epochs: each variant is judged against the mean of the two
    # passes beside it, which damps drift from other load on the machine (a shared machine's speed changes by
    # minutes); the ratios, not the raw seconds, compare the variants
    trained, passes = {}, [enc["seconds"]]
    for variant, overrides in VARIANTS.items():
        print(f"[{name}] fine-tuning {args.epochs} epochs on {len(items)} clips, {variant} ...", flush=True)
        trained[variant] = finetune_epochs(store, items, labels, load_config(None, overrides, base=config),
                                           args.epochs, tmp / f"run-{name}-{variant}")
        passes.append(encoder_pass(encoder, rows, args.batch_size)["seconds"])
    encoder_seconds = statistics.mean(passes)
    variants = {}
    for k, (variant, tr) in enumerate(trained.items()):
        beside = statistics.mean(passes[k: k + 2])
        warm = statistics.median(tr["epoch_seconds"][1:] or tr["epoch_seconds"])
        variants[variant] = {
            "overrides": VARIANTS[variant], "epoch_seconds": [round(t, 3) for t in tr["epoch_seconds"]],
            "encoder_pass_seconds_beside": round(beside, 3),
            "warm_epoch_seconds": round(warm, 3), "ratio_warm": round(warm / beside, 4),
            "ratio_first_epoch": round(tr["epoch_seconds"][0] / beside, 4),
            "trainer_setup_seconds": round(tr["setup_seconds"], 3),
            "fit_overhead_seconds": round(tr["fit_seconds"] - sum(tr["epoch_seconds"]), 3)}
    tr = trained[FASTEST]
    return {
        "encoder": encoder.name, "fingerprint": encoder.fingerprint, "options": encoder.options,
        "hidden_states": encoder.num_layers + 1, "dim": encoder.dim, "clips": len(rows),
        "audio_seconds": round(enc["audio_seconds"], 2), "encode_batch_size": args.batch_size,
        "encoder_pass_seconds": round(encoder_seconds, 3), "encoder_pass_runs": [round(t, 3) for t in passes],
        "extract_seconds": round(report.seconds, 3),
        "store_bytes": sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file()),
        "train_batch_size": tr["batch_size"], "steps_per_epoch": tr["steps_per_epoch"],
        "model_parameters": tr["parameters"],
        "variants": variants,
        "speedup_fastest_over_fp32": round(variants["fp32"]["ratio_warm"] / variants[FASTEST]["ratio_warm"], 3),
        "ratio_warm": variants[FASTEST]["ratio_warm"],
        "store": store_dir,
    }


# ------------------------------------------------------------------------------------------------------------
# peak RAM, in a fresh process per store
# ------------------------------------------------------------------------------------------------------------
def _status_kib(*keys) -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


class MemorySampler(threading.Thread):
    """Peak RssAnon / RssFile / VmRSS of this process, read from /proc every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop = interval, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            for k, v in _status_kib("RssAnon", "RssFile", "VmRSS").items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            time.sleep(self.interval)


def ram_worker(spec_path: Path) -> int:
    """Child process: one fine-tuning epoch on the store and items in ``spec_path``; prints one JSON line."""
    import emoadapt.training.stage2  # noqa: F401 - imported before the baseline: Lightning is start-up
    from emoadapt.training.settings import load_config

    spec = json.loads(spec_path.read_text())
    config = load_config(None, spec["overrides"])
    store = FeatureStore(spec["store"])
    items = [(0, i, y) for i, y in spec["items"]]
    sampler = MemorySampler()
    baseline = {}

    def on_ready():  # model, optimizer-to-be, Trainer and loader exist: what follows is the epoch itself
        gc.collect()
        baseline.update(_status_kib("RssAnon", "RssFile", "VmRSS", "VmHWM"))
        sampler.start()

    tr = finetune_epochs(store, items, spec["labels"], config, spec["epochs"], Path(spec["work_dir"]),
                         on_ready=on_ready)
    sampler.stop.set()
    sampler.join()
    end = _status_kib("VmHWM")
    print(json.dumps({"clips": len(items), "store_utterances": len(store), "epochs": spec["epochs"],
                      "steps": tr["steps_per_epoch"] * spec["epochs"], "seconds": sum(tr["epoch_seconds"]),
                      "baseline_kib": baseline, "peak_kib": {**sampler.peak, "VmHWM": end["VmHWM"]}}))
    return 0


def peak_ram(store_dir: Path, rows, labels, overrides, tmp: Path, tag: str, epochs: int) -> dict:
    index = {label: k for k, label in enumerate(labels)}
    spec = {"store": str(store_dir), "items": [[r.id, index[r.label]] for r in rows], "labels": labels,
            "overrides": list(overrides), "work_dir": str(tmp / f"ram-{tag}"), "epochs": epochs}
    spec_path = tmp / f"ram-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, __file__, "--ram-worker", str(spec_path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench/train.py: the peak-RAM subprocess failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    return {"clips": r["clips"], "store_utterances": r["store_utterances"], "epochs": r["epochs"],
            "steps": r["steps"], "seconds": round(r["seconds"], 3),
            "peak_anon_mib": mib(r["peak_kib"]["RssAnon"]),
            "anon_growth_mib": mib(r["peak_kib"]["RssAnon"] - r["baseline_kib"]["RssAnon"]),
            "peak_file_mapped_mib": mib(r["peak_kib"]["RssFile"]),
            "file_mapped_growth_mib": mib(r["peak_kib"]["RssFile"] - r["baseline_kib"]["RssFile"]),
            "vmhwm_mib": mib(r["peak_kib"]["VmHWM"]),
            "vmhwm_growth_mib": mib(r["peak_kib"]["VmHWM"] - r["baseline_kib"]["VmHWM"]),
            "baseline_rss_mib": mib(r["baseline_kib"]["VmRSS"])}


# ------------------------------------------------------------------------------------------------------------
def random_hubert(folder: Path, sizes: dict) -> float:
    """A HuBERT of the given sizes with random weights, saved with save_pretrained; returns seconds taken."""
    import torch
    from transformers import HubertConfig, HubertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" / "Loading weights" bars: noise in a benchmark
    t0 = time.perf_counter()
    torch.manual_seed(0)
    HubertModel(HubertConfig(**sizes)).save_pretrained(folder)
    gc.collect()
    return time.perf_counter() - t0


def goal_line(label: str, value: float, goal: float, unit: str = "") -> str:
    met = value <= goal
    return f"  {label:<46} {value:8.3f}{unit}  goal <= {goal:g}: {'MET' if met else 'NOT MET'}"


def trainable_parameters(config) -> dict:
    """Trainable parameters of the whole stage-2 model (adapter + SAP + classifier, 4 classes) on HuBERT-large's
    25 x 1024 hidden states, with the benchmark's adapter settings."""
    from dataclasses import replace

    from emoadapt.training.stage2 import build_classifier
    config = replace(config, adapter=replace(config.adapter, input_layers=25, input_dim=1024))
    model, _ = build_classifier("adapter", config, {"layers": list(range(25)), "dim": 1024}, 4)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    total = count(model)
    return {"total": total, "adapter": count(model.adapter), "positional_conv": count(model.adapter.pos_conv),
            "fraction": round(total / HUBERT_LARGE_PARAMETERS, 4), "encoder": "HuBERT-large, 316 M, 25 x 1024"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, help="first N RAVDESS clips for Whisper-base and the RAM check (default 96)")
    p.add_argument("--hubert-clips", type=int,
                   help="first M RAVDESS clips for the HuBERT-large-size encoder (default 16)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs timed; the ratio uses epochs 2.. (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="encoder / extract batch size (default 8, as extract)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override, e.g. stage2.batch_size=16 (repeatable)")
    p.add_argument("--data", help="the ravdess folder (default: emoadapt.cli.paths.shared_corpus('ravdess'))")
    p.add_argument("--quick", action="store_true", help="smoke run: few clips, small random HuBERT, no JSON "
                                                        "unless --out is given")
    p.add_argument("--out", help="JSON path (default docs/bench_train.json; none with --quick)")
    p.add_argument("--ram-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ram_worker:
        return ram_worker(Path(args.ram_worker))
    args.clips = args.clips or (32 if args.quick else 96)  # quick: one full training batch
    args.hubert_clips = args.hubert_clips or (2 if args.quick else 16)
    args.epochs = args.epochs or (2 if args.quick else 3)
    out = args.out or (None if args.quick else str(REPO / "docs" / "bench_train.json"))

    folder = Path(args.data) if args.data else shared_corpus("ravdess")
    if folder is None or not (folder / "manifest.csv").is_file():
        print(f"bench/train.py: no RAVDESS copy found ({folder}); pass --data PATH", file=sys.stderr)
        return 2
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    import emoadapt.training.stage2  # noqa: F401 - imports Lightning: one-time start-up, reported on its own
    from emoadapt.training.settings import load_config
    import_seconds = time.perf_counter() - t0
    config = load_config(None, args.overrides)

    rows = ravdess_rows(folder, max(args.clips, args.hubert_clips))
    labels = sorted({r.label for r in rows})
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        # (A) Whisper-base
        whisper = load_encoder(DEFAULT_ENCODER)
        results["whisper"] = measure("whisper", whisper, rows[: args.clips], labels, config, args, tmp)
        # the 4N store: each clip under 4 ids (extract encodes a shared audio path once, stores it under every id)
        rows4 = [Utterance(id=f"copy{k}/{r.id}", path=r.path, label=r.label, speaker=r.speaker)
                 for k in range(4) for r in rows[: args.clips]]
        extract(rows4, whisper, tmp / "store-whisper-4x", batch_size=args.batch_size, progress=False)
        del whisper
        gc.collect()

        # (B) HuBERT-large size, random weights
        sizes = HUBERT_QUICK if args.quick else HUBERT_LARGE
        print(f"[hubert] building a random HuBERT ({sizes['num_hidden_layers']} layers x "
              f"{sizes['hidden_size']}) ...", flush=True)
        build_seconds = random_hubert(tmp / "hubert-random", sizes)
        t0 = time.perf_counter()
        hubert = load_encoder("hf:" + str(tmp / "hubert-random"))
        load_seconds = time.perf_counter() - t0
        results["hubert"] = measure("hubert", hubert, rows[: args.hubert_clips], labels, config, args, tmp)
        results["hubert"].update(config_sizes=sizes, build_seconds=round(build_seconds, 1),
                                 load_seconds=round(load_seconds, 1), weights="random (torch.manual_seed(0))",
                                 parameters=sum(p.numel() for p in hubert.model.parameters()))
        del hubert
        gc.collect()

        # (C) peak RAM: N clips vs the same clips 4 times, one fresh process each
        # the same number of updates on both (4 epochs of N, 1 epoch of 4N): only the store's size differs
        print(f"[ram] 4 epochs on {args.clips} clips and 1 epoch on {4 * args.clips}, each in a fresh process ...",
              flush=True)
        ram_n = peak_ram(results["whisper"]["store"], rows[: args.clips], labels, args.overrides, tmp, "n", 4)
        ram_4n = peak_ram(tmp / "store-whisper-4x", rows4, labels, args.overrides, tmp, "4n", 1)
    for part in ("whisper", "hubert"):
        results[part]["store"] = "temp (deleted)"

    w, h = results["whisper"], results["hubert"]
    params = trainable_parameters(config)
    anon_ratio = ram_4n["peak_anon_mib"] / ram_n["peak_anon_mib"]
    hwm_ratio = ram_4n["vmhwm_mib"] / ram_n["vmhwm_mib"]
    result = {
        "what": "one stage-2 fine-tuning epoch (adapter recipe, cached features) vs one encoder pass over the same "
                "clips; peak RAM of an epoch on a store of N vs 4N clips",
        "quick": args.quick, "corpus": str(folder), "labels": labels, "epochs_timed": args.epochs,
        "ratio_uses": "median of epochs 2.. (epoch 1 includes one-time warm-up; it is reported as ratio_first_epoch)",
        "whisper_base": w, "hubert_large_size_random": h,
        "peak_ram": {"n": ram_n, "4n": ram_4n, "peak_anon_ratio_4n_over_n": round(anon_ratio, 3),
                     "vmhwm_ratio_4n_over_n": round(hwm_ratio, 3),
                     "note": "anon = memory the process allocates; file-mapped = memory-mapped store pages (page "
                             "cache, reclaimable; at most max_open_shards shards stay mapped); VmHWM = their peak sum"},
        "goals": {"whisper_ratio": {"goal": GOAL_WHISPER, "value": w["ratio_warm"],
                                    "met": w["ratio_warm"] <= GOAL_WHISPER},
                  "hubert_ratio": {"goal": GOAL_HUBERT, "value": h["ratio_warm"],
                                   "met": h["ratio_warm"] <= GOAL_HUBERT},
                  "peak_ram_anon_4n_over_n": {"goal": GOAL_RAM, "value": round(anon_ratio, 3),
                                              "met": anon_ratio <= GOAL_RAM},
                  "trainable_fraction_of_hubert_large": {"goal": GOAL_PARAMS, "value": params["fraction"],
                                                         "met": params["fraction"] <= GOAL_PARAMS}},
        "trainable_parameters": params,
        "lightning_import_seconds": round(import_seconds, 2),
        "config": config.to_dict(), "overrides": args.overrides,
        "machine": machine_info(),
        "loadavg_1_5_15min": {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]},
        "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    print()
    print("bench/train.py" + ("  (QUICK smoke run: small random HuBERT, few clips; numbers not meaningful)"
                              if args.quick else ""))
    print(f"  one-time start-up: Lightning import {import_seconds:.1f} s; random HuBERT build+save "
          f"{h['build_seconds']} s, load {h['load_seconds']} s")
    print(f"  {'':<22}{'variant':>13}{'clips':>6}{'audio s':>9}{'enc pass s':>11}{'epoch s (all)':>22}"
          f"{'warm':>7}{'ratio':>8}{'1st ep':>8}{'batch':>6}{'steps':>6}")
    for label, r in (("whisper-base", w), ("hubert-large (random)", h)):
        for variant, v in r["variants"].items():
            print(f"  {label:<22}{variant:>13}{r['clips']:>6}{r['audio_seconds']:>9.1f}"
                  f"{v['encoder_pass_seconds_beside']:>11.2f}{', '.join(f'{t:.2f}' for t in v['epoch_seconds']):>22}"
                  f"{v['warm_epoch_seconds']:>7.2f}{v['ratio_warm']:>8.3f}{v['ratio_first_epoch']:>8.3f}"
                  f"{r['train_batch_size']:>6}{r['steps_per_epoch']:>6}")
    print(f"  ratio fp32 / ratio {FASTEST} (the speed-up): whisper-base {w['speedup_fastest_over_fp32']}x, "
          f"hubert {h['speedup_fastest_over_fp32']}x")
    print(f"  encoder passes (first, then after each variant): whisper-base {w['encoder_pass_runs']} s, "
          f"hubert {h['encoder_pass_runs']} s; load average before/after {result['loadavg_1_5_15min']}")
    print(f"  fingerprints: {w['fingerprint']}; {h['fingerprint']}")
    print(f"  peak RAM of training (MiB)    {'clips':>6}{'steps':>6}{'anon peak':>11}{'anon +':>9}"
          f"{'file-mapped':>13}{'VmHWM':>9}"
          f"{'VmHWM +':>9}")
    for label, r in (("store of N, 4 epochs", ram_n), ("store of 4N, 1 epoch", ram_4n)):
        print(f"  {label:<30}{r['clips']:>6}{r['steps']:>6}{r['peak_anon_mib']:>11.1f}"
              f"{r['anon_growth_mib']:>9.1f}"
              f"{r['peak_file_mapped_mib']:>13.1f}{r['vmhwm_mib']:>9.1f}{r['vmhwm_growth_mib']:>9.1f}")
    print("  goals:")
    print(goal_line(f"whisper-base: warm epoch ({FASTEST}) / encoder pass", w["ratio_warm"], GOAL_WHISPER))
    print(goal_line(f"hubert-large-size: warm epoch ({FASTEST}) / encoder pass", h["ratio_warm"], GOAL_HUBERT)
          + ("  (quick: small HuBERT, not the large size)" if args.quick else ""))
    print(goal_line("peak anonymous RAM, store 4N / store N", anon_ratio, GOAL_RAM))
    print(f"  {'(info) peak VmHWM incl. mapped store pages, 4N / N':<46} {hwm_ratio:8.3f}")
    print(goal_line(f"trainable parameters / HuBERT-large ({params['total']:,} / 316 M)", params["fraction"],
                    GOAL_PARAMS))
    if out:
        write_json(result, out)
        print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

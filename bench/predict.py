"""How fast is recognising emotion in new audio with a shipped or trained model?

    python bench/predict.py [--model default] [--seconds 10] [--repeats 5] [--out docs/bench_predict.json]

One run, one thread (``OMP_NUM_THREADS`` as set), the RAVDESS copy in ../shared/data:
- cold start: a fresh Python process that imports emoadapt and loads the model with its encoder
  (``Recognizer.from_pretrained``), timed from outside; the median of 3 processes;
- real-time factor: ``Recognizer.predict`` on a clip of ``--seconds`` (RAVDESS sentences joined until that long,
  classified whole, as the window allows), seconds of compute per second of audio, median of the repeats (goal
  <= 0.03 on this CPU);
- the head's share: the model (adapter + pooling + classifier, or the stats model) on the clip's hidden states,
  as a fraction of the encoder's time on the same clip (goal <= 5 %);
- the same head exported to ONNX (``emoadapt export``) and run by onnxruntime, its time over torch's;
- the real-time factor again with ``--backend onnx`` after ``export --encoder`` (the Whisper network in onnxruntime
  too; the log-mel stays in torch);
- segment context: 16 clips of RAVDESS Actor_01 joined with 2 s of silence, cut by the voice-activity detector with
  0.1 s and with the default context either side: how many segments are labelled unlike the same clip alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import git_commit, machine_info  # noqa: E402  (bench/ is not a package)

REPO = Path(__file__).resolve().parents[1]
GOAL_RTF, GOAL_HEAD = 0.03, 0.05


def cold_start(model: str) -> float:
    code = f"from emoadapt import Recognizer; Recognizer.from_pretrained({model!r})"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="a model folder or a shipped model's name (default)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data", help="the ravdess folder (default: emoadapt.cli.paths.shared_corpus('ravdess'))")
    p.add_argument("--out", help="JSON path (default docs/bench_predict.json)")
    args = p.parse_args(argv)
    from emoadapt.audio import SAMPLE_RATE, load_audio
    from emoadapt.cli.paths import shared_corpus
    folder = Path(args.data) if args.data else shared_corpus("ravdess")
    if folder is None:
        print("bench/predict.py: no RAVDESS copy found; pass --data", file=sys.stderr)
        return 2
    colds = [cold_start(args.model) for _ in range(3)]

    from emoadapt import Recognizer
    from emoadapt.inference import classify, encode_waveforms
    recognizer = Recognizer.from_pretrained(args.model, window_seconds=args.seconds + 1)
    pieces, total = [], 0
    for path in sorted(folder.glob("Actor_02/*")):
        pieces.append(load_audio(path))
        total += len(pieces[-1])
        if total >= args.seconds * SAMPLE_RATE:
            break
    clip = np.concatenate(pieces)[: int(args.seconds * SAMPLE_RATE)]
    recognizer.predict(clip, sample_rate=SAMPLE_RATE)  # warm-up
    runs, encoder_runs, head_runs = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        recognizer.predict(clip, sample_rate=SAMPLE_RATE)
        runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        (hidden,) = encode_waveforms(recognizer.loaded, recognizer.encoder, [clip])
        encoder_runs.append(time.perf_counter() - t0)
        features, _ = recognizer._normalize([hidden], 1, args.seconds)
        t0 = time.perf_counter()
        classify(recognizer.loaded.model, features)
        head_runs.append(time.perf_counter() - t0)
    import tempfile

    from emoadapt.inference.onnx import OnnxHead, export_encoder_onnx, export_onnx
    with tempfile.TemporaryDirectory() as tmp:  # the head as ONNX, timed on the same normalised hidden states
        report = export_onnx(recognizer.model_dir, Path(tmp) / "model.onnx")
        onnx_head = OnnxHead(report["path"])
        classify(onnx_head, features)
        onnx_runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            classify(onnx_head, features)
            onnx_runs.append(time.perf_counter() - t0)
        # the whole recognition with the encoder network exported too (predict --backend onnx after export --encoder)
        encoder_report = export_encoder_onnx(recognizer.encoder, Path(tmp) / "encoder.onnx")
        onnx_recognizer = Recognizer.from_pretrained(args.model, window_seconds=args.seconds + 1, backend="onnx",
                                                     onnx=Path(tmp) / "model.onnx")
        onnx_recognizer.predict(clip, sample_rate=SAMPLE_RATE)
        onnx_predict = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            onnx_recognizer.predict(clip, sample_rate=SAMPLE_RATE)
            onnx_predict.append(time.perf_counter() - t0)
    rtf_onnx = statistics.median(onnx_predict) / args.seconds
    rtf = statistics.median(runs) / args.seconds
    head = statistics.median(head_runs) / statistics.median(encoder_runs)
    # segment context: 16 clips of one actor joined with 2 s of silence between them, cut by the VAD; how many
    # segments get another label than the same clip alone, with tight and with the default context
    clips = sorted(folder.glob("Actor_01/*"))
    clips = clips[:8] + clips[-8:]
    alone = [p.label for p in recognizer.predict(clips)]
    joined = np.concatenate([np.concatenate([load_audio(c), np.zeros(2 * SAMPLE_RATE, np.float32)]) for c in clips])
    segment_changes = {}
    for pad in (0.1, recognizer.segment_pad_seconds):
        cutter = Recognizer.from_pretrained(args.model, window_seconds=args.seconds, segment_pad_seconds=pad,
                                            span_seconds=args.seconds, hop_seconds=args.seconds)  # a clip a piece
        labels = [s.label for s in cutter.predict(joined, sample_rate=SAMPLE_RATE).segments]
        segment_changes[str(pad)] = (sum(a != b for a, b in zip(alone, labels)) if len(labels) == len(alone)
                                     else f"{len(labels)} segments for {len(alone)} clips")
    result = {
        "model": str(recognizer.model_dir), "recipe": recognizer.loaded.info["build"]["recipe"],
        "encoder": recognizer.encoder.fingerprint, "clip_seconds": args.seconds,
        "cold_start_seconds": [round(c, 2) for c in colds], "cold_start_median": round(statistics.median(colds), 2),
        "predict_seconds": [round(r, 4) for r in runs], "real_time_factor": round(rtf, 4),
        "encoder_seconds": [round(r, 4) for r in encoder_runs], "head_seconds": [round(r, 5) for r in head_runs],
        "head_over_encoder": round(head, 4),
        "segments_labelled_unlike_the_clip_alone_by_pad_seconds": segment_changes,
        "onnx_head_seconds": [round(r, 5) for r in onnx_runs],
        "onnx_over_torch_head": round(statistics.median(onnx_runs) / statistics.median(head_runs), 3),
        "onnx_max_abs_difference": report["max_abs_difference"],
        "onnx_backend_predict_seconds": [round(r, 4) for r in onnx_predict],
        "onnx_backend_real_time_factor": round(rtf_onnx, 4),
        "onnx_encoder_max_abs_difference": encoder_report["max_abs_difference"],
        "goals": {"real_time_factor": {"goal": GOAL_RTF, "met": rtf <= GOAL_RTF},
                  "real_time_factor_onnx_backend": {"goal": GOAL_RTF, "met": rtf_onnx <= GOAL_RTF},
                  "head_over_encoder": {"goal": GOAL_HEAD, "met": head <= GOAL_HEAD}},
        "threads": os.environ.get("OMP_NUM_THREADS", "all"), "machine": machine_info(), "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": os.getloadavg(),
    }
    print(f"bench/predict.py  model {result['model']} ({result['recipe']}), {result['encoder']}")
    print(f"  cold start (import + load, fresh process): median {result['cold_start_median']} s {colds}")
    print(f"  real-time factor on a {args.seconds:g} s clip: {rtf:.4f}  (goal <= {GOAL_RTF}: "
          f"{'MET' if rtf <= GOAL_RTF else 'NOT MET'})")
    print(f"  head / encoder time: {head:.4f}  (goal <= {GOAL_HEAD}: {'MET' if head <= GOAL_HEAD else 'NOT MET'})")
    print(f"  16 clips joined into one recording, segments labelled unlike the clip alone, by context kept: "
          f"{segment_changes}")
    print(f"  head time, ONNX (onnxruntime) / torch: {result['onnx_over_torch_head']}  (max abs difference "
          f"{report['max_abs_difference']:.1e})")
    print(f"  real-time factor with --backend onnx (encoder network and head in onnxruntime): {rtf_onnx:.4f}  "
          f"(goal <= {GOAL_RTF}: {'MET' if rtf_onnx <= GOAL_RTF else 'NOT MET'}; encoder max abs difference "
          f"{encoder_report['max_abs_difference']:.1e})")
    out = args.out or str(REPO / "docs" / "bench_predict.json")
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`emoadapt predict`: which audio to read (files, folders, globs, manifests), and the predictions as a terminal
table, JSON or CSV. The recognising itself is :class:`emoadapt.inference.Recognizer`'s."""
from __future__ import annotations

import csv
import glob
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from ..corpora import read_manifest
from ..corpora.base import audio_files
from ..errors import CorpusError, EmoadaptError


@dataclass
class Input:
    path: str
    speaker: str | None = None   # from a manifest's speaker column


def expand_inputs(specs: list[str]) -> list[Input]:
    """Files, folders (their audio files, recursively, sorted), globs (also when the shell left them quoted) and
    manifests (``.csv`` with a ``path`` column relative to the manifest, and optionally ``speaker``)."""
    found: list[Input] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = audio_files(path)
            if not files:
                raise CorpusError(path, f"no audio files in this folder ({', '.join(sorted(AUDIO_EXTENSIONS))})")
            found += [Input(str(f)) for f in files]
        elif path.suffix.lower() == ".csv" and path.is_file():
            found += [Input(u.path, u.speaker) for u in read_manifest(path, labelled=False)]
        elif not path.exists() and glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise CorpusError(path, "the pattern matches no file")
            found += [Input(m) for m in matches if Path(m).is_file()]
        else:
            found.append(Input(spec))  # a missing or unreadable file is reported with the predictions
    return found


def run_predict(args) -> int:
    from ..inference import Recognizer
    inputs = expand_inputs(args.paths)
    if not inputs:
        raise EmoadaptError(None, "nothing to predict: give audio files, folders, globs or a manifest")
    from .parser import recognizer_options
    recognizer = Recognizer.from_pretrained(args.model, window_seconds=args.window, max_seconds=args.max_seconds,
                                            batch_size=args.batch_size, backend=args.backend,
                                            **recognizer_options(args))
    subset = recognizer.subset(args.labels)  # checked before any audio is read
    if args.reference and args.group_by:
        raise EmoadaptError(None, "give either --reference clips (one speaker) or --group-by speaker, not both")
    groups: list[tuple[str | None, list[int]]] = [(None, list(range(len(inputs))))]
    if args.reference:
        adapt(recognizer, expand_inputs_paths(args.reference), "--reference")
    elif args.group_by:
        unknown = [i.path for i in inputs if i.speaker is None]
        if unknown:
            raise CorpusError(unknown[0], f"--group-by speaker needs a manifest with a speaker for every file; "
                                          f"{len(unknown)} have none")
        by_speaker: dict[str, list[int]] = {}
        for k, item in enumerate(inputs):
            by_speaker.setdefault(item.speaker, []).append(k)
        groups = sorted(by_speaker.items())
    results: list = [None] * len(inputs)
    for speaker, members in groups:
        if speaker is not None:  # each speaker's own clips are its reference (their audio, never labels)
            adapt(recognizer, [inputs[k].path for k in members], f"speaker {speaker}")
        with warnings.catch_warnings():  # each prediction carries its warnings into the table, JSON and CSV
            warnings.simplefilter("ignore")
            for k, result in zip(members, recognizer.predict_each([inputs[k].path for k in members], labels=subset)):
                results[k] = result
    failed = [(inputs[k], r) for k, r in enumerate(results) if isinstance(r, Exception)]
    done = [(inputs[k], r) for k, r in enumerate(results) if not isinstance(r, Exception)]
    out = sys.stdout
    if args.json:
        json.dump({"model": str(recognizer.model_dir), "labels": subset or recognizer.labels, "subset": subset,
                   "predictions": [dict(r.to_dict(), top=r.top(args.top_k), speaker=i.speaker) for i, r in done],
                   "failed": [{"source": i.path, "error": str(e)} for i, e in failed]}, out, indent=2)
        out.write("\n")
    elif args.csv:
        out.write(csv_text(done, subset or recognizer.labels))
    else:
        out.write(table_text(done, args.top_k))
        if subset:
            out.write(f"labels: {', '.join(subset)} only (probabilities renormalised over them)\n")
    for item, error in failed:
        print(f"failed: {error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(inputs)} inputs failed (listed above)"
              + ("; the others were predicted" if done else "; none was predicted"), file=sys.stderr)
    return 1 if failed else 0


def adapt(recognizer, clips: list[str], who: str) -> None:
    """Recognizer.adapt, its warnings (a small or one-sided reference) printed as one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recognizer.adapt(clips)
    for w in caught:
        print(f"warning ({who}): {w.message}", file=sys.stderr)


def expand_inputs_paths(specs: list[str]) -> list[str]:
    return [i.path for i in expand_inputs(specs)]


def table_text(done, top_k: int) -> str:
    lines = []
    width = max([len(r.source) for _, r in done] + [6])
    for item, r in done:
        top = ", ".join(f"{label} {p:.2f}" for label, p in r.top(top_k))
        speech = f", speech {100 * r.speech['ratio']:.0f} %" if r.speech else ""
        lines.append(f"{r.source:<{width}}  {r.label or '-':<10}  {top}  ({r.duration:.1f} s{speech})")
        if r.abstained:
            lines.append(f"{'':<{width}}    no label: {r.abstained}")
        if r.segments:
            held = ", ".join(f"{c} {v:.0%}" for c, v in sorted(r.shares.items(), key=lambda kv: -kv[1]) if v > 0)
            lines.append(f"{'':<{width}}    speech time: {held}" + ("  (mixed)" if r.mixed else ""))
        for s in r.segments:
            best = max(s.probabilities.values())
            lines.append(f"{'':<{width}}    {s.start:7.2f}-{s.end:7.2f} s  {s.label:<10} {best:.2f}")
        lines += [f"{'':<{width}}    warning: {note}" for note in r.warnings]
    normalizations = sorted({r.normalization for _, r in done})
    if normalizations:
        lines.append("normalization: " + "; ".join(normalizations))
    return "\n".join(lines) + ("\n" if lines else "")


def csv_text(done, labels: list[str]) -> str:
    buffer = io.StringIO()
    w = csv.writer(buffer)
    w.writerow(["source", "segment", "start", "end", "label", *[f"p_{c}" for c in labels], "shares", "abstained",
                "mixed", "speech_ratio", "speech_flag", "normalization", "warnings"])
    for _, r in done:
        notes = " | ".join(r.warnings)
        speech = [r.speech["ratio"], r.speech["flag"]] if r.speech else ["", ""]
        held = " ".join(f"{c}={v:.4f}" for c, v in r.shares.items())  # share of the speech time per class
        w.writerow([r.source, "", 0.0, r.duration, r.label or "", *[f"{r.probabilities[c]:.5f}" for c in labels],
                    held, r.abstained or "", int(r.mixed), *speech, r.normalization, notes])
        for n, s in enumerate(r.segments, start=1):
            w.writerow([r.source, n, s.start, s.end, s.label, *[f"{s.probabilities[c]:.5f}" for c in labels],
                        "", "", "", "", "", r.normalization, notes])
    return buffer.getvalue()

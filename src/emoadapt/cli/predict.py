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


STREAM_CHUNK = 16  # inputs read and encoded together: large enough to batch by length, small enough to stream


def run_predict(args) -> int:
    """Each recording's result is written as soon as it is known (a table row, a JSON line, CSV rows); ``--json``
    writes one document at the end. Progress goes to stderr: a bar on a terminal, a line every ~15 s in a log."""
    from ..inference import Recognizer
    from ..progress import progress_bar
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
    bar = progress_bar(len(inputs), "predict", not args.no_progress, unit="file")
    output = Output(args, recognizer, subset, inputs, bar)
    results: list = [None] * len(inputs)
    try:
        for speaker, members in groups:
            if speaker is not None:  # each speaker's own clips are its reference (their audio, never labels)
                adapt(recognizer, [inputs[k].path for k in members], f"speaker {speaker}")
            with warnings.catch_warnings():  # each prediction carries its warnings into the table, JSON and CSV
                warnings.simplefilter("ignore")
                predictions = recognizer.predict_each([inputs[k].path for k in members], labels=subset,
                                                      chunk=STREAM_CHUNK)
                for k, result in zip(members, predictions):
                    results[k] = result
                    output.add(inputs[k], result)
                    bar.update(1)
    finally:
        bar.close()
    failed = [(inputs[k], r) for k, r in enumerate(results) if isinstance(r, Exception)]
    done = [(inputs[k], r) for k, r in enumerate(results) if not isinstance(r, Exception)]
    output.finish(done, failed)
    if failed:
        print(f"{len(failed)} of {len(inputs)} inputs failed (listed above)"
              + ("; the others were predicted" if done else "; none was predicted"), file=sys.stderr)
    return 1 if failed else 0


class Output:
    """The predictions on stdout in the format asked for, each written as it arrives (``--json``: at the end, in
    input order), through the progress bar so that a bar on the terminal is not torn by the rows."""

    def __init__(self, args, recognizer, subset: list[str] | None, inputs: list[Input], bar):
        self.args, self.recognizer, self.subset, self.bar = args, recognizer, subset, bar
        self.labels = subset or recognizer.labels
        self.width = max([len(i.path) for i in inputs] + [6])
        self.normalizations: set[str] = set()
        if args.csv:
            self._write(csv_line(csv_header(self.labels)))

    def add(self, item: Input, result) -> None:
        if isinstance(result, Exception):
            if self.args.jsonl:
                self._write(json.dumps({"source": item.path, "error": str(result)}))
            self._write(f"failed: {result}", sys.stderr)
            return
        self.normalizations.add(result.normalization)
        if self.args.jsonl:
            self._write(json.dumps(self._record(item, result)))
        elif self.args.csv:
            for row in csv_rows(result, self.labels):
                self._write(csv_line(row))
        elif not self.args.json:
            self._write("\n".join(table_lines(result, self.args.top_k, self.width)))

    def finish(self, done, failed) -> None:
        if self.args.json:
            json.dump({"model": str(self.recognizer.model_dir), "labels": self.labels, "subset": self.subset,
                       "predictions": [self._record(i, r) for i, r in done],
                       "failed": [{"source": i.path, "error": str(e)} for i, e in failed]}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        elif not (self.args.jsonl or self.args.csv):
            if self.normalizations:
                self._write("normalization: " + "; ".join(sorted(self.normalizations)))
            if self.subset:
                self._write(f"labels: {', '.join(self.subset)} only (probabilities renormalised over them)")
        sys.stdout.flush()

    def _record(self, item: Input, result) -> dict:
        return dict(result.to_dict(), top=result.top(self.args.top_k), speaker=item.speaker)

    def _write(self, text: str, file=None) -> None:
        file = file or sys.stdout
        if hasattr(self.bar, "write") and not getattr(self.bar, "disable", True):
            self.bar.write(text, file=file)
        else:
            print(text, file=file)
        file.flush()


def adapt(recognizer, clips: list[str], who: str) -> None:
    """Recognizer.adapt, its warnings (a small or one-sided reference) printed as one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recognizer.adapt(clips)
    for w in caught:
        print(f"warning ({who}): {w.message}", file=sys.stderr)


def expand_inputs_paths(specs: list[str]) -> list[str]:
    return [i.path for i in expand_inputs(specs)]


def table_lines(r, top_k: int, width: int) -> list[str]:
    """One recording's rows of the table: its label and top classes, then what to know (no label, the speech time,
    the segments, warnings), indented under it."""
    top = ", ".join(f"{label} {p:.2f}" for label, p in r.top(top_k))
    speech = f", speech {100 * r.speech['ratio']:.0f} %" if r.speech else ""
    lines = [f"{r.source:<{width}}  {r.label or '-':<10}  {top}  ({r.duration:.1f} s{speech})"]
    if r.abstained:
        lines.append(f"{'':<{width}}    no label: {r.abstained}")
    if r.segments:
        held = ", ".join(f"{c} {v:.0%}" for c, v in sorted(r.shares.items(), key=lambda kv: -kv[1]) if v > 0)
        lines.append(f"{'':<{width}}    speech time: {held}" + ("  (mixed)" if r.mixed else ""))
    for s in r.segments:
        best = max(s.probabilities.values())
        lines.append(f"{'':<{width}}    {s.start:7.2f}-{s.end:7.2f} s  {s.label:<10} {best:.2f}")
    return lines + [f"{'':<{width}}    warning: {note}" for note in r.warnings]


def csv_header(labels: list[str]) -> list[str]:
    return ["source", "segment", "start", "end", "label", *[f"p_{c}" for c in labels], "shares", "abstained",
            "mixed", "speech_ratio", "speech_flag", "normalization", "warnings"]


def csv_rows(r, labels: list[str]) -> list[list]:
    """One row for the recording, then one per segment."""
    notes = " | ".join(r.warnings)
    speech = [r.speech["ratio"], r.speech["flag"]] if r.speech else ["", ""]
    held = " ".join(f"{c}={v:.4f}" for c, v in r.shares.items())  # share of the speech time per class
    rows = [[r.source, "", 0.0, r.duration, r.label or "", *[f"{r.probabilities[c]:.5f}" for c in labels],
             held, r.abstained or "", int(r.mixed), *speech, r.normalization, notes]]
    for n, s in enumerate(r.segments, start=1):
        rows.append([r.source, n, s.start, s.end, s.label, *[f"{s.probabilities[c]:.5f}" for c in labels],
                     "", "", "", "", "", r.normalization, notes])
    return rows


def csv_line(values: list) -> str:
    """One CSV record as the csv module writes it, less the final newline, which the writer adds (the \\r of the
    module's \\r\\n line ending stays, so the stream's lines end as before)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue().rstrip("\n")

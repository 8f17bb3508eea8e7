"""EmoBox's data format (Ma et al., Interspeech 2024), import and export.

A corpus folder ``<name>/`` holds ``<name>.jsonl`` (one JSON object per utterance: ``key``, ``dataset``, ``wav``,
``type``, ``sample_rate``, ``num_frame``, ``task``, ``length``, ``emo``, ``channel``),
``fold_k/<name>_test_fold_k.jsonl`` and ``_train_`` twins, and ``label_map.json``. EmoBox writes no speaker
field: on import the speaker and gender are taken from a ``speaker``/``gender`` field when present (our export
writes them), else from the official file name when ``dataset`` is a corpus known here. Relative ``wav`` paths are resolved against the JSONL's folder or
its nearest ancestor that holds the first file (EmoBox's are relative to its repository root).
Views: ``emo`` (default, EmoBox's labels as written) and ``label_map`` (relabelled by label_map.json).
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import soundfile as sf

from ..errors import CorpusError
from . import cremad, emodb, emovo, iemocap, ravdess
from .base import Corpus, Problems, check_files
from .splits import Folds
from .manifest import Utterance, cell, normalise_gender

PARSERS = {"ravdess": ravdess.parse, "emovo": emovo.parse, "cremad": cremad.parse, "emodb": emodb.parse,
           "iemocap": iemocap.parse}
OWN_FIELDS = {"key", "wav", "emo", "length", "speaker", "gender"}


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".jsonl"
    return path.is_dir() and ((path / f"{path.name}.jsonl").is_file() or any(path.glob("fold_*/*.jsonl")))


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(path, f"line {n}: not JSON ({e.msg})") from None
        if not isinstance(r, dict) or not r.get("key") or not r.get("wav"):
            raise CorpusError(path, f"line {n}: an EmoBox line needs 'key' and 'wav'")
        records.append(r)
    return records


def _audio_base(folder: Path, wavs: list[str]) -> Path:
    relative = [w for w in wavs if not Path(w).is_absolute()]
    for base in (folder, *list(folder.parents)[:3]):
        if relative and (base / relative[0]).exists():
            return base
    return folder


def _row(r: dict, base: Path) -> Utterance:
    wav = Path(r["wav"]) if Path(r["wav"]).is_absolute() else base / r["wav"]
    parse = PARSERS.get(str(r.get("dataset", "")).lower().replace("-", ""))
    named = parse(wav, wav.parent) if parse else None
    return Utterance(id=str(r["key"]), path=str(wav), label=cell(r.get("emo")),
                     speaker=cell(r.get("speaker")) or (named.speaker if named else None),
                     gender=normalise_gender(r.get("gender")) or (named.gender if named else None),
                     duration=float(r["length"]) if r.get("length") is not None else None,
                     extras={k: v for k, v in r.items() if k not in OWN_FIELDS})


def load(path: Path, *, view: str | None = None, strict: bool = True) -> Corpus:
    folder = path if path.is_dir() else path.parent
    main = path if path.is_file() else folder / f"{folder.name}.jsonl"
    tests = {int(m[1]): f for f in sorted(folder.glob("fold_*/*test*.jsonl"))
             if (m := re.fullmatch(r"fold_(\d+)", f.parent.name))}
    records = read_jsonl(main) if main.is_file() else [r for f in tests.values() for r in read_jsonl(f)]
    if not records:
        raise CorpusError(path, "no EmoBox lines found (expected <name>.jsonl or fold_k/*test*.jsonl)")
    base = _audio_base(folder, [r["wav"] for r in records])
    problems = Problems(path, strict)
    rows = check_files([_row(r, base) for r in records], problems, labelled=True)
    if view in (None, "emo"):
        labels = sorted({u.label for u in rows})
    elif view == "label_map":
        try:
            mapping = json.loads((folder / "label_map.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CorpusError(folder / "label_map.json", f"cannot read the label map ({e})") from None
        rows = [replace(u, label=mapping[u.label]) for u in rows if u.label in mapping]
        labels = list(dict.fromkeys(mapping.values()))
    else:
        raise CorpusError(path, f"EmoBox corpora have views 'emo' and 'label_map', not {view!r}")
    folds = None
    if tests:
        fold_of = {str(r["key"]): k for k, f in tests.items() for r in read_jsonl(f)}
        problems.add("utterances in no test fold", [u.id for u in rows if u.id not in fold_of])
        folds = Folds.from_rows([u for u in rows if u.id in fold_of], lambda u: fold_of[u.id])
        problems.add("speakers in more than one fold", folds.mixed_speakers())
    name = str(records[0].get("dataset") or folder.name)
    return Corpus(name, folder, rows, folds, labels, view or "emo", problems.finish())


def write_emobox(corpus: Corpus, folder: str | Path, *, dataset: str | None = None) -> Path:
    """Export a labelled corpus in EmoBox's layout (absolute wav paths; train = all other folds, as in EmoBox).
    Reads each file's header (sample rate, frames, channels), never its samples. Returns the main JSONL."""
    dataset, folder = dataset or corpus.name, Path(folder)
    stems = [Path(u.id).with_suffix("").as_posix() for u in corpus.rows]
    short = [s.rsplit("/", 1)[-1] for s in stems]
    names = short if len(set(short)) == len(short) else [s.replace("/", "-") for s in stems]
    records = {}
    for u, name in zip(corpus.rows, names):
        try:
            info = sf.info(u.path)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise CorpusError(u.path, f"cannot read the audio header ({e})") from None
        records[u.id] = {"key": f"{dataset}-{name}", "dataset": dataset, "wav": str(Path(u.path).absolute()),
                         "type": "raw", "sample_rate": info.samplerate, "num_frame": info.frames, "task": "category",
                         "length": u.duration if u.duration is not None else info.frames / info.samplerate,
                         "emo": u.label, "channel": info.channels, "speaker": u.speaker, "gender": u.gender}

    def write(path: Path, ids) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(records[i]) + "\n" for i in ids), encoding="utf-8")

    main = folder / f"{dataset}.jsonl"
    write(main, [u.id for u in corpus.rows])
    if corpus.folds is not None:
        for k in corpus.folds.fold_ids():
            test = [i for i, f in corpus.folds.assignments.items() if f == k]
            write(folder / f"fold_{k}" / f"{dataset}_test_fold_{k}.jsonl", test)
            write(folder / f"fold_{k}" / f"{dataset}_train_fold_{k}.jsonl",
                  [i for i, f in corpus.folds.assignments.items() if f != k])
    (folder / "label_map.json").write_text(json.dumps({c: c for c in corpus.labels}, indent=4), encoding="utf-8")
    return main

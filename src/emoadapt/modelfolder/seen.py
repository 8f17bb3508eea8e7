"""The leakage guard: every model folder records the utterances and speakers it saw, and nothing is tested on them.

A stage-1 adapter folder and a stage-2 model folder each hold ``seen.json``: the sorted utterance ids whose
frames trained the weights or fitted the input standardisation (stage 2: its training and validation speakers
plus everything its stage-1 initialisation saw), the speakers behind them (``corpus:speaker``; audio from a store
given without its corpus has no known speaker, and is guarded by its ids) and the sha256 of the id list, which
``model.json`` repeats (a hand-edited list is refused).

:func:`refuse_if_seen` is the one check that ``finetune --init``, ``cv --stage1``, the linear probe and
``evaluate`` call (through :func:`refuse_on_folds` for a model used on every fold) with the utterances they are
about to test on. It compares ids and speakers, never store paths,
so the same corpus extracted into another folder is caught as well.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..atomic import atomic_write_text
from ..errors import LeakageError

SEEN = "seen.json"


@dataclass(frozen=True)
class Seen:
    ids: frozenset[str]
    speakers: frozenset[str]   # "corpus:speaker"

    @classmethod
    def of(cls, ids: Iterable[str], speakers: Mapping[str, str | None] | None = None) -> Seen:
        """``speakers``: utterance id -> "corpus:speaker" where known (see :func:`speakers_of`)."""
        ids = frozenset(ids)
        speakers = speakers or {}
        return cls(ids, frozenset(s for s in (speakers.get(i) for i in ids) if s))

    def __or__(self, other: Seen) -> Seen:
        return Seen(self.ids | other.ids, self.speakers | other.speakers)

    def sha256(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()

    def summary(self) -> dict:
        """What model.json records of it (the full list is in seen.json)."""
        return {"utterances": len(self.ids), "ids_sha256": self.sha256(), "speakers": sorted(self.speakers)}


def speakers_of(corpus) -> dict[str, str]:
    """utterance id -> "corpus:speaker" for a corpus's rows with a known speaker."""
    return {u.id: f"{corpus.name}:{u.speaker}" for u in corpus.rows if u.speaker}


def write_seen(folder: str | os.PathLike, seen: Seen) -> dict:
    """``folder/seen.json``; returns the summary that the folder's model.json records."""
    record = {**seen.summary(), "ids": sorted(seen.ids)}
    atomic_write_text(Path(folder) / SEEN, json.dumps(record, indent=0) + "\n")
    return seen.summary()


def read_seen(folder: str | os.PathLike, info: dict) -> Seen:
    """The seen.json of a model folder whose model.json is ``info``, checked against the hash model.json holds."""
    folder = Path(folder)
    expected = (info.get("seen") or {}).get("ids_sha256")
    path = folder / SEEN
    if not expected or not path.is_file():
        raise LeakageError(folder, "this model does not record which utterances and speakers it was trained on "
                                   "(made by an older emoadapt, or seen.json was removed), so it cannot be checked "
                                   "against a test fold; train it again with this version")
    try:
        record = json.loads(path.read_text())
        seen = Seen(frozenset(record["ids"]), frozenset(record["speakers"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LeakageError(path, f"unreadable record of the training data ({error}); train the model again") from None
    if seen.sha256() != expected:
        raise LeakageError(path, "the list of training utterances does not match the hash in model.json (edited "
                                 "or damaged); train the model again")
    return seen


def refuse_on_folds(seen: Seen, corpus, folds: Iterable[int], *, model: str, advice: str = "") -> None:
    """:func:`refuse_if_seen` for each fold's test utterances: a model used for every fold (a shared stage 1, a
    probe) must never have seen any of them."""
    speakers = speakers_of(corpus)
    for k in folds:
        refuse_if_seen(seen, corpus.folds.split(k, val_fraction=0).test, speakers, model=model,
                       test=f"fold {k} of {corpus.name}{advice}")


def refuse_if_seen(seen: Seen, test_ids: Iterable[str], test_speakers: Mapping[str, str | None], *, model: str,
                   test: str) -> None:
    """Raise :class:`LeakageError` when ``seen`` includes any test utterance or test speaker.
    ``test_speakers``: test id -> "corpus:speaker" (:func:`speakers_of`); ``model`` / ``test`` name both sides."""
    test_ids = set(test_ids)
    ids = sorted(seen.ids & test_ids)
    speakers = sorted(seen.speakers & {s for s in (test_speakers.get(i) for i in test_ids) if s})
    if not ids and not speakers:
        return
    what = []
    if speakers:
        what.append(f"{len(speakers)} of its test speakers ({', '.join(speakers[:4])}{' ...' if len(speakers) > 4 else ''})")
    if ids:
        what.append(f"{len(ids)} of its test utterances (e.g. {ids[0]})")
    raise LeakageError(model, f"this model was trained on {' and '.join(what)} of {test}, so its score there would "
                              f"not be a test result; use a model that never saw them (e.g. `emoadapt pretrain "
                              f"--corpus C --fold K` trains stage 1 on fold K's training speakers only)")

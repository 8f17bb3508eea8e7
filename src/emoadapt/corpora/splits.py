"""Folds and splits. Folds are data: a table of which test fold each utterance belongs to, read from a file
(EmoBox's assignment for RAVDESS and EMOVO ships in ``folds/*.csv``); a split is the one place that turns a
fold into speaker-disjoint train / validation / test lists.

Fold file format (as in ../shared/data): CSV ``path,speaker,fold`` with ``path`` = utterance id (relative to
the corpus folder), or a speaker-level table ``speaker,fold`` that applies to every utterance of the speaker.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import CorpusError
from .manifest import Utterance, read_table

if TYPE_CHECKING:
    from .base import Problems

PACKAGED = Path(__file__).parent / "folds"   # speaker -> fold tables shipped with emoadapt


@dataclass
class Split:
    train: list[str]   # utterance ids
    val: list[str]     # whole speakers drawn from the training speakers, never from the test fold
    test: list[str]    # the fold's utterances


@dataclass
class Folds:
    assignments: dict[str, int]                                    # utterance id -> its test fold
    speakers: dict[str, str | None] = field(default_factory=dict)  # utterance id -> speaker (splits go by speaker)
    genders: dict[str, str | None] = field(default_factory=dict)   # speaker -> gender (to balance validation)

    @classmethod
    def from_rows(cls, rows: list[Utterance], fold_of: Callable[[Utterance], int]) -> Folds:
        genders: dict[str, str | None] = {}
        for u in rows:
            if u.speaker and not genders.get(u.speaker):
                genders[u.speaker] = u.gender
        return cls({u.id: int(fold_of(u)) for u in rows}, {u.id: u.speaker for u in rows}, genders)

    def fold_ids(self) -> list[int]:
        return sorted(set(self.assignments.values()))

    def group(self, utt_id: str) -> str:
        """The unit that must not cross train/val/test: the speaker, or the utterance itself if none is known."""
        return self.speakers.get(utt_id) or f"utterance:{utt_id}"

    def restrict(self, ids: Iterable[str]) -> Folds:
        """The same folds over a subset of utterances (e.g. after dropping clips too short to encode)."""
        keep = [i for i in ids if i in self.assignments]
        return Folds({i: self.assignments[i] for i in keep}, {i: self.speakers.get(i) for i in keep},
                     dict(self.genders))

    def mixed_speakers(self) -> list[str]:
        """Speakers found in more than one fold: such folds are not speaker-independent."""
        seen: dict[str, set[int]] = {}
        for i, fold in self.assignments.items():
            seen.setdefault(self.group(i), set()).add(fold)
        return [f"{s} (folds {sorted(f)})" for s, f in sorted(seen.items()) if len(f) > 1]

    def split(self, fold: int | None, *, val_fraction: float = 0.1, seed: int = 0) -> Split:
        """test = the fold; val = round(val_fraction x training speakers) whole speakers (at least 1 unless
        val_fraction is 0), drawn from the training speakers only, alternating genders, deterministic in
        (seed, fold); train = the rest. No speaker appears in two of the three lists. ``fold`` None: every
        speaker trains or validates and nothing is tested (a model for other corpora or for use)."""
        if fold is not None and fold not in self.assignments.values():
            raise CorpusError(None, f"no fold {fold}; the folds are {self.fold_ids()}")
        if not 0 <= val_fraction < 1:
            raise CorpusError(None, f"val_fraction must be in [0, 1), got {val_fraction}")
        if mixed := self.mixed_speakers():
            raise CorpusError(None, f"folds are not speaker-independent: {', '.join(mixed[:5])}")
        test = [i for i, f in self.assignments.items() if f == fold]
        rest = [i for i, f in self.assignments.items() if f != fold]
        train_speakers = sorted({self.group(i) for i in rest})
        n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(train_speakers)))
        if n_val >= len(train_speakers):
            raise CorpusError(None, f"{'fold ' + str(fold) if fold is not None else 'the corpus'} leaves "
                                    f"{len(train_speakers)} training speaker(s): too few to also "
                                    f"draw {n_val} validation speaker(s) from them")
        val_speakers = self._balanced_speakers(train_speakers, n_val, random.Random(f"{seed}:{fold}"))
        val = [i for i in rest if self.group(i) in val_speakers]
        train = [i for i in rest if self.group(i) not in val_speakers]
        return Split(train, val, test)

    def _balanced_speakers(self, speakers: list[str], n: int, rng: random.Random) -> set[str]:
        pools: dict[str, list[str]] = {}
        for s in speakers:
            pools.setdefault(self.genders.get(s) or "unknown", []).append(s)
        for pool in pools.values():
            rng.shuffle(pool)
        order = sorted(pools)
        start = rng.randrange(len(order))            # which gender gets the odd speaker varies with seed and fold
        order = order[start:] + order[:start]
        picked: list[str] = []
        while len(picked) < n:                        # round-robin over genders: balanced where possible
            for g in order:
                if pools[g] and len(picked) < n:
                    picked.append(pools[g].pop())
        return set(picked)


# --- deriving folds from speakers -----------------------------------------------------------------------------
def from_speaker_table(rows: list[Utterance], table: dict[str, int], source: str | Path) -> Folds:
    missing = sorted({u.speaker or "(no speaker)" for u in rows if u.speaker not in table})
    if missing:
        raise CorpusError(source, f"{len(missing)} speakers have no fold in this table: {', '.join(missing[:5])}")
    return Folds.from_rows(rows, lambda u: table[u.speaker])


def leave_one_speaker_out(rows: list[Utterance]) -> Folds:
    """Fold k tests the k-th speaker in sorted order."""
    order = sorted({u.speaker for u in rows if u.speaker})
    return from_speaker_table(rows, {s: k + 1 for k, s in enumerate(order)}, "leave-one-speaker-out")


def round_robin_speakers(rows: list[Utterance], k: int) -> Folds:
    """Speakers in sorted order dealt to folds 1..k in turn (speaker i -> fold i mod k + 1)."""
    order = sorted({u.speaker for u in rows if u.speaker})
    return from_speaker_table(rows, {s: i % k + 1 for i, s in enumerate(order)}, f"{k} folds by speaker order")


FEW_SPEAKERS = 10  # up to this many speakers, each is a fold of its own


def speaker_folds(rows: list[Utterance], where: str | Path | None = None, k: int = 5) -> tuple[Folds, str]:
    """Speaker-independent folds for a corpus that brings none: leave one speaker out when it has few speakers,
    else ``k`` folds of whole speakers (dealt in sorted order). Returns the folds and a line that says which."""
    anonymous = [u.id for u in rows if not u.speaker]
    if anonymous:
        raise CorpusError(where, f"{len(anonymous)} utterances have no speaker (e.g. {anonymous[0]}), so folds cannot "
                                 f"keep speakers apart: give the corpus a speaker column, a fold column or a folds.csv "
                                 f"(path,speaker,fold)")
    speakers = sorted({u.speaker for u in rows})
    if len(speakers) < 2:
        raise CorpusError(where, f"cross-validation needs at least two speakers; this corpus has {len(speakers)}")
    if len(speakers) <= FEW_SPEAKERS:
        return leave_one_speaker_out(rows), f"no folds given: leave one speaker out ({len(speakers)} folds)"
    return round_robin_speakers(rows, k), (f"no folds given: {k} folds of whole speakers ({len(speakers)} speakers "
                                           f"dealt in sorted order; a folds.csv or a fold column sets your own)")


def corpus_folds(rows: list[Utterance], where: str | Path | None = None) -> tuple[Folds, dict[int, str]]:
    """Leave-one-corpus-out: fold k holds every utterance of the k-th source corpus (by name), read from the
    ``corpus`` column that ``emoadapt merge`` writes. Returns the folds and fold -> corpus name."""
    missing = [u.id for u in rows if not (u.extras.get("corpus") or "").strip()]
    if missing:
        raise CorpusError(where, f"{len(missing)} utterances have no 'corpus' column value (e.g. {missing[0]}): "
                                 "leave-one-corpus-out needs a merged corpus; make one with `emoadapt merge A B C "
                                 "--label-map shared7 --out DIR`")
    names = sorted({u.extras["corpus"].strip() for u in rows})
    if len(names) < 2:
        raise CorpusError(where, f"leave-one-corpus-out needs at least two corpora; this one holds only {names[0]!r}")
    number = {name: k + 1 for k, name in enumerate(names)}
    return Folds.from_rows(rows, lambda u: number[u.extras["corpus"].strip()]), {k: n for n, k in number.items()}


def packaged_table(name: str) -> dict[str, int]:
    """The speaker -> fold table shipped for a corpus (``folds/<name>.csv``)."""
    return _speaker_table(PACKAGED / f"{name}.csv", _read_csv(PACKAGED / f"{name}.csv"))


# --- fold files -----------------------------------------------------------------------------------------------
def read_folds(path: str | Path, rows: list[Utterance] | None = None) -> Folds:
    """Read a fold file. With ``rows``, every row must get a fold (a speaker-level table needs them)."""
    folds, uncovered = _read_folds(Path(path), rows)
    if uncovered:
        shown = ", ".join(uncovered[:5]) + (f" and {len(uncovered) - 5} more" if len(uncovered) > 5 else "")
        raise CorpusError(path, f"{len(uncovered)} utterances have no fold in this file: {shown}")
    return folds


def write_folds(folds: Folds, path: str | Path, *, per_speaker: bool = False) -> Path:
    """Write ``path,speaker,fold`` (one line per utterance) or, with per_speaker, ``speaker,fold``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if per_speaker:
            if mixed := folds.mixed_speakers():
                raise CorpusError(path, f"cannot write a speaker table: {', '.join(mixed[:5])}")
            table = {folds.speakers.get(i): fold for i, fold in folds.assignments.items()}
            if None in table:
                raise CorpusError(path, "cannot write a speaker table: some utterances have no speaker")
            w.writerow(["speaker", "fold"])
            w.writerows(sorted(table.items(), key=lambda sf: (sf[1], sf[0])))
        else:
            w.writerow(["path", "speaker", "fold"])
            w.writerows([i, folds.speakers.get(i) or "", fold] for i, fold in folds.assignments.items())
    return path


def folds_for(root: Path, rows: list[Utterance], default: Callable[[list[Utterance]], Folds],
              problems: Problems) -> Folds:
    """A corpus folder's own ``folds.csv`` wins; otherwise the corpus's documented default."""
    own = root / "folds.csv"
    if own.is_file():
        folds, uncovered = _read_folds(own, rows)
        problems.add(f"utterances without a fold in {own}", uncovered)
    else:
        folds = default(rows)
    problems.add("speakers in more than one fold", folds.mixed_speakers())
    return folds


def _read_csv(path: Path) -> list[dict[str, str]]:
    table, _ = read_table(path, "fold file")
    columns = set(table[0]) if table else set()
    if "fold" not in columns or not columns & {"path", "speaker"}:
        raise CorpusError(path, f"a fold file needs columns path,speaker,fold or speaker,fold; found {sorted(columns)}")
    for n, r in enumerate(table, start=2):
        try:
            r["fold"] = int(r["fold"])
        except (TypeError, ValueError):
            raise CorpusError(path, f"line {n}: fold {r['fold']!r} is not a whole number") from None
    return table


def _speaker_table(path: Path, table: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in table:
        if out.setdefault(r["speaker"], r["fold"]) != r["fold"]:
            raise CorpusError(path, f"speaker {r['speaker']} is given two folds ({out[r['speaker']]} and {r['fold']})")
    return out


def _read_folds(path: Path, rows: list[Utterance] | None) -> tuple[Folds, list[str]]:
    table = _read_csv(path)
    if "path" not in table[0]:
        if rows is None:
            raise CorpusError(path, "a speaker,fold table applies to a corpus: pass its rows, read_folds(path, rows)")
        speakers = _speaker_table(path, table)
        uncovered = [u.id for u in rows if u.speaker not in speakers]
        return Folds.from_rows([u for u in rows if u.speaker in speakers], lambda u: speakers[u.speaker]), uncovered
    by_id = {str(PurePosixPath(r["path"])): r for r in table}   # normalises './a/b.wav' to 'a/b.wav'
    if rows is None:
        speakers = {i: r.get("speaker") or None for i, r in by_id.items()}
        return Folds({i: r["fold"] for i, r in by_id.items()}, speakers), []
    uncovered = [u.id for u in rows if u.id not in by_id]
    return Folds.from_rows([u for u in rows if u.id in by_id], lambda u: by_id[u.id]["fold"]), uncovered

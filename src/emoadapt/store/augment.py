"""Augmented copies of a corpus in a feature store of their own: each clip ``copies`` times, each copy under one
recording condition drawn from :data:`emoadapt.conditions.AUGMENTATIONS` (noise at 0-20 dB SNR, babble of other
speakers, noise recordings, reverb, 8 kHz, telephone, GSM, MP3, Opus, gain, speed) and then encoded like any clip.

    emoadapt extract CORPUS --store S-aug --augment copies=1,seed=0 [--augment-noise DIR]
    emoadapt cv CORPUS --store S --augmented-store S-aug ...      # training clips gain their copies

Copy ``k`` of utterance ``id`` is stored as ``id~aug<k>`` (:func:`augmented_id`); its condition and strength are
drawn from a generator seeded by (seed, id, k), so a resumed or repeated extraction makes the same audio, and the
store's meta records the augmentation (a store holds one; extraction refuses another). Training adds the copies of
the training utterances only: validation and test clips stay clean. A separate store keeps the clean one untouched,
so one augmented store serves every recipe and every model trained on that corpus.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EmoadaptError

SEPARATOR = "~aug"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")


def augmented_id(utt_id: str, copy: int) -> str:
    return f"{utt_id}{SEPARATOR}{copy}"


def source_id(utt_id: str) -> str:
    """The clean utterance an id names: itself, or the one an augmented copy was made from."""
    base, sep, copy = utt_id.rpartition(SEPARATOR)
    return base if sep and copy.isdigit() else utt_id


@dataclass(frozen=True)
class Augmentation:
    """What an augmented store holds: ``copies`` per clip, drawn with ``seed`` from ``kinds``; "babble" mixes
    clips of other speakers of the same corpus (``babble_pool`` of them, drawn with the seed), "noise recordings"
    the audio files in ``noise`` (folders or files; the kind is dropped when none is given)."""
    copies: int = 1
    seed: int = 0
    kinds: tuple[str, ...] = ()          # empty: every kind of AUGMENTATIONS that has its sources, but the COSTLY
    noise: tuple[str, ...] = ()
    babble_pool: int = 100

    def resolved(self) -> Augmentation:
        from ..conditions import AUGMENTATIONS, COSTLY
        if self.copies < 1:
            raise EmoadaptError(None, f"augment copies={self.copies}: at least 1")
        kinds = tuple(self.kinds) or tuple(k for k in AUGMENTATIONS if k not in COSTLY
                                           and (self.noise or k != "noise recordings"))
        unknown = [k for k in kinds if k not in AUGMENTATIONS]
        if unknown:
            raise EmoadaptError(None, f"augment kinds: unknown {unknown}; the kinds are {', '.join(AUGMENTATIONS)}")
        if {"reverb", "gsm"} & set(kinds):
            try:
                import pedalboard  # noqa: F401
            except ImportError:
                raise EmoadaptError(None, "augment kinds reverb and gsm need pedalboard: pip install "
                                          "'emoadapt[augment]', or leave them out with kinds=...") from None
        if "noise recordings" in kinds and not self.noise:
            raise EmoadaptError(None, "augment kind 'noise recordings' needs noise files (--augment-noise DIR)")
        return replace(self, kinds=kinds, noise=tuple(sorted(str(p) for p in noise_files(self.noise))))

    def to_meta(self) -> dict:
        return {**asdict(self), "kinds": list(self.kinds), "noise": list(self.noise)}


def parse_augmentation(text: str, noise: Sequence[str] = ()) -> Augmentation:
    """``copies=2,seed=0,kinds=white noise+babble+telephone`` (every key optional) as an :class:`Augmentation`."""
    values: dict = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            if key in ("copies", "seed", "babble_pool") and sep:
                values[key] = int(value)
            elif key == "kinds" and sep:
                values[key] = tuple(k.strip() for k in value.split("+") if k.strip())
            else:
                raise ValueError
        except ValueError:
            raise EmoadaptError(None, f"--augment {text!r}: {item!r} is not copies=N, seed=N, babble_pool=N or "
                                      f"kinds=A+B") from None
    return Augmentation(**values, noise=tuple(noise)).resolved()


def noise_files(paths: Sequence[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise EmoadaptError(p, "augment noise: no such file or folder")
    if paths and not files:
        raise EmoadaptError(paths[0], f"augment noise: no audio files ({', '.join(AUDIO_SUFFIXES)}) here")
    return files


@dataclass(frozen=True)
class AugmentedRow:
    """One augmented copy to extract: the clean utterance's audio, stored under :func:`augmented_id`."""
    id: str
    path: str
    speaker: str | None
    copy: int
    source: str


def augmented_rows(rows: Sequence, augmentation: Augmentation) -> list[AugmentedRow]:
    return [AugmentedRow(augmented_id(u.id, k), str(u.path), u.speaker, k, u.id)
            for u in rows for k in range(1, augmentation.copies + 1)]


@dataclass
class Augmenter:
    """Applies an :class:`Augmentation` to the audio of :class:`AugmentedRow`\\ s (thread-safe: no shared RNG)."""
    augmentation: Augmentation
    babble: list[tuple[str | None, np.ndarray]] = field(default_factory=list)  # (speaker, wave)
    noise: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def for_rows(cls, augmentation: Augmentation, rows: Sequence, load) -> Augmenter:
        """The babble pool drawn from ``rows`` (the clean utterances), the noise files read; ``load(path)``
        reads audio at 16 kHz."""
        augmentation = augmentation.resolved()
        babble = []
        if "babble" in augmentation.kinds:
            if len({u.speaker for u in rows}) < 2:
                raise EmoadaptError(None, "augment kind 'babble' needs clips of at least two speakers (other "
                                          "speakers are mixed in); leave it out with kinds=...")
            rng = np.random.default_rng([augmentation.seed, 7])
            picks = sorted(rng.choice(len(rows), min(augmentation.babble_pool, len(rows)), replace=False))
            babble = [(rows[i].speaker, load(rows[i].path)) for i in picks]
        return cls(augmentation, babble, [load(p) for p in augmentation.noise])

    def __call__(self, wave: np.ndarray, row: AugmentedRow) -> np.ndarray:
        from ..conditions import NoiseSources, augment
        rng = np.random.default_rng([self.augmentation.seed, zlib.crc32(row.source.encode()), row.copy])
        others = [w for speaker, w in self.babble if speaker != row.speaker or speaker is None]
        augmented, _ = augment(wave, self.augmentation.kinds, rng, NoiseSources(speech=others, music=self.noise))
        return augmented

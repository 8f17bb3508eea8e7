"""Speaker and utterance normalisation: every choice of ``normalize`` and the reference clips it takes.

Emotion is heard relative to how a person usually sounds: ``speaker`` standardises each speaker's hidden states with
that speaker's own frame statistics (from their audio, never their labels), ``utterance`` each utterance with its
own, ``global`` nothing beyond the model's own standardisation. A test speaker's reference clips are drawn by
``calibration`` settings (:class:`CalibrationConfig`); using them is a protocol of its own (:func:`protocol_of`).
Training (:func:`make_normalizer` over a corpus and its store) and inference (:func:`normalizer_for`, from a
model's recorded setting and a speaker's statistics) both come here.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..corpora import Corpus
from ..corpora.base import speaker_group
from ..errors import CorpusError, EmoadaptError
from ..store.augment import source_id
from ..store.features import FeatureStore, array_statistics

NORMALIZATIONS = ("global", "speaker", "utterance")
CALIBRATED_SPEAKERS = ("test", "all")  # calibration.apply_to
SCOPES = ("speaker", "corpus", "none")  # calibration.scope
IF_MISSING = ("refuse", "none")         # calibration.if_missing
SPREADS = ("population", "reference")   # calibration.spread
# what a model recorded before calibration.spread existed did: the reference's own spread, no emotion removed
LEGACY_REFERENCE = {"spread": "reference", "remove_emotion": False}
FEW_CLIPS = 10  # calibration below this many clips is weak (docs/RESULTS.md, the calibration curve)
# a reference looks one-sided when, read without a reference, its clips spread over less than this share of the
# model's classes' worth (the exponential of the entropy of their mean probabilities: 4 of 7), or this share of them
# reads as one class
ONE_SIDED, MOSTLY_ONE = 4 / 7, 0.6


@dataclass
class CalibrationConfig:
    """Which of a speaker's clips give its statistics under ``normalize: speaker``. The test speakers' audio is
    used, never their labels, except that ``only_label`` picks clips by label to imitate a user who records a few
    clips of one kind (e.g. neutral speech). ``apply_to`` "test": only test speakers are calibrated this way
    (training and validation speakers use all of their clips); "all": every speaker is, so that the model is trained
    and its settings chosen on speakers normalised the way its users' will be (e.g. by their neutral clips)."""
    clips: int | None = None         # k clips drawn at random (fixed by the seed); None: all of the speaker's clips
    only_label: str | None = None    # draw only among the speaker's clips with this label, e.g. neutral
    apply_to: str = "test"           # "test" or "all"
    scope: str = "speaker"           # "speaker": each test speaker is its own reference; "corpus": the test set is one;
    #                                  "none": no reference, the training population's statistics (what a speaker model
    #                                  does without reference audio)
    shrink: float = 0.0              # τ, in clips: a reference of n clips weighs n / (n + τ) against the training
    #                                  population's statistics (0: the reference alone), so a small one does less
    train_shrink: float = 0.0        # τ for the speakers that are not calibrated (training and validation speakers
    #                                  under apply_to "test", all of their clips): part of how the model is trained,
    #                                  kept apart from shrink so that choosing how references are read leaves the
    #                                  model as it was validated (models before it used shrink for both)
    train_shrink_grid: tuple[float, ...] = ()  # τ values to choose train_shrink from on the training corpora, each
    #                                  held out in turn and read without a reference (the others' population
    #                                  statistics), as a speaker without reference audio is read (stats recipe,
    #                                  choose_by corpus; :func:`emoadapt.training.closed_form.choose_train_shrink`)
    balance: bool = False            # also weigh it by how evenly the model, without a reference, spreads the
    #                                  reference's clips over the classes (1: evenly; less: one-sided, e.g. all angry)
    if_missing: str = "refuse"       # a test speaker without a clip labelled only_label: "refuse", or "none" (no
    #                                  reference for that speaker: the training population's statistics)
    spread: str = "population"       # a reference's std: "population" keeps the training population's and moves the
    #                                  mean only (a few clips, or clips of one emotion, have too narrow a spread and
    #                                  inflate every feature); "reference": its own (what models before it did)
    remove_emotion: bool = True      # take out of a reference's mean the emotion the model hears in it: its mean
    #                                  class probabilities (read without a reference) against the training prior,
    #                                  times each class's offset learnt in training (ClassOffsets; models trained now
    #                                  keep them)

    @property
    def reads_model(self) -> bool:
        """Whether a reference needs the model's reading of its clips (balance, emotion removal)."""
        return self.balance or self.remove_emotion


@dataclass
class ClassOffsets:
    """What each emotion adds to a speaker's hidden states, learnt in training: ``offsets`` [C, L+1, D] the mean over
    a class's training clips of the clip's frame mean standardised with its speaker's statistics, and ``prior`` [C]
    the classes' share of training frames. A speaker's reference of clips whose emotions are spread like the prior has
    the mean the model was trained with; a reference of one emotion is off by that emotion's offset (in units of the
    speaker's std), which :func:`reference_statistics` takes out."""
    offsets: np.ndarray
    prior: np.ndarray


class Normalizer:
    """Standardises an utterance's hidden states per layer and dimension with its speaker's frame statistics
    (``mode`` "speaker"; ``statistics``: speaker -> (mean, std) [L+1, D]) or with its own ("utterance"; also any
    utterance whose speaker is unknown, e.g. audio of an unlabeled store). Emotion is heard relative to how a person
    usually sounds; removing each speaker's average voice leaves what varies within the speaker."""

    def __init__(self, mode: str, speaker_of: dict[str, str] | None = None,
                 statistics: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, eps: float = 1e-5):
        self.mode, self.speaker_of, self.eps = mode, dict(speaker_of or {}), eps
        self._by_speaker = {s: self._pair(m, d) for s, (m, d) in (statistics or {}).items()}
        self.everyone = None  # one_speaker: the statistics of every utterance
        self.population = None  # the training population's (mean, std): what a reference is shrunk toward
        self.weights: dict[str, float] = {}  # speaker -> the weight its reference kept after shrinking
        self.references: dict = {}  # test speaker -> (its reference's raw (mean, std), the reference clips' ids)
        self.calibration = CalibrationConfig()  # how the test references are made (make_normalizer sets it)

    def read_references(self, probabilities_without_reference, offsets: ClassOffsets | None) -> None:
        """Remake every test reference with the trained model's reading of its clips (balance, emotion removal:
        :func:`reference_statistics`): ``probabilities_without_reference(ids)`` gives the model's probabilities [n, C]
        for those clips normalised with the population's statistics (as without a reference); asked once, for every
        reference clip."""
        every = sorted({i for _, ids in self.references.values() for i in ids})
        if not every:
            return
        row = {i: k for k, i in enumerate(every)}
        probabilities = probabilities_without_reference(every)
        for speaker, (raw, ids) in self.references.items():
            stats, self.weights[speaker], _ = reference_statistics(
                raw, self.population, len(ids), self.calibration, probabilities[[row[i] for i in ids]], offsets)
            self._by_speaker[speaker] = self._pair(*stats)

    def _pair(self, mean, std) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1 / sqrt(std² + eps)) as float32 [L+1, 1, D], ready to broadcast over frames."""
        inv_std = 1.0 / np.sqrt(np.square(std) + self.eps)
        return np.asarray(mean, np.float32)[:, None], inv_std.astype(np.float32)[:, None]

    @classmethod
    def one_speaker(cls, statistics: tuple[np.ndarray, np.ndarray]) -> Normalizer:
        """Every utterance standardised with these (mean, std) [L+1, D]: one speaker's, e.g. from calibration
        clips."""
        normalizer = cls("speaker", statistics={"": statistics})
        normalizer.everyone = normalizer._by_speaker[""]
        return normalizer

    def statistics(self, utt_id: str | None, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.everyone is not None:
            return self.everyone
        # an augmented copy is its speaker's: standardised with the statistics of the speaker's clean clips
        speaker = self.speaker_of.get(source_id(utt_id) if utt_id else utt_id) if self.mode == "speaker" else None
        if speaker is not None:
            return self._by_speaker[speaker]
        return self._pair(*array_statistics([x]))

    def normalize(self, x: np.ndarray, utt_id: str | None = None) -> np.ndarray:
        """``x`` [L+1, T, D] standardised, as float32."""
        mean, inv_std = self.statistics(utt_id, x)
        return (np.asarray(x, np.float32) - mean) * inv_std



def balance_of(probabilities: np.ndarray) -> float:
    """How evenly clips spread over the classes: the entropy of their mean class probabilities over log C (1: every
    class alike; near 0: one class). Read without a reference, a reference of one emotion scores low."""
    mean = np.clip(np.asarray(probabilities, np.float64).mean(0), 1e-12, None)
    return float(-(mean * np.log(mean)).sum() / np.log(len(mean))) if len(mean) > 1 else 1.0


def shrunk(reference: tuple[np.ndarray, np.ndarray], population: tuple[np.ndarray, np.ndarray] | None,
           clips: int, tau: float, balance: float = 1.0) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """(mean, std) of a reference of ``clips`` clips moved toward the training population's by the weight
    n / (n + τ) × ``balance`` of the reference (its first and second moments mixed, so the std stays a std), and
    that weight."""
    weight = (clips / (clips + tau) if tau > 0 else 1.0) * balance
    if population is None or weight >= 1.0:
        return reference, 1.0
    (mean, std), (pop_mean, pop_std) = reference, population
    mixed = weight * mean + (1 - weight) * pop_mean
    second = weight * (np.square(std) + np.square(mean)) + (1 - weight) * (np.square(pop_std) + np.square(pop_mean))
    return (mixed, np.sqrt(np.maximum(second - np.square(mixed), 0.0))), weight


def with_legacy_calibration(record: dict) -> dict:
    """A recorded ``calibration`` dict, with what a record made before a setting existed did then filled in: before
    ``spread``, references as :data:`LEGACY_REFERENCE`; before ``train_shrink``, ``shrink`` for the training speakers
    too."""
    record = record if "spread" in record else {**LEGACY_REFERENCE, **record}
    return record if "train_shrink" in record else {**record, "train_shrink": record.get("shrink", 0.0)}


def recorded_calibration(record: dict | None) -> CalibrationConfig:
    """The calibration settings a model folder's config records (:func:`with_legacy_calibration`)."""
    known = CalibrationConfig.__dataclass_fields__
    return CalibrationConfig(**{k: v for k, v in with_legacy_calibration(dict(record or {})).items() if k in known})


def reference_statistics(raw: tuple[np.ndarray, np.ndarray], population: tuple[np.ndarray, np.ndarray] | None,
                         clips: int, calibration: CalibrationConfig, without: np.ndarray | None = None,
                         offsets: ClassOffsets | None = None) -> tuple[tuple[np.ndarray, np.ndarray], float, dict]:
    """The (mean, std) a reference of ``clips`` clips whose frames have the ``raw`` (mean, std) stands for, as
    ``calibration`` says: its std or the population's (``spread``), its mean less the emotion the model hears in it
    (``remove_emotion``: ``without``, the model's probabilities [n, C] for the clips read with the population's
    statistics, against ``offsets``), then shrunk toward the population by n / (n + τ), times the balance of
    ``without`` with ``balance`` (:func:`shrunk`). Returns the statistics, the weight the reference kept, and what was
    done (``balance``, ``spread``, ``emotion_removed``: the reference's estimated share of each class less the
    prior's, or None when nothing was removed). Training, ``evaluate``, the tools and the Recognizer all come here."""
    mean, std = raw
    if calibration.spread == "population" and population is not None:
        std = population[1]
    removed = None
    if calibration.remove_emotion and offsets is not None and without is not None and len(without):
        excess = np.asarray(without, np.float64).mean(0) - offsets.prior
        mean = mean - std * np.tensordot(excess, offsets.offsets, 1)
        removed = [round(float(x), 4) for x in excess]
    balance = balance_of(without) if calibration.balance and without is not None else 1.0
    statistics, weight = shrunk((mean, std), population, clips, calibration.shrink, balance)
    spread = calibration.spread if population is not None else "reference"
    return statistics, weight, {"balance": round(balance, 4), "spread": spread, "emotion_removed": removed}


def class_offsets(normalizer: Normalizer, store: FeatureStore, ids: Iterable[str], label_of: dict[str, str],
                  labels: Sequence[str]) -> ClassOffsets | None:
    """The :class:`ClassOffsets` of training clips ``ids`` (``label_of``: id -> label among ``labels``), each clip's
    frame mean standardised with its speaker's statistics in ``normalizer`` (their audio; the labels only say which
    class a clip adds to). A class without a training clip gets offset 0 and prior 0 (nothing is known to remove);
    None when no clip has a known speaker."""
    total, frames = None, np.zeros(len(labels))
    for i in ids:
        if i not in store or label_of.get(i) not in labels or normalizer.speaker_of.get(i) is None:
            continue
        x = np.asarray(store.get(i), np.float64)
        mean, inv_std = normalizer.statistics(i, x)
        z = (x.mean(1) - mean[:, 0]) * inv_std[:, 0] * x.shape[1]
        if total is None:
            total = np.zeros((len(labels), *z.shape))
        c = list(labels).index(label_of[i])
        total[c] += z
        frames[c] += x.shape[1]
    if total is None:
        return None
    offsets = total / np.maximum(frames, 1)[:, None, None]
    return ClassOffsets(offsets.astype(np.float32), (frames / frames.sum()).astype(np.float32))


def normalizer_for(normalize: str, statistics: tuple[np.ndarray, np.ndarray] | None = None) -> Normalizer | None:
    """How hidden states of new audio are normalised for a model trained with ``normalize``, as its training inputs
    were: not at all (``global``), each by itself (``utterance``), or with a speaker's (mean, std) ``statistics``
    (``speaker``: required then)."""
    if normalize == "global":
        return None
    if normalize == "utterance":
        return Normalizer("utterance")
    if statistics is None:
        raise EmoadaptError(None, "this model was trained on speaker-normalised features: give the speaker's "
                                  "statistics from reference clips (Recognizer.adapt, predict --reference)")
    return Normalizer.one_speaker(statistics)


def make_normalizer(config, corpus: Corpus, store: FeatureStore, test_ids: Iterable[str] = (),
                    population: tuple[np.ndarray, np.ndarray] | None = None) -> Normalizer | None:
    """The normalisation ``config.normalize`` asks for (None for "global": the model's own standardisation only).
    "speaker": each speaker's statistics from all of their clips in ``store`` (their audio, never their labels),
    except that the speakers of ``test_ids`` (every speaker, with ``calibration.apply_to: all``) use the clips
    ``config.calibration`` draws, shrunk toward ``population`` (default: the statistics of every utterance that is not
    a test utterance; a trained model's own when it is evaluated) by ``calibration.shrink``; the other speakers' by
    ``calibration.train_shrink``."""
    if config.normalize == "global":
        return None
    if config.normalize == "utterance":
        return Normalizer("utterance")
    by_id = {u.id: u for u in corpus.rows}
    group, test_ids = speaker_group(corpus), set(test_ids)
    calibration = config.calibration
    if calibration.scope == "corpus":  # the test set is one reference: one "speaker" for the statistics
        group = (lambda base: lambda i: "test set" if i in test_ids else base(i))(group)
    clips: dict[str, list[str]] = {}
    for u in corpus.rows:
        if u.id in store:
            clips.setdefault(group(u.id), []).append(u.id)
    calibrated = set(clips) if calibration.apply_to == "all" else {group(i) for i in test_ids}
    if population is None:
        training = [i for ids in clips.values() for i in ids if i not in test_ids]
        population = array_statistics(store.get(i) for i in training) if training else None
    if calibration.scope == "none" and population is None:
        raise EmoadaptError(None, "calibration.scope=none needs the training population's statistics (a model saved "
                                  "with reference.safetensors)")
    statistics, weights, references = {}, {}, {}
    for speaker, ids in clips.items():
        if speaker in calibrated and calibration.scope == "none" and any(i in test_ids for i in ids):
            statistics[speaker], weights[speaker] = population, 0.0
            continue
        if speaker in calibrated:
            ids = calibration_clips(ids, calibration, by_id, seed=config.seed, speaker=speaker, where=corpus.root)
            if not ids:  # if_missing "none": this speaker has no clip of the asked label
                statistics[speaker], weights[speaker] = population, 0.0
                continue
        raw = array_statistics(store.get(i) for i in ids)
        if speaker in calibrated and any(i in test_ids for i in clips[speaker]):
            references[speaker] = (raw, ids)  # a test reference: read again by the model once one exists
        if speaker in calibrated:  # (apply_to all: training speakers too, as the test speakers will be: the spread)
            statistics[speaker], weights[speaker], _ = reference_statistics(raw, population, len(ids), calibration)
            continue
        statistics[speaker], weights[speaker] = shrunk(raw, population, len(ids), calibration.train_shrink)
    normalizer = Normalizer("speaker", {i: group(i) for ids in clips.values() for i in ids}, statistics)
    normalizer.population, normalizer.weights = population, weights
    normalizer.references, normalizer.calibration = references, calibration
    return normalizer


def calibration_clips(ids: Sequence[str], calibration, by_id: dict, *, seed: int, speaker: str, where) -> list[str]:
    """The clips of one test speaker whose audio gives its statistics: ``calibration.clips`` drawn at random (fixed
    by seed and speaker) among all, or among those labelled ``calibration.only_label``."""
    pool = sorted(ids)
    if calibration.only_label is not None:
        pool = [i for i in pool if by_id[i].label == calibration.only_label]
        if not pool and calibration.if_missing == "none":
            return []
        if not pool:
            raise CorpusError(where, f"speaker {speaker} has no clip labelled {calibration.only_label!r} to calibrate "
                                     f"with; choose another calibration.only_label or none")
    if calibration.clips is None or calibration.clips >= len(pool):
        return pool
    rng = np.random.default_rng([seed, zlib.crc32(speaker.encode())])
    return sorted(rng.choice(pool, size=calibration.clips, replace=False).tolist())


def protocol_of(config) -> dict:
    """How test speakers are treated: speaker-independent, or speaker-calibrated (their unlabeled audio gives their
    normalisation statistics: a different protocol from EmoBox's, tabled apart)."""
    calibrated = config.normalize == "speaker" and config.calibration.scope != "none"
    out = {"normalize": config.normalize, "speaker_independent": not calibrated}
    if config.normalize == "speaker" and not calibrated:
        out["reference"] = "none: test speakers normalised with the training population's statistics"
    if calibrated:
        out["calibration"] = {"clips": config.calibration.clips, "only_label": config.calibration.only_label,
                              "apply_to": config.calibration.apply_to, "scope": config.calibration.scope,
                              "shrink": config.calibration.shrink, "balance": config.calibration.balance,
                              "spread": config.calibration.spread,
                              "remove_emotion": config.calibration.remove_emotion,
                              "uses": "the test speakers' unlabeled audio"
                                      + (f" (clips chosen by the label {config.calibration.only_label!r})"
                                         if config.calibration.only_label else "")}
    if config.pretrain.test_audio:
        out["speaker_independent"] = False
        out["stage1_test_audio"] = "stage 1 also on the test utterances' unlabeled audio (transductive)"
    return out

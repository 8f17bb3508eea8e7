"""The Python face of emoadapt: recognise emotion in audio with any model folder emoadapt trained.

    from emoadapt import Recognizer
    recognizer = Recognizer.from_pretrained("runs/ft1")          # a model folder (or a finetune run folder)
    result = recognizer.predict("call.wav")                      # Prediction: label, probabilities, segments
    results = recognizer.predict(["a.wav", wave], sample_rate=8000)
    vectors = recognizer.embed("a.wav")                          # the utterance vector the classifier sees
    recognizer.adapt(["me-1.wav", "me-2.wav"])                   # a speaker-normalised model: the reference audio

A recording up to ``window_seconds`` is classified whole, as the models were trained. A longer one is cut into
stretches of speech by a voice-activity detector, and a stretch longer than ``span_seconds`` is read through
windows of that length every ``hop_seconds`` (:mod:`emoadapt.inference.segments`). The result is a timeline of
segments, the share of speech time each class holds (``shares``), and ``mixed`` when no class holds half of it.

Every prediction is guarded (:mod:`emoadapt.inference.guard`): ``speech`` says how much speech the voice detector
heard, and ``label`` is None, with ``abstained`` saying why, for audio with too little speech to judge, for a mixed
recording, or below the caller's ``abstain_below``. ``labels=[...]`` restricts a prediction to a subset of the
model's classes, its probabilities renormalised over them (``subset`` says so).

Inputs are normalised the way the model's training inputs were (``Prediction.normalization`` says how):
``global`` models need nothing; ``utterance`` models normalise each clip or segment by itself; ``speaker`` models use
the statistics of :meth:`Recognizer.adapt`'s reference clips when given (shrunk toward the training population's),
otherwise the training population's own (models saved before these were kept: the recording itself). Everything
goes through :mod:`emoadapt.inference.runtime`, the one path from a model folder to predictions.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from ..audio import SAMPLE_RATE, load_audio, validate_waveform
from ..calibration import FEW_CLIPS, MOSTLY_ONE, ONE_SIDED, balance_of, recorded_calibration, reference_statistics
from ..devices import check_device
from ..encoders import use_onnx
from ..errors import AudioError, EmoadaptError
from ..modelfolder import load_classifier, resolve_model
from ..modelfolder.reference import read_reference
from ..store.features import array_statistics
from .guard import DOMINANT_SHARE, check_speech
from .runtime import classify, encode_waveforms, model_encoder, model_normalization, waveform_normalizer
from .segments import overall, pieces_of, shares, timeline, with_silence

Audio = Union[str, os.PathLike, np.ndarray]
UNCALIBRATED = "speaker (uncalibrated:"  # how a speaker model without a reference or population statistics reads


@dataclass
class Segment:
    start: float                      # seconds from the start of the recording
    end: float
    label: str
    probabilities: dict[str, float]


@dataclass
class Prediction:
    source: str                       # the file, or "array[i]"
    label: str | None                 # None: no label is given, and ``abstained`` says why
    probabilities: dict[str, float]   # every class (or the subset asked for), in the model's order
    duration: float                   # seconds of audio
    normalization: str                # how the inputs were normalised (see the module docstring)
    segments: list[Segment] = field(default_factory=list)  # the timeline of a long recording; [] for a clip
    warnings: list[str] = field(default_factory=list)  # what to doubt (silent audio, weak calibration, ...)
    reference: dict | None = None     # speaker models: the reference used (clips, weight kept, shrink, balance,
    #                                   spread, emotion_removed)
    speech: dict | None = None        # the guard's speech check: ratio, seconds, method, flag
    abstained: str | None = None      # why ``label`` is None: no speech, a mixed recording, a low top probability
    shares: dict[str, float] = field(default_factory=dict)  # share of the speech time each class holds as top class
    mixed: bool = False               # no class holds half of a long recording's speech time
    subset: list[str] | None = None   # the classes asked for (probabilities renormalised over them)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict:
        return asdict(self)


class Recognizer:
    def __init__(self, model_dir: str | os.PathLike, *, encoder=None, window_seconds: float = 10.0,
                 max_seconds: float = 1200.0, batch_size: int = 8, backend: str = "torch",
                 onnx: str | os.PathLike | None = None, segment_pad_seconds: float = 1.0,
                 span_seconds: float = 2.0, hop_seconds: float = 0.5, abstain_below: float | None = None,
                 speech_check: bool = True, device: str = "cpu"):
        if window_seconds <= 0 or max_seconds <= 0 or batch_size < 1 or segment_pad_seconds < 0:
            raise EmoadaptError(None, "window_seconds and max_seconds must be > 0, batch_size >= 1 and "
                                      "segment_pad_seconds >= 0")
        if not (0 < hop_seconds <= span_seconds):
            raise EmoadaptError(None, f"hop_seconds {hop_seconds} and span_seconds {span_seconds}: need 0 < hop <= "
                                      f"span (a window every hop seconds, each span seconds long)")
        if abstain_below is not None and not 0 <= abstain_below < 1:
            raise EmoadaptError(None, f"abstain_below {abstain_below}: give a top probability in [0, 1), below "
                                      f"which a prediction gives no label")
        self.span_seconds, self.hop_seconds, self.abstain_below = span_seconds, hop_seconds, abstain_below
        self.speech_check = speech_check  # off: label any sound (non-speech research, synthetic test audio)
        if backend not in ("torch", "onnx"):
            raise EmoadaptError(None, f"backend {backend!r}: choose torch or onnx")
        self.device = check_device(device, "device")
        if backend == "onnx" and torch.device(self.device).type != "cpu":
            raise EmoadaptError(None, f"device {device!r} with backend onnx: the exported model runs on onnxruntime's "
                                      f"CPU provider here; use backend torch on {device}, or device cpu")
        # the context kept around each speech segment: the corpora's clips have about a second of silence around
        # the sentence, and the models learned from that; segments cut tight to the speech are labelled differently
        # (16 of 16 RAVDESS clips joined into one recording changed label at 0.1 s, 3 of 16 at 1 s)
        self.segment_pad_seconds = segment_pad_seconds
        self.loaded = load_classifier(model_dir)
        self.model_dir = Path(model_dir)
        self.encoder = model_encoder(self.loaded, encoder, device=self.device)
        self.backend, self.head = backend, self.loaded.model.to(self.device)
        if backend == "onnx":  # the head from `emoadapt export` (default: model.onnx in the model folder)
            from .onnx import OnnxHead
            head = Path(onnx or self.loaded.folder / "model.onnx")
            self.head = OnnxHead(head)
            self.head.check_matches(self.loaded.info)
            if (head.parent / "encoder.onnx").is_file():
                use_onnx(self.encoder, head.parent / "encoder.onnx")  # `export --encoder` made one beside it
        self.window_seconds, self.max_seconds, self.batch_size = window_seconds, max_seconds, batch_size
        self.trained_normalization = model_normalization(self.loaded)
        self._speaker: tuple[np.ndarray, np.ndarray] | None = None
        self._speaker_clips = 0
        self._calibration_notes: list[str] = []
        self.reference: dict | None = None  # the reference in use: clips, the weight it kept, shrink, balance
        # speaker models saved with them: the population's statistics and (trained since remove_emotion) the offsets
        self.population, self.offsets = read_reference(self.loaded.folder, self.loaded.info)
        self.calibration = recorded_calibration((self.loaded.info.get("config") or {}).get("calibration"))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike = "default", *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, **options) -> Recognizer:
        """A model folder, a finetune run folder, the name of a model shipped inside the package, or a model on the
        Hugging Face Hub ("org/name", "org/name@v1", or ``revision=``), kept in the Hub client's cache
        (``cache_dir``; offline with HF_HUB_OFFLINE=1 once cached)."""
        return cls(resolve_model(name_or_dir, revision=revision, cache_dir=cache_dir), **options)

    def save_pretrained(self, out: str | os.PathLike, **card) -> Path:
        """This recognizer's model folder written as a Hugging Face Hub repository with a model card
        (:func:`emoadapt.modelfolder.hub.save_pretrained`: ``license``, ``datasets``, ``results``, ``force``)."""
        from ..modelfolder.hub import save_pretrained
        return save_pretrained(self.loaded.folder, out, **card)

    @property
    def labels(self) -> list[str]:
        return list(self.loaded.info["labels"])

    # --- reference adaptation -----------------------------------------------------------------------------------
    def adapt(self, clips: Sequence[Audio], sample_rate: int | None = None) -> Recognizer:
        """Use these unlabeled clips (one speaker, one session or a whole target corpus) as the reference for every
        later prediction of a model trained with ``normalize=speaker``, made as the model's ``calibration`` settings
        say (:func:`emoadapt.calibration.reference_statistics`): the mean less the emotion the model hears in the clips
        (``remove_emotion``), the population's spread or theirs (``spread``), shrunk toward the training population's
        statistics by n / (n + τ) (``shrink``; with ``balance``, also by how evenly the model spreads them over the
        classes). ``reference`` on every later prediction says what was done; a warning says when the reference is
        small or looks one-sided (a reference of one emotion takes that emotion away). Returns the recognizer."""
        if isinstance(clips, (str, os.PathLike, np.ndarray)) or hasattr(clips, "numpy"):
            clips = [clips]  # one clip given alone
        if self.trained_normalization != "speaker":
            raise EmoadaptError(self.model_dir, f"this model was trained with normalize="
                                                f"{self.trained_normalization}: reference clips do not apply to it")
        loaded = [self._load(clip, sample_rate, f"reference clip {k}", in_list=True) for k, clip in enumerate(clips)]
        waves = [wave for _, wave, _ in loaded]
        notes = [note for _, _, clip_notes in loaded for note in clip_notes]
        if not waves:
            raise EmoadaptError(None, "adapt needs at least one reference clip")
        features = encode_waveforms(self.loaded, self.encoder, waves, self.batch_size)
        without = self._without_reference(features)  # the clips as the model reads them with no reference
        statistics, weight, done = reference_statistics(array_statistics(features), self.population, len(waves),
                                                        self.calibration, without, self.offsets)
        self._speaker, self._speaker_clips = statistics, len(waves)
        self.reference = {"clips": len(waves), "weight": round(weight, 4), "shrink": self.calibration.shrink,
                          **done}
        self._calibration_notes = [f"reference: {note}" for note in notes]
        trained_on = ((self.loaded.info.get("config") or {}).get("calibration") or {})
        if trained_on.get("apply_to") == "all" and trained_on.get("only_label"):
            self._warn_calibration(f"this model was trained on speakers normalised by their {trained_on['only_label']!r} "
                                   f"clips only: give it {trained_on['only_label']} speech of the speaker")
        elif len(waves) < FEW_CLIPS:
            self._warn_calibration(f"a reference of {len(waves)} clip(s) is small: with fewer than {FEW_CLIPS} clips "
                                   f"of varied speech it carries those clips' own emotion (kept at weight "
                                   f"{weight:.2f} against the training population's statistics)")
        if without is not None and len(waves) >= 3:
            self._warn_if_one_sided(without)
        return self

    calibrate = adapt  # the earlier name

    def _without_reference(self, features: list[np.ndarray]) -> np.ndarray | None:
        """Class probabilities [n, C] of these clips normalised with the training population's statistics."""
        if self.population is None:
            return None
        normalizer = waveform_normalizer(self.loaded, self.population)
        return np.asarray(classify(self.head, [normalizer.normalize(x) for x in features], self.batch_size))

    def _warn_if_one_sided(self, probabilities: np.ndarray) -> None:
        """Read without a reference, a one-sided reference (e.g. a speaker angry in every clip) spreads over few
        classes: its mean class probabilities have an entropy worth less than ONE_SIDED of the classes, or most clips
        share one label. Such a reference would shift every prediction away from its emotion."""
        counts = np.bincount(probabilities.argmax(1), minlength=len(self.labels))
        top = int(counts.argmax())
        worth = float(np.exp(balance_of(probabilities) * np.log(len(self.labels))))
        if worth < ONE_SIDED * len(self.labels) or counts[top] >= MOSTLY_ONE * len(probabilities):
            self._warn_calibration(f"the reference looks one-sided: read without a reference its clips spread over "
                                   f"{worth:.1f} of {len(self.labels)} classes' worth, {counts[top]} of "
                                   f"{len(probabilities)} as "
                                   f"{self.labels[top]}; a reference of one emotion takes that emotion away from "
                                   f"every prediction"
                                   + (" (the emotion the model hears in it is taken out of it, but only as well as "
                                      "the model hears it)" if self.reference and self.reference.get(
                                          "emotion_removed") is not None else "")
                                   + ": give varied speech")

    def _warn_calibration(self, message: str) -> None:
        """A Python warning for the caller, and a note on every later prediction (so JSON, CSV and HTTP see it)."""
        self._calibration_notes.append(f"reference: {message}")
        warnings.warn(message, stacklevel=3)

    def reset_calibration(self) -> None:
        self._speaker, self._speaker_clips, self._calibration_notes, self.reference = None, 0, [], None

    def predict(self, audio: Audio | Sequence[Audio], sample_rate: int | None = None, *,
                labels: Sequence[str] | None = None) -> Prediction | list[Prediction]:
        """One Prediction per input: a path or a 1-D waveform (at ``sample_rate``, which a waveform needs; in a list
        that mixes files and waveforms it is the waveforms' rate, files read theirs from their headers); a list gives a
        list. ``labels``: only these of the model's classes, their probabilities renormalised over them. A bad input
        raises its AudioError naming it (:meth:`predict_each` reports it and goes on)."""
        if isinstance(audio, (list, tuple)):
            results = list(self.predict_each(audio, sample_rate, labels=labels))
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return results
        subset = self.subset(labels)
        source, wave, notes = self._load(audio, sample_rate, "array[0]")
        return self._prediction(source, wave, *self._run(wave), notes=notes, subset=subset)

    def predict_each(self, inputs: Sequence[Audio], sample_rate: int | None = None, chunk: int = 64, *,
                     labels: Sequence[str] | None = None):
        """Yield, in input order, a Prediction or the EmoadaptError that input raised. Clips no longer than the
        window are encoded and classified together, batched by length, ``chunk`` inputs at a time."""
        subset = self.subset(labels)
        for first in range(0, len(inputs), chunk):
            loaded: dict[int, tuple[str, np.ndarray] | EmoadaptError] = {}
            for k in range(first, min(first + chunk, len(inputs))):
                try:
                    loaded[k] = self._load(inputs[k], sample_rate, f"array[{k}]", in_list=True)
                except EmoadaptError as error:
                    loaded[k] = error
            short = [k for k, v in loaded.items()
                     if not isinstance(v, Exception) and len(v[1]) <= self.window_seconds * SAMPLE_RATE]
            clips = {}
            if short:
                features = encode_waveforms(self.loaded, self.encoder, [loaded[k][1] for k in short], self.batch_size)
                normalized, how = zip(*(self._normalize([x], 1, len(loaded[k][1]) / SAMPLE_RATE)
                                        for k, x in zip(short, features)))
                values = classify(self.head, [f[0] for f in normalized], self.batch_size)
                clips = {k: (v, h) for k, v, h in zip(short, values, how)}
            for k in sorted(loaded):
                item = loaded[k]
                if isinstance(item, Exception):
                    yield item
                elif k in clips:
                    yield self._prediction(item[0], item[1], [(0, len(item[1]))], clips[k][0][None], clips[k][1],
                                           notes=item[2], subset=subset)
                else:
                    try:
                        yield self._prediction(item[0], item[1], *self._run(item[1]), notes=item[2],
                                               subset=subset)
                    except EmoadaptError as error:
                        yield error

    def subset(self, labels: Sequence[str] | None) -> list[str] | None:
        """The checked subset of the model's classes (None: all of them), in the model's order."""
        if labels is None:
            return None
        if isinstance(labels, str):
            labels = [part for part in labels.split(",")]
        asked = [str(label).strip() for label in labels]
        unknown = [label for label in asked if label not in self.labels]
        if unknown:
            raise EmoadaptError(None, f"labels: {', '.join(map(repr, unknown))} is not a class of this model; its "
                                      f"classes are {', '.join(self.labels)}")
        if len(set(asked)) != len(asked) or len(asked) < 2:
            raise EmoadaptError(None, f"labels: give two or more different classes of the model "
                                      f"({', '.join(self.labels)}), not {', '.join(asked) or 'none'}")
        return [label for label in self.labels if label in asked]

    def embed(self, audio: Audio | Sequence[Audio], sample_rate: int | None = None) -> np.ndarray:
        """The utterance vector the classifier sees, ``[N, E]`` for N inputs (a long recording: the mean over its
        time, each stretch the mean of the windows that cover it)."""
        several = isinstance(audio, (list, tuple))
        vectors = []
        for k, a in enumerate(audio if several else [audio]):
            pieces, values, _ = self._run(self._load(a, sample_rate, f"array[{k}]", in_list=several)[1], embed=True)
            vectors.append(overall(values, pieces))
        return np.stack(vectors)

    def _prediction(self, source: str, wave: np.ndarray, pieces, per_piece, normalization, *,
                    notes: Sequence[str] = (), subset: list[str] | None = None) -> Prediction:
        labels = subset or self.labels
        per_piece = np.asarray(per_piece, np.float64)
        warnings_ = [*notes, *self._calibration_notes]  # references: speaker models only
        if normalization.startswith(UNCALIBRATED):  # a clip normalised by itself loses what the model reads
            warnings_.append("speaker-normalised model without a reference, saved before emoadapt kept its training "
                             "population's statistics: this recording is its own reference, which can remove the "
                             "emotion itself; give reference clips of the speaker (--reference, adapt()) or retrain")
        if subset is not None:
            chosen = [self.labels.index(label) for label in subset]
            mass = per_piece[:, chosen].sum(1, keepdims=True)
            if (mass <= 0).any():  # float32 softmax underflow: no ratio to keep, so say so rather than divide by 0
                warnings_.append(f"labels: the model gives {', '.join(subset)} no probability at all "
                                 f"{'here' if len(mass) == 1 else f'in {int((mass <= 0).sum())} of {len(mass)} windows'}"
                                 "; they are shown as even")
            per_piece = np.where(mass > 0, per_piece[:, chosen] / np.where(mass > 0, mass, 1), 1 / len(chosen))
        probabilities = overall(per_piece, pieces)
        whole = len(pieces) == 1 and pieces[0] == (0, len(wave))
        spans = [] if whole else timeline(per_piece, pieces)
        segments = [Segment(round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3), labels[int(p.argmax())],
                            dict(zip(labels, map(float, p)))) for a, b, p in spans]
        speech = check_speech(wave) if self.speech_check else None
        if speech is not None and speech.note:
            warnings_.append(speech.note)
        top = int(probabilities.argmax())
        held = shares(spans, labels) if spans else {labels[top]: 1.0}
        mixed = bool(spans) and max(held.values()) < DOMINANT_SHARE
        abstained = None
        if speech is not None and speech.flag == "no_speech":
            abstained = "no speech"
        elif mixed:
            abstained = (f"mixed: no class holds {DOMINANT_SHARE:.0%} of the speech time ("
                         + ", ".join(f"{c} {v:.0%}" for c, v in sorted(held.items(), key=lambda kv: -kv[1])[:3])
                         + "); see the segments")
        elif self.abstain_below is not None and probabilities[top] < self.abstain_below:
            abstained = f"top probability {probabilities[top]:.2f} is below the threshold {self.abstain_below:.2f}"
        if spans:
            label = None if abstained else max(held, key=held.get)
        else:
            label = None if abstained else labels[top]
        return Prediction(source=source, label=label, probabilities=dict(zip(labels, map(float, probabilities))),
                          duration=round(len(wave) / SAMPLE_RATE, 3), normalization=normalization, segments=segments,
                          warnings=warnings_,
                          reference=dict(self.reference) if self.reference and self._speaker is not None else None,
                          speech=asdict(speech) if speech else None, abstained=abstained,
                          shares=held if label or spans else {},
                          mixed=mixed, subset=list(subset) if subset else None)

    def _load(self, audio: Audio, sample_rate: int | None, name: str, *, in_list: bool = False
              ) -> tuple[str, np.ndarray, list[str]]:
        """(source, 16 kHz waveform, the warnings reading it raised, e.g. silence). ``in_list``: one of several inputs,
        where ``sample_rate`` is the waveforms' and files keep their own."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source, wave = self._read(audio, sample_rate, name, in_list)
        for w in caught:  # a Python caller still sees them as warnings
            warnings.warn(w.message, stacklevel=3)
        return source, wave, [str(w.message) for w in caught]

    def _read(self, audio: Audio, sample_rate: int | None, name: str, in_list: bool = False
              ) -> tuple[str, np.ndarray]:
        if isinstance(audio, np.ndarray) or hasattr(audio, "numpy"):
            if sample_rate is None:  # guessing 16 kHz would give 8 kHz audio a wrong label without a word
                raise AudioError(name, "a waveform needs its sample rate: pass sample_rate=, e.g. "
                                       "predict(wave, sample_rate=16000) (a file's rate is read from its header)")
            return name, validate_waveform(audio, path=name, sample_rate=sample_rate, max_seconds=self.max_seconds,
                                           min_samples=self.encoder.min_samples)
        if not isinstance(audio, (str, os.PathLike)):
            raise AudioError(name, f"a {type(audio).__name__} is not audio: give a file path, a 1-D numpy array or "
                                   f"tensor of samples, or a list of those")
        if sample_rate is not None and not in_list:
            raise EmoadaptError(audio, "sample_rate is for waveforms; a file's own rate is read from its header")
        return str(audio), load_audio(audio, max_seconds=self.max_seconds, min_samples=self.encoder.min_samples)

    def _run(self, wave: np.ndarray, embed: bool = False):
        """(pieces, per-piece values [P, C] or [P, E], normalization) of one recording
        (:func:`emoadapt.inference.segments.pieces_of`)."""
        pieces, windowed = pieces_of(wave, window_seconds=self.window_seconds,
                                     pad_seconds=self.segment_pad_seconds, min_samples=self.encoder.min_samples,
                                     span_seconds=self.span_seconds, hop_seconds=self.hop_seconds)
        audio = [with_silence(wave[a:b], self.segment_pad_seconds) if w else wave[a:b]
                 for (a, b), w in zip(pieces, windowed)]
        features = encode_waveforms(self.loaded, self.encoder, audio, self.batch_size)
        features, normalization = self._normalize(features, len(pieces), len(wave) / SAMPLE_RATE)
        values = classify(self.head, features, self.batch_size, embed=embed)
        return pieces, values, normalization

    def _normalize(self, features: list[np.ndarray], pieces: int, seconds: float) -> tuple[list[np.ndarray], str]:
        mode, statistics = self.trained_normalization, None
        how = {"global": "global (the model's training statistics)",
               "utterance": "utterance (each clip or segment by itself)"}.get(mode)
        if mode == "speaker" and self._speaker is not None:
            statistics = self._speaker
            removed = "; its emotion removed" if self.reference.get("emotion_removed") is not None else ""
            how = (f"speaker (reference of {self._speaker_clips} clip(s), kept at weight "
                   f"{self.reference['weight']:.2f} against the training population's statistics; "
                   f"{self.reference['spread']} spread{removed})")
        elif mode == "speaker" and self.population is not None:
            statistics, how = self.population, "speaker (no reference: the training population's statistics)"
        elif mode == "speaker":
            statistics = array_statistics(features)
            how = (f"{UNCALIBRATED} this recording's own {pieces} segment(s), "
                   f"{seconds:.1f} s, as the reference)")
        normalizer = waveform_normalizer(self.loaded, statistics)
        return [x.astype(np.float32) if normalizer is None else normalizer.normalize(x) for x in features], how

"""The server's OpenAPI description: response models that mirror the JSON the endpoints send, and the request body of
POST /predict, which the endpoint reads itself (a multipart upload or the raw audio), so FastAPI cannot infer it."""
from __future__ import annotations

from pydantic import BaseModel, Field


class SegmentOut(BaseModel):
    start: float = Field(description="seconds from the start of the recording")
    end: float
    label: str = Field(description="the top class over this stretch")
    probabilities: dict[str, float]


class SpeechOut(BaseModel):
    ratio: float = Field(description="share of the audio heard as speech")
    seconds: float = Field(description="seconds of speech")
    method: str = Field(description='"vad", or "vad (level fallback)" for quiet audio')
    flag: str = Field(description='"speech", "low_speech" or "no_speech"')


class ReferenceOut(BaseModel):
    clips: int = Field(description="reference clips of the speaker used for this request")
    weight: float = Field(description="the weight the reference kept against the training population")
    shrink: float
    balance: float
    spread: str = Field(description='"population": only the mean moved, the training population\'s spread kept; '
                                    '"reference": the reference\'s own spread')
    emotion_removed: list[float] | None = Field(default=None, description="per class, the share of the reference the "
                                                "model heard in it less the training prior, whose offsets were taken "
                                                "out of its mean; None: nothing was removed")


class PredictionOut(BaseModel):
    """:class:`emoadapt.inference.Prediction` as JSON, with the upload's name and the top 3 classes."""
    source: str = Field(description="the uploaded file's name (X-Filename for a raw body)")
    label: str | None = Field(description="None: no label is given, and `abstained` says why")
    probabilities: dict[str, float] = Field(description="every class (or the subset asked for), in the model's "
                                                        "order; for a long recording, the mean over its speech time")
    duration: float = Field(description="seconds of audio")
    normalization: str = Field(description="how the inputs were normalised")
    segments: list[SegmentOut] = Field(description="the timeline of a recording longer than the window; [] for a clip")
    warnings: list[str] = Field(description="what to doubt: silent audio, weak calibration, ...")
    reference: ReferenceOut | None = Field(description="speaker models: the reference used")
    speech: SpeechOut | None = Field(description="the speech check (None with --no-speech-check)")
    abstained: str | None = Field(description="why `label` is None: no speech, a mixed recording, a low top "
                                              "probability")
    shares: dict[str, float] = Field(description="share of the speech time each class holds as the top class")
    mixed: bool = Field(description="no class holds half of a long recording's speech time")
    subset: list[str] | None = Field(description="the classes asked for (probabilities renormalised over them)")
    top: list[tuple[str, float]] = Field(description="the three most probable classes, as [class, probability]")


class HealthOut(BaseModel):
    status: str = Field(examples=["ok"])
    model: str = Field(description="the model folder's name")
    labels: list[str]
    normalization: str = Field(description="the normalisation the model was trained with")


class LabelsOut(BaseModel):
    labels: list[str] = Field(description="the model's classes, in its order")


class ErrorOut(BaseModel):
    detail: str = Field(description="what was wrong and what to do")


_AUDIO = {"type": "string", "format": "binary"}
_LABELS = "comma-separated classes: only these, probabilities renormalised over them"
_ABSTAIN = "no label when the top probability is below this (the probabilities are still reported)"

PREDICT_REQUEST_BODY = {
    "required": True,
    "description": "The audio, in any format libsndfile reads (WAV, FLAC, Ogg, MP3, ...): a multipart upload, or "
                   "the raw bytes as the body (name it with the X-Filename header).",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {**_AUDIO, "description": "the recording"},
                    "reference": {"type": "array", "items": _AUDIO, "maxItems": 50,
                                  "description": "speaker models only: unlabeled clips of the same speaker, for "
                                                 "this request alone (repeat the field)"},
                    "labels": {"type": "string", "description": _LABELS, "examples": ["angry,sad"]},
                    "abstain": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": _ABSTAIN},
                },
            },
            "encoding": {"reference": {"style": "form", "explode": True}},
        },
        "application/octet-stream": {"schema": _AUDIO},
        "audio/*": {"schema": _AUDIO},
    },
}

PREDICT_PARAMETERS = [
    {"name": "labels", "in": "query", "required": False, "schema": {"type": "string"}, "description": _LABELS},
    {"name": "abstain", "in": "query", "required": False,
     "schema": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "description": _ABSTAIN},
    {"name": "X-Filename", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "a raw body's file name (its extension tells the decoder the format)"},
]

PREDICT_ERRORS = {
    400: {"model": ErrorOut, "description": "the client disconnected during the upload"},
    413: {"model": ErrorOut, "description": "upload over --max-upload-mb, or audio over --max-seconds"},
    422: {"model": ErrorOut, "description": "not usable audio, an empty upload, or a bad option"},
    429: {"model": ErrorOut, "description": "busy: every slot was taken for --queue-seconds; retry after Retry-After",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
}

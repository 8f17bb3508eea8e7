"""Inference: a model folder applied to audio. The runtime (:mod:`.runtime`: encode with the model's encoder,
normalise, classify), long recordings as speech segments (:mod:`.segments`), the :class:`Recognizer` on files and
arrays (:mod:`.recognizer`), and the ONNX export and backend (:mod:`.onnx`). Nothing here needs training."""
from ..modelfolder import load_classifier
from .recognizer import Prediction, Recognizer, Segment
from .runtime import classify, encode_waveforms, model_encoder, predict, predict_waveforms

__all__ = ["Recognizer", "Prediction", "Segment", "load_classifier", "predict_waveforms", "classify",
           "encode_waveforms", "model_encoder", "predict"]

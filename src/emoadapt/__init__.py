"""emoadapt: parameter-efficient speech emotion recognition (arXiv 2509.23795)."""

__version__ = "0.1.0"


def __getattr__(name):  # `from emoadapt import Recognizer` without importing torch for `emoadapt --help`
    if name in ("Recognizer", "Prediction", "Segment"):
        from . import inference
        return getattr(inference, name)
    raise AttributeError(f"module 'emoadapt' has no attribute {name!r}")

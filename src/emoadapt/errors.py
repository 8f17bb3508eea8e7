"""Every error a user can cause, in one small hierarchy.

Each carries the path it is about and a reason the user can act on; the CLI prints ``str(error)`` on one line
and exits non-zero, so no library traceback reaches the user.
"""
from __future__ import annotations

import errno
import os

# exit codes of the `emoadapt` command (README "Exit codes")
EXIT_DONE, EXIT_PARTIAL, EXIT_REFUSED, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class EmoadaptError(Exception):
    """Base of all user-facing errors: ``path: reason``."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


# --- audio input (audio.py) --------------------------------------------------------------------------------
class AudioError(EmoadaptError):
    """The audio file cannot be used."""


class MissingAudio(AudioError):
    """No file at that path."""


class NotAFile(AudioError):
    """The path is a directory or another non-regular file."""


class EmptyAudio(AudioError):
    """The file has zero bytes."""


class NotAudio(AudioError):
    """The bytes are not in any format libsndfile reads."""


class CorruptAudio(AudioError):
    """The format is recognised but the header or data is truncated or damaged."""


class NoSamples(AudioError):
    """A valid header that announces zero samples."""


class NonFiniteAudio(AudioError):
    """NaN or infinite sample values."""


class TooShortAudio(AudioError):
    """Shorter than the encoder's receptive field: it would yield no frame."""


class TooLongAudio(AudioError):
    """Longer than the caller's limit where the caller cannot chunk."""


class BadSampleRate(AudioError):
    """A sample rate outside any plausible range for speech."""


# --- encoders ----------------------------------------------------------------------------------------------
class EncoderError(EmoadaptError):
    """An encoder cannot be found, loaded or used (missing package, bad folder, unsupported architecture)."""


# --- corpora, manifests and folds -------------------------------------------------------------------------
class CorpusError(EmoadaptError):
    """A corpus, manifest or fold file is missing, malformed or inconsistent."""


# --- feature store ----------------------------------------------------------------------------------------
class FeatureStoreError(EmoadaptError):
    """A feature store is unreadable, or a request does not match how it was made."""


class StoreMismatch(FeatureStoreError):
    """Writing with a different encoder, layer set or options than the store was created with."""


class DamagedStore(FeatureStoreError):
    """A shard whose bytes, shape or checksum are not what its index part recorded."""


class StaleFeatures(FeatureStoreError):
    """Stored features of audio that changed since extraction."""


class MissingFeatures(FeatureStoreError):
    """An utterance was asked for that the store does not hold (or holds for another audio version)."""


# --- training checkpoints and model folders (checkpoints.py) -----------------------------------------------
class CheckpointError(EmoadaptError):
    """A model folder or training checkpoint is missing, incomplete, or cannot hold / give back a value."""


class LeakageError(EmoadaptError):
    """A model would be tested on utterances or speakers it was trained on (see emoadapt.leakage)."""


class TrainingError(EmoadaptError):
    """Training cannot go on: a non-finite loss or weights (diverged, or damaged inputs)."""


# errors the environment causes, said in words: (errnos, what happened, what to do)
_ENVIRONMENT = (
    ((errno.ENOSPC, errno.EDQUOT), "no space left on the disk",
     "free some space (or write elsewhere) and re-run the same command: everything finished so far is kept"),
    ((errno.EACCES, errno.EPERM, errno.EROFS), "no permission to write or read here",
     "choose a folder you can write to, or fix the permissions"),
    ((errno.ENOENT,), "no such file or folder", "check the path"),
    ((errno.EISDIR,), "a folder where a file is expected", "give a file path"),
    ((errno.ENOTDIR,), "a file where a folder is expected", "give a folder path"),
    ((errno.EEXIST,), "already exists", "choose another path or remove it"),
)


def describe_failure(error: BaseException) -> tuple[int, str]:
    """(exit code, one line for the user) for any exception that reaches the command line."""
    if isinstance(error, EmoadaptError):
        return EXIT_REFUSED, f"error: {error}"
    if isinstance(error, OSError):
        for codes, what, todo in _ENVIRONMENT:
            if error.errno in codes:
                where = f"{error.filename}: " if error.filename else ""
                return EXIT_REFUSED, f"error: {where}{what}; {todo}"
    if isinstance(error, MemoryError):
        return EXIT_REFUSED, "error: out of memory; use a smaller --batch-size (or a machine with more memory)"
    return EXIT_INTERNAL, (f"internal error ({type(error).__name__}: {error}); this is a bug in emoadapt: re-run with "
                           f"--debug for the traceback and report it")

"""Crash-safe file writes, used by every writer in emoadapt (feature store, checkpoints, results, plots).

A reader, or a run resumed after a kill, sees either the old file or the complete new one, never a half-written one.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(final: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes a temp file beside ``final``; it is fsynced, renamed over ``final``, and the folder is
    fsynced so the rename itself survives a power cut. The temp name is hidden (leading dot) and keeps ``final``'s
    suffix, so writers that add one (``np.save``) or pick a format by it (matplotlib) behave."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, final)
    except OSError as error:  # name the file the user asked for, not the hidden temp file (disk full, no permission)
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(final)) from error
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)
    return final


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    return atomic_write(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Best effort: some file systems refuse fsync on a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Crash-safe file writes, used by every writer in emoadapt (feature store, checkpoints, results, plots).

A reader, or a run resumed after a kill, sees either the old file or the complete new one, never a half-written one.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable

DISK_NEARLY_FULL = 64 * 2**20  # bytes free below which a failed write is taken for a full disk


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
    except Exception as error:
        failure = write_failure(error, final)
        if failure is error:
            raise
        raise failure from error
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)
    return final


def write_failure(error: Exception, final: Path) -> Exception:
    """A failed write as the OSError it is, naming the file the user asked for rather than the hidden temp file.
    Libraries report a full disk each their own way (safetensors: a SafetensorError "os error 28"; numpy: a short
    write without an errno), so when the folder's file system has next to no space left, that is what happened."""
    if isinstance(error, OSError) and error.errno is not None:
        return OSError(error.errno, error.strerror, str(final))
    try:
        free = shutil.disk_usage(final.parent).free
    except OSError:
        return error
    if free < DISK_NEARLY_FULL:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))
    return error


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    return atomic_write(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(data: dict, path: str | os.PathLike) -> Path:
    """A results or record file: a reader never sees half of it."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


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


# temp files of interrupted writes: emoadapt.atomic's (.<final name>.<pid>.<8 hex>.tmp<suffix>), and the one
# safetensors' save_file writes through before renaming it onto that (Rust tempfile: .tmp + 6 characters)
_ATOMIC_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp")
_SAFETENSORS_TEMP = re.compile(r"^\.tmp[0-9A-Za-z]{6}$")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that writes cut short by a kill left in a run folder (a SIGKILL skips every clean-up;
    a checkpoint's temp file is as large as the checkpoint): atomic_write's when the process that wrote them is
    gone, safetensors' always (they name no process; only one run writes into a run folder, and this is called
    before it writes). A resumed run's folder then holds what an uninterrupted run's holds."""
    removed = []
    for path in Path(folder).rglob(".*"):
        m = _ATOMIC_TEMP.match(path.name)
        stale = (m is not None and not process_alive(int(m.group(1)))) or _SAFETENSORS_TEMP.match(path.name)
        if stale and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True

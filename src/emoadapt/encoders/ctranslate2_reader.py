"""Read the encoder weights out of a CTranslate2 ``model.bin`` without CTranslate2 itself.

Layout (little-endian; see ENCODERS.md and CTranslate2's ``src/models/model.cc``)::

    uint32 binary_version (>= 5) | string spec_name | uint32 spec_revision | uint32 num_variables
    per variable: string name | uint8 rank | uint32 dims[rank] | uint8 dtype | uint32 num_bytes | raw bytes
    ... aliases and other sections follow (not needed here)

Strings are ``uint16 length`` (counting a trailing NUL) + bytes. The file may be split into parts (the
Whisper-base wheels ship it in two): :class:`ConcatReader` reads the parts as one seekable stream, so the
145 MB file is never written to disk, and the decoder's variables are skipped with a seek.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import EncoderError

# CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2")}
_BFLOAT16 = 5
_MIN_BINARY_VERSION = 5


class ConcatReader(io.RawIOBase):
    """Several files read as one seekable byte stream (in the given order)."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        self.sizes = [p.stat().st_size for p in self.paths]
        self.starts = np.cumsum([0] + self.sizes[:-1]).tolist()
        self.total = sum(self.sizes)
        self.files = [open(p, "rb") for p in self.paths]
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.total}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.total:
            part = max(i for i, s in enumerate(self.starts) if s <= self.pos)
            f = self.files[part]
            f.seek(self.pos - self.starts[part])
            want = min(len(view) - done, self.sizes[part] - (self.pos - self.starts[part]))
            got = f.readinto(view[done:done + want])
            if not got:
                break
            done += got
            self.pos += got
        return done

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


class _Parser:
    def __init__(self, stream, where: str):
        self.stream = stream
        self.where = where

    def take(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise EncoderError(self.where, "CTranslate2 model file is truncated "
                                           "(a wheel part may be missing or damaged)")
        return data

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")
        return self.take(n).rstrip(b"\0").decode("utf-8")


def read_ct2_variables(paths: Sequence[str | os.PathLike],
                       prefix: str = "encoder/") -> tuple[dict[str, torch.Tensor], str]:
    """Variables whose name starts with ``prefix`` from a CTranslate2 model split across ``paths`` (one path
    for an ordinary file), as float32 tensors (integers stay integers), plus the sha256 hex digest of exactly
    those variables (name, shape, dtype, raw bytes): the identity of the weights that make the features."""
    where = str(paths[0]) if len(paths) == 1 else " + ".join(str(p) for p in paths)
    for p in paths:
        if not Path(p).is_file():
            raise EncoderError(p, "CTranslate2 model file not found")
    digest = hashlib.sha256()
    found: dict[str, torch.Tensor] = {}
    with io.BufferedReader(ConcatReader(paths), buffer_size=1 << 20) as stream:
        r = _Parser(stream, where)
        (version,) = r.unpack("I")
        if not _MIN_BINARY_VERSION <= version < 100:
            raise EncoderError(where, f"not a CTranslate2 model.bin this reader understands (binary version {version}, "
                                      f"need >= {_MIN_BINARY_VERSION})")
        spec = r.string()
        r.unpack("I")  # spec revision
        if spec != "WhisperSpec":
            raise EncoderError(where, f"CTranslate2 model is a {spec!r}, not a Whisper model")
        (count,) = r.unpack("I")
        for _ in range(count):
            name = r.string()
            (rank,) = r.unpack("B")
            dims = r.unpack("I" * rank)
            (dtype_id,) = r.unpack("B")
            (num_bytes,) = r.unpack("I")
            if not name.startswith(prefix):
                stream.seek(num_bytes, io.SEEK_CUR)
                continue
            raw = r.take(num_bytes)
            digest.update(f"{name}|{dims}|{dtype_id}|".encode())
            digest.update(raw)
            found[name] = _to_tensor(raw, dims, dtype_id, name, where)
    if not found:
        raise EncoderError(where, f"no variables named {prefix}* in the CTranslate2 model")
    return found, digest.hexdigest()


def _to_tensor(raw: bytes, dims: tuple[int, ...], dtype_id: int, name: str, where: str) -> torch.Tensor:
    if dtype_id == _BFLOAT16:  # no numpy bfloat16: widen the 16 bits into the top half of a float32
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return torch.from_numpy(bits.view(np.float32).reshape(dims).copy())
    if dtype_id not in _DTYPES:
        raise EncoderError(where, f"variable {name} has CTranslate2 dtype {dtype_id}, "
                                  "which this reader does not support")
    array = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(dims)
    if dtype_id == 1:  # int8 weights need their scales: quantised models are not supported
        raise EncoderError(where, f"variable {name} is int8-quantised; re-convert the model with "
                                  "--quantization float16 (or float32)")
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32))
    return torch.from_numpy(array.astype(np.int64))

"""Audio input: any file libsndfile reads -> 16 kHz mono float32, or one specific error that names the file.

    load_audio(path)        decode (soundfile/libsndfile), downmix to mono (mean of channels), resample to 16 kHz
                            (soxr), validate; returns a 1-D float32 array in [-1, 1] for integer PCM
    validate_waveform(x)    the same checks (and resampling) for an array already in memory
    audio_info(path)        header only: rate, channels, frames, duration, format (cheap, validated)
    chunk(x, n)             consecutive pieces of at most n samples, for callers that cannot take long audio
    speech_segments(x)      where someone speaks: silero-vad's ONNX model (weights inside its wheel), pieces of
                            at most a window, for recordings too long to classify whole

Every bad input raises exactly one `emoadapt.errors.AudioError` subclass whose message is "<path>: <reason>";
no soundfile/soxr exception escapes. Silence is only a warning (`SilentAudioWarning`).

How truncation is detected (what libsndfile 1.2.2 actually does, checked by hand and pinned in tests):
- WAV / AIFF cut inside the data chunk: libsndfile opens it *silently*, shrinking `frames` to the bytes present.
  Its header log (`extra_info`) still records the size the header claimed, as "data : 32000 (should be 1000)"
  (AIFF: "SSND : ..."); a claim larger than the bytes present means the file is truncated.
  0xFFFFFFFF is the placeholder of streaming writers ("size unknown") and is not a truncation.
- FLAC with damaged or missing frames: the open succeeds, decoding raises "flac decoder lost sync".
- MP3 cut: the open succeeds with the length from the Xing/Info tag; decoding yields fewer frames than announced.
- Ogg cut: either the open fails ("malformed") or it succeeds announcing 0 (or too few) frames and decodes
  nothing. libsndfile gives no signal, so we look at the last Ogg page ourselves: a complete file ends with a
  whole page carrying the end-of-stream flag.
- Anything else: after decoding, frames read < frames announced -> CorruptAudio (MP3 gets a small tolerance,
  because without a Xing tag its length is only an estimate). Other uncompressed containers that libsndfile
  shrinks silently (W64, RF64, CAF, ...) are read as far as they go.
"""
from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from emoadapt.errors import (
    AudioError,
    BadSampleRate,
    CorruptAudio,
    EmptyAudio,
    MissingAudio,
    NoSamples,
    NonFiniteAudio,
    NotAFile,
    NotAudio,
    TooLongAudio,
    TooShortAudio,
)

SAMPLE_RATE = 16_000          # every encoder here takes 16 kHz mono
# file names read as audio (corpora, predict's folders, the server's uploads); libsndfile decodes each
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})
# Plausible input rates. Below 1 kHz there is no speech band left; above 768 kHz (the highest rate studio gear
# writes) the header is almost certainly garbage. 8 kHz telephone audio is accepted (it will sound muffled).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
SILENCE_PEAK = 1e-4           # peak |x| below this (about -80 dBFS) counts as silence: warn, don't fail
RESAMPLE_QUALITY = "VHQ"      # soxr's best; the same setting that made the shared 16 kHz corpora
_BLOCK_FRAMES = 1 << 16       # decode in blocks so a long file never sits in memory at its native rate
_SF_ERR_UNRECOGNISED_FORMAT = 1  # libsndfile's public error code for "Format not recognised"
_MP3_FRAME = 1152             # samples per MPEG-1 layer III frame


class SilentAudioWarning(UserWarning):
    """The audio is (nearly) all silence: usable, but any emotion predicted from it is meaningless."""


class LowSampleRateWarning(UserWarning):
    """The file was recorded below 8 kHz: usable, but it lacks much of what the encoders were trained to hear."""


LOW_SAMPLE_RATE = 8_000       # below telephone band: warn, don't fail


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int       # Hz, as stored in the file
    channels: int
    frames: int            # samples per channel (for MP3 without a Xing tag, libsndfile's estimate)
    duration: float        # seconds = frames / sample_rate
    format: str            # libsndfile's container name: "WAV", "FLAC", "OGG", "MP3", ...
    subtype: str = ""      # encoding: "PCM_16", "FLOAT", "VORBIS", "MPEG_LAYER_III", ...


# --- public API ----------------------------------------------------------------------------------------------
def load_audio(path: str | os.PathLike, *, max_seconds: float | None = None, min_samples: int = 1) -> np.ndarray:
    """Read an audio file as 16 kHz mono float32 (1-D). Integer PCM is scaled to [-1, 1].

    ``min_samples`` is the caller's encoder minimum (counted at 16 kHz); ``max_seconds`` is for callers that
    cannot chunk. Raises one `AudioError` subclass per kind of bad input; warns `SilentAudioWarning` on silence.
    """
    path = Path(path)
    _check_path(path)
    with _open(path) as f:
        info = _check_header(path, f)
        if max_seconds is not None and info.duration > max_seconds:  # refuse before decoding an hour of audio
            raise TooLongAudio(path, _too_long_reason(info.duration, max_seconds))
        if info.sample_rate < LOW_SAMPLE_RATE:
            warnings.warn(LowSampleRateWarning(f"{path}: recorded at {info.sample_rate} Hz, below {LOW_SAMPLE_RATE} Hz: "
                                               f"it lacks most of what the encoder hears above "
                                               f"{info.sample_rate // 2} Hz; treat the prediction with doubt"),
                          stacklevel=2)
        wave = _decode_mono_16k(path, f, info)
    return validate_waveform(wave, path=path, max_seconds=max_seconds, min_samples=min_samples)


def validate_waveform(wave, *, path: str | os.PathLike | None = None, sample_rate: int = SAMPLE_RATE,
                      max_seconds: float | None = None, min_samples: int = 1) -> np.ndarray:
    """Check an in-memory waveform (numpy array or CPU tensor, 1-D, at ``sample_rate``) the way `load_audio`
    checks a file, resample it to 16 kHz if needed, and return it as 1-D float32. ``path`` only labels errors."""
    x = _as_mono_float32(wave, path)
    _check_sample_rate(path, sample_rate)
    if x.size == 0:
        raise NoSamples(path, "the waveform has zero samples")
    _check_finite(path, x, sample_rate)
    if sample_rate != SAMPLE_RATE:
        x = _resample(path, x, sample_rate)
    seconds = len(x) / SAMPLE_RATE
    if len(x) < min_samples:
        raise TooShortAudio(path, f"{seconds:.3f} s ({len(x)} samples at 16 kHz) is too short: the encoder needs "
                                  f"at least {min_samples} samples ({min_samples / SAMPLE_RATE:.3f} s) for one frame")
    if max_seconds is not None and seconds > max_seconds:
        raise TooLongAudio(path, _too_long_reason(seconds, max_seconds))
    peak = float(np.max(np.abs(x)))
    if peak < SILENCE_PEAK:
        label = f"{path}: " if path is not None else ""
        warnings.warn(SilentAudioWarning(f"{label}silent (peak amplitude {peak:.1e} < {SILENCE_PEAK:.0e}); "
                                         "check the recording: emotion predicted from silence is meaningless"),
                      stacklevel=2)
    return x


def chunk(wave: np.ndarray, chunk_samples: int) -> list[np.ndarray]:
    """Split ``wave`` into consecutive pieces of ``chunk_samples`` (the last may be shorter; none is empty).
    The pieces are views: ``np.concatenate(chunk(x, n))`` equals ``x``."""
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    return [wave[i:i + chunk_samples] for i in range(0, len(wave), chunk_samples)]


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file without decoding it, after the same path and header checks as `load_audio`
    (damage deep inside compressed data is only found by decoding)."""
    path = Path(path)
    _check_path(path)
    with _open(path) as f:
        return _check_header(path, f)


# --- file checks, in the order they can fail ------------------------------------------------------------------
def _check_path(path: Path) -> None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingAudio(path, "no such file") from None
    except OSError as e:
        raise AudioError(path, f"cannot access the file: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise NotAFile(path, "is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):  # fifo, socket, device: reading could block or never end
        raise NotAFile(path, "is not a regular file (a pipe, socket or device?); give the path of an audio file")
    if st.st_size == 0:
        raise EmptyAudio(path, "the file is empty (0 bytes); was the recording or download interrupted?")


# Leading bytes of containers libsndfile reads: when it cannot open a file that starts like one of these, the file
# is a damaged audio file (CorruptAudio), not some other kind of file (NotAudio).
_MAGIC = {b"RIFF": "WAV", b"RIFX": "WAV", b"RF64": "RF64", b"BW64": "WAV", b"riff": "W64", b"FORM": "AIFF",
          b"fLaC": "FLAC", b"OggS": "Ogg", b"ID3": "MP3", b".snd": "AU", b"caff": "CAF", b"NIST_1A": "NIST"}


def _sniff(head: bytes) -> str | None:
    """Name of the audio container that these first bytes of a file announce, or None."""
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync, no ID3 tag
        return "MP3"
    return None


def _open(path: Path) -> sf.SoundFile:
    try:
        return sf.SoundFile(path)
    except Exception as e:  # LibsndfileError, or TypeError/ValueError from soundfile's own checks
        error = e
    try:  # libsndfile only says "System error" for OS problems: ask the OS, and read the magic bytes
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise AudioError(path, f"cannot read the file: {e.strerror}") from None
    code = getattr(error, "code", None)
    why = (getattr(error, "error_string", None) or str(error)).strip().rstrip(".")
    kind = _sniff(head)
    if kind is None and code in (None, _SF_ERR_UNRECOGNISED_FORMAT):
        raise NotAudio(path, f"not an audio format libsndfile reads ({why}); convert it to WAV, FLAC, Ogg or MP3")
    what = f"looks like {kind} but" if kind else "libsndfile recognises the format but"
    raise CorruptAudio(path, f"{what} cannot open it ({why}): the header is truncated or damaged, "
                             "or the encoding is unsupported; re-export the file")


def _check_header(path: Path, f: sf.SoundFile) -> AudioInfo:
    info = AudioInfo(path=path, sample_rate=f.samplerate, channels=f.channels, frames=f.frames,
                     duration=f.frames / f.samplerate if f.samplerate > 0 else 0.0,
                     format=f.format, subtype=f.subtype)
    _check_sample_rate(path, info.sample_rate)
    if info.channels < 1:
        raise CorruptAudio(path, f"the header announces {info.channels} channels")
    if info.format in ("WAV", "WAVEX", "AIFF"):
        short = _data_chunk_shortfall(f.extra_info)
        if short:
            claimed, present = short
            raise CorruptAudio(path, f"truncated: the header announces {claimed} bytes of audio but only {present} "
                                     "are in the file (interrupted download or copy?)")
    if info.format == "OGG" and not _ogg_ends_cleanly(path):
        raise CorruptAudio(path, "truncated: the Ogg stream has no complete last page (interrupted download or copy?)")
    if info.frames == 0:
        raise NoSamples(path, "the header is valid but announces zero samples")
    return info


# libsndfile's header log line for the data chunk when the file is shorter than the header says.
_SHORTFALL = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _data_chunk_shortfall(log: str) -> tuple[int, int] | None:
    for claimed, present in _SHORTFALL.findall(log):
        claimed, present = int(claimed), int(present)
        if claimed > present and claimed != 0xFFFFFFFF:  # 0xFFFFFFFF: "unknown size" of streaming writers
            return claimed, present
    return None


def _ogg_ends_cleanly(path: Path) -> bool:
    """True if the file ends with one whole Ogg page that carries the end-of-stream flag (RFC 3533)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65_307 - 1))  # 65 307 = largest possible Ogg page
        tail = fh.read()
    i = tail.rfind(b"OggS\x00")
    if i < 0 or len(tail) - i < 27:
        return False
    flags, segments = tail[i + 5], tail[i + 26]
    if len(tail) - i < 27 + segments:
        return False
    body = sum(tail[i + 27:i + 27 + segments])
    return bool(flags & 0x04) and i + 27 + segments + body == len(tail)


# --- decoding --------------------------------------------------------------------------------------------------
def _decode_mono_16k(path: Path, f: sf.SoundFile, info: AudioInfo) -> np.ndarray:
    """Decode block by block: check finiteness at the native rate, downmix, resample (streamed, so the result is
    identical to resampling the whole signal at once)."""
    stream = None
    if info.sample_rate != SAMPLE_RATE:
        stream = soxr.ResampleStream(info.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    out, done = [], 0
    while True:
        try:
            block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)  # integer PCM -> [-1, 1]
        except Exception as e:
            why = (getattr(e, "error_string", None) or str(e)).removeprefix("Error : ").strip().rstrip(".")
            raise CorruptAudio(path, f"decoding failed after {done} of {info.frames} frames ({why})"
                                     ": the audio data is damaged or truncated") from None
        if len(block) == 0:
            break
        _check_finite(path, block, info.sample_rate, offset=done)
        mono = block[:, 0] if info.channels == 1 else block.mean(axis=1, dtype=np.float32)
        mono = np.ascontiguousarray(mono)
        out.append(mono if stream is None else _resample_chunk(path, stream, mono, last=False))
        done += len(block)
    if stream is not None:
        out.append(_resample_chunk(path, stream, np.zeros(0, np.float32), last=True))
    # libsndfile never reads past `frames`, so only a shortfall is possible. MP3 lengths without a Xing tag are
    # estimates: allow two MPEG frames + 2 %, which still catches a file cut anywhere but its very end.
    slack = 2 * _MP3_FRAME + info.frames // 50 if info.format == "MP3" else 0
    if done < info.frames - slack:
        raise CorruptAudio(path, f"truncated: decoded {done} of the {info.frames} frames the header announces "
                                 "(interrupted download or copy?)")
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _resample_chunk(path: Path, stream: soxr.ResampleStream, x: np.ndarray, last: bool) -> np.ndarray:
    try:
        return stream.resample_chunk(x, last=last)
    except Exception as e:
        raise CorruptAudio(path, f"resampling to 16 kHz failed ({e})") from None


def _resample(path, x: np.ndarray, sample_rate: int) -> np.ndarray:
    try:
        y = soxr.resample(np.ascontiguousarray(x), sample_rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
        return y.astype(np.float32, copy=False)
    except Exception as e:
        raise CorruptAudio(path, f"resampling {sample_rate} Hz -> 16 kHz failed ({e})") from None


# --- checks shared by files and in-memory waveforms -----------------------------------------------------------
MAX_FLOAT_PEAK = 64.0  # clipped or hot float recordings exceed 1 a little; 16-bit PCM as float reaches ~3e4


def _check_sample_rate(path, sample_rate) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise BadSampleRate(path, f"sample rate {sample_rate!r} is not a number of samples per second")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise BadSampleRate(path, f"sample rate {sample_rate} Hz is outside the plausible range "
                                  f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz; the header (or the rate passed) is wrong")


def _check_finite(path, x: np.ndarray, sample_rate: int, offset: int = 0) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        first = offset + int(np.argmin(finite.reshape(len(x), -1).all(axis=1)))
        raise NonFiniteAudio(path, f"contains NaN or infinite sample values (first at {first / sample_rate:.3f} s); "
                                   "the program that wrote it failed: re-export the audio")


def _too_long_reason(seconds: float, max_seconds: float) -> str:
    return (f"{seconds:.1f} s is longer than the limit of {max_seconds:g} s; raise it (--max-seconds of emoadapt "
            f"predict, serve or extract; Recognizer(max_seconds=)) or split the recording")


def _as_mono_float32(wave, path) -> np.ndarray:
    """A 1-D float32 view of ``wave``; singleton axes are dropped, signed integer PCM is scaled to [-1, 1]."""
    if hasattr(wave, "detach"):  # torch tensor, without importing torch here
        wave = wave.detach().cpu().numpy()
    x = np.asarray(wave)
    if x.ndim > 1:
        x = x.squeeze()
    if x.ndim != 1:
        raise AudioError(path, f"expected a 1-D mono waveform, got shape {tuple(np.shape(wave))}; "
                               "downmix first, e.g. wave.mean(axis=channel_axis)")
    if np.issubdtype(x.dtype, np.signedinteger):  # PCM: full scale of int16 is 32768, as soundfile scales it
        return (x / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(path, f"expected float (or signed integer PCM) samples, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    peak = float(np.nanmax(np.abs(x), initial=0.0, where=np.isfinite(x)))
    if peak > MAX_FLOAT_PEAK:  # float audio is [-1, 1]; far beyond it, integer PCM was cast without scaling
        raise AudioError(path, f"float samples reach {peak:.3g}, but float audio lies in [-1, 1]; if these are "
                               f"integer PCM values, divide by 32768 (16-bit) first")
    return x

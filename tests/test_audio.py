"""audio.py: every kind of bad input raises its own error naming the file; good input in any format and rate comes
back as 16 kHz mono float32 with its content intact. All audio is generated here with numpy + soundfile."""
from __future__ import annotations

import csv
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emoadapt import errors
from emoadapt.audio import (
    SAMPLE_RATE,
    SILENCE_PEAK,
    AudioInfo,
    SilentAudioWarning,
    audio_info,
    chunk,
    load_audio,
    validate_waveform,
)

CAN_WRITE_MP3 = "MP3" in sf.available_formats()


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * sr)) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def write(path: Path, x: np.ndarray, sr: int, **kw) -> Path:
    sf.write(path, x, sr, **kw)
    return path


def truncated(src: Path, dst: Path, keep: int | float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    return dst


# --- bad inputs: one maker per kind, each returning the path ---------------------------------------------------
def make_missing(d):
    return d / "nowhere.wav"


def make_directory(d):
    (d / "folder.wav").mkdir()
    return d / "folder.wav"


def make_fifo(d):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    os.mkfifo(d / "pipe.wav")
    return d / "pipe.wav"


def make_empty(d):
    (d / "empty.wav").write_bytes(b"")
    return d / "empty.wav"


def make_text(d):
    (d / "notes.wav").write_text("these are meeting notes, not audio\n" * 20)
    return d / "notes.wav"


def make_random(d):
    data = np.random.default_rng(0).bytes(4096)
    assert data[0] != 0xFF  # would look like an MPEG frame sync
    (d / "noise.wav").write_bytes(data)
    return d / "noise.wav"


def good_wav(d, name="good.wav"):
    return write(d / name, sine(440, 1.0, 16_000), 16_000, subtype="PCM_16")  # 44-byte header + 32 000 bytes


def make_wav_cut_in_header(keep):
    return lambda d: truncated(good_wav(d), d / f"head{keep}.wav", keep)


def make_wav_cut_in_data(d):
    return truncated(good_wav(d), d / "cut_data.wav", 44 + 1001)


def make_wav_header_only(d):  # the header claims 32 000 bytes, none follow: truncated, not "zero samples"
    return truncated(good_wav(d), d / "header_only.wav", 44)


def make_aiff_cut(d):
    return truncated(write(d / "good.aiff", sine(440, 1.0, 16_000), 16_000), d / "cut.aiff", 0.4)


def good_flac(d):
    return write(d / "good.flac", sine(440, 2.0, 16_000), 16_000)


def make_flac_damaged(d):
    data = bytearray(good_flac(d).read_bytes())
    mid = len(data) // 2
    data[mid:mid + 200] = b"\xaa" * 200
    (d / "damaged.flac").write_bytes(bytes(data))
    return d / "damaged.flac"


def make_flac_cut(d):
    return truncated(good_flac(d), d / "cut.flac", 0.5)


def make_flac_cut_in_header(d):
    return truncated(good_flac(d), d / "head.flac", 10)


def make_ogg_cut(keep):
    def make(d):
        return truncated(write(d / "good.ogg", sine(440, 3.0, 16_000), 16_000), d / f"cut{keep}.ogg", keep)
    return make


def make_mp3_cut(d):
    if not CAN_WRITE_MP3:
        pytest.skip("libsndfile here cannot write MP3")
    return truncated(write(d / "good.mp3", sine(440, 3.0, 16_000), 16_000), d / "cut.mp3", 0.5)


def make_zero_samples(d):
    return write(d / "zero.wav", np.zeros(0, np.float32), 16_000)


def make_nan(d):
    x = sine(440, 1.0, 16_000)
    x[1234] = np.nan
    return write(d / "nan.wav", x, 16_000, subtype="FLOAT")


def make_inf(d):
    x = sine(440, 1.0, 44_100)
    x[-5] = -np.inf
    return write(d / "inf.wav", np.stack([x, x], axis=1), 44_100, subtype="DOUBLE")


def make_rate_too_low(d):
    return write(d / "slow.wav", sine(100, 1.0, 500), 500, subtype="PCM_16")


def make_rate_too_high(d):
    return write(d / "fast.wav", sine(440, 0.01, 1_000_000), 1_000_000, subtype="PCM_16")


# (maker, error, also raised by the header-only audio_info?)
BAD = {
    "missing": (make_missing, errors.MissingAudio, True),
    "directory": (make_directory, errors.NotAFile, True),
    "fifo": (make_fifo, errors.NotAFile, True),
    "empty": (make_empty, errors.EmptyAudio, True),
    "text": (make_text, errors.NotAudio, True),
    "random-bytes": (make_random, errors.NotAudio, True),
    "wav-cut-at-8": (make_wav_cut_in_header(8), errors.CorruptAudio, True),      # "RIFF" + size only
    "wav-cut-at-20": (make_wav_cut_in_header(20), errors.CorruptAudio, True),    # inside the fmt chunk
    "wav-cut-at-38": (make_wav_cut_in_header(38), errors.CorruptAudio, True),    # before the data chunk
    "wav-header-only": (make_wav_header_only, errors.CorruptAudio, True),
    "wav-cut-in-data": (make_wav_cut_in_data, errors.CorruptAudio, True),
    "aiff-cut-in-data": (make_aiff_cut, errors.CorruptAudio, True),
    "flac-damaged": (make_flac_damaged, errors.CorruptAudio, False),
    "flac-cut": (make_flac_cut, errors.CorruptAudio, False),
    "flac-cut-in-header": (make_flac_cut_in_header, errors.CorruptAudio, True),
    "ogg-cut-early": (make_ogg_cut(0.3), errors.CorruptAudio, True),   # libsndfile: "malformed"
    "ogg-cut-late": (make_ogg_cut(0.8), errors.CorruptAudio, True),    # libsndfile: opens, 0 frames
    "mp3-cut": (make_mp3_cut, errors.CorruptAudio, False),
    "zero-samples": (make_zero_samples, errors.NoSamples, True),
    "nan": (make_nan, errors.NonFiniteAudio, False),
    "inf-stereo-44k": (make_inf, errors.NonFiniteAudio, False),
    "rate-500Hz": (make_rate_too_low, errors.BadSampleRate, True),
    "rate-1MHz": (make_rate_too_high, errors.BadSampleRate, True),
}


def assert_names_file(err: pytest.ExceptionInfo, path: Path):
    assert path.name in str(err.value)
    assert err.value.path == str(path)
    chained = err.value.__cause__ or (None if err.value.__suppress_context__ else err.value.__context__)
    assert chained is None  # no library traceback attached


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_its_own_error_naming_the_file(case, tmp_path):
    make, error, _ = BAD[case]
    path = make(tmp_path)
    with pytest.raises(error) as err:
        load_audio(path)
    assert type(err.value) is error, f"{case}: got {type(err.value).__name__}, want {error.__name__}"
    assert_names_file(err, path)


@pytest.mark.parametrize("case", [c for c, (_, _, header) in BAD.items() if header])
def test_audio_info_finds_header_level_problems(case, tmp_path):
    make, error, _ = BAD[case]
    path = make(tmp_path)
    with pytest.raises(error) as err:
        audio_info(str(path))
    assert type(err.value) is error
    assert_names_file(err, path)


def test_too_short_counts_samples_at_16k(tmp_path):
    # 200 samples at 8 kHz = 400 at 16 kHz: enough for min_samples=400, not for 401
    path = write(tmp_path / "blip.wav", sine(440, 0.025, 8_000), 8_000, subtype="PCM_16")
    assert len(load_audio(path, min_samples=400)) in (399, 400, 401)
    with pytest.raises(errors.TooShortAudio) as err:
        load_audio(path, min_samples=1000)
    assert_names_file(err, path)


def test_too_long_only_when_a_limit_is_given(tmp_path):
    path = write(tmp_path / "speech.flac", sine(440, 2.0, 48_000), 48_000)
    assert len(load_audio(path)) == 2 * SAMPLE_RATE
    assert len(load_audio(path, max_seconds=2.0)) == 2 * SAMPLE_RATE
    with pytest.raises(errors.TooLongAudio) as err:
        load_audio(path, max_seconds=1.5)
    assert_names_file(err, path)
    assert "2.0 s" in str(err.value)


def test_streaming_wav_with_unknown_size_is_not_truncated(tmp_path):
    """Writers that stream set the RIFF and data sizes to 0xFFFFFFFF ("unknown"): read what is there."""
    data = bytearray(good_wav(tmp_path).read_bytes())
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "stream.wav").write_bytes(bytes(data))
    x = load_audio(tmp_path / "stream.wav")
    assert len(x) == SAMPLE_RATE and abs(peak_hz(x) - 440) <= 2


# --- good inputs ------------------------------------------------------------------------------------------------
GOOD = [  # (name, sample rate, channels, soundfile options, lossy?)
    ("wav16_16k_mono.wav", 16_000, 1, dict(subtype="PCM_16"), False),
    ("wav16_8k_mono.wav", 8_000, 1, dict(subtype="PCM_16"), False),
    ("wavfloat_44k_stereo.wav", 44_100, 2, dict(subtype="FLOAT"), False),
    ("wav24_48k_stereo.wav", 48_000, 2, dict(subtype="PCM_24"), False),
    ("flac_22k_mono.flac", 22_050, 1, {}, False),
    ("flac_48k_stereo.flac", 48_000, 2, {}, False),
    ("vorbis_44k_stereo.ogg", 44_100, 2, {}, True),
    ("vorbis_16k_mono.ogg", 16_000, 1, {}, True),
    ("mp3_48k_mono.mp3", 48_000, 1, {}, True),
    ("mp3_22k_stereo.mp3", 22_050, 2, {}, True),
]


@pytest.mark.parametrize("name,sr,channels,options,lossy", GOOD, ids=[g[0] for g in GOOD])
def test_good_input_becomes_16k_mono_float32_with_content_kept(name, sr, channels, options, lossy, tmp_path):
    if name.endswith(".mp3") and not CAN_WRITE_MP3:
        pytest.skip("libsndfile here cannot write MP3")
    seconds, freq = 1.5, 440.0
    left = sine(freq, seconds, sr, amp=0.6)
    data = left if channels == 1 else np.stack([left, left / 3], axis=1)  # mean of channels: amplitude 0.4
    path = write(tmp_path / name, data, sr, **options)

    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - round(len(left) * SAMPLE_RATE / sr)) <= 1
    assert abs(peak_hz(x) - freq) <= 1.0  # the sine keeps its pitch through decoding and resampling
    want_amp = 0.6 if channels == 1 else 0.4
    middle = x[len(x) // 4: -len(x) // 4]  # away from codec/resampler edges
    rms = float(np.sqrt(np.mean(middle ** 2)))
    assert rms == pytest.approx(want_amp / np.sqrt(2), rel=0.05 if lossy else 0.005)

    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (sr, channels, len(left))
    assert info.duration == pytest.approx(seconds, abs=1 / sr)


def test_16k_float_input_is_returned_unchanged_from_str_or_path(tmp_path):
    x = sine(300, 0.5, 16_000)
    path = write(tmp_path / "exact.wav", x, 16_000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(str(path)), x)
    np.testing.assert_array_equal(load_audio(path), x)


def test_integer_pcm_is_scaled_to_unit_range(tmp_path):
    pcm = np.array([0, 16384, 32767, -32768, -16384] * 100, dtype=np.int16)
    path = write(tmp_path / "pcm.wav", pcm, 16_000, subtype="PCM_16")
    x = load_audio(path)
    np.testing.assert_allclose(x[:5], [0, 0.5, 32767 / 32768, -1.0, -0.5])
    # the same scaling for int16 arrays given in memory
    np.testing.assert_array_equal(validate_waveform(pcm), x)


def test_audio_info_reads_the_header(tmp_path):
    path = write(tmp_path / "a.flac", np.zeros((24_000, 2), np.float32) + 0.1, 48_000)
    info = audio_info(path)
    assert info == AudioInfo(path=path, sample_rate=48_000, channels=2, frames=24_000, duration=0.5,
                             format="FLAC", subtype="PCM_16")


# --- silence ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amp", [0.0, SILENCE_PEAK / 2])
def test_silence_warns_naming_the_file(amp, tmp_path):
    path = write(tmp_path / "quiet.wav", sine(440, 0.5, 16_000, amp=amp), 16_000, subtype="FLOAT")
    with pytest.warns(SilentAudioWarning, match="quiet.wav"):
        x = load_audio(path)
    assert len(x) == 8_000


def test_quiet_but_audible_speech_does_not_warn(tmp_path):
    path = write(tmp_path / "soft.wav", sine(440, 0.5, 16_000, amp=SILENCE_PEAK * 10), 16_000, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SilentAudioWarning)
        load_audio(path)


# --- in-memory waveforms -----------------------------------------------------------------------------------------
def test_validate_waveform_resamples_and_checks():
    x48 = sine(1000, 1.0, 48_000)
    y = validate_waveform(x48[None, :], sample_rate=48_000)  # (1, T) is accepted as mono
    assert y.dtype == np.float32 and len(y) == SAMPLE_RATE and abs(peak_hz(y) - 1000) <= 1

    with pytest.raises(errors.NonFiniteAudio, match="clip-7"):
        validate_waveform(np.array([0.1, np.nan, 0.2], np.float32), path="clip-7")
    with pytest.raises(errors.TooShortAudio):
        validate_waveform(np.ones(10, np.float32) * 0.1, min_samples=400)
    with pytest.raises(errors.TooLongAudio):
        validate_waveform(np.ones(SAMPLE_RATE * 2, np.float32) * 0.1, max_seconds=1.0)
    with pytest.raises(errors.NoSamples):
        validate_waveform(np.zeros(0, np.float32))
    with pytest.raises(errors.BadSampleRate):
        validate_waveform(np.ones(100, np.float32), sample_rate=100)
    with pytest.raises(errors.AudioError, match="1-D"):
        validate_waveform(np.ones((2, 1000), np.float32))  # stereo: the caller must say which axis is channels


def test_validate_waveform_takes_a_torch_tensor():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(sine(1000, 1.0, 48_000)[::2].copy()).requires_grad_()  # 24 kHz, strided source
    y = validate_waveform(x, sample_rate=24_000)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and len(y) == SAMPLE_RATE
    assert abs(peak_hz(y) - 1000) <= 1


# --- chunk --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,n", [(10_000, 3_000), (9_000, 3_000), (5, 3_000), (1, 1), (0, 7)])
def test_chunk_covers_the_input_exactly(length, n):
    x = np.arange(length, dtype=np.float32)
    pieces = chunk(x, n)
    assert len(pieces) == -(-length // n)
    assert all(0 < len(p) <= n for p in pieces)
    assert all(len(p) == n for p in pieces[:-1])
    np.testing.assert_array_equal(np.concatenate(pieces) if pieces else x[:0], x)
    with pytest.raises(ValueError):
        chunk(x, 0)


# --- the real corpus -----------------------------------------------------------------------------------------------
def test_real_ravdess_clip(shared_data):
    folder = shared_data("ravdess")
    with open(folder / "manifest.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    path = folder / row["path"]
    x = load_audio(path, min_samples=400)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - float(row["duration_s"]) * SAMPLE_RATE) <= 16  # manifest rounds to 1 ms
    assert 1e-2 < np.abs(x).max() <= 1.0
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.format) == (SAMPLE_RATE, 1, "FLAC")
    assert info.frames == len(x)

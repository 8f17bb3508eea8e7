"""Recording conditions (emoadapt.conditions): seeded, at the SNR asked, band-limited where a phone line is, real
codecs that change the audio, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from emoadapt.audio import SAMPLE_RATE
from emoadapt.conditions import CONDITIONS, NoiseSources, add_at_snr, degrade
from emoadapt.errors import EmoadaptError


@pytest.fixture(scope="module")
def voiced():
    """2 s of a harmonic, amplitude-modulated signal (energy up to 6 kHz), not a real voice but shaped like one."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * 150 * k * t) / np.sqrt(k) for k in range(1, 41))
    return (0.2 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) / np.abs(wave).max()).astype(np.float32)


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(1)
    return NoiseSources(speech=[(0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32) for _ in range(5)],
                        music=[(0.1 * np.sin(np.arange(3 * SAMPLE_RATE) / 7)).astype(np.float32)])


def _band_share(wave, low, high):
    power = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)
    return power[(freqs >= low) & (freqs < high)].sum() / power.sum()


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
def test_every_condition_is_seeded_16k_float32_and_changes_the_audio(condition, voiced, sources):
    out = degrade(voiced, condition, seed=3, sources=sources)
    assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all() and np.abs(out).max() <= 1
    expected = len(voiced) / 1.1 if condition.startswith("speed") else len(voiced)
    assert abs(len(out) - expected) <= 0.01 * SAMPLE_RATE
    assert np.array_equal(out, degrade(voiced, condition, seed=3, sources=sources))
    n = min(len(out), len(voiced))
    assert not np.allclose(out[:n], voiced[:n], atol=1e-4)


def test_noise_is_added_at_the_snr_asked(voiced):
    noise = np.random.default_rng(0).standard_normal(len(voiced)).astype(np.float32)
    for snr in (0, 10, 20):
        residual = add_at_snr(voiced, noise, snr) - voiced
        assert 10 * np.log10(np.mean(voiced ** 2) / np.mean(residual ** 2)) == pytest.approx(snr, abs=0.05)
    assert np.array_equal(add_at_snr(voiced, np.zeros_like(voiced), 10), voiced)  # nothing to scale: unchanged


def test_phone_lines_keep_only_their_band(voiced, sources):
    before = _band_share(voiced, 4100, 8000)
    assert before > 0.05
    for condition in ("telephone (300-3400 Hz, 8 kHz, mu-law)", "8 kHz", "gsm"):  # gsm's resampler leaks a little
        assert _band_share(degrade(voiced, condition, seed=0, sources=sources), 4100, 8000) < before / 20, condition
    low = _band_share(voiced, 0, 200)  # the 150 Hz fundamental
    assert _band_share(degrade(voiced, "telephone (300-3400 Hz, 8 kHz, mu-law)", seed=0), 0, 200) < low / 20


def test_different_seeds_give_different_noise_and_missing_sources_are_named(voiced):
    a = degrade(voiced, "white noise 10 dB", seed=0)
    b = degrade(voiced, "white noise 10 dB", seed=1)
    assert not np.array_equal(a, b)
    with pytest.raises(EmoadaptError, match="needs speech to mix in"):
        degrade(voiced, "babble 10 dB", seed=0)
    with pytest.raises(EmoadaptError, match="unknown recording condition 'radio'"):
        degrade(voiced, "radio", seed=0)

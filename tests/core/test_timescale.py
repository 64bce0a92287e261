"""Shortening decoded audio: exact length, a seam that does not click, the cut where it is
cheapest."""

from __future__ import annotations

import numpy as np
import pytest

from medcomm.core.timescale import FADE, shorten
from medcomm.errors import UsageError

RATE = 48_000


def tone(hz: float, n: int, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(n) / RATE
    return np.rint(amp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.mark.parametrize("remove", [1, 48, 480, 1440, 2880])
def test_length_is_exactly_shorter_and_the_ends_are_kept(remove: int) -> None:
    rng = np.random.default_rng(remove)
    pcm = rng.integers(-20000, 20000, 5760).astype(np.int16)
    out = shorten(pcm, remove)
    assert out.dtype == np.int16 and len(out) == len(pcm) - remove
    assert out[-1] == pcm[-1]


def test_nothing_to_remove_returns_the_audio_unchanged() -> None:
    pcm = tone(200, 960)
    assert shorten(pcm, 0) is pcm


def test_all_of_it_is_refused() -> None:
    with pytest.raises(UsageError):
        shorten(tone(200, 960), 960)


@pytest.mark.parametrize("hz", [110.0, 200.0, 310.0])
def test_voiced_audio_loses_whole_pitch_periods_when_it_may_cut_less(hz: float) -> None:
    """Asked for 1000 samples, allowed to cut as few as 500: a tone loses a whole number of
    its periods (so no seam at all), as close to the ask as that allows."""
    pcm = tone(hz, 5760)
    out = shorten(pcm, 1000, least=500)
    removed = len(pcm) - len(out)
    period = RATE / hz
    assert 500 <= removed <= 1000
    assert abs(removed / period - round(removed / period)) * period <= 2  # whole periods
    assert 1000 - removed < period + 2  # no further from the ask than one period
    step = np.max(np.abs(np.diff(pcm.astype(int))))
    assert np.max(np.abs(np.diff(out.astype(int)))) <= step * 1.05


def test_noise_has_no_pitch_and_is_cut_by_exactly_the_ask() -> None:
    rng = np.random.default_rng(9)
    pcm = rng.integers(-8000, 8000, 5760).astype(np.int16)
    assert len(pcm) - len(shorten(pcm, 1000, least=500)) == 1000


def test_a_periodic_signal_loses_whole_periods_without_a_seam() -> None:
    """A 200 Hz tone (240-sample period) shortened by 1200 samples: the splice joins the
    waveform to itself five periods on, so the output is the same tone, sample for sample."""
    pcm = tone(200, 5760)
    out = shorten(pcm, 1200)
    ref = tone(200, len(out))
    assert np.max(np.abs(out.astype(int) - ref.astype(int))) <= 2


def test_a_cut_that_is_not_a_whole_period_still_has_no_click() -> None:
    """1000 samples is 4.17 periods of 200 Hz: the cross-fade may bend the waveform but must
    not jump: the largest step between samples stays near the tone's own (a bare cut of
    1000 samples would jump by ~7000)."""
    pcm = tone(200, 5760)
    out = shorten(pcm, 1000)
    step = np.max(np.abs(np.diff(pcm.astype(int))))
    assert np.max(np.abs(np.diff(out.astype(int)))) <= step * 1.5


def test_the_cut_goes_into_the_quiet_part() -> None:
    """Loud speech-like noise with a quiet stretch in the middle: the splice lands in the
    quiet stretch, so all of the loud audio survives."""
    rng = np.random.default_rng(5)
    loud = lambda n: rng.integers(-15000, 15000, n).astype(np.int16)  # noqa: E731
    quiet = (rng.integers(-30, 30, 1920)).astype(np.int16)
    pcm = np.concatenate([loud(1920), quiet, loud(1920)])
    out = shorten(pcm, 960)
    assert np.array_equal(out[:1920], pcm[:1920])
    assert np.array_equal(out[-1920:], pcm[-1920:])


def test_a_short_packet_uses_a_shorter_fade() -> None:
    pcm = tone(300, 120)
    out = shorten(pcm, 60)
    assert len(out) == 60 and FADE > 60

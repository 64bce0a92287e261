"""The voice benchmarks' judge: pairing received audio with what was sent where the receiver's
delay changed (``scripts/benchlib/audiometrics.piecewise_align``). No codec, no PESQ here: a
received signal made from the sent one by known splices, so a right pairing is exact."""

from __future__ import annotations

import numpy as np

from tests.harness.scripts import load_script

am = load_script("benchlib/audiometrics.py", "audiometrics_under_test")
FS = am.FS


def talk(seconds: float, pauses: list[tuple[float, float]], seed: int = 1) -> np.ndarray:
    """Noise bursts shaped like syllables, digital silence in ``pauses`` (s)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    x = rng.normal(0, 3000, n) * (0.6 + 0.4 * np.sin(np.arange(n) * 2 * np.pi * 4 / FS))
    for a, b in pauses:
        x[int(a * FS) : int(b * FS)] = 0
    return x.astype(np.int16)


def point(received_s: float, lag_s: float) -> object:
    """A delay-track point for a call whose source and sink both started at 0."""
    return am.DelayPoint(heard=received_s + am.BLOCK_S, delay=lag_s + am.BLOCK_S, peak=0.9)


def test_a_splice_in_a_pause_after_the_windows_centre_is_paired_where_it_happened() -> None:
    """The receiver played 100 ms late, then cut 30 ms out of a pause. The window centred
    before the cut already reports the new lag (most of its sound is after it); the pairing
    must still switch in the pause, not at that window's centre, or the speech between is
    judged against sent audio 30 ms off."""
    sent = talk(3.0, [(1.45, 1.70)])
    lag1, cut_sent, cut = 0.100, 1.55, 0.030
    a = int(cut_sent * FS)
    received = np.concatenate([np.zeros(int(lag1 * FS), np.int16), sent[:a], sent[a + int(cut * FS) :]])
    # the received index of the cut is 1.65 s; the window centred at 1.5 s hears the new lag
    points = [point(0.5, lag1), point(1.0, lag1), point(1.5, lag1 - cut), point(2.0, lag1 - cut)]
    ranges, s, r = am.piecewise_align(sent, received, points, 0.0, 0.0)
    assert len(ranges) == 2
    assert int(1.45 * FS) <= ranges[0][1] <= int(1.70 * FS)  # the switch falls in the pause
    assert np.array_equal(s, r)


def test_a_growth_before_the_windows_centre_is_paired_where_it_happened() -> None:
    """The mirror case: 40 ms of silence inserted (the buffer grew) in a pause that lies
    before the centre of the last window still reporting the old lag."""
    sent = talk(3.0, [(1.20, 1.33)])
    lag1, at, grow = 0.100, 1.30, 0.040
    a = int(at * FS)
    received = np.concatenate(
        [np.zeros(int(lag1 * FS), np.int16), sent[:a], np.zeros(int(grow * FS), np.int16), sent[a:]]
    )
    # the growth is at received 1.40 s, speech from 1.47 s; the window centred at 1.5 s still
    # hears the old lag (most of its sound is before)
    points = [point(0.5, lag1), point(1.0, lag1), point(1.5, lag1), point(2.0, lag1 + grow)]
    ranges, s, r = am.piecewise_align(sent, received, points, 0.0, 0.0)
    assert len(ranges) == 2
    assert np.array_equal(s[np.abs(r) > 0], r[np.abs(r) > 0])  # every sound paired with itself


def test_a_steady_lag_is_one_piece() -> None:
    sent = talk(2.0, [])
    received = np.concatenate([np.zeros(int(0.05 * FS), np.int16), sent])
    ranges, s, r = am.piecewise_align(sent, received, [point(0.5, 0.05), point(1.0, 0.05)], 0.0, 0.0)
    assert ranges == [(0, len(sent))] and np.array_equal(s, r)


def test_lags_a_few_samples_apart_are_one_lag_and_a_false_peak_cuts_nothing() -> None:
    """The fine search wobbles by a few samples, and a window of voiced speech can peak at a
    wrong lag (a pitch period off): neither is a splice, and cutting there pairs good audio
    with the wrong sent audio (a cut searched for such a change once landed past a real
    splice and cost a simulated call 0.3 PESQ-WB)."""
    sent = talk(3.0, [])
    lag = 0.100
    received = np.concatenate([np.zeros(int(lag * FS), np.int16), sent])
    lags = [lag, lag + 6 / FS, lag + 0.013, lag, lag]
    points = [point(0.5 * (i + 1), x) for i, x in enumerate(lags)]
    ranges, s, r = am.piecewise_align(sent, received, points, 0.0, 0.0)
    assert ranges == [(0, len(sent))] and np.array_equal(s, r)


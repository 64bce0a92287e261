"""Playing a decoded packet a few ms shorter without an audible seam.

Why: the jitter buffer brings its delay down by asking for a packet to be played ``trim_ms``
shorter (``core.jitter``); dropping whole 60-120 ms packets would overshoot, and cut
syllables when there is no pause to drop. The cut is an overlap-add splice across ``r``
samples, placed where the two overlapped pieces differ least (``||a - b||^2``): a quiet
stretch, or a point where the waveform repeats itself ``r`` samples later. In voiced speech
the waveform repeats after whole pitch periods only, so ``r`` may be less than asked, down to
``least``: the candidates are the whole multiples of the packet's pitch period in that range
(and the exact amount); the longest wins unless a shorter one has clearly less distortion
per sample removed. That is WSOLA's 'accelerate' as telephony jitter buffers do it; a cut
that is not a whole number of periods is what makes speech warble. The packet's first and
last samples stay where they are, so its neighbours join as before. Pure numpy, no clock,
no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcomm.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

FADE = 240  # samples of the cross-fade: 5 ms at 48 kHz, a pitch period or two
PITCH_MIN = 120  # shortest pitch period looked for: 2.5 ms (400 Hz) at 48 kHz
PITCH_MAX = 960  # longest: 20 ms (50 Hz)


def shorten(pcm: np.ndarray, remove: int, least: int | None = None, fade: int = FADE) -> np.ndarray:
    """``pcm`` (int16) with between ``least`` (default: exactly ``remove``) and ``remove``
    samples spliced out; ``len(pcm) - len(result)`` says how many went."""
    import numpy as np

    n = len(pcm)
    if remove <= 0:
        return pcm
    if remove >= n:
        raise UsageError("cannot shorten audio by all of it", samples=n, remove=remove)
    least = remove if least is None else max(1, min(least, remove))
    x = pcm.astype(np.float64)
    candidates = {remove}
    period = _pitch_period(x) if least < remove else None
    if period is not None:
        candidates.update(k * period for k in range(1, remove // period + 1) if k * period >= least)
    best: tuple[float, int, int, int] | None = None  # (distortion per sample removed, at, r, fade)
    for r in sorted(candidates, reverse=True):  # nearest the ask first; a shorter cut must be
        # clearly cleaner (half the distortion per sample) to be chosen instead
        f = max(1, min(fade, n - r))
        keep = n - r
        sums = _window_sums(np.stack([x[:keep] ** 2, x[r:] ** 2, x[:keep] * x[r:]]), f)
        cost = sums[0] + sums[1] - 2.0 * sums[2]  # ||a - b||^2 for a splice starting at each i
        i = int(np.argmin(cost))
        score = float(cost[i]) / r
        if best is None or score < 0.5 * best[0]:
            best = (score, i, r, f)
    assert best is not None
    _, i, r, f = best
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(f) + 0.5) / f)
    seam = x[i : i + f] * (1.0 - rise) + x[i + r : i + r + f] * rise
    out = np.concatenate([x[:i], seam, x[i + r + f :]])
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _pitch_period(x: np.ndarray) -> int | None:
    """The lag (samples) of the strongest autocorrelation peak in the pitch range, if the
    signal is periodic enough there (normalised peak >= 0.5); None for noise or silence."""
    import numpy as np

    n = len(x)
    hi = min(PITCH_MAX, n // 2)
    if hi <= PITCH_MIN:
        return None
    spec = np.fft.rfft(x - x.mean(), 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[:n]
    if ac[0] <= 0:
        return None
    # the biased sums favour the shortest lag (the period, not a multiple of it); the test
    # of periodicity corrects for the overlap shrinking with the lag
    lag = PITCH_MIN + int(np.argmax(ac[PITCH_MIN:hi]))
    return lag if ac[lag] / (n - lag) >= 0.5 * ac[0] / n else None


def _window_sums(rows: np.ndarray, width: int) -> np.ndarray:
    """Sums of every ``width``-long window of each row, by running sums (O(n))."""
    import numpy as np

    run = np.concatenate([np.zeros((rows.shape[0], 1)), np.cumsum(rows, axis=1)], axis=1)
    return run[:, width:] - run[:, :-width]

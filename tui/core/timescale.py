"""Playing a decoded packet a few ms shorter without an audible seam.

Why: the jitter buffer brings its delay down during speech by asking for a packet to be
played ``trim_ms`` shorter (``core.jitter``); dropping whole 60-120 ms packets would overshoot
and cut syllables. The cut is an overlap-add splice across ``remove`` samples, placed where
the two overlapped pieces differ least (smallest ``||a - b||^2``): a quiet stretch, or a point
where the waveform repeats itself ``remove`` samples later (a whole number of pitch periods
in voiced speech). That is the core of WSOLA's 'accelerate' that telephony jitter buffers
use; the packet's first and last samples stay where they are, so its neighbours join as
before. Pure numpy, no clock, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcomm.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

FADE = 240  # samples of the cross-fade: 5 ms at 48 kHz, a pitch period or two


def shorten(pcm: np.ndarray, remove: int, fade: int = FADE) -> np.ndarray:
    """``pcm`` (int16) with ``remove`` samples spliced out; at most half of it may go."""
    import numpy as np

    n = len(pcm)
    if remove <= 0:
        return pcm
    if 2 * remove > n:
        raise UsageError("cannot shorten audio by more than half", samples=n, remove=remove)
    fade = max(1, min(fade, n - remove))
    x = pcm.astype(np.float64)
    keep = n - remove
    sums = _window_sums(np.stack([x[:keep] ** 2, x[remove:] ** 2, x[:keep] * x[remove:]]), fade)
    cost = sums[0] + sums[1] - 2.0 * sums[2]  # ||a - b||^2 for a splice starting at each i
    i = int(np.argmin(cost))
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
    seam = x[i : i + fade] * (1.0 - rise) + x[i + remove : i + remove + fade] * rise
    out = np.concatenate([x[:i], seam, x[i + remove + fade :]])
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _window_sums(rows: np.ndarray, width: int) -> np.ndarray:
    """Sums of every ``width``-long window of each row, by running sums (O(n))."""
    import numpy as np

    run = np.concatenate([np.zeros((rows.shape[0], 1)), np.cumsum(rows, axis=1)], axis=1)
    return run[:, width:] - run[:, :-width]

"""How many 20 ms blocks the call keeps queued in the speaker (sans-I/O, ``now`` passed in).

Every block queued is mouth-to-ear delay: the jitter buffer must decide that much earlier.
So the queue starts at one block, and grows by one when the speaker runs dry (the engine was
held up longer than a block's slack: a busy PC, a redraw, a garbage collection).

Two things this adds to the old "grow on every underrun, never shrink":

* An underrun before any far-end audio has arrived grows nothing. The speaker is playing the
  silence of a call's first moments, so nobody hears it; but the queue would have stayed a
  block longer, 20 ms more delay, for the whole call. Measured: a call's first packet
  (a cipher loaded on first use) held the loop for 14 ms and did exactly that.
* After ``calm_s`` without an underrun the queue gives a block back, down to the least. A
  single hiccup no longer costs 20 ms for the rest of a long consult. A PC that is busy all
  the time would run dry again and again, so each regrowth doubles the calm asked for next
  time (up to ``calm_max_s``): a few clicks at most, then the queue stays long.
"""

from __future__ import annotations

from dataclasses import dataclass

from medcomm.errors import UsageError


@dataclass(frozen=True)
class SpeakerLimits:
    """Bounds of the speaker queue, in 20 ms blocks and seconds."""

    least: int = 1  # blocks queued at the start and after a calm spell
    most: int = 3  # a loop held up 60 ms is broken, not busy: more would only add delay
    calm_s: float = 10.0  # without running dry this long, give a block back
    calm_max_s: float = 160.0  # the calm asked for after repeated regrowth, at most

    def __post_init__(self) -> None:
        if not 1 <= self.least <= self.most:
            raise UsageError("speaker queue must be 1 <= least <= most", least=self.least, most=self.most)
        if not 0 < self.calm_s <= self.calm_max_s:
            raise UsageError("speaker queue calm must be 0 < calm_s <= calm_max_s", calm_s=self.calm_s)


class SpeakerQueue:
    """The speaker's queue length, moved by underruns and calm spells."""

    def __init__(self, limits: SpeakerLimits, now: float) -> None:
        self.limits = limits
        self.blocks = limits.least
        self.grown = 0  # times the queue grew (for the call's report)
        self._calm = limits.calm_s
        self._since = now  # the last underrun or change: the calm spell is counted from here
        self._shrunk = False  # gave a block back since the last growth: growing again backs off

    def underrun(self, now: float, *, heard: bool) -> bool:
        """The speaker ran dry; ``heard`` says whether far-end audio had started. True when
        the queue grew."""
        self._since = now
        if not heard or self.blocks >= self.limits.most:
            return False
        self.blocks += 1
        self.grown += 1
        if self._shrunk:
            self._calm = min(self._calm * 2, self.limits.calm_max_s)
            self._shrunk = False
        return True

    def poll(self, now: float) -> bool:
        """Give a block back after a calm spell; True when the queue shrank."""
        if self.blocks <= self.limits.least or now - self._since < self._calm:
            return False
        self.blocks -= 1
        self._since = now
        self._shrunk = True
        return True

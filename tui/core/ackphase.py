"""When to move our packet clock so that TCP's ACKs ride on our voice (sans-I/O).

Why. While both ends of a call talk, each sends a voice packet every 60 ms and each end's
kernel owes an ACK for every packet it receives. Linux holds that ACK at most 40 ms (its
least delayed-ACK wait) for data of ours to ride on; when our next packet leaves later than
that, the ACK goes alone: 52 bytes on the wire for nothing, 16 a second, about 7 kbit/s on top
of a ~24 kbit/s call. The two 60 ms clocks keep their phase for the whole call on a steady
link, so an unlucky phase costs that for the whole call: the standard rung measured 30 kbit/s
up on a clean link, over its 28.

The relay's kernel owes us the same: its ACK for our packet rides on the next packet it
forwards to us. So our phase (from the peer's packet arriving to ours leaving) should be
neither late (40 ms or more: our ACK goes alone) nor so early that the relay's next forward
comes 40 ms or more after our packet. The two ends' phases add up to minus the round trip
between them (mod the period), so a move of one end moves the other's phase the other way:
on a link without delay, when one end is late the other is early, and one move mends both.

What. The engine tells this when a peer's media packet arrived and when ours left. When the
median phase of our recent packets is ``late_ms`` or more, a move is due. It waits a random
0..``defer_s`` and is judged again on fresh packets (if the peer moved meanwhile, our phase
jumps, and we stand down: two late ends moving at once would only swap their phases). Then
it waits (up to ``pause_wait_s``) for a pause in our own speech, so the seam falls in silence.
``shift_ms`` then asks for the next packet to carry less audio, by the multiple of 20 ms (the
capture block) that lands the phase nearest the aim: where both ends' phases sit under the
40 ms with the most room, given the round trip (``aim``). That is one 40 ms packet in place of
a 60 ms one (or one of 20 ms). The audio is not delayed: a packet still leaves as soon as its
last sample is in, and the rest starts the next packet. A move costs one packet's headers
once. The wait before the next move doubles each time (a drifting sound-card clock needs one
every few minutes; where no reachable phase suits both ends, the moves stay few).

Where it cannot help. Steps are 20 ms and the departures wobble with the engine's 5 ms tick;
where the band both phases must share is narrower than that (round trips near 0 and near
48 ms, mod 60) an end may stay at an edge, partly late. On a jittery link the phase wanders
and the median rarely stays late: nothing moves, and ACKs ride or not by chance, as before.

Only packets of ``period_ms`` are judged: with 80 or 120 ms packets no phase lets both ends'
ACKs ride (the gap to the relay's next forward is the period less our phase, and both must be
under 40 ms), and with more than one stream arriving the kernel's ACKs follow whichever came
last. Silence on the far side means no ACK is owed: nothing is judged then.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from dataclasses import dataclass

from medcomm.errors import UsageError


@dataclass(frozen=True)
class PhaseLimits:
    period_ms: int = 60  # the packet length judged (the standard rung); see the module text
    ack_wait_ms: float = 40.0  # Linux's least delayed-ACK wait (TCP_DELACK_MIN)
    aim_ms: float = 30.0  # where to land without a round trip: the band (20, 40) for a round trip of 0
    late_ms: float = 38.0  # a median at or over this moves (40, less what the engine sees late)
    # moves are multiples of this: the capture block (audio arrives 20 ms at a time, so a
    # packet 10 ms shorter would still leave at the same block, only holding 10 ms back)
    grain_ms: int = 20
    judged: int = 10  # recent packets whose median phase is judged
    # A move found due waits a random 0..defer_s, then needs a fresh window still late: when
    # both ends are late (a round trip can make them so), the first to move mends the other's
    # phase too, and the other, seeing its phase jump, stands down instead of moving back.
    defer_s: float = 3.0
    pause_wait_s: float = 5.0  # after that, how long a move waits for a pause in our speech
    backoff_s: float = 1.0  # least wait after a move, doubling with each, up to backoff_max_s
    backoff_max_s: float = 32.0

    def __post_init__(self) -> None:
        if not 0 < self.aim_ms < self.late_ms <= self.ack_wait_ms < self.period_ms:
            raise UsageError(
                "ack phase: need 0 < aim_ms < late_ms <= ack_wait_ms < period_ms", late_ms=self.late_ms
            )
        bad = self.judged < 1 or self.backoff_s <= 0 or self.pause_wait_s < 0 or self.defer_s < 0
        if bad or not 0 < self.grain_ms < self.period_ms:
            raise UsageError("ack phase limits out of range", grain_ms=self.grain_ms, judged=self.judged)


class AckPhase:
    """Recent phases of our packets against the peer's; ``shift_ms`` says when to move.
    ``rng`` draws the deferral (seed it in tests)."""

    def __init__(self, limits: PhaseLimits = PhaseLimits(), rng: random.Random | None = None) -> None:
        self._lim = limits
        self._rng = rng if rng is not None else random.Random()
        self._arrivals: dict[int, float] = {}  # stream -> its latest media packet's arrival
        self._phases: deque[float] = deque(maxlen=limits.judged)
        self._quiet_until = 0.0  # no move before this (the backoff)
        self._due_at: float | None = None  # a move was found due; it may go from then on
        self.shifts = 0
        self.judged_ms = 0.0  # the median phase behind the last judgement

    def arrived(self, stream: int, now: float) -> None:
        """A media packet of ``stream`` arrived: the kernel owes an ACK for it."""
        self._arrivals[stream] = now

    def sent(self, frame_ms: int, now: float) -> None:
        """One of our packets of ``frame_ms`` left now."""
        lim = self._lim
        if frame_ms != lim.period_ms:
            self._forget()  # another rung: what was judged before says nothing of the next
            return
        recent = [t for t in self._arrivals.values() if (now - t) * 1000.0 < lim.period_ms]
        if len(recent) != 1:
            return
        phase = (now - recent[0]) * 1000.0
        if len(self._phases) >= 3 and abs(self._around(phase, self._median())) > lim.grain_ms / 2:
            self._forget()  # the phase jumped (the peer moved its clock): judge afresh
        self._phases.append(phase)

    def shift_ms(self, frame_ms: int, now: float, *, pause: bool, rtt_ms: float | None = None) -> int:
        """How much less audio the next packet should carry (0: none, a whole packet as usual).
        ``pause``: our own side is not talking now (a move waits for that, a while);
        ``rtt_ms``: the media round trip to the peer, if known (it sets the aim)."""
        lim = self._lim
        if frame_ms != lim.period_ms or len(self._phases) < lim.judged or now < self._quiet_until:
            return 0
        phase = self.judged_ms = self._median()
        if phase < lim.late_ms:
            self._due_at = None
            return 0
        if self._due_at is None:
            self._due_at = now + self._rng.uniform(0.0, lim.defer_s)
            self._phases.clear()  # judged again, fresh, when the deferral is over
            return 0
        if now < self._due_at or (not pause and now < self._due_at + lim.pause_wait_s):
            return 0
        aim = self.aim(rtt_ms)
        # the landing nearest the aim, on the line, not round the circle: a phase carried
        # below 0 wraps to just under the period, which is as late as it gets
        moves = range(lim.grain_ms, lim.period_ms, lim.grain_ms)
        return min(moves, key=lambda m: abs((phase - m) % lim.period_ms - aim))

    def aim(self, rtt_ms: float | None) -> float:
        """Where our phase should land. The two ends' phases add up to minus the round trip
        (mod the period): a move of ours moves the peer's phase the other way. So the aim is
        the point where both sit under the ACK wait with the most room: half the sum, or half
        the sum plus half a period, whichever is further from both 0 and ``ack_wait_ms``.
        Without a round trip, ``aim_ms`` (a round trip near 0)."""
        lim = self._lim
        if rtt_ms is None:
            return lim.aim_ms
        total = -rtt_ms % lim.period_ms
        options = [c for c in (total / 2, (total + lim.period_ms) / 2) if c < lim.ack_wait_ms]
        return max(options, key=lambda c: min(c, lim.ack_wait_ms - c), default=lim.aim_ms)

    def shifted(self, now: float) -> None:
        """The clock moved: judge afresh, and not again for a while."""
        lim = self._lim
        self._forget()
        self._quiet_until = now + min(lim.backoff_s * 2**self.shifts, lim.backoff_max_s)
        self.shifts += 1

    def _around(self, phase: float, ref: float) -> float:
        """``phase`` minus ``ref`` the short way round the period (a phase is circular: 59 ms
        and 1 ms are 2 ms apart, and a packet's jitter can carry it across)."""
        half = self._lim.period_ms / 2
        return (phase - ref + half) % self._lim.period_ms - half

    def _median(self) -> float:
        ref = self._phases[0]
        return (ref + statistics.median(self._around(p, ref) for p in self._phases)) % self._lim.period_ms

    def _forget(self) -> None:
        self._phases.clear()
        self._due_at = None

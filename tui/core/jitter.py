"""The receiver's adaptive jitter buffer for one voice stream (sans-I/O).

The receive side pushes each media packet with its unwrapped ``ts`` (sender's media clock,
ms), its duration and the arrival time ``now``; the playout side pulls the next piece when
the output needs one. Nothing here reads a clock or decodes audio.

Model. A packet ``[ts, ts+d)`` can leave the sender only once its last sample is captured, so
its arrival offset is ``o = arrival - (ts + d)``; measuring from the packet's *end* keeps a
change of packet length (40 -> 120 ms) from looking like jitter. The base ``b`` is the minimum
offset over a sliding window (fastest path plus the unknown clock offset, which cancels), and
a packet's jitter is ``j = o - b >= 0``. The playout point ``p`` is the next media ms to play;
the buffer's delay is the slack a packet gets beyond its best-case arrival::

    delay = start - b - p - d          (start: when the piece will begin to play)

A packet with jitter ``j`` is on time iff ``j <= delay``. Packetisation is excluded, so the
same floor and cap make sense for 40 ms and for 120 ms packets.

Pulls come early. An output that keeps ``L`` ms queued (a sound card's ring, filled by an
engine that wakes every few ms) asks for a piece about ``L`` ms before it plays, so a packet
must have arrived by the *pull*, not by its play time: it has ``delay - L`` of slack. The
buffer learns ``L`` from its own play clock (``start - now`` at each pull, its recent
maximum) and aims the delay at ``target + L``.

Target. A high quantile of ``j`` over the window, plus headroom, clamped to
``[floor_ms, cap_ms - hysteresis_ms]`` (so that shrinking, which starts at target +
hysteresis, keeps the delay inside the hard cap without forced drops). Until a few samples
are in, an ``initial_ms`` prior holds the delay up: the first seconds of a call on EDGE are
the worst moment to learn the link by concealing.

Stalls are not jitter. Over TCP a link stall ends in a burst whose packets carry the stall's
length as "jitter" (5 s, decreasing to 0 across the burst). A sample above the hard cap is a
delay no allowed buffer could absorb, so it marks a stall; it and the samples after it are
left out of the estimator until the stream is back on time (a sample within the current
estimate) or ``stall_holdoff_ms`` has passed without another over-cap sample. A genuine,
lasting increase of path delay is therefore still learnt after the holdoff (and, above the
cap, through the base window sliding). The base is a windowed *minimum*, which a stall
(all outliers upward) cannot move.

Playout rules on each pull (``excess = delay - target``):

===============================  ==========================================================
situation                        piece
===============================  ==========================================================
head behind ``p``                dropped as stale (never played late)
nothing buffered, excess > hyst  skip ``p`` forward to the target (nothing is lost)
nothing buffered, excess < 0     wait: conceal without advancing ``p`` (delay grows)
nothing buffered, otherwise      the deadline passed: conceal and advance ``p``
head after ``p`` (a gap)         skip the gap down to the target, then conceal the rest
head at ``p``, delay > cap       drop it (forced shrink)
head at ``p``, excess > hyst     drop it if silent, or if over target for ``patience``
head at ``p``, under target      wait before the first play; later only in silence
head at ``p``, excess > trim     play it shorter if silent, or long and over for ``patience``
otherwise                        play it
===============================  ==========================================================

Why shorten. A drop moves the delay by a whole packet, and with 120 ms packets that
overshoots: a delay 40 ms over target cannot come down by dropping 120 ms, so it used to stay
that much too high until a pause. The start of a call is always over target on a jittery
link: the playout is anchored on the first packet, which is late by its own jitter. A
``Play`` with ``trim_ms`` asks the output to play the decoded packet that much shorter
(``core.timescale`` cuts where the waveform is quiet or repeats itself, at whole pitch periods
as WSOLA's 'accelerate' does), so the delay comes down in steps of a few ms.

A packet that arrives just behind ``p`` is normally stale. One exception: if only
concealment has played since the last real packet and playing it now keeps the delay within
target + hysteresis, ``p`` moves back to it (the concealment becomes inserted delay). That is
what happens when the sender lengthens its packets: the first long packet misses a deadline
judged with the old length although the link is as fast as before.

Concealment runs for at most ``long_gap_ms`` after the last real packet; past that the
decoder's extrapolation sounds worse than silence, so the buffer yields ``Silence``.

A restarted sender stream (ts jumping far back) looks like a stall that never ends: give the
new stream a new ``JitterBuffer``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import deque
from dataclasses import dataclass

from medcomm.errors import LimitExceeded, UsageError


@dataclass(frozen=True)
class JitterLimits:
    """Bounds of one stream's jitter buffer; every delay is in ms of slack beyond the
    fastest observed arrival (packetisation excluded)."""

    floor_ms: int = 40  # least target: TCP arrivals wobble by a few ms, pulls come in 20 ms blocks
    cap_ms: int = 400  # hard cap: G.114's limit for mouth-to-ear; our RTTs already spend most of it
    initial_ms: int = 120  # target until min_samples are in: the first seconds are the worst to learn
    # ... unless the path's round trip is known before the call (``for_round_trip``): then a
    # third of it, within [initial_min_ms, initial_ms]. The start is anchored on the first packet at
    # that target, and on a clean link 120 ms is some 75 ms over what the measurement then
    # asks: without a pause to take it in, it came down by dropping 60 ms of speech. `scripts/
    # bench playout`, standard on clean: p95 226 -> 166 ms, PESQ-WB the same (3.35); 40 ms
    # lost 0.04 (the buffer grew once at the start); a jittery link (3G, EDGE: round trips of
    # 240 ms and more) started at 120 (on EDGE 60-80 cost 0.1 PESQ-WB). A third, not half: on
    # 3G (a 240 ms round trip) a start at 80 has the worst call's PESQ-WB a start at 120 has
    # (3.30; at 60: 3.19) and 40 ms less p95 delay (266 against 306 ms, standard); EDGE (400
    # ms) still starts at 120.
    initial_min_ms: int = 60
    headroom_ms: int = 20  # added to the jitter quantile: the delay moves in grain-sized steps
    quantile: float = 0.95  # share of packets the target keeps on time (the rest is concealed)
    window_ms: int = 10_000  # jitter and base windows (arrival time); longer than a 5 s stall
    min_samples: int = 10  # samples before the measurement replaces initial_ms
    stall_holdoff_ms: int = 2_000  # samples after an over-cap one are ignored this long
    grain_ms: int = 20  # size of a wait or underflow piece: one output block
    hysteresis_ms: int = 20  # shrink above target + this; grow in silence below target - this
    long_gap_ms: int = 200  # concealment beyond this becomes silence
    shrink_patience_ms: int = 3_000  # over target this long without a silent packet: drop speech
    # ... and then a quiet packet of it (this far under the loudest of the last few seconds:
    # a breath, a stop consonant, the tail of a word) rather than whichever comes next, for up
    # to quiet_wait_ms more: a dropped 60 ms of a vowel is a lost syllable. `scripts/bench
    # playout`, standard on clean: PESQ-WB 3.35 (worst call 3.33) against 3.28 (3.19).
    quiet_drop_db: int = 15
    quiet_wait_ms: int = 3_000
    quiet_level: int = 57  # loudness (127 + dBov) at or below which a packet counts as silent
    max_packet_ms: int = 120  # Opus's longest packet
    max_packets: int = 64  # packets held; oldest dropped beyond (flood without pulls)
    max_buffered_ms: int = 1_000  # audio held: twice the cap plus a packet could never be played
    max_samples: int = 512  # estimator samples kept (10 s of 20 ms packets)
    trim_above_ms: int = 10  # over target by more than this: play packets shortened (no drops)
    # Most of a packet cut at once: of silence, where one cut takes the whole excess in one
    # step (no seam to hear), and of speech (1.33x at worst; 0: never). Speech is cut only
    # from packets of trim_speech_from_ms or more, after trim_patience_ms over target without
    # a pause to cut instead: shorter packets come down well enough by dropping a silent one
    # or skipping in a pause. `scripts/bench playout`: cutting 60 ms speech packets cost 0.18
    # PESQ-WB on a clean link (3.28 -> 3.10); cutting 120 ms ones (whose drop would overshoot)
    # cost nothing and took the start-up's p95 delay from 286 to 205 ms.
    trim_silent_pct: int = 75
    trim_max_pct: int = 25
    trim_speech_from_ms: int = 100
    trim_patience_ms: int = 500

    def __post_init__(self) -> None:
        if not 0 < self.floor_ms <= self.cap_ms - self.hysteresis_ms:
            raise UsageError(
                "jitter floor must be positive and below cap - hysteresis",
                floor_ms=self.floor_ms,
                cap_ms=self.cap_ms,
            )
        if not 0.5 <= self.quantile < 1.0:
            raise UsageError("jitter quantile must be in [0.5, 1)", quantile=self.quantile)
        for name in (
            "grain_ms",
            "hysteresis_ms",
            "window_ms",
            "min_samples",
            "max_packet_ms",
            "max_packets",
            "max_samples",
            "long_gap_ms",
            "initial_ms",
            "initial_min_ms",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"jitter limit {name} must be >= 1", **{name: getattr(self, name)})
        if self.quiet_drop_db < 0 or self.quiet_wait_ms < 0:
            raise UsageError("jitter quiet_drop_db and quiet_wait_ms must be >= 0")
        if not 0 <= self.trim_max_pct <= 50 or not 0 <= self.trim_silent_pct <= 90 or self.trim_above_ms < 0:
            raise UsageError(
                "jitter trim must be 0-50 % of a speech packet, 0-90 % of a silent one, "
                "above a non-negative excess",
                trim_max_pct=self.trim_max_pct,
                trim_silent_pct=self.trim_silent_pct,
                trim_above_ms=self.trim_above_ms,
            )
        if self.max_buffered_ms < self.max_packet_ms:
            raise UsageError(
                "jitter buffer must hold at least one packet", max_buffered_ms=self.max_buffered_ms
            )


@dataclass(frozen=True, slots=True)
class Play:
    """Decode this packet; play it ``trim_ms`` shorter than its media (the delay comes down).
    An output that cuts less (a seam at a whole pitch period) says so with ``trimmed_less``."""

    payload: bytes
    duration_ms: int
    trim_ms: int = 0

    @property
    def played_ms(self) -> int:
        return self.duration_ms - self.trim_ms


@dataclass(frozen=True, slots=True)
class _Fill:
    """A piece with no packet behind it: it plays exactly its length."""

    duration_ms: int

    @property
    def played_ms(self) -> int:
        return self.duration_ms


@dataclass(frozen=True, slots=True)
class Conceal(_Fill):
    """Run the decoder's packet-loss concealment for this long."""


@dataclass(frozen=True, slots=True)
class Silence(_Fill):
    """Nothing to play: not started yet, or the gap is too long to conceal."""


Piece = Play | Conceal | Silence


@dataclass(frozen=True, slots=True)
class JitterStats:
    """What the UI meters and the feedback frame (jb_ms, concealed_pm) show."""

    delay_ms: int  # slack at the last pull (the feedback's jb_ms)
    target_ms: int
    jitter_ms: int  # the robust jitter quantile behind the target
    buffered_ms: int  # audio held, not yet played
    concealed_pm: int  # permille of played audio that was concealment, since the last reset
    concealed_pm_total: int
    stale_dropped: int  # arrived behind the playout point
    shrink_dropped: int  # dropped to bring the delay down (silent first; forced above the cap)
    trimmed_ms: int  # audio cut from packets played shortened, to bring the delay down
    overflow_dropped: int  # oldest dropped because too much was held
    played: int  # packets played
    stalls: int  # stalls detected (over-cap arrivals), left out of the estimate


def for_round_trip(limits: JitterLimits, rtt_ms: float | None) -> JitterLimits:
    """``limits`` with the start-up target guessed from the path's round trip (None: as is).
    A third of it: on the links medcomm meets, jitter grows with the round trip."""
    if rtt_ms is None or not math.isfinite(rtt_ms) or rtt_ms < 0:
        return limits
    guess = min(max(round(rtt_ms / 3), limits.initial_min_ms), limits.initial_ms)
    return dataclasses.replace(limits, initial_ms=guess)


@dataclass(frozen=True, slots=True)
class _Packet:
    ts: int
    duration: int
    payload: bytes
    silent: bool
    loud: int  # the level byte's loudness, 127 + dBov


class _Estimator:
    """Windowed minimum offset (base) and a stall-robust jitter quantile."""

    def __init__(self, limits: JitterLimits) -> None:
        self._lim = limits
        self._mins: deque[tuple[float, float]] = deque()  # (arrival, offset), offsets ascending
        # (arrival, offset) in arrival order. Offsets, not jitter: the quantile is taken against
        # the base of *now*, so a new minimum (or an old one leaving the window) moves the
        # target and the delay together and no slack is trimmed away for it.
        self._samples: deque[tuple[float, float]] = deque()
        self._sorted: list[float] = []
        self.base = 0.0
        self.jitter = 0.0
        self.accepted = 0
        self.stalls = 0
        self._stall_at: float | None = None  # arrival of the last over-cap sample while catching up

    def observe(self, arrival: float, ts: int, duration: int) -> None:
        lim = self._lim
        offset = arrival - (ts + duration)
        mins = self._mins
        while mins and mins[-1][1] >= offset:
            mins.pop()
        mins.append((arrival, offset))
        horizon = arrival - lim.window_ms
        while mins[0][0] < horizon or len(mins) > lim.max_samples:
            mins.popleft()
        self.base = mins[0][1]
        self._expire(horizon)  # the catch-up test below compares against the current window
        jit = offset - self.base
        if jit > lim.cap_ms:
            if self._stall_at is None:
                self.stalls += 1
            self._stall_at = arrival
            return
        if self._stall_at is not None:
            on_time = jit <= self.jitter + lim.headroom_ms
            if not on_time and arrival - self._stall_at < lim.stall_holdoff_ms:
                return
            self._stall_at = None
        self._samples.append((arrival, offset))
        bisect.insort(self._sorted, offset)
        self.accepted += 1
        self._expire(horizon)

    def _expire(self, horizon: float) -> None:
        samples = self._samples
        while samples and (samples[0][0] < horizon or len(samples) > self._lim.max_samples):
            _, old = samples.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        # an empty window (a stall longer than it) keeps the last estimate: no news is not calm
        if self._sorted:
            k = max(0, math.ceil(self._lim.quantile * len(self._sorted)) - 1)
            self.jitter = max(0.0, self._sorted[k] - self.base)


class JitterBuffer:
    """One received stream: push packets as they arrive, pull pieces as the output needs them.

    Call ``pull`` when the output needs its next piece (up to about one piece early is fine:
    the buffer keeps its own play clock, so ``start`` is when the previous piece ends).
    """

    def __init__(self, limits: JitterLimits = JitterLimits()) -> None:
        self._lim = limits
        self._est = _Estimator(limits)
        self._buf: deque[_Packet] = deque()
        self._buffered_ms = 0
        self._newest_ts: int | None = None
        self._last_dur = limits.max_packet_ms
        self._p: int | None = None  # next media ms to play; anchored at the first pull with data
        self._play_end = -math.inf
        self._lead = 0.0  # ms the output pulls ahead of playing (see the module's docstring)
        self._last_piece_ms = 0
        self._played_any = False
        self._played_end = -(1 << 62)  # media end of the last played packet: nothing before it plays
        self._gap_ms = 0  # concealment since the last real packet
        self._over_since: float | None = None
        self._louds: deque[int] = deque(maxlen=64)  # loudness of the latest packets (seconds of speech)
        self._delay = 0.0
        self._stale = self._shrunk = self._overflow = self._played = self._trimmed_ms = 0
        self._played_ms = self._concealed_ms = 0
        self._mark_played_ms = self._mark_concealed_ms = 0

    def __len__(self) -> int:
        return len(self._buf)

    # --- receive side ---------------------------------------------------------------------

    def push(self, ts_ms: int, duration_ms: int, payload: bytes, level: int, now: float) -> None:
        """Take one media packet: ``ts_ms`` unwrapped, ``level`` the wire's level byte *with*
        its voice-activity bit 7 (the shrinking rules need it). Bad durations or levels raise
        ``LimitExceeded``: the caller drops that frame, the stream goes on."""
        lim = self._lim
        if not 1 <= duration_ms <= lim.max_packet_ms:
            raise LimitExceeded(
                "voice packet duration out of range", duration_ms=duration_ms, max_ms=lim.max_packet_ms
            )
        if not 0 <= level <= 0xFF:
            raise LimitExceeded("voice level byte out of range", level=level)
        if self._newest_ts is not None and ts_ms <= self._newest_ts:
            # over TCP this is a repeat; a genuinely reordered packet still finds its place
            if (self._p is not None and ts_ms < self._p) or any(k.ts == ts_ms for k in self._buf):
                return
        arrival = now * 1000.0
        self._est.observe(arrival, ts_ms, duration_ms)
        newest = self._newest_ts is None or ts_ms > self._newest_ts
        if newest:
            self._newest_ts = ts_ms
            self._last_dur = duration_ms  # stale or not, the best guess for the next packet
        if self._p is not None and ts_ms < self._p:
            if not self._recoverable(ts_ms, duration_ms, arrival):
                self._stale += 1
                return
            self._p = ts_ms
        loud = level & 0x7F
        silent = not level & 0x80 or loud <= lim.quiet_level
        self._louds.append(loud)
        packet = _Packet(ts_ms, duration_ms, payload, silent, loud)
        if newest:
            self._buf.append(packet)
        else:
            self._buf.insert(bisect.bisect_left(self._buf, ts_ms, key=lambda k: k.ts), packet)
        self._buffered_ms += duration_ms
        while len(self._buf) > lim.max_packets or self._buffered_ms > lim.max_buffered_ms:
            self._buffered_ms -= self._buf.popleft().duration
            self._overflow += 1

    def _recoverable(self, ts: int, duration: int, arrival: float) -> bool:
        """A packet just behind the playout point, with only concealment played since the
        last real audio, may still be played if that keeps the delay within target.

        Why: a deadline is judged with the *previous* packet length; when the sender
        lengthens its packets (40 -> 120 ms) the first long one arrives 80 ms after it,
        although the link is as fast as before. Moving the playout point back turns the
        concealment already played into inserted delay instead of losing 120 ms of speech.
        A stall's burst is seconds late and never qualifies."""
        if ts < self._played_end:
            return False
        start = max(arrival, self._play_end)
        slack = start - self._est.base - ts - duration
        return slack <= self._aim() + self._lim.hysteresis_ms

    # --- playout side ---------------------------------------------------------------------

    @property
    def limits(self) -> JitterLimits:
        return self._lim

    def hint_start(self, initial_ms: int) -> None:
        """The start-up target from more than this end knew when the stream opened (the
        sender's own round trip, ``voiceframe.PathHint``): taken until the buffer has measured
        enough to set its target itself, and never below the floor or over the cap."""
        if self._est.accepted < self._lim.min_samples:
            self._lim = dataclasses.replace(self._lim, initial_ms=int(initial_ms))

    def trimmed_less(self, ms: float) -> None:
        """The output cut ``ms`` less of the last ``Play`` than its ``trim_ms`` (it found a
        cleaner seam at a whole pitch period): the play clock runs that much later."""
        if ms <= 0:
            return
        self._play_end += ms
        self._last_piece_ms += round(ms)
        self._played_ms += round(ms)
        self._trimmed_ms -= round(ms)

    def pull(self, now: float) -> Piece:
        """The next piece to play; the play clock advances by its ``played_ms``."""
        start = max(now * 1000.0, self._play_end)
        # the lead is the output's queue: it changes only with the output, so its recent
        # maximum is what a packet must beat (decaying 2 ms a second if the queue shrinks)
        self._lead = max(start - now * 1000.0, self._lead - self._last_piece_ms * 0.002)
        piece = self._decide(start)
        self._play_end = start + piece.played_ms
        self._last_piece_ms = piece.played_ms
        return piece

    def _target(self) -> float:
        lim = self._lim
        want = self._est.jitter + lim.headroom_ms
        if self._est.accepted < lim.min_samples:
            want = max(want, lim.initial_ms)
        return min(max(want, lim.floor_ms), lim.cap_ms - lim.hysteresis_ms)

    def _aim(self) -> float:
        """The delay the buffer steers to: the target, plus how early the output pulls."""
        lim = self._lim
        return min(self._target() + self._lead, lim.cap_ms - lim.hysteresis_ms)

    def _decide(self, start: float) -> Piece:
        lim = self._lim
        if self._p is None:
            if not self._buf:
                return Silence(lim.grain_ms)
            self._p = self._buf[0].ts
        target = self._aim()  # the target plus the lead: what "delay" below is steered to
        hyst = lim.hysteresis_ms
        while True:
            while self._buf and self._buf[0].ts < self._p:
                self._drop()
                self._stale += 1
            head = self._buf[0] if self._buf else None
            delay = start - self._est.base - self._p - (head.duration if head else self._last_dur)
            self._delay = delay
            excess = delay - target
            if head is None:
                if excess > hyst:
                    self._p += int(excess)
                    continue
                return self._fill(lim.grain_ms, advance=excess >= 0)
            gap = head.ts - self._p
            if gap > 0:
                if excess > hyst:
                    self._p += min(gap, int(excess))
                    continue
                return self._fill(min(gap, lim.max_packet_ms), advance=True)
            if excess <= lim.trim_above_ms:
                self._over_since = None
            elif self._over_since is None:
                self._over_since = start
            over_for = start - self._over_since if self._over_since is not None else 0.0
            # A drop must leave the delay nearer the target than it is: with 120 ms packets a
            # drop can overshoot below the target, which is still better than holding a whole
            # packet too much for the rest of the call (the buffer grows back in silence).
            after = delay - head.duration
            closer = after >= target - hyst or (target - after) < excess - hyst
            if delay > lim.cap_ms or (excess > hyst and closer and self._droppable(head, over_for)):
                self._drop()
                self._shrunk += 1
                continue
            if (excess < 0 and not self._played_any) or (excess < -hyst and head.silent):
                return self._fill(lim.grain_ms, advance=False)
            trim = 0
            if excess > lim.trim_above_ms:
                if head.silent:
                    trim = min(int(excess), head.duration * lim.trim_silent_pct // 100)
                elif over_for >= lim.trim_patience_ms and head.duration >= lim.trim_speech_from_ms:
                    trim = min(int(excess), head.duration * lim.trim_max_pct // 100)
            return self._play(head, trim)

    def _droppable(self, head: _Packet, over_for: float) -> bool:
        """Whether the head may go to bring the delay down: silence at once; speech after
        ``shrink_patience_ms`` over target, a quiet packet of it first."""
        lim = self._lim
        if head.silent or over_for >= lim.shrink_patience_ms + lim.quiet_wait_ms:
            return True
        return over_for >= lim.shrink_patience_ms and head.loud <= max(self._louds) - lim.quiet_drop_db

    def _drop(self) -> None:
        packet = self._buf.popleft()
        self._buffered_ms -= packet.duration
        if self._p is not None and packet.ts >= self._p:
            self._p = packet.ts + packet.duration

    def _play(self, head: _Packet, trim: int) -> Play:
        self._buf.popleft()
        self._buffered_ms -= head.duration
        self._p = self._played_end = head.ts + head.duration
        self._played_any = True
        self._gap_ms = 0
        self._played += 1
        self._played_ms += head.duration - trim
        self._trimmed_ms += trim
        return Play(head.payload, head.duration, trim)

    def _fill(self, want: int, *, advance: bool) -> Conceal | Silence:
        """Concealment right after real audio, silence before the first packet or after a
        long gap; ``advance`` gives the missing media time up, otherwise the delay grows."""
        lim = self._lim
        piece: Conceal | Silence
        if self._played_any and self._gap_ms < lim.long_gap_ms:
            n = min(want, lim.long_gap_ms - self._gap_ms)
            self._gap_ms += n
            self._concealed_ms += n
            piece = Conceal(n)
        else:
            piece = Silence(want)
        if advance and self._p is not None:
            self._p += piece.duration_ms
        return piece

    # --- meters ---------------------------------------------------------------------------

    def stats(self, *, reset: bool = True) -> JitterStats:
        """A snapshot; ``concealed_pm`` covers the time since the last resetting read (the
        feedback timer owns that interval; a UI meter reads with ``reset=False``)."""
        played = self._played_ms - self._mark_played_ms
        concealed = self._concealed_ms - self._mark_concealed_ms
        if reset:
            self._mark_played_ms, self._mark_concealed_ms = self._played_ms, self._concealed_ms
        return JitterStats(
            delay_ms=max(0, round(self._delay)),
            target_ms=round(self._aim()),
            jitter_ms=round(self._est.jitter),
            buffered_ms=self._buffered_ms,
            concealed_pm=_permille(concealed, played + concealed),
            concealed_pm_total=_permille(self._concealed_ms, self._played_ms + self._concealed_ms),
            stale_dropped=self._stale,
            shrink_dropped=self._shrunk,
            trimmed_ms=self._trimmed_ms,
            overflow_dropped=self._overflow,
            played=self._played,
            stalls=self._est.stalls,
        )


def _permille(part: int, whole: int) -> int:
    return round(1000 * part / whole) if whole else 0

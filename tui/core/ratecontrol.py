"""The voice sender's rate control: pick the Opus rung the link can carry, from queueing delay.

Over TCP a link that cannot keep up never loses a packet: it queues them, and mouth-to-ear
delay grows by the queue. So the signal is *delay*: the round trip of media frames (echoed in
receivers' feedback, minus their hold time) above the smallest round trip of the last 30 s,
plus the sender's own transport backlog. The output is a rung of a short ladder; thinner rungs
also use longer packets, because each packet carries ~60-80 bytes of IP/TCP/TLS/WebSocket.

Rules (thresholds in :class:`RateLimits`):

* **Down, quickly**, one rung: smoothed queueing delay over ``down_ms`` and not visibly
  draining; or over ``grow_ms`` and visibly growing; or transport backlog over one packet for
  ``backlog_s``; or no fresh feedback for ``feedback_timeout_s`` while sending. Then
  ``hold_down_s`` before the next step. Only frames sent at the current rung are evidence
  about it, so the queue built before a step does not cause a second one by itself.
* **Silence is one step, not a slide**: without news from the link (no fresh feedback since the
  last step down), backlog and timeouts do not step again. After a stall the queued frames
  come back with huge but shrinking delays: a draining queue, not a reason to go further down.
* **Up, slowly**, one rung: after ``up_wait_s`` of calm (smoothed delay under ``up_ms``) with
  fresh feedback and no backlog. A rung left again within ``probe_window_s`` doubles its wait
  (up to ``up_wait_max_s``), so a link that cannot carry it is probed rarely; a rung that held
  for ``probe_window_s`` gets its base wait back.
* **Jitter is not a queue**: with delay jitter, round trips minus their minimum are never near
  zero. Thresholds grow by ``noise_gain`` times the measured jitter (from second differences,
  which a steadily growing queue barely moves), capped at ``noise_cap_ms``.
* **One path per receiver** (its slot): base round trips differ per receiver, so each has its
  own minimum and level; any path can step down, all must be calm to step up.

Sans-I/O: inputs and ``poll(now)`` take the time; ``next_deadline()`` says when to poll again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

from medcomm.errors import UsageError

Bandwidth = Literal["nb", "mb", "wb", "swb", "fb"]
Application = Literal["voip", "audio"]


@dataclass(frozen=True, slots=True)
class Rung:
    """One encoder setting; the codec adapter maps it onto Opus controls.

    ``bandwidth`` is the widest audio band allowed: at the thin rung libopus narrows it by
    itself when the bits do not pay for wideband.
    """

    name: str
    bitrate_bps: int
    frame_ms: int
    bandwidth: Bandwidth = "wb"
    application: Application = "voip"

    def packet_bytes(self, overhead: int = 0) -> int:
        """Bytes of one packet on the wire with ``overhead`` header bytes per packet."""
        return self.bitrate_bps * self.frame_ms // 8000 + overhead

    def wire_bps(self, overhead: int) -> float:
        return self.packet_bytes(overhead) * 8000.0 / self.frame_ms


#: Thinnest to standard. Wire rates with 71 header bytes a packet (voice 5 + seal 8 +
#: WebSocket/TCP/IP 58; TLS adds ~20) before pure ACKs: thin 11.7 kbit/s, low 13.7, mid 19.1,
#: standard 24.4. Measured offline on the corpus speech (PESQ-WB / STOI, en / zh, libopus
#: 1.3.1, VBR, complexity 10, 120 ms): thin at 7 kbit/s 2.03 / 0.926 and 2.10 / 0.921, against
#: 1.80 / 0.888 at 6 (STOI under the 0.9 that keeps words apart on EDGE). 8 kbit/s would give
#: 2.25 / 0.951 and 2.41 / 0.949, but 12.7 kbit/s on the wire does not fit GPRS's 12 kbit/s
#: uplink, and the thinnest rung must: below it there is nothing to step down to. Below 9
#: kbit/s libopus codes narrowband whatever band is allowed. ``low`` and ``mid`` cap the band
#: at mediumband: at 9-12 kbit/s Opus spends its bits better there (9 kbit/s: mb 2.58 / 2.55
#: vs nb 2.36 / 2.58 vs wb 2.34 / 2.29). PESQ-WB 2.8 takes 10.5-11 kbit/s of mediumband (10:
#: 2.78 / 2.84, 11: 2.97 / 3.00), ~17 kbit/s on the wire at 120 ms. Packets of 100 ms are coded
#: as five 20 ms frames and score 0.1-0.3 lower than 80 or 120 ms (two 40 or 60 ms frames) at
#: the same rate, so no rung uses them. mid fits EDGE's 24 kbit/s uplink, standard needs 3G.
LADDER: tuple[Rung, ...] = (
    Rung("thin", 7000, 120),
    Rung("low", 9000, 120, "mb"),
    Rung("mid", 12000, 80, "mb"),
    Rung("standard", 15000, 60),  # 16 kbit/s measured 28.1-28.9 kbit/s on the wire, over 28
)

#: Heart and lung sounds: Opus AUDIO mode (VOIP mode high-passes at 60-100 Hz), fixed, outside
#: the speech ladder. Wideband because stethoscope content sits below 2 kHz: bits spent above
#: 8 kHz (fullband) would buy nothing a clinician listens for.
AUSCULTATION = Rung("auscultation", 28000, 60, "wb", "audio")

#: Profile name -> (rungs it may use, index of the starting rung). ``auto`` starts one below
#: standard: on a link of unknown capacity the first seconds of a call are the greeting, and
#: starting at standard would overflow an EDGE uplink (24 kbit/s) before the first feedback;
#: a good link reaches standard after one calm period (~3 s). A link whose round trip is
#: known to be short starts at standard (``RateLimits.fast_start_rtt_ms``).
PROFILES: dict[str, tuple[tuple[Rung, ...], int]] = {
    "auto": (LADDER, len(LADDER) - 2),
    "thin": ((LADDER[0],), 0),
    "standard": ((LADDER[-1],), 0),
    "auscultation": ((AUSCULTATION,), 0),
    # What a user would otherwise pick (a typical VoIP default), kept for the benchmark's
    # comparison: 20 ms packets, fixed rate; the engine also skips its sender-side drops.
    "naive": ((Rung("naive", 16000, 20),), 0),
}


@dataclass(frozen=True)
class RateLimits:
    """Thresholds and memory bounds of the rate controller, each with its reason."""

    down_ms: float = 120.0  # smoothed queueing delay that means "the link is not keeping up"
    grow_ms: float = 60.0  # a lower level that is enough when the queue is also growing
    grow_slope: float = 0.05  # s of queue per s sent (5 % overload) that counts as growing
    drain_slope: float = 0.02  # s per s shrinking: the queue drains, stepping down is not needed
    trend_window_s: float = 2.0  # recent samples (by arrival) in the growth/drain slope
    hold_down_s: float = 1.0  # after a step down, before the next one
    up_ms: float = 40.0  # smoothed queueing delay under which the link counts as calm
    up_wait_s: float = 3.0  # calm this long before one step up
    up_wait_max_s: float = 48.0  # the longest backed-off wait before probing a failed rung
    probe_window_s: float = 15.0  # a step down this soon after stepping up is a failed probe
    feedback_timeout_s: float = 1.5  # no fresh feedback this long while sending: congestion
    fresh_feedback_s: float = 1.0  # stepping up needs feedback at most this old
    initial_rtt_s: float = 1.0  # round trip assumed before any was measured (first feedback)
    # ``auto`` starts one rung below the top (see PROFILES) unless the link's round trip, known
    # before the call, is under this: then feedback comes back within about one report period
    # (0.5 s), so starting at the top costs at most that much queue if it is too much, and a
    # good link's first seconds are not spent in mediumband.
    fast_start_rtt_ms: float = 150.0
    backlog_s: float = 0.5  # transport backlog over one packet this long: congestion
    backlog_packets: float = 1.0  # "about one packet" of the current rung
    # bytes per packet beside Opus: voice header 5, seal 8, WebSocket 2-6, TLS 22, TCP 32, IP 20
    wire_overhead: int = 91
    smoothing: float = 0.5  # EWMA weight of a new queueing-delay sample (4 samples/s: ~0.5 s)
    noise_gain: float = 3.0  # threshold margin per unit of measured jitter
    noise_cap_ms: float = 250.0  # the most jitter may raise the thresholds
    noise_smoothing: float = 0.1  # EWMA weight of a jitter sample
    min_rtt_window_s: float = 30.0  # the base round trip is the minimum over this window
    min_rtt_buckets: int = 10  # the window kept as this many per-bucket minimums
    max_inflight: int = 512  # sent frames remembered for echoes (>= 20 s at 40 ms)
    max_age_s: float = 20.0  # sent frames older than this are forgotten (ts wraps at 65 s)
    max_samples: int = 64  # recent delay samples kept per receiver
    path_idle_s: float = 10.0  # a receiver silent this long is forgotten (left, or stalled out)


RATE = RateLimits()


@dataclass(frozen=True, slots=True)
class Change:
    """One decided rung change, kept for the UI and the benchmark's report."""

    at: float
    rung: str
    reason: str


@dataclass(frozen=True, slots=True)
class RateStats:
    """What the call meters show; delays are those of the worst receiver's path."""

    rung: str
    qdelay_ms: float | None  # smoothed queueing delay
    min_rtt_ms: float | None
    last_rtt_ms: float | None
    jitter_ms: float
    receivers: int  # paths with recent feedback
    inflight: int  # sent frames remembered for echoes
    changes: int
    downs: int
    ups: int
    recent: tuple[Change, ...]


@dataclass(slots=True)
class _Sample:
    arrived: float
    sent: float
    q: float  # raw queueing delay, s


class _WindowMin:
    """Minimum over a sliding time window in fixed memory: one minimum per bucket."""

    def __init__(self, window: float, buckets: int) -> None:
        self.width = window / buckets
        self.count = buckets
        self.buckets: deque[tuple[int, float]] = deque(maxlen=buckets + 1)

    def add(self, value: float, now: float) -> None:
        idx = int(now // self.width)
        if self.buckets and self.buckets[-1][0] == idx:
            self.buckets[-1] = (idx, min(self.buckets[-1][1], value))
        else:
            self.buckets.append((idx, value))

    def value(self, now: float) -> float | None:
        oldest = int(now // self.width) - self.count
        live = [v for idx, v in self.buckets if idx >= oldest]
        return min(live) if live else None


class _Path:
    """What one receiver's feedback says about the path to it (uplink, relay, its downlink).

    Paths are kept apart because their base round trips differ: mixing them would make the
    longer one look permanently queued.
    """

    def __init__(self, limits: RateLimits) -> None:
        self.lim = limits
        self.echo_sent: float | None = None  # send time of the newest frame it echoed
        self.last_fresh: float | None = None
        self.min_rtt = _WindowMin(limits.min_rtt_window_s, limits.min_rtt_buckets)
        self.samples: deque[_Sample] = deque(maxlen=limits.max_samples)
        self.last_rtt: float | None = None
        self.level: float | None = None
        # The jitter (EWMA of |second differences|) starts from 0, so for its first several
        # samples it is biased low. The congestion rules use it as it is: in a call's first
        # seconds they should react to a queue at once. The calm rule (stepping up) uses it
        # bias-corrected, as Adam corrects its moments: uncorrected, on a jittery 3G path the
        # calm threshold sat under the plain noise for seconds, and auto took 7-12 s to step up
        # from mediumband.
        self.jitter = 0.0
        self._jitter_n = 0  # samples in it
        self.calm_since: float | None = None
        self.rung_samples: list[_Sample] = []  # of frames sent at the current rung (recent)
        self.trend: tuple[float, int] | None = None

    def threshold(self, base_ms: float, jitter: float | None = None) -> float:
        lim = self.lim
        noise = self.jitter if jitter is None else jitter
        return (base_ms + min(lim.noise_gain * noise * 1000.0, lim.noise_cap_ms)) / 1000.0

    @property
    def jitter_unbiased(self) -> float:
        if self._jitter_n == 0:
            return 0.0
        return self.jitter / (1.0 - (1.0 - self.lim.noise_smoothing) ** self._jitter_n)

    def new_rung(self) -> None:
        self.calm_since = None
        self.rung_samples = []
        self.trend = None

    def add(self, sent: float, hold_ms: int, now: float, epoch: float) -> bool:
        """Take one report; False if it says nothing new (stale or repeated echo)."""
        lim = self.lim
        if self.echo_sent is not None and sent <= self.echo_sent:
            return False
        self.echo_sent = sent
        self.last_fresh = now
        rtt = max(0.0, now - sent - hold_ms / 1000.0)
        self.last_rtt = rtt
        self.min_rtt.add(rtt, now)
        base = self.min_rtt.value(now)
        q = max(0.0, rtt - (base if base is not None else rtt))
        band = (lim.down_ms + lim.noise_cap_ms) / 1000.0  # above this it is a queue, not jitter
        if len(self.samples) >= 2 and max(q, self.samples[-1].q, self.samples[-2].q) <= band:
            d2 = abs(q - 2 * self.samples[-1].q + self.samples[-2].q)
            # |second difference| of i.i.d. noise averages ~1.95 sigma (Gaussian)
            self.jitter += lim.noise_smoothing * (min(d2, lim.noise_cap_ms / 1000.0) / 1.95 - self.jitter)
            self._jitter_n += 1
        sample = _Sample(now, sent, q)
        self.samples.append(sample)
        self.level = q if self.level is None else self.level + lim.smoothing * (q - self.level)
        if sent >= epoch:
            horizon = now - lim.trend_window_s
            self.rung_samples = [s for s in self.rung_samples if s.arrived >= horizon][-lim.max_samples :]
            self.rung_samples.append(sample)
            self.trend = _slope(self.rung_samples)
        if sent >= epoch and self.level < self.threshold(lim.up_ms, self.jitter_unbiased):
            if self.calm_since is None:
                self.calm_since = now
        else:
            self.calm_since = None
        return True

    def down_reason(self, now: float) -> str | None:
        """Delay evidence about the current rung, if this path has recent evidence at all."""
        lim = self.lim
        rs = self.rung_samples
        if self.level is None or len(rs) < 2 or now - rs[-1].arrived > lim.fresh_feedback_s:
            return None  # silence is the timeout's business, not the delay rule's
        slope, n = self.trend if self.trend is not None else (0.0, 0)
        if self.level > self.threshold(lim.down_ms) and slope > -lim.drain_slope:
            return "delay"
        # Without jitter (measured over a few samples first), two samples make a trend and the
        # newest one is the level: a failed probe is caught ~0.5 s sooner, ~80 ms less queue at 12k.
        quiet = len(self.samples) >= 8 and lim.noise_gain * self.jitter * 1000.0 < lim.grow_ms / 2
        level = max(self.level, rs[-1].q) if quiet else self.level
        if level > self.threshold(lim.grow_ms) and n >= (2 if quiet else 3) and slope > lim.grow_slope:
            return "delay rising"
        return None

    def calm_ready(self, now: float) -> float | None:
        """Since when this path has been calm with fresh news of the current rung, or None."""
        if self.calm_since is None or len(self.rung_samples) < 2:
            return None
        if self.last_fresh is None or now - self.last_fresh > self.lim.fresh_feedback_s:
            return None  # never step up on old news
        return self.calm_since


def _slope(samples: list[_Sample]) -> tuple[float, int] | None:
    """Least-squares slope of queueing delay over send time (s/s), and the points it rests on."""
    if len(samples) < 2:
        return None
    mx = sum(s.sent for s in samples) / len(samples)
    my = sum(s.q for s in samples) / len(samples)
    sxx = sum((s.sent - mx) ** 2 for s in samples)
    if sxx <= 1e-9:
        return None
    return sum((s.sent - mx) * (s.q - my) for s in samples) / sxx, len(samples)


class RateControl:
    """Decides the sender's rung from feedback echoes and its transport backlog.

    Feed it ``on_sent`` for every media frame, ``on_feedback`` for every report about our
    stream (``source`` = the reporting receiver's slot, so a 3-way call adapts to the worse
    path), ``on_backlog`` whenever the transport's buffered amount is read; call ``poll`` after
    inputs and at ``next_deadline()``, and re-configure the encoder when it returns a rung.
    """

    def __init__(self, profile: str = "auto", limits: RateLimits = RATE, rtt_ms: float | None = None) -> None:
        if profile not in PROFILES:
            raise UsageError(
                f"unknown voice profile {profile!r} (choose from {', '.join(PROFILES)})", profile=profile
            )
        self.profile = profile
        self.limits = limits
        self.ladder, self._i = PROFILES[profile]
        self.adaptive = len(self.ladder) > 1
        if self.adaptive and rtt_ms is not None and 0 <= rtt_ms < limits.fast_start_rtt_ms:
            self._i = len(self.ladder) - 1
        self._sent: OrderedDict[int, float] = OrderedDict()  # ts & 0xFFFF -> send time
        self._last_sent: float | None = None
        self._sending_since: float | None = None
        self._paths: dict[int, _Path] = {}
        self._epoch = float("-inf")  # when the current rung started
        self._last_down = float("-inf")
        self._last_up: tuple[float, int] | None = None  # (when, rung index stepped into)
        self._up_wait = [limits.up_wait_s] * len(self.ladder)
        self._backlog = 0
        self._backlog_since: float | None = None
        self._now = float("-inf")
        self._log: deque[Change] = deque(maxlen=16)
        self._changes = self._downs = self._ups = 0

    @property
    def rung(self) -> Rung:
        return self.ladder[self._i]

    # --- inputs ---------------------------------------------------------------------------

    def on_sent(self, ts_ms: int, now: float) -> None:
        """A media frame with this ts was handed to the transport now."""
        self._tick(now)
        lim = self.limits
        if self._last_sent is None or now - self._last_sent > lim.feedback_timeout_s:
            self._sending_since = now  # after a pause nobody owed us feedback until now
        key = ts_ms & 0xFFFF
        self._sent.pop(key, None)
        self._sent[key] = now
        horizon = now - lim.max_age_s
        while len(self._sent) > max(1, lim.max_inflight) or next(iter(self._sent.values())) < horizon:
            self._sent.popitem(last=False)
        self._last_sent = now

    def on_feedback(self, echo_ts: int, hold_ms: int, now: float, source: int = 0) -> None:
        """A report from receiver ``source``: the newest ts it got from us, and its hold time."""
        self._tick(now)
        sent = self._sent.get(echo_ts & 0xFFFF)
        if sent is None:
            return  # forgotten or never ours: says nothing about the forward path
        path = self._paths.get(source)
        if path is None:
            if len(self._paths) >= 16:  # slots are 0..15: more is a bug upstream, not a call
                return
            path = self._paths[source] = _Path(self.limits)
        path.add(sent, max(0, hold_ms), now, self._epoch)

    def on_backlog(self, bytes_buffered: int, now: float) -> None:
        """The sender's own transport buffer: bytes handed over but not yet in the socket."""
        self._tick(now)
        self._backlog = bytes_buffered
        over = bytes_buffered > self._backlog_limit()
        self._backlog_since = (now if self._backlog_since is None else self._backlog_since) if over else None

    # --- decisions ------------------------------------------------------------------------

    def poll(self, now: float) -> Rung | None:
        """Apply the rules at ``now``; the new rung if it changed, else None."""
        self._tick(now)
        if not self.adaptive:
            return None
        self._expire(now)
        down = self._down_reason(now)
        if down is not None:
            if self._i > 0 and now - self._last_down >= self.limits.hold_down_s:
                return self._step(-1, down, now)
            return None
        calm = self._calm_since(now)
        if calm is not None and self._i < len(self.ladder) - 1 and self._backlog <= self._backlog_limit():
            if now - calm >= self._up_wait[self._i + 1]:
                return self._step(+1, "calm", now)
        return None

    def next_deadline(self) -> float | None:
        """The next time poll() may decide something without new input (None: needs input)."""
        if not self.adaptive:
            return None
        lim, now = self.limits, self._now
        hold_end = self._last_down + lim.hold_down_s
        times: list[float] = []
        if self._i > 0:
            due = self._feedback_due()
            if due is not None:
                times.append(max(due, hold_end))
            if self._backlog_since is not None and self._news():
                times.append(max(max(self._backlog_since, self._epoch) + lim.backlog_s, hold_end))
            if self._down_reason(now) is not None:
                times.append(hold_end)
        calm = self._calm_since(now)
        if calm is not None and self._i < len(self.ladder) - 1:
            times.append(calm + self._up_wait[self._i + 1])
        future = [t for t in times if t > now]
        return min(future) if future else None

    def stats(self) -> RateStats:
        paths = list(self._paths.values())
        worst = max(paths, key=lambda p: p.level or 0.0, default=None)
        base = worst.min_rtt.value(self._now) if worst is not None else None
        return RateStats(
            rung=self.rung.name,
            qdelay_ms=None if worst is None or worst.level is None else worst.level * 1000.0,
            min_rtt_ms=None if base is None else base * 1000.0,
            last_rtt_ms=None if worst is None or worst.last_rtt is None else worst.last_rtt * 1000.0,
            jitter_ms=0.0 if worst is None else worst.jitter_unbiased * 1000.0,
            receivers=len(paths),
            inflight=len(self._sent),
            changes=self._changes,
            downs=self._downs,
            ups=self._ups,
            recent=tuple(self._log),
        )

    # --- internals ------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._now = max(self._now, now)

    def _expire(self, now: float) -> None:
        """Forget receivers that stopped reporting (left the call, or a stall outlasted them)."""
        horizon = now - self.limits.path_idle_s
        for source in [
            k for k, p in self._paths.items() if p.last_fresh is not None and p.last_fresh < horizon
        ]:
            del self._paths[source]

    def _backlog_limit(self) -> float:
        return self.limits.backlog_packets * self.rung.packet_bytes(self.limits.wire_overhead)

    def _last_fresh(self) -> float | None:
        return max((p.last_fresh for p in self._paths.values() if p.last_fresh is not None), default=None)

    def _news(self) -> bool:
        """Heard from the link since the last step down (or never stepped down).

        Backlog and silence say "the link is not moving", not how much it can carry: one step
        is the precaution; stepping further without news would slide to the thinnest rung
        during every stall.
        """
        if self._last_down == float("-inf"):
            return True
        fresh = self._last_fresh()
        return fresh is not None and fresh > self._last_down

    def _feedback_due(self) -> float | None:
        """When missing feedback becomes congestion: None while not sending or without news."""
        lim = self.limits
        if not self._news() or self._last_sent is None or self._sending_since is None:
            return None
        if self._now - self._last_sent > lim.feedback_timeout_s:
            return None  # not sending (silence, hold): nobody owes us feedback
        bases = [b for p in self._paths.values() if (b := p.min_rtt.value(self._now)) is not None]
        rtt = min(bases) if bases else lim.initial_rtt_s
        due = self._sending_since + rtt + lim.feedback_timeout_s
        fresh = self._last_fresh()
        return due if fresh is None else max(due, fresh + lim.feedback_timeout_s)

    def _down_reason(self, now: float) -> str | None:
        lim = self.limits
        if self._backlog_since is not None and self._news():
            if now - max(self._backlog_since, self._epoch) >= lim.backlog_s:
                return "backlog"
        due = self._feedback_due()
        if due is not None and now >= due:
            return "no feedback"
        for path in self._paths.values():
            reason = path.down_reason(now)
            if reason is not None:
                return reason
        return None

    def _calm_since(self, now: float) -> float | None:
        """Since when every receiver has been calm with fresh news (None: not all are)."""
        if not self._paths:
            return None
        since = [path.calm_ready(now) for path in self._paths.values()]
        if any(s is None for s in since):
            return None
        return max(s for s in since if s is not None)

    def _step(self, direction: int, reason: str, now: float) -> Rung:
        lim = self.limits
        if self._last_up is not None:
            when, into = self._last_up
            if now - when >= lim.probe_window_s:
                self._up_wait[into] = lim.up_wait_s  # the probe held: the rung fits again
            elif direction < 0 and into == self._i and reason != "no feedback":
                self._up_wait[into] = min(self._up_wait[into] * 2, lim.up_wait_max_s)
            self._last_up = None
        self._i += direction
        self._epoch = now
        for path in self._paths.values():
            path.new_rung()
        if direction < 0:
            self._last_down = now
            self._downs += 1
        else:
            self._last_up = (now, self._i)
            self._ups += 1
        self._changes += 1
        self._log.append(Change(now, self.rung.name, reason))
        return self.rung

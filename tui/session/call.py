"""A live call on the session's one connection: signalling, and the media engine between the
sound edge (a device or a WAV file, in real time) and the link. Sending: every packet length
of audio the source holds is encoded at the rung the rate control chose and written *now*,
ahead of anything our own code has queued; when more than a packet is still unsent in the
transport, the packet is dropped instead (stale audio is worth nothing, and the rate control
steps down). Receiving: each stream (slot) has its own jitter buffer and decoder; the playout
keeps one output block in the sink (a block more each time the speaker runs dry, up to
``playout_blocks_max``) and mixes the streams 20 ms at a time. Every 500 ms each stream heard
gets a feedback report (echoed timestamp, hold time, jitter-buffer delay, concealment) that
its sender's rate control reads; it waits (up to ``feedback_hold``) for our next voice packet
and rides in its TCP segment, its hold time counted up to when it leaves, so the wait does not
read as delay. A dropped connection does not end the call: when the link is back the engine
answers again and keeps its slot.

Every media frame is sealed end to end (``core.voicecrypt``): when this device starts
streaming in a call (the caller as soon as the relay has given the call an id, while it
rings; the answerer once it has answered; anyone joining the same call again, in a new
``run_call``) it makes a fresh key for its stream and gives it to the consult's members in a
sealed ``callkey`` message (``CallKeys.announce``). A frame from slot S is opened with the key
of the member the call's ``CallState.slots`` puts in S, as the local store holds it; when a
new key takes over a slot, a new stream (its clock starting again) gets a new jitter buffer
and decoder. Frames whose sender's key has not arrived yet are dropped ("no key"),
as are frames that fail authentication; the status line says so while it happens. Answering
again after a reconnect inside one engine keeps the key: the stream and its clock go on, and a
``callkey`` message that had not left yet is still in the durable outbox.

The timing decisions live in the sans-I/O cores (``core.jitter``, ``core.ratecontrol``);
this module only drives them with the clock, the link and the sound edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from medcomm.core import timescale, voiceframe, wire
from medcomm.core.ackphase import AckPhase
from medcomm.core.jitter import Conceal, JitterBuffer, JitterLimits, JitterStats, Play, for_round_trip
from medcomm.core.ratecontrol import RateControl
from medcomm.core.voicecrypt import OVERHEAD, CallCrypto
from medcomm.errors import LinkDown, MedcommError, Tampered, UsageError, WireError
from medcomm.session.link import Link, LinkStatus

if TYPE_CHECKING:
    import numpy as np

    from medcomm.adapters.opus import Encoded
    from medcomm.session.service import Session

log = logging.getLogger("medcomm.call")

RATE = 48_000
BLOCK = 960  # 20 ms: the playout and mixing grain


@dataclass(frozen=True)
class CallLimits:
    """Paces of the engine; each is a trade between delay and work per second."""

    tick: float = 0.005  # s between looks at the source and the sink
    # 20 ms blocks kept queued in the sink. Every ms queued is mouth-to-ear delay (the jitter
    # buffer must decide that much earlier), so the queue starts at one block and grows by
    # one each time the speaker runs dry (an event loop held up for more than a block's
    # slack, e.g. by a redraw), up to the most.
    playout_blocks: int = 1
    playout_blocks_max: int = 3
    feedback_every: float = 0.5  # s between feedback reports per stream heard (each ~65 B on the wire)
    # s a report may wait for our next voice packet to ride with it instead of costing a 52-byte
    # segment of its own: a packet (at most 120 ms) and a tick; a silent or muted side sends alone
    feedback_hold: float = 0.15
    backlog_packets: float = 1.0  # unsent transport bytes (in packets) above which voice is dropped
    ring_timeout: float = 60.0  # s to wait for an answer
    answer_wait: float = 120.0  # s `--answer` waits for a call to ring
    request_timeout: float = 20.0
    stall_after: float = 1.0  # s (plus two base round trips) without feedback: the link stalled
    probe_every: float = 0.5  # s between packets sent while stalled (to learn it is back)

    def __post_init__(self) -> None:
        if not 1 <= self.playout_blocks <= self.playout_blocks_max:
            raise UsageError("playout_blocks must be 1..playout_blocks_max")
        if self.stall_after <= self.feedback_every + self.feedback_hold:
            raise UsageError("stall_after must exceed feedback_every + feedback_hold: that gap is normal")


@dataclass
class CallStats:
    """What the status line shows, refreshed at most once a second."""

    state: str = "starting"
    seconds: float = 0.0
    up_kbps: float = 0.0  # voice bytes written, incl. our 5-byte header and WebSocket framing
    down_kbps: float = 0.0
    rtt_ms: float | None = None
    jitter_ms: int = 0  # jitter-buffer delay (worst stream)
    concealed_pct: float = 0.0
    rung: str = ""
    dropped: int = 0  # our packets dropped before the wire (link behind or down)
    muted: bool = False
    slots: dict[str, int] = field(default_factory=dict)
    no_key: int = 0  # far-end frames dropped because their sender's key is not here (yet)
    no_key_now: int = 0  # ... of them in the last second: the line says so only while it lasts
    failed_auth: int = 0  # far-end frames dropped as tampered, cut short or replayed

    def line(self) -> str:
        rtt = f"{self.rtt_ms:.0f} ms" if self.rtt_ms is not None else "-"
        mute = " · muted" if self.muted else ""
        keys = f" · waiting for a key: {self.no_key_now} dropped" if self.no_key_now else ""
        auth = f" · {self.failed_auth} failed authentication" if self.failed_auth else ""
        return (
            f"{self.state} {int(self.seconds) // 60}:{int(self.seconds) % 60:02d} · "
            f"up {self.up_kbps:.1f} kbit/s · down {self.down_kbps:.1f} kbit/s · rtt {rtt} · "
            f"buffer {self.jitter_ms} ms · concealed {self.concealed_pct:.1f}% · {self.rung}"
            f"{mute}{keys}{auth}"
        )


@dataclass
class _Stream:
    """One far-end speaker as heard here."""

    jitter: JitterBuffer
    decoder: Any
    key_stream: int = 0  # the crypto's stream number (a new key: a new stream, its clock from 0)
    pcm: Any = None  # decoded samples not yet mixed (numpy, made on first use)
    last_ts16: int | None = None
    last_arrival: float = 0.0
    reported: float = 0.0
    stats: JitterStats | None = None


@dataclass
class _RungCost:
    """What this device's stream cost at one rung: the benchmark's measure of the seal."""

    frames: int = 0
    opus_bytes: int = 0
    frame_bytes: int = 0  # voice frames as handed to the link: header, sealed packet and tag
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"frames": self.frames, "opus_bytes": self.opus_bytes, "frame_bytes": self.frame_bytes,
                "tag_bytes": self.frames * OVERHEAD, "seconds": round(self.seconds, 2)}


class CallEngine:
    """Media for one call. ``run`` returns when ``stop`` is set or the source ends.

    ``crypto`` seals what this device sends and opens what the others send; there is no
    plaintext mode."""

    def __init__(
        self,
        link: Link,
        source: Any,
        sink: Any,
        profile: str = "auto",
        limits: CallLimits = CallLimits(),
        *,
        crypto: CallCrypto,
    ) -> None:
        import numpy

        from medcomm.adapters import opus

        self._np = numpy  # imported here: the desk makes DeskCalls at start, numpy only for a call
        self.link, self.source, self.sink, self.limits = link, source, sink, limits
        self.crypto = crypto
        self._costs: dict[str, _RungCost] = {}
        self._no_key_seen = 0
        self.rate = RateControl(profile)
        rung = self.rate.rung
        self._opus = opus
        self.encoder = opus.Encoder(
            rung.application, rung.bitrate_bps, rung.frame_ms, rung.bandwidth, dtx=rung.application == "voip"
        )
        self.streams: dict[int, _Stream] = {}
        # the start-up target from the link's round trip (core.jitter.for_round_trip)
        rtt = link.status.rtt
        self._jitter_limits = for_round_trip(JitterLimits(), None if rtt is None else rtt * 1000)
        self._reports_due: dict[int, float] = {}  # slot -> when its feedback report fell due
        self.muted = False
        self.stats = CallStats(rung=rung.name)
        self._seq = 0
        self._ts = 0  # our media clock, ms since the stream began (runs through DTX and mute)
        self._bytes_up = self._bytes_down = 0
        self._bad_frames = 0
        self._playout_blocks = self.limits.playout_blocks
        self._underruns_seen = 0
        self.phase = AckPhase()  # when to move our packet clock so the kernel's ACKs ride on voice
        self._clock_moves: list[tuple[float, int, float]] = []  # (s into the call, ms earlier, phase)
        self._talking = False  # our side, as the encoder judged the last packet
        self._min_rtt_ms: float | None = None  # the media round trip, refreshed once a second
        self._started = time.monotonic()
        self.streams_feedback = False  # a receiver has reported: its silence now means a stall
        self._unechoed_since: float | None = None  # first packet sent since the last feedback
        self._last_probe = 0.0
        self.source_started = self.sink_started = 0.0  # wall clock: the benchmark aligns WAVs with them
        self.history: list[dict[str, object]] = []  # one entry per second, for --report

    # --- receive (called from the link's reader) --------------------------------------------

    def on_voice(self, data: bytes) -> None:
        now = time.monotonic()
        self._bytes_down += len(data)
        try:
            frame = voiceframe.parse(data)
            if isinstance(frame, voiceframe.Feedback):
                self.rate.on_feedback(frame.echo_ts, frame.hold_ms, now, source=frame.slot)
                self.streams_feedback = True
                self._unechoed_since = None
                return
            try:
                opened = self.crypto.open(frame, now)
            except Tampered:
                return  # counted by the crypto: it fails authentication, so it is not a peer's
            if opened is None:
                return  # the sender's key has not arrived yet: counted, never played
            ts, packet = opened
            duration = self._opus.packet_duration_ms(packet)  # a bad packet opens no stream
            stream = self.streams.get(frame.slot)
            key_stream = self.crypto.stream_of(frame.slot)
            if stream is None or stream.key_stream != key_stream:
                stream = _Stream(JitterBuffer(self._jitter_limits), self._opus.Decoder(), key_stream)
                self.streams[frame.slot] = stream
            stream.jitter.push(ts, duration, packet, frame.level, now)
            stream.last_ts16, stream.last_arrival = frame.ts, now
            self.phase.arrived(frame.slot, now)
        except (WireError, MedcommError, ValueError):
            self._bad_frames += 1  # a malformed frame from a peer never harms the call

    # --- the loops --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_stats: Callable[[CallStats], None] | None = None) -> None:
        next_stats = time.monotonic() + 1.0
        last_up = last_down = 0
        started_sink = False
        try:
            self.link.voice_listener = self.on_voice
            self.link.bulk_allowed.clear()  # image and note chunks wait: voice first
            self.source.start()
            self.source_started = time.time()
            self.sink.start()
            started_sink = True
            self.sink_started = time.time()
            self.stats.state = "in call"
            while not stop.is_set():
                now = time.monotonic()
                self._send_ready(now)
                self._play(now)
                self._feedback(now)
                self._adapt(now)
                if now >= next_stats:
                    span = 1.0 + (now - next_stats)
                    self._cost(self.rate.rung.name).seconds += span
                    self._refresh_stats(now, (self._bytes_up - last_up) * 8 / span / 1000,
                                        (self._bytes_down - last_down) * 8 / span / 1000)
                    last_up, last_down, next_stats = self._bytes_up, self._bytes_down, now + 1.0
                    self.history.append({"t": round(time.time(), 3), **self._snapshot()})
                    if on_stats is not None:
                        on_stats(self.stats)
                if self.source.ended and self.source.buffered < self.encoder.frame_samples:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.limits.tick):  # no task per tick (100 a second)
                        await stop.wait()
        finally:
            self.link.voice_listener = None
            self.link.bulk_allowed.set()
            self.source.stop()
            if started_sink:
                await self._drain_sink()
                self.sink.stop()

    def _send_ready(self, now: float) -> None:
        while True:
            frame_ms = self.encoder.frame_ms
            # now and then a packet carries less audio, so that the kernel's ACKs for the
            # peer's packets ride on ours (core.ackphase)
            take_ms = frame_ms - self.phase.shift_ms(frame_ms, now, pause=not self._talking,
                                                     rtt_ms=self._min_rtt_ms)
            pcm = self.source.read(take_ms * (RATE // 1000))
            if pcm is None:
                return
            ts, self._ts = self._ts, self._ts + take_ms
            if take_ms != frame_ms:
                self.phase.shifted(now)
                self._clock_moves.append((round(now - self._started, 2), frame_ms - take_ms,
                                          round(self.phase.judged_ms, 1)))
                log.info("voice clock moved %d ms earlier (ACK phase)", frame_ms - take_ms)
            if self.muted:
                continue
            enc = self._encode(pcm, take_ms, frame_ms)
            if not enc.packet:
                continue  # DTX: nothing worth 60+ bytes of headers
            level = voiceframe.level_byte(enc.level_dbov, enc.talking)
            data = self.crypto.seal(self._seq, ts, level, enc.packet)
            self._seq += 1
            naive = self.rate.profile == "naive"
            if not naive and self._stalled(now):
                self.stats.dropped += 1  # the link has gone quiet: do not fill it with stale audio
                continue
            backlog_limit = int(self.rate.rung.packet_bytes(60 + OVERHEAD) * self.limits.backlog_packets)
            if naive:
                backlog_limit = 1 << 30  # the comparison queues everything, as plain VoIP over TCP does
            riders = self._reports(now)
            backlog = self.link.send_voice(data, backlog_limit, *riders)
            if backlog is None:
                self.stats.dropped += 1
                self.rate.on_backlog(backlog_limit + len(data), now)
                continue
            self._reports_due.clear()
            self._bytes_up += len(data) + 2 + sum(len(r) + 2 for r in riders)
            cost = self._cost(self.rate.rung.name)
            cost.frames, cost.opus_bytes, cost.frame_bytes = (
                cost.frames + 1, cost.opus_bytes + len(enc.packet), cost.frame_bytes + len(data)
            )
            self.rate.on_sent(ts, now)
            self.rate.on_backlog(backlog, now)
            self.phase.sent(take_ms, now)
            if self._unechoed_since is None:
                self._unechoed_since = now
            self._last_probe = now

    def _encode(self, pcm: np.ndarray, take_ms: int, frame_ms: int) -> Encoded:
        """Encode one packet: of the rung's length, or once shorter, to move our clock."""
        if take_ms != frame_ms:
            self.encoder.reconfigure(frame_ms=take_ms)
        try:
            enc = self.encoder.encode(pcm)
        finally:
            if take_ms != frame_ms:
                self.encoder.reconfigure(frame_ms=frame_ms)
        self._talking = enc.talking
        return enc

    def _cost(self, rung: str) -> _RungCost:
        cost = self._costs.get(rung)
        if cost is None:
            cost = self._costs[rung] = _RungCost()
        return cost

    def _stalled(self, now: float) -> bool:
        """True while what we sent long ago is still not echoed: the link (or the far end)
        has stalled. Over TCP everything sent now would queue behind the stall and arrive
        late, so only one probe packet goes every ``probe_every`` until feedback returns."""
        if self._unechoed_since is None or not self.streams_feedback:
            return False
        rtt = self.rate.stats().min_rtt_ms or 0.0
        waited = now - self._unechoed_since
        if waited <= self.limits.stall_after + 2 * rtt / 1000:
            return False
        return now - self._last_probe < self.limits.probe_every
    def _adapt(self, now: float) -> None:
        deadline = self.rate.next_deadline()
        if deadline is not None and deadline > now:
            return
        rung = self.rate.poll(now)
        if rung is not None:
            self.encoder.reconfigure(rung.bitrate_bps, rung.frame_ms, rung.bandwidth)
            self.stats.rung = rung.name
            log.info("voice rung %s (%d bit/s, %d ms)", rung.name, rung.bitrate_bps, rung.frame_ms)

    def _play(self, now: float) -> None:
        underruns = self.sink.underruns
        if underruns > self._underruns_seen:
            self._underruns_seen = underruns
            if self._playout_blocks < self.limits.playout_blocks_max:
                self._playout_blocks += 1
                log.info("speaker ran dry: %d blocks now queued for it", self._playout_blocks)
        want = self._playout_blocks * BLOCK
        while self.sink.buffered < want:
            np = self._np
            mix = np.zeros(BLOCK, np.int32)
            for stream in self.streams.values():
                if stream.pcm is None:
                    stream.pcm = np.zeros(0, np.int16)
                while stream.pcm.size < BLOCK:
                    stream.pcm = np.concatenate([stream.pcm, self._piece(stream, now)])
                mix += stream.pcm[:BLOCK]
                stream.pcm = stream.pcm[BLOCK:]
            self.sink.write(np.clip(mix, -32768, 32767).astype(np.int16))

    def _piece(self, stream: _Stream, now: float) -> np.ndarray:
        piece = stream.jitter.pull(now)
        try:
            if isinstance(piece, Play):
                pcm = stream.decoder.decode(piece.payload)
                if not piece.trim_ms:
                    return pcm
                # speech is cut at whole pitch periods, so as little as half the ask may go
                want = piece.trim_ms * (RATE // 1000)
                out = timescale.shorten(pcm, want, least=want // 2)
                stream.jitter.trimmed_less((want - (len(pcm) - len(out))) / (RATE // 1000))
                return out
            if isinstance(piece, Conceal):
                return stream.decoder.conceal(piece.duration_ms)
        except (WireError, MedcommError):
            self._bad_frames += 1
            return stream.decoder.conceal(piece.played_ms)
        return self._np.zeros(piece.duration_ms * (RATE // 1000), self._np.int16)

    def _feedback(self, now: float) -> None:
        """Decide which streams are due a report; send them alone only once they have waited
        ``feedback_hold`` for a voice packet of ours to ride with."""
        for slot, stream in self.streams.items():
            if slot in self._reports_due or stream.last_ts16 is None:
                continue
            if now - stream.reported < self.limits.feedback_every or now - stream.last_arrival > 5.0:
                continue  # reported lately, or nothing heard lately: no news to report
            stream.reported = now
            stream.stats = stream.jitter.stats(reset=True)
            self._reports_due[slot] = now
        if not any(now - due >= self.limits.feedback_hold for due in self._reports_due.values()):
            return
        reports = self._reports(now)
        if not reports or self.link.send_voice(reports[0], 64 * 1024, *reports[1:]) is not None:
            self._reports_due.clear()
            self._bytes_up += sum(len(r) + 2 for r in reports)

    def _reports(self, now: float) -> list[bytes]:
        """The due feedback reports, packed now: the echo names the newest frame heard and the
        hold time runs up to this moment, so the sender's round trip leaves the wait out."""
        out = []
        for slot in self._reports_due:
            stream = self.streams.get(slot)
            if stream is None or stream.last_ts16 is None or stream.stats is None:
                continue
            st = stream.stats
            report = voiceframe.Feedback.report(
                slot, stream.last_ts16, (now - stream.last_arrival) * 1000, st.delay_ms, st.concealed_pm
            )
            out.append(report.pack())
        return out

    def _refresh_stats(self, now: float, up: float, down: float) -> None:
        s = self.stats
        s.seconds = now - self._started
        s.up_kbps, s.down_kbps = round(up, 1), round(down, 1)
        rs = self.rate.stats()
        self._min_rtt_ms = rs.min_rtt_ms
        rtt = rs.last_rtt_ms
        s.rtt_ms = rtt if rtt is not None else (self.link.status.rtt or 0) * 1000 or None
        heard = [st.stats for st in self.streams.values() if st.stats is not None]
        s.jitter_ms = max((h.delay_ms for h in heard), default=0)
        s.concealed_pct = round(max((h.concealed_pm_total for h in heard), default=0) / 10, 1)
        s.muted = self.muted
        cs = self.crypto.stats
        s.no_key, s.no_key_now, s.failed_auth = cs.no_key, cs.no_key - self._no_key_seen, cs.failed_auth
        self._no_key_seen = cs.no_key

    def _snapshot(self) -> dict[str, object]:
        s = self.stats
        per_stream = {
            str(slot): {"delay_ms": st.stats.delay_ms, "target_ms": st.stats.target_ms,
                        "stale": st.stats.stale_dropped, "shrunk": st.stats.shrink_dropped,
                        "trimmed_ms": st.stats.trimmed_ms}
            for slot, st in self.streams.items() if st.stats is not None
        }
        rs = self.rate.stats()
        return {
            "qdelay_ms": rs.qdelay_ms, "up_kbps": s.up_kbps, "down_kbps": s.down_kbps, "rtt_ms": s.rtt_ms,
            "jb_ms": s.jitter_ms, "concealed_pct": s.concealed_pct, "rung": s.rung, "dropped": s.dropped,
            "no_key": self.crypto.stats.no_key, "failed_auth": self.crypto.stats.failed_auth,
            "streams": per_stream,
        }

    def report(self) -> dict[str, object]:
        """Everything the benchmark needs to align and judge a call (no audio content)."""
        crypto: dict[str, object] = {"overhead": OVERHEAD, **self.crypto.stats.as_dict(),
                                     "rungs": {r: c.as_dict() for r, c in self._costs.items() if c.frames}}
        return {"source_started": self.source_started, "sink_started": self.sink_started,
                "bad_frames": self._bad_frames, "underruns": self.sink.underruns,
                "playout_ms": self._playout_blocks * BLOCK // (RATE // 1000),
                "clock_moves": self._clock_moves,
                "seconds": self.history, "final": self._snapshot(),
                "crypto": crypto,
                "rate_changes": [{"at": c.at, "rung": c.rung, "reason": c.reason}
                                 for c in self.rate.stats().recent]}

    async def _drain_sink(self) -> None:
        """Let what is queued for the speaker play out (bounded): the far end's last words."""
        deadline = time.monotonic() + 0.5
        while self.sink.buffered > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


# --- signalling -------------------------------------------------------------------------------


class CallSignals:
    """The call's control plane over the link's requests and CallState events."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.states: asyncio.Queue[wire.CallState] = asyncio.Queue(maxsize=256)
        self.current: wire.CallState | None = None
        self.online = asyncio.Event()
        link.listeners.append(self._on_event)

    def close(self) -> None:
        if self._on_event in self.link.listeners:
            self.link.listeners.remove(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, wire.CallState):
            if self.states.full():
                self.states.get_nowait()
            self.states.put_nowait(event)
        elif isinstance(event, LinkStatus):
            if event.state == "online":
                self.online.set()
            else:
                self.online.clear()

    async def request(self, op: str, args: dict[str, object], timeout: float) -> dict[str, Any]:
        result = await self.link.request(op, args, timeout)
        if not isinstance(result, dict):
            raise UsageError(f"unexpected answer to {op}")
        return result

    async def next_state(
        self, match: Callable[[wire.CallState], bool], timeout: float, stop: asyncio.Event | None = None
    ) -> wire.CallState | None:
        """The next matching call state; None if ``stop`` is set first (hung up while ringing)."""
        deadline = time.monotonic() + timeout
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LinkDown("no answer to the call in time")
                getter = asyncio.ensure_future(self.states.get())
                waits = {getter} | ({stopper} if stopper is not None else set())
                done, _ = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if stopper is not None and stopper in done:
                        return None
                    raise LinkDown("no answer to the call in time")
                state = getter.result()
                if match(state):
                    return state
        finally:
            if stopper is not None:
                stopper.cancel()


class CallKeys(Protocol):
    """Where a call's stream keys come from and go to (the session's end-to-end layer)."""

    async def announce(self, consult: str, call: str) -> bytes:
        """A fresh key for this device's stream in ``call``, given to the consult's members."""
        ...

    def lookup(self, consult: str, call: str, member: str) -> bytes | None:
        """The newest key of ``member``'s stream in ``call`` held here; None until it arrives."""
        ...


class SessionCallKeys:
    """``CallKeys`` over a ``Session``: ``callkey`` messages on the reliable path, keys kept in
    the local store's key ring as they arrive."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def announce(self, consult: str, call: str) -> bytes:
        from medcomm.session.e2ekeys import announce_call_key

        if self.session.store.keyring is None:
            raise UsageError("calls are end-to-end encrypted, and this device has no keys: log in again")
        return await announce_call_key(self.session, consult, call)

    def lookup(self, consult: str, call: str, member: str) -> bytes | None:
        ring = self.session.store.keyring
        return None if ring is None else ring.call_key(consult, call, member)


def _slots(value: object) -> dict[str, int]:
    """A slots map from a relay answer, keeping only well-formed entries."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and type(v) is int}


async def _stream_crypto(
    link: Link, keys: CallKeys, consult: str, call_id: str, slots: dict[str, int], limits: CallLimits
) -> tuple[CallCrypto, Callable[[object], None]]:
    """This device's new stream key, announced, and the crypto that follows who is in which
    slot (the listener it returns is the caller's to remove)."""
    try:
        own = await asyncio.wait_for(keys.announce(consult, call_id), limits.request_timeout)
    except TimeoutError:
        raise LinkDown("the call's key could not be queued in time") from None
    crypto = CallCrypto(own, lambda member: keys.lookup(consult, call_id, member))
    live = link.call_states.get(consult)
    if not slots and live is not None and live.call == call_id:
        slots = live.slots  # the relay's answer said nothing of who is in: its last word then
    crypto.set_members(slots)

    def follow(event: object) -> None:
        if isinstance(event, wire.CallState) and event.call == call_id and event.state != "ended":
            crypto.set_members(event.slots)

    link.listeners.append(follow)
    return crypto, follow


@dataclass
class CallOutcome:
    call: str = ""
    outcome: str = ""  # completed | declined | missed | cancelled | hung up
    seconds: float = 0.0
    stats: CallStats | None = None
    report: dict[str, object] = field(default_factory=dict)


async def run_call(
    link: Link,
    me: str,
    consult: str,
    source: Any,
    sink: Any,
    *,
    keys: CallKeys,
    profile: str = "auto",
    seconds: float | None = None,
    answer: bool = False,
    stop: asyncio.Event | None = None,
    on_status: Callable[[str], None] = lambda _line: None,
    limits: CallLimits = CallLimits(),
    engine_hook: Callable[[CallEngine], None] | None = None,
    call_id: str = "",
) -> CallOutcome:
    """Place (or, with ``answer``, wait for and answer) a call in ``consult`` and carry it
    until ``stop`` is set, ``seconds`` pass, the source ends or the others hang up. ``keys``
    gives this device's stream key out and finds the others' (end to end: see the module)."""
    stop = stop or asyncio.Event()
    signals = CallSignals(link)
    outcome = CallOutcome()
    ended = False
    follow: Callable[[object], None] | None = None
    try:
        if answer:
            ringing = link.call_states.get(consult)
            if not call_id and ringing is not None and ringing.state != "ended" and me not in ringing.slots:
                call_id = ringing.call  # it rang before we listened (the relay tells on connect)
            if not call_id:  # not told which: wait for the next ring in this consult
                on_status("waiting for a call in this consult")
                state = await signals.next_state(
                    lambda s: s.consult == consult and s.state != "ended" and me not in s.slots,
                    limits.answer_wait,
                    stop,
                )
                if state is None:
                    outcome.outcome = "hung up"
                    return outcome
                call_id = state.call
            result = await signals.request("answer", {"call": call_id}, limits.request_timeout)
            slots = _slots(result.get("slots"))
            crypto, follow = await _stream_crypto(link, keys, consult, call_id, slots, limits)
        else:
            result = await signals.request("call", {"consult": consult}, limits.request_timeout)
            call_id = str(result["call"])
            # announced while it rings, so the key is with the others by the time they answer
            slots = _slots(result.get("slots"))
            crypto, follow = await _stream_crypto(link, keys, consult, call_id, slots, limits)
            if result.get("state") == "ringing":
                on_status("ringing")
                state = await signals.next_state(
                    lambda s: s.call == call_id and s.state != "ringing", limits.ring_timeout + 10, stop
                )
                if state is None:  # hung up while it rang: the finally below tells the relay
                    outcome.call, outcome.outcome = call_id, "cancelled"
                    return outcome
                if state.state == "ended":
                    ended = True
                    outcome.call, outcome.outcome = call_id, state.outcome
                    return outcome
                crypto.set_members(state.slots)
        outcome.call = call_id
        engine = CallEngine(link, source, sink, profile, limits, crypto=crypto)
        if engine_hook is not None:
            engine_hook(engine)
        watcher = asyncio.ensure_future(_watch(signals, call_id, stop, limits))
        timer = asyncio.get_running_loop().call_later(seconds, stop.set) if seconds else None
        started = time.monotonic()
        try:
            await engine.run(stop, lambda s: on_status(s.line()))
        finally:
            if timer is not None:
                timer.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        ended = watcher.done() and not watcher.cancelled() and watcher.result() is True
        outcome.seconds = time.monotonic() - started
        outcome.stats = engine.stats
        outcome.report = engine.report()
        outcome.outcome = "completed" if ended else "hung up"
        return outcome
    finally:
        if follow is not None and follow in link.listeners:
            link.listeners.remove(follow)
        if call_id and not ended:
            with contextlib.suppress(MedcommError, TimeoutError):
                await signals.request("hangup", {"call": call_id}, 5.0)
        signals.close()


async def _watch(signals: CallSignals, call_id: str, stop: asyncio.Event, limits: CallLimits) -> bool:
    """End with the call when the others hang up; answer again after a reconnect (the relay
    keeps our slot for a while). True when the call ended at the far end."""
    was_online = signals.link.status.state == "online"
    while not stop.is_set():
        getter = asyncio.ensure_future(signals.states.get())
        online = asyncio.ensure_future(signals.online.wait()) if not was_online else None
        waits = {getter} | ({online} if online else set())
        done, _ = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        for task in waits - done:
            task.cancel()
        if getter in done:
            state = getter.result()
            if state.call == call_id and state.state == "ended":
                stop.set()
                return True
        now_online = signals.link.status.state == "online"
        if now_online and not was_online:
            with contextlib.suppress(MedcommError, TimeoutError):
                await signals.request("answer", {"call": call_id}, limits.request_timeout)
                log.info("call %s: answered again after a reconnect", call_id)
        was_online = now_online
    return False


@dataclass
class CallView:
    """What the desk's call bar shows: the live call, or the one ringing for us."""

    consult: str
    call: str
    state: str  # ringing-in | ringing-out | connecting | in call | ended
    peers: list[str]
    line: str = ""  # the engine's one-line meters (refreshed at most once a second)
    muted: bool = False
    profile: str = "auto"
    error: str | None = None
    stats: CallStats | None = None


class DeskCalls:
    """One call at a time for the desk, run as a background task beside the desk.

    The desk calls ``start``/``answer``/``decline``/``hangup``/``mute`` and reads ``view``;
    ``changed`` is called (from the event loop) whenever the view changes, at most once a
    second for meters, so a call does not flood an SSH link with redraws.
    """

    def __init__(
        self, link: Link, me: str, changed: Callable[[], None] = lambda: None, keys: CallKeys | None = None
    ) -> None:
        self.link, self.me, self.changed, self.keys = link, me, changed, keys
        self.view: CallView | None = None
        self.ringing: dict[str, wire.CallState] = {}  # consult -> call ringing for us
        self._task: asyncio.Task[CallOutcome] | None = None
        self._stop: asyncio.Event | None = None
        self._engine_mute: Callable[[bool], None] | None = None
        link.listeners.append(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, LinkStatus) and event.state == "online" and self.ringing:
            self.ringing.clear()  # rings that ended while we were away; live ones are told again
            self.changed()
        if not isinstance(event, wire.CallState):
            return
        mine = self.me in event.slots
        if event.state != "ended" and not mine and self.me != event.by:
            self.ringing[event.consult] = event
        else:
            self.ringing.pop(event.consult, None)
        if self.view is not None and self.view.call in ("", event.call):
            self.view.call = event.call
            self.view.peers = [u for u in event.slots if u != self.me]
            if event.state == "active" and mine:
                self.view.state = "in call"
        self.changed()

    def incoming(self) -> wire.CallState | None:
        """The call ringing for us (the newest), wherever the desk is."""
        return next(reversed(self.ringing.values()), None)

    def start(self, consult: str, profile: str = "auto", mic: str = "", speaker: str = "") -> None:
        self._launch(consult, profile, mic, speaker, answer=False)

    def answer(self, consult: str, profile: str = "auto", mic: str = "", speaker: str = "") -> None:
        self._launch(consult, profile, mic, speaker, answer=True)

    async def decline(self, consult: str) -> None:
        state = self.ringing.pop(consult, None)
        self.changed()  # the ring goes from the screen now, not after the relay's answer
        if state is not None:
            with contextlib.suppress(MedcommError):
                await self.link.request("decline", {"call": state.call}, 10.0)
        self.changed()

    def hangup(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def mute(self, on: bool | None = None) -> bool:
        if self.view is None:
            return False
        self.view.muted = (not self.view.muted) if on is None else on
        if self._engine_mute is not None:
            self._engine_mute(self.view.muted)
        self.changed()
        return self.view.muted

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def _launch(self, consult: str, profile: str, mic: str, speaker: str, answer: bool) -> None:
        """Open the sound devices now (a missing PortAudio or device raises here, for the
        desk to show), then carry the call in the background."""
        from medcomm.adapters import opus
        from medcomm.adapters.audio import open_sink, open_source

        if self.active:
            raise UsageError("already in a call: hang up first")
        if self.keys is None:
            raise UsageError("calls are end-to-end encrypted, and this desk has no keys for them")
        opus.load()  # a missing libopus is said now, not after the call connected
        source = open_source(mic)
        try:
            sink = open_sink(speaker)
        except BaseException:
            source.stop()
            raise
        ringing = self.ringing.pop(consult, None) if answer else None
        self.view = CallView(
            consult, ringing.call if ringing else "", "connecting" if answer else "ringing-out",
            [u for u in (ringing.slots if ringing else {}) if u != self.me], profile=profile,
        )
        self._stop = asyncio.Event()
        call_id = ringing.call if ringing is not None else ""
        self._task = asyncio.ensure_future(self._carry(consult, source, sink, profile, answer, call_id))
        self.changed()

    async def _carry(
        self, consult: str, source: Any, sink: Any, profile: str, answer: bool, call_id: str
    ) -> CallOutcome:
        keys = self.keys
        assert keys is not None, "checked by _launch"

        def status(line: str) -> None:
            if self.view is not None:
                self.view.line = line
                if line.startswith("in call"):
                    self.view.state = "in call"
                self.changed()

        try:
            out = await run_call(
                self.link, self.me, consult, source, sink, keys=keys, profile=profile, answer=answer,
                stop=self._stop, on_status=status, engine_hook=self._hook, call_id=call_id,
            )
            if self.view is not None:
                self.view.state, self.view.line = "ended", f"call {out.outcome}"
            return out
        except MedcommError as exc:
            if self.view is not None:
                self.view.state, self.view.error = "ended", str(exc)
            return CallOutcome(outcome="failed")
        finally:
            self._engine_mute = None
            self.changed()

    def _hook(self, engine: CallEngine) -> None:
        def set_mute(on: bool) -> None:
            engine.muted = on

        self._engine_mute = set_mute
        if self.view is not None:
            self.view.stats = engine.stats  # the numbers behind ``line``, for a desk of any width
            engine.muted = self.view.muted

    async def close(self) -> None:
        self.hangup()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 6)
        if self._on_event in self.link.listeners:
            self.link.listeners.remove(self._on_event)

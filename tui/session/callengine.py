"""A call's media engine, between the sound edge (a device or a WAV file, in real time) and
the session's one connection. Sending: every packet length of audio the source holds is
encoded at the rung the rate control chose and written *now*, ahead of anything our own code
has queued; when more than a packet is still unsent in the transport, the packet is dropped
instead (stale audio is worth nothing, and the rate control steps down). Receiving: each
stream (slot) has its own jitter buffer and decoder; the playout keeps one output block in
the sink (a block more when the speaker runs dry, one back after a calm spell:
``core.speakerqueue``) and mixes the streams 20 ms at a time. Every 500 ms each stream heard
gets a feedback report (echoed timestamp, hold time, jitter-buffer delay, concealment) that
its sender's rate control reads; it waits (up to ``feedback_hold``) for our next voice packet
and rides in its TCP segment, its hold time counted up to when it leaves, so the wait does not
read as delay.

Every media frame is sealed end to end (``core.voicecrypt``) under this device's stream key. A
frame from slot S is opened with the key of the member the call's ``CallState.slots`` puts in
S, as the local store holds it; when a new key takes over a slot, a new stream (its clock
starting again) gets a new jitter buffer and decoder. Frames whose sender's key has not
arrived yet are dropped ("no key"), as are frames that fail authentication; the status line
says so while it happens.

The timing decisions live in the sans-I/O cores (``core.jitter``, ``core.ratecontrol``,
``core.ackphase``); this module only drives them with the clock, the link and the sound edge.
Placing, answering and ending a call is ``session.call``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medcomm.core import timescale, voiceframe
from medcomm.core.ackphase import AckPhase
from medcomm.core.jitter import Conceal, JitterBuffer, JitterLimits, JitterStats, Piece, Play, for_round_trip
from medcomm.core.ratecontrol import RateControl
from medcomm.core.speakerqueue import SpeakerLimits, SpeakerQueue
from medcomm.core.voicecrypt import OVERHEAD, CallCrypto
from medcomm.errors import MedcommError, Tampered, UsageError, WireError
from medcomm.session.link import Link

if TYPE_CHECKING:
    import numpy as np

    from medcomm.adapters.opus import Encoded

log = logging.getLogger("medcomm.call")

RATE = 48_000
MS = RATE // 1000  # samples per ms
BLOCK = 960  # 20 ms: the playout and mixing grain


def play_piece(piece: Piece, decoder: Any, jitter: JitterBuffer) -> np.ndarray:
    """The samples a jitter-buffer piece plays as: a packet decoded (and, when the buffer
    asks, cut shorter: speech at whole pitch periods, so as little as half the ask may go, and
    ``jitter`` is told the shortfall), concealment, or silence. A bad packet raises (the
    decoder's error); the caller conceals instead. ``scripts/bench playout`` plays its
    simulated calls through this too."""
    import numpy

    if isinstance(piece, Play):
        pcm = decoder.decode(piece.payload)
        if not piece.trim_ms:
            return pcm
        want = piece.trim_ms * MS
        out = timescale.shorten(pcm, want, least=want // 2)
        jitter.trimmed_less((want - (len(pcm) - len(out))) / MS)
        return out
    if isinstance(piece, Conceal):
        return decoder.conceal(piece.duration_ms)
    return numpy.zeros(piece.duration_ms * MS, numpy.int16)


@dataclass(frozen=True)
class CallLimits:
    """Paces of the engine; each is a trade between delay and work per second."""

    tick: float = 0.005  # s between looks at the source and the sink
    # 20 ms blocks kept queued in the sink: one, a block more when the speaker runs dry, one
    # back after a calm spell (core.speakerqueue)
    speaker: SpeakerLimits = SpeakerLimits()
    feedback_every: float = 0.5  # s between feedback reports per stream heard (each ~65 B on the wire)
    # s a report may wait for our next voice packet to ride with it instead of costing a 52-byte
    # segment of its own: a packet (at most 120 ms) and a tick; a silent or muted side sends alone
    feedback_hold: float = 0.15
    backlog_packets: float = 1.0  # unsent transport bytes (in packets) above which voice is dropped
    ring_timeout: float = 60.0  # s to wait for an answer
    answer_wait: float = 120.0  # s `--answer` waits for a call to ring
    request_timeout: float = 20.0
    hangup_timeout: float = 5.0  # s the hang-up waits for the relay's answer on a live link
    # s the hang-up waits for a lost link to come back: past it, the relay ends our part by
    # itself (its grace for a dropped device) and the user gets their terminal back
    hangup_offline_wait: float = 1.0
    # our round trip to the relay rides (3 bytes) with our first packets and this often after,
    # for receivers that join later (voiceframe.PathHint)
    path_first: int = 3
    path_every: float = 5.0
    stall_after: float = 1.0  # s (plus two base round trips) without feedback: the link stalled
    probe_every: float = 0.5  # s between packets sent while stalled (to learn it is back)

    def __post_init__(self) -> None:
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
        rtt = link.status.rtt  # the link's round trip, measured when it connected
        rtt_ms = None if rtt is None else rtt * 1000
        self.rate = RateControl(profile, rtt_ms=rtt_ms)
        rung = self.rate.rung
        self._opus = opus
        self.encoder = opus.Encoder(
            rung.application, rung.bitrate_bps, rung.frame_ms, rung.bandwidth, dtx=rung.application == "voip"
        )
        self.streams: dict[int, _Stream] = {}
        # the start-up target from the link's round trip (core.jitter.for_round_trip), and once
        # a sender's path hint is in, from both links' round trips
        self._rtt_ms = rtt_ms
        self._jitter_limits = for_round_trip(JitterLimits(), rtt_ms)
        self._path_rtt: dict[int, int] = {}  # slot -> the sender's round trip to the relay, ms
        self._path_hints_sent = 0
        self._path_next = 0.0  # when our next path hint rides along
        self._reports_due: dict[int, float] = {}  # slot -> when its feedback report fell due
        self.muted = False
        self.stats = CallStats(rung=rung.name)
        # (media ms, rung) from which each rung coded our stream: how a judge rebuilds the same
        # settings offline (bounded: the controller steps at most once a second)
        self._rung_log: deque[tuple[int, str]] = deque([(0, rung.name)], maxlen=4096)
        self._seq = 0
        self._ts = 0  # our media clock, ms since the stream began (runs through DTX and mute)
        self._bytes_up = self._bytes_down = 0
        self._bad_frames = 0
        self.speaker = SpeakerQueue(self.limits.speaker, time.monotonic())
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
            if isinstance(frame, voiceframe.PathHint):
                self._path_rtt[frame.slot] = frame.rtt_ms
                if frame.slot in self.streams:
                    self.streams[frame.slot].jitter.hint_start(self._start_limits(frame.slot).initial_ms)
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
                buffer = JitterBuffer(self._start_limits(frame.slot))
                stream = _Stream(buffer, self._opus.Decoder(), key_stream)
                self.streams[frame.slot] = stream
            stream.jitter.push(ts, duration, packet, frame.level, now)
            stream.last_ts16, stream.last_arrival = frame.ts, now
            self.phase.arrived(frame.slot, now)
        except (WireError, MedcommError, ValueError):
            self._bad_frames += 1  # a malformed frame from a peer never harms the call

    def _start_limits(self, slot: int) -> JitterLimits:
        """A stream's buffer limits: the start-up target from the whole path's round trip when
        the sender said its own (a doctor on fibre hearing a clinic on EDGE would otherwise
        start at the 60 ms its own link suggests, and conceal the first seconds)."""
        theirs = self._path_rtt.get(slot)
        if theirs is None or self._rtt_ms is None:
            return self._jitter_limits
        return for_round_trip(JitterLimits(), self._rtt_ms + theirs)

    def _path_riders(self, now: float) -> list[bytes]:
        """Our path hint, when one is due: with our first packets, then every ``path_every``."""
        if self._rtt_ms is None or now < self._path_next:
            return []
        return [voiceframe.PathHint.outgoing(self._rtt_ms).pack()]

    def _path_hint_went(self, now: float) -> None:
        self._path_hints_sent += 1
        if self._path_hints_sent >= self.limits.path_first:
            self._path_next = now + self.limits.path_every

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
            path = self._path_riders(now)
            riders = self._reports(now) + path
            backlog = self.link.send_voice(data, backlog_limit, *riders)
            if backlog is None:
                self.stats.dropped += 1
                self.rate.on_backlog(backlog_limit + len(data), now)
                continue
            if path:
                self._path_hint_went(now)
            self._reports_due.clear()
            self._count_up(data, *riders)
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
        rtt = self._min_rtt_ms or 0.0  # refreshed once a second: a stats() per packet was waste
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
            self._rung_log.append((self._ts, rung.name))  # the next packet starts at _ts
            log.info("voice rung %s (%d bit/s, %d ms)", rung.name, rung.bitrate_bps, rung.frame_ms)

    def _play(self, now: float) -> None:
        underruns = self.sink.underruns
        if underruns > self._underruns_seen:
            self._underruns_seen = underruns
            if self.speaker.underrun(now, heard=bool(self.streams)):
                log.info("speaker ran dry: %d blocks now queued for it", self.speaker.blocks)
        elif self.speaker.poll(now):
            log.info("speaker calm: %d blocks now queued for it", self.speaker.blocks)
        want = self.speaker.blocks * BLOCK
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
            return play_piece(piece, stream.decoder, stream.jitter)
        except (WireError, MedcommError):
            self._bad_frames += 1
            return stream.decoder.conceal(piece.played_ms)

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
            self._count_up(*reports)

    def _count_up(self, *frames: bytes) -> None:
        """Voice-plane bytes written, each frame with its 2-byte WebSocket header (the meters')."""
        self._bytes_up += sum(len(f) + 2 for f in frames)

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
        online = self.link.status.state == "online"
        # a lost link must show as lost: "in call" at 0 kbit/s with the last round trip looks
        # like a silent peer
        s.state = "in call" if online else "reconnecting"
        rtt = rs.last_rtt_ms if rs.last_rtt_ms is not None else (self.link.status.rtt or 0) * 1000 or None
        s.rtt_ms = rtt if online else None
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
                        "trimmed_ms": st.stats.trimmed_ms, "concealed_pm": st.stats.concealed_pm_total}
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
                "playout_ms": self.speaker.blocks * BLOCK // (RATE // 1000),
                "speaker_grown": self.speaker.grown,
                "clock_moves": self._clock_moves,
                "seconds": self.history, "final": self._snapshot(),
                "crypto": crypto,
                "rung_schedule": [list(x) for x in self._rung_log],
                "rate_changes": [{"at": c.at, "rung": c.rung, "reason": c.reason}
                                 for c in self.rate.stats().recent]}

    async def _drain_sink(self) -> None:
        """Let what is queued for the speaker play out (bounded): the far end's last words."""
        deadline = time.monotonic() + 0.5
        while self.sink.buffered > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

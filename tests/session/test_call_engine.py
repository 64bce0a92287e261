"""The call engine in-process: two engines back to back through an in-memory relay.

Each engine gets a fake link whose ``send_voice`` hands the frame to the relay's own router
(``server.calls.CallRegistry.route``: the slot rewrite 0x40|slot / 0x60|slot and the choice
of receiver), and the router's output is delivered to the other link's ``voice_listener``
after a fixed one-way delay on the event loop. Sources and sinks are clocked by the wall
clock like a sound card (20 ms blocks), so the engine runs exactly as it does in a call;
each test lasts one to three seconds of real time and every wait is bounded.

Media is sealed end to end as in a real call: each party's stream key is given out through a
``KeyBoard`` that stands for the consult's ``callkey`` messages landing in each member's local
store (optionally late, as the reliable path can be); the sealing and opening are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest

from medcomm.adapters import opus
from medcomm.core import voiceframe, wire
from medcomm.core.ackphase import AckPhase
from medcomm.core.jitter import JitterLimits, for_round_trip
from medcomm.core.speakerqueue import SpeakerLimits
from medcomm.core.voicecrypt import OVERHEAD, CallCrypto, StreamOpener, StreamSealer
from medcomm.errors import LinkDown, NotFound, UsageError, VoiceUnavailable
from medcomm.server.calls import CallRegistry
from medcomm.session.call import CallKeys, CallOutcome, DeskCalls, run_call
from medcomm.session.callengine import CallEngine, CallLimits
from medcomm.session.link import Link, LinkStatus

pytestmark = pytest.mark.timeout(30)

RATE = 48_000
ONE_WAY = 0.02  # s, each direction through the fake relay
CONSULT = "abc234"
TONE_HZ = 440.0


# --- the sound edge ---------------------------------------------------------------------------


def tone(seconds: float, freq: float = TONE_HZ, amp: float = 0.3, lead: float = 0.0) -> np.ndarray:
    """``lead`` s of digital silence, then a sine at ``amp`` of full scale until ``seconds``."""
    t = np.arange(int(RATE * seconds)) / RATE
    x = amp * 32767 * np.sin(2 * np.pi * freq * t)
    x[: int(RATE * lead)] = 0
    return x.astype(np.int16)


class ClockedSource:
    """A microphone playing ``pcm``: samples become readable as the wall clock reaches them."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm = pcm
        self.pos = 0
        self.t0: float | None = None
        self.stopped = False

    def _made(self) -> int:
        if self.t0 is None:
            return 0
        return min(len(self.pcm), int((time.monotonic() - self.t0) * RATE))

    def start(self) -> None:
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self.stopped = True

    def read(self, n_samples: int) -> np.ndarray | None:
        made = self._made()
        if made - self.pos >= n_samples:
            out = self.pcm[self.pos : self.pos + n_samples]
            self.pos += n_samples
            return out
        if made == len(self.pcm) and self.pos < made:  # the tail, padded like a WavSource
            out = np.zeros(n_samples, np.int16)
            out[: made - self.pos] = self.pcm[self.pos :]
            self.pos = made
            return out
        return None

    @property
    def buffered(self) -> int:
        return self._made() - self.pos

    @property
    def ended(self) -> bool:
        return self._made() == len(self.pcm) and self.pos >= len(self.pcm)

    @property
    def dropped_samples(self) -> int:
        return 0


class ClockedSink:
    """A speaker: what is written plays out at 48 kHz of wall clock; silence on underrun.

    Every write is kept with the time its first sample will reach the ear, so a test can say
    *when* a sound was heard, not only what.
    """

    def __init__(self) -> None:
        self.blocks: list[tuple[float, np.ndarray]] = []  # (play time, samples)
        self.written = 0
        self.played = 0.0
        self.last: float | None = None
        self.stopped = False
        self._underruns = 0

    def _advance(self) -> None:
        now = time.monotonic()
        if self.last is not None:
            due = self.played + (now - self.last) * RATE
            if self.written and due > self.written:
                self._underruns += 1  # the speaker ran dry: silence, and the clock is not owed
            self.played = min(float(self.written), due)
        self.last = now

    def start(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self.stopped = True

    def write(self, pcm: np.ndarray) -> None:
        assert pcm.dtype == np.int16
        self._advance()
        self.blocks.append((time.monotonic() + (self.written - self.played) / RATE, pcm.copy()))
        self.written += len(pcm)

    @property
    def buffered(self) -> int:
        self._advance()
        return int(self.written - self.played)

    @property
    def underruns(self) -> int:
        return self._underruns

    def audio(self, since: float = float("-inf"), until: float = float("inf")) -> np.ndarray:
        """The samples that played between two wall-clock times (whole blocks)."""
        parts = [b for t, b in self.blocks if since <= t < until]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def onset(self, threshold: float = 1000.0) -> float | None:
        """Play time of the first 20 ms block louder than ``threshold`` RMS."""
        for t, b in self.blocks:
            if b.size and float(np.sqrt(np.mean(b.astype(np.float64) ** 2))) > threshold:
                return t
        return None


def dominant_hz(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(pcm), 1 / RATE)[int(np.argmax(spectrum))])


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


# --- the keys ---------------------------------------------------------------------------------


class KeyBoard:
    """Stream keys as the members' local stores would hold them once the ``callkey`` messages
    arrive: ``announce`` makes a fresh key and it becomes visible to every member after
    ``delay`` s (0: at once)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.keys: dict[tuple[str, str, str], bytes] = {}
        self.announced: list[tuple[str, str, str]] = []  # (consult, call, member), in order

    def put(self, consult: str, call: str, member: str, key: bytes) -> None:
        self.keys[(consult, call, member)] = key

    def device(self, member: str) -> DeviceKeys:
        return DeviceKeys(self, member)


@dataclass
class DeviceKeys:
    """One device's ``CallKeys`` on the board."""

    board: KeyBoard
    me: str

    async def announce(self, consult: str, call: str) -> bytes:
        key = secrets.token_bytes(32)
        self.board.announced.append((consult, call, self.me))
        if self.board.delay > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(self.board.delay, self.board.put, consult, call, self.me, key)
        else:
            self.board.put(consult, call, self.me, key)
        return key

    def lookup(self, consult: str, call: str, member: str) -> bytes | None:
        return self.board.keys.get((consult, call, member))


def keys_for(member: str, board: KeyBoard | None = None) -> CallKeys:
    return (board or KeyBoard()).device(member)


# --- the link and the relay -------------------------------------------------------------------


class FakeRelay:
    """The relay's call registry and voice router, with a fixed one-way delay each way."""

    def __init__(self, one_way: float = ONE_WAY, key_delay: float = 0.0) -> None:
        self.calls = CallRegistry()
        self.one_way = one_way
        self.call_id = ""
        self.board = KeyBoard(key_delay)
        self.slots: dict[str, int] = {}

    def crypto(self, link: FakeLink, key: bytes | None = None, key_delay: float | None = None) -> CallCrypto:
        """``link``'s part in the call's crypto: its own stream key given out (now, or after
        ``key_delay`` s), the others' looked up on the board."""
        own = key or secrets.token_bytes(32)
        delay = self.board.delay if key_delay is None else key_delay
        if delay > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self.board.put, CONSULT, self.call_id, link.user, own)
        else:
            self.board.put(CONSULT, self.call_id, link.user, own)
        crypto = CallCrypto(own, lambda member: self.board.keys.get((CONSULT, self.call_id, member)))
        crypto.set_members(self.slots)
        return crypto

    def key_of(self, link: FakeLink) -> bytes:
        return self.board.keys[(CONSULT, self.call_id, link.user)]

    def connect(self, links: list[FakeLink]) -> None:
        now = time.monotonic()
        members = [link.user for link in links]
        call = self.calls.start(CONSULT, links[0].user, links[0], members, now, 0)
        for link in links[1:]:
            self.calls.answer(call.id, link.user, link, now)
        self.call_id = call.id
        self.slots = call.slots()
        for link in links:
            link.slot = self.slots[link.user]

    def forward(self, sender: FakeLink, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for conn, out in self.calls.route(sender, data, time.monotonic()):
            loop.call_later(self.one_way, cast(FakeLink, conn).deliver, out)


@dataclass
class FakeLink:
    """What the engine and the signalling use of ``session.link.Link``."""

    user: str
    relay: FakeRelay | None = None
    slot: int = 0
    behind: bool = False  # the transport is backed up: every voice frame is refused
    deaf: bool = False  # the downlink has stalled: nothing reaches this device
    voice_listener: Callable[[bytes], None] | None = None
    bulk_allowed: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))
    status: LinkStatus = field(default_factory=lambda: LinkStatus(state="online", rtt=0.04))
    listeners: list[Callable[[object], None]] = field(default_factory=list)
    sent: list[tuple[float, bytes]] = field(default_factory=list)  # uplink frames that went out
    writes: list[tuple[bytes, ...]] = field(default_factory=list)  # frames that went in one segment
    refused: list[bytes] = field(default_factory=list)  # frames send_voice said None to
    received: list[bytes] = field(default_factory=list)  # downlink frames, after the rewrite
    requests: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    answers: dict[str, dict[str, object] | Exception] = field(default_factory=dict)
    call_states: dict[str, wire.CallState] = field(default_factory=dict)  # live calls, as last told

    def send_voice(self, data: bytes, backlog_limit: int, *riders: bytes) -> int | None:
        assert backlog_limit > 0
        if self.behind:
            self.refused.extend((data, *riders))
            return None
        self.writes.append((data, *riders))
        for frame in (data, *riders):
            self.sent.append((time.monotonic(), frame))
            if self.relay is not None:
                self.relay.forward(self, frame)
        return 0

    def deliver(self, data: bytes) -> None:
        if self.deaf:
            return
        self.received.append(data)
        if self.voice_listener is not None:
            self.voice_listener(data)

    async def request(self, op: str, args: dict[str, object], timeout: float) -> object:
        assert timeout > 0
        self.requests.append((op, args))
        if self.status.state != "online":  # as the real link: waits (bounded) for the relay
            await asyncio.sleep(timeout)
            raise LinkDown(f"no answer from the relay within {timeout:.0f} s")
        answer = self.answers.get(op, {})
        if isinstance(answer, Exception):  # the relay's error answer
            raise answer
        return answer

    def emit(self, event: object) -> None:
        if isinstance(event, wire.CallState):  # as the real link's reader keeps them
            if event.state == "ended":
                self.call_states.pop(event.consult, None)
            else:
                self.call_states[event.consult] = event
        for listener in list(self.listeners):
            listener(event)

    def media_sent(self) -> int:
        return sum(1 for _, d in self.sent if is_media(d))

    def media_refused(self) -> int:
        return sum(1 for d in self.refused if is_media(d))


def is_media(data: bytes) -> bool:
    return data[0] & 0xF0 == voiceframe.MEDIA_TAG


def kind(data: bytes) -> str:
    return voiceframe.frame_kind(data)


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


def as_link(link: FakeLink) -> Link:
    return cast(Link, link)


@dataclass
class Party:
    link: FakeLink
    source: ClockedSource
    sink: ClockedSink
    engine: CallEngine


@dataclass
class Call:
    a: Party
    b: Party
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]
    relay: FakeRelay

    def running(self) -> bool:
        return not any(t.done() for t in self.tasks)


@contextlib.asynccontextmanager
async def call(
    a_pcm: np.ndarray,
    b_pcm: np.ndarray,
    profile: str = "auto",
    limits: CallLimits = CallLimits(),
    key_delay: float = 0.0,
    rtts: tuple[float, float] = (0.04, 0.04),
) -> AsyncIterator[Call]:
    """Two engines in a call through the fake relay; stopped (bounded) on the way out.
    ``key_delay``: seconds before each party's stream key reaches the other; ``rtts``: the
    round trips each link measured when it connected."""
    relay = FakeRelay(key_delay=key_delay)
    links = [FakeLink("amina", relay), FakeLink("dr.chen", relay)]
    for link, rtt in zip(links, rtts, strict=True):
        link.status.rtt = rtt
    relay.connect(links)
    parties = []
    for link, pcm in zip(links, (a_pcm, b_pcm), strict=True):
        source, sink = ClockedSource(pcm), ClockedSink()
        engine = CallEngine(as_link(link), source, sink, profile, limits, crypto=relay.crypto(link))
        parties.append(Party(link, source, sink, engine))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.engine.run(stop)) for p in parties]
    c = Call(parties[0], parties[1], stop, tasks, relay)
    try:
        yield c
    finally:
        await finish(stop, tasks)


async def finish(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    done, pending = await asyncio.wait(tasks, timeout=5)
    for t in pending:
        t.cancel()
    assert not pending, "an engine did not stop within 5 s of stop"
    for t in done:
        t.result()  # an engine that crashed fails the test here


async def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


# --- media ------------------------------------------------------------------------------------


async def test_a_tone_arrives_as_the_same_tone_with_bounded_delay() -> None:
    lead = 0.3
    async with call(tone(10, lead=lead), np.zeros(RATE * 10, np.int16)) as c:
        await asyncio.sleep(2.0)
        assert c.running()
        assert not c.a.link.bulk_allowed.is_set(), "image chunks wait while a call is on"
        sent_onset = cast(float, c.a.source.t0) + lead
        heard = c.b.sink.onset()
        assert heard is not None, "the tone never reached the far speaker"
        delay = heard - sent_onset
        # one packet (60 ms at the starting rung: the fake link's round trip is quick), 20 ms of
        # link, the jitter buffer's 60 ms start-up target (a third of the round trip, at least 60) and
        # 20-60 ms of playout queue: ~0.2 s; stale audio is never played late
        assert 0.05 < delay < 0.6, f"mouth-to-ear delay {delay:.3f} s"
        steady = c.b.sink.audio(heard + 0.3, heard + 1.3)
        assert steady.size >= RATE // 2
        assert abs(dominant_hz(steady) - TONE_HZ) <= 3.0
        assert rms(steady) > 0.5 * rms(tone(1))  # the level survives, not only the pitch
        # nothing of the tone before it was played into the microphone
        assert rms(c.b.sink.audio(until=sent_onset)) < 50
        # and the sender hears silence: no echo of its own voice through the relay
        assert rms(c.a.sink.audio()) < 200
    assert c.a.link.bulk_allowed.is_set() and c.b.link.bulk_allowed.is_set(), "bulk resumes after"
    slots = {voiceframe.parse(d).slot for d in c.b.link.received}
    assert slots == {c.a.link.slot}, "the receiver sees the sender's slot, as the relay rewrote it"
    assert all(d[0] & 0x0F == 0 for _, d in c.a.link.sent if is_media(d))


async def test_the_speaker_queue_starts_at_one_block_and_grows_when_it_runs_dry() -> None:
    """Every ms queued for the speaker is delay, so the engine keeps one 20 ms block there;
    an event loop held up past that (a slow redraw) runs the speaker dry, and the queue
    grows a block each time, up to the most, so it does not happen again and again."""
    limits = CallLimits()
    async with call(tone(10), tone(10, freq=300), limits=limits) as c:
        await asyncio.sleep(1.0)
        before = c.b.sink.underruns
        assert c.b.engine.report()["playout_ms"] == 20
        for _ in range(limits.speaker.most + 1):
            time.sleep(0.08)  # the loop is held: nothing is written to the speakers meanwhile
            await asyncio.sleep(0.3)
        assert c.running()
        assert c.b.sink.underruns > before
        assert c.b.engine.report()["playout_ms"] == 20 * limits.speaker.most
        steady = c.b.sink.audio(time.monotonic() - 0.25, time.monotonic() + 0.1)
        assert abs(dominant_hz(steady) - TONE_HZ) <= 3.0  # and the far end is still heard


async def test_the_speaker_queue_gives_a_block_back_after_a_calm_spell() -> None:
    """One hiccup must not cost 20 ms of delay for the rest of a consult."""
    limits = CallLimits(speaker=SpeakerLimits(calm_s=0.6))
    async with call(tone(10), tone(10, freq=300), limits=limits) as c:
        await asyncio.sleep(1.0)
        time.sleep(0.08)  # one hiccup
        await wait_for(lambda: c.b.engine.report()["playout_ms"] == 40, 0.5, step=0.01)
        await wait_for(lambda: c.b.engine.report()["playout_ms"] == 20, 1.5)
        assert c.b.engine.report()["speaker_grown"] == 1
        assert c.running()


async def test_a_hiccup_before_any_far_end_audio_leaves_the_speaker_queue_alone() -> None:
    """The speaker plays start-up silence then: nobody hears it run dry, and a block more
    would be 20 ms more delay for the whole call."""
    async with call(tone(10), tone(10, freq=300)) as c:
        c.b.link.deaf = True  # nothing from the far end has reached b yet
        await asyncio.sleep(0.2)
        before = c.b.sink.underruns
        time.sleep(0.08)
        await asyncio.sleep(0.2)
        assert c.b.sink.underruns > before and not c.b.engine.streams
        assert c.b.engine.report()["playout_ms"] == 20
        c.b.link.deaf = False
        await wait_for(lambda: bool(c.b.engine.streams), 1.0)
        time.sleep(0.08)  # now a hiccup cuts what b hears: the queue grows
        await wait_for(lambda: c.b.engine.report()["playout_ms"] == 40, 0.5, step=0.01)


async def test_feedback_flows_and_the_sender_measures_the_round_trip() -> None:
    async with call(tone(10), tone(10, freq=300)) as c:
        await asyncio.sleep(1.6)
        assert c.running()
    for me, other in ((c.a, c.b), (c.b, c.a)):
        fb_up = [voiceframe.parse(d) for _, d in me.link.sent if d[0] & 0xF0 == voiceframe.FEEDBACK_TAG]
        # one report per 500 ms for the stream heard, addressed to its slot
        assert 2 <= len(fb_up) <= 4, len(fb_up)
        # both talk, so every report rode in the segment of one of our voice packets
        rides = [w for w in me.link.writes if any(f[0] & 0xF0 == voiceframe.FEEDBACK_TAG for f in w)]
        assert len(rides) == len(fb_up), rides
        ride_kinds = (["feedback"], ["feedback", "path"])  # a path hint rides after the reports
        assert all(is_media(w[0]) and [kind(f) for f in w[1:]] in ride_kinds for w in rides)
        assert {f.slot for f in fb_up} == {other.link.slot}
        assert all(isinstance(f, voiceframe.Feedback) and f.hold_ms <= 300 for f in fb_up)
        fb_down = [voiceframe.parse(d) for d in other.link.received if d[0] & 0xF0 == voiceframe.FEEDBACK_TAG]
        assert fb_down and {f.slot for f in fb_down} == {me.link.slot}  # rewritten to the author
        stats = other.engine.rate.stats()
        assert stats.receivers == 1
        assert stats.last_rtt_ms is not None
        # 2 x 20 ms of link; the hold time is taken out, ticks of 5 ms and a busy loop add a little
        assert 2 * ONE_WAY * 1000 - 5 <= stats.last_rtt_ms <= 2 * ONE_WAY * 1000 + 100, stats.last_rtt_ms
    report = c.a.engine.report()
    assert report["bad_frames"] == 0
    assert cast(list[object], report["seconds"]), "one stats entry per second for --report"


async def test_a_quick_receiver_starts_a_slow_senders_stream_at_what_the_whole_path_needs() -> None:
    """amina on EDGE (a 450 ms round trip), dr.chen on fibre (2 ms). From his own link alone
    dr.chen's buffer would start amina's stream at 60 ms and conceal her first seconds; her
    path hint says what the whole path needs. The hint rides with her first packets, then
    every ``path_every``, never in a segment of its own."""
    limits = CallLimits(path_every=0.5)
    async with call(tone(10), tone(10, freq=300), limits=limits, rtts=(0.45, 0.002)) as c:
        await wait_for(lambda: bool(c.a.engine.streams) and bool(c.b.engine.streams), 1.5)
        await asyncio.sleep(1.6)
        assert c.running()
    own_only = for_round_trip(JitterLimits(), 2.0).initial_ms
    assert own_only == 60
    assert c.b.engine.streams[c.a.link.slot].jitter.limits.initial_ms == 120
    assert c.a.engine.streams[c.b.link.slot].jitter.limits.initial_ms == 120  # amina's own link says so
    for me, rtt_ms in ((c.a, 450), (c.b, 2)):
        with_path = [w for w in me.link.writes if any(kind(f) == "path" for f in w)]
        assert all(is_media(w[0]) and kind(w[-1]) == "path" for w in with_path)
        media_writes = [w for w in me.link.writes if is_media(w[0])]
        assert media_writes[: limits.path_first] == with_path[: limits.path_first]
        assert limits.path_first + 2 <= len(with_path) <= limits.path_first + 5, len(with_path)
        heard = [voiceframe.parse(d) for d in (c.b if me is c.a else c.a).link.received if kind(d) == "path"]
        assert heard and all(h == voiceframe.PathHint(me.link.slot, rtt_ms) for h in heard)
    assert c.a.engine.report()["bad_frames"] == c.b.engine.report()["bad_frames"] == 0


async def test_a_silent_side_sends_its_reports_alone_after_the_hold() -> None:
    """B says nothing (DTX sends a packet only every 400 ms or so), so most of its reports
    about A find no packet to ride: each such goes by itself once it has waited
    ``feedback_hold``, packed as it leaves."""
    async with call(tone(10), np.zeros(RATE * 10, np.int16)) as c:
        await asyncio.sleep(2.2)
        assert c.running()
    fb = voiceframe.FEEDBACK_TAG
    alone = [w[0] for w in c.b.link.writes if len(w) == 1 and w[0][0] & 0xF0 == fb]
    rode = [f for w in c.b.link.writes if len(w) > 1 for f in w[1:] if f[0] & 0xF0 == fb]
    assert alone and 3 <= len(alone) + len(rode) <= 5, c.b.link.writes
    # packed when it leaves, not when it fell due: the echo names A's newest packet (at most
    # one packet, 80 ms, and a tick old), so the wait is not in A's round trip
    for data in alone:
        report = voiceframe.parse(data)
        assert isinstance(report, voiceframe.Feedback) and 0 <= report.hold_ms <= 80 + 40, report
    stats = c.a.engine.rate.stats()
    assert stats.last_rtt_ms is not None and stats.last_rtt_ms <= 2 * ONE_WAY * 1000 + 100, stats.last_rtt_ms


async def test_a_link_that_is_behind_drops_packets_and_the_call_goes_on() -> None:
    async with call(tone(10), np.zeros(RATE * 10, np.int16)) as c:
        c.a.link.behind = True
        await asyncio.sleep(1.0)
        assert c.running()
        refused = c.a.link.media_refused()
        # every packet of the second was refused (60 ms at the starting rung: standard, as the
        # fake link's 40 ms round trip is quick; 80 ms after the step down)
        assert refused >= 8
        assert c.a.engine.stats.dropped == refused
        assert c.a.link.media_sent() == 0
        changes = cast(list[dict[str, object]], c.a.engine.report()["rate_changes"])
        assert [(ch["rung"], ch["reason"]) for ch in changes] == [("mid", "backlog")], changes
        c.a.link.behind = False
        await wait_for(lambda: c.a.link.media_sent() >= 3, 1.0)
        heard_from = len(c.b.link.received)
        await wait_for(lambda: c.b.sink.onset() is not None, 1.0)
        assert heard_from > 0
        assert c.a.engine.stats.dropped == refused  # nothing dropped once the link caught up
        assert c.running()


async def test_without_feedback_the_sender_only_probes_until_the_link_is_back() -> None:
    # stall_after > the longest normal gap between reports
    limits = CallLimits(stall_after=0.3, probe_every=0.3, feedback_every=0.25, feedback_hold=0.02)
    async with call(tone(10), tone(10, freq=300), limits=limits) as c:
        await wait_for(lambda: c.a.engine.rate.stats().last_rtt_ms is not None, 1.5)
        c.a.link.deaf = True  # A's downlink stalls: no feedback about A's stream comes back
        cut, dropped = time.monotonic(), c.a.engine.stats.dropped
        await asyncio.sleep(1.5)
        assert c.running()
        late = [t for t, d in c.a.link.sent if is_media(d) and t > cut + 0.6]
        # ~11 packets of 80 ms would have gone; once stalled, one probe per 0.3 s
        assert 1 <= len(late) <= 4, len(late)
        assert c.a.engine.stats.dropped - dropped >= 6  # the rest was dropped, never queued
        c.a.link.deaf = False
        back = time.monotonic()
        await asyncio.sleep(0.8)
        resumed = [t for t, d in c.a.link.sent if is_media(d) and t > back + 0.3]
        assert len(resumed) >= 4, "full sending resumes once feedback returns"


async def test_malformed_voice_frames_are_dropped_and_the_real_stream_plays_on() -> None:
    async with call(tone(10), np.zeros(RATE * 10, np.int16)) as c:
        await asyncio.sleep(0.8)
        b = c.b.engine
        slot = c.a.link.slot
        assert b.report()["bad_frames"] == 0

        def media(payload: bytes, ts: int = 0) -> bytes:
            return bytes((0x40 | slot, 200, ts >> 8, ts & 0xFF, 0x80 | 90)) + payload

        malformed = [
            b"",  # empty
            b"\x41",  # a tag and nothing else
            bytes((0x40 | slot, 1, 0, 0)),  # a media header cut short
            bytes((0x40 | slot, 1, 0, 0, 0x80)),  # a whole header, no payload
            b"\x61\x00\x01\x00",  # a feedback frame cut short
            bytes((0x60 | slot,)) + bytes(8) + b"\x00",  # a feedback frame too long
            bytes((0x60 | slot, 0, 0, 0, 0, 0, 0, 0x13, 0x88)),  # concealed 5000 permille
            b"\x50" + bytes(20),  # an unknown voice-plane tag
            media(bytes(1600)),  # over the voice plane's 1500-byte limit
        ]
        rng = random.Random(1234)
        noise = [b"\x40" + rng.randbytes(rng.randrange(0, 5)) for _ in range(40)]  # never a whole header
        for data in malformed + noise:
            b.on_voice(data)  # the link's reader calls this; it must not raise
        expected = len(malformed) + len(noise)
        assert b.report()["bad_frames"] == expected
        # a whole header on A's slot with anything but A's sealed packet: fails authentication
        forged = [media(b"\x03\x00"), media(b"\x78" + bytes(10))]
        forged += [media(rng.randbytes(rng.randrange(17, 120)), rng.randrange(65536)) for _ in range(40)]
        failed = b.crypto.stats.failed_auth
        for data in forged:
            b.on_voice(data)
        assert b.crypto.stats.failed_auth == failed + len(forged)
        assert b.report()["bad_frames"] == expected, "a forgery never reaches the Opus parser"
        # A's key, but Opus packets that break RFC 6716 (what a buggy or hostile member could
        # send): authentic, then refused by the packet check. Sealed at odd ms that A's
        # 20 ms-grained clock never uses, so no nonce repeats and A's stream is not disturbed.
        last = c.a.engine.crypto.sealer.last_ts
        assert last is not None and last > 200
        broken = [
            b"\x03\x00",  # code 3 with zero frames
            b"\x02\xff",  # code 2, first frame longer than the packet
            b"\x80" + bytes(10),  # one 2.5 ms CELT frame, no whole ms
            b"\x03\x7f" + bytes(10),  # 127 frames, over 120 ms
        ]
        key = c.relay.key_of(c.a.link)
        for i, packet in enumerate(broken):
            sealed = StreamSealer(key).seal(200 + i, last - 13 - 20 * i, 0x80 | 90, packet)
            b.on_voice(voiceframe.with_slot(sealed, slot))
        assert b.report()["bad_frames"] == expected + len(broken)
        assert set(b.streams) == {slot}, "no stream was opened for garbage"
        # arbitrary bytes after a valid header at slot 0 (nobody's): dropped, never a crash
        for _ in range(40):
            b.on_voice(b"\x40" + rng.randbytes(rng.randrange(5, 120)))
        after = time.monotonic()
        played = b.streams[slot].jitter.stats(reset=False).played
        await asyncio.sleep(1.2)
        assert c.running()
        assert b.streams[slot].jitter.stats(reset=False).played >= played + 8, "the real stream stalled"
        steady = c.b.sink.audio(after + 0.4, after + 1.2)
        assert steady.size >= RATE // 2
        assert abs(dominant_hz(steady) - TONE_HZ) <= 3.0
        assert rms(steady) > 0.5 * rms(tone(1))
        assert b.report()["bad_frames"] == expected + len(broken)


async def test_until_the_senders_key_arrives_its_frames_are_dropped_and_the_line_says_so() -> None:
    async with call(tone(10), np.zeros(RATE * 10, np.int16), key_delay=1.2) as c:
        keyed = time.monotonic() + 1.2
        await asyncio.sleep(1.1)
        b = c.b.engine
        assert b.crypto.stats.no_key >= 8, "A's frames before its key were not dropped as no key"
        assert b.crypto.stats.opened == 0 and b.streams == {}, "nothing plays without the key"
        assert "waiting for a key" in b.stats.line() and "failed" not in b.stats.line()
        await wait_for(lambda: c.b.sink.onset() is not None, 1.5)
        heard = c.b.sink.onset()
        assert heard is not None and heard > keyed, "audio played before the key could open it"
        dropped = b.crypto.stats.no_key
        await asyncio.sleep(1.2)
        assert c.running()
        assert b.crypto.stats.no_key == dropped, "frames still dropped once the key was here"
        # the line speaks of the last second: it stops saying so at the refresh after the last drop
        await wait_for(lambda: "waiting for a key" not in b.stats.line(), 1.1)
        steady = c.b.sink.audio(heard + 0.3, heard + 1.0)
        assert abs(dominant_hz(steady) - TONE_HZ) <= 3.0 and rms(steady) > 0.5 * rms(tone(1))
        report = b.report()
        assert cast(dict[str, int], report["crypto"])["no_key"] == dropped
        assert report["bad_frames"] == 0


async def test_tampered_and_replayed_frames_are_counted_and_never_played() -> None:
    async with call(tone(10), np.zeros(RATE * 10, np.int16)) as c:
        await wait_for(lambda: sum(map(is_media, c.b.link.received)) >= 6, 1.5)
        b = c.b.engine
        real = [d for d in c.b.link.received if is_media(d)]
        opened = b.crypto.stats.opened
        jitter = b.streams[c.a.link.slot].jitter
        pushed: list[int] = []
        push = jitter.push

        def counting_push(ts_ms: int, *rest: object) -> None:
            pushed.append(ts_ms)
            push(ts_ms, *rest)  # type: ignore[arg-type]

        jitter.push = counting_push  # type: ignore[method-assign]
        for data in real[:4]:  # the relay (or anyone on the path) sends frames again
            b.on_voice(data)
        flipped = []
        for i, data in enumerate(real[-3:]):  # one bit changed: level, payload, tag
            bad = bytearray(data)
            bad[(4, 9, len(data) - 1)[i]] ^= 0x04
            flipped.append(bytes(bad))
        for data in flipped:
            b.on_voice(data)
        b.on_voice(real[-1][:-10])  # cut short
        stats = b.crypto.stats
        assert (stats.replayed, stats.tampered, stats.failed_auth) == (4, 4, 8)
        assert stats.opened == opened
        assert pushed == [], "a dropped frame reached the jitter buffer"
        assert b.report()["bad_frames"] == 0
        await asyncio.sleep(1.1)
        assert c.running() and "8 failed authentication" in b.stats.line()
        assert stats.opened > opened + 5, "the real stream stopped"


async def test_a_member_who_starts_a_new_stream_is_heard_under_the_new_key() -> None:
    """A leaves and joins again as a new stream (its clock starts at 0, a new key, the same
    slot): B, still in the call, switches to the key once it has arrived."""
    relay = FakeRelay()
    links = [FakeLink("amina", relay), FakeLink("dr.chen", relay)]
    relay.connect(links)
    b_sink = ClockedSink()
    b = CallEngine(as_link(links[1]), ClockedSource(np.zeros(RATE * 10, np.int16)), b_sink,
                   crypto=relay.crypto(links[1]))  # fmt: skip
    b_stop, a_stop = asyncio.Event(), asyncio.Event()
    b_task = asyncio.create_task(b.run(b_stop))
    tasks = [b_task]
    try:
        first = CallEngine(as_link(links[0]), ClockedSource(tone(10)), ClockedSink(),
                           crypto=relay.crypto(links[0]))  # fmt: skip
        tasks.append(asyncio.create_task(first.run(a_stop)))
        await wait_for(lambda: b_sink.onset() is not None, 1.5)
        await asyncio.sleep(1.5)  # the first stream's clock is well ahead of where the next starts
        a_stop.set()
        await asyncio.wait_for(tasks[1], 3.0)
        old_key = relay.key_of(links[0])
        a_stop = asyncio.Event()
        second = CallEngine(as_link(links[0]), ClockedSource(tone(10, freq=300)), ClockedSink(),
                            crypto=relay.crypto(links[0], key_delay=0.3))  # fmt: skip
        tasks.append(asyncio.create_task(second.run(a_stop)))
        restarted = time.monotonic()
        await asyncio.sleep(1.6)
        assert relay.key_of(links[0]) != old_key
        assert b.crypto.stats.key_changes == 1
        # the new stream's first frames could not open before its key came: "no key", not forgeries
        assert b.crypto.stats.no_key >= 2 and b.crypto.stats.failed_auth == 0
        assert "failed" not in b.stats.line()
        # heard as soon as its key is here: a new stream, not late frames of the old one
        late = b_sink.audio(restarted + 0.7, restarted + 1.5)
        assert late.size and abs(dominant_hz(late) - 300.0) <= 3.0 and rms(late) > 0.4 * rms(tone(1))
    finally:
        a_stop.set()
        await finish(b_stop, tasks)


async def test_the_desk_does_not_place_a_call_it_cannot_encrypt() -> None:
    calls = DeskCalls(as_link(FakeLink("amina")), "amina")
    with pytest.raises(UsageError, match="encrypted"):
        calls.start(CONSULT, "auto", mic="no-such-device", speaker="no-such-device")
    assert not calls.active and calls.view is None


async def test_mute_stops_sending_and_unmute_resumes() -> None:
    async with call(tone(10), np.zeros(RATE * 10, np.int16)) as c:
        await wait_for(lambda: c.b.sink.onset() is not None, 1.5)
        c.a.engine.muted = True
        muted_at, sent = time.monotonic(), c.a.link.media_sent()
        await asyncio.sleep(1.2)
        assert c.running()
        assert c.a.link.media_sent() == sent, "a muted engine sent media"
        assert c.a.engine.stats.muted  # the status line says so after its once-a-second refresh
        assert rms(c.b.sink.audio(muted_at + 0.6, muted_at + 1.1)) < 100  # the far end hears silence
        c.a.engine.muted = False
        await wait_for(lambda: c.a.link.media_sent() > sent, 0.5)
        # the media clock ran on through the mute: the first packet after it is ~1.2 s later
        ts = [cast(voiceframe.MediaFrame, voiceframe.parse(d)).ts for _, d in c.a.link.sent if is_media(d)]
        gap = (ts[sent] - ts[sent - 1]) % 65536
        assert 1100 <= gap <= 1600, gap


class MoveOnce(AckPhase):
    """The ACK-phase controller asking for one move at a chosen moment (the real one moves
    only on a steady late phase, which a test cannot make the kernel produce)."""

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at

    def shift_ms(self, frame_ms: int, now: float, *, pause: bool, rtt_ms: float | None = None) -> int:
        if self.shifts == 0 and now >= self.at and frame_ms == 60:
            return 20
        return 0


async def test_a_clock_move_sends_one_shorter_packet_and_the_tone_plays_on() -> None:
    """Moving our packet clock (so the kernel's ACKs ride on voice) sends one 40 ms packet in
    place of a 60 ms one: the media clock runs on without a gap or overlap, and the far end
    hears the tone through the move."""
    async with call(tone(10), np.zeros(RATE * 10, np.int16), profile="standard") as c:
        move = c.a.engine.phase = MoveOnce(time.monotonic() + 1.0)
        await wait_for(lambda: move.shifts == 1, 3.0)
        moved_at = time.monotonic()
        await asyncio.sleep(1.0)
        assert c.running()
        heard = c.b.sink.audio(moved_at - 0.4, moved_at + 0.6)
        assert abs(dominant_hz(heard) - TONE_HZ) <= 3.0
        assert rms(heard) > 0.5 * rms(tone(1))  # no hole where the shorter packet went
    ts = [cast(voiceframe.MediaFrame, voiceframe.parse(d)).ts for _, d in c.a.link.sent if is_media(d)]
    steps = [(b - a) % 65536 for a, b in zip(ts, ts[1:], strict=False)]
    assert steps.count(40) == 1 and set(steps) == {40, 60}, steps
    report = c.a.engine.report()
    assert [m[1] for m in cast(list[tuple[float, int, float]], report["clock_moves"])] == [20]
    assert c.b.engine.report()["bad_frames"] == 0


async def test_the_engine_stops_when_the_source_ends() -> None:
    relay = FakeRelay()
    links = [FakeLink("amina", relay), FakeLink("dr.chen", relay)]
    relay.connect(links)
    source, sink = ClockedSource(tone(0.6)), ClockedSink()
    engine = CallEngine(as_link(links[0]), source, sink, crypto=relay.crypto(links[0]))
    stop = asyncio.Event()
    started = time.monotonic()
    await asyncio.wait_for(engine.run(stop), 3.0)
    took = time.monotonic() - started
    assert 0.55 <= took <= 1.5, took
    assert not stop.is_set()
    assert source.stopped and sink.stopped
    assert links[0].voice_listener is None  # the link no longer feeds a finished call
    assert links[0].bulk_allowed.is_set()
    opener = StreamOpener(relay.key_of(links[0]))
    frames = [cast(voiceframe.MediaFrame, voiceframe.parse(d)) for _, d in links[0].sent if is_media(d)]
    packets = [opener.open(f, 0.0)[1] for f in frames]
    covered = sum(1000 * opus.packet_samples(p) // RATE for p in packets)
    assert 560 <= covered <= 720, covered  # all of the 0.6 s went out, the tail padded to a packet


class UnopenableSink(ClockedSink):
    """A speaker PortAudio refuses at start (busy, unplugged between listing and opening)."""

    def start(self) -> None:
        raise VoiceUnavailable("cannot open sound device 'USB Audio': Device unavailable")


async def test_a_speaker_that_fails_to_open_leaves_nothing_running() -> None:
    link, source = FakeLink("amina"), ClockedSource(tone(1))
    crypto = CallCrypto(bytes(32), lambda _m: None)
    engine = CallEngine(as_link(link), source, UnopenableSink(), crypto=crypto)
    with pytest.raises(VoiceUnavailable):
        await asyncio.wait_for(engine.run(asyncio.Event()), 2.0)
    assert link.voice_listener is None
    assert link.bulk_allowed.is_set(), "image and note transfers stay paused"
    assert source.stopped, "the microphone stays open after the call failed to start"


# --- signalling (run_call) --------------------------------------------------------------------


def state(call_id: str, st: str, slots: dict[str, int], outcome: str = "") -> wire.CallState:
    return wire.CallState(call_id, CONSULT, st, "amina", slots, 0, outcome)


async def test_run_call_places_a_call_and_ends_when_the_far_end_hangs_up() -> None:
    link = FakeLink("amina")
    link.answers["call"] = {"call": "abcdefgh", "state": "ringing", "slots": {"amina": 1}}
    lines: list[str] = []
    source, sink = ClockedSource(tone(10)), ClockedSink()
    board = KeyBoard()
    placing = run_call(
        as_link(link), "amina", CONSULT, source, sink, keys=board.device("amina"), on_status=lines.append
    )
    task = asyncio.create_task(placing)
    await wait_for(lambda: bool(link.listeners), 1.0)
    await asyncio.sleep(0.05)
    assert not task.done() and lines == ["ringing"]
    assert board.announced == [(CONSULT, "abcdefgh", "amina")], "the key goes out while it rings"
    link.emit(state("zzzzzzzz", "active", {"x": 1, "y": 2}))  # another consult's call: not ours
    link.emit(state("abcdefgh", "active", {"amina": 1, "dr.chen": 2}))
    await wait_for(lambda: link.media_sent() >= 3, 1.5)
    await asyncio.sleep(1.1)  # one status refresh
    link.emit(state("abcdefgh", "ended", {}, "completed"))
    out = await asyncio.wait_for(task, 3.0)
    assert out.call == "abcdefgh" and out.outcome == "completed"
    assert 1.0 < out.seconds < 3.0
    assert [op for op, _ in link.requests] == ["call"], "the call ended at the far end: no hangup"
    assert any(line.startswith("in call") for line in lines[1:])
    assert link.listeners == [] and link.voice_listener is None
    assert cast(list[object], out.report["seconds"])
    assert board.announced == [(CONSULT, "abcdefgh", "amina")]
    # every media frame went out sealed under the key announced, and nothing else opens them
    opener = StreamOpener(board.keys[(CONSULT, "abcdefgh", "amina")])
    sent = [cast(voiceframe.MediaFrame, voiceframe.parse(d)) for _, d in link.sent if is_media(d)]
    packets = [opener.open(f, 0.0)[1] for f in sent]
    assert all(opus.packet_duration_ms(p) > 0 for p in packets)
    pairs = list(zip(sent, packets, strict=True))
    assert all(len(f.payload) == len(p) + OVERHEAD and p not in f.payload for f, p in pairs)
    crypto = cast(dict[str, object], out.report["crypto"])
    assert crypto["sealed"] == len(sent) and crypto["overhead"] == OVERHEAD == 8


def sealed_tone_frame(key: bytes, slot: int, seq: int = 0) -> bytes:
    """A downlink media frame of a real 60 ms tone packet from ``slot``, sealed under ``key``."""
    packet = opus.Encoder("voip", 16000, 60, "wb").encode(tone(0.06)).packet
    return voiceframe.with_slot(StreamSealer(key).seal(seq, seq * 60, 0x80 | 90, packet), slot)


async def third_member_is_heard(
    engines: list[CallEngine], board: KeyBoard, task: asyncio.Task[CallOutcome]
) -> None:
    """dr.chen's key arrives and a frame of his, from slot 3, is opened and played."""
    await wait_for(lambda: bool(engines), 1.0)
    key = secrets.token_bytes(32)
    board.put(CONSULT, "abcdefgh", "dr.chen", key)
    engines[0].on_voice(sealed_tone_frame(key, 3))
    assert engines[0].crypto.stats.no_key == 0 and 3 in engines[0].streams, "the third member is heard"
    await asyncio.wait_for(task, 3.0)


async def test_a_member_who_joins_while_it_rings_is_heard_by_the_caller() -> None:
    """The states queue up while the caller waits for the ring to end: the first answer's
    state is already old when it is read, and the third member's slot must not be lost."""
    link = FakeLink("amina")
    link.answers["call"] = {"call": "abcdefgh", "state": "ringing", "slots": {"amina": 1}}
    board = KeyBoard()
    engines: list[CallEngine] = []
    task = asyncio.create_task(
        run_call(as_link(link), "amina", CONSULT, ClockedSource(tone(10)), ClockedSink(),
                 keys=board.device("amina"), engine_hook=engines.append, seconds=1.0)
    )  # fmt: skip
    await wait_for(lambda: bool(link.listeners), 1.0)
    link.emit(state("abcdefgh", "active", {"amina": 1, "dr.osei": 2}))
    link.emit(state("abcdefgh", "active", {"amina": 1, "dr.osei": 2, "dr.chen": 3}))  # before it reads
    await third_member_is_heard(engines, board, task)


async def test_a_member_who_joins_while_our_key_is_queued_is_heard_by_the_answerer() -> None:
    """The relay's answer says who was in when we answered; the state of a member who answers
    just after us comes while our key is being queued, before the crypto listens."""
    link = FakeLink("dr.osei")
    link.answers["answer"] = {"call": "abcdefgh", "state": "active", "slots": {"amina": 1, "dr.osei": 2}}
    board = KeyBoard()

    class SlowKeys:  # queueing the key takes a moment (a store write, a sealed message)
        async def announce(self, consult: str, call: str) -> bytes:
            link.emit(state("abcdefgh", "active", {"amina": 1, "dr.osei": 2}))
            await asyncio.sleep(0.05)
            link.emit(state("abcdefgh", "active", {"amina": 1, "dr.osei": 2, "dr.chen": 3}))
            return await board.device("dr.osei").announce(consult, call)

        def lookup(self, consult: str, call: str, member: str) -> bytes | None:
            return board.device("dr.osei").lookup(consult, call, member)

    engines: list[CallEngine] = []
    task = asyncio.create_task(
        run_call(as_link(link), "dr.osei", CONSULT, ClockedSource(tone(10)), ClockedSink(), keys=SlowKeys(),
                 answer=True, call_id="abcdefgh", engine_hook=engines.append, seconds=1.0)
    )  # fmt: skip
    await third_member_is_heard(engines, board, task)


async def test_run_call_answers_and_hangs_up_when_its_seconds_are_up() -> None:
    link = FakeLink("dr.chen")
    link.answers["answer"] = {"call": "abcdefgh", "state": "active", "slots": {"amina": 1, "dr.chen": 2}}
    board = KeyBoard()
    task = asyncio.create_task(
        run_call(
            as_link(link),
            "dr.chen",
            CONSULT,
            ClockedSource(tone(10)),
            ClockedSink(),
            keys=board.device("dr.chen"),
            answer=True,
            seconds=0.8,
        )
    )
    await wait_for(lambda: bool(link.listeners), 1.0)
    assert board.announced == []  # nothing to give out before there is a call to answer
    link.emit(state("abcdefgh", "ringing", {"amina": 1}))
    out = await asyncio.wait_for(task, 3.0)
    assert out.outcome == "hung up"
    assert 0.7 < out.seconds < 1.5
    assert link.requests == [("answer", {"call": "abcdefgh"}), ("hangup", {"call": "abcdefgh"})]
    assert link.media_sent() >= 5
    assert board.announced == [(CONSULT, "abcdefgh", "dr.chen")]


ANSWERED = {"call": "abcdefgh", "state": "active", "slots": {"amina": 1, "dr.chen": 2}}


def answering(link: FakeLink, **kwargs: Any) -> asyncio.Task[CallOutcome]:
    """dr.chen's ``run_call`` answering call abcdefgh with a tone; the relay says it is active."""
    link.answers["answer"] = dict(ANSWERED)
    return asyncio.create_task(
        run_call(as_link(link), "dr.chen", CONSULT, ClockedSource(tone(10)), ClockedSink(),
                 keys=keys_for("dr.chen"), answer=True, call_id="abcdefgh", **kwargs)  # type: ignore[arg-type]
    )  # fmt: skip


def reconnect(link: FakeLink) -> None:
    """The link is back on a new connection, as the real link reports it."""
    link.status = LinkStatus(state="online", rtt=0.04, connects=1)
    link.emit(link.status)


async def test_a_lost_link_shows_as_reconnecting_and_hanging_up_does_not_wait_for_it() -> None:
    link = FakeLink("dr.chen")
    lines: list[str] = []
    stop = asyncio.Event()
    limits = CallLimits(hangup_timeout=5.0, hangup_offline_wait=0.3)
    task = answering(link, stop=stop, on_status=lines.append, limits=limits)
    await wait_for(lambda: any(line.startswith("in call") for line in lines), 2.0)
    link.status = LinkStatus(state="offline", rtt=0.04)  # the relay went away mid-call
    await wait_for(lambda: any(line.startswith("reconnecting") for line in lines), 2.0)
    gone = next(line for line in lines if line.startswith("reconnecting"))
    assert "rtt - " in gone, "no round trip is shown for a link that is not there"
    stop.set()
    started = time.monotonic()
    out = await asyncio.wait_for(task, 3.0)
    assert time.monotonic() - started < 1.0, "the hang-up waits hangup_offline_wait, not hangup_timeout"
    assert out.outcome == "hung up"
    assert link.requests[-1] == ("hangup", {"call": "abcdefgh"}), "still tried, in case the link is back"


async def test_a_call_the_relay_lost_while_we_were_away_ends_as_lost_not_as_a_silent_line() -> None:
    """After a reconnect the relay no longer has the call (it restarted, or our grace ran
    out): answering again says so. Carrying on would look like a live call carrying nothing."""
    link = FakeLink("dr.chen")
    lines: list[str] = []
    stop = asyncio.Event()
    task = answering(link, stop=stop, on_status=lines.append)
    await wait_for(lambda: any(line.startswith("in call") for line in lines), 2.0)
    link.status = LinkStatus(state="offline")
    link.emit(link.status)
    await asyncio.sleep(0.1)
    link.answers["answer"] = NotFound("no call 'abcdefgh' (it may have ended)", code="not_found")
    reconnect(link)
    out = await asyncio.wait_for(task, 3.0)
    assert out.outcome == "lost" and stop.is_set()
    assert any(line.startswith("call lost") for line in lines)
    assert [op for op, _ in link.requests] == ["answer", "answer"], "no hangup for a call the relay lost"


async def test_a_call_the_relay_still_holds_after_a_reconnect_goes_on() -> None:
    link = FakeLink("dr.chen")
    task = answering(link, seconds=2.0)
    await asyncio.sleep(0.5)
    link.status = LinkStatus(state="offline")
    link.emit(link.status)
    await asyncio.sleep(0.1)  # back within the watcher's one-second look: it must still notice
    reconnect(link)
    out = await asyncio.wait_for(task, 4.0)
    assert out.outcome == "hung up" and out.seconds > 1.8, "answered again, and carried on to its end"
    assert [op for op, _ in link.requests] == ["answer", "answer", "hangup"]


async def test_answering_again_after_a_reconnect_is_retried_until_the_relay_answers() -> None:
    """A re-answer that gets no answer (the link dropped again at once) is asked again: a call
    never re-answered would carry our voice nowhere."""
    link = FakeLink("dr.chen")
    task = answering(link, seconds=3.5)
    await asyncio.sleep(0.3)
    link.answers["answer"] = LinkDown("no answer from the relay within 20 s")
    reconnect(link)
    await wait_for(lambda: len(link.requests) >= 2, 2.0)
    link.answers["answer"] = dict(ANSWERED)
    await wait_for(lambda: len(link.requests) >= 3, 2.5)
    out = await asyncio.wait_for(task, 5.0)
    assert out.outcome == "hung up"
    assert [op for op, _ in link.requests] == ["answer", "answer", "answer", "hangup"], "asked again, once"


async def test_run_call_reports_a_declined_call_without_starting_media() -> None:
    link = FakeLink("amina")
    link.answers["call"] = {"call": "abcdefgh", "state": "ringing"}
    source = ClockedSource(tone(10))
    task = asyncio.create_task(
        run_call(as_link(link), "amina", CONSULT, source, ClockedSink(), keys=keys_for("amina"))
    )
    await wait_for(lambda: bool(link.listeners), 1.0)
    link.emit(state("abcdefgh", "ended", {}, "declined"))
    out = await asyncio.wait_for(task, 2.0)
    assert out.outcome == "declined"
    assert source.t0 is None and not link.sent
    assert [op for op, _ in link.requests] == ["call"]


async def test_hanging_up_while_it_rings_cancels_the_call() -> None:
    link = FakeLink("amina")
    link.answers["call"] = {"call": "abcdefgh", "state": "ringing"}
    stop = asyncio.Event()
    source = ClockedSource(tone(10))
    task = asyncio.create_task(
        run_call(as_link(link), "amina", CONSULT, source, ClockedSink(), keys=keys_for("amina"), stop=stop)
    )
    await wait_for(lambda: bool(link.listeners), 1.0)
    await asyncio.sleep(0.1)
    stop.set()
    out = await asyncio.wait_for(task, 2.0)
    assert (out.call, out.outcome) == ("abcdefgh", "cancelled")
    assert [op for op, _ in link.requests] == ["call", "hangup"], "the relay is told, so the ringing stops"
    assert source.t0 is None and not link.sent


async def test_answering_a_named_call_does_not_wait_for_a_ring() -> None:
    link = FakeLink("dr.chen")
    link.answers["answer"] = {"call": "abcdefgh", "state": "active", "slots": {"amina": 1, "dr.chen": 2}}
    source, sink = ClockedSource(tone(10)), ClockedSink()
    run = run_call(
        as_link(link), "dr.chen", CONSULT, source, sink, keys=keys_for("dr.chen"), answer=True,
        call_id="abcdefgh", seconds=0.3,
    )  # fmt: skip
    out = await asyncio.wait_for(run, 2.0)
    assert (out.call, out.outcome) == ("abcdefgh", "hung up")
    assert link.requests == [("answer", {"call": "abcdefgh"}), ("hangup", {"call": "abcdefgh"})]
    assert link.media_sent() >= 2


async def test_answer_takes_a_call_that_rang_before_run_call_listened() -> None:
    link = FakeLink("dr.chen")
    link.call_states[CONSULT] = state("abcdefgh", "ringing", {"amina": 1})  # told on connect
    link.answers["answer"] = {"call": "abcdefgh", "state": "active", "slots": {"amina": 1, "dr.chen": 2}}
    lines: list[str] = []
    source, sink = ClockedSource(tone(10)), ClockedSink()
    run = run_call(
        as_link(link), "dr.chen", CONSULT, source, sink, keys=keys_for("dr.chen"), answer=True, seconds=0.3,
        on_status=lines.append,
    )  # fmt: skip
    out = await asyncio.wait_for(run, 2.0)  # no ring event ever comes: it must not wait for one
    assert (out.call, out.outcome) == ("abcdefgh", "hung up")
    assert link.requests[0] == ("answer", {"call": "abcdefgh"})
    assert "waiting for a call in this consult" not in lines


async def test_answer_ignores_a_call_it_is_already_in_and_waits_for_a_ring() -> None:
    link = FakeLink("dr.chen")
    link.call_states[CONSULT] = state("abcdefgh", "active", {"amina": 1, "dr.chen": 2})
    run = run_call(
        as_link(link),
        "dr.chen",
        CONSULT,
        ClockedSource(tone(10)),
        ClockedSink(),
        keys=keys_for("dr.chen"),
        answer=True,
        limits=CallLimits(answer_wait=0.3),
    )
    with pytest.raises(LinkDown):
        await asyncio.wait_for(run, 2.0)
    assert link.requests == []

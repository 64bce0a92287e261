"""An in-memory ``DeskSession`` for the desk's tests: no relay, no store, no network.

It keeps what the real ``Session`` keeps, in the same shapes: consults with members,
stored messages with per-consult seqs, an outbox of queued lines (seq ``None``) with
honest states, and a mutable link status. The test drives the "network" by hand::

    fake = FakeSession("amina", seed=1)
    k = fake.add_consult("Boy, 6, fever", ["amina", "dr.chen"])
    app = build_app(fake.opener)
    ...
    line = fake.outbox[-1]          # what the app queued
    fake.ack(line.id)               # the relay stored it: next seq, state "stored"
    fake.deliver(line.id)           # every member's device has it
    fake.read(line.id)              # every member has read it
    fake.receive(k, "dr.chen", "Hello")

Every change the relay would report (``receive``, ``ack``, ``fail``, ``deliver``, ``read``,
``set_status``, a new consult) calls the callbacks registered with ``on_event`` with a
small ``FakeEvent`` whose ``.consult`` names the consult (``None`` for a link status change
and for a refusal, which like the real ``Rejected`` names no consult), so that
``medcomm.app.ports.consult_of`` works on it. Times are fixed: each new message is one
``tick_ms`` after the previous one, from ``start_ms``; ids come from a seeded generator.

Calls (``fake.calls``, a ``FakeCalls`` in the shape of ``session.call.DeskCalls``) are
driven the same way, and record what the desk asked::

    fake.calls.ring(k, "dr.chen")      # a call rings for us in k (a CallState reaches on_event)
    fake.calls.connect()               # the call the desk placed or answered is up
    fake.calls.meters("in call 0:05 · up 9.8 kbit/s · ...")
    fake.calls.end("completed")
    fake.calls.fail_next_start(VoiceUnavailable("PortAudio is missing: ..."))
    fake.calls.asked                   # [("answer", k, "auto"), ("mute", True), ...]

Voice notes (``FakeNotes``-like attributes on the session itself): a recording is a
``FakeRecording`` whose ``seconds`` and ``ended`` the test sets; ``record_note_stop`` makes it
a pending note (``fake.pending``, shown as queued), and ``send_pending_notes`` moves every
pending note into the outbox when the status is online (LinkDown otherwise), from where
``ack``/``deliver``/``read`` move it like a text message::

    fake.fail_next_record(VoiceUnavailable("no microphone found on this machine"))
    fake.recording.seconds = 7          # what the bar shows at its next tick
    note = fake.add_note(k, "dr.chen", 12, 9400)   # a stored note, not on this device yet
    fake.hold_fetch = True              # play_note reports (0, 0) and waits for finish_fetch()
    fake.hold_playback = True           # a note plays until stop_note() or finish_playing()
    fake.notes_asked                    # [("start", k), ("stop", k, id), ("send",), ("play", id), ...]

Images come from ``FakeImages`` (``tests/harness/fake_images.py``): ``add_image``, the
``hold_*`` switches and ``images_asked``. The consult workflow (case card, status,
follow-ups, the triage queue) comes from ``FakeCasework`` (``tests/harness/fake_casework.py``),
which folds with the real core: ``add_case``, ``add_status``, ``add_followup_message`` and
``workflow_asked``.

Safety numbers are made by the real ``core.safety`` from keys derived from each name (and
how often its keys changed), so they are fixed and equal on both sides. Every other member
starts "unverified"; a test sets states and changes keys by hand::

    fake.key_states["dr.osei"] = "verified"
    fake.change_keys("dr.osei")         # a new device: a new number, and "changed" if verified
    fake.keys_failure = LinkDown("offline: the relay is not reachable")
    fake.hold_keys = True               # verifications waits for release_keys()
    fake.keys_asked                     # [("verifications", k), ("confirm", "dr.osei", number)]
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from medcomm.adapters.localstore import Line
from medcomm.core import safety
from medcomm.core.wire import KINDS, CallState
from medcomm.errors import LinkDown, MedcommError, NotFound, ProfileError, UsageError
from medcomm.session.call import CallView
from medcomm.session.verify import Verification
from tests.harness.fake_casework import FakeCasework
from tests.harness.fake_images import FakeImages

START_MS = 1_709_629_200_000  # 2024-03-05 09:00:00 UTC: never "today", so lists show "05 Mar"
TICK_MS = 60_000
CONSULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class FakeStatus:
    """The link status the status line shows; tests change it with ``set_status``."""

    state: str = "online"
    rtt: float | None = 0.25
    last_contact: float | None = None
    error: str | None = None
    connect_started: float | None = None
    caught_up: float | None = 1.0  # not None: caught up, so no "syncing…"


@dataclass(frozen=True)
class FakeEvent:
    kind: str  # accepted | acked | rejected | marks | opened | status
    consult: str | None
    id: str | None = None
    msg: Any = None  # an accepted request message: like the real event's, .consult and .kind


@dataclass(frozen=True)
class FakeMsg:
    consult: str
    kind: int  # wire.KINDS


@dataclass
class FakeRecording:
    """A voice note being recorded: the test says how long it is and whether it stopped
    by itself (the length limit, or the microphone went away)."""

    consult: str
    seconds: float = 0.0
    ended: bool = False


@dataclass
class FakeNotesResult:
    """What one ``send_pending_notes`` round did (``transfer.NotesResult``'s shape)."""

    queued: list[Line]
    failed: list[tuple[Line, MedcommError]]


def note_text(seconds: float, size: int) -> str:
    """As ``localstore.note_text`` words it."""
    secs = int(round(seconds))
    return f"voice note {secs // 60}:{secs % 60:02d} ({size / 1000:.1f} KB)"


@dataclass
class FakeConsult:
    id: str
    title: str
    members: list[str]
    messages: list[Line] = field(default_factory=list)  # stored, in seq order
    seqs: list[int] = field(default_factory=list)  # the seqs of messages, for bisect
    read_upto: int = 0  # this user's read mark

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0


class FakeCalls:
    """Satisfies ``medcomm.app.ports.CallControls``: one call at a time, no sound, no relay.

    Like the real ``DeskCalls`` it keeps ``view`` (a real ``CallView``) and ``ringing``,
    calls ``changed`` whenever either changes, and sends each call state to the session's
    ``on_event`` callbacks as the link would. Unlike it, everything happens at once: a hang
    up ends the call before ``hangup`` returns.
    """

    def __init__(self, session: FakeSession) -> None:
        self.session = session
        self.view: CallView | None = None
        self.ringing: dict[str, CallState] = {}
        self.changed: Callable[[], None] = lambda: None
        self.asked: list[tuple[object, ...]] = []  # what the desk asked, in order
        self._failure: MedcommError | None = None
        self._active = False
        self._calls = 0

    # --- the CallControls protocol ----------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active

    def incoming(self) -> CallState | None:
        return next(reversed(self.ringing.values()), None)

    def start(self, consult: str, profile: str = "auto") -> None:
        self.asked.append(("start", consult, profile))
        self._open_devices()
        self.view = CallView(consult, self._call_id(), "ringing-out", [], line="ringing", profile=profile)
        self._active = True
        self.changed()

    def answer(self, consult: str, profile: str = "auto") -> None:
        self.asked.append(("answer", consult, profile))
        self._open_devices()
        ringing = self.ringing.pop(consult, None)
        call = ringing.call if ringing else ""
        peers = [u for u in (ringing.slots if ringing else {}) if u != self.session.me]
        self.view = CallView(consult, call, "connecting", peers, profile=profile)
        self._active = True
        self.changed()

    async def decline(self, consult: str) -> None:
        self.asked.append(("decline", consult))
        state = self.ringing.pop(consult, None)
        if state is not None:
            self._emit(replace(state, state="ended", by=self.session.me, outcome="declined"))
        self.changed()

    def hangup(self) -> None:
        self.asked.append(("hangup",))
        if self._active:
            self.end("hung up")

    def mute(self, on: bool | None = None) -> bool:
        if self.view is None:
            return False
        self.view.muted = (not self.view.muted) if on is None else on
        self.asked.append(("mute", self.view.muted))
        self.changed()
        return self.view.muted

    # --- the far end and the engine, driven by the test ---------------------------------------

    def ring(self, consult: str, by: str) -> CallState:
        """``by`` calls ``consult``: the call rings for us."""
        state = CallState(self._call_id(), consult, "ringing", by, {by: 1}, self.session.now_ms, "")
        self.ringing[consult] = state
        self._emit(state)
        self.changed()
        return state

    def stop_ringing(self, consult: str, outcome: str = "missed") -> None:
        """The caller gave up (or nobody answered in time)."""
        state = self.ringing.pop(consult)
        self._emit(replace(state, state="ended", outcome=outcome))
        self.changed()

    def connect(self, *peers: str) -> None:
        """The placed or answered call is up (``peers``: who else is in; by default the
        consult's other members)."""
        view = self._view()
        others = [m for m in self.session.consults[view.consult].members if m != self.session.me]
        view.peers = list(peers) or view.peers or others
        view.state, view.line = "in call", "in call 0:00"
        self.changed()

    def meters(self, line: str) -> None:
        """The engine's once-a-second meters line."""
        self._view().line = line
        self.changed()

    def end(self, outcome: str = "completed", error: str | None = None) -> None:
        """The call is over (the far end hung up, or it failed with ``error``)."""
        view = self._view()
        view.state, view.line, view.error = "ended", f"call {outcome}", error
        self._active = False
        self.changed()

    def fail_next_start(self, error: MedcommError) -> None:
        """The next ``start`` or ``answer`` raises ``error`` (a missing PortAudio or device)."""
        self._failure = error

    # --- inside -----------------------------------------------------------------------------

    def _open_devices(self) -> None:
        if self._failure is not None:
            error, self._failure = self._failure, None
            raise error
        if self._active:
            raise UsageError("already in a call: hang up first")

    def _view(self) -> CallView:
        if self.view is None:
            raise AssertionError("no call: start or answer one first")
        return self.view

    def _emit(self, state: CallState) -> None:
        self.session._emit(state)

    def _call_id(self) -> str:
        self._calls += 1
        return f"call{self._calls:04d}"


class FakeSession(FakeImages, FakeCasework):
    """Satisfies ``medcomm.app.ports.DeskSession`` in memory."""

    def __init__(
        self,
        me: str = "amina",
        *,
        seed: int | None = None,
        start_ms: int = START_MS,
        tick_ms: int = TICK_MS,
    ) -> None:
        self._me = me
        self._rng = random.Random(seed)
        self.now_ms = start_ms
        self.tick_ms = tick_ms
        self.status = FakeStatus()
        self.consults: dict[str, FakeConsult] = {}
        self.outbox: list[Line] = []  # queued and failed lines, oldest first
        self.callbacks: list[Callable[[Any], None]] = []
        self.events: list[FakeEvent | CallState] = []
        self.calls = FakeCalls(self)
        # What the app asked for, in order.
        self.queued: list[tuple[str, str]] = []  # (consult, text) of queue_text
        self.read_calls: list[str] = []  # consults of mark_read
        self.open_calls: list[tuple[str, list[str], float]] = []  # open_consult arguments
        # Failures a test can arm.
        self.session_failure: MedcommError | None = None  # the opener raises it
        self.open_failure: MedcommError | None = None  # open_consult raises it
        self.directory: dict[str, str] = {}  # extra enrolled users (name -> role) for users()
        self.queue_failure: MedcommError | None = None  # queue_text raises it
        self.opened = 0
        self.closed = 0
        # Voice notes.
        self.recording: FakeRecording | None = None
        self.pending: list[Line] = []  # recorded here, not uploaded yet (queued, or failed)
        self.notes_asked: list[tuple[object, ...]] = []  # what the desk asked, in order
        self.note_sizes: dict[str, int] = {}  # note id -> bytes of its audio
        self.on_device: set[str] = set()  # notes whose audio is here (own recordings are)
        self.bytes_per_second = 2000  # 16 kbit/s Opus
        self.record_failure: MedcommError | None = None  # the next record_note_start raises it
        self.save_failure: MedcommError | None = None  # the next record_note_stop raises it
        self.play_failure: MedcommError | None = None  # the next play_note raises it
        self.note_refusal: MedcommError | None = None  # send rounds refuse every note with it
        self.hold_fetch = False
        self.hold_playback = False
        self.playing: str | None = None  # the note playing now
        self.fetch_progress: Callable[[int, int], None] | None = None  # the desk's, while fetching
        self._fetched = asyncio.Event()
        self._played = asyncio.Event()
        # Safety numbers.
        self.key_states: dict[str, str] = {}  # member -> verified | changed (absent: unverified)
        self.key_changes: dict[str, int] = {}  # member -> how often their device keys changed
        self.keys_failure: MedcommError | None = None  # verifications and confirm_member raise it
        self.hold_keys = False
        self.keys_asked: list[tuple[str, ...]] = []
        self._keys_released = asyncio.Event()
        self.init_images()
        self.init_casework()

    # --- the DeskSession protocol ---------------------------------------------------------

    @property
    def me(self) -> str:
        return self._me

    def overview(self) -> list[dict[str, object]]:
        rows = []
        for c in sorted(self.consults.values(), key=lambda c: c.id):
            last = c.messages[-1] if c.messages else None
            others_unread = [
                m for m in c.messages if m.seq > c.read_upto and m.sender != self.me and m.kind != "system"
            ]
            mine = max((m.seq for m in c.messages if m.sender == self.me and m.kind != "system"), default=0)
            waiting = [
                m.time for m in c.messages if m.seq > mine and m.sender != self.me and m.kind != "system"
            ]
            rows.append(
                {
                    "id": c.id,
                    "title": c.title,
                    "members": list(c.members),
                    "last_seq": c.last_seq,
                    "last_time": last.time if last else None,
                    "queued": sum(1 for q in self.outbox if q.consult == c.id and q.state == "queued"),
                    "last_sender": last.sender if last else None,
                    "last_text": last.text if last else "",
                    "unread": len(others_unread),
                    "waiting_since": min(waiting) if waiting else None,
                }
            )
        rows.sort(key=lambda r: -(r["last_time"] or 0))  # type: ignore[operator]
        return rows

    def page(self, consult: str, before: int | None = None, limit: int = 50) -> list[Line]:
        """The last ``limit`` stored messages with seq < ``before`` (default: the newest),
        plus the queued ones when paging from the end."""
        c = self._consult(consult)
        end = len(c.seqs) if before is None else bisect.bisect_left(c.seqs, before)
        lines = [self._view(c, m) for m in c.messages[max(0, end - limit) : end]]
        if before is None:
            lines += self._queued(consult)
        return lines

    def lines_since(self, consult: str, since: int) -> list[Line]:
        c = self._consult(consult)
        start = bisect.bisect_right(c.seqs, since)
        return [self._view(c, m) for m in c.messages[start:]] + self._queued(consult)

    def outbox_count(self) -> int:
        return sum(1 for q in self.outbox if q.state == "queued")

    def on_event(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    async def queue_text(self, consult: str, text: str) -> Line:
        self.queued.append((consult, text))
        if self.queue_failure is not None:
            raise self.queue_failure
        self._consult(consult)
        if not text.strip():
            raise UsageError("empty message: nothing to send")
        line = Line(consult, None, self._hex_id(), self.me, self._tick(), "text", text, "queued")
        self.outbox.append(line)
        return line

    async def open_consult(self, title: str, others: list[str], timeout: float) -> str:
        self.open_calls.append((title, list(others), timeout))
        if self.open_failure is not None:
            raise self.open_failure
        consult = self.add_consult(title, [self.me, *others])
        self._emit(FakeEvent("opened", consult))
        return consult

    async def users(self, timeout: float) -> list[dict[str, str]]:
        """The directory: everyone in a consult here, plus ``directory`` set by a test."""
        names = {m for c in self.overview() for m in c["members"]} | set(self.directory)  # type: ignore[attr-defined]
        return [{"name": n, "role": self.directory.get(n, "doctor")} for n in sorted(names) if n != self.me]

    async def mark_read(self, consult: str) -> None:
        self.read_calls.append(consult)
        c = self._consult(consult)
        c.read_upto = c.last_seq

    # --- voice notes (the DeskSession protocol) ---------------------------------------------

    def record_note_start(self, consult: str) -> FakeRecording:
        self.notes_asked.append(("start", consult))
        if self.record_failure is not None:
            error, self.record_failure = self.record_failure, None
            raise error
        self._consult(consult)
        if self.recording is not None:
            raise UsageError("a voice note is already being recorded")
        self.recording = FakeRecording(consult)
        return self.recording

    async def record_note_stop(self) -> str:
        recording, self.recording = self.recording, None
        if recording is None:
            raise UsageError("no voice note is being recorded")
        if self.save_failure is not None:
            error, self.save_failure = self.save_failure, None
            self.notes_asked.append(("stop", recording.consult, None))
            raise error
        size = max(1, int(recording.seconds * self.bytes_per_second))
        note_id = self._hex_id()
        line = Line(
            recording.consult, None, note_id, self.me, self._tick(), "note",
            note_text(recording.seconds, size), "queued",
        )  # fmt: skip
        self.pending.append(line)
        self.note_sizes[note_id] = size
        self.on_device.add(note_id)
        self.notes_asked.append(("stop", recording.consult, note_id))
        return note_id

    def record_note_cancel(self) -> None:
        if self.recording is not None:
            self.notes_asked.append(("cancel", self.recording.consult))
        self.recording = None

    def pending_notes(self, consult: str) -> list[Line]:
        return [p for p in self.pending if p.consult == consult]

    def pending_note_count(self) -> int:
        return sum(1 for p in self.pending if p.state == "queued")

    async def send_pending_notes(self, timeout: float) -> FakeNotesResult:
        """Upload every pending note at once: into the outbox (still "queued" until ``ack``)."""
        self.notes_asked.append(("send",))
        if self.status.state != "online":
            raise LinkDown("the link is down")
        result = FakeNotesResult([], [])
        for note in [p for p in self.pending if p.state == "queued"]:
            if self.note_refusal is not None:
                failed = replace(note, state="failed")
                self.pending[self.pending.index(note)] = failed
                result.failed.append((failed, self.note_refusal))
            else:
                self.pending.remove(note)
                self.outbox.append(note)
                result.queued.append(note)
        return result

    async def play_note(self, note_id: str, progress: Callable[[int, int], None] | None = None) -> float:
        self.notes_asked.append(("play", note_id))
        if self.play_failure is not None:
            error, self.play_failure = self.play_failure, None
            raise error
        self._note(note_id)
        size = self.note_sizes.get(note_id, 1)
        if note_id not in self.on_device:
            self.fetch_progress = progress
            if progress is not None:
                progress(0, 0)
            if self.hold_fetch:
                self._fetched.clear()
                await self._fetched.wait()
            if progress is not None:
                progress(size, size)
            self.fetch_progress = None
            self.on_device.add(note_id)
        self.playing = note_id
        try:
            if self.hold_playback:
                self._played.clear()
                await self._played.wait()
        finally:
            self.playing = None
        return size / self.bytes_per_second

    def stop_note(self) -> None:
        if self.playing is not None:
            self.notes_asked.append(("stop_playing", self.playing))
        self._played.set()

    # --- voice notes, driven by the test ----------------------------------------------------

    def add_note(
        self, consult: str, sender: str, seconds: float, size: int, *, on_device: bool = False
    ) -> Line:
        """A stored voice note (from someone else, or this user's, already sent)."""
        line = self.add_message(consult, sender, note_text(seconds, size), kind="note")
        self.note_sizes[line.id] = size
        if on_device:
            self.on_device.add(line.id)
        return line

    def add_pending_note(self, consult: str, seconds: float, size: int) -> Line:
        """A note recorded on this device (by an earlier run) that waits to be uploaded."""
        self._consult(consult)
        line = Line(
            consult, None, self._hex_id(), self.me, self._tick(), "note", note_text(seconds, size), "queued"
        )
        self.pending.append(line)
        self.note_sizes[line.id] = size
        self.on_device.add(line.id)
        return line

    def fail_next_record(self, error: MedcommError) -> None:
        """The next ``record_note_start`` raises ``error`` (no PortAudio, no microphone)."""
        self.record_failure = error

    def finish_fetch(self) -> None:
        self._fetched.set()

    def finish_playing(self) -> None:
        self._played.set()

    def _note(self, note_id: str) -> Line:
        for c in self.consults.values():
            for line in self.lines(c.id):
                if line.id == note_id and line.kind == "note":
                    return line
        for line in self.pending:
            if line.id == note_id:
                return line
        raise NotFound(f"no voice note {note_id} on this device")

    # --- safety numbers ---------------------------------------------------------------------

    async def verifications(self, consult: str, timeout: float) -> list[Verification]:
        self.keys_asked.append(("verifications", consult))
        if self.hold_keys:
            await asyncio.wait_for(self._keys_released.wait(), timeout)
        if self.keys_failure is not None:
            raise self.keys_failure
        return [self._verification(m) for m in self._consult(consult).members if m != self.me]

    async def confirm_member(self, them: str, number: str, timeout: float) -> Verification:
        self.keys_asked.append(("confirm", them, number))
        if self.keys_failure is not None:
            raise self.keys_failure
        if "".join(number.split()) != self.safety_number(them):
            raise UsageError(f"that is not the current safety number with {them}: show it again and compare")
        self.key_states[them] = "verified"
        return self._verification(them)

    def safety_number(self, them: str) -> str:
        """The number the real core makes from this fake's keys of ``me`` and ``them``."""
        return safety.safety_number(self.me, [self._device_key(self.me)], them, [self._device_key(them)])

    def change_keys(self, name: str) -> None:
        """``name`` has new device keys: a new number, and "changed" if they were verified."""
        self.key_changes[name] = self.key_changes.get(name, 0) + 1
        if self.key_states.get(name) == "verified":
            self.key_states[name] = "changed"

    def release_keys(self) -> None:
        self._keys_released.set()

    def _device_key(self, name: str) -> bytes:
        return hashlib.sha256(f"{name}/{self.key_changes.get(name, 0)}".encode()).digest()

    def _verification(self, them: str) -> Verification:
        return Verification(them, self.safety_number(them), self.key_states.get(them, "unverified"), 1)

    # --- opening, as build_app expects ----------------------------------------------------

    def opener(self) -> AbstractAsyncContextManager[FakeSession]:
        """For ``build_app(fake.opener)``: yields this fake, or raises ``session_failure``."""
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[FakeSession]:
        if self.session_failure is not None:
            raise self.session_failure
        self.opened += 1
        try:
            yield self
        finally:
            self.closed += 1

    def without_profile(self, reason: str = "no profile in /home/amina/.local/share/medcomm") -> FakeSession:
        """Make the opener fail like a device that never ran ``medcomm login``."""
        self.session_failure = ProfileError(reason)
        return self

    # --- building a world (no events: as if already in the store) -------------------------

    def add_consult(self, title: str, members: Iterable[str], *, consult: str | None = None) -> str:
        members = list(members)
        if self.me not in members:
            members.insert(0, self.me)
        cid = consult or self._consult_id()
        self.consults[cid] = FakeConsult(cid, title, members)
        return cid

    def add_message(
        self,
        consult: str,
        sender: str,
        text: str,
        *,
        kind: str = "text",
        state: str = "stored",
        time: int | None = None,
        msg_id: str | None = None,
        data: dict[str, object] | None = None,
    ) -> Line:
        """A stored message; ``state`` matters only for this user's own messages (others'
        are "delivered" until this user's read mark passes them, then "read")."""
        c = self._consult(consult)
        seq = c.last_seq + 1
        line = Line(
            consult, seq, msg_id or self._hex_id(), sender, time or self._tick(), kind, text, state, data
        )
        c.messages.append(line)
        c.seqs.append(seq)
        return line

    def add_messages(self, consult: str, count: int, senders: tuple[str, ...] = ("dr.chen", "amina")) -> None:
        """``count`` short stored messages, alternating senders (for paging tests)."""
        c = self._consult(consult)
        for _ in range(count):
            seq = c.last_seq + 1
            sender = senders[seq % len(senders)]
            c.messages.append(
                Line(consult, seq, self._hex_id(), sender, self._tick(), "text", f"message {seq}", "stored")
            )
            c.seqs.append(seq)

    def add_queued(self, consult: str, text: str, *, failed: bool = False) -> Line:
        """A line already in the outbox (queued, or refused by the relay and kept)."""
        self._consult(consult)
        line = Line(consult, None, self._hex_id(), self.me, self._tick(), "text", text, "queued")
        if failed:
            line = replace(line, state="failed")
        self.outbox.append(line)
        return line

    # --- the "network": each of these is reported to the app -------------------------------

    def receive(self, consult: str, sender: str, text: str, *, kind: str = "text") -> Line:
        line = self.add_message(consult, sender, text, kind=kind)
        msg = FakeMsg(consult, KINDS[kind]) if kind == "request" else None
        self._emit(FakeEvent("accepted", consult, line.id, msg))
        return line

    def ack(self, msg_id: str) -> Line:
        """The relay stored a queued message: it leaves the outbox with the next seq."""
        queued = self._outbox_line(msg_id)
        self.outbox.remove(queued)
        line = self.add_message(
            queued.consult,
            self.me,
            queued.text,
            kind=queued.kind,
            state="stored",
            msg_id=msg_id,
            data=queued.data,
        )
        self._emit(FakeEvent("acked", queued.consult, msg_id))
        return line

    def fail(self, msg_id: str) -> Line:
        """The relay refused a queued message: it stays in the outbox as "failed"."""
        queued = self._outbox_line(msg_id)
        failed = replace(queued, state="failed")
        self.outbox[self.outbox.index(queued)] = failed
        self._emit(FakeEvent("rejected", None, msg_id))
        return failed

    def deliver(self, msg_id: str) -> None:
        """Every other member's device has this message (and all before it)."""
        self._mark(msg_id, "delivered", ("stored",))

    def read(self, msg_id: str) -> None:
        """Every other member has read this message (and all before it)."""
        self._mark(msg_id, "read", ("stored", "delivered"))

    def set_status(self, **changes: object) -> None:
        for name, value in changes.items():
            if not hasattr(self.status, name):
                raise AttributeError(name)
            setattr(self.status, name, value)
        self._emit(FakeEvent("status", None))

    # --- helpers for tests ----------------------------------------------------------------

    def lines(self, consult: str) -> list[Line]:
        return self.lines_since(consult, 0)

    def find(self, text: str) -> Line:
        for c in self.consults.values():
            for line in self.lines(c.id):
                if line.text == text:
                    return line
        raise KeyError(text)

    # --- inside ---------------------------------------------------------------------------

    def _consult(self, consult: str) -> FakeConsult:
        try:
            return self.consults[consult]
        except KeyError:
            raise NotFound(f"no consult {consult} on this device") from None

    def _view(self, c: FakeConsult, line: Line) -> Line:
        if line.sender == self.me:
            return line
        return replace(line, state="read" if line.seq <= c.read_upto else "delivered")  # type: ignore[operator]

    def _queued(self, consult: str) -> list[Line]:
        return [q for q in self.outbox if q.consult == consult]

    def _outbox_line(self, msg_id: str) -> Line:
        for q in self.outbox:
            if q.id == msg_id:
                return q
        raise KeyError(f"{msg_id} is not in the outbox")

    def _mark(self, msg_id: str, state: str, before: tuple[str, ...]) -> None:
        for c in self.consults.values():
            target = next((m for m in c.messages if m.id == msg_id), None)
            if target is None:
                continue
            for i, m in enumerate(c.messages):
                if m.seq <= target.seq and m.sender == self.me and m.state in before:  # type: ignore[operator]
                    c.messages[i] = replace(m, state=state)
            self._emit(FakeEvent("marks", c.id, msg_id))
            return
        raise KeyError(f"{msg_id} is not a stored message")

    def _emit(self, event: FakeEvent | CallState) -> None:
        self.events.append(event)
        for callback in list(self.callbacks):
            callback(event)

    def _tick(self) -> int:
        self.now_ms += self.tick_ms
        return self.now_ms

    def _hex_id(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _consult_id(self) -> str:
        while True:
            cid = "".join(self._rng.choice(CONSULT_ALPHABET) for _ in range(6))
            if cid not in self.consults:
                return cid

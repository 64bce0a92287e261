"""What the app needs from a session: the real ``Session`` and the tests' fake both fit.

The app never touches sockets or the store; it calls these methods and reacts to the
callbacks registered with ``on_event`` (delivery events, link status changes, call states).
Calls go through ``calls`` (the real one is ``medcomm.session.call.DeskCalls``): the desk
only reads what to show and asks for the few things a user can do to a call.

Voice notes: ``record_note_start`` opens the microphone (errors raise there), the desk reads
the recording's ``seconds`` once a second for its bar, and ``record_note_stop`` makes the note
durable on the device (a pending note: ``pending_notes`` shows it as queued) before
``send_pending_notes`` uploads it and queues its message in the outbox. ``play_note`` opens
the speaker, fetches the note if it is not on the device, and plays it until it ends,
``stop_note`` is called, or the caller is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from medcomm.adapters.localstore import Line


class LinkStatusView(Protocol):
    state: str
    rtt: float | None
    last_contact: float | None
    error: str | None
    connect_started: float | None
    caught_up: float | None


class LiveCall(Protocol):
    """The call the desk carries (``session.call.CallView``): what the call bar shows."""

    consult: str
    call: str
    state: str  # ringing-out | connecting | in call | ended
    peers: list[str]
    line: str  # the engine's one-line meters, refreshed at most once a second
    muted: bool
    profile: str
    error: str | None


class IncomingCall(Protocol):
    """A call ringing for us (a ``wire.CallState``, read-only)."""

    @property
    def consult(self) -> str: ...

    @property
    def call(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def by(self) -> str: ...

    @property
    def slots(self) -> dict[str, int]: ...


class CallControls(Protocol):
    """One call at a time. ``start``/``answer`` open the sound devices before returning, so
    a missing PortAudio or device raises there (``VoiceUnavailable``, ``UsageError``) for
    the desk to show; ``changed`` is called from the event loop when ``view`` or the
    ringing calls change, at most once a second for meters."""

    changed: Callable[[], None]

    @property
    def view(self) -> LiveCall | None: ...

    @property
    def ringing(self) -> Mapping[str, IncomingCall]: ...  # consult -> the call ringing there

    @property
    def active(self) -> bool: ...

    def incoming(self) -> IncomingCall | None: ...

    def start(self, consult: str, profile: str = "auto") -> None: ...

    def answer(self, consult: str, profile: str = "auto") -> None: ...

    async def decline(self, consult: str) -> None: ...

    def hangup(self) -> None: ...

    def mute(self, on: bool | None = None) -> bool: ...


class NoteRecording(Protocol):
    """A voice note being recorded (the real one is ``session.service._DeskRecording``)."""

    @property
    def consult(self) -> str: ...

    @property
    def seconds(self) -> float: ...  # audio recorded so far

    @property
    def ended(self) -> bool: ...  # stopped by itself: the note's length limit, or no microphone any more


class NotesSent(Protocol):
    """What one round of ``send_pending_notes`` did (``session.transfer.NotesResult``):
    ``queued`` outbox items and ``failed`` (pending note, error) pairs, each with ``.consult``."""

    queued: list[Any]
    failed: list[tuple[Any, Exception]]


class DeskSession(Protocol):
    @property
    def me(self) -> str: ...

    @property
    def calls(self) -> CallControls: ...

    @property
    def status(self) -> LinkStatusView: ...

    def overview(self) -> list[dict[str, object]]: ...

    def page(self, consult: str, before: int | None = None, limit: int = 50) -> list[Line]: ...

    def lines_since(self, consult: str, since: int) -> list[Line]: ...

    def outbox_count(self) -> int: ...

    def on_event(self, callback: Callable[[Any], None]) -> None: ...

    async def queue_text(self, consult: str, text: str) -> Any: ...

    async def open_consult(self, title: str, others: list[str], timeout: float) -> str: ...

    async def users(self, timeout: float) -> list[dict[str, str]]: ...

    async def mark_read(self, consult: str) -> None: ...

    # voice notes
    def record_note_start(self, consult: str) -> NoteRecording: ...

    async def record_note_stop(self) -> str: ...  # the note's id, once it is durable here

    def record_note_cancel(self) -> None: ...

    def pending_notes(self, consult: str) -> list[Line]: ...  # recorded, not yet in the outbox

    def pending_note_count(self) -> int: ...

    async def send_pending_notes(self, timeout: float) -> NotesSent: ...

    async def play_note(self, note_id: str, progress: Callable[[int, int], None] | None = None) -> float: ...

    def stop_note(self) -> None: ...


def caller_of(ring: IncomingCall) -> str:
    """Who a ringing call is from: its caller, or who is in it once others have answered
    (a call in a consult of three goes on while it still rings for the third)."""
    if ring.state == "ringing":
        return ring.by
    return ", ".join(ring.slots) or ring.by


def consult_of(event: Any) -> str | None:
    """The consult an event changes, if any (message accepted, acknowledged, marks)."""
    msg = getattr(event, "msg", None)
    if msg is not None:
        return str(msg.consult)
    consult = getattr(event, "consult", None)
    return str(consult) if consult else None

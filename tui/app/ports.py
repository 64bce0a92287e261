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

Images (``medcomm.session.deskimages`` behind the real one): ``share_image`` prepares a file,
makes it durable on the device (its ``step`` hears ``"saved"`` then: ``pending_images``
shows it as queued) and returns once the relay stored the message (LinkDown: it stays on
the device and ``send_pending_images`` sends it, and the tiles of every image and the
originals members asked for, when the link is up). ``image_summaries`` says what of each
image is where, for the conversation's preview lines. ``open_image`` gives the viewer an
``ImageHandle``: its first view, tiles fetched in the order asked, and for a DICOM slice
another window, made from the original (asked of the sender's device when it keeps it).
``continue_images_in_background`` hands what is still to upload to a background ``medcomm
sync`` when the desk closes.

The consult workflow (``medcomm.session.casework`` behind the real one): reads fold the
consult's case, status and follow-up messages, this device's queued ones included, into a
``ConsultState`` (``consult_state``), the triage queue (``triage_queue``: the session's own
clock and time zone unless ``now_ms`` is given) and a patient's other consults
(``linked_consults``). Writes check the change against that state with the pure core first
(``UsageError`` says why it cannot be done, and nothing is queued), then queue it in the
outbox like a chat line and return at once; ``update_case`` returns None when the card
already says that. ``change_status`` is the core's ``set`` (the fake's ``set_status`` drives
the link status). ``assign`` adds the user as a member first when needed, which needs the
link (``LinkDown`` otherwise).

Safety numbers (``medcomm.session.verify`` behind the real one): ``verifications`` asks the
relay for the current keys of a consult's other members (so it needs the link), and
``confirm_member`` marks one verified only if the number the users compared is still the
current one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from medcomm.adapters.localstore import Line

if TYPE_CHECKING:
    from medcomm.core.imagemsg import ImageInfo
    from medcomm.core.tiles import TileId
    from medcomm.core.triage import QueueEntry
    from medcomm.core.workflow import ConsultState
    from medcomm.session.deskimages import ImageSummary
    from medcomm.session.verify import Verification


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


class ImageHandle(Protocol):
    """An image opened for the viewer (the real one is ``deskimages.OpenedImage``)."""

    @property
    def id(self) -> str: ...

    @property
    def info(self) -> ImageInfo: ...

    def original_here(self) -> bool: ...

    async def first_view(self, progress: Callable[[int, int], None] | None = None) -> Any: ...  # a PIL image

    async def tiles(
        self, ids: Sequence[TileId], arrived: Callable[[TileId, Any], None], parallel: int | None = None
    ) -> None: ...  # arrived(tile, PIL image, or None: not at the relay yet), in the order asked

    async def window(
        self, name: str, progress: Callable[[int, int], None] | None = None
    ) -> tuple[Any, str]: ...  # a DICOM slice under a window, from its original: (PIL image, label);
    # NotFound (data "later", "requested") while the original is not on the relay: asked for once


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

    # images
    async def share_image(
        self,
        consult: str,
        path: str,
        *,
        as_kind: str = "auto",
        caption: str = "",
        step: Callable[[str, int, int], None] | None = None,
    ) -> Any: ...  # an ``images.Shared``: .seq, .first_bytes, .seconds once the relay stored it

    def pending_images(self, consult: str) -> list[Line]: ...  # shared here, not in the outbox yet

    def pending_image_count(self) -> int: ...

    def image_summaries(self, ids: Sequence[str]) -> Mapping[str, ImageSummary]: ...

    async def send_pending_images(
        self, timeout: float, step: Callable[[str, int, int], None] | None = None
    ) -> Any: ...  # an ``images.ImagesResult``: .finished, .left, .failed [(id bytes, error)]

    def continue_images_in_background(self) -> int | None: ...

    async def open_image(self, image_id: str) -> ImageHandle: ...

    # the consult workflow
    def consult_state(self, consult: str) -> ConsultState: ...  # NotFound: not on this device

    def triage_queue(self, now_ms: int | None = None) -> list[QueueEntry]: ...

    def linked_consults(self, consult: str) -> list[ConsultState]: ...  # same patient key, oldest first

    def today(self) -> dt.date: ...  # the clinic's calendar day (follow-ups are due on days)

    async def update_case(self, consult: str, raw: dict[str, str | None]) -> Any: ...  # None: no change

    async def change_status(self, consult: str, to: str, advice: str = "") -> Any: ...

    async def claim(self, consult: str) -> Any: ...

    async def assign(self, consult: str, name: str, timeout: float) -> Any: ...  # "" = nobody

    async def add_followup(self, consult: str, due: dt.date, reason: str) -> tuple[Any, str]: ...  # item, id

    async def close_followup(
        self, consult: str, fid: str | None, done: bool = True
    ) -> tuple[Any, str]: ...  # fid None: the only open one; done False: cancelled

    # safety numbers (``medcomm.session.verify`` behind the real one)
    async def verifications(self, consult: str, timeout: float) -> list[Verification]: ...  # other members

    async def confirm_member(
        self, them: str, number: str, timeout: float
    ) -> Verification: ...  # UsageError: not the current number any more


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

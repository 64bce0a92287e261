"""The client's delivery state machine: outbox in flight, cursors, gaps, receipts, backoff.

Sans-I/O in the style of h11/aioquic: the session feeds it what happened (connected, a frame
arrived, the link dropped, the clock passed a deadline) together with ``now``, and gets back
frames to send and events to persist or show. It never touches a socket, a clock or a file,
so every rule below is tested on a hand-advanced clock.

Rules:

* The outbox is sent in creation order with at most ``inflight`` unacknowledged items; on a
  drop every unacknowledged item goes back to the front, and is re-sent with the same client
  id on the next connection (the relay answers a repeat with the original seq).
* A consult's cursor is the highest seq held without a hole. A message with seq cursor+1 is
  accepted; one at or below the cursor is a duplicate; one beyond it is a gap, answered by a
  resume request from the cursor (once, until that consult is caught up again).
* Our own acknowledged messages above the cursor are remembered ("ahead"), so the cursor
  jumps over them when the hole below is filled.
* Delivered marks are coalesced for ``receipt_delay`` seconds: one small frame per burst,
  not one per message.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from medcomm.core.wire import (
    CaughtUp,
    Err,
    Frame,
    Msg,
    Ready,
    Receipt,
    Receipts,
    Reject,
    Send,
    Stored,
    Sub,
)

DELIVERED = 1
READ = 2


@dataclass(frozen=True, slots=True)
class OutItem:
    """One queued outgoing message, exactly as it will be re-sent on every retry."""

    cid: bytes
    consult: str
    kind: int
    body: bytes

    def frame(self) -> Send:
        return Send(self.consult, self.cid, self.kind, self.body)


# --- events for the session -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message to keep, in order; the cursor moved to msg.seq (or past it)."""

    msg: Msg
    cursor: int


@dataclass(frozen=True, slots=True)
class Acked:
    """The relay stored our message under seq: it leaves the outbox, enters history."""

    cid: bytes
    consult: str
    seq: int
    time: int
    cursor: int


@dataclass(frozen=True, slots=True)
class Rejected:
    cid: bytes
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Marks:
    consult: str
    member: str
    delivered: int
    read: int


@dataclass(frozen=True, slots=True)
class Synced:
    """The consult is caught up: everything the relay held at resume time is here."""

    consult: str
    cursor: int


@dataclass(frozen=True, slots=True)
class RelayError:
    code: str
    reason: str


Event = Accepted | Acked | Rejected | Marks | Synced | RelayError


@dataclass
class Output:
    frames: list[Frame] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def backoff(attempt: int, first: float, most: float, rand: float) -> float:
    """Exponential backoff with full jitter in [0.5, 1.5) of the step, capped at ``most``.

    Jitter keeps a clinic's devices from reconnecting in lock-step after the relay restarts.
    """
    return min(most, first * 2.0 ** max(0, attempt)) * (0.5 + rand)


class Delivery:
    """State for one device; survives reconnects (call ``connected``/``disconnected``)."""

    def __init__(
        self,
        cursors: dict[str, int] | None = None,
        ahead: dict[str, set[int]] | None = None,
        inflight: int = 64,
        receipt_delay: float = 0.3,
        subscribe: bool = True,
    ) -> None:
        self.cursors: dict[str, int] = dict(cursors or {})
        self.ahead: dict[str, set[int]] = {k: set(v) for k, v in (ahead or {}).items()}
        self.max_inflight = inflight
        self.receipt_delay = receipt_delay
        self.subscribe = subscribe
        self.pending: deque[OutItem] = deque()
        self.inflight: dict[bytes, OutItem] = {}
        self.online = False
        self.resuming: set[str] = set()  # consults with a resume request outstanding
        self.synced: set[str] = set()
        self.full_sync_done = False
        self._receipt_due: dict[str, float] = {}
        self._reported: dict[str, int] = {}  # delivered mark already sent per consult

    # --- outbox ---------------------------------------------------------------------------

    def queue(self, item: OutItem) -> list[Frame]:
        """Add an item (already durable in the local outbox) and send it if there is room."""
        if item.cid in self.inflight or any(p.cid == item.cid for p in self.pending):
            return []
        self.pending.append(item)
        return self._fill()

    def _fill(self) -> list[Frame]:
        frames: list[Frame] = []
        while self.online and self.pending and len(self.inflight) < self.max_inflight:
            item = self.pending.popleft()
            self.inflight[item.cid] = item
            frames.append(item.frame())
        return frames

    @property
    def unacked(self) -> int:
        return len(self.pending) + len(self.inflight)

    # --- connection -----------------------------------------------------------------------

    def resume_frame(self) -> Sub | None:
        """The resume request for the next connection; it may travel in the upgrade
        request itself (see ``connected(resumed=True)``)."""
        return Sub(dict(self.cursors), True) if self.subscribe else None

    def connected(self, now: float, resumed: bool = False) -> list[Frame]:
        """The link is up and authenticated: resume every consult (unless the resume
        request already went with the upgrade: ``resumed``), then resend the outbox."""
        self.online = True
        self.resuming.clear()
        self.synced.clear()
        self.full_sync_done = not self.subscribe
        frames: list[Frame] = []
        if self.subscribe:
            sub = self.resume_frame()
            if not resumed:
                frames.append(sub)  # type: ignore[arg-type]
            self.resuming.update(self.cursors)
        return frames + self._fill()

    def disconnected(self) -> None:
        """Every unacknowledged item goes back, in its original order, before newer ones."""
        self.online = False
        if self.inflight:
            self.pending.extendleft(reversed(list(self.inflight.values())))
            self.inflight.clear()
        self.resuming.clear()
        self.synced.clear()
        self._receipt_due.clear()

    # --- frames from the relay ------------------------------------------------------------

    def received(self, frame: Frame, now: float) -> Output:
        out = Output()
        if isinstance(frame, Msg):
            self._on_msg(frame, now, out)
        elif isinstance(frame, Stored):
            self._on_stored(frame, out)
        elif isinstance(frame, CaughtUp):
            self._on_caught_up(frame, out)
        elif isinstance(frame, Receipts):
            out.events.append(Marks(frame.consult, frame.member, frame.delivered, frame.read))
        elif isinstance(frame, Reject):
            if self.inflight.pop(frame.cid, None) is not None:
                out.events.append(Rejected(frame.cid, frame.code, frame.reason))
            out.frames.extend(self._fill())
        elif isinstance(frame, Ready):
            if frame.next:  # the relay's answer was cut at its budget: ask for the rest
                rest = {c: n for c, n in self.cursors.items() if c >= frame.next}
                out.frames.append(Sub(rest, True, frame.next))
            else:
                self.full_sync_done = True
        elif isinstance(frame, Err) and frame.rid == 0:
            out.events.append(RelayError(frame.code, frame.reason))
        return out

    def _advance(self, consult: str) -> int:
        cursor = self.cursors.get(consult, 0)
        ahead = self.ahead.get(consult)
        while ahead and cursor + 1 in ahead:
            cursor += 1
            ahead.discard(cursor)
        self.cursors[consult] = cursor
        return cursor

    def _on_msg(self, msg: Msg, now: float, out: Output) -> None:
        c = msg.consult
        cursor = self.cursors.get(c, 0)
        if msg.seq <= cursor or msg.seq in self.ahead.get(c, ()):
            return  # duplicate: already held
        if msg.seq != cursor + 1:
            if c not in self.resuming and self.online:
                self.resuming.add(c)
                out.frames.append(Sub({c: cursor}, False))
            return  # the resume page will bring it, in order
        self.cursors[c] = msg.seq
        out.events.append(Accepted(msg, self._advance(c)))
        if self.subscribe:
            self._receipt_due.setdefault(c, now + self.receipt_delay)

    def _on_stored(self, frame: Stored, out: Output) -> None:
        c = frame.consult
        self.inflight.pop(frame.cid, None)
        cursor = self.cursors.get(c, 0)
        if frame.seq == cursor + 1:
            self.cursors[c] = frame.seq
            cursor = self._advance(c)
        elif frame.seq > cursor:
            self.ahead.setdefault(c, set()).add(frame.seq)
        out.events.append(Acked(frame.cid, c, frame.seq, frame.time, cursor))
        out.frames.extend(self._fill())

    def _on_caught_up(self, frame: CaughtUp, out: Output) -> None:
        c = frame.consult
        self.resuming.discard(c)
        cursor = self.cursors.setdefault(c, 0)
        if frame.more or cursor < frame.last_seq:
            self.resuming.add(c)
            out.frames.append(Sub({c: cursor}, False))
            return
        self.synced.add(c)
        out.events.append(Synced(c, cursor))

    # --- receipts and timers --------------------------------------------------------------

    def mark_read(self, consult: str, seq: int) -> list[Frame]:
        """The user has seen everything up to seq in consult."""
        if not self.online or seq <= 0:
            return []
        return [Receipt(consult, seq, READ)]

    def next_deadline(self) -> float | None:
        return min(self._receipt_due.values(), default=None)

    def handle_timer(self, now: float) -> list[Frame]:
        frames: list[Frame] = []
        for c, due in list(self._receipt_due.items()):
            if due <= now:
                del self._receipt_due[c]
                cursor = self.cursors.get(c, 0)
                if self.online and cursor > self._reported.get(c, 0):
                    self._reported[c] = cursor
                    frames.append(Receipt(c, cursor, DELIVERED))
        return frames

    def is_synced(self) -> bool:
        """Caught up on every consult asked for, and nothing outstanding."""
        return self.online and self.full_sync_done and not self.resuming

"""Live calls at the relay: who is ringing, who is in, and where each voice frame goes.

The relay forwards voice without decoding it: a voice-plane frame (first byte < 0x80, see
``medcomm.core.voiceframe``) from a participant goes to the other participants with its
slot byte rewritten to the sender's slot, so receivers can tell streams apart. In a call of
four or more a member's downlink carries at most the two loudest current speakers (the
level byte in each frame says how loud and whether the sender is talking), so an EDGE
downlink never has to carry three streams. Which two is decided with hysteresis: loudness is
smoothed over a few hundred milliseconds, a free place goes to the first talking speaker, and
a speaker takes a place from a forwarded one only by being ``switch_margin_db`` louder once
that one has had its place ``switch_hold`` seconds. Each switch starts a stream again at the
listener (a jitter buffer filling, a decoder from cold), so flipping between two speakers of
about the same loudness, syllable by syllable, would cost more than it gives.

A dropped connection does not end a call: on a flaky link the device reconnects within
seconds and answers again, and keeps its slot. Only after ``grace`` seconds without a
connection does the participant leave. Sans-I/O: connections are opaque keys, ``now`` is
passed in, and every change is returned for the relay to announce.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from medcomm.core.wire import CONSULT_ALPHABET
from medcomm.errors import NotFound, UsageError

CALL_ID_LEN = 8
PATH, MEDIA, FEEDBACK = 0x20, 0x40, 0x60
KIND_MASK, SLOT_MASK = 0xE0, 0x0F
MEDIA_HEADER = 5
PATH_SIZE = 3
LOUDEST = 2  # streams forwarded to each member at most


@dataclass(frozen=True)
class CallLimits:
    """How long rings and lost connections are waited for, and how big a call may get."""

    ring_timeout: float = 60.0  # an unanswered call ends as missed
    grace: float = 30.0  # a participant without a connection keeps its place this long
    max_parties: int = 15  # slots 1..15 (4 bits in the voice header)
    speaking_window: float = 1.0  # a member not heard this long is not a current speaker
    loudness_halflife: float = 0.3  # s: a syllable's peak or a breath does not rank a speaker
    switch_margin_db: float = 6.0  # how much louder a speaker must be to take a forwarded place
    switch_hold: float = 1.0  # s a forwarded speaker keeps its place before it can be displaced
    max_voice_frame: int = 1500  # bytes; a bigger voice frame is dropped
    record_every: float = 10.0  # s between saves of live calls' records: a crash loses at most this


@dataclass
class Party:
    user: str
    slot: int
    conn: object | None
    joined: float
    detached_at: float | None = None
    bytes_in: int = 0
    frames_in: int = 0
    level: int = 0  # loudness (0..127) of the last frame, 0 when not talking
    loud: float = 0.0  # level smoothed over ``loudness_halflife``: what speakers are ranked by
    heard_at: float = -1e9
    forwarding: dict[str, float] = field(default_factory=dict)  # speakers sent to this listener -> since


@dataclass
class Call:
    id: str
    consult: str
    caller: str
    members: list[str]  # the consult's members when the call started: who is rung
    created: float
    created_ms: int
    state: str = "ringing"  # ringing -> active -> ended
    started: float | None = None
    ended: float | None = None
    outcome: str = ""  # completed | missed | declined | cancelled
    parties: dict[str, Party] = field(default_factory=dict)
    ever: list[str] = field(default_factory=list)  # everyone who was in, in order
    declined: set[str] = field(default_factory=set)
    kbytes: dict[str, float] = field(default_factory=dict)  # per user who left: kB sent

    def slots(self) -> dict[str, int]:
        return {p.user: p.slot for p in self.parties.values()}

    def summary(self, now: float | None = None, outcome: str | None = None) -> dict[str, object]:
        """What the consult's history keeps of a call (who, when, how long, how thick). Of a
        live call (``now`` given): as if it ended now with ``outcome``, for the crash record."""
        end = self.ended if self.ended is not None else now
        duration = max(0.0, end - self.started) if self.started is not None and end is not None else 0.0
        sent = dict(self.kbytes)
        for p in self.parties.values():  # still in: what they sent so far
            sent[p.user] = sent.get(p.user, 0.0) + p.bytes_in / 1000
        kbps = {u: round(kb * 8 / duration, 1) for u, kb in sent.items()} if duration > 0 else {}
        return {
            "event": "call",
            "call": self.id,
            "caller": self.caller,
            "members": self.ever,
            "outcome": self.outcome if outcome is None else outcome,
            "started": self.created_ms,
            "duration_s": round(duration, 1),
            "kbps_up": kbps,
        }


class CallRegistry:
    def __init__(self, limits: CallLimits | None = None) -> None:
        self.limits = limits or CallLimits()
        self.calls: dict[str, Call] = {}
        self._by_consult: dict[str, str] = {}
        self._by_conn: dict[int, tuple[Call, Party]] = {}
        self.dropped = 0  # voice frames dropped as not routable

    # --- signalling -------------------------------------------------------------------------

    def start(
        self, consult: str, user: str, conn: object, members: list[str], now: float, now_ms: int
    ) -> Call:
        """Ring the consult's other members; calling into a live call joins it instead."""
        live = self._by_consult.get(consult)
        if live is not None:
            return self.answer(live, user, conn, now)
        self._one_call_per_connection(conn, consult)
        if len(members) < 2:
            raise UsageError("nobody else is in this consult to call")
        call_id = "".join(secrets.choice(CONSULT_ALPHABET) for _ in range(CALL_ID_LEN))
        call = Call(call_id, consult, user, list(members), now, now_ms)
        self.calls[call_id] = call
        self._by_consult[consult] = call_id
        self._join(call, user, conn, now)
        return call

    def answer(self, call_id: str, user: str, conn: object, now: float) -> Call:
        """Join (or re-join after a reconnect, keeping the slot)."""
        call = self._live(call_id)
        if user not in call.members:
            raise UsageError("you are not a member of this consult")
        party = call.parties.get(user)
        if party is not None:  # the same person on a new connection
            self._by_conn.pop(id(party.conn), None)
            party.conn, party.detached_at = conn, None
            self._by_conn[id(conn)] = (call, party)
            return call
        self._one_call_per_connection(conn, call.consult)
        if len(call.parties) >= self.limits.max_parties:
            raise UsageError(f"a call holds at most {self.limits.max_parties} people")
        call.declined.discard(user)
        self._join(call, user, conn, now)
        if call.state == "ringing" and len(call.parties) >= 2:
            call.state, call.started = "active", now
        return call

    def decline(self, call_id: str, user: str, now: float) -> Call:
        call = self._live(call_id)
        if user in call.parties:
            return self.hangup(call_id, user, now)
        call.declined.add(user)
        if call.state == "ringing" and call.declined >= set(call.members) - set(call.parties):
            self._end(call, "declined", now)
        return call

    def hangup(self, call_id: str, user: str, now: float) -> Call:
        call = self._live(call_id)
        if user in call.parties:
            self._leave(call, user, now)
        return call

    def detached(self, conn: object, now: float) -> list[Call]:
        """A connection closed: its party waits ``grace`` for the device to come back."""
        found = self._by_conn.pop(id(conn), None)
        if found is None:
            return []
        call, party = found
        party.conn, party.detached_at = None, now
        return [call]

    def tick(self, now: float) -> list[Call]:
        """Ring timeouts and expired graces; the calls that changed."""
        changed = []
        for call in list(self.calls.values()):
            if call.state == "ringing" and now - call.created >= self.limits.ring_timeout:
                self._end(call, "missed", now)
                changed.append(call)
                continue
            gone = [
                p.user
                for p in call.parties.values()
                if p.detached_at is not None and now - p.detached_at >= self.limits.grace
            ]
            for user in gone:
                if call.state == "ended":
                    break  # the first leave ended it: _end already took everyone out
                self._leave(call, user, now)
            if gone:
                changed.append(call)
        for call in changed:
            if call.state == "ended":
                self.calls.pop(call.id, None)
        return changed

    def next_deadline(self) -> float | None:
        times = []
        for call in self.calls.values():
            if call.state == "ringing":
                times.append(call.created + self.limits.ring_timeout)
            times += [
                p.detached_at + self.limits.grace for p in call.parties.values() if p.detached_at is not None
            ]
        return min(times, default=None)

    def forget_ended(self) -> None:
        for call_id in [c.id for c in self.calls.values() if c.state == "ended"]:
            del self.calls[call_id]

    def connections(self, call: Call) -> Iterable[object]:
        return [p.conn for p in call.parties.values() if p.conn is not None]

    # --- the voice plane --------------------------------------------------------------------

    def route(self, conn: object, data: bytes, now: float) -> list[tuple[object, bytes]]:
        """Where one voice-plane frame from ``conn`` goes, slot byte rewritten."""
        found = self._by_conn.get(id(conn))
        kind = data[0] & KIND_MASK if data else 0
        if found is None or len(data) > self.limits.max_voice_frame or kind not in (PATH, MEDIA, FEEDBACK):
            self.dropped += 1
            return []
        call, party = found
        if kind == PATH:
            if len(data) != PATH_SIZE:
                self.dropped += 1
                return []
            # to everyone, whether forwarded now or not: three bytes say how to receive this
            # speaker from its first packet, whenever that comes
            hint = bytes([PATH | party.slot]) + data[1:]
            return [(p.conn, hint) for p in call.parties.values() if p is not party and p.conn is not None]
        if kind == FEEDBACK:
            target = next((p for p in call.parties.values() if p.slot == data[0] & SLOT_MASK), None)
            if target is None or target.conn is None or target is party or len(data) < 2:
                self.dropped += 1
                return []
            return [(target.conn, bytes([FEEDBACK | party.slot]) + data[1:])]
        if len(data) <= MEDIA_HEADER:
            self.dropped += 1
            return []
        party.bytes_in += len(data)
        party.frames_in += 1
        party.level = data[4] & 0x7F if data[4] & 0x80 else 0
        weight = 1.0 - 0.5 ** (max(0.0, now - party.heard_at) / self.limits.loudness_halflife)
        party.loud += (party.level - party.loud) * weight
        party.heard_at = now
        out = bytes([MEDIA | party.slot]) + data[1:]
        return [
            (p.conn, out)
            for p in call.parties.values()
            if p.conn is not None and self._hears(call, p, party, now)
        ]

    def _hears(self, call: Call, listener: Party, speaker: Party, now: float) -> bool:
        if listener is speaker:
            return False
        others = [p for p in call.parties.values() if p is not listener]
        if len(others) <= LOUDEST:
            return True
        current = {p.user: p for p in others if now - p.heard_at <= self.limits.speaking_window}
        places = listener.forwarding
        for user in [u for u in places if u not in current]:
            del places[user]  # gone quiet (or left): the place is free
        if speaker.user in places:
            return True
        if speaker.level == 0:
            return False  # not talking: no place is given for comfort noise
        if len(places) < LOUDEST:
            places[speaker.user] = now
            return True
        weakest = min(places, key=lambda u: (current[u].loud, -current[u].slot))
        if (
            speaker.loud >= current[weakest].loud + self.limits.switch_margin_db
            and now - places[weakest] >= self.limits.switch_hold
        ):
            del places[weakest]
            places[speaker.user] = now
            return True
        return False

    # --- internals --------------------------------------------------------------------------

    def _one_call_per_connection(self, conn: object, consult: str) -> None:
        """A device carries one call: voice frames name no call, so the relay could not
        tell which one a frame belongs to."""
        found = self._by_conn.get(id(conn))
        if found is not None and found[0].state != "ended" and found[0].consult != consult:
            raise UsageError("already in a call in another consult: hang up there first")

    def _live(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or call.state == "ended":
            raise NotFound(f"no call {call_id!r} (it may have ended)", code="not_found")
        return call

    def _join(self, call: Call, user: str, conn: object, now: float) -> None:
        used = {p.slot for p in call.parties.values()}
        slot = next(s for s in range(1, self.limits.max_parties + 1) if s not in used)
        party = Party(user, slot, conn, now)
        call.parties[user] = party
        if user not in call.ever:
            call.ever.append(user)
        self._by_conn[id(conn)] = (call, party)

    def _take_out(self, call: Call, user: str) -> None:
        """One party leaves: what it sent is kept for the call's record, its link forgotten."""
        party = call.parties.pop(user)
        call.kbytes[user] = call.kbytes.get(user, 0.0) + party.bytes_in / 1000
        if party.conn is not None:
            self._by_conn.pop(id(party.conn), None)

    def _leave(self, call: Call, user: str, now: float) -> None:
        self._take_out(call, user)
        if call.state == "ringing" and not call.parties:
            self._end(call, "cancelled", now)
        elif call.state == "active" and len(call.parties) < 2:
            self._end(call, "completed", now)

    def _end(self, call: Call, outcome: str, now: float) -> None:
        call.state, call.outcome, call.ended = "ended", outcome, now
        for user in list(call.parties):
            self._take_out(call, user)
        self._by_consult.pop(call.consult, None)

"""The relay's sans-I/O call registry: signalling, grace after a lost connection, and routing.

Connections are opaque keys here (plain objects held for the whole test, since the registry
keys them by identity), and every time is passed in, so each test walks a call through its
life at exact instants.
"""

from __future__ import annotations

import pytest

from medcomm.core import voiceframe
from medcomm.errors import NotFound, UsageError
from medcomm.server.calls import Call, CallLimits, CallRegistry

CONSULT = "abcdef"
OTHER_CONSULT = "ghjkmn"
T0 = 100.0  # a monotonic clock never starts at 0 (a detach at 0.0 is tested on its own)
LIMITS = CallLimits()


class Conn:
    """A stand-in for the relay's connection object: only its identity matters."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Conn({self.name})"


def media(level: int, payload: bytes = b"opus", seq: int = 7, ts: int = 0x1234, slot: int = 0) -> bytes:
    """An uplink media frame: 0x40|slot, seq, ts16 (big-endian), level byte, payload."""
    return bytes((0x40 | slot, seq, ts >> 8, ts & 0xFF, level)) + payload


def talking(loudness: int) -> int:
    return 0x80 | loudness


def feedback(target_slot: int) -> bytes:
    frame = voiceframe.Feedback.report(target_slot, 0x1234, 20, 80, 3).pack()
    assert frame[0] == 0x60 | target_slot
    return frame


def targets(out: list[tuple[object, bytes]]) -> set[object]:
    return {conn for conn, _ in out}


def two_party(reg: CallRegistry) -> tuple[Call, Conn, Conn]:
    """alice calls bob at T0; bob answers at T0 + 1."""
    a, b = Conn("alice"), Conn("bob")
    call = reg.start(CONSULT, "alice", a, ["alice", "bob"], T0, 1_700_000_000_000)
    reg.answer(call.id, "bob", b, T0 + 1)
    return call, a, b


def n_party(reg: CallRegistry, names: list[str]) -> tuple[Call, dict[str, Conn]]:
    """names[0] calls everyone in a consult of ``names``; the others answer in order."""
    conns = {n: Conn(n) for n in names}
    call = reg.start(CONSULT, names[0], conns[names[0]], list(names), T0, 0)
    for i, name in enumerate(names[1:], 1):
        reg.answer(call.id, name, conns[name], T0 + i * 0.1)
    assert call.slots() == {n: i for i, n in enumerate(names, 1)}
    return call, conns


# --- signalling ------------------------------------------------------------------------------


def test_start_rings_with_the_caller_in_slot_1() -> None:
    reg = CallRegistry()
    a = Conn("alice")
    call = reg.start(CONSULT, "alice", a, ["alice", "bob", "carol"], T0, 1234)
    assert call.state == "ringing"
    assert call.slots() == {"alice": 1}
    assert call.caller == "alice" and call.members == ["alice", "bob", "carol"]
    assert call.consult == CONSULT and call.created_ms == 1234 and call.started is None
    assert len(call.id) == 8 and reg.calls[call.id] is call
    assert list(reg.connections(call)) == [a]


def test_start_alone_in_a_consult_is_refused() -> None:
    reg = CallRegistry()
    with pytest.raises(UsageError):
        reg.start(CONSULT, "alice", Conn("alice"), ["alice"], T0, 0)
    assert reg.calls == {}


def test_answer_makes_the_call_active_in_slot_2() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    assert call.state == "active"
    assert call.started == T0 + 1
    assert call.slots() == {"alice": 1, "bob": 2}
    assert set(reg.connections(call)) == {a, b}
    assert call.ever == ["alice", "bob"]


def test_calling_into_a_consult_with_a_live_call_joins_it() -> None:
    reg = CallRegistry()
    a, b, c = Conn("alice"), Conn("bob"), Conn("carol")
    members = ["alice", "bob", "carol"]
    call = reg.start(CONSULT, "alice", a, members, T0, 0)
    # bob "calls" while alice's call rings: he answers it.
    joined = reg.start(CONSULT, "bob", b, members, T0 + 1, 0)
    assert joined is call and call.state == "active" and call.slots() == {"alice": 1, "bob": 2}
    # carol too, once it is active.
    assert reg.start(CONSULT, "carol", c, members, T0 + 2, 0) is call
    assert call.slots() == {"alice": 1, "bob": 2, "carol": 3}
    assert len(reg.calls) == 1
    # A call in another consult is a call of its own.
    other = reg.start(OTHER_CONSULT, "dave", Conn("dave"), ["dave", "erin"], T0 + 3, 0)
    assert other is not call and other.state == "ringing"


def test_decline_by_the_only_other_member_ends_it_declined() -> None:
    reg = CallRegistry()
    a = Conn("alice")
    call = reg.start(CONSULT, "alice", a, ["alice", "bob"], T0, 0)
    assert reg.decline(call.id, "bob", T0 + 2) is call
    assert (call.state, call.outcome, call.ended) == ("ended", "declined", T0 + 2)
    assert call.parties == {}
    assert reg.route(a, media(talking(50)), T0 + 3) == []  # alice's connection is out of it
    reg.forget_ended()
    with pytest.raises(NotFound):
        reg.answer(call.id, "bob", Conn("bob"), T0 + 3)


def test_decline_by_one_of_several_keeps_ringing_until_all_declined() -> None:
    reg = CallRegistry()
    call = reg.start(CONSULT, "alice", Conn("alice"), ["alice", "bob", "carol"], T0, 0)
    reg.decline(call.id, "bob", T0 + 1)
    assert call.state == "ringing"
    reg.decline(call.id, "carol", T0 + 2)
    assert (call.state, call.outcome) == ("ended", "declined")


def test_one_who_declined_can_still_answer_while_others_ring() -> None:
    reg = CallRegistry()
    call = reg.start(CONSULT, "alice", Conn("alice"), ["alice", "bob", "carol"], T0, 0)
    reg.decline(call.id, "bob", T0 + 1)
    reg.answer(call.id, "bob", Conn("bob"), T0 + 2)
    assert call.state == "active" and call.slots() == {"alice": 1, "bob": 2}
    reg.decline(call.id, "carol", T0 + 3)  # a decline no longer ends an active call
    assert call.state == "active"


def test_caller_hanging_up_while_ringing_cancels() -> None:
    reg = CallRegistry()
    a = Conn("alice")
    call = reg.start(CONSULT, "alice", a, ["alice", "bob"], T0, 0)
    reg.hangup(call.id, "alice", T0 + 5)
    assert (call.state, call.outcome, call.ended) == ("ended", "cancelled", T0 + 5)
    assert reg.next_deadline() is None
    # The consult is free for a new call.
    again = reg.start(CONSULT, "alice", a, ["alice", "bob"], T0 + 6, 0)
    assert again is not call and again.state == "ringing"


def test_ring_timeout_via_tick_is_missed() -> None:
    reg = CallRegistry()
    call = reg.start(CONSULT, "alice", Conn("alice"), ["alice", "bob"], T0, 0)
    assert reg.next_deadline() == T0 + LIMITS.ring_timeout
    assert reg.tick(T0 + LIMITS.ring_timeout - 0.01) == []
    assert call.state == "ringing"
    assert reg.tick(T0 + LIMITS.ring_timeout) == [call]
    assert (call.state, call.outcome) == ("ended", "missed")
    assert call.id not in reg.calls
    assert reg.next_deadline() is None
    with pytest.raises(NotFound):
        reg.answer(call.id, "bob", Conn("bob"), T0 + LIMITS.ring_timeout + 1)
    assert reg.tick(T0 + 1000) == []


def test_active_call_completes_when_fewer_than_two_remain() -> None:
    reg = CallRegistry()
    call, conns = n_party(reg, ["alice", "bob", "carol"])
    reg.hangup(call.id, "carol", T0 + 10)
    assert call.state == "active" and call.slots() == {"alice": 1, "bob": 2}
    reg.hangup(call.id, "alice", T0 + 20)  # the caller leaving does not matter, the count does
    assert (call.state, call.outcome, call.ended) == ("ended", "completed", T0 + 20)
    assert call.parties == {}
    assert all(reg.route(c, media(talking(9)), T0 + 21) == [] for c in conns.values())


def test_a_leaver_slot_is_reused_by_the_next_joiner() -> None:
    reg = CallRegistry()
    call, _ = n_party(reg, ["alice", "bob", "carol", "dave"])
    reg.hangup(call.id, "bob", T0 + 5)
    reg.answer(call.id, "bob", Conn("bob2"), T0 + 6)  # back, but as a new joiner
    assert call.slots() == {"alice": 1, "carol": 3, "dave": 4, "bob": 2}
    assert call.ever == ["alice", "bob", "carol", "dave"]


def test_max_parties_is_enforced() -> None:
    reg = CallRegistry(CallLimits(max_parties=2))
    call = reg.start(CONSULT, "alice", Conn("alice"), ["alice", "bob", "carol"], T0, 0)
    reg.answer(call.id, "bob", Conn("bob"), T0 + 1)
    with pytest.raises(UsageError):
        reg.answer(call.id, "carol", Conn("carol"), T0 + 2)
    assert call.slots() == {"alice": 1, "bob": 2}


def test_non_member_cannot_answer() -> None:
    reg = CallRegistry()
    call = reg.start(CONSULT, "alice", Conn("alice"), ["alice", "bob"], T0, 0)
    m = Conn("mallory")
    with pytest.raises(UsageError):
        reg.answer(call.id, "mallory", m, T0 + 1)
    assert call.state == "ringing" and call.slots() == {"alice": 1}
    dropped = reg.dropped
    assert reg.route(m, media(talking(50)), T0 + 2) == []
    assert reg.dropped == dropped + 1


def test_unknown_call_is_not_found() -> None:
    reg = CallRegistry()
    with pytest.raises(NotFound):
        reg.answer("zzzzzzzz", "bob", Conn("bob"), T0)
    with pytest.raises(NotFound):
        reg.decline("zzzzzzzz", "bob", T0)
    with pytest.raises(NotFound):
        reg.hangup("zzzzzzzz", "bob", T0)


# --- lost connections and grace --------------------------------------------------------------


def test_detached_party_keeps_its_slot_and_rejoins_within_grace() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    assert reg.detached(b, T0 + 10) == [call]
    assert call.state == "active" and call.slots() == {"alice": 1, "bob": 2}
    assert list(reg.connections(call)) == [a]
    assert reg.next_deadline() == T0 + 10 + LIMITS.grace
    assert reg.detached(b, T0 + 11) == []  # a second close of the same connection is nothing
    # Meanwhile alice's voice has nowhere to go.
    assert reg.route(a, media(talking(50)), T0 + 12) == []
    # bob's device comes back just before the grace runs out, on a new connection.
    assert reg.tick(T0 + 10 + LIMITS.grace - 0.01) == []
    b2 = Conn("bob-again")
    assert reg.answer(call.id, "bob", b2, T0 + 10 + LIMITS.grace - 0.01) is call
    assert call.slots() == {"alice": 1, "bob": 2}
    assert call.state == "active" and call.started == T0 + 1  # the same call, not a new start
    assert reg.next_deadline() is None
    frame = media(talking(50))
    assert reg.route(a, frame, T0 + 45) == [(b2, b"\x41" + frame[1:])]
    dropped = reg.dropped
    assert reg.route(b, media(talking(50)), T0 + 45) == []  # the dead connection routes nowhere
    assert reg.dropped == dropped + 1
    assert reg.tick(T0 + 1000) == []
    assert call.state == "active"


def test_same_user_on_a_second_device_takes_over_the_slot() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    b2 = Conn("bob-phone")
    reg.answer(call.id, "bob", b2, T0 + 5)
    assert call.slots() == {"alice": 1, "bob": 2}
    assert set(reg.connections(call)) == {a, b2}
    assert reg.detached(b, T0 + 6) == []  # the replaced connection no longer speaks for bob
    assert call.parties["bob"].detached_at is None


def test_detached_party_is_removed_after_grace() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    reg.detached(b, T0 + 10)
    assert reg.tick(T0 + 10 + LIMITS.grace) == [call]
    assert (call.state, call.outcome, call.ended) == ("ended", "completed", T0 + 10 + LIMITS.grace)
    assert call.id not in reg.calls
    with pytest.raises(NotFound):
        reg.answer(call.id, "bob", Conn("bob-late"), T0 + 10 + LIMITS.grace + 1)


def test_grace_expiry_in_a_three_way_call_leaves_the_others_talking() -> None:
    reg = CallRegistry()
    call, conns = n_party(reg, ["alice", "bob", "carol"])
    reg.detached(conns["carol"], T0 + 10)
    assert reg.tick(T0 + 10 + LIMITS.grace) == [call]
    assert call.state == "active" and call.slots() == {"alice": 1, "bob": 2}
    assert targets(reg.route(conns["alice"], media(talking(5)), T0 + 41)) == {conns["bob"]}


def test_caller_lost_while_ringing_cancels_after_grace() -> None:
    reg = CallRegistry()
    a = Conn("alice")
    call = reg.start(CONSULT, "alice", a, ["alice", "bob"], T0, 0)
    reg.detached(a, T0 + 5)
    assert reg.next_deadline() == T0 + 5 + LIMITS.grace  # before the ring timeout
    assert reg.tick(T0 + 5 + LIMITS.grace) == [call]
    assert (call.state, call.outcome) == ("ended", "cancelled")


def test_next_deadline_is_the_earliest_of_rings_and_graces() -> None:
    reg = CallRegistry()
    assert reg.next_deadline() is None
    ringing = reg.start(CONSULT, "alice", Conn("alice"), ["alice", "bob"], T0, 0)
    assert reg.next_deadline() == T0 + LIMITS.ring_timeout
    d, e = Conn("dave"), Conn("erin")
    active = reg.start(OTHER_CONSULT, "dave", d, ["dave", "erin"], T0 + 1, 0)
    reg.answer(active.id, "erin", e, T0 + 2)
    assert reg.next_deadline() == T0 + LIMITS.ring_timeout  # an active call has no deadline
    reg.detached(e, T0 + 40)
    assert reg.next_deadline() == T0 + LIMITS.ring_timeout  # 160 < 170
    reg.detached(d, T0 + 20)
    assert reg.next_deadline() == T0 + 20 + LIMITS.grace  # 150
    reg.hangup(ringing.id, "alice", T0 + 21)
    reg.forget_ended()
    assert reg.next_deadline() == T0 + 20 + LIMITS.grace
    reg.answer(active.id, "dave", Conn("dave-again"), T0 + 22)
    assert reg.next_deadline() == T0 + 40 + LIMITS.grace


def test_next_deadline_counts_a_detach_at_time_zero() -> None:
    reg = CallRegistry()
    a = Conn("alice")
    reg.start(CONSULT, "alice", a, ["alice", "bob"], 0.0, 0)
    reg.detached(a, 0.0)
    assert reg.next_deadline() == LIMITS.grace


def test_tick_survives_every_party_expiring_at_once() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    reg.detached(a, T0 + 10)
    reg.detached(b, T0 + 10)  # e.g. the relay's own uplink blipped
    assert reg.tick(T0 + 10 + LIMITS.grace) == [call]
    assert (call.state, call.outcome) == ("ended", "completed")
    assert call.id not in reg.calls


def test_a_connection_in_two_calls_is_released_from_both() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    try:
        reg.start(OTHER_CONSULT, "alice", a, ["alice", "carol"], T0 + 2, 0)
    except UsageError:
        return  # refusing a second call on one connection is a fine answer too
    reg.detached(a, T0 + 3)
    reg.tick(T0 + 3 + LIMITS.grace)
    assert "alice" not in call.parties


# --- the voice plane -------------------------------------------------------------------------


def test_media_goes_to_the_other_party_with_the_sender_slot() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    frame = media(talking(60), payload=b"\x01\x02\x03opus", seq=200, ts=0xBEEF)
    assert reg.route(a, frame, T0 + 2) == [(b, b"\x41" + frame[1:])]
    back = media(talking(40), payload=b"x")
    assert reg.route(b, back, T0 + 2) == [(a, b"\x42" + back[1:])]
    # Whatever slot an uplink frame claims, the relay writes the sender's.
    assert reg.route(b, media(talking(40), slot=0xF), T0 + 3)[0][1][0] == 0x42
    assert reg.dropped == 0
    assert call.parties["alice"].frames_in == 1 and call.parties["alice"].bytes_in == len(frame)


def test_feedback_goes_only_to_its_target_with_the_author_slot() -> None:
    reg = CallRegistry()
    call, conns = n_party(reg, ["alice", "bob", "carol"])
    report = feedback(1)
    assert len(report) == voiceframe.FEEDBACK_SIZE
    # bob (slot 2) reports on alice's stream (slot 1): alice alone hears of it, as from slot 2.
    assert reg.route(conns["bob"], report, T0 + 2) == [(conns["alice"], b"\x62" + report[1:])]
    assert reg.route(conns["carol"], feedback(2), T0 + 2) == [(conns["bob"], b"\x63" + feedback(2)[1:])]
    assert reg.dropped == 0
    # Feedback is not voice: it neither counts as sent media nor marks anyone as speaking.
    assert call.parties["bob"].bytes_in == 0 and call.parties["bob"].frames_in == 0


def test_feedback_to_nobody_is_dropped() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    for frame in (feedback(3), b"\x61", b"\x62" + feedback(2)[1:]):
        # no slot 3 / too short / to oneself (bob is slot 2)
        assert reg.route(b, frame, T0 + 2) == []
    assert reg.dropped == 3
    reg.detached(a, T0 + 3)  # a target without a connection
    assert reg.route(b, feedback(1), T0 + 4) == []
    assert reg.dropped == 4


def test_a_path_hint_goes_to_every_other_member_forwarded_or_not() -> None:
    reg = CallRegistry()
    call, c = n_party(reg, ["alice", "bob", "carol", "dave"])
    a, b, cc, d = c["alice"], c["bob"], c["carol"], c["dave"]
    t = T0 + 10
    reg.route(a, media(talking(100)), t)
    reg.route(b, media(talking(90)), t + 0.01)
    assert targets(reg.route(cc, media(talking(50)), t + 0.02)) == {a, b}  # dave does not hear carol now
    hint = voiceframe.PathHint.outgoing(412.4).pack()
    out = reg.route(cc, hint, t + 0.03)
    assert targets(out) == {a, b, d}  # ... but learns how to receive her before she is loud enough
    assert all(data == bytes([0x23]) + (412).to_bytes(2, "big") for _, data in out)
    assert call.parties["carol"].frames_in == 1 and call.parties["carol"].level == 50  # not media
    reg.detached(d, t + 0.04)
    assert targets(reg.route(cc, hint, t + 0.05)) == {a, b}
    dropped = reg.dropped
    for bad in (hint[:2], hint + b"\x00"):
        assert reg.route(cc, bad, t + 0.06) == []
    assert reg.dropped == dropped + 2


def test_unroutable_frames_are_dropped_and_counted() -> None:
    reg = CallRegistry()
    call, a, b = two_party(reg)
    stranger = Conn("stranger")
    bad = [
        (stranger, media(talking(50))),  # a connection in no call
        (a, b"\x20" + media(talking(50))[1:]),  # a path hint of a media frame's size
        (a, b"\x00" * 8),  # kind 0x00
        (a, b""),  # empty
        (a, media(talking(50))[:5]),  # header only: no Opus packet
        (a, b"\x41\x01\x02"),  # short media
        (a, media(talking(50), payload=b"p" * (LIMITS.max_voice_frame - 4))),  # 1501 bytes
        (a, b"\x60" + b"\x00" * LIMITS.max_voice_frame),  # oversize feedback
    ]
    assert len(bad[6][1]) == LIMITS.max_voice_frame + 1
    for n, (conn, frame) in enumerate(bad, 1):
        assert reg.route(conn, frame, T0 + 2) == [], frame[:8]
        assert reg.dropped == n
    assert call.parties["alice"].bytes_in == 0 and call.parties["alice"].frames_in == 0
    # The largest allowed frame and the smallest media frame still go through.
    biggest = media(talking(50), payload=b"p" * (LIMITS.max_voice_frame - 5))
    smallest = media(talking(50), payload=b"p")
    assert reg.route(a, biggest, T0 + 3) == [(b, b"\x41" + biggest[1:])]
    assert reg.route(a, smallest, T0 + 3) == [(b, b"\x41" + smallest[1:])]
    assert reg.dropped == len(bad)


def test_three_way_everyone_hears_both_others_whatever_the_level() -> None:
    reg = CallRegistry()
    call, c = n_party(reg, ["alice", "bob", "carol"])
    by_conn = {conn: name for name, conn in c.items()}
    now = T0 + 5
    levels = {"alice": talking(120), "bob": talking(100), "carol": 0}  # carol is silent
    for _ in range(3):
        for name, level in levels.items():
            frame = media(level)
            out = reg.route(c[name], frame, now)
            slot = call.slots()[name]
            assert sorted(by_conn[conn] for conn, _ in out) == sorted(set(levels) - {name})  # type: ignore[index]
            assert all(data == bytes((0x40 | slot,)) + frame[1:] for _, data in out)
            now += 0.02


def test_four_way_each_listener_gets_the_two_loudest_current_speakers() -> None:
    reg = CallRegistry()
    call, c = n_party(reg, ["alice", "bob", "carol", "dave"])
    a, b, cc, d = c["alice"], c["bob"], c["carol"], c["dave"]
    t = T0 + 10
    # Only alice heard so far: everyone gets her.
    assert targets(reg.route(a, media(talking(100)), t)) == {b, cc, d}
    # bob takes the second place everywhere; alice hears him.
    assert targets(reg.route(b, media(talking(90)), t + 0.01)) == {a, cc, d}
    # carol is quieter than both: dave hears alice and bob, not carol; alice and bob hear carol
    # (for each of them the other two are the only current speakers besides themselves).
    out = reg.route(cc, media(talking(50)), t + 0.02)
    assert targets(out) == {a, b}
    assert all(data[0] == 0x43 for _, data in out)
    # alice keeps talking; she stays among the loudest for everyone.
    assert targets(reg.route(a, media(talking(100)), t + 0.04)) == {b, cc, d}
    # carol only a little louder than bob: dave keeps bob (no flipping between near equals).
    assert targets(reg.route(cc, media(talking(95)), t + 0.06)) == {a, b}


def test_four_way_a_clearly_louder_speaker_takes_the_place_after_the_hold() -> None:
    """Everyone talks steadily at 60 ms packets; carol (120) is clearly louder than bob (90).
    Dave gave his two places to alice and bob first; carol takes bob's once bob has had it
    for ``switch_hold``, and not before."""
    reg = CallRegistry()
    call, c = n_party(reg, ["alice", "bob", "carol", "dave"])
    d = c["dave"]
    t0 = T0 + 10
    levels = {"alice": 110, "bob": 90, "carol": 120}
    first_to_dave: dict[str, float] = {}
    t = t0
    while t < t0 + 2.0:
        for name, level in levels.items():
            if d in targets(reg.route(c[name], media(talking(level)), t)):  # carol's after bob's
                first_to_dave.setdefault(name, t)
        t = round(t + 0.06, 6)
    last = {name: d in targets(reg.route(c[name], media(talking(lv)), t)) for name, lv in levels.items()}
    assert last == {"alice": True, "bob": False, "carol": True}
    assert t0 + LIMITS.switch_hold <= first_to_dave["carol"] <= t0 + LIMITS.switch_hold + 0.07
    assert call.parties["dave"].forwarding.keys() == {"alice", "carol"}


def test_four_way_a_speaker_not_heard_for_the_window_is_not_current() -> None:
    reg = CallRegistry()
    call, c = n_party(reg, ["alice", "bob", "carol", "dave"])
    a, b, cc, d = c["alice"], c["bob"], c["carol"], c["dave"]
    t = T0 + 10
    reg.route(a, media(talking(120)), t)  # alice: very loud, then silent (no more frames)
    reg.route(b, media(talking(90)), t)
    assert d not in targets(reg.route(cc, media(talking(50)), t))  # alice and bob are louder
    # Exactly one window later alice still counts ...
    t1 = t + LIMITS.speaking_window
    reg.route(b, media(talking(90)), t1)
    assert d not in targets(reg.route(cc, media(talking(50)), t1))
    # ... just after it she does not, and carol reaches dave.
    t2 = t + LIMITS.speaking_window + 0.05
    reg.route(b, media(talking(90)), t2)
    assert targets(reg.route(cc, media(talking(50)), t2)) == {a, b, d}


def test_four_way_level_without_the_talking_bit_counts_as_silence() -> None:
    reg = CallRegistry()
    call, c = n_party(reg, ["alice", "bob", "carol", "dave"])
    a, b, cc, d = c["alice"], c["bob"], c["carol"], c["dave"]
    t = T0 + 10
    assert d not in targets(reg.route(a, media(0x7F), t))  # loudness bits all set, not talking
    reg.route(b, media(talking(10)), t)
    reg.route(cc, media(talking(20)), t)
    assert d not in targets(reg.route(a, media(0x7F), t + 0.02))
    assert call.parties["alice"].level == 0 and call.parties["carol"].level == 20
    # With the talking bit the same loudness is by far the loudest: once the others have had
    # their places for the hold, alice takes one.
    t += 0.06
    while t < T0 + 10 + LIMITS.switch_hold + 0.1:
        reg.route(b, media(talking(10)), t)
        reg.route(cc, media(talking(20)), t)
        heard = d in targets(reg.route(a, media(talking(0x7F)), t))
        t += 0.06
    assert heard and call.parties["dave"].forwarding.keys() == {"alice", "carol"}


def test_five_way_steady_talkers_reach_each_listener_as_its_two_loudest_others() -> None:
    """Everyone talks at once, 60 ms packets; whenever the levels hold for a while (long enough
    for the smoothing and the hold), each listener receives exactly the two loudest of the
    *others* (so the loudest speaker hears the next two), never itself."""
    reg = CallRegistry()
    names = ["alice", "bob", "carol", "dave", "erin"]
    call, c = n_party(reg, names)
    by_conn = {conn: name for name, conn in c.items()}
    regimes = [[100, 90, 80, 70, 60], [10, 120, 30, 110, 20], [50, 40, 126, 1, 90]]
    t = T0 + 10
    for levels in regimes:
        loudness = dict(zip(names, levels, strict=True))
        for _ in range(50):  # 3 s
            heard: dict[str, set[str]] = {n: set() for n in names}
            for name in names:
                for conn, data in reg.route(c[name], media(talking(loudness[name])), t):
                    assert data[0] == 0x40 | call.slots()[name]
                    heard[by_conn[conn]].add(name)  # type: ignore[index]
                    assert len(call.parties[by_conn[conn]].forwarding) <= 2  # type: ignore[index]
            t += 0.06
        for listener in names:
            others = sorted((n for n in names if n != listener), key=lambda n: -loudness[n])
            assert heard[listener] == set(others[:2]), (levels, listener, heard[listener])
    assert reg.dropped == 0


# --- the call's record ---------------------------------------------------------------------


def test_summary_of_a_completed_call() -> None:
    reg = CallRegistry()
    a, b = Conn("alice"), Conn("bob")
    call = reg.start(CONSULT, "alice", a, ["alice", "bob", "carol"], T0, 1_700_000_000_123)
    reg.answer(call.id, "bob", b, T0 + 5)  # rang 5 s: not part of the duration
    for i in range(10):
        reg.route(a, media(talking(50), payload=b"p" * 95), T0 + 5 + i)  # 100 bytes each
    for i in range(4):
        reg.route(b, media(talking(50), payload=b"q" * 245), T0 + 5 + i)  # 250 bytes each
    reg.route(b, feedback(1), T0 + 6)  # feedback is not counted as sent voice
    reg.hangup(call.id, "bob", T0 + 15)
    assert call.state == "ended"
    assert call.summary() == {
        "event": "call",
        "call": call.id,
        "caller": "alice",
        "members": ["alice", "bob"],
        "outcome": "completed",
        "started": 1_700_000_000_123,
        "duration_s": 10.0,
        "kbps_up": {"alice": 0.8, "bob": 0.8},  # 1000 B * 8 / 10 s = 0.8 kbit/s each
    }


def test_summary_counts_a_leaver_and_a_rejoin() -> None:
    reg = CallRegistry()
    call, c = n_party(reg, ["alice", "bob", "carol"])  # active at T0 + 0.1
    start = call.started
    assert start is not None
    reg.route(c["carol"], media(talking(5), payload=b"x" * 495), start + 1)  # 500 B
    reg.hangup(call.id, "carol", start + 2)
    reg.answer(call.id, "carol", Conn("carol2"), start + 3)
    reg.route(c["carol"], media(talking(5)), start + 3.5)  # old connection: dropped, not counted
    carol2 = call.parties["carol"].conn
    assert carol2 is not None and carol2 is not c["carol"]
    reg.route(carol2, media(talking(5), payload=b"x" * 495), start + 4)
    reg.hangup(call.id, "alice", start + 8)
    reg.hangup(call.id, "bob", start + 8)
    summary = call.summary()
    assert summary["outcome"] == "completed"
    assert summary["members"] == ["alice", "bob", "carol"]
    assert summary["duration_s"] == 8.0
    assert summary["kbps_up"] == {"alice": 0.0, "bob": 0.0, "carol": 1.0}  # 1000 B over 8 s


def test_summary_of_a_missed_call() -> None:
    reg = CallRegistry()
    call = reg.start(CONSULT, "alice", Conn("alice"), ["alice", "bob"], T0, 42)
    reg.tick(T0 + LIMITS.ring_timeout)
    summary = call.summary()
    assert summary["outcome"] == "missed"
    assert summary["members"] == ["alice"]
    assert summary["duration_s"] == 0.0 and summary["kbps_up"] == {}
    assert summary["started"] == 42 and summary["caller"] == "alice"

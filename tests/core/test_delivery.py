"""The delivery core on a hand-advanced clock: no sockets, no sleeps."""

from __future__ import annotations

from medcomm.core.delivery import (
    Accepted,
    Acked,
    Delivery,
    Marks,
    OutItem,
    Rejected,
    RelayError,
    Synced,
    backoff,
)
from medcomm.core.wire import CaughtUp, Err, Msg, Ready, Receipt, Receipts, Reject, Send, Stored, Sub

C = "abc123"


def item(n: int, consult: str = C) -> OutItem:
    return OutItem(n.to_bytes(16, "big"), consult, 1, f"m{n}".encode())


def msg(seq: int, consult: str = C, sender: str = "bob") -> Msg:
    return Msg(consult, seq, seq.to_bytes(16, "big"), sender, 1000 + seq, 1, b"x")


def test_offline_queue_sends_nothing_until_connected_then_in_order() -> None:
    d = Delivery()
    assert d.queue(item(1)) == [] and d.queue(item(2)) == []
    frames = d.connected(0.0)
    assert frames[0] == Sub({}, True)
    assert [f.cid for f in frames[1:] if isinstance(f, Send)] == [item(1).cid, item(2).cid]


def test_inflight_window_is_bounded_and_refilled_by_acks() -> None:
    d = Delivery(inflight=2, subscribe=False)
    d.connected(0.0)
    sent = [d.queue(item(n)) for n in range(1, 5)]
    assert [len(s) for s in sent] == [1, 1, 0, 0]
    out = d.received(Stored(item(1).cid, C, 1, 5), 0.1)
    assert out.events == [Acked(item(1).cid, C, 1, 5, 1)]
    assert [f.cid for f in out.frames] == [item(3).cid]


def test_drop_puts_unacked_back_first_with_same_ids() -> None:
    d = Delivery(inflight=2, subscribe=False)
    d.connected(0.0)
    for n in range(1, 4):
        d.queue(item(n))
    d.disconnected()
    assert d.unacked == 3
    frames = d.connected(1.0)
    assert [f.cid for f in frames] == [item(1).cid, item(2).cid]


def test_duplicate_queue_is_ignored() -> None:
    d = Delivery(subscribe=False)
    d.connected(0.0)
    assert len(d.queue(item(1))) == 1
    assert d.queue(item(1)) == []
    assert d.unacked == 1


def test_in_order_messages_accepted_duplicates_dropped() -> None:
    d = Delivery({C: 0})
    d.connected(0.0)
    events = [e for s in (1, 2, 2, 1, 3) for e in d.received(msg(s), 0.0).events]
    assert [e.msg.seq for e in events if isinstance(e, Accepted)] == [1, 2, 3]
    assert d.cursors[C] == 3


def test_gap_asks_once_for_a_resume_and_drops_until_filled() -> None:
    d = Delivery({C: 1})
    d.connected(0.0)
    d.received(CaughtUp(C, 1, False), 0.0)
    out = d.received(msg(3), 0.0)
    assert out.frames == [Sub({C: 1}, False)] and out.events == []
    again = d.received(msg(4), 0.0)
    assert again.frames == [] and again.events == []  # resume already outstanding
    got = [d.received(msg(s), 0.0).events[0].msg.seq for s in (2, 3, 4)]
    assert got == [2, 3, 4]
    assert d.received(CaughtUp(C, 4, False), 0.0).events == [Synced(C, 4)]


def test_more_pages_are_requested_until_caught_up() -> None:
    d = Delivery({C: 0})
    d.connected(0.0)
    for s in (1, 2):
        d.received(msg(s), 0.0)
    out = d.received(CaughtUp(C, 2, True), 0.0)
    assert out.frames == [Sub({C: 2}, False)]
    assert not d.is_synced()
    d.received(msg(3), 0.0)
    d.received(CaughtUp(C, 3, False), 0.0)
    d.received(Ready(1), 0.0)
    assert d.is_synced()


def test_not_synced_before_ready_even_if_known_consults_are() -> None:
    d = Delivery({C: 0})
    d.connected(0.0)
    d.received(CaughtUp(C, 0, False), 0.0)
    assert not d.is_synced()
    d.received(Ready(2), 0.0)
    assert d.is_synced()


def test_own_ack_above_cursor_is_jumped_over_later() -> None:
    d = Delivery({C: 1}, subscribe=False)
    d.connected(0.0)
    d.queue(item(9))
    out = d.received(Stored(item(9).cid, C, 3, 7), 0.0)
    assert out.events == [Acked(item(9).cid, C, 3, 7, 1)]
    d.received(msg(2), 0.0)
    assert d.cursors[C] == 3
    assert d.received(msg(3), 0.0).events == []  # our own, already held


def test_delivered_receipts_are_coalesced_on_the_clock() -> None:
    d = Delivery({C: 0}, receipt_delay=0.3)
    d.connected(0.0)
    for s in (1, 2, 3):
        d.received(msg(s), 0.1 * s)
    assert d.next_deadline() == 0.1 + 0.3
    assert d.handle_timer(0.3) == []
    assert d.handle_timer(0.4) == [Receipt(C, 3, 1)]
    assert d.next_deadline() is None
    assert d.handle_timer(10.0) == []


def test_no_receipts_while_offline_or_for_marks_already_sent() -> None:
    d = Delivery({C: 0}, receipt_delay=0.1)
    d.connected(0.0)
    d.received(msg(1), 0.0)
    d.disconnected()
    assert d.handle_timer(1.0) == []
    assert d.mark_read(C, 1) == []
    d.connected(2.0)
    assert d.mark_read(C, 1) == [Receipt(C, 1, 2)]


def test_reject_and_errors_become_events() -> None:
    d = Delivery(subscribe=False)
    d.connected(0.0)
    d.queue(item(1))
    out = d.received(Reject(item(1).cid, "denied", "not a member"), 0.0)
    assert out.events == [Rejected(item(1).cid, "denied", "not a member")]
    assert d.unacked == 0
    assert d.received(Err(0, "bad_request", "x"), 0.0).events == [RelayError("bad_request", "x")]
    assert d.received(Receipts(C, "bob", 3, 2), 0.0).events == [Marks(C, "bob", 3, 2)]


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert backoff(0, 0.5, 8.0, 0.5) == 0.5
    assert backoff(3, 0.5, 8.0, 0.5) == 4.0
    assert backoff(10, 0.5, 8.0, 0.0) == 4.0
    assert backoff(10, 0.5, 8.0, 0.999) < 12.0


def test_a_cut_short_full_resume_continues_from_next() -> None:
    d = Delivery({"aaaaaa": 3, "mmmmmm": 1, "zzzzzz": 0})
    d.connected(0.0)
    out = d.received(Ready(2, "mmmmmm"), 0.0)
    assert out.frames == [Sub({"mmmmmm": 1, "zzzzzz": 0}, True, "mmmmmm")]
    assert not d.is_synced()
    d.received(Ready(1, ""), 0.0)
    assert not d.is_synced()  # consults still waiting for their CaughtUp
    for consult, cursor in (("aaaaaa", 3), ("mmmmmm", 1), ("zzzzzz", 0)):
        d.received(CaughtUp(consult, cursor, False), 0.0)
    assert d.is_synced()

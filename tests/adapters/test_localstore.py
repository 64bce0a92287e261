"""The device's store: outbox, history with honest states, paging, the consult overview."""

from __future__ import annotations

from pathlib import Path

import msgpack

from medcomm.adapters.localstore import LocalStore
from medcomm.core.delivery import OutItem
from medcomm.core.wire import KINDS, Msg

C = "abc123"


def msg(seq: int, sender: str = "bob", text: str = "", kind: int = 1, t: int = 0) -> Msg:
    body = text.encode() or f"m{seq}".encode()
    return Msg(C, seq, seq.to_bytes(16, "big"), sender, t or 1000 * seq, kind, body)


def opened(members: list[str]) -> Msg:
    body = msgpack.packb({"event": "open", "title": "Fever", "members": members})
    return Msg(C, 1, b"\x00" * 16, "amina", 1000, KINDS["system"], body)


def store_with(tmp_path: Path, msgs: list[Msg]) -> LocalStore:
    s = LocalStore(tmp_path)
    s.add_messages([(m, m.seq) for m in msgs])
    return s


def test_outbox_survives_reopen_and_moves_to_history_on_ack(tmp_path: Path) -> None:
    s = LocalStore(tmp_path)
    item = OutItem(b"\x07" * 16, C, 1, b"hello")
    s.enqueue(item)
    s.close()
    s = LocalStore(tmp_path)
    assert s.outbox() == [item] and s.outbox_count() == 1
    assert [ln.state for ln in s.history(C, "amina")] == ["queued"]
    s.acked(item.cid, C, 5, 123, "amina", 0)
    assert s.outbox() == []
    lines = list(s.history(C, "amina"))
    assert [(ln.seq, ln.text, ln.state) for ln in lines] == [(5, "hello", "stored")]


def test_rejected_items_stay_visible_as_failed_and_are_not_retried(tmp_path: Path) -> None:
    s = LocalStore(tmp_path)
    item = OutItem(b"\x08" * 16, C, 1, b"x")
    s.enqueue(item)
    s.rejected(item.cid, "not a member")
    assert s.outbox() == []
    assert [ln.state for ln in s.history(C, "amina")] == ["failed"]


def test_states_follow_the_other_members_marks(tmp_path: Path) -> None:
    s = store_with(tmp_path, [opened(["amina", "bob", "carol"]), msg(2, "amina"), msg(3, "amina")])
    states = lambda: [ln.state for ln in s.history(C, "amina") if ln.seq and ln.seq > 1]  # noqa: E731
    assert states() == ["stored", "stored"]
    s.set_marks(C, "bob", 3, 3)
    assert states() == ["stored", "stored"]  # carol has not got them yet
    s.set_marks(C, "carol", 2, 0)
    assert states() == ["delivered", "stored"]
    s.set_marks(C, "carol", 3, 3)
    assert states() == ["read", "read"]
    s.set_marks(C, "carol", 1, 1)  # marks never go down
    assert states() == ["read", "read"]


def test_paging_loads_only_what_is_asked(tmp_path: Path) -> None:
    s = store_with(tmp_path, [msg(n) for n in range(1, 1001)])
    newest = list(s.history(C, "me", limit=50))
    assert [ln.seq for ln in newest] == list(range(951, 1001))
    older = list(s.history(C, "me", limit=50, before=951, queued=False))
    assert [ln.seq for ln in older] == list(range(901, 951))
    assert [ln.seq for ln in s.history(C, "me", since=998)] == [999, 1000]


def test_overview_counts_unread_and_waiting(tmp_path: Path) -> None:
    s = store_with(
        tmp_path, [opened(["amina", "bob"]), msg(2, "bob", t=5000), msg(3, "amina"), msg(4, "bob", t=9000)]
    )
    s.add_messages([(msg(5, "bob", t=9500), 5)])
    (row,) = s.overview("amina")
    assert row["title"] == "Fever" and row["members"] == ["amina", "bob"]
    assert row["unread"] == 3 and row["waiting_since"] == 9000  # the oldest after her last reply
    assert row["last_text"] == "m5" and row["last_sender"] == "bob"
    s.set_marks(C, "amina", 5, 5)
    (row,) = s.overview("amina")
    assert row["unread"] == 0


def test_cursor_only_moves_forward_and_ahead_is_remembered(tmp_path: Path) -> None:
    s = store_with(tmp_path, [msg(1), msg(2)])
    s.add_messages([(msg(1), 1)])
    assert s.cursors() == {C: 2}
    s.enqueue(OutItem(b"\x09" * 16, C, 1, b"mine"))
    s.acked(b"\x09" * 16, C, 5, 1, "amina", 2)
    assert s.ahead() == {C: {5}}


def test_a_call_the_relay_lost_mid_way_says_so_in_the_history() -> None:
    from medcomm.adapters.localstore import call_text

    record = {"event": "call", "caller": "amina", "members": ["amina", "dr.chen"], "outcome": "interrupted",
              "duration_s": 74.2, "kbps_up": {"amina": 24.1}}  # fmt: skip
    text = call_text(msgpack.packb(record))
    assert text == "call 1:14 with amina, dr.chen (kbit/s up: amina 24.1), interrupted (the relay stopped)"
    record["outcome"] = "completed"
    assert "interrupted" not in call_text(msgpack.packb(record))

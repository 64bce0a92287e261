"""Tests for medcomm.server.store.RelayStore: enrolment, consults, the durable log, receipts."""

from __future__ import annotations

import re
import sqlite3

import pytest

from medcomm.errors import AccessDenied, AuthError, NotFound, UsageError
from medcomm.server.store import RelayStore, StoredMessage, hash_code, normalise_code

_CODE_CHARS = "[ABCDEFGHJKMNPQRSTVWXYZ2-9]{4}"
CODE_RE = re.compile(rf"{_CODE_CHARS}-{_CODE_CHARS}-{_CODE_CHARS}")  # used with fullmatch
CONSULT_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{6}")  # used with fullmatch
DAY = 24 * 3600.0
T0 = 1_767_225_600_000
KEY_A = b"\xaa" * 32
KEY_B = b"\xbb" * 32
KEY_C = b"\xcc" * 32


def cid(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.fixture
def store(tmp_path):
    s = RelayStore(tmp_path / "relay")
    yield s
    s.close()


@pytest.fixture
def people(store):
    """Three enrolled users with a registered device each."""
    for name, role, key in (("ana", "clinic", KEY_A), ("bo", "doctor", KEY_B), ("cy", "doctor", KEY_C)):
        store.register(name, store.enroll(name, role, DAY), key)
    return store


@pytest.fixture
def consult(people):
    return people.open_consult("fever", "ana", ["bo"], now=T0)


def send(store, consult, sender, n, body=b"hi", kind=1, now=None):
    ((msg, new),) = store.store_batch([(consult, cid(n), sender, kind, body)], now=now)
    return msg, new


# --- files and pragmas ------------------------------------------------------------------


def test_creates_data_dir_and_database(tmp_path):
    s = RelayStore(tmp_path / "a" / "b")
    try:
        assert (tmp_path / "a" / "b" / "blobs").is_dir()
        assert s.path == tmp_path / "a" / "b" / "relay.sqlite3"
        assert s.path.is_file()
    finally:
        s.close()


def test_journal_mode_wal_and_synchronous_full(store):
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reopening_an_existing_store_keeps_the_pragmas(tmp_path):
    RelayStore(tmp_path).close()
    s = RelayStore(tmp_path)
    try:
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        s.close()


# --- enrolment and registration ---------------------------------------------------------


def test_normalise_code():
    assert normalise_code("abcd-efgh-jkmn") == "ABCDEFGHJKMN"
    assert normalise_code(" AbCd EFGH-jkmn ") == "ABCDEFGHJKMN"
    assert hash_code("abcd-efgh-jkmn") == hash_code("ABCDEFGHJKMN")
    assert hash_code("ABCD-EFGH-JKMN") != hash_code("ABCD-EFGH-JKMP")


def test_enroll_returns_a_fresh_code(store):
    codes = {store.enroll("ana", "clinic", DAY) for _ in range(5)}
    assert len(codes) == 5
    for code in codes:
        assert CODE_RE.fullmatch(code), code
    assert store.users() == [("ana", "clinic")]
    assert store.role("ana") == "clinic"


def test_codes_are_stored_hashed(store):
    code = store.enroll("ana", "clinic", DAY)
    dump = "\n".join(store.db.iterdump())
    assert code not in dump
    assert normalise_code(code) not in dump


def test_register_binds_the_key_and_returns_the_role(store):
    code = store.enroll("bo", "doctor", DAY)
    assert store.device_user(KEY_B) is None
    assert store.register("bo", code, KEY_B) == "doctor"
    assert store.device_user(KEY_B) == ("bo", "doctor")
    assert store.device_user(KEY_A) is None


def test_register_again_with_same_code_and_key_is_idempotent(store):
    code = store.enroll("bo", "doctor", DAY, now=T0)
    assert store.register("bo", code, KEY_B, now=T0 + 1) == "doctor"
    assert store.register("bo", code, KEY_B, now=T0 + 2) == "doctor"
    # even after the code would have expired: the login was already done
    assert store.register("bo", code, KEY_B, now=T0 + int(2 * DAY * 1000)) == "doctor"
    assert store.device_user(KEY_B) == ("bo", "doctor")
    assert store.db.execute("SELECT count(*) FROM devices").fetchone()[0] == 1


def test_used_code_with_another_key_is_refused(store):
    code = store.enroll("bo", "doctor", DAY)
    store.register("bo", code, KEY_B)
    with pytest.raises(AuthError) as info:
        store.register("bo", code, KEY_C)
    assert info.value.code == "auth"
    assert store.device_user(KEY_C) is None
    assert store.device_user(KEY_B) == ("bo", "doctor")


def test_wrong_code_is_refused(store):
    code = store.enroll("bo", "doctor", DAY)
    wrong = "AAAA-AAAA-AAAA" if normalise_code(code) != "AAAAAAAAAAAA" else "BBBB-BBBB-BBBB"
    with pytest.raises(AuthError):
        store.register("bo", wrong, KEY_B)
    with pytest.raises(AuthError):
        store.register("bo", "", KEY_B)
    assert store.device_user(KEY_B) is None


def test_code_for_another_name_is_refused_and_not_burnt(store):
    code = store.enroll("bo", "doctor", DAY)
    store.enroll("cy", "doctor", DAY)
    with pytest.raises(AuthError):
        store.register("cy", code, KEY_C)
    with pytest.raises(AuthError):
        store.register("nobody", code, KEY_C)
    assert store.device_user(KEY_C) is None
    # the failed attempts did not consume the code
    assert store.register("bo", code, KEY_B) == "doctor"


def test_expired_code_is_refused(store):
    ttl = 10.0
    late = store.enroll("bo", "doctor", ttl, now=T0)
    with pytest.raises(AuthError, match="expired"):
        store.register("bo", late, KEY_B, now=T0 + 10_001)
    assert store.device_user(KEY_B) is None
    on_time = store.enroll("bo", "doctor", ttl, now=T0)
    assert store.register("bo", on_time, KEY_B, now=T0 + 10_000) == "doctor"


def test_code_matching_ignores_case_dashes_and_spaces(store):
    code = store.enroll("bo", "doctor", DAY)
    assert store.register("bo", code.lower(), KEY_B) == "doctor"
    assert store.register("bo", code.replace("-", ""), KEY_B) == "doctor"
    assert store.register("bo", code.replace("-", " ").lower(), KEY_B) == "doctor"
    with pytest.raises(AuthError):  # still the same, now used, code
        store.register("bo", code.lower(), KEY_C)


def test_second_enrolment_of_a_user_adds_a_device(store):
    first = store.enroll("bo", "doctor", DAY)
    second = store.enroll("bo", "doctor", DAY)
    store.register("bo", first, KEY_B)
    store.register("bo", second, KEY_C)
    assert store.device_user(KEY_B) == ("bo", "doctor")
    assert store.device_user(KEY_C) == ("bo", "doctor")
    assert store.users() == [("bo", "doctor")]


def test_enroll_existing_user_with_other_role_is_usage_error(store):
    store.enroll("bo", "doctor", DAY)
    before = store.db.execute("SELECT count(*) FROM enrol_codes").fetchone()[0]
    with pytest.raises(UsageError):
        store.enroll("bo", "admin", DAY)
    assert store.role("bo") == "doctor"
    assert store.db.execute("SELECT count(*) FROM enrol_codes").fetchone()[0] == before


def test_key_of_another_user_is_refused(store):
    store.register("ana", store.enroll("ana", "clinic", DAY), KEY_A)
    code = store.enroll("bo", "doctor", DAY)
    with pytest.raises(AuthError):
        store.register("bo", code, KEY_A)
    assert store.device_user(KEY_A) == ("ana", "clinic")
    assert store.register("bo", code, KEY_B) == "doctor"  # the code was not burnt


def test_role_of_unknown_user_is_not_found(store):
    with pytest.raises(NotFound):
        store.role("ghost")


# --- consults and membership ------------------------------------------------------------


def test_open_consult(people):
    c = people.open_consult("fever", "ana", ["bo", "cy"], now=T0)
    assert CONSULT_RE.fullmatch(c)
    assert sorted(people.members(c)) == ["ana", "bo", "cy"]
    assert people.last_seq(c) == 0
    for user in ("ana", "bo", "cy"):
        assert people.is_member(c, user)
        people.check_member(c, user)


def test_open_consult_ids_are_distinct_and_valid(people):
    ids = [people.open_consult(f"t{i}", "ana", []) for i in range(30)]
    assert len(set(ids)) == 30
    assert all(CONSULT_RE.fullmatch(i) for i in ids)


def test_open_consult_deduplicates_members(people):
    c = people.open_consult("t", "ana", ["ana", "bo", "bo"])
    assert sorted(people.members(c)) == ["ana", "bo"]


def test_open_consult_with_unknown_member_is_not_found_and_creates_nothing(people):
    with pytest.raises(NotFound):
        people.open_consult("t", "ana", ["bo", "ghost"])
    with pytest.raises(NotFound):
        people.open_consult("t", "ghost", [])
    assert people.consults_of("ana") == []
    assert people.consults_of("bo") == []


def test_consults_of(people):
    c1 = people.open_consult("first", "ana", ["bo"], now=T0)
    c2 = people.open_consult("second", "bo", ["cy"], now=T0 + 5)
    send(people, c1, "ana", 1)
    mine = people.consults_of("bo")
    assert [m["id"] for m in mine] == [c1, c2]
    assert mine[0] == {
        "id": c1,
        "title": "first",
        "created_by": "ana",
        "created": T0,
        "last_seq": 1,
        "members": ["ana", "bo"],
    }
    assert mine[1]["created_by"] == "bo"
    assert mine[1]["last_seq"] == 0
    assert [m["id"] for m in people.consults_of("ana")] == [c1]
    assert [m["id"] for m in people.consults_of("cy")] == [c2]
    assert people.consults_of("ghost") == []
    assert sorted(people.consult_ids_of("bo")) == sorted([c1, c2])


def test_add_member(people, consult):
    assert not people.is_member(consult, "cy")
    assert people.add_member(consult, "bo", "cy", now=T0 + 1) is True
    assert people.is_member(consult, "cy")
    assert people.members(consult) == ["ana", "bo", "cy"]
    assert people.add_member(consult, "ana", "cy") is False
    assert people.add_member(consult, "ana", "ana") is False
    assert people.members(consult) == ["ana", "bo", "cy"]


def test_add_member_by_non_member_is_denied(people, consult):
    with pytest.raises(AccessDenied) as info:
        people.add_member(consult, "cy", "cy")
    assert info.value.code == "denied"
    assert not people.is_member(consult, "cy")


def test_add_member_errors(people, consult):
    with pytest.raises(NotFound):
        people.add_member("zzzzzz", "ana", "cy")
    with pytest.raises(NotFound):
        people.add_member(consult, "ana", "ghost")
    assert sorted(people.members(consult)) == ["ana", "bo"]


def test_check_member(people, consult):
    assert people.check_member(consult, "ana") is None
    with pytest.raises(AccessDenied):
        people.check_member(consult, "cy")
    with pytest.raises(NotFound):
        people.check_member("zzzzzz", "ana")
    with pytest.raises(NotFound):
        people.check_member("zzzzzz", "ghost")


# --- the message log --------------------------------------------------------------------


def test_seqs_count_from_one_per_consult(people, consult):
    other = people.open_consult("other", "bo", ["cy"])
    assert [send(people, consult, "ana", n)[0].seq for n in (1, 2, 3)] == [1, 2, 3]
    assert [send(people, other, "cy", n)[0].seq for n in (1, 2)] == [1, 2]
    assert send(people, consult, "bo", 9)[0].seq == 4
    assert people.last_seq(consult) == 4
    assert people.last_seq(other) == 2
    assert people.last_seq("zzzzzz") == 0


def test_store_batch_returns_stored_messages(people, consult):
    out = people.store_batch(
        [(consult, cid(1), "ana", 1, b"one"), (consult, cid(2), "bo", 2, b"two")], now=T0 + 7
    )
    assert out == [
        (StoredMessage(consult, 1, cid(1), "ana", T0 + 7, 1, b"one"), True),
        (StoredMessage(consult, 2, cid(2), "bo", T0 + 7, 2, b"two"), True),
    ]


def test_batch_across_consults(people, consult):
    other = people.open_consult("other", "bo", [])
    out = people.store_batch([
        (consult, cid(1), "ana", 1, b"a"),
        (other, cid(1), "bo", 1, b"b"),
        (consult, cid(2), "ana", 1, b"c"),
    ])
    got = [(m.consult, m.seq, new) for m, new in out]
    assert got == [(consult, 1, True), (other, 1, True), (consult, 2, True)]


def test_repeat_returns_original_and_consumes_no_seq(people, consult):
    first, new = send(people, consult, "ana", 1, body=b"original", kind=1, now=T0 + 100)
    assert new is True
    again, new = send(people, consult, "ana", 1, body=b"retry", kind=3, now=T0 + 999)
    assert new is False
    assert again == first  # same seq, time, kind and body as the first store
    assert people.last_seq(consult) == 1
    assert send(people, consult, "ana", 2)[0].seq == 2
    assert len(people.messages_after(consult, 0, 100)) == 2


def test_repeat_within_one_batch(people, consult):
    out = people.store_batch([(consult, cid(1), "ana", 1, b"x"), (consult, cid(1), "ana", 1, b"x")])
    assert [(m.seq, new) for m, new in out] == [(1, True), (1, False)]
    assert people.last_seq(consult) == 1


def test_same_cid_from_another_sender_or_consult_is_a_new_message(people, consult):
    other = people.open_consult("other", "ana", ["bo"])
    a, _ = send(people, consult, "ana", 1)
    b, new_b = send(people, consult, "bo", 1)
    c, new_c = send(people, other, "ana", 1)
    assert new_b and new_c
    assert (a.seq, b.seq, c.seq) == (1, 2, 1)
    assert people.last_seq(consult) == 2


def test_messages_after_pages_in_order(people, consult):
    for n in range(1, 8):
        send(people, consult, "ana" if n % 2 else "bo", n, body=bytes([n]), now=T0 + n)
    page = people.messages_after(consult, 0, 3)
    assert [m.seq for m in page] == [1, 2, 3]
    assert page[1] == StoredMessage(consult, 2, cid(2), "bo", T0 + 2, 1, b"\x02")
    assert [m.seq for m in people.messages_after(consult, 3, 3)] == [4, 5, 6]
    assert [m.seq for m in people.messages_after(consult, 6, 3)] == [7]
    assert people.messages_after(consult, 7, 3) == []
    assert [m.seq for m in people.messages_after(consult, 0, 100)] == list(range(1, 8))
    assert people.messages_after("zzzzzz", 0, 10) == []


def test_committed_data_is_visible_to_another_connection(people, consult):
    send(people, consult, "ana", 1, body=b"durable")
    other = sqlite3.connect(people.path)
    try:
        assert other.execute("SELECT seq, body FROM messages").fetchall() == [(1, b"durable")]
        assert other.execute("SELECT last_seq FROM consults WHERE id=?", (consult,)).fetchone() == (1,)
    finally:
        other.close()


def test_everything_survives_reopening(tmp_path):
    s = RelayStore(tmp_path)
    s.register("ana", s.enroll("ana", "clinic", DAY), KEY_A)
    s.enroll("bo", "doctor", DAY)
    c = s.open_consult("fever", "ana", ["bo"], now=T0)
    s.store_batch([(c, cid(n), "ana", 1, f"m{n}".encode()) for n in (1, 2, 3)], now=T0 + 1)
    s.mark(c, "bo", 2, 1)
    s.close()

    s = RelayStore(tmp_path)
    try:
        assert s.device_user(KEY_A) == ("ana", "clinic")
        assert s.users() == [("ana", "clinic"), ("bo", "doctor")]
        assert s.members(c) == ["ana", "bo"]
        assert s.last_seq(c) == 3
        assert [m.body for m in s.messages_after(c, 0, 10)] == [b"m1", b"m2", b"m3"]
        assert sorted(s.marks(c)) == [("ana", 0, 0), ("bo", 2, 0)]
        # the retry of an acknowledged message still finds the original after a restart
        ((msg, new),) = s.store_batch([(c, cid(2), "ana", 1, b"again")])
        assert (msg.seq, msg.body, new) == (2, b"m2", False)
        assert s.store_batch([(c, cid(4), "ana", 1, b"m4")])[0][0].seq == 4
    finally:
        s.close()


# --- receipts ---------------------------------------------------------------------------


def test_mark_raises_delivered_and_read(people, consult):
    for n in range(1, 6):
        send(people, consult, "ana", n)
    assert people.mark(consult, "bo", 2, 1) == (2, 0)
    assert people.mark(consult, "bo", 3, 1) == (3, 0)
    assert people.mark(consult, "bo", 2, 2) == (3, 2)  # read below delivered keeps delivered
    assert people.mark(consult, "bo", 4, 2) == (4, 4)  # read implies delivered
    assert sorted(people.marks(consult)) == [("ana", 0, 0), ("bo", 4, 4)]


def test_marks_never_go_down(people, consult):
    for n in range(1, 6):
        send(people, consult, "ana", n)
    assert people.mark(consult, "bo", 4, 2) == (4, 4)
    assert people.mark(consult, "bo", 2, 1) is None
    assert people.mark(consult, "bo", 3, 2) is None
    assert people.mark(consult, "bo", 4, 1) is None
    assert people.mark(consult, "bo", 4, 2) is None
    assert people.mark(consult, "bo", 0, 2) is None
    assert sorted(people.marks(consult)) == [("ana", 0, 0), ("bo", 4, 4)]


def test_marks_are_capped_at_last_seq(people, consult):
    for n in range(1, 4):
        send(people, consult, "ana", n)
    assert people.mark(consult, "bo", 100, 1) == (3, 0)
    assert people.mark(consult, "bo", 100, 1) is None
    assert people.mark(consult, "ana", 10**9, 2) == (3, 3)
    assert sorted(people.marks(consult)) == [("ana", 3, 3), ("bo", 3, 0)]


def test_mark_on_empty_consult_or_for_non_member_changes_nothing(people, consult):
    assert people.mark(consult, "bo", 5, 2) is None  # nothing stored yet: capped at 0
    send(people, consult, "ana", 1)
    assert people.mark(consult, "cy", 1, 2) is None
    assert people.mark("zzzzzz", "ana", 1, 2) is None
    assert sorted(people.marks(consult)) == [("ana", 0, 0), ("bo", 0, 0)]
    assert people.marks("zzzzzz") == []


def test_marks_are_per_member_and_per_consult(people, consult):
    other = people.open_consult("other", "ana", ["bo"])
    send(people, consult, "ana", 1)
    send(people, consult, "ana", 2)
    send(people, other, "ana", 1)
    assert people.mark(consult, "bo", 2, 2) == (2, 2)
    assert sorted(people.marks(consult)) == [("ana", 0, 0), ("bo", 2, 2)]
    assert sorted(people.marks(other)) == [("ana", 0, 0), ("bo", 0, 0)]

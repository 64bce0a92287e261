"""Sealed bodies, key boxes and key requests: what opens, and everything that must not."""

from __future__ import annotations

import secrets

import msgpack
import pytest

from medcomm.core import e2e
from medcomm.errors import Tampered, WireError

CID = bytes(range(16))
AMINA = e2e.Identity("amina", b"\x01" * 32)
CHEN = e2e.Identity("dr.chen", b"\x02" * 32)
OSEI = e2e.Identity("dr.osei", b"\x03" * 32)


def sealed(plain: bytes = b"Temp 39.2 C, RR 44/min") -> tuple[bytes, bytes, bytes]:
    key_id, key = e2e.new_key()
    return key_id, key, e2e.seal(key_id, key, "k7m2qd", 1, CID, "amina", plain)


def test_a_sealed_body_opens_and_costs_21_bytes() -> None:
    key_id, key, body = sealed(b"hello")
    assert len(body) == 5 + e2e.OVERHEAD == 26
    assert e2e.is_sealed(body) and e2e.key_id_of(body) == key_id
    assert b"hello" not in body
    assert e2e.open_sealed(key, "k7m2qd", 1, CID, "amina", body) == b"hello"


def test_the_same_message_sealed_twice_is_the_same_bytes() -> None:
    """The nonce is the client id: a retry of the same item is not a second encryption."""
    key_id, key = e2e.new_key()
    a = e2e.seal(key_id, key, "k7m2qd", 1, CID, "amina", b"x")
    assert a == e2e.seal(key_id, key, "k7m2qd", 1, CID, "amina", b"x")
    assert a != e2e.seal(key_id, key, "k7m2qd", 1, bytes(16), "amina", b"x")


@pytest.mark.parametrize("where", [1, 3, 5, 10, -16, -1])
def test_any_changed_byte_is_tampered(where: int) -> None:
    key_id, key, body = sealed()
    bad = bytearray(body)
    bad[where] ^= 0x01
    with pytest.raises(Tampered):
        e2e.open_sealed(key, "k7m2qd", 1, CID, "amina", bytes(bad))


@pytest.mark.parametrize("cut", [1, 5, 6, 20, -1])
def test_a_truncated_body_is_tampered(cut: int) -> None:
    _, key, body = sealed()
    with pytest.raises(Tampered):
        e2e.open_sealed(key, "k7m2qd", 1, CID, "amina", body[:cut])


@pytest.mark.parametrize(
    "consult, kind, cid, sender",
    [
        ("p3x9wa", 1, CID, "amina"),  # moved to another consult
        ("k7m2qd", 6, CID, "amina"),  # relabelled as a case card
        ("k7m2qd", 1, bytes(16), "amina"),  # another message's id
        ("k7m2qd", 1, CID, "dr.chen"),  # attributed to another member
    ],
)
def test_a_body_moved_relabelled_or_reattributed_does_not_open(
    consult: str, kind: int, cid: bytes, sender: str
) -> None:
    _, key, body = sealed()
    with pytest.raises(Tampered):
        e2e.open_sealed(key, consult, kind, cid, sender, body)


def test_the_wrong_key_does_not_open() -> None:
    _, _, body = sealed()
    with pytest.raises(Tampered):
        e2e.open_sealed(secrets.token_bytes(32), "k7m2qd", 1, CID, "amina", body)


def test_a_plain_body_is_not_taken_for_a_sealed_one() -> None:
    assert not e2e.is_sealed(b"hello")
    assert not e2e.is_sealed(b"\xe2\x80\x94 dash")  # too short to hold a tag
    with pytest.raises(Tampered):
        e2e.key_id_of(b"hi")


def _shared(owner: e2e.Identity = AMINA) -> e2e.SharedKey:
    key_id, key = e2e.new_key()
    return e2e.SharedKey(owner.name, key_id, key, owner.public)


def test_a_key_message_opens_for_each_recipient_and_no_one_else() -> None:
    k = _shared()
    (body,) = e2e.bundle(AMINA, "k7m2qd", [k], [CHEN.public])
    assert k.key not in body
    got = e2e.open_bundle(CHEN, "k7m2qd", body)
    assert got == [e2e.SharedKey("amina", k.key_id, k.key, AMINA.public)]
    assert e2e.bundle_sender(body) == AMINA.public
    assert e2e.open_bundle(OSEI, "k7m2qd", body) == []  # no box for this device


def test_a_key_box_for_another_consult_is_tampered() -> None:
    (body,) = e2e.bundle(AMINA, "k7m2qd", [_shared()], [CHEN.public])
    with pytest.raises(Tampered):
        e2e.open_bundle(CHEN, "p3x9wa", body)


def test_a_box_claiming_another_maker_does_not_open() -> None:
    """Swapping the making device's key (to pass a forged box off as amina's) breaks the box."""
    (body,) = e2e.bundle(OSEI, "k7m2qd", [_shared(AMINA)], [CHEN.public])
    obj = msgpack.unpackb(body, raw=False)
    obj[1] = AMINA.public
    assert e2e.open_bundle(CHEN, "k7m2qd", msgpack.packb(obj, use_bin_type=True)) == []


def test_many_recipients_go_in_several_key_messages() -> None:
    devices = [e2e.Identity(f"d{i}", bytes([i]) * 32).public for i in range(e2e.MAX_BOXES + 3)]
    bodies = e2e.bundle(AMINA, "k7m2qd", [_shared()], devices)
    assert len(bodies) == 2
    assert all(len(b) < 16 * 1024 for b in bodies)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x93", msgpack.packb([2, b"x" * 32, b"n" * 24, []]), msgpack.packb([1, b"short", b"n" * 24, []])],
)
def test_a_malformed_key_message_is_a_wire_error(body: bytes) -> None:
    with pytest.raises(WireError):
        e2e.open_bundle(CHEN, "k7m2qd", body)


def test_a_key_request_round_trips_and_bad_ones_are_wire_errors() -> None:
    req = e2e.KeyRequest(CHEN.public, (("amina", b"abcd"), ("dr.osei", b"wxyz")))
    assert e2e.decode_request(e2e.encode_request(req)) == req
    for bad in (b"", msgpack.packb([1, b"x", []]), msgpack.packb([1, CHEN.public, [["amina", b"toolong"]]])):
        with pytest.raises(WireError):
            e2e.decode_request(bad)

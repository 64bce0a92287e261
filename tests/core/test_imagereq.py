"""Requests for an image's original: bodies, derived ids, folding, and what a line says."""

from __future__ import annotations

import msgpack
import pytest

from medcomm.core import imagereq
from medcomm.core.imagereq import Asked, Request, fold, original_state
from medcomm.errors import WireError

IMAGE = bytes(range(16))
SHA = bytes(range(32))


def test_a_request_and_an_answer_round_trip_small() -> None:
    ask = Request(IMAGE, SHA)
    body = imagereq.encode(ask)
    assert imagereq.parse(body) == ask and len(body) < 100
    gone = Request(IMAGE, SHA, "original", "gone")
    assert imagereq.parse(imagereq.encode(gone)) == gone


@pytest.mark.parametrize(
    "obj",
    [
        {"v": 2, "image": IMAGE, "sha": SHA, "want": "original"},
        {"v": 1, "image": IMAGE[:15], "sha": SHA, "want": "original"},
        {"v": 1, "image": IMAGE.hex(), "sha": SHA, "want": "original"},
        {"v": 1, "image": IMAGE, "sha": SHA[:31], "want": "original"},
        {"v": 1, "image": IMAGE, "sha": SHA, "want": "tiles"},
        {"v": 1, "image": IMAGE, "sha": SHA, "want": "original", "answer": "maybe"},
        [1, IMAGE, SHA],
    ],
)
def test_a_body_from_another_device_is_checked(obj: object) -> None:
    with pytest.raises(WireError):
        imagereq.parse(msgpack.packb(obj, use_bin_type=True))


def test_garbage_and_oversized_bodies_are_refused() -> None:
    for body in (b"\xc1", b"", b"\x81" + b"\0" * 300):
        with pytest.raises(WireError):
            imagereq.parse(body)


def test_the_id_of_a_request_is_the_same_for_one_user_and_differs_otherwise() -> None:
    one = imagereq.request_cid("dr.chen", IMAGE)
    assert one == imagereq.request_cid("dr.chen", IMAGE) and len(one) == 16
    others = {
        imagereq.request_cid("dr.lee", IMAGE),
        imagereq.request_cid("dr.chen", bytes(16)),
        imagereq.request_cid("dr.chen", IMAGE, "original", "gone"),
    }
    assert one not in others and len(others) == 3


def test_folding_counts_each_asker_once_and_sees_an_answer() -> None:
    ask = imagereq.encode(Request(IMAGE, SHA))
    other = imagereq.encode(Request(bytes(16), SHA))
    gone = imagereq.encode(Request(IMAGE, SHA, "original", "gone"))
    wrong = imagereq.encode(Request(IMAGE, bytes(32)))  # names another original: not folded in
    got = fold(
        [
            ("dr.chen", 3, ask),
            ("dr.chen", 4, ask),
            ("dr.lee", 6, ask),
            ("dr.lee", 7, wrong),
            ("amina", 8, other),
            ("x", 9, b"junk"),
            ("amina", 10, gone),
            ("me", None, ask),
        ]
    )
    a = got[IMAGE]
    assert a.by == ["dr.chen", "dr.lee", "me"] and a.seq == 3 and a.gone == "amina"
    assert got[bytes(16)].by == ["amina"] and got[bytes(16)].gone is None
    queued = fold([("me", None, ask)])[IMAGE]
    assert queued.by == ["me"] and queued.seq is None


def test_request_lines_say_who_wants_what() -> None:
    assert imagereq.text(Request(IMAGE, SHA)) == f"asked for the original of image {IMAGE.hex()[:12]}"
    assert "no longer kept" in imagereq.text(Request(IMAGE, SHA, "original", "gone"))
    assert imagereq.fields(Request(IMAGE, SHA)) == {"image": IMAGE.hex(), "want": "original", "answer": None}


def test_what_a_line_says_of_the_original_from_either_end() -> None:
    asked = Asked(IMAGE, SHA, ["dr.chen"], 3)
    gone = Asked(IMAGE, SHA, ["dr.chen"], 3, "amina")
    # the asker's device: only what it knows without asking the relay
    assert original_state(False, False, False, None) == "on request"
    assert original_state(False, False, False, asked) == "requested"
    assert original_state(False, True, False, asked) == "downloaded"
    assert original_state(True, False, False, None) == "sent"
    assert original_state(False, False, False, gone) == "gone"
    # the sender's device: its own record says when the relay has it
    assert original_state(False, True, True, None, "kept") == "on request"
    assert original_state(False, True, True, asked, "kept") == "requested"
    assert original_state(False, True, True, asked, "up") == "at the relay"
    assert original_state(True, True, True, None, "kept") == "sent"
    assert original_state(False, True, True, None, "dropped") == "no longer kept"
    assert original_state(False, False, True, asked, "gone") == "gone"

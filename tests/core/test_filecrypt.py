"""Sealed blobs: round trips and sizes, and everything a relay or a broken disk could do to one
(changed bytes, cuts at every kind of place, extra bytes, swapped pieces, a wrong key) is
refused as Tampered, never opened in part."""

from __future__ import annotations

import os
import random

import pytest

from medcomm.core import filecrypt
from medcomm.core.filecrypt import HEADER_LEN, PIECE, TAG_LEN
from medcomm.errors import MedcommError, Tampered
from medcomm.limits import BlobCryptLimits

SEALED_PIECE = PIECE + TAG_LEN
SIZES = [0, 1, 100, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 3 * PIECE + 77]


@pytest.fixture(scope="module")
def key() -> bytes:
    return filecrypt.new_key()


@pytest.mark.parametrize("n", SIZES)
def test_a_blob_opens_to_its_plaintext_and_its_size_is_known_in_advance(key: bytes, n: int) -> None:
    data = os.urandom(n)
    sealed = filecrypt.seal(key, data)
    assert len(sealed) == filecrypt.sealed_size(n) == HEADER_LEN + n + TAG_LEN * max(1, -(-n // PIECE))
    assert filecrypt.plain_size(len(sealed)) == n
    assert filecrypt.open(key, sealed) == data
    # no plaintext on the wire (a random string under 16 bytes may turn up in 40+ random ones:
    # one byte does, one time in six)
    assert n < 16 or data[:32] not in sealed


def test_sealing_twice_gives_two_blobs_and_a_first_view_costs_41_bytes(key: bytes) -> None:
    data = os.urandom(20_000)
    a, b = filecrypt.seal(key, data), filecrypt.seal(key, data)
    assert a != b and a[:HEADER_LEN] != b[:HEADER_LEN]  # own random header: own stream
    assert filecrypt.open(key, a) == filecrypt.open(key, b) == data
    assert len(a) - len(data) == 41
    assert filecrypt.new_key() != filecrypt.new_key() and len(filecrypt.new_key()) == 32


def test_sizes_are_one_to_one_and_fits_is_the_largest_that_seals_under_a_limit() -> None:
    seen: dict[int, int] = {}
    for n in [*range(0, 300), *range(PIECE - 300, PIECE + 300), *range(5 * PIECE - 50, 5 * PIECE + 50)]:
        s = filecrypt.sealed_size(n)
        assert s not in seen  # a sealed length names one plaintext length
        seen[s] = n
        assert filecrypt.plain_size(s) == n
    gaps = [s for s in range(HEADER_LEN, 6 * SEALED_PIECE) if filecrypt.plain_size(s) is not None]
    assert all(filecrypt.sealed_size(filecrypt.plain_size(s)) == s for s in gaps)  # type: ignore[arg-type]
    assert filecrypt.plain_size(HEADER_LEN + TAG_LEN - 1) is None  # too short for one piece
    assert filecrypt.plain_size(HEADER_LEN + SEALED_PIECE + 5) is None  # a second piece shorter than a tag
    rng = random.Random(7)
    for limit in [41, 42, 100, SEALED_PIECE + HEADER_LEN, SEALED_PIECE + HEADER_LEN + 17, 16 * 1024 * 1024]:
        n = filecrypt.fits(limit)
        assert filecrypt.sealed_size(n) <= limit < filecrypt.sealed_size(n + 1)
    for _ in range(2000):
        limit = rng.randrange(41, 40 * PIECE)
        n = filecrypt.fits(limit)
        assert filecrypt.sealed_size(n) <= limit < filecrypt.sealed_size(n + 1)
    assert filecrypt.sealed_size(filecrypt.fits(16 * 1024 * 1024)) == 16 * 1024 * 1024
    with pytest.raises(ValueError):
        filecrypt.fits(40)


def flipped(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("n", [0, 500, 2 * PIECE + 9])
def test_a_changed_byte_anywhere_is_tampered(key: bytes, n: int) -> None:
    sealed = filecrypt.seal(key, os.urandom(n))
    places = {
        "header": 3,
        "first piece's tag byte": HEADER_LEN,
        "middle": len(sealed) // 2,
        "last MAC byte": len(sealed) - 1,
    }
    if n > PIECE:
        places["end of the first piece's MAC"] = HEADER_LEN + SEALED_PIECE - 1
    for where, at in places.items():
        with pytest.raises(Tampered):
            filecrypt.open(key, flipped(sealed, at))
            pytest.fail(f"a flipped byte in the {where} opened")


def test_a_cut_blob_is_tampered_wherever_it_is_cut_even_right_before_its_final_piece(key: bytes) -> None:
    data = os.urandom(2 * PIECE + 1000)  # two full pieces and a short final one
    sealed = filecrypt.seal(key, data)
    before_final = HEADER_LEN + 2 * SEALED_PIECE  # two whole MESSAGE pieces: a valid-looking length
    assert filecrypt.plain_size(before_final) == 2 * PIECE
    cuts = [0, 1, HEADER_LEN, HEADER_LEN + 10, HEADER_LEN + SEALED_PIECE, before_final]
    cuts += [before_final + 16, before_final + 17, len(sealed) - 1]
    for cut in cuts:
        with pytest.raises(Tampered):
            filecrypt.open(key, sealed[:cut])
    whole = os.urandom(2 * PIECE)
    exact = filecrypt.seal(key, whole)  # ends on a piece border: FINAL on a full piece
    assert len(exact) == HEADER_LEN + 2 * SEALED_PIECE and filecrypt.open(key, exact) == whole
    with pytest.raises(Tampered):
        filecrypt.open(key, exact[: HEADER_LEN + SEALED_PIECE])  # the first piece alone: no FINAL


def test_bytes_after_the_end_and_pieces_out_of_order_are_tampered(key: bytes) -> None:
    data = os.urandom(3 * PIECE)
    sealed = filecrypt.seal(key, data)
    for extra in (b"\0", b"\0" * TAG_LEN, os.urandom(SEALED_PIECE), filecrypt.seal(key, b"more")):
        with pytest.raises(Tampered):
            filecrypt.open(key, sealed + extra)
    head, p = (
        sealed[:HEADER_LEN],
        [sealed[HEADER_LEN + i * SEALED_PIECE : HEADER_LEN + (i + 1) * SEALED_PIECE] for i in range(3)],
    )
    for order in ((1, 0, 2), (0, 2, 1), (2, 1, 0)):
        with pytest.raises(Tampered):
            filecrypt.open(key, head + b"".join(p[i] for i in order))
    with pytest.raises(Tampered):  # the final piece of another stream under the same key
        other = filecrypt.seal(key, os.urandom(3 * PIECE))
        filecrypt.open(key, sealed[: HEADER_LEN + 2 * SEALED_PIECE] + other[HEADER_LEN + 2 * SEALED_PIECE :])


def test_a_wrong_key_or_empty_input_opens_nothing(key: bytes) -> None:
    sealed = filecrypt.seal(key, b"lab report")
    for wrong in (filecrypt.new_key(), key[:-1] + bytes([key[-1] ^ 1])):
        with pytest.raises(Tampered):
            filecrypt.open(wrong, sealed)
    for bad_key in (b"", key[:31], key + b"x"):
        with pytest.raises(Tampered):
            filecrypt.open(bad_key, sealed)
        with pytest.raises(MedcommError):
            filecrypt.seal(bad_key, b"x")
    with pytest.raises(Tampered):
        filecrypt.open(key, b"")
    empty = filecrypt.seal(key, b"")
    assert len(empty) == 41 and filecrypt.open(key, empty) == b""
    with pytest.raises(Tampered):
        filecrypt.open(filecrypt.new_key(), empty)


def test_a_blob_over_the_limit_is_neither_made_nor_opened(key: bytes) -> None:
    small = BlobCryptLimits(max_sealed=1000)
    with pytest.raises(MedcommError):
        filecrypt.seal(key, b"x" * 960, small)
    ok = filecrypt.seal(key, b"x" * 959, small)
    assert len(ok) == 1000 and filecrypt.open(key, ok, small) == b"x" * 959
    big = filecrypt.seal(key, os.urandom(5000))
    with pytest.raises(Tampered):
        filecrypt.open(key, big, small)  # refused by its length, before any work


def test_unseal_opens_a_sealed_blob_and_passes_an_old_plain_one(key: bytes) -> None:
    assert filecrypt.unseal(None, b"OggS plain") == b"OggS plain"
    assert filecrypt.unseal(key, filecrypt.seal(key, b"OggS")) == b"OggS"
    with pytest.raises(Tampered):
        filecrypt.unseal(key, b"OggS plain, not sealed at all, long enough for a header")

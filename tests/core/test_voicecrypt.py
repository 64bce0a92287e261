"""Sealed voice frames: round trip, what fails authentication, replay, the nonce, the key cache."""

from __future__ import annotations

import hashlib
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcomm.core.voicecrypt import (
    OVERHEAD,
    TAG_LEN,
    CallCrypto,
    StreamOpener,
    StreamSealer,
    VoiceCryptLimits,
    nonce,
    sealed_size,
)
from medcomm.core.voiceframe import MEDIA_HEADER, MediaFrame, level_byte, parse, with_slot
from medcomm.errors import Tampered

KEY = bytes(range(32))
OPUS = bytes.fromhex("78") + bytes(range(1, 60))  # a packet's worth of bytes (never decoded here)
LEVEL = level_byte(-23.0, True)


def media(data: bytes) -> MediaFrame:
    frame = parse(data)
    assert isinstance(frame, MediaFrame)
    return frame


def stream(n: int, step: int = 60, start: int = 0, key: bytes = KEY) -> list[tuple[int, bytes, bytes]]:
    """``n`` frames of one stream: (full ts, Opus packet, sealed frame as the relay forwards it)."""
    sealer = StreamSealer(key)
    out = []
    for i in range(n):
        ts = start + i * step
        packet = OPUS + i.to_bytes(4, "big")
        out.append((ts, packet, with_slot(sealer.seal(i, ts, LEVEL, packet), 3)))
    return out


def reason(exc: pytest.ExceptionInfo[Tampered]) -> object:
    return exc.value.data.get("reason")


# --- round trip and cost ------------------------------------------------------------------------


def test_round_trip_gives_the_packet_and_its_full_timestamp() -> None:
    opener = StreamOpener(KEY)
    for i, (ts, packet, data) in enumerate(stream(40, step=80)):
        frame = media(data)
        assert frame.slot == 3 and frame.seq == i and frame.ts == ts & 0xFFFF and frame.level == LEVEL
        assert opener.open(frame, now=ts / 1000) == (ts, packet)


def test_the_seal_costs_exactly_the_8_byte_tag() -> None:
    sealer = StreamSealer(KEY)
    for size in (1, 17, 90, 420):
        data = sealer.seal(size, size * 100, LEVEL, bytes(size))
        assert len(data) - MEDIA_HEADER - size == OVERHEAD == TAG_LEN == 8
        assert len(data) == sealed_size(size)
    assert OVERHEAD <= 24


def test_the_construction_is_chacha20_then_a_keyed_blake2b_tag() -> None:
    """Rebuilt here from the standard primitives alone, so the wire format is pinned: subkeys by
    keyed BLAKE2b, ChaCha20 at counter 0 with the ts as nonce, a 64-bit BLAKE2b tag over the
    header with the slot zeroed, the 8-byte ts and the ciphertext."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    ts, packet = 123_456, OPUS
    frame = media(StreamSealer(KEY).seal(7, ts, LEVEL, packet))
    enc = hashlib.blake2b(key=KEY, digest_size=32, person=b"medcomm voice e").digest()
    mac = hashlib.blake2b(key=KEY, digest_size=32, person=b"medcomm voice m").digest()
    nonce16 = bytes(4) + ts.to_bytes(12, "big")
    ciphertext = Cipher(algorithms.ChaCha20(enc, nonce16), mode=None).encryptor().update(packet)
    authenticated = frame.header(0) + ts.to_bytes(8, "big") + ciphertext
    tag = hashlib.blake2b(authenticated, key=mac, digest_size=8).digest()
    assert frame.payload == ciphertext + tag
    assert enc != mac and KEY not in (enc, mac)


def test_the_payload_on_the_wire_is_not_the_packet() -> None:
    for _, packet, data in stream(20):
        payload = media(data).payload
        assert packet not in payload and payload[: len(packet)] != packet


def test_the_relays_slot_rewrite_is_all_that_may_change() -> None:
    (ts, packet, data), *_ = stream(1)
    for slot in range(16):
        assert StreamOpener(KEY).open(media(with_slot(data, slot)), 0.0) == (ts, packet)


def test_the_nonce_is_the_unwrapped_timestamp_and_never_the_same_for_two() -> None:
    assert nonce(0) == bytes(12)
    assert nonce(65_536) != nonce(0)  # the same 16 bits on the wire, another nonce
    assert len({nonce(t) for t in range(0, 10 * 65_536, 997)}) == len(range(0, 10 * 65_536, 997))
    with pytest.raises(ValueError):
        nonce(-1)


def test_the_sender_refuses_a_timestamp_that_does_not_move_forward() -> None:
    sealer = StreamSealer(KEY)
    sealer.seal(0, 100, LEVEL, OPUS)
    for ts in (100, 99, 0):
        with pytest.raises(ValueError, match="nonce"):
            sealer.seal(1, ts, LEVEL, OPUS)
    sealer.seal(1, 101, LEVEL, OPUS)  # forward is fine
    with pytest.raises(ValueError):
        StreamSealer(KEY[:31])
    with pytest.raises(ValueError):
        sealer.seal(2, 200, LEVEL, b"")


# --- what fails ---------------------------------------------------------------------------------


def test_a_flipped_bit_in_the_header_fails_authentication() -> None:
    (_, _, data), *_ = stream(1, start=5000)
    for pos in range(1, MEDIA_HEADER):  # seq, ts (2 bytes), level: everything but the tag and slot
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(Tampered) as exc:
                StreamOpener(KEY).open(media(bytes(bad)), 5.0)
            assert reason(exc) == "auth", (pos, bit)


def test_a_flipped_bit_in_the_payload_or_the_tag_fails_authentication() -> None:
    (_, _, data), *_ = stream(1)
    for pos in range(MEDIA_HEADER, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(Tampered) as exc:
            StreamOpener(KEY).open(media(bytes(bad)), 0.0)
        assert reason(exc) == "auth", pos


def test_another_key_opens_nothing() -> None:
    opener = StreamOpener(secrets.token_bytes(32))
    for ts, _, data in stream(5):
        with pytest.raises(Tampered) as exc:
            opener.open(media(data), ts / 1000)
        assert reason(exc) == "auth"


def test_a_frame_moved_to_another_time_fails() -> None:
    frames = stream(3, step=60, start=1200)
    opener = StreamOpener(KEY)
    for ts, _, data in frames[:2]:
        opener.open(media(data), ts / 1000)
    f = media(frames[2][2])
    for ts16 in (f.ts + 1, f.ts + 60, f.ts - 30, (f.ts + 65_536 // 2) & 0xFFFF):
        moved = MediaFrame(f.slot, f.seq, ts16 & 0xFFFF, f.level, f.payload)
        with pytest.raises(Tampered) as exc:
            opener.open(moved, 1.4)
        assert reason(exc) == "auth", ts16
    relevelled = MediaFrame(f.slot, f.seq, f.ts, level_byte(-3.0, True), f.payload)
    with pytest.raises(Tampered):
        opener.open(relevelled, 1.4)  # the relay cannot make a quiet speaker loud
    assert opener.open(f, 1.4)[0] == frames[2][0]  # the untouched frame still opens, once


def test_a_replayed_frame_is_refused() -> None:
    frames = stream(10, step=60)
    opener = StreamOpener(KEY)
    for ts, _, data in frames:
        opener.open(media(data), ts / 1000)
    for ts, _, data in (frames[0], frames[5], frames[-1]):
        with pytest.raises(Tampered) as exc:
            opener.open(media(data), 0.6)
        assert reason(exc) == "replay", ts


def test_a_frame_older_than_the_window_is_refused_even_if_never_seen() -> None:
    limits = VoiceCryptLimits(replay_span_ms=1000)
    frames = stream(40, step=60)  # 0 .. 2340 ms
    opener = StreamOpener(KEY, limits)
    held_back = frames[3]
    for ts, _, data in frames[:3] + frames[4:]:
        opener.open(media(data), ts / 1000)
    with pytest.raises(Tampered) as exc:  # 180 ms: authentic, but 2.1 s behind the newest
        opener.open(media(held_back[2]), 2.4)
    assert reason(exc) == "replay"


def test_a_truncated_frame_is_refused() -> None:
    (_, _, data), *_ = stream(1)
    frame = media(data)
    for keep in (1, TAG_LEN - 1, TAG_LEN):  # no room for a tag and a packet
        with pytest.raises(Tampered) as exc:
            StreamOpener(KEY).open(MediaFrame(3, frame.seq, frame.ts, frame.level, frame.payload[:keep]), 0.0)
        assert reason(exc) == "truncated"
    for cut in (1, 5, len(frame.payload) - TAG_LEN - 1):  # cut, but still longer than a tag
        short = MediaFrame(3, frame.seq, frame.ts, frame.level, frame.payload[:-cut])
        with pytest.raises(Tampered) as exc:
            StreamOpener(KEY).open(short, 0.0)
        assert reason(exc) == "auth"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_change_but_the_slot_makes_a_frame_fail(data: st.DataObject) -> None:
    (_, packet, sealed), *_ = stream(1, start=70_000)
    pos = data.draw(st.integers(1, len(sealed) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != sealed[pos]))
    bad = sealed[:pos] + bytes((new,)) + sealed[pos + 1 :]
    with pytest.raises(Tampered):
        StreamOpener(KEY).open(media(bad), 70.0)


# --- loss, reordering, wraps --------------------------------------------------------------------


def test_loss_and_reordering_within_the_window_are_fine() -> None:
    frames = stream(30, step=40)
    order = [f for i, f in enumerate(frames) if i % 4 != 1]  # every fourth lost
    order[5], order[8] = order[8], order[5]  # two held back and swapped
    order[10], order[11] = order[11], order[10]
    opener = StreamOpener(KEY)
    got = [opener.open(media(data), ts / 1000) for ts, _, data in order]
    assert got == [(ts, packet) for ts, packet, _ in order]


def test_the_timestamp_unwraps_across_16_bits() -> None:
    frames = stream(10, step=120, start=65_536 - 500)  # crosses 65 535 -> 0 on the wire
    opener = StreamOpener(KEY)
    for ts, packet, data in frames:
        assert opener.open(media(data), ts / 1000) == (ts, packet)
    assert [media(d).ts for _, _, d in frames][4:6] == [(65_536 - 500 + 480) & 0xFFFF, 100]


def test_a_stream_joined_long_after_it_began_opens_from_its_first_frame_heard() -> None:
    start = 37 * 65_536 + 1234  # 40 minutes in
    frames = stream(5, step=60, start=start)
    opener = StreamOpener(KEY)
    for ts, packet, data in frames:
        assert opener.open(media(data), 100.0 + (ts - start) / 1000) == (ts, packet)
    beyond = stream(1, start=VoiceCryptLimits().max_wraps * 65_536 + 7)
    with pytest.raises(Tampered):  # further than the search goes: dropped, not a hang
        StreamOpener(KEY).open(media(beyond[0][2]), 0.0)


def test_a_mute_longer_than_the_16_bit_range_is_followed_by_the_arrival_clock() -> None:
    sealer, opener = StreamSealer(KEY), StreamOpener(KEY)
    opener.open(media(with_slot(sealer.seal(0, 1000, LEVEL, OPUS), 2)), now=10.0)
    later = 1000 + 70_000  # 70 s of mute: 16 bits alone would say 4.5 s
    frame = media(with_slot(sealer.seal(1, later, LEVEL, OPUS), 2))
    assert opener.open(frame, now=80.0) == (later, OPUS)


def test_the_replay_window_stays_bounded() -> None:
    limits = VoiceCryptLimits(max_remembered=50)
    opener = StreamOpener(KEY, limits)
    frames = stream(400, step=20)
    for ts, _, data in frames:
        opener.open(media(data), ts / 1000)
        assert opener.remembered <= 50
    # what fell out of memory is refused by the raised floor, not accepted again
    with pytest.raises(Tampered) as exc:
        opener.open(media(frames[-60][2]), 8.0)
    assert reason(exc) == "replay"


# --- the key cache of a call --------------------------------------------------------------------


class Store:
    """The local store as the call sees it: keys that arrive later, and a count of lookups."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.lookups: list[str] = []

    def lookup(self, member: str) -> bytes | None:
        self.lookups.append(member)
        return self.keys.get(member)


def test_frames_wait_for_the_key_and_the_store_is_asked_five_times_a_second_at_most() -> None:
    store = Store()
    crypto = CallCrypto(secrets.token_bytes(32), store.lookup)
    crypto.set_members({"me": 1, "dr.chen": 3})
    frames = stream(60, step=20)  # 1.2 s at 50 frames a second
    opened = []
    for ts, _, data in frames:
        if ts >= 700:
            store.keys["dr.chen"] = KEY  # the callkey message arrives
        out = crypto.open(media(data), now=ts / 1000)
        if out is not None:
            opened.append(out)
    assert crypto.stats.no_key >= 35 and crypto.stats.opened == len(opened) == 60 - crypto.stats.no_key
    assert opened == [(ts, p) for ts, p, _ in frames[-len(opened) :]]
    assert 4 <= len(store.lookups) <= 6, store.lookups  # 0.0, 0.2, 0.4, 0.6, 0.8 s
    assert crypto.stats.failed_auth == 0


def test_a_slot_nobody_is_in_has_no_key() -> None:
    store = Store()
    store.keys["dr.chen"] = KEY
    crypto = CallCrypto(secrets.token_bytes(32), store.lookup)
    crypto.set_members({"dr.chen": 5})
    assert crypto.open(media(stream(1)[0][2]), 0.0) is None  # slot 3
    assert crypto.stats.no_key == 1 and store.lookups == []


def test_a_member_who_joins_again_gets_the_new_key_and_a_fresh_window() -> None:
    store = Store()
    store.keys["dr.chen"] = KEY
    crypto = CallCrypto(secrets.token_bytes(32), store.lookup)
    crypto.set_members({"dr.chen": 3})
    assert crypto.stream_of(3) == 0
    first = stream(10, step=60, start=0)
    for ts, _, data in first:
        assert crypto.open(media(data), ts / 1000) is not None
    one = crypto.stream_of(3)
    assert one != 0
    new_key = secrets.token_bytes(32)
    second = stream(10, step=60, start=0, key=new_key)  # a new engine: its clock starts again
    for _, _, data in second[:2]:
        with pytest.raises(Tampered):  # the new key is not here yet: they fail under the old one
            crypto.open(media(data), 1.0)
    assert crypto.stats.tampered == 2
    store.keys["dr.chen"] = new_key
    opened = [crypto.open(media(data), 1.3 + ts / 1000) for ts, _, data in second[2:]]
    assert opened == [(ts, p) for ts, p, _ in second[2:]]
    assert crypto.stats.key_changes == 1
    assert crypto.stream_of(3) not in (0, one), "the receiver must start the new stream afresh"
    # the two were the new stream waiting for its key: counted again as such, not as forgeries
    assert (crypto.stats.tampered, crypto.stats.no_key) == (0, 2)
    with pytest.raises(Tampered):  # the old stream's frames do not open under the new key
        crypto.open(media(first[-1][2]), 2.0)
    assert crypto.stats.tampered == 1  # and that one is a failure: nothing opened after it


def test_forgeries_in_a_stream_stay_counted_as_failures() -> None:
    store = Store()
    store.keys["dr.chen"] = KEY
    crypto = CallCrypto(secrets.token_bytes(32), store.lookup)
    crypto.set_members({"dr.chen": 3})
    for i, (ts, _, data) in enumerate(stream(10, step=60)):
        if i % 3 == 1:
            forged = MediaFrame(3, i, ts & 0xFFFF, LEVEL, secrets.token_bytes(80))
            with pytest.raises(Tampered):
                crypto.open(forged, ts / 1000)
        assert crypto.open(media(data), ts / 1000) is not None
    assert (crypto.stats.tampered, crypto.stats.no_key, crypto.stats.key_changes) == (3, 0, 0)


def test_failures_are_counted_by_kind() -> None:
    store = Store()
    store.keys["dr.chen"] = KEY
    crypto = CallCrypto(secrets.token_bytes(32), store.lookup)
    crypto.set_members({"dr.chen": 3})
    (ts, _, data), *_ = stream(1, start=300)
    f = media(data)
    crypto.open(f, 0.3)
    cases = [
        (f, "replayed"),
        (MediaFrame(3, f.seq, f.ts, f.level, f.payload[:TAG_LEN]), "truncated"),
        (MediaFrame(3, f.seq ^ 1, f.ts, f.level, f.payload), "tampered"),
    ]
    for frame, kind in cases:
        with pytest.raises(Tampered):
            crypto.open(frame, 0.35)
        assert getattr(crypto.stats, kind) == 1, kind
    assert crypto.stats.failed_auth == 3 and crypto.stats.opened == 1
    assert crypto.stats.as_dict()["tampered"] == 1


def test_own_frames_are_sealed_under_the_own_key() -> None:
    own = secrets.token_bytes(32)
    crypto = CallCrypto(own, Store().lookup)
    data = crypto.seal(7, 4_000, LEVEL, OPUS)
    assert crypto.stats.sealed == 1
    assert data[0] == 0x40  # uplink: slot 0
    assert StreamOpener(own).open(media(data), 4.0) == (4_000, OPUS)
    with pytest.raises(ValueError):
        crypto.seal(8, 4_000, LEVEL, OPUS)

"""The voice plane's binary frames: layout, strictness, the relay's rewrite, wrapped counters."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcomm.core.voiceframe import (
    FEEDBACK_SIZE,
    MEDIA_HEADER,
    VOICE,
    Feedback,
    MediaFrame,
    PathHint,
    Unwrapper,
    VoiceLimits,
    frame_kind,
    is_voice,
    level_byte,
    level_dbov,
    level_parts,
    media_level,
    parse,
    with_slot,
)
from medcomm.errors import LimitExceeded, WireError

slots = st.integers(0, 15)
u16 = st.integers(0, 0xFFFF)
media_frames = st.builds(
    MediaFrame,
    slots,
    st.integers(0, 255),
    u16,
    st.integers(0, 255),
    st.binary(min_size=1, max_size=VOICE.max_frame - MEDIA_HEADER),
)
feedbacks = st.builds(Feedback, slots, u16, u16, u16, st.integers(0, 1000))
hints = st.builds(PathHint, slots, u16)


# --- layout -------------------------------------------------------------------------------


def test_media_layout_is_five_header_bytes_then_the_packet() -> None:
    frame = MediaFrame(3, 0xAB, 0x1234, level_byte(-20.0, True), b"opus")
    data = frame.pack()
    assert len(data) == MEDIA_HEADER + 4
    assert data[0] == 0x40 | 3
    assert data[1] == 0xAB
    assert data[2:4] == (0x1234).to_bytes(2, "big")
    assert data[4] & 0x80 and data[4] & 0x7F == 127 - 20
    assert data[5:] == b"opus"
    assert parse(data) == frame


@given(media_frames, slots)
def test_header_with_another_slot_differs_in_the_slot_bits_only(frame: MediaFrame, slot: int) -> None:
    data = frame.pack()
    assert data == frame.header() + frame.payload
    other = frame.header(slot)
    assert other[0] == 0x40 | slot and other[1:] == data[1:MEDIA_HEADER]
    assert with_slot(data, slot)[:MEDIA_HEADER] == other  # what a sealed payload is bound to survives


def test_header_refuses_a_slot_out_of_range() -> None:
    frame = MediaFrame(0, 1, 2, 3, b"x")
    for slot in (-1, 16):
        with pytest.raises(WireError):
            frame.header(slot)


def test_feedback_layout_is_a_tag_and_four_big_endian_u16() -> None:
    fb = Feedback(2, 0xBEEF, 340, 120, 1000)
    data = fb.pack()
    assert len(data) == FEEDBACK_SIZE == 1 + 4 * 2
    assert data[0] == 0x60 | 2
    fields = [int.from_bytes(data[i : i + 2], "big") for i in range(1, FEEDBACK_SIZE, 2)]
    assert fields == [0xBEEF, 340, 120, 1000]
    assert parse(data) == fb


@given(media_frames)
def test_media_round_trip(frame: MediaFrame) -> None:
    data = frame.pack()
    assert is_voice(data) and frame_kind(data) == "media"
    assert parse(data) == frame
    assert media_level(data) == frame.level


@given(feedbacks)
def test_feedback_round_trip(fb: Feedback) -> None:
    data = fb.pack()
    assert is_voice(data) and frame_kind(data) == "feedback"
    assert parse(data) == fb


def test_path_hint_layout_is_a_tag_and_one_big_endian_u16() -> None:
    hint = PathHint(5, 0x0190)
    data = hint.pack()
    assert data == bytes([0x25, 0x01, 0x90])
    assert parse(data) == hint and frame_kind(data) == "path" and is_voice(data)


@given(hints)
def test_path_hint_round_trip(hint: PathHint) -> None:
    assert parse(hint.pack()) == hint


def test_other_frames_are_not_voice() -> None:
    for obj in ([1, "x"], [4, "abc123", b"\x00" * 16, 1, b"body"], list(range(20))):
        data = msgpack.packb(obj)
        assert data[0] >= 0x90 and not is_voice(data)
    assert not is_voice(b"")
    assert is_voice(MediaFrame(0, 0, 0, 0, b"x").pack())


# --- strictness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40",
        b"\x40\x00\x00\x00\x00",  # header without a packet
        b"\x60" + b"\x00" * 7,  # feedback one byte short
        b"\x60" + b"\x00" * 9,  # feedback one byte long
        b"\x60" + b"\x00" * 10,  # the 11 bytes the brief's summary named
        b"\x20\x01",  # path hint one byte short
        b"\x20\x01\x02\x03",  # ... one byte long
        b"\x50" + b"\x00" * 10,  # unknown voice tags
        b"\x70" + b"\x00" * 10,
        b"\x00" * 11,
        b"\x90" + b"\x00" * 10,  # msgpack, not voice
        b"\x61" + b"\x00" * 6 + (1001).to_bytes(2, "big"),  # concealed over 1000 permille
    ],
)
def test_malformed_frames_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        parse(data)


def test_oversize_frames_are_over_the_limit() -> None:
    big = b"\x40\x01\x00\x00\x00" + b"\x00" * (VOICE.max_frame - MEDIA_HEADER + 1)
    with pytest.raises(LimitExceeded) as err:
        parse(big)
    assert err.value.data["limit"] == VOICE.max_frame
    with pytest.raises(LimitExceeded):
        with_slot(big, 1)
    with pytest.raises(LimitExceeded):
        MediaFrame(0, 0, 0, 0, big).pack()
    assert parse(big, VoiceLimits(max_frame=4096)).payload == big[MEDIA_HEADER:]


@given(st.binary(max_size=40) | st.binary(min_size=1495, max_size=1510))
@settings(max_examples=400)
def test_random_bytes_only_ever_raise_wire_error(data: bytes) -> None:
    for decode in (parse, frame_kind, media_level, lambda d: with_slot(d, 5)):
        try:
            decode(data)
        except WireError:
            pass


@given(st.sampled_from([0x20, 0x2F, 0x40, 0x4F, 0x60, 0x6A]), st.binary(max_size=20))
def test_voice_tagged_random_bodies_parse_or_raise_wire_error(first: int, rest: bytes) -> None:
    data = bytes([first]) + rest
    try:
        frame = parse(data)
    except WireError:
        return
    assert frame.pack() == data


@pytest.mark.parametrize(
    "build",
    [
        lambda: MediaFrame(16, 0, 0, 0, b"x"),
        lambda: MediaFrame(0, 256, 0, 0, b"x"),
        lambda: MediaFrame(0, 0, 65536, 0, b"x"),
        lambda: MediaFrame(0, 0, 0, 256, b"x"),
        lambda: MediaFrame(0, 0, 0, 0, b""),
        lambda: Feedback(0, -1, 0, 0, 0),
        lambda: Feedback(0, 0, 0, 0, 1001),
        lambda: PathHint(16, 0),
        lambda: PathHint(0, 65536),
    ],
)
def test_out_of_range_fields_are_refused(build: object) -> None:
    with pytest.raises(WireError):
        build()  # type: ignore[operator]


def test_outgoing_and_report_wrap_and_clamp_the_senders_numbers() -> None:
    frame = MediaFrame.outgoing(seq=300, ts_ms=70_000, level=5, payload=b"p")
    assert (frame.slot, frame.seq, frame.ts) == (0, 300 % 256, 70_000 % 65536)
    fb = Feedback.report(1, echo_ts=70_000, hold_ms=99_999.0, jb_ms=-5.0, concealed_pm=1500.0)
    assert (fb.echo_ts, fb.hold_ms, fb.jb_ms, fb.concealed_pm) == (70_000 % 65536, 0xFFFF, 0, 1000)
    assert Feedback.report(0, 0, math.nan, 12.6, 3.4).hold_ms == 0
    assert Feedback.report(0, 0, 1.0, 12.6, 3.4).jb_ms == 13
    assert [PathHint.outgoing(ms).rtt_ms for ms in (412.6, -1.0, 1e6, math.nan)] == [413, 0, 0xFFFF, 0]


# --- the relay's rewrite ------------------------------------------------------------------


@given(st.one_of(media_frames, feedbacks, hints), slots)
def test_with_slot_changes_only_the_slot(frame: MediaFrame | Feedback | PathHint, slot: int) -> None:
    data = frame.pack()
    out = with_slot(data, slot)
    assert out[1:] == data[1:] and out[0] & 0xF0 == data[0] & 0xF0
    assert parse(out).slot == slot
    assert parse(out) == type(frame)(slot, *[getattr(frame, f) for f in frame.__slots__[1:]])


def test_with_slot_refuses_what_it_cannot_route() -> None:
    with pytest.raises(WireError):
        with_slot(msgpack.packb([1, 2]), 1)
    with pytest.raises(WireError):
        with_slot(b"\x40\x00\x00\x00\x00", 1)
    with pytest.raises(ValueError):
        with_slot(MediaFrame(0, 0, 0, 0, b"x").pack(), 16)
    with pytest.raises(WireError):
        media_level(Feedback(0, 0, 0, 0, 0).pack())


# --- level byte ---------------------------------------------------------------------------


def test_level_byte_scale_and_clamps() -> None:
    assert level_byte(0.0, False) == 127
    assert level_byte(6.0, False) == 127  # over full scale
    assert level_byte(-127.0, False) == 0
    assert level_byte(-200.0, False) == level_byte(-math.inf, False) == level_byte(math.nan, False) == 0
    assert level_byte(-30.0, True) == 0x80 | 97
    assert level_parts(level_byte(-30.0, True)) == (-30.0, True)
    assert level_dbov(0) == -127.0
    loud = [level_byte(d / 2, False) for d in range(-300, 20)]
    assert loud == sorted(loud), "louder never ranks lower"
    for db in range(-127, 1):
        for talking in (False, True):
            assert level_parts(level_byte(db + 0.3, talking)) == (float(db), talking)
    frame = MediaFrame(0, 0, 0, level_byte(-12.0, True), b"x")
    assert frame.talking and frame.dbov == -12.0


# --- wrapped counters ---------------------------------------------------------------------


def test_ts_unwraps_across_many_wraps() -> None:
    u = Unwrapper(16)
    ts = [i * 60 for i in range(5000)]  # 300 s of 60 ms packets: 4.6 wraps
    assert [u.unwrap(t & 0xFFFF) for t in ts] == ts


def test_seq_unwraps_and_tolerates_a_moderate_step_back() -> None:
    u = Unwrapper(8)
    assert [u.unwrap(s & 0xFF) for s in range(250, 262)] == list(range(250, 262))
    assert u.unwrap((261 - 10) & 0xFF) == 251  # a step back, not a wrap forward
    assert u.last == 261  # the reference does not move back
    assert u.unwrap(262 & 0xFF) == 262


def test_long_forward_jumps_within_the_window_and_with_a_hint() -> None:
    u = Unwrapper(16)
    u.unwrap(1000)
    assert u.unwrap((1000 + 40_000) & 0xFFFF) == 41_000  # a 40 s pause in sending
    assert u.unwrap((41_000 - 16_000) & 0xFFFF) == 25_000  # a 16 s step back still reads back
    # a 70 s stall is beyond any 16-bit window; the arrival clock says roughly where it is
    assert u.unwrap((41_000 + 70_000) & 0xFFFF, near=41_000 + 69_000) == 111_000
    assert u.last == 111_000


def test_first_value_and_reset() -> None:
    u = Unwrapper(16)
    assert u.unwrap(65_000) == 65_000
    u.reset()
    assert u.last is None and u.unwrap(5) == 5
    assert Unwrapper(16).unwrap(5, near=3 * 65536) == 3 * 65536 + 5
    with pytest.raises(ValueError):
        Unwrapper(8, max_back=256)


@given(
    st.integers(0, 2**20),
    st.lists(st.integers(0, 3 * 2**16 // 4 - 1) | st.integers(-(2**14), -1), max_size=60),
)
def test_unwrap_recovers_any_walk_with_steps_inside_the_window(start: int, moves: list[int]) -> None:
    u = Unwrapper(16)
    value = start
    assert u.unwrap(value & 0xFFFF) == value & 0xFFFF
    value &= 0xFFFF
    high = value
    for move in moves:
        # a step back is measured from the highest value seen, as the unwrapper does
        value = value + move if move >= 0 else high + move
        high = max(high, value)
        assert u.unwrap(value & 0xFFFF) == value

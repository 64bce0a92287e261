"""Tests for medcomm.core.wire: frames, the compact encoding and the strict decoder."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medcomm.core import wire
from medcomm.core.wire import (
    CID_LEN,
    CLIENT_TYPES,
    CONSULT_ALPHABET,
    FRAME_TYPES,
    KINDS,
    RELAY_TYPES,
    Auth,
    CallState,
    CaughtUp,
    Challenge,
    EarlyAuth,
    Err,
    Frame,
    Msg,
    Ok,
    Ready,
    Receipt,
    Receipts,
    Register,
    Reject,
    Request,
    Send,
    Stored,
    Sub,
    T,
    Welcome,
    auth_message,
    consult_id,
    decode,
    encode,
    user_name,
)
from medcomm.errors import LimitExceeded, WireError
from medcomm.limits import WIRE

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CID = bytes(range(CID_LEN))
T_MS = 1_767_225_600_000  # 2026-01-01 in milliseconds: a realistic relay time

SAMPLES: dict[type[Frame], Frame] = {
    Auth: Auth(b"\x01" * 32, b"\x02" * 64),
    Register: Register("dr.ng-1_x", "ABCD-EFGH-JKMN", b"\x03" * 32, b"\x04" * 64),
    Request: Request(7, "open", {"title": "fever", "others": ["ana", "bo"], "n": 3}),
    Send: Send("abc123", CID, KINDS["text"], "hello \u00e9".encode()),
    Sub: Sub({"abc123": 5, "zzzzzz": 0}, True),
    Receipt: Receipt("abc123", 9, 2),
    EarlyAuth: EarlyAuth(b"\x01" * 32, T_MS, b"\x06" * 16, b"\x02" * 64),
    Challenge: Challenge(b"\x05" * 32, T_MS),
    Welcome: Welcome("ana", "doctor", T_MS),
    Ok: Ok(3, {"id": "abc123", "list": [1, "two", b"three", None, True, 1.5]}),
    Err: Err(0, "auth", "bad signature"),
    Stored: Stored(CID, "abc123", 42, T_MS),
    Msg: Msg("abc123", 42, CID, "ana", T_MS, KINDS["image"], b"\x00\xff" * 10),
    CaughtUp: CaughtUp("abc123", 42, False),
    Receipts: Receipts("abc123", "bo", 41, 40),
    Reject: Reject(CID, "denied", "not a member"),
    Ready: Ready(3),
    CallState: CallState("abcd2345", "abc123", "active", "ana", {"ana": 1, "bo": 2}, T_MS),
}


def raw(*items) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def _name(frame: Frame) -> str:
    return type(frame).__name__


def fields_of(frame: Frame) -> list:
    return [getattr(frame, f.name) for f in dataclasses.fields(frame)]


# --- round trips and the type table -----------------------------------------------------


def test_samples_cover_every_frame_type():
    assert set(SAMPLES) == set(FRAME_TYPES.values())
    assert len(FRAME_TYPES) == len(T)
    for code, cls in FRAME_TYPES.items():
        assert cls.TYPE == code
        assert len(cls.CHECKS) == len(dataclasses.fields(cls))


def test_client_and_relay_type_sets():
    assert CLIENT_TYPES == {T.AUTH, T.REGISTER, T.REQUEST, T.SEND, T.SUB, T.RECEIPT}
    assert RELAY_TYPES == set(FRAME_TYPES) - CLIENT_TYPES - {T.EARLY}  # early: in upgrade headers only
    assert all(t >= 10 for t in RELAY_TYPES)


@pytest.mark.parametrize("frame", list(SAMPLES.values()), ids=_name)
def test_round_trip(frame):
    data = encode(frame)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(frame)
    assert back == frame
    # Positional layout: [type code, field, field, ...] with no names on the wire.
    assert msgpack.unpackb(data, raw=False) == [int(frame.TYPE), *fields_of(frame)]


@pytest.mark.parametrize("frame", list(SAMPLES.values()), ids=_name)
def test_round_trip_with_allowed_set_and_buffers(frame):
    allowed = CLIENT_TYPES if frame.TYPE < 10 else RELAY_TYPES
    if frame.TYPE == T.EARLY:
        allowed = frozenset({T.EARLY})
    data = encode(frame)
    assert decode(data, allowed) == frame
    assert decode(bytearray(data)) == frame
    assert decode(memoryview(data)) == frame


def test_defaults_round_trip():
    assert decode(encode(Sub({}))) == Sub({}, False)
    assert decode(encode(Request(0, "whoami"))) == Request(0, "whoami", {})


def test_kinds_are_fixed_numbers_never_reused():
    """Kinds are stored in every history: a number once given keeps its meaning."""
    assert KINDS == {
        "text": 1, "image": 2, "note": 3, "call": 4, "system": 5, "case": 6, "status": 7, "followup": 8,
        "request": 9, "key": 10, "keyreq": 11, "callkey": 12, "title": 13,
    }
    assert len(set(KINDS.values())) == len(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS.values()))
def test_every_kind_round_trips(kind):
    frame = Send("zzzzzz", CID, kind, b"")
    assert decode(encode(frame)).kind == kind


@pytest.mark.parametrize("role", wire.ROLES)
def test_every_role_round_trips(role):
    assert decode(encode(Welcome("x", role, 0))).role == role


def test_uint_extremes_round_trip():
    assert decode(encode(Ready(2**63 - 1))) == Ready(2**63 - 1)
    assert decode(encode(Ready(0))) == Ready(0)


# --- compactness (a product requirement on 24 kbit/s links) ----------------------------


def test_send_with_60_char_text_is_at_most_100_bytes():
    body = ("x" * 60).encode()
    data = encode(Send("abc123", b"\xee" * CID_LEN, KINDS["text"], body))
    assert len(data) <= 100


def test_stored_is_at_most_40_bytes():
    data = encode(Stored(b"\xee" * CID_LEN, "abc123", 65_535, T_MS))
    assert len(data) <= 40


# --- size limits ------------------------------------------------------------------------


def test_frame_at_the_limit_decodes_and_one_byte_over_does_not():
    overhead = len(encode(Ok(0, b"x" * 60_000))) - 60_000
    at_limit = encode(Ok(0, b"x" * (WIRE.max_frame - overhead)))
    assert len(at_limit) == WIRE.max_frame
    assert decode(at_limit).result == b"x" * (WIRE.max_frame - overhead)
    over = encode(Ok(0, b"x" * (WIRE.max_frame - overhead + 1)))
    assert len(over) == WIRE.max_frame + 1
    with pytest.raises(LimitExceeded):
        decode(over)


def test_oversize_garbage_is_limit_exceeded_before_parsing():
    with pytest.raises(LimitExceeded):
        decode(b"\xc1" * (WIRE.max_frame + 1))
    with pytest.raises(LimitExceeded):
        decode(bytearray(WIRE.max_frame * 2))


def test_body_at_max_body_is_accepted():
    body = b"b" * WIRE.max_body
    assert decode(encode(Send("abc123", CID, 1, body))).body == body
    assert decode(encode(Msg("abc123", 1, CID, "ana", T_MS, 1, body))).body == body


@pytest.mark.parametrize("make", [
    lambda body: Send("abc123", CID, 1, body),
    lambda body: Msg("abc123", 1, CID, "ana", T_MS, 1, body),
], ids=["Send", "Msg"])
def test_body_over_max_body_is_limit_exceeded(make):
    data = encode(make(b"b" * (WIRE.max_body + 1)))
    assert len(data) <= WIRE.max_frame  # it is the body limit, not the frame limit
    with pytest.raises(LimitExceeded):
        decode(data)


def test_cursor_map_at_max_cursors_is_accepted():
    cursors = {f"{i:06d}": i for i in range(WIRE.max_cursors)}
    assert decode(encode(Sub(cursors))).cursors == cursors


def test_cursor_map_over_max_cursors_is_refused():
    cursors = {f"{i:06d}": i for i in range(WIRE.max_cursors + 1)}
    data = encode(Sub(cursors))
    assert len(data) <= WIRE.max_frame
    with pytest.raises(WireError):
        decode(data)


def test_cursor_map_over_max_cursors_is_limit_exceeded():
    cursors = {f"{i:06d}": i for i in range(WIRE.max_cursors + 1)}
    with pytest.raises(LimitExceeded):
        decode(encode(Sub(cursors)))


# --- shapes that must be refused --------------------------------------------------------


@pytest.mark.parametrize("data", ["", "[4]", "\x94\x04"], ids=repr)
def test_text_input_is_refused(data):
    with pytest.raises(WireError, match="text frames"):
        decode(data)


@pytest.mark.parametrize("data", [None, 5, [4, "abc123"], {"t": 4}], ids=repr)
def test_non_buffer_input_is_refused(data):
    with pytest.raises(WireError):
        decode(data)


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",  # never-used msgpack byte
    b"\x94\x04",  # truncated array
    msgpack.packb(4),
    msgpack.packb("send"),
    msgpack.packb({"type": 4}),
    msgpack.packb([]),
    msgpack.packb(["4", "abc123"]),
    msgpack.packb([4.0, "abc123", CID, 1, b""], use_bin_type=True),
    msgpack.packb([True]),  # bool is not a type code (True == 1 == AUTH)
    msgpack.packb([None]),
    msgpack.packb([[4]]),
    encode(SAMPLES[Ready]) + b"\x00",  # trailing data
    b"\x91" * 60_000 + b"\xc0",  # nesting deeper than the unpacker's stack
    b"\x93\x0d\x00\xa1\xff",  # invalid UTF-8 in a str
    msgpack.packb([12, 0, msgpack.ExtType(1, b"abc")], use_bin_type=True),
    msgpack.packb([12, 0, msgpack.Timestamp(0)], use_bin_type=True),
    msgpack.packb([12, 0, {1: 2}]),  # non-string map key
    msgpack.packb([12, 0, list(range(65))]),  # array longer than any frame needs
], ids=lambda d: d[:12].hex())
def test_malformed_is_wire_error(data):
    with pytest.raises(WireError):
        decode(data)


@pytest.mark.parametrize("code", [0, 8, 9, 21, 99, 2**32, -1, -13])
def test_unknown_type_codes_are_refused(code):
    with pytest.raises(WireError, match="type"):
        decode(raw(code, 1, 2))


@pytest.mark.parametrize("frame", [f for f in SAMPLES.values() if f.TYPE >= 10], ids=_name)
def test_relay_frames_refused_when_only_client_frames_allowed(frame):
    data = encode(frame)
    decode(data)  # fine without a filter
    with pytest.raises(WireError):
        decode(data, CLIENT_TYPES)


@pytest.mark.parametrize("frame", [f for f in SAMPLES.values() if f.TYPE < 10], ids=_name)
def test_client_frames_refused_when_only_relay_frames_allowed(frame):
    with pytest.raises(WireError):
        decode(encode(frame), RELAY_TYPES)


def test_relay_auth_phase_filter():
    allowed = frozenset({T.AUTH, T.REGISTER})
    assert decode(encode(SAMPLES[Auth]), allowed) == SAMPLES[Auth]
    assert decode(encode(SAMPLES[Register]), allowed) == SAMPLES[Register]
    for frame in (SAMPLES[Send], SAMPLES[Sub], SAMPLES[Request]):
        with pytest.raises(WireError):
            decode(encode(frame), allowed)
    with pytest.raises(WireError):
        decode(encode(SAMPLES[Auth]), frozenset())


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_wrong_field_count_is_refused(cls):
    values = fields_of(SAMPLES[cls])
    with pytest.raises(WireError, match="fields"):
        decode(raw(int(cls.TYPE), *values, 0))
    with pytest.raises(WireError, match="fields"):
        decode(raw(int(cls.TYPE), *values[:-1]))
    with pytest.raises(WireError):
        decode(raw(int(cls.TYPE)))


_CASES = [
    (cls, i)
    for cls in SAMPLES
    for i in range(len(cls.CHECKS))
    if not (cls is Ok and i == 1)  # Ok.result is free-form by design
]


@pytest.mark.parametrize(
    "bad", [None, [None], 1.5, "x" * 600, -1], ids=["none", "list", "float", "longstr", "neg"]
)
@pytest.mark.parametrize(("cls", "index"), _CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_wrong_field_type_is_refused(cls, index, bad):
    values = fields_of(SAMPLES[cls])
    values[index] = bad
    with pytest.raises(WireError):
        decode(raw(int(cls.TYPE), *values))


@pytest.mark.parametrize(("frame_values", "what"), [
    ([T.READY, True], "bool is not a uint"),
    ([T.READY, 2**63], "uint over 2**63"),
    ([T.CAUGHT_UP, "abc123", 1, 1], "int is not a bool"),
    ([T.CAUGHT_UP, "abc123", 1, None], "None is not a bool"),
    ([T.AUTH, b"\x01" * 31, b"\x02" * 64], "short key"),
    ([T.AUTH, b"\x01" * 33, b"\x02" * 64], "long key"),
    ([T.AUTH, "\x01" * 32, b"\x02" * 64], "key as str"),
    ([T.AUTH, b"\x01" * 32, b"\x02" * 63], "short sig"),
    ([T.SEND, "abc123", CID[:-1], 1, b""], "short cid"),
    ([T.SEND, "abc123", CID, 1, "text body"], "str body"),
    ([T.SEND, "abc123", CID, 0, b""], "kind 0"),
    ([T.SEND, "abc123", CID, 99, b""], "kind 99"),
    ([T.SEND, "abc123", CID, True, b""], "kind True"),
    ([T.SEND, "abc123", CID, "text", b""], "kind by name"),
    ([T.SEND, "abc123", CID, 1.0, b""], "kind float"),
    ([T.MSG, "abc123", 1, CID, "ana", T_MS, 14, b""], "msg kind 14"),
    ([T.RECEIPT, "abc123", 1, 0], "state 0"),
    ([T.RECEIPT, "abc123", 1, 3], "state 3"),
    ([T.RECEIPT, "abc123", -1, 1], "negative seq"),
    ([T.WELCOME, "ana", "nurse"], "unknown role"),
    ([T.WELCOME, "ana", b"doctor"], "role as bytes"),
    ([T.REQUEST, 1, "open", {b"k": 1}], "bytes key in args"),
    ([T.REQUEST, 1, "open", [1]], "args not a map"),
    ([T.REQUEST, 1, "o" * 33, {}], "op too long"),
    ([T.REGISTER, "ana", "c" * 65, b"\x01" * 32, b"\x02" * 64], "code too long"),
    ([T.ERR, 0, "auth", "r" * 501], "reason too long"),
    ([T.SUB, {"abc123": -1}, False], "negative cursor"),
    ([T.SUB, {"abc123": True}, False], "bool cursor"),
    ([T.SUB, {"ABC123": 1}, False], "bad cursor consult"),
    ([T.SUB, {b"abc123": 1}, False], "bytes cursor key"),
    ([T.SUB, [["abc123", 1]], False], "cursor list"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_specific_bad_fields(frame_values, what):
    with pytest.raises(WireError):
        decode(raw(int(frame_values[0]), *frame_values[1:]))


def test_text_limits_are_inclusive():
    assert decode(raw(T.ERR, 0, "c" * 32, "r" * 500)) == Err(0, "c" * 32, "r" * 500)
    assert decode(raw(T.REQUEST, 1, "o" * 32, {})).op == "o" * 32


@pytest.mark.parametrize("state", [True, 2.0])
def test_receipt_state_must_be_an_int(state):
    with pytest.raises(WireError):
        decode(raw(T.RECEIPT, "abc123", 1, state))


# --- validators -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc123", "000000", "zzzzzz", CONSULT_ALPHABET[:6], CONSULT_ALPHABET[-6:]])
def test_consult_id_accepts(value):
    assert consult_id(value) == value


@pytest.mark.parametrize("value", [
    "", "abc12", "abc1234", "ABC123", "abci23", "abcl23", "abco23", "abcu23",
    "abc 12", " abc12", "abc-12", "ab\u00e7123", b"abc123", 123456, None, ["abc123"],
], ids=repr)
def test_consult_id_refuses(value):
    with pytest.raises(WireError):
        consult_id(value)


def test_consult_alphabet_is_32_unambiguous_chars():
    assert len(set(CONSULT_ALPHABET)) == 32
    assert not set("ilou") & set(CONSULT_ALPHABET)
    for ch in CONSULT_ALPHABET:
        assert consult_id(ch * 6) == ch * 6


@pytest.mark.parametrize("value", ["a", "0", "ana", "dr.ng-1_x", "a" * 64, "9lives"])
def test_user_name_accepts(value):
    assert user_name(value) == value


@pytest.mark.parametrize("value", [
    "", "Ana", "-ana", ".ana", "_ana", "a" * 65, "ana smith", "b\u00f6b", "ana/1", "ana@x",
    b"ana", 5, None,
], ids=repr)
def test_user_name_refuses(value):
    with pytest.raises(WireError):
        user_name(value)


@pytest.mark.parametrize(("check", "value"), [(consult_id, "abc123\n"), (user_name, "ana\n")])
def test_validators_refuse_trailing_newline(check, value):
    with pytest.raises(WireError):
        check(value)


def test_send_with_newline_consult_id_is_refused():
    with pytest.raises(WireError):
        decode(raw(T.SEND, "abc123\n", CID, 1, b""))


def test_auth_message_is_domain_separated():
    nonce = b"\x07" * 32
    assert auth_message(nonce) == b"medcomm-v1\x00auth\x00" + nonce
    assert auth_message(nonce, b"register") == b"medcomm-v1\x00register\x00" + nonce
    assert auth_message(nonce, b"auth") != auth_message(nonce, b"register")
    assert auth_message(nonce) != auth_message(b"\x08" * 32)


# --- fuzzing: WireError and nothing else -------------------------------------------------


def _decode_or_wire_error(data: bytes, allowed=None):
    try:
        frame = decode(data, allowed)
    except WireError:
        return None
    assert isinstance(frame, Frame)
    if allowed is not None:
        assert frame.TYPE in allowed
    return frame


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_wire_error(data):
    _decode_or_wire_error(data)
    _decode_or_wire_error(data, CLIENT_TYPES)


_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_scalars = (
    st.none()
    | st.booleans()
    | _ints
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)


def _nested(leaves: int) -> st.SearchStrategy:
    return st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8) | _ints, inner, max_size=5),
        max_leaves=leaves,
    )


_values = _nested(25)


@FUZZ
@given(_values)
def test_arbitrary_msgpack_values_never_raise_anything_but_wire_error(value):
    data = msgpack.packb(value, use_bin_type=True)
    frame = _decode_or_wire_error(data)
    if frame is not None:  # only a well-formed list can decode, and then it round-trips
        assert type(value) is list
        assert decode(encode(frame)) == frame


@FUZZ
@given(st.sampled_from(sorted(FRAME_TYPES)), st.lists(_scalars | _nested(6), max_size=9))
def test_valid_type_code_with_arbitrary_fields(code, values):
    data = msgpack.packb([code, *values], use_bin_type=True)
    frame = _decode_or_wire_error(data)
    if frame is not None:
        assert type(frame) is FRAME_TYPES[code]
        assert len(values) == len(FRAME_TYPES[code].CHECKS)
        assert decode(encode(frame)) == frame
    else:
        with pytest.raises(WireError):
            decode(data)


@FUZZ
@given(st.sampled_from(list(SAMPLES.values())), st.data())
def test_corrupted_valid_frames_never_raise_anything_but_wire_error(frame, data):
    encoded = bytearray(encode(frame))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    _decode_or_wire_error(bytes(encoded))
    _decode_or_wire_error(bytes(encoded[:cut]))


def test_early_auth_travels_as_a_header_value_and_back():
    proof = EarlyAuth(b"\x01" * 32, T_MS, b"\x06" * 16, b"\x02" * 64)
    value = wire.header_value(proof)
    assert value.isascii() and "=" not in value and "\n" not in value
    assert wire.from_header(value, frozenset({T.EARLY})) == proof
    with pytest.raises(WireError):  # a Sub is not accepted where a proof is expected
        wire.from_header(wire.header_value(Sub({"abc123": 1}, True)), frozenset({T.EARLY}))
    with pytest.raises(WireError):
        wire.from_header("not base64!", frozenset({T.EARLY}))
    with pytest.raises(LimitExceeded):
        wire.from_header("A" * (wire.MAX_EARLY_HEADER + 1), frozenset({T.EARLY}))


def test_early_auth_is_never_an_ordinary_client_frame():
    data = encode(EarlyAuth(b"\x01" * 32, T_MS, b"\x06" * 16, b"\x02" * 64))
    with pytest.raises(WireError):
        decode(data, CLIENT_TYPES)


def test_early_challenge_binds_time_nonce_and_resume_request():
    base = wire.early_challenge(T_MS, b"\x06" * 16, "abc")
    assert wire.early_challenge(T_MS + 1, b"\x06" * 16, "abc") != base
    assert wire.early_challenge(T_MS, b"\x07" * 16, "abc") != base
    assert wire.early_challenge(T_MS, b"\x06" * 16, "abd") != base


# --- structured fuzzing: frames of the right shape with wrong types and sizes ----------------


def _hostile_value(valid: object) -> st.SearchStrategy:
    """Values for one field: its valid value, the wrong type, and sizes just around the limits."""
    near: list[st.SearchStrategy] = [st.just(valid), _scalars, _nested(8)]
    if isinstance(valid, bytes):
        n = len(valid)
        near.append(st.integers(max(0, n - 1), n + 1).flatmap(lambda k: st.binary(min_size=k, max_size=k)))
        near.append(st.sampled_from([WIRE.max_body, WIRE.max_body + 1]).map(bytes))
        near.append(st.just(valid.decode("latin-1")))  # the same content as text
    elif isinstance(valid, bool):
        near.append(st.sampled_from([0, 1, "true", None]))
    elif isinstance(valid, int):
        near.append(st.sampled_from([-1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 0.0, float(valid), True]))
    elif isinstance(valid, str):
        near.append(st.sampled_from([31, 32, 33, 64, 65, 200, 201, 500, 501]).map(lambda k: "a" * k))
        near.append(st.just(valid.upper()) | st.just(valid + "\n") | st.just(valid.encode()))
    elif isinstance(valid, dict):
        near.append(
            st.sampled_from([WIRE.max_cursors, WIRE.max_cursors + 1]).map(
                lambda k: {f"{i:06d}": i for i in range(k)}
            )
        )
        keys = _scalars.filter(lambda k: type(k) in (str, bytes, int))
        near.append(st.dictionaries(keys, _scalars, max_size=4))
        near.append(st.lists(st.tuples(st.text(max_size=6), st.integers()), max_size=3))
    return st.one_of(*near)


@st.composite
def _shaped_frames(draw: st.DrawFn) -> tuple[type[Frame], list]:
    cls = draw(st.sampled_from(list(SAMPLES)))
    valid = fields_of(SAMPLES[cls])
    values = [draw(_hostile_value(v)) for v in valid]
    return cls, values


def _pack_case(case: tuple[type, list]) -> bytes | None:
    """A shaped case as the bytes a peer would send; None for an int msgpack cannot carry
    (beyond 64 bits), which never reaches a decoder."""
    try:
        return msgpack.packb([int(case[0].TYPE), *case[1]], use_bin_type=True)
    except OverflowError:
        return None


# Fewer examples than FUZZ: a case near the cursor limit builds a map of ~500 entries, and
# the suite must stay quick (scripts/fuzz runs the decoder for as long as one likes).
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shaped_frames())
def test_every_frame_type_with_wrong_types_and_sizes_is_a_frame_or_a_wire_error(case):
    cls, _ = case
    data = _pack_case(case)
    assume(data is not None)
    assert data is not None
    for allowed in (None, CLIENT_TYPES, RELAY_TYPES):
        frame = _decode_or_wire_error(data, allowed)
        if frame is not None:  # everything passed its check: the frame is exactly what was sent
            assert type(frame) is cls
            assert decode(encode(frame)) == frame
            assert msgpack.unpackb(encode(frame), raw=False) == msgpack.unpackb(data, raw=False)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_the_structured_fuzzer_starts_from_frames_that_decode(cls):
    """Guard for the fuzzer above: its valid values are valid, so what it finds is the fields'."""
    data = msgpack.packb([int(cls.TYPE), *fields_of(SAMPLES[cls])], use_bin_type=True)
    assert decode(data) == SAMPLES[cls]


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


_header_payloads = st.binary(max_size=150) | _shaped_frames().map(_pack_case).filter(
    lambda data: data is not None
)


@FUZZ
@given(st.text(max_size=200) | _header_payloads.map(_b64))
def test_random_header_values_are_a_frame_or_a_wire_error(value):
    try:
        frame = wire.from_header(value, frozenset({T.EARLY, T.SUB}))
    except WireError:
        return
    assert frame.TYPE in (T.EARLY, T.SUB)

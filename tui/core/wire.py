"""The envelope and every frame on the one WebSocket, and their compact encoding.

Each WebSocket message is one msgpack array ``[type, field, ...]``: positional fields, small
integer type codes, binary ids. On a 24 kbit/s uplink a byte is a third of a millisecond, so
no field names cross the wire (JSON with names costs ~2x; ``scripts/bench chat`` reports both).
The relay imports this module too: it reads the routing header of a ``Send`` (consult, kind,
client id) and never the body, which later becomes ciphertext without a relay change.

Decoding is strict and bounded: every frame is checked against its schema (types, lengths,
ranges) before anything trusts it, and msgpack is told the size limits up front so a hostile
frame cannot make the decoder allocate more than the frame itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from medcomm.errors import LimitExceeded, WireError
from medcomm.limits import WIRE

PROTOCOL = 1

# Consult ids: short, typeable, unambiguous (Crockford-like lower-case base32, no i/l/o/u).
CONSULT_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
CONSULT_ID_LEN = 6
_CONSULT_RE = re.compile(rf"^[{CONSULT_ALPHABET}]{{{CONSULT_ID_LEN}}}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CID_LEN = 16  # client message id bytes: random, constant across retries

# case/status/followup carry the consult's workflow (medcomm.core.casecard, .workflow), and
# request asks an image's sender for its original (medcomm.core.imagereq): the relay stores
# and fans them out like text, blind to their bodies. key and keyreq carry the end-to-end
# sender keys and the asks for them (medcomm.core.e2e); callkey (sealed) gives a call's
# members the key of one participant's voice stream; title carries the consult's title,
# which the relay is not told. Every other body a client sends is
# sealed, so "blind" holds for the relay by construction.
KINDS: dict[str, int] = {
    "text": 1, "image": 2, "note": 3, "call": 4, "system": 5, "case": 6, "status": 7, "followup": 8,
    "request": 9, "key": 10, "keyreq": 11, "callkey": 12, "title": 13,
}
KIND_NAMES: dict[int, str] = {v: k for k, v in KINDS.items()}
ROLES = ("clinic", "doctor", "admin")


class T(IntEnum):
    """Frame type codes. Client to relay below 10, relay to client from 10."""

    AUTH = 1
    REGISTER = 2
    REQUEST = 3
    SEND = 4
    SUB = 5
    RECEIPT = 6
    EARLY = 7
    CHALLENGE = 10
    WELCOME = 11
    OK = 12
    ERR = 13
    STORED = 14
    MSG = 15
    CAUGHT_UP = 16
    RECEIPTS = 17
    REJECT = 18
    READY = 19
    CALL = 20


# --- field checkers ---------------------------------------------------------------------


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise WireError(f"bad frame: {what}")


def _uint(v: object) -> int:
    _check(type(v) is int and 0 <= v < 2**63, "expected unsigned int")  # type: ignore[operator]
    return v  # type: ignore[return-value]


def _bool(v: object) -> bool:
    _check(type(v) is bool, "expected bool")
    return v  # type: ignore[return-value]


def _bin(n: int) -> Callable[[object], bytes]:
    def check(v: object) -> bytes:
        _check(type(v) is bytes and len(v) == n, f"expected {n} bytes")  # type: ignore[arg-type]
        return v  # type: ignore[return-value]

    return check


def _text(limit: int) -> Callable[[object], str]:
    def check(v: object) -> str:
        _check(type(v) is str and len(v) <= limit, f"expected text of at most {limit}")  # type: ignore[arg-type]
        return v  # type: ignore[return-value]

    return check


def _body(v: object) -> bytes:
    _check(type(v) is bytes, "expected binary body")
    if len(v) > WIRE.max_body:  # type: ignore[arg-type]
        raise LimitExceeded(f"body of {len(v)} bytes over the limit of {WIRE.max_body}")  # type: ignore[arg-type]
    return v  # type: ignore[return-value]


def consult_id(v: object) -> str:
    _check(type(v) is str and bool(_CONSULT_RE.fullmatch(v)), "bad consult id")  # type: ignore[arg-type]
    return v  # type: ignore[return-value]


def user_name(v: object) -> str:
    _check(type(v) is str and bool(_NAME_RE.fullmatch(v)), "bad user name")  # type: ignore[arg-type]
    return v  # type: ignore[return-value]


def typed_user_name(name: str) -> str:
    """A name as a person typed it (any case, stray spaces), checked and lower-cased; a
    UsageError that states the rule, for the CLI and admin, instead of a wire error."""
    from medcomm.errors import UsageError

    cleaned = name.strip().lower()
    if not _NAME_RE.fullmatch(cleaned):
        raise UsageError(f"{name!r} is not a user name (letters, digits, . _ -; at most 64)")
    return cleaned


def _kind(v: object) -> int:
    _check(type(v) is int and v in KIND_NAMES, "unknown message kind")
    return v  # type: ignore[return-value]


def _role(v: object) -> str:
    _check(v in ROLES, "unknown role")
    return v  # type: ignore[return-value]


def _args(v: object) -> dict[str, Any]:
    _check(type(v) is dict and all(type(k) is str for k in v), "expected a map")  # type: ignore[union-attr]
    return v  # type: ignore[return-value]


def _any(v: object) -> object:
    return v


def _cursors(v: object) -> dict[str, int]:
    _check(type(v) is dict, "expected cursor map")
    if len(v) > WIRE.max_cursors:  # type: ignore[arg-type]
        raise LimitExceeded(f"more than {WIRE.max_cursors} cursors")
    return {consult_id(k): _uint(s) for k, s in v.items()}  # type: ignore[union-attr]


def _start(v: object) -> str:
    return "" if v == "" else consult_id(v)


def _state(v: object) -> int:
    _check(type(v) is int and v in (1, 2), "receipt state must be 1 (delivered) or 2 (read)")
    return v  # type: ignore[return-value]


# --- frames -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of every frame: subclasses declare TYPE and a checker per field, in order."""

    TYPE: ClassVar[T]
    CHECKS: ClassVar[tuple[Callable[[object], object], ...]]


@dataclass(frozen=True, slots=True)
class Auth(Frame):
    """Prove possession of an enrolled device key by signing the relay's challenge."""

    pubkey: bytes
    sig: bytes
    TYPE: ClassVar[T] = T.AUTH
    CHECKS: ClassVar[tuple] = (_bin(32), _bin(64))


@dataclass(frozen=True, slots=True)
class Register(Frame):
    """Bind a new device key to an enrolled user with a one-time code; idempotent per key."""

    name: str
    code: str
    pubkey: bytes
    sig: bytes
    TYPE: ClassVar[T] = T.REGISTER
    CHECKS: ClassVar[tuple] = (user_name, _text(64), _bin(32), _bin(64))


@dataclass(frozen=True, slots=True)
class Request(Frame):
    """A control request (open/list/add consult, whoami) answered by Ok or Err with its rid."""

    rid: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    TYPE: ClassVar[T] = T.REQUEST
    CHECKS: ClassVar[tuple] = (_uint, _text(32), _args)


@dataclass(frozen=True, slots=True)
class Send(Frame):
    """One message for a consult: routing header (consult, cid, kind) and an opaque body."""

    consult: str
    cid: bytes
    kind: int
    body: bytes
    TYPE: ClassVar[T] = T.SEND
    CHECKS: ClassVar[tuple] = (consult_id, _bin(CID_LEN), _kind, _body)


@dataclass(frozen=True, slots=True)
class Sub(Frame):
    """Resume: the client's cursor (last seq it holds) per consult; the relay sends the rest.

    ``full`` (on connect) also catches the client up, from 0, on every consult it is a member
    of and did not name, so a reconnect needs no separate "list" round trip.
    """

    cursors: dict[str, int]
    full: bool = False
    start: str = ""  # a full resume continues from this consult id (see Ready.next)
    TYPE: ClassVar[T] = T.SUB
    CHECKS: ClassVar[tuple] = (_cursors, _bool, _start)


@dataclass(frozen=True, slots=True)
class Receipt(Frame):
    """Cumulative mark: this device holds (1) or its user has read (2) every seq up to here."""

    consult: str
    seq: int
    state: int
    TYPE: ClassVar[T] = T.RECEIPT
    CHECKS: ClassVar[tuple] = (consult_id, _uint, _state)


@dataclass(frozen=True, slots=True)
class EarlyAuth(Frame):
    """Proof carried in the WebSocket upgrade request, so the relay can answer the upgrade
    with the backlog at once: a reconnect on a 1.5 s round-trip link is then caught up
    after TCP's handshake and the upgrade, with no challenge round trip between.

    The device signs its clock time, a random nonce and the hash of the resume request
    (``X-Medcomm-Sub``) sent beside it. The relay accepts it only within a clock window and
    only once per nonce; anything it cannot accept that way falls back to a challenge.
    """

    pubkey: bytes
    time: int
    nonce: bytes
    sig: bytes
    TYPE: ClassVar[T] = T.EARLY
    CHECKS: ClassVar[tuple] = (_bin(32), _uint, _bin(16), _bin(64))


@dataclass(frozen=True, slots=True)
class Challenge(Frame):
    """Fresh nonce to sign; relay time lets clients show honest times on a skewed clock."""

    nonce: bytes
    time: int
    TYPE: ClassVar[T] = T.CHALLENGE
    CHECKS: ClassVar[tuple] = (_bin(32), _uint)


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    """Authenticated; the relay's clock (ms) lets the device sign its next early proof in
    the relay's time even when the clinic PC's clock is wrong."""

    name: str
    role: str
    time: int
    TYPE: ClassVar[T] = T.WELCOME
    CHECKS: ClassVar[tuple] = (user_name, _role, _uint)


@dataclass(frozen=True, slots=True)
class Ok(Frame):
    rid: int
    result: Any
    TYPE: ClassVar[T] = T.OK
    CHECKS: ClassVar[tuple] = (_uint, _any)


@dataclass(frozen=True, slots=True)
class Err(Frame):
    """A refused request (rid 0 when the error is about the connection, not a request)."""

    rid: int
    code: str
    reason: str
    TYPE: ClassVar[T] = T.ERR
    CHECKS: ClassVar[tuple] = (_uint, _text(32), _text(500))


@dataclass(frozen=True, slots=True)
class Stored(Frame):
    """The relay's acknowledgement: the message is durable under this seq (sent after commit)."""

    cid: bytes
    consult: str
    seq: int
    time: int
    TYPE: ClassVar[T] = T.STORED
    CHECKS: ClassVar[tuple] = (_bin(CID_LEN), consult_id, _uint, _uint)


@dataclass(frozen=True, slots=True)
class Msg(Frame):
    """A stored message delivered to a member: the envelope plus the opaque body."""

    consult: str
    seq: int
    cid: bytes
    sender: str
    time: int
    kind: int
    body: bytes
    TYPE: ClassVar[T] = T.MSG
    CHECKS: ClassVar[tuple] = (consult_id, _uint, _bin(CID_LEN), user_name, _uint, _kind, _body)


@dataclass(frozen=True, slots=True)
class CaughtUp(Frame):
    """End of a resume page: everything up to last_seq was sent; more=True means ask again."""

    consult: str
    last_seq: int
    more: bool
    TYPE: ClassVar[T] = T.CAUGHT_UP
    CHECKS: ClassVar[tuple] = (consult_id, _uint, _bool)


@dataclass(frozen=True, slots=True)
class Receipts(Frame):
    """A member's cumulative delivered/read marks in a consult, for honest delivery states."""

    consult: str
    member: str
    delivered: int
    read: int
    TYPE: ClassVar[T] = T.RECEIPTS
    CHECKS: ClassVar[tuple] = (consult_id, user_name, _uint, _uint)


@dataclass(frozen=True, slots=True)
class Reject(Frame):
    """A message the relay will never store (not a member, too large): the outbox must stop
    retrying it and tell the user, rather than lose it silently."""

    cid: bytes
    code: str
    reason: str
    TYPE: ClassVar[T] = T.REJECT
    CHECKS: ClassVar[tuple] = (_bin(CID_LEN), _text(32), _text(500))


@dataclass(frozen=True, slots=True)
class Ready(Frame):
    """Ends the relay's answer to a full resume: every consult up to ``next`` was answered
    (some may say "more"), so the client knows the whole set without a list request. The
    answer is bounded in frames; ``next`` names where a follow-up full resume starts."""

    consults: int
    next: str = ""  # not "" when the answer was cut at the frame budget: resume from here
    TYPE: ClassVar[T] = T.READY
    CHECKS: ClassVar[tuple] = (_uint, _start)


CALL_STATES = ("ringing", "active", "ended")
_CALL_RE = re.compile(rf"^[{CONSULT_ALPHABET}]{{8}}$")


def call_id(v: object) -> str:
    _check(type(v) is str and bool(_CALL_RE.fullmatch(v)), "bad call id")  # type: ignore[arg-type]
    return v  # type: ignore[return-value]


def _call_state(v: object) -> str:
    _check(v in CALL_STATES, "unknown call state")
    return v  # type: ignore[return-value]


def _slots(v: object) -> dict[str, int]:
    _check(type(v) is dict and len(v) <= WIRE.max_members, "expected a slot map")  # type: ignore[arg-type]
    out = {user_name(k): _uint(s) for k, s in v.items()}  # type: ignore[union-attr]
    _check(all(1 <= s <= 15 for s in out.values()), "slot out of range")
    return out


@dataclass(frozen=True, slots=True)
class CallState(Frame):
    """A call changed: sent to every member of the consult wherever they are (the desk
    announces an incoming call on any screen). ``slots`` maps who is in to the slot their
    voice frames carry; ``by`` is who caused the change; ``outcome`` is set once ended."""

    call: str
    consult: str
    state: str
    by: str
    slots: dict[str, int]
    since: int  # ms, relay clock: when the call was placed
    outcome: str = ""
    TYPE: ClassVar[T] = T.CALL
    CHECKS: ClassVar[tuple] = (call_id, consult_id, _call_state, user_name, _slots, _uint, _text(16))


FRAME_TYPES: dict[int, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Auth,
        Register,
        Request,
        Send,
        Sub,
        Receipt,
        EarlyAuth,
        Challenge,
        Welcome,
        Ok,
        Err,
        Stored,
        Msg,
        CaughtUp,
        Receipts,
        Reject,
        Ready,
        CallState,
    )
}
CLIENT_TYPES = frozenset(t for t in FRAME_TYPES if t < 10 and t != T.EARLY)  # early: headers only
RELAY_TYPES = frozenset(t for t in FRAME_TYPES if t >= 10)


_FIELDS: dict[type[Frame], tuple[str, ...]] = {}


def encode(frame: Frame) -> bytes:
    """Encode a frame as one msgpack array: type code first, then fields in order.

    Field names are cached per class; ``dataclasses.astuple`` would deep-copy every field,
    which profiling showed to be most of the relay's per-message CPU.
    """
    cls = type(frame)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return msgpack.packb([int(frame.TYPE), *(getattr(frame, n) for n in names)], use_bin_type=True)


def decode(data: bytes, allowed: frozenset[int] | None = None) -> Frame:
    """Decode and validate one frame, raising WireError (never anything else) on bad input.

    ``allowed`` restricts the frame types accepted (the relay accepts only client frames).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("bad frame: text frames are not part of the protocol")
    if len(data) > WIRE.max_frame:
        raise LimitExceeded(f"frame of {len(data)} bytes over the limit of {WIRE.max_frame}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=WIRE.max_frame,
            max_bin_len=WIRE.max_frame,
            max_array_len=64,
            max_map_len=WIRE.max_cursors + 1,  # one more, so the cursor check names the limit
            max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise WireError(f"bad frame: not msgpack ({type(exc).__name__})") from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise WireError("bad frame: expected [type, ...]")
    cls = FRAME_TYPES.get(obj[0])
    if cls is None or (allowed is not None and obj[0] not in allowed):
        raise WireError(f"bad frame: unknown or unexpected type {obj[0]}")
    values = obj[1:]
    if len(values) != len(cls.CHECKS):
        raise WireError(f"bad frame: {cls.__name__} takes {len(cls.CHECKS)} fields")
    return cls(*(check(v) for check, v in zip(cls.CHECKS, values, strict=True)))


def field_names(cls: type[Frame]) -> list[str]:
    return [f.name for f in fields(cls)]


EARLY_AUTH_HEADER = "X-Medcomm-Auth"
EARLY_SUB_HEADER = "X-Medcomm-Sub"
MAX_EARLY_HEADER = 6000  # characters; websockets refuses header lines over 8 KiB


def early_challenge(time_ms: int, nonce: bytes, sub_header: str) -> bytes:
    """The challenge a device sets itself for an early proof (signed with purpose
    ``early``): time, nonce and the resume request it travels with, so a captured header
    cannot be reused with another cursor set."""
    import hashlib

    digest = hashlib.sha256(sub_header.encode()).digest()
    return time_ms.to_bytes(8, "big") + nonce + digest


def header_value(frame: Frame) -> str:
    """A frame as an HTTP header value (unpadded base64url of its encoding)."""
    import base64

    return base64.urlsafe_b64encode(encode(frame)).rstrip(b"=").decode()


def from_header(value: str, allowed: frozenset[T]) -> Frame:
    """The inverse of header_value, as strict as ``decode``."""
    import base64
    import binascii

    if len(value) > MAX_EARLY_HEADER:
        raise LimitExceeded(f"header of {len(value)} characters over {MAX_EARLY_HEADER}")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise WireError("bad frame: header is not base64url") from None
    return decode(data, allowed)


def auth_message(nonce: bytes, purpose: bytes = b"auth") -> bytes:
    """What a device signs: domain-separated so a signature cannot be replayed elsewhere."""
    return b"medcomm-v1\x00" + purpose + b"\x00" + nonce

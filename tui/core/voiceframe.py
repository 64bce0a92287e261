"""The voice plane's binary frames: one Opus packet, one feedback report or one path hint a message.

Voice shares the one WebSocket with chat and blobs, but it must not pay for msgpack: every
other frame is a msgpack array (first byte >= 0x90), so a first byte below 0x80 marks a
voice-plane frame, and the relay routes it by looking at that byte alone. The header is 5
bytes because each header byte costs 8-17 bytes per second of speech (0.5-1 % of a 12 kbit/s
uplink at 60-120 ms packets): fields are as narrow as their use allows, and they wrap.

Media frame (5 header bytes, then one Opus packet of at least one byte)::

    0x40 | slot   seq & 0xFF   ts & 0xFFFF (big-endian)   level

On the wire the payload is the Opus packet sealed end to end (``medcomm.core.voicecrypt``: the
packet plus an 8-byte tag, the header with its slot bits zeroed as associated data); this
module frames and parses either alike, and the relay never needs more than the header.

Feedback frame (receiver -> sender, 9 bytes: the brief said 11, but its four u16 fields after
the tag byte make 9, and no fifth field was ever named)::

    0x60 | slot   echo_ts u16   hold_ms u16   jb_ms u16   concealed_pm u16

Path frame (sender -> receivers, 3 bytes), riding with a stream's first media frames and every
few seconds after::

    0x20 | slot   rtt_ms u16

* ``rtt_ms`` is the sender's round trip to the relay. A receiver on a quick link otherwise
  guesses its start-up jitter target from its own round trip alone and conceals the first
  seconds of a clinic on EDGE (``scripts/bench playout --policies quick-receiver``). It is not
  sealed: a relay that lied could only raise that start-up target, within the buffer's
  bounds, and a relay can delay frames anyway. Receivers that predate it drop it as unknown.

* ``slot`` (0..15) is 0 on the uplink; the relay's only rewrite is to put the sender's slot in
  the call there (media) or the author's slot (feedback), so receivers can tell streams apart
  in a 3-way call without the relay parsing anything else (:func:`with_slot`).
* ``ts`` is the sender's media clock in ms since its stream began (first sample of the packet);
  ``hold_ms`` is how long the receiver held the echoed frame before reporting, so the sender can
  measure a round trip without synchronised clocks.
* ``level``: bit 7 is voice activity, bits 0-6 are 127 + dBov clamped to 0..127, which is all
  the relay needs to forward only the loudest current speakers.

Parsing is strict: short, oversize, unknown or out-of-range frames raise
:class:`~medcomm.errors.WireError` (:class:`~medcomm.errors.LimitExceeded` for size), and
nothing else, whatever the bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from medcomm.errors import LimitExceeded, WireError

PATH_TAG = 0x20
MEDIA_TAG = 0x40
FEEDBACK_TAG = 0x60
VOICE_BELOW = 0x80  # a first byte below this is voice plane; msgpack arrays start at 0x90
MAX_SLOT = 15
MEDIA_HEADER = 5
FEEDBACK_SIZE = 9
PATH_SIZE = 3
TS_BITS = 16
SEQ_BITS = 8
TALKING = 0x80
LOUDNESS = 0x7F
MAX_CONCEALED_PM = 1000

Kind = Literal["media", "feedback", "path"]


@dataclass(frozen=True)
class VoiceLimits:
    """Sizes the voice plane enforces before trusting a frame."""

    #: Largest voice frame (header included). The thickest rung (auscultation, 28 kbit/s) makes
    #: 210-byte packets at 60 ms, 420 at 120 ms; 1500 leaves room for a higher-rate profile while
    #: keeping a hostile sender from making the relay buffer large messages on the voice path.
    max_frame: int = 1500


VOICE = VoiceLimits()


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise WireError(f"bad voice frame: {what}")


def _u(value: int, bits: int, name: str) -> None:
    _check(isinstance(value, int) and 0 <= value < (1 << bits), f"{name}={value!r} out of range")


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """One Opus packet as it crosses the wire; fields hold the wire values (wrapped)."""

    slot: int
    seq: int  # 0..255
    ts: int  # 0..65535 ms
    level: int  # the level byte, see level_byte()
    payload: bytes

    def __post_init__(self) -> None:
        _u(self.slot, 4, "slot")
        _u(self.seq, SEQ_BITS, "seq")
        _u(self.ts, TS_BITS, "ts")
        _u(self.level, 8, "level")
        _check(isinstance(self.payload, bytes) and len(self.payload) >= 1, "empty payload")

    @classmethod
    def outgoing(cls, seq: int, ts_ms: int, level: int, payload: bytes) -> MediaFrame:
        """An uplink frame (slot 0) from the sender's unwrapped counters, wrapped here once."""
        return cls(0, seq & 0xFF, ts_ms & 0xFFFF, level, payload)

    @property
    def talking(self) -> bool:
        return bool(self.level & TALKING)

    @property
    def dbov(self) -> float:
        return level_dbov(self.level)

    def header(self, slot: int | None = None) -> bytes:
        """The 5 header bytes, with ``slot`` in place of the frame's own: slot 0 gives the
        bytes a sealed payload is bound to, since the relay rewrites only the slot bits."""
        s = self.slot if slot is None else slot
        _u(s, 4, "slot")
        return bytes((MEDIA_TAG | s, self.seq, self.ts >> 8, self.ts & 0xFF, self.level))

    def pack(self, limits: VoiceLimits = VOICE) -> bytes:
        _check_max(MEDIA_HEADER + len(self.payload), limits)
        return self.header() + self.payload


@dataclass(frozen=True, slots=True)
class Feedback:
    """A receiver's report on one stream: the sender's only view of the path's queueing."""

    slot: int
    echo_ts: int  # ts field of the newest media frame received from that stream
    hold_ms: int  # ms between receiving that frame and sending this report
    jb_ms: int  # receiver's current jitter-buffer delay
    concealed_pm: int  # permille of played audio that was concealment since the last report

    def __post_init__(self) -> None:
        _u(self.slot, 4, "slot")
        _u(self.echo_ts, 16, "echo_ts")
        _u(self.hold_ms, 16, "hold_ms")
        _u(self.jb_ms, 16, "jb_ms")
        _u(self.concealed_pm, 16, "concealed_pm")
        _check(self.concealed_pm <= MAX_CONCEALED_PM, f"concealed_pm={self.concealed_pm} over 1000")

    @classmethod
    def report(cls, slot: int, echo_ts: int, hold_ms: float, jb_ms: float, concealed_pm: float) -> Feedback:
        """A report from a receiver's own measurements, clamped to what the fields can say.

        A hold or delay over 65 s is absurd but possible after a suspend; clamping keeps the
        report sendable instead of crashing the receive loop.
        """
        return cls(
            slot,
            echo_ts & 0xFFFF,
            _clamp_int(hold_ms, 0, 0xFFFF),
            _clamp_int(jb_ms, 0, 0xFFFF),
            _clamp_int(concealed_pm, 0, MAX_CONCEALED_PM),
        )

    def pack(self) -> bytes:
        return bytes((FEEDBACK_TAG | self.slot,)) + b"".join(
            v.to_bytes(2, "big") for v in (self.echo_ts, self.hold_ms, self.jb_ms, self.concealed_pm)
        )


@dataclass(frozen=True, slots=True)
class PathHint:
    """What a sender knows of its own path: its round trip to the relay, in ms."""

    slot: int
    rtt_ms: int

    def __post_init__(self) -> None:
        _u(self.slot, 4, "slot")
        _u(self.rtt_ms, 16, "rtt_ms")

    @classmethod
    def outgoing(cls, rtt_ms: float) -> PathHint:
        """An uplink hint (slot 0), the round trip clamped to what the field can say."""
        return cls(0, _clamp_int(rtt_ms, 0, 0xFFFF))

    def pack(self) -> bytes:
        return bytes((PATH_TAG | self.slot,)) + self.rtt_ms.to_bytes(2, "big")


def _clamp_int(value: float, lo: int, hi: int) -> int:
    if math.isnan(value):
        return lo
    return int(min(hi, max(lo, round(value))))


# --- cheap looks at the first bytes (the relay's path) -----------------------------------


def is_voice(data: bytes) -> bool:
    """True for a voice-plane frame (known or not): the relay's routing test, one byte."""
    return len(data) > 0 and data[0] < VOICE_BELOW


def frame_kind(data: bytes) -> Kind:
    """Which voice frame this is, from its first byte; WireError for anything else."""
    _check(len(data) > 0, "empty")
    tag = data[0] & 0xF0
    if tag == MEDIA_TAG:
        return "media"
    if tag == FEEDBACK_TAG:
        return "feedback"
    if tag == PATH_TAG:
        return "path"
    raise WireError(f"bad voice frame: unknown tag 0x{data[0]:02x}", tag=data[0])


def _check_max(size: int, limits: VoiceLimits) -> None:
    if size > limits.max_frame:
        limit = limits.max_frame
        raise LimitExceeded(f"voice frame of {size} bytes over {limit}", size=size, limit=limit)


def _check_size(data: bytes, kind: Kind, limits: VoiceLimits) -> None:
    _check_max(len(data), limits)
    if kind == "media":
        _check(len(data) > MEDIA_HEADER, f"media frame of {len(data)} bytes")
    else:
        size = FEEDBACK_SIZE if kind == "feedback" else PATH_SIZE
        _check(len(data) == size, f"{kind} frame of {len(data)} bytes")


def with_slot(data: bytes, slot: int, limits: VoiceLimits = VOICE) -> bytes:
    """The frame with its slot replaced: the relay's only rewrite (no audio, no full parse).

    The size and tag are still checked, so a relay that forwards the result never forwards a
    frame its receivers would reject.
    """
    if not 0 <= slot <= MAX_SLOT:
        raise ValueError(f"slot {slot} out of 0..{MAX_SLOT}")
    _check_size(data, frame_kind(data), limits)
    return bytes(((data[0] & 0xF0) | slot,)) + data[1:]


def media_level(data: bytes) -> int:
    """The level byte of a media frame, for choosing the loudest speakers without parsing."""
    _check(frame_kind(data) == "media" and len(data) > MEDIA_HEADER, "not a media frame")
    return data[4]


def parse(data: bytes, limits: VoiceLimits = VOICE) -> MediaFrame | Feedback | PathHint:
    """Decode one voice frame, strictly; WireError (or LimitExceeded) for anything malformed."""
    kind = frame_kind(data)
    _check_size(data, kind, limits)
    slot = data[0] & 0x0F
    if kind == "media":
        return MediaFrame(slot, data[1], (data[2] << 8) | data[3], data[4], bytes(data[MEDIA_HEADER:]))
    if kind == "path":
        return PathHint(slot, int.from_bytes(data[1:3], "big"))
    echo, hold, jb, pm = (int.from_bytes(data[i : i + 2], "big") for i in range(1, FEEDBACK_SIZE, 2))
    return Feedback(slot, echo, hold, jb, pm)


# --- the level byte ----------------------------------------------------------------------


def level_byte(dbov: float, talking: bool) -> int:
    """Pack loudness (dBov, 0 = full scale) and voice activity into the header's level byte.

    Loudness is kept in whole dB: the relay only ranks speakers by it, and 7 bits cover the
    127 dB from digital silence (or below: -inf is silence) to full scale.
    """
    loud = 0 if math.isnan(dbov) else _clamp_int(127.0 + max(-200.0, min(dbov, 200.0)), 0, LOUDNESS)
    return (TALKING if talking else 0) | loud


def level_dbov(level: int) -> float:
    """Loudness in dBov from a level byte; -127.0 stands for digital silence."""
    return float((level & LOUDNESS) - 127)


def level_parts(level: int) -> tuple[float, bool]:
    """(dBov, talking) from a level byte: the inverse of level_byte() to the nearest dB."""
    return level_dbov(level), bool(level & TALKING)


# --- wrapped counters --------------------------------------------------------------------


class Unwrapper:
    """Unwraps a counter of ``bits`` bits (ts: 16, seq: 8) against the last unwrapped value.

    TCP does not reorder, so a value normally moves forward; it may move back a little when a
    sender restarts its clock or a relay interleaves, and it may jump far forward after a
    stall or a pause in sending. The window is therefore asymmetric: a step back of up to
    ``max_back`` (default a quarter of the range: 16.4 s of ts, 64 packets of seq) is taken as
    a step back, anything else as a step forward (up to 49 s of ts). The reference only ever
    moves forward, so one stray old value cannot drag later ones back.

    A receiver that knows roughly where the value should be (its own arrival clock: last ts
    plus the time since it arrived) can pass ``near`` to pick the candidate closest to it,
    which resolves forward jumps longer than the window (a 60 s stall of 16-bit ts).
    """

    def __init__(self, bits: int, max_back: int | None = None) -> None:
        if bits < 2:
            raise ValueError("bits must be >= 2")
        self.bits = bits
        self.modulus = 1 << bits
        self.max_back = self.modulus // 4 if max_back is None else max_back
        if not 0 <= self.max_back < self.modulus:
            raise ValueError("max_back must be in 0..modulus-1")
        self.last: int | None = None

    def unwrap(self, value: int, near: int | None = None) -> int:
        value &= self.modulus - 1
        if self.last is None:
            if near is None:
                out = value
            else:
                out = value + round((near - value) / self.modulus) * self.modulus
        elif near is not None:
            out = value + round((near - value) / self.modulus) * self.modulus
        else:
            delta = (value - self.last) % self.modulus
            if delta > self.modulus - 1 - self.max_back:
                delta -= self.modulus
            out = self.last + delta
        if self.last is None or out > self.last:
            self.last = out
        return out

    def reset(self) -> None:
        self.last = None

"""Opus encode/decode for calls and voice notes: the only module that loads libopus.

libopus is a C library the clinic PC may not have; ``opuslib`` raises a bare ``Exception``
at import when it is missing. So nothing here imports it at module level: :func:`load` does,
once, when an :class:`Encoder` or :class:`Decoder` is first made, and turns a missing library
into :class:`~medcomm.errors.VoiceUnavailable` with the line to install it. The packet
parser (:func:`packet_samples`) is pure Python, so the jitter buffer, the Ogg reader and
``note_duration`` work without libopus.

Every encoder setting goes through ``opuslib.api.encoder.encoder_ctl`` directly: opuslib
3.0.1's property setters for FEC and loss percentage call the ctl without its value.

Two profiles matter (see DESIGN.md "Voice"): ``voip`` for speech, which high-passes at
60-100 Hz (measured -15.5 dB at 25 Hz, -7.8 dB at 40 Hz), and ``audio`` for auscultation,
which only removes DC (a 3 Hz high-pass) and measured flat to +/-0.35 dB from 20 Hz to
1 kHz at 24-32 kbit/s, every bandwidth nb..fb and every frame size 20-120 ms. The audio
profile also tells the encoder the signal is music, which keeps it in CELT: left alone it
picks SILK/hybrid for heart sounds, whose thumps look voiced to its classifier (CELT gave
~1 dB better SNR on a synthetic heart sound).

DTX semantics (libopus 1.3, measured): after 10 encoder calls of silence it returns 1-byte
TOC-only packets, and every 21st call it returns a real packet again, a comfort-noise
refresh. A decoder treats a packet of <= 1 byte exactly as a lost one (it runs concealment),
so :meth:`Encoder.encode` returns ``b''`` for them and the sender skips the packet: on TCP a
1-byte payload still costs 58-80 bytes of headers. The refreshes libopus emits on its own
(every ~420 ms at 20 ms frames, ~1.3 s at 60 ms) go out as normal packets and double as
keepalives; no extra packet is forced. The sender's media clock keeps running across the
gap while ``seq`` does not, which is how a receiver tells DTX (ts jumps, seq +1) from a
dropped packet (seq jumps). DTX is for speech; the auscultation profile leaves it off.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from medcomm.errors import LimitExceeded, UsageError, VoiceUnavailable, WireError

RATE = 48000  # samples per second, in and out: the one rate medcomm's audio runs at
SAMPLES_PER_MS = RATE // 1000
MAX_PACKET_SAMPLES = 5760  # 120 ms, the longest Opus packet (RFC 6716 R5)
MAX_FRAME_BYTES = 1275  # longest single Opus frame (RFC 6716 R2)

APPLICATIONS = {"voip": 2048, "audio": 2049}
_SIGNALS = {"voip": 3001, "audio": 3002}  # OPUS_SIGNAL_VOICE / OPUS_SIGNAL_MUSIC
BANDWIDTHS = {"nb": 1101, "mb": 1102, "wb": 1103, "swb": 1104, "fb": 1105}
FRAME_MS = (20, 40, 60, 80, 100, 120)  # libopus >= 1.2 encodes 80-120 ms packets directly


@dataclass(frozen=True)
class CodecLimits:
    """Bounds on what the codec adapter accepts, from the user or from a peer."""

    min_bitrate_bps: int = 6000  # below this Opus speech is unintelligible
    max_bitrate_bps: int = 128000  # 4x the auscultation profile; nothing on a 64 kbit/s link needs more
    max_packet_bytes: int = 4000  # encoder output buffer: 120 ms at 128 kbit/s is 1920 bytes
    dtx_max_bytes: int = 2  # an encoder packet this small is DTX "nothing to send"
    max_conceal_ms: int = 5000  # one conceal() call; libopus fades to silence long before


@dataclass(frozen=True)
class VadSettings:
    """The cheap level-based talk detector behind the voice header's activity bit.

    Not a speech detector: it says "louder than the room for a while", which is all the
    relay needs to pick the two current speakers. Numbers are dBov (0 = full-scale square).
    """

    floor_dbov: float = -55.0  # never "talking" at or below this level
    margin_db: float = 12.0  # talking when this far above the tracked noise floor
    noise_start_dbov: float = -60.0  # initial noise-floor guess (a quiet room, typical mic)
    noise_min_dbov: float = -80.0  # the floor never tracks below this (digital silence)
    noise_rise_db_per_s: float = 3.0  # how fast the floor climbs into steady noise
    hangover_ms: int = 300  # stay "talking" this long after the last loud frame


CODEC = CodecLimits()
VAD = VadSettings()

_lib: SimpleNamespace | None = None


def load() -> SimpleNamespace:
    """Import opuslib on first use; raise VoiceUnavailable if libopus is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        import opuslib  # noqa: F401  (raises a bare Exception when libopus is missing)
        import opuslib.api.ctl as ctl
        import opuslib.api.decoder as decoder
        import opuslib.api.encoder as encoder
        import opuslib.api.info as info
    except ImportError as exc:
        raise VoiceUnavailable("opuslib is missing: pip install opuslib", cause=str(exc)) from exc
    except Exception as exc:  # noqa: BLE001  opuslib 3.0.1 raises bare Exception, ctypes OSError
        raise VoiceUnavailable(
            "libopus is missing: sudo apt-get install libopus0", cause=str(exc)
        ) from exc
    version = info.get_version_string().decode("ascii", "replace")
    found = re.search(r"(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < (1, 2):
        raise VoiceUnavailable(f"{version} is too old (80-120 ms packets need 1.2): upgrade libopus0")
    _lib = SimpleNamespace(
        opuslib=opuslib, ctl=ctl, enc=encoder, dec=decoder, version=version, OpusError=opuslib.OpusError
    )
    return _lib


# --- packets (pure Python, RFC 6716 section 3) -------------------------------------------


def _frame_samples(toc: int) -> int:
    """Samples at 48 kHz of each frame in a packet, from its TOC byte's config field."""
    config = toc >> 3
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:  # hybrid: 10, 20 ms
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]  # CELT-only: 2.5, 5, 10, 20 ms


def _frame_length(packet: bytes, pos: int) -> tuple[int, int]:
    """One explicitly coded frame length (1 or 2 bytes) at pos -> (length, next pos)."""
    if pos >= len(packet):
        raise WireError("opus packet: frame length missing")
    first = packet[pos]
    if first < 252:
        return first, pos + 1
    if pos + 1 >= len(packet):
        raise WireError("opus packet: frame length cut short")
    return first + 4 * packet[pos + 1], pos + 2


def packet_samples(packet: bytes) -> int:
    """Samples (48 kHz) a packet decodes to, after checking all of RFC 6716's rules R1-R7.

    A peer's packet is validated here before it reaches a jitter buffer or libopus: any
    malformed packet raises WireError, so the caller drops it and carries on.
    """
    n = len(packet)
    if n < 1:
        raise WireError("opus packet: empty")  # R1
    toc = packet[0]
    per_frame = _frame_samples(toc)
    code = toc & 3
    if code == 0:
        if n - 1 > MAX_FRAME_BYTES:
            raise WireError("opus packet: frame over 1275 bytes")  # R2
        return per_frame
    if code == 1:
        if (n - 1) % 2 or (n - 1) // 2 > MAX_FRAME_BYTES:
            raise WireError("opus packet: bad code-1 length")  # R2, R3
        return 2 * per_frame
    if code == 2:
        first, pos = _frame_length(packet, 1)
        if first > n - pos or n - pos - first > MAX_FRAME_BYTES:
            raise WireError("opus packet: bad code-2 lengths")  # R2, R4
        return 2 * per_frame
    if n < 2:
        raise WireError("opus packet: code-3 frame count missing")  # R6
    count_byte = packet[1]
    count = count_byte & 0x3F
    if count == 0 or count * per_frame > MAX_PACKET_SAMPLES:
        raise WireError("opus packet: bad frame count")  # R5
    pos, padding = 2, 0
    if count_byte & 0x40:
        while True:
            if pos >= n:
                raise WireError("opus packet: padding length cut short")
            step = packet[pos]
            pos += 1
            padding += 254 if step == 255 else step
            if step != 255:
                break
    if count_byte & 0x80:  # VBR: M-1 explicit lengths, the last is implicit
        total = 0
        for _ in range(count - 1):
            length, pos = _frame_length(packet, pos)
            total += length
        last = n - pos - padding - total
        if last < 0 or last > MAX_FRAME_BYTES:
            raise WireError("opus packet: bad code-3 VBR lengths")  # R2, R7
    else:
        body = n - pos - padding
        if body < 0 or body % count or body // count > MAX_FRAME_BYTES:
            raise WireError("opus packet: bad code-3 CBR length")  # R2, R6
    return count * per_frame


def packet_duration_ms(packet: bytes) -> int:
    """Whole milliseconds a packet covers (the voice header's clock is in ms).

    A valid packet of an odd number of 2.5 ms frames has no whole-ms duration; medcomm's
    encoder never makes one, so it is rejected like any malformed packet.
    """
    samples = packet_samples(packet)
    if samples % SAMPLES_PER_MS:
        raise WireError("opus packet: not a whole number of milliseconds", samples=samples)
    return samples // SAMPLES_PER_MS


# --- level and talk detection ----------------------------------------------------------


def level_dbov(pcm: np.ndarray) -> float:
    """RMS level in dBov, 0 for a full-scale square wave (a full-scale sine is -3), -127 floor."""
    if pcm.size == 0:
        return -127.0
    mean_square = float(np.mean(np.square(pcm, dtype=np.float64)))
    if mean_square <= 0.0:
        return -127.0
    return max(-127.0, min(0.0, 10.0 * math.log10(mean_square / (32768.0 * 32768.0))))


class TalkDetector:
    """Threshold-over-noise-floor with hangover; a frame's duration stands in for a clock."""

    def __init__(self, settings: VadSettings = VAD) -> None:
        self.settings = settings
        self.noise_dbov = settings.noise_start_dbov
        self._hang_ms = 0.0

    def update(self, level: float, frame_ms: float) -> bool:
        """Feed one frame's level; return whether the speaker counts as talking now."""
        s = self.settings
        loud = level > max(s.floor_dbov, self.noise_dbov + s.margin_db)
        if level < self.noise_dbov:
            self.noise_dbov = max(s.noise_min_dbov, level)
        else:
            self.noise_dbov = min(level, self.noise_dbov + s.noise_rise_db_per_s * frame_ms / 1000.0)
        if loud:
            self._hang_ms = float(s.hangover_ms)
            return True
        self._hang_ms = max(0.0, self._hang_ms - frame_ms)
        return self._hang_ms > 0.0


# --- encoder / decoder -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded frame plus what the voice header needs to say about it."""

    packet: bytes  # b'' when DTX says there is nothing to transmit
    level_dbov: float  # -127..0
    talking: bool

    @property
    def loudness(self) -> int:
        """The header's 7-bit loudness: 127 + dBov clamped to 0..127 (0 = digital silence)."""
        return max(0, min(127, round(127.0 + self.level_dbov)))


def _check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(map(str, allowed))}", value=value)


class Encoder:
    """A mono 48 kHz Opus encoder that can change rung (bitrate, packet length) mid-stream."""

    def __init__(
        self,
        application: str = "voip",
        bitrate_bps: int = 16000,
        frame_ms: int = 60,
        bandwidth: str = "wb",
        dtx: bool = False,
        *,
        complexity: int = 10,
        limits: CodecLimits = CODEC,
        vad: VadSettings = VAD,
    ) -> None:
        _check_choice("application", application, tuple(APPLICATIONS))
        if not 0 <= complexity <= 10:
            raise UsageError("complexity must be 0..10", value=complexity)
        self.limits = limits
        self.application = application
        self.dtx = dtx
        lib = load()
        self._lib = lib
        self._state = lib.enc.create_state(RATE, 1, APPLICATIONS[application])
        weakref.finalize(self, lib.enc.destroy, self._state)
        self._ctl(lib.ctl.set_signal, _SIGNALS[application])
        self._ctl(lib.ctl.set_complexity, complexity)
        self._ctl(lib.ctl.set_dtx, 1 if dtx else 0)
        self.lookahead: int = lib.enc.encoder_ctl(self._state, lib.ctl.get_lookahead)
        self._talk = TalkDetector(vad)
        self.bitrate_bps = bitrate_bps
        self.frame_ms = frame_ms
        self.bandwidth = bandwidth
        self.reconfigure(bitrate_bps, frame_ms, bandwidth)

    def _ctl(self, request: Any, value: int) -> None:
        self._lib.enc.encoder_ctl(self._state, request, value)

    def reconfigure(
        self, bitrate_bps: int | None = None, frame_ms: int | None = None, bandwidth: str | None = None
    ) -> None:
        """Move to another rung; takes effect from the next encode() (None keeps a setting)."""
        bitrate_bps = self.bitrate_bps if bitrate_bps is None else bitrate_bps
        frame_ms = self.frame_ms if frame_ms is None else frame_ms
        bandwidth = self.bandwidth if bandwidth is None else bandwidth
        if not self.limits.min_bitrate_bps <= bitrate_bps <= self.limits.max_bitrate_bps:
            raise UsageError(
                f"bitrate must be {self.limits.min_bitrate_bps}-{self.limits.max_bitrate_bps} bit/s",
                value=bitrate_bps,
            )
        _check_choice("frame_ms", frame_ms, FRAME_MS)
        _check_choice("bandwidth", bandwidth, tuple(BANDWIDTHS))
        self._ctl(self._lib.ctl.set_bitrate, int(bitrate_bps))
        self._ctl(self._lib.ctl.set_max_bandwidth, BANDWIDTHS[bandwidth])
        self.bitrate_bps, self.frame_ms, self.bandwidth = int(bitrate_bps), frame_ms, bandwidth

    @property
    def frame_samples(self) -> int:
        """Samples encode() wants per call at the current packet length."""
        return self.frame_ms * SAMPLES_PER_MS

    def encode(self, pcm: np.ndarray) -> Encoded:
        """Encode exactly one frame of int16 mono samples (a (n, 1) capture block is fine)."""
        if pcm.dtype != np.int16:
            raise ValueError(f"pcm must be int16, not {pcm.dtype}")
        if pcm.ndim > 2 or (pcm.ndim == 2 and pcm.shape[1] != 1):
            raise ValueError(f"pcm must be mono, got shape {pcm.shape}")
        flat = np.ascontiguousarray(pcm.reshape(-1))
        if flat.size != self.frame_samples:
            raise ValueError(f"encode() takes {self.frame_samples} samples, got {flat.size}")
        level = level_dbov(flat)
        talking = self._talk.update(level, self.frame_ms)
        packet = self._lib.enc.encode(self._state, flat.tobytes(), flat.size, self.limits.max_packet_bytes)
        if self.dtx and len(packet) <= self.limits.dtx_max_bytes:
            packet = b""
        return Encoded(packet, level, talking)


class Decoder:
    """A mono 48 kHz Opus decoder that turns peers' bad packets into WireError, never a crash."""

    packet_duration_ms = staticmethod(packet_duration_ms)
    packet_samples = staticmethod(packet_samples)

    def __init__(self, gain_q8: int = 0, limits: CodecLimits = CODEC) -> None:
        self.limits = limits
        lib = load()
        self._lib = lib
        self._state = lib.dec.create_state(RATE, 1)
        weakref.finalize(self, lib.dec.destroy, self._state)
        if gain_q8:  # an Ogg Opus header's output gain, dB in Q7.8
            lib.dec.decoder_ctl(self._state, lib.ctl.set_gain, int(gain_q8))

    def decode(self, packet: bytes) -> np.ndarray:
        """Decode one packet to int16 samples; a TOC-only (DTX) packet yields its concealment."""
        samples = packet_samples(packet)
        if len(packet) == 1:  # libopus would conceal a whole 120 ms buffer for a bare TOC
            return self._plc(samples)
        try:
            out = self._lib.dec.decode(self._state, packet, len(packet), MAX_PACKET_SAMPLES, False, 1)
        except self._lib.OpusError as exc:
            raise WireError("opus packet does not decode", code=exc.code) from exc
        return np.frombuffer(out, dtype=np.int16).copy()

    def conceal(self, duration_ms: float) -> np.ndarray:
        """Opus packet-loss concealment for a gap of that many ms (rounded to whole samples).

        libopus conceals in multiples of 2.5 ms; an odd gap (a hostile peer's timestamps)
        is concealed slightly long and trimmed, which only shifts where the next packet's
        cross-fade starts.
        """
        if not duration_ms > 0:
            return np.zeros(0, dtype=np.int16)
        if duration_ms > self.limits.max_conceal_ms:
            raise LimitExceeded("concealment too long", ms=duration_ms, limit=self.limits.max_conceal_ms)
        return self._plc(round(duration_ms * SAMPLES_PER_MS))

    def _plc(self, samples: int) -> np.ndarray:
        pieces, left = [], samples
        while left > 0:
            step = min(MAX_PACKET_SAMPLES, -(-left // 120) * 120)
            out = self._lib.dec.decode(self._state, None, 0, step, False, 1)
            pieces.append(np.frombuffer(out, dtype=np.int16))
            left -= step
        return np.concatenate(pieces)[:samples] if pieces else np.zeros(0, dtype=np.int16)


def roundtrip(
    pcm: np.ndarray,
    application: str = "voip",
    bitrate_bps: int = 16000,
    frame_ms: int = 60,
    bandwidth: str = "wb",
    dtx: bool = False,
    changes: Sequence[tuple[int, int, int, str]] = (),
) -> np.ndarray:
    """Encode and decode a whole signal offline with one setting: the benchmark's reference.

    ``changes`` are (from media ms, bit rate, packet ms, band): the setting moves there, at
    the first packet boundary at or after it, as a live sender's rate control moves it.
    The output is aligned with the input (the encoder's lookahead removed) and exactly as
    long, so it can be compared sample by sample. DTX gaps are concealed, as a live
    receiver would.
    """
    enc = Encoder(application, bitrate_bps, frame_ms, bandwidth, dtx)
    dec = Decoder()
    flat = np.asarray(pcm, dtype=np.int16).reshape(-1)
    padded = np.concatenate([flat, np.zeros(enc.lookahead + MAX_PACKET_SAMPLES, np.int16)])
    pending = sorted(changes)
    out, start = [], 0
    while start < flat.size + enc.lookahead:
        while pending and start >= pending[0][0] * SAMPLES_PER_MS:
            enc.reconfigure(*pending.pop(0)[1:])
        n = enc.frame_samples
        packet = enc.encode(padded[start : start + n]).packet
        out.append(dec.decode(packet) if packet else dec.conceal(enc.frame_ms))
        start += n
    decoded = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
    return decoded[enc.lookahead : enc.lookahead + flat.size]


def available() -> bool:
    """Whether libopus can be loaded, for callers that only want to grey out a button."""
    try:
        load()
    except VoiceUnavailable:
        return False
    return True


__all__ = [
    "CODEC",
    "VAD",
    "CodecLimits",
    "Decoder",
    "Encoded",
    "Encoder",
    "TalkDetector",
    "VadSettings",
    "available",
    "level_dbov",
    "load",
    "packet_duration_ms",
    "packet_samples",
    "roundtrip",
]

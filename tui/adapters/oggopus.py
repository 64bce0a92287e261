"""Voice notes as Ogg Opus files (RFC 7845) that any standard player opens.

A voice note is a blob: it is stored, forwarded in chunks and saved by the doctor as a
``.opus`` file, so it must be a plain, standard file rather than medcomm's call framing. The
writer makes one logical stream: a first page holding only ``OpusHead`` (pre-skip = the
encoder's lookahead), ``OpusTags`` (vendor "medcomm") on its own page(s), then audio pages
of up to a second each whose granule positions count 48 kHz samples, the last page with
EOS and a granule position that trims the padding the encoder needed at the end.

The reader is strict because a note arrives from another device: every page's capture
pattern, version, flags, CRC, serial and sequence number are checked, headers are parsed
with bounds, every packet is a valid Opus packet, granule positions add up, and size,
packet and duration limits hold; anything else is a WireError (LimitExceeded for limits).
It needs no libopus, so the relay or a box without voice can still read a note's duration.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from medcomm.adapters.opus import RATE, Decoder, Encoder, packet_samples
from medcomm.errors import LimitExceeded, UsageError, WireError


@dataclass(frozen=True)
class OggLimits:
    """What one voice note may cost whoever reads it."""

    max_file_bytes: int = 8 * 1024 * 1024  # ~45 min at 24 kbit/s; notes are minutes at most
    max_packets: int = 60_000  # 20 min of 20 ms packets
    max_seconds: float = 900.0  # decoded length: 15 min of 48 kHz int16 is 86 MB of memory
    max_tags_bytes: int = 65_536  # OpusTags packet (RFC 7845 suggests keeping it under 61,440)
    max_packet_bytes: int = 65_536  # any packet; the largest valid Opus packet is ~61 KB
    page_ms: int = 1000  # writer: audio per page (what opusenc does); fewer pages, less framing


OGG = OggLimits()
VENDOR = "medcomm"
_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, nsegs
_CONTINUED, _BOS, _EOS = 0x01, 0x02, 0x04
_HEAD = struct.Struct("<8sBBHIhB")  # magic, version, channels, pre-skip, input rate, gain, family

# --- CRC ---------------------------------------------------------------------------------
# Ogg's CRC-32 is poly 0x04C11DB7, init 0, no reflection, no final xor. zlib's crc32 is the
# reflected form of the same polynomial, so bit-reversing every input byte and the result
# gives Ogg's CRC at C speed (a pure-Python table loop is ~100x slower on a long note).
_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum of data (with the page's CRC field zeroed by the caller)."""
    raw = zlib.crc32(data.translate(_REV8), 0xFFFFFFFF) ^ 0xFFFFFFFF  # init 0, no xorout
    return int(f"{raw:032b}"[::-1], 2)


# --- writing -----------------------------------------------------------------------------


def _page(flags: int, granule: int, serial: int, seq: int, lacing: list[int], body: bytes) -> bytes:
    header = _HEADER.pack(b"OggS", 0, flags, granule, serial, seq, 0, len(lacing)) + bytes(lacing)
    crc = ogg_crc(header + body)
    return header[:22] + struct.pack("<I", crc) + header[26:] + body


def _lacing(size: int) -> list[int]:
    return [255] * (size // 255) + [size % 255]


def mux(packets: list[bytes], pre_skip: int, samples: int, serial: int | None = None,
        limits: OggLimits = OGG) -> bytes:
    """Wrap Opus packets in an Ogg Opus stream whose decoded length is exactly ``samples``.

    ``samples`` counts the audio after pre-skip; the packets must cover at least
    ``pre_skip + samples`` and the excess must lie within the last packet (end trimming
    applies to the last page only).
    """
    if serial is None:
        serial = int.from_bytes(os.urandom(4), "little")
    covered = sum(packet_samples(p) for p in packets)
    end = pre_skip + samples
    if not packets or covered < end or covered - packet_samples(packets[-1]) >= end:
        raise UsageError("packets do not cover the note's length", covered=covered, end=end)
    head = _HEAD.pack(b"OpusHead", 1, 1, pre_skip, RATE, 0, 0)
    vendor = VENDOR.encode()
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_page(_BOS, 0, serial, 0, _lacing(len(head)), head)]
    pages.append(_page(0, 0, serial, 1, _lacing(len(tags)), tags))

    lacing: list[int] = []
    body = bytearray()
    granule, page_granule, page_samples, flags = 0, -1, 0, 0
    page_limit = limits.page_ms * RATE // 1000

    def flush(eos: bool) -> None:
        nonlocal lacing, body, page_granule, page_samples, flags
        final = min(page_granule, end) if eos else page_granule
        pages.append(_page(flags | (_EOS if eos else 0), final, serial, len(pages), lacing, bytes(body)))
        lacing, body, page_granule, page_samples = [], bytearray(), -1, 0
        flags = 0

    for packet in packets:
        if page_samples >= page_limit or len(lacing) == 255:
            flush(eos=False)
        values, pos = _lacing(len(packet)), 0
        while True:
            room = 255 - len(lacing)  # > 0 here: the page was flushed if full
            take, values = values[:room], values[room:]
            size = sum(take)
            lacing.extend(take)
            body += packet[pos : pos + size]
            pos += size
            if not values:
                break
            flush(eos=False)  # the packet goes on on a new page
            flags = _CONTINUED
        granule += packet_samples(packet)
        page_granule, page_samples = granule, page_samples + packet_samples(packet)
    flush(eos=True)
    return b"".join(pages)


def encode_note(
    pcm: np.ndarray,
    bitrate_bps: int = 16000,
    frame_ms: int = 20,
    *,
    application: str = "voip",
    bandwidth: str = "wb",
    serial: int | None = None,
    limits: OggLimits = OGG,
) -> bytes:
    """Encode 48 kHz mono int16 audio as an Ogg Opus file that decodes to exactly its length.

    16 kbit/s wideband speech is ~2 KB/s: a one-minute note uploads in about 40 s at EDGE's
    24 kbit/s. Use ``application="audio"`` (and ~28 kbit/s) for a recorded auscultation.
    """
    arr = np.asarray(pcm)
    if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[1] != 1):
        raise UsageError(f"voice note samples must be mono, got shape {arr.shape}")
    flat = arr.reshape(-1)
    if flat.dtype != np.int16:
        raise UsageError(f"voice note samples must be int16, not {flat.dtype}")
    if flat.size > limits.max_seconds * RATE:
        raise UsageError(f"voice note longer than {limits.max_seconds:.0f} s", samples=flat.size)
    enc = Encoder(application, bitrate_bps, frame_ms, bandwidth, dtx=False)
    n = enc.frame_samples
    total = -(-(flat.size + enc.lookahead) // n) * n  # flush the lookahead, whole frames
    padded = np.zeros(total, dtype=np.int16)
    padded[: flat.size] = flat
    packets = [enc.encode(padded[i : i + n]).packet for i in range(0, total, n)]
    return mux(packets, enc.lookahead, flat.size, serial, limits)


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpusHead:
    """The identification header (RFC 7845 section 5.1)."""

    version: int
    channels: int
    pre_skip: int
    input_rate: int
    gain_q8: int
    mapping_family: int


@dataclass(frozen=True)
class Note:
    """A validated voice note: headers, its audio packets, and where it ends."""

    head: OpusHead
    vendor: str
    comments: list[str]
    packets: list[bytes] = field(repr=False)
    granule: int  # of the last page: pre-skip + decoded samples

    @property
    def samples(self) -> int:
        """Decoded length at 48 kHz, pre-skip and end trimming honoured."""
        return self.granule - self.head.pre_skip

    @property
    def duration(self) -> float:
        return self.samples / RATE


@dataclass(frozen=True)
class _Page:
    flags: int
    granule: int
    serial: int
    seq: int
    lacing: bytes
    body: bytes


def _pages(data: bytes) -> Iterator[_Page]:
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            raise WireError("ogg: truncated page header", offset=pos)
        capture, version, flags, granule, serial, seq, crc, nsegs = _HEADER.unpack_from(data, pos)
        if capture != b"OggS":
            raise WireError("ogg: no capture pattern", offset=pos)
        if version != 0 or flags & ~(_CONTINUED | _BOS | _EOS):
            raise WireError("ogg: unknown page version or flags", offset=pos)
        start = pos + _HEADER.size
        lacing = data[start : start + nsegs]
        end = start + nsegs + sum(lacing)
        if len(lacing) != nsegs or end > len(data):
            raise WireError("ogg: truncated page", offset=pos)
        page = data[pos:end]
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            raise WireError("ogg: page checksum mismatch", offset=pos)
        yield _Page(flags, granule, serial, seq, lacing, data[start + nsegs : end])
        pos = end


def _packets(data: bytes, limits: OggLimits) -> Iterator[tuple[_Page, list[bytes]]]:
    """Pages with the packets that complete on each, after checking the stream's framing."""
    partial: bytearray | None = None
    serial, last = 0, None
    for index, page in enumerate(_pages(data)):
        if last is not None and last.flags & _EOS:
            raise WireError("ogg: data after the end of stream")
        if index == 0:
            serial = page.serial
            if not page.flags & _BOS:
                raise WireError("ogg: first page lacks BOS")
        elif page.flags & _BOS or page.serial != serial:
            raise WireError("ogg: more than one logical stream")
        if page.seq != index:
            raise WireError("ogg: page missing or out of order", seq=page.seq, expected=index)
        if bool(page.flags & _CONTINUED) != (partial is not None):
            raise WireError("ogg: continuation flag does not match the previous page")
        done: list[bytes] = []
        body_pos = 0
        for value in page.lacing:
            chunk = page.body[body_pos : body_pos + value]
            body_pos += value
            if partial is None:
                partial = bytearray()
            partial += chunk
            if len(partial) > limits.max_packet_bytes:
                raise LimitExceeded("ogg: packet too large", size=len(partial))
            if value < 255:
                done.append(bytes(partial))
                partial = None
        last = page
        yield page, done
    if last is None or not last.flags & _EOS or partial is not None:
        raise WireError("ogg: stream truncated (no end-of-stream page)")


def _parse_head(packet: bytes) -> OpusHead:
    if len(packet) < _HEAD.size or packet[:8] != b"OpusHead":
        raise WireError("ogg opus: first packet is not OpusHead")
    _, version, channels, pre_skip, rate, gain, family = _HEAD.unpack_from(packet)
    if version >> 4 != 0 or version == 0:
        raise WireError("ogg opus: unsupported OpusHead version", version=version)
    if family != 0 or not 1 <= channels <= 2:
        raise WireError("ogg opus: only mono/stereo mapping family 0 is supported", family=family)
    if version == 1 and len(packet) != _HEAD.size:
        raise WireError("ogg opus: OpusHead has the wrong size", size=len(packet))
    return OpusHead(version, channels, pre_skip, rate, gain, family)


def _parse_tags(packet: bytes) -> tuple[str, list[str]]:
    def u32(pos: int) -> int:
        if pos + 4 > len(packet):
            raise WireError("ogg opus: OpusTags cut short")
        return int.from_bytes(packet[pos : pos + 4], "little")

    def text(pos: int, size: int) -> str:
        if pos + size > len(packet):
            raise WireError("ogg opus: OpusTags field overruns the packet")
        try:
            return packet[pos : pos + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("ogg opus: OpusTags is not UTF-8") from exc

    if packet[:8] != b"OpusTags":
        raise WireError("ogg opus: second packet is not OpusTags")
    size = u32(8)
    vendor = text(12, size)
    pos = 12 + size
    count = u32(pos)
    pos += 4
    if count > (len(packet) - pos) // 4:
        raise WireError("ogg opus: OpusTags comment count overruns the packet")
    comments = []
    for _ in range(count):
        size = u32(pos)
        comments.append(text(pos + 4, size))
        pos += 4 + size
    return vendor, comments


def read_note(data: bytes, limits: OggLimits = OGG) -> Note:
    """Validate a whole Ogg Opus file and return its packets; WireError on anything wrong."""
    if len(data) > limits.max_file_bytes:
        raise LimitExceeded("voice note file too large", size=len(data), limit=limits.max_file_bytes)
    head: OpusHead | None = None
    vendor, comments = "", []
    packets: list[bytes] = []
    stage, granule, final, pre_skip = 0, 0, -1, 0  # stage 0: want OpusHead, 1: OpusTags, 2: audio
    for page, done in _packets(data, limits):
        if stage < 2:
            if page.granule != 0:
                raise WireError("ogg opus: header page with a granule position")
            if stage == 0:
                if len(done) != 1 or page.lacing[-1:] == b"\xff":
                    raise WireError("ogg opus: first page must hold only OpusHead")
                head = _parse_head(done[0])
                pre_skip, stage = head.pre_skip, 1
                continue
            if len(done) > 1 or (done and page.lacing[-1:] == b"\xff"):
                raise WireError("ogg opus: audio must start on a fresh page after OpusTags")
            if done:
                if len(done[0]) > limits.max_tags_bytes:
                    raise LimitExceeded("ogg opus: OpusTags too large", size=len(done[0]))
                vendor, comments = _parse_tags(done[0])
                stage = 2
            continue
        if len(packets) + len(done) > limits.max_packets:
            raise LimitExceeded("voice note has too many packets", limit=limits.max_packets)
        start = granule
        for packet in done:
            granule += packet_samples(packet)
            packets.append(packet)
        if granule > limits.max_seconds * RATE + pre_skip:
            raise LimitExceeded("voice note too long", limit=limits.max_seconds)
        if not done:
            if page.granule != -1 or page.flags & _EOS:
                raise WireError("ogg opus: a page where no packet ends needs granule -1 and no EOS")
        elif page.flags & _EOS:  # end trimming may only cut into this last page's audio
            if not max(start, pre_skip) <= page.granule <= granule:
                raise WireError("ogg opus: bad end trimming", granule=page.granule, samples=granule)
            final = page.granule
        elif page.granule != granule:
            raise WireError("ogg opus: granule position does not add up", granule=page.granule)
    if head is None or stage < 2 or final < 0:
        raise WireError("ogg opus: no audio")
    return Note(head, vendor, comments, packets, final)


def decode_note(data: bytes, limits: OggLimits = OGG) -> np.ndarray:
    """Decode a voice note to 48 kHz mono int16, pre-skip dropped and end trimmed."""
    note = read_note(data, limits)
    decoder = Decoder(gain_q8=note.head.gain_q8)
    pcm = np.concatenate([decoder.decode(p) for p in note.packets])
    return pcm[note.head.pre_skip : note.granule]


def note_duration(data: bytes, limits: OggLimits = OGG) -> float:
    """Seconds of audio in a voice note; validates the whole file, needs no libopus."""
    return read_note(data, limits).duration


__all__ = ["OGG", "Note", "OggLimits", "OpusHead", "decode_note", "encode_note", "mux", "note_duration",
           "ogg_crc", "read_note"]

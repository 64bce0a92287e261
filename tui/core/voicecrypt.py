"""End-to-end sealing of live voice: each device's stream under a key of its own, 8 bytes a frame.

The relay routes a voice frame by its first byte and ranks speakers by its level byte
(``core.voiceframe``); it must never be able to listen. Each device makes a fresh random key
for its own stream every time it joins a call and gives it to the consult's members in a
sealed ``callkey`` message (``session.e2ekeys.announce_call_key``). Every media frame's Opus
packet is then sealed, encrypt-then-MAC as SRTP does it, with a short tag because a voice
frame is small and frequent:

* keys: an encryption key and a MAC key derived from the sender's stream key with keyed
  BLAKE2b (each with its own personalisation string); one stream, one key, a new one on
  every join;
* encryption: ChaCha20 (RFC 8439, block counter from 0) with the stream's *unwrapped* media
  timestamp (ms since the stream began) as the 96-bit big-endian nonce. A stream's ts
  strictly increases (the sealer refuses anything else) and the key is new whenever that
  clock starts again, so no (key, nonce) pair ever repeats; it costs no byte on the wire
  because the header already carries ts's low 16 bits;
* tag: keyed BLAKE2b with an 8-byte output over the 5 header bytes with the slot bits zeroed
  (the relay rewrites those and nothing else), the full 8-byte ts and the ciphertext. So seq,
  ts and the level byte are authenticated: a frame moved to another time, or given another
  level, fails.
* overhead: the 8-byte tag and nothing else. A 16-byte Poly1305 tag cost 2.1 kbit/s at 60 ms
  packets and took the standard rung over its 28 kbit/s wire budget; 8 bytes cost 1.1 (0.5 at
  120 ms). BLAKE2b is a PRF, so its output truncated to 64 bits still leaves a forger one
  chance in 2**64 per attempt (a Poly1305 tag cut short would not keep that bound), and an
  attempt costs the forger a frame on the wire: at 17 frames a second that is one success
  in ~3e10 years, for 60 ms of audio. SRTP's default tag for voice is 80 bits, with a 32-bit
  option for exactly this trade.

The receiver rebuilds the full ts from the 16 bits it sees and lets the tag say which
candidate is right (a wrong one fails like a forgery). It tries only the few that make sense:
the unwrap against the newest ts it authenticated (a step back of up to ``replay_span_ms`` is
a late frame), then the one nearest its arrival clock's estimate (a sender muted for more
than the 49 s the 16 bits cover), and, for a stream's first frame, every wrap up to
``max_wraps`` (a stream joined an hour into it); each candidate costs one BLAKE2b of the
frame, and nothing is decrypted before a tag matches. Only then is the ts checked against a
bounded replay window: one seen before, or older than the window, is refused. A tampered,
cut, replayed or misplaced frame is dropped and counted, never played.

Feedback frames (``0x60``) stay plaintext: they carry an echoed timestamp, a hold time, a
jitter-buffer delay and a concealment figure, timing the relay sees anyway from when frames
pass, and no content. What stays visible besides: the level byte (the relay needs it to pick
the loudest speakers) and each packet's size, which Opus varies with the sound (a known limit
of sealing voice packet by packet; it says nothing the level byte does not already say in
bulk).

Sans-I/O: ``now`` is passed in, and the peers' keys come from a lookup function the session
gives (the local store). ``cryptography`` (ChaCha20) is imported inside the functions: text
paths never load it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from medcomm.core.voiceframe import MEDIA_HEADER, TS_BITS, VOICE, MediaFrame, VoiceLimits
from medcomm.errors import Tampered

log = logging.getLogger(__name__)

KEY_LEN = 32  # a stream key, and each key derived from it
NONCE_LEN = 12  # ChaCha20's (RFC 8439) nonce
TAG_LEN = 8  # BLAKE2b output kept as the tag (see the module's text for why 8 is enough)
OVERHEAD = TAG_LEN  # bytes a sealed frame adds to the Opus packet: the tag alone
_ENC, _MAC = b"medcomm voice e", b"medcomm voice m"  # BLAKE2b personalisations of the two subkeys
WRAP = 1 << TS_BITS
MAX_TS = (1 << 64) - 1  # 585 million years of ms: the nonce's low 8 bytes


@dataclass(frozen=True)
class VoiceCryptLimits:
    """Bounds of the receiving side: memory per stream and work per frame stay small whatever
    a sender or the relay does."""

    #: How far back (ms) a frame may be and still play; older ones are refused as replays. A
    #: quarter of the 16-bit ts range, as ``voiceframe.Unwrapper`` assumes; the jitter buffer
    #: drops audio this late anyway.
    replay_span_ms: int = 16_384
    #: Timestamps remembered inside the window (16.4 s of 20 ms packets is 820); past this the
    #: window's floor rises instead, so it refuses more, never accepts a replay.
    max_remembered: int = 1024
    #: Wraps of the 16-bit ts tried on a stream's first frame (64 x 65.5 s: a stream joined
    #: 70 minutes after it began); each costs one failed decryption of a small packet.
    max_wraps: int = 64
    #: Seconds between looks in the store for a member's key that is missing, or that a frame
    #: just failed under (the member may have joined again with a new one).
    recheck_s: float = 0.2


VOICECRYPT = VoiceCryptLimits()


def nonce(ts: int) -> bytes:
    """The nonce of the frame at unwrapped media time ``ts`` (ms) of a stream."""
    if not 0 <= ts <= MAX_TS:
        raise ValueError(f"ts {ts} out of 0..2**64-1")
    return ts.to_bytes(NONCE_LEN, "big")


def _key(key: bytes) -> bytes:
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise ValueError(f"a voice stream key is {KEY_LEN} bytes")
    return key


class _Keys:
    """A stream key's two subkeys, derived once (one never serves both ciphers), and the
    packet seal made with them."""

    __slots__ = ("enc", "mac")

    def __init__(self, key: bytes) -> None:
        _key(key)
        self.enc = hashlib.blake2b(key=key, digest_size=KEY_LEN, person=_ENC).digest()
        self.mac = hashlib.blake2b(key=key, digest_size=KEY_LEN, person=_MAC).digest()
        # Load the cipher now, with the key, not at the first packet: that import took 14 ms,
        # in the engine's first tick after the speaker had started, and the speaker (one 20 ms
        # block queued) ran dry; its queue then stayed a block longer for the whole call.
        import cryptography.hazmat.primitives.ciphers  # noqa: F401

    def tag(self, ad: bytes, ts: int, ciphertext: bytes) -> bytes:
        """The frame's tag: header (slot zeroed), full ts and ciphertext, each of fixed length
        but the last, so no two inputs run together."""
        h = hashlib.blake2b(key=self.mac, digest_size=TAG_LEN)
        h.update(ad)
        h.update(ts.to_bytes(8, "big"))
        h.update(ciphertext)
        return h.digest()

    def xor(self, ts: int, data: bytes) -> bytes:
        """ChaCha20 of ``data`` at ``ts`` (encrypts and decrypts alike)."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        stream = Cipher(algorithms.ChaCha20(self.enc, b"\0\0\0\0" + nonce(ts)), mode=None).encryptor()
        return stream.update(data)

    def seal(self, ad: bytes, ts: int, opus: bytes) -> bytes:
        """Ciphertext and tag of one Opus packet (what a media frame carries as its payload)."""
        ciphertext = self.xor(ts, opus)
        return ciphertext + self.tag(ad, ts, ciphertext)

    def open(self, ad: bytes, ts: int, payload: bytes) -> bytes | None:
        """The Opus packet, or None when the tag does not match (checked before any decryption)."""
        ciphertext, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
        if not hmac.compare_digest(self.tag(ad, ts, ciphertext), tag):
            return None
        return self.xor(ts, ciphertext)


def sealed_size(opus_bytes: int) -> int:
    """Bytes of a sealed media frame (header included) carrying an Opus packet of this size."""
    return MEDIA_HEADER + opus_bytes + OVERHEAD


class StreamSealer:
    """This device's stream in one call: each Opus packet sealed under the stream's key."""

    def __init__(self, key: bytes, limits: VoiceLimits = VOICE) -> None:
        self._keys = _Keys(key)
        self._limits = limits
        self.last_ts: int | None = None

    def seal(self, seq: int, ts: int, level: int, opus: bytes) -> bytes:
        """The packed uplink frame (slot 0) carrying ``opus`` sealed at media time ``ts``.

        ``seq`` and ``ts`` are the sender's unwrapped counters (wrapped into the header here);
        ``ts`` must be greater than every ts sealed before under this key: it is the nonce.
        """
        if self.last_ts is not None and ts <= self.last_ts:
            raise ValueError(f"voice ts {ts} not after {self.last_ts}: a nonce would repeat")
        if not opus:
            raise ValueError("an empty Opus packet is not sent")
        head = MediaFrame.outgoing(seq, ts, level, opus)  # checks the fields before a nonce is spent
        self.last_ts = ts
        sealed = self._keys.seal(head.header(0), ts, opus)
        return MediaFrame(0, head.seq, head.ts, head.level, sealed).pack(self._limits)


class StreamOpener:
    """One far-end stream as received: rebuilds each frame's full ts, authenticates, and keeps
    the replay window. Raises :class:`~medcomm.errors.Tampered` with ``reason`` ``truncated``
    (no room for a tag and a packet), ``auth`` (no candidate ts authenticates: altered, moved,
    forged, or another key) or ``replay`` (authentic, but seen before or older than the window).
    """

    def __init__(self, key: bytes, limits: VoiceCryptLimits = VOICECRYPT) -> None:
        self._keys = _Keys(key)  # checks the key's length
        self.key = key
        self.limits = limits
        self.highest: int | None = None  # newest ts authenticated
        self._highest_at = 0.0  # when it arrived (s, the caller's clock)
        self.floor = 0  # every ts below this is refused
        self._seen: set[int] = set()
        self._order: list[int] = []  # heap of the remembered ts, oldest first

    @property
    def remembered(self) -> int:
        """Timestamps held for the replay check (at most ``max_remembered``)."""
        return len(self._seen)

    def candidates(self, ts16: int, now: float) -> list[int]:
        """Full timestamps whose low 16 bits are ``ts16``, most likely first (at most two once
        the stream is anchored, ``max_wraps`` before)."""
        ts16 &= WRAP - 1
        if self.highest is None:
            return [ts16 + k * WRAP for k in range(self.limits.max_wraps)]
        delta = (ts16 - self.highest) % WRAP
        if delta > WRAP - 1 - self.limits.replay_span_ms:
            delta -= WRAP  # a step back within the window: a late frame
        out = [self.highest + delta]
        near = self.highest + round((now - self._highest_at) * 1000)
        by_clock = ts16 + round((near - ts16) / WRAP) * WRAP
        if by_clock != out[0]:
            out.append(by_clock)
        return [c for c in out if 0 <= c <= MAX_TS]

    def open(self, frame: MediaFrame, now: float) -> tuple[int, bytes]:
        """(full ts, Opus packet) of an authentic frame not seen before; Tampered otherwise."""
        if len(frame.payload) <= TAG_LEN:
            raise Tampered(f"voice frame of {len(frame.payload)} sealed bytes: cut short", reason="truncated")
        ad = frame.header(0)
        for ts in self.candidates(frame.ts, now):
            plain = self._keys.open(ad, ts, frame.payload)
            if plain is not None:
                break
        else:
            raise Tampered("voice frame does not authenticate under its stream's key", reason="auth")
        if ts < self.floor or ts in self._seen:
            raise Tampered("voice frame seen before (or older than the replay window)", reason="replay")
        self._remember(ts, now)
        return ts, plain

    def _remember(self, ts: int, now: float) -> None:
        if self.highest is None or ts > self.highest:
            self.highest, self._highest_at = ts, now
        self._seen.add(ts)
        heapq.heappush(self._order, ts)
        self.floor = max(self.floor, self.highest - self.limits.replay_span_ms)
        while self._order and (self._order[0] < self.floor or len(self._order) > self.limits.max_remembered):
            old = heapq.heappop(self._order)
            self._seen.discard(old)
            self.floor = max(self.floor, old + 1)


@dataclass
class CryptoStats:
    """Counts for the status line and the call's report (no content, no keys)."""

    sealed: int = 0
    opened: int = 0
    no_key: int = 0  # dropped: the sender's key (or who the slot is) not known here yet
    tampered: int = 0  # dropped: failed authentication (altered, moved, forged, another key)
    truncated: int = 0  # dropped: too short to hold a tag and a packet
    replayed: int = 0  # dropped: authentic but seen before or too old
    key_changes: int = 0  # a member's stream key replaced by a newer one (they joined again)

    @property
    def failed_auth(self) -> int:
        return self.tampered + self.truncated + self.replayed

    def as_dict(self) -> dict[str, int]:
        return {
            "sealed": self.sealed, "opened": self.opened, "no_key": self.no_key, "tampered": self.tampered,
            "truncated": self.truncated, "replayed": self.replayed, "key_changes": self.key_changes,
        }  # fmt: skip


@dataclass
class _Peer:
    name: str
    opener: StreamOpener | None = None
    checked: float = float("-inf")
    failed: int = 0  # frames that failed authentication since the last one that opened
    stream: int = 0  # CallCrypto's number for the stream the opener opens (see stream_of)


@dataclass(eq=False)
class CallCrypto:
    """One device's part in one call: its own stream sealed, the others' opened by slot.

    ``lookup(name)`` returns the newest key of that member's stream in this call (None until
    their ``callkey`` message has arrived). It is asked at most every ``recheck_s`` per slot
    while the key is missing or a frame has just failed under the cached one, so a stream of
    frames without a key costs the store five lookups a second, not one per frame.

    A member who joins again starts a new stream under a new key; until that key is here its
    frames fail under the old one. When the new key then opens the frame in hand, the failures
    since the last frame that opened are counted again as "no key": they were the new stream
    waiting for its key, not an attack, and the status line should not cry wolf. (Forgeries
    mixed into those frames are dropped all the same; only their count moves.)
    """

    own_key: bytes = field(repr=False)  # never in a log line
    lookup: Callable[[str], bytes | None] = field(repr=False)
    limits: VoiceCryptLimits = VOICECRYPT
    stats: CryptoStats = field(default_factory=CryptoStats)

    def __post_init__(self) -> None:
        self.sealer = StreamSealer(self.own_key)
        self._names: dict[int, str] = {}
        self._peers: dict[int, _Peer] = {}
        self._streams = 0

    def stream_of(self, slot: int) -> int:
        """Which stream the frames of ``slot`` now come from (0: none opened yet). It changes
        when a new key takes over there (the member joined again, or another member has the
        slot): a new stream whose clock starts again, so the receiver starts its jitter buffer
        and decoder again too instead of taking the new frames for late ones."""
        peer = self._peers.get(slot)
        return 0 if peer is None else peer.stream

    def set_members(self, slots: Mapping[str, int]) -> None:
        """Who is in which slot (the call's latest ``CallState.slots``)."""
        self._names = {slot: name for name, slot in slots.items() if isinstance(slot, int) and 0 < slot < 16}

    def seal(self, seq: int, ts: int, level: int, opus: bytes) -> bytes:
        data = self.sealer.seal(seq, ts, level, opus)
        self.stats.sealed += 1
        return data

    def open(self, frame: MediaFrame, now: float) -> tuple[int, bytes] | None:
        """(full ts, Opus packet) of a frame from another member; None (counted as no key)
        while their key or their slot is unknown; Tampered (counted) for a frame to drop."""
        name = self._names.get(frame.slot)
        if name is None:
            self.stats.no_key += 1
            return None
        peer = self._peers.get(frame.slot)
        if peer is None or peer.name != name:  # a new member in a slot: nothing of the old one holds
            peer = self._peers[frame.slot] = _Peer(name)
        if peer.opener is None:
            self._refresh(peer, now)
            if peer.opener is None:
                self.stats.no_key += 1
                return None
        try:
            out = peer.opener.open(frame, now)
        except Tampered as exc:
            if exc.data.get("reason") != "auth" or not self._refresh(peer, now):
                self._count(exc)
                peer.failed += exc.data.get("reason") == "auth"
                raise
            try:  # the member joined again: a new stream under a new key
                out = peer.opener.open(frame, now)
            except Tampered as again:
                self._count(again)
                raise
            self.stats.tampered -= peer.failed
            self.stats.no_key += peer.failed
        peer.failed = 0
        self.stats.opened += 1
        return out

    def _refresh(self, peer: _Peer, now: float) -> bool:
        """Look the member's key up again (paced); True when a different key was found."""
        if now - peer.checked < self.limits.recheck_s:
            return False
        peer.checked = now
        key = self.lookup(peer.name)
        if key is None or (peer.opener is not None and key == peer.opener.key):
            return False
        try:
            opener = StreamOpener(key, self.limits)
        except ValueError:
            log.warning("voice key of %s has the wrong length: ignored", peer.name)
            return False
        if peer.opener is not None:
            self.stats.key_changes += 1
        peer.opener = opener
        self._streams += 1
        peer.stream = self._streams
        return True

    def _count(self, exc: Tampered) -> None:
        reason = exc.data.get("reason")
        if reason == "truncated":
            self.stats.truncated += 1
        elif reason == "replay":
            self.stats.replayed += 1
        else:
            self.stats.tampered += 1

"""What an image message and its tile manifest say, and their checked encodings (sans-I/O).

A shared image is one kind-``image`` message plus blobs at the relay, all content-addressed
(SHA-256):

* the **first view** (one small lossy picture, uploaded *before* the message is queued, so
  no one ever sees a message whose picture does not exist);
* the **manifest**: which blob holds each 512-px tile of the pyramid of the (corrected)
  original, coarse to fine;
* the **tiles** themselves, and the byte-exact **original** last (in parts of at most
  ``max_part`` bytes when it is larger than one blob may be).

The message body names the first view, the manifest and the original, so every blob of an
image is reachable from the one immutable message. The manifest can be named in the
message because the sender encodes every tile *before* queueing it (while the first view
uploads): tile ids are therefore known and fixed, the manifest never changes, and a device
that resumes after a crash finds everything it must still upload in its own cache. The
manifest goes up right after the message, before any tile, so a receiver can ask for a
region at once and be told exactly which tiles have not arrived yet.

**Sealed blobs.** Every blob of an image is sealed (:mod:`medcomm.core.filecrypt`) under one
random key per image, ``k`` in the body: the relay holds ciphertext only, and the key
travels only inside the message body, which the message layer encrypts end to end. Each
blob is its own secretstream (its own random header). Every ``sha``/``size`` that the body
and the manifest name is the **sealed** blob's, the one the relay stores, addresses and
resumes, so describe() and the budgets speak of bytes on the wire. The original is the
exception that proves it: ``original.sha``/``size`` stay the plaintext file's (what a
byte-exact fetch is checked against after opening, and what a request names), and its
sealed blobs are always listed in ``parts`` (one or more). A body without ``k`` (sent
before blobs were sealed) names plaintext blobs, as it always did: it is still read.

Body (msgpack map, bytes for hashes: 32 bytes instead of 64 hex characters)::

    v 1 · kind report|film|ecg|photo|slice · caption (the sender's words) · info (what
    prepare measured: sizes, DICOM window...) · k (32-byte blob key; absent on old bodies)
    · first {sha size mime w h codec q lossy} · original {sha size mime w h sent parts?}
    · pyramid {w h levels tile codec mime q} · manifest {sha size} · detail_bytes (sum of
    tile sizes) · tiles (count)

Every decoder here is strict and bounded (types, ranges, counts) before anything trusts a
body from another device; nothing here touches files, sockets or Pillow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack

from medcomm.core import filecrypt
from medcomm.core.tiles import TILE, Pyramid, TileId
from medcomm.errors import LimitExceeded, MedcommError, WireError

VERSION = 1
SHA_LEN = 32
VIEW_KINDS = ("report", "film", "ecg", "photo", "slice")
_MIME = re.compile(r"^[a-z]+/[a-z0-9.+-]{1,40}$")
_CODECS = ("avif", "webp", "jpeg", "png")


@dataclass(frozen=True)
class ImageMsgLimits:
    """Bounds on bodies and manifests from other devices (checked before use)."""

    max_body: int = 4096  # bytes; a body is ~400 (the wire allows 16 KiB: the rest is slack)
    max_caption: int = 1000  # bytes of the sender's caption: a sentence or two, not a report
    max_info: int = 400  # characters of the measured caption (DICOM's is ~120)
    max_blob: int = 16 * 1024 * 1024  # the relay's BlobLimits.max_size: one part of an original
    max_original: int = 256 * 1024 * 1024  # DicomLimits.max_file_bytes, the largest original we read
    max_parts: int = 17  # max_original / the plaintext that seals into max_blob (16 MiB - 4.4 KB)
    max_first: int = 512 * 1024  # FirstViewLimits.max_bytes
    max_tile: int = 1024 * 1024  # one encoded 512x512 tile (lossless PNG of noise is ~790 KB)
    max_tiles: int = 4096  # a 50 MP image has ~260; 4096 bounds a hostile manifest
    max_manifest: int = 256 * 1024  # ~42 bytes per tile

    # first view, tile and manifest bounds are of plaintext; a sealed blob of one may be
    # filecrypt.sealed_size() of it (41 bytes more for one piece)


LIMITS = ImageMsgLimits()
KEY_LEN = filecrypt.KEY_LEN


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A blob by its SHA-256 and size."""

    sha: bytes
    size: int


@dataclass(frozen=True, slots=True)
class FirstView:
    """The first view: its blob and how it was encoded (the label says it is a preview)."""

    sha: bytes
    size: int
    mime: str
    width: int
    height: int
    codec: str
    quality: int  # 0-100; 100 and lossy: a two-level picture, coded losslessly (the greys went)
    lossy: bool

    @property
    def label(self) -> str:
        """Mirrors ``imaging.Encoded.label``: a preview must never pass for the original."""
        size = f"{self.width}x{self.height} {self.codec.upper()}"
        if not self.lossy:
            return f"lossless {size}"
        if self.quality >= 100:  # coded losslessly, yet lossy: two-level, the greys were dropped
            return f"lossy preview {size} two-level"
        return f"lossy preview {size} q{self.quality}"


@dataclass(frozen=True, slots=True)
class Original:
    """The file as the sender gave it: ``sha``/``size`` are the plaintext file's. Its blobs
    are ``parts`` (sealed ones, always listed, one or more, when the image has a key); an
    old body's single plaintext blob is ``sha`` itself and ``parts`` is empty."""

    sha: bytes
    size: int
    mime: str
    width: int
    height: int
    sent: bool  # False: kept on the sender's device until a member asks for it (see core.imagereq)
    parts: tuple[BlobRef, ...] = ()

    def blobs(self) -> tuple[BlobRef, ...]:
        """The blobs to fetch, in order; their plaintexts (opened, when sealed) put end to end
        have SHA-256 ``sha``."""
        return self.parts or (BlobRef(self.sha, self.size),)


@dataclass(frozen=True, slots=True)
class Detail:
    """The tile pyramid of the (corrected) original and where its manifest is."""

    width: int
    height: int
    levels: int
    codec: str
    mime: str
    quality: int
    manifest: BlobRef
    tiles: int
    tile_bytes: int  # all tiles together
    key: bytes | None = None  # the image's key (ImageInfo.key): parse_manifest opens the manifest with it

    @property
    def pyramid(self) -> Pyramid:
        return Pyramid(self.width, self.height)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """Everything an image message says."""

    kind: str
    caption: str
    info: str
    first: FirstView
    original: Original
    detail: Detail | None  # None only on the sender's device before the tiles are encoded
    key: bytes | None = None  # every blob of the image is sealed under it; None: an old, plaintext image


@dataclass(frozen=True, slots=True)
class TileEntry:
    tile: TileId
    sha: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """Tile id -> blob, coarse to fine (the order the sender uploads them)."""

    width: int
    height: int
    entries: tuple[TileEntry, ...]

    def lookup(self) -> dict[TileId, TileEntry]:
        return {e.tile: e for e in self.entries}


# --- encoding -------------------------------------------------------------------------------


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_body(info: ImageInfo, limits: ImageMsgLimits = LIMITS) -> bytes:
    """The message body; LimitExceeded when a caption makes it too large."""
    size = len(info.caption.encode("utf-8"))
    if size > limits.max_caption:
        raise LimitExceeded(
            f"caption of {size} bytes is over the {limits.max_caption}-byte limit", limit=limits.max_caption
        )
    f, o = info.first, info.original
    if info.key is not None:
        if len(info.key) != KEY_LEN or not o.parts:
            raise MedcommError("a sealed image needs a 32-byte key and its original's sealed parts")
        if info.detail is not None and info.detail.key != info.key:
            raise MedcommError("the detail of a sealed image carries the image's key")
    obj: dict[str, Any] = {
        "v": VERSION,
        "kind": info.kind,
        "caption": info.caption,
        "info": info.info[: limits.max_info],
        **({"k": info.key} if info.key is not None else {}),
        "first": {
            "sha": f.sha,
            "size": f.size,
            "mime": f.mime,
            "w": f.width,
            "h": f.height,
            "codec": f.codec,
            "q": f.quality,
            "lossy": f.lossy,
        },
        "original": {
            "sha": o.sha,
            "size": o.size,
            "mime": o.mime,
            "w": o.width,
            "h": o.height,
            "sent": o.sent,
            **({"parts": [[p.sha, p.size] for p in o.parts]} if o.parts else {}),
        },
    }
    if info.detail is not None:
        d = info.detail
        obj["pyramid"] = {
            "w": d.width,
            "h": d.height,
            "levels": d.levels,
            "tile": TILE,
            "codec": d.codec,
            "mime": d.mime,
            "q": d.quality,
        }
        obj["manifest"] = {"sha": d.manifest.sha, "size": d.manifest.size}
        obj["tiles"] = d.tiles
        obj["detail_bytes"] = d.tile_bytes
    body = _pack(obj)
    if len(body) > limits.max_body:
        raise LimitExceeded(f"image message body of {len(body)} bytes over {limits.max_body}")
    return body


def encode_manifest(manifest: Manifest, limits: ImageMsgLimits = LIMITS, key: bytes | None = None) -> bytes:
    """The manifest blob: ``{v, w, h, tile, tiles: [[L, col, row, sha, size], ...]}``, sealed
    under the image's ``key`` when given (as :func:`parse_manifest` takes it back)."""
    if len(manifest.entries) > limits.max_tiles:
        raise LimitExceeded(f"{len(manifest.entries)} tiles over the {limits.max_tiles}-tile limit")
    data = _pack(
        {
            "v": VERSION,
            "w": manifest.width,
            "h": manifest.height,
            "tile": TILE,
            "tiles": [[e.tile.level, e.tile.col, e.tile.row, e.sha, e.size] for e in manifest.entries],
        }
    )
    if len(data) > limits.max_manifest:
        raise LimitExceeded(f"manifest of {len(data)} bytes over {limits.max_manifest}")
    return data if key is None else filecrypt.seal(key, data)


# --- decoding -------------------------------------------------------------------------------


def _fail(what: str) -> WireError:
    return WireError(f"bad image message: {what}")


def _unpack(data: bytes, max_len: int, what: str, limits: ImageMsgLimits) -> dict[str, Any]:
    if len(data) > max_len:
        raise LimitExceeded(f"{what} of {len(data)} bytes over {max_len}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            max_str_len=max_len,
            max_bin_len=max_len,
            max_array_len=limits.max_tiles,
            max_map_len=32,
        )
    except Exception:
        raise _fail(f"{what} is not msgpack") from None
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise _fail(f"{what} is not a version-{VERSION} map")
    return obj


def _int(m: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = m.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise _fail(f"{key} missing or out of range")
    return v


def _sha(v: object) -> bytes:
    if type(v) is not bytes or len(v) != SHA_LEN:
        raise _fail("not a SHA-256")
    return v


def _str(m: dict[str, Any], key: str, limit: int) -> str:
    v = m.get(key, "")
    if type(v) is not str or len(v) > limit:
        raise _fail(f"{key} is not text of at most {limit}")
    return v


def _mime(m: dict[str, Any]) -> str:
    v = m.get("mime")
    if type(v) is not str or not _MIME.fullmatch(v):
        raise _fail("bad mime type")
    return v


def _map(m: dict[str, Any], key: str) -> dict[str, Any]:
    v = m.get(key)
    if not isinstance(v, dict):
        raise _fail(f"{key} missing")
    return v


def parse_body(body: bytes, limits: ImageMsgLimits = LIMITS) -> ImageInfo:
    """Check an image body from another device; WireError (or LimitExceeded) if it is not one."""
    m = _unpack(body, limits.max_body, "image body", limits)
    kind = m.get("kind")
    if kind not in VIEW_KINDS:
        raise _fail("unknown kind")
    key = m.get("k")
    if "k" in m and (type(key) is not bytes or len(key) != KEY_LEN):
        raise _fail("the blob key is not 32 bytes")
    sealed = filecrypt.sealed_size if key is not None else (lambda n: n)  # bounds of stored blobs
    f = _map(m, "first")
    codec = f.get("codec")
    if codec not in _CODECS or type(f.get("lossy")) is not bool:
        raise _fail("bad first-view codec")
    first = FirstView(
        _sha(f.get("sha")),
        _int(f, "size", 1, sealed(limits.max_first)),
        _mime(f),
        _int(f, "w", 1, 65536),
        _int(f, "h", 1, 65536),
        codec,
        _int(f, "q", 0, 100),
        f["lossy"],
    )
    o = _map(m, "original")
    parts_raw = o.get("parts", [])
    if not isinstance(parts_raw, list) or len(parts_raw) > limits.max_parts:
        raise _fail("bad original parts")
    if len(parts_raw) == (0 if key is not None else 1):  # sealed: always listed; plain: one is the file
        raise _fail("bad original parts")
    parts = []
    for p in parts_raw:
        if not (isinstance(p, list) and len(p) == 2 and type(p[1]) is int and 0 < p[1] <= limits.max_blob):
            raise _fail("bad original part")
        parts.append(BlobRef(_sha(p[0]), p[1]))
    size = _int(o, "size", 1, limits.max_original)
    if key is not None:  # the parts' plaintexts, each fixed by its sealed length, make the file
        plain = [filecrypt.plain_size(p.size) for p in parts]
        if None in plain or sum(n or 0 for n in plain) != size:
            raise _fail("original parts do not add up")
    elif (parts and sum(p.size for p in parts) != size) or (not parts and size > limits.max_blob):
        raise _fail("original parts do not add up")
    if type(o.get("sent")) is not bool:
        raise _fail("original.sent missing")
    original = Original(
        _sha(o.get("sha")),
        size,
        _mime(o),
        _int(o, "w", 1, 65536),
        _int(o, "h", 1, 65536),
        o["sent"],
        tuple(parts),
    )
    detail = None
    if "pyramid" in m:
        p = _map(m, "pyramid")
        man = _map(m, "manifest")
        if p.get("tile") != TILE or p.get("codec") not in _CODECS:
            raise _fail("bad pyramid")
        w, h = _int(p, "w", 1, 65536), _int(p, "h", 1, 65536)
        try:
            levels = Pyramid(w, h).levels
        except MedcommError:
            raise _fail("bad pyramid size") from None
        if _int(p, "levels", 1, 16) != levels:
            raise _fail("pyramid levels do not match its size")
        detail = Detail(
            w,
            h,
            levels,
            p["codec"],
            _mime(p),
            _int(p, "q", 0, 100),
            BlobRef(_sha(man.get("sha")), _int(man, "size", 1, sealed(limits.max_manifest))),
            _int(m, "tiles", 1, limits.max_tiles),
            _int(m, "detail_bytes", 1, limits.max_tiles * sealed(limits.max_tile)),
            key,
        )
    return ImageInfo(
        kind,
        _str(m, "caption", limits.max_caption),
        _str(m, "info", limits.max_info),
        first,
        original,
        detail,
        key,
    )


def parse_manifest(data: bytes, detail: Detail, limits: ImageMsgLimits = LIMITS) -> Manifest:
    """Check a manifest blob, as stored (opened first under ``detail.key``: Tampered when it
    does not open), against the pyramid its message announced: every tile exists there, at
    most once, with a plausible size."""
    sealed = detail.key is not None
    if sealed:
        if len(data) > filecrypt.sealed_size(limits.max_manifest):
            raise LimitExceeded(f"manifest of {len(data)} bytes over {limits.max_manifest}")
        data = filecrypt.open(detail.key, data)  # type: ignore[arg-type]
    max_tile = filecrypt.sealed_size(limits.max_tile) if sealed else limits.max_tile
    m = _unpack(data, limits.max_manifest, "manifest", limits)
    if m.get("w") != detail.width or m.get("h") != detail.height or m.get("tile") != TILE:
        raise _fail("manifest is for another pyramid")
    rows = m.get("tiles")
    if not isinstance(rows, list) or len(rows) > limits.max_tiles:
        raise _fail("manifest has no tile list")
    pyr = detail.pyramid
    seen: set[TileId] = set()
    entries = []
    for r in rows:
        if not (isinstance(r, list) and len(r) == 5 and type(r[4]) is int and 0 < r[4] <= max_tile):
            raise _fail("bad manifest entry")
        try:
            tid = pyr.check(TileId.parse(r[:3]))
        except MedcommError:
            raise _fail("manifest names a tile outside the pyramid") from None
        if tid in seen:
            raise _fail("manifest names a tile twice")
        seen.add(tid)
        entries.append(TileEntry(tid, _sha(r[3]), r[4]))
    return Manifest(detail.width, detail.height, tuple(entries))


# --- words ----------------------------------------------------------------------------------


def kb(n: int) -> str:
    """Bytes as people on a metered link read them (KB and MB of 1000)."""
    return f"{n / 1000:.1f} KB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"


@dataclass(frozen=True, slots=True)
class Arrived:
    """What of an image this device holds."""

    first: bool
    tiles: int | None  # None: the manifest is not here, so nothing is known
    original: bool


def describe(info: ImageInfo, arrived: Arrived | None = None, original: str | None = None) -> str:
    """One history line: kind, caption, sizes, and (given ``arrived``) what is on this device.

    ``image report "Hb low?" · first view 1000x1414 AVIF 19.6 KB · detail 2480x3508, 65
    tiles 121.0 KB · original JPEG 2.1 MB (on request) · here: first view, 12/65 tiles``

    ``original`` is where the original stands as this device knows it
    (``imagereq.original_state``); said in brackets unless "here:" or the sender's choice to
    send it already say it. Without it, an original not sent is "on request".
    """
    f, o = info.first, info.original
    parts = [f"image {info.kind}" + (f' "{info.caption}"' if info.caption else "")]
    levels = " two-level" if f.lossy and f.quality >= 100 else ""
    parts.append(f"first view {f.width}x{f.height} {f.codec.upper()}{levels} {kb(f.size)}")
    if info.detail is not None:
        d = info.detail
        parts.append(f"detail {d.width}x{d.height}, {d.tiles} tiles {kb(d.tile_bytes)}")
    fmt = o.mime.split("/")[-1].upper()
    state = original if original is not None else ("sent" if o.sent else "on request")
    quiet = ("sent", "downloaded")
    parts.append(
        f"original {fmt} {o.width}x{o.height} {kb(o.size)}" + ("" if state in quiet else f" ({state})")
    )
    if info.info:
        parts.append(info.info)
    if arrived is not None:
        have = []
        if arrived.first:
            have.append("first view")
        if info.detail is not None and arrived.tiles:
            have.append(f"{arrived.tiles}/{info.detail.tiles} tiles")
        if arrived.original:
            have.append("original")
        parts.append("here: " + (", ".join(have) if have else "nothing yet"))
    return " · ".join(parts)

"""``medcomm fetch`` and ``medcomm view``: an image's first view, regions, and original.

Everything of an image is reachable from its one message (see :mod:`medcomm.core.imagemsg`):
:func:`locate_image` finds the message by its id (syncing once when this device does not
know it yet); :func:`fetch_first` gets the first view; :func:`fetch_region` reads the tile
manifest and downloads the tiles under a region at the pyramid level that matches the
pixels it will be shown on (native resolution when nothing is said), the tile under the
centre of the region first and ``fetch_parallel`` in flight, then composes them; tiles the
sender has not uploaded yet come back in ``missing`` (drawn mid-grey, never guessed);
:func:`fetch_original` gets the byte-exact file, each part verified on arrival and the
whole against its SHA-256. All of it goes through the resumable, verified downloads of
:mod:`medcomm.session.transfer` into the blob cache, so a second look costs no link at all.

The original stays on the sender's device until someone asks for it (unless the sender
chose ``share --original``): :func:`get_original` asks, with a kind-``request`` message
through the durable outbox (once per user and image: its id is derived, see
:mod:`medcomm.core.imagereq`), and either returns at once (``later``: the sender's device
uploads it at its next sync) or waits, bounded, asking the relay now and then (one small
``blob.get`` each) until it is there.

Every blob of an image with a key (``k`` in its body) is sealed: each is opened under that
key right after it is read from the cache (``transfer.fetch_blob``), before anything decodes
it; one that does not open raises Tampered and leaves the cache, so it is never shown. The
original is checked once more, whole, against the plaintext SHA-256 its message names.

A tile from another device is decoded with Pillow's bomb guard on and must be exactly the
size its id says, or the region is refused (a wrong size would shift every pixel after it).
Nothing here logs pixels.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medcomm.adapters.blobcache import BlobCache
from medcomm.core import filecrypt, imagemsg, imagereq, wire
from medcomm.core.delivery import OutItem
from medcomm.core.imagemsg import BlobRef, ImageInfo, Manifest
from medcomm.core.tiles import TILES, Region, TileId
from medcomm.errors import LinkDown, NotFound, UsageError, WireError
from medcomm.session.images import SHARE, ShareLimits, _StoredWatch, open_cache, pending_image
from medcomm.session.transfer import fetch_blob

if TYPE_CHECKING:
    from PIL import Image

    from medcomm.session.service import Session

log = logging.getLogger("medcomm.imagefetch")


@dataclass(frozen=True)
class OriginalLimits:
    """How a fetch of an original that is not at the relay asks for it and waits."""

    store_wait: float = 20.0  # for the relay to store the request (then it stays queued here)
    poll_first: float = 2.0  # first pause between asks of the relay while waiting (--wait)
    poll_max: float = 15.0  # longest pause: each ask is one blob.get (~70 bytes up)
    max_wait: float = 6 * 3600.0  # the longest --wait: the sender's device may sync only hours later


ORIGINALS = OriginalLimits()


@dataclass(frozen=True)
class Located:
    """An image message found on this device."""

    cid: bytes
    consult: str
    info: ImageInfo
    sender: str = ""  # who shared it ("" when not known)


@dataclass(frozen=True)
class Requested:
    """The request for an original that a fetch found or made."""

    new: bool  # this fetch queued it (False: it was there already, from this user or another)
    by: str  # who asked first
    seq: int | None  # the request's seq at the relay; None while it waits in this device's outbox


def check_image_id(image_id: str) -> bytes:
    """The message id of an image (32 hex: the ``"image"`` of ``medcomm history --json``)."""
    key = image_id.strip().lower()
    try:
        cid = bytes.fromhex(key)
    except ValueError:
        cid = b""
    if len(cid) != wire.CID_LEN:
        raise UsageError(f'{image_id!r} is not an image id (the 32-hex "image" of medcomm history --json)')
    return cid


def locate_image(session: Session, image_id: str) -> Located:
    """Find an image message by id in history, the outbox, or this device's pending sends."""
    cid = check_image_id(image_id)
    db: Any = session.store.db
    row = db.execute("SELECT consult, kind, body, sender FROM messages WHERE cid=?", (cid,)).fetchone()
    if row is None:
        out = db.execute("SELECT consult, kind, body FROM outbox WHERE cid=?", (cid,)).fetchone()
        row = None if out is None else (*out, session.me)
    if row is None:
        with open_cache(session) as cache:
            pend = pending_image(cache, cid)
        if pend is None:
            raise NotFound(f"no image {cid.hex()} on this device (try medcomm sync)")
        info = imagemsg.parse_body(pend.body) if pend.body else pend.plan
        return Located(cid, pend.consult, info, session.me)
    if row[1] != wire.KINDS["image"]:
        raise UsageError(f"message {cid.hex()} is not an image")
    return Located(cid, row[0], imagemsg.parse_body(row[2]), row[3])


async def find_image(session: Session, image_id: str, timeout: float) -> Located:
    """:func:`locate_image`, syncing once first when this device does not know the id yet."""
    try:
        return locate_image(session, image_id)
    except NotFound:
        await session.sync(timeout)
        return locate_image(session, image_id)


async def _blob(
    session: Session, ref: BlobRef, key: bytes | None, timeout: float, progress: Any = None
) -> bytes:
    """A blob's plaintext: from the cache or the relay, opened under the image's key."""
    with BlobCache(session.store.path.parent) as cache:
        return await fetch_blob(
            session.link,
            cache,
            ref.sha,
            lambda data: filecrypt.unseal(key, data),
            size=ref.size,
            timeout=timeout,
            progress=progress,
        )


async def fetch_first(session: Session, loc: Located, timeout: float, progress: Any = None) -> bytes:
    """The first view's bytes (cached after the first fetch). NotFound with ``data["later"]``
    when the relay has the message but not yet the whole first view: the sender sends the
    message right behind the first view's last chunk, and when a cut takes that chunk the
    message can arrive seconds before the resumed first view does."""
    f = loc.info.first
    try:
        return await _blob(session, BlobRef(f.sha, f.size), loc.info.key, timeout, progress)
    except NotFound:
        raise NotFound(
            f"the first view of image {loc.cid.hex()[:12]} has not reached the relay yet; fetch again later",
            later=True,
        ) from None


async def fetch_original(session: Session, loc: Located, timeout: float, progress: Any = None) -> bytes:
    """The byte-exact original: each part verified on arrival (and opened, when sealed),
    then the whole against the plaintext SHA-256 of the message. NotFound with
    ``data["later"]`` while it is not at the relay (not uploaded yet, or kept on the
    sender's device until asked for: :func:`get_original` asks)."""
    o = loc.info.original
    parts = []
    try:
        for ref in o.blobs():
            parts.append(await _blob(session, ref, loc.info.key, timeout, progress))
    except NotFound:
        why = "it has not reached the relay yet" if o.sent else "the sender's device sends it on request"
        raise NotFound(
            f"the original of image {loc.cid.hex()[:12]} is not at the relay: {why}", later=True
        ) from None
    data = b"".join(parts)
    if hashlib.sha256(data).digest() != o.sha or len(data) != o.size:
        raise WireError("the original's parts do not add up to its SHA-256")
    return data


def original_here(session: Session, loc: Located) -> bool:
    """Is every part of the original in this device's cache (no link needed)?"""
    with BlobCache(session.store.path.parent) as cache:
        return all(cache.has(r.sha) for r in loc.info.original.blobs())


def original_requests(session: Session, loc: Located) -> imagereq.Asked | None:
    """The requests for this image's original in its consult, folded: stored ones, then
    those still in this device's outbox (seq None)."""
    db: Any = session.store.db
    kind = wire.KINDS["request"]
    rows = db.execute(
        "SELECT sender, seq, body FROM messages WHERE consult=? AND kind=? ORDER BY seq", (loc.consult, kind)
    ).fetchall()
    queued = db.execute(
        "SELECT body FROM outbox WHERE consult=? AND kind=? AND error IS NULL ORDER BY created",
        (loc.consult, kind),
    ).fetchall()
    folded = imagereq.fold([*rows, *((session.me, None, b) for (b,) in queued)])
    asked = folded.get(loc.cid)
    return asked if asked is not None and asked.sha == loc.info.original.sha else None


async def request_original(session: Session, loc: Located, limits: OriginalLimits = ORIGINALS) -> Requested:
    """Ask the sender's device for the original, unless someone in the consult already has
    (and it was not answered "gone"): a kind-``request`` message, durable in the outbox
    first, under an id derived from this user and the image (a second ask, from here or
    from another of this user's devices, is the same message). Waits ``store_wait`` at
    most for the relay to store it; with no link it stays queued (``seq`` None) and goes
    with the next sync."""
    asked = original_requests(session, loc)
    if asked is not None and asked.by:
        return Requested(False, asked.by[0], asked.seq)
    req = imagereq.Request(loc.cid, loc.info.original.sha)
    cid = imagereq.request_cid(session.me, loc.cid)
    item = OutItem(cid, loc.consult, wire.KINDS["request"], imagereq.encode(req))
    watch = _StoredWatch(session, cid)  # listening before it can be acknowledged
    try:
        session.store.enqueue(item)
        await session.link.submit(item)
        log.info("original requested image=%s request=%s", loc.cid.hex(), cid.hex())
        try:
            seq: int | None = await watch.wait(limits.store_wait)
        except LinkDown:
            seq = None
    finally:
        watch.close()
    return Requested(True, session.me, seq)


async def get_original(
    session: Session,
    loc: Located,
    timeout: float,
    *,
    wait: float = 0.0,
    progress: Any = None,
    on_request: Callable[[Requested], None] | None = None,
    limits: OriginalLimits = ORIGINALS,
) -> bytes:
    """The original, asking the sender's device for it when it is not at the relay.

    Kept here already: no link. Sent by choice (``share --original``) or asked for before:
    one try at the relay. Not at the relay and not sent: a request (:func:`request_original`,
    reported to ``on_request``), then NotFound with ``data["later"]`` (``medcomm fetch``
    exits 75), or with ``wait`` > 0 a bounded wait, asking the relay after 2, 4, 8, 15, 15...
    seconds. NotFound without ``later`` when the sender's device answered that it no longer
    holds it."""
    if not 0 <= wait <= limits.max_wait:
        raise UsageError(f"--wait must be 0..{limits.max_wait:.0f} seconds")
    o, short = loc.info.original, loc.cid.hex()[:12]
    if original_here(session, loc):
        return await fetch_original(session, loc, timeout, progress)
    asked = original_requests(session, loc)
    _check_not_gone(loc, asked)
    if o.sent or (asked is not None and asked.by):  # it may be there: one ask (a blob.get)
        try:
            return await fetch_original(session, loc, timeout, progress)
        except NotFound as exc:
            if not exc.data.get("later"):
                raise
    if not o.sent:
        req = await request_original(session, loc, limits)
        if on_request is not None:
            on_request(req)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pause = limits.poll_first
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(pause, left))
        pause = min(limits.poll_max, pause * 2)
        _check_not_gone(loc, original_requests(session, loc))
        try:
            return await fetch_original(session, loc, max(timeout, deadline - loop.time()), progress)
        except NotFound as exc:
            if not exc.data.get("later"):
                raise
        except LinkDown:
            continue  # the link may come back before the wait is over
    if o.sent:
        raise NotFound(
            f"the original of image {short} has not reached the relay yet; fetch again later", later=True
        )
    waited = f"not there after {wait:.0f} s; " if wait else ""
    raise NotFound(
        f"the original of image {short} was requested from the sender's device; "
        f"{waited}run the same fetch later",
        later=True,
        requested=True,
    )


def _check_not_gone(loc: Located, asked: imagereq.Asked | None) -> None:
    if asked is not None and asked.gone:
        raise NotFound(
            f"{asked.gone}'s device no longer keeps the original of image {loc.cid.hex()[:12]}: "
            "its first view and tiles are what there is",
            later=False,
        )


async def fetch_manifest(session: Session, loc: Located, timeout: float) -> Manifest | None:
    """The tile manifest (opened and checked), or None while it has not reached the relay."""
    d = loc.info.detail
    if d is None:
        return None
    try:
        with BlobCache(session.store.path.parent) as cache:
            return await fetch_blob(
                session.link,
                cache,
                d.manifest.sha,
                lambda data: imagemsg.parse_manifest(data, d),
                size=d.manifest.size,
                timeout=timeout,
            )
    except NotFound:
        return None


@dataclass(frozen=True)
class RegionResult:
    """A region composed from tiles; ``missing`` tiles are filled with :data:`FILL` grey."""

    image: Image.Image
    region: Region  # clipped to the image, in pixels of the (corrected) original
    level: int  # pyramid level: the image is at 1/2**level of the original's resolution
    tiles: list[TileId]  # every tile the region needed, centre first
    missing: list[TileId]  # those not at the relay (yet)
    fetched_bytes: int  # the blobs of the tiles that came, as they cross the link (sealed)


FILL = 128  # mid-grey for missing tiles: visibly not content on paper and on film


async def fetch_region(
    session: Session,
    loc: Located,
    region: Region,
    view_px: tuple[int, int] | None,
    timeout: float,
    progress: Callable[[int, int], None] | None = None,
    limits: ShareLimits = SHARE,
) -> RegionResult:
    """The region at the level matching ``view_px`` (None: native resolution), tiles
    downloaded centre first with ``fetch_parallel`` in flight. Tiles the relay does not have
    yet are reported in ``missing``; with no manifest at the relay yet, all are missing."""
    from PIL import Image

    d = loc.info.detail
    if d is None:
        raise NotFound(f"image {loc.cid.hex()[:12]} has no detail yet (its tiles are still being made)")
    pyr = d.pyramid
    r = pyr.clip(region)
    view = view_px or (min(r.w, TILES.max_view_side), min(r.h, TILES.max_view_side))
    ids = pyr.tiles_for_region(r, view)
    level = ids[0].level
    s = 1 << level
    lx0, ly0 = r.x // s, r.y // s
    lx1, ly1 = -(-(r.x + r.w) // s), -(-(r.y + r.h) // s)
    mode = "RGB" if loc.info.kind == "photo" else "L"
    canvas = Image.new(mode, (lx1 - lx0, ly1 - ly0), (FILL,) * 3 if mode == "RGB" else FILL)
    manifest = await fetch_manifest(session, loc, timeout)
    if manifest is None:
        return RegionResult(canvas, r, level, ids, list(ids), 0)
    table = manifest.lookup()
    sem = asyncio.Semaphore(limits.fetch_parallel)
    got: dict[TileId, bytes] = {}
    done = {"n": 0}

    async def one(tid: TileId) -> None:
        entry = table.get(tid)
        if entry is None:
            return
        async with sem:
            try:
                got[tid] = await _blob(session, BlobRef(entry.sha, entry.size), loc.info.key, timeout)
            except NotFound:
                return
        done["n"] += 1
        if progress is not None:
            progress(done["n"], len(ids))

    tasks = [asyncio.ensure_future(one(t)) for t in ids]  # started in order: centre first
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    for tid, data in got.items():
        tile_im = _decode_tile(data, pyr.box(tid), mode)
        canvas.paste(tile_im, (tid.col * TILES.tile - lx0, tid.row * TILES.tile - ly0))
    missing = [t for t in ids if t not in got]
    return RegionResult(canvas, r, level, ids, missing, sum(table[t].size for t in got))


def _decode_tile(data: bytes, box: Any, mode: str) -> Image.Image:
    """A tile from another device: decoded with Pillow's bomb guard on, checked to be the
    size its id says (a wrong one would shift every pixel of the region)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            out = im.convert(mode)
    except Exception:
        raise WireError("a tile does not decode as an image") from None
    if out.size != (box.out_w, box.out_h):
        raise WireError(f"a tile of {out.size[0]}x{out.size[1]} where {box.out_w}x{box.out_h} was due")
    return out


def decode_image(data: bytes) -> Image.Image:
    """A first view (or any picture blob) as an image, bomb guard on."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception:
        raise WireError("the picture does not decode") from None
    return im


EXTENSIONS = {
    "image/avif": "avif",
    "image/webp": "webp",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/tiff": "tif",
    "image/heif": "heic",
    "application/dicom": "dcm",
}

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

A tile from another device is decoded with Pillow's bomb guard on and must be exactly the
size its id says, or the region is refused (a wrong size would shift every pixel after it).
Nothing here logs pixels.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medcomm.adapters.blobcache import BlobCache
from medcomm.core import imagemsg, wire
from medcomm.core.imagemsg import BlobRef, ImageInfo, Manifest
from medcomm.core.tiles import TILES, Region, TileId
from medcomm.errors import NotFound, UsageError, WireError
from medcomm.session.images import SHARE, ShareLimits, open_cache, pending_image
from medcomm.session.transfer import download

if TYPE_CHECKING:
    from PIL import Image

    from medcomm.session.service import Session


@dataclass(frozen=True)
class Located:
    """An image message found on this device."""

    cid: bytes
    consult: str
    info: ImageInfo


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
    row = db.execute("SELECT consult, kind, body FROM messages WHERE cid=?", (cid,)).fetchone()
    row = row or db.execute("SELECT consult, kind, body FROM outbox WHERE cid=?", (cid,)).fetchone()
    if row is None:
        with open_cache(session) as cache:
            pend = pending_image(cache, cid)
        if pend is None:
            raise NotFound(f"no image {cid.hex()} on this device (try medcomm sync)")
        return Located(cid, pend.consult, imagemsg.parse_body(pend.body) if pend.body else pend.plan)
    if row[1] != wire.KINDS["image"]:
        raise UsageError(f"message {cid.hex()} is not an image")
    return Located(cid, row[0], imagemsg.parse_body(row[2]))


async def find_image(session: Session, image_id: str, timeout: float) -> Located:
    """:func:`locate_image`, syncing once first when this device does not know the id yet."""
    try:
        return locate_image(session, image_id)
    except NotFound:
        await session.sync(timeout)
        return locate_image(session, image_id)


async def _blob(session: Session, ref: BlobRef, timeout: float, progress: Any = None) -> bytes:
    with BlobCache(session.store.path.parent) as cache:
        if not cache.has(ref.sha):
            await download(session.link, ref.sha, cache, size=ref.size, timeout=timeout, progress=progress)
        return cache.read(ref.sha)


async def fetch_first(session: Session, loc: Located, timeout: float, progress: Any = None) -> bytes:
    """The first view's bytes (cached after the first fetch). NotFound with ``data["later"]``
    when the relay has the message but not yet the whole first view: the sender sends the
    message right behind the first view's last chunk, and when a cut takes that chunk the
    message can arrive seconds before the resumed first view does."""
    f = loc.info.first
    try:
        return await _blob(session, BlobRef(f.sha, f.size), timeout, progress)
    except NotFound:
        raise NotFound(
            f"the first view of image {loc.cid.hex()[:12]} has not reached the relay yet; fetch again later",
            later=True,
        ) from None


async def fetch_original(session: Session, loc: Located, timeout: float, progress: Any = None) -> bytes:
    """The byte-exact original: each part verified on arrival, then the whole by SHA-256.
    NotFound when the sender kept it, or (``data["later"]``) has not uploaded it yet."""
    o = loc.info.original
    parts = []
    try:
        for ref in o.blobs():
            parts.append(await _blob(session, ref, timeout, progress))
    except NotFound:
        why = "the sender kept it on their device" if not o.sent else "it has not reached the relay yet"
        raise NotFound(
            f"the original of image {loc.cid.hex()[:12]} is not available: {why}", later=o.sent
        ) from None
    data = b"".join(parts)
    if hashlib.sha256(data).digest() != o.sha or len(data) != o.size:
        raise WireError("the original's parts do not add up to its SHA-256")
    return data


async def fetch_manifest(session: Session, loc: Located, timeout: float) -> Manifest | None:
    """The tile manifest, or None while it has not reached the relay."""
    d = loc.info.detail
    if d is None:
        return None
    try:
        data = await _blob(session, d.manifest, timeout)
    except NotFound:
        return None
    return imagemsg.parse_manifest(data, d)


@dataclass(frozen=True)
class RegionResult:
    """A region composed from tiles; ``missing`` tiles are filled with :data:`FILL` grey."""

    image: Image.Image
    region: Region  # clipped to the image, in pixels of the (corrected) original
    level: int  # pyramid level: the image is at 1/2**level of the original's resolution
    tiles: list[TileId]  # every tile the region needed, centre first
    missing: list[TileId]  # those not at the relay (yet)
    fetched_bytes: int


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
                got[tid] = await _blob(session, BlobRef(entry.sha, entry.size), timeout)
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
    return RegionResult(canvas, r, level, ids, missing, sum(len(b) for b in got.values()))


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

"""Images for the desk: share a file with progress, say what of each image is where, and
open one for the viewer (first view, tiles by region, a DICOM slice under another window).

The desk works on the same pipeline as ``medcomm share`` / ``fetch`` / ``view``
(:mod:`medcomm.session.images`, :mod:`medcomm.session.imagefetch`); this module only adds
what a live screen needs and a one-shot command does not:

* :func:`share_path`: ``images.share`` with a ``"saved"`` step once the image is durable on
  this device (the desk shows it as queued from then on) and a short deadline when the
  link is down (the image is kept and :func:`send_pending` finishes it when the link comes
  back, like ``medcomm sync`` does), so a share offline does not sit for two minutes;
* :func:`summaries`: per image, what is on this device (a receiver: first view, tiles n of
  m, original) or at the relay (a sender: the ``image_sends`` row's progress), read from
  the message, the blob cache and the pending table, one cache connection per call;
* :class:`OpenedImage`: the viewer's handle. ``tiles`` fetches the ids it is given in that
  order (the viewer gives the visible ones, centre first) with ``fetch_parallel`` in
  flight, and calls back once per tile with the decoded picture, or ``None`` when the
  sender has not uploaded it yet;
* DICOM windows. The first view and every tile of a slice were cut from the picture the
  *sender* windowed to 8 bits: the values outside that window are clipped to black or
  white there and cannot be brought back from them. Another window needs the modality
  values, which only the original file holds: :meth:`OpenedImage.window` gets the original
  as ``medcomm fetch --original`` does (from the relay, or asked of the sender's device,
  which keeps it until a member asks and sends it at its next sync) and windows it here,
  once it is on this device (the cache keeps it).

Every blob of an image with a key is opened under it as it is read (see
:mod:`medcomm.session.imagefetch`): what does not open is an error, never a picture.

Logs carry ids and sizes, never pixels or file contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medcomm.adapters.blobcache import BlobCache
from medcomm.adapters.localstore import Line, image_arrived
from medcomm.adapters.profile import data_dir
from medcomm.core import filecrypt, imagemsg, wire
from medcomm.core.imagemsg import BlobRef, ImageInfo, Manifest
from medcomm.core.tiles import TileId
from medcomm.errors import MedcommError, NotFound, UsageError, WireError
from medcomm.session import images
from medcomm.session.imagefetch import Located, find_image, get_original, original_here

if TYPE_CHECKING:
    from PIL import Image

    from medcomm.session.service import Session

log = logging.getLogger("medcomm.deskimages")

Step = Callable[[str, int, int], None]
T = TypeVar("T")
Arrived = Callable[[TileId, "Image.Image | None"], None]


@dataclass(frozen=True)
class DeskImageLimits:
    """How long the desk waits for what, and what it keeps in memory."""

    share_timeout: float = 120.0  # the first view's upload while the link is up (as `medcomm share`)
    offline_timeout: float = 2.0  # ... while it is down: the image is kept and goes when the link is up
    fetch_timeout: float = 300.0  # one first view, tile or original: a 20 KB view is ~7 s on EDGE
    max_window_pixels: int = 16_000_000  # a DICOM frame kept decoded for re-windowing (float32: 64 MB)


DESK_IMAGES = DeskImageLimits()
WINDOWS = ("lung", "mediastinum", "bone", "brain", "file")  # "file": the window the DICOM file names


@dataclass(frozen=True)
class ImageSummary:
    """What the desk's one-line preview says about an image."""

    id: str
    kind: str
    caption: str
    first_bytes: int
    width: int  # of the detail (the corrected original), or of the original before tiles exist
    height: int
    tiles: int  # in the pyramid; 0 while the sender's device has not cut them
    original_bytes: int
    original_sent: bool  # False: the sender keeps it on their device
    mine: bool
    first_here: bool = False
    tiles_here: int = 0
    original_here: bool = False
    sending: str | None = None  # ours, still going up: "saved" (not at the relay yet) | "tiles" | "original"
    tiles_up: int = 0  # ours: tiles the relay has
    failed: str | None = None  # ours: refused for good (kept on this device)
    window: str = ""  # a DICOM slice: the window it was sent with ("mediastinum C50 W350")


# --- sharing ---------------------------------------------------------------------------------------


def check_path(text: str) -> Path:
    """The file a user typed (``~`` expanded): UsageError when it is not a readable file."""
    raw = text.strip()
    if not raw:
        raise UsageError("give the path of the image file")
    path = Path(os.path.expanduser(raw))
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise UsageError(f"no file {path}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path} cannot be read (permissions)")
    return path


async def share_path(
    session: Session,
    consult: str,
    path: str | Path,
    *,
    as_kind: str = "auto",
    caption: str = "",
    step: Step | None = None,
    limits: DeskImageLimits = DESK_IMAGES,
) -> images.Shared:
    """Share a file as ``medcomm share`` does; returns once the relay stored the message.

    ``step`` hears ``images.share``'s steps and ``("saved", 1, 1)`` once the image is
    durable on this device. LinkDown: the image is kept (``pending_lines`` shows it) and
    :func:`send_pending` sends it when the link is up."""
    file = check_path(str(path))
    online = session.status.state == "online"
    timeout = limits.share_timeout if online else limits.offline_timeout

    def recorded(pend: images.PendingImage) -> None:
        if step is not None:
            step("saved", 1, 1)

    return await images.share(
        session, consult, file, as_kind=as_kind, caption=caption, timeout=timeout, step=step,
        on_recorded=recorded,
    )  # fmt: skip


async def send_pending(session: Session, timeout: float, step: Step | None = None) -> images.ImagesResult:
    """Finish every image this device has not finished sending (``medcomm sync``'s work)."""
    return await images.send_pending_images(session, timeout, step)


def continue_in_background(session: Session) -> int | None:
    """Leave what is still to upload to a detached ``medcomm sync``, as ``medcomm share``
    does; returns its pid, or None when nothing waits."""
    with _cache(session) as cache:
        waiting = [] if cache is None else images.pending_images(cache)
    if not waiting:
        return None
    directory = session.store.path.parent
    if data_dir().resolve() != directory.resolve():
        # `start_background` runs `medcomm sync` for the environment's profile; a session on
        # another home (the demo's) would have another device's images sent, not these.
        log.info("images: %d left for the next desk or sync of their own profile", len(waiting))
        return None
    pid = images.start_background(directory)
    log.info("images: %d left to a background sync pid=%d", len(waiting), pid)
    return pid


@contextlib.contextmanager
def _cache(session: Session) -> Iterator[BlobCache | None]:
    """The blob cache with its pending tables, or None while this device has never kept
    anything there (the desk asks on every refresh: no file is made for that)."""
    directory = session.store.path.parent
    if not (directory / "pending.sqlite3").exists():
        yield None
        return
    with images.open_cache(session) as cache:
        yield cache


def pending_lines(session: Session, consult: str) -> list[Line]:
    """Images shared here that are not in the outbox yet (being prepared, waiting for the
    link, or refused for good), as history lines: "queued", or "failed"."""
    with _cache(session) as cache:
        rows = [] if cache is None else images.pending_images(cache, include_failed=True)
    return [
        Line(r.consult, None, r.cid.hex(), session.me, int(r.created * 1000), "image",
             imagemsg.describe(r.plan), "failed" if r.error else "queued")
        for r in rows
        if r.consult == consult and r.stage != images.QUEUED
    ]  # fmt: skip


def pending_count(session: Session) -> int:
    """Images waiting for the link before their message can be queued (not the failed)."""
    with _cache(session) as cache:
        rows = [] if cache is None else images.pending_images(cache)
    return sum(1 for r in rows if r.stage != images.QUEUED)


# --- what is where ----------------------------------------------------------------------------------


def summaries(session: Session, ids: Sequence[str]) -> dict[str, ImageSummary]:
    """A summary per image id that is found on this device (others are left out)."""
    out: dict[str, ImageSummary] = {}
    if not ids:
        return out
    db: Any = session.store.db
    blobs = session.store.path.parent / "blobs"
    with _cache(session) as cache:
        for image_id in ids:
            try:
                cid = bytes.fromhex(image_id)
            except ValueError:
                continue
            row = images.pending_image(cache, cid) if cache is not None else None
            try:
                found = _message(db, cid, session.me)
                if found is None and row is not None:
                    found = (_row_info(row), True)
            except MedcommError:
                continue  # an unreadable body: the line says so already
            if found is not None:
                out[image_id] = _summary(image_id, found[0], found[1], blobs, row)
    return out


def _message(db: Any, cid: bytes, me: str) -> tuple[ImageInfo, bool] | None:
    row = db.execute("SELECT kind, body, sender FROM messages WHERE cid=?", (cid,)).fetchone()
    if row is None:
        out = db.execute("SELECT kind, body FROM outbox WHERE cid=?", (cid,)).fetchone()
        row = None if out is None else (out[0], out[1], me)
    if row is None or row[0] != wire.KINDS["image"]:
        return None
    return imagemsg.parse_body(row[1]), row[2] == me


def _row_info(row: images.PendingImage) -> ImageInfo:
    return imagemsg.parse_body(row.body) if row.body else row.plan


def _summary(
    image_id: str, info: ImageInfo, mine: bool, blobs: Path, row: images.PendingImage | None
) -> ImageSummary:
    d, o = info.detail, info.original
    have = image_arrived(blobs, info)
    sending, tiles_up, failed = None, 0, None
    if row is not None:
        failed = row.error
        if row.stage != images.QUEUED:
            sending = "saved"
        else:
            parts = len(o.blobs()) if o.sent else 0
            tiles_end = len(row.uploads) - parts
            sending = "tiles" if row.done < tiles_end else "original"
            tiles_up = max(0, min(row.done, tiles_end) - 1)  # uploads[0] is the manifest
    width, height, tiles = (d.width, d.height, d.tiles) if d is not None else (o.width, o.height, 0)
    return ImageSummary(
        image_id, info.kind, info.caption, info.first.size, width, height, tiles, o.size, o.sent, mine,
        have.first, have.tiles or 0, have.original, sending, tiles_up, failed, sent_window(info),
    )  # fmt: skip


def sent_window(info: ImageInfo) -> str:
    """The window a DICOM slice was sent with, from its caption ("lung C-600 W1500")."""
    if info.kind != "slice":
        return ""
    part = next((p for p in info.info.split(" · ") if p.startswith("window ")), "")
    return part.removeprefix("window ").removesuffix(" HU")


# --- the viewer's handle ------------------------------------------------------------------------------


async def open_image(session: Session, image_id: str, limits: DeskImageLimits = DESK_IMAGES) -> OpenedImage:
    """An image by its id (syncing once if this device does not know it yet)."""
    loc = await find_image(session, image_id, limits.fetch_timeout)
    return OpenedImage(session, loc, limits)


class OpenedImage:
    """One image the viewer shows: its message, and fetches that land in the blob cache
    (a second look costs no link at all)."""

    def __init__(self, session: Session, loc: Located, limits: DeskImageLimits = DESK_IMAGES) -> None:
        self._session = session
        self._loc = loc
        self._limits = limits
        self._manifest: Manifest | None = None
        self._frame: Any = None  # the decoded DICOM frame, kept for the next window

    @property
    def info(self) -> ImageInfo:
        return self._loc.info

    @property
    def id(self) -> str:
        return self._loc.cid.hex()

    def original_here(self) -> bool:
        return original_here(self._session, self._loc)

    async def first_view(self, progress: Callable[[int, int], None] | None = None) -> Image.Image:
        """The first view, decoded (fetched first when it is not on this device)."""
        f = self.info.first
        data = await self._blob(BlobRef(f.sha, f.size), progress)
        return await asyncio.to_thread(_decode, data, None)

    async def tiles(self, ids: Sequence[TileId], arrived: Arrived, parallel: int | None = None) -> None:
        """Fetch ``ids`` in the order given, ``fetch_parallel`` in flight, and call
        ``arrived(tile, picture)`` for each as it comes: ``None`` when the relay does not
        have it yet (nor the manifest). Cancelling stops what is in flight; a partial
        download resumes next time."""
        d = self.info.detail
        table = {}
        if d is not None:
            manifest = await self._get_manifest()
            table = manifest.lookup() if manifest is not None else {}
        mode = "RGB" if self.info.kind == "photo" else "L"
        sem = asyncio.Semaphore(parallel or images.SHARE.fetch_parallel)

        async def one(tid: TileId) -> None:
            entry = table.get(tid)
            if entry is None or d is None:
                arrived(tid, None)
                return
            async with sem:  # the decode too: with one in flight, tiles arrive in the order asked
                try:
                    data = await self._blob(BlobRef(entry.sha, entry.size))
                except NotFound:
                    arrived(tid, None)
                    return
                box = d.pyramid.box(tid)
                arrived(tid, await asyncio.to_thread(_decode, data, mode, (box.out_w, box.out_h)))

        tasks = [asyncio.ensure_future(one(t)) for t in ids]  # started in order: the first goes first
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def window(
        self, name: str, progress: Callable[[int, int], None] | None = None
    ) -> tuple[Image.Image, str]:
        """A DICOM slice under another window (a preset of ``WINDOWS``), from its original:
        the picture at the pyramid's size and the window's label. The original comes from
        this device, else the relay, else it is asked of the sender's device (a request
        message, once) and NotFound says so: ``data["later"]`` (and ``requested``) when it
        may come, not when the sender's device answered that it no longer keeps it."""
        if self.info.kind != "slice":
            raise UsageError("windows apply to DICOM slices only")
        if name not in WINDOWS:
            raise UsageError(f"window must be one of {', '.join(WINDOWS)}")
        if self._frame is None:
            data = await get_original(self._session, self._loc, self._limits.fetch_timeout, progress=progress)
            frame = await asyncio.to_thread(_read_dicom, data)
            if frame.values.size <= self._limits.max_window_pixels:
                self._frame = frame
        else:
            frame = self._frame
        picture, label = await asyncio.to_thread(_render_window, frame, name)
        d = self.info.detail
        if d is not None and picture.size != (d.width, d.height):
            raise WireError("the original DICOM does not match the slice that was sent")
        return picture, label

    async def _get_manifest(self) -> Manifest | None:
        d = self.info.detail
        if self._manifest is None and d is not None:
            try:
                self._manifest = await self._fetch(d.manifest, lambda data: imagemsg.parse_manifest(data, d))
            except NotFound:
                return None  # not at the relay yet: asked again next time
        return self._manifest

    async def _blob(self, ref: BlobRef, progress: Callable[[int, int], None] | None = None) -> bytes:
        """A blob's plaintext, opened under the image's key (Tampered, and gone from the
        cache, when it does not open: never decoded, never shown)."""
        key = self.info.key
        return await self._fetch(ref, lambda data: filecrypt.unseal(key, data), progress)

    async def _fetch(
        self, ref: BlobRef, check: Callable[[bytes], T], progress: Callable[[int, int], None] | None = None
    ) -> T:
        from medcomm.session.transfer import fetch_blob

        with BlobCache(self._session.store.path.parent) as cache:
            return await fetch_blob(
                self._session.link,
                cache,
                ref.sha,
                check,  # on what the cache checked against its SHA-256 on the way
                size=ref.size,
                timeout=self._limits.fetch_timeout,
                progress=progress,
            )


def _decode(data: bytes, mode: str | None, size: tuple[int, int] | None = None) -> Image.Image:
    """A picture from another device, Pillow's bomb guard on; a tile must be exactly the
    size its id says (a wrong one would shift every pixel after it)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            out = im.convert(mode) if mode is not None else im.copy()
    except Exception:
        raise WireError("a picture does not decode") from None
    if size is not None and out.size != size:
        raise WireError(f"a tile of {out.size[0]}x{out.size[1]} where {size[0]}x{size[1]} was due")
    return out


def _read_dicom(data: bytes) -> Any:
    from medcomm.adapters import dicom

    return dicom.read(data)  # the middle frame, as `medcomm share` took it


def _render_window(frame: Any, name: str) -> tuple[Image.Image, str]:
    from medcomm.adapters import dicom

    rendered = dicom.render(frame, "own" if name == "file" else name)
    if rendered.window is None:
        return rendered.image, "colour: no window"
    label = rendered.window.label()
    return rendered.image, ("file's " + label if label.startswith(("own ", "auto ")) else label)

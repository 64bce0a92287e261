"""``medcomm share``: still images over the one link, first view first, nothing lost.

Sending, in this order (each step durable before the next can be seen by anyone):

1. **prepare** (CPU, in a thread): decode, correct (docscan for report/film/ecg), first view
   (imaging); for docscan kinds the tiles are cut from docscan's full-tone ``gray`` picture,
   while the first view is made from its ``image`` (two-level when that reads better);
2. **record**: the original (in sealed parts of at most 16 MiB) and the first view,
   sealed under the image's new key (see "Sealed blobs" below), and a row in
   ``image_sends`` (``pending.sqlite3``, ``synchronous=FULL``) with its message id, and pins
   that keep those blobs out of the cache's trimming. From here a dead link, a killed
   process or a flat battery cannot lose the image; ``share`` prints the id now;
3. **first view up** while a thread encodes every tile of the pyramid into the cache, coarse
   to fine, and the manifest (tile id -> blob) with them: on EDGE the 20 KB upload takes
   ~7 s, longer than encoding a 12 MP page, so the tiles cost the sender no waiting. A
   share's first view was just made, so its upload skips the head round trip;
4. **message**: the row turns ``ready`` (its body names first view, manifest, original),
   then the message goes into the outbox under the row's id (the same id on every retry,
   so a crash between the two cannot duplicate it) and onto the link right behind the first
   view's last chunk, not a round trip after it (the relay reads one connection in order,
   so it stores the chunk first); the row turns ``queued`` once the relay holds the whole
   first view. ``share`` waits for the relay's acknowledgement and exits 0 (75 if the link
   is down: the row stays and ``medcomm sync`` finishes it). The one price: when that last
   chunk fails (a cut just then), the outbox may deliver the message on the next
   connection a few seconds before the resumed first view completes; a receiver asking
   then is told the first view is still on its way (``fetch`` exits 75), never wrong bytes;
5. **detail**: the manifest first (so a receiver can ask for any region at once and be told
   precisely which tiles are still on their way), then the tiles coarse to fine, the tiles
   of every pending image before any original: whether ``share`` waits for this, leaves it
   to a background ``medcomm sync``, or to the next sync is the user's choice
   (``--detail``). Each finished blob advances the row's ``done`` count durably, so a
   resume never asks the relay about a finished blob again (on a 1.5 s round trip that is
   3 s per tile); and a blob this device has never begun to upload (the row's ``started``
   mark, written before its first put) skips the head too: its first put declares its size
   and starts the upload at the relay. One round trip per tile instead of two; a resumed
   blob asks first. Tiles that are the same blob (blank paper) go up once. The row and its
   pins go when all are up.

**Originals on request.** The byte-exact original stays on this device unless ``share
--original`` sends it anyway (then it goes last, after every pending image's tiles): a
phone photo's original is ~7 minutes of a 24 kbit/s uplink, and it carries its EXIF (GPS)
or its DICOM header. ``record`` keeps it in the cache under a pin of its own and a row of
``image_originals`` (kept | up | dropped | gone). A member who wants it sends a kind-
``request`` message (:mod:`medcomm.core.imagereq`, ``medcomm fetch --original``); every
:func:`send_pending_images` run (``medcomm sync``, a background sync, the desk's image work)
folds the requests in this device's history and, after the tiles of pending images, uploads
each requested original this device holds (a head first: another run may have done it
already), then marks it ``up`` and lets its pin go: the relay holds it now. What bounds the
device's store: ``ShareLimits.keep_originals_bytes`` (2 GiB) of kept originals; past it the
oldest are dropped from the pin (``dropped``: the cache may then let them go), and a request
for one this device no longer holds is answered in the consult ("gone") so the asker is told
instead of waiting.

**Sealed blobs.** ``record`` makes one random key per image and seals every blob of it
(:mod:`medcomm.core.filecrypt`): the first view, each tile, the manifest and each part of
the original, each its own secretstream, before it goes into the cache; the key goes into
the message body (``k``) and nowhere else. The cache, the uploads and the relay hold the
same sealed bytes under the same SHA-256, so resuming, pins and the ``done`` count work as
before, and nothing at the relay can be read without the message. Tiles that are the same
picture (blank paper) are sealed once and go up once. A part of an original is at most
``filecrypt.fits(part_size)`` bytes of the file, so that sealed it is still one relay blob;
the first view's budget is met by the sealed blob (41 bytes more than the picture). A row
recorded before blobs were sealed (no key in its plan) finishes as it began, in plaintext.

A row whose process died during step 3 is taken up by :func:`send_pending_images` from the
cached original (same kind, same window). Two processes never work on the same row: each
holds an advisory lock file per row (``<data dir>/locks/<id>``) while it does.

Receiving is :mod:`medcomm.session.imagefetch`.

Logs carry ids, sizes and counts, never pixels or file contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from medcomm.adapters.blobcache import BlobCache
from medcomm.core import filecrypt, imagemsg, imagereq, wire
from medcomm.core.delivery import Acked, OutItem, Rejected
from medcomm.core.imagemsg import (
    BlobRef,
    Detail,
    FirstView,
    ImageInfo,
    Manifest,
    Original,
    TileEntry,
)
from medcomm.core.tiles import TileId
from medcomm.errors import (
    AccessDenied,
    LimitExceeded,
    LinkDown,
    MedcommError,
    NotFound,
    RemoteError,
    UsageError,
)
from medcomm.session.transfer import check_consult, upload

if TYPE_CHECKING:
    from PIL import Image

    from medcomm.adapters.imaging import Prepared
    from medcomm.session.service import Session

log = logging.getLogger("medcomm.images")

Step = Callable[[str, int, int], None]  # (step, done, total): "prepare", "first view", "tiles", "detail"
DETAIL_MODES = ("background", "wait", "later")


@dataclass(frozen=True)
class ShareLimits:
    """How image sends pace themselves and what the device keeps waiting."""

    max_pending: int = 200  # images waiting on this device before share refuses another
    encode_threads: int = 2  # tile encoders (AVIF releases the GIL: 2 threads = 1.6x on 2 cores)
    upload_parallel: int = 2  # detail blobs in flight: tiles are one chunk, so like transfer's window
    fetch_parallel: int = 2  # tile downloads in flight, same reasoning downhill
    part_size: int = 16 * 1024 * 1024  # one sealed part of an original: the relay's largest blob
    background_seconds: float = 3600.0  # a background sync's time budget (then `medcomm sync` goes on)
    keep_originals_bytes: int = 2 * 1024**3  # originals kept for requests; past it the oldest go


SHARE = ShareLimits()

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_sends (
    cid BLOB PRIMARY KEY, consult TEXT NOT NULL, stage TEXT NOT NULL, plan BLOB NOT NULL,
    window TEXT, body BLOB, uploads BLOB, done INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, error TEXT, started INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS image_originals (
    cid BLOB PRIMARY KEY, consult TEXT NOT NULL, sha BLOB NOT NULL, size INTEGER NOT NULL,
    parts BLOB NOT NULL, created REAL NOT NULL, state TEXT NOT NULL
);
"""
PREPARED, READY, QUEUED = "prepared", "ready", "queued"
KEPT, UP, DROPPED, GONE = "kept", "up", "dropped", "gone"  # image_originals.state
_ALL_BEGUN = 1 << 30  # a ``started`` mark past any row's uploads
_PERMANENT = ("denied", "limit", "bad_request")  # relay codes a retry cannot change


@dataclass(frozen=True)
class PendingImage:
    """An image this device has not finished sending (a row of ``image_sends``)."""

    cid: bytes
    consult: str
    stage: str  # prepared | ready | queued
    plan: ImageInfo  # the message as far as it is known (no detail before "ready")
    window: str | None
    body: bytes | None
    uploads: tuple[BlobRef, ...]  # after the message: manifest, tiles coarse to fine, original parts
    done: int  # uploads[:done] are complete at the relay
    created: float
    error: str | None = None
    started: int = 0  # uploads[:started] may have been begun (their first put may have gone)


@dataclass(frozen=True)
class Shared:
    """What ``share`` did: the image id, its seq, and what the first view cost."""

    cid: bytes
    seq: int
    kind: str
    first_bytes: int
    detail_blobs: int  # blobs left for the background: manifest, tiles, original parts
    detail_bytes: int
    seconds: float  # from the start of share to the relay's acknowledgement


@dataclass(frozen=True)
class ImagesResult:
    """What :func:`send_pending_images` did."""

    finished: list[bytes]  # image ids whose every blob is at the relay
    left: int  # blobs still to upload (time ran out), requested originals' parts included
    busy: int  # images another process was working on (skipped)
    failed: list[tuple[bytes, MedcommError]]
    originals: list[bytes] = field(default_factory=list)  # requested originals now at the relay
    answered: list[bytes] = field(default_factory=list)  # requested, no longer here: said so


@dataclass(frozen=True)
class HeldOriginal:
    """An original this device shared (a row of ``image_originals``)."""

    cid: bytes  # the image message's id
    consult: str
    sha: bytes
    size: int
    parts: tuple[BlobRef, ...]  # the blobs, in order (one when it fits in one)
    created: float
    state: str  # kept | up | dropped | gone


# --- the pending table ------------------------------------------------------------------------


def open_cache(session: Session) -> BlobCache:
    """The session's blob cache, with the ``image_sends`` table in its pending file."""
    cache = BlobCache(session.store.path.parent)
    migrate(cache)
    return cache


def migrate(cache: BlobCache) -> None:
    """The image tables in the cache's pending file, brought up to this version (a device
    that shared images before ``started`` existed keeps its rows: their blobs head first)."""
    cache.db.executescript(SCHEMA)
    cols = {r[1] for r in cache.db.execute("PRAGMA table_info(image_sends)")}
    if "started" not in cols:
        with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
            cache.db.execute("ALTER TABLE image_sends ADD COLUMN started INTEGER NOT NULL DEFAULT 0")
        cache.db.execute("UPDATE image_sends SET started=?", (_ALL_BEGUN,))  # unknown: head first


def _row(r: tuple[Any, ...]) -> PendingImage:
    cid, consult, stage, plan, window, body, uploads, done, created, error, started = r
    refs = tuple(BlobRef(s, n) for s, n in msgpack.unpackb(uploads)) if uploads else ()
    return PendingImage(
        cid, consult, stage, imagemsg.parse_body(plan), window, body, refs, done, created, error, started
    )


_COLS = "cid, consult, stage, plan, window, body, uploads, done, created, error, started"


def pending_images(cache: BlobCache, include_failed: bool = False) -> list[PendingImage]:
    """Images still to finish on this device, oldest first."""
    where = "" if include_failed else "WHERE error IS NULL"
    rows = cache.db.execute(f"SELECT {_COLS} FROM image_sends {where} ORDER BY created").fetchall()
    return [_row(r) for r in rows]


def pending_image(cache: BlobCache, cid: bytes) -> PendingImage | None:
    """One pending image by its id (failed ones too), or None."""
    r = cache.db.execute(f"SELECT {_COLS} FROM image_sends WHERE cid=?", (cid,)).fetchone()
    return None if r is None else _row(r)


def held_originals(cache: BlobCache) -> list[HeldOriginal]:
    """Every original this device shared and still has a record of, oldest first."""
    rows = cache.db.execute(
        "SELECT cid, consult, sha, size, parts, created, state FROM image_originals ORDER BY created"
    ).fetchall()
    return [_held(r) for r in rows]


def held_original(cache: BlobCache, cid: bytes) -> HeldOriginal | None:
    r = cache.db.execute(
        "SELECT cid, consult, sha, size, parts, created, state FROM image_originals WHERE cid=?", (cid,)
    ).fetchone()
    return None if r is None else _held(r)


def _held(r: tuple[Any, ...]) -> HeldOriginal:
    cid, consult, sha, size, parts, created, state = r
    refs = tuple(BlobRef(s, n) for s, n in msgpack.unpackb(parts))
    return HeldOriginal(cid, consult, sha, size, refs, created, state)


def _original_owner(cid: bytes) -> bytes:
    """The pin owner of an original kept for requests (the row's own pins use ``cid``)."""
    return b"original:" + cid


def _set_held(cache: BlobCache, cid: bytes, state: str) -> None:
    """Move an original's record on; once it is at the relay (or answered gone) its pin goes."""
    with cache.db:
        cache.db.execute("BEGIN IMMEDIATE")
        cache.db.execute("UPDATE image_originals SET state=? WHERE cid=?", (state, cid))
        if state != KEPT:
            cache.unpin(_original_owner(cid))


def _bound_originals(cache: BlobCache, limits: ShareLimits, keep: bytes) -> list[bytes]:
    """Drop the oldest kept originals from their pins past ``keep_originals_bytes`` (the
    newest, ``keep``, always stays); inside the caller's transaction. Returns those dropped."""
    rows = cache.db.execute(
        "SELECT cid, size FROM image_originals WHERE state=? ORDER BY created DESC", (KEPT,)
    ).fetchall()
    total, dropped = 0, []
    for cid, size in rows:
        total += size
        if total > limits.keep_originals_bytes and cid != keep:
            cache.db.execute("UPDATE image_originals SET state=? WHERE cid=?", (DROPPED, cid))
            cache.unpin(_original_owner(cid))
            dropped.append(cid)
    return dropped


@contextlib.contextmanager
def _row_lock(data_dir: Path, cid: bytes, what: str = "") -> Iterator[bool]:
    """An advisory lock per image (flock): yields False when another process holds it.
    Released by the kernel when the holder dies, so a crash never leaves a stale lock.
    ``what`` names another lock on the same image (".original": fulfilling a request)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one medcomm process at a time is the rule there
        yield True
        return
    folder = data_dir / "locks"
    folder.mkdir(exist_ok=True)
    fd = os.open(folder / (cid.hex() + what), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# --- prepare (CPU; runs in a thread) -------------------------------------------------------------


@dataclass(frozen=True)
class Made:
    """A prepared image and its original bytes, before anything is recorded."""

    prepared: Prepared
    original: bytes
    original_mime: str
    original_size: tuple[int, int]
    info: str  # the DICOM caption (window, spacing), or that docscan straightened the picture


def _read(source: str | Path | bytes) -> bytes:
    """The file's bytes, within the image limit or, for a DICOM file, the larger DICOM one."""
    from medcomm.adapters import imaging
    from medcomm.adapters.dicom import DICOM_LIMITS

    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        with path.open("rb") as f:
            is_dicom = f.read(132)[128:132] == b"DICM"
    except OSError:
        is_dicom = False  # read_source says what is wrong with the path
    limit = DICOM_LIMITS.max_file_bytes if is_dicom else imaging.IMAGE_LIMITS.max_file_bytes
    return imaging.read_source(path, limit)


def make(source: str | Path | bytes, as_kind: str = "auto", window: str | None = None) -> Made:
    """Load, correct and prepare one file (seconds of CPU for a phone photo: call it in a
    thread). Reports, films and ECGs go through docscan; the tile source is docscan's
    full-tone ``gray`` picture when it has one (the first view keeps docscan's choice)."""
    from medcomm.adapters import docscan, imaging

    data = _read(source)
    seen: dict[str, Any] = {}

    def corr(image: Image.Image, mode: str) -> Image.Image:
        c = docscan.correct(image, mode)
        seen["c"] = c
        return c.image

    p = imaging.prepare(data, as_kind, corr, window=window, budget_bytes=_sealed_budget(data, as_kind))
    budget = imaging.FIRST_VIEW.budget(p.kind)
    if filecrypt.sealed_size(len(p.first.data)) > budget:  # found by detection; within 41 B of it
        again = "auto" if p.kind == "slice" else p.kind
        p = imaging.prepare(data, again, corr, window=window, budget_bytes=_sealed_budget(data, p.kind))
    c = seen.get("c")
    info = ""
    if p.kind == "slice":
        info = p.caption.removesuffix(f" · {p.first.label}")
    elif c is not None:
        if c.gray is not None and c.gray.size == p.image.size and c.gray is not c.image:
            p = replace(p, image=imaging.prepare_view(c.gray, p.kind))
        if c.found:  # geometry was changed: distances on it are the straightened page's
            info = {"report": "page", "ecg": "strip"}.get(p.kind, p.kind) + " straightened"
    fmt = imaging.sniff(data) or "dicom"
    return Made(p, data, imaging.FORMATS[fmt][1], _original_size(data, p), info)


def _sealed_budget(data: bytes, as_kind: str) -> int | None:
    """The first view's byte budget less what sealing adds, so that the blob on the wire
    keeps the kind's budget; None while the kind is not known yet (``auto`` on a picture:
    :func:`make` checks the result and fits it again in the rare case it is over)."""
    from medcomm.adapters import imaging

    kind = "slice" if imaging.sniff(data) == "dicom" else as_kind
    if kind not in (*imaging.KINDS, "slice"):
        return None
    return filecrypt.fits(imaging.FIRST_VIEW.budget(kind))  # type: ignore[arg-type]


def _original_size(data: bytes, p: Prepared) -> tuple[int, int]:
    """Width and height of the file as given (upright), from its header: no second decode."""
    if p.kind == "slice":
        return p.pyramid.width, p.pyramid.height
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if int(im.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except Exception:  # HEIF without its opener registered, odd TIFFs: the corrected size will do
        return p.pyramid.width, p.pyramid.height


def encode_tiles(p: Prepared, threads: int = SHARE.encode_threads) -> list[tuple[TileId, Any]]:
    """Every tile of the pyramid, coarse to fine (the order they are uploaded in)."""
    from medcomm.adapters import imaging

    pyr = p.pyramid
    ids = []
    for level in reversed(range(pyr.levels)):
        cols, rows = pyr.grid(level)
        ids += [TileId(level, c, r) for r in range(rows) for c in range(cols)]
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="medcomm-tile") as ex:
        return list(zip(ids, ex.map(lambda t: imaging.tile(p.image, t, p.kind), ids), strict=True))


def _put(cache: BlobCache, data: bytes) -> bytes:
    """``cache.put`` with a full or read-only disk said in one line, not a traceback."""
    try:
        return cache.put(data)
    except OSError as exc:
        raise MedcommError(f"cannot keep the image on this device: {exc.strerror or exc}") from None


def _store_detail(
    data_dir: Path, p: Prepared, threads: int, key: bytes | None
) -> tuple[Detail, tuple[TileEntry, ...]]:
    """Encode the tiles, seal each under the image's ``key`` (None: a row from before blobs
    were sealed) into the cache, then the manifest; returns the detail (for the body) and
    the tiles (coarse to fine). The same tile twice is one sealed blob. Opens its own
    cache: SQLite connections stay in their thread."""
    tiles = encode_tiles(p, threads)
    entries = []
    sealed: dict[bytes, tuple[bytes, int]] = {}  # plaintext SHA-256 -> the blob it went into
    with BlobCache(data_dir) as cache:
        for tid, enc in tiles:
            plain = hashlib.sha256(enc.data).digest()
            if plain not in sealed:
                blob = enc.data if key is None else filecrypt.seal(key, enc.data)
                sealed[plain] = (_put(cache, blob), len(blob))
            entries.append(TileEntry(tid, *sealed[plain]))
        manifest = Manifest(p.pyramid.width, p.pyramid.height, tuple(entries))
        blob = imagemsg.encode_manifest(manifest, key=key)
        msha = _put(cache, blob)
    enc0 = tiles[0][1]
    detail = Detail(
        p.pyramid.width,
        p.pyramid.height,
        p.pyramid.levels,
        enc0.codec,
        enc0.mime,
        enc0.quality,
        BlobRef(msha, len(blob)),
        len(entries),
        sum(e.size for e in entries),
        key,
    )
    return detail, tuple(entries)


# --- send ---------------------------------------------------------------------------------------


def record(
    session: Session,
    consult: str,
    made: Made,
    caption: str = "",
    window: str | None = None,
    send_original: bool = False,
    limits: ShareLimits = SHARE,
    cid: bytes | None = None,
) -> PendingImage:
    """Make an image durable on this device before any byte moves: original parts and first
    view in the cache, then the row, the original's record and their pins in one
    transaction. ``send_original``: upload it after the tiles (else it waits for a request).
    ``cid`` (the message id) is made here unless the caller made it first to lock the row
    before it exists."""
    consult = check_consult(consult)
    p = made.prepared
    data = made.original
    key = filecrypt.new_key()
    step = filecrypt.fits(limits.part_size)  # sealed, each part is still one relay blob
    with open_cache(session) as cache:
        if cache.db.execute("SELECT count(*) FROM image_sends WHERE error IS NULL").fetchone()[0] >= (
            limits.max_pending
        ):
            raise LimitExceeded(f"{limits.max_pending} images already wait for the link: run medcomm sync")
        refs = []
        for i in range(0, len(data), step):
            part = filecrypt.seal(key, data[i : i + step])
            refs.append(BlobRef(_put(cache, part), len(part)))
        first = filecrypt.seal(key, p.first.data)
        first_sha = _put(cache, first)
        plan = ImageInfo(
            p.kind,
            caption.strip(),
            made.info,
            FirstView(
                first_sha,
                len(first),
                p.first.mime,
                p.first.width,
                p.first.height,
                p.first.codec,
                p.first.quality,
                p.first.lossy,
            ),
            Original(
                hashlib.sha256(data).digest(),
                len(data),
                made.original_mime,
                *made.original_size,
                send_original,
                tuple(refs),
            ),
            None,
            key,
        )
        body = imagemsg.encode_body(plan)  # checks the caption's length before anything is kept
        cid = cid or secrets.token_bytes(wire.CID_LEN)
        now = time.time()
        with cache.db:
            cache.db.execute("BEGIN IMMEDIATE")
            cache.db.execute(
                "INSERT INTO image_sends (cid, consult, stage, plan, window, created) VALUES (?,?,?,?,?,?)",
                (cid, consult, PREPARED, body, window, now),
            )
            cache.pin(cid, [first_sha, *(r.sha for r in refs)])
            cache.db.execute(
                "INSERT INTO image_originals VALUES (?,?,?,?,?,?,?)",
                (cid, consult, plan.original.sha, len(data), _pack_refs(refs), now, KEPT),
            )
            cache.pin(_original_owner(cid), [r.sha for r in refs])
            dropped = _bound_originals(cache, limits, cid)
    log.info(
        "image recorded cid=%s kind=%s first=%d original=%d", cid.hex(), p.kind, plan.first.size, len(data)
    )
    for old in dropped:
        log.info("original cid=%s no longer kept (over %d bytes)", old.hex(), limits.keep_originals_bytes)
    return PendingImage(cid, consult, PREPARED, plan, window, None, (), 0, now)


async def _make_ready(
    session: Session,
    pend: PendingImage,
    prepared: Prepared | None,
    deadline: float,
    step: Step | None,
    *,
    fresh: bool = False,
    message: bool = False,
) -> PendingImage:
    """prepared -> ready: the first view at the relay and the detail encoded into the cache,
    both at once (the upload waits on the link, the encoding on the CPU). ``fresh``: the
    first view was just made (no head). With ``message`` it goes on to queued: the message
    follows the first view's last chunk on the link (once the tiles are encoded: the body
    names the manifest), and the row turns queued when the relay holds the first view."""
    data_dir = session.store.path.parent
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def build() -> tuple[Detail, tuple[TileEntry, ...]]:
        p = prepared
        key = pend.plan.key
        if p is None:  # resumed after a crash: cut the tiles again from the cached original
            with open_cache(session) as cache:
                blobs = [cache.read(r.sha) for r in pend.plan.original.blobs()]
            original = b"".join(filecrypt.unseal(key, b) for b in blobs)
            made = await asyncio.to_thread(make, original, _as_kind(pend.plan.kind), pend.window)
            p = made.prepared
        if step is not None:
            step("tiles", 0, p.pyramid.tile_count())
        detail, entries = await asyncio.to_thread(_store_detail, data_dir, p, SHARE.encode_threads, key)
        if step is not None:
            step("tiles", detail.tiles, detail.tiles)
        log.info("image tiles cid=%s tiles=%d in %.2f s", pend.cid.hex(), detail.tiles, loop.time() - t0)
        return detail, entries

    def shown(done: int, total: int) -> None:
        if step is not None:
            step("first view", done, total)

    ready_task = asyncio.ensure_future(_ready(session, pend, asyncio.ensure_future(build())))
    sent: list[asyncio.Future[None]] = []

    def behind() -> None:  # right behind the last chunk's put, or once the relay has it all
        sent.append(asyncio.ensure_future(_enqueue_when(session, ready_task)))

    up = False
    try:
        await _upload_first(session, pend, deadline, shown, fresh=fresh, behind=behind if message else None)
        up = True
        log.info(
            "image first view up cid=%s size=%d in %.2f s",
            pend.cid.hex(),
            pend.plan.first.size,
            loop.time() - t0,
        )
    finally:
        if not up:  # a message not yet in the outbox waits for the next sync (after its first view)
            for task in sent:
                task.cancel()
        try:
            ready = await ready_task  # even when the link failed: sync then only uploads
        finally:
            if sent:  # one already in the outbox stays there: the outbox never forgets
                await asyncio.gather(*sent, return_exceptions=not up)
    if message and up:
        _mark_queued(session, ready)
        return replace(ready, stage=QUEUED)
    return ready


async def _ready(
    session: Session, pend: PendingImage, built: asyncio.Future[tuple[Detail, tuple[TileEntry, ...]]]
) -> PendingImage:
    """The row turns ``ready`` once the detail is encoded: its body is now the message's."""
    detail, entries = await built
    body = imagemsg.encode_body(replace(pend.plan, detail=detail))
    # a tile that is the same as another (blank paper, an empty light box) goes up once
    uploads = list(dict.fromkeys([detail.manifest, *(BlobRef(e.sha, e.size) for e in entries)]))
    if pend.plan.original.sent:
        uploads += list(pend.plan.original.blobs())
    with open_cache(session) as cache, cache.db:
        cache.db.execute("BEGIN IMMEDIATE")
        cache.db.execute(
            "UPDATE image_sends SET stage=?, body=?, uploads=?, done=0, started=0 WHERE cid=?",
            (READY, body, _pack_refs(uploads), pend.cid),
        )
        cache.pin(pend.cid, [r.sha for r in uploads])
    return replace(pend, stage=READY, body=body, uploads=tuple(uploads), done=0, started=0)


def _pack_refs(refs: list[BlobRef] | tuple[BlobRef, ...]) -> bytes:
    return msgpack.packb([[r.sha, r.size] for r in refs], use_bin_type=True)


async def _enqueue_when(session: Session, ready: asyncio.Future[PendingImage]) -> None:
    """The message once the row is ready (shielded: cancelling this never stops the tiles)."""
    await _enqueue(session, await asyncio.shield(ready))


async def _upload_first(
    session: Session,
    pend: PendingImage,
    deadline: float,
    progress: Callable[[int, int], None] | None = None,
    *,
    fresh: bool = False,
    behind: Callable[[], None] | None = None,
) -> None:
    """The first view to the relay (one head round trip when it is there already; none when
    ``fresh``); ``behind`` runs right behind its last chunk (see ``transfer.upload``)."""
    loop = asyncio.get_running_loop()
    with open_cache(session) as cache:
        first = cache.read(pend.plan.first.sha)
    await upload(
        session.link,
        pend.consult,
        pend.plan.first.sha,
        first,
        timeout=max(0.001, deadline - loop.time()),
        progress=progress,
        fresh=fresh,
        behind=behind,
    )


async def _first_then_message(session: Session, pend: PendingImage, deadline: float) -> PendingImage:
    """ready -> queued: the first view (one head when it is there already), its message right
    behind it, and the row moves once the relay holds the first view."""
    sent: list[asyncio.Future[OutItem]] = []

    def behind() -> None:
        sent.append(asyncio.ensure_future(_enqueue(session, pend)))

    up = False
    try:
        await _upload_first(session, pend, deadline, behind=behind)
        up = True
    finally:
        if sent:
            await asyncio.gather(*sent, return_exceptions=not up)
    _mark_queued(session, pend)
    return replace(pend, stage=QUEUED)


def _as_kind(kind: str) -> str:
    return "auto" if kind == "slice" else kind  # a DICOM file finds its own way


async def _enqueue(session: Session, pend: PendingImage) -> OutItem:
    """The message into the outbox under the row's id (durable, fsync), then onto the link.
    The same id on every retry: the outbox and the relay take it once."""
    assert pend.body is not None
    item = OutItem(pend.cid, pend.consult, wire.KINDS["image"], pend.body)
    session.store.enqueue(item)
    await session.link.submit(item)
    log.info("image message sent cid=%s body=%d", pend.cid.hex(), len(pend.body))
    return item


def _mark_queued(session: Session, pend: PendingImage) -> None:
    """ready -> queued: the message is in the outbox and the first view at the relay."""
    with open_cache(session) as cache, cache.db:
        cache.db.execute("UPDATE image_sends SET stage=? WHERE cid=?", (QUEUED, pend.cid))


class _StoredWatch:
    """The relay's answer to one message, listened for before the message can go out: with
    the message right behind the first view, its acknowledgement may come before the code
    that sent it asks for it."""

    def __init__(self, session: Session, cid: bytes) -> None:
        self.link = session.link
        self.fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def listen(event: object) -> None:
            if self.fut.done():
                return
            if isinstance(event, Acked) and event.cid == cid:
                self.fut.set_result(event.seq)
            elif isinstance(event, Rejected) and event.cid == cid:
                self.fut.set_exception(RemoteError(event.code, event.reason))

        self.listen = listen
        self.link.listeners.append(listen)

    async def wait(self, timeout: float) -> int:
        await self.link.wait_until(self.fut.done, timeout)
        return self.fut.result()

    def close(self) -> None:
        if self.listen in self.link.listeners:
            self.link.listeners.remove(self.listen)
        if self.fut.done() and not self.fut.cancelled():
            self.fut.exception()  # retrieved: a rejection raised elsewhere is not logged twice


async def share(
    session: Session,
    consult: str,
    source: str | Path | bytes,
    *,
    as_kind: str = "auto",
    caption: str = "",
    window: str | None = None,
    send_original: bool = False,
    timeout: float,
    step: Step | None = None,
    on_recorded: Callable[[PendingImage], None] | None = None,
) -> Shared:
    """Prepare, record, send the first view and the message; returns once the relay has
    stored the message (LinkDown otherwise: the image stays pending on this device).
    The detail (manifest, tiles, and with ``send_original`` the original) is left to
    :func:`send_pending_images`; without it the original waits here for a request."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + timeout
    consult = check_consult(consult)
    if len(caption.encode("utf-8")) > imagemsg.LIMITS.max_caption:
        raise UsageError(f"--caption is over {imagemsg.LIMITS.max_caption} bytes: say it in a message")
    if step is not None:
        step("prepare", 0, 1)
    made = await asyncio.to_thread(make, source, as_kind, window)
    if step is not None:
        step("prepare", 1, 1)
    log.info(
        "image prepared kind=%s first=%d in %.2f s",
        made.prepared.kind,
        len(made.prepared.first.data),
        loop.time() - t0,
    )
    cid = secrets.token_bytes(wire.CID_LEN)
    with _row_lock(session.store.path.parent, cid) as mine:  # before the row exists: no sync takes it
        assert mine  # nobody else can know this id yet
        # fsyncs of a few MB: off the event loop, so the link keeps answering pings meanwhile
        pend = await asyncio.to_thread(
            record, session, consult, made, caption, window, send_original, cid=cid
        )
        if on_recorded is not None:
            on_recorded(pend)
        stored = _StoredWatch(session, cid)
        try:
            pend = await _make_ready(session, pend, made.prepared, deadline, step, fresh=True, message=True)
            seq = await stored.wait(max(0.001, deadline - loop.time()))
        finally:
            stored.close()
    seconds = loop.time() - t0
    left = pend.uploads
    log.info(
        "image stored cid=%s seq=%d first=%d in %.1f s", pend.cid.hex(), seq, pend.plan.first.size, seconds
    )
    return Shared(
        pend.cid, seq, made.prepared.kind, pend.plan.first.size, len(left), sum(r.size for r in left), seconds
    )


def _tiles_end(pend: PendingImage) -> int:
    """Index in ``uploads`` where the original's parts begin (they are the suffix)."""
    o = pend.plan.original
    return len(pend.uploads) - (len(o.blobs()) if o.sent else 0)


async def _upload_range(
    session: Session, pend: PendingImage, stop: int, deadline: float, step: Step | None, limits: ShareLimits
) -> int:
    """Upload ``uploads[done:stop]`` with a few in flight, advancing ``done`` durably over
    the finished prefix; returns the new ``done``. When every blob is up, the row and its
    pins go.

    A manifest or tile this device has never begun (index at or past the row's durable
    ``started`` mark) goes without a head: its first put declares the size. The mark moves
    past each blob, durably, before the blob's first put can leave (the upload tasks only
    run at the next ``await``), so a blob that a crash or a cut interrupted asks the relay
    where it stands next time instead of sending its first window again."""
    loop = asyncio.get_running_loop()
    done = pend.done
    started = max(pend.started, done)
    tiles_end = _tiles_end(pend)
    finished: set[int] = set()
    inflight: dict[asyncio.Future[object], int] = {}
    sent_bytes = sum(r.size for r in pend.uploads[:done])
    total_bytes = sum(r.size for r in pend.uploads[:stop])

    async def one(i: int, fresh: bool) -> None:
        ref = pend.uploads[i]
        with BlobCache(session.store.path.parent) as cache:
            data = cache.read(ref.sha)
        await upload(
            session.link,
            pend.consult,
            ref.sha,
            data,
            timeout=max(0.001, deadline - loop.time()),
            fresh=fresh,
        )

    nxt = done
    try:
        while nxt < stop or inflight:
            launched = nxt
            while len(inflight) < limits.upload_parallel and nxt < stop:
                fresh = nxt >= started and nxt < tiles_end  # originals ask first: the relay may have them
                inflight[asyncio.ensure_future(one(nxt, fresh))] = nxt
                nxt += 1
            if nxt > started and nxt > launched:  # before any of those tasks runs: durable first
                started = nxt
                with open_cache(session) as cache, cache.db:
                    cache.db.execute("UPDATE image_sends SET started=? WHERE cid=?", (started, pend.cid))
            ready, _ = await asyncio.wait(list(inflight), return_when=asyncio.FIRST_COMPLETED)
            for task in ready:
                i = inflight.pop(task)
                task.result()  # raises: the finally below cancels the rest
                finished.add(i)
                sent_bytes += pend.uploads[i].size
            before = done
            while done in finished:
                done += 1
            if done != before:
                with open_cache(session) as cache, cache.db:
                    cache.db.execute("UPDATE image_sends SET done=? WHERE cid=?", (done, pend.cid))
            if step is not None:
                step("detail", sent_bytes, total_bytes)
    finally:
        for task in inflight:
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
    if done == len(pend.uploads):
        with open_cache(session) as cache, cache.db:
            cache.db.execute("BEGIN IMMEDIATE")
            cache.db.execute("DELETE FROM image_sends WHERE cid=?", (pend.cid,))
            cache.unpin(pend.cid)
            if pend.plan.original.sent:  # sent with share --original: the relay holds it now
                cache.db.execute("UPDATE image_originals SET state=? WHERE cid=?", (UP, pend.cid))
                cache.unpin(_original_owner(pend.cid))
        # the lock file goes too (we hold it); a process that opened it meanwhile finds no row
        (session.store.path.parent / "locks" / pend.cid.hex()).unlink(missing_ok=True)
        log.info("image complete at the relay cid=%s blobs=%d", pend.cid.hex(), done)
    return done


async def send_pending_images(
    session: Session, timeout: float, step: Step | None = None, limits: ShareLimits = SHARE
) -> ImagesResult:
    """Finish every image this device has not finished sending, and answer the requests for
    originals it holds (``medcomm sync``, ``share --detail wait``, background syncs and the
    desk call this), in three passes, oldest first: (1) queue the messages still to queue
    and upload every manifest and tile, (2) the originals someone asked for
    (:func:`answer_requests`), (3) the originals sent with ``share --original``. An original
    of a phone photo is minutes of EDGE uplink; the tiles of the next image must not wait
    behind it, and an original a doctor asked for goes before one nobody has asked for yet.

    Within ``timeout``: when time runs out after some progress the rest waits for the next
    call (``left`` says how much, and a warning is logged); with no progress at all it is
    LinkDown. An image the relay refuses for good is marked failed and kept on the device."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    data_dir = session.store.path.parent
    finished: list[bytes] = []
    failed: list[tuple[bytes, MedcommError]] = []
    busy: set[bytes] = set()
    asked = _Answered([], [])
    progressed = False
    for phase in ("tiles", "requested", "originals"):
        if phase == "requested":
            try:
                asked = await answer_requests(session, deadline, step, busy)
            except LinkDown:
                if not progressed:
                    raise
                return _partial_result(session, finished, busy, failed, asked)
            progressed = progressed or bool(asked.uploaded or asked.answered)
            continue
        with open_cache(session) as cache:
            rows = pending_images(cache)
        for row in rows:
            with _row_lock(data_dir, row.cid) as mine:
                if not mine:
                    busy.add(row.cid)
                    continue
                with open_cache(session) as cache:
                    pend = pending_image(cache, row.cid)  # another process may have moved it on meanwhile
                if pend is None or pend.error is not None:
                    continue
                try:
                    if pend.stage == PREPARED:
                        pend = await _make_ready(session, pend, None, deadline, step, message=True)
                        progressed = True
                    if pend.stage == READY:  # the first view may not have made it before a cut
                        pend = await _first_then_message(session, pend, deadline)
                        progressed = True
                    stop = _tiles_end(pend) if phase == "tiles" else len(pend.uploads)
                    if pend.done < stop or pend.done == len(pend.uploads):
                        if await _upload_range(session, pend, stop, deadline, step, limits) == len(
                            pend.uploads
                        ):
                            finished.append(pend.cid)
                        progressed = True
                except (AccessDenied, RemoteError, NotFound, LimitExceeded, UsageError) as exc:
                    if isinstance(exc, RemoteError) and not isinstance(exc, AccessDenied):
                        if exc.code not in _PERMANENT:
                            raise
                    with open_cache(session) as cache, cache.db:
                        cache.db.execute(
                            "UPDATE image_sends SET error=? WHERE cid=?", (str(exc)[:500], pend.cid)
                        )
                    failed.append((pend.cid, exc))
                    log.warning("image cid=%s failed for good: %s", pend.cid.hex(), type(exc).__name__)
                except LinkDown:
                    if not progressed and not _moved(session, row):
                        raise
                    return _partial_result(session, finished, busy, failed, asked)
    return ImagesResult(finished, _left(session), len(busy), failed, asked.uploaded, asked.answered)


def _partial_result(
    session: Session,
    finished: list[bytes],
    busy: set[bytes],
    failed: list[tuple[bytes, MedcommError]],
    asked: _Answered,
) -> ImagesResult:
    left = _left(session)
    log.warning("images: %d blobs still to upload; `medcomm sync` goes on", left)
    return ImagesResult(finished, left, len(busy), failed, asked.uploaded, asked.answered)


def _left(session: Session) -> int:
    """Blobs still to upload: the pending images' and the requested originals' parts."""
    with open_cache(session) as cache:
        rows = sum(len(r.uploads) - r.done for r in pending_images(cache))
    return rows + sum(len(w.parts) for w in requested_originals(session) if w.here)


# --- originals on request ----------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """An original someone asked for that this device shared (or did, before it kept a
    record of its originals: then only when it still has every part)."""

    cid: bytes  # the image message's id
    consult: str
    sha: bytes
    parts: tuple[BlobRef, ...]
    asker: str  # the first to ask
    seq: int  # the first request's seq: first asked, first served
    state: str | None  # this device's record (kept | dropped), None for an image from before it
    here: bool  # every part is in this device's cache


@dataclass(frozen=True)
class _Answered:
    uploaded: list[bytes]  # originals now at the relay
    answered: list[bytes]  # no longer here: the consult was told


def requested_originals(session: Session) -> list[Wanted]:
    """The requests in this device's history for originals it shared that are neither at
    the relay (as far as this device knows) nor answered, first asked first. No link: the
    history, the cache and the ``image_originals`` record only. The desk can call this when
    a kind-``request`` message arrives to decide whether to run :func:`send_pending_images`."""
    from medcomm.adapters.blobcache import blob_file

    db: Any = session.store.db
    rows = db.execute(
        "SELECT consult, sender, seq, body FROM messages WHERE kind=? ORDER BY consult, seq",
        (wire.KINDS["request"],),
    ).fetchall()
    if not rows:
        return []
    by_consult: dict[str, list[tuple[str, int | None, bytes]]] = {}
    for consult, sender, seq, body in rows:
        by_consult.setdefault(consult, []).append((sender, seq, body))
    blobs = session.store.path.parent / "blobs"
    out: list[Wanted] = []
    with open_cache(session) as cache:
        for consult, msgs in by_consult.items():
            for image, asked in imagereq.fold(msgs).items():
                if not asked.by or asked.gone or asked.seq is None:
                    continue
                held = held_original(cache, image)
                if held is not None:
                    if held.consult != consult or held.sha != asked.sha or held.state not in (KEPT, DROPPED):
                        continue
                    parts = held.parts
                else:  # shared before this device kept records: answerable only from the cache
                    mine = db.execute(
                        "SELECT body FROM messages WHERE cid=? AND consult=? AND kind=? AND sender=?",
                        (image, consult, wire.KINDS["image"], session.me),
                    ).fetchone()
                    if mine is None:
                        continue
                    try:
                        original = imagemsg.parse_body(mine[0]).original
                    except MedcommError:
                        continue
                    if original.sha != asked.sha:
                        continue
                    parts = original.blobs()
                here = all(blob_file(blobs, r.sha).is_file() for r in parts)
                if held is None and not here:
                    continue  # maybe another device of this user shared it: not ours to answer
                state = held.state if held is not None else None
                out.append(Wanted(image, consult, asked.sha, parts, asked.by[0], asked.seq, state, here))
    out.sort(key=lambda w: w.seq)
    return out


async def answer_requests(
    session: Session, deadline: float, step: Step | None = None, busy: set[bytes] | None = None
) -> _Answered:
    """Upload every requested original this device holds (a head first: when the relay has
    it already, e.g. from a run that was cut after its last chunk, that is all it costs),
    then record it ``up``; one it no longer holds is answered "gone" in the consult, once.
    Blob transfers pause during a call, like every other upload."""
    data_dir = session.store.path.parent
    uploaded: list[bytes] = []
    answered: list[bytes] = []
    for want in requested_originals(session):
        with _row_lock(data_dir, want.cid, ".original") as mine:
            if not mine:
                if busy is not None:
                    busy.add(want.cid)
                continue
            with open_cache(session) as cache:
                held = held_original(cache, want.cid)
            if held is not None and held.state not in (KEPT, DROPPED):
                continue  # another process finished it meanwhile
            files = await asyncio.to_thread(_intact_parts, data_dir, want.parts)
            if files is None:
                if held is not None:
                    await _answer_gone(session, want)
                    answered.append(want.cid)
                continue
            try:
                await _upload_parts(session, want, files, deadline, step)
            except (AccessDenied, RemoteError, LimitExceeded) as exc:
                if isinstance(exc, RemoteError) and not isinstance(exc, AccessDenied):
                    if exc.code not in _PERMANENT:
                        raise
                # e.g. no longer a member of that consult: nothing to send it to; asked again next run
                log.warning("requested original cid=%s not sent: %s", want.cid.hex(), type(exc).__name__)
                continue
            except OSError as exc:  # a dropped original trimmed meanwhile: the next run answers
                log.warning("requested original cid=%s unreadable: %s", want.cid.hex(), type(exc).__name__)
                continue
            total = sum(r.size for r in want.parts)
            with open_cache(session) as cache:
                if held is None:  # from before records: keep one now, so it is not asked again
                    row = (want.cid, want.consult, want.sha, total, _pack_refs(want.parts), time.time(), UP)
                    with cache.db:
                        cache.db.execute("INSERT OR IGNORE INTO image_originals VALUES (?,?,?,?,?,?,?)", row)
                else:
                    _set_held(cache, want.cid, UP)
            uploaded.append(want.cid)
            log.info(
                "requested original cid=%s up: %d bytes in %d parts", want.cid.hex(), total, len(want.parts)
            )
    return _Answered(uploaded, answered)


def _intact_parts(data_dir: Path, parts: tuple[BlobRef, ...]) -> list[Path] | None:
    """The cached files of an original's parts, each checked against its SHA-256 (read in
    blocks: a DICOM original may be hundreds of MB), or None when one is missing or damaged."""
    from medcomm.adapters.blobcache import file_sha

    with BlobCache(data_dir) as cache:
        paths = [cache.path(r.sha) for r in parts]
    try:
        if all(
            p.stat().st_size == r.size and file_sha(p) == r.sha for p, r in zip(paths, parts, strict=True)
        ):
            return paths
    except OSError:
        pass
    return None


async def _upload_parts(
    session: Session, want: Wanted, files: list[Path], deadline: float, step: Step | None
) -> None:
    """The original's parts in order (read from their files a chunk at a time), each
    resuming where the relay stands."""
    loop = asyncio.get_running_loop()
    total = sum(r.size for r in want.parts)
    base = 0

    def progress(done: int, size: int) -> None:
        if step is not None:
            step("original", base + done, total)

    for ref, path in zip(want.parts, files, strict=True):
        await upload(
            session.link,
            want.consult,
            ref.sha,
            path,
            timeout=max(0.001, deadline - loop.time()),
            progress=progress,
        )
        base += ref.size


async def _answer_gone(session: Session, want: Wanted) -> None:
    """Tell the consult this device no longer holds the original (its derived id: once)."""
    req = imagereq.Request(want.cid, want.sha, "original", "gone")
    cid = imagereq.request_cid(session.me, want.cid, "original", "gone")
    item = OutItem(cid, want.consult, wire.KINDS["request"], imagereq.encode(req))
    session.store.enqueue(item)  # durable before the record moves on
    with open_cache(session) as cache:
        _set_held(cache, want.cid, GONE)
    await session.link.submit(item)
    log.info("requested original cid=%s no longer on this device: answered", want.cid.hex())


def _moved(session: Session, before: PendingImage) -> bool:
    """Did this row advance during the failed attempt (stage or done count)?"""
    with open_cache(session) as cache:
        now = pending_image(cache, before.cid)
    return now is None or now.stage != before.stage or now.done > before.done


def start_background(data_dir: Path, limits: ShareLimits = SHARE) -> int:
    """Start a detached ``medcomm sync`` that uploads the detail after ``share`` exits (its
    output goes to ``<data dir>/background.log``); returns its pid. Bounded by
    ``background_seconds``; the row locks keep it off an image another process is sending."""
    log_path = data_dir / "background.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medcomm.cli", "sync", "--timeout", str(int(limits.background_seconds))],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # not killed with the shell's process group when the user logs out
            env=dict(os.environ),
        )
    return proc.pid

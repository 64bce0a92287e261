"""``medcomm export``: a consult's record as one Markdown, HTML or PDF file.

The next doctor reads the whole consult from it: the case card now and every version of
it, the status history with who and when, the advice, follow-ups, the patient's other
consults, every message in seq order (text, images, voice notes, calls, case, status and
follow-up changes) with time and author, the images as this device holds them (first
views, and the detail tiles that were opened here), and the call log.

It writes exactly one file, the one the user names, and nothing else (health data does
not belong in temporary files or logs: the log line says consult id and bytes only). The
formats are :mod:`medcomm.session.recordfmt`: Markdown and HTML are self-contained and keep
the text exact; the PDF needs no browser and announces any character no font here covers
(returned in ``missing`` too).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from medcomm.adapters.blobcache import blob_file
from medcomm.core import filecrypt, imagemsg, wire
from medcomm.core.tiles import TileId
from medcomm.errors import MedcommError, UsageError
from medcomm.session import casework
from medcomm.session.recordfmt import (
    CallRecord,
    ImageRecord,
    Picture,
    Record,
    render_html,
    render_md,
    render_pdf,
)

if TYPE_CHECKING:
    from medcomm.session.service import Session

log = logging.getLogger("medcomm.export")
FORMATS = ("md", "html", "pdf")


@dataclass(frozen=True)
class ExportLimits:
    max_tiles_per_image: int = 64  # opened tiles put in the file per image (the rest are counted)


EXPORT = ExportLimits()


# --- gathering ------------------------------------------------------------------------------


def _cached(blobs: Path, sha: bytes, key: bytes | None = None) -> bytes | None:
    """A blob of this device's cache, verified and opened under its image's key (a damaged
    file, or one that does not open, is not exported)."""
    try:
        data = blob_file(blobs, sha).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).digest() != sha:
        return None
    try:
        return filecrypt.unseal(key, data)
    except MedcommError:
        return None


def _image(blobs: Path, row: tuple[Any, ...], limits: ExportLimits) -> ImageRecord:
    seq, cid, sender, when, body = row
    try:
        info = imagemsg.parse_body(body)
    except MedcommError as exc:
        return ImageRecord(cid.hex(), seq, when, sender, f"(unreadable image message: {exc})", None)
    first = _cached(blobs, info.first.sha, info.key)
    rec = ImageRecord(
        cid.hex(),
        seq,
        when,
        sender,
        imagemsg.describe(info),
        Picture(f"first view ({info.first.label})", info.first.mime, first) if first else None,
    )
    d = info.detail
    if d is None:
        return rec
    rec.tiles_total = d.tiles
    manifest = _cached(blobs, d.manifest.sha)
    if manifest is None:
        return rec
    try:
        entries = imagemsg.parse_manifest(manifest, d).entries
    except MedcommError:
        return rec
    pyr = d.pyramid
    for e in sorted(entries, key=lambda e: (e.tile.level, e.tile.row, e.tile.col)):
        data = _cached(blobs, e.sha, info.key)
        if data is None:
            continue
        rec.tiles_here += 1
        if len(rec.tiles) < limits.max_tiles_per_image:
            rec.tiles.append(Picture(_tile_label(e.tile, pyr.box(e.tile), d.width), d.mime, data))
    return rec


def _tile_label(t: TileId, box: Any, width: int) -> str:
    return (
        f"tile {t.wire()} (level {t.level}, 1/{1 << t.level} scale): pixels "
        f"{box.x0},{box.y0} to {box.x1},{box.y1} of the {width}-px-wide original"
    )


def _call(row: tuple[Any, ...]) -> CallRecord:
    seq, _cid, sender, when, body = row
    try:
        ev = msgpack.unpackb(body, raw=False)
        return CallRecord(
            seq,
            when,
            str(ev.get("caller", sender)),
            [str(m) for m in ev.get("members", [])],
            str(ev.get("outcome", "")),
            float(ev.get("duration_s", 0)),
            {str(k): float(v) for k, v in (ev.get("kbps_up") or {}).items()},
        )
    except Exception:
        return CallRecord(seq, when, sender, [], "(unreadable call record)", 0.0, {})


def collect(
    session: Session, consult: str, now_ms: int, tz: dt.tzinfo, limits: ExportLimits = EXPORT
) -> Record:
    """Everything the record shows, from this device's store and blob cache (no network)."""
    state = casework.consult_state(session, consult)
    lines = session.history(state.id)
    blobs = session.store.path.parent / "blobs"
    db = session.store.db
    rows = db.execute(
        "SELECT seq, cid, sender, time, kind, body FROM messages "
        "WHERE consult=? AND kind IN (?, ?) ORDER BY seq",
        (state.id, wire.KINDS["image"], wire.KINDS["call"]),
    ).fetchall()
    images = [_image(blobs, (s, c, u, t, b), limits) for s, c, u, t, k, b in rows if k == wire.KINDS["image"]]
    for cid, created, body in db.execute(
        "SELECT cid, created, body FROM outbox WHERE consult=? AND kind=? ORDER BY created",
        (state.id, wire.KINDS["image"]),
    ):
        images.append(_image(blobs, (None, cid, session.me, int(created * 1000), body), limits))
    calls = [_call((s, c, u, t, b)) for s, c, u, t, k, b in rows if k == wire.KINDS["call"]]
    linked = casework.linked_consults(session, state.id)
    return Record(state, lines, images, calls, linked, session.me, now_ms, tz)


async def fetch_first_views(session: Session, consult: str, timeout: float) -> int:
    """Fetch the first views of the consult's images that are not on this device yet
    (small: at most 20 KB each), so the record shows them; returns how many came."""
    from medcomm.session import imagefetch

    cids = [
        r[0]
        for r in session.store.db.execute(
            "SELECT cid FROM messages WHERE consult=? AND kind=? ORDER BY seq",
            (casework.check_consult(consult), wire.KINDS["image"]),
        )
    ]
    got = 0
    for cid in cids:
        try:
            loc = imagefetch.locate_image(session, cid.hex())
            if _cached(session.store.path.parent / "blobs", loc.info.first.sha) is None:
                await imagefetch.fetch_first(session, loc, timeout)
                got += 1
        except MedcommError as exc:
            log.info("first view of %s not fetched: %s", cid.hex()[:12], type(exc).__name__)
    return got


# --- the one call -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    path: Path
    size: int
    messages: int
    images: int
    missing: list[str]  # characters the PDF could not draw


def export(session: Session, consult: str, fmt: str, out: Path, now_ms: int, tz: dt.tzinfo) -> Exported:
    """Write the record of ``consult`` to ``out`` (only that file) in ``fmt``."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    rec = collect(session, consult, now_ms, tz)
    missing: list[str] = []
    if fmt == "md":
        data = render_md(rec).encode("utf-8")
    elif fmt == "html":
        data = render_html(rec).encode("utf-8")
    else:
        data, missing = render_pdf(rec)
    _write(out, data)
    log.info("exported consult=%s format=%s bytes=%d", rec.state.id, fmt, len(data))
    return Exported(out, len(data), len(rec.lines), len(rec.images), missing)


def _write(out: Path, data: bytes) -> None:
    """Write the named file (private to its owner when new), replacing it whole."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)

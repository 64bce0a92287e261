"""Asking an image's sender for its original: the kind-``request`` message (sans-I/O).

An image's byte-exact original stays on the sending device unless someone asks for it: a
phone photo's original is minutes of EDGE uplink and carries its EXIF (GPS) or DICOM
header, so it crosses the link only when a member wants it. Asking is a message in the
consult, so it goes through the durable outbox (it survives a device that is offline for a
day), is stored once by the relay, and is seen by the sending device at its next sync, which
uploads the original then. A sending device that no longer holds the original answers with
the same kind, so the asker is told rather than left waiting.

Body (msgpack map, bytes for ids)::

    v 1 · image (the image message's 16-byte id) · sha (its original's SHA-256, so the
    sending device checks it is the file it holds) · want "original" · answer (absent: a
    request; "gone": the sender's device no longer holds it)

Ids are derived, not random (:func:`request_cid`): the same user asking twice for the same
original, from one device or two, makes the same client id, which the outbox and the relay
take once. :func:`fold` turns a consult's request messages into one state per image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

from medcomm.core import wire
from medcomm.errors import WireError

VERSION = 1
WANTS = ("original",)
ANSWERS = ("gone",)
MAX_BODY = 256  # bytes; a request is ~80


@dataclass(frozen=True, slots=True)
class Request:
    """One request message, or the sender's answer to one (``answer`` set)."""

    image: bytes  # the image message's client id
    sha: bytes  # the original's SHA-256 (as the image message names it)
    want: str = "original"
    answer: str | None = None  # None: asking; "gone": the sending device no longer holds it


def encode(req: Request) -> bytes:
    """The message body (checked like one from another device, so a bad one never leaves)."""
    obj: dict[str, object] = {"v": VERSION, "image": req.image, "sha": req.sha, "want": req.want}
    if req.answer is not None:
        obj["answer"] = req.answer
    body = msgpack.packb(obj, use_bin_type=True)
    parse(body)
    return body


def parse(body: bytes) -> Request:
    """Check a request body from another device; WireError if it is not one."""
    if len(body) > MAX_BODY:
        raise WireError(f"request body of {len(body)} bytes over {MAX_BODY}")
    try:
        m = msgpack.unpackb(body, raw=False, max_str_len=MAX_BODY, max_bin_len=MAX_BODY, max_map_len=8)
    except Exception:
        raise WireError("request body is not msgpack") from None
    if not isinstance(m, dict) or m.get("v") != VERSION:
        raise WireError("request body is not a version-1 map")
    image, sha, want, answer = m.get("image"), m.get("sha"), m.get("want"), m.get("answer")
    if type(image) is not bytes or len(image) != wire.CID_LEN:
        raise WireError("request names no image")
    if type(sha) is not bytes or len(sha) != 32:
        raise WireError("request names no original")
    if want not in WANTS:
        raise WireError("request wants something unknown")
    if answer is not None and answer not in ANSWERS:
        raise WireError("request has an unknown answer")
    return Request(image, sha, want, answer)


def request_cid(user: str, image: bytes, want: str = "original", answer: str | None = None) -> bytes:
    """The client id of ``user``'s request (or answer) about ``image``: the same on every
    device of that user and every try, so a second ask is the first one again."""
    h = hashlib.sha256(b"medcomm request v1\0")
    for part in (user.encode(), image, want.encode(), (answer or "").encode()):
        h.update(len(part).to_bytes(2, "big") + part)
    return h.digest()[: wire.CID_LEN]


@dataclass
class Asked:
    """The folded state of the requests about one image in a consult."""

    image: bytes
    sha: bytes
    by: list[str] = field(default_factory=list)  # who asked, first asker first
    seq: int | None = None  # the first request's seq (None: only queued on this device yet)
    gone: str | None = None  # who answered that the original is no longer held


def fold(rows: Iterable[tuple[str, int | None, bytes]]) -> dict[bytes, Asked]:
    """One :class:`Asked` per image from ``(sender, seq, body)`` rows in seq order (queued
    ones, seq None, last); unreadable bodies are skipped (the history says so on their line)."""
    out: dict[bytes, Asked] = {}
    for sender, seq, body in rows:
        try:
            req = parse(body)
        except WireError:
            continue
        a = out.setdefault(req.image, Asked(req.image, req.sha))
        if req.sha != a.sha:
            continue  # not the original this image names: not ours to fold
        if req.answer is not None:
            a.gone = a.gone or sender
        elif sender not in a.by:
            a.by.append(sender)
            if a.seq is None:
                a.seq = seq
    return out


def text(req: Request) -> str:
    """A request as the history shows it, after its sender's name."""
    short = req.image.hex()[:12]
    if req.answer == "gone":
        return f"cannot send the original of image {short}: it is no longer kept on the sending device"
    return f"asked for the original of image {short}"


def fields(req: Request) -> dict[str, object]:
    """A request's decoded fields for ``history --json``."""
    return {"image": req.image.hex(), "want": req.want, "answer": req.answer}


# --- what a history line says about an original ------------------------------------------------


def original_state(sent: bool, here: bool, mine: bool, asked: Asked | None, held: str | None = None) -> str:
    """What a history line says of an image's original, from what this device knows without
    asking the relay: ``downloaded`` (here, fetched), ``at the relay`` (the sending device
    uploaded it: only that device knows), ``sent`` (the sender chose to upload it: whether
    it has arrived is only known by asking), ``requested``, ``on request``, ``gone`` (the
    sender answered it is no longer kept) and, on the sender's own device, ``no longer
    kept`` (dropped to bound the device's store, not yet asked for). ``held`` is the
    sending device's own record (:mod:`medcomm.session.images`): kept | up | dropped | gone."""
    if mine:
        if held == "up":
            return "at the relay"
        if held == "gone" or (asked is not None and asked.gone):
            return "gone"
        if asked is not None and asked.by:
            return "requested"
        if sent:
            return "sent"
        if held == "dropped":
            return "no longer kept"
        return "on request"
    if here:
        return "downloaded"
    if asked is not None and asked.gone:
        return "gone"
    if sent:
        return "sent"
    if asked is not None and asked.by:
        return "requested"
    return "on request"

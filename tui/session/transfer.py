"""Resumable blob transfers over the one link, and voice notes on top of them.

An upload asks the relay where it stands (``blob.head``), then sends chunks from there with a
small window in flight: on a 1.5 s round trip one chunk at a time would leave the uplink idle
half the time, while a deep window would put many seconds of blob bytes in front of every chat
message on a 24 kbit/s uplink (the link has no priorities yet). Two 8 KiB chunks cover EDGE's
bandwidth-delay product (24 kbit/s x 1.5 s = 4.5 KB) with room to spare and hold chat back at
most ~5 s. After any drop the upload asks again (the relay's offset is the truth, so chunks it
acknowledged are never re-sent), with bounded retries and jittered backoff. A download
resumes the same way into a partial file and is verified by SHA-256 before it joins the cache.

Round trips are what a small blob costs on a slow link, more than its bytes: a 20 KB first
view is ~7 s of EDGE uplink, and each round trip ~0.4 s more. So a caller that has just made a
blob says so (``fresh``): the first round skips the head and puts from 0, the first put
declaring the size (the relay starts the upload there, or answers its own offset when it has
some). And a caller with something that depends on the blob (an image's message) passes
``behind``: it runs right after the last chunk's put is written, so the message follows the
chunk on the same connection instead of a round trip later; the relay handles one
connection's frames in order, so it has stored the chunk before it reads the message.

Voice notes: :func:`record_note` makes a note durable on the device (cache + pending row)
before any byte moves; :func:`send_pending_notes` (run by ``medcomm note`` and ``medcomm
sync``) uploads each pending note, then queues its kind-``note`` message through the normal
outbox under the client id chosen at recording, and only then forgets the row.
:func:`fetch_note` finds a note by its message id and returns its Ogg Opus bytes, from the
cache when it is there.

Sealed blobs: a note's Ogg file is sealed (:mod:`medcomm.core.filecrypt`) under a fresh key
that travels only in its message body, before it is kept here, so the cache, the upload and
the relay hold the same ciphertext (a resumed upload goes on with the very bytes it began
with). :func:`fetch_blob` is the one way in for a reader: the cached blob (downloaded and
verified by SHA-256 when not here yet) passed through a check that opens it under its
message's key; a blob that does not open is dropped from the cache and raises Tampered, so
it is never shown nor taken as here.

Logs name ids and sizes, never contents.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medcomm.adapters.blobcache import BlobCache, NoteInfo, PendingNote, note_body, parse_note_body
from medcomm.core import filecrypt, wire
from medcomm.core.delivery import OutItem, backoff
from medcomm.errors import (
    AccessDenied,
    LimitExceeded,
    LinkDown,
    MedcommError,
    NotFound,
    RemoteError,
    Tampered,
    UsageError,
    WireError,
)

if TYPE_CHECKING:
    from medcomm.session.link import Link
    from medcomm.session.service import Session

log = logging.getLogger("medcomm.transfer")

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)
T = TypeVar("T")


@dataclass(frozen=True)
class TransferLimits:
    """How a transfer paces itself and how long it keeps trying."""

    chunk: int = 8 * 1024  # bytes per request; the relay refuses more (BlobLimits.chunk)
    window: int = 2  # chunks in flight: covers EDGE's bandwidth-delay product, keeps chat's wait short
    answer_timeout: float = 60.0  # one request's answer: a window at 12 kbit/s is ~11 s, plus stalls
    attempts: int = 6  # rounds in a row without progress before the transfer gives up (LinkDown)
    backoff_first: float = 0.5  # first pause after a failed round, seconds
    backoff_max: float = 8.0  # longest pause
    max_blob: int = 16 * 1024 * 1024  # the relay's BlobLimits.max_size
    max_realign: int = 64  # offset corrections in one round before the relay is deemed broken


TRANSFER = TransferLimits()


@dataclass
class TransferReport:
    """What a transfer did, for progress lines, benchmarks and tests."""

    size: int
    done: int = 0  # bytes the far end holds (upload: acknowledged; download: written)
    chunks: int = 0  # data-carrying requests sent (puts, or gets)
    bytes: int = 0  # payload bytes those requests carried or asked for
    rounds: list[int] = field(default_factory=list)  # offset each round (head / resume) started at
    offsets: list[int] = field(default_factory=list)  # every chunk offset requested, in order
    realigned: int = 0  # times the relay's offset differed from ours
    heads: int = 0  # blob.head round trips spent
    behind_early: bool = False  # ``behind`` ran before the last chunk's answer (pipelined)


class _Source:
    """Bytes or a file, read a chunk at a time (a file is not held in memory)."""

    def __init__(self, source: bytes | Path) -> None:
        self._data = source if isinstance(source, bytes) else None
        self._path = None if isinstance(source, bytes) else Path(source)
        self.size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size

    def read(self, offset: int, n: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + n]
        assert self._path is not None
        with open(self._path, "rb") as f:
            f.seek(offset)
            return f.read(n)


# --- upload -------------------------------------------------------------------------------


class _Once:
    """A ``behind`` callback that runs at most once, whichever path gets there first."""

    def __init__(self, fn: Callable[[], None] | None) -> None:
        self.fn = fn

    def __call__(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn()


async def upload(
    link: Link,
    consult: str,
    sha: bytes,
    source: bytes | Path,
    *,
    timeout: float,
    progress: Progress | None = None,
    limits: TransferLimits = TRANSFER,
    fresh: bool = False,
    behind: Callable[[], None] | None = None,
) -> TransferReport:
    """Upload a blob for ``consult`` until the relay holds all of it; LinkDown when the link
    does not allow it within ``timeout`` (what was acknowledged stays at the relay and the
    next call resumes there), a RemoteError when the relay refuses it for good.

    ``fresh``: the blob was just made here, so the first round puts from 0 without a head
    (should the relay hold part of it after all, that first window crosses the link for
    nothing, once; later rounds, after a cut or an error, ask the head, so that a cut costs
    at most the chunk it interrupted). ``behind`` runs once: right after the last chunk's
    put is written when the link is up and free for blobs, else once the relay holds the
    whole blob (see the module doc)."""
    src = _Source(source)
    if not 0 < src.size <= limits.max_blob:
        raise LimitExceeded(f"blob of {src.size} bytes: the limit is 1..{limits.max_blob}")
    report = TransferReport(src.size)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    failures, restarted, skip_head = 0, False, fresh
    then = _Once(behind)
    while True:
        before = report.done
        try:
            if skip_head:
                skip_head, have, complete = False, 0, False
            else:
                head = await link.request(
                    "blob.head",
                    {"consult": consult, "sha": sha, "size": src.size},
                    _wait(limits, deadline, loop),
                )
                report.heads += 1
                have, complete = _answer(head, src.size)
            declare = not report.rounds and fresh
            report.rounds.append(have)
            report.done = max(report.done, have)
            if not complete:
                await _put_window(
                    link, consult, sha, src, have, report, limits, deadline, progress, declare, then
                )
            report.done = src.size
            then()
            if progress is not None:
                progress(src.size, src.size)
            log.info(
                "uploaded blob=%s size=%d chunks=%d rounds=%d heads=%d in %.2f s",
                sha.hex()[:12],
                src.size,
                report.chunks,
                len(report.rounds),
                report.heads,
                loop.time() - started,
            )
            return report
        except RemoteError as exc:
            if exc.code == "bad_request" and not restarted:  # e.g. the relay's hash check: once more
                restarted = True
                continue
            if exc.code != "error":
                raise
            reason = exc.reason
        except (LinkDown, NotFound) as exc:  # NotFound: the relay lost the partial; head again
            reason = str(exc)
        failures = 0 if report.done > before else failures + 1
        remaining = deadline - loop.time()
        if failures > limits.attempts or remaining <= 0:
            raise LinkDown(f"upload stopped at {report.done} of {src.size} bytes: {reason}")
        log.info("upload of blob=%s paused at %d: %s", sha.hex()[:12], report.done, reason)
        await asyncio.sleep(
            min(remaining, backoff(failures, limits.backoff_first, limits.backoff_max, random.random()))
        )


async def _put_window(
    link: Link,
    consult: str,
    sha: bytes,
    src: _Source,
    have: int,
    report: TransferReport,
    limits: TransferLimits,
    deadline: float,
    progress: Progress | None,
    declare: bool = False,
    behind: Callable[[], None] | None = None,
) -> None:
    """Send chunks from ``have`` with up to ``limits.window`` in flight; returns when the
    relay says the blob is complete. The relay answers a chunk at the wrong offset with its
    own offset and writes nothing, so a misalignment costs the window, never correctness.
    ``declare``: the put at offset 0 carries the size (it starts the upload: no head).
    ``behind`` runs right after the last chunk's put when that put goes out at once, else (the
    puts wait for the link to come up, or for a call to end) at the round's first answer: the
    waiting puts were released together, in order, and each wrote its frame as it woke, a
    round trip before any answer can come back."""
    loop = asyncio.get_running_loop()
    inflight: deque[tuple[int, int, asyncio.Future[object]]] = deque()
    nxt = have
    held = False  # the last chunk's put is waiting, and ``behind`` with it
    try:
        while True:
            while len(inflight) < limits.window and nxt < src.size:
                n = min(limits.chunk, src.size - nxt)
                args: dict[str, object] = {"consult": consult, "sha": sha, "offset": nxt}
                args["data"] = src.read(nxt, n)
                if declare and nxt == 0:
                    args["size"] = src.size
                # the task writes its frame when it first runs (the link is up and free for
                # blobs): tasks start in the order they were made, so what ``behind`` sends
                # in a task made after this one follows this chunk on the wire
                task = asyncio.ensure_future(link.request("blob.put", args, _wait(limits, deadline, loop)))
                inflight.append((nxt, n, task))
                report.offsets.append(nxt)
                report.chunks += 1
                report.bytes += n
                log.debug("put blob=%s offset=%d n=%d", sha.hex()[:12], nxt, n)
                nxt += n
                if nxt == src.size and behind is not None:
                    held = not _goes_at_once(link)
                    if not held:
                        report.behind_early = True
                        behind()
            if not inflight:
                raise WireError("the relay took every byte but did not complete the blob")
            offset, n, task = inflight.popleft()
            got, complete = _answer(await task, src.size)
            if held and behind is not None and _goes_at_once(link) and (complete or got == offset + n):
                held = False
                report.behind_early = not complete or bool(inflight)
                behind()
            if complete:
                return
            if got == offset + n:
                report.done = max(report.done, got)
                if progress is not None:
                    progress(got, src.size)
                continue
            report.realigned += 1  # the relay is elsewhere (answers lost in a cut): go on from there
            if report.realigned > limits.max_realign:
                raise WireError("the relay keeps moving the upload offset")
            await _cancel(inflight)
            report.done = max(report.done, got)
            nxt = got
    finally:
        await _cancel(inflight)


async def _cancel(inflight: deque[tuple[int, int, asyncio.Future[object]]]) -> None:
    tasks = [t for _, _, t in inflight]
    inflight.clear()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _answer(result: object, size: int) -> tuple[int, bool]:
    """(have, complete) from a head/put answer, checked: a relay is not trusted blindly."""
    if not isinstance(result, dict):
        raise WireError("blob answer is not a map")
    have, complete = result.get("have"), result.get("complete", False)
    if type(have) is not int or not 0 <= have <= size or type(complete) is not bool:
        raise WireError("blob answer out of range")
    return have, complete  # only the relay's word: a full partial is not yet a verified blob


def _goes_at_once(link: Link) -> bool:
    """Will a request made now be written before anything made after it? Yes when the link
    is up and no call holds blobs back (``Link.request`` then writes without waiting)."""
    return link.status.state == "online" and link.bulk_allowed.is_set()


def _wait(limits: TransferLimits, deadline: float, loop: asyncio.AbstractEventLoop) -> float:
    return max(0.001, min(limits.answer_timeout, deadline - loop.time()))


# --- download -----------------------------------------------------------------------------


async def download(
    link: Link,
    sha: bytes,
    cache: BlobCache,
    *,
    size: int | None = None,
    timeout: float,
    progress: Progress | None = None,
    limits: TransferLimits = TRANSFER,
    report: TransferReport | None = None,
) -> Path:
    """The cached file of blob ``sha``, fetched (resuming a partial file) if not cached yet.

    ``size`` comes from the note's message; without it the first answer tells. The result is
    checked against ``sha`` before it joins the cache; a partial that turns out wrong is
    dropped and fetched once more from 0. NotFound when the relay has no such blob for us."""
    if cache.has(sha):
        return cache.path(sha)
    if size is not None and not 0 < size <= limits.max_blob:
        raise LimitExceeded(f"blob of {size} bytes: the limit is 1..{limits.max_blob}")
    report = report if report is not None else TransferReport(size or 0)
    part = cache.partial_path(sha)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failures, restarted = 0, False
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        before = have
        report.rounds.append(have)
        try:
            if size is None or have < size:
                size = await _get_window(link, sha, part, have, size, report, limits, deadline, progress)
            path = cache.adopt(part, sha)
            log.info("downloaded blob=%s size=%d chunks=%d", sha.hex()[:12], size, report.chunks)
            return path
        except WireError:
            if restarted or part.exists():
                raise
            restarted = True  # adopt() dropped a partial that did not match: fetch it once more
            continue
        except RemoteError as exc:
            if exc.code != "error":
                raise
            reason = exc.reason
        except LinkDown as exc:
            reason = str(exc)
        done = part.stat().st_size if part.exists() else 0
        failures = 0 if done > before else failures + 1
        remaining = deadline - loop.time()
        if failures > limits.attempts or remaining <= 0:
            raise LinkDown(f"download stopped at {done} bytes: {reason}")
        await asyncio.sleep(
            min(remaining, backoff(failures, limits.backoff_first, limits.backoff_max, random.random()))
        )


async def _get_window(
    link: Link,
    sha: bytes,
    part: Path,
    have: int,
    size: int | None,
    report: TransferReport,
    limits: TransferLimits,
    deadline: float,
    progress: Progress | None,
) -> int:
    """Append the blob from ``have`` to the partial file, up to ``window`` gets in flight,
    written strictly in offset order; returns the blob's size."""
    loop = asyncio.get_running_loop()
    inflight: deque[tuple[int, int, asyncio.Future[object]]] = deque()

    def ask(offset: int, n: int) -> asyncio.Future[object]:
        report.offsets.append(offset)
        report.chunks += 1
        report.bytes += n
        args = {"sha": sha, "offset": offset, "length": n}
        return asyncio.ensure_future(link.request("blob.get", args, _wait(limits, deadline, loop)))

    with open(part, "ab") as f:
        nxt = have
        try:
            if size is None:  # a play by blob id: one get from 0 learns the size
                data, size = _got(await ask(0, limits.chunk), 0, None, limits)
                if len(data) != min(limits.chunk, size):
                    raise WireError("blob chunk of the wrong length")
                if have == 0 or have > size:
                    f.truncate(0)
                    f.write(data)
                    f.flush()
                    nxt = len(data)
            report.size = size
            while nxt < size or inflight:
                while len(inflight) < limits.window and nxt < size:
                    n = min(limits.chunk, size - nxt)
                    inflight.append((nxt, n, ask(nxt, n)))
                    nxt += n
                offset, n, task = inflight.popleft()
                data, _ = _got(await task, offset, size, limits)
                if len(data) != n:
                    raise WireError("blob chunk of the wrong length")
                f.write(data)
                f.flush()
                report.done = offset + n
                if progress is not None:
                    progress(offset + n, size)
        finally:
            await _cancel(inflight)
    return size


async def fetch_blob(
    link: Link,
    cache: BlobCache,
    sha: bytes,
    check: Callable[[bytes], T],
    *,
    size: int | None = None,
    timeout: float,
    progress: Progress | None = None,
) -> T:
    """``check`` of blob ``sha`` as this device holds it (downloaded first when it is not
    here: resumable, verified by SHA-256). ``check`` opens it under its message's key
    (``filecrypt.unseal``) and may decode it; when it raises Tampered the cached file goes
    before the error does, so a blob that does not open is never shown, nor counted as
    here, and the next look fetches it again."""
    if not cache.has(sha):
        await download(link, sha, cache, size=size, timeout=timeout, progress=progress)
    data = cache.read(sha)  # checked against its SHA-256
    try:
        return check(data)
    except Tampered:
        cache.path(sha).unlink(missing_ok=True)
        log.warning(
            "blob=%s size=%d does not open under its message's key: dropped", sha.hex()[:12], len(data)
        )
        raise


def _got(result: object, offset: int, size: int | None, limits: TransferLimits) -> tuple[bytes, int]:
    if not isinstance(result, dict):
        raise WireError("blob answer is not a map")
    data, total = result.get("data"), result.get("size")
    if type(data) is not bytes or type(total) is not int or not 0 < total <= limits.max_blob:
        raise WireError("blob answer out of range")
    if size is not None and total != size:
        raise WireError("the blob's size differs from its note's")
    return data, total


# --- voice notes --------------------------------------------------------------------------

NoteProgress = Callable[[PendingNote, int, int], None]  # (note, bytes acknowledged, note size)
_CID_HEX = re.compile(r"^[0-9a-f]{32}$")
_SHA_HEX = re.compile(r"^[0-9a-f]{64}$")
_PERMANENT = ("denied", "limit", "bad_request")  # relay codes a retry cannot change


@dataclass(frozen=True)
class NotesResult:
    """What :func:`send_pending_notes` did: notes now in the outbox, and notes the relay will
    never take (kept on the device, marked failed, no longer retried)."""

    queued: list[OutItem]
    failed: list[tuple[PendingNote, MedcommError]]


def _cache(session: Session) -> BlobCache:
    """The device's blob cache, in the same data dir as the session's local store."""
    return BlobCache(session.store.path.parent)


def check_consult(consult: str) -> str:
    """A consult id as typed, normalised, or UsageError (before a note is recorded)."""
    try:
        return wire.consult_id(consult.strip().lower())
    except WireError:
        raise UsageError(f"{consult!r} is not a consult id (6 letters/digits, e.g. k7m2qd)") from None


def record_note(session: Session, consult: str, ogg: bytes) -> PendingNote:
    """Make a voice note durable on this device (blob in the cache, then a pending row),
    before anything is uploaded: from here on a crash or a dead link cannot lose it. The
    blob is the Ogg file sealed under a fresh key, which only the note's body carries."""
    from medcomm.adapters.oggopus import note_duration

    consult = check_consult(consult)
    duration = note_duration(ogg)  # validates the whole file; needs no libopus
    key = filecrypt.new_key()
    sealed = filecrypt.seal(key, ogg)
    with _cache(session) as cache:
        sha = cache.put(sealed)
        note = cache.add_pending(consult, sha, len(sealed), note_body(sha, len(sealed), duration, key))
    log.info("note recorded cid=%s blob=%s size=%d", note.cid.hex(), sha.hex()[:12], len(sealed))
    return note


async def deliver_note(
    session: Session, note: PendingNote, *, timeout: float, progress: NoteProgress | None = None
) -> OutItem:
    """Upload one pending note, then queue its message in the outbox (same client id on
    every retry) and forget the pending row; returns the queued item."""
    with _cache(session) as cache:
        data = cache.read(note.sha)
        step = None if progress is None else (lambda done, total: progress(note, done, total))
        await upload(session.link, note.consult, note.sha, data, timeout=timeout, progress=step)
        item = OutItem(note.cid, note.consult, wire.KINDS["note"], note.body)
        session.store.enqueue(item)  # durable (fsync) before the pending row goes
        cache.done(note.cid)
    await session.link.submit(item)
    return item


async def send_pending_notes(
    session: Session, timeout: float, progress: NoteProgress | None = None
) -> NotesResult:
    """Finish every note recorded on this device, oldest first (``medcomm sync`` and
    ``medcomm note`` call this). LinkDown when the link fails within ``timeout``: the rest
    stay pending. A note the relay refuses for good (not a member, too large) is marked
    failed and kept, and the others go on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    queued: list[OutItem] = []
    failed: list[tuple[PendingNote, MedcommError]] = []
    with _cache(session) as cache:
        pending = cache.pending()
    for note in pending:
        try:
            remaining = max(0.001, deadline - loop.time())
            queued.append(await deliver_note(session, note, timeout=remaining, progress=progress))
        except (AccessDenied, RemoteError, NotFound, LimitExceeded) as exc:
            if isinstance(exc, RemoteError) and exc.code not in _PERMANENT:
                raise
            with _cache(session) as cache:
                cache.failed(note.cid, str(exc))
            failed.append((note, exc))
            log.warning("note cid=%s failed for good: %s", note.cid.hex(), type(exc).__name__)
    return NotesResult(queued, failed)


def check_note_id(note_id: str) -> str:
    """The id normalised, or UsageError: a message id (32 hex, the "id" or "note" of
    ``medcomm history --json``) or a blob id (64 hex, the SHA-256 in the note's body)."""
    key = note_id.strip().lower()
    if not (_CID_HEX.fullmatch(key) or _SHA_HEX.fullmatch(key)):
        raise UsageError(f'{note_id!r} is not a note id (the 32-hex "id" of medcomm history --json)')
    return key


def locate_note(session: Session, note_id: str) -> tuple[bytes, int | None]:
    """(blob sha, size) of a note named by its message id or its blob id (see
    :func:`check_note_id`); a message id is looked up in history, the outbox and the
    pending notes. A blob id's size comes with the first chunk when no note here names it."""
    sha, size, _ = _locate(session, note_id)
    return sha, size


def _locate(session: Session, note_id: str) -> tuple[bytes, int | None, bytes | None]:
    """(blob sha, size, key) of a note; the key of a note named by its blob id comes from
    the message on this device that names that blob (None when there is none)."""
    key = check_note_id(note_id)
    if _SHA_HEX.fullmatch(key):
        sha = bytes.fromhex(key)
        info = _note_naming(session, sha)
        return (sha, None, None) if info is None else (sha, info.size, info.key)
    cid = bytes.fromhex(key)
    db: Any = session.store.db  # read-only lookups by the indexed client id
    row = db.execute("SELECT kind, body FROM messages WHERE cid=?", (cid,)).fetchone()
    row = row or db.execute("SELECT kind, body FROM outbox WHERE cid=?", (cid,)).fetchone()
    if row is None:
        with _cache(session) as cache:
            pending = cache.find_pending(cid)
        if pending is None:
            raise NotFound(f"no message {key} on this device (try medcomm sync)")
        row = (wire.KINDS["note"], pending.body)
    if row[0] != wire.KINDS["note"]:
        raise UsageError(f"message {key} is not a voice note")
    info = parse_note_body(row[1])
    return info.sha, info.size, info.key


def _note_naming(session: Session, sha: bytes) -> NoteInfo | None:
    """The note on this device (history, outbox, pending) whose body names blob ``sha``: a
    body holds the id as hex text, so SQLite finds it without decoding every note."""
    db: Any = session.store.db
    needle = sha.hex().encode()
    for table in ("messages", "outbox"):
        rows = db.execute(
            f"SELECT body FROM {table} WHERE kind=? AND instr(body, ?) > 0 LIMIT 8",
            (wire.KINDS["note"], needle),
        ).fetchall()
        for (body,) in rows:
            try:
                info = parse_note_body(body)
            except WireError:
                continue
            if info.sha == sha:
                return info
    with _cache(session) as cache:
        pending = [n for n in cache.pending(include_failed=True) if n.sha == sha]
    return parse_note_body(pending[0].body) if pending else None


def _ogg(key: bytes | None, sha: bytes, data: bytes) -> bytes:
    """A note blob opened under its message's key; a plain one (an old note) must be Ogg."""
    if key is None and not data.startswith(b"OggS"):
        raise NotFound(
            f"blob {sha.hex()[:12]} is sealed and no note on this device names it: "
            "play it by its message id (after medcomm sync)"
        )
    return filecrypt.unseal(key, data)


async def fetch_note(
    session: Session, note_id: str, *, timeout: float, progress: Progress | None = None
) -> bytes:
    """The Ogg Opus bytes of a note: from the cache, else downloaded (resumable, verified),
    then opened under the key its message carries (Tampered when it does not open). A
    message id this device does not know yet is looked up again after a sync."""
    try:
        sha, size, key = _locate(session, note_id)
    except NotFound:
        await session.sync(timeout)
        sha, size, key = _locate(session, note_id)
    with _cache(session) as cache:
        return await fetch_blob(
            session.link,
            cache,
            sha,
            lambda data: _ogg(key, sha, data),
            size=size,
            timeout=timeout,
            progress=progress,
        )

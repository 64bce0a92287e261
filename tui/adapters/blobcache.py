"""The device's blob cache and its durable "pending sends" table.

A voice note must survive everything between the moment a clinician stops recording and
the relay's acknowledgement of the message that points at it: a link that is down for an
hour, a killed process, a flat battery. So, in this order and before any byte is uploaded:

1. the encoded note is written into a content-addressed cache (``<data dir>/blobs/<2>/<64>``,
   written to a temporary name, fsynced, renamed, directory fsynced);
2. a row naming it (client message id, consult, SHA-256, the message body) is committed to
   ``<data dir>/pending.sqlite3`` with ``synchronous=FULL``.

``medcomm note`` and ``medcomm sync`` then upload every pending note (resuming at the relay's
offset), queue its message through the normal outbox with the row's client id (the same id
on every retry, so a crash between queueing and deleting the row cannot duplicate it), and
only then delete the row. The table lives in its own file so the outbox's schema stays the
outbox's. Downloads resume into ``<data dir>/blobs/partial/<64>`` and are verified by SHA-256
before they join the cache.

The note message body (kind ``note``) is msgpack ``{"blob": sha hex, "size": bytes,
"duration_s": seconds, "mime": "audio/ogg", "k": 32-byte key}``; :func:`note_body` builds it
and :func:`parse_note_body` checks one from another device. The blob is the Ogg file sealed
under ``k`` (:mod:`medcomm.core.filecrypt`, a fresh key per note), so ``blob`` and ``size``
are the sealed file's, the one the relay stores; a body without ``k`` (from before notes
were sealed) names the plain Ogg file.

What the cache holds is what the relay holds: blobs under their SHA-256, sealed ones as
sealed. So every file here was verified (by its hash on the way in, by :meth:`BlobCache.read`
on the way out), a sender's upload resumes on the very bytes it began with, and opening
under the message's key happens on each read (XChaCha20 costs ~50 ms per 16 MiB).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import msgpack

from medcomm.core import filecrypt, wire
from medcomm.errors import LimitExceeded, NotFound, WireError


@dataclass(frozen=True)
class CacheLimits:
    """What the local cache accepts: the relay's blob limit, and a body that stays small."""

    max_blob: int = 16 * 1024 * 1024  # the relay's BlobLimits.max_size
    max_body: int = 256  # bytes of a note message body (it is ~110)
    max_pending: int = 1000  # notes waiting for the link before recording refuses another
    max_cache_bytes: int = 256 * 1024 * 1024  # fetched blobs kept (~36 h of notes); oldest go first
    partial_days: float = 7.0  # an abandoned partial download older than this is removed


CACHE = CacheLimits()
NOTE_MIME = "audio/ogg"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    cid BLOB PRIMARY KEY, consult TEXT NOT NULL, sha BLOB NOT NULL, size INTEGER NOT NULL,
    body BLOB NOT NULL, created REAL NOT NULL, error TEXT
);
CREATE TABLE IF NOT EXISTS pins (
    owner BLOB NOT NULL, sha BLOB NOT NULL, PRIMARY KEY (owner, sha)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class NoteInfo:
    """What a note message says about its blob."""

    sha: bytes
    size: int
    duration_s: float
    mime: str
    key: bytes | None = None  # the blob is sealed under it; None: an old note, a plain Ogg file


@dataclass(frozen=True, slots=True)
class PendingNote:
    """A recorded note not yet queued in the outbox: everything needed to finish sending it."""

    cid: bytes
    consult: str
    sha: bytes
    size: int
    body: bytes
    created: float
    error: str | None = None


def note_body(sha: bytes, size: int, duration_s: float, key: bytes | None = None) -> bytes:
    """The body of a kind-``note`` message pointing at blob ``sha`` (sealed under ``key``)."""
    obj: dict[str, object] = {"blob": sha.hex(), "size": size, "duration_s": round(duration_s, 3)}
    obj["mime"] = NOTE_MIME
    if key is not None:
        if len(key) != filecrypt.KEY_LEN:
            raise WireError("a note key is 32 bytes")
        obj["k"] = key
    return msgpack.packb(obj, use_bin_type=True)


def parse_note_body(body: bytes, limits: CacheLimits = CACHE) -> NoteInfo:
    """Check a note body from another device; WireError when it is not one."""
    if len(body) > limits.max_body:
        raise WireError("note body too large", size=len(body))
    try:
        obj = msgpack.unpackb(body, raw=False, max_str_len=limits.max_body, max_map_len=16)
    except Exception:
        raise WireError("note body is not msgpack") from None
    if not isinstance(obj, dict):
        raise WireError("note body is not a map")
    sha, size, duration, mime = obj.get("blob"), obj.get("size"), obj.get("duration_s"), obj.get("mime")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise WireError("note body has no blob id")
    if type(size) is not int or not 0 < size <= limits.max_blob:
        raise WireError("note body has a bad size")
    if type(duration) not in (int, float) or not 0 <= duration < 86400:  # type: ignore[operator]
        raise WireError("note body has a bad duration")
    key = obj.get("k")
    if "k" in obj and (type(key) is not bytes or len(key) != filecrypt.KEY_LEN):
        raise WireError("note body has a bad key")
    if key is not None and filecrypt.plain_size(size) is None:
        raise WireError("note body has a size no sealed note has")
    return NoteInfo(bytes.fromhex(sha), size, float(duration), str(mime or NOTE_MIME), key)  # type: ignore[arg-type]


class BlobCache:
    """Content-addressed files under a device's data dir, plus the pending-sends table."""

    def __init__(self, data_dir: Path, limits: CacheLimits = CACHE) -> None:
        self.limits = limits
        self.root = data_dir / "blobs"
        self.partial_dir = self.root / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(data_dir / "pending.sqlite3", isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a recorded note is acknowledged work
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- blobs ----------------------------------------------------------------------------

    def path(self, sha: bytes) -> Path:
        return blob_file(self.root, sha)

    def partial_path(self, sha: bytes) -> Path:
        return self.partial_dir / sha.hex()

    def has(self, sha: bytes) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes) -> bytes:
        """Store data durably under its SHA-256 (returned); a second put of it is free."""
        if len(data) > self.limits.max_blob:
            raise LimitExceeded(f"blob of {len(data)} bytes over the limit of {self.limits.max_blob}")
        sha = hashlib.sha256(data).digest()
        final = self.path(sha)
        if final.is_file() and final.stat().st_size == len(data):
            return sha
        tmp = self.partial_dir / f"{sha.hex()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._place(tmp, final)
        return sha

    def adopt(self, partial: Path, sha: bytes) -> Path:
        """Move a finished download into the cache once it proves to be ``sha``; a file that
        does not match is deleted (WireError), so the next attempt starts clean."""
        if file_sha(partial) != sha:
            partial.unlink(missing_ok=True)
            raise WireError("the downloaded blob does not match its SHA-256")
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        final = self.path(sha)
        self._place(partial, final)
        self.trim(keep=sha)
        return final

    def trim(self, keep: bytes | None = None) -> int:
        """Keep fetched blobs under ``max_cache_bytes`` by removing the least recently
        used (a removed note is fetched again if played). A blob a pending note or a
        pin (an image still uploading, an original kept for requests) needs is never
        removed, nor counted: kept originals have their own bound (``ShareLimits``), and
        must not push every fetched blob out. Returns the bytes freed."""
        needed = {row[0] for row in self.db.execute("SELECT sha FROM pending")}
        needed |= {row[0] for row in self.db.execute("SELECT sha FROM pins")}
        if keep is not None:
            needed.add(keep)
        files = []
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if _HEX64.fullmatch(f.name) and bytes.fromhex(f.name) in needed:
                        continue
                    st = f.stat()
                    files.append((max(st.st_atime, st.st_mtime), st.st_size, f))
        total = sum(size for _, size, _ in files)
        freed = 0
        for _, size, f in sorted(files):
            if total - freed <= self.limits.max_cache_bytes:
                break
            if _HEX64.fullmatch(f.name) and bytes.fromhex(f.name) not in needed:
                f.unlink(missing_ok=True)
                freed += size
        cutoff = time.time() - self.limits.partial_days * 86400
        for f in self.partial_dir.iterdir():
            if f.stat().st_mtime < cutoff:
                f.unlink(missing_ok=True)
        return freed

    def read(self, sha: bytes) -> bytes:
        """A cached blob, checked against its id (a damaged file is dropped: NotFound)."""
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {sha.hex()[:12]} is not on this device") from None
        if hashlib.sha256(data).digest() != sha:
            self.path(sha).unlink(missing_ok=True)
            raise NotFound(f"blob {sha.hex()[:12]} on this device was damaged; fetch it again")
        os.utime(self.path(sha))  # recently used: trim() removes the least recently used first
        return data

    def _place(self, src: Path, final: Path) -> None:
        final.parent.mkdir(exist_ok=True)
        os.replace(src, final)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- pending sends --------------------------------------------------------------------

    def add_pending(self, consult: str, sha: bytes, size: int, body: bytes) -> PendingNote:
        """Record a note to send (fsync) before anything is uploaded; returns it with its
        client message id, which the outbox uses on every retry."""
        consult = wire.consult_id(consult)
        if not self.has(sha):
            raise NotFound("put the blob in the cache before recording it as pending")
        if len(body) > self.limits.max_body:
            raise LimitExceeded(f"note body of {len(body)} bytes over {self.limits.max_body}")
        if self.pending_count() >= self.limits.max_pending:
            raise LimitExceeded(
                f"{self.limits.max_pending} notes already wait for the link: run medcomm sync"
            )
        note = PendingNote(secrets.token_bytes(wire.CID_LEN), consult, sha, size, body, time.time())
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO pending VALUES (?,?,?,?,?,?,NULL)",
                (note.cid, note.consult, note.sha, note.size, note.body, note.created),
            )
        return note

    def pending(self, include_failed: bool = False) -> list[PendingNote]:
        """Notes still to send, oldest first (failed ones only when asked)."""
        where = "" if include_failed else "WHERE error IS NULL"
        return [
            PendingNote(*row)
            for row in self.db.execute(
                f"SELECT cid, consult, sha, size, body, created, error FROM pending {where} ORDER BY created"
            )
        ]

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM pending WHERE error IS NULL").fetchone()[0])

    def find_pending(self, cid: bytes) -> PendingNote | None:
        row = self.db.execute(
            "SELECT cid, consult, sha, size, body, created, error FROM pending WHERE cid=?", (cid,)
        ).fetchone()
        return None if row is None else PendingNote(*row)

    def failed(self, cid: bytes, reason: str) -> None:
        """The relay will never take this note (not a member, too large): stop retrying it,
        but keep it (and its blob) so it is not lost silently."""
        with self.db:
            self.db.execute("UPDATE pending SET error=? WHERE cid=?", (reason[:500], cid))

    def pin(self, owner: bytes, shas: list[bytes]) -> None:
        """Keep these blobs out of :meth:`trim` until ``unpin(owner)``: an image's tiles and
        original stay on the device until the relay holds them. Opens no transaction of its
        own, so a caller inside ``BEGIN IMMEDIATE`` pins atomically with its own row."""
        self.db.executemany("INSERT OR IGNORE INTO pins VALUES (?,?)", [(owner, s) for s in shas])

    def unpin(self, owner: bytes) -> None:
        """Release every pin of ``owner`` (no transaction of its own, like :meth:`pin`)."""
        self.db.execute("DELETE FROM pins WHERE owner=?", (owner,))

    def done(self, cid: bytes) -> None:
        """The note's message is durable in the outbox: the row has done its job."""
        with self.db:
            self.db.execute("DELETE FROM pending WHERE cid=?", (cid,))


def blob_file(root: Path, sha: bytes) -> Path:
    """Where blob ``sha`` lives under a cache root (``<data dir>/blobs``): for readers that
    only need to know whether it is here (history lines), without opening the cache."""
    name = sha.hex()
    return root / name[:2] / name


def file_sha(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()

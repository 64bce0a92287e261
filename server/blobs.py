"""The relay's blob store: content-addressed files uploaded in small chunks that resume.

Voice notes (and later images) cross links that cut every few minutes, so an upload is a
series of small ``blob.put`` requests, each acknowledged only once its bytes are on disk,
and a reconnecting client asks ``blob.head`` where to go on. Requests (msgpack maps in, a
dict out; errors are ``UsageError``/``LimitExceeded``/``AccessDenied``/``NotFound``, which
the relay turns into ``Err`` frames)::

    blob.head {consult, sha, size}          -> {have, complete}
    blob.put  {consult, sha, offset, data[, size]}  -> {have, complete}   data <= BlobLimits.chunk
    blob.get  {sha, offset, length}         -> {data, size}       length <= BlobLimits.chunk

``sha`` is the 32-byte SHA-256 of the whole blob (binary: msgpack carries bytes).

A put that carries ``size`` starts the upload itself when there is none (with every check a
head makes), so a client that knows its blob is new skips the head and its round trip (on
EDGE ~0.4 s, on GPRS ~0.7 s, per blob): a first view's chunks go out at once. If the relay
already holds part of it, that put writes nothing and answers the stored offset, as any put
at a wrong offset does, and the client goes on from there; if it holds all of it (and the
user may read it), the answer is ``complete``.

Durability, the reason for this layout:

* A partial upload is a plain file whose **length is the stored offset**; each chunk is
  appended with ``pwrite`` and ``fsync``-ed before its ``Ok`` goes out, so an offset the client
  was told survives a SIGKILL or a power cut, and a crash between write and answer leaves at
  most a longer (still correct) prefix, which the next ``blob.head`` reports.
* A put at any other offset than the stored one writes nothing and answers the stored offset,
  so a client that lost answers in a cut re-aligns without an error round trip.
* When the last byte arrives the file is hashed; a mismatch empties it (the upload starts
  again) and a match is hard-linked into place (atomic; the directory is fsynced) before the
  metadata commit, and only then unlinked from the partials. Startup completes a full
  partial whose commit a crash cut off and removes partial files no row owns.
* Metadata lives in its own SQLite file (WAL, ``synchronous=FULL``), beside the relay's.

Access: ``head``/``put`` need membership of ``consult``; ``get`` needs membership of some
consult the blob was uploaded for. Partial uploads are per user, so one member can never
spoil another's upload. A blob that already exists is linked to a new consult without
re-upload only for a user who can already read it; anyone else proves possession by
uploading every byte (a known hash alone must not open a patient's note). ``get`` answers
"not found" both for an unknown blob and for one the user may not read, so a guessed hash
tells nothing.

Layout under the data dir::

    blobs.sqlite3                    metadata (blobs, uploads, partials)
    blobs/<2 hex>/<64 hex>           complete, verified blobs
    blobs/partial/<64 hex>.<user>    partial uploads (length = stored offset)

Every call is synchronous and short (one ``pwrite`` + ``fsync`` of at most one chunk, or one
hash of at most ``max_size`` at completion). The relay makes the calls on a thread of its own,
one at a time in arrival order, never on its event loop: there, an fsync or the final hash
held every call's voice frames for as long. A disk or database failure answers code "error"
(clients retry), never drops the connection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medcomm.core import wire
from medcomm.errors import AccessDenied, LimitExceeded, MedcommError, NotFound, UsageError

log = logging.getLogger("medcomm.blobs")

SHA_LEN = 32


@dataclass(frozen=True)
class BlobLimits:
    """What blobs may cost the relay; each bound is checked before any byte is written."""

    max_size: int = 16 * 1024 * 1024  # one blob (a voice note is <= 8 MiB, see OggLimits)
    chunk: int = 8 * 1024  # bytes per put/get: ~2.7 s at EDGE's 24 kbit/s, so chat waits little
    max_partials: int = 8  # unfinished uploads per user (bounds disk: 8 x max_size per user)
    partial_idle: float = 7 * 24 * 3600.0  # seconds; an idle partial may then be evicted by a new one
    max_consults: int = 256  # consults one blob may be linked to (bounds the access check)
    # bytes one user's blobs (finished and begun) may hold at the relay: a clinic's year of
    # report photos' first views and tiles is a few hundred MB; a runaway script stops here
    user_quota: int = 4 * 1024**3


BLOBS = BlobLimits()

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha BLOB PRIMARY KEY, size INTEGER NOT NULL, created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    sha BLOB NOT NULL, consult TEXT NOT NULL, user TEXT NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (sha, consult)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_user ON uploads(user);
CREATE TABLE IF NOT EXISTS partials (
    user TEXT NOT NULL, sha BLOB NOT NULL, consult TEXT NOT NULL, size INTEGER NOT NULL,
    created INTEGER NOT NULL, PRIMARY KEY (user, sha)
) WITHOUT ROWID;
"""

#: Whether the asking user is a member of a consult. A predicate, not a member list: the relay
#: answers it from a snapshot of the user's consults taken on its loop, so the blob thread
#: never touches the relay's own database connection.
MemberOf = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Partial:
    user: str
    sha: bytes
    consult: str
    size: int


class BlobStore:
    """Blob files and their metadata under a relay data dir; one instance per relay process."""

    def __init__(self, data_dir: Path, limits: BlobLimits = BLOBS) -> None:
        self.limits = limits
        self.root = data_dir / "blobs"
        self.partial_dir = self.root / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(data_dir / "blobs.sqlite3", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self._recover()

    def close(self) -> None:
        self.db.close()

    # --- requests -------------------------------------------------------------------------

    def request(self, user: str, op: str, args: dict[str, object], member_of: MemberOf) -> object:
        """Answer one ``blob.*`` request from ``user`` (the relay has authenticated them).

        A disk or database failure becomes a plain MedcommError (code "error", which clients
        retry) instead of escaping into the relay's connection handler and dropping the link."""
        handler = {"blob.head": self.head, "blob.put": self.put, "blob.get": self.get}.get(op)
        if handler is None:
            raise UsageError(f"unknown request {op!r}")
        try:
            return handler(user, args, member_of)
        except (OSError, sqlite3.Error) as exc:
            log.warning("blob %s failed user=%s: %s", op, user, type(exc).__name__)
            raise MedcommError("the relay could not store or read the blob; try again") from None

    def head(self, user: str, args: dict[str, object], member_of: MemberOf) -> dict[str, object]:
        """Where an upload stands; starts one (within the per-user limit) if there is none."""
        consult = _member(args, member_of)
        sha = _sha(args)
        size = _uint(args, "size")
        partial = self._start(user, sha, consult, size, member_of)
        if partial is None:
            return {"have": size, "complete": True}
        have = self._have(partial)
        if have == size:  # every byte arrived but the last put's answer failed (or a crash): finish
            self._complete(partial, consult)
            return {"have": size, "complete": True}
        return {"have": have, "complete": False}

    def put(self, user: str, args: dict[str, object], member_of: MemberOf) -> dict[str, object]:
        """Append one chunk at the stored offset; any other offset writes nothing and answers
        the stored one (the client re-aligns). With ``size`` it may also start the upload."""
        consult = _member(args, member_of)
        sha = _sha(args)
        offset = _uint(args, "offset")
        data = args.get("data")
        if type(data) is not bytes or not data:
            raise UsageError("data must be non-empty bytes")
        if len(data) > self.limits.chunk:
            raise LimitExceeded(f"chunk of {len(data)} bytes over the limit of {self.limits.chunk}")
        if "size" in args:  # a new blob's chunk sent without a head: the put starts the upload
            size = _uint(args, "size")
            partial = self._start(user, sha, consult, size, member_of)
            if partial is None:
                return {"have": size, "complete": True}
        else:
            stored = self._size(sha)
            if stored is not None and self._link_if_readable(user, sha, consult, member_of):
                return {"have": stored, "complete": True}
            partial = self._partial(user, sha)
            if partial is None:
                raise NotFound("no upload of this blob in progress: blob.head first")
        if offset + len(data) > partial.size:
            raise LimitExceeded(f"chunk ends at {offset + len(data)}, past the declared {partial.size} bytes")
        path = self._partial_path(partial)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            have = os.fstat(fd).st_size
            if offset != have:
                return {"have": have, "complete": False}
            _pwrite_all(fd, data, offset)
            os.fsync(fd)  # before the answer: an acknowledged offset survives a crash
        finally:
            os.close(fd)
        if offset == 0:
            _fsync_dir(self.partial_dir)  # the new file's name is as durable as its bytes
        have = offset + len(data)
        if have < partial.size:
            return {"have": have, "complete": False}
        self._complete(partial, consult)
        return {"have": partial.size, "complete": True}

    def get(self, user: str, args: dict[str, object], member_of: MemberOf) -> dict[str, object]:
        """A range of a complete blob the user may read; unknown and unreadable look alike."""
        sha = _sha(args)
        offset = _uint(args, "offset")
        length = _uint(args, "length")
        if not 0 < length <= self.limits.chunk:
            raise LimitExceeded(f"length must be 1..{self.limits.chunk}")
        size = self._size(sha)
        if size is None or not self._readable(sha, member_of):
            raise NotFound("no such blob that you can read")
        if offset > size:
            raise UsageError(f"offset {offset} is past the end of a {size}-byte blob")
        with open(self._final_path(sha), "rb") as f:
            data = os.pread(f.fileno(), min(length, size - offset), offset)
        return {"data": data, "size": size}

    def _start(self, user: str, sha: bytes, consult: str, size: int, member_of: MemberOf) -> Partial | None:
        """The user's upload of ``sha``, started (within the per-user limit) if there is none;
        None when the blob is complete and now linked to ``consult``. Shared by ``head`` and a
        put that carries ``size``, so skipping the head skips none of its checks."""
        if not 0 < size <= self.limits.max_size:
            raise LimitExceeded(f"blob of {size} bytes: the limit is 1..{self.limits.max_size}")
        stored = self._size(sha)
        if stored is not None:
            if stored != size:
                raise UsageError(f"this blob has {stored} bytes, not {size}")
            if self._link_if_readable(user, sha, consult, member_of):
                return None
        partial = self._partial(user, sha)
        if partial is not None and partial.size != size:  # declared wrongly before: restart
            self._drop_partial(partial)
            partial = None
        if partial is None:
            self._make_room(user)
            self._check_quota(user, size)
            partial = Partial(user, sha, consult, size)
            with self.db:
                self.db.execute(
                    "INSERT INTO partials VALUES (?,?,?,?,?)", (user, sha, consult, size, _now_ms())
                )
        return partial

    # --- state ----------------------------------------------------------------------------

    def _size(self, sha: bytes) -> int | None:
        row = self.db.execute("SELECT size FROM blobs WHERE sha=?", (sha,)).fetchone()
        return None if row is None else int(row[0])

    def consult_of(self, sha: bytes, member_of: MemberOf) -> str:
        """A consult of the asking user's that links the blob (for the audit log), or ""."""
        rows = self.db.execute(
            "SELECT consult FROM uploads WHERE sha=? LIMIT ?", (sha, self.limits.max_consults)
        ).fetchall()
        return next((consult for (consult,) in rows if member_of(consult)), "")

    def _readable(self, sha: bytes, member_of: MemberOf) -> bool:
        rows = self.db.execute(
            "SELECT consult FROM uploads WHERE sha=? LIMIT ?", (sha, self.limits.max_consults)
        ).fetchall()
        return any(member_of(consult) for (consult,) in rows)

    def _link_if_readable(self, user: str, sha: bytes, consult: str, member_of: MemberOf) -> bool:
        """True when the blob is (now) attached to ``consult``: already, or because this user
        can read it anyway. False means the user must upload it to prove they hold it."""
        if self.db.execute("SELECT 1 FROM uploads WHERE sha=? AND consult=?", (sha, consult)).fetchone():
            return True
        if not self._readable(sha, member_of):
            return False
        self._link(sha, [consult], user)
        return True

    def _link(self, sha: bytes, consults: list[str], user: str) -> None:
        (count,) = self.db.execute("SELECT count(*) FROM uploads WHERE sha=?", (sha,)).fetchone()
        if count + len(consults) > self.limits.max_consults:
            raise LimitExceeded(f"a blob may be shared into at most {self.limits.max_consults} consults")
        with self.db:
            for consult in consults:
                self.db.execute(
                    "INSERT OR IGNORE INTO uploads VALUES (?,?,?,?)", (sha, consult, user, _now_ms())
                )

    def _partial(self, user: str, sha: bytes) -> Partial | None:
        row = self.db.execute(
            "SELECT consult, size FROM partials WHERE user=? AND sha=?", (user, sha)
        ).fetchone()
        return None if row is None else Partial(user, sha, row[0], int(row[1]))

    def _have(self, partial: Partial) -> int:
        try:
            return min(self._partial_path(partial).stat().st_size, partial.size)
        except FileNotFoundError:
            return 0

    def _make_room(self, user: str) -> None:
        """Enforce the per-user limit on unfinished uploads, evicting long-idle ones first."""
        rows = self.db.execute("SELECT sha, consult, size FROM partials WHERE user=?", (user,)).fetchall()
        if len(rows) < self.limits.max_partials:
            return
        cutoff = time.time() - self.limits.partial_idle
        for sha, consult, size in rows:
            partial = Partial(user, sha, consult, size)
            if _mtime(self._partial_path(partial)) < cutoff:
                self._drop_partial(partial)
                log.info("evicted idle partial upload user=%s sha=%s", user, sha.hex()[:12])
                return
        raise LimitExceeded(
            f"{len(rows)} uploads already in progress (the limit is {self.limits.max_partials})"
        )

    def _check_quota(self, user: str, size: int) -> None:
        """Refuse a new upload that would take the user's bytes at the relay (the blobs they
        uploaded or linked, each counted once, and their unfinished uploads) past the quota."""
        (held,) = self.db.execute(
            "SELECT coalesce(sum(size), 0) FROM blobs WHERE sha IN (SELECT sha FROM uploads WHERE user=?)",
            (user,),
        ).fetchone()
        (begun,) = self.db.execute(
            "SELECT coalesce(sum(size), 0) FROM partials WHERE user=?", (user,)
        ).fetchone()
        if held + begun + size > self.limits.user_quota:
            raise LimitExceeded(
                f"{user} holds {held + begun} bytes at the relay; {size} more would pass the "
                f"quota of {self.limits.user_quota}"
            )

    def _drop_partial(self, partial: Partial) -> None:
        with self.db:
            self.db.execute("DELETE FROM partials WHERE user=? AND sha=?", (partial.user, partial.sha))
        self._partial_path(partial).unlink(missing_ok=True)

    def _complete(self, partial: Partial, consult: str) -> None:
        """Verify a finished upload, link it into place, commit the metadata, then drop the
        partial. The hard link (atomic, like a rename) keeps the full partial file until the
        commit, so a crash anywhere leaves either a full partial that startup finishes or an
        orphan file that startup removes, and never credits another user's empty upload."""
        path = self._partial_path(partial)
        if _file_sha(path) != partial.sha:
            os.truncate(path, 0)  # the bytes are wrong somewhere: the upload starts again
            log.info("blob upload failed its SHA-256 user=%s sha=%s", partial.user, partial.sha.hex()[:12])
            raise UsageError("the uploaded bytes do not match the blob's SHA-256: upload it again from 0")
        final = self._final_path(partial.sha)
        if not final.exists():  # else: someone without read access proved they hold it too
            final.parent.mkdir(exist_ok=True)
            os.link(path, final)
            _fsync_dir(final.parent)
        now = _now_ms()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR IGNORE INTO blobs VALUES (?,?,?)", (partial.sha, partial.size, now))
            for c in dict.fromkeys([partial.consult, consult]):
                self.db.execute(
                    "INSERT OR IGNORE INTO uploads VALUES (?,?,?,?)", (partial.sha, c, partial.user, now)
                )
            self.db.execute("DELETE FROM partials WHERE user=? AND sha=?", (partial.user, partial.sha))
        path.unlink(missing_ok=True)
        log.info("blob complete sha=%s size=%d user=%s", partial.sha.hex()[:12], partial.size, partial.user)

    def _recover(self) -> None:
        """Finish what a crash interrupted: a partial that holds every byte (the crash came
        between the last chunk's fsync and the commit) is completed now; partial files that
        no row owns (the commit happened, the unlink did not) are removed."""
        owned = set()
        rows = self.db.execute("SELECT user, sha, consult, size FROM partials").fetchall()
        for user, sha, consult, size in rows:
            partial = Partial(user, sha, consult, size)
            owned.add(self._partial_path(partial).name)
            if self._have(partial) == size:
                try:
                    self._complete(partial, consult)
                except UsageError:
                    pass  # emptied: the client's next head says 0
        for path in self.partial_dir.iterdir():
            if path.name not in owned:
                path.unlink(missing_ok=True)

    def _partial_path(self, partial: Partial) -> Path:
        return self.partial_dir / f"{partial.sha.hex()}.{partial.user}"

    def _final_path(self, sha: bytes) -> Path:
        name = sha.hex()
        return self.root / name[:2] / name


# --- argument checks ----------------------------------------------------------------------


def _member(args: dict[str, object], member_of: MemberOf) -> str:
    consult = wire.consult_id(args.get("consult"))
    if not member_of(consult):
        raise AccessDenied("denied", f"not a member of consult {consult}")
    return consult


def _sha(args: dict[str, object]) -> bytes:
    sha = args.get("sha")
    if type(sha) is not bytes or len(sha) != SHA_LEN:
        raise UsageError("sha must be the 32-byte SHA-256 of the blob")
    return sha


def _uint(args: dict[str, object], key: str) -> int:
    value = args.get(key)
    if type(value) is not int or not 0 <= value < 2**62:
        raise UsageError(f"{key} must be an unsigned integer")
    return value


# --- files ----------------------------------------------------------------------------------


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _file_sha(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _now_ms() -> int:
    return int(time.time() * 1000)

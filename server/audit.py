"""The relay's audit log: who did what to which consult, append-only and hash-chained.

Consults carry health data, so every access must be accounted for: opening a consult, adding
a member, reading its history, fetching an image or note, an export made on a device, a call.
Each entry carries the SHA-256 of the entry before it, so changing, removing or reordering
any entry breaks the chain from there on, and ``verify`` names the first broken entry. SQLite
triggers refuse UPDATE and DELETE, so only someone who edits the file by hand can try; the
chain catches that. The chain alone cannot tell a log cut short at its end, which is why
``verify`` prints the head (last seq and hash) for the admin to note elsewhere and compare.

Entries are chained in the event loop, in the order things happened, and written by one
thread in batches (one transaction each, ``synchronous=FULL``), so auditing never stalls a
connection on an fsync. A SIGKILL can lose the entries of the last unwritten batch (at most
``flush_delay`` old); the chain stays whole because the next start continues from the last
entry on disk. No message bodies, image contents or audio: ids, sizes and counts only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

AUDIT_FILE = "audit.sqlite3"
GENESIS = bytes(32)
ACTIONS = ("open", "add", "remove", "read", "fetch", "export", "call")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    consult TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_consult ON audit (consult, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    at_ms: int
    actor: str
    action: str
    consult: str
    detail: str  # compact JSON of ids, sizes and counts
    prev: bytes
    hash: bytes

    def as_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "time": self.at_ms,
            "actor": self.actor,
            "action": self.action,
            "consult": self.consult,
            "detail": json.loads(self.detail) if self.detail else {},
            "hash": self.hash.hex(),
        }


def entry_hash(
    prev: bytes, seq: int, at_ms: int, actor: str, action: str, consult: str, detail: str
) -> bytes:
    """SHA-256 over the previous hash and the entry's fields, length-prefixed (no field can
    bleed into the next)."""
    h = hashlib.sha256(prev)
    for part in (str(seq), str(at_ms), actor, action, consult, detail):
        raw = part.encode()
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.digest()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


class AuditLog:
    """Append side, used by the relay (one instance per data dir)."""

    def __init__(self, data_dir: Path, flush_delay: float = 0.2) -> None:
        self.path = data_dir / AUDIT_FILE
        self._db = _connect(self.path)
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq, self._head = (row[0], bytes(row[1])) if row else (0, GENESIS)
        self._buffer: list[tuple[object, ...]] = []
        self._lock = threading.Lock()  # the buffer is swapped by the writer thread
        self.flush_delay = flush_delay

    def record(self, actor: str, action: str, consult: str = "", **detail: object) -> Entry:
        """Chain one entry now; it reaches the disk with the next :meth:`flush`."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        at_ms = int(time.time() * 1000)
        text = json.dumps(detail, separators=(",", ":"), sort_keys=True) if detail else ""
        self._seq += 1
        digest = entry_hash(self._head, self._seq, at_ms, actor, action, consult, text)
        entry = Entry(self._seq, at_ms, actor, action, consult, text, self._head, digest)
        self._head = digest
        with self._lock:
            self._buffer.append((entry.seq, at_ms, actor, action, consult, text, entry.prev, digest))
        return entry

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write what is buffered in one transaction (called from the relay's writer thread)."""
        with self._lock:
            rows, self._buffer = self._buffer, []
        if rows:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        return len(rows)

    def close(self) -> None:
        self.flush()
        self._db.close()


@dataclass(frozen=True, slots=True)
class Verdict:
    entries: int
    head_seq: int
    head_hash: str
    broken_at: int | None  # seq of the first entry whose chain does not hold
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def read(
    data_dir: Path, consult: str | None = None, actor: str | None = None, since_ms: int = 0
) -> Iterator[Entry]:
    """Entries in order, optionally of one consult or one actor (read-only; works while the
    relay runs)."""
    db = _open_read(data_dir)
    try:
        query, args = "SELECT * FROM audit WHERE at_ms >= ?", [since_ms]
        if consult:
            query, args = query + " AND consult = ?", [*args, consult]
        if actor:
            query, args = query + " AND actor = ?", [*args, actor]
        for row in db.execute(query + " ORDER BY seq", args):
            yield Entry(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), bytes(row[7]))
    finally:
        db.close()


def verify(data_dir: Path) -> Verdict:
    """Recompute the whole chain: the first entry that does not follow from its predecessor."""
    db = _open_read(data_dir)
    try:
        prev, expected_seq, count = GENESIS, 1, 0
        for row in db.execute("SELECT * FROM audit ORDER BY seq"):
            seq, at_ms, actor, action, consult, detail, stored_prev, stored = row
            count += 1
            if seq != expected_seq:
                return Verdict(
                    count, seq, bytes(stored).hex(), expected_seq, f"entry {expected_seq} is missing"
                )
            if bytes(stored_prev) != prev:
                return Verdict(count, seq, bytes(stored).hex(), seq, "it does not follow the entry before it")
            if entry_hash(prev, seq, at_ms, actor, action, consult, detail) != bytes(stored):
                return Verdict(count, seq, bytes(stored).hex(), seq, "its contents were changed")
            prev, expected_seq = bytes(stored), seq + 1
        return Verdict(count, expected_seq - 1, prev.hex(), None)
    finally:
        db.close()


def _open_read(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / AUDIT_FILE
    if not path.exists():
        return _connect(path)  # an empty log: a relay that never ran, or ran before auditing
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)

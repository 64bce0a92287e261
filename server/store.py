"""The relay's durable state: one SQLite file (WAL, synchronous=FULL) under the data dir.

The store is the reason "nothing acknowledged is lost": a message is acknowledged only after
the transaction holding it has committed with ``synchronous=FULL``, so a SIGKILL (or power
loss) at any moment keeps every acknowledged message. The unique index on
(consult, sender, cid) makes a retried send return the original seq instead of a duplicate.

All methods are synchronous and fast (indexed lookups, one fsync per commit); the relay
batches concurrent sends into one transaction (group commit) to share that fsync.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from pathlib import Path

from medcomm.core import e2e
from medcomm.core.wire import CONSULT_ALPHABET, CONSULT_ID_LEN, KINDS, Msg
from medcomm.errors import AccessDenied, AuthError, LimitExceeded, NotFound, UsageError
from medcomm.limits import WIRE

SCHEMA = """
-- Calls are live signalling held in memory; what the history would say of each live call,
-- were it to end now as "interrupted", is saved here as it changes and every few seconds, so
-- a relay that dies mid-call still writes the call into its consult's history when it starts
-- again (``interrupted_calls``).
CREATE TABLE IF NOT EXISTS live_calls (
    call TEXT PRIMARY KEY, consult TEXT NOT NULL, caller TEXT NOT NULL, body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    pubkey BLOB PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name), created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrol_codes (
    code_hash BLOB PRIMARY KEY, user TEXT NOT NULL, created INTEGER NOT NULL,
    expires INTEGER NOT NULL, used_by BLOB, used_at INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consults (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, created_by TEXT NOT NULL,
    created INTEGER NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sender_keys (
    consult TEXT NOT NULL, sender TEXT NOT NULL, key_id BLOB NOT NULL, first_seq INTEGER NOT NULL,
    PRIMARY KEY (consult, sender, key_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removed (
    consult TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (consult, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rekeys (
    consult TEXT PRIMARY KEY, seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    consult TEXT NOT NULL, user TEXT NOT NULL, added_by TEXT NOT NULL, added INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0, read INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (consult, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(user);
CREATE TABLE IF NOT EXISTS messages (
    consult TEXT NOT NULL, seq INTEGER NOT NULL, cid BLOB NOT NULL, sender TEXT NOT NULL,
    time INTEGER NOT NULL, kind INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (consult, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_once ON messages(consult, sender, cid);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def hash_code(code: str) -> bytes:
    """Codes are stored hashed: a copied database does not hand out logins."""
    return hashlib.sha256(normalise_code(code).encode()).digest()


def normalise_code(code: str) -> str:
    return code.replace("-", "").replace(" ", "").upper()


def sender_key_id(kind: int, body: bytes) -> bytes | None:
    """The end-to-end sender key a client message uses or gives out, if any: the clear key
    id of a sealed body, or the one a key message names as its maker's own (see
    ``medcomm.core.e2e``). The relay learns which keys exist, never what they are."""
    if kind in (KINDS["system"], KINDS["call"], KINDS["keyreq"]):
        return None
    if kind == KINDS["key"]:
        return e2e.bundle_own_key_id(body)
    return e2e.key_id_of(body) if e2e.is_sealed(body) else None


# A stored message is exactly the frame that delivers it: the relay sends what it stores.
StoredMessage = Msg


class RelayStore:
    """Relay state behind plain methods; one instance per process, used from one thread."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "blobs").mkdir(exist_ok=True)
        self.data_dir = data_dir
        self.path = data_dir / "relay.sqlite3"
        self.db = self._connect("FULL")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        # Delivery marks are advisory (a lost one is raised again by the next receipt), so
        # they commit without an fsync of their own; the next FULL commit makes them durable.
        self.light = self._connect("NORMAL")
        self._writer: sqlite3.Connection | None = None

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        for db in (self.db, self.light, self._writer):
            if db is not None:
                db.close()

    def store_batch_writer(
        self, items: list[tuple[str, bytes, str, int, bytes]]
    ) -> list[tuple[StoredMessage | None, bool]]:
        """``store_batch`` on the writer connection, for the relay's one writer thread: the
        fsync happens there, so the event loop keeps forwarding while a batch commits."""
        return self.store_batch(items, db=self._writer_db())

    def _writer_db(self) -> sqlite3.Connection:
        """The writer thread's own connection, made on its first use there."""
        if self._writer is None:
            self._writer = self._connect("FULL")
        return self._writer

    def save_live_calls(self, live: list[tuple[str, str, str, bytes]]) -> None:
        """Record (call, consult, caller, body) of live calls, on the writer connection (the
        relay's writer thread): one transaction."""
        db = self._writer_db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO live_calls VALUES (?,?,?,?)", live)

    def interrupted_calls(self) -> list[tuple[str, str, str, bytes]]:
        """Calls that were live when the relay last stopped without ending them."""
        rows = self.db.execute("SELECT call, consult, caller, body FROM live_calls ORDER BY call").fetchall()
        return [(c, consult, caller, bytes(body)) for c, consult, caller, body in rows]

    def forget_live_call(self, call: str, *, writer: bool = False) -> None:
        """Drop a call's record once its history entry is written (``writer``: on the writer
        thread's connection, as the relay does when a call ends)."""
        db = self._writer_db() if writer else self.db
        with db:
            db.execute("DELETE FROM live_calls WHERE call=?", (call,))

    # --- users, devices, enrolment ------------------------------------------------------

    def enroll(self, name: str, role: str, ttl: float, now: int | None = None) -> str:
        """Create the user if new and return a fresh one-time code for one device."""
        now = now_ms() if now is None else now
        raw = "".join(secrets.choice("ABCDEFGHJKMNPQRSTVWXYZ23456789") for _ in range(12))
        code = "-".join(raw[i : i + 4] for i in range(0, 12, 4))
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT role FROM users WHERE name=?", (name,)).fetchone()
            if row and row[0] != role:
                raise UsageError(f"user {name} exists with role {row[0]}, not {role}")
            if not row:
                self.db.execute("INSERT INTO users VALUES (?,?,?)", (name, role, now))
            self.db.execute(
                "INSERT INTO enrol_codes VALUES (?,?,?,?,NULL,NULL)",
                (hash_code(code), name, now, now + int(ttl * 1000)),
            )
        return code

    def register(self, name: str, code: str, pubkey: bytes, now: int | None = None) -> str:
        """Bind pubkey to the user named by a valid code; the same key again is a no-op,
        so a login cut off by the link can simply be run again. Returns the role."""
        now = now_ms() if now is None else now
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(
                "SELECT user, expires, used_by FROM enrol_codes WHERE code_hash=?",
                (hash_code(code),),
            ).fetchone()
            if not row or row[0] != name:
                raise AuthError("auth", "wrong enrolment code for this name")
            user, expires, used_by = row
            if used_by is not None and used_by != pubkey:
                raise AuthError("auth", "enrolment code already used")
            if used_by is None:
                if now > expires:
                    raise AuthError("auth", "enrolment code expired")
                owner = self.db.execute("SELECT user FROM devices WHERE pubkey=?", (pubkey,)).fetchone()
                if owner and owner[0] != user:
                    raise AuthError("auth", "device key belongs to another user")
                self.db.execute(
                    "UPDATE enrol_codes SET used_by=?, used_at=? WHERE code_hash=?",
                    (pubkey, now, hash_code(code)),
                )
                self.db.execute("INSERT OR IGNORE INTO devices VALUES (?,?,?)", (pubkey, user, now))
        return self.role(name)

    def device_user(self, pubkey: bytes) -> tuple[str, str] | None:
        row = self.db.execute(
            "SELECT u.name, u.role FROM devices d JOIN users u ON u.name=d.user WHERE d.pubkey=?",
            (pubkey,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def role(self, name: str) -> str:
        row = self.db.execute("SELECT role FROM users WHERE name=?", (name,)).fetchone()
        if not row:
            raise NotFound(f"no user named {name}")
        return str(row[0])

    def device_keys(self, names: list[str]) -> dict[str, list[bytes]]:
        """Each named user's registered device keys (users without a device are left out)."""
        found: dict[str, list[bytes]] = {}
        for name in names:
            rows = self.db.execute("SELECT pubkey FROM devices WHERE user=? ORDER BY pubkey", (name,))
            keys = [bytes(r[0]) for r in rows]
            if keys:
                found[name] = keys
        return found

    def users(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.db.execute("SELECT name, role FROM users ORDER BY name")]

    # --- consults and membership ----------------------------------------------------------

    def open_consult(self, title: str, creator: str, others: list[str], now: int | None = None) -> str:
        now = now_ms() if now is None else now
        members = [creator, *dict.fromkeys(o for o in others if o != creator)]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for m in members:
                if not self.db.execute("SELECT 1 FROM users WHERE name=?", (m,)).fetchone():
                    raise NotFound(f"no user named {m}")
            for _ in range(100):
                cid = "".join(secrets.choice(CONSULT_ALPHABET) for _ in range(CONSULT_ID_LEN))
                if not self.db.execute("SELECT 1 FROM consults WHERE id=?", (cid,)).fetchone():
                    break
            else:  # pragma: no cover - 32**6 ids
                raise RuntimeError("could not find a free consult id")
            self.db.execute("INSERT INTO consults VALUES (?,?,?,?,0)", (cid, title, creator, now))
            self.db.executemany(
                "INSERT INTO members (consult, user, added_by, added) VALUES (?,?,?,?)",
                [(cid, m, creator, now) for m in members],
            )
        return cid

    def add_member(self, consult: str, by: str, name: str, now: int | None = None) -> bool:
        """Add name to consult; only members may add. Returns False if already a member."""
        now = now_ms() if now is None else now
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.check_member(consult, by)
            if not self.db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise NotFound(f"no user named {name}")
            if self.is_member(consult, name):
                return False
            (count,) = self.db.execute("SELECT count(*) FROM members WHERE consult=?", (consult,)).fetchone()
            if count >= WIRE.max_members:
                raise LimitExceeded(f"consult {consult} already has {WIRE.max_members} members")
            cur = self.db.execute(
                "INSERT OR IGNORE INTO members (consult, user, added_by, added) VALUES (?,?,?,?)",
                (consult, name, by, now),
            )
            return cur.rowcount == 1

    def remove_member(self, consult: str, by: str, name: str) -> bool:
        """Take name out of consult; only members may, and the last one stays. Returns False
        if name was not a member."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.check_member(consult, by)
            if not self.is_member(consult, name):
                return False
            (count,) = self.db.execute("SELECT count(*) FROM members WHERE consult=?", (consult,)).fetchone()
            if count <= 1:
                raise UsageError(f"{name} is the last member of consult {consult}")
            self.db.execute("DELETE FROM members WHERE consult=? AND user=?", (consult, name))
            self.db.execute("INSERT OR IGNORE INTO removed VALUES (?,?)", (consult, name))
            self.db.execute(  # every sender key in use so far is now refused (see _stale)
                "INSERT OR REPLACE INTO rekeys SELECT id, last_seq FROM consults WHERE id=?", (consult,)
            )
            return True

    def was_removed(self, consult: str, user: str) -> bool:
        return bool(
            self.db.execute("SELECT 1 FROM removed WHERE consult=? AND user=?", (consult, user)).fetchone()
        )

    def is_member(self, consult: str, user: str) -> bool:
        return bool(
            self.db.execute("SELECT 1 FROM members WHERE consult=? AND user=?", (consult, user)).fetchone()
        )

    def check_member(self, consult: str, user: str) -> None:
        if not self.is_member(consult, user):
            if not self.db.execute("SELECT 1 FROM consults WHERE id=?", (consult,)).fetchone():
                raise NotFound(f"no consult {consult}")
            raise AccessDenied("denied", f"not a member of consult {consult}")

    def members(self, consult: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT user FROM members WHERE consult=? ORDER BY added, user", (consult,)
            )
        ]

    def consults_of(self, user: str) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT c.id, c.title, c.created_by, c.created, c.last_seq FROM consults c "
            "JOIN members m ON m.consult=c.id WHERE m.user=? ORDER BY c.created",
            (user,),
        ).fetchall()
        return [
            {
                "id": r[0],
                "title": r[1],
                "created_by": r[2],
                "created": r[3],
                "last_seq": r[4],
                "members": self.members(r[0]),
            }
            for r in rows
        ]

    def consult_ids_of(self, user: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT consult FROM members WHERE user=?", (user,))]

    # --- the message log ------------------------------------------------------------------

    def store_batch(
        self,
        items: list[tuple[str, bytes, str, int, bytes]],
        now: int | None = None,
        db: sqlite3.Connection | None = None,
    ) -> list[tuple[StoredMessage | None, bool]]:
        """Store (consult, cid, sender, kind, body) items in one transaction (one fsync).

        Returns each item's stored message and whether it is new; a repeat of a stored
        (consult, sender, cid) returns the original; an item sealed with (or giving out) a
        sender key that was in use before a member left is refused: (None, False).
        Membership must be checked before.
        """
        now = now_ms() if now is None else now
        db = db or self.db
        out: list[tuple[StoredMessage | None, bool]] = []
        with db:
            db.execute("BEGIN IMMEDIATE")
            for consult, cid, sender, kind, body in items:
                row = db.execute(
                    "SELECT seq, time, kind, body FROM messages WHERE consult=? AND sender=? AND cid=?",
                    (consult, sender, cid),
                ).fetchone()
                if row:
                    out.append((StoredMessage(consult, row[0], cid, sender, row[1], row[2], row[3]), False))
                    continue
                key_id = sender_key_id(kind, body)
                if key_id is not None and self._stale(db, consult, sender, key_id):
                    out.append((None, False))
                    continue
                (seq,) = db.execute(
                    "UPDATE consults SET last_seq=last_seq+1 WHERE id=? RETURNING last_seq",
                    (consult,),
                ).fetchone()
                if key_id is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO sender_keys VALUES (?,?,?,?)", (consult, sender, key_id, seq)
                    )
                db.execute(
                    "INSERT INTO messages VALUES (?,?,?,?,?,?,?)",
                    (consult, seq, cid, sender, now, kind, body),
                )
                out.append((StoredMessage(consult, seq, cid, sender, now, kind, body), True))
        return out

    @staticmethod
    def _stale(db: sqlite3.Connection, consult: str, sender: str, key_id: bytes) -> bool:
        """A sender key first used (sealing or given out) before a member left: the leaver
        may hold it, so what it seals now would be open to them."""
        first = db.execute(
            "SELECT first_seq FROM sender_keys WHERE consult=? AND sender=? AND key_id=?",
            (consult, sender, key_id),
        ).fetchone()
        if first is None:
            return False
        rekey = db.execute("SELECT seq FROM rekeys WHERE consult=?", (consult,)).fetchone()
        return rekey is not None and first[0] <= rekey[0]

    def messages_after(self, consult: str, after: int, limit: int) -> list[StoredMessage]:
        return [
            StoredMessage(*r)
            for r in self.db.execute(
                "SELECT consult, seq, cid, sender, time, kind, body FROM messages "
                "WHERE consult=? AND seq>? ORDER BY seq LIMIT ?",
                (consult, after, limit),
            )
        ]

    def last_seq(self, consult: str) -> int:
        row = self.db.execute("SELECT last_seq FROM consults WHERE id=?", (consult,)).fetchone()
        return int(row[0]) if row else 0

    # --- receipts -------------------------------------------------------------------------

    def mark(self, consult: str, user: str, seq: int, state: int) -> tuple[int, int] | None:
        """Raise a member's delivered (1) or read (2) mark; read implies delivered.

        Marks never go down and never pass the consult's last seq. Returns the new
        (delivered, read) when something changed, else None.
        """
        seq = min(seq, self.last_seq(consult))
        with self.light:
            cur = self.light.execute(
                "UPDATE members SET delivered=max(delivered, ?), "
                "read=CASE WHEN ?=2 THEN max(read, ?) ELSE read END "
                "WHERE consult=? AND user=? AND (delivered<? OR (?=2 AND read<?)) "
                "RETURNING delivered, read",
                (seq, state, seq, consult, user, seq, state, seq),
            )
            row = cur.fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def marks(self, consult: str) -> list[tuple[str, int, int]]:
        return [
            (r[0], r[1], r[2])
            for r in self.db.execute("SELECT user, delivered, read FROM members WHERE consult=?", (consult,))
        ]

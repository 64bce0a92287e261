"""The device's end-to-end keys, in the local store's own SQLite file.

Kept beside the outbox and history (one file, one transaction) so that a sealed outbox item
and the sender key that sealed it become durable together: a crash can never leave a queued
message whose key is lost. Tables:

* ``e2e_own``: this device's sender key per consult; ``retired`` once a member left, so the
  next send starts a new one the leaver never gets.
* ``e2e_keys``: every sender key this device can open with (its own too), by (consult,
  owner, key id). The first key for a name wins: a member who "forwards" a false key for
  another's id cannot displace the real one (see ``drop_forwarded`` for the other order).
* ``e2e_sent``: the devices this device boxed each of its keys to.
* ``e2e_devices``: members' device keys as the relay last told them (answers ``keys``).
* ``e2e_inbox``: key messages and key requests waiting for the session (an unknown device,
  a request to answer).
* ``e2e_locked``: sealed messages whose key has not arrived; the history shows them as
  waiting until it does.
* ``e2e_asked``: the keys this device asked for, so it asks once per ``ask_again`` seconds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from medcomm.core import e2e, wire
from medcomm.errors import Tampered, WireError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS e2e_own (
    consult TEXT NOT NULL, key_id BLOB NOT NULL, created REAL NOT NULL, retired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (consult, key_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_keys (
    consult TEXT NOT NULL, owner TEXT NOT NULL, key_id BLOB NOT NULL, key BLOB NOT NULL,
    forwarded INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (consult, owner, key_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_sent (
    consult TEXT NOT NULL, key_id BLOB NOT NULL, device BLOB NOT NULL,
    PRIMARY KEY (consult, key_id, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_devices (
    user TEXT NOT NULL, device BLOB NOT NULL, PRIMARY KEY (user, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_inbox (
    consult TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, kind INTEGER NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (consult, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_locked (
    consult TEXT NOT NULL, seq INTEGER NOT NULL, owner TEXT NOT NULL, key_id BLOB NOT NULL,
    kind INTEGER NOT NULL, cid BLOB NOT NULL, body BLOB NOT NULL, PRIMARY KEY (consult, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_callkeys (
    consult TEXT NOT NULL, call TEXT NOT NULL, sender TEXT NOT NULL, key BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (consult, call, sender)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_asked (
    consult TEXT NOT NULL, owner TEXT NOT NULL, key_id BLOB NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (consult, owner, key_id)
) WITHOUT ROWID;
"""

#: Kinds whose bodies a client seals. ``system`` and ``call`` are written by the relay (it
#: knows what they say: who joined, that a call happened); ``key`` and ``keyreq`` carry boxes
#: and key names and are what makes the rest readable.
PLAIN_KINDS = frozenset({wire.KINDS["system"], wire.KINDS["call"], wire.KINDS["key"], wire.KINDS["keyreq"]})
SEALED_KINDS = frozenset(wire.KINDS.values()) - PLAIN_KINDS
KEY_KINDS = frozenset({wire.KINDS["key"], wire.KINDS["keyreq"]})
CALL_KEY = wire.KINDS["callkey"]  # sealed, but consumed here like the key kinds: never history
TITLE = wire.KINDS["title"]  # sealed; sets the consult's title, no history line of its own
NOT_HISTORY = KEY_KINDS | {CALL_KEY, TITLE}

#: The kind a message has in the local history while it cannot be shown: waiting for its
#: key (empty body) or dropped because it failed authentication (``TAMPERED`` body).
LOCKED = 0
TAMPERED = b"!"


def set_title(db: sqlite3.Connection, consult: str, plain: bytes) -> None:
    title = plain.decode("utf-8", "replace").strip()[: wire.WIRE.max_title]
    if title:
        db.execute("UPDATE consults SET title=? WHERE id=?", (title, consult))


class KeyRing:
    def __init__(self, db: sqlite3.Connection, me: e2e.Identity) -> None:
        self.db = db
        self.opened = 0  # messages opened in place since the link last told its listeners
        self.me = me
        self.public = me.public
        db.executescript(SCHEMA)

    # --- this device's keys ---------------------------------------------------------------

    def current(self, consult: str) -> tuple[bytes, bytes]:
        """This device's key for the consult, made (inside the caller's transaction) when
        there is none or the last was retired."""
        own = self._own(consult)
        if own is not None:
            return own
        key_id, key = e2e.new_key()
        self.db.execute(
            "INSERT INTO e2e_own (consult, key_id, created) VALUES (?,?,?)", (consult, key_id, time.time())
        )
        self.db.execute(
            "INSERT INTO e2e_keys (consult, owner, key_id, key) VALUES (?,?,?,?)",
            (consult, self.me.name, key_id, key),
        )
        log.info("new sender key consult=%s key=%s", consult, key_id.hex())
        return key_id, key

    def _own(self, consult: str) -> tuple[bytes, bytes] | None:
        """This device's unretired key for the consult (id, key), if it has one."""
        row = self.db.execute(
            "SELECT o.key_id, k.key FROM e2e_own o JOIN e2e_keys k ON k.consult=o.consult "
            "AND k.owner=? AND k.key_id=o.key_id WHERE o.consult=? AND o.retired=0 "
            "ORDER BY o.created DESC LIMIT 1",
            (self.me.name, consult),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def own_consults(self) -> list[str]:
        """Consults where this device has an unretired key (to give out to new devices)."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT consult FROM e2e_own WHERE retired=0")]

    def retire(self, consult: str) -> None:
        """A member left: the next message starts a new key."""
        self.db.execute("UPDATE e2e_own SET retired=1 WHERE consult=?", (consult,))

    def seal(self, consult: str, kind: int, cid: bytes, plain: bytes) -> bytes:
        key_id, key = self.current(consult)
        return e2e.seal(key_id, key, consult, kind, cid, self.me.name, plain)

    def undelivered(self, consult: str, devices: list[bytes]) -> tuple[bytes, bytes, list[bytes]] | None:
        """(key id, key, devices not yet given it) for this device's current key, None when
        it has no unretired key for the consult yet (nothing sealed, nothing to give)."""
        own = self._own(consult)
        if own is None:
            return None
        key_id, key = own
        sent = set(self._given(consult, key_id))
        return key_id, key, [d for d in devices if d not in sent and d != self.public]

    def _given(self, consult: str, key_id: bytes) -> list[bytes]:
        rows = self.db.execute("SELECT device FROM e2e_sent WHERE consult=? AND key_id=?", (consult, key_id))
        return [bytes(r[0]) for r in rows]

    def ever_given(self, consult: str) -> bool:
        """Whether this device's current key for the consult was given out at all yet (a
        fresh one goes to the members the relay names, not to the ones cached here)."""
        own = self._own(consult)
        return own is not None and bool(self._given(consult, own[0]))

    def mark_sent(self, consult: str, key_id: bytes, devices: list[bytes]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO e2e_sent VALUES (?,?,?)", [(consult, key_id, d) for d in devices]
        )

    # --- keys to open with ----------------------------------------------------------------

    def key(self, consult: str, owner: str, key_id: bytes) -> bytes | None:
        row = self.db.execute(
            "SELECT key FROM e2e_keys WHERE consult=? AND owner=? AND key_id=?", (consult, owner, key_id)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def all_keys(self, consult: str) -> list[e2e.SharedKey]:
        """Every key held for the consult, to hand on to a member added later."""
        rows = self.db.execute("SELECT owner, key_id, key FROM e2e_keys WHERE consult=?", (consult,))
        return [e2e.SharedKey(o, bytes(k), bytes(v), self.public) for o, k, v in rows]

    def held(self, consult: str, wanted: list[tuple[str, bytes]]) -> list[e2e.SharedKey]:
        out = []
        for owner, key_id in wanted:
            key = self.key(consult, owner, key_id)
            if key is not None:
                out.append(e2e.SharedKey(owner, key_id, key, self.public))
        return out

    def add_keys(self, consult: str, sender: str, keys: list[e2e.SharedKey]) -> int:
        """Keep keys from a box the ``sender`` member's device made; the first key for a name
        wins. Returns how many were new."""
        new = 0
        for k in keys:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO e2e_keys VALUES (?,?,?,?,?)",
                (consult, k.owner, k.key_id, k.key, int(k.owner != sender)),
            )
            new += cur.rowcount
        return new

    def drop_forwarded(self, consult: str, owner: str, key_id: bytes) -> None:
        """A forwarded key that failed to open its owner's message was false: forget it so
        the real one can still be taken."""
        self.db.execute(
            "DELETE FROM e2e_keys WHERE consult=? AND owner=? AND key_id=? AND forwarded=1",
            (consult, owner, key_id),
        )

    # --- members' devices -----------------------------------------------------------------

    def devices(self, user: str) -> list[bytes] | None:
        rows = self.db.execute(
            "SELECT device FROM e2e_devices WHERE user=? ORDER BY device", (user,)
        ).fetchall()
        return [bytes(r[0]) for r in rows] or None

    def set_devices(self, found: dict[str, list[bytes]]) -> None:
        for user, keys in found.items():
            self.db.execute("DELETE FROM e2e_devices WHERE user=?", (user,))
            self.db.executemany(
                "INSERT OR IGNORE INTO e2e_devices VALUES (?,?)", [(user, bytes(k)) for k in keys]
            )

    #: The device keys a user was verified with (safety numbers), None when never verified;
    #: the session reads them from its trust store.
    verified_keys: Callable[[str], tuple[bytes, ...] | None] | None = None

    def _accepts(self, sender: str, via: bytes) -> bool:
        """Whether a key message made by device ``via`` may speak for ``sender``. A sender
        whose devices were never listed here is taken on first use (as the relay names the
        sender of every message, asking it for the list first would add a round trip and no
        protection); a member verified by safety number must use a verified device."""
        if self.devices(sender) is not None:
            return self.device_of(sender, via)
        vouched = self.verified_keys(sender) if self.verified_keys is not None else None
        if vouched is not None:
            return via in vouched
        self.db.execute("INSERT OR IGNORE INTO e2e_devices VALUES (?,?)", (sender, via))
        log.info("device of %s taken on first use", sender)
        return True

    def device_of(self, user: str, device: bytes) -> bool:
        return (
            self.db.execute("SELECT 1 FROM e2e_devices WHERE user=? AND device=?", (user, device)).fetchone()
            is not None
        )

    # --- arriving messages (inside LocalStore.add_messages' transaction) ------------------

    def take(self, m: wire.Msg) -> tuple[int, bytes] | None:
        """What the history keeps for a message: (kind, body) in the clear, (LOCKED, b"")
        while its key is missing, (LOCKED, TAMPERED) when it fails authentication; None for
        key messages and key requests, which are consumed here, not shown."""
        if m.kind in KEY_KINDS:
            self.db.execute(
                "INSERT OR IGNORE INTO e2e_inbox VALUES (?,?,?,?,?)",
                (m.consult, m.seq, m.sender, m.kind, m.body),
            )
            if m.kind == wire.KINDS["key"]:
                self.open_bundles(m.consult)
            return None
        if m.kind in PLAIN_KINDS:
            return m.kind, m.body
        if not e2e.is_sealed(m.body):
            log.warning(
                "unsealed %s message dropped consult=%s seq=%d", wire.KIND_NAMES.get(m.kind), m.consult, m.seq
            )
            return LOCKED, TAMPERED
        key_id = e2e.key_id_of(m.body)
        key = self.key(m.consult, m.sender, key_id)
        if key is None:
            self.db.execute(
                "INSERT OR IGNORE INTO e2e_locked VALUES (?,?,?,?,?,?,?)",
                (m.consult, m.seq, m.sender, key_id, m.kind, m.cid, m.body),
            )
            return None if m.kind == CALL_KEY else (LOCKED, b"")
        try:
            plain = e2e.open_sealed(key, m.consult, m.kind, m.cid, m.sender, m.body)
        except Tampered:
            log.warning("message failed authentication consult=%s seq=%d", m.consult, m.seq)
            return None if m.kind == CALL_KEY else (LOCKED, TAMPERED)
        if m.kind == CALL_KEY:
            self._keep_call_key(m.consult, m.seq, m.sender, plain)
            return None
        return m.kind, plain

    def _keep_call_key(self, consult: str, seq: int, sender: str, plain: bytes) -> None:
        try:
            call, key = e2e.decode_call_key(plain)
        except WireError as exc:
            log.warning("call key dropped consult=%s seq=%d: %s", consult, seq, exc)
            return
        self.db.execute(  # a member who joins again gets a new key: the later one counts
            "INSERT INTO e2e_callkeys VALUES (?,?,?,?,?) ON CONFLICT(consult, call, sender) DO UPDATE "
            "SET key=excluded.key, seq=excluded.seq WHERE excluded.seq > e2e_callkeys.seq",
            (consult, call, sender, key, seq),
        )

    def call_key(self, consult: str, call: str, sender: str) -> bytes | None:
        """The key of ``sender``'s voice stream in ``call``, once its callkey message is here."""
        row = self.db.execute(
            "SELECT key FROM e2e_callkeys WHERE consult=? AND call=? AND sender=?", (consult, call, sender)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def open_bundles(self, consult: str | None = None, *, give_up: bool = False) -> int:
        """Take the keys boxed for this device from the key messages waiting in the inbox
        whose making device is known to be their sender's; then open what they unlock.
        ``give_up`` (the relay was just asked for the senders' devices) drops key messages
        whose maker is still not one of them. Returns how many messages were unlocked."""
        where, args = ("AND consult=?", (consult,)) if consult else ("", ())
        rows = self.db.execute(
            f"SELECT consult, seq, sender, body FROM e2e_inbox WHERE kind=? {where} ORDER BY consult, seq",
            (wire.KINDS["key"], *args),
        ).fetchall()
        for c, seq, sender, body in rows:
            try:
                via = e2e.bundle_sender(body)
                if not self._accepts(sender, via):
                    if not give_up:
                        continue  # the session asks the relay for the sender's devices, then retries
                    raise Tampered(f"made by a device that is not {sender}'s")
                keys = e2e.open_bundle(self.me, c, body)
                added = self.add_keys(c, sender, keys)
                if added:
                    log.info("keys taken consult=%s seq=%d from=%s new=%d", c, seq, sender, added)
            except (WireError, Tampered) as exc:
                log.warning("key message dropped consult=%s seq=%d: %s", c, seq, exc)
            self.db.execute("DELETE FROM e2e_inbox WHERE consult=? AND seq=?", (c, seq))
        return self.unlock()

    def unlock(self) -> int:
        """Open the locked messages whose keys are now here, in place in the history."""
        opened = 0
        rows = self.db.execute(
            "SELECT l.consult, l.seq, l.owner, l.key_id, l.kind, l.cid, l.body, k.key, k.forwarded "
            "FROM e2e_locked l JOIN e2e_keys k "
            "ON k.consult=l.consult AND k.owner=l.owner AND k.key_id=l.key_id"
        ).fetchall()
        for consult, seq, owner, key_id, kind, cid, body, key, forwarded in rows:
            try:
                plain = e2e.open_sealed(bytes(key), consult, kind, bytes(cid), owner, bytes(body))
            except Tampered:
                if forwarded:
                    self.drop_forwarded(consult, owner, bytes(key_id))
                    continue  # stays locked; the owner's own box may still come
                plain, kind = TAMPERED, LOCKED
                log.warning("message failed authentication consult=%s seq=%d", consult, seq)
            if kind in (CALL_KEY, TITLE):
                if kind == CALL_KEY:
                    self._keep_call_key(consult, seq, owner, plain)
                else:
                    set_title(self.db, consult, plain)
                    self.db.execute("DELETE FROM messages WHERE consult=? AND seq=?", (consult, seq))
                self.db.execute("DELETE FROM e2e_locked WHERE consult=? AND seq=?", (consult, seq))
                self.opened += 1
                continue
            self.db.execute(
                "UPDATE messages SET kind=?, body=? WHERE consult=? AND seq=?", (kind, plain, consult, seq)
            )
            self.db.execute("DELETE FROM e2e_locked WHERE consult=? AND seq=?", (consult, seq))
            opened += kind != LOCKED
        self.opened += opened
        return opened

    # --- what the session still has to do ------------------------------------------------

    def unknown_senders(self) -> set[str]:
        """Senders of waiting key messages whose making device is not among their known ones."""
        out = set()
        for sender, body in self.db.execute(
            "SELECT sender, body FROM e2e_inbox WHERE kind=?", (wire.KINDS["key"],)
        ):
            try:
                if not self.device_of(sender, e2e.bundle_sender(bytes(body))):
                    out.add(sender)
            except WireError:
                out.add(sender)
        return out

    def requests(self) -> list[tuple[str, int, str, bytes]]:
        """Key requests waiting: (consult, seq, sender, body)."""
        return [
            (c, s, u, bytes(b))
            for c, s, u, b in self.db.execute(
                "SELECT consult, seq, sender, body FROM e2e_inbox WHERE kind=? ORDER BY consult, seq",
                (wire.KINDS["keyreq"],),
            )
        ]

    def done(self, consult: str, seq: int) -> None:
        self.db.execute("DELETE FROM e2e_inbox WHERE consult=? AND seq=?", (consult, seq))

    def missing(self, now: float, ask_again: float) -> dict[str, list[tuple[str, bytes]]]:
        """Per consult, the (owner, key id) pairs locked messages wait for that were not asked
        for within ``ask_again`` seconds."""
        out: dict[str, list[tuple[str, bytes]]] = {}
        for consult, owner, key_id in self.db.execute(
            "SELECT DISTINCT l.consult, l.owner, l.key_id FROM e2e_locked l LEFT JOIN e2e_asked a "
            "ON a.consult=l.consult AND a.owner=l.owner AND a.key_id=l.key_id WHERE a.at IS NULL OR a.at < ?",
            (now - ask_again,),
        ):
            out.setdefault(consult, []).append((owner, bytes(key_id)))
        return out

    def asked(self, consult: str, wanted: list[tuple[str, bytes]], now: float) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO e2e_asked VALUES (?,?,?,?)", [(consult, o, k, now) for o, k in wanted]
        )

    def locked_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM e2e_locked").fetchone()[0])

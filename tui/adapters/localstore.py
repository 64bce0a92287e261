"""The device's own SQLite file: the durable outbox, history, consults and delivery marks.

The outbox row is committed with ``synchronous=FULL`` before anything is shown or sent, so
a message a clinician typed survives a crash, a reboot or a flat battery, and is re-sent
with the same client id. Received history is written with ``synchronous=NORMAL`` (WAL):
after a power cut at worst the last writes roll back *together with* the cursor, and the
next resume fetches them again; nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from medcomm.adapters.keyring import LOCKED, NOT_HISTORY, SEALED_KINDS, TAMPERED, TITLE, KeyRing, set_title
from medcomm.core import e2e, imagemsg, imagereq, wire
from medcomm.core.delivery import OutItem

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    cid BLOB PRIMARY KEY, consult TEXT NOT NULL, kind INTEGER NOT NULL, body BLOB NOT NULL,
    created REAL NOT NULL, error TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    consult TEXT NOT NULL, seq INTEGER NOT NULL, cid BLOB NOT NULL, sender TEXT NOT NULL,
    time INTEGER NOT NULL, kind INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (consult, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_cid ON messages(cid);
CREATE TABLE IF NOT EXISTS consults (
    id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '', members TEXT NOT NULL DEFAULT '',
    cursor INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY, value BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
    consult TEXT NOT NULL, member TEXT NOT NULL, delivered INTEGER NOT NULL, read INTEGER NOT NULL,
    PRIMARY KEY (consult, member)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Line:
    """One entry of a consult's history as the CLI and TUI show it."""

    consult: str
    seq: int | None  # None while queued
    id: str
    sender: str
    time: int
    kind: str
    text: str
    state: str  # queued | stored | delivered | read | failed
    data: dict[str, object] | None = None  # case/status/followup/request: the decoded fields
    original: str | None = None  # an image: where its original stands (imagereq.original_state)

    def as_json(self) -> dict[str, object]:
        return {
            "consult": self.consult,
            "seq": self.seq,
            "id": self.id,
            "sender": self.sender,
            "time": self.time,
            "kind": self.kind,
            "text": self.text,
            "state": self.state,
            # a voice note: the id `medcomm play` takes (the message id, which also finds the
            # blob's id, size and duration in the message body)
            **({"note": self.id} if self.kind == "note" else {}),
            # an image: the id `medcomm fetch` and `medcomm view` take (the message id; its body
            # names the first view, the tile manifest and the original)
            **({"image": self.id} if self.kind == "image" else {}),
            # an image's original as this device knows it: on request, requested, sent, at the
            # relay (the sender's own device), downloaded, gone (see medcomm.core.imagereq)
            **({"original": self.original} if self.original is not None else {}),
            # a case, status or follow-up change: its decoded fields (medcomm.core.workflow)
            **({self.kind: self.data} if self.data is not None else {}),
        }


_WORKFLOW_KINDS = frozenset({wire.KINDS["case"], wire.KINDS["status"], wire.KINDS["followup"]})


def _event_data(kind: int, body: bytes) -> dict[str, object] | None:
    if kind == wire.KINDS["request"]:
        from medcomm.errors import WireError

        try:
            return imagereq.fields(imagereq.parse(body))
        except WireError:
            return None
    if kind not in _WORKFLOW_KINDS:
        return None
    from medcomm.core.workflow import event_fields

    return event_fields(kind, body)


def kind_name(kind: int) -> str:
    """A message kind as the history names it; ``locked`` while it cannot be opened."""
    return "locked" if kind == LOCKED else wire.KIND_NAMES.get(kind, "?")


def body_text(kind: int, body: bytes, blobs: Path | None = None) -> str:
    """Render a body for display; system events become a readable sentence. ``blobs`` (the
    device's blob cache root) lets an image line say what of it has arrived here."""
    if kind == wire.KINDS["text"]:
        return body.decode("utf-8", "replace")
    if kind in _WORKFLOW_KINDS:
        from medcomm.core.workflow import event_text

        return event_text(kind, body)
    if kind == wire.KINDS["system"]:
        try:
            ev = msgpack.unpackb(body, raw=False)
        except Exception:
            return "(unreadable system event)"
        if isinstance(ev, dict) and ev.get("event") == "open":
            title = f' "{ev["title"]}"' if ev.get("title") else ""  # sealed apart: see the consult's title
            return f"opened{title} with {', '.join(ev.get('members', []))}"
        if isinstance(ev, dict) and ev.get("event") == "add":
            return f"added {ev.get('member', '?')}"
        if isinstance(ev, dict) and ev.get("event") == "remove":
            return f"removed {ev.get('member', '?')}"
        return "(system event)"
    if kind == wire.KINDS["call"]:
        return call_text(body)
    if kind == wire.KINDS["note"]:
        return note_text(body)
    if kind == wire.KINDS["image"]:
        return image_text(body, blobs)
    if kind == wire.KINDS["request"]:
        return request_text(body)
    if kind == LOCKED:
        if body == TAMPERED:
            return "(dropped: this message failed its integrity check)"
        return "(encrypted: waiting for the sender's key)"
    return f"({wire.KIND_NAMES.get(kind, 'unknown')} message)"


def request_text(body: bytes) -> str:
    """A request for an image's original (or the sender's answer), after the asker's name:
    "dr.chen: asked for the original of image 3fa2c1d0e9b8"."""
    from medcomm.errors import WireError

    try:
        return imagereq.text(imagereq.parse(body))
    except WireError:
        return "(unreadable request)"


def call_text(body: bytes) -> str:
    """A call as the history shows it: who, how it went, how long, how thick per person."""
    try:
        ev = msgpack.unpackb(body, raw=False)
        members = ", ".join(str(m) for m in ev.get("members", []))
        outcome = str(ev.get("outcome", ""))
        secs = int(float(ev.get("duration_s", 0)))
        kbps = ev.get("kbps_up", {}) or {}
    except Exception:
        return "(unreadable call record)"
    if outcome in ("missed", "declined", "cancelled"):
        return f"call from {ev.get('caller', '?')} {outcome}"
    rates = ", ".join(f"{u} {float(v):.1f}" for u, v in kbps.items())
    text = f"call {secs // 60}:{secs % 60:02d} with {members}" + (f" (kbit/s up: {rates})" if rates else "")
    if outcome == "interrupted":  # the relay stopped mid-call: the length is as of its last save
        text += ", interrupted (the relay stopped)"
    return text


def note_text(body: bytes) -> str:
    """A voice note as the history shows it: length and size ("voice note 0:12 (9.4 KB)",
    KB = 1000 bytes), so a clinician on a slow link knows what playing it will cost."""
    from medcomm.adapters.blobcache import parse_note_body
    from medcomm.errors import WireError

    try:
        info = parse_note_body(body)
    except WireError:
        return "(unreadable voice note)"
    secs = int(round(info.duration_s))
    return f"voice note {secs // 60}:{secs % 60:02d} ({info.size / 1000:.1f} KB)"


def image_text(body: bytes, blobs: Path | None = None) -> str:
    """An image as the history shows it: kind, caption, sizes of what can be fetched (first
    view, detail tiles, original), and with ``blobs`` what of it is on this device, so a
    doctor on a slow link knows what a fetch will cost before asking for it."""
    return image_line(body, blobs)[0]


def image_line(
    body: bytes,
    blobs: Path | None = None,
    originals: _Originals | None = None,
    cid: bytes = b"",
    mine: bool = False,
) -> tuple[str, str | None]:
    """:func:`image_text` and where the image's original stands (with ``originals``: the
    page's requests and, on the sending device, its own record), or None."""
    from medcomm.errors import MedcommError

    try:
        info = imagemsg.parse_body(body)
    except MedcommError:
        return "(unreadable image message)", None
    arrived = None if blobs is None else image_arrived(blobs, info)
    state = None
    if originals is not None:
        state = originals.state(cid, info, mine, arrived is not None and arrived.original)
    return imagemsg.describe(info, arrived, state), state


class _Originals:
    """What one history page knows of its images' originals, looked up at most once per
    page and only when it has an image line: the consult's requests (stored and queued),
    folded, and this device's record of the originals it shared (in the blob cache's
    pending file, ``image_originals``; read only, absent on a device that never shared)."""

    def __init__(self, db: sqlite3.Connection, directory: Path, consult: str, me: str) -> None:
        self._db, self._dir, self._consult, self._me = db, directory, consult, me
        self._asked: dict[bytes, imagereq.Asked] | None = None
        self._held: dict[bytes, str] | None = None

    def state(self, cid: bytes, info: imagemsg.ImageInfo, mine: bool, here: bool) -> str:
        if self._asked is None:
            kind = wire.KINDS["request"]
            rows = self._db.execute(
                "SELECT sender, seq, body FROM messages WHERE consult=? AND kind=? ORDER BY seq",
                (self._consult, kind),
            ).fetchall()
            queued = self._db.execute(
                "SELECT body FROM outbox WHERE consult=? AND kind=? AND error IS NULL", (self._consult, kind)
            ).fetchall()
            self._asked = imagereq.fold([*rows, *((self._me, None, b) for (b,) in queued)])
        asked = self._asked.get(cid)
        if asked is not None and asked.sha != info.original.sha:
            asked = None
        held = self._held_state(cid) if mine else None
        return imagereq.original_state(info.original.sent, here, mine, asked, held)

    def _held_state(self, cid: bytes) -> str | None:
        if self._held is None:
            self._held = {}
            path = self._dir / "pending.sqlite3"
            if path.exists():
                try:
                    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
                    try:
                        self._held = dict(
                            con.execute(
                                "SELECT cid, state FROM image_originals WHERE consult=?", (self._consult,)
                            ).fetchall()
                        )
                    finally:
                        con.close()
                except sqlite3.Error:  # no such table yet: this device never shared an image here
                    pass
        return self._held.get(cid)


def image_arrived(blobs: Path, info: imagemsg.ImageInfo) -> imagemsg.Arrived:
    """What of an image (an ``imagemsg.ImageInfo``) is in the blob cache under ``blobs``:
    file checks only, no hashing (the cache verifies on read); the manifest, when here,
    says which tiles to look for."""
    from medcomm.adapters.blobcache import blob_file
    from medcomm.errors import MedcommError

    def here(sha: bytes) -> bool:
        return blob_file(blobs, sha).is_file()

    tiles = None
    d = info.detail
    if d is not None and here(d.manifest.sha):
        try:
            entries = imagemsg.parse_manifest(blob_file(blobs, d.manifest.sha).read_bytes(), d).entries
            tiles = sum(1 for e in entries if here(e.sha))
        except (OSError, MedcommError):
            tiles = None
    return imagemsg.Arrived(here(info.first.sha), tiles, all(here(r.sha) for r in info.original.blobs()))


class LocalStore:
    """``identity`` (this device's name and key seed) turns on end-to-end encryption: bodies
    are sealed as they are queued and opened as they arrive (``medcomm.adapters.keyring``);
    the history keeps plaintext, the outbox both."""

    def __init__(self, directory: Path, identity: e2e.Identity | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "medcomm.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if "sealed" not in {r[1] for r in self.db.execute("PRAGMA table_info(outbox)")}:
            self.db.execute("ALTER TABLE outbox ADD COLUMN sealed BLOB")  # what goes on the wire
        self.keyring = KeyRing(self.db, identity) if identity is not None else None

    def close(self) -> None:
        self.db.close()

    # --- outbox ---------------------------------------------------------------------------

    def meta(self, key: str) -> object | None:
        """A small remembered value (e.g. the relay's clock offset), None when unset."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else msgpack.unpackb(row[0])

    def set_meta(self, key: str, value: object) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, msgpack.packb(value))
            )

    #: Called with each item before it is queued; raising refuses it (nothing is stored). The
    #: session sets it to stop sending to a member whose verified keys changed.
    before_enqueue: Callable[[OutItem], None] | None = None

    def enqueue(self, item: OutItem, created: float | None = None) -> None:
        """Durably queue an outgoing message (fsync) before it is shown or sent, sealed when
        end-to-end encryption is on. ``created`` places it in the queue's order."""
        if self.before_enqueue is not None:
            self.before_enqueue(item)
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                # A client id is sealed at most once: it is the nonce (see core.e2e).
                known = self.db.execute(
                    "SELECT 1 FROM outbox WHERE cid=? UNION ALL SELECT 1 FROM messages WHERE cid=?",
                    (item.cid, item.cid),
                ).fetchone()
                if known is None:
                    sealed = None
                    if self.keyring is not None and item.kind in SEALED_KINDS:
                        sealed = self.keyring.seal(item.consult, item.kind, item.cid, item.body)
                    self.db.execute(
                        "INSERT INTO outbox (cid, consult, kind, body, created, error, sealed) "
                        "VALUES (?,?,?,?,?,NULL,?)",
                        (item.cid, item.consult, item.kind, item.body, created or time.time(), sealed),
                    )
                self.db.execute("INSERT OR IGNORE INTO consults (id) VALUES (?)", (item.consult,))
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def outbox(self) -> list[OutItem]:
        """Items still waiting for the relay, oldest first (failed ones are not retried), as
        they go on the wire (sealed)."""
        return [
            OutItem(r[0], r[1], r[2], r[3])
            for r in self.db.execute(
                "SELECT cid, consult, kind, coalesce(sealed, body) FROM outbox WHERE error IS NULL "
                "ORDER BY created, rowid"
            )
        ]

    def wire_item(self, item: OutItem) -> OutItem:
        """The queued item as it goes on the wire: sealed when end-to-end encryption is on."""
        row = self.db.execute("SELECT sealed FROM outbox WHERE cid=?", (item.cid,)).fetchone()
        if row is None or row[0] is None:
            return item
        return OutItem(item.cid, item.consult, item.kind, bytes(row[0]))

    def rekey(self, cid: bytes) -> OutItem | None:
        """The relay refused an item sealed with a key in use before a member left: retire
        that key and seal the consult's queued items anew (same client ids, new key id, so
        new nonces). Returns the item to send again; None for a refused key message, which
        is dropped (the new key is given out instead)."""
        assert self.keyring is not None
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT consult, kind, sealed FROM outbox WHERE cid=?", (cid,)).fetchone()
            if row is None:
                return None
            consult, kind, sealed = row
            if sealed is None:
                self.db.execute("DELETE FROM outbox WHERE cid=?", (cid,))
                self.keyring.retire(consult)
                return None
            if self.keyring.current(consult)[0] == e2e.key_id_of(bytes(sealed)):
                self.keyring.retire(consult)
            new_id, _ = self.keyring.current(consult)
            for other, k, body, old in self.db.execute(
                "SELECT cid, kind, body, sealed FROM outbox "
                "WHERE consult=? AND sealed IS NOT NULL AND error IS NULL",
                (consult,),
            ).fetchall():
                if e2e.key_id_of(bytes(old)) != new_id:
                    self.db.execute(
                        "UPDATE outbox SET sealed=? WHERE cid=?",
                        (self.keyring.seal(consult, k, bytes(other), bytes(body)), other),
                    )
            log.info("re-keyed consult=%s key=%s", consult, new_id.hex())
        return self.wire_item(OutItem(cid, consult, kind, b""))

    def members(self, consult: str) -> list[str]:
        """The consult's members as this device last heard them (from the relay's notes)."""
        row = self.db.execute("SELECT members FROM consults WHERE id=?", (consult,)).fetchone()
        return [m for m in (row[0].split(",") if row else []) if m]

    def set_members(self, consult: str, members: list[str]) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO consults (id, members) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET members=excluded.members",
                (consult, ",".join(members)),
            )

    def first_queued(self, consult: str) -> float | None:
        """When the oldest item still queued for the consult was queued: a key message goes
        just before it, so a reconnect sends the key first."""
        row = self.db.execute(
            "SELECT min(created) FROM outbox WHERE consult=? AND error IS NULL", (consult,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def outbox_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM outbox WHERE error IS NULL").fetchone()[0])

    def acked(self, item_cid: bytes, consult: str, seq: int, when: int, sender: str, cursor: int) -> None:
        """Move an acknowledged item from the outbox into history, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT kind, body FROM outbox WHERE cid=?", (item_cid,)).fetchone()
            if row is not None and row[0] not in NOT_HISTORY:  # keys and asks for them are not history
                self.db.execute(
                    "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?)",
                    (consult, seq, item_cid, sender, when, row[0], row[1]),
                )
            self.db.execute("DELETE FROM outbox WHERE cid=?", (item_cid,))
            self._set_cursor(consult, cursor)

    def rejected(self, item_cid: bytes, reason: str) -> None:
        with self.db:
            self.db.execute("UPDATE outbox SET error=? WHERE cid=?", (reason, item_cid))

    # --- history --------------------------------------------------------------------------

    def add_messages(self, msgs: list[tuple[wire.Msg, int]]) -> None:
        """Keep accepted messages and their cursors in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for m, cursor in msgs:
                self._add(m)
                self._set_cursor(m.consult, cursor)

    def _add(self, m: wire.Msg) -> None:
        replay = self.db.execute(
            "SELECT seq FROM messages WHERE consult=? AND cid=? AND seq!=?", (m.consult, m.cid, m.seq)
        ).fetchone()
        if replay is not None:  # the relay takes a client id once: a second copy is a replay
            log.warning("replayed message dropped consult=%s seq=%d (first %d)", m.consult, m.seq, replay[0])
            return
        mine = self.db.execute("SELECT kind, body FROM outbox WHERE cid=?", (m.cid,)).fetchone()
        self.db.execute("DELETE FROM outbox WHERE cid=?", (m.cid,))
        if self.keyring is None:
            kind, body = m.kind, m.body
        elif mine is not None and m.sender == self.keyring.me.name and mine[0] == m.kind:
            kind, body = m.kind, bytes(mine[1])  # our own, acknowledged on another connection
            if kind == TITLE:
                set_title(self.db, m.consult, body)
            if kind in NOT_HISTORY:
                return
        else:
            taken = self.keyring.take(m)
            if taken is None:
                return
            kind, body = taken
            if kind == TITLE:
                set_title(self.db, m.consult, body)
                return
        self.db.execute(
            "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?)",
            (m.consult, m.seq, m.cid, m.sender, m.time, kind, body),
        )
        if kind == wire.KINDS["system"]:
            self._apply_system(m)

    def _set_cursor(self, consult: str, cursor: int) -> None:
        self.db.execute(
            "INSERT INTO consults (id, cursor) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET cursor=max(cursor, excluded.cursor)",
            (consult, cursor),
        )

    def _apply_system(self, m: wire.Msg) -> None:
        try:
            ev = msgpack.unpackb(m.body, raw=False)
        except Exception:
            return
        if not isinstance(ev, dict):
            return
        self.db.execute("INSERT OR IGNORE INTO consults (id) VALUES (?)", (m.consult,))
        if ev.get("event") == "open":  # the title comes sealed, apart (older relays named it here)
            title = str(ev.get("title", ""))
            self.db.execute(
                "UPDATE consults SET title=CASE WHEN ?='' THEN title ELSE ? END, members=? WHERE id=?",
                (title, title, ",".join(map(str, ev.get("members", []))), m.consult),
            )
        elif ev.get("event") == "add":
            (members,) = self.db.execute("SELECT members FROM consults WHERE id=?", (m.consult,)).fetchone()
            names = [n for n in members.split(",") if n]
            if ev.get("member") not in names:
                names.append(str(ev.get("member")))
            self.db.execute("UPDATE consults SET members=? WHERE id=?", (",".join(names), m.consult))
        elif ev.get("event") == "remove":
            (members,) = self.db.execute("SELECT members FROM consults WHERE id=?", (m.consult,)).fetchone()
            names = [n for n in members.split(",") if n and n != ev.get("member")]
            self.db.execute("UPDATE consults SET members=? WHERE id=?", (",".join(names), m.consult))
            if self.keyring is not None:
                self.keyring.retire(m.consult)  # what follows is sealed with a key the leaver never gets

    def cursors(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT id, cursor FROM consults")}

    def ahead(self) -> dict[str, set[int]]:
        """Seqs held above each cursor (our own acknowledged messages)."""
        out: dict[str, set[int]] = {}
        for consult, seq in self.db.execute(
            "SELECT m.consult, m.seq FROM messages m JOIN consults c ON c.id=m.consult WHERE m.seq > c.cursor"
        ):
            out.setdefault(consult, set()).add(seq)
        return out

    def set_marks(self, consult: str, member: str, delivered: int, read: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO marks VALUES (?,?,?,?) ON CONFLICT(consult, member) DO UPDATE SET "
                "delivered=max(delivered, excluded.delivered), read=max(read, excluded.read)",
                (consult, member, delivered, read),
            )

    def consults(self) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT c.id, c.title, c.members, c.cursor, "
            "(SELECT max(time) FROM messages m WHERE m.consult=c.id) "
            "FROM consults c ORDER BY c.id"
        ).fetchall()
        return [
            {
                "id": r[0],
                "title": r[1],
                "members": [m for m in r[2].split(",") if m],
                "last_seq": r[3],
                "last_time": r[4],
                "queued": self.db.execute(
                    "SELECT count(*) FROM outbox WHERE consult=? AND error IS NULL", (r[0],)
                ).fetchone()[0],
            }
            for r in rows
        ]

    def has_consult(self, consult: str) -> bool:
        return bool(self.db.execute("SELECT 1 FROM consults WHERE id=?", (consult,)).fetchone())

    def history(
        self,
        consult: str,
        me: str,
        since: int = 0,
        limit: int | None = None,
        before: int | None = None,
        queued: bool = True,
    ) -> Iterator[Line]:
        """Stored messages with since < seq < before in seq order (the last ``limit`` of them),
        then queued ones, with honest states. Paging with ``before`` lets a view of a long
        consult load only what is on screen."""
        marks = self.db.execute(
            "SELECT member, delivered, read FROM marks WHERE consult=?", (consult,)
        ).fetchall()
        others = [(d, r) for m, d, r in marks if m != me]
        members = self.db.execute("SELECT members FROM consults WHERE id=?", (consult,)).fetchone()
        n_others = len([m for m in (members[0].split(",") if members else []) if m and m != me])
        all_delivered = min((d for d, _ in others), default=0) if len(others) >= n_others else 0
        all_read = min((r for _, r in others), default=0) if len(others) >= n_others else 0
        mine = {m: (d, r) for m, d, r in marks}.get(me, (0, 0))
        upper = before if before is not None else 2**62
        originals = _Originals(self.db, self.path.parent, consult, me)
        rows = self.db.execute(
            "SELECT seq, cid, sender, time, kind, body FROM messages "
            "WHERE consult=? AND seq>? AND seq<? ORDER BY seq DESC LIMIT ?",
            (consult, since, upper, -1 if limit is None else limit),
        ).fetchall()
        for seq, cid, sender, when, kind, body in reversed(rows):
            if sender == me:
                state = "read" if all_read >= seq else "delivered" if all_delivered >= seq else "stored"
            else:
                state = "read" if mine[1] >= seq else "delivered"
            text, original = self._text(kind, body, originals, cid, sender == me)
            yield Line(
                consult,
                seq,
                cid.hex(),
                sender,
                when,
                kind_name(kind),
                text,
                state,
                _event_data(kind, body),
                original,
            )
        if not queued:
            return
        for cid, kind, body, created, error in self.db.execute(
            f"SELECT cid, kind, body, created, error FROM outbox WHERE consult=? "
            f"AND kind NOT IN ({','.join('?' * len(NOT_HISTORY))}) ORDER BY created",
            (consult, *NOT_HISTORY),
        ).fetchall():
            text, original = self._text(kind, body, originals, cid, True)
            yield Line(
                consult,
                None,
                cid.hex(),
                me,
                int(created * 1000),
                kind_name(kind),
                text,
                "failed" if error else "queued",
                _event_data(kind, body),
                original,
            )

    def _text(
        self, kind: int, body: bytes, originals: _Originals, cid: bytes, mine: bool
    ) -> tuple[str, str | None]:
        blobs = self.path.parent / "blobs"
        if kind == wire.KINDS["image"]:
            return image_line(body, blobs, originals, cid, mine)
        return body_text(kind, body, blobs), None

    def overview(self, me: str) -> list[dict[str, object]]:
        """One row per consult for a consult list: last message, unread count, and since when
        the consult has waited for this user (the oldest message from others after this
        user's last one), newest activity first."""
        rows = []
        for c in self.consults():
            consult = str(c["id"])
            last = self.db.execute(
                "SELECT sender, time, kind, body FROM messages WHERE consult=? ORDER BY seq DESC LIMIT 1",
                (consult,),
            ).fetchone()
            read = self.db.execute(
                "SELECT read FROM marks WHERE consult=? AND member=?", (consult, me)
            ).fetchone()
            (unread,) = self.db.execute(
                "SELECT count(*) FROM messages WHERE consult=? AND seq>? AND sender!=? AND kind!=?",
                (consult, read[0] if read else 0, me, wire.KINDS["system"]),
            ).fetchone()
            (mine,) = self.db.execute(
                "SELECT coalesce(max(seq), 0) FROM messages WHERE consult=? AND sender=? AND kind!=?",
                (consult, me, wire.KINDS["system"]),
            ).fetchone()
            (waiting,) = self.db.execute(
                "SELECT min(time) FROM messages WHERE consult=? AND seq>? AND sender!=? AND kind!=?",
                (consult, mine, me, wire.KINDS["system"]),
            ).fetchone()
            rows.append(
                {
                    **c,
                    "last_sender": last[0] if last else None,
                    "last_text": body_text(last[2], last[3]) if last else "",
                    "last_time": last[1] if last else None,
                    "unread": int(unread),
                    "waiting_since": waiting,
                }
            )
        rows.sort(key=lambda r: -(r["last_time"] or 0))  # type: ignore[operator]
        return rows

    def last_seq(self, consult: str) -> int:
        row = self.db.execute("SELECT max(seq) FROM messages WHERE consult=?", (consult,)).fetchone()
        return int(row[0] or 0)

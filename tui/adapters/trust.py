"""What this device knows and has verified of other members' device keys (``trust.sqlite3``).

Two tables: the keys last seen for each member (from the relay, with when they changed) and
the members this user verified (the digest of their keys at that moment). A verified member
whose keys now differ is *changed*: sending into a consult with them stops until the user
compares the new safety number and confirms it again. Kept apart from the message store so
that resetting one never silently resets the other.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

TRUST_FILE = "trust.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    user TEXT PRIMARY KEY, keys BLOB NOT NULL, digest BLOB NOT NULL, changed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verified (user TEXT PRIMARY KEY, digest BLOB NOT NULL, at INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Known:
    user: str
    keys: tuple[bytes, ...]
    digest: bytes
    changed_at: int
    verified: bytes | None  # the digest confirmed by this user, if any

    @property
    def state(self) -> str:
        """unverified, verified, or changed (verified once, keys different since)."""
        if self.verified is None:
            return "unverified"
        return "verified" if self.verified == self.digest else "changed"


class TrustStore:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(data_dir / TRUST_FILE, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TrustStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def saw(self, user: str, keys: tuple[bytes, ...], digest: bytes, now_ms: int) -> bool:
        """Record the keys the relay gave for ``user``; True when they differ from before."""
        row = self.db.execute("SELECT digest FROM seen WHERE user=?", (user,)).fetchone()
        if row is not None and bytes(row[0]) == digest:
            return False
        self.db.execute(
            "INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)", (user, b"".join(sorted(keys)), digest, now_ms)
        )
        return row is not None

    def verify(self, user: str, digest: bytes, now_ms: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO verified VALUES (?, ?, ?)", (user, digest, now_ms))

    def known(self, user: str) -> Known | None:
        row = self.db.execute(
            "SELECT s.keys, s.digest, s.changed_at, v.digest FROM seen s "
            "LEFT JOIN verified v ON v.user = s.user WHERE s.user=?",
            (user,),
        ).fetchone()
        if row is None:
            return None
        keys = bytes(row[0])
        split = tuple(keys[i : i + 32] for i in range(0, len(keys), 32))
        return Known(user, split, bytes(row[1]), row[2], bytes(row[3]) if row[3] is not None else None)

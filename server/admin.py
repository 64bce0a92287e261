"""Relay administration on the data dir directly (works while the relay runs: SQLite WAL)."""

from __future__ import annotations

from pathlib import Path

from medcomm.core import wire
from medcomm.errors import UsageError
from medcomm.limits import RELAY
from medcomm.server.store import RelayStore


def enroll(data: Path, name: str, role: str) -> str:
    """Create (or reuse) user NAME with ROLE and return a one-time code for one device."""
    if role not in ("clinic", "doctor"):
        raise UsageError("role must be clinic or doctor")
    name = wire.typed_user_name(name)
    store = RelayStore(data)
    try:
        return store.enroll(name, role, RELAY.enrol_code_ttl)
    finally:
        store.close()


def users(data: Path) -> list[tuple[str, str]]:
    store = RelayStore(data)
    try:
        return store.users()
    finally:
        store.close()

"""Verifying members: safety numbers, changed keys announced, sending stopped until re-checked.

The device asks the relay for the device keys of everyone it shares a consult with whenever it
syncs (``refresh``), keeps them in its trust store, and reports any verified member whose keys
changed. ``check_send`` is called before anything is queued into a consult: a verified member
with changed keys stops it, with the command that shows the new number. Members never
verified do not stop anything (most clinics will verify a few specialists, not everyone), but
``medcomm verify`` shows them as unverified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medcomm.adapters.trust import TRUST_FILE, Known, TrustStore
from medcomm.core import safety
from medcomm.errors import NotFound, RelayKeyChanged, UsageError, WireError

if TYPE_CHECKING:
    from medcomm.session.service import Session


class MemberKeyChanged(RelayKeyChanged):
    """A verified member's device keys changed since they were verified."""


@dataclass(frozen=True, slots=True)
class Verification:
    them: str
    number: str
    state: str  # unverified, verified, changed
    devices: int


def _trust(session: Session) -> TrustStore:
    return TrustStore(session.store.path.parent)


def co_members(session: Session) -> list[str]:
    names = {m for c in session.store.consults() for m in c["members"]}  # type: ignore[attr-defined]
    names.discard(session.me)
    return sorted(names)


async def _keys(session: Session, names: list[str], timeout: float) -> dict[str, tuple[bytes, ...]]:
    got = await session.link.request("keys", {"names": names}, timeout)
    if not isinstance(got, dict):
        raise WireError("the relay's key list is not a map")
    out: dict[str, tuple[bytes, ...]] = {}
    for name, keys in got.items():
        if not isinstance(name, str) or not isinstance(keys, list) or not keys:
            raise WireError("the relay's key list is malformed")
        if any(not isinstance(k, bytes) or len(k) != safety.KEY_LEN for k in keys):
            raise WireError("the relay sent a key that is not 32 bytes")
        out[name] = tuple(keys)
    return out


async def refresh(session: Session, timeout: float, names: list[str] | None = None) -> list[Known]:
    """Fetch current keys of co-members (or ``names``); return the verified ones now changed."""
    names = co_members(session) if names is None else names
    if not names:
        return []
    keys = await _keys(session, [*names, session.me], timeout)
    now = int(time.time() * 1000)
    changed: list[Known] = []
    with _trust(session) as trust:
        for name, ks in keys.items():
            trust.saw(name, ks, safety.keys_digest(ks), now)
            known = trust.known(name)
            if known is not None and known.state == "changed" and name != session.me:
                changed.append(known)
    return changed


async def verification(session: Session, them: str, timeout: float) -> Verification:
    """The safety number with ``them`` from keys fetched now."""
    if them == session.me:
        raise UsageError("a safety number is between you and another member")
    keys = await _keys(session, [session.me, them], timeout)
    if them not in keys:
        raise NotFound(f"{them} has no registered device (or no such user)")
    if session.me not in keys:
        raise WireError("the relay does not list this device's own key")
    now = int(time.time() * 1000)
    with _trust(session) as trust:
        trust.saw(them, keys[them], safety.keys_digest(keys[them]), now)
        known = trust.known(them)
    number = safety.safety_number(session.me, keys[session.me], them, keys[them])
    return Verification(them, number, known.state if known else "unverified", len(keys[them]))


async def confirm(session: Session, them: str, number: str, timeout: float) -> Verification:
    """Mark ``them`` verified, provided the number the user compared is still the current one."""
    v = await verification(session, them, timeout)
    if "".join(number.split()) != v.number:
        raise UsageError(f"that is not the current safety number with {them}: show it again and compare")
    with _trust(session) as trust:
        known = trust.known(them)
        assert known is not None  # verification() just recorded it
        trust.verify(them, known.digest, int(time.time() * 1000))
    return Verification(them, v.number, "verified", v.devices)


def check_send(session: Session, consult: str) -> None:
    """Refuse to queue into a consult where a verified member's keys changed."""
    if not (session.store.path.parent / TRUST_FILE).exists():
        return  # nobody verified on this device yet: the common case costs one stat
    row = session.store.db.execute("SELECT members FROM consults WHERE id=?", (consult,)).fetchone()
    members = [m for m in (row[0] if row else "").split(",") if m and m != session.me]
    with _trust(session) as trust:
        for name in members:
            known = trust.known(name)
            if known is not None and known.state == "changed":
                raise MemberKeyChanged(
                    f"{name}'s device keys changed since you verified them: nothing was sent. Compare "
                    f"the new safety number (medcomm verify {name}) and confirm it before sending",
                    member=name,
                )

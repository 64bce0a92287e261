"""The session's side of end-to-end encryption: giving sender keys out and asking for them.

Sealing and opening happen in the local store as messages are queued and arrive; what needs
the relay (who the members are, which devices they have) and the reliable path (key messages
and key requests) happens here:

* ``ensure_distributed`` before a sealed message is handed to the link: every member device
  that does not have this device's current key for the consult gets it, boxed, in a ``key``
  message queued *ahead* of the messages it opens. The device list is cached, so a send costs
  no extra round trip once a consult's devices are known; offline, the key goes at the next
  connection (``maintain``), and receivers keep the message locked until it arrives.
* ``maintain`` after each connection and catch-up: learn unknown senders' devices, take the
  keys they boxed, answer other devices' key requests from the keys this device holds (only
  for current members, only to a device the relay lists as theirs), ask for the keys of
  locked messages (once per ``ASK_AGAIN``), and give out keys not yet given.

A member the relay removed is no longer in the member list, gets no box for the new key the
removal started, and has its key requests ignored.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

from medcomm.adapters.keyring import KEY_KINDS, SEALED_KINDS
from medcomm.core import e2e, wire
from medcomm.core.delivery import OutItem
from medcomm.errors import LinkDown, MedcommError, WireError

if TYPE_CHECKING:
    from medcomm.adapters.keyring import KeyRing
    from medcomm.session.service import Session

log = logging.getLogger(__name__)

ASK_AGAIN = 600.0  # seconds before the same missing key is asked for again
REQUEST_TIMEOUT = 20.0  # one device-list or member-list request
CONNECTING_WAIT = 10.0  # a first send waits this long for a link being made, to send its key first


def _ring(session: Session) -> KeyRing:
    ring = session.store.keyring
    assert ring is not None, "the session's store always has the device's keys"
    return ring


async def devices(session: Session, names: list[str], *, refresh: bool = False) -> dict[str, list[bytes]]:
    """Each name's device keys: from the cache, asking the relay for names it lacks (or all
    of them with ``refresh``). Names the relay does not know are left out."""
    from medcomm.session.verify import _keys

    ring = _ring(session)
    want = names if refresh else [n for n in names if ring.devices(n) is None]
    if want:
        got = await _keys(session, sorted(set(want)), REQUEST_TIMEOUT)
        with session.store.db:
            ring.set_devices({n: list(k) for n, k in got.items()})
    return {n: d for n in names if (d := ring.devices(n)) is not None}


async def _queue(session: Session, consult: str, kind: str, body: bytes, before: float | None) -> None:
    item = OutItem(secrets.token_bytes(wire.CID_LEN), consult, wire.KINDS[kind], body)
    session.store.enqueue(item, created=None if before is None else before - 1e-3)
    await session.link.submit(item)


async def ensure_distributed(session: Session, consult: str) -> int:
    """Give this device's current key for the consult to every member device that lacks it.
    Returns the number of devices boxed for. Never raises for a missing link: what cannot be
    done now is done by ``maintain`` at the next connection."""
    ring = _ring(session)
    fresh = ring.undelivered(consult, [])
    if fresh is None:
        return 0
    names = session.store.members(consult)
    cached = {n: ring.devices(n) for n in names}
    # A new key goes to the members the relay names now, not to those this device last heard
    # of: one it has not heard was removed must not get it.
    if not names or not ring.ever_given(consult) or any(d is None for d in cached.values()):
        if session.link.status.state == "connecting":  # a command just started: the message
            with contextlib.suppress(LinkDown):  # cannot leave before the link anyway, and
                await session.link.wait_until(  # this way its key goes first
                    lambda: session.link.status.state != "connecting", CONNECTING_WAIT
                )
        if session.link.status.state != "online":
            return 0
        try:
            got = await session.link.request("members", {"consult": consult}, REQUEST_TIMEOUT)
        except (LinkDown, MedcommError) as exc:
            log.info("members of consult=%s not learned: %s", consult, exc)
            return 0
        names = [str(m) for m in got["members"]]  # type: ignore[index]
        session.store.set_members(consult, names)
        try:
            known = await devices(session, names)
        except (LinkDown, MedcommError) as exc:
            log.info("device list for consult=%s not fetched: %s", consult, exc)
            return 0
    else:
        known = {n: d for n, d in cached.items() if d is not None}
    targets = [d for devs in known.values() for d in devs]
    with session.store.db:
        todo = ring.undelivered(consult, targets)
        ring.mark_sent(consult, fresh[0], [ring.public])  # given out to who is in: ask no more
    if todo is None or not todo[2]:
        return 0
    key_id, key, recipients = todo
    shared = [e2e.SharedKey(session.me, key_id, key, ring.public)]
    first = session.store.first_queued(consult)
    for body in e2e.bundle(ring.me, consult, shared, recipients):
        await _queue(session, consult, "key", body, first)
    with session.store.db:
        ring.mark_sent(consult, key_id, recipients)
    log.info("key given consult=%s key=%s devices=%d", consult, key_id.hex(), len(recipients))
    return len(recipients)


async def before_submit(session: Session, item: OutItem) -> None:
    """The link's hook: a sealed item's key goes out ahead of it."""
    if item.kind in SEALED_KINDS and item.kind not in KEY_KINDS:
        await ensure_distributed(session, item.consult)


async def maintain(session: Session, now: float | None = None) -> dict[str, int]:
    """One round of key housekeeping (see the module's docstring); returns counts for logs
    and tests."""
    ring = _ring(session)
    now = time.time() if now is None else now
    done = {"opened": 0, "answered": 0, "asked": 0, "given": 0}
    unknown = ring.unknown_senders()
    if unknown:
        await devices(session, sorted(unknown), refresh=True)
    with session.store.db:
        done["opened"] = ring.open_bundles(give_up=bool(unknown))
    session.link.notify_unlocked()
    for consult, seq, sender, body in ring.requests():
        done["answered"] += await _answer(session, ring, consult, sender, body)
        with session.store.db:
            ring.done(consult, seq)
    with session.store.db:  # asked only once caught up: the key may be just behind in the stream
        missing = ring.missing(now, ASK_AGAIN) if session.link.core.is_synced() else {}
    for consult, wanted in missing.items():
        if session.me not in session.store.members(consult):
            continue
        for start in range(0, len(wanted), e2e.MAX_WANTED):
            part = wanted[start : start + e2e.MAX_WANTED]
            ask = e2e.encode_request(e2e.KeyRequest(ring.public, tuple(part)))
            await _queue(session, consult, "keyreq", ask, None)
            with session.store.db:
                ring.asked(consult, part, now)
            done["asked"] += len(part)
    for consult in ring.own_consults():
        done["given"] += await ensure_distributed(session, consult)
    if any(done.values()):
        log.info("keys: %s", " ".join(f"{k}={v}" for k, v in done.items()))
    return done


async def _answer(session: Session, ring: KeyRing, consult: str, sender: str, body: bytes) -> int:
    """Box the keys a member's device asked for, if this device holds them."""
    try:
        req = e2e.decode_request(body)
    except WireError as exc:
        log.warning("key request dropped consult=%s: %s", consult, exc)
        return 0
    if req.device == ring.public or sender not in session.store.members(consult):
        return 0  # our own ask coming back, or someone no longer in the consult
    if not ring.device_of(sender, req.device):
        await devices(session, [sender], refresh=True)
        if not ring.device_of(sender, req.device):
            log.warning("key request from an unknown device of %s dropped consult=%s", sender, consult)
            return 0
    keys = ring.held(consult, list(req.wanted))
    if not keys:
        return 0
    for out in e2e.bundle(ring.me, consult, keys, [req.device], name_own=False):
        await _queue(session, consult, "key", out, None)
    return len(keys)


async def announce_call_key(session: Session, consult: str, call: str) -> bytes:
    """A fresh key for this device's voice stream in ``call``, given to the consult's members
    in a sealed ``callkey`` message (queued ahead of nothing: voice frames that arrive before
    it are dropped by the receiver until it does). A new one on every join, so a stream's
    nonces (its media clock) never repeat under one key."""
    key = secrets.token_bytes(e2e.KEY_LEN)
    await _queue(session, consult, "callkey", e2e.encode_call_key(call, key), None)
    log.info("call key given consult=%s call=%s", consult, call)
    return key


async def share_history(session: Session, consult: str, name: str) -> int:
    """A member just added sees the whole record (the specialist invited into a consult): the
    adding device gives every key it holds for the consult to the newcomer's devices, so the
    messages from before they joined open too. Others' keys it lacks, the newcomer asks for."""
    ring = _ring(session)
    found = await devices(session, [name], refresh=True)
    keys = ring.all_keys(consult)
    targets = found.get(name, [])
    if not keys or not targets:
        return 0
    for start in range(0, len(keys), 64):  # ~60 B a key: a box of 64 stays far below the body limit
        for body in e2e.bundle(ring.me, consult, keys[start : start + 64], targets, name_own=False):
            await _queue(session, consult, "key", body, None)
    log.info("history keys given consult=%s keys=%d devices=%d", consult, len(keys), len(targets))
    return len(keys)

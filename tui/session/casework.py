"""The consult workflow on a device: case card, status, follow-ups, the queue, linked consults.

Everything here is a thin layer over the pure folds of :mod:`medcomm.core.casecard` and
:mod:`medcomm.core.workflow`: reads fold the consult's messages from the device's store
(stored ones in seq order, then this device's queued ones, so a change shows at once and
offline); writes check the change against that state, then make it durable in the outbox
exactly like ``Session.queue_text`` and hand it to the link. Nothing here waits for the
relay: the caller decides (``Session.wait_stored``), as the CLI does for ``medcomm send``.

The desk and the CLI use the same calls::

    state = consult_state(session, "k7m2qd")          # card, status, follow-ups
    item = await update_case(session, "k7m2qd", {"vitals.bp": "140/90"})
    item = await claim(session, "k7m2qd")
    entries = triage_queue(session)                   # across every consult on this device
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from medcomm.core import casecard, followup, triage, wire, workflow
from medcomm.core.delivery import OutItem
from medcomm.core.triage import QueueEntry
from medcomm.core.workflow import ConsultState, Event
from medcomm.errors import NotFound, UsageError

if TYPE_CHECKING:
    from medcomm.session.service import Session

log = logging.getLogger("medcomm.casework")

_KINDS = (wire.KINDS["system"], wire.KINDS["case"], wire.KINDS["status"], wire.KINDS["followup"])
_OUT_KINDS = _KINDS[1:]


def check_consult(consult: str) -> str:
    c = consult.strip().lower()
    try:
        return wire.consult_id(c)
    except Exception:
        raise UsageError(f"{consult!r} is not a consult id (6 letters/digits, e.g. k7m2qd)") from None


def new_patient_id() -> str:
    """A short pseudonymous patient key: no name, birth date or number in it."""
    return "p" + "".join(secrets.choice(wire.CONSULT_ALPHABET) for _ in range(7))


def new_followup_id() -> str:
    return "".join(secrets.choice(wire.CONSULT_ALPHABET) for _ in range(4))


# --- reading --------------------------------------------------------------------------------


def _events(session: Session, consult: str) -> Iterator[Event]:
    db = session.store.db
    marks = ",".join("?" * len(_KINDS))
    for seq, sender, when, kind, body in db.execute(
        f"SELECT seq, sender, time, kind, body FROM messages WHERE consult=? AND kind IN ({marks}) "
        "ORDER BY seq",
        (consult, *_KINDS),
    ):
        yield Event(seq, sender, when, kind, body)
    marks = ",".join("?" * len(_OUT_KINDS))
    for kind, body, created in db.execute(
        f"SELECT kind, body, created FROM outbox WHERE consult=? AND error IS NULL AND kind IN ({marks}) "
        "ORDER BY created, rowid",
        (consult, *_OUT_KINDS),
    ):
        yield Event(None, session.me, int(created * 1000), kind, body)


def _first_time(session: Session, consult: str) -> tuple[int, str] | None:
    return session.store.db.execute(
        "SELECT time, sender FROM messages WHERE consult=? ORDER BY seq LIMIT 1", (consult,)
    ).fetchone()


def consult_state(session: Session, consult: str) -> ConsultState:
    """A consult's folded card, status and follow-ups (NotFound when not on this device)."""
    consult = check_consult(consult)
    row = session.store.db.execute("SELECT title, members FROM consults WHERE id=?", (consult,)).fetchone()
    if row is None:
        raise NotFound(f"no consult {consult} on this device (try medcomm consult list)")
    st = workflow.fold(consult, _events(session, consult), row[0], [m for m in row[1].split(",") if m])
    first = _first_time(session, consult)
    if first is not None and (not st.opened_at or first[0] < st.opened_at):  # arrival: its first message
        st.opened_at, st.opened_by = first
        if not st.status.history:
            st.status.since = st.opened_at
    return st


def all_states(session: Session) -> list[ConsultState]:
    rows = session.store.db.execute("SELECT id FROM consults ORDER BY id").fetchall()
    return [consult_state(session, r[0]) for r in rows]


def _local_tz() -> dt.tzinfo:
    return dt.datetime.now().astimezone().tzinfo or dt.UTC


def triage_queue(
    session: Session, now_ms: int | None = None, tz: dt.tzinfo | None = None
) -> list[QueueEntry]:
    """The queue across every consult this device knows (see ``triage.queue``)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return triage.queue(all_states(session), session.me, now, tz or _local_tz())


def linked_consults(session: Session, consult: str) -> list[ConsultState]:
    """The patient's other consults on this device (same patient key), oldest first."""
    return triage.linked(all_states(session), check_consult(consult))


def today(tz: dt.tzinfo | None = None) -> dt.date:
    return dt.datetime.now(tz or _local_tz()).date()


# --- writing --------------------------------------------------------------------------------


async def _queue(session: Session, consult: str, kind: str, body: bytes) -> OutItem:
    item = OutItem(secrets.token_bytes(wire.CID_LEN), consult, wire.KINDS[kind], body)
    session.store.enqueue(item)
    await session.link.submit(item)
    log.info("queued %s consult=%s bytes=%d", kind, consult, len(body))
    return item


async def update_case(session: Session, consult: str, raw: dict[str, str | None]) -> OutItem | None:
    """Check card changes against the card and queue them as one version; None when
    nothing would change (the card already says that)."""
    st = consult_state(session, consult)
    changes = casecard.prepare(st.card, raw, new_patient_id)
    if not changes:
        return None
    return await _queue(session, st.id, "case", casecard.encode(changes))


def check_card(raw: dict[str, str | None]) -> dict[str, str | None]:
    """Check a card before a consult exists (``consult open``): the same checks, so a bad
    value refuses the open instead of leaving a consult without its card."""
    return casecard.prepare(casecard.Card(), raw, new_patient_id)


async def set_status(session: Session, consult: str, to: str, advice: str = "") -> OutItem:
    st = consult_state(session, consult)
    workflow.check_change(st.status, session.me, "set", to, advice=advice)
    return await _queue(session, st.id, "status", workflow.encode_status("set", to, advice=advice))


async def claim(session: Session, consult: str) -> OutItem:
    """Take the consult: in consult, assigned to this user."""
    st = consult_state(session, consult)
    workflow.check_change(st.status, session.me, "claim")
    return await _queue(session, st.id, "status", workflow.encode_status("claim"))


async def assign(session: Session, consult: str, name: str, timeout: float) -> OutItem:
    """Assign the consult to ``name`` (a user; "" for nobody), adding them as a member first
    when they are not one: a local doctor brings a specialist in this way, and the
    specialist's device then catches up on the whole consult from its first message."""
    st = consult_state(session, consult)
    name = wire.typed_user_name(name) if name else ""
    workflow.check_change(st.status, session.me, "assign", assignee=name)
    if name and name not in st.members:
        await session.add_member(st.id, name, timeout)
    return await _queue(session, st.id, "status", workflow.encode_status("assign", assignee=name))


async def add_followup(session: Session, consult: str, due: dt.date, reason: str) -> tuple[OutItem, str]:
    st = consult_state(session, consult)
    fid = new_followup_id()
    while fid in st.followups:
        fid = new_followup_id()
    followup.check_followup(st.followups, "add", fid, reason)
    item = await _queue(session, st.id, "followup", followup.encode_followup("add", fid, due, reason))
    return item, fid


async def close_followup(
    session: Session, consult: str, fid: str | None, done: bool = True
) -> tuple[OutItem, str]:
    """Mark a follow-up done (or cancelled): the one named, or the only open one."""
    st = consult_state(session, consult)
    fid = followup.open_followup(st.followups, fid)
    op = "done" if done else "cancel"
    followup.check_followup(st.followups, op, fid)
    return await _queue(session, st.id, "followup", followup.encode_followup(op, fid)), fid


async def open_with_case(
    session: Session, title: str, others: list[str], raw: dict[str, str | None], timeout: float
) -> tuple[str, OutItem | None]:
    """Open a consult and queue its case card right behind the open (checked first)."""
    changes = check_card(raw)
    consult = await session.open_consult(title, others, timeout)
    if not changes:
        return consult, None
    return consult, await _queue(session, consult, "case", casecard.encode(changes))


def applied(state: ConsultState, seq: int) -> workflow.StatusChange | None:
    """The status change stored under ``seq`` as the fold saw it (a race can leave a
    claim not applied: another doctor's claim came first)."""
    return next((c for c in state.status.history if c.seq == seq), None)


def state_json(st: ConsultState) -> dict[str, object]:
    """A consult's folded state as plain JSON values (``medcomm case --json``)."""
    card = st.card
    return {
        "consult": st.id,
        "title": st.title,
        "members": st.members,
        "opened_at": st.opened_at,
        "opened_by": st.opened_by,
        "version": card.version,
        "fields": card.as_dict(),
        "set": {
            n: {"value": v.value, "version": v.version, "by": v.by, "at": v.at}
            for n, v in card.values.items()
        },
        "versions": [
            {
                "version": v.number,
                "seq": v.seq,
                "by": v.by,
                "at": v.at,
                "changes": {c.field: {"old": c.old, "new": c.new} for c in v.changes},
            }
            for v in card.versions
        ],
        "status": {
            "state": st.status.state,
            "assignee": st.status.assignee,
            "since": st.status.since,
            "advice": st.status.advice,
            "advice_by": st.status.advice_by,
            "advice_at": st.status.advice_at,
            "history": [
                {
                    "seq": c.seq,
                    "by": c.by,
                    "at": c.at,
                    "op": c.op,
                    "from": c.before,
                    "to": c.after,
                    "assignee": c.assignee,
                    "advice": c.advice,
                    "applied": c.applied,
                    **({"note": c.note} if c.note else {}),
                }
                for c in st.status.history
            ],
        },
        "followups": [
            {
                "id": f.id,
                "due": f.due.isoformat(),
                "reason": f.reason,
                "by": f.by,
                "at": f.at,
                "state": f.state,
                **({"closed_by": f.closed_by, "closed_at": f.closed_at} if f.state != "open" else {}),
            }
            for f in sorted(st.followups.values(), key=lambda f: (f.due, f.id))
        ],
        "problems": st.problems,
    }

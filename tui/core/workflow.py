"""A consult's workflow: its status and assignee, and the fold of its messages (sans-I/O).

Like the case card (:mod:`medcomm.core.casecard`), the workflow is not kept anywhere: each
change is a message in the consult (kind ``status`` or ``followup``), and every device
folds the consult's messages in seq order into the same state. The status machine::

    waiting ──claim / in_consult──► in_consult ──advised (+ advice)──► advised ──► closed
       ▲  └──────────── closed ◄───────────┘  │                          │  ▲        │
       └──────── waiting (hand back) ─────────┘     in_consult (more) ◄──┘  └ advised (amended)
    closed ──waiting (reopen)──► waiting

A change is checked against the state this device folded before it is queued, so a
clinician gets a clear refusal instead of a message nobody can apply. Two devices can still
race (two doctors claim at once while apart): the fold then applies the first in seq order
and keeps the second in the status history, marked not applied with the reason, so both
doctors see who has the consult.

Bodies (msgpack maps, compact keys)::

    status   {"v": 1, "op": "set"|"claim"|"assign", "to": state, "as": assignee, "adv": advice}

Unknown keys are ignored; a body that fails its checks is refused whole, with a reason.
:func:`fold` gives a consult's whole state: card (:mod:`medcomm.core.casecard`), status, and
follow-ups (:mod:`medcomm.core.followup`); the queue is :mod:`medcomm.core.triage`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

from medcomm.core import casecard, followup, wire
from medcomm.core.casecard import Card
from medcomm.core.followup import FollowUp
from medcomm.errors import LimitExceeded, UsageError, WireError

VERSION = 1
STATES = ("waiting", "in_consult", "advised", "closed")
TRANSITIONS: dict[str, frozenset[str]] = {
    "waiting": frozenset({"in_consult", "closed"}),
    "in_consult": frozenset({"waiting", "advised", "closed"}),
    "advised": frozenset({"in_consult", "advised", "closed"}),  # advised again: amended advice
    "closed": frozenset({"waiting"}),  # reopen
}


@dataclass(frozen=True)
class WorkflowLimits:
    max_advice: int = 4000  # characters of advice (about a page)
    max_body: int = 12 * 1024  # bytes of one status message


FLOW = WorkflowLimits()


# --- status -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One status message as the history shows it (applied or not, and why)."""

    seq: int | None
    by: str
    at: int
    op: str
    before: str
    after: str
    assignee: str | None
    advice: str
    applied: bool
    note: str = ""


@dataclass
class Status:
    state: str = "waiting"
    assignee: str | None = None
    since: int = 0  # ms: when the current state began (the consult's arrival at first)
    advice: str = ""
    advice_by: str = ""
    advice_at: int = 0
    history: list[StatusChange] = field(default_factory=list)


def check_change(status: Status, me: str, op: str, to: str = "", assignee: str = "", advice: str = "") -> str:
    """The state after ``me`` does ``op``; UsageError says why it cannot be done."""
    cur = status.state
    if op == "claim":
        if cur == "closed":
            raise UsageError("the consult is closed: reopen it first (medcomm status ID waiting)")
        if status.assignee == me and cur == "in_consult":
            raise UsageError("you already have this consult")
        if status.assignee not in (None, me):
            raise UsageError(
                f"{status.assignee} has this consult ({cur.replace('_', ' ')}); "
                f"to take it over: medcomm assign ID {me}"
            )
        return "in_consult"
    if op == "assign":
        if cur == "closed":
            raise UsageError("the consult is closed: reopen it first (medcomm status ID waiting)")
        if assignee and assignee == status.assignee:
            raise UsageError(f"already assigned to {assignee}")
        if not assignee and status.assignee is None:
            raise UsageError("nobody is assigned")
        return cur
    if op != "set":
        raise UsageError(f"unknown status operation {op!r}")
    if to not in STATES:
        raise UsageError(f"unknown status {to!r}: one of {', '.join(STATES)}")
    if to not in TRANSITIONS[cur]:
        allowed = ", ".join(sorted(TRANSITIONS[cur]))
        raise UsageError(f"cannot go from {cur} to {to} (from {cur}: {allowed})")
    if to == "advised" and not advice.strip():
        raise UsageError("advised needs the advice (--advice TEXT)")
    if to != "advised" and advice.strip():
        raise UsageError("advice goes with the advised status")
    if len(advice) > FLOW.max_advice:
        raise UsageError(f"advice of {len(advice)} characters, at most {FLOW.max_advice}")
    return to


def encode_status(op: str, to: str = "", assignee: str | None = None, advice: str = "") -> bytes:
    body: dict[str, object] = {"v": VERSION, "op": op}
    if to:
        body["to"] = to
    if assignee is not None:
        body["as"] = assignee
    if advice:
        body["adv"] = advice.strip()
    return _pack(body)


@dataclass(frozen=True, slots=True)
class StatusEvent:
    op: str
    to: str
    assignee: str | None  # for assign: "" = nobody
    advice: str


def decode_status(body: bytes) -> StatusEvent:
    obj = casecard.unpack_map(body, FLOW.max_body, "status change")
    op, to, who, advice = obj.get("op"), obj.get("to", ""), obj.get("as"), obj.get("adv", "")
    if op not in ("set", "claim", "assign"):
        raise WireError("status change: unknown operation")
    if not isinstance(to, str) or (op == "set" and to not in STATES):
        raise WireError("status change: unknown status")
    if not isinstance(advice, str) or len(advice) > FLOW.max_advice:
        raise WireError("status change: bad advice")
    if op == "assign":
        if not isinstance(who, str) or (who and not _is_name(who)):
            raise WireError("status change: bad assignee")
    else:
        who = None
    return StatusEvent(op, to, who, advice)


def _apply_status(
    status: Status, seq: int | None, by: str, at: int, body: bytes, problems: list[str]
) -> None:
    try:
        ev = decode_status(body)
    except WireError as exc:
        problems.append(f"#{seq if seq is not None else '-'} from {by}: {exc}")
        return
    before, assignee_before = status.state, status.assignee
    try:
        after = check_change(status, by, ev.op, ev.to, ev.assignee or "", ev.advice)
    except UsageError as exc:
        status.history.append(
            StatusChange(seq, by, at, ev.op, before, before, assignee_before, ev.advice, False, str(exc))
        )
        return
    if ev.op == "claim":
        status.assignee = by
    elif ev.op == "assign":
        status.assignee = ev.assignee or None
    if after != before or ev.op == "claim":
        status.since = at
    status.state = after
    if after == "advised":
        status.advice, status.advice_by, status.advice_at = ev.advice.strip(), by, at
    status.history.append(StatusChange(seq, by, at, ev.op, before, after, status.assignee, ev.advice, True))


def _is_name(v: str) -> bool:
    try:
        wire.user_name(v)
    except WireError:
        return False
    return True


# --- the folded consult -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """A consult message as the fold needs it (seq None: still in this device's outbox)."""

    seq: int | None
    sender: str
    time: int
    kind: int
    body: bytes


@dataclass
class ConsultState:
    id: str
    title: str = ""
    members: list[str] = field(default_factory=list)
    opened_at: int = 0
    opened_by: str = ""
    card: Card = field(default_factory=Card)
    status: Status = field(default_factory=Status)
    followups: dict[str, FollowUp] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def urgency(self) -> str:
        return self.card.get("urgency") or "routine"

    @property
    def patient_id(self) -> str | None:
        return self.card.get("patient.id")


def fold(consult: str, events: Iterable[Event], title: str = "", members: Iterable[str] = ()) -> ConsultState:
    """A consult's state from its messages, stored ones in seq order, then queued ones."""
    st = ConsultState(consult, title, list(members))
    case, status, follow = wire.KINDS["case"], wire.KINDS["status"], wire.KINDS["followup"]
    for ev in events:
        if not st.opened_at:
            st.opened_at, st.opened_by = ev.time, ev.sender
            st.status.since = ev.time
        if ev.kind == case:
            st.card.apply(ev.seq, ev.sender, ev.time, ev.body)
        elif ev.kind == status:
            _apply_status(st.status, ev.seq, ev.sender, ev.time, ev.body, st.problems)
        elif ev.kind == follow:
            followup.apply(st.followups, ev.seq, ev.sender, ev.time, ev.body, st.problems)
    st.problems[:0] = st.card.problems
    return st


# --- history lines for the new kinds --------------------------------------------------------


def event_fields(kind: int, body: bytes) -> dict[str, object]:
    """The decoded fields of a case, status or follow-up message (``history --json``)."""
    try:
        if kind == wire.KINDS["case"]:
            return {"fields": casecard.decode(body)}
        if kind == wire.KINDS["status"]:
            ev = decode_status(body)
            out: dict[str, object] = {"op": ev.op}
            if ev.to:
                out["to"] = ev.to
            if ev.assignee is not None:
                out["assignee"] = ev.assignee
            if ev.advice:
                out["advice"] = ev.advice
            return out
        if kind == wire.KINDS["followup"]:
            op, fid, due, reason = followup.decode_followup(body)
            return {
                "op": op,
                "id": fid,
                **({"due": due.isoformat()} if due else {}),
                **({"reason": reason} if reason else {}),
            }
    except WireError as exc:
        return {"error": str(exc)}
    return {}


def event_text(kind: int, body: bytes) -> str:
    """A case, status or follow-up message as one history line."""
    if kind == wire.KINDS["case"]:
        return casecard.describe(body)
    f = event_fields(kind, body)
    if "error" in f:
        return f"(unreadable {wire.KIND_NAMES.get(kind, '?')} message: {f['error']})"
    if kind == wire.KINDS["status"]:
        if f["op"] == "claim":
            return "status: claimed (in consult)"
        if f["op"] == "assign":
            return f"status: assigned to {f['assignee'] or 'nobody'}"
        advice = f" — advice: {f['advice']}" if f.get("advice") else ""
        return f"status: {str(f['to']).replace('_', ' ')}{advice}"
    if f["op"] == "add":
        return f"follow-up {f['id']} due {f['due']}: {f['reason']}"
    return f"follow-up {f['id']} {'done' if f['op'] == 'done' else 'cancelled'}"


def _pack(body: dict[str, object]) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    if len(data) > FLOW.max_body:
        raise LimitExceeded(f"message of {len(data)} bytes over the limit of {FLOW.max_body}")
    return data

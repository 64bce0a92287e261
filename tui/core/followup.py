"""Follow-ups of a consult: a due date and a reason, then done or cancelled (sans-I/O).

A chronic or post-operative patient needs someone to look again on a given day. A
follow-up is a kind-``followup`` message in the consult, folded like the card and the
status (:mod:`medcomm.core.workflow`); once its day has come it stands in the triage queue
(:mod:`medcomm.core.triage`) until someone marks it done or cancels it, whatever the
consult's status (a closed consult is exactly the one that needs a reminder).

Body (msgpack map, compact keys; unknown keys ignored)::

    {"v": 1, "op": "add"|"done"|"cancel", "id": "k7m2", "due": "2025-03-14", "r": reason}

The id is four characters made by the device that schedules it, short enough to type.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import msgpack

from medcomm.core import casecard, wire
from medcomm.errors import LimitExceeded, UsageError, WireError

VERSION = 1
FOLLOWUP_ID = re.compile(rf"^[{wire.CONSULT_ALPHABET}]{{4}}$")


@dataclass(frozen=True)
class FollowupLimits:
    max_reason: int = 500  # characters of a follow-up's reason
    max_body: int = 4 * 1024  # bytes of one follow-up message
    max_ahead_days: int = 3650  # a follow-up at most ten years ahead


FOLLOWUPS = FollowupLimits()


@dataclass
class FollowUp:
    id: str
    due: dt.date
    reason: str
    by: str
    at: int
    seq: int | None
    state: str = "open"  # open | done | cancelled
    closed_by: str = ""
    closed_at: int = 0


def parse_due(text: str, today: dt.date) -> dt.date:
    """``YYYY-MM-DD``, ``+Nd`` or ``+Nw`` from today; not in the past, not absurdly far."""
    t = text.strip().lower()
    m = re.fullmatch(r"\+(\d{1,4})([dw])", t)
    try:
        due = (
            today + dt.timedelta(days=int(m.group(1)) * (7 if m.group(2) == "w" else 1))
            if m
            else (dt.date.fromisoformat(t))
        )
    except ValueError:
        raise UsageError(f"--due {text!r}: expected YYYY-MM-DD, +Nd or +Nw") from None
    if due < today:
        raise UsageError(f"--due {due.isoformat()} is in the past")
    if (due - today).days > FOLLOWUPS.max_ahead_days:
        raise UsageError(f"--due {due.isoformat()} is more than {FOLLOWUPS.max_ahead_days} days ahead")
    return due


def check_followup(followups: dict[str, FollowUp], op: str, fid: str, reason: str = "") -> None:
    if op == "add":
        if not reason.strip():
            raise UsageError("a follow-up needs a reason (--reason TEXT)")
        if len(reason) > FOLLOWUPS.max_reason:
            raise UsageError(f"reason of {len(reason)} characters, at most {FOLLOWUPS.max_reason}")
        if fid in followups:
            raise UsageError(f"follow-up {fid} exists already")
        return
    f = followups.get(fid)
    if f is None:
        raise UsageError(f"no follow-up {fid} in this consult")
    if f.state != "open":
        raise UsageError(f"follow-up {fid} is {f.state} already")


def open_followup(followups: dict[str, FollowUp], fid: str | None) -> str:
    """The follow-up a ``--done``/``--cancel`` means: the one named, or the only open one."""
    if fid:
        return fid.strip().lower()
    open_ = sorted((f for f in followups.values() if f.state == "open"), key=lambda f: f.due)
    if not open_:
        raise UsageError("no open follow-up in this consult")
    if len(open_) > 1:
        raise UsageError(
            "several follow-ups are open: name one with --id ("
            + ", ".join(f"{f.id} due {f.due}" for f in open_)
            + ")"
        )
    return open_[0].id


def encode_followup(op: str, fid: str, due: dt.date | None = None, reason: str = "") -> bytes:
    body: dict[str, object] = {"v": VERSION, "op": op, "id": fid}
    if due is not None:
        body["due"] = due.isoformat()
    if reason:
        body["r"] = reason.strip()
    return _pack(body)


def decode_followup(body: bytes) -> tuple[str, str, dt.date | None, str]:
    obj = casecard.unpack_map(body, FOLLOWUPS.max_body, "follow-up")
    op, fid, due, reason = obj.get("op"), obj.get("id"), obj.get("due"), obj.get("r", "")
    if op not in ("add", "done", "cancel"):
        raise WireError("follow-up: unknown operation")
    if not isinstance(fid, str) or not FOLLOWUP_ID.fullmatch(fid):
        raise WireError("follow-up: bad id")
    if not isinstance(reason, str) or len(reason) > FOLLOWUPS.max_reason:
        raise WireError("follow-up: bad reason")
    day = None
    if op == "add":
        try:
            day = dt.date.fromisoformat(due) if isinstance(due, str) else None
        except ValueError:
            day = None
        if day is None or not reason.strip():
            raise WireError("follow-up: needs a due date and a reason")
    return op, fid, day, reason


def apply(
    followups: dict[str, FollowUp], seq: int | None, by: str, at: int, body: bytes, problems: list[str]
) -> None:
    where = f"#{seq if seq is not None else '-'} from {by}"
    try:
        op, fid, due, reason = decode_followup(body)
        check_followup(followups, op, fid, reason)
    except (WireError, UsageError) as exc:
        problems.append(f"{where}: {exc}")
        return
    if op == "add":
        assert due is not None
        followups[fid] = FollowUp(fid, due, reason.strip(), by, at, seq)
    else:
        f = followups[fid]
        f.state, f.closed_by, f.closed_at = ("done" if op == "done" else "cancelled"), by, at


def _pack(body: dict[str, object]) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    if len(data) > FOLLOWUPS.max_body:
        raise LimitExceeded(f"follow-up of {len(data)} bytes over the limit of {FOLLOWUPS.max_body}")
    return data

"""The triage queue and a patient's linked consults, from folded consults (sans-I/O).

A doctor triaging from a laptop terminal needs a queue, not a chat list: the consults that
wait for a doctor (status waiting, or taken into consult by nobody in particular) and the
follow-ups whose day has come, emergencies first, then urgent, then routine, and within
each the longest waiting first. An emergency that waits carries an alarm. ``now`` and the
clinic's time zone are passed in (a follow-up is due on a calendar day, and the day starts
at local midnight), so every rule is tested on a hand clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from medcomm.core.casecard import URGENCIES
from medcomm.core.workflow import ConsultState

URGENCY_RANK = {u: i for i, u in enumerate(URGENCIES)}


def linked(states: Iterable[ConsultState], consult: str) -> list[ConsultState]:
    """The other consults of the same patient (same patient key), oldest first."""
    states = list(states)
    me = next((s for s in states if s.id == consult), None)
    key = me.patient_id if me is not None else None
    if not key:
        return []
    return sorted((s for s in states if s.id != consult and s.patient_id == key), key=lambda s: s.opened_at)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    consult: str
    title: str
    reason: str  # "waiting" (for a doctor) or "follow-up"
    urgency: str
    since: int  # ms: arrival, or the start of the follow-up's due day
    waiting_ms: int
    patient: str
    patient_id: str | None
    complaint: str
    status: str
    assignee: str | None
    mine: bool
    alarm: bool  # an emergency waits for a doctor
    followup: str = ""  # the follow-up's id
    due: str = ""
    followup_reason: str = ""

    def as_json(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def waits_for_doctor(st: ConsultState) -> bool:
    """Waiting, or taken into consult by nobody in particular."""
    s = st.status
    return s.state == "waiting" or (s.state == "in_consult" and s.assignee is None)


def queue(states: Iterable[ConsultState], me: str, now: int, tz: dt.tzinfo = dt.UTC) -> list[QueueEntry]:
    """Consults waiting for a doctor and follow-ups due (due day <= today in ``tz``),
    emergencies first, then urgent, then routine; within each the longest waiting first."""
    today = dt.datetime.fromtimestamp(now / 1000, tz).date()
    out: list[QueueEntry] = []
    for st in states:
        base = dict(
            consult=st.id,
            title=st.title,
            urgency=st.urgency,
            patient=st.card.patient_line(),
            patient_id=st.patient_id,
            complaint=st.card.get("complaint") or "",
            status=st.status.state,
            assignee=st.status.assignee,
            mine=st.status.assignee == me,
        )
        if waits_for_doctor(st):
            since = st.status.since or st.opened_at
            out.append(
                QueueEntry(
                    reason="waiting",
                    since=since,
                    waiting_ms=max(0, now - since),
                    alarm=st.urgency == "emergency",
                    **base,
                )
            )  # type: ignore[arg-type]
        for f in st.followups.values():
            if f.state == "open" and f.due <= today:
                since = int(dt.datetime.combine(f.due, dt.time(), tz).timestamp() * 1000)
                out.append(
                    QueueEntry(
                        reason="follow-up",
                        since=since,
                        waiting_ms=max(0, now - since),
                        alarm=False,
                        followup=f.id,
                        due=f.due.isoformat(),
                        followup_reason=f.reason,
                        **base,
                    )
                )  # type: ignore[arg-type]
    out.sort(key=lambda e: (URGENCY_RANK.get(e.urgency, len(URGENCIES)), e.since, e.consult, e.reason))
    return out


def wait_text(ms: int) -> str:
    """``42s``, ``17m``, ``3h 05m``, ``2d 4h``: short enough for a queue column."""
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"

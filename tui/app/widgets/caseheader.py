"""The consult view's one-line case header: urgency, patient, status, complaint at a glance.

A doctor opening a consult from the queue needs the case before the chat: how urgent, who
(name, age, sex), where it stands (waiting, in consult and with whom, advised, closed),
what the complaint is, whether a follow-up is open and whether the patient has other
consults here. It is one line because the conversation needs the rows, and it says it in
words first ("!! EMERGENCY", "waiting"), so a 16-colour or monochrome terminal loses
nothing: an emergency that waits for a doctor is drawn in reverse video as well.

The line is folded from the consult's case and status messages (``ConsultState``) and
repainted only when its text changes.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

from medcomm.core.triage import waits_for_doctor
from medcomm.core.workflow import ConsultState

STATE_WORDS = {"waiting": "waiting", "in_consult": "in consult", "advised": "advised", "closed": "closed"}


def day_text(ms: int) -> str:
    """``05 Mar`` (the day is what matters for a consult's date; times are in the history)."""
    return time.strftime("%d %b", time.localtime(ms / 1000))


def when_text(ms: int) -> str:
    """``05 Mar 09:14``: who changed what when, in the card and the menus."""
    return time.strftime("%d %b %H:%M", time.localtime(ms / 1000))


def status_words(st: ConsultState, me: str) -> str:
    """``waiting``, ``in consult: dr.chen``, ``advised (you)``, ``in consult: nobody yet``."""
    s = st.status
    words = STATE_WORDS.get(s.state, s.state)
    who = "you" if s.assignee == me else s.assignee
    if s.state == "in_consult":
        return f"{words}: {who or 'nobody yet'}"
    if who and s.state == "advised":
        return f"{words} ({who})"
    if who and s.state == "waiting":
        return f"{words} for {who}"
    return words


def header_text(st: ConsultState, me: str, linked: int) -> str:
    """The header as plain text (the style comes from the widget's classes)."""
    card = st.card
    urgency = card.get("urgency")
    if urgency == "emergency":
        head = "!! EMERGENCY"
    elif urgency:
        head = urgency.upper() if urgency == "urgent" else urgency
    else:
        head = ""
    parts = [p for p in (head, status_words(st, me)) if p]
    if card.version == 0:
        parts.append("no case card yet: Ctrl+T fills it, Ctrl+G claims, sets the status")
        return " · ".join(parts)
    patient = card.patient_line()
    if patient:
        parts.append(patient)
    complaint = " ".join((card.get("complaint") or "").split())
    if complaint:
        parts.append(complaint)
    due = sorted(f.due for f in st.followups.values() if f.state == "open")
    if due:
        parts.append(f"follow-up {due[0].strftime('%d %b')}")
    if linked:
        parts.append(f"{linked} other consult{'s' if linked > 1 else ''}: Ctrl+L")
    return " · ".join(parts)


class CaseHeader(Static):
    """One line, cut with an ellipsis; reverse video while an emergency waits for a doctor,
    bold for any other emergency or an urgent case."""

    DEFAULT_CSS = """
    CaseHeader { height: 1; padding: 0 1; background: $boost; text-wrap: nowrap; text-overflow: ellipsis; }
    CaseHeader.-alarm { text-style: bold reverse; }
    CaseHeader.-urgent { text-style: bold; }
    """

    _shown: str | None = None

    def show(self, st: ConsultState, me: str, linked: int) -> None:
        text = header_text(st, me, linked)
        urgency = st.card.get("urgency")
        alarm = urgency == "emergency" and waits_for_doctor(st)
        urgent = not alarm and urgency in ("emergency", "urgent")
        key = f"{alarm}{urgent}{text}"
        if key == self._shown:
            return  # unchanged: no redraw, no bytes
        self._shown = key
        self.set_class(alarm, "-alarm")
        self.set_class(urgent, "-urgent")
        self.update(Text(text))

    @property
    def text(self) -> str:
        return str(self.content)

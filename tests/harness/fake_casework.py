"""The consult workflow for the fake desk session: case card, status, follow-ups, the queue.

``FakeCasework`` is mixed into ``FakeSession``. It keeps each workflow message's body beside
its line (``bodies``, by message id) and folds them with the real pure core
(``medcomm.core.workflow``, ``casecard``, ``followup``, ``triage``), exactly as
``medcomm.session.casework`` folds the store: stored messages in seq order, then this
device's queued ones. So the desk's tests run the real checks, the real fold and the real
queue order; only the store and the link are pretend. The test drives the other devices::

    fake.add_case(k, {"urgency": "emergency", "complaint": "..."})       # in the store already
    fake.add_case(k, {"vitals.bp": "150/100"}, sender="dr.chen", receive=True)   # arrives now
    fake.add_status(k, "dr.chen", "claim", receive=True)
    fake.add_status(k, "dr.chen", "set", to="advised", advice="Amoxicillin 5 days")
    fake.add_followup_message(k, "dr.chen", "ab12", dt.date(2024, 3, 5), "BP check")
    fake.workflow_asked     # [("case", k, {raw}), ("claim", k), ("status", k, to, advice), ...]

The queue's clock is the fake's ``now_ms`` (the time of its newest message; a test may set
it) in UTC, and ``today`` is that day. ``assign`` to a user who is not a member adds them,
which needs the link: ``LinkDown`` while the fake's status is not online.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from medcomm.adapters.localstore import Line
from medcomm.core import casecard, followup, triage, wire, workflow
from medcomm.core.triage import QueueEntry
from medcomm.core.workflow import ConsultState, Event
from medcomm.errors import LinkDown

if TYPE_CHECKING:
    from tests.harness.fake_session import FakeConsult

WORKFLOW_KINDS = ("case", "status", "followup")


class FakeCasework:
    """Needs from ``FakeSession``: ``me``, ``consults``, ``outbox``, ``now_ms``, ``status``,
    ``add_message``, ``_consult``, ``_emit``, ``_tick``, ``_hex_id``, ``_rng``."""

    if TYPE_CHECKING:
        me: str
        consults: dict[str, FakeConsult]
        outbox: list[Line]
        now_ms: int
        status: Any
        _rng: Any

        def add_message(self, consult: str, sender: str, text: str, **kw: Any) -> Line: ...
        def _consult(self, consult: str) -> FakeConsult: ...
        def _emit(self, event: Any) -> None: ...
        def _tick(self) -> int: ...
        def _hex_id(self) -> str: ...

    def init_casework(self) -> None:
        self.bodies: dict[str, tuple[int, bytes]] = {}  # message id -> (kind, body)
        self.workflow_asked: list[tuple[object, ...]] = []  # what the desk asked, refused ones too

    # --- reading (the DeskSession protocol) ---------------------------------------------------

    def consult_state(self, consult: str) -> ConsultState:
        c = self._consult(consult)
        events = [
            Event(m.seq, m.sender, m.time, self.bodies[m.id][0], self.bodies[m.id][1])
            for m in c.messages
            if m.id in self.bodies
        ]
        events += [
            Event(None, self.me, q.time, self.bodies[q.id][0], self.bodies[q.id][1])
            for q in self.outbox
            if q.consult == c.id and q.state != "failed" and q.id in self.bodies
        ]
        st = workflow.fold(c.id, events, c.title, c.members)
        first = c.messages[0] if c.messages else None
        if first is not None and (not st.opened_at or first.time < st.opened_at):  # arrival: first message
            st.opened_at, st.opened_by = first.time, first.sender
            if not st.status.history:
                st.status.since = st.opened_at
        return st

    def all_states(self) -> list[ConsultState]:
        return [self.consult_state(cid) for cid in sorted(self.consults)]

    def triage_queue(self, now_ms: int | None = None) -> list[QueueEntry]:
        return triage.queue(self.all_states(), self.me, self.now_ms if now_ms is None else now_ms, dt.UTC)

    def linked_consults(self, consult: str) -> list[ConsultState]:
        self._consult(consult)
        return triage.linked(self.all_states(), consult)

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now_ms / 1000, dt.UTC).date()

    # --- writing (the DeskSession protocol): checked by the core, then queued -----------------

    async def update_case(self, consult: str, raw: dict[str, str | None]) -> Line | None:
        self.workflow_asked.append(("case", consult, dict(raw)))
        st = self.consult_state(consult)
        changes = casecard.prepare(st.card, raw, self._patient_key)
        if not changes:
            return None
        return self._queue_workflow(consult, "case", casecard.encode(changes))

    async def change_status(self, consult: str, to: str, advice: str = "") -> Line:
        self.workflow_asked.append(("status", consult, to, advice))
        st = self.consult_state(consult)
        workflow.check_change(st.status, self.me, "set", to, advice=advice)
        return self._queue_workflow(consult, "status", workflow.encode_status("set", to, advice=advice))

    async def claim(self, consult: str) -> Line:
        self.workflow_asked.append(("claim", consult))
        st = self.consult_state(consult)
        workflow.check_change(st.status, self.me, "claim")
        return self._queue_workflow(consult, "status", workflow.encode_status("claim"))

    async def assign(self, consult: str, name: str, timeout: float) -> Line:
        self.workflow_asked.append(("assign", consult, name))
        st = self.consult_state(consult)
        name = wire.typed_user_name(name) if name else ""
        workflow.check_change(st.status, self.me, "assign", assignee=name)
        if name and name not in st.members:
            if self.status.state != "online":
                raise LinkDown("the link is down: adding a member needs the relay")
            self._consult(consult).members.append(name)
            self.add_message(consult, self.me, f"added {name}", kind="system")
        return self._queue_workflow(consult, "status", workflow.encode_status("assign", assignee=name))

    async def add_followup(self, consult: str, due: dt.date, reason: str) -> tuple[Line, str]:
        self.workflow_asked.append(("followup", consult, due, reason))
        st = self.consult_state(consult)
        fid = self._followup_id()
        while fid in st.followups:
            fid = self._followup_id()
        followup.check_followup(st.followups, "add", fid, reason)
        body = followup.encode_followup("add", fid, due, reason)
        return self._queue_workflow(consult, "followup", body), fid

    async def close_followup(self, consult: str, fid: str | None, done: bool = True) -> tuple[Line, str]:
        self.workflow_asked.append(("followup-" + ("done" if done else "cancel"), consult, fid))
        st = self.consult_state(consult)
        fid = followup.open_followup(st.followups, fid)
        op = "done" if done else "cancel"
        followup.check_followup(st.followups, op, fid)
        return self._queue_workflow(consult, "followup", followup.encode_followup(op, fid)), fid

    # --- other devices, driven by the test ----------------------------------------------------

    def add_workflow(
        self,
        consult: str,
        sender: str,
        kind: str,
        body: bytes,
        *,
        receive: bool = False,
        time: int | None = None,
    ) -> Line:
        """A stored case, status or follow-up message (``receive``: it arrives now, an event)."""
        code = wire.KINDS[kind]
        line = self.add_message(
            consult,
            sender,
            workflow.event_text(code, body),
            kind=kind,
            time=time,
            data=workflow.event_fields(code, body),
        )
        self.bodies[line.id] = (code, body)
        if receive:
            self._emit_accepted(consult, line.id)
        return line

    def add_case(
        self,
        consult: str,
        fields: dict[str, str | None],
        *,
        sender: str | None = None,
        receive: bool = False,
        time: int | None = None,
    ) -> Line:
        """A version of the card with these fields (checked like typed values)."""
        changes = {casecard.field_name(k): casecard.check_value(k, v) for k, v in fields.items()}
        return self.add_workflow(
            consult, sender or self.me, "case", casecard.encode(changes), receive=receive, time=time
        )

    def add_status(
        self,
        consult: str,
        sender: str,
        op: str,
        *,
        to: str = "",
        assignee: str | None = None,
        advice: str = "",
        receive: bool = False,
        time: int | None = None,
    ) -> Line:
        body = workflow.encode_status(op, to, assignee, advice)
        return self.add_workflow(consult, sender, "status", body, receive=receive, time=time)

    def add_followup_message(
        self,
        consult: str,
        sender: str,
        fid: str,
        due: dt.date | None = None,
        reason: str = "",
        *,
        op: str = "add",
        receive: bool = False,
    ) -> Line:
        body = followup.encode_followup(op, fid, due, reason)
        return self.add_workflow(consult, sender, "followup", body, receive=receive)

    # --- inside -------------------------------------------------------------------------------

    def _queue_workflow(self, consult: str, kind: str, body: bytes) -> Line:
        code = wire.KINDS[kind]
        line = Line(
            consult,
            None,
            self._hex_id(),
            self.me,
            self._tick(),
            kind,
            workflow.event_text(code, body),
            "queued",
            data=workflow.event_fields(code, body),
        )
        self.outbox.append(line)
        self.bodies[line.id] = (code, body)
        return line

    def _emit_accepted(self, consult: str, msg_id: str) -> None:
        from tests.harness.fake_session import FakeEvent

        self._emit(FakeEvent("accepted", consult, msg_id))

    def _patient_key(self) -> str:
        return "p" + "".join(self._rng.choice(wire.CONSULT_ALPHABET) for _ in range(7))

    def _followup_id(self) -> str:
        return "".join(self._rng.choice(wire.CONSULT_ALPHABET) for _ in range(4))

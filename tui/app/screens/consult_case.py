"""The consult workflow in the consult view: the case header, the case card form (Ctrl+T),
the action menu (Ctrl+G: claim, status, advice, follow-ups, assign) and the patient's other
consults (Ctrl+L).

A mixin of ``ConsultView``, like ``consult_images``. The header is folded from the
consult's case, status and follow-up messages each time the view refreshes its messages
(a case or status message arriving is such a refresh) and repaints only when its text
changes; the count of the patient's other consults is counted again only when the card's
patient key changes. Every change goes through the session, whose pure core checks it
against the folded state first: a change that is not allowed is refused with the core's
reason as a notification, and nothing is sent. A change that is allowed is queued like a
chat line and shows at once as a queued event line in the conversation.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from textual import work

from medcomm.app.screens.cardform import CaseCardForm
from medcomm.app.screens.workflow import (
    ActionMenu,
    AdviceDialog,
    AssignDialog,
    FollowupDialog,
    LinkedConsults,
    PickFollowup,
)
from medcomm.app.widgets.caseheader import STATE_WORDS, CaseHeader
from medcomm.core.workflow import ConsultState
from medcomm.errors import MedcommError

if TYPE_CHECKING:
    from medcomm.app.app import MedcommApp

ASSIGN_TIMEOUT = 30.0  # adding a member asks the relay: seconds before the link is given up


class ConsultCase:
    """Needs ``consult``, ``desk`` and ``refresh_messages`` from the screen it is mixed into."""

    consult: str
    _linked_for: tuple[str | None] | None = None  # the patient key the count was made for
    _linked = 0

    @property
    def desk(self) -> MedcommApp:
        return self.app  # type: ignore[attr-defined, no-any-return]

    def case_state(self) -> ConsultState | None:
        session = self.desk.session
        if session is None:
            return None
        try:
            return session.consult_state(self.consult)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=8, markup=False)  # type: ignore[attr-defined]
            return None

    def show_case(self) -> None:
        """The header, from the consult's folded state (redraws only when its text changed)."""
        session = self.desk.session
        if session is None:
            return
        try:
            st = session.consult_state(self.consult)
        except MedcommError:
            return
        if self._linked_for != (st.patient_id,):
            self._linked_for = (st.patient_id,)
            self._linked = len(session.linked_consults(self.consult)) if st.patient_id else 0
        for header in self.query(CaseHeader):  # type: ignore[attr-defined]
            header.show(st, self.desk.me, self._linked)

    # --- keys -------------------------------------------------------------------------------

    def action_case_card(self) -> None:
        """Ctrl+T: the case card form, pre-filled with the card as folded now."""
        st = self.case_state()
        if st is None:
            return

        def closed(saved: bool | None) -> None:
            if saved:
                self.after_change()

        self.desk.push_screen(CaseCardForm(st), closed)

    def action_case_menu(self) -> None:
        """Ctrl+G: what can be done to this consult."""
        st = self.case_state()
        if st is not None:
            self.desk.push_screen(ActionMenu(st, self.desk.me), self.run_case_action)

    def action_linked(self) -> None:
        """Ctrl+L: the patient's other consults; Enter opens one."""
        st = self.case_state()
        session = self.desk.session
        if st is None or session is None:
            return
        linked = session.linked_consults(self.consult) if st.patient_id else []

        def chosen(consult: str | None) -> None:
            if consult:
                self.desk.open_consult(consult)

        self.desk.push_screen(LinkedConsults(st, linked, self.desk.me), chosen)

    def run_case_action(self, what: Any) -> None:
        """Do what the action menu (or the command palette) chose: a status at once, or the
        dialog that gathers what the change needs, then the change."""
        st = self.case_state()
        session = self.desk.session
        if not what or st is None or session is None:
            return
        if what == "claim":
            self.case_change("claim")
        elif what in ("in_consult", "waiting", "closed"):
            self.case_change("status", what, "")
        elif what == "advised":
            current = st.status.advice if st.status.state == "advised" else ""
            self.desk.push_screen(AdviceDialog(self.consult, current), self._advised)
        elif what == "followup":
            self.desk.push_screen(FollowupDialog(self.consult, session.today()), self._scheduled)
        elif what in ("followup_done", "followup_cancel"):
            self._end_followup(st, what == "followup_done")
        elif what == "assign":
            self.desk.push_screen(AssignDialog(st, self.desk.me), self._assigned)
        elif what == "card":
            self.action_case_card()
        elif what == "linked":
            self.action_linked()

    def _advised(self, advice: Any) -> None:
        if advice:
            self.case_change("status", "advised", advice)

    def _scheduled(self, chosen: Any) -> None:
        if chosen:
            day, reason = chosen
            self.case_change("followup", day, reason)

    def _assigned(self, name: Any) -> None:
        if name is not None:  # "" is nobody
            self.case_change("assign", name)

    def _end_followup(self, st: ConsultState, done: bool) -> None:
        """The only open follow-up at once; several: which one; none: the core says so."""
        open_ = [f for f in st.followups.values() if f.state == "open"]
        if len(open_) <= 1:
            self.case_change("followup_end", open_[0].id if open_ else None, done)
            return

        def chosen(fid: Any) -> None:
            if fid:
                self.case_change("followup_end", fid, done)

        self.desk.push_screen(PickFollowup(self.consult, open_, done), chosen)

    @work(exclusive=False, group="case")
    async def case_change(self, op: str, *args: Any) -> None:
        session = self.desk.session
        if session is None:
            return
        c = self.consult
        try:
            if op == "claim":
                await session.claim(c)
                done = "claimed: in consult, yours"
            elif op == "status":
                to, advice = args
                await session.change_status(c, to, advice)
                done = f"status: {STATE_WORDS[to]}"
            elif op == "followup":
                day, reason = args
                _item, fid = await session.add_followup(c, day, reason)
                done = f"follow-up {fid} due {dt.date.isoformat(day)}"
            elif op == "followup_end":
                fid, finished = args
                _item, fid = await session.close_followup(c, fid, finished)
                done = f"follow-up {fid} {'done' if finished else 'cancelled'}"
            elif op == "assign":
                (name,) = args
                await session.assign(c, name, ASSIGN_TIMEOUT)
                done = f"assigned to {name or 'nobody'}"
            else:
                raise AssertionError(op)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=10, markup=False)  # type: ignore[attr-defined]
            return
        self.notify(f"{c}: {done}", timeout=5, markup=False)  # type: ignore[attr-defined]
        self.after_change()

    def after_change(self) -> None:
        self._after_change()

    @work(exclusive=False, group="case-shown")
    async def _after_change(self) -> None:
        await self.refresh_messages()  # type: ignore[attr-defined]  # the queued event line, the header
        self.desk.refresh_status()

"""The small dialogs of the consult workflow: the action menu (Ctrl+G in a consult), the
advice that goes with "advised", a follow-up's day and reason, which follow-up to end, whom
to assign, and the patient's other consults (Ctrl+L).

Each dialog only gathers what the user chose and gives it back; the consult view asks the
session, whose core checks decide (a change that is not allowed is refused there, with the
core's reason as a notification, and nothing is sent). Where a dialog can check a value
with the pure core before anything is asked (a follow-up's day, an empty advice), it says
what is wrong on its own error line and stays open, so nothing typed is lost. Like the
other dialogs, each has its own status line (the link, a ringing call).
"""

from __future__ import annotations

import datetime as dt

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.events import Key
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from medcomm.app.widgets.caseheader import day_text, status_words, when_text
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.fields import Field
from medcomm.app.widgets.status import StatusLine
from medcomm.core import followup
from medcomm.core.followup import FollowUp
from medcomm.core.workflow import TRANSITIONS, ConsultState
from medcomm.errors import UsageError

# (key, what, as the menu says it); the view's ``run_case_action`` does each.
ACTIONS = (
    ("c", "claim", "claim: in consult, assigned to you"),
    ("i", "in_consult", "in consult (more questions, or advice to amend)"),
    ("w", "waiting", "waiting: hand it back, or reopen it"),
    ("a", "advised", "advised… (the advice)"),
    ("x", "closed", "closed"),
    ("f", "followup", "schedule a follow-up…"),
    ("d", "followup_done", "mark a follow-up done"),
    ("z", "followup_cancel", "cancel a follow-up"),
    ("g", "assign", "assign to…"),
    ("e", "card", "case card…  (Ctrl+T)"),
    ("l", "linked", "the patient's other consults  (Ctrl+L)"),
)
STATE_NAMES = {"waiting": "waiting", "in_consult": "in consult", "advised": "advised", "closed": "closed"}

_DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 72; max-width: 100%; height: auto; max-height: 100%;
                     border: round $primary; padding: 0 1; }}
{name} .dialog-note {{ color: $text-muted; height: auto; }}
{name} .dialog-error {{ color: $error; text-style: bold; height: auto; }}
{name} OptionList, {name} OptionList:focus {{ height: auto; max-height: 14; border: none; padding: 0; }}
{name} StatusLine {{ dock: bottom; }}
"""


def dialog_css(name: str) -> str:
    return _DIALOG_CSS.format(name=name)


class _Dialog(ModalScreen[object]):
    def on_mount(self) -> None:
        self.app.refresh_status()  # type: ignore[attr-defined]

    def show_error(self, text: str) -> None:
        self.query_one("#error", Static).update(f"! {text}" if text else "")

    def action_cancel(self) -> None:
        self.dismiss(None)


class _PickDialog(_Dialog):
    """A dialog around one list (or, with nothing to pick, none): focused at once, and
    dismissed with the id of the option chosen."""

    def on_mount(self) -> None:
        super().on_mount()
        for options in self.query(OptionList):
            options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)


class ActionMenu(_PickDialog):
    """Dismissed with the chosen action's name (see ``ACTIONS``), or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        *(Binding(key, f"pick('{what}')", text, show=False) for key, what, text in ACTIONS),
    ]
    DEFAULT_CSS = dialog_css("ActionMenu")

    def __init__(self, state: ConsultState, me: str) -> None:
        super().__init__()
        self.state = state
        self.me = me

    def compose(self) -> ComposeResult:
        s = self.state.status
        since = f" since {when_text(s.since)}"
        nexts = ", ".join(STATE_NAMES[t] for t in sorted(TRANSITIONS[s.state]))
        with Vertical():
            yield Label(
                f"{self.state.id} · {status_words(self.state, self.me)}{since if s.since else ''}",
                markup=False,
            )
            yield Static(
                f"from {STATE_NAMES[s.state]}: {nexts} · a letter or Enter chooses", classes="dialog-note"
            )
            yield OptionList(
                *(Option(f"{key}  {text}", id=what) for key, what, text in ACTIONS), id="actions"
            )
        yield StatusLine(id="status")


    def action_pick(self, what: str) -> None:
        self.dismiss(what)


class AdviceBox(ComposeBox):
    """The advice: Enter gives it, Ctrl+J adds a line; Enter on nothing says it is needed."""

    async def _on_key(self, event: Key) -> None:
        if event.key == "enter" and not self.text.strip():
            event.prevent_default()
            event.stop()
            self.post_message(self.Submitted(""))
            return
        await super()._on_key(event)


class AdviceDialog(_Dialog):
    """Dismissed with the advice text, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = dialog_css("AdviceDialog") + "AdviceDialog AdviceBox { background: $boost; }"

    def __init__(self, consult: str, current: str = "") -> None:
        super().__init__()
        self.consult = consult
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Advice for {self.consult} (status: advised)", markup=False)
            yield AdviceBox(id="advice")
            yield Static("Enter gives the advice · Ctrl+J new line · Esc cancels", classes="dialog-note")
            yield Static("", id="error", classes="dialog-error", markup=False)
        yield StatusLine(id="status")

    def on_mount(self) -> None:
        super().on_mount()
        box = self.query_one(AdviceBox)
        if self.current:  # amending: start from what was advised
            box.insert(self.current)
        box.focus()

    def on_compose_box_submitted(self, event: ComposeBox.Submitted) -> None:
        event.stop()
        if not event.text.strip():
            self.show_error("the advice is needed: it is what the clinic will do")
            return
        self.dismiss(event.text.strip())


def _core_words(text: str) -> str:
    """The core's messages name the CLI's options; the form names its fields."""
    return text.replace("--due ", "due ").replace(" (--reason TEXT)", "")


class FollowupDialog(_Dialog):
    """Dismissed with (due day, reason), or None. The day is checked as it is typed."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = dialog_css("FollowupDialog")

    def __init__(self, consult: str, today: dt.date) -> None:
        super().__init__()
        self.consult = consult
        self.today = today

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Follow-up for {self.consult}", markup=False)
            yield Field(placeholder="due: YYYY-MM-DD, +Nd or +Nw, e.g. +14d", id="due")
            yield Static(self._day_note(""), id="day", classes="dialog-note", markup=False)
            yield Field(placeholder="reason, e.g. BP check", id="reason")
            yield Static("", id="error", classes="dialog-error", markup=False)
        yield StatusLine(id="status")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#due", Input).focus()

    def _day_note(self, text: str) -> str:
        if not text.strip():
            return f"today is {self.today.strftime('%a %d %b %Y')}"
        try:
            day = followup.parse_due(text, self.today)
        except UsageError as exc:
            return _core_words(str(exc))
        return f"due {day.strftime('%a %d %b %Y')} (in {(day - self.today).days} days)"

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "due":
            self.query_one("#day", Static).update(self._day_note(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "due":
            self.query_one("#reason", Input).focus()
        else:
            self._submit()

    def _submit(self) -> None:
        due_text = self.query_one("#due", Input).value
        reason = self.query_one("#reason", Input).value.strip()
        try:
            day = followup.parse_due(due_text, self.today)
        except UsageError as exc:
            self.show_error(_core_words(str(exc)))
            self.query_one("#due", Input).focus()
            return
        try:
            followup.check_followup({}, "add", "----", reason)
        except UsageError as exc:
            self.show_error(_core_words(str(exc)))
            self.query_one("#reason", Input).focus()
            return
        self.dismiss((day, reason))


class PickFollowup(_PickDialog):
    """Which open follow-up to end: dismissed with its id, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = dialog_css("PickFollowup")

    def __init__(self, consult: str, open_: list[FollowUp], done: bool) -> None:
        super().__init__()
        self.consult = consult
        self.open = sorted(open_, key=lambda f: (f.due, f.id))
        self.done = done

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(
                f"Which follow-up of {self.consult} is {'done' if self.done else 'to cancel'}?", markup=False
            )
            yield OptionList(
                *(
                    Option(Text(f"{f.id}  due {f.due.strftime('%d %b %Y')}  {f.reason}"), id=f.id)
                    for f in self.open
                ),
                id="followups",
            )
        yield StatusLine(id="status")



class AssignDialog(_Dialog):
    """Dismissed with a user name ("" for nobody), or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = dialog_css("AssignDialog")

    def __init__(self, state: ConsultState, me: str) -> None:
        super().__init__()
        self.state = state
        self.me = me

    def compose(self) -> ComposeResult:
        members = ", ".join(self.state.members)
        now = self.state.status.assignee or "nobody"
        with Vertical():
            yield Label(f"Assign {self.state.id} (now: {now})", markup=False)
            yield Field(placeholder="user name, e.g. dr.li (empty: nobody)", id="name")
            yield Static(
                f"members: {members}. Anyone else is added to the consult first (that needs the link) "
                "and gets its whole record.",
                classes="dialog-note",
                markup=False,
            )
            yield Static("", id="error", classes="dialog-error", markup=False)
        yield StatusLine(id="status")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip().lower())


def linked_prompt(st: ConsultState, me: str) -> Text:
    """One consult of the patient: day, id, status, complaint; its advice on a second line."""
    urgency = st.card.get("urgency") or ""
    mark = "!! " if urgency == "emergency" else ""
    complaint = " ".join((st.card.get("complaint") or st.title).split())
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(f"{day_text(st.opened_at) if st.opened_at else '--'}  {st.id}  ", style="bold")
    out.append(f"{mark}{status_words(st, me)} · {complaint}")
    if st.status.advice:
        advice = " ".join(st.status.advice.split())
        out.append(f"\n    advice ({st.status.advice_by}): {advice}")
    return out


class LinkedConsults(_PickDialog):
    """The patient's other consults on this device, oldest first; Enter opens one
    (dismissed with its id), Esc goes back (None)."""

    BINDINGS = [Binding("escape", "cancel", "Back")]
    DEFAULT_CSS = dialog_css("LinkedConsults").replace("width: 72;", "width: 100;")

    def __init__(self, state: ConsultState, linked: list[ConsultState], me: str) -> None:
        super().__init__()
        self.state = state
        self.linked = linked
        self.me = me

    def compose(self) -> ComposeResult:
        key = self.state.patient_id
        with Vertical():
            who = self.state.card.patient_line() or "this patient"
            yield Label(f"Other consults of {who}" + (f" (patient key {key})" if key else ""), markup=False)
            if not key:
                yield Static(
                    "No patient on this card yet: Ctrl+T fills it, and consults with the same "
                    "patient key link up.",
                    classes="dialog-note",
                )
            elif not self.linked:
                yield Static("No other consult of this patient on this device.", classes="dialog-note")
            else:
                yield Static("Enter opens one · Esc back", classes="dialog-note")
                yield OptionList(
                    *(Option(linked_prompt(st, self.me), id=st.id) for st in self.linked), id="linked"
                )
        yield StatusLine(id="status")


"""The consult's members and their safety numbers (F12 in a consult): the desk's side of
``medcomm verify``.

The relay hands out everyone's device keys, so a relay that lied could stand in for a
doctor; two members who read the same 60 digits to each other know it did not. The dialog
asks for the keys when it opens (the link must be up: an error is shown in the dialog and
nothing else happens), shows one row per other member, and marks the chosen one verified
only with the number it showed, which the session checks is still the current one. A
member whose keys changed since they were verified is the row that matters most: it is
worded "KEYS CHANGED" in bold reverse, which stands out without colour, because sending
into this consult is stopped until that number is compared again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from medcomm.app.screens.workflow import _Dialog, dialog_css
from medcomm.app.widgets.status import StatusLine
from medcomm.core.safety import grouped
from medcomm.errors import MedcommError

if TYPE_CHECKING:
    from medcomm.app.ports import DeskSession
    from medcomm.session.verify import Verification

KEYS_TIMEOUT = 15.0  # seconds for the relay's answer (one request per member, one deadline)
LOADING = "asking the relay for their keys…"
HOW = (
    "Read the numbers to each other (in person or on a call); mark verified only if they "
    "match. c or Enter marks the chosen member verified · Esc closes"
)
STATES = {"verified": "✓ verified", "unverified": "NOT verified", "changed": "KEYS CHANGED"}
STATE_STYLES = {"verified": "bold", "unverified": "", "changed": "bold reverse"}


def member_prompt(v: Verification) -> Text:
    """Name and state on one line, the number below it as two lines of six groups of five."""
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(v.them, style="bold")
    out.append("  ")
    out.append(STATES.get(v.state, v.state), style=STATE_STYLES.get(v.state, ""))
    if v.state == "changed":
        out.append("  compare again before sending")
    if v.devices > 1:
        out.append(f"  ({v.devices} devices)")
    for line in grouped(v.number).splitlines():
        out.append(f"\n    {line}")
    return out


class MemberKeys(_Dialog):
    """The other members of ``consult`` with their safety numbers; dismissed with None."""

    BINDINGS = [
        Binding("escape", "cancel", "Close"),
        Binding("c", "confirm", "Mark verified"),
    ]
    DEFAULT_CSS = dialog_css("MemberKeys") + "MemberKeys OptionList { max-height: 15; }"

    def __init__(self, consult: str, session: DeskSession) -> None:
        super().__init__()
        self.consult = consult
        self.session = session
        self.shown: dict[str, Verification] = {}  # member -> what its row shows
        self.busy = False  # a confirm is with the relay: one at a time

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Safety numbers of the members of {self.consult}", markup=False)
            yield Static(HOW, classes="dialog-note")
            yield Static(LOADING, id="loading", classes="dialog-note")
            yield OptionList(id="members")
            yield Static("", id="error", classes="dialog-error", markup=False)
        yield StatusLine(id="status")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(OptionList).focus()
        self.load()

    @work(exclusive=True, group="member-keys")
    async def load(self) -> None:
        try:
            got = await self.session.verifications(self.consult, KEYS_TIMEOUT)
        except (MedcommError, TimeoutError) as exc:
            self._loaded("")
            self.show_error(f"cannot show the safety numbers: {str(exc) or 'no answer from the relay'}")
            return
        self._loaded("" if got else "No other member in this consult.")
        self.shown = {v.them: v for v in got}
        options = self.query_one(OptionList)
        options.set_options(Option(member_prompt(v), id=v.them) for v in got)
        if got:
            options.highlighted = 0

    def _loaded(self, note: str) -> None:
        """The loading line gives way to ``note``, or to nothing (no blank line)."""
        loading = self.query_one("#loading", Static)
        loading.update(note)
        loading.display = bool(note)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.confirm_row(event.option.id)

    def action_confirm(self) -> None:
        option = self.query_one(OptionList).highlighted_option
        if option is not None and option.id is not None:
            self.confirm_row(option.id)

    def confirm_row(self, them: str) -> None:
        v = self.shown.get(them)
        if v is None or self.busy:
            return
        if v.state == "verified":
            self.show_error(f"{them} is verified already")
            return
        self.busy = True
        self.show_error("")
        self.confirm(v)

    @work(exclusive=False, group="member-confirm")
    async def confirm(self, v: Verification) -> None:
        """Sends the number this row showed: if the keys changed meanwhile the session
        refuses it, and the error says to compare again."""
        try:
            done = await self.session.confirm_member(v.them, v.number, KEYS_TIMEOUT)
        except (MedcommError, TimeoutError) as exc:
            self.show_error(str(exc) or "no answer from the relay")
            return
        finally:
            self.busy = False
        self.shown[done.them] = done
        self.query_one(OptionList).replace_option_prompt(done.them, member_prompt(done))
        self.notify(f"{done.them} marked verified", timeout=4)

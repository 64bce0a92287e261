"""Small screens: help, the no-profile welcome, and the new-consult form."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, Static

from medcomm.app.widgets.fields import Field
from medcomm.app.widgets.status import StatusLine

# At most 76 columns and 21 lines: the whole help fits an 80x24 terminal, status line included.
HELP = """\
medcomm — keys (no mouse needed)
List    ↑ ↓ Enter open · / search, Esc clears · Ctrl+N new consult · q queue
Queue   ↑ ↓ Enter open · c claim · d follow-up done · !! an emergency waits
Consult
  Enter        send the message           Ctrl+J   new line (or Shift+Enter)
  ↑ (empty)    recall your last message   Ctrl+E   back to the compose box
  Ctrl+O       history: PageUp/↑ scroll, older messages load at the top
  F7 / F8      voice note: record (F7 sends, Esc cancels) / play or stop
  F5 / F9      image: attach a file / view the newest one
  Shift+Tab    back to an older note or image; Enter plays or views it
  Viewer       ←↑↓→ or hjkl pan, + - zoom, 0 fit, w DICOM window, Esc back
  Ctrl+T       case card: Tab next field, Ctrl+S save, Esc cancel
  Ctrl+G       claim, status, advice, follow-up, assign to someone
  Ctrl+L / F12 the patient's other consults / members' safety numbers
Call    F2 call · F3 hang up · F4 mute · F6 profile of the next call:
        auto → thin (worst links) → standard → auscultation (heart)
Anywhere
  F2 / F3      answer / decline a call that rings (the status line says)
  F1 this help      Ctrl+P command palette      Ctrl+Q quit
States: … queued (only on this device) → ✓ stored (the relay has it) →
✓✓ delivered (on every member's device) → ✓✓ read.  ✗ failed: refused, kept.
"""


WELCOME = """\
No medcomm profile on this device yet.

Ask your relay's admin for an enrolment code, then run:

    medcomm login ws://RELAY:8765 YOUR-NAME CODE

and start medcomm again. To try it without a relay:

    medcomm demo
"""


class HelpScreen(ModalScreen[None]):
    """Covers the screen at 80x24, so it has a status line of its own: a call that rings
    while the user reads the help is announced here too."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help { width: 80; max-width: 100%; height: auto; max-height: 100%;
                       border: round $primary; padding: 0 1; }
    HelpScreen StatusLine { dock: bottom; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")
        yield StatusLine(id="status")

    def on_mount(self) -> None:
        self.app.refresh_status()  # type: ignore[attr-defined]


class WelcomeScreen(Screen[None]):
    BINDINGS = [Binding("ctrl+q,q", "app.quit", "Quit")]

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def compose(self) -> ComposeResult:
        yield Static(WELCOME, id="welcome")
        yield Static(self.reason, id="reason")
        yield Footer()


class NewConsult(ModalScreen[tuple[str, list[str]] | None]):
    """Title and members; members are typed (Tab completes nothing, no mouse needed) and
    checked against the relay's directory when it could be fetched. The screen under it
    does not show through, so it has its own status line (link state, a ringing call)."""

    def __init__(self, known: list[dict[str, str]] | None = None, me: str = "") -> None:
        super().__init__()
        self.known = {u["name"]: u["role"] for u in (known or []) if u["name"] != me}

    BINDINGS = [Binding("escape", "dismiss", "Cancel")]
    DEFAULT_CSS = """
    NewConsult { align: center middle; }
    NewConsult > Vertical { width: 70; max-width: 100%; height: auto; border: round $primary; padding: 0 1; }
    NewConsult #error { color: $error; height: auto; }
    NewConsult #directory { color: $text-muted; height: auto; }
    NewConsult StatusLine { dock: bottom; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("New consult")
            yield Field(placeholder="title, e.g. Boy, 6, fever 4 days", id="title")
            yield Field(placeholder="members, comma-separated, e.g. dr.chen", id="members")
            yield Static(self._directory(), id="directory")
            yield Static("", id="error")
            yield Button("Open consult", id="open", variant="primary")
        yield StatusLine(id="status")

    def _directory(self) -> str:
        if not self.known:
            return "(offline: the relay checks the names when the consult opens)"
        names = ", ".join(f"{n} ({r})" for n, r in sorted(self.known.items()))
        return f"known: {names}"[:600]

    def on_mount(self) -> None:
        self.query_one("#title", Input).focus()
        self.app.refresh_status()  # type: ignore[attr-defined]

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "title":
            self.query_one("#members", Input).focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self._submit()

    def _submit(self) -> None:
        title = self.query_one("#title", Input).value.strip()
        members = [m.strip().lower() for m in self.query_one("#members", Input).value.split(",") if m.strip()]
        error = self.query_one("#error", Static)
        if not title:
            error.update("A title is needed.")
            self.query_one("#title", Input).focus()
            return
        if len(title) > 200:
            error.update("The title is over 200 characters.")
            return
        unknown = [m for m in members if self.known and m not in self.known]
        if unknown:
            error.update(f"Not enrolled: {', '.join(unknown)}")
            self.query_one("#members", Input).focus()
            return
        self.dismiss((title, members))

    def action_dismiss(self, result: object = None) -> None:  # type: ignore[override]
        self.dismiss(None)

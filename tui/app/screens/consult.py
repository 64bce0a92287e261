"""One consult: the conversation with honest states, paged history, compose, members, and
the call bar with its keys (F2 call, F3 hang up, F4 mute, F6 voice profile).

The call keys show in the footer only when they do something here ("f2 Call" in a quiet
consult, "f3 Hang up f4 Mute" during its call): two entries fit beside the others at 80
columns, four would not. F2/F3 on a ringing call are the app's (they work everywhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from medcomm.app.ports import LiveCall, caller_of
from medcomm.app.widgets.callbar import PROFILE_NOTES, CallBar
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import Conversation
from medcomm.app.widgets.status import StatusLine
from medcomm.errors import MedcommError

if TYPE_CHECKING:
    from medcomm.app.app import MedcommApp

PAGE = 50


class ConsultView(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("f1", "app.help", "Help"),
        Binding("ctrl+o", "focus_history", "History"),
        Binding("ctrl+e", "focus_compose", "Compose"),
        Binding("f2", "call", "Call"),
        Binding("f3", "hang_up", "Hang up"),
        Binding("f4", "mute", "Mute"),
        # priority: the compose box (a TextArea) has F6 as "select line"
        Binding("f6", "profile", "Profile", show=False, priority=True),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]

    def __init__(self, consult: str) -> None:
        super().__init__()
        self.consult = consult
        self._keys: tuple[bool, bool] | None = None  # what the footer's call keys were made for

    @property
    def desk(self) -> MedcommApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", id="title")
        yield CallBar(id="callbar")
        yield Conversation(self.app.me, id="conversation")  # type: ignore[attr-defined]
        yield ComposeBox(id="compose")
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        row = next((r for r in self.app.session.overview() if r["id"] == self.consult), None)  # type: ignore[attr-defined]
        members = ", ".join(row["members"]) if row else ""  # type: ignore[arg-type]
        title = row["title"] if row else ""
        self.query_one("#title", Static).update(f"{self.consult} · {title} · {members}")
        conv = self.query_one(Conversation)
        await conv.show_page(self.app.session.page(self.consult, None, PAGE), PAGE)  # type: ignore[attr-defined]
        self.query_one(ComposeBox).focus()
        self.app.mark_read_soon(self.consult)  # type: ignore[attr-defined]
        self.refresh_call()
        self.app.refresh_status()  # type: ignore[attr-defined]

    async def refresh_messages(self) -> None:
        conv = self.query_one(Conversation)
        lines = self.app.session.lines_since(self.consult, max(0, conv.first_loaded() - 1))  # type: ignore[attr-defined]
        if await conv.merge(lines):
            self.app.mark_read_soon(self.consult)  # type: ignore[attr-defined]

    async def on_conversation_load_older(self, event: Conversation.LoadOlder) -> None:
        conv = self.query_one(Conversation)
        await conv.prepend(self.app.session.page(self.consult, event.before, PAGE), PAGE)  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        self.app.refresh_status()  # type: ignore[attr-defined]

    def on_compose_box_submitted(self, event: ComposeBox.Submitted) -> None:
        self.send(event.text)

    @work(exclusive=False)
    async def send(self, text: str) -> None:
        try:
            await self.app.session.queue_text(self.consult, text)  # type: ignore[attr-defined]
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            compose = self.query_one(ComposeBox)
            if not compose.text:  # give the draft back rather than lose it
                compose.insert(text)
            return
        await self.refresh_messages()
        self.app.refresh_status()  # type: ignore[attr-defined]

    def action_focus_history(self) -> None:
        self.query_one(Conversation).focus()

    def action_focus_compose(self) -> None:
        self.query_one(ComposeBox).focus()

    # --- the call bar ----------------------------------------------------------------------

    def live_call(self) -> LiveCall | None:
        """The desk's call, if it is in this consult and not over."""
        session = self.desk.session
        view = session.calls.view if session is not None else None
        if view is None or view.consult != self.consult or view.state == "ended":
            return None
        return view

    def refresh_call(self) -> None:
        """Bring the bar (and, if what the call keys do changed, the footer) up to date;
        each redraws only on a change, so the once-a-second meters cost the bar's line."""
        session = self.desk.session
        if session is None:
            return
        live = self.live_call()
        ring = session.calls.ringing.get(self.consult)
        caller = caller_of(ring) if ring is not None else None
        self.query_one(CallBar).show(live, caller, self.desk.call_profile)
        keys = (live is not None, bool(self.desk.check_action("answer_call", ())))
        if keys != self._keys:
            if self._keys is not None:
                self.refresh_bindings()  # the footer redraws: only when a call comes or goes
            self._keys = keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """F2 calls only when this consult has no call; F3 and F4 act only on its call (so
        they are in the footer only then)."""
        if action == "call":
            return self.live_call() is None
        if action in ("hang_up", "mute"):
            return self.live_call() is not None
        return True

    def action_call(self) -> None:
        """Place a call in this consult (or answer it, if it rings and the app did not take
        the key): the sound devices open now, and a missing one is a notification."""
        session = self.desk.session
        if session is None:
            return
        try:
            if self.consult in session.calls.ringing:
                session.calls.answer(self.consult, self.desk.call_profile)
            else:
                session.calls.start(self.consult, self.desk.call_profile)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=10, markup=False)
        self.desk.calls_changed()

    def action_hang_up(self) -> None:
        if self.desk.session is not None and self.live_call() is not None:
            self.desk.session.calls.hangup()
            self.desk.calls_changed()

    def action_mute(self) -> None:
        if self.desk.session is not None and self.live_call() is not None:
            self.desk.session.calls.mute()
            self.refresh_call()

    def action_profile(self) -> None:
        """F6: the profile of the next call; the bar shows it, or a short note when the bar
        does not (no call here yet, or no room for it beside the meters)."""
        profile = self.desk.next_profile()
        self.refresh_call()
        bar = self.query_one(CallBar)
        if not bar.display or f"profile {profile}" not in bar.text and f"next {profile}" not in bar.text:
            self.notify(f"next call: {profile} ({PROFILE_NOTES[profile]})", timeout=4)


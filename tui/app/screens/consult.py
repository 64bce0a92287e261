"""One consult: the conversation with honest states, paged history, compose, members."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import Conversation
from medcomm.app.widgets.status import StatusLine
from medcomm.errors import MedcommError

PAGE = 50


class ConsultView(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("f1", "app.help", "Help"),
        Binding("ctrl+o", "focus_history", "History"),
        Binding("ctrl+e", "focus_compose", "Compose"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]

    def __init__(self, consult: str) -> None:
        super().__init__()
        self.consult = consult

    def compose(self) -> ComposeResult:
        yield Static("", id="title")
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

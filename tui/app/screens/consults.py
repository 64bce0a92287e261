"""The consult list: title, members, unread count, last message, since when it waits;
``q`` opens the triage queue."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from medcomm.app.widgets.fields import Field
from medcomm.app.widgets.status import StatusLine


def _clock(ms: object) -> str:
    if not ms:
        return ""
    t = time.localtime(int(ms) / 1000)  # type: ignore[call-overload]
    same_day = time.strftime("%Y%m%d", t) == time.strftime("%Y%m%d")
    return time.strftime("%H:%M" if same_day else "%d %b", t)


def render_row(row: dict[str, object], me: str, width: int = 78) -> Text:
    others = [m for m in row["members"] if m != me]  # type: ignore[attr-defined]
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(f"{row['id']} ", style="dim")
    out.append(str(row["title"] or "(untitled)"), style="bold")
    out.append(f"  {', '.join(others)}", style="dim")
    if row.get("unread"):
        out.append(f"  {row['unread']} unread", style="bold yellow")
    if row.get("waiting_since"):
        out.append(f"  waiting since {_clock(row['waiting_since'])}", style="red")
    if row.get("queued"):
        out.append(f"  {row['queued']} queued", style="yellow")
    if row.get("last_text"):
        out.append("\n    ")
        out.append(f"{_clock(row['last_time'])} {row['last_sender']}: ", style="dim")
        out.append(str(row["last_text"]).replace("\n", " ")[: width - 20])
    return out


class ConsultList(Screen[None]):
    BINDINGS = [
        Binding("/", "search", "Search"),
        Binding("ctrl+n", "new", "New consult"),
        Binding("q", "app.open_queue", "Queue"),
        Binding("escape", "clear_search", "Clear", show=False),
        Binding("f1,question_mark", "app.help", "Help"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, object]] = []
        self._shown: list[tuple[str, str]] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="title")
        yield Field(placeholder="search title or member ( / )", id="search")
        with Vertical(id="list-area"):  # the list is only as tall as its rows: repaints stay small
            yield OptionList(id="consults")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#title", Static).update(f"medcomm · consults of {self.app.me}")  # type: ignore[attr-defined]
        self.query_one(OptionList).focus()
        self.reload()
        self.app.refresh_status()  # type: ignore[attr-defined]

    def reload(self) -> None:
        self.rows = self.app.session.overview() if self.app.session else []  # type: ignore[attr-defined]
        self._render_rows()

    def _render_rows(self) -> None:
        needle = self.query_one("#search", Input).value.strip().lower()
        me = self.app.me  # type: ignore[attr-defined]
        rows = [
            r
            for r in self.rows
            if not needle
            or needle in str(r["title"]).lower()
            or any(needle in m for m in r["members"])  # type: ignore[attr-defined]
            or needle in str(r["id"])
        ]
        rendered = [(str(r["id"]), render_row(r, me)) for r in rows]
        signature = [(cid, text.plain) for cid, text in rendered]
        if signature == self._shown:
            return  # nothing changed: no redraw
        self._shown = signature
        options = self.query_one(OptionList)
        highlighted = options.highlighted_option.id if options.highlighted_option else None
        options.clear_options()
        options.add_options([Option(text, id=cid) for cid, text in rendered])
        if not rendered:
            empty = (
                f"no consult matches '{needle}' (Esc clears)"
                if needle
                else "no consults yet: Ctrl+N opens one"
            )
            options.add_option(Option(empty, id="-", disabled=True))
        ids = [cid for cid, _ in rendered]
        if highlighted in ids:
            options.highlighted = ids.index(highlighted)
        elif ids:
            options.highlighted = 0

    def on_screen_resume(self) -> None:
        self.reload()  # back from a consult: last message, unread and waiting have moved
        self.app.refresh_status()  # type: ignore[attr-defined]

    def on_input_changed(self, event: Input.Changed) -> None:
        self._render_rows()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and event.option.id != "-":
            self.app.open_consult(event.option.id)  # type: ignore[attr-defined]

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_clear_search(self) -> None:
        self.query_one("#search", Input).value = ""
        self.query_one(OptionList).focus()

    def action_new(self) -> None:
        self.app.new_consult()  # type: ignore[attr-defined]

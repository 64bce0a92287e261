"""The triage queue: the consults that wait for a doctor and the follow-ups that are due.

Ordered exactly as ``medcomm.core.triage.queue`` orders them (emergencies, then urgent,
then routine; the longest waiting first), one row each: urgency, time waiting, consult,
patient, status and assignee, complaint (or the follow-up's reason and day). An emergency
that waits for a doctor raises a banner above the rows, in words and reverse video
("!! EMERGENCY waiting 14 min: ..."), so it shows on a 16-colour or monochrome terminal as
well; its row starts with "!!". Enter opens the consult, ``c`` claims it, ``d`` marks a
due follow-up done.

Frugal by construction: each row is a line of cells (one widget per column), and a reload
repaints only the cells whose text changed; rows are rebuilt only when the queue's order or
membership changes. It reloads when the session reports a change (the app's coalesced
refresh, like the consult list) and once a minute while it is the screen on top, for the
"waiting" column and the banner: a tick repaints those cells only when their minute (or
hour, past a day) changed, and writes nothing otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from medcomm.app.widgets.caseheader import STATE_WORDS
from medcomm.app.widgets.status import StatusLine
from medcomm.core.triage import QueueEntry, wait_text
from medcomm.errors import MedcommError

if TYPE_CHECKING:
    from textual.timer import Timer

    from medcomm.app.app import MedcommApp

TICK = 60.0  # seconds between refreshes of the "waiting" column: minutes are what it shows
COLUMNS = ("urgency", "wait", "consult", "patient", "status", "complaint")
HEAD = ("   URGENCY", "WAITING", "CONSULT", "PATIENT", "STATUS", "COMPLAINT")
# Cells of a fixed width hold their own gap (a blank last column), so a row in reverse video
# is one unbroken bar; the complaint takes the rest of the line.
WIDTHS = {"urgency": 13, "wait": 8, "consult": 8, "patient": 19, "status": 15}
RIGHT = frozenset({"wait"})
Key = tuple[str, str, str]  # consult, reason, follow-up id


def key_of(e: QueueEntry) -> Key:
    return (e.consult, e.reason, e.followup)


def fit(text: str, width: int, right: bool = False) -> str:
    """``text`` in ``width`` terminal cells, the last one blank: cut with "…" when longer
    (Chinese names are two cells a character), padded when shorter."""
    room = width - 1
    if cell_len(text) > room:
        out, used = [], 0
        for ch in text:
            if used + cell_len(ch) > room - 1:
                break
            out.append(ch)
            used += cell_len(ch)
        text = "".join(out) + "…"
    pad = " " * max(0, room - cell_len(text))
    return (pad + text if right else text + pad) + " "


def queue_wait(ms: int) -> str:
    """The "waiting" column: whole minutes (a minute's tick keeps it true), then hours, days."""
    return "<1m" if ms < 60_000 else wait_text(ms)


def wait_words(ms: int) -> str:
    """The banner's words: ``14 min``, ``3h 05m``."""
    if ms < 60_000:
        return "under a minute"
    return f"{ms // 60_000} min" if ms < 3_600_000 else wait_text(ms)


def row_texts(e: QueueEntry, me: str) -> tuple[str, ...]:
    """The cells of one entry, in the order of ``COLUMNS``."""
    urgency = f"!! {e.urgency}" if e.alarm else f"   {e.urgency}"
    if e.reason == "follow-up":
        day = dt.date.fromisoformat(e.due).strftime("%d %b") if e.due else ""
        complaint = f"follow-up {day}: {e.followup_reason}"
    else:
        complaint = e.complaint or e.title
    state = STATE_WORDS.get(e.status, e.status)
    who = "you" if e.mine else e.assignee
    status = f"{state} ({who})" if who and e.status != "closed" else state
    complaint = " ".join(complaint.split())
    return (urgency, queue_wait(e.waiting_ms), e.consult, e.patient or "-", status, complaint)


def alarm_text(entries: list[QueueEntry]) -> str:
    """The banner, or "" when no emergency waits for a doctor."""
    alarms = [e for e in entries if e.alarm]
    if not alarms:
        return ""
    first = alarms[0]  # the queue's order: the longest-waiting emergency first
    if len(alarms) == 1:
        what = " · ".join(p for p in (first.patient, first.complaint or first.title) if p)
        return f"!! EMERGENCY waiting {wait_words(first.waiting_ms)}: {first.consult} {what}"
    ids = ", ".join(e.consult for e in alarms)
    return f"!! {len(alarms)} EMERGENCIES waiting, the longest {wait_words(first.waiting_ms)}: {ids}"


def title_text(entries: list[QueueEntry]) -> str:
    waiting = sum(1 for e in entries if e.reason == "waiting")
    due = len(entries) - waiting
    parts = [f"{waiting} waiting for a doctor"]
    if due:
        parts.append(f"{due} follow-up{'s' if due > 1 else ''} due")
    return "medcomm · triage queue · " + " · ".join(parts)


class Cell(Static):
    """One cell of a row: repainted only when its text changes."""

    _shown: str | None = None

    def __init__(self, column: str) -> None:
        super().__init__(classes=column)
        self.column = column

    def show(self, text: str) -> None:
        if self.column in WIDTHS:
            text = fit(text, WIDTHS[self.column], self.column in RIGHT)
        if text != self._shown:
            self._shown = text
            self.update(Text(text))


class QueueRow(Horizontal):
    DEFAULT_CSS = """
    QueueRow { height: 1; width: 100%; }
    QueueRow > Cell { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    QueueRow > .urgency { width: 13; }
    QueueRow > .wait { width: 8; }
    QueueRow > .consult { width: 8; }
    QueueRow > .patient { width: 19; }
    QueueRow > .status { width: 15; }
    QueueRow > .complaint { width: 1fr; }
    QueueRow.-head > Cell { text-style: bold; }
    QueueRow.-alarm > .urgency { text-style: bold; color: $error; }
    QueueRow.-cursor > Cell { text-style: reverse; }
    QueueRow.-alarm.-cursor > .urgency { text-style: bold reverse; }
    """

    def __init__(self, texts: tuple[str, ...], entry: QueueEntry | None = None, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self.entry = entry
        self._texts = texts
        self.cells = [Cell(name) for name in COLUMNS]
        if entry is not None:
            self.set_class(entry.alarm, "-alarm")

    def compose(self) -> ComposeResult:
        yield from self.cells

    def on_mount(self) -> None:
        self.show(self._texts, self.entry)

    def show(self, texts: tuple[str, ...], entry: QueueEntry | None) -> None:
        self.entry = entry
        self._texts = texts
        if entry is not None:
            self.set_class(entry.alarm, "-alarm")
        for cell, text in zip(self.cells, texts, strict=True):
            cell.show(text)

    @property
    def texts(self) -> tuple[str, ...]:
        return self._texts

    @property
    def text(self) -> str:
        return "  ".join(self._texts)


class QueueList(VerticalScroll, can_focus=True):
    DEFAULT_CSS = "QueueList { height: 1fr; scrollbar-size-vertical: 0; }"
    BINDINGS = [
        Binding("up,k", "screen.move(-1)", "Up", show=False),
        Binding("down,j", "screen.move(1)", "Down", show=False),
        Binding("home", "screen.move(-100000)", "First", show=False),
        Binding("end", "screen.move(100000)", "Last", show=False),
        Binding("pageup", "screen.move(-10)", "Page up", show=False),
        Binding("pagedown", "screen.move(10)", "Page down", show=False),
    ]


class QueueScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("enter", "open", "Open"),
        Binding("c", "claim", "Claim"),
        Binding("d", "followup_done", "Follow-up done"),
        Binding("f1,question_mark", "app.help", "Help"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    QueueScreen #alarm { height: 1; padding: 0 1; text-style: bold reverse; color: $error; display: none;
                         text-wrap: nowrap; text-overflow: ellipsis; }
    QueueScreen #alarm.-on { display: block; }
    QueueScreen #queue-head { padding: 0; }
    QueueScreen #queue-empty { padding: 1 2; height: auto; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[QueueEntry] = []
        self.rows: list[QueueRow] = []
        self.cursor = 0
        self._keys: list[Key] | None = None
        self._lock = asyncio.Lock()
        self._ticker: Timer | None = None
        self._ready = False
        self._alarm_shown: str | None = None
        self._title_shown: str | None = None

    @property
    def desk(self) -> MedcommApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", id="title", markup=False)
        yield Static("", id="alarm")
        yield QueueRow(HEAD, id="queue-head", classes="-head")
        yield QueueList(id="queue")
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one(QueueList).focus()
        await self.reload()
        self._ticker = self.set_interval(TICK, self.tick)
        self.desk.refresh_status()
        self._ready = True

    def on_screen_suspend(self) -> None:
        if self._ticker is not None:
            self._ticker.pause()  # under a consult or a dialog: no tick

    async def on_screen_resume(self) -> None:
        if self._ticker is not None:
            self._ticker.resume()
        if self._ready:  # back from a consult: it may have been claimed, advised...
            await self.reload()
        self.desk.refresh_status()

    async def tick(self) -> None:
        """Once a minute: the waits move on; only the cells whose text changed repaint."""
        await self.reload()

    # --- showing ------------------------------------------------------------------------------

    @property
    def selected(self) -> QueueEntry | None:
        return self.entries[self.cursor] if 0 <= self.cursor < len(self.entries) else None

    async def reload(self) -> None:
        session = self.desk.session
        if session is None:
            return
        async with self._lock:
            entries = session.triage_queue()
            me = self.desk.me
            keys = [key_of(e) for e in entries]
            chosen = key_of(self.selected) if self.selected is not None else None
            self.entries = entries
            if keys != self._keys:
                await self._rebuild(entries, me, keys, chosen)
            else:
                for row, e in zip(self.rows, entries, strict=True):
                    row.show(row_texts(e, me), e)
            self._show_title(entries)

    async def _rebuild(self, entries: list[QueueEntry], me: str, keys: list[Key], chosen: Key | None) -> None:
        """The queue's order or membership changed: new rows, the cursor kept on its entry
        (or at the same place when that entry left the queue)."""
        self._keys = keys
        listing = self.query_one(QueueList)
        await listing.remove_children()
        if chosen in keys:
            self.cursor = keys.index(chosen)  # type: ignore[arg-type]
        self.cursor = max(0, min(self.cursor, len(entries) - 1))
        self.rows = [QueueRow(row_texts(e, me), e) for e in entries]
        if self.rows:
            self.rows[self.cursor].add_class("-cursor")
            await listing.mount_all(self.rows)
        else:
            await listing.mount(
                Static("Nothing waits for a doctor and no follow-up is due.", id="queue-empty")
            )

    def _show_title(self, entries: list[QueueEntry]) -> None:
        title = title_text(entries)
        if title != self._title_shown:
            self._title_shown = title
            self.query_one("#title", Static).update(title)
        alarm = alarm_text(entries)
        if alarm != self._alarm_shown:
            self._alarm_shown = alarm
            banner = self.query_one("#alarm", Static)
            banner.set_class(bool(alarm), "-on")
            banner.update(Text(alarm))

    @property
    def alarm(self) -> str:
        """The banner as the user sees it ("" while hidden)."""
        banner = self.query_one("#alarm", Static)
        return str(banner.content) if banner.has_class("-on") else ""

    # --- keys ---------------------------------------------------------------------------------

    def action_move(self, delta: int) -> None:
        if not self.rows:
            return
        new = max(0, min(len(self.rows) - 1, self.cursor + delta))
        if new == self.cursor:
            return
        self.rows[self.cursor].remove_class("-cursor")
        self.cursor = new
        row = self.rows[new]
        row.add_class("-cursor")
        self.query_one(QueueList).scroll_to_widget(row, animate=False)

    def action_open(self) -> None:
        entry = self.selected
        if entry is not None:
            self.desk.open_consult(entry.consult)

    def action_claim(self) -> None:
        entry = self.selected
        if entry is not None:
            self.claim(entry)

    def action_followup_done(self) -> None:
        entry = self.selected
        if entry is None:
            return
        if entry.reason != "follow-up":
            self.notify("d marks a due follow-up done: this row is a consult waiting", timeout=5)
            return
        self.followup_done(entry)

    @work(exclusive=False, group="queue-action")
    async def claim(self, entry: QueueEntry) -> None:
        session = self.desk.session
        if session is None:
            return
        try:
            await session.claim(entry.consult)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=8, markup=False)
            return
        self.notify(f"{entry.consult}: in consult, yours", timeout=4, markup=False)
        await self.reload()
        self.desk.refresh_status()

    @work(exclusive=False, group="queue-action")
    async def followup_done(self, entry: QueueEntry) -> None:
        session = self.desk.session
        if session is None:
            return
        try:
            await session.close_followup(entry.consult, entry.followup, True)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=8, markup=False)
            return
        self.notify(f"{entry.consult}: follow-up {entry.followup} done", timeout=4, markup=False)
        await self.reload()
        self.desk.refresh_status()

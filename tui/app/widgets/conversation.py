"""The conversation: one line widget per message, paged in from the store.

Only the newest page is loaded when a consult opens; scrolling to the top (or PageUp there)
loads the page before it, so a 10,000-message consult opens as fast as a short one. A
message keeps its widget from "queued" to "read" (keyed by its client id), and a widget is
repainted only when its own text changed.

A voice note is a line of its own kind ("▶ voice note 0:12 (9.4 KB)") that can take the
focus: Shift+Tab from the compose box steps back through the notes, newest first, and Enter
on one asks the screen to play it (``Conversation.PlayNote``). An image is one line too
("■ report "CBC today" · 19.6 KB · first view here", the screen words it), and Enter on it
asks the screen to open it in the viewer (``Conversation.OpenImage``). A change of the case
card, the status or a follow-up is an event line ("· dr.chen status: claimed (in consult)").
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.widgets import Static

from medcomm.adapters.localstore import Line
from medcomm.app.widgets.imagebar import ICON as IMAGE_ICON

MARKS = {
    "queued": ("… queued", "yellow"),
    "stored": ("✓ stored", "cyan"),
    "delivered": ("✓✓ delivered", "cyan"),
    "read": ("✓✓ read", "green"),
    "failed": ("✗ failed", "red"),
}


ICONS = {"note": "▶", "image": IMAGE_ICON}
WORKFLOW = frozenset({"case", "status", "followup"})  # the consult's card, status and follow-ups


def render_line(line: Line, me: str) -> Text:
    when = time.strftime("%H:%M", time.localtime(line.time / 1000))
    seq = f"#{line.seq}" if line.seq is not None else "#-"
    # Few style changes per line: each costs an escape sequence on every repaint.
    out = Text(no_wrap=False)
    if line.kind == "system":
        out.append(f"{seq:>5} {when} · {line.sender} {line.text}", style="dim")
        return out
    if line.kind in WORKFLOW:
        # An event of the consult ("· dr.chen status: advised — advice: ..."), not a chat
        # line, in full colour (advice is clinical text), with its delivery state when ours.
        out.append(f"{seq:>5} {when} · ", style="dim")
        out.append(f"{line.sender} {line.text}")
        if line.sender == me:
            label, style = MARKS.get(line.state, (line.state, ""))
            out.append(f"  [{label}]", style=style)
        return out
    out.append(f"{seq:>5} {when} {line.sender}:", style="bold" if line.sender == me else "bold cyan")
    icon = ICONS.get(line.kind)
    out.append(f" {icon} {line.text}" if icon else f" {line.text}")
    if line.sender == me:
        label, style = MARKS.get(line.state, (line.state, ""))
        out.append(f"  [{label}]", style=style)
    return out


class MessageLine(Static):
    DEFAULT_CSS = "MessageLine { height: auto; }"

    def __init__(self, line: Line, me: str) -> None:
        super().__init__(render_line(line, me), id=f"m-{line.id}")
        self.line = line

    def refresh_line(self, line: Line, me: str) -> None:
        """Repaint only if what is shown changed (others' messages show no state, so a read
        mark on them costs nothing)."""
        if line == self.line:
            return
        before, self.line = render_line(self.line, me), line
        after = render_line(line, me)
        if after != before:
            self.update(after)


class NoteLine(MessageLine, can_focus=True):
    """A voice note: focusable (Tab / Shift+Tab), Enter plays it."""

    DEFAULT_CSS = "NoteLine:focus { text-style: reverse; }"
    BINDINGS = [Binding("enter", "play", "Play", show=False)]  # the footer has F8 for it

    def action_play(self) -> None:
        self.post_message(Conversation.PlayNote(self.line))


class ImageLine(MessageLine, can_focus=True):
    """An image: focusable (Tab / Shift+Tab), Enter opens it in the viewer."""

    DEFAULT_CSS = "ImageLine:focus { text-style: reverse; }"
    BINDINGS = [Binding("enter", "open", "View", show=False)]  # F9 does it from anywhere in the view

    def action_open(self) -> None:
        self.post_message(Conversation.OpenImage(self.line))


def line_widget(line: Line, me: str) -> MessageLine:
    if line.kind == "note":
        return NoteLine(line, me)
    return ImageLine(line, me) if line.kind == "image" else MessageLine(line, me)


class Conversation(VerticalScroll, can_focus=True):
    # No padding and no scrollbar: a new message scrolls the whole view, and every extra
    # segment on a row is another escape sequence on each of its lines.
    DEFAULT_CSS = "Conversation { height: 1fr; padding: 0; scrollbar-size-vertical: 0; }"
    # Out of the footer: at 80 columns the history's footer keeps room for what is not
    # obvious (Esc, F1, Ctrl+E, the call, F8 Play, Ctrl+Q); PageUp and F7 are in the help
    # and work here as everywhere in the view.
    BINDINGS = [
        Binding("pageup", "older", "Older", show=False),
        Binding("f7", "screen.record", "Record", show=False),
    ]

    class LoadOlder(Message):
        """The view reached its top: the screen loads the page before ``before``."""

        def __init__(self, before: int) -> None:
            super().__init__()
            self.before = before

    class PlayNote(Message):
        """Enter on a voice note: the screen plays it."""

        def __init__(self, line: Line) -> None:
            super().__init__()
            self.line = line

    class OpenImage(Message):
        """Enter on an image: the screen opens the viewer."""

        def __init__(self, line: Line) -> None:
            super().__init__()
            self.line = line

    def __init__(self, me: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.me = me
        self.first_seq: int | None = None  # oldest loaded stored message
        self.complete = False  # nothing older to load
        self._asked_before: int | None = None

    def _size_updated(
        self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True
    ) -> bool:
        # A new message changes the virtual size; Textual's watcher on it would lay out and
        # repaint the whole view a second time (~2.5 KB over SSH). The compositor has just
        # laid it out, so record the size without that second pass.
        return super()._size_updated(size, virtual_size, container_size, layout=False)

    @property
    def lines(self) -> list[MessageLine]:
        return list(self.query(MessageLine))

    def newest_note(self) -> Line | None:
        """The newest voice note loaded (what F8 plays when no note has the focus)."""
        notes = list(self.query(NoteLine))
        return notes[-1].line if notes else None

    def newest_image(self) -> Line | None:
        """The newest image loaded (what F9 opens when no image has the focus)."""
        shown = list(self.query(ImageLine))
        return shown[-1].line if shown else None

    def first_loaded(self) -> int:
        return self.first_seq if self.first_seq is not None else 0

    async def show_page(self, lines: list[Line], page_size: int) -> None:
        """The first load: the newest page, scrolled to the end."""
        await self.remove_children()
        stored = [ln for ln in lines if ln.seq is not None]
        self.first_seq = stored[0].seq if stored else None
        self.complete = len(stored) < page_size or self.first_seq == 1
        await self.mount_all([line_widget(ln, self.me) for ln in lines])
        self.anchor()  # stays at the end as messages arrive: one repaint each, no extra scroll

    async def prepend(self, lines: list[Line], page_size: int) -> None:
        stored = [ln for ln in lines if ln.seq is not None]
        if not stored:
            self.complete = True
            return
        first = self.children[0] if self.children else None
        widgets = [line_widget(ln, self.me) for ln in stored]
        if first is not None:
            await self.mount_all(widgets, before=first)
        else:
            await self.mount_all(widgets)
        self.first_seq = stored[0].seq
        self.complete = len(stored) < page_size or self.first_seq == 1
        if first is not None:  # keep the reader's place once the new lines have their heights
            self.call_after_refresh(self.scroll_to_widget, first, top=True, animate=False)

    async def merge(self, lines: list[Line]) -> bool:
        """Bring the loaded window up to date; returns True if a message was added."""
        existing = {w.line.id: w for w in self.lines}
        at_end = self.is_vertical_scroll_end or self.max_scroll_y == 0
        added = False
        for ln in lines:
            widget = existing.get(ln.id)
            if widget is not None:
                widget.refresh_line(ln, self.me)
                continue
            new = line_widget(ln, self.me)
            anchor = None
            if ln.seq is not None:
                anchor = next(
                    (w for w in self.lines if w.line.seq is None or w.line.seq > ln.seq),  # type: ignore[operator]
                    None,
                )
            await self.mount(new, before=anchor) if anchor is not None else await self.mount(new)
            existing[ln.id] = new
            added = True
            if self.first_seq is None and ln.seq is not None:
                self.first_seq = ln.seq
        if added and at_end and not self.is_anchored:
            self.anchor()
        return added

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new <= 0 and old > 0:
            self._ask_older()

    def action_older(self) -> None:
        if self.scroll_y <= 0:
            self._ask_older()
        else:
            self.scroll_page_up(animate=False)

    def _ask_older(self) -> None:
        if self.complete or self.first_seq is None or self._asked_before == self.first_seq:
            return
        self._asked_before = self.first_seq
        self.post_message(self.LoadOlder(self.first_seq))

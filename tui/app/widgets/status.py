"""The status line: link state and quality, what waits in the outbox, sync progress.

Times are clock times ("last contact 10:42:13"), never relative ("3 s ago"), so the line
changes only when something happens: an idle desk writes nothing to the terminal.

While a call rings for us the line announces it instead, in the warning colours, on every
screen: it is the one line every screen has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.cells import cell_len
from textual import events
from textual.widgets import Static

from medcomm.app.ports import LinkStatusView


@dataclass(frozen=True)
class Ring:
    """A call ringing for us, as the status line announces it."""

    by: str
    title: str  # the consult's title, or its id when the title is not known here
    waiting: bool = False  # we are in another call: F2 cannot answer it yet


def announce(ring: Ring, width: int) -> str:
    """ "incoming call from dr.chen · Boy, 6, fever · F2 answer · F3 decline", the title
    shortened (then left out) so that the keys always fit the line."""
    head = f"{'call waiting from' if ring.waiting else 'incoming call from'} {ring.by}"
    tail = "" if ring.waiting else " · F2 answer · F3 decline"
    room = width - cell_len(head) - cell_len(tail) - 3  # 3: the " · " before the title
    title = ring.title if cell_len(ring.title) <= room else ring.title[: max(0, room - 1)] + "…"
    return f"{head} · {title}{tail}" if room >= 6 else f"{head}{tail}"


def describe(status: LinkStatusView, queued: int, syncing: bool) -> str:
    waiting = f"{queued} waiting" if queued else "outbox empty"
    if status.state == "online":
        rtt = f" · rtt {status.rtt * 1000:.0f} ms" if status.rtt else ""
        contact = (  # minutes: a busy link must not repaint this line on every frame
            f" · last contact {time.strftime('%H:%M', time.localtime(status.last_contact))}"
            if status.last_contact
            else ""
        )
        sync = " · syncing…" if syncing else ""
        return f"● online{rtt}{contact}{sync} · {waiting}"
    if status.state == "connecting":
        return f"◌ connecting… · {waiting}"
    why = f" ({status.error})" if status.error else ""
    return f"○ offline — {waiting}{why}"[:200]


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; color: $text; padding: 0 1; }
    StatusLine.-ringing { background: $warning; color: ansi_black; text-style: bold; }
    """

    _ring: Ring | None = None

    def show(self, status: LinkStatusView, queued: int, syncing: bool, ring: Ring | None = None) -> None:
        self._ring = ring
        if ring is not None:
            width = self.content_size.width or self.app.size.width - 2
            text = announce(ring, width)
        else:
            text = describe(status, queued, syncing)
        if text != getattr(self, "_shown", None):  # unchanged text: no redraw, no bytes
            self._shown = text
            self.set_class(ring is not None, "-ringing")
            self.update(text)

    def on_resize(self, event: events.Resize) -> None:
        """The announcement is fitted to the width (the link status is short enough)."""
        if self._ring is not None:
            text = announce(self._ring, self.content_size.width)
            if text != getattr(self, "_shown", None):
                self._shown = text
                self.update(text)

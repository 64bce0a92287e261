"""The status line: link state and quality, what waits in the outbox, sync progress.

Times are clock times ("last contact 10:42:13"), never relative ("3 s ago"), so the line
changes only when something happens: an idle desk writes nothing to the terminal.
"""

from __future__ import annotations

import time

from textual.widgets import Static

from medcomm.app.ports import LinkStatusView


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
    """

    def show(self, status: LinkStatusView, queued: int, syncing: bool) -> None:
        text = describe(status, queued, syncing)
        if text != getattr(self, "_shown", None):  # unchanged text: no redraw, no bytes
            self._shown = text
            self.update(text)

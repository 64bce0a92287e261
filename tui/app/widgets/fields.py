"""A text field that does not blink: a blinking cursor repaints twice a second, forever,
which over SSH is a steady trickle of uplink for nothing."""

from __future__ import annotations

from textual.widgets import Input


class Field(Input):
    def on_mount(self) -> None:
        self.cursor_blink = False

"""The compose box: multi-line, Enter sends, Ctrl+J (or Shift+Enter where the terminal
tells them apart) adds a line, Up in an empty box recalls the last message sent."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class ComposeBox(TextArea, inherit_bindings=False):
    # TextArea's keys less F6 (select line) and F7 (select all): those are the consult
    # view's (voice profile, voice note), and so they show in the footer in the view's order.
    BINDINGS = [b for b in TextArea.BINDINGS if isinstance(b, Binding) and b.key not in ("f6", "f7")]

    # No border and only as tall as its text: every keystroke repaints the whole widget,
    # so a one-line box costs one terminal line per character instead of four.
    DEFAULT_CSS = """
    ComposeBox { height: 1; }
    """
    MAX_LINES = 6

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)  # type: ignore[arg-type]
        self.cursor_blink = False  # a blinking cursor writes bytes twice a second, forever
        self._sent: list[str] = []

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        """Grow (up to MAX_LINES) or shrink with the text; a fixed height in between keeps
        a keystroke from re-laying out, and so repainting, the whole screen."""
        lines = max(1, min(self.MAX_LINES, self.wrapped_document.height))
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            text = self.text.strip()
            if text:
                self._sent.append(self.text)
                self._sent = self._sent[-20:]
                self.clear()
                self.post_message(self.Submitted(text))
            return
        if event.key in ("ctrl+j", "shift+enter"):
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        if event.key == "up" and not self.text and self._sent:
            event.prevent_default()
            event.stop()
            self.insert(self._sent[-1])
            return
        await super()._on_key(event)

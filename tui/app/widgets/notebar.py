"""The voice-note bar: one line above the compose box while a note is recorded, saved,
fetched or played, and nothing at all otherwise (no height, no cell drawn).

Recording, it says "recording 0:07 · F7 stop · Esc cancel": the screen updates it once a
second (no faster timer), and the bar repaints its own line only when the text changed, so
a recording costs the terminal one short line a second over SSH.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from medcomm.app.ports import NoteRecording


def clock(seconds: float) -> str:
    """0:07, 1:42, 15:00 (whole seconds, rounded)."""
    secs = int(round(seconds))
    return f"{secs // 60}:{secs % 60:02d}"


def recording_text(recording: NoteRecording) -> str:
    return f"recording {clock(recording.seconds)} · F7 stop · Esc cancel"


def fetching_text(note: str, done: int, total: int) -> str:
    """``note`` is the line's text ("voice note 0:12 (9.4 KB)")."""
    pct = f" {100 * done // total}%" if total else ""
    return f"fetching {note}…{pct} · F8 stop"


def playing_text(note: str) -> str:
    return f"▶ playing {note} · F8 stop"


SAVING = "saving the voice note…"


class LineBar(Widget):
    """A one-line bar, hidden (``display: none``) until ``show`` gives it something to say."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.text = ""

    def show(self, text: str, recording: bool = False) -> None:
        """Redraw only if the text changed (its own line, no layout); an empty text hides
        the bar."""
        if text == self.text and self.has_class("-recording") == recording:
            return
        self.text = text
        self.set_class(recording, "-recording")
        if self.display != bool(text):
            self.display = bool(text)  # a layout change: only when a note starts or ends
        self.refresh()

    def render(self) -> Text:
        return Text(self.text, no_wrap=True, overflow="ellipsis", end="")


class NoteBar(LineBar):
    DEFAULT_CSS = """
    NoteBar { height: 1; padding: 0 1; display: none; background: $panel; color: $text; }
    NoteBar.-recording { background: $error; color: ansi_bright_white; text-style: bold; }
    """

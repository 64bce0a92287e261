"""The attach-an-image form: the file's path (checked: it must be a readable file), a
caption, and what the picture is (report, film, ECG, photo, or "auto": medcomm guesses).

Only the path is needed; Enter moves from the path to the caption and from the caption
sends, so ``F5``, a path, Enter, Enter shares a picture without touching the kind. The
form checks the file as it is typed (a line saying its size, or what is wrong with it),
which costs one short line per keystroke, like the field itself. The screen under it does
not show through, so the form has its own status line (the link, a ringing call).
"""

from __future__ import annotations

import os
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from medcomm.app.widgets.fields import Field
from medcomm.app.widgets.status import StatusLine
from medcomm.core.imagemsg import LIMITS, kb

KINDS = ("auto", "report", "film", "ecg", "photo")
KIND_NOTES = {
    "auto": "medcomm guesses; DICOM files are always slices",
    "report": "a lab report or letter: straightened, cleaned, legible first",
    "film": "an X-ray or CT film on a light box: straightened",
    "ecg": "an ECG strip: straightened, grid kept",
    "photo": "a wound, a rash, a label: colour kept, no straightening",
}


def check_file(text: str) -> tuple[Path | None, str]:
    """(the file, "2.1 MB") when ``text`` names a readable file, else (None, why not)."""
    raw = text.strip()
    if not raw:
        return None, "type the path of the picture (JPEG, PNG, HEIC, WebP, TIFF or DICOM)"
    path = Path(os.path.expanduser(raw))
    try:
        if path.is_dir():
            return None, f"{path.name or path} is a folder"
        if not path.is_file():
            return None, "no such file"
        if not os.access(path, os.R_OK):
            return None, "the file cannot be read (permissions)"
        return path, kb(path.stat().st_size)
    except OSError as exc:
        return None, f"cannot look at it: {exc.strerror or exc}"


class AttachImage(ModalScreen[tuple[str, str, str] | None]):
    """Dismissed with (path, caption, kind), or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    AttachImage { align: center middle; }
    AttachImage > Vertical { width: 76; max-width: 100%; height: auto; border: round $primary; padding: 0 1; }
    AttachImage #file { height: auto; color: $text-muted; }
    AttachImage #file.-bad { color: $error; }
    AttachImage RadioSet { layout: horizontal; height: auto; width: 100%; }
    AttachImage RadioButton { width: auto; margin-right: 1; }
    AttachImage #kind-note { height: auto; color: $text-muted; }
    AttachImage #error { color: $error; height: auto; }
    AttachImage StatusLine { dock: bottom; }
    """

    def __init__(self, title: str = "") -> None:
        super().__init__()
        self.consult_title = title

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Attach an image{' to ' + self.consult_title if self.consult_title else ''}"[:72])
            yield Field(placeholder="file, e.g. ~/Pictures/cbc.jpg", id="path")
            yield Static(check_file("")[1], id="file")
            yield Field(placeholder="caption (optional), e.g. CBC today", id="caption")
            with RadioSet(id="kind", compact=True):
                for i, kind in enumerate(KINDS):
                    yield RadioButton(kind, value=i == 0, id=f"kind-{kind}")
            yield Static(KIND_NOTES["auto"], id="kind-note")
            yield Static("", id="error")
            yield Button("Send image", id="send", variant="primary")
        yield StatusLine(id="status")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()
        self.app.refresh_status()  # type: ignore[attr-defined]

    @property
    def kind(self) -> str:
        index = self.query_one(RadioSet).pressed_index
        return KINDS[index] if 0 <= index < len(KINDS) else "auto"

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "path":
            path, what = check_file(event.value)
            line = self.query_one("#file", Static)
            line.set_class(path is None and bool(event.value.strip()), "-bad")
            line.update(what)

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.query_one("#kind-note", Static).update(KIND_NOTES[self.kind])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "path":
            self.query_one("#caption", Input).focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self._submit()

    def _submit(self) -> None:
        text = self.query_one("#path", Input).value
        path, why = check_file(text)
        if path is None:
            self.query_one("#error", Static).update(f"Not sent: {why}.")
            self.query_one("#path", Input).focus()
            return
        caption = self.query_one("#caption", Input).value.strip()
        if len(caption.encode("utf-8")) > LIMITS.max_caption:  # say it before any work is done
            self.query_one("#error", Static).update(
                f"The caption is over {LIMITS.max_caption} bytes: say the rest in a message."
            )
            return
        self.dismiss((str(path), caption, self.kind))

    def action_cancel(self) -> None:
        self.dismiss(None)

"""Images in the consult view: F5 attaches one (the form, then the app shares it with its
progress in the image bar), F9 or Enter on an image line opens the viewer, and each image
is one preview line that says what of it is where.

A mixin of ``ConsultView``: the view's lines go through ``with_images`` on their way to the
conversation, which adds the images shared here that are not in the outbox yet and words
every image line from the session's summary (the store's own words are the long form
``medcomm history`` prints). A line repaints only when its words change: a tile arriving
on this device, or one of ours reaching the relay.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from medcomm.adapters.localstore import Line
from medcomm.app.screens.attach import AttachImage
from medcomm.app.screens.viewer import ImageViewer
from medcomm.app.widgets.conversation import Conversation, ImageLine
from medcomm.app.widgets.imagebar import ImageBar, preview_text

if TYPE_CHECKING:
    from medcomm.app.app import MedcommApp


class ConsultImages:
    """Needs ``consult`` and ``desk`` (the app) from the screen it is mixed into."""

    consult: str

    @property
    def desk(self) -> MedcommApp:
        return self.app  # type: ignore[attr-defined, no-any-return]

    def pending_lines(self) -> list[Line]:
        """Notes and images recorded or shared here that are not in the outbox yet."""
        session = self.desk.session
        if session is None:
            return []
        return session.pending_notes(self.consult) + session.pending_images(self.consult)

    def with_images(self, lines: list[Line]) -> list[Line]:
        """Image lines worded as previews (kind, caption, size, what is where)."""
        session = self.desk.session
        ids = [ln.id for ln in lines if ln.kind == "image"]
        if session is None or not ids:
            return lines
        summaries = session.image_summaries(ids)
        return [
            replace(ln, text=preview_text(summaries[ln.id]))
            if ln.kind == "image" and ln.id in summaries
            else ln
            for ln in lines
        ]

    def show_image_bar(self) -> None:
        """The share bar: the image being shared in this consult, if any."""
        for bar in self.query(ImageBar):  # type: ignore[attr-defined]
            bar.show(self.desk.share_text(self.consult))

    def action_attach(self) -> None:
        """F5: the form; what it gives is shared by the app (it survives leaving the view)."""
        if self.desk.session is None:
            return
        row = next((r for r in self.desk.session.overview() if r["id"] == self.consult), None)
        title = str(row["title"]) if row else self.consult

        def chosen(result: tuple[str, str, str] | None) -> None:
            if result is not None:
                path, caption, kind = result
                self.desk.share_image(self.consult, path, caption, kind)

        self.desk.push_screen(AttachImage(title), chosen)

    def action_view_image(self) -> None:
        """F9: the image that has the focus, else the newest one."""
        focused = self.focused  # type: ignore[attr-defined]
        conv = self.query_one(Conversation)  # type: ignore[attr-defined]
        line = focused.line if isinstance(focused, ImageLine) else conv.newest_image()
        if line is None:
            self.notify("no image in this consult yet: F5 attaches one", timeout=4)  # type: ignore[attr-defined]
            return
        self.open_image(line)

    def on_conversation_open_image(self, event: Conversation.OpenImage) -> None:
        event.stop()
        self.open_image(event.line)

    def open_image(self, line: Line) -> None:
        self.desk.push_screen(ImageViewer(line))

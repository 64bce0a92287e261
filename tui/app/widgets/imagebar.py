"""Words about images: the conversation's one-line preview of each, and the bar that shows
an image being shared (prepared, saved on this device, its first view going up).

The preview says what an image will cost before anyone asks for it, and what of it is
where: for an image from someone else, what is on this device ("first view, tiles 3/65
here", and "original requested" once someone asked the sender's device for it); for one of
ours, what the relay has ("sending tiles 12/65", "detail at the relay, original on
request": originals stay on the sending device until a member asks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medcomm.app.widgets.notebar import LineBar
from medcomm.core.imagemsg import kb

if TYPE_CHECKING:
    from medcomm.session.deskimages import ImageSummary

ICON = "■"  # in every console font (CP437 has it), unlike most picture symbols
MAX_CAPTION = 32  # characters of the caption in the line; the viewer shows all of it


def short(text: str, limit: int = MAX_CAPTION) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


MINE_ORIGINAL = {  # the sender's device: where the original stands once the detail is up
    "requested": "original requested",
    "gone": "original gone",
    "no longer kept": "original no longer kept",
}


def arrived(s: ImageSummary, original: str | None = None) -> str:
    """What of the image is where, in a few words. ``original`` is the history's word for
    its original (``imagereq.original_state``): "requested", "gone"... or None."""
    if s.failed:
        return f"refused: {short(s.failed, 40)}"
    if s.mine:
        if s.sending == "saved":
            return "saved here, not sent yet"
        if s.sending == "tiles":
            return f"sending tiles {s.tiles_up}/{s.tiles}"
        if s.sending == "original":
            return f"sending the original ({kb(s.original_bytes)})"
        if s.original_sent or original == "at the relay":
            return "all at the relay"
        return "detail at the relay, " + MINE_ORIGINAL.get(original or "", "original on request")
    have = []
    if s.first_here:
        have.append("first view")
    if s.tiles_here:
        have.append(f"tiles {s.tiles_here}/{s.tiles}")
    if s.original_here:
        have.append("original")
    if not have:
        text = "not fetched yet"
    elif s.first_here and s.original_here and s.tiles and s.tiles_here == s.tiles:
        text = "all here"
    else:
        text = ", ".join(have) + " here"
    if not s.original_here and original in ("requested", "gone"):
        text += f" · original {original}"
    return text


def preview_text(s: ImageSummary, original: str | None = None) -> str:
    """``report "CBC today" · 19.6 KB · first view, tiles 3/65 here`` (after the icon)."""
    caption = f' "{short(s.caption)}"' if s.caption else ""
    return f"{s.kind}{caption} · {kb(s.first_bytes)} · {arrived(s, original)}"


@dataclass
class ShareProgress:
    """One image being shared from this desk, as its bar tells it."""

    name: str  # the file's name
    step: str = "prepare"  # prepare | saved | first view
    done: int = 0
    total: int = 0

    def update(self, step: str, done: int, total: int) -> bool:
        """A step from the share; True if the stage changed (shown at once, not throttled)."""
        if step == "tiles":  # cut while the first view goes up: nothing to wait for
            return False
        if step == "prepare" and done >= total:
            return False  # "saved" follows at once
        changed = step != self.step
        self.step, self.done, self.total = step, done, total
        return changed


def share_text(p: ShareProgress, others: int = 0, online: bool = True) -> str:
    name = short(p.name, 28)
    if p.step == "prepare":
        text = f"image {name}: preparing the first view…"
    elif not online:
        text = f"image {name}: saved on this device · waiting for the link"
    elif p.step == "saved":
        text = f"image {name}: saved on this device · sending the first view…"
    elif p.step == "first view" and p.total:
        text = f"image {name}: sending the first view {kb(p.done)} of {kb(p.total)}"
    else:
        text = f"image {name}: sending the first view…"
    return text + (f" (+{others} more)" if others else "")


class ImageBar(LineBar):
    """The share bar: one line above the compose box while an image is being shared here,
    nothing at all otherwise."""

    DEFAULT_CSS = """
    ImageBar { height: 1; padding: 0 1; display: none; background: $panel; color: $text; }
    """

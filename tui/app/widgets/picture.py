"""A picture drawn in half-block cells, and the viewer's one-line bar.

Each cell holds two pixels: ``▀`` with the upper one as its foreground and the lower one as
its background, or ``▄`` the other way round, or a space when both are one colour, in the
terminal's own palette: the 16 ANSI colours on a 16-colour terminal, else the 256-colour
palette (the colours ``medcomm view`` uses; 24-bit would double the bytes over SSH for
nothing a half cell can show). Of those, each cell takes the form that keeps the colours
of the cell before it (as ``medcomm view`` does), so neighbouring cells are one segment,
one style, as long as they can be: a grey report is mostly long runs of paper, and every
style change costs an escape sequence. The widget repaints only when the cells change, so
an arriving tile that adds nothing visible writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from medcomm.app.widgets.callbar import Part, parts_line

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

HALF = "\u2580"  # ▀ upper half block: the foreground on top
LOWER = "\u2584"  # ▄ lower half block: the foreground below


def palette_of(color_system: str | None) -> str:
    """ "16" on a 16-colour terminal (and without colour), else "256"."""
    return "256" if color_system in ("256", "truecolor") else "16"


def cells(image: Image.Image, colors: str) -> np.ndarray:
    """Palette indices of the picture, shape (rows, cols, 2): upper and lower pixel per cell."""
    import numpy as np

    from medcomm.adapters.halfblock import _ANSI16, _P256, _nearest  # the palettes `medcomm view` draws with

    a = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if a.shape[0] % 2:  # the last cell's lower half: black, as `medcomm view` draws it
        a = np.concatenate([a, np.zeros((1, a.shape[1], 3), dtype=np.uint8)])
    idx = _nearest(a, _ANSI16 if colors == "16" else _P256)
    return np.stack([idx[0::2], idx[1::2]], axis=2)


_STYLES: dict[tuple[int, int], Style] = {}


def _style(fg: int, bg: int) -> Style:
    style = _STYLES.get((fg, bg))
    if style is None:
        style = _STYLES[(fg, bg)] = Style(color=Color.from_ansi(fg), bgcolor=Color.from_ansi(bg))
    return style


def strips(idx: np.ndarray, width: int, height: int) -> list[Strip]:
    """``height`` lines of ``width`` cells with the picture centred.

    Each cell is drawn as ``▀`` or ``▄`` (the same two pixels either way) or, when both
    pixels are one colour, a space on it, whichever keeps the colours of the cell before:
    cells of one colour pair are then one segment, one style, whatever their characters."""
    rows, cols = idx.shape[0], idx.shape[1]
    left, top = max(0, (width - cols) // 2), max(0, (height - rows) // 2)
    blank = Strip.blank(width)
    out = [blank] * top
    for r in range(min(rows, height - top)):
        segs: list[Segment] = [Segment(" " * left)] if left else []
        fg = bg = -1
        run: list[str] = []
        for t, b in idx[r].tolist():
            if t == b:
                want, ch = (fg, t), " "  # the foreground does not show: keep it
            elif (fg != t) + (bg != b) <= (fg != b) + (bg != t):
                want, ch = (t, b), HALF
            else:
                want, ch = (b, t), LOWER
            if want != (fg, bg) and run:
                segs.append(Segment("".join(run), _style(fg if fg >= 0 else bg, bg)))
                run = []
            fg, bg = want
            run.append(ch)
        if run:
            segs.append(Segment("".join(run), _style(fg if fg >= 0 else bg, bg)))
        used = left + cols
        if used < width:
            segs.append(Segment(" " * (width - used)))
        out.append(Strip(segs, width).crop(0, width))
    out += [blank] * (height - len(out))
    return out


class Picture(Widget):
    """Shows what ``show`` gives it; says when its size changes (the screen re-renders)."""

    DEFAULT_CSS = "Picture { height: 1fr; width: 1fr; }"

    class Resized(Message):
        def __init__(self, cols: int, rows: int) -> None:
            super().__init__()
            self.cols, self.rows = cols, rows

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._idx: np.ndarray | None = None
        self._strips: list[Strip] = []
        self.paints = 0  # how many times new cells were shown (tests count redraws)

    def show(self, image: Image.Image | None, colors: str) -> bool:
        """Draw ``image`` (at most the widget's cells); True if the screen changes."""
        import numpy as np

        width, height = self.size.width, self.size.height
        idx = cells(image, colors) if image is not None else None
        same = (idx is None and self._idx is None) or (
            idx is not None and self._idx is not None and np.array_equal(idx, self._idx)
        )
        if (
            same
            and len(self._strips) == height
            and (not self._strips or self._strips[0].cell_length == width)
        ):
            return False
        self._idx = idx
        self._strips = strips(idx, width, height) if idx is not None else [Strip.blank(width)] * height
        self.paints += 1
        self.refresh()
        return True

    @property
    def cell_size(self) -> tuple[int, int]:
        """Columns and rows of the picture drawn now (0, 0 before the first)."""
        return (0, 0) if self._idx is None else (self._idx.shape[1], self._idx.shape[0])

    def render_line(self, y: int) -> Strip:
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width)

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width and event.size.height:
            self.post_message(self.Resized(event.size.width, event.size.height))


class InfoBar(Widget):
    """One line of ranked parts (``callbar.Part``), the least needed dropped first when
    the line is too narrow; repaints only when its parts change."""

    DEFAULT_CSS = "InfoBar { height: 1; padding: 0 1; background: $panel; color: $text; }"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.parts: tuple[Part, ...] = ()

    def show(self, parts: list[Part]) -> None:
        if tuple(parts) != self.parts:
            self.parts = tuple(parts)
            self.refresh()

    @property
    def text(self) -> str:
        return self.render().plain

    def render(self) -> Text:
        return parts_line(self.parts, self.content_size.width or 10_000)

"""A last pass over what the desk writes to the terminal: the same screen, fewer bytes.

Textual writes each changed line as "move there, then styled runs", naming the default
colours on every run, padding the line to the right edge with spaces and ending it with a
newline that the next cursor move makes pointless. Over SSH on EDGE each of those bytes is
uplink, and a new message in an open consult repaints every visible line, so the waste is
paid per message. This filter removes only what provably changes nothing on the screen:

* SGR parameters that set what is already in effect (``39;49`` right after a reset), and
  the reset Textual writes after every styled run: colours are written only when something
  is drawn with them, as the shortest change from what the terminal has (a picture in
  half-block cells is a run per colour pair, so this halves what it costs);
* trailing blanks on the default background that end at the right edge, replaced by
  "erase to end of line" (``ESC[K``: 3 bytes for a run of spaces);
* a ``CR LF`` followed directly by an absolute cursor move (never on the bottom row,
  where the line feed would scroll).

It is sans-I/O (string in, string out) and conservative: any sequence it does not model
makes it forget the cursor position or the colours, and then it passes text unchanged
until a cursor move or a reset tells it the state again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.cells import cell_len

_TOKEN = re.compile(
    r"\x1b\[([0-9;]*)([Hm])"  # CUP and SGR: modelled
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # other CSI: cursor or screen state unknown afterwards
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC (titles, clipboard): no screen effect
    r"|\x1bP[^\x1b]*\x1b\\"  # DCS: no screen effect
    r"|\x1b[ -/]*[0-~]"  # other escapes
    r"|(\r?\n)"
    r"|[\x00-\x1f\x7f]"  # other controls
    r"|([^\x00-\x1f\x7f]+)"  # printable text
)
_MIN_BLANKS = 4  # ESC[K is 3 bytes: replace runs that are longer
_VISIBLE_ON_BLANKS = frozenset({4, 7, 9, 21})  # underline, reverse, strike: blanks show them


@dataclass
class Pen:
    """The SGR state: colours as their parameter strings (None = default), attributes."""

    fg: str | None = None
    bg: str | None = None
    attrs: frozenset[int] = field(default_factory=frozenset)


_CLEARS = {22: {1, 2}, 23: {3}, 24: {4, 21}, 25: {5, 6}, 27: {7}, 28: {8}, 29: {9}}


def _apply(pen: Pen, params: list[str]) -> list[tuple[list[str], Pen]] | None:
    """Split an SGR parameter list into atomic steps, each with the pen after it; None if
    a parameter is not understood (the pen is then unknown)."""
    steps: list[tuple[list[str], Pen]] = []
    i = 0
    while i < len(params):
        raw = params[i]
        code = int(raw) if raw else 0
        group = [raw]
        if code == 0:
            pen = Pen()
        elif 1 <= code <= 9:
            pen = Pen(pen.fg, pen.bg, pen.attrs | {code})
        elif code in _CLEARS:
            pen = Pen(pen.fg, pen.bg, pen.attrs - _CLEARS[code])
        elif 30 <= code <= 37 or 90 <= code <= 97:
            pen = Pen(raw, pen.bg, pen.attrs)
        elif 40 <= code <= 47 or 100 <= code <= 107:
            pen = Pen(pen.fg, raw, pen.attrs)
        elif code in (39, 49):
            pen = Pen(None, pen.bg, pen.attrs) if code == 39 else Pen(pen.fg, None, pen.attrs)
        elif code in (38, 48) and i + 1 < len(params) and params[i + 1] in ("5", "2"):
            n = 3 if params[i + 1] == "5" else 5
            group = params[i : i + n]
            if len(group) < n:
                return None
            colour = ";".join(group)
            pen = Pen(colour, pen.bg, pen.attrs) if code == 38 else Pen(pen.fg, colour, pen.attrs)
            i += n - 1
        else:
            return None
        steps.append((group, pen))
        i += 1
    return steps


def transition(a: Pen, b: Pen) -> str:
    """The shortest SGR that turns pen ``a`` into pen ``b``: the changes alone (attributes
    cleared by their own codes), or a reset and all of ``b``, whichever is shorter."""
    attrs = set(a.attrs)
    changes: list[str] = []
    removed = a.attrs - b.attrs
    for code, cleared in _CLEARS.items():
        if cleared & removed:
            changes.append(str(code))
            attrs -= cleared
    changes += [str(x) for x in sorted(b.attrs - attrs)]
    if b.fg != a.fg:
        changes.append(b.fg or "39")
    if b.bg != a.bg:
        changes.append(b.bg or "49")
    reset = ["", *(str(x) for x in sorted(b.attrs)), *(c for c in (b.fg, b.bg) if c)]
    if len(reset) > 1:
        reset[0] = "0"
    params = min(changes, reset, key=lambda p: len(";".join(p)))
    return f"\x1b[{';'.join(params)}m"


class TerminalDiet:
    """Stateful across writes (a frame may come in pieces); one per terminal."""

    def __init__(self, size: Callable[[], tuple[int, int]]) -> None:
        self._size = size  # (columns, rows) the frames are rendered for
        self.pen: Pen | None = Pen()  # what the terminal has; None: unknown
        self.want: Pen | None = None  # what the next drawing needs, when it differs
        self.row: int | None = None
        self.col: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def filter(self, data: str) -> str:
        width, height = self._size()
        out: list[str] = []
        pending_newline = ""  # a line feed held back: an absolute move next makes it pointless
        for m in _TOKEN.finditer(data):
            token = m.group()
            params, final, crlf, text = m.group(1), m.group(2), m.group(3), m.group(4)
            if final == "m" and self._defer(params):
                continue  # the pen is written when something is drawn with it
            if final == "H":
                pending_newline = ""
                row_col = (params or "1;1").split(";")
                try:
                    self.row = int(row_col[0] or 1)
                    self.col = int(row_col[1] or 1) if len(row_col) > 1 else 1
                except ValueError:
                    self.row = self.col = None
                out.append(token)
                continue
            if pending_newline:
                out.append(self._flush())
                out.append(pending_newline)
                pending_newline = ""
            if final == "m":  # the pen is unknown, or this SGR is not modelled
                out.append(self._flush())
                out.append(self._sgr(params))
            elif crlf:
                if self.row is not None and self.row < height:
                    pending_newline = token
                    self.row += 1
                else:  # on the bottom row it scrolls (new line in the current background)
                    out.append(self._flush())
                    out.append(token)
                    self.row = None
                self.col = 1 if token == "\r\n" else None  # a bare LF may or may not return
            elif text:
                out.append(self._flush())
                out.append(self._text(text, width))
            else:
                out.append(self._flush())
                out.append(token)
                if token == "\r":
                    self.col = 1
                elif token.startswith("\x1b[") or token in ("\x08", "\t", "\x0b", "\x0c"):
                    self.row = self.col = None  # a move or mode we do not model
                elif token.startswith("\x1b") and not token.startswith(("\x1b]", "\x1bP")):
                    self.row = self.col = None  # e.g. restore cursor: position and pen unknown
                    self.pen = None
        if pending_newline:
            out.append(self._flush())
            out.append(pending_newline)
        result = "".join(out)
        self.bytes_in += len(data)
        self.bytes_out += len(result)
        return result

    def _defer(self, params: str) -> bool:
        """Take an SGR into the pen to be written (False: not modelled, write it as is)."""
        if self.pen is None:
            return False
        steps = _apply(self.want or self.pen, params.split(";") if params else [""])
        if steps is None:
            return False
        if steps:
            self.want = steps[-1][1]
        return True

    def _flush(self) -> str:
        """The shortest SGR from the pen the terminal has to the one wanted, if they differ."""
        want, self.want = self.want, None
        if want is None or self.pen is None or want == self.pen:
            return ""
        codes, self.pen = transition(self.pen, want), want
        return codes

    def _sgr(self, params: str) -> str:
        """An SGR written as it is: the pen becomes known through a reset at its start."""
        if self.pen is None:
            parts = params.split(";") if params else [""]
            steps = _apply(Pen(), parts)
            self.pen = steps[-1][1] if steps and (parts[0] in ("", "0")) else None
        else:
            self.pen = None  # a parameter we do not model
        return f"\x1b[{params}m"

    def _text(self, text: str, width: int) -> str:
        if self.col is None:
            return text
        start, self.col = self.col, self.col + cell_len(text)
        ends_at_edge = self.col == width + 1
        pen = self.pen
        if not (ends_at_edge and pen is not None and pen.bg is None and not pen.attrs & _VISIBLE_ON_BLANKS):
            return text
        kept = text.rstrip(" ")
        if len(text) - len(kept) <= _MIN_BLANKS:
            return text
        self.col = start + cell_len(kept)
        return kept + "\x1b[K"


def frugal_driver(base: type) -> type:
    """Textual's terminal driver with this filter in front of every write."""

    class FrugalDriver(base):  # type: ignore[misc, valid-type]
        def __init__(self, app: object, **kwargs: object) -> None:
            super().__init__(app, **kwargs)

            def size() -> tuple[int, int]:
                s = app.size  # type: ignore[attr-defined]
                return s.width, s.height

            self.diet = TerminalDiet(size)

        def write(self, data: str) -> None:
            super().write(self.diet.filter(data))

    FrugalDriver.__name__ = f"Frugal{base.__name__}"
    return FrugalDriver

"""Pictures in a terminal: half-block text (everywhere), Kitty or Sixel graphics (when asked).

Half-block is the default because it works on every terminal that shows colour, over SSH
and inside tmux or screen, and because it is cheap: each cell is ``▀`` with the upper
pixel as foreground and the lower one as background, so a cell carries two square-ish
pixels, and a colour code is written only when it changes (a grey report has long runs).
Sixel or Kitty data costs ten times the bytes, which matters on a 24 kbit/s SSH session:
graphics are sent only when the user asks for them (``--graphics kitty|sixel``).

Colour depth follows the terminal (``detect_colors``): 24-bit when ``COLORTERM`` says so and
the session is local, else the 256-colour palette (grey ramp + 6x6x6 cube), 16 colours on
``TERM=linux`` and friends, and an ASCII luminance ramp with no escape codes at all for
``NO_COLOR``, dumb terminals and log files. Measured on a report's first view at 80x40
cells: 37 KB in 24-bit, 19 KB in 256 colours, 6 KB in 16, 2 KB in ASCII; Kitty 245 KB,
Sixel 317 KB. Nothing here logs or keeps pixels.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from medcomm.errors import UsageError

Colors = Literal["truecolor", "256", "16", "ascii"]
COLOR_MODES: tuple[str, ...] = ("truecolor", "256", "16", "ascii")
HALF = "\u2580"  # ▀ UPPER HALF BLOCK: foreground on top
LOWER = "\u2584"  # ▄ LOWER HALF BLOCK: foreground below
RAMP = " .:-=+*#%@"  # ascii: dark to bright on a dark terminal
ESC = "\x1b"


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on what one picture may cost the terminal (and the SSH link in front of it)."""

    max_cols: int = 400  # cells per line
    max_rows: int = 200  # lines
    kitty_chunk: int = 4096  # base64 bytes per Kitty escape (the protocol's maximum)
    graphics_max_px: int = 1600  # longest side sent as Kitty/Sixel; the terminal scales Kitty itself
    sixel_colors: int = 64  # palette size: 64 greys are smooth, and each colour costs a pass per band
    cell_px: tuple[int, int] = (10, 20)  # cell size assumed when the terminal does not say
    truecolor_step: int = 4  # 24-bit channels rounded to 64 levels: no visible banding, ~25% fewer bytes


RENDER = RenderLimits()

# xterm's default 16 colours, for the 16-colour mode
_ANSI16 = np.array(
    [
        (0, 0, 0),
        (205, 0, 0),
        (0, 205, 0),
        (205, 205, 0),
        (0, 0, 238),
        (205, 0, 205),
        (0, 205, 205),
        (229, 229, 229),
        (127, 127, 127),
        (255, 0, 0),
        (0, 255, 0),
        (255, 255, 0),
        (92, 92, 255),
        (255, 0, 255),
        (0, 255, 255),
        (255, 255, 255),
    ],
    dtype=np.int32,
)
_CUBE = (0, 95, 135, 175, 215, 255)


def _palette256() -> np.ndarray:
    cube = [(r, g, b) for r in _CUBE for g in _CUBE for b in _CUBE]
    grey = [(v, v, v) for v in range(8, 248, 10)]
    return np.array(list(_ANSI16) + cube + grey, dtype=np.int32)


_P256 = _palette256()


def detect_colors(env: Mapping[str, str] | None = None) -> Colors:
    """The colour depth to use from the environment (see module doc)."""
    env = os.environ if env is None else env
    if "NO_COLOR" in env:
        return "ascii"
    if env.get("COLORTERM", "").lower() in ("truecolor", "24bit") and not (
        env.get("SSH_CONNECTION") or env.get("SSH_TTY")
    ):
        return "truecolor"  # over SSH 256 colours look the same on a document at half the bytes
    term = env.get("TERM", "")
    if term in ("", "dumb"):
        return "ascii"
    if "256" in term or term.startswith(("tmux", "screen-")) or "kitty" in term:
        return "256"
    if term in ("linux", "vt100", "vt220", "xterm", "screen", "ansi", "cons25"):
        return "16"
    return "256"


def fit(
    size: tuple[int, int], cols: int, rows: int, px_per_cell: tuple[int, int] = (1, 2)
) -> tuple[int, int]:
    """The largest pixel size of the picture that fits ``cols x rows`` cells, aspect kept.

    Half-block cells hold 1x2 pixels, which are about square on a terminal whose cells are
    twice as tall as wide; the picture is never enlarged beyond its own pixels."""
    if cols < 1 or rows < 1:
        raise UsageError(f"no room to draw in {cols}x{rows} cells")
    w, h = size
    max_w, max_h = cols * px_per_cell[0], rows * px_per_cell[1]
    s = min(max_w / w, max_h / h, 1.0)
    return max(1, round(w * s)), max(1, round(h * s))


def _prepare(image: Image.Image, cols: int, rows: int, limits: RenderLimits) -> np.ndarray:
    cols, rows = min(cols, limits.max_cols), min(rows, limits.max_rows)
    w, h = fit(image.size, cols, rows)
    im = image.convert("RGB")
    if (w, h) != im.size:
        im = im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    a = np.asarray(im, dtype=np.uint8)
    if h % 2:  # the last cell's lower half: terminal background (black)
        a = np.concatenate([a, np.zeros((1, w, 3), dtype=np.uint8)])
    return a


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour per pixel (plain RGB distance, in blocks)."""
    flat = pixels.reshape(-1, 3).astype(np.int32)
    out = np.empty(len(flat), dtype=np.int32)
    for i in range(0, len(flat), 4096):
        block = flat[i : i + 4096]
        d = ((block[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2)
        out[i : i + 4096] = d.argmin(axis=1)
    return out.reshape(pixels.shape[:-1])


def _code(colors: Colors, fg: bool, c: object) -> str:
    """One SGR parameter list (without ESC [ and m) setting the foreground or background."""
    if colors == "truecolor":
        r, g, b = c  # type: ignore[misc]
        return f"{38 if fg else 48};2;{r};{g};{b}"
    if colors == "256":
        return f"{38 if fg else 48};5;{c}"
    i = int(c)  # type: ignore[call-overload]
    base = (30 if fg else 40) if i < 8 else (90 if fg else 100)
    return str(base + i % 8)


def halfblock(
    image: Image.Image, cols: int, rows: int, colors: Colors = "256", limits: RenderLimits = RENDER
) -> str:
    """The picture as text lines, at most ``cols x rows`` cells, ending in a newline.

    Bytes matter over SSH on a slow link, so: a colour code only when a colour changes, both
    changes in one escape, a space on the background for a one-colour cell, and per cell
    whichever of ``▀`` and ``▄`` needs fewer changes (the same two pixels either way).
    24-bit colours are rounded to ``truecolor_step`` (invisible in a half cell, and runs of
    paper merge). Every line ends with a reset, so a cut-off line never colours the prompt."""
    if colors not in COLOR_MODES:
        raise UsageError(f"colours must be one of {', '.join(COLOR_MODES)}, not {colors!r}")
    a = _prepare(image, cols, rows, limits)
    if colors == "ascii":
        luma = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        cells = (luma[0::2] + luma[1::2]) / 2
        idx = np.clip((cells / 256 * len(RAMP)).astype(np.int32), 0, len(RAMP) - 1)
        return "".join("".join(RAMP[i] for i in row).rstrip() + "\n" for row in idx)
    keys: list[list[Any]]
    if colors == "truecolor":
        step = limits.truecolor_step
        q = np.minimum((a.astype(np.int32) + step // 2) // step * step, 255)
        keys = [[tuple(int(v) for v in px) for px in row] for row in q]
    else:
        q = _nearest(a, _P256 if colors == "256" else _ANSI16)
        keys = [[int(v) for v in row] for row in q]
    lines = []
    for y in range(0, len(keys), 2):
        top, bottom = keys[y], keys[y + 1]
        out: list[str] = []
        fg = bg = None
        for t, b in zip(top, bottom, strict=True):
            if t == b:  # one colour: a space on that background needs no foreground code
                want_fg, want_bg, ch = fg, b, " "
            elif (fg != t) + (bg != b) <= (fg != b) + (bg != t):
                want_fg, want_bg, ch = t, b, HALF
            else:
                want_fg, want_bg, ch = b, t, LOWER
            codes = []
            if want_fg != fg:
                codes.append(_code(colors, True, want_fg))
                fg = want_fg
            if want_bg != bg:
                codes.append(_code(colors, False, want_bg))
                bg = want_bg
            if codes:
                out.append(f"{ESC}[{';'.join(codes)}m")
            out.append(ch)
        lines.append("".join(out) + f"{ESC}[0m\n")
    return "".join(lines)


def _graphics_image(
    image: Image.Image, cols: int, rows: int, limits: RenderLimits
) -> tuple[Image.Image, int, int]:
    """The picture at the pixel size that fills ``cols x rows`` cells (never enlarged, at most
    ``graphics_max_px``), and the cells it covers."""
    w, h = fit(image.size, cols, rows, limits.cell_px)
    cells_w, cells_h = max(1, -(-w // limits.cell_px[0])), max(1, -(-h // limits.cell_px[1]))
    s = min(1.0, limits.graphics_max_px / max(w, h))
    w, h = max(1, round(w * s)), max(1, round(h * s))
    im = image.convert("RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return im, cells_w, cells_h


def kitty(
    image: Image.Image, cols: int, rows: int, *, tmux: bool = False, limits: RenderLimits = RENDER
) -> str:
    """Kitty graphics protocol: a PNG in base64 chunks, placed over ``cols x rows`` cells
    (the terminal scales it); ``q=2`` keeps the terminal from answering into our input.
    Inside tmux each escape is wrapped for passthrough (tmux needs ``allow-passthrough on``)."""
    im, cells_w, cells_h = _graphics_image(image, cols, rows, limits)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    data = base64.standard_b64encode(buf.getvalue()).decode("ascii")
    chunks = [data[i : i + limits.kitty_chunk] for i in range(0, len(data), limits.kitty_chunk)]
    out = []
    for i, chunk in enumerate(chunks):
        more = 1 if i < len(chunks) - 1 else 0
        head = f"a=T,f=100,q=2,c={cells_w},r={cells_h},m={more}" if i == 0 else f"m={more}"
        esc = f"{ESC}_G{head};{chunk}{ESC}\\"
        out.append(f"{ESC}Ptmux;{esc.replace(ESC, ESC + ESC)}{ESC}\\" if tmux else esc)
    return "".join(out) + "\n"


def sixel(image: Image.Image, cols: int, rows: int, *, limits: RenderLimits = RENDER) -> str:
    """DEC Sixel: the picture quantised to ``sixel_colors`` colours, sized to the cells
    (``cell_px`` per cell, as the terminal reported or assumed), run-length encoded."""
    im, _, _ = _graphics_image(image, cols, rows, limits)
    pal_im = im.quantize(
        colors=limits.sixel_colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    idx = np.asarray(pal_im, dtype=np.int32)
    palette = pal_im.getpalette() or []
    out = [f'{ESC}Pq"1;1;{im.width};{im.height}']
    for c in np.unique(idx).tolist():
        r, g, b = palette[3 * c : 3 * c + 3]
        out.append(f"#{c};2;{round(r * 100 / 255)};{round(g * 100 / 255)};{round(b * 100 / 255)}")
    for y0 in range(0, idx.shape[0], 6):
        band = idx[y0 : y0 + 6]
        runs = []
        for c in np.unique(band).tolist():
            bits = np.zeros(band.shape[1], dtype=np.int32)
            for k in range(band.shape[0]):
                bits |= (band[k] == c).astype(np.int32) << k
            runs.append(f"#{c}{_rle(bits + 63)}")
        out.append("$".join(runs) + "-")
    out.append(f"{ESC}\\")
    return "".join(out) + "\n"


def _rle(codes: np.ndarray) -> str:
    """Sixel run-length encoding: ``!n<char>`` for runs longer than 3."""
    change = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(codes)]])
    parts = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        ch, n = chr(int(codes[s])), e - s
        parts.append(f"!{n}{ch}" if n > 3 else ch * n)
    return "".join(parts)


def cell_pixels(fd: int = 1, default: tuple[int, int] = RENDER.cell_px) -> tuple[int, int]:
    """Pixel size of one cell as the terminal reports it (TIOCGWINSZ), else ``default``."""
    try:
        import fcntl
        import struct
        import termios

        rows, cols, xpix, ypix = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except (OSError, ImportError, AttributeError):
        return default
    if rows and cols and xpix and ypix:
        return max(1, xpix // cols), max(1, ypix // rows)
    return default

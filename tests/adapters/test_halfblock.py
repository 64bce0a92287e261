"""Terminal pictures: half-block cells carry the right colours, Sixel decodes back to the
picture, Kitty escapes are well formed, and the colour depth follows the terminal."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from medcomm.adapters import halfblock
from medcomm.errors import UsageError

SGR = re.compile(r"\x1b\[([0-9;]*)m")


def quadrants(w: int = 40, h: int = 20) -> Image.Image:
    """Four flat colours: red, green / blue, white."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return Image.fromarray(a)


TOKEN = re.compile(r"\x1b\[([0-9;]*)m|(.)")


def cells(text: str) -> list[list[tuple[tuple[int, ...] | None, tuple[int, ...] | None]]]:
    """Parse truecolor half-block output back into the (top, bottom) pixel colours per cell,
    the way a terminal would show them."""
    out = []
    for line in text.splitlines():
        fg: tuple[int, ...] | None = None
        bg: tuple[int, ...] | None = None
        row = []
        for m in TOKEN.finditer(line):
            if m.group(2) is not None:
                row.append({"▀": (fg, bg), "▄": (bg, fg), " ": (bg, bg)}[m.group(2)])
                continue
            p = [int(x) for x in m.group(1).split(";") if x]
            i = 0
            while i < len(p):
                if p[i] in (38, 48) and p[i + 1] == 2:
                    colour = tuple(p[i + 2 : i + 5])
                    fg, bg = (colour, bg) if p[i] == 38 else (fg, colour)
                    i += 5
                else:
                    assert p[i] == 0
                    i += 1
        out.append(row)
    return out


def test_halfblock_cells_hold_two_pixels_in_the_right_colours():
    text = halfblock.halfblock(quadrants(), 40, 10, "truecolor")
    grid = cells(text)
    assert len(grid) == 10 and all(len(r) == 40 for r in grid)  # 40x20 px -> 40x10 cells
    assert all(line.endswith("\x1b[0m") for line in text.splitlines())  # never colours the prompt
    assert grid[1][2] == ((255, 0, 0), (255, 0, 0)) and grid[1][30] == ((0, 255, 0), (0, 255, 0))
    assert grid[7][30] == ((255, 255, 255),) * 2 and grid[7][5] == ((0, 0, 255),) * 2
    assert "38;2" not in text.splitlines()[1][:40]  # one colour in a cell: a space, no foreground
    # a cell across the middle holds red above blue, whichever half block draws it
    two = cells(halfblock.halfblock(quadrants(40, 22), 40, 11, "truecolor"))  # split at row 11
    assert two[5][3] == ((255, 0, 0), (0, 0, 255)) and two[5][30] == ((0, 255, 0), (255, 255, 255))
    # every cell of a random picture shows its two pixels (within the 24-bit rounding)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    shown = cells(halfblock.halfblock(Image.fromarray(noise), 24, 8, "truecolor"))
    back = np.array([[[t for t, _ in row], [b for _, b in row]] for row in shown]).reshape(16, 24, 3)
    assert np.abs(back - noise.astype(int)).max() <= 2
    # two colours at random: cells swap them often, and ▄ saves the codes of the swap
    two_tone = np.where(rng.random((16, 24, 1)) < 0.5, [255, 0, 0], [0, 0, 255]).astype(np.uint8)
    text = halfblock.halfblock(Image.fromarray(two_tone), 24, 8, "truecolor")
    back = np.array([[[t for t, _ in row], [b for _, b in row]] for row in cells(text)]).reshape(16, 24, 3)
    assert (back == two_tone).all() and "▄" in text and "▀" in text


def test_colour_codes_are_written_only_when_they_change():
    flat = Image.new("L", (80, 40), 200)
    text = halfblock.halfblock(flat, 80, 20, "256")
    assert text.count("\x1b[48;5;") == 20  # one background per line, then plain spaces
    assert len(text.encode()) < 80 * 20 + 20 * 30


def test_a_picture_is_fitted_to_the_cells_keeping_its_aspect():
    assert halfblock.fit((1000, 1414), 80, 40) == (57, 80)
    assert halfblock.fit((4000, 1000), 80, 40) == (80, 20)
    assert halfblock.fit((10, 10), 80, 40) == (10, 10)  # never enlarged
    with pytest.raises(UsageError):
        halfblock.fit((10, 10), 0, 10)


def test_256_and_16_colours_pick_the_nearest_palette_entries():
    text = halfblock.halfblock(quadrants(), 40, 10, "256")
    codes = {int(m.group(1).split(";")[2]) for m in SGR.finditer(text) if m.group(1).startswith("48;5")}
    assert codes <= {9, 10, 12, 15, 196, 46, 21, 231}  # pure colours: bright ANSI or cube corners
    text16 = halfblock.halfblock(quadrants(), 40, 10, "16")
    assert "\x1b[101m" in text16 and "\x1b[107m" in text16  # bright red, bright white backgrounds


def test_ascii_needs_no_escape_codes_and_keeps_light_and_dark():
    im = Image.fromarray(np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (20, 1)))
    text = halfblock.halfblock(im, 60, 10, "ascii")
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0][0] == " " and lines[0][-1] == "@"


def test_colour_depth_follows_the_terminal():
    assert halfblock.detect_colors({"COLORTERM": "truecolor", "TERM": "xterm-256color"}) == "truecolor"
    assert halfblock.detect_colors({"TERM": "xterm-256color"}) == "256"
    over_ssh = {
        "COLORTERM": "truecolor",
        "TERM": "xterm-256color",
        "SSH_CONNECTION": "10.0.0.2 5 10.0.0.1 22",
    }
    assert halfblock.detect_colors(over_ssh) == "256"  # half the bytes on a slow link
    assert halfblock.detect_colors({"TERM": "tmux-256color"}) == "256"
    assert halfblock.detect_colors({"TERM": "linux"}) == "16"
    assert halfblock.detect_colors({"TERM": "dumb"}) == "ascii"
    assert halfblock.detect_colors({"TERM": "xterm-256color", "NO_COLOR": "1"}) == "ascii"


def decode_sixel(text: str) -> np.ndarray:
    """A minimal Sixel decoder (colour registers, RLE, $ and -) for checking the encoder."""
    body = text.strip()
    assert body.startswith("\x1bPq") and body.endswith("\x1b\\")
    body = body[3:-2]
    m = re.match(r'"1;1;(\d+);(\d+)', body)
    assert m
    w, h = int(m.group(1)), int(m.group(2))
    body = body[m.end() :]
    palette: dict[int, tuple[int, int, int]] = {}
    out = np.zeros((h + 6, w, 3), dtype=np.int32)
    x = y = 0
    colour = (0, 0, 0)
    i = 0
    while i < len(body):
        c = body[i]
        if c == "#":
            m = re.match(r"#(\d+)(;2;(\d+);(\d+);(\d+))?", body[i:])
            assert m
            n = int(m.group(1))
            if m.group(2):
                palette[n] = tuple(round(int(m.group(k)) * 255 / 100) for k in (3, 4, 5))  # type: ignore[assignment]
            colour = palette[n]
            i += m.end()
            continue
        if c == "$":
            x = 0
        elif c == "-":
            x, y = 0, y + 6
        elif c == "!":
            m = re.match(r"!(\d+)(.)", body[i:])
            assert m
            for _ in range(int(m.group(1))):
                bits = ord(m.group(2)) - 63
                for k in range(6):
                    if bits >> k & 1:
                        out[y + k, x] = colour
                x += 1
            i += m.end()
            continue
        else:
            bits = ord(c) - 63
            for k in range(6):
                if bits >> k & 1:
                    out[y + k, x] = colour
            x += 1
        i += 1
    return out[:h]


def test_sixel_decodes_back_to_the_picture():
    limits = halfblock.RenderLimits(cell_px=(1, 1))  # one pixel per cell: no scaling in the test
    im = quadrants(30, 17)  # 17 rows: the last band is partial
    got = decode_sixel(halfblock.sixel(im, 30, 17, limits=limits))
    assert got.shape == (17, 30, 3)
    assert np.abs(got - np.asarray(im, dtype=np.int32)).max() <= 3  # 0-100 colour registers round


def test_kitty_sends_a_png_in_chunks_that_never_ask_for_an_answer():
    limits = halfblock.RenderLimits(kitty_chunk=512, cell_px=(10, 20))
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    text = halfblock.kitty(noisy, 30, 10, limits=limits)
    escapes = re.findall(r"\x1b_G([^;]*);([^\x1b]*)\x1b\\", text)
    assert len(escapes) > 2
    head = dict(kv.split("=") for kv in escapes[0][0].split(","))
    assert head["a"] == "T" and head["f"] == "100" and head["q"] == "2" and head["m"] == "1"
    assert (head["c"], head["r"]) == ("30", "10")
    assert escapes[-1][0] == "m=0" and all(e[0] == "m=1" for e in escapes[1:-1])
    png = base64.standard_b64decode("".join(e[1] for e in escapes))
    assert Image.open(io.BytesIO(png)).size == (300, 200)
    wrapped = halfblock.kitty(noisy, 30, 10, tmux=True, limits=limits)
    assert wrapped.startswith("\x1bPtmux;\x1b\x1b_G")


def test_a_two_level_first_view_is_drawn_with_its_greys_back():
    """A 1-bit page (a report's two-level first view) shrunk into cells: fine print averages
    to grey, as on paper seen from afar, instead of aliasing into solid black or white."""
    stripes = np.zeros((200, 160), dtype=bool)
    stripes[:, ::2] = True  # 1-px lines of ink: half the area
    page = Image.fromarray(stripes).convert("1")
    assert page.mode == "1"
    shown = cells(halfblock.halfblock(page, 40, 25, "truecolor"))
    greys = np.array([[t[0] for t, _ in row] for row in shown])
    assert greys.shape == (25, 40)
    assert 100 <= greys.mean() <= 155 and greys.std() < 20

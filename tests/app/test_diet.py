"""The terminal output filter changes bytes, never the screen.

A terminal emulator (pyte) is fed what Textual would write and what the filter makes of
it; every cell (character, colours, bold, reverse, underline, strike) must match, for real
frames of the desk and for many random frames in Textual's shape.
"""

from __future__ import annotations

import pyte
from hypothesis import given, settings
from hypothesis import strategies as st

from medcomm.app.diet import TerminalDiet

STYLES = [
    "",
    "0",
    "1",
    "1;36",
    "39;49",
    "49",
    "36;49",
    "1;36;49",
    "7",
    "4",
    "9",
    "38;5;12",
    "48;5;3",
    "40",
    "22",
    "27",
    "24",
    "97;40",
    "2",
    "38;2;10;20;30",
    "48;2;1;2;3",
    "39",
    "1;39;49",
]


def cells(screen: pyte.Screen) -> list[list[tuple]]:
    return [
        [
            (c.data, c.fg, c.bg, c.bold, c.reverse, c.underscore, c.strikethrough)
            for c in (screen.buffer[y][x] for x in range(screen.columns))
        ]
        for y in range(screen.lines)
    ]


def both(frames: list[str], cols: int, rows: int) -> tuple[list[list[tuple]], list[list[tuple]], int, int]:
    raw, thin = pyte.Screen(cols, rows), pyte.Screen(cols, rows)
    feed_raw, feed_thin = pyte.Stream(raw), pyte.Stream(thin)
    diet = TerminalDiet(lambda: (cols, rows))
    n_in = n_out = 0
    for frame in frames:
        out = diet.filter(frame)
        feed_raw.feed(frame)
        feed_thin.feed(out)
        n_in, n_out = n_in + len(frame), n_out + len(out)
    return cells(raw), cells(thin), n_in, n_out


def line(y: int, x: int, segments: list[tuple[str, str]]) -> str:
    return f"\x1b[{y};{x}H" + "".join(f"\x1b[{style}m{text}\x1b[0m" for style, text in segments)


def test_a_real_conversation_repaint_shrinks_by_a_third_and_looks_the_same():
    def row(y: int, n: int) -> str:
        return (
            f"\x1b[{y};1H\x1b[1;36;49m  #{n} 11:14 amina:\x1b[0m\x1b[39;49m earlier message {n} "
            "from the clinic\x1b[0m\x1b[49m" + " " * 27 + "\x1b[0m"
        )

    frame = "\n".join(row(y, 10 + y) for y in range(2, 21)) + "\x1b[22;2H"
    a, b, n_in, n_out = both([frame], 80, 24)
    assert a == b
    assert n_out < 0.7 * n_in


def test_blanks_that_do_not_reach_the_edge_stay_blanks():
    # a region update in the middle of a row: ESC[K there would wipe what is to its right
    first = line(1, 1, [("", "x" * 30)])
    frame = line(1, 1, [("", "ab" + " " * 10)])
    a, b, _, _ = both([first, frame], 30, 3)
    assert a == b
    assert b[0][20][0] == "x"


def test_coloured_or_underlined_blanks_are_kept():
    for style in ("44", "4", "7", "48;5;3"):
        frame = line(1, 1, [(style, "ab" + " " * 18)])
        a, b, _, _ = both([frame], 20, 3)
        assert a == b, style


def test_line_feed_on_the_bottom_row_still_scrolls():
    frames = [line(1, 1, [("", "top")]) + "\n" + line(3, 1, [("", "bottom")])]
    frames[0] += "\n" + line(3, 1, [("", "new")])
    frames += [line(3, 1, [("", "x")]) + "\r\n"]
    a, b, _, _ = both(frames, 10, 3)
    assert a == b


def test_state_carries_across_writes():
    frames = ["\x1b[1;1H\x1b[1;36m", "ab", "\x1b[0m\x1b[39;49m", "cd" + " " * 16, "\n", "\x1b[2;1Hef"]
    a, b, _, _ = both(frames, 20, 3)
    assert a == b


def test_unknown_sequences_make_it_careful():
    # after a cursor restore (pen and position unknown) and an unknown SGR, text passes as is
    frames = ["\x1b[1;1H\x1b[1m\x1b7\x1b[2;1H\x1b[0m\x1b8" + "ab" + " " * 10]
    frames.append("\x1b[2;1H\x1b[58;5;3mxy" + " " * 10)
    a, b, _, _ = both(frames, 12, 3)
    assert a == b


segment = st.tuples(st.sampled_from(STYLES), st.text(alphabet="ab #:.  ", min_size=0, max_size=12))


@st.composite
def frames(draw: st.DrawFn) -> tuple[list[str], int, int]:
    cols, rows = draw(st.integers(8, 30)), draw(st.integers(2, 8))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        lines = []
        for _ in range(draw(st.integers(1, rows))):
            y, x = draw(st.integers(1, rows)), draw(st.integers(1, cols))
            segs = draw(st.lists(segment, max_size=4))
            used = sum(len(t) for _, t in segs)
            if used > cols - x + 1:
                continue
            if draw(st.booleans()):  # Textual pads lines to the region's edge
                segs.append((draw(st.sampled_from(STYLES)), " " * (cols - x + 1 - used)))
            lines.append(line(y, x, segs))
        sep = draw(st.sampled_from(["\n", "\r\n"]))
        out.append(sep.join(lines) + draw(st.sampled_from(["", "\n", f"\x1b[{rows};1H"])))
    return out, cols, rows


@settings(max_examples=300, deadline=None)
@given(frames())
def test_random_frames_look_the_same_through_the_filter(case):
    written, cols, rows = case
    a, b, n_in, n_out = both(written, cols, rows)
    assert a == b
    assert n_out <= n_in


def test_a_half_block_picture_costs_half_once_its_colours_are_written_only_as_they_change():
    # Textual writes each run as "ESC[fg;bg m" text "ESC[0m"; a picture is a run per colour pair
    pairs = [(12, 3), (12, 4), (7, 4), (7, 4), (0, 15), (8, 15), (8, 8), (12, 3)]
    rows = [
        line(y, 1, [(f"38;5;{pairs[(x + y) % 8][0]};48;5;{pairs[(x + y) % 8][1]}", "▀▀") for x in range(10)])
        for y in range(1, 6)
    ]
    a, b, n_in, n_out = both(["".join(rows)], 20, 6)
    assert a == b
    assert n_out < 0.6 * n_in

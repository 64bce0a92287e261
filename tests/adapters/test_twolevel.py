"""Two-level first views of printed pages: what counts as two-level, the measured line height,
the side it picks, and the 1-bit PNG itself (thin strokes kept, bytes bounded)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from medcomm.adapters import twolevel
from medcomm.adapters.twolevel import TWO_LEVEL


def lines_page(
    w: int = 1400, h: int = 2000, line: int = 40, pitch: int = 80, columns: int = 1, offset: int = 0
) -> Image.Image:
    """A two-level page: rows of black 'words' ``line`` px high every ``pitch`` px, in
    ``columns`` columns, each next column shifted down by ``offset`` (lines that do not align)."""
    page = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(page)
    col_w = (w - 100) // columns
    for c in range(columns):
        x0 = 50 + c * col_w
        for y in range(100 + c * offset, h - 100 - line, pitch):
            for k in range(3):
                d.rectangle((x0 + k * col_w // 3, y, x0 + k * col_w // 3 + col_w // 4, y + line - 1), fill=0)
    return page


# ------------------------------------------------------------------------------ what is two-level


def test_only_black_and_white_pictures_are_two_level() -> None:
    page = lines_page(400, 500)
    assert twolevel.is_two_level(page)
    assert twolevel.is_two_level(page.convert("1"))
    grey = page.copy()
    grey.putpixel((10, 10), 128)
    assert not twolevel.is_two_level(grey)
    assert not twolevel.is_two_level(page.convert("RGB"))
    assert not twolevel.is_two_level(Image.new("L", (50, 50), 255))  # no ink: nothing to send in 1 bit


# ------------------------------------------------------------------------------- line height, side


@pytest.mark.parametrize("line", [18, 40, 64])
def test_line_height_is_measured_from_the_rows_of_ink(line: int) -> None:
    assert twolevel.text_line_height(lines_page(line=line, pitch=2 * line)) == pytest.approx(line, abs=1)


def test_columns_whose_lines_do_not_align_are_measured_apart() -> None:
    page = lines_page(w=1600, line=30, pitch=70, columns=2, offset=20)
    whole = np.asarray(page).min(axis=1) < 128  # rows with ink anywhere: both columns merged
    edges = np.diff(np.concatenate(([0], whole.astype(np.int8), [0])))
    merged = np.median(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    assert merged >= 45  # one band per pair of lines when measured across the page
    assert twolevel.text_line_height(page) == pytest.approx(30, abs=1)


def test_rules_and_specks_are_not_lines() -> None:
    page = lines_page(line=40, pitch=120)
    d = ImageDraw.Draw(page)
    for y in range(130, 1900, 120):  # a thin table rule between every two lines
        d.rectangle((50, y + 20, 1350, y + 21), fill=0)
    assert twolevel.text_line_height(page) == pytest.approx(40, abs=1)


def test_no_text_means_no_line_height() -> None:
    page = Image.new("L", (2100, 3000), 255)
    ImageDraw.Draw(page).rectangle((100, 100, 2000, 2900), outline=0, width=4)  # a frame, no lines
    assert twolevel.text_line_height(page) is None


def test_the_side_gives_lines_of_the_minimum_height_within_bounds() -> None:
    page = lines_page(w=2100, h=3000, line=40, pitch=80)
    side, line_px = twolevel.choose_side(page)
    assert side == -(-TWO_LEVEL.min_line_px * 3000 // 40)  # ceil(18 * 3000 / 40) = 1350
    assert line_px == pytest.approx(TWO_LEVEL.min_line_px, abs=0.1)
    small_print = lines_page(w=2100, h=3000, line=16, pitch=32)
    assert twolevel.choose_side(small_print)[0] == TWO_LEVEL.max_side  # 3375 wanted, capped
    big_print = lines_page(w=2100, h=3000, line=120, pitch=240)
    assert twolevel.choose_side(big_print)[0] == TWO_LEVEL.min_side
    blank = Image.new("L", (2100, 3000), 255)
    assert twolevel.choose_side(blank) == (TWO_LEVEL.default_side, None)
    tiny = lines_page(w=600, h=800, line=10, pitch=20)
    assert twolevel.choose_side(tiny)[0] == 800  # never upscaled


# ---------------------------------------------------------------------------------- the view


@pytest.mark.parametrize("codec", ["png", "webp"])
def test_the_view_is_two_level_at_the_chosen_size_within_the_budget(codec: str) -> None:
    page = lines_page(w=2100, h=3000, line=40, pitch=80)
    view = twolevel.two_level_view(page, 20_000, [codec])
    assert view is not None and view.codec == codec
    assert len(view.data) <= TWO_LEVEL.max_share * 20_000
    with Image.open(io.BytesIO(view.data)) as im:
        assert im.format == codec.upper()
        assert im.mode == "1" if codec == "png" else im.mode in ("L", "RGB")
        assert im.size == (view.width, view.height)
        assert max(im.size) == twolevel.choose_side(page)[0]
        grey = np.asarray(im.convert("L"))
    assert set(np.unique(grey).tolist()) == {0, 255}  # lossless: nothing but the two levels
    assert 0.1 < (grey < 128).mean() < 0.6  # the words are there, and not everything is black
    assert view.psnr > 15


def test_the_smaller_of_the_two_codecs_is_kept() -> None:
    page = lines_page(w=2100, h=3000, line=40, pitch=80)
    each = {c: twolevel.two_level_view(page, 20_000, [c]) for c in ("png", "webp")}
    both = twolevel.two_level_view(page, 20_000)
    assert both is not None and all(v is not None for v in each.values())
    assert len(both.data) == min(len(v.data) for v in each.values() if v is not None)
    assert twolevel.two_level_view(page, 20_000, ["avif"]) is None  # no lossless codec to use


def test_a_stroke_a_third_of_a_view_pixel_wide_stays_ink() -> None:
    """1-px strokes on a page shrunk 3x cover a third of a view pixel: they must not vanish."""
    a = np.full((3000, 2400), 255, dtype=np.uint8)
    a[300:2700, 300:2100:30] = 0  # vertical 1-px strokes on the 3-px grid of the view
    page = Image.fromarray(a)
    lim = replace(TWO_LEVEL, min_side=1000, max_side=1000)
    view = twolevel.two_level_view(page, 50_000, ["png"], limits=lim)
    assert view is not None and view.height == 1000
    with Image.open(io.BytesIO(view.data)) as im:
        cols = (np.asarray(im.convert("L"))[200:800] < 128).any(axis=0)
    assert cols.sum() == len(range(300, 2100, 30))  # every stroke, one view column each
    half = twolevel.two_level_view(page, 50_000, ["png"], limits=replace(lim, ink_level=127))  # a 50% cut
    assert half is not None
    with Image.open(io.BytesIO(half.data)) as im:
        assert not (np.asarray(im.convert("L")) < 128).any()  # ...would have lost them all


def test_no_view_when_it_would_not_be_clearly_smaller_than_the_budget() -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(np.where(rng.random((1600, 1200)) < 0.5, 0, 255).astype(np.uint8))
    assert twolevel.two_level_view(noise, 20_000) is None  # random dots do not compress
    page = lines_page(w=2100, h=3000, line=40, pitch=80)
    view = twolevel.two_level_view(page, 20_000)
    assert view is not None
    assert twolevel.two_level_view(page, int(len(view.data) / TWO_LEVEL.max_share) - 1) is None

"""Document straightening on small generated photos: pages, films, ECG strips, plain photos.

Each scene is drawn flat, put in perspective with a known pinhole projection (so the true
corners and aspect ratio are known), lit unevenly, blurred and given sensor noise, the way a
phone on a clinic desk sees it. No corpus and no OCR: those are for the benchmark.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from medcomm.adapters import docscan
from medcomm.adapters.docscan import Corrected, ScanLimits, correct
from medcomm.core import geometry
from medcomm.errors import LimitExceeded, UsageError
from tests.core.test_geometry import project_rectangle

# ------------------------------------------------------------------------------------ scenes


def place(canvas: Image.Image, content: Image.Image, quad: np.ndarray) -> Image.Image:
    """Paint ``content`` into ``canvas`` so that its corners land on ``quad`` (pixel centres)."""
    w, h = content.size
    rect = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    coeffs = tuple(geometry.homography(np.asarray(quad) + 0.5, rect).ravel()[:8])
    warped = content.transform(canvas.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    mask = Image.new("L", content.size, 255).transform(
        canvas.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR
    )
    return Image.composite(warped, canvas, mask)


def light(img: Image.Image, low: float = 0.45, seed: int = 0, blur: float = 1.0) -> Image.Image:
    """Uneven light (dim at the bottom left, full at the top right), lens blur and noise."""
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    gain = low + (1 - low) * (xx / w + (1 - yy / h)) / 2
    a = a * (gain[..., None] if a.ndim == 3 else gain)
    a += np.random.default_rng(seed).normal(0, 3.0, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode=img.mode)


PAGE = (420, 594)  # A4 at 2 px/mm
RULE_Y = 70  # a full-width rule under the header, in page pixels
MARGIN = 36


def report_page(picture: bool = False, seed: int = 1) -> Image.Image:
    """A white A4 page: a header, a rule, then lines of 'words' (black bars) in columns."""
    page = Image.new("RGB", PAGE, (250, 248, 242))
    d = ImageDraw.Draw(page)
    rng = np.random.default_rng(seed)
    d.rectangle((MARGIN, 30, 300, 48), fill=(15, 15, 15))
    d.rectangle((MARGIN, RULE_Y, PAGE[0] - MARGIN, RULE_Y + 2), fill=(20, 20, 20))
    for y in range(95, 560, 26):
        for x0 in (MARGIN, 200, 270, 330):
            d.rectangle((x0, y, x0 + int(rng.integers(18, 55)), y + 9), fill=(25, 25, 25))
    if picture:
        ramp = np.tile(np.linspace(30, 230, 300, dtype=np.uint8), (300, 1))
        page.paste(Image.fromarray(ramp, mode="L").convert("RGB"), (60, 150))
    return page


def report_scene(picture: bool = False) -> tuple[Image.Image, np.ndarray]:
    size = (600, 800)
    quad = project_rectangle(210, 297, tilt_x=18, tilt_y=-14, spin=5, distance=400, f=700, size=size)
    quad = geometry.order_quad(quad)
    canvas = Image.new("RGB", size, (92, 84, 76))
    return light(place(canvas, report_page(picture), quad)), quad


# ------------------------------------------------------------------------------------ report


@pytest.fixture(scope="module")
def report() -> tuple[Corrected, np.ndarray, Image.Image]:
    photo, quad = report_scene()
    return correct(photo, "report"), quad, photo


def test_report_finds_the_page_corners(report) -> None:
    result, quad, _ = report
    assert result.found
    assert result.quad is not None
    assert np.abs(np.array(result.quad) - quad).max() < 3.0
    assert "page found" in result.notes[0]


def test_report_output_is_an_a4_rectangle(report) -> None:
    result, _, photo = report
    w, h = result.image.size
    assert h / w == pytest.approx(math.sqrt(2), rel=0.01)
    assert result.image.mode == "L"
    assert result.gray is not None and result.gray.size == (w, h)
    assert max(w, h) <= max(photo.size)


def test_report_light_is_flattened(report) -> None:
    result, quad, photo = report
    g = np.asarray(result.gray, dtype=np.float32)
    h, w = g.shape
    margins = np.concatenate(
        [
            g[int(0.1 * h) : int(0.9 * h), int(0.02 * w) : int(0.06 * w)].ravel(),
            g[int(0.1 * h) : int(0.9 * h), int(0.94 * w) : int(0.98 * w)].ravel(),
        ]
    )
    assert np.percentile(margins, 1) > 225  # paper is white everywhere ...
    # ... while in the photo the same paper spans a wide range of brightness
    inside = geometry.binary_erode(_quad_pixels(quad, photo.size), 25)
    paper = np.asarray(photo.convert("L"), dtype=np.float32)[inside]
    paper = paper[paper > np.percentile(paper, 30)]
    assert np.percentile(paper, 95) - np.percentile(paper, 5) > 35


def test_report_lines_come_out_straight(report) -> None:
    result, _, _ = report
    b = np.asarray(result.bilevel) < 128
    h, w = b.shape
    expect = RULE_Y / PAGE[1] * h
    rows = []
    for x in (int(0.15 * w), int(0.5 * w), int(0.85 * w)):
        band = np.nonzero(b[int(expect - 0.03 * h) : int(expect + 0.03 * h), x - 2 : x + 3].any(axis=1))[0]
        assert band.size, "the rule under the header is missing"
        rows.append(band.mean() + int(expect - 0.03 * h))
    assert max(rows) - min(rows) < 1.5
    assert abs(np.mean(rows) - expect) < 0.01 * h


def test_report_text_page_prefers_two_levels(report) -> None:
    result, _, _ = report
    assert result.two_level
    assert result.image is result.bilevel
    assert set(np.unique(np.asarray(result.bilevel)).tolist()) <= {0, 255}
    ink = np.asarray(result.bilevel) == 0
    assert 0.03 < ink.mean() < 0.3


def test_report_with_a_picture_stays_grey() -> None:
    photo, _ = report_scene(picture=True)
    result = correct(photo, "report")
    assert result.found
    assert not result.two_level
    assert result.image is result.gray
    assert result.bilevel is not None  # still offered
    assert len(np.unique(np.asarray(result.image))) > 100
    assert "grayscale" in result.notes[-1]


def test_no_page_falls_back_to_flattening_the_whole_photo() -> None:
    photo = light(Image.new("RGB", (400, 300), (150, 140, 130)), low=0.4)
    result = correct(photo, "report")
    assert not result.found
    assert result.quad is None
    assert result.image.size == photo.size
    assert "no page found" in result.notes[0]
    g = np.asarray(result.gray, dtype=np.float32)[20:-20, 20:-20]
    assert np.percentile(g, 95) - np.percentile(g, 5) < 40  # the 0.4..1.0 gradient is gone


def test_a_landscape_page_keeps_its_shape() -> None:
    size = (800, 600)
    quad = geometry.order_quad(
        project_rectangle(297, 210, tilt_x=-12, tilt_y=16, spin=-4, distance=420, f=700, size=size)
    )
    page = report_page().transpose(Image.Transpose.ROTATE_90)
    result = correct(light(place(Image.new("RGB", size, (92, 84, 76)), page, quad)), "report")
    assert result.found
    w, h = result.image.size
    assert w / h == pytest.approx(math.sqrt(2), rel=0.01)


def test_a_page_filling_the_frame_is_flattened_as_it_is() -> None:
    photo = light(report_page().resize((400, 566)), low=0.5)
    result = correct(photo, "report")
    assert not result.found
    assert "fills the whole photo" in result.notes[0]
    assert result.image.size == photo.size
    ink = np.asarray(result.bilevel) == 0
    assert 0.03 < ink.mean() < 0.3  # text, not the shadow of the gradient


def test_a_small_page_is_not_trusted() -> None:
    canvas = Image.new("RGB", (600, 600), (90, 85, 80))
    quad = np.array([[250.0, 250.0], [330.0, 255.0], [328.0, 360.0], [252.0, 355.0]])
    result = correct(light(place(canvas, report_page(), quad)), "report")
    assert not result.found
    assert "covers only" in result.notes[0]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_report_accepts_other_image_modes(mode: str) -> None:
    photo, quad = report_scene()
    result = correct(photo.convert(mode), "report")
    assert result.found
    assert np.abs(np.array(result.quad) - quad).max() < 3.0


# ------------------------------------------------------------------------------------ film


def film_content(size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A dark film with grey 'slices' of many densities (no two-level shortcut possible)."""
    film = Image.new("L", size, 8)
    d = ImageDraw.Draw(film)
    w, h = size
    for i in range(6):
        x0, y0 = 20 + (i % 3) * (w - 40) // 3, 20 + (i // 3) * (h - 40) // 2
        for r, level in ((60, 90 + 20 * i), (35, 150 + 15 * i), (12, 235)):
            d.ellipse((x0 + 70 - r, y0 + 80 - r, x0 + 70 + r, y0 + 80 + r), fill=level)
    return film.convert("RGB")


def test_film_is_cropped_and_keeps_its_tones() -> None:
    size = (700, 560)
    quad = geometry.order_quad(
        project_rectangle(480, 360, tilt_x=-10, tilt_y=15, spin=-3, distance=700, f=800, size=size)
    )
    photo = light(place(Image.new("RGB", size, (75, 68, 58)), film_content(), quad), low=0.6)
    result = correct(photo, "film")
    assert result.found
    assert np.abs(np.array(result.quad) - quad).max() < 3.0
    assert result.image.mode == "L"
    w, h = result.image.size
    assert w / h == pytest.approx(480 / 360, rel=0.02)
    a = np.asarray(result.image)
    assert a.min() <= 10 and a.max() >= 245  # full range
    assert len(np.unique(a)) > 120  # not thresholded
    assert np.mean((a > 60) & (a < 200)) > 0.1  # mid densities survive


def test_film_on_a_light_box_is_cut_out_of_the_box() -> None:
    size = (700, 560)
    box = Image.new("RGB", (560, 440), (242, 242, 236))
    box.paste(film_content(), (40, 40))
    box_quad = geometry.order_quad(
        project_rectangle(560, 440, tilt_x=8, tilt_y=-12, spin=2, distance=820, f=800, size=size)
    )
    to_photo = geometry.homography(np.array([[0.0, 0], [560, 0], [560, 440], [0, 440]]), box_quad + 0.5)
    film_rect = np.array([[40.0, 40], [520, 40], [520, 400], [40, 400]])
    p = np.column_stack([film_rect, np.ones(4)]) @ to_photo.T
    film_quad = p[:, :2] / p[:, 2:] - 0.5
    photo = light(place(Image.new("RGB", size, (70, 66, 60)), box, box_quad), low=0.7)
    result = correct(photo, "film")
    assert result.found
    assert any("light box" in n for n in result.notes)
    assert np.abs(np.array(result.quad) - film_quad).max() < 3.0


def test_no_film_keeps_the_photo() -> None:
    photo = Image.new("RGB", (300, 200), (75, 68, 58))
    result = correct(photo, "film")
    assert not result.found
    assert result.image.size == photo.size
    assert result.image.mode == "L"


# ------------------------------------------------------------------------------------ ECG


RED_GRID = ((250, 230, 228), (236, 150, 150), (248, 216, 214))  # paper, 5 mm lines, 1 mm lines


def ecg_strip(
    size: tuple[int, int] = (600, 250), colours: tuple[tuple[int, int, int], ...] = RED_GRID
) -> Image.Image:
    """Pink paper, a faint 1 mm and a strong 5 mm red grid, one black trace with QRS spikes."""
    w, h = size
    paper, strong, faint = colours
    strip = Image.new("RGB", size, paper)
    d = ImageDraw.Draw(strip)
    for x in range(0, w, 10):
        d.line((x, 0, x, h), fill=strong if x % 50 == 0 else faint, width=2 if x % 50 == 0 else 1)
    for y in range(0, h, 10):
        d.line((0, y, w, y), fill=strong if y % 50 == 0 else faint, width=2 if y % 50 == 0 else 1)
    pts = []
    for x in range(0, w, 2):
        beat = x % 120
        y = 140 - (70 if beat == 40 else -25 if beat == 44 else 12 * math.exp(-(((beat - 80) / 8) ** 2)))
        pts.append((x, y))
    d.line(pts, fill=(20, 20, 20), width=2)
    return strip


def test_ecg_is_straightened_with_grid_and_trace_visible() -> None:
    size = (700, 420)
    quad = geometry.order_quad(
        project_rectangle(600, 250, tilt_x=12, tilt_y=10, spin=-2, distance=820, f=900, size=size)
    )
    photo = light(place(Image.new("RGB", size, (60, 55, 50)), ecg_strip(), quad), low=0.5)
    result = correct(photo, "ecg")
    assert result.found
    assert np.abs(np.array(result.quad) - quad).max() < 3.0
    assert result.image.mode == "L"
    a = np.asarray(result.image)
    assert np.mean(a > 235) > 0.5  # the paper is even and white
    assert np.mean((a > 120) & (a < 230)) > 0.04  # the 5 mm grid is still there
    assert np.mean(a < 80) > 0.005  # and the trace is the darkest thing on it
    assert any("G band" in n for n in result.notes)  # a red grid is darkest in green
    # the detail version keeps the faint 1 mm grid that the first view drops
    detail = np.asarray(result.gray)
    assert detail.shape == a.shape
    assert np.mean((detail > 120) & (detail < 245)) > np.mean((a > 120) & (a < 245)) + 0.05


@pytest.mark.parametrize(
    ("colours", "band"),
    [
        (RED_GRID, "G"),
        (((236, 248, 240), (160, 225, 200), (222, 244, 232)), "R"),  # green paper and grid
        (((238, 240, 250), (170, 190, 240), (224, 230, 248)), "R"),  # blue
    ],
)
def test_the_ecg_grid_band_chosen_small_is_the_one_chosen_at_full_size(colours, band) -> None:
    size = (1400, 840)
    quad = geometry.order_quad(
        project_rectangle(600, 250, tilt_x=12, tilt_y=10, spin=-2, distance=820, f=1800, size=size)
    )
    strip = ecg_strip((1200, 500), colours)
    photo = light(place(Image.new("RGB", size, (60, 55, 50)), strip, quad), low=0.5)
    result = correct(photo, "ecg")
    assert result.found and any(f"{band} band" in n for n in result.notes)
    # the full-size measure: every band warped and flattened, the darkest mean wins
    lim = docscan.DEFAULT_LIMITS
    out, _ = docscan._output_size(np.array(result.quad), photo.size, (), lim)
    page = docscan._warp(photo, np.array(result.quad), out, lim.edge_trim)
    means = [float(np.mean(np.minimum(docscan._ratio(b, lim), 1.0))) for b in page.split()]
    assert "RGB"[int(np.argmin(means))] == band


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_warp_cut_in_bands_is_the_very_same_picture(mode: str) -> None:
    rng = np.random.default_rng(3)
    shape = (700, 600) if mode == "L" else (700, 600, 3)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    quad = np.array([[40.5, 30.0], [560.0, 62.2], [530.0, 690.0], [20.0, 640.7]])
    one = docscan._warp(img, quad, (420, 597), 0.006, threads=1)
    for threads in (2, 3):
        banded = docscan._warp(img, quad, (420, 597), 0.006, threads=threads)
        assert banded.mode == one.mode and banded.size == one.size
        assert np.array_equal(np.asarray(banded), np.asarray(one))


# ------------------------------------------------------------------------------------ photo, errors


def test_photo_mode_returns_the_image_unchanged() -> None:
    photo = Image.new("RGB", (64, 48), (200, 120, 90))
    result = correct(photo, "photo")
    assert result.image is photo
    assert not result.found and result.quad is None


def test_unknown_mode_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as e:
        correct(Image.new("RGB", (10, 10)), "xray")
    assert e.value.data["mode"] == "xray"
    assert set(docscan.MODES) == {"report", "film", "ecg", "photo"}


def test_oversized_image_is_refused() -> None:
    with pytest.raises(LimitExceeded) as e:
        correct(Image.new("RGB", (20, 20)), "report", ScanLimits(max_input_pixels=100))
    assert e.value.data["limit"] == 100


def _quad_pixels(quad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    m = np.ones((size[1], size[0]), dtype=bool)
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        m &= ((b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0])) >= 0
    return m

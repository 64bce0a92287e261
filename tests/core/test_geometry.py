"""Pure geometry for document straightening: masks, hulls, quads, homographies, aspect ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medcomm.core import geometry as g


def quad_mask(quad: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a clockwise (on screen) convex quad: an exact reference."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    m = np.ones(shape, dtype=bool)
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        d = b - a
        m &= (d[0] * (yy - a[1]) - d[1] * (xx - a[0])) >= 0
    return m


def project_rectangle(
    width: float, height: float, tilt_x: float, tilt_y: float, spin: float, distance: float, f: float, size
) -> np.ndarray:
    """Corners (TL, TR, BR, BL) of a width x height rectangle seen by a pinhole camera.

    The rectangle is centred, rotated about x (tilt_x), y (tilt_y) and the optical axis
    (spin), in degrees, placed ``distance`` in front of a camera of focal length ``f`` pixels
    whose principal point is the centre of an image of ``size`` (w, h).
    """
    rx, ry, rz = (math.radians(a) for a in (tilt_x, tilt_y, spin))
    cx, sx, cy, sy, cz, sz = (
        math.cos(rx),
        math.sin(rx),
        math.cos(ry),
        math.sin(ry),
        math.cos(rz),
        math.sin(rz),
    )
    rot = (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )
    corners = np.array(
        [
            [-width / 2, -height / 2, 0],
            [width / 2, -height / 2, 0],
            [width / 2, height / 2, 0],
            [-width / 2, height / 2, 0],
        ]
    )
    cam = corners @ rot.T + np.array([0, 0, distance])
    return np.column_stack([f * cam[:, 0] / cam[:, 2] + size[0] / 2, f * cam[:, 1] / cam[:, 2] + size[1] / 2])


def test_otsu_splits_two_populations() -> None:
    values = np.r_[np.full(1000, 50), np.full(300, 200), np.random.default_rng(0).integers(40, 60, 200)]
    t = g.otsu_threshold(values)
    assert 59 < t < 200  # above every low value, below every high one
    assert g.otsu_threshold(np.full(10, 7)) == pytest.approx(7)
    assert g.otsu_threshold(np.array([])) == 0.0


def test_label_components_counts_4_connected_regions() -> None:
    m = np.zeros((10, 12), dtype=bool)
    m[1:3, 1:3] = True  # square of 4
    m[5:9, 2] = True  # U shape of 4 + 2 + 4 = 10, joined along the bottom row
    m[8, 2:6] = True
    m[5:9, 5] = True
    m[0, 10] = True  # two pixels touching only diagonally stay apart
    m[1, 11] = True
    labels, sizes = g.label_components(m)
    assert labels.max() == 4
    assert sorted(sizes[1:].tolist()) == [1, 1, 4, 10]
    assert len(np.unique(labels[5:9, [2, 5]])) == 1
    assert g.largest_component(m).sum() == 10
    assert not g.largest_component(np.zeros((3, 3), bool)).any()


def test_fill_holes_fills_only_enclosed_regions() -> None:
    m = np.zeros((9, 9), dtype=bool)
    m[1:8, 1:8] = True
    m[3:6, 3:6] = False  # a hole (text on a page)
    m[0:5, 7] = False  # a notch open to the border stays open
    m[4, 7:] = False
    filled = g.fill_holes(m)
    assert filled[3:6, 3:6].all()
    assert not filled[0:5, 7].any()


def test_erode_and_dilate_by_a_square() -> None:
    m = np.zeros((20, 20), dtype=bool)
    m[5:15, 5:15] = True
    assert g.binary_erode(m, 2).sum() == 6 * 6
    assert g.binary_dilate(m, 2).sum() == 14 * 14
    assert g.binary_erode(np.ones((4, 4), bool), 1).all()  # the border counts as inside


def test_grey_close_erases_thin_dark_lines_and_keeps_the_gradient() -> None:
    ramp = np.tile(np.linspace(100, 220, 80), (60, 1))
    lines = ramp.copy()
    lines[10::12, :] = 20  # 1-px dark lines, like print
    lines[:, 30:32] = 20
    closed = g.grey_close(lines, 7)
    assert np.abs(closed - ramp).max() < 12  # a closing of a ramp is exact up to the window


def test_convex_hull_and_polygon_area() -> None:
    pts = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [5, 5], [3, 7], [10, 5]])
    hull = g.convex_hull(pts)
    assert len(hull) == 4
    assert g.polygon_area(hull) == pytest.approx(100)


def test_order_quad_and_is_convex() -> None:
    q = np.array([[90, 95], [10, 12], [12, 88], [95, 8]], dtype=float)
    assert g.order_quad(q).tolist() == [[10, 12], [95, 8], [90, 95], [12, 88]]
    assert g.is_convex(g.order_quad(q))
    assert not g.is_convex(np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=float))  # bow tie


def test_mask_to_quad_is_sub_pixel_and_ignores_holes() -> None:
    quad = np.array([[60.3, 40.7], [330.2, 62.1], [310.8, 420.5], [40.1, 400.2]])
    m = quad_mask(quad, (480, 400))
    m[100:200:7, 100:300] = False  # text lines
    found = g.mask_to_quad(g.fill_holes(m))
    assert found is not None
    assert np.abs(found - quad).max() < 0.5
    assert g.mask_to_quad(np.zeros((20, 20), bool)) is None


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-40, 40), min_size=8, max_size=8),
)
def test_mask_to_quad_on_random_quads(jitter: list[float]) -> None:
    base = np.array([[70.0, 60.0], [250.0, 60.0], [250.0, 250.0], [70.0, 250.0]])
    quad = base + np.array(jitter).reshape(4, 2)
    found = g.mask_to_quad(quad_mask(quad, (300, 320)))
    assert found is not None
    # within a pixel of the drawn corners (a rasterised edge may put one up to a hair beyond:
    # 1.003 px was seen on a square with sub-micro-pixel jitter)
    assert np.abs(found - quad).max() < 1.05


def test_homography_maps_the_four_points() -> None:
    src = np.array([[0, 0], [100, 0], [100, 50], [0, 50]], dtype=float)
    dst = np.array([[12, 7], [90, 15], [80, 70], [5, 60]], dtype=float)
    h = g.homography(src, dst)
    p = np.column_stack([src, np.ones(4)]) @ h.T
    assert np.allclose(p[:, :2] / p[:, 2:], dst)


def test_perspective_coeffs_sample_the_quad_corners_in_pillow() -> None:
    # two coordinate images: the value of each pixel is its own x (or y)
    w, h = 200, 160
    xs = Image.fromarray(np.tile(np.arange(w, dtype=np.float32), (h, 1)), mode="F")
    ys = Image.fromarray(np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w)), mode="F")
    quad = np.array([[20.0, 15.0], [170.0, 30.0], [160.0, 140.0], [30.0, 120.0]])
    ow, oh = 60, 40
    coeffs = g.perspective_coeffs(quad, ow, oh)
    ox = np.asarray(xs.transform((ow, oh), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR))
    oy = np.asarray(ys.transform((ow, oh), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR))
    got = np.array(
        [[ox[0, 0], oy[0, 0]], [ox[0, -1], oy[0, -1]], [ox[-1, -1], oy[-1, -1]], [ox[-1, 0], oy[-1, 0]]]
    )
    assert np.abs(got - quad).max() < 0.05


def test_rectangle_aspect_undoes_perspective() -> None:
    size = (3000, 4000)
    quad = project_rectangle(210, 297, tilt_x=25, tilt_y=-15, spin=4, distance=420, f=3200, size=size)
    sides = np.hypot(*(np.roll(quad, -1, axis=0) - quad).T)
    naive = (sides[1] + sides[3]) / (sides[0] + sides[2])
    assert abs(naive / math.sqrt(2) - 1) > 0.05  # the side lengths alone get it wrong
    assert g.rectangle_aspect(g.order_quad(quad), size) == pytest.approx(math.sqrt(2), rel=0.01)


def test_rectangle_aspect_of_a_frontal_view_is_the_side_ratio() -> None:
    quad = np.array([[100.0, 100.0], [300.0, 100.0], [300.0, 400.0], [100.0, 400.0]])
    assert g.rectangle_aspect(quad, (400, 500)) == pytest.approx(1.5)

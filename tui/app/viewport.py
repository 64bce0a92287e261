"""What the image viewer shows: a rectangle of the picture at a zoom, on the cells it has,
and the picture of it made from what is on this device (pure geometry, plus Pillow).

Coordinates are the pyramid's (the corrected original's) pixels, "native". A half-block
cell holds 1x2 screen pixels, about square on a terminal, so a view of ``cols x rows``
cells has ``cols x 2*rows`` screen pixels. Zoom 0 fits the whole picture; each step halves
the native pixels per screen pixel (``scale``), down to ``min_scale`` (a native pixel
drawn 4 screen pixels wide: enough to count them, no more). Panning moves a quarter of
what is visible; the view never leaves the picture.

Which pixels: the first view first, always (it is on the device once the viewer opened);
tiles only where they are sharper than it. A report's first view is ~1000 px wide, so on a
terminal the first view serves every zoom until its own pixels are coarser than the
screen's, and only then is a byte of detail fetched: the level that matches the screen
(``Pyramid.tiles_for_region``), the visible tiles only, the one under the centre first.
Tiles that are not there yet leave the first view showing through, never grey.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from medcomm.core.tiles import Pyramid, Region, TileId

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class ViewLimits:
    min_scale: float = 0.25  # native pixels per screen pixel at the deepest zoom
    pan_fraction: float = 0.25  # of the visible width or height, per key press


VIEW = ViewLimits()


@dataclass(frozen=True)
class Viewport:
    """A view of a ``width x height`` picture on ``cols x rows`` cells."""

    width: int
    height: int
    cols: int
    rows: int
    zoom: int = 0
    cx: float = -1.0  # centre in native pixels; negative: the picture's centre
    cy: float = -1.0
    limits: ViewLimits = VIEW

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.cols, self.rows) < 1:
            raise ValueError("a viewport needs a picture and at least one cell")
        zoom = max(0, min(self.zoom, self.max_zoom))
        object.__setattr__(self, "zoom", zoom)
        w, h = self.visible
        cx = self.width / 2 if self.cx < 0 else self.cx
        cy = self.height / 2 if self.cy < 0 else self.cy
        object.__setattr__(self, "cx", _clamp(cx, w / 2, self.width - w / 2))
        object.__setattr__(self, "cy", _clamp(cy, h / 2, self.height - h / 2))

    @property
    def px(self) -> tuple[int, int]:
        """Screen pixels: a cell is one wide and two tall."""
        return self.cols, self.rows * 2

    @property
    def fit_scale(self) -> float:
        """Native pixels per screen pixel when the whole picture fits (never below 1:1
        for a picture smaller than the screen)."""
        vw, vh = self.px
        return max(self.width / vw, self.height / vh, 1.0)

    @property
    def scale(self) -> float:
        return self.fit_scale / (1 << self.zoom)

    @property
    def max_zoom(self) -> int:
        ratio = self.fit_scale / self.limits.min_scale
        return max(0, int(math.floor(math.log2(ratio)))) if ratio > 1 else 0

    @property
    def visible(self) -> tuple[float, float]:
        """Native width and height on screen."""
        vw, vh = self.px
        return min(self.width, vw * self.scale), min(self.height, vh * self.scale)

    def box(self) -> tuple[float, float, float, float]:
        """The visible rectangle, native pixels (x0, y0, x1, y1), fractional."""
        w, h = self.visible
        return self.cx - w / 2, self.cy - h / 2, self.cx + w / 2, self.cy + h / 2

    def region(self) -> Region:
        """The visible rectangle widened to whole pixels (what tiles are chosen for)."""
        x0, y0, x1, y1 = self.box()
        left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
        right, bottom = min(self.width, math.ceil(x1)), min(self.height, math.ceil(y1))
        return Region(left, top, max(1, right - left), max(1, bottom - top))

    def out_size(self) -> tuple[int, int]:
        """Screen pixels the visible rectangle is drawn on (at most the screen's)."""
        w, h = self.visible
        vw, vh = self.px
        return max(1, min(vw, round(w / self.scale))), max(1, min(vh, round(h / self.scale)))

    def zoomed(self, steps: int) -> Viewport:
        return replace(self, zoom=self.zoom + steps)

    def fitted(self) -> Viewport:
        return replace(self, zoom=0, cx=-1.0, cy=-1.0)

    def panned(self, dx: int, dy: int) -> Viewport:
        """Move by ``dx``/``dy`` steps of ``pan_fraction`` of the visible size."""
        w, h = self.visible
        f = self.limits.pan_fraction
        return replace(self, cx=self.cx + dx * f * w, cy=self.cy + dy * f * h)

    def resized(self, cols: int, rows: int) -> Viewport:
        return replace(self, cols=cols, rows=rows)

    def label(self) -> str:
        """ "fit" or "zoom 4×"."""
        return "fit" if self.zoom == 0 else f"zoom {1 << self.zoom}×"


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if hi < lo else min(max(v, lo), hi)


def first_scale(pyramid: Pyramid, first_size: tuple[int, int]) -> float:
    """Native pixels per pixel of the first view (it covers the whole picture)."""
    return max(pyramid.width / first_size[0], pyramid.height / first_size[1])


def useful(tile: TileId, pyramid: Pyramid, first_size: tuple[int, int]) -> bool:
    """A tile is worth drawing (and fetching) only where it is sharper than the first view."""
    return (1 << tile.level) < first_scale(pyramid, first_size)


def plan(vp: Viewport, pyramid: Pyramid | None, first_size: tuple[int, int]) -> list[TileId]:
    """The tiles that would show this view sharper than the first view, centre first; none
    when the first view is already as sharp as the screen (or there is no pyramid)."""
    if pyramid is None or first_scale(pyramid, first_size) <= vp.scale:
        return []  # the screen's pixels are no finer than the first view's: it is enough
    ids = pyramid.tiles_for_region(vp.region(), vp.out_size())
    return ids if ids and useful(ids[0], pyramid, first_size) else []


def sharpest(
    vp: Viewport, pyramid: Pyramid | None, tiles: Mapping[TileId, object], first: tuple[int, int]
) -> str:
    """What the view is drawn from, in words: "first view", "tiles level 2", "native tiles"."""
    wanted = plan(vp, pyramid, first)
    if not wanted or not any(t in tiles for t in wanted):
        return "first view"
    level = wanted[0].level
    return "native tiles" if level == 0 else f"tiles level {level}"


def compose(
    vp: Viewport,
    first: Image.Image,
    tiles: Mapping[TileId, Image.Image],
    pyramid: Pyramid | None,
    full: Image.Image | None = None,
) -> Image.Image:
    """The visible rectangle at ``out_size``: from ``full`` (a native picture, e.g. a slice
    windowed here from its original) when given, else the first view with every sharper
    tile on top, coarse to fine. Pixels are averaged down and repeated up (``BOX``): a
    zoomed-in picture shows its real pixels, never invented smooth ones."""
    from PIL import Image

    x0, y0, x1, y1 = vp.box()
    out = vp.out_size()
    box = Image.Resampling.BOX
    if full is not None:
        return full.resize(out, box, box=(x0, y0, x1, y1))
    mode = "RGB" if first.mode not in ("L", "1", "I", "I;16", "F") else "L"
    sx, sy = first.width / vp.width, first.height / vp.height
    canvas = first.convert(mode).resize(out, box, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    if pyramid is None or not tiles:
        return canvas
    kx, ky = out[0] / (x1 - x0), out[1] / (y1 - y0)  # screen pixels per native pixel
    for tid in sorted(tiles, key=lambda t: -t.level):  # finer tiles land last, on top
        if not useful(tid, pyramid, first.size):
            continue
        b = pyramid.box(tid)
        ix0, iy0, ix1, iy1 = max(b.x0, x0), max(b.y0, y0), min(b.x1, x1), min(b.y1, y1)
        ox0, oy0 = round((ix0 - x0) * kx), round((iy0 - y0) * ky)
        ox1, oy1 = round((ix1 - x0) * kx), round((iy1 - y0) * ky)
        if ox1 <= ox0 or oy1 <= oy0:
            continue
        tx, ty = b.out_w / (b.x1 - b.x0), b.out_h / (b.y1 - b.y0)  # tile pixels per native pixel
        part = (
            tiles[tid]
            .convert(mode)
            .resize(
                (ox1 - ox0, oy1 - oy0),
                box,
                box=((ix0 - b.x0) * tx, (iy0 - b.y0) * ty, (ix1 - b.x0) * tx, (iy1 - b.y0) * ty),
            )
        )
        canvas.paste(part, (ox0, oy0))
    return canvas

"""Geometry of the detail-on-demand tile pyramid (sans-I/O: no Pillow, no files).

A shared image first goes out as one small lossy first view. Detail comes later, by region:
the receiver says which part of the (corrected) original it is looking at and how many
screen pixels it has for it, and gets back 512-pixel tiles of the pyramid level whose
resolution matches those pixels, the tiles under the centre of the view first. On a
24 kbit/s link a 512-pixel tile of a CT slice is seconds of transfer, so sending the one the
doctor is looking at before the corners is the whole point of the ordering.

Levels. Level 0 is the native image; each level halves both sides, rounding up, so level
``L`` is ``ceil(w / 2**L) x ceil(h / 2**L)``. The top level is the first that fits in one
tile. A tile ``(L, col, row)`` covers level pixels ``[col*512, min((col+1)*512, level_w))``
(and the same for rows), which is native pixels ``[col*512*2**L, ...)`` clipped to the image.
Every tile is exactly 512x512 except those on the right and bottom edges.

Choosing a level. ``scale`` is native pixels per viewer pixel over the asked region; the
level picked is the coarsest whose pixels are no more than ``coarsen_slack`` coarser than
the viewer's (``2**L <= scale * slack``). Pure "never coarser than the screen" (slack 1.0)
would fetch level 0 for a scale of 1.9, i.e. 3.6 times the pixels the screen can show; a
little under-sampling costs less legibility than it saves bytes.

Wire form. A :class:`TileId` is the string ``"L/col/row"`` (e.g. ``"2/3/1"``, at most a
dozen bytes) or the tuple ``(L, col, row)``; both parse back strictly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from medcomm.errors import LimitExceeded, UsageError

TILE = 512  # pixels per tile side: big enough that per-tile headers are noise, small enough to arrive soon


@dataclass(frozen=True)
class TileLimits:
    """Bounds on pyramids and on what one request may ask for."""

    tile: int = TILE
    max_side: int = 65536  # native pixels per side; the loader's pixel budget binds far earlier
    max_levels: int = 16  # log2(65536 / 512) + 1 = 8 would do; 16 bounds a hostile level number
    max_tiles_per_request: int = 64  # 64 tiles of 512 px cover a 4096x4096 view: more is a bug or abuse
    max_view_side: int = 16384  # viewer pixels per side (an 8K screen is 7680)
    coarsen_slack: float = 1.25  # accept tiles up to 25% coarser than the viewer's pixels (see module doc)


TILES = TileLimits()

_TILE_RE = re.compile(r"^(\d{1,2})/(\d{1,5})/(\d{1,5})$")
_REGION_RE = re.compile(r"^\s*(\d{1,6})\s*,\s*(\d{1,6})\s*,\s*(\d{1,6})\s*,\s*(\d{1,6})\s*$")


class TileId(NamedTuple):
    """One tile: pyramid level (0 = native), column and row at that level."""

    level: int
    col: int
    row: int

    def wire(self) -> str:
        """The short string form sent on the wire: ``"L/col/row"``."""
        return f"{self.level}/{self.col}/{self.row}"

    @classmethod
    def parse(cls, value: str | tuple[int, int, int] | list[int]) -> TileId:
        """Parse the wire string or a 3-tuple/list; ``UsageError`` on anything else.

        This only checks shape; :meth:`Pyramid.check` checks the id against an image.
        """
        if isinstance(value, str):
            m = _TILE_RE.match(value)
            if m is None:
                raise UsageError(f"not a tile id (want level/col/row): {value[:40]!r}", value=value[:40])
            return cls(int(m[1]), int(m[2]), int(m[3]))
        if (
            isinstance(value, tuple | list)
            and len(value) == 3
            and all(type(v) is int and v >= 0 for v in value)
        ):
            return cls(value[0], value[1], value[2])
        raise UsageError("not a tile id (want three non-negative integers)", value=repr(value)[:40])


class Region(NamedTuple):
    """A rectangle in native pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def wire(self) -> str:
        """The ``X,Y,W,H`` form used by ``--region`` and on the wire."""
        return f"{self.x},{self.y},{self.w},{self.h}"


def parse_region(text: str) -> Region:
    """Parse ``--region X,Y,W,H`` (native pixels, non-negative integers, W and H > 0).

    Syntax only: :meth:`Pyramid.clip` checks it against an image.
    """
    m = _REGION_RE.match(text)
    if m is None:
        raise UsageError(
            f"--region wants X,Y,W,H in pixels of the original, e.g. 0,0,1024,768; got {text[:40]!r}",
            value=text[:40],
        )
    x, y, w, h = (int(g) for g in m.groups())
    if w == 0 or h == 0:
        raise UsageError(f"--region {text.strip()}: width and height must be at least 1", value=text[:40])
    return Region(x, y, w, h)


class Box(NamedTuple):
    """A tile's footprint: native-pixel box ``[x0, x1) x [y0, y1)`` and its size in tile pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    out_w: int
    out_h: int


@dataclass(frozen=True)
class Pyramid:
    """The tile pyramid of one ``width x height`` image. Cheap: nothing is stored per tile."""

    width: int
    height: int
    limits: TileLimits = TILES

    def __post_init__(self) -> None:
        lim = self.limits
        for name, side in (("width", self.width), ("height", self.height)):
            if type(side) is not int or side < 1:
                raise UsageError(f"image {name} must be a positive integer, got {side!r}")
            if side > lim.max_side:
                raise LimitExceeded(
                    f"image {name} {side} px is over the {lim.max_side} px limit",
                    limit=lim.max_side,
                    value=side,
                )

    @property
    def levels(self) -> int:
        """Number of levels: level ``levels - 1`` is the first that fits in one tile."""
        side = max(self.width, self.height)
        n = 1
        while side > self.limits.tile and n < self.limits.max_levels:
            side = -(-side // 2)
            n += 1
        return n

    def level_size(self, level: int) -> tuple[int, int]:
        """Pixel size of a level: each level halves the one below, rounding up."""
        self._check_level(level)
        s = 1 << level
        return -(-self.width // s), -(-self.height // s)

    def grid(self, level: int) -> tuple[int, int]:
        """Columns and rows of tiles at a level."""
        w, h = self.level_size(level)
        t = self.limits.tile
        return -(-w // t), -(-h // t)

    def tile_count(self, level: int | None = None) -> int:
        """Tiles at one level, or in the whole pyramid when ``level`` is None."""
        if level is not None:
            c, r = self.grid(level)
            return c * r
        return sum(self.tile_count(lv) for lv in range(self.levels))

    def check(self, tile: TileId) -> TileId:
        """Return ``tile`` if it exists in this pyramid; ``UsageError`` if not (a peer's bad request)."""
        self._check_level(tile.level)
        cols, rows = self.grid(tile.level)
        if not (0 <= tile.col < cols and 0 <= tile.row < rows):
            raise UsageError(
                f"tile {tile.wire()} is outside the {cols}x{rows} grid of level {tile.level}",
                tile=tile.wire(),
            )
        return tile

    def box(self, tile: TileId) -> Box:
        """Native-pixel box a tile covers and the tile's own pixel size.

        The adapter crops ``(x0, y0, x1, y1)`` from the original and resizes it to
        ``(out_w, out_h)``; at level 0 that is a plain crop.
        """
        self.check(tile)
        t = self.limits.tile
        s = 1 << tile.level
        lw, lh = self.level_size(tile.level)
        x0, y0 = tile.col * t * s, tile.row * t * s
        x1, y1 = min(self.width, x0 + t * s), min(self.height, y0 + t * s)
        out_w = min(t, lw - tile.col * t)
        out_h = min(t, lh - tile.row * t)
        return Box(x0, y0, x1, y1, out_w, out_h)

    def clip(self, region: Region) -> Region:
        """Clip a region to the image; ``UsageError`` if nothing of it is inside."""
        x0, y0 = max(0, region.x), max(0, region.y)
        x1, y1 = min(self.width, region.x + region.w), min(self.height, region.y + region.h)
        if x1 <= x0 or y1 <= y0:
            raise UsageError(
                f"region {region.wire()} lies outside the {self.width}x{self.height} image",
                region=region.wire(),
            )
        return Region(x0, y0, x1 - x0, y1 - y0)

    def level_for(self, region: Region, view_px: tuple[int, int]) -> int:
        """The coarsest level whose pixels are at most ``coarsen_slack`` coarser than the viewer's."""
        vw, vh = _check_view(view_px, self.limits)
        scale = max(region.w / vw, region.h / vh)  # native px per viewer px
        target = scale * self.limits.coarsen_slack
        level = 0 if target < 2 else int(math.floor(math.log2(target)))
        return max(0, min(level, self.levels - 1))

    def tiles_for_region(self, region: Region, view_px: tuple[int, int]) -> list[TileId]:
        """Tiles covering ``region`` at the level matching ``view_px``, centre of the view first.

        Order: distance from the tile's centre to the region's centre (native pixels), ties
        broken by row then column so the order is deterministic. ``LimitExceeded`` when the
        request would need more than ``max_tiles_per_request`` tiles (a view far larger than
        any screen).
        """
        r = self.clip(region)
        level = self.level_for(r, view_px)
        span = self.limits.tile << level  # native pixels per tile side at this level
        c0, c1 = r.x // span, (r.x + r.w - 1) // span
        r0, r1 = r.y // span, (r.y + r.h - 1) // span
        n = (c1 - c0 + 1) * (r1 - r0 + 1)
        if n > self.limits.max_tiles_per_request:
            raise LimitExceeded(
                f"region {r.wire()} at level {level} needs {n} tiles, over the "
                f"{self.limits.max_tiles_per_request}-tile limit",
                limit=self.limits.max_tiles_per_request,
                value=n,
            )
        cx, cy = r.x + r.w / 2, r.y + r.h / 2
        ids: list[tuple[float, int, int]] = []
        for row in range(r0, r1 + 1):
            for col in range(c0, c1 + 1):
                b = self.box(TileId(level, col, row))
                d = ((b.x0 + b.x1) / 2 - cx) ** 2 + ((b.y0 + b.y1) / 2 - cy) ** 2
                ids.append((d, row, col))
        ids.sort()
        return [TileId(level, col, row) for _, row, col in ids]

    def _check_level(self, level: int) -> None:
        if type(level) is not int or not 0 <= level < self.levels:
            raise UsageError(
                f"pyramid level {level!r} does not exist (this image has levels 0-{self.levels - 1})",
                level=level if type(level) is int else None,
            )


def _check_view(view_px: tuple[int, int], lim: TileLimits) -> tuple[int, int]:
    if len(view_px) != 2 or not all(type(v) is int for v in view_px):
        raise UsageError("view size must be two integers (width, height) in pixels")
    vw, vh = view_px
    if not (1 <= vw <= lim.max_view_side and 1 <= vh <= lim.max_view_side):
        raise UsageError(
            f"view size {vw}x{vh} must be between 1 and {lim.max_view_side} pixels per side",
            view=f"{vw}x{vh}",
        )
    return vw, vh


def tiles_for_region(
    width: int,
    height: int,
    region: Region | tuple[int, int, int, int],
    view_px: tuple[int, int],
    limits: TileLimits = TILES,
) -> list[TileId]:
    """Tiles of a ``width x height`` image to send for ``region`` shown on ``view_px`` pixels.

    A convenience over :meth:`Pyramid.tiles_for_region`; see it for the level and order rules.
    """
    return Pyramid(width, height, limits).tiles_for_region(Region(*region), view_px)

"""The tile pyramid's geometry: levels, boxes, level choice, centre-first order, parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcomm.core.tiles import TILES, Pyramid, Region, TileId, TileLimits, parse_region, tiles_for_region
from medcomm.errors import LimitExceeded, UsageError


@pytest.mark.parametrize(
    ("w", "h", "levels"),
    [(1, 1, 1), (512, 512, 1), (513, 1, 2), (1024, 300, 2), (1025, 300, 3), (3000, 4000, 4), (65536, 1, 8)],
)
def test_levels_halve_until_one_tile(w, h, levels):
    p = Pyramid(w, h)
    assert p.levels == levels
    top_w, top_h = p.level_size(levels - 1)
    assert max(top_w, top_h) <= TILES.tile
    assert p.grid(levels - 1) == (1, 1)


def test_level_sizes_round_up():
    p = Pyramid(3000, 4000)
    assert [p.level_size(lv) for lv in range(p.levels)] == [
        (3000, 4000),
        (1500, 2000),
        (750, 1000),
        (375, 500),
    ]
    assert [p.grid(lv) for lv in range(p.levels)] == [(6, 8), (3, 4), (2, 2), (1, 1)]
    assert p.tile_count() == 48 + 12 + 4 + 1
    odd = Pyramid(1025, 3)
    assert odd.level_size(1) == (513, 2)
    assert odd.level_size(2) == (257, 1)


def test_box_of_inner_edge_and_upper_level_tiles():
    p = Pyramid(3000, 4000)
    assert p.box(TileId(0, 0, 0)) == (0, 0, 512, 512, 512, 512)
    assert p.box(TileId(0, 5, 7)) == (2560, 3584, 3000, 4000, 440, 416)
    # level 1: 1024 native px per tile, halved to 512
    assert p.box(TileId(1, 1, 1)) == (1024, 1024, 2048, 2048, 512, 512)
    # level 1 edge column: native 2048..3000 (952 px) -> 1500 - 1024 = 476 tile px
    assert p.box(TileId(1, 2, 0)) == (2048, 0, 3000, 1024, 476, 512)
    assert p.box(TileId(3, 0, 0)) == (0, 0, 3000, 4000, 375, 500)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_tiles_of_each_level_partition_the_image(w, h):
    p = Pyramid(w, h)
    for lv in range(p.levels):
        cols, rows = p.grid(lv)
        lw, lh = p.level_size(lv)
        native_area = out_area = 0
        for r in range(rows):
            for c in range(cols):
                b = p.box(TileId(lv, c, r))
                assert 0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h
                assert 1 <= b.out_w <= TILES.tile and 1 <= b.out_h <= TILES.tile
                native_area += (b.x1 - b.x0) * (b.y1 - b.y0)
                out_area += b.out_w * b.out_h
        assert native_area == w * h
        assert out_area == lw * lh


def test_check_rejects_tiles_outside_the_grid():
    p = Pyramid(1000, 600)
    for bad in (TileId(0, 2, 0), TileId(0, 0, 2), TileId(2, 0, 0), TileId(-1, 0, 0)):
        with pytest.raises(UsageError):
            p.check(bad)
    assert p.check(TileId(1, 0, 0)) == TileId(1, 0, 0)


def test_level_choice_matches_viewer_pixels():
    p = Pyramid(3000, 4000)
    whole = Region(0, 0, 3000, 4000)
    assert p.level_for(whole, (375, 500)) == 3  # 8 native px per screen px
    assert p.level_for(whole, (3000, 4000)) == 0
    assert p.level_for(whole, (100, 100)) == 3  # capped at the top level
    assert p.level_for(Region(0, 0, 512, 512), (512, 512)) == 0
    # 1.9 native px per screen px: level 1 is 5% coarser than the screen, within the 25% slack
    assert p.level_for(Region(0, 0, 950, 950), (500, 500)) == 1
    # 1.5: level 1 would be 33% coarser, so level 0
    assert p.level_for(Region(0, 0, 750, 750), (500, 500)) == 0
    strict = Pyramid(3000, 4000, TileLimits(coarsen_slack=1.0))
    assert strict.level_for(Region(0, 0, 950, 950), (500, 500)) == 0


def test_tiles_for_region_are_the_covering_tiles_centre_first():
    ids = tiles_for_region(3000, 4000, (700, 700, 1000, 600), (1000, 600))
    assert {t.level for t in ids} == {0}
    # columns 1..3 (512..2047 covers 700..1699), rows 1..2 (700..1299)
    assert set(ids) == {TileId(0, c, r) for c in (1, 2, 3) for r in (1, 2)}
    # the region's centre (1200, 1000) is in tile (2, 1)
    assert ids[0] == TileId(0, 2, 1)
    p = Pyramid(3000, 4000)
    dists = []
    for t in ids:
        b = p.box(t)
        dists.append(((b.x0 + b.x1) / 2 - 1200) ** 2 + ((b.y0 + b.y1) / 2 - 1000) ** 2)
    assert dists == sorted(dists)


def test_whole_image_on_a_small_screen_is_one_overview_tile():
    assert tiles_for_region(3000, 4000, (0, 0, 3000, 4000), (300, 400)) == [TileId(3, 0, 0)]


def test_region_is_clipped_to_the_image_and_must_touch_it():
    assert tiles_for_region(1000, 1000, (900, 900, 500, 500), (100, 100)) == [TileId(0, 1, 1)]
    with pytest.raises(UsageError, match="outside"):
        tiles_for_region(1000, 1000, (1000, 0, 10, 10), (10, 10))


def test_too_many_tiles_for_one_request():
    lim = TileLimits(max_tiles_per_request=4)
    with pytest.raises(LimitExceeded) as e:
        tiles_for_region(3000, 4000, (0, 0, 3000, 4000), (3000, 4000), lim)
    assert e.value.data["value"] == 48


@pytest.mark.parametrize("view", [(0, 10), (10, 0), (20000, 10), (1.5, 2)])
def test_view_size_is_checked(view):
    with pytest.raises(UsageError):
        tiles_for_region(100, 100, (0, 0, 10, 10), view)


def test_pyramid_size_limits():
    with pytest.raises(UsageError):
        Pyramid(0, 10)
    with pytest.raises(LimitExceeded):
        Pyramid(TILES.max_side + 1, 10)


@pytest.mark.parametrize("tid", [TileId(0, 0, 0), TileId(3, 12, 7), TileId(15, 99999, 0)])
def test_tile_id_wire_round_trip(tid):
    assert TileId.parse(tid.wire()) == tid
    assert TileId.parse(tuple(tid)) == tid
    assert TileId.parse(list(tid)) == tid
    assert len(tid.wire()) <= 14


@pytest.mark.parametrize(
    "bad", ["", "1/2", "1/2/3/4", "a/b/c", "-1/0/0", "1/0/0 ", "100/0/0", (1, 2), (1, 2, -3), (1, 2, 3.0)]
)
def test_tile_id_parse_rejects(bad):
    with pytest.raises(UsageError):
        TileId.parse(bad)


def test_parse_region():
    assert parse_region("0,0,1024,768") == Region(0, 0, 1024, 768)
    assert parse_region(" 10 , 20,30 ,40 ") == Region(10, 20, 30, 40)
    assert parse_region(Region(1, 2, 3, 4).wire()) == Region(1, 2, 3, 4)


@pytest.mark.parametrize(
    "bad", ["", "1,2,3", "1,2,3,4,5", "-1,0,10,10", "a,b,c,d", "0,0,0,10", "0,0,10,0", "1.5,0,1,1"]
)
def test_parse_region_rejects_with_a_hint(bad):
    with pytest.raises(UsageError, match="X,Y,W,H|at least 1"):
        parse_region(bad)

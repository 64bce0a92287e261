"""The image viewer: the first view fitted to the screen; pan and zoom with the keyboard;
tiles asked only once the first view is not sharp enough, for the visible region, centre
first; the bar saying what is still coming; a redraw when they arrive; DICOM windows made
from the original; Esc; 80x24 in 16 colours; nothing written while nothing happens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from rich.color import ColorType

from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.viewer import ImageViewer
from medcomm.app.viewport import Viewport
from medcomm.app.widgets.picture import InfoBar
from medcomm.core.tiles import TileId
from medcomm.errors import LinkDown
from tests.app.helpers import (
    FEVER,
    clinic,
    desk,
    illegible_cells,
    messages,
    notes,
    open_view,
    refreshes,
    settle,
    shows,
    wait_for,
)
from tests.harness.fake_session import FakeSession


def info(app: Any) -> str:
    return app.screen.query_one(InfoBar).text


def viewer(app: Any) -> ImageViewer:
    assert isinstance(app.screen, ImageViewer)
    return app.screen


def tile_asks(fake: FakeSession) -> list[list[TileId]]:
    return [list(a[2]) for a in fake.images_asked if a[0] == "tiles"]  # type: ignore[call-overload]


def footer_keys(app: Any) -> set[str]:
    return {key for key, active in app.screen.active_bindings.items() if active.binding.show}


async def open_image(app: Any, pilot: Any, fake: FakeSession, **kwargs: Any) -> ImageViewer:
    """A new image from dr.chen in FEVER, opened with F9; returns the viewer once drawn."""
    fake.add_image(FEVER, "dr.chen", **kwargs)
    await open_view(app, pilot, FEVER)
    await pilot.press("f9")
    await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer) and app.screen.vp is not None)
    await settle(pilot)
    return viewer(app)


async def zoom_until_tiles(pilot: Any, view: ImageViewer, fake: FakeSession) -> int:
    """Press + until the viewer asks for tiles; returns how many presses it took."""
    for presses in range(1, 12):
        await pilot.press("plus")
        await pilot.pause()
        if tile_asks(fake):
            return presses
    raise AssertionError("zooming never asked for a tile")


async def test_the_first_view_is_fetched_with_progress_and_fitted_to_the_screen() -> None:
    fake = clinic()
    fake.hold_first = True
    async with desk(fake) as (app, pilot):
        line = fake.add_image(FEVER, "dr.chen", caption="CBC today")
        await open_view(app, pilot, FEVER)
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer))
        await shows(pilot, lambda: info(app), "fetching the first view 0.0 KB of 19.6 KB")
        assert viewer(app).picture.cell_size == (0, 0)  # nothing to draw yet
        fake.release_first()
        await shows(pilot, lambda: info(app), "fit · first view · 4096x3072")
        view = viewer(app)
        assert fake.images_asked[-2:] == [("open", line.id), ("first", line.id)]
        cols, rows = view.picture.cell_size
        width, height = view.picture.size
        assert (width, height) == (80, 20)  # title, bar, status line and footer take 4 lines
        assert rows == height and cols <= width  # 4:3 on 80x40 screen pixels: the height binds
        assert abs(cols / (rows * 2) - 4096 / 3072) < 0.05
        assert tile_asks(fake) == []  # the first view is as sharp as the screen: no detail fetched
        title = str(app.screen.query_one("#title").content)
        assert title == '■ report "CBC today" · dr.chen 09:12'


async def test_a_first_view_that_cannot_be_fetched_is_said_so_and_esc_still_goes_back() -> None:
    fake = clinic()
    fake.first_failure = LinkDown("no answer from the relay within 300 s")
    async with desk(fake, notifications=True) as (app, pilot):
        fake.add_image(FEVER, "dr.chen")
        await open_view(app, pilot, FEVER)
        await pilot.press("f9")
        why = "cannot show the image: no answer from the relay within 300 s"
        await shows(pilot, lambda: isinstance(app.screen, ImageViewer) and info(app), why)
        assert notes(app) == [("error", why)] and viewer(app).picture.cell_size == (0, 0)
        await pilot.press("plus", "w", "right")  # nothing to zoom, window or pan: nothing breaks
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))


async def test_zoom_asks_the_visible_tiles_centre_first_then_redraws_as_they_arrive() -> None:
    fake = clinic()
    fake.hold_tiles = True
    async with desk(fake) as (app, pilot):
        view = await open_image(app, pilot, fake)
        before = view.picture.paints
        presses = await zoom_until_tiles(pilot, view, fake)
        assert presses == 4 and view.vp is not None and view.vp.label() == "zoom 16×"
        (asked,) = tile_asks(fake)
        vp = view.vp
        pyramid = fake.images[view.line.id].pyramid
        assert asked == pyramid.tiles_for_region(vp.region(), vp.out_size())  # what is visible, centre first
        level = asked[0].level
        assert level == 2 and len(asked) == 2  # 384x192 native pixels across a tile boundary
        region = vp.region()
        for tid in asked:  # every tile asked for is on screen
            b = pyramid.box(tid)
            assert (
                b.x0 < region.x + region.w
                and b.x1 > region.x
                and b.y0 < region.y + region.h
                and b.y1 > region.y
            )
        await shows(pilot, lambda: info(app), "zoom 16× · first view · tiles 0/2 arriving · 4096x3072")

        drawn = view.picture.paints
        cells_before = view.picture._idx.copy()  # type: ignore[union-attr]
        fake.release_tiles(1)
        await shows(pilot, lambda: info(app), "zoom 16× · tiles level 2 · tiles 1/2 arriving · 4096x3072")
        await wait_for(pilot, lambda: view.picture.paints == drawn + 1)  # the arrival redraws
        assert not np.array_equal(view.picture._idx, cells_before)  # sharper: the squares show
        fake.release_tiles(1)
        await shows(pilot, lambda: info(app), "zoom 16× · tiles level 2 · 4096x3072")
        assert view.picture.paints > before

        for _ in range(10):  # down, a quarter of the view at a time, into the next row of tiles
            await pilot.press("down")
            await pilot.pause()
            if len(tile_asks(fake)) == 2:
                break
        new = tile_asks(fake)[1]
        assert new and not set(new) & set(asked)  # what is here is not asked again
        assert set(asked) | set(new) == set(pyramid.tiles_for_region(view.vp.region(), view.vp.out_size()))
        fake.release_tiles(len(new))
        await shows(pilot, lambda: "arriving" in info(app), False)


async def test_pan_moves_a_quarter_of_the_view_and_stops_at_the_edge_without_redrawing() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        view = await open_image(app, pilot, fake)
        await pilot.press("plus", "plus")
        await pilot.pause()
        vp = view.vp
        assert vp is not None and vp.label() == "zoom 4×"
        w, h = vp.visible
        await pilot.press("l")
        assert view.vp.cx == vp.cx + w / 4  # type: ignore[union-attr]
        await pilot.press("j", "k", "left")
        assert (view.vp.cx, view.vp.cy) == (vp.cx, vp.cy)  # type: ignore[union-attr]
        for _ in range(8):
            await pilot.press("up", "h")
        await settle(pilot)
        x0, y0, _, _ = view.vp.box()  # type: ignore[union-attr]
        assert (x0, y0) == (0, 0)  # the top left corner, and no further
        paints = view.picture.paints
        with refreshes() as seen:
            await pilot.press("up", "h")
            await settle(pilot)
        assert view.picture.paints == paints and not seen
        await pilot.press("0")  # fit again
        await settle(pilot)
        assert view.vp == Viewport(4096, 3072, 80, 20)  # type: ignore[comparison-overlap]


async def test_tiles_the_sender_has_not_uploaded_are_said_so_and_the_first_view_shows_there() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        view = await open_image(app, pilot, fake)
        fake.images[view.line.id].at_relay = {TileId(2, 1, 0)}
        await zoom_until_tiles(pilot, view, fake)
        bar = "zoom 16× · tiles level 2 · 1 of 2 tiles not at the relay yet · 4096x3072"
        await shows(pilot, lambda: info(app), bar)
        (asked,) = tile_asks(fake)
        fake.images[view.line.id].at_relay = None  # the sender's device has uploaded it since
        await pilot.press("right")  # any move asks again for what was missing, and only that
        await shows(pilot, lambda: info(app), "zoom 16× · tiles level 2 · 4096x3072")
        assert tile_asks(fake) == [asked, [t for t in asked if t != TileId(2, 1, 0)]]


async def test_zoom_stops_at_its_ends_with_a_word() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        view = await open_image(app, pilot, fake)
        await pilot.press("minus")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [("information", "already at the whole picture")]
        for _ in range(view.vp.max_zoom):  # type: ignore[union-attr]
            await pilot.press("plus")
        await pilot.press("plus")
        await wait_for(pilot, lambda: len(notes(app)) == 2)
        assert notes(app)[1] == ("information", "already at the deepest zoom: 4 screen pixels per pixel")


async def test_w_cycles_dicom_windows_made_from_the_original_fetched_once() -> None:
    fake = clinic()
    fake.hold_original = True
    async with desk(fake) as (app, pilot):
        view = await open_image(app, pilot, fake, dicom=True, caption="chest CT", original_sent=True)
        assert "w" in footer_keys(app)
        # 80 columns: the window and what another costs, before "first view" and the size
        assert info(app) == "fit · sent window mediastinum C50 W350 · w: others need the original, 524.0 KB"
        sent = view.picture._idx.copy()  # type: ignore[union-attr]
        await pilot.press("w")
        fetching = "fit · first view · window lung: fetching the original 524.0 KB… 0% · 512x512"
        await shows(pilot, lambda: info(app), fetching)
        fake.release_original()
        await shows(pilot, lambda: info(app), "fit · window lung C-600 W1500, from the original · 512x512")
        lung = view.picture._idx.copy()  # type: ignore[union-attr]
        assert not np.array_equal(lung, sent)  # the lungs show: the sent window clipped them black

        labels = []
        for _ in range(4):  # mediastinum, bone, brain, the file's own: no second fetch
            await pilot.press("w")
            await wait_for(pilot, lambda: view.full is not None and view.full[0] == view.choice)
            labels.append(view.full[2])  # type: ignore[index]
        assert labels == ["mediastinum C50 W350", "bone C400 W1800", "brain C40 W80", "file's own C40 W400"]
        windows = [a for a in fake.images_asked if a[0] == "window"]
        assert [a[2] for a in windows] == ["lung", "mediastinum", "bone", "brain", "file"]
        await pilot.press("w")  # round to the picture as sent (and its tiles)
        await shows(pilot, lambda: info(app), "fit · first view · sent window mediastinum C50 W350 · 512x512")
        assert np.array_equal(view.picture._idx, sent)  # type: ignore[arg-type]
        assert tile_asks(fake) == []


async def test_w_asks_the_senders_device_for_a_kept_original_then_makes_the_window_once_it_is_up() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        view = await open_image(app, pilot, fake, dicom=True)  # the original stays on the sender's device
        await pilot.press("w")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [
            (
                "information",
                "window lung needs the original DICOM (524.0 KB): asked dr.chen's device for it, which "
                "sends it at its next sync; press w again later",
            )
        ]
        assert ("request", view.line.id) in fake.images_asked
        await shows(
            pilot, lambda: info(app), "fit · sent window mediastinum C50 W350 · original asked of dr.chen"
        )
        assert view.choice == "sent" and view.full is None

        fake.images[view.line.id].original_at_relay = True  # that device's next sync uploaded it
        await pilot.press("w")
        await shows(pilot, lambda: info(app), "fit · window lung C-600 W1500, from the original · 512x512")
        assert fake.images_asked.count(("request", view.line.id)) == 1


async def test_w_says_when_the_original_is_not_up_yet_or_gone_and_is_absent_for_pictures() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        view = await open_image(app, pilot, fake, dicom=True, original_sent=True)
        fake.images[view.line.id].original_at_relay = False  # sent with the image, still on its way
        await pilot.press("w")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app)[0][1] == (
            "window lung needs the original DICOM (524.0 KB): it has not reached the relay yet; "
            "press w again later"
        )
        await shows(pilot, lambda: viewer(app).choice, "sent")

        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        line = fake.add_image(FEVER, "dr.chen", dicom=True)
        fake.images[line.id].original_gone = True
        fake.receive(FEVER, "dr.chen", "another slice")
        await wait_for(pilot, lambda: len(messages(app)) == 10)
        app.screen.open_image(next(w.line for w in app.screen.query("ImageLine") if w.line.id == line.id))
        await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer) and app.screen.vp is not None)
        await pilot.press("w")
        await wait_for(pilot, lambda: len(notes(app)) == 2)
        assert notes(app)[1][1] == (
            "window lung needs the original DICOM (524.0 KB): dr.chen's device no longer keeps the original"
        )

        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        fake.add_image(FEVER, "dr.chen", kind="photo")
        fake.receive(FEVER, "dr.chen", "a photo")
        await wait_for(pilot, lambda: len(messages(app)) == 12)
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer) and app.screen.vp is not None)
        assert "w" not in footer_keys(app)
        asked = len(fake.images_asked)
        await pilot.press("w")
        await settle(pilot)
        assert len(fake.images_asked) == asked and len(notes(app)) == 2


async def test_esc_goes_back_to_the_consult_and_its_line_says_what_arrived() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        view = await open_image(app, pilot, fake, caption="CBC")
        await zoom_until_tiles(pilot, view, fake)
        await shows(pilot, lambda: "arriving" in info(app), False)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        line = '   #6 09:12 dr.chen: ■ report "CBC" · 19.6 KB · first view, tiles 2/65 here'
        await shows(pilot, lambda: messages(app)[-3], line)
        assert len(app.screen_stack) == 3


async def test_at_80x24_in_16_colours_everything_reads_and_an_idle_viewer_writes_nothing(
    colour_system: Callable[[str], None],
) -> None:
    colour_system("standard")
    fake = clinic()
    async with desk(fake) as (app, pilot):
        assert app.console.color_system == "standard"
        view = await open_image(app, pilot, fake, dicom=True)
        await zoom_until_tiles(pilot, view, fake)
        await settle(pilot, 0.3)
        assert illegible_cells(app) == []
        colours = {
            c.number
            for strip in view.picture._strips
            for seg in strip
            if seg.style is not None
            for c in (seg.style.color, seg.style.bgcolor)
            if c is not None
        }
        assert colours and all(n is not None and n < 16 for n in colours)
        assert all(
            c.type == ColorType.STANDARD
            for strip in view.picture._strips
            for seg in strip
            if seg.style is not None and seg.style.bgcolor is not None
            for c in [seg.style.bgcolor]
        )
        with refreshes() as seen:
            await pilot.pause(1.5)  # idle: no timer, no redraw
        assert seen == [] and view._arrival_timer is None
        await pilot.press("f1")  # help over the viewer, and back
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer))

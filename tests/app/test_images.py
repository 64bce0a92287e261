"""Images in the consult view: F5's form (the file checked as it is typed, caption, kind),
the share's progress in the image bar, the line queued as soon as the image is durable,
stored, then its detail going up; offline it is kept and sent when the link is up; the
one-line previews in their states; F9 and Enter open the viewer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, RadioSet, Static

from medcomm.app.screens.attach import AttachImage, check_file
from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.viewer import ImageViewer
from medcomm.app.widgets.conversation import ImageLine
from medcomm.app.widgets.imagebar import ImageBar, ShareProgress, preview_text, share_text
from medcomm.core.tiles import TileId
from medcomm.errors import LimitExceeded
from medcomm.session.deskimages import ImageSummary
from tests.app.helpers import (
    FEVER,
    HEADACHE,
    clinic,
    desk,
    messages,
    notes,
    open_view,
    settle,
    shown_text,
    shows,
    status_text,
    wait_for,
)
from tests.harness.fake_images import all_tiles

LINK = "● online · rtt 250 ms · last contact 09:11"


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "cbc.jpg"
    path.write_bytes(b"\xff\xd8" + b"x" * 2098)  # the form checks the file, not its pixels
    return path


def field(app: Any, name: str) -> Static:
    return app.screen.query_one(f"#{name}", Static)


async def fill(app: Any, pilot: Any, path: str, caption: str = "") -> None:
    """The form's path (as if typed) and caption."""
    app.screen.query_one("#path", Input).value = path
    await pilot.pause()
    await pilot.press("enter")  # on to the caption
    await wait_for(pilot, lambda: app.focused is app.screen.query_one("#caption", Input))
    for ch in caption:
        await pilot.press("space" if ch == " " else ch)


async def test_f5_checks_the_file_then_shares_it_with_progress_queued_at_once_then_stored(
    picture: Path,
) -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, AttachImage))
        assert str(field(app, "file").content).startswith("type the path")
        app.screen.query_one("#path", Input).value = str(picture.parent / "nope.jpg")
        await shows(pilot, lambda: str(field(app, "file").content), "no such file")
        assert field(app, "file").has_class("-bad")

        await fill(app, pilot, str(picture), "CBC today")
        assert str(field(app, "file").content) == "2.1 KB"
        await pilot.press("tab", "right", "enter")  # the kind: "report"
        assert app.screen.query_one(RadioSet).pressed_index == 1
        assert "lab report" in str(field(app, "kind-note").content)
        fake.hold_share = fake.hold_upload = True
        await pilot.press("tab", "enter")  # "Send image"
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        await shows(pilot, lambda: shown_text(app, ImageBar), "image cbc.jpg: preparing the first view…")
        assert fake.images_asked[-1] == ("share", HEADACHE, str(picture), "report", "CBC today")
        assert not any("■" in m for m in messages(app))  # nothing is kept yet: nothing shown

        fake.release_share()  # durable on this device: the line is there, queued
        line = '   #- 09:12 amina: ■ report "CBC today" · 19.6 KB · saved here, not sent yet  [… queued]'
        await shows(pilot, lambda: messages(app)[-1], line)
        await shows(
            pilot,
            lambda: shown_text(app, ImageBar),
            "image cbc.jpg: sending the first view 0.0 KB of 19.6 KB",
        )
        await shows(pilot, lambda: status_text(app), f"{LINK} · 2 waiting")
        fake.set_status(state="connecting")  # the link drops meanwhile: the bar says so
        waiting = "image cbc.jpg: saved on this device · waiting for the link"
        await shows(pilot, lambda: shown_text(app, ImageBar), waiting)
        fake.set_status(state="online")
        sending = "image cbc.jpg: sending the first view 0.0 KB of 19.6 KB"
        await shows(pilot, lambda: shown_text(app, ImageBar), sending)

        fake.release_upload()  # stored; then the round that sends the detail
        line = (  # the original stays here until a member asks for it
            '   #3 09:13 amina: ■ report "CBC today" · 19.6 KB · detail at the relay, original on request'
            "  [✓ stored]"
        )
        await shows(pilot, lambda: messages(app)[-1], line)
        assert ("send",) in fake.images_asked
        assert (
            "information",
            "image stored (#3): first view 19.6 KB in 7 s; the tiles and the original follow",
        ) in notes(app)
        await shows(pilot, lambda: shown_text(app, ImageBar), "")
        assert status_text(app) == f"{LINK} · 1 waiting"  # the ambulance message, still queued


async def test_shared_offline_the_image_is_kept_queued_and_sent_when_the_link_comes_up(picture: Path) -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        fake.set_status(state="offline", error="no route to relay")
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, AttachImage))
        await fill(app, pilot, str(picture))
        await pilot.press("enter")  # Enter in the caption sends
        await wait_for(pilot, lambda: notes(app))
        assert ("information", "image saved on this device: it goes when the link is up") in notes(app)
        line = "   #- 09:12 amina: ■ report · 19.6 KB · saved here, not sent yet  [… queued]"
        await shows(pilot, lambda: messages(app)[-1], line)
        await shows(pilot, lambda: status_text(app), "○ offline — 2 waiting (no route to relay)")
        assert fake.images_asked.count(("send",)) == 1  # only the round when the desk opened
        assert shown_text(app, ImageBar) == ""

        fake.set_status(state="online", error=None)  # the link is back: what waited goes
        await wait_for(pilot, lambda: fake.images_asked.count(("send",)) == 2)
        image_id = fake.outbox[-1].id
        assert fake.pending_image_lines == [] and fake.outbox[-1].kind == "image"
        fake.ack(image_id)
        stored = "   #3 09:13 amina: ■ report · 19.6 KB · detail at the relay, original on request"
        stored += "  [✓ stored]"
        await shows(pilot, lambda: messages(app)[-1], stored)


async def test_a_request_for_an_original_starts_a_round_that_answers_it() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await wait_for(pilot, lambda: fake.images_asked.count(("send",)) == 1)  # the desk opened
        fake.receive(FEVER, "dr.chen", "a text is not a request")
        fake.receive(FEVER, "dr.chen", "asks for the original of an image", kind="request")
        await wait_for(pilot, lambda: fake.images_asked.count(("send",)) == 2)
        await settle(pilot)
        assert fake.images_asked.count(("send",)) == 2


async def test_the_form_refuses_what_is_not_a_readable_file_and_esc_cancels(tmp_path: Path) -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, AttachImage))
        await pilot.press("enter", "enter")  # no path: the caption's Enter tries to send
        await shows(
            pilot,
            lambda: str(field(app, "error").content),
            "Not sent: type the path of the picture (JPEG, PNG, HEIC, WebP, TIFF or DICOM).",
        )
        assert app.focused is app.screen.query_one("#path", Input)
        await fill(app, pilot, str(tmp_path))
        await pilot.press("enter")
        await shows(
            pilot, lambda: str(field(app, "error").content), f"Not sent: {tmp_path.name} is a folder."
        )
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        assert not any(a[0] == "share" for a in fake.images_asked)


async def test_a_share_that_fails_says_why_and_leaves_no_bar(picture: Path) -> None:
    fake = clinic()
    fake.share_failure = LimitExceeded("200 images already wait for the link: run medcomm sync")
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, AttachImage))
        await fill(app, pilot, str(picture))
        await pilot.press("enter")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [
            ("error", "image not sent: 200 images already wait for the link: run medcomm sync")
        ]
        await shows(pilot, lambda: shown_text(app, ImageBar), "")


# --- the preview lines ------------------------------------------------------------------------


async def test_preview_lines_say_what_of_each_image_is_where_and_change_as_it_arrives() -> None:
    fake = clinic()
    theirs = fake.add_image(
        FEVER, "dr.chen", caption="chest film, taken on the ward this morning", kind="film"
    )
    mine = fake.add_image(FEVER, "amina", caption="CBC today")
    fake.images[mine.id].sending, fake.images[mine.id].tiles_up = "tiles", 12
    fake.add_image(FEVER, "amina", kind="photo", original_sent=True)  # share --original
    ecg = fake.add_image(FEVER, "dr.chen", kind="ecg")
    image = fake.images[ecg.id]
    image.first_here, image.tiles_here = True, {TileId(0, 0, 0), TileId(0, 1, 0), TileId(3, 0, 0)}
    fake.status.state = "offline"  # no round of sending finishes ours meanwhile
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        assert messages(app)[-6:-2] == [
            '   #6 09:12 dr.chen: ■ film "chest film, taken on the ward t…" · 19.6 KB · not fetched yet',
            '   #7 09:13 amina: ■ report "CBC today" · 19.6 KB · sending tiles 12/65  [✓ stored]',
            "   #8 09:14 amina: ■ photo · 19.6 KB · all at the relay  [✓ stored]",
            "   #9 09:15 dr.chen: ■ ecg · 19.6 KB · first view, tiles 3/65 here",
        ]
        assert len(app.screen.query(ImageLine)) == 4
        await pilot.press("shift+tab")  # from the compose box back to the newest image
        await wait_for(pilot, lambda: isinstance(app.focused, ImageLine) and app.focused.line.id == ecg.id)
        await pilot.press("shift+tab", "shift+tab", "shift+tab", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer) and app.screen.first is not None)
        assert app.screen.line.id == theirs.id
        await pilot.press("escape")  # back: the line says the first view is here now
        film = '   #6 09:12 dr.chen: ■ film "chest film, taken on the ward t…" · 19.6 KB · first view here'
        await shows(pilot, lambda: messages(app)[-6], film)
        image.original_here, image.tiles_here = True, set(all_tiles(image.pyramid))
        fake.receive(FEVER, "dr.chen", "see the ECG")
        await shows(pilot, lambda: messages(app)[-4], "   #9 09:15 dr.chen: ■ ecg · 19.6 KB · all here")


async def test_f9_views_the_newest_image_or_says_there_is_none() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f9")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [("information", "no image in this consult yet: F5 attaches one")]
        older = fake.receive(HEADACHE, "dr.osei", "x", kind="text")
        first = fake.add_image(HEADACHE, "dr.osei")
        newest = fake.add_image(HEADACHE, "dr.osei", caption="urine dipstick")
        fake.receive(HEADACHE, "dr.osei", "two pictures")
        await wait_for(pilot, lambda: len(app.screen.query(ImageLine)) == 2)
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer))
        assert app.screen.line.id == newest.id and first.id != older.id


def test_preview_and_share_words() -> None:
    s = ImageSummary("ab", "report", "", 19_600, 2480, 3508, 65, 2_100_000, False, True)
    assert preview_text(s) == "report · 19.6 KB · detail at the relay, original on request"
    assert preview_text(s, "requested").endswith("detail at the relay, original requested")
    assert preview_text(
        ImageSummary("ab", "slice", "", 9_000, 512, 512, 1, 524_000, True, True, sending="original")
    ) == ("slice · 9.0 KB · sending the original (524.0 KB)")
    assert preview_text(
        ImageSummary("ab", "photo", "", 1, 1, 1, 1, 1, True, True, failed="denied: not a member")
    ) == ("photo · 0.0 KB · refused: denied: not a member")
    p = ShareProgress("a-very-long-file-name-from-a-phone-camera.jpg")
    assert share_text(p, 1) == "image a-very-long-file-name-from-…: preparing the first view… (+1 more)"
    assert check_file("")[0] is None and check_file("/")[1] == "/ is a folder"

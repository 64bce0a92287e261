"""Snapshots of the consult list and the consult view at 80×24 and 120×40, in 16 and 256 colours,
of a consult view with a call up (its call bar) at 80×24 in 16 colours, of the image
viewer on a CT slice at 80×24 in 16 colours, and of the consult workflow at 80×24 in 16
colours: the triage queue with an emergency's alarm, and the case card form with errors.

The SVGs show the colours the app's console would send (see ``helpers.export_as_terminal``):
Textual's own export is always truecolor whatever ``TEXTUAL_COLOR_SYSTEM`` says. Everything
shown is fixed: the fake's times (05 Mar 2024, UTC), ids, and the link status.

Update after a deliberate change of the look with ``pytest tests/app --snapshot-update``, and
look at the SVGs under ``__snapshots__/`` before committing them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from textual.pilot import Pilot

from medcomm.app.app import MedcommApp, build_app
from medcomm.app.screens.cardform import CaseCardForm
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.queue import QueueScreen
from medcomm.app.screens.viewer import ImageViewer
from medcomm.app.widgets.callbar import CallBar
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import Conversation
from medcomm.app.widgets.notebar import NoteBar
from tests.app.helpers import FEVER, clinic, export_as_terminal, in_consult, wait_for, ward
from tests.harness.fake_session import FakeSession

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}
COLOURS = {"16": "standard", "256": "256"}

parametrize_look = pytest.mark.parametrize(
    ("size", "colours"), [(s, c) for s in SIZES for c in COLOURS], ids=lambda v: v
)


def snapshot_app(
    colours: str, colour_system: Callable[[str], None], fake: FakeSession | None = None
) -> MedcommApp:
    colour_system(COLOURS[colours])
    app = build_app((fake or clinic()).opener)
    assert app.console.color_system == COLOURS[colours]
    app.theme = "ansi-dark"  # the desk's own look, whatever TEXTUAL_THEME says
    app.export_screenshot = partial(export_as_terminal, app)  # type: ignore[method-assign]
    return app


@parametrize_look
def test_consult_list(
    snap_compare: Any, colour_system: Callable[[str], None], size: str, colours: str
) -> None:
    app = snapshot_app(colours, colour_system)

    async def ready(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and app.screen.rows)

    assert snap_compare(app, terminal_size=SIZES[size], run_before=ready)


@parametrize_look
def test_consult_view(
    snap_compare: Any, colour_system: Callable[[str], None], size: str, colours: str
) -> None:
    app = snapshot_app(colours, colour_system)

    async def opened(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and app.screen.rows)
        await pilot.press("enter")
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        app.screen.query_one(ComposeBox).insert("Chest\ndrawing")  # a draft of two lines
        conv = app.screen.query_one(Conversation)
        await wait_for(pilot, lambda: conv.is_anchored)  # kept at the newest message
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZES[size], run_before=opened)


def test_consult_view_in_a_call(snap_compare: Any, colour_system: Callable[[str], None]) -> None:
    fake = clinic()
    app = snapshot_app("16", colour_system, fake)

    async def calling(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and app.screen.rows)
        await pilot.press("enter", "f2")
        await wait_for(pilot, lambda: in_consult(app, FEVER) and fake.calls.active)
        fake.calls.connect()
        fake.calls.meters(
            "in call 1:42 · up 9.8 kbit/s · down 10.2 kbit/s · rtt 640 ms · buffer 120 ms · "
            "concealed 0.4% · mid"
        )
        bar = app.screen.query_one(CallBar)
        await wait_for(pilot, lambda: bar.display and "1:42" in bar.text)
        conv = app.screen.query_one(Conversation)
        await wait_for(pilot, lambda: conv.is_anchored)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZES["80x24"], run_before=calling)


def test_consult_view_recording_a_voice_note(snap_compare: Any, colour_system: Callable[[str], None]) -> None:
    """Two voice notes (one of the user's, delivered), the recording bar at 0:07, and the
    footer with F7 and F8, at 80x24 in 16 colours."""
    fake = clinic()
    mine = fake.add_note(FEVER, "amina", 5, 10_400)
    fake.add_note(FEVER, "dr.chen", 12, 9400)
    fake.deliver(mine.id)
    app = snapshot_app("16", colour_system, fake)

    async def recording(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and app.screen.rows)
        await pilot.press("enter")
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        await pilot.press("f7")
        await wait_for(pilot, lambda: fake.recording is not None)
        fake.recording.seconds = 7  # type: ignore[union-attr]
        bar = app.screen.query_one(NoteBar)
        await wait_for(pilot, lambda: "0:07" in bar.text, timeout=3)
        conv = app.screen.query_one(Conversation)
        await wait_for(pilot, lambda: conv.is_anchored)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZES["80x24"], run_before=recording)


def test_image_viewer_on_a_dicom_slice(snap_compare: Any, colour_system: Callable[[str], None]) -> None:
    """A CT slice from dr.chen fitted to 80x24 in 16 colours: the picture, its bar (the
    window it was sent with, what another costs) and the footer's viewer keys."""
    fake = clinic()
    fake.add_image(FEVER, "dr.chen", dicom=True, caption="chest CT, level of the carina")
    app = snapshot_app("16", colour_system, fake)

    async def viewing(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and app.screen.rows)
        await pilot.press("enter")
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageViewer) and app.screen.picture.paints > 0)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZES["80x24"], run_before=viewing)


def test_triage_queue(snap_compare: Any, colour_system: Callable[[str], None]) -> None:
    """dr.chen's queue: an emergency waiting (the banner and its "!!" row), an urgent case,
    a follow-up due today, a chat without a card; the cursor on the second row."""
    app = snapshot_app("16", colour_system, ward())

    async def queued(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and app.screen.rows)
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.rows)
        await pilot.press("down")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZES["80x24"], run_before=queued)


def test_case_card_form(snap_compare: Any, colour_system: Callable[[str], None]) -> None:
    """Tom's card in the form, an age and a saturation out of range, each error under its
    field after Ctrl+S (nothing sent)."""
    fake = ward()
    app = snapshot_app("16", colour_system, fake)

    async def editing(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and app.screen.rows)
        app.open_consult(FEVER)
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, CaseCardForm))
        form = app.screen
        assert isinstance(form, CaseCardForm)
        form.set_value("patient.age", "200")
        form.set_value("vitals.spo2", "101")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: form.error_of("vitals.spo2") != "")
        await pilot.pause()
        assert fake.workflow_asked == []

    assert snap_compare(app, terminal_size=SIZES["80x24"], run_before=editing)

"""Calls in the desk: the call bar of a consult, the keys (F2 call/answer, F3 hang up/decline,
F4 mute, F6 profile), a ringing call announced on every screen, errors as notifications, and
a call that costs the terminal one line a second."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.widgets import Static

from medcomm.app.ports import caller_of
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.dialogs import HelpScreen, NewConsult
from medcomm.app.widgets.callbar import CallBar, Part, bar_parts, fit, meter_parts
from medcomm.app.widgets.status import Ring, StatusLine, announce
from medcomm.core.wire import CallState
from medcomm.errors import VoiceUnavailable
from medcomm.session.call import CallView
from tests.app.helpers import (
    FEVER,
    HEADACHE,
    clinic,
    desk,
    illegible_cells,
    in_consult,
    notes,
    open_view,
    refreshes,
    settle,
    shown_text,
    shows,
    status_text,
    wait_for,
)

METERS = "in call 0:05 · up 9.8 kbit/s · down 10.2 kbit/s · rtt 640 ms · buffer 120 ms · concealed 0.4% · mid"
LINK = "● online · rtt 250 ms · last contact 09:11 · 1 waiting"
RING = "incoming call from dr.chen · Boy, 6, fever 4 days · F2 answer · F3 decline"


def bar(app: Any) -> CallBar:
    return app.screen.query_one(CallBar)


def bar_text(app: Any) -> str:
    return shown_text(app, CallBar)


def ringing(app: Any) -> bool:
    return app.screen.query_one(StatusLine).has_class("-ringing")


async def in_call(app: Any, pilot: Any, fake: Any, consult: str = FEVER) -> None:
    """Open ``consult``, call with F2, and let the far end answer."""
    await open_view(app, pilot, consult)
    await pilot.press("f2")
    await wait_for(pilot, lambda: fake.calls.active)
    fake.calls.connect()
    await shows(pilot, lambda: bar_text(app).startswith("in call"), True)


# --- announced wherever the user is -------------------------------------------------------


async def test_a_ring_is_announced_on_the_list_in_another_consult_on_help_and_in_the_form() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        assert status_text(app) == LINK and not ringing(app)
        fake.calls.ring(FEVER, "dr.chen")
        await shows(pilot, lambda: status_text(app), RING)
        assert ringing(app)
        fake.calls.stop_ringing(FEVER)  # the caller gave up: the link status is back
        await shows(pilot, lambda: status_text(app), LINK)
        assert not ringing(app)

        await open_view(app, pilot, HEADACHE)  # another consult: the status line, not its bar
        fake.calls.ring(FEVER, "dr.chen")
        await shows(pilot, lambda: status_text(app), RING)
        assert ringing(app) and bar_text(app) == ""
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await shows(pilot, lambda: status_text(app), RING)
        keys = str(app.screen.query_one("#help", Static).content)
        assert all(f"F{n}" in keys for n in (2, 3, 4, 6)) and "auscultation" in keys
        await pilot.press("escape", "escape", "ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewConsult))
        await shows(pilot, lambda: status_text(app), RING)

        await pilot.press("f2")  # from a dialog: it closes, and the ringing consult opens
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        assert fake.calls.asked == [("answer", FEVER, "auto")] and len(app.screen_stack) == 3


async def test_in_the_ringing_consult_the_bar_says_it_and_the_status_line_keeps_the_link() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        assert not bar(app).display and bar(app).size.height == 0
        fake.calls.ring(FEVER, "dr.chen")
        await shows(
            pilot,
            lambda: bar_text(app),
            "incoming call from dr.chen · F2 answer · F3 decline · profile auto (F6)",
        )
        assert bar(app).has_class("-ringing") and status_text(app) == LINK
        await pilot.press("f2")
        await wait_for(pilot, lambda: fake.calls.asked == [("answer", FEVER, "auto")])
        await shows(pilot, lambda: bar_text(app).split(" · ")[0], "connecting dr.chen…")
        assert not bar(app).has_class("-ringing") and len(app.screen_stack) == 3  # no second view


async def test_f2_on_the_list_answers_and_opens_the_consult() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await pilot.press("down", "down")  # the highlight is elsewhere: F2 goes to the ringing one
        fake.calls.ring(FEVER, "dr.chen")
        await shows(pilot, lambda: status_text(app), RING)
        await pilot.press("f2")
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        assert fake.calls.asked == [("answer", FEVER, "auto")]
        await shows(pilot, lambda: bar_text(app).startswith("connecting dr.chen…"), True)
        assert status_text(app) == LINK
        fake.calls.connect()
        fake.calls.meters(METERS)
        await shows(pilot, lambda: bar_text(app).startswith("in call 0:05 · ↑9.8 ↓10.2 kbit/s"), True)
        await pilot.press("escape")  # back to the list: the call goes on, its bar stays in its view
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        assert fake.calls.active and status_text(app) == LINK


async def test_f3_declines_a_ring_from_the_list() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        fake.calls.ring(FEVER, "dr.chen")
        await shows(pilot, lambda: status_text(app), RING)
        await pilot.press("f3")
        await shows(pilot, lambda: status_text(app), LINK)
        assert fake.calls.asked == [("decline", FEVER)]
        assert isinstance(app.screen, ConsultList)
        await pilot.press("f3", "f2")  # nothing rings: the keys do nothing on the list
        await settle(pilot)
        assert fake.calls.asked == [("decline", FEVER)] and isinstance(app.screen, ConsultList)


# --- placing, hanging up, mute, profile -----------------------------------------------------


async def test_f2_in_a_quiet_consult_calls_with_the_profile_f6_chose() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f6", "f6")
        await settle(pilot)
        assert [m for _, m in notes(app)] == [
            "next call: thin (6 kbit/s, for the worst links)",
            "next call: standard (16 kbit/s, needs a good link)",
        ]
        assert not bar(app).display  # no call yet: no bar
        await pilot.press("f2")
        await wait_for(pilot, lambda: fake.calls.asked == [("start", HEADACHE, "standard")])
        await shows(
            pilot,
            lambda: bar_text(app),
            "calling… · profile standard · F3 hang up · F4 mute",
        )
        await pilot.press("f6")  # for the next call: this one keeps its profile
        await shows(pilot, lambda: "profile standard, next auscultation" in bar_text(app), True)
        await pilot.press("f6")
        await shows(pilot, lambda: "profile standard, next auto" in bar_text(app), True)


async def test_f3_hangs_up_and_the_bar_goes() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await in_call(app, pilot, fake)
        assert bar(app).size.height == 1
        await pilot.press("f3")
        await shows(pilot, lambda: bar(app).display, False)
        assert fake.calls.asked == [("start", FEVER, "auto"), ("hangup",)]
        assert bar(app).size.height == 0
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [("information", "call hung up")]


async def test_the_bar_goes_when_the_far_end_ends_and_a_failure_is_an_error() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await in_call(app, pilot, fake)
        fake.calls.end("completed")
        await shows(pilot, lambda: bar(app).display, False)
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [("information", "call completed")]
        await settle(pilot)  # told once, not on every later change
        fake.calls.meters("in call 0:09")
        await settle(pilot)
        assert len(notes(app)) == 1

        await pilot.press("f2")  # a second call, which the link then fails
        await wait_for(pilot, lambda: bar(app).display)
        fake.calls.end("failed", error="no answer to the call in time")
        await shows(pilot, lambda: bar(app).display, False)
        await wait_for(pilot, lambda: len(notes(app)) == 2)
        assert notes(app)[1] == ("error", "call failed: no answer to the call in time")


async def test_f4_toggles_mute_in_the_bar() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await in_call(app, pilot, fake)
        fake.calls.meters(METERS)
        await pilot.press("f4")
        await shows(pilot, lambda: bar_text(app).split(" · ")[:2], ["in call 0:05", "MUTED"])
        await pilot.press("f4")
        await shows(pilot, lambda: "MUTED" in bar_text(app), False)
        assert fake.calls.asked[1:] == [("mute", True), ("mute", False)]


async def test_the_meters_show_in_the_bar_and_fit_80_columns() -> None:
    fake = clinic()
    async with desk(fake, size=(80, 24)) as (app, pilot):
        await in_call(app, pilot, fake)
        fake.calls.meters(METERS)
        await shows(
            pilot,
            lambda: bar_text(app),
            "in call 0:05 · ↑9.8 ↓10.2 kbit/s · rtt 640 ms · buffer 120 ms · concealed 0.4%",
        )
        fake.calls.meters(METERS.replace("0:05", "0:06").replace("9.8", "11.3"))
        await shows(pilot, lambda: bar_text(app).startswith("in call 0:06 · ↑11.3 ↓10.2"), True)
    wide = clinic()
    async with desk(wide, size=(140, 24)) as (app, pilot):  # wider: who, rung, profile, keys
        await in_call(app, pilot, wide)
        wide.calls.meters(METERS)
        await shows(
            pilot,
            lambda: bar_text(app),
            "in call 0:05 · ↑9.8 ↓10.2 kbit/s · rtt 640 ms · buffer 120 ms · concealed 0.4% · mid · "
            "with dr.chen · profile auto · F3 hang up · F4 mute",
        )


async def test_a_call_in_one_consult_is_not_in_another_consults_bar() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await in_call(app, pilot, fake, FEVER)
        await open_view(app, pilot, HEADACHE)
        fake.calls.meters(METERS)
        await settle(pilot)
        assert not bar(app).display and status_text(app) == LINK
        await pilot.press("f3", "f4")  # not this consult's call: nothing happens to it
        await settle(pilot)
        assert fake.calls.asked == [("start", FEVER, "auto")] and fake.calls.active
        await pilot.press("f2")  # one call at a time: said, not crashed
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [("error", "already in a call: hang up first")]
        assert fake.calls.asked[-1] == ("start", HEADACHE, "auto") and fake.calls.view.consult == FEVER


async def test_a_ring_during_a_call_waits_and_f3_still_hangs_up_the_call() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await in_call(app, pilot, fake, FEVER)
        fake.calls.ring(HEADACHE, "dr.osei")
        await shows(
            pilot, lambda: status_text(app), "call waiting from dr.osei · Woman, 31, headache after delivery"
        )
        await pilot.press("f3")
        await wait_for(pilot, lambda: not fake.calls.active)
        assert fake.calls.asked[-1] == ("hangup",)
        # now free: the ring is an ordinary incoming call again
        await shows(pilot, lambda: status_text(app).endswith("F2 answer · F3 decline"), True)


# --- errors -----------------------------------------------------------------------------------


async def test_voice_unavailable_on_start_or_answer_is_an_error_notification() -> None:
    fake = clinic()
    missing = "PortAudio is missing: sudo apt-get install libportaudio2"
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        fake.calls.fail_next_start(VoiceUnavailable(missing, missing="portaudio"))
        await pilot.press("f2")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [("error", missing)]
        assert app.is_running and in_consult(app, HEADACHE) and not bar(app).display

        fake.calls.fail_next_start(VoiceUnavailable("no microphone found on this machine"))
        fake.calls.ring(FEVER, "dr.chen")
        await shows(pilot, lambda: ringing(app), True)
        await pilot.press("f2")  # the answer fails, but the consult opens: the user can write
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        await wait_for(pilot, lambda: len(notes(app)) == 2)
        assert notes(app)[1] == ("error", "no microphone found on this machine")
        assert "incoming call from dr.chen" in bar_text(app)  # still ringing: F3 declines


# --- frugal -------------------------------------------------------------------------------------


async def test_a_meters_update_repaints_only_the_bar_and_nothing_else_ever() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await in_call(app, pilot, fake)
        fake.calls.meters(METERS)
        await shows(pilot, lambda: "0:05" in bar_text(app), True)
        await settle(pilot)
        with refreshes() as seen:
            await settle(pilot, 0.3)  # a call that changes nothing: nothing repaints
            assert seen == []
            fake.calls.meters(METERS.replace("0:05", "0:06"))
            await shows(pilot, lambda: "0:06" in bar_text(app), True)
            await settle(pilot)
            assert {w for w, _ in seen} == {bar(app)} and not any(layout for _, layout in seen)
            seen.clear()
            fake.calls.meters(METERS.replace("0:05", "0:06"))  # the same numbers again: no repaint
            await settle(pilot)
            assert seen == []


# --- 16 colours, 80x24 --------------------------------------------------------------------------


async def test_the_bar_and_the_announcement_are_legible_in_16_colours(
    colour_system: Callable[[str], None],
) -> None:
    colour_system("standard")
    fake = clinic()
    async with desk(fake, size=(80, 24)) as (app, pilot):
        assert app.console.color_system == "standard"
        fake.calls.ring(FEVER, "dr.chen")
        await shows(pilot, lambda: ringing(app), True)
        assert illegible_cells(app) == [], "announcement on the list"
        await pilot.press("f2")
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        fake.calls.connect()
        fake.calls.meters(METERS)
        await pilot.press("f4")
        await shows(pilot, lambda: "MUTED" in bar_text(app), True)
        assert illegible_cells(app) == [], "call bar"
        fake.calls.ring(HEADACHE, "dr.osei")
        await shows(pilot, lambda: status_text(app).startswith("call waiting"), True)
        assert illegible_cells(app) == [], "call waiting"


# --- the pieces ---------------------------------------------------------------------------------


def test_fit_drops_the_highest_rank_first_and_never_rank_0() -> None:
    parts = [Part("state", 0), Part("a", 2), Part("b", 1), Part("c", 2)]
    assert [p.text for p in fit(parts, 100)] == ["state", "a", "b", "c"]
    assert [p.text for p in fit(parts, 15)] == ["state", "a", "b"]  # the rightmost of equals
    assert [p.text for p in fit(parts, 9)] == ["state", "b"]
    assert [p.text for p in fit(parts, 1)] == ["state"]


def test_meter_parts_survive_a_change_of_the_engines_wording() -> None:
    assert [p.text for p in meter_parts(METERS + " · muted")] == [
        "in call 0:05",
        "↑9.8 ↓10.2 kbit/s",
        "rtt 640 ms",
        "buffer 120 ms",
        "concealed 0.4%",
        "mid",
    ]
    assert [p.text for p in meter_parts("in call 0:05 · up 9.8 kbit/s · loss 2%")] == [
        "in call 0:05",
        "up 9.8 kbit/s",
        "loss 2%",
    ]
    lost = meter_parts("reconnecting 0:07 · up 0.0 kbit/s · down 0.0 kbit/s · rtt -")
    assert (lost[0].text, lost[0].bold) == ("reconnecting 0:07", True), "a lost link is never cut"
    view = CallView(FEVER, "c", "in call", ["dr.chen"], line="", muted=True)
    assert [p.text for p in bar_parts(view, None, "auto")][:2] == ["in call", "MUTED"]


def test_the_announcement_keeps_its_keys_at_any_width() -> None:
    ring = Ring("midwife.ruth", "Woman, 31, headache after delivery, second visit")
    assert announce(ring, 200).endswith("second visit · F2 answer · F3 decline")
    short = announce(ring, 78)
    assert len(short) <= 78 and "…" in short and short.endswith("F2 answer · F3 decline")
    assert announce(ring, 50) == "incoming call from midwife.ruth · F2 answer · F3 decline"


def test_a_call_that_goes_on_without_us_names_who_is_in_it() -> None:
    ringing = CallState("call0001", FEVER, "ringing", "dr.chen", {"dr.chen": 1}, 0)
    going_on = CallState("call0001", FEVER, "active", "dr.osei", {"dr.chen": 1, "dr.osei": 2}, 0)
    assert (caller_of(ringing), caller_of(going_on)) == ("dr.chen", "dr.chen, dr.osei")

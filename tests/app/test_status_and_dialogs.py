"""The status line, help, the new-consult form, the welcome screen, errors and quitting."""

from __future__ import annotations

from textual.widgets import Input, Static

from medcomm.app.app import build_app
from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.dialogs import HelpScreen, NewConsult, WelcomeScreen
from medcomm.app.widgets.compose import ComposeBox
from medcomm.errors import AccessDenied, LinkDown
from tests.app.helpers import (
    HEADACHE,
    clinic,
    desk,
    in_consult,
    messages,
    open_view,
    settle,
    shows,
    status_text,
    wait_for,
)
from tests.harness.fake_session import FakeSession

# --- the status line ----------------------------------------------------------------------


async def test_status_online_shows_rtt_last_contact_and_the_outbox() -> None:
    async with desk(clinic()) as (app, _pilot):
        assert status_text(app) == "● online · rtt 250 ms · last contact 09:11 · 1 waiting"


async def test_status_follows_the_link_on_the_list_and_in_a_consult() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        fake.set_status(state="offline", error="no route to host", rtt=None)
        await shows(pilot, lambda: status_text(app), "○ offline — 1 waiting (no route to host)")
        fake.set_status(state="connecting", error=None)
        await shows(pilot, lambda: status_text(app), "◌ connecting… · 1 waiting")

        await open_view(app, pilot, HEADACHE)
        assert status_text(app) == "◌ connecting… · 1 waiting"
        await pilot.press(*"BP", "enter")
        await wait_for(pilot, lambda: status_text(app) == "◌ connecting… · 2 waiting")
        fake.set_status(state="online", rtt=1.234, last_contact=None, caught_up=None)
        await shows(pilot, lambda: status_text(app), "● online · rtt 1234 ms · syncing… · 2 waiting")
        for line in list(fake.outbox):
            if line.state == "queued":
                fake.ack(line.id)
        fake.set_status(caught_up=2.0)
        await shows(pilot, lambda: status_text(app), "● online · rtt 1234 ms · outbox empty")


async def test_the_status_line_of_the_list_is_current_after_a_consult() -> None:
    fake = clinic()
    fake.set_status(state="offline", error=None)
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press(*"BP", "enter")
        await wait_for(pilot, lambda: status_text(app) == "○ offline — 2 waiting")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        await settle(pilot)
        assert status_text(app) == "○ offline — 2 waiting"


# --- help -----------------------------------------------------------------------------------


async def test_f1_opens_help_and_escape_closes_it() -> None:
    async with desk(clinic()) as (app, pilot):
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one("#help", Static).content)
        assert "Ctrl+J" in text and "Ctrl+N" in text and "✓✓ delivered" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("f1")  # F1 again closes it: no second help on top
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        assert len(app.screen_stack) == 2


async def test_help_from_a_consult_returns_to_the_consult() -> None:
    async with desk(clinic()) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))


# --- a new consult --------------------------------------------------------------------------


async def test_ctrl_n_an_empty_title_is_refused_with_a_message() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewConsult))
        assert app.focused is app.screen.query_one("#title", Input)
        await pilot.press("enter", "enter")  # title -> members -> submit
        await pilot.pause()
        assert str(app.screen.query_one("#error", Static).content) == "A title is needed."
        assert app.focused is app.screen.query_one("#title", Input)
        assert isinstance(app.screen, NewConsult) and fake.open_calls == []
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        assert fake.open_calls == []


async def test_ctrl_n_opens_a_consult_and_shows_it() -> None:
    fake = clinic()
    fake.directory["nurse.li"] = "clinic"
    async with desk(fake) as (app, pilot):
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewConsult))
        await pilot.press(*"Girl", "enter")  # Enter in the title goes on to the members
        app.screen.query_one("#members", Input).value = "Dr.Chen, nurse.li ,"
        await pilot.press("enter")
        await wait_for(pilot, lambda: in_consult(app))
        ((title, others, timeout),) = fake.open_calls
        assert (title, others) == ("Girl", ["dr.chen", "nurse.li"]) and timeout > 0
        consult = app.screen.consult  # type: ignore[attr-defined]
        assert str(app.screen.query_one("#title", Static).content) == (
            f"{consult} · Girl · amina, dr.chen, nurse.li"
        )
        assert messages(app) == []
        await pilot.press(*"Hi", "enter")
        await wait_for(pilot, lambda: fake.queued == [(consult, "Hi")])


async def test_the_form_shows_the_directory_and_refuses_unknown_names() -> None:
    fake = clinic()
    fake.directory["nurse.li"] = "clinic"
    async with desk(fake) as (app, pilot):
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewConsult))
        assert "nurse.li (clinic)" in str(app.screen.query_one("#directory", Static).content)
        app.screen.query_one("#title", Input).value = "Girl"
        app.screen.query_one("#members", Input).value = "nurse.li, dr.nobody"
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: "dr.nobody" in str(app.screen.query_one("#error", Static).content))
        assert fake.open_calls == [] and isinstance(app.screen, NewConsult)


async def test_a_title_over_200_characters_is_refused() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewConsult))
        app.screen.query_one("#title", Input).value = "x" * 201
        await pilot.press("enter", "enter")
        await pilot.pause()
        assert str(app.screen.query_one("#error", Static).content) == "The title is over 200 characters."
        assert fake.open_calls == []


async def test_a_refused_open_is_a_notification_not_a_crash() -> None:
    fake = clinic()
    fake.open_failure = AccessDenied("denied", "li is not on this relay")
    fake.directory["li"] = "clinic"  # the form lets the name through; the relay refuses
    async with desk(fake, notifications=True) as (app, pilot):
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewConsult))
        await pilot.press("R", "enter", *"li", "enter")
        await wait_for(pilot, lambda: list(app._notifications))
        (note,) = list(app._notifications)
        assert note.severity == "error"
        assert note.message == "relay refused: li is not on this relay (denied)"
        await settle(pilot)
        assert isinstance(app.screen, ConsultList) and app.is_running
        await pilot.press("down")  # still answers keys
        assert app.screen.query_one("#consults").highlighted == 1  # type: ignore[attr-defined]


# --- opening the session ----------------------------------------------------------------------


async def test_without_a_profile_the_welcome_screen_says_medcomm_login() -> None:
    fake = FakeSession("amina").without_profile(
        "no profile in /home/amina/.config/medcomm; run medcomm login"
    )
    app = build_app(fake.opener)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WelcomeScreen))
        welcome = str(app.screen.query_one("#welcome", Static).content)
        assert "medcomm login ws://RELAY:8765 YOUR-NAME CODE" in welcome and "medcomm demo" in welcome
        assert "no profile in /home/amina" in str(app.screen.query_one("#reason", Static).content)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)
    assert fake.opened == 0


async def test_any_other_error_opening_the_session_is_a_notification() -> None:
    fake = FakeSession("amina")
    fake.session_failure = LinkDown("cannot open the local store: disk full")
    app = build_app(fake.opener)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await wait_for(pilot, lambda: list(app._notifications))
        (note,) = list(app._notifications)
        assert (note.severity, note.message) == ("error", "cannot open the local store: disk full")
        assert app.is_running


async def test_ctrl_q_quits_and_closes_the_session() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running)
    assert fake.opened == 1 and fake.closed == 1


async def test_frugal_nothing_animates_or_blinks() -> None:
    async with desk(clinic()) as (app, pilot):
        assert app.animation_level == "none"
        await open_view(app, pilot, HEADACHE)
        assert app.screen.query_one(ComposeBox).cursor_blink is False
    assert build_app(clinic().opener, frugal=False).animation_level != "none"

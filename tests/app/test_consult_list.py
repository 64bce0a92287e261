"""The consult list: what each row says, search, opening a consult, reacting to events."""

from __future__ import annotations

from textual.widgets import Input, OptionList

from medcomm.app.screens.consults import ConsultList
from tests.app.helpers import (
    FEVER,
    HEADACHE,
    STOCK,
    clinic,
    desk,
    in_consult,
    messages,
    rows,
    settle,
    shows,
    status_text,
    wait_for,
)
from tests.harness.fake_session import FakeSession


async def test_rows_show_title_members_unread_waiting_queued_and_last_message() -> None:
    async with desk(clinic()) as (app, _pilot):
        assert str(app.screen.query_one("#title").content) == "medcomm · consults of amina"
        fever, headache, stock = rows(app)  # newest activity first
        assert fever == (
            "k7m2qd Boy, 6, fever 4 days  dr.chen  1 unread  waiting since 05 Mar  1 queued\n"
            "    05 Mar dr.chen: Severe pneumonia: first dose of antibiotics, then refer."
        )
        # the other members, never the user herself; nothing unread, nothing waiting
        assert headache == (
            "p3x9wa Woman, 31, headache after delivery  dr.osei, midwife.ruth\n"
            "    05 Mar amina: BP 150/100 twice, protein ++."
        )
        assert stock.startswith("b8n4tz Stock check: amoxicillin  pharm.kofi\n")
        assert app.screen.query_one(OptionList).highlighted == 0
        assert app.screen.query_one(OptionList).has_focus


async def test_times_of_today_are_clock_times() -> None:
    import time

    midnight = int(time.time()) // 86_400 * 86_400  # today, UTC (the tests run in UTC)
    fake = FakeSession("amina", seed=3, start_ms=(midnight + 8 * 3600) * 1000)  # 08:01 for the first
    k = fake.add_consult("Night shift handover", ["dr.chen"])
    fake.add_message(k, "dr.chen", "Bed 4 needs a review.")
    async with desk(fake) as (app, _pilot):
        assert rows(app) == [
            f"{k} Night shift handover  dr.chen  1 unread  waiting since 08:01\n"
            "    08:01 dr.chen: Bed 4 needs a review."
        ]


async def test_the_last_message_is_one_line_even_when_long_or_multiline() -> None:
    fake = clinic()
    fake.receive(STOCK, "pharm.kofi", "Boxes:\n12 of 250 mg,\n3 of 500 mg. " + "More text. " * 10)
    async with desk(fake) as (app, _pilot):
        first = rows(app)[0]
        assert first.startswith("b8n4tz")
        flat = "Boxes: 12 of 250 mg, 3 of 500 mg. " + "More text. " * 10  # newlines become spaces
        assert first.split("\n")[1] == "    05 Mar pharm.kofi: " + flat[:58]


async def test_an_empty_desk_enter_does_nothing() -> None:
    async with desk(FakeSession("amina")) as (app, pilot):
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ConsultList)


async def test_an_empty_desk_says_how_to_start() -> None:
    async with desk(FakeSession("amina")) as (app, pilot):
        assert rows(app) == ["no consults yet: Ctrl+N opens one"]


async def test_slash_searches_by_title_and_member_and_escape_clears() -> None:
    async with desk(clinic()) as (app, pilot):
        await pilot.press("/")
        search = app.screen.query_one("#search", Input)
        assert search.has_focus
        await pilot.press(*"FEVER")  # by title, any case
        assert [r[:6] for r in rows(app)] == [FEVER]
        search.value = ""
        await pilot.press(*"osei")  # by member
        await pilot.pause()
        assert [r[:6] for r in rows(app)] == [HEADACHE]
        search.value = ""
        await pilot.press(*"b8n4")  # by id
        await pilot.pause()
        assert [r[:6] for r in rows(app)] == [STOCK]
        await pilot.press("escape")
        await pilot.pause()
        assert search.value == ""
        assert [r[:6] for r in rows(app)] == [FEVER, HEADACHE, STOCK]
        assert app.screen.query_one(OptionList).has_focus


async def test_enter_opens_the_highlighted_consult() -> None:
    async with desk(clinic()) as (app, pilot):
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: in_consult(app, HEADACHE))
        assert str(app.screen.query_one("#title").content) == (
            "p3x9wa · Woman, 31, headache after delivery · amina, dr.osei, midwife.ruth"
        )


async def test_search_then_enter_twice_opens_the_match() -> None:
    async with desk(clinic()) as (app, pilot):
        await pilot.press("/", *"kofi", "enter")  # Enter in the search box goes to the list
        await pilot.pause()
        assert app.screen.query_one(OptionList).has_focus
        await pilot.press("enter")
        await wait_for(pilot, lambda: in_consult(app, STOCK))


async def test_a_message_arriving_moves_its_consult_up_and_counts_unread() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        fake.receive(STOCK, "pharm.kofi", "Order arrives Friday.")
        fake.receive(STOCK, "pharm.kofi", "Ten boxes.")  # a burst: one refresh
        await shows(
            pilot,
            lambda: rows(app)[0],
            "b8n4tz Stock check: amoxicillin  pharm.kofi  2 unread  waiting since 05 Mar\n"
            "    05 Mar pharm.kofi: Ten boxes.",
        )
        # the highlight stays on the consult it was on
        assert app.screen.query_one(OptionList).highlighted_option.id == FEVER


async def test_a_status_change_does_not_rebuild_the_list() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        options = app.screen.query_one(OptionList)
        before = [options.get_option_at_index(i) for i in range(options.option_count)]
        fake.set_status(state="offline", error="no route to host")
        await wait_for(pilot, lambda: "offline" in status_text(app))
        await settle(pilot)
        after = [options.get_option_at_index(i) for i in range(options.option_count)]
        assert all(a is b for a, b in zip(before, after, strict=True))  # same options: no redraw


async def test_back_from_a_consult_the_list_shows_the_new_last_message() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await pilot.press("enter")  # FEVER
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        await pilot.press(*"OK", "enter")
        await wait_for(pilot, lambda: fake.outbox_count() == 2)
        fake.ack(fake.find("OK").id)
        await wait_for(pilot, lambda: any("amina: OK  [✓ stored]" in m for m in messages(app)))
        await wait_for(pilot, lambda: fake.consults[FEVER].read_upto >= 5)  # dr.chen's read
        await settle(pilot)  # every event has been handled while the consult was shown
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        await settle(pilot)
        assert rows(app)[0] == (
            "k7m2qd Boy, 6, fever 4 days  dr.chen  1 queued\n    05 Mar amina: OK"
        )  # read, answered (no longer waiting), the last message is hers


async def test_a_search_that_matches_nothing_does_not_say_there_are_no_consults() -> None:
    async with desk(clinic()) as (app, pilot):
        await pilot.press("/", *"zzz")
        await pilot.pause()
        assert len(rows(app)) == 1
        assert "no consults yet" not in rows(app)[0]


async def test_a_refused_message_leaves_the_queued_count_of_the_list() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        assert "1 queued" in rows(app)[0]
        fake.fail(fake.find("Ambulance requested.").id)
        await settle(pilot)
        assert "○" not in status_text(app) and status_text(app).endswith("outbox empty")
        assert "queued" not in rows(app)[0]

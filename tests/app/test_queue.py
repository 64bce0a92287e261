"""The triage queue screen: order, the emergency alarm, claiming, live updates, the minute tick."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.command import CommandPalette

from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.queue import COLUMNS, Cell, QueueRow, QueueScreen
from tests.app.helpers import (
    BP_REVIEW,
    FEVER,
    HEADACHE,
    STOCK,
    desk,
    illegible_cells,
    in_consult,
    notes,
    refreshes,
    settle,
    shows,
    wait_for,
    ward,
)
from tests.harness.fake_session import FakeSession


def queue(app: Any) -> QueueScreen:
    assert isinstance(app.screen, QueueScreen)
    return app.screen


def shown_rows(app: Any) -> list[str]:
    """The rows as shown: their cells' texts, joined by two spaces."""
    return [row.text for row in app.screen.query(QueueRow) if row.entry is not None]


def column(app: Any, name: str) -> list[str]:
    """One column of the rows as shown."""
    i = COLUMNS.index(name)
    return [row.texts[i] for row in app.screen.query(QueueRow) if row.entry is not None]


def cursor_consult(app: Any) -> str | None:
    selected = queue(app).selected
    return selected.consult if selected else None


async def open_queue(app: Any, pilot: Any) -> None:
    await pilot.press("q")
    await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.rows)
    await pilot.pause()


async def test_q_opens_the_queue_in_triage_order_with_waits_patients_and_the_due_follow_up() -> None:
    async with desk(ward()) as (app, pilot):
        await open_queue(app, pilot)
        assert shown_rows(app) == [
            "!! emergency  11m  p3x9wa  Grace N. · 31y · f  waiting  severe headache after delivery",
            "   urgent  13m  k7m2qd  Tom · 6y · m  waiting  fever 4 days, fast breathing",
            "   routine  9h 25m  m5bp7r  Joseph M. · 58y · m  closed  follow-up 05 Mar: BP check",
            "   routine  9m  b8n4tz  -  waiting  Stock check: amoxicillin",
        ]
        title = str(app.screen.query_one("#title").content)
        assert title == "medcomm · triage queue · 3 waiting for a doctor · 1 follow-up due"
        assert cursor_consult(app) == HEADACHE  # the first row: the emergency
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))


async def test_the_order_follows_urgency_then_the_longest_wait() -> None:
    """An urgent case that arrives after a routine one goes above it; among equals the
    longest waiting comes first, whatever the arrival order of their cards."""
    fake = FakeSession("dr.chen", seed=3)
    urgency = {"r1r1r1": "routine", "u1u1u1": "urgent", "r2r2r2": "routine", "u2u2u2": "urgent"}
    for cid in urgency:  # arrival order
        fake.add_consult(f"consult {cid}", ["amina", "dr.chen"], consult=cid)
        fake.add_message(cid, "amina", "hello")
    for cid in ("u2u2u2", "r2r2r2", "u1u1u1", "r1r1r1"):  # the cards come in another order
        fake.add_case(cid, {"urgency": urgency[cid], "complaint": cid}, sender="amina")
    async with desk(fake) as (app, pilot):
        await open_queue(app, pilot)
        assert [e.consult for e in queue(app).entries] == ["u1u1u1", "u2u2u2", "r1r1r1", "r2r2r2"]
        assert column(app, "consult") == ["u1u1u1", "u2u2u2", "r1r1r1", "r2r2r2"]
        assert queue(app).alarm == ""


async def test_an_emergency_that_waits_raises_a_banner_in_words_and_reverse_video() -> None:
    async with desk(ward()) as (app, pilot):
        await open_queue(app, pilot)
        assert queue(app).alarm == (
            "!! EMERGENCY waiting 11 min: p3x9wa Grace N. · 31y · f · severe headache after delivery"
        )
        banner = app.screen.query_one("#alarm")
        assert banner.display and banner.region.height == 1
        style = banner.styles.text_style
        assert style.reverse and style.bold  # visible without colour
        first = app.screen.query(QueueRow)[1]
        assert first.has_class("-alarm") and first.text.startswith("!! emergency")


@pytest.mark.parametrize("system", ["standard", "256"])
async def test_the_queue_and_its_alarm_are_legible(system: str, colour_system: Callable[[str], None]) -> None:
    colour_system(system)
    async with desk(ward()) as (app, pilot):
        await open_queue(app, pilot)
        assert illegible_cells(app) == []
        await pilot.press("down")
        assert illegible_cells(app) == [], "with the cursor on a row"


async def test_c_claims_the_emergency_and_the_alarm_goes() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_queue(app, pilot)
        await pilot.press("c")
        await wait_for(pilot, lambda: fake.workflow_asked == [("claim", HEADACHE)])
        claim = fake.outbox[-1]
        assert (claim.consult, claim.kind, claim.state) == (HEADACHE, "status", "queued")
        assert claim.data == {"op": "claim"}
        await shows(pilot, lambda: queue(app).alarm, "")
        assert not app.screen.query_one("#alarm").display
        assert [e.consult for e in queue(app).entries] == [FEVER, BP_REVIEW, STOCK]
        assert cursor_consult(app) == FEVER  # the cursor stays where it was
        assert ("information", "p3x9wa: in consult, yours") in notes(app)
        # The consult shows the claim as queued, and its header says whose it is.
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        app.open_consult(HEADACHE)
        await wait_for(pilot, lambda: in_consult(app, HEADACHE))
        await settle(pilot)
        header = str(app.screen.query_one("#case").content)
        assert header.startswith("!! EMERGENCY · in consult: you · Grace N. · 31y · f")
        assert not app.screen.query_one("#case").has_class("-alarm")  # taken: bold, no more alarm


async def test_a_claim_the_core_refuses_is_a_notification_and_nothing_is_sent() -> None:
    """The follow-up row of a closed consult: claiming it is refused by the status machine."""
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_queue(app, pilot)
        await pilot.press("down", "down")
        assert queue(app).selected.reason == "follow-up"  # type: ignore[union-attr]
        before = list(fake.outbox)
        await pilot.press("c")
        await wait_for(pilot, lambda: fake.workflow_asked == [("claim", BP_REVIEW)])
        await settle(pilot)
        assert fake.outbox == before
        assert ("error", "the consult is closed: reopen it first (medcomm status ID waiting)") in notes(app)
        assert len(queue(app).entries) == 4


async def test_d_marks_the_due_follow_up_done_and_it_leaves_the_queue() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_queue(app, pilot)
        await pilot.press("d")  # on the emergency: not a follow-up
        await settle(pilot)
        assert fake.workflow_asked == []
        await pilot.press("down", "down", "d")
        await wait_for(pilot, lambda: fake.workflow_asked == [("followup-done", BP_REVIEW, "fq7k")])
        assert fake.outbox[-1].data == {"op": "done", "id": "fq7k"}
        await wait_for(pilot, lambda: [e.consult for e in queue(app).entries] == [HEADACHE, FEVER, STOCK])


async def test_enter_opens_the_consult_and_esc_comes_back_to_the_queue() -> None:
    async with desk(ward()) as (app, pilot):
        await open_queue(app, pilot)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        assert cursor_consult(app) == FEVER


async def test_the_queue_follows_the_messages_that_arrive() -> None:
    """A card that makes a consult an emergency raises the alarm; another doctor's claim
    arriving takes it out of the queue and the alarm goes."""
    fake = ward()
    async with desk(fake) as (app, pilot):
        await open_queue(app, pilot)
        fake.add_case(FEVER, {"urgency": "emergency"}, sender="amina", receive=True)
        await shows(pilot, lambda: queue(app).alarm.startswith("!! 2 EMERGENCIES waiting"), True)
        # the card came at 09:26 (each message the fake makes is a minute later)
        assert queue(app).alarm == "!! 2 EMERGENCIES waiting, the longest 14 min: k7m2qd, p3x9wa"
        assert [e.consult for e in queue(app).entries][:2] == [FEVER, HEADACHE]
        fake.add_status(FEVER, "dr.osei", "claim", receive=True)
        fake.add_status(HEADACHE, "dr.osei", "claim", receive=True)
        await shows(pilot, lambda: queue(app).alarm, "")
        assert [e.consult for e in queue(app).entries] == [BP_REVIEW, STOCK]


async def test_a_change_to_one_row_repaints_only_the_cells_that_changed() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        await open_queue(app, pilot)
        rows = list(queue(app).rows)
        with refreshes() as seen:
            # at the fake's "now" (not a minute later, as a new message would be): no wait moves
            fake.add_case(
                STOCK, {"complaint": "amoxicillin stock"}, sender="amina", receive=True, time=fake.now_ms
            )
            await wait_for(pilot, lambda: "amoxicillin stock" in shown_rows(app)[-1])
            await settle(pilot)
        cells = [w for w, _layout in seen if isinstance(w, Cell)]
        assert cells and all(c.has_class("complaint") for c in cells)
        assert all(c.parent is app.screen.query(QueueRow)[-1] for c in cells)
        assert queue(app).rows == rows and all(a is b for a, b in zip(queue(app).rows, rows, strict=True))


async def test_the_minute_tick_repaints_only_the_waits_and_nothing_when_they_did_not_change() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        await open_queue(app, pilot)
        screen = queue(app)
        with refreshes() as seen:
            await screen.tick()  # the same minute: nothing to write
            await settle(pilot)
        assert seen == []
        fake.now_ms += 60_000
        with refreshes() as seen:
            await screen.tick()
            await settle(pilot)
        changed = {w for w, _layout in seen}
        waits = {c for c in app.screen.query(Cell) if c.has_class("wait") and c.parent.entry is not None}  # type: ignore[union-attr]
        assert changed - waits == {app.screen.query_one("#alarm")}  # and the banner's "12 min"
        assert changed & waits == waits  # every wait moved on by a minute
        assert column(app, "wait") == ["12m", "14m", "9h 26m", "10m"]
        assert queue(app).alarm.startswith("!! EMERGENCY waiting 12 min")


async def test_the_tick_runs_only_while_the_queue_is_on_top() -> None:
    async with desk(ward()) as (app, pilot):
        await open_queue(app, pilot)
        screen = queue(app)
        assert screen._ticker is not None and screen._ticker._active.is_set()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        assert not screen._ticker._active.is_set()  # paused under the consult
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        assert screen._ticker._active.is_set()


async def test_the_palette_opens_the_queue() -> None:
    async with desk(ward()) as (app, pilot):
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"triage queue")
        await settle(pilot, 0.4)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))


async def test_an_empty_queue_says_so() -> None:
    fake = FakeSession("dr.chen", seed=2)
    fake.add_consult("Done", ["amina", "dr.chen"], consult=FEVER)
    fake.add_message(FEVER, "amina", "hello")
    fake.add_status(FEVER, "dr.chen", "set", to="closed")
    async with desk(fake) as (app, pilot):
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        await settle(pilot)
        assert str(app.screen.query_one("#queue-empty").content).startswith("Nothing waits for a doctor")
        await pilot.press("c", "d", "enter")  # nothing selected: nothing happens
        await settle(pilot)
        assert fake.workflow_asked == [] and isinstance(app.screen, QueueScreen)

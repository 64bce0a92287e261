"""The workflow in the consult view: the case header, the action menu (Ctrl+G) with its
status, advice, follow-up and assign dialogs, and the patient's other consults (Ctrl+L)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from textual.command import CommandPalette
from textual.widgets import Input, OptionList

from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.workflow import (
    ActionMenu,
    AdviceDialog,
    AssignDialog,
    FollowupDialog,
    LinkedConsults,
    PickFollowup,
)
from medcomm.app.widgets.caseheader import CaseHeader
from tests.app.helpers import (
    BP_REVIEW,
    FEVER,
    HEADACHE,
    OLD_COUGH,
    STOCK,
    desk,
    in_consult,
    messages,
    notes,
    open_view,
    settle,
    shows,
    wait_for,
    ward,
)


def header(app: Any) -> str:
    return app.screen.query_one(CaseHeader).text


def error_of(app: Any) -> str:
    return str(app.screen.query_one("#error").content)


async def menu(app: Any, pilot: Any, key: str) -> None:
    """Ctrl+G, then the action's letter."""
    await pilot.press("ctrl+g")
    await wait_for(pilot, lambda: isinstance(app.screen, ActionMenu))
    await pilot.press(key)
    await wait_for(pilot, lambda: not isinstance(app.screen, ActionMenu))


# --- the header ------------------------------------------------------------------------------


async def test_the_header_says_urgency_status_patient_complaint_and_linked_consults() -> None:
    async with desk(ward()) as (app, pilot):
        await open_view(app, pilot, FEVER)
        assert header(app) == (
            "URGENT · waiting · Tom · 6y · m · fever 4 days, fast breathing · 1 other consult: Ctrl+L"
        )
        widget = app.screen.query_one(CaseHeader)
        assert widget.region.height == 1 and widget.has_class("-urgent") and not widget.has_class("-alarm")
        await pilot.press("escape")
        await open_view(app, pilot, HEADACHE)
        assert header(app).startswith("!! EMERGENCY · waiting · Grace N. · 31y · f")
        assert app.screen.query_one(CaseHeader).has_class("-alarm")
        await pilot.press("escape")
        await open_view(app, pilot, BP_REVIEW)
        assert header(app) == (
            "routine · closed · Joseph M. · 58y · m · hypertension review · follow-up 05 Mar"
        )


async def test_the_header_and_the_conversation_follow_status_messages_as_they_arrive() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        fake.add_status(HEADACHE, "dr.osei", "claim", receive=True)
        await shows(pilot, lambda: header(app).split(" · ")[:2], ["!! EMERGENCY", "in consult: dr.osei"])
        assert not app.screen.query_one(CaseHeader).has_class("-alarm")  # a doctor has it
        assert messages(app)[-1] == "   #3 09:26 · dr.osei status: claimed (in consult)"
        fake.add_status(HEADACHE, "dr.osei", "set", to="advised", advice="MgSO4 now, refer", receive=True)
        await shows(pilot, lambda: header(app).split(" · ")[1], "advised (dr.osei)")
        assert messages(app)[-1] == "   #4 09:27 · dr.osei status: advised — advice: MgSO4 now, refer"


# --- claim, status, advice -------------------------------------------------------------------


async def test_claim_then_advised_asks_for_the_advice_and_an_empty_one_is_refused() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await menu(app, pilot, "c")
        await wait_for(pilot, lambda: fake.workflow_asked == [("claim", FEVER)])
        await shows(pilot, lambda: header(app).split(" · ")[1], "in consult: you")
        claimed = "   #- 09:26 · dr.chen status: claimed (in consult)  [… queued]"
        await shows(pilot, lambda: messages(app)[-1], claimed)

        await menu(app, pilot, "a")
        await wait_for(pilot, lambda: isinstance(app.screen, AdviceDialog))
        await pilot.press("enter")  # no advice yet
        await pilot.pause()
        assert error_of(app) == "! the advice is needed: it is what the clinic will do"
        assert isinstance(app.screen, AdviceDialog) and len(fake.workflow_asked) == 1
        await pilot.press(*"Amoxicillin 5 days", "ctrl+j", *"review in 2 days", "enter")
        await wait_for(pilot, lambda: len(fake.workflow_asked) == 2)
        advice = "Amoxicillin 5 days\nreview in 2 days"
        assert fake.workflow_asked[1] == ("status", FEVER, "advised", advice)
        assert fake.outbox[-1].data == {"op": "set", "to": "advised", "advice": advice}
        await shows(pilot, lambda: header(app).split(" · ")[1], "advised (you)")
        assert ("information", "k7m2qd: status: advised") in notes(app)


async def test_a_transition_the_core_refuses_is_a_notification_and_nothing_is_sent() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, FEVER)
        outbox = list(fake.outbox)
        await menu(app, pilot, "a")  # advised straight from waiting
        await wait_for(pilot, lambda: isinstance(app.screen, AdviceDialog))
        await pilot.press(*"rest", "enter")
        await wait_for(pilot, lambda: fake.workflow_asked == [("status", FEVER, "advised", "rest")])
        await settle(pilot)
        assert (
            "error",
            "cannot go from waiting to advised (from waiting: closed, in_consult)",
        ) in notes(app)
        assert fake.outbox == outbox and header(app).split(" · ")[1] == "waiting"
        await menu(app, pilot, "w")  # waiting again: not a change either
        await wait_for(pilot, lambda: len(fake.workflow_asked) == 2)
        await settle(pilot)
        assert fake.outbox == outbox


async def test_close_and_reopen_from_the_menu() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, STOCK)
        await menu(app, pilot, "x")
        closed = "closed · no case card yet: Ctrl+T fills it, Ctrl+G claims, sets the status"
        await shows(pilot, lambda: header(app), closed)
        await menu(app, pilot, "w")
        await shows(pilot, lambda: header(app).split(" · ")[0], "waiting")
        assert [a[2] for a in fake.workflow_asked] == ["closed", "waiting"]


async def test_the_menu_says_where_the_consult_stands_and_escape_does_nothing() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ActionMenu))
        head = str(app.screen.query_one("Label").content)
        assert head == "k7m2qd · waiting since 05 Mar 09:12"
        note = str(app.screen.query_one(".dialog-note").content)
        assert note.startswith("from waiting: closed, in consult")
        assert app.screen.query_one(OptionList).option_count == 11
        await pilot.press("down", "enter")  # the second action: in consult
        await wait_for(pilot, lambda: fake.workflow_asked == [("status", FEVER, "in_consult", "")])
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ActionMenu))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        assert len(fake.workflow_asked) == 1


# --- follow-ups ------------------------------------------------------------------------------


async def test_a_follow_up_is_scheduled_with_a_checked_day_and_a_reason() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await menu(app, pilot, "f")
        await wait_for(pilot, lambda: isinstance(app.screen, FollowupDialog))
        day = app.screen.query_one("#day")
        assert str(day.content) == "today is Tue 05 Mar 2024"
        await pilot.press(*"2024-03-01")
        assert str(day.content) == "due 2024-03-01 is in the past"
        await pilot.press("enter", "enter")  # to the reason, then submit: refused
        await pilot.pause()
        assert error_of(app) == "! due 2024-03-01 is in the past"
        assert isinstance(app.screen, FollowupDialog) and fake.workflow_asked == []
        due = app.screen.query_one("#due", Input)
        due.value = "+14d"
        await pilot.pause()
        assert str(day.content) == "due Tue 19 Mar 2024 (in 14 days)"
        app.screen.query_one("#reason", Input).focus()
        await pilot.press("enter")  # no reason
        await pilot.pause()
        assert error_of(app) == "! a follow-up needs a reason"
        await pilot.press(*"BP check", "enter")
        await wait_for(pilot, lambda: len(fake.workflow_asked) == 1)
        assert fake.workflow_asked == [("followup", FEVER, dt.date(2024, 3, 19), "BP check")]
        sent = fake.outbox[-1]
        assert sent.data == {"op": "add", "id": sent.data["id"], "due": "2024-03-19", "reason": "BP check"}  # type: ignore[index]
        await shows(pilot, lambda: " · follow-up 19 Mar · " in header(app), True)
        assert ("information", f"k7m2qd: follow-up {sent.data['id']} due 2024-03-19") in notes(app)  # type: ignore[index]


async def test_ending_follow_ups_the_only_one_at_once_several_by_choice_none_refused() -> None:
    fake = ward()
    fake.add_followup_message(BP_REVIEW, "dr.chen", "gh2k", dt.date(2024, 4, 1), "lipids")
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, BP_REVIEW)
        await menu(app, pilot, "d")
        await wait_for(pilot, lambda: isinstance(app.screen, PickFollowup))
        options = app.screen.query_one(OptionList)
        assert [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)] == [
            "fq7k  due 05 Mar 2024  BP check",
            "gh2k  due 01 Apr 2024  lipids",
        ]
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: fake.workflow_asked == [("followup-done", BP_REVIEW, "gh2k")])
        await settle(pilot)
        await menu(app, pilot, "z")  # one left open: cancelled at once
        await wait_for(pilot, lambda: len(fake.workflow_asked) == 2)
        assert fake.workflow_asked[1] == ("followup-cancel", BP_REVIEW, "fq7k")
        assert fake.outbox[-1].data == {"op": "cancel", "id": "fq7k"}
        await settle(pilot)
        await menu(app, pilot, "d")  # none open: the core says so
        await wait_for(pilot, lambda: len(fake.workflow_asked) == 3)
        await settle(pilot)
        assert ("error", "no open follow-up in this consult") in notes(app)
        assert " · follow-up " not in header(app)


# --- assign ----------------------------------------------------------------------------------


async def test_assign_to_a_new_member_needs_the_link_and_then_adds_them() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        fake.set_status(state="offline", error="no route to relay")
        await menu(app, pilot, "g")
        await wait_for(pilot, lambda: isinstance(app.screen, AssignDialog))
        await pilot.press(*"dr.li", "enter")
        await wait_for(pilot, lambda: fake.workflow_asked == [("assign", HEADACHE, "dr.li")])
        await settle(pilot)
        assert ("error", "the link is down: adding a member needs the relay") in notes(app)
        assert "dr.li" not in fake.consults[HEADACHE].members
        fake.set_status(state="online", error=None)
        await menu(app, pilot, "g")
        await wait_for(pilot, lambda: isinstance(app.screen, AssignDialog))
        await pilot.press(*"Dr.Li", "enter")
        await wait_for(pilot, lambda: len(fake.workflow_asked) == 2)
        await shows(pilot, lambda: header(app).split(" · ")[1], "waiting for dr.li")
        assert "dr.li" in fake.consults[HEADACHE].members
        assert fake.outbox[-1].data == {"op": "assign", "assignee": "dr.li"}


# --- the patient's other consults ---------------------------------------------------------------


async def test_ctrl_l_lists_the_patient_s_other_consults_and_enter_opens_one() -> None:
    async with desk(ward()) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, LinkedConsults))
        title = str(app.screen.query_one("Label").content)
        assert title == "Other consults of Tom · 6y · m (patient key ptom0001)"
        options = app.screen.query_one(OptionList)
        assert options.option_count == 1
        assert str(options.get_option_at_index(0).prompt) == (
            "05 Mar  t4c9gh  closed · cough two weeks\n"
            "    advice (dr.chen): Amoxicillin 5 days, review if worse"
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: in_consult(app, OLD_COUGH))
        assert header(app).startswith("routine · closed · Tom · 5y · m · cough two weeks · 1 other consult")
        await pilot.press("escape")
        await wait_for(pilot, lambda: in_consult(app, FEVER))


async def test_without_a_patient_the_list_says_how_consults_link() -> None:
    async with desk(ward()) as (app, pilot):
        await open_view(app, pilot, STOCK)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, LinkedConsults))
        assert not app.screen.query(OptionList)
        assert "Ctrl+T fills it" in str(app.screen.query_one(".dialog-note").content)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))


# --- the palette -------------------------------------------------------------------------------


async def test_the_palette_offers_the_workflow_in_a_consult() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"claim this")
        await settle(pilot, 0.4)
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.workflow_asked == [("claim", FEVER)])
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))


# --- typed text is text ----------------------------------------------------------------------


async def test_text_that_looks_like_markup_is_shown_as_typed() -> None:
    """Titles, names, reasons and rejected values are typed by people: "[/]" is not markup."""
    fake = ward()
    fake.add_consult("Twins [A] and [/]", ["amina", "dr.chen"], consult="tw1n5a")
    fake.add_message("tw1n5a", "amina", "two babies")
    card = {"patient.name": "Baby [/b] A", "patient.id": "ptwin0001", "complaint": "[bold]cough"}
    fake.add_case("tw1n5a", card)  # type: ignore[arg-type]
    fake.add_followup_message("tw1n5a", "dr.chen", "ab12", dt.date(2024, 3, 9), "weigh [/] again")
    fake.add_followup_message("tw1n5a", "dr.chen", "cd34", dt.date(2024, 3, 19), "[red]review")
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, "tw1n5a")
        assert str(app.screen.query_one("#title").content) == "tw1n5a · Twins [A] and [/] · amina, dr.chen"
        assert "Baby [/b] A · [bold]cough" in header(app)
        await menu(app, pilot, "d")
        await wait_for(pilot, lambda: isinstance(app.screen, PickFollowup))
        options = app.screen.query_one(OptionList)
        assert str(options.get_option_at_index(0).prompt) == "ab12  due 09 Mar 2024  weigh [/] again"
        await pilot.press("escape")
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, LinkedConsults))
        assert "Baby [/b] A" in str(app.screen.query_one("Label").content)
        await pilot.press("escape")
        await menu(app, pilot, "f")
        await wait_for(pilot, lambda: isinstance(app.screen, FollowupDialog))
        await pilot.press(*"[/]")
        assert str(app.screen.query_one("#day").content) == "due '[/]': expected YYYY-MM-DD, +Nd or +Nw"
        await pilot.press("escape")
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CaseCardForm")
        app.screen.set_value("vitals.bp", "[/]")  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen.error_of("vitals.bp") == (  # type: ignore[attr-defined]
            "! vitals.bp: '[/]' is not a blood pressure like 140/90 (mmHg)"
        )

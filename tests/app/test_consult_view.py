"""One consult: honest states, compose (send, new line, recall), incoming messages, back."""

from __future__ import annotations

from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.dialogs import HelpScreen
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import Conversation, MessageLine
from medcomm.errors import LimitExceeded
from tests.app.helpers import (
    FEVER,
    HEADACHE,
    STOCK,
    clinic,
    desk,
    messages,
    open_view,
    settle,
    shows,
    wait_for,
)


def compose(app: object) -> ComposeBox:
    return app.screen.query_one(ComposeBox)  # type: ignore[attr-defined]


def widget_of(app: object, text: str) -> MessageLine:
    return next(w for w in app.screen.query(MessageLine) if w.line.text == text)  # type: ignore[attr-defined]


async def test_opens_with_title_and_every_message_in_its_honest_state() -> None:
    async with desk(clinic()) as (app, pilot):
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView) and compose(app).has_focus)
        assert str(app.screen.query_one("#title").content) == "k7m2qd · Boy, 6, fever 4 days · amina, dr.chen"
        assert messages(app) == [
            "   #1 09:05 amina: Temp 39.2 C, RR 44/min, SpO2 91% on air.  [✓✓ read]",
            "   #2 09:06 dr.chen: Any chest indrawing or danger signs?",
            "   #3 09:07 amina: Mild indrawing, drinking poorly.  [✓✓ delivered]",
            "   #4 09:08 amina: Weight 19 kg.  [✓ stored]",
            "   #5 09:09 dr.chen: Severe pneumonia: first dose of antibiotics, then refer.",
            "   #- 09:10 amina: Ambulance requested.  [… queued]",
            "   #- 09:11 amina: Referral letter sent?  [✗ failed]",
        ]


async def test_system_lines_are_shown_without_a_state() -> None:
    fake = clinic()
    fake.add_message(HEADACHE, "amina", "added midwife.ruth", kind="system")
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        assert messages(app)[-1] == "   #3 09:12 · amina added midwife.ruth"


async def test_enter_sends_and_the_line_follows_the_relay_from_queued_to_read() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press(*"MgSO4", "enter")
        await wait_for(pilot, lambda: len(messages(app)) == 3)
        assert fake.queued == [(HEADACHE, "MgSO4")]
        assert compose(app).text == ""
        assert messages(app)[-1] == "   #- 09:12 amina: MgSO4  [… queued]"
        line = fake.outbox[-1]
        widget = widget_of(app, "MgSO4")

        fake.ack(line.id)
        await shows(pilot, lambda: messages(app)[-1], "   #3 09:13 amina: MgSO4  [✓ stored]")
        fake.deliver(line.id)
        await shows(pilot, lambda: messages(app)[-1], "   #3 09:13 amina: MgSO4  [✓✓ delivered]")
        fake.read(line.id)
        await shows(
            pilot,
            lambda: messages(app)[-2:],
            [
                "   #2 09:04 amina: BP 150/100 twice, protein ++.  [✓✓ read]",
                "   #3 09:13 amina: MgSO4  [✓✓ read]",
            ],
        )
        assert widget_of(app, "MgSO4") is widget  # one widget from queued to read


async def test_a_refused_message_shows_failed_and_stays() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, STOCK)
        compose(app).insert("Send 20 boxes")
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.outbox_count() == 2)
        fake.fail(fake.find("Send 20 boxes").id)  # names no consult, like the real Rejected
        await shows(pilot, lambda: messages(app)[-1], "   #- 09:12 amina: Send 20 boxes  [✗ failed]")


async def test_ctrl_j_adds_a_line_instead_of_sending() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press(*"BP", "ctrl+j", *"Hb")
        await settle(pilot)
        assert compose(app).text == "BP\nHb"
        assert fake.queued == []
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.queued)
        assert fake.queued == [(HEADACHE, "BP\nHb")]


async def test_up_in_an_empty_compose_recalls_the_last_message_sent() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("up")  # nothing sent yet: Up is only a cursor move
        assert compose(app).text == ""
        await pilot.press(*"one", "enter", *"two", "enter")
        await wait_for(pilot, lambda: len(fake.queued) == 2)
        await pilot.press("up")
        assert compose(app).text == "two"
        await pilot.press("up")  # not empty any more: no second recall
        assert compose(app).text == "two"


async def test_blank_messages_are_not_sent() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("space", "ctrl+j", "space", "enter")
        await settle(pilot)
        assert fake.queued == []
        assert len(messages(app)) == 2


async def test_a_refused_queue_is_a_notification_not_a_crash() -> None:
    fake = clinic()
    fake.queue_failure = LimitExceeded("message of 70000 bytes is over the limit of 65536")
    async with desk(fake, notifications=True) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("x", "enter")
        await wait_for(pilot, lambda: list(app._notifications))
        (note,) = list(app._notifications)
        assert note.severity == "error" and "over the limit" in note.message
        assert isinstance(app.screen, ConsultView) and len(messages(app)) == 2


async def test_an_incoming_message_appears_and_is_marked_read() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await wait_for(pilot, lambda: fake.read_calls == [FEVER])  # opening reads the consult
        fake.receive(FEVER, "dr.chen", "Ambulance ETA?")
        # before the queued and failed lines of the user: the relay has stored it, they are not
        await shows(
            pilot,
            lambda: messages(app)[-3:],
            [
                "   #6 09:12 dr.chen: Ambulance ETA?",
                "   #- 09:10 amina: Ambulance requested.  [… queued]",
                "   #- 09:11 amina: Referral letter sent?  [✗ failed]",
            ],
        )
        await wait_for(pilot, lambda: fake.read_calls == [FEVER, FEVER])
        assert fake.consults[FEVER].read_upto == 6


async def test_a_burst_of_messages_is_one_read_receipt_and_keeps_the_end_in_view() -> None:
    fake = clinic()
    async with desk(fake, size=(80, 12)) as (app, pilot):
        await open_view(app, pilot, STOCK)
        await wait_for(pilot, lambda: fake.read_calls == [STOCK])
        for i in range(30):
            fake.receive(STOCK, "pharm.kofi", f"line {i}")
        await shows(pilot, lambda: messages(app)[-1], "  #32 09:41 pharm.kofi: line 29")
        conv = app.screen.query_one(Conversation)
        await wait_for(pilot, lambda: conv.max_scroll_y > 0 and conv.scroll_y == conv.max_scroll_y)
        await pilot.pause(0.6)
        assert fake.read_calls == [STOCK, STOCK]


async def test_a_message_for_another_consult_does_not_show_here() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        before = messages(app)
        fake.receive(STOCK, "pharm.kofi", "Order arrives Friday.")
        await settle(pilot, 0.6)
        assert messages(app) == before
        assert STOCK not in fake.read_calls


async def test_ctrl_o_ctrl_e_move_between_history_and_compose_and_escape_goes_back() -> None:
    async with desk(clinic()) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await pilot.press("ctrl+o")
        assert isinstance(app.focused, Conversation)
        await pilot.press("ctrl+e")
        assert isinstance(app.focused, ComposeBox)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))


async def test_a_message_that_arrives_under_the_help_screen_shows_once_it_closes() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        fake.receive(HEADACHE, "dr.osei", "Give magnesium sulfate now.")
        await settle(pilot)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        await settle(pilot)
        assert messages(app)[-1] == "   #3 09:12 dr.osei: Give magnesium sulfate now."

"""The desk survives terminal resizes (SSH windows change size all day) and offers the
command palette; both on the fake session."""

from __future__ import annotations

from textual.command import CommandPalette

from medcomm.app.screens.consults import ConsultList
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import Conversation
from tests.app.helpers import FEVER, clinic, desk, export_as_terminal, in_consult, open_view, wait_for


async def test_resizes_keep_the_list_and_the_consult_usable() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        for size in ((120, 40), (60, 20), (80, 24)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert app.size == size
            assert isinstance(app.screen, ConsultList) and app.screen.rows
            assert "Boy,&#160;6,&#160;fever" in export_as_terminal(app)  # SVG text: no-break spaces
        await open_view(app, pilot, FEVER)
        for size in ((120, 40), (50, 16), (80, 24)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert in_consult(app, FEVER)
            compose = app.screen.query_one(ComposeBox)
            convo = app.screen.query_one(Conversation)
            assert compose.region.height >= 1 and convo.region.height >= 1
            assert compose.region.bottom <= size[1] and compose.region.right <= size[0]
        await pilot.press(*"still typing")
        assert app.screen.query_one(ComposeBox).text == "still typing"
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.outbox and fake.outbox[-1].text == "still typing")


async def test_the_command_palette_opens_and_closes() -> None:
    async with desk(clinic()) as (app, pilot):
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))

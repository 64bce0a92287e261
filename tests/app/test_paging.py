"""A long consult opens with one page; older pages load at the top, one at a time."""

from __future__ import annotations

from medcomm.app.screens.consult import PAGE
from medcomm.app.widgets.conversation import Conversation, MessageLine
from tests.app.helpers import desk, open_view, settle, shows, wait_for
from tests.harness.fake_session import FakeSession


def long_consult(count: int) -> tuple[FakeSession, str, list[tuple[str, int | None]]]:
    """A consult of ``count`` messages and a log of the pages the app asked for."""
    fake = FakeSession("amina", seed=5)
    k = fake.add_consult("Chronic care: diabetes clinic", ["dr.chen"])
    fake.add_messages(k, count)
    asked: list[tuple[str, int | None]] = []
    page = fake.page

    def spy(consult: str, before: int | None = None, limit: int = 50) -> list:  # type: ignore[type-arg]
        asked.append((consult, before))
        return page(consult, before, limit)

    fake.page = spy  # type: ignore[method-assign]
    return fake, k, asked


def seqs(conv: Conversation) -> list[int | None]:
    return [w.line.seq for w in conv.query(MessageLine)]


def top_visible(conv: Conversation) -> int | None:
    """The seq of the first message whose line is inside the viewport."""
    top = conv.region.y
    return next(w.line.seq for w in conv.query(MessageLine) if w.region.y >= top)


async def test_a_10000_message_consult_opens_with_one_page_and_page_up_loads_the_one_before() -> None:
    fake, k, asked = long_consult(10_000)
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, k)
        conv = app.screen.query_one(Conversation)
        assert len(conv.query(MessageLine)) == PAGE <= 100
        assert seqs(conv) == list(range(10_001 - PAGE, 10_001))
        assert asked == [(k, None)]
        await wait_for(pilot, lambda: conv.scroll_y == conv.max_scroll_y > 0)  # the newest in view
        assert conv.first_seq == 9951 and not conv.complete

        await pilot.press("ctrl+o")
        assert app.focused is conv
        presses = 0
        while len(conv.query(MessageLine)) == PAGE:  # PageUp scrolls; at the top it asks for older
            assert presses < 10, "PageUp never loaded the page before"
            await pilot.press("pageup")
            await pilot.pause()
            presses += 1
        assert asked[-1] == (k, 9951) and presses > 1
        assert asked == [(k, None), (k, 9951)]
        assert seqs(conv) == list(range(9901, 10_001))
        # the reader's place: the message that was first is in view or just below it, not a jump
        await wait_for(pilot, lambda: conv.scroll_y > 0)
        await settle(pilot)
        assert 9951 - conv.size.height <= top_visible(conv) <= 9951
        await pilot.press("pageup")
        await settle(pilot)
        assert len(asked) == 2  # one page at a time: not at the top again yet


async def test_scrolling_to_the_top_loads_older_pages() -> None:
    fake, k, asked = long_consult(10_000)
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, k)
        conv = app.screen.query_one(Conversation)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: conv.scroll_y > 0)
        for pages in (2, 3):
            await pilot.press("home")
            await wait_for(pilot, lambda n=pages: len(conv.query(MessageLine)) == n * PAGE)
            await settle(pilot)
        assert asked == [(k, None), (k, 9951), (k, 9901)]
        assert seqs(conv)[0] == 9851
        fake.receive(k, "dr.chen", "HbA1c 7.1%")  # the window grows by one, nothing reloads
        await shows(pilot, lambda: len(conv.query(MessageLine)), 3 * PAGE + 1)
        assert str(conv.query(MessageLine).last().content).endswith("dr.chen: HbA1c 7.1%")
        assert len(asked) == 3


async def test_paging_stops_at_the_first_message() -> None:
    fake, k, asked = long_consult(120)
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, k)
        conv = app.screen.query_one(Conversation)
        await pilot.press("ctrl+o")
        for _ in range(6):
            if conv.complete:
                break
            await pilot.press("home")
            await settle(pilot, 0.05)
        assert seqs(conv) == list(range(1, 121))
        await pilot.press("home", "pageup")
        await settle(pilot, 0.05)
        assert conv.complete
        assert asked == [(k, None), (k, 71), (k, 21)]


async def test_loading_older_two_line_messages_keeps_the_place() -> None:
    fake = FakeSession("amina", seed=5)
    k = fake.add_consult("Chronic care: diabetes clinic", ["dr.chen"])
    for i in range(1, 201):  # each message wraps to two lines at 80 columns
        fake.add_message(
            k, "dr.chen", f"note {i}: " + "fasting glucose, post-meal glucose, insulin dose; " * 2
        )
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, k)
        conv = app.screen.query_one(Conversation)
        assert {w.outer_size.height for w in conv.query(MessageLine)} == {2}
        await pilot.press("ctrl+o", "home")
        await wait_for(pilot, lambda: len(conv.query(MessageLine)) == 2 * PAGE)
        await settle(pilot)
        assert seqs(conv)[0] == 101
        assert 151 - conv.size.height // 2 <= top_visible(conv) <= 151

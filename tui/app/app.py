"""The desk app and the one factory that the CLI and the tests share.

The app holds one session (real or fake) opened inside its own event loop, reacts to the
session's events by refreshing the screen that shows the changed consult, and coalesces
bursts (a catch-up of 500 messages is one refresh, not 500). It never runs a timer while
nothing happens.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.driver import Driver
from textual.screen import ModalScreen

from medcomm.app.ports import DeskSession, consult_of
from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.dialogs import HelpScreen, NewConsult, WelcomeScreen
from medcomm.app.widgets.status import StatusLine
from medcomm.errors import MedcommError, ProfileError

SessionOpener = Callable[[], AbstractAsyncContextManager[DeskSession]]
REFRESH_DELAY = 0.05  # coalescing window for bursts of events (seconds)
READ_DELAY = 0.5  # read receipts for an open consult are batched this long


class MedcommApp(App[None]):
    TITLE = "medcomm"
    CSS_PATH = "medcomm.tcss"
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, open_session: SessionOpener, *, frugal: bool = True) -> None:
        self._frugal = frugal  # read by get_driver_class, which the base __init__ calls
        super().__init__()
        self._open_session = open_session
        self.session: DeskSession | None = None
        self.me = ""
        self._dirty: set[str | None] = set()
        self._refresh_timer: Any = None
        self._read_pending: set[str] = set()
        self._read_timer: Any = None
        if frugal:
            self.animation_level = "none"
            # The terminal's own colours: no background or foreground escape on every
            # span of every line (about a third of a repaint's bytes), and it reads on the
            # light and the dark terminals people really have.
            self.theme = "ansi-dark"

    def get_driver_class(self) -> type[Driver]:
        """In a real terminal (not tests, not the web), frugal mode filters every write."""
        base = super().get_driver_class()
        if self._frugal and base.__name__ == "LinuxDriver":
            from medcomm.app.diet import frugal_driver

            return frugal_driver(base)
        return base

    def on_mount(self) -> None:
        self.hold_session()

    @work(exclusive=True, group="session")
    async def hold_session(self) -> None:
        """Open the session in the app's loop and keep it open until the app exits."""
        try:
            async with self._open_session() as session:
                self.session = session
                self.me = session.me
                session.on_event(self._on_session_event)
                await self.push_screen(ConsultList())
                self.refresh_status()
                await self._forever()
        except ProfileError as exc:
            await self.push_screen(WelcomeScreen(str(exc)))
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=15)

    async def _forever(self) -> None:
        import asyncio

        await asyncio.Event().wait()  # cancelled when the app exits

    # --- events from the session -----------------------------------------------------------

    def _on_session_event(self, event: Any) -> None:
        self._dirty.add(consult_of(event))
        if self._refresh_timer is None:
            self._refresh_timer = self.set_timer(REFRESH_DELAY, self._apply_refresh)

    async def _apply_refresh(self) -> None:
        self._refresh_timer = None
        dirty, self._dirty = self._dirty, set()
        # the screen under any dialog (help, new consult) is the one that shows messages
        screen = next((s for s in reversed(self.screen_stack) if not isinstance(s, ModalScreen)), self.screen)
        if isinstance(screen, ConsultView) and (None in dirty or screen.consult in dirty):
            await screen.refresh_messages()
        elif isinstance(screen, ConsultList) and dirty:
            screen.reload()  # redraws only if a row's text changed
        self.refresh_status()

    def refresh_status(self) -> None:
        if self.session is None:
            return
        status = self.session.status
        syncing = status.state == "online" and status.caught_up is None
        for line in self.screen.query(StatusLine):
            line.show(status, self.session.outbox_count(), syncing)

    def mark_read_soon(self, consult: str) -> None:
        self._read_pending.add(consult)
        if self._read_timer is None:
            self._read_timer = self.set_timer(READ_DELAY, self._send_reads)

    async def _send_reads(self) -> None:
        self._read_timer = None
        pending, self._read_pending = self._read_pending, set()
        if self.session is None:
            return
        for consult in pending:
            await self.session.mark_read(consult)

    # --- navigation ------------------------------------------------------------------------

    def open_consult(self, consult: str) -> None:
        self.push_screen(ConsultView(consult))

    @work(exclusive=True, group="new-consult")
    async def new_consult(self) -> None:
        """The form, with the relay's directory to pick members from when the link is up."""
        known: list[dict[str, str]] | None = None
        if self.session is not None and self.session.status.state == "online":
            try:
                known = await self.session.users(5.0)
            except MedcommError:
                known = None

        def done(result: tuple[str, list[str]] | None) -> None:
            if result is not None:
                self.create_consult(*result)

        await self.push_screen(NewConsult(known, self.me), done)

    @work(exclusive=False)
    async def create_consult(self, title: str, members: list[str]) -> None:
        if self.session is None:
            return
        try:
            consult = await self.session.open_consult(title, members, 30.0)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.open_consult(consult)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def build_app(open_session: SessionOpener | None = None, *, frugal: bool = True) -> MedcommApp:
    """The app as the CLI runs it (real session) or as tests run it (a fake one)."""
    if open_session is None:
        from medcomm.session.service import Session

        def open_session() -> AbstractAsyncContextManager[DeskSession]:
            return Session.open()  # type: ignore[return-value]

    return MedcommApp(open_session, frugal=frugal)

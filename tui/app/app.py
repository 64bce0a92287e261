"""The desk app and the one factory that the CLI and the tests share.

The app holds one session (real or fake) opened inside its own event loop, reacts to the
session's events by refreshing the screen that shows the changed consult, and coalesces
bursts (a catch-up of 500 messages is one refresh, not 500). It never runs a timer while
nothing happens.

Calls: the session's call controller reports changes through ``calls.changed`` (at most
once a second for meters), which goes through the same coalescing refresh. A call ringing
for us is announced in the status line of whatever screen is up, and F2/F3 answer or
decline it from anywhere (priority bindings, so they work under dialogs too); when nothing
rings they fall through to the consult view's own F2 (call) and F3 (hang up).

Voice notes: the consult view records (F7) and hands the recording to ``save_note``, which
makes it durable on this device first (the note shows at once as queued), then sends it.
Notes are sent like the outbox: whenever the link comes up (and once when the desk opens),
every note recorded here and not yet uploaded is sent, including those recorded offline or
by an earlier run; one round at a time, off the render path. The status line counts them
with the outbox ("2 waiting").

Images: the consult view's form hands a file to ``share_image`` and its tiles and original
go up in rounds like the notes' (``imagework``); images not yet in the outbox count as
waiting too. The viewer (``screens.viewer``) is a screen of its own.

The consult workflow: ``q`` on the consult list (or "Triage queue" in the command palette)
opens the queue (``screens.queue``), which the same coalesced refresh keeps live; in a
consult the view's case header, case card form and action menu (``screens.consult_case``)
are also offered in the command palette.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.driver import Driver
from textual.screen import ModalScreen, Screen

from medcomm.app.imagework import ImageWork, is_request
from medcomm.app.ports import DeskSession, IncomingCall, caller_of, consult_of
from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.dialogs import HelpScreen, NewConsult, WelcomeScreen
from medcomm.app.screens.queue import QueueScreen
from medcomm.app.screens.viewer import ImageViewer
from medcomm.app.widgets.callbar import PROFILES
from medcomm.app.widgets.status import Ring, StatusLine
from medcomm.core.wire import CallState
from medcomm.errors import LinkDown, MedcommError, ProfileError

SessionOpener = Callable[[], AbstractAsyncContextManager[DeskSession]]
REFRESH_DELAY = 0.05  # coalescing window for bursts of events (seconds)
READ_DELAY = 0.5  # read receipts for an open consult are batched this long
NOTES_TIMEOUT = 3600.0  # one round of sending notes; a dead link ends it sooner (LinkDown)


class MedcommApp(ImageWork, App[None]):
    TITLE = "medcomm"
    CSS_PATH = "medcomm.tcss"
    BINDINGS = [
        Binding("f1", "help", "Help"),
        # Priority: checked before any screen's bindings, even under a dialog; disabled
        # (and so passed on) while nothing rings for us.
        Binding("f2", "answer_call", "Answer", show=False, priority=True),
        Binding("f3", "decline_call", "Decline", show=False, priority=True),
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
        self._calls_dirty = False
        self._ended_call: object | None = None  # the ended call whose outcome was told
        self._titles: dict[str, str] = {}
        self.call_profile = PROFILES[0]
        self._notes_wanted = True  # pending notes may wait from an earlier run
        self._notes_sending = False
        self._link_state = ""
        self.init_images()
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
                session.calls.changed = self.calls_changed
                session.on_event(self._on_session_event)
                await self.push_screen(ConsultList())
                self.refresh_status()
                self._link_state = session.status.state
                self.send_notes()
                self.send_images()
                try:
                    await self._forever()
                finally:  # closing the session ends a call: no refresh of an app that is going
                    session.calls.changed = _ignore
                    await self._keep_recording(session)
                    session.stop_note()
                    await self.images_on_exit(session)
        except ProfileError as exc:
            await self.push_screen(WelcomeScreen(str(exc)))
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=15)

    async def action_quit(self) -> None:
        """Ctrl+Q: a note being recorded is made durable *before* the app starts to exit.
        Textual cancels the session's worker on exit without waiting for it, and a process
        that ends cancels what is left again, so the worker's own last step could be cut short
        and lose what was said (it still runs, for the other ways out)."""
        if self.session is not None:
            await self._keep_recording(self.session)
        self.exit()

    async def _keep_recording(self, session: Any) -> None:
        """Quitting while a note records keeps it (durable, sent by the next desk or
        `medcomm sync`): what a clinician said is not thrown away by a stray Ctrl+Q."""
        import asyncio

        if not getattr(session, "recording_note", False):
            return
        try:
            await asyncio.wait_for(asyncio.shield(session.record_note_stop()), 10)
        except (MedcommError, TimeoutError, asyncio.CancelledError):
            session.record_note_cancel()

    async def _forever(self) -> None:
        import asyncio

        await asyncio.Event().wait()  # cancelled when the app exits

    # --- events from the session -----------------------------------------------------------

    def _on_session_event(self, event: Any) -> None:
        if isinstance(event, CallState):  # changes no message: only the call bar and status line
            self.calls_changed()
            return
        self._dirty.add(consult_of(event))
        self._schedule_refresh()
        if is_request(event):  # someone asks for an original: ours go up with the next round
            self.send_images()

    def calls_changed(self) -> None:
        """``calls.changed``: the call view or the ringing calls changed (meters: once a second)."""
        self._calls_dirty = True
        self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        if self._refresh_timer is None:
            self._refresh_timer = self.set_timer(REFRESH_DELAY, self._apply_refresh)

    def _base_screen(self) -> Any:
        """The screen under any dialog (help, new consult): the one that shows messages."""
        return next((s for s in reversed(self.screen_stack) if not isinstance(s, ModalScreen)), self.screen)

    async def _apply_refresh(self) -> None:
        self._refresh_timer = None
        if not self.screen_stack:
            return  # the desk is closing (a worker's last word came after the screens went)
        dirty, self._dirty = self._dirty, set()
        calls_dirty, self._calls_dirty = self._calls_dirty, False
        screen = self._base_screen()
        if isinstance(screen, ConsultView):
            if None in dirty or screen.consult in dirty:
                await screen.refresh_messages()
            if calls_dirty:
                screen.refresh_call()  # redraws only if the bar's text changed
        elif isinstance(screen, ConsultList) and dirty:
            screen.reload()  # redraws only if a row's text changed
        elif isinstance(screen, QueueScreen) and dirty:
            await screen.reload()  # redraws only the cells whose text changed
        if isinstance(screen, ConsultView):
            screen.show_image_bar()  # a share's bar says when the link went (redraws on a change only)
        self.refresh_status()
        if self.session is not None:
            state = self.session.status.state
            came_up = state == "online" and self._link_state != "online"
            self._link_state = state
            if came_up:  # like the outbox: what waited for the link goes now
                self.send_notes()
                self.send_images()
        if calls_dirty:
            self._tell_call_end()

    def refresh_status(self) -> None:
        if self.session is None:
            return
        status = self.session.status
        syncing = status.state == "online" and status.caught_up is None
        ring = self._ring_notice()
        session = self.session
        waiting = session.outbox_count() + session.pending_note_count() + session.pending_image_count()
        for line in self.screen.query(StatusLine):
            line.show(status, waiting, syncing, ring)

    # --- calls -----------------------------------------------------------------------------

    def ringing_call(self) -> IncomingCall | None:
        """The call F2/F3 answer or decline from anywhere: the open consult's own if it rings
        (even under help), else the newest ringing for us."""
        if self.session is None:
            return None
        calls = self.session.calls
        screen = self._base_screen()
        if isinstance(screen, ConsultView) and screen.consult in calls.ringing:
            return calls.ringing[screen.consult]
        return calls.incoming()

    def _ring_notice(self) -> Ring | None:
        """What the status line announces: the ringing call, except in its own consult's
        view, where the call bar says it."""
        ring = self.ringing_call()
        if ring is None or (isinstance(self.screen, ConsultView) and self.screen.consult == ring.consult):
            return None
        assert self.session is not None
        return Ring(caller_of(ring), self._title(ring.consult), waiting=self.session.calls.active)

    def _title(self, consult: str) -> str:
        """A consult's title (or its id), from one overview per unknown consult, not per ring."""
        if consult not in self._titles and self.session is not None:
            self._titles.update({str(r["id"]): str(r["title"] or r["id"]) for r in self.session.overview()})
        return self._titles.get(consult, consult)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """F2/F3 belong to a ringing call only while one rings and we are in no other call
        (``answer`` would refuse); otherwise the key goes on to the screen's binding."""
        if action in ("answer_call", "decline_call"):
            return (
                self.session is not None and not self.session.calls.active and self.ringing_call() is not None
            )
        return True

    async def action_answer_call(self) -> None:
        """Answer, then show that consult (closing any dialog): an answer that fails (no
        sound device) still brings the user where they can write instead."""
        ring = self.ringing_call()
        if ring is None or self.session is None:
            return
        consult = ring.consult
        screen = self._base_screen()
        if isinstance(screen, ConsultView) and screen.recording is not None:
            saving = screen.finish_note()  # the note is kept and sent; the call needs the microphone
            if saving is not None:
                try:
                    await saving.wait()
                except Exception:  # save_note told the user; the call still gets answered
                    pass
        try:
            self.session.calls.answer(consult, self.call_profile)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=10, markup=False)
        while isinstance(self.screen, ModalScreen | ImageViewer):
            await self.pop_screen()
        if not (isinstance(self.screen, ConsultView) and self.screen.consult == consult):
            await self.push_screen(ConsultView(consult))
        self.calls_changed()

    def action_decline_call(self) -> None:
        ring = self.ringing_call()
        if ring is not None:
            self._decline(ring.consult)
            self.calls_changed()  # the session forgets the ring at once; the relay answers later

    @work(exclusive=False, group="calls")
    async def _decline(self, consult: str) -> None:
        if self.session is None:
            return
        try:
            await self.session.calls.decline(consult)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=8, markup=False)

    def next_profile(self) -> str:
        """F6: the voice profile the next call starts (or answers) with."""
        self.call_profile = PROFILES[(PROFILES.index(self.call_profile) + 1) % len(PROFILES)]
        return self.call_profile

    def _tell_call_end(self) -> None:
        """Once per call: how it ended (declined, missed, completed), or why it failed."""
        view = self.session.calls.view if self.session is not None else None
        if view is None or view.state != "ended" or view is self._ended_call:
            return
        self._ended_call = view
        if view.error:
            self.notify(f"call failed: {view.error}", severity="error", timeout=10, markup=False)
        else:
            self.notify(view.line or "call ended", timeout=4, markup=False)

    # --- voice notes -------------------------------------------------------------------------

    @work(exclusive=False, group="note-save")
    async def save_note(self, consult: str) -> None:
        """The recording just stopped: make it durable here (from then on nothing loses
        it), show it as queued, and send it. An app worker, not the view's: leaving the
        consult does not cancel it."""
        if self.session is None:
            return
        try:
            await self.session.record_note_stop()
        except MedcommError as exc:
            self.notify(f"voice note not saved: {exc}", severity="error", timeout=10, markup=False)
            return
        self._dirty.add(consult)
        self._schedule_refresh()
        self.send_notes()

    def send_notes(self) -> None:
        """Send the notes that wait for the link: now if it is up (after the round that is
        running, if one is), else when it comes up."""
        self._notes_wanted = True
        if self.session is not None and self.session.status.state == "online" and not self._notes_sending:
            self._notes_sending = True
            self._send_notes()

    @work(exclusive=False, group="notes")
    async def _send_notes(self) -> None:
        try:
            while self._notes_wanted and self.session is not None and self.session.status.state == "online":
                self._notes_wanted = False
                try:
                    result = await self.session.send_pending_notes(NOTES_TIMEOUT)
                except LinkDown:
                    self._notes_wanted = True  # they stay on this device; the link coming up retries
                    return
                except MedcommError as exc:
                    self.notify(f"voice notes not sent: {exc}", severity="error", timeout=10, markup=False)
                    return
                for note, error in result.failed:  # refused for good: kept here, marked failed
                    self.notify(f"voice note refused: {error}", severity="error", timeout=10, markup=False)
                    self._dirty.add(str(note.consult))
                self._dirty.update(str(item.consult) for item in result.queued)
                if result.queued or result.failed:
                    self._schedule_refresh()
        finally:
            self._notes_sending = False

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

    def action_open_queue(self) -> None:
        """``q`` on the consult list, or the palette: the triage queue (once: a second
        request while it is up does nothing)."""
        if self.session is not None and not isinstance(self.screen, QueueScreen):
            self.push_screen(QueueScreen())

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The palette (Ctrl+P): Textual's own, the queue, and in a consult its workflow."""
        yield from super().get_system_commands(screen)
        if self.session is None:
            return
        yield SystemCommand(
            "Triage queue", "Consults waiting for a doctor and follow-ups due (q)", self.action_open_queue
        )
        if isinstance(screen, ConsultView):
            view = screen
            yield SystemCommand("Case card", "Edit this consult's case card (Ctrl+T)", view.action_case_card)
            yield SystemCommand(
                "Workflow", "Claim, status, advice, follow-ups, assign (Ctrl+G)", view.action_case_menu
            )
            yield SystemCommand(
                "Other consults of this patient", "Linked consults (Ctrl+L)", view.action_linked
            )
            for what, title, help_ in (
                ("claim", "Claim this consult", "In consult, assigned to you"),
                ("advised", "Advise", "Status advised, with the advice"),
                ("followup", "Schedule a follow-up", "A due day and a reason"),
                ("closed", "Close this consult", "Status closed"),
            ):
                yield SystemCommand(title, help_, lambda what=what: view.run_case_action(what))  # type: ignore[misc]

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


def _ignore() -> None:
    """``calls.changed`` once the app has stopped listening."""


def build_app(open_session: SessionOpener | None = None, *, frugal: bool = True) -> MedcommApp:
    """The app as the CLI runs it (real session) or as tests run it (a fake one)."""
    if open_session is None:
        from medcomm.session.service import Session

        def open_session() -> AbstractAsyncContextManager[DeskSession]:
            return Session.open()  # type: ignore[return-value]

    return MedcommApp(open_session, frugal=frugal)

"""One consult: the conversation with honest states, paged history, compose, members, the
call bar with its keys (F2 call, F3 hang up, F4 mute, F6 voice profile), voice notes
(F7 record / stop and send, Esc cancel; F8 or Enter on a note plays it, F8 again stops),
and images (F5 attach, F9 or Enter on one: the viewer; see ``consult_images``), and the
consult's workflow under a one-line case header (Ctrl+T the case card, Ctrl+G claim, status,
advice, follow-ups, assign, Ctrl+L the patient's other consults; see ``consult_case``), and
F12 the members' safety numbers (``memberkeys``).

The call keys show in the footer only when they do something here ("f2 Call" in a quiet
consult, "f3 Hang up f4 Mute" during its call): two entries fit beside the others at 80
columns, four would not. F2/F3 on a ringing call are the app's (they work everywhere).
"f8 Play" shows only once the conversation holds a note.

A recording is the session's (the microphone, the samples); the screen only shows it: the
note bar says "recording 0:07 · F7 stop · Esc cancel", updated by a one-second timer that
runs only while recording. F7 again hands the recording to the app, which makes it durable
(it shows at once as a queued line) and sends it like the outbox, now or when the link is
up; Esc drops it. A note plays on the default speaker, fetched first if it is not on this
device ("fetching …" in the bar), and every error is a notification.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Static

from medcomm.adapters.localstore import Line
from medcomm.app.ports import LiveCall, NoteRecording, caller_of
from medcomm.app.screens.consult_case import ConsultCase
from medcomm.app.screens.consult_images import ConsultImages
from medcomm.app.screens.memberkeys import MemberKeys
from medcomm.app.widgets.callbar import PROFILE_NOTES, CallBar
from medcomm.app.widgets.caseheader import CaseHeader
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import Conversation, NoteLine
from medcomm.app.widgets.imagebar import ImageBar
from medcomm.app.widgets.notebar import SAVING, NoteBar, fetching_text, playing_text, recording_text
from medcomm.app.widgets.status import StatusLine
from medcomm.errors import MedcommError

if TYPE_CHECKING:
    from textual.timer import Timer
    from textual.worker import Worker

    from medcomm.app.app import MedcommApp

PAGE = 50
NOTE_TICK = 1.0  # seconds between updates of the recording bar: no faster timer, ever


class ConsultView(ConsultCase, ConsultImages, Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("f1", "app.help", "Help"),
        Binding("ctrl+o", "focus_history", "History"),
        Binding("ctrl+e", "focus_compose", "Compose"),
        Binding("f2", "call", "Call"),
        Binding("f3", "hang_up", "Hang up"),
        Binding("f4", "mute", "Mute"),
        # priority: the compose box (a TextArea) has F6 as "select line"
        Binding("f6", "profile", "Profile", show=False, priority=True),
        Binding("f7", "record", "Record"),
        Binding("f8", "play", "Play"),
        # out of the footer (no room at 80 columns): F1 lists them
        Binding("f5", "attach", "Attach image", show=False),
        Binding("f9", "view_image", "View image", show=False),
        Binding("ctrl+t", "case_card", "Case card", show=False),
        Binding("ctrl+g", "case_menu", "Workflow", show=False),
        Binding("ctrl+l", "linked", "Other consults", show=False),
        # not Ctrl+K: the compose box (a TextArea) uses it to delete to the end of the line
        Binding("f12", "member_keys", "Safety numbers", show=False),
        # only while recording (else it passes on to "Back")
        Binding("escape", "cancel_note", "Cancel note", show=False, priority=True),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]

    def __init__(self, consult: str) -> None:
        super().__init__()
        self.consult = consult
        self._keys: tuple[bool, bool] | None = None  # what the footer's call keys were made for
        self.recording: NoteRecording | None = None
        self.saving = False  # F7 stopped a recording; the app is making it durable
        self._ticker: Timer | None = None
        self.playing: Line | None = None  # the note being fetched or played
        self._fetch: tuple[int, int] | None = None  # (bytes, size) while it is being fetched
        self._fetch_shown = 0.0
        self._has_note: bool | None = None  # what the footer's F8 was made for
        self._ready = False  # the first page is shown

    @property
    def desk(self) -> MedcommApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", id="title", markup=False)  # a title is typed text: "[" is not markup
        yield CaseHeader(id="case")
        yield CallBar(id="callbar")
        yield Conversation(self.app.me, id="conversation")  # type: ignore[attr-defined]
        yield NoteBar(id="notebar")
        yield ImageBar(id="imagebar")
        yield ComposeBox(id="compose")
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        row = next((r for r in self.app.session.overview() if r["id"] == self.consult), None)  # type: ignore[attr-defined]
        members = ", ".join(row["members"]) if row else ""  # type: ignore[arg-type]
        title = row["title"] if row else ""
        self.query_one("#title", Static).update(f"{self.consult} · {title} · {members}")
        self.show_case()
        conv = self.query_one(Conversation)
        await conv.show_page(self._with_notes(self.desk.session.page(self.consult, None, PAGE)), PAGE)  # type: ignore[union-attr]
        self._note_keys()
        self.show_image_bar()
        self.query_one(ComposeBox).focus()
        self.app.mark_read_soon(self.consult)  # type: ignore[attr-defined]
        self.refresh_call()
        self.app.refresh_status()  # type: ignore[attr-defined]
        self._ready = True

    async def refresh_messages(self) -> None:
        conv = self.query_one(Conversation)
        lines = self.app.session.lines_since(self.consult, max(0, conv.first_loaded() - 1))  # type: ignore[attr-defined]
        if await conv.merge(self._with_notes(lines)):
            self.app.mark_read_soon(self.consult)  # type: ignore[attr-defined]
            self._note_keys()
        self.show_case()  # a case, status or follow-up change (redraws only if its text changed)

    def _with_notes(self, lines: list[Line]) -> list[Line]:
        """The lines with the notes and images made here that still wait to be uploaded
        (queued, or failed), the unsent ones in the order they were made; images worded
        as previews."""
        pending = self.pending_lines()
        if pending:
            known = {ln.id for ln in lines}
            unsent = [ln for ln in lines if ln.seq is None] + [p for p in pending if p.id not in known]
            lines = [ln for ln in lines if ln.seq is not None] + sorted(unsent, key=lambda ln: ln.time)
        return self.with_images(lines)

    async def on_conversation_load_older(self, event: Conversation.LoadOlder) -> None:
        conv = self.query_one(Conversation)
        older = self.app.session.page(self.consult, event.before, PAGE)  # type: ignore[attr-defined]
        await conv.prepend(self.with_images(older), PAGE)

    async def on_screen_resume(self) -> None:
        self.app.refresh_status()  # type: ignore[attr-defined]
        self.show_image_bar()
        if self._ready:  # back from the viewer (or help): what of an image is here may have changed
            await self.refresh_messages()

    def on_compose_box_submitted(self, event: ComposeBox.Submitted) -> None:
        self.send(event.text)

    @work(exclusive=False)
    async def send(self, text: str) -> None:
        try:
            await self.app.session.queue_text(self.consult, text)  # type: ignore[attr-defined]
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            compose = self.query_one(ComposeBox)
            if not compose.text:  # give the draft back rather than lose it
                compose.insert(text)
            return
        await self.refresh_messages()
        self.app.refresh_status()  # type: ignore[attr-defined]

    def action_focus_history(self) -> None:
        self.query_one(Conversation).focus()

    def action_focus_compose(self) -> None:
        self.query_one(ComposeBox).focus()

    def action_member_keys(self) -> None:
        """F12: the members' safety numbers, to compare aloud and mark verified."""
        if self.desk.session is not None:
            self.desk.push_screen(MemberKeys(self.consult, self.desk.session))

    # --- the call bar ----------------------------------------------------------------------

    def live_call(self) -> LiveCall | None:
        """The desk's call, if it is in this consult and not over."""
        session = self.desk.session
        view = session.calls.view if session is not None else None
        if view is None or view.consult != self.consult or view.state == "ended":
            return None
        return view

    def refresh_call(self) -> None:
        """Bring the bar (and, if what the call keys do changed, the footer) up to date;
        each redraws only on a change, so the once-a-second meters cost the bar's line."""
        session = self.desk.session
        if session is None:
            return
        live = self.live_call()
        ring = session.calls.ringing.get(self.consult)
        caller = caller_of(ring) if ring is not None else None
        self.query_one(CallBar).show(live, caller, self.desk.call_profile)
        keys = (live is not None, bool(self.desk.check_action("answer_call", ())))
        if keys != self._keys:
            if self._keys is not None:
                self.refresh_bindings()  # the footer redraws: only when a call comes or goes
            self._keys = keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """F2 calls only when this consult has no call; F3 and F4 act only on its call (so
        they are in the footer only then). Esc cancels a recording only while there is one
        (else it goes back); F8 is offered once there is a note to play."""
        if action == "call":
            return self.live_call() is None
        if action in ("hang_up", "mute"):
            return self.live_call() is not None
        if action == "cancel_note":
            return self.recording is not None
        if action == "record":  # not during this consult's call (the footer has no room)
            return self.live_call() is None or self.recording is not None
        if action == "play":
            return self.playing is not None or self.query_one(Conversation).newest_note() is not None
        if action == "focus_history":  # not in the footer where it does nothing (room at 80 columns)
            conv = self.query_one(Conversation)
            return self.focused is None or not (self.focused is conv or conv in self.focused.ancestors)
        return True

    def action_call(self) -> None:
        """Place a call in this consult (or answer it, if it rings and the app did not take
        the key): the sound devices open now, and a missing one is a notification."""
        session = self.desk.session
        if session is None:
            return
        if self.recording is not None or self.saving:
            self.notify("finish the voice note first: F7 sends it, Esc cancels it", timeout=6)
            return
        try:
            if self.consult in session.calls.ringing:
                session.calls.answer(self.consult, self.desk.call_profile)
            else:
                session.calls.start(self.consult, self.desk.call_profile)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=10, markup=False)
        self.desk.calls_changed()

    def action_hang_up(self) -> None:
        if self.desk.session is not None and self.live_call() is not None:
            self.desk.session.calls.hangup()
            self.desk.calls_changed()

    def action_mute(self) -> None:
        if self.desk.session is not None and self.live_call() is not None:
            self.desk.session.calls.mute()
            self.refresh_call()

    def action_profile(self) -> None:
        """F6: the profile of the next call; the bar shows it, or a short note when the bar
        does not (no call here yet, or no room for it beside the meters)."""
        profile = self.desk.next_profile()
        self.refresh_call()
        bar = self.query_one(CallBar)
        if not bar.display or f"profile {profile}" not in bar.text and f"next {profile}" not in bar.text:
            self.notify(f"next call: {profile} ({PROFILE_NOTES[profile]})", timeout=4)

    # --- voice notes -----------------------------------------------------------------------

    def _note_keys(self) -> None:
        """The footer offers F8 once the conversation holds a note (one redraw, then)."""
        has_note = self.query_one(Conversation).newest_note() is not None
        if has_note != self._has_note:
            if self._has_note is not None:
                self.refresh_bindings()
            self._has_note = has_note

    def show_note_bar(self) -> None:
        """Recording, saving, fetching or playing, in that order; nothing: no bar."""
        try:
            bar = self.query_one(NoteBar)
        except NoMatches:
            return  # the view is going (a playback stopped by leaving it)
        if self.recording is not None:
            bar.show(recording_text(self.recording), recording=True)
        elif self.saving:
            bar.show(SAVING)
        elif self.playing is not None:
            fetch = self._fetch
            if fetch is not None and (fetch[1] == 0 or fetch[0] < fetch[1]):
                bar.show(fetching_text(self.playing.text, *fetch))
            else:
                bar.show(playing_text(self.playing.text))
        else:
            bar.show("")

    def action_record(self) -> None:
        """F7: start recording (the microphone opens now: a missing one is a notification),
        or, while recording, stop and send."""
        if self.recording is not None:
            self.finish_note()
            return
        session = self.desk.session
        if session is None or self.saving:
            return
        if session.calls.active:
            self.notify("in a call: record the voice note once it ends", timeout=6)
            return
        self.stop_playing()  # one sound at a time
        try:
            self.recording = session.record_note_start(self.consult)
        except MedcommError as exc:
            self.notify(str(exc), severity="error", timeout=10, markup=False)
            return
        self._ticker = self.set_interval(NOTE_TICK, self._tick)
        self.show_note_bar()

    def _tick(self) -> None:
        """Once a second while recording: the bar's clock (one line, only if it changed),
        or, if the recording stopped by itself (its length limit, the microphone went
        away), send what was recorded."""
        recording = self.recording
        if recording is None:
            return
        if recording.ended:
            self.notify("the recording stopped by itself: sending the voice note", timeout=6)
            self.finish_note()
            return
        self.show_note_bar()

    def _end_recording(self) -> NoteRecording | None:
        recording, self.recording = self.recording, None
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        return recording

    def finish_note(self) -> Worker[None] | None:
        """F7 while recording: the app saves the note (durable, then shown as queued) and
        sends it; returns the app's worker (an answered call waits for the microphone)."""
        if self._end_recording() is None:
            return None
        self.saving = True
        self.show_note_bar()
        worker = self.desk.save_note(self.consult)
        self._saved(worker)
        return worker

    @work(exclusive=False, group="note-saved")
    async def _saved(self, worker: Worker[None]) -> None:
        try:
            await worker.wait()
        except Exception:  # the app's worker told the user already
            pass
        finally:
            self.saving = False
            self.show_note_bar()

    def action_cancel_note(self) -> None:
        """Esc while recording: the microphone closes, nothing is kept or sent."""
        if self._end_recording() is None:
            return
        if self.desk.session is not None:
            self.desk.session.record_note_cancel()
        self.show_note_bar()
        self.notify("voice note cancelled: nothing was sent", timeout=4)

    def action_play(self) -> None:
        """F8: play the note that has the focus, else the newest one; stop one that plays."""
        if self.playing is not None:
            self.stop_playing()
            return
        focused = self.focused
        line = focused.line if isinstance(focused, NoteLine) else self.query_one(Conversation).newest_note()
        if line is None:
            self.notify("no voice note in this consult yet", timeout=4)
            return
        self.play_note(line)

    def on_conversation_play_note(self, event: Conversation.PlayNote) -> None:
        """Enter on a note: play it (or stop it, if it is the one playing)."""
        event.stop()
        if self.playing is not None and self.playing.id == event.line.id:
            self.stop_playing()
        else:
            self.play_note(event.line)

    def stop_playing(self) -> None:
        if self.playing is None:
            return
        self.workers.cancel_group(self, "play")  # a fetch stops too (it resumes next time)
        if self.desk.session is not None:
            self.desk.session.stop_note()

    @work(exclusive=True, group="play")
    async def play_note(self, line: Line) -> None:
        session = self.desk.session
        if session is None:
            return
        if self.recording is not None or self.saving:
            self.notify("recording: F7 sends the voice note, Esc cancels it", timeout=6)
            return
        if session.calls.active:
            self.notify("in a call: play the voice note once it ends", timeout=6)
            return

        def progress(done: int, total: int) -> None:
            """Fetching: the bar at most once a second (a fast link reports every 8 KiB)."""
            now = time.monotonic()
            shown, self._fetch = self._fetch, (done, total)
            if shown is None or done >= total or now - self._fetch_shown >= NOTE_TICK:
                self._fetch_shown = now
                self.show_note_bar()

        self.playing, self._fetch = line, None
        self.show_note_bar()
        try:
            await session.play_note(line.id, progress)
        except MedcommError as exc:
            self.notify(f"cannot play the voice note: {exc}", severity="error", timeout=10, markup=False)
        finally:
            if self.playing is line:  # not if another note took over (Enter on it)
                self.playing, self._fetch = None, None
            self.show_note_bar()

"""Voice notes in the desk: F7 records (the bar), F7 again saves and sends, Esc cancels; the
note line and its states; notes recorded offline go when the link comes up; F8 / Enter play
(fetching first); errors as notifications; a recording that costs one line a second; and the
real Session's desk methods on a WAV microphone and speaker against a real relay."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import NoteLine
from medcomm.app.widgets.notebar import NoteBar, clock, fetching_text
from medcomm.errors import AccessDenied, UsageError, VoiceUnavailable
from tests.app.helpers import (
    FEVER,
    HEADACHE,
    clinic,
    desk,
    illegible_cells,
    in_consult,
    messages,
    notes,
    open_view,
    refreshes,
    settle,
    shown_text,
    shows,
    status_text,
    wait_for,
)
from tests.harness.fake_session import FakeSession

RECORDING = "recording 0:00 · F7 stop · Esc cancel"
NOTE = "   #- 09:12 amina: ▶ voice note 0:07 (14.0 KB)  [… queued]"


def bar(app: Any) -> NoteBar:
    return app.screen.query_one(NoteBar)


def bar_text(app: Any) -> str:
    return shown_text(app, NoteBar)


def footer_keys(app: Any) -> set[str]:
    return {key for key, active in app.screen.active_bindings.items() if active.binding.show}


async def record(app: Any, pilot: Any, fake: FakeSession, seconds: float = 7) -> str:
    """F7, ``seconds`` of talk, F7: the new note's id."""

    def stops() -> list[tuple[object, ...]]:
        return [a for a in fake.notes_asked if a[0] == "stop"]

    before = len(stops())
    await pilot.press("f7")
    await wait_for(pilot, lambda: fake.recording is not None)
    fake.recording.seconds = seconds  # type: ignore[union-attr]
    await pilot.press("f7")
    await wait_for(pilot, lambda: len(stops()) > before)
    return str(stops()[-1][2])


async def open_notes(app: Any, pilot: Any, fake: FakeSession, consult: str) -> None:
    """Open ``consult``; forget the round of sending the desk does when it opens."""
    await open_view(app, pilot, consult)
    fake.notes_asked.clear()


# --- record, send, cancel ---------------------------------------------------------------------


async def test_f7_records_with_a_bar_and_f7_again_shows_the_note_queued_then_its_states() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        assert fake.notes_asked == [("send",)]  # opening, the desk sent what waited (nothing)
        fake.notes_asked.clear()
        assert "f7" in footer_keys(app) and "f8" not in footer_keys(app)  # no note to play yet
        await pilot.press(*"BP", "f7")  # from the compose box, with a draft
        await wait_for(pilot, lambda: fake.notes_asked == [("start", HEADACHE)])
        assert bar_text(app) == RECORDING and bar(app).has_class("-recording")
        assert app.screen.query_one(ComposeBox).text == "BP"  # F7 is not "select all" there
        fake.recording.seconds = 6.6  # type: ignore[union-attr]
        await shows(pilot, lambda: bar_text(app), "recording 0:07 · F7 stop · Esc cancel", timeout=2.5)

        await pilot.press("f7")
        note = NOTE.replace("14.0", "13.2")
        await shows(pilot, lambda: messages(app)[-1], note)  # durable first, at once, queued
        (_, _, note_id) = fake.notes_asked[1]
        await wait_for(pilot, lambda: ("send",) in fake.notes_asked)  # the link is up: it goes
        assert fake.outbox[-1].id == note_id and fake.pending == []
        await shows(pilot, lambda: bar_text(app), "")
        assert "f8" in footer_keys(app) and app.screen.query_one(ComposeBox).text == "BP"
        await shows(pilot, lambda: status_text(app), "● online · rtt 250 ms · last contact 09:11 · 2 waiting")

        fake.ack(note_id)
        await shows(
            pilot, lambda: messages(app)[-1], "   #3 09:13 amina: ▶ voice note 0:07 (13.2 KB)  [✓ stored]"
        )
        fake.deliver(note_id)
        await shows(pilot, lambda: messages(app)[-1].endswith("[✓✓ delivered]"), True)
        fake.read(note_id)
        await shows(pilot, lambda: messages(app)[-1].endswith("[✓✓ read]"), True)
        assert len(messages(app)) == 3 and status_text(app).endswith("· 1 waiting")


async def test_esc_cancels_the_recording_and_then_goes_back() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_notes(app, pilot, fake, HEADACHE)
        await pilot.press("f7")
        await shows(pilot, lambda: bar_text(app), RECORDING)
        await pilot.press("escape")
        await shows(pilot, lambda: bar_text(app), "")
        assert fake.notes_asked == [("start", HEADACHE), ("cancel", HEADACHE)]
        assert isinstance(app.screen, ConsultView) and len(messages(app)) == 2 and fake.pending == []
        assert notes(app) == [("information", "voice note cancelled: nothing was sent")]
        await settle(pilot)
        assert ("send",) not in fake.notes_asked[1:] and fake.recording is None
        await pilot.press("escape")  # no recording: Esc is "back" again
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))


async def test_notes_recorded_offline_wait_on_the_device_and_go_when_the_link_comes_up() -> None:
    fake = clinic()
    fake.set_status(state="offline", rtt=None, error="no route")
    earlier = fake.add_pending_note(FEVER, 30, 60_000)  # an earlier run could not send it
    async with desk(fake) as (app, pilot):
        await open_notes(app, pilot, fake, HEADACHE)
        note_id = await record(app, pilot, fake)
        await shows(pilot, lambda: messages(app)[-1], NOTE.replace("09:12", "09:13"))
        await shows(pilot, lambda: status_text(app), "○ offline — 3 waiting (no route)")
        assert [a for a in fake.notes_asked if a == ("send",)] == []  # nothing tried while offline
        assert [p.id for p in fake.pending] == [earlier.id, note_id]

        fake.set_status(state="online", rtt=0.25, error=None)
        await wait_for(pilot, lambda: fake.pending == [])
        assert fake.notes_asked.count(("send",)) == 1 and [q.id for q in fake.outbox][-2:] == [
            earlier.id,
            note_id,
        ]
        await settle(pilot)
        assert messages(app)[-1] == NOTE.replace("09:12", "09:13")  # still queued: the relay has not said
        fake.ack(note_id)
        await shows(pilot, lambda: messages(app)[-1].endswith("[✓ stored]"), True)


# --- playing --------------------------------------------------------------------------------


async def test_f8_fetches_then_plays_the_newest_note_and_f8_again_stops_it() -> None:
    fake = clinic()
    fake.add_note(FEVER, "dr.chen", 12, 9400)
    async with desk(fake) as (app, pilot):
        await open_notes(app, pilot, fake, FEVER)
        line = next(w.line for w in app.screen.query(NoteLine))
        assert "   #6 09:12 dr.chen: ▶ voice note 0:12 (9.4 KB)" in messages(app)
        fake.hold_fetch = fake.hold_playback = True
        await pilot.press("f8")
        await shows(pilot, lambda: bar_text(app), "fetching voice note 0:12 (9.4 KB)… · F8 stop")
        assert fake.notes_asked == [("play", line.id)]
        fake.finish_fetch()
        await shows(pilot, lambda: bar_text(app), "▶ playing voice note 0:12 (9.4 KB) · F8 stop")
        await pilot.press("f8")
        await shows(pilot, lambda: bar_text(app), "")
        assert fake.notes_asked == [("play", line.id), ("stop_playing", line.id)] and fake.playing is None

        await pilot.press("f8")  # on the device now: it plays at once, and to its end
        await shows(pilot, lambda: bar_text(app), "▶ playing voice note 0:12 (9.4 KB) · F8 stop")
        fake.finish_playing()
        await shows(pilot, lambda: bar_text(app), "")

        await pilot.press("f8")  # leaving the consult stops it
        await wait_for(pilot, lambda: fake.playing == line.id)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList) and fake.playing is None)


async def test_shift_tab_from_the_compose_box_picks_an_older_note_and_enter_plays_it() -> None:
    fake = clinic()
    older = fake.add_note(FEVER, "amina", 5, 2100, on_device=True)
    newer = fake.add_note(FEVER, "dr.chen", 12, 9400, on_device=True)
    async with desk(fake) as (app, pilot):
        await open_notes(app, pilot, fake, FEVER)
        await pilot.press("shift+tab")  # the newest note first
        await wait_for(pilot, lambda: isinstance(app.focused, NoteLine))
        assert app.focused.line.id == newer.id  # type: ignore[union-attr]
        await pilot.press("shift+tab", "enter")
        await wait_for(pilot, lambda: fake.notes_asked == [("play", older.id)])
        await pilot.press("f8")  # a note has the focus: F8 plays that one
        await wait_for(pilot, lambda: len(fake.notes_asked) == 2)
        assert fake.notes_asked[1] == ("play", older.id)
        await pilot.press("f7")  # F7 records from the history too
        await wait_for(pilot, lambda: fake.notes_asked[-1] == ("start", FEVER))
        await pilot.press("escape", "tab", "tab")  # on to the compose box: typing works as before
        await wait_for(pilot, lambda: isinstance(app.focused, ComposeBox))
        assert fake.recording is None and isinstance(app.screen, ConsultView)


# --- errors are notifications ---------------------------------------------------------------


async def test_every_note_error_is_a_notification_and_the_desk_goes_on() -> None:
    fake = clinic()
    fake.add_note(FEVER, "dr.chen", 12, 9400)
    missing = "PortAudio is missing: sudo apt-get install libportaudio2"
    async with desk(fake, notifications=True) as (app, pilot):
        await open_notes(app, pilot, fake, FEVER)
        fake.fail_next_record(VoiceUnavailable(missing, missing="portaudio"))
        await pilot.press("f7")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app) == [("error", missing)] and bar_text(app) == "" and fake.recording is None

        fake.play_failure = VoiceUnavailable("no speaker found on this machine")
        await pilot.press("f8")
        await wait_for(pilot, lambda: len(notes(app)) == 2)
        assert notes(app)[1] == ("error", "cannot play the voice note: no speaker found on this machine")
        await shows(pilot, lambda: bar_text(app), "")

        fake.save_failure = UsageError("nothing was recorded")
        await record(app, pilot, fake, 0)
        await wait_for(pilot, lambda: len(notes(app)) == 3)
        assert notes(app)[2] == ("error", "voice note not saved: nothing was recorded")
        await shows(pilot, lambda: bar_text(app), "")

        fake.note_refusal = AccessDenied("denied", "not a member of this consult")
        note_id = await record(app, pilot, fake, 3)
        await wait_for(pilot, lambda: len(notes(app)) == 4)
        assert notes(app)[3] == (
            "error",
            "voice note refused: relay refused: not a member of this consult (denied)",
        )
        await shows(pilot, lambda: messages(app)[-1].endswith("▶ voice note 0:03 (6.0 KB)  [✗ failed]"), True)
        assert fake.pending[-1].id == note_id and app.is_running and in_consult(app, FEVER)


async def test_a_call_and_a_recording_take_turns_with_the_microphone() -> None:
    fake = clinic()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_notes(app, pilot, fake, FEVER)
        await pilot.press("f7")
        await wait_for(pilot, lambda: fake.recording is not None)
        fake.recording.seconds = 4  # type: ignore[union-attr]
        fake.calls.ring(HEADACHE, "dr.osei")  # F2 answers it: the note is kept and sent first
        await shows(pilot, lambda: status_text(app).startswith("incoming call from dr.osei"), True)
        await pilot.press("f2")
        await wait_for(pilot, lambda: in_consult(app, HEADACHE) and fake.calls.active)
        assert [a[0] for a in fake.notes_asked[:2]] == ["start", "stop"]
        assert fake.calls.asked == [("answer", HEADACHE, "auto")]
        await wait_for(pilot, lambda: ("send",) in fake.notes_asked)
        assert fake.outbox[-1].kind == "note" and fake.outbox[-1].consult == FEVER
        assert "f7" not in footer_keys(app)  # in this consult's call: no room, no use

        await open_view(app, pilot, FEVER)  # another consult, the call goes on: F7 says why not
        await pilot.press("f7")
        await wait_for(pilot, lambda: notes(app))
        assert notes(app)[-1] == ("information", "in a call: record the voice note once it ends")
        assert fake.recording is None


# --- frugal ------------------------------------------------------------------------------------


async def test_a_recording_repaints_only_its_bar_and_at_most_once_a_second() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_notes(app, pilot, fake, HEADACHE)
        await pilot.press("f7")
        await shows(pilot, lambda: bar_text(app), RECORDING)
        await settle(pilot)
        with refreshes() as seen:
            fake.recording.seconds = 1.02  # type: ignore[union-attr]
            await shows(pilot, lambda: bar_text(app), "recording 0:01 · F7 stop · Esc cancel", timeout=1.5)
            await pilot.pause(1.1)  # a tick with the same clock: nothing repaints
            assert [w for w, _ in seen] == [bar(app)] and not any(layout for _, layout in seen)
        assert len(app.screen.query(NoteBar)) == 1 and bar(app).size.height == 1


def test_the_bar_texts() -> None:
    assert [clock(s) for s in (0, 6.6, 59.5, 102, 900)] == ["0:00", "0:07", "1:00", "1:42", "15:00"]
    assert fetching_text("voice note 0:12 (9.4 KB)", 0, 0) == "fetching voice note 0:12 (9.4 KB)… · F8 stop"
    assert fetching_text("voice note 0:12 (9.4 KB)", 4700, 9400).endswith("… 50% · F8 stop")


async def test_the_recording_bar_and_a_chosen_note_are_legible_in_16_colours(
    colour_system: Callable[[str], None],
) -> None:
    colour_system("standard")
    fake = clinic()
    fake.add_note(FEVER, "dr.chen", 12, 9400)
    async with desk(fake) as (app, pilot):
        await open_notes(app, pilot, fake, FEVER)
        await pilot.press("f7")
        await shows(pilot, lambda: bar_text(app), RECORDING)
        await pilot.press("shift+tab")
        await wait_for(pilot, lambda: isinstance(app.focused, NoteLine))
        await settle(pilot)
        assert illegible_cells(app) == []


# --- the real Session's desk methods --------------------------------------------------------


def tone_wav(path: Path, seconds: float) -> Path:
    t = np.arange(int(48_000 * seconds)) / 48_000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes())
    return path


@pytest.mark.timeout(60)
async def test_the_real_session_records_keeps_sends_and_plays_a_note(relay: Any, tmp_path: Path) -> None:
    """A WAV file as the microphone and another as the speaker: record, stop (pending, shown
    as a queued line), cancel, play from the device, send to a real relay; no sound card."""
    from medcomm.server.admin import enroll
    from medcomm.session.service import Session, login

    homes = {}
    for name, role in (("amina", "clinic"), ("dr.chen", "doctor")):
        homes[name] = tmp_path / name
        await login(relay.url, name, enroll(relay.data, name, role), home=homes[name])
    mic = tone_wav(tmp_path / "mic.wav", 3)
    async with Session.open(home=homes["amina"]) as s:
        consult = await s.open_consult("t", ["dr.chen"], 15)
        recording = s.record_note_start(consult, mic=str(mic))
        await asyncio.sleep(0.5)
        assert 0.3 < recording.seconds < 1.5 and not recording.ended
        with pytest.raises(UsageError):
            s.record_note_start(consult, mic=str(mic))  # one at a time
        note_id = await s.record_note_stop()
        (line,) = s.pending_notes(consult)
        assert (line.id, line.kind, line.state, line.seq) == (note_id, "note", "queued", None)
        assert line.text.startswith("voice note 0:0") and s.pending_note_count() == 1

        cancelled = s.record_note_start(consult, mic=str(mic))
        s.record_note_cancel()
        for _ in range(100):  # the microphone closes within a block
            if cancelled.finished:
                break
            await asyncio.sleep(0.02)
        assert cancelled.finished and s.pending_note_count() == 1

        heard: list[tuple[int, int]] = []
        out = tmp_path / "out.wav"
        played = await s.play_note(note_id, lambda d, t: heard.append((d, t)), speaker=str(out))
        assert 0.3 < played < 1.5 and heard == []  # on the device: nothing fetched
        assert out.stat().st_size > 20_000

        result = await s.send_pending_notes(30)
        assert [item.cid.hex() for item in result.queued] == [note_id] and s.pending_note_count() == 0
        assert s.pending_notes(consult) == []
        await s.flush(15)
        (stored,) = [ln for ln in s.history(consult) if ln.kind == "note"]
        assert stored.id == note_id and stored.state == "stored" and stored.text == line.text
    async with Session.open(home=homes["dr.chen"]) as doctor:
        await doctor.sync(15)
        heard = []
        await doctor.play_note(note_id, lambda d, t: heard.append((d, t)), speaker=str(tmp_path / "dr.wav"))
        assert heard[0] == (0, 0) and heard[-1][0] == heard[-1][1] > 0  # fetched first, then played


async def test_quitting_the_desk_while_recording_keeps_the_note(relay: Any, tmp_path: Path) -> None:
    """A stray Ctrl+Q must not throw away what a clinician said: the recording is stopped and
    kept on the device, pending, for the next desk or `medcomm sync`."""
    from medcomm.app.app import build_app
    from medcomm.server.admin import enroll
    from medcomm.session.service import Session, login

    home = tmp_path / "amina"
    await login(relay.url, "amina", enroll(relay.data, "amina", "clinic"), home=home)
    await login(relay.url, "dr.chen", enroll(relay.data, "dr.chen", "doctor"), home=tmp_path / "chen")
    mic = tone_wav(tmp_path / "mic.wav", 3)
    app = build_app(lambda: Session.open(home=home))
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(200):
            if app.session is not None and app.session.status.state == "online":
                break
            await pilot.pause(0.05)
        session = app.session
        assert session is not None
        consult = await session.open_consult("t", ["dr.chen"], 15)
        session.record_note_start(consult, mic=str(mic))
        await asyncio.sleep(0.6)
        await pilot.press("ctrl+q")
    async with Session.open(home=home, connect=False) as again:
        (line,) = again.pending_notes(consult)
        assert line.kind == "note" and line.state == "queued"

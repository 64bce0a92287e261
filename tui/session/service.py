"""The facade the CLI and the TUI use: one ``Session`` per running command or app.

It owns the local store and the link, runs the link in a background task, and offers the
few verbs the interfaces need (send, sync, history, tail, consults). Capabilities that come
later (calls, transfers) get modules of their own beside ``link`` and a verb here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from medcomm.adapters.keyring import KEY_KINDS
from medcomm.adapters.localstore import Line, LocalStore
from medcomm.adapters.profile import Profile, data_dir, load_profile
from medcomm.core import e2e, wire
from medcomm.core.delivery import Accepted, Acked, Event, OutItem, Rejected, Synced
from medcomm.errors import LimitExceeded, LinkDown, MedcommError, NotFound, RemoteError, UsageError
from medcomm.limits import WIRE, ClientLimits, client_limits
from medcomm.session.link import Link, LinkEvent, LinkStatus, Unlocked

log = logging.getLogger(__name__)
KEY_FLUSH = 5.0  # seconds a closing command waits for its key messages to be stored
TAIL_KEY_WAIT = 10.0  # seconds tail holds a message back for its key before showing it locked


class Session:
    def __init__(self, profile: Profile, store: LocalStore, link: Link) -> None:
        self.profile = profile
        self.store = store
        self.link = link
        store.before_enqueue = self._check_send
        if store.keyring is not None:
            link.before_submit = self._before_submit
            link.on_rekey = self._rekey
            store.keyring.verified_keys = self._verified_keys
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._keys_task: asyncio.Task[None] | None = None
        self._keys_wake = asyncio.Event()
        self._calls: Any = None

    def _verified_keys(self, user: str) -> tuple[bytes, ...] | None:
        """A member's device keys as verified by safety number (none taken beyond them once
        they changed), None when never verified."""
        from medcomm.adapters.trust import TrustStore

        with TrustStore(self.store.path.parent) as trust:
            known = trust.known(user)
        if known is None or known.state == "unverified":
            return None
        return known.keys if known.state == "verified" else ()

    async def _before_submit(self, item: OutItem) -> None:
        from medcomm.session.e2ekeys import before_submit

        await before_submit(self, item)

    async def _rekey(self, cid: bytes) -> None:
        """A member left that this device had not heard of: learn who is in from the relay,
        seal the consult's queue with a new key, give it to those members, send again."""
        row = self.store.db.execute("SELECT consult FROM outbox WHERE cid=?", (cid,)).fetchone()
        if row is None:
            return
        try:
            got = await self.link.request("members", {"consult": row[0]}, KEY_FLUSH * 4)
            self.store.set_members(row[0], [str(m) for m in got["members"]])  # type: ignore[index]
        except MedcommError as exc:
            log.info("members of consult=%s not learned before re-keying: %s", row[0], exc)
        item = self.store.rekey(cid)
        if item is not None:
            await self.link.submit(item)

    def _keys_listener(self, event: LinkEvent) -> None:
        """Key housekeeping runs after each catch-up and whenever keys or asks for them arrive."""
        if isinstance(event, Synced) or (isinstance(event, Accepted) and event.msg.kind in KEY_KINDS):
            self._keys_wake.set()
        elif isinstance(event, LinkStatus) and event.state == "online":
            self._keys_wake.set()

    async def _keys_loop(self) -> None:
        from medcomm.session.e2ekeys import maintain

        while not self._stop.is_set():
            await self._keys_wake.wait()
            self._keys_wake.clear()
            if self.link.status.state != "online" or self.store.keyring is None:
                continue
            try:
                await maintain(self)
            except MedcommError as exc:  # the link dropped mid-way: the next connection retries
                log.info("key housekeeping stopped: %s", exc)
                self._keys_wake.set()
                await asyncio.sleep(1.0)

    def _check_send(self, item: OutItem) -> None:
        from medcomm.session.verify import check_send

        check_send(self, item.consult)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        subscribe: bool = True,
        limits: ClientLimits | None = None,
        connect: bool = True,
        home: Path | None = None,
    ) -> AsyncIterator[Session]:
        """A session for the profile in ``home`` (default: $MEDCOMM_HOME or platform dirs)."""
        profile = load_profile(home)
        limits = limits or client_limits(dict(os.environ))
        store = LocalStore(data_dir(home), identity=e2e.Identity(profile.name, profile.seed))
        session = cls(profile, store, Link(profile, store, subscribe=subscribe, limits=limits))
        if connect:
            session._task = asyncio.ensure_future(session.link.run(session._stop))
            session.link.listeners.append(session._keys_listener)
            session._keys_task = asyncio.ensure_future(session._keys_loop())
        try:
            yield session
        finally:
            await session.close()

    @property
    def calls(self) -> Any:
        """The desk's call controller (``session.call.DeskCalls``), made on first use so
        that text-only commands never import the audio stack."""
        if self._calls is None:
            from medcomm.session.call import DeskCalls, SessionCallKeys

            self._calls = DeskCalls(self.link, self.me, keys=SessionCallKeys(self))
        return self._calls

    async def close(self) -> None:
        if self._calls is not None:
            await self._calls.close()
        await self._flush_keys()
        self._stop.set()
        if self._keys_task is not None:
            self._keys_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keys_task
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:  # a fatal link error was already reported to waiters
                pass
        self.store.close()

    async def _flush_keys(self) -> None:
        """Before a command exits: the keys its messages need go out with them (bounded), so a
        one-line ``send`` is readable at once, not after this device's next connection."""
        if self._keys_task is None or self.link.status.state != "online" or self.store.keyring is None:
            return
        from medcomm.session.e2ekeys import maintain

        def keys_queued() -> bool:
            marks = ",".join("?" * len(KEY_KINDS))
            query = f"SELECT 1 FROM outbox WHERE error IS NULL AND kind IN ({marks}) LIMIT 1"
            return self.store.db.execute(query, tuple(KEY_KINDS)).fetchone() is not None

        try:
            await asyncio.wait_for(maintain(self), KEY_FLUSH)
            if keys_queued():
                await self.link.wait_until(lambda: not keys_queued(), KEY_FLUSH)
        except (MedcommError, TimeoutError) as exc:
            log.info("keys not all given before exit (sent at the next connection): %s", exc)

    @property
    def me(self) -> str:
        return self.profile.name

    @property
    def status(self) -> LinkStatus:
        return self.link.status

    # --- chat -----------------------------------------------------------------------------

    async def queue_text(self, consult: str, text: str) -> OutItem:
        """Make the message durable in the outbox and hand it to the link; returns at once."""
        consult = _consult(consult)
        body = text.encode("utf-8")
        if not text.strip():
            raise UsageError("empty message: nothing to send")
        if len(body) > WIRE.max_text:
            raise LimitExceeded(f"message of {len(body)} bytes is over the limit of {WIRE.max_text}")
        item = OutItem(secrets.token_bytes(wire.CID_LEN), consult, wire.KINDS["text"], body)
        self.store.enqueue(item)
        await self.link.submit(item)
        return item

    async def wait_stored(self, item: OutItem, timeout: float) -> int:
        """Wait for the relay's acknowledgement of item; returns its seq."""
        result: dict[str, object] = {}

        def listen(event: Event | LinkStatus) -> None:
            if isinstance(event, Acked) and event.cid == item.cid:
                result["seq"] = event.seq
            elif isinstance(event, Rejected) and event.cid == item.cid:
                result["error"] = RemoteError(event.code, event.reason)

        self.link.listeners.append(listen)
        try:
            await self.link.wait_until(lambda: bool(result), timeout)
        finally:
            self.link.listeners.remove(listen)
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return int(result["seq"])  # type: ignore[arg-type]

    async def flush(self, timeout: float) -> None:
        """Deliver everything queued in the outbox (from this or earlier commands)."""
        await self.link.wait_until(lambda: self.link.core.unacked == 0, timeout)

    async def sync(self, timeout: float) -> None:
        """Catch up on every consult, open what the keys that came allow, and flush the outbox."""
        await self.link.wait_until(self.link.core.is_synced, timeout)
        if self.store.keyring is not None and self._keys_task is not None:
            from medcomm.session.e2ekeys import maintain

            await asyncio.wait_for(maintain(self), timeout)
        await self.flush(timeout)

    def history(self, consult: str, since: int = 0, limit: int | None = None) -> list[Line]:
        consult = _consult(consult)
        if not self.store.has_consult(consult):
            raise NotFound(f"no consult {consult} on this device (try medcomm consult list)")
        return list(self.store.history(consult, self.me, since, limit))

    def overview(self) -> list[dict[str, object]]:
        """Rows for a consult list (see LocalStore.overview)."""
        return self.store.overview(self.me)

    def page(self, consult: str, before: int | None = None, limit: int = 50) -> list[Line]:
        """The ``limit`` stored messages before seq ``before`` (default: the newest), plus the
        queued ones when paging from the end: a long consult is never loaded whole."""
        return list(self.store.history(consult, self.me, limit=limit, before=before, queued=before is None))

    def lines_since(self, consult: str, since: int) -> list[Line]:
        return list(self.store.history(consult, self.me, since=since))

    def outbox_count(self) -> int:
        return self.store.outbox_count()

    async def mark_read(self, consult: str) -> None:
        await self.link.mark_read(consult, self.store.last_seq(consult))

    def on_event(self, callback: Callable[[LinkEvent], None]) -> None:
        self.link.listeners.append(callback)

    async def tail(self, consult: str) -> AsyncIterator[Line]:
        """Yield messages of consult as they arrive, forever, across reconnects."""
        consult = _consult(consult)
        queue: asyncio.Queue[int] = asyncio.Queue()

        def listen(event: LinkEvent) -> None:
            if isinstance(event, Accepted) and event.msg.consult == consult:
                queue.put_nowait(event.msg.seq)
            elif isinstance(event, Acked) and event.consult == consult:
                queue.put_nowait(event.seq)
            elif isinstance(event, Unlocked):
                queue.put_nowait(0)

        self.link.listeners.append(listen)
        shown = self.store.last_seq(consult)
        held: dict[int, float] = {}  # a message waiting for its key: held back a moment, in order
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.get(), 1.0 if held else None)
                for line in self.store.history(consult, self.me, shown):
                    if line.seq is None:
                        break
                    if line.kind == "locked" and line.text.startswith("(encrypted"):
                        since = held.setdefault(line.seq, time.monotonic())
                        if time.monotonic() - since < TAIL_KEY_WAIT:
                            break  # its key is usually one round trip behind it
                    held.pop(line.seq, None)
                    shown = line.seq
                    yield line
        finally:
            self.link.listeners.remove(listen)

    # --- consults -------------------------------------------------------------------------

    async def open_consult(self, title: str, others: list[str], timeout: float) -> str:
        """Open a consult; its title (health data: "Boy, 6, fever") goes sealed in the consult,
        so the relay only ever learns who is in it."""
        title = title.strip()
        if not title or len(title) > WIRE.max_title:
            raise UsageError(f"a consult title is 1 to {WIRE.max_title} characters")
        sealed = self.store.keyring is not None
        args = {"title": "" if sealed else title, "with": others}
        result = await self.link.request("open", args, timeout)
        consult = str(result["id"])  # type: ignore[index]
        await self.link.wait_until(lambda: self.store.has_consult(consult), timeout)
        if sealed:
            item = OutItem(secrets.token_bytes(wire.CID_LEN), consult, wire.KINDS["title"], title.encode())
            self.store.enqueue(item)
            with self.store.db:
                self.store.db.execute("UPDATE consults SET title=? WHERE id=?", (title, consult))
            await self.link.submit(item)
            with contextlib.suppress(LinkDown):  # the members see the title with the consult
                await self.wait_stored(item, timeout)  # (if the link went, it stays queued)
        return consult

    async def add_member(self, consult: str, name: str, timeout: float) -> list[str]:
        result = await self.link.request("add", {"consult": _consult(consult), "name": name}, timeout)
        members = list(result["members"])  # type: ignore[index]
        if self.store.keyring is not None:
            from medcomm.session.e2ekeys import share_history

            self.store.set_members(consult, members)
            await share_history(self, consult, name)
        return members

    async def remove_member(self, consult: str, name: str, timeout: float) -> list[str]:
        """Take a member out; once the relay's note of it arrives, this and every other
        member's device seal new messages with keys the removed member never receives."""
        consult = _consult(consult)
        result = await self.link.request("remove", {"consult": consult, "name": name}, timeout)
        members = list(result["members"])  # type: ignore[index]
        if self.store.keyring is not None:
            self.store.set_members(consult, members)
            with self.store.db:
                self.store.keyring.retire(consult)  # not waiting for the note: our next message is new-keyed
        return members

    async def users(self, timeout: float) -> list[dict[str, str]]:
        """Enrolled users (name, role), for picking consult members."""
        return list(await self.link.request("users", {}, timeout))  # type: ignore[call-overload]

    async def whoami(self, timeout: float) -> dict[str, object]:
        return dict(await self.link.request("whoami", {}, timeout))  # type: ignore[arg-type]

    # --- voice notes, for the desk ----------------------------------------------------------
    # The CLI records with ``notes.record`` (until Ctrl-C); the desk needs a recording that a
    # key starts and stops while the UI stays live, and notes that play on the default speaker.

    _recording: _DeskRecording | None = None
    _playing: threading.Event | None = None

    def record_note_start(self, consult: str, mic: str = "") -> _DeskRecording:
        """Start recording a voice note for ``consult`` from a microphone ("" = the default,
        or a WAV file); it opens now, so a missing PortAudio or device raises here
        (VoiceUnavailable). One recording at a time (UsageError)."""
        from medcomm.adapters.audio import open_source
        from medcomm.adapters.oggopus import OGG
        from medcomm.errors import VoiceUnavailable
        from medcomm.session.transfer import check_consult

        consult = check_consult(consult)
        if self._recording is not None and not self._recording.finished:
            raise UsageError("a voice note is already being recorded")
        from medcomm.adapters import opus

        opus.load()  # no libopus: say so before anyone speaks for a minute
        try:
            source = open_source(mic)
            recording = _DeskRecording(consult, source, OGG.max_seconds)
            recording.start()
        except VoiceUnavailable as exc:
            raise VoiceUnavailable(_without_flag_hint(str(exc)), **exc.data) from None
        self._recording = recording
        return recording

    async def record_note_stop(self) -> str:
        """Stop the recording, encode it and make it durable on this device (blob + pending
        row, ``transfer.record_note``); returns the note's id (its message id, hex). Sending
        is ``send_pending_notes``."""
        from medcomm.adapters.oggopus import encode_note
        from medcomm.session.transfer import record_note

        recording, self._recording = self._recording, None
        if recording is None:
            raise UsageError("no voice note is being recorded")
        pcm = await asyncio.to_thread(recording.finish)
        ogg = await asyncio.to_thread(encode_note, pcm)
        note = await asyncio.to_thread(record_note, self, recording.consult, ogg)
        return note.cid.hex()

    @property
    def recording_note(self) -> bool:
        """A note is being recorded (the desk keeps it if it quits now)."""
        return self._recording is not None

    def record_note_cancel(self) -> None:
        """Drop the recording: the microphone closes, nothing is kept or sent."""
        recording, self._recording = self._recording, None
        if recording is not None:
            recording.cancel()

    def pending_notes(self, consult: str) -> list[Line]:
        """Notes recorded here for ``consult`` that are not in the outbox yet (still to
        upload), as history lines: "queued", or "failed" when the relay refused them."""
        from medcomm.adapters.localstore import note_text

        with self._note_cache() as cache:
            notes = [] if cache is None else cache.pending(include_failed=True)
        return [
            Line(
                n.consult,
                None,
                n.cid.hex(),
                self.me,
                int(n.created * 1000),
                "note",
                note_text(n.body),
                "failed" if n.error else "queued",
            )
            for n in notes
            if n.consult == consult
        ]

    def pending_note_count(self) -> int:
        """Notes waiting to be uploaded (not counting those the relay refused)."""
        with self._note_cache() as cache:
            return 0 if cache is None else cache.pending_count()

    async def send_pending_notes(self, timeout: float) -> Any:
        """Upload every pending note and queue its message (``transfer.send_pending_notes``;
        returns its ``NotesResult``). LinkDown when the link fails: the rest stay pending."""
        from medcomm.session.transfer import send_pending_notes

        return await send_pending_notes(self, timeout)

    async def play_note(
        self,
        note_id: str,
        progress: Callable[[int, int], None] | None = None,
        *,
        speaker: str = "",
        timeout: float = 300.0,
    ) -> float:
        """Play a voice note on a speaker ("" = the default, or a WAV file); returns the
        seconds played. The speaker is opened before anything is fetched (a missing one
        fails at once); a note not on this device is fetched first, and ``progress`` hears
        (0, 0) before the fetch starts and (bytes, size) as it goes. ``stop_note`` (or
        cancelling the caller) ends the playback."""
        from medcomm.adapters.oggopus import decode_note
        from medcomm.errors import VoiceUnavailable
        from medcomm.session import notes
        from medcomm.session.transfer import check_note_id, fetch_note

        check_note_id(note_id)
        try:
            sink = notes.open_output(None, speaker)
        except VoiceUnavailable as exc:
            raise VoiceUnavailable(_without_flag_hint(str(exc)), **exc.data) from None
        if progress is not None and not self._note_on_device(note_id):
            progress(0, 0)
        ogg = await fetch_note(self, note_id, timeout=timeout, progress=progress)
        pcm = await asyncio.to_thread(decode_note, ogg)
        stop = threading.Event()
        self._playing = stop
        try:
            return await asyncio.to_thread(notes.play, pcm, _StoppableSink(sink, stop))
        except asyncio.CancelledError:
            stop.set()  # the thread then runs out at once and closes the speaker
            raise
        finally:
            if self._playing is stop:
                self._playing = None

    def stop_note(self) -> None:
        """Stop the note that is playing, if any."""
        if self._playing is not None:
            self._playing.set()

    # --- images, for the desk: thin doors to medcomm.session.deskimages --------------------------

    async def share_image(
        self, consult: str, path: str, *, as_kind: str = "auto", caption: str = "", step: Any = None
    ) -> Any:
        from medcomm.session import deskimages

        return await deskimages.share_path(self, consult, path, as_kind=as_kind, caption=caption, step=step)

    def pending_images(self, consult: str) -> list[Line]:
        from medcomm.session import deskimages

        return deskimages.pending_lines(self, consult)

    def pending_image_count(self) -> int:
        from medcomm.session import deskimages

        return deskimages.pending_count(self)

    def image_summaries(self, ids: Any) -> Any:
        from medcomm.session import deskimages

        return deskimages.summaries(self, ids)

    async def send_pending_images(self, timeout: float, step: Any = None) -> Any:
        from medcomm.session import deskimages

        return await deskimages.send_pending(self, timeout, step)

    def continue_images_in_background(self) -> int | None:
        from medcomm.session import deskimages

        return deskimages.continue_in_background(self)

    async def open_image(self, image_id: str) -> Any:
        from medcomm.session import deskimages

        return await deskimages.open_image(self, image_id)

    # --- the consult workflow, for the desk: thin doors to medcomm.session.casework -----------

    def consult_state(self, consult: str) -> Any:
        from medcomm.session import casework

        return casework.consult_state(self, consult)

    def triage_queue(self, now_ms: int | None = None) -> list[Any]:
        from medcomm.session import casework

        return casework.triage_queue(self, now_ms)

    def linked_consults(self, consult: str) -> list[Any]:
        from medcomm.session import casework

        return casework.linked_consults(self, consult)

    def today(self) -> Any:
        from medcomm.session import casework

        return casework.today()

    async def update_case(self, consult: str, raw: dict[str, str | None]) -> OutItem | None:
        from medcomm.session import casework

        return await casework.update_case(self, consult, raw)

    async def change_status(self, consult: str, to: str, advice: str = "") -> OutItem:
        from medcomm.session import casework

        return await casework.set_status(self, consult, to, advice)

    async def claim(self, consult: str) -> OutItem:
        from medcomm.session import casework

        return await casework.claim(self, consult)

    async def assign(self, consult: str, name: str, timeout: float) -> OutItem:
        from medcomm.session import casework

        return await casework.assign(self, consult, name, timeout)

    async def add_followup(self, consult: str, due: Any, reason: str) -> tuple[OutItem, str]:
        from medcomm.session import casework

        return await casework.add_followup(self, consult, due, reason)

    async def close_followup(self, consult: str, fid: str | None, done: bool = True) -> tuple[OutItem, str]:
        from medcomm.session import casework

        return await casework.close_followup(self, consult, fid, done)

    def _note_on_device(self, note_id: str) -> bool:
        from medcomm.errors import MedcommError
        from medcomm.session.transfer import locate_note

        try:
            sha, _ = locate_note(self, note_id)
        except MedcommError:
            return False
        with self._note_cache() as cache:
            return cache is not None and cache.has(sha)

    @contextmanager
    def _note_cache(self) -> Iterator[Any]:
        """The blob cache with the pending notes, or None while this device has never kept
        one (the desk asks on every refresh: no file is created for that)."""
        from medcomm.adapters.blobcache import BlobCache

        directory = self.store.path.parent
        if not (directory / "pending.sqlite3").exists():
            yield None
            return
        with BlobCache(directory) as cache:
            yield cache

    # --- safety numbers, for the desk: thin doors to medcomm.session.verify ------------------

    async def verifications(self, consult: str, timeout: float) -> list[Any]:
        """The safety number with each other member of ``consult``, from keys fetched now
        (one request per member: a consult has a few; one deadline bounds them all)."""
        from medcomm.session import verify

        consult = _consult(consult)
        row = next((r for r in self.overview() if r["id"] == consult), None)
        if row is None:
            raise NotFound(f"no consult {consult} on this device")
        others = [m for m in row["members"] if m != self.me]  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        out: list[Any] = []
        for them in others:
            out.append(await verify.verification(self, them, max(0.1, deadline - time.monotonic())))
        return out

    async def confirm_member(self, them: str, number: str, timeout: float) -> Any:
        from medcomm.session import verify

        return await verify.confirm(self, them, number, timeout)


def _consult(consult: str) -> str:
    c = consult.strip().lower()
    try:
        return wire.consult_id(c)
    except Exception:
        raise UsageError(f"{consult!r} is not a consult id (6 letters/digits, e.g. k7m2qd)") from None


async def login(
    url: str,
    name: str,
    code: str,
    timeout: float = 30.0,
    home: Path | None = None,
    *,
    fingerprint: str | None = None,
    repin: bool = False,
    insecure: bool = False,
    confirm: Callable[[str], bool] | None = None,
) -> Profile:
    """Register this device's key with a one-time code; safe to re-run after a cut.

    A wss:// relay's key is pinned here: it must equal ``fingerprint`` or be confirmed by the
    person (``confirm``), and a re-login never silently accepts a key other than the pinned one.
    """
    from websockets.asyncio.client import connect

    from medcomm.adapters import tlspin
    from medcomm.adapters.profile import check_relay_url, load_or_create_seed, load_profile, save_profile
    from medcomm.errors import ProfileError, RelayKeyChanged, remote_error
    from medcomm.session.link import sign_challenge

    url = check_relay_url(url)
    tlspin.check_plain(url, insecure)
    name = wire.typed_user_name(name)
    pin: str | None = None
    if url.startswith("wss://"):
        seen = await tlspin.probe(url, timeout)
        try:
            before = load_profile(home)
        except ProfileError:
            before = None
        if before is not None and before.relay == url and before.pin and before.pin != seen and not repin:
            raise RelayKeyChanged(
                f"the relay's key changed: pinned {before.pin}, now {seen}. Nothing was sent. If its admin "
                "confirms the new key, run the same login with --repin",
                pinned=before.pin,
                seen=seen,
            )
        if fingerprint is not None:
            if tlspin.normalize_fingerprint(fingerprint) != seen:
                raise RelayKeyChanged(
                    f"the relay's key is {seen}, not the {fingerprint} you were given: nothing was sent",
                    pinned=fingerprint,
                    seen=seen,
                )
        elif not (before is not None and before.relay == url and before.pin == seen):
            if confirm is None or not confirm(seen):
                raise UsageError(f"relay key {seen} not accepted: nothing was sent")
        pin = seen
    seed = load_or_create_seed(home)  # durable before the first attempt: re-runs reuse the key
    options = tlspin.connect_options(url, pin)  # the key is checked again before the proof goes
    try:
        async with asyncio.timeout(timeout):
            async with connect(
                url, compression=None, max_size=WIRE.max_frame, user_agent_header=None, **options
            ) as ws:
                challenge = wire.decode(await ws.recv(), wire.RELAY_TYPES)
                if not isinstance(challenge, wire.Challenge):
                    raise LinkDown("relay did not start with a challenge")
                pubkey, sig = sign_challenge(seed, challenge.nonce, b"register")
                await ws.send(wire.encode(wire.Register(name, code.strip(), pubkey, sig)))
                answer = wire.decode(await ws.recv(), wire.RELAY_TYPES)
    except TimeoutError:
        raise LinkDown(f"no answer from {url} within {timeout:.0f} s; run the same login again") from None
    except OSError as exc:
        raise LinkDown(f"cannot reach {url}: {exc}; run the same login again") from None
    if isinstance(answer, wire.Err):
        raise remote_error(answer.code, answer.reason)
    if not isinstance(answer, wire.Welcome):
        raise LinkDown("unexpected answer from the relay")
    profile = Profile(relay=url, name=answer.name, role=answer.role, home=home, pin=pin, insecure=insecure)
    save_profile(profile)
    return profile


class _DeskRecording:
    """A voice note being recorded for the desk: a thread drains the microphone's ring into
    memory until ``finish``, ``cancel``, the note's length limit or the end of the device
    (unplugged, or a WAV file used as a microphone ran out)."""

    def __init__(self, consult: str, source: Any, max_seconds: float) -> None:
        from medcomm.adapters.audio import AUDIO

        self.consult = consult
        self._source = source
        self._rate = AUDIO.sample_rate
        self._block = AUDIO.block_samples
        self._limit = int(max_seconds * self._rate)
        self._parts: list[Any] = []
        self._got = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medcomm-note", daemon=True)

    def start(self) -> None:
        self._source.start()
        self._thread.start()

    @property
    def seconds(self) -> float:
        """Audio recorded so far."""
        return self._got / self._rate

    @property
    def ended(self) -> bool:
        """It stopped by itself (the length limit, or the microphone went away)."""
        return not self._thread.is_alive() and not self._stop.is_set()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self._got < self._limit and not self._source.ended:
                block = self._source.read(min(self._block, self._limit - self._got))
                if block is None:
                    time.sleep(0.02)
                    continue
                self._parts.append(block)
                self._got += len(block)
        except Exception as exc:  # a device that fails mid-note: keep what was recorded
            logging.getLogger("medcomm.notes").warning("recording stopped: %s", exc)
        finally:
            try:
                self._source.stop()
            except Exception as exc:
                logging.getLogger("medcomm.notes").warning("closing the microphone failed: %s", exc)

    def finish(self) -> Any:
        """Stop and return the samples (48 kHz mono int16); UsageError if there are none."""
        import numpy as np

        self._stop.set()
        self._thread.join(5.0)
        if not self._got:
            raise UsageError("nothing was recorded")
        return np.concatenate(self._parts)

    def cancel(self) -> None:
        self._stop.set()  # the thread closes the microphone within a block


class _StoppableSink:
    """A sink for ``notes.play`` that ``stop`` silences at once: once stopped it takes
    no more samples and reports nothing buffered, so the play loop runs out and closes it."""

    def __init__(self, sink: Any, stop: threading.Event) -> None:
        self._sink = sink
        self._stop = stop

    def start(self) -> None:
        self._sink.start()

    def write(self, pcm: Any) -> None:
        if not self._stop.is_set():
            self._sink.write(pcm)

    @property
    def buffered(self) -> int:
        return 0 if self._stop.is_set() else int(self._sink.buffered)

    def stop(self) -> None:
        self._sink.stop()


def _without_flag_hint(message: str) -> str:
    """The audio adapter's message without the CLI flag it suggests (the desk has none)."""
    return message.split("; use --")[0]

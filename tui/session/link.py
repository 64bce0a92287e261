"""The one WebSocket to the relay: connect, authenticate, resume, reconnect with backoff.

All protocol decisions live in ``core.delivery``; this module only moves bytes, persists
the core's events to the local store (before anything acknowledges them onward), and
tells listeners. Every wait is bounded: connection attempts by ``connect_timeout``,
callers by their own deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from medcomm.adapters.localstore import LocalStore
from medcomm.adapters.profile import Profile
from medcomm.adapters.sockopts import delay_acks, send_together
from medcomm.core import wire
from medcomm.core.delivery import (
    Accepted,
    Acked,
    Delivery,
    Event,
    Marks,
    OutItem,
    Rejected,
    backoff,
)
from medcomm.errors import (
    AuthError,
    LinkDown,
    MedcommError,
    RelayKeyChanged,
    UsageError,
    WireError,
    remote_error,
)
from medcomm.limits import CLIENT, ClientLimits

log = logging.getLogger("medcomm.link")


@dataclass
class LinkStatus:
    """What the status line shows: honest link state, round trip and what waits."""

    state: str = "offline"  # offline | connecting | online
    rtt: float | None = None
    last_contact: float | None = None
    connects: int = 0
    error: str | None = None
    # Reconnect timings (monotonic): TCP connect started, WebSocket open, caught up on all.
    connect_started: float | None = None
    opened: float | None = None
    caught_up: float | None = None
    early: bool = False  # the last connection's proof went in its upgrade request


@dataclass(frozen=True)
class Unlocked:
    """Messages shown as waiting for their key were opened in place: views re-read them."""

    count: int


LinkEvent = Event | LinkStatus | wire.CallState | Unlocked  # what listeners hear


def sign_challenge(seed: bytes, nonce: bytes, purpose: bytes) -> tuple[bytes, bytes]:
    from nacl.signing import SigningKey

    key = SigningKey(seed)
    return bytes(key.verify_key), key.sign(wire.auth_message(nonce, purpose)).signature


class Link:
    def __init__(
        self,
        profile: Profile,
        store: LocalStore,
        *,
        subscribe: bool = True,
        limits: ClientLimits = CLIENT,
    ) -> None:
        self.profile = profile
        self.store = store
        self.limits = limits
        self.core = Delivery(store.cursors(), store.ahead(), limits.outbox_inflight, subscribe=subscribe)
        for item in store.outbox():
            self.core.queue(item)
        self.status = LinkStatus()
        self.listeners: list[Callable[[LinkEvent], None]] = []
        self._ws: object | None = None
        self._rids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[object]] = {}
        self._changed = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._fatal: MedcommError | None = None
        self._offset_ms: int | None = None  # relay clock minus ours, learned at each connect
        self.voice_listener: Callable[[bytes], None] | None = None  # the call in progress
        # Cleared while a call is on: an 8 KiB chunk is 2.7 s of a 24 kbit/s uplink, and
        # voice queued behind it in the network would play seconds late.
        self.bulk_allowed = asyncio.Event()
        self.bulk_allowed.set()
        self.call_states: dict[str, wire.CallState] = {}  # live calls by consult, as last told
        self.voice_dropped = 0

    # --- public API -----------------------------------------------------------------------

    #: Awaited with each item before it is handed to the core; the session gives the item's
    #: end-to-end key to the consult's devices here, so the key goes ahead of the message.
    before_submit: Callable[[OutItem], Awaitable[None]] | None = None

    #: Called when the relay refuses an item sealed with a key in use before a member left.
    on_rekey: Callable[[bytes], Awaitable[None]] | None = None

    async def submit(self, item: OutItem) -> None:
        """Queue an item that is already durable in the local outbox (as sealed there)."""
        if self.before_submit is not None:
            await self.before_submit(item)
        await self._send_frames(self.core.queue(self.store.wire_item(item)))

    def notify_unlocked(self) -> None:
        """Tell listeners if messages were opened in place since the last time."""
        ring = self.store.keyring
        if ring is not None and ring.opened:
            opened, ring.opened = ring.opened, 0
            self._notify(Unlocked(opened))

    async def request(self, op: str, args: dict[str, object], timeout: float) -> object:
        """A control request; waits (bounded) for the link, then for the answer. Blob
        transfers wait while a call is on (voice before chat before image chunks)."""
        if op.startswith("blob.") and not self.bulk_allowed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.bulk_pause_max):  # not wait_for: see below
                    await self.bulk_allowed.wait()
        deadline = time.monotonic() + timeout
        await self.wait_until(lambda: self.status.state == "online", timeout)
        rid = next(self._rids)
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        try:
            await self._send_frames([wire.Request(rid, op, args)])
            # not wait_for: on Python 3.11 it returns the answer when it is cancelled in the loop
            # turn the answer lands in, and the caller's cancel is lost (a cancelled upload put on)
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise LinkDown(f"no answer from the relay within {timeout:.0f} s") from None
        finally:
            self._requests.pop(rid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # an answer whose asker was cancelled (a window's other get) is no error

    def send_voice(self, data: bytes, backlog_limit: int, *riders: bytes) -> int | None:
        """Write one voice frame now, ahead of anything queued in our own code; None if it
        was dropped (no link, or more than ``backlog_limit`` bytes still unsent: that audio
        would only play late). Returns the bytes still unsent before this frame, which the
        rate control reads as the sender-side queue. ``riders`` (feedback reports) go in the
        same TCP segment, after it: a segment of their own would cost 52 bytes of headers."""
        ws = self._ws
        transport = getattr(ws, "transport", None)
        if ws is None or transport is None or self.status.state != "online":
            self.voice_dropped += 1
            return None
        backlog = int(transport.get_write_buffer_size())
        if backlog > backlog_limit:
            self.voice_dropped += 1
            return None
        send = ws.send(data) if not riders else send_together(ws, (data, *riders))  # type: ignore[attr-defined]
        task = asyncio.ensure_future(send)
        task.add_done_callback(_quiet)
        return backlog

    async def mark_read(self, consult: str, seq: int) -> None:
        await self._send_frames(self.core.mark_read(consult, seq))

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until predicate() holds, re-checking on every change; LinkDown on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._fatal is not None:
                raise self._fatal
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkDown(self._down_reason(timeout))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # not wait_for: it can lose a cancel (request)
                    await self._changed.wait()

    def _down_reason(self, timeout: float) -> str:
        why = f" (last error: {self.status.error})" if self.status.error else ""
        return f"no link to {self.profile.relay} within {timeout:.0f} s{why}"

    # --- the connection loop --------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and reconnect until stop is set; an authentication refusal is final."""
        attempt = 0
        while not stop.is_set():
            self._set_state("connecting")
            connects = self.status.connects
            try:
                await self._session(stop)
            except (AuthError, RelayKeyChanged, UsageError) as exc:  # retrying cannot help
                self._fatal = exc
                self._set_state("offline", str(exc))
                self._changed.set()
                return
            except (OSError, TimeoutError, WireError, MedcommError) as exc:
                self._set_state("offline", _describe(exc))
            except Exception as exc:  # websockets' closed/handshake errors
                if not _is_link_error(exc):
                    raise
                self._set_state("offline", _describe(exc))
            finally:
                self.core.disconnected()
                self._ws = None
                for fut in self._requests.values():
                    if not fut.done():
                        fut.set_exception(LinkDown("link dropped before the answer"))
            if stop.is_set():
                break
            if self.status.connects > connects:
                attempt = 0  # that connection worked: a drop starts the backoff afresh
            delay = backoff(attempt, self.limits.backoff_first, self.limits.backoff_max, random.random())
            attempt += 1
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        self._set_state("offline")

    async def _session(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        started = time.monotonic()
        self.status.connect_started, self.status.opened, self.status.caught_up = started, None, None
        sub = self.core.resume_frame()
        sub_value = wire.header_value(sub) if sub is not None else ""
        if len(sub_value) > wire.MAX_EARLY_HEADER:
            sub_value = ""  # too many consults for a header: resume after the welcome instead
        from medcomm.adapters import tlspin

        tlspin.check_plain(self.profile.relay, self.profile.insecure)
        secure = tlspin.connect_options(self.profile.relay, self.profile.pin)  # key checked before the proof
        ws = await asyncio.wait_for(
            connect(
                self.profile.relay,
                compression=None,
                max_size=wire.WIRE.max_frame,
                max_queue=64,
                write_limit=self.limits.write_limit,
                ping_interval=self.limits.ping_interval,
                ping_timeout=self.limits.ping_timeout,
                open_timeout=self.limits.connect_timeout,
                close_timeout=2,
                user_agent_header=None,
                additional_headers=self._early_headers(sub_value),
                **secure,
            ),
            self.limits.connect_timeout,
        )
        try:
            self.status.opened = time.monotonic()
            first = await self._recv(ws, self.limits.connect_timeout)
            resumed = bool(sub_value)
            if isinstance(first, wire.Challenge):  # early proof not taken (clock, reuse): sign
                self._learn_clock(first.time)
                self.status.rtt = time.monotonic() - started  # TCP+upgrade ~ 2 RTT; refined below
                pubkey, sig = sign_challenge(self.profile.seed, first.nonce, b"auth")
                sent_auth = time.monotonic()
                await ws.send(wire.encode(wire.Auth(pubkey, sig)))  # type: ignore[attr-defined]
                # Pipelined: resume and outbox go right behind the proof, saving a round trip.
                self._ws = ws
                resumed = False
                await self._send_frames(self.core.connected(time.monotonic()))
                welcome = await self._recv(ws, self.limits.connect_timeout)
                rtt = time.monotonic() - sent_auth
            else:  # the upgrade request's proof was accepted: the backlog follows the welcome
                welcome = first
                # TCP handshake + upgrade, and TLS 1.3's handshake between them on wss://
                rtt = (self.status.opened - started) / (3 if secure else 2)
            if isinstance(welcome, wire.Err):
                raise remote_error(welcome.code, welcome.reason)
            if not isinstance(welcome, wire.Welcome):
                raise WireError("relay did not welcome us")
            self._learn_clock(welcome.time)
            self.call_states.clear()  # the relay now tells every live call again: it is the authority
            self.status.rtt = rtt
            self.status.early = first is welcome
            if self._ws is None:
                self._ws = ws
                await self._send_frames(self.core.connected(time.monotonic(), resumed=resumed))
            self.status.connects += 1
            self._set_state("online")
            log.info("online as %s (rtt %.0f ms, early %s)", welcome.name, rtt * 1000, first is welcome)
            await self._pump(ws, stop)
        finally:
            self._ws = None
            await ws.close()  # type: ignore[attr-defined]

    def _early_headers(self, sub_value: str) -> dict[str, str]:
        """The signed proof (and resume request) that lets the relay skip its challenge;
        signed in the relay's time as last learned, so a wrong local clock still works."""
        nonce = secrets.token_bytes(16)
        relay_ms = int(time.time() * 1000) + self._clock_offset_ms()
        challenge = wire.early_challenge(relay_ms, nonce, sub_value)
        pubkey, sig = sign_challenge(self.profile.seed, challenge, b"early")
        headers = {wire.EARLY_AUTH_HEADER: wire.header_value(wire.EarlyAuth(pubkey, relay_ms, nonce, sig))}
        if sub_value:
            headers[wire.EARLY_SUB_HEADER] = sub_value
        return headers

    def _clock_offset_ms(self) -> int:
        if self._offset_ms is None:
            stored = self.store.meta("relay_clock_offset_ms")
            self._offset_ms = stored if isinstance(stored, int) else 0
        return self._offset_ms

    def _learn_clock(self, relay_ms: int) -> None:
        offset = relay_ms - int(time.time() * 1000)
        if self._offset_ms is None or abs(offset - self._offset_ms) > 1000:
            self.store.set_meta("relay_clock_offset_ms", offset)  # only when it moved: no write per connect
        self._offset_ms = offset

    async def _recv(self, ws: object, timeout: float | None) -> wire.Frame:
        """One frame from the relay (no timeout: the reader; keepalive notices a dead link)."""
        data = await asyncio.wait_for(ws.recv(), timeout)  # type: ignore[attr-defined]
        self.status.last_contact = time.time()
        return wire.decode(data, wire.RELAY_TYPES)

    async def _pump(self, ws: object, stop: asyncio.Event) -> None:
        reader = asyncio.ensure_future(self._reader(ws))
        ticker = asyncio.ensure_future(self._ticker())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({reader, ticker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper:
                    task.result()  # re-raise the link error
        finally:
            for task in (reader, ticker, stopper):
                task.cancel()
            await asyncio.gather(reader, ticker, stopper, return_exceptions=True)

    async def _reader(self, ws: object) -> None:
        while True:
            data = await ws.recv()  # type: ignore[attr-defined]
            self.status.last_contact = time.time()
            if type(data) is bytes and data and data[0] < 0x80:  # voice plane: straight to the call
                delay_acks(ws.transport)  # type: ignore[attr-defined]  # our next voice packet carries the ACK
                if self.voice_listener is not None:
                    self.voice_listener(data)
                continue
            frame = wire.decode(data, wire.RELAY_TYPES)
            if isinstance(frame, wire.CallState):
                if frame.state == "ended":
                    self.call_states.pop(frame.consult, None)
                else:  # one per consult at most: the relay runs one call per consult
                    self.call_states[frame.consult] = frame
                self._notify(frame)
                continue
            if isinstance(frame, (wire.Ok, wire.Err)) and frame.rid:
                fut = self._requests.get(frame.rid)
                if fut is not None and not fut.done():
                    if isinstance(frame, wire.Ok):
                        fut.set_result(frame.result)
                    else:
                        fut.set_exception(remote_error(frame.code, frame.reason))
                continue
            out = self.core.received(frame, time.monotonic())
            rekeys = [e for e in out.events if isinstance(e, Rejected) and e.code == "rekey"]
            if rekeys and self.on_rekey is not None:  # not failures: sealed again and re-sent
                out.events = [e for e in out.events if e not in rekeys]
                for event in rekeys:
                    asyncio.ensure_future(self.on_rekey(event.cid)).add_done_callback(_logged)
            for event in out.events:
                self._persist(event)
            await self._send_frames(out.frames)
            if self.status.caught_up is None and self.core.is_synced():
                self.status.caught_up = time.monotonic()
                self._notify(self.status)
            for event in out.events:
                self._notify(event)
            self.notify_unlocked()
            self._timer_wake.set()
            self._changed.set()

    async def _ticker(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            self._timer_wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel that
            # ends this task when the wake-up fires at the same moment (cpython gh-86296),
            # and closing a session then waits out its whole grace period.
            try:
                async with asyncio.timeout(timeout):
                    await self._timer_wake.wait()
            except TimeoutError:
                await self._send_frames(self.core.handle_timer(time.monotonic()))

    def _persist(self, event: Event) -> None:
        if isinstance(event, Accepted):
            self.store.add_messages([(event.msg, event.cursor)])
        elif isinstance(event, Acked):
            self.store.acked(event.cid, event.consult, event.seq, event.time, self.profile.name, event.cursor)
        elif isinstance(event, Rejected):
            self.store.rejected(event.cid, event.reason)
        elif isinstance(event, Marks):
            self.store.set_marks(event.consult, event.member, event.delivered, event.read)

    async def _send_frames(self, frames: list[wire.Frame]) -> None:
        """Write frames if the link is up. A link that drops mid-write is not the caller's
        error: what was sent is still in the core's in-flight set, goes back to pending
        when the reader sees the close, and is re-sent on the next connection."""
        ws = self._ws
        if ws is None:
            return
        try:
            for frame in frames:
                await ws.send(wire.encode(frame))  # type: ignore[attr-defined]
        except Exception as exc:
            if not _is_link_error(exc):
                raise
            log.info("link dropped while sending: %s", _describe(exc))

    def _notify(self, event: LinkEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    def _set_state(self, state: str, error: str | None = None) -> None:
        self.status.state = state
        if error is not None:
            self.status.error = error
            log.info("link %s: %s", state, error)
        self._changed.set()
        self._notify(self.status)


def _logged(task: asyncio.Future[object]) -> None:
    """A re-key that failed (the link dropped): the item stays queued and goes next time."""
    if not task.cancelled() and task.exception() is not None:
        log.info("re-key not finished: %s", _describe(task.exception()))  # type: ignore[arg-type]


def _quiet(task: asyncio.Future[object]) -> None:
    """A voice send that failed with the link: the reader sees the close and reconnects."""
    if not task.cancelled():
        task.exception()


def _is_link_error(exc: BaseException) -> bool:
    from websockets.exceptions import WebSocketException

    return isinstance(exc, (WebSocketException, OSError, TimeoutError, EOFError))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]

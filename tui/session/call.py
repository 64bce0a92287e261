"""A live call's signalling on the session's one connection: place or answer a call, carry it
with the media engine (``session.callengine``) until it ends, and the desk's controller of one
call at a time. A dropped connection does not end the call: when the link is back the call is
answered again and keeps its slot.

Keys: when this device starts streaming in a call (the caller as soon as the relay has given
the call an id, while it rings; the answerer once it has answered; anyone joining the same call
again, in a new ``run_call``) it makes a fresh key for its stream and gives it to the
consult's members in a sealed ``callkey`` message (``CallKeys.announce``); the engine seals
with it and opens the others' frames with theirs. Answering again after a reconnect inside one
engine keeps the key: the stream and its clock go on, and a ``callkey`` message that had not
left yet is still in the durable outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from medcomm.core import wire
from medcomm.core.voicecrypt import CallCrypto
from medcomm.errors import LinkDown, MedcommError, NotFound, UsageError
from medcomm.session.callengine import CallEngine, CallLimits, CallStats
from medcomm.session.link import Link, LinkStatus

if TYPE_CHECKING:
    from medcomm.session.service import Session

log = logging.getLogger("medcomm.call")


class CallSignals:
    """The call's control plane over the link's requests and CallState events."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.states: asyncio.Queue[wire.CallState] = asyncio.Queue(maxsize=256)
        self.current: wire.CallState | None = None
        self.online = asyncio.Event()
        link.listeners.append(self._on_event)

    def close(self) -> None:
        if self._on_event in self.link.listeners:
            self.link.listeners.remove(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, wire.CallState):
            if self.states.full():
                self.states.get_nowait()
            self.states.put_nowait(event)
        elif isinstance(event, LinkStatus):
            if event.state == "online":
                self.online.set()
            else:
                self.online.clear()

    async def request(self, op: str, args: dict[str, object], timeout: float) -> dict[str, Any]:
        result = await self.link.request(op, args, timeout)
        if not isinstance(result, dict):
            raise UsageError(f"unexpected answer to {op}")
        return result

    async def next_state(
        self, match: Callable[[wire.CallState], bool], timeout: float, stop: asyncio.Event | None = None
    ) -> wire.CallState | None:
        """The next matching call state; None if ``stop`` is set first (hung up while ringing)."""
        deadline = time.monotonic() + timeout
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LinkDown("no answer to the call in time")
                getter = asyncio.ensure_future(self.states.get())
                waits = {getter} | ({stopper} if stopper is not None else set())
                done, _ = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if stopper is not None and stopper in done:
                        return None
                    raise LinkDown("no answer to the call in time")
                state = getter.result()
                if match(state):
                    return state
        finally:
            if stopper is not None:
                stopper.cancel()


class CallKeys(Protocol):
    """Where a call's stream keys come from and go to (the session's end-to-end layer)."""

    async def announce(self, consult: str, call: str) -> bytes:
        """A fresh key for this device's stream in ``call``, given to the consult's members."""
        ...

    def lookup(self, consult: str, call: str, member: str) -> bytes | None:
        """The newest key of ``member``'s stream in ``call`` held here; None until it arrives."""
        ...


class SessionCallKeys:
    """``CallKeys`` over a ``Session``: ``callkey`` messages on the reliable path, keys kept in
    the local store's key ring as they arrive."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def announce(self, consult: str, call: str) -> bytes:
        from medcomm.session.e2ekeys import announce_call_key

        if self.session.store.keyring is None:
            raise UsageError("calls are end-to-end encrypted, and this device has no keys: log in again")
        return await announce_call_key(self.session, consult, call)

    def lookup(self, consult: str, call: str, member: str) -> bytes | None:
        ring = self.session.store.keyring
        return None if ring is None else ring.call_key(consult, call, member)


def _slots(value: object) -> dict[str, int]:
    """A slots map from a relay answer, keeping only well-formed entries."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and type(v) is int}


def newest_slots(link: Link, consult: str, call_id: str, told: dict[str, int]) -> dict[str, int]:
    """Who is in which slot, by the relay's newest word: ``told`` (an answer's slots, a state
    taken from the queue) may be older than what the link has heard since. The relay sends a
    call's new state before its answer to the request that made it, and another member may
    join while we wait for ours; a crypto set from the older word never learns the newcomer's
    slot, and their voice is dropped as "no key" for the whole call (a 3-way call's clinic
    heard one doctor of two)."""
    live = link.call_states.get(consult)
    return live.slots if live is not None and live.call == call_id else told


async def _stream_crypto(
    link: Link, keys: CallKeys, consult: str, call_id: str, slots: dict[str, int], limits: CallLimits
) -> tuple[CallCrypto, Callable[[object], None]]:
    """This device's new stream key, announced, and the crypto that follows who is in which
    slot (the listener it returns is the caller's to remove)."""
    try:
        own = await asyncio.wait_for(keys.announce(consult, call_id), limits.request_timeout)
    except TimeoutError:
        raise LinkDown("the call's key could not be queued in time") from None
    crypto = CallCrypto(own, lambda member: keys.lookup(consult, call_id, member))
    crypto.set_members(newest_slots(link, consult, call_id, slots))

    def follow(event: object) -> None:  # from here on, every change (no await since the line above)
        if isinstance(event, wire.CallState) and event.call == call_id and event.state != "ended":
            crypto.set_members(event.slots)

    link.listeners.append(follow)
    return crypto, follow


@dataclass
class CallOutcome:
    call: str = ""
    outcome: str = ""  # completed | declined | missed | cancelled | hung up | lost
    seconds: float = 0.0
    stats: CallStats | None = None
    report: dict[str, object] = field(default_factory=dict)


async def run_call(
    link: Link,
    me: str,
    consult: str,
    source: Any,
    sink: Any,
    *,
    keys: CallKeys,
    profile: str = "auto",
    seconds: float | None = None,
    answer: bool = False,
    stop: asyncio.Event | None = None,
    on_status: Callable[[str], None] = lambda _line: None,
    limits: CallLimits = CallLimits(),
    engine_hook: Callable[[CallEngine], None] | None = None,
    call_id: str = "",
) -> CallOutcome:
    """Place (or, with ``answer``, wait for and answer) a call in ``consult`` and carry it
    until ``stop`` is set, ``seconds`` pass, the source ends or the others hang up. ``keys``
    gives this device's stream key out and finds the others' (end to end: see the module)."""
    stop = stop or asyncio.Event()
    signals = CallSignals(link)
    outcome = CallOutcome()
    ended = False
    follow: Callable[[object], None] | None = None
    try:
        if answer:
            ringing = link.call_states.get(consult)
            if not call_id and ringing is not None and ringing.state != "ended" and me not in ringing.slots:
                call_id = ringing.call  # it rang before we listened (the relay tells on connect)
            if not call_id:  # not told which: wait for the next ring in this consult
                on_status("waiting for a call in this consult")
                state = await signals.next_state(
                    lambda s: s.consult == consult and s.state != "ended" and me not in s.slots,
                    limits.answer_wait,
                    stop,
                )
                if state is None:
                    outcome.outcome = "hung up"
                    return outcome
                call_id = state.call
            result = await signals.request("answer", {"call": call_id}, limits.request_timeout)
            slots = _slots(result.get("slots"))
            crypto, follow = await _stream_crypto(link, keys, consult, call_id, slots, limits)
        else:
            result = await signals.request("call", {"consult": consult}, limits.request_timeout)
            call_id = str(result["call"])
            # announced while it rings, so the key is with the others by the time they answer
            slots = _slots(result.get("slots"))
            crypto, follow = await _stream_crypto(link, keys, consult, call_id, slots, limits)
            if result.get("state") == "ringing":
                on_status("ringing")
                state = await signals.next_state(
                    lambda s: s.call == call_id and s.state != "ringing", limits.ring_timeout + 10, stop
                )
                if state is None:  # hung up while it rang: the finally below tells the relay
                    outcome.call, outcome.outcome = call_id, "cancelled"
                    return outcome
                if state.state == "ended":
                    ended = True
                    outcome.call, outcome.outcome = call_id, state.outcome
                    return outcome
                crypto.set_members(newest_slots(link, consult, call_id, state.slots))
        outcome.call = call_id
        engine = CallEngine(link, source, sink, profile, limits, crypto=crypto)
        if engine_hook is not None:
            engine_hook(engine)
        watcher = asyncio.ensure_future(_watch(signals, call_id, stop, limits, on_status))
        timer = asyncio.get_running_loop().call_later(seconds, stop.set) if seconds else None
        started = time.monotonic()
        try:
            await engine.run(stop, lambda s: on_status(s.line()))
        finally:
            if timer is not None:
                timer.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        far = watcher.result() if watcher.done() and not watcher.cancelled() else None
        ended = far is not None  # ended at the relay: nothing to hang up
        outcome.seconds = time.monotonic() - started
        outcome.stats = engine.stats
        outcome.report = engine.report()
        outcome.outcome = far or "hung up"
        return outcome
    finally:
        if follow is not None and follow in link.listeners:
            link.listeners.remove(follow)
        if call_id and not ended:
            online = link.status.state == "online"
            wait = limits.hangup_timeout if online else limits.hangup_offline_wait
            with contextlib.suppress(MedcommError, TimeoutError):
                await signals.request("hangup", {"call": call_id}, wait)
        signals.close()


async def _watch(
    signals: CallSignals,
    call_id: str,
    stop: asyncio.Event,
    limits: CallLimits,
    on_status: Callable[[str], None] = lambda _line: None,
) -> str | None:
    """End with the call when the others hang up; answer again after a reconnect (the relay
    keeps our slot for a while). "completed" when the call ended at the far end, "lost" when
    the relay no longer has it after a reconnect (it restarted, or we were away longer than
    its grace): carrying on would be a call that looks live and carries nothing."""
    connects = signals.link.status.connects  # a new connection, however short the gap before it
    while not stop.is_set():
        getter = asyncio.ensure_future(signals.states.get())
        offline = signals.link.status.state != "online"
        online = asyncio.ensure_future(signals.online.wait()) if offline else None
        waits = {getter} | ({online} if online else set())
        done, _ = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        for task in waits - done:
            task.cancel()
        if getter in done:
            state = getter.result()
            if state.call == call_id and state.state == "ended":
                stop.set()
                return "completed"
        status = signals.link.status
        if status.state == "online" and status.connects != connects:
            seen = status.connects
            try:
                await signals.request("answer", {"call": call_id}, limits.request_timeout)
                log.info("call %s: answered again after a reconnect", call_id)
                connects = seen
            except NotFound:
                log.info("call %s: gone from the relay after a reconnect", call_id)
                on_status("call lost: the relay no longer has it (restarted, or the link was down too long)")
                stop.set()
                return "lost"
            except (MedcommError, TimeoutError):
                pass  # no answer (the link dropped again, or was slow): asked again next round
    return None


@dataclass
class CallView:
    """What the desk's call bar shows: the live call, or the one ringing for us."""

    consult: str
    call: str
    state: str  # ringing-in | ringing-out | connecting | in call | ended
    peers: list[str]
    line: str = ""  # the engine's one-line meters (refreshed at most once a second)
    muted: bool = False
    profile: str = "auto"
    error: str | None = None
    stats: CallStats | None = None


class DeskCalls:
    """One call at a time for the desk, run as a background task beside the desk.

    The desk calls ``start``/``answer``/``decline``/``hangup``/``mute`` and reads ``view``;
    ``changed`` is called (from the event loop) whenever the view changes, at most once a
    second for meters, so a call does not flood an SSH link with redraws.
    """

    def __init__(
        self, link: Link, me: str, changed: Callable[[], None] = lambda: None, keys: CallKeys | None = None
    ) -> None:
        self.link, self.me, self.changed, self.keys = link, me, changed, keys
        self.view: CallView | None = None
        self.ringing: dict[str, wire.CallState] = {}  # consult -> call ringing for us
        self._task: asyncio.Task[CallOutcome] | None = None
        self._stop: asyncio.Event | None = None
        self._engine_mute: Callable[[bool], None] | None = None
        link.listeners.append(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, LinkStatus) and event.state == "online" and self.ringing:
            self.ringing.clear()  # rings that ended while we were away; live ones are told again
            self.changed()
        if not isinstance(event, wire.CallState):
            return
        mine = self.me in event.slots
        if event.state != "ended" and not mine and self.me != event.by:
            self.ringing[event.consult] = event
        else:
            self.ringing.pop(event.consult, None)
        if self.view is not None and self.view.call in ("", event.call):
            self.view.call = event.call
            self.view.peers = [u for u in event.slots if u != self.me]
            if event.state == "active" and mine:
                self.view.state = "in call"
        self.changed()

    def incoming(self) -> wire.CallState | None:
        """The call ringing for us (the newest), wherever the desk is."""
        return next(reversed(self.ringing.values()), None)

    def start(self, consult: str, profile: str = "auto", mic: str = "", speaker: str = "") -> None:
        self._launch(consult, profile, mic, speaker, answer=False)

    def answer(self, consult: str, profile: str = "auto", mic: str = "", speaker: str = "") -> None:
        self._launch(consult, profile, mic, speaker, answer=True)

    async def decline(self, consult: str) -> None:
        state = self.ringing.pop(consult, None)
        self.changed()  # the ring goes from the screen now, not after the relay's answer
        if state is not None:
            with contextlib.suppress(MedcommError):
                await self.link.request("decline", {"call": state.call}, 10.0)
        self.changed()

    def hangup(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def mute(self, on: bool | None = None) -> bool:
        if self.view is None:
            return False
        self.view.muted = (not self.view.muted) if on is None else on
        if self._engine_mute is not None:
            self._engine_mute(self.view.muted)
        self.changed()
        return self.view.muted

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def _launch(self, consult: str, profile: str, mic: str, speaker: str, answer: bool) -> None:
        """Open the sound devices now (a missing PortAudio or device raises here, for the
        desk to show), then carry the call in the background."""
        from medcomm.adapters import opus
        from medcomm.adapters.audio import open_sink, open_source

        if self.active:
            raise UsageError("already in a call: hang up first")
        if self.keys is None:
            raise UsageError("calls are end-to-end encrypted, and this desk has no keys for them")
        opus.load()  # a missing libopus is said now, not after the call connected
        source = open_source(mic)
        try:
            sink = open_sink(speaker)
        except BaseException:
            source.stop()
            raise
        ringing = self.ringing.pop(consult, None) if answer else None
        self.view = CallView(
            consult, ringing.call if ringing else "", "connecting" if answer else "ringing-out",
            [u for u in (ringing.slots if ringing else {}) if u != self.me], profile=profile,
        )
        self._stop = asyncio.Event()
        call_id = ringing.call if ringing is not None else ""
        self._task = asyncio.ensure_future(self._carry(consult, source, sink, profile, answer, call_id))
        self.changed()

    async def _carry(
        self, consult: str, source: Any, sink: Any, profile: str, answer: bool, call_id: str
    ) -> CallOutcome:
        keys = self.keys
        assert keys is not None, "checked by _launch"

        def status(line: str) -> None:
            if self.view is not None:
                self.view.line = line
                if line.startswith(("in call", "reconnecting")):  # the call is on; the link may not be
                    self.view.state = "in call"
                self.changed()

        try:
            out = await run_call(
                self.link, self.me, consult, source, sink, keys=keys, profile=profile, answer=answer,
                stop=self._stop, on_status=status, engine_hook=self._hook, call_id=call_id,
            )
            if self.view is not None:
                lost = " (the relay no longer had it): call again" if out.outcome == "lost" else ""
                self.view.state, self.view.line = "ended", f"call {out.outcome}{lost}"
            return out
        except MedcommError as exc:
            if self.view is not None:
                self.view.state, self.view.error = "ended", str(exc)
            return CallOutcome(outcome="failed")
        finally:
            self._engine_mute = None
            self.changed()

    def _hook(self, engine: CallEngine) -> None:
        def set_mute(on: bool) -> None:
            engine.muted = on

        self._engine_mute = set_mute
        if self.view is not None:
            self.view.stats = engine.stats  # the numbers behind ``line``, for a desk of any width
            engine.muted = self.view.muted

    async def close(self) -> None:
        self.hangup()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 6)
        if self._on_event in self.link.listeners:
            self.link.listeners.remove(self._on_event)

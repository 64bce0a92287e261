"""The facade the CLI and the TUI use: one ``Session`` per running command or app.

It owns the local store and the link, runs the link in a background task, and offers the
few verbs the interfaces need (send, sync, history, tail, consults). Capabilities that come
later (calls, transfers) get modules of their own beside ``link`` and a verb here.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from medcomm.adapters.localstore import Line, LocalStore
from medcomm.adapters.profile import Profile, data_dir, load_profile
from medcomm.core import wire
from medcomm.core.delivery import Accepted, Acked, Event, OutItem, Rejected
from medcomm.errors import LimitExceeded, LinkDown, NotFound, RemoteError, UsageError
from medcomm.limits import WIRE, ClientLimits, client_limits
from medcomm.session.link import Link, LinkEvent, LinkStatus


class Session:
    def __init__(self, profile: Profile, store: LocalStore, link: Link) -> None:
        self.profile = profile
        self.store = store
        self.link = link
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._calls: Any = None

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
        store = LocalStore(data_dir(home))
        session = cls(profile, store, Link(profile, store, subscribe=subscribe, limits=limits))
        if connect:
            session._task = asyncio.ensure_future(session.link.run(session._stop))
        try:
            yield session
        finally:
            await session.close()

    @property
    def calls(self) -> Any:
        """The desk's call controller (``session.call.DeskCalls``), made on first use so
        that text-only commands never import the audio stack."""
        if self._calls is None:
            from medcomm.session.call import DeskCalls

            self._calls = DeskCalls(self.link, self.me)
        return self._calls

    async def close(self) -> None:
        if self._calls is not None:
            await self._calls.close()
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:  # a fatal link error was already reported to waiters
                pass
        self.store.close()

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
        """Catch up on every consult and flush the outbox."""
        await self.link.wait_until(self.link.core.is_synced, timeout)
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

        def listen(event: Event | LinkStatus) -> None:
            if isinstance(event, Accepted) and event.msg.consult == consult:
                queue.put_nowait(event.msg.seq)
            elif isinstance(event, Acked) and event.consult == consult:
                queue.put_nowait(event.seq)

        self.link.listeners.append(listen)
        shown = self.store.last_seq(consult)
        try:
            while True:
                await queue.get()
                for line in self.store.history(consult, self.me, shown):
                    if line.seq is None:
                        break
                    shown = line.seq
                    yield line
        finally:
            self.link.listeners.remove(listen)

    # --- consults -------------------------------------------------------------------------

    async def open_consult(self, title: str, others: list[str], timeout: float) -> str:
        result = await self.link.request("open", {"title": title, "with": others}, timeout)
        consult = str(result["id"])  # type: ignore[index]
        await self.link.wait_until(lambda: self.store.has_consult(consult), timeout)
        return consult

    async def add_member(self, consult: str, name: str, timeout: float) -> list[str]:
        result = await self.link.request("add", {"consult": _consult(consult), "name": name}, timeout)
        return list(result["members"])  # type: ignore[index]

    async def users(self, timeout: float) -> list[dict[str, str]]:
        """Enrolled users (name, role), for picking consult members."""
        return list(await self.link.request("users", {}, timeout))  # type: ignore[call-overload]

    async def whoami(self, timeout: float) -> dict[str, object]:
        return dict(await self.link.request("whoami", {}, timeout))  # type: ignore[arg-type]


def _consult(consult: str) -> str:
    c = consult.strip().lower()
    try:
        return wire.consult_id(c)
    except Exception:
        raise UsageError(f"{consult!r} is not a consult id (6 letters/digits, e.g. k7m2qd)") from None


async def login(url: str, name: str, code: str, timeout: float = 30.0, home: Path | None = None) -> Profile:
    """Register this device's key with a one-time code; safe to re-run after a cut."""
    from websockets.asyncio.client import connect

    from medcomm.adapters.profile import check_relay_url, load_or_create_seed, save_profile
    from medcomm.errors import remote_error
    from medcomm.session.link import sign_challenge

    url = check_relay_url(url)
    name = wire.typed_user_name(name)
    seed = load_or_create_seed(home)  # durable before the first attempt: re-runs reuse the key
    try:
        async with asyncio.timeout(timeout):
            async with connect(url, compression=None, max_size=WIRE.max_frame, user_agent_header=None) as ws:
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
    profile = Profile(relay=url, name=answer.name, role=answer.role, home=home)
    save_profile(profile)
    return profile

"""What the app needs from a session: the real ``Session`` and the tests' fake both fit.

The app never touches sockets or the store; it calls these methods and reacts to the
callbacks registered with ``on_event`` (delivery events and link status changes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from medcomm.adapters.localstore import Line


class LinkStatusView(Protocol):
    state: str
    rtt: float | None
    last_contact: float | None
    error: str | None
    connect_started: float | None
    caught_up: float | None


class DeskSession(Protocol):
    @property
    def me(self) -> str: ...

    @property
    def status(self) -> LinkStatusView: ...

    def overview(self) -> list[dict[str, object]]: ...

    def page(self, consult: str, before: int | None = None, limit: int = 50) -> list[Line]: ...

    def lines_since(self, consult: str, since: int) -> list[Line]: ...

    def outbox_count(self) -> int: ...

    def on_event(self, callback: Callable[[Any], None]) -> None: ...

    async def queue_text(self, consult: str, text: str) -> Any: ...

    async def open_consult(self, title: str, others: list[str], timeout: float) -> str: ...

    async def users(self, timeout: float) -> list[dict[str, str]]: ...

    async def mark_read(self, consult: str) -> None: ...


def consult_of(event: Any) -> str | None:
    """The consult an event changes, if any (message accepted, acknowledged, marks)."""
    msg = getattr(event, "msg", None)
    if msg is not None:
        return str(msg.consult)
    consult = getattr(event, "consult", None)
    return str(consult) if consult else None

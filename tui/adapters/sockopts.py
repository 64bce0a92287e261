"""Socket options for a connection that carries voice: let TCP's ACKs and the receivers'
feedback ride on voice packets instead of costing 52-byte segments of their own.

During a call both ends send a voice packet every 60-120 ms. Linux acknowledges a small
"pushed" segment as soon as the application reads it unless the connection is in its
interactive ("ping-pong") mode, so nearly every voice packet received costs a 52-byte pure
ACK segment of its own: measured 14.5 pure ACKs/s against 18.7 data segments/s received in a
standard-rung call, ~6 kbit/s, a fifth of the call's uplink. ``TCP_QUICKACK`` set to 0 puts
the socket into that mode, so the ACK waits (up to the delayed-ACK timeout) for the next
packet going the other way. The kernel may leave the mode again by itself, so it is re-set
as voice arrives. Elsewhere than Linux the option does not exist and nothing is done.

Two WebSocket messages written one after the other leave as two segments (the connection
runs with ``TCP_NODELAY``, as voice must). :func:`corked` holds them with ``TCP_CORK`` while
they are written, so a feedback report and the voice packet it rides with cost one segment.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_CORK = getattr(socket, "TCP_CORK", None)


def _sock(transport: Any) -> Any:
    """The transport's socket (asyncio hands out a wrapper that still has setsockopt)."""
    sock = None if transport is None else transport.get_extra_info("socket")
    return sock if hasattr(sock, "setsockopt") else None


def _set(sock: Any, option: int, value: int) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:  # closed under us, or not TCP (a test's socket pair): harmless
        pass


@contextmanager
def corked(transport: Any) -> Iterator[None]:
    """Writes inside the block leave together, in as few segments as their size needs.

    Only worth it (and only done) when nothing is queued in the transport: queued bytes are
    written later in one go anyway. The kernel sends what it holds when the block ends; it
    would by itself after 200 ms, so a block that waits cannot hold other writes for long.
    """
    sock = _sock(transport) if _CORK is not None else None
    if sock is None or getattr(transport, "get_write_buffer_size", lambda: 0)() > 0:
        yield
        return
    _set(sock, _CORK, 1)
    try:
        yield
    finally:
        _set(sock, _CORK, 0)


async def send_together(ws: Any, frames: Iterable[bytes]) -> None:
    """WebSocket messages written back to back inside :func:`corked`: a voice packet and the
    feedback riding with it (the client), or every voice frame ready for a listener (the
    relay), leave in one segment."""
    with corked(getattr(ws, "transport", None)):
        for frame in frames:
            await ws.send(frame)


def delay_acks(transport: Any) -> None:
    """Ask the kernel to hold this connection's next ACK for outgoing data to carry it."""
    sock = _sock(transport) if _QUICKACK is not None else None
    if sock is not None:
        _set(sock, _QUICKACK, 0)

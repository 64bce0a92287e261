"""Socket options for a connection that carries voice: let TCP's ACKs ride on voice packets.

During a call both ends send a voice packet every 60-120 ms. Linux acknowledges a small
"pushed" segment as soon as the application reads it unless the connection is in its
interactive ("ping-pong") mode, so nearly every voice packet received costs a 52-byte pure
ACK segment of its own: measured 14.5 pure ACKs/s against 18.7 data segments/s received in a
standard-rung call, ~6 kbit/s, a fifth of the call's uplink. ``TCP_QUICKACK`` set to 0 puts
the socket into that mode, so the ACK waits (up to the delayed-ACK timeout) for the next
packet going the other way. The kernel may leave the mode again by itself, so it is re-set
as voice arrives. Elsewhere than Linux the option does not exist and nothing is done.
"""

from __future__ import annotations

import socket
from typing import Any

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def delay_acks(transport: Any) -> None:
    """Ask the kernel to hold this connection's next ACK for outgoing data to carry it."""
    if _QUICKACK is None or transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 0)
    except OSError:  # closed under us, or not TCP (a test's socket pair): harmless
        pass

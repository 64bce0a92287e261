"""delay_acks puts a real TCP socket into the kernel's interactive (delayed-ACK) mode."""

from __future__ import annotations

import asyncio
import socket

import pytest

from medcomm.adapters.sockopts import delay_acks

QUICKACK = getattr(socket, "TCP_QUICKACK", None)


@pytest.mark.skipif(QUICKACK is None, reason="TCP_QUICKACK is Linux-only")
async def test_a_connected_tcp_socket_stops_acking_at_once() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, QUICKACK) == 1  # a fresh connection acks at once
        delay_acks(writer.transport)
        assert sock.getsockopt(socket.IPPROTO_TCP, QUICKACK) == 0
        writer.close()
        await writer.wait_closed()
        delay_acks(writer.transport)  # closed: nothing to do, no error
    finally:
        server.close()
        await server.wait_closed()


def test_transports_without_a_tcp_socket_are_left_alone() -> None:
    class NoSocket:
        def get_extra_info(self, name: str) -> None:
            return None

    a, b = socket.socketpair()
    try:

        class Unix:
            def get_extra_info(self, name: str) -> socket.socket:
                return a

        delay_acks(None)
        delay_acks(NoSocket())
        delay_acks(Unix())  # a Unix socket has no TCP options: ignored
    finally:
        a.close()
        b.close()

"""delay_acks puts a real TCP socket into the kernel's interactive (delayed-ACK) mode; corked
writes leave as one segment."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from medcomm.adapters.sockopts import corked, delay_acks

QUICKACK = getattr(socket, "TCP_QUICKACK", None)
CORK = getattr(socket, "TCP_CORK", None)
SEGS_OUT = 136  # offset of tcpi_segs_out in Linux's struct tcp_info (u32, since 4.2)


def segs_out(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, SEGS_OUT)[0])


@pytest.mark.skipif(CORK is None, reason="TCP_CORK is Linux-only")
async def test_writes_inside_corked_leave_as_one_segment() -> None:
    got = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            got.extend(data)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counts = []
        for cork in (False, True, False):
            before = segs_out(sock)
            if cork:
                with corked(writer.transport):
                    writer.write(b"voice" * 20)
                    writer.write(b"feedback")
            else:
                writer.write(b"voice" * 20)
                writer.write(b"feedback")
            await asyncio.sleep(0.05)
            counts.append(segs_out(sock) - before)
        assert counts[1] == 1 and counts[0] >= 2 and counts[2] >= 2, counts
        assert sock.getsockopt(socket.IPPROTO_TCP, CORK) == 0  # uncorked again
        await asyncio.sleep(0.05)
        assert bytes(got) == (b"voice" * 20 + b"feedback") * 3
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


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
        for transport in (None, NoSocket(), Unix()):
            with corked(transport):
                pass
    finally:
        a.close()
        b.close()

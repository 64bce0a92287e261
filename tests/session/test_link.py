"""Link behaviour that does not need a relay: a drop in the middle of a write, a cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedError

from medcomm.adapters.localstore import LocalStore
from medcomm.adapters.profile import Profile
from medcomm.core.delivery import OutItem
from medcomm.session.link import Link


class DroppedSocket:
    """A WebSocket whose link has just gone: every send raises like websockets does."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, data: bytes) -> None:
        self.sent += 1
        raise ConnectionClosedError(None, None)


async def test_submit_on_a_dropped_link_keeps_the_item_for_the_next_connection(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    link = Link(Profile("ws://127.0.0.1:9", "amina", "clinic", home=tmp_path), store)
    ws = DroppedSocket()
    link._ws = ws
    link.core.connected(0.0)
    item = OutItem(b"\x01" * 16, "abc123", 1, b"hello")
    store.enqueue(item)
    await link.submit(item)  # must not raise: the message is safe in the outbox
    assert ws.sent == 1
    link.core.disconnected()
    assert [f.cid for f in link.core.connected(1.0)[1:]] == [item.cid]
    assert [i.cid for i in store.outbox()] == [item.cid]
    store.close()


class RecordingSocket:
    """A WebSocket that takes every frame."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.frames.append(data)


async def test_a_request_cancelled_as_its_answer_lands_is_cancelled(tmp_path: Path) -> None:
    """Python 3.11's wait_for returns the result when it is cancelled in the same loop turn as
    the answer arrives: the cancel is lost, and a cancelled upload went on putting chunks to the
    end. A cancelled request must stay cancelled."""
    store = LocalStore(tmp_path)
    link = Link(Profile("ws://127.0.0.1:9", "amina", "clinic", home=tmp_path), store)
    ws = RecordingSocket()
    link._ws = ws
    link.status.state = "online"
    task = asyncio.ensure_future(link.request("whoami", {}, 5.0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(ws.frames) == 1 and len(link._requests) == 1
    (answer,) = link._requests.values()
    answer.set_result({"name": "amina"})
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not link._requests
    store.close()

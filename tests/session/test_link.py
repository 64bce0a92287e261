"""Link behaviour that does not need a relay: a drop in the middle of a write."""

from __future__ import annotations

from pathlib import Path

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

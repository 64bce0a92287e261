"""A reconnecting device proves itself in the upgrade request and learns the relay's clock.

Real relay process, real Session: the first connection of a device whose clock is an hour
off falls back to the challenge and learns the offset; from then on (and in the next process,
through the local store) its proofs go in the upgrade request and the backlog comes at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from medcomm.adapters.localstore import LocalStore
from medcomm.adapters.profile import data_dir
from medcomm.errors import NotFound
from medcomm.session.service import Session
from tests.harness.relay import RelayProcess, medcomm

pytestmark = pytest.mark.timeout(60)


async def connected(session: Session) -> None:
    await session.link.wait_until(lambda: session.status.state == "online", 15)


async def test_wrong_clock_learns_the_relay_offset_then_resumes_early(relay: RelayProcess, tmp_path: Path):
    alice = relay.identity(tmp_path, "alice")
    bob = relay.identity(tmp_path, "bob", "doctor")
    consult = medcomm("consult", "open", "clock", "--with", "bob", home=alice, check=True).stdout.strip()

    store = LocalStore(data_dir(bob))
    store.set_meta("relay_clock_offset_ms", 3_600_000)  # as if our clock ran an hour slow
    store.close()
    async with Session.open(home=bob) as session:
        await connected(session)
        assert not session.status.early  # the hour-off proof was not taken: challenge
        await session.sync(15)
    store = LocalStore(data_dir(bob))
    offset = store.meta("relay_clock_offset_ms")
    store.close()
    assert isinstance(offset, int) and abs(offset) < 5_000  # learned: same machine, same clock

    medcomm("send", consult, "while bob was away", home=alice, check=True)
    async with Session.open(home=bob) as session:
        await connected(session)
        assert session.status.early
        await session.link.wait_until(lambda: session.status.caught_up is not None, 15)
        texts = [line.text for line in session.history(consult)]
        assert "while bob was away" in texts
        # a second connection in the same process is early too (fresh nonce, no replay)
        await session.link._ws.close()  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
        await session.link.wait_until(
            lambda: session.status.state == "online" and session.status.connects >= 2, 20
        )
        assert session.status.early


async def test_blob_requests_wait_while_a_call_is_on(relay: RelayProcess, tmp_path: Path):
    """Voice before image chunks: a transfer's request is held while the call engine has
    the bulk gate closed, and goes as soon as it opens; other requests are never held."""
    home = relay.identity(tmp_path, "amina")
    async with Session.open(home=home) as session:
        await connected(session)
        link = session.link
        link.bulk_allowed.clear()
        args: dict[str, object] = {"sha": b"\0" * 32, "offset": 0, "length": 1}
        blob = asyncio.ensure_future(link.request("blob.get", args, 10))
        who = await link.request("whoami", {}, 10)
        assert isinstance(who, dict) and who["name"] == "amina"
        await asyncio.sleep(0.5)
        assert not blob.done()
        link.bulk_allowed.set()
        with pytest.raises(NotFound):  # an unknown blob: the relay answered, not a timeout
            await asyncio.wait_for(blob, 10)

"""The relay carries the workflow kinds (case, status, followup) like text: stored, acknowledged,
fanned out and resumed, with the body untouched and unread (it may be ciphertext later)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from medcomm.core import wire
from medcomm.core.wire import Msg, Reject, Send, Stored
from tests.harness.relay import RelayProcess
from tests.server.test_relay_hostile import login, msgs, register

pytestmark = pytest.mark.timeout(60)


async def test_workflow_kinds_are_stored_and_fanned_out_blind(relay: RelayProcess) -> None:
    (alice, _), (bob, bob_device) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("workflow", ["bob"])
    await bob.sync({}, full=True)
    sent = {}
    for name in ("case", "status", "followup"):
        body = secrets.token_bytes(40)  # not even msgpack: the relay must not care
        cid = secrets.token_bytes(wire.CID_LEN)
        await alice.send(Send(consult, cid, wire.KINDS[name], body))
        ack, _ = await alice.until(lambda f, cid=cid: isinstance(f, (Stored, Reject)) and f.cid == cid)
        assert isinstance(ack, Stored), ack
        live, _ = await bob.until(lambda f: isinstance(f, Msg))
        assert isinstance(live, Msg) and (live.kind, live.body, live.seq) == (wire.KINDS[name], body, ack.seq)
        sent[ack.seq] = (wire.KINDS[name], body)
    await bob.close()
    again = await login(relay, bob_device)  # and a resume from the start returns them as they were
    frames = await again.sync({consult: 1})
    assert {m.seq: (m.kind, m.body) for m in msgs(frames, consult)} == sent
    for client in (alice, again):
        await client.close()

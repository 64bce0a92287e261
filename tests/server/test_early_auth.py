"""Early authentication: a proof (and the resume request) in the WebSocket upgrade request.

Against a real relay process with raw WebSocket clients, so the tests see exactly what the
relay sends: with a good proof, the Welcome and the backlog arrive without the client
sending a single frame; anything the relay cannot accept once and in time falls back to a
challenge; anything forged is refused.
"""

from __future__ import annotations

import secrets
import time

import pytest
from websockets.asyncio.client import connect

from medcomm.core import wire
from medcomm.core.wire import CaughtUp, Challenge, Err, Msg, Ready, Sub, Welcome
from medcomm.session.link import sign_challenge
from tests.harness.relay import RelayProcess
from tests.server.test_relay_hostile import WAIT, Client, Device, login, register

pytestmark = pytest.mark.timeout(60)


def proof_headers(
    device: Device, sub: Sub | None, *, when_ms: int | None = None, nonce: bytes | None = None
) -> dict[str, str]:
    when_ms = int(time.time() * 1000) if when_ms is None else when_ms
    nonce = nonce or secrets.token_bytes(16)
    sub_value = wire.header_value(sub) if sub is not None else ""
    pubkey, sig = sign_challenge(device.seed, wire.early_challenge(when_ms, nonce, sub_value), b"early")
    headers = {wire.EARLY_AUTH_HEADER: wire.header_value(wire.EarlyAuth(pubkey, when_ms, nonce, sig))}
    if sub_value:
        headers[wire.EARLY_SUB_HEADER] = sub_value
    return headers


async def dial_early(relay: RelayProcess, headers: dict[str, str]) -> Client:
    ws = await connect(
        relay.url,
        open_timeout=WAIT,
        close_timeout=2,
        ping_interval=None,
        compression=None,
        additional_headers=headers,
    )
    return Client(ws)


async def seeded(relay: RelayProcess) -> tuple[Device, Device, str]:
    """alice and bob, a consult between them with three messages from alice."""
    alice_client, alice = await register(relay, "alice")
    bob_client, bob = await register(relay, "bob", "doctor")
    await bob_client.close()
    consult = await alice_client.open_consult("early", ["bob"])
    for i in range(3):
        await alice_client.send_text(consult, f"m{i}".encode())
    await alice_client.close()
    return alice, bob, consult


async def test_good_proof_gets_welcome_and_backlog_without_a_round_trip(relay: RelayProcess):
    _, bob, consult = await seeded(relay)
    client = await dial_early(relay, proof_headers(bob, Sub({consult: 1}, True)))
    welcome = await client.recv()
    assert isinstance(welcome, Welcome) and (welcome.name, welcome.role) == ("bob", "doctor")
    assert abs(welcome.time - time.time() * 1000) < 60_000
    # Nothing sent by the client: the resume answer follows the welcome on its own.
    _, frames = await client.until(lambda f: isinstance(f, Ready))
    msgs = [f for f in frames if isinstance(f, Msg)]
    assert [m.seq for m in msgs] == [2, 3, 4]  # seq 1 is the consult's "opened" event
    assert any(isinstance(f, CaughtUp) and f.consult == consult for f in frames)
    await client.barrier()  # still a working, authenticated connection
    await client.close()


async def test_proof_without_resume_request_still_skips_the_challenge(relay: RelayProcess):
    _, bob, _ = await seeded(relay)
    client = await dial_early(relay, proof_headers(bob, None))
    assert isinstance(await client.recv(), Welcome)
    await client.barrier()
    await client.close()


@pytest.mark.parametrize("skew_s", [-3600, 3600])
async def test_proof_off_the_relay_clock_falls_back_to_a_challenge(relay: RelayProcess, skew_s: int):
    _, bob, _ = await seeded(relay)
    headers = proof_headers(bob, None, when_ms=int((time.time() + skew_s) * 1000))
    client = await dial_early(relay, headers)
    challenge = await client.recv()
    assert isinstance(challenge, Challenge)  # the relay's time in it lets the device correct
    pubkey, sig = sign_challenge(bob.seed, challenge.nonce, b"auth")
    await client.send(wire.Auth(pubkey, sig))
    assert isinstance(await client.recv(), Welcome)
    await client.close()


async def test_replayed_proof_gets_a_challenge_not_a_login(relay: RelayProcess):
    _, bob, _ = await seeded(relay)
    headers = proof_headers(bob, None)
    first = await dial_early(relay, headers)
    assert isinstance(await first.recv(), Welcome)
    await first.close()
    replay = await dial_early(relay, headers)
    assert isinstance(await replay.recv(), Challenge)
    await replay.close()


async def test_forged_proofs_are_refused(relay: RelayProcess):
    alice, bob, consult = await seeded(relay)
    # bob's key, but the resume request swapped after signing: the signature no longer fits.
    headers = proof_headers(bob, Sub({consult: 1}, True))
    headers[wire.EARLY_SUB_HEADER] = wire.header_value(Sub({consult: 0}, True))
    client = await dial_early(relay, headers)
    err = await client.recv()
    assert isinstance(err, Err) and err.code == "auth"
    # A key nobody enrolled.
    stranger = Device("mallory", "clinic", secrets.token_bytes(32))
    client = await dial_early(relay, proof_headers(stranger, None))
    err = await client.recv()
    assert isinstance(err, Err) and err.code == "auth" and "login" in err.reason
    # Garbage in the header.
    client = await dial_early(relay, {wire.EARLY_AUTH_HEADER: "!!!"})
    err = await client.recv()
    assert isinstance(err, Err)
    # The relay is fine and alice can still log in the classic way.
    ok = await login(relay, alice)
    await ok.barrier()
    await ok.close()

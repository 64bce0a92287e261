"""The relay against hostile and careless clients: raw WebSockets against a real relay process.

Every test talks to a real ``medcomm serve`` subprocess on 127.0.0.1 through raw WebSocket
clients that speak the wire protocol by hand (challenge, Register/Auth, frames), so nothing
in the client library can paper over what the relay really does. Every wait is bounded, and
every test ends by checking that the relay is still healthy: a fresh, well-behaved client
can still register, open a consult and get a message stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from medcomm.core import voiceframe, wire
from medcomm.core.wire import (
    Auth,
    CaughtUp,
    Challenge,
    Err,
    Msg,
    Ok,
    Ready,
    Receipt,
    Receipts,
    Register,
    Reject,
    Request,
    Send,
    Stored,
    Sub,
    Welcome,
)
from medcomm.limits import RELAY, WIRE, RelayLimits
from medcomm.server import admin
from medcomm.server.relay import Relay
from medcomm.server.store import RelayStore
from medcomm.session.link import sign_challenge
from tests.harness.relay import RelayProcess

pytestmark = pytest.mark.timeout(90)

WAIT = 10.0  # upper bound of any single wait for the relay (generous: loaded CI machines)
TEXT = wire.KINDS["text"]
UNKNOWN_CONSULT = "zzzzzz"  # a well-formed consult id that the relay never handed out


# --- a raw protocol client ----------------------------------------------------------------


@dataclass
class Device:
    name: str
    role: str
    seed: bytes


class Client:
    """One raw WebSocket speaking frames; every receive is bounded."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._rid = 0
        self.seen: list[wire.Frame] = []  # every frame received, in order

    def _decode(self, data: bytes | str) -> wire.Frame:
        frame = wire.decode(data, wire.RELAY_TYPES)  # type: ignore[arg-type]
        self.seen.append(frame)
        return frame

    async def send(self, frame: wire.Frame | bytes | str) -> None:
        await self.ws.send(wire.encode(frame) if isinstance(frame, wire.Frame) else frame)

    async def recv(self, timeout: float = WAIT) -> wire.Frame:
        async with asyncio.timeout(timeout):
            data = await self.ws.recv()
        return self._decode(data)

    async def until(
        self, pred: Callable[[wire.Frame], bool], timeout: float = WAIT
    ) -> tuple[wire.Frame, list[wire.Frame]]:
        """The first frame matching pred, and every frame received before it."""
        skipped: list[wire.Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = self._decode(await self.ws.recv())
                if pred(frame):
                    return frame, skipped
                skipped.append(frame)

    async def request(
        self, op: str, args: dict[str, object] | None = None, timeout: float = WAIT
    ) -> tuple[Ok | Err, list[wire.Frame]]:
        self._rid += 1
        rid = self._rid
        await self.send(Request(rid, op, args or {}))
        answer, skipped = await self.until(lambda f: isinstance(f, (Ok, Err)) and f.rid == rid, timeout)
        assert isinstance(answer, (Ok, Err))
        return answer, skipped

    async def barrier(self, timeout: float = WAIT) -> list[wire.Frame]:
        """Every frame the relay queued for us before it answers a fresh whoami.

        The relay sends a connection's frames in order through one queue, so anything it
        meant to send us because of earlier frames arrives before this answer.
        """
        answer, skipped = await self.request("whoami", timeout=timeout)
        assert isinstance(answer, Ok), answer
        return skipped

    async def closed(self, timeout: float = WAIT) -> tuple[int | None, str, list[wire.Frame]]:
        """Read until the relay closes: (close code, reason, frames received before)."""
        frames: list[wire.Frame] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frames.append(self._decode(await self.ws.recv()))
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return None, "", frames
            return exc.rcvd.code, exc.rcvd.reason, frames

    async def open_consult(self, title: str, others: Iterable[str]) -> str:
        answer, _ = await self.request("open", {"title": title, "with": list(others)})
        assert isinstance(answer, Ok), answer
        assert isinstance(answer.result, dict)
        return str(answer.result["id"])

    async def send_text(self, consult: str, body: bytes, cid: bytes | None = None) -> Stored:
        cid = cid or secrets.token_bytes(wire.CID_LEN)
        await self.send(Send(consult, cid, TEXT, body))
        ack, _ = await self.until(lambda f: isinstance(f, (Stored, Reject)) and f.cid == cid)
        assert isinstance(ack, Stored), ack
        return ack

    async def sync(self, cursors: dict[str, int], full: bool = False) -> list[wire.Frame]:
        """Sub and collect exactly the relay's answer (up to Ready, or up to a barrier).

        Frames that were already on their way (live messages) are drained first; they stay
        in ``seen``.
        """
        await self.barrier()
        await self.send(Sub(cursors, full))
        if full:
            ready, frames = await self.until(lambda f: isinstance(f, Ready))
            return [*frames, ready]
        return await self.barrier()

    async def close(self) -> None:
        await self.ws.close()


async def dial(relay: RelayProcess) -> tuple[Client, Challenge]:
    ws = await connect(relay.url, open_timeout=WAIT, close_timeout=2, ping_interval=None, compression=None)
    client = Client(ws)
    challenge = await client.recv()
    assert isinstance(challenge, Challenge), challenge
    return client, challenge


async def enroll(relay: RelayProcess, name: str, role: str = "clinic", cli: bool = False) -> str:
    """A one-time code for name: through the ``medcomm admin enroll`` CLI when ``cli``, else
    in-process through the very function that CLI calls (on the live data dir, as the CLI
    does). Each CLI run costs ~0.5 s of CPU; dozens of them would dominate this file."""
    if cli:
        return await asyncio.to_thread(relay.enroll, name, role)
    return await asyncio.to_thread(admin.enroll, relay.data, name, role)


def welcomed(frame: object) -> tuple[str, str] | object:
    """Who a Welcome names (its relay time differs each run); anything else as it is."""
    return (frame.name, frame.role) if isinstance(frame, Welcome) else frame


async def register(relay: RelayProcess, name: str, role: str = "clinic") -> tuple[Client, Device]:
    """Enroll name and bind a fresh device key with the one-time code."""
    device = Device(name, role, secrets.token_bytes(32))
    code = await enroll(relay, name, role)
    client, challenge = await dial(relay)
    pubkey, sig = sign_challenge(device.seed, challenge.nonce, b"register")
    await client.send(Register(name, code, pubkey, sig))
    welcome = await client.recv()
    assert welcomed(welcome) == (name, role), welcome
    return client, device


async def login(relay: RelayProcess, device: Device) -> Client:
    client, challenge = await dial(relay)
    pubkey, sig = sign_challenge(device.seed, challenge.nonce, b"auth")
    await client.send(Auth(pubkey, sig))
    welcome = await client.recv()
    assert welcomed(welcome) == (device.name, device.role), welcome
    return client


async def refused(client: Client) -> Err:
    """The relay's answer to a failed authentication: one Err, then close 1008."""
    code, reason, frames = await client.closed()
    assert code == 1008, (code, reason, frames)
    assert reason, "a policy close must say why"
    assert len(frames) == 1 and isinstance(frames[0], Err), frames
    assert frames[0].rid == 0
    return frames[0]


async def assert_healthy(relay: RelayProcess, others: Iterable[str] = ()) -> None:
    """A fresh, well-behaved client can register, open a consult and get a Send stored."""
    assert relay.proc is not None and relay.proc.poll() is None, "relay process died"
    client, _ = await register(relay, f"health-{secrets.token_hex(3)}")
    try:
        consult = await client.open_consult("still healthy", others)
        stored = await client.send_text(consult, b"are you there?")
        assert stored.consult == consult
        assert stored.seq == 2  # seq 1 is the relay's "open" system message
    finally:
        await client.close()


def msgs(frames: Iterable[wire.Frame], consult: str | None = None) -> list[Msg]:
    return [f for f in frames if isinstance(f, Msg) and (consult is None or f.consult == consult)]


# --- 1. malformed frames after authentication ------------------------------------------------


def _bad_frames() -> list[bytes | str]:
    # 0xc1 is never valid msgpack; a first byte under 0x80 would be the voice plane instead
    junk = b"\xc1" + random.Random(20240607).randbytes(199)
    cid = bytes(wire.CID_LEN)
    return [
        junk,  # random bytes
        "hello relay",  # a text frame
        msgpack.packb({"type": 4}),  # valid msgpack, not an array
        msgpack.packb([]),  # empty array
        msgpack.packb(["4", "abcdef"]),  # type code as text
        msgpack.packb([99, 1, 2]),  # unknown type code
        wire.encode(Stored(cid, "abcdef", 1, 1)),  # a relay-only frame sent by a client
        msgpack.packb([int(wire.T.SEND), "abcdef", cid, TEXT]),  # too few fields
        msgpack.packb([int(wire.T.SEND), "NOT-AN-ID", cid, TEXT, b"x"]),  # bad consult id
        b"\x91" * 5000 + b"\x01",  # deeply nested arrays
    ]


def test_bad_frames_do_decode_as_garbage() -> None:
    """Guard for the test data: every one of them is refused by the shared decoder."""
    for data in _bad_frames():
        with pytest.raises(wire.WireError):
            wire.decode(data, wire.CLIENT_TYPES)  # type: ignore[arg-type]


async def test_malformed_frames_after_auth_get_err_then_policy_close(relay: RelayProcess) -> None:
    client, device = await register(relay, "mallory")
    bad = _bad_frames()
    assert len(bad) == 10
    for data in bad[:9]:
        await client.send(data)
        err = await client.recv()
        assert isinstance(err, Err), (data, err)
        assert err.rid == 0 and err.code == "bad_request" and err.reason, err
    # Nine bad frames do not cost the connection: it still answers requests.
    assert await client.barrier() == []
    await client.send(bad[9])
    code, reason, frames = await client.closed()
    assert code == 1008 and reason, (code, reason)
    assert all(isinstance(f, Err) for f in frames), frames

    # A client that sends many bad frames without reading is cut off with 1008 all the same.
    client = await login(relay, device)
    for data in _bad_frames() * 3:
        try:
            await client.send(data)
        except ConnectionClosed:
            break
    code, reason, frames = await client.closed()
    assert code == 1008 and reason, (code, reason)
    assert all(isinstance(f, Err) and f.rid == 0 for f in frames), frames
    await assert_healthy(relay)


async def test_tenth_bad_frame_is_answered_before_the_close(relay: RelayProcess) -> None:
    client, _ = await register(relay, "mallory")
    bad = _bad_frames()
    for data in bad[:9]:
        await client.send(data)
        assert isinstance(await client.recv(), Err)
    await client.send(bad[9])
    code, _, frames = await client.closed()
    assert code == 1008
    assert [type(f) for f in frames] == [Err], "the tenth bad frame got no Err before the close"


# --- 2. oversize messages --------------------------------------------------------------------


async def test_oversize_message_closes_1009(relay: RelayProcess) -> None:
    # Before authentication.
    client, _ = await dial(relay)
    await client.send(b"\x00" * (WIRE.max_frame * 4))
    code, _, _ = await client.closed()
    assert code == 1009
    # After authentication: a frame just over the limit.
    client, device = await register(relay, "mallory")
    await client.send(wire.encode(Send("abcdef", bytes(wire.CID_LEN), TEXT, b"x" * WIRE.max_frame)))
    code, _, frames = await client.closed()
    assert code == 1009 and frames == []
    # A frame just under the limit is decoded: its oversize body is refused, the link stays.
    client = await login(relay, device)
    frame = wire.encode(Send("abcdef", bytes(wire.CID_LEN), TEXT, b"x" * (WIRE.max_frame - 100)))
    assert len(frame) <= WIRE.max_frame
    await client.send(frame)
    err = await client.recv()
    assert isinstance(err, Err) and err.code == "limit", err
    assert await client.barrier() == []
    await client.close()
    await assert_healthy(relay)


# --- 3. unauthenticated clients --------------------------------------------------------------


async def test_authentication_refusals(relay: RelayProcess) -> None:
    # Fewer failures in a row than RELAY.login_failures, so no answer is delayed.
    code_a = await enroll(relay, "alice", cli=True)
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)

    # Garbage as the first frame.
    client, _ = await dial(relay)
    await client.send(b"\xc1garbage")
    err = await refused(client)
    assert err.code == "bad_request" and err.reason

    # A text frame as the first frame.
    client, _ = await dial(relay)
    await client.send("hello")
    assert (await refused(client)).code == "bad_request"

    # A relay frame (Welcome) as the first frame.
    client, _ = await dial(relay)
    await client.send(wire.encode(Welcome("alice", "clinic", 0)))
    assert (await refused(client)).code == "bad_request"

    # Register with a signature over another nonce: refused, and the code is not spent.
    client, challenge = await dial(relay)
    pubkey, _ = sign_challenge(k1, challenge.nonce, b"register")
    _, sig = sign_challenge(k1, secrets.token_bytes(32), b"register")
    await client.send(Register("alice", code_a, pubkey, sig))
    assert (await refused(client)).code == "auth"

    # Register with a wrong code.
    client, challenge = await dial(relay)
    pubkey, sig = sign_challenge(k1, challenge.nonce, b"register")
    await client.send(Register("alice", "AAAA-BBBB-CCCC", pubkey, sig))
    assert (await refused(client)).code == "auth"

    # Success resets the failure count of this address.
    client, challenge = await dial(relay)
    pubkey1, sig = sign_challenge(k1, challenge.nonce, b"register")
    await client.send(Register("alice", code_a, pubkey1, sig))
    assert welcomed(await client.recv()) == ("alice", "clinic")
    await client.close()

    # An unknown device key, correctly signed: refused, and told to log in.
    client, challenge = await dial(relay)
    pubkey, sig = sign_challenge(secrets.token_bytes(32), challenge.nonce, b"auth")
    await client.send(Auth(pubkey, sig))
    err = await refused(client)
    assert err.code == "auth" and "login" in err.reason, err

    # A known key with a wrong signature (another nonce).
    client, challenge = await dial(relay)
    _, sig = sign_challenge(k1, secrets.token_bytes(32), b"auth")
    await client.send(Auth(pubkey1, sig))
    assert (await refused(client)).code == "auth"

    # A known key signing for the wrong purpose: signatures are domain-separated.
    client, challenge = await dial(relay)
    _, sig = sign_challenge(k1, challenge.nonce, b"register")
    await client.send(Auth(pubkey1, sig))
    assert (await refused(client)).code == "auth"

    # The used code with another key.
    client, challenge = await dial(relay)
    pubkey2, sig = sign_challenge(k2, challenge.nonce, b"register")
    await client.send(Register("alice", code_a, pubkey2, sig))
    err = await refused(client)
    assert err.code == "auth" and "used" in err.reason, err

    # A successful login resets the count again...
    client, challenge = await dial(relay)
    _, sig = sign_challenge(k1, challenge.nonce, b"auth")
    await client.send(Auth(pubkey1, sig))
    assert welcomed(await client.recv()) == ("alice", "clinic")
    await client.close()

    # ...so the remaining refusals are prompt too. A valid code under another name.
    await enroll(relay, "bob", cli=True)
    client, challenge = await dial(relay)
    pubkey2, sig = sign_challenge(k2, challenge.nonce, b"register")
    await client.send(Register("bob", code_a, pubkey2, sig))
    assert (await refused(client)).code == "auth"

    # The same code re-used with the same key: an idempotent login (a cut-off login re-run).
    client, challenge = await dial(relay)
    pubkey, sig = sign_challenge(k1, challenge.nonce, b"register")
    await client.send(Register("alice", code_a, pubkey, sig))
    assert welcomed(await client.recv()) == ("alice", "clinic")
    await client.close()

    # And the device logs in normally afterwards.
    alice = await login(relay, Device("alice", "clinic", k1))
    await alice.close()

    # Past the free failures, answers are slowed down (not refused for good).
    for _ in range(RELAY.login_failures):
        client, _ = await dial(relay)
        await client.send(b"\xc1")
        await refused(client)
    client, _ = await dial(relay)
    started = time.monotonic()
    await client.send(b"\xc1")
    await refused(client)
    assert time.monotonic() - started >= 0.2  # 0.25 s for the first failure over the limit
    await assert_healthy(relay, ["alice", "bob"])


# --- 4. membership ---------------------------------------------------------------------------


async def test_non_member_is_refused_everywhere(relay: RelayProcess) -> None:
    (alice, _), (bob, _), (carol, _) = await asyncio.gather(
        register(relay, "alice"), register(relay, "bob"), register(relay, "carol")
    )
    consult = await alice.open_consult("private", ["bob"])
    await alice.sync({}, full=True)

    # Send: a Reject naming the message, so the sender's outbox stops retrying it.
    cid = secrets.token_bytes(wire.CID_LEN)
    await carol.send(Send(consult, cid, TEXT, b"let me in"))
    reject = await carol.recv()
    assert isinstance(reject, Reject) and reject.cid == cid and reject.code == "denied", reject

    # Sub: an Err, and no backlog leaks.
    await carol.send(Sub({consult: 0}, False))
    frames = await carol.barrier()
    assert len(frames) == 1 and isinstance(frames[0], Err), frames
    assert frames[0].rid == 0 and frames[0].code == "denied"

    # Sub full=True names only the consults she is a member of.
    assert await carol.sync({}, full=True) == [Ready(0)]

    # Receipt: an Err.
    await carol.send(Receipt(consult, 1, 2))
    frames = await carol.barrier()
    assert len(frames) == 1 and isinstance(frames[0], Err) and frames[0].code == "denied", frames

    # Request add (herself, or anyone): Err denied, with the request's rid.
    answer, _ = await carol.request("add", {"consult": consult, "name": "carol"})
    assert isinstance(answer, Err) and answer.code == "denied" and answer.rid == carol._rid, answer

    # A mixed Sub: the foreign consult is refused, her own answered as usual.
    own = await carol.open_consult("own", [])
    frames = await carol.sync({consult: 0, own: 0})
    # (consults are answered in id order; no marks yet, so none are sent)
    errs = [f for f in frames if isinstance(f, Err)]
    assert len(errs) == 1 and errs[0].code == "denied" and consult in errs[0].reason, frames
    own_frames = [f for f in frames if not isinstance(f, Err)]
    assert [type(f) for f in own_frames] == [Msg, CaughtUp] and own_frames[-1] == CaughtUp(own, 1, False)

    # Nothing of hers reached the consult: members see only the "open" event.
    members_view = await bob.sync({consult: 0})
    assert [m.seq for m in msgs(members_view)] == [1]
    assert members_view[-1] == CaughtUp(consult, 1, False)
    answer, _ = await alice.request("list")
    assert isinstance(answer, Ok)
    assert [c["members"] for c in answer.result] == [["alice", "bob"]]

    # Her refused Sub did not make the consult live for her.
    await alice.send_text(consult, b"for members only")
    assert msgs(await bob.barrier()) != []
    assert msgs(await carol.barrier(), consult) == []

    # Unknown consults: not_found.
    cid = secrets.token_bytes(wire.CID_LEN)
    await carol.send(Send(UNKNOWN_CONSULT, cid, TEXT, b"anyone?"))
    reject = await carol.recv()
    assert isinstance(reject, Reject) and reject.cid == cid and reject.code == "not_found", reject
    await carol.send(Sub({UNKNOWN_CONSULT: 0}, False))
    frames = await carol.barrier()
    assert len(frames) == 1 and isinstance(frames[0], Err) and frames[0].code == "not_found", frames
    answer, _ = await carol.request("add", {"consult": UNKNOWN_CONSULT, "name": "carol"})
    assert isinstance(answer, Err) and answer.code == "not_found", answer
    await carol.send(Receipt(UNKNOWN_CONSULT, 1, 1))
    frames = await carol.barrier()
    assert len(frames) == 1 and isinstance(frames[0], Err), frames
    assert frames[0].code in ("denied", "not_found")

    # System messages are the relay's, even for members.
    cid = secrets.token_bytes(wire.CID_LEN)
    await alice.send(Send(consult, cid, wire.KINDS["system"], b"\x80"))
    reject, _ = await alice.until(lambda f: isinstance(f, (Reject, Stored)) and f.cid == cid)
    assert isinstance(reject, Reject) and reject.code == "bad_request", reject

    for c in (alice, bob, carol):
        await c.close()
    await assert_healthy(relay, ["alice", "bob", "carol"])


async def test_wellformed_but_wrong_frames_are_errors_not_crashes(relay: RelayProcess) -> None:
    alice, _ = await register(relay, "alice")
    # A second Auth after Welcome.
    await alice.send(Auth(bytes(32), bytes(64)))
    err = await alice.recv()
    assert isinstance(err, Err) and err.rid == 0 and err.code == "bad_request", err
    # Requests with bad arguments: an Err with the request's rid, nothing half done.
    bad_args: list[tuple[str, dict[str, object], str]] = [
        ("open", {}, "bad_request"),
        ("open", {"title": 7}, "bad_request"),  # "" is fine: devices seal the title apart
        ("open", {"title": "x" * (WIRE.max_title + 1)}, "bad_request"),
        ("open", {"title": "t", "with": "bob"}, "bad_request"),
        ("open", {"title": "t", "with": [f"u{i}" for i in range(WIRE.max_members)]}, "bad_request"),
        ("open", {"title": "t", "with": ["Not A Name"]}, "bad_request"),
        ("open", {"title": "t", "with": [7]}, "bad_request"),
        ("open", {"title": "t", "with": ["nobody"]}, "not_found"),
        ("add", {"consult": 5, "name": "bob"}, "bad_request"),
        ("add", {"consult": UNKNOWN_CONSULT}, "bad_request"),
        ("drop-table", {}, "bad_request"),
    ]
    for op, args, expected in bad_args:
        answer, _ = await alice.request(op, args)
        assert isinstance(answer, Err) and answer.code == expected, (op, args, answer)
    answer, _ = await alice.request("list")
    assert answer == Ok(alice._rid, [])  # no half-opened consult was left behind
    await alice.close()
    await assert_healthy(relay, ["alice"])


async def test_add_cannot_grow_a_consult_past_max_members(relay: RelayProcess) -> None:
    others = [f"member{i:02d}" for i in range(WIRE.max_members)]  # one more than fits
    for name in others:
        await enroll(relay, name)
    alice, _ = await register(relay, "alice")
    consult = await alice.open_consult("full house", others[:-1])
    answer, _ = await alice.request("add", {"consult": consult, "name": others[-1]})
    await alice.close()
    assert isinstance(answer, Err), f"consult grown to {len(answer.result['members'])} members"


# --- 5. a flood ------------------------------------------------------------------------------


async def test_flood_is_paced_not_fatal_and_every_send_is_stored_once(relay: RelayProcess) -> None:
    count = 400  # past the burst allowance: RELAY.rate_burst free, then RELAY.rate_frames a second
    (flooder, _), (bystander, _) = await asyncio.gather(
        register(relay, "flooder"), register(relay, "bystander")
    )
    consult = await flooder.open_consult("flood", ["bystander"])
    cids = [secrets.token_bytes(wire.CID_LEN) for _ in range(count)]
    acks: list[Stored] = []
    past_burst = asyncio.Event()
    all_stored = asyncio.Event()

    async def flood() -> None:
        for cid in cids:
            await flooder.send(Send(consult, cid, TEXT, b"spam"))

    async def collect() -> None:
        while len(acks) < count:
            frame = await flooder.recv(timeout=30)
            if isinstance(frame, Reject):
                raise AssertionError(f"flood message rejected: {frame}")
            if isinstance(frame, Stored):
                acks.append(frame)
                if len(acks) >= RELAY.rate_burst + 20:
                    past_burst.set()
        all_stored.set()

    started = time.monotonic()
    async with asyncio.timeout(30), asyncio.TaskGroup() as group:
        group.create_task(flood())
        group.create_task(collect())
        await past_burst.wait()
        # The flood is being paced now; another client is served promptly all the same.
        sent = time.monotonic()
        other = await bystander.send_text(consult, b"I am still here")
        assert time.monotonic() - sent < 3.0, "a flood on one connection stalled another"
        assert not all_stored.is_set(), "the flood was not paced at all"
        await all_stored.wait()
    elapsed = time.monotonic() - started
    floor = (count - RELAY.rate_burst) / RELAY.rate_frames
    assert elapsed >= 0.7 * floor, f"{count} frames in {elapsed:.1f} s: not paced"

    # Every flood message stored exactly once, in the order sent, with no gaps or repeats.
    assert Counter(a.cid for a in acks) == Counter(cids)
    by_cid = {a.cid: a.seq for a in acks}
    seqs = [by_cid[cid] for cid in cids]
    assert seqs == sorted(seqs) and len(set(seqs)) == count
    assert sorted([1, other.seq, *seqs]) == list(range(1, count + 3))
    assert seqs[0] < other.seq < seqs[-1], "the bystander's message was not served during the flood"

    # The bystander, live on the consult, got every flood message pushed once, in order.
    await bystander.barrier()
    pushed = [m.seq for m in msgs(bystander.seen) if m.sender == "flooder" and m.seq > 1]
    assert pushed == seqs

    # The connection survived the flood, and the log says the same.
    await flooder.barrier()
    log: list[Msg] = []
    while True:
        page = await bystander.sync({consult: log[-1].seq if log else 0})
        log += msgs(page)
        assert isinstance(page[-1], CaughtUp) and page[-1].last_seq == log[-1].seq
        if not page[-1].more:
            break
    assert [m.seq for m in log] == list(range(1, count + 3))
    assert Counter(m.cid for m in log if m.sender == "flooder") == Counter(cids) + Counter([log[0].cid])
    await flooder.close()
    await bystander.close()
    await assert_healthy(relay, ["flooder", "bystander"])


# --- 6. duplicate sends ----------------------------------------------------------------------


async def test_duplicate_send_gets_the_same_seq_and_is_delivered_once(relay: RelayProcess) -> None:
    (alice, _), (bob, _) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("retries", ["bob"])
    await bob.sync({}, full=True)  # caught up (already live: the consult is new)

    cid = secrets.token_bytes(wire.CID_LEN)
    frame = Send(consult, cid, TEXT, b"original")
    await alice.send(frame)
    await alice.send(frame)  # a retry in the same loop turn (same group commit)
    first, _ = await alice.until(lambda f: isinstance(f, Stored) and f.cid == cid)
    second, _ = await alice.until(lambda f: isinstance(f, Stored) and f.cid == cid)
    # A retry much later (another transaction), even with another body: the original stands.
    third = await alice.send_text(consult, b"edited on retry", cid=cid)
    assert first.seq == second.seq == third.seq == 2
    assert first.time == second.time == third.time

    # The same cid from another sender is another message.
    bobs = await bob.send_text(consult, b"same cid, other sender", cid=cid)
    assert bobs.seq == 3

    # Bob saw alice's message once, and nothing else of hers before the marker.
    marker = await alice.send_text(consult, b"marker")
    await bob.until(lambda f: isinstance(f, Msg) and f.seq == marker.seq)
    await bob.barrier()
    from_alice = [(m.seq, m.body) for m in msgs(bob.seen) if m.sender == "alice" and m.seq > 1]
    assert from_alice == [(2, b"original"), (marker.seq, b"marker")]
    assert [m.seq for m in msgs(alice.seen) if m.sender == "alice"] == [1]  # never her own, but "open"

    log = msgs(await alice.sync({consult: 0}))
    assert [m.seq for m in log] == [1, 2, 3, 4]
    assert [m.body for m in log[1:]] == [b"original", b"same cid, other sender", b"marker"]
    await alice.close()
    await bob.close()
    await assert_healthy(relay, ["alice", "bob"])


# --- 7. resume and paging --------------------------------------------------------------------


async def test_resume_from_cursor(relay: RelayProcess) -> None:
    (alice, _), (bob, bob_device) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    await bob.close()
    consult = await alice.open_consult("resume", ["bob"])
    bodies = [b"one", b"two", b"three"]
    for body in bodies:
        await alice.send_text(consult, body)
    last = 1 + len(bodies)

    bob = await login(relay, bob_device)
    frames = await bob.sync({consult: 0}, full=True)
    log = msgs(frames)
    assert [m.seq for m in log] == list(range(1, last + 1))
    assert [m.body for m in log[1:]] == bodies and log[0].kind == wire.KINDS["system"]
    assert all(m.consult == consult for m in log)
    # The Msgs come first; then the members' marks (none yet: zero marks are not sent),
    # CaughtUp and, for a full Sub, Ready.
    tail = frames[len(log) :]
    assert tail == [CaughtUp(consult, last, False), Ready(1)]

    # A cursor at the end: no messages, only the marks and CaughtUp (and no Ready).
    frames = await bob.sync({consult: last})
    assert msgs(frames) == [] and frames[-1] == CaughtUp(consult, last, False)
    assert not any(isinstance(f, Ready) for f in frames)
    # A cursor in the middle: exactly the rest.
    frames = await bob.sync({consult: 2})
    assert [m.seq for m in msgs(frames)] == [3, 4] and frames[-1] == CaughtUp(consult, last, False)
    # A cursor from the future is clamped, not trusted.
    frames = await bob.sync({consult: 10**9})
    assert msgs(frames) == [] and frames[-1] == CaughtUp(consult, last, False)

    # Receipts: marks never go down and never pass the log.
    await bob.send(Receipt(consult, 10**6, 2))
    frames = await bob.barrier()
    assert Receipts(consult, "bob", last, last) in frames
    await bob.send(Receipt(consult, 1, 1))
    assert await bob.barrier() == []
    await alice.close()
    await bob.close()
    await assert_healthy(relay, ["alice", "bob"])


async def test_resume_pages_past_max_batch(relay: RelayProcess) -> None:
    (alice, alice_device), (bob, bob_device) = await asyncio.gather(
        register(relay, "alice"), register(relay, "bob")
    )
    await bob.close()  # comes back later, to catch up from nothing
    consult = await alice.open_consult("long", ["bob"])
    # Three connections share the work so that each stays inside its burst allowance.
    per_conn = WIRE.max_batch // 3 + 4
    senders = [alice, await login(relay, alice_device), await login(relay, alice_device)]

    async def fill(client: Client) -> None:
        cids = [secrets.token_bytes(wire.CID_LEN) for _ in range(per_conn)]
        for cid in cids:
            await client.send(Send(consult, cid, TEXT, b"page me"))
        pending = set(cids)
        async with asyncio.timeout(20):
            while pending:
                frame = await client.recv()
                assert not isinstance(frame, Reject), frame
                if isinstance(frame, Stored):
                    pending.discard(frame.cid)

    async with asyncio.TaskGroup() as group:
        for client in senders:
            group.create_task(fill(client))
    last = 1 + 3 * per_conn
    assert last > WIRE.max_batch

    bob = await login(relay, bob_device)
    # Page one: max_batch messages, then CaughtUp(more=True), no marks, still a Ready.
    frames = await bob.sync({}, full=True)
    assert [m.seq for m in msgs(frames)] == list(range(1, WIRE.max_batch + 1))
    assert frames[-2:] == [CaughtUp(consult, WIRE.max_batch, True), Ready(1)]
    assert not any(isinstance(f, Receipts) for f in frames)

    # Not caught up yet: a message stored now is not pushed live; it comes with the next page.
    extra = await alice.send_text(consult, b"while paging")
    assert msgs(await bob.barrier()) == []

    frames = await bob.sync({consult: WIRE.max_batch})
    assert [m.seq for m in msgs(frames)] == list(range(WIRE.max_batch + 1, extra.seq + 1))
    assert frames[-1] == CaughtUp(consult, extra.seq, False)

    # Caught up now: live from here on.
    live = await alice.send_text(consult, b"live")
    msg, _ = await bob.until(lambda f: isinstance(f, Msg))
    assert isinstance(msg, Msg) and msg.seq == live.seq == last + 2
    for client in (*senders, bob):
        await client.close()
    await assert_healthy(relay, ["alice", "bob"])


async def test_full_resume_of_many_consults_fits_the_send_queue(relay: RelayProcess) -> None:
    # Every caught-up consult costs one Receipts per member plus a CaughtUp, on top of the
    # max_batch messages; all of them are queued in one go, before the writer can drain any.
    members = WIRE.max_members
    others = [f"member{i:02d}" for i in range(members - 1)]
    consults = RELAY.send_queue // (members + 2) + 2
    for name in others:
        await enroll(relay, name)
    alice, device = await register(relay, "alice")
    for i in range(consults):
        await alice.open_consult(f"consult {i}", others)
    await alice.close()

    # A fresh device of alice's resumes, reading as fast as it can, as the real client does.
    client = await login(relay, device)
    await client.send(Sub({}, True))
    try:
        await client.until(lambda f: isinstance(f, Ready), timeout=20)
    except ConnectionClosed as exc:
        raise AssertionError(f"closed during resume: {exc.rcvd}") from None
    assert len([f for f in client.seen if isinstance(f, CaughtUp)]) == consults
    await client.close()


# --- 8. live fan-out -------------------------------------------------------------------------


async def test_live_fan_out(relay: RelayProcess) -> None:
    (alice, alice_device), (bob, _) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("live", ["bob"])
    alice2 = await login(relay, alice_device)  # alice's second device
    for client in (alice, alice2, bob):
        frames = await client.sync({}, full=True)
        assert frames[-2:] == [CaughtUp(consult, 1, False), Ready(1)]

    stored = await alice.send_text(consult, b"hello bob")
    assert stored.seq == 2
    for client in (bob, alice2):
        msg, skipped = await client.until(lambda f: isinstance(f, Msg))
        assert msgs(skipped) == []
        assert msg == Msg(consult, 2, msg.cid, "alice", stored.time, TEXT, b"hello bob")
        assert msg.cid == stored.cid
    # The sender's own connection gets the Stored, never a Msg of its own message.
    assert msgs(await alice.barrier()) == []

    # Receipts go to the caught-up connections of every member.
    await bob.send(Receipt(consult, 2, 2))
    for client in (alice, alice2):
        marks, _ = await client.until(lambda f: isinstance(f, Receipts))
        assert marks == Receipts(consult, "bob", 2, 2)

    # And back: bob's message reaches both of alice's devices.
    reply = await bob.send_text(consult, b"hello alice")
    for client in (alice, alice2):
        msg, _ = await client.until(lambda f: isinstance(f, Msg))
        assert isinstance(msg, Msg) and (msg.seq, msg.sender) == (reply.seq, "bob")
    assert msgs(await bob.barrier()) == []

    # A member added later is woken by the "add" event, even though it never subscribed.
    carol, _ = await register(relay, "carol")
    answer, _ = await bob.request("add", {"consult": consult, "name": "carol"})
    assert isinstance(answer, Ok) and answer.result["members"] == ["alice", "bob", "carol"]
    wake, _ = await carol.until(lambda f: isinstance(f, Msg))
    assert isinstance(wake, Msg) and wake.kind == wire.KINDS["system"] and wake.seq == reply.seq + 1
    for client in (alice, alice2, bob, carol):
        await client.close()
    await assert_healthy(relay, ["alice", "bob", "carol"])


# --- 9. SIGTERM ------------------------------------------------------------------------------


async def test_sigterm_exits_zero_promptly_with_clients_connected(relay: RelayProcess) -> None:
    assert relay.proc is not None
    (alice, _), (bob, bob_device) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("before shutdown", ["bob"])
    stored = await alice.send_text(consult, b"durable")
    await bob.sync({}, full=True)
    lurker, _ = await dial(relay)  # connected and challenged, not authenticated

    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(relay.proc.wait, 8)
    assert code == 0
    assert time.monotonic() - started < 6
    for client in (alice, bob, lurker):
        close_code, _, _ = await client.closed(timeout=5)
        assert close_code == 1001  # going away: clients reconnect and resume

    # Restarted on the same data: the acknowledged message is there, the relay healthy.
    relay.start()
    bob = await login(relay, bob_device)
    log = msgs(await bob.sync({consult: 0}))
    assert [(m.seq, m.body) for m in log[1:]] == [(stored.seq, b"durable")]
    await bob.close()
    await assert_healthy(relay, ["alice", "bob"])


async def test_sigterm_is_not_held_up_by_a_silent_tcp_connection(relay: RelayProcess) -> None:
    assert relay.proc is not None
    silent = socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT)
    try:
        # Connections are accepted in order: once a later one is challenged, the silent one
        # has been accepted too (and sits in its opening handshake).
        later, _ = await dial(relay)
        relay.proc.send_signal(signal.SIGTERM)
        assert (await later.closed(timeout=5))[0] == 1001  # WebSocket connections go at once
        try:
            code = await asyncio.to_thread(relay.proc.wait, 4)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, "relay still running 4 s after SIGTERM"
    finally:
        silent.close()
        relay.kill()


# --- 10. the authentication deadline ---------------------------------------------------------


async def test_silent_client_is_not_closed_early(relay: RelayProcess) -> None:
    """The auth deadline (RELAY.auth_deadline, 30 s) is for slow links: 2 s of silence is fine."""
    assert RELAY.auth_deadline > 2
    alice_code = await enroll(relay, "alice")
    client, challenge = await dial(relay)
    await asyncio.sleep(2.0)
    assert client.ws.state is State.OPEN
    async with asyncio.timeout(WAIT):
        await (await client.ws.ping())  # the relay still answers
    # And the challenge it sent is still good.
    seed = secrets.token_bytes(32)
    pubkey, sig = sign_challenge(seed, challenge.nonce, b"register")
    await client.send(Register("alice", alice_code, pubkey, sig))
    assert welcomed(await client.recv()) == ("alice", "clinic")
    await client.close()
    await assert_healthy(relay, ["alice"])


# --- 11. per-address limits --------------------------------------------------------------------

SMALL_OPEN, SMALL_PENDING = 6, 2  # small limits so that reaching them takes a handful of sockets


@pytest.fixture
def small_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    extra = ["--max-per-address", str(SMALL_OPEN), "--max-pending-per-address", str(SMALL_PENDING)]
    r = RelayProcess(tmp_path / "relay", extra=extra).start()
    try:
        yield r
    finally:
        r.stop()


async def open_ws(relay: RelayProcess) -> Client:
    ws = await connect(relay.url, open_timeout=WAIT, close_timeout=2, ping_interval=None, compression=None)
    return Client(ws)


async def refused_try_later(relay: RelayProcess) -> str:
    """Dial: the upgrade goes through, then a 1013 close with a reason and not one frame."""
    client = await open_ws(relay)
    code, reason, frames = await client.closed()
    assert (code, frames) == (1013, []), (code, reason, frames)
    assert reason
    return reason


async def challenged_soon(relay: RelayProcess) -> tuple[Client, Challenge]:
    """Dial until challenged: a connection that just ended gives its count back a moment
    after its close (when the relay sees the socket go), so a 1013 meanwhile is retried."""
    async with asyncio.timeout(WAIT):
        while True:
            client = await open_ws(relay)
            try:
                first = await client.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1013, exc
                await asyncio.sleep(0.05)
                continue
            assert isinstance(first, Challenge), first
            return client, first


async def login_soon(relay: RelayProcess, device: Device) -> Client:
    client, challenge = await challenged_soon(relay)
    pubkey, sig = sign_challenge(device.seed, challenge.nonce, b"auth")
    await client.send(Auth(pubkey, sig))
    assert welcomed(await client.recv()) == (device.name, device.role)
    return client


def silent_sockets(relay: RelayProcess, n: int) -> list[socket.socket]:
    """TCP connections that never send their upgrade request: the slow-handshake attack."""
    return [socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT) for _ in range(n)]


async def assert_limits_free(relay: RelayProcess, device: Device) -> None:
    """Every count of the address is back at zero: exactly SMALL_PENDING connections may
    wait to authenticate, and exactly SMALL_OPEN may be open at once."""
    waiting = [(await challenged_soon(relay))[0] for _ in range(SMALL_PENDING)]
    assert "authenticating" in await refused_try_later(relay)
    for client in waiting:
        await client.close()
    opened = [await login_soon(relay, device) for _ in range(SMALL_OPEN)]
    assert "too many connections" in await refused_try_later(relay)
    for client in opened:
        await client.close()


async def test_connections_waiting_to_authenticate_are_bounded_per_address(small_relay: RelayProcess) -> None:
    relay = small_relay
    alice, device = await register(relay, "alice")
    a, challenge = await dial(relay)
    b, _ = await dial(relay)
    reason = await refused_try_later(relay)
    assert "authenticating" in reason and f"limit {SMALL_PENDING}" in reason, reason
    # One of them signs in: it stops counting as pending, and a new connection is challenged.
    code = await enroll(relay, "bob")
    bob_key = sign_challenge(secrets.token_bytes(32), challenge.nonce, b"register")
    await a.send(Register("bob", code, *bob_key))
    assert welcomed(await a.recv()) == ("bob", "clinic")
    c, _ = await challenged_soon(relay)
    assert "authenticating" in await refused_try_later(relay)
    for client in (b, c):
        await client.close()

    # The slow-handshake attack: sockets that never finish their upgrade count as pending
    # from the moment they are accepted. Past the pending bound they would only be refused
    # after an upgrade, so one more set of them is let in to be refused; after that the
    # next connection is dropped at accept (no HTTP answer at all), not read or held.
    await asyncio.sleep(0.2)  # b and c gone at the relay too (their counts given back)
    held = silent_sockets(relay, 2 * SMALL_PENDING)
    try:
        await asyncio.sleep(0.2)  # accepted by the relay's loop
        started = time.monotonic()
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any failure to upgrade will do
            await open_ws(relay)
        assert not isinstance(caught.value, ConnectionClosed), caught.value
        assert time.monotonic() - started < 2.0, "a dropped connection must not be held"
        # Authenticated connections are untouched by all this.
        assert await alice.barrier() == []
        assert await a.barrier() == []
    finally:
        for s in held:
            s.close()
    # Their counts come back when the sockets go.
    client, _ = await challenged_soon(relay)
    await client.close()
    await a.close()
    await alice.close()
    await assert_limits_free(relay, device)
    await assert_healthy(relay)


async def test_open_connections_are_bounded_per_address(small_relay: RelayProcess) -> None:
    relay = small_relay
    first, device = await register(relay, "alice")
    clients = [first, *[await login_soon(relay, device) for _ in range(SMALL_OPEN - 1)]]
    reason = await refused_try_later(relay)
    assert "too many connections from your address" in reason and f"limit {SMALL_OPEN}" in reason, reason
    for client in clients:  # the ones inside keep working
        assert await client.barrier() == []
    await clients.pop().close()
    clients.append(await login_soon(relay, device))
    assert "too many connections" in await refused_try_later(relay)
    for client in clients:
        await client.close()
    await assert_limits_free(relay, device)


async def test_address_counts_are_given_back_on_every_exit_path(small_relay: RelayProcess) -> None:
    relay = small_relay
    alice, device = await register(relay, "alice")
    await alice.close()

    # Closed by the client, after authenticating.
    client = await login_soon(relay, device)
    await client.close()
    # Refused authentication: garbage first frame, and a bad signature (1008 both).
    client, _ = await challenged_soon(relay)
    await client.send(b"\xc1")
    await refused(client)
    client, challenge = await challenged_soon(relay)
    pubkey, _ = sign_challenge(device.seed, challenge.nonce, b"auth")
    await client.send(Auth(pubkey, bytes(64)))
    assert (await refused(client)).code == "auth"
    # Too big a message (1009), before and after authenticating.
    client, _ = await challenged_soon(relay)
    await client.send(b"\x00" * (WIRE.max_frame + 1))
    assert (await client.closed())[0] == 1009
    client = await login_soon(relay, device)
    await client.send(b"\x93" + b"\x00" * WIRE.max_frame)
    assert (await client.closed())[0] == 1009
    # Closed by the relay for bad frames (1008) after authenticating.
    client = await login_soon(relay, device)
    try:
        for data in _bad_frames():
            await client.send(data)
    except ConnectionClosed:
        pass
    assert (await client.closed())[0] == 1008
    # The TCP connection simply vanishing, waiting to authenticate and authenticated.
    client, _ = await challenged_soon(relay)
    client.ws.transport.abort()
    client = await login_soon(relay, device)
    client.ws.transport.abort()
    # Silent sockets that never upgrade, and connections refused for being over a limit.
    held = silent_sockets(relay, SMALL_PENDING)
    await asyncio.sleep(0.2)
    assert "authenticating" in await refused_try_later(relay)
    for s in held:
        s.close()
    # Relay-side: every count back at zero.
    await assert_limits_free(relay, device)
    await assert_healthy(relay)


# --- 12. enrolment rate -------------------------------------------------------------------------


async def test_enrolment_attempts_per_address_are_bounded(relay: RelayProcess) -> None:
    names = [f"nurse{i:02d}" for i in range(RELAY.enrol_attempts + 1)]
    codes = {name: await enroll(relay, name) for name in names}
    devices = []
    for name in names[:-1]:  # successful enrolments count too
        client, device = await register_with(relay, name, codes[name])
        devices.append(device)
        await client.close()
    # One more within the minute: an auth error that says how long to wait, before any
    # signature is checked; a code that is right all the same.
    client, challenge = await dial(relay)
    seed = secrets.token_bytes(32)
    last = names[-1]
    await client.send(Register(last, codes[last], *sign_challenge(seed, challenge.nonce, b"register")))
    code, why, frames = await client.closed()
    assert code == 1013 and why, (code, why)
    assert len(frames) == 1 and isinstance(frames[0], Err) and frames[0].code == "auth", frames
    wait = re.fullmatch(r"too many attempts, wait (\d+) s", frames[0].reason)
    assert wait is not None and 1 <= int(wait.group(1)) <= int(RELAY.enrol_window), frames[0].reason

    # Logging in with an enrolled device is not an enrolment: never held back by it.
    alice = await login(relay, devices[0])
    await alice.close()
    # Failed logins stay throttled: the free ones are answered at once, then each waits longer.
    for i in range(RELAY.login_failures + 3):
        client, challenge = await dial(relay)
        pubkey, _ = sign_challenge(devices[0].seed, challenge.nonce, b"auth")
        started = time.monotonic()
        await client.send(Auth(pubkey, bytes(64)))
        assert (await refused(client)).code == "auth"
        elapsed = time.monotonic() - started
        if i == RELAY.login_failures:
            assert elapsed >= 0.2, f"failure {i + 1} answered after {elapsed:.2f} s: not throttled"
    # An enrolment refused for the rate is no guess: it is answered at once (not after the
    # 2 s a ninth failure costs), and does not add to the failures.
    client, challenge = await dial(relay)
    started = time.monotonic()
    last = names[-1]
    await client.send(Register(last, codes[last], *sign_challenge(seed, challenge.nonce, b"register")))
    code, _, frames = await client.closed()
    assert code == 1013 and "too many attempts" in frames[0].reason, frames
    assert time.monotonic() - started < 1.5
    # Still serving (a fresh enrolment would be refused for the next minute, so: a login).
    alice = await login(relay, devices[0])
    consult = await alice.open_consult("after the storm", [devices[1].name])
    assert (await alice.send_text(consult, b"still here")).seq == 2
    await alice.close()


async def register_with(relay: RelayProcess, name: str, code: str) -> tuple[Client, Device]:
    device = Device(name, "clinic", secrets.token_bytes(32))
    client, challenge = await dial(relay)
    await client.send(Register(name, code, *sign_challenge(device.seed, challenge.nonce, b"register")))
    assert welcomed(await client.recv()) == (name, "clinic")
    return client, device


# --- 13. answers that would not fit a frame -----------------------------------------------------


async def test_an_answer_over_the_frame_limit_is_an_error_not_a_dropped_link(tmp_path: Path) -> None:
    """A directory of ~900 long names is over 64 KiB: the client would close its link on
    such a frame (1009), reconnect and ask again, forever; it gets an error instead."""
    from medcomm.server.store import RelayStore

    data = tmp_path / "relay"
    store = RelayStore(data)
    try:
        store.db.execute("PRAGMA synchronous=OFF")  # setup rows only; the relay opens its own
        code = store.enroll("alice", "clinic", 3600)
        for i in range(WIRE.max_frame // 64 + 50):
            store.enroll(f"user{i:04d}-" + "x" * 54, "clinic", 3600)
    finally:
        store.close()
    relay = RelayProcess(data).start()
    try:
        alice, _ = await register_with(relay, "alice", code)
        answer, _ = await alice.request("users")
        assert isinstance(answer, Err) and answer.code == "limit" and "frame limit" in answer.reason, answer
        assert await alice.barrier() == []  # the link is still up
        await alice.close()
    finally:
        relay.stop()


# --- 14. in-process: what a subprocess cannot show -----------------------------------------------


@contextlib.asynccontextmanager
async def in_process_relay(
    data: Path, limits: RelayLimits = RELAY
) -> AsyncIterator[tuple[Relay, RelayProcess]]:
    """The relay's logic served on this test's loop, for tests that must look inside it or
    slow its disk down; the RelayProcess returned only lends ``dial`` its url."""
    from websockets.asyncio.server import serve

    store = RelayStore(data)
    relay = Relay(store, limits)
    server = await serve(relay.handler, "127.0.0.1", 0, compression=None, max_size=WIRE.max_frame)
    try:
        yield relay, RelayProcess(data, port=server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
        relay.close()
        store.close()


async def test_reading_pauses_while_too_many_sends_wait_for_the_store(tmp_path: Path) -> None:
    """A stalled disk must not let one connection pile up unbounded sends in memory: past
    ``max_unstored`` the relay stops reading that connection until the store catches up."""
    limit = 8
    disk = threading.Event()  # the "disk" answers only once this is set
    limits = dataclasses.replace(RELAY, max_unstored=limit)
    async with in_process_relay(tmp_path / "relay", limits) as (relay, local):
        code = relay.store.enroll("alice", "clinic", 3600)
        relay.store.enroll("bob", "clinic", 3600)
        real_write = relay.store.store_batch_writer

        def stalled_write(items: list) -> list:
            disk.wait(WAIT)
            return real_write(items)

        relay.store.store_batch_writer = stalled_write  # type: ignore[method-assign]
        try:
            alice, _ = await register_with(local, "alice", code)
            consult = await alice.open_consult("stalled disk", ["bob"])
            cids = [secrets.token_bytes(wire.CID_LEN) for _ in range(3 * limit)]
            for cid in cids:
                await alice.send(Send(consult, cid, TEXT, b"x"))
            await asyncio.sleep(0.5)
            (conn,) = relay.conns["alice"]
            assert conn.unstored == limit, f"{conn.unstored} sends read while the store was stalled"
            disk.set()
            acks = set()
            async with asyncio.timeout(WAIT):
                while len(acks) < len(cids):
                    frame = await alice.recv()
                    if isinstance(frame, Stored):
                        acks.add(frame.cid)
            assert acks == set(cids) and conn.unstored == 0
            assert await alice.barrier() == []
            await alice.close()
        finally:
            disk.set()


async def test_a_slow_blob_write_holds_neither_the_loop_nor_the_order_of_chunks(tmp_path: Path) -> None:
    """Blob chunks are fsynced and a finished blob is hashed (up to 16 MiB): on the loop, a
    slow disk held every call's voice frames for as long. The blob thread writes them while
    the loop answers the same connection, and pipelined chunks still land in order."""
    stall = 1.5
    disk = threading.Event()
    async with in_process_relay(tmp_path / "relay") as (relay, local):
        code = relay.store.enroll("alice", "clinic", 3600)
        relay.store.enroll("bob", "clinic", 3600)
        real_request = relay.blobs.request

        def slow_disk(user: str, op: str, args: dict, member_of: Callable[[str], bool]) -> object:
            if op == "blob.put" and args["offset"] == 0:
                disk.wait(stall)  # the first chunk's fsync takes its time
            return real_request(user, op, args, member_of)

        relay.blobs.request = slow_disk  # type: ignore[method-assign]
        alice, _ = await register_with(local, "alice", code)
        consult = await alice.open_consult("slow disk", ["bob"])
        data = secrets.token_bytes(3 * 8192)
        sha = hashlib.sha256(data).digest()
        rids = []
        for i, offset in enumerate(range(0, len(data), 8192)):  # all three before any answer
            args = {"consult": consult, "sha": sha, "offset": offset, "data": data[offset : offset + 8192]}
            rids.append(900 + i)
            await alice.send(Request(900 + i, "blob.put", {**args, "size": len(data)} if i == 0 else args))
        started = time.monotonic()
        answer, skipped = await alice.request("whoami", timeout=stall * 0.6)
        assert isinstance(answer, Ok) and time.monotonic() - started < stall * 0.6
        assert not disk.is_set(), "answered while the first chunk was still being written"
        assert not [f for f in skipped if isinstance(f, (Ok, Err))], "no put answered before its chunk"
        disk.set()
        answers = [await alice.until(lambda f, r=r: isinstance(f, (Ok, Err)) and f.rid == r) for r in rids]
        haves = [a.result["have"] for a, _ in answers]  # type: ignore[union-attr]
        assert haves == [8192, 16384, 24576], "each chunk at the stored offset, in order"
        assert answers[-1][0].result["complete"] is True  # type: ignore[union-attr]
        (conn,) = relay.conns["alice"]
        assert conn.unstored == 0
        await alice.close()


async def test_a_live_calls_record_is_saved_as_it_runs_and_dropped_when_it_ends(tmp_path: Path) -> None:
    """The crash record of a live call grows with it (every record_every), and goes once the
    call has ended and its history entry is written."""
    from medcomm.server.calls import CallLimits

    async with in_process_relay(tmp_path / "relay") as (relay, local):
        relay.calls.limits = CallLimits(record_every=0.2)
        codes = {n: relay.store.enroll(n, "clinic", 3600) for n in ("alice", "bob")}
        alice, _ = await register_with(local, "alice", codes["alice"])
        bob, _ = await register_with(local, "bob", codes["bob"])
        consult = await alice.open_consult("record", ["bob"])
        answer, _ = await alice.request("call", {"consult": consult})
        assert isinstance(answer, Ok), answer
        call = answer.result["call"]  # type: ignore[index]
        answer, _ = await bob.request("answer", {"call": call})
        assert isinstance(answer, Ok), answer

        def saved() -> list[dict]:
            return [msgpack.unpackb(body) for c, _, _, body in relay.store.interrupted_calls() if c == call]

        await asyncio.sleep(0.7)
        (record,) = saved()
        assert record["outcome"] == "interrupted" and record["members"] == ["alice", "bob"]
        assert record["duration_s"] >= 0.3, "saved again as the call ran"
        answer, _ = await alice.request("hangup", {"call": call})
        assert isinstance(answer, Ok), answer
        await asyncio.sleep(0.3)
        assert saved() == [], "an ended call leaves its history entry, not a crash record"
        for client in (alice, bob):
            await client.close()


async def test_a_slow_disk_at_a_calls_end_holds_no_other_calls_voice(tmp_path: Path) -> None:
    """An ended call's history entry is fsynced: on the loop, a slow disk held every other
    call's voice frames for as long. It is written on the writer thread, and the call's crash
    record goes only once the entry is on disk."""
    stall = 1.5
    disk = threading.Event()
    async with in_process_relay(tmp_path / "relay") as (relay, local):
        codes = {n: relay.store.enroll(n, "clinic", 3600) for n in ("alice", "bob", "carol", "dave")}
        real_store = relay.store.store_batch

        def slow_disk(items: list, *args: object, **kwargs: object) -> object:
            if any(kind == wire.KINDS["call"] for _, _, _, kind, _ in items):
                disk.wait(stall)  # the call's history entry takes its time
            return real_store(items, *args, **kwargs)

        relay.store.store_batch = slow_disk  # type: ignore[method-assign]
        c = {n: (await register_with(local, n, code))[0] for n, code in codes.items()}
        calls = []
        for caller, callee in (("alice", "bob"), ("carol", "dave")):
            consult = await c[caller].open_consult(f"{caller}'s", [callee])
            answer, _ = await c[caller].request("call", {"consult": consult})
            assert isinstance(answer, Ok), answer
            calls.append(answer.result["call"])  # type: ignore[index]
            answer, _ = await c[callee].request("answer", {"call": calls[-1]})
            assert isinstance(answer, Ok), answer
        await asyncio.sleep(0.2)  # the live calls' records are saved
        assert {row[0] for row in relay.store.interrupted_calls()} == set(calls)
        started = time.monotonic()  # the relay runs on this loop: a stalled loop stalls this test too
        await c["alice"].send(Request(77, "hangup", {"call": calls[0]}))
        await asyncio.sleep(0.1)  # the relay has read it and is writing the call's entry
        await c["carol"].send(voiceframe.MediaFrame.outgoing(0, 0, 0x80 | 100, b"opus").pack())
        async with asyncio.timeout(stall * 0.6):
            while not (isinstance(data := await c["dave"].ws.recv(), bytes) and voiceframe.is_voice(data)):
                pass
        assert time.monotonic() - started < stall * 0.6 and not disk.is_set()
        answer, _ = await c["alice"].until(lambda f: isinstance(f, (Ok, Err)) and f.rid == 77, stall * 0.3)
        assert isinstance(answer, Ok), answer
        assert calls[0] in {row[0] for row in relay.store.interrupted_calls()}, "dropped before its entry"
        disk.set()
        entry, _ = await c["bob"].until(lambda f: isinstance(f, Msg) and f.kind == wire.KINDS["call"])
        assert isinstance(entry, Msg)
        async with asyncio.timeout(WAIT):
            while calls[0] in {row[0] for row in relay.store.interrupted_calls()}:
                await asyncio.sleep(0.02)
        assert {row[0] for row in relay.store.interrupted_calls()} == {calls[1]}
        for client in c.values():
            await client.close()


async def test_asking_about_a_consult_before_it_exists_does_not_hide_it_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request naming a consult id nobody holds yet (a call into it, say) must not leave
    the relay believing that consult has no members once it is opened: its messages would
    then reach no one live."""
    from medcomm.server import store as store_module

    async with in_process_relay(tmp_path / "relay") as (relay, local):
        code_a = relay.store.enroll("alice", "clinic", 3600)
        code_b = relay.store.enroll("bob", "clinic", 3600)
        alice, _ = await register_with(local, "alice", code_a)
        bob, _ = await register_with(local, "bob", code_b)
        await bob.sync({}, full=True)
        future_id = "aaaaaa"
        answer, _ = await alice.request("call", {"consult": future_id})
        assert isinstance(answer, Err) and answer.code == "denied", answer
        # The next consult id the store makes is "aaaaaa" (index 10 of its alphabet).
        monkeypatch.setattr(store_module.secrets, "choice", lambda alphabet: alphabet[10])
        consult = await alice.open_consult("opened after", ["bob"])
        monkeypatch.undo()
        assert consult == future_id
        stored = await alice.send_text(consult, b"for bob, live")
        msg, _ = await bob.until(lambda f: isinstance(f, Msg) and f.seq == stored.seq)
        assert isinstance(msg, Msg) and msg.body == b"for bob, live"
        for client in (alice, bob):
            await client.close()


# --- 15. no compression -------------------------------------------------------------------------


async def test_the_relay_never_agrees_to_compression(relay: RelayProcess) -> None:
    """permessage-deflate costs memory per connection and cannot shrink Opus or ciphertext:
    a client that offers it gets a connection without it."""
    offer = "deflate"
    ws = await connect(relay.url, open_timeout=WAIT, close_timeout=2, ping_interval=None, compression=offer)
    try:
        assert ws.request is not None
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers
        assert isinstance(Client(ws)._decode(await ws.recv()), Challenge)
    finally:
        await ws.close()

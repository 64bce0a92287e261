"""Live calls through a real relay process: signalling, the voice plane, and the call's record.

Raw WebSocket clients from ``test_relay_hostile`` speak the wire protocol by hand. Voice
frames are binary messages whose first byte is below 0x80; everything else is msgpack, so
the readers here keep the two apart (``Client.recv`` would refuse a voice frame). Every wait
is bounded, and each test ends by checking that the relay is still healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from medcomm.core import voiceframe, wire
from medcomm.core.wire import CallState, Err, Msg, Ok, Request
from medcomm.server.relay import MAX_STRAY_VOICE
from tests.harness.relay import RelayProcess
from tests.server.test_relay_hostile import WAIT, Client, assert_healthy, login, register

pytestmark = pytest.mark.timeout(60)

CALL_KIND = wire.KINDS["call"]
_rids = itertools.count(10_000)  # clear of the rids Client.request hands out

Item = bytes | wire.Frame  # a raw voice frame, or a decoded msgpack frame


def media(seq: int, payload: bytes = b"opus-packet", level: int = 0x80 | 60) -> bytes:
    """An uplink media frame (slot 0): tag, seq, ts16, level, Opus packet."""
    return voiceframe.MediaFrame.outgoing(seq, seq * 60, level, payload).pack()


def is_voice(item: Item) -> bool:
    return isinstance(item, bytes)


async def read(client: Client, timeout: float = WAIT) -> Item:
    async with asyncio.timeout(timeout):
        data = await client.ws.recv()
    if isinstance(data, bytes) and data and data[0] < voiceframe.VOICE_BELOW:
        return data
    frame = wire.decode(data, wire.RELAY_TYPES)
    client.seen.append(frame)
    return frame


async def until(
    client: Client, pred: Callable[[Item], bool], timeout: float = WAIT
) -> tuple[Item, list[Item]]:
    """The first item matching pred, and every item (voice or not) received before it."""
    skipped: list[Item] = []
    async with asyncio.timeout(timeout):
        while True:
            item = await read(client)
            if pred(item):
                return item, skipped
            skipped.append(item)


async def request(
    client: Client, op: str, args: dict[str, object] | None = None
) -> tuple[Ok | Err, list[Item]]:
    """A request on a connection that may also be receiving voice."""
    rid = next(_rids)
    await client.send(Request(rid, op, args or {}))
    answer, skipped = await until(client, lambda f: isinstance(f, (Ok, Err)) and f.rid == rid)
    assert isinstance(answer, (Ok, Err))
    return answer, skipped


async def barrier(client: Client) -> list[Item]:
    """Everything the relay queued for this connection before it answers a fresh whoami
    (voice frames go out ahead of the reliable queue, so none can be behind the answer)."""
    answer, skipped = await request(client, "whoami")
    assert isinstance(answer, Ok), answer
    return skipped


async def call_state(client: Client, state: str) -> tuple[CallState, list[Item]]:
    frame, skipped = await until(client, lambda f: isinstance(f, CallState) and f.state == state)
    assert isinstance(frame, CallState)
    return frame, skipped


async def voice(client: Client) -> tuple[bytes, list[Item]]:
    data, skipped = await until(client, is_voice)
    assert isinstance(data, bytes)
    return data, skipped


def name_of(client: Client) -> str:
    """Who the relay welcomed on this connection."""
    welcome = next(f for f in client.seen if isinstance(f, wire.Welcome))
    return welcome.name


async def log_with_call(client: Client, consult: str) -> list[wire.Frame]:
    """The consult's log once it holds a call's entry: the relay writes it on its writer
    thread as the call ends, so a sync the moment "ended" arrives may be a few ms early. Once
    a sync has seen it, its live push has been queued too: one more sync answers without it."""
    async with asyncio.timeout(WAIT):
        while True:
            frames = await client.sync({consult: 0})
            if any(isinstance(f, Msg) and f.kind == CALL_KIND for f in frames):
                return await client.sync({consult: 0})
            await asyncio.sleep(0.02)


def states(items: list[Item]) -> list[CallState]:
    return [f for f in items if isinstance(f, CallState)]


async def place_call(caller: Client, consult: str) -> str:
    """Call into a consult; the caller's own ringing CallState comes before the answer."""
    answer, skipped = await request(caller, "call", {"consult": consult})
    assert isinstance(answer, Ok), answer
    call = str(answer.result["call"])
    assert answer.result["state"] == "ringing" and list(answer.result["slots"].values()) == [1]
    assert [(f.call, f.state) for f in states(skipped)] == [(call, "ringing")]
    return call


async def answer_call(client: Client, call: str) -> Ok:
    """Answer; the answerer's own "active" CallState comes last before the answer."""
    answer, skipped = await request(client, "answer", {"call": call})
    assert isinstance(answer, Ok), answer
    last = states(skipped)[-1]
    assert (last.call, last.state, last.by) == (call, "active", name_of(client)), states(skipped)
    return answer


# --- the whole life of a call ----------------------------------------------------------------


async def test_call_ring_answer_voice_hangup_and_history(relay: RelayProcess) -> None:
    (alice, _), (bob, _), (carol, _), (dave, _) = await asyncio.gather(
        *(register(relay, n) for n in ("alice", "bob", "carol", "dave"))
    )
    consult = await alice.open_consult("chest pain, bed 3", ["bob", "carol"])

    # alice calls: every member hears it ring (alice too, see place_call); dave does not.
    call = await place_call(alice, consult)
    for client in (bob, carol):
        ring, skipped = await call_state(client, "ringing")
        assert ring.call == call and ring.consult == consult
        assert (ring.by, ring.slots, ring.outcome) == ("alice", {"alice": 1}, "")
        assert ring.since > 0
        assert not any(isinstance(f, CallState) for f in skipped)

    # dave cannot answer a call in a consult he is not in, nor does he ever hear of it.
    refused, _ = await request(dave, "answer", {"call": call})
    assert isinstance(refused, Err) and refused.code == "denied", refused
    for op in ("decline", "hangup"):
        refused, _ = await request(dave, op, {"call": call})
        assert isinstance(refused, Err) and refused.code == "denied", (op, refused)
    assert not any(isinstance(f, CallState) for f in await barrier(dave))
    unknown, _ = await request(bob, "answer", {"call": "zzzzzzzz"})
    assert isinstance(unknown, Err) and unknown.code == "not_found", unknown

    # bob answers: the call is active for everyone, bob in slot 2.
    ok = await answer_call(bob, call)
    assert ok.result == {"call": call, "state": "active", "slots": {"alice": 1, "bob": 2}}
    for client in (alice, carol):
        active, _ = await call_state(client, "active")
        assert (active.call, active.by, active.slots) == (call, "bob", {"alice": 1, "bob": 2})

    # alice's media reaches bob with her slot, byte for byte otherwise.
    sent = [media(seq, payload=bytes([seq]) * (20 + seq)) for seq in range(5)]
    for frame in sent:
        await alice.ws.send(frame)
    for frame in sent:
        got, skipped = await voice(bob)
        assert got == b"\x41" + frame[1:]
        assert skipped == []

    # bob's feedback on slot 1 reaches alice as coming from bob's slot.
    report = voiceframe.Feedback.report(1, echo_ts=240, hold_ms=15, jb_ms=120, concealed_pm=4).pack()
    await bob.ws.send(report)
    got, _ = await voice(alice)
    assert got == b"\x62" + report[1:]
    # ... and bob's media reaches alice as slot 2.
    await bob.ws.send(media(9))
    got, _ = await voice(alice)
    assert got == b"\x42" + media(9)[1:]

    # carol is a member who did not answer: call states, never voice.
    assert not any(is_voice(item) for item in await barrier(carol))
    # Nobody got a stray copy of their own voice.
    assert not any(is_voice(item) for item in await barrier(alice))
    assert not any(is_voice(item) for item in await barrier(bob))

    # alice hangs up: with one party left the call is over, completed, for everyone.
    bye, skipped = await request(alice, "hangup", {"call": call})
    assert isinstance(bye, Ok) and bye.result["state"] == "ended", bye
    assert [(f.state, f.outcome) for f in states(skipped)] == [("ended", "completed")]
    for client in (bob, carol):
        ended, _ = await call_state(client, "ended")
        assert (ended.call, ended.by, ended.outcome, ended.slots) == (call, "alice", "completed", {})
    # bob's own hang-up comes too late: the call is gone.
    late, _ = await request(bob, "hangup", {"call": call})
    assert isinstance(late, Err) and late.code == "not_found", late
    await alice.ws.send(media(10))  # voice after the call ends goes nowhere
    assert not any(is_voice(item) for item in await barrier(bob))

    # The consult's history keeps the call: who was in, how it ended.
    for client in (carol, bob):
        frames = await log_with_call(client, consult)
        records = [f for f in frames if isinstance(f, Msg) and f.kind == CALL_KIND]
        assert len(records) == 1, frames
        record = records[0]
        assert (record.consult, record.sender) == (consult, "alice")
        body = msgpack.unpackb(record.body)
        assert body["event"] == "call" and body["call"] == call
        assert body["outcome"] == "completed" and body["members"] == ["alice", "bob"]
        assert body["caller"] == "alice" and body["duration_s"] >= 0
        assert set(body["kbps_up"]) <= {"alice", "bob"}
        assert [f.kind for f in frames if isinstance(f, Msg)] == [wire.KINDS["system"], CALL_KIND]
    for client in (alice, bob, carol, dave):
        await client.close()
    await assert_healthy(relay, ["alice", "bob"])


async def test_a_call_live_when_the_relay_dies_is_in_the_history_as_interrupted(relay: RelayProcess) -> None:
    """Calls live in the relay's memory; the record of one that is live is saved as it
    changes, so a SIGKILL mid-call still leaves it in the consult's history, once."""
    (alice, _), (bob, bob_device) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("fall, hip", ["bob"])
    call = await place_call(alice, consult)
    await answer_call(bob, call)
    for seq in range(3):
        await alice.ws.send(media(seq))
    await barrier(alice)
    await asyncio.sleep(0.3)  # the record is saved on the writer thread, ms after the change
    relay.kill()
    for client in (alice, bob):
        with contextlib.suppress(Exception):
            await client.close()
    relay.start()
    relay.kill()  # a second crash before anyone reads it: still one entry
    relay.start()
    bob = await login(relay, bob_device)
    frames = await bob.sync({consult: 0})
    records = [msgpack.unpackb(f.body) for f in frames if isinstance(f, Msg) and f.kind == CALL_KIND]
    assert len(records) == 1, records
    record = records[0]
    assert (record["call"], record["outcome"], record["members"]) == (call, "interrupted", ["alice", "bob"])
    assert record["duration_s"] >= 0
    await bob.close()
    await assert_healthy(relay, ["bob"])


async def test_declined_call_is_recorded(relay: RelayProcess) -> None:
    (alice, _), (bob, _) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("follow-up", ["bob"])
    call = await place_call(alice, consult)
    await call_state(bob, "ringing")
    no, skipped = await request(bob, "decline", {"call": call})
    assert isinstance(no, Ok) and no.result["state"] == "ended", no
    assert [(f.state, f.outcome) for f in states(skipped)] == [("ended", "declined")]
    ended, _ = await call_state(alice, "ended")
    assert (ended.call, ended.outcome, ended.by) == (call, "declined", "bob")
    frames = await log_with_call(alice, consult)
    (record,) = [f for f in frames if isinstance(f, Msg) and f.kind == CALL_KIND]
    body = msgpack.unpackb(record.body)
    assert (body["outcome"], body["members"], body["duration_s"]) == ("declined", ["alice"], 0.0)
    # The consult is free again: a new call rings afresh.
    again = await place_call(alice, consult)
    assert again != call
    for client in (alice, bob):
        await client.close()
    await assert_healthy(relay, ["alice", "bob"])


# --- the voice plane under abuse ------------------------------------------------------------


async def test_voice_from_a_connection_in_no_call_is_dropped_not_fatal(relay: RelayProcess) -> None:
    (alice, _), (bob, _), (carol, _), (eve, _) = await asyncio.gather(
        *(register(relay, n) for n in ("alice", "bob", "carol", "eve"))
    )
    consult = await alice.open_consult("triage", ["bob", "carol"])
    call = await place_call(alice, consult)
    await answer_call(bob, call)
    await call_state(alice, "active")

    junk = [
        media(1),  # media from someone in no call
        voiceframe.Feedback.report(1, 0, 0, 0, 0).pack(),  # feedback aimed at alice's slot
        voiceframe.Feedback.report(2, 0, 0, 0, 0).pack(),  # ... and at bob's
        b"\x20unknown kind",
        b"\x41\x00",
        b"\x00",
    ]
    for stranger in (eve, carol):  # eve: no consult in common; carol: a member not in the call
        for frame in junk:
            await stranger.ws.send(frame)
        # Not a bad frame, not a closing matter: the connection still answers requests.
        items = await barrier(stranger)
        assert not any(isinstance(f, Err) for f in items), items
    # The call's parties received none of it.
    for client in (alice, bob):
        assert not any(is_voice(item) for item in await barrier(client))
    # Junk from a party is dropped too, and does not cost the party its call.
    for frame in (b"\x20unknown kind", b"\x41\x00\x00", b"\x40" + b"x" * 1600):
        await alice.ws.send(frame)
    await alice.ws.send(media(2))
    got, skipped = await voice(bob)
    assert got == b"\x41" + media(2)[1:] and not any(is_voice(i) for i in skipped)

    # A party whose only listener is away sends into the void: not stray, never closed for it.
    await bob.ws.close()
    await call_state(alice, "active")  # bob detached, the call waits for him
    for seq in range(MAX_STRAY_VOICE + 20):
        await alice.ws.send(media(seq % 256))
    assert not any(isinstance(f, Err) for f in await barrier(alice))

    for client in (alice, carol, eve):
        await client.close()
    await assert_healthy(relay, ["alice", "bob"])


async def test_a_stream_of_stray_voice_gets_a_policy_close(relay: RelayProcess) -> None:
    mallory, _ = await register(relay, "mallory")
    for seq in range(5):  # a few stray frames are forgiven (a call's last frames after it ended)
        await mallory.ws.send(media(seq))
    assert not any(isinstance(f, Err) for f in await barrier(mallory))
    try:
        for seq in range(MAX_STRAY_VOICE + 20):
            await mallory.ws.send(media(seq % 256))
    except ConnectionClosed:
        pass
    code, reason, frames = await mallory.closed()
    try:
        assert code == 1008 and reason, (code, reason, frames)
    finally:
        await assert_healthy(relay)


async def test_voice_burst_to_a_slow_reader_closes_nobody(relay: RelayProcess) -> None:
    (alice, _), (bob, _) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("burst", ["bob"])
    call = await place_call(alice, consult)
    await answer_call(bob, call)
    await call_state(alice, "active")

    burst = [media(seq, payload=bytes([seq]) * 160) for seq in range(50)]
    for frame in burst:
        await alice.ws.send(frame)
    await asyncio.sleep(0.5)  # bob is busy; the relay has to hold or drop, not give up on him

    seqs: list[int] = []
    async with asyncio.timeout(WAIT):
        while not seqs or seqs[-1] != 49:
            item = await read(bob)
            assert is_voice(item), item
            assert isinstance(item, bytes)
            seq = item[1]
            assert item == b"\x41" + burst[seq][1:]
            seqs.append(seq)
    # Whatever was dropped was old audio: what arrives is in order, once, ending with the newest.
    assert seqs == sorted(set(seqs)) and 1 <= len(seqs) <= 50
    # Both connections are alive and the call goes on.
    for client in (alice, bob):
        answer, skipped = await request(client, "whoami")
        assert isinstance(answer, Ok), answer
        assert not any(isinstance(f, CallState) for f in skipped)  # nobody dropped out of the call
    await alice.ws.send(media(50))
    got, _ = await voice(bob)
    assert got == b"\x41" + media(50)[1:]
    assert relay.proc is not None and relay.proc.poll() is None
    for client in (alice, bob):
        await client.close()
    await assert_healthy(relay, ["alice", "bob"])


# --- a flaky link ---------------------------------------------------------------------------


async def test_reconnect_within_grace_keeps_the_slot(relay: RelayProcess) -> None:
    (alice, _), (bob, bob_device) = await asyncio.gather(register(relay, "alice"), register(relay, "bob"))
    consult = await alice.open_consult("flaky", ["bob"])
    call = await place_call(alice, consult)
    await answer_call(bob, call)
    await call_state(alice, "active")

    await bob.ws.close()  # bob's link drops
    lost, _ = await call_state(alice, "active")  # told again: the call survives it
    assert lost.call == call and lost.slots == {"alice": 1, "bob": 2}
    await alice.ws.send(media(1))  # meanwhile alice's voice has nowhere to go, harmlessly

    # The device that comes back is told of the live call it was in, unasked.
    bob = await login(relay, bob_device)
    told, _ = await call_state(bob, "active")
    assert (told.call, told.slots) == (call, {"alice": 1, "bob": 2})
    ok = await answer_call(bob, call)
    assert ok.result == {"call": call, "state": "active", "slots": {"alice": 1, "bob": 2}}
    await alice.ws.send(media(2))
    got, _ = await voice(bob)
    assert got == b"\x41" + media(2)[1:]
    await bob.ws.send(media(3))
    got, _ = await voice(alice)
    assert got == b"\x42" + media(3)[1:]
    for client in (alice, bob):
        await client.close()
    await assert_healthy(relay, ["alice", "bob"])

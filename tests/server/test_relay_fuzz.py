"""The relay under random frames: hypothesis drives raw clients against a real relay process.

Each example logs a fresh connection in as ``mallory`` and sends it a few random frames: raw
bytes, random msgpack trees, valid frames of every client type with fields swapped for
random values, valid frames with flipped or cut bytes, requests of every kind with random
arguments, text frames, voice-plane bytes and oversize messages; before that, sometimes, one
random frame on another connection in place of an authentication. After each example the
relay must have answered with frames that decode, and then either answered a final request
or closed with 1008, 1009 or 1013: never a hang (every wait is bounded), never another close,
never a traceback in its log. Two well-behaved members, connected throughout and reading
everything the fuzz makes the relay send them (mallory shares a consult with them), must
still get their own messages stored and delivered at the end.

Hypothesis runs examples synchronously, so the long-lived clients live on an event loop in a
thread of their own and each example is a coroutine submitted to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import secrets
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from medcomm.core import wire
from medcomm.core.wire import Auth, Challenge, Msg, Ok, Register, Request, Send, Stored, Sub, Welcome
from medcomm.limits import WIRE
from medcomm.server import admin
from medcomm.session.link import sign_challenge
from tests.harness.relay import RelayProcess

pytestmark = pytest.mark.timeout(180)

EXAMPLES = 150  # each a fresh login and up to 8 frames: a few seconds in all
WAIT = 10.0  # any one wait for the relay
ALLOWED_CLOSES = {1008, 1009, 1013}  # policy, too big, try later: the relay's only refusals
TEXT = wire.KINDS["text"]


# --- the relay, with its log kept -----------------------------------------------------------


@dataclass
# --- clients ---------------------------------------------------------------------------------


class Raw:
    """One raw connection; every frame received must decode as a relay frame."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self) -> wire.Frame:
        async with asyncio.timeout(WAIT):
            data = await self.ws.recv()
        return wire.decode(data, wire.RELAY_TYPES)  # type: ignore[arg-type]

    async def close_code(self) -> int | None:
        """Read until the relay closes; its close code (None: no close frame)."""
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    await self.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None


async def dial(url: str) -> tuple[Raw, Challenge]:
    ws = await connect(url, open_timeout=WAIT, close_timeout=2, ping_interval=None, compression=None)
    raw = Raw(ws)
    challenge = await raw.recv()
    assert isinstance(challenge, Challenge), challenge
    return raw, challenge


async def log_in(url: str, seed: bytes, name: str) -> Raw:
    raw, challenge = await dial(url)
    await raw.ws.send(wire.encode(Auth(*sign_challenge(seed, challenge.nonce, b"auth"))))
    welcome = await raw.recv()
    assert isinstance(welcome, Welcome) and welcome.name == name, welcome
    return raw


async def enrol(relay: RelayProcess, name: str) -> tuple[Raw, bytes]:
    """Enrol name and register a fresh device key; the open connection and the key."""
    code = await asyncio.to_thread(admin.enroll, relay.data, name, "clinic")
    seed = secrets.token_bytes(32)
    raw, challenge = await dial(relay.url)
    await raw.ws.send(wire.encode(Register(name, code, *sign_challenge(seed, challenge.nonce, b"register"))))
    welcome = await raw.recv()
    assert isinstance(welcome, Welcome), welcome
    return raw, seed


@dataclass
class Member:
    """A well-behaved member that reads everything the relay sends it, all the time (as the
    real client does), so the fuzz's fan-out can never back its queue up."""

    name: str
    raw: Raw
    frames: list[wire.Frame] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    rid: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def start(self) -> None:
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for data in self.raw.ws:
                self.frames.append(wire.decode(data, wire.RELAY_TYPES))  # type: ignore[arg-type]
                self.arrived.set()
        except Exception as exc:  # a frame that does not decode, or the link going
            self.errors.append(exc)
            self.arrived.set()

    async def until(self, pred: Any) -> wire.Frame:
        async with asyncio.timeout(WAIT):
            while True:
                for frame in self.frames:
                    if pred(frame):
                        return frame
                assert not self.errors, self.errors
                self.arrived.clear()
                await self.arrived.wait()

    async def request(self, op: str, args: dict[str, Any]) -> Any:
        rid = next(self.rid)
        await self.raw.ws.send(wire.encode(Request(rid, op, args)))
        answer = await self.until(lambda f: isinstance(f, (Ok, wire.Err)) and f.rid == rid)
        assert isinstance(answer, Ok), answer
        return answer.result

    async def send_text(self, consult: str, body: bytes) -> Stored:
        cid = secrets.token_bytes(wire.CID_LEN)
        await self.raw.ws.send(wire.encode(Send(consult, cid, TEXT, body)))
        ack = await self.until(lambda f: isinstance(f, (Stored, wire.Reject)) and f.cid == cid)
        assert isinstance(ack, Stored), ack
        return ack


# --- what the fuzz sends ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A value known only once the relay runs (a consult id), filled in when sending."""

    name: str


SHARED, OWN = Ref("shared"), Ref("own")
OPS = [
    "whoami", "list", "users", "open", "add", "call", "answer", "decline", "hangup",
    "blob.head", "blob.put", "blob.get", "audit.export",
]
ARG_KEYS = ["title", "with", "consult", "name", "call", "sha", "size", "offset", "data", "length", "format"]
NAMES = ["alice", "bob", "mallory", "carol", "nobody", "Alice", "", "a" * 65]

_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_near = st.sampled_from([0, 1, 2, 5, 8192, 8193, 2**31, 2**62, 2**63 - 1, 16 * 1024 * 1024 + 1])
_scalars = (
    st.none()
    | st.booleans()
    | _ints
    | _near
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=64)
    | st.sampled_from([SHARED, OWN, "abc123", "zzzzzz", "abcd2345", *NAMES])
    | st.integers(0, 9000).map(bytes)  # sizes around a blob chunk
)
_trees = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8) | _ints, inner, max_size=4),
    max_leaves=12,
)
_values = _scalars | _trees
_consults = st.sampled_from([SHARED, OWN, "abc123", "zzzzzz"]) | _scalars
_args = st.dictionaries(st.sampled_from(ARG_KEYS) | st.text(max_size=8), _values, max_size=6)

# Every client frame type, as [type, *fields] with fields drawn near the valid ones.
_client_frames = st.one_of(
    st.tuples(st.just(1), st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64)),
    st.tuples(
        st.just(2),
        st.sampled_from(NAMES),
        st.text(max_size=20),
        st.binary(max_size=33),
        st.binary(max_size=65),
    ),
    st.tuples(st.just(3), _near | _ints, st.sampled_from(OPS) | st.text(max_size=40), _args),
    st.tuples(
        st.just(4),
        _consults,
        st.binary(min_size=16, max_size=16) | st.binary(max_size=20),
        st.integers(0, 9) | _scalars,
        st.binary(max_size=200) | st.integers(0, WIRE.max_body + 8).map(bytes),
    ),
    st.tuples(
        st.just(5),
        st.dictionaries(_consults.filter(lambda v: isinstance(v, (str, Ref))), _near | _ints, max_size=4),
        st.booleans(),
        _consults,
    ),
    st.tuples(st.just(6), _consults, _near | _ints, st.integers(0, 3) | _scalars),
).map(list)


# Requests that get past the decoder into every handler: each argument near a valid one.
_ARG = {
    "title": st.text(max_size=210),
    "with": st.lists(st.sampled_from(NAMES), max_size=34) | _values,
    "consult": st.sampled_from([SHARED, OWN, "zzzzzz"]) | _scalars,
    "name": st.sampled_from(NAMES),
    "call": st.text(alphabet=wire.CONSULT_ALPHABET, min_size=8, max_size=8) | _scalars,
    "sha": st.binary(min_size=32, max_size=32) | st.binary(max_size=40),
    "size": st.integers(0, 20000) | _near,
    "offset": st.integers(0, 9000) | _near,
    "data": st.binary(max_size=64) | st.integers(0, 8300).map(lambda n: b"\x01" * n),
    "length": st.integers(0, 9000) | _near,
    "format": st.sampled_from(["pdf", "md", "html", "x" * 17]) | _scalars,
}


@st.composite
def _plausible_request(draw: st.DrawFn) -> list[Any]:
    op = draw(st.sampled_from(OPS))
    keys = draw(st.lists(st.sampled_from(ARG_KEYS), max_size=6, unique=True))
    args = {k: draw(_ARG[k]) for k in keys}
    return [3, draw(st.integers(0, 2**32)), op, args]


def _whole_blob(data: bytes) -> list[Any]:
    """A one-chunk upload into the shared consult that completes (right size, right hash)."""
    sha = hashlib.sha256(data).digest()
    args = {"consult": SHARED, "sha": sha, "offset": 0, "data": data, "size": len(data)}
    return [3, 7, "blob.put", args]


_plausible = st.one_of(
    _plausible_request(),
    st.binary(min_size=1, max_size=300).map(_whole_blob),
    st.tuples(
        st.just(4),
        st.sampled_from([SHARED, OWN]),
        st.binary(min_size=16, max_size=16),
        st.integers(1, 8),
        st.binary(max_size=200),
    ).map(list),
    st.tuples(
        st.just(5),
        st.dictionaries(st.sampled_from([SHARED, OWN]), _near, max_size=2),
        st.booleans(),
        st.just(""),
    ).map(list),
    st.tuples(st.just(6), st.sampled_from([SHARED, OWN]), _near, st.integers(1, 2)).map(list),
)


@st.composite
def _mutated(draw: st.DrawFn) -> list[Any]:
    """A frame of a client type with a field swapped, dropped or added, or its type changed."""
    frame = draw(_client_frames | _plausible)
    how = draw(st.sampled_from(["swap", "drop", "add", "type", "none"]))
    if how == "swap":
        frame[draw(st.integers(0, len(frame) - 1))] = draw(_values)
    elif how == "drop" and len(frame) > 1:
        del frame[draw(st.integers(1, len(frame) - 1))]
    elif how == "add":
        frame.append(draw(_values))
    elif how == "type":
        frame[0] = draw(st.integers(-1, 25) | _scalars)
    return frame


@dataclass(frozen=True)
class Item:
    """One message to send: how to build it from what was drawn."""

    kind: str  # bytes | text | tree | mangled | voice | oversize
    value: Any
    flips: tuple[tuple[int, int], ...] = ()
    cut: int | None = None


_items = st.one_of(
    st.binary(max_size=300).map(lambda b: Item("bytes", b)),
    st.text(max_size=100).map(lambda t: Item("text", t)),
    _trees.map(lambda v: Item("tree", v)),
    _mutated().map(lambda v: Item("tree", v)),
    _client_frames.map(lambda v: Item("tree", v)),
    _plausible.map(lambda v: Item("tree", v)),
    _plausible.map(lambda v: Item("tree", v)),
    st.builds(
        lambda v, flips, cut: Item("mangled", v, tuple(flips), cut),
        _client_frames,
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
        st.none() | st.integers(0, 10**6),
    ),
    st.tuples(st.integers(0, 0x7F), st.binary(max_size=1600)).map(
        lambda t: Item("voice", bytes([t[0]]) + t[1])
    ),
    st.integers(1, 64).map(lambda n: Item("oversize", n)),
)


def _resolve(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, Ref):
        return refs[value.name]
    if isinstance(value, list):
        return [_resolve(v, refs) for v in value]
    if isinstance(value, tuple):
        return [_resolve(v, refs) for v in value]
    if isinstance(value, dict):
        return {_resolve(k, refs): _resolve(v, refs) for k, v in value.items()}
    return value


def build(item: Item, refs: dict[str, str]) -> bytes | str:
    if item.kind in ("bytes", "voice"):
        return item.value
    if item.kind == "text":
        return item.value
    if item.kind == "oversize":
        return b"\x93" + bytes(WIRE.max_frame + item.value)
    data = msgpack.packb(_resolve(item.value, refs), use_bin_type=True)
    if item.kind == "mangled":
        buf = bytearray(data)
        for at, byte in item.flips:
            buf[at % len(buf)] = byte
        if item.cut is not None:
            buf = buf[: item.cut % (len(buf) + 1)]
        data = bytes(buf)
    return data


# --- the world the examples run in -----------------------------------------------------------


class LoopThread:
    """An event loop in a thread, for the clients that live across examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@dataclass
class World:
    relay: RelayProcess
    alice: Member
    bob: Member
    mallory_seed: bytes
    carol_seed: bytes
    refs: dict[str, str]
    loop: LoopThread | None = None  # where alice's and bob's readers run
    closes: dict[int | None, int] = field(default_factory=dict)  # close code -> examples
    barrier_rid: Iterator[int] = field(default_factory=lambda: itertools.count(2**62))

    async def example(self, items: list[Item], before_auth: Item | None) -> None:
        url = self.relay.url
        mallory = await log_in(url, self.mallory_seed, "mallory")  # a success: failures start over
        if before_auth is not None:
            raw, _ = await dial(url)
            try:
                await raw.ws.send(build(before_auth, self.refs))
            except ConnectionClosed:
                pass
            code = await raw.close_code()  # nothing a random frame holds can authenticate
            assert code in ALLOWED_CLOSES, f"before authentication: closed with {code}"
        code = None
        try:
            for item in items:
                await mallory.ws.send(build(item, self.refs))
            rid = next(self.barrier_rid)
            await mallory.ws.send(wire.encode(Request(rid, "whoami", {})))
            async with asyncio.timeout(WAIT):
                while True:
                    frame = await mallory.recv()
                    if isinstance(frame, Ok) and frame.rid == rid:
                        assert frame.result == {"name": "mallory", "role": "clinic"}, frame
                        break
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            assert code in ALLOWED_CLOSES, f"closed with {exc.rcvd} after {len(items)} frames"
        finally:
            await mallory.ws.close()
        self.closes[code] = self.closes.get(code, 0) + 1
        for member in (self.alice, self.bob):  # the bystanders' links are untouched
            assert member.raw.ws.state is State.OPEN and not member.errors, (member.name, member.errors)


async def _setup(relay: RelayProcess) -> World:
    alice_raw, _ = await enrol(relay, "alice")
    bob_raw, _ = await enrol(relay, "bob")
    mallory_raw, mallory_seed = await enrol(relay, "mallory")
    carol_raw, carol_seed = await enrol(relay, "carol")  # the health check at the end logs in as her
    for raw in (mallory_raw, carol_raw):
        await raw.ws.close()
    alice, bob = Member("alice", alice_raw), Member("bob", bob_raw)
    for member in (alice, bob):
        member.start()
    shared = (await alice.request("open", {"title": "fuzzed", "with": ["bob", "mallory"]}))["id"]
    mallory = await log_in(relay.url, mallory_seed, "mallory")
    await mallory.ws.send(wire.encode(Request(1, "open", {"title": "own", "with": []})))
    own = ""
    while not own:
        frame = await mallory.recv()
        if isinstance(frame, Ok) and frame.rid == 1:
            own = frame.result["id"]
    await mallory.ws.close()
    for member in (alice, bob):  # live on the shared consult from here on
        await member.raw.ws.send(wire.encode(Sub({shared: 0}, False)))
        await member.until(lambda f: isinstance(f, wire.CaughtUp) and f.consult == shared)
    return World(relay, alice, bob, mallory_seed, carol_seed, {"shared": shared, "own": own})


async def _still_serving(world: World) -> None:
    """The bystanders' messages are stored and delivered, both ways, live; a member logs in."""
    shared = world.refs["shared"]
    for sender, receiver in ((world.alice, world.bob), (world.bob, world.alice)):
        body = f"still here, {sender.name}".encode()
        stored = await sender.send_text(shared, body)
        msg = await receiver.until(lambda f, s=stored: isinstance(f, Msg) and f.cid == s.cid)
        assert isinstance(msg, Msg) and (msg.seq, msg.sender, msg.body) == (stored.seq, sender.name, body)
    carol = await log_in(world.relay.url, world.carol_seed, "carol")
    await carol.ws.send(wire.encode(Request(1, "open", {"title": "after the fuzz", "with": ["alice"]})))
    cid = secrets.token_bytes(wire.CID_LEN)
    while True:
        frame = await carol.recv()
        if isinstance(frame, Ok) and frame.rid == 1:
            await carol.ws.send(wire.encode(Send(frame.result["id"], cid, TEXT, b"hello")))
        if isinstance(frame, Stored) and frame.cid == cid:
            assert frame.seq == 2
            break
    await carol.ws.close()


@pytest.fixture
def fuzz_world(tmp_path: Path) -> Iterator[World]:
    relay = RelayProcess(tmp_path / "relay", log=tmp_path / "relay.log").start()
    loop = LoopThread()
    try:
        world = loop.run(_setup(relay))
        world.loop = loop
        yield world
        assert relay.proc is not None and relay.proc.poll() is None, "relay process died"
    finally:
        loop.close()
        relay.stop()
    log = (tmp_path / "relay.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert not re.search(r"connection (error|handler failed)", log), log[-3000:]


def test_relay_survives_random_frames(fuzz_world: World) -> None:
    world = fuzz_world
    assert world.loop is not None

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # each run explores afresh; a failure prints its example
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(st.lists(_items, min_size=1, max_size=8), st.none() | _items)
    def example(items: list[Item], before_auth: Item | None) -> None:
        world.loop.run(world.example(items, before_auth))  # type: ignore[union-attr]

    started = time.monotonic()
    example()
    world.loop.run(_still_serving(world))
    elapsed = time.monotonic() - started
    assert sum(world.closes.values()) >= EXAMPLES
    assert elapsed < 120, f"{EXAMPLES} examples took {elapsed:.0f} s"

"""`scripts/bench capacity`: how many clients one relay holds, what each costs, how fast chat flows.

Why this exists: the relay is one Python process on one event loop, and the product promises
(README) that a small clinic network's relay holds at least 2000 authenticated connections at
under 64 KiB of memory each, with chat that stays quick while it does. Those promises are only
worth something if they are measured against a real ``medcomm serve`` process, over real
sockets, with real authentication (Ed25519 challenge, enrolment codes, SQLite with fsync), and
compared with the cheapest thing that could possibly relay chat: a bare ``websockets`` room
broadcaster with no auth and no storage. The ratio to that baseline says how much the durable,
authenticated relay costs on *this* machine, which is more portable than absolute numbers.

What runs, in order (every step bounded by a count and a timeout):

1. medcomm: enrol N users straight into the relay's SQLite (one bench-side connection, before
   the relay starts, so enrolment does not cost N CLI processes), start ``medcomm serve`` on
   port 0, connect N WebSocket clients (each registers its own fresh key), hold them all,
   read the relay's RSS before and after, open K three-member consults, subscribe, and send
   M messages per consult from rotating members; latency is from the sender's ``send()`` to
   each other member's receipt of the ``Msg`` (both ends in this process, one perf_counter).
2. baseline: the same client count, room layout, message count, message size and
   measurement against the bare broadcaster (inline below, run as its own process).

The clients run in this process and the servers in their own, so the servers' RSS is theirs
alone. Only 127.0.0.1 is used; message contents are never printed, only sizes and counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medcomm.core import wire
from medcomm.limits import WIRE

# --- targets and defaults -------------------------------------------------------------------

TARGET_CONNECTIONS = 2000  # concurrent authenticated connections one relay must hold
TARGET_RSS_PER_CONN = 64 * 1024  # bytes of relay RSS per idle authenticated connection

DEFAULTS = {"connections": 2000, "consults": 200, "messages": 20}
QUICK = {"connections": 200, "consults": 20, "messages": 5}

MESSAGE_CHARS = 60  # one short chat line; the same text size for medcomm and the baseline
HANDSHAKE_CONCURRENCY = 100  # concurrent connection attempts: below the listen backlog (100)
CONNECT_TIMEOUT = 20.0  # one client: TCP + upgrade + challenge + register + welcome
SETTLE_SECONDS = 2.0  # idle time with everything connected before reading RSS
SERVER_START_TIMEOUT = 30.0
FD_MARGIN = 256  # descriptors beyond one per connection: sqlite, pipes, the interpreter

RELAY_READY = re.compile(r"^medcomm relay listening on ws://127\.0\.0\.1:(\d+)$")
BARE_READY = re.compile(r"^bare relay listening on ws://127\.0\.0\.1:(\d+)$")

# The baseline: a room broadcaster with the relay's transport settings (no compression, same
# frame/queue/write limits, same keepalive) and nothing else. A client sends "join ROOM",
# gets "joined", then every text it sends goes to the other members of the room.
BARE_SERVER = r"""
import asyncio, signal
from websockets.asyncio.server import broadcast, serve

rooms = {}

async def handler(ws):
    try:
        first = await asyncio.wait_for(ws.recv(), 30)
    except Exception:
        return
    if not isinstance(first, str) or not first.startswith("join "):
        await ws.close(1008, "join first")
        return
    room = rooms.setdefault(first[5:], set())
    room.add(ws)
    try:
        await ws.send("joined")
        async for msg in ws:
            broadcast([o for o in room if o is not ws], msg)
    except Exception:
        pass
    finally:
        room.discard(ws)

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=MAX_SIZE, max_queue=64,
                     write_limit=16 * 1024, ping_interval=20, ping_timeout=40, close_timeout=5,
                     server_header=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"bare relay listening on ws://127.0.0.1:{port}", flush=True)
        await stop.wait()

asyncio.run(main())
""".replace("MAX_SIZE", str(WIRE.max_frame))


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a setup step failed)."""


@dataclass
class Config:
    connections: int
    consults: int
    messages: int
    window: int
    load_timeout: float


@dataclass
class Figures:
    """What one server achieved; ``None`` where a step did not get that far."""

    server: str
    connections_wanted: int = 0
    connections_ok: int = 0
    connect_failures: dict[str, int] = field(default_factory=dict)
    connect_seconds: float = 0.0
    open_after_load: int = 0  # connections still open at the end: nothing dropped while held
    rss_before: int = 0
    rss_connected: int = 0
    rss_after_load: int = 0
    rss_per_conn: float | None = None
    consults: int = 0
    messages_expected: int = 0
    messages_complete: int = 0
    deliveries_expected: int = 0
    deliveries: int = 0
    load_seconds: float = 0.0
    msgs_per_s: float | None = None
    deliveries_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None
    server_cpu_pct: float | None = None
    server_cpu_per_connect_ms: float | None = None  # CPU time, not wall: robust to a busy machine
    server_cpu_per_msg_us: float | None = None  # one message stored/forwarded with its fan-out
    client_cpu_pct: float | None = None
    other_cpu_pct: float | None = None  # every other process on the machine: noise in the figures
    send_frame_bytes: int = 0
    deliver_frame_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)


# --- small helpers --------------------------------------------------------------------------


def _progress(text: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(f"[capacity] {text}", file=sys.stderr, flush=True)


def _text(mid: int) -> str:
    """A 60-character chat line carrying its message id (the baseline reads it back)."""
    head = f"{mid:010d} "
    return head + "x" * (MESSAGE_CHARS - len(head))


def _cid(mid: int) -> bytes:
    return mid.to_bytes(wire.CID_LEN, "big")


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: p99 of 4000 samples is the 3960th, an observed value."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _still_open(clients: list[Client]) -> int:
    from websockets.protocol import State

    return sum(1 for c in clients if c.ws.state is State.OPEN)


def _rss(pid: int) -> int:
    """Resident set size of another process, in bytes (psutil, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BenchError("cannot read the server's RSS") from None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, to tell who was busy during the load."""
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except ImportError:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent running code (all cores), to see foreign load."""
    try:
        import psutil

        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))
    except ImportError:
        return None


def _fs_type(path: Path) -> str:
    """Filesystem of the relay's data dir: fsync on tmpfs is free, on ext4 it is not."""
    best, kind = "", "?"
    try:
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def raise_fd_limit(need: int) -> tuple[int, str | None]:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it: the servers need it too).

    Returns the soft limit now in force and a note when it is below what N connections need.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < need:
        return soft, (
            f"open-file limit is {soft} (hard {hard}), below the {need} this run needs; "
            "raise it (ulimit -Hn / limits.conf) to measure the full count"
        )
    return soft, None


# --- server processes -----------------------------------------------------------------------


_STARTED: list[subprocess.Popen[str]] = []  # every server this process started: main() reaps them


def _interrupted(signum: int, _frame: object) -> None:
    """SIGTERM takes the Ctrl-C path, so every finally (servers, temp dir) runs."""
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def _start_server(cmd: list[str], ready: re.Pattern[str], log: Path, what: str) -> Server:
    """Start a server subprocess and wait (bounded) for its one ready line on stdout."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    _STARTED.append(proc)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=SERVER_START_TIMEOUT).strip()
    except queue.Empty:
        line = ""
    m = ready.match(line)
    if not m:
        _stop_server(proc)
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise BenchError(f"{what} did not become ready (exit {proc.returncode}): " + " | ".join(tail))
    return Server(proc, int(m.group(1)))


def _stop_server(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL: the servers never outlive the bench."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def enroll_users(data: Path, names: list[str], ttl: float = 3600.0) -> dict[str, str]:
    """Enrol users in the relay's store directly: N CLI calls would take minutes.

    The bench's own SQLite connection runs with synchronous=OFF, which only skips this
    connection's fsyncs of setup rows; the relay opens its own connection (synchronous=FULL)
    afterwards, so everything measured keeps the product's durability settings.
    """
    from medcomm.server.store import RelayStore

    store = RelayStore(data)
    try:
        store.db.execute("PRAGMA synchronous=OFF")
        return {name: store.enroll(name, "clinic", ttl) for name in names}
    finally:
        store.close()


# --- load tracking --------------------------------------------------------------------------


class Tracker:
    """Send times and per-delivery latencies of the load messages, all on one perf_counter."""

    def __init__(self, receivers: int) -> None:
        self.receivers = receivers
        self.sent: dict[int, float] = {}
        self.left: dict[int, int] = {}
        self.done: dict[int, asyncio.Future[None]] = {}
        self.latencies: list[float] = []
        self.acks: list[float] = []
        self.deliveries = 0
        self.complete = 0
        self.first_send: float | None = None
        self.last_event: float | None = None
        self.errors: Counter[str] = Counter()

    def sending(self, mid: int) -> asyncio.Future[None]:
        """Call right before ``send()``: starts the clock of message ``mid``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        if self.first_send is None:
            self.first_send = now
        self.sent[mid] = now
        self.left[mid] = self.receivers
        self.done[mid] = fut
        return fut

    def delivered(self, mid: int) -> None:
        now = time.perf_counter()
        sent = self.sent.get(mid)
        if sent is None or self.left.get(mid, 0) <= 0:
            self.errors["unexpected delivery"] += 1
            return
        self.latencies.append(now - sent)
        self.deliveries += 1
        self.last_event = now
        self.left[mid] -= 1
        if self.left[mid] == 0:
            self.complete += 1
            fut = self.done.pop(mid)
            if not fut.done():
                fut.set_result(None)

    def acked(self, mid: int) -> None:
        sent = self.sent.get(mid)
        if sent is not None:
            self.acks.append(time.perf_counter() - sent)


@dataclass(eq=False)
class Client:
    """One bench client: its socket, pending control replies, and its reader task."""

    ws: Any
    name: str
    replies: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None


async def connect_all(
    factory: Callable[[int], Awaitable[Client]], n: int, phase_timeout: float
) -> tuple[list[Client | None], Counter[str], float]:
    """Open n connections with at most HANDSHAKE_CONCURRENCY in flight; failures are counted.

    Bounded twice: each attempt by CONNECT_TIMEOUT, the whole phase by ``phase_timeout``.
    """
    gate = asyncio.Semaphore(HANDSHAKE_CONCURRENCY)
    failures: Counter[str] = Counter()

    async def one(i: int) -> Client | None:
        async with gate:
            try:
                return await asyncio.wait_for(factory(i), CONNECT_TIMEOUT)
            except Exception as exc:  # counted by type: the report says what went wrong
                failures[type(exc).__name__] += 1
                return None

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=phase_timeout)
    for t in pending:
        t.cancel()
    if pending:
        failures["phase timeout"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    seconds = time.perf_counter() - started
    results = [t.result() if t in done and not t.cancelled() else None for t in tasks]
    return results, failures, seconds


async def connect_and_measure(fig: Any, pid: int, connect_one: Any, n: int) -> tuple[list[Any], list[Any]]:
    """Connect n clients and record, on fig, what connecting cost the server: time, CPU per
    connection, failures, and RSS per connection once they have sat idle for a moment."""
    cpu0 = _cpu_seconds(pid)
    results, failures, fig.connect_seconds = await connect_all(
        connect_one, n, phase_timeout=max(60.0, n * 0.05)
    )
    clients = [c for c in results if c is not None]
    fig.connections_ok = len(clients)
    if clients:
        fig.server_cpu_per_connect_ms = 1000.0 * (_cpu_seconds(pid) - cpu0) / len(clients)
    fig.connect_failures = dict(failures)
    await asyncio.sleep(SETTLE_SECONDS)
    fig.rss_connected = _rss(pid)
    if clients:
        fig.rss_per_conn = (fig.rss_connected - fig.rss_before) / len(clients)
    return results, clients  # results keeps each client's index (None where it failed)


async def close_all(clients: list[Client]) -> None:
    """Close every client (bounded); whatever does not close in time is aborted."""
    for c in clients:
        if c.reader is not None:
            c.reader.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True), 15)
    for c in clients:
        transport = getattr(c.ws, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()
    readers = [c.reader for c in clients if c.reader is not None]
    if readers:
        await asyncio.gather(*readers, return_exceptions=True)


async def drive_load(
    rooms: list[list[tuple[Client, Callable[[int], bytes | str]]]],
    cfg: Config,
    tracker: Tracker,
) -> None:
    """Each room sends cfg.messages from rotating members, at most cfg.window undelivered.

    A message leaves the window when every other member has received it, so the load is
    as fast as the server delivers, never an unbounded pile of queued sends.
    """

    async def room_task(index: int, members: list[tuple[Client, Callable[[int], bytes | str]]]) -> None:
        gate = asyncio.Semaphore(cfg.window)
        waits: list[asyncio.Future[None]] = []
        for i in range(cfg.messages):
            await gate.acquire()
            mid = index * cfg.messages + i + 1
            client, make = members[i % len(members)]
            data = make(mid)
            fut = tracker.sending(mid)
            fut.add_done_callback(lambda _f: gate.release())
            waits.append(fut)
            await client.ws.send(data)
        await asyncio.gather(*waits)

    tasks = [asyncio.ensure_future(room_task(i, r)) for i, r in enumerate(rooms)]
    done, pending = await asyncio.wait(tasks, timeout=cfg.load_timeout)
    for t in pending:
        t.cancel()
    if pending:
        tracker.errors["rooms not finished in time"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            tracker.errors[f"room failed: {type(t.exception()).__name__}"] += 1


def fill_load_figures(fig: Figures, tracker: Tracker, cpu: tuple[float, float], wall: float) -> None:
    """Throughput over the span from the first send to the last delivery; nearest-rank p50/p99."""
    fig.messages_complete = tracker.complete
    fig.deliveries = tracker.deliveries
    if tracker.first_send is not None and tracker.last_event is not None:
        span = max(tracker.last_event - tracker.first_send, 1e-9)
        fig.load_seconds = span
        fig.msgs_per_s = tracker.complete / span
        fig.deliveries_per_s = tracker.deliveries / span

    def ms(values: list[float], q: float) -> float | None:
        p = _percentile(values, q)
        return None if p is None else p * 1000.0

    lat = sorted(tracker.latencies)
    ack = sorted(tracker.acks)
    fig.p50_ms, fig.p99_ms, fig.max_ms = ms(lat, 0.50), ms(lat, 0.99), ms(lat, 1.0)
    fig.ack_p50_ms, fig.ack_p99_ms = ms(ack, 0.50), ms(ack, 0.99)
    if wall > 0:
        fig.server_cpu_pct = 100.0 * cpu[0] / wall
        fig.client_cpu_pct = 100.0 * cpu[1] / wall
    if tracker.complete:
        fig.server_cpu_per_msg_us = 1e6 * cpu[0] / tracker.complete
    fig.errors.update(tracker.errors)


async def timed_load(
    server_pid: int,
    rooms: list[list[tuple[Client, Callable[[int], bytes | str]]]],
    cfg: Config,
    tracker: Tracker,
    fig: Figures,
) -> None:
    """Run the load and record server and bench CPU over the same wall time."""
    m0 = _machine_busy_seconds()
    s0, c0, w0 = _cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    await drive_load(rooms, cfg, tracker)
    wall = time.perf_counter() - w0
    cpu = (_cpu_seconds(server_pid) - s0, time.process_time() - c0)
    m1 = _machine_busy_seconds()
    fill_load_figures(fig, tracker, cpu, wall)
    if m0 is not None and m1 is not None and wall > 0:
        fig.other_cpu_pct = max(0.0, 100.0 * (m1 - m0 - cpu[0] - cpu[1]) / wall)


# --- medcomm --------------------------------------------------------------------------------


def _client_options() -> dict[str, Any]:
    """Client transport settings of the real medcomm client, minus pings (the server pings)."""
    return {
        "compression": None,
        "max_size": WIRE.max_frame,
        "max_queue": 64,
        "ping_interval": None,
        "open_timeout": CONNECT_TIMEOUT,
        "close_timeout": 2,
        "user_agent_header": None,
    }


async def medcomm_connect(url: str, name: str, code: str) -> Client:
    """Connect and register a fresh device key, as `medcomm login` does; expects Welcome."""
    from websockets.asyncio.client import connect

    from medcomm.session.link import sign_challenge

    ws = await connect(url, **_client_options())
    try:
        challenge = wire.decode(await ws.recv(), wire.RELAY_TYPES)
        if not isinstance(challenge, wire.Challenge):
            raise BenchError("relay did not start with a challenge")
        pubkey, sig = sign_challenge(os.urandom(32), challenge.nonce, b"register")
        await ws.send(wire.encode(wire.Register(name, code, pubkey, sig)))
        welcome = wire.decode(await ws.recv(), wire.RELAY_TYPES)
        if not isinstance(welcome, wire.Welcome) or welcome.name != name:
            raise BenchError("relay did not welcome the client")
    except BaseException:
        ws.transport.abort()
        raise
    return Client(ws, name)


async def medcomm_reader(client: Client, tracker: Tracker) -> None:
    """Route frames: control replies to their futures, chat Msg/Stored to the tracker."""
    from websockets.exceptions import ConnectionClosed

    text = wire.KINDS["text"]
    try:
        async for data in client.ws:
            frame = wire.decode(data, wire.RELAY_TYPES)
            if isinstance(frame, wire.Msg):
                if frame.kind == text:
                    tracker.delivered(int.from_bytes(frame.cid, "big"))
            elif isinstance(frame, wire.Stored):
                tracker.acked(int.from_bytes(frame.cid, "big"))
            elif isinstance(frame, (wire.Ok, wire.Err)) and frame.rid in client.replies:
                fut = client.replies.pop(frame.rid)
                if not fut.done():
                    fut.set_result(frame)
            elif isinstance(frame, wire.Ready):
                client.ready.set()
            elif isinstance(frame, wire.Reject):
                tracker.errors[f"reject {frame.code}"] += 1
            elif isinstance(frame, wire.Err):
                tracker.errors[f"err {frame.code}"] += 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else "none"
        tracker.errors[f"closed by relay ({code})"] += 1
    except Exception as exc:  # a bad frame from the relay is a finding, not a crash of the bench
        tracker.errors[f"reader failed: {type(exc).__name__}"] += 1


async def medcomm_open(client: Client, rid: int, title: str, others: list[str]) -> str:
    """Open a consult with Request("open"), waiting (bounded) for Ok; returns its id."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client.replies[rid] = fut
    await client.ws.send(wire.encode(wire.Request(rid, "open", {"title": title, "with": others})))
    reply = await asyncio.wait_for(fut, 30)
    if not isinstance(reply, wire.Ok):
        raise BenchError(f"open refused: {reply.code}")
    return str(reply.result["id"])


async def medcomm_subscribe(client: Client) -> None:
    """Sub(full=True) and wait for Ready: from then on the client is live on its consults."""
    await client.ws.send(wire.encode(wire.Sub({}, True)))
    await asyncio.wait_for(client.ready.wait(), 30)


async def run_medcomm(cfg: Config, tmp: Path) -> Figures:
    """Phase 1 and 2 against a real `medcomm serve` process."""
    fig = Figures("medcomm", connections_wanted=cfg.connections)
    data = tmp / "relay"
    names = [f"cap{i:04d}" for i in range(cfg.connections)]
    _progress(f"medcomm: enrolling {len(names)} users")
    codes = enroll_users(data, [*names, "capwarm"])
    # Every client dials from 127.0.0.1, so the relay's per-address limits (sized for one
    # clinic's NAT) are raised to fit the bench: all of it is one "address" here.
    cmd = [sys.executable, "-m", "medcomm.cli", "serve", "--data", str(data), "--port", "0"]
    cmd += ["--max-per-address", str(cfg.connections + 16)]
    cmd += ["--max-pending-per-address", str(HANDSHAKE_CONCURRENCY + 16)]
    cmd += ["--enrolments-per-minute", str(cfg.connections + 16)]
    server = _start_server(cmd, RELAY_READY, tmp / "relay.log", "medcomm relay")
    clients: list[Client] = []
    try:
        pid = server.proc.pid
        # Warm-up: the first connection imports nacl and builds caches; keep that out of "per conn".
        warm = await asyncio.wait_for(medcomm_connect(server.url, "capwarm", codes["capwarm"]), 30)
        await close_all([warm])
        await asyncio.sleep(0.5)
        fig.rss_before = _rss(pid)

        _progress(f"medcomm: connecting {cfg.connections} clients ({HANDSHAKE_CONCURRENCY} at a time)")
        results, clients = await connect_and_measure(
            fig, pid, lambda i: medcomm_connect(server.url, names[i], codes[names[i]]), cfg.connections
        )
        if server.proc.poll() is not None:
            raise BenchError(f"medcomm relay exited ({server.proc.returncode}) while connecting")

        # Consults: the first 3K connected clients, three by three; the rest stay idle.
        k = min(cfg.consults, len(clients) // 3)
        fig.consults = k
        members = [clients[3 * i : 3 * i + 3] for i in range(k)]
        tracker = Tracker(receivers=2)
        for c in clients[: 3 * k]:
            c.reader = asyncio.ensure_future(medcomm_reader(c, tracker))
        _progress(f"medcomm: opening {k} consults and subscribing {3 * k} members")
        consult_ids = await asyncio.gather(
            *(
                medcomm_open(m[0], i + 1, f"capacity bench {i}", [m[1].name, m[2].name])
                for i, m in enumerate(members)
            )
        )
        await asyncio.gather(*(medcomm_subscribe(c) for c in clients[: 3 * k]))
        await asyncio.sleep(0.5)  # let the open/sub traffic drain before the clock starts

        body_of = {mid: _text(mid).encode() for mid in range(1, k * cfg.messages + 1)}

        def maker(consult: str) -> Callable[[int], bytes | str]:
            return lambda mid: wire.encode(wire.Send(consult, _cid(mid), wire.KINDS["text"], body_of[mid]))

        rooms = [[(c, maker(consult_ids[i])) for c in m] for i, m in enumerate(members)]
        if rooms:
            fig.send_frame_bytes = len(rooms[0][0][1](1))
            fig.deliver_frame_bytes = len(
                wire.encode(wire.Msg(consult_ids[0], 2, _cid(1), names[0], 1 << 40, 1, body_of[1]))
            )
        fig.messages_expected = k * cfg.messages
        fig.deliveries_expected = 2 * fig.messages_expected
        _progress(f"medcomm: {k} consults x {cfg.messages} messages (window {cfg.window})")
        await timed_load(pid, rooms, cfg, tracker, fig)
        await asyncio.sleep(0.5)
        fig.rss_after_load = _rss(pid)
        fig.open_after_load = _still_open(clients)
        if server.proc.poll() is not None:
            fig.errors["relay exited"] = 1
    finally:
        if clients:
            _progress("medcomm: closing clients")
            await close_all(clients)
        _stop_server(server.proc)
    return fig


# --- baseline -------------------------------------------------------------------------------


async def bare_connect(url: str, room: str) -> Client:
    """Connect to the bare broadcaster and join a room; expects "joined"."""
    from websockets.asyncio.client import connect

    ws = await connect(url, **_client_options())
    try:
        await ws.send(f"join {room}")
        if await ws.recv() != "joined":
            raise BenchError("bare server did not confirm the join")
    except BaseException:
        ws.transport.abort()
        raise
    return Client(ws, room)


async def bare_reader(client: Client, tracker: Tracker) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for msg in client.ws:
            if isinstance(msg, str) and msg[:10].isdigit():
                tracker.delivered(int(msg[:10]))
    except ConnectionClosed:
        tracker.errors["closed by server"] += 1
    except Exception as exc:
        tracker.errors[f"reader failed: {type(exc).__name__}"] += 1


async def run_bare(cfg: Config, tmp: Path, k: int) -> Figures:
    """Phase 3: the same layout against the bare broadcaster (no auth, no storage)."""
    fig = Figures("bare websockets", connections_wanted=cfg.connections)
    server = _start_server([sys.executable, "-c", BARE_SERVER], BARE_READY, tmp / "bare.log", "bare server")
    clients: list[Client] = []
    try:
        pid = server.proc.pid
        warm = await asyncio.wait_for(bare_connect(server.url, "warm"), 30)
        await close_all([warm])
        await asyncio.sleep(0.5)
        fig.rss_before = _rss(pid)

        # Clients 3i..3i+2 share room "r{i}" for i < k; the others each sit alone, idle.
        def room_of(i: int) -> str:
            return f"r{i // 3}" if i < 3 * k else f"idle{i}"

        _progress(f"baseline: connecting {cfg.connections} clients")
        results, clients = await connect_and_measure(
            fig, pid, lambda i: bare_connect(server.url, room_of(i)), cfg.connections
        )

        by_room: dict[str, list[Client]] = {}
        for i, c in enumerate(results[: 3 * k]):
            if c is not None:
                by_room.setdefault(room_of(i), []).append(c)
        full = [m for m in by_room.values() if len(m) == 3]
        fig.consults = len(full)
        tracker = Tracker(receivers=2)
        for m in full:
            for c in m:
                c.reader = asyncio.ensure_future(bare_reader(c, tracker))
        rooms = [[(c, _text) for c in m] for m in full]
        fig.send_frame_bytes = fig.deliver_frame_bytes = MESSAGE_CHARS
        fig.messages_expected = len(full) * cfg.messages
        fig.deliveries_expected = 2 * fig.messages_expected
        _progress(f"baseline: {len(full)} rooms x {cfg.messages} messages (window {cfg.window})")
        await timed_load(pid, rooms, cfg, tracker, fig)
        await asyncio.sleep(0.5)
        fig.rss_after_load = _rss(pid)
        fig.open_after_load = _still_open(clients)
    finally:
        if clients:
            _progress("baseline: closing clients")
            await close_all(clients)
        _stop_server(server.proc)
    return fig


# --- report ---------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(mc: Figures, bare: Figures | None) -> dict[str, float | None]:
    """medcomm / bare: above 1 for p99 means slower, below 1 for throughput means less."""
    if bare is None:
        return {}
    return {
        "throughput": _ratio(mc.msgs_per_s, bare.msgs_per_s),
        "p50": _ratio(mc.p50_ms, bare.p50_ms),
        "p99": _ratio(mc.p99_ms, bare.p99_ms),
        "rss_per_conn": _ratio(mc.rss_per_conn, bare.rss_per_conn),
        "connect_seconds": _ratio(mc.connect_seconds, bare.connect_seconds),
        "server_cpu_per_connect": _ratio(mc.server_cpu_per_connect_ms, bare.server_cpu_per_connect_ms),
        "server_cpu_per_msg": _ratio(mc.server_cpu_per_msg_us, bare.server_cpu_per_msg_us),
    }


def _fmt(v: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _kib(v: float | None) -> str:
    return "-" if v is None else f"{v / 1024:.1f} KiB"


def _mib(v: int) -> str:
    return f"{v / 2**20:.1f} MiB" if v else "-"


def _verdict(ok: bool | None) -> str:
    return "not tested" if ok is None else ("met" if ok else "MISSED")


def report_rows(mc: Figures, bare: Figures | None, r: dict[str, float | None]) -> list[list[str]]:
    """Rows of metric | medcomm | bare | medcomm/bare | target | verdict."""
    b = bare or Figures("bare websockets")

    def both(f: Callable[[Figures], str]) -> tuple[str, str]:
        return f(mc), (f(b) if bare is not None else "-")

    def row(
        label: str, f: Callable[[Figures], str], ratio: str = "", target: str = "", ok: str = ""
    ) -> list[str]:
        return [label, *both(f), ratio, target, ok]

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    def rate(f: Figures) -> str:
        return _fmt(f.connections_ok / f.connect_seconds if f.connect_seconds else None, ".0f")

    def cpu(f: Figures) -> str:
        return (
            "% / ".join(_fmt(v, ".0f") for v in (f.server_cpu_pct, f.client_cpu_pct, f.other_cpu_pct)) + "%"
        )

    def x(key: str) -> str:
        return _fmt(r.get(key), ".2f", "x")

    # A run asked for fewer connections than the target (--quick) says nothing about the target.
    held_ok = None if mc.connections_wanted < TARGET_CONNECTIONS else mc.connections_ok >= TARGET_CONNECTIONS
    mem_ok = None if mc.rss_per_conn is None else mc.rss_per_conn < TARGET_RSS_PER_CONN
    ms = " ms"
    return [
        row(
            "connections held",
            lambda f: f"{f.connections_ok}/{f.connections_wanted}",
            target=f">= {TARGET_CONNECTIONS}",
            ok=_verdict(held_ok),
        ),
        row("connect failures", lambda f: counts(f.connect_failures)),
        row("still open after load", lambda f: f"{f.open_after_load}/{f.connections_ok}"),
        row("time to connect all", lambda f: _fmt(f.connect_seconds, ".2f", " s"), x("connect_seconds")),
        row("connections/s", rate),
        row(
            "server CPU per connect",
            lambda f: _fmt(f.server_cpu_per_connect_ms, ".2f", ms),
            x("server_cpu_per_connect"),
        ),
        row("server RSS idle -> N connected", lambda f: f"{_mib(f.rss_before)} -> {_mib(f.rss_connected)}"),
        row(
            "server RSS per connection",
            lambda f: _kib(f.rss_per_conn),
            x("rss_per_conn"),
            f"< {TARGET_RSS_PER_CONN // 1024} KiB",
            _verdict(mem_ok),
        ),
        row("server RSS after load", lambda f: _mib(f.rss_after_load)),
        row("consults / rooms of 3", lambda f: str(f.consults)),
        row("messages complete", lambda f: f"{f.messages_complete}/{f.messages_expected}"),
        row("deliveries", lambda f: f"{f.deliveries}/{f.deliveries_expected}"),
        row("frame bytes send / deliver", lambda f: f"{f.send_frame_bytes} / {f.deliver_frame_bytes}"),
        row("throughput msgs/s", lambda f: _fmt(f.msgs_per_s, ".0f"), x("throughput")),
        row("fan-out deliveries/s", lambda f: _fmt(f.deliveries_per_s, ".0f")),
        row("latency p50", lambda f: _fmt(f.p50_ms, ".1f", ms), x("p50")),
        row("latency p99", lambda f: _fmt(f.p99_ms, ".1f", ms), x("p99")),
        row("latency max", lambda f: _fmt(f.max_ms, ".1f", ms)),
        [
            "durable ack (Stored) p50 / p99",
            f"{_fmt(mc.ack_p50_ms, '.1f')} / {_fmt(mc.ack_p99_ms, '.1f')}{ms}",
            "n/a (no ack)",
            "",
            "",
            "",
        ],
        row(
            "server CPU per message",
            lambda f: _fmt(f.server_cpu_per_msg_us, ".0f", " us"),
            x("server_cpu_per_msg"),
        ),
        row("CPU in load: server/bench/other", cpu),
        row("load errors", lambda f: counts(f.errors)),
    ]


def print_report(what: str, notes: list[str], rows: list[list[str]]) -> None:
    """A rich table when rich is importable, plain aligned columns otherwise."""
    header = ["metric", "medcomm", "bare websockets", "medcomm/bare", "target", ""]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(what)
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        for note in notes:
            print(f"note: {note}")
        return
    table = Table(title="relay capacity", caption=what, caption_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row, style="bold red" if row[-1] == "MISSED" else None)
    console = Console(width=max(120, Console().width))
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def what_ran(cfg: Config, k: int, data_fs: str) -> str:
    import websockets

    return (
        f"what ran: {cfg.connections} connections held, {k} consults of 3, {cfg.messages} messages each "
        f"({MESSAGE_CHARS}-char text, window {cfg.window}/consult), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, websockets {websockets.__version__}, relay data on {data_fs}; "
        "bench clients in one process, each server in its own"
    )


# --- entry ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench capacity",
        description=(
            "Measure a real `medcomm serve` process on 127.0.0.1: concurrent authenticated "
            "connections and relay memory per connection, then chat throughput and p50/p99 "
            "latency in 3-member consults, against a bare websockets room broadcaster run the "
            "same way on the same machine. Prints a table (targets: >= 2000 connections, "
            "< 64 KiB relay RSS per connection)."
        ),
    )
    d = DEFAULTS
    p.add_argument("--connections", type=int, help=f"clients to connect, hold (default {d['connections']})")
    p.add_argument("--consults", type=int, help=f"3-member consults driven (default {d['consults']})")
    p.add_argument("--messages", type=int, help=f"messages per consult (default {d['messages']})")
    p.add_argument(
        "--window", type=int, default=2, help="undelivered messages allowed per consult (default 2)"
    )
    p.add_argument("--load-timeout", type=float, default=60.0, help="seconds the load may take (default 60)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: {connections} connections, {consults} consults, {messages} messages".format(**QUICK),
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the bare websockets baseline")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the figures as JSON to FILE")
    return p.parse_args(argv)


async def _run_all(cfg: Config, tmp: Path, baseline: bool) -> tuple[Figures, Figures | None]:
    mc = await run_medcomm(cfg, tmp)
    bare = await run_bare(cfg, tmp, mc.consults or cfg.consults) if baseline else None
    return mc, bare


def main(argv: list[str]) -> int:
    """Run the capacity benchmark; 0 when it ran (targets missed are reported, not fatal)."""
    args = parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    cfg = Config(
        connections=args.connections or base["connections"],
        consults=args.consults or base["consults"],
        messages=args.messages or base["messages"],
        window=max(1, args.window),
        load_timeout=max(1.0, args.load_timeout),
    )
    if cfg.connections < 3 or cfg.consults < 1 or cfg.messages < 1:
        print("bench capacity: need --connections >= 3, --consults >= 1, --messages >= 1", file=sys.stderr)
        return 2
    if cfg.messages * cfg.consults >= 10**10:
        print("bench capacity: --consults x --messages must stay below 10**10", file=sys.stderr)
        return 2
    notes: list[str] = []
    soft, fd_note = raise_fd_limit(cfg.connections + FD_MARGIN)
    if fd_note:
        notes.append(fd_note)
        cfg.connections = max(3, soft - FD_MARGIN)
        notes.append(f"connections reduced to {cfg.connections} to fit the open-file limit")
        print(f"bench capacity: {fd_note}", file=sys.stderr)
    if 3 * cfg.consults > cfg.connections:
        cfg.consults = cfg.connections // 3
        notes.append(
            f"consults reduced to {cfg.consults}: 3 per consult out of {cfg.connections} connections"
        )

    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="medcomm-capacity-", ignore_cleanup_errors=True) as tmp_name:
            tmp = Path(tmp_name)
            try:
                mc, bare = asyncio.run(_run_all(cfg, tmp, not args.no_baseline))
            except (BenchError, TimeoutError, OSError) as exc:
                print(f"bench capacity: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("bench capacity: interrupted", file=sys.stderr)
                return 130
            finally:
                for proc in _STARTED:  # normally already stopped; a safety net for odd exits
                    _stop_server(proc)
                _STARTED.clear()
            data_fs = _fs_type(tmp)
    finally:
        signal.signal(signal.SIGTERM, previous)

    r = ratios(mc, bare)
    what = what_ran(cfg, mc.consults, data_fs)
    notes.append(
        "RSS per connection = (server RSS with all connected and idle 2 s - RSS after one warm-up "
        "connection) / connections held; latency = sender's send() to each other member's receipt; "
        "CPU in % of one core"
    )
    busy = [f.other_cpu_pct for f in (mc, bare) if f is not None and f.other_cpu_pct is not None]
    if busy and max(busy) > 25:
        notes.append(
            f"other processes used up to {max(busy):.0f}% of a core during the load: "
            "the machine was shared, so latency and throughput are noisy; rerun on a quiet machine"
        )
    if mc.client_cpu_pct is not None and mc.client_cpu_pct > 85:
        notes.append(
            "the bench client was near one full core during the medcomm load: figures may be client-bound"
        )
    print_report(what, notes, report_rows(mc, bare, r))
    if args.json:
        doc = {
            "what": what,
            "config": asdict(cfg),
            "cores": os.cpu_count(),
            "targets": {"connections": TARGET_CONNECTIONS, "rss_per_conn_bytes": TARGET_RSS_PER_CONN},
            "medcomm": asdict(mc),
            "bare": asdict(bare) if bare else None,
            "ratios_medcomm_over_bare": r,
            "notes": notes,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

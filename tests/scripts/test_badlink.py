"""Tests for scripts/badlink, the bad-mobile-link TCP emulator.

Two layers: the pure Shaper driven by a hand-advanced clock (exact rate/delay
math), and the real script run as a subprocess between plain-socket clients and a
tiny threaded server on 127.0.0.1.  Every wait is bounded; timing assertions have
generous upper bounds (shared, loaded CI machines) but tight lower bounds, which a
broken shaper cannot meet by luck.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.scripts import SCRIPTS, load_script

SCRIPT = SCRIPTS / "badlink"
READY_RE = re.compile(
    r"^badlink listening on 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+) profile (\S+)$"
)


badlink = load_script("badlink", "badlink_under_test")


# --------------------------------------------------------------------------- Shaper


def test_token_bucket_rate_math() -> None:
    shaper = badlink.Shaper(rate_kbit=8)  # 1000 bytes/s, depth 1500
    assert shaper.reserve(1500, 0.0) == 0.0  # one MTU of burst
    assert shaper.reserve(1500, 0.0) == pytest.approx(1.5)
    assert shaper.reserve(1000, 0.0) == pytest.approx(2.5)
    # Idle for long: the bucket refills but only to its depth (no big burst).
    assert shaper.reserve(1500, 100.0) == 100.0
    assert shaper.reserve(500, 100.0) == pytest.approx(100.5)


def test_60kb_at_48kbit_takes_about_10s_even_with_late_wakeups() -> None:
    for lateness in (0.0, 0.01, 0.1):
        shaper = badlink.Shaper(rate_kbit=48)  # 6000 bytes/s
        now = 0.0
        done = 0.0
        for _ in range(40):  # 40 x 1500 = 60 KB
            done = shaper.reserve(1500, now)
            now = done + lateness  # a sender that wakes up late must not lose rate
        # Late wake-ups (shorter than one MTU at the rate) are refunded by the bucket.
        assert done == pytest.approx((60_000 - 1500) / 6000)  # 9.75 s: ~10 s within 10%


def test_bucket_is_shared_between_connections() -> None:
    shaper = badlink.Shaper(rate_kbit=8)
    now = 0.0
    last = 0.0
    for _ in range(10):  # two connections alternate on the one radio link
        a = shaper.reserve(1000, now)
        b = shaper.reserve(1000, now)
        last = max(a, b)
        now = min(a, b)
    assert last == pytest.approx((20 * 1000 - 1500) / 1000)


def test_unlimited_rate_and_plain_delay() -> None:
    shaper = badlink.Shaper(rate_kbit=0, delay_s=0.2)
    assert shaper.rate is None
    for t in (0.0, 0.0, 5.0, 5.0001):
        shaped, release = shaper.schedule(1_000_000, t, -1.0)
        assert shaped == t
        assert release == pytest.approx(t + 0.2)


def test_jitter_bounds_and_spread() -> None:
    shaper = badlink.Shaper(delay_s=0.2, jitter_s=0.08, rng=random.Random(1))
    extras = []
    for i in range(400):
        now = float(i)  # far apart: ordering never binds
        release = shaper.release_time(now, -1.0)
        extras.append(release - now)
    assert all(0.12 - 1e-9 <= e <= 0.28 + 1e-9 for e in extras)
    assert min(extras) < 0.14 and max(extras) > 0.26  # jitter really applied


def test_jitter_larger_than_delay_is_clipped_at_zero() -> None:
    shaper = badlink.Shaper(delay_s=0.01, jitter_s=0.05, rng=random.Random(2))
    extras = [shaper.release_time(float(i), -1.0) - i for i in range(300)]
    assert min(extras) == 0.0
    assert max(extras) <= 0.06 + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0, 12, 64, 1000]),
    steps=st.lists(
        st.tuples(st.integers(1, 1500), st.floats(0, 0.3, allow_nan=False)),
        min_size=1,
        max_size=80,
    ),
)
def test_order_kept_under_jitter(seed: int, rate: int, steps: list[tuple[int, float]]) -> None:
    delay, jitter = 0.1, 0.09
    shaper = badlink.Shaper(rate_kbit=rate, delay_s=delay, jitter_s=jitter, rng=random.Random(seed))
    now = 0.0
    prev = float("-inf")
    for nbytes, dt in steps:
        now += dt
        shaped, release = shaper.schedule(nbytes, now, prev)
        assert shaped >= now
        assert release >= prev  # TCP: never overtakes the previous chunk
        assert release >= shaped + delay - jitter - 1e-9
        assert release <= max(prev, shaped + delay + jitter) + 1e-9
        prev = release


def test_seeded_runs_are_reproducible() -> None:
    def run(seed: int) -> list[float]:
        shaper = badlink.Shaper(64, 0.08, 0.04, rng=random.Random(seed))
        prev = float("-inf")
        out = []
        for i in range(50):
            _, prev = shaper.schedule(1500, i * 0.01, prev)
            out.append(prev)
        return out

    assert run(42) == run(42)
    assert run(42) != run(43)


# --------------------------------------------------------------------------- CLI


def test_profiles_and_overrides() -> None:
    cfg = badlink.parse_config(["--target", "127.0.0.1:9", "--profile", "edge", "--seed", "3"])
    p = cfg.profile
    assert (p.name, p.up_kbit, p.down_kbit, p.delay_ms, p.jitter_ms) == ("edge", 24, 48, 200, 80)
    assert p.stall == (2, 40) and p.drop_every == 180 and p.cut_every is None
    assert cfg.listen == ("127.0.0.1", 0) and cfg.seed == 3

    cfg = badlink.parse_config(["--target", "h:1", "--profile", "edge", "--no-faults"])
    p = cfg.profile
    assert p.name == "edge+custom" and p.up_kbit == 24 and p.delay_ms == 200
    assert p.stall is None and p.drop_every is None and p.cut_every is None

    cfg = badlink.parse_config(
        ["--target", "h:1", "--up", "10", "--delay", "5", "--stall", "0.5/2", "--cut-every", "5-60"]
    )
    p = cfg.profile
    assert p.name == "custom" and p.up_kbit == 10 and p.down_kbit == 0 and p.delay_ms == 5
    assert p.stall == (0.5, 2) and p.cut_every == (5, 60)
    assert badlink.PROFILES["flaky"].cut_every == (5, 60)
    assert badlink.PROFILES["gprs"].stall == (3, 30)
    assert badlink.PROFILES["3g-weak"].down_kbit == 128


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--up", "-1"], "--up"),
        (["--delay", "abc"], "--delay"),
        (["--stall", "40/2"], "shorter than its period"),
        (["--stall", "2"], "SECONDS/EVERY_SECONDS"),
        (["--cut-every", "60-5"], "MIN must be <= MAX"),
        (["--drop-every", "0"], "must be > 0"),
        (["--profile", "lte"], "invalid choice"),
        (["--listen", "nohost"], "HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "65535"),
    ],
)
def test_bad_arguments_exit_2_with_clear_message(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        badlink.parse_config(["--target", "127.0.0.1:9", *args])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_target_is_required_and_help_lists_profiles() -> None:
    with pytest.raises(SystemExit):
        badlink.build_parser().parse_args([])
    text = badlink.build_parser().format_help()
    for name in ("gprs", "edge", "3g-weak", "flaky", "clean", "--stats-json", "--no-faults"):
        assert name in text


# --------------------------------------------------------------------------- e2e helpers


def _deadline_loop(timeout: float) -> Iterator[float]:
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        yield left


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    for _ in _deadline_loop(timeout):
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    """Threaded TCP server on 127.0.0.1 running ``handler(conn)`` per connection."""

    def __init__(self, handler: Callable[[socket.socket], None], sock: socket.socket | None = None):
        self.handler = handler
        self.sock = sock if sock is not None else socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.finished = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(15)
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()
            self.finished += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    buf = bytearray()
    for left in _deadline_loop(timeout):
        sock.settimeout(left)
        data = sock.recv(min(65536, n - len(buf)))
        if not data:
            break
        buf += data
        if len(buf) >= n:
            return bytes(buf)
    raise AssertionError(f"got {len(buf)} of {n} bytes")


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes (EOF or reset) within ``timeout``; data is discarded."""
    for left in _deadline_loop(timeout):
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


class Badlink:
    """A running scripts/badlink subprocess."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        self.stderr_path = tmp / f"badlink-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "wb")  # a file: never blocks the proxy
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        assert ready, f"no ready line; stderr: {self.stderr()}"
        self.ready_line = self.proc.stdout.readline().rstrip("\n")
        match = READY_RE.match(self.ready_line)
        assert match, f"bad ready line {self.ready_line!r}; stderr: {self.stderr()}"
        self.port = int(match.group(1))

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self._stderr.close()
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def summary(self) -> dict[str, str]:
        lines = [ln for ln in self.stderr().splitlines() if "badlink summary:" in ln]
        assert len(lines) == 1, self.stderr()
        return dict(kv.split("=", 1) for kv in lines[0].split("badlink summary:")[1].split())


@pytest.fixture
def start_badlink(tmp_path: Path) -> Iterator[Callable[..., Badlink]]:
    running: list[Badlink] = []

    def start(*args: str) -> Badlink:
        proxy = Badlink(list(args), tmp_path)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        if proxy.proc.returncode is None:
            proxy.stop()


@pytest.fixture
def echo_server() -> Iterator[Server]:
    server = Server(echo)
    yield server
    server.close()


# --------------------------------------------------------------------------- e2e


def test_clean_passthrough_stats_json_and_sigterm(
    start_badlink: Callable[..., Badlink], echo_server: Server, tmp_path: Path
) -> None:
    stats_path = tmp_path / "stats.json"
    proxy = start_badlink(
        "--target", f"127.0.0.1:{echo_server.port}", "--profile", "clean",
        "--seed", "5", "--stats-json", str(stats_path),
    )  # fmt: skip
    assert proxy.ready_line.endswith(f"-> 127.0.0.1:{echo_server.port} profile clean")
    assert json.loads(stats_path.read_text())["connections"] == 0  # written before ready

    marker = b"SECRET-PATIENT-PAYLOAD"
    payloads = [marker + os.urandom(300_000), marker + bytes(range(256)) * 400]
    received: list[bytes] = [b"", b""]

    def exchange(i: int) -> None:
        with proxy.connect() as sock:
            sender = threading.Thread(target=sock.sendall, args=(payloads[i],), daemon=True)
            sender.start()
            received[i] = recv_exactly(sock, len(payloads[i]), timeout=15)
            sender.join(timeout=5)

    workers = [threading.Thread(target=exchange, args=(i,), daemon=True) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=20)
    assert received == payloads  # intact and in order, two connections interleaved

    total = sum(map(len, payloads))

    def stats() -> dict[str, object]:
        try:
            return json.loads(stats_path.read_text())
        except (OSError, ValueError):
            return {}

    wait_for(lambda: stats().get("open") == 0 and stats().get("bytes_down") == total, 5, "stats")
    snap = stats()
    assert snap["connections"] == 2 and snap["cuts"] == 0 and snap["stalls"] == 0
    assert snap["bytes_up"] == total and snap["profile"] == "clean"
    assert snap["chunks_up"] >= total // 1500  # moved in packet-sized chunks

    t0 = time.monotonic()
    assert proxy.stop() == 0
    assert time.monotonic() - t0 < 2.5  # "promptly"; <1 s normally, slack for loaded CI
    summary = proxy.summary()
    assert summary["connections"] == "2" and summary["bytes_up"] == str(total)
    assert summary["bytes_down"] == str(total) and summary["seed"] == "5"
    assert json.loads(stats_path.read_text())["bytes_down"] == total
    err = proxy.stderr()
    assert "conn 1 opened" in err and "conn 2 closed" in err
    assert marker.decode() not in err  # never log payloads
    assert not list(tmp_path.glob("stats.json.tmp*"))


def test_bandwidth_is_shaped_per_direction(start_badlink: Callable[..., Badlink]) -> None:
    size = 20_000
    sink_done: list[float] = []

    def source_and_sink(conn: socket.socket) -> None:
        threading.Thread(target=conn.sendall, args=(b"d" * size,), daemon=True).start()
        got = 0
        while got < size and (data := conn.recv(65536)):
            got += len(data)
        sink_done.append(time.monotonic())
        time.sleep(0.5)

    server = Server(source_and_sink)
    try:
        proxy = start_badlink("--target", f"127.0.0.1:{server.port}", "--up", "64", "--down", "128")
        assert proxy.ready_line.endswith("profile custom")
        with proxy.connect() as sock:
            t0 = time.monotonic()
            sock.sendall(b"u" * size)
            assert recv_exactly(sock, size, timeout=10) == b"d" * size
            down_s = time.monotonic() - t0
            wait_for(lambda: bool(sink_done), 10, "upload to arrive")
            up_s = sink_done[0] - t0
    finally:
        server.close()
    # Ideal: (size - one MTU of burst) / rate -> up 2.31 s at 64 kbit/s, down 1.16 s at 128.
    assert 0.85 * 2.31 <= up_s <= 1.4 * 2.31 + 0.3, up_s
    assert 0.85 * 1.16 <= down_s <= 1.4 * 1.16 + 0.3, down_s


def test_delay_adds_latency_each_way(
    start_badlink: Callable[..., Badlink], echo_server: Server
) -> None:
    proxy = start_badlink("--target", f"127.0.0.1:{echo_server.port}", "--delay", "250")
    t0 = time.monotonic()
    with proxy.connect() as sock:
        sock.sendall(b"ping0")
        assert recv_exactly(sock, 5) == b"ping0"
        first = time.monotonic() - t0
        assert 1.0 <= first <= 2.0, first  # the handshake's round trip, then 250 ms up + 250 ms down
        for i in range(1, 3):
            t0 = time.monotonic()
            sock.sendall(b"ping%d" % i)
            assert recv_exactly(sock, 5) == b"ping%d" % i
            rtt = time.monotonic() - t0
            assert 0.5 <= rtt <= 1.0, rtt  # 250 ms up + 250 ms down: the handshake is paid once


def test_sigusr1_cuts_open_connections_and_new_ones_work(
    start_badlink: Callable[..., Badlink], echo_server: Server
) -> None:
    proxy = start_badlink("--target", f"127.0.0.1:{echo_server.port}", "--profile", "clean")
    with proxy.connect() as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        wait_for(lambda: "conn 1 opened" in proxy.stderr(), 5, "open event")
        proxy.send_signal(signal.SIGUSR1)
        assert closed_by_peer(sock, timeout=5), "client side not cut"
    wait_for(lambda: echo_server.finished == 1, 5, "target side to be cut too")
    with proxy.connect() as sock:
        sock.sendall(b"again")
        assert recv_exactly(sock, 5) == b"again"
    assert proxy.proc.poll() is None
    assert "cut (SIGUSR1): 1 connection(s)" in proxy.stderr()
    assert proxy.stop() == 0
    assert proxy.summary()["cuts"] == "1"
    assert proxy.summary()["connections"] == "2"


def test_random_cuts(start_badlink: Callable[..., Badlink], echo_server: Server) -> None:
    proxy = start_badlink(
        "--target", f"127.0.0.1:{echo_server.port}", "--cut-every", "0.2-0.4", "--seed", "1"
    )
    with proxy.connect() as sock:
        assert closed_by_peer(sock, timeout=5)
    wait_for(lambda: "cut (random)" in proxy.stderr(), 5, "random cut event")


def test_target_down_closes_client_and_proxy_survives(
    start_badlink: Callable[..., Badlink],
) -> None:
    # A bound but not listening socket: connections are refused, and nobody can grab
    # the port before we start listening on it ("relay restarted").
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    proxy = start_badlink("--target", f"127.0.0.1:{port}", "--quiet")
    try:
        for _ in range(2):
            with proxy.connect() as sock:
                assert closed_by_peer(sock, timeout=5), "client not closed at once"
        assert proxy.proc.poll() is None
        reserved.listen()
        server = Server(echo, sock=reserved)
        try:
            with proxy.connect() as sock:
                sock.sendall(b"back")
                assert recv_exactly(sock, 4) == b"back"
        finally:
            server.close()
    finally:
        reserved.close()
    assert proxy.stop(sig=signal.SIGINT) == 0
    assert proxy.summary()["connections"] == "3"
    assert "conn " not in proxy.stderr()  # --quiet: only the summary


def test_stall_holds_data_without_losing_it(
    start_badlink: Callable[..., Badlink], echo_server: Server
) -> None:
    # Stalls in [1.0, 1.5), [2.0, 2.5), ... after start.
    proxy = start_badlink("--target", f"127.0.0.1:{echo_server.port}", "--stall", "0.5/1")
    rtts = []
    start = time.monotonic()
    with proxy.connect() as sock:
        for i in range(100):
            if time.monotonic() - start > 1.8:
                break
            msg = b"%04d" % i
            t0 = time.monotonic()
            sock.sendall(msg)
            assert recv_exactly(sock, 4) == msg  # held, never lost
            rtts.append(time.monotonic() - t0)
            time.sleep(0.05)
    assert max(rtts) >= 0.25, rtts  # some ping sat through (most of) a stall
    wait_for(lambda: "stall end" in proxy.stderr(), 5, "stall events")
    assert "stall start" in proxy.stderr()
    assert proxy.stop() == 0
    assert int(proxy.summary()["stalls"]) >= 1


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_backpressure_bounds_memory(start_badlink: Callable[..., Badlink]) -> None:
    gate = threading.Event()

    def slow_sink(conn: socket.socket) -> None:
        gate.wait(10)

    server = Server(slow_sink)
    try:
        proxy = start_badlink("--target", f"127.0.0.1:{server.port}", "--up", "8", "--quiet")
        with proxy.connect() as sock:
            sock.setblocking(False)
            wait_for(lambda: server.accepted == 1, 5, "target connection")
            rss_before = _rss_kib(proxy.proc.pid)
            block = b"x" * 262_144
            sent = 0
            last_progress = time.monotonic()
            plateaued = False
            for _ in _deadline_loop(4):
                try:
                    sent += sock.send(block)
                    last_progress = time.monotonic()
                except BlockingIOError:
                    select.select([], [sock], [], 0.05)
                    if time.monotonic() - last_progress > 0.4:
                        plateaued = True
                        break
            growth_mib = (_rss_kib(proxy.proc.pid) - rss_before) / 1024
            gate.set()
        # Without backpressure the proxy would keep reading (at localhost speed) into
        # memory; with it, reading stops once ~4 MiB are queued and the sender blocks.
        assert plateaued, f"sender never blocked after {sent} bytes"
        assert sent > 4 * 2**20, sent  # the queue limit was actually reached
        assert growth_mib < 16, f"proxy grew {growth_mib:.1f} MiB after {sent} bytes"
    finally:
        gate.set()
        server.close()

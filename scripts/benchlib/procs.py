"""Processes the benchmarks drive: a real relay, badlink proxies, and the medcomm CLI.

Each helper bounds its waits and is meant to be used inside try/finally so that nothing
is left running when a benchmark stops early.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"  # the benchmarks' speech, photos and films
MEDCOMM = [sys.executable, "-m", "medcomm.cli"]
_READY = re.compile(r"^medcomm relay listening on (wss?)://127\.0\.0\.1:(\d+)$")
_BADLINK = re.compile(r"^badlink listening on (\S+):(\d+) -> ")


@functools.cache
def load_badlink_profiles() -> dict[str, Any]:
    """badlink's own profile table (the script is the one source of its numbers)."""
    path = ROOT / "scripts" / "badlink"
    loader = importlib.machinery.SourceFileLoader("badlink_profiles", str(path))
    spec = importlib.util.spec_from_loader("badlink_profiles", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["badlink_profiles"] = module
    loader.exec_module(module)
    return dict(module.PROFILES)


def medcomm(*args: str, home: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env["MEDCOMM_HOME"] = str(home)
    return subprocess.run([*MEDCOMM, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buf = ""
    while time.monotonic() < deadline and proc.poll() is None:
        chunk = proc.stdout.readline()
        if chunk:
            buf += chunk
            if buf.endswith("\n"):
                break
        else:
            time.sleep(0.02)
    os.set_blocking(proc.stdout.fileno(), True)
    return buf.strip()


def link_text(name: str) -> str:
    """A badlink profile in words, for the "what ran" lines."""
    p = load_badlink_profiles()[name]
    if name == "clean":
        return "clean (no shaping, no delay)"
    return (
        f"{name}: {p.up_kbit:g}/{p.down_kbit:g} kbit/s up/down, {p.delay_ms:g} ms +/- {p.jitter_ms:g} one-way"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Relay:
    data: Path
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    started_at: float = 0.0
    kills: int = 0
    extra: list[str] = field(default_factory=list)  # e.g. ["--tls", "self-signed"]
    scheme: str = "ws"

    def start(self) -> Relay:
        self.proc = subprocess.Popen(
            # Every bench enrols all its devices from 127.0.0.1: one address, more than the
            # relay's 10 enrolments a minute meant for one clinic's NAT.
            [*MEDCOMM, "serve", "--data", str(self.data), "--port", str(self.port)]
            + ["--enrolments-per-minute", "1000", *self.extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = _first_line(self.proc, 30)
        m = _READY.match(line)
        if not m:
            self.stop()
            raise RuntimeError(f"relay did not start: {line!r}")
        self.scheme, self.port = m.group(1), int(m.group(2))
        return self

    def fingerprint(self) -> str | None:
        """The TLS key devices pin at login (a --tls self-signed relay), else None."""
        cert = self.data / "tls" / "relay.crt"
        if self.scheme != "wss" or not cert.exists():
            return None
        from medcomm.server.tls import cert_fingerprint

        return cert_fingerprint(cert)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def enroll(self, name: str, role: str) -> str:
        out = medcomm("admin", "--data", str(self.data), "enroll", name, "--role", role)
        if out.returncode:
            raise RuntimeError(f"enroll failed: {out.stderr.strip()}")
        return out.stdout.strip().splitlines()[-1]


@dataclass
class Badlink:
    target_port: int
    profile: str
    stats: Path
    seed: int = 1
    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[str] | None = None

    def start(self) -> Badlink:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "badlink"),
                "--target",
                f"127.0.0.1:{self.target_port}",
                "--profile",
                self.profile,
                "--seed",
                str(self.seed),
                "--stats-json",
                str(self.stats),
                "--quiet",
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = _first_line(self.proc, 15)
        m = _BADLINK.match(line)
        if not m:
            self.stop()
            raise RuntimeError(f"badlink did not start: {line!r}")
        self.port = int(m.group(2))
        self.started_at = time.time()  # its stall schedule counts from about here
        return self

    scheme: str = "ws"  # wss when the relay behind it speaks TLS (badlink passes bytes through)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def cut(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)

    def counters(self) -> dict[str, int]:
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def socket_counters(dport: int) -> dict[str, int]:
    """Kernel TCP counters of the client sockets connected to dport (from `ss -ti`).

    Segments include pure ACKs, so bytes + 52 x segments is the IPv4 wire cost (20-byte IP
    header, 32-byte TCP header with timestamps), without link-layer framing.
    """
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( dport = :{dport} )"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    totals = {"segs_out": 0, "segs_in": 0, "bytes_acked": 0, "bytes_received": 0}
    for key in totals:
        totals[key] = sum(int(v) for v in re.findall(rf"\b{key}:(\d+)", out))
    return totals

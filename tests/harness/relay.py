"""A real `medcomm serve` process on loopback, and enrolled identities, for integration tests.

Every wait is bounded; processes are killed at teardown whatever happens.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MEDCOMM = [sys.executable, "-m", "medcomm.cli"]
READY = re.compile(r"^medcomm relay listening on (wss?)://127\.0\.0\.1:(\d+)$")


def medcomm(
    *args: str, home: Path | None = None, timeout: float = 60, input: str | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the medcomm CLI as a subprocess, as a user would."""
    env = dict(os.environ)
    if home is not None:
        env["MEDCOMM_HOME"] = str(home)
    proc = subprocess.run(
        [*MEDCOMM, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"medcomm {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


@dataclass
class RelayProcess:
    data: Path
    port: int = 0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    scheme: str = "ws"
    log: Path | None = None  # the relay's stderr (its log) is appended here, else dropped

    def start(self, timeout: float = 20) -> RelayProcess:
        """Start (or restart on the same port) and wait for the one ready line."""
        err = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [*MEDCOMM, "serve", "--data", str(self.data), "--port", str(self.port), *self.extra],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        finally:
            if self.log is not None:
                err.close()  # type: ignore[union-attr]  # the child holds its own copy
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().strip()
            if line or self.proc.poll() is not None:
                break
        m = READY.match(line)
        if not m:
            self.stop()
            raise AssertionError(f"relay did not become ready: {line!r}")
        self.scheme, self.port = m.group(1), int(m.group(2))
        return self

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the crash the durability promise is about."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None

    def enroll(self, name: str, role: str = "clinic") -> str:
        out = medcomm("admin", "--data", str(self.data), "enroll", name, "--role", role, check=True)
        return out.stdout.strip().splitlines()[-1]

    def identity(self, root: Path, name: str, role: str = "clinic", url: str | None = None) -> Path:
        """Enroll name, log in a fresh device under root/name, return its MEDCOMM_HOME."""
        home = root / name
        code = self.enroll(name, role)
        medcomm("login", url or self.url, name, code, home=home, check=True)
        return home

"""scripts/badlink as a test fixture: a real TCP proxy with emulated faults."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"^badlink listening on \S+:(\d+) -> ")


class BadLink:
    def __init__(self, target_port: int, stats: Path, *args: str) -> None:
        self.stats = stats
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "badlink"),
                "--target",
                f"127.0.0.1:{target_port}",
                "--stats-json",
                str(stats),
                "--quiet",
                "--seed",
                "1",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        m = _READY.match(line)
        if not m:
            self.close()
            raise AssertionError(f"badlink did not start: {line!r}")
        self.port = int(m.group(1))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def counters(self, settle: float = 1.2) -> dict[str, int]:
        time.sleep(settle)  # the stats file is rewritten every second
        return json.loads(self.stats.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

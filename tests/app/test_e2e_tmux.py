"""Two desks in tmux talking through a real relay: one sends, the other sees it, and the
sender sees the delivery state change from delivered to read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.relay import RelayProcess, medcomm

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        return out.stdout

    def start(self, name: str, home: Path) -> None:
        cmd = f"MEDCOMM_HOME={home} TERM=xterm-256color {sys.executable} -m medcomm.cli"
        if self.run("has-session", "-t", "e2e") == "" and name == "nurse":
            self.run("new-session", "-d", "-s", "e2e", "-n", name, "-x", "80", "-y", "24", cmd)
        else:
            self.run("new-window", "-t", "e2e", "-n", name, cmd)

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", f"e2e:{name}")

    def keys(self, name: str, *keys: str) -> None:
        self.run("send-keys", "-t", f"e2e:{name}", *keys)

    def wait_for(self, name: str, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(name)
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not on {name}'s screen:\n{screen}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def test_two_desks_talk_and_the_sender_sees_states_change(relay: RelayProcess, tmp_path: Path) -> None:
    nurse = relay.identity(tmp_path, "amina", "clinic")
    doctor = relay.identity(tmp_path, "dr.chen", "doctor")
    consult = medcomm(
        "consult", "open", "Fever, 6y", "--with", "dr.chen", home=nurse, check=True
    ).stdout.strip()
    medcomm("sync", home=doctor, check=True)
    tmux = Tmux(f"medcomm-e2e-{os.getpid()}")
    try:
        tmux.start("nurse", nurse)
        tmux.start("doctor", doctor)
        tmux.wait_for("nurse", "Fever, 6y")
        tmux.wait_for("doctor", "Fever, 6y")
        tmux.keys("nurse", "Enter")
        tmux.wait_for("nurse", f"{consult} · Fever, 6y")
        tmux.keys("nurse", "-l", "Temp 39.2 RR 44")
        tmux.keys("nurse", "Enter")
        # the doctor's desk is on the list: the message reaches his device, unread
        tmux.wait_for("doctor", "Temp 39.2 RR 44")
        tmux.wait_for("doctor", "1 unread")
        tmux.wait_for("nurse", "✓✓ delivered")
        # he opens the consult: it is read, and the nurse's desk says so
        tmux.keys("doctor", "Enter")
        tmux.wait_for("doctor", "amina: Temp 39.2 RR 44")
        tmux.wait_for("nurse", "✓✓ read")
        # and back: the doctor answers, the nurse sees it in the open consult
        tmux.keys("doctor", "-l", "Start antibiotics")
        tmux.keys("doctor", "Enter")
        tmux.wait_for("nurse", "dr.chen: Start antibiotics")
    finally:
        tmux.kill()

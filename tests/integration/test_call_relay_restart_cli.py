"""A call whose relay restarts mid-call: both `medcomm call` processes must say the call was
lost and exit, not carry on as a live-looking line that carries nothing.

The relay keeps calls in memory only (a call is live signalling, not a record until it
ends). After a restart both ends reconnect, try to answer the call again, and hear that the
relay no longer has it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness.relay import RelayProcess, medcomm
from tests.integration.test_call_cli import finish, spawn, speechlike, stop, wait_text, write_wav

pytestmark = pytest.mark.timeout(120)


def test_a_relay_restart_ends_the_call_as_lost_on_both_ends(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    procs = []
    try:
        nurse = relay.identity(tmp_path, "amina", "clinic")
        doctor = relay.identity(tmp_path, "dr.chen", "doctor")
        opened = medcomm("consult", "open", "restart", "--with", "dr.chen", home=nurse, check=True)
        consult = opened.stdout.strip()
        for name, f0 in (("a", 140.0), ("b", 210.0)):
            write_wav(tmp_path / f"{name}.wav", speechlike(40.0, f0, seed=ord(name)))

        def call(home: Path, name: str, *extra: str) -> None:
            procs.append(spawn(
                home, tmp_path / f"{name}.err", "call", consult, *extra, "--seconds", "40",
                "--mic", str(tmp_path / f"{name}.wav"), "--speaker", str(tmp_path / f"{name}-out.wav"),
            ))  # fmt: skip

        call(doctor, "b", "--answer")
        wait_text(tmp_path / "b.err", "waiting for a call", 30, procs[0])
        call(nurse, "a")
        for name, proc in zip("ba", procs, strict=True):
            wait_text(tmp_path / f"{name}.err", "in call 0:02", 30, proc)
        relay.kill()
        relay.start()  # same port and data: both ends reconnect
        restarted = time.monotonic()
        results = [finish(p, 30) for p in procs]
        took = time.monotonic() - restarted
    finally:
        for p in procs:
            stop(p)
        relay.stop()
    for name, (rc, out) in zip("ba", results, strict=True):
        err = (tmp_path / f"{name}.err").read_text()
        assert rc == 1 and ": lost," in out, (rc, out, err[-1500:])
        assert "call lost: the relay no longer has it" in err and "Traceback" not in err
    assert took < 20, f"the ends took {took:.1f} s to notice (the call ran for 40 s)"

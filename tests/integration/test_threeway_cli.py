"""A 3-way consult call end to end: three `medcomm call` processes through a real relay.

Each member's microphone is a steady tone of its own pitch, so a speaker file tells whose
voice reached it: every member must hear both others (and not itself). The second doctor
answers while the call is already active, which is when the caller's and the first
answerer's view of the slots used to go stale and that doctor's voice was dropped unheard.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.harness.relay import RelayProcess, medcomm
from tests.integration.test_call_cli import RATE, finish, read_wav, spawn, stop, wait_text, write_wav

pytestmark = pytest.mark.timeout(120)

PITCH = {"amina": 300.0, "dr.chen": 520.0, "dr.osei": 760.0}


def steady_tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.25 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def level_at(pcm: np.ndarray, hz: float) -> float:
    """Spectral magnitude near ``hz`` relative to the strongest bin (0..1)."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    near = (freqs > hz - 15) & (freqs < hz + 15)
    return float(spectrum[near].max() / spectrum.max())


def test_in_a_three_way_call_every_member_hears_both_others(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        with ThreadPoolExecutor(3) as pool:
            homes = dict(
                zip(
                    PITCH,
                    pool.map(
                        lambda who: relay.identity(tmp_path, *who),
                        [("amina", "clinic"), ("dr.chen", "doctor"), ("dr.osei", "doctor")],
                    ),
                    strict=True,
                )
            )
        consult = medcomm(
            "consult", "open", "three", "--with", "dr.chen,dr.osei", home=homes["amina"], check=True
        ).stdout.strip()
        for name, hz in PITCH.items():
            write_wav(tmp_path / f"{name}-mic.wav", steady_tone(hz, 12.0))

        def call(name: str, *extra: str) -> subprocess.Popen[str]:
            return spawn(
                homes[name], tmp_path / f"{name}.err", "call", consult, *extra,
                "--mic", str(tmp_path / f"{name}-mic.wav"), "--speaker", str(tmp_path / f"{name}-out.wav"),
                "--report", str(tmp_path / f"{name}.json"),
            )  # fmt: skip

        for doctor in ("dr.chen", "dr.osei"):
            procs[doctor] = call(doctor, "--answer", "--seconds", "9")
            wait_text(tmp_path / f"{doctor}.err", "waiting for a call", 30, procs[doctor])
        procs["amina"] = call("amina", "--seconds", "8")
        results = {name: finish(p, 60) for name, p in procs.items()}
    finally:
        for p in procs.values():
            stop(p)
        relay.stop()
    for name, (rc, _) in results.items():
        assert rc == 0, (tmp_path / f"{name}.err").read_text()[-2000:]
    for name, hz in PITCH.items():
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert len(report["final"]["streams"]) == 2, f"{name} played {report['final']['streams']}"
        assert report["crypto"]["no_key"] <= 10, f"{name} dropped {report['crypto']['no_key']} frames unheard"
        heard = read_wav(tmp_path / f"{name}-out.wav")[3 * RATE :]
        assert len(heard) >= 2 * RATE
        others = [h for n, h in PITCH.items() if n != name]
        assert all(level_at(heard, h) > 0.2 for h in others), f"{name} does not hear both others"
        assert level_at(heard, hz) < 0.05, f"{name} hears itself"

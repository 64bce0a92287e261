"""`scripts/bench voice`'s offline reference: the same Opus settings the sender used, rung by
rung when it changed rungs during the call (else the judge would charge the change to the
link: auto's first seconds at mid judged against standard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcomm.adapters import opus
from tests.harness.scripts import SCRIPTS, load_script

RATE = 48_000


@pytest.fixture(scope="module")
def voice() -> object:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SCRIPTS))  # its own imports are of scripts/benchlib
        return load_script("benchlib/voice.py", "voicebench_under_test")


def high_share(x: np.ndarray) -> float:
    """Share of the energy above 6 kHz (mediumband codes nothing there)."""
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    return float(spec[freqs > 6000].sum() / spec.sum())


def test_a_sender_that_changed_rungs_is_judged_against_each_where_it_coded(voice: object) -> None:
    t = np.arange(6 * RATE) / RATE
    pcm = (8000 * np.sin(2 * np.pi * 6800 * t) + 8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    out = voice.roundtrip_schedule(pcm, [(0, "mid"), (3000, "standard")])  # type: ignore[attr-defined]
    assert len(out) == len(pcm)
    assert high_share(out[RATE : 2 * RATE]) < 0.01 < high_share(out[4 * RATE : 5 * RATE])


def test_one_rung_all_call_is_that_rungs_plain_round_trip(voice: object) -> None:
    pcm = (np.random.default_rng(1).normal(0, 3000, 2 * RATE)).astype(np.int16)
    same = voice.Offline().scheduled(Path("x.wav"), pcm, [(0, "standard")])  # type: ignore[attr-defined]
    assert np.array_equal(same, opus.roundtrip(pcm, "voip", 15000, 60, "wb", dtx=True))

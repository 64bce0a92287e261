"""`medcomm call` end to end: two CLI processes talk through a real relay, WAV files in and out.

One call is held per module (it takes ~8 s) and several tests read what it left behind: the
exit codes, the recorded speaker files, the ``--report`` files and the consult's history.

The speech stand-in is made here (no corpus needed): harmonics 1-6 of a gliding pitch, gated
into syllable-sized bursts by a seeded random pattern, so the two parties' signals are
unmistakably different. A received file is matched to what was sent by its loudness envelope
(10 ms frames): Opus at 9-16 kbit/s keeps the envelope but not the waveform's phase, and the
playout delay is allowed to move during a call (the jitter buffer starts at 120 ms and
shrinks once it has measured the link), which a single waveform lag cannot follow. The first
1.5 s (the jitter buffer's learning time) are left out of the match.

Voice is sealed end to end: each end's stream key travels in a ``callkey`` message through the
relay's durable log, and the media frames the relay forwards carry only the sealed packets.
The reports' ``crypto`` figures and an in-process end that watches its own encoder, link and
opener show it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medcomm.adapters import opus
from medcomm.adapters.audio import WavSink, WavSource
from medcomm.core import voiceframe
from medcomm.core.voicecrypt import OVERHEAD, StreamOpener
from medcomm.errors import LinkDown
from medcomm.session.call import SessionCallKeys, run_call
from medcomm.session.callengine import CallEngine, CallLimits
from medcomm.session.service import Session
from tests.harness.relay import MEDCOMM, RelayProcess, medcomm

pytestmark = pytest.mark.timeout(90)

RATE = 48_000
FRAME = RATE // 100  # 10 ms envelope frames
SKIP_S = 1.5  # start of the compared span of what was sent
SPAN_S = 4.0  # length of the compared span


def speechlike(seconds: float, f0: float, seed: int) -> np.ndarray:
    """Voiced bursts of 80-300 ms with pauses of 40-250 ms; harmonics 1-6 of a gliding f0."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 7))
    gate = np.zeros(n)
    pos = int(0.2 * RATE)
    while pos < n:
        on = int(rng.uniform(0.08, 0.3) * RATE)
        end = min(n, pos + on)
        gate[pos:end] = np.hanning(on)[: end - pos] * rng.uniform(0.4, 1.0)
        pos = end + int(rng.uniform(0.04, 0.25) * RATE)
    x = 0.35 * gate * voiced / np.max(np.abs(voiced))
    return np.round(x * 32767).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def envelope(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME
    return np.sqrt(np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1))


def best_match(sent: np.ndarray, heard: np.ndarray, max_lag_s: float = 1.0) -> tuple[float, float]:
    """(peak normalised cross-correlation, lag in s) of the envelopes: ``sent`` from SKIP_S for
    SPAN_S against ``heard`` (same timeline origin) at lags 0..max_lag_s."""
    a, b = envelope(sent.astype(np.float64)), envelope(heard)
    start, span = int(SKIP_S * 100), int(SPAN_S * 100)
    x = a[start : start + span] - a[start : start + span].mean()
    assert len(x) == span
    best = (-1.0, 0.0)
    for lag in range(int(max_lag_s * 100) + 1):
        y = b[start + lag : start + lag + span]
        if len(y) < span:
            break
        y = y - y.mean()
        denom = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
        best = max(best, (float(np.sum(x * y)) / denom if denom > 0 else 0.0, lag / 100))
    return best


def spawn(home: Path, err: Path, *args: str) -> subprocess.Popen[str]:
    """A CLI process; stderr goes to a file the test can watch while it runs."""
    env = dict(os.environ, MEDCOMM_HOME=str(home))
    with err.open("w") as f:
        return subprocess.Popen([*MEDCOMM, *args], env=env, stdout=subprocess.PIPE, stderr=f, text=True)


def wait_text(path: Path, text: str, timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {text!r}: {path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} within {timeout} s: {path.read_text()[-2000:]}")
        time.sleep(0.05)


async def poll_until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError(f"medcomm call did not finish within {timeout} s") from None
    return proc.returncode, out


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


# --- one real call, shared by the tests that read its results --------------------------------


@dataclass
class World:
    """A relay with two logged-in devices and two consults between them (one per call)."""

    relay: RelayProcess
    tmp: Path
    nurse: Path
    doctor: Path
    consult: str  # the held call's
    spare: str  # for the other tests; no call there ever connects


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("call")
    relay = RelayProcess(tmp / "relay").start()
    try:
        # side by side: each step is a CLI process, and starting Python dominates on a busy box
        with ThreadPoolExecutor(2) as pool:
            nurse, doctor = pool.map(
                lambda who: relay.identity(tmp, *who), [("amina", "clinic"), ("dr.chen", "doctor")]
            )
            # one from each device: two processes never share a local store
            consults = list(
                pool.map(
                    lambda job: medcomm("consult", "open", *job[1:], home=job[0], check=True).stdout.strip(),
                    [(nurse, "cough", "--with", "dr.chen"), (doctor, "spare", "--with", "amina")],
                )
            )
        yield World(relay, tmp, nurse, doctor, *consults)
    finally:
        relay.stop()


@dataclass
class Party:
    name: str
    home: Path
    sent: np.ndarray
    rc: int
    out: str
    err: str
    report: Path
    speaker: Path


@dataclass
class HeldCall:
    consult: str
    a: Party  # the caller
    b: Party  # the one who answered


@pytest.fixture(scope="module")
def held_call(world: World) -> HeldCall:
    tmp, consult = world.tmp, world.consult
    a_in, b_in = speechlike(6.0, 140.0, seed=1), speechlike(6.0, 210.0, seed=2)
    write_wav(tmp / "a_in.wav", a_in)
    write_wav(tmp / "b_in.wav", b_in)
    b = spawn(
        world.doctor,
        tmp / "b.err",
        "call",
        consult,
        "--answer",
        "--mic",
        str(tmp / "b_in.wav"),
        "--speaker",
        str(tmp / "b_out.wav"),
        "--seconds",
        "8",
        "--report",
        str(tmp / "b.json"),
    )
    a: subprocess.Popen[str] | None = None
    try:
        # printed once the call's listener is in place: from here on the ring cannot be missed
        wait_text(tmp / "b.err", "waiting for a call", 30, b)
        a = spawn(
            world.nurse,
            tmp / "a.err",
            "call",
            consult,
            "--mic",
            str(tmp / "a_in.wav"),
            "--speaker",
            str(tmp / "a_out.wav"),
            "--seconds",
            "6",
            "--report",
            str(tmp / "a.json"),
        )
        a_rc, a_out = finish(a, 40)
        b_rc, b_out = finish(b, 20)
    finally:
        for p in (a, b):
            if p is not None:
                stop(p)
    return HeldCall(
        consult,
        Party(
            "amina",
            world.nurse,
            a_in,
            a_rc,
            a_out,
            (tmp / "a.err").read_text(),
            tmp / "a.json",
            tmp / "a_out.wav",
        ),
        Party(
            "dr.chen",
            world.doctor,
            b_in,
            b_rc,
            b_out,
            (tmp / "b.err").read_text(),
            tmp / "b.json",
            tmp / "b_out.wav",
        ),
    )


def test_both_ends_of_a_call_exit_cleanly(held_call: HeldCall) -> None:
    for p in (held_call.a, held_call.b):
        assert p.rc == 0, p.err[-2000:]
        assert "Traceback" not in p.err
        assert p.out.startswith("call ") and ("completed" in p.out or "hung up" in p.out), p.out
        assert "in call" in p.err  # the once-a-second status line (not a tty: one line each)


def test_each_end_hears_the_other_and_not_itself(held_call: HeldCall) -> None:
    for me, other in ((held_call.a, held_call.b), (held_call.b, held_call.a)):
        heard = read_wav(me.speaker)
        assert len(heard) >= 5 * RATE, "the speaker file covers the call"
        score, lag = best_match(other.sent, heard)
        assert score > 0.5 and lag < 1.0, (me.name, score, lag)
        own, _ = best_match(me.sent, heard)
        assert own < score - 0.2, (me.name, "heard itself", own, score)


def test_reports_carry_per_second_stats(held_call: HeldCall) -> None:
    for p in (held_call.a, held_call.b):
        report = json.loads(p.report.read_text())
        assert report["outcome"] in ("completed", "hung up")
        assert report["profile"] == "auto"
        assert report["bad_frames"] == 0
        per_second = report["seconds"]
        assert 4 <= len(per_second) <= 9, len(per_second)
        for entry in per_second:
            assert {"t", "up_kbps", "down_kbps", "rtt_ms", "jb_ms", "rung", "dropped"} <= set(entry)
        # voice went both ways at a thin-link rate (auto: 12-16 kbit/s Opus plus headers, DTX)
        assert all(2.0 < e["up_kbps"] < 30.0 and 2.0 < e["down_kbps"] < 30.0 for e in per_second[1:-1])
        assert sum(e["dropped"] for e in per_second) == 0  # loopback never backs up


def test_every_frame_was_sealed_and_opened_end_to_end(held_call: HeldCall) -> None:
    reports = {p.name: json.loads(p.report.read_text())["crypto"] for p in (held_call.a, held_call.b)}
    for me, other in (("amina", "dr.chen"), ("dr.chen", "amina")):
        mine, theirs = reports[me], reports[other]
        assert mine["overhead"] == OVERHEAD == 8
        assert mine["sealed"] >= 40, mine  # ~5 s of speech in 60-120 ms packets, DTX in the pauses
        # what the other sealed was opened here, or waited for its key (loopback loses nothing)
        assert mine["opened"] + mine["no_key"] >= theirs["sealed"] - 3, (me, mine, theirs)
        assert mine["opened"] >= 0.8 * theirs["sealed"], (me, mine, theirs)
        assert mine["tampered"] == mine["truncated"] == mine["replayed"] == 0, mine
        rungs = mine["rungs"]
        assert sum(r["frames"] for r in rungs.values()) == mine["sealed"]
        for r in rungs.values():  # each frame on the wire: 5 header bytes, the packet, the tag
            assert r["frame_bytes"] - r["opus_bytes"] == r["frames"] * (voiceframe.MEDIA_HEADER + OVERHEAD)


def test_report_keeps_the_call_duration(held_call: HeldCall) -> None:
    for p in (held_call.a, held_call.b):
        report = json.loads(p.report.read_text())
        # the engine's per-second list is "seconds"; the call's length must not collide with it
        assert isinstance(report["duration_s"], float) and 4.0 < report["duration_s"] < 9.0, report
        assert isinstance(report["seconds"], list)


def test_history_records_the_call_with_both_names(held_call: HeldCall) -> None:
    out = medcomm("history", held_call.consult, "--json", home=held_call.a.home, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    calls = [ln for ln in lines if ln["kind"] == "call"]
    assert len(calls) == 1, lines
    assert "amina" in calls[0]["text"] and "dr.chen" in calls[0]["text"], calls[0]
    assert calls[0]["sender"] == "amina"  # the caller


# --- the other side of the ring ---------------------------------------------------------------


async def test_answer_picks_up_a_call_that_was_already_ringing(world: World, tmp_path: Path) -> None:
    write_wav(tmp_path / "a_in.wav", speechlike(4.0, 140.0, seed=3))
    write_wav(tmp_path / "b_in.wav", speechlike(4.0, 210.0, seed=4))
    a = spawn(
        world.nurse,
        tmp_path / "a.err",
        "call",
        world.spare,
        "--mic",
        str(tmp_path / "a_in.wav"),
        "--speaker",
        str(tmp_path / "a_out.wav"),
        "--seconds",
        "2",
    )
    try:
        wait_text(tmp_path / "a.err", "ringing", 30, a)
        # what `medcomm call --answer` does, with the ring already delivered before run_call;
        # this end also keeps what its encoder made, what it handed the link (the bytes the
        # relay receives) and, for the frames the relay forwarded, the sealed and opened forms
        encoded: list[bytes] = []
        to_relay: list[bytes] = []
        from_relay: list[tuple[bytes, bytes]] = []
        engines: list[CallEngine] = []
        async with Session.open(home=world.doctor) as s:
            await s.link.wait_until(lambda: s.status.state == "online", 20)
            await asyncio.sleep(0.5)
            send_voice = s.link.send_voice

            def tap_send(data: bytes, backlog_limit: int, *riders: bytes) -> int | None:
                sent = send_voice(data, backlog_limit, *riders)
                if sent is not None and voiceframe.frame_kind(data) == "media":
                    to_relay.append(data)
                return sent

            def tap(engine: CallEngine) -> None:
                engines.append(engine)
                encode, open_frame = engine.encoder.encode, engine.crypto.open

                def tap_encode(pcm: np.ndarray) -> opus.Encoded:
                    out = encode(pcm)
                    if out.packet:
                        encoded.append(out.packet)
                    return out

                def tap_open(frame: voiceframe.MediaFrame, now: float) -> tuple[int, bytes] | None:
                    out = open_frame(frame, now)
                    if out is not None:
                        from_relay.append((frame.payload, out[1]))
                    return out

                engine.encoder.encode = tap_encode  # type: ignore[method-assign]
                engine.crypto.open = tap_open  # type: ignore[method-assign]

            s.link.send_voice = tap_send  # type: ignore[method-assign]
            source, sink = WavSource(tmp_path / "b_in.wav"), WavSink(tmp_path / "b_out.wav")
            out = await run_call(
                s.link,
                s.me,
                world.spare,
                source,
                sink,
                keys=SessionCallKeys(s),
                seconds=1.0,
                answer=True,
                limits=CallLimits(answer_wait=2.0),
                engine_hook=tap,
            )
        assert out.outcome == "hung up" and out.seconds > 0.5
        assert out.report["bad_frames"] == 0
        # what the relay received from us: sealed, never the encoder's packets
        assert len(to_relay) >= 5 and len(encoded) >= len(to_relay)
        mine = StreamOpener(engines[0].crypto.own_key)
        for data in to_relay:
            frame = voiceframe.parse(data)
            assert isinstance(frame, voiceframe.MediaFrame)
            assert frame.payload not in encoded
            packet = mine.open(frame, 0.0)[1]
            assert packet in encoded and packet not in frame.payload
            assert len(frame.payload) == len(packet) + OVERHEAD
        # what the relay forwarded to us from the caller's CLI: sealed, opened here into Opus
        assert len(from_relay) >= 5, len(from_relay)
        for payload, packet in from_relay:
            assert payload != packet and packet not in payload and len(payload) == len(packet) + OVERHEAD
            assert opus.packet_duration_ms(packet) >= 20
        crypto = out.report["crypto"]
        assert isinstance(crypto, dict) and crypto["tampered"] == crypto["replayed"] == 0
        rc, printed = finish(a, 20)  # our hang-up ends the call for the caller too
        assert rc == 0 and "completed" in printed, printed
    finally:
        stop(a)


async def test_the_desk_answers_with_the_sessions_keys_and_both_ends_hear(
    world: World, tmp_path: Path
) -> None:
    """``Session.calls`` (the desk's controller) carries the session's keys: a call answered
    there is sealed both ways like one from the CLI."""
    a_in = speechlike(4.0, 140.0, seed=8)
    write_wav(tmp_path / "a_in.wav", a_in)
    write_wav(tmp_path / "b_in.wav", speechlike(4.0, 210.0, seed=9))
    async with Session.open(home=world.doctor) as s:
        await s.link.wait_until(lambda: s.status.state == "online", 20)
        calls = s.calls
        a = spawn(
            world.nurse,
            tmp_path / "a.err",
            "call",
            world.spare,
            "--mic",
            str(tmp_path / "a_in.wav"),
            "--speaker",
            str(tmp_path / "a_out.wav"),
            "--seconds",
            "3",
            "--report",
            str(tmp_path / "a.json"),
        )
        try:
            await poll_until(lambda: calls.incoming() is not None, 30)
            mic, speaker = str(tmp_path / "b_in.wav"), str(tmp_path / "b_out.wav")
            calls.answer(world.spare, "auto", mic=mic, speaker=speaker)
            await poll_until(lambda: calls.view is not None and calls.view.state == "ended", 30)
            rc, printed = finish(a, 20)
        finally:
            stop(a)
        view = calls.view
        assert view is not None and view.error is None, view
        assert rc == 0 and "hung up" in printed, printed  # its --seconds ran out, the desk's call ended
        stats = view.stats
        assert stats is not None and stats.failed_auth == 0
    # the desk's end opened the caller's speech: its recording follows what was said
    heard = read_wav(tmp_path / "b_out.wav")
    assert len(heard) >= 2 * RATE
    tenths = [heard[i : i + RATE // 10] for i in range(0, len(heard) - RATE // 10, RATE // 10)]
    peak = max(float(np.sqrt(np.mean(x**2))) for x in tenths)
    assert peak > 1000, peak
    # and the caller opened the desk's frames
    report = json.loads((tmp_path / "a.json").read_text())["crypto"]
    assert report["opened"] >= 10 and report["tampered"] == report["replayed"] == 0, report


async def test_a_ring_that_ended_while_offline_is_not_answered(world: World, tmp_path: Path) -> None:
    """The relay's list of live calls on connect is the truth; a ring remembered from before
    a reconnect may have ended meanwhile (here: the relay restarted and forgot the call)."""
    write_wav(tmp_path / "a_in.wav", speechlike(2.0, 140.0, seed=6))
    write_wav(tmp_path / "b_in.wav", speechlike(2.0, 210.0, seed=7))
    async with Session.open(home=world.doctor) as s:
        await s.link.wait_until(lambda: s.status.state == "online", 20)
        a = spawn(
            world.nurse,
            tmp_path / "a.err",
            "call",
            world.spare,
            "--mic",
            str(tmp_path / "a_in.wav"),
            "--speaker",
            str(tmp_path / "a_out.wav"),
        )
        try:
            await poll_until(lambda: world.spare in s.link.call_states, 30)  # a CallState wakes no waiter
        finally:
            stop(a)
        connects = s.link.status.connects
        world.relay.kill()  # the call lived in the relay's memory only: it is gone
        world.relay.start()
        await s.link.wait_until(lambda: s.link.status.connects > connects and s.status.state == "online", 30)
        await asyncio.sleep(0.3)  # what the relay sends on connect has been read
        source, sink = WavSource(tmp_path / "b_in.wav"), WavSink(tmp_path / "b_out.wav")
        with pytest.raises(LinkDown, match="no answer"):  # it waited for a ring; none came
            await run_call(
                s.link,
                s.me,
                world.spare,
                source,
                sink,
                keys=SessionCallKeys(s),
                answer=True,
                limits=CallLimits(answer_wait=1.0),
            )


# --- failures a user can cause -----------------------------------------------------------------


def test_a_missing_mic_file_is_a_usage_error(world: World, tmp_path: Path) -> None:
    home, consult = world.nurse, world.spare
    missing = tmp_path / "nope.wav"
    started = time.monotonic()
    proc = medcomm(
        "call",
        consult,
        "--mic",
        str(missing),
        "--speaker",
        str(tmp_path / "o.wav"),
        "--seconds",
        "2",
        home=home,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"medcomm: {missing}: no such file"]
    assert time.monotonic() - started < 15  # refused before any call is placed


@pytest.mark.parametrize("device", ["--mic", "--speaker"])
def test_the_default_sound_device_on_a_headless_box_is_voice_unavailable(
    world: World, tmp_path: Path, device: str
) -> None:
    home, consult, wav = world.nurse, world.spare, tmp_path / "in.wav"
    write_wav(wav, speechlike(1.0, 150.0, seed=5))
    files = {"--mic": str(wav), "--speaker": str(tmp_path / "o.wav")}
    del files[device]  # that one is left to the default device
    args = [arg for flag, path in files.items() for arg in (flag, path)]
    proc = medcomm("call", consult, *args, "--seconds", "2", home=home, timeout=30)
    if proc.returncode == 0:
        pytest.skip("this machine has a working sound device")
    assert proc.returncode == 69, proc.stderr  # VoiceUnavailable
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medcomm: "), proc.stderr
    role = "microphone" if device == "--mic" else "speaker"
    assert "PortAudio" in lines[0] or role in lines[0], lines[0]
    assert device in lines[0] or "PortAudio" in lines[0], "the message says what to use instead"


def test_devices_lists_or_says_there_are_none(tmp_path: Path) -> None:
    proc = medcomm("devices", home=tmp_path, timeout=30)
    assert "Traceback" not in proc.stderr
    if proc.returncode == 69:  # no PortAudio at all: one clear line
        assert "PortAudio" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        return
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, "devices printed nothing"
    assert lines == ["no sound devices (use --mic FILE.wav --speaker FILE.wav for calls)"] or all(
        line.split()[0].isdigit() and " in " in line and " out " in line for line in lines
    ), lines


def test_an_unknown_profile_is_a_usage_error(world: World, tmp_path: Path) -> None:
    home, consult, wav = world.nurse, world.spare, tmp_path / "in.wav"
    write_wav(wav, speechlike(1.0, 150.0, seed=5))
    proc = medcomm(
        "call",
        consult,
        "--mic",
        str(wav),
        "--speaker",
        str(tmp_path / "o.wav"),
        "--profile",
        "bogus",
        home=home,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "bogus" in proc.stderr and "auto" in proc.stderr and "auscultation" in proc.stderr
    assert not (tmp_path / "o.wav").exists(), "nothing is opened for a call that cannot start"

"""`medcomm note` and `medcomm play` between two identities, as people run them."""

from __future__ import annotations

import json
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from medcomm.adapters.blobcache import BlobCache
from tests.harness.relay import RelayProcess, medcomm

pytestmark = pytest.mark.timeout(90)
RATE = 48_000




def speechlike(path: Path, seconds: float, rate: int = RATE) -> np.ndarray:
    """A voiced, syllable-paced test signal (gliding pitch, harmonics, 3 Hz envelope with
    pauses) written as a 16-bit mono WAV; returns its samples."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2
    x = (voice * envelope / np.abs(voice).max() * 14000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return x


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def envelope(x: np.ndarray, frame: int = 960) -> np.ndarray:
    n = len(x) // frame
    return np.sqrt((x[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1))


def note_lines(home: Path, consult: str) -> list[dict]:
    out = medcomm("history", consult, "--json", home=home, check=True)
    return [m for m in map(json.loads, out.stdout.splitlines()) if m["kind"] == "note"]


def test_a_note_sent_from_a_wav_plays_back_at_the_doctor(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    sent = speechlike(tmp_path / "in.wav", 3.2)
    t0 = time.monotonic()
    out = medcomm("note", consult, "--from", str(tmp_path / "in.wav"), home=nurse)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 3.2 + 10  # read at once, not replayed in real time
    note_id = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", note_id) and re.search(r"stored #\d+", out.stderr)
    assert "sending note: 100%" in out.stderr

    (line,) = note_lines(doctor, consult)
    assert line["id"] == line["note"] == note_id and line["sender"] == "amina"
    m = re.fullmatch(r"voice note 0:03 \((\d+\.\d) KB\)", line["text"])
    assert m and 3 < float(m.group(1)) < 12  # ~16 kbit/s: ~2 KB per second

    played = medcomm("play", line["note"], "--out", str(tmp_path / "out.wav"), home=doctor)
    assert played.returncode == 0, played.stderr
    rate, got = read_wav(tmp_path / "out.wav")
    assert rate == RATE and len(got) == len(sent)  # exactly the note's duration
    # the same speech: sample-aligned waveform and syllable envelope both correlate
    assert np.corrcoef(sent.astype(float), got.astype(float))[0, 1] > 0.7
    assert np.corrcoef(envelope(sent), envelope(got))[0, 1] > 0.95

    relay.stop()  # played once: the note is on this device now, no link needed
    again = medcomm("play", note_id, "--out", str(tmp_path / "again.wav"), "--timeout", "5", home=doctor)
    assert again.returncode == 0, again.stderr
    assert read_wav(tmp_path / "again.wav")[1].tobytes() == got.tobytes()


def test_a_note_recorded_while_the_relay_is_down_is_delivered_by_sync(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    sent = speechlike(tmp_path / "in.wav", 2.0, rate=16_000)  # resampled to 48 kHz on the way
    relay.stop()
    out = medcomm("note", consult, "--from", str(tmp_path / "in.wav"), "--timeout", "3", home=nurse)
    assert out.returncode == 75, out.stderr
    assert "medcomm sync" in out.stderr
    note_id = out.stdout.strip()  # recorded, with its id, though nothing was sent
    assert re.fullmatch(r"[0-9a-f]{32}", note_id)
    mine = medcomm("play", note_id, "--out", str(tmp_path / "mine.wav"), "--timeout", "2", home=nurse)
    assert mine.returncode == 0, mine.stderr  # nothing lost: it plays from this device

    relay.start()
    synced = medcomm("sync", "--timeout", "20", home=nurse)
    assert synced.returncode == 0, synced.stderr
    assert "0 queued" in synced.stderr

    # the doctor has not synced since: play finds the message by syncing, then fetches it
    played = medcomm("play", note_id, "--out", str(tmp_path / "out.wav"), home=doctor)
    assert played.returncode == 0, played.stderr
    rate, got = read_wav(tmp_path / "out.wav")
    assert rate == RATE and abs(len(got) - len(sent) * 3) <= 3
    assert got.tobytes() == read_wav(tmp_path / "mine.wav")[1].tobytes()
    assert np.corrcoef(envelope(np.repeat(sent, 3)), envelope(got))[0, 1] > 0.9
    # a second sync sends nothing again: one note in the consult
    assert medcomm("sync", "--timeout", "10", home=nurse, check=True).returncode == 0
    (line,) = note_lines(doctor, consult)
    assert line["note"] == note_id and line["text"].startswith("voice note 0:02 ")


def test_voice_devices_and_bad_input_fail_with_their_exit_codes(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """In-process (typer's runner): these fail before any note moves, so a new interpreter
    per case would only cost time."""
    from typer.testing import CliRunner

    from medcomm.adapters.audio import list_devices
    from medcomm.cli import app
    from medcomm.errors import VoiceUnavailable

    nurse, _, consult = pair
    speechlike(tmp_path / "in.wav", 0.5)
    wav = str(tmp_path / "in.wav")
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args), env={"MEDCOMM_HOME": str(nurse)})
        return result.exit_code, result.output

    assert run("note", consult, "--from", wav, "--mic", "x")[0] == 2
    code, said = run("note", consult, "--from", str(tmp_path / "nope.wav"))
    assert code == 2 and "no such file" in said
    assert run("note", "NOT-A-CONSULT", "--from", wav)[0] == 2
    assert run("play", "not-an-id")[0] == 2
    code, said = run("play", "0" * 32, "--out", str(tmp_path / "x.wav"), "--timeout", "3")
    assert code == 4 and not (tmp_path / "x.wav").exists()
    with BlobCache(nurse) as cache:
        assert cache.pending(include_failed=True) == []  # nothing half-recorded was left behind

    try:
        devices = list_devices()
    except VoiceUnavailable:
        devices = []
    if any(d.inputs or d.outputs for d in devices):
        pytest.skip("this machine has sound devices")
    code, said = run("note", consult, "--mic", "default", "--seconds", "1")
    assert code == 69 and "--from FILE.wav" in said
    assert run("note", consult, "--seconds", "1")[0] == 69  # no --from: the default microphone
    code, said = run("play", "1" * 32)  # no speaker: refused before anything is fetched
    assert code == 69 and "--out FILE.wav" in said

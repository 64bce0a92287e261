"""Audio edge: the ring's drop-oldest semantics, WAV files as clocked devices, PortAudio errors."""

from __future__ import annotations

import builtins
import random
import struct
import sys
import threading
import time
import types
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medcomm.adapters import audio
from medcomm.adapters.audio import (
    AudioLimits,
    DeviceSink,
    DeviceSource,
    SampleRing,
    WavSink,
    WavSource,
    list_devices,
    open_sink,
    open_source,
)
from medcomm.errors import UsageError, VoiceUnavailable

RATE = 48_000


def ramp(start: int, n: int) -> np.ndarray:
    """Consecutive sample numbers, wrapping as int16, so order and gaps are visible."""
    return (np.arange(start, start + n) % 65536).astype(np.uint16).view(np.int16)


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def write_wav(path: Path, x: np.ndarray, rate: int, width: int) -> None:
    """``x``: float in [-1, 1), shape (n,) or (n, channels), stored as ``width``-byte PCM."""
    x = x.reshape(len(x), -1)
    ints = np.clip(np.rint(x * 2.0 ** (8 * width - 1)), -(2 ** (8 * width - 1)), 2 ** (8 * width - 1) - 1)
    ints = ints.astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        b = (ints.reshape(-1, 1) & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
        raw = b.tobytes()
    else:
        raw = ints.astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def riff(fmt: bytes, data: bytes) -> bytes:
    """A WAV file built by hand, for the formats the stdlib ``wave`` writer cannot make."""
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def read_all(src: WavSource, n: int = 960) -> np.ndarray:
    out = []
    while (block := src.read(n)) is not None:
        assert len(block) == n
        out.append(block)
    return np.concatenate(out)


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def read_wav(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        return w.getparams(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


# --- ring ------------------------------------------------------------------------------------------


def test_ring_wraps_around_and_keeps_order() -> None:
    ring = SampleRing(10)
    pos = 0
    for size in (7, 3, 9, 1, 10, 4):
        assert ring.write(ramp(pos, size)) == 0
        assert np.array_equal(ring.read(size), ramp(pos, size))
        pos += size
    assert ring.available == 0 and ring.dropped == 0


def test_ring_full_drops_the_oldest_and_counts_them() -> None:
    ring = SampleRing(10)
    ring.write(ramp(0, 8))
    assert ring.write(ramp(8, 5)) == 3
    assert ring.available == 10 and ring.dropped == 3
    assert np.array_equal(ring.read(10), ramp(3, 10))
    # one write larger than the ring keeps only its newest samples
    ring.write(ramp(100, 4))
    assert ring.write(ramp(104, 25)) == 4 + 15
    assert ring.dropped == 3 + 19
    assert np.array_equal(ring.read(99), ramp(119, 10))


def test_ring_short_read_returns_what_is_there() -> None:
    ring = SampleRing(16)
    ring.write(ramp(5, 3))
    out = np.full(8, 7, dtype=np.int16)
    assert ring.read_into(out) == 3
    assert np.array_equal(out[:3], ramp(5, 3)) and np.all(out[3:] == 7)
    assert len(ring.read(4)) == 0
    with pytest.raises(TypeError):
        ring.write(np.zeros(4, dtype=np.float32))


def test_ring_threaded_producer_consumer_never_tears_or_reorders() -> None:
    """Random-size writes and reads from two threads with a tiny switch interval and a ring
    that overflows all the time: every read is a contiguous run, runs only move forward, and
    the gaps add up to the dropped count."""
    ring = SampleRing(128)
    total = 1_000_000
    consumed = [0]  # the consumer's absolute position, so gaps stay below the int16 wrap
    deadline = time.monotonic() + 20
    done = threading.Event()

    def produce() -> None:
        rnd = random.Random(1)
        pos = 0
        while pos < total and time.monotonic() < deadline:
            if pos - consumed[0] > 20_000:
                time.sleep(0)
                continue
            n = min(rnd.randint(1, 100), total - pos)
            ring.write(ramp(pos, n))
            pos += n
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threading.Thread(target=produce, daemon=True).start()
        rnd = random.Random(2)
        expected = gaps = 0
        while not (done.is_set() and ring.available == 0):
            assert time.monotonic() < deadline, "the ring lost track of its positions"
            got = ring.read(rnd.randint(1, 64)).view(np.uint16).astype(np.int64)
            if len(got) == 0:
                continue
            assert np.all(np.diff(got) % 65536 == 1), "a read mixed two writes"
            gap = (int(got[0]) - expected) % 65536
            gaps += gap
            expected += gap + len(got)
            consumed[0] = expected
    finally:
        sys.setswitchinterval(old)
    assert expected == total
    assert gaps == ring.dropped > 0


# --- WAV sources -----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_source_reads_each_integer_width(tmp_path: Path, width: int) -> None:
    x = sine(440, RATE, 0.25)
    write_wav(tmp_path / "a.wav", x, RATE, width)
    src = WavSource(tmp_path / "a.wav", realtime=False)
    got = read_all(src)
    assert src.ended and src.read(960) is None and src.dropped_samples == 0
    assert len(got) == 12_480  # 12,000 samples padded to whole 960-sample blocks
    assert np.all(got[12_000:] == 0)
    tolerance = 2 ** (16 - 8 * width + 1) + 1 if width == 1 else 1
    assert np.max(np.abs(got[:12_000] - np.rint(x * 32768))) <= tolerance


def test_wav_source_mixes_stereo_to_mono(tmp_path: Path) -> None:
    left, right = sine(440, RATE, 0.1), sine(1000, RATE, 0.1, amp=0.25)
    write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), RATE, 2)
    got = read_all(WavSource(tmp_path / "s.wav", realtime=False), 480)
    assert np.max(np.abs(got - np.rint((left + right) / 2 * 32768))) <= 1


def test_wav_source_resamples_16k_to_48k(tmp_path: Path) -> None:
    write_wav(tmp_path / "n.wav", sine(1000, 16_000, 0.5), 16_000, 2)
    src = WavSource(tmp_path / "n.wav", realtime=False)
    got = read_all(src)
    assert src.duration == pytest.approx(0.5)
    assert abs(len(got) - 24_000) < 960  # three times the samples, to the block
    assert dominant_freq(got[2000:22_000].astype(float), RATE) == pytest.approx(1000, rel=0.01)
    assert np.max(np.abs(got[2000:22_000])) == pytest.approx(0.5 * 32768, rel=0.05)


def test_wav_source_reads_extensible_24_bit(tmp_path: Path) -> None:
    """ffmpeg writes 24-bit WAV as WAVE_FORMAT_EXTENSIBLE, which Python 3.11's wave refuses."""
    x = sine(300, RATE, 0.05)
    write_wav(tmp_path / "plain.wav", x, RATE, 3)
    data = (tmp_path / "plain.wav").read_bytes()[44:]
    pcm_guid = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, RATE, RATE * 3, 3, 24, 22, 24, 4) + pcm_guid
    (tmp_path / "ext.wav").write_bytes(riff(fmt, data))
    got = read_all(WavSource(tmp_path / "ext.wav", realtime=False), 240)
    assert np.max(np.abs(got - np.rint(x * 32768))) <= 1


def test_wav_source_refuses_missing_and_non_pcm_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        WavSource(tmp_path / "none.wav")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all, just text" * 4)
    with pytest.raises(UsageError, match="not an integer PCM WAV"):
        WavSource(tmp_path / "junk.wav")
    ieee_float = struct.pack("<HHIIHH", 3, 1, RATE, RATE * 4, 4, 32)
    (tmp_path / "float.wav").write_bytes(riff(ieee_float, bytes(8)))
    with pytest.raises(UsageError, match="ffmpeg"):
        WavSource(tmp_path / "float.wav")
    with pytest.raises(UsageError, match="cannot read"):
        WavSource(tmp_path)


def test_wav_source_realtime_keeps_wall_clock_pace(tmp_path: Path) -> None:
    x = ramp(0, int(0.3 * RATE)).astype(np.float64) / 32768  # 0.3 s, every sample distinct
    write_wav(tmp_path / "r.wav", x, RATE, 2)
    got: list[np.ndarray] = []
    t0 = time.monotonic()
    with WavSource(tmp_path / "r.wav") as src:
        while not src.ended and time.monotonic() - t0 < 2:
            if (block := src.read(960)) is not None:
                got.append(block)
                # never ahead of the clock: a block exists only once its 20 ms have passed
                assert sum(map(len, got)) <= (time.monotonic() - t0) * RATE + 960
            else:
                time.sleep(0.002)
        elapsed = time.monotonic() - t0
    assert np.array_equal(np.concatenate(got), ramp(0, int(0.3 * RATE)))
    assert 0.3 <= elapsed <= 0.6  # the producer's last, empty tick comes at 0.32 s
    assert src.dropped_samples == 0


# --- WAV sinks -------------------------------------------------------------------------------------


def test_wav_sink_not_realtime_writes_exactly_what_it_gets(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "o.wav", realtime=False)
    sink.start()
    for k in range(5):
        sink.write(ramp(k * 777, 777))
    sink.stop()
    sink.write(ramp(0, 10))  # after stop: ignored, not a crash
    params, pcm = read_wav(tmp_path / "o.wav")
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, RATE)
    assert np.array_equal(pcm, ramp(0, 5 * 777))
    assert sink.underruns == 0


def test_wav_sink_realtime_pads_silence_and_follows_the_clock(tmp_path: Path) -> None:
    tone = np.rint(sine(500, RATE, 0.1) * 32768).astype(np.int16)
    sink = WavSink(tmp_path / "o.wav", limits=AudioLimits(header_interval=0.05))
    sink.write(tone)  # queued before the clock starts, so the file must begin with it
    t0 = time.monotonic()
    sink.start()
    # mid-call the header already counts what was written: a killed process leaves a usable file
    while read_wav(tmp_path / "o.wav")[0].nframes < len(tone):
        assert time.monotonic() - t0 < 2, "the header was never brought up to date"
        time.sleep(0.01)
    time.sleep(max(0.0, t0 + 0.3 - time.monotonic()))
    before = time.monotonic() - t0
    sink.stop()
    after = time.monotonic() - t0
    _, pcm = read_wav(tmp_path / "o.wav")
    # whole 20 ms blocks, one per block of wall clock between start() and stop()
    assert before - 0.02 <= len(pcm) / RATE <= after + 1e-3
    assert len(pcm) % 960 == 0
    assert np.array_equal(pcm[: len(tone)], tone)
    assert np.all(pcm[len(tone) :] == 0)
    assert sink.underruns >= 8  # ~0.2 s of 20 ms blocks with nothing to play


def test_wav_sink_refuses_an_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write"):
        WavSink(tmp_path / "no" / "such" / "dir.wav")


# --- sound cards -----------------------------------------------------------------------------------


def test_missing_portaudio_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for attempt in (DeviceSource, DeviceSink, list_devices):
        with pytest.raises(VoiceUnavailable, match="apt-get install libportaudio2") as err:
            attempt()
        assert err.value.exit_code == 69


class FakeStream:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


def fake_sounddevice(devices: list[dict[str, Any]], default: tuple[int, int] = (0, 0)) -> types.ModuleType:
    """Just the part of sounddevice's API the adapter uses, over a made-up device table."""
    sd = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    def query_devices(device: Any = None, kind: str | None = None) -> Any:
        if device is None and kind is None:
            return devices
        if device is None:
            index = default[0 if kind == "input" else 1]
            if index < 0:
                raise PortAudioError(f"Error querying device {index}")
            return {**devices[index], "index": index}
        key = "max_input_channels" if kind == "input" else "max_output_channels"
        hits = [i for i, d in enumerate(devices) if device.lower() in d["name"].lower() and d[key]]
        if len(hits) != 1:
            raise ValueError(f"No {kind} device matching {device!r}")
        return {**devices[hits[0]], "index": hits[0]}

    sd.PortAudioError = PortAudioError  # type: ignore[attr-defined]
    sd.query_devices = query_devices  # type: ignore[attr-defined]

    def check_settings(device: int, **kwargs: Any) -> None:
        if devices[device].get("no_48k"):
            raise PortAudioError("Invalid sample rate")

    sd.check_input_settings = sd.check_output_settings = check_settings  # type: ignore[attr-defined]
    sd.streams = []  # type: ignore[attr-defined]

    def stream(**kwargs: Any) -> FakeStream:
        s = FakeStream(**kwargs)
        sd.streams.append(s)  # type: ignore[attr-defined]
        return s

    sd.InputStream = sd.OutputStream = stream  # type: ignore[attr-defined]
    return sd


def card(name: str, inputs: int, outputs: int) -> dict[str, Any]:
    return {
        "name": name,
        "max_input_channels": inputs,
        "max_output_channels": outputs,
        "default_samplerate": 44100.0,
    }


def test_unknown_or_absent_devices_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    old_card = {**card("Old card", 0, 2), "no_48k": True}
    monkeypatch.setitem(
        sys.modules, "sounddevice", fake_sounddevice([card("HDMI out", 0, 2), old_card], (-1, 0))
    )
    with pytest.raises(VoiceUnavailable, match="no microphone.*--mic FILE.wav"):
        DeviceSource()
    with pytest.raises(VoiceUnavailable, match="'Headset'.*medcomm devices"):
        DeviceSink("Headset")
    with pytest.raises(VoiceUnavailable, match="number 3.*medcomm devices"):
        DeviceSink("3")
    with pytest.raises(VoiceUnavailable, match="'Old card' cannot do 48000 Hz.*--speaker FILE.wav"):
        DeviceSink("1")
    assert DeviceSink("hdmi").name == "HDMI out"
    assert DeviceSink().index == 0  # the default output


def test_device_callbacks_feed_and_drain_the_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = fake_sounddevice([card("USB headset", 1, 2)])
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    ok = types.SimpleNamespace(input_overflow=False, output_underflow=False)

    src = open_source("0")
    assert isinstance(src, DeviceSource)
    src.start()
    stream = sd.streams[-1]
    assert stream.started and stream.kwargs["samplerate"] == RATE and stream.kwargs["blocksize"] == 960
    assert src.read(960) is None
    stream.kwargs["callback"](ramp(0, 960).reshape(-1, 1), 960, None, ok)
    assert np.array_equal(src.read(960), ramp(0, 960))
    stream.kwargs["callback"](ramp(960, 960).reshape(-1, 1), 960, None, ok)
    stream.kwargs["finished_callback"]()  # PortAudio gave up on the device (unplugged)
    assert not src.ended  # what was captured is still delivered first
    assert np.array_equal(src.read(960), ramp(960, 960))
    assert src.ended and src.read(960) is None
    src.stop()
    assert stream.closed

    sink = open_sink("usb")
    assert isinstance(sink, DeviceSink)
    sink.start()
    callback = sd.streams[-1].kwargs["callback"]
    out = np.full((960, 1), 9, dtype=np.int16)
    callback(out, 960, None, ok)
    assert np.all(out == 0) and sink.underruns == 0  # nothing written yet: not an underrun
    sink.write(ramp(0, 500))
    callback(out, 960, None, ok)
    assert np.array_equal(out[:500, 0], ramp(0, 500)) and np.all(out[500:] == 0)
    assert sink.underruns == 1
    sink.stop()


def test_specs_that_name_files_open_wav_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_wav(tmp_path / "mic", sine(440, RATE, 0.05), RATE, 2)  # a WAV without the suffix
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_source("mic"), WavSource)
    sink = open_sink(str(tmp_path / "out.WAV"))
    assert isinstance(sink, WavSink)
    sink.stop()
    with pytest.raises(UsageError, match="no such file"):
        open_source("./missing")


def test_list_devices_on_this_machine_does_not_crash() -> None:
    try:
        devices = list_devices()
    except VoiceUnavailable as e:  # no PortAudio here: the message must say what to install
        assert "libportaudio2" in str(e)
        return
    assert all(isinstance(d, audio.DeviceInfo) and d.inputs >= 0 and d.outputs >= 0 for d in devices)

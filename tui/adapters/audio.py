"""Audio in and out: sound cards and WAV files behind one clocked interface.

A call must run the same on a clinic laptop and on a headless server or CI box, so a WAV file
is a *device*: a ``WavSource`` produces 20 ms blocks at wall-clock pace the way PortAudio's
callback would, and a ``WavSink`` consumes them at that pace, writing silence when nothing
arrived, so the recorded file's timeline is the call's timeline (the voice benchmark aligns it
with the speech that was sent).

Everything inside medcomm is 48 kHz mono int16 (Opus's native rate: no resampling in the
codec path). Between a device (or file clock) and the call session sits a ``SampleRing``: it
never blocks its producer, because a PortAudio callback that waits glitches the sound card, and
it drops the *oldest* samples when full, because stale audio is dropped, never played late.

``sounddevice`` is imported inside the functions that need it: it raises ``OSError`` at import
when PortAudio is missing, and ``medcomm --help`` and text consults must work without it.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Protocol, Self

import numpy as np

from medcomm.errors import UsageError, VoiceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioLimits:
    """Sizes and paces of the audio edge; buffers are short because late audio is useless."""

    sample_rate: int = 48_000  # Hz, everywhere inside medcomm (Opus's native rate)
    block_ms: int = 20  # device callback / file clock tick; the smallest Opus frame we send
    capture_ms: int = 500  # mic audio held for the encoder before the oldest is dropped
    playback_ms: int = 500  # decoded audio queued for the speaker before the oldest is dropped
    header_interval: float = 1.0  # seconds between WavSink header rewrites: a kill loses <= this
    join_timeout: float = 2.0  # seconds stop() waits for a file clock thread

    @property
    def block_samples(self) -> int:
        return self.sample_rate * self.block_ms // 1000

    @property
    def capture_samples(self) -> int:
        return self.sample_rate * self.capture_ms // 1000

    @property
    def playback_samples(self) -> int:
        return self.sample_rate * self.playback_ms // 1000


AUDIO = AudioLimits()


class SampleRing:
    """Bounded single-producer/single-consumer ring of int16 samples that drops the oldest.

    A lock guards the indices *and* the copies in and out: dropping the oldest moves the
    consumer's read index from the producer's side, so a lock-free SPSC scheme would tear. The
    lock is held only for copies of one write or one read (a few KiB, microseconds), never
    across I/O or allocation-heavy work, so a device callback never waits for long. Positions
    are absolute sample counts; the buffer index is the position modulo the capacity.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("ring capacity must be positive")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._lock = threading.Lock()
        self._w = 0  # samples ever stored
        self._r = 0  # position of the oldest buffered sample
        self.dropped = 0  # samples lost to overflow, oldest first

    @property
    def available(self) -> int:
        with self._lock:
            return self._w - self._r

    def write(self, samples: np.ndarray) -> int:
        """Store ``samples``, dropping the oldest buffered ones if full; returns how many were lost."""
        if samples.dtype != np.int16:
            raise TypeError(f"ring holds int16 samples, got {samples.dtype}")
        n = len(samples)
        cap = self.capacity
        with self._lock:
            lost = 0
            if n > cap:  # even the head of this write is older than what fits
                lost = n - cap
                samples = samples[lost:]
                n = cap
            over = self._w - self._r + n - cap
            if over > 0:
                self._r += over
                lost += over
            start = self._w % cap
            first = min(n, cap - start)
            self._buf[start : start + first] = samples[:first]
            self._buf[: n - first] = samples[first:]
            self._w += n
            self.dropped += lost
        return lost

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` from the oldest samples without allocating; returns how many it got."""
        cap = self.capacity
        with self._lock:
            n = min(len(out), self._w - self._r)
            start = self._r % cap
            first = min(n, cap - start)
            out[:first] = self._buf[start : start + first]
            out[first:n] = self._buf[: n - first]
            self._r += n
        return n

    def read(self, n: int) -> np.ndarray:
        """Up to ``n`` of the oldest samples (fewer when fewer are buffered)."""
        out = np.empty(min(n, self.capacity), dtype=np.int16)
        return out[: self.read_into(out)]


class Source(Protocol):
    """Capture: 48 kHz mono int16 samples for the encoder."""

    def start(self) -> None: ...
    def read(self, n_samples: int) -> np.ndarray | None: ...
    def stop(self) -> None: ...
    @property
    def ended(self) -> bool: ...
    @property
    def dropped_samples(self) -> int: ...


class Sink(Protocol):
    """Playback: 48 kHz mono int16 samples from the decoder."""

    def start(self) -> None: ...
    def write(self, pcm: np.ndarray) -> None: ...
    def stop(self) -> None: ...
    @property
    def underruns(self) -> int: ...
    @property
    def buffered(self) -> int: ...


class _Lifecycle:
    """Context-manager sugar so tests and scripts cannot forget ``stop()``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _RingSource(_Lifecycle):
    """A source fed by a producer (file clock or PortAudio callback) through a ring."""

    def __init__(self, limits: AudioLimits) -> None:
        self.limits = limits
        self._ring = SampleRing(limits.capture_samples)
        self._done = False  # the producer will write nothing more (EOF, device gone)

    def read(self, n_samples: int) -> np.ndarray | None:
        """Exactly ``n_samples`` or None; after the producer ended, the tail padded with silence."""
        if not 0 < n_samples <= self._ring.capacity:
            raise ValueError(f"read size must be 1..{self._ring.capacity} samples")
        if self._ring.available >= n_samples:
            return self._ring.read(n_samples)
        if not self._done:
            return None
        out = np.zeros(n_samples, dtype=np.int16)
        return out if self._ring.read_into(out) else None

    @property
    def ended(self) -> bool:
        return self._done and self._ring.available == 0

    @property
    def dropped_samples(self) -> int:
        return self._ring.dropped

    @property
    def buffered(self) -> int:
        return self._ring.available


class _RingSink(_Lifecycle):
    """A sink drained by a consumer (file clock or PortAudio callback) through a ring.

    Underruns are counted only once something was written: the silence before the far end
    first speaks (or before the jitter buffer has filled) is not a fault.
    """

    def __init__(self, limits: AudioLimits) -> None:
        self.limits = limits
        self._ring = SampleRing(limits.playback_samples)
        self._primed = False
        self._underruns = 0

    def write(self, pcm: np.ndarray) -> None:
        pcm = _as_mono16(pcm)
        if len(pcm):
            self._primed = True
            self._ring.write(pcm)

    def _pull(self, out: np.ndarray) -> None:
        """Consumer side: fill one block, padding with silence on underrun."""
        n = self._ring.read_into(out)
        if n < len(out):
            out[n:] = 0
            if self._primed:
                self._underruns += 1

    @property
    def underruns(self) -> int:
        return self._underruns

    @property
    def buffered(self) -> int:
        return self._ring.available

    @property
    def dropped_samples(self) -> int:
        return self._ring.dropped


def _as_mono16(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise TypeError(f"sinks take int16 samples, got {pcm.dtype}")
    return pcm.reshape(-1)


def _clock(t0: float, period: float, stop: threading.Event, tick: Callable[[], bool]) -> None:
    """Call ``tick`` once per ``period`` elapsed since ``t0`` until it returns False or ``stop``
    is set.

    Deadlines are ``t0 + k * period``, never ``sleep(period)`` in a loop, so the pace does not
    drift; after a stall (or a late thread start) every overdue tick runs at once, as a sound
    card's would have, so the file's timeline stays the wall clock's.
    """
    k = 0
    while True:
        due = int((time.monotonic() - t0) / period)
        while k < due:
            k += 1
            if not tick():
                return
        if stop.is_set():
            return
        stop.wait(max(0.0, t0 + (k + 1) * period - time.monotonic()))


# --- WAV files ---------------------------------------------------------------------------------

_CONVERT_HINT = "convert it with: ffmpeg -i IN -ac 1 -ar 48000 -c:a pcm_s16le OUT.wav"


class _ExtensiblePcm:
    """Reader for WAVE_FORMAT_EXTENSIBLE files with a PCM sub-format (what ffmpeg writes for
    24-bit), which Python 3.11's ``wave`` refuses; same methods as ``wave.Wave_read``."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            raise wave.Error("not a RIFF/WAVE file")
        fmt: tuple[int, ...] | None = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise wave.Error("no data chunk")
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = f.read(size + (size & 1))
                if len(body) < 40 or body[24:26] != b"\x01\x00":
                    raise wave.Error("extensible WAV that is not integer PCM")
                fmt = struct.unpack("<HHIIH", body[:14])
            elif cid == b"data" and fmt is not None:
                break
            else:
                f.seek(size + (size & 1), 1)
        _, self._channels, self._rate, _, align = fmt
        self._width = align // max(1, self._channels)
        self._frames = size // max(1, align)

    def getnchannels(self) -> int:
        return self._channels

    def getsampwidth(self) -> int:
        return self._width

    def getframerate(self) -> int:
        return self._rate

    def getnframes(self) -> int:
        return self._frames

    def readframes(self, n: int) -> bytes:
        n = min(n, self._frames)
        self._frames -= n
        return self._f.read(n * self._width * self._channels)

    def close(self) -> None:
        self._f.close()


def _open_wav(path: Path) -> Any:
    try:
        try:
            return wave.open(str(path), "rb")
        except wave.Error as e:
            if "65534" not in str(e):
                raise
            f = open(path, "rb")  # noqa: SIM115 - owned and closed by the reader
            try:
                return _ExtensiblePcm(f)
            except BaseException:
                f.close()
                raise
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", path=str(path)) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}", path=str(path)) from None
    except (wave.Error, EOFError, struct.error) as e:
        raise UsageError(
            f"{path} is not an integer PCM WAV file ({e}); {_CONVERT_HINT}", path=str(path)
        ) from None


def _to_float(raw: bytes, width: int, channels: int) -> np.ndarray:
    """Little-endian integer PCM frames -> mono float32 in [-1, 1)."""
    if width == 1:  # 8-bit WAV is unsigned
        x = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = (((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8) >> 8).astype(np.float32)
    else:
        x = np.frombuffer(raw, dtype="<i2" if width == 2 else "<i4").astype(np.float32)
    x *= np.float32(2.0 ** (1 - 8 * width))
    return x.reshape(-1, channels).mean(axis=1, dtype=np.float32) if channels > 1 else x


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


class _WavDecoder:
    """Streams a PCM WAV as 48 kHz mono int16 in exact-size pieces (soxr when the rate differs),
    so an hour-long recording is never held in memory whole."""

    def __init__(self, path: Path, rate: int) -> None:
        self._w = _open_wav(path)
        self._channels = self._w.getnchannels()
        self._width = self._w.getsampwidth()
        in_rate = self._w.getframerate()
        if self._width not in (1, 2, 3, 4) or self._channels < 1 or in_rate <= 0:
            self._w.close()
            raise UsageError(f"{path}: unsupported WAV layout; {_CONVERT_HINT}", path=str(path))
        self.duration = self._w.getnframes() / in_rate
        self._chunk = max(1, in_rate // 10)  # 100 ms of input per file read
        self._resampler: Any = None
        if in_rate != rate:
            import soxr

            self._resampler = soxr.ResampleStream(in_rate, rate, 1, dtype="float32", quality="HQ")
        self._pending = np.zeros(0, dtype=np.int16)
        self._eof = False

    def _fill(self) -> None:
        raw = self._w.readframes(self._chunk)
        frame = self._width * self._channels
        raw = raw[: len(raw) - len(raw) % frame]
        x = _to_float(raw, self._width, self._channels)
        self._eof = len(x) < self._chunk
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=self._eof)
        self._pending = np.concatenate([self._pending, _to_int16(x)])

    def read(self, n: int) -> np.ndarray:
        """``n`` samples, fewer only at the end of the file (empty once it is exhausted)."""
        while len(self._pending) < n and not self._eof:
            self._fill()
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    @property
    def exhausted(self) -> bool:
        return self._eof and len(self._pending) == 0

    def close(self) -> None:
        self._w.close()


class WavSource(_RingSource):
    """A WAV file played into the call as if it were a microphone.

    ``realtime=True``: a thread pushes one block per 20 ms of wall clock into the ring;
    ``realtime=False`` (tests, offline benchmarks): ``read`` decodes on demand, nothing is
    dropped and there is no thread. The file is opened here, so a bad path fails before a call
    is placed.
    """

    def __init__(self, path: str | Path, realtime: bool = True, limits: AudioLimits = AUDIO) -> None:
        super().__init__(limits)
        self.path = Path(path)
        self.realtime = realtime
        self._decoder = _WavDecoder(self.path, limits.sample_rate)
        self.duration = self._decoder.duration
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None

    def start(self) -> None:
        if not self.realtime or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, args=(time.monotonic(),), name="medcomm-wav-source", daemon=True
        )
        self._thread.start()

    def _run(self, t0: float) -> None:
        block = self.limits.block_samples

        def tick() -> bool:
            pcm = self._decoder.read(block)
            self._ring.write(pcm)
            return len(pcm) == block

        try:
            _clock(t0, block / self.limits.sample_rate, self._stop, tick)
        except Exception as e:  # a file that breaks mid-call ends the source, not the process
            log.warning("mic file %s failed: %s", self.path, e)
            self.error = e
        finally:
            self._done = True
            self._decoder.close()

    def read(self, n_samples: int) -> np.ndarray | None:
        if self.realtime:
            return super().read(n_samples)
        if n_samples <= 0:
            raise ValueError("read size must be positive")
        pcm = self._decoder.read(n_samples)
        if len(pcm) == 0:
            return None
        return (
            pcm if len(pcm) == n_samples else np.concatenate([pcm, np.zeros(n_samples - len(pcm), np.int16)])
        )

    @property
    def ended(self) -> bool:
        return super().ended if self.realtime else self._decoder.exhausted

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.limits.join_timeout)
        else:
            self._decoder.close()
        self._done = True


class WavSink(_RingSink):
    """The call's received audio recorded to a 48 kHz mono 16-bit WAV, clocked like a speaker.

    Kill safety: the header is rewritten with the true sizes every ``header_interval`` seconds
    (and on ``stop``), rather than written once with a huge placeholder size. The file is then
    always a valid WAV that every reader accepts, missing at most the last interval if the
    process dies; a placeholder size is read as garbage or refused by strict readers.
    ``realtime=False`` writes samples straight through with no clock and no padding.
    """

    def __init__(self, path: str | Path, realtime: bool = True, limits: AudioLimits = AUDIO) -> None:
        super().__init__(limits)
        self.path = Path(path)
        self.realtime = realtime
        try:
            self._f: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed by stop()
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror or e}", path=str(path)) from None
        self._bytes = 0
        self._header()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_header = time.monotonic()
        self.error: OSError | None = None

    def _header(self) -> None:
        assert self._f is not None
        rate = self.limits.sample_rate
        size = min(self._bytes, 0xFFFFFFFF - 36)
        self._f.seek(0)
        self._f.write(
            b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", size)
        )  # fmt: skip
        self._f.seek(0, 2)
        self._f.flush()

    def _append(self, pcm: np.ndarray) -> None:
        if self._f is None or self.error is not None:
            return
        try:
            self._f.write(pcm.astype("<i2", copy=False).tobytes())
            self._bytes += 2 * len(pcm)
            now = time.monotonic()
            if now - self._last_header >= self.limits.header_interval:
                self._last_header = now
                self._header()
        except OSError as e:  # disk full: the call goes on, the recording stops
            log.warning("speaker file %s failed: %s", self.path, e)
            self.error = e

    def write(self, pcm: np.ndarray) -> None:
        if self.realtime:
            super().write(pcm)
        else:
            self._append(_as_mono16(pcm))

    def start(self) -> None:
        if not self.realtime or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, args=(time.monotonic(),), name="medcomm-wav-sink", daemon=True
        )
        self._thread.start()

    def _run(self, t0: float) -> None:
        block = np.zeros(self.limits.block_samples, dtype=np.int16)

        def tick() -> bool:
            self._pull(block)
            self._append(block)
            return True

        _clock(t0, len(block) / self.limits.sample_rate, self._stop, tick)

    def stop(self) -> None:
        """Write what is still queued, fix the header and close; later writes are ignored."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.limits.join_timeout)
        if self._f is None:
            return
        self._append(self._ring.read(self._ring.available))
        try:
            self._header()
            self._f.close()
        except OSError as e:
            log.warning("speaker file %s failed: %s", self.path, e)
            self.error = e
        self._f = None


# --- sound cards -------------------------------------------------------------------------------


def _sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio into a message a nurse can act on."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError('PortAudio library not found')
        raise VoiceUnavailable(
            "PortAudio is missing: sudo apt-get install libportaudio2", missing="portaudio"
        ) from e
    except ImportError as e:
        raise VoiceUnavailable(
            "the sounddevice package is missing: pip install sounddevice", missing="sounddevice"
        ) from e
    except Exception as e:  # PortAudioError from Pa_Initialize at import
        raise VoiceUnavailable(f"PortAudio could not start: {e}", missing="portaudio") from e
    return sounddevice


_ROLE = {
    "input": ("max_input_channels", "microphone", "--mic FILE.wav to send a recording instead"),
    "output": ("max_output_channels", "speaker", "--speaker FILE.wav to record the call instead"),
}


def _default_index(sd: ModuleType, kind: str) -> int:
    try:
        return int(sd.query_devices(kind=kind)["index"])
    except (sd.PortAudioError, ValueError, KeyError, TypeError):
        return -1


def _find_device(sd: ModuleType, spec: str | int | None, kind: str, rate: int) -> tuple[int, str]:
    """(index, name) of the device a user named (index, name, name fragment or "" for the
    default), checked for 48 kHz mono int16 so a wrong choice fails before a call is placed."""
    key, role, fallback = _ROLE[kind]
    usable = {i: str(d["name"]) for i, d in enumerate(sd.query_devices()) if d[key] > 0}
    if not usable:
        raise VoiceUnavailable(f"no {role} found on this machine; use {fallback}", device=spec)
    hint = "run `medcomm devices` to list them"
    if spec is None or str(spec).strip().lower() in ("", "default"):
        index = _default_index(sd, kind)
        index = index if index in usable else min(usable)
    elif isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        if index not in usable:
            raise VoiceUnavailable(f"there is no {role} number {index}; {hint}", device=spec)
    else:
        try:
            index = int(sd.query_devices(spec, kind=kind)["index"])
        except (ValueError, sd.PortAudioError) as e:
            raise VoiceUnavailable(f"no {role} matching {spec!r} ({e}); {hint}", device=spec) from None
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=index, channels=1, dtype="int16", samplerate=rate)
    except (ValueError, sd.PortAudioError) as e:
        raise VoiceUnavailable(
            f"{role} {usable[index]!r} cannot do {rate} Hz mono ({e}); {hint} or use {fallback}",
            device=spec,
        ) from None
    return index, usable[index]


class DeviceSource(_RingSource):
    """A microphone through PortAudio; its callback only copies into the ring.

    The stream opens on ``start``. ``xruns`` counts overflows PortAudio itself reported
    (samples the callback never saw); a stream PortAudio ends on its own (device unplugged)
    ends the source, so the call can say so.
    """

    def __init__(self, device: str | int | None = None, limits: AudioLimits = AUDIO) -> None:
        super().__init__(limits)
        self._sd = _sounddevice()
        self.index, self.name = _find_device(self._sd, device, "input", limits.sample_rate)
        self._stream: Any = None
        self._stopping = False
        self.xruns = 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.xruns += 1
        self._ring.write(indata[:, 0])

    def _finished(self) -> None:
        if not self._stopping:
            log.warning("microphone %r stopped", self.name)
        self._done = True

    def start(self) -> None:
        if self._stream is None:
            self._stream = _open_stream(
                self._sd.InputStream, self.index, self.name, self.limits, self._callback, self._finished
            )

    def stop(self) -> None:
        self._stopping = True
        _close_stream(self._stream)
        self._done = True


class DeviceSink(_RingSink):
    """A speaker through PortAudio; its callback copies out of the ring and pads with silence."""

    def __init__(self, device: str | int | None = None, limits: AudioLimits = AUDIO) -> None:
        super().__init__(limits)
        self._sd = _sounddevice()
        self.index, self.name = _find_device(self._sd, device, "output", limits.sample_rate)
        self._stream: Any = None
        self.xruns = 0

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.output_underflow:
            self.xruns += 1
        self._pull(outdata[:, 0])

    def start(self) -> None:
        if self._stream is None:
            self._stream = _open_stream(
                self._sd.OutputStream, self.index, self.name, self.limits, self._callback
            )

    def stop(self) -> None:
        _close_stream(self._stream)


def _open_stream(
    factory: Callable[..., Any],
    index: int,
    name: str,
    limits: AudioLimits,
    callback: Callable[..., None],
    finished: Callable[[], None] | None = None,
) -> Any:
    try:
        stream = factory(
            device=index,
            samplerate=limits.sample_rate,
            channels=1,
            dtype="int16",
            blocksize=limits.block_samples,
            latency="low",
            callback=callback,
            finished_callback=finished,
        )
        stream.start()
    except Exception as e:  # PortAudioError, or the device was taken by another program
        raise VoiceUnavailable(f"cannot open sound device {name!r}: {e}", device=index) from None
    return stream


def _close_stream(stream: Any) -> None:
    if stream is None:
        return
    try:
        stream.stop()
        stream.close()
    except Exception as e:  # a vanished device must not break hanging up
        log.warning("closing sound device failed: %s", e)


# --- choosing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """One row of ``medcomm devices``: what a nurse needs to pick ``--mic``/``--speaker``."""

    index: int
    name: str
    inputs: int
    outputs: int
    default_rate: float
    is_default_in: bool
    is_default_out: bool


def list_devices() -> list[DeviceInfo]:
    """What PortAudio sees (``medcomm devices``); an empty list on a headless box."""
    sd = _sounddevice()
    default_in, default_out = _default_index(sd, "input"), _default_index(sd, "output")
    return [
        DeviceInfo(
            index=i,
            name=str(d["name"]),
            inputs=int(d["max_input_channels"]),
            outputs=int(d["max_output_channels"]),
            default_rate=float(d["default_samplerate"]),
            is_default_in=i == default_in,
            is_default_out=i == default_out,
        )
        for i, d in enumerate(sd.query_devices())
    ]


def _is_file(spec: str) -> bool:
    """``--mic``/``--speaker`` take a path or a device: a ``.wav`` name, a path with a slash or an
    existing file is a file (device names such as ``hw:0,0`` or ``pulse`` never are)."""
    return spec.lower().endswith(".wav") or "/" in spec or Path(spec).is_file()


def open_source(spec: str, *, limits: AudioLimits = AUDIO) -> Source:
    """The microphone a user named: a WAV file (real time) or a device name/index ("" = default)."""
    return WavSource(spec, limits=limits) if _is_file(spec) else DeviceSource(spec, limits)


def open_sink(spec: str, *, limits: AudioLimits = AUDIO) -> Sink:
    """The speaker a user named: a WAV file to record into or a device name/index ("" = default)."""
    return WavSink(spec, limits=limits) if _is_file(spec) else DeviceSink(spec, limits)

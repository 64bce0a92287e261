"""Voice notes at the audio edge: capture a note's samples, play (or save) a received one.

Sending and fetching are in ``session.transfer``; this module only turns a WAV file or a
microphone into 48 kHz mono int16 samples and samples into sound or a WAV file. It is separate
so that ``medcomm sync`` (which finishes pending notes) never imports the audio stack.

A WAV file is read as fast as the disk allows (``WavSource(realtime=False)``): a recording
made earlier is not replayed in real time. A microphone is recorded in real time until
``seconds`` or Ctrl-C. Both are bounded by ``OggLimits.max_seconds``, checked before the
samples are held, so a wrong file cannot fill memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medcomm.errors import UsageError, VoiceUnavailable

RATE = 48_000


def read_wav(path: Path, seconds: float = 0) -> np.ndarray:
    """The samples of a WAV file (any integer PCM layout, resampled to 48 kHz mono), cut
    to ``seconds`` when given; UsageError when it is empty or longer than a note may be
    and no cut was asked for."""
    from medcomm.adapters.audio import WavSource
    from medcomm.adapters.oggopus import OGG

    src = WavSource(path, realtime=False)
    try:
        total = int(round(src.duration * RATE))
        if not seconds and src.duration > OGG.max_seconds:
            raise UsageError(
                f"{path} lasts {src.duration:.0f} s; a note holds at most {OGG.max_seconds:.0f} s "
                "(send a part with --seconds)"
            )
        want = min(total, int(min(seconds or OGG.max_seconds, OGG.max_seconds) * RATE))
        parts, got = [], 0
        while got < want:
            block = src.read(min(RATE, want - got))
            if block is None:
                break
            parts.append(block)
            got += len(block)
    finally:
        src.stop()
    if not got:
        raise UsageError(f"{path} holds no audio")
    return np.concatenate(parts)[:want]


def record(
    mic: str,
    seconds: float,
    on_start: Callable[[], None] | None = None,
    on_tick: Callable[[float], None] | None = None,
    pace: float = 0.02,
) -> np.ndarray:
    """Record from a microphone (name, index, "" or "default") for ``seconds`` (0: until
    Ctrl-C, at most a note's limit); Ctrl-C ends the recording early and keeps what was
    recorded. VoiceUnavailable (exit 69) on a machine without one, naming ``--from``."""
    from medcomm.adapters.audio import AUDIO, open_source
    from medcomm.adapters.oggopus import OGG

    spec = "" if mic.strip().lower() == "default" else mic
    try:
        source = open_source(spec)
    except VoiceUnavailable as exc:  # the audio adapter's hint is the call's flag
        raise VoiceUnavailable(_hint(str(exc), "--mic FILE.wav", "--from FILE.wav"), **exc.data) from None
    if on_start is not None:
        on_start()
    limit = int(min(seconds or OGG.max_seconds, OGG.max_seconds) * RATE)
    parts: list[np.ndarray] = []
    got = 0
    source.start()
    try:
        while got < limit and not source.ended:
            block = source.read(min(AUDIO.block_samples, limit - got))
            if block is None:
                time.sleep(pace)
                continue
            parts.append(block)
            got += len(block)
            if on_tick is not None and got % RATE < len(block):
                on_tick(got / RATE)
    except KeyboardInterrupt:
        pass  # the clinician stopped the recording: send what was said
    finally:
        source.stop()
    if not got:
        raise UsageError("nothing was recorded")
    return np.concatenate(parts)


def play(pcm: np.ndarray, sink: Any, pace: float = 0.01, drain_timeout: float = 2.0) -> float:
    """Feed samples to a sink at its own pace (a speaker's ring drops the oldest when
    overfilled, so never more than half of it ahead), wait for it to drain, stop it;
    returns the seconds played. A WAV sink made with ``realtime=False`` takes it all at once."""
    from medcomm.adapters.audio import AUDIO

    block = AUDIO.block_samples
    ahead = AUDIO.playback_samples // 2
    sink.start()
    try:
        pos = 0
        while pos < len(pcm):
            if sink.buffered > ahead:
                time.sleep(pace)
                continue
            sink.write(pcm[pos : pos + block])
            pos += block
        deadline = time.monotonic() + drain_timeout
        while sink.buffered and time.monotonic() < deadline:
            time.sleep(pace)
    finally:
        sink.stop()
    return len(pcm) / RATE


def open_output(out: Path | None, speaker: str) -> Any:
    """Where a note plays: a WAV file written at once (``--out``) or a speaker (``--speaker``
    device, default the default one). Opened before any download, so a missing speaker
    fails (exit 69) before a slow link is spent."""
    from medcomm.adapters.audio import WavSink, open_sink

    if out is not None:
        return WavSink(out, realtime=False)
    try:
        return open_sink("" if speaker.strip().lower() == "default" else speaker)
    except VoiceUnavailable as exc:
        raise VoiceUnavailable(_hint(str(exc), "--speaker FILE.wav", "--out FILE.wav"), **exc.data) from None


def _hint(message: str, call_flag: str, note_flag: str) -> str:
    """The audio adapter words its fallback for calls; a note's fallback is another flag."""
    if call_flag in message:
        head = message.split(call_flag)[0].rstrip()
        return f"{head} {note_flag} instead"
    return message

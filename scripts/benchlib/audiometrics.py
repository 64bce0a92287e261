"""Signal measures for `scripts/bench voice`: alignment, delay over time, PESQ/STOI, band response.

Pure functions on numpy arrays (48 kHz mono int16 in, numbers out); nothing here runs a call,
prints, or keeps audio beyond the call of a function. Timing conventions (see ``delay_track``):
a microphone sample ``i`` is *spoken* at ``source_started + i / 48000`` (a WAV source hands
over each 20 ms block when it is complete, as a sound card would), and a speaker sample ``j``
is *heard* at ``sink_started + BLOCK_S + j / 48000`` (a WAV sink pulls a block from the call
20 ms after it starts, and that block then plays).
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FS = 48_000
BLOCK_S = 0.020  # the WAV sink's clock period: a block is handed to the "speaker" at its tick
ALIGN_FS = 8_000  # cross-correlation rate for alignment (speech band up to 4 kHz)
QUALITY_FS = 16_000  # PESQ-WB and STOI rate


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono WAV as int16 samples (the corpus files and medcomm's speaker files)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != FS:
            raise ValueError(f"{path}: expected 48 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(FS)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


def to_float(pcm: np.ndarray) -> np.ndarray:
    return np.asarray(pcm, dtype=np.float32) / 32768.0


def resample(pcm: np.ndarray, rate: int) -> np.ndarray:
    """int16 or float at 48 kHz -> float32 at ``rate`` (soxr HQ)."""
    import soxr

    x = to_float(pcm) if np.asarray(pcm).dtype == np.int16 else np.asarray(pcm, dtype=np.float32)
    return soxr.resample(x, FS, rate, quality="HQ").astype(np.float32)


def log_sweep(seconds: float, f0: float, f1: float, level: float = 0.25, fade_s: float = 0.05) -> np.ndarray:
    """An exponential sine sweep f0 -> f1 (equal time per octave), faded in and out, int16."""
    n = int(seconds * FS)
    t = np.arange(n) / FS
    k = math.log(f1 / f0)
    phase = 2 * math.pi * f0 * seconds / k * (np.exp(t / seconds * k) - 1.0)
    x = level * np.sin(phase)
    fade = int(fade_s * FS)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, fade))
    x[:fade] *= ramp
    x[-fade:] *= ramp[::-1]
    return np.round(x * 32767).astype(np.int16)


def ncc_search(win: np.ndarray, ref: np.ndarray, lo: int, hi: int) -> tuple[int, float] | None:
    """Best start ``i`` in ``[lo, hi]`` of ``win`` inside ``ref`` by normalised cross-correlation.

    Returns ``(i, peak)`` with ``peak`` in [-1, 1], or None when the range holds no full window.
    """
    n = len(win)
    lo = max(0, lo)
    hi = min(hi, len(ref) - n)
    if hi < lo or n == 0:
        return None
    seg = ref[lo : hi + n].astype(np.float64)
    w = win.astype(np.float64)
    wn = float(np.sqrt(np.sum(w * w)))
    if wn <= 0:
        return None
    size = 1 << int(math.ceil(math.log2(len(seg) + n)))
    corr = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(w, size)), size)[: len(seg) - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(seg * seg)])
    local = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12))
    r = corr / (local * wn)
    k = int(np.argmax(r))
    return lo + k, float(r[k])


@dataclass(frozen=True)
class DelayPoint:
    heard: float  # wall-clock time (time.time()) at the window's centre, as heard
    delay: float  # s, mouth to ear
    peak: float  # normalised correlation of the match


def delay_track(
    sent: np.ndarray,
    received: np.ndarray,
    source_started: float,
    sink_started: float,
    *,
    window_s: float = 1.0,
    hop_s: float = 0.5,
    max_delay_s: float = 20.0,
    min_level_dbfs: float = -40.0,
    min_peak: float = 0.45,
) -> tuple[list[DelayPoint], int]:
    """Mouth-to-ear delay over time: each ``window_s`` of received audio (every ``hop_s``,
    only windows louder than ``min_level_dbfs``) is matched against the sent signal by
    normalised cross-correlation (at 8 kHz) over delays 0..``max_delay_s``; matches weaker
    than ``min_peak`` are left out (concealment, silence, a splice of two delays).

    Returns the points and the number of loud windows tried (coverage = points / tried).
    """
    s = resample(sent, ALIGN_FS)
    r = resample(received, ALIGN_FS)
    offset = sink_started + BLOCK_S - source_started  # delay = offset + (j - i) / fs
    win, hop = int(window_s * ALIGN_FS), int(hop_s * ALIGN_FS)
    floor = 10 ** (min_level_dbfs / 20)
    points: list[DelayPoint] = []
    tried = 0
    for j in range(0, len(r) - win + 1, hop):
        w = r[j : j + win]
        if float(np.sqrt(np.mean(w * w))) < floor:
            continue
        tried += 1
        lo = j + int(math.floor((offset - max_delay_s) * ALIGN_FS))
        hi = j + int(math.ceil((offset + 0.05) * ALIGN_FS))
        found = ncc_search(w, s, lo, hi)
        if found is None or found[1] < min_peak:
            continue
        i, peak = found
        heard = sink_started + BLOCK_S + (j + win / 2) / ALIGN_FS
        points.append(DelayPoint(heard, offset + (j - i) / ALIGN_FS, peak))
    return drop_outliers(points), tried


def drop_outliers(points: list[DelayPoint], jump_s: float = 0.5, sure: float = 0.8) -> list[DelayPoint]:
    """Leave out isolated matches far from their neighbourhood: a window that straddles a splice
    matches neither side well, and a weak match seconds away is then a chance likeness, not a
    delay. A real change of delay (a queue, a stall played late) lasts for several windows and
    moves the median with it; a strong match (``sure``) is always kept."""
    out = []
    for k, p in enumerate(points):
        near = [q.delay for q in points[max(0, k - 3) : k + 4] if q is not p]
        if p.peak < sure and near and abs(p.delay - float(np.median(near))) > jump_s:
            continue
        out.append(p)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass(frozen=True)
class Overlap:
    """The part of the sent signal that has a counterpart in the received one, at one lag."""

    sent: np.ndarray
    received: np.ndarray
    start: int  # index in the sent signal
    lag: int  # received index = sent index + lag


def overlap(sent: np.ndarray, received: np.ndarray, lag: int, skip_s: float = 0.0) -> Overlap:
    start = max(0, -lag) + int(skip_s * FS)
    end = min(len(sent), len(received) - lag)
    if end <= start:
        return Overlap(sent[:0], received[:0], start, lag)
    return Overlap(sent[start:end], received[start + lag : end + lag], start, lag)


def lag_from_delays(points: list[DelayPoint], source_started: float, sink_started: float) -> int | None:
    """The received-minus-sent sample lag of the median delay (one global alignment)."""
    if not points:
        return None
    delay = float(np.median([p.delay for p in points]))
    return int(round((delay - (sink_started + BLOCK_S - source_started)) * FS))


def locate(segment: np.ndarray, received: np.ndarray) -> tuple[int, float] | None:
    """Where ``segment`` (48 kHz) starts in ``received``, by normalised cross-correlation:
    coarse at 8 kHz over the whole signal, refined to one sample at 48 kHz (+/- 1 ms)."""
    coarse = ncc_search(resample(segment, ALIGN_FS), resample(received, ALIGN_FS), 0, len(received))
    if coarse is None:
        return None
    step = FS // ALIGN_FS
    fine = ncc_search(
        to_float(segment), to_float(received), coarse[0] * step - FS // 1000, coarse[0] * step + FS // 1000
    )
    return fine if fine is not None else (coarse[0] * step, coarse[1])


def _anchors(points: list[DelayPoint], source_started: float, sink_started: float) -> list[tuple[int, int]]:
    """(received index at the window's centre, received-minus-sent lag) per delay point, in order."""
    offset = sink_started + BLOCK_S - source_started
    out = []
    for p in points:
        lag = int(round((p.delay - offset) * FS))
        out.append((int(round((p.heard - sink_started - BLOCK_S) * FS)), lag))
    return sorted(out)


def _switch_point(
    sent: np.ndarray, received: np.ndarray, a: int, b: int, lag_a: int, lag_b: int
) -> tuple[int, float]:
    """Best received index in [a, b) to switch from lag_a to lag_b: each 10 ms block votes for
    the lag that matches it better; the switch maximises the votes on both sides. Also returns
    what the switch gains over none in that span (in blocks' worth of correlation): about 0
    when lag_b matches nothing there, i.e. a window's lag that was a false peak."""
    block = FS // 100
    starts = list(range(a, max(a, b - block) + 1, block))
    if len(starts) < 2:
        return (a + b) // 2, float("inf")

    def score(j: int, lag: int) -> float:
        if j - lag < 0 or j - lag + block > len(sent) or j + block > len(received):
            return 0.0
        u = received[j : j + block].astype(np.float64)
        v = sent[j - lag : j - lag + block].astype(np.float64)
        n = float(np.sqrt(np.dot(u, u) * np.dot(v, v)))
        return float(np.dot(u, v)) / n if n > 0 else 0.0

    sa = np.array([score(j, lag_a) for j in starts])
    sb = np.array([score(j, lag_b) for j in starts])
    totals = [sa[:k].sum() + sb[k:].sum() for k in range(len(starts) + 1)]
    k = int(np.argmax(totals))
    return (starts[k] if k < len(starts) else b), float(totals[k] - totals[-1])


#: Lags this close (samples) are one lag measured twice: the fine search wobbles by a few
#: samples, while every splice a receiver makes is 2.5 ms or more (a pitch period).
WOBBLE = FS // 1000
#: A switch must gain this much (blocks' worth of correlation) over keeping the old lag; a
#: real splice gains about one per 10 ms of sound after it within the span.
FALSE_PEAK = 2.0


def piecewise_align(
    sent: np.ndarray,
    received: np.ndarray,
    points: list[DelayPoint],
    source_started: float,
    sink_started: float,
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Take the delay changes of a call (jitter-buffer growth and shrinking, a stall) out of
    the sound's judgement: the received signal is cut where the measured lag changes (the cut
    placed by 10 ms votes between two windows) and each piece is paired with the sent audio at
    its own lag. Every received sample is judged once, against what was said at that point:
    concealment the receiver inserted counts; sent audio a receiver skipped to shrink its
    delay is not charged twice (its splice is in the received audio anyway).

    Returns the sent index ranges used, and the sent and received samples paired, concatenated.
    """
    anchors = _anchors(points, source_started, sink_started)
    if not anchors:
        return [], sent[:0], received[:0]
    cuts: list[tuple[int, int]] = [(0, anchors[0][1])]  # (received index from which, lag)
    for k in range(1, len(anchors)):
        la, lb = cuts[-1][1], anchors[k][1]
        if abs(lb - la) <= WOBBLE:
            continue  # the same lag, measured a few samples apart: no splice to look for
        # A window reports the lag of most of its sound, so the last window at the old lag
        # can be centred after the splice, and the first at the new lag before it: the
        # switch is looked for from the window before the one to the window after the other,
        # never before the last cut. (Searched only between the two, a splice in a pause
        # after the second was placed on it, and the speech between was judged against sent
        # audio one splice off: 2.3 PESQ-WB for a 1.5 s window, not 3.5.)
        start = anchors[k - 2][0] if k >= 2 else 0
        end = anchors[k + 1][0] if k + 1 < len(anchors) else len(received)
        lo = max(start, cuts[-1][0], 0)
        at, gain = _switch_point(sent, received, lo, max(end, lo), la, lb)
        if gain < FALSE_PEAK:
            continue  # no sound in the span is at the new lag: the window's lag was a false peak
        cuts.append((at, lb))
    ranges: list[tuple[int, int]] = []
    s_parts, r_parts = [], []
    for k, (a, lag) in enumerate(cuts):
        b = cuts[k + 1][0] if k + 1 < len(cuts) else len(received)
        lo, hi = max(a, lag, 0), min(b, len(sent) + lag, len(received))
        if hi - lo <= 0:
            continue
        ranges.append((lo - lag, hi - lag))
        s_parts.append(sent[lo - lag : hi - lag])
        r_parts.append(received[lo:hi])
    if not ranges:
        return [], sent[:0], received[:0]
    return ranges, np.concatenate(s_parts), np.concatenate(r_parts)


def quality(ref: np.ndarray, deg: np.ndarray) -> tuple[float, float]:
    """(PESQ-WB, STOI) of ``deg`` against ``ref`` (48 kHz, same length), both at 16 kHz."""
    from pesq import pesq
    from pystoi import stoi

    if len(ref) < FS:
        return float("nan"), float("nan")
    a, b = resample(ref, QUALITY_FS), resample(deg, QUALITY_FS)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    try:
        p = float(pesq(QUALITY_FS, a, b, "wb"))
    except Exception:  # noqa: BLE001  pesq raises its own errors (no utterances) and ValueError
        p = float("nan")
    return p, float(stoi(a, b, QUALITY_FS, extended=False))


THIRD_OCTAVES = (20, 25, 31.5, 40, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800, 1000)


def band_energies(pcm: np.ndarray, centres: tuple[float, ...] = THIRD_OCTAVES) -> list[float]:
    """Energy per 1/3-octave band (fc * 2^(+/-1/6)), from one FFT of the whole segment."""
    x = to_float(pcm).astype(np.float64)
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / FS)
    out = []
    for fc in centres:
        lo, hi = fc * 2 ** (-1 / 6), fc * 2 ** (1 / 6)
        out.append(float(np.sum(spec[(freqs >= lo) & (freqs < hi)])))
    return out


def band_response(
    sent: np.ndarray, received: np.ndarray, usable_db: float = 30.0
) -> list[tuple[float, float | None]]:
    """(band centre, received/sent energy in dB) per 1/3-octave band; None where the sent band
    is more than ``usable_db`` below the strongest band (too little signal to judge)."""
    a, b = band_energies(sent), band_energies(received)
    top = max(a) if a else 0.0
    out: list[tuple[float, float | None]] = []
    for fc, ea, eb in zip(THIRD_OCTAVES, a, b, strict=True):
        if ea <= 0 or ea < top * 10 ** (-usable_db / 10):
            out.append((fc, None))
        else:
            out.append((fc, 10 * math.log10(max(eb, 1e-30) / ea)))
    return out

"""`scripts/bench voice`: wire cost, quality and delay of real calls over emulated bad links.

Every figure comes from real ``medcomm call`` processes (WAV files as microphone and
speaker, read and written in real time) talking through a real ``medcomm serve`` relay, each
client behind its own ``scripts/badlink``. The clinic is behind the link under test, the
doctors behind a ``clean`` badlink (a byte counter: no shaping, no delay), so the link's own
one-way delay is the profile's. The profiles' scheduled stalls and drops are off in the
speech runs (``--faults`` keeps them), so that the profiles are compared on the same link; the
stall run adds one stall where it can be measured. Calls run one at a time.

What is measured, per voice profile and link:

* wire cost while both talk: bytes and TCP segments of the clinic's socket from the kernel
  (``ss -tin``: ``bytes_sent``/``bytes_received``, ``segs_out``/``segs_in``, pure ACKs
  included), plus 52 bytes per segment (IPv4 20 + TCP with timestamps 32), over the talking
  part of the call; TLS records only with ``--tls`` (a wss:// relay), no link-layer framing;
* quality: PESQ-WB and STOI of the received speech against the sent, at 16 kHz, over the
  overlapping part, time-aligned by cross-correlation piece by piece where the delay track
  shows the delay changed (a jitter buffer growing or shrinking moves the audio; that is
  charged to the delay figures, not twice to the sound; the one-lag figures are in --json);
  next to the same Opus settings encoded and decoded offline
  (``medcomm.adapters.opus.roundtrip``; for a sender that changed rungs, rung by rung from
  the media ms its call report gives for each change);
* delay: mouth-to-ear over time (1 s windows every 0.5 s with speech energy, each matched
  against the sent speech), put on one clock with the calls' ``source_started`` /
  ``sink_started``, minus the link's nominal one-way delay. It includes the two 20 ms device
  blocks a sound card has too (a WAV mic copied straight to a WAV speaker measures 40 ms);
* a 5 s stall mid-call: the delay before it, and how long after it ends the delay is back
  within 100 ms of that (late audio must be dropped, never played);
* a 3-way call: each member's downlink (at most two streams);
* auscultation: 1/3-octave band response 20 Hz-1 kHz of heart sounds and a log sweep;
* the cost of end-to-end encryption, from each sender's call report: per rung, the media
  frames sent per second, the bytes each frame carries beyond its Opus packet (measured from
  the frames as handed to the link: 5 header bytes plus the seal's tag), the tag alone, and
  the kbit/s the tag costs per direction (and its share of the measured wire rate).

badlink shapes TCP payload bytes: headers and pure ACKs cross it free, so a wire rate above
the link's nominal rate (marked ``!``) still fits here where it would queue on a real link.
The benchmark itself stays light while calls run (one ``ss`` a second): heavier sampling was
seen to disturb the calls' timing on a 2-core box.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import audiometrics as am
from benchlib.procs import (
    CORPUS,
    MEDCOMM,
    Badlink,
    Relay,
    free_port,
    link_text,
    load_badlink_profiles,
    medcomm,
)

HEADER_BYTES = 52  # per TCP segment: IPv4 20 + TCP with the timestamp option 32
MEMBERS = [("amina", "clinic"), ("dr.chen", "doctor"), ("dr.osei", "doctor"), ("dr.ali", "doctor")]
PRODUCT_PROFILES = ("auto", "thin", "standard")

# Targets (from the issue).
WIRE_TARGET = {"thin": 16.0, "standard": 28.0}  # kbit/s per direction with IP/TCP headers
SEAL_TARGET = 24  # bytes per media frame the end-to-end seal may add
MEDIA_HEADER = 5  # the voice frame's header (medcomm.core.voiceframe.MEDIA_HEADER)
OFFLINE_PESQ_GAP = 0.15  # clean link vs offline encode/decode
PESQ_TARGET = {("3g-weak", "thin"): 2.8, ("3g-weak", "standard"): 3.1}
STOI_TARGET = {"edge": 0.9}
DELAY_P95_TARGET = {"3g-weak": 0.250}  # s, added mouth-to-ear delay
STALL_S = 5.0
STALL_PERIOD_S = 18.0  # badlink's first stall comes one period after its start: ~9-12 s into the call
# the second stall (two periods in) falls near the end of the call; the analysis stops there
STALL_CALL_S = 30.0
STALL_RECOVERY_TARGET = 2.0  # s after the stall ends, delay within 100 ms of before
STALL_BAND = 0.100
AUSC_DEV_TARGET = 1.0  # dB, every 1/3-octave band 20 Hz-1 kHz
MAX_STREAMS = 2
STREAMS_SLACK = 0.3  # stream equivalents of noise (rates of peers differ, feedback, rung changes)


LINKS = load_badlink_profiles()


# --- kernel socket counters ---------------------------------------------------------------------

_SS_LINE = re.compile(r"^\S+\s+\S+\s+(\S+):(\d+)\s+(\S+):(\d+)")
_COUNTERS = ("bytes_sent", "bytes_acked", "bytes_received", "segs_out", "segs_in")


def ss_sockets() -> list[tuple[int, int, dict[str, int]]]:
    """(local port, peer port, counters) of every established TCP socket (``ss -tin``)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established"], capture_output=True, text=True, timeout=5
    ).stdout
    socks: list[tuple[int, int, dict[str, int]]] = []
    current: tuple[int, int] | None = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            m = _SS_LINE.match(line)
            current = (int(m.group(2)), int(m.group(4))) if m else None
        elif current is not None:
            counters = {k: int(v) for k, v in re.findall(r"\b(" + "|".join(_COUNTERS) + r"):(\d+)", line)}
            socks.append((*current, counters))
            current = None
    return socks


class SocketWatch(threading.Thread):
    """Samples each member's socket counters (its own socket to its badlink's port) once a
    second during a call: light on purpose, the calls share the CPU with it. A socket that
    closes (a reconnect) keeps its last counters, so totals never go backwards."""

    def __init__(self, ports: dict[str, int], every: float = 1.0) -> None:
        super().__init__(name="voice-bench-ss", daemon=True)
        self.ports, self.every = ports, every
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, dict[str, dict[str, int]]]] = []
        self._last: dict[str, dict[tuple[int, int], dict[str, int]]] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.sample()
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
            self.stop_event.wait(self.every)

    def sample(self) -> None:
        t = time.time()
        by_port = {port: name for name, port in self.ports.items()}
        for local, peer, counters in ss_sockets():
            if peer in by_port:
                self._last.setdefault(by_port[peer], {})[(local, peer)] = counters
        totals: dict[str, dict[str, int]] = {}
        for name in self.ports:
            tot = Counter[str]()
            for c in self._last.get(name, {}).values():
                tot["up_bytes"] += c.get("bytes_sent", c.get("bytes_acked", 0))
                tot["down_bytes"] += c.get("bytes_received", 0)
                tot["up_segs"] += c.get("segs_out", 0)
                tot["down_segs"] += c.get("segs_in", 0)
            totals[name] = dict(tot)
        self.samples.append((t, totals))

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)

    def rates(self, name: str, start: float, end: float) -> dict[str, float] | None:
        """Per-direction kbit/s (payload + 52 B/segment) and segments/s over [start, end]."""
        inside = [(t, s[name]) for t, s in self.samples if start <= t <= end and name in s]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1.0:
            return None
        (t0, a), (t1, b) = inside[0], inside[-1]
        dt = t1 - t0

        def d(key: str) -> float:
            return float(b.get(key, 0) - a.get(key, 0))

        return {
            "up_kbps": (d("up_bytes") + HEADER_BYTES * d("up_segs")) * 8 / dt / 1000,
            "down_kbps": (d("down_bytes") + HEADER_BYTES * d("down_segs")) * 8 / dt / 1000,
            "up_payload_kbps": d("up_bytes") * 8 / dt / 1000,
            "down_payload_kbps": d("down_bytes") * 8 / dt / 1000,
            "up_segs_s": d("up_segs") / dt,
            "down_segs_s": d("down_segs") / dt,
            "window_s": dt,
        }


# --- the rig: one relay, members with fixed badlink ports ---------------------------------------


@dataclass
class Member:
    name: str
    role: str
    home: Path
    port: int  # the badlink port its profile (relay URL) points at


@dataclass
class Leg:
    """One member's part in a call."""

    member: Member
    mic: Path
    profile: str
    answer: bool
    speaker: Path = Path()
    report: Path = Path()
    log: Path = Path()
    proc: subprocess.Popen[str] | None = None


@dataclass
class CallRun:
    """What one call left behind: reports, files, socket samples and link timing."""

    legs: list[Leg]
    reports: dict[str, dict[str, Any]]
    watch: SocketWatch
    link_started: dict[str, float]
    links: dict[str, str]
    exits: dict[str, int | None]
    badlink_counters: dict[str, dict[str, int]] = field(default_factory=dict)
    load1: float = 0.0  # 1-minute load average when the call ended (other work on the box shows here)


class Rig:
    """A relay and the members, each logged in through a badlink on a port of its own that is
    restarted with another profile for every call (the members' relay URL stays valid)."""

    def __init__(self, root: Path, members: int, tls: bool = False) -> None:
        self.root = root
        self.relay = Relay(root / "relay", extra=["--tls", "self-signed"] if tls else [])
        self.members: list[Member] = []
        self.count = members
        self.consults = 0
        self.link_started: dict[str, float] = {}  # wall clock of each badlink's start (its stall clock)

    def start(self) -> Rig:
        self.relay.start()
        for name, role in MEMBERS[: self.count]:
            self.members.append(Member(name, role, self.root / "homes" / name, free_port()))
        with self.links({m.name: ("clean", []) for m in self.members}):
            for m in self.members:
                code = self.relay.enroll(m.name, m.role)
                pin = self.relay.fingerprint()
                url = f"{self.relay.scheme}://127.0.0.1:{m.port}"
                login = ["login", url, m.name, code, *(["--fingerprint", pin] if pin else [])]
                out = medcomm(*login, home=m.home, timeout=60)
                if out.returncode:
                    raise RuntimeError(f"login of {m.name} failed: {out.stderr.strip()[:200]}")
        return self

    def close(self) -> None:
        self.relay.stop()

    @contextmanager
    def links(self, spec: dict[str, tuple[str, list[str]]]) -> Iterator[dict[str, Badlink]]:
        """Badlinks on the members' ports with (profile, extra args); stopped on exit."""
        started: dict[str, Badlink] = {}
        try:
            for m in self.members:
                if m.name not in spec:
                    continue
                profile, extra = spec[m.name]
                link = Badlink(
                    self.relay.port,
                    profile,
                    self.root / f"badlink-{m.name}.json",
                    seed=7 + len(started),
                    extra=["--listen", f"127.0.0.1:{m.port}", *extra],
                )
                for attempt in range(20):  # the port was free a moment ago; TIME_WAIT is fine
                    try:
                        link.start()
                        self.link_started[m.name] = time.time()
                        break
                    except RuntimeError:
                        if attempt == 19:
                            raise
                        time.sleep(0.25)
                started[m.name] = link
            yield started
        finally:
            for link in started.values():
                link.stop()

    def open_consult(self, members: list[Member]) -> str:
        self.consults += 1
        others = ",".join(m.name for m in members[1:])
        last = ""
        for _ in range(3):
            out = medcomm(
                "consult",
                "open",
                f"voice bench {self.consults}",
                "--with",
                others,
                home=members[0].home,
                timeout=60,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[-1]
            last = out.stderr.strip()[:200]
        raise RuntimeError(f"consult open failed: {last}")

    def call(
        self,
        run_dir: Path,
        legs: list[Leg],
        seconds: float,
        link_spec: dict[str, tuple[str, list[str]]],
    ) -> CallRun:
        """Place one call: legs[0] rings, the others answer. Everything it starts is stopped."""
        run_dir.mkdir(parents=True, exist_ok=True)
        members = [leg.member for leg in legs]
        for leg in legs:
            leg.speaker = run_dir / f"speaker-{leg.member.name}.wav"
            leg.report = run_dir / f"report-{leg.member.name}.json"
            leg.log = run_dir / f"status-{leg.member.name}.log"
        watch: SocketWatch | None = None
        exits: dict[str, int | None] = {}
        with self.links(link_spec) as links:
            started = {name: self.link_started[name] for name in links}
            try:
                consult = self.open_consult(members)
                watch = SocketWatch({m.name: m.port for m in members})
                watch.start()
                for leg in legs[1:]:
                    self._start_leg(leg, consult, seconds + 15)
                for leg in legs[1:]:
                    wait_for_text(leg, "waiting for a call", 40)
                self._start_leg(legs[0], consult, seconds)
                deadline = time.monotonic() + seconds + 60
                for leg in legs:
                    assert leg.proc is not None
                    try:
                        leg.proc.wait(max(1.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
            finally:
                if watch is not None:
                    watch.finish()
                for leg in legs:
                    if leg.proc is not None and leg.proc.poll() is None:
                        leg.proc.send_signal(signal.SIGINT)
                for leg in legs:
                    if leg.proc is not None:
                        try:
                            leg.proc.wait(5)
                        except subprocess.TimeoutExpired:
                            leg.proc.kill()
                            leg.proc.wait(5)
                        exits[leg.member.name] = leg.proc.returncode
            counters = {name: link.counters() for name, link in links.items()}
        reports: dict[str, dict[str, Any]] = {}
        for leg in legs:
            try:
                reports[leg.member.name] = json.loads(leg.report.read_text())
            except (OSError, ValueError):
                reports[leg.member.name] = {}
        assert watch is not None
        links_used = {n: s[0] for n, s in link_spec.items()}
        return CallRun(legs, reports, watch, started, links_used, exits, counters, os.getloadavg()[0])

    def _start_leg(self, leg: Leg, consult: str, seconds: float) -> None:
        cmd = [
            *MEDCOMM,
            "call",
            consult,
            "--mic",
            str(leg.mic),
            "--speaker",
            str(leg.speaker),
            "--profile",
            leg.profile,
            "--seconds",
            f"{seconds:g}",
            "--report",
            str(leg.report),
        ]
        if leg.answer:
            cmd.append("--answer")
        env = dict(os.environ, MEDCOMM_HOME=str(leg.member.home))
        with leg.log.open("w") as err:
            leg.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)


def wait_for_text(leg: Leg, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in leg.log.read_text(errors="replace"):
                return
        except OSError:
            pass
        if leg.proc is not None and leg.proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = leg.log.read_text(errors="replace").strip().splitlines()[-1:] if leg.log.exists() else []
    raise RuntimeError(f"{leg.member.name} did not get to {text!r} within {timeout:.0f} s: {tail}")


# --- analysis -----------------------------------------------------------------------------------


class Offline:
    """Offline encode/decode of each microphone file at each rung, computed once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def get(self, path: Path, pcm: np.ndarray, rung_name: str) -> np.ndarray:
        from medcomm.adapters.opus import roundtrip

        key = (str(path), rung_name)
        if key not in self._cache:
            rung = rung_by_name(rung_name)
            self._cache[key] = roundtrip(
                pcm,
                rung.application,
                rung.bitrate_bps,
                rung.frame_ms,
                rung.bandwidth,
                dtx=rung.application == "voip",
            )
        return self._cache[key]


    def scheduled(self, path: Path, pcm: np.ndarray, schedule: list[tuple[int, str]]) -> np.ndarray:
        """The sender's stream as it was coded, rung by rung (``schedule``: media ms from which
        each rung coded it, from its call report), encoded and decoded offline: the same
        settings for a call that changed rungs, where one rung's reference would charge the
        change to the link."""
        if len({r for _, r in schedule}) == 1:
            return self.get(path, pcm, schedule[0][1])
        key = (str(path), repr(schedule))
        if key not in self._cache:
            self._cache[key] = roundtrip_schedule(pcm, schedule)
        return self._cache[key]


def roundtrip_schedule(pcm: np.ndarray, schedule: list[tuple[int, str]]) -> np.ndarray:
    """``opus.roundtrip`` with the rung changed where ``schedule`` says: (media ms, rung name)."""
    from medcomm.adapters.opus import roundtrip

    rungs = [(ms, rung_by_name(name)) for ms, name in schedule]
    first = rungs[0][1]
    changes = [(ms, r.bitrate_bps, r.frame_ms, r.bandwidth) for ms, r in rungs[1:]]
    return roundtrip(pcm, first.application, first.bitrate_bps, first.frame_ms, first.bandwidth,
                     dtx=first.application == "voip", changes=changes)  # fmt: skip


def rung_by_name(name: str) -> Any:
    from medcomm.core.ratecontrol import PROFILES

    for ladder, _ in PROFILES.values():
        for rung in ladder:
            if rung.name == name:
                return rung
    raise KeyError(name)


def spoken_seconds(run: CallRun, leg: Leg) -> float:
    """How long a leg's engine ran: its own speaker file started and stopped with its mic."""
    try:
        return len(am.read_wav(leg.speaker)) / am.FS
    except (OSError, ValueError, EOFError):
        return 0.0


def rung_shares(report: dict[str, Any]) -> dict[str, float]:
    rungs = [s.get("rung", "") for s in report.get("seconds", [])]
    if not rungs:
        return {}
    counts = Counter(rungs)
    return {r: n / len(rungs) for r, n in counts.most_common()}


def direction(
    run: CallRun,
    sender: Leg,
    receiver: Leg,
    nominal_s: float,
    offline: Offline,
    *,
    hop_s: float = 0.5,
    with_quality: bool = True,
) -> dict[str, Any]:
    """Quality and delay of what ``sender`` said as heard by ``receiver``."""
    rs, rr = run.reports.get(sender.member.name, {}), run.reports.get(receiver.member.name, {})
    out: dict[str, Any] = {"from": sender.member.name, "to": receiver.member.name}
    if not rs.get("source_started") or not rr.get("sink_started") or not receiver.speaker.exists():
        out["error"] = "no report or speaker file"
        return out
    mic = am.read_wav(sender.mic)
    spoken = spoken_seconds(run, sender)
    sent = mic[: int(spoken * am.FS)]
    received = am.read_wav(receiver.speaker)
    points, tried = am.delay_track(sent, received, rs["source_started"], rr["sink_started"], hop_s=hop_s)
    added = [p.delay - nominal_s for p in points]
    out.update(
        delay_points=[(round(p.heard, 3), round(p.delay, 4), round(p.peak, 3)) for p in points],
        windows=tried,
        aligned=len(points),
        added_p50_ms=am.percentile(added, 50) * 1000,
        added_p95_ms=am.percentile(added, 95) * 1000,
        added_max_ms=max(added) * 1000 if added else float("nan"),
        # after the first 5 s heard: the jitter buffer has left its start-up prior (initial_ms)
        added_p95_steady_ms=am.percentile(
            [p.delay - nominal_s for p in points if points and p.heard >= points[0].heard + 5.0], 95
        )
        * 1000,
        spoken_s=spoken,
    )
    shares = rung_shares(rs)
    out["rungs"] = shares
    out["rate_changes"] = len(rs.get("rate_changes", []))
    out["sender_dropped"] = rs.get("final", {}).get("dropped", 0)
    secs = rr.get("seconds", [])
    out["jb_ms_median"] = statistics.median([s.get("jb_ms", 0) for s in secs]) if secs else float("nan")
    final = rr.get("final", {})
    out["concealed_pct"] = final.get("concealed_pct", float("nan"))
    streams = final.get("streams", {})
    out["stale_dropped"] = sum(s.get("stale", 0) for s in streams.values())
    out["shrink_dropped"] = sum(s.get("shrunk", 0) for s in streams.values())
    out["trimmed_ms"] = sum(s.get("trimmed_ms", 0) for s in streams.values())
    # the receiver's speaker ran dry (a held-up engine) and its queue grew: +20 ms of delay each
    out["speaker_underruns"], out["speaker_grown"] = rr.get("underruns", 0), rr.get("speaker_grown", 0)
    out["target_ms_track"] = [max((st.get("target_ms", 0) for st in s.get("streams", {}).values()), default=0)
                              for s in secs]
    out["sender_qdelay_ms_median"] = statistics.median(
        [s["qdelay_ms"] for s in rs.get("seconds", []) if s.get("qdelay_ms") is not None] or [0]
    )
    if not with_quality:
        return out
    lag = am.lag_from_delays(points, rs["source_started"], rr["sink_started"])
    if lag is None:
        out["error"] = "received speech not found in the sent speech"
        return out
    # one global alignment (kept for reference: it also charges delay changes to the sound)
    ov = am.overlap(sent, received, lag)
    out["pesq_one_lag"], out["stoi_one_lag"] = am.quality(ov.sent, ov.received)
    ranges, s_part, r_part = am.piecewise_align(
        sent, received, points, rs["source_started"], rr["sink_started"]
    )
    out["overlap_s"] = len(s_part) / am.FS
    out["pieces"] = len(ranges)
    out["pesq"], out["stoi"] = am.quality(s_part, r_part)
    if shares:
        rung = next(iter(shares))
        schedule = [(int(ms), str(name)) for ms, name in rs.get("rung_schedule") or [(0, rung)]]
        full = offline.scheduled(sender.mic, sent, schedule)
        ref = np.concatenate([full[a:b] for a, b in ranges])
        out["offline_rung"] = rung if len({r for _, r in schedule}) == 1 else "as sent"
        out["offline_pesq"], out["offline_stoi"] = am.quality(s_part, ref)
    return out


def seal_cost(report: dict[str, Any]) -> dict[str, Any]:
    """What end-to-end encryption cost one sender's stream, per rung, from its call report.

    ``frame_bytes`` are the voice frames as the engine handed them to the link; minus the
    Opus packets and the 5-byte header, what is left is the seal, measured, not assumed."""
    crypto = report.get("crypto") or {}
    rungs: dict[str, dict[str, float]] = {}
    frames_all = seal_all = secs_all = 0.0
    for name, r in (crypto.get("rungs") or {}).items():
        frames, secs = r.get("frames", 0), r.get("seconds", 0.0)
        if not frames:
            continue
        beyond = (r["frame_bytes"] - r["opus_bytes"]) / frames
        seal = beyond - MEDIA_HEADER
        fps = frames / secs if secs > 0 else float("nan")
        rungs[name] = {
            "frames": frames,
            "seconds": secs,
            "frames_s": fps,
            "opus_b": r["opus_bytes"] / frames,
            "beyond_opus_b": beyond,
            "seal_b": seal,
            "seal_kbps": seal * 8 * fps / 1000,
        }
        frames_all += frames
        seal_all += seal * frames
        secs_all += secs
    return {
        "overhead": crypto.get("overhead"),
        "rungs": rungs,
        "seal_b": seal_all / frames_all if frames_all else float("nan"),
        "seal_kbps": seal_all * 8 / secs_all / 1000 if secs_all else float("nan"),
        "no_key": crypto.get("no_key"),
        "failed_auth": sum(crypto.get(k, 0) for k in ("tampered", "truncated", "replayed")),
    }


def wire_window(run: CallRun, leg: Leg, others: list[Leg]) -> tuple[float, float]:
    """The talking part of a call on one clock: all engines running, first and last second cut."""
    starts = [run.reports.get(x.member.name, {}).get("source_started", 0.0) for x in [leg, *others]]
    ends = [
        r["seconds"][-1]["t"]
        for x in [leg, *others]
        if (r := run.reports.get(x.member.name, {})).get("seconds")
    ]
    if not ends or not all(starts):
        return (0.0, 0.0)
    return max(starts) + 1.0, min(ends) - 0.25


def guarded(base: dict[str, Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One run; a run that fails (a process that does not start or answer) is reported as a
    failed run and the benchmark goes on with the next."""
    try:
        return run()
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        print(f"  run {base} failed: {exc}", flush=True)
        return {**base, "ok": False, "error": str(exc)[:300], "up": {}, "down": {}, "members": []}


def call_ok(run: CallRun) -> bool:
    return all(code == 0 for code in run.exits.values()) and all(run.reports.values())


# --- the runs -----------------------------------------------------------------------------------


@dataclass
class Files:
    speech: list[Path]  # one microphone per member
    silence: Path
    auscultation: Path
    segments: dict[str, tuple[float, float]]  # auscultation file: name -> (start s, end s)
    described: list[str]


def prepare_files(work: Path) -> Files:
    en, zh = am.read_wav(CORPUS / "speech_en_48k.wav"), am.read_wav(CORPUS / "speech_zh_48k.wav")
    heart = am.read_wav(CORPUS / "heart_48k.wav")
    work.mkdir(parents=True, exist_ok=True)
    a, b = np.concatenate([en, zh]), np.concatenate([zh, en])
    mics = [a, b, np.roll(a, -11 * am.FS), np.roll(b, -9 * am.FS)]
    paths = []
    for i, pcm in enumerate(mics):
        paths.append(work / f"mic-{i}.wav")
        am.write_wav(paths[-1], pcm)
    silence = work / "silence.wav"
    am.write_wav(silence, np.zeros(60 * am.FS, np.int16))
    sweep = am.log_sweep(10.0, 20.0, 1000.0)
    gap = np.zeros(am.FS // 2, np.int16)
    pieces = [gap, heart, gap, gap, sweep, gap, gap, gap]
    ausc = work / "auscultation.wav"
    am.write_wav(ausc, np.concatenate(pieces))
    h0 = len(gap) / am.FS
    s0 = h0 + len(heart) / am.FS + 2 * len(gap) / am.FS
    segments = {"heart": (h0, h0 + len(heart) / am.FS), "sweep": (s0, s0 + len(sweep) / am.FS)}
    described = [
        f"speech: {CORPUS / 'speech_en_48k.wav'} ({len(en) / am.FS:.1f} s) and "
        f"{CORPUS / 'speech_zh_48k.wav'} ({len(zh) / am.FS:.1f} s); clinic mic = en+zh, doctor mic = zh+en "
        "(3rd/4th member: the same, rotated by 11/9 s)",
        f"auscultation mic: {CORPUS / 'heart_48k.wav'} ({len(heart) / am.FS:.1f} s), then a log sine sweep "
        "20 Hz-1 kHz, 10 s, -12 dBFS (generated), with silences around; the doctor's mic is silence",
    ]
    return Files(paths, silence, ausc, segments, described)


def nominal_delay(profile: str) -> float:
    return LINKS[profile].delay_ms / 1000.0


def link_args(profile: str, keep_faults: bool) -> list[str]:
    return [] if keep_faults or profile == "clean" else ["--no-faults"]


def speech_run(
    rig: Rig,
    files: Files,
    work: Path,
    link: str,
    profile: str,
    seconds: float,
    args: argparse.Namespace,
    offline: Offline,
) -> dict[str, Any]:
    clinic, doctor = rig.members[0], rig.members[1]
    legs = [Leg(clinic, files.speech[0], profile, False), Leg(doctor, files.speech[1], profile, True)]
    spec = {clinic.name: (link, link_args(link, args.faults)), doctor.name: (args.doctor_link, [])}
    run = rig.call(work / f"speech-{link}-{profile}", legs, seconds, spec)
    nominal = nominal_delay(link) + nominal_delay(args.doctor_link)
    result: dict[str, Any] = {
        "link": link,
        "profile": profile,
        "seconds": seconds,
        "ok": call_ok(run),
        "load1": run.load1,
    }
    result["exits"] = run.exits
    start, end = wire_window(run, legs[0], legs[1:])
    result["wire"] = run.watch.rates(clinic.name, start, end)
    result["wire_doctor"] = run.watch.rates(doctor.name, start, end)
    result["up"] = direction(run, legs[0], legs[1], nominal, offline)
    result["down"] = direction(run, legs[1], legs[0], nominal, offline)
    result["seal"] = {
        "up": seal_cost(run.reports.get(clinic.name, {})),
        "down": seal_cost(run.reports.get(doctor.name, {})),
    }
    return result


def stall_run(
    rig: Rig, files: Files, work: Path, link: str, profile: str, args: argparse.Namespace, offline: Offline
) -> dict[str, Any]:
    """A 5 s stall of the clinic's link (both directions, nothing lost) in the middle of a call.

    badlink's stalls run on a schedule from its own start (the first after one period), so the
    period is chosen to land the first stall ~9-12 s into the call (after the set-up) and the
    second near its end; the analysis stops where the second begins.
    """
    seconds, period = STALL_CALL_S, STALL_PERIOD_S
    clinic, doctor = rig.members[0], rig.members[1]
    legs = [Leg(clinic, files.speech[0], profile, False), Leg(doctor, files.speech[1], profile, True)]
    extra = ["--no-faults", "--stall", f"{STALL_S:g}/{period:g}"]
    spec = {clinic.name: (link, extra), doctor.name: (args.doctor_link, [])}
    run = rig.call(work / f"stall-{link}-{profile}", legs, seconds, spec)
    nominal = nominal_delay(link) + nominal_delay(args.doctor_link)
    stall_start = run.link_started[clinic.name] + period
    stall_end = stall_start + STALL_S
    call_start = run.reports.get(clinic.name, {}).get("source_started", float("nan"))
    result: dict[str, Any] = {
        "link": link,
        "profile": profile,
        "ok": call_ok(run),
        "load1": run.load1,
        "exits": run.exits,
        "stall_at_call_s": stall_start - call_start,
        "stalls_seen": run.badlink_counters.get(clinic.name, {}).get("stalls"),
    }
    for name, (snd, rcv) in {"up": (legs[0], legs[1]), "down": (legs[1], legs[0])}.items():
        d = direction(run, snd, rcv, nominal, offline, hop_s=0.25, with_quality=False)
        pts = [am.DelayPoint(*p) for p in d.get("delay_points", [])]
        result[name] = {**recovery(pts, stall_start, stall_end, stall_start + period), **pick(d)}
    return result


def pick(d: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "windows",
        "aligned",
        "concealed_pct",
        "stale_dropped",
        "shrink_dropped",
        "rungs",
        "rate_changes",
        "sender_dropped",
        "jb_ms_median",
        "error",
    )
    return {k: d[k] for k in keys if k in d}


def recovery(
    points: list[am.DelayPoint], stall_start: float, stall_end: float, until: float
) -> dict[str, Any]:
    """Delay before a stall, and how long after its end the delay is back (and stays) within
    100 ms of it. Late audio shows as windows far above the pre-stall delay."""
    before = [p.delay for p in points if stall_start - 6.0 <= p.heard < stall_start]
    after = [p for p in points if stall_end <= p.heard < until]
    out: dict[str, Any] = {
        "pre_ms": float("nan"),
        "recovery_s": None,
        "late_windows": 0,
        "after_max_ms": None,
    }
    if not before:
        return out
    pre = statistics.median(before)
    out["pre_ms"] = pre * 1000
    out["after_windows"] = len(after)
    if not after:
        return out
    out["after_max_ms"] = max(p.delay for p in after) * 1000
    out["late_windows"] = sum(p.delay > pre + STALL_BAND for p in after)
    ok_from = None
    for p in reversed(after):
        if abs(p.delay - pre) <= STALL_BAND:
            ok_from = p
        else:
            break
    if ok_from is not None:
        # the window is 1 s long: its centre is within 0.5 s of the first good audio
        out["recovery_s"] = max(0.0, ok_from.heard - stall_end)
        out["first_heard_after_s"] = after[0].heard - stall_end
    return out


def threeway_run(
    rig: Rig, files: Files, work: Path, link: str, profile: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    legs = [Leg(rig.members[0], files.speech[0], profile, False)]
    legs += [Leg(m, files.speech[i + 1], profile, True) for i, m in enumerate(rig.members[1:])]
    spec = {rig.members[0].name: (link, link_args(link, args.faults))}
    spec.update({m.name: (args.doctor_link, []) for m in rig.members[1:]})
    run = rig.call(work / f"party{len(legs)}-{link}-{profile}", legs, seconds, spec)
    members = []
    for leg in legs:
        others = [x for x in legs if x is not leg]
        start, end = wire_window(run, leg, others)
        rep = run.reports.get(leg.member.name, {})
        secs = rep.get("seconds", [])
        members.append(
            {
                "member": leg.member.name,
                "link": spec[leg.member.name][0],
                "wire": run.watch.rates(leg.member.name, start, end),
                "down_kbps_ws_median": statistics.median([s["down_kbps"] for s in secs]) if secs else None,
                "up_kbps_ws_median": statistics.median([s["up_kbps"] for s in secs]) if secs else None,
                "streams_heard": sorted(rep.get("final", {}).get("streams", {})),
                # frames of a member this one could not open: their key, or their slot, unknown here
                "no_key": (rep.get("crypto") or {}).get("no_key"),
                "opened": (rep.get("crypto") or {}).get("opened"),
                "concealed_pct": rep.get("final", {}).get("concealed_pct"),
            }
        )
    # Streams at a time: a member's voice downlink over the typical stream its peers send (each
    # member's voice uplink, feedback included). Slots heard over the call can be more than two
    # in a call of four or more: the relay forwards the two loudest *current* speakers.
    for m in members:
        peers = [x["up_kbps_ws_median"] for x in members if x is not m and x["up_kbps_ws_median"]]
        down = m["down_kbps_ws_median"]
        m["streams_at_once"] = down / statistics.mean(peers) if peers and down is not None else None
    return {
        "link": link,
        "profile": profile,
        "seconds": seconds,
        "parties": len(legs),
        "ok": call_ok(run),
        "load1": run.load1,
        "exits": run.exits,
        "members": members,
    }


def auscultation_run(
    rig: Rig, files: Files, work: Path, link: str, args: argparse.Namespace, offline: Offline
) -> dict[str, Any]:
    clinic, doctor = rig.members[0], rig.members[1]
    mic = am.read_wav(files.auscultation)
    seconds = len(mic) / am.FS
    legs = [Leg(clinic, files.auscultation, "auscultation", False), Leg(doctor, files.silence, "thin", True)]
    spec = {clinic.name: (link, link_args(link, args.faults)), doctor.name: (args.doctor_link, [])}
    run = rig.call(work / f"auscultation-{link}", legs, seconds + 1, spec)
    result: dict[str, Any] = {"link": link, "ok": call_ok(run), "exits": run.exits, "load1": run.load1}
    start, end = wire_window(run, legs[0], legs[1:])
    result["wire"] = run.watch.rates(clinic.name, start, end)
    if not legs[1].speaker.exists():
        result["error"] = "no speaker file"
        return result
    received = am.read_wav(legs[1].speaker)
    ref = offline.get(files.auscultation, mic, "auscultation")
    rep = run.reports.get(doctor.name, {})
    final = rep.get("final", {})
    result["concealed_pct"] = final.get("concealed_pct")
    result["stale_dropped"] = sum(x.get("stale", 0) for x in final.get("streams", {}).values())
    result.update(band_responses(mic, received, ref, files.segments))
    return result


def band_responses(
    mic: np.ndarray, received: np.ndarray, ref: np.ndarray, segments: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """Per segment of the auscultation file (heart, sweep): found in the received audio by
    cross-correlation, then band energies received/sent, and the same for the offline codec."""
    out: dict[str, Any] = {}
    for name, (a, b) in segments.items():
        sa, sb = int((a - 0.25) * am.FS), int((b + 0.25) * am.FS)
        seg_sent = mic[sa:sb]
        found = am.locate(seg_sent, received)
        if found is None or found[0] + len(seg_sent) > len(received):
            out[name] = {"error": "received segment not found or cut short"}
            continue
        r0, peak = found
        seg_recv = received[r0 : r0 + len(seg_sent)]
        live = am.band_response(seg_sent, seg_recv)
        off = am.band_response(seg_sent, ref[sa:sb])
        devs = [v for _, v in live if v is not None]
        out[name] = {
            "peak": peak,
            "bands": [(fc, v, o) for (fc, v), (_, o) in zip(live, off, strict=True)],
            "max_dev_db": max(abs(v) for v in devs) if devs else None,
            "offline_max_dev_db": max((abs(o) for _, o in off if o is not None), default=None),
            "bands_used": len(devs),
        }
    return out


# --- printing -----------------------------------------------------------------------------------


def f(value: Any, fmt: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, fmt)


DROPS = ("stale_dropped", "shrink_dropped", "trimmed_ms")  # the jitter buffer's ways down, per stream


def rungs_text(shares: dict[str, float]) -> str:
    return " ".join(f"{r} {v * 100:.0f}%" for r, v in shares.items()) or "-"


def print_speech(link: str, rows: list[dict[str, Any]], doctor_link: str, faults: bool) -> None:
    faults_text = (
        "its scheduled stalls/drops kept" if faults else "scheduled stalls/drops off (see the stall run)"
    )
    print(f"\n== speech over {link_text(link)}; {faults_text}; doctor behind {doctor_link} ==")
    print(
        "  dir: up = clinic -> doctor (clinic's uplink), down = doctor -> clinic. wire = clinic's socket, "
        "payload + 52 B x segments (pure ACKs included)"
    )
    head = (
        f"  {'profile':<9}{'dir':<5}{'wire kbit/s':>12}{'segs/s':>8}{'PESQ-WB':>9}{'offline':>9}{'STOI':>7}"
        f"{'delay+ p50/p95 ms':>19}{'(>5s)':>7}{'aligned':>9}{'conceal':>9}{'jb ms':>7}"
        f"{'stale/shrunk/trim ms':>21}{'load':>6}"
        "  rungs of the sender"
    )
    print(head)
    flagged = False
    for r in rows:
        for d in ("up", "down"):
            x, w = r[d], r.get("wire") or {}
            kbps, segs = w.get(f"{d}_kbps"), w.get(f"{d}_segs_s")
            cap = LINKS[link].up_kbit if d == "up" else LINKS[link].down_kbit
            over = "!" if kbps is not None and cap and kbps > cap else " "
            flagged = flagged or over == "!"
            print(
                f"  {r['profile']:<9}{d:<5}{f(kbps, '.1f'):>11}{over}{f(segs, '.1f'):>8}{f(x.get('pesq')):>9}"
                f"{f(x.get('offline_pesq')):>9}{f(x.get('stoi'), '.3f'):>7}"
                f"{f(x.get('added_p50_ms'), '.0f') + ' / ' + f(x.get('added_p95_ms'), '.0f'):>19}"
                f"{'(' + f(x.get('added_p95_steady_ms'), '.0f') + ')':>7}"
                f"{str(x.get('aligned', '-')) + '/' + str(x.get('windows', '-')):>9}"
                f"{f(x.get('concealed_pct'), '.1f') + '%':>9}{f(x.get('jb_ms_median'), '.0f'):>7}"
                f"{'/'.join(str(x.get(k, '-')) for k in DROPS):>21}"
                f"{f(r.get('load1'), '.1f'):>6}"
                f"  {rungs_text(x.get('rungs', {}))}"
                + (f" ({x['rate_changes']} changes)" if x.get("rate_changes") else "")
                + (f"  ERROR {x['error']}" if x.get("error") else "")
                + ("" if r.get("ok") else f"  call exits {r.get('exits')} {r.get('error', '')}")
            )
    print(
        "  (>5s) = p95 of the delay after the first 5 s heard (the jitter buffer's start-up prior left out)"
    )
    if flagged:
        print(
            "  ! = more than the link's nominal rate on the wire: badlink shapes TCP payload only (headers "
            "and ACKs ride free), so this fits here but would queue on a real link of that rate"
        )


def print_seal(link: str, rows: list[dict[str, Any]]) -> None:
    seal = "ChaCha20 + 8-byte BLAKE2b tag"
    print(f"\n== end-to-end encryption of the media frames over {link} ({seal}, per sender) ==")
    print(
        f"  {'profile':<9}{'dir':<5}{'rung':<13}{'frames/s':>9}{'Opus B':>8}{'frame-Opus B':>13}{'seal B':>8}"
        f"{'seal kbit/s':>12}{'of wire':>9}{'no key':>8}{'failed':>8}"
    )
    for r in rows:
        seal = r.get("seal") or {}
        for d in ("up", "down"):
            x = seal.get(d) or {}
            wire = (r.get("wire") or {}).get(f"{d}_kbps")
            share = x.get("seal_kbps", float("nan")) / wire * 100 if wire else float("nan")
            rungs = x.get("rungs") or {}
            tail = f"{f(share, '.1f') + '%':>9}{x.get('no_key', '-')!s:>8}{x.get('failed_auth', '-')!s:>8}"
            for i, (name, c) in enumerate(sorted(rungs.items(), key=lambda kv: -kv[1]["frames"])):
                first = i == 0
                print(
                    f"  {r['profile'] if first else '':<9}{d if first else '':<5}{name:<13}"
                    f"{f(c['frames_s'], '.1f'):>9}{f(c['opus_b'], '.0f'):>8}"
                    f"{f(c['beyond_opus_b'], '.1f'):>13}{f(c['seal_b'], '.1f'):>8}"
                    f"{f(c['seal_kbps'], '.2f'):>12}" + (tail if first else "")
                )
            if not rungs:
                print(f"  {r['profile']:<9}{d:<5}{'-':<13}  no call report with crypto figures")
    print(
        "  frame-Opus B = bytes of each voice frame beyond its Opus packet (5 header + the seal), measured "
        "from the frames sent;\n  seal kbit/s = the seal's bytes x frames/s at that rung (WebSocket, TCP/IP "
        "headers not included; of wire = the whole call's seal kbit/s over the direction's wire rate);\n"
        "  no key = frames the receiver dropped before the sender's key had arrived; failed = failed "
        "authentication"
    )


def print_comparison(speech: list[dict[str, Any]]) -> None:
    links = list(dict.fromkeys(r["link"] for r in speech))
    profiles = list(dict.fromkeys(r["profile"] for r in speech))
    if "naive" not in profiles or len(profiles) < 2:
        return
    print(
        "\n== comparison: the same speech with --profile naive (20 ms packets, fixed 16 kbit/s, no drops) =="
    )
    print(f"  {'link':<9}{'metric (clinic uplink, up)':<30}" + "".join(f"{p:>14}" for p in profiles))
    for link in links:
        by = {r["profile"]: r for r in speech if r["link"] == link}
        rows = [
            (
                "wire kbit/s up / down",
                lambda r: (
                    f"{f((r.get('wire') or {}).get('up_kbps'), '.1f')}/"
                    f"{f((r.get('wire') or {}).get('down_kbps'), '.1f')}"
                ),
            ),
            ("PESQ-WB up / down", lambda r: f"{f(r['up'].get('pesq'))}/{f(r['down'].get('pesq'))}"),
            (
                "STOI up / down",
                lambda r: f"{f(r['up'].get('stoi'), '.2f')}/{f(r['down'].get('stoi'), '.2f')}",
            ),
            (
                "delay+ p50/p95 ms, up",
                lambda r: f"{f(r['up'].get('added_p50_ms'), '.0f')}/{f(r['up'].get('added_p95_ms'), '.0f')}",
            ),
            (
                "delay+ p50/p95 ms, down",
                lambda r: (
                    f"{f(r['down'].get('added_p50_ms'), '.0f')}/{f(r['down'].get('added_p95_ms'), '.0f')}"
                ),
            ),
        ]
        for i, (name, fn) in enumerate(rows):
            cells = "".join(f"{(fn(by[p]) if p in by else '-'):>14}" for p in profiles)
            print(f"  {(link if i == 0 else ''):<9}{name:<30}{cells}")


def print_stall(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(
            f"\n== {STALL_S:g} s stall of the clinic's link, {r['profile']} over {r['link']} "
            f"(stall at {f(r.get('stall_at_call_s'), '.1f')} s into the call, "
            f"{r.get('stalls_seen')} stall(s) seen) =="
        )
        print(
            f"  {'dir':<6}{'delay before':>13}{'recovered after':>17}{'late windows':>14}{'max after':>11}"
            f"{'stale dropped':>15}{'conceal':>9}  rungs of the sender"
        )
        for d in ("up", "down"):
            x = r[d]
            rec = x.get("recovery_s")
            print(
                f"  {d:<6}{f(x.get('pre_ms'), '.0f') + ' ms':>13}"
                f"{(f(rec, '.2f') + ' s') if rec is not None else 'never':>17}"
                f"{x.get('late_windows', '-')!s:>14}{f(x.get('after_max_ms'), '.0f') + ' ms':>11}"
                f"{x.get('stale_dropped', '-')!s:>15}{f(x.get('concealed_pct'), '.1f') + '%':>9}"
                f"  {rungs_text(x.get('rungs', {}))}" + (f"  ERROR {x['error']}" if x.get("error") else "")
            )
        print("  (delay = mouth-to-ear incl. the link; recovered = from the stall's end until the delay is")
        print("   back, and stays, within 100 ms of before; late windows = windows after it above that band)")


def print_threeway(r: dict[str, Any]) -> None:
    print(f"\n== {r['parties']}-way call, {r['profile']}, clinic over {r['link']}, all members talking ==")
    print(
        f"  {'member':<10}{'link':<10}{'down wire kbit/s':>17}{'up wire kbit/s':>15}{'down voice kbit/s':>18}"
        f"{'streams at once':>16}{'slots heard':>12}{'no key':>8}{'conceal':>9}"
    )
    for m in r["members"]:
        w = m.get("wire") or {}
        print(
            f"  {m['member']:<10}{m['link']:<10}{f(w.get('down_kbps'), '.1f'):>17}"
            f"{f(w.get('up_kbps'), '.1f'):>15}"
            f"{f(m.get('down_kbps_ws_median'), '.1f'):>18}{f(m.get('streams_at_once'), '.2f'):>16}"
            f"{len(m['streams_heard']):>12}{f(m.get('no_key'), 'd'):>8}"
            f"{f(m.get('concealed_pct'), '.1f') + '%':>9}"
        )
    print(
        "  streams at once = voice downlink / the peers' median voice uplink (WebSocket level, per-second "
        "medians); slots heard = other members whose voice this one played; no key = frames it could not "
        "open (the sender's key or slot unknown here: dropped unheard); conceal = the worst stream heard"
    )
    if not r.get("ok"):
        print(f"  call exits: {r.get('exits')} {r.get('error', '')}")


def print_auscultation(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        w = r.get("wire") or {}
        print(
            f"\n== auscultation (--profile auscultation) over {link_text(r['link'])}: band response, "
            f"received/sent energy per 1/3 octave, dB (uplink wire {f(w.get('up_kbps'), '.1f')} kbit/s) =="
        )
        segs = [s for s in ("sweep", "heart") if isinstance(r.get(s), dict) and "bands" in r[s]]
        if not segs:
            print(f"  ERROR {r.get('error') or [r.get(s) for s in ('sweep', 'heart')]}")
            continue
        print(f"  {'band Hz':>8}" + "".join(f"{s + ' live':>12}{s + ' offl.':>12}" for s in segs))
        for i, fc in enumerate(am.THIRD_OCTAVES):
            cells = ""
            for s in segs:
                _, v, o = r[s]["bands"][i]
                cells += f"{f(v, '+.2f'):>12}{f(o, '+.2f'):>12}"
            print(f"  {fc:>8g}{cells}")
        for s in segs:
            x = r[s]
            print(
                f"  {s}: max |deviation| {f(x['max_dev_db'], '.2f')} dB over {x['bands_used']} bands "
                f"(offline encode/decode: {f(x['offline_max_dev_db'], '.2f')} dB)"
            )
        print("  (heart: bands more than 30 dB below its strongest band are left out: '-')")


# --- targets --------------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []

    def check(ok: bool, text: str) -> None:
        out.append((ok, text))

    def val(x: Any) -> float:
        return float("nan") if x is None else float(x)

    for r in report["speech"]:
        link, prof = r["link"], r["profile"]
        w = r.get("wire") or {}
        for d in ("up", "down"):
            x = r[d]
            seal = (r.get("seal") or {}).get(d) or {}
            if seal.get("rungs"):
                v = val(seal.get("seal_b"))
                check(v <= SEAL_TARGET, f"seal overhead {prof} {link} {d}: {v:.1f} B/frame <= {SEAL_TARGET}")
            if prof in WIRE_TARGET:
                v = val(w.get(f"{d}_kbps"))
                check(
                    v <= WIRE_TARGET[prof], f"wire {prof} {link} {d}: {v:.1f} kbit/s <= {WIRE_TARGET[prof]:g}"
                )
            if link == "clean" and prof in ("thin", "standard"):
                gap = val(x.get("offline_pesq")) - val(x.get("pesq"))
                check(
                    gap <= OFFLINE_PESQ_GAP,
                    f"PESQ-WB {prof} clean {d}: {val(x.get('pesq')):.2f} vs offline "
                    f"{val(x.get('offline_pesq')):.2f} (gap {gap:.2f} <= {OFFLINE_PESQ_GAP})",
                )
            if (link, prof) in PESQ_TARGET:
                v, t = val(x.get("pesq")), PESQ_TARGET[(link, prof)]
                check(
                    v >= t,
                    f"PESQ-WB {prof} {link} {d}: {v:.2f} >= {t} (offline, same settings: "
                    f"{val(x.get('offline_pesq')):.2f})",
                )
            if link in STOI_TARGET and prof in PRODUCT_PROFILES:
                v = val(x.get("stoi"))
                check(v >= STOI_TARGET[link], f"STOI {prof} {link} {d}: {v:.3f} >= {STOI_TARGET[link]}")
            if link in DELAY_P95_TARGET and prof in PRODUCT_PROFILES:
                v = val(x.get("added_p95_ms"))
                t = DELAY_P95_TARGET[link] * 1000
                check(v <= t, f"added delay p95 {prof} {link} {d}: {v:.0f} ms <= {t:.0f}")
    for r in report["stall"]:
        if r["profile"] == "naive":
            continue
        for d in ("up", "down"):
            rec = r[d].get("recovery_s")
            ok = rec is not None and rec <= STALL_RECOVERY_TARGET and r[d].get("late_windows", 1) == 0
            check(
                ok,
                f"stall recovery {r['profile']} {r['link']} {d}: "
                f"{'never' if rec is None else f'{rec:.2f} s'} <= {STALL_RECOVERY_TARGET:g} s, "
                f"late windows {r[d].get('late_windows')} = 0",
            )
    for r in report["threeway"]:
        for m in r["members"]:
            heard, want = len(m["streams_heard"]), min(r["parties"] - 1, MAX_STREAMS)
            check(
                heard >= want,
                f"{r['parties']}-way {m['member']} hears the others: {heard} slots >= {want} "
                f"({m.get('no_key')} frames without a key)",
            )
            n = val(m.get("streams_at_once"))
            check(
                n <= MAX_STREAMS + STREAMS_SLACK,
                f"{r['parties']}-way downlink {m['member']}: {n:.2f} streams at once <= {MAX_STREAMS} "
                f"(+{STREAMS_SLACK}; {f((m.get('wire') or {}).get('down_kbps'), '.1f')} kbit/s on the wire)",
            )
    for r in report["auscultation"]:
        x = r.get("sweep") or {}
        v = val(x.get("max_dev_db"))
        check(
            v <= AUSC_DEV_TARGET,
            f"auscultation {r['link']} sweep: max |deviation| {v:.2f} dB <= {AUSC_DEV_TARGET}",
        )
        h = r.get("heart") or {}
        if h.get("max_dev_db") is not None:
            v = val(h["max_dev_db"])
            check(
                v <= AUSC_DEV_TARGET,
                f"auscultation {r['link']} heart: max |deviation| {v:.2f} dB "
                f"<= {AUSC_DEV_TARGET} ({h.get('bands_used')} bands)",
            )
    for r in report["speech"] + report["stall"] + report["threeway"] + report["auscultation"]:
        if not r.get("ok"):
            check(
                False,
                f"call completed: {r.get('link')} {r.get('profile', 'auscultation')}: exits {r.get('exits')}",
            )
    return out


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench voice", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--profiles", default="auto,thin,standard,naive", help="voice profiles of the speech runs")
    p.add_argument("--links", default="clean,3g-weak,edge", help="badlink profiles of the clinic's link")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each speech call")
    p.add_argument("--runs", default="speech,stall,threeway,auscultation", help="which kinds of run")
    p.add_argument("--stall-profiles", default="auto,naive", help="voice profiles of the stall run (3g-weak)")
    p.add_argument("--party", type=int, default=3, choices=(3, 4), help="members in the multi-party call")
    p.add_argument("--doctor-link", default="clean", help="badlink profile of the doctors (default clean)")
    p.add_argument("--threeway-link", default="3g-weak", help="the clinic's link, multi-party call")
    p.add_argument("--faults", action="store_true", help="keep the link profiles' scheduled stalls and drops")
    p.add_argument("--tls", action="store_true", help="a wss:// relay: wire cost with TLS records")
    p.add_argument(
        "--quick",
        action="store_true",
        help="thin+standard on clean and 3g-weak, 12 s calls; one "
        "stall run (auto), the 3-way call, auscultation on clean",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", type=Path, help="work in this dir and keep it (WAVs, call reports, status logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.profiles, args.links, args.seconds, args.stall_profiles = (
            "thin,standard",
            "clean,3g-weak",
            12.0,
            "auto",
        )
    profiles, links = args.profiles.split(","), args.links.split(",")
    runs = set(args.runs.split(","))
    for name in [*links, args.doctor_link, args.threeway_link]:
        if name not in LINKS:
            p.error(f"unknown link {name!r}: {', '.join(LINKS)}")
    ausc_links = ["clean"] if args.quick else ["clean", "3g-weak"]
    threeway_link = args.threeway_link
    unknown = runs - {"speech", "stall", "threeway", "auscultation"}
    if unknown:
        p.error(f"unknown runs: {', '.join(sorted(unknown))}")
    if not CORPUS.exists():
        print(f"voice bench: the corpus is missing: {CORPUS}", file=sys.stderr)
        return 2
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
    except ImportError as exc:
        print(f"voice bench: {exc.name} is missing: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medcomm-voice-") as tmp:
        root = Path(tmp)
        if args.keep:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        files = prepare_files(root / "mics")
        planned = []
        if "speech" in runs:
            planned.append(
                f"speech: {len(profiles) * len(links)} calls of {args.seconds:g} s, profiles "
                f"{','.join(profiles)} x clinic links {','.join(links)}"
            )
        if "stall" in runs:
            planned.append(
                f"stall: {','.join(args.stall_profiles.split(','))} over 3g-weak, {STALL_CALL_S:g} s calls, "
                f"a {STALL_S:g} s stall ~9 s in"
            )
        if "threeway" in runs:
            planned.append(f"{args.party}-way: auto over {threeway_link} (clinic), {args.seconds:g} s")
        if "auscultation" in runs:
            planned.append(f"auscultation: {','.join(ausc_links)}, one {25:g} s call each")
        print(
            "what ran: real `medcomm call` processes (WAV mic/speaker in real time) through `medcomm serve`, "
            f"each behind its own scripts/badlink, one call at a time; {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f} at the start",
            flush=True,
        )
        for line in [*files.described, *planned]:
            print(f"  {line}")
        print(f"  links: {'; '.join(link_text(x) for x in dict.fromkeys([*links, 'clean']))}")
        print(
            f"  wire cost = bytes + {HEADER_BYTES} B per TCP segment (IPv4 20 + TCP with timestamps 32), "
            "kernel counters of the client's socket (ss -tin: bytes_sent/bytes_received, segs_out/segs_in "
            "incl. pure ACKs) over the call minus its first second; "
            + ("TLS records included (--tls)" if args.tls else "no TLS (--tls adds it)")
            + ", no link framing",
            flush=True,
        )
        print(
            "  delay+ = mouth-to-ear delay (1 s windows every 0.5 s with speech, cross-correlated with the "
            "sent speech, on one clock via source_started/sink_started) minus the link's nominal delay",
            flush=True,
        )
        print(
            "  PESQ-WB/STOI at 16 kHz, aligned piece by piece where the delay changed; offline = the same "
            "Opus settings encoded and decoded offline (rung by rung as the sender changed them)",
            flush=True,
        )
        report: dict[str, Any] = {
            "cores": os.cpu_count(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "speech": [],
            "stall": [],
            "threeway": [],
            "auscultation": [],
        }
        offline = Offline()
        rig = Rig(root, args.party if "threeway" in runs else 2, tls=args.tls)
        try:
            rig.start()
            base = root / "runs"
            if "speech" in runs:
                for link in links:
                    rows = []
                    for prof in profiles:
                        rows.append(
                            guarded(
                                {"link": link, "profile": prof},
                                lambda link=link, prof=prof: speech_run(
                                    rig, files, base, link, prof, args.seconds, args, offline
                                ),
                            )
                        )
                    report["speech"].extend(rows)
                    print_speech(link, rows, args.doctor_link, args.faults)
                    print_seal(link, rows)
                    sys.stdout.flush()
                print_comparison(report["speech"])
            if "stall" in runs:
                for prof in args.stall_profiles.split(","):
                    report["stall"].append(
                        guarded(
                            {"link": "3g-weak", "profile": prof},
                            lambda prof=prof: stall_run(rig, files, base, "3g-weak", prof, args, offline),
                        )
                    )
                print_stall(report["stall"])
            if "threeway" in runs:
                r = guarded(
                    {"link": threeway_link, "profile": "auto", "parties": args.party},
                    lambda: threeway_run(rig, files, base, threeway_link, "auto", args.seconds, args),
                )
                report["threeway"].append(r)
                print_threeway(r)
            if "auscultation" in runs:
                for link in ausc_links:
                    report["auscultation"].append(
                        guarded(
                            {"link": link, "profile": "auscultation"},
                            lambda link=link: auscultation_run(rig, files, base, link, args, offline),
                        )
                    )
                print_auscultation(report["auscultation"])
        finally:
            rig.close()
    checks = targets(report)
    report["targets"] = [{"ok": ok, "check": text} for ok, text in checks]
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    print(
        f"\n== targets ({sum(ok for ok, _ in checks)}/{len(checks)} met; "
        f"run took {report['wall_s']:.0f} s; load average {os.getloadavg()[0]:.1f} at the end) =="
    )
    for ok, text in checks:
        print(f"  {'ok  ' if ok else 'MISS'}  {text}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if all(ok for ok, _ in checks) else 1

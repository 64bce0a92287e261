"""`scripts/bench playout`: the receiver's jitter-buffer shrinking policies, A/B, offline.

Why. A jitter buffer that sits over its target must come down, and every way down costs
something: dropping a whole silent packet waits for a pause, skipping in a pause waits too,
and cutting a packet shorter (``core.timescale``: a splice at whole pitch periods) can be heard
when the packet is speech. ``JitterLimits``' shrinking policy was chosen from this table:
cutting 60 ms speech packets cost PESQ-WB on a clean link (packets that short come down
well enough by dropping a silent one or skipping in a pause), where cutting 120 ms ones (whose
whole-packet drop would overshoot the target) cost nothing; and speech that must be dropped
(after the patience, without a pause) is best dropped at a quiet packet of it. This bench
keeps those choices checkable whenever the buffer or the ladder changes.

What runs. No network and no processes: each simulated call is one corpus speech file (its
first ``--seconds``), one link, one rung, one policy and one seed, deterministic:

* sender: the engine's own encoder (``medcomm.adapters.opus.Encoder``, VOIP with DTX, the
  rung's rate, packet length and band), one packet per packet length; DTX packets are not
  sent, as the engine sends nothing then; the level byte as the engine packs it;
* link: a packet leaves when its last sample is captured and arrives after the link's path
  delay plus a uniform random jitter, never before the packet ahead of it (TCP keeps order);
* receiver: a ``JitterBuffer`` with the policy's limits, pulled by an output that asks for
  each piece ``--lead`` ms before it plays (the engine's one-block speaker queue); pieces are
  decoded, concealed, or cut shorter by the call engine's own ``play_piece``;
* judge: as ``scripts/bench voice`` judges received speech: the delay track (1 s windows
  every 0.5 s, matched against the sent speech), the received audio paired with the sent one
  piece by piece where the delay changed, then PESQ-WB and STOI at 16 kHz; next to the rung's
  offline ceiling (``roundtrip``, no link at all). Delays are mouth-to-ear on the simulation's
  clock: packetisation, the link's path and jitter, and the buffer.

Limits. The jitter is uniform and independent per packet (real links queue: jitter comes in
bursts and stalls); there is no relay, no loss, no rate control (one rung for the whole
call) and no sound card (the output's clock is ideal). The live figures, over real
processes, a relay and emulated bad links, are in ``scripts/bench voice``.

Needs the bench extras (``scripts/setup --bench``: PESQ, STOI).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchlib import audiometrics as am
from benchlib.procs import CORPUS
from medcomm.adapters.opus import Decoder, Encoder, roundtrip
from medcomm.core.jitter import JitterBuffer, JitterLimits, JitterStats, for_round_trip
from medcomm.core.ratecontrol import LADDER, Rung
from medcomm.core.voiceframe import level_byte
from medcomm.session.callengine import play_piece

SPEECH = ("speech_en_48k.wav", "speech_zh_48k.wav")
PER_MS = am.FS // 1000  # samples per ms at 48 kHz
TAIL_MS = 500.0  # the receiver runs this long past the speech: the buffer's delay drains out
COLUMNS = (  # per-call figures the tables show as medians
    "pesq",
    "stoi",
    "delay_p50_ms",
    "delay_p95_ms",
    "trimmed_ms",
    "shrink_dropped",
    "stale_dropped",
    "concealed_pct",
)


@dataclass(frozen=True)
class Link:
    """A one-way path: every packet takes ``path_ms`` plus uniform jitter in [0, jitter_ms]."""

    path_ms: float
    jitter_ms: float
    note: str


LINKS: dict[str, Link] = {
    "clean": Link(1.0, 3.0, "loopback, no shaping"),
    "3g-weak": Link(60.0, 120.0, "badlink's 120 +/- 60 ms"),
    "edge": Link(120.0, 160.0, "badlink's 200 +/- 80 ms"),
}


def policies() -> dict[str, JitterLimits]:
    """The shrinking policies compared, in table order."""
    base = JitterLimits()
    return {
        "default": base,
        # only whole-packet drops and skips in pauses: the buffer before cuts existed
        "no-cuts": dataclasses.replace(base, trim_silent_pct=0, trim_max_pct=0),
        "silence-only": dataclasses.replace(base, trim_max_pct=0),
        # speech dropped after the patience whatever it is (the policy before quiet drops)
        "any-drop": dataclasses.replace(base, quiet_wait_ms=0),
        # the start-up target at 120 ms whatever the link's round trip (before it was guessed)
        "no-rtt-start": dataclasses.replace(base, initial_min_ms=base.initial_ms),
        # every speech packet may be cut, at once
        "cut-speech": dataclasses.replace(base, trim_speech_from_ms=0, trim_patience_ms=0),
        # a receiver on a quick link (its start-up target 60 ms, from its own round trip)
        # hearing a sender on this one that sent no path hint (a version before hints): what
        # not knowing the sender's link costs
        "quick-receiver": dataclasses.replace(base, initial_ms=60),
    }


class Packet(NamedTuple):
    ts_ms: int  # media time of the packet's first sample
    payload: bytes
    level: int  # the voice header's level byte (loudness and voice activity)


def send(pcm: np.ndarray, rung: Rung) -> list[Packet]:
    """The packets the call engine sends for ``pcm`` at ``rung`` (DTX packets are not sent)."""
    enc = Encoder(
        rung.application, rung.bitrate_bps, rung.frame_ms, rung.bandwidth, dtx=rung.application == "voip"
    )
    n = rung.frame_ms * PER_MS
    out = []
    for k in range(len(pcm) // n):
        e = enc.encode(pcm[k * n : (k + 1) * n])
        if e.packet:
            out.append(Packet(k * rung.frame_ms, e.packet, level_byte(e.level_dbov, e.talking)))
    return out


def arrivals(packets: list[Packet], frame_ms: int, link: Link, seed: int) -> list[float]:
    """Arrival time (ms) of each packet: it leaves once its last sample is captured, takes the
    path plus uniform jitter, and never overtakes the packet ahead of it (TCP keeps order)."""
    rng = random.Random(seed)
    out: list[float] = []
    last = -math.inf
    for p in packets:
        last = max(p.ts_ms + frame_ms + link.path_ms + rng.uniform(0.0, link.jitter_ms), last)
        out.append(last)
    return out


def play_out(
    packets: list[Packet],
    arrived: list[float],
    frame_ms: int,
    limits: JitterLimits,
    lead_ms: float,
    total_ms: float,
) -> tuple[np.ndarray, JitterStats]:
    """What the receiver's speaker plays until ``total_ms``: the output pulls each piece
    ``lead_ms`` before it plays and plays it as the call engine does (``play_piece``)."""
    jb = JitterBuffer(limits)
    dec = Decoder()
    out: list[np.ndarray] = []
    clock = 0.0  # ms: when the next piece starts to play
    i = 0
    while clock < total_ms:
        pulled = clock - lead_ms
        while i < len(packets) and arrived[i] <= pulled:
            p = packets[i]
            jb.push(p.ts_ms, frame_ms, p.payload, p.level, arrived[i] / 1000.0)
            i += 1
        piece = jb.pull((pulled if out else clock) / 1000.0)  # the first pull has no queue ahead
        pcm = play_piece(piece, dec, jb)
        out.append(pcm)
        clock += len(pcm) / PER_MS
    return np.concatenate(out), jb.stats()


def judge(sent: np.ndarray, received: np.ndarray) -> dict[str, Any]:
    """PESQ-WB, STOI and delay of ``received`` as ``scripts/bench voice`` measures a call
    (both signals start at the simulation's time 0: source_started 0, sink_started -BLOCK_S)."""
    points, tried = am.delay_track(sent, received, 0.0, -am.BLOCK_S)
    ranges, s_part, r_part = am.piecewise_align(sent, received, points, 0.0, -am.BLOCK_S)
    pesq, stoi = am.quality(s_part, r_part)
    delays = [p.delay * 1000.0 for p in points]
    return {
        "pesq": pesq,
        "stoi": stoi,
        "delay_p50_ms": am.percentile(delays, 50),
        "delay_p95_ms": am.percentile(delays, 95),
        "windows": tried,
        "aligned": len(points),
        "pieces": len(ranges),
        "overlap_s": len(s_part) / am.FS,
    }


def median(values: list[float]) -> float:
    """Median of the numbers that are not NaN (a call PESQ could not score), else NaN."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else float("nan")


def names(arg: str, known: dict[str, Any], what: str) -> list[str]:
    chosen = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise ValueError(f"unknown {what} {', '.join(unknown) or '(none)'}; known: {', '.join(known)}")
    return chosen


def offline_pesq(speech: dict[str, np.ndarray], rung: Rung) -> float:
    """The rung's ceiling: the speech encoded and decoded offline, no link, median over files."""
    dtx = rung.application == "voip"
    return median(
        [
            am.quality(
                pcm, roundtrip(pcm, rung.application, rung.bitrate_bps, rung.frame_ms, rung.bandwidth, dtx)
            )[0]
            for pcm in speech.values()
        ]
    )


def simulate(
    pcm: np.ndarray,
    packets: list[Packet],
    rung: Rung,
    link: Link,
    seed: int,
    limits: JitterLimits,
    lead_ms: float,
) -> dict[str, Any]:
    """One call's figures: the packets over the link, played out with ``limits``, judged.
    The buffer's start-up target is guessed from the link's round trip, as the engine does."""
    limits = for_round_trip(limits, 2 * (link.path_ms + link.jitter_ms / 2))
    arrived = arrivals(packets, rung.frame_ms, link, seed)
    received, st = play_out(packets, arrived, rung.frame_ms, limits, lead_ms, len(pcm) / PER_MS + TAIL_MS)
    return {
        "packets_sent": len(packets),
        **judge(pcm, received),
        "trimmed_ms": st.trimmed_ms,
        "shrink_dropped": st.shrink_dropped,
        "stale_dropped": st.stale_dropped,
        "concealed_pct": st.concealed_pm_total / 10.0,
        "played": st.played,
    }


def print_table(title: str, calls: dict[str, list[dict[str, Any]]], ceiling: float) -> None:
    print(f"\n{title}")
    print(
        f"  {'policy':<13}{'PESQ':>6}{'min':>6}{'STOI':>7}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'trim ms':>9}{'drops':>7}{'stale':>7}{'concl %':>9}{'offline':>9}"
    )
    for policy, rows in calls.items():
        col = {key: median([float(r[key]) for r in rows]) for key in COLUMNS}
        least = min((r["pesq"] for r in rows if not math.isnan(r["pesq"])), default=float("nan"))
        print(
            f"  {policy:<13}{col['pesq']:>6.2f}{least:>6.2f}{col['stoi']:>7.3f}"
            f"{col['delay_p50_ms']:>8.0f}{col['delay_p95_ms']:>8.0f}{col['trimmed_ms']:>9.0f}"
            f"{col['shrink_dropped']:>7.0f}{col['stale_dropped']:>7.0f}{col['concealed_pct']:>9.1f}"
            f"{ceiling:>9.2f}",
            flush=True,
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench playout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="one seed, 12 s, rung standard only")
    p.add_argument("--links", default="clean,3g-weak", help=f"links to simulate: {', '.join(LINKS)}")
    p.add_argument("--rungs", help="ladder rungs to send at (default standard,thin)")
    p.add_argument("--policies", default=",".join(policies()), help="shrinking policies to compare")
    p.add_argument("--seeds", type=int, help="link seeds 1..N per speech file (default 3)")
    p.add_argument("--seconds", type=float, help="speech sent per call, s (default 20)")
    p.add_argument("--lead", type=float, default=20.0, help="ms the output pulls ahead of playing")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="folder with speech_*_48k.wav")
    p.add_argument("--json", type=Path, help="write every per-call figure here as JSON")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (12.0 if args.quick else 20.0)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    ladder = {r.name: r for r in LADDER}
    limits = policies()
    try:
        links = names(args.links, LINKS, "link")
        rungs = names(args.rungs or ("standard" if args.quick else "standard,thin"), ladder, "rung")
        chosen = names(args.policies, limits, "policy")
    except ValueError as exc:
        print(f"bench playout: {exc}")
        return 2
    if seeds < 1 or seconds <= 1.0 or args.lead < 0:
        print("bench playout: --seeds must be >= 1, --seconds > 1, --lead >= 0")
        return 2
    missing = [name for name in SPEECH if not (args.corpus / name).exists()]
    if missing:
        print(f"bench playout: no {', '.join(missing)} in {args.corpus}")
        return 2
    speech = {name: am.read_wav(args.corpus / name)[: int(seconds * am.FS)] for name in SPEECH}
    started = time.monotonic()
    load = os.getloadavg()
    total = len(speech) * seeds * len(links) * len(rungs) * len(chosen)
    print(
        f"what ran: {total} simulated calls = {len(speech)} speech files ({', '.join(speech)}) x {seeds} "
        f"seed(s) x {len(links)} link(s) x {len(rungs)} rung(s) x {len(chosen)} policies, {seconds:g} s each"
    )
    shapes = "; ".join(f"{n} {LINKS[n].path_ms:g} ms + 0-{LINKS[n].jitter_ms:g} ms" for n in links)
    print(f"  links (path + uniform jitter, in order): {shapes}; the output pulls {args.lead:g} ms ahead")
    print(
        f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (offline: the figures do not depend on it)"
    )
    print(
        "  PESQ-WB / STOI at 16 kHz, paired piece by piece as scripts/bench voice does; delay mouth-to-ear\n"
        "  (packet + path + jitter buffer), p50 / p95 per call; each column is the median over the calls\n"
        "  but PESQ min; offline: the rung encoded and decoded with no link (the ceiling)"
    )
    ceilings = {name: offline_pesq(speech, ladder[name]) for name in rungs}
    sent = {(f, name): send(pcm, ladder[name]) for f, pcm in speech.items() for name in rungs}
    rows: list[dict[str, Any]] = []
    for link_name in links:
        link = LINKS[link_name]
        for name in rungs:
            rung = ladder[name]
            table: dict[str, list[dict[str, Any]]] = {}
            for policy in chosen:
                for f, pcm in speech.items():
                    for seed in range(1, seeds + 1):
                        t0 = time.monotonic()
                        row = simulate(pcm, sent[(f, name)], rung, link, seed, limits[policy], args.lead)
                        row = {
                            "link": link_name,
                            "rung": name,
                            "policy": policy,
                            "file": f,
                            "seed": seed,
                            **row,
                        }
                        row["elapsed_s"] = round(time.monotonic() - t0, 2)
                        rows.append(row)
                        table.setdefault(policy, []).append(row)
                        print(
                            f"playout {len(rows)}/{total}: {link_name} {name} {policy} {f} seed {seed}: "
                            f"PESQ {row['pesq']:.2f}, delay p50 {row['delay_p50_ms']:.0f} ms, "
                            f"trimmed {row['trimmed_ms']} ms ({row['elapsed_s']:.1f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
            print_table(
                f"{link_name} ({link.path_ms:g} ms + 0-{link.jitter_ms:g} ms, {link.note}), rung {name} "
                f"({rung.bitrate_bps / 1000:g} kbit/s, {rung.frame_ms} ms, {rung.bandwidth}): "
                f"{len(speech) * seeds} calls a policy",
                table,
                ceilings[name],
            )
    print("\n  drops: packets dropped to bring the delay down; stale: arrived behind the playout point")
    print(f"\nran {time.monotonic() - started:.0f} s")
    if args.json:
        report = {
            "seconds": seconds,
            "seeds": seeds,
            "lead_ms": args.lead,
            "loadavg": load,
            "links": {n: dataclasses.asdict(LINKS[n]) for n in links},
            "rungs": {n: dataclasses.asdict(ladder[n]) for n in rungs},
            "policies": {n: dataclasses.asdict(limits[n]) for n in chosen},
            "offline_pesq": ceilings,
            "calls": rows,
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 0

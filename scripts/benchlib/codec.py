"""`scripts/bench codec`: what each Opus setting the ladder could use sounds like, offline.

The voice ladder's rates and bands were chosen from this table: the corpus speech encoded and
decoded offline with ``medcomm.adapters.opus.roundtrip`` (VOIP, VBR, DTX, complexity 10, the
engine's own encoder), scored with PESQ-WB and STOI at 16 kHz against the original, next to
the wire rate the setting costs with 71 header bytes a packet (voice header 5, seal 8,
WebSocket 6, TCP with timestamps 32, IPv4 20) before pure ACKs. No link, no relay: this is
the codec's ceiling, which the live calls in ``scripts/bench voice`` are measured against.

Needs the bench extras (``scripts/setup --bench``: PESQ, STOI).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchlib.audiometrics import quality, read_wav
from benchlib.procs import CORPUS
from medcomm.adapters.opus import roundtrip
from medcomm.core.ratecontrol import AUSCULTATION, LADDER

SPEECH = ("speech_en_48k.wav", "speech_zh_48k.wav")
HEADER_BYTES = 71  # a packet's bytes beside Opus, up to the IP header (pure ACKs not counted)


def wire_kbps(bitrate_bps: int, frame_ms: int) -> float:
    return (bitrate_bps * frame_ms / 8000 + HEADER_BYTES) * 8 / frame_ms


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench codec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--rates",
        default="6000,7000,8000,9000,10000,11000,12000,14000,16000",
        help="Opus bit rates to try, bit/s (comma-separated)",
    )
    p.add_argument("--frames", default="120,80,60", help="packet lengths to try, ms")
    p.add_argument("--bands", default="nb,mb,wb", help="widest audio band allowed: nb, mb, wb")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="folder with speech_*_48k.wav")
    p.add_argument("--json", type=Path, help="write every figure here as JSON")
    args = p.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    frames = [int(f) for f in args.frames.split(",")]
    bands = args.bands.split(",")
    missing = [name for name in SPEECH if not (args.corpus / name).exists()]
    if missing:
        print(f"bench codec: no {', '.join(missing)} in {args.corpus}")
        return 2
    speech = {name: read_wav(args.corpus / name) for name in SPEECH}
    rungs = {(r.bitrate_bps, r.frame_ms, r.bandwidth): r.name for r in (*LADDER, AUSCULTATION)}
    started = time.monotonic()
    print(
        f"what ran: {len(rates) * len(frames) * len(bands)} settings x {len(speech)} speech files "
        f"({', '.join(speech)}), encoded and decoded offline; PESQ-WB / STOI at 16 kHz"
    )
    print(
        f"  wire = Opus rate + {HEADER_BYTES} B a packet, pure ACKs not counted "
        "(a live call adds 2-3 kbit/s of them: scripts/bench voice)"
    )
    print(
        f"\n  {'ms':>4}{'band':>5}{'kbit/s':>7}{'wire':>7}   "
        + "".join(f"{n[:9]:>18}" for n in speech)
        + f"{'PESQ med':>10}  rung"
    )
    rows: list[dict[str, Any]] = []
    for frame in frames:
        for band in bands:
            for rate in rates:
                scores = [
                    quality(pcm, roundtrip(pcm, "voip", rate, frame, band, dtx=True))
                    for pcm in speech.values()
                ]
                pesq = statistics.median(q for q, _ in scores)
                rung = rungs.get((rate, frame, band), "")
                rows.append(
                    {
                        "frame_ms": frame,
                        "band": band,
                        "bitrate_bps": rate,
                        "rung": rung,
                        "wire_kbps": round(wire_kbps(rate, frame), 2),
                        "scores": {
                            n: {"pesq_wb": q, "stoi": s} for n, (q, s) in zip(speech, scores, strict=True)
                        },
                    }
                )
                cells = "".join(f"{q:.2f} / {s:.3f}".rjust(18) for q, s in scores)
                print(
                    f"  {frame:>4}{band:>5}{rate / 1000:>7.1f}{wire_kbps(rate, frame):>7.1f}   {cells}"
                    f"{pesq:>10.2f}  {rung}",
                    flush=True,
                )
    print(f"\nran {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"header_bytes": HEADER_BYTES, "rows": rows}, indent=1))
    return 0

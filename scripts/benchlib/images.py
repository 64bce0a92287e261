"""`scripts/bench images`: what sharing a lab report, a CT film, an ECG or a CT slice costs on a
bad link, how soon the doctor has something to read, and whether it can be read.

Everything runs for real: a ``medcomm serve`` relay, the clinic (``amina``) and the doctor
(``dr.chen``) each behind a ``scripts/badlink`` of their own. The clinic's link is the profile
under test, restarted for every share with its scheduled stalls and drops off (``--no-faults``:
every run sees the same link; the cut test adds cuts on purpose); the doctor's is ``clean``
(the hospital end; a byte counter). One relay per link profile, so no blob is at the relay
before its timed share.

What is measured, per corpus picture and link:

* time to first view: from the start of the ``medcomm share FILE --as KIND --detail later``
  process (wall clock just before it is started) until the doctor's session (a medcomm
  ``Session`` in this process, as the desk holds one, caught up before the share starts)
  has the image message **and** its first view downloaded and SHA-256-verified in its blob
  cache, i.e. until ``medcomm fetch`` of the first view needs no link. The clinic's phases
  come from its ``-v`` log (wall clock, ms): link online, picture prepared (decode,
  straightening, first view fitted to its budget), recorded on the device, first view
  uploaded, message stored; and the clinic's uplink bytes from its badlink;
* tiles (after the timed shares, over a clean link: ``medcomm sync`` uploads the detail):
  ``medcomm fetch --region`` at native resolution by the doctor, of every slice of the CT film
  (the cells of its 4x3 layout) and of the centre of the other pictures: the tile bytes of
  each region (exact, from the manifest; the CLI's own figure beside it) and the SSIM of what
  came back against the same region of the sender's corrected picture (the one the tiles are
  cut from, made again here with ``medcomm.session.images.make``);
* legibility of the reports (``benchlib.imagemetrics``): tesseract (``eng``, ``chi_sim``) on
  the first view as the doctor's ``medcomm fetch`` wrote it, on the original photo, on a
  1600-px JPEG at quality 80 made from it (what a user would send instead) and on the clean
  scan (reference): the share of ``truth.json``'s result values found, each picture scored
  with its best page segmentation of ``--psm 3,4,6,11`` (``--quick``: 6 only);
* what a user would do instead, on the same links: the original photo and the 1600-px JPEG,
  their bytes, their delivery time at the link's nominal uplink rate (a lower bound: no
  framing, no stalls; in a full run the JPEG of the English report is also sent for real,
  as a blob through the same relay and link), and their OCR score;
* cuts: a 64 KiB blob uploaded by ``medcomm.session.transfer.upload`` over the first link,
  once without and once with 3 cuts of every connection (``SIGUSR1`` to badlink, each a
  seeded random time into a chunk's transmission, after acknowledgements 1, 3 and 5):
  chunks the client wrote more than once, and the extra uplink bytes that reached the relay
  (badlink's delivered-bytes counter: bytes lost in a cut were never delivered) minus the
  reconnections (a connection's handshake measured alone) and the heads that resume: what
  crossed the link twice.

Sizes are on-the-wire bytes: every blob of an image is sealed (``medcomm.core.filecrypt``,
one key per image in its end-to-end encrypted message), so a first view, a tile or a manifest
is its picture plus 41 bytes (24 of header, 17 of tag per 64 KiB), and that sealed size is
what the first view's budget and the targets below are held to. The picture's own bytes are
kept beside it in the JSON (``first_plain_bytes``).

KB in budgets and targets is 1024 bytes, as in medcomm's limits (``FirstViewLimits``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import imagemetrics as im
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

LINKS = load_badlink_profiles()
KIB = 1024
CHUNK = 8 * KIB


@dataclass(frozen=True)
class Item:
    """One corpus picture and how it is shared and judged."""

    name: str
    file: str
    kind: str  # --as (auto for the DICOM file: it is a slice)
    lang: str = ""  # tesseract language of a report
    scan: str = ""  # the clean scan of a report (OCR reference)


ITEMS = (
    Item("report_en", "report_en_photo.jpg", "report", "eng", "report_en_scan.png"),
    Item("report_zh", "report_zh_photo.jpg", "report", "chi_sim", "report_zh_scan.png"),
    Item("ct_film", "ct_film_photo.jpg", "film"),
    Item("ecg", "ecg_photo.jpg", "ecg"),
    Item("ct_slice", "ct_small.dcm", "auto"),
)
QUICK_ITEMS = ("report_en", "ct_film", "ct_slice")
FILM_GRID = (4, 3)  # the corpus film: 12 slices, 4 across and 3 down

# Targets (from the issue).
REPORT_FIRST_MAX = 20 * KIB
SLICE_FIRST_MAX = 10 * KIB
FILM_SLICE_MAX = 40 * KIB
TTFV_MAX = {"edge": 10.0, "gprs": 20.0}  # s, time to first view of a report
CUT_MAX = CHUNK  # bytes re-sent per cut
PSMS, QUICK_PSMS = ("3", "4", "6", "11"), ("6",)
JPEG_SIDE, JPEG_QUALITY = 1600, 80


# --- the rig ----------------------------------------------------------------------------------


class Rig:
    """A relay, the clinic and the doctor, each logged in through a badlink on a port of its
    own; a member's badlink is restarted with another profile between runs (its relay URL,
    the port, stays valid)."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed
        self.relay = Relay(root / "relay")
        self.homes = {"amina": root / "homes" / "amina", "dr.chen": root / "homes" / "dr.chen"}
        self.ports = {name: free_port() for name in self.homes}
        self.links: dict[str, Badlink] = {}
        self.consult = ""
        self.started = 0

    @property
    def clinic(self) -> Path:
        return self.homes["amina"]

    @property
    def doctor(self) -> Path:
        return self.homes["dr.chen"]

    def start(self) -> Rig:
        self.relay.start()
        for name, role in (("amina", "clinic"), ("dr.chen", "doctor")):
            self.link(name, "clean")
            code = self.relay.enroll(name, role)
            out = medcomm("login", f"ws://127.0.0.1:{self.ports[name]}", name, code, home=self.homes[name])
            if out.returncode:
                raise RuntimeError(f"login of {name} failed: {out.stderr.strip()[:200]}")
        out = medcomm("consult", "open", "image bench", "--with", "dr.chen", home=self.clinic, timeout=60)
        if out.returncode or not out.stdout.strip():
            raise RuntimeError(f"consult open failed: {out.stderr.strip()[:200]}")
        self.consult = out.stdout.strip().splitlines()[-1]
        return self

    def link(self, who: str, profile: str, extra: tuple[str, ...] = ()) -> Badlink:
        """(Re)start ``who``'s badlink with ``profile`` (faults off) on its fixed port."""
        self.unlink(who)
        self.started += 1
        link = Badlink(
            self.relay.port,
            profile,
            self.root / f"badlink-{self.started}-{who}.json",
            seed=self.seed + self.started,
            extra=["--listen", f"127.0.0.1:{self.ports[who]}", "--no-faults", *extra],
        )
        for attempt in range(40):  # the port was free a moment ago; TIME_WAIT is fine
            try:
                link.start()
                break
            except RuntimeError:
                if attempt == 39:
                    raise
                time.sleep(0.25)
        self.links[who] = link
        return link

    def unlink(self, who: str) -> dict[str, int]:
        """Stop ``who``'s badlink; its final counters (it writes them when it exits)."""
        link = self.links.pop(who, None)
        if link is None:
            return {}
        link.stop()
        return link.counters()

    def close(self) -> None:
        for who in list(self.links):
            self.unlink(who)
        self.relay.stop()


# --- the doctor's side ------------------------------------------------------------------------


class Watcher(threading.Thread):
    """The doctor's session: notes when the next image message arrives and when its first
    view is downloaded and verified in the doctor's blob cache."""

    def __init__(self, home: Path, timeout: float) -> None:
        super().__init__(name="image-bench-doctor", daemon=True)
        self.home, self.timeout = home, timeout
        self.ready = threading.Event()
        self.result: dict[str, Any] = {}

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported in the run's row, never hidden
            self.result["error"] = f"doctor: {type(exc).__name__}: {exc}"[:300]
        finally:
            self.ready.set()

    async def _main(self) -> None:
        from medcomm.core import wire
        from medcomm.core.delivery import Accepted
        from medcomm.session import imagefetch
        from medcomm.session.service import Session

        async with Session.open(home=self.home) as s:
            await s.sync(30)
            arrived: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            def listen(event: object) -> None:
                if isinstance(event, Accepted) and event.msg.kind == wire.KINDS["image"]:
                    arrived.put_nowait((time.time(), event.msg.cid))

            s.on_event(listen)
            self.ready.set()
            at, cid = await asyncio.wait_for(arrived.get(), self.timeout)
            self.result.update(message_at=at, image=cid.hex())
            loc = imagefetch.locate_image(s, cid.hex())
            data = await imagefetch.fetch_first(s, loc, self.timeout)
            self.result.update(
                first_view_at=time.time(),
                first_bytes=loc.info.first.size,  # the sealed blob: what crossed the link
                first_plain_bytes=len(data),  # the picture, opened
                first_sha=hashlib.sha256(data).hexdigest()[:16],
                first_label=f"{loc.info.first.codec} {loc.info.first.width}x{loc.info.first.height}",
            )


# --- timed shares -----------------------------------------------------------------------------

_LOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\S+) \w+ (.*)$")
PHASES = {
    "online": "online as ",
    "prepared": "image prepared ",
    "recorded": "image recorded ",
    "tiles": "image tiles ",
    "message": "image message sent ",
    "first_up": "image first view up ",
    "stored": "image stored ",
}


def log_phases(stderr: str, t0: float) -> dict[str, float]:
    """Seconds from ``t0`` to each phase line of the clinic's ``-v`` log (first occurrence)."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        m = _LOG.match(line)
        if not m:
            continue
        at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        for phase, prefix in PHASES.items():
            if phase not in out and m.group(4).startswith(prefix):
                out[phase] = round(at - t0, 3)
        up = re.match(
            r"uploaded blob=\S+ size=(\d+) chunks=(\d+) rounds=(\d+) heads=(\d+) in ([\d.]+) s", m.group(4)
        )
        if up and "upload_s" not in out:
            out.update(upload_s=float(up.group(5)), heads=int(up.group(4)), chunks=int(up.group(2)))
    return out


def share_run(rig: Rig, item: Item, link: str) -> dict[str, Any]:
    """One timed share of ``item`` with the clinic on ``link``."""
    row: dict[str, Any] = {
        "item": item.name,
        "link": link,
        "original_bytes": (CORPUS / item.file).stat().st_size,
    }
    rig.link("amina", link)
    watcher = Watcher(rig.doctor, 120)
    watcher.start()
    if not watcher.ready.wait(60) or "error" in watcher.result:
        raise RuntimeError(watcher.result.get("error", "the doctor's session did not catch up"))
    cmd = [*MEDCOMM, "-v", "share", rig.consult, str(CORPUS / item.file), "--as", item.kind]
    cmd += ["--detail", "later", "--timeout", "150"]
    env = dict(os.environ, MEDCOMM_HOME=str(rig.clinic))
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    row["share_exit_s"] = round(time.time() - t0, 3)
    watcher.join(130)
    counters = rig.unlink("amina")
    row.update(exit=proc.returncode, uplink_bytes=counters.get("bytes_up", 0))
    row.update(log_phases(proc.stderr, t0))
    said = re.search(r"stored #\d+: (\w+), first view ([\d.]+) KB in ([\d.]+) s", proc.stderr)
    if said:
        row.update(kind=said.group(1), share_said_s=float(said.group(3)))
    if proc.returncode:
        row["error"] = f"share exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:200]}"
    res = watcher.result
    if "error" in res:
        row.setdefault("error", res["error"])
    if "first_view_at" in res:
        row.update(
            image=res["image"],
            first_bytes=res["first_bytes"],
            first_plain_bytes=res["first_plain_bytes"],
            first_sha=res["first_sha"],
            first_label=res["first_label"],
            doctor_message_s=round(res["message_at"] - t0, 3),
            ttfv_s=round(res["first_view_at"] - t0, 3),
        )
        if row.get("upload_s"):
            row["goodput_bps"] = round(res["first_bytes"] / row["upload_s"])
        if "prepared" in row:
            wire_s = res["first_bytes"] * 8 / (LINKS[link].up_kbit * 1000) if LINKS[link].up_kbit else 0.0
            row["rest_s"] = round(row["ttfv_s"] - row["prepared"] - wire_s, 3)
    elif "error" not in row:
        row["error"] = "the doctor never got the first view"
    return row


# --- detail: tiles by region ------------------------------------------------------------------


def regions_for(item: Item, width: int, height: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """What the doctor asks for at native resolution: every slice of the film (its 4x3
    cells), the centre quarter of the others, the whole of a small slice."""
    if item.name == "ct_film":
        cols, rows = FILM_GRID
        cw, ch = width // cols, height // rows
        return [
            (f"slice {r * cols + c + 1}", (c * cw, r * ch, cw, ch)) for r in range(rows) for c in range(cols)
        ]
    if width * height <= 512 * 512:
        return [("whole", (0, 0, width, height))]
    return [("centre quarter", (width // 4, height // 4, width // 2, height // 2))]


async def _image_info(
    home: Path, image_id: str, regions: list[tuple[int, int, int, int]] | None
) -> dict[str, Any]:
    """What the doctor's device knows of an image (no link): detail size and, for ``regions``,
    the exact tile bytes of each at native resolution (from the cached manifest)."""
    from medcomm.core.tiles import TILES, Region
    from medcomm.session import imagefetch
    from medcomm.session.service import Session

    async with Session.open(home=home, connect=False) as s:
        loc = imagefetch.locate_image(s, image_id)
        d = loc.info.detail
        out: dict[str, Any] = {"first": loc.info.first.label, "first_bytes": loc.info.first.size}
        if d is None:
            return out
        out.update(width=d.width, height=d.height, tiles=d.tiles, tile_bytes=d.tile_bytes, codec=d.codec)
        if regions:
            manifest = await imagefetch.fetch_manifest(s, loc, 5)
            assert manifest is not None, "the manifest is not cached"
            table, pyr, sizes = manifest.lookup(), d.pyramid, []
            for x, y, w, h in regions:
                r = pyr.clip(Region(x, y, w, h))
                ids = pyr.tiles_for_region(r, (min(r.w, TILES.max_view_side), min(r.h, TILES.max_view_side)))
                sizes.append((len(ids), sum(table[t].size for t in ids)))
            out["region_tiles"] = sizes
        return out


def detail_run(rig: Rig, shared: list[tuple[Item, str]], work: Path) -> list[dict[str, Any]]:
    """Upload every detail over a clean link, then fetch the first views and the regions as
    the doctor, with the CLI."""
    rig.link("amina", "clean")
    synced = medcomm("sync", "--timeout", "300", home=rig.clinic, timeout=360)
    if synced.returncode:
        raise RuntimeError(f"sync of the detail failed: {synced.stderr.strip()[-200:]}")
    rows = []
    for item, image_id in shared:
        row: dict[str, Any] = {"item": item.name, "image": image_id, "regions": []}
        first = work / f"{item.name}-first.png"
        got = medcomm("fetch", rig.consult, image_id, "--out", str(first), home=rig.doctor)
        if got.returncode:
            row["error"] = f"fetch of the first view: {got.stderr.strip()[-200:]}"
            rows.append(row)
            continue
        row["first_png"] = str(first)
        info = asyncio.run(_image_info(rig.doctor, image_id, None))
        row.update(info)
        regions = regions_for(item, info["width"], info["height"])
        for name, (x, y, w, h) in regions:
            out = work / f"{item.name}-{name.replace(' ', '')}.png"
            fetched = medcomm(
                "fetch",
                rig.consult,
                image_id,
                "--region",
                f"{x},{y},{w},{h}",
                "--out",
                str(out),
                home=rig.doctor,
            )
            said = re.search(r"from (\d+) of (\d+) tiles \(([\d.]+) KB\)", fetched.stderr)
            row["regions"].append(
                {
                    "name": name,
                    "box": [x, y, w, h],
                    "png": str(out),
                    "exit": fetched.returncode,
                    "cli_kb": float(said.group(3)) if said else None,
                }
            )
        exact = asyncio.run(_image_info(rig.doctor, image_id, [tuple(r["box"]) for r in row["regions"]]))
        for r, (n, size) in zip(row["regions"], exact["region_tiles"], strict=True):
            r.update(tiles=n, bytes=size)
        rows.append(row)
    rig.unlink("amina")
    return rows


def ssim_regions(rows: list[dict[str, Any]]) -> None:
    """SSIM of every fetched region against the same region of the sender's corrected
    picture, made again here exactly as ``share`` makes it."""
    from PIL import Image

    from medcomm.session.images import make

    by_name = {i.name: i for i in ITEMS}
    for row in rows:
        if "error" in row:
            continue
        item = by_name[row["item"]]
        ref = make(CORPUS / item.file, item.kind).prepared.image
        if ref.size != (row["width"], row["height"]):
            row["error"] = (
                f"the corrected picture here is {ref.size}, the detail {row['width']}x{row['height']}"
            )
            continue
        for r in row["regions"]:
            if r["exit"] != 0:
                continue
            x, y, w, h = r["box"]
            with Image.open(r["png"]) as got:
                r["ssim"] = round(im.ssim(got, ref.crop((x, y, x + w, y + h))), 4)


# --- legibility and the alternatives ----------------------------------------------------------


def jpeg_1600(src: Path, out: Path) -> Path:
    """What a user sends instead: the photo upright, 1600 px on its long side, JPEG q80."""
    from PIL import Image, ImageOps

    with Image.open(src) as pic:
        small = ImageOps.exif_transpose(pic).convert("RGB")
    small.thumbnail((JPEG_SIDE, JPEG_SIDE), Image.Resampling.LANCZOS)
    small.save(out, "JPEG", quality=JPEG_QUALITY)
    return out


def ocr_all(
    jobs: list[tuple[str, str, Path, str]],
    truth: dict[str, Any],
    psms: tuple[str, ...],
    sent_bytes: dict[tuple[str, str], int],
) -> list[dict[str, Any]]:
    """(report, picture, path, lang) -> values found, best page segmentation of ``psms``;
    two tesseract processes at a time (after every timed part: they would steal its CPU)."""

    def one(job: tuple[str, str, Path, str], psm: str) -> tuple[str, str, im.Found]:
        report, picture, path, lang = job
        return report, picture, im.values_found(truth[report]["values"], im.ocr(path, lang, psm))

    with ThreadPoolExecutor(2) as ex:
        futures = [(job, psm, ex.submit(one, job, psm)) for job in jobs for psm in psms]
        scores: dict[tuple[str, str], list[tuple[im.Found, str]]] = {}
        for job, psm, fut in futures:
            _, _, found = fut.result()
            scores.setdefault((job[0], job[1]), []).append((found, psm))
    out = []
    for report, picture, path, lang in jobs:
        found, psm = max(scores[(report, picture)], key=lambda fp: (fp[0].found, -int(fp[1])))
        out.append(
            {
                "report": report,
                "picture": picture,
                "bytes": sent_bytes.get((report, picture), path.stat().st_size),
                "lang": lang,
                "found": found.found,
                "total": found.total,
                "missing": list(found.missing),
                "psm": psm,
                "by_psm": {p: f.found for f, p in scores[(report, picture)]},
            }
        )
    return out


async def _upload_blob(
    home: Path, consult: str, data: bytes, on_ack: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """One blob up through the clinic's current link, from opening the session (the connect is
    part of what a send costs) to the relay's last acknowledgement."""
    from medcomm.session.service import Session
    from medcomm.session.transfer import upload

    sha = hashlib.sha256(data).digest()
    t0 = time.monotonic()
    acks = {"n": 0}

    def progress(done: int, total: int) -> None:
        if done < total:
            acks["n"] += 1
            if on_ack is not None:
                on_ack(acks["n"])

    async with Session.open(home=home, subscribe=False) as s:
        report = await upload(s.link, consult, sha, data, timeout=600, progress=progress, fresh=True)
        seconds = time.monotonic() - t0
        connects = s.link.status.connects
    seen: dict[int, int] = {}
    for off in report.offsets:
        seen[off] = seen.get(off, 0) + 1
    twice = [off for off, n in seen.items() if n > 1]
    return {
        "seconds": round(seconds, 2),
        "bytes": len(data),
        "chunks": report.chunks,
        "rounds": report.rounds,
        "heads": report.heads,
        "connects": connects,
        "chunks_twice": sum(seen[o] - 1 for o in twice),
        "bytes_twice": sum((seen[o] - 1) * min(CHUNK, len(data) - o) for o in twice),
    }


def send_for_real(rig: Rig, link: str, path: Path) -> dict[str, Any]:
    """A file sent as it is (the alternative), as a blob through the same relay and link."""
    rig.link("amina", link)
    try:
        out = asyncio.run(_upload_blob(rig.clinic, rig.consult, path.read_bytes()))
    finally:
        out_counters = rig.unlink("amina")
    out["uplink_bytes"] = out_counters.get("bytes_up", 0)
    return out


# --- cuts -------------------------------------------------------------------------------------


async def _connect_only(home: Path) -> None:
    from medcomm.session.service import Session

    async with Session.open(home=home, subscribe=False) as s:
        await s.link.wait_until(lambda: s.link.status.state == "online", 30)


def cut_run(rig: Rig, link: str, size: int, seed: int) -> dict[str, Any]:
    """The same-sized blob up with and without 3 cuts; what crossed the link twice."""
    from medcomm.core import wire

    rng = random.Random(seed)
    chunk_s = CHUNK * 8 / (LINKS[link].up_kbit * 1000)
    rig.link("amina", link)
    asyncio.run(_connect_only(rig.clinic))
    handshake = rig.unlink("amina").get("bytes_up", 0)
    rig.link("amina", link)
    base = asyncio.run(_upload_blob(rig.clinic, rig.consult, rng.randbytes(size)))
    base["uplink_bytes"] = rig.unlink("amina").get("bytes_up", 0)
    badlink = rig.link("amina", link)
    cut_after = {1, 3, 5}
    cuts: list[float] = []

    def on_ack(n: int) -> None:  # a random moment into the next chunk's transmission
        if n in cut_after:
            cut_after.discard(n)
            delay = rng.uniform(0.1, 0.9) * chunk_s
            cuts.append(round(delay, 2))
            asyncio.get_running_loop().call_later(delay, badlink.cut)

    cut = asyncio.run(_upload_blob(rig.clinic, rig.consult, rng.randbytes(size), on_ack))
    cut["uplink_bytes"] = rig.unlink("amina").get("bytes_up", 0)
    head = wire.encode(
        wire.Request(99, "blob.head", {"consult": rig.consult, "sha": b"\0" * 32, "size": size})
    )
    head_bytes = len(head) + 6  # + the WebSocket header of a masked client frame
    n = len(cuts)
    extra = cut["uplink_bytes"] - base["uplink_bytes"]
    resent = extra - n * (handshake + head_bytes)
    return {
        "link": link,
        "size": size,
        "cuts": n,
        "cut_delays_s": cuts,
        "handshake_bytes": handshake,
        "head_bytes": head_bytes,
        "base": base,
        "cut": cut,
        "extra_uplink_bytes": extra,
        "resent_bytes": resent,
        "resent_per_cut": round(resent / n) if n else None,
    }


# --- printing ---------------------------------------------------------------------------------


def kb(n: float | None) -> str:
    return "-" if n is None else f"{n / KIB:.1f} KB"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def print_shares(rows: list[dict[str, Any]]) -> None:
    print("\n== first view: `medcomm share` start -> the doctor holds the first view (seconds from start) ==")
    print("  sizes are on-the-wire bytes: sealed blobs (the picture + 41 B of secretstream header and tag)")
    print(
        f"{'picture':<10} {'link':<5} {'original':>10} {'first view':>10} {'as':<16} {'prepared':>9} "
        f"{'upload':>7} {'stored':>7} {'DOCTOR':>7} {'exit':>6} {'uplink':>9} {'goodput':>9} {'rest':>6}"
    )
    for r in rows:
        if "ttfv_s" not in r:
            print(f"{r['item']:<10} {r['link']:<5} FAILED: {r.get('error', '?')}")
            continue
        print(
            f"{r['item']:<10} {r['link']:<5} {kb(r['original_bytes']):>10} {kb(r['first_bytes']):>10} "
            f"{r['first_label']:<16} {secs(r.get('prepared')):>9} {secs(r.get('upload_s')):>7} "
            f"{secs(r.get('stored')):>7} {secs(r['ttfv_s']):>7} {secs(r['share_exit_s']):>6} "
            f"{kb(r['uplink_bytes']):>9} {r.get('goodput_bps', 0) * 8 / 1000:>6.1f} kb/s "
            f"{secs(r.get('rest_s')):>6}"
        )
    print(
        "  prepared = process start + decode + straighten + first view fitted (log 'image prepared'); "
        "upload = the first view's puts (no head: just made); stored = the relay acknowledged the message "
        "(sent right behind the last chunk); DOCTOR = the doctor's session has the message and the first "
        "view verified in its cache (time to first view); exit = `medcomm share` exited; uplink = all bytes "
        "the clinic's link carried up (connect, first view, message); goodput = first-view bytes / upload "
        "time; rest = DOCTOR - prepared - (first view bytes at the link's nominal uplink rate): recording, "
        "round trips, the message, the relay's commit and the doctor's download"
    )


def print_ocr(rows: list[dict[str, Any]], psms: tuple[str, ...]) -> None:
    print(f"\n== legibility: truth.json result values found by tesseract (best of --psm {','.join(psms)}) ==")
    print(f"{'report':<10} {'picture':<28} {'bytes':>10} {'found':>7}  psm  missing")
    for r in rows:
        print(
            f"{r['report']:<10} {r['picture']:<28} {kb(r['bytes']):>10} {r['found']:>3}/{r['total']:<3}  "
            f"{r['psm']:>3}  {' '.join(r['missing']) or '-'}"
        )
    print(
        "  numbers normalised: NFKC (full-width digits), any of , · • ． 。 between digits -> '.', no letter "
        "read as a digit; a value counts when it appears as a whole number (as often as listed)"
    )


def print_alternatives(alts: list[dict[str, Any]]) -> None:
    print("\n== what a user would send instead, same links (delivery to the relay) ==")
    print(
        f"{'report':<10} {'link':<5} {'medcomm first view':<28} {'original photo':<28} "
        f"{'1600-px JPEG q80':<40}"
    )
    for a in alts:
        real = a.get("jpeg_real")
        jpeg_time = f">={a['jpeg_min_s']:.0f} s" + (f" (sent: {real['seconds']:.0f} s)" if real else "")
        orig = f">={a['orig_min_s']:.0f} s, {kb(a['orig_bytes'])}, {a['orig_ocr']}"
        print(
            f"{a['report']:<10} {a['link']:<5} "
            f"{secs(a.get('ttfv_s')) + ', ' + kb(a.get('first_bytes')) + ', ' + a['first_ocr']:<28} "
            f"{orig:<28} "
            f"{jpeg_time + ', ' + kb(a['jpeg_bytes']) + ', ' + a['jpeg_ocr']:<40}"
        )
    print(
        "  '>=' = bytes at the link's nominal uplink rate (no framing, no round trips, no stalls); 'sent' = "
        "the file sent for real as a blob over the same link, from connect to the relay's last answer"
    )


def print_detail(rows: list[dict[str, Any]]) -> None:
    print("\n== detail: tiles fetched by region at native resolution (`medcomm fetch --region`) ==")
    print(
        f"{'picture':<10} {'detail':<18} {'all tiles':>16} {'region':<16} {'tiles':>5} {'bytes':>9} "
        f"{'CLI':>8} {'SSIM':>7}"
    )
    for row in rows:
        if "error" in row and not row.get("regions"):
            print(f"{row['item']:<10} FAILED: {row['error']}")
            continue
        head = f"{row['width']}x{row['height']} {row['codec']}"
        every = f"{row['tiles']} / {kb(row['tile_bytes'])}"
        for i, r in enumerate(row["regions"]):
            cli = "-" if r.get("cli_kb") is None else f"{r['cli_kb']:.1f}"
            print(
                f"{row['item'] if i == 0 else '':<10} {head if i == 0 else '':<18} "
                f"{every if i == 0 else '':>16} "
                f"{r['name']:<16} {r.get('tiles', 0):>5} {kb(r.get('bytes')):>9} {cli:>8} "
                f"{r.get('ssim', float('nan')):>7.4f}"
            )
        if row.get("error"):
            print(f"  {row['item']}: {row['error']}")
    print(
        "  bytes = the region's tiles as sealed blobs on the wire (exact, manifest); CLI = what `fetch` "
        "printed (KB of 1000); SSIM = "
        "gaussian 11x11 sigma 1.5 on grey, against the same region of the sender's corrected picture"
    )


def print_cuts(c: dict[str, Any]) -> None:
    b, k = c["base"], c["cut"]
    print(f"\n== cuts: a {c['size'] // KIB} KiB blob over {c['link']}, without and with {c['cuts']} cuts ==")
    print(
        f"{'run':<9} {'seconds':>8} {'connects':>9} {'chunks':>7} {'heads':>6} {'written twice':>14} "
        f"{'uplink':>10}"
    )
    for name, r in (("no cut", b), (f"{c['cuts']} cuts", k)):
        print(
            f"{name:<9} {r['seconds']:>8.1f} {r['connects']:>9} {r['chunks']:>7} {r['heads']:>6} "
            f"{str(r['chunks_twice']) + ' chunks':>14} {r['uplink_bytes']:>10}"
        )
    print(
        f"  extra uplink {c['extra_uplink_bytes']} B = {c['cuts']} x (reconnect {c['handshake_bytes']} B "
        f"+ head "
        f"{c['head_bytes']} B) + re-sent {c['resent_bytes']} B -> {c['resent_per_cut']} B per cut "
        f"(cuts {c['cut_delays_s']} s into a chunk); 'written twice' counts chunks the client wrote again, "
        "which includes the window still queued behind the cut chunk (never sent over the link)"
    )


def targets(report: dict[str, Any]) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    shares = report["shares"]
    ocr = {(r["report"], r["picture"]): r for r in report["ocr"]}
    for r in shares:
        if r["item"].startswith("report"):
            fb = r.get("first_bytes")
            out.append(
                (
                    fb is not None and fb <= REPORT_FIRST_MAX,
                    f"{r['item']} first view {kb(fb)} <= 20 KB ({r['link']})",
                )
            )
            t, limit = r.get("ttfv_s"), TTFV_MAX.get(r["link"])
            if limit is not None:
                out.append(
                    (
                        t is not None and t <= limit,
                        f"{r['item']} time to first view {secs(t)} <= {limit:g} s on {r['link']}",
                    )
                )
        if r["item"] == "ct_slice":
            fb = r.get("first_bytes")
            out.append(
                (
                    fb is not None and fb <= SLICE_FIRST_MAX,
                    f"DICOM slice first view {kb(fb)} <= 10 KB ({r['link']})",
                )
            )
    for name in dict.fromkeys(r["report"] for r in report["ocr"]):
        first, orig = ocr.get((name, "medcomm first view")), ocr.get((name, "original photo"))
        if first and orig:
            out.append(
                (
                    first["found"] >= orig["found"],
                    f"{name} OCR values in the first view {first['found']}/{first['total']} >= "
                    f"original photo {orig['found']}/{orig['total']}",
                )
            )
    for row in report["detail"]:
        if row["item"] == "ct_film":
            sizes = [r.get("bytes") for r in row["regions"]]
            worst = max((s for s in sizes if s is not None), default=None)
            ok = worst is not None and len(sizes) == FILM_GRID[0] * FILM_GRID[1] and worst <= FILM_SLICE_MAX
            out.append(
                (
                    ok,
                    f"CT film: any single slice at native resolution {kb(worst)} "
                    f"(largest of {len(sizes)}) <= 40 KB",
                )
            )
    c = report.get("cuts")
    if c:
        per = c.get("resent_per_cut")
        ok = per is not None and c["cuts"] == 3 and per <= CUT_MAX
        out.append((ok, f"a cut costs {per} B re-sent <= 1 chunk ({CHUNK} B), {c['cuts']} cuts"))
    return out


# --- main -------------------------------------------------------------------------------------


def guarded(what: dict[str, Any], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or ``what`` with the error: one failed run is reported, the others run."""
    try:
        return fn(*args)
    except Exception as exc:  # one failed run is reported, the others still run
        print(f"  {what}: FAILED {type(exc).__name__}: {exc}"[:300], flush=True)
        return {**what, "error": f"{type(exc).__name__}: {exc}"[:300]}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--links", default=None, help="comma-separated badlink profiles for the clinic (edge,gprs)"
    )
    p.add_argument(
        "--images", default="", help=f"comma-separated subset of {','.join(i.name for i in ITEMS)}"
    )
    p.add_argument(
        "--quick", action="store_true", help=f"edge only, {','.join(QUICK_ITEMS)}, --psm 6, no real JPEG send"
    )
    p.add_argument("--cut-kib", type=int, default=64, help="size of the blob of the cut test (KiB)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--keep", type=Path, help="work in this dir and keep it (pictures, logs, databases)")
    args = p.parse_args(argv)
    t_start = time.monotonic()
    links = args.links.split(",") if args.links else ["edge"] if args.quick else ["edge", "gprs"]
    names = (
        args.images.split(",")
        if args.images
        else list(QUICK_ITEMS if args.quick else (i.name for i in ITEMS))
    )
    psms = QUICK_PSMS if args.quick else PSMS
    unknown = [x for x in links if x not in LINKS] + [n for n in names if n not in {i.name for i in ITEMS}]
    if unknown:
        print(f"unknown link or picture: {', '.join(unknown)}")
        return 2
    items = [i for i in ITEMS if i.name in names]
    truth = json.loads((CORPUS / "truth.json").read_text())
    load0 = os.getloadavg()[0]
    print(
        f"what ran: `medcomm share` of {len(items)} corpus pictures over {', '.join(links)}; the clinic "
        "behind "
        "its own scripts/badlink (restarted per share, stalls and drops off), the doctor behind a clean one, "
        f"one relay per link; {os.cpu_count()} cores, load average {load0:.1f} at the start",
        flush=True,
    )
    for i in items:
        print(f"  {i.name}: {i.file} ({kb((CORPUS / i.file).stat().st_size)}) --as {i.kind}")
    print(f"  links: {'; '.join(link_text(x) for x in dict.fromkeys([*links, 'clean']))}")
    print(
        "  time to first view = wall clock from starting `medcomm -v share FILE --as KIND --detail later` to "
        "the doctor's session holding the image message and its first view, downloaded and SHA-256-verified "
        "(then `medcomm fetch` of it needs no link); the tiles and the original go up afterwards over a "
        "clean "
        "link (not timed)",
        flush=True,
    )
    report: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_start": load0,
        "args": {k: str(v) for k, v in vars(args).items()},
        "shares": [],
        "detail": [],
        "ocr": [],
        "alternatives": [],
        "cuts": None,
    }
    with tempfile.TemporaryDirectory(prefix="medcomm-images-") as tmp:
        root = Path(tmp)
        if args.keep:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        work = root / "pictures"
        work.mkdir(exist_ok=True)
        jpeg_real: dict[str, Any] | None = None
        for n, link in enumerate(links):
            rig = Rig(root / link, args.seed + 100 * n)
            try:
                rig.start()
                shared: list[tuple[Item, str]] = []
                for item in items:
                    row = guarded({"item": item.name, "link": link}, share_run, rig, item, link)
                    report["shares"].append(row)
                    print(
                        f"  {item.name} over {link}: "
                        + (
                            f"first view {kb(row.get('first_bytes'))}, doctor has it at {secs(row['ttfv_s'])}"
                            if "ttfv_s" in row
                            else f"FAILED {row.get('error')}"
                        ),
                        flush=True,
                    )
                    if n == 0 and row.get("image"):
                        shared.append((item, row["image"]))
                if n == 0:
                    report["detail"] = guarded({"item": "detail"}, detail_run, rig, shared, work)
                    if isinstance(report["detail"], dict):
                        report["detail"] = [report["detail"]]
                    report["cuts"] = guarded(
                        {"link": link}, cut_run, rig, link, args.cut_kib * KIB, args.seed
                    )
                    if not args.quick and any(i.name == "report_en" for i in items):
                        jpeg = jpeg_1600(CORPUS / "report_en_photo.jpg", work / "report_en_1600.jpg")
                        jpeg_real = guarded({"link": link}, send_for_real, rig, link, jpeg)
                        if jpeg_real is not None:
                            jpeg_real["link"] = link
            finally:
                rig.close()
        # CPU-heavy parts last: they would disturb the timings
        ssim_regions([r for r in report["detail"] if "regions" in r])
        jobs: list[tuple[str, str, Path, str]] = []
        firsts = {r["item"]: Path(r["first_png"]) for r in report["detail"] if r.get("first_png")}
        for item in items:
            if not item.lang:
                continue
            jpeg = work / f"{item.name}_1600.jpg"
            if not jpeg.exists():
                jpeg_1600(CORPUS / item.file, jpeg)
            jobs.append((item.name, "original photo", CORPUS / item.file, item.lang))
            if item.name in firsts:
                jobs.append((item.name, "medcomm first view", firsts[item.name], item.lang))
            jobs.append((item.name, f"{JPEG_SIDE}-px JPEG q{JPEG_QUALITY}", jpeg, item.lang))
            jobs.append((item.name, "clean scan (reference)", CORPUS / item.scan, item.lang))
        sent = {
            (r["item"], "medcomm first view"): r["first_bytes"]
            for r in report["detail"]
            if "first_bytes" in r
        }
        report["ocr"] = ocr_all(jobs, truth, psms, sent) if jobs else []
        ocr = {(r["report"], r["picture"]): r for r in report["ocr"]}

        def score(name: str, picture: str) -> str:
            r = ocr.get((name, picture))
            return "-" if r is None else f"{r['found']}/{r['total']}"

        for r in report["shares"]:
            if not r["item"].startswith("report"):
                continue
            jpeg = work / f"{r['item']}_1600.jpg"
            rate = LINKS[r["link"]].up_kbit * 1000 / 8
            alt = {
                "report": r["item"],
                "link": r["link"],
                "ttfv_s": r.get("ttfv_s"),
                "first_bytes": r.get("first_bytes"),
                "first_ocr": score(r["item"], "medcomm first view"),
                "orig_bytes": r["original_bytes"],
                "orig_min_s": r["original_bytes"] / rate,
                "orig_ocr": score(r["item"], "original photo"),
                "jpeg_bytes": jpeg.stat().st_size if jpeg.exists() else 0,
                "jpeg_min_s": (jpeg.stat().st_size if jpeg.exists() else 0) / rate,
                "jpeg_ocr": score(r["item"], f"{JPEG_SIDE}-px JPEG q{JPEG_QUALITY}"),
            }
            if (
                jpeg_real
                and "error" not in jpeg_real
                and jpeg_real["link"] == r["link"]
                and r["item"] == "report_en"
            ):
                alt["jpeg_real"] = jpeg_real
            report["alternatives"].append(alt)
    print_shares(report["shares"])
    if report["ocr"]:
        print_ocr(report["ocr"], psms)
    if report["alternatives"]:
        print_alternatives(report["alternatives"])
    if report["detail"]:
        print_detail(report["detail"])
    if report["cuts"] and "error" not in report["cuts"]:
        print_cuts(report["cuts"])
    checks = targets(report)
    report["targets"] = [{"ok": ok, "check": text} for ok, text in checks]
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    print(
        f"\n== targets ({sum(ok for ok, _ in checks)}/{len(checks)} met; run took {report['wall_s']:.0f} s; "
        f"load average {os.getloadavg()[0]:.1f} at the end) =="
    )
    for ok, text in checks:
        print(f"  {'✓' if ok else '✗'} {text}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if checks and all(ok for ok, _ in checks) else 1

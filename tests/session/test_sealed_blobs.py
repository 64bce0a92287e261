"""What the relay holds of a shared report photo, a DICOM slice and a voice note: sealed blobs
only. A real relay on loopback; afterwards every file in its blob folder (and its blob
metadata) is read and searched for plaintext: slices of the first view, a tile and the
original as the doctor opened them, the Ogg capture pattern, the caption, the DICOM patient
name. And what the clinic's device sent outside message bodies (the ``blob.*`` requests) is
searched for the same."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from medcomm.adapters.blobcache import BlobCache
from medcomm.core import filecrypt, wire
from medcomm.core.tiles import Region, TileId
from medcomm.session import imagefetch, images
from medcomm.session.service import Session
from medcomm.session.transfer import fetch_note, record_note, send_pending_notes
from tests.harness.relay import RelayProcess

pytestmark = pytest.mark.timeout(120)
CANARY = "CANARY-7f3e caption: Hb 6.1 g/dL, Thandiwe Mokoena"
BLOB_ARGS = {"consult", "sha", "size", "offset", "data", "length"}


def report_photo(path: Path) -> bytes:
    """A phone photo of a printed page on a desk (small: the test stays fast)."""
    from tests.integration.test_share_cli import report_photo as photo

    photo(path, 1000, 760, seed=3)
    return path.read_bytes()


def tone_note(seconds: float) -> bytes:
    from medcomm.adapters.oggopus import encode_note

    t = np.arange(int(seconds * 48000)) / 48000
    return encode_note((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16))


def slices(data: bytes, n: int = 4, width: int = 32) -> list[bytes]:
    """``n`` slices of ``width`` bytes spread over ``data``, each varied enough (16 distinct
    byte values) to be that file's own bytes, not a run of zeros any file may hold."""
    step = max(1, (len(data) - width) // n)
    out = []
    for start in range(0, len(data) - width, step):
        at = next(
            (
                i
                for i in range(start, min(start + step, len(data) - width))
                if len(set(data[i : i + width])) >= 16
            ),
            None,
        )
        if at is not None:
            out.append(data[at : at + width])
    assert len(out) >= min(n, 2), "no distinctive bytes to look for"
    return out


def relay_files(relay: RelayProcess) -> dict[Path, bytes]:
    """Every file of the relay's blob folder, partial uploads included, and its blob metadata."""
    found = {p: p.read_bytes() for p in (relay.data / "blobs").rglob("*") if p.is_file()}
    found.update({p: p.read_bytes() for p in relay.data.glob("blobs.sqlite3*") if p.is_file()})
    return found


async def test_the_relay_holds_only_ciphertext_of_images_and_notes(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    nurse, doctor, consult = pair
    photo = report_photo(tmp_path / "cbc.jpg")
    dicom_path = Path(get_testdata_file("CT_small.dcm"))
    patient = str(dcmread(dicom_path).PatientName).split("^")[0].encode()
    assert len(patient) >= 8 and patient in dicom_path.read_bytes()
    ogg = tone_note(2.0)
    assert ogg.startswith(b"OggS")

    requests: list[wire.Request] = []
    async with Session.open(home=nurse, subscribe=False) as s:
        write = s.link._send_frames

        async def logged(frames: list[wire.Frame]) -> None:
            requests.extend(f for f in frames if isinstance(f, wire.Request) and f.op.startswith("blob."))
            await write(frames)

        s.link._send_frames = logged  # type: ignore[method-assign]
        report = await images.share(
            s, consult, tmp_path / "cbc.jpg", as_kind="report", caption=CANARY, send_original=True, timeout=60
        )
        slice_ = await images.share(s, consult, dicom_path, caption=CANARY, send_original=True, timeout=60)
        done = await images.send_pending_images(s, 60)
        assert sorted(done.finished) == sorted([report.cid, slice_.cid]) and done.left == 0
        note = record_note(s, consult, ogg)
        with BlobCache(nurse) as cache:
            kept = cache.read(note.sha)
        assert not kept.startswith(b"OggS") and filecrypt.plain_size(len(kept)) == len(ogg)
        assert [i.cid for i in (await send_pending_notes(s, 30)).queued] == [note.cid]
        await s.flush(20)

    async with Session.open(home=doctor) as s:
        await s.sync(20)
        loc = imagefetch.locate_image(s, report.cid.hex())
        assert loc.info.key is not None and loc.info.caption == CANARY
        first = await imagefetch.fetch_first(s, loc, 20)
        assert imagefetch.decode_image(first).size == (loc.info.first.width, loc.info.first.height)
        assert len(first) + 41 == loc.info.first.size  # the message names the sealed blob
        original = await imagefetch.fetch_original(s, loc, 20)
        assert original == photo and hashlib.sha256(original).digest() == loc.info.original.sha
        assert loc.info.original.parts[0].sha != loc.info.original.sha
        manifest = await imagefetch.fetch_manifest(s, loc, 20)
        assert manifest is not None
        region = await imagefetch.fetch_region(s, loc, Region(0, 0, 512, 512), None, 20)
        assert region.missing == [] and TileId(0, 0, 0) in region.tiles
        with BlobCache(doctor) as cache:  # the doctor's cache holds what the relay does: sealed
            tile = filecrypt.open(loc.info.key, cache.read(manifest.lookup()[TileId(0, 0, 0)].sha))
        dicom = imagefetch.locate_image(s, slice_.cid.hex())
        assert await imagefetch.fetch_original(s, dicom, 20) == dicom_path.read_bytes()
        played = await fetch_note(s, note.cid.hex(), timeout=20)
        assert played == ogg
        assert await fetch_note(s, note.sha.hex(), timeout=20) == ogg  # by its blob id: the key from history

    plain = [*slices(first), *slices(tile, 2), *slices(photo), *slices(dicom_path.read_bytes())]
    named = {b"OggS": "the Ogg capture pattern", CANARY.encode(): "the caption", patient: "the patient name"}
    named |= {x: "a plaintext slice" for x in plain}
    files = relay_files(relay)
    stored = [d for p, d in files.items() if len(p.name) == 64]  # blobs/<2>/<64>: complete blobs
    assert len(stored) >= 4 and sum(map(len, stored)) > len(photo)  # they are there, sealed
    for path, data in files.items():
        for needle, what in named.items():
            assert needle not in data, f"{what} in the relay's {path.relative_to(relay.data)}"

    # outside message bodies the clinic sent blob requests only: ids, sizes, offsets, sealed bytes
    assert {f.op for f in requests} <= {"blob.put", "blob.head"} and len(requests) > len(stored)
    for f in requests:
        assert set(f.args) <= BLOB_ARGS, f.args.keys()
        raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in f.args.values())
        for needle in named:
            assert needle not in raw

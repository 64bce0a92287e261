"""Image sends and fetches against a real relay process: first view, detail by region,
originals, crash and offline recovery, resumption, locks, pins, DICOM and multi-part files.

Small generated pictures keep every test to a few seconds; the relay is real (loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from medcomm.adapters.blobcache import BlobCache, CacheLimits
from medcomm.core import filecrypt, wire
from medcomm.core.tiles import Region, TileId
from medcomm.errors import LinkDown, NotFound, WireError
from medcomm.session import imagefetch, images
from medcomm.session.service import Session
from tests.harness.relay import RelayProcess

pytestmark = pytest.mark.timeout(60)


def photo(path: Path, w: int = 1300, h: int = 700, seed: int = 0) -> bytes:
    """A smooth colour picture with sharp marks: a stand-in for a wound photo (kind photo:
    no correction, so the tile source is the file's own pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack(
        [128 + 100 * np.sin(xx / 97 + seed), 128 + 100 * np.cos(yy / 61), 128 + 60 * np.sin((xx + yy) / 151)],
        axis=2,
    )
    im = Image.fromarray(np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for i in range(12):
        d.rectangle((100 * i + 10, 50 + 40 * (i % 5), 100 * i + 40, 80 + 40 * (i % 5)), fill=(20, 20, 20))
    im.save(path, "PNG")
    return path.read_bytes()


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def rows(home: Path) -> list[images.PendingImage]:
    with BlobCache(home) as cache:
        cache.db.executescript(images.SCHEMA)
        return images.pending_images(cache, include_failed=True)


async def test_shared_photo_reaches_the_doctor_as_first_view_region_and_original(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    photo(tmp_path / "wound.png")
    steps: list[tuple[str, int, int]] = []
    recorded: list[bytes] = []
    on_wire: list[tuple[str, bytes, int]] = []  # frames in the order they were written
    async with Session.open(home=nurse, subscribe=False) as s:
        write = s.link._send_frames

        async def logged(frames: list[wire.Frame]) -> None:
            for f in frames:
                if isinstance(f, wire.Request) and f.op in ("blob.head", "blob.put"):
                    end = f.args["offset"] + len(f.args["data"]) if f.op == "blob.put" else 0
                    on_wire.append((f.op, f.args["sha"], end))
                elif isinstance(f, wire.Send):
                    on_wire.append(("send", f.cid, 0))
            await write(frames)

        s.link._send_frames = logged  # type: ignore[method-assign]
        shared = await images.share(
            s,
            consult,
            tmp_path / "wound.png",
            as_kind="photo",
            caption="left shin",
            timeout=30,
            step=lambda *a: steps.append(a),
            on_recorded=lambda p: recorded.append(p.cid),
        )
        assert recorded == [shared.cid] and shared.seq >= 2 and shared.kind == "photo"
        (row,) = rows(nurse)
        first = row.plan.first
        # the first view was just made: no head; its chunks, then the message right behind the
        # last one on the same connection (the relay reads in order: it has the first view
        # before it stores the message), and nothing of the first view after it
        assert not any(op == "blob.head" and sha == first.sha for op, sha, _ in on_wire)
        ours = [(op, end) for op, sha, end in on_wire if sha in (first.sha, shared.cid)]
        assert first.size > 8 * 1024 and ours[-1] == ("send", 0) and ours[-2] == ("blob.put", first.size)
        assert [op for op, _ in ours].count("send") == 1
        assert 2000 < shared.first_bytes <= 25 * 1024  # the photo budget
        assert row.stage == images.QUEUED and row.done == 0  # the detail waits: share is done
        # the detail is pinned: a cache squeezed to nothing keeps everything still to upload
        with BlobCache(nurse, CacheLimits(max_cache_bytes=0)) as cache:
            cache.trim()
            assert all(cache.has(r.sha) for r in row.uploads)
        result = await images.send_pending_images(s, 30, step=lambda *a: steps.append(a))
        assert result.finished == [shared.cid] and result.left == 0 and result.busy == 0
        assert rows(nurse) == []
        with BlobCache(nurse, CacheLimits(max_cache_bytes=0)) as cache:
            cache.trim()  # uploaded: no longer pinned, the cache may let them go
            assert not any(cache.has(r.sha) for r in row.uploads)
            # not the original: it was not sent, and stays here (pinned) until someone asks
            (part,) = row.plan.original.parts  # sealed: one blob, not the file's own hash
            assert part.sha != row.plan.original.sha and part.sha not in {r.sha for r in row.uploads}
            assert cache.has(part.sha)
    ends = {st: (d, t) for st, d, t in steps}
    assert ends["prepare"] == (1, 1) and ends["first view"] == (shared.first_bytes,) * 2
    assert ends["tiles"] == (9, 9) and ends["detail"][0] == ends["detail"][1] == shared.detail_bytes

    async with Session.open(home=doctor) as s:
        loc = await imagefetch.find_image(s, shared.cid.hex(), 20)  # not synced yet: finds it by syncing
        assert loc.consult == consult and loc.info.caption == "left shin"
        d = loc.info.detail
        assert d is not None and (d.width, d.height) == (1300, 700) and d.tiles == 3 * 2 + 2 + 1
        first = imagefetch.decode_image(await imagefetch.fetch_first(s, loc, 20))
        assert first.size == (loc.info.first.width, loc.info.first.height)
        source = Image.open(tmp_path / "wound.png")
        assert psnr(first.resize(source.size), source) > 25

        res = await imagefetch.fetch_region(s, loc, Region(300, 200, 600, 400), None, 20)
        assert res.level == 0 and res.missing == [] and res.image.size == (600, 400)
        assert res.tiles[0] == TileId(0, 1, 0)  # the tile under the region's centre comes first
        assert psnr(res.image, source.crop((300, 200, 900, 600))) > 35  # native pixels, lossy tiles
        small = await imagefetch.fetch_region(s, loc, Region(0, 0, 1300, 700), (330, 180), 20)
        assert small.level == 2 and small.tiles == [TileId(2, 0, 0)] and small.image.size == (325, 175)

        with pytest.raises(NotFound) as kept:  # on request only: nobody asked, so not at the relay
            await imagefetch.fetch_original(s, loc, 20)
        assert kept.value.data.get("later") and "sends it on request" in str(kept.value)
        (line,) = [ln for ln in s.history(consult) if ln.kind == "image"]
        assert line.as_json()["image"] == shared.cid.hex() == line.id
        assert line.text.startswith('image photo "left shin" · first view ')
        assert "original PNG 1300x700" in line.text and "(on request)" in line.text
        assert line.as_json()["original"] == "on request"
        assert line.text.endswith("here: first view, 5/9 tiles")  # 4 native + 1 level-2


async def test_images_kept_offline_or_cut_off_by_a_crash_are_finished_by_sync_once(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    photo(tmp_path / "a.png", 700, 500, seed=1)
    photo(tmp_path / "b.png", 600, 600, seed=2)
    relay.stop()
    async with Session.open(home=nurse, subscribe=False) as s:
        with pytest.raises(LinkDown):
            await images.share(s, consult, tmp_path / "a.png", as_kind="photo", timeout=1)
        # and one whose process died right after recording it: no tiles, no message yet
        made = images.make(tmp_path / "b.png", "photo")
        crashed = images.record(s, consult, made, caption="b")
    kept = {r.cid: r for r in rows(nurse)}
    assert kept[crashed.cid].stage == images.PREPARED
    offline = next(r for c, r in kept.items() if c != crashed.cid)
    assert offline.stage == images.READY  # the tiles were made while the link was failing
    relay.start()
    async with Session.open(home=nurse, subscribe=False) as s:
        result = await images.send_pending_images(s, 30)
        assert sorted(result.finished) == sorted(kept) and result.left == 0
        await s.flush(10)
        again = await images.send_pending_images(s, 5)  # nothing left: nothing sent twice
        assert again.finished == [] and again.left == 0
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        lines = [ln for ln in s.history(consult) if ln.kind == "image"]
        assert sorted(ln.id for ln in lines) == sorted(c.hex() for c in kept)
        loc = imagefetch.locate_image(s, crashed.cid.hex())
        res = await imagefetch.fetch_region(s, loc, Region(0, 0, 600, 600), None, 20)
        assert res.missing == [] and psnr(res.image, Image.open(tmp_path / "b.png")) > 35


async def test_detail_resumes_where_it_stopped_and_a_fetch_says_what_is_missing(
    pair: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nurse, doctor, consult = pair
    photo(tmp_path / "w.png")
    real_upload = images.upload
    calls: list[bytes] = []

    async def cut_after_five(link, consult, sha, data, **kw):  # noqa: ANN001, ANN003, ANN202
        if len(calls) >= 5:
            raise LinkDown("cut")
        calls.append(sha)
        return await real_upload(link, consult, sha, data, **kw)

    async with Session.open(home=nurse, subscribe=False) as s:
        shared = await images.share(s, consult, tmp_path / "w.png", as_kind="photo", timeout=30)
        monkeypatch.setattr(images, "upload", cut_after_five)
        result = await images.send_pending_images(s, 10, limits=images.ShareLimits(upload_parallel=1))
        assert result.finished == [] and result.left == 10 - 5  # manifest + 9 tiles
        (row,) = rows(nurse)
        assert row.done == 5 and calls == [r.sha for r in row.uploads[:5]]
    async with Session.open(home=doctor) as s:
        loc = await imagefetch.find_image(s, shared.cid.hex(), 20)
        res = await imagefetch.fetch_region(s, loc, Region(0, 0, 1300, 700), None, 20)
        # up: manifest, 2/0/0, 1/0/0, 1/1/0 and the first level-0 tile, 0/0/0
        assert sorted(res.missing) == sorted(set(res.tiles) - {TileId(0, 0, 0)})
        px = np.asarray(res.image)
        assert (px[600:, 1100:] == imagefetch.FILL).all() and not (px[:100, :100] == imagefetch.FILL).all()
    calls.clear()
    monkeypatch.setattr(images, "upload", lambda *a, **k: (calls.append(a[2]), real_upload(*a, **k))[1])
    async with Session.open(home=nurse, subscribe=False) as s:
        result = await images.send_pending_images(s, 30)
        assert result.finished == [shared.cid]
        assert calls == [r.sha for r in row.uploads[5:]]  # no finished blob is asked about again
    async with Session.open(home=doctor) as s:
        loc = imagefetch.locate_image(s, shared.cid.hex())
        res = await imagefetch.fetch_region(s, loc, Region(0, 0, 1300, 700), None, 20)
        assert res.missing == []


async def test_a_message_ahead_of_its_first_view_says_later_and_sync_completes_it(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """What a cut under the first view's last chunk can leave: the outbox delivered the message
    on the next connection, the first view is not whole at the relay yet."""
    nurse, doctor, consult = pair
    photo(tmp_path / "c.png", 900, 600, seed=4)
    async with Session.open(home=nurse, subscribe=False) as s:
        made = images.make(tmp_path / "c.png", "photo")
        pend = images.record(s, consult, made)
        built = asyncio.get_running_loop().create_future()
        built.set_result(images._store_detail(nurse, made.prepared, 1, pend.plan.key))
        ready = await images._ready(s, pend, built)
        await images._enqueue(s, ready)
        await s.flush(10)
    async with Session.open(home=doctor) as s:
        loc = await imagefetch.find_image(s, pend.cid.hex(), 20)
        with pytest.raises(NotFound) as early:
            await imagefetch.fetch_first(s, loc, 10)
        assert early.value.data.get("later") and "not reached the relay yet" in str(early.value)
    async with Session.open(home=nurse, subscribe=False) as s:
        result = await images.send_pending_images(s, 30)
        assert result.finished == [pend.cid] and rows(nurse) == []
        await s.flush(10)
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        loc = imagefetch.locate_image(s, pend.cid.hex())
        first = imagefetch.decode_image(await imagefetch.fetch_first(s, loc, 20))
        assert first.size == (loc.info.first.width, loc.info.first.height)
        assert [ln.id for ln in s.history(consult) if ln.kind == "image"] == [pend.cid.hex()]  # once


async def test_two_processes_never_work_on_the_same_image(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, _, consult = pair
    photo(tmp_path / "x.png", 400, 300)
    async with Session.open(home=nurse, subscribe=False, connect=False) as s:
        pend = images.record(s, consult, images.make(tmp_path / "x.png", "photo"))
    with images._row_lock(nurse, pend.cid) as mine:  # another process holds it (flock is per open file)
        assert mine
        async with Session.open(home=nurse, subscribe=False) as s:
            result = await images.send_pending_images(s, 10)
        assert result.busy == 1 and result.finished == []
        assert rows(nurse)[0].stage == images.PREPARED


async def test_a_dicom_slice_keeps_its_window_caption_and_its_exact_file(
    pair: tuple[Path, Path, str],
) -> None:
    from pydicom.data import get_testdata_file

    nurse, doctor, consult = pair
    path = Path(get_testdata_file("CT_small.dcm"))
    async with Session.open(home=nurse, subscribe=False) as s:
        shared = await images.share(s, consult, path, window="lung", send_original=True, timeout=30)
        await images.send_pending_images(s, 30)
    async with Session.open(home=doctor) as s:
        loc = await imagefetch.find_image(s, shared.cid.hex(), 20)
        assert loc.info.kind == "slice" and "window lung" in loc.info.info and "CT 128x128" in loc.info.info
        assert loc.info.original.mime == "application/dicom"
        assert await imagefetch.fetch_original(s, loc, 20) == path.read_bytes()
        res = await imagefetch.fetch_region(s, loc, Region(0, 0, 128, 128), None, 20)
        assert res.image.size == (128, 128) and res.missing == []


async def test_an_original_larger_than_a_blob_goes_up_in_parts_on_request_and_comes_back_whole(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    data = photo(tmp_path / "big.png", 500, 400, seed=3)
    async with Session.open(home=nurse, subscribe=False) as s:
        third = filecrypt.sealed_size(len(data) // 3 + 1)  # a part is a sealed blob of at most this
        pend = images.record(
            s, consult, images.make(data, "photo"), limits=images.ShareLimits(part_size=third)
        )
        assert len(pend.plan.original.parts) == 3
        result = await images.send_pending_images(s, 30)  # from "prepared": tiles cut here
        assert result.finished == [pend.cid] and result.originals == []
    async with Session.open(home=doctor) as s:
        loc = await imagefetch.find_image(s, pend.cid.hex(), 20)
        with pytest.raises(NotFound) as asked:
            await imagefetch.get_original(s, loc, 20)
        assert asked.value.data.get("later") and asked.value.data.get("requested")
    async with Session.open(home=nurse) as s:
        await s.sync(20)
        result = await images.send_pending_images(s, 30)
        assert result.originals == [pend.cid] and result.left == 0
    async with Session.open(home=doctor) as s:
        loc = imagefetch.locate_image(s, pend.cid.hex())
        got = await imagefetch.get_original(s, loc, 20)
        assert got == data and hashlib.sha256(got).digest() == loc.info.original.sha


def test_a_tile_of_the_wrong_size_or_not_an_image_is_refused() -> None:
    from medcomm.core.tiles import Pyramid

    box = Pyramid(1000, 600).box(TileId(0, 0, 0))
    buf = io.BytesIO()
    Image.new("L", (100, 100)).save(buf, "PNG")
    with pytest.raises(WireError):
        imagefetch._decode_tile(buf.getvalue(), box, "L")
    with pytest.raises(WireError):
        imagefetch._decode_tile(b"not a picture", box, "L")
    Image.new("L", (512, 512)).save(buf := io.BytesIO(), "PNG")
    assert imagefetch._decode_tile(buf.getvalue(), box, "L").size == (512, 512)


def test_an_unreadable_image_body_is_said_so_in_the_history() -> None:
    from medcomm.adapters.localstore import body_text
    from medcomm.core import wire

    assert body_text(wire.KINDS["image"], b"\x81\xa1v\x07") == "(unreadable image message)"


# --- originals on request -----------------------------------------------------------------------


def at_relay(relay: RelayProcess, sha: bytes) -> bool:
    """Does the relay hold this blob whole (its own metadata, read beside the running relay)?"""
    import sqlite3

    con = sqlite3.connect(f"file:{relay.data / 'blobs.sqlite3'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT 1 FROM blobs WHERE sha=?", (sha,)).fetchone() is not None
    finally:
        con.close()


def count_ops(s: Session) -> list[tuple[str, bytes, bool]]:
    """Every blob request the session writes: (op, sha, a put that declares the size: one
    that starts the upload without a head)."""
    seen: list[tuple[str, bytes, bool]] = []
    write = s.link._send_frames

    async def logged(frames: list[wire.Frame]) -> None:
        for f in frames:
            if isinstance(f, wire.Request) and f.op.startswith("blob."):
                seen.append((f.op, f.args["sha"], f.op == "blob.put" and "size" in f.args))
        await write(frames)

    s.link._send_frames = logged  # type: ignore[method-assign]
    return seen


def held(home: Path, cid: bytes) -> images.HeldOriginal | None:
    with BlobCache(home) as cache:
        images.migrate(cache)
        return images.held_original(cache, cid)


async def test_the_original_goes_up_only_when_a_member_asks_and_once(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    data = photo(tmp_path / "w.png", 900, 600, seed=5)
    async with Session.open(home=nurse, subscribe=False) as s:
        shared = await images.share(s, consult, tmp_path / "w.png", as_kind="photo", timeout=30)
        result = await images.send_pending_images(s, 30)
        assert result.finished == [shared.cid] and result.originals == []
    with BlobCache(nurse) as cache:
        images.migrate(cache)
        (sealed,) = images.held_original(cache, shared.cid).parts  # type: ignore[union-attr]
    sha = sealed.sha  # the original's one blob: sealed, so not the file's own SHA-256
    assert sha != hashlib.sha256(data).digest()
    assert not at_relay(relay, sha)  # the tiles are up, the original is not
    assert held(nurse, shared.cid).state == images.KEPT  # type: ignore[union-attr]

    async with Session.open(home=doctor) as s:
        loc = await imagefetch.find_image(s, shared.cid.hex(), 20)
        assert loc.sender == "amina" and not loc.info.original.sent
        heard: list[imagefetch.Requested] = []
        with pytest.raises(NotFound) as first:
            await imagefetch.get_original(s, loc, 20, on_request=heard.append)
        assert first.value.data == {"later": True, "requested": True}
        assert "requested from the sender's device; run the same fetch later" in str(first.value)
        (req,) = heard
        assert req.new and req.by == "dr.chen" and req.seq is not None
        with pytest.raises(NotFound):  # asked again: the same request, not a second one
            await imagefetch.get_original(s, loc, 20, on_request=heard.append)
        assert not heard[1].new and heard[1].seq == req.seq
        lines = s.history(consult)
        (asked,) = [ln for ln in lines if ln.kind == "request"]
        assert asked.sender == "dr.chen"
        assert asked.text == f"asked for the original of image {shared.cid.hex()[:12]}"
        assert asked.as_json()["request"] == {"image": shared.cid.hex(), "want": "original", "answer": None}
        (image,) = [ln for ln in lines if ln.kind == "image"]
        assert image.as_json()["original"] == "requested" and "(requested)" in image.text
    assert not at_relay(relay, sha)

    async with Session.open(home=nurse) as s:  # the clinic's next sync
        await s.sync(20)
        (mine,) = [ln for ln in s.history(consult) if ln.kind == "image"]
        assert mine.original == "requested"
        ops = count_ops(s)
        result = await images.send_pending_images(s, 30)
        assert result.originals == [shared.cid] and result.left == 0
        assert ops[0] == ("blob.head", sha, False)  # is it there already? then the upload
        assert {o[1] for o in ops} == {sha}
        (mine,) = [ln for ln in s.history(consult) if ln.kind == "image"]
        assert mine.original == "at the relay" and "(at the relay)" in mine.text
        ops.clear()
        again = await images.send_pending_images(s, 10)  # answered: never asked about again
        assert again.originals == [] and ops == []
    assert at_relay(relay, sha)
    assert held(nurse, shared.cid).state == images.UP  # type: ignore[union-attr]
    with BlobCache(nurse, CacheLimits(max_cache_bytes=0)) as cache:
        cache.trim()  # at the relay now: the pin is gone, the cache may let it go
        assert not cache.has(sha)

    async with Session.open(home=doctor) as s:
        loc = imagefetch.locate_image(s, shared.cid.hex())
        got = await imagefetch.get_original(s, loc, 20, on_request=heard.append)
        assert got == data and hashlib.sha256(got).digest() == loc.info.original.sha
        assert len(heard) == 2  # no third request
        (image,) = [ln for ln in s.history(consult) if ln.kind == "image"]
        assert image.original == "downloaded" and image.text.endswith("here: original")
        kinds = [ln.kind for ln in s.history(consult)]
        assert kinds.count("request") == 1


async def test_a_request_made_offline_waits_and_the_clinic_fulfils_it_at_its_next_sync(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    data = photo(tmp_path / "o.png", 700, 500, seed=6)
    async with Session.open(home=nurse, subscribe=False) as s:
        shared = await images.share(s, consult, tmp_path / "o.png", as_kind="photo", timeout=30)
    async with Session.open(home=doctor) as s:
        await s.sync(20)
    relay.stop()
    async with Session.open(home=doctor) as s:  # no link: the request waits in the outbox
        loc = imagefetch.locate_image(s, shared.cid.hex())
        heard: list[imagefetch.Requested] = []
        with pytest.raises(NotFound) as asked:
            await imagefetch.get_original(
                s, loc, 2, on_request=heard.append, limits=imagefetch.OriginalLimits(store_wait=1)
            )
        assert asked.value.data.get("later") and heard[0].new and heard[0].seq is None
        (queued,) = [ln for ln in s.history(consult) if ln.kind == "request"]
        assert queued.state == "queued"
        assert [ln.original for ln in s.history(consult) if ln.kind == "image"] == ["requested"]
    relay.start()

    async def doctor_waits() -> bytes:
        async with Session.open(home=doctor) as s:  # its outbox goes first, then it waits
            loc = imagefetch.locate_image(s, shared.cid.hex())
            return await imagefetch.get_original(
                s, loc, 20, wait=40, limits=imagefetch.OriginalLimits(poll_first=0.5, poll_max=1)
            )

    waiting = asyncio.ensure_future(doctor_waits())
    async with Session.open(home=nurse) as s:  # the clinic comes online later and syncs
        for _ in range(100):
            await s.sync(20)
            if images.requested_originals(s):
                break
            await asyncio.sleep(0.2)
        result = await images.send_pending_images(s, 30)  # the tiles first, then the original
        assert result.finished == [shared.cid] and result.originals == [shared.cid]
    assert await asyncio.wait_for(waiting, 40) == data


async def test_an_original_no_longer_kept_is_answered_not_waited_for(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    photo(tmp_path / "a.png", 600, 400, seed=7)
    photo(tmp_path / "b.png", 600, 400, seed=8)
    small = images.ShareLimits(keep_originals_bytes=1)  # keeps only the newest
    async with Session.open(home=nurse, subscribe=False) as s:
        a = images.record(s, consult, images.make(tmp_path / "a.png", "photo"), limits=small)
        b = images.record(s, consult, images.make(tmp_path / "b.png", "photo"), limits=small)
        await images.send_pending_images(s, 30)
    assert held(nurse, a.cid).state == images.DROPPED and held(nurse, b.cid).state == images.KEPT  # type: ignore[union-attr]
    with BlobCache(nurse, CacheLimits(max_cache_bytes=0)) as cache:
        cache.trim()  # the dropped one may go now; the kept one may not
        assert not cache.has(a.plan.original.parts[0].sha) and cache.has(b.plan.original.parts[0].sha)
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        for img in (a, b):
            with pytest.raises(NotFound):
                await imagefetch.get_original(s, imagefetch.locate_image(s, img.cid.hex()), 20)
    async with Session.open(home=nurse) as s:
        await s.sync(20)
        result = await images.send_pending_images(s, 30)
        assert result.originals == [b.cid] and result.answered == [a.cid]
        await s.flush(10)
        again = await images.send_pending_images(s, 10)
        assert again.originals == again.answered == []  # answered once
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        loc = imagefetch.locate_image(s, a.cid.hex())
        with pytest.raises(NotFound) as gone:
            await imagefetch.get_original(s, loc, 20, wait=30)  # no waiting for what will not come
        assert not gone.value.data.get("later")
        assert "amina's device no longer keeps the original" in str(gone.value)
        said = [ln for ln in s.history(consult) if ln.kind == "request"]
        assert [ln.sender for ln in said] == ["dr.chen", "dr.chen", "amina"]
        assert said[-1].text.startswith(f"cannot send the original of image {a.cid.hex()[:12]}")
        states = {ln.id: ln.original for ln in s.history(consult) if ln.kind == "image"}
        assert states == {a.cid.hex(): "gone", b.cid.hex(): "requested"}
        got = await imagefetch.get_original(s, imagefetch.locate_image(s, b.cid.hex()), 20)
        assert got == (tmp_path / "b.png").read_bytes()


async def test_tiles_this_device_never_began_go_without_a_head_and_a_begun_one_asks_first(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """One round trip per tile instead of two; after a cut, the blob that was on its way asks
    the relay where it stands (here: whole, so nothing of it crosses the link again)."""
    nurse, _, consult = pair
    photo(tmp_path / "t.png", 1300, 700, seed=9)
    async with Session.open(home=nurse, subscribe=False) as s:
        shared = await images.share(s, consult, tmp_path / "t.png", as_kind="photo", timeout=30)
        (row,) = rows(nurse)
        assert len(row.uploads) == 10 and row.started == 0  # manifest + 9 tiles, none begun
        ops = count_ops(s)
        real = s.link.request
        cut_at = row.uploads[4].sha

        down = {"now": False}

        async def cut_after_put(op: str, args: dict, timeout: float) -> object:
            if down["now"]:
                raise LinkDown("no link")
            answer = await real(op, args, timeout)
            if op == "blob.put" and args["sha"] == cut_at:
                down["now"] = True  # the put went, its answer and the link were lost
                raise LinkDown("cut")
            return answer

        s.link.request = cut_after_put  # type: ignore[method-assign]
        one = images.ShareLimits(upload_parallel=1)
        result = await images.send_pending_images(s, 3, limits=one)
        assert result.finished == [] and result.left == 6
        assert [o for o, sha, _ in ops if o == "blob.head"] == []  # 5 blobs, 5 puts, no head
        assert [(sha, sized) for o, sha, sized in ops] == [(r.sha, True) for r in row.uploads[:5]]
        (cut,) = rows(nurse)
        assert cut.done == 4 and cut.started == 5  # the fifth was begun: durable before its put
        s.link.request = real  # type: ignore[method-assign]
        ops.clear()
        result = await images.send_pending_images(s, 20, limits=one)
        assert result.finished == [shared.cid]
        # the begun one asks first (the relay has it whole: nothing more); the rest go at once
        assert ops[0] == ("blob.head", cut_at, False)
        assert [(sha, sized) for o, sha, sized in ops[1:]] == [(r.sha, True) for r in row.uploads[5:]]
        assert sum(1 for o, _, _ in ops if o == "blob.head") == 1  # of 10 blobs: 9 round trips saved


def test_rows_from_before_the_started_mark_head_every_blob_first(tmp_path: Path) -> None:
    """A device that shared before ``started`` existed: nothing says which blobs it began,
    so every one of them asks the relay first (the old behaviour), and nothing is lost."""
    import sqlite3

    con = sqlite3.connect(tmp_path / "pending.sqlite3")
    con.execute(
        "CREATE TABLE image_sends (cid BLOB PRIMARY KEY, consult TEXT NOT NULL, stage TEXT NOT NULL, "
        "plan BLOB NOT NULL, window TEXT, body BLOB, uploads BLOB, done INTEGER NOT NULL DEFAULT 0, "
        "created REAL NOT NULL, error TEXT)"
    )
    made = images.make(photo(tmp_path / "p.png", 300, 200), "photo")
    body = imagemsg_body(made)
    con.execute(
        "INSERT INTO image_sends (cid, consult, stage, plan, created) VALUES (?,?,?,?,?)",
        (b"\1" * 16, "abc123", images.PREPARED, body, 1.0),
    )
    con.commit()
    con.close()
    with BlobCache(tmp_path) as cache:
        images.migrate(cache)
        images.migrate(cache)  # twice: nothing changes
        (row,) = images.pending_images(cache)
        assert row.cid == b"\1" * 16 and row.done == 0 and row.started == images._ALL_BEGUN


def imagemsg_body(made: images.Made) -> bytes:
    """The plan body a row of that time held (what ``record`` writes)."""
    from medcomm.core import imagemsg
    from medcomm.core.imagemsg import FirstView, ImageInfo, Original

    p, f = made.prepared, made.prepared.first
    first = FirstView(
        hashlib.sha256(f.data).digest(), len(f.data), f.mime, f.width, f.height, f.codec, f.quality, f.lossy
    )
    o = Original(
        hashlib.sha256(made.original).digest(), len(made.original), made.original_mime, 300, 200, True
    )
    return imagemsg.encode_body(ImageInfo(p.kind, "", "", first, o, None))


async def test_a_blob_that_does_not_open_is_never_shown_nor_kept_and_an_old_plain_image_still_reads(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    from dataclasses import replace

    from medcomm.core import imagemsg
    from medcomm.core.delivery import OutItem
    from medcomm.core.imagemsg import FirstView, ImageInfo, Original
    from medcomm.errors import Tampered
    from medcomm.session import deskimages
    from medcomm.session.transfer import upload

    nurse, doctor, consult = pair
    photo(tmp_path / "k.png", 700, 500, seed=11)
    old_file = photo(tmp_path / "old.png", 300, 200, seed=12)
    async with Session.open(home=nurse, subscribe=False) as s:
        shared = await images.share(
            s, consult, tmp_path / "k.png", as_kind="photo", send_original=True, timeout=30
        )
        assert (await images.send_pending_images(s, 30)).finished == [shared.cid]
        # an image from before blobs were sealed: plain blobs, a body without a key
        made = images.make(old_file, "photo")
        f = made.prepared.first
        first_sha, orig_sha = hashlib.sha256(f.data).digest(), hashlib.sha256(old_file).digest()
        await upload(s.link, consult, first_sha, f.data, timeout=20)
        await upload(s.link, consult, orig_sha, old_file, timeout=20)
        body = imagemsg.encode_body(
            ImageInfo(
                "photo",
                "old",
                "",
                FirstView(first_sha, len(f.data), f.mime, f.width, f.height, f.codec, f.quality, f.lossy),
                Original(orig_sha, len(old_file), "image/png", 300, 200, True),
                None,
            )
        )
        old = OutItem(b"\7" * 16, consult, wire.KINDS["image"], body)
        s.store.enqueue(old)
        await s.link.submit(old)
        await s.flush(10)
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        loc = imagefetch.locate_image(s, shared.cid.hex())
        other = filecrypt.new_key()
        wrong = replace(loc, info=replace(loc.info, key=other, detail=replace(loc.info.detail, key=other)))
        with pytest.raises(Tampered):
            await imagefetch.fetch_first(s, wrong, 20)
        with pytest.raises(Tampered):
            await deskimages.OpenedImage(s, wrong).first_view()
        with pytest.raises(Tampered):  # its manifest does not open: no tile is fetched, none shown
            await imagefetch.fetch_region(s, wrong, Region(0, 0, 700, 500), None, 20)
        with pytest.raises(Tampered):
            await imagefetch.fetch_original(s, wrong, 20)
        with BlobCache(doctor) as cache:  # downloaded, verified by hash, did not open: gone again
            d = loc.info.detail
            assert d is not None
            assert not any(cache.has(r.sha) for r in (d.manifest, *loc.info.original.blobs()))
            assert not cache.has(loc.info.first.sha)
        (line,) = [ln for ln in s.history(consult) if ln.id == shared.cid.hex()]
        assert line.text.endswith("here: nothing yet")
        # under the key its message carries, every blob opens
        first = imagefetch.decode_image(await imagefetch.fetch_first(s, loc, 20))
        assert first.size == (loc.info.first.width, loc.info.first.height)
        res = await imagefetch.fetch_region(s, loc, Region(0, 0, 700, 500), None, 20)
        assert res.missing == [] and psnr(res.image, Image.open(tmp_path / "k.png")) > 35
        table = (await imagefetch.fetch_manifest(s, loc, 5)).lookup()  # type: ignore[union-attr]
        assert res.fetched_bytes == sum(table[t].size for t in res.tiles)  # on the wire: sealed sizes
        assert await imagefetch.fetch_original(s, loc, 20) == (tmp_path / "k.png").read_bytes()
        (line,) = [ln for ln in s.history(consult) if ln.id == shared.cid.hex()]
        assert line.text.endswith("here: first view, 2/3 tiles, original")
        # the old image: no key, plain blobs, read as it always was
        past = imagefetch.locate_image(s, old.cid.hex())
        assert past.info.key is None and past.info.original.parts == ()
        assert await imagefetch.fetch_first(s, past, 20) == f.data
        assert await imagefetch.fetch_original(s, past, 20) == old_file


def test_the_first_view_budget_is_met_by_the_sealed_blob(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from medcomm.adapters import imaging

    png = photo(tmp_path / "b.png", 600, 400, seed=13)
    dcm = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    budget = imaging.FIRST_VIEW.budget
    assert images._sealed_budget(png, "report") == budget("report") - 41
    assert images._sealed_budget(dcm, "report") == budget("slice") - 41  # a DICOM file is a slice
    assert images._sealed_budget(png, "auto") is None  # found by detection: make() checks after
    made = images.make(png, "photo")
    assert filecrypt.sealed_size(len(made.prepared.first.data)) <= budget("photo")

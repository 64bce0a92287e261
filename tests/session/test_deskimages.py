"""The desk's image glue against a real relay process: sharing with progress (durable first,
offline kept and sent later), what of each image is where, the viewer's tiles in the order
asked, and DICOM windows made from the original (and refused when the sender kept it)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medcomm.core.tiles import Region, TileId
from medcomm.errors import LinkDown, NotFound, UsageError
from medcomm.session import deskimages, images
from medcomm.session.service import Session
from tests.harness.relay import RelayProcess
from tests.session.test_images import photo, psnr

pytestmark = pytest.mark.timeout(90)


async def test_a_shared_photo_says_where_it_is_and_the_viewer_gets_its_tiles_in_order(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    photo(tmp_path / "wound.png")
    steps: list[tuple[str, int, int]] = []
    async with Session.open(home=nurse) as s:
        await s.link.wait_until(lambda: s.status.state == "online", 10)
        shared = await deskimages.share_path(
            s,
            consult,
            str(tmp_path / "wound.png"),
            as_kind="photo",
            caption="left shin",
            step=lambda *a: steps.append(a),
        )
        image_id = shared.cid.hex()
        names = [name for name, _, _ in steps]
        assert names.index("prepare") < names.index("saved") < names.index("first view")  # durable first
        assert deskimages.pending_lines(s, consult) == []  # in the outbox: history shows it
        mine = deskimages.summaries(s, [image_id])[image_id]
        assert mine.mine and mine.kind == "photo" and mine.caption == "left shin" and mine.tiles == 9
        assert mine.sending == "tiles" and mine.tiles_up == 0 and (mine.width, mine.height) == (1300, 700)
        seen: list[tuple[str, int, int]] = []
        result = await deskimages.send_pending(s, 30, step=lambda *a: seen.append(a))
        assert result.finished == [shared.cid] and seen[-1][1] == seen[-1][2]
        done = deskimages.summaries(s, [image_id])[image_id]
        assert done.sending is None and done.failed is None  # all at the relay
        assert deskimages.continue_in_background(s) is None  # nothing left for a background sync

    async with Session.open(home=doctor) as s:
        handle = await deskimages.open_image(s, image_id)  # not synced yet: found by syncing
        before = deskimages.summaries(s, [image_id])[image_id]
        assert not before.mine and not before.first_here and before.tiles_here == 0
        fetched: list[tuple[int, int]] = []
        first = await handle.first_view(lambda done, total: fetched.append((done, total)))
        assert first.size == (handle.info.first.width, handle.info.first.height)
        assert fetched[-1] == (handle.info.first.size, handle.info.first.size)

        d = handle.info.detail
        assert d is not None
        ids = d.pyramid.tiles_for_region(Region(300, 100, 700, 500), (700, 500))  # native, centre first
        assert len(ids) == 4 and {t.level for t in ids} == {0}
        got: list[tuple[TileId, Any]] = []
        await handle.tiles(ids, lambda t, im: got.append((t, im)), parallel=1)
        assert [t for t, _ in got] == ids  # one in flight: exactly the order asked
        source = Image.open(tmp_path / "wound.png").convert("RGB")
        for tid, im in got:
            b = d.pyramid.box(tid)
            assert im.size == (b.out_w, b.out_h) and psnr(im, source.crop((b.x0, b.y0, b.x1, b.y1))) > 35
        after = deskimages.summaries(s, [image_id])[image_id]
        assert after.first_here and after.tiles_here == 4 and not after.original_here

        t0 = time.monotonic()
        again: list[TileId] = []
        await handle.tiles(ids, lambda t, im: again.append(t))  # from the cache: no link at all
        assert sorted(again) == sorted(ids) and time.monotonic() - t0 < 2


async def test_shared_offline_it_is_kept_shown_as_queued_and_sent_when_the_link_is_back(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nurse, doctor, consult = pair
    photo(tmp_path / "rash.png", 600, 400, seed=4)
    relay.stop()
    steps: list[str] = []
    async with Session.open(home=nurse) as s:
        t0 = time.monotonic()
        with pytest.raises(LinkDown):
            await deskimages.share_path(
                s, consult, tmp_path / "rash.png", as_kind="photo", step=lambda n, *_: steps.append(n)
            )
        assert time.monotonic() - t0 < 20  # offline: kept at once, not after the online deadline
        assert "saved" in steps
        (line,) = deskimages.pending_lines(s, consult)
        assert line.state == "queued" and line.kind == "image" and line.seq is None
        assert deskimages.pending_count(s) == 1
        summary = deskimages.summaries(s, [line.id])[line.id]
        assert summary.mine and summary.sending == "saved"
        # closing, what is left goes to a background `medcomm sync`, but only one that will
        # sync this profile (it runs for the environment's): not for the doctor's
        started: list[Path] = []
        monkeypatch.setattr(images, "start_background", lambda d: started.append(d) or 4242)
        monkeypatch.setenv("MEDCOMM_HOME", str(doctor))
        assert deskimages.continue_in_background(s) is None and started == []
        monkeypatch.setenv("MEDCOMM_HOME", str(nurse))
        assert deskimages.continue_in_background(s) == 4242 and started == [nurse]
        monkeypatch.undo()
    relay.start()
    async with Session.open(home=nurse) as s:
        await s.link.wait_until(lambda: s.status.state == "online", 15)
        result = await deskimages.send_pending(s, 30)
        assert [c.hex() for c in result.finished] == [line.id]
        assert deskimages.pending_lines(s, consult) == [] and deskimages.pending_count(s) == 0
        await s.flush(10)
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        assert [ln.id for ln in s.history(consult) if ln.kind == "image"] == [line.id]


async def test_a_dicom_slice_is_rewindowed_from_its_original_asked_of_the_sender_when_kept(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    from pydicom.data import get_testdata_file

    from medcomm.adapters import dicom

    nurse, doctor, consult = pair
    path = Path(get_testdata_file("CT_small.dcm"))
    other_file = tmp_path / "other.dcm"  # the same slice in another file (its preamble differs):
    other_file.write_bytes(b"x" + path.read_bytes()[1:])  # another original, not in any cache
    async with Session.open(home=nurse) as s:
        await s.link.wait_until(lambda: s.status.state == "online", 10)
        kept = await deskimages.share_path(s, consult, other_file)  # as `medcomm share`: the original stays
        sent = await images.share(s, consult, path, window="bone", send_original=True, timeout=30)
        await deskimages.send_pending(s, 30)
    frame = dicom.read(path.read_bytes())

    async with Session.open(home=doctor) as s:
        handle = await deskimages.open_image(s, sent.cid.hex())
        assert handle.info.kind == "slice" and deskimages.sent_window(handle.info) == "bone C400 W1800"
        assert not handle.original_here()
        fetched: list[tuple[int, int]] = []
        lung, label = await handle.window("lung", lambda d, t: fetched.append((d, t)))
        assert label == "lung C-600 W1500" and lung.size == (128, 128)
        assert fetched and handle.original_here()
        assert np.array_equal(np.asarray(lung), np.asarray(dicom.render(frame, "lung").image))
        brain, label = await handle.window("brain")  # the original is here: no fetch
        assert label == "brain C40 W80" and not np.array_equal(np.asarray(brain), np.asarray(lung))
        own, label = await handle.window("file")  # CT_small names no window: the data's range
        assert label.startswith("file's auto ")
        with pytest.raises(UsageError):
            await handle.window("sunset")

        other = await deskimages.open_image(s, kept.cid.hex())
        assert deskimages.sent_window(other.info).startswith("auto ")
        with pytest.raises(NotFound) as asked:
            await other.window("lung")  # kept on the nurse's device: asked for, once
        assert asked.value.data.get("later") and asked.value.data.get("requested")
        await s.flush(10)
    async with Session.open(home=nurse) as s:
        await s.sync(20)
        result = await deskimages.send_pending(s, 30)  # the desk's round answers the request
        assert result.originals == [kept.cid]
    async with Session.open(home=doctor) as s:
        other = await deskimages.open_image(s, kept.cid.hex())
        lung, label = await other.window("lung")
        assert label == "lung C-600 W1500"
        assert np.array_equal(np.asarray(lung), np.asarray(dicom.render(frame, "lung").image))


async def test_a_path_that_is_not_a_readable_file_is_refused_before_any_work(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, _, consult = pair
    async with Session.open(home=nurse, connect=False) as s:
        for bad in ("", str(tmp_path), str(tmp_path / "missing.jpg")):
            with pytest.raises(UsageError):
                await deskimages.share_path(s, consult, bad)
        assert deskimages.pending_lines(s, consult) == [] and deskimages.summaries(s, ["zz", "00" * 16]) == {}
    await asyncio.sleep(0)

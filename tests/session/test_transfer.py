"""Blob transfers against a real relay process: windows, cuts, restarts, resumed downloads,
and pending voice notes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from medcomm.adapters.blobcache import BlobCache, note_body, parse_note_body
from medcomm.core import filecrypt, wire
from medcomm.core.delivery import OutItem
from medcomm.errors import AccessDenied, NotFound, Tampered
from medcomm.session.service import Session
from medcomm.session.transfer import (
    TransferReport,
    download,
    fetch_blob,
    fetch_note,
    record_note,
    send_pending_notes,
    upload,
)
from tests.harness.relay import RelayProcess

pytestmark = pytest.mark.timeout(60)
CHUNK = 8 * 1024


async def identity(relay: RelayProcess, root: Path, name: str, role: str = "clinic") -> Path:
    """Enrol and log in a device in-process (the CLI path is tested elsewhere; subprocesses
    would cost most of this module's time on a loaded machine)."""
    from medcomm.server.admin import enroll
    from medcomm.session.service import login

    home = root / name
    await login(relay.url, name, enroll(relay.data, name, role), home=home)
    return home


async def open_consult(home: Path, title: str, others: list[str]) -> str:
    async with Session.open(home=home) as s:
        return await s.open_consult(title, others, 15)


@pytest.fixture
async def world(relay: RelayProcess, tmp_path: Path) -> tuple[Path, Path, str]:
    nurse = await identity(relay, tmp_path, "amina", "clinic")
    doctor = await identity(relay, tmp_path, "dr.chen", "doctor")
    return nurse, doctor, await open_consult(nurse, "t", ["dr.chen"])


def random_blob(n: int) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    return data, hashlib.sha256(data).digest()


async def online(s: Session) -> None:
    await s.link.wait_until(lambda: s.status.state == "online", 15)


def count_puts(s: Session) -> dict[str, int]:
    """Wrap the link's request to see how many puts are in flight at once."""
    seen = {"now": 0, "peak": 0}
    original = s.link.request

    async def counting(op: str, args: dict, timeout: float) -> object:
        if op != "blob.put":
            return await original(op, args, timeout)
        seen["now"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            return await original(op, args, timeout)
        finally:
            seen["now"] -= 1

    s.link.request = counting  # type: ignore[method-assign]
    return seen


async def test_upload_with_a_window_then_members_download_and_outsiders_cannot(
    world: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = world
    outsider = await identity(relay, tmp_path, "bongani", "clinic")
    data, sha = random_blob(5 * CHUNK + 123)
    shown: list[int] = []
    async with Session.open(home=nurse, subscribe=False) as s:
        seen = count_puts(s)
        report = await upload(s.link, consult, sha, data, timeout=20, progress=lambda d, t: shown.append(d))
        assert report.rounds == [0] and report.chunks == 6 and report.bytes == len(data)
        assert report.offsets == [i * CHUNK for i in range(6)]
        assert seen["peak"] == 2  # the window: two chunks in flight, never more
        assert shown[-1] == len(data) and shown == sorted(shown)
        again = await upload(s.link, consult, sha, data, timeout=20)  # content-addressed: nothing to send
        assert again.rounds == [len(data)] and again.chunks == 0
    async with Session.open(home=doctor, subscribe=False) as s:
        with BlobCache(tmp_path / "doctor-cache") as cache:
            got = TransferReport(0)
            path = await download(s.link, sha, cache, size=len(data), timeout=20, report=got)
            assert path.read_bytes() == data and got.offsets == [i * CHUNK for i in range(6)]
            assert await download(s.link, sha, cache, timeout=5) == path  # cached: no request
    async with Session.open(home=outsider, subscribe=False) as s:
        with BlobCache(tmp_path / "outsider-cache") as cache:
            with pytest.raises(NotFound):
                await download(s.link, sha, cache, timeout=10)
            with pytest.raises(AccessDenied):
                await upload(s.link, consult, sha, data, timeout=10)


async def test_a_cut_mid_upload_resumes_without_resending_acknowledged_chunks(
    world: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = world
    data, sha = random_blob(40 * CHUNK)
    acked: list[int] = []
    async with Session.open(home=nurse, subscribe=False) as s:
        await online(s)

        def progress(done: int, total: int) -> None:
            acked.append(done)
            if len(acked) == 3:  # the link dies under the upload: TCP reset, answers in flight lost
                s.link._ws.transport.abort()  # type: ignore[union-attr]

        report = await upload(s.link, consult, sha, data, timeout=30, progress=progress)
        assert s.link.status.connects >= 2
    assert len(report.rounds) >= 2 and report.rounds[1] >= 3 * CHUNK
    before_cut = [a - CHUNK for a in acked[:3]]
    for offset in before_cut:  # an acknowledged chunk is never sent again
        assert report.offsets.count(offset) == 1
    # at most the window that was in flight at the cut goes twice
    assert report.chunks <= 40 + 2
    async with Session.open(home=doctor, subscribe=False) as s:
        with BlobCache(tmp_path / "cache") as cache:
            assert (await download(s.link, sha, cache, timeout=20)).read_bytes() == data


async def test_an_upload_stopped_with_its_session_resumes_in_the_next_one(
    world: tuple[Path, Path, str],
) -> None:
    nurse, _, consult = world
    data, sha = random_blob(30 * CHUNK + 7)
    acked: list[int] = []
    enough = asyncio.Event()

    def progress(done: int, total: int) -> None:
        acked.append(done)
        if len(acked) >= 4:
            enough.set()

    async with Session.open(home=nurse, subscribe=False) as s:
        task = asyncio.ensure_future(upload(s.link, consult, sha, data, timeout=30, progress=progress))
        await asyncio.wait_for(enough.wait(), 20)
        task.cancel()  # the command is stopped (Ctrl-C, killed terminal)
        await asyncio.gather(task, return_exceptions=True)
    stopped_at = max(acked)
    async with Session.open(home=nurse, subscribe=False) as s:
        report = await upload(s.link, consult, sha, data, timeout=30)
    assert report.rounds[0] >= stopped_at
    assert min(report.offsets) == report.rounds[0]  # nothing below the relay's offset is re-sent
    assert report.bytes == len(data) - report.rounds[0]


async def test_a_fresh_blob_skips_the_head_and_what_follows_its_last_chunk_finds_it_complete(
    world: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = world
    data, sha = random_blob(3 * CHUNK - 100)
    followers: list[asyncio.Future[object]] = []
    async with Session.open(home=nurse, subscribe=False) as s:
        await online(s)
        head = {"consult": consult, "sha": sha, "size": len(data)}

        def behind() -> None:  # what an image's message does: it goes right behind the last chunk
            followers.append(asyncio.ensure_future(s.link.request("blob.head", head, 10)))

        report = await upload(s.link, consult, sha, data, timeout=20, fresh=True, behind=behind)
        assert report.heads == 0 and report.rounds == [0] and report.offsets == [0, CHUNK, 2 * CHUNK]
        assert report.behind_early and len(followers) == 1  # sent before the last answer came back
        # the relay read it after the last chunk (one connection, in order): the blob was whole
        assert await followers[0] == {"have": len(data), "complete": True}
    async with Session.open(home=doctor, subscribe=False) as s:
        with BlobCache(tmp_path / "cache") as cache:
            assert (await download(s.link, sha, cache, timeout=20)).read_bytes() == data


async def test_puts_made_before_the_link_is_up_still_carry_what_follows_right_behind(
    world: tuple[Path, Path, str],
) -> None:
    nurse, _, consult = world
    data, sha = random_blob(CHUNK + 500)
    followers: list[asyncio.Future[object]] = []
    on_wire: list[str] = []
    async with Session.open(home=nurse, subscribe=False) as s:
        assert s.link.status.state != "online"  # a small first view made before the connect
        write = s.link._send_frames

        async def logged(frames: list[wire.Frame]) -> None:
            for f in frames:
                if isinstance(f, wire.Request) and f.op == "blob.put":
                    on_wire.append(f"put {f.args['offset']}")
                elif isinstance(f, wire.Send) and f.kind == wire.KINDS["text"]:  # not the consult's key
                    on_wire.append("message")
            await write(frames)

        s.link._send_frames = logged  # type: ignore[method-assign]

        def behind() -> None:  # a message (through the outbox, as an image's goes)
            followers.append(asyncio.ensure_future(s.queue_text(consult, "right behind the blob")))

        report = await upload(s.link, consult, sha, data, timeout=20, fresh=True, behind=behind)
        assert report.behind_early and report.heads == 0 and len(followers) == 1
        await followers[0]
        await s.flush(10)
    # an outbox message queued while offline would go out first on connect: it must not
    assert on_wire == ["put 0", f"put {CHUNK}", "message"]


async def test_a_fresh_upload_goes_on_from_what_the_relay_already_holds(
    world: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = world
    # long enough that the cancel lands mid-way even when the machine is slow to deliver it
    data, sha = random_blob(48 * CHUNK + 5)
    enough = asyncio.Event()
    acked: list[int] = []

    def progress(done: int, total: int) -> None:
        acked.append(done)
        if len(acked) >= 3:
            enough.set()

    async with Session.open(home=nurse, subscribe=False) as s:
        task = asyncio.ensure_future(upload(s.link, consult, sha, data, timeout=20, progress=progress))
        await asyncio.wait_for(enough.wait(), 15)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        held = max(acked)
        report = await upload(s.link, consult, sha, data, timeout=20, fresh=True)
        # a blind start at 0 (one window of puts), answered with the relay's offset: on from there
        assert report.heads == 0 and report.rounds == [0] and report.realigned >= 1
        assert report.offsets[:2] == [0, CHUNK] and min(report.offsets[2:]) >= held
        again = await upload(s.link, consult, sha, data, timeout=20, fresh=True)
        assert again.heads == 0 and again.chunks <= 2  # whole already: the first answers say so
    async with Session.open(home=doctor, subscribe=False) as s:
        with BlobCache(tmp_path / "cache") as cache:
            assert (await download(s.link, sha, cache, timeout=20)).read_bytes() == data


async def test_a_relay_sigkill_mid_upload_keeps_the_acknowledged_offset(
    world: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = world
    data, sha = random_blob(60 * CHUNK)
    acked: list[int] = []
    enough = asyncio.Event()

    def progress(done: int, total: int) -> None:
        acked.append(done)
        if len(acked) == 5:
            enough.set()

    async with Session.open(home=nurse, subscribe=False) as s:
        task = asyncio.ensure_future(upload(s.link, consult, sha, data, timeout=40, progress=progress))
        await asyncio.wait_for(enough.wait(), 20)
        relay.kill()
        killed_after = max(acked)
        relay.start()
        report = await task
    assert len(report.rounds) >= 2 and report.rounds[1] >= killed_after
    async with Session.open(home=doctor, subscribe=False) as s:
        with BlobCache(tmp_path / "cache") as cache:
            assert (await download(s.link, sha, cache, timeout=20)).read_bytes() == data


async def test_a_download_resumes_its_partial_file_and_restarts_a_wrong_one(
    world: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = world
    data, sha = random_blob(5 * CHUNK)
    other, other_sha = random_blob(3 * CHUNK)
    async with Session.open(home=nurse, subscribe=False) as s:
        await upload(s.link, consult, sha, data, timeout=20)
        await upload(s.link, consult, other_sha, other, timeout=20)
    async with Session.open(home=doctor, subscribe=False) as s:
        with BlobCache(tmp_path / "cache") as cache:
            cache.partial_path(sha).write_bytes(data[: 2 * CHUNK + 100])  # a cut download
            report = TransferReport(0)
            path = await download(s.link, sha, cache, size=len(data), timeout=20, report=report)
            assert path.read_bytes() == data
            assert report.offsets[0] == 2 * CHUNK + 100 and report.bytes == len(data) - 2 * CHUNK - 100
            assert not cache.partial_path(sha).exists()

            cache.partial_path(other_sha).write_bytes(b"\0" * CHUNK)  # a damaged partial
            report = TransferReport(0)
            path = await download(s.link, other_sha, cache, size=len(other), timeout=20, report=report)
            assert path.read_bytes() == other
            assert report.rounds == [CHUNK, 0]  # checked, dropped, fetched again from 0


def tone_note(seconds: float) -> bytes:
    from medcomm.adapters.oggopus import encode_note

    t = np.arange(int(seconds * 48000)) / 48000
    return encode_note((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16))


async def test_pending_notes_go_out_in_order_and_a_refused_one_is_kept_as_failed(
    world: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = world
    other = await identity(relay, tmp_path, "bongani", "clinic")
    theirs = await open_consult(other, "not amina's", [])
    async with Session.open(home=nurse, subscribe=False, connect=False) as s:  # offline: recorded only
        first = record_note(s, consult, tone_note(1.0))
        refused = record_note(s, theirs, tone_note(0.5))
        second = record_note(s, consult, tone_note(1.5))
        assert s.store.outbox_count() == 0  # nothing is queued before its blob is at the relay
    async with Session.open(home=nurse, subscribe=False) as s:
        result = await send_pending_notes(s, 30)
        assert [i.cid for i in result.queued] == [first.cid, second.cid]
        assert [(n.cid, type(e)) for n, e in result.failed] == [(refused.cid, AccessDenied)]
        await s.flush(20)
        again = await send_pending_notes(s, 5)
        assert again.queued == [] and again.failed == []
    with BlobCache(nurse) as cache:
        kept = cache.pending(include_failed=True)
        assert [n.cid for n in kept] == [refused.cid] and kept[0].error
        assert cache.has(refused.sha)  # not lost: still on the device
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        notes = [ln for ln in s.history(consult) if ln.kind == "note"]
        assert [ln.id for ln in notes] == [first.cid.hex(), second.cid.hex()]
        assert notes[0].text.startswith("voice note 0:01 (") and notes[0].as_json()["note"] == notes[0].id


async def test_a_note_is_sealed_here_and_at_the_relay_and_opens_only_under_its_key(
    world: tuple[Path, Path, str],
) -> None:
    nurse, doctor, consult = world
    ogg = tone_note(1.0)
    old_ogg = tone_note(0.5)
    async with Session.open(home=nurse, subscribe=False) as s:
        note = record_note(s, consult, ogg)
        info = parse_note_body(note.body)
        with BlobCache(nurse) as cache:
            sealed = cache.read(note.sha)  # what goes up is what is kept: a resume sends the same bytes
        assert info.key is not None and filecrypt.open(info.key, sealed) == ogg
        assert not sealed.startswith(b"OggS") and note.size == info.size == len(sealed) == len(ogg) + 41
        assert (await send_pending_notes(s, 30)).queued
        # a note from before notes were sealed: a plain Ogg blob, a body without a key
        old_sha = hashlib.sha256(old_ogg).digest()
        await upload(s.link, consult, old_sha, old_ogg, timeout=20)
        old = OutItem(os.urandom(16), consult, wire.KINDS["note"], note_body(old_sha, len(old_ogg), 0.5))
        s.store.enqueue(old)
        await s.link.submit(old)
        await s.flush(20)
    async with Session.open(home=doctor) as s:
        await s.sync(20)
        assert await fetch_note(s, note.cid.hex(), timeout=20) == ogg
        assert await fetch_note(s, old.cid.hex(), timeout=20) == old_ogg  # read as before
        with BlobCache(doctor) as cache:
            assert cache.has(note.sha) and cache.read(note.sha) == sealed  # kept as the relay holds it
            with pytest.raises(Tampered):  # a blob that does not open under the key it is named with
                await fetch_blob(
                    s.link, cache, note.sha, lambda d: filecrypt.unseal(filecrypt.new_key(), d), timeout=20
                )
            assert not cache.has(note.sha)  # dropped: never played, never counted as here
        assert (
            await fetch_note(s, note.sha.hex(), timeout=20) == ogg
        )  # fetched again; by blob id, key from history

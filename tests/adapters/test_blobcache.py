"""The device's blob cache and pending-notes table, and how a note message reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgpack
import pytest

from medcomm.adapters.blobcache import BlobCache, CacheLimits, note_body, parse_note_body
from medcomm.adapters.localstore import Line, body_text
from medcomm.core import filecrypt, wire
from medcomm.errors import LimitExceeded, NotFound, WireError


def test_put_is_content_addressed_durable_and_checked_on_read(tmp_path: Path) -> None:
    with BlobCache(tmp_path) as cache:
        sha = cache.put(b"ogg bytes")
        assert sha == hashlib.sha256(b"ogg bytes").digest() and cache.has(sha)
        assert cache.put(b"ogg bytes") == sha and cache.read(sha) == b"ogg bytes"
        assert list(cache.partial_dir.iterdir()) == []  # no temporary file left behind
        cache.path(sha).write_bytes(b"bit rot")
        with pytest.raises(NotFound, match="damaged"):
            cache.read(sha)
        assert not cache.has(sha)


def test_adopt_takes_only_a_matching_download(tmp_path: Path) -> None:
    with BlobCache(tmp_path) as cache:
        sha = hashlib.sha256(b"right").digest()
        cache.partial_path(sha).write_bytes(b"wrong")
        with pytest.raises(WireError):
            cache.adopt(cache.partial_path(sha), sha)
        assert not cache.partial_path(sha).exists() and not cache.has(sha)
        cache.partial_path(sha).write_bytes(b"right")
        assert cache.adopt(cache.partial_path(sha), sha).read_bytes() == b"right"


def test_pending_notes_survive_a_reopen_until_done_and_failed_ones_are_kept(tmp_path: Path) -> None:
    with BlobCache(tmp_path) as cache:
        sha = cache.put(b"note")
        with pytest.raises(NotFound):  # the blob must be durable before the row
            cache.add_pending("abcdef", b"\1" * 32, 4, b"body")
        first = cache.add_pending("abcdef", sha, 4, note_body(sha, 4, 1.0))
        second = cache.add_pending("abcdef", sha, 4, note_body(sha, 4, 1.0))
        assert first.cid != second.cid
    with BlobCache(tmp_path) as cache:  # a crash or a killed process later
        assert [n.cid for n in cache.pending()] == [first.cid, second.cid]
        cache.failed(first.cid, "not a member")
        cache.done(second.cid)
        assert cache.pending() == [] and cache.pending_count() == 0
        (kept,) = cache.pending(include_failed=True)
        assert kept.cid == first.cid and kept.error == "not a member"
        assert cache.find_pending(first.cid) == kept


def test_trim_removes_the_least_recently_used_but_never_a_pending_blob(tmp_path: Path) -> None:
    with BlobCache(tmp_path, CacheLimits(max_cache_bytes=1500)) as cache:
        old, mid, new = (cache.put(bytes([i]) * 1000) for i in range(3))
        for age, sha in ((300, old), (200, mid), (100, new)):
            t = cache.path(sha).stat().st_mtime - age
            os.utime(cache.path(sha), (t, t))
        cache.add_pending("abcdef", old, 1000, b"body")  # the oldest still waits to be sent
        assert cache.trim() == 1000
        assert cache.has(old) and not cache.has(mid) and cache.has(new)


def test_pinned_blobs_neither_go_nor_push_fetched_ones_out(tmp_path: Path) -> None:
    """Originals kept for requests are pinned and bounded on their own: however many there
    are, the fetched blobs keep the whole of the cache's budget."""
    with BlobCache(tmp_path, CacheLimits(max_cache_bytes=1500)) as cache:
        kept = [cache.put(bytes([i]) * 1000) for i in range(5)]
        cache.pin(b"original:x", kept)
        fetched = cache.put(b"f" * 1000)
        t = cache.path(fetched).stat().st_mtime + 100  # the most recently used
        os.utime(cache.path(fetched), (t, t))
        assert cache.trim() == 0 and all(cache.has(s) for s in [*kept, fetched])
        cache.unpin(b"original:x")
        assert cache.trim() == 5000 and cache.has(fetched)  # the five older go first


def test_a_note_body_round_trips_and_garbage_is_refused() -> None:
    sha = hashlib.sha256(b"x").digest()
    info = parse_note_body(note_body(sha, 9400, 12.4))
    assert (info.sha, info.size, info.duration_s, info.mime) == (sha, 9400, 12.4, "audio/ogg")
    for bad in (
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"blob": "zz", "size": 1, "duration_s": 1}),
        msgpack.packb({"blob": sha.hex(), "size": 0, "duration_s": 1}),
        msgpack.packb({"blob": sha.hex(), "size": 10, "duration_s": -1}),
        b"\0" * 300,
    ):
        with pytest.raises(WireError):
            parse_note_body(bad)


def test_a_sealed_note_body_carries_its_key_and_a_bad_key_or_size_is_refused() -> None:
    sha, key = hashlib.sha256(b"x").digest(), filecrypt.new_key()
    size = filecrypt.sealed_size(9400)
    body = note_body(sha, size, 12.4, key)
    assert len(body) <= CacheLimits().max_body
    info = parse_note_body(body)
    assert (info.sha, info.size, info.key) == (sha, size, key)
    assert parse_note_body(note_body(sha, 9400, 12.4)).key is None  # an old note: a plain Ogg file
    good = msgpack.unpackb(body, raw=False)
    for bad in (
        {**good, "k": key[:16]},
        {**good, "k": key.hex()},
        {**good, "size": 40},  # shorter than any sealed file (41 bytes for an empty one)
    ):
        with pytest.raises(WireError):
            parse_note_body(msgpack.packb(bad, use_bin_type=True))
    with pytest.raises(WireError):
        note_body(sha, size, 1.0, b"short")


def test_history_shows_a_note_and_its_play_id() -> None:
    body = note_body(hashlib.sha256(b"x").digest(), 9400, 72.4)
    assert body_text(wire.KINDS["note"], body) == "voice note 1:12 (9.4 KB)"
    assert body_text(wire.KINDS["note"], b"junk") == "(unreadable voice note)"
    line = Line("abcdef", 3, "ab" * 16, "amina", 0, "note", "voice note 1:12 (9.4 KB)", "stored")
    assert line.as_json()["note"] == "ab" * 16
    assert "note" not in Line("abcdef", 4, "cd" * 16, "amina", 0, "text", "hi", "stored").as_json()


def test_limits_hold(tmp_path: Path) -> None:
    with BlobCache(tmp_path, CacheLimits(max_blob=10, max_pending=1)) as cache:
        with pytest.raises(LimitExceeded):
            cache.put(b"x" * 11)
        sha = cache.put(b"x")
        cache.add_pending("abcdef", sha, 1, b"b")
        with pytest.raises(LimitExceeded):
            cache.add_pending("abcdef", sha, 1, b"b")

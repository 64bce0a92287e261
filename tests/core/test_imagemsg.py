"""Image message bodies and tile manifests: round trips, and what a hostile peer cannot pass."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import msgpack
import pytest

from medcomm.core import filecrypt, imagemsg
from medcomm.core.imagemsg import (
    Arrived,
    BlobRef,
    Detail,
    FirstView,
    ImageInfo,
    Manifest,
    Original,
    TileEntry,
)
from medcomm.core.tiles import Pyramid, TileId
from medcomm.errors import LimitExceeded, MedcommError, Tampered, WireError


def sha(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def info(**changes: object) -> ImageInfo:
    pyr = Pyramid(2480, 3508)
    base = ImageInfo(
        "report",
        "Hb low?",
        "page straightened",
        FirstView(sha(1), 19_600, "image/avif", 1000, 1414, "avif", 42, True),
        Original(sha(2), 2_100_000, "image/jpeg", 4000, 3000, True),
        Detail(2480, 3508, pyr.levels, "avif", "image/avif", 40, BlobRef(sha(3), 2900), 65, 121_000),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_body_round_trips_and_stays_small():
    body = imagemsg.encode_body(info())
    assert imagemsg.parse_body(body) == info()
    assert len(body) < 600  # ~4 IP packets' worth of payload on EDGE, a fraction of the first view
    bare = info(detail=None)  # the sender's plan before the tiles exist
    assert imagemsg.parse_body(imagemsg.encode_body(bare)) == bare


def test_a_large_original_is_named_by_its_parts():
    parts = (BlobRef(sha(10), 16 * 1024 * 1024), BlobRef(sha(11), 1000))
    big = info(original=Original(sha(2), 16 * 1024 * 1024 + 1000, "application/dicom", 512, 512, True, parts))
    got = imagemsg.parse_body(imagemsg.encode_body(big))
    assert got.original.blobs() == parts
    assert info().original.blobs() == (BlobRef(sha(2), 2_100_000),)  # one part: the original itself


def test_a_caption_over_the_limit_is_refused_before_anything_is_kept():
    with pytest.raises(LimitExceeded):
        imagemsg.encode_body(info(caption="x" * 1001))


def tamper(**fields: object) -> bytes:
    obj = msgpack.unpackb(imagemsg.encode_body(info()), raw=False)
    for path, value in fields.items():
        node = obj
        *keys, last = path.split("__")
        for k in keys:
            node = node[k]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "fields",
    [
        {"v": 2},
        {"kind": "selfie"},
        {"first__sha": b"short"},
        {"first__size": 0},
        {"first__size": 10**9},
        {"first__codec": "bmp"},
        {"first__mime": "not a mime"},
        {"original__size": 17 * 1024 * 1024},  # over one blob, and no parts
        {"original__parts": [[sha(1), 5]]},  # one part is not how a single blob is named
        {"original__parts": [[sha(1), 5], [sha(2), 5]]},  # do not add up to the size
        {"original__sent": None},
        {"pyramid__levels": 9},  # does not match 2480x3508
        {"pyramid__tile": 256},
        {"manifest__sha": "ab" * 32},  # hex text, not bytes
        {"tiles": 10**6},
        {"caption": 7},
    ],
)
def test_a_hostile_or_broken_body_is_refused(fields):
    with pytest.raises(WireError):
        imagemsg.parse_body(tamper(**fields))


def test_garbage_and_oversized_bodies_are_refused():
    for bad in (b"", b"\xc1", msgpack.packb([1, 2]), b"\x00" * 5000):
        with pytest.raises(WireError):
            imagemsg.parse_body(bad)


def manifest(d: Detail) -> Manifest:
    pyr = d.pyramid
    entries = []
    for level in reversed(range(pyr.levels)):
        cols, rows = pyr.grid(level)
        entries += [
            TileEntry(TileId(level, c, r), sha(level * 1000 + r * 50 + c), 2000)
            for r in range(rows)
            for c in range(cols)
        ]
    return Manifest(d.width, d.height, tuple(entries))


def test_a_manifest_round_trips_against_its_pyramid():
    d = info().detail
    assert d is not None
    m = manifest(d)
    assert len(m.entries) == d.pyramid.tile_count()
    data = imagemsg.encode_manifest(m)
    assert imagemsg.parse_manifest(data, d) == m
    assert len(data) < 45 * len(m.entries)
    assert m.entries[0].tile.level == d.levels - 1  # coarse first: the upload order


def test_a_manifest_for_another_pyramid_or_with_bad_tiles_is_refused():
    d = info().detail
    assert d is not None
    good = msgpack.unpackb(imagemsg.encode_manifest(manifest(d)), raw=False)
    other = replace(d, width=1000)
    with pytest.raises(WireError):
        imagemsg.parse_manifest(imagemsg.encode_manifest(manifest(d)), other)
    for bad_row in ([0, 99, 0, sha(1), 10], [0, 0, 0, sha(1), 0], [0, 0, 0, b"x", 10], good["tiles"][0]):
        hostile = dict(good, tiles=[*good["tiles"], bad_row])  # the last repeats a tile
        with pytest.raises(WireError):
            imagemsg.parse_manifest(msgpack.packb(hostile, use_bin_type=True), d)


def test_the_history_line_says_sizes_and_what_is_here():
    text = imagemsg.describe(info())
    assert text.startswith('image report "Hb low?" · first view 1000x1414 AVIF 19.6 KB')
    assert "detail 2480x3508, 65 tiles 121.0 KB" in text and "original JPEG 4000x3000 2.1 MB" in text
    assert imagemsg.describe(info(), Arrived(True, 12, False)).endswith("here: first view, 12/65 tiles")
    assert imagemsg.describe(info(), Arrived(False, None, False)).endswith("here: nothing yet")
    kept = replace(info().original, sent=False)
    assert "original JPEG 4000x3000 2.1 MB (on request) ·" in imagemsg.describe(info(original=kept))
    asked = imagemsg.describe(info(original=kept), Arrived(True, None, False), "requested")
    assert "2.1 MB (requested) ·" in asked and asked.endswith("here: first view")
    assert "2.1 MB ·" in imagemsg.describe(info(), Arrived(True, None, True), "downloaded")


def test_a_two_level_first_view_says_so_and_stays_a_lossy_preview():
    two = FirstView(sha(1), 12_600, "image/png", 1067, 1509, "png", 100, True)
    assert two.label == "lossy preview 1067x1509 PNG two-level"
    webp = FirstView(sha(1), 10_000, "image/webp", 1067, 1509, "webp", 100, True)
    assert webp.label == "lossy preview 1067x1509 WEBP two-level"
    assert replace(webp, quality=80).label == "lossy preview 1067x1509 WEBP q80"
    assert FirstView(sha(1), 9_000, "image/png", 128, 128, "png", 100, False).label == "lossless 128x128 PNG"
    assert info().first.label == "lossy preview 1000x1414 AVIF q42"
    body = imagemsg.encode_body(info(first=two))
    back = imagemsg.parse_body(body)
    assert back.first == two
    assert "first view 1067x1509 PNG two-level 12.6 KB" in imagemsg.describe(back)


# --- sealed images: a key in the body, sealed blobs named by their own hashes ---------------


def sealed_info(**changes: object) -> ImageInfo:
    """A body as ``share`` now makes it: a key, sealed sizes, the original's sealed parts."""
    key = filecrypt.new_key()
    base = info()
    d = replace(base.detail, manifest=BlobRef(sha(3), filecrypt.sealed_size(2900)), key=key)  # type: ignore[arg-type]
    parts = (BlobRef(sha(20), filecrypt.sealed_size(2_100_000)),)
    original = replace(base.original, parts=parts)
    return replace(
        base, first=replace(base.first, size=19_641), original=original, detail=d, key=key, **changes
    )  # type: ignore[arg-type]


def test_a_sealed_body_carries_its_key_and_names_the_sealed_blobs() -> None:
    sealed = sealed_info()
    body = imagemsg.encode_body(sealed)
    back = imagemsg.parse_body(body)
    assert back == sealed and back.key == sealed.key and back.detail.key == sealed.key  # type: ignore[union-attr]
    assert len(body) < 700  # the key (34 bytes) and the one part (~40) on top of the plain body
    assert back.original.blobs() == sealed.original.parts  # sealed: the parts, even when one
    assert back.original.sha == sha(2)  # the file's own hash stays, for the byte-exact check
    # sizes bound to a first view of max_first, sealed
    biggest = replace(sealed.first, size=filecrypt.sealed_size(imagemsg.LIMITS.max_first))
    assert imagemsg.parse_body(imagemsg.encode_body(replace(sealed, first=biggest))).first == biggest
    # an old body, without a key, is read as before
    assert imagemsg.parse_body(imagemsg.encode_body(info())).key is None


def sealed_tamper(**fields: object) -> bytes:
    obj = msgpack.unpackb(imagemsg.encode_body(sealed_info()), raw=False)
    for path, value in fields.items():
        node = obj
        *keys, last = path.split("__")
        for k in keys:
            node = node[k]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "fields",
    [
        {"k": b"short"},
        {"k": "ab" * 32},  # hex text, not bytes
        {"original__parts": None},  # sealed: the parts are always listed
        {"original__parts": [[sha(20), 2_100_000]]},  # not the sealed size of the file
        {"original__parts": [[sha(20), filecrypt.sealed_size(2_100_000) + 5]]},  # 5 bytes more than the file
        {"original__parts": [[sha(20), 24 + filecrypt.PIECE + 17 + 5]]},  # a length no file seals to
        {"first__size": filecrypt.sealed_size(imagemsg.LIMITS.max_first) + 1},
    ],
)
def test_a_hostile_sealed_body_is_refused(fields):
    with pytest.raises(WireError):
        imagemsg.parse_body(sealed_tamper(**fields))


def test_a_sealed_body_needs_its_key_everywhere_before_it_is_made() -> None:
    s = sealed_info()
    with pytest.raises(MedcommError):
        imagemsg.encode_body(replace(s, detail=replace(s.detail, key=None)))  # type: ignore[arg-type]
    with pytest.raises(MedcommError):
        imagemsg.encode_body(replace(s, original=replace(s.original, parts=())))


def test_a_sealed_manifest_opens_only_under_the_image_key() -> None:
    key = filecrypt.new_key()
    d = replace(info().detail, key=key)  # type: ignore[arg-type]
    m = manifest(d)
    blob = imagemsg.encode_manifest(m, key=key)
    plain = imagemsg.encode_manifest(m)
    assert len(blob) == filecrypt.sealed_size(len(plain)) and plain[:16] not in blob
    assert imagemsg.parse_manifest(blob, d) == m
    with pytest.raises(Tampered):
        imagemsg.parse_manifest(blob, replace(d, key=filecrypt.new_key()))
    with pytest.raises(Tampered):
        imagemsg.parse_manifest(plain, d)  # a plain manifest where a sealed one is due
    with pytest.raises(Tampered):
        imagemsg.parse_manifest(blob[:-1], d)
    # a sealed tile may be the sealed size of the largest tile, not more
    top = filecrypt.sealed_size(imagemsg.LIMITS.max_tile)
    rows = [TileEntry(e.tile, e.sha, top) for e in m.entries]
    assert imagemsg.parse_manifest(imagemsg.encode_manifest(replace(m, entries=tuple(rows)), key=key), d)
    over = [TileEntry(m.entries[0].tile, sha(1), top + 1), *rows[1:]]
    with pytest.raises(WireError):
        imagemsg.parse_manifest(imagemsg.encode_manifest(replace(m, entries=tuple(over)), key=key), d)

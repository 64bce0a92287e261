"""The relay's blob store on its own: offsets, limits, hashes, access, and crash safety."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from medcomm.errors import AccessDenied, LimitExceeded, NotFound, UsageError, WireError
from medcomm.server.blobs import BlobLimits, BlobStore

CHUNK = 8 * 1024
MEMBERS = {"aaaaaa": ["amina", "dr.chen"], "bbbbbb": ["bongani"], "cccccc": ["bongani", "amina"]}


def member_of(user: str) -> Callable[[str], bool]:
    """The store's membership question for ``user``, as the relay answers it."""
    return lambda consult: user in MEMBERS.get(consult, [])


def blob(n: int, seed: int = 1) -> tuple[bytes, bytes]:
    data = bytes((i * 7 + seed * 13 + i // 251) % 256 for i in range(n))
    return data, hashlib.sha256(data).digest()


def head(s: BlobStore, user: str, consult: str, sha: bytes, size: int) -> dict:
    return s.request(user, "blob.head", {"consult": consult, "sha": sha, "size": size}, member_of(user))  # type: ignore[return-value]


def put(s: BlobStore, user: str, consult: str, sha: bytes, offset: int, data: bytes) -> dict:
    args = {"consult": consult, "sha": sha, "offset": offset, "data": data}
    return s.request(user, "blob.put", args, member_of(user))  # type: ignore[return-value]


def get(s: BlobStore, user: str, sha: bytes, offset: int, length: int) -> dict:
    return s.request(user, "blob.get", {"sha": sha, "offset": offset, "length": length}, member_of(user))  # type: ignore[return-value]


def upload_all(s: BlobStore, user: str, consult: str, data: bytes, sha: bytes) -> dict:
    answer = head(s, user, consult, sha, len(data))
    have = answer["have"]
    while not answer["complete"]:
        answer = put(s, user, consult, sha, have, data[have : have + CHUNK])
        have = answer["have"]
    return answer


def partial_file(tmp_path: Path, sha: bytes, user: str) -> Path:
    return tmp_path / "blobs" / "partial" / f"{sha.hex()}.{user}"


@pytest.fixture
def store(tmp_path: Path):
    s = BlobStore(tmp_path)
    yield s
    s.close()


def test_upload_resumes_at_the_stored_offset_across_a_restart(tmp_path: Path, store: BlobStore) -> None:
    data, sha = blob(3 * CHUNK + 100)
    assert head(store, "amina", "aaaaaa", sha, len(data)) == {"have": 0, "complete": False}
    assert put(store, "amina", "aaaaaa", sha, 0, data[:CHUNK]) == {"have": CHUNK, "complete": False}
    assert put(store, "amina", "aaaaaa", sha, CHUNK, data[CHUNK : 2 * CHUNK])["have"] == 2 * CHUNK
    # the partial file's length IS the acknowledged offset
    assert partial_file(tmp_path, sha, "amina").stat().st_size == 2 * CHUNK
    store.close()
    again = BlobStore(tmp_path)
    try:
        assert head(again, "amina", "aaaaaa", sha, len(data)) == {"have": 2 * CHUNK, "complete": False}
        put(again, "amina", "aaaaaa", sha, 2 * CHUNK, data[2 * CHUNK : 3 * CHUNK])
        done = put(again, "amina", "aaaaaa", sha, 3 * CHUNK, data[3 * CHUNK :])
        assert done == {"have": len(data), "complete": True}
        assert not partial_file(tmp_path, sha, "amina").exists()
        final = tmp_path / "blobs" / sha.hex()[:2] / sha.hex()
        assert final.read_bytes() == data
        assert head(again, "amina", "aaaaaa", sha, len(data)) == {"have": len(data), "complete": True}
    finally:
        again.close()


def test_a_put_at_the_wrong_offset_writes_nothing_and_answers_the_stored_one(
    tmp_path: Path, store: BlobStore
) -> None:
    data, sha = blob(2 * CHUNK)
    head(store, "amina", "aaaaaa", sha, len(data))
    put(store, "amina", "aaaaaa", sha, 0, data[:CHUNK])
    for wrong in (0, 100, 2 * CHUNK - 1):  # a repeat (lost answer) and a gap
        assert put(store, "amina", "aaaaaa", sha, wrong, data[wrong : wrong + 1]) == {
            "have": CHUNK,
            "complete": False,
        }
    assert partial_file(tmp_path, sha, "amina").read_bytes() == data[:CHUNK]


def test_sizes_and_chunks_over_the_limits_are_refused(store: BlobStore) -> None:
    data, sha = blob(100)
    with pytest.raises(LimitExceeded):
        head(store, "amina", "aaaaaa", sha, 16 * 1024 * 1024 + 1)
    with pytest.raises(LimitExceeded):
        head(store, "amina", "aaaaaa", sha, 0)
    head(store, "amina", "aaaaaa", sha, len(data))
    with pytest.raises(LimitExceeded):  # past the declared size
        put(store, "amina", "aaaaaa", sha, 0, data + b"x")
    big, big_sha = blob(3 * CHUNK)
    head(store, "amina", "aaaaaa", big_sha, len(big))
    with pytest.raises(LimitExceeded):
        put(store, "amina", "aaaaaa", big_sha, 0, big[: CHUNK + 1])
    with pytest.raises(UsageError):
        put(store, "amina", "aaaaaa", big_sha, 0, b"")


def test_a_put_without_a_head_is_not_found(store: BlobStore) -> None:
    data, sha = blob(10)
    with pytest.raises(NotFound):
        put(store, "amina", "aaaaaa", sha, 0, data)


def fresh_put(s: BlobStore, user: str, consult: str, sha: bytes, offset: int, data: bytes, size: int) -> dict:
    """A put that declares the blob's size: a client that knows its blob is new skips the head."""
    args = {"consult": consult, "sha": sha, "offset": offset, "data": data, "size": size}
    return s.request(user, "blob.put", args, member_of(user))  # type: ignore[return-value]


def test_a_put_that_declares_the_size_starts_the_upload_without_a_head(
    tmp_path: Path, store: BlobStore
) -> None:
    data, sha = blob(2 * CHUNK + 7)
    assert fresh_put(store, "amina", "aaaaaa", sha, 0, data[:CHUNK], len(data)) == {
        "have": CHUNK,
        "complete": False,
    }
    assert partial_file(tmp_path, sha, "amina").read_bytes() == data[:CHUNK]
    put(store, "amina", "aaaaaa", sha, CHUNK, data[CHUNK : 2 * CHUNK])
    assert put(store, "amina", "aaaaaa", sha, 2 * CHUNK, data[2 * CHUNK :]) == {
        "have": len(data),
        "complete": True,
    }
    assert get(store, "dr.chen", sha, 0, CHUNK)["data"] == data[:CHUNK]
    # the blob is there: the same put again writes nothing and says so (another consult too)
    assert fresh_put(store, "amina", "cccccc", sha, 0, data[:CHUNK], len(data)) == {
        "have": len(data),
        "complete": True,
    }


def test_a_declaring_put_where_the_relay_holds_part_answers_its_offset(
    tmp_path: Path, store: BlobStore
) -> None:
    data, sha = blob(3 * CHUNK)
    head(store, "amina", "aaaaaa", sha, len(data))
    put(store, "amina", "aaaaaa", sha, 0, data[:CHUNK])
    put(store, "amina", "aaaaaa", sha, CHUNK, data[CHUNK : 2 * CHUNK])
    assert fresh_put(store, "amina", "aaaaaa", sha, 0, data[:CHUNK], len(data)) == {
        "have": 2 * CHUNK,
        "complete": False,
    }
    assert partial_file(tmp_path, sha, "amina").read_bytes() == data[: 2 * CHUNK]  # nothing written


def test_a_declaring_put_makes_every_check_a_head_makes(tmp_path: Path) -> None:
    s = BlobStore(tmp_path, BlobLimits(max_partials=1))
    try:
        data, sha = blob(CHUNK + 50)
        with pytest.raises(AccessDenied):
            fresh_put(s, "bongani", "aaaaaa", sha, 0, data[:CHUNK], len(data))
        with pytest.raises(LimitExceeded):
            fresh_put(s, "amina", "aaaaaa", sha, 0, data[:CHUNK], 16 * 1024 * 1024 + 1)
        with pytest.raises(LimitExceeded):  # past the size it declares
            fresh_put(s, "amina", "aaaaaa", sha, 0, data[:CHUNK], CHUNK - 1)
        assert fresh_put(s, "amina", "aaaaaa", sha, 0, data[:CHUNK], len(data))["have"] == CHUNK
        other, other_sha = blob(100, seed=2)
        with pytest.raises(LimitExceeded):  # one unfinished upload per user here: the one above
            fresh_put(s, "amina", "aaaaaa", other_sha, 0, other, len(other))
        assert put(s, "amina", "aaaaaa", sha, CHUNK, data[CHUNK:])["complete"]
        # an outsider naming a known hash still uploads every byte to prove he holds it
        assert fresh_put(s, "bongani", "bbbbbb", sha, 0, data[:100], len(data)) == {
            "have": 100,
            "complete": False,
        }
        with pytest.raises(NotFound):
            get(s, "bongani", sha, 0, 10)
    finally:
        s.close()


def test_bad_arguments_are_refused(store: BlobStore) -> None:
    with pytest.raises(UsageError):
        head(store, "amina", "aaaaaa", b"short", 10)
    amina = member_of("amina")
    with pytest.raises(UsageError):
        store.request("amina", "blob.head", {"consult": "aaaaaa", "sha": "0" * 64, "size": 1}, amina)
    with pytest.raises(UsageError):
        store.request("amina", "blob.head", {"consult": "aaaaaa", "sha": b"\0" * 32, "size": -1}, amina)
    with pytest.raises(WireError):
        head(store, "amina", "not a consult", b"\0" * 32, 10)
    with pytest.raises(UsageError):
        store.request("amina", "blob.delete", {}, member_of("amina"))


def test_a_hash_mismatch_at_completion_empties_the_partial(tmp_path: Path, store: BlobStore) -> None:
    data, sha = blob(CHUNK + 10)
    head(store, "amina", "aaaaaa", sha, len(data))
    put(store, "amina", "aaaaaa", sha, 0, data[:CHUNK])
    with pytest.raises(UsageError, match="SHA-256"):
        put(store, "amina", "aaaaaa", sha, CHUNK, b"X" * 10)  # wrong bytes at the end
    assert head(store, "amina", "aaaaaa", sha, len(data)) == {"have": 0, "complete": False}
    with pytest.raises(NotFound):
        get(store, "amina", sha, 0, 10)
    assert upload_all(store, "amina", "aaaaaa", data, sha)["complete"]  # a clean retry succeeds
    assert get(store, "dr.chen", sha, 0, 10)["data"] == data[:10]


def test_membership_for_head_put_and_get(store: BlobStore) -> None:
    data, sha = blob(CHUNK // 2)
    with pytest.raises(AccessDenied):
        head(store, "bongani", "aaaaaa", sha, len(data))
    with pytest.raises(AccessDenied):
        head(store, "amina", "zzzzzz", sha, len(data))  # no such consult: nobody is a member
    head(store, "amina", "aaaaaa", sha, len(data))
    with pytest.raises(AccessDenied):
        put(store, "bongani", "aaaaaa", sha, 0, data)
    put(store, "amina", "aaaaaa", sha, 0, data)
    assert get(store, "dr.chen", sha, 0, CHUNK) == {"data": data, "size": len(data)}
    # an outsider learns nothing: unknown and unreadable blobs look alike
    with pytest.raises(NotFound) as unreadable:
        get(store, "bongani", sha, 0, 10)
    with pytest.raises(NotFound) as unknown:
        get(store, "bongani", b"\1" * 32, 0, 10)
    assert str(unreadable.value) == str(unknown.value)


def test_a_known_hash_alone_does_not_attach_a_blob_to_another_consult(store: BlobStore) -> None:
    data, sha = blob(2 * CHUNK + 5)
    upload_all(store, "amina", "aaaaaa", data, sha)
    # bongani (consult bbbbbb) names the same hash: he must upload every byte to prove he holds it
    assert head(store, "bongani", "bbbbbb", sha, len(data)) == {"have": 0, "complete": False}
    with pytest.raises(NotFound):
        get(store, "bongani", sha, 0, 10)
    with pytest.raises(UsageError):  # wrong bytes do not pass the hash check
        upload_all(store, "bongani", "bbbbbb", b"Y" * len(data), sha)
    assert upload_all(store, "bongani", "bbbbbb", data, sha)["complete"]
    assert get(store, "bongani", sha, 0, 10)["data"] == data[:10]
    # amina can already read it: she attaches it to another consult of hers without re-upload
    assert head(store, "amina", "cccccc", sha, len(data)) == {"have": len(data), "complete": True}
    with pytest.raises(UsageError):  # the size is part of what a head claims
        head(store, "amina", "aaaaaa", sha, len(data) + 1)


def test_get_ranges(store: BlobStore) -> None:
    data, sha = blob(2 * CHUNK + 300)
    upload_all(store, "amina", "aaaaaa", data, sha)
    assert get(store, "amina", sha, 5, 100)["data"] == data[5:105]
    assert get(store, "amina", sha, 2 * CHUNK, CHUNK) == {"data": data[2 * CHUNK :], "size": len(data)}
    assert get(store, "amina", sha, len(data), 10)["data"] == b""
    with pytest.raises(UsageError):
        get(store, "amina", sha, len(data) + 1, 10)
    with pytest.raises(LimitExceeded):
        get(store, "amina", sha, 0, CHUNK + 1)
    with pytest.raises(LimitExceeded):
        get(store, "amina", sha, 0, 0)


def test_unfinished_uploads_per_user_are_bounded_and_idle_ones_evicted(tmp_path: Path) -> None:
    s = BlobStore(tmp_path, BlobLimits(max_partials=2, partial_idle=60.0))
    try:
        shas = [blob(100, seed)[1] for seed in range(3)]
        for sha in shas[:2]:
            head(s, "amina", "aaaaaa", sha, 100)
            put(s, "amina", "aaaaaa", sha, 0, b"\0")
        with pytest.raises(LimitExceeded):
            head(s, "amina", "aaaaaa", shas[2], 100)
        head(s, "dr.chen", "aaaaaa", shas[2], 100)  # the bound is per user
        old = time.time() - 120
        os.utime(partial_file(tmp_path, shas[0], "amina"), (old, old))
        assert head(s, "amina", "aaaaaa", shas[2], 100)["have"] == 0
        assert not partial_file(tmp_path, shas[0], "amina").exists()
        assert head(s, "amina", "aaaaaa", shas[1], 100)["have"] == 1  # the active one stays
    finally:
        s.close()


def test_startup_completes_a_full_partial_and_drops_orphans(tmp_path: Path) -> None:
    data, sha = blob(CHUNK + 1)
    s = BlobStore(tmp_path)
    head(s, "amina", "aaaaaa", sha, len(data))
    put(s, "amina", "aaaaaa", sha, 0, data[:CHUNK])
    s.close()
    # a crash after the last chunk's fsync, before the commit: the partial holds every byte
    with open(partial_file(tmp_path, sha, "amina"), "ab") as f:
        f.write(data[CHUNK:])
    orphan = tmp_path / "blobs" / "partial" / f"{'ab' * 32}.amina"
    orphan.write_bytes(b"left over")
    s = BlobStore(tmp_path)
    try:
        assert not orphan.exists()
        assert head(s, "amina", "aaaaaa", sha, len(data)) == {"have": len(data), "complete": True}
        assert get(s, "dr.chen", sha, CHUNK, 10)["data"] == data[CHUNK:]
    finally:
        s.close()


KILLED_WRITER = """
import hashlib, sys
from pathlib import Path
from medcomm.server.blobs import BlobStore
data = (bytes(range(251)) * ({size} // 251 + 1))[:{size}]
sha = hashlib.sha256(data).digest()
member_of = lambda c: True
s = BlobStore(Path(sys.argv[1]))
args = {{"consult": "aaaaaa", "sha": sha, "size": len(data)}}
have = s.request("amina", "blob.head", args, member_of)["have"]
while True:
    args = {{"consult": "aaaaaa", "sha": sha, "offset": have, "data": data[have:have + {chunk}]}}
    have = s.request("amina", "blob.put", args, member_of)["have"]
    print(have, flush=True)
    if have == len(data):
        break
"""


def test_sigkill_keeps_every_acknowledged_offset(tmp_path: Path) -> None:
    """A writer process killed mid-upload: the partial file is at least as long as the last
    offset it acknowledged, holds exactly the upload's bytes, and the upload resumes there."""
    size = 300 * CHUNK
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    sha = hashlib.sha256(data).digest()
    script = KILLED_WRITER.format(size=size, chunk=CHUNK)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = 0
    try:
        for _ in range(20):
            acked = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert acked >= 20 * CHUNK
    length = partial_file(tmp_path, sha, "amina").stat().st_size
    assert acked <= length < size  # a kill mid-write may leave part of an unacknowledged chunk
    assert partial_file(tmp_path, sha, "amina").read_bytes() == data[:length]
    s = BlobStore(tmp_path)
    try:
        assert head(s, "amina", "aaaaaa", sha, size)["have"] == length
        end = min(size, length + CHUNK)
        assert put(s, "amina", "aaaaaa", sha, length, data[length:end])["have"] == end
    finally:
        s.close()


def test_a_disk_failure_is_a_retryable_error_not_a_dropped_connection(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medcomm.errors import MedcommError
    from medcomm.server.relay import error_code

    data, sha = blob(100)
    head(store, "amina", "aaaaaa", sha, len(data))

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(MedcommError) as failed:
        put(store, "amina", "aaaaaa", sha, 0, data)
    assert error_code(failed.value) == "error"  # the client's signal to back off and retry
    monkeypatch.undo()
    # the bytes were written but never acknowledged; the next head finds them all, verifies
    # them and completes the blob instead of claiming "have everything" while incomplete
    assert head(store, "amina", "aaaaaa", sha, len(data)) == {"have": len(data), "complete": True}
    assert get(store, "dr.chen", sha, 0, 100)["data"] == data


def test_a_users_blobs_stop_at_their_quota(tmp_path: Path) -> None:
    """Finished and begun uploads count; a blob linked into a second consult counts once;
    another user is not held back by it."""
    s = BlobStore(tmp_path, BlobLimits(user_quota=3 * CHUNK))
    try:
        first, first_sha = blob(2 * CHUNK, seed=1)
        assert upload_all(s, "amina", "aaaaaa", first, first_sha)["complete"]
        assert head(s, "amina", "cccccc", first_sha, len(first))["complete"]  # linked: no new bytes
        begun, begun_sha = blob(CHUNK // 2, seed=2)
        head(s, "amina", "aaaaaa", begun_sha, len(begun))  # 2.5 chunks held or begun
        big, big_sha = blob(CHUNK, seed=3)
        with pytest.raises(LimitExceeded, match="quota"):
            head(s, "amina", "aaaaaa", big_sha, len(big))
        assert upload_all(s, "bongani", "bbbbbb", big, big_sha)["complete"]
        small, small_sha = blob(CHUNK // 4, seed=4)
        assert upload_all(s, "amina", "aaaaaa", small, small_sha)["complete"]  # still room for this
    finally:
        s.close()

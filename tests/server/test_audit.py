"""The audit log: append-only, hash-chained, verified; and what a real relay records in it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from medcomm.server import audit
from tests.harness.relay import RelayProcess, medcomm


def _log(tmp_path: Path, n: int = 5) -> audit.AuditLog:
    log = audit.AuditLog(tmp_path)
    for i in range(n):
        log.record("dr.chen", "read", "k7m2qd", after=i, count=3)
    log.flush()
    return log


def test_entries_chain_and_verify(tmp_path: Path) -> None:
    log = _log(tmp_path)
    first = log.record("amina", "open", "k7m2qd", members=2)
    log.close()
    entries = list(audit.read(tmp_path))
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev == audit.GENESIS
    assert all(b.prev == a.hash for a, b in zip(entries, entries[1:], strict=False))
    assert entries[-1] == first
    assert entries[-1].as_dict()["detail"] == {"members": 2}
    v = audit.verify(tmp_path)
    assert v.ok and v.entries == 6 and v.head_seq == 6 and v.head_hash == first.hash.hex()
    assert [e.seq for e in audit.read(tmp_path, actor="amina")] == [6]
    assert [e.seq for e in audit.read(tmp_path, consult="zzzzzz")] == []


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    _log(tmp_path, 3).close()
    again = audit.AuditLog(tmp_path)
    e = again.record("dr.chen", "fetch", "k7m2qd", blob="00ff", size=10)
    again.close()
    assert e.seq == 4
    assert audit.verify(tmp_path).ok


def test_updates_and_deletes_are_refused(tmp_path: Path) -> None:
    _log(tmp_path).close()
    db = sqlite3.connect(tmp_path / audit.AUDIT_FILE)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor='nobody' WHERE seq=2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq=5")
    db.close()


@pytest.mark.parametrize(
    ("tamper", "at", "why"),
    [
        ("UPDATE audit SET actor='nobody' WHERE seq=3", 3, "changed"),
        ("UPDATE audit SET detail='{}' WHERE seq=2", 2, "changed"),
        ("DELETE FROM audit WHERE seq=3", 3, "missing"),
        ("UPDATE audit SET prev=zeroblob(32) WHERE seq=4", 4, "does not follow"),
    ],
)
def test_tampering_by_hand_is_found(tmp_path: Path, tamper: str, at: int, why: str) -> None:
    """Someone with the file drops the triggers and edits: the chain names the entry."""
    _log(tmp_path).close()
    db = sqlite3.connect(tmp_path / audit.AUDIT_FILE)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute(tamper)
    db.commit()
    db.close()
    v = audit.verify(tmp_path)
    assert not v.ok and v.broken_at == at and why in v.why


def test_an_unknown_action_is_a_bug_not_an_entry(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path)
    with pytest.raises(ValueError):
        log.record("amina", "peek", "k7m2qd")
    log.close()
    assert audit.verify(tmp_path).entries == 0


def _entries(relay: RelayProcess, *extra: str) -> list[dict]:
    out = medcomm("admin", "--data", str(relay.data), "audit", "--json", *extra, check=True)
    return [json.loads(x) for x in out.stdout.splitlines()]


def test_a_real_relay_accounts_for_open_read_fetch_export(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    medcomm("send", consult, "SpO2 88%", home=nurse, check=True)
    medcomm("history", consult, home=doctor, check=True)  # the doctor's device reads the backlog
    note = tmp_path / "n.wav"
    import wave

    with wave.open(str(note), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(bytes(48000 * 2))
    noted = medcomm("note", consult, "--from", str(note), home=nurse, timeout=120)
    if noted.returncode == 69:
        pytest.skip("libopus missing: no note to fetch")
    note_id = json.loads(
        [
            x
            for x in medcomm("history", consult, "--json", home=doctor, check=True).stdout.splitlines()
            if json.loads(x)["kind"] == "note"
        ][0]
    )["note"]
    medcomm("play", note_id, "--out", str(tmp_path / "out.wav"), home=doctor, check=True, timeout=120)
    medcomm("export", consult, "--format", "md", "--out", str(tmp_path / "r.md"), home=doctor, check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = _entries(relay, "--consult", consult)
        if {"open", "read", "fetch", "export"} <= {e["action"] for e in entries}:
            break
        time.sleep(0.2)
    actions = {(e["actor"], e["action"]) for e in entries}
    assert ("amina", "open") in actions
    assert ("dr.chen", "read") in actions
    assert ("dr.chen", "fetch") in actions
    assert ("dr.chen", "export") in actions
    assert all(e["consult"] == consult for e in entries)
    text = (relay.data / audit.AUDIT_FILE).read_bytes()
    assert b"SpO2" not in text  # ids and counts only, never what was said
    ok = medcomm("admin", "--data", str(relay.data), "audit", "--verify", check=True)
    assert "intact" in ok.stdout
    relay.stop()
    db = sqlite3.connect(relay.data / audit.AUDIT_FILE)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET actor='someone' WHERE seq=1")
    db.commit()
    db.close()
    bad = medcomm("admin", "--data", str(relay.data), "audit", "--verify")
    assert bad.returncode == 1 and "BROKEN at entry 1" in bad.stderr

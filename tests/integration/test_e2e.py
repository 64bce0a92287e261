"""End to end encryption against a real relay: what the relay keeps is unreadable, and a
removed member cannot read what follows, even with the relay's own copy in hand."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import msgpack
import pytest

from medcomm.adapters.localstore import LocalStore
from medcomm.adapters.profile import data_dir, load_profile
from medcomm.core import e2e, wire
from tests.harness.relay import RelayProcess, medcomm

pytestmark = pytest.mark.timeout(300)


def history(home: Path, consult: str) -> list[dict]:
    out = medcomm("history", consult, "--json", home=home, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def relay_files(data: Path) -> list[Path]:
    """Everything the relay wrote: its databases (with their WAL), blob folder and logs."""
    return [p for p in data.rglob("*") if p.is_file()]


def hits(paths: list[Path], needles: list[bytes]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        data = path.read_bytes()
        found += [(path.name, repr(n[:16])) for n in needles if n in data]
    return found


@pytest.fixture
def logged_relay(tmp_path: Path) -> RelayProcess:
    data = tmp_path / "relay"
    data.mkdir()
    r = RelayProcess(data, extra=["--enrolments-per-minute", "1000"], log=data / "relay.log").start()
    yield r
    r.stop()


def test_the_relay_keeps_no_readable_text(logged_relay: RelayProcess, tmp_path: Path) -> None:
    """Canaries in a consult's title, a chat message, a case card, a follow-up, an image's
    caption and file name, a voice note's file name, and the image's own bytes: after delivery, the
    relay's databases, blob folder and log hold none of them; the doctor reads them all."""
    from tests.integration.test_notes_cli import speechlike
    from tests.integration.test_share_cli import report_photo

    nurse = logged_relay.identity(tmp_path, "amina", "clinic")
    doctor = logged_relay.identity(tmp_path, "dr.chen", "doctor")
    chat, complaint, reason, caption, name, title = (f"CANARY{secrets.token_hex(6)}" for _ in range(6))
    opened = medcomm("consult", "open", f"Boy, 6 {title}", "--with", "dr.chen", home=nurse, check=True)
    consult = opened.stdout.strip()
    medcomm("send", consult, f"SpO2 91% {chat}", home=nurse, check=True)
    medcomm("case", consult, "--set", f"complaint={complaint}", home=nurse, check=True)
    medcomm("followup", consult, "--due", "+7d", "--reason", reason, home=nurse, check=True)
    photo, wav = tmp_path / f"{name}.jpg", tmp_path / f"{name}.wav"
    report_photo(photo, 900, 700)
    speechlike(wav, 2.0)
    medcomm("share", consult, str(photo), "--caption", caption, "--original", home=nurse, check=True)
    medcomm("note", consult, "--from", str(wav), home=nurse, check=True)
    medcomm("sync", home=nurse, check=True)
    medcomm("sync", home=doctor, check=True)
    seen = history(doctor, consult)
    texts = " ".join(m["text"] for m in seen)
    assert chat in texts and reason in texts and caption in texts
    assert {"image", "note"} <= {m["kind"] for m in seen}
    listed = medcomm("consult", "list", "--json", home=doctor, check=True).stdout
    assert [json.loads(line)["title"] for line in listed.splitlines()] == [f"Boy, 6 {title}"]
    logged_relay.stop()  # everything flushed to its files
    files = relay_files(logged_relay.data)
    assert {"relay.sqlite3", "relay.log", "blobs.sqlite3"} <= {p.name for p in files}
    assert sum(p.parent.name != logged_relay.data.name for p in files) >= 3  # blobs: view, original, note
    raw = photo.read_bytes()
    canaries = [c.encode() for c in (chat, complaint, reason, caption, name, title)]
    pieces = [raw[i : i + 32] for i in range(0, len(raw) - 32, len(raw) // 8)] + [b"OggS"]
    assert hits(files, canaries + pieces) == []


def test_a_removed_member_cannot_read_what_follows(logged_relay: RelayProcess, tmp_path: Path) -> None:
    nurse = logged_relay.identity(tmp_path, "amina", "clinic")
    chen = logged_relay.identity(tmp_path, "dr.chen", "doctor")
    osei = logged_relay.identity(tmp_path, "dr.osei", "doctor")
    consult = medcomm(
        "consult", "open", "Consult", "--with", "dr.chen,dr.osei", home=nurse, check=True
    ).stdout.strip()
    medcomm("send", consult, "before the removal", home=nurse, check=True)
    medcomm("sync", home=osei, check=True)
    assert "before the removal" in [m["text"] for m in history(osei, consult)]

    out = medcomm("consult", "remove", consult, "dr.osei", home=chen, check=True)
    assert "dr.osei" not in out.stdout
    medcomm("send", consult, "after: from the nurse", home=nurse, check=True)
    medcomm("send", consult, "after: from the doctor", home=chen, check=True)
    medcomm("sync", home=nurse, check=True)
    assert {"after: from the nurse", "after: from the doctor"} <= {m["text"] for m in history(nurse, consult)}

    # Through the relay: no longer a member, nothing new comes.
    medcomm("sync", home=osei)
    assert not any(m["text"].startswith("after") for m in history(osei, consult))

    # With the relay's own copy in hand (a relay that ignored the removal, or its disk):
    # every message after the removal stays closed to dr.osei's device.
    db = sqlite3.connect(logged_relay.data / "relay.sqlite3")
    rows = db.execute(
        "SELECT seq, cid, sender, time, kind, body FROM messages WHERE consult=? ORDER BY seq", (consult,)
    ).fetchall()
    db.close()
    removal = next(
        seq for seq, _, _, _, kind, body in rows
        if kind == wire.KINDS["system"] and msgpack.unpackb(body).get("event") == "remove"
    )  # fmt: skip
    profile = load_profile(osei)
    me = e2e.Identity(profile.name, profile.seed)
    after = [r for r in rows if r[0] > removal]
    assert sum(r[4] == wire.KINDS["text"] for r in after) == 2
    for seq, _, _, _, kind, body in after:
        if kind == wire.KINDS["key"]:
            assert e2e.open_bundle(me, consult, body) == [], f"boxed for dr.osei (#{seq})"
    store = LocalStore(data_dir(osei), me)
    try:
        assert store.keyring is not None
        with store.db:
            store.keyring.set_devices({n: [d] for n, d in _devices(chen, nurse).items()})
        store.add_messages([(wire.Msg(consult, *row), row[0]) for row in after])
        with store.db:
            store.keyring.open_bundles()
        shown = {line.seq: (line.kind, line.text) for line in store.history(consult, "dr.osei", queued=False)}
    finally:
        store.close()
    texts = [shown[r[0]] for r in after if r[4] == wire.KINDS["text"]]
    assert texts == [("locked", "(encrypted: waiting for the sender's key)")] * 2


def _devices(*homes: Path) -> dict[str, bytes]:
    out = {}
    for home in homes:
        profile = load_profile(home)
        out[profile.name] = e2e.Identity(profile.name, profile.seed).public
    return out

"""The command line against a real relay process on loopback, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.relay import MEDCOMM, RelayProcess, medcomm


def history(home: Path, consult: str, *extra: str) -> list[dict]:
    out = medcomm("history", consult, "--json", *extra, home=home, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture
def pair(relay: RelayProcess, tmp_path: Path) -> tuple[Path, Path, str]:
    nurse = relay.identity(tmp_path, "amina", "clinic")
    doctor = relay.identity(tmp_path, "dr.chen", "doctor")
    consult = medcomm("consult", "open", "Fever, 6y", "--with", "dr.chen", home=nurse, check=True)
    return nurse, doctor, consult.stdout.strip()


def test_help_and_no_profile(tmp_path: Path) -> None:
    out = medcomm("--help")
    assert out.returncode == 0 and "send" in out.stdout and "serve" in out.stdout
    out = medcomm("send", "abc123", "hi", home=tmp_path / "nobody")
    assert out.returncode == 3 and "medcomm login" in out.stderr


def test_whoami_and_consult_id_is_short(pair: tuple[Path, Path, str]) -> None:
    nurse, doctor, consult = pair
    assert re.fullmatch(r"[0-9a-z]{6}", consult)
    out = medcomm("whoami", home=doctor, check=True)
    assert "dr.chen (doctor)" in out.stdout and "relay confirms" in out.stdout


def test_send_history_states_and_fields(pair: tuple[Path, Path, str]) -> None:
    nurse, doctor, consult = pair
    sent = medcomm("send", consult, "Temp 39.2, RR 44", home=nurse)
    assert sent.returncode == 0, sent.stderr
    medcomm("send", consult, "-", home=nurse, input="from stdin\nsecond line", check=True)
    seen = history(doctor, consult)
    texts = [m for m in seen if m["kind"] == "text"]
    assert [m["text"] for m in texts] == ["Temp 39.2, RR 44", "from stdin\nsecond line"]
    for m in seen:
        assert {"seq", "id", "sender", "time", "kind", "text", "state"} <= m.keys()
    seqs = [m["seq"] for m in seen]  # in order; the nurse's key message (not history) takes a seq too
    assert seqs == sorted(set(seqs)) and seqs[0] == 1 and len(seqs) == 3
    # the doctor's history run marked them read; the nurse sees that, honestly
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [m for m in history(nurse, consult) if m["kind"] == "text"]
        if all(m["state"] == "read" for m in mine):
            break
        time.sleep(0.3)
    assert [m["state"] for m in mine] == ["read", "read"]
    since = history(doctor, consult, "--since", str(texts[0]["seq"]))
    assert [m["text"] for m in since] == ["from stdin\nsecond line"]


def test_send_without_link_exits_75_and_sync_delivers_once(
    pair: tuple[Path, Path, str], relay: RelayProcess
) -> None:
    nurse, doctor, consult = pair
    relay.stop()
    t0 = time.monotonic()
    out = medcomm("send", consult, "queued while offline", "--timeout", "2", home=nurse)
    assert out.returncode == 75, out.stderr
    assert "queued" in out.stderr and time.monotonic() - t0 < 15
    offline = history(nurse, consult, "--offline")
    assert offline[-1]["state"] == "queued" and offline[-1]["seq"] is None
    relay.start()
    medcomm("sync", home=nurse, check=True)
    texts = [m["text"] for m in history(doctor, consult) if m["kind"] == "text"]
    assert texts == ["queued while offline"]
    # syncing again does not duplicate it
    medcomm("sync", home=nurse, check=True)
    assert [m["text"] for m in history(doctor, consult) if m["kind"] == "text"] == texts


def test_acknowledged_message_survives_relay_sigkill(
    pair: tuple[Path, Path, str], relay: RelayProcess
) -> None:
    nurse, doctor, consult = pair
    medcomm("send", consult, "before the crash", home=nurse, check=True)
    relay.kill()
    relay.start()
    assert "before the crash" in [m["text"] for m in history(doctor, consult)]


def test_tail_follows_live_across_a_relay_restart(pair: tuple[Path, Path, str], relay: RelayProcess) -> None:
    nurse, doctor, consult = pair
    env = dict(os.environ, MEDCOMM_HOME=str(doctor))
    tail = subprocess.Popen(
        [*MEDCOMM, "tail", consult, "--json", "-n", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(1.5)
        medcomm("send", consult, "one", home=nurse, check=True)
        relay.kill()
        relay.start()
        medcomm("send", consult, "two", "--timeout", "20", home=nurse, check=True)
        got: list[str] = []
        deadline = time.monotonic() + 30
        assert tail.stdout is not None
        while len(got) < 2 and time.monotonic() < deadline:
            line = tail.stdout.readline()
            if line:
                got.append(json.loads(line)["text"])
        assert got == ["one", "two"]
    finally:
        tail.send_signal(signal.SIGINT)
        try:
            tail.wait(10)
        except subprocess.TimeoutExpired:
            tail.kill()


def test_login_codes_are_one_time_but_relogin_is_idempotent(relay: RelayProcess, tmp_path: Path) -> None:
    code = relay.enroll("osei", "doctor")
    home = tmp_path / "osei"
    bad = medcomm("login", relay.url, "osei", "WRONG-CODE-0000", home=home)
    assert bad.returncode == 77 and "code" in bad.stderr
    medcomm("login", relay.url, "osei", code, home=home, check=True)
    medcomm("login", relay.url, "osei", code.lower(), home=home, check=True)  # same key: fine
    other = medcomm("login", relay.url, "osei", code, home=tmp_path / "thief")
    assert other.returncode == 77 and "already used" in other.stderr


def test_consult_add_list_and_membership(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    osei = relay.identity(tmp_path, "osei", "doctor")
    denied = medcomm("send", consult, "let me in", "--timeout", "10", home=osei)
    assert denied.returncode == 1 and "member" in denied.stderr
    out = medcomm("consult", "add", consult, "osei", home=doctor, check=True)
    assert "osei" in out.stdout
    rows = [
        json.loads(r) for r in medcomm("consult", "list", "--json", home=osei, check=True).stdout.splitlines()
    ]
    assert [(r["id"], r["title"]) for r in rows] == [(consult, "Fever, 6y")]
    assert set(rows[0]["members"]) == {"amina", "dr.chen", "osei"}
    medcomm("send", consult, "second opinion here", home=osei, check=True)
    assert "second opinion here" in [m["text"] for m in history(nurse, consult)]


def test_bad_input_is_refused_clearly(pair: tuple[Path, Path, str]) -> None:
    nurse, _, consult = pair
    out = medcomm("send", "not-an-id", "x", home=nurse)
    assert out.returncode == 2 and "consult id" in out.stderr
    out = medcomm("send", consult, "   ", home=nurse)
    assert out.returncode == 2 and "empty" in out.stderr
    out = medcomm("send", consult, "x" * 20000, home=nurse)
    assert out.returncode == 1 and "limit" in out.stderr
    out = medcomm("consult", "open", "t", "--with", "nobody", home=nurse)
    assert out.returncode == 4 and "nobody" in out.stderr


def test_demo_runs_a_real_exchange(tmp_path: Path) -> None:
    out = medcomm("demo", "--data", str(tmp_path / "demo"), "--seconds", "4", home=tmp_path / "h", timeout=90)
    assert out.returncode == 0, out.stderr
    assert "demo consult" in out.stdout and "Temp 39.2" in out.stdout
    assert re.search(r"amina sees #\d+ go stored -> delivered -> read", out.stdout)


async def test_users_directory_lists_enrolled_names_and_roles(pair: tuple[Path, Path, str]) -> None:
    from medcomm.session.service import Session

    nurse, _, _ = pair
    async with Session.open(home=nurse) as s:
        users = await s.users(20)
    assert {"name": "dr.chen", "role": "doctor"} in users and {"name": "amina", "role": "clinic"} in users

"""The consult workflow commands end to end: real processes against a real relay, as a
clinic and doctors run them (exit codes, text and --json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.harness.relay import RelayProcess, medcomm

pytestmark = pytest.mark.timeout(240)


def lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines()]


def card(home: Path, consult: str) -> dict:
    return json.loads(medcomm("case", consult, "--json", home=home, check=True).stdout)


@pytest.fixture
def team(relay: RelayProcess, tmp_path: Path) -> tuple[Path, Path, Path]:
    return (
        relay.identity(tmp_path, "amina", "clinic"),
        relay.identity(tmp_path, "dr.chen", "doctor"),
        relay.identity(tmp_path, "dr.osei", "doctor"),
    )


def test_help_explains_every_command() -> None:
    for cmd, words in [
        ("case", "version"),
        ("status", "in_consult"),
        ("claim", "assigned to you"),
        ("assign", "specialist"),
        ("followup", "--due"),
        ("queue", "emergencies first"),
        ("export", "--format"),
    ]:
        out = medcomm(cmd, "--help")
        assert out.returncode == 0 and words in " ".join(out.stdout.split()), (cmd, out.stdout)
    out = medcomm("consult", "open", "--help")
    assert "--urgency" in out.stdout and "--complaint" in out.stdout and "--patient-id" in out.stdout


def test_open_with_a_card_then_change_it(team: tuple[Path, Path, Path]) -> None:
    nurse, doctor, _ = team
    bad = medcomm("consult", "open", "t", "--with", "dr.chen", "--age", "200", home=nurse)
    assert bad.returncode == 2 and "patient.age" in bad.stderr and bad.stdout == ""
    assert medcomm("consult", "list", "--json", home=nurse, check=True).stdout == ""  # nothing opened
    out = medcomm(
        "consult", "open", "Boy, 6, fever", "--with", "dr.chen", "--urgency", "urgent",
        "--complaint", "fever 4 days", "--patient", "王小明", "--age", "6", "--sex", "m",
        "--set", "vitals.temp=39.2", home=nurse,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    consult = out.stdout.strip()
    assert re.search(r"case card stored #\d+", out.stderr)  # after the seq of the nurse's key message
    c = card(doctor, consult)
    assert (
        c["version"] == 1 and c["fields"]["patient.name"] == "王小明" and c["fields"]["vitals.temp"] == "39.2"
    )
    assert c["set"]["urgency"] == {**c["set"]["urgency"], "value": "urgent", "version": 1, "by": "amina"}
    assert c["fields"]["patient.id"] and c["status"]["state"] == "waiting"

    out = medcomm("case", consult, "--set", "vitals.bp=140/90", "--set", "spo2=91%", home=doctor)
    assert out.returncode == 0 and "stored #" in out.stderr, out.stderr
    assert "BP (mmHg)" in out.stdout and "140/90" in out.stdout and "v2 dr.chen" in out.stdout
    out = medcomm("case", consult, "--set", "vitals.spo2=120", home=doctor)
    assert out.returncode == 2 and "vitals.spo2" in out.stderr and "0 to 100" in out.stderr
    out = medcomm("case", consult, "--set", "weight=20", home=doctor)
    assert out.returncode == 2 and "unknown case field" in out.stderr
    out = medcomm("case", consult, "--set", "spo2=91", home=doctor)
    assert out.returncode == 0 and "no change" in out.stderr
    c = card(nurse, consult)
    assert c["version"] == 2 and c["fields"]["vitals.bp"] == "140/90" and c["fields"]["vitals.spo2"] == "91"
    assert c["versions"][1]["by"] == "dr.chen" and set(c["versions"][1]["changes"]) == {
        "vitals.bp",
        "vitals.spo2",
    }
    assert medcomm("case", "zzzzzz", home=nurse).returncode == 4
    assert medcomm("case", "nope", home=nurse).returncode == 2
    # history --json shows the new kinds with their decoded fields
    hist = lines(medcomm("history", consult, "--json", home=nurse, check=True).stdout)
    cases = [m for m in hist if m["kind"] == "case"]
    assert cases[1]["case"] == {"fields": {"vitals.bp": "140/90", "vitals.spo2": "91"}}
    assert cases[1]["text"] == "case: vitals.bp=140/90, vitals.spo2=91"


def test_status_claim_assign_and_their_refusals(team: tuple[Path, Path, Path], relay: RelayProcess) -> None:
    nurse, chen, osei = team
    consult = medcomm("consult", "open", "Cough", "--with", "dr.chen", home=nurse, check=True).stdout.strip()
    out = medcomm("status", consult, "advised", "--advice", "x", home=chen)
    assert out.returncode == 2 and "cannot go from waiting to advised" in out.stderr
    out = medcomm("claim", consult, home=chen)
    assert out.returncode == 0 and "in consult, yours" in out.stdout, out.stderr
    out = medcomm("status", consult, "advised", home=chen)
    assert out.returncode == 2 and "--advice" in out.stderr
    out = medcomm("status", consult, "advised", "--advice", "Amoxicillin 5 days", home=chen)
    assert out.returncode == 0, out.stderr
    assert "advice (dr.chen" in out.stdout and "in consult -> advised" in out.stdout
    st = json.loads(medcomm("status", consult, "--json", home=nurse, check=True).stdout)
    assert (st["state"], st["assignee"], st["advice"]) == ("advised", "dr.chen", "Amoxicillin 5 days")
    assert [(h["op"], h["from"], h["to"], h["by"]) for h in st["history"]] == [
        ("claim", "waiting", "in_consult", "dr.chen"),
        ("set", "in_consult", "advised", "dr.chen"),
    ]
    # another doctor cannot claim it from under him; assigning brings them in, whole record included
    out = medcomm("status", consult, "in_consult", home=chen, check=True)
    out = medcomm("claim", consult, home=osei)
    assert out.returncode == 4 and "no consult" in out.stderr  # not a member: not on that device
    out = medcomm("assign", consult, "dr.osei", home=chen)
    assert out.returncode == 0 and "assigned to dr.osei" in out.stdout, out.stderr
    hist = lines(medcomm("history", consult, "--json", home=osei, check=True).stdout)
    seqs = [m["seq"] for m in hist]  # key messages take seqs but are not history
    assert seqs[0] == 1 and seqs == sorted(set(seqs))
    assert [m["kind"] for m in hist] == ["system", "status", "status", "status", "system", "status"]
    assert hist[-1]["status"] == {"op": "assign", "assignee": "dr.osei"}
    out = medcomm("claim", consult, home=chen)
    assert out.returncode == 2 and "dr.osei has this consult" in out.stderr
    out = medcomm("assign", consult, "nobody.here", home=chen)
    assert out.returncode == 4 and "nobody.here" in out.stderr
    out = medcomm("status", consult, "closed", home=nurse, check=True)
    out = medcomm("claim", consult, home=osei)
    assert out.returncode == 2 and "reopen" in out.stderr
    out = medcomm("status", consult, "waiting", home=osei)
    assert out.returncode == 0 and "closed -> waiting" in out.stdout

    relay.stop()  # no link: the change stays queued (75) and goes with the next sync
    out = medcomm("claim", consult, "--timeout", "2", home=osei)
    assert out.returncode == 75 and "queued" in out.stderr
    relay.start()
    medcomm("sync", home=osei, check=True)
    st = json.loads(medcomm("status", consult, "--json", home=nurse, check=True).stdout)
    assert (st["state"], st["assignee"], st["history"][-1]["op"]) == ("in_consult", "dr.osei", "claim")


def test_queue_followups_and_export(team: tuple[Path, Path, Path], tmp_path: Path, monkeypatch) -> None:
    nurse, chen, _ = team
    ids = {}
    for urgency in ("routine", "emergency", "urgent"):
        out = medcomm(
            "consult",
            "open",
            f"{urgency} case",
            "--with",
            "dr.chen",
            "--urgency",
            urgency,
            "--complaint",
            f"{urgency} complaint",
            "--patient",
            f"P {urgency}",
            home=nurse,
            check=True,
        )
        ids[urgency] = out.stdout.strip()
    q = lines(medcomm("queue", "--json", home=chen, check=True).stdout)
    assert [e["consult"] for e in q] == [ids["emergency"], ids["urgent"], ids["routine"]]
    assert [e["alarm"] for e in q] == [True, False, False] and q[0]["patient"] == "P emergency"
    out = medcomm("queue", home=chen, check=True)
    rows = out.stdout.splitlines()
    assert (
        rows[1].startswith("!! emergency")
        and ids["emergency"] in rows[1]
        and "emergency complaint" in rows[1]
    )
    assert rows[2].startswith("   urgent") and "1 emergency waiting" in out.stderr

    medcomm("claim", ids["emergency"], home=chen, check=True)
    medcomm("status", ids["emergency"], "advised", "--advice", "refer now", home=chen, check=True)
    out = medcomm("followup", ids["emergency"], "--due", "yesterday", "--reason", "x", home=chen)
    assert out.returncode == 2 and "YYYY-MM-DD" in out.stderr
    out = medcomm("followup", ids["emergency"], "--due", "+0d", home=chen)
    assert out.returncode == 2 and "--reason" in out.stderr
    out = medcomm("followup", ids["emergency"], "--due", "+0d", "--reason", "check the referral", home=chen)
    assert out.returncode == 0, out.stderr
    fid = out.stdout.strip()
    q = lines(medcomm("queue", "--json", home=chen, check=True).stdout)
    assert [(e["consult"], e["reason"]) for e in q] == [
        (ids["emergency"], "follow-up"),
        (ids["urgent"], "waiting"),
        (ids["routine"], "waiting"),
    ]
    assert q[0]["followup"] == fid and q[0]["followup_reason"] == "check the referral" and not q[0]["alarm"]
    out = medcomm("followup", ids["emergency"], "--done", home=nurse)
    assert out.returncode == 0 and f"follow-up {fid} done" in out.stderr
    q = lines(medcomm("queue", "--json", home=chen, check=True).stdout)
    assert ids["emergency"] not in [e["consult"] for e in q]

    assert medcomm("export", ids["emergency"], "--format", "md", home=chen).returncode == 2  # no --out
    out = medcomm("export", ids["emergency"], "--format", "doc", "--out", str(tmp_path / "x"), home=chen)
    assert out.returncode == 2 and "md, html, pdf" in out.stderr
    assert medcomm("export", "zzzzzz", "--out", str(tmp_path / "x"), home=chen).returncode == 4
    md = tmp_path / "record.md"
    out = medcomm("export", ids["emergency"], "--format", "md", "--out", str(md), home=chen)
    assert out.returncode == 0 and f"wrote {md}" in out.stderr, out.stderr
    hist = lines(medcomm("history", ids["emergency"], "--json", home=chen, check=True).stdout)
    text = md.read_text("utf-8")
    for m in hist:
        assert f"#{m['seq']} · " in text and m["text"] in text
    assert "refer now" in text and "check the referral" in text and "P emergency" in text
    pdf = tmp_path / "record.pdf"
    out = medcomm("export", ids["emergency"], "--format", "pdf", "--out", str(pdf), home=chen)
    assert out.returncode == 0 and pdf.read_bytes().startswith(b"%PDF-")
    assert "no font" not in out.stderr  # Latin text only: every character has a font

    # a record with Chinese, on a machine whose only font has no Chinese: said on stderr
    from medcomm.adapters.pdf import find_fonts

    main_font = find_fonts({}).main
    if main_font is None:
        pytest.skip("no TrueType font on this machine")
    medcomm("case", ids["urgent"], "--set", "complaint=咳嗽", home=nurse, check=True)
    monkeypatch.setenv("MEDCOMM_PDF_FONTS", str(main_font))
    out = medcomm("export", ids["urgent"], "--format", "pdf", "--out", str(tmp_path / "zh.pdf"), home=chen)
    assert (
        out.returncode == 0 and "no font on this computer covers 2 characters (U+54B3, U+55FD)" in out.stderr
    )

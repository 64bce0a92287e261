"""The consult workflow between real devices through a real relay process.

Card, status and follow-ups are messages: these tests check that what one device changes
is what every other device folds, that refused changes queue nothing, that two doctors who
claim at once end with the same answer on both devices, and that a specialist added later
gets the whole record.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from medcomm.errors import NotFound, UsageError
from medcomm.session import casework
from medcomm.session.service import Session
from tests.conftest import identity
from tests.harness.relay import RelayProcess

pytestmark = pytest.mark.timeout(90)
WAIT = 20.0


async def stored(s: Session, item: object) -> int:
    return await s.wait_stored(item, WAIT)  # type: ignore[arg-type]


async def test_card_status_and_followup_sync_between_two_devices(relay: RelayProcess, tmp_path: Path) -> None:
    nurse = await identity(relay, tmp_path, "amina", "clinic")
    doctor = await identity(relay, tmp_path, "dr.chen", "doctor")
    card = {
        "patient.name": "王小明",
        "patient.age": "6",
        "patient.sex": "m",
        "urgency": "urgent",
        "complaint": "fever 4 days",
        "vitals.temp": "39.2",
    }
    async with Session.open(home=nurse) as s:
        consult, item = await casework.open_with_case(s, "Boy, 6, fever", ["dr.chen"], card, WAIT)
        # behind the relay's "open", the sealed title and our key
        assert item is not None and await stored(s, item) == s.store.last_seq(consult)
        pid = casework.consult_state(s, consult).card.get("patient.id")
        assert pid and pid.startswith("p")

    async with Session.open(home=doctor) as s:
        await s.sync(WAIT)
        st = casework.consult_state(s, consult)
        assert {k: st.card.get(k) for k in card} == card and st.card.get("patient.id") == pid
        assert st.card.values["urgency"].by == "amina" and st.status.state == "waiting"
        assert [e.consult for e in casework.triage_queue(s)] == [consult]
        await stored(s, await casework.claim(s, consult))
        await stored(s, await casework.update_case(s, consult, {"vitals.spo2": "91%", "vitals.temp": "39.5"}))
        item = await casework.set_status(s, consult, "advised", "Amoxicillin 5 days; review in 2 days")
        await stored(s, item)
        item, fid = await casework.add_followup(s, consult, dt.date.today(), "review fever")
        await stored(s, item)
        assert [(e.consult, e.reason) for e in casework.triage_queue(s)] == [(consult, "follow-up")]

    async with Session.open(home=nurse) as s:
        await s.sync(WAIT)
        st = casework.consult_state(s, consult)
        assert (st.status.state, st.status.assignee) == ("advised", "dr.chen")
        assert st.status.advice == "Amoxicillin 5 days; review in 2 days" and st.status.advice_by == "dr.chen"
        assert [(c.by, c.before, c.after) for c in st.status.history] == [
            ("dr.chen", "waiting", "in_consult"),
            ("dr.chen", "in_consult", "advised"),
        ]
        assert (
            st.card.version == 2
            and st.card.get("vitals.spo2") == "91"
            and st.card.get("vitals.temp") == "39.5"
        )
        assert st.card.versions[1].by == "dr.chen"
        assert st.followups[fid].reason == "review fever" and st.followups[fid].state == "open"
        item, done = await casework.close_followup(s, consult, None)
        assert done == fid
        await stored(s, item)
        # history lines carry the new kinds with their decoded fields (history --json)
        lines = {ln.kind: ln for ln in s.history(consult)}
        assert lines["case"].as_json()["case"] == {"fields": {"vitals.spo2": "91", "vitals.temp": "39.5"}}
        assert lines["status"].as_json()["status"]["to"] == "advised"
        assert lines["followup"].as_json()["followup"] == {"op": "done", "id": fid}
        assert lines["followup"].text == f"follow-up {fid} done"


async def test_refused_changes_queue_nothing(pair: tuple[Path, Path, str]) -> None:
    nurse, _, consult = pair
    async with Session.open(home=nurse) as s:
        await s.sync(WAIT)
        before = s.outbox_count()
        with pytest.raises(UsageError, match="cannot go from waiting to advised"):
            await casework.set_status(s, consult, "advised", "x")
        with pytest.raises(UsageError, match="vitals.spo2"):
            await casework.update_case(s, consult, {"vitals.spo2": "120"})
        with pytest.raises(UsageError, match="no open follow-up"):
            await casework.close_followup(s, consult, None)
        with pytest.raises(NotFound):
            casework.consult_state(s, "zzzzzz")
        assert await casework.update_case(s, consult, {"complaint": ""}) is None  # nothing to change
        assert s.outbox_count() == before == 0
        assert [ln.kind for ln in s.history(consult)] == ["system"]


async def test_offline_change_shows_at_once_and_counts_for_the_next_check(
    pair: tuple[Path, Path, str],
) -> None:
    nurse, _, consult = pair
    async with Session.open(home=nurse, connect=False) as s:
        await casework.set_status(s, consult, "closed")
        st = casework.consult_state(s, consult)
        assert st.status.state == "closed" and st.status.history[0].seq is None  # queued, shown
        with pytest.raises(UsageError, match="closed: reopen"):
            await casework.claim(s, consult)
    async with Session.open(home=nurse) as s:
        await s.sync(WAIT)
        st = casework.consult_state(s, consult)
        assert st.status.state == "closed" and st.status.history[0].seq == s.store.last_seq(consult)


async def test_two_claims_at_once_end_the_same_on_both_devices(
    relay: RelayProcess, tmp_path: Path, pair: tuple[Path, Path, str]
) -> None:
    nurse, chen, consult = pair
    osei = await identity(relay, tmp_path, "dr.osei", "doctor")
    async with Session.open(home=nurse) as s:
        await s.add_member(consult, "dr.osei", WAIT)
    homes = {"dr.chen": chen, "dr.osei": osei}
    for home in homes.values():  # both know the consult, both see it waiting
        async with Session.open(home=home) as s:
            await s.sync(WAIT)
    for home in homes.values():  # each claims from what it holds, without hearing the other
        async with Session.open(home=home, connect=False) as s:
            await casework.claim(s, consult)
    for home in homes.values():  # both claims reach the relay
        async with Session.open(home=home) as s:
            await s.sync(WAIT)
    seen = {}
    for name, home in homes.items():
        async with Session.open(home=home) as s:
            await s.sync(WAIT)
            st = casework.consult_state(s, consult)
            seen[name] = [(c.by, c.applied) for c in st.status.history], st.status.assignee
    assert seen["dr.chen"] == seen["dr.osei"]
    history, assignee = seen["dr.chen"]
    assert [applied for _, applied in history] == [True, False] and assignee == history[0][0]


async def test_specialist_assigned_later_gets_the_whole_record(
    relay: RelayProcess, tmp_path: Path, pair: tuple[Path, Path, str]
) -> None:
    nurse, chen, consult = pair
    specialist = await identity(relay, tmp_path, "dr.li", "doctor")
    async with Session.open(home=nurse) as s:
        await stored(
            s, await casework.update_case(s, consult, {"patient.name": "Amina K.", "urgency": "urgent"})
        )
        await stored(s, await s.queue_text(consult, "CXR shows patchy shadows"))
    async with Session.open(home=chen) as s:
        await s.sync(WAIT)
        await stored(s, await casework.claim(s, consult))
        await stored(s, await casework.assign(s, consult, "dr.li", WAIT))  # not a member yet: added
        theirs = [(ln.seq, ln.kind, ln.text) for ln in s.history(consult)]
        card = casework.consult_state(s, consult).card.as_dict()
    async with Session.open(home=specialist) as s:
        await s.sync(WAIT)
        mine = [(ln.seq, ln.kind, ln.text) for ln in s.history(consult)]
        st = casework.consult_state(s, consult)
    seqs = [m[0] for m in mine]  # key messages take seqs but are not history
    assert seqs[0] == 1 and seqs == sorted(set(seqs))
    assert mine == theirs  # the whole consult, from seq 1, as the doctor who brought them in has it
    assert [m[1] for m in mine] == ["system", "case", "text", "status", "system", "status"]
    assert "added dr.li" in mine[-2][2] and mine[-1][2] == "status: assigned to dr.li"
    assert st.card.as_dict() == card and (st.status.state, st.status.assignee) == ("in_consult", "dr.li")
    assert "dr.li" in st.members


async def test_linked_consults_of_one_patient(pair: tuple[Path, Path, str]) -> None:
    nurse, doctor, first = pair
    async with Session.open(home=nurse) as s:
        await stored(s, await casework.update_case(s, first, {"patient.name": "Mr. B", "complaint": "BP"}))
        pid = casework.consult_state(s, first).card.get("patient.id")
        second, item = await casework.open_with_case(
            s, "BP review", ["dr.chen"], {"patient.id": pid, "complaint": "BP review"}, WAIT
        )
        await stored(s, item)
        other, item = await casework.open_with_case(
            s, "someone else", ["dr.chen"], {"patient.name": "C"}, WAIT
        )
        await stored(s, item)
    async with Session.open(home=doctor) as s:
        await s.sync(WAIT)
        assert [c.id for c in casework.linked_consults(s, second)] == [first]
        assert [c.id for c in casework.linked_consults(s, first)] == [second]
        assert casework.linked_consults(s, other) == []

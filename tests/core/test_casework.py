"""The case card, status machine, follow-ups and triage queue, on a hand clock."""

from __future__ import annotations

import datetime as dt
import itertools

import msgpack
import pytest

from medcomm.core import casecard, followup, triage, wire, workflow
from medcomm.core.casecard import Card
from medcomm.core.workflow import STATES, TRANSITIONS, ConsultState, Event, Status
from medcomm.errors import LimitExceeded, UsageError, WireError

CASE, STATUS, FOLLOWUP, SYSTEM = (wire.KINDS[k] for k in ("case", "status", "followup", "system"))
T0 = 1_700_000_000_000  # ms, a fixed "now" for the hand clock
MIN = 60_000


def opened(at: int = T0, by: str = "amina") -> Event:
    return Event(1, by, at, SYSTEM, msgpack.packb({"event": "open", "title": "t", "members": [by]}))


def case_ev(seq: int | None, by: str, at: int, **changes: str | None) -> Event:
    names = {k.replace("__", "."): v for k, v in changes.items()}
    return Event(seq, by, at, CASE, casecard.encode(names))


def status_ev(
    seq: int | None, by: str, at: int, op: str, to: str = "", who: str | None = None, adv: str = ""
):
    return Event(seq, by, at, STATUS, workflow.encode_status(op, to, who, adv))


def fold(*events: Event, consult: str = "abc123") -> ConsultState:
    return workflow.fold(consult, [opened(), *events], "title", ["amina", "dr.chen"])


# --- fields -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,raw,canon",
    [
        ("patient.age", "34", "34"),
        ("patient.age", "34y", "34"),
        ("patient.age", "8m", "8m"),
        ("patient.age", "8 months", "8m"),
        ("patient.age", "10d", "10d"),
        ("patient.age", "0", "0"),
        ("patient.age", "130", "130"),
        ("patient.sex", "F", "f"),
        ("patient.sex", "male", "m"),
        ("patient.sex", "x", "x"),
        ("patient.sex", "unknown", "unknown"),
        ("vitals.bp", "140/90", "140/90"),
        ("vitals.bp", " 120 / 80 mmHg", "120/80"),
        ("vitals.hr", "88", "88"),
        ("vitals.hr", "88bpm", "88"),
        ("vitals.rr", "44", "44"),
        ("vitals.temp", "39.2", "39.2"),
        ("vitals.temp", "38,5", "38.5"),
        ("vitals.temp", "37C", "37.0"),
        ("vitals.spo2", "91%", "91"),
        ("vitals.spo2", "0", "0"),
        ("vitals.spo2", "100", "100"),
        ("urgency", "Emergency", "emergency"),
        ("patient.id", "P7K2MQDX", "p7k2mqdx"),
        ("complaint", "  fever 4 days  ", "fever 4 days"),
        ("history", "line one\nline two", "line one\nline two"),
        ("patient.name", "王小明", "王小明"),
    ],
)
def test_values_are_checked_and_made_canonical(name, raw, canon):
    assert casecard.check_value(name, raw) == canon


@pytest.mark.parametrize(
    "name,raw,words",
    [
        ("patient.age", "131", "out of range"),
        ("patient.age", "60m", "out of range"),
        ("patient.age", "91d", "out of range"),
        ("patient.age", "old", "not an age"),
        ("patient.age", "-3", "not an age"),
        ("patient.sex", "q", "not one of"),
        ("vitals.bp", "140", "blood pressure"),
        ("vitals.bp", "90/140", "out of range"),
        ("vitals.bp", "400/90", "out of range"),
        ("vitals.hr", "19", "20 to 300"),
        ("vitals.hr", "88.5", "whole number"),
        ("vitals.rr", "200", "4 to 120"),
        ("vitals.temp", "101.3", "°F"),
        ("vitals.temp", "50", "25-45"),
        ("vitals.temp", "hot", "not a number"),
        ("vitals.spo2", "101", "0 to 100"),
        ("vitals.spo2", "91mmHg", "units"),
        ("urgency", "soon", "emergency, urgent, routine"),
        ("patient.id", "a", "patient key"),
        ("patient.id", "has space", "patient key"),
        ("patient.name", "two\nlines", "one line"),
        ("complaint", "x" * 501, "at most 500"),
        ("history", "bell\x07", "control"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_the_rule(name, raw, words):
    with pytest.raises(UsageError) as err:
        casecard.check_value(name, raw)
    assert str(err.value).startswith(name) and words in str(err.value)


def test_empty_value_clears_and_unknown_keys_are_named():
    assert casecard.check_value("vitals.bp", "  ") is None
    assert casecard.parse_assignments(["bp=140/90", "age=3", "vitals.spo2=90"]) == {
        "vitals.bp": "140/90",
        "patient.age": "3",
        "vitals.spo2": "90",
    }
    with pytest.raises(UsageError, match="unknown case field 'weight'"):
        casecard.parse_assignments(["weight=20"])
    with pytest.raises(UsageError, match="key=value"):
        casecard.parse_assignments(["vitals.bp"])


def test_prepare_drops_no_ops_and_gives_a_new_patient_a_key_once():
    ids = iter(["pfirstkey", "psecondkey"])
    card = Card()
    changes = casecard.prepare(card, {"patient.name": "Amina K.", "urgency": "urgent"}, lambda: next(ids))
    assert changes == {"patient.name": "Amina K.", "urgency": "urgent", "patient.id": "pfirstkey"}
    card.apply(2, "amina", T0, casecard.encode(changes))
    # the same values again: nothing to send; a new detail does not make a second key
    assert casecard.prepare(card, {"urgency": "URGENT"}, lambda: next(ids)) == {}
    assert casecard.prepare(card, {"patient.age": "6"}, lambda: next(ids)) == {"patient.age": "6"}
    # a key given by the user (an earlier consult's) is kept; no patient detail: no key made
    assert (
        casecard.prepare(Card(), {"patient.name": "B", "patient.id": "p-clinic-7"}, lambda: "zz")[
            "patient.id"
        ]
        == "p-clinic-7"
    )
    assert casecard.prepare(Card(), {"complaint": "cough"}, lambda: "never") == {"complaint": "cough"}


# --- the body ---------------------------------------------------------------------------------


def test_body_is_compact_and_round_trips():
    body = casecard.encode({"vitals.bp": "140/90", "urgency": "urgent", "allergies": None})
    assert len(body) < 40  # short codes, no field names on the wire
    assert casecard.decode(body) == {"vitals.bp": "140/90", "urgency": "urgent", "allergies": None}


def test_unknown_future_fields_and_keys_are_ignored():
    body = msgpack.packb({"v": 2, "s": {"bp": "120/80", "zz": "later field"}, "extra": [1, 2]})
    assert casecard.decode(body) == {"vitals.bp": "120/80"}


@pytest.mark.parametrize(
    "obj,words",
    [
        ([1, 2], "not a map"),
        ({"s": {"bp": "1/2"}}, "no version"),
        ({"v": 1}, "no field map"),
        ({"v": 1, "s": {"hr": 88}}, "not text"),
        ({"v": 1, "s": {"o2": "250"}}, "vitals.spo2"),
    ],
)
def test_bad_bodies_from_other_devices_are_refused_clearly(obj, words):
    with pytest.raises(WireError, match=words):
        casecard.decode(msgpack.packb(obj))
    with pytest.raises(WireError, match="not msgpack"):
        casecard.decode(b"\xc1\xc1")


def test_oversize_card_change_is_refused_before_it_is_queued():
    with pytest.raises(LimitExceeded):
        casecard.encode({"history": "x" * 4000}, casecard.CardLimits(max_body=1000))
    with pytest.raises(UsageError, match="no change"):
        casecard.encode({})


# --- versions ---------------------------------------------------------------------------------


def test_versions_fold_in_seq_order_last_writer_wins_per_field():
    st = fold(
        case_ev(2, "amina", T0 + 1 * MIN, vitals__bp="140/90", urgency="urgent", complaint="headache"),
        case_ev(3, "dr.chen", T0 + 2 * MIN, vitals__bp="150/95"),
        case_ev(4, "amina", T0 + 3 * MIN, allergies="penicillin", complaint=None),
        case_ev(None, "amina", T0 + 4 * MIN, vitals__hr="72"),  # still queued here
    )
    card = st.card
    assert card.version == 4
    assert card.as_dict()["vitals.bp"] == "150/95" and card.get("urgency") == "urgent"
    assert card.get("complaint") is None and card.get("allergies") == "penicillin"
    bp = card.values["vitals.bp"]
    assert (bp.version, bp.by, bp.at) == (2, "dr.chen", T0 + 2 * MIN)
    assert card.values["urgency"].version == 1
    assert [v.number for v in card.versions] == [1, 2, 3, 4]
    assert [v.seq for v in card.versions] == [2, 3, 4, None] and card.versions[-1].pending
    assert card.versions[1].changes == (casecard.Change("vitals.bp", "140/90", "150/95"),)
    assert casecard.Change("complaint", "headache", None) in card.versions[2].changes


def test_an_unreadable_version_is_kept_as_a_problem_not_applied():
    bad = Event(2, "mallory", T0, CASE, msgpack.packb({"v": 1, "s": {"o2": "250"}}))
    st = fold(bad, case_ev(3, "amina", T0, vitals__spo2="91"))
    assert st.card.get("vitals.spo2") == "91" and st.card.version == 1
    assert len(st.problems) == 1 and "#2 from mallory" in st.problems[0] and "vitals.spo2" in st.problems[0]


# --- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cur,to", list(itertools.product(STATES, STATES)))
def test_every_set_transition_is_allowed_or_refused_by_the_table(cur, to):
    status = Status(state=cur)
    advice = "rest, fluids" if to == "advised" else ""
    if to in TRANSITIONS[cur]:
        assert workflow.check_change(status, "dr.chen", "set", to, advice=advice) == to
    else:
        with pytest.raises(UsageError, match=f"cannot go from {cur} to {to}"):
            workflow.check_change(status, "dr.chen", "set", to, advice=advice)


def test_the_whole_path_with_who_and_when_and_reopen():
    st = fold(
        status_ev(2, "dr.chen", T0 + 5 * MIN, "claim"),
        status_ev(3, "dr.chen", T0 + 9 * MIN, "set", "advised", adv="Amoxicillin 5 days; return if worse"),
        status_ev(4, "amina", T0 + 20 * MIN, "set", "closed"),
        status_ev(5, "amina", T0 + 99 * MIN, "set", "waiting"),
    )
    h = st.status.history
    assert [(c.before, c.after, c.by, c.at) for c in h] == [
        ("waiting", "in_consult", "dr.chen", T0 + 5 * MIN),
        ("in_consult", "advised", "dr.chen", T0 + 9 * MIN),
        ("advised", "closed", "amina", T0 + 20 * MIN),
        ("closed", "waiting", "amina", T0 + 99 * MIN),
    ]
    assert all(c.applied for c in h)
    assert st.status.state == "waiting" and st.status.since == T0 + 99 * MIN
    assert st.status.assignee == "dr.chen"  # reopened: the doctor who had it still has it
    assert st.status.advice == "Amoxicillin 5 days; return if worse" and st.status.advice_by == "dr.chen"


def test_advice_goes_with_advised_only():
    s = Status(state="in_consult", assignee="dr.chen")
    with pytest.raises(UsageError, match="advised needs the advice"):
        workflow.check_change(s, "dr.chen", "set", "advised", advice="  ")
    with pytest.raises(UsageError, match="advice goes with the advised"):
        workflow.check_change(s, "dr.chen", "set", "waiting", advice="drink water")
    with pytest.raises(UsageError, match="unknown status"):
        workflow.check_change(s, "dr.chen", "set", "done")
    amended = Status(state="advised")
    assert workflow.check_change(amended, "dr.chen", "set", "advised", advice="changed my mind") == "advised"


def test_claim_rules():
    me = "dr.chen"
    assert workflow.check_change(Status("waiting"), me, "claim") == "in_consult"
    assert workflow.check_change(Status("advised", me), me, "claim") == "in_consult"
    assert workflow.check_change(Status("in_consult", None), me, "claim") == "in_consult"
    with pytest.raises(UsageError, match="already have"):
        workflow.check_change(Status("in_consult", me), me, "claim")
    with pytest.raises(UsageError, match="dr.osei has this consult.*assign ID dr.chen"):
        workflow.check_change(Status("in_consult", "dr.osei"), me, "claim")
    with pytest.raises(UsageError, match="dr.osei has"):
        workflow.check_change(Status("waiting", "dr.osei"), me, "claim")
    with pytest.raises(UsageError, match="closed: reopen"):
        workflow.check_change(Status("closed"), me, "claim")


def test_assign_rules_and_fold():
    assert workflow.check_change(Status("waiting"), "amina", "assign", assignee="dr.osei") == "waiting"
    with pytest.raises(UsageError, match="already assigned"):
        workflow.check_change(Status("waiting", "dr.osei"), "amina", "assign", assignee="dr.osei")
    with pytest.raises(UsageError, match="closed"):
        workflow.check_change(Status("closed"), "amina", "assign", assignee="dr.osei")
    with pytest.raises(UsageError, match="nobody is assigned"):
        workflow.check_change(Status("waiting"), "amina", "assign", assignee="")
    st = fold(
        status_ev(2, "amina", T0 + MIN, "assign", who="dr.osei"),
        status_ev(3, "dr.osei", T0 + 2 * MIN, "claim"),
        status_ev(4, "dr.osei", T0 + 3 * MIN, "assign", who=""),
    )
    assert [c.assignee for c in st.status.history] == ["dr.osei", "dr.osei", None]
    assert st.status.state == "in_consult" and st.status.assignee is None


def test_a_lost_race_is_kept_in_the_history_not_applied():
    # two doctors claim while apart: the relay's seq decides, both see who has it
    st = fold(status_ev(2, "dr.chen", T0 + MIN, "claim"), status_ev(3, "dr.osei", T0 + MIN, "claim"))
    first, second = st.status.history
    assert first.applied and not second.applied and "dr.chen has this consult" in second.note
    assert (st.status.state, st.status.assignee) == ("in_consult", "dr.chen")
    # a change nobody can apply (closed -> advised) is kept the same way
    st = fold(status_ev(2, "amina", T0, "set", "closed"), status_ev(3, "x.y", T0, "set", "advised", adv="a"))
    assert st.status.state == "closed" and not st.status.history[-1].applied


@pytest.mark.parametrize(
    "obj,words",
    [
        ({"v": 1, "op": "jump"}, "unknown operation"),
        ({"v": 1, "op": "set", "to": "done"}, "unknown status"),
        ({"v": 1, "op": "assign", "as": "Not A Name"}, "bad assignee"),
        ({"v": 1, "op": "set", "to": "advised", "adv": 7}, "bad advice"),
        ({"op": "claim"}, "no version"),
    ],
)
def test_bad_status_bodies_are_refused(obj, words):
    with pytest.raises(WireError, match=words):
        workflow.decode_status(msgpack.packb(obj))
    st = fold(Event(2, "x", T0, STATUS, msgpack.packb(obj)))
    assert st.status.state == "waiting" and len(st.problems) == 1


# --- follow-ups -------------------------------------------------------------------------------


def test_parse_due():
    today = dt.date(2025, 3, 1)
    assert followup.parse_due("2025-03-14", today) == dt.date(2025, 3, 14)
    assert followup.parse_due("+0d", today) == today
    assert followup.parse_due("+3d", today) == dt.date(2025, 3, 4)
    assert followup.parse_due("+2w", today) == dt.date(2025, 3, 15)
    for bad, words in [("2025-02-28", "in the past"), ("tomorrow", "YYYY-MM-DD"), ("+9999d", "days ahead")]:
        with pytest.raises(UsageError, match=words):
            followup.parse_due(bad, today)


def fu(seq: int, by: str, op: str, fid: str, due: dt.date | None = None, reason: str = "") -> Event:
    return Event(seq, by, T0 + seq, FOLLOWUP, followup.encode_followup(op, fid, due, reason))


def test_followups_add_done_cancel_and_refusals():
    st = fold(
        fu(2, "dr.chen", "add", "aaaa", dt.date(2025, 3, 10), "BP check"),
        fu(3, "dr.chen", "add", "bbbb", dt.date(2025, 4, 1), "wound review"),
        fu(4, "amina", "done", "aaaa"),
        fu(5, "amina", "done", "aaaa"),  # twice: refused at the fold, kept as a problem
        fu(6, "amina", "cancel", "cccc"),  # unknown
    )
    a, b = st.followups["aaaa"], st.followups["bbbb"]
    assert (a.state, a.closed_by, b.state, b.reason) == ("done", "amina", "open", "wound review")
    assert (
        len(st.problems) == 2 and "done already" in st.problems[0] and "no follow-up cccc" in st.problems[1]
    )
    assert followup.open_followup(st.followups, None) == "bbbb"
    with pytest.raises(UsageError, match="needs a reason"):
        followup.check_followup(st.followups, "add", "dddd", " ")
    st = fold(
        fu(2, "d.r", "add", "aaaa", dt.date(2025, 3, 10), "x"),
        fu(3, "d.r", "add", "bbbb", dt.date(2025, 3, 9), "y"),
    )
    with pytest.raises(UsageError, match="several follow-ups are open"):
        followup.open_followup(st.followups, None)
    with pytest.raises(UsageError, match="no open follow-up"):
        followup.open_followup({}, None)


# --- the queue --------------------------------------------------------------------------------


def consult(cid: str, at: int, urgency: str | None, *more: Event, complaint: str = "c") -> ConsultState:
    card = {
        "urgency": urgency,
        "complaint": complaint,
        "patient.name": f"patient {cid}",
        "patient.id": f"p{cid}",
    }
    events = [opened(at), Event(2, "amina", at, CASE, casecard.encode({k: v for k, v in card.items() if v}))]
    return workflow.fold(cid, [*events, *more], f"title {cid}", ["amina"])


def test_queue_orders_by_urgency_then_waiting_time_with_an_alarm_for_waiting_emergencies():
    now = T0 + 120 * MIN
    states = [
        consult("rout01", T0, "routine"),
        consult("urg001", T0 + 60 * MIN, "urgent"),
        consult("emer01", T0 + 100 * MIN, "emergency"),
        consult("urg002", T0 + 10 * MIN, "urgent"),
        consult("nourg1", T0 - 60 * MIN, None),  # no urgency on the card: routine
        consult("emer02", T0 + 90 * MIN, "emergency"),
    ]
    q = triage.queue(states, "dr.chen", now)
    assert [e.consult for e in q] == ["emer02", "emer01", "urg002", "urg001", "nourg1", "rout01"]
    assert [e.waiting_ms // MIN for e in q] == [30, 20, 110, 60, 180, 120]
    assert [e.alarm for e in q] == [True, True, False, False, False, False]
    assert q[0].patient == "patient emer02" and q[0].complaint == "c" and q[0].status == "waiting"
    # the clock moves: waiting grows, the order holds
    later = triage.queue(states, "dr.chen", now + 60 * MIN)
    assert [e.waiting_ms for e in later] == [e.waiting_ms + 60 * MIN for e in q]


def test_only_consults_waiting_for_a_doctor_are_queued():
    now = T0 + 60 * MIN
    states = [
        consult("claim1", T0, "emergency", status_ev(3, "dr.chen", T0 + MIN, "claim")),
        consult(
            "advis1",
            T0,
            "urgent",
            status_ev(3, "dr.chen", T0, "claim"),
            status_ev(4, "dr.chen", T0, "set", "advised", adv="ok"),
        ),
        consult("close1", T0, "urgent", status_ev(3, "amina", T0, "set", "closed")),
        consult("noone1", T0, "urgent", status_ev(3, "amina", T0 + 5 * MIN, "set", "in_consult")),
        consult(
            "handb1",
            T0,
            "emergency",
            status_ev(3, "dr.chen", T0 + MIN, "claim"),
            status_ev(4, "dr.chen", T0 + 30 * MIN, "set", "waiting"),
        ),
        consult("asgnd1", T0, "routine", status_ev(3, "amina", T0 + 2 * MIN, "assign", who="dr.chen")),
    ]
    q = triage.queue(states, "dr.chen", now)
    assert [(e.consult, e.waiting_ms // MIN) for e in q] == [("handb1", 30), ("noone1", 55), ("asgnd1", 60)]
    assert q[0].alarm and q[0].assignee == "dr.chen" and q[0].mine
    assert not q[1].alarm and q[1].status == "in_consult" and q[1].assignee is None
    assert q[2].mine and q[2].assignee == "dr.chen"  # assigned but not taken yet: still waiting


def test_due_followups_join_the_queue_even_on_closed_consults():
    tz = dt.timezone(dt.timedelta(hours=8))
    now = int(dt.datetime(2025, 3, 10, 6, 0, tzinfo=tz).timestamp() * 1000)
    closed = [status_ev(3, "amina", T0, "set", "closed")]
    states = [
        consult(
            "due001",
            T0,
            "routine",
            *closed,
            fu(4, "dr.chen", "add", "aaaa", dt.date(2025, 3, 10), "BP check"),
        ),
        consult(
            "over01", T0, "urgent", *closed, fu(4, "dr.chen", "add", "bbbb", dt.date(2025, 3, 8), "wound")
        ),
        consult(
            "later1", T0, "emergency", *closed, fu(4, "dr.chen", "add", "cccc", dt.date(2025, 3, 11), "x")
        ),
        consult(
            "done01",
            T0,
            "routine",
            *closed,
            fu(4, "dr.chen", "add", "dddd", dt.date(2025, 3, 1), "y"),
            fu(5, "amina", "done", "dddd"),
        ),
    ]
    q = triage.queue(states, "dr.chen", now, tz)
    assert [(e.consult, e.reason, e.followup) for e in q] == [
        ("over01", "follow-up", "bbbb"),
        ("due001", "follow-up", "aaaa"),
    ]
    assert q[1].waiting_ms == 6 * 3600_000  # since the start of the due day, in the clinic's zone
    assert q[1].due == "2025-03-10" and q[1].followup_reason == "BP check" and not q[1].alarm
    # in UTC it is still 9 March (22:00): the follow-up of the 10th is not due yet
    assert [e.consult for e in triage.queue(states, "dr.chen", now, dt.UTC)] == ["over01"]


def test_wait_text():
    assert [
        triage.wait_text(ms) for ms in (0, 59_000, 60_000, 3599_000, 3600_000, 3900_000, 90000_000)
    ] == [
        "0s",
        "59s",
        "1m",
        "59m",
        "1h 00m",
        "1h 05m",
        "1d 1h",
    ]


def test_linked_consults_share_the_patient_key():
    a = consult("aaaaaa", T0, "routine")
    b = workflow.fold("bbbbbb", [opened(T0 + MIN), case_ev(2, "amina", T0 + MIN, patient__id="paaaaaa")])
    c = workflow.fold("cccccc", [opened(T0 - MIN), case_ev(2, "amina", T0, patient__id="paaaaaa")])
    other = consult("dddddd", T0, "routine")
    assert [s.id for s in triage.linked([a, b, c, other], "aaaaaa")] == ["cccccc", "bbbbbb"]
    assert triage.linked([a, b, c, other], "zzzzzz") == []


def test_history_lines_and_json_fields_of_the_new_kinds():
    body = casecard.encode({"vitals.bp": "140/90", "allergies": None})
    assert workflow.event_text(CASE, body) == "case: vitals.bp=140/90, allergies=(cleared)"
    assert workflow.event_fields(CASE, body) == {"fields": {"vitals.bp": "140/90", "allergies": None}}
    adv = workflow.encode_status("set", "advised", advice="rest")
    assert workflow.event_text(STATUS, adv) == "status: advised — advice: rest"
    assert workflow.event_fields(STATUS, adv) == {"op": "set", "to": "advised", "advice": "rest"}
    assert workflow.event_text(STATUS, workflow.encode_status("claim")) == "status: claimed (in consult)"
    assert workflow.event_text(STATUS, workflow.encode_status("assign", assignee="dr.osei")) == (
        "status: assigned to dr.osei"
    )
    add = followup.encode_followup("add", "k7m2", dt.date(2025, 3, 14), "BP check")
    assert workflow.event_text(FOLLOWUP, add) == "follow-up k7m2 due 2025-03-14: BP check"
    assert workflow.event_fields(FOLLOWUP, add) == {
        "op": "add",
        "id": "k7m2",
        "due": "2025-03-14",
        "reason": "BP check",
    }
    assert "unreadable status" in workflow.event_text(STATUS, b"\x01")

"""The fake the desk tests run on keeps the promises of the real Session (ports.DeskSession)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from medcomm.app.ports import CallControls, DeskSession, consult_of
from medcomm.core.wire import CallState
from medcomm.errors import LinkDown, NotFound, ProfileError, UsageError, VoiceUnavailable
from medcomm.session.call import DeskCalls
from medcomm.session.service import Session
from tests.app.helpers import FEVER, HEADACHE, STOCK, clinic
from tests.harness.fake_session import FakeCalls, FakeSession


def protocol_methods() -> list[str]:
    return [n for n, v in vars(DeskSession).items() if not n.startswith("_") and callable(v)]


@pytest.mark.parametrize("name", protocol_methods())
def test_fake_has_every_method_of_the_protocol_with_the_real_signature(name: str) -> None:
    """The fake takes what the protocol names; the real ``Session`` may take more after them
    (a voice note's mic, speaker, timeout), with defaults."""
    fake, real, wanted = getattr(FakeSession, name), getattr(Session, name), getattr(DeskSession, name)
    assert inspect.iscoroutinefunction(fake) == inspect.iscoroutinefunction(wanted)
    assert inspect.iscoroutinefunction(real) == inspect.iscoroutinefunction(wanted)
    params = list(inspect.signature(wanted).parameters)
    assert list(inspect.signature(fake).parameters) == params
    real_params = inspect.signature(real).parameters
    assert list(real_params)[: len(params)] == params
    assert all(p.default is not inspect.Parameter.empty for p in list(real_params.values())[len(params) :])


def call_methods() -> list[str]:
    return [n for n, v in vars(CallControls).items() if not n.startswith("_") and inspect.isfunction(v)]


@pytest.mark.parametrize("name", call_methods())
def test_fake_calls_have_every_call_method_with_the_real_signature(name: str) -> None:
    """The fake takes what the protocol names; the real ``DeskCalls`` may take more after
    them (mic, speaker), with defaults."""
    fake, real, wanted = getattr(FakeCalls, name), getattr(DeskCalls, name), getattr(CallControls, name)
    assert inspect.iscoroutinefunction(fake) == inspect.iscoroutinefunction(wanted)
    assert inspect.iscoroutinefunction(real) == inspect.iscoroutinefunction(wanted)
    params = list(inspect.signature(wanted).parameters)
    assert list(inspect.signature(fake).parameters) == params
    real_params = inspect.signature(real).parameters
    assert list(real_params)[: len(params)] == params
    assert all(p.default is not inspect.Parameter.empty for p in list(real_params.values())[len(params) :])


def test_fake_and_real_calls_have_the_attributes_of_the_protocol() -> None:
    real = DeskCalls(SimpleNamespace(listeners=[]), "amina")  # type: ignore[arg-type]
    for calls in (real, clinic().calls):
        assert calls.view is None and calls.ringing == {} and calls.active is False
        assert calls.incoming() is None and callable(calls.changed)


def test_fake_calls_ring_answer_and_record_what_the_desk_asked() -> None:
    fake = clinic()
    seen: list[object] = []
    changes: list[int] = []
    fake.on_event(seen.append)
    fake.calls.changed = lambda: changes.append(1)
    ring = fake.calls.ring(FEVER, "dr.chen")
    assert isinstance(ring, CallState) and seen == [ring] and consult_of(ring) == FEVER
    assert fake.calls.incoming() is ring and (ring.by, ring.slots) == ("dr.chen", {"dr.chen": 1})
    fake.calls.fail_next_start(VoiceUnavailable("PortAudio is missing: sudo apt-get install libportaudio2"))
    with pytest.raises(VoiceUnavailable):
        fake.calls.answer(FEVER, "thin")
    assert fake.calls.incoming() is ring  # a failed answer leaves it ringing, as DeskCalls does
    fake.calls.answer(FEVER, "thin")
    assert fake.calls.incoming() is None and fake.calls.active
    view = fake.calls.view
    assert view is not None and (view.consult, view.call, view.state, view.profile) == (
        FEVER, ring.call, "connecting", "thin",
    )  # fmt: skip
    with pytest.raises(UsageError):
        fake.calls.start(HEADACHE)
    fake.calls.connect()
    fake.calls.meters("in call 0:05 · up 9.8 kbit/s")
    assert (view.state, view.peers, view.line) == ("in call", ["dr.chen"], "in call 0:05 · up 9.8 kbit/s")
    assert fake.calls.mute() is True and view.muted
    fake.calls.hangup()
    assert view.state == "ended" and view.line == "call hung up" and not fake.calls.active
    assert fake.calls.asked == [
        ("answer", FEVER, "thin"), ("answer", FEVER, "thin"), ("start", HEADACHE, "auto"), ("mute", True),
        ("hangup",),
    ]  # fmt: skip
    assert len(changes) == 6


def test_fake_has_the_attributes_of_the_protocol() -> None:
    fake = FakeSession("amina")
    assert fake.me == "amina"
    for name in ("state", "rtt", "last_contact", "error", "connect_started", "caught_up"):
        assert hasattr(fake.status, name)


def test_page_really_pages_and_adds_queued_lines_only_at_the_end() -> None:
    fake = FakeSession("amina", seed=1)
    k = fake.add_consult("Long", ["dr.chen"])
    fake.add_messages(k, 10_000)
    queued = fake.add_queued(k, "still here")
    newest = fake.page(k, None, 50)
    assert [ln.seq for ln in newest[:-1]] == list(range(9951, 10_001))
    assert newest[-1] == queued and queued.seq is None and queued.state == "queued"
    older = fake.page(k, 9951, 50)
    assert [ln.seq for ln in older] == list(range(9901, 9951))
    assert [ln.seq for ln in fake.page(k, 3, 50)] == [1, 2]
    assert fake.page(k, 1, 50) == []
    assert [ln.seq for ln in fake.lines_since(k, 9998)] == [9999, 10_000, None]


def test_overview_rows_have_the_shape_of_the_store() -> None:
    fake = clinic()
    rows = fake.overview()
    assert [r["id"] for r in rows] == [FEVER, HEADACHE, STOCK]  # newest activity first
    fever = rows[0]
    assert set(fever) == {
        "id", "title", "members", "last_seq", "last_time", "queued",
        "last_sender", "last_text", "unread", "waiting_since",
    }  # fmt: skip
    assert fever["members"] == ["amina", "dr.chen"]
    assert (fever["last_seq"], fever["unread"], fever["queued"]) == (5, 1, 1)  # failed is not queued
    assert fever["waiting_since"] == fever["last_time"]
    assert rows[1]["unread"] == 0 and rows[1]["waiting_since"] is None


async def test_outbox_to_read_with_events_that_name_the_consult() -> None:
    fake = clinic()
    seen: list[object] = []
    fake.on_event(seen.append)
    line = await fake.queue_text(HEADACHE, "Magnesium given.")
    assert line.seq is None and line.state == "queued" and len(line.id) == 16
    assert fake.outbox_count() == 2 and seen == []  # queuing is local: the relay has said nothing
    stored = fake.ack(line.id)
    assert (stored.id, stored.seq, stored.state) == (line.id, 3, "stored")
    fake.deliver(line.id)
    assert fake.lines(HEADACHE)[-1].state == "delivered"
    fake.read(line.id)
    assert [ln.state for ln in fake.lines(HEADACHE)] == ["read", "read", "read"]
    incoming = fake.receive(HEADACHE, "dr.osei", "Good.")
    assert incoming.seq == 4 and fake.lines(HEADACHE)[-1].state == "delivered"
    assert [consult_of(e) for e in seen] == [HEADACHE] * 4
    await fake.mark_read(HEADACHE)
    assert fake.read_calls == [HEADACHE] and fake.lines(HEADACHE)[-1].state == "read"


async def test_failures_can_be_armed() -> None:
    fake = clinic()
    with pytest.raises(UsageError):
        await fake.queue_text(FEVER, "  ")
    with pytest.raises(NotFound):
        await fake.queue_text("zzzzzz", "hello")
    fake.open_failure = LinkDown("no link to the relay within 30 s")
    with pytest.raises(LinkDown):
        await fake.open_consult("T", ["dr.chen"], 30.0)
    fake.open_failure = None
    k = await fake.open_consult("T", ["dr.chen"], 30.0)
    assert fake.consults[k].members == ["amina", "dr.chen"]
    assert fake.open_calls[-1] == ("T", ["dr.chen"], 30.0)
    failed = fake.fail(fake.outbox[0].id)
    assert failed.state == "failed" and fake.outbox_count() == 0


async def test_opener_yields_the_fake_or_raises_profile_error() -> None:
    fake = FakeSession("amina")
    async with fake.opener() as session:
        assert session is fake and fake.opened == 1
    assert fake.closed == 1
    with pytest.raises(ProfileError):
        async with fake.without_profile().opener():
            pass

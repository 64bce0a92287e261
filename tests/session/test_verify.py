"""Verifying members against a real relay: numbers agree, a new device of a verified member
is announced and stops sending until the new number is confirmed."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcomm.errors import UsageError
from medcomm.session import verify
from medcomm.session.service import Session
from tests.conftest import identity
from tests.harness.relay import RelayProcess


async def test_numbers_agree_and_a_new_device_stops_sending(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    async with Session.open(home=doctor) as d:
        from_doctor = await verify.verification(d, "amina", 15)
    async with Session.open(home=nurse) as n:
        await n.sync(15)
        v = await verify.verification(n, "dr.chen", 15)
        assert v.number == from_doctor.number and v.state == "unverified" and v.devices == 1
        with pytest.raises(UsageError, match="not the current safety number"):
            await verify.confirm(n, "dr.chen", "1" * 60, 15)
        done = await verify.confirm(n, "dr.chen", " ".join(v.number[i : i + 5] for i in range(0, 60, 5)), 15)
        assert done.state == "verified"
        assert await verify.refresh(n, 15) == []
        await n.queue_text(consult, "before the new device")

    # dr.chen enrols a second device: the number changes, and the nurse's device notices.
    await identity(relay, tmp_path / "second", "dr.chen", "doctor")
    async with Session.open(home=nurse) as n:
        await n.sync(15)
        changed = await verify.refresh(n, 15)
        assert [k.user for k in changed] == ["dr.chen"]
        queued = n.store.outbox_count()
        with pytest.raises(verify.MemberKeyChanged, match="dr.chen's device keys changed") as err:
            await n.queue_text(consult, "must not go")
        assert err.value.exit_code == 77
        assert n.store.outbox_count() == queued  # nothing stored, nothing to send later
        v2 = await verify.verification(n, "dr.chen", 15)
        assert v2.state == "changed" and v2.devices == 2 and v2.number != v.number
        await verify.confirm(n, "dr.chen", v2.number, 15)
        item = await n.queue_text(consult, "after comparing again")
        assert await n.wait_stored(item, 15) > 0


async def test_unknown_member_and_oneself(pair: tuple[Path, Path, str]) -> None:
    from medcomm.errors import NotFound

    nurse, _, _ = pair
    async with Session.open(home=nurse) as n:
        with pytest.raises(NotFound):
            await verify.verification(n, "nobody", 15)
        with pytest.raises(UsageError):
            await verify.verification(n, "amina", 15)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.relay import RelayProcess


async def identity(relay: RelayProcess, root: Path, name: str, role: str) -> Path:
    """Enrol and log in in-process: setup, not the subject (login has its own CLI tests)."""
    from medcomm.server.admin import enroll
    from medcomm.session.service import login

    home = root / name
    await login(relay.url, name, enroll(relay.data, name, role), home=home)
    return home


@pytest.fixture
async def pair(relay: RelayProcess, tmp_path: Path) -> tuple[Path, Path, str]:
    """A nurse and a doctor logged in on a real relay, and a consult between them."""
    from medcomm.session.service import Session

    nurse = await identity(relay, tmp_path, "amina", "clinic")
    doctor = await identity(relay, tmp_path, "dr.chen", "doctor")
    async with Session.open(home=nurse) as s:
        consult = await s.open_consult("Cough, 3 weeks", ["dr.chen"], 15)
    return nurse, doctor, consult


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    r = RelayProcess(tmp_path / "relay").start()
    try:
        yield r
    finally:
        r.stop()

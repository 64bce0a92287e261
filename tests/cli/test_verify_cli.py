"""medcomm verify / sync / send as a user meets them when a verified member's keys change."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import identity
from tests.harness.relay import RelayProcess, medcomm


async def test_verify_confirm_announce_and_refuse(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    shown = medcomm("verify", "dr.chen", home=nurse, check=True)
    assert "unverified" in shown.stdout and len(shown.stdout.split()) > 12
    mine = json.loads(medcomm("verify", "dr.chen", "--json", home=nurse, check=True).stdout)
    theirs = json.loads(medcomm("verify", "amina", "--json", home=doctor, check=True).stdout)
    assert mine["number"] == theirs["number"] and len(mine["number"]) == 60
    wrong = medcomm("verify", "dr.chen", "--confirm", "12345", home=nurse)
    assert wrong.returncode == 2
    medcomm("verify", "dr.chen", "--confirm", mine["number"], home=nurse, check=True)
    now = json.loads(medcomm("verify", "dr.chen", "--json", home=nurse, check=True).stdout)
    assert now["state"] == "verified"
    assert medcomm("verify", "nobody", home=nurse).returncode == 4

    await identity(relay, tmp_path / "second", "dr.chen", "doctor")  # a new device for dr.chen
    synced = medcomm("sync", home=nurse, check=True)
    assert "dr.chen's device keys changed" in synced.stderr
    refused = medcomm("send", consult, "not now", home=nurse)
    assert refused.returncode == 77 and "medcomm verify dr.chen" in refused.stderr
    new = json.loads(medcomm("verify", "dr.chen", "--json", home=nurse, check=True).stdout)
    assert new["state"] == "changed" and new["devices"] == 2
    medcomm("verify", "dr.chen", "--confirm", new["number"], home=nurse, check=True)
    medcomm("send", consult, "compared again", home=nurse, check=True)

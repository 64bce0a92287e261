"""``medcomm verify NAME``: the safety number with another member, and confirming it.

Registered onto the ``medcomm`` app by ``cli.py`` like the workflow commands. Exit codes as
everywhere: 0 ok, 2 a number that does not match (nothing marked), 4 no such member or no
device, 75 no link (the keys must come from the relay now, not from memory).
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Annotated, Any

import typer

_cli: ModuleType | None = None


def verify(
    name: str,
    confirm: Annotated[
        str | None,
        typer.Option(help="The 60 digits you compared with NAME (spaces allowed): marks NAME verified."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to keep trying the link.")] = 30.0,
) -> None:
    """Show the safety number with member NAME. Read it to each other (in person, or on a call
    where you know each other's voice); if it matches, run again with --confirm NUMBER. A
    verified member whose device keys change is announced, and sending into consults with
    them stops until you compare and confirm the new number."""
    from medcomm.errors import MedcommError
    from medcomm.session import verify as verifying
    from medcomm.session.service import Session

    assert _cli is not None
    cli: Any = _cli

    async def main() -> Any:
        async with Session.open() as s:
            if confirm is not None:
                return await verifying.confirm(s, name.strip().lower(), confirm, timeout)
            return await verifying.verification(s, name.strip().lower(), timeout)

    try:
        v = cli._run(main())
    except MedcommError as exc:
        raise cli._fail(exc) from None
    from medcomm.core.safety import grouped

    if as_json:
        typer.echo(json.dumps({"member": v.them, "number": v.number, "state": v.state, "devices": v.devices}))
        return
    typer.echo(f"safety number with {v.them} ({v.devices} device{'s' if v.devices != 1 else ''}): {v.state}")
    typer.echo(grouped(v.number))
    if v.state == "changed":
        typer.echo(f"{v.them}'s keys changed since you verified them: compare again before sending", err=True)


def announce(changed: list[Any]) -> None:
    """Say, on stderr, which verified members' keys changed (from ``verify.refresh``)."""
    for known in changed:
        typer.echo(
            f"medcomm: {known.user}'s device keys changed since you verified them; sending into "
            f"consults with {known.user} is stopped until you compare: medcomm verify {known.user}",
            err=True,
        )


def register(cli_module: ModuleType) -> None:
    global _cli
    _cli = cli_module
    cli_module.app.command("verify")(verify)

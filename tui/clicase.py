"""The consult workflow on the command line: case card, status, claim, assign, follow-ups,
the triage queue and the record export.

Registered onto the ``medcomm`` app by ``cli.py`` (one call, :func:`register`), which also
hands over its helpers (sync-then-read, exit codes), so these commands behave like the rest:
exit 0 once the relay stored the change, 75 when it stays queued on this device (the next
command that connects, or ``medcomm sync``, delivers it), 2 for a refused change (nothing
was queued), 4 for an unknown consult or user. Heavy modules load inside the commands.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

_cli: ModuleType | None = None


def cli() -> ModuleType:
    assert _cli is not None, "clicase.register() was not called"
    return _cli


TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to keep trying the link.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]
OfflineOpt = Annotated[bool, typer.Option(help="Do not sync first.")]
URGENCY_HELP = "emergency, urgent or routine."


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


# --- writing: check, queue, wait for the relay ------------------------------------------------


def _change(
    make: Callable[[Any], Awaitable[Any]],
    timeout: float,
    kept: str,
    after: Callable[[Any, int], str | None] | None = None,
) -> tuple[Any, int | None]:
    """Sync (so the check sees what the others did), ``make`` the change (check + queue),
    wait for the relay. Returns (what make returned, seq or None when nothing was queued).
    ``after`` reads the consult once the change is stored and may report a lost race."""
    from medcomm.errors import LinkDown, MedcommError
    from medcomm.session.service import Session

    c = cli()
    queued = {"item": False}

    async def main() -> tuple[Any, int | None, str | None]:
        async with Session.open() as s:
            try:
                await s.sync(timeout)
                wait = timeout
            except LinkDown as exc:
                typer.echo(f"medcomm: checking against what this device holds: {exc}", err=True)
                wait = 1.0
            made = await make(s)
            item = made[0] if isinstance(made, tuple) else made
            if item is None:
                return made, None, None
            queued["item"] = True
            seq = await s.wait_stored(item, wait)
            lost = None
            if after is not None:
                try:
                    await s.sync(min(timeout, 10.0))
                except LinkDown:
                    pass
                lost = after(s, seq)
            return made, seq, lost

    try:
        made, seq, lost = c._run(main())
    except LinkDown as exc:  # nothing queued (e.g. adding a member needs the link): say only why
        raise (c._kept(exc, kept) if queued["item"] else c._fail(exc)) from None
    except MedcommError as exc:
        raise c._fail(exc) from None
    if seq is not None:
        typer.echo(f"stored #{seq}", err=True)
    if lost:
        typer.echo(f"medcomm: {lost}", err=True)
        raise typer.Exit(1)
    return made, seq


def _not_applied(consult: str) -> Callable[[Any, int], str | None]:
    def check(s: Any, seq: int) -> str | None:
        from medcomm.session import casework

        change = casework.applied(casework.consult_state(s, consult), seq)
        if change is not None and not change.applied:
            return f"stored #{seq} but not applied: {change.note}"
        return None

    return check


KEPT = (
    "the change is queued on this device; the next medcomm command that connects "
    "(or `medcomm sync`) delivers it"
)


def open_consult(
    title: str, with_: str, card: dict[str, str | None], sets: list[str], timeout: float
) -> None:
    """``medcomm consult open``: the consult, then its case card right behind the open."""
    from medcomm.core import casecard
    from medcomm.errors import LinkDown, MedcommError
    from medcomm.session import casework
    from medcomm.session.service import Session

    c = cli()
    others = [n.strip().lower() for n in with_.split(",") if n.strip()]
    try:
        raw = {**casecard.parse_assignments(sets), **{k: v for k, v in card.items() if v is not None}}
        casework.check_card(raw)  # a bad value refuses the open: no consult without its card
    except MedcommError as exc:
        raise c._fail(exc) from None
    state: dict[str, str] = {}

    async def main() -> int | None:
        async with Session.open() as s:
            consult, item = await casework.open_with_case(s, title, others, raw, timeout)
            state["id"] = consult
            typer.echo(consult)
            sys.stdout.flush()
            return None if item is None else await s.wait_stored(item, timeout)

    try:
        seq = c._run(main())
    except LinkDown as exc:
        if "id" in state:
            raise c._kept(exc, "the case card is queued on this device; `medcomm sync` delivers it") from None
        raise c._fail(exc) from None
    except MedcommError as exc:
        raise c._fail(exc) from None
    if seq is not None:
        typer.echo(f"case card stored #{seq}", err=True)


# --- case -----------------------------------------------------------------------------------


def case(
    consult: str,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="key=value (repeatable): patient.name, patient.age (34, 8m, 10d), patient.sex "
            "(f/m/x/unknown), patient.id, urgency, complaint, history, vitals.bp (140/90), vitals.hr, "
            "vitals.rr, vitals.temp (°C), vitals.spo2 (%), medications, allergies. An empty value "
            "clears the field. Checked before anything is queued.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    offline: OfflineOpt = False,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Show a consult's case card (each field with its version, who and when), or change it
    with --set: each change is a new version, sent like a message (exit 0 once stored, 75
    if it stays queued)."""
    from medcomm.core import casecard
    from medcomm.errors import MedcommError
    from medcomm.session import casework

    c = cli()
    if set_:
        try:
            raw: dict[str, str | None] = dict(casecard.parse_assignments(set_))
            casework.check_consult(consult)
        except MedcommError as exc:
            raise c._fail(exc) from None

        async def make(s: Any) -> Any:
            return await casework.update_case(s, consult, raw)

        item, seq = _change(make, timeout, KEPT)
        if item is None:
            typer.echo("no change: the case card already says that", err=True)
    state = c._local_view(offline or bool(set_), timeout, lambda s: casework.consult_state(s, consult))
    if as_json:
        typer.echo(json.dumps(casework.state_json(state), ensure_ascii=False))
        return
    _print_card(state)


def _print_card(st: Any) -> None:
    from medcomm.core.casecard import FIELDS

    card = st.card
    last = card.versions[-1] if card.versions else None
    head = f"case card {st.id}, version {card.version}"
    if last is not None:
        head += f" ({last.by}, {_when(last.at)}{', queued' if last.pending else ''})"
    typer.echo(head + f" · {st.title}")
    width = max(len(f.label) for f in FIELDS)
    for f in FIELDS:
        v = card.values.get(f.name)
        if v is None:
            typer.echo(f"  {f.label:<{width}}  -")
            continue
        first, *rest = v.value.splitlines() or [""]
        typer.echo(f"  {f.label:<{width}}  {first}   [v{v.version} {v.by} {_when(v.at)}]")
        for more in rest:
            typer.echo(f"  {'':<{width}}  {more}")
    _print_status_line(st)
    for p in st.problems:
        typer.echo(f"  ! {p}")


def _print_status_line(st: Any) -> None:
    s = st.status
    who = f" ({s.assignee})" if s.assignee else " (unassigned)"
    typer.echo(f"status: {s.state.replace('_', ' ')}{who} since {_when(s.since)}")
    if s.advice:
        typer.echo(f"advice ({s.advice_by}, {_when(s.advice_at)}): {s.advice}")
    for f in sorted(st.followups.values(), key=lambda f: f.due):
        if f.state == "open":
            typer.echo(f"follow-up {f.id} due {f.due.isoformat()}: {f.reason}")


# --- status, claim, assign ------------------------------------------------------------------


def status(
    consult: str,
    to: Annotated[
        str | None,
        typer.Argument(metavar="[STATUS]", help="waiting, in_consult, advised or closed (none: show)."),
    ] = None,
    advice: Annotated[str, typer.Option("--advice", help="The advice (required with advised).")] = "",
    as_json: JsonOpt = False,
    offline: OfflineOpt = False,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Show a consult's status and its history, or change it: waiting -> in_consult ->
    advised (with --advice) -> closed; in_consult -> waiting hands it back, advised ->
    in_consult asks more, closed -> waiting reopens. A change that is not allowed is refused
    before anything is queued (exit 2)."""
    from medcomm.errors import MedcommError
    from medcomm.session import casework

    c = cli()
    if to is not None:
        try:
            casework.check_consult(consult)
        except MedcommError as exc:
            raise c._fail(exc) from None
        state = to.strip().lower().replace(" ", "_").replace("-", "_")

        async def make(s: Any) -> Any:
            return await casework.set_status(s, consult, state, advice)

        _change(make, timeout, KEPT, _not_applied(consult))
    st = c._local_view(offline or to is not None, timeout, lambda s: casework.consult_state(s, consult))
    if as_json:
        typer.echo(json.dumps(casework.state_json(st)["status"], ensure_ascii=False))
        return
    _print_status_line(st)
    for ch in st.status.history:
        seq = f"#{ch.seq}" if ch.seq is not None else "#-"
        what = {"claim": "claimed", "assign": f"assigned to {ch.assignee or 'nobody'}"}.get(ch.op, "set")
        move = f"{ch.before} -> {ch.after}".replace("_", " ")
        tail = f" — {ch.advice}" if ch.advice else ""
        bad = f"  [not applied: {ch.note}]" if not ch.applied else ""
        typer.echo(f"{seq:>5} {_when(ch.at)} {ch.by}: {what} ({move}){tail}{bad}")


def claim(consult: str, timeout: TimeoutOpt = 30.0) -> None:
    """Take a waiting consult: it goes in consult, assigned to you. If another doctor's
    claim reached the relay first, says so and exits 1."""
    from medcomm.session import casework

    async def make(s: Any) -> Any:
        return await casework.claim(s, consult)

    _change(make, timeout, KEPT, _not_applied(consult))
    typer.echo(f"{consult.strip().lower()}: in consult, yours")


def assign(consult: str, name: str, timeout: TimeoutOpt = 30.0) -> None:
    """Assign a consult to NAME, adding NAME as a member first if needed (this is how a local
    doctor brings in a specialist: their device then gets the whole record)."""
    from medcomm.session import casework

    async def make(s: Any) -> Any:
        return await casework.assign(s, consult, name, timeout)

    _change(make, timeout, KEPT, _not_applied(consult))
    typer.echo(f"{consult.strip().lower()}: assigned to {name.strip().lower()}")


# --- follow-ups -----------------------------------------------------------------------------


def followup(
    consult: str,
    due: Annotated[str, typer.Option("--due", help="YYYY-MM-DD, or +Nd / +Nw from today.")] = "",
    reason: Annotated[str, typer.Option("--reason", help="Why (shown in the queue when it is due).")] = "",
    done: Annotated[bool, typer.Option("--done", help="Mark the open follow-up done.")] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel the open follow-up.")] = False,
    fid: Annotated[str, typer.Option("--id", help="Which follow-up (when several are open).")] = "",
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Schedule a follow-up (--due, --reason; prints its id), or end one with --done or
    --cancel. Follow-ups that are due appear in medcomm queue."""
    from medcomm.core import followup as follow
    from medcomm.errors import MedcommError, UsageError
    from medcomm.session import casework

    c = cli()
    try:
        casework.check_consult(consult)
        if done and cancel:
            raise UsageError("give --done or --cancel, not both")
        if done or cancel:
            if due or reason:
                raise UsageError("--due and --reason schedule a follow-up; --done/--cancel end one")
        elif not due or not reason.strip():
            raise UsageError("a follow-up needs --due and --reason")
        day = follow.parse_due(due, casework.today()) if due else None
    except MedcommError as exc:
        raise c._fail(exc) from None

    async def make(s: Any) -> Any:
        if day is not None:
            return await casework.add_followup(s, consult, day, reason)
        return await casework.close_followup(s, consult, fid or None, done=done)

    made, _seq = _change(make, timeout, KEPT)
    _item, the_id = made
    if day is not None:
        typer.echo(the_id)
        typer.echo(f"follow-up {the_id} due {day.isoformat()}", err=True)
    else:
        typer.echo(f"follow-up {the_id} {'done' if done else 'cancelled'}", err=True)


# --- queue ----------------------------------------------------------------------------------


def queue(as_json: JsonOpt = False, offline: OfflineOpt = False, timeout: TimeoutOpt = 15.0) -> None:
    """The triage queue: consults waiting for a doctor and follow-ups due, emergencies first,
    then urgent, then routine, the longest waiting first. An emergency that waits is marked
    '!!' (and counted on stderr). --json: one object per line."""
    from medcomm.core.triage import wait_text
    from medcomm.session import casework

    entries = cli()._local_view(offline, timeout, lambda s: casework.triage_queue(s))
    if as_json:
        for e in entries:
            typer.echo(json.dumps(e.as_json(), ensure_ascii=False))
        return
    alarms = sum(1 for e in entries if e.alarm)
    if alarms:
        typer.echo(f"!! {alarms} emergenc{'y' if alarms == 1 else 'ies'} waiting for a doctor", err=True)
    if not entries:
        typer.echo("nothing waiting")
        return
    typer.echo(f"   {'URGENCY':<9} {'WAITING':>8}  {'CONSULT':<7} {'PATIENT':<22} {'COMPLAINT':<28} STATUS")
    for e in entries:
        mark = "!!" if e.alarm else "  "
        complaint = e.complaint if e.reason == "waiting" else f"follow-up {e.due}: {e.followup_reason}"
        who = f" ({e.assignee})" if e.assignee else ""
        typer.echo(
            f"{mark} {e.urgency:<9} {wait_text(e.waiting_ms):>8}  {e.consult:<7} {_cut(e.patient, 22)} "
            f"{_cut(complaint, 28)} {e.status.replace('_', ' ')}{who}"
        )


def _cells(ch: str) -> int:
    import unicodedata

    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def _cut(text: str, n: int) -> str:
    """One line of at most ``n`` terminal cells, padded to ``n`` (Chinese is two cells wide)."""
    out, used = [], 0
    one = " ".join(text.split())
    for i, ch in enumerate(one):
        w = _cells(ch)
        if used + w > n or (used + w == n and i < len(one) - 1):
            out.append("…")
            used += 1
            break
        out.append(ch)
        used += w
    return "".join(out) + " " * max(0, n - used)


# --- export ---------------------------------------------------------------------------------


def export(
    consult: str,
    fmt: Annotated[str, typer.Option("--format", help="md, html or pdf.")] = "md",
    out: Annotated[Path | None, typer.Option("--out", help="The file to write (required).")] = None,
    offline: OfflineOpt = False,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Write a consult's record to one file: case card and its versions, status history,
    advice, follow-ups, the patient's other consults, every message with time and author,
    images (first views, and the detail tiles opened on this device), call log. Syncs first
    and fetches missing first views (unless --offline). md and html are self-contained; the
    PDF needs no browser."""
    import datetime as dt

    from medcomm.errors import MedcommError, UsageError
    from medcomm.session import casework
    from medcomm.session import export as exporter

    c = cli()
    try:
        casework.check_consult(consult)
        if fmt not in exporter.FORMATS:
            raise UsageError(f"--format must be one of {', '.join(exporter.FORMATS)}, not {fmt!r}")
        if out is None:
            raise UsageError("--out FILE is required: the record is health data, written only where you say")
    except MedcommError as exc:
        raise c._fail(exc) from None

    audited: list[bool] = []

    async def first_views(s: Any) -> None:
        # The relay's audit log accounts for every export of health data; say it before writing.
        await s.link.request("audit.export", {"consult": consult, "format": fmt}, timeout)
        audited.append(True)
        await exporter.fetch_first_views(s, consult, timeout)

    tz = dt.datetime.now().astimezone().tzinfo or dt.UTC
    done = c._local_view(
        offline,
        timeout,
        lambda s: exporter.export(s, consult, fmt, out, int(time.time() * 1000), tz),
        after_sync=first_views,
    )
    if done.missing:
        codes = ", ".join(f"U+{ord(ch):04X}" for ch in done.missing[:20])
        typer.echo(
            f"medcomm: no font on this computer covers {len(done.missing)} characters ({codes}); the PDF "
            "shows them as [U+XXXX] and says so on its first page. Install e.g. fonts-wqy-microhei "
            "or fonts-noto-cjk, or export md/html (exact text).",
            err=True,
        )
    typer.echo(
        f"wrote {out}: {done.messages} messages, {done.images} images, {done.size / 1000:.1f} KB", err=True
    )
    if not audited:
        typer.echo("medcomm: written offline: the relay's audit log does not know of this export", err=True)


def register(cli_module: ModuleType) -> None:
    """Put the workflow commands on the ``medcomm`` app of ``cli_module``."""
    global _cli
    _cli = cli_module
    app = cli_module.app
    app.command("case")(case)
    app.command("status")(status)
    app.command("claim")(claim)
    app.command("assign")(assign)
    app.command("followup")(followup)
    app.command("queue")(queue)
    app.command("export")(export)

"""The `medcomm` command line: flags in, one library call, a line or a table out.

Thin on purpose: heavy modules (websockets, nacl, sqlite, the relay) are imported inside
the commands, so `medcomm --help` stays fast. Errors from the library arrive as
``MedcommError`` with an exit code; they become one line on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from medcomm.errors import LinkDown, MedcommError, UsageError
from medcomm.limits import RELAY

app = typer.Typer(
    help="Consults for clinics and remote doctors over links too poor for video. "
    "With no command, opens the consult desk (TUI).",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: importing rich's renderer costs ~0.1 s per command
    context_settings={"help_option_names": ["-h", "--help"]},
)
consult_app = typer.Typer(help="Open, list and join consults.", no_args_is_help=True, rich_markup_mode=None)
admin_app = typer.Typer(
    help="Relay administration (on the relay's data dir).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(consult_app, name="consult")
app.add_typer(admin_app, name="admin")

TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to keep trying the link.")]


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    import asyncio

    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _local_view(offline: bool, timeout: float, view: Any, after_sync: Any = None) -> Any:
    """Sync (unless offline), then read the device's store; with no link, show what the
    device holds and say so on stderr rather than fail: a clinic reads offline too."""
    from medcomm.session.service import Session

    async def main() -> tuple[Any, str | None]:
        async with Session.open(connect=not offline) as s:
            note = None
            if not offline:
                try:
                    await s.sync(timeout)
                    if after_sync is not None:
                        await after_sync(s)
                except MedcommError as exc:
                    note = f"showing what this device holds: {exc}"
            return view(s), note

    try:
        result, note = _run(main())
    except MedcommError as exc:
        raise _fail(exc) from None
    if note:
        typer.echo(f"medcomm: {note}", err=True)
    return result


def _kept(exc: LinkDown, what: str) -> typer.Exit:
    """No link in time: say what stays safe on this device and how it will still go (75)."""
    typer.echo(f"medcomm: {exc}\nmedcomm: {what}", err=True)
    return typer.Exit(exc.exit_code)


def _fail(exc: MedcommError) -> typer.Exit:
    typer.echo(f"medcomm: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def _setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log link events to stderr.")] = False,
    mouse: Annotated[
        bool, typer.Option(help="Let the desk use the mouse (off: no uplink per move).")
    ] = False,
) -> None:
    _setup_logging(verbose)
    if ctx.invoked_subcommand is None:
        run_desk(mouse=mouse)


def run_desk(mouse: bool = False, open_session: Any = None, textual_defaults: bool = False) -> None:
    """Open the consult desk; logs go to a file, never onto the screen."""
    import logging
    import os

    from medcomm.adapters.profile import data_dir
    from medcomm.app.app import build_app

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    try:
        data_dir().mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=data_dir() / "desk.log", level=logging.INFO, force=True)
    except OSError:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    if textual_defaults or os.environ.get("MEDCOMM_TEXTUAL_DEFAULTS"):
        build_app(open_session, frugal=False).run(mouse=True)
    else:
        build_app(open_session).run(mouse=mouse)


# --- relay --------------------------------------------------------------------------------


@app.command()
def serve(
    data: Annotated[Path, typer.Option(help="Data dir: relay.sqlite3 and blobs/ live here.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8765,
    ping_interval: Annotated[
        float, typer.Option(help="Keepalive ping period, seconds.")
    ] = RELAY.ping_interval,
    ping_timeout: Annotated[
        float, typer.Option(help="A peer silent this long after a ping is dead, seconds.")
    ] = RELAY.ping_timeout,
    tls: Annotated[
        str | None,
        typer.Option(help="'self-signed': make a certificate once under DATA/tls/ and keep it."),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM, leaf first).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    insecure: Annotated[
        bool, typer.Option(help="Allow plain ws:// on an address other than loopback.")
    ] = False,
    max_per_address: Annotated[
        int,
        typer.Option(
            min=1,
            help="Concurrent connections from one address (a clinic's devices share one NAT "
            "address); more are closed with 1013.",
        ),
    ] = RELAY.max_per_address,
    max_pending_per_address: Annotated[
        int,
        typer.Option(
            min=1,
            help="Of those, connections not yet authenticated (bounds connections that never "
            "sign in); more are closed with 1013.",
        ),
    ] = RELAY.max_pending_per_address,
    enrolments_per_minute: Annotated[
        int,
        typer.Option(
            min=1,
            help="Enrolments (first logins with a code) from one address per minute, good or "
            "bad; more are told how long to wait.",
        ),
    ] = RELAY.enrol_attempts,
) -> None:
    """Run the relay until SIGTERM/SIGINT; prints one line when it accepts connections.

    With --tls self-signed or --tls-cert/--tls-key it speaks wss:// (TLS 1.2+) and prints the
    key fingerprint that devices are shown at login, to compare. Plain ws:// is only for
    loopback unless --insecure.
    """
    import logging
    import signal
    from dataclasses import replace

    from medcomm.adapters.tlspin import is_loopback
    from medcomm.server.relay import run_relay

    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("websockets").setLevel(logging.WARNING)  # 2 lines per connection otherwise
    limits = replace(
        RELAY,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_per_address=max_per_address,
        max_pending_per_address=max_pending_per_address,
        enrol_attempts=enrolments_per_minute,
        enrol_window=60.0,
    )
    try:
        context, fingerprint = _relay_tls(data, host, tls, tls_cert, tls_key)
    except MedcommError as exc:
        raise _fail(exc) from None
    if context is None and not insecure and not is_loopback(host):
        typer.echo(
            f"medcomm: plain ws:// on {host} would carry health data unencrypted; use --tls self-signed "
            "(or --tls-cert/--tls-key), or --insecure on a network you trust",
            err=True,
        )
        raise typer.Exit(2)
    scheme = "wss" if context is not None else "ws"
    if fingerprint:
        typer.echo(f"relay key {fingerprint} (devices are shown this at login: compare)", err=True)

    async def main() -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready: asyncio.Future[int] = loop.create_future()
        task = asyncio.ensure_future(run_relay(data, host, port, limits, ready, stop, context))
        done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print(f"medcomm relay listening on {scheme}://{host}:{ready.result()}", flush=True)
        await task

    try:
        _run(main())
    except OSError as exc:
        typer.echo(f"medcomm: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


def _relay_tls(
    data: Path, host: str, tls: str | None, cert: Path | None, key: Path | None
) -> tuple[Any, str | None]:
    """The relay's TLS context and key fingerprint, or (None, None) for plain ws://."""
    from medcomm.server import tls as relay_tls

    if tls is not None and tls != "self-signed":
        raise UsageError(f"--tls takes 'self-signed', not {tls!r} (or give --tls-cert and --tls-key)")
    if tls and (cert or key):
        raise UsageError("--tls self-signed or --tls-cert/--tls-key, not both")
    if bool(cert) != bool(key):
        raise UsageError("--tls-cert and --tls-key go together")
    if tls:
        cert, key = relay_tls.self_signed(data, host)
    if cert is None or key is None:
        return None, None
    return relay_tls.server_context(cert, key), relay_tls.cert_fingerprint(cert)


@admin_app.callback()
def _admin(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="The relay's data dir.")],
) -> None:
    ctx.obj = data


@admin_app.command("enroll")
def admin_enroll(
    ctx: typer.Context,
    name: str,
    role: Annotated[str, typer.Option(help="clinic or doctor.")],
) -> None:
    """Create user NAME (if new) and print a one-time enrolment code for one device."""
    from medcomm.server.admin import enroll

    try:
        code = enroll(ctx.obj, name, role)
    except MedcommError as exc:
        raise _fail(exc) from None
    typer.echo(f"enrolment code for {name.lower()} ({role}), valid 7 days, for one device:")
    typer.echo(code)


@admin_app.command("users")
def admin_users(ctx: typer.Context) -> None:
    """List enrolled users and their roles."""
    from medcomm.server.admin import users

    for name, role in users(ctx.obj):
        typer.echo(f"{name}\t{role}")


@admin_app.command("audit")
def admin_audit(
    ctx: typer.Context,
    consult: Annotated[str | None, typer.Option(help="Only this consult's entries.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's entries.")] = None,
    verify: Annotated[bool, typer.Option(help="Check the whole hash chain and print its head.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show the relay's audit log (who opened, joined, read, fetched, exported, called), or
    --verify its hash chain: exit 1 naming the first entry that was changed or removed."""
    import datetime as dt

    from medcomm.server import audit

    if verify:
        v = audit.verify(ctx.obj)
        if not v.ok:
            typer.echo(f"audit log BROKEN at entry {v.broken_at}: {v.why} ({v.entries} read)", err=True)
            raise typer.Exit(1)
        typer.echo(f"audit log intact: {v.entries} entries, head {v.head_seq} {v.head_hash}")
        typer.echo("(note the head elsewhere: a log cut short at its end can only be told by it)")
        return
    for e in audit.read(ctx.obj, consult=consult, actor=user):
        if as_json:
            typer.echo(json.dumps(e.as_dict(), ensure_ascii=False))
            continue
        when = dt.datetime.fromtimestamp(e.at_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{e.seq}\t{when}\t{e.actor}\t{e.action}\t{e.consult or '-'}\t{e.detail}")


# --- identity -----------------------------------------------------------------------------


@app.command()
def login(
    url: str,
    name: str,
    code: str,
    timeout: TimeoutOpt = 30.0,
    fingerprint: Annotated[
        str | None,
        typer.Option(help="The relay key fingerprint its admin gave you (wss://): no question asked."),
    ] = None,
    repin: Annotated[
        bool, typer.Option(help="Accept a relay key other than the one pinned before (after checking it).")
    ] = False,
    insecure: Annotated[bool, typer.Option(help="Allow plain ws:// to a relay beyond this machine.")] = False,
) -> None:
    """Create this device's key and register it with a one-time CODE (safe to re-run).

    For a wss:// relay the relay's key fingerprint is shown and must match what its admin
    announced (or --fingerprint); it is pinned, and a different key is refused from then on.
    """
    from medcomm.session.service import login as do_login

    def confirm(seen: str) -> bool:
        typer.echo(f"relay key {seen}", err=True)
        if not sys.stdin.isatty():
            typer.echo(
                "medcomm: compare it with the key the relay's admin announced, then run the same "
                "login with --fingerprint " + seen,
                err=True,
            )
            return False
        return typer.confirm("is this the key the relay's admin announced?", default=False, err=True)

    try:
        login_call = do_login(
            url, name, code, timeout, fingerprint=fingerprint, repin=repin, insecure=insecure, confirm=confirm
        )
        profile = _run(login_call)
    except MedcommError as exc:
        raise _fail(exc) from None
    pinned = f", key {profile.pin} pinned" if profile.pin else ""
    typer.echo(f"logged in as {profile.name} ({profile.role}) at {profile.relay}{pinned}")


@app.command()
def whoami(
    offline: Annotated[bool, typer.Option(help="Only show the local profile.")] = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Show this device's identity (and check it with the relay)."""
    from medcomm.adapters.profile import config_dir, load_profile

    try:
        p = load_profile()
    except MedcommError as exc:
        raise _fail(exc) from None
    typer.echo(f"{p.name} ({p.role}) at {p.relay}  [profile in {config_dir()}]")
    if offline:
        return

    async def main() -> None:
        from medcomm.session.service import Session

        async with Session.open(subscribe=False) as s:
            info = await s.whoami(timeout)
            typer.echo(f"relay confirms: {info['name']} ({info['role']})")

    try:
        _run(main())
    except MedcommError as exc:
        raise _fail(exc) from None


# --- consults -----------------------------------------------------------------------------


@consult_app.command("open")
def consult_open(
    title: str,
    with_: Annotated[str, typer.Option("--with", help="Other members, comma-separated.")] = "",
    urgency: Annotated[str | None, typer.Option(help="Case card: emergency, urgent or routine.")] = None,
    complaint: Annotated[str | None, typer.Option(help="Case card: the chief complaint.")] = None,
    patient: Annotated[str | None, typer.Option(help="Case card: the patient's name or a pseudonym.")] = None,
    age: Annotated[str | None, typer.Option(help="Case card: years (34), months (8m) or days (10d).")] = None,
    sex: Annotated[str | None, typer.Option(help="Case card: f, m, x or unknown.")] = None,
    patient_id: Annotated[
        str | None,
        typer.Option("--patient-id", help="Case card: an earlier consult's patient key (links them)."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Case card: any field as key=value (see medcomm case).")
    ] = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Open a consult with other members; prints its id. The case card options are checked
    first and sent right behind the open (75: the card stays queued on this device)."""
    from medcomm.clicase import open_consult

    card = {"urgency": urgency, "complaint": complaint, "patient.name": patient, "patient.age": age,
            "patient.sex": sex, "patient.id": patient_id}
    open_consult(title, with_, card, set_ or [], timeout)


@consult_app.command("list")
def consult_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    offline: Annotated[bool, typer.Option(help="Do not sync first.")] = False,
    timeout: TimeoutOpt = 15.0,
) -> None:
    """List your consults (synced with the relay first, unless --offline or no link)."""
    rows = _local_view(offline, timeout, lambda s: s.store.consults())
    for r in rows:
        if as_json:
            typer.echo(json.dumps(r, ensure_ascii=False))
        else:
            queued = f"  ({r['queued']} queued)" if r["queued"] else ""
            typer.echo(f"{r['id']}  {r['title']}  [{', '.join(r['members'])}]{queued}")  # type: ignore[arg-type]


@consult_app.command("add")
def consult_add(consult: str, name: str, timeout: TimeoutOpt = 30.0) -> None:
    """Add member NAME to consult ID."""
    _change_members(consult, name, timeout, remove=False)


@consult_app.command("remove")
def consult_remove(consult: str, name: str, timeout: TimeoutOpt = 30.0) -> None:
    """Remove member NAME from consult ID. They keep what they already received, and cannot
    read anything sent after: every member's device starts a new key they never get."""
    _change_members(consult, name, timeout, remove=True)


def _change_members(consult: str, name: str, timeout: float, *, remove: bool) -> None:
    from medcomm.session.service import Session

    async def main() -> list[str]:
        async with Session.open(subscribe=False) as s:
            change = s.remove_member if remove else s.add_member
            return await change(consult, name.strip().lower(), timeout)

    try:
        members = _run(main())
    except MedcommError as exc:
        raise _fail(exc) from None
    typer.echo(f"{consult}: {', '.join(members)}")


# --- chat ---------------------------------------------------------------------------------


@app.command()
def send(
    consult: str,
    text: Annotated[str, typer.Argument(help="The message, or - to read it from stdin.")],
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Send a message: exits 0 once the relay has stored it, 75 if it stays queued."""
    from medcomm.session.service import Session

    if text == "-":
        text = sys.stdin.read()

    async def main() -> int:
        async with Session.open(subscribe=False) as s:
            item = await s.queue_text(consult, text)
            try:
                return await s.wait_stored(item, timeout)
            finally:
                try:  # older queued items ride along; do not wait long for them
                    await s.flush(0.5)
                except MedcommError:
                    pass

    try:
        seq = _run(main())
    except LinkDown as exc:
        raise _kept(
            exc,
            "the message is queued on this device; the next medcomm command that connects "
            "(or `medcomm sync`) delivers it",
        ) from None
    except MedcommError as exc:
        raise _fail(exc) from None
    typer.echo(f"stored #{seq}", err=True)


@app.command()
def sync(timeout: TimeoutOpt = 60.0) -> None:
    """Deliver the outbox and catch up on every consult."""
    from medcomm.session.service import Session

    async def main() -> tuple[int, int, list[Any]]:
        from medcomm.session.transfer import send_pending_notes
        from medcomm.session.verify import refresh

        async with Session.open() as s:
            await send_pending_notes(s, timeout)  # voice notes recorded while the link was down
            await s.sync(timeout)
            changed = await refresh(s, timeout)  # verified members whose device keys changed
            await _send_pending_images(s, timeout)  # image detail last: it is the bulk
            return len(s.store.consults()), s.store.outbox_count(), changed

    try:
        consults, queued, changed = _run(main())
    except MedcommError as exc:
        raise _fail(exc) from None
    from medcomm.cliverify import announce

    announce(changed)
    typer.echo(f"in sync: {consults} consults, {queued} queued", err=True)


def _progress(what: str) -> Any:
    """A progress callback for stderr: one rewritten line on a terminal, else a line per
    quarter (a log file should not get a line per 8 KiB chunk)."""
    tty = sys.stderr.isatty()
    shown = {"step": -1}

    def show(done: int, total: int) -> None:
        pct = 100 * done // max(1, total)
        if tty:
            sys.stderr.write(f"\r\x1b[K{what}: {pct}% ({done / 1000:.1f} of {total / 1000:.1f} KB)")
            if done >= total:
                sys.stderr.write("\n")
        elif pct // 25 > shown["step"]:
            shown["step"] = pct // 25
            sys.stderr.write(f"{what}: {pct}% ({done / 1000:.1f} of {total / 1000:.1f} KB)\n")
        sys.stderr.flush()

    return show


@app.command()
def note(
    consult: str,
    from_: Annotated[
        Path | None, typer.Option("--from", help="Send this WAV file (read at once, not in real time).")
    ] = None,
    mic: Annotated[
        str,
        typer.Option(
            "--mic",
            help="Record from this microphone: name or index, or 'default' (the default "
            "when --from is not given).",
        ),
    ] = "",
    seconds: Annotated[
        float,
        typer.Option("--seconds", help="Record this long (0: until Ctrl-C); with --from: the first N s."),
    ] = 0,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Send a voice note (Ogg Opus, ~2 KB per second) to a consult: exits 0 once the relay
    has stored it, 75 if the link is down (the note stays on this device; `medcomm sync`
    sends it). Prints the note's id (for `medcomm play`) on stdout once it is recorded."""
    from medcomm.adapters.profile import load_profile

    if from_ is not None and mic:
        raise _fail(UsageError("give --from FILE.wav or --mic DEVICE, not both"))
    if seconds < 0:
        raise _fail(UsageError("--seconds must not be negative"))
    try:
        from medcomm.adapters.oggopus import encode_note
        from medcomm.session import notes
        from medcomm.session.transfer import check_consult

        check_consult(consult)  # a typo, or no profile: say so before anyone speaks for a minute
        load_profile()

        if from_ is not None:
            pcm = notes.read_wav(from_, seconds)
        else:
            said = "recording… (Ctrl-C ends the note)" if not seconds else f"recording {seconds:g} s…"
            pcm = notes.record(mic, seconds, on_start=lambda: typer.echo(said, err=True))
        ogg = encode_note(pcm)
    except MedcommError as exc:
        raise _fail(exc) from None

    async def main() -> int:
        import asyncio

        from medcomm.session.service import Session
        from medcomm.session.transfer import record_note, send_pending_notes

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with Session.open(subscribe=False) as s:
            mine = record_note(s, consult, ogg)
            typer.echo(mine.cid.hex())  # its id from here on, sent or still waiting (for play)
            show = _progress("sending note")

            def progress(pending: Any, done: int, total: int) -> None:
                if pending.cid == mine.cid:
                    show(done, total)

            result = await send_pending_notes(s, timeout, progress)
            for pending, exc in result.failed:
                if pending.cid == mine.cid:
                    raise exc
            item = next(i for i in result.queued if i.cid == mine.cid)
            return await s.wait_stored(item, max(1.0, deadline - loop.time()))

    try:
        seq = _run(main())
    except LinkDown as exc:
        raise _kept(
            exc,
            "the note is saved on this device; `medcomm sync` (or the next medcomm note) finishes sending it",
        ) from None
    except MedcommError as exc:
        raise _fail(exc) from None
    typer.echo(f"stored #{seq} ({len(ogg) / 1000:.1f} KB)", err=True)


@app.command()
def play(
    note_id: Annotated[
        str, typer.Argument(metavar="NOTE", help='The note\'s "id" in medcomm history --json.')
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the note to this WAV file instead.")
    ] = None,
    speaker: Annotated[
        str,
        typer.Option("--speaker", help="Speaker: device name or index, or a WAV file (default: default)."),
    ] = "",
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Play a voice note (fetched once, then kept on this device), or save it with --out."""
    from medcomm.adapters.oggopus import decode_note
    from medcomm.session import notes
    from medcomm.session.service import Session
    from medcomm.session.transfer import check_note_id, fetch_note

    async def main() -> bytes:
        async with Session.open() as s:
            return await fetch_note(s, note_id, timeout=timeout, progress=_progress("fetching note"))

    try:
        check_note_id(note_id)
        sink = notes.open_output(None, speaker) if out is None else None  # no speaker: fail before fetching
        ogg = _run(main())
        pcm = decode_note(ogg)
        played = notes.play(pcm, sink if sink is not None else notes.open_output(out, speaker))
    except MedcommError as exc:
        raise _fail(exc) from None
    secs = int(round(played))
    where = f"written to {out}" if out is not None else "played"
    typer.echo(f"voice note {secs // 60}:{secs % 60:02d} {where}", err=True)


# --- images -------------------------------------------------------------------------------

ImageOpt = Annotated[
    str, typer.Argument(metavar="IMAGE", help='The image\'s "image" in medcomm history --json.')
]
RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region",
        help="X,Y,W,H in pixels of the (corrected) original, whose size medcomm history shows.",
    ),
]


async def _send_pending_images(session: Any, timeout: float) -> None:
    """`medcomm sync`'s image step: queue what is still to queue, upload detail and originals."""
    from medcomm.session.images import send_pending_images

    await send_pending_images(session, timeout)


class _Steps:
    """Progress of a share or fetch on stderr: rich bars on a terminal, a line per finished
    step otherwise (a log file should not get a line per 8 KiB chunk)."""

    LABELS = {
        "prepare": "preparing",
        "first view": "first view",
        "tiles": "tiles",
        "detail": "detail",
        "original": "original",
    }

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        self.finished: set[str] = set()

    def __enter__(self) -> _Steps:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description:<11}"),
                BarColumn(),
                TextColumn("{task.fields[amount]:>17}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def say(self, line: str) -> None:
        """A line between the bars (or in the log), e.g. the moment the first view is stored."""
        if self.progress is not None:
            self.progress.console.print(line, highlight=False, markup=False)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    @staticmethod
    def amount(step: str, done: int, total: int) -> str:
        if step in ("first view", "detail", "original"):
            return f"{done / 1000:.1f}/{total / 1000:.1f} KB"
        if step == "tiles":
            return f"{done}/{total} tiles" if done >= total else f"encoding {total} tiles"
        return "done" if done >= total else ""

    def __call__(self, step: str, done: int, total: int) -> None:
        label = self.LABELS.get(step, step)
        amount = self.amount(step, done, total)
        if self.progress is not None:
            if step not in self.tasks:
                self.tasks[step] = self.progress.add_task(label, total=max(1, total), amount=amount)
            self.progress.update(self.tasks[step], completed=done, total=max(1, total), amount=amount)
        elif done >= total and step not in self.finished:
            self.finished.add(step)
            sys.stderr.write(f"{label}: {amount}\n")
            sys.stderr.flush()


@app.command()
def share(
    consult: str,
    file: Annotated[Path, typer.Argument(help="JPEG, PNG, HEIC/HEIF, WebP, AVIF, TIFF or DICOM.")],
    as_: Annotated[
        str,
        typer.Option(
            "--as",
            help="report, film, ecg or photo (auto: guessed). Reports, films and ECGs are "
            "straightened and cleaned first; photos keep their colour.",
        ),
    ] = "auto",
    caption: Annotated[str, typer.Option("--caption", help="A few words shown with the image.")] = "",
    window: Annotated[
        str | None,
        typer.Option("--window", help="DICOM only: lung, mediastinum, bone, brain, own or C/W (HU)."),
    ] = None,
    detail: Annotated[
        str,
        typer.Option(
            "--detail",
            help="After the first view is stored, the tiles (and with --original the original): "
            "background (a background medcomm sync uploads them), wait (this command does), later "
            "(the next medcomm sync does).",
        ),
    ] = "background",
    original: Annotated[
        bool,
        typer.Option(
            "--original/--no-original",
            help="Upload the file as it is too (last, after the tiles), e.g. for a doctor known to "
            "need it; it keeps its metadata (a photo's EXIF, a DICOM header). Without it the "
            "original stays on this device until a member asks for it (medcomm fetch --original); "
            "the next sync here then uploads it.",
        ),
    ] = False,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Share an image: exits 0 once its first view is stored at the relay (75 if the link is
    down: the image stays on this device and `medcomm sync` sends it). Prints the image's id
    on stdout as soon as it is saved on this device."""
    from medcomm.adapters.profile import data_dir, load_profile
    from medcomm.core.imagemsg import kb
    from medcomm.session import images
    from medcomm.session.transfer import check_consult

    if detail not in images.DETAIL_MODES:
        raise _fail(UsageError(f"--detail must be one of {', '.join(images.DETAIL_MODES)}, not {detail!r}"))
    try:
        check_consult(consult)
        load_profile()
    except MedcommError as exc:
        raise _fail(exc) from None

    async def main(steps: _Steps) -> tuple[Any, Any]:
        import asyncio

        from medcomm.session.service import Session

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with Session.open(subscribe=False) as s:

            def recorded(pending: Any) -> None:  # the id from here on, sent or still waiting
                if steps.progress is not None and sys.stdout.isatty():
                    steps.say(pending.cid.hex())  # above the bars, not through them
                else:
                    typer.echo(pending.cid.hex())

            shared = await images.share(
                s, consult, file, as_kind=as_, caption=caption, window=window, send_original=original,
                timeout=timeout, step=steps, on_recorded=recorded,
            )
            steps.say(
                f"stored #{shared.seq}: {shared.kind}, first view {kb(shared.first_bytes)} "
                f"in {shared.seconds:.1f} s"
            )
            rest = None
            if detail == "wait":
                rest = await images.send_pending_images(s, max(1.0, deadline - loop.time()), steps)
            return shared, rest

    background = False
    try:
        with _Steps() as steps:
            shared, rest = _run(main(steps))
    except LinkDown as exc:
        if detail == "background":
            images.start_background(data_dir())
            later = "a background medcomm sync keeps trying for an hour, or run `medcomm sync`"
        else:
            later = "`medcomm sync` finishes sending it"
        raise _kept(exc, f"the image is saved on this device; {later}") from None
    except MedcommError as exc:
        raise _fail(exc) from None
    if detail == "background" and shared.detail_blobs:
        images.start_background(data_dir())
        background = True
    what = f"detail: {shared.detail_blobs} blobs, {kb(shared.detail_bytes)}"
    if not original:
        what += " (the original stays on this device until asked for)"
    if rest is not None and rest.left == 0 and not rest.failed:
        typer.echo(f"{what}, all at the relay", err=True)
    elif rest is not None:
        typer.echo(f"{what}; {rest.left} still to upload: run medcomm sync", err=True)
        raise typer.Exit(75)
    elif background:
        typer.echo(f"{what}, uploading in the background (log: {data_dir() / 'background.log'})", err=True)
    else:
        typer.echo(f"{what}, left for the next medcomm sync", err=True)


def _said_requested(loc: Any, req: Any, wait: float) -> None:
    """`fetch --original`: say that the original was asked for, by whom, and what happens next."""
    from medcomm.core.imagemsg import kb

    o = loc.info.original
    what = f"the original ({o.mime.split('/')[-1].upper()}, {kb(o.size)})"
    sender = f"{loc.sender}'s device" if loc.sender else "the sender's device"
    if not req.new:
        where = f" (#{req.seq})" if req.seq is not None else " (queued on this device)"
        line = f"{what} was already requested by {req.by}{where}"
    elif req.seq is not None:
        line = f"requested {what} from {sender} (#{req.seq}): it goes up at that device's next sync"
    else:
        line = f"request for {what} queued on this device (no link): it goes with the next medcomm sync"
    if wait:
        line += f"; waiting up to {wait:.0f} s"
    typer.echo(line, err=True)


def _save_picture(data: bytes, mime: str, out: Path) -> None:
    """Write picture bytes as they are when ``out`` has their extension (or none), else
    converted by Pillow to the format ``out`` names."""
    from medcomm.session.imagefetch import EXTENSIONS, decode_image

    ext = out.suffix.lower().lstrip(".")
    if not ext or ext == EXTENSIONS.get(mime) or (ext == "jpeg" and mime == "image/jpeg"):
        out.write_bytes(data)
        return
    try:
        decode_image(data).save(out)
    except (ValueError, KeyError, OSError) as exc:
        raise UsageError(f"cannot write {out.name}: {exc}") from None


@app.command()
def fetch(
    consult: str,
    image: ImageOpt,
    region: RegionOpt = None,
    original: Annotated[
        bool,
        typer.Option(
            "--original",
            help="The file exactly as the sender gave it (verified). When it is not at the relay, "
            "asks the sender's device for it (once), which uploads it at its next sync.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            help="With --original: wait this long for it to reach the relay, then download it.",
        ),
    ] = 0.0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: a name from the id).")
    ] = None,
    width: Annotated[
        int, typer.Option("--width", help="With --region: fetch it this many pixels wide (default: native).")
    ] = 0,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Fetch an image to a file: its first view; with --region X,Y,W,H that part at native
    resolution from 512-px tiles (centre first); with --original the original file, verified.
    Exits 75 when the sender's device has not uploaded what was asked for yet: some tiles (the
    file is written, grey where they go), all of them, or the original (nothing is written;
    it has been requested from the sender's device: run the same fetch later, or give --wait)."""
    from medcomm.core.imagemsg import kb
    from medcomm.core.tiles import parse_region
    from medcomm.errors import NotFound
    from medcomm.session import imagefetch as images
    from medcomm.session.service import Session
    from medcomm.session.transfer import check_consult

    try:
        if region is not None and original:
            raise UsageError("give --region or --original, not both")
        if width and region is None:
            raise UsageError("--width goes with --region")
        if width < 0:
            raise UsageError("--width must be positive")
        if wait and not original:
            raise UsageError("--wait goes with --original")
        if not 0 <= wait <= images.ORIGINALS.max_wait:
            raise UsageError(f"--wait must be 0..{images.ORIGINALS.max_wait:.0f} seconds")
        want = check_consult(consult)
        images.check_image_id(image)
        asked = parse_region(region) if region is not None else None
    except MedcommError as exc:
        raise _fail(exc) from None

    async def main() -> tuple[Any, Any, Any]:
        async with Session.open() as s:
            loc = await images.find_image(s, image, timeout)
            if loc.consult != want:
                raise UsageError(f"image {image[:12]} is in consult {loc.consult}, not {want}")
            if original:
                data = await images.get_original(
                    s, loc, timeout, wait=wait, progress=_progress("fetching original"),
                    on_request=lambda req: _said_requested(loc, req, wait),
                )
                return loc, data, None
            if asked is not None:
                d = loc.info.detail
                view = None
                if width and d is not None:
                    r = d.pyramid.clip(asked)
                    view = (width, max(1, round(width * r.h / r.w)))
                return loc, None, await images.fetch_region(s, loc, asked, view, timeout)
            return loc, await images.fetch_first(s, loc, timeout, _progress("fetching first view")), None

    try:
        loc, data, res = _run(main())
        stem = image.strip().lower()[:12]
        if res is not None and not res.fetched_bytes and res.missing:
            raise NotFound(
                f"none of the {len(res.tiles)} tiles of that region has reached the relay yet (the "
                "sender's device uploads them after the first view); fetch again later",
                later=True,
            )
        if res is not None:
            r = res.region
            path = out or Path(f"{stem}-region-{r.x}-{r.y}-{r.w}-{r.h}.png")
            res.image.save(path)
        elif original:
            path = out or Path(f"{stem}-original.{images.EXTENSIONS.get(loc.info.original.mime, 'bin')}")
            path.write_bytes(data)
        else:
            path = out or Path(f"{stem}-first.{images.EXTENSIONS.get(loc.info.first.mime, 'img')}")
            _save_picture(data, loc.info.first.mime, path)
    except MedcommError as exc:
        if exc.data.get("later"):  # not at the relay yet: try again later, like a link that is down
            typer.echo(f"medcomm: {exc}", err=True)
            raise typer.Exit(75) from None
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(UsageError(f"cannot write {out}: {exc.strerror or exc}")) from None
    if res is None:
        what = "original" if original else f"first view ({loc.info.first.label})"
        typer.echo(f"wrote {path}: {what}, {kb(len(data))}", err=True)
        return
    n, miss = len(res.tiles), len(res.missing)
    typer.echo(
        f"wrote {path}: region {res.region.wire()} at level {res.level} (1/{1 << res.level} of native), "
        f"{res.image.width}x{res.image.height} px from {n - miss} of {n} tiles ({kb(res.fetched_bytes)})",
        err=True,
    )
    if miss:
        ids = " ".join(t.wire() for t in res.missing[:16]) + (" ..." if miss > 16 else "")
        typer.echo(
            f"medcomm: {miss} of {n} tiles are not at the relay yet ({ids}), drawn grey: the sender's "
            "device is still uploading them; fetch again later",
            err=True,
        )
        raise typer.Exit(75)


@app.command()
def view(
    image: ImageOpt,
    region: RegionOpt = None,
    graphics: Annotated[
        str,
        typer.Option(
            "--graphics",
            help="none (half-block text: works everywhere, over SSH and in tmux), kitty or sixel "
            "(sharper, but 50-700 KB per picture: only on a good link and a terminal that has them).",
        ),
    ] = "none",
    colors: Annotated[
        str, typer.Option("--colors", help="auto, truecolor, 256, 16 or ascii (half-block only).")
    ] = "auto",
    width: Annotated[int, typer.Option("--width", help="Columns to use (default: the terminal's).")] = 0,
    height: Annotated[int, typer.Option("--height", help="Lines to use (default: the terminal's).")] = 0,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Draw an image in the terminal: its first view, or with --region X,Y,W,H that part from
    tiles at the resolution the terminal can show."""
    import os
    import shutil

    from medcomm.adapters import halfblock
    from medcomm.core import imagemsg
    from medcomm.core.tiles import parse_region
    from medcomm.session import imagefetch as images
    from medcomm.session.service import Session

    try:
        if graphics not in ("none", "kitty", "sixel"):
            raise UsageError(f"--graphics must be none, kitty or sixel, not {graphics!r}")
        if colors != "auto" and colors not in halfblock.COLOR_MODES:
            raise UsageError(f"--colors must be auto or one of {', '.join(halfblock.COLOR_MODES)}")
        if width < 0 or height < 0:
            raise UsageError("--width and --height must be positive")
        images.check_image_id(image)
        asked = parse_region(region) if region is not None else None
    except MedcommError as exc:
        raise _fail(exc) from None
    size = shutil.get_terminal_size((80, 24))
    cols, rows = width or size.columns, height or max(4, size.lines - 2)  # room for the caption and prompt
    cell = halfblock.cell_pixels() if graphics != "none" else (1, 2)

    async def main() -> tuple[Any, Any, str]:
        async with Session.open() as s:
            loc = await images.find_image(s, image, timeout)
            first = images.decode_image(await images.fetch_first(s, loc, timeout))
            note = ""
            if asked is None:
                return loc, first, note
            d = loc.info.detail
            res = None
            if d is not None:
                res = await images.fetch_region(s, loc, asked, (cols * cell[0], rows * cell[1]), timeout)
            if res is None or len(res.missing) == len(res.tiles):
                note = "no detail at the relay yet: this is the first view, enlarged"
                return loc, _first_view_part(first, d, asked), note
            if res.missing:
                note = f"{len(res.missing)} of {len(res.tiles)} tiles not at the relay yet (grey)"
            return loc, res.image, note

    try:
        loc, picture, note = _run(main())
        mode = halfblock.detect_colors() if colors == "auto" else colors
        if graphics == "kitty":
            text = halfblock.kitty(picture, cols, rows, tmux="TMUX" in os.environ)
        elif graphics == "sixel":
            text = halfblock.sixel(picture, cols, rows, limits=_cells(cell))
        else:
            text = halfblock.halfblock(picture, cols, rows, mode)  # type: ignore[arg-type]
    except MedcommError as exc:
        raise _fail(exc) from None
    sys.stdout.write(text)
    sys.stdout.flush()
    typer.echo(imagemsg.describe(loc.info), err=True)
    if note:
        typer.echo(f"medcomm: {note}", err=True)


def _first_view_part(first: Any, detail: Any, region: Any) -> Any:
    """The part of the first view under a region of the original (when no tile is here)."""
    sx = first.width / (detail.width if detail is not None else first.width)
    sy = first.height / (detail.height if detail is not None else first.height)
    x0, y0 = min(first.width - 1, int(region.x * sx)), min(first.height - 1, int(region.y * sy))
    x1 = max(x0 + 1, min(first.width, round((region.x + region.w) * sx)))
    y1 = max(y0 + 1, min(first.height, round((region.y + region.h) * sy)))
    return first.crop((x0, y0, x1, y1))


def _cells(cell: tuple[int, int]) -> Any:
    from dataclasses import replace

    from medcomm.adapters.halfblock import RENDER

    return replace(RENDER, cell_px=cell)


def _print_line(line: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(line.as_json(), ensure_ascii=False))
        return
    import time as _time

    when = _time.strftime("%H:%M", _time.localtime(line.time / 1000))
    seq = f"#{line.seq}" if line.seq is not None else "#-"
    mark = {"queued": "…", "stored": "✓", "delivered": "✓✓", "read": "✓✓ read", "failed": "✗"}
    if line.kind == "system":
        typer.echo(f"{seq:>5} {when} · {line.sender} {line.text}")
    else:
        typer.echo(f"{seq:>5} {when} {line.sender}: {line.text}  [{mark.get(line.state, line.state)}]")


@app.command()
def history(
    consult: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    since: Annotated[int, typer.Option(help="Only messages after this seq.")] = 0,
    offline: Annotated[bool, typer.Option(help="Do not sync first.")] = False,
    timeout: TimeoutOpt = 15.0,
) -> None:
    """Print a consult's messages with their delivery states (marks them read)."""

    async def read(s: Any) -> None:
        await s.mark_read(consult)

    lines = _local_view(offline, timeout, lambda s: s.history(consult, since), after_sync=read)
    for line in lines:
        _print_line(line, as_json)


@app.command()
def tail(
    consult: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Earlier messages to show first.")] = 10,
) -> None:
    """Print new messages of a consult as they arrive, across reconnects (Ctrl-C ends)."""
    from medcomm.session.service import Session

    async def main() -> None:
        async with Session.open() as s:
            try:
                await s.link.wait_until(s.link.core.is_synced, 10.0)
            except MedcommError:
                pass
            for line in s.history(consult, limit=lines) if lines else []:
                _print_line(line, as_json)
            async for line in s.tail(consult):
                _print_line(line, as_json)
                sys.stdout.flush()
                await s.mark_read(consult)

    try:
        _run(main())
    except MedcommError as exc:
        raise _fail(exc) from None


@app.command()
def call(
    consult: str,
    mic: Annotated[
        str, typer.Option("--mic", help="Microphone: device name or index, or a WAV file read in real time.")
    ] = "",
    speaker: Annotated[
        str, typer.Option("--speaker", help="Speaker: device name or index, or a WAV file to record into.")
    ] = "",
    profile: Annotated[
        str,
        typer.Option(
            "--profile",
            help="auto (adapts to the link), thin (~7 kbit/s), standard (~15 kbit/s) or auscultation "
            "(stethoscope at the microphone: flat 20 Hz-1 kHz, ~28 kbit/s); naive (20 ms packets, "
            "no adaptation, no dropping: only for comparison).",
        ),
    ] = "auto",
    seconds: Annotated[float, typer.Option("--seconds", help="Hang up after this long (0: Ctrl-C).")] = 0,
    answer: Annotated[
        bool, typer.Option("--answer", help="Wait for the next call in this consult and answer it.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the call's figures as JSON here (no audio).")
    ] = None,
) -> None:
    """Call the other members of a consult (or answer with --answer) and talk until Ctrl-C.

    The status line shows state, time, kbit/s up and down, round trip, jitter-buffer delay and
    concealed audio, once a second. With --mic/--speaker WAV files the call runs headless.
    Voice is end-to-end encrypted: the relay forwards it without being able to listen.
    Exits 1 when the call was declined, missed, cancelled, or lost (the relay no longer had
    it after a reconnect)."""
    import asyncio
    import signal

    from medcomm.core.ratecontrol import PROFILES

    if profile not in PROFILES:
        raise _fail(UsageError(f"unknown profile {profile!r}: choose {', '.join(PROFILES)}"))

    async def main() -> Any:
        from medcomm.adapters.audio import open_sink, open_source
        from medcomm.session.call import SessionCallKeys, run_call
        from medcomm.session.service import Session

        source, sink = open_source(mic), open_sink(speaker)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tty = sys.stderr.isatty()

        def status(line: str) -> None:
            if tty:
                sys.stderr.write("\r\x1b[K" + line)
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()

        async with Session.open() as s:
            await s.link.wait_until(lambda: s.status.state == "online", 30.0)
            out = await run_call(
                s.link, s.me, consult, source, sink, keys=SessionCallKeys(s), profile=profile,
                seconds=seconds or None, answer=answer, stop=stop, on_status=status,
            )
        if tty:
            sys.stderr.write("\n")
        return out

    try:
        out = _run(main())
    except MedcommError as exc:
        raise _fail(exc) from None
    if report is not None:
        report.write_text(json.dumps({"call": out.call, "outcome": out.outcome, "duration_s": out.seconds,
                                      "profile": profile, **out.report}, indent=1))
    minutes, secs = divmod(int(out.seconds), 60)
    typer.echo(f"call {out.call}: {out.outcome}, {minutes}:{secs:02d}")
    if out.outcome in ("declined", "missed", "cancelled", "lost"):
        raise typer.Exit(1)


@app.command()
def devices() -> None:
    """List the sound devices PortAudio sees (for --mic and --speaker)."""
    from medcomm.adapters.audio import list_devices

    try:
        found = list_devices()
    except MedcommError as exc:
        raise _fail(exc) from None
    if not found:
        typer.echo("no sound devices (use --mic FILE.wav --speaker FILE.wav for calls)")
    for d in found:
        marks = ("*in " if d.is_default_in else "") + ("*out" if d.is_default_out else "")
        typer.echo(f"{d.index:3d}  {d.name}  in {d.inputs} out {d.outputs}  {marks}".rstrip())


@app.command()
def demo(
    data: Annotated[
        Path | None, typer.Option(help="Demo data dir (default: medcomm's data dir /demo).")
    ] = None,
    port: Annotated[int, typer.Option(help="Relay port (0 picks a free one).")] = 0,
    seconds: Annotated[float, typer.Option(help="Plain mode: stop after this long (0 = until Ctrl-C).")] = 0,
    plain: Annotated[bool, typer.Option(help="Print the exchange instead of opening the desk.")] = False,
    mouse: Annotated[bool, typer.Option(help="Let the desk use the mouse.")] = False,
) -> None:
    """A local relay with two demo identities and a demo consult; opens the desk as the doctor
    while the clinic writes (prints the exchange instead with --plain or without a terminal)."""
    if not plain and sys.stdout.isatty() and sys.stdin.isatty():
        from medcomm.session.demo import desk_session

        run_desk(mouse=mouse, open_session=lambda: desk_session(data, port))
        return
    from medcomm.session.demo import run_demo

    try:
        _run(run_demo(data, port, seconds))
    except MedcommError as exc:
        raise _fail(exc) from None


from medcomm import clicase, cliverify  # noqa: E402  (workflow commands: case, status, ...; verify)

clicase.register(sys.modules[__name__])
cliverify.register(sys.modules[__name__])


def main() -> None:
    app()


if __name__ == "__main__":
    main()

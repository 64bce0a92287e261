"""`medcomm demo`: a real relay on the embedded SQLite default, two demo identities (a
clinic nurse and a doctor), a demo consult, and a short scripted exchange, followed live
with delivery states. Everything is real (relay, keys, outbox, receipts); only the typing
is scripted. The data dir is kept, so a second run continues the same consult.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from medcomm.adapters.localstore import Line
from medcomm.adapters.profile import PROFILE_FILE, data_dir, load_profile, save_profile
from medcomm.server.admin import enroll
from medcomm.server.relay import run_relay
from medcomm.session.service import Session, login

CLINIC = "amina"
DOCTOR = "dr.chen"
TITLE = "Demo: boy, 6, fever and cough for 4 days"
SCRIPT = [
    (CLINIC, "Temp 39.2 C, RR 44/min, SpO2 91% on air. Crackles right base."),
    (DOCTOR, "Thanks. Any chest indrawing or danger signs? Can he drink?"),
    (CLINIC, "Mild indrawing, drinking poorly. No convulsions."),
    (DOCTOR, "Treat as severe pneumonia: first dose of antibiotics now and refer. I will call."),
    (CLINIC, "Understood. Ambulance requested."),
]


def _print(line: Line, who: str) -> None:
    when = time.strftime("%H:%M:%S", time.localtime(line.time / 1000))
    text = line.text if line.kind != "system" else f"· {line.text}"
    print(f"[{who}'s screen] #{line.seq} {when} {line.sender}: {text}", flush=True)


@asynccontextmanager
async def demo_relay(base: Path | None, port: int, announce: bool = True) -> AsyncIterator[dict[str, Path]]:
    """A relay on the demo data dir with both identities logged in; yields their homes."""
    base = (base or data_dir() / "demo").expanduser()
    relay_dir, homes = base / "relay", {CLINIC: base / CLINIC, DOCTOR: base / DOCTOR}
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    relay = asyncio.ensure_future(run_relay(relay_dir, "127.0.0.1", port, ready=ready, stop=stop))
    done, _ = await asyncio.wait({relay, ready}, return_when=asyncio.FIRST_COMPLETED)
    if relay in done:
        relay.result()
    url = f"ws://127.0.0.1:{ready.result()}"
    if announce:
        print(f"medcomm demo: relay on {url}, data in {base}", flush=True)
    try:
        for name, home in homes.items():
            if (home / PROFILE_FILE).exists():
                p = load_profile(home)
                save_profile(type(p)(relay=url, name=p.name, role=p.role, home=home))
            else:
                code = enroll(relay_dir, name, "clinic" if name == CLINIC else "doctor")
                await login(url, name, code, home=home)
        yield homes
    finally:
        stop.set()
        await relay


async def run_demo(base: Path | None, port: int, seconds: float) -> None:
    """The demo without a screen: the exchange printed line by line with its states."""
    async with demo_relay(base, port) as homes:
        await _converse(homes, seconds)


async def _demo_consult(nurse: Session) -> str:
    await nurse.sync(30)
    consults = [c for c in nurse.store.consults() if c["title"] == TITLE]
    return str(consults[0]["id"]) if consults else await nurse.open_consult(TITLE, [DOCTOR], 30)


@asynccontextmanager
async def desk_session(base: Path | None, port: int) -> AsyncIterator[Session]:
    """The demo for the desk: yields the doctor's session while the clinic's side of the
    consult plays out in the background (the nurse writes, reads what the doctor sends)."""
    async with demo_relay(base, port, announce=False) as homes:
        async with Session.open(home=homes[CLINIC]) as nurse, Session.open(home=homes[DOCTOR]) as doctor:
            consult = await _demo_consult(nurse)
            await doctor.sync(30)
            script = asyncio.ensure_future(_clinic_side(nurse, consult))
            try:
                yield doctor
            finally:
                script.cancel()


async def _clinic_side(nurse: Session, consult: str) -> None:
    for who, text in SCRIPT:
        if who != CLINIC:
            continue
        await asyncio.sleep(6.0)
        await nurse.mark_read(consult)
        await nurse.queue_text(consult, text)
    while True:  # keep reading what the doctor writes, so the desk shows "read"
        await asyncio.sleep(3.0)
        await nurse.mark_read(consult)


async def _converse(homes: dict[str, Path], seconds: float) -> None:
    async with (
        Session.open(home=homes[CLINIC]) as nurse,
        Session.open(home=homes[DOCTOR]) as doctor,
    ):
        consult = await _demo_consult(nurse)
        await doctor.sync(30)
        print(f'demo consult {consult}: "{TITLE}" between {CLINIC} (clinic) and {DOCTOR} (doctor)')
        for line in doctor.history(consult)[-8:]:
            _print(line, DOCTOR)
        print(
            "try from another terminal while this runs:\n"
            f"  MEDCOMM_HOME={homes[CLINIC]} medcomm send {consult} 'hello doctor'\n"
            f"  MEDCOMM_HOME={homes[DOCTOR]} medcomm history {consult}\n"
            "Ctrl-C ends the demo.",
            flush=True,
        )
        follow = asyncio.ensure_future(_follow(doctor, consult))
        try:
            end = time.monotonic() + seconds if seconds else None
            sessions = {CLINIC: nurse, DOCTOR: doctor}
            for who, text in SCRIPT:
                await asyncio.sleep(2.0)
                sender = sessions[who]
                reader = doctor if sender is nurse else nurse
                item = await sender.queue_text(consult, text)
                seq = await sender.wait_stored(item, 30)
                states = ["stored"]
                states.append(await _state_after(sender, consult, seq, "delivered"))
                await reader.mark_read(consult)
                states.append(await _state_after(sender, consult, seq, "read"))
                print(f"  {who} sees #{seq} go {' -> '.join(states)}", flush=True)
                if end and time.monotonic() > end:
                    return
            print("script done; the relay keeps running (Ctrl-C ends).", flush=True)
            while end is None or time.monotonic() < end:
                await asyncio.sleep(0.5)
        finally:
            follow.cancel()


async def _state_after(session: Session, consult: str, seq: int, want: str) -> str:
    """Poll (bounded) until the sender's own view of seq reaches ``want``; return what it is."""
    state = "stored"
    for _ in range(30):
        state = next((ln.state for ln in session.history(consult, seq - 1) if ln.seq == seq), state)
        if state == want or state == "read":
            break
        await asyncio.sleep(0.1)
    return state


async def _follow(session: Session, consult: str) -> None:
    async for line in session.tail(consult):
        _print(line, session.me)

"""`medcomm demo`: a real relay on the embedded SQLite default, two demo identities (a
clinic nurse and a doctor), a demo consult, and a short scripted exchange, followed live
with delivery states. Everything is real (relay, keys, outbox, receipts); only the typing
is scripted. The data dir is kept, so a second run continues the same consult.
"""

from __future__ import annotations

import asyncio
import time
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


async def run_demo(base: Path | None, port: int, seconds: float) -> None:
    base = (base or data_dir() / "demo").expanduser()
    relay_dir, homes = base / "relay", {CLINIC: base / CLINIC, DOCTOR: base / DOCTOR}
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    relay = asyncio.ensure_future(run_relay(relay_dir, "127.0.0.1", port, ready=ready, stop=stop))
    done, _ = await asyncio.wait({relay, ready}, return_when=asyncio.FIRST_COMPLETED)
    if relay in done:
        relay.result()
    url = f"ws://127.0.0.1:{ready.result()}"
    print(f"medcomm demo: relay on {url}, data in {base}", flush=True)
    try:
        for name, home in homes.items():
            if (home / PROFILE_FILE).exists():
                p = load_profile(home)
                save_profile(type(p)(relay=url, name=p.name, role=p.role, home=home))
            else:
                code = enroll(relay_dir, name, "clinic" if name == CLINIC else "doctor")
                await login(url, name, code, home=home)
        await _converse(homes, url, seconds)
    finally:
        stop.set()
        await relay


async def _converse(homes: dict[str, Path], url: str, seconds: float) -> None:
    async with (
        Session.open(home=homes[CLINIC]) as nurse,
        Session.open(home=homes[DOCTOR]) as doctor,
    ):
        await nurse.sync(30)
        consults = [c for c in nurse.store.consults() if c["title"] == TITLE]
        consult = str(consults[0]["id"]) if consults else await nurse.open_consult(TITLE, [DOCTOR], 30)
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
                item = await sessions[who].queue_text(consult, text)
                seq = await sessions[who].wait_stored(item, 30)
                await asyncio.sleep(0.8)
                await doctor.mark_read(consult)
                await nurse.mark_read(consult)
                await asyncio.sleep(0.4)
                state = {ln.seq: ln.state for ln in sessions[who].history(consult, seq - 1)}
                print(f"  {who} sees #{seq} as: {state.get(seq)}", flush=True)
                if end and time.monotonic() > end:
                    return
            print("script done; the relay keeps running (Ctrl-C ends).", flush=True)
            while end is None or time.monotonic() < end:
                await asyncio.sleep(0.5)
        finally:
            follow.cancel()


async def _follow(session: Session, consult: str) -> None:
    async for line in session.tail(consult):
        _print(line, session.me)
        await session.mark_read(consult)

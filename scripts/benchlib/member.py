"""One consult member in the chat benchmark: a long-running session (as the TUI would run)
that sends paced messages and records when each message of every member arrives.

Run by ``benchlib.chat`` as a subprocess, one per member, each behind its own emulated link.
It stops sending after ``--count`` messages, then keeps receiving until SIGTERM, when it
syncs (bounded) and writes its records as JSON. Message texts carry only a token
("bench <member> <n>") padded to 60 characters: no health data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path


def token(member: str, n: int) -> str:
    return f"bench {member} {n} ".ljust(60, ".")


async def run(args: argparse.Namespace) -> None:
    from medcomm.core import wire
    from medcomm.core.delivery import Accepted, Acked
    from medcomm.session.link import Unlocked
    from medcomm.session.service import Session

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    rng = random.Random(args.seed)
    sent: dict[str, dict[str, float | int]] = {}
    received: dict[str, dict[str, float | int]] = {}
    catchups: list[dict[str, float]] = []
    cids: dict[bytes, str] = {}

    async with Session.open(home=Path(args.home)) as s:
        if args.plain:  # the comparison run: bodies as they were before end-to-end encryption
            s.store.keyring = None
            s.link.before_submit = s.link.on_rekey = None
        seen_caught_up: set[float] = set()
        scanned = {"seq": 0}

        def take_texts(now: float, rescan: bool) -> None:
            """Texts as the history holds them: opened, so a sealed one counts once its key is here."""
            rows = s.store.db.execute(
                "SELECT seq, body FROM messages WHERE consult=? AND kind=1 AND seq>? ORDER BY seq",
                (args.consult, 0 if rescan else scanned["seq"]),
            ).fetchall()
            for seq, body in rows:
                text = bytes(body).decode("utf-8", "replace")
                if text.startswith("bench "):
                    received.setdefault(text, {"t": now, "seq": seq})
                scanned["seq"] = max(scanned["seq"], seq)
        backlog = {"opened": 0.0, "n": 0, "bytes": 0}  # received on this connection before caught up

        def listen(event: object) -> None:
            now = time.time()
            st = s.link.status
            if st.opened and st.opened != backlog["opened"]:
                backlog.update(opened=st.opened, n=0, bytes=0)
            if isinstance(event, Accepted) and st.caught_up is None:
                backlog["n"] += 1
                backlog["bytes"] += len(wire.encode(event.msg)) + 2  # + the WebSocket header
            if isinstance(event, Accepted) and event.msg.kind == 1:
                take_texts(now, rescan=False)
            elif isinstance(event, Unlocked):
                take_texts(now, rescan=True)
            elif isinstance(event, Acked) and event.cid in cids:
                sent[cids[event.cid]]["acked"] = now
                sent[cids[event.cid]]["seq"] = event.seq
            if st.caught_up is not None and st.caught_up not in seen_caught_up and st.connect_started:
                seen_caught_up.add(st.caught_up)
                catchups.append(
                    {
                        "from_connect": st.caught_up - st.connect_started,
                        "from_open": st.caught_up - (st.opened or st.connect_started),
                        "rtt": st.rtt or 0.0,
                        "at": now - (time.monotonic() - st.caught_up),  # wall clock, for the stall schedule
                        "backlog": backlog["n"],
                        "backlog_bytes": backlog["bytes"],
                    }
                )

        s.on_event(listen)
        await s.sync(args.final_timeout)
        print(json.dumps({"member": args.name, "ready": True}), flush=True)
        await asyncio.sleep(args.start_delay)
        for n in range(args.count):
            if stop.is_set():
                break
            await asyncio.sleep(rng.expovariate(args.rate))
            text = token(args.name, n)
            item = await s.queue_text(args.consult, text)
            cids[item.cid] = text
            sent[text] = {"t": time.time()}
        print(json.dumps({"member": args.name, "done_sending": len(sent)}), flush=True)
        await stop.wait()
        try:
            await s.sync(args.final_timeout)
            final = "synced"
        except Exception as exc:  # report, do not hide: the checker will count what is missing
            final = f"not synced: {exc}"
        out = {
            "member": args.name,
            "sent": sent,
            "received": received,
            "catchups": catchups,
            "final": final,
            "connects": s.link.status.connects,
            "outbox_left": s.store.outbox_count(),
        }
        Path(args.out).write_text(json.dumps(out))


def main() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(created).3f %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--home", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--consult", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rate", type=float, default=2.0, help="messages per second (Poisson)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--final-timeout", type=float, default=120.0)
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds between ready and sending")
    p.add_argument("--out", required=True)
    p.add_argument("--plain", action="store_true", help="bodies unsealed (for the cost comparison)")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

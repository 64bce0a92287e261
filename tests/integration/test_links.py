"""Delivery through scripts/badlink: cuts, a relay SIGKILL, stalls and dead peers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from medcomm.limits import ClientLimits
from medcomm.session.service import Session
from tests.harness.links import BadLink
from tests.harness.relay import MEDCOMM, RelayProcess, medcomm


async def test_no_loss_no_dup_no_reorder_across_cuts_and_a_relay_kill(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a = BadLink(relay.port, tmp_path / "a.json", "--delay", "30", "--jitter", "20")
    b = BadLink(relay.port, tmp_path / "b.json", "--delay", "30", "--jitter", "20")
    try:
        nurse = relay.identity(tmp_path, "amina", "clinic", url=a.url)
        doctor = relay.identity(tmp_path, "dr.chen", "doctor", url=b.url)
        consult = medcomm("consult", "open", "t", "--with", "dr.chen", home=nurse, check=True).stdout.strip()
        texts = [f"message {n:03d}" for n in range(60)]
        async with Session.open(home=nurse) as sa, Session.open(home=doctor) as sb:
            await sa.sync(20)
            await sb.sync(20)

            def online(*sessions: Session) -> bool:
                return all(x.link.status.state == "online" for x in sessions)

            for n, text in enumerate(texts):
                await sa.queue_text(consult, text)
                # each fault hits a live connection (on a loaded machine a reconnect can still
                # be under way from the previous one), so every one of them forces a reconnect
                if n in (10, 35):
                    await sa.link.wait_until(lambda: online(sa), 20)
                    a.cut()
                if n == 20:
                    await sb.link.wait_until(lambda: online(sb), 20)
                    b.cut()
                if n == 25:
                    await sa.link.wait_until(lambda: online(sa, sb), 20)
                    relay.kill()
                    relay.start()
                await asyncio.sleep(0.03)
            await sa.flush(60)
            texts_in = lambda: [ln for ln in sb.history(consult) if ln.kind == "text"]  # noqa: E731
            await sb.link.wait_until(lambda: len(texts_in()) >= len(texts), 60)
            got = [ln for ln in sb.history(consult) if ln.kind == "text"]
            assert [ln.text for ln in got] == texts
            seqs = [ln.seq for ln in sb.history(consult)]  # key messages take seqs, not history lines
            assert seqs == sorted(set(seqs)) and seqs[0] == 1 and len(seqs) == len(texts) + 1
            assert sa.link.status.connects >= 4 and sb.link.status.connects >= 3
        assert a.counters()["cuts"] == 2
    finally:
        a.close()
        b.close()


async def test_a_stall_shorter_than_the_timeout_keeps_the_link(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", extra=["--ping-interval", "1", "--ping-timeout", "3"]).start()
    link = BadLink(relay.port, tmp_path / "s.json", "--stall", "2/3")
    try:
        home = relay.identity(tmp_path, "amina", "clinic", url=link.url)
        limits = ClientLimits(ping_interval=1.0, ping_timeout=3.0)
        async with Session.open(home=home, limits=limits) as s:
            await s.sync(20)
            await asyncio.sleep(8)  # two 2 s stalls, with pings every second both ways
            assert s.link.status.connects == 1 and s.link.status.state == "online"
        assert link.counters()["stalls"] >= 2
    finally:
        link.close()
        relay.stop()


async def test_a_frozen_relay_is_noticed_by_the_client(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    try:
        home = relay.identity(tmp_path, "amina", "clinic")
        limits = ClientLimits(ping_interval=1.0, ping_timeout=2.0)
        async with Session.open(home=home, limits=limits) as s:
            await s.sync(20)
            assert relay.proc is not None
            relay.proc.send_signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                await s.link.wait_until(lambda: s.link.status.state != "online", 10)
                assert time.monotonic() - t0 < 6
            finally:
                relay.proc.send_signal(signal.SIGCONT)
            await s.link.wait_until(lambda: s.link.status.state == "online", 20)
    finally:
        relay.stop()


def _relay_sockets(port: int) -> int:
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    )
    return out.stdout.count("\n")


def test_a_frozen_client_is_dropped_by_the_relay(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", extra=["--ping-interval", "1", "--ping-timeout", "2"]).start()
    home = relay.identity(tmp_path, "amina", "clinic")
    consult = medcomm("consult", "open", "t", home=home, check=True).stdout.strip()
    follower = subprocess.Popen(
        [*MEDCOMM, "tail", consult],
        env=dict(os.environ, MEDCOMM_HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while _relay_sockets(relay.port) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _relay_sockets(relay.port) == 1
        follower.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        while _relay_sockets(relay.port) and time.monotonic() - t0 < 15:
            time.sleep(0.2)
        assert _relay_sockets(relay.port) == 0  # the relay noticed the silent peer and closed
        assert time.monotonic() - t0 < 8
    finally:
        follower.send_signal(signal.SIGCONT)
        follower.kill()
        follower.wait(10)
        relay.stop()


async def test_backoff_starts_afresh_after_each_working_connection(
    relay: RelayProcess, tmp_path: Path
) -> None:
    link = BadLink(relay.port, tmp_path / "r.json")
    try:
        home = relay.identity(tmp_path, "amina", "clinic", url=link.url)
        async with Session.open(home=home) as s:
            await s.sync(20)
            for n in range(6):
                before = s.link.status.connects
                link.cut()
                t0 = time.monotonic()
                await s.link.wait_until(lambda b=before: s.link.status.connects > b, 20)
                # attempt 0 waits 0.25-0.75 s; a growing backoff would pass 4 s by the 5th drop
                assert time.monotonic() - t0 < 3.0, f"reconnect {n} took {time.monotonic() - t0:.1f} s"
    finally:
        link.close()

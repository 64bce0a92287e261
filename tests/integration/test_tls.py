"""TLS end to end: a relay with its kept self-signed certificate, devices that pin its key at
login, and what happens when the key changes (the proof must never reach a stranger)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from medcomm.server import tls as relay_tls
from medcomm.server.admin import enroll
from tests.harness.relay import RelayProcess, medcomm


@pytest.fixture
def tls_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    r = RelayProcess(tmp_path / "relay", extra=["--tls", "self-signed"]).start()
    try:
        yield r
    finally:
        r.stop()


def _fingerprint(relay: RelayProcess) -> str:
    return relay_tls.cert_fingerprint(relay.data / "tls" / "relay.crt")


def _login(relay: RelayProcess, home: Path, name: str, *extra: str) -> tuple[int, str, str]:
    code = enroll(relay.data, name, "clinic" if name == "amina" else "doctor")
    out = medcomm("login", relay.url, name, code, *extra, home=home)
    return out.returncode, out.stdout, out.stderr


def test_serve_prints_wss_and_the_key_once_and_keeps_it(tmp_path: Path) -> None:
    r = RelayProcess(tmp_path / "relay", extra=["--tls", "self-signed"]).start()
    try:
        assert r.url.startswith("wss://")
        first = _fingerprint(r)
        r.stop()
        r.start()  # same port, same data dir: the same key
        assert _fingerprint(r) == first
    finally:
        r.stop()


def test_login_pins_the_key_and_chat_runs_over_tls(tls_relay: RelayProcess, tmp_path: Path) -> None:
    fp = _fingerprint(tls_relay)
    nurse, doctor = tmp_path / "amina", tmp_path / "dr.chen"
    # Not a terminal and no fingerprint given: the key is shown, nothing is registered.
    rc, _, err = _login(tls_relay, nurse, "amina")
    assert rc == 2 and fp in err and "--fingerprint" in err
    assert not (nurse / "profile.json").exists()
    # A fingerprint other than the relay's: refused (77), nothing sent.
    rc, _, err = _login(tls_relay, nurse, "amina", "--fingerprint", "SHA256:" + "A" * 43)
    assert rc == 77 and "nothing was sent" in err
    # A fingerprint is base64: lower-casing it names another key, so that fails too.
    assert _login(tls_relay, nurse, "amina", "--fingerprint", fp.lower())[0] == 77
    rc, out, err = _login(tls_relay, nurse, "amina", "--fingerprint", fp)
    assert rc == 0, err
    assert fp in out
    assert json.loads((nurse / "profile.json").read_text())["pin"] == fp
    assert _login(tls_relay, doctor, "dr.chen", "--fingerprint", fp)[0] == 0
    consult = medcomm("consult", "open", "TLS", "--with", "dr.chen", home=nurse, check=True).stdout.strip()
    medcomm("send", consult, "BP 150/95 over TLS", home=nurse, check=True)
    lines = medcomm("history", consult, "--json", home=doctor, check=True).stdout.splitlines()
    assert [json.loads(x)["text"] for x in lines if json.loads(x)["kind"] == "text"] == ["BP 150/95 over TLS"]


def test_a_changed_key_is_refused_until_repinned(tls_relay: RelayProcess, tmp_path: Path) -> None:
    fp = _fingerprint(tls_relay)
    nurse = tmp_path / "amina"
    assert _login(tls_relay, nurse, "amina", "--fingerprint", fp)[0] == 0
    tls_relay.stop()
    shutil.rmtree(tls_relay.data / "tls")  # the relay comes back with another key
    tls_relay.start()
    new = _fingerprint(tls_relay)
    assert new != fp
    out = medcomm("whoami", "--timeout", "10", home=nurse)
    assert out.returncode == 77, out.stderr
    assert "key changed" in out.stderr and fp in out.stderr and new in out.stderr
    # Logging in again does not quietly take the new key either ...
    rc, _, err = _login(tls_relay, nurse, "amina", "--fingerprint", new)
    assert rc == 77 and "--repin" in err
    # ... only --repin with the key the admin confirms.
    rc, _, err = _login(tls_relay, nurse, "amina", "--fingerprint", new, "--repin")
    assert rc == 0, err
    assert medcomm("whoami", home=nurse).returncode == 0


async def test_a_stranger_with_another_key_never_sees_the_proof(
    tls_relay: RelayProcess, tmp_path: Path
) -> None:
    """A pinned device that reaches a TLS server with another key aborts right after the TLS
    handshake: not one byte of the upgrade request (with its signed proof) arrives."""
    from medcomm.session.service import Session

    fp = _fingerprint(tls_relay)
    nurse = tmp_path / "amina"
    assert _login(tls_relay, nurse, "amina", "--fingerprint", fp)[0] == 0
    port = tls_relay.port
    tls_relay.stop()
    cert, key = relay_tls.self_signed(tmp_path / "stranger", "127.0.0.1")
    got: list[bytes] = []
    handshakes = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal handshakes
        handshakes += 1
        try:
            while data := await asyncio.wait_for(reader.read(4096), 5):
                got.append(data)
        except (TimeoutError, OSError, ssl.SSLError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=relay_tls.server_context(cert, key))
    try:
        async with Session.open(home=nurse) as s:
            with pytest.raises(Exception, match="key changed"):
                await s.sync(10)
    finally:
        server.close()
        await server.wait_closed()
    assert handshakes >= 1
    assert got == []


def test_plain_beyond_loopback_is_refused_on_both_sides(tmp_path: Path) -> None:
    out = medcomm("serve", "--data", str(tmp_path / "r"), "--host", "0.0.0.0", "--port", "0", timeout=30)
    assert out.returncode == 2 and "--insecure" in out.stderr
    out = medcomm("login", "ws://10.255.255.1:8765", "amina", "ABCD-EFGH", home=tmp_path / "a", timeout=30)
    assert out.returncode == 2 and "not encrypted" in out.stderr  # refused before any packet
    out = medcomm("serve", "--data", str(tmp_path / "r"), "--tls", "bogus", timeout=30)
    assert out.returncode == 2 and "self-signed" in out.stderr


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(tls_relay: RelayProcess) -> None:
    def client(low: ssl.TLSVersion, high: ssl.TLSVersion) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version, ctx.maximum_version = low, high
        return ctx

    async def attempt(ctx: ssl.SSLContext) -> str:
        _, writer = await asyncio.open_connection("127.0.0.1", tls_relay.port, ssl=ctx)
        version = writer.get_extra_info("ssl_object").version()
        writer.transport.abort()
        return version

    assert asyncio.run(attempt(client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))) == "TLSv1.2"
    assert asyncio.run(attempt(client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED))) == "TLSv1.3"
    try:
        old = client(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    except ValueError:
        pytest.skip("this OpenSSL cannot offer TLS 1.0/1.1 at all")
    with pytest.raises((ssl.SSLError, OSError)):
        asyncio.run(attempt(old))


async def test_a_relay_killed_under_load_over_tls_loses_nothing(
    tls_relay: RelayProcess, tmp_path: Path
) -> None:
    """Both devices sending, sealed, over TLS, while the relay is SIGKILLed twice and comes
    back on the same port and key: every message arrives once, in order, readable."""
    from medcomm.session.service import Session

    fp = _fingerprint(tls_relay)
    nurse, doctor = tmp_path / "amina", tmp_path / "dr.chen"
    assert _login(tls_relay, nurse, "amina", "--fingerprint", fp)[0] == 0
    assert _login(tls_relay, doctor, "dr.chen", "--fingerprint", fp)[0] == 0
    consult = medcomm("consult", "open", "load", "--with", "dr.chen", home=nurse, check=True).stdout.strip()
    mine = [f"nurse {n:02d}" for n in range(30)]
    theirs = [f"doctor {n:02d}" for n in range(30)]
    async with Session.open(home=nurse) as sa, Session.open(home=doctor) as sb:
        await sa.sync(30)
        await sb.sync(30)
        for n in range(30):
            await sa.queue_text(consult, mine[n])
            await sb.queue_text(consult, theirs[n])
            if n in (10, 20):
                tls_relay.kill()
                tls_relay.start()
            await asyncio.sleep(0.02)
        await sa.flush(60)
        await sb.flush(60)

        def texts(s: Session) -> list[str]:
            return [ln.text for ln in s.history(consult) if ln.kind == "text"]

        for s in (sa, sb):
            await s.link.wait_until(lambda s=s: len(texts(s)) >= 60, 60)  # type: ignore[misc]
            got = texts(s)
            assert sorted(got) == sorted(mine + theirs) and len(set(got)) == 60
            assert [t for t in got if t.startswith("nurse")] == mine
            assert [t for t in got if t.startswith("doctor")] == theirs
        assert [ln.seq for ln in sa.history(consult)] == [ln.seq for ln in sb.history(consult)]


async def test_the_round_trip_measured_at_connect_over_tls_is_the_links(
    tls_relay: RelayProcess, tmp_path: Path
) -> None:
    """Connecting over wss:// takes three round trips before the relay's first frame (TCP,
    TLS 1.3, the upgrade carrying the proof), not two: counted as two, a 100 ms link read as
    ~155 ms, which sets a call's start (auto's first rung, the jitter buffer's first target)."""
    from medcomm.session.service import Session
    from tests.harness.links import BadLink

    home = tmp_path / "amina"
    assert _login(tls_relay, home, "amina", "--fingerprint", _fingerprint(tls_relay))[0] == 0
    link = BadLink(tls_relay.port, tmp_path / "badlink.json", "--delay", "50")  # 100 ms round trip
    try:
        profile = json.loads((home / "profile.json").read_text())
        profile["relay"] = f"wss://127.0.0.1:{link.port}"
        (home / "profile.json").write_text(json.dumps(profile))
        for _ in range(2):  # twice: a fresh session, then one that reconnects from the same store
            async with Session.open(home=home) as s:
                await s.link.wait_until(lambda s=s: s.status.state == "online", 20)  # type: ignore[misc]
                assert s.status.rtt is not None and 0.09 <= s.status.rtt <= 0.135, s.status.rtt
    finally:
        link.close()

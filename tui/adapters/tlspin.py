"""TLS to the relay, pinned to the relay's key as seen (and compared by a person) at login.

A clinic's relay usually has a self-signed certificate, so the usual web PKI proves nothing
here; what matters is that the key is the same one the admin announced. ``medcomm login``
shows the key's fingerprint, the user compares it, and the profile keeps it. Every later
connection checks the key *after the TLS handshake and before the WebSocket upgrade*, because
the upgrade request already carries the device's signed proof: a man in the middle must not
even see that. A different key is refused with :class:`RelayKeyChanged`.

The pin is the SHA-256 of the certificate's SubjectPublicKeyInfo (the key, not the
certificate), so renewing a certificate with the same key keeps working. It is shown like an
SSH host key: ``SHA256:`` and unpadded base64.

Plain ``ws://`` is allowed to loopback only (a relay on the same machine, tests) unless the
user says ``--insecure``: on any other network it would carry health data readable on the way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import ssl
from typing import Any
from urllib.parse import urlsplit

from medcomm.errors import LinkDown, RelayKeyChanged, UsageError, WireError

FINGERPRINT_PREFIX = "SHA256:"


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    if pos + 2 > len(buf):
        raise WireError("certificate: truncated DER")
    tag, first = buf[pos], buf[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + 2 + n > len(buf):
            raise WireError("certificate: bad DER length")
        start, length = pos + 2 + n, int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
    if start + length > len(buf):
        raise WireError("certificate: truncated DER")
    return tag, start, start + length


def spki(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo element of an X.509 certificate (DER), whole.

    Certificate = SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial, signature,
    issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }.
    """
    tag, start, _ = _tlv(cert_der, 0)
    if tag != 0x30:
        raise WireError("certificate: not a DER SEQUENCE")
    tag, pos, _ = _tlv(cert_der, start)
    if tag != 0x30:
        raise WireError("certificate: no tbsCertificate")
    if cert_der[pos] == 0xA0:  # explicit version
        pos = _tlv(cert_der, pos)[2]
    for _ in range(5):  # serial, signature algorithm, issuer, validity, subject
        pos = _tlv(cert_der, pos)[2]
    tag, _, end = _tlv(cert_der, pos)
    if tag != 0x30:
        raise WireError("certificate: no subjectPublicKeyInfo")
    return cert_der[pos:end]


def key_fingerprint(cert_der: bytes) -> str:
    """``SHA256:`` + unpadded base64 of the SHA-256 of the certificate's public key."""
    digest = hashlib.sha256(spki(cert_der)).digest()
    return FINGERPRINT_PREFIX + base64.b64encode(digest).decode().rstrip("=")


def normalize_fingerprint(text: str) -> str:
    """Accept what a person copies: with or without ``SHA256:``, stray spaces, padding."""
    t = "".join(text.split())
    if t.upper().startswith(FINGERPRINT_PREFIX):
        t = t[len(FINGERPRINT_PREFIX) :]
    t = t.rstrip("=")
    try:
        raw = base64.b64decode(t + "=" * (-len(t) % 4), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"{text!r} is not a relay key fingerprint (SHA256: and 43 base64 characters)")
    return FINGERPRINT_PREFIX + t


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plain(url: str, insecure: bool) -> None:
    """Refuse plain ws:// beyond this machine unless the user accepted it."""
    parts = urlsplit(url)
    if parts.scheme == "ws" and not insecure and not is_loopback(parts.hostname or ""):
        raise UsageError(
            f"{url} is not encrypted: anyone on the way could read the consults. Use the relay's "
            "wss:// address (medcomm serve --tls ...), or --insecure on a network you trust"
        )


def client_context() -> ssl.SSLContext:
    """TLS 1.2+; the certificate chain is not judged by CAs, the key pin decides."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_fingerprint(transport: Any) -> str:
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise LinkDown("the relay sent no TLS certificate")
    return key_fingerprint(der)


async def probe(url: str, timeout: float) -> str:
    """The relay's key fingerprint from a TLS handshake alone (nothing else is sent)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=client_context(), server_hostname=host)
    except TimeoutError:
        raise LinkDown(f"no TLS answer from {url} within {timeout:.0f} s") from None
    except (OSError, ssl.SSLError) as exc:
        raise LinkDown(f"cannot reach {url} over TLS: {exc}") from None
    try:
        return peer_fingerprint(writer.transport)
    finally:
        writer.transport.abort()


def connect_options(url: str, pin: str | None) -> dict[str, Any]:
    """Extra ``websockets.connect`` arguments: for wss://, TLS whose key is checked against
    ``pin`` before the upgrade request (with the signed proof) is written."""
    if not url.startswith("wss://"):
        return {}
    if not pin:
        raise RelayKeyChanged(f"no key pinned for {url}: run medcomm login again to see and pin it")
    return {"ssl": client_context(), "create_connection": _pinned_class(pin)}


_CLASSES: dict[str, type] = {}


def _pinned_class(pin: str) -> type:
    from websockets.asyncio.client import ClientConnection

    cls = _CLASSES.get(pin)
    if cls is None:

        class PinnedConnection(ClientConnection):
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                seen = peer_fingerprint(self.transport)
                if seen != pin:
                    raise RelayKeyChanged(
                        f"the relay's key changed: pinned {pin}, now {seen}. Someone may be between "
                        "you and the relay, so nothing was sent. If the relay's admin confirms the "
                        "new key, run medcomm login again with --repin",
                        pinned=pin,
                        seen=seen,
                    )
                await super().handshake(*args, **kwargs)

        cls = _CLASSES[pin] = PinnedConnection
    return cls

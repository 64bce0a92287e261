"""The relay key pin: fingerprints from certificates, what a person may paste, plain-ws rules."""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path

import pytest

from medcomm.adapters import tlspin
from medcomm.errors import RelayKeyChanged, UsageError, WireError
from medcomm.server import tls as relay_tls


def _cert_der(tmp_path: Path) -> tuple[bytes, bytes]:
    """(certificate DER, SubjectPublicKeyInfo DER as cryptography writes it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import load_der_x509_certificate

    cert, _ = relay_tls.self_signed(tmp_path, "127.0.0.1")
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    spki = load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der, spki


def test_fingerprint_is_the_sha256_of_the_public_key(tmp_path: Path) -> None:
    der, spki = _cert_der(tmp_path)
    assert tlspin.spki(der) == spki
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")
    assert tlspin.key_fingerprint(der) == expected
    assert relay_tls.cert_fingerprint(tmp_path / "tls" / "relay.crt") == expected


def test_self_signed_is_made_once_and_kept(tmp_path: Path) -> None:
    cert, key = relay_tls.self_signed(tmp_path, "127.0.0.1")
    first = relay_tls.cert_fingerprint(cert)
    assert key.stat().st_mode & 0o077 == 0  # the private key is the owner's only
    assert relay_tls.self_signed(tmp_path, "127.0.0.1") == (cert, key)
    assert relay_tls.cert_fingerprint(cert) == first
    ctx = relay_tls.server_context(cert, key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_server_context_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        relay_tls.server_context(tmp_path / "no.crt", tmp_path / "no.key")
    cert, _ = relay_tls.self_signed(tmp_path / "a", "h")
    _, other_key = relay_tls.self_signed(tmp_path / "b", "h")
    with pytest.raises(UsageError, match="cannot use TLS certificate"):
        relay_tls.server_context(cert, other_key)


def test_truncated_or_foreign_der_is_refused(tmp_path: Path) -> None:
    der, _ = _cert_der(tmp_path)
    for bad in (b"", b"\x30", der[: len(der) // 3], b"\x02\x01\x00" + der, b"\x30\x85" + der):
        with pytest.raises(WireError):
            tlspin.spki(bad)


def test_pasted_fingerprints_are_normalized(tmp_path: Path) -> None:
    der, _ = _cert_der(tmp_path)
    fp = tlspin.key_fingerprint(der)
    body = fp.removeprefix("SHA256:")
    for pasted in (fp, body, f"  sha256:{body[:20]} {body[20:]}\n", body + "="):
        assert tlspin.normalize_fingerprint(pasted) == fp
    for bad in ("", "SHA256:abc", "MD5:" + body, body[:-2], "é" * 43):
        with pytest.raises(UsageError):
            tlspin.normalize_fingerprint(bad)


def test_plain_ws_only_to_loopback_unless_insecure() -> None:
    for url in ("ws://127.0.0.1:8765", "ws://localhost:1", "ws://[::1]:8765", "wss://relay.example:8765"):
        tlspin.check_plain(url, insecure=False)
    for url in ("ws://relay.example:8765", "ws://10.0.0.5:8765", "ws://[2001:db8::1]:1"):
        with pytest.raises(UsageError, match="not encrypted"):
            tlspin.check_plain(url, insecure=False)
        tlspin.check_plain(url, insecure=True)


def test_wss_without_a_pin_is_refused_before_connecting() -> None:
    assert tlspin.connect_options("ws://127.0.0.1:1", None) == {}
    with pytest.raises(RelayKeyChanged, match="login again"):
        tlspin.connect_options("wss://127.0.0.1:1", None)
    opts = tlspin.connect_options("wss://127.0.0.1:1", "SHA256:x")
    assert opts["ssl"].minimum_version == ssl.TLSVersion.TLSv1_2

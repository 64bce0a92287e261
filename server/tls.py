"""The relay's TLS: a certificate given by the admin, or one made once and kept.

Clients pin the relay's *key* at login (see ``medcomm.adapters.tlspin``), so a self-signed
certificate is as good as a CA's here, provided it never changes: ``--tls self-signed``
makes an ECDSA P-256 key and a 20-year certificate in ``DATA/tls/`` on first start and reuses
them on every later start. The key file is written owner-only before the certificate, so a
crash in between leaves nothing that a later start would half-trust.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from medcomm.adapters.profile import write_atomic
from medcomm.errors import UsageError

TLS_DIR = "tls"
CERT_FILE = "relay.crt"
KEY_FILE = "relay.key"
SELF_SIGNED_YEARS = 20


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 or newer only; clear errors for missing or mismatched files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise UsageError(f"TLS {what} file {path} does not exist")
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot use TLS certificate {cert} with key {key}: {exc}") from None
    return ctx


def self_signed(data_dir: Path, host: str) -> tuple[Path, Path]:
    """The kept self-signed certificate and key under ``DATA/tls/``; made on first use."""
    folder = data_dir / TLS_DIR
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    if cert.is_file() and key.is_file():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"medcomm relay {host}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * SELF_SIGNED_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(key, key_pem, 0o600)
    write_atomic(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def cert_fingerprint(cert: Path) -> str:
    """The fingerprint clients are shown at login, from the certificate file."""
    from medcomm.adapters.tlspin import key_fingerprint

    text = cert.read_text()
    end = "-----END CERTIFICATE-----"
    if end not in text:
        raise UsageError(f"{cert} holds no PEM certificate")
    first = text[text.index("-----BEGIN CERTIFICATE-----") : text.index(end) + len(end)]  # the leaf
    return key_fingerprint(ssl.PEM_cert_to_DER_cert(first))

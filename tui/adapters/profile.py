"""This device's profile: relay URL, user name, role, and its Ed25519 key.

Kept in the platform's config dir, or under ``$MEDCOMM_HOME`` when set, so that tests and a
shared clinic PC can hold several identities on one machine. The key file is written before
registration is attempted, so a login cut off by the link can be re-run with the same key
and the same one-time code.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from medcomm.errors import ProfileError, UsageError

PROFILE_FILE = "profile.json"
KEY_FILE = "device.key"


def config_dir(home: Path | None = None) -> Path:
    if home is not None:
        return home
    env = os.environ.get("MEDCOMM_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("medcomm"))


def data_dir(home: Path | None = None) -> Path:
    if home is not None:
        return home
    env = os.environ.get("MEDCOMM_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("medcomm"))


@dataclass(frozen=True)
class Profile:
    relay: str
    name: str
    role: str
    home: Path | None = None  # None: $MEDCOMM_HOME or the platform dirs
    pin: str | None = None  # the wss:// relay's key fingerprint, compared by a person at login
    insecure: bool = False  # plain ws:// beyond loopback was accepted at login

    @property
    def seed(self) -> bytes:
        return load_or_create_seed(self.home)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomic, fsynced write; by default readable only by this user (a key file on a shared
    clinic PC). The relay's TLS key and certificate are written the same way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_seed(home: Path | None = None) -> bytes:
    """The device key's 32-byte seed; created once, then reused by every login attempt."""
    path = config_dir(home) / KEY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ProfileError(f"device key {path} is damaged; move it away and log in again")
        return seed
    seed = os.urandom(32)
    write_atomic(path, seed)
    return seed


def load_profile(home: Path | None = None) -> Profile:
    path = config_dir(home) / PROFILE_FILE
    try:
        raw = json.loads(path.read_text())
        return Profile(
            relay=raw["relay"],
            name=raw["name"],
            role=raw["role"],
            home=home,
            pin=raw.get("pin"),
            insecure=bool(raw.get("insecure", False)),
        )
    except FileNotFoundError:
        raise ProfileError(
            "no profile on this device yet: run  medcomm login URL NAME CODE"
            "  with the enrolment code from your relay's admin"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise ProfileError(f"profile {path} is damaged; run medcomm login again") from None


def save_profile(profile: Profile) -> None:
    fields = {k: v for k, v in asdict(profile).items() if k != "home"}
    write_atomic(config_dir(profile.home) / PROFILE_FILE, json.dumps(fields, indent=2).encode())


def check_relay_url(url: str) -> str:
    """A ws:// or wss:// URL with a host and, if given, a valid port (e.g. ws://relay:8765)."""
    from urllib.parse import urlsplit

    example = "e.g. ws://relay.example:8765"
    if not url.startswith(("ws://", "wss://")):
        raise UsageError(f"relay URL must start with ws:// or wss://, not {url!r} ({example})")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"relay URL {url!r} has a bad port ({example})") from None
    if not parts.hostname or (":" in parts.netloc.rsplit("]", 1)[-1] and port is None):
        raise UsageError(f"relay URL {url!r} needs a host and a port ({example})")
    return url.rstrip("/")

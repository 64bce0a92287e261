"""Device authentication by challenge signature, and the slow-down for repeated failures.

No secret crosses the wire after enrolment: the relay sends a fresh 32-byte nonce, the
device signs it with its Ed25519 key, the relay checks the signature against the enrolled
public key. The one-time enrolment code is sent once, to bind the key.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from medcomm.core.wire import auth_message


def new_nonce() -> bytes:
    return secrets.token_bytes(32)


def verify(pubkey: bytes, nonce: bytes, sig: bytes, purpose: bytes) -> bool:
    """True if sig is pubkey's signature of the challenge for this purpose."""
    from nacl.exceptions import BadSignatureError, CryptoError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(pubkey).verify(auth_message(nonce, purpose), sig)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True


@dataclass
class FailureThrottle:
    """Per-address failure counts; beyond ``free`` failures each answer waits longer.

    Sans-I/O: callers pass ``now`` and sleep for the returned delay themselves. Counts decay
    after ``forget`` seconds without failures, so a clinic behind one NAT is not locked out
    for long by one mistyped code.
    """

    free: int = 5
    delay_max: float = 8.0
    forget: float = 600.0
    max_addresses: int = 10000
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)

    def delay(self, addr: str, now: float) -> float:
        count, last = self._seen.get(addr, (0, now))
        if now - last > self.forget:
            self._seen.pop(addr, None)
            return 0.0
        over = count - self.free
        return 0.0 if over < 0 else min(self.delay_max, 0.25 * 2.0 ** min(over, 32))

    def failed(self, addr: str, now: float) -> None:
        count, last = self._seen.get(addr, (0, now))
        if now - last > self.forget:
            count = 0
        self._seen.pop(addr, None)  # re-insert: the dict's order is least recently failed first
        if len(self._seen) >= self.max_addresses:
            self._seen.pop(next(iter(self._seen)))  # bounded: forget the stalest address
        self._seen[addr] = (count + 1, now)

    def succeeded(self, addr: str) -> None:
        self._seen.pop(addr, None)

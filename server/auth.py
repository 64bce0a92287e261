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


@dataclass
class ReplayCache:
    """Nonces of early proofs already used, each kept until it could no longer pass the
    clock window, so a captured upgrade request cannot be replayed to log in.

    Bounded: when full, ``admit`` says no and the device falls back to a challenge (one
    round trip more, never a refusal). Sans-I/O: ``now`` is the relay's wall clock (s).
    """

    window: float = 300.0
    capacity: int = 100_000
    _expiry: dict[bytes, float] = field(default_factory=dict)

    def fresh(self, signed_at: float, now: float) -> bool:
        """A proof's own time within the window of the relay's clock."""
        return abs(now - signed_at) <= self.window

    def admit(self, nonce: bytes, now: float) -> bool:
        """True the first time a nonce is seen within its lifetime; records it."""
        self._forget_expired(now)
        if nonce in self._expiry or len(self._expiry) >= self.capacity:
            return False
        self._expiry[nonce] = now + 2 * self.window
        return True

    def _forget_expired(self, now: float) -> None:
        # insertion order is expiry order (constant lifetime), so stop at the first live one
        while self._expiry:
            nonce = next(iter(self._expiry))
            if self._expiry[nonce] > now:
                break
            del self._expiry[nonce]

    def __len__(self) -> int:
        return len(self._expiry)

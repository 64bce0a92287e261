"""Device authentication by challenge signature, and what bounds an address's attempts:
the slow-down for repeated failures, the enrolment rate, the connections per address.

No secret crosses the wire after enrolment: the relay sends a fresh 32-byte nonce, the
device signs it with its Ed25519 key, the relay checks the signature against the enrolled
public key. The one-time enrolment code is sent once, to bind the key.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

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


@dataclass
class AttemptWindow:
    """At most ``limit`` attempts per address in any ``window`` seconds, successful or not.

    For enrolment: a one-time code is 12 characters from 30, so guessing is hopeless, but each
    attempt costs a signature check and a database transaction; an address that keeps trying
    gets told how long to wait instead. Sans-I/O: callers pass ``now``. Bounded: at most
    ``limit`` times per address and ``max_addresses`` addresses (the stalest forgotten first).
    """

    limit: int = 10
    window: float = 60.0
    max_addresses: int = 10000
    _times: dict[str, deque[float]] = field(default_factory=dict)

    def attempt(self, addr: str, now: float) -> float:
        """Record an attempt and return 0, or return the seconds to wait (nothing recorded)."""
        times = self._times.pop(addr, None)  # re-inserted below: least recently tried first
        if times is None:
            times = deque(maxlen=self.limit)
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.limit:
            self._times[addr] = times
            return max(0.0, self.window - (now - times[0]))
        times.append(now)
        if len(self._times) >= self.max_addresses:
            self._times.pop(next(iter(self._times)))
        self._times[addr] = times
        return 0.0


Verdict = Literal["admit", "refuse", "drop"]


@dataclass
class AddressGate:
    """Connections per remote address: at most ``max_open`` in all, at most ``max_pending``
    of them not yet authenticated (the slow-handshake attack: many connections that never
    sign anything, each held until the authentication deadline).

    ``max_open`` is high because a clinic puts every device behind one NAT address; the
    pending bound is low because a real device authenticates within a round trip or two.
    A connection over either bound is let through its upgrade only to be refused with a
    reason (``refuse``); when even those reach ``max_pending`` for the address, the next one
    is dropped at once (``drop``), before any byte is read. Sans-I/O; the caller reports
    every change of state, and every count returns to zero when its connection ends, so the
    maps hold only addresses with live connections.
    """

    max_open: int = 256
    max_pending: int = 16
    _open: dict[str, int] = field(default_factory=dict)
    _pending: dict[str, int] = field(default_factory=dict)
    _refusing: dict[str, int] = field(default_factory=dict)

    def arrive(self, addr: str) -> tuple[Verdict, str]:
        """A new connection from ``addr``: admitted (counted open and pending), to be refused
        (counted as refusing until it ends), or to be dropped (not counted)."""
        why = ""
        if self._open.get(addr, 0) >= self.max_open:
            why = f"too many connections from your address (limit {self.max_open}); try again later"
        elif self._pending.get(addr, 0) >= self.max_pending:
            why = (
                f"too many connections from your address still authenticating "
                f"(limit {self.max_pending}); try again shortly"
            )
        if not why:
            _add(self._open, addr, 1)
            _add(self._pending, addr, 1)
            return "admit", ""
        if self._refusing.get(addr, 0) >= self.max_pending:
            return "drop", why
        _add(self._refusing, addr, 1)
        return "refuse", why

    def authenticated(self, addr: str) -> None:
        """An admitted connection proved who it is: it no longer counts as pending."""
        _add(self._pending, addr, -1)

    def leave(self, addr: str, verdict: Verdict, authenticated: bool) -> None:
        """A connection ended, whatever way; undo exactly what ``arrive`` counted."""
        if verdict == "admit":
            _add(self._open, addr, -1)
            if not authenticated:
                _add(self._pending, addr, -1)
        elif verdict == "refuse":
            _add(self._refusing, addr, -1)

    def counts(self, addr: str) -> tuple[int, int, int]:
        """(open, pending, refusing) for one address."""
        return self._open.get(addr, 0), self._pending.get(addr, 0), self._refusing.get(addr, 0)

    def __len__(self) -> int:
        return len(self._open.keys() | self._refusing.keys())


def _add(counts: dict[str, int], addr: str, delta: int) -> None:
    value = counts.get(addr, 0) + delta
    if value > 0:
        counts[addr] = value
    else:
        counts.pop(addr, None)

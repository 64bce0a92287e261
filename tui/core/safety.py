"""Safety numbers: what two members read to each other to know no one is in between.

Each member's devices have Ed25519 keys, registered at the relay. The relay hands them out,
so a relay that lied could put its own key in place of a doctor's; comparing a number made
from both members' keys (in person, or on a call where each knows the other's voice) rules
that out. The number is the same on both sides: 60 digits, 30 from each member's keys, in
the order of the members' names, shown as twelve groups of five.

Each half is iterated SHA-512 over a version, the member's name and their device keys
sorted (a member may have several devices: adding one changes the number, which is the
point). Iterating makes it costly to search for a key whose digits match a given half.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

VERSION = b"medcomm-safety-1"
ITERATIONS = 5200
KEY_LEN = 32


def keys_digest(keys: Iterable[bytes]) -> bytes:
    """A member's device keys as one value: order and repeats do not matter."""
    unique = sorted(set(keys))
    if not unique or any(len(k) != KEY_LEN for k in unique):
        raise ValueError("device keys are 32-byte Ed25519 public keys, at least one")
    return hashlib.sha256(b"".join(unique)).digest()


def _half(name: str, keys: Iterable[bytes]) -> str:
    unique = sorted(set(keys))
    keys_digest(unique)  # validates
    material = b"".join(unique)
    raw = name.encode()
    digest = hashlib.sha512(VERSION + len(raw).to_bytes(2, "big") + raw + material).digest()
    for _ in range(ITERATIONS):
        digest = hashlib.sha512(digest + material).digest()
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


def safety_number(me: str, my_keys: Iterable[bytes], them: str, their_keys: Iterable[bytes]) -> str:
    """60 digits, identical on both members' devices."""
    if me == them:
        raise ValueError("a safety number is between two members")
    halves = sorted([(me, _half(me, my_keys)), (them, _half(them, their_keys))])
    return halves[0][1] + halves[1][1]


def grouped(number: str, per_line: int = 6) -> str:
    """Twelve groups of five, two lines: easy to read aloud and compare."""
    groups = [number[i : i + 5] for i in range(0, len(number), 5)]
    return "\n".join(" ".join(groups[i : i + per_line]) for i in range(0, len(groups), per_line))

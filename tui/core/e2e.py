"""End-to-end encryption of consult messages: sealed bodies, sender keys and their delivery.

The relay is a courier: it routes on the envelope (consult, client id, kind) and must not be
able to read, change, move or replay a body. Each device keeps, per consult, a *sender key*
(32 random bytes, named by a random 4-byte key id) and seals every body it sends with it
(XChaCha20-Poly1305). The key reaches each member device in a ``key`` message: one
authenticated box (X25519 from the devices' Ed25519 keys) per recipient device. When a member
leaves, every remaining device starts a new key that the leaver never receives, so later
messages stay closed to them. A device that holds a message it cannot open asks for the key
with a ``keyreq`` message; any member device that holds it answers with a box.

Sealed body: ``0xE2 | key id (4) | ciphertext | tag (16)``: 21 bytes on top of the plaintext.
The nonce is not sent: it is the message's client id (16 random bytes, fixed across retries,
sealed once per device) followed by the key id, so each (key, nonce) pair is used once. The
associated data binds consult, kind, client id and sender: a body moved to another consult,
relabelled, or attributed to another member fails to open. A relay replay of the same body
under a new seq carries the same client id, which the store already holds (see ``LocalStore``).

Sans-I/O: bytes in, bytes out; libsodium is imported lazily (PyNaCl's bindings).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import msgpack

from medcomm.errors import Tampered, WireError

MAGIC = 0xE2
KEY_ID_LEN = 4
KEY_LEN = 32
TAG_LEN = 16
OVERHEAD = 1 + KEY_ID_LEN + TAG_LEN  # bytes a sealed body adds to its plaintext
_AD_PREFIX = b"medcomm/msg/1"
_BOX_PREFIX_LEN = 8  # recipient device key prefix naming each box in a bundle
_BOX_NONCE_LEN = 24
_BUNDLE_VERSION = 1
MAX_BOXES = 128  # boxes in one key message (~9 KB); more recipients go in several messages


@dataclass(frozen=True, slots=True)
class Identity:
    """This device: its user name and Ed25519 seed (the profile's), from which the X25519
    key that opens boxes is derived."""

    name: str
    seed: bytes

    @property
    def public(self) -> bytes:
        from nacl.signing import SigningKey

        return bytes(SigningKey(self.seed).verify_key)

    def box_secret(self) -> bytes:
        from nacl.bindings import crypto_sign_ed25519_sk_to_curve25519, crypto_sign_seed_keypair

        _, sk = crypto_sign_seed_keypair(self.seed)
        return crypto_sign_ed25519_sk_to_curve25519(sk)  # type: ignore[no-any-return]


def new_key() -> tuple[bytes, bytes]:
    """A fresh sender key and its id."""
    return secrets.token_bytes(KEY_ID_LEN), secrets.token_bytes(KEY_LEN)


def _ad(consult: str, kind: int, cid: bytes, sender: str) -> bytes:
    return b"\0".join((_AD_PREFIX, consult.encode(), bytes([kind]), cid, sender.encode()))


def _nonce(cid: bytes, key_id: bytes) -> bytes:
    return cid + key_id + b"\0" * (24 - len(cid) - len(key_id))


def is_sealed(body: bytes) -> bool:
    return len(body) >= OVERHEAD and body[0] == MAGIC


def key_id_of(body: bytes) -> bytes:
    if not is_sealed(body):
        raise Tampered("not a sealed body")
    return body[1 : 1 + KEY_ID_LEN]


def seal(key_id: bytes, key: bytes, consult: str, kind: int, cid: bytes, sender: str, plain: bytes) -> bytes:
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    ct = crypto_aead_xchacha20poly1305_ietf_encrypt(
        plain, _ad(consult, kind, cid, sender), _nonce(cid, key_id), key
    )
    return bytes([MAGIC]) + key_id + ct


def open_sealed(key: bytes, consult: str, kind: int, cid: bytes, sender: str, body: bytes) -> bytes:
    """The plaintext, or ``Tampered`` for anything that does not authenticate."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
    from nacl.exceptions import CryptoError

    key_id = key_id_of(body)
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(  # type: ignore[no-any-return]
            body[1 + KEY_ID_LEN :], _ad(consult, kind, cid, sender), _nonce(cid, key_id), key
        )
    except CryptoError:
        raise Tampered(f"message {cid.hex()} does not authenticate") from None


# --- key messages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedKey:
    """A sender key as a box delivered it: whose key (``owner``) and which device boxed it
    (``via``: the owner's device, or another member's answering a key request)."""

    owner: str
    key_id: bytes
    key: bytes
    via: bytes


def _x25519_public(ed_public: bytes) -> bytes:
    from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519

    return crypto_sign_ed25519_pk_to_curve25519(ed_public)  # type: ignore[no-any-return]


def bundle(
    me: Identity, consult: str, keys: list[SharedKey], recipients: list[bytes], *, name_own: bool = True
) -> list[bytes]:
    """Key message bodies giving ``keys`` (this consult's) to each recipient device (Ed25519
    public keys): one box per device, at most ``MAX_BOXES`` per message. ``name_own`` names
    the maker's own key id in the clear, for the relay's check that a key given out now was
    not in use before a member left; old keys handed on for history are not named."""
    from nacl.bindings import crypto_box

    secret = me.box_secret()
    payload = msgpack.packb([consult, [[k.owner, k.key_id, k.key] for k in keys]], use_bin_type=True)
    own = next((k.key_id for k in keys if k.owner == me.name), b"") if name_own else b""
    bodies = []
    for start in range(0, len(recipients), MAX_BOXES):
        nonce = secrets.token_bytes(_BOX_NONCE_LEN)
        boxes = [
            [device[:_BOX_PREFIX_LEN], crypto_box(payload, nonce, _x25519_public(device), secret)]
            for device in recipients[start : start + MAX_BOXES]
        ]
        bodies.append(msgpack.packb([_BUNDLE_VERSION, me.public, nonce, boxes, own], use_bin_type=True))
    return bodies


def bundle_own_key_id(body: bytes) -> bytes | None:
    """The id of its maker's own key that a key message gives out, if it does. The relay
    reads it to refuse keys given out before a member left (its ids are no secret: every
    sealed body names its key id)."""
    try:
        own = _parse_bundle(body)[3]
    except WireError:
        return None
    return own or None


def bundle_sender(body: bytes) -> bytes:
    """The device that made a key message (its boxes open only with that device's key)."""
    return _parse_bundle(body)[0]


def _parse_bundle(body: bytes) -> tuple[bytes, bytes, list[Any], bytes]:
    try:
        obj = msgpack.unpackb(body, raw=False, max_bin_len=len(body), max_array_len=MAX_BOXES + 4)
    except Exception as exc:
        raise WireError(f"bad key message: {exc.__class__.__name__}") from None
    ok = (
        isinstance(obj, list)
        and len(obj) == 5
        and obj[0] == _BUNDLE_VERSION
        and isinstance(obj[4], bytes)
        and len(obj[4]) in (0, KEY_ID_LEN)
        and isinstance(obj[1], bytes)
        and len(obj[1]) == 32
        and isinstance(obj[2], bytes)
        and len(obj[2]) == _BOX_NONCE_LEN
        and isinstance(obj[3], list)
    )
    if not ok:
        raise WireError("bad key message")
    return obj[1], obj[2], obj[3], obj[4]


def open_bundle(me: Identity, consult: str, body: bytes) -> list[SharedKey]:
    """The keys boxed for this device in a key message (empty when none is for it). A box for
    it that does not open, or names another consult, is ``Tampered``."""
    from nacl.bindings import crypto_box_open
    from nacl.exceptions import CryptoError

    via, nonce, boxes, _ = _parse_bundle(body)
    mine = me.public
    for entry in boxes:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == mine[:_BOX_PREFIX_LEN]):
            continue
        if not isinstance(entry[1], bytes):
            raise WireError("bad key message box")
        try:
            plain = crypto_box_open(entry[1], nonce, _x25519_public(via), me.box_secret())
        except CryptoError:
            continue  # a prefix collision with another device, or a forged box: not ours
        obj = msgpack.unpackb(plain, raw=False)
        if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == consult and isinstance(obj[1], list)):
            raise Tampered("a key box names another consult")
        out = []
        for item in obj[1]:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], bytes)
                and len(item[1]) == KEY_ID_LEN
                and isinstance(item[2], bytes)
                and len(item[2]) == KEY_LEN
            ):
                raise WireError("bad key in a key box")
            out.append(SharedKey(item[0], item[1], item[2], via))
        return out
    return []


# --- key requests -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """A device that holds messages it cannot open asks for their keys: (owner, key id) pairs.
    Names no secret; the answer is boxed for ``device`` alone."""

    device: bytes
    wanted: tuple[tuple[str, bytes], ...]


MAX_WANTED = 64


def encode_request(req: KeyRequest) -> bytes:
    return msgpack.packb([1, req.device, [[o, k] for o, k in req.wanted]], use_bin_type=True)


def decode_request(body: bytes) -> KeyRequest:
    try:
        obj = msgpack.unpackb(body, raw=False, max_array_len=MAX_WANTED + 3, max_bin_len=64)
    except Exception as exc:
        raise WireError(f"bad key request: {exc.__class__.__name__}") from None
    ok = (
        isinstance(obj, list)
        and len(obj) == 3
        and obj[0] == 1
        and isinstance(obj[1], bytes)
        and len(obj[1]) == 32
        and isinstance(obj[2], list)
        and len(obj[2]) <= MAX_WANTED
        and all(
            isinstance(w, list)
            and len(w) == 2
            and isinstance(w[0], str)
            and isinstance(w[1], bytes)
            and len(w[1]) == KEY_ID_LEN
            for w in obj[2]
        )
    )
    if not ok:
        raise WireError("bad key request")
    return KeyRequest(obj[1], tuple((w[0], w[1]) for w in obj[2]))


# --- call keys ---------------------------------------------------------------------------


def encode_call_key(call: str, key: bytes) -> bytes:
    """The body (sealed like any other) of a ``callkey`` message: the key of one member's
    voice stream in one call, fresh each time they join it."""
    return msgpack.packb([call, key], use_bin_type=True)


def decode_call_key(plain: bytes) -> tuple[str, bytes]:
    try:
        obj = msgpack.unpackb(plain, raw=False, max_bin_len=64, max_str_len=64)
    except Exception as exc:
        raise WireError(f"bad call key: {exc.__class__.__name__}") from None
    ok = (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], str)
        and isinstance(obj[1], bytes)
        and len(obj[1]) == KEY_LEN
    )
    if not ok:
        raise WireError("bad call key")
    return obj[0], obj[1]

"""Per-file encryption of blobs: libsodium's secretstream (XChaCha20-Poly1305), sans-I/O.

The relay stores an image's first view, manifest, tiles and original, and every voice note,
as content-addressed blobs. It must be able to address, resume and hand them out, never to
read them: each is sealed here under a key that only travels inside the message that names
it (a fresh random key per image or note; the message body is itself end-to-end encrypted).
The relay's SHA-256 is then the hash of the sealed bytes, so its content addressing, resume
and verification work on ciphertext as before.

Format (nothing else: the key lives in the message, the size in the blob's length)::

    header (24 bytes, random) · piece · piece · ... · last piece

Each piece is at most :data:`PIECE` (64 KiB) of plaintext plus a 17-byte tag (one byte of
encrypted tag + 16 of MAC); every piece but the last is full and tagged ``MESSAGE``, the last
(possibly empty: an empty file is one empty final piece) is tagged ``FINAL``. Piece borders
follow from the length alone, so :func:`open` needs no framing and checks, besides each MAC:
that the last piece carries ``FINAL`` (a blob cut at a piece border is refused, not taken
for a shorter file), that no piece before it does (bytes after the end are refused), and
secretstream's own nonce sequence refuses pieces swapped or moved. A wrong key fails the
first piece. Every failure is :class:`~medcomm.errors.Tampered`, never a part of the
plaintext.

Pieces keep memory flat for a 16 MiB original part and cost 17 bytes per 64 KiB (0.03 %):
a first view or a tile (one piece) costs 41 bytes, :func:`sealed_size` says exactly.

``nacl`` is imported inside the functions: the CLI's text paths never load libsodium.
"""

from __future__ import annotations

import secrets

from medcomm.errors import MedcommError, Tampered
from medcomm.limits import BLOBCRYPT, BlobCryptLimits

KEY_LEN = 32  # crypto_secretstream_xchacha20poly1305_KEYBYTES
HEADER_LEN = 24  # ..._HEADERBYTES
TAG_LEN = 17  # ..._ABYTES
PIECE = 64 * 1024  # plaintext bytes per piece: part of the format, not a tunable
_SEALED_PIECE = PIECE + TAG_LEN


def new_key() -> bytes:
    """A fresh random key for one image or one note."""
    return secrets.token_bytes(KEY_LEN)


def _pieces(n: int) -> int:
    return max(1, -(-n // PIECE))


def sealed_size(n: int) -> int:
    """Bytes of a sealed blob of ``n`` plaintext bytes (``n`` + 24 + 17 per piece)."""
    if n < 0:
        raise ValueError("a size is not negative")
    return HEADER_LEN + n + TAG_LEN * _pieces(n)


def plain_size(sealed: int) -> int | None:
    """The plaintext size of a sealed blob of ``sealed`` bytes, or None when no plaintext
    seals to that length (sizes are one-to-one: each piece count covers its own range)."""
    body = sealed - HEADER_LEN
    if body < TAG_LEN:
        return None
    pieces = -(-body // _SEALED_PIECE)
    n = body - TAG_LEN * pieces
    return n if n >= 0 and _pieces(n) == pieces else None


def fits(limit: int) -> int:
    """The largest plaintext whose sealed blob is at most ``limit`` bytes (a part of an
    original under the relay's blob limit, a first view under its byte budget)."""
    if limit < HEADER_LEN + TAG_LEN:
        raise ValueError(f"nothing seals into {limit} bytes")
    body = limit - HEADER_LEN
    pieces = -(-body // _SEALED_PIECE)
    n = min(body - TAG_LEN * pieces, PIECE * pieces)
    if n <= PIECE * (pieces - 1):  # the last piece's tag does not fit: one piece fewer, all full
        n = PIECE * (pieces - 1)
    return max(0, n)


def seal(key: bytes, data: bytes, limits: BlobCryptLimits = BLOBCRYPT) -> bytes:
    """``data`` sealed under ``key`` with a fresh random header (sealing the same bytes twice
    gives two different blobs)."""
    from nacl import bindings as na

    if type(key) is not bytes or len(key) != KEY_LEN:
        raise MedcommError("a blob key is 32 bytes")
    size = sealed_size(len(data))
    if size > limits.max_sealed:
        raise MedcommError(f"a sealed blob of {size} bytes is over the {limits.max_sealed}-byte limit")
    state = na.crypto_secretstream_xchacha20poly1305_state()
    out = [na.crypto_secretstream_xchacha20poly1305_init_push(state, key)]
    view = memoryview(data)
    last = _pieces(len(data)) - 1
    for i in range(last + 1):
        tag = (
            na.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            if i == last
            else na.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
        )
        piece = bytes(view[i * PIECE : (i + 1) * PIECE])
        out.append(na.crypto_secretstream_xchacha20poly1305_push(state, piece, None, tag))
    return b"".join(out)


def open(key: bytes, data: bytes, limits: BlobCryptLimits = BLOBCRYPT) -> bytes:  # noqa: A001
    """The plaintext of a sealed blob; Tampered for a wrong key, any changed byte, a blob cut
    short (even at a piece border), bytes after its end, or pieces out of order."""
    from nacl import bindings as na
    from nacl.exceptions import CryptoError

    if type(key) is not bytes or len(key) != KEY_LEN:
        raise Tampered("a blob key that is not 32 bytes opens nothing")
    if len(data) > limits.max_sealed:
        raise Tampered(f"a sealed blob of {len(data)} bytes is over the {limits.max_sealed}-byte limit")
    if plain_size(len(data)) is None:
        raise Tampered("a sealed blob of a length no file seals to (cut or lengthened)")
    data = bytes(data)
    state = na.crypto_secretstream_xchacha20poly1305_state()
    final = na.crypto_secretstream_xchacha20poly1305_TAG_FINAL
    out = []
    try:
        na.crypto_secretstream_xchacha20poly1305_init_pull(state, data[:HEADER_LEN], key)
        pos = HEADER_LEN
        while pos < len(data):
            piece = data[pos : pos + _SEALED_PIECE]
            pos += len(piece)
            plain, tag = na.crypto_secretstream_xchacha20poly1305_pull(state, piece, None)
            if (tag == final) != (pos == len(data)):  # FINAL exactly on the last piece
                raise Tampered("a sealed blob cut short, or with bytes after its end")
            out.append(plain)
    except CryptoError:
        raise Tampered("a sealed blob does not open under its key") from None
    if not out:
        raise Tampered("a sealed blob with no pieces")
    return b"".join(out)


def unseal(key: bytes | None, data: bytes, limits: BlobCryptLimits = BLOBCRYPT) -> bytes:
    """A blob's plaintext as its message names it: opened under the message's key, or as
    stored when the message carries none (messages from before blobs were sealed; their
    body is authenticated, and the blob by its SHA-256)."""
    return data if key is None else open(key, data, limits)

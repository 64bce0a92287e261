"""The one error tree of medcomm.

Every error carries data (not only a message) so that the CLI can turn it into a one-line
message plus an exit code, and the TUI into a notification, without parsing strings::

    MedcommError                      exit 1
    ├── UsageError                    exit 2   bad input from the user (arguments, files)
    ├── ProfileError                  exit 3   no profile yet, or a broken one
    ├── WireError                     exit 1   a frame that does not decode or validate
    │   └── LimitExceeded             exit 1   a size or count over an explicit limit
    ├── RemoteError                   exit 1   the relay refused a request (code, reason)
    │   ├── AuthError                 exit 77  bad enrolment code, unknown device, bad signature
    │   └── AccessDenied              exit 77  not a member of that consult
    ├── RelayKeyChanged               exit 77  the relay's TLS key is not the one pinned at login
    ├── Tampered                      exit 65  ciphertext that fails authentication: forged, cut or replayed
    ├── NotFound                      exit 4   unknown consult, user or message
    ├── LinkDown                      exit 75  no link within the time allowed (EX_TEMPFAIL)
    └── VoiceUnavailable              exit 69  libopus, PortAudio or a sound device missing

75 is sysexits' EX_TEMPFAIL: scripts retry later, and the outbox keeps what was queued.
"""

from __future__ import annotations


class MedcommError(Exception):
    """Base of every error medcomm raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, **data: object) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message


class UsageError(MedcommError):
    """The user asked for something impossible; nothing was sent."""

    exit_code = 2


class ProfileError(MedcommError):
    """There is no usable profile on this device (run ``medcomm login``)."""

    exit_code = 3


class WireError(MedcommError):
    """A frame could not be decoded or broke the protocol's shape."""


class LimitExceeded(WireError):
    """A size, length or rate over one of the documented limits."""


class RemoteError(MedcommError):
    """The relay answered a request with an error code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"relay refused: {reason} ({code})", code=code, reason=reason)
        self.code = code
        self.reason = reason


class AuthError(RemoteError):
    """Authentication or enrolment was refused."""

    exit_code = 77


class AccessDenied(RemoteError):
    """The user is not a member of the consult asked for."""

    exit_code = 77


class RelayKeyChanged(MedcommError):
    """The relay presented a TLS key other than the one pinned at login: someone may be in
    the middle, so nothing (not even the signed proof) is sent. Only a new login re-pins."""

    exit_code = 77


class Tampered(MedcommError):
    """Encrypted data that does not authenticate under its key: changed, truncated, replayed
    or put in another place by someone on the path. It is dropped, never shown in part. 65 is
    sysexits' EX_DATAERR: retrying the same bytes cannot help."""

    exit_code = 65


class NotFound(MedcommError):
    """A consult, user or message that does not exist (here or at the relay)."""

    exit_code = 4


class LinkDown(MedcommError):
    """No link to the relay within the time allowed; queued work stays queued."""

    exit_code = 75


class VoiceUnavailable(MedcommError):
    """Voice needs a C library or a device this machine does not have.

    The message says exactly what to install or which device was asked for, because the
    person reading it is a nurse at a shared PC, not the one who set it up. 69 is sysexits'
    EX_UNAVAILABLE: text consults keep working.
    """

    exit_code = 69


_REMOTE_BY_CODE: dict[str, type[RemoteError]] = {
    "auth": AuthError,
    "denied": AccessDenied,
}


def remote_error(code: str, reason: str) -> MedcommError:
    """Turn an error frame from the relay into the matching local exception."""
    if code == "not_found":
        return NotFound(reason, code=code)
    return _REMOTE_BY_CODE.get(code, RemoteError)(code, reason)

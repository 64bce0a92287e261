"""Explicit limits, each with a documented default, shared by the relay and the client.

Bad links make every queue a liability: a queue without a bound turns a stall into minutes
of stale traffic or into memory growth on the relay. Each number here is a deliberate
choice; the README's "Limits" table mirrors this file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WireLimits:
    """Sizes that every decoder enforces before trusting a frame."""

    max_frame: int = 64 * 1024  # one WebSocket message; chat text is far below this
    max_text: int = 16 * 1024  # bytes of one chat body (about 8 pages of text)
    max_body: int = 16 * 1024 + 64  # a body on the wire: max_text sealed (+21 B, see core.e2e)
    max_title: int = 200  # characters in a consult title
    max_name: int = 64  # characters in a user name
    max_members: int = 32  # members of one consult
    max_cursors: int = 1000  # consults in one resume request
    max_batch: int = 500  # messages sent per resume page before a "more" mark


@dataclass(frozen=True)
class RelayLimits:
    """What one connection or address may cost the relay."""

    auth_deadline: float = 30.0  # seconds to authenticate after connecting (slow links)
    ping_interval: float = 15.0  # keepalive ping period
    ping_timeout: float = 30.0  # no pong this long after a ping: dead (noticed <= 45 s)
    max_queue: int = 64  # incoming frames buffered per connection (websockets max_queue)
    send_queue: int = 2000  # outgoing frames queued per connection before it is closed
    rate_frames: float = 50.0  # sustained frames per second per connection
    rate_burst: float = 200.0  # burst allowance of the rate limit above
    login_failures: int = 5  # failed logins per address before each answer is delayed
    login_delay_max: float = 8.0  # longest delay (seconds) for a failing address
    enrol_code_ttl: float = 7 * 24 * 3600.0  # seconds an enrolment code stays valid
    max_connections: int = 10000  # concurrent connections before new ones are refused
    # A clinic puts every device (and every desk, CLI and call) behind one NAT address: 256
    # leaves room for a large site; the pending bound stops one address holding many
    # connections that never authenticate (each would wait out auth_deadline).
    max_per_address: int = 256  # concurrent connections from one remote address (1013 beyond)
    max_pending_per_address: int = 16  # of those, not yet authenticated (1013 beyond)
    enrol_attempts: int = 10  # enrolments (Register) per address per enrol_window, good or bad
    enrol_window: float = 60.0  # seconds
    max_unstored: int = 256  # sends and blob requests read from one connection, unanswered: reading pauses
    early_auth_window: float = 300.0  # seconds an upgrade-request proof may be off the relay's clock
    early_auth_nonces: int = 100_000  # used early-proof nonces remembered (full: challenge instead)
    voice_queue: int = 6  # voice frames waiting per connection (drop-oldest; ~0.4-0.7 s of audio)
    voice_backlog: int = 2048  # bytes unsent in the transport above which a voice frame is dropped


@dataclass(frozen=True)
class ClientLimits:
    """How hard a client tries and how much it keeps in flight."""

    connect_timeout: float = 20.0  # one connection attempt, TCP + WebSocket + auth
    backoff_first: float = 0.5  # first retry delay after a failure
    backoff_max: float = 8.0  # longest retry delay
    send_timeout: float = 30.0  # default `medcomm send --timeout`
    ping_interval: float = 15.0
    ping_timeout: float = 30.0
    write_limit: int = 4096  # websockets write buffer high-water mark: keep queues ours
    outbox_inflight: int = 64  # unacknowledged messages in flight on one connection
    bulk_pause_max: float = 3600.0  # longest a blob transfer waits for a call to end


def client_limits(env: dict[str, str]) -> ClientLimits:
    """Client limits with keepalive overridable from the environment, for odd links
    (``MEDCOMM_PING_INTERVAL``, ``MEDCOMM_PING_TIMEOUT``, seconds)."""
    base = ClientLimits()
    try:
        interval = float(env.get("MEDCOMM_PING_INTERVAL", base.ping_interval))
        timeout = float(env.get("MEDCOMM_PING_TIMEOUT", base.ping_timeout))
    except ValueError:
        return base
    if interval <= 0 or timeout <= 0:
        return base
    return ClientLimits(ping_interval=interval, ping_timeout=timeout)


WIRE = WireLimits()
RELAY = RelayLimits()
CLIENT = ClientLimits()


@dataclass(frozen=True)
class BlobCryptLimits:
    """What a sealed blob (an image's first view, manifest, tile or original part, a voice
    note: see ``medcomm.core.filecrypt``) may weigh. Every sealed thing is one relay blob, so
    the relay's own bound is the natural one: opening refuses anything longer before it does
    any work, so a hostile blob cannot make a device allocate past it."""

    max_sealed: int = 16 * 1024 * 1024  # the relay's BlobLimits.max_size, header and tags included


BLOBCRYPT = BlobCryptLimits()

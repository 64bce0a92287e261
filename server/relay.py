"""The relay: one WebSocket per client, authentication, requests, the message log, fan-out.

Ordering and durability rules that the clients rely on:

* A ``Send`` is stored in a transaction with other sends of the same loop turn (group
  commit, one fsync) and acknowledged with ``Stored`` only after that commit.
* Per consult the relay assigns ``seq`` at store time; it is the only order.
* A ``Sub`` is answered from the log (pages of ``WIRE.max_batch``) and closed by
  ``CaughtUp``; only after the last page does the connection receive live messages for that
  consult. Log reads and fan-out both run on the event loop thread without awaiting in
  between, so nothing stored can fall between the page and the live stream.
* Every outgoing frame of a connection passes through one bounded queue; a client that
  cannot keep up is disconnected (it resumes from its cursor), never allowed to grow memory.
  Incoming sends waiting for the store are bounded too: past the limit, reading pauses.
* Connections are counted per remote address from TCP accept (``AddressGate``): a clinic's
  devices share one NAT address, so the bound on open connections is high, and the bound on
  connections not yet authenticated is low; over either, a 1013 close says why.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import secrets
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from medcomm.adapters.sockopts import delay_acks, send_together
from medcomm.core import wire
from medcomm.core.wire import (
    CaughtUp,
    Challenge,
    Err,
    Ok,
    Ready,
    Receipt,
    Receipts,
    Register,
    Reject,
    Request,
    Send,
    Stored,
    Sub,
    Welcome,
)
from medcomm.errors import (
    AccessDenied,
    AuthError,
    LimitExceeded,
    MedcommError,
    NotFound,
    RemoteError,
    UsageError,
    WireError,
)
from medcomm.limits import RELAY, WIRE, RelayLimits
from medcomm.server.audit import AuditLog
from medcomm.server.auth import (
    AddressGate,
    AttemptWindow,
    FailureThrottle,
    ReplayCache,
    Verdict,
    new_nonce,
    verify,
)
from medcomm.server.calls import Call, CallRegistry
from medcomm.server.store import RelayStore, StoredMessage

log = logging.getLogger("medcomm.relay")

CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
MAX_BAD_FRAMES = 10
MAX_STRAY_VOICE = 200  # unroutable voice frames in a row (a call's last frames are a handful)


def reason(exc: MedcommError) -> str:
    return exc.reason if isinstance(exc, RemoteError) else str(exc)


def error_code(exc: MedcommError) -> str:
    if isinstance(exc, (AuthError, AccessDenied)):
        return exc.code
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, LimitExceeded):
        return "limit"
    if isinstance(exc, (UsageError, WireError)):
        return "bad_request"
    return "error"


@dataclass(eq=False)
class Conn:
    """One authenticated client connection and its bounded outgoing queue."""

    ws: object
    user: str
    role: str
    addr: str
    out: asyncio.Queue[bytes | tuple[int, str]]
    live: set[str] = field(default_factory=set)  # consults caught up: receive live messages
    tokens: float = 0.0
    refill_at: float = 0.0
    bad_frames: int = 0
    closing: bool = False
    early_sub: Sub | None = None  # resume request that came with the upgrade request
    unstored: int = 0  # sends and blob requests read and not yet answered (bounded: reading pauses)
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set while unstored is under its limit
    # Voice goes ahead of everything else and is never queued long: drop-oldest, bounded.
    voice: deque[bytes] = field(default_factory=lambda: deque(maxlen=RELAY.voice_queue))
    voice_dropped: int = 0
    stray_voice: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def close_after(self, code: int, reason: str) -> None:
        """Close once everything queued before (e.g. the error that explains why) is sent."""
        if self.closing:
            return
        self.closing = True
        try:
            self.out.put_nowait((code, reason))
            self.wake.set()
        except asyncio.QueueFull:
            asyncio.ensure_future(self.ws.close(code, reason))  # type: ignore[attr-defined]

    def enqueue_voice(self, data: bytes) -> None:
        if self.closing:
            return
        if len(self.voice) == self.voice.maxlen:
            self.voice_dropped += 1  # the oldest goes: stale audio is worth nothing
        self.voice.append(data)
        self.wake.set()

    def enqueue(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.out.put_nowait(data)
            self.wake.set()
        except asyncio.QueueFull:
            self.closing = True
            log.info("closing slow client user=%s addr=%s (send queue full)", self.user, self.addr)
            asyncio.ensure_future(
                self.ws.close(CLOSE_TRY_LATER, "too slow: resume from your cursor")  # type: ignore[attr-defined]
            )


class Relay:
    """The relay's logic around a store; ``handler`` is the websockets connection handler."""

    def __init__(self, store: RelayStore, limits: RelayLimits = RELAY) -> None:
        from medcomm.server.blobs import BlobStore

        self.store = store
        self.blobs = BlobStore(store.data_dir)
        self.limits = limits
        self.conns: dict[str, set[Conn]] = defaultdict(set)
        self.throttle = FailureThrottle(limits.login_failures, limits.login_delay_max)
        self.enrolments = AttemptWindow(limits.enrol_attempts, limits.enrol_window)
        self.gate = AddressGate(limits.max_per_address, limits.max_pending_per_address)
        self.replays = ReplayCache(limits.early_auth_window, limits.early_auth_nonces)
        self.calls = CallRegistry()
        self.audit = AuditLog(store.data_dir)
        self._audit_handle: asyncio.TimerHandle | None = None
        self._call_timer: asyncio.TimerHandle | None = None
        self._record_timer: asyncio.TimerHandle | None = None  # saves live calls' records
        self._pending: list[tuple[Conn, Send]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._writing = False  # one batch at a time: seqs follow arrival order
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-writer")
        self._recover_calls()
        # blob I/O (an fsync per chunk, a hash of up to 16 MiB at completion): one at a time, in
        # arrival order (a client's puts must land in offset order), off the loop that forwards voice
        self.blob_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-blobs")
        self._members: dict[str, list[str]] = {}  # cache; membership changes only via _request
        self.connections = 0

    def close(self) -> None:
        """After the server closed: finish what the threads are writing, then close the files."""
        if self._audit_handle is not None:
            self._audit_handle.cancel()  # audit.close() below writes what it would have
        if self._record_timer is not None:
            self._record_timer.cancel()
        # a call still live at shutdown: "interrupted" at the next start
        self._save_calls(list(self.calls.calls.values()), arm=False)
        self.writer.shutdown(wait=True)  # a batch being committed finishes first
        self.blob_thread.shutdown(wait=True)  # so does a chunk being written
        self.audit.close()  # what is still buffered goes to disk
        self.blobs.close()

    # --- connection lifecycle -------------------------------------------------------------

    async def handler(self, ws: object) -> None:
        addr = _peer(ws)
        admission: Admission | None = getattr(ws, "admission", None)  # counted at TCP accept
        if admission is not None and admission.verdict != "admit":
            log.info("refused addr=%s (per-address limit)", addr)
            await ws.close(CLOSE_TRY_LATER, admission.why)  # type: ignore[attr-defined]
            return
        if self.connections >= self.limits.max_connections:
            await ws.close(CLOSE_TRY_LATER, "relay full, try again later")  # type: ignore[attr-defined]
            return
        self.connections += 1
        try:
            conn = await self._authenticate(ws, addr)
            if conn is None:
                return
            if admission is not None:
                admission.authenticated(self.gate)
            await self._serve(conn)
        except Exception as exc:  # ConnectionClosed and friends end the handler quietly
            if not _is_closed(exc):
                log.exception("connection error addr=%s", addr)
        finally:
            self.connections -= 1

    async def _authenticate(self, ws: object, addr: str) -> Conn | None:
        """An early proof in the upgrade request, or else a challenge to sign."""
        early_sub: Sub | None = None
        try:
            early = self._early_identity(ws)
            if early is not None:
                (user, role), early_sub = early
            else:
                nonce = new_nonce()
                await ws.send(wire.encode(Challenge(nonce, int(time.time() * 1000))))  # type: ignore[attr-defined]
                try:
                    data = await asyncio.wait_for(ws.recv(), self.limits.auth_deadline)  # type: ignore[attr-defined]
                except TimeoutError:
                    await ws.close(CLOSE_POLICY, "authentication deadline passed")  # type: ignore[attr-defined]
                    return None
                frame = wire.decode(data, frozenset({wire.T.AUTH, wire.T.REGISTER}))
                if isinstance(frame, Register):  # checked before any signature or database work
                    wait = self.enrolments.attempt(addr, time.monotonic())
                    if wait > 0:  # not a failure: nothing was tried, so no failure delay either
                        log.info("enrolment refused addr=%s (rate)", addr)
                        why = f"too many attempts, wait {math.ceil(wait)} s"
                        await ws.send(wire.encode(Err(0, "auth", why)))  # type: ignore[attr-defined]
                        await ws.close(CLOSE_TRY_LATER, "too many enrolment attempts")  # type: ignore[attr-defined]
                        return None
                user, role = self._check_identity(frame, nonce)
        except MedcommError as exc:
            now = time.monotonic()
            delay = self.throttle.delay(addr, now)
            self.throttle.failed(addr, now)
            log.info("authentication failed addr=%s (%s)", addr, error_code(exc))
            if delay:
                await asyncio.sleep(delay)
            await ws.send(wire.encode(Err(0, error_code(exc), reason(exc))))  # type: ignore[attr-defined]
            await ws.close(CLOSE_POLICY, "authentication failed")  # type: ignore[attr-defined]
            return None
        self.throttle.succeeded(addr)
        conn = Conn(ws, user, role, addr, asyncio.Queue(self.limits.send_queue))
        conn.tokens = self.limits.rate_burst
        conn.refill_at = time.monotonic()
        conn.early_sub = early_sub
        conn.room.set()
        await ws.send(wire.encode(Welcome(user, role, int(time.time() * 1000))))  # type: ignore[attr-defined]
        log.info("authenticated user=%s addr=%s early=%s", user, addr, early is not None)
        return conn

    def _check_identity(self, frame: wire.Frame, nonce: bytes) -> tuple[str, str]:
        if isinstance(frame, Register):
            if not verify(frame.pubkey, nonce, frame.sig, b"register"):
                raise AuthError("auth", "bad signature")
            role = self.store.register(frame.name, frame.code, frame.pubkey)
            return frame.name, role
        assert isinstance(frame, wire.Auth)
        found = self.store.device_user(frame.pubkey)
        if found is None:
            raise AuthError("auth", "unknown device: run medcomm login")
        if not verify(frame.pubkey, nonce, frame.sig, b"auth"):
            raise AuthError("auth", "bad signature")
        return found

    def _early_identity(self, ws: object) -> tuple[tuple[str, str], Sub | None] | None:
        """Who signed the upgrade request, and the resume request beside it; None when
        there is no early proof or it is stale or already used (then: a challenge)."""
        request = getattr(ws, "request", None)
        headers = getattr(request, "headers", None)
        value = headers.get(wire.EARLY_AUTH_HEADER) if headers is not None else None
        if not value:
            return None
        sub_value = headers.get(wire.EARLY_SUB_HEADER, "")  # type: ignore[union-attr]
        proof = wire.from_header(value, frozenset({wire.T.EARLY}))
        assert isinstance(proof, wire.EarlyAuth)
        sub = wire.from_header(sub_value, frozenset({wire.T.SUB})) if sub_value else None
        found = self.store.device_user(proof.pubkey)
        if found is None:
            raise AuthError("auth", "unknown device: run medcomm login")
        challenge = wire.early_challenge(proof.time, proof.nonce, sub_value)
        if not verify(proof.pubkey, challenge, proof.sig, b"early"):
            raise AuthError("auth", "bad signature")
        now = time.time()
        if not self.replays.fresh(proof.time / 1000, now) or not self.replays.admit(proof.nonce, now):
            return None
        assert sub is None or isinstance(sub, Sub)
        return found, sub

    async def _serve(self, conn: Conn) -> None:
        self.conns[conn.user].add(conn)
        writer = asyncio.ensure_future(self._writer(conn))
        if conn.early_sub is not None:
            self._on_sub(conn, conn.early_sub)
        for call in list(self.calls.calls.values()):  # a call ringing (or on) while we were away
            if conn.user in call.members and call.state != "ended":
                conn.enqueue(self._call_frame(call, call.caller))
        try:
            async for data in conn.ws:  # type: ignore[attr-defined]
                if type(data) is bytes and data and data[0] < 0x80:  # voice plane: never paced
                    delay_acks(conn.ws.transport)  # type: ignore[attr-defined]  # ACK rides on voice out
                    dropped = self.calls.dropped
                    for target, out in self.calls.route(conn, data, time.monotonic()):
                        target.enqueue_voice(out)  # type: ignore[attr-defined]
                    conn.stray_voice = conn.stray_voice + 1 if self.calls.dropped > dropped else 0
                    if conn.stray_voice >= MAX_STRAY_VOICE:  # not a late frame or two: garbage
                        await self._close_policy(conn, writer, "voice frames outside a call")
                        break
                    continue
                await self._pace(conn)
                try:
                    frame = wire.decode(data, wire.CLIENT_TYPES)
                except WireError as exc:
                    conn.bad_frames += 1
                    conn.enqueue(wire.encode(Err(0, error_code(exc), reason(exc))))
                    if conn.bad_frames >= MAX_BAD_FRAMES:
                        await self._close_policy(conn, writer, "too many bad frames")
                        break
                    continue
                self._dispatch(conn, frame)
                if not conn.room.is_set():  # the store is behind: stop reading (TCP pushes back)
                    await conn.room.wait()
        finally:
            self._announce(self.calls.detached(conn, time.monotonic()))
            self.conns[conn.user].discard(conn)
            if not self.conns[conn.user]:
                del self.conns[conn.user]
            conn.closing = True
            writer.cancel()

    async def _close_policy(self, conn: Conn, writer: asyncio.Future[None], why: str) -> None:
        """Close with 1008 after what is queued (the errors that explain it) went out."""
        conn.close_after(CLOSE_POLICY, why)
        try:
            await asyncio.wait_for(asyncio.shield(writer), 10)
        except (TimeoutError, Exception):
            await conn.ws.close(CLOSE_POLICY, why)  # type: ignore[attr-defined]

    async def _writer(self, conn: Conn) -> None:
        """One writer per connection: voice first, then the reliable queue in order."""
        while True:
            if conn.voice:
                transport = getattr(conn.ws, "transport", None)
                if transport is not None and transport.get_write_buffer_size() > self.limits.voice_backlog:
                    conn.voice.popleft()
                    conn.voice_dropped += 1  # the link is behind: this audio would play late
                    continue
                # all that is ready in one segment: a speaker's packet and the feedback that
                # rode with it arrive together, and leave together; later frames are checked again
                await send_together(conn.ws, [conn.voice.popleft() for _ in range(len(conn.voice))])
                continue
            if not conn.out.empty():
                data = conn.out.get_nowait()
            else:
                conn.wake.clear()
                await conn.wake.wait()
                continue
            if isinstance(data, tuple):
                await conn.ws.close(*data)  # type: ignore[attr-defined]
                return
            await conn.ws.send(data)  # type: ignore[attr-defined]

    async def _pace(self, conn: Conn) -> None:
        """Token bucket per connection: a flood is slowed (TCP pushes back), not fatal."""
        now = time.monotonic()
        rate = self.limits.rate_frames
        conn.tokens = min(self.limits.rate_burst, conn.tokens + (now - conn.refill_at) * rate)
        conn.refill_at = now
        conn.tokens -= 1.0
        if conn.tokens < 0:
            await asyncio.sleep(-conn.tokens / rate)

    # --- frames ---------------------------------------------------------------------------

    def _dispatch(self, conn: Conn, frame: wire.Frame) -> None:
        if isinstance(frame, Send):
            self._on_send(conn, frame)
        elif isinstance(frame, Sub):
            self._on_sub(conn, frame)
        elif isinstance(frame, Receipt):
            self._on_receipt(conn, frame)
        elif isinstance(frame, Request):
            self._on_request(conn, frame)
        else:
            conn.enqueue(wire.encode(Err(0, "bad_request", "already authenticated")))

    def _on_send(self, conn: Conn, frame: Send) -> None:
        if frame.kind == wire.KINDS["system"]:
            conn.enqueue(wire.encode(Reject(frame.cid, "bad_request", "system messages are the relay's")))
            return
        try:
            self.store.check_member(frame.consult, conn.user)
        except MedcommError as exc:
            conn.enqueue(wire.encode(Reject(frame.cid, error_code(exc), reason(exc))))
            return
        self._pending.append((conn, frame))
        self._hold(conn)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _hold(self, conn: Conn) -> None:
        """One more send or blob request read and not yet answered; past the limit this
        connection is not read until one is (TCP pushes back on the client)."""
        conn.unstored += 1
        if conn.unstored >= self.limits.max_unstored:
            conn.room.clear()

    def _release(self, conn: Conn) -> None:
        conn.unstored -= 1
        if conn.unstored < self.limits.max_unstored:
            conn.room.set()

    def _flush(self) -> None:
        """Group commit: every send that arrived while the previous batch was being written
        goes into the next transaction (one fsync), written on the writer thread so the loop
        keeps reading and forwarding meanwhile; acks and fan-out follow the commit."""
        self._flush_handle = None
        if self._writing or not self._pending:
            return
        self._writing = True
        batch, self._pending = self._pending, []
        asyncio.ensure_future(self._write(batch))

    async def _write(self, batch: list[tuple[Conn, Send]]) -> None:
        loop = asyncio.get_running_loop()
        items = [(f.consult, f.cid, c.user, f.kind, f.body) for c, f in batch]
        try:
            results = await loop.run_in_executor(self.writer, self.store.store_batch_writer, items)
        except Exception:
            log.exception("storing a batch of %d messages failed", len(batch))
            for conn, _ in batch:  # nothing acknowledged: the senders resend on reconnect
                conn.close_after(1011, "relay could not store; resend")
        else:
            for (conn, frame), (msg, new) in zip(batch, results, strict=True):
                if msg is None:  # sealed with a key in use before a member left
                    why = "a member left: seal with a new key"
                    conn.enqueue(wire.encode(Reject(frame.cid, "rekey", why)))
                    continue
                conn.enqueue(wire.encode(Stored(frame.cid, msg.consult, msg.seq, msg.time)))
                if new:
                    self._fanout(msg, exclude=conn)
        finally:
            for conn, _ in batch:  # answered (or closing): the sender may send more
                self._release(conn)
            self._writing = False
            if self._pending and self._flush_handle is None:
                self._flush_handle = loop.call_soon(self._flush)

    def _fanout(self, msg: StoredMessage, exclude: Conn | None = None, wake: bool = False) -> None:
        """Push a stored message to the caught-up connections of every member.

        ``wake`` also pushes it to members' connections that are not caught up on the
        consult (a member just added): their gap detection then asks for the backlog.
        """
        data = wire.encode(msg)
        for member in self.members(msg.consult):
            for conn in self.conns.get(member, ()):
                if conn is not exclude and (wake or msg.consult in conn.live):
                    conn.enqueue(data)

    def members(self, consult: str) -> list[str]:
        found = self._members.get(consult)
        if found is None:
            if len(self._members) > 100_000:
                self._members.clear()
            found = self.store.members(consult)
            if found:  # no members: no such consult (yet); caching that would hide it once opened
                self._members[consult] = found
        return found

    def _on_sub(self, conn: Conn, frame: Sub) -> None:
        """Answer a resume from the log, bounded in frames (messages, marks, marks of caught
        up consults all count), so a large resume never overflows the send queue: a full
        resume continues where ``Ready.next`` says; a named consult past the budget is
        answered "more"."""
        budget = WIRE.max_batch
        cursors = dict(frame.cursors)
        if frame.full:
            for consult in self.store.consult_ids_of(conn.user):
                cursors.setdefault(consult, 0)
        order = sorted(c for c in cursors if c >= frame.start)
        next_start = ""
        for consult in order:
            cursor = cursors[consult]
            if budget <= 0:
                if frame.full:
                    next_start = consult
                    break
                conn.live.discard(consult)
                conn.enqueue(wire.encode(CaughtUp(consult, cursor, True)))
                continue
            try:
                self.store.check_member(consult, conn.user)
            except AccessDenied as exc:
                if not self.store.was_removed(consult, conn.user):
                    conn.live.discard(consult)
                    conn.enqueue(wire.encode(Err(0, error_code(exc), reason(exc))))
                    budget -= 1
                    continue
                conn.live.discard(consult)  # removed: what they had stays theirs, nothing more comes
                conn.enqueue(wire.encode(CaughtUp(consult, cursor, False)))
                budget -= 1
                continue
            except MedcommError as exc:
                conn.live.discard(consult)
                conn.enqueue(wire.encode(Err(0, error_code(exc), reason(exc))))
                budget -= 1
                continue
            last = self.store.last_seq(consult)
            msgs = self.store.messages_after(consult, cursor, budget)
            if msgs:
                self._audit(conn.user, "read", consult, after=cursor, count=len(msgs))
            budget -= len(msgs) + 1
            for m in msgs:
                conn.enqueue(wire.encode(m))
            upto = msgs[-1].seq if msgs else min(cursor, last)
            more = upto < last
            if more:
                conn.live.discard(consult)
            else:
                conn.live.add(consult)
                marks = [mk for mk in self.store.marks(consult) if mk[1] or mk[2]]
                budget -= len(marks)
                for member, delivered, read in marks:
                    conn.enqueue(wire.encode(Receipts(consult, member, delivered, read)))
            conn.enqueue(wire.encode(CaughtUp(consult, upto, more)))
        if frame.full:
            conn.enqueue(wire.encode(Ready(len(order), next_start)))

    def _on_receipt(self, conn: Conn, frame: Receipt) -> None:
        if not self.store.is_member(frame.consult, conn.user):
            conn.enqueue(wire.encode(Err(0, "denied", f"not a member of consult {frame.consult}")))
            return
        changed = self.store.mark(frame.consult, conn.user, frame.seq, frame.state)
        if changed is None:
            return
        data = wire.encode(Receipts(frame.consult, conn.user, *changed))
        for member in self.members(frame.consult):
            for other in self.conns.get(member, ()):
                if frame.consult in other.live:
                    other.enqueue(data)

    def _on_request(self, conn: Conn, frame: Request) -> None:
        if frame.op.startswith("blob."):  # voice notes and images: chunked, resumable
            self._hold(conn)
            asyncio.ensure_future(self._blob_request(conn, frame))
            return
        try:
            result = self._request(conn, frame.op, frame.args)
        except MedcommError as exc:
            conn.enqueue(wire.encode(Err(frame.rid, error_code(exc), reason(exc))))
            return
        self._answer(conn, frame, result)

    async def _blob_request(self, conn: Conn, frame: Request) -> None:
        """A blob request on the blob thread, answered when it is done; reading this
        connection pauses while too many are unanswered, as for sends."""
        op, args = frame.op, frame.args
        try:
            mine = frozenset(self.store.consult_ids_of(conn.user))  # on the loop: the store's connection
            work = functools.partial(self._blob_work, conn.user, op, args, mine)
            result, fetched = await asyncio.get_running_loop().run_in_executor(self.blob_thread, work)
        except MedcommError as exc:
            conn.enqueue(wire.encode(Err(frame.rid, error_code(exc), reason(exc))))
            return
        except Exception:  # the blob store turns disk and database errors into MedcommError
            log.exception("blob %s failed user=%s", op, conn.user)
            conn.enqueue(wire.encode(Err(frame.rid, "error", "the relay could not answer; try again")))
            return
        finally:
            self._release(conn)
        if fetched is not None:  # one entry per fetch, not per chunk
            consult, sha = fetched
            self._audit(conn.user, "fetch", consult, blob=sha[:8].hex(), size=result["size"])  # type: ignore[index]
        self._answer(conn, frame, result)

    def _blob_work(
        self, user: str, op: str, args: dict[str, object], mine: frozenset[str]
    ) -> tuple[object, tuple[str, bytes] | None]:
        """On the blob thread: the answer, and for a fetch's first chunk the consult and blob
        to audit."""
        result = self.blobs.request(user, op, args, mine.__contains__)
        if op == "blob.get" and args.get("offset") == 0:
            sha = args["sha"]
            assert isinstance(sha, bytes)  # checked by the blob store
            return result, (self.blobs.consult_of(sha, mine.__contains__), sha)
        return result, None

    def _answer(self, conn: Conn, frame: Request, result: object) -> None:
        data = wire.encode(Ok(frame.rid, result))
        if len(data) > WIRE.max_frame:  # the client would close the link on it (1009), then ask again
            log.warning("answer to %s over the frame limit: %d bytes user=%s", frame.op, len(data), conn.user)
            why = f"the answer to {frame.op} is over the {WIRE.max_frame}-byte frame limit"
            conn.enqueue(wire.encode(Err(frame.rid, "limit", why)))
            return
        conn.enqueue(data)

    def _request(self, conn: Conn, op: str, args: dict[str, object]) -> object:
        if op == "whoami":
            return {"name": conn.user, "role": conn.role}
        if op == "list":
            return self.store.consults_of(conn.user)
        if op == "users":  # the directory a clinic picks consult members from
            return [{"name": n, "role": r} for n, r in self.store.users()]
        if op == "keys":  # device keys, for safety numbers (public keys: not secret, but bounded)
            names = args.get("names")
            if not isinstance(names, list) or len(names) > WIRE.max_members * 8:
                raise UsageError(f"'names' must be a list of at most {WIRE.max_members * 8} names")
            return self.store.device_keys([wire.user_name(n) for n in names])
        if op == "open":
            title = args.get("title")  # "": devices send it sealed in the consult instead
            if not isinstance(title, str) or len(title) > WIRE.max_title:
                raise UsageError(f"title must be text of at most {WIRE.max_title} characters")
            title = title.strip()
            others = args.get("with", [])
            if not isinstance(others, list) or len(others) >= WIRE.max_members:
                raise UsageError(f"'with' must be a list of at most {WIRE.max_members - 1} names")
            names = [wire.user_name(n) for n in others]
            consult = self.store.open_consult(title, conn.user, names)
            members = self.store.members(consult)
            self._audit(conn.user, "open", consult, members=len(members))
            self._system(consult, conn.user, {"event": "open", "title": title, "members": members})
            return {"id": consult, "members": members}
        if op == "add":
            consult = wire.consult_id(args.get("consult"))
            name = wire.user_name(args.get("name"))
            if self.store.add_member(consult, conn.user, name):
                self._members.pop(consult, None)
                self._audit(conn.user, "add", consult, member=name)
                self._system(consult, conn.user, {"event": "add", "member": name})
            return {"id": consult, "members": self.store.members(consult)}
        if op == "members":  # a device told to re-key learns who is in before giving out the key
            consult = wire.consult_id(args.get("consult"))
            self.store.check_member(consult, conn.user)
            return {"id": consult, "members": self.store.members(consult)}
        if op == "remove":  # the members' devices then seal with new keys the removed never get
            consult = wire.consult_id(args.get("consult"))
            name = wire.user_name(args.get("name"))
            if self.store.remove_member(consult, conn.user, name):
                self._members.pop(consult, None)
                self._audit(conn.user, "remove", consult, member=name)
                self._system(consult, conn.user, {"event": "remove", "member": name})
            return {"id": consult, "members": self.store.members(consult)}
        if op in ("call", "answer", "decline", "hangup"):
            return self._call_request(conn, op, args)
        if op == "audit.export":  # a device exported a consult's record: it says so here
            consult = wire.consult_id(args.get("consult"))
            self.store.check_member(consult, conn.user)
            fmt = _arg_text(args, "format", 16)
            self._audit(conn.user, "export", consult, format=fmt)
            return {}
        raise UsageError(f"unknown request {op!r}")

    # --- calls ------------------------------------------------------------------------------

    def _call_request(self, conn: Conn, op: str, args: dict[str, object]) -> object:
        now = time.monotonic()
        if op == "call":
            consult = wire.consult_id(args.get("consult"))
            if conn.user not in self.members(consult):
                raise AccessDenied("denied", "not a member of this consult")
            members = self.members(consult)
            call = self.calls.start(consult, conn.user, conn, members, now, int(time.time() * 1000))
        else:
            call_id = wire.call_id(args.get("call"))
            known = self.calls.calls.get(call_id)
            if known is not None and conn.user not in known.members:
                raise AccessDenied("denied", "not a member of this consult")
            if op == "answer":
                call = self.calls.answer(call_id, conn.user, conn, now)
            elif op == "decline":
                call = self.calls.decline(call_id, conn.user, now)
            else:
                call = self.calls.hangup(call_id, conn.user, now)
        self._audit(conn.user, "call", call.consult, op=op, call=call.id, state=call.state)
        self._announce([call], conn.user)
        return {"call": call.id, "state": call.state, "slots": call.slots()}

    def _announce(self, calls: list[Call], by: str = "") -> None:
        """Tell every member of each changed call's consult, wherever they are; an ended
        call goes into the consult's history."""
        for call in calls:
            frame = self._call_frame(call, by or call.caller)
            for member in call.members:
                for conn in self.conns.get(member, ()):
                    conn.enqueue(frame)
            if call.state == "ended":
                self._write_call_entry(call)
                log.info("call ended call=%s consult=%s outcome=%s", call.id, call.consult, call.outcome)
        self._save_calls(calls)
        self.calls.forget_ended()
        self._schedule_call_timer()

    # --- the record of live calls (core of crash safety for calls) --------------------------

    def _save_calls(self, calls: Iterable[Call], *, arm: bool = True) -> None:
        """What the history would say of each of ``calls`` still live were the relay to die
        now, saved on the writer thread (after any batch before it); an ended call's record
        goes with its history entry (``_write_call_entry``). While calls are live, every
        record_every all of them are saved again (their length and bytes grow)."""
        now = time.monotonic()
        rows = [
            (c.id, c.consult, c.caller, msgpack.packb(c.summary(now, "interrupted"), use_bin_type=True))
            for c in calls
            if c.state != "ended"
        ]
        if rows:
            self.writer.submit(self.store.save_live_calls, rows).add_done_callback(_log_failure)
        if arm and self._record_timer is None and any(c.state != "ended" for c in self.calls.calls.values()):
            loop = asyncio.get_running_loop()
            self._record_timer = loop.call_later(self.calls.limits.record_every, self._record_tick)

    def _write_call_entry(self, call: Call) -> None:
        """An ended call's history entry, written on the writer thread (its fsync on the loop
        held every other call's voice for as long), then fanned out. Its crash record is
        dropped in the same job, after the entry: if the write fails, the record stays and the
        next start puts the call in the history as interrupted."""
        body = msgpack.packb(call.summary(), use_bin_type=True)
        entry = (call.consult, call_cid(call.id), call.caller, wire.KINDS["call"], body)

        def write() -> StoredMessage | None:
            ((msg, _new),) = self.store.store_batch_writer([entry])
            self.store.forget_live_call(call.id, writer=True)
            return msg

        done = asyncio.get_running_loop().run_in_executor(self.writer, write)
        done.add_done_callback(functools.partial(self._call_entry_written, call.id))

    def _call_entry_written(self, call_id: str, done: asyncio.Future[StoredMessage | None]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            log.error("writing the history entry of call %s failed: %s", call_id, type(exc).__name__)
            return
        msg = done.result()
        if msg is not None:  # the relay's own entries carry no sender key: never refused
            self._fanout(msg, wake=True)

    def _record_tick(self) -> None:
        self._record_timer = None
        self._save_calls(list(self.calls.calls.values()))

    def _recover_calls(self) -> None:
        """Calls the relay was carrying when it last stopped without ending them: each goes
        into its consult's history as "interrupted", its length as of the last save."""
        for call_id, consult, caller, body in self.store.interrupted_calls():
            try:
                self._log_event(consult, caller, wire.KINDS["call"], body, call_cid(call_id))
            except MedcommError as exc:  # the consult is gone: nothing to write it into
                log.warning("interrupted call %s not recorded: %s", call_id, type(exc).__name__)
            self.audit.record(caller, "call", consult, op="interrupted", call=call_id, state="ended")
            self.store.forget_live_call(call_id)
            log.info("call interrupted by a relay stop call=%s consult=%s", call_id, consult)

    def _call_frame(self, call: Call, by: str) -> bytes:
        return wire.encode(
            wire.CallState(call.id, call.consult, call.state, by, call.slots(), call.created_ms, call.outcome)
        )

    def _schedule_call_timer(self) -> None:
        if self._call_timer is not None:
            self._call_timer.cancel()
            self._call_timer = None
        deadline = self.calls.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - time.monotonic())
            self._call_timer = loop.call_later(delay, self._call_tick)

    def _call_tick(self) -> None:
        self._call_timer = None
        self._announce(self.calls.tick(time.monotonic()))

    def _audit(self, actor: str, action: str, consult: str, **detail: object) -> None:
        """Chain an audit entry now; the writer thread puts it on disk within ``flush_delay``."""
        self.audit.record(actor, action, consult, **detail)
        if self._audit_handle is None:
            loop = asyncio.get_running_loop()
            self._audit_handle = loop.call_later(self.audit.flush_delay, self._flush_audit)

    def _flush_audit(self) -> None:
        self._audit_handle = None
        self.writer.submit(self.audit.flush)

    def _system(self, consult: str, actor: str, event: dict[str, object]) -> None:
        """Record a membership event in the consult's log, so it syncs like any message.

        A new consult's first event is its whole history, so every member connection is live
        on it from here; a member added later gets the event as a wake-up, sees a gap and
        asks for the backlog, and goes live when caught up.
        """
        msg = self._log_event(consult, actor, wire.KINDS["system"], msgpack.packb(event, use_bin_type=True))
        if msg.seq == 1:
            for member in self.members(consult):
                for conn in self.conns.get(member, ()):
                    conn.live.add(consult)
        self._fanout(msg, wake=True)

    def _log_event(
        self, consult: str, actor: str, kind: int, body: bytes, cid: bytes | None = None
    ) -> StoredMessage:
        """An entry the relay itself writes into a consult's log (membership, calls). A call's
        ``cid`` comes from its id, so a record written twice (a crash between the entry and
        forgetting the live record) is stored once."""
        entry = (consult, cid or secrets.token_bytes(wire.CID_LEN), actor, kind, body)
        ((msg, _new),) = self.store.store_batch([entry])
        assert msg is not None  # the relay's own events carry no sender key
        return msg


def call_cid(call_id: str) -> bytes:
    """The history entry's id of a call: one per call, however often it is written."""
    return hashlib.blake2b(call_id.encode(), digest_size=wire.CID_LEN, person=b"medcomm-call").digest()


def _log_failure(future: object) -> None:
    exc = future.exception()  # type: ignore[attr-defined]
    if exc is not None:
        log.error("saving live calls' records failed: %s", type(exc).__name__)


@dataclass(eq=False)
class Admission:
    """What the address gate decided for one TCP connection, kept on the connection so that
    the count it took is given back exactly once, however the connection ends."""

    addr: str
    verdict: Verdict
    why: str
    is_authenticated: bool = False
    released: bool = False

    def authenticated(self, gate: AddressGate) -> None:
        if not self.is_authenticated and not self.released:
            self.is_authenticated = True
            gate.authenticated(self.addr)

    def release(self, gate: AddressGate) -> None:
        if not self.released:
            self.released = True
            gate.leave(self.addr, self.verdict, self.is_authenticated)


def _gated_connection(gate: AddressGate) -> type:
    """A websockets server connection counted per remote address from TCP accept (so that
    connections still in their upgrade count as pending too) until the socket is gone.

    One over the address's limits still gets its upgrade, then a 1013 close with the reason;
    past that many, the next is dropped before any byte is read: a WebSocket close code
    needs a finished upgrade, and a slow upgrade is exactly what is being bounded.
    """
    from websockets.asyncio.server import ServerConnection

    class GatedConnection(ServerConnection):
        admission: Admission

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            addr = str(peer[0]) if peer else "?"
            verdict, why = gate.arrive(addr)
            self.admission = Admission(addr, verdict, why)
            super().connection_made(transport)
            if verdict == "drop":
                log.info("dropped addr=%s at accept (per-address limit)", addr)
                transport.abort()  # type: ignore[attr-defined]

        def connection_lost(self, exc: Exception | None) -> None:
            self.admission.release(gate)
            super().connection_lost(exc)

    return GatedConnection


def _arg_text(args: dict[str, object], key: str, limit: int) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise UsageError(f"{key} must be non-empty text of at most {limit} characters")
    return value.strip()


def _peer(ws: object) -> str:
    addr = getattr(ws, "remote_address", None)
    return str(addr[0]) if addr else "?"


def _is_closed(exc: BaseException) -> bool:
    from websockets.exceptions import ConnectionClosed

    return isinstance(exc, (ConnectionClosed, ConnectionError, asyncio.CancelledError))


async def run_relay(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    limits: RelayLimits = RELAY,
    ready: asyncio.Future[int] | None = None,
    stop: asyncio.Event | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve until ``stop`` is set; announce the bound port through ``ready``."""
    from websockets.asyncio.server import serve

    store = RelayStore(data_dir)
    relay = Relay(store, limits)
    stop = stop or asyncio.Event()
    try:
        server = await serve(
            relay.handler,
            host,
            port,
            compression=None,
            max_size=WIRE.max_frame,
            max_queue=limits.max_queue,
            write_limit=16 * 1024,
            ping_interval=limits.ping_interval,
            ping_timeout=limits.ping_timeout,
            open_timeout=limits.auth_deadline,
            close_timeout=5,
            server_header=None,
            ssl=tls,
            create_connection=_gated_connection(relay.gate),
        )
        bound = server.sockets[0].getsockname()[1]
        if ready is not None and not ready.done():
            ready.set_result(bound)
        await stop.wait()
        server.close()  # open connections get 1001 "going away" at once
        try:  # a peer stuck mid-handshake must not hold the shutdown for open_timeout
            await asyncio.wait_for(server.wait_closed(), 2)
        except TimeoutError:
            log.info("shutdown: gave up waiting for connections still opening")
    finally:
        relay.close()
        store.close()

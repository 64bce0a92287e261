"""`scripts/bench tui`: what the consult desk writes to a terminal, and how quickly it answers.

Why this exists: the desk is used over SSH on links where every byte the TUI writes to the
terminal competes with the chat itself. The product targets: an idle desk writes nothing;
one incoming message costs <= 2 KB of terminal output (consult open or consult list shown);
one typed character <= 200 bytes; the first screen is up <= 1.5 s after the command; a
consult of 10,000 messages opens in <= 1 s because only its newest page is loaded. Those
only mean something for the real program in a real terminal, so this runs ``medcomm`` (the
CLI with no command, exactly as a user starts it) in a pseudo-terminal at 80x24, against a
real relay, and counts every byte that arrives on the pty master. The same is measured for
the app with Textual's defaults, to show what the tuning (no mouse reporting, no
animations) buys: the mouse and PageDown rows are where it shows.

What runs (every wait is bounded; the relay and every TUI are killed in ``finally``):

1. setup: ``medcomm serve`` on 127.0.0.1, clinic ``amina`` and doctor ``dr.chen`` logged in
   under their own MEDCOMM_HOME, consult ``bench-chat`` opened by amina with dr.chen with 31
   messages (more than a screen), and consult ``bench-10k`` filled with N messages by the
   library in-process (several amina devices in parallel, because the relay paces each
   connection at 50 frames/s); then ``medcomm sync`` as dr.chen so his device holds them
   all. The relay's and both people's data are then copied aside and put back before each
   variant, so all four start from the very same state.
2. for each app (tuned = what ``medcomm`` runs; Textual defaults = ``MEDCOMM_TEXTUAL_DEFAULTS=1``,
   mouse reporting and animations on) and each colour setup (16 colours: ``TERM=linux
   TEXTUAL_COLOR_SYSTEM=standard``; 256 colours: ``TERM=xterm-256color``), as dr.chen:
   first screen time (spawn -> consult list text on the terminal), idle bytes on the list,
   one incoming message on the list (``medcomm send`` as amina, another process), open
   bench-chat (Enter), idle bytes there, one incoming message there, 20 typed characters one
   at a time, Esc, Down, open bench-10k (Enter -> its newest message on screen), Ctrl+O,
   PageUp until two older pages were on screen, PageDown x3, Ctrl+Q. Mouse moves are sent
   (on the list) only to an app that turned mouse reporting on, as a terminal would.

Byte counts are what the pty master reads, i.e. after the kernel's tty output processing,
which is what a terminal (or sshd) would be sent. The benchmark answers no terminal queries
(e.g. DECRQM for synchronized output), as a dumb terminal would; a terminal that answers
them may get a few more bytes per frame. The log of unexpected output (idle writes, in the
table's footer and ``--json``) keeps escape sequences and replaces text by its length.

Exit status: 0 when the tuned app meets every target in both colour setups, 1 otherwise; the
Textual-defaults columns are there for comparison and do not affect it.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import fcntl
import json
import os
import re
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from bisect import bisect_left
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.procs import MEDCOMM, Relay, medcomm

ROWS, COLS = 24, 80
CHAT_TITLE = "bench-chat"
BIG_TITLE = "bench-10k"
NEWEST_TOKEN = "ZQNEWESTZQ"  # only in the big consult's last message, past the list's 58 chars
FILL_DEVICES = 10  # amina devices filling the big consult in parallel (relay paces each one)

KEY_ENTER, KEY_ESC, KEY_DOWN = b"\r", b"\x1b", b"\x1b[B"
KEY_CTRL_O, KEY_PAGE_UP, KEY_PAGE_DOWN, KEY_CTRL_Q = b"\x0f", b"\x1b[5~", b"\x1b[6~", b"\x11"

VARIANTS: list[tuple[str, str]] = [("tuned", "16"), ("tuned", "256"), ("defaults", "16"), ("defaults", "256")]

TARGETS = {
    "first_screen_s": 1.5,
    "idle_list_bytes_per_min": 0,
    "idle_consult_bytes_per_min": 0,
    "incoming_open_bytes": 2048,
    "incoming_list_bytes": 2048,
    "typed_char_bytes_median": 200,
    "big_open_s": 1.0,
}

_ESCAPE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    rb"|\x1bP[^\x1b]*\x1b\\"  # DCS
    rb"|\x1b[ -/]*[0-~]"  # other escapes (charset, keypad, ...)
    rb"|[\x00-\x1a\x1c-\x1f\x7f]"  # C0 controls except ESC
)
_SEQ = re.compile(rb"#(\d+) ")


def escapes_only(data: bytes) -> str:
    """The chunk with every run of text replaced by its length: enough to see *what kind*
    of output an unexpected write is (cursor moves, colours, mode switches) at a glance."""
    out: list[str] = []
    pos = 0
    for m in _ESCAPE.finditer(data):
        if m.start() > pos:
            out.append(f"<{len(data[pos : m.start()])}t>")
        out.append(m.group().decode("latin-1").encode("unicode_escape").decode())
        pos = m.end()
    if pos < len(data):
        out.append(f"<{len(data) - pos}t>")
    return "".join(out)


# --- the pseudo-terminal -------------------------------------------------------------------


_TOKEN = re.compile(
    r"\x1b\[([0-?]*)[ -/]*([@-~])"  # CSI: params, final
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    r"|\x1bP[^\x1b]*\x1b\\"  # DCS
    r"|\x1b(?![\[\]P])[ -/]*[0-~]"  # other escapes
    r"|([\r\n\x08])"  # cursor controls
    r"|[\x00-\x1f\x7f]"  # other controls: ignored
    r"|([^\x00-\x1f\x7f]+)"  # text
)


class ScreenModel:
    """Just enough of a terminal to know which characters are on screen: Textual places
    every line with CUP (``ESC[row;colH``) and writes its text; colours are ignored, wide
    characters are taken as one cell (the desk draws none in the rows read here)."""

    def __init__(self, rows: int = ROWS, cols: int = COLS) -> None:
        self.rows, self.cols = rows, cols
        self.cells = [[" "] * cols for _ in range(rows)]
        self.y = self.x = 0
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._pending = ""

    def feed(self, data: bytes) -> None:
        text = self._pending + self._decode(data)
        self._pending = ""
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.group(0) == "\x1b":  # a lone ESC: a sequence cut by the chunk end
                if len(text) - pos < 256:
                    self._pending = text[pos:]
                    return
                pos += 1  # far from the end: not a cut sequence, just skip the ESC
                continue
            if m.group(2) in ("H", "f"):
                row, _, col = (m.group(1) or "").partition(";")
                self.y = min(self.rows - 1, max(0, int(row or 1) - 1))
                self.x = min(self.cols, max(0, int(col or 1) - 1))
            elif m.group(2) == "J" and m.group(1) == "2":
                self.cells = [[" "] * self.cols for _ in range(self.rows)]
            elif m.group(3) == "\r":
                self.x = 0
            elif m.group(3) == "\n":
                self.y = min(self.rows - 1, self.y + 1)
            elif m.group(3) == "\x08":
                self.x = max(0, self.x - 1)
            elif m.group(4):
                for ch in m.group(4):
                    if self.x < self.cols:
                        self.cells[self.y][self.x] = ch
                    self.x += 1
            pos = m.end()

    def lines(self) -> list[str]:
        return ["".join(row) for row in self.cells]

    def top_seq(self) -> int | None:
        """The seq of the topmost message row on screen (``#1234 12:00 ...``)."""
        for line in self.lines():
            m = re.search(r"#(\d+) \d\d:\d\d ", line)
            if m:
                return int(m.group(1))
        return None


class Term:
    """One program in a pty; a thread reads the master and timestamps every chunk.

    Reading continuously matters: a pty whose master is not read fills its buffer and
    blocks the program, which would make it look quieter than it is.
    """

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = ROWS, cols: int = COLS) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.times: list[float] = []
        self.chunks: list[bytes] = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self.started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,  # its own session: our ^C does not reach it, and vice versa
                close_fds=True,
            )
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.master], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave fd is closed (the program exited)
                break
            if not data:
                break
            now = time.monotonic()
            with self.cond:
                self.times.append(now)
                self.chunks.append(data)
                self.cond.notify_all()

    # --- what was written -------------------------------------------------------------------

    @property
    def last_write(self) -> float:
        with self.cond:
            return self.times[-1] if self.times else self.started

    def between(self, t0: float, t1: float = float("inf")) -> list[tuple[float, bytes]]:
        """Chunks read at t0 <= time < t1."""
        with self.cond:
            i = bisect_left(self.times, t0)
            j = bisect_left(self.times, t1)
            return list(zip(self.times[i:j], self.chunks[i:j], strict=True))

    def count(self, t0: float, t1: float = float("inf")) -> int:
        return sum(len(c) for _, c in self.between(t0, t1))

    def total(self) -> int:
        with self.cond:
            return sum(len(c) for c in self.chunks)

    def find(self, pattern: bytes | re.Pattern[bytes], since: float, timeout: float) -> float | None:
        """Time of the chunk that completes the first match written since ``since``; None if
        nothing matched within ``timeout`` (or the program exited)."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            chunks = self.between(since)
            buf = b"".join(c for _, c in chunks)
            m = rx.search(buf)
            if m:
                end, acc = m.end(), 0
                for t, c in chunks:
                    acc += len(c)
                    if acc >= end:
                        return t
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                return None
            self._wait_more(len(chunks), since, min(remaining, 0.5))

    def _wait_more(self, seen: int, since: float, timeout: float) -> None:
        """Sleep until a chunk beyond the ``seen`` ones written since ``since`` arrives."""
        with self.cond:
            start = bisect_left(self.times, since)
            self.cond.wait_for(lambda: len(self.chunks) - start > seen, timeout)

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait until nothing was written for ``quiet`` seconds, counted from the later of
        the last write and this call (so a call right after a key waits for the answer to
        it); False if that did not happen within ``timeout`` or the program exited."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            now = time.monotonic()
            gap = now - max(self.last_write, start)
            if gap >= quiet:
                return True
            if now >= deadline or self.proc.poll() is not None:
                return False
            time.sleep(min(quiet - gap, max(0.0, deadline - now)) + 0.001)

    def key(self, data: bytes) -> float:
        """Write keys to the terminal; returns when they were written."""
        t = time.monotonic()
        os.write(self.master, data)
        return t

    def rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def screen(self) -> ScreenModel:
        """What the terminal shows now (everything written so far, fed once)."""
        if not hasattr(self, "_screen"):
            self._screen, self._fed = ScreenModel(), 0
        with self.cond:
            new = self.chunks[self._fed :]
            self._fed = len(self.chunks)
        for chunk in new:
            self._screen.feed(chunk)
        return self._screen

    def screen_text(self, tail: int = 3000) -> str:
        """The last output with escape sequences dropped, for error messages."""
        with self.cond:
            data = b"".join(self.chunks)[-tail:]
        return _ESCAPE.sub(b" ", data).decode("utf-8", "replace")

    def close(self, quit_keys: bytes | None = KEY_CTRL_Q) -> int | None:
        """Quit politely (Ctrl+Q), then SIGTERM, then SIGKILL; returns the exit code."""
        code: int | None = None
        try:
            if quit_keys and self.proc.poll() is None:
                try:
                    self.key(quit_keys)
                except OSError:
                    pass
                try:
                    code = self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                code = None
        finally:
            self._stop.set()
            self._reader.join(2)
            os.close(self.master)
        return code


# --- setup -----------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    relay: Relay
    amina: Path = field(default_factory=Path)
    chen: Path = field(default_factory=Path)
    chat: str = ""
    big: str = ""
    big_messages: int = 0
    big_last_seq: int = 0
    setup_s: float = 0.0

    def _swap(self, src: Path, dst: Path) -> None:
        """Copy relay, amina and dr.chen from src to dst with the relay stopped (SQLite files
        and their WAL are then consistent), and start the relay again on the same port, so
        the profiles' relay URL stays valid."""
        port = self.relay.port
        self.relay.stop()
        for name in ("relay", "amina", "dr.chen"):
            shutil.rmtree(dst / name, ignore_errors=True)
            shutil.copytree(src / name, dst / name)
        self.relay = Relay(self.root / "relay", port=port).start()

    def snapshot(self) -> None:
        """Keep the state after setup, so that every variant starts from the very same one
        (same consults, same messages, same marks): a fair side-by-side comparison."""
        self._swap(self.root, self.root / "snapshot")

    def restore(self) -> None:
        self._swap(self.root / "snapshot", self.root)


def _login(relay: Relay, name: str, role: str, home: Path) -> None:
    code = relay.enroll(name, role)
    out = medcomm("login", f"ws://127.0.0.1:{relay.port}", name, code, home=home, timeout=60)
    if out.returncode:
        raise RuntimeError(f"login {name} failed: {out.stderr.strip()}")


def _checked(out: subprocess.CompletedProcess[str], what: str) -> str:
    if out.returncode:
        raise RuntimeError(f"{what} failed: {out.stderr.strip()}")
    return out.stdout.strip()


async def _send_all(home: Path, consult: str, texts: list[str]) -> None:
    """Queue texts from one device in-process and wait until the relay stored them all."""
    from medcomm.session.service import Session

    async with Session.open(home=home, subscribe=False) as s:
        for text in texts:
            await s.queue_text(consult, text)
        await s.flush(600)


async def _fill(homes: list[Path], consult: str, n: int) -> None:
    """n - 1 filler messages from several amina devices at once, then the newest one.

    In-process and without subscriptions: one session per device queues its share into its
    outbox and waits until the relay has stored all of it.
    """
    texts = [f"m{i:05d} filler line for the scroll test" for i in range(1, n)]
    k = len(homes)
    await asyncio.gather(*(_send_all(h, consult, texts[i::k]) for i, h in enumerate(homes)))
    await _send_all(homes[0], consult, ["newest " + "." * 60 + f" {NEWEST_TOKEN}"])


def _last_seq(home: Path, consult: str) -> int:
    from medcomm.session.service import Session

    async def main() -> int:
        async with Session.open(home=home, connect=False) as s:
            page = s.page(consult, None, 1)
            return int(page[-1].seq or 0) if page else 0

    return asyncio.run(main())


def setup(root: Path, n: int) -> World:
    """The relay, both people, both consults; dr.chen's device synced, so the desk starts
    from a full local store (what a doctor who was online yesterday has)."""
    t = time.monotonic()
    relay = Relay(root / "relay").start()
    w = World(root, relay, root / "amina", root / "dr.chen", big_messages=n)
    try:
        fillers = [root / f"amina-fill-{i}" for i in range(1, FILL_DEVICES)]
        jobs = [(relay, "amina", "clinic", w.amina), (relay, "dr.chen", "doctor", w.chen)]
        jobs += [(relay, "amina", "clinic", h) for h in fillers]
        with ThreadPoolExecutor(4) as pool:  # enrolment is a write to the relay's SQLite: few at once
            list(pool.map(lambda j: _login(*j), jobs))
        w.chat = _checked(
            medcomm("consult", "open", CHAT_TITLE, "--with", "dr.chen", home=w.amina), "consult open"
        )
        w.big = _checked(
            medcomm("consult", "open", BIG_TITLE, "--with", "dr.chen", home=w.amina), "consult open"
        )
        # bench-chat holds more than a screenful, as a consult under way does: a new message
        # then scrolls the view, which is the common (and the costly) case
        asyncio.run(_send_all(w.amina, w.chat, [f"earlier message {i} from the clinic" for i in range(24)]))
        asyncio.run(_send_all(w.chen, w.chat, [f"earlier reply {i} from the doctor" for i in range(6)]))
        asyncio.run(_fill([w.amina, *fillers], w.big, n))
        # bench-chat gets the newest activity, so it is the list's top (highlighted) row
        _checked(medcomm("send", w.chat, "hello from the clinic", home=w.amina), "send")
        out = medcomm("sync", "--timeout", "300", home=w.chen, timeout=400)
        _checked(out, "sync as dr.chen")
        w.big_last_seq = _last_seq(w.chen, w.big)
        if w.big_last_seq < n:
            raise RuntimeError(f"dr.chen holds {w.big_last_seq} messages of {BIG_TITLE}, expected >= {n}")
    except BaseException:
        relay.stop()
        raise
    w.setup_s = time.monotonic() - t
    return w


# --- one app in one colour setup -------------------------------------------------------------


def tui_env(home: Path, app: str, colors: str) -> dict[str, str]:
    """A clean terminal environment: nothing inherited that changes Textual's or Rich's
    choices (COLORTERM=truecolor, NO_COLOR, COLUMNS/LINES, TEXTUAL_*), then the variant's."""
    drop = {"COLUMNS", "LINES", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TERM_PROGRAM", "TMUX", "STY"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("TEXTUAL", "MEDCOMM_"))}
    env["MEDCOMM_HOME"] = str(home)
    if "LC_ALL" in env and "utf" not in env["LC_ALL"].lower():
        del env["LC_ALL"]
    if "utf" not in env.get("LC_ALL", env.get("LANG", "")).lower():
        env["LANG"] = "C.UTF-8"  # box drawing and the status dots need UTF-8
    if app == "defaults":
        env["MEDCOMM_TEXTUAL_DEFAULTS"] = "1"
    if colors == "16":
        env["TERM"] = "linux"
        env["TEXTUAL_COLOR_SYSTEM"] = "standard"
    else:
        env["TERM"] = "xterm-256color"
    return env


def first_screen(term: Term) -> dict[str, Any]:
    """Spawn -> consult list on screen, and -> the first 300 ms without output after it."""
    shown = term.find(CHAT_TITLE.encode(), term.started, 30)
    if shown is None:
        raise RuntimeError(f"no consult list within 30 s; the terminal shows:\n{term.screen_text()}")
    term.wait_quiet(0.3, 10)
    settled = term.last_write
    return {
        "list_s": round(shown - term.started, 3),
        "settled_s": round(settled - term.started, 3),
        "bytes": term.count(term.started, settled + 1e-9),
    }


def idle(term: Term, seconds: float) -> dict[str, Any]:
    """Bytes written while nothing happens, after the screen has been quiet for 2 s."""
    quiet = term.wait_quiet(2.0, 30)
    t0 = time.monotonic()
    time.sleep(seconds)
    chunks = term.between(t0, t0 + seconds)
    n = sum(len(c) for _, c in chunks)
    return {
        "seconds": seconds,
        "bytes": n,
        "bytes_per_min": round(n * 60 / seconds),
        "quiet_before": quiet,
        "writes": [
            {"t": round(t - t0, 3), "n": len(c), "esc": escapes_only(c)[:400]} for t, c in chunks[:30]
        ],
    }


def incoming(term: Term, w: World, token: str) -> dict[str, Any]:
    """One `medcomm send` from amina; bytes the desk writes from the send's start until 2 s
    after it exited (the relay stored it, so dr.chen's link has it within a round trip)."""
    quiet = term.wait_quiet(1.0, 15)
    t0 = time.monotonic()
    out = medcomm("send", w.chat, token, home=w.amina, timeout=60)
    t1 = time.monotonic()
    seen = term.find(token.encode(), t0, 5)
    time.sleep(max(0.0, t1 + 2.0 - time.monotonic()))
    chunks = term.between(t0, t1 + 2.0)
    return {
        "bytes": sum(len(c) for _, c in chunks),
        "writes": len(chunks),
        "sent_ok": out.returncode == 0,
        "shown": seen is not None,
        "shown_after_s": round(seen - t0, 3) if seen else None,
        "quiet_before": quiet,
        "esc": [f"+{t - t0:.3f}s {len(c)} B {escapes_only(c)[:600]}" for t, c in chunks[:8]],
    }


def typing(term: Term, text: str) -> dict[str, Any]:
    """One key at a time, each after the screen went quiet: bytes per key and echo latency."""
    per_key, latency = [], []
    for ch in text:
        term.wait_quiet(0.25, 5)
        t = term.key(ch.encode())
        term.wait_quiet(0.25, 5)
        chunks = term.between(t)
        per_key.append(sum(len(c) for _, c in chunks))
        if chunks:
            latency.append(chunks[0][0] - t)
    return {
        "keys": len(text),
        "bytes_median": statistics.median(per_key),
        "bytes_max": max(per_key),
        "bytes_min": min(per_key),
        "echo_ms_median": round(statistics.median(latency) * 1000, 1) if latency else None,
        "per_key": per_key,
    }


def open_consult(term: Term, title: str, done: bytes, timeout: float = 20) -> dict[str, Any]:
    """Enter on the highlighted list row; time until ``done`` is on screen, then until quiet."""
    term.wait_quiet(0.5, 10)
    rss0 = term.rss_kib()
    t = term.key(KEY_ENTER)
    shown = term.find(done, t, timeout)
    titled = term.find(f"\u00b7 {title} \u00b7".encode(), t, 2 if shown else 0.1)
    term.wait_quiet(0.3, 10)
    rss1 = term.rss_kib()
    return {
        "open_s": round(shown - t, 3) if shown else None,
        "settled_s": round(term.last_write - t, 3),
        "bytes": term.count(t),
        "right_consult": titled is not None,
        "rss_growth_mib": round((rss1 - rss0) / 1024, 1) if rss0 and rss1 else None,
    }


def page_up(term: Term, first_seq: int, pages: int = 2, presses: int = 30) -> dict[str, Any]:
    """Ctrl+O, then PageUp (one press at a time, each after the screen went quiet) until
    ``pages`` older pages were loaded and their messages are on screen.

    Only the newest page (50 messages, from ``first_seq``) is loaded when a consult opens;
    the PageUp that reaches the top asks the store for the page before it. The first press
    whose output shows messages older than what was loaded counts as that page's load: its
    time to the last byte, and its bytes (extra frames show there; with a desk that keeps
    the reader's place without repainting, that is the press that scrolls into the page).
    What is on screen after each press comes from a small terminal emulator, so a press
    after which the top message is *newer* than before (PageUp moving the view down) is
    counted: it should never happen.
    """
    term.wait_quiet(0.3, 10)
    t = term.key(KEY_CTRL_O)
    term.wait_quiet(0.3, 10)
    focus_bytes = term.count(t)
    rss0 = term.rss_kib()
    steps: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    loaded_from, went_down = first_seq, 0
    top = term.screen().top_seq()
    for _ in range(presses):
        t = term.key(KEY_PAGE_UP)
        term.wait_quiet(0.3, 10)
        chunks = term.between(t)
        written = [int(x) for x in _SEQ.findall(b"".join(c for _, c in chunks))]
        now_top = term.screen().top_seq()
        step = {
            "bytes": sum(len(c) for _, c in chunks),
            "writes": len(chunks),
            "last_byte_ms": round((chunks[-1][0] - t) * 1000, 1) if chunks else None,
            "top_seq": now_top,
        }
        steps.append(step)
        if top is not None and now_top is not None and now_top > top:
            went_down += 1
        top = now_top
        if written and min(written) < loaded_from:  # this press loaded the page before
            loads.append({"press": len(steps), "ms": step["last_byte_ms"], "bytes": step["bytes"]})
            loaded_from -= 50
        if len(loads) >= pages and top is not None and top < first_seq:
            break
    rss1 = term.rss_kib()
    plain = [s["bytes"] for i, s in enumerate(steps, 1) if i not in {ld["press"] for ld in loads}]
    return {
        "first_loaded_seq": first_seq,
        "focus_bytes": focus_bytes,
        "presses": len(steps),
        "loads": loads,
        "older_on_screen": top is not None and top < first_seq,
        "presses_down": went_down,
        "plain_press_bytes": statistics.median(plain) if plain else None,
        "rss_growth_mib": round((rss1 - rss0) / 1024, 1) if rss0 and rss1 else None,
        "steps": steps,
    }


def mouse_sweep(term: Term, moves: int = 30) -> dict[str, Any]:
    """Move the pointer over the screen, as a hand resting on a mouse does.

    A terminal reports motion only when the app asked for it (``?1003h``, any-event
    tracking); then every move is a report sent up the link, and whatever the app repaints
    (hover highlights) comes back down. The tuned app does not ask, so nothing is sent.
    """
    with term.cond:
        head = b"".join(term.chunks)
    if b"\x1b[?1003h" not in head and b"\x1b[?1002h" not in head:
        return {"reporting": False, "up_bytes": 0, "down_bytes": 0}
    sgr = b"\x1b[?1006h" in head
    term.wait_quiet(0.5, 10)
    t0 = time.monotonic()
    up = 0
    for i in range(moves):
        x, y = 5 + (i * 7) % (COLS - 10), 3 + (i * 5) % (ROWS - 4)
        report = f"\x1b[<35;{x};{y}M".encode() if sgr else bytes([27, 91, 77, 32 + 35, 32 + x, 32 + y])
        up += len(report)
        term.key(report)
        time.sleep(0.04)
    term.wait_quiet(0.5, 10)
    return {"reporting": True, "up_bytes": up, "down_bytes": term.count(t0), "moves": moves}


def page_down(term: Term, presses: int = 3) -> dict[str, Any]:
    """PageDown in the conversation: Textual scrolls it with an animation unless the app
    turned animations off, and every animation frame is a repaint of the view."""
    per_press, writes = [], []
    for _ in range(presses):
        t = term.key(KEY_PAGE_DOWN)
        term.wait_quiet(0.5, 10)
        chunks = term.between(t)
        per_press.append(sum(len(c) for _, c in chunks))
        writes.append(len(chunks))
    return {"bytes": per_press, "writes": writes}


def run_variant(w: World, app: str, colors: str, idle_s: float, repeats: int, tag: str) -> dict[str, Any]:
    env = tui_env(w.chen, app, colors)
    r: dict[str, Any] = {"app": app, "colors": colors, "startups": []}
    term = Term([*MEDCOMM], env)
    try:
        r["startups"].append(first_screen(term))
        if term.find(b"online", term.started, 20) is None:
            raise RuntimeError(f"the desk did not get online; it shows:\n{term.screen_text()}")
        r["idle_list"] = idle(term, idle_s)
        r["incoming_list"] = [incoming(term, w, f"incoming-list-{tag}-{i}") for i in range(repeats)]
        r["mouse"] = mouse_sweep(term)
        r["open_chat"] = open_consult(term, CHAT_TITLE, f"\u00b7 {CHAT_TITLE} \u00b7".encode())
        if not r["open_chat"]["right_consult"]:
            raise RuntimeError(f"Enter did not open {CHAT_TITLE}; the terminal shows:\n{term.screen_text()}")
        r["idle_consult"] = idle(term, idle_s)
        r["incoming_open"] = [incoming(term, w, f"incoming-open-{tag}-{i}") for i in range(repeats)]
        r["typing"] = typing(term, "abcdefghijklmnopqrst")
        term.wait_quiet(0.3, 10)
        term.key(KEY_ESC)
        term.wait_quiet(0.5, 10)
        t = term.key(KEY_DOWN)  # bench-chat is the top row; bench-10k the one below
        term.wait_quiet(0.3, 10)
        r["list_down_bytes"] = term.count(t)
        r["open_big"] = open_consult(term, BIG_TITLE, NEWEST_TOKEN.encode())
        if not r["open_big"]["right_consult"]:
            raise RuntimeError(f"Enter did not open {BIG_TITLE}; the terminal shows:\n{term.screen_text()}")
        r["page_up"] = page_up(term, w.big_last_seq - 49)  # the first page is the newest 50
        r["page_down"] = page_down(term)
        r["total_bytes"] = term.total()
    finally:
        r["exit_code"] = term.close()
    for _ in range(repeats - 1):  # more cold starts for the first-screen median
        term = Term([*MEDCOMM], env)
        try:
            r["startups"].append(first_screen(term))
        finally:
            term.close()
    starts = r["startups"]
    r["first_screen_s"] = statistics.median(s["list_s"] for s in starts)
    r["first_screen_settled_s"] = statistics.median(s["settled_s"] for s in starts)
    r["first_screen_bytes"] = statistics.median(s["bytes"] for s in starts)
    return r


# --- report ----------------------------------------------------------------------------------


def _median(items: list[dict[str, Any]], key: str) -> float | None:
    values = [x[key] for x in items if x.get(key) is not None]
    return statistics.median(values) if values else None


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers for one variant (the same keys as TARGETS, plus context)."""
    return {
        "first_screen_s": r["first_screen_s"],
        "first_screen_settled_s": r["first_screen_settled_s"],
        "first_screen_bytes": r["first_screen_bytes"],
        "idle_list_bytes_per_min": r["idle_list"]["bytes_per_min"],
        "idle_consult_bytes_per_min": r["idle_consult"]["bytes_per_min"],
        "incoming_list_bytes": _median(r["incoming_list"], "bytes"),
        "incoming_open_bytes": _median(r["incoming_open"], "bytes"),
        "incoming_shown_s": _median(r["incoming_open"], "shown_after_s"),
        "typed_char_bytes_median": r["typing"]["bytes_median"],
        "typed_char_bytes_max": r["typing"]["bytes_max"],
        "typed_char_echo_ms": r["typing"]["echo_ms_median"],
        "open_chat_bytes": r["open_chat"]["bytes"],
        "list_down_bytes": r["list_down_bytes"],
        "mouse_bytes": f"{r['mouse']['up_bytes']} / {r['mouse']['down_bytes']}",
        "page_down_bytes": statistics.median(r["page_down"]["bytes"]),
        "page_down_writes": statistics.median(r["page_down"]["writes"]),
        "big_open_s": r["open_big"]["open_s"],
        "big_open_bytes": r["open_big"]["bytes"],
        "big_open_rss_mib": r["open_big"]["rss_growth_mib"],
        "older_page_ms": (r["page_up"]["loads"] + [{"ms": None}])[0]["ms"],
        "older_page2_ms": (r["page_up"]["loads"] + [{"ms": None}] * 2)[1]["ms"],
        "older_page_bytes": (r["page_up"]["loads"] + [{"bytes": None}])[0]["bytes"],
        "page_up_presses": f"{r['page_up']['presses']} / {r['page_up']['presses_down']}"
        + ("" if r["page_up"]["older_on_screen"] else " (no older on screen)"),
        "focus_history_bytes": r["page_up"]["focus_bytes"],
        "page_up_bytes_median": r["page_up"]["plain_press_bytes"],
        "exit_code": r["exit_code"],
    }


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:.0f}"
    return f"{v}{unit}"


def print_table(results: list[dict[str, Any]], idle_s: float, n: int, repeats: int) -> list[str]:
    """The table; returns the targets the tuned app missed."""
    figs = [figures(r) for r in results]
    per = "median of " + str(repeats) if repeats > 1 else "one run"
    rows: list[tuple[str, str, str]] = [
        (f"first screen: spawn -> consult list, s ({per})", "first_screen_s", "<= 1.5"),
        ("  ... -> first 300 ms without output, s", "first_screen_settled_s", ""),
        ("  bytes of the first screen", "first_screen_bytes", ""),
        (f"idle, consult list: bytes/min (over {idle_s:.0f} s)", "idle_list_bytes_per_min", "0"),
        (f"idle, consult open: bytes/min (over {idle_s:.0f} s)", "idle_consult_bytes_per_min", "0"),
        (f"incoming message, consult open: bytes ({per})", "incoming_open_bytes", "<= 2048"),
        (f"incoming message, consult list: bytes ({per})", "incoming_list_bytes", "<= 2048"),
        ("  incoming message on screen after send start, s", "incoming_shown_s", ""),
        ("typed character: bytes, median of 20", "typed_char_bytes_median", "<= 200"),
        ("  typed character: bytes, max of 20", "typed_char_bytes_max", ""),
        ("  typed character: key -> first byte, ms (median)", "typed_char_echo_ms", ""),
        ("  open a short consult (Enter): bytes", "open_chat_bytes", ""),
        ("consult list, Down (highlight the next row): bytes", "list_down_bytes", ""),
        ("mouse, 30 moves over the list: bytes up / down", "mouse_bytes", ""),
        (f"{n:,}-message consult: Enter -> newest message, s", "big_open_s", "<= 1"),
        ("  bytes of that open", "big_open_bytes", ""),
        ("  RSS growth of that open, MiB", "big_open_rss_mib", ""),
        ("  Ctrl+O (focus the conversation): bytes", "focus_history_bytes", ""),
        ("  PageUp reaching the top: older page loaded, ms", "older_page_ms", ""),
        ("  ... the page before that, ms", "older_page2_ms", ""),
        ("  bytes of that loading PageUp", "older_page_bytes", ""),
        ("  bytes of a PageUp that loads nothing (median)", "page_up_bytes_median", ""),
        ("  PageUps for 2 older pages / of them moving down", "page_up_presses", ""),
        ("  PageDown: bytes per press (median of 3)", "page_down_bytes", ""),
        ("  PageDown: writes (frames) per press (median)", "page_down_writes", ""),
        ("exit code after Ctrl+Q", "exit_code", ""),
    ]
    heads = [f"{r['app']} {r['colors']}c" for r in results]
    width = 52
    print(f"\n{'metric':<{width}} " + " ".join(f"{h:>13}" for h in heads) + "   target")
    for label, key, target in rows:
        cells = " ".join(f"{_fmt(f[key]):>13}" for f in figs)
        print(f"{label:<{width}} {cells}   {target}")
    missed = []
    for r, f in zip(results, figs, strict=True):
        if r["app"] != "tuned":
            continue
        for key, limit in TARGETS.items():
            if f[key] is None or f[key] > limit:
                missed.append(f"{r['app']} {r['colors']}c {key}={f[key]} (target <= {limit})")
    return missed


def print_idle_writes(results: list[dict[str, Any]]) -> None:
    """When an idle desk wrote something, show what (escape sequences; text as <Nt>)."""
    for r in results:
        for where in ("idle_list", "idle_consult"):
            writes = r[where]["writes"]
            if not writes:
                continue
            what = f"{r['app']} {r['colors']}c, {where.replace('_', ' ')}"
            print(f"\nidle output, {what}: {len(writes)} writes")
            for wr in writes[:6]:
                print(f"  +{wr['t']:.2f}s {wr['n']} B  {wr['esc'][:200]}")


def code_stamp() -> dict[str, float]:
    """Modification times of the desk's code: figures are only comparable for one version,
    so a run that saw the code change under it says so."""
    root = Path(__file__).resolve().parents[2] / "tui"
    return {
        str(f.relative_to(root.parent)): f.stat().st_mtime
        for f in sorted(root.rglob("*"))
        if f.suffix in (".py", ".tcss")
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench tui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--messages", type=int, help="messages in the big consult (default 10000; quick 2000)")
    p.add_argument("--idle", type=float, help="seconds of each idle measurement (default 60; quick 10)")
    p.add_argument("--repeats", type=int, help="cold starts and incoming messages per variant (3; quick 1)")
    p.add_argument("--variants", default="all", help="e.g. tuned:16,defaults:256 (default: all four)")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--json", type=Path, help="also write the figures (and idle writes) here")
    p.add_argument("--keep", type=Path, help="work in this dir and keep it (relay, homes, desk.log)")
    args = p.parse_args(argv)
    n = args.messages or (2000 if args.quick else 10000)
    idle_s = args.idle or (10.0 if args.quick else 60.0)
    repeats = args.repeats or (1 if args.quick else 3)
    variants = VARIANTS
    if args.variants != "all":
        variants = [tuple(v.split(":", 1)) for v in args.variants.split(",")]  # type: ignore[misc]
    print(
        f"what ran: `medcomm` (no command: the desk) as dr.chen in a {COLS}x{ROWS} pty, against a real "
        f"relay on 127.0.0.1; apps: tuned and Textual defaults (MEDCOMM_TEXTUAL_DEFAULTS=1); colours: "
        f"16 (TERM=linux TEXTUAL_COLOR_SYSTEM=standard) and 256 (TERM=xterm-256color); idle {idle_s:.0f} s "
        f"per screen; {repeats} cold start(s) and incoming message(s) per screen; a {n:,}-message consult; "
        f"{os.cpu_count()} cores; Python {sys.version.split()[0]}",
        flush=True,
    )
    report: dict[str, Any] = {"cores": os.cpu_count(), "messages": n, "idle_s": idle_s, "results": []}
    stamp = code_stamp()
    report["code_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(stamp.values(), default=0)))
    with tempfile.TemporaryDirectory(prefix="medcomm-bench-tui-") as tmp:
        root = Path(tmp)
        if args.keep:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        w = setup(root, n)
        try:
            print(f"setup: relay, 2 people, 2 consults, {n:,} messages filled and synced: {w.setup_s:.0f} s")
            report["setup_s"] = round(w.setup_s, 1)
            w.snapshot()
            for app, colors in variants:
                t = time.monotonic()
                w.restore()
                r = run_variant(w, app, colors, idle_s, repeats, f"{app}{colors}")
                report["results"].append(r)
                print(f"  {app} {colors}c done in {time.monotonic() - t:.0f} s", flush=True)
        finally:
            w.relay.stop()
    missed = print_table(report["results"], idle_s, n, repeats)
    changed = sorted(f for f, m in code_stamp().items() if stamp.get(f) != m)
    report["code_changed_during_run"] = changed
    if changed:
        print(f"\nwarning: the desk's code changed during the run (columns may differ in version): {changed}")
    print_idle_writes(report["results"])
    report["missed"] = missed
    if missed:
        print("\ntargets missed by the tuned app:\n  " + "\n  ".join(missed))
    else:
        print("\ntuned app: every target met")
    if args.json:
        for r in report["results"]:
            r["figures"] = figures(r)
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if missed else 0

"""Shared pieces of the desk tests: a small clinic, waiting on the app, reading its screens,
and a screenshot that shows what a 16- or 256-colour terminal really displays."""

from __future__ import annotations

import io
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from rich.color import ColorSystem
from rich.console import Console
from rich.segment import Segment, Segments
from rich.style import Style
from textual.app import App
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import OptionList

from medcomm.app.app import MedcommApp, build_app
from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.widgets.compose import ComposeBox
from medcomm.app.widgets.conversation import MessageLine
from medcomm.app.widgets.status import StatusLine
from tests.harness.fake_session import START_MS, FakeSession

FEVER = "k7m2qd"
HEADACHE = "p3x9wa"
STOCK = "b8n4tz"


def clinic(seed: int = 7) -> FakeSession:
    """Three consults of the nurse "amina", newest activity first: FEVER (1 unread, waiting,
    one of her messages in each state), HEADACHE, STOCK. Times are fixed (05 Mar 2024,
    from 09:01 UTC, one minute apart), ids come from ``seed``."""
    fake = FakeSession("amina", seed=seed)
    fake.add_consult("Boy, 6, fever 4 days", ["amina", "dr.chen"], consult=FEVER)
    fake.add_consult(
        "Woman, 31, headache after delivery", ["amina", "dr.osei", "midwife.ruth"], consult=HEADACHE
    )
    fake.add_consult("Stock check: amoxicillin", ["amina", "pharm.kofi"], consult=STOCK)

    fake.add_message(STOCK, "pharm.kofi", "Twelve boxes of amoxicillin 250 mg left.")  # 09:01
    fake.add_message(STOCK, "amina", "Thanks, ordering more.", state="read")  # 09:02
    fake.consults[STOCK].read_upto = 1

    fake.add_message(HEADACHE, "dr.osei", "BP and urine protein?")  # 09:03
    fake.add_message(HEADACHE, "amina", "BP 150/100 twice, protein ++.", state="delivered")  # 09:04
    fake.consults[HEADACHE].read_upto = 1

    fake.add_message(FEVER, "amina", "Temp 39.2 C, RR 44/min, SpO2 91% on air.", state="read")  # 09:05
    fake.add_message(FEVER, "dr.chen", "Any chest indrawing or danger signs?")  # 09:06
    fake.add_message(FEVER, "amina", "Mild indrawing, drinking poorly.", state="delivered")  # 09:07
    fake.add_message(FEVER, "amina", "Weight 19 kg.", state="stored")  # 09:08
    fake.add_message(FEVER, "dr.chen", "Severe pneumonia: first dose of antibiotics, then refer.")  # 09:09
    fake.consults[FEVER].read_upto = 2
    fake.add_queued(FEVER, "Ambulance requested.")  # 09:10
    fake.add_queued(FEVER, "Referral letter sent?", failed=True)  # 09:11
    fake.status.last_contact = fake.now_ms / 1000  # 09:11:00
    return fake


BP_REVIEW = "m5bp7r"
OLD_COUGH = "t4c9gh"
TOM = "ptom0001"


def ward(seed: int = 11) -> FakeSession:
    """The desk of the doctor "dr.chen" with the consult workflow in use (05 Mar 2024, UTC):

    * OLD_COUGH (09:01): Tom's cough, advised and closed (patient key TOM);
    * BP_REVIEW (09:05): Joseph M., routine, advised and closed, follow-up fq7k due today;
    * FEVER (09:12): Tom again, urgent, waiting (the same patient key: linked to OLD_COUGH);
    * HEADACHE (09:14): Grace N., emergency, waiting: the alarm;
    * STOCK (09:16): a chat without a card: routine, waiting.

    The clock then stands at 09:25, so the waits are whole minutes."""
    import datetime as dt

    fake = FakeSession("dr.chen", seed=seed)
    fake.add_consult("Boy, 5, cough", ["amina", "dr.chen"], consult=OLD_COUGH)
    fake.add_message(OLD_COUGH, "amina", "Cough two weeks, no fever.")  # 09:01
    fake.add_case(
        OLD_COUGH,
        {"patient.name": "Tom", "patient.age": "5", "patient.sex": "m", "patient.id": TOM,
         "urgency": "routine", "complaint": "cough two weeks"},
        sender="amina",
    )  # fmt: skip
    fake.add_status(OLD_COUGH, "dr.chen", "claim")
    fake.add_status(OLD_COUGH, "dr.chen", "set", to="advised", advice="Amoxicillin 5 days, review if worse")
    fake.add_consult("Man, 58, BP review", ["amina", "dr.chen"], consult=BP_REVIEW)
    fake.add_message(BP_REVIEW, "amina", "BP 150/95 on amlodipine.")  # 09:05
    fake.add_case(
        BP_REVIEW,
        {"patient.name": "Joseph M.", "patient.age": "58", "patient.sex": "m", "urgency": "routine",
         "complaint": "hypertension review", "vitals.bp": "150/95"},
        sender="amina",
    )  # fmt: skip
    fake.add_status(BP_REVIEW, "dr.chen", "claim")
    fake.add_status(BP_REVIEW, "dr.chen", "set", to="advised", advice="Amlodipine 10 mg")
    fake.add_status(BP_REVIEW, "dr.chen", "set", to="closed")
    fake.add_followup_message(BP_REVIEW, "dr.chen", "fq7k", dt.date(2024, 3, 5), "BP check")
    fake.add_status(OLD_COUGH, "dr.chen", "set", to="closed")

    fake.add_consult("Boy, 6, fever 4 days", ["amina", "dr.chen"], consult=FEVER)
    fake.add_message(FEVER, "amina", "Temp 39.2 C, RR 44/min, SpO2 91% on air.")
    fake.add_case(
        FEVER,
        {"patient.name": "Tom", "patient.age": "6", "patient.sex": "m", "patient.id": TOM,
         "urgency": "urgent", "complaint": "fever 4 days, fast breathing", "vitals.spo2": "91"},
        sender="amina",
    )  # fmt: skip
    fake.add_consult("Woman, 31, headache after delivery", ["amina", "dr.chen"], consult=HEADACHE)
    fake.add_message(HEADACHE, "amina", "Severe headache, BP 160/110, day 3 after delivery.")
    fake.add_case(
        HEADACHE,
        {"patient.name": "Grace N.", "patient.age": "31", "patient.sex": "f", "urgency": "emergency",
         "complaint": "severe headache after delivery", "vitals.bp": "160/110"},
        sender="amina",
    )  # fmt: skip
    fake.add_consult("Stock check: amoxicillin", ["amina", "dr.chen"], consult=STOCK)
    fake.add_message(STOCK, "amina", "Twelve boxes of amoxicillin 250 mg left.")
    fake.now_ms = START_MS + 25 * 60_000  # 09:25
    fake.status.last_contact = fake.now_ms / 1000
    return fake


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], object], timeout: float = 3.0) -> None:
    """Pause until predicate() holds (the app works in its own tasks and timers)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(predicate, '__name__', predicate)}")
        await pilot.pause(0.02)


async def shows(pilot: Pilot[Any], get: Callable[[], object], expected: object, timeout: float = 3.0) -> None:
    """Pause until get() == expected; fail with what was shown instead."""
    deadline = time.monotonic() + timeout
    while (actual := get()) != expected and time.monotonic() < deadline:
        await pilot.pause(0.02)
    assert actual == expected, f"shown {actual!r}, expected {expected!r}"


async def settle(pilot: Pilot[Any], seconds: float = 0.15) -> None:
    """Long enough for the app's coalescing refresh (50 ms) to have run."""
    await pilot.pause(seconds)
    await pilot.pause()


def screen_name(app: App[Any]) -> str:
    return type(app.screen).__name__


def rows(app: App[Any]) -> list[str]:
    """The consult list as shown: one plain string per option."""
    options = app.screen.query_one("#consults", OptionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


def messages(app: App[Any]) -> list[str]:
    """The conversation as shown: one plain string per message widget."""
    return [str(w.content) for w in app.screen.query(MessageLine)]


def status_text(app: App[Any]) -> str:
    return str(app.screen.query_one(StatusLine).content)


# --- what a terminal with fewer colours shows ---------------------------------------------


def _downgrade(style: Style | None, system: ColorSystem | None) -> Style | None:
    """The colours a terminal of ``system`` gets: what Textual's driver does when it writes
    a strip (``Strip.render_ansi`` downgrades each colour to the console's colour system)."""
    if style is None or system is None or system == ColorSystem.TRUECOLOR:
        return style
    color = style.color.downgrade(system) if style.color else None
    bgcolor = style.bgcolor.downgrade(system) if style.bgcolor else None
    return style + Style.from_color(color, bgcolor)


def _screen_segments(app: App[Any], simplify: bool) -> tuple[Console, list[Segment]]:
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    update = app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens, simplify=simplify
    )
    system = app.console._color_system
    return console, [Segment(t, _downgrade(s, system), c) for t, s, c in console.render(update)]


def export_as_terminal(app: App[Any], *, title: str | None = None, simplify: bool = False) -> str:
    """``App.export_screenshot`` with the colours the app's console would really send.

    Textual's own export always renders truecolor (it makes a console of its own), so the
    app's colour system (``TEXTUAL_COLOR_SYSTEM``) never shows in an SVG; this one does."""
    console, segments = _screen_segments(app, simplify)
    console.print(Segments(segments))
    # Rich names the SVG's styles after a hash of the segments' reprs, which carry Textual's
    # mouse metadata as well; named after what a terminal shows, equal screens give equal SVGs.
    shown = "".join(f"{text}\0{style or ''}\0" for text, style, _ in segments)
    unique_id = f"terminal-{zlib.adler32(shown.encode())}"
    return console.export_svg(title=title or app.title, unique_id=unique_id)


def _is_text(ch: str) -> bool:
    """A character that carries meaning (not blank, not a box-drawing or block glyph: Textual
    draws tall borders with blocks in the border colour, which may match the background)."""
    return not ch.isspace() and not 0x2500 <= ord(ch) <= 0x259F


def illegible_cells(app: App[Any]) -> list[tuple[int, int, str]]:
    """(x, y, character) of characters whose colour equals their background in the app's
    colour system: text that would disappear on that terminal."""
    _, segments = _screen_segments(app, simplify=False)
    bad: list[tuple[int, int, str]] = []
    lines = Segment.split_lines(segment for segment in segments if not segment.control)
    for y, line in enumerate(lines):
        x = 0
        for text, style, _ in line:
            if style is not None and style.color is not None and style.bgcolor is not None:
                fg, bg = style.color, style.bgcolor
                if style.reverse:
                    fg, bg = bg, fg
                # "default" is the terminal's own foreground or background: compare as such
                if fg.get_truecolor(foreground=True) == bg.get_truecolor(foreground=False):
                    bad.extend((x + i, y, ch) for i, ch in enumerate(text) if _is_text(ch))
            x += Segment(text, style).cell_length
        if len(bad) > 50:
            break
    return bad


# --- running the desk -----------------------------------------------------------------------


@asynccontextmanager
async def desk(
    fake: FakeSession, size: tuple[int, int] = (80, 24), *, notifications: bool = False
) -> AsyncIterator[tuple[MedcommApp, Pilot[None]]]:
    """The app as the CLI builds it, on the fake, once its consult list is up."""
    app = build_app(fake.opener)
    async with app.run_test(size=size, notifications=notifications) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        await pilot.pause()
        yield app, pilot


def in_consult(app: App[Any], consult: str | None = None) -> bool:
    """The consult view is up, its first page shown and the compose box focused."""
    screen = app.screen
    return (
        isinstance(screen, ConsultView)
        and (consult is None or screen.consult == consult)
        and isinstance(app.focused, ComposeBox)
    )


async def open_view(app: MedcommApp, pilot: Pilot[None], consult: str) -> None:
    app.open_consult(consult)
    await wait_for(pilot, lambda: in_consult(app, consult))
    await pilot.pause()


def shown_text(app: App[Any], widget_type: type[Any]) -> str:
    """A one-line bar's text as the user sees it: empty while the bar is hidden."""
    widget = app.screen.query_one(widget_type)
    return widget.text if widget.display else ""


def notes(app: App[Any]) -> list[tuple[str, str]]:
    """The notifications on screen, as (severity, message)."""
    return [(n.severity, n.message) for n in app._notifications]


@contextmanager
def refreshes() -> Iterator[list[tuple[Widget, bool]]]:
    """Every ``Widget.refresh`` while inside: (widget, layout)."""
    seen: list[tuple[Widget, bool]] = []
    original = Widget.refresh

    def spy(self: Widget, *regions: Any, **kwargs: Any) -> Widget:
        seen.append((self, bool(kwargs.get("layout"))))
        return original(self, *regions, **kwargs)

    Widget.refresh = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Widget.refresh = original  # type: ignore[method-assign]

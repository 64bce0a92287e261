"""The call bar: one line in a consult view while a call exists there (ringing for us,
placed, connecting or up), and nothing at all otherwise (no height, no cell drawn).

It shows the state, who is in, the engine's meters, mute and the voice profile, and the
keys. The meters change at most once a second (``DeskCalls`` paces them); the bar repaints
its own line only when its text changed, so a call costs one terminal line a second over
SSH, not a screen.

At 80 columns everything does not fit, so the text is made of parts with a rank: the
least needed parts (keys, which the footer also shows, then the profile, the peers, the
rung, the buffer) are dropped first, and the state and MUTED are never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text
from textual.widget import Widget

from medcomm.app.ports import LiveCall

# F6 cycles these (``core.ratecontrol.PROFILES``), for the next call placed or answered.
PROFILES = ("auto", "thin", "standard", "auscultation")
PROFILE_NOTES = {
    "auto": "follows the link",
    "thin": "6 kbit/s, for the worst links",
    "standard": "16 kbit/s, needs a good link",
    "auscultation": "heart and lung sounds, 28 kbit/s",
}

SEP = " · "
ALWAYS = 0  # rank of a part that is never dropped

# The engine's line is "in call 0:05 · up 9.8 kbit/s · down 10.2 kbit/s · rtt 640 ms ·
# buffer 120 ms · concealed 0.4% · mid · muted": parts by their first word, ranked.
_METER_RANK = {"up": 1, "down": 1, "rtt": 2, "concealed": 2, "buffer": 3}
_RATE = re.compile(r"^(up|down) (\S+) kbit/s$")


@dataclass(frozen=True)
class Part:
    text: str
    rank: int  # 0: always shown; higher: dropped earlier when the line is too narrow
    bold: bool = False


def parts_line(parts: Sequence[Part], width: int) -> Text:
    """The parts that fit ``width``, joined by SEP, bold where asked (one bar line)."""
    out = Text(no_wrap=True, overflow="ellipsis", end="")
    for i, part in enumerate(fit(parts, width)):
        if i:
            out.append(SEP)
        out.append(part.text, style="bold" if part.bold else "")
    return out


def fit(parts: Sequence[Part], width: int) -> list[Part]:
    """The parts that fit ``width`` joined by " · ", dropping the highest rank first (the
    rightmost among equals); parts of rank 0 stay even if the line must then be cut."""
    keep = list(parts)
    while cell_len(SEP.join(p.text for p in keep)) > width:
        droppable = [i for i, p in enumerate(keep) if p.rank != ALWAYS]
        if not droppable:
            break
        del keep[max(droppable, key=lambda i: (keep[i].rank, i))]
    return keep


def meter_parts(line: str) -> list[Part]:
    """The engine's meters as ranked parts; "up"/"down" become one "↑9.8 ↓10.2 kbit/s" and
    its own "muted" is left out (the bar shows MUTED from the view, up front). A part the
    desk does not know (a new meter, the rung) is kept, ranked low: a change of the
    engine's wording costs width, never information."""
    tokens = [t.strip() for t in line.split(SEP) if t.strip() and t.strip() != "muted"]
    parts: list[Part] = []
    rates = {m.group(1): m.group(2) for t in tokens if (m := _RATE.match(t))}
    for i, token in enumerate(tokens):
        word = token.split(" ", 1)[0]
        if i == 0 and token.startswith(("in call", "reconnecting")):
            parts.append(Part(token, ALWAYS, bold=True))
        elif _RATE.match(token) and len(rates) == 2:
            if word == "up":
                parts.append(Part(f"↑{rates['up']} ↓{rates['down']} kbit/s", 1))
        else:
            parts.append(Part(token, _METER_RANK.get(word, 5)))
    return parts


def bar_parts(view: LiveCall | None, ringing_by: str | None, next_profile: str) -> list[Part]:
    """What the bar says: about the live call of this consult, else about the call ringing
    for us here; empty when there is neither."""
    if view is None or view.state == "ended":
        if ringing_by is None:
            return []
        return [
            Part(f"incoming call from {ringing_by}", ALWAYS, bold=True),
            Part("F2 answer", 1),
            Part("F3 decline", 1),
            Part(f"profile {next_profile} (F6)", 3),
        ]
    peers = ", ".join(view.peers)
    parts: list[Part] = []
    if view.state == "in call":
        meters = meter_parts(view.line)
        if not meters or meters[0].rank != ALWAYS:
            meters.insert(0, Part("in call", ALWAYS, bold=True))
        parts.append(meters[0])
        if view.muted:
            parts.append(Part("MUTED", ALWAYS, bold=True))
        parts += meters[1:]
        if peers:
            parts.append(Part(f"with {peers}", 4))
    else:
        doing = "calling" if view.state == "ringing-out" else view.state
        parts.append(Part(f"{doing} {peers}…" if peers else f"{doing}…", ALWAYS, bold=True))
        if view.muted:
            parts.append(Part("MUTED", ALWAYS, bold=True))
    profile = f"profile {view.profile}"
    if next_profile != view.profile:
        profile += f", next {next_profile}"
    parts += [
        Part(profile, 5),
        Part("F3 hang up", 6),
        Part("F4 unmute" if view.muted else "F4 mute", 6),
    ]
    return parts


class CallBar(Widget):
    """Hidden (``display: none``) until ``show`` gives it something to say."""

    DEFAULT_CSS = """
    CallBar { height: 1; padding: 0 1; display: none; background: $success; color: ansi_black; }
    CallBar.-ringing { background: $warning; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.parts: tuple[Part, ...] = ()

    def show(self, view: LiveCall | None, ringing_by: str | None, next_profile: str) -> None:
        """Redraw only if the text changed: a meters update with the same numbers (or an
        event about another consult) writes nothing."""
        parts = tuple(bar_parts(view, ringing_by, next_profile))
        if parts == self.parts:
            return
        self.parts = parts
        self.set_class(bool(parts) and (view is None or view.state == "ended"), "-ringing")
        if self.display != bool(parts):
            self.display = bool(parts)  # a layout change: only when a call appears or goes
        self.refresh()

    @property
    def text(self) -> str:
        """The line as shown at the bar's current width (for tests and screen readers)."""
        return self.render().plain

    def render(self) -> Text:
        return parts_line(self.parts, self.content_size.width or 10_000)

"""16 and 256 colours: every screen stays legible once colours are cut down as the driver does.

Textual renders in truecolor and its driver downgrades each colour to the console's colour
system (``TEXTUAL_COLOR_SYSTEM``, or what the terminal reports) when it writes; a 16-colour
terminal may so get text in the colour of its background. ``helpers.illegible_cells``
finds such characters on the screen as that terminal would show it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from medcomm.app.app import build_app
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.dialogs import HelpScreen, NewConsult
from tests.app.helpers import (
    FEVER,
    clinic,
    desk,
    export_as_terminal,
    illegible_cells,
    open_view,
    wait_for,
)


@pytest.mark.parametrize("system", ["standard", "256"])
async def test_every_screen_is_legible(system: str, colour_system: Callable[[str], None]) -> None:
    colour_system(system)
    async with desk(clinic(), notifications=True) as (app, pilot):
        assert app.console.color_system == system
        assert illegible_cells(app) == [], "consult list"
        await pilot.press("/", *"fever")
        assert illegible_cells(app) == [], "consult list while searching"
        await open_view(app, pilot, FEVER)
        assert illegible_cells(app) == [], "consult view"
        app.notify("relay refused: too big (limit)", severity="error")
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert illegible_cells(app) == [], "help"
        await pilot.press("escape", "escape", "ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewConsult))
        await pilot.press("enter", "enter")
        assert illegible_cells(app) == [], "new consult with its error"


async def test_the_desk_looks_the_same_in_every_colour_system(colour_system: Callable[[str], None]) -> None:
    """The desk draws in the terminal's own ANSI colours, so 16 colours lose nothing; the
    helper that the snapshots use does honour the colour system (Textual's defaults show it)."""
    for _attempt in range(3):  # the list shows waiting times from the wall clock: a minute may turn
        ours: set[str] = set()
        theirs: set[str] = set()
        for system in ("truecolor", "256", "standard"):
            colour_system(system)
            async with desk(clinic()) as (app, _pilot):
                ours.add(export_as_terminal(app))
            app = build_app(clinic().opener, frugal=False)
            async with app.run_test(size=(80, 24)) as pilot:
                await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))  # noqa: B023
                theirs.add(export_as_terminal(app))
        if len(ours) == 1:
            break
    if len(ours) != 1:
        import difflib
        import re

        a, b = (re.sub(r"terminal-\d+", "terminal", svg).splitlines(True) for svg in sorted(ours)[:2])
        diff = "".join(list(difflib.unified_diff(a, b, n=1))[:60])
        raise AssertionError(f"the desk differs between colour systems:\n{diff}")
    assert len(theirs) == 3

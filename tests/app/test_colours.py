"""16 and 256 colours: every screen stays legible once colours are cut down as the driver does.

Textual renders in truecolor and its driver downgrades each colour to the console's colour
system (``TEXTUAL_COLOR_SYSTEM``, or what the terminal reports) when it writes; a 16-colour
terminal may so get text in the colour of its background. ``helpers.illegible_cells``
finds such characters on the screen as that terminal would show it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

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


async def test_the_colour_system_changes_the_screenshot(colour_system: Callable[[str], None]) -> None:
    """What the snapshots rely on: Textual's own export ignores the colour system, ours not."""
    shots: dict[str, tuple[str, str]] = {}
    for system in ("truecolor", "256", "standard"):
        colour_system(system)
        async with desk(clinic()) as (app, _pilot):
            shots[system] = (app.export_screenshot(), export_as_terminal(app))
    assert shots["truecolor"][0] == shots["256"][0] == shots["standard"][0]
    assert shots["truecolor"][1] == shots["truecolor"][0]
    assert len({shot for _, shot in shots.values()}) == 3

"""Every desk test runs in UTC: the app shows clock times through ``time.localtime``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import textual.constants


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def colour_system(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Run the next app as on a terminal of that colour system ("standard" is 16 colours),
    and nothing else of the environment changing its colours (``NO_COLOR``, filters).

    ``TEXTUAL_COLOR_SYSTEM`` is read once, when textual.constants is imported, so the
    constant the app's console is built from is patched as well as the variable."""

    def use(system: str) -> None:
        monkeypatch.setenv("TEXTUAL_COLOR_SYSTEM", system)
        monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", system)
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setattr(textual.constants, "FILTERS", "")

    return use

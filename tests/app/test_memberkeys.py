"""F12 in a consult: the members' safety numbers, compared aloud and marked verified."""

from __future__ import annotations

from typing import Any

from textual.widgets import OptionList, Static

from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.memberkeys import LOADING, MemberKeys
from medcomm.core.safety import grouped
from medcomm.errors import LinkDown
from tests.app.helpers import FEVER, HEADACHE, clinic, desk, in_consult, open_view, shows, wait_for


def member_rows(app: Any) -> list[str]:
    options = app.screen.query_one("#members", OptionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


def shown(app: Any, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def number_lines(fake: Any, them: str) -> str:
    return "\n".join(f"    {line}" for line in grouped(fake.safety_number(them)).splitlines())


async def test_ctrl_k_asks_the_relay_then_shows_each_member_with_their_number() -> None:
    fake = clinic()
    fake.hold_keys = True
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f12")
        await wait_for(pilot, lambda: isinstance(app.screen, MemberKeys))
        assert shown(app, "#loading") == LOADING
        assert member_rows(app) == []
        assert "mark verified only if they match" in shown(app, ".dialog-note")
        fake.release_keys()
        await shows(pilot, lambda: len(member_rows(app)), 2)
        assert member_rows(app) == [
            f"dr.osei  NOT verified\n{number_lines(fake, 'dr.osei')}",
            f"midwife.ruth  NOT verified\n{number_lines(fake, 'midwife.ruth')}",
        ]
        assert shown(app, "#loading") == ""
        assert fake.keys_asked == [("verifications", HEADACHE)]
        # twelve groups of five digits, and the two members' numbers differ
        assert all(len(g) == 5 and g.isdigit() for g in number_lines(fake, "dr.osei").split())
        assert fake.safety_number("dr.osei") != fake.safety_number("midwife.ruth")


async def test_a_changed_member_stands_out_and_c_marks_them_verified_again() -> None:
    fake = clinic()
    fake.key_states["dr.osei"] = "verified"
    fake.change_keys("dr.osei")  # a new device since she was verified
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, HEADACHE)
        await pilot.press("f12")
        await wait_for(pilot, lambda: isinstance(app.screen, MemberKeys) and len(member_rows(app)) == 2)
        options = app.screen.query_one("#members", OptionList)
        first = options.get_option_at_index(0).prompt
        assert str(first).startswith("dr.osei  KEYS CHANGED  compare again before sending\n")
        changed = [span for span in first.spans if first.plain[span.start : span.end] == "KEYS CHANGED"]
        assert changed and "reverse" in str(changed[0].style) and "bold" in str(changed[0].style)
        assert member_rows(app)[1].startswith("midwife.ruth  NOT verified\n")

        await pilot.press("c")  # the first row is highlighted
        await shows(pilot, lambda: member_rows(app)[0].split("\n")[0], "dr.osei  ✓ verified")
        assert fake.keys_asked[-1] == ("confirm", "dr.osei", fake.safety_number("dr.osei"))
        assert fake.key_states["dr.osei"] == "verified"

        # keys that change while the dialog is open: the shown number is refused, the row stays
        shown_number = fake.safety_number("midwife.ruth")
        fake.change_keys("midwife.ruth")
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: "not the current safety number" in shown(app, "#error"))
        assert fake.keys_asked[-1] == ("confirm", "midwife.ruth", shown_number)
        assert "midwife.ruth" not in fake.key_states
        assert member_rows(app)[1].startswith("midwife.ruth  NOT verified\n")


async def test_a_link_error_is_shown_and_esc_returns_to_the_consult() -> None:
    fake = clinic()
    fake.keys_failure = LinkDown("offline: the relay is not reachable")
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        await pilot.press("f12")
        await wait_for(pilot, lambda: isinstance(app.screen, MemberKeys))
        await shows(
            pilot,
            lambda: shown(app, "#error"),
            "! cannot show the safety numbers: offline: the relay is not reachable",
        )
        assert member_rows(app) == [] and shown(app, "#loading") == ""
        await pilot.press("escape")
        await wait_for(pilot, lambda: in_consult(app, FEVER))
        assert isinstance(app.screen, ConsultView)

"""The case card form (Ctrl+T in a consult): pre-filled, checked per field by the core,
nothing sent while a field is wrong, only the changed fields sent, Esc cancels."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input, TextArea

from medcomm.app.screens.cardform import CaseCardForm
from medcomm.app.screens.consult import ConsultView
from medcomm.core.casecard import BY_NAME, FIELDS
from tests.app.helpers import (
    FEVER,
    HEADACHE,
    clinic,
    desk,
    messages,
    notes,
    open_view,
    settle,
    shows,
    wait_for,
    ward,
)


def form(app: Any) -> CaseCardForm:
    assert isinstance(app.screen, CaseCardForm)
    return app.screen


async def open_form(app: Any, pilot: Any, consult: str) -> CaseCardForm:
    await open_view(app, pilot, consult)
    await pilot.press("ctrl+t")
    await wait_for(pilot, lambda: isinstance(app.screen, CaseCardForm))
    await pilot.pause()
    return form(app)


async def type_into(pilot: Any, card: CaseCardForm, name: str, text: str) -> None:
    """Focus a field (its text is selected, so typing replaces it, as with a click) and type."""
    widget = card.field(BY_NAME[name])
    widget.focus()
    await pilot.pause()
    if isinstance(widget, TextArea):
        widget.select_all()
    await pilot.press(*text) if text else await pilot.press("backspace")


async def test_the_form_is_pre_filled_with_the_card_its_version_and_who_set_each_field() -> None:
    async with desk(ward()) as (app, pilot):
        card = await open_form(app, pilot, FEVER)
        assert str(card.query_one("#card-head").content) == (
            "Case card · k7m2qd · version 1 · last change amina, 05 Mar 09:13"
        )
        values = {spec.name: card.value(spec) for spec in FIELDS}
        assert values == {
            "patient.id": "ptom0001",
            "patient.name": "Tom",
            "patient.age": "6",
            "patient.sex": "m",
            "urgency": "urgent",
            "complaint": "fever 4 days, fast breathing",
            "history": "",
            "vitals.bp": "",
            "vitals.hr": "",
            "vitals.rr": "",
            "vitals.temp": "",
            "vitals.spo2": "91",
            "medications": "",
            "allergies": "",
        }
        metas = [str(m.content) for m in card.query(".card-meta")]
        assert metas[1] == "v1 amina" and metas[6] == ""  # patient name set in v1; history never
        assert app.focused is card.field(BY_NAME["patient.name"])
        assert all(card.error_of(spec.name) == "" for spec in FIELDS)


async def test_leaving_a_bad_field_shows_the_core_s_error_under_it() -> None:
    async with desk(ward()) as (app, pilot):
        card = await open_form(app, pilot, FEVER)
        await type_into(pilot, card, "vitals.bp", "310/90")
        await pilot.press("tab")
        await shows(
            pilot,
            lambda: card.error_of("vitals.bp"),
            "! vitals.bp: '310/90' is out of range (systolic 40-300 above diastolic 20-200)",
        )
        assert card.error_of("vitals.hr") == ""  # the field the cursor went to is not judged yet
        await type_into(pilot, card, "vitals.bp", "140/90")
        await pilot.press("tab")
        await shows(pilot, lambda: card.error_of("vitals.bp"), "")


async def test_bad_bp_age_and_spo2_stop_the_save_and_nothing_is_sent() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        card = await open_form(app, pilot, FEVER)
        outbox = list(fake.outbox)
        card.set_value("patient.age", "200")
        card.set_value("vitals.bp", "90/120")  # diastolic above systolic
        card.set_value("vitals.spo2", "101")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, CaseCardForm)
        assert card.error_of("patient.age") == (
            "! patient.age: '200' is out of range (years 0-130, months 0-59, days 0-90)"
        )
        assert card.error_of("vitals.bp").startswith("! vitals.bp: '90/120' is out of range")
        assert card.error_of("vitals.spo2") == (
            "! vitals.spo2: '101' is not a saturation (a whole number from 0 to 100)"
        )
        assert card.error_of("patient.name") == ""
        assert fake.workflow_asked == [] and fake.outbox == outbox
        assert app.focused is card.field(BY_NAME["patient.age"])  # the first field to correct
        assert ("information", "3 fields to correct: nothing was sent") in notes(app)
        error_line = card.query_one("#e-" + BY_NAME["vitals.spo2"].code)
        assert error_line.display and error_line.region.height >= 1  # on screen, under its field


async def test_save_sends_only_the_fields_that_changed_as_one_version() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        card = await open_form(app, pilot, FEVER)
        await type_into(pilot, card, "vitals.bp", "140/90")
        await type_into(pilot, card, "vitals.spo2", "91%")  # typed differently, the same value
        await type_into(pilot, card, "allergies", "penicillin")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        assert fake.workflow_asked == [
            ("case", FEVER, {"vitals.bp": "140/90", "vitals.spo2": "91%", "allergies": "penicillin"})
        ]
        sent = fake.outbox[-1]
        assert (sent.kind, sent.state) == ("case", "queued")
        assert sent.data == {"fields": {"vitals.bp": "140/90", "allergies": "penicillin"}}
        await shows(
            pilot,
            lambda: messages(app)[-1],
            "   #- 09:26 · dr.chen case: vitals.bp=140/90, allergies=penicillin  [… queued]",
        )
        assert ("information", "case card version 2: BP (mmHg), SpO2 (%), allergies") in notes(app)
        state = fake.consult_state(FEVER)
        assert state.card.version == 2 and state.card.get("vitals.bp") == "140/90"


async def test_clearing_a_field_sends_it_as_cleared_and_the_header_follows() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        card = await open_form(app, pilot, FEVER)
        await type_into(pilot, card, "complaint", "")
        card.set_value("urgency", "Emergency")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        assert fake.outbox[-1].data == {"fields": {"complaint": None, "urgency": "emergency"}}
        header = app.screen.query_one("#case")
        expected = "!! EMERGENCY · waiting · Tom · 6y · m · 1 other consult: Ctrl+L"
        await shows(pilot, lambda: str(header.content), expected)
        assert header.has_class("-alarm")


async def test_a_first_card_gets_a_patient_key_so_later_consults_link() -> None:
    fake = clinic()
    async with desk(fake) as (app, pilot):
        await open_view(app, pilot, FEVER)
        assert str(app.screen.query_one("#case").content).startswith("waiting · no case card yet: Ctrl+T")
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, CaseCardForm))
        card = form(app)
        assert str(card.query_one("#card-head").content) == "Case card · k7m2qd · no version yet"
        assert isinstance(app.focused, Input)
        await pilot.press(*"Tom", "enter", *"6", "enter", *"m", "enter", *"urgent")
        assert card.value(BY_NAME["patient.sex"]) == "m"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        fields = fake.outbox[-1].data["fields"]  # type: ignore[index]
        key = fields.pop("patient.id")
        assert fields == {"patient.name": "Tom", "patient.age": "6", "patient.sex": "m", "urgency": "urgent"}
        assert isinstance(key, str) and key.startswith("p") and len(key) == 8
        header = app.screen.query_one("#case")
        await shows(pilot, lambda: str(header.content), "URGENT · waiting · Tom · 6y · m")


async def test_escape_cancels_and_nothing_is_sent() -> None:
    fake = ward()
    async with desk(fake) as (app, pilot):
        card = await open_form(app, pilot, HEADACHE)
        await type_into(pilot, card, "vitals.bp", "150/100")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        assert fake.workflow_asked == []
        assert fake.consult_state(HEADACHE).card.get("vitals.bp") == "160/110"


async def test_saving_without_a_change_sends_nothing() -> None:
    fake = ward()
    async with desk(fake, notifications=True) as (app, pilot):
        await open_form(app, pilot, FEVER)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        assert fake.workflow_asked == []
        assert ("information", "no change to the case card: nothing was sent") in notes(app)

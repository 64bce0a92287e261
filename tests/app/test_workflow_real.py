"""The desk's workflow on a real Session and a real relay: the doctor's queue raises the
alarm for the nurse's emergency, a claim from the queue reaches the relay, the case card
form's change too, and the nurse's device folds both."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcomm.app.app import build_app
from medcomm.app.screens.cardform import CaseCardForm
from medcomm.app.screens.consult import ConsultView
from medcomm.app.screens.consults import ConsultList
from medcomm.app.screens.queue import QueueScreen
from medcomm.session import casework
from medcomm.session.service import Session
from tests.app.helpers import in_consult, wait_for

pytestmark = pytest.mark.timeout(120)
WAIT = 20.0


async def test_queue_claim_and_card_on_a_real_session(pair: tuple[Path, Path, str]) -> None:
    nurse, doctor, consult = pair
    async with Session.open(home=nurse) as s:
        card = {"urgency": "emergency", "complaint": "coughing blood", "patient.name": "Ama", "age": "40"}
        item = await casework.update_case(s, consult, card)  # type: ignore[arg-type]
        assert item is not None
        await s.wait_stored(item, WAIT)

    app = build_app(lambda: Session.open(home=doctor))  # type: ignore[arg-type, return-value]
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList), timeout=WAIT)
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        queue = app.screen
        assert isinstance(queue, QueueScreen)
        await wait_for(pilot, lambda: queue.alarm.startswith("!! EMERGENCY waiting"), timeout=WAIT)
        assert consult in queue.alarm and "Ama · 40y · coughing blood" in queue.alarm
        await pilot.press("c")
        await wait_for(pilot, lambda: queue.alarm == "" and not queue.entries, timeout=WAIT)

        await pilot.press("escape")  # the list; the consult from there
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultList))
        app.open_consult(consult)
        await wait_for(pilot, lambda: in_consult(app, consult))
        view = app.screen
        await wait_for(pilot, lambda: "in consult: you" in str(view.query_one("#case").content), timeout=WAIT)
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, CaseCardForm))
        form = app.screen
        assert isinstance(form, CaseCardForm)
        form.set_value("vitals.spo2", "88%")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConsultView))
        session = app.session
        assert session is not None
        await wait_for(pilot, lambda: session.outbox_count() == 0, timeout=WAIT)  # the relay stored both

    async with Session.open(home=nurse) as s:
        await s.sync(WAIT)
        st = casework.consult_state(s, consult)
        assert (st.status.state, st.status.assignee) == ("in_consult", "dr.chen")
        assert st.card.get("vitals.spo2") == "88" and st.card.values["vitals.spo2"].by == "dr.chen"
        assert st.card.version == 2 and st.card.get("patient.id")  # the first card made the key

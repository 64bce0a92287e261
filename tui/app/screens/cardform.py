"""The case card as a form: every field of ``casecard.FIELDS``, pre-filled, checked as typed.

Each field is checked by the core's own check (``casecard.check_value``) when the cursor
leaves it, and all of them again on save; a field's error is shown on the line under it
(in words: the terminal may have no colours), and nothing is sent while any field is
wrong. Save (Ctrl+S, or the button) sends only the fields whose text was changed, as one
new version of the card (``update_case``, which drops what the card already says and adds
a patient key when a first patient detail needs one); Esc cancels and sends nothing.

Free text (complaint, history, medications, allergies) is multi-line (Enter adds a line,
Tab moves on); the other fields are one line (Enter moves on). The head says the card's
version and who changed it last, when; each field says the version that set it and by whom.
The form covers the screen at 80x24, so it has its own status line (the link, a ringing
call), like the other dialogs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Static, TextArea

from medcomm.app.widgets.caseheader import when_text
from medcomm.app.widgets.fields import Field
from medcomm.app.widgets.status import StatusLine
from medcomm.core import casecard
from medcomm.core.casecard import FIELDS, FieldSpec
from medcomm.core.workflow import ConsultState
from medcomm.errors import MedcommError

if TYPE_CHECKING:
    from medcomm.app.app import MedcommApp

# Every field shows what it takes while empty (the terminal may draw no field boxes).
HINTS = {
    "patient.id": "made when a patient is first named",
    "patient.name": "name or pseudonym",
    "patient.age": "34, 8m or 10d",
    "patient.sex": "f, m, x or unknown",
    "urgency": "emergency, urgent or routine",
    "complaint": "e.g. fever 4 days",
    "history": "e.g. since when, what was done",
    "vitals.bp": "e.g. 140/90",
    "vitals.hr": "per minute, e.g. 96",
    "vitals.rr": "per minute, e.g. 24",
    "vitals.temp": "°C, e.g. 38.5",
    "vitals.spo2": "%, e.g. 94",
    "medications": "e.g. amlodipine 5 mg daily",
    "allergies": "e.g. none known, penicillin",
}
MULTILINE = frozenset(
    f.name for f in FIELDS if f.name in ("complaint", "history", "medications", "allergies")
)
MAX_TEXT_LINES = 4


def head_text(st: ConsultState) -> str:
    card = st.card
    if not card.versions:
        return f"Case card · {st.id} · no version yet"
    last = card.versions[-1]
    queued = ", queued here" if last.pending else ""
    return (
        f"Case card · {st.id} · version {card.version} · last change {last.by}, {when_text(last.at)}{queued}"
    )


def wid(spec: FieldSpec) -> str:
    return "f-" + spec.code


class CardText(TextArea):
    """A multi-line field: as tall as its text (up to a few lines), Tab moves on."""

    DEFAULT_CSS = """
    CardText {
        height: 1;
        padding: 0;
        & .text-area--placeholder { color: $text-disabled; text-style: dim; }
    }
    """

    def __init__(self, text: str, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(
            text, soft_wrap=True, tab_behavior="focus", compact=True, placeholder=placeholder, id=id
        )
        self.cursor_blink = False

    def on_mount(self) -> None:
        self._fit()

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._fit()

    def _fit(self) -> None:
        lines = max(1, min(MAX_TEXT_LINES, self.wrapped_document.height))
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines


class CaseCardForm(ModalScreen[bool]):
    """Dismissed with True once a change was queued, False when nothing was sent."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
    ]
    DEFAULT_CSS = """
    CaseCardForm { align: center middle; }
    CaseCardForm > Vertical { width: 100%; max-width: 100; height: 100%;
                              border: round $primary; padding: 0 1; }
    CaseCardForm #card-head { height: 1; text-style: bold; }
    CaseCardForm #card-fields { height: 1fr; scrollbar-size-vertical: 0; }
    CaseCardForm .card-row { height: auto; }
    CaseCardForm .card-label { width: 16; }
    CaseCardForm .card-row Input, CaseCardForm .card-row CardText { width: 1fr; background: $boost; }
    CaseCardForm .card-row Input:focus, CaseCardForm .card-row CardText:focus { text-style: bold; }
    CaseCardForm .card-meta { width: 16; padding-left: 1; color: $text-muted; }
    CaseCardForm .card-error { height: auto; padding-left: 16; color: $error; text-style: bold;
                               display: none; }
    CaseCardForm .card-error.-on { display: block; }
    CaseCardForm #card-foot { height: 1; }
    CaseCardForm #card-hint { width: 1fr; color: $text-muted; }
    CaseCardForm #card-save { min-width: 8; height: 1; border: none; }
    CaseCardForm StatusLine { dock: bottom; }
    """

    def __init__(self, state: ConsultState) -> None:
        super().__init__()
        self.state = state
        self.consult = state.id
        self.version = state.card.version
        self.initial = {f.name: state.card.get(f.name) or "" for f in FIELDS}
        self.errors: dict[str, str] = {}
        self.saving = False

    @property
    def desk(self) -> MedcommApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        card = self.state.card
        with Vertical():
            yield Static(head_text(self.state), id="card-head", markup=False)
            with VerticalScroll(id="card-fields"):
                for spec in FIELDS:
                    value = self.initial[spec.name]
                    with Horizontal(classes="card-row"):
                        yield Label(spec.label, classes="card-label")
                        if spec.name in MULTILINE:
                            yield CardText(value, placeholder=HINTS[spec.name], id=wid(spec))
                        else:
                            yield Field(
                                value, placeholder=HINTS.get(spec.name, ""), id=wid(spec), compact=True
                            )
                        held = card.values.get(spec.name)
                        meta = f"v{held.version} {held.by}" if held is not None else ""
                        yield Static(meta, classes="card-meta", markup=False)
                    yield Static("", id="e-" + spec.code, classes="card-error", markup=False)
            with Horizontal(id="card-foot"):
                yield Static("Tab next field · Ctrl+S saves · Esc cancels", id="card-hint")
                yield Button("Save", id="card-save", variant="primary", compact=True)
        yield StatusLine(id="status")

    def on_mount(self) -> None:
        self.field(FIELDS[1]).focus()  # the patient's name: the key is made, not typed
        self.desk.refresh_status()

    # --- fields ---------------------------------------------------------------------------------

    def field(self, spec: FieldSpec) -> Widget:
        return self.query_one("#" + wid(spec))

    def value(self, spec: FieldSpec) -> str:
        widget = self.field(spec)
        return widget.text if isinstance(widget, TextArea) else widget.value  # type: ignore[attr-defined]

    def set_value(self, name: str, text: str) -> None:
        """For tests and scripts: put ``text`` in the field ``name`` as if typed."""
        widget = self.field(casecard.BY_NAME[name])
        if isinstance(widget, TextArea):
            widget.text = text
        else:
            widget.value = text  # type: ignore[attr-defined]

    def error_of(self, name: str) -> str:
        """The error shown under a field ("" when none)."""
        line = self.query_one("#e-" + casecard.BY_NAME[name].code, Static)
        return str(line.content) if line.has_class("-on") else ""

    def check(self, spec: FieldSpec) -> bool:
        """Check one field with the core's check and show (or clear) its error."""
        try:
            casecard.check_value(spec.name, self.value(spec))
        except MedcommError as exc:
            error = str(exc)
        else:
            error = ""
        if error:
            self.errors[spec.name] = error
        else:
            self.errors.pop(spec.name, None)
        line = self.query_one("#e-" + spec.code, Static)
        if str(line.content) != error or line.has_class("-on") != bool(error):
            line.update(f"! {error}" if error else "")
            line.set_class(bool(error), "-on")
        return not error

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        """Leaving a field checks it (a field never touched stays quiet)."""
        spec = next((f for f in FIELDS if event.widget.id == wid(f)), None)
        if spec is not None and (
            self.value(spec).strip() != self.initial[spec.name] or spec.name in self.errors
        ):
            self.check(spec)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_next()

    def changes(self) -> dict[str, str | None]:
        """The fields whose text differs from what the form was opened with (empty: cleared)."""
        out: dict[str, str | None] = {}
        for spec in FIELDS:
            text = self.value(spec)
            if text.strip() != self.initial[spec.name]:
                out[spec.name] = text if text.strip() else None
        return out

    # --- save / cancel --------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save()

    def action_save(self) -> None:
        if self.saving:
            return
        bad = [spec for spec in FIELDS if not self.check(spec)]
        if bad:
            self.field(bad[0]).focus()
            n = len(bad)
            self.notify(f"{n} field{'s' if n > 1 else ''} to correct: nothing was sent", timeout=5)
            return
        raw = self.changes()
        if not raw:
            self.notify("no change to the case card: nothing was sent", timeout=4)
            self.dismiss(False)
            return
        self.saving = True
        self.save(raw)

    @work(exclusive=True, group="card-save")
    async def save(self, raw: dict[str, str | None]) -> None:
        session = self.desk.session
        try:
            if session is None:
                return
            before = session.consult_state(self.consult).card.version
            item = await session.update_case(self.consult, raw)
        except MedcommError as exc:
            self.notify(f"case card not saved: {exc}", severity="error", timeout=10, markup=False)
            return
        finally:
            self.saving = False
        if item is None:
            self.notify("the case card already says that: nothing was sent", timeout=4)
            self.dismiss(False)
            return
        names = ", ".join(casecard.BY_NAME[n].label for n in raw)
        note = f"case card version {before + 1}: {names}"
        if before != self.version:
            note += f" (it had changed while you edited: version {before} kept the other fields)"
        self.notify(note, timeout=6, markup=False)
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)

"""The case card of a consult: its fields, their checks, and its versions (sans-I/O).

A clinic fills the card when it opens a consult and anyone in the consult may correct it
later. The card is not a row somewhere: every change is one kind-``case`` message in the
consult (a *version*), sent through the same durable outbox and relay as a chat line, and
every device derives the card by folding the consult's case messages in seq order. The
relay's seq is the only order, so two devices that hold the same messages show the same
card, and the last writer in seq order wins per field, never per card: a nurse correcting
the blood pressure and a doctor adding an allergy at the same moment both keep their word.

Body (msgpack map, compact keys; a few dozen bytes for a typical change)::

    {"v": 1, "s": {code: value or nil}}     value: the field's canonical text; nil clears it

Field codes are short (``bp``, ``o2``...) because every byte costs on a 24 kbit/s link.
Unknown top-level keys and unknown field codes are ignored (a later version may add
fields; an older device must still show the rest). Values from other devices pass the same
checks as typed ones before anything trusts them; a body that fails is refused whole with
a reason, and the fold keeps that reason instead of the version.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from medcomm.errors import LimitExceeded, UsageError, WireError

VERSION = 1
URGENCIES = ("emergency", "urgent", "routine")
SEXES = ("f", "m", "x", "unknown")


@dataclass(frozen=True)
class CardLimits:
    """Lengths of card text: enough for a clinical note, small enough for a slow link."""

    max_name: int = 100  # characters of a patient's name or pseudonym
    max_complaint: int = 500
    max_history: int = 4000  # about a page
    max_medications: int = 2000
    max_allergies: int = 1000
    max_body: int = 12 * 1024  # bytes of one case message (the wire allows 16 KiB)


CARD = CardLimits()

_SEX_WORDS = {
    "f": "f",
    "female": "f",
    "w": "f",
    "m": "m",
    "male": "m",
    "x": "x",
    "other": "x",
    "u": "unknown",
    "unknown": "unknown",
    "?": "unknown",
}
_PATIENT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,31}$")
_AGE = re.compile(r"^(\d{1,3})\s*(y|yr|yrs|years?|m|mo|months?|d|days?)?$")
_BP = re.compile(r"^(\d{2,3})\s*/\s*(\d{2,3})$")
_NUMBER_UNIT = re.compile(r"^(\d{1,3}(?:[.,]\d+)?)\s*([a-z%°/]*)$")


def _bad(name: str, why: str) -> UsageError:
    return UsageError(f"{name}: {why}")


def _text(limit: int, one_line: bool) -> Callable[[str, str], str]:
    def check(name: str, raw: str) -> str:
        value = raw.strip()
        if one_line and ("\n" in value or "\r" in value):
            raise _bad(name, "must be one line")
        if len(value) > limit:
            raise _bad(name, f"{len(value)} characters, at most {limit}")
        if any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise _bad(name, "control characters are not allowed")
        return value

    return check


def _number(name: str, raw: str, units: tuple[str, ...]) -> float:
    m = _NUMBER_UNIT.fullmatch(raw.strip().lower())
    if not m or (m.group(2) and m.group(2) not in units):
        raise _bad(name, f"{raw!r} is not a number" + (f" (units: {', '.join(units)})" if units else ""))
    return float(m.group(1).replace(",", "."))


def _int_range(lo: int, hi: int, units: tuple[str, ...], what: str) -> Callable[[str, str], str]:
    def check(name: str, raw: str) -> str:
        n = _number(name, raw, units)
        if n != int(n) or not lo <= n <= hi:
            raise _bad(name, f"{raw!r} is not {what} (a whole number from {lo} to {hi})")
        return str(int(n))

    return check


def _age(name: str, raw: str) -> str:
    m = _AGE.fullmatch(raw.strip().lower())
    if not m:
        raise _bad(name, f"{raw!r} is not an age: years (34), months (8m) or days (10d)")
    n, unit = int(m.group(1)), (m.group(2) or "y")[0]
    hi = {"y": 130, "m": 59, "d": 90}[unit]
    if n > hi:
        raise _bad(name, f"{raw!r} is out of range (years 0-130, months 0-59, days 0-90)")
    return str(n) if unit == "y" else f"{n}{unit}"


def _sex(name: str, raw: str) -> str:
    value = _SEX_WORDS.get(raw.strip().lower())
    if value is None:
        raise _bad(name, f"{raw!r} is not one of {', '.join(SEXES)}")
    return value


def _bp(name: str, raw: str) -> str:
    m = _BP.fullmatch(raw.strip().lower().removesuffix("mmhg").strip())
    if not m:
        raise _bad(name, f"{raw!r} is not a blood pressure like 140/90 (mmHg)")
    sys_, dia = int(m.group(1)), int(m.group(2))
    if not (40 <= sys_ <= 300 and 20 <= dia <= 200 and sys_ > dia):
        raise _bad(name, f"{raw!r} is out of range (systolic 40-300 above diastolic 20-200)")
    return f"{sys_}/{dia}"


def _temp(name: str, raw: str) -> str:
    t = _number(name, raw, ("c", "°c", "°"))
    if 90 <= t <= 110:
        raise _bad(name, f"{raw!r} looks like °F: give °C (25-45)")
    if not 25 <= t <= 45:
        raise _bad(name, f"{raw!r} is out of range (25-45 °C)")
    return f"{t:.1f}"


def _urgency(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in URGENCIES:
        raise _bad(name, f"{raw!r} is not one of {', '.join(URGENCIES)}")
    return value


def _patient_id(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if not _PATIENT_ID.fullmatch(value):
        raise _bad(name, f"{raw!r} is not a patient key (3-32 letters, digits or -)")
    return value


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str  # dotted, as typed: vitals.bp
    code: str  # on the wire
    label: str  # as shown
    check: Callable[[str, str], str]


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("patient.id", "pi", "patient key", _patient_id),
    FieldSpec("patient.name", "pn", "patient", _text(CARD.max_name, True)),
    FieldSpec("patient.age", "pa", "age", _age),
    FieldSpec("patient.sex", "ps", "sex", _sex),
    FieldSpec("urgency", "ur", "urgency", _urgency),
    FieldSpec("complaint", "cc", "chief complaint", _text(CARD.max_complaint, False)),
    FieldSpec("history", "hx", "history", _text(CARD.max_history, False)),
    FieldSpec("vitals.bp", "bp", "BP (mmHg)", _bp),
    FieldSpec("vitals.hr", "hr", "HR (/min)", _int_range(20, 300, ("bpm", "/min"), "a heart rate")),
    FieldSpec("vitals.rr", "rr", "RR (/min)", _int_range(4, 120, ("/min",), "a respiratory rate")),
    FieldSpec("vitals.temp", "tp", "temp (°C)", _temp),
    FieldSpec("vitals.spo2", "o2", "SpO2 (%)", _int_range(0, 100, ("%",), "a saturation")),
    FieldSpec("medications", "md", "medications", _text(CARD.max_medications, False)),
    FieldSpec("allergies", "al", "allergies", _text(CARD.max_allergies, False)),
)
BY_NAME = {f.name: f for f in FIELDS}
BY_CODE = {f.code: f for f in FIELDS}
ALIASES = {
    "name": "patient.name",
    "age": "patient.age",
    "sex": "patient.sex",
    "patient": "patient.name",
    "bp": "vitals.bp",
    "hr": "vitals.hr",
    "rr": "vitals.rr",
    "temp": "vitals.temp",
    "spo2": "vitals.spo2",
    "meds": "medications",
    "patient_id": "patient.id",
}
PATIENT_FIELDS = ("patient.name", "patient.age", "patient.sex")


def field_name(key: str) -> str:
    """A typed key (dotted name or a short alias such as ``bp``) as its field name."""
    k = key.strip().lower()
    name = ALIASES.get(k, k)
    if name not in BY_NAME:
        raise UsageError(f"unknown case field {key!r}: use one of {', '.join(BY_NAME)}")
    return name


def check_value(name: str, raw: str | None) -> str | None:
    """The canonical value of a field (``None`` clears it: empty text does too)."""
    spec = BY_NAME[field_name(name)]
    if raw is None or not raw.strip():
        return None
    return spec.check(spec.name, raw)


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``--set key=value`` items as {field name: raw value}; UsageError names a bad one."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: expected key=value, e.g. vitals.bp=140/90")
        out[field_name(key)] = value
    return out


# --- versions and the folded card ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class Version:
    """One case message: its number among the card's versions, who, when, what changed."""

    number: int
    seq: int | None  # None while it waits in this device's outbox
    by: str
    at: int  # ms (relay time once stored, this device's clock while queued)
    changes: tuple[Change, ...]

    @property
    def pending(self) -> bool:
        return self.seq is None


@dataclass(frozen=True, slots=True)
class FieldValue:
    value: str
    version: int
    by: str
    at: int


@dataclass
class Card:
    """The folded card: current values (with who set them when), every version, and the
    case messages that could not be read (kept with their reason, never dropped quietly)."""

    values: dict[str, FieldValue] = field(default_factory=dict)
    versions: list[Version] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        v = self.values.get(name)
        return None if v is None else v.value

    @property
    def version(self) -> int:
        return len(self.versions)

    def as_dict(self) -> dict[str, str | None]:
        return {f.name: self.get(f.name) for f in FIELDS}

    def patient_line(self) -> str:
        """``Amina K. · 34 · f`` (what the queue and the lists show)."""
        parts = [
            self.get("patient.name") or "",
            age_text(self.get("patient.age")),
            self.get("patient.sex") or "",
        ]
        return " · ".join(p for p in parts if p)

    def apply(self, seq: int | None, by: str, at: int, body: bytes) -> Version | None:
        """Fold one case message (in seq order); a bad one is recorded in ``problems``."""
        try:
            values = decode(body)
        except WireError as exc:
            self.problems.append(f"#{seq if seq is not None else '-'} from {by}: {exc}")
            return None
        number = len(self.versions) + 1
        changes = []
        for name, value in values.items():
            old = self.get(name)
            if value == old:
                continue
            changes.append(Change(name, old, value))
            if value is None:
                self.values.pop(name, None)
            else:
                self.values[name] = FieldValue(value, number, by, at)
        version = Version(number, seq, by, at, tuple(changes))
        self.versions.append(version)
        return version


def age_text(age: str | None) -> str:
    if not age:
        return ""
    return age if age[-1] in "md" else f"{age}y"


def prepare(
    card: Card, raw: dict[str, str | None], new_patient_id: Callable[[], str]
) -> dict[str, str | None]:
    """Check typed changes against the current card: canonical values of the fields that
    really change (empty: nothing to send). A first patient detail without a patient key
    gets a generated one in the same version, so the patient's later consults can link."""
    changes: dict[str, str | None] = {}
    for key, value in raw.items():
        name = field_name(key)
        canon = check_value(name, value)
        if canon != card.get(name):
            changes[name] = canon
    has_patient = any((changes[n] if n in changes else card.get(n)) for n in PATIENT_FIELDS)
    key_after = changes["patient.id"] if "patient.id" in changes else card.get("patient.id")
    if has_patient and not key_after:
        changes["patient.id"] = _patient_id("patient.id", new_patient_id())
    return changes


# --- the body -----------------------------------------------------------------------------


def encode(changes: dict[str, str | None], limits: CardLimits = CARD) -> bytes:
    """A case message body for already checked changes."""
    if not changes:
        raise UsageError("no change to the case card")
    body = msgpack.packb(
        {"v": VERSION, "s": {BY_NAME[n].code: v for n, v in changes.items()}}, use_bin_type=True
    )
    if len(body) > limits.max_body:
        raise LimitExceeded(f"case change of {len(body)} bytes over the limit of {limits.max_body}")
    return body


def unpack_map(body: bytes, limit: int, what: str) -> dict[str, Any]:
    """A versioned msgpack map from another device, bounded before it is decoded."""
    if len(body) > limit:
        raise WireError(f"{what} of {len(body)} bytes over the limit of {limit}")
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, max_array_len=64, max_map_len=64)
    except Exception:
        raise WireError(f"{what} is not msgpack") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WireError(f"{what} is not a map")
    v = obj.get("v")
    if type(v) is not int or v < 1:
        raise WireError(f"{what} has no version")
    return obj


def decode(body: bytes, limits: CardLimits = CARD) -> dict[str, str | None]:
    """Field name -> canonical value (None: cleared), checked like typed values."""
    obj = unpack_map(body, limits.max_body, "case change")
    s = obj.get("s")
    if not isinstance(s, dict) or not all(isinstance(k, str) for k in s):
        raise WireError("case change has no field map")
    out: dict[str, str | None] = {}
    for code, value in s.items():
        spec = BY_CODE.get(code)
        if spec is None:
            continue  # a field from a later version: ignored, the rest still counts
        if value is not None and not isinstance(value, str):
            raise WireError(f"case change: {spec.name} is not text")
        try:
            out[spec.name] = None if value is None or not value.strip() else spec.check(spec.name, value)
        except UsageError as exc:
            raise WireError(f"case change: {exc}") from None
    return out


def describe(body: bytes) -> str:
    """A case message as a history line: ``case: vitals.bp=140/90, urgency=urgent``."""
    try:
        values = decode(body)
    except WireError as exc:
        return f"(unreadable case change: {exc})"
    shown = ", ".join(f"{n}={_short(v) if v is not None else '(cleared)'}" for n, v in values.items())
    return "case: " + (shown or "(no known field)")


def _short(text: str, limit: int = 60) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"

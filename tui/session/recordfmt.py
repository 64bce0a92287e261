"""What a consult's record says, and how Markdown, HTML and PDF write it (no I/O here).

:mod:`medcomm.session.export` gathers a :class:`Record` from the device; the renderers here
turn it into text or PDF bytes. All three formats share :func:`sections` (the same rows in
the same order), then the conversation and the images. Markdown keeps every text exact;
HTML escapes everything it did not write itself and carries its pictures as ``data:``
URIs; the PDF (:mod:`medcomm.adapters.pdf`, imported on use) writes characters no font
covers as ``[U+XXXX]`` and announces them on its first page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medcomm.core.casecard import FIELDS
from medcomm.core.workflow import ConsultState

if TYPE_CHECKING:
    from medcomm.adapters.localstore import Line


@dataclass
class Picture:
    label: str
    mime: str
    data: bytes


@dataclass
class ImageRecord:
    id: str
    seq: int | None
    time: int
    sender: str
    description: str
    first: Picture | None
    tiles: list[Picture] = field(default_factory=list)
    tiles_here: int = 0
    tiles_total: int = 0


@dataclass
class CallRecord:
    seq: int
    time: int
    caller: str
    members: list[str]
    outcome: str
    duration_s: float
    kbps: dict[str, float]


@dataclass
class Record:
    state: ConsultState
    lines: list[Line]
    images: list[ImageRecord]
    calls: list[CallRecord]
    linked: list[ConsultState]
    exported_by: str
    exported_at: int
    tz: dt.tzinfo


# --- words shared by the formats --------------------------------------------------------------


def when(ms: int, tz: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def _status_word(s: str) -> str:
    return s.replace("_", " ")


def card_rows(rec: Record) -> list[tuple[str, str, str]]:
    """(label, value, who/when) of each card field that has a value."""
    out = []
    for f in FIELDS:
        v = rec.state.card.values.get(f.name)
        if v is not None:
            out.append((f"{f.label} ({f.name})", v.value, f"v{v.version}, {v.by}, {when(v.at, rec.tz)}"))
    return out


def version_rows(rec: Record) -> list[tuple[str, str]]:
    out = []
    for v in rec.state.card.versions:
        where = f"#{v.seq}" if v.seq is not None else "queued"
        head = f"v{v.number} · {where} · {v.by} · {when(v.at, rec.tz)}"
        changes = "; ".join(f"{c.field}: {c.old or '(empty)'} → {c.new or '(cleared)'}" for c in v.changes)
        out.append((head, changes or "(no change)"))
    return out


def status_rows(rec: Record) -> list[tuple[str, str]]:
    out = []
    for c in rec.state.status.history:
        head = f"{when(c.at, rec.tz)} · {c.by} · {'#' + str(c.seq) if c.seq is not None else 'queued'}"
        if c.op == "claim":
            what = f"claimed: {_status_word(c.before)} → {_status_word(c.after)}"
        elif c.op == "assign":
            what = f"assigned to {c.assignee or 'nobody'}"
        else:
            what = f"{_status_word(c.before)} → {_status_word(c.after)}"
        if c.advice:
            what += f" — advice: {c.advice}"
        if not c.applied:
            what += f" [not applied: {c.note}]"
        out.append((head, what))
    return out


def summary_rows(rec: Record) -> list[tuple[str, str]]:
    st = rec.state
    s = st.status
    rows = [
        ("consult", f"{st.id} — {st.title}"),
        ("members", ", ".join(st.members)),
        ("opened", f"{when(st.opened_at, rec.tz)} by {st.opened_by}" if st.opened_at else "?"),
        (
            "status",
            f"{_status_word(s.state)} since {when(s.since, rec.tz)}" if s.since else _status_word(s.state),
        ),
        ("assigned to", s.assignee or "nobody"),
        ("exported", f"{when(rec.exported_at, rec.tz)} by {rec.exported_by} (times: {_tz_name(rec)})"),
    ]
    return rows


def _tz_name(rec: Record) -> str:
    return dt.datetime.fromtimestamp(rec.exported_at / 1000, rec.tz).strftime("UTC%z")


def followup_rows(rec: Record) -> list[tuple[str, str]]:
    out = []
    for f in sorted(rec.state.followups.values(), key=lambda f: (f.due, f.id)):
        state = f.state if f.state == "open" else f"{f.state} by {f.closed_by}, {when(f.closed_at, rec.tz)}"
        out.append(
            (f"{f.id} due {f.due.isoformat()}", f"{f.reason} — set by {f.by}, {when(f.at, rec.tz)}; {state}")
        )
    return out


def linked_rows(rec: Record) -> list[tuple[str, str]]:
    out = []
    for o in rec.linked:
        advice = f" — advice: {o.status.advice}" if o.status.advice else ""
        out.append(
            (
                f"{o.id} · {when(o.opened_at, rec.tz)}",
                f"{o.title} — {o.card.get('complaint') or ''} ({_status_word(o.status.state)}){advice}",
            )
        )
    return out


def advice_rows(rec: Record) -> list[tuple[str, str]]:
    return [
        (f"{when(c.at, rec.tz)} · {c.by}", c.advice)
        for c in rec.state.status.history
        if c.applied and c.after == "advised" and c.advice
    ]


def line_head(line: Line, tz: dt.tzinfo) -> str:
    seq = f"#{line.seq}" if line.seq is not None else "#- (queued)"
    return f"{seq} · {when(line.time, tz)} · {line.sender} · {line.kind}"


def call_rows(rec: Record) -> list[tuple[str, str]]:
    out = []
    for c in rec.calls:
        secs = int(c.duration_s)
        rates = ", ".join(f"{u} {v:.1f}" for u, v in c.kbps.items())
        out.append(
            (
                f"#{c.seq} · {when(c.time, rec.tz)} · {c.caller}",
                f"{c.outcome or 'ended'}, {secs // 60}:{secs % 60:02d}, with {', '.join(c.members)}"
                + (f" (kbit/s up: {rates})" if rates else ""),
            )
        )
    return out


def sections(rec: Record) -> list[tuple[str, list[tuple[str, str]]]]:
    """The record's sections as (title, rows), in the order every format writes them; the
    conversation and the images follow."""
    card = [(label, f"{value}   [{who}]") for label, value, who in card_rows(rec)]
    return [
        ("Consult", summary_rows(rec)),
        (f"Case card (version {rec.state.card.version})", card or [("(empty)", "")]),
        ("Advice", advice_rows(rec) or [("(none yet)", "")]),
        ("Status history", status_rows(rec) or [("(no change since the consult was opened)", "")]),
        ("Follow-ups", followup_rows(rec) or [("(none)", "")]),
        ("Case card versions", version_rows(rec) or [("(none)", "")]),
        ("Earlier and later consults of this patient", linked_rows(rec) or [("(none on this device)", "")]),
        ("Call log", call_rows(rec) or [("(no calls)", "")]),
        *(
            [("Messages that could not be read", [(p, "") for p in rec.state.problems])]
            if rec.state.problems
            else []
        ),
    ]


# --- Markdown and HTML ----------------------------------------------------------------------


def _indent(text: str, pad: str = "  ") -> str:
    return text.replace("\n", "\n" + pad)


def _data_uri(p: Picture) -> str:
    return f"data:{p.mime};base64,{base64.b64encode(p.data).decode()}"


def render_md(rec: Record) -> str:
    st = rec.state
    out = [f"# Consult {st.id}: {st.title}", ""]
    for title, rows in sections(rec):
        out += [f"## {title}", ""]
        out += [f"- **{_indent(a)}**" + (f": {_indent(b)}" if b else "") for a, b in rows]
        out.append("")
    out += [f"## Conversation ({len(rec.lines)} messages)", ""]
    for line in rec.lines:
        out += [f"- {line_head(line, rec.tz)} [{line.state}]", f"  {_indent(line.text)}"]
    out.append("")
    out += [f"## Images ({len(rec.images)})", ""]
    for im in rec.images:
        out += [f"### Image {im.id} · {im.sender} · {when(im.time, rec.tz)}", "", im.description, ""]
        out += _pictures_md(im)
    return "\n".join(out) + "\n"


def _pictures_md(im: ImageRecord) -> list[str]:
    out = []
    if im.first is not None:
        out += [f"![{im.first.label}]({_data_uri(im.first)})", "", f"*{im.first.label}*", ""]
    else:
        out += ["*first view not on this device*", ""]
    out += [_tiles_line(im), ""]
    for t in im.tiles:
        out += [f"![{t.label}]({_data_uri(t)})", "", f"*{t.label}*", ""]
    return out


def _tiles_line(im: ImageRecord) -> str:
    if not im.tiles_total:
        return "Detail tiles: none."
    left = im.tiles_here - len(im.tiles)
    more = f"; {left} more opened here, left out of this file" if left else ""
    return f"Detail tiles opened on this device: {im.tiles_here} of {im.tiles_total}{more}."


_CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em;color:#111}"
    "dt{font-weight:bold}dd{margin:0 0 .4em 1.5em;white-space:pre-wrap}"
    ".msg{border-top:1px solid #ccc;padding:.3em 0}.head{color:#555;font-size:.9em}"
    ".text{white-space:pre-wrap}img{max-width:100%;border:1px solid #999}figure{margin:.5em 0}"
)


def render_html(rec: Record) -> str:
    e = html.escape
    st = rec.state
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>Consult {e(st.id)}: {e(st.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Consult {e(st.id)}: {e(st.title)}</h1>",
    ]
    for title, rows in sections(rec):
        out.append(f"<h2>{e(title)}</h2><dl>")
        out += [f"<dt>{e(a)}</dt><dd>{e(b)}</dd>" for a, b in rows]
        out.append("</dl>")
    out.append(f"<h2>Conversation ({len(rec.lines)} messages)</h2>")
    for line in rec.lines:
        out.append(
            f'<div class="msg"><div class="head">{e(line_head(line, rec.tz))} [{e(line.state)}]</div>'
            f'<div class="text">{e(line.text)}</div></div>'
        )
    out.append(f"<h2>Images ({len(rec.images)})</h2>")
    for im in rec.images:
        out.append(
            f"<h3>Image {e(im.id)} · {e(im.sender)} · {e(when(im.time, rec.tz))}</h3>"
            f"<p>{e(im.description)}</p>"
        )
        pics = ([im.first] if im.first is not None else []) + im.tiles
        if im.first is None:
            out.append("<p><em>first view not on this device</em></p>")
        for p in pics:
            out.append(
                f'<figure><img alt="{e(p.label)}" src="{_data_uri(p)}">'
                f"<figcaption>{e(p.label)}</figcaption></figure>"
            )
            if p is im.first:
                out.append(f"<p>{e(_tiles_line(im))}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- PDF ------------------------------------------------------------------------------------


def render_pdf(rec: Record, fonts: Any = None) -> tuple[bytes, list[str]]:
    """The PDF and the characters it could not draw (written as [U+XXXX], announced on
    its first page)."""
    from medcomm.adapters import pdf

    st = rec.state
    doc = pdf.PdfDoc(f"Consult {st.id}", fonts)
    missing = doc.uncovered(render_md(_without_pictures(rec)))
    doc.heading(f"Consult {st.id}: {st.title}")
    if missing:
        doc.notice(pdf.missing_notice(missing))
    for title, rows in sections(rec):
        doc.heading(title, 2)
        for a, b in rows:
            if b:
                doc.field(a, b)
            else:
                doc.text(a, bold=True)
    doc.heading(f"Conversation ({len(rec.lines)} messages)", 2)
    for line in rec.lines:
        doc.text(f"{line_head(line, rec.tz)} [{line.state}]", bold=True, size=9)
        doc.text(line.text, indent=4)
    doc.heading(f"Images ({len(rec.images)})", 2)
    for im in rec.images:
        doc.heading(f"Image {im.id[:12]} · {im.sender} · {when(im.time, rec.tz)}", 3)
        doc.text(im.description, size=9)
        if im.first is None:
            doc.text("first view not on this device", size=9)
        for p in ([im.first] if im.first is not None else []) + im.tiles:
            picture = pdf.decode_picture(p.data)
            if picture is None:
                doc.text(f"{p.label}: does not decode", size=9)
            else:
                doc.picture(picture, p.label)
            if p is im.first:
                doc.text(_tiles_line(im), size=9)
    return doc.output(), missing


def _without_pictures(rec: Record) -> Record:
    return Record(rec.state, rec.lines, [], rec.calls, rec.linked, rec.exported_by, rec.exported_at, rec.tz)

"""The consult record as Markdown, HTML and PDF: every message in the file, the card, the
status history, advice, follow-ups, calls, images (first view and the tiles opened here),
Chinese text, and only the one file written.

One real consult is built once per test through a real relay: a card, chat in English and
Chinese, an image with its detail, a claim, advice, a follow-up and a call."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcomm.adapters import pdf
from medcomm.adapters.blobcache import blob_file
from medcomm.core import filecrypt
from medcomm.core.tiles import Region
from medcomm.session import casework, export, imagefetch, images
from medcomm.session.service import Session

pytestmark = pytest.mark.timeout(120)
WAIT = 20.0
TZ = dt.timezone(dt.timedelta(hours=8))
TEXTS = [
    "Temp 39.2, RR 44, SpO2 91%",
    "咳嗽三周，夜间加重",
    "<script>alert('x')</script> & <b>not bold</b>",
    "line one\nline two",
]


def picture(path: Path) -> None:
    yy, xx = np.mgrid[0:700, 0:1300].astype(np.float32)
    a = np.stack(
        [128 + 100 * np.sin(xx / 97), 128 + 100 * np.cos(yy / 61), 128 + 60 * np.sin((xx + yy) / 151)], 2
    )
    Image.fromarray(a.astype(np.uint8)).save(path, "PNG")


@pytest.fixture
async def record(pair: tuple[Path, Path, str], tmp_path: Path) -> tuple[Path, str, str]:
    """The doctor's home, the consult, and the image's id."""
    nurse, doctor, consult = pair
    picture(tmp_path / "film.png")
    async with Session.open(home=nurse) as s:
        card = {
            "patient.name": "王小明",
            "patient.age": "6",
            "urgency": "urgent",
            "complaint": "发热四天 fever",
            "vitals.temp": "39.2",
            "allergies": "penicillin",
        }
        await s.wait_stored(await casework.update_case(s, consult, card), WAIT)
        for text in TEXTS:
            await s.wait_stored(await s.queue_text(consult, text), WAIT)
        shared = await images.share(
            s, consult, tmp_path / "film.png", as_kind="photo", caption="胸片 chest", timeout=WAIT
        )
        await images.send_pending_images(s, WAIT)
    async with Session.open(home=doctor) as s:
        await s.sync(WAIT)
        await s.wait_stored(await casework.claim(s, consult), WAIT)
        loc = await imagefetch.find_image(s, shared.cid.hex(), WAIT)
        await imagefetch.fetch_region(s, loc, Region(0, 0, 500, 500), None, WAIT)  # opens one native tile
        assert await export.fetch_first_views(s, consult, WAIT) == 1  # what `medcomm export` does
        assert await export.fetch_first_views(s, consult, WAIT) == 0  # here now: not fetched again
        call = await s.link.request("call", {"consult": consult}, WAIT)
        await s.link.request("hangup", {"call": call["call"]}, WAIT)  # type: ignore[index]
        advice = "Amoxicillin 50 mg/kg/day for 5 days; 复诊 in 2 days"
        await s.wait_stored(await casework.set_status(s, consult, "advised", advice), WAIT)
        item, _ = await casework.add_followup(s, consult, dt.date(2031, 1, 2), "recheck chest 胸部")
        await s.wait_stored(item, WAIT)
        deadline = time.monotonic() + WAIT
        while not any(ln.kind == "call" for ln in s.history(consult)) and time.monotonic() < deadline:
            await s.sync(WAIT)
    return doctor, consult, shared.cid.hex()


async def exported(home: Path, consult: str, fmt: str, out: Path):
    async with Session.open(home=home, connect=False) as s:
        done = export.export(s, consult, fmt, out, int(time.time() * 1000), TZ)
        return done, s.history(consult), casework.consult_state(s, consult)


async def cached_first(home: Path, image: str) -> bytes:
    async with Session.open(home=home, connect=False) as s:
        loc = imagefetch.locate_image(s, image)
        sealed = blob_file(s.store.path.parent / "blobs", loc.info.first.sha).read_bytes()
        return filecrypt.unseal(loc.info.key, sealed)  # the cache holds what the relay does


async def test_markdown_has_every_message_and_the_whole_record(record, tmp_path: Path) -> None:
    home, consult, image = record
    out = tmp_path / "out" / "record.md"
    out.parent.mkdir()
    done, lines, state = await exported(home, consult, "md", out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["record.md"]  # one file, the one named
    text = out.read_text("utf-8")
    assert done.size == len(text.encode()) and done.messages == len(lines) and done.images == 1
    kinds = {ln.kind for ln in lines}
    assert {"system", "case", "text", "image", "status", "followup", "call"} <= kinds
    for ln in lines:  # every message, with its seq, time, author and exact text
        at = dt.datetime.fromtimestamp(ln.time / 1000, TZ)
        head = f"#{ln.seq} · {at:%Y-%m-%d %H:%M} · {ln.sender} · {ln.kind}"
        assert head in text, head
        assert ln.text.replace("\n", "\n  ") in text, ln.text
    for t in TEXTS:
        assert t.replace("\n", "\n  ") in text
    # the card now, its versions, status history with who, advice, follow-up, call log
    assert "王小明" in text and "发热四天 fever" in text and "penicillin" in text
    assert f"patient key (patient.id)**: {state.card.get('patient.id')}" in text
    assert re.search(r"v1 · #\d+ · amina", text)  # the card's first version, by the nurse
    assert "dr.chen · #" in text and "claimed: waiting → in consult" in text
    assert "in consult → advised — advice: Amoxicillin 50 mg/kg/day for 5 days; 复诊 in 2 days" in text
    assert "due 2031-01-02**: recheck chest 胸部 — set by dr.chen" in text
    assert re.search(r"## Call log\n\n- \*\*#\d+ · .* · dr\.chen\*\*: cancelled, 0:00, with", text)
    # the image: its first view inline, and the one tile opened on the doctor's device
    first = await cached_first(home, image)
    assert base64.b64encode(first).decode() in text
    assert "Detail tiles opened on this device: 1 of 9." in text
    assert "![tile 0/0/0" in text
    assert text.count("data:image/") == 2


async def test_html_is_self_contained_and_escaped(record, tmp_path: Path) -> None:
    home, consult, image = record
    out = tmp_path / "record.html"
    _, lines, _ = await exported(home, consult, "html", out)
    doc = out.read_text("utf-8")
    assert (
        "<script>" not in doc and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in doc
    )
    for ln in lines:
        assert html.escape(ln.text) in doc, ln.text
        assert html.escape(ln.sender) in doc
    assert "咳嗽三周，夜间加重" in doc and '<meta charset="utf-8">' in doc
    assert "http://" not in doc and "https://" not in doc  # nothing to fetch: self-contained
    first = await cached_first(home, image)
    assert base64.b64encode(first).decode() in doc and doc.count('<img alt="') == 2


def pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return "".join("".join(page.extract_text().split()) for page in PdfReader(path).pages)


def squash(text: str) -> str:
    return "".join(text.split())


async def test_pdf_has_every_message_pictures_and_chinese(record, tmp_path: Path) -> None:
    from pypdf import PdfReader

    home, consult, _ = record
    out = tmp_path / "record.pdf"
    done, lines, _ = await exported(home, consult, "pdf", out)
    assert out.read_bytes().startswith(b"%PDF-")
    got = pdf_text(out)
    cjk = any(
        p.name.startswith(("wqy", "NotoSansCJK", "DroidSansFallback")) for p in pdf.find_fonts().fallbacks
    )
    for ln in lines:
        want = squash(ln.text)
        if not cjk:  # no Chinese font here: each character is written as its code, never dropped
            want = "".join(c if ord(c) < 0x2E80 else f"[U+{ord(c):04X}]" for c in want)
        assert want in got, ln.text
        assert squash(f"#{ln.seq}") in got
    if cjk:
        assert done.missing == [] and "王小明" in got and "咳嗽三周，夜间加重" in got
        assert "could not be drawn" not in got
    else:
        assert "王" in done.missing and "[U+738B]" in got and squash("could not be drawn") in got
    pictures = sum(len(page.images) for page in PdfReader(out).pages)
    assert pictures == 2  # the first view and the tile opened here


async def test_pdf_without_a_font_for_chinese_says_so(record, tmp_path: Path, monkeypatch) -> None:
    home, consult, _ = record
    dejavu = pdf.find_fonts({}).main
    if dejavu is None:
        pytest.skip("no TrueType font on this machine")
    monkeypatch.setenv("MEDCOMM_PDF_FONTS", str(dejavu))
    out = tmp_path / "latin.pdf"
    done, lines, _ = await exported(home, consult, "pdf", out)
    assert {"王", "小", "明", "咳"} <= set(done.missing)
    got = pdf_text(out)
    assert squash("could not be drawn") in got and "U+738B" in got
    assert "[U+738B][U+5C0F][U+660E]" in got  # 王小明, written as codes in place, not dropped
    assert squash("Temp 39.2, RR 44, SpO2 91%") in got


async def test_unknown_format_and_unwritable_file_are_refused(record, tmp_path: Path) -> None:
    from medcomm.errors import UsageError

    home, consult, _ = record
    with pytest.raises(UsageError, match="md, html, pdf"):
        await exported(home, consult, "docx", tmp_path / "x.docx")
    with pytest.raises(UsageError, match="cannot write"):
        await exported(home, consult, "md", tmp_path / "missing-dir" / "x.md")
    assert not (tmp_path / "x.docx").exists()


def test_pictures_that_do_not_decode_are_named_not_fatal() -> None:
    assert pdf.decode_picture(b"not a picture") is None
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    assert pdf.decode_picture(buf.getvalue()).size == (4, 4)


def test_pdf_with_no_truetype_font_still_writes_latin_and_names_the_rest(tmp_path: Path) -> None:
    from pypdf import PdfReader

    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font")
    doc = pdf.PdfDoc("t", pdf.FontSet(None, None, [broken]))  # no main font: the PDF core font
    assert doc.uncovered("café 王 ok") == ["王"]
    doc.text("café 王 ok")
    out = tmp_path / "t.pdf"
    out.write_bytes(doc.output())
    assert squash(PdfReader(out).pages[0].extract_text()) == "café[U+738B]ok"
    assert doc.missing == {"王": 1}
    dejavu = pdf.find_fonts({}).main
    if dejavu is not None:  # a broken fallback font is passed over, the rest still works
        doc = pdf.PdfDoc("t", pdf.FontSet(dejavu, None, [broken]))
        assert doc.uncovered("café → 王") == ["王"]

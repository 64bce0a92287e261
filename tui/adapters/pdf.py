"""PDF pages without a browser: fpdf2 with the Unicode fonts this machine has.

A consult record is written in English, Chinese, and whatever a clinic types, so the PDF
uses a TrueType font found on the system (DejaVu, Noto, Liberation...) and, behind it,
fallback fonts for scripts it lacks (WenQuanYi, Noto CJK, Droid Sans Fallback...). fpdf2
draws a character no font has as nothing, which on a clinical record is a lie by omission;
so every character is checked against the fonts' character maps first, and one that none
covers is written as ``[U+75C5]`` and listed (``missing``) for a notice at the top of the
PDF and a line on stderr. ``MEDCOMM_PDF_FONTS`` (font files, ``:``-separated: the main font
first, then fallbacks) overrides the search.

fpdf2 and fontTools are imported here only, on the export path.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
MAIN_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "FreeSans.ttf")
BOLD_FONTS = {
    "DejaVuSans.ttf": "DejaVuSans-Bold.ttf",
    "NotoSans-Regular.ttf": "NotoSans-Bold.ttf",
    "LiberationSans-Regular.ttf": "LiberationSans-Bold.ttf",
    "FreeSans.ttf": "FreeSansBold.ttf",
}
FALLBACK_FONTS = (
    "wqy-microhei.ttc",
    "wqy-zenhei.ttc",
    "NotoSansCJK-Regular.ttc",
    "NotoSansCJKsc-Regular.otf",
    "NotoSansSC-Regular.otf",
    "NotoSansSC-Regular.ttf",
    "DroidSansFallbackFull.ttf",
    "DroidSansFallback.ttf",
    "uming.ttc",
    "ukai.ttc",
    "NotoSansDevanagari-Regular.ttf",
    "NotoSansArabic-Regular.ttf",
    "NotoSansThai-Regular.ttf",
)
MAX_FONT_FILES = 20000  # files looked at while searching the font folders


@dataclass(frozen=True)
class PageLimits:
    dpi: float = 150.0  # pixels per inch a picture is shown at (a 512 px tile: 87 mm)
    max_picture_h: float = 200.0  # mm: a tall picture is scaled to fit a page
    margin: float = 15.0  # mm
    jpeg_quality: int = 88  # pictures are re-encoded once for the PDF (first views are already lossy)


PAGE = PageLimits()


@dataclass
class FontSet:
    main: Path | None
    bold: Path | None = None
    fallbacks: list[Path] = field(default_factory=list)


def find_fonts(env: dict[str, str] | None = None) -> FontSet:
    """The fonts to use: ``MEDCOMM_PDF_FONTS`` if set, else the first main font and every
    fallback font found under the usual font folders."""
    env = dict(os.environ) if env is None else env
    forced = [Path(p) for p in env.get("MEDCOMM_PDF_FONTS", "").split(":") if p.strip()]
    if forced:
        return FontSet(forced[0], None, forced[1:])
    found: dict[str, Path] = {}
    seen = 0
    for root in FONT_DIRS:
        base = Path(root).expanduser()
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                seen += 1
                found.setdefault(name, Path(dirpath) / name)
            if seen > MAX_FONT_FILES:
                break
    main = next((found[n] for n in MAIN_FONTS if n in found), None)
    bold = found.get(BOLD_FONTS.get(main.name, "")) if main is not None else None
    return FontSet(main, bold, [found[n] for n in FALLBACK_FONTS if n in found])


def _cmap(path: Path) -> set[int]:
    from fontTools.ttLib import TTFont

    font = TTFont(str(path), fontNumber=0, lazy=True)
    try:
        return set(font.getBestCmap() or {})
    finally:
        font.close()


class PdfDoc:
    """A simple flowing document: headings, paragraphs, label/value lines, pictures."""

    def __init__(self, title: str, fonts: FontSet | None = None, limits: PageLimits = PAGE) -> None:
        from fpdf import FPDF

        self.limits = limits
        self.fonts = fonts if fonts is not None else find_fonts()
        self.pdf = FPDF(format="A4", unit="mm")
        self.pdf.set_margins(limits.margin, limits.margin, limits.margin)
        self.pdf.set_auto_page_break(True, limits.margin)
        self.pdf.set_title(self._safe_meta(title))
        self.pdf.set_creator("medcomm")
        self.covered: set[int] = set()
        self.family = "helvetica"
        self.missing: Counter[str] = Counter()
        if self.fonts.main is not None:
            self.pdf.add_font("main", "", str(self.fonts.main))
            self.pdf.add_font("main", "B", str(self.fonts.bold or self.fonts.main))
            self.family = "main"
            self.covered |= _cmap(self.fonts.main)
            names = []
            for i, path in enumerate(self.fonts.fallbacks):
                try:
                    cmap = _cmap(path)
                    self.pdf.add_font(f"fallback{i}", "", str(path))
                except Exception:  # a broken or unsupported font file: use the others
                    continue
                self.covered |= cmap
                names.append(f"fallback{i}")
            if names:
                self.pdf.set_fallback_fonts(names, exact_match=False)
        else:  # no TrueType font at all: the PDF core fonts know Latin-1 only
            self.covered = set(range(32, 127)) | set(range(160, 256))
        self.pdf.add_page()
        self.pdf.set_font(self.family, size=10)

    @staticmethod
    def _safe_meta(text: str) -> str:
        return text.encode("latin-1", "replace").decode("latin-1")

    def uncovered(self, text: str) -> list[str]:
        """Characters of ``text`` that no font here can draw, in order of first use."""
        seen: dict[str, None] = {}
        for ch in text:
            if ch not in "\n\t" and ord(ch) not in self.covered:
                seen.setdefault(ch, None)
        return list(seen)

    def safe(self, text: str) -> str:
        """Text with every character no font covers written as ``[U+XXXX]`` (and counted)."""
        out = []
        for ch in text.replace("\t", "    ").replace("\r\n", "\n"):
            if ch == "\n" or ord(ch) in self.covered:
                out.append(ch)
            else:
                self.missing[ch] += 1
                out.append(f"[U+{ord(ch):04X}]")
        return "".join(out)

    def heading(self, text: str, level: int = 1) -> None:
        size = {1: 16, 2: 13, 3: 11}.get(level, 11)
        self.pdf.ln(2 if level > 1 else 0)
        self.pdf.set_font(self.family, "B", size)
        self._cell(text, size * 0.5)
        self.pdf.set_font(self.family, "", 10)

    def text(self, text: str, bold: bool = False, size: float = 10, indent: float = 0) -> None:
        self.pdf.set_font(self.family, "B" if bold else "", size)
        self._cell(text, size * 0.48, indent)
        self.pdf.set_font(self.family, "", 10)

    def field(self, label: str, value: str, note: str = "") -> None:
        """``label: value  (note)`` with the label bold."""
        self.text(label, bold=True)
        self.text(value + (f"   ({note})" if note else ""), indent=6)

    def notice(self, text: str) -> None:
        """A boxed paragraph: something the reader must not miss."""
        self.pdf.set_font(self.family, "B", 10)
        self.pdf.multi_cell(0, 5, self.safe(text), border=1, new_x="LMARGIN", new_y="NEXT", align="L")
        self.pdf.set_font(self.family, "", 10)
        self.pdf.ln(2)

    def gap(self, mm: float = 2) -> None:
        self.pdf.ln(mm)

    def picture(self, image: Any, caption: str) -> None:
        """A picture at ``dpi`` (never wider than the page, never taller than ``max_picture_h``)."""
        im = image if image.mode in ("L", "RGB") else image.convert("RGB")
        w = im.width * 25.4 / self.limits.dpi
        h = im.height * 25.4 / self.limits.dpi
        scale = min(1.0, self.pdf.epw / w, self.limits.max_picture_h / h)
        w, h = w * scale, h * scale
        if self.pdf.get_y() + h + 10 > self.pdf.page_break_trigger:
            self.pdf.add_page()
        buf = io.BytesIO()  # JPEG goes into the PDF as it is; raw pixels would be ~10x larger
        im.save(buf, "JPEG", quality=self.limits.jpeg_quality)
        self.pdf.image(buf, w=w, h=h)
        self.text(caption, size=8)
        self.gap()

    def _cell(self, text: str, height: float, indent: float = 0) -> None:
        self.pdf.set_x(self.pdf.l_margin + indent)
        self.pdf.multi_cell(
            self.pdf.epw - indent, height, self.safe(text), new_x="LMARGIN", new_y="NEXT", align="L"
        )

    def output(self) -> bytes:
        return bytes(self.pdf.output())


def missing_notice(chars: Iterable[str]) -> str:
    listed = ", ".join(f"U+{ord(c):04X}" for c in list(chars)[:40])
    return (
        "Some characters could not be drawn: no font on this computer covers them, so they are "
        f"written as [U+XXXX] codes ({listed}). Install a font that covers them (for Chinese: "
        "Debian's fonts-wqy-microhei or fonts-noto-cjk) and export again; the md and html "
        "exports keep the exact text."
    )


def decode_picture(data: bytes) -> Any:
    """A picture blob as a Pillow image (bomb guard on), or None when it does not decode."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception:
        return None
    return im

"""Two-level first views of printed pages: about half the bytes of a grey view, as legible.

Why: a lab report that docscan has straightened and flattened is ink on white (docscan hands
over its two-level page when at most 6% of the page is mid-grey: no photo, no stamp). The
grey first view of such a page spends its 20 KB on the grey edges of letters; the same page
in two levels, coded losslessly at a higher resolution, carries the same strokes in about
half the bytes, and on EDGE (24 kbit/s up) every 3 KB is a second the doctor waits.

Measured on the corpus reports (3000x4000 phone photos; docscan pages ~2600x3700; tesseract 5
``eng`` / ``chi_sim``: result values of ``truth.json`` found, best of ``--psm 3, 4, 6, 11``,
14 values each; English / Chinese):

* grey AVIF as the grey search picks it (990x1400, q20 / q23): 20.4 / 19.1 KB, 14 / 14
  values; the same 20 KB at the other sizes it might pick (1150-1500 px): 13-14 / 13-14;
* two levels, sized so a line of text (its band of inked rows) is ``min_line_px`` = 18 px
  high: 1067x1509 / 986x1394, 14 / 14 values under all four segmentations; 17 and 20 px:
  14 / 14; 14-16 px: 12-13 / 14; a 1000 px page (12.5 px lines): 9-11 / 13-14. What decides
  is the height of a line in pixels, not the page's size, so the side is chosen per page
  from its measured lines (:func:`text_line_height`);
* a view pixel is ink when >= 29% of its area was ink (``ink_level`` 180): at 18 px lines a
  50% cut read 14 / 14 too, a 22% cut (heavier strokes) 13 / 14; at 16 px lines the 29% cut
  read 12 / 14, the others 13 / 13-14: a noisy measure, so thin strokes and decimal points
  decide it, which a 50% cut thins away where a stroke straddles two view pixels;
* bytes of the same two-level view: lossless WebP 10.0 / 8.8 KB, 1-bit PNG 12.6 / 11.1 KB
  (~0.03 s each), TIFF G4 8.5 / 7.8 KB. G4 is not used: TIFF is no first-view codec a
  receiver takes, and a browser cannot show it in an exported record. Both WebP and PNG are
  encoded and the smaller goes (WebP on every page so far; PNG where WebP is missing).

So a report page that docscan found two-level goes in two levels when that is clearly
smaller than the grey view (which fills its budget): at most ``max_share`` of the budget.
Otherwise (small print that needs more pixels than the budget holds, a page with pictures)
the grey search runs as before. The view is still lossy (every grey is gone) and is labelled
so: coded at quality 100 yet lossy, which no grey view ever is (its search stops at 95).
Encoding costs two quick lossless encodes where the grey search takes 3-7 AVIF encodes
(0.1-0.6 s each). Pillow and numpy only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class TwoLevelLimits:
    """How a two-level first view is sized and when it is used (module doc for the figures)."""

    ink_level: int = 180  # area-averaged pixels at or below this (>= 29% ink) become ink
    min_line_px: float = 18.0  # a line of text in the view; at 14-16 px OCR lost 1-2 of 14 values
    min_side: int = 1280  # longest side never below this, whatever the lines measure
    max_side: int = 2400  # nor above (the line measure may be fooled by a tiny footnote)
    default_side: int = 1600  # when no line of text can be measured
    strips: int = 4  # lines are measured in this many vertical strips (columns need not align)
    min_run: float = 0.003  # ink runs shorter than this share of the page are rules or specks
    max_share: float = 0.75  # of the budget: above this it is not clearly smaller than grey


TWO_LEVEL = TwoLevelLimits()


@dataclass(frozen=True)
class TwoLevelView:
    """A two-level first view, its codec, and what it was made from."""

    data: bytes
    codec: str  # "webp" (lossless) or "png" (1-bit): whichever came out smaller
    width: int
    height: int
    line_px: float | None  # measured height of a line of text in the view (None: not measured)
    psnr: float  # against the area-averaged grey picture of the same size


def is_two_level(image: Image.Image) -> bool:
    """Whether a picture holds only black and white (mode ``1``, or ``L`` with 0 and 255 only).

    docscan's two-level page is exactly that; so is a fax or a 1-bit scan.
    """
    if image.mode == "1":
        return True
    if image.mode != "L":
        return False
    hist = image.histogram()
    return sum(hist[1:255]) == 0 and hist[0] > 0 and hist[255] > 0


def text_line_height(image: Image.Image, limits: TwoLevelLimits = TWO_LEVEL) -> float | None:
    """The median height (pixels of ``image``) of the bands of rows that hold ink: lines of text.

    Measured in ``limits.strips`` vertical strips, so two columns whose lines do not align
    do not merge into one tall band; bands shorter than ``min_run`` of the page (table rules,
    specks) are left out. None when fewer than 3 bands are found (no text to measure).
    """
    w, h = image.size
    strips = max(1, min(limits.strips, w))
    grey = image if image.mode == "L" else image.convert("L")
    cols = np.asarray(grey.resize((strips, h), Image.Resampling.BOX))  # mean of each row of a strip
    heights: list[np.ndarray] = []
    for s in range(strips):
        ink = cols[:, s] < 255  # some ink in this row of the strip (>= ~0.2% of its width)
        edges = np.diff(np.concatenate(([0], ink.view(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        runs = ends - starts
        heights.append(runs[runs >= max(2.0, limits.min_run * h)])
    found = np.concatenate(heights)
    if found.size < 3:
        return None
    return float(np.median(found))


def choose_side(image: Image.Image, limits: TwoLevelLimits = TWO_LEVEL) -> tuple[int, float | None]:
    """The longest side of the view: text lines at least ``min_line_px`` high, within bounds.

    Returns the side and the line height it gives (None when no line could be measured).
    """
    longest = max(image.size)
    line = text_line_height(image, limits)
    if line is None:
        side = limits.default_side
    else:
        side = math.ceil(limits.min_line_px * longest / line)
    side = min(max(side, limits.min_side), limits.max_side, longest)  # never upscaled
    return side, None if line is None else line * side / longest


def encode_bits(bits: Image.Image, codec: str) -> bytes:
    """A two-level picture in a lossless codec: ``png`` (1 bit per pixel) or ``webp`` (lossless).

    WebP at effort 4/100: effort 6 takes ~2 s for the same bytes (+-1%); PNG at zlib's best.
    """
    buf = io.BytesIO()
    if codec == "webp":
        bits.convert("L").save(buf, "WEBP", lossless=True, quality=100, method=4)
    elif codec == "png":
        bits.save(buf, "PNG", optimize=True)
    else:
        raise ValueError(f"no lossless two-level encoding in {codec!r}")
    return buf.getvalue()


def two_level_view(
    image: Image.Image,
    budget: int,
    codecs: Iterable[str] = ("webp", "png"),
    *,
    limits: TwoLevelLimits = TWO_LEVEL,
) -> TwoLevelView | None:
    """The two-level view of a page at the side :func:`choose_side` picks, in whichever of
    ``codecs`` (lossless WebP, 1-bit PNG) comes out smaller, or None when even that is over
    ``max_share`` of ``budget`` (then the grey view is the better use of the bytes).

    The page is area-averaged to that size (each view pixel the share of ink under it), then
    a pixel is ink when at least ~29% of it was (``ink_level``): thin strokes and decimal
    points survive where a 50% cut would thin them away.
    """
    usable = [c for c in ("webp", "png") if c in set(codecs)]
    if not usable:
        return None
    side, line = choose_side(image, limits)
    grey = image if image.mode == "L" else image.convert("L")
    w, h = grey.size
    s = side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = grey.resize(size, Image.Resampling.BOX) if size != grey.size else grey
    lut = [0] * (limits.ink_level + 1) + [255] * (255 - limits.ink_level)
    bits = small.point(lut, "1")
    codec, data = min(((c, encode_bits(bits, c)) for c in usable), key=lambda cd: len(cd[1]))
    if len(data) > limits.max_share * budget:
        return None
    a = np.asarray(small, dtype=np.float32)
    b = np.asarray(bits, dtype=np.float32) * 255.0
    mse = float(np.mean((a - b) ** 2))
    psnr = 99.0 if mse <= 1e-9 else 10.0 * math.log10(255.0 * 255.0 / mse)
    return TwoLevelView(data, codec, size[0], size[1], line, psnr)

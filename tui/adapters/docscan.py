"""Straighten and clean phone photos of lab reports, ECG strips and CT films before sending.

Why: clinics photograph paper on a desk and films on a light box; the doctor at the far end
of a 24 kbit/s link gets a first view of ~1200 px and <= 20 KB, and says he "cannot see the
details". Most of those bytes go on things that carry no information: the desk around the
page, a light gradient, sensor noise. Cropping to the page, undoing the perspective (so the
text lines are straight and the page fills the frame) and dividing out the uneven light
leave the bytes for the text itself. Measured on the corpus reports (tesseract, best of
--psm 3/4/6, 14 printed result values each): the original 12 MP photo gives 8 (en) and 12
(zh); the corrected page 14 and 13; the corrected two-level page at 1200 px in <= 20 KB
WebP 12 and 13, where the photo itself at the same size and bytes gives 11-12 and 13.

One call, :func:`correct`, per mode:

``report``
    the largest bright quadrilateral (detected on a small copy), warped at full resolution
    to an A4-like rectangle, light flattened, grayscale; a two-level version as well, and a
    flag saying which one reads better.
``film``
    the film (a dark rectangle against a wall, or inside a bright light box), cropped and
    warped; grayscale with its whole tonal range kept: CT densities matter, nothing is
    thresholded or flattened.
``ecg``
    the paper strip, warped and light-flattened, the grid kept visible.
``photo``
    returned unchanged (wounds, skin: colour and geometry are the content).

If no page is found the whole image is flattened (report, ecg) or left as is (film), and
``found`` is False with a note saying so. Image contents are never logged.

Only numpy and Pillow: see :mod:`medcomm.core.geometry` for why not OpenCV or SciPy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from medcomm.core import geometry
from medcomm.errors import LimitExceeded, UsageError

__all__ = ["MODES", "Corrected", "ScanLimits", "correct", "find_quad"]

MODES = ("report", "film", "ecg", "photo")
A4 = math.sqrt(2.0)  # ISO 216 height / width
LETTER = 11.0 / 8.5


@dataclass(frozen=True)
class ScanLimits:
    """Every tunable of the scanner, with the reason for its default."""

    max_input_pixels: int = 64_000_000  # 8000x8000; phone photos are 12-50 MP
    detect_long_side: int = 640  # detection copy: enough for sub-pixel corners after the side refit
    min_page_fraction: float = 0.12  # a "page" smaller than this share of the photo is clutter
    max_page_fraction: float = 0.97  # bigger: the page fills the frame, nothing to straighten
    min_fill: float = 0.88  # blob area / quad area; below it the blob is not four-sided
    max_output_long_side: int = 4000  # warped output; never upsampled beyond what the photo holds
    aspect_snap: float = 0.08  # a measured aspect within 8% of A4 or Letter is snapped to it
    edge_trim: float = 0.006  # share of each side cut after the warp (desk seen along the edges)
    background_cell: int = 8  # the illumination field is estimated at 1/8 scale ...
    background_close: int = 9  # ... closed with this odd window (~9*8 = 72 px, > a text line)
    background_blur: float = 2.0  # ... and smoothed (in cells) so no text edges survive
    white_level: float = 0.90  # paper at >= 90% of its local brightness becomes white
    ecg_white_level: float = 1.0  # ECG detail view: only paper is white, the faint 1 mm grid stays
    black_percentile: float = 0.3  # the darkest 0.3% of page pixels become black ...
    max_black: float = 0.6  # ... unless they are lighter than this (no ink: nothing to stretch)
    bilevel_midtone_max: float = 0.06  # two-level reads better unless > 6% of the page is mid-grey
    min_contrast: float = 24.0  # RGB distance from the border colour that counts as "not wall"
    min_edge_contrast: float = 16.0  # RGB step across a page's sides: less is a light gradient
    lightbox_level: float = 170.0  # a found region whose border is brighter than this is a light box
    film_trim: float = 0.003  # share trimmed around a found film (its dark unexposed edge stays)
    warp_threads: int = 2  # bands of a full-size warp resampled at once (never more than the cores)
    band_probe: int = 4  # ECG: the grid's band is chosen on a warp this many times smaller


DEFAULT_LIMITS = ScanLimits()


@dataclass(frozen=True)
class Corrected:
    """The result of :func:`correct`.

    ``image`` is the view to send first; ``gray`` is the full-tone version to cut regions
    from when the doctor asks for detail (for films it is ``image`` itself; for ECGs it
    keeps the faint 1 mm grid that the first view drops). Reports also carry ``bilevel``
    (two-level); ``two_level`` says whether ``image`` is ``bilevel`` or ``gray``, and
    ``midtone`` the share of mid-grey page pixels behind that choice. ``quad`` holds the
    corners found in the input image (top-left, top-right, bottom-right, bottom-left), or
    None; ``notes`` say in words what was done, for the sender's status line.
    """

    image: Image.Image
    found: bool
    quad: tuple[tuple[float, float], ...] | None
    notes: tuple[str, ...] = ()
    gray: Image.Image | None = None
    bilevel: Image.Image | None = None
    two_level: bool = False
    midtone: float | None = None  # report: share of mid-grey page pixels behind the two_level choice


def correct(image: Image.Image, mode: str, limits: ScanLimits = DEFAULT_LIMITS) -> Corrected:
    """Straighten and clean ``image`` for ``mode`` (one of :data:`MODES`).

    EXIF orientation must already be applied by the caller. CPU-bound (about 1-2 s and a
    few hundred MB for a 12 MP photo on one core): run it in a worker, never on the render
    path. Raises UsageError for an unknown mode and LimitExceeded for an image over
    ``limits.max_input_pixels``.
    """
    if mode not in _MODE_HANDLERS:
        raise UsageError(f"unknown scan mode {mode!r}; use one of {', '.join(MODES)}", mode=mode)
    pixels = image.width * image.height
    if pixels > limits.max_input_pixels:
        raise LimitExceeded(
            f"image of {pixels} pixels is over the scanner's {limits.max_input_pixels}",
            pixels=pixels,
            limit=limits.max_input_pixels,
        )
    if pixels == 0:
        raise UsageError("empty image", width=image.width, height=image.height)
    return _MODE_HANDLERS[mode](image, limits)


# ---------------------------------------------------------------------------------------------
# detection


def _detection_copy(image: Image.Image, limits: ScanLimits) -> tuple[Image.Image, float]:
    """An RGB copy with the long side <= detect_long_side, area-averaged (which also denoises)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = max(image.width, image.height) / limits.detect_long_side
    if scale <= 1:
        return rgb, 1.0
    factor = max(1, int(scale))
    small = rgb.reduce(factor) if factor > 1 else rgb
    w = max(1, round(image.width / scale))
    h = max(1, round(image.height / scale))
    if small.size != (w, h):
        small = small.resize((w, h), Image.Resampling.BOX)
    return small, image.width / w


def _smooth(small: Image.Image) -> np.ndarray:
    """The detection copy as float RGB, lightly blurred so paper grain and JPEG noise do not count."""
    return np.asarray(small.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)


def _bright_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels brighter than Otsu's split of the luminance: paper against a desk."""
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return lum > geometry.otsu_threshold(lum)


def _border_pixels(a: np.ndarray) -> np.ndarray:
    """The pixels of a frame ~1/40 of the short side wide around the image, one per row."""
    h, w = a.shape[:2]
    b = max(1, min(h, w) // 40)
    parts = [a[:b], a[-b:], a[:, :b], a[:, -b:]]
    return np.concatenate([p.reshape(-1, *a.shape[2:]) for p in parts])


def _distinct_mask(rgb: np.ndarray, min_contrast: float) -> np.ndarray:
    """Pixels whose colour differs from the photo's border (the wall or desk around a film)."""
    frame = _border_pixels(rgb)
    ref = np.median(frame, axis=0)
    dist = np.sqrt(((rgb - ref) ** 2).sum(axis=2))
    spread = np.sqrt(((frame - ref) ** 2).sum(axis=1))
    # Otsu would split bright bone from everything else; the border's own spread (its light
    # gradient) says how far a pixel must be from it to be something else. The 80th
    # percentile leaves out an object that touches a fifth of the border.
    return dist > max(min_contrast, 2.0 * float(np.percentile(spread, 80)))


def _edge_contrast(rgb: np.ndarray, quad: np.ndarray, offset: float = 3.0) -> float | None:
    """The weakest step in colour across the quad's sides (median along each side).

    A real page or film has a sharp edge all round; a threshold through a light gradient or
    a vignette makes a "quad" whose sides are no edge at all. Sides lying on the photo's
    border cannot be measured and are skipped; None when no side can be.
    """
    h, w = rgb.shape[:2]
    t = np.linspace(0.1, 0.9, 33)[:, None]
    worst: float | None = None
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        xs, ys = (a[0], b[0]), (a[1], b[1])
        if max(xs) < 1.5 or min(xs) > w - 2.5 or max(ys) < 1.5 or min(ys) > h - 2.5:
            continue
        u = (b - a) / max(float(np.hypot(*(b - a))), 1e-9)
        n = np.array([-u[1], u[0]])  # points into a clockwise (on screen) quad
        pts = a + (b - a) * t
        inner = np.round(pts + offset * n).astype(int)
        outer = np.round(pts - offset * n).astype(int)
        ok = (
            (inner[:, 0] >= 0)
            & (inner[:, 0] < w)
            & (inner[:, 1] >= 0)
            & (inner[:, 1] < h)
            & (outer[:, 0] >= 0)
            & (outer[:, 0] < w)
            & (outer[:, 1] >= 0)
            & (outer[:, 1] < h)
        )
        if ok.sum() < 5:
            continue
        step = rgb[inner[ok, 1], inner[ok, 0]] - rgb[outer[ok, 1], outer[ok, 0]]
        c = float(np.median(np.sqrt((step**2).sum(axis=1))))
        worst = c if worst is None else min(worst, c)
    return worst


def _quad_from_mask(mask: np.ndarray, rgb: np.ndarray, limits: ScanLimits) -> tuple[np.ndarray | None, str]:
    """The blob's quad in detection pixels, or None with the reason."""
    h, w = mask.shape
    radius = max(1, min(h, w) // 200)
    blob = geometry.largest_component(geometry.binary_erode(mask, radius))
    if not blob.any():
        return None, "nothing stands out from the background"
    blob = geometry.fill_holes(geometry.binary_dilate(blob, radius) & mask)
    blob = geometry.fill_holes(geometry.largest_component(blob))
    quad = geometry.mask_to_quad(blob)
    if quad is None:
        return None, "the largest region has no four corners"
    area = geometry.polygon_area(quad)
    share = area / (h * w)
    if share < limits.min_page_fraction:
        return None, f"the largest region covers only {share:.0%} of the photo"
    if share > limits.max_page_fraction:
        return None, "the page fills the whole photo"
    fill = blob.sum() / max(area, 1.0)
    if fill < limits.min_fill or fill > 2 - limits.min_fill or not geometry.is_convex(quad):
        return None, "the largest region is not four-sided"
    edge = _edge_contrast(rgb, quad)
    if edge is None or edge < limits.min_edge_contrast:
        return None, "the largest region has no sharp edge (light, not paper)"
    return quad, ""


def find_quad(
    image: Image.Image, how: str = "bright", limits: ScanLimits = DEFAULT_LIMITS
) -> tuple[np.ndarray | None, str]:
    """Corners (TL, TR, BR, BL) of the page in ``image`` pixels, or None and why not.

    ``how`` is "bright" (paper brighter than its surroundings) or "distinct" (anything that
    differs from the colour along the photo's border, e.g. a dark film on a wall).
    """
    small, scale = _detection_copy(image, limits)
    rgb = _smooth(small)
    mask = _bright_mask(rgb) if how == "bright" else _distinct_mask(rgb, limits.min_contrast)
    quad, why = _quad_from_mask(mask, rgb, limits)
    if quad is None:
        return None, why
    # detection pixel centre x maps to (x + 0.5) * scale - 0.5 in the full image
    return (quad + 0.5) * scale - 0.5, ""


# ---------------------------------------------------------------------------------------------
# geometry


def _output_size(
    quad: np.ndarray, size: tuple[int, int], snap: tuple[float, ...], limits: ScanLimits
) -> tuple[tuple[int, int], float]:
    """Width and height of the straightened rectangle, keeping about the photo's pixel count."""
    aspect = geometry.rectangle_aspect(quad, size)
    for target in snap:
        for t in (target, 1 / target):
            if abs(aspect / t - 1) <= limits.aspect_snap:
                aspect = t
                break
    sides = np.hypot(*(np.roll(quad, -1, axis=0) - quad).T)
    measured = max(sides[0], sides[2]) * max(sides[1], sides[3])
    width = math.sqrt(measured / aspect)
    height = width * aspect
    over = max(width, height) / limits.max_output_long_side
    if over > 1:
        width, height = width / over, height / over
    return (max(1, round(width)), max(1, round(height))), aspect


def _warp(
    image: Image.Image, quad: np.ndarray, out: tuple[int, int], trim: float, threads: int = 1
) -> Image.Image:
    """Resample the quad into an out-sized rectangle (bicubic), trimming a thin border.

    With ``threads`` > 1 the rectangle is cut into that many horizontal bands, each warped in
    a thread of its own (Pillow lets go of the GIL while it resamples): the warp of a 12 MP
    page is the largest single cost of a share's preparation (0.3-0.5 s), and the bands are
    the very same pixels (each band's mapping is the whole one shifted by its first row).
    """
    w, h = out
    dx, dy = trim * w, trim * h
    # shrink the quad along its own axes by mapping the trimmed rectangle back through H
    full = geometry.homography(np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float), quad)
    inner = np.array([[dx, dy], [w - 1 - dx, dy], [w - 1 - dx, h - 1 - dy], [dx, h - 1 - dy]])
    pts = np.column_stack([inner, np.ones(4)]) @ full.T
    q = pts[:, :2] / pts[:, 2:]
    coeffs = geometry.perspective_coeffs(q, w, h)
    bands = max(1, min(threads, h // 64))  # a band of a few rows is not worth a thread
    if bands == 1:
        return image.transform(out, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    cuts = [round(h * i / bands) for i in range(bands + 1)]

    def band(i: int) -> Image.Image:
        y0 = cuts[i]
        a, b, c, d, e, f, g, k = coeffs  # output row y0 + y' maps as row y did: renormalise
        n = k * y0 + 1.0
        shifted = (a / n, b / n, (b * y0 + c) / n, d / n, e / n, (e * y0 + f) / n, g / n, k / n)
        return image.transform(
            (w, cuts[i + 1] - y0), Image.Transform.PERSPECTIVE, shifted, Image.Resampling.BICUBIC
        )

    with ThreadPoolExecutor(bands, thread_name_prefix="medcomm-warp") as ex:
        parts = list(ex.map(band, range(bands)))
    result = Image.new(image.mode, out)
    for y0, part in zip(cuts, parts, strict=False):
        result.paste(part, (0, y0))
    return result


def _as_tuple(quad: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((round(float(x), 2), round(float(y), 2)) for x, y in quad)


# ---------------------------------------------------------------------------------------------
# light


def _background(gray: Image.Image, limits: ScanLimits) -> np.ndarray:
    """The illumination field of paper: a grey closing (max then min) that erases dark print.

    Done at 1/``background_cell`` scale: a closing removes every dark feature narrower than
    its window (text, thin rules, ECG grid lines) and keeps the slow light gradient; a blur
    then hides the window's blocky steps before it is scaled back up.
    """
    cell = max(1, limits.background_cell)
    small = gray.reduce(cell) if cell > 1 and min(gray.size) >= 4 * cell else gray
    closed = geometry.grey_close(np.asarray(small), limits.background_close)
    small = Image.fromarray(closed).filter(ImageFilter.GaussianBlur(limits.background_blur))
    bg = np.asarray(small.resize(gray.size, Image.Resampling.BILINEAR), dtype=np.float32)
    return np.maximum(bg, 1.0, out=bg)  # a fresh array (converted): reused in place, as below


def _ratio(gray: Image.Image, limits: ScanLimits) -> np.ndarray:
    """Gray divided by its illumination field: ~1.0 on paper wherever the light falls."""
    a = np.asarray(gray, dtype=np.float32)
    return np.divide(a, _background(gray, limits), out=a)


def _stretch(ratio: np.ndarray, limits: ScanLimits, white: float, *, in_place: bool = False) -> np.ndarray:
    """Ink to 0.0, paper to 1.0: the darkest ``black_percentile`` black, >= ``white`` white.

    Clipping at ``white`` (a share of the local paper brightness) drops paper grain and
    sensor noise, which cost bytes and carry nothing, along with anything as faint as them.
    ``in_place`` overwrites ``ratio`` (the same float32 steps, so the same values): a page is
    ~10 MP, and each full-size temporary costs ~40 MB and a pass over it.
    """
    step = max(1, int(math.sqrt(ratio.size / 250_000)))  # a percentile needs no 10 MP sort
    black = float(np.percentile(ratio[::step, ::step], limits.black_percentile))
    black = min(black, limits.max_black)  # a blank page: do not stretch paper grain into ink
    out = ratio if in_place else np.empty_like(ratio)
    np.subtract(ratio, black, out=out)
    np.divide(out, white - black, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def _flatten(gray: Image.Image, limits: ScanLimits) -> np.ndarray:
    """Light divided out and stretched so that paper is white and ink black."""
    return _stretch(_ratio(gray, limits), limits, limits.white_level, in_place=True)


def _to_image(x: np.ndarray) -> Image.Image:
    y = x * 255
    return Image.fromarray(np.rint(y, out=y).astype(np.uint8), mode="L")


def _bilevel(flat: np.ndarray) -> tuple[Image.Image, float]:
    """Two-level version of a flattened page and the share of mid-grey pixels (photos, stamps).

    After flattening, the light is even, so one global Otsu level acts like an adaptive
    threshold (it is clamped, so a blank page does not turn its paper grain into ink). The
    mid-grey share says how much of the page a two-level image would destroy.
    """
    step = max(1, int(math.sqrt(flat.size / 250_000)))
    sample = flat[::step, ::step]
    t = geometry.otsu_threshold(sample * 255) / 255
    t = min(max(t, 0.35), 0.8)
    img = Image.fromarray(np.multiply(flat > t, 255, dtype=np.uint8), mode="L")
    mid = float(np.mean((sample > 0.25) & (sample < 0.75)))
    return img, mid


# ---------------------------------------------------------------------------------------------
# modes


def _report(image: Image.Image, limits: ScanLimits) -> Corrected:
    """Page straightened to A4 (or Letter) shape, light divided out, grey and two-level views."""
    quad, why = find_quad(image, "bright", limits)
    gray_in = image.convert("L")
    notes: list[str] = []
    if quad is None:
        page = gray_in
        notes.append(f"no page found ({why}): whole photo flattened")
    else:
        size, aspect = _output_size(quad, image.size, (A4, LETTER), limits)
        page = _warp(gray_in, quad, size, limits.edge_trim, _threads(limits))
        notes.append(f"page found, straightened to {size[0]}x{size[1]} (aspect {aspect:.3f})")
    flat = _flatten(page, limits)
    gray = _to_image(flat)
    bilevel, mid = _bilevel(flat)
    two_level = mid <= limits.bilevel_midtone_max
    notes.append(f"{'two-level' if two_level else 'grayscale'} view ({mid:.1%} mid-grey)")
    return Corrected(
        image=bilevel if two_level else gray,
        found=quad is not None,
        quad=None if quad is None else _as_tuple(quad),
        notes=tuple(notes),
        gray=gray,
        bilevel=bilevel,
        two_level=two_level,
        midtone=mid,
    )


def _ecg(image: Image.Image, limits: ScanLimits) -> Corrected:
    """Strip straightened and flattened, in grey from the band where the grid is darkest.

    Flattening each colour band by its own illumination field also white-balances the
    paper, so a pink or green grid becomes a clean colour on white. Grey from the band in
    which the grid is darkest (green for the usual red grid) beat both luminance and colour
    on the corpus strip at 1200 px and 20 KB WebP: 5 mm grid contrast 41/255 against 28 for
    luminance and 31 for colour, whose chroma also cost ~0.6-1.9 dB on the trace.

    Two versions: ``image`` (the first view) clips at ``white_level``, which drops the faint
    1 mm grid a 1200 px view cannot show anyway and saves ~2.5 dB on the trace at 20 KB;
    ``gray`` (for region requests at full resolution) clips at ``ecg_white_level`` and
    keeps the 1 mm grid that interval measurements need.
    """
    quad, why = find_quad(image, "bright", limits)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    notes: list[str] = []
    size = rgb.size if quad is None else _output_size(quad, image.size, (), limits)[0]
    darkest = _grid_band(rgb, quad, size, limits)
    band = rgb.getchannel(darkest)
    if quad is None:
        page = band
        notes.append(f"no strip found ({why}): whole photo flattened")
    else:
        page = _warp(band, quad, size, limits.edge_trim, _threads(limits))
        notes.append(f"strip found, straightened to {size[0]}x{size[1]}")
    ratio = _ratio(page, limits)
    notes.append(f"grid kept from the {'RGB'[darkest]} band")
    return Corrected(
        image=_to_image(_stretch(ratio, limits, limits.white_level)),
        found=quad is not None,
        quad=None if quad is None else _as_tuple(quad),
        notes=tuple(notes),
        gray=_to_image(_stretch(ratio, limits, limits.ecg_white_level)),
    )


def _grid_band(rgb: Image.Image, quad: np.ndarray | None, size: tuple[int, int], limits: ScanLimits) -> int:
    """The colour band (0-2) in which the ECG grid is darkest, judged on a smaller warp.

    Judged on a ``band_probe`` times smaller copy, flattened with a background cell as many
    times smaller (the same window on the paper), so only the chosen band is warped and
    flattened at full size: a third of the work. On the corpus strip the band means at full
    size and at 1/4 are G 0.929 / 0.923, B 0.931 / 0.925, R 0.954 / 0.949: the same order.
    Where two bands come that close the grid is about as dark in both.
    """
    k = max(1, limits.band_probe)
    small_size = (max(16, size[0] // k), max(16, size[1] // k))
    if quad is None:
        small = rgb.resize(small_size, Image.Resampling.BOX)
    else:
        small = _warp(rgb, quad, small_size, limits.edge_trim)
    probe = replace(limits, background_cell=max(1, limits.background_cell // k))
    ratios = [_ratio(b, probe) for b in small.split()]
    step = max(1, int(math.sqrt(ratios[0].size / 250_000)))
    return int(np.argmin([float(np.mean(np.minimum(r[::step, ::step], 1.0))) for r in ratios]))


def _threads(limits: ScanLimits) -> int:
    return max(1, min(limits.warp_threads, os.cpu_count() or 1))


def _inner_film(image: Image.Image, quad: np.ndarray, limits: ScanLimits) -> np.ndarray | None:
    """The film inside a found light box: the quad of what differs from a bright frame, or None.

    When the light box itself shows, the first pass finds the box (bright against the wall).
    The box region is straightened at detection size; if its border is bright (backlit glass,
    not a film's dark edge), the dark film inside it is found the same way and its corners
    are mapped back into the photo, so the final warp resamples the photo only once.
    """
    n = limits.detect_long_side
    size, _ = _output_size(quad, image.size, (), limits)
    s = n / max(size)
    w, h = max(8, round(size[0] * s)), max(8, round(size[1] * s))
    box = _warp(image.convert("RGB"), quad, (w, h), 0.0)
    if float(np.median(_border_pixels(np.asarray(box.convert("L"))))) < limits.lightbox_level:
        return None
    rgb = _smooth(box)
    inner, _ = _quad_from_mask(_distinct_mask(rgb, limits.min_contrast), rgb, limits)
    if inner is None:
        return None
    to_photo = geometry.homography(np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float), quad)
    pts = np.column_stack([inner, np.ones(4)]) @ to_photo.T
    return geometry.order_quad(pts[:, :2] / pts[:, 2:])


def _film(image: Image.Image, limits: ScanLimits) -> Corrected:
    """Film cropped and straightened, grey, tones only stretched linearly (densities matter)."""
    quad, why = find_quad(image, "distinct", limits)
    gray_in = image.convert("L")
    if quad is None:
        out = ImageOps.autocontrast(gray_in, cutoff=0)
        return Corrected(
            image=out, found=False, quad=None, notes=(f"no film found ({why}): photo kept",), gray=out
        )
    notes = []
    inner = _inner_film(image, quad, limits)
    if inner is not None:
        quad = inner
        notes.append("light box found, film inside it")
    size, _ = _output_size(quad, image.size, (), limits)
    film = _warp(gray_in, quad, size, limits.film_trim, _threads(limits))
    out = ImageOps.autocontrast(film, cutoff=0)
    notes.append(f"film found, straightened to {size[0]}x{size[1]}")
    return Corrected(image=out, found=True, quad=_as_tuple(quad), notes=tuple(notes), gray=out)


def _photo(image: Image.Image, limits: ScanLimits) -> Corrected:
    """Clinical photos (wounds, skin): colour and framing are the content; nothing is touched."""
    return Corrected(image=image, found=False, quad=None, notes=("photo: unchanged",))


_MODE_HANDLERS: dict[str, Callable[[Image.Image, ScanLimits], Corrected]] = {
    "report": _report,
    "film": _film,
    "ecg": _ecg,
    "photo": _photo,
}

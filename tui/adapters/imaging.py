"""Still images for ``medcomm share``: load, classify, first view, tiles (Pillow lives here).

Pipeline, as :func:`prepare` runs it::

    bytes --sniff--> decode (bomb guard, EXIF orientation) --detect_kind--> kind
          --correct(image, kind)--> corrected original --first_view--> one small lossy preview
                                                        --tile(TileId)--> 512 px tiles on request

``correct`` is the document-scanner hook (``medcomm.adapters.docscan.correct``: page/film
detection, perspective correction, light flattening). It is passed in, never imported here,
so this module and its tests do not depend on it; tests pass an identity function. Its
contract: ``correct(image: PIL.Image.Image, mode: str) -> PIL.Image.Image`` with ``mode`` one
of ``report | film | ecg | photo``, returning an RGB or L image, never larger than its input.

DICOM goes through :mod:`medcomm.adapters.dicom` (window to 8 bits first) and comes back
here only to be encoded, as kind ``slice``.

Formats are told by their first bytes, never by the file name: a ``.jpg`` that is a PNG
loads, a text file called ``.jpg`` gets a one-line :class:`~medcomm.errors.UsageError`.
Nothing leaves with metadata: first views and tiles are re-encoded from pixels, so EXIF (GPS
position of the clinic, the phone's serial number) and DICOM headers never go on the wire.
Nothing here logs pixels or file contents.

Why these first-view budgets (:class:`FirstViewLimits`): on EDGE (24 kbit/s up, ~3 KB/s,
less while a call shares the link) 20 KB is about 7 s, the longest a nurse watches a
progress line before wondering whether it works. A report must be readable in that first
view (the doctor often needs nothing more), so it gets the full 20 KB; a page of print
that docscan found two-level needs only about half of it, in two levels, losslessly coded
(:mod:`medcomm.adapters.twolevel`). A film first view only has to show which slice to
open (the detail comes as tiles), but 20 KB is what makes 12 slices recognisable
(measured: 1000x781 AVIF, 33 dB). A DICOM slice is one grey picture, already windowed:
10 KB carries a 128x128 slice losslessly and a 512x512 one (a film slice used as a
stand-in: no 512 px CT ships with pydicom) as 384x384 AVIF at 44 dB; its native tile is
one request away. Photos (wounds, rashes, a label) keep their colour, and colour costs:
25 KB.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError, features

from medcomm.core.tiles import TILES, Pyramid, TileId, TileLimits
from medcomm.errors import LimitExceeded, UsageError

Kind = Literal["report", "film", "ecg", "photo"]
ViewKind = Literal["report", "film", "ecg", "photo", "slice"]  # "slice": a windowed DICOM frame
KINDS: tuple[Kind, ...] = ("report", "film", "ecg", "photo")
Correct = Callable[[Image.Image, str], Image.Image]

# Pillow's own guard stays on (DESIGN.md): our pixel limit is lower, so it binds first.
# ImageFile.LOAD_TRUNCATED_IMAGES must stay False (Pillow's default; nothing here sets it):
# with it on, a truncated photo decodes silently with its lower part grey.


@dataclass(frozen=True)
class ImageLimits:
    """What :func:`load` accepts. Phone cameras write 12-50 MP, 3-15 MB; scanners less."""

    max_file_bytes: int = 64 * 1024 * 1024  # a 50 MP JPEG at top quality is ~25 MB; HEIC far less
    max_pixels: int = 50_000_000  # 8160x6120 (50 MP sensors) fits; 150 MB as RGB while we work on it
    max_side: int = 30_000  # a panorama or a long ECG roll; the pyramid allows 65536
    jpeg_draft_factor: int = 8  # JPEGs over max_pixels decode at 1/2, 1/4 or 1/8 instead of failing


@dataclass(frozen=True)
class FirstViewLimits:
    """Byte budgets of the first view per kind, and the sizes the search may try (module doc)."""

    report_bytes: int = 20 * 1024
    film_bytes: int = 20 * 1024
    ecg_bytes: int = 20 * 1024
    photo_bytes: int = 25 * 1024
    slice_bytes: int = 10 * 1024
    min_bytes: int = 2 * 1024  # below this nothing useful fits: a budget this small is a bug
    max_bytes: int = 512 * 1024  # a first view bigger than this is not a first view

    def budget(self, kind: ViewKind) -> int:
        """The default budget of a kind."""
        return int(getattr(self, f"{kind}_bytes"))


@dataclass(frozen=True)
class TileSettings:
    """AVIF quality of tiles per kind: fixed, so a tile costs one encode and no search.

    Measured on the corpus, 512 px grey tiles at level 0 (PSNR against the tile source):

    * CT film: AVIF q30 2.9 KB/tile, 39.7 dB; q40 3.7 KB, 41.7 dB; WebP needs ~1.5x the
      bytes for the same PSNR, JPEG ~3x, PNG ~25x (71 KB). One 700 px slice spans 4-9 tiles,
      so q30 is what keeps the worst-aligned slice under 40 KB (38 KB measured).
    * report photo: AVIF q40 2.0 KB/tile, 42.9 dB (a whole A4 page at native 3000x4000:
      ~100 KB); lossless PNG 70 KB/tile, so text tiles are lossy too, and labelled so.
    * 512x512 slice (stand-in): q60 11 KB, q50 8.6 KB.

    Quality scales differ by codec; WebP and JPEG use ``fallback_quality`` (film tile:
    WebP q70 42.6 dB at 1.4x AVIF q40's bytes, JPEG q60 45 dB at 2.4x).
    """

    report_quality: int = 40
    film_quality: int = 30
    ecg_quality: int = 40
    photo_quality: int = 50
    slice_quality: int = 60  # a 512x512 CT slice is one tile: its full-fidelity view, ~11 KB
    fallback_quality: int = 70  # WebP/JPEG when AVIF is missing: at or above AVIF q40's PSNR

    def quality(self, kind: ViewKind, codec: str = "avif") -> int:
        """The tile quality of a kind for a codec (0-100)."""
        return int(getattr(self, f"{kind}_quality")) if codec == "avif" else self.fallback_quality


IMAGE_LIMITS = ImageLimits()
FIRST_VIEW = FirstViewLimits()
TILE_SETTINGS = TileSettings()

# format name -> (Pillow format, MIME type)
FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "tiff": ("TIFF", "image/tiff"),
    "heif": ("HEIF", "image/heif"),
    "avif": ("AVIF", "image/avif"),
    "dicom": ("DICOM", "application/dicom"),
}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
SUPPORTED = "JPEG, PNG, HEIC/HEIF, WebP, AVIF, TIFF or DICOM"


@dataclass(frozen=True)
class Loaded:
    """A decoded image, upright, 8-bit ``RGB`` or ``L``, and where it came from."""

    image: Image.Image
    format: str  # a key of FORMATS
    content_id: str  # sha256 hex of the original bytes: the blob id of the original
    size_bytes: int
    orientation: int  # the EXIF orientation that was applied (1 = none)
    reduced: int = 1  # >1 when an oversized JPEG was decoded at 1/reduced of its size

    @property
    def width(self) -> int:
        """Width of the decoded, upright image."""
        return self.image.width

    @property
    def height(self) -> int:
        """Height of the decoded, upright image."""
        return self.image.height


@dataclass(frozen=True)
class Encoded:
    """One encoded picture for the wire: a first view or a tile."""

    data: bytes
    mime: str
    width: int
    height: int
    quality: int  # codec quality 0-100 (100: the codec lost nothing)
    codec: str  # "avif" | "webp" | "jpeg" | "png"
    lossy: bool = True  # lossy at quality 100: a two-level picture, the greys are what was lost
    psnr: float | None = None  # first views: fidelity (dB) against the reference the search used

    @property
    def label(self) -> str:
        """What the receiver shows beside it: a preview must never pass for the original."""
        size = f"{self.width}x{self.height} {self.codec.upper()}"
        if not self.lossy:
            return f"lossless {size}, {len(self.data)} B"
        if self.quality >= 100:  # coded losslessly, so the loss is the levels: two-level
            return f"lossy preview {size} two-level, {len(self.data)} B"
        return f"lossy preview {size} q{self.quality}, {len(self.data)} B"


@dataclass(frozen=True)
class Prepared:
    """Everything ``medcomm share`` sends first, plus what it needs to answer tile requests."""

    original_id: str  # sha256 of the file as given
    kind: ViewKind
    image: Image.Image  # the tile source: corrected original, as prepare_view makes it for the kind
    first: Encoded
    caption: str
    pyramid: Pyramid = field(repr=False)


# ------------------------------------------------------------------------------------ input


def content_id(data: bytes) -> str:
    """SHA-256 hex of a blob: its address in the content-addressed blob store."""
    return hashlib.sha256(data).hexdigest()


def read_source(source: str | Path | bytes, max_bytes: int) -> bytes:
    """The bytes of a file or a buffer, refusing more than ``max_bytes`` before reading them."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > max_bytes:
            raise LimitExceeded(
                f"image of {len(data)} bytes is over the {max_bytes}-byte limit",
                limit=max_bytes,
                value=len(data),
            )
        return data
    path = Path(source)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UsageError(f"{path.name}: not a regular file", path=str(path))
        if size > max_bytes:
            raise LimitExceeded(
                f"{path.name}: {size} bytes is over the {max_bytes}-byte limit for an image",
                limit=max_bytes,
                value=size,
            )
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", path=str(path)) from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied", path=str(path)) from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not an image", path=str(path)) from None
    if len(data) > max_bytes:  # it grew while we looked
        raise LimitExceeded(f"{path.name}: over the {max_bytes}-byte limit", limit=max_bytes)
    return data


def sniff(data: bytes) -> str | None:
    """The format of an image by its first bytes (a key of FORMATS), or None."""
    if data[128:132] == b"DICM":  # first: a DICOM preamble may itself be a TIFF header (dual-format files)
        return "dicom"
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(len(head), 32), 4)}
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heif"
    return None


def _describe(data: bytes) -> str:
    """A few words on what a non-image looks like, without quoting its content."""
    if not data:
        return "it is empty"
    head = data[:512]
    if head.startswith(b"%PDF"):
        return "it is a PDF; export the page as a photo or PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "it is a GIF"
    if head.startswith(b"BM"):
        return "it is a BMP"
    try:
        head.decode("utf-8")
        return "it looks like text"
    except UnicodeDecodeError:
        return "its content is not a known image format"


def _register_heif() -> None:
    try:
        import pillow_heif
    except ImportError:
        raise UsageError(
            "this is a HEIC/HEIF photo and pillow-heif is not installed: pip install pillow-heif, "
            "or set the phone camera to 'Most compatible' (JPEG)"
        ) from None
    pillow_heif.register_heif_opener()


def load(source: str | Path | bytes, limits: ImageLimits = IMAGE_LIMITS) -> Loaded:
    """Decode an image file or buffer: upright (EXIF), 8-bit RGB or L, within the limits.

    Errors: :class:`UsageError` for what is not an image we can read (wrong content,
    truncated, corrupt, a DICOM file, HEIC without pillow-heif), :class:`LimitExceeded` for
    files or pictures over the limits (decompression bombs included). Only the first frame
    of a multi-page TIFF or an animation is used.
    """
    data = read_source(source, limits.max_file_bytes)
    fmt = sniff(data)
    name = Path(source).name if isinstance(source, str | Path) else "image"
    if fmt is None:
        raise UsageError(
            f"{name} is not an image medcomm can share ({_describe(data)}); send a {SUPPORTED} file",
            path=name,
        )
    if fmt == "dicom":
        raise UsageError(f"{name} is a DICOM file: open it with medcomm.adapters.dicom", path=name)
    if fmt == "heif":
        _register_heif()
    if fmt == "avif" and not features.check("avif"):
        raise UsageError(f"{name} is AVIF and this Pillow cannot decode AVIF: upgrade Pillow (>= 11.3)")
    pil_format = FORMATS[fmt][0]
    reduced = 1
    try:
        im = Image.open(io.BytesIO(data), formats=[pil_format])
        w, h = im.size
        _check_dims(name, w, h, limits, fmt)
        if w * h > limits.max_pixels:  # JPEG only (checked above): decode at 1/2..1/8
            while w * h // (reduced * reduced) > limits.max_pixels:
                reduced *= 2
            im.draft(im.mode, (w // reduced, h // reduced))
            reduced = max(1, round(w / im.size[0]))
        im.load()
        orientation = int(im.getexif().get(0x0112, 1) or 1)
        im = _to_8bit(im)
        ImageOps.exif_transpose(im, in_place=True)  # no copy of 36 MB when it is upright already
    except Image.DecompressionBombError as e:
        raise LimitExceeded(
            f"{name}: too many pixels for an image ({e.__class__.__name__})", limit=limits.max_pixels
        ) from None
    except UnidentifiedImageError:
        raise UsageError(
            f"{name} looks like {fmt.upper()} but cannot be decoded (corrupt header)", path=name
        ) from None
    except RuntimeError as e:  # the AVIF and HEIF decoders' own errors
        if "limit" in str(e).lower() or "memory" in str(e).lower():  # libheif's security limits
            raise LimitExceeded(f"{name}: the picture is over the decoder's size limits", path=name) from None
        raise UsageError(
            f"{name}: the {fmt.upper()} file is corrupt and cannot be decoded; "
            "send it again from the camera or scanner",
            path=name,
            format=fmt,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # Pillow reports truncation as OSError("image file is truncated ..."), broken
        # chunks as SyntaxError/ValueError; the text names no pixel content.
        why = "truncated" if "truncated" in str(e) or isinstance(e, EOFError) else "corrupt"
        raise UsageError(
            f"{name}: the {fmt.upper()} file is {why} and cannot be decoded; "
            "send it again from the camera or scanner",
            path=name,
            format=fmt,
        ) from None
    return Loaded(
        im, fmt, content_id(data), len(data), orientation if orientation in range(1, 9) else 1, reduced
    )


def _check_dims(name: str, w: int, h: int, limits: ImageLimits, fmt: str) -> None:
    if w < 1 or h < 1:
        raise UsageError(f"{name}: the image has no pixels ({w}x{h})", path=name)
    if max(w, h) > limits.max_side:
        raise LimitExceeded(
            f"{name}: {w}x{h} is over the {limits.max_side}-pixel side limit",
            limit=limits.max_side,
            value=max(w, h),
        )
    cap = limits.max_pixels * (limits.jpeg_draft_factor**2 if fmt == "jpeg" else 1)
    if w * h > cap:
        raise LimitExceeded(
            f"{name}: {w}x{h} ({w * h / 1e6:.0f} MP) is over the {limits.max_pixels / 1e6:.0f} MP limit",
            limit=limits.max_pixels,
            value=w * h,
        )


def _to_8bit(im: Image.Image) -> Image.Image:
    """RGB or L, 8 bits: alpha over white (screenshots), 16-bit grey stretched to its range."""
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((a - lo) * scale).round().astype(np.uint8))
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
        return out.convert("L") if im.mode in ("LA", "La") else out
    return im.convert("RGB")


# ------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class KindFeatures:
    """The measurements behind :func:`detect_kind`, on the central 70% of a <=512 px thumbnail.

    * ``median``: median luma (paper is bright, film is not);
    * ``dark`` / ``bright``: fractions of luma < 50 and > 140;
    * ``chroma``: mean of max(R,G,B) - min(R,G,B) (film and print are nearly grey);
    * ``ink``: fraction of pixels > 40 darker than their 13x13 neighbourhood (text strokes);
    * ``grid``: strength of reddish *lines*: pixels redder than their neighbourhood, as
      the 90th percentile minus the median of their per-column and per-row fractions (the
      smaller of the two). Lines that cross the frame make some columns/rows rich in such
      pixels; skin or a red shirt makes all of them alike, so its score stays near 0.
    """

    median: float
    dark: float
    bright: float
    chroma: float
    ink: float
    grid: float


@dataclass(frozen=True)
class KindRules:
    """Thresholds of :func:`detect_kind`, set on the corpus and on generated images."""

    film_dark: float = 0.20  # a film frame is mostly dark...
    film_bright: float = 0.05  # ...with bright anatomy on it...
    film_chroma: float = 25.0  # ...and no colour
    paper_median: float = 130.0  # paper (lit unevenly) stays above this
    paper_dark: float = 0.05  # and almost nothing on it is black
    ecg_grid: float = 0.06  # ECG 0.15-0.20, reports 0.0, noisy skin 0.02
    report_ink: tuple[float, float] = (0.01, 0.30)  # some text, not a picture
    report_chroma: float = 45.0  # cream paper under warm light is ~25


KIND_RULES = KindRules()


def kind_features(image: Image.Image) -> KindFeatures:
    """Measure what :func:`detect_kind` decides on (see :class:`KindFeatures`)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((512, 512), Image.Resampling.BILINEAR)
    w, h = thumb.size
    c = thumb.crop((int(w * 0.15), int(h * 0.15), max(int(w * 0.85), 1), max(int(h * 0.85), 1)))
    rgb = np.asarray(c, dtype=np.int16)
    gray_im = c.convert("L")
    y = np.asarray(gray_im, dtype=np.float32)
    bg = np.asarray(gray_im.filter(ImageFilter.BoxBlur(6)), dtype=np.float32)
    redness = np.clip(rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) // 2 + 128, 0, 255).astype(np.uint8)
    red_im = Image.fromarray(redness)
    red_hp = redness.astype(np.float32) - np.asarray(red_im.filter(ImageFilter.BoxBlur(3)), dtype=np.float32)
    lines = red_hp > 6
    cols, rows = lines.mean(axis=0), lines.mean(axis=1)
    grid = min(
        float(np.percentile(cols, 90) - np.median(cols)), float(np.percentile(rows, 90) - np.median(rows))
    )
    return KindFeatures(
        median=float(np.median(y)),
        dark=float((y < 50).mean()),
        bright=float((y > 140).mean()),
        chroma=float((rgb.max(axis=2) - rgb.min(axis=2)).mean()),
        ink=float(((bg - y) > 40).mean()),
        grid=grid,
    )


def detect_kind(image: Image.Image | Loaded, rules: KindRules = KIND_RULES) -> Kind:
    """Guess what a photo shows, for ``--as auto``. Simple rules, in this order:

    1. **film**: a dark frame (>= 20% of the centre below luma 50) carrying bright structure
       (>= 5% above 140), nearly colourless: a CT/X-ray film on a light box or a monitor;
    2. **ecg**: paper (bright median, almost no black) ruled with reddish grid lines;
    3. **report**: paper with text-like dark strokes (1-30% ink) and little colour;
    4. **photo** otherwise (wounds, rashes, labels, people): colour is kept.

    A wrong guess costs legibility, not data: the user can say ``--as`` and every kind
    keeps the full original for tiles. ECG paper ruled in black or green is not recognised
    (it comes out as report): say ``--as ecg``.
    """
    im = image.image if isinstance(image, Loaded) else image
    f = kind_features(im)
    if f.dark >= rules.film_dark and f.bright >= rules.film_bright and f.chroma <= rules.film_chroma:
        return "film"
    paper = f.median >= rules.paper_median and f.dark <= rules.paper_dark
    if paper and f.grid >= rules.ecg_grid:
        return "ecg"
    lo, hi = rules.report_ink
    if paper and lo <= f.ink <= hi and f.chroma <= rules.report_chroma:
        return "report"
    return "photo"


# ------------------------------------------------------------------------------ encoding


@dataclass(frozen=True)
class Profile:
    """How a kind is prepared and which sizes the first-view search tries.

    ``sides`` are candidate longest sides, largest first; the search never upscales. The
    report ladder stops at 1000 px: below ~85 dpi for A4 the x-height of 10-point text drops
    under 6 px and OCR falls apart, however clean the compression.
    """

    gray: bool
    sides: tuple[int, ...]
    stretch: bool  # stretch levels (0.5% clip): paper to white, ink to black; cheaper and crisper
    min_quality: dict[str, int]  # below these a codec's artefacts eat strokes: try a smaller size


_MINQ = {"avif": 20, "webp": 25, "jpeg": 25}
PROFILES: dict[ViewKind, Profile] = {
    "report": Profile(True, (1600, 1400, 1280, 1150, 1000), True, _MINQ),
    "ecg": Profile(True, (1800, 1600, 1400, 1200, 1000), True, _MINQ),
    "film": Profile(True, (1400, 1200, 1000, 800, 640), False, _MINQ),
    "photo": Profile(False, (1280, 1024, 800, 640, 480), False, _MINQ),
    "slice": Profile(True, (1024, 768, 512, 384, 256), False, _MINQ),
}

_MIME = {"avif": "image/avif", "webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}


AVIF_SPEED = 8  # libaom effort. Measured on the corpus at 1000-1400 px: speed 7 is 0-3% smaller and
# 2x slower; speed 9 is 5-25% larger (worst on text), which would also skew the codec comparison.
WEBP_METHOD = 6  # 2-6% smaller than method 4 for ~30% more time; WebP is the cheap one anyway


def available_codecs() -> tuple[str, ...]:
    """Lossy codecs this Pillow can encode, best compression first (AVIF, WebP, JPEG)."""
    order = [("avif", "avif"), ("webp", "webp"), ("jpeg", "jpg")]
    return tuple(name for name, feat in order if features.check(feat))


def encode(image: Image.Image, codec: str, quality: int) -> bytes:
    """Encode with one codec at one quality, without any metadata (no EXIF, no ICC, no XMP)."""
    buf = io.BytesIO()
    if codec == "avif":
        # a grey picture goes monochrome (4:0:0): no chroma planes to code, ~2-3% fewer
        # bytes and ~25% less encoding time; it decodes as grey ("L")
        sub = "4:0:0" if image.mode == "L" else "4:2:0"
        image.save(buf, "AVIF", quality=quality, speed=AVIF_SPEED, subsampling=sub)
    elif codec == "webp":
        image.save(buf, "WEBP", quality=quality, method=WEBP_METHOD)
    elif codec == "jpeg":
        image.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    elif codec == "png":
        image.save(buf, "PNG", optimize=True)
    else:
        raise UsageError(f"unknown codec {codec!r}")
    return buf.getvalue()


def prepare_view(image: Image.Image, kind: ViewKind) -> Image.Image:
    """The picture a kind is encoded from: grey for documents and films, levels stretched on paper."""
    prof = PROFILES[kind]
    out = image.convert("L") if prof.gray else image.convert("RGB")
    if prof.stretch:
        out = ImageOps.autocontrast(out, cutoff=0.5, preserve_tone=True)
    return out


def _resize(image: Image.Image, side: int) -> Image.Image:
    w, h = image.size
    if max(w, h) <= side:
        return image
    s = side / max(w, h)
    return image.resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS, reducing_gap=3.0
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 99.0 if mse <= 1e-9 else 10.0 * math.log10(255.0 * 255.0 / mse)


def _fit_quality(
    small: Image.Image, codec: str, budget: int, lo: int, hi: int = 95, start: int | None = None
) -> tuple[int, bytes] | None:
    """The highest quality in [lo, hi] (to within 3) whose encoding fits ``budget``, or None.

    Encoded size grows about exponentially with quality, so the probes interpolate
    log(size) between the bracketing qualities (a secant search) instead of halving: 2-4
    encodes instead of 6. ``start`` (the quality a larger size reached) is probed first:
    at a smaller size it nearly always fits, and a fit there proves that ``lo`` fits too,
    so ``lo`` costs no encode of its own (one encode fewer per size after the first).
    """
    best: tuple[int, bytes] | None = None
    lo_size, hi_size = 0, None
    if start is not None and lo < start < hi:
        data = encode(small, codec, start)
        if len(data) <= budget:
            best, lo, lo_size = (start, data), start, len(data)
        else:
            hi, hi_size = start, len(data)
    probe: int | None = None
    if best is None:
        data = encode(small, codec, lo)
        if len(data) > budget:
            return None
        best, lo_size = (lo, data), len(data)
        if hi_size is None:  # ~+24 quality doubles the size (AVIF, WebP, JPEG)
            probe = lo + int(24 * math.log2(budget / lo_size))
    for _ in range(5):
        if lo_size >= 0.95 * budget or hi - lo <= 3:
            break  # within 5% of the budget or 3 quality steps: more encodes buy nothing visible
        if probe is None:
            probe = _next_probe(lo, lo_size, hi, hi_size, budget)
        probe = max(lo + 1, min(hi - 1, probe))
        data = encode(small, codec, probe)
        if len(data) <= budget:
            best, lo, lo_size = (probe, data), probe, len(data)
        else:
            hi, hi_size = probe, len(data)
        probe = None
    return best


def _next_probe(lo: int, lo_size: int, hi: int, hi_size: int | None, budget: int) -> int:
    """The next quality to try: a step up from the best fit so far, or the secant between it
    and the lowest quality known to be over."""
    if hi_size is None:
        return lo + max(4, int(24 * math.log2(budget / lo_size)))
    frac = math.log(budget / lo_size) / math.log(hi_size / lo_size)
    return lo + max(1, int((hi - lo) * frac))


def _score(data: bytes, ref: Image.Image, ref_arr: np.ndarray) -> float:
    with Image.open(io.BytesIO(data)) as dec:
        back = dec.convert("L")
    if back.size != ref.size:
        back = back.resize(ref.size, Image.Resampling.BICUBIC)
    return _psnr(np.asarray(back), ref_arr)


def first_view(
    image: Image.Image,
    kind: ViewKind,
    budget_bytes: int | None = None,
    codecs: Iterable[str] | None = None,
    limits: FirstViewLimits = FIRST_VIEW,
    *,
    compare: bool = False,
) -> Encoded:
    """The one small picture sent first, its size and quality chosen by measurement.

    Codec: the first of AVIF, WebP, JPEG that this Pillow has and ``codecs`` allows (pass
    the set the receiver can decode). On every corpus image AVIF gave the best fidelity at
    equal bytes (by 0.4-4 dB PSNR over WebP, 3-7 dB over JPEG), so measuring the others
    at run time would double the work for nothing; ``compare=True`` measures every allowed
    codec and keeps the best (the benchmark uses it to keep that claim honest).

    Size and quality: for each candidate size of the kind's ladder, largest first, find the
    highest quality that fits ``budget_bytes``; skip sizes where even the codec's minimum
    quality does not fit. Each fitting candidate is decoded, scaled back to the reference
    size (the ladder's largest side) and compared with the prepared original there (PSNR):
    one number that trades resolution lost to downscaling against strokes lost to
    compression, which is what legibility is made of. The best PSNR wins.

    A picture small enough to go lossless (PNG) within the budget goes lossless: a 128x128
    CT slice is ~9 KB of PNG. A report page that is already two-level (docscan's choice for
    a page of print) goes in two levels, sized to its lines of text, as lossless WebP or
    1-bit PNG (the smaller; among ``codecs``) when that takes at most 3/4 of the budget: as
    legible to OCR as the grey view in about half the bytes, and two cheap encodes instead
    of several AVIF ones (:mod:`medcomm.adapters.twolevel` has the figures). If nothing on
    the ladder fits, sizes keep shrinking (x0.8) at the codec's minimum quality, so a tiny
    budget gives a small picture rather than an error, down to 160 px: below that
    ``LimitExceeded``.
    """
    if codecs is not None:
        codecs = tuple(codecs)  # looked at more than once
    budget = limits.budget(kind) if budget_bytes is None else budget_bytes
    if not limits.min_bytes <= budget <= limits.max_bytes:
        raise UsageError(f"first-view budget {budget} B must be {limits.min_bytes}-{limits.max_bytes} B")
    avail = available_codecs()
    allowed = set(avail if codecs is None else codecs)
    wanted = [c for c in avail if c in allowed]  # our preference order, whatever order was given
    if not wanted:
        raise UsageError("no common image codec (AVIF, WebP or JPEG) to encode a first view with")
    if not compare:
        wanted = wanted[:1]
    lossless = _lossless_if_it_fits(image, kind, budget, codecs)
    if lossless is not None:
        return lossless
    two = _two_level_if_smaller(image, kind, budget, codecs)
    if two is not None:
        return two
    prof = PROFILES[kind]
    base = prepare_view(image, kind)
    longest = max(base.size)
    ladder = sorted({min(s, longest) for s in prof.sides}, reverse=True)
    smalls: dict[int, Image.Image] = {}
    ref = smalls[ladder[0]] = _resize(base, ladder[0])
    ref_arr = np.asarray(ref.convert("L"))
    best: tuple[float, str, int, int, bytes] | None = None  # score, codec, side, quality, data
    for codec in wanted:
        prev, start = -1.0, None
        for side in ladder:
            if side not in smalls:
                smalls[side] = _resize(ref, side)  # from the reference: 10x cheaper, same look
            fit = _fit_quality(smalls[side], codec, budget, prof.min_quality.get(codec, 20), start=start)
            if fit is None:
                continue  # even the minimum quality is over budget at this size: go smaller
            q, data = fit
            start = q
            score = _score(data, ref, ref_arr)
            if best is None or score > best[0]:
                best = (score, codec, side, q, data)
            if score < prev:
                break  # past the peak: smaller sizes only lose more resolution
            prev = score
    if best is None:
        best = _shrink_to_fit(ref, ladder[-1], wanted, budget, prof, ref, ref_arr)
    score, codec, side, q, data = best
    w, h = _resize(ref, side).size if side not in smalls else smalls[side].size
    return Encoded(data, _MIME[codec], w, h, q, codec, True, round(score, 2))


def _lossless_if_it_fits(
    image: Image.Image, kind: ViewKind, budget: int, codecs: Iterable[str] | None
) -> Encoded | None:
    """PNG of the prepared picture at native size, if it fits the budget (small pictures only).

    Tried only where it can fit: PNG seldom beats 4:1 on photos or 2:1 on CT noise, so a
    picture of more than 4 pixels per budget byte is not even encoded.
    """
    if codecs is not None and "png" not in codecs:
        return None
    if image.width * image.height > 4 * budget:
        return None
    base = prepare_view(image, kind)
    data = encode(base, "png", 100)
    if len(data) > budget:
        return None
    return Encoded(data, _MIME["png"], base.width, base.height, 100, "png", False, 99.0)


def _two_level_if_smaller(
    image: Image.Image, kind: ViewKind, budget: int, codecs: Iterable[str] | None
) -> Encoded | None:
    """The two-level view of a two-level report page, when it is clearly the smaller one.

    Reports only: that is what was measured (OCR of the corpus reports; ECG traces and films
    are not ink on paper). Lossy, and labelled so: every grey of the original is gone.
    """
    if kind != "report":
        return None
    from medcomm.adapters import twolevel

    lossless = [c for c in ("webp", "png") if c == "png" or c in available_codecs()]
    usable = [c for c in lossless if codecs is None or c in codecs]
    if not usable or not twolevel.is_two_level(image):
        return None
    view = twolevel.two_level_view(image, budget, usable)
    if view is None:
        return None
    return Encoded(
        view.data, _MIME[view.codec], view.width, view.height, 100, view.codec, True, round(view.psnr, 2)
    )


def _shrink_to_fit(
    base: Image.Image,
    side: int,
    codecs: list[str],
    budget: int,
    prof: Profile,
    ref: Image.Image,
    ref_arr: np.ndarray,
) -> tuple[float, str, int, int, bytes]:
    side = int(side * 0.8)
    while side >= 160:
        small = _resize(base, side)
        for codec in codecs:
            q = prof.min_quality.get(codec, 20)
            data = encode(small, codec, q)
            if len(data) <= budget:
                return _score(data, ref, ref_arr), codec, side, q, data
        side = int(side * 0.8)
    raise LimitExceeded(f"no first view fits in {budget} bytes with {', '.join(codecs)}", limit=budget)


def tile(
    image: Image.Image,
    tile_id: TileId | str,
    kind: ViewKind = "photo",
    codec: str | None = None,
    settings: TileSettings = TILE_SETTINGS,
    limits: TileLimits = TILES,
) -> Encoded:
    """One tile of the corrected original at its pyramid level (see :mod:`medcomm.core.tiles`).

    ``image`` is the corrected original; grey kinds are cut from its grey version. Level 0
    tiles are plain crops, at native resolution; higher levels are the crop downscaled by
    2**level. Encoded lossy with the best codec available (or ``codec``) at the kind's fixed
    quality: bytes, not beauty, are the constraint, and the label says it is lossy.
    """
    tid = TileId.parse(tile_id) if isinstance(tile_id, str) else tile_id
    pyr = Pyramid(image.width, image.height, limits)
    b = pyr.box(tid)
    prof = PROFILES[kind]
    part = image.crop((b.x0, b.y0, b.x1, b.y1))
    part = part.convert("L") if prof.gray else part.convert("RGB")
    if (part.width, part.height) != (b.out_w, b.out_h):
        part = part.resize((b.out_w, b.out_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    use = codec or available_codecs()[0]
    if use == "png":
        return Encoded(encode(part, "png", 100), _MIME["png"], part.width, part.height, 100, "png", False)
    q = settings.quality(kind, use)
    return Encoded(encode(part, use, q), _MIME[use], part.width, part.height, q, use)


# ------------------------------------------------------------------------------- pipeline


def prepare(
    source: str | Path | bytes,
    as_kind: str = "auto",
    correct: Correct | None = None,
    *,
    window: str | None = None,
    budget_bytes: int | None = None,
    codecs: Iterable[str] | None = None,
) -> Prepared:
    """``medcomm share``'s image work, end to end, for one file.

    ``correct`` is docscan's ``correct(image, mode)`` (module doc); ``None`` means no
    correction (tests, or a build without docscan). DICOM files take the DICOM path:
    ``window`` names a preset (``lung``, ``mediastinum``, ``bone``, ``brain``), ``own`` (the
    file's) or ``C/W``; ``as_kind`` does not apply to them.
    """
    if _is_dicom(source):
        return _prepare_dicom(read_source(source, _dicom_max_bytes()), window, budget_bytes, codecs)
    if window is not None:
        raise UsageError("--window applies to DICOM files only")
    loaded = load(source)
    if as_kind == "auto":
        kind: Kind = detect_kind(loaded)
    elif as_kind in KINDS:
        kind = as_kind  # type: ignore[assignment]
    else:
        raise UsageError(f"--as must be one of {', '.join(KINDS)} or auto, not {as_kind!r}")
    img = loaded.image if correct is None else _to_8bit(correct(loaded.image, kind))
    first = first_view(img, kind, budget_bytes, codecs)
    source = prepare_view(img, kind)  # once, globally: a per-tile stretch would make a patchwork
    caption = f"{kind} · {img.width}x{img.height} original · {first.label}"
    return Prepared(loaded.content_id, kind, source, first, caption, Pyramid(img.width, img.height))


def _is_dicom(source: str | Path | bytes) -> bool:
    """Look at the first 132 bytes only: the DICOM limit is larger than the image limit."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[128:132]) == b"DICM"
    try:
        with Path(source).open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False  # load() says what is wrong with the path


def _dicom_max_bytes() -> int:
    from medcomm.adapters.dicom import DICOM_LIMITS

    return DICOM_LIMITS.max_file_bytes


def _prepare_dicom(
    data: bytes, window: str | None, budget_bytes: int | None, codecs: Iterable[str] | None
) -> Prepared:
    from medcomm.adapters import dicom

    dimg = dicom.read(data)
    rendered = dicom.render(dimg, window or "own")
    first = first_view(rendered.image, "slice", budget_bytes, codecs)
    caption = dicom.caption(dimg.info, rendered.window, (first.width, first.height))
    img = rendered.image
    return Prepared(
        content_id(data), "slice", img, first, f"{caption} · {first.label}", Pyramid(img.width, img.height)
    )

"""DICOM slices for ``medcomm share``: read safely, modality LUT, window, 8 bits (pydicom here).

A CT slice holds 12-16 bits of Hounsfield units; a screen and every lossy codec we can send
(AVIF is 8-bit only in Pillow) show 8. The doctor's window decides which 256 of the ~4000
levels matter, so the window is part of the picture and goes into the caption, with the
pixel spacing and slice thickness that make distances on it measurable.

Steps: limits checked on the header *before* any pixel is decoded (a hostile file that
declares 60000x60000 never allocates), then one frame decoded, the modality LUT applied
(Rescale Slope/Intercept or a Modality LUT Sequence: CT values become HU), then a linear
window (DICOM PS3.3 C.11.2.1.2.1) to 8-bit grey. MONOCHROME1 is inverted after windowing.
Colour images (RGB, YBR, palette) pass through at 8 bits without a window.

Nothing from the header that names a person (patient name, id, birth date, institution)
ever goes into a caption or a message: the caption is modality, spacing, thickness, window.
Compressed transfer syntaxes decode through what pydicom finds (Pillow handles JPEG baseline
and JPEG 2000, numpy RLE); JPEG-LS and JPEG Lossless need pylibjpeg or gdcm, and their
absence is a clear :class:`~medcomm.errors.UsageError`, never a traceback.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medcomm.adapters.imaging import read_source
from medcomm.errors import LimitExceeded, UsageError


@dataclass(frozen=True)
class DicomLimits:
    """What :func:`read` accepts. One CT slice is 512 KB; a 300-frame enhanced CT ~150 MB."""

    max_file_bytes: int = 256 * 1024 * 1024
    max_side: int = 8192  # rows or columns: digital mammography reaches ~4100x3300
    max_frame_pixels: int = 40_000_000  # one frame; 8192x4883
    max_frames: int = 4096
    max_bits: int = 32  # BitsAllocated
    max_samples: int = 3  # SamplesPerPixel: grey or colour


DICOM_LIMITS = DicomLimits()


@dataclass(frozen=True)
class Window:
    """A linear VOI window: centre and width in modality units (HU for CT)."""

    name: str  # a preset name, "own", "auto" or "custom"
    center: float
    width: float

    def label(self) -> str:
        """``lung C-600 W1500``: how the caption shows it."""
        return f"{self.name} C{self.center:g} W{self.width:g}"


PRESETS: dict[str, Window] = {
    "lung": Window("lung", -600, 1500),
    "mediastinum": Window("mediastinum", 50, 350),
    "bone": Window("bone", 400, 1800),
    "brain": Window("brain", 40, 80),
}
_CW_RE = re.compile(r"^\s*(-?\d{1,5}(?:\.\d+)?)\s*/\s*(\d{1,5}(?:\.\d+)?)\s*$")


def parse_window(text: str) -> str | Window:
    """``--window``: a preset name, ``own`` (the file's), ``auto`` (the data's range) or ``C/W``."""
    name = text.strip().lower()
    if name in PRESETS or name in ("own", "auto"):
        return name
    m = _CW_RE.match(name)
    if m is None or float(m[2]) < 1:
        raise UsageError(
            f"--window must be one of {', '.join(PRESETS)}, own, auto or CENTER/WIDTH (e.g. 40/400); "
            f"got {text[:30]!r}"
        )
    return Window("custom", float(m[1]), float(m[2]))


@dataclass(frozen=True)
class DicomInfo:
    """The header facts the viewer needs; deliberately no identifying fields."""

    modality: str
    rows: int
    columns: int
    frames: int
    frame: int  # the frame shown (0-based)
    photometric: str
    pixel_spacing: tuple[float, float] | None  # mm (row spacing, column spacing)
    slice_thickness: float | None  # mm
    own_window: Window | None  # the file's first WindowCenter/WindowWidth
    units: str  # "HU" for CT after the modality LUT, else ""
    transfer_syntax: str


@dataclass(frozen=True)
class DicomImage:
    """One decoded frame: modality values (float32, 2-D) or 8-bit RGB (H, W, 3)."""

    values: np.ndarray
    info: DicomInfo

    @property
    def is_color(self) -> bool:
        """Colour frames are shown as they are, without a window."""
        return self.values.ndim == 3


@dataclass(frozen=True)
class Rendered:
    """An 8-bit picture of a frame and the window that made it (None for colour)."""

    image: Image.Image
    window: Window | None


def _num(ds: Any, keyword: str) -> float | None:
    """First value of a numeric element, or None if absent or unreadable."""
    try:
        v = ds.get(keyword)
        if v is None or v == "":
            return None
        if not isinstance(v, int | float | str) and hasattr(v, "__len__"):  # MultiValue: take the first
            v = list(v)[0]
        return float(v)
    except (TypeError, ValueError, IndexError, NotImplementedError, OverflowError):
        return None  # absent, or damaged (an unknown VR): the same for a number we can do without


def _int(ds: Any, keyword: str, default: int | None = None) -> int:
    v = _num(ds, keyword)
    if v is None:
        if default is None:
            raise UsageError(f"the DICOM file has no {keyword}: it holds no image")
        return default
    return int(v)


#: What pydicom raises while parsing a damaged element lazily, on first access (an unknown VR,
#: a UID that is not a transfer syntax, a value of the wrong length): the file's fault, not ours.
_PARSE_ERRORS = (
    NotImplementedError, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError
)


def read(
    source: str | Path | bytes, *, frame: int | None = None, limits: DicomLimits = DICOM_LIMITS
) -> DicomImage:
    """Read one frame of a DICOM file (the middle one if ``frame`` is None), modality LUT applied.

    :class:`UsageError` for what is not a readable DICOM image (no DICM preamble, truncated
    or damaged header or pixel data, no pixels, an unsupported compression); :class:`LimitExceeded`
    for declared sizes over ``limits``.
    """
    name = Path(source).name if isinstance(source, str | Path) else "DICOM file"
    try:
        return _read(source, name, frame, limits)
    except _PARSE_ERRORS as e:
        why = f"{name}: a DICOM header element is damaged ({type(e).__name__})"
        raise UsageError(why, path=name) from None


def _read(source: str | Path | bytes, name: str, frame: int | None, limits: DicomLimits) -> DicomImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    data = read_source(source, limits.max_file_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd VR; we judge the result
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise UsageError(f"{name} is not a DICOM file (no DICM preamble)", path=name) from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for broken files
        raise UsageError(
            f"{name}: the DICOM header is broken or truncated ({type(e).__name__})", path=name
        ) from None
    if "PixelData" not in ds:
        raise UsageError(
            f"{name} is a DICOM file without an image (a report, plan or structure set)", path=name
        )
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", 1)
    bits = _int(ds, "BitsAllocated", 16)
    samples = _int(ds, "SamplesPerPixel", 1)
    _check_header(name, rows, cols, frames, bits, samples, limits)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ts_name = getattr(ts, "name", str(ts or "unknown"))
    if ts is not None and not ts.is_compressed:
        expected = rows * cols * frames * samples * bits // 8 if bits >= 8 else -(-rows * cols * frames // 8)
        got = len(ds.PixelData)
        if got < expected:
            raise UsageError(f"{name}: pixel data is truncated ({got} of {expected} bytes)", path=name)
    index = frames // 2 if frame is None else frame
    if not 0 <= index < frames:
        raise UsageError(f"{name} has {frames} frame(s); frame {frame} does not exist", path=name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=index if frames > 1 else None)
            arr = ds.pixel_array
    except (RuntimeError, NotImplementedError, ImportError) as e:
        if "missing dependencies" in str(e) or "plugins" in str(e) or isinstance(e, ImportError):
            raise UsageError(
                f"{name} is compressed as {ts_name}, which this install cannot decode "
                "(it needs pylibjpeg or gdcm); export it uncompressed from the PACS",
                path=name,
                transfer_syntax=ts_name,
            ) from None
        raise UsageError(
            f"{name}: the image data cannot be decoded ({type(e).__name__})", path=name
        ) from None
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"{name}: the image data is corrupt or truncated ({type(e).__name__})", path=name
        ) from None
    modality = str(ds.get("Modality", "") or "").strip().upper() or "OT"
    units = ""
    if photometric.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise UsageError(f"{name}: unexpected {arr.ndim}-D grey frame", path=name)
        try:
            values = apply_modality_lut(arr, ds).astype(np.float32, copy=False)
        except Exception as e:  # noqa: BLE001 - a malformed LUT sequence
            raise UsageError(f"{name}: broken modality LUT ({type(e).__name__})", path=name) from None
        if modality == "CT" and ("RescaleSlope" in ds or "ModalityLUTSequence" in ds):
            units = "HU"
    elif photometric == "PALETTE COLOR":
        try:
            values = _to_uint8_rgb(apply_color_lut(arr, ds))
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"{name}: broken palette ({type(e).__name__})", path=name) from None
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"):
        values = _to_uint8_rgb(arr, _int(ds, "BitsStored", bits))  # pydicom gives RGB by default
    else:
        raise UsageError(f"{name}: photometric interpretation {photometric} is not supported", path=name)
    info = DicomInfo(
        modality=modality,
        rows=rows,
        columns=cols,
        frames=frames,
        frame=index,
        photometric=photometric,
        pixel_spacing=_spacing(ds),
        slice_thickness=_num(ds, "SliceThickness"),
        own_window=_own_window(ds),
        units=units,
        transfer_syntax=ts_name,
    )
    return DicomImage(values, info)


def _check_header(
    name: str, rows: int, cols: int, frames: int, bits: int, samples: int, lim: DicomLimits
) -> None:
    if rows < 1 or cols < 1 or frames < 1:
        raise UsageError(f"{name}: the image has no pixels ({rows}x{cols}, {frames} frames)", path=name)
    if max(rows, cols) > lim.max_side or rows * cols > lim.max_frame_pixels:
        raise LimitExceeded(
            f"{name}: declared {cols}x{rows} pixels is over the {lim.max_side}-pixel limit",
            limit=lim.max_side,
            value=max(rows, cols),
        )
    if frames > lim.max_frames:
        raise LimitExceeded(
            f"{name}: {frames} frames is over the {lim.max_frames}-frame limit",
            limit=lim.max_frames,
            value=frames,
        )
    if bits not in (1, 8, 16, 32) or bits > lim.max_bits:
        raise UsageError(f"{name}: {bits} bits per pixel is not supported", path=name)
    if not 1 <= samples <= lim.max_samples:
        raise UsageError(f"{name}: {samples} samples per pixel is not supported", path=name)


def _spacing(ds: Any) -> tuple[float, float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        try:
            if v is not None and len(v) == 2:
                r, c = float(v[0]), float(v[1])
                if r > 0 and c > 0:
                    return (r, c)
        except (TypeError, ValueError):
            continue
    return None


def _own_window(ds: Any) -> Window | None:
    c, w = _num(ds, "WindowCenter"), _num(ds, "WindowWidth")
    if c is None or w is None or not math.isfinite(c) or not math.isfinite(w) or w < 1:
        return None  # absent, nonsense (NaN, infinite) or degenerate: the data's own range instead
    return Window("own", c, w)


def _to_uint8_rgb(arr: np.ndarray, bits_stored: int = 8) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UsageError("unexpected colour frame layout")
    if arr.dtype == np.uint8:
        return arr
    top = float(arr.max()) if arr.size else 0.0
    scale = 255.0 / top if top > 255 else 1.0
    return (arr.astype(np.float32) * scale).clip(0, 255).round().astype(np.uint8)


def auto_window(values: np.ndarray) -> Window:
    """A window over the 0.5-99.5 percentile range of the frame: for files that carry none."""
    lo, hi = (float(x) for x in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    return Window("auto", round((lo + hi) / 2, 1), round(hi - lo, 1))


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Linear VOI LUT of DICOM PS3.3 C.11.2.1.2.1 to 0-255 (uint8)."""
    c, w = window.center, max(window.width, 1.0)
    y = ((values - (c - 0.5)) / (w - 1.0 if w > 1 else 1.0) + 0.5) * 255.0
    return np.clip(y, 0.0, 255.0).round().astype(np.uint8)


def render(dimg: DicomImage, window: str | Window = "own") -> Rendered:
    """The 8-bit picture of a frame under a window: a preset, ``own``, ``auto`` or a :class:`Window`.

    ``own`` falls back to ``auto`` when the file names no window. Colour frames ignore it.
    """
    if dimg.is_color:
        return Rendered(Image.fromarray(dimg.values, "RGB"), None)
    choice = parse_window(window) if isinstance(window, str) else window
    if isinstance(choice, Window):
        win = choice
    elif choice == "own":
        win = dimg.info.own_window or auto_window(dimg.values)
    elif choice == "auto":
        win = auto_window(dimg.values)
    else:
        win = PRESETS[choice]
    out = apply_window(dimg.values, win)
    if dimg.info.photometric == "MONOCHROME1":
        out = 255 - out
    return Rendered(Image.fromarray(out, "L"), win)


def caption(info: DicomInfo, window: Window | None, view: tuple[int, int] | None = None) -> str:
    """``CT 128x128 · 0.66x0.66 mm/px · slice 5 mm · window mediastinum C50 W350 HU``.

    ``view`` (the first view's size) adds the spacing *on that view*, so a distance measured
    on the preview is right too.
    """
    parts = [f"{info.modality} {info.columns}x{info.rows}"]
    if info.frames > 1:
        parts.append(f"frame {info.frame + 1}/{info.frames}")
    if info.pixel_spacing is not None:
        r, c = info.pixel_spacing
        parts.append(f"{c:.3g}x{r:.3g} mm/px")
        if view is not None and view[0] and view != (info.columns, info.rows):
            s = info.columns / view[0]
            parts.append(f"preview {view[0]}x{view[1]} at {c * s:.3g}x{r * s:.3g} mm/px")
    if info.slice_thickness:
        parts.append(f"slice {info.slice_thickness:g} mm")
    if window is not None:
        parts.append(f"window {window.label()}" + (f" {info.units}" if info.units else ""))
    return " · ".join(parts)

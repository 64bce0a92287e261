"""Picture metrics for ``scripts/bench images``: OCR legibility and SSIM, numpy only.

OCR legibility is what a doctor needs from a photographed lab report: the result values.
:func:`values_found` counts how many of ``truth.json``'s values appear among the numbers of an
OCR text (tesseract's, run by :func:`ocr`), after :func:`normalise`:

* Unicode NFKC, so full-width digits and points (``１２．５``, common in Chinese text) become
  ASCII;
* a decimal separator between two digits, whatever tesseract made of it (``,`` ``·`` ``•``
  ``．`` ``。``, with spaces around it or not) becomes ``.`` (``11,0``, ``11 .0``
  and ``11·0`` read ``11.0``);
* nothing else: no letter is turned into a digit (``O`` -> ``0`` would credit OCR with
  readings it did not make), and ``11`` does not count as ``11.0`` (a lost decimal point
  is a misreading).

Numbers are then whole tokens (``\\d+(\\.\\d+)?`` not inside a longer number), and a value
is found when the text holds it at least as many times as the value list does (so a value
listed twice needs two readings). A value that is also printed elsewhere on the page (``40``
as a result and in the range ``40-55``) may be found there: the score is the same for every
picture compared, so the comparison stays fair.

SSIM (Wang et al. 2004) on 8-bit grey: an 11-tap Gaussian window (sigma 1.5), K1 0.01, K2
0.03, L 255, mean of the SSIM map over the valid part (no padding); colour pictures are
compared in grey (ITU-R 601 luma, as Pillow's ``convert("L")``).
"""

from __future__ import annotations

import os
import re
import subprocess
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESSERACT = "/usr/bin/tesseract"
_DECIMAL = re.compile(r"(?<=\d)[ \t]*[.,·•．。][ \t]*(?=\d)")
_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d]|\.\d)")


def normalise(text: str) -> str:
    """OCR text with digits and decimal points made comparable (see the module doc)."""
    text = unicodedata.normalize("NFKC", text)
    return _DECIMAL.sub(".", text)


def numbers(text: str) -> list[str]:
    """The numbers of a text, in order, after :func:`normalise`."""
    return _NUMBER.findall(normalise(text))


@dataclass(frozen=True)
class Found:
    """How many of the expected values an OCR text holds, and which are missing."""

    found: int
    total: int
    missing: tuple[str, ...]

    @property
    def share(self) -> float:
        return self.found / self.total if self.total else 0.0

    def text(self) -> str:
        return f"{self.found}/{self.total}"


def values_found(values: list[str], text: str) -> Found:
    """Expected ``values`` found among the numbers of ``text`` (multiset, see the module doc)."""
    want = Counter(normalise(v).strip() for v in values)
    have = Counter(numbers(text))
    missing: list[str] = []
    found = 0
    for value, n in want.items():
        hit = min(n, have.get(value, 0))
        found += hit
        missing += [value] * (n - hit)
    return Found(found, sum(want.values()), tuple(missing))


def ocr(path: Path, lang: str, psm: str = "3", timeout: float = 300.0) -> str:
    """tesseract's text of a picture (LSTM engine, page segmentation ``psm``; 3 is its
    default, automatic layout). One thread each: a 2-core box runs two at a time."""
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run(
        [TESSERACT, str(path), "-", "-l", lang, "--psm", psm],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"tesseract failed on {path.name}: {out.stderr.strip()[:200]}")
    return out.stdout


# --- SSIM ---------------------------------------------------------------------------------------


def gaussian_window(sigma: float = 1.5, taps: int = 11) -> Any:
    """The 1-D Gaussian weights (sum 1) of the separable SSIM window."""
    import numpy as np

    x = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter(img: Any, w: Any) -> Any:
    """Separable 'valid' filtering with ``w`` along both axes: shifted slices, no loops over
    pixels (11 multiply-adds per axis)."""
    n = len(w)
    h, wd = img.shape
    rows = sum(w[k] * img[k : h - n + 1 + k, :] for k in range(n))
    return sum(w[k] * rows[:, k : wd - n + 1 + k] for k in range(n))


def ssim(a: Any, b: Any, *, sigma: float = 1.5, taps: int = 11, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM of two grey pictures of the same size (arrays or PIL images, 0..255)."""
    import numpy as np

    x = _grey(a)
    y = _grey(b)
    if x.shape != y.shape:
        raise ValueError(f"SSIM of pictures of different sizes: {x.shape} and {y.shape}")
    if min(x.shape) < taps:
        raise ValueError(f"SSIM needs at least {taps}x{taps} pixels")
    w = gaussian_window(sigma, taps)
    c1, c2 = (k1 * 255) ** 2, (k2 * 255) ** 2
    mx, my = _filter(x, w), _filter(y, w)
    sxx = _filter(x * x, w) - mx * mx
    syy = _filter(y * y, w) - my * my
    sxy = _filter(x * y, w) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def _grey(p: Any) -> Any:
    import numpy as np

    if hasattr(p, "convert"):  # a PIL image
        p = p.convert("L")
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 3:  # RGB array: ITU-R 601 luma, as Pillow's convert("L")
        arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    return arr

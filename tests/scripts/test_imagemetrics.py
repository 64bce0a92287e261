"""The pure picture metrics of ``scripts/bench images``: SSIM and the OCR value matcher.

No tesseract and no relay here: the SSIM of made-up pictures and the matcher on given text."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.harness.scripts import load_script

im = load_script("benchlib/imagemetrics.py", "imagemetrics_under_test")


def page(seed: int = 0, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """Grey blocks and strokes: something with structure, like a scanned line of text."""
    rng = np.random.default_rng(seed)
    a = np.full(size, 230.0)
    for _ in range(30):
        y, x = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
        a[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = rng.integers(0, 120)
    return a


def test_ssim_of_a_picture_with_itself_is_one_and_falls_with_each_kind_of_damage() -> None:
    a = page()
    assert im.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 25, a.shape), 0, 255)
    blurred = np.asarray(Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2)), dtype=float)
    other = page(seed=2)
    scores = [im.ssim(a, x) for x in (noisy, blurred, other)]
    assert all(s < 0.95 for s in scores), scores
    assert im.ssim(a, other) < im.ssim(a, noisy)  # another page is further than the same page damaged
    # symmetric, and the same for arrays and PIL pictures (grey and colour)
    assert im.ssim(a, noisy) == pytest.approx(im.ssim(noisy, a))
    pic = Image.fromarray(a.astype(np.uint8))
    assert im.ssim(pic, pic.convert("RGB")) == pytest.approx(1.0, abs=1e-9)


def test_ssim_refuses_pictures_it_cannot_compare() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        im.ssim(np.zeros((20, 20)), np.zeros((20, 21)))
    with pytest.raises(ValueError, match="at least"):
        im.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_the_gaussian_window_is_normalised_and_symmetric() -> None:
    w = im.gaussian_window()
    assert len(w) == 11 and w.sum() == pytest.approx(1.0) and np.allclose(w, w[::-1])
    assert w.argmax() == 5


def test_numbers_are_normalised_digits_and_decimal_points() -> None:
    text = "Hb 11,0 H  ref 3.4-20.5  10^9/L  １２．５ mmol  8 .1  Na 136·2\n2026-11-04"
    assert im.numbers(text) == ["11.0", "3.4", "20.5", "10", "9", "12.5", "8.1", "136.2", "2026", "11", "04"]
    assert im.numbers("O.5 l1.2 x") == ["1.2"]  # no letter is read as a digit (nor is .5 a 5)
    assert im.numbers("80\n.5 6") == ["80", "6"]  # a point on the next line is no decimal point


def test_values_are_found_as_whole_numbers_as_often_as_they_are_listed() -> None:
    values = ["80", "11.0", "40", "40", "5.3", "1.5"]
    text = "Creatinine 80 umol/L\nCRP 11,0 H\nAlbumin 40 L 40-55\nTSH 5.38\nTG 11.5"
    found = im.values_found(values, text)
    # 80, 11.0 and both 40s; 5.3 is not 5.38, 1.5 is not inside 11.5
    assert (found.found, found.total) == (4, 6) and sorted(found.missing) == ["1.5", "5.3"]
    assert found.text() == "4/6" and found.share == pytest.approx(4 / 6)
    assert im.values_found(values, "").found == 0
    assert im.values_found(["11.0"], "11").found == 0  # a lost decimal point is a misreading
    assert im.values_found(["１２.5"], "12.5").found == 1  # the list is normalised too

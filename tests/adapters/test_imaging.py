"""Image loading, kind detection, first views and tiles, on small generated images."""

from __future__ import annotations

import builtins
import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from medcomm.adapters import imaging
from medcomm.adapters.imaging import FirstViewLimits, ImageLimits, TileSettings
from medcomm.core.tiles import Pyramid, TileId
from medcomm.errors import LimitExceeded, UsageError

# ------------------------------------------------------------------------- fixtures


def report_page(w: int = 850, h: int = 1100, seed: int = 0) -> Image.Image:
    """A lab report: off-white paper under slightly uneven light, rows of dark text."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), (236, 232, 222))
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=22)
    d.text(
        (60, 50),
        "County Hospital  Laboratory Report",
        fill=(20, 20, 20),
        font=ImageFont.load_default(size=30),
    )
    names = ["Creatinine", "C-reactive protein", "Bilirubin", "Cholesterol", "AST", "Albumin", "Glucose"]
    for i, y in enumerate(range(140, h - 80, 44)):
        d.text((60, y), names[i % len(names)], fill=(25, 25, 25), font=font)
        d.text((420, y), f"{rng.uniform(1, 300):.1f}", fill=(25, 25, 25), font=font)
        d.text((560, y), "mmol/L   3.9-6.1", fill=(25, 25, 25), font=font)
    a = np.asarray(im, dtype=np.float32) * np.linspace(0.9, 1.0, w)[None, :, None]
    a += rng.normal(0, 3, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def ct_film(w: int = 1000, h: int = 800, seed: int = 0) -> Image.Image:
    """A CT film on a light box: brown surround, black film, 3x2 grey 'slices' with bright bone."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), (90, 75, 60))
    d = ImageDraw.Draw(im)
    d.rectangle((40, 40, w - 40, h - 40), fill=(8, 8, 8))
    cw, ch = (w - 100) // 3, (h - 100) // 2
    for i in range(3):
        for j in range(2):
            x, y = 50 + i * cw, 50 + j * ch
            d.ellipse((x + 20, y + 30, x + cw - 20, y + ch - 20), fill=(110, 110, 110))
            d.ellipse(
                (x + cw // 2 - 50, y + ch // 2 - 60, x + cw // 2 + 50, y + ch // 2 + 20), fill=(240, 240, 235)
            )
            d.text((x + 5, y + 5), f"IM {i + 3 * j + 1}", fill=(220, 220, 220))
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, 4, (h, w, 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def ecg_strip(w: int = 1400, h: int = 600) -> Image.Image:
    """ECG paper: pale pink, red 1 mm / 5 mm grid, a black trace with QRS spikes."""
    im = Image.new("RGB", (w, h), (250, 232, 232))
    d = ImageDraw.Draw(im)
    for x in range(0, w, 10):
        d.line((x, 0, x, h), fill=(240, 190, 190) if x % 50 else (225, 120, 120))
    for y in range(0, h, 10):
        d.line((0, y, w, y), fill=(240, 190, 190) if y % 50 else (225, 120, 120))
    for base in (120, 300, 480):
        pts = []
        for x in range(w):
            t = x % 180
            pts.append((x, base + (-70 if t == 60 else 20 if t == 63 else -12 if 100 < t < 125 else 0)))
        d.line(pts, fill=(20, 20, 20), width=2)
    return im


def photo(w: int = 800, h: int = 600, seed: int = 0) -> Image.Image:
    """A colourful scene: smooth colour gradients, noise and blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack(
        [128 + 100 * np.sin(xx / 90), 128 + 90 * np.cos(yy / 70), 128 + 80 * np.sin((xx + yy) / 120)], -1
    )
    a += rng.normal(0, 10, a.shape)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        d.ellipse((x, y, x + 80, y + 60), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


def skin(w: int = 600, h: int = 500, seed: int = 0) -> Image.Image:
    """Reddish, noisy, no lines: must not pass for ECG paper."""
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.float32) + (200, 140, 120)
    a += rng.normal(0, 12, (h, w, 1)) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def to_bytes(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_size(w: int, h: int) -> bytes:
    """A valid-looking PNG whose header declares w x h (a decompression bomb's calling card)."""
    data = bytearray(to_bytes(Image.new("L", (8, 8)), "PNG"))
    ihdr = 8 + 8  # signature, then length + type
    data[ihdr : ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    mse = float(np.mean((x - y) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


# -------------------------------------------------------------------------- loading


def test_format_is_sniffed_from_content_not_name(tmp_path):
    p = tmp_path / "looks_like.jpg"
    p.write_bytes(to_bytes(photo(64, 48), "PNG"))
    loaded = imaging.load(p)
    assert loaded.format == "png"
    assert (loaded.width, loaded.height) == (64, 48)
    assert loaded.content_id == hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"Patient notes: BP 120/80\n", "looks like text"),
        (b"", "empty"),
        (b"%PDF-1.7\n...", "PDF"),
        (b"GIF89a" + bytes(40), "GIF"),
    ],
)
def test_non_images_get_a_clear_message(tmp_path, content, words):
    p = tmp_path / "report.jpg"
    p.write_bytes(content)
    with pytest.raises(UsageError) as e:
        imaging.load(p)
    assert "report.jpg" in str(e.value) and words in str(e.value)
    assert "BP 120" not in str(e.value)  # the content itself is never echoed


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        imaging.load(tmp_path / "nope.jpg")
    with pytest.raises(UsageError):
        imaging.load(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_truncated_files_are_refused_clearly(fmt):
    data = to_bytes(photo(200, 150), fmt)
    with pytest.raises(UsageError, match="truncated|corrupt|cannot be decoded"):
        imaging.load(data[: len(data) * 2 // 3])


def test_every_supported_format_loads():
    im = photo(120, 90)
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF", "AVIF"):
        loaded = imaging.load(to_bytes(im, fmt))
        assert loaded.format == fmt.lower()
        assert loaded.image.mode == "RGB" and loaded.image.size == (120, 90)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    loaded = imaging.load(to_bytes(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.orientation == 6
    assert loaded.image.size == (20, 40)
    r, g, b = loaded.image.getpixel((10, 2))  # the left edge is now on top
    assert b > 200 and r < 50


def test_heic_loads_upright_with_pillow_heif():
    pytest.importorskip("pillow_heif")
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    import pillow_heif

    pillow_heif.register_heif_opener()
    loaded = imaging.load(to_bytes(im, "HEIF", quality=90, exif=exif.tobytes()))
    assert loaded.format == "heif"
    assert loaded.image.size == (20, 40)
    assert loaded.image.getpixel((10, 2))[2] > 200


def test_heic_without_pillow_heif_says_what_to_do(monkeypatch):
    heic = b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heicmiaf" + bytes(64)
    real_import = builtins.__import__

    def no_heif(name, *a, **kw):
        if name == "pillow_heif":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_heif)
    with pytest.raises(UsageError, match="pillow-heif.*Most compatible"):
        imaging.load(heic)


def test_bombs_and_oversize_are_limits():
    with pytest.raises(LimitExceeded, match="side limit"):
        imaging.load(png_with_size(40_000, 10))
    with pytest.raises(LimitExceeded, match="MP limit"):
        imaging.load(png_with_size(9_000, 9_000))  # 81 MP declared, 100 bytes of file
    with pytest.raises(LimitExceeded, match="too many pixels"):
        imaging.load(png_with_size(20_000, 20_000))  # 400 MP: Pillow's own guard fires first
    with pytest.raises(LimitExceeded, match="byte limit"):
        imaging.load(bytes(100), ImageLimits(max_file_bytes=50))
    with pytest.raises(LimitExceeded):
        imaging.load(to_bytes(photo(100, 100), "PNG"), ImageLimits(max_pixels=5000))


def test_oversized_jpeg_is_decoded_reduced_not_refused():
    data = to_bytes(photo(400, 300), "JPEG")
    loaded = imaging.load(data, ImageLimits(max_pixels=40_000))
    assert loaded.reduced == 2
    assert loaded.image.size == (200, 150)
    assert imaging.load(data, ImageLimits(max_pixels=7_000)).image.size == (50, 38)
    with pytest.raises(LimitExceeded):
        imaging.load(data, ImageLimits(max_pixels=1_000))  # would need 1/11: more than 1/8


def test_modes_become_rgb_or_l():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent: white after compositing
    assert imaging.load(to_bytes(rgba, "PNG")).image.getpixel((0, 0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16))
    loaded = imaging.load(to_bytes(grey16, "PNG"))
    assert loaded.image.mode == "L"
    assert loaded.image.getextrema() == (0, 255)
    assert imaging.load(to_bytes(Image.new("1", (8, 8), 1), "PNG")).image.mode == "L"
    assert imaging.load(to_bytes(Image.new("CMYK", (8, 8)), "JPEG")).image.mode == "RGB"


def test_dicom_is_recognised_but_not_loaded_as_a_picture():
    data = bytes(128) + b"DICM" + bytes(64)
    assert imaging.sniff(data) == "dicom"
    with pytest.raises(UsageError, match="DICOM"):
        imaging.load(data)


def test_content_id():
    assert imaging.content_id(b"abc") == hashlib.sha256(b"abc").hexdigest()


# ------------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("make", "kind"),
    [(report_page, "report"), (ct_film, "film"), (ecg_strip, "ecg"), (photo, "photo"), (skin, "photo")],
)
def test_detect_kind(make, kind):
    assert imaging.detect_kind(make()) == kind


def test_detect_kind_survives_grey_and_tiny_images():
    assert imaging.detect_kind(report_page().convert("L")) == "report"
    assert imaging.detect_kind(Image.new("RGB", (3, 3), (255, 255, 255))) == "photo"
    assert imaging.detect_kind(Image.new("L", (1, 1))) in imaging.KINDS


# ----------------------------------------------------------------------- first view


def decode(enc: imaging.Encoded) -> Image.Image:
    im = Image.open(io.BytesIO(enc.data))
    im.load()
    return im


def test_report_first_view_is_grey_within_budget_and_labelled():
    enc = imaging.first_view(report_page(600, 780), "report", 10_000)
    assert len(enc.data) <= 10_000
    assert enc.lossy and "lossy preview" in enc.label
    assert enc.codec == imaging.available_codecs()[0]  # the preferred codec, no run-time comparison
    im = decode(enc)
    assert im.size == (enc.width, enc.height)
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() <= 2  # grey
    assert enc.psnr is not None and enc.psnr > 20


def test_photo_first_view_keeps_colour():
    enc = imaging.first_view(photo(400, 300), "photo", 8_000)
    rgb = np.asarray(decode(enc).convert("RGB"), dtype=np.int16)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 20


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_first_view_honours_the_receivers_codecs(codec):
    if codec not in imaging.available_codecs():
        pytest.skip(f"{codec} not in this Pillow")
    enc = imaging.first_view(ct_film(500, 400), "film", 6_000, codecs=[codec])
    assert enc.codec == codec and enc.mime == f"image/{codec}"
    assert len(enc.data) <= 6_000
    assert decode(enc).format == codec.upper()


def test_compare_measures_every_codec_and_keeps_the_best():
    img = ct_film(500, 400)
    each = {c: imaging.first_view(img, "film", 6_000, codecs=[c]) for c in ("jpeg", "webp")}
    best = imaging.first_view(img, "film", 6_000, codecs=["jpeg", "webp"], compare=True)
    assert best.psnr == max(e.psnr for e in each.values())
    assert imaging.first_view(img, "film", 6_000, codecs=["jpeg", "webp"]).codec == "webp"


def two_level(image: Image.Image) -> Image.Image:
    """A page as docscan hands over a page of print: ink 0, paper 255, nothing between."""
    return image.convert("L").point(lambda v: 0 if v < 128 else 255)


def test_a_two_level_report_page_goes_in_two_levels_smaller_than_the_grey_view():
    page = two_level(report_page(850, 1100))
    enc = imaging.first_view(page, "report", 20_000)
    assert enc.codec in ("webp", "png") and enc.mime == f"image/{enc.codec}"
    assert enc.lossy and enc.quality == 100
    assert enc.label.startswith("lossy preview") and "two-level" in enc.label
    im = decode(enc)
    assert im.size == (enc.width, enc.height)
    assert set(np.unique(np.asarray(im.convert("L"))).tolist()) == {0, 255}  # two levels, exactly
    assert len(enc.data) <= 0.75 * 20_000
    grey = imaging.first_view(page, "report", 20_000, codecs=["avif", "jpeg"])  # no lossless codec taken
    assert grey.quality < 100 and "two-level" not in grey.label
    assert len(enc.data) < len(grey.data)
    # the strokes are where they were: same ink, cell for cell, at the size of the page
    back = np.asarray(im.convert("L").resize(page.size, Image.Resampling.NEAREST)) < 128
    assert np.mean(back == (np.asarray(page) < 128)) > 0.97
    # the codec is the smaller of the two measured, and each alone is honoured
    each = {c: imaging.first_view(page, "report", 20_000, codecs=[c, "jpeg"]) for c in ("png", "webp")}
    assert each["png"].codec == "png" and decode(each["png"]).mode == "1"
    if "webp" in imaging.available_codecs():
        assert each["webp"].codec == "webp" and each["webp"].quality == 100
    assert len(enc.data) == min(len(e.data) for e in each.values() if e.quality == 100)


def test_two_levels_only_for_two_level_report_pages():
    page = two_level(report_page(850, 1100))
    assert imaging.first_view(page, "film", 20_000).quality < 100  # measured on reports only
    assert imaging.first_view(report_page(850, 1100), "report", 20_000).quality < 100  # grey page
    assert imaging.first_view(page, "report", 20_000, codecs=["jpeg"]).codec == "jpeg"


def test_grey_pictures_are_encoded_monochrome_in_avif():
    if "avif" not in imaging.available_codecs():
        pytest.skip("no AVIF in this Pillow")
    grey = ct_film(400, 300).convert("L")
    mono = imaging.encode(grey, "avif", 40)
    colour = imaging.encode(grey.convert("RGB"), "avif", 40)
    assert Image.open(io.BytesIO(mono)).mode == "L"
    assert Image.open(io.BytesIO(colour)).mode == "RGB"
    assert len(mono) < len(colour)  # no chroma planes to carry


def test_the_quality_search_probes_the_larger_sizes_quality_first(monkeypatch):
    real = imaging.encode
    probes: list[int] = []

    def counting(image: Image.Image, codec: str, quality: int) -> bytes:
        probes.append(quality)
        return real(image, codec, quality)

    monkeypatch.setattr(imaging, "encode", counting)
    img = ct_film(500, 400)
    budget = len(real(img, "jpeg", 60))
    fit = imaging._fit_quality(img, "jpeg", budget, 25, start=50)
    assert fit is not None and probes[0] == 50 and 25 not in probes  # a fit at 50 proves 25 fits
    q, data = fit
    assert len(data) <= budget and q >= 50
    assert len(data) >= 0.95 * budget or q >= 92 or len(real(img, "jpeg", q + 4)) > budget
    probes.clear()
    over = imaging._fit_quality(img, "jpeg", budget, 25, start=90)  # a start over the budget
    assert over is not None and probes[:2] == [90, 25]
    assert len(over[1]) <= budget and over[0] < 90


def test_small_pictures_go_lossless_when_png_fits():
    grey = Image.fromarray(np.tile(np.arange(0, 256, 2, dtype=np.uint8), (96, 1)))
    enc = imaging.first_view(grey, "slice", 10_000)
    assert enc.codec == "png" and not enc.lossy and "lossless" in enc.label
    assert np.array_equal(np.asarray(decode(enc)), np.asarray(grey))
    assert imaging.first_view(grey, "slice", 10_000, codecs=["jpeg"]).codec == "jpeg"


def test_first_view_prefers_fidelity_and_never_upscales():
    small = photo(300, 200)
    enc = imaging.first_view(small, "photo", 60_000)
    assert (enc.width, enc.height) == (300, 200)
    assert enc.quality >= 80


def test_tiny_budget_shrinks_the_picture_rather_than_failing():
    big = imaging.first_view(report_page(), "report", 20_000, codecs=["jpeg"])
    tiny = imaging.first_view(report_page(), "report", 3_000, codecs=["jpeg"])
    assert len(tiny.data) <= 3_000
    assert tiny.width < big.width


def test_first_view_budget_and_codec_errors():
    with pytest.raises(UsageError):
        imaging.first_view(photo(), "photo", 100)
    with pytest.raises(UsageError):
        imaging.first_view(photo(), "photo", FirstViewLimits().max_bytes + 1)
    with pytest.raises(UsageError, match="codec"):
        imaging.first_view(photo(), "photo", codecs=["jxl"])
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), dtype=np.uint8))
    with pytest.raises(LimitExceeded):
        imaging.first_view(noise, "photo", 300, codecs=["jpeg"], limits=FirstViewLimits(min_bytes=100))


def test_no_metadata_leaves():
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make; GPS would be the same story
    loaded = imaging.load(to_bytes(photo(200, 150), "JPEG", exif=exif.tobytes()))
    enc = imaging.first_view(loaded.image, "photo", 20_000, codecs=["jpeg"])
    assert b"PhoneMaker" not in enc.data and b"Exif" not in enc.data
    t = imaging.tile(loaded.image, TileId(0, 0, 0), "photo", codec="jpeg")
    assert b"PhoneMaker" not in t.data


# ---------------------------------------------------------------------------- tiles


def test_level0_tiles_are_native_crops():
    img = report_page(1100, 850)
    t = imaging.tile(img, "0/1/0", "report")
    assert (t.width, t.height) == (512, 512)
    crop = img.convert("L").crop((512, 0, 1024, 512))
    assert psnr(decode(t).convert("L"), crop) > 32
    edge = imaging.tile(img, TileId(0, 2, 1), "report")
    assert (edge.width, edge.height) == (1100 - 1024, 850 - 512)


def test_upper_levels_are_downscaled_and_match_the_pyramid():
    img = photo(1100, 850)
    pyr = Pyramid(1100, 850)
    top = imaging.tile(img, TileId(pyr.levels - 1, 0, 0), "photo")
    assert (top.width, top.height) == pyr.level_size(pyr.levels - 1)
    assert decode(top).mode == "RGB"


def test_lossless_tile_is_exact():
    img = ct_film(600, 500)
    t = imaging.tile(img, TileId(0, 0, 0), "film", codec="png")
    assert not t.lossy and t.mime == "image/png"
    assert np.array_equal(np.asarray(decode(t)), np.asarray(img.convert("L").crop((0, 0, 512, 500))))


def test_tile_quality_is_per_kind_and_bad_ids_are_refused():
    img = ct_film(600, 500)
    lo = imaging.tile(img, TileId(0, 0, 0), "film", settings=TileSettings(film_quality=20))
    hi = imaging.tile(img, TileId(0, 0, 0), "film", settings=TileSettings(film_quality=80))
    assert len(lo.data) < len(hi.data)
    with pytest.raises(UsageError):
        imaging.tile(img, TileId(0, 5, 0), "film")
    with pytest.raises(UsageError):
        imaging.tile(img, "not-a-tile", "film")


# ------------------------------------------------------------------------- pipeline


def test_prepare_calls_the_correction_hook_with_the_detected_kind():
    calls: list[tuple[tuple[int, int], str]] = []

    def correct(image: Image.Image, mode: str) -> Image.Image:
        calls.append((image.size, mode))
        return image.crop((10, 10, image.width - 10, image.height - 10))

    prep = imaging.prepare(to_bytes(ct_film(600, 480), "JPEG", quality=92), "auto", correct, codecs=["jpeg"])
    assert calls == [((600, 480), "film")]
    assert prep.kind == "film"
    assert (prep.image.width, prep.image.height) == (580, 460)
    assert prep.image.mode == "L"
    assert (prep.pyramid.width, prep.pyramid.height) == (580, 460)
    assert len(prep.first.data) <= FirstViewLimits().film_bytes
    assert "lossy preview" in prep.caption


def test_prepare_with_explicit_kind_and_identity():
    prep = imaging.prepare(to_bytes(ct_film(400, 300), "PNG"), "photo", lambda im, mode: im, codecs=["jpeg"])
    assert prep.kind == "photo" and prep.image.mode == "RGB"
    with pytest.raises(UsageError, match="--as"):
        imaging.prepare(to_bytes(ct_film(), "PNG"), "xray")
    with pytest.raises(UsageError, match="--window"):
        imaging.prepare(to_bytes(ct_film(), "PNG"), window="lung")


def test_prepare_dicom_takes_the_dicom_path():
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        data = f.read()
    prep = imaging.prepare(
        data, "auto", lambda im, mode: pytest.fail("no correction for DICOM"), window="lung"
    )
    assert prep.kind == "slice"
    assert len(prep.first.data) <= FirstViewLimits().slice_bytes
    assert "window lung C-600 W1500 HU" in prep.caption
    assert "0.661x0.661 mm/px" in prep.caption

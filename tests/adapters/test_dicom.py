"""DICOM: safe reading, modality LUT, windows, captions, hostile files (pydicom's test files)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medcomm.adapters import dicom, imaging
from medcomm.adapters.dicom import PRESETS, DicomLimits, Window
from medcomm.errors import LimitExceeded, UsageError


def data_of(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def rewrite(name: str, **changes: object) -> bytes:
    """A pydicom test file with some header elements changed, as bytes."""
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_ct_modality_lut_gives_hounsfield_units():
    raw = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    d = dicom.read(get_testdata_file("CT_small.dcm"))
    assert d.values.dtype == np.float32 and d.values.shape == (128, 128)
    assert np.allclose(d.values, raw.astype(np.float32) * 1 - 1024)  # slope 1, intercept -1024
    info = d.info
    assert (info.modality, info.rows, info.columns, info.frames) == ("CT", 128, 128, 1)
    assert info.units == "HU"
    assert info.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert info.slice_thickness == 5.0
    assert info.own_window is None


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_window_to_8_bits(name):
    d = dicom.read(data_of("CT_small.dcm"))
    r = dicom.render(d, name)
    w = PRESETS[name]
    assert r.window == w and r.image.mode == "L" and r.image.size == (128, 128)
    out = np.asarray(r.image)
    lo, hi = w.center - w.width / 2, w.center + w.width / 2
    assert (out[d.values <= lo] == 0).all()
    assert (out[d.values >= hi] == 255).all()


def test_preset_values():
    assert (PRESETS["lung"].center, PRESETS["lung"].width) == (-600, 1500)
    assert (PRESETS["mediastinum"].center, PRESETS["mediastinum"].width) == (50, 350)
    assert (PRESETS["bone"].center, PRESETS["bone"].width) == (400, 1800)
    assert (PRESETS["brain"].center, PRESETS["brain"].width) == (40, 80)


def test_own_window_is_the_files_and_falls_back_to_auto():
    mr = dicom.read(data_of("MR_small.dcm"))
    assert dicom.render(mr).window == Window("own", 600, 1600)
    ct = dicom.render(dicom.read(data_of("CT_small.dcm")), "own")
    assert ct.window is not None and ct.window.name == "auto"
    custom = dicom.render(mr, "300/600")
    assert custom.window == Window("custom", 300, 600)


def test_apply_window_follows_the_dicom_formula():
    v = np.array([-1000.0, 39.5, 40.0, 1000.0], dtype=np.float32)
    out = dicom.apply_window(v, Window("brain", 40, 80))
    assert out[0] == 0 and out[-1] == 255
    assert 126 <= out[1] <= 129 and 126 <= out[2] <= 130


@pytest.mark.parametrize("bad", ["lungs", "40", "40/0", "a/b", "40/-5"])
def test_parse_window_rejects(bad):
    with pytest.raises(UsageError, match="--window"):
        dicom.parse_window(bad)


def test_monochrome1_is_inverted():
    data = rewrite("CT_small.dcm", PhotometricInterpretation="MONOCHROME1")
    normal = np.asarray(dicom.render(dicom.read(data_of("CT_small.dcm")), "bone").image, dtype=np.int16)
    inverted = np.asarray(dicom.render(dicom.read(data), "bone").image, dtype=np.int16)
    assert np.array_equal(inverted, 255 - normal)


def test_caption_has_modality_spacing_thickness_window_and_nothing_personal():
    d = dicom.read(data_of("CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    r = dicom.render(d, "lung")
    cap = dicom.caption(d.info, r.window, (96, 96))
    assert cap.startswith("CT 128x128")
    assert "0.661x0.661 mm/px" in cap and "slice 5 mm" in cap
    assert "window lung C-600 W1500 HU" in cap
    assert "preview 96x96 at 0.882x0.882 mm/px" in cap
    for personal in (str(ds.PatientName), str(ds.PatientID)):
        if personal:
            assert personal not in cap


def test_multiframe_shows_the_middle_frame_unless_asked():
    d = dicom.read(data_of("rtdose.dcm"))
    assert d.info.frames == 15 and d.info.frame == 7
    assert dicom.read(data_of("rtdose.dcm"), frame=0).info.frame == 0
    assert "frame 8/15" in dicom.caption(d.info, dicom.render(d).window)
    with pytest.raises(UsageError, match="frame 15"):
        dicom.read(data_of("rtdose.dcm"), frame=15)


def test_colour_frames_pass_through_without_window():
    d = dicom.read(data_of("SC_rgb_rle.dcm"))
    r = dicom.render(d, "lung")
    assert d.is_color and r.window is None and r.image.mode == "RGB"
    pal = dicom.render(dicom.read(data_of("examples_palette.dcm")))
    assert pal.image.mode == "RGB" and pal.image.size == (800, 350)


def test_first_view_of_a_slice_fits_10_kb():
    d = dicom.read(data_of("CT_small.dcm"))
    img = dicom.render(d, "mediastinum").image
    enc = imaging.first_view(img, "slice")
    assert len(enc.data) <= 10 * 1024
    assert (enc.width, enc.height) == (128, 128)  # never upscaled
    assert enc.codec == "png" and not enc.lossy  # 128x128 windowed: exact pixels fit in 10 KB
    lossy = imaging.first_view(img, "slice", codecs=imaging.available_codecs())
    assert lossy.lossy and len(lossy.data) <= 10 * 1024


# ------------------------------------------------------------------------ hostile files


def test_huge_declared_size_is_refused_before_decoding():
    data = rewrite("CT_small.dcm", Rows=60000, Columns=60000)
    with pytest.raises(LimitExceeded, match="60000x60000"):
        dicom.read(data)


def test_huge_frame_count_is_refused():
    data = rewrite("CT_small.dcm", NumberOfFrames=1_000_000)
    with pytest.raises(LimitExceeded, match="frames"):
        dicom.read(data)
    with pytest.raises(LimitExceeded):
        dicom.read(data_of("CT_small.dcm"), limits=DicomLimits(max_side=64))


def test_truncated_pixel_data_is_a_clear_error():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(UsageError, match="truncated"):
        dicom.read(buf.getvalue())
    with pytest.raises(UsageError, match="truncated"):
        dicom.read(get_testdata_file("MR_truncated.dcm"))


@pytest.mark.parametrize("keep", [0.02, 0.05, 0.3, 0.9])
def test_truncated_file_is_a_usage_error(keep):
    data = data_of("CT_small.dcm")
    with pytest.raises(UsageError):
        dicom.read(data[: int(len(data) * keep)])


def test_not_dicom_and_no_image():
    with pytest.raises(UsageError, match="not a DICOM"):
        dicom.read(b"hello, this is not DICOM" * 10)
    with pytest.raises(UsageError, match="without an image"):
        dicom.read(data_of("rtplan.dcm"))


def test_undecodable_compression_is_explained():
    try:
        d = dicom.read(data_of("MR_small_jpeg_ls_lossless.dcm"))
    except UsageError as e:
        assert "JPEG-LS" in str(e) and "pylibjpeg" in str(e)
    else:  # a JPEG-LS plugin is installed: then it must decode properly
        assert d.values.shape == (64, 64)


def test_missing_rows_is_a_usage_error():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.Rows
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(UsageError, match="Rows"):
        dicom.read(buf.getvalue())

"""`medcomm share`, `fetch` and `view` between two identities, as people run them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from medcomm.adapters.blobcache import BlobCache
from medcomm.session import images
from tests.harness.relay import RelayProcess, medcomm

pytestmark = pytest.mark.timeout(90)




def report_photo(path: Path, w: int = 1200, h: int = 900, seed: int = 0) -> None:
    """A phone photo of a printed page on a desk, unevenly lit (small: tests stay fast)."""
    rng = np.random.default_rng(seed)
    ph = int(h * 0.86)
    pw = int(ph / 1.414)
    page = Image.new("L", (pw, ph), 236)
    d = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=max(10, ph // 60))
    for i, y in enumerate(range(ph // 12, ph - ph // 12, ph // 30)):
        d.text((pw // 14, y), f"Haemoglobin {9 + i * 0.3:.1f} g/dL  ref 12.0-16.0", fill=25, font=font)
    desk = Image.new("RGB", (w, h), (90, 70, 50))
    desk.paste(page.convert("RGB"), ((w - pw) // 2, (h - ph) // 2))
    a = np.asarray(desk, dtype=np.float32) * (0.8 + 0.2 * np.arange(w) / w)[None, :, None]
    Image.fromarray(np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8)).save(path, quality=90)


def image_lines(home: Path, consult: str) -> list[dict]:
    out = medcomm("history", consult, "--json", home=home, check=True)
    return [m for m in map(json.loads, out.stdout.splitlines()) if m["kind"] == "image"]


def test_a_report_shared_by_the_clinic_is_fetched_and_viewed_by_the_doctor(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    report_photo(tmp_path / "report.jpg")
    out = medcomm(
        "share", consult, str(tmp_path / "report.jpg"), "--caption", "Hb?", "--detail", "wait", home=nurse
    )
    assert out.returncode == 0, out.stderr
    image_id = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", image_id)
    m = re.search(r"stored #\d+: report, first view (\d+\.\d) KB in (\d+\.\d) s", out.stderr)
    assert m and 2 < float(m.group(1)) <= 20.5, out.stderr  # --as auto found the report
    assert "all at the relay" in out.stderr

    (line,) = image_lines(doctor, consult)
    assert line["image"] == line["id"] == image_id and line["sender"] == "amina"
    assert (
        line["text"].startswith('image report "Hb?" · first view ')
        and "original JPEG 1200x900" in line["text"]
    )
    assert "page straightened" in line["text"] and line["text"].endswith("here: nothing yet")
    assert line["original"] == "on request" and "(on request)" in line["text"]
    dims = re.search(r"detail (\d+)x\d+, \d+ tiles", line["text"])
    assert dims
    w = int(dims.group(1))

    first = medcomm("fetch", consult, image_id, "--out", str(tmp_path / "first.png"), home=doctor)
    assert first.returncode == 0, first.stderr
    fv = Image.open(tmp_path / "first.png")
    assert fv.format == "PNG" and "first view (lossy preview" in first.stderr  # converted, labelled lossy
    region = medcomm(
        "fetch",
        consult,
        image_id,
        "--region",
        f"10,20,{w - 10},300",
        "--out",
        str(tmp_path / "r.png"),
        home=doctor,
    )
    assert region.returncode == 0, region.stderr
    assert Image.open(tmp_path / "r.png").size == (w - 10, 300)  # clipped to the image, native pixels
    assert "at level 0 (1/1 of native)" in region.stderr
    # the original stayed on the clinic's device: the first fetch asks for it, once
    get_original = ["fetch", consult, image_id, "--original", "--out", str(tmp_path / "o.jpg")]
    asked = medcomm(*get_original, home=doctor)
    assert asked.returncode == 75, asked.stderr
    said = r"requested the original \(JPEG, \d+\.\d KB\) from amina's device \(#\d+\)"
    assert re.search(said, asked.stderr)
    assert "requested from the sender's device; run the same fetch later" in asked.stderr
    assert not (tmp_path / "o.jpg").exists()
    again = medcomm(*get_original, home=doctor)
    asked = re.search(r"already requested by dr\.chen \(#\d+\)", again.stderr)
    assert again.returncode == 75 and asked, again.stderr
    assert "never retrieved" not in again.stderr  # the window's second "not found" is no error
    said = medcomm("history", consult, home=nurse, check=True).stdout
    assert said.count("asked for the original") == 1
    assert f"dr.chen: asked for the original of image {image_id[:12]}" in said
    assert medcomm("sync", "--timeout", "20", home=nurse).returncode == 0  # the clinic's next sync
    orig = medcomm(*get_original, home=doctor)
    assert orig.returncode == 0, orig.stderr
    assert (tmp_path / "o.jpg").read_bytes() == (tmp_path / "report.jpg").read_bytes()

    text = medcomm("view", image_id, "--colors", "ascii", "--width", "40", "--height", "12", home=doctor)
    assert text.returncode == 0, text.stderr
    rows = text.stdout.splitlines()
    assert len(rows) == 12 and "\x1b" not in text.stdout and max(map(len, rows)) <= 40
    assert text.stderr.startswith('image report "Hb?"')
    colour = medcomm(
        "view", image_id, "--region", "0,0,400,300", "--colors", "256", "--width", "60", home=doctor
    )
    assert colour.returncode == 0, colour.stderr
    assert "▀" in colour.stdout or "\x1b[48;5;" in colour.stdout
    assert len(colour.stdout.encode()) < 40_000  # cheap over SSH
    kitty = medcomm("view", image_id, "--graphics", "kitty", "--width", "40", "--height", "12", home=doctor)
    assert kitty.returncode == 0 and kitty.stdout.startswith("\x1b_Ga=T,f=100,q=2")

    (after,) = image_lines(doctor, consult)
    assert re.search(r"here: first view, \d+/\d+ tiles, original$", after["text"])
    assert after["original"] == "downloaded"
    (mine,) = image_lines(nurse, consult)
    assert mine["original"] == "at the relay"


def test_an_image_shared_while_the_relay_is_down_is_delivered_by_sync(
    pair: tuple[Path, Path, str], relay: RelayProcess, tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    report_photo(tmp_path / "r.jpg", 900, 700, seed=1)
    relay.stop()
    out = medcomm(
        "share",
        consult,
        str(tmp_path / "r.jpg"),
        "--as",
        "report",
        "--detail",
        "later",
        "--timeout",
        "3",
        home=nurse,
    )
    assert out.returncode == 75, out.stderr
    assert "saved on this device" in out.stderr and "medcomm sync" in out.stderr
    image_id = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", image_id)
    relay.start()
    synced = medcomm("sync", "--timeout", "20", home=nurse)
    assert synced.returncode == 0, synced.stderr
    with BlobCache(nurse) as cache:
        cache.db.executescript(images.SCHEMA)
        assert images.pending_images(cache, include_failed=True) == []  # sync finished the detail too
    (line,) = image_lines(doctor, consult)
    assert line["image"] == image_id
    got = medcomm(
        "fetch", consult, image_id, "--region", "0,0,200,200", "--out", str(tmp_path / "x.png"), home=doctor
    )
    assert got.returncode == 0, got.stderr


def test_the_detail_follows_in_the_background_or_with_the_next_sync(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    nurse, doctor, consult = pair
    report_photo(tmp_path / "b.jpg", 800, 600, seed=2)
    out = medcomm("share", consult, str(tmp_path / "b.jpg"), "--as", "photo", "--original", home=nurse)
    assert out.returncode == 0, out.stderr
    assert "uploading in the background" in out.stderr and "until asked for" not in out.stderr
    log = nurse / "background.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "in sync:" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    assert "in sync:" in log.read_text()  # the background sync finished (and exited)
    got = medcomm(
        "fetch", consult, out.stdout.strip(), "--original", "--out", str(tmp_path / "o.jpg"), home=doctor
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "o.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()

    later = medcomm(
        "share", consult, str(tmp_path / "b.jpg"), "--as", "film", "--detail", "later", home=nurse
    )
    assert later.returncode == 0 and "left for the next medcomm sync" in later.stderr, later.stderr
    assert "the original stays on this device until asked for" in later.stderr
    image_id = later.stdout.strip()
    region = ["fetch", consult, image_id, "--region", "0,0,300,300", "--out", str(tmp_path / "t.png")]
    early = medcomm(*region, home=doctor)
    assert early.returncode == 75 and "fetch again later" in early.stderr, early.stderr
    assert not (tmp_path / "t.png").exists()  # no all-grey file pretending to be the region
    seen = medcomm(
        "view", image_id, "--region", "0,0,300,300", "--colors", "ascii", "--width", "30", home=doctor
    )
    assert seen.returncode == 0 and "the first view, enlarged" in seen.stderr and seen.stdout.strip()
    assert medcomm("sync", "--timeout", "20", home=nurse).returncode == 0
    assert medcomm(*region, home=doctor).returncode == 0 and Image.open(tmp_path / "t.png").size == (300, 300)


def test_fetch_original_wait_asks_then_downloads_once_the_clinic_has_synced(
    pair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    import os
    import subprocess

    from tests.harness.relay import MEDCOMM

    nurse, doctor, consult = pair
    report_photo(tmp_path / "w.jpg", 700, 500, seed=3)
    out = medcomm("share", consult, str(tmp_path / "w.jpg"), "--as", "photo", "--detail", "wait", home=nurse)
    assert out.returncode == 0, out.stderr
    image_id = out.stdout.strip()
    fetch = ["fetch", consult, image_id, "--original", "--wait", "60", "--out", str(tmp_path / "o.jpg")]
    waiting = subprocess.Popen(
        [*MEDCOMM, *fetch],
        env={**os.environ, "MEDCOMM_HOME": str(doctor)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(20):  # the clinic syncs now and then; one of them finds the request
            time.sleep(1)
            assert medcomm("sync", "--timeout", "20", home=nurse).returncode == 0
            if waiting.poll() is not None:
                break
        _, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert waiting.returncode == 0, err
    assert re.search(r"from amina's device \(#\d+\)", err) and "waiting up to 60 s" in err and "wrote " in err
    assert (tmp_path / "o.jpg").read_bytes() == (tmp_path / "w.jpg").read_bytes()


def test_bad_input_fails_with_a_usage_error_before_anything_moves(
    pair: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (typer's runner): these fail before any image moves."""
    from typer.testing import CliRunner

    from medcomm.cli import app

    nurse, _, consult = pair
    monkeypatch.setenv("MEDCOMM_HOME", str(nurse))
    runner = CliRunner()
    (tmp_path / "notes.jpg").write_text("Hb 9.1 g/dL\n")
    cases = [
        (
            ["share", consult, str(tmp_path / "notes.jpg")],
            "not an image medcomm can share (it looks like text)",
        ),
        (["share", consult, str(tmp_path / "missing.png")], "no such file"),
        (["share", consult, str(tmp_path / "notes.jpg"), "--detail", "soon"], "--detail must be one of"),
        (["share", "not-a-consult", str(tmp_path / "notes.jpg")], "is not a consult id"),
        (["fetch", consult, "1234"], "is not an image id"),
        (["fetch", consult, "ab" * 16, "--region", "1,2,3,4", "--original"], "not both"),
        (["fetch", consult, "ab" * 16, "--region", "1,2,0,4"], "width and height must be at least 1"),
        (["fetch", consult, "ab" * 16, "--wait", "30"], "--wait goes with --original"),
        (["fetch", consult, "ab" * 16, "--original", "--wait", "-1"], "--wait must be 0..21600 seconds"),
        (["view", "ab" * 16, "--graphics", "iterm"], "--graphics must be none, kitty or sixel"),
    ]
    for args, said in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert said in result.output, (args, result.output)
    with BlobCache(nurse) as cache:
        cache.db.executescript(images.SCHEMA)
        assert images.pending_images(cache, include_failed=True) == []  # nothing recorded

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from medcomm.adapters import oggopus, opus
from medcomm.adapters.oggopus import OggLimits, decode_note, encode_note, note_duration, read_note
from medcomm.errors import LimitExceeded, UsageError, VoiceUnavailable, WireError

try:
    opus.load()
except VoiceUnavailable as exc:  # pragma: no cover - the project's setup installs libopus0
    pytest.skip(f"libopus not installed ({exc}); voice note tests need it", allow_module_level=True)

RATE = 48000


def speechish(samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / RATE
    x = 6000 * np.sin(2 * np.pi * 1500 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.round(x + rng.standard_normal(samples) * 200).astype(np.int16)


def pages(data: bytes) -> list[dict]:
    """An independent page walker (RFC 3533 layout), so the writer is not checked by its own reader."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS"
        flags, granule, serial, seq = data[pos + 5], *struct.unpack_from("<qII", data, pos + 6)
        nsegs = data[pos + 26]
        lacing = list(data[pos + 27 : pos + 27 + nsegs])
        start = pos + 27 + nsegs
        out.append(
            {
                "flags": flags,
                "granule": granule,
                "serial": serial,
                "seq": seq,
                "lacing": lacing,
                "body": data[start : start + sum(lacing)],
                "offset": pos,
            }
        )
        pos = start + sum(lacing)
    return out


def resign(data: bytearray, offset: int) -> None:
    """Recompute one page's CRC after a deliberate edit, to reach the checks behind it."""
    nsegs = data[offset + 26]
    end = offset + 27 + nsegs + sum(data[offset + 27 : offset + 27 + nsegs])
    data[offset + 22 : offset + 26] = b"\0\0\0\0"
    data[offset + 22 : offset + 26] = struct.pack("<I", oggopus.ogg_crc(bytes(data[offset:end])))


@pytest.fixture(scope="module")
def note() -> bytes:
    return encode_note(speechish(RATE * 3 + 123), serial=0x1234)


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [0, 1, 311, 959, 960, 961, RATE * 2 + 7])
@pytest.mark.parametrize("frame_ms", [20, 60, 120])
def test_round_trip_is_exact_to_the_sample(samples, frame_ms):
    data = encode_note(speechish(samples), 16000, frame_ms)
    assert decode_note(data).shape == (samples,)
    assert note_duration(data) == samples / RATE


def test_pre_skip_is_honoured_so_audio_lines_up():
    t = np.arange(RATE) / RATE  # inharmonic partials: one unambiguous correlation peak
    x = np.round(sum(3000 * np.sin(2 * np.pi * f * t) for f in (310, 733, 1187))).astype(np.int16)
    y = decode_note(encode_note(x, 28000, 20, application="audio"))
    core = slice(2400, RATE - 2400)
    lags = range(-40, 41)
    corr = [np.dot(x[core].astype(float), np.roll(y, -lag)[core].astype(float)) for lag in lags]
    assert lags[int(np.argmax(corr))] == 0
    err = y[core].astype(float) - x[core]
    assert 10 * np.log10(np.sum(x[core].astype(float) ** 2) / np.sum(err**2)) > 15


def test_headers_follow_rfc_7845(note):
    ps = pages(note)
    head, tags = ps[0], ps[1]
    assert head["flags"] == 0x02 and head["seq"] == 0 and head["granule"] == 0
    assert len(head["lacing"]) == 1 and head["body"][:8] == b"OpusHead"  # the first page holds only OpusHead
    version, channels, pre_skip, rate, gain, family = struct.unpack("<BBHIhB", head["body"][8:19])
    assert (version, channels, rate, gain, family) == (1, 1, 48000, 0, 0)
    assert pre_skip == opus.Encoder("voip").lookahead == 312
    assert tags["body"].startswith(b"OpusTags\x07\x00\x00\x00medcomm") and tags["granule"] == 0
    assert len(tags["lacing"]) == 1  # audio starts on a fresh page
    assert all(p["serial"] == 0x1234 for p in ps)
    assert [p["seq"] for p in ps] == list(range(len(ps)))


def test_audio_pages_count_samples_and_trim_the_end(note):
    ps = pages(note)[2:]
    assert ps[-1]["flags"] & 0x04 and not any(p["flags"] & 0x04 for p in ps[:-1])
    count = 0
    for p in ps:
        count += sum(opus.packet_samples(pkt) for pkt in _split(p))
        if p is not ps[-1]:
            assert p["granule"] == count
    assert ps[-1]["granule"] == 312 + RATE * 3 + 123 < count


def _split(page: dict) -> list[bytes]:
    out, pos, cur = [], 0, b""
    for v in page["lacing"]:
        cur += page["body"][pos : pos + v]
        pos += v
        if v < 255:
            out.append(cur)
            cur = b""
    return out


def test_big_packets_span_pages_within_255_segments():
    # 1275-byte packets take 6 lacing values each: 50 of them cannot fit one page.
    rng = random.Random(5)
    packets = [bytes([0xF8]) + rng.randbytes(1274) for _ in range(120)]  # 20 ms CELT frames
    data = oggopus.mux(packets, 312, 120 * 960 - 312 - 100, serial=9)
    ps = pages(data)
    assert all(len(p["lacing"]) <= 255 for p in ps)
    assert any(p["flags"] & 0x01 for p in ps)  # some page continues a packet
    note = read_note(data)
    assert note.packets == packets and note.samples == 120 * 960 - 412
    assert decode_note(data).size == note.samples


def test_ogg_crc_matches_the_reference_definition():
    def reference(data: bytes) -> int:  # bitwise: poly 0x04C11DB7, init 0, no reflection
        crc = 0
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
                crc &= 0xFFFFFFFF
        return crc

    assert oggopus.ogg_crc(b"123456789") == 0x89A1897F
    rng = random.Random(1)
    for size in (0, 1, 2, 27, 300):
        blob = rng.randbytes(size)
        assert oggopus.ogg_crc(blob) == reference(blob)


# --- the strict reader -------------------------------------------------------------------------


def test_a_flipped_byte_anywhere_is_a_wire_error(note):
    rng = random.Random(2)
    for pos in [5, 30, 60, 100] + rng.sample(range(len(note)), 40):
        bad = bytearray(note)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(WireError):
            read_note(bytes(bad))


def test_truncated_files_are_wire_errors(note):
    for cut in list(range(0, 200, 7)) + list(range(len(note) - 300, len(note))):
        with pytest.raises(WireError):
            read_note(note[:cut])
    with pytest.raises(WireError, match="truncated"):  # cut cleanly between pages: no EOS
        read_note(note[: pages(note)[-1]["offset"]])


def test_missing_page_and_trailing_data_are_wire_errors(note):
    ps = pages(note)
    third = ps[3]["offset"]
    with pytest.raises(WireError, match="missing"):
        read_note(note[:third] + note[ps[4]["offset"] :])
    with pytest.raises(WireError, match="after the end"):
        read_note(note + note[ps[2]["offset"] : ps[3]["offset"]])


def test_header_content_is_checked_behind_the_crc(note):
    bad = bytearray(note)
    bad[28 + 8] = 0x10  # OpusHead version 16: major version 1, a layout nobody defined
    resign(bad, 0)
    with pytest.raises(WireError, match="version"):
        read_note(bytes(bad))
    bad = bytearray(note)
    bad[28:36] = b"OpusHeaX"
    resign(bad, 0)
    with pytest.raises(WireError, match="OpusHead"):
        read_note(bytes(bad))
    tags = pages(note)[1]
    bad = bytearray(note)
    bad[tags["offset"] + 28 + 8] = 200  # vendor length past the packet
    resign(bad, tags["offset"])
    with pytest.raises(WireError, match="OpusTags"):
        read_note(bytes(bad))


def test_granule_positions_are_checked(note):
    ps = pages(note)
    for index, granule in (
        (2, ps[2]["granule"] + 960),
        (len(ps) - 1, ps[-1]["granule"] + 10**6),
        (len(ps) - 1, ps[-2]["granule"] - 1),
    ):
        bad = bytearray(note)
        bad[ps[index]["offset"] + 6 : ps[index]["offset"] + 14] = struct.pack("<q", granule)
        resign(bad, ps[index]["offset"])
        with pytest.raises(WireError, match="granule|trimming"):
            read_note(bytes(bad))


def test_limits_are_enforced(note):
    with pytest.raises(LimitExceeded):
        read_note(note, OggLimits(max_file_bytes=len(note) - 1))
    with pytest.raises(LimitExceeded):
        read_note(note, OggLimits(max_packets=100))
    with pytest.raises(LimitExceeded):
        read_note(note, OggLimits(max_seconds=2.0))
    with pytest.raises(UsageError):
        encode_note(speechish(RATE * 3), limits=OggLimits(max_seconds=2.0))
    assert read_note(note, OggLimits(max_packets=200)).duration == pytest.approx(3.0026, abs=1e-4)


def test_a_bad_opus_packet_inside_a_valid_page_is_rejected(note):
    ps = pages(note)
    bad = bytearray(note)
    body_start = ps[2]["offset"] + 27 + len(ps[2]["lacing"])
    bad[body_start : body_start + 2] = b"\x03\x00"  # first packet: code 3 with zero frames (RFC 6716 R5)
    resign(bad, ps[2]["offset"])
    with pytest.raises(WireError, match="opus packet"):
        read_note(bytes(bad))


def test_fuzzed_notes_never_raise_anything_but_wire_error(note):
    rng = random.Random(11)
    offsets = [p["offset"] for p in pages(note)]
    for _ in range(300):
        bad = bytearray(note)
        index = rng.randrange(len(offsets))
        for _ in range(rng.randrange(1, 4)):
            bad[min(len(bad) - 1, offsets[index] + rng.randrange(4, 60))] = rng.randrange(256)
        try:
            resign(bad, offsets[index])
        except (IndexError, struct.error, ValueError):
            continue
        try:
            read_note(bytes(bad))
        except WireError:
            pass


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError):
        encode_note(np.zeros(100, dtype=np.float32))
    with pytest.raises(UsageError):
        encode_note(np.zeros((480, 2), dtype=np.int16))  # stereo


# --- standard tools, when the machine has them ---------------------------------------------------


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (apt-get install opus-tools / ffmpeg)")
    return path


def test_opusinfo_accepts_the_file(note, tmp_path: Path):
    path = tmp_path / "note.opus"
    path.write_bytes(note)
    out = subprocess.run([_need("opusinfo"), str(path)], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "WARNING" not in text and "ERROR" not in text
    assert "Encoded with medcomm" in text and "Pre-skip: 312" in text


def test_opusdec_decodes_to_the_same_length(note, tmp_path: Path):
    path = tmp_path / "note.opus"
    path.write_bytes(note)
    subprocess.run(
        [_need("opusdec"), "--quiet", "--rate", "48000", str(path), str(tmp_path / "out.wav")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with wave.open(str(tmp_path / "out.wav")) as w:
        assert w.getnframes() == RATE * 3 + 123


def test_ffprobe_sees_an_opus_stream(note, tmp_path: Path):
    path = tmp_path / "note.opus"
    path.write_bytes(note)
    out = subprocess.run(
        [
            _need("ffprobe"),
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,channels",
            "-of",
            "default=nw=1",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "codec_name=opus" in out.stdout and "channels=1" in out.stdout


def test_reads_a_file_made_by_opusenc(tmp_path: Path):
    wav = tmp_path / "in.wav"
    x = speechish(RATE + 555)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(x.tobytes())
    subprocess.run(
        [_need("opusenc"), "--quiet", "--bitrate", "24", str(wav), str(tmp_path / "x.opus")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    data = (tmp_path / "x.opus").read_bytes()
    assert note_duration(data) == (RATE + 555) / RATE
    assert decode_note(data).size == RATE + 555

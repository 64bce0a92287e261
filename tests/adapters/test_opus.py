from __future__ import annotations

import ctypes
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medcomm.adapters import opus
from medcomm.errors import LimitExceeded, UsageError, VoiceUnavailable, WireError

try:
    LIB = opus.load()
except VoiceUnavailable as exc:  # pragma: no cover - the project's setup installs libopus0
    pytest.skip(f"libopus not installed ({exc}); voice codec tests need it", allow_module_level=True)

RATE = 48000


def tone(freq: float, seconds: float, amp: float = 0.25) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return np.round(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def gain_db(
    freq: float,
    application: str,
    bitrate: int = 28000,
    frame_ms: int = 60,
    bandwidth: str = "fb",
    seconds: float = 1.5,
    skip: float = 0.5,
) -> float:
    """Output/input RMS of a steady tone through encode->decode, after the codec settles."""
    x = tone(freq, seconds)
    y = opus.roundtrip(x, application, bitrate, frame_ms, bandwidth)
    s = int(skip * RATE)
    return 20 * np.log10(rms(y[s:]) / rms(x[s:]))


# --- frequency response: why the auscultation profile exists ------------------------------

AUSCULTATION_FREQS = [20, 25, 40, 60, 100, 200, 500, 1000]


@pytest.mark.parametrize("freq", AUSCULTATION_FREQS)
def test_audio_profile_is_flat_20hz_to_1khz(freq):
    assert abs(gain_db(freq, "audio")) <= 1.0


@pytest.mark.parametrize(
    ("bandwidth", "bitrate", "frame_ms"), [("nb", 24000, 20), ("wb", 32000, 120), ("swb", 24000, 40)]
)
def test_audio_profile_is_flat_at_other_rungs(bandwidth, bitrate, frame_ms):
    for freq in (20, 40, 1000):
        assert abs(gain_db(freq, "audio", bitrate, frame_ms, bandwidth, seconds=1.0, skip=0.4)) <= 1.0


def test_audio_profile_is_flat_on_a_log_sweep():
    seconds, f0, f1 = 6.0, 20.0, 1000.0
    t = np.arange(int(RATE * seconds)) / RATE
    k = np.log(f1 / f0)
    x = np.round(0.25 * 32767 * np.sin(2 * np.pi * f0 * seconds / k * (np.exp(t / seconds * k) - 1)))
    x = x.astype(np.int16)
    y = opus.roundtrip(x, "audio", 28000, 60, "fb")
    window = RATE // 10
    gains = [
        20 * np.log10(rms(y[i : i + window]) / rms(x[i : i + window]))
        for i in range(window * 3, len(x) - window, window)
    ]
    assert max(abs(g) for g in gains) <= 1.0


def test_voip_profile_cuts_the_heart_sound_band():
    # The reason auscultation must not use the speech profile (DESIGN.md: -15.8 dB at 25 Hz).
    assert gain_db(25, "voip") < -10.0
    assert gain_db(40, "voip") < -5.0
    assert abs(gain_db(1000, "voip")) <= 1.0


# --- packets ------------------------------------------------------------------------------


@pytest.mark.parametrize("frame_ms", opus.FRAME_MS)
@pytest.mark.parametrize("application", ["voip", "audio"])
def test_encoded_packets_report_their_duration(frame_ms, application):
    enc = opus.Encoder(application, 16000, frame_ms, "wb")
    dec = opus.Decoder()
    assert enc.frame_samples == frame_ms * 48
    rng = np.random.default_rng(frame_ms)
    for _ in range(3):
        packet = enc.encode((rng.standard_normal(enc.frame_samples) * 3000).astype(np.int16)).packet
        assert opus.packet_duration_ms(packet) == frame_ms
        assert dec.packet_duration_ms(packet) == frame_ms
        assert dec.decode(packet).shape == (enc.frame_samples,)


def _libopus_samples(packet: bytes) -> int | None:
    lib = LIB.opuslib.api.libopus
    parse = lib.opus_packet_parse
    parse.argtypes = [
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_ubyte),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_int16),
        ctypes.POINTER(ctypes.c_int),
    ]
    per_frame = lib.opus_packet_get_samples_per_frame
    per_frame.argtypes = [ctypes.c_char_p, ctypes.c_int32]
    toc, offset = ctypes.c_ubyte(), ctypes.c_int()
    frames, sizes = (ctypes.c_void_p * 48)(), (ctypes.c_int16 * 48)()
    count = parse(packet, len(packet), ctypes.byref(toc), frames, sizes, ctypes.byref(offset))
    return None if count < 0 else count * per_frame(packet, RATE)


def _random_packet(rng: random.Random) -> bytes:
    toc = rng.randrange(256)
    if rng.random() < 0.3:
        size = rng.choice([0, 1, 2, 3, 5, 300, 1275, 1276, 2550, 2551, 2552])
        return bytes([toc]) + rng.randbytes(size)
    count_byte = rng.randrange(256)
    header = [count_byte]
    if count_byte & 0x40:
        header += [rng.choice([0, 1, 10, 254, 255])]
        if rng.random() < 0.5:
            header += [rng.choice([0, 3, 255])]
    if count_byte & 0x80:
        header += [rng.choice([0, 1, 100, 251, 252, 255]) for _ in range(rng.randrange(5))]
    return bytes([toc] + header) + rng.randbytes(rng.choice([0, 1, 2, 6, 50, 300, 1000, 3000]))


def test_packet_parser_agrees_with_libopus_on_hostile_packets():
    rng = random.Random(7)
    valid = invalid = 0
    for _ in range(20000):
        packet = _random_packet(rng)
        expected = _libopus_samples(packet)
        try:
            got: int | None = opus.packet_samples(packet)
        except WireError:
            got = None
        assert got == expected, packet[:6].hex()
        valid += got is not None
        invalid += got is None
    assert valid > 2000 and invalid > 2000  # both sides of every rule were exercised


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x03",
        b"\x03\x00",
        b"\x01\x00",
        b"\x02\xfc",
        b"\x02\x05\x00",
        b"\x0b\x07" + bytes(7),
        b"\x03\xc1\xff",
        bytes([0xF8]) + bytes(1276),
    ],
)
def test_malformed_packets_are_wire_errors(packet):
    with pytest.raises(WireError):
        opus.packet_samples(packet)
    with pytest.raises(WireError):
        opus.Decoder().decode(packet)


def test_odd_2_5ms_packets_have_no_whole_ms_duration():
    packet = bytes([16 << 3]) + b"\x00" * 10  # one 2.5 ms CELT frame: valid Opus
    assert opus.packet_samples(packet) == 120
    with pytest.raises(WireError):
        opus.packet_duration_ms(packet)


def test_decoder_survives_random_bytes():
    rng = random.Random(3)
    dec = opus.Decoder()
    decoded = 0
    for _ in range(3000):
        packet = _random_packet(rng)
        try:
            out = dec.decode(packet)
        except WireError:
            continue
        decoded += 1
        assert out.dtype == np.int16 and out.size == opus.packet_samples(packet)
    assert decoded > 300


# --- concealment and DTX ------------------------------------------------------------------


def _primed(seed: int = 0) -> tuple[opus.Encoder, list[bytes]]:
    enc = opus.Encoder("voip", 16000, 20, "wb", dtx=True)
    rng = np.random.default_rng(seed)
    t = np.arange(960 * 10) / RATE
    speech = (6000 * np.sin(2 * np.pi * 200 * t) + rng.standard_normal(t.size) * 500).astype(np.int16)
    return enc, [enc.encode(speech[i : i + 960]).packet for i in range(0, speech.size, 960)]


@pytest.mark.parametrize("ms", [20, 37, 60, 120, 250, 2.5])
def test_conceal_returns_exactly_the_gap(ms):
    _, packets = _primed()
    dec = opus.Decoder()
    for p in packets:
        dec.decode(p)
    out = dec.conceal(ms)
    assert out.dtype == np.int16 and out.size == round(ms * 48)


def test_conceal_continues_the_signal_then_fades():
    _, packets = _primed()
    dec = opus.Decoder()
    for p in packets:
        dec.decode(p)
    gap = dec.conceal(600)
    assert rms(gap[:960]) > 100  # extrapolates the voice, no hard cut to silence
    assert rms(gap[-960:]) < rms(gap[:960]) / 4


def test_conceal_is_bounded():
    dec = opus.Decoder()
    assert dec.conceal(0).size == 0
    with pytest.raises(LimitExceeded):
        dec.conceal(opus.CODEC.max_conceal_ms + 1)


def test_dtx_skips_silence_and_libopus_refreshes_comfort_noise():
    enc, _ = _primed()
    sent = [enc.encode(np.zeros(960, dtype=np.int16)).packet for _ in range(60)]  # 1.2 s of silence
    assert sent.count(b"") >= 40
    run = longest = 0
    for p in sent:
        run = run + 1 if p == b"" else 0
        longest = max(longest, run)
    assert longest <= 20  # the refresh packets libopus sends on its own are the keepalive


def test_skipping_a_dtx_packet_sounds_the_same_as_decoding_it():
    # Why encode() may drop <= 2-byte packets: libopus decodes a bare TOC as concealment.
    _, packets = _primed()
    a, b = opus.Decoder(), opus.Decoder()
    for p in packets:
        a.decode(p)
        b.decode(p)
    toc = bytes([packets[-1][0] & 0xFC])
    raw = LIB.dec.decode(a._state, toc, 1, 960, False, 1)
    assert np.array_equal(np.frombuffer(raw, dtype=np.int16), b.conceal(20))
    assert opus.Decoder().decode(toc).size == 960  # not libopus's whole 120 ms buffer


def test_dtx_off_always_sends():
    enc = opus.Encoder("voip", 16000, 20, "wb", dtx=False)
    assert all(enc.encode(np.zeros(960, dtype=np.int16)).packet for _ in range(40))


# --- rungs, level and talking ---------------------------------------------------------------


def test_reconfigure_changes_packet_length_and_size():
    enc = opus.Encoder("voip", 32000, 20, "wb")
    rng = np.random.default_rng(1)

    def mean_size(count: int) -> float:
        sizes = []
        for _ in range(count):
            packet = enc.encode((rng.standard_normal(enc.frame_samples) * 4000).astype(np.int16)).packet
            assert opus.packet_duration_ms(packet) == enc.frame_ms
            sizes.append(len(packet))
        return float(np.mean(sizes[2:]))

    high = mean_size(12)
    enc.reconfigure(bitrate_bps=8000)
    low = mean_size(12)
    assert low < high * 0.5
    enc.reconfigure(frame_ms=120, bandwidth="nb")
    assert enc.frame_samples == 5760 and enc.bitrate_bps == 8000
    long_packets = mean_size(4)
    assert long_packets > low * 3  # 6x the audio per packet, same bitrate


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"application": "video"}, UsageError),
        ({"bitrate_bps": 100}, UsageError),
        ({"bitrate_bps": 10**6}, UsageError),
        ({"frame_ms": 30}, UsageError),
        ({"bandwidth": "ultra"}, UsageError),
        ({"complexity": 11}, UsageError),
    ],
)
def test_bad_settings_are_usage_errors(kwargs, error):
    with pytest.raises(error):
        opus.Encoder(**kwargs)


def test_encode_wants_one_int16_frame():
    enc = opus.Encoder("voip", 16000, 20, "wb")
    with pytest.raises(ValueError):
        enc.encode(np.zeros(959, dtype=np.int16))
    with pytest.raises(ValueError):
        enc.encode(np.zeros(960, dtype=np.float32))
    with pytest.raises(ValueError):
        enc.encode(np.zeros((480, 2), dtype=np.int16))  # stereo, right sample count
    assert enc.encode(np.zeros((960, 1), dtype=np.int16)).packet  # a sounddevice block


@pytest.mark.parametrize(("amp", "expected"), [(1.0, -3.01), (0.5, -9.03), (0.01, -43.01)])
def test_level_is_dbov_of_the_rms(amp, expected):
    enc = opus.Encoder("voip", 16000, 20, "wb")
    frame = enc.encode(tone(1000, 0.02, amp))
    assert frame.level_dbov == pytest.approx(expected, abs=0.05)
    assert frame.loudness == round(127 + expected)


def test_level_of_silence_is_the_floor():
    frame = opus.Encoder().encode(np.zeros(2880, dtype=np.int16))
    assert frame.level_dbov == -127.0 and frame.loudness == 0 and not frame.talking


def test_talk_detector_follows_speech_with_hangover():
    det = opus.TalkDetector()
    assert not det.update(-70.0, 20)
    assert det.update(-25.0, 20)
    states = [det.update(-70.0, 20) for _ in range(30)]
    hang = opus.VAD.hangover_ms // 20
    assert all(states[: hang - 1]) and not any(states[hang:])


def test_talk_detector_learns_steady_noise():
    det = opus.TalkDetector()
    states = [det.update(-40.0, 60) for _ in range(200)]  # 12 s of a loud fan at -40 dBov
    assert states[0] and not states[-1]
    assert det.update(-15.0, 60)  # a voice over the fan still counts


def test_roundtrip_is_aligned_and_exact_length():
    x = tone(700, 1.0)
    for frame_ms in (20, 60):
        y = opus.roundtrip(x, "audio", 28000, frame_ms, "wb")
        assert y.shape == x.shape
        err = y[4800:].astype(float) - x[4800:]
        assert 10 * np.log10(np.sum(x[4800:].astype(float) ** 2) / np.sum(err**2)) > 20


def test_importing_the_module_does_not_load_libopus():
    code = "import sys, medcomm.adapters.opus, medcomm.adapters.oggopus; print('opuslib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_libopus_is_voice_unavailable():
    code = textwrap.dedent("""
        import ctypes.util
        ctypes.util.find_library = lambda name: None
        from medcomm.adapters import opus
        from medcomm.errors import VoiceUnavailable
        assert opus.packet_samples(b"\\x08") == 960  # the parser needs no libopus
        assert not opus.available()
        try:
            opus.Encoder()
        except VoiceUnavailable as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "libopus is missing: sudo apt-get install libopus0"

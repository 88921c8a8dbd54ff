"""Bad audio (issue 14): truncated, empty, wrong headers, random bytes under audio names, unusual sample formats,
rates and channel counts, NaN, silence, clipping, very short and very long files. Both front ends are checked:
the whole-file decoder of preprocessing (`load_and_prepare`) and the streamed one of scoring (`AudioStream`)."""
from __future__ import annotations

import math
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines import constants as C
from pipelines.io.audio import AudioError, load_and_prepare
from pipelines.io.audio_stream import AudioStream, probe_audio
from pipelines.io.storage import StorageError
from tests.reliability.conftest import assert_one_line_error

SR = 22_050
MIN_S, MAX_S = 1.0, 3600.0
ERRORS = (AudioError, StorageError)


def tone(seconds: float = 2.0, sr: int = SR, channels: int = 1, level: float = 0.3) -> np.ndarray:
    """A 440 Hz sine, [S] or [S, channels] float64."""
    y = level * np.sin(2 * np.pi * 440.0 * np.arange(int(seconds * sr)) / sr)
    return np.tile(y[:, None], (1, channels)) if channels > 1 else y


def _sf(y, sr=SR, **kw):
    def make(path: Path) -> None:
        sf.write(str(path), y, sr, **kw)
    return make


def _bytes(data: bytes):
    def make(path: Path) -> None:
        path.write_bytes(data)
    return make


def _cut(make_whole, fraction: float = 0.5, suffix: str = ".wav"):
    """A valid file made by `make_whole`, cut to `fraction` of its bytes."""
    def make(path: Path) -> None:
        whole = path.with_name("whole" + suffix)
        make_whole(whole)
        data = whole.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return make


def _patched(offset: int, value: bytes):
    """A 16-bit WAV with `value` written over its header at `offset`."""
    def make(path: Path) -> None:
        whole = path.with_name("whole.wav")
        sf.write(str(whole), tone(), SR, subtype="PCM_16")
        data = bytearray(whole.read_bytes())
        data[offset:offset + len(value)] = value
        path.write_bytes(bytes(data))
    return make


def _with_nan(path: Path) -> None:
    y = tone().astype(np.float32)
    y[1000:1010] = np.nan
    y[5000] = np.inf
    sf.write(str(path), y, SR, subtype="FLOAT")


def _flac_named_wav(path: Path) -> None:
    sf.write(str(path), tone(), SR, format="FLAC")


_RANDOM = np.random.default_rng(14).bytes(8192)

# name -> (how to make it, expected: "ok" or a fragment of the one-line error)
CASES = {
    "zero-byte.wav": (_bytes(b""), "not a readable audio file"),
    "zero-byte.mp3": (_bytes(b""), "not a readable audio file"),
    "zero-byte.flac": (_bytes(b""), "not a readable audio file"),
    "random.wav": (_bytes(_RANDOM), "not a readable audio file"),
    "random.mp3": (_bytes(_RANDOM), "not a readable audio file"),
    "random.flac": (_bytes(_RANDOM), "not a readable audio file"),
    "text.wav": (_bytes(b"this is not audio\n" * 100), "not a readable audio file"),
    "truncated.wav": (_cut(_sf(tone(), subtype="PCM_24")), "truncated"),
    "header-only.wav": (_cut(_sf(tone(), subtype="PCM_16"), 44 / 88244), "truncated"),
    "truncated.flac": (_cut(_sf(tone(), format="FLAC"), suffix=".flac"), "FLAC"),
    "truncated.mp3": (_cut(_sf(tone(), format="MP3"), suffix=".mp3"), "truncated MP3"),
    "wrong-riff-type.wav": (_patched(8, b"WAVX"), "not a readable audio file"),
    "rate-zero.wav": (_patched(24, (0).to_bytes(4, "little")), "not a readable audio file"),
    "channels-zero.wav": (_patched(22, (0).to_bytes(2, "little")), "not a readable audio file"),
    "pcm-u8.wav": (_sf(tone(), subtype="PCM_U8"), "ok"),
    "pcm-24.wav": (_sf(tone(), subtype="PCM_24"), "ok"),
    "pcm-32.wav": (_sf(tone(), subtype="PCM_32"), "ok"),
    "float32.wav": (_sf(tone(), subtype="FLOAT"), "ok"),
    "float64.wav": (_sf(tone(), subtype="DOUBLE"), "ok"),
    "8khz.wav": (_sf(tone(sr=8000), 8000), "ok"),
    "192khz.wav": (_sf(tone(sr=192_000), 192_000, subtype="PCM_24"), "ok"),
    "six-channels.wav": (_sf(tone(channels=6)), "ok"),
    "six-channels.flac": (_sf(tone(channels=6), format="FLAC"), "ok"),
    "flac-named.wav": (_flac_named_wav, "ok"),
    "ok.mp3": (_sf(tone(), format="MP3"), "ok"),
    "clipped.wav": (_sf(np.clip(tone(level=5.0), -1, 1), subtype="PCM_16"), "ok"),
    "over-full-scale.wav": (_sf(tone(level=8.0), subtype="FLOAT"), "ok"),
    "nan-samples.wav": (_with_nan, "11 NaN or infinite samples"),
    "silence.wav": (_sf(np.zeros(2 * SR)), "silent"),
    "near-silence.wav": (_sf(tone(level=1e-4), subtype="FLOAT"), "silent"),
    "cancelling-stereo.wav": (_sf(np.stack([tone(), -tone()], axis=1), subtype="FLOAT"), "silent"),
    "very-short.wav": (_sf(tone(seconds=0.05)), "too short"),
    "one-sample.wav": (_sf(np.array([0.5])), "too short"),
}


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def case(request, tmp_path) -> tuple[Path, str]:
    make, expected = CASES[request.param]
    path = tmp_path / request.param
    make(path)
    return path, expected


def _check_result(mert: np.ndarray, cqt: np.ndarray, duration_s: float) -> None:
    for y, rate in ((mert, C.MERT_SAMPLE_RATE_HZ), (cqt, C.CQT_SAMPLE_RATE_HZ)):
        assert y.ndim == 1 and y.dtype == np.float32 and np.isfinite(y).all()
        assert abs(len(y) - duration_s * rate) <= 2
        assert 0.5 < float(np.max(np.abs(y))) <= 1.0      # peak -3 dBFS before resampling (overshoot stays < 0 dBFS)


def test_whole_file_decoder(case):
    """Preprocessing's front end: a 24/44.1 kHz mono float32 result, or one AudioError line naming the file."""
    path, expected = case
    started = time.monotonic()
    if expected == "ok":
        decoded = load_and_prepare(str(path), MIN_S, MAX_S)
        _check_result(decoded.mert, decoded.cqt, decoded.duration_s)
    else:
        with pytest.raises(Exception) as err:
            load_and_prepare(str(path), MIN_S, MAX_S)
        assert expected in assert_one_line_error(err, path.name, ERRORS)
    assert time.monotonic() - started < 30


def test_streamed_decoder(case):
    """Scoring's front end (header probe, scan, blocks): the same outcome as the whole-file decoder."""
    path, expected = case
    started = time.monotonic()

    def stream_all():
        probe_audio(str(path), str(path))
        stream = AudioStream(str(path), str(path), min_duration_s=MIN_S, max_duration_s=MAX_S, block_s=0.5)
        stream.scan()
        blocks = list(stream.blocks())
        return stream, np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

    if expected == "ok":
        stream, mert, cqt = stream_all()
        _check_result(mert, cqt, stream.duration_s)
    else:
        with pytest.raises(Exception) as err:
            stream_all()
        # the header probe (ffprobe) may word a broken file differently from the decoder: the type and name count
        assert_one_line_error(err, path.name, ERRORS)
    assert time.monotonic() - started < 30


def test_missing_file_is_one_line(tmp_path):
    path = tmp_path / "absent.wav"
    with pytest.raises(Exception) as err:
        load_and_prepare(str(path), MIN_S, MAX_S)
    assert_one_line_error(err, path.name, ERRORS)


def _long_wav(path: Path, minutes: int, sr: int = 8000) -> None:
    block = (0.1 * np.random.default_rng(0).standard_normal(60 * sr)).astype(np.float32)
    with sf.SoundFile(str(path), "w", sr, 1, "PCM_16") as f:
        for _ in range(minutes):
            f.write(block)


def test_very_long_wav_is_refused_from_its_header_without_decoding(tmp_path):
    """20 minutes against a 60 s limit: refused before decoding (the decoded file would be 19 MB of float32)."""
    path = tmp_path / "very long.wav"
    _long_wav(path, minutes=20)
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as err:
            load_and_prepare(str(path), MIN_S, 60.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "too long (1200.0 s > maximum 60 s)" in assert_one_line_error(err, path.name, ERRORS)
    assert peak < 2e6, f"{peak / 1e6:.1f} MB allocated to refuse a long file"


def test_very_long_wav_is_refused_by_the_stream_in_bounded_memory(tmp_path):
    path = tmp_path / "very long.wav"
    _long_wav(path, minutes=20)
    info = probe_audio(str(path), str(path))
    assert info.duration_s == pytest.approx(1200.0)          # scoring refuses it from this, before decoding
    stream = AudioStream(str(path), str(path), min_duration_s=MIN_S, max_duration_s=60.0, block_s=5.0)
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as err:
            stream.scan()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "too long" in assert_one_line_error(err, path.name, ERRORS)
    assert peak < 2e6, f"{peak / 1e6:.1f} MB allocated while scanning"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_very_long_m4a_stops_decoding_past_the_limit(tmp_path):
    """A format only ffmpeg reads has no trustworthy frame count: decoding stops one second past the limit."""
    wav = tmp_path / "long.wav"
    _long_wav(wav, minutes=2)
    m4a = tmp_path / "long 'take'.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", "-b:a", "32k", str(m4a)], check=True)
    with pytest.raises(Exception) as err:
        load_and_prepare(str(m4a), MIN_S, 10.0)
    message = assert_one_line_error(err, m4a.name, ERRORS)
    assert "too long (more than 11.0 s decoded > maximum 10 s" in message
    assert math.isfinite(load_and_prepare(str(m4a), MIN_S, 600.0).duration_s)    # under the limit: a result

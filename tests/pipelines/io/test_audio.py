"""Decoding, checks, peak normalisation and resampling on generated files."""
from __future__ import annotations

import math
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines import constants as C
from pipelines.io import storage
from pipelines.io.audio import (
    AudioError,
    DecodedAudio,
    check_audio,
    load_and_prepare,
    load_audio,
    peak_dbfs,
    peak_normalise,
    prepare_audio,
    resample,
    to_mono,
)
from pipelines.io.storage import StorageError
from tests.conftest import NOT_AUDIO_FILES

SR = 44_100


def stereo_tone(seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    """[S, 2]: 440 Hz left at 0.4, 660 Hz right at 0.2, a short fade in/out."""
    t = np.arange(int(seconds * sr)) / sr
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
    return np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)], axis=1) * fade[:, None]


def dominant_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)), 8 * len(y)))
    return float(np.argmax(spectrum) * sr / (8 * len(y)))


def write(path: Path, y: np.ndarray, sr: int = SR, **kwargs) -> str:
    sf.write(str(path), y, sr, **kwargs)
    return str(path)


FORMATS = {  # suffix: soundfile write kwargs
    ".wav": {"subtype": "PCM_16"},
    ".flac": {},
    ".mp3": {"format": "MP3"},
    ".ogg": {"format": "OGG", "subtype": "VORBIS"},
    ".aiff": {},
}


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_load_formats_mixdown_to_mono_at_native_rate(tmp_path, suffix):
    y = stereo_tone()
    y32, sr = load_audio(write(tmp_path / f"tone{suffix}", y, **FORMATS[suffix]))
    assert sr == SR and y32.dtype == np.float32 and y32.ndim == 1
    assert len(y32) == len(y)                                  # MP3 and Vorbis decode gaplessly
    expected = y.mean(axis=1)
    assert np.corrcoef(y32, expected)[0, 1] > 0.999
    tolerance = 1e-4 if suffix in (".wav", ".flac", ".aiff") else 0.02   # 16-bit vs lossy codecs
    assert np.max(np.abs(y32 - expected)) < tolerance


def test_load_keeps_native_rate_and_float_precision(tmp_path):
    y = stereo_tone(1.5, 48_000)[:, 0]
    y32, sr = load_audio(write(tmp_path / "f.wav", y, 48_000, subtype="FLOAT"))
    assert sr == 48_000
    np.testing.assert_allclose(y32, y, atol=1e-7)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_m4a_goes_through_ffmpeg(tmp_path):
    wav = write(tmp_path / "src.wav", stereo_tone(2.0))
    m4a = tmp_path / "tone.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", "-b:a", "192k", str(m4a)], check=True)
    y, sr = load_audio(str(m4a))
    assert sr == SR
    assert abs(len(y) - 2 * SR) <= 2048                       # AAC frames are 1024 samples
    assert dominant_hz(y[:SR], sr) == pytest.approx(440, rel=0.01)


# ffmpeg arguments that write each listed suffix (the muxer is guessed from the suffix otherwise)
_FFMPEG_OUTPUT = {".rf64": ["-f", "wav", "-rf64", "always"], ".aif": ["-f", "aiff"], ".aifc": ["-f", "aiff"],
                  ".oga": ["-f", "ogg"], ".m4a": ["-c:a", "aac"], ".aac": ["-c:a", "aac"]}


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
@pytest.mark.parametrize("suffix", C.AUDIO_EXTENSIONS)
def test_every_listed_audio_suffix_decodes(tmp_path, suffix):
    """The library reader picks up exactly the suffixes in AUDIO_EXTENSIONS: each must decode."""
    wav = write(tmp_path / "src.wav", stereo_tone(2.0))
    target = tmp_path / f"tone{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, *_FFMPEG_OUTPUT.get(suffix, []), str(target)],
                   check=True)
    y, sr = load_audio(str(target))
    assert abs(len(y) / sr - 2.0) < 0.05                      # codec frames and delays, at most a few ms
    assert dominant_hz(y[: sr // 2], sr) == pytest.approx(440, rel=0.01)


def _playlists(tmp_path: Path) -> dict[str, Path]:
    """Recordings that are really playlists naming another local file (a WAV, an ADTS AAC) or a URL."""
    secret = tmp_path / "private"
    secret.mkdir()
    wav = write(secret / "secret.wav", stereo_tone(1.0))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", "-f", "adts", str(secret / "secret.aac")],
                   check=True)
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n"
    texts = {"concat.mp3": "ffconcat version 1.0\nfile 'private/secret.wav'\n",
             "concat.m4a": "ffconcat version 1.0\nfile 'private/secret.wav'\n",
             "hls.mp3": hls.format("private/secret.aac"),
             "hls_abs.wma": hls.format(secret / "secret.aac"),
             "hls_url.aac": hls.format("http://127.0.0.1:9/x.aac")}
    out = {}
    for name, text in texts.items():
        out[name] = tmp_path / name
        out[name].write_text(text)
    return out


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_playlists_under_audio_names_are_refused_not_followed(tmp_path):
    """ffmpeg picks its demuxer from the content: without a format whitelist an `.mp3` that is an ffconcat or
    HLS playlist decodes the other file it names."""
    for name, path in _playlists(tmp_path).items():
        with pytest.raises(AudioError, match="not a readable audio file") as info:
            load_audio(str(path))
        assert name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_reads_a_path_starting_with_a_dash_as_a_file(tmp_path, monkeypatch):
    from pipelines.io.audio import _read_ffmpeg, ffmpeg_input_args

    wav = write(tmp_path / "src.wav", stereo_tone(1.0))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", str(tmp_path / "-y.m4a")], check=True)
    monkeypatch.chdir(tmp_path)
    args = ffmpeg_input_args("-y.m4a")
    assert args[args.index("-i") + 1] == f"file:{tmp_path}/-y.m4a"
    assert args[args.index("-protocol_whitelist") + 1] == "file"
    y, sr = _read_ffmpeg("-y.m4a", "-y.m4a", "test")
    assert sr == SR and abs(len(y) / sr - 1.0) < 0.05


def test_streamed_wav_with_placeholder_sizes_loads(tmp_path):
    """A WAV written to a pipe carries 0xFFFFFFFF chunk sizes: not truncated, must load."""
    path = Path(write(tmp_path / "streamed.wav", stereo_tone(1.2)))
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    data_at = data.index(b"data")
    data[data_at + 4:data_at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    y, sr = load_audio(str(path))
    assert sr == SR and len(y) == int(1.2 * SR)


TRUNCATABLE = [".wav", ".flac", ".mp3", ".ogg", ".aiff"]


def truncated_copy(tmp_path: Path, suffix: str) -> Path:
    """The first half of a 3 s stereo file of this format, as `cut<suffix>`."""
    path = Path(write(tmp_path / f"full{suffix}", stereo_tone(3.0), **FORMATS[suffix]))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


@pytest.mark.parametrize("suffix", TRUNCATABLE)
def test_truncated_files_raise(tmp_path, suffix):
    with pytest.raises(AudioError, match=r"cut\.\w+: .*(truncated|corrupt)"):
        load_audio(str(truncated_copy(tmp_path, suffix)))


@pytest.mark.parametrize("name,content", NOT_AUDIO_FILES)
def test_not_audio_raises_with_uri_and_cause(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError) as err:
        load_audio(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) > len(str(path)) + 5


def test_missing_file_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        load_audio(str(tmp_path / "missing.wav"))


def test_load_from_s3(s3_bucket, tmp_path):
    local = write(tmp_path / "tone.flac", stereo_tone(1.5))
    uri = f"{s3_bucket}/audio/tone.flac"
    storage.upload_file(local, uri)
    y_s3, sr_s3 = load_audio(uri)
    y_local, sr_local = load_audio(local)
    assert sr_s3 == sr_local and np.array_equal(y_s3, y_local)
    storage.write_bytes(f"{s3_bucket}/audio/bad.wav", b"not audio")
    with pytest.raises(AudioError, match=rf"^{s3_bucket}/audio/bad\.wav: "):
        load_audio(f"{s3_bucket}/audio/bad.wav")


def test_to_mono_layouts():
    y = stereo_tone(0.5)
    np.testing.assert_allclose(to_mono(y), y.mean(axis=1), atol=1e-7)         # [S, C]
    np.testing.assert_allclose(to_mono(y.T), y.mean(axis=1), atol=1e-7)       # [C, S]
    assert to_mono(y[:, 0]).dtype == np.float32
    with pytest.raises(AudioError, match="shape"):
        to_mono(np.zeros((2, 3, 4)))


def test_peak_normalise_hits_the_target():
    y = stereo_tone(0.5)[:, 0] * 0.01
    out = peak_normalise(y)
    assert out.dtype == np.float32
    assert peak_dbfs(out) == pytest.approx(C.PEAK_TARGET_DBFS, abs=1e-5)
    assert peak_dbfs(peak_normalise(y, -12.0)) == pytest.approx(-12.0, abs=1e-5)
    np.testing.assert_allclose(out / np.max(np.abs(out)), y / np.max(np.abs(y)), atol=1e-6)   # shape kept
    with pytest.raises(AudioError, match="silence"):
        peak_normalise(np.zeros(100))
    with pytest.raises(AudioError, match="NaN"):
        peak_normalise(np.array([0.1, np.nan]))


@pytest.mark.parametrize("sr_in,sr_out", [(44_100, 24_000), (48_000, 44_100), (22_050, 44_100), (24_000, 24_000)])
def test_resample_length_and_pitch(sr_in, sr_out):
    t = np.arange(sr_in) / sr_in
    y = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    out = resample(y, sr_in, sr_out)
    assert out.dtype == np.float32 and len(out) == round(len(y) * sr_out / sr_in)
    assert dominant_hz(out, sr_out) == pytest.approx(1000.0, abs=1.0)
    assert np.max(np.abs(out)) == pytest.approx(0.5, rel=0.01)


def test_resample_rejects_bad_input():
    with pytest.raises(AudioError, match="positive"):
        resample(np.zeros(10, np.float32), 0, 24_000)
    with pytest.raises(AudioError, match="mono"):
        resample(np.zeros((2, 10), np.float32), 44_100, 24_000)


@pytest.mark.parametrize("y,sr,kwargs,reason", [
    (np.zeros(0, np.float32), SR, {}, "no audio samples"),
    (np.r_[np.full(SR * 2, 0.1), np.nan].astype(np.float32), SR, {}, "1 NaN or infinite"),
    (np.full(SR // 2, 0.1, np.float32), SR, {}, "too short"),
    (np.full(SR * 5, 0.1, np.float32), SR, {"max_duration_s": 4.0}, "too long"),
    (np.full(SR * 2, 1e-4, np.float32), SR, {}, "silent"),
    (np.full(SR * 2, 0.1, np.float32), 0, {}, "sample rate"),
])
def test_check_audio_reasons(y, sr, kwargs, reason):
    with pytest.raises(AudioError, match=f"^rec.wav: .*{reason}"):
        check_audio(y, sr, "rec.wav", **kwargs)


def test_check_audio_accepts_quiet_but_audible_audio():
    check_audio(np.full(SR * 2, 10 ** (-55 / 20), np.float32), SR, "ok.wav")   # -55 dBFS > -60 dBFS


def test_prepare_audio_rates_lengths_and_peak():
    y = stereo_tone(3.0, 48_000).T                                 # [C, S] at 48 kHz
    out = prepare_audio(y, 48_000, "rec.wav")
    assert isinstance(out, DecodedAudio)
    assert out.source_sr == 48_000 and out.duration_s == pytest.approx(3.0)
    assert len(out.mert) == 3 * C.MERT_SAMPLE_RATE_HZ and len(out.cqt) == 3 * C.CQT_SAMPLE_RATE_HZ
    assert out.mert.dtype == np.float32 and out.cqt.dtype == np.float32
    for wave in (out.mert, out.cqt):                               # resampling moves the peak < 0.1 dB
        assert peak_dbfs(wave) == pytest.approx(C.PEAK_TARGET_DBFS, abs=0.1)
    assert dominant_hz(out.cqt[: C.CQT_SAMPLE_RATE_HZ], C.CQT_SAMPLE_RATE_HZ) == pytest.approx(440, abs=1)


def test_prepare_audio_catches_cancelling_stereo():
    left = stereo_tone(2.0)[:, 0]
    with pytest.raises(AudioError, match="silent"):
        prepare_audio(np.stack([left, -left]), SR, "phase.wav")


def test_load_and_prepare(tmp_path):
    path = write(tmp_path / "tone.flac", stereo_tone(2.0, 22_050), 22_050)
    out = load_and_prepare(path)
    assert out.source_sr == 22_050 and len(out.cqt) == 2 * SR and len(out.mert) == 2 * C.MERT_SAMPLE_RATE_HZ
    with pytest.raises(AudioError, match="too long"):
        load_and_prepare(path, max_duration_s=1.0)
    assert math.isfinite(peak_dbfs(out.mert))

"""Streaming front end: header probe, two-pass AudioStream equal to load_and_prepare, spans, damage."""
from __future__ import annotations

import math
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest

from pipelines import constants as C
from pipelines.io.audio import AudioError, check_audio, load_and_prepare, prepare_audio
from pipelines.io.audio_stream import AudioInfo, AudioStream, probe_audio
from pipelines.io.storage import StorageError
from tests.conftest import NOT_AUDIO_FILES
from tests.pipelines.io.test_audio import FORMATS, TRUNCATABLE, stereo_tone, truncated_copy, write

SR = 44_100
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg not installed")


def tones(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """[S, 2]: a few partials with a slow tremolo and a little noise (peak about 0.6)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    left = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (110.0, 440.0, 1250.0)) * (0.7 + 0.3 * np.sin(t))
    right = 0.3 * np.sin(2 * np.pi * 330.0 * t) + 0.02 * rng.standard_normal(len(t))
    return np.stack([left, right], axis=1).astype(np.float32)


def stream_of(path: str, block_s: float = 0.7, **kwargs) -> AudioStream:
    kwargs = {"min_duration_s": C.MIN_DURATION_S, "max_duration_s": math.inf, **kwargs}
    return AudioStream(path, path, block_s=block_s, **kwargs)


def concatenated(stream: AudioStream) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(stream.blocks())
    assert len(blocks) > 2 and all(b[0].dtype == np.float32 and b[1].dtype == np.float32 for b in blocks)
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def assert_same_waves(stream: AudioStream, reference) -> None:
    mert, cqt = concatenated(stream)
    assert abs(len(mert) - len(reference.mert)) <= 1 and abs(len(cqt) - len(reference.cqt)) <= 1
    n24, n44 = min(len(mert), len(reference.mert)), min(len(cqt), len(reference.cqt))
    assert np.max(np.abs(mert[:n24] - reference.mert[:n24])) < 1e-3       # measured: identical
    assert np.max(np.abs(cqt[:n44] - reference.cqt[:n44])) < 1e-3
    assert stream.duration_s == pytest.approx(reference.duration_s, abs=1e-9)
    assert stream.source_sr == reference.source_sr


# --- probe ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", list(FORMATS))
def test_probe_reads_the_header(tmp_path, suffix):
    path = write(tmp_path / f"tone{suffix}", stereo_tone(2.0), **FORMATS[suffix])
    info = probe_audio(path, "s3://b/tone")
    assert isinstance(info, AudioInfo) and info.reader == "soundfile"
    assert info.sample_rate == SR and info.channels == 2
    if suffix != ".ogg":                                     # libsndfile does not count Vorbis frames up front
        assert info.frames == 2 * SR and info.duration_s == pytest.approx(2.0)


@needs_ffmpeg
def test_probe_m4a_goes_through_ffprobe(tmp_path):
    wav = write(tmp_path / "src.wav", stereo_tone(2.0))
    m4a = tmp_path / "tone.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", str(m4a)], check=True)
    info = probe_audio(str(m4a), "rec.m4a")
    assert info.reader == "ffmpeg" and info.sample_rate == SR and info.channels == 2
    assert info.duration_s == pytest.approx(2.0, abs=0.05)


@needs_ffmpeg
def test_probe_and_pipe_decoder_refuse_playlists_under_audio_names(tmp_path):
    """ffprobe and the ffmpeg pipe decoder take the same whitelists as load_audio: an `.mp3` that is an
    ffconcat or HLS playlist is refused, not followed to the file it names."""
    from pipelines.io.audio_stream import _ffmpeg_blocks
    from tests.pipelines.io.test_audio import _playlists

    for name, path in _playlists(tmp_path).items():
        with pytest.raises(AudioError, match="not a readable audio file") as info:
            probe_audio(str(path), name)
        assert name in str(info.value)
        forged = AudioInfo(sample_rate=SR, channels=2, frames=None, duration_s=None, reader="ffmpeg")
        with pytest.raises(AudioError, match="not a readable audio file"):
            list(_ffmpeg_blocks(str(path), name, forged, 4096))


@pytest.mark.parametrize("name,content", NOT_AUDIO_FILES)
def test_probe_and_scan_refuse_non_audio_naming_the_uri(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    for call in (lambda: probe_audio(str(path), "s3://bucket/" + name),
                 lambda: AudioStream(str(path), "s3://bucket/" + name, min_duration_s=1, max_duration_s=10).scan()):
        with pytest.raises(AudioError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"s3://bucket/{name}: ") and "\n" not in message and len(message) > 25


def test_missing_file_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        probe_audio(str(tmp_path / "missing.wav"), "missing.wav")
    with pytest.raises(StorageError, match="no such file"):
        stream_of(str(tmp_path / "missing.wav")).scan()


# --- pass 1 + pass 2 equal the whole-array front end -----------------------------------------------

@pytest.mark.parametrize("suffix,sr", [(".wav", 44_100), (".flac", 48_000), (".mp3", 44_100), (".ogg", 22_050),
                                       (".aiff", 16_000)])
def test_blocks_equal_load_and_prepare(tmp_path, suffix, sr):
    path = write(tmp_path / f"rec{suffix}", tones(4.3, sr), sr, **FORMATS[suffix])
    stream = stream_of(path, block_s=0.7)
    stream.scan()
    assert_same_waves(stream, load_and_prepare(path))


@needs_ffmpeg
def test_blocks_through_the_ffmpeg_pipe_equal_load_and_prepare(tmp_path):
    wav = write(tmp_path / "src.wav", tones(5.0, 48_000), 48_000)
    m4a = tmp_path / "rec.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", str(m4a)], check=True)
    stream = stream_of(str(m4a), block_s=0.6)
    stream.scan()
    assert_same_waves(stream, load_and_prepare(str(m4a)))


def test_from_array_equals_prepare_audio():
    y = tones(3.2, 48_000).T                                      # [C, S], as prepare_audio takes it
    stream = AudioStream.from_array(y, 48_000, "render", min_duration_s=1.0, max_duration_s=60.0, block_s=0.5)
    stream.scan()
    assert_same_waves(stream, prepare_audio(y, 48_000, "render"))
    assert stream.n_samples(C.CQT_SAMPLE_RATE_HZ) == round(3.2 * 48_000 * 44_100 / 48_000)


def test_reading_before_scan_is_an_error():
    stream = AudioStream.from_array(tones(2.0)[:, 0], SR, "x", min_duration_s=1, max_duration_s=9)
    with pytest.raises(RuntimeError, match="scan"):
        next(stream.blocks())
    with pytest.raises(RuntimeError, match="scan"):
        _ = stream.duration_s


# --- the checks, with check_audio's messages ------------------------------------------------------

@pytest.mark.parametrize("y,sr,kwargs", [
    (np.zeros(0, np.float32), SR, {}),
    (np.r_[np.full(SR * 2, 0.1), np.nan, np.inf, np.full(SR, 0.1)].astype(np.float32), SR, {}),
    (np.full(SR // 2, 0.1, np.float32), SR, {}),
    (np.full(SR * 5, 0.1, np.float32), SR, {"max_duration_s": 4.0}),
    (np.full(SR * 2, 1e-4, np.float32), SR, {}),
    (np.full(SR * 2, 0.1, np.float32), 0, {}),
])
def test_scan_fails_as_check_audio_does(y, sr, kwargs):
    limits = {"min_duration_s": C.MIN_DURATION_S, "max_duration_s": math.inf, **kwargs}
    with pytest.raises(AudioError) as expected:
        check_audio(y, sr, "rec.wav", **limits)
    with pytest.raises(AudioError) as streamed:
        AudioStream.from_array(y, sr, "rec.wav", block_s=0.3, **limits).scan()
    assert str(streamed.value) == str(expected.value)


def test_scan_catches_cancelling_stereo():
    left = stereo_tone(2.0)[:, 0]
    with pytest.raises(AudioError, match="^phase.wav: silent"):
        AudioStream.from_array(np.stack([left, -left]), SR, "phase.wav", min_duration_s=1, max_duration_s=9).scan()


def test_too_long_stops_reading_at_the_maximum(tmp_path, monkeypatch):
    path = write(tmp_path / "long.flac", tones(20.0))
    read = []
    original = AudioStream._decoded

    def counting(self, sr):
        for block in original(self, sr):
            read.append(len(block))
            yield block

    monkeypatch.setattr(AudioStream, "_decoded", counting)
    with pytest.raises(AudioError, match=r"^.*long\.flac: too long \(20\.0 s > maximum 3 s\)$"):
        stream_of(path, block_s=1.0, max_duration_s=3.0).scan()
    assert sum(read) == 4 * SR                                    # 4 of 20 blocks decoded


@needs_ffmpeg
def test_too_long_stops_the_ffmpeg_decoder(tmp_path):
    wav = write(tmp_path / "src.wav", tones(12.0))
    m4a = tmp_path / "long.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", str(m4a)], check=True)
    with pytest.raises(AudioError, match=r"long\.m4a: too long \(12\.0 s > maximum 2 s\)"):
        stream_of(str(m4a), block_s=0.5, max_duration_s=2.0).scan()


# --- damage ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", TRUNCATABLE)
def test_truncated_files_raise_like_load_audio(tmp_path, suffix):
    with pytest.raises(AudioError, match=r"cut\.\w+: .*(truncated|corrupt)"):
        stream_of(str(truncated_copy(tmp_path, suffix)), block_s=0.25).scan()


@needs_ffmpeg
def test_corrupt_m4a_raises_once_the_stream_reaches_it(tmp_path):
    wav = write(tmp_path / "src.wav", tones(6.0))
    m4a = tmp_path / "rec.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, "-c:a", "aac", "-movflags", "+faststart", str(m4a)],
                   check=True)
    data = bytearray(m4a.read_bytes())
    start = data.index(b"mdat") + 4
    data[start + len(data) // 2:] = b"\x00" * (len(data) - start - len(data) // 2)   # zero the second half of the audio
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(bytes(data))
    with pytest.raises(AudioError, match=r"bad\.m4a: not a readable audio file \(ffmpeg: "):
        load_and_prepare(str(bad))
    with pytest.raises(AudioError, match=r"bad\.m4a: not a readable audio file \(ffmpeg: "):
        stream_of(str(bad), block_s=0.5).scan()


# --- spans ---------------------------------------------------------------------------------------

def test_spans_cut_windows_of_the_whole_waveform(tmp_path):
    path = write(tmp_path / "rec.flac", tones(9.0, 48_000), 48_000)
    reference = load_and_prepare(path)
    stream = stream_of(path, block_s=0.8)
    stream.scan()
    bounds = [(0.0, 2.0), (1.0, 3.5), (3.5, 6.0), (3.6, 4.0), (6.0, 9.0), (9.6, 10.0)]
    out = list(stream.spans(bounds, margin_s=0.55))
    assert len(out) == len(bounds)
    for (start, end), (y24, y44, pad_s) in zip(bounds, out):
        expected_pad = min(0.55, start) if start < 9.0 else 0.0
        assert pad_s == pytest.approx(expected_pad, abs=1 / SR)
        first44 = round((start - pad_s) * SR)
        assert np.array_equal(y44, reference.cqt[first44:round(min(9.0, end + 0.55) * SR)])
        first24 = round(first44 * 24_000 / SR)
        assert np.array_equal(y24, reference.mert[first24:round(min(9.0, end + 0.55) * 24_000)])
    assert len(out[-1][1]) == 0                                    # past the end: empty


def test_spans_reject_decreasing_starts():
    stream = AudioStream.from_array(tones(3.0), SR, "x", min_duration_s=1, max_duration_s=9)
    stream.scan()
    with pytest.raises(ValueError, match="must not decrease"):
        list(stream.spans([(1.0, 2.0), (0.5, 1.0)]))
    with pytest.raises(ValueError, match="start <= end"):
        list(stream.spans([(1.0, 0.5)]))


def _traced_peak_of_spans(seconds: float) -> tuple[int, int]:
    """(peak traced numpy memory in bytes, samples yielded at 44.1 kHz) of scan + 10 s spans every 5 s."""
    y = tones(seconds)[:, 0].copy()
    stream = AudioStream.from_array(y, SR, "long", min_duration_s=1, max_duration_s=1e4, block_s=5.0)
    tracemalloc.start()
    try:
        stream.scan()
        n44 = sum(len(w[1]) for w in stream.spans([(s, s + 10.0) for s in np.arange(0.0, seconds, 5.0)], 0.55))
        return tracemalloc.get_traced_memory()[1], n44
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_length():
    """The whole front end holds 2.9 MB of resampled audio per minute; streaming 10 s windows in 5 s
    blocks holds about one window and one block (measured 8.9 MB traced) whatever the length."""
    peak_60, n_60 = _traced_peak_of_spans(60.0)
    peak_180, n_180 = _traced_peak_of_spans(180.0)
    assert n_60 > 2 * 60 * SR and n_180 > 2 * 180 * SR            # overlapping windows: every sample twice
    assert peak_180 < 1.1 * peak_60, (peak_60, peak_180)
    assert peak_180 < 0.25 * 4 * 180 * (SR + 24_000), peak_180     # < 25 % of the whole resampled audio

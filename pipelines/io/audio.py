"""Decode, check, normalise and resample recordings.

Every recording goes through the same steps before features are computed:

    decode (native rate) -> mono mixdown -> checks -> peak -3 dBFS -> resample to 24 kHz (MERT)
                                                                   -> resample to 44.1 kHz (CQT)

Formats, as measured here (libsndfile 1.2.2 through soundfile 0.14, ffmpeg 5):

| format | reader | notes |
| --- | --- | --- |
| WAV, RF64, W64, AIFF, FLAC, Ogg Vorbis, Opus, MP3, CAF, AU | soundfile | MP3 gapless (LAME delay removed) |
| M4A/AAC, WMA, other audio containers ffmpeg decodes | ffmpeg subprocess | needs `ffmpeg` on PATH |

ffmpeg reads a recording through the `file` protocol alone and with audio demuxers alone
(`FFMPEG_INPUT_FORMATS`): a playlist (HLS, ffconcat) under an audio name is refused, never followed.

M4A/WMA through ffmpeg may differ from the source by up to one codec frame (1024 samples) in length.

Truncated or corrupt files raise `AudioError` rather than yielding the part that decodes: a WAV/AIFF
whose data chunk is shorter than its header says, a FLAC that loses sync, an Ogg stream without its end,
an MP3 that decodes to fewer frames than its header declares, and anything ffmpeg reports an error on.
Missing files raise `pipelines.io.storage.StorageError` (the URI layer's error).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf
import soxr

from pipelines import constants as C
from pipelines.io import storage

RESAMPLE_QUALITY = "HQ"               # soxr quality preset: 20-bit precision, ~-100 dB stop band
_TRUNCATION_TOLERANCE = 0.01          # an MP3/FLAC decoding to < 99 % of its declared frames is truncated
_FFMPEG_TIMEOUT_S = 600.0


class AudioError(ValueError):
    """A recording cannot be used; the message names the input and the cause in one line."""


@dataclasses.dataclass
class DecodedAudio:
    """A recording ready for feature extraction (mono, peak -3 dBFS, float32)."""
    mert: np.ndarray           # [S_24k] float32 waveform at MERT_SAMPLE_RATE_HZ (24 kHz)
    cqt: np.ndarray            # [S_44k] float32 waveform at CQT_SAMPLE_RATE_HZ (44.1 kHz)
    duration_s: float          # duration of the decoded recording, seconds
    source_sr: int             # native sample rate of the file, Hz


# --- decoding ----------------------------------------------------------------------------------

def load_audio(uri: str, max_duration_s: float = math.inf) -> tuple[np.ndarray, int]:
    """Decode a local or s3:// audio file to a float32 mono waveform [S] at its native rate (Hz).

    soundfile (libsndfile) is tried first; formats it does not know (M4A/AAC, WMA, ...) go through
    ffmpeg. Raises AudioError("<uri>: <cause>") for non-audio, truncated or corrupt files.
    A recording longer than `max_duration_s` is refused without being decoded whole: from the frame
    count of its header (soundfile), or once ffmpeg has decoded just past the limit.
    """
    suffix = os.path.splitext(storage.basename(uri))[1]
    with storage.local_path(uri, suffix=suffix, max_bytes=storage.MAX_RECORDING_BYTES) as path:
        try:
            y, sr = _read_soundfile(path, max_duration_s)
        except _UnknownFormat as unknown:
            y, sr = _read_ffmpeg(path, uri, str(unknown), max_duration_s)
        except AudioError as exc:
            raise AudioError(f"{uri}: {exc}") from None
    if y.shape[0] == 0:
        raise AudioError(f"{uri}: file holds no audio samples (empty or truncated)")
    if y.shape[0] > max_duration_s * sr:            # ffmpeg stopped just past the limit
        raise AudioError(f"{uri}: too long (more than {y.shape[0] / sr:.1f} s decoded > maximum "
                         f"{max_duration_s:g} s; decoding stopped)")
    return _average_channels(y), int(sr)


def _average_channels(frames: np.ndarray) -> np.ndarray:
    """[S, channels] -> float32 [S] mean (a matrix-vector product: ~80x faster than mean(axis=1))."""
    weights = np.full(frames.shape[1], 1.0 / frames.shape[1], dtype=np.float32)
    return np.ascontiguousarray(frames, dtype=np.float32) @ weights


class _UnknownFormat(Exception):
    """soundfile cannot open the file (not a format it knows); try another decoder."""


def _read_soundfile(path: str, max_duration_s: float = math.inf) -> tuple[np.ndarray, int]:
    """[frames, channels] float32 and the rate; AudioError for truncated/corrupt content and, before
    anything is decoded, for a header declaring more than `max_duration_s` seconds."""
    try:
        f = sf.SoundFile(path)
    except sf.LibsndfileError as exc:
        raise _UnknownFormat(_libsndfile_cause(exc)) from None
    with f:
        _check_header_consistency(f.extra_info)
        declared = f.frames
        if declared > max_duration_s * f.samplerate:
            raise AudioError(_duration_cause(declared / f.samplerate, -math.inf, max_duration_s))
        try:
            y = f.read(dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            raise AudioError(f"corrupt {f.format} data ({_libsndfile_cause(exc)})") from None
        _check_decoded_frames(f.format, y.shape[0], declared)
        return y, f.samplerate


def _check_decoded_frames(fmt: str, decoded: int, declared: int) -> None:
    """Raise AudioError when an MP3/FLAC decodes to fewer frames than its header declares (truncated)."""
    if fmt in ("MP3", "FLAC") and declared > 0 and decoded < (1 - _TRUNCATION_TOLERANCE) * declared:
        raise AudioError(f"truncated {fmt} file: decoded {decoded} of {declared} declared frames")


def _libsndfile_cause(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


_DECLARED_VS_ACTUAL = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZE = 0xFFFFFFFF          # placeholder chunk size written by streaming encoders


def _check_header_consistency(log: str) -> None:
    """Raise AudioError when libsndfile's parse log shows a data chunk cut short.

    libsndfile silently shortens a WAV/AIFF whose data chunk is smaller than its header says and
    logs "data : <declared> (should be <actual>)"; a header size of 0 or 0xFFFFFFFF is the legitimate
    placeholder of a streamed file, so only a declared size above the actual one (and not a placeholder)
    counts as truncation. An Ogg stream that ends without its end-of-stream page is truncated too.
    """
    for chunk, declared, actual in _DECLARED_VS_ACTUAL.findall(log):
        declared_n, actual_n = int(declared), int(actual)
        if actual_n + 1 < declared_n < _STREAMING_SIZE:
            raise AudioError(f"truncated file: {chunk} chunk holds {actual_n} of {declared_n} declared bytes")
    if "File ended unexpectedly" in log or "> file length" in log:
        raise AudioError("truncated file: " + next(line.strip(" *") for line in log.splitlines()
                                                   if "unexpectedly" in line or "> file length" in line))


def _read_ffmpeg(path: str, uri: str, soundfile_cause: str,
                 max_duration_s: float = math.inf) -> tuple[np.ndarray, int]:
    """Decode with the ffmpeg binary into a float32 WAV, then read it: [frames, channels], rate.
    With a finite `max_duration_s`, ffmpeg stops one second past it (the caller refuses what is longer)."""
    _require_program("ffmpeg", uri, soundfile_cause)
    with tempfile.TemporaryDirectory(prefix="pianoeval-ffmpeg-") as tmp:
        out = os.path.join(tmp, "decoded.wav")
        limit = ["-t", f"{max_duration_s + 1.0:.3f}"] if math.isfinite(max_duration_s) else []
        cmd = [*_ffmpeg_decode_args(path), *limit, "-c:a", "pcm_f32le", "-f", "wav", out]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_FFMPEG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AudioError(f"{uri}: ffmpeg did not finish decoding within {_FFMPEG_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0 or not os.path.exists(out):
            raise AudioError(f"{uri}: not a readable audio file ({_ffmpeg_cause(done.stderr, path)})")
        y, sr = sf.read(out, dtype="float32", always_2d=True)
        return y, int(sr)


def _require_program(name: str, uri: str, soundfile_cause: str) -> None:
    """AudioError unless `name` (ffmpeg, ffprobe) is on PATH, for a file soundfile cannot open."""
    if shutil.which(name) is None:
        raise AudioError(f"{uri}: not a format soundfile reads ({soundfile_cause}) and {name} is not installed")


# Demuxers ffmpeg/ffprobe may use on a recording: single-file audio containers only. Recordings are untrusted,
# and ffmpeg picks the demuxer from the content, not the name: without this list an `.mp3` holding an HLS or
# ffconcat playlist makes ffmpeg read the files (local, or URLs) it names. The mov demuxer serves m4a/mp4
# (external data references stay off, ffmpeg's default); RF64 goes through `wav`; Opus/Vorbis through `ogg`.
FFMPEG_INPUT_FORMATS = ("mov", "aac", "asf", "mp3", "ogg", "flac", "wav", "w64", "aiff", "caf", "au", "matroska",
                        "ac3", "eac3", "wv", "ape", "amr")


def ffmpeg_input_args(path: str) -> list[str]:
    """The input part of an ffmpeg/ffprobe command for a local recording: the `file` protocol alone, the audio
    demuxers of FFMPEG_INPUT_FORMATS alone, and the path as an absolute `file:` URL (never read as an option,
    a `concat:`/`http:` URL or a device name)."""
    return ["-protocol_whitelist", "file", "-format_whitelist", ",".join(FFMPEG_INPUT_FORMATS),
            "-i", "file:" + os.path.abspath(path)]


def _ffmpeg_decode_args(path: str) -> list[str]:
    """ffmpeg arguments that decode the first audio stream of `path`, stopping at the first error
    (the output codec, format and target follow)."""
    return ["ffmpeg", "-nostdin", "-v", "error", "-xerror", *ffmpeg_input_args(path), "-vn", "-map", "0:a:0"]


_FFMPEG_PREFIX = re.compile(r"^\[[^\]]*\]\s*")


def _ffmpeg_cause(stderr: str, path: str) -> str:
    """The last two lines of ffmpeg's error output, without its '[demuxer @ 0x..]' and path prefixes."""
    prefixes = (f"file:{os.path.abspath(path)}: ", f"{path}: ")
    lines = [_FFMPEG_PREFIX.sub("", line.strip()) for line in stderr.splitlines()]
    lines = [functools.reduce(lambda text, prefix: text.replace(prefix, ""), prefixes, line) for line in lines]
    lines = [line for line in lines if line and not line.startswith("Last message repeated")]
    return "ffmpeg: " + ("; ".join(lines[-2:]) if lines else "failed without a message")


# --- array helpers -----------------------------------------------------------------------------

def to_mono(y: np.ndarray) -> np.ndarray:
    """Average the channels of [S] or [channels, S] audio into float32 [S].

    A 2-D array is read as [channels, samples] when it has fewer rows than columns, else as
    [samples, channels] (no real recording has more channels than samples).
    """
    y = np.asarray(y)
    if y.ndim == 1:
        return y.astype(np.float32, copy=False)
    if y.ndim != 2:
        raise AudioError(f"audio must be 1-D [samples] or 2-D [channels, samples], got shape {y.shape}")
    return _average_channels(y.T if y.shape[0] <= y.shape[1] else y)


def peak_dbfs(y: np.ndarray) -> float:
    """Peak level of a waveform in dB relative to full scale (-inf for digital silence)."""
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def peak_normalise(y: np.ndarray, target_dbfs: float = C.PEAK_TARGET_DBFS) -> np.ndarray:
    """Scale a waveform so that its absolute peak sits at `target_dbfs` (float32, same shape)."""
    peak = float(np.max(np.abs(y))) if np.size(y) else 0.0
    return _apply_gain(y, _normalising_gain(peak, target_dbfs))


def _normalising_gain(peak: float, target_dbfs: float = C.PEAK_TARGET_DBFS) -> float:
    """The linear gain that brings an absolute peak `peak` to `target_dbfs`."""
    if not math.isfinite(peak):
        raise AudioError("peak_normalise: signal holds NaN or infinite samples")
    if peak == 0.0:
        raise AudioError("peak_normalise: signal is digital silence (peak 0), nothing to normalise")
    return 10.0 ** (target_dbfs / 20.0) / peak


def _apply_gain(y: np.ndarray, gain: float) -> np.ndarray:
    """y * gain computed in float64, returned as float32 (same shape)."""
    return (np.asarray(y, dtype=np.float64) * gain).astype(np.float32)


def resample(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of mono [S_in] float audio to [round(S_in * sr_out / sr_in)] (soxr HQ)."""
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"resample: sample rates must be positive, got {sr_in} -> {sr_out} Hz")
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise AudioError(f"resample: expected mono [samples] audio, got shape {y.shape}")
    if sr_in == sr_out:
        return y.copy()
    return soxr.resample(y, sr_in, sr_out, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def check_audio(y: np.ndarray, sr: int, uri: str, min_duration_s: float = C.MIN_DURATION_S,
                max_duration_s: float = math.inf) -> None:
    """Raise AudioError("<uri>: <reason>") unless `y` ([S] or [channels, S]) is usable audio.

    Rejects: a non-positive rate, no samples, NaN/inf samples, a duration outside
    [min_duration_s, max_duration_s], and silence (peak below SILENCE_PEAK_DBFS).
    """
    y = np.asarray(y)
    if sr <= 0:
        raise AudioError(f"{uri}: sample rate must be positive, got {sr} Hz")
    n_samples = y.shape[-1] if y.ndim == 1 or y.shape[0] <= y.shape[-1] else y.shape[0]
    if y.size == 0 or n_samples == 0:
        raise AudioError(f"{uri}: no audio samples")
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{uri}: {_nonfinite_cause(int(np.sum(~np.isfinite(y))))}")
    duration_cause = _duration_cause(n_samples / sr, min_duration_s, max_duration_s)
    if duration_cause:
        raise AudioError(f"{uri}: {duration_cause}")
    silence_cause = _silence_cause(peak_dbfs(y))
    if silence_cause:
        raise AudioError(f"{uri}: {silence_cause}")


def _nonfinite_cause(n_bad: int) -> str:
    return f"audio holds {n_bad} NaN or infinite samples"


def _duration_cause(duration_s: float, min_duration_s: float, max_duration_s: float) -> str | None:
    """Why a duration (s) is outside [min_duration_s, max_duration_s], or None when it is inside."""
    if duration_s < min_duration_s:
        return f"too short ({duration_s:.3f} s < minimum {min_duration_s:g} s)"
    if duration_s > max_duration_s:
        return f"too long ({duration_s:.1f} s > maximum {max_duration_s:g} s)"
    return None


def _silence_cause(level_dbfs: float) -> str | None:
    """Why a peak level (dBFS) counts as silence, or None when it is audible."""
    if level_dbfs < C.SILENCE_PEAK_DBFS:
        return f"silent (peak {level_dbfs:.1f} dBFS < {C.SILENCE_PEAK_DBFS:g} dBFS)"
    return None


# --- the whole front end -----------------------------------------------------------------------

def prepare_audio(y: np.ndarray, sr: int, uri: str, min_duration_s: float = C.MIN_DURATION_S,
                  max_duration_s: float = math.inf) -> DecodedAudio:
    """Mono mixdown -> checks -> peak -3 dBFS -> resample to 24 kHz and 44.1 kHz.

    `y` is [S] or [channels, S] at `sr` Hz. The checks run on the mixdown, so a stereo file whose
    channels cancel is caught as silent.
    """
    mono = to_mono(y)
    check_audio(mono, sr, uri, min_duration_s, max_duration_s)
    mono = peak_normalise(mono)
    return DecodedAudio(
        mert=resample(mono, sr, C.MERT_SAMPLE_RATE_HZ),
        cqt=resample(mono, sr, C.CQT_SAMPLE_RATE_HZ),
        duration_s=len(mono) / sr,
        source_sr=int(sr),
    )


def load_and_prepare(uri: str, min_duration_s: float = C.MIN_DURATION_S,
                     max_duration_s: float = math.inf) -> DecodedAudio:
    """`load_audio` then `prepare_audio`: a file URI to both resampled waveforms."""
    y, sr = load_audio(uri, max_duration_s)
    return prepare_audio(y, sr, uri, min_duration_s, max_duration_s)

"""Stream a recording through the audio front end in blocks, with memory flat in its length.

`pipelines.io.audio` decodes a whole file, then mixes, checks, peak-normalises and resamples whole
arrays: its peak memory grows by about 40 MB per minute of 44.1 kHz stereo (2.4 GB for an hour).
A nightly scoring job meets recordings several hours long, so `AudioStream` makes two passes over one
local file instead:

    pass 1, `scan()`:   decode block by block -> mono -> the checks of `audio.check_audio` (no samples,
                        NaN/inf, too short, too long (reading stops as soon as the maximum is passed),
                        silent) -> duration, native rate, peak
    pass 2, `blocks()`: decode again -> mono -> gain from the pass-1 peak (-3 dBFS) -> soxr streaming
                        resampler to 24 kHz and to 44.1 kHz -> consecutive float32 blocks
            `spans()`:  windows [start - margin, end + margin] cut from `blocks()`, keeping only the
                        audio still needed by a later window in memory

The decoders are those of `audio.load_audio`: libsndfile through soundfile (read `block_s` seconds at a
time), else the ffmpeg binary, whose raw float32 output is read from its stdout pipe as it comes. The
same damage is detected with the same messages: a WAV/AIFF data chunk shorter than its header says and
an Ogg stream without its end are refused when the file is opened, a FLAC that loses sync or an ffmpeg
decoding error when the stream reaches it, an MP3 or FLAC decoding to fewer frames than declared at its
end. A missing file raises `storage.StorageError`; every other failure is `AudioError("<uri>: <cause>")`.

The concatenated blocks are bit-identical to `prepare_audio` of the whole file, in value and length:
soxr's `ResampleStream` fed in blocks gives the samples of its one-shot `resample` (measured here for
44.1/48/22.05/16 kHz sources and blocks of 4,096 samples to 2 s), and the mixdown and gain are the
same per-sample operations. `probe_audio` reads a header only (soundfile.info or ffprobe), so a job can
refuse an over-long recording before reading it.

Measured by benchmarks/bench_audio_stream.py (2 cores shared with other jobs, 16-bit stereo WAV, 30 s
blocks, each call in a fresh process): peak RSS growth of `load_and_prepare` 809 MB for 20 min and
2,424 MB for 60 min at 44.1 kHz (881 / 2,638 MB at 48 kHz); scan + blocks 59-62 MB for both lengths
at either rate. Time: with the machine quiet, 44.1 kHz, 1.8 / 5.3 s whole vs 1.1 / 3.7 s streamed;
under load, streaming took 1.3-2x the CPU time of the whole-array path (it decodes the file twice).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import subprocess
import tempfile
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr

from pipelines import constants as C
from pipelines.io import storage
from pipelines.io.audio import (
    _FFMPEG_TIMEOUT_S,
    RESAMPLE_QUALITY,
    AudioError,
    _apply_gain,
    _average_channels,
    _check_decoded_frames,
    _check_header_consistency,
    _duration_cause,
    _ffmpeg_cause,
    _ffmpeg_decode_args,
    _libsndfile_cause,
    _nonfinite_cause,
    _normalising_gain,
    _require_program,
    _silence_cause,
    ffmpeg_input_args,
    to_mono,
)

DEFAULT_BLOCK_S = 30.0                # decoded block: 30 s of 48 kHz stereo float32 is 11.5 MB
OUTPUT_RATES_HZ = (C.MERT_SAMPLE_RATE_HZ, C.CQT_SAMPLE_RATE_HZ)
_PIPE_READ_BYTES = 1 << 20            # ffmpeg stdout is read in pieces of at most 1 MiB


@dataclasses.dataclass
class AudioInfo:
    """What a file's header says, before anything is decoded."""
    sample_rate: int                  # Hz
    channels: int
    frames: int | None                # declared frames at sample_rate (None when the container does not say)
    duration_s: float | None          # declared duration (None when unknown)
    reader: str                       # "soundfile" | "ffmpeg": the decoder `AudioStream` will use


# --- header --------------------------------------------------------------------------------------

def probe_audio(path: str, uri: str) -> AudioInfo:
    """Read the header of a local audio file (soundfile.info, or ffprobe for formats libsndfile does
    not read); never decodes the whole file. AudioError("<uri>: <cause>") for non-audio files and for
    a WAV/AIFF/Ogg header that already shows truncation; StorageError for a missing file."""
    if not os.path.isfile(path):
        raise storage.StorageError(f"{uri}: no such file")
    try:
        info = sf.info(path)
    except sf.LibsndfileError as exc:
        return _ffprobe(path, uri, _libsndfile_cause(exc))
    try:
        _check_header_consistency(info.extra_info)
    except AudioError as exc:
        raise AudioError(f"{uri}: {exc}") from None
    frames = int(info.frames) if info.frames > 0 else None
    return AudioInfo(sample_rate=int(info.samplerate), channels=int(info.channels), frames=frames,
                     duration_s=frames / info.samplerate if frames else None, reader="soundfile")


def _ffprobe(path: str, uri: str, soundfile_cause: str) -> AudioInfo:
    """Header of the first audio stream through ffprobe (rate, channels, duration when the container has one)."""
    _require_program("ffmpeg", uri, soundfile_cause)          # the decoder, as load_audio words it
    _require_program("ffprobe", uri, soundfile_cause)
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,duration:format=duration", "-of", "json", *ffmpeg_input_args(path)]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{uri}: ffprobe did not read the header within 60 s") from None
    if done.returncode != 0:
        cause = _ffmpeg_cause(done.stderr, path).replace("ffmpeg: ", "ffprobe: ", 1)
        raise AudioError(f"{uri}: not a readable audio file ({cause})")
    try:
        parsed = json.loads(done.stdout or "{}")
        stream = (parsed.get("streams") or [None])[0]
        if not stream:
            raise AudioError(f"{uri}: not a readable audio file (ffprobe: no audio stream)")
        rate, channels = int(stream["sample_rate"]), int(stream["channels"])
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, AudioError):
            raise
        raise AudioError(f"{uri}: not a readable audio file (ffprobe: unexpected header {exc!r})") from None
    if rate <= 0 or channels <= 0:
        raise AudioError(f"{uri}: not a readable audio file (ffprobe: {rate} Hz, {channels} channels)")
    duration = _positive_float(stream.get("duration")) or _positive_float(parsed.get("format", {}).get("duration"))
    return AudioInfo(sample_rate=rate, channels=channels, frames=None, duration_s=duration, reader="ffmpeg")


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


# --- decoders: mono float32 blocks [n] at the native rate -------------------------------------------

def _soundfile_blocks(path: str, uri: str, block_frames: int) -> Iterator[np.ndarray]:
    try:
        f = sf.SoundFile(path)
    except sf.LibsndfileError as exc:
        raise AudioError(f"{uri}: {_libsndfile_cause(exc)}") from None
    with f:
        try:
            _check_header_consistency(f.extra_info)
        except AudioError as exc:
            raise AudioError(f"{uri}: {exc}") from None
        declared, decoded = f.frames, 0
        while True:
            try:
                frames = f.read(block_frames, dtype="float32", always_2d=True)    # [n, channels]
            except sf.LibsndfileError as exc:
                raise AudioError(f"{uri}: corrupt {f.format} data ({_libsndfile_cause(exc)})") from None
            if frames.shape[0]:
                decoded += frames.shape[0]
                yield _average_channels(frames)
            if frames.shape[0] < block_frames:
                break
        try:
            _check_decoded_frames(f.format, decoded, declared)
        except AudioError as exc:
            raise AudioError(f"{uri}: {exc}") from None


def _ffmpeg_blocks(path: str, uri: str, info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    """Decode with ffmpeg into raw float32 on its stdout and read it incrementally.

    ffmpeg stops at the first decoding error (-xerror); its exit status is checked when the pipe
    ends, so damage raises when the stream reaches it. A pipe silent for _FFMPEG_TIMEOUT_S is an error.
    The process is killed when the consumer stops early (a closed generator).
    """
    channels = info.channels
    frame_bytes = 4 * channels
    block_bytes = block_frames * frame_bytes
    cmd = [*_ffmpeg_decode_args(path), "-c:a", "pcm_f32le", "-ac", str(channels), "-ar", str(info.sample_rate),
           "-f", "f32le", "pipe:1"]
    with tempfile.TemporaryFile(prefix="pianoeval-ffmpeg-") as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        try:
            fd = proc.stdout.fileno()
            pending = bytearray()
            while True:
                ready, _, _ = select.select([fd], [], [], _FFMPEG_TIMEOUT_S)
                if not ready:
                    raise AudioError(f"{uri}: ffmpeg produced no audio for {_FFMPEG_TIMEOUT_S:.0f} s")
                piece = os.read(fd, min(_PIPE_READ_BYTES, max(block_bytes - len(pending), frame_bytes)))
                if not piece:
                    break
                pending += piece
                if len(pending) >= block_bytes:
                    yield _average_channels(np.frombuffer(bytes(pending[:block_bytes]), "<f4").reshape(-1, channels))
                    del pending[:block_bytes]
            proc.wait(timeout=_FFMPEG_TIMEOUT_S)
            if proc.returncode != 0:
                errors.seek(0)
                stderr = errors.read().decode("utf-8", "replace")
                raise AudioError(f"{uri}: not a readable audio file ({_ffmpeg_cause(stderr, path)})")
            usable = len(pending) - len(pending) % frame_bytes
            if usable:
                yield _average_channels(np.frombuffer(bytes(pending[:usable]), "<f4").reshape(-1, channels))
        except subprocess.TimeoutExpired:
            raise AudioError(f"{uri}: ffmpeg did not finish decoding within {_FFMPEG_TIMEOUT_S:.0f} s") from None
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


# --- the stream ----------------------------------------------------------------------------------

class AudioStream:
    """Two passes over one local audio file (an s3:// object is first copied to a local temp file by the caller).

    `scan()` decodes and checks the whole recording without keeping it; `blocks()` then yields it
    peak-normalised and resampled, block by block; `spans()` cuts analysis windows out of `blocks()`.
    Each pass decodes the file again: memory holds a block or a window, never the recording.
    """

    def __init__(self, path: str, uri: str, *, min_duration_s: float, max_duration_s: float,
                 block_s: float = DEFAULT_BLOCK_S):
        if not block_s > 0:
            raise ValueError(f"block_s must be > 0, got {block_s}")
        self.path, self.uri = path, uri
        self.min_duration_s, self.max_duration_s, self.block_s = float(min_duration_s), float(max_duration_s), block_s
        self._array: np.ndarray | None = None          # [S] mono, for from_array
        self._array_sr = 0
        self._info: AudioInfo | None = None
        self._n_frames: int | None = None              # set by scan()
        self._peak = 0.0
        self._sr = 0

    @classmethod
    def from_array(cls, y: np.ndarray, sr: int, uri: str, *, min_duration_s: float, max_duration_s: float,
                   block_s: float = DEFAULT_BLOCK_S) -> AudioStream:
        """The same interface over an in-memory waveform [S] or [channels, S] at `sr` Hz (rendered MIDI)."""
        stream = cls("", uri, min_duration_s=min_duration_s, max_duration_s=max_duration_s, block_s=block_s)
        stream._array, stream._array_sr = to_mono(y), int(sr)   # [S] float32 (no copy for mono float32)
        return stream

    # --- what pass 1 learnt ---

    @property
    def scanned(self) -> bool:
        return self._n_frames is not None

    @property
    def source_sr(self) -> int:
        """Native sample rate of the recording, Hz (after scan())."""
        self._require_scan()
        return self._sr

    @property
    def duration_s(self) -> float:
        """Duration of the decoded recording, seconds (after scan())."""
        self._require_scan()
        return self._n_frames / self._sr

    @property
    def n_frames(self) -> int:
        """Decoded mono samples at the native rate (after scan())."""
        self._require_scan()
        return int(self._n_frames)

    def n_samples(self, rate: int) -> int:
        """Length of the resampled waveform at `rate` Hz, as prepare_audio gives it (after scan())."""
        self._require_scan()
        return self._n_frames if rate == self._sr else round(self._n_frames * rate / self._sr)

    def _require_scan(self) -> None:
        if self._n_frames is None:
            raise RuntimeError(f"{self.uri}: call AudioStream.scan() before reading the stream")

    # --- decoding ---

    def _open(self) -> int:
        """The native rate, choosing the decoder (once per stream)."""
        if self._array is not None:
            if self._array_sr <= 0:
                raise AudioError(f"{self.uri}: sample rate must be positive, got {self._array_sr} Hz")
            return self._array_sr
        if self._info is None:
            self._info = probe_audio(self.path, self.uri)
        return self._info.sample_rate

    def _decoded(self, sr: int) -> Iterator[np.ndarray]:
        """Mono float32 blocks [n] at the native rate, in order."""
        block_frames = max(1, int(round(self.block_s * sr)))
        if self._array is not None:
            for start in range(0, len(self._array), block_frames):
                yield self._array[start:start + block_frames]
        elif self._info.reader == "soundfile":
            yield from _soundfile_blocks(self.path, self.uri, block_frames)
        else:
            yield from _ffmpeg_blocks(self.path, self.uri, self._info, block_frames)

    # --- pass 1 ---

    def scan(self) -> None:
        """Decode the whole recording once, block by block, and check it as `audio.check_audio` does.

        Raises AudioError("<uri>: <cause>") with check_audio's causes: no samples, NaN/inf samples,
        too short, too long (reading stops as soon as the maximum is passed), silent; and load_audio's
        for unreadable, truncated or corrupt files.
        """
        sr = self._open()
        limit = self.max_duration_s * sr                  # frames (inf when unbounded)
        n, n_bad, peak = 0, 0, 0.0
        blocks = self._decoded(sr)
        try:
            for block in blocks:
                n += len(block)
                block_peak = float(np.max(np.abs(block))) if block.size else 0.0
                if not math.isfinite(block_peak):                  # NaN or inf somewhere: count them
                    finite = np.isfinite(block)
                    n_bad += int(block.size - np.count_nonzero(finite))
                    block_peak = float(np.max(np.abs(block[finite]))) if finite.any() else 0.0
                peak = max(peak, block_peak)
                if n > limit:
                    raise AudioError(f"{self.uri}: {self._too_long_cause(n, n_bad, sr)}")
        finally:
            blocks.close()                                # stops an ffmpeg decoder early
        if n == 0:
            cause = "no audio samples" if self._array is not None else "file holds no audio samples (empty or truncated)"
            raise AudioError(f"{self.uri}: {cause}")
        if n_bad:
            raise AudioError(f"{self.uri}: {_nonfinite_cause(n_bad)}")
        cause = _duration_cause(n / sr, self.min_duration_s, self.max_duration_s) or \
            _silence_cause(20.0 * math.log10(peak) if peak > 0 else -math.inf)
        if cause:
            raise AudioError(f"{self.uri}: {cause}")
        self._n_frames, self._peak, self._sr = n, peak, sr

    def _too_long_cause(self, n_read: int, n_bad: int, sr: int) -> str:
        """check_audio's message when the total is known (array, declared frames), else how far reading got."""
        if n_bad:
            return _nonfinite_cause(n_bad)
        if self._array is not None:
            total_s = len(self._array) / sr
        else:
            total_s = self._info.frames / sr if self._info.frames else (self._info.duration_s or 0.0)
        if total_s >= n_read / sr:
            return _duration_cause(total_s, -math.inf, self.max_duration_s)
        return f"too long (more than {n_read / sr:.1f} s read > maximum {self.max_duration_s:g} s; reading stopped)"

    # --- pass 2 ---

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Consecutive (y_24k [n24], y_44k [n44]) float32 blocks (after scan()).

        Peak-normalised with the pass-1 peak and resampled with soxr's streaming resampler: their
        concatenation equals prepare_audio(...).mert and .cqt of the whole file. A block holds about
        block_s seconds; the two rates' blocks are not cut at exactly the same instant (the resampler
        holds back its filter delay), and a block may be empty.
        """
        self._require_scan()
        sr = self._sr
        gain = _normalising_gain(self._peak)
        resamplers = [None if rate == sr else soxr.ResampleStream(sr, rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
                      for rate in OUTPUT_RATES_HZ]

        def resampled(mono: np.ndarray, last: bool) -> tuple[np.ndarray, np.ndarray]:
            x = _apply_gain(mono, gain)                                    # [n] float32, peak -3 dBFS
            out = [x if r is None else r.resample_chunk(x, last=last) for r in resamplers]
            return out[0], out[1]

        n, pending = 0, None
        for block in self._decoded(sr):
            n += len(block)
            if pending is not None:
                yield resampled(pending, last=False)
            pending = block
        if n != self._n_frames:
            raise AudioError(f"{self.uri}: decoded {n} frames on the second pass but {self._n_frames} on the "
                             "first (the file changed?)")
        yield resampled(pending, last=True)

    def spans(self, bounds: Sequence[tuple[float, float]], margin_s: float = 0.0
              ) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
        """For each [start_s, end_s) of `bounds` (starts non-decreasing; spans may overlap), yield
        (y_24k, y_44k, pad_s): the audio of [start_s - margin_s, end_s + margin_s] clipped to the
        recording, at 24 kHz [n24] and 44.1 kHz [n44], float32.

        pad_s is how much audio before start_s the 44.1 kHz window holds (the margin actually
        available, measured in whole samples): its first sample is at start_s - pad_s. The 24 kHz
        window starts at the nearest 24 kHz sample. Only the audio a later span still needs is kept,
        so memory holds one window plus one block. A span past the end yields empty arrays (pad_s 0).
        """
        self._require_scan()
        if margin_s < 0:
            raise ValueError(f"margin_s must be >= 0, got {margin_s}")
        bounds = [(float(s), float(e)) for s, e in bounds]
        for i, (start, end) in enumerate(bounds):
            if start < 0 or end < start:
                raise ValueError(f"span {i} [{start}, {end}) must have 0 <= start <= end")
            if i and start < bounds[i - 1][0]:
                raise ValueError(f"span starts must not decrease: span {i} starts at {start} s, "
                                 f"before span {i - 1} ({bounds[i - 1][0]} s)")
        sr24, sr44 = OUTPUT_RATES_HZ
        tails = {sr24: _Tail(), sr44: _Tail()}
        totals = {rate: self.n_samples(rate) for rate in OUTPUT_RATES_HZ}
        source = self.blocks()
        try:
            for i, (start, end) in enumerate(bounds):
                first = min(max(0, round((start - margin_s) * sr44)), totals[sr44])
                pad_s = start - first / sr44
                window = {sr44: (first, min(totals[sr44], max(first, round((end + margin_s) * sr44))))}
                first24 = min(round(first * sr24 / sr44), totals[sr24])
                window[sr24] = (first24, min(totals[sr24], max(first24, round((end + margin_s) * sr24))))
                while any(tails[r].end < window[r][1] for r in tails):
                    block = next(source, None)
                    if block is None:
                        break
                    tails[sr24].extend(block[0])
                    tails[sr44].extend(block[1])
                y24, y44 = tails[sr24].take(*window[sr24]), tails[sr44].take(*window[sr44])
                yield y24, y44, (pad_s if len(y44) else 0.0)
                if i + 1 < len(bounds):
                    keep_from = max(0.0, bounds[i + 1][0] - margin_s)
                    for rate, tail in tails.items():
                        tail.drop_before(int(math.floor(keep_from * rate)) - 1)
        finally:
            source.close()


class _Tail:
    """The samples [offset, end) of one resampled stream that are still needed, as a list of pieces."""

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.offset = 0                   # stream index of pieces[0][0]
        self.end = 0                      # stream index one past the last held sample

    def extend(self, x: np.ndarray) -> None:
        if len(x):
            self.pieces.append(x)
            self.end += len(x)

    def drop_before(self, index: int) -> None:
        while self.pieces and self.offset + len(self.pieces[0]) <= index:
            self.offset += len(self.pieces.pop(0))
        if self.pieces and index > self.offset:
            self.pieces[0] = self.pieces[0][index - self.offset:].copy()
            self.offset = index

    def take(self, start: int, stop: int) -> np.ndarray:
        """A float32 copy of samples [start, stop) (clipped to what the stream held)."""
        if start < self.offset:
            raise RuntimeError(f"samples from {start} were already dropped (held from {self.offset})")
        stop = min(stop, self.end)
        out, at = [], self.offset
        for piece in self.pieces:
            lo, hi = max(start, at), min(stop, at + len(piece))
            if lo < hi:
                out.append(piece[lo - at:hi - at])
            at += len(piece)
            if at >= stop:
                break
        return np.concatenate(out) if out else np.zeros(0, np.float32)

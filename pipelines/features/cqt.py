"""Log-magnitude constant-Q transform: 168 bins (C1-C8, 24 per octave), hop 512 at 44.1 kHz.

`CQTExtractor` computes nnAudio's `CQT1992v2` transform (Hann-windowed complex kernels, L1-normalised,
librosa scaling, reflect padding, centred frames): the kernels come from `nnAudio.utils.
create_cqt_kernels` with the same arguments CQT1992v2 uses. nnAudio pads every kernel to the longest
one (65,536 taps for C1), so its strided convolution spends most of its time multiplying zeros. The
default `impl="trimmed"` convolves groups of 12 kernels (half an octave) cut to their common support
instead (46,020 taps for the lowest group down to 509 for the highest): the same sums with about 6x
fewer operations, equal to `CQT1992v2` within float32 rounding (tests/pipelines/test_cqt.py). On one
core, 60 s of audio took 0.36 s with half-octave groups, 0.44 s with octaves, 0.43-0.54 s with
smaller groups, and 2.1 s with the nnAudio module. `impl="nnaudio"` runs the nnAudio module itself.
Long audio is processed in chunks of output frames to bound memory.

`cqt_frames_of_span` computes the frames of one window of a long recording (from
`pipelines.io.audio_stream.AudioStream.spans`) equal to the whole-file transform's frames: given
`CQT_SPAN_MARGIN_S` of context (the lowest kernels reach 23,010 samples, 0.52 s, each side of a frame's
centre, plus up to one hop to align the window to the frame grid), frames of contiguous spans of a 70 s
signal matched the whole-file CQT within float32 rounding (tests/pipelines/features/test_cqt_spans.py).

`cqt_librosa` is the reference with librosa's multirate algorithm and the same parameters.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipelines import constants as C

Impl = Literal["trimmed", "nnaudio"]
DEFAULT_CHUNK_FRAMES = 2048           # output frames per convolution call (~24 s of audio)
GROUP_BINS = 12                       # kernels convolved together (half an octave; fastest measured)
CQT_SPAN_MARGIN_S = 0.55              # context a span needs on each side: kernel reach (0.522 s) + one hop


def n_cqt_frames(n_samples: int, hop: int = C.CQT_HOP_SAMPLES) -> int:
    """Frames of a centred CQT of `n_samples` samples: 1 + n_samples // hop."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return 1 + n_samples // hop


def cqt_q_factor() -> float:
    """Quality factor of the kernels: centre frequency / bandwidth for 24 bins per octave."""
    return 1.0 / (2.0 ** (1.0 / C.CQT_BINS_PER_OCTAVE) - 1.0)


def cqt_frequencies_hz() -> np.ndarray:
    """Centre frequency of each of the 168 bins, Hz [168]."""
    return C.CQT_FMIN_HZ * 2.0 ** (np.arange(C.CQT_N_BINS) / C.CQT_BINS_PER_OCTAVE)


def _nnaudio_kernels() -> tuple[np.ndarray, int, np.ndarray]:
    """nnAudio's CQT1992v2 kernels: complex64 [168, width], width (taps, a power of 2), lengths [168]."""
    from nnAudio.utils import create_cqt_kernels
    kernels, width, lengths, _ = create_cqt_kernels(
        cqt_q_factor(), C.CQT_SAMPLE_RATE_HZ, C.CQT_FMIN_HZ, C.CQT_N_BINS, C.CQT_BINS_PER_OCTAVE,
        norm=1, window="hann", fmax=None)
    return kernels, int(width), lengths.numpy().astype(np.float64)


class _KernelGroup:
    """Neighbouring kernels cut to their common support [start, stop) within nnAudio's kernel width."""

    def __init__(self, kernels: np.ndarray, lengths: np.ndarray, device: torch.device):
        support = np.flatnonzero(np.abs(kernels).max(axis=0) > 0)
        self.start, self.stop = int(support[0]), int(support[-1]) + 1
        scaled = kernels[:, self.start:self.stop] * np.sqrt(lengths)[:, None]   # librosa scaling
        # real parts then negated imaginary parts, as CQT1992v2 does: [2 * bins, 1, taps]
        weight = np.concatenate([scaled.real, -scaled.imag]).astype(np.float32)[:, None, :]
        self.weight = torch.from_numpy(weight).to(device)
        self.n_bins = kernels.shape[0]


class CQTExtractor:
    """Batched log-magnitude CQT on CPU or GPU; built once, called per batch.

    Args:
        device: "auto" (CUDA when available), "cpu", "cuda", or a torch.device.
        impl: "trimmed" (default; kernels cut to their support, per half octave) or "nnaudio"
            (nnAudio's CQT1992v2 module).
        chunk_frames: output frames per convolution call; bounds memory on long recordings.
        num_threads: torch intra-op threads used during a call (restored afterwards); None keeps
            torch's setting, capped at the CPUs this process may run on.
    """

    def __init__(self, device: str | torch.device = "auto", impl: Impl = "trimmed",
                 chunk_frames: int = DEFAULT_CHUNK_FRAMES, num_threads: int | None = None):
        if impl not in ("trimmed", "nnaudio"):
            raise ValueError(f"CQTExtractor impl must be 'trimmed' or 'nnaudio', got {impl!r}")
        if chunk_frames < 1:
            raise ValueError(f"CQTExtractor chunk_frames must be >= 1, got {chunk_frames}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"CQTExtractor num_threads must be >= 1, got {num_threads}")
        self.device = _resolve_device(device)
        self.impl = impl
        self.chunk_frames = chunk_frames
        self.num_threads = num_threads or min(torch.get_num_threads(), _available_cpus())
        kernels, self.kernel_width, lengths = _nnaudio_kernels()
        self._groups = [_KernelGroup(kernels[i:i + GROUP_BINS], lengths[i:i + GROUP_BINS], self.device)
                        for i in range(0, C.CQT_N_BINS, GROUP_BINS)]
        # reflect padding only as wide as the lowest kernel reaches (nnAudio pads kernel_width // 2)
        self._offset = min(g.start for g in self._groups)
        self.pad = self.kernel_width // 2 - self._offset
        # samples a frame's non-zero taps read before and after its centre (both impls): (left, right)
        self.reach = (self.pad, max(g.stop for g in self._groups) - self.kernel_width // 2)
        self._nnaudio = self._build_nnaudio() if impl == "nnaudio" else None

    @property
    def min_samples(self) -> int:
        """Shortest input the reflect padding allows (longer than the padding), samples."""
        pad = self.kernel_width // 2 if self.impl == "nnaudio" else self.pad
        return pad + 1

    def _build_nnaudio(self) -> torch.nn.Module:
        from nnAudio.features.cqt import CQT1992v2
        return CQT1992v2(sr=C.CQT_SAMPLE_RATE_HZ, hop_length=C.CQT_HOP_SAMPLES, fmin=C.CQT_FMIN_HZ,
                         n_bins=C.CQT_N_BINS, bins_per_octave=C.CQT_BINS_PER_OCTAVE, window="hann",
                         pad_mode="reflect", verbose=False).to(self.device)

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Waveforms [B, S] or [S] at 44.1 kHz -> float32 log(|CQT| + CQT_LOG_EPS) [B, frames, 168]."""
        x = self._as_batch(batch)
        n_frames = n_cqt_frames(x.shape[-1])
        with _torch_threads(self.num_threads), torch.inference_mode():
            magnitude = self._magnitude_nnaudio(x) if self._nnaudio is not None else self._magnitude_trimmed(x)
        if magnitude.shape != (x.shape[0], C.CQT_N_BINS, n_frames):
            raise RuntimeError(f"CQT produced shape {tuple(magnitude.shape)}, expected "
                               f"{(x.shape[0], C.CQT_N_BINS, n_frames)}")
        frames_first = np.ascontiguousarray(magnitude.transpose(0, 2, 1))             # [B, frames, 168]
        return np.log(frames_first + np.float32(C.CQT_LOG_EPS), dtype=np.float32)

    def _as_batch(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Validate and convert to a float32 [B, S] tensor on the extractor's device."""
        x = torch.as_tensor(batch)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"CQT input must be [samples] or [batch, samples], got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("CQT input batch is empty")
        if x.shape[1] < self.min_samples:
            raise ValueError(f"CQT input of {x.shape[1]} samples is too short: the reflect padding needs at "
                             f"least {self.min_samples} samples ({self.min_samples / C.CQT_SAMPLE_RATE_HZ:.2f} s)")
        if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise ValueError("CQT input must be finite floating-point audio (found NaN/inf or integers)")
        return x.to(device=self.device, dtype=torch.float32)

    def _magnitude_trimmed(self, x: torch.Tensor) -> np.ndarray:
        """|CQT| [B, 168, frames] as float32 numpy, convolving each kernel group in chunks of frames."""
        hop, n_frames = C.CQT_HOP_SAMPLES, n_cqt_frames(x.shape[-1])
        padded = F.pad(x[:, None, :], (self.pad, self.pad), mode="reflect")       # [B, 1, S + 2 pad]
        out = np.empty((x.shape[0], C.CQT_N_BINS, n_frames), dtype=np.float32)
        for first in range(0, n_frames, self.chunk_frames):
            count = min(self.chunk_frames, n_frames - first)
            row = 0
            for group in self._groups:
                begin = first * hop + group.start - self._offset
                end = begin + (count - 1) * hop + (group.stop - group.start)
                y = F.conv1d(padded[..., begin:end], group.weight, stride=hop)    # [B, 2 * bins, count]
                mag = torch.sqrt(y[:, :group.n_bins] ** 2 + y[:, group.n_bins:] ** 2)
                out[:, row:row + group.n_bins, first:first + count] = mag.cpu().numpy()
                row += group.n_bins
        return out

    def _magnitude_nnaudio(self, x: torch.Tensor) -> np.ndarray:
        """|CQT| [B, 168, frames] from nnAudio's CQT1992v2 module (whole signal at once)."""
        return self._nnaudio(x, output_format="Magnitude").cpu().numpy().astype(np.float32)


def cqt_frames_of_span(extractor: CQTExtractor, y_44k: np.ndarray, pad_s: float, start_s: float, end_s: float,
                       duration_s: float) -> tuple[np.ndarray, int]:
    """The whole-file CQT's frames whose centres fall in [start_s, end_s), from a window of the recording.

    y_44k [n] is the 44.1 kHz audio from start_s - pad_s on (an `AudioStream.spans` window) of a
    recording of duration_s seconds. Frame k is centred on sample k * 512 of the recording; the window
    must hold `extractor.reach` samples of context around every frame asked for (CQT_SPAN_MARGIN_S of
    margin is enough), except at the recording's true start or end, where the whole-file transform's
    reflect padding is reproduced. A span ending at or after duration_s takes every frame up to the last
    (1 + n // 512 frames in all), so contiguous spans cover each frame exactly once.

    Returns (float32 log-magnitude frames [F, 168], index of the first frame in the whole-file CQT).
    """
    sr, hop = C.CQT_SAMPLE_RATE_HZ, C.CQT_HOP_SAMPLES
    y_44k = np.asarray(y_44k, dtype=np.float32)
    total = round(duration_s * sr)                                     # samples of the whole recording
    first = round((start_s - pad_s) * sr)                              # recording index of y_44k[0]
    if first < 0 or first + len(y_44k) > total + 1:
        raise ValueError(f"span audio [{first}, {first + len(y_44k)}) lies outside the recording [0, {total})")
    n_frames = n_cqt_frames(total)
    k0 = min(max(0, math.ceil(start_s * sr / hop - 1e-6)), n_frames)
    k1 = n_frames if end_s >= duration_s else min(n_frames, max(k0, math.ceil(end_s * sr / hop - 1e-6)))
    if k1 <= k0:
        return np.zeros((0, C.CQT_N_BINS), np.float32), k0
    left, right = extractor.reach
    end = first + len(y_44k)                                           # recording index past y_44k[-1]
    need_from, need_to = k0 * hop - left, (k1 - 1) * hop + right       # samples the wanted frames read
    if need_from < 0:                # reflect padding at the recording's start: the chunk must start there
        lo = 0 if first == 0 else None
    else:                            # a chunk starting on the frame grid, at or before need_from
        lo = max(need_from // hop * hop, -(-first // hop) * hop)
        lo = lo if lo <= need_from else None
    if need_to > total:              # reflect padding at the recording's end: the chunk must end there
        hi = total if end >= total else None
    else:
        hi = need_to if need_to <= end else None
    if lo is None or hi is None:
        raise ValueError(
            f"span [{start_s:.3f}, {end_s:.3f}) s needs audio [{max(need_from, 0) / sr:.3f}, "
            f"{min(need_to, total) / sr:.3f}) s but the window holds [{first / sr:.3f}, {end / sr:.3f}) s: "
            f"give spans a margin of at least {CQT_SPAN_MARGIN_S} s")
    if hi < total:                   # the extractor's shortest input, from real samples when there are any
        hi = min(max(hi, lo + extractor.min_samples), end, total)
    frames = extractor(y_44k[lo - first:hi - first])[0]                # [1 + (hi - lo) // hop, 168]
    return frames[k0 - lo // hop:k1 - lo // hop], k0


def cqt_librosa(y: np.ndarray) -> np.ndarray:
    """Reference: librosa's CQT of mono 44.1 kHz audio [S] -> float32 log(|C| + eps) [frames, 168]."""
    import librosa
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"cqt_librosa expects mono [samples] audio, got shape {y.shape}")
    magnitude = np.abs(librosa.cqt(
        y, sr=C.CQT_SAMPLE_RATE_HZ, hop_length=C.CQT_HOP_SAMPLES, fmin=C.CQT_FMIN_HZ,
        n_bins=C.CQT_N_BINS, bins_per_octave=C.CQT_BINS_PER_OCTAVE, window="hann"))
    return np.log(magnitude.T + np.float32(C.CQT_LOG_EPS)).astype(np.float32)


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"CQTExtractor device {device!r} requested but CUDA is not available")
    return resolved


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch intra-op threads, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != previous:
            torch.set_num_threads(previous)

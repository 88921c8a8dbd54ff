"""CQT frames of streamed windows (AudioStream.spans + cqt_frames_of_span) equal the whole-file CQT."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipelines import constants as C
from pipelines.features.cqt import CQT_SPAN_MARGIN_S, CQTExtractor, cqt_frames_of_span, n_cqt_frames
from pipelines.io.audio import prepare_audio
from pipelines.io.audio_stream import AudioStream

SR = C.CQT_SAMPLE_RATE_HZ


@pytest.fixture(scope="module")
def extractor() -> CQTExtractor:
    return CQTExtractor(device="cpu", num_threads=2)


def piano_like(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Chords on C1..C6 changing every 1.3 s (low notes exercise the longest kernels), a slow sweep and
    a little noise, with a quiet passage in the middle: mono float32 [S]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = np.zeros_like(t)
    for start in np.arange(0.0, seconds, 1.3):
        pitches = rng.choice(np.arange(24, 96), size=3, replace=False)
        on = slice(int(start * sr), int((start + 1.3) * sr))
        hz = 440.0 * 2.0 ** ((pitches[:, None] - 69) / 12)                  # [3, 1]
        y[on] = (np.sin(2 * np.pi * hz * t[on]).sum(axis=0) * np.exp(-2.0 * (t[on] - start)))
    y += 0.3 * np.sin(2 * np.pi * 50.0 * np.exp(t / seconds * np.log(80.0)) * t / 4)
    y += 0.01 * rng.standard_normal(len(t))
    y[(t > 0.4 * seconds) & (t < 0.45 * seconds)] *= 1e-3
    return (0.7 * y / np.max(np.abs(y))).astype(np.float32)


def frames_of_spans(extractor, stream: AudioStream, bounds) -> tuple[list[np.ndarray], list[int]]:
    frames, firsts = [], []
    for (start, end), (_, y44, pad_s) in zip(bounds, stream.spans(bounds, margin_s=CQT_SPAN_MARGIN_S)):
        f, k0 = cqt_frames_of_span(extractor, y44, pad_s, start, end, stream.duration_s)
        frames.append(f)
        firsts.append(k0)
    return frames, firsts


def assert_same_frames(ours: np.ndarray, whole: np.ndarray) -> None:
    """Float32 rounding only: magnitudes within 1e-5 of the peak everywhere, log values within 1e-3 on
    bins above -60 dB of the peak (below, rounding of near-zero sums dominates the log)."""
    assert ours.shape == whole.shape
    mag_ours, mag_whole = np.exp(ours), np.exp(whole)
    assert np.max(np.abs(mag_ours - mag_whole)) < 1e-5 * mag_whole.max()
    loud = mag_whole > 1e-3 * mag_whole.max()
    assert np.max(np.abs(ours[loud] - whole[loud])) < 1e-3


def test_contiguous_spans_give_every_frame_once_and_equal_values(extractor):
    y = piano_like(70.0)
    whole = extractor(prepare_audio(y, SR, "70s").cqt)[0]               # [6030, 168], peak -3 dBFS as streamed
    stream = AudioStream.from_array(y, SR, "70s", min_duration_s=1.0, max_duration_s=3600.0, block_s=7.0)
    stream.scan()
    cuts = [0.0, 0.004, 9.37, 25.0, 25.0116, 44.5, 61.0, 69.995, 70.0]  # odd cuts, a one-frame span, the edges
    bounds = list(itertools.pairwise(cuts))
    frames, firsts = frames_of_spans(extractor, stream, bounds)
    counts = [len(f) for f in frames]
    assert firsts == list(np.cumsum([0] + counts[:-1]))                  # consecutive, no gap, no overlap
    assert sum(counts) == whole.shape[0] == n_cqt_frames(len(y))
    assert counts[0] == 1                                                # [0, 4 ms): frame 0 only
    for f, k0 in zip(frames, firsts):
        assert_same_frames(f, whole[k0:k0 + len(f)])
        assert f.dtype == np.float32 and f.shape[1] == C.CQT_N_BINS
    assert_same_frames(np.concatenate(frames), whole)


def test_overlapping_spans_of_a_resampled_recording(extractor):
    y48 = piano_like(30.0, 48_000, seed=1)
    whole = extractor(prepare_audio(y48, 48_000, "48k").cqt)[0]
    stream = AudioStream.from_array(y48, 48_000, "48k", min_duration_s=1.0, max_duration_s=3600.0, block_s=4.0)
    stream.scan()
    bounds = [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0), (20.0, 30.0)]   # 10 s windows, hop 5 s
    frames, firsts = frames_of_spans(extractor, stream, bounds)
    for (start, end), f, k0 in zip(bounds, frames, firsts):
        centres = (k0 + np.arange(len(f))) * C.CQT_HOP_SAMPLES / SR
        assert centres[0] >= start and (centres[-1] < end or end == 30.0)
        assert_same_frames(f, whole[k0:k0 + len(f)])
    assert firsts[-1] + len(frames[-1]) == whole.shape[0]


def test_too_small_a_margin_is_refused(extractor):
    y = piano_like(6.0)
    stream = AudioStream.from_array(y, SR, "6s", min_duration_s=1.0, max_duration_s=60.0)
    stream.scan()
    _, y44, pad_s = next(stream.spans([(2.0, 3.0)], margin_s=0.2))
    with pytest.raises(ValueError, match="margin of at least"):
        cqt_frames_of_span(extractor, y44, pad_s, 2.0, 3.0, stream.duration_s)
    frames, k0 = cqt_frames_of_span(extractor, y44, pad_s, 2.0, 2.0, stream.duration_s)   # empty span
    assert frames.shape == (0, C.CQT_N_BINS) and k0 == 173

"""Segmentation: windows cover the recording with the stated overlap; segments carry the right notes and bars."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_alignment import PerformanceStyle, render_performance, synthetic_score
from pipelines.features.align import align
from pipelines.features.segment import Segment, onset_masks, segment_alignment, segment_performance, windows

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("duration, window, overlap", [(95.3, 10.0, 0.5), (60.0, 10.0, 0.5), (61.0, 25.0, 0.5),
                                                       (33.3, 10.0, 0.0), (40.0, 10.0, 0.75)])
def test_windows_cover_the_recording_with_the_stated_overlap(duration, window, overlap):
    spans = windows(duration, window, overlap)
    starts, ends = np.array([s for s, _ in spans]), np.array([e for _, e in spans])
    assert starts[0] == 0.0 and ends[-1] == pytest.approx(duration)
    np.testing.assert_allclose(ends - starts, window)
    shared = ends[:-1] - starts[1:]                              # overlap of consecutive windows, seconds
    np.testing.assert_allclose(shared[:-1], overlap * window, atol=1e-9)
    assert shared[-1] >= overlap * window - 1e-9                 # the last window is shifted back, not cut
    assert np.all(np.diff(starts) > 0)
    assert len(spans) == int(np.ceil((duration - window) / (window * (1 - overlap)) - 1e-9)) + 1


def test_short_recording_gives_one_window():
    assert windows(7.5, 10.0, 0.5) == [(0.0, 7.5)]
    assert windows(10.0, 10.0, 0.5) == [(0.0, 10.0)]
    assert windows(0.0, 10.0) == [(0.0, 0.0)]


def test_exact_multiple_adds_no_sliver_window():
    assert windows(20.0, 10.0, 0.5) == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0)]


@pytest.mark.parametrize("args", [(10.0, 0.0, 0.5), (10.0, 5.0, 1.0), (10.0, 5.0, -0.1), (-1.0, 5.0, 0.5),
                                  (float("nan"), 5.0, 0.5)])
def test_invalid_window_arguments_raise(args):
    with pytest.raises(ValueError):
        windows(*args)


def test_every_onset_falls_in_some_window_even_outside_the_recording():
    spans = windows(30.0, 10.0, 0.5)
    onsets = np.array([-0.2, 0.0, 4.99, 5.0, 29.99, 30.0, 31.0])
    masks = np.stack(onset_masks(onsets, spans))
    assert masks.any(axis=0).all()
    assert masks[0, 0] and masks[-1, -1] and masks[-1, -2]


@pytest.fixture(scope="module")
def aligned():
    rng = np.random.default_rng(11)
    style = PerformanceStyle(qpm=120.0, rubato=0.0, drift=0.0, jitter_s=0.0, chord_spread_s=0.0)
    sp = render_performance(synthetic_score(rng, n_bars=20, qpm=120.0), style, rng)
    return sp, align(sp.score, sp.perf)


def test_segments_hold_the_tokens_of_their_window_and_the_right_bars(aligned):
    sp, al = aligned
    duration = sp.perf.duration_s
    segments = segment_alignment(al, sp.score, duration, window_s=10.0, overlap=0.5)
    assert [s.index for s in segments] == list(range(len(windows(duration, 10.0, 0.5))))
    covered = np.zeros(al.n_tokens, bool)
    for seg in segments:
        assert isinstance(seg, Segment) and seg.token_mask.shape == (al.n_tokens,)
        onsets = al.tokens["perf_onset_s"][seg.token_mask]
        assert np.all(onsets >= seg.start_s) or seg.index == 0
        assert np.all(onsets < seg.end_s) or seg.index == len(segments) - 1
        covered |= seg.token_mask
        # 120 qpm in 4/4 from 0.5 s: a bar lasts 2 s and bar b starts at 0.5 + 2 b seconds
        first = int(np.floor((max(onsets.min(), seg.start_s) - 0.5) / 2.0 + 1e-9))
        last = int(np.floor((onsets.max() - 0.5) / 2.0 + 1e-9))
        assert (seg.bar_start, seg.bar_end) == (first, last)
        assert seg.n_tokens == seg.token_mask.sum() and seg.duration_s == pytest.approx(10.0)
    assert covered.all()


def test_a_window_without_score_notes_is_placed_by_the_tempo(aligned):
    sp, al = aligned
    silent_tail = sp.perf.duration_s + 12.0                      # audio continues 12 s after the last note
    segments = segment_alignment(al, sp.score, silent_tail, window_s=10.0, overlap=0.5)
    last = segments[-1]
    assert last.start_s > al.tokens["perf_onset_s"].max() and last.n_tokens == 0
    assert last.bar_start == last.bar_end == sp.score.n_bars - 1      # past the end: the last bar, clipped


def test_segment_performance_masks_performed_notes_without_bars(aligned):
    sp, _ = aligned
    segments = segment_performance(sp.perf, sp.perf.duration_s, window_s=10.0, overlap=0.5)
    assert all(s.bar_start == -1 and s.bar_end == -1 for s in segments)
    assert all(s.token_mask.shape == (len(sp.perf.notes),) for s in segments)
    assert np.logical_or.reduce([s.token_mask for s in segments]).all()
    middle = segments[1]
    onsets = sp.perf.notes["onset_s"]
    np.testing.assert_array_equal(middle.token_mask, (onsets >= middle.start_s) & (onsets < middle.end_s))

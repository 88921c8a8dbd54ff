"""Block-wise transcription (transcribe_blocks) against the whole-array basic-pitch transcription."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pretty_midi
import pytest

from pipelines.demo_corpus.generate import performance_midi_bytes
from pipelines.features import transcribe as T
from pipelines.features.transcribe import (
    Transcriber,
    TranscriptionError,
    model_frame_times,
    onset_f1,
    transcribe_blocks,
)
from tests.conftest import FLUIDR3
from tests.pipelines.features.conftest import generated

SR = 44_100


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber()


def render(midi) -> np.ndarray:
    from pipelines.features.render import render_midi

    if not FLUIDR3.exists():
        pytest.skip("FluidR3 soundfont not installed")
    return render_midi(midi, soundfont=str(FLUIDR3))


@pytest.fixture(scope="module")
def piece() -> np.ndarray:
    """A generated 25-bar performance (432 notes, about 61 s) rendered with FluidR3 at 44.1 kHz: mono [S]."""
    sp = generated(seed=0, n_bars=25)
    return render(performance_midi_bytes(sp.perf.notes, sp.perf.pedal))


def in_blocks(y: np.ndarray, seconds: float):
    """A generator of consecutive blocks: the function never sees the whole array."""
    n = int(seconds * SR)
    return (y[i:i + n] for i in range(0, len(y), n))


def test_frame_times_are_basic_pitchs():
    from basic_pitch.note_creation import model_frames_to_time

    np.testing.assert_allclose(model_frame_times(np.arange(20_000)), model_frames_to_time(20_000), atol=1e-12)


def test_20_s_blocks_match_the_whole_array(transcriber, piece):
    assert 55.0 < len(piece) / SR < 65.0
    whole = transcriber(piece, SR)
    blocks = transcribe_blocks(transcriber, in_blocks(piece, 20.0))
    scores = onset_f1(whole, blocks)
    assert scores["f1"] >= 0.97, scores                         # measured 1.0 (389 notes each)
    assert scores["offset_f1"] >= 0.97, scores                  # measured 1.0
    assert abs(len(blocks.notes) - len(whole.notes)) <= 3
    assert blocks.source == "transcription" and len(blocks.pedal) == 0
    assert (np.diff(blocks.notes["onset_s"]) >= 0).all()


def test_block_sizes_do_not_change_the_result(transcriber, piece):
    """The model windows lie on the whole-array grid whatever the blocks: identical notes."""
    reference = transcribe_blocks(transcriber, in_blocks(piece, 20.0))
    odd = transcribe_blocks(transcriber, in_blocks(piece, 0.37))
    stereo = transcribe_blocks(transcriber, (np.stack([b, b], axis=1) for b in in_blocks(piece, 7.0)))
    assert np.array_equal(odd.notes, reference.notes)
    assert np.array_equal(stereo.notes, reference.notes)


def test_notes_sustained_over_a_segment_boundary_are_joined(transcriber, monkeypatch):
    """Long notes across the 5 s segment boundaries (1 s of context) come out once and whole."""
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    for k, t in enumerate(np.arange(0.5, 18.0, 0.5)):
        piano.notes.append(pretty_midi.Note(80, 72 + (k % 5) * 2, t, t + 0.3))
    for t, pitch in [(3.4, 48), (8.2, 52), (13.0, 45), (4.6, 60)]:
        piano.notes.append(pretty_midi.Note(100, pitch, t, t + 4.5))
    pm.instruments.append(piano)
    y = render(pm)
    whole = transcriber(y, SR)
    joined = transcribe_blocks(transcriber, in_blocks(y, 1.0), segment_s=5.0, context_s=1.0)
    assert onset_f1(whole, joined)["f1"] >= 0.97                 # measured 1.0
    for pitch in (48, 52, 45):
        ours, theirs = joined.notes[joined.notes["pitch"] == pitch], whole.notes[whole.notes["pitch"] == pitch]
        assert len(ours) == len(theirs)
        np.testing.assert_allclose(ours["offset_s"], theirs["offset_s"], atol=0.03)
    long_note = whole.notes[(whole.notes["pitch"] == 48)]
    assert len(long_note) == 1 and long_note["offset_s"][0] > 6.5  # from 3.4 s, past the 6 s decoding edge
    monkeypatch.setattr(T, "MAX_NOTE_LOOKBACK_S", 0.0)          # no re-decoding: cut at the segment's end
    cut = transcribe_blocks(transcriber, in_blocks(y, 1.0), segment_s=5.0, context_s=1.0)
    assert cut.notes[cut.notes["pitch"] == 48]["offset_s"][0] < 6.0


def _cheap_blocks(seconds: float, seed: int = 0):
    """Ten-second blocks of decaying tones (three distinct ones, repeated), generated on the fly."""
    rng = np.random.default_rng(seed)
    t = np.arange(10 * SR) / SR
    base = []
    for _ in range(3):
        y = np.zeros(len(t))
        for onset in np.arange(0.0, 10.0, 0.25):
            i = int(onset * SR)
            hz = 440.0 * 2 ** ((rng.integers(40, 90) - 69) / 12)
            y[i:] += 0.2 * np.sin(2 * np.pi * hz * t[:len(t) - i]) * np.exp(-4.0 * t[:len(t) - i])
        base.append(y.astype(np.float32))
    return (base[i % 3] for i in range(int(seconds // 10)))


def test_memory_does_not_grow_with_the_length(transcriber):
    """Traced numpy memory: 60 s and 180 s of audio peak at about the same 21 MB (one batch of model
    windows and one segment of activations; the 180 s array alone would be 32 MB at 44.1 kHz)."""
    transcribe_blocks(transcriber, _cheap_blocks(10.0))          # imports and first-run allocations
    peaks = {}
    for seconds in (60.0, 180.0):
        blocks = _cheap_blocks(seconds)
        tracemalloc.start()
        try:
            notes = transcribe_blocks(transcriber, blocks).notes
            peaks[seconds] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(notes) > 2 * seconds                          # about 2.8 notes per second
    assert peaks[180.0] < 1.15 * peaks[60.0], peaks
    assert peaks[180.0] < 4 * 180 * SR, peaks


def test_bad_inputs_and_tiny_recordings(transcriber):
    with pytest.raises(TranscriptionError, match="NaN"):
        transcribe_blocks(transcriber, [np.zeros(SR, np.float32), np.full(10, np.nan, np.float32)])
    with pytest.raises(TranscriptionError, match="sample rate"):
        transcribe_blocks(transcriber, [np.zeros(100, np.float32)], sr=0)
    with pytest.raises(TranscriptionError, match="shape"):
        transcribe_blocks(transcriber, [np.zeros((2, 3, 4), np.float32)])
    assert len(transcribe_blocks(transcriber, [np.zeros(10, np.float32)]).notes) == 0
    assert len(transcribe_blocks(transcriber, iter([])).notes) == 0
    assert len(transcribe_blocks(transcriber, in_blocks(np.zeros(3 * SR, np.float32), 1.0)).notes) == 0

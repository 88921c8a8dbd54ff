"""Transcription with basic-pitch's packaged ONNX model on a generated, FluidSynth-rendered clip."""
from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from pipelines.features.transcribe import (
    BASIC_PITCH_OVERLAP_FRAMES,
    BASIC_PITCH_OVERLAP_SAMPLES,
    BASIC_PITCH_SAMPLE_RATE_HZ,
    BASIC_PITCH_WINDOW_HOP_SAMPLES,
    BASIC_PITCH_WINDOW_SAMPLES,
    Transcriber,
    TranscriptionError,
    frame_windows,
    onset_f1,
    stitch_windows,
)
from pipelines.io.notes import Performance, empty_pedal, make_perf_notes
from pipelines.io.performance import performance_from_pretty_midi

RATE_HZ = 44_100


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Performance, np.ndarray]:
    """About 7 s of piano: a two-octave melody in 16ths at 60 qpm with varied velocities over bass fifths,
    rendered with FluidR3 at 44.1 kHz. Returns (reference notes, mono audio)."""
    from tests.conftest import FLUIDR3

    if not FLUIDR3.exists():
        pytest.skip("FluidR3 soundfont not installed")
    rng = np.random.default_rng(0)
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    t = 0.2
    for i in range(24):
        pitch = scale[i % 8] + 12 * ((i // 8) % 2)
        piano.notes.append(pretty_midi.Note(int(rng.integers(60, 110)), pitch, t, t + 0.3))
        if i % 4 == 0:
            piano.notes += [pretty_midi.Note(70, 36 + (i // 4) % 5, t, t + 1.0),
                            pretty_midi.Note(70, 43 + (i // 4) % 5, t, t + 1.0)]
        t += 0.25
    pm.instruments.append(piano)
    audio = pm.fluidsynth(fs=RATE_HZ, synthesizer=str(FLUIDR3))
    return performance_from_pretty_midi(pm), audio.astype(np.float32)


def test_transcribes_rendered_piano(transcriber, clip):
    reference, audio = clip
    estimate = transcriber(audio, RATE_HZ)
    assert estimate.source == "transcription"
    assert len(estimate.pedal) == 0                      # basic-pitch predicts no pedal
    scores = onset_f1(reference, estimate)
    assert scores["f1"] >= 0.75, scores                  # measured 0.86
    assert scores["recall"] >= 0.75, scores
    notes = estimate.notes
    assert ((notes["pitch"] >= 21) & (notes["pitch"] <= 108)).all()
    assert (notes["offset_s"] > notes["onset_s"]).all()
    assert ((notes["velocity"] >= 1) & (notes["velocity"] <= 127)).all()
    assert (np.diff(notes["onset_s"]) >= 0).all()
    assert notes["onset_s"].max() < len(audio) / RATE_HZ


def test_sample_rate_and_channels_do_not_change_the_result(transcriber, clip):
    import soxr

    _, audio = clip
    at_44k = transcriber(audio, RATE_HZ)
    at_model_rate = transcriber(soxr.resample(audio, RATE_HZ, BASIC_PITCH_SAMPLE_RATE_HZ), BASIC_PITCH_SAMPLE_RATE_HZ)
    stereo = transcriber(np.stack([audio, audio], axis=1), RATE_HZ)
    assert onset_f1(at_44k, at_model_rate)["f1"] >= 0.95
    assert onset_f1(at_44k, stereo)["f1"] == pytest.approx(1.0)


def test_silence_and_tiny_inputs_give_no_notes(transcriber):
    assert len(transcriber(np.zeros(3 * RATE_HZ, np.float32), RATE_HZ).notes) == 0
    assert len(transcriber(np.zeros(10, np.float32), RATE_HZ).notes) == 0


def test_bad_inputs_raise(transcriber):
    with pytest.raises(TranscriptionError, match="NaN"):
        transcriber(np.full(RATE_HZ, np.nan, np.float32), RATE_HZ)
    with pytest.raises(TranscriptionError, match="sample rate"):
        transcriber(np.zeros(100, np.float32), 0)
    with pytest.raises(TranscriptionError, match="shape"):
        transcriber(np.zeros((2, 3, 4), np.float32), RATE_HZ)
    with pytest.raises(ValueError, match="unknown transcription backend"):
        Transcriber(backend="magic")
    with pytest.raises(ValueError, match="thresholds"):
        Transcriber(onset_threshold=1.5)


def test_transkun_backend_reports_missing_package():
    try:
        import transkun  # noqa: F401
    except ImportError:
        with pytest.raises(TranscriptionError, match="transkun"):
            Transcriber(backend="transkun")
    else:
        pytest.skip("transkun is installed here")


@pytest.mark.parametrize("n_samples", [1, 43_844, 100_000, 22_050 * 7])
def test_window_and_stitch_shapes(n_samples):
    windows = frame_windows(np.zeros(n_samples, np.float32))
    expected_windows = int(np.ceil((n_samples + BASIC_PITCH_OVERLAP_SAMPLES // 2) / BASIC_PITCH_WINDOW_HOP_SAMPLES))
    assert windows.shape == (expected_windows, BASIC_PITCH_WINDOW_SAMPLES, 1)
    frames_per_window = 172                              # the model's output frames per window
    track = stitch_windows(np.zeros((expected_windows, frames_per_window, 88)), n_samples)
    # every frame starting inside the audio is kept (window j's frame i starts at j * hop + i * 256)
    kept = frames_per_window - BASIC_PITCH_OVERLAP_FRAMES
    starts = [j * BASIC_PITCH_WINDOW_HOP_SAMPLES + i * 256 for j in range(expected_windows) for i in range(kept)]
    assert track.shape == (sum(1 for s in starts if s < n_samples), 88)
    assert track.shape[0] * 256 >= n_samples * 0.99            # not cut short by a 86-frames/s count


def test_frame_windows_cover_the_signal_in_order():
    y = np.arange(1, 100_001, dtype=np.float32)
    windows = frame_windows(y)[..., 0]
    half = BASIC_PITCH_OVERLAP_SAMPLES // 2
    assert (windows[0, :half] == 0).all() and windows[0, half] == 1
    assert windows[1, 0] == BASIC_PITCH_WINDOW_HOP_SAMPLES - half + 1


def _perf(onsets, offsets, pitches, velocities=None) -> Performance:
    velocities = velocities if velocities is not None else [64] * len(onsets)
    return Performance(make_perf_notes(onsets, offsets, pitches, velocities), empty_pedal())


def test_onset_f1_conventions():
    ref = _perf([0.0, 0.5, 1.0, 1.5], [0.4, 0.9, 1.4, 1.9], [60, 62, 64, 65])
    assert onset_f1(ref, ref)["f1"] == 1.0 and onset_f1(ref, ref)["offset_f1"] == 1.0
    shifted = _perf([0.04, 0.5, 1.1, 1.5], [0.4, 0.9, 1.5, 1.9], [60, 62, 64, 66])
    scores = onset_f1(ref, shifted)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    assert onset_f1(ref, shifted, onset_tolerance=0.15)["f1"] == pytest.approx(0.75)
    short = _perf([0.0, 0.5, 1.0, 1.5], [0.1, 0.9, 1.4, 1.9], [60, 62, 64, 65])
    assert onset_f1(ref, short)["f1"] == 1.0 and onset_f1(ref, short)["offset_f1"] == pytest.approx(0.75)
    empty = _perf([], [], [])
    assert onset_f1(ref, empty)["f1"] == 0.0 and onset_f1(empty, empty)["f1"] == 1.0

"""Log-CQT: frame counts, agreement with nnAudio CQT1992v2 and librosa, batching, chunking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import constants as C
from pipelines.features.cqt import CQTExtractor, cqt_frequencies_hz, cqt_librosa, n_cqt_frames
from tests.conftest import FLUIDR3

SR = C.CQT_SAMPLE_RATE_HZ


@pytest.fixture(scope="module")
def extractor() -> CQTExtractor:
    return CQTExtractor(device="cpu", num_threads=2)


def chord_and_sweep(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """A decaying C-major chord over C2..G4 plus an exponential sweep 40 Hz -> 4 kHz, peak 0.7."""
    t = np.arange(int(seconds * SR)) / SR
    chord = sum(np.sin(2 * np.pi * f * t) for f in (65.41, 130.81, 261.63, 329.63, 392.0)) * np.exp(-(t % 1.5) * 2)
    k = np.log(4000.0 / 40.0) / seconds
    sweep = np.sin(2 * np.pi * 40.0 * (np.exp(k * t) - 1) / k)
    y = 0.5 * chord / 5 + 0.5 * sweep
    return (0.7 * y / np.max(np.abs(y))).astype(np.float32)


def assert_same_cqt(ours: np.ndarray, reference: np.ndarray) -> None:
    """Equal up to float32 rounding: magnitudes within 1e-5 of the peak, log values within 1e-3 on
    bins above -60 dB (below that, rounding of near-zero sums dominates the log)."""
    assert ours.shape == reference.shape
    mag_ours, mag_ref = np.exp(ours), np.exp(reference)
    assert np.max(np.abs(mag_ours - mag_ref)) < 1e-5 * mag_ref.max()
    loud = mag_ref > 1e-3 * mag_ref.max()
    assert np.max(np.abs(ours[loud] - reference[loud])) < 1e-3


def test_frame_count_is_analytic():
    assert n_cqt_frames(0) == 1
    assert n_cqt_frames(511) == 1 and n_cqt_frames(512) == 2
    assert n_cqt_frames(60 * SR) == 1 + 60 * SR // C.CQT_HOP_SAMPLES == 5168
    with pytest.raises(ValueError, match="n_samples"):
        n_cqt_frames(-1)


@pytest.mark.parametrize("n_samples", [23_011, SR, 3 * SR + 17])
def test_output_shape_and_dtype(extractor, n_samples):
    y = np.random.default_rng(0).standard_normal(n_samples).astype(np.float32) * 0.1
    out = extractor(y)
    assert out.shape == (1, n_cqt_frames(n_samples), C.CQT_N_BINS) and out.dtype == np.float32
    assert out.flags.c_contiguous
    assert np.all(np.isfinite(out)) and out.min() >= np.log(C.CQT_LOG_EPS) - 1e-6


def test_sine_lands_in_its_bin_with_the_analytic_magnitude(extractor):
    """librosa scaling: a sine of amplitude A at bin k's centre gives |C_k| = (A / 2) sqrt(N_k),
    N_k = ceil(Q sr / f_k) the kernel length."""
    t = np.arange(2 * SR) / SR
    q = 1.0 / (2 ** (1 / C.CQT_BINS_PER_OCTAVE) - 1)
    for k in (12, 72, 150):
        f = cqt_frequencies_hz()[k]
        out = extractor((0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32))[0]
        middle = out[out.shape[0] // 2]
        assert int(np.argmax(middle)) == k
        expected = 0.25 * np.sqrt(np.ceil(q * SR / f))
        assert np.exp(middle[k]) == pytest.approx(expected, rel=0.01)


def test_equals_nnaudio_cqt1992v2():
    """The trimmed kernels compute the same sums as nnAudio's module (float32 rounding)."""
    y = chord_and_sweep(3.0)
    assert_same_cqt(CQTExtractor(device="cpu")(y), CQTExtractor(device="cpu", impl="nnaudio")(y))


def test_batch_of_two_equals_items_one_at_a_time(extractor):
    a, b = chord_and_sweep(2.0, 0), chord_and_sweep(2.0, 1)[::-1].copy()
    batch = extractor(np.stack([a, b]))
    assert_same_cqt(batch[:1], extractor(a))
    assert_same_cqt(batch[1:], extractor(b))
    assert not np.allclose(batch[0], batch[1])


def test_chunked_equals_whole():
    y = chord_and_sweep(1.5)
    whole = CQTExtractor(device="cpu", chunk_frames=10_000)(y)
    assert_same_cqt(CQTExtractor(device="cpu", chunk_frames=37)(y), whole)


def test_accepts_tensors(extractor):
    y = chord_and_sweep(1.0)
    assert_same_cqt(extractor(torch.from_numpy(y)[None]), extractor(y))


def test_correlates_with_librosa_on_chord_and_sweep(extractor):
    """Both floored 60 dB below the peak: below that both are numerical leakage (window side lobes,
    librosa's resampling filters) that a real recording's noise floor hides; raw features shown too."""
    y = chord_and_sweep(6.0)
    ours, ref = extractor(y)[0], cqt_librosa(y)
    assert ours.shape == ref.shape
    floor = max(ours.max(), ref.max()) + np.log(1e-3)
    corr = np.corrcoef(np.maximum(ours, floor).ravel(), np.maximum(ref, floor).ravel())[0, 1]
    assert corr >= 0.99
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] >= 0.95          # measured 0.957 unfloored


def test_correlates_with_librosa_on_rendered_piano(extractor):
    pretty_midi = pytest.importorskip("pretty_midi")
    pytest.importorskip("fluidsynth")
    if not FLUIDR3.exists():
        pytest.skip("FluidR3 soundfont not installed")
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    for i in range(20):
        for pitch in (36 + i % 12, 60 + (i * 5) % 24, 72 + (i * 7) % 12):
            piano.notes.append(pretty_midi.Note(velocity=50 + 3 * i, pitch=pitch, start=0.25 * i, end=0.25 * i + 0.6))
    midi.instruments.append(piano)
    y = midi.fluidsynth(fs=SR, synthesizer=str(FLUIDR3))[: 5 * SR].astype(np.float32)
    corr = np.corrcoef(extractor(y)[0].ravel(), cqt_librosa(y).ravel())[0, 1]
    assert corr >= 0.99                                                  # measured 0.9957


@pytest.mark.parametrize("batch,match", [
    (np.zeros(1000, np.float32), "too short"),
    (np.zeros((1, 2, SR), np.float32), "shape"),
    (np.zeros((0, SR), np.float32), "empty"),
    (np.r_[np.zeros(SR), np.nan].astype(np.float32), "finite"),
    (np.zeros(SR, np.int16), "floating-point"),
])
def test_bad_input_raises(extractor, batch, match):
    with pytest.raises(ValueError, match=match):
        extractor(batch)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="impl"):
        CQTExtractor(impl="fft")
    with pytest.raises(ValueError, match="chunk_frames"):
        CQTExtractor(chunk_frames=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            CQTExtractor(device="cuda")
        assert CQTExtractor(device="auto").device.type == "cpu"


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    CQTExtractor(device="cpu", num_threads=1)(chord_and_sweep(1.0))
    assert torch.get_num_threads() == before
